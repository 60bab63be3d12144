//! The submission side: the state a [`Watcher`](crate::Watcher) shares with its
//! [`Submitter`]s, and the commands that travel from one to the other.
//!
//! Two paths, one order. Requests from the thread that drives the watcher go into a
//! `Mutex<Vec>` only that thread touches (an uncontended lock: two atomic operations,
//! no syscall, and no allocation once the vector has grown), so an echo loop's
//! steady state allocates nothing. Requests from any other thread go through a
//! lock-free `crossbeam_queue::SegQueue`. Every command takes a number from one
//! atomic counter before it is queued; the watcher processes a drained batch in that
//! order, so a request that happens-after another (same thread, or handed over
//! through any synchronisation) is processed after it whichever path each took.

use std::cell::Cell;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use crossbeam_queue::SegQueue;
use gaio_sys::{FdKind, Waker};

use crate::timer::NO_TIMER;
use crate::{Conn, Error, Result, Stats};

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Read = 0,
    ReadFull = 1,
    Write = 2,
}

/// One pending request: kept inline in its connection's slot while it is first in
/// line, so an idle connection with one read costs no allocation. 40 bytes with a
/// `usize` ctx: the progress count is a `u32` (buffers are limited to 4 GiB) and the
/// kind shares a word with the timer id, so two requests and a connection fit the
/// 128-byte budget per idle connection.
#[derive(Debug)]
pub(crate) struct Req<C> {
    /// `None`: read into the swap buffer.
    pub buf: Option<Vec<u8>>,
    pub ctx: C,
    /// Bytes moved so far (read_full and write make progress across calls).
    done: u32,
    /// Kind in the top two bits, timer id (or `NO_TIMER`) below.
    meta: u32,
}

const KIND_SHIFT: u32 = 30;
const TIMER_MASK: u32 = (1 << KIND_SHIFT) - 1;

/// The largest buffer a request may carry: progress is counted in a `u32`.
pub(crate) const MAX_BUF: usize = u32::MAX as usize;

impl<C> Req<C> {
    pub fn new(buf: Option<Vec<u8>>, ctx: C, kind: Kind) -> Req<C> {
        debug_assert!(buf.as_ref().is_none_or(|b| b.len() <= MAX_BUF));
        Req {
            buf,
            ctx,
            done: 0,
            meta: ((kind as u32) << KIND_SHIFT) | NO_TIMER,
        }
    }

    pub fn kind(&self) -> Kind {
        match self.meta >> KIND_SHIFT {
            0 => Kind::Read,
            1 => Kind::ReadFull,
            _ => Kind::Write,
        }
    }

    pub fn timer(&self) -> u32 {
        self.meta & TIMER_MASK
    }

    pub fn set_timer(&mut self, id: u32) {
        debug_assert!(id <= TIMER_MASK);
        self.meta = (self.meta & !TIMER_MASK) | id;
    }

    pub fn done(&self) -> usize {
        self.done as usize
    }

    pub fn advance(&mut self, n: usize) {
        self.done += n as u32;
    }
}

#[derive(Debug)]
pub(crate) enum Cmd<C> {
    Submit {
        conn: Conn,
        req: Req<C>,
        deadline: Option<Instant>,
    },
    Free(Conn),
    Register(Conn, OwnedFd, FdKind),
    /// Make `wait_io` return, even with an empty batch.
    Wake,
}

#[derive(Debug)]
pub(crate) struct Queued<C> {
    pub seq: u64,
    pub cmd: Cmd<C>,
}

/// Token of the waker's events; connection tokens never reach it because a slot
/// index is below `u32::MAX`.
pub(crate) const WAKE_TOKEN: u64 = u64::MAX;

pub(crate) fn token(conn: Conn) -> u64 {
    (u64::from(conn.generation) << 32) | u64::from(conn.slot)
}

thread_local! {
    static THREAD_TAG: Cell<u64> = const { Cell::new(0) };
}
static NEXT_TAG: AtomicU64 = AtomicU64::new(1);

/// A small unique number for the calling thread (std's `ThreadId::as_u64` is unstable).
pub(crate) fn thread_tag() -> u64 {
    THREAD_TAG.with(|t| {
        if t.get() == 0 {
            t.set(NEXT_TAG.fetch_add(1, Ordering::Relaxed));
        }
        t.get()
    })
}

