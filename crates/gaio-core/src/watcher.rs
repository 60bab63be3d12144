//! The Watcher: per-connection state machine, I/O engine, deadlines, completions.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gaio_sys::{Events, FdKind, IOV_MAX, Poller, Waker};

use crate::slab::{DIRTY, HUP, READABLE, SOCKET, SWAP_WAIT, Slab, Slot, WRITABLE};
use crate::submit::{Cmd, Kind, Queued, Req, Shared, Submitter, WAKE_TOKEN, thread_tag, token};
use crate::timer::{Dir, NO_TIMER, Timers};
use crate::{Conn, Error, Result};

/// On Linux a short read or write proves the socket or pipe buffer was drained or
/// filled at that instant, so the next data (or space) is a new edge: readiness can
/// be cleared without paying a syscall for `EAGAIN` (tokio does the same). Other
/// backends keep going until `WouldBlock`.
const SHORT_IO_CLEARS_READINESS: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// `EPERM`, which epoll answers for fds it cannot watch (regular files): the same
/// value on every unix, so gaio-core needs no libc for it.
const EPERM: i32 = 1;

/// Which way a request moved bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `read`, `read_timeout` or `read_full`.
    Read,
    /// `write` or `write_timeout`.
    Write,
}

/// The buffer a completion hands back.
#[derive(Debug)]
pub enum Buffer<'a> {
    /// The caller's own buffer, with the length it was submitted with; the
    /// completion's `size` says how much of it was filled (reads) or sent (writes).
    Owned(Vec<u8>),
    /// The bytes a swap-buffer read received (exactly `size` bytes), borrowed from
    /// the watcher until the next `wait_io`.
    Swap(&'a [u8]),
}

/// One finished request, from [`Watcher::wait_io`].
#[derive(Debug)]
pub struct Completion<'a, C> {
    /// Read or write.
    pub op: Op,
    /// The connection the request was on.
    pub conn: Conn,
    /// The value given at submission, unchanged.
    pub ctx: C,
    /// Bytes transferred, also when `result` is an error (deadline, free, reset).
    /// 0 with `Ok` on a read means EOF.
    pub size: usize,
    /// `Ok` or why the request ended early.
    pub result: Result<()>,
    /// The caller's buffer, or the swap-buffer bytes.
    pub buffer: Buffer<'a>,
}

impl<'a, C> Completion<'a, C> {
    /// The bytes transferred: `buffer[..size]`.
    pub fn data(&self) -> &[u8] {
        match &self.buffer {
            Buffer::Owned(v) => &v[..self.size],
            Buffer::Swap(s) => s,
        }
    }

    /// Takes the caller's buffer back (`None` for swap-buffer reads).
    pub fn into_vec(self) -> Option<Vec<u8>> {
        match self.buffer {
            Buffer::Owned(v) => Some(v),
            Buffer::Swap(_) => None,
        }
    }

    /// A successful read of 0 bytes: the peer will send nothing more.
    pub fn is_eof(&self) -> bool {
        self.op == Op::Read && self.size == 0 && self.result.is_ok()
    }
}

#[derive(Debug)]
enum DoneBuf {
    Owned(Vec<u8>),
    Swap { off: usize, len: usize },
}

#[derive(Debug)]
struct Done<C> {
    op: Op,
    conn: Conn,
    ctx: C,
    size: usize,
    result: Result<()>,
    buf: DoneBuf,
}

/// The batch [`Watcher::wait_io`] returns: an iterator of [`Completion`]s that
/// borrows the watcher, so swap-buffer bytes cannot outlive the next `wait_io`.
/// Completions not taken are dropped with the iterator (their buffers freed).
#[derive(Debug)]
pub struct Completions<'a, C> {
    inner: std::vec::Drain<'a, Done<C>>,
    swap: &'a [u8],
}

impl<'a, C> Iterator for Completions<'a, C> {
    type Item = Completion<'a, C>;