static NEXT_WATCHER_ID: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
pub(crate) struct Shared<C> {
    /// Process-unique id, carried in every `Conn`: a `Conn` handed to another
    /// watcher (easy with a pool) is refused instead of reaching a stranger's slot.
    pub id: u32,
    /// `None` once the watcher closed: its fd must not outlive the watcher just
    /// because a `Submitter` is still around. Read-locked only to wake a parked
    /// watcher, which is rare by design.
    waker: RwLock<Option<Waker>>,
    remote: SegQueue<Queued<C>>,
    local: Mutex<Vec<Queued<C>>>,
    /// Tag of the thread that last drove `wait_io`.
    pub owner: AtomicU64,
    /// Order of submission (taken before queueing).
    seq: AtomicU64,
    /// Commands queued so far (counted after queueing): what the park check reads.
    pushed: AtomicU64,
    /// Set by the watcher right before it blocks in the poller; whoever swaps it back
    /// to false owes one wake.
    pub parked: AtomicBool,
    pub closed: AtomicBool,
    next_slot: AtomicU32,
    free_slots: SegQueue<Conn>,
    pub counts: ConnCounts,
    /// The watcher's figures as of its last batch or park, for other threads.
    published: Published,
}

/// [`Stats`] in atomics: written only by the watcher's thread, read by anyone.
#[derive(Debug, Default)]
struct Published {
    conns: AtomicUsize,
    pending_reads: AtomicUsize,
    pending_writes: AtomicUsize,
    timers: AtomicUsize,
    completions: AtomicU64,
    freed: AtomicU64,
    syscalls: AtomicU64,
}

/// Live-connection count of one watcher, readable from any thread (e.g. by a load
/// balancer). A connection counts from the moment `register` returns its `Conn`
/// until the watcher has processed its `free`.
#[derive(Debug, Clone, Default)]
pub struct ConnCounts {
    inner: Arc<CountsInner>,
}

#[derive(Debug, Default)]
struct CountsInner {
    opened: AtomicU64,
    closed: AtomicU64,
}

impl ConnCounts {
    /// Connections registered and not yet freed.
    pub fn live(&self) -> usize {
        // Read `closed` first: a concurrent open can only make the result larger.
        let closed = self.inner.closed.load(Ordering::Acquire);
        let opened = self.inner.opened.load(Ordering::Acquire);
        opened.saturating_sub(closed) as usize
    }

    pub(crate) fn opened(&self) {
        self.inner.opened.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn closed(&self, n: u64) {
        self.inner.closed.fetch_add(n, Ordering::Release);
    }
}

impl<C> Shared<C> {
    pub fn new(waker: Waker) -> Shared<C> {
        Shared {
            id: NEXT_WATCHER_ID.fetch_add(1, Ordering::Relaxed),
            waker: RwLock::new(Some(waker)),
            remote: SegQueue::new(),
            local: Mutex::new(Vec::new()),
            owner: AtomicU64::new(thread_tag()),
            seq: AtomicU64::new(0),
            pushed: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            next_slot: AtomicU32::new(0),
            free_slots: SegQueue::new(),
            counts: ConnCounts::default(),
            published: Published::default(),
        }
    }

    /// Makes `st` what [`Submitter::stats`] reads. Relaxed: each figure is a
    /// snapshot on its own, as a monitoring read expects.
    pub fn publish(&self, st: &Stats) {
        let p = &self.published;
        p.conns.store(st.conns, Ordering::Relaxed);
        p.pending_reads.store(st.pending_reads, Ordering::Relaxed);
        p.pending_writes.store(st.pending_writes, Ordering::Relaxed);
        p.timers.store(st.timers, Ordering::Relaxed);
        p.completions.store(st.completions, Ordering::Relaxed);
        p.freed.store(st.freed, Ordering::Relaxed);
        p.syscalls.store(st.syscalls, Ordering::Relaxed);
    }