    fn next(&mut self) -> Option<Completion<'a, C>> {
        let d = self.inner.next()?;
        let buffer = match d.buf {
            DoneBuf::Owned(v) => Buffer::Owned(v),
            DoneBuf::Swap { off, len } => Buffer::Swap(&self.swap[off..off + len]),
        };
        Some(Completion {
            op: d.op,
            conn: d.conn,
            ctx: d.ctx,
            size: d.size,
            result: d.result,
            buffer,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<C> ExactSizeIterator for Completions<'_, C> {}

/// A cheap snapshot of a watcher's counters, from [`Watcher::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Registered connections not yet freed.
    pub conns: usize,
    /// Read requests accepted and not yet completed.
    pub pending_reads: usize,
    /// Write requests accepted and not yet completed.
    pub pending_writes: usize,
    /// Deadlines armed.
    pub timers: usize,
    /// Completions produced since the watcher was built.
    pub completions: u64,
    /// Connections freed since the watcher was built (by `free` or `free_all`).
    pub freed: u64,
    /// System calls the watcher made on its own thread (poll, read, write, close).
    pub syscalls: u64,
}

/// Configures a [`Watcher`].
///
/// ```
/// use std::time::Duration;
/// let w: gaio_core::Watcher<()> = gaio_core::Watcher::builder()
///     .swap_buffer(16 * 1024)
///     .busy_poll(Some(Duration::from_micros(50)))
///     .build()?;
/// # Ok::<(), gaio_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    swap: usize,
    events: usize,
    cpu: Option<usize>,
    busy_poll: Option<Duration>,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder {
            swap: 64 * 1024,
            events: 1024,
            cpu: None,
            busy_poll: None,
        }
    }
}

impl Builder {
    /// Size of the swap buffer that `None`-buffer reads land in (default 64 KiB).
    /// All swap reads of one batch share it; when it is used up the remaining ones
    /// wait for the next `wait_io`.
    pub fn swap_buffer(mut self, bytes: usize) -> Builder {
        self.swap = bytes;
        self
    }

    /// Most readiness events taken from the poller per poll (default 1024).
    pub fn events_capacity(mut self, n: usize) -> Builder {
        self.events = n.max(1);
        self
    }

    /// Pins the thread that drives the watcher (the one calling `wait_io`) to this
    /// core, at its first `wait_io`.
    pub fn cpu(mut self, core: usize) -> Builder {
        self.cpu = Some(core);
        self
    }

    /// Before blocking in the poller, spin on non-blocking polls for up to this
    /// long (e.g. 50 µs): lower latency for a core's worth of CPU. Off by default.
    pub fn busy_poll(mut self, spin: Option<Duration>) -> Builder {
        self.busy_poll = spin;
        self
    }

    /// Creates the watcher.
    ///
    /// # Errors
    /// [`Error::InvalidCpu`] when the core set with [`cpu`](Self::cpu) is not one
    /// this thread may run on; [`Error::Io`] when the poller cannot be created or
    /// the swap buffer size is 0.
    pub fn build<C>(self) -> Result<Watcher<C>> {
        if self.swap == 0 {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "swap buffer must hold at least one byte",
            )));
        }
        if let Some(core) = self.cpu {
            let allowed = gaio_sys::current_thread_affinity()?;
            if !allowed.contains(&core) {
                return Err(Error::InvalidCpu(core));
            }
        }
        let poller = Poller::new()?;
        let waker = Waker::new(&poller, WAKE_TOKEN)?;
        let shared = Arc::new(Shared::new(waker));
        let id = shared.id;
        Ok(Watcher {
            shared,
            poller,
            slots: Slab::new(),
            events: Events::with_capacity(self.events),
            eng: Engine {
                watcher: id,
                swap: vec![0; self.swap].into_boxed_slice(),
                swap_used: 0,
                // Do not start a swap read into a sliver: a tiny read costs a syscall
                // per few bytes. Wait for the next batch instead.
                swap_min: self.swap.min(1024),
                swap_waiters: Vec::new(),
                done: Vec::new(),
                timers: Timers::default(),
                stats: Stats::default(),
            },
            cmds: Vec::new(),
            remote_buf: Vec::new(),
            dirty: Vec::new(),
            cmds_trim: Trim::default(),
            remote_trim: Trim::default(),
            dirty_trim: Trim::default(),
            done_trim: Trim::default(),
            done_used: 0,
            skipped_poll: false,
            cpu: self.cpu,
            pinned_on: 0,
            busy_poll: self.busy_poll,
            woken: false,
            drained: 0,
            local_cap: 0,
            now: None,
            closed: false,
        })
    }
}

/// Everything the I/O paths touch besides the slot table, so a slot and the engine
/// can be borrowed mutably at once.
#[derive(Debug)]
struct Engine<C> {
    /// Id of the watcher, for the `Conn`s of completions.
    watcher: u32,
    swap: Box<[u8]>,
    swap_used: usize,
    swap_min: usize,
    swap_waiters: Vec<u32>,
    done: Vec<Done<C>>,
    timers: Timers,
    stats: Stats,
}

/// A proactor: owns registered connections, performs their reads and writes inside
/// [`wait_io`](Self::wait_io) on the caller's thread, and returns completions in
/// batches. See the [crate docs](crate) for the rules.
#[derive(Debug)]
pub struct Watcher<C> {
    shared: Arc<Shared<C>>,
    poller: Poller,
    slots: Slab<C>,
    events: Events,
    eng: Engine<C>,
    cmds: Vec<Queued<C>>,
    remote_buf: Vec<Queued<C>>,
    /// Slots with new requests from the current command batch.
    dirty: Vec<u32>,
    cmds_trim: Trim,
    dirty_trim: Trim,
    remote_trim: Trim,
    done_trim: Trim,
    /// Completions in the batch last returned.
    done_used: usize,
    skipped_poll: bool,
    cpu: Option<usize>,
    /// Thread tag the watcher was last pinned on (0: never).
    pinned_on: u64,
    busy_poll: Option<Duration>,
    /// A `Submitter::wake` arrived: return from `wait_io` even with no completions.
    woken: bool,
    /// Commands taken from the queues so far (compared with the submission count).
    drained: u64,
    /// Capacity handed to the owner-thread queue at the last drain.
    local_cap: usize,
    /// This loop turn's clock reading, if taken.
    now: Option<Instant>,
    closed: bool,
}

impl Watcher<()> {
    /// A [`Builder`] for custom settings; the context type is chosen by
    /// [`Builder::build`] (`Watcher::builder().build::<MyCtx>()`, or from the type
    /// the result is bound to).
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<C> Watcher<C> {
    /// A watcher with default settings (64 KiB swap buffer, no pinning).
    ///
    /// # Errors
    /// When the poller or waker cannot be created (e.g. out of fds).
    pub fn new() -> Result<Watcher<C>> {
        Builder::default().build()
    }

    /// A handle to submit requests from this or any other thread.
    pub fn submitter(&self) -> Submitter<C> {
        Submitter {
            shared: self.shared.clone(),
        }
    }

    /// Takes ownership of a stream socket or pipe (anything `Into<OwnedFd>`, e.g.
    /// `TcpStream`, `UnixStream`, `PipeReader`), makes it nonblocking and returns
    /// its token. Socket options already set are kept.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a regular file, datagram socket or other fd the
    /// poller cannot drive (the fd is closed, not leaked); [`Error::WatcherClosed`];
    /// [`Error::Io`] from the OS.
    pub fn register(&mut self, fd: impl Into<OwnedFd>) -> Result<Conn> {
        let (conn, fd, kind) = self.shared.open(fd.into())?;
        self.install(conn, fd, kind)?;
        Ok(conn)
    }

    /// Closes `conn` now (a connection registered through a [`Submitter`] that the
    /// watcher has not taken over yet: right after it does). Pending requests on it
    /// complete with [`Error::ConnClosed`] in the next `wait_io`. Freeing a stale
    /// `Conn` does nothing.
    ///
    /// # Errors
    /// [`Error::WatcherClosed`].
    pub fn free(&mut self, conn: Conn) -> Result<()> {
        if self.closed {
            return Err(Error::WatcherClosed);
        }
        let register_queued = match self.slots.get_mut(conn.slot) {
            None => conn.watcher == self.shared.id,
            Some(s) => s.generation == conn.generation && s.fd.is_none(),
        };
        if register_queued {
            // Registered through a Submitter and not taken over yet: free it right
            // after its registration, in queue order.
            self.shared.push(Cmd::Free(conn))
        } else {
            self.free_conn(conn);
            Ok(())
        }
    }

    /// Frees every registered connection now, as [`free`](Self::free) does for one:
    /// their pending requests complete with [`Error::ConnClosed`] in the next
    /// `wait_io`. For a graceful shutdown that still reports every request.
    ///
    /// # Errors
    /// [`Error::WatcherClosed`].
    pub fn free_all(&mut self) -> Result<()> {
        if self.closed {
            return Err(Error::WatcherClosed);
        }
        let live: Vec<Conn> = self
            .slots
            .iter()
            .filter(|(_, s)| s.fd.is_some())
            .map(|(slot, s)| Conn {
                slot,
                generation: s.generation,
                watcher: self.shared.id,
            })
            .collect();
        for conn in live {
            self.free_conn(conn);
        }
        Ok(())
    }

    /// The watcher's counters.
    pub fn stats(&self) -> Stats {
        Stats {
            timers: self.eng.timers.len(),
            ..self.eng.stats
        }
    }

    /// Blocks until at least one request completes (or a [`Submitter::wake`]),
    /// performs the I/O that is ready, and returns the batch.
    ///
    /// # Errors
    /// [`Error::WatcherClosed`] after [`close`](Self::close);
    /// [`Error::InvalidCpu`] if pinning to the configured core fails;
    /// [`Error::Io`] if the poller fails.
    pub fn wait_io(&mut self) -> Result<Completions<'_, C>> {
        self.wait(None)
    }