    fn published(&self) -> Stats {
        let p = &self.published;
        Stats {
            conns: p.conns.load(Ordering::Relaxed),
            pending_reads: p.pending_reads.load(Ordering::Relaxed),
            pending_writes: p.pending_writes.load(Ordering::Relaxed),
            timers: p.timers.load(Ordering::Relaxed),
            completions: p.completions.load(Ordering::Relaxed),
            freed: p.freed.load(Ordering::Relaxed),
            syscalls: p.syscalls.load(Ordering::Relaxed),
        }
    }

    fn local(&self) -> MutexGuard<'_, Vec<Queued<C>>> {
        // A panic while holding this lock cannot leave the Vec half-updated.
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, cmd: Cmd<C>) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::WatcherClosed);
        }
        // Coherence of one atomic gives every command that happens-after another a
        // larger number, whichever thread or path either took.
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let q = Queued { seq, cmd };
        if self.owner.load(Ordering::Relaxed) == thread_tag() {
            self.local().push(q);
        } else {
            self.remote.push(q);
        }
        // Store-buffering handshake with `Watcher::poll`, all four accesses SeqCst
        // (one total order, no fence needed): either the watcher's load of
        // `pushed` sees this command before it blocks, or our load of `parked`
        // sees it parked and we wake it.
        self.pushed.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::AcqRel) {
            let waker = self.waker.read().unwrap_or_else(|e| e.into_inner());
            if let Some(Err(e)) = waker.as_ref().map(Waker::wake) {
                // The command is queued: reporting Err would break "refused or
                // completed, never both". The next wake or poll picks it up.
                tracing::error!(error = %e, "gaio: could not wake the watcher");
            }
        }
        if self.closed.load(Ordering::Acquire) {
            // The watcher closed while we queued: drop what is left (and any fd it
            // carries) now rather than when the last handle goes. The command was
            // accepted — the watcher may even have run it before closing — so this
            // is the "closed with requests pending" case, not a refusal.
            self.discard_queued();
        }
        Ok(())
    }

    /// Shrinks the owner-thread queue to `target(capacity)`, if that says so.
    pub fn shrink_local(&self, target: impl FnOnce(usize) -> Option<usize>) {
        let mut local = self.local();
        if let Some(to) = target(local.capacity()) {
            local.shrink_to(to);
        }
    }

    /// Whether more commands were queued than the `drained` the watcher has taken:
    /// one atomic load, no lock. A command counts only once it is in a queue, so a
    /// submitter preempted half-way never makes the watcher spin; one drained
    /// before it was counted makes this say no, and its submitter then sees
    /// `parked` and wakes the watcher (a spare wake, never a lost one).
    pub fn has_queued(&self, drained: u64) -> bool {
        self.pushed.load(Ordering::SeqCst) > drained
    }

    /// Moves every queued command into `out` (which must be empty), in submission
    /// order. `remote_buf` is scratch space kept by the caller to avoid allocating.
    /// Returns how many commands came from other threads.
    pub fn drain_into(&self, out: &mut Vec<Queued<C>>, remote_buf: &mut Vec<Queued<C>>) -> usize {
        debug_assert!(out.is_empty());
        std::mem::swap(&mut *self.local(), out);
        if self.remote.is_empty() {
            return 0;
        }
        // Bounded: producers that keep pushing cannot hold the watcher here.
        for _ in 0..self.remote.len() {
            match self.remote.pop() {
                Some(q) => remote_buf.push(q),
                None => break,
            }
        }
        let remote = remote_buf.len();
        // Concurrent producers can push out of number order; order them, then merge
        // with the local run (already in order).
        remote_buf.sort_unstable_by_key(|q| q.seq);
        if out.is_empty() {
            std::mem::swap(out, remote_buf);
            return remote;
        }
        let local_len = out.len();
        out.append(remote_buf);
        if out[local_len - 1].seq > out[local_len].seq {
            out.sort_unstable_by_key(|q| q.seq);
        }
        remote
    }

    /// Marks the watcher closed and closes the waker's fd.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        *self.waker.write().unwrap_or_else(|e| e.into_inner()) = None;
        self.discard_queued();
    }

    pub fn discard_queued(&self) {
        drop(std::mem::take(&mut *self.local()));
        while self.remote.pop().is_some() {}
    }

    /// Checks an fd, makes it nonblocking and picks a `Conn` for it. The watcher
    /// adds it to its poller when it installs it. On failure the fd is closed.
    pub fn open(&self, fd: OwnedFd) -> Result<(Conn, OwnedFd, FdKind)> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::WatcherClosed);
        }
        let kind = gaio_sys::fd_kind(fd.as_fd())?;
        if kind == FdKind::Unsupported {
            return Err(Error::Unsupported);
        }
        gaio_sys::set_nonblocking(fd.as_fd(), true)?;
        let conn = self.free_slots.pop().unwrap_or_else(|| Conn {
            slot: self.next_slot.fetch_add(1, Ordering::Relaxed),
            generation: 0,
            watcher: self.id,
        });
        if conn.slot == u32::MAX {
            return Err(Error::Io(std::io::Error::other("too many connections")));
        }
        self.counts.opened();
        Ok((conn, fd, kind))
    }

    pub fn release_slot(&self, conn: Conn) {
        self.free_slots.push(conn);
    }
}