    /// As [`wait_io`](Self::wait_io), but returns after `timeout` even if nothing
    /// completed (an empty batch).
    ///
    /// # Errors
    /// As [`wait_io`](Self::wait_io).
    pub fn wait_io_timeout(&mut self, timeout: Duration) -> Result<Completions<'_, C>> {
        // A timeout too long to represent is no timeout.
        self.wait(Instant::now().checked_add(timeout))
    }

    /// Closes every registered fd and drops pending requests with their buffers.
    /// Later `wait_io`, `register` and submissions fail with
    /// [`Error::WatcherClosed`]. Closing twice is harmless. Dropping the watcher
    /// closes it.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for backends whose close can fail.
    pub fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.shared.close();
        let conns = self.eng.stats.conns;
        // Dropping the slots closes every fd, which also removes it from the poller.
        self.slots.clear();
        self.eng.done.clear();
        self.eng.swap_waiters.clear();
        self.eng.timers = Timers::default();
        self.cmds.clear();
        self.shared.counts.closed(self.eng.stats.conns as u64);
        self.eng.stats.conns = 0;
        self.eng.stats.pending_reads = 0;
        self.eng.stats.pending_writes = 0;
        self.shared.publish(&self.stats());
        tracing::debug!(conns, "gaio watcher closed");
        Ok(())
    }

    fn install(&mut self, conn: Conn, fd: OwnedFd, kind: FdKind) -> Result<()> {
        let s = self.slots.get_or_grow(conn.slot);
        if let Err(e) = self.poller.register(fd.as_fd(), token(conn)) {
            tracing::debug!(slot = conn.slot, error = %e, "gaio register refused by the poller");
            // Retire this generation: requests on `conn` complete with ConnClosed.
            s.generation = conn.generation.wrapping_add(1);
            self.shared.counts.closed(1);
            self.shared.release_slot(Conn {
                slot: conn.slot,
                generation: s.generation,
                watcher: conn.watcher,
            });
            return Err(if e.raw_os_error() == Some(EPERM) {
                Error::Unsupported
            } else {
                Error::Io(e)
            });
        }
        s.generation = conn.generation;
        tracing::debug!(
            slot = conn.slot,
            generation = conn.generation,
            ?fd,
            ?kind,
            "gaio register"
        );
        s.install(fd, kind);
        self.eng.stats.conns += 1;
        self.eng.stats.syscalls += 1;
        Ok(())
    }

    fn prepare_thread(&mut self) -> Result<()> {
        let tag = thread_tag();
        self.shared.owner.store(tag, Ordering::Relaxed);
        if let Some(core) = self.cpu {
            if self.pinned_on != tag {
                gaio_sys::pin_current_thread(core).map_err(|_| Error::InvalidCpu(core))?;
                self.pinned_on = tag;
            }
        }
        Ok(())
    }

    fn wait(&mut self, until: Option<Instant>) -> Result<Completions<'_, C>> {
        if self.closed {
            return Err(Error::WatcherClosed);
        }
        self.prepare_thread()?;
        let used = self.done_used;
        self.done_trim.after(&mut self.eng.done, used);
        // The previous batch's borrow of the swap buffer has ended.
        self.eng.swap_used = 0;
        if !self.eng.swap_waiters.is_empty() {
            self.retry_swap_waiters();
        }
        loop {
            // The clock is read only when something needs it (deadlines, a timeout).
            self.now = None;
            self.run_commands();
            self.expire();
            if std::mem::take(&mut self.woken) && self.eng.done.is_empty() {
                break;
            }
            if !self.eng.done.is_empty() {
                // Completions already: return them without a poll, but poll (without
                // blocking) every other batch so readiness cannot starve.
                if self.skipped_poll && self.poll(Some(Duration::ZERO))? {
                    self.dispatch();
                }
                self.skipped_poll = !self.skipped_poll;
                break;
            }
            // Poll at least once per call, even when `until` has passed
            // (`wait_io_timeout(ZERO)` is a non-blocking check, not a no-op).
            let mut timeout = until.map(|u| u.saturating_duration_since(self.now()));
            if let Some(next) = self.eng.timers.next() {
                let d = next.saturating_duration_since(self.now());
                timeout = Some(timeout.map_or(d, |t| t.min(d)));
            }
            if self.poll(timeout)? {
                self.dispatch();
            }
            self.skipped_poll = false;
            self.now = None;
            self.expire();
            if !self.eng.done.is_empty() || until.is_some_and(|u| self.now() >= u) {
                break;
            }
        }
        self.done_used = self.eng.done.len();
        self.shared.publish(&self.stats());
        Ok(Completions {
            inner: self.eng.done.drain(..),
            swap: &self.eng.swap,
        })
    }

    /// Polls; returns whether `self.events` holds fresh events.
    fn poll(&mut self, timeout: Option<Duration>) -> Result<bool> {
        let shared = &*self.shared;
        let poller = &self.poller;
        if timeout != Some(Duration::ZERO) {
            if let Some(spin) = self.busy_poll {
                let spin = timeout.map_or(spin, |t| t.min(spin));
                let start = Instant::now();
                loop {
                    poller.wait(&mut self.events, Some(Duration::ZERO))?;
                    self.eng.stats.syscalls += 1;
                    if !self.events.is_empty() {
                        return Ok(true);
                    }
                    if shared.has_queued(self.drained) {
                        return Ok(false);
                    }
                    if start.elapsed() >= spin {
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
            self.cmds_trim.at_park(&mut self.cmds);
            if self.local_cap > 256 {
                shared.shrink_local(|cap| self.cmds_trim.idle_target(cap));
                self.local_cap = 0;
            }
            self.remote_trim.at_park(&mut self.remote_buf);
            self.dirty_trim.at_park(&mut self.dirty);
            self.done_trim.at_park(&mut self.eng.done);
            shared.publish(&Stats {
                timers: self.eng.timers.len(),
                ..self.eng.stats
            });
            // The other half of the handshake in `Shared::push` (SeqCst store, then
            // SeqCst load in `has_queued`): a submitter either sees `parked` and
            // wakes us, or we see its command and do not block.
            shared.parked.store(true, Ordering::SeqCst);
            if shared.has_queued(self.drained) {
                shared.parked.store(false, Ordering::Relaxed);
                return Ok(false);
            }
            let res = poller.wait(&mut self.events, timeout);
            shared.parked.store(false, Ordering::Relaxed);
            self.eng.stats.syscalls += 1;
            res?;
        } else {
            poller.wait(&mut self.events, timeout)?;
            self.eng.stats.syscalls += 1;
        }
        Ok(true)
    }

    fn dispatch(&mut self) {
        for ev in self.events.iter() {
            let token = ev.token();
            if token == WAKE_TOKEN {
                continue;
            }
            let (slot, generation) = (token as u32, (token >> 32) as u32);
            let Some(s) = self.slots.get_mut(slot) else {
                continue;
            };
            if s.generation != generation || s.fd.is_none() {
                continue; // an event for a freed (or not yet installed) connection
            }
            let hup = ev.is_read_closed() || ev.is_error();
            let mut ready = 0;
            if ev.is_readable() || hup {
                ready |= READABLE;
            }
            if ev.is_writable() || hup {
                ready |= WRITABLE;
            }
            if hup {
                // Sticky: the FIN (or RST) arrived with this edge and no later edge
                // will announce it, so reads must go on until they see it.
                ready |= HUP;
            }
            s.flags |= ready;
            if ready & READABLE != 0 && s.read.is_some() {
                self.eng.do_reads(s, slot);
            }
            if ready & WRITABLE != 0 && s.write.is_some() {
                self.eng.do_writes(s, slot);
            }
        }
    }

    /// The time, read once per loop turn and only if asked for.
    fn now(&mut self) -> Instant {
        *self.now.get_or_insert_with(Instant::now)
    }

    fn run_commands(&mut self) {
        if !self.shared.has_queued(self.drained) {
            // An empty batch still counts for giving back burst buffers.
            self.cmds_trim.after(&mut self.cmds, 0);
            self.remote_trim.after(&mut self.remote_buf, 0);
            self.dirty_trim.after(&mut self.dirty, 0);
            return;
        }
        let mut cmds = std::mem::take(&mut self.cmds);
        // `local` receives this vector's capacity in the swap.
        self.local_cap = cmds.capacity();
        let remote = self.shared.drain_into(&mut cmds, &mut self.remote_buf);
        self.remote_trim.after(&mut self.remote_buf, remote);
        let n = cmds.len();
        self.drained += n as u64;
        for q in cmds.drain(..) {
            self.apply(q.cmd);
        }
        self.cmds_trim.after(&mut cmds, n);
        let dirty = self.dirty.len();
        for i in 0..dirty {
            let slot = self.dirty[i];
            let Some(s) = self.slots.get_mut(slot) else {
                continue;
            };
            s.flags &= !DIRTY;
            if s.fd.is_some() {
                // Only the directions that can move: a call each costs a prologue.
                if s.read.is_some() && s.flags & READABLE != 0 {
                    self.eng.do_reads(s, slot);
                }
                if s.write.is_some() && s.flags & WRITABLE != 0 {
                    self.eng.do_writes(s, slot);
                }
            }
        }
        self.dirty.clear();
        self.dirty_trim.after(&mut self.dirty, dirty);
        self.cmds = cmds;
    }

    fn apply(&mut self, cmd: Cmd<C>) {
        match cmd {
            Cmd::Submit {
                conn,
                req,
                deadline,
            } => self.submit(conn, req, deadline),
            Cmd::Free(conn) => self.free_conn(conn),
            Cmd::Wake => self.woken = true,
            Cmd::Register(conn, fd, kind) => {
                if let Err(e) = self.install(conn, fd, kind) {
                    tracing::error!(slot = conn.slot, error = %e, "gaio: could not watch a registered fd; it was closed");
                }
            }
        }
    }

    fn submit(&mut self, conn: Conn, mut req: Req<C>, deadline: Option<Instant>) {
        let now = deadline.map(|_| self.now());
        let eng = &mut self.eng;
        let is_write = req.kind() == Kind::Write;
        let (op, dir) = if is_write {
            (Op::Write, Dir::Write)
        } else {
            (Op::Read, Dir::Read)
        };
        if is_write {
            eng.stats.pending_writes += 1;
        } else {
            eng.stats.pending_reads += 1;
        }
        let Some(s) = self
            .slots
            .get_mut(conn.slot)
            .filter(|s| s.generation == conn.generation && s.fd.is_some())
            .filter(|_| conn.watcher == self.shared.id)
        else {
            eng.finish(conn, op, req, 0, Err(Error::ConnClosed), 0);
            return;
        };
        if let (Some(at), Some(now)) = (deadline, now) {
            if at <= now {
                eng.finish(conn, op, req, 0, Err(Error::Deadline), 0);
                return;
            }
            req.set_timer(eng.timers.insert(at, conn.slot, conn.generation, dir));
        }
        let head = if is_write { &mut s.write } else { &mut s.read };
        if head.is_none() {
            *head = Some(req);
        } else if is_write {
            s.spill().writes.push_back(req);
        } else {
            s.spill().reads.push_back(req);
        }
        if s.flags & DIRTY == 0 {
            s.flags |= DIRTY;
            self.dirty.push(conn.slot);
        }
    }

    fn free_conn(&mut self, conn: Conn) {
        let Some(s) = self
            .slots
            .get_mut(conn.slot)
            .filter(|s| s.generation == conn.generation && s.fd.is_some())
            .filter(|_| conn.watcher == self.shared.id)
        else {
            return;
        };
        let eng = &mut self.eng;
        if s.flags & DIRTY != 0 {
            // Requests from the batch being applied run before the close, as they
            // would have had they arrived in an earlier batch: the outcome of
            // `write; free` must not depend on batch boundaries.
            eng.do_reads(s, conn.slot);
            eng.do_writes(s, conn.slot);
        }
        if let Some(fd) = s.fd.take() {
            // Deregister explicitly: a dup of the fd elsewhere would keep the
            // registration (and its events) alive past close.
            let _ = self.poller.deregister(fd.as_fd());
            drop(fd);
            eng.stats.syscalls += 2;
        }
        let pending = (
            s.read.is_some() as usize + s.queued_reads(),
            s.write.is_some() as usize + s.queued_writes(),
        );
        while let Some(req) = s.next_read() {
            let done = req.done();
            eng.finish(conn, Op::Read, req, done, Err(Error::ConnClosed), 0);
        }
        while let Some(req) = s.next_write() {
            let done = req.done();
            eng.finish(conn, Op::Write, req, done, Err(Error::ConnClosed), 0);
        }
        s.spill = None;
        s.flags = 0;
        s.generation = s.generation.wrapping_add(1);
        eng.stats.conns -= 1;
        eng.stats.freed += 1;
        self.shared.counts.closed(1);
        tracing::debug!(
            slot = conn.slot,
            generation = conn.generation,
            pending_reads = pending.0,
            pending_writes = pending.1,
            "gaio free"
        );
        self.shared.release_slot(Conn {
            slot: conn.slot,
            generation: s.generation,
            watcher: conn.watcher,
        });
    }

    fn expire(&mut self) {
        if self.eng.timers.len() == 0 {
            return;
        }
        let now = self.now();
        while let Some(t) = self.eng.timers.pop_expired(now) {
            let Some(s) = self.slots.get_mut(t.slot) else {
                continue;
            };
            debug_assert!(s.generation == t.generation && s.fd.is_some());
            let conn = Conn {
                slot: t.slot,
                generation: t.generation,
                watcher: self.shared.id,
            };
            let (req, was_head) = match t.dir {
                Dir::Read => {
                    take_by_timer(&mut s.read, s.spill.as_mut().map(|x| &mut x.reads), t.id)
                }
                Dir::Write => {
                    take_by_timer(&mut s.write, s.spill.as_mut().map(|x| &mut x.writes), t.id)
                }
            };
            let Some(mut req) = req else {
                debug_assert!(false, "armed timer without its request");
                continue;
            };
            req.set_timer(NO_TIMER); // already out of the heap
            let done = req.done();
            let op = if t.dir == Dir::Read {
                Op::Read
            } else {
                Op::Write
            };
            tracing::trace!(slot = t.slot, ?op, done, "gaio deadline");
            self.eng
                .finish(conn, op, req, done, Err(Error::Deadline), 0);
            if was_head {
                // The next request in line may be able to proceed now.
                match t.dir {
                    Dir::Read => self.eng.do_reads(s, t.slot),
                    Dir::Write => self.eng.do_writes(s, t.slot),
                }
            }
        }
    }

    fn retry_swap_waiters(&mut self) {
        let mut waiters = std::mem::take(&mut self.eng.swap_waiters);
        for &slot in &waiters {
            if let Some(s) = self.slots.get_mut(slot) {
                s.flags &= !SWAP_WAIT;
                if s.fd.is_some() {
                    self.eng.do_reads(s, slot);
                }
            }
        }
        waiters.clear();
        // Reads that still found no room re-added themselves to the (new) list.
        waiters.append(&mut self.eng.swap_waiters);
        self.eng.swap_waiters = waiters;
    }
}

/// Gives back the memory of a burst: a batch vector keeps its capacity (so the
/// steady state allocates nothing) until 64 batches in a row used under an eighth
/// of it; then it shrinks. 10k connections registered at once must not leave
/// ~80 bytes per connection of command buffer behind for good.
#[derive(Debug, Default)]
struct Trim {
    quiet: u32,
    /// Entries the last batch used.
    last: usize,
}

impl Trim {
    fn after<T>(&mut self, v: &mut Vec<T>, used: usize) {
        self.last = used;
        let cap = v.capacity();
        if cap <= 256 {
            return; // small enough to keep; not evidence either way
        }
        if used >= cap / 8 {
            self.quiet = 0;
            return;
        }
        self.quiet += 1;
        if self.quiet >= 64 {
            self.quiet = 0;
            v.shrink_to((used * 2).max(64));
        }
    }

    /// The capacity to shrink to when the watcher goes idle, if the last batch
    /// used under an eighth of it: an idle server should not sit on the buffers
    /// of its last burst (it may never run another batch to trigger `after`).
    fn idle_target(&self, cap: usize) -> Option<usize> {
        (cap > 256 && self.last < cap / 8).then(|| (self.last * 2).max(64))
    }

    fn at_park<T>(&mut self, v: &mut Vec<T>) {
        if let Some(to) = self.idle_target(v.capacity()) {
            v.shrink_to(to);
            self.quiet = 0;
        }
    }
}

/// Removes the request with timer `id` from a queue: the head (then the next queued
/// request becomes head) or one further back.
fn take_by_timer<C>(
    head: &mut Option<Req<C>>,
    rest: Option<&mut std::collections::VecDeque<Req<C>>>,
    id: u32,
) -> (Option<Req<C>>, bool) {
    if head.as_ref().is_some_and(|r| r.timer() == id) {
        let next = rest.and_then(|q| q.pop_front());
        return (std::mem::replace(head, next), true);
    }
    let found = rest.and_then(|q| {
        let i = q.iter().position(|r| r.timer() == id)?;
        q.remove(i)
    });
    (found, false)
}

impl<C> Engine<C> {
    /// Records a completion. Every accepted request passes through here exactly once.
    #[inline]
    fn finish(
        &mut self,
        conn: Conn,
        op: Op,
        req: Req<C>,
        size: usize,
        result: Result<()>,
        swap_off: usize,
    ) {
        if req.timer() != NO_TIMER {
            self.timers.remove(req.timer());
        }
        if let Err(e) = &result {
            tracing::trace!(slot = conn.slot, ?op, size, error = %e, "gaio request failed");
        }
        match op {
            Op::Read => self.stats.pending_reads -= 1,
            Op::Write => self.stats.pending_writes -= 1,
        }
        self.stats.completions += 1;
        let buf = match req.buf {
            Some(v) => DoneBuf::Owned(v),
            None => DoneBuf::Swap {
                off: swap_off,
                len: if result.is_ok() { size } else { 0 },
            },
        };
        self.done.push(Done {
            op,
            conn,
            ctx: req.ctx,
            size,
            result,
            buf,
        });
    }

    /// Runs the read queue of `s` while the fd is readable.
    fn do_reads(&mut self, s: &mut Slot<C>, slot: u32) {
        let conn = Conn {
            slot,
            generation: s.generation,
            watcher: self.watcher,
        };
        loop {
            if s.flags & READABLE == 0 {
                return;
            }
            let (Some(fd), Some(req)) = (s.fd.as_ref(), s.read.as_mut()) else {
                return;
            };
            let swap_off = self.swap_used;
            let done = req.done();
            let (res, want) = match req.buf.as_mut() {
                Some(b) => {
                    let target = &mut b[done..];
                    (gaio_sys::read(fd.as_fd(), target), target.len())
                }
                None => {
                    let room = self.swap.len() - swap_off;
                    if room < self.swap_min {
                        if s.flags & SWAP_WAIT == 0 {
                            s.flags |= SWAP_WAIT;
                            self.swap_waiters.push(slot);
                        }
                        return;
                    }
                    (gaio_sys::read(fd.as_fd(), &mut self.swap[swap_off..]), room)
                }
            };
            self.stats.syscalls += 1;
            let (size, result) = match res {
                Ok(0) => {
                    // EOF. read_full short of its length is an error, like read_exact.
                    let res = if req.kind() == Kind::ReadFull {
                        Err(Error::Io(io::ErrorKind::UnexpectedEof.into()))
                    } else {
                        Ok(())
                    };
                    (req.done(), res)
                }
                Ok(n) => {
                    if SHORT_IO_CLEARS_READINESS && n < want && s.flags & HUP == 0 {
                        s.flags &= !READABLE;
                    }
                    if req.buf.is_none() {
                        self.swap_used += n;
                        (n, Ok(()))
                    } else {
                        req.advance(n);
                        if req.kind() == Kind::ReadFull && n < want {
                            continue;
                        }
                        (req.done(), Ok(()))
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    s.flags &= !READABLE;
                    return;
                }
                Err(e) => (req.done(), Err(Error::Io(e))),
            };
            let req = s.next_read().expect("read head present");
            self.finish(conn, Op::Read, req, size, result, swap_off);
        }
    }

    /// Runs the write queue of `s` while the fd is writable, several queued writes
    /// per `writev`.
    fn do_writes(&mut self, s: &mut Slot<C>, slot: u32) {
        let conn = Conn {
            slot,
            generation: s.generation,
            watcher: self.watcher,
        };
        loop {
            if s.flags & WRITABLE == 0 {
                return;
            }
            let (Some(fd), Some(head)) = (s.fd.as_ref(), s.write.as_ref()) else {
                return;
            };
            let first = &head.buf.as_deref().expect("writes own a buffer")[head.done()..];
            let socket = s.flags & SOCKET != 0;
            let queued = s
                .spill
                .as_ref()
                .map(|x| &x.writes)
                .filter(|q| !q.is_empty());
            let (res, want) = match queued {
                None => {
                    let res = if socket {
                        gaio_sys::send(fd.as_fd(), first)
                    } else {
                        gaio_sys::write(fd.as_fd(), first)
                    };
                    (res, first.len())
                }
                Some(q) => {
                    let mut iov = [IoSlice::new(&[]); IOV_MAX];
                    iov[0] = IoSlice::new(first);
                    let mut want = first.len();
                    let mut n = 1;
                    for r in q.iter().take(IOV_MAX - 1) {
                        let b = r.buf.as_deref().expect("writes own a buffer");
                        iov[n] = IoSlice::new(b);
                        want += b.len();
                        n += 1;
                    }
                    let res = if socket {
                        gaio_sys::sendv(fd.as_fd(), &iov[..n])
                    } else {
                        gaio_sys::writev(fd.as_fd(), &iov[..n])
                    };
                    (res, want)
                }
            };
            self.stats.syscalls += 1;
            match res {
                Ok(mut n) => {
                    let short = n < want;
                    while n > 0 {
                        let head = s.write.as_mut().expect("bytes written belong to a request");
                        let left = head.buf.as_ref().map_or(0, Vec::len) - head.done();
                        if n < left {
                            head.advance(n);
                            break;
                        }
                        n -= left;
                        head.advance(left);
                        let req = s.next_write().expect("write head present");
                        let size = req.done();
                        self.finish(conn, Op::Write, req, size, Ok(()), 0);
                    }
                    if short && SHORT_IO_CLEARS_READINESS {
                        s.flags &= !WRITABLE;
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    s.flags &= !WRITABLE;
                    return;
                }
                Err(e) => {
                    let req = s.next_write().expect("write head present");
                    let size = req.done();
                    self.finish(conn, Op::Write, req, size, Err(Error::Io(e)), 0);
                }
            }
        }
    }
}

impl<C> Drop for Watcher<C> {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