/// A handle for submitting requests to a [`Watcher`](crate::Watcher) from any thread.
///
/// `Clone + Send + Sync` (for `C: Send`). Submitting never blocks and makes no system
/// call unless the watcher is parked in the poller, in which case the first
/// submission wakes it. Requests are refused at once (`Err`, the request is dropped)
/// only for an empty buffer or a closed watcher; everything accepted completes
/// exactly once through `wait_io`.
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
/// use std::time::Duration;
/// use gaio_core::{Op, Watcher};
///
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
/// let (server, _) = listener.accept()?;
///
/// let mut w: Watcher<u32> = Watcher::new()?;
/// let tx = w.submitter();
/// let conn = w.register(server)?;
/// tx.read(conn, 1, None)?;
/// client.write_all(b"hi")?;
/// let res = w.wait_io()?.next().unwrap();
/// assert_eq!((res.op, res.ctx, res.data()), (Op::Read, 1, &b"hi"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Submitter<C> {
    pub(crate) shared: Arc<Shared<C>>,
}

impl<C> Clone for Submitter<C> {
    fn clone(&self) -> Self {
        Submitter {
            shared: self.shared.clone(),
        }
    }
}

impl<C> Submitter<C> {
    fn submit(
        &self,
        conn: Conn,
        ctx: C,
        buf: Option<Vec<u8>>,
        kind: Kind,
        deadline: Option<Instant>,
    ) -> Result<()> {
        if conn.watcher != self.shared.id {
            return Err(Error::ConnClosed);
        }
        match buf.as_ref().map(Vec::len) {
            Some(0) => return Err(Error::EmptyBuffer),
            Some(n) if n > MAX_BUF => {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a request's buffer must be under 4 GiB",
                )));
            }
            _ => {}
        }
        let req = Req::new(buf, ctx, kind);
        self.shared.push(Cmd::Submit {
            conn,
            req,
            deadline,
        })
    }

    /// Hands a stream socket or pipe to the watcher, from any thread. It is made
    /// nonblocking; every socket option already set is kept. The watcher adds it to
    /// its poller at its next `wait_io`; requests submitted after this call are
    /// ordered after it. Should the poller refuse it then (the kernel is out of
    /// memory for watches), the fd is closed, an error is logged, and requests on the
    /// `Conn` complete with [`Error::ConnClosed`].
    ///
    /// # Errors
    /// [`Error::Unsupported`] for anything but a stream socket or pipe (the fd is
    /// closed), [`Error::WatcherClosed`], or the OS error from `fstat`/`fcntl`.
    pub fn register(&self, fd: impl Into<OwnedFd>) -> Result<Conn> {
        let (conn, fd, kind) = self.shared.open(fd.into())?;
        self.shared.push(Cmd::Register(conn, fd, kind))?;
        Ok(conn)
    }

    /// Reads whatever is available, at least one byte (or EOF: `Ok` with size 0).
    /// `None` reads into the watcher's swap buffer, borrowed by the completion until
    /// the next `wait_io`; `Some(buf)` reads into `buf[..buf.len()]` and hands `buf`
    /// back.
    ///
    /// # Errors
    /// [`Error::EmptyBuffer`] for `Some` of an empty buffer; [`Error::WatcherClosed`].
    pub fn read(&self, conn: Conn, ctx: C, buf: Option<Vec<u8>>) -> Result<()> {
        self.submit(conn, ctx, buf, Kind::Read, None)
    }

    /// [`read`](Self::read) that completes with [`Error::Deadline`] if nothing was
    /// read by `deadline`.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub fn read_timeout(
        &self,
        conn: Conn,
        ctx: C,
        buf: Option<Vec<u8>>,
        deadline: Instant,
    ) -> Result<()> {
        self.submit(conn, ctx, buf, Kind::Read, Some(deadline))
    }

    /// Reads until `buf` is full. Completes early only on an error, the deadline
    /// (`Error::Deadline`), or EOF (`Io` of kind `UnexpectedEof`), reporting the
    /// bytes read so far in `size`.
    ///
    /// # Errors
    /// [`Error::EmptyBuffer`]; [`Error::WatcherClosed`].
    pub fn read_full(
        &self,
        conn: Conn,
        ctx: C,
        buf: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<()> {
        if buf.is_empty() {
            return Err(Error::EmptyBuffer);
        }
        self.submit(conn, ctx, Some(buf), Kind::ReadFull, deadline)
    }

    /// Writes all of `buf`; completes when every byte is written (or on error).
    /// Writes queued on one connection go out in order, several per `writev`.
    ///
    /// # Errors
    /// [`Error::EmptyBuffer`]; [`Error::WatcherClosed`].
    pub fn write(&self, conn: Conn, ctx: C, buf: Vec<u8>) -> Result<()> {
        if buf.is_empty() {
            return Err(Error::EmptyBuffer);
        }
        self.submit(conn, ctx, Some(buf), Kind::Write, None)
    }

    /// [`write`](Self::write) that completes with [`Error::Deadline`] (and the count
    /// written so far) if not finished by `deadline`.
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn write_timeout(&self, conn: Conn, ctx: C, buf: Vec<u8>, deadline: Instant) -> Result<()> {
        if buf.is_empty() {
            return Err(Error::EmptyBuffer);
        }
        self.submit(conn, ctx, Some(buf), Kind::Write, Some(deadline))
    }

    /// Closes the connection at the watcher's next `wait_io`. Every request pending
    /// on it completes with [`Error::ConnClosed`]; later requests with this `Conn`
    /// complete with `ConnClosed` too, even once its slot and fd number are reused.
    /// Freeing twice is harmless.
    ///
    /// # Errors
    /// [`Error::WatcherClosed`].
    pub fn free(&self, conn: Conn) -> Result<()> {
        if conn.watcher != self.shared.id {
            return Err(Error::ConnClosed);
        }
        self.shared.push(Cmd::Free(conn))
    }

    /// Makes the watcher's current (or next) `wait_io` return, with an empty batch if
    /// nothing completed: for a thread that drives the watcher and also has other
    /// work to pick up, such as new connections handed over by an acceptor.
    ///
    /// # Errors
    /// [`Error::WatcherClosed`].
    pub fn wake(&self) -> Result<()> {
        self.shared.push(Cmd::Wake)
    }

    /// The watcher's counters as it published them, from any thread: at the end
    /// of every `wait_io` batch and whenever it parks in the poller — so an idle
    /// watcher's figures include every request it has taken in. On the watcher's
    /// own thread, [`Watcher::stats`](crate::Watcher::stats) is exact.
    ///
    /// ```
    /// use std::time::Duration;
    /// let (_client, server) = {
    ///     let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    ///     let c = std::net::TcpStream::connect(l.local_addr()?)?;
    ///     (c, l.accept()?.0)
    /// };
    /// let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let tx = w.submitter();
    /// let conn = w.register(server)?;
    /// tx.read(conn, (), None)?;
    /// assert_eq!(w.wait_io_timeout(Duration::from_millis(1))?.count(), 0);
    /// // The watcher parked with the read pending, and said so.
    /// assert_eq!(tx.stats().pending_reads, 1);
    /// assert_eq!(tx.stats().conns, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Stats {
        self.shared.published()
    }

    /// The watcher's live-connection count, readable from any thread.
    pub fn conn_counts(&self) -> ConnCounts {
        self.shared.counts.clone()
    }

    /// Whether the watcher has been closed or dropped.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}
