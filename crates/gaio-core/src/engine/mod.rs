//! The engine: the connection table with typed state, per-direction request
//! queues, deadlines, swap-buffer accounting and completions — everything that
//! makes a request mean the same on every backend. The driver only moves bytes.
//!
//! A request's path through it: [`Engine::submit`] checks the token
//! ([`Table::live_mut`]), arms its deadline and appends it to its connection's
//! queue, marking the connection dirty; at the watcher's next turn,
//! [`Engine::run_dirty`] (or a readiness event, [`Engine::dispatch`]) calls
//! [`Engine::progress`], which moves bytes for the head of each ready direction
//! through the driver and, when the request's own policy says it is complete,
//! [`Engine::finish`]es it into `done`.

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod complete;
mod table;
mod timer;

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gaio_sys::{AcceptError, FdKind, IOV_MAX};

use crate::conn::Token;
use crate::driver::poll::Ready;
use crate::driver::{Cqes, Driver};
use crate::queue::{Cmd, Shared};
use crate::req::{Buf, Direction, EXPIRED, Kind, NO_TIMER, Req, Step};
use crate::{Conn, Error, Op, Result, Stats};

use table::ConnState;
pub(crate) use table::Table;
use timer::Timers;

/// `EPERM`, which epoll answers for fds it cannot watch (regular files): the same
/// value on every unix, so gaio-core needs no libc for it.
const EPERM: i32 = 1;

/// What a completion hands back.
#[derive(Debug)]
pub(crate) enum DoneBuf {
    None,
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
    Swap {
        off: usize,
        len: usize,
    },
    /// Bytes a swap-buffer read received in the io_uring buffer ring.
    Ring {
        off: usize,
        len: usize,
    },
    /// The peer is boxed (one small allocation per accept) so that every other
    /// completion stays small.
    Accepted {
        conn: Conn,
        peer: Option<Box<SocketAddr>>,
    },
}

/// What `finish` adds to a request's own buffer.
#[derive(Debug)]
pub(crate) enum Extra {
    None,
    /// A swap-buffer read landed at this offset.
    Swap(usize),
    /// A swap-buffer read landed at this offset of the io_uring buffer ring.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Ring(usize),
    /// An accept produced this connection.
    Accepted(Conn, Option<SocketAddr>),
}

/// First and longest pause before accepting again after running out of fds
/// (the listener is edge-triggered: the queued connections raise no new event).
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A listener that ran out of fds, and when to try it again.
#[derive(Debug)]
struct Backoff {
    slot: u32,
    generation: u32,
    /// `None` once retried: the entry stays so the next failure doubles `step`.
    at: Option<Instant>,
    step: Duration,
}

/// A finished request, until the batch hands it out.
#[derive(Debug)]
pub(crate) struct Done<C> {
    pub op: Op,
    pub conn: Conn,
    pub ctx: C,
    pub size: usize,
    pub result: Result<()>,
    pub buf: DoneBuf,
}

/// The connection table and everything else, apart: moving bytes for one
/// connection borrows its state from `table` and the rest from `core`, so a
/// connection is looked up once per turn, not once per step.
#[derive(Debug)]
pub(crate) struct Engine<C> {
    pub table: Table<C>,
    pub core: Core<C>,
}

#[derive(Debug)]
pub(crate) struct Core<C> {
    pub shared: Arc<Shared<C>>,
    /// `shared.id`, kept at hand for every `Conn` the engine builds or checks.
    id: u32,
    pub driver: Driver,
    timers: Timers,
    /// Completions made since the last batch was handed out.
    pub done: Vec<Done<C>>,
    stats: Stats,
    /// Swap-buffer bytes used by the current batch, the size of the buffer, and
    /// the least room worth starting a read into (a sliver costs a syscall per
    /// few bytes: wait for the next batch instead).
    swap_used: usize,
    swap_len: usize,
    swap_min: usize,
    /// Connections whose swap read waits for the next batch's buffer.
    swap_waiters: Vec<u32>,
    /// Connections with requests (or a `free`) not tried yet.
    pub dirty: Vec<u32>,
    /// Readiness events of the last poll, copied out of the driver.
    ready: Vec<Ready>,
    /// Commands taken from the cross-thread queue so far.
    pub drained: u64,
    /// A `Submitter::wake` arrived: return from `wait_io` even with no completions.
    pub woken: bool,
    /// This turn's clock reading, if taken.
    now: Option<Instant>,
    /// The watcher was closed: every request is refused.
    pub closed: bool,
    /// Bytes a connection may have queued for writing (`usize::MAX`: no limit).
    write_limit: usize,
    /// Connections accepted this turn, installed before the batch is handed out.
    accepted: Vec<(Conn, OwnedFd)>,
    /// Listeners waiting out fd exhaustion.
    backoff: Vec<Backoff>,
    /// Completions of the last io_uring wait, and how many were dispatched.
    cqes: Cqes,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    cqe_at: usize,
    /// Results that arrived (io_uring) before the read or accept they are for.
    /// In arrival order, by slot: few and short-lived (one list, no map, so
    /// the steady state allocates nothing).
    #[cfg(target_os = "linux")]
    early: Vec<(u32, complete::Early)>,
    /// Emptied byte buffers of `early`, for the next ones.
    #[cfg(target_os = "linux")]
    spare: Vec<Vec<u8>>,
}

impl<C> std::ops::Deref for Engine<C> {
    type Target = Core<C>;
    fn deref(&self) -> &Core<C> {
        &self.core
    }
}

impl<C> std::ops::DerefMut for Engine<C> {
    fn deref_mut(&mut self) -> &mut Core<C> {
        &mut self.core
    }
}

impl<C> Engine<C> {
    pub fn new(
        shared: Arc<Shared<C>>,
        driver: Driver,
        swap_len: usize,
        write_limit: Option<usize>,
    ) -> Engine<C> {
        // io_uring sets early bytes aside in these: sized up front, so an echo's
        // steady state allocates nothing (64 KiB per watcher, with the ring).
        #[cfg(target_os = "linux")]
        let (early, spare) = if driver.is_uring() {
            let mut spare = Vec::with_capacity(64);
            spare.extend((0..4).map(|_| Vec::with_capacity(16 * 1024)));
            (Vec::with_capacity(64), spare)
        } else {
            (Vec::new(), Vec::new())
        };
        Engine {
            table: Table::new(),
            core: Core {
                id: shared.id,
                shared,
                driver,
                timers: Timers::default(),
                done: Vec::new(),
                stats: Stats::default(),
                swap_used: 0,
                swap_len,
                swap_min: swap_len.min(1024),
                swap_waiters: Vec::new(),
                dirty: Vec::new(),
                ready: Vec::new(),
                drained: 0,
                woken: false,
                now: None,
                closed: false,
                write_limit: write_limit.unwrap_or(usize::MAX),
                accepted: Vec::new(),
                backoff: Vec::new(),
                cqes: Cqes::new(),
                cqe_at: 0,
                #[cfg(target_os = "linux")]
                early,
                #[cfg(target_os = "linux")]
                spare,
            },
        }
    }

    /// Takes an fd over under `conn` (a slot from `Shared::open`); `connecting`:
    /// a nonblocking connect is under way.
    pub fn install(
        &mut self,
        conn: Conn,
        fd: OwnedFd,
        kind: FdKind,
        connecting: bool,
    ) -> Result<()> {
        let Engine { table, core } = self;
        if let Err(e) = core.driver.register(fd.as_fd(), Token::of(conn)) {
            tracing::debug!(slot = conn.slot, error = %e, "gaio register refused by the poller");
            // Retire this generation: requests on `conn` complete with ConnClosed.
            let next = core.shared.slots.release(conn);
            table.get_or_grow(conn.slot).generation = next;
            core.shared.counts.closed(1);
            return Err(if e.raw_os_error() == Some(EPERM) {
                Error::Unsupported
            } else {
                Error::Io(e)
            });
        }
        tracing::debug!(
            slot = conn.slot,
            generation = conn.generation,
            ?fd,
            ?kind,
            "gaio register"
        );
        table.get_or_grow(conn.slot).install(
            fd,
            conn.generation,
            kind == FdKind::Socket,
            connecting,
        );
        core.stats.conns += 1;
        Ok(())
    }

    /// Applies one command from another thread.
    pub fn apply(&mut self, cmd: Cmd<C>) {
        match cmd {
            Cmd::Submit {
                conn,
                req,
                deadline,
            } => {
                // From another thread: a refusal can only be its completion.
                let _ = self.submit(conn, req, deadline, false);
            }
            Cmd::Free(conn) => self.free(conn),
            Cmd::Wake => self.woken = true,
            Cmd::Register(conn, fd, kind, connecting) => {
                if let Err(e) = self.install(conn, fd, kind, connecting) {
                    tracing::error!(slot = conn.slot, error = %e, "gaio: could not watch a registered fd; it was closed");
                }
            }
        }
    }

    /// Applies what other threads queued so far (a bounded number, so producers
    /// that keep pushing cannot hold the watcher here).
    pub fn run_remote(&mut self) {
        for _ in 0..self.shared.queued() {
            let Some(cmd) = self.shared.pop() else { break };
            self.drained += 1;
            self.apply(cmd);
        }
    }

    /// Accepts a request: queues it on its connection, or completes it at once
    /// (`ConnClosed` for a stale or freed `Conn`, `Deadline` for a deadline
    /// already past). Nothing moves until the connection's next `progress`.
    /// A write past the write limit is refused (`Err`, nothing completes) when
    /// `refuse`, else completes with `WriteLimit`.
    #[inline]
    pub fn submit(
        &mut self,
        conn: Conn,
        mut req: Req<C>,
        deadline: Option<Instant>,
        refuse: bool,
    ) -> Result<()> {
        let Engine { table, core } = self;
        let kind = req.kind();
        let dir = kind.direction();
        let live = table
            .live_mut(conn.slot, conn.generation)
            .filter(|_| conn.watcher == core.id);
        let len = req.buf.len();
        if let Some(c) = &live {
            if kind == Kind::Write && c.queued + len > core.write_limit && !c.closing && !c.draining
            {
                if refuse {
                    return Err(Error::WriteLimit);
                }
                core.pending(dir, 1);
                core.finish(conn, req, 0, Err(Error::WriteLimit), Extra::None);
                return Ok(());
            }
        }
        core.pending(dir, 1);
        let Some(c) = live else {
            core.finish(conn, req, 0, Err(Error::ConnClosed), Extra::None);
            return Ok(());
        };
        if c.closing || c.draining {
            // Freed or closing, not closed yet: it completes with ConnClosed when
            // the connection closes, after the requests made before.
            req.doom();
            c.push(dir, req);
            return Ok(());
        }
        if let Some(at) = deadline {
            if at <= core.now() {
                core.finish(conn, req, 0, Err(Error::Deadline), Extra::None);
                return Ok(());
            }
            req.set_timer(core.timers.insert(at, conn.slot, conn.generation, dir));
        }
        match kind {
            Kind::Write => {
                c.queued += len;
                core.stats.queued_write_bytes += len;
            }
            Kind::Close => {
                // Reads end now; writes before the close still go out.
                c.draining = true;
                #[cfg(target_os = "linux")]
                core.settle_reads(c, conn.slot);
                while let Some(r) = c.queue(Direction::Read).pop() {
                    let done = r.done();
                    core.finish(conn, r, done, Err(Error::ConnClosed), Extra::None);
                }
            }
            _ => {}
        }
        c.push(dir, req);
        core.mark_dirty(c, conn.slot);
        Ok(())
    }

    /// Installs the connections accepted this turn, so they are live before the
    /// batch that announces them is handed out.
    pub fn install_accepted(&mut self) {
        while let Some((conn, fd)) = self.accepted.pop() {
            if let Err(e) = self.install(conn, fd, FdKind::Socket, false) {
                tracing::warn!(slot = conn.slot, error = %e, "gaio: could not watch an accepted connection; it was closed");
            }
        }
    }

    /// Tries again the listeners whose fd-exhaustion pause is over.
    pub fn retry_backoff(&mut self, swap: &mut [u8]) {
        let Engine { table, core } = self;
        if core.backoff.is_empty() {
            return;
        }
        let now = core.now();
        for i in 0..core.backoff.len() {
            let b = &mut core.backoff[i];
            if b.at.is_none_or(|at| at > now) {
                continue;
            }
            b.at = None;
            let (slot, generation) = (b.slot, b.generation);
            if let Some(c) = table.live_mut(slot, generation) {
                c.ready.add(true, false, false);
                core.progress(c, slot, swap);
            }
        }
        // Listeners gone, or accepting again, need no entry.
        core.backoff.retain(|b| {
            b.at.is_some()
                || table.live_mut(b.slot, b.generation).is_some_and(|c| {
                    c.head(Direction::Read)
                        .is_some_and(|r| r.kind() == Kind::Accept)
                })
        });
    }

    /// Marks `conn` for closing at the next turn, after the requests already
    /// queued have had their chance to move (so `write; free` does the same
    /// whatever the batch boundaries). A stale `Conn` is ignored.
    pub fn free(&mut self, conn: Conn) {
        let Engine { table, core } = self;
        if conn.watcher != core.id {
            return;
        }
        if let Some(c) = table.live_mut(conn.slot, conn.generation) {
            c.closing = true;
            core.mark_dirty(c, conn.slot);
        }
    }

    /// Frees `conn` at once: the requests queued before get their chance to move,
    /// then it closes. Only between batches (it may read into the swap buffer).
    pub fn free_now(&mut self, conn: Conn, swap: &mut [u8]) {
        self.free(conn);
        let Engine { table, core } = self;
        if let Some(c) = table.live_mut(conn.slot, conn.generation) {
            if c.closing {
                core.progress(c, conn.slot, swap);
                core.close(c, conn.slot);
            }
        }
    }

    /// Takes `conn` out of the watcher without closing it (pending requests
    /// complete with `ConnClosed`). `None` for a stale, foreign or freed `Conn`.
    pub fn detach(&mut self, conn: Conn) -> Result<OwnedFd> {
        let Engine { table, core } = self;
        if conn.watcher != core.id {
            return Err(Error::ConnClosed);
        }
        let c = table
            .live_mut(conn.slot, conn.generation)
            .ok_or(Error::ConnClosed)?;
        if c.closing {
            return Err(Error::ConnClosed);
        }
        if c.early {
            // io_uring received bytes (or accepted connections) that no read
            // (or accept) has taken yet: handing the fd on would lose them.
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::WouldBlock,
                "received data waits for a read on this connection: read it before detaching",
            )));
        }
        core.take(c, conn.slot).ok_or(Error::ConnClosed)
    }

    /// Frees every live connection at once.
    pub fn free_all(&mut self, swap: &mut [u8]) {
        let live: Vec<Conn> = self.table.live(self.core.id).collect();
        for conn in live {
            self.free_now(conn, swap);
        }
    }

    /// Tries every connection that got requests (or a `free`) since the last turn.
    pub fn run_dirty(&mut self, swap: &mut [u8]) {
        let Engine { table, core } = self;
        let dirty = std::mem::take(&mut core.dirty);
        for &slot in &dirty {
            let Some(c) = table.get_mut(slot) else {
                continue;
            };
            c.dirty = false;
            if c.fd.is_none() {
                continue;
            }
            core.progress(c, slot, swap);
            if c.closing {
                core.close(c, slot);
            }
        }
        // Keep the list's capacity (nothing was pushed meanwhile: progress and
        // close never dirty a connection).
        debug_assert!(core.dirty.is_empty());
        core.dirty = dirty;
        core.dirty.clear();
    }

    /// Handles the readiness the last poll reported.
    pub fn dispatch(&mut self, swap: &mut [u8]) {
        #[cfg(target_os = "linux")]
        if self.driver.is_uring() {
            self.dispatch_cqes(swap);
            return;
        }
        let Engine { table, core } = self;
        let mut ready = std::mem::take(&mut core.ready);
        ready.clear();
        ready.extend(core.driver.ready().events());
        for ev in &ready {
            let Some(c) = table.live_mut(ev.token.slot, ev.token.generation) else {
                continue; // an event for a freed (or not yet installed) connection
            };
            let new = c.ready.add(ev.readable, ev.writable, ev.hup);
            if (new.is_ready(Direction::Read) && c.head(Direction::Read).is_some())
                || (new.is_ready(Direction::Write) && c.head(Direction::Write).is_some())
            {
                core.progress(c, ev.token.slot, swap);
            }
        }
        core.ready = ready;
    }

    /// Lends the kernel again the io_uring ring buffers of batches that are
    /// over; whether any.
    pub fn recycle_ring(&mut self) -> bool {
        #[cfg(target_os = "linux")]
        if let Driver::Uring(d) = &mut self.core.driver {
            return d.recycle();
        }
        false
    }

    /// Reads wait for swap-buffer room (or, io_uring, ring buffers).
    pub fn has_swap_waiters(&self) -> bool {
        !self.swap_waiters.is_empty()
    }

    /// Applies completions reaped outside a wait (by a cancellation) and not
    /// dispatched yet.
    #[inline]
    pub fn dispatch_reaped(&mut self, swap: &mut [u8]) {
        if !self.cqes.is_empty() {
            self.dispatch(swap);
        }
    }

    /// Completes every request whose deadline has passed.
    pub fn expire(&mut self, swap: &mut [u8]) {
        let Engine { table, core } = self;
        if core.timers.len() == 0 {
            return;
        }
        let now = core.now();
        while let Some(t) = core.timers.pop_expired(now) {
            let Some(c) = table.get_mut(t.slot) else {
                continue;
            };
            debug_assert!(c.generation == t.generation && c.fd.is_some());
            #[cfg(target_os = "linux")]
            let id = if core.driver.is_uring() {
                // An operation may hold its buffer: that ends first.
                core.unflight(c, t.slot, t.dir, t.id)
            } else {
                t.id
            };
            #[cfg(not(target_os = "linux"))]
            let id = t.id;
            let Some((mut req, was_head)) = c.queue(t.dir).take_by_timer(id) else {
                // Completed by the operation that was cancelled for it: what
                // is next in line moves on.
                debug_assert!(id == EXPIRED, "armed timer without its request");
                core.progress(c, t.slot, swap);
                continue;
            };
            req.set_timer(NO_TIMER); // already out of the heap
            let conn = core.conn(t.slot, t.generation);
            let done = req.done();
            let kind = req.kind();
            if kind == Kind::Write {
                let unsent = req.unsent().len();
                c.queued -= unsent;
                core.stats.queued_write_bytes -= unsent;
            }
            tracing::trace!(slot = t.slot, dir = ?t.dir, done, "gaio deadline");
            core.finish(conn, req, done, Err(Error::Deadline), Extra::None);
            if matches!(kind, Kind::Connect | Kind::Close) {
                // A connect that never finished, or a close whose writes never
                // drained: the connection goes now.
                core.close(c, t.slot);
            } else if was_head || core.driver.is_uring() {
                // The next request in line may be able to proceed now.
                core.progress(c, t.slot, swap);
            }
        }
    }

    /// Swap reads that waited for room try again.
    pub fn retry_swap_waiters(&mut self, swap: &mut [u8]) {
        let Engine { table, core } = self;
        if core.swap_waiters.is_empty() {
            return;
        }
        let mut waiters = std::mem::take(&mut core.swap_waiters);
        for &slot in &waiters {
            if let Some(c) = table.get_mut(slot) {
                c.swap_wait = false;
                if c.fd.is_some() {
                    core.progress(c, slot, swap);
                }
            }
        }
        waiters.clear();
        // Reads that still found no room re-added themselves to the (new) list.
        waiters.append(&mut core.swap_waiters);
        core.swap_waiters = waiters;
    }

    /// Closes every fd but leaks every pending request, and the io_uring
    /// ring's memory: for a watcher dropped where it cannot wait for the kernel
    /// to give their buffers back (off its io_uring thread).
    pub fn abandon(&mut self) {
        self.table.close_fds();
        std::mem::forget(std::mem::replace(&mut self.table, Table::new()));
        #[cfg(target_os = "linux")]
        if let Driver::Uring(d) = &mut self.core.driver {
            d.leak_on_drop();
        }
    }

    /// Drops every connection (closing its fd) and every pending request.
    pub fn clear(&mut self) {
        #[cfg(target_os = "linux")]
        {
            // No operation may still hold a buffer of what is dropped here.
            self.core.settle_all();
            self.core.early.clear();
        }
        self.table.clear();
        let core = &mut self.core;
        core.shared.counts.closed(core.stats.conns as u64);
        core.done.clear();
        core.swap_waiters.clear();
        core.dirty.clear();
        core.timers = Timers::default();
        core.stats.conns = 0;
        core.stats.pending_reads = 0;
        core.stats.pending_writes = 0;
        core.stats.queued_write_bytes = 0;
        core.accepted.clear();
        core.backoff.clear();
    }
}

impl<C> Core<C> {
    pub fn stats(&self) -> Stats {
        Stats {
            timers: self.timers.len(),
            syscalls: self.driver.syscalls(),
            backend: self.driver.backend(),
            ..self.stats
        }
    }

    /// Waits for readiness or completions (see [`Driver::poll`]).
    #[inline]
    pub fn poll_driver(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.driver.poll(timeout, &mut self.cqes)
    }

    /// The time, read once per turn and only if asked for.
    pub fn now(&mut self) -> Instant {
        *self.now.get_or_insert_with(Instant::now)
    }

    /// A new turn: the clock must be read again.
    pub fn tick(&mut self) {
        self.now = None;
    }

    /// The earliest deadline or accept retry.
    pub fn next_deadline(&self) -> Option<Instant> {
        let retry = self.backoff.iter().filter_map(|b| b.at).min();
        match (self.timers.next(), retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    #[inline]
    fn pending(&mut self, dir: Direction, n: isize) {
        let p = match dir {
            Direction::Read => &mut self.stats.pending_reads,
            Direction::Write => &mut self.stats.pending_writes,
        };
        *p = p.wrapping_add_signed(n);
    }

    /// Whether another thread queued something not applied yet.
    #[inline]
    pub fn remote_pending(&self) -> bool {
        self.shared.has_queued(self.drained)
    }

    fn conn(&self, slot: u32, generation: u32) -> Conn {
        Conn {
            slot,
            generation,
            watcher: self.id,
        }
    }

    #[inline]
    fn mark_dirty(&mut self, c: &mut ConnState<C>, slot: u32) {
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(slot);
        }
    }

    /// The one entry point that makes a connection progress: moves bytes for the
    /// head request of each direction while the fd is ready for it.
    #[inline]
    pub fn progress(&mut self, c: &mut ConnState<C>, slot: u32, swap: &mut [u8]) {
        #[cfg(target_os = "linux")]
        if self.driver.is_uring() {
            self.submit_ops(c, slot, swap);
            return;
        }
        loop {
            while self.read_once(c, slot, swap) {}
            let connecting = c.connecting;
            while self.write_once(c, slot) {}
            // Reads waited for a connect that just finished: data that arrived
            // meanwhile raised its edge already, so try them now.
            if !connecting || c.connecting {
                break;
            }
        }
    }

    /// One read for the head read request, if there is one and the fd is
    /// readable. Returns whether to try again (false: nothing to read into, not
    /// readable, or waiting for swap-buffer room).
    #[inline(always)]
    fn read_once(&mut self, c: &mut ConnState<C>, slot: u32, swap: &mut [u8]) -> bool {
        if !c.ready.is_ready(Direction::Read) || c.connecting {
            return false;
        }
        let generation = c.generation;
        let Some(p) = c.parts(Direction::Read) else {
            return false;
        };
        let req = p.head;
        if req.is_doomed() {
            return false;
        }
        if req.kind() == Kind::Accept {
            return self.accept_once(c, slot);
        }
        let swap_off = self.swap_used;
        let (res, want) = match req.read_target() {
            Some(target) => {
                let want = target.len();
                (self.driver.ready().read(p.fd.as_fd(), target), want)
            }
            None => {
                let room = self.swap_len - swap_off;
                if room < self.swap_min {
                    if !*p.swap_wait {
                        *p.swap_wait = true;
                        self.swap_waiters.push(slot);
                    }
                    return false;
                }
                (
                    self.driver
                        .ready()
                        .read(p.fd.as_fd(), &mut swap[swap_off..]),
                    room,
                )
            }
        };
        let swap_read = matches!(req.buf, Buf::None);
        let (size, result) = match res {
            Ok(n) => {
                if n > 0 && n < want {
                    p.ready.short(Direction::Read);
                }
                if swap_read {
                    self.swap_used += n;
                }
                match req.after_read(n, want) {
                    Step::More => return true,
                    Step::Complete { size, result } => (size, result),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                p.ready.clear(Direction::Read);
                return false;
            }
            Err(e) => (req.done(), Err(Error::Io(e))),
        };
        let req = c.queue(Direction::Read).pop().expect("read head present");
        let conn = self.conn(slot, generation);
        let extra = if swap_read {
            Extra::Swap(swap_off)
        } else {
            Extra::None
        };
        self.finish(conn, req, size, result, extra);
        true
    }

    /// One `accept` for the head accept request of a listener.
    #[cold]
    fn accept_once(&mut self, c: &mut ConnState<C>, slot: u32) -> bool {
        let Some(fd) = c.fd.as_ref() else {
            return false;
        };
        self.driver.count_syscall();
        match gaio_sys::accept(fd.as_fd()) {
            Ok((fd, peer)) => {
                self.accepted_one(c, slot, fd, peer);
                true
            }
            Err(e) => match AcceptError::of(&e) {
                AcceptError::WouldBlock => {
                    c.ready.clear(Direction::Read);
                    false
                }
                AcceptError::Fatal => {
                    let listener = self.conn(slot, c.generation);
                    let req = c.queue(Direction::Read).pop().expect("accept head present");
                    self.finish(listener, req, 0, Err(Error::Io(e)), Extra::None);
                    true
                }
                _ => self.accept_failed(c, slot, e),
            },
        }
    }

    /// A listener accepted `fd`: the head accept request completes with it, as
    /// a new connection (installed before the batch is handed out). `peer`:
    /// asked for when `None`.
    #[cold]
    fn accepted_one(
        &mut self,
        c: &mut ConnState<C>,
        slot: u32,
        fd: OwnedFd,
        peer: Option<SocketAddr>,
    ) {
        let listener = self.conn(slot, c.generation);
        self.backoff.retain(|b| b.slot != slot);
        let (result, extra) = match self.shared.slots.alloc() {
            Some(conn) => {
                let peer = peer.or_else(|| {
                    self.driver.count_syscall();
                    gaio_sys::peer_addr(fd.as_fd())
                });
                self.shared.counts.opened();
                self.accepted.push((conn, fd));
                (Ok(()), Extra::Accepted(conn, peer))
            }
            None => (
                Err(Error::Io(io::Error::other("too many connections"))),
                Extra::None,
            ),
        };
        let req = c.queue(Direction::Read).pop().expect("accept head present");
        self.finish(listener, req, 0, result, extra);
    }

    /// An accept failed with a transient error (try again: true) or for want
    /// of fds: pause, doubling, then try again (no event will come).
    #[cold]
    fn accept_failed(&mut self, c: &mut ConnState<C>, slot: u32, e: io::Error) -> bool {
        if AcceptError::of(&e) != AcceptError::Exhausted {
            return true;
        }
        c.ready.clear(Direction::Read);
        let now = self.now();
        let generation = c.generation;
        match self.backoff.iter_mut().find(|b| b.slot == slot) {
            Some(b) => {
                b.step = (b.step * 2).min(BACKOFF_MAX);
                b.at = Some(now + b.step);
            }
            None => {
                tracing::warn!(slot, error = %e, "gaio: accept failed, backing off");
                self.backoff.push(Backoff {
                    slot,
                    generation,
                    at: Some(now + BACKOFF_MIN),
                    step: BACKOFF_MIN,
                });
            }
        }
        false
    }

    /// One step for the head of the write queue, if there is one and the fd is
    /// writable: a write (coalesced with the writes queued behind it into one
    /// `writev`, up to `IOV_MAX`), or a connect, shutdown or close waiting there
    /// behind earlier writes. Returns whether to try again.
    #[inline(always)]
    fn write_once(&mut self, c: &mut ConnState<C>, slot: u32) -> bool {
        if !c.ready.is_ready(Direction::Write) {
            return false;
        }
        let (Some(fd), Some(head)) = (c.fd.as_ref(), c.head(Direction::Write)) else {
            return false;
        };
        if head.is_doomed() {
            return false;
        }
        if head.kind() != Kind::Write {
            return self.control_once(c, slot);
        }
        let first = IoSlice::new(head.unsent());
        let coalesce = |r: &Req<C>| r.kind() == Kind::Write && !r.is_doomed();
        let res = match c.queued_writes().filter(|q| coalesce(&q[0])) {
            // The common case, one write: no iovec array to fill.
            None => self
                .driver
                .ready()
                .write(fd.as_fd(), c.socket, std::slice::from_ref(&first))
                .map(|n| (n, first.len())),
            Some(queued) => {
                let mut iov = [IoSlice::new(&[]); IOV_MAX];
                iov[0] = first;
                let mut want = first.len();
                let mut n = 1;
                for r in queued.iter().take_while(|r| coalesce(r)).take(IOV_MAX - 1) {
                    iov[n] = IoSlice::new(r.unsent());
                    want += iov[n].len();
                    n += 1;
                }
                self.driver
                    .ready()
                    .write(fd.as_fd(), c.socket, &iov[..n])
                    .map(|n| (n, want))
            }
        };
        let conn = self.conn(slot, c.generation);
        match res {
            Ok((written, want)) => {
                if written < want {
                    c.ready.short(Direction::Write);
                }
                self.wrote(c, conn, written);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.ready.clear(Direction::Write);
                false
            }
            Err(e) => {
                self.write_failed(c, conn, e);
                true
            }
        }
    }

    /// `written` bytes of the queued writes went out, in order: the requests
    /// they finish complete.
    #[inline]
    fn wrote(&mut self, c: &mut ConnState<C>, conn: Conn, mut written: usize) {
        c.queued -= written;
        self.stats.queued_write_bytes -= written;
        let mut q = c.queue(Direction::Write);
        while written > 0 {
            let head = q.head.as_mut().expect("bytes written belong to a request");
            let left = head.unsent().len();
            if written < left {
                head.advance(written);
                break;
            }
            written -= left;
            head.advance(left);
            let req = q.pop().expect("write head present");
            let size = req.done();
            self.finish(conn, req, size, Ok(()), Extra::None);
        }
    }

    /// The head write failed: it completes with the error; its unsent bytes
    /// leave the queue.
    #[cold]
    fn write_failed(&mut self, c: &mut ConnState<C>, conn: Conn, e: io::Error) {
        let req = c.queue(Direction::Write).pop().expect("write head present");
        let unsent = req.unsent().len();
        c.queued -= unsent;
        self.stats.queued_write_bytes -= unsent;
        let size = req.done();
        self.finish(conn, req, size, Err(Error::Io(e)), Extra::None);
    }

    /// A connect, shutdown or close at the head of the write queue: every write
    /// before it is out.
    #[cold]
    fn control_once(&mut self, c: &mut ConnState<C>, slot: u32) -> bool {
        let (Some(fd), Some(kind)) = (c.fd.as_ref(), c.head(Direction::Write).map(Req::kind))
        else {
            return false;
        };
        let conn = self.conn(slot, c.generation);
        self.driver.count_syscall();
        let result = match kind {
            Kind::Connect => match gaio_sys::take_error(fd.as_fd()) {
                Ok(None) => {
                    c.connecting = false;
                    Ok(())
                }
                Ok(Some(e)) | Err(e) => Err(Error::Io(e)),
            },
            Kind::Shutdown => gaio_sys::shutdown_write(fd.as_fd()).map_err(Error::Io),
            _ => Ok(()), // Close
        };
        let failed = result.is_err();
        let req = c
            .queue(Direction::Write)
            .pop()
            .expect("control head present");
        self.finish(conn, req, 0, result, Extra::None);
        if kind == Kind::Close || (kind == Kind::Connect && failed) {
            // Closed as asked, or never connected: nothing else can succeed.
            self.close(c, slot);
            return false;
        }
        if kind == Kind::Connect {
            // Reads waited for the connect; the socket may be readable already.
            c.ready.add(true, false, false);
        }
        true
    }

    /// Closes the connection in `c` now: its fd, then every pending request with
    /// `ConnClosed`; the slot goes back to the allocator under its next generation.
    fn close(&mut self, c: &mut ConnState<C>, slot: u32) {
        if let Some(fd) = self.take(c, slot) {
            drop(fd);
            self.driver.count_syscall(); // the close
        }
    }

    /// Takes the connection in `c` out of the watcher: off the poller, every
    /// pending request completed with `ConnClosed`, the slot back to the allocator
    /// under its next generation. Returns its fd (`None` if already gone).
    fn take(&mut self, c: &mut ConnState<C>, slot: u32) -> Option<OwnedFd> {
        let fd = c.fd.take()?;
        let conn = self.conn(slot, c.generation);
        #[cfg(target_os = "linux")]
        if self.driver.is_uring() {
            use std::os::fd::AsRawFd;
            // Operations in flight hold buffers of the requests ended below.
            self.settle(c, slot, u8::MAX, Some(fd.as_raw_fd()));
            if c.early {
                c.early = false;
                self.early.retain(|(s, _)| *s != slot); // accepted fds close with it
            }
        }
        self.driver.deregister(fd.as_fd());
        let mut pending = [0; 2];
        for (i, dir) in [Direction::Read, Direction::Write].into_iter().enumerate() {
            while let Some(req) = c.queue(dir).pop() {
                pending[i] += 1;
                let done = req.done();
                self.finish(conn, req, done, Err(Error::ConnClosed), Extra::None);
            }
        }
        self.stats.queued_write_bytes -= c.queued;
        c.retire(self.shared.slots.release(conn));
        self.stats.conns -= 1;
        self.stats.freed += 1;
        self.shared.counts.closed(1);
        tracing::debug!(
            slot,
            generation = conn.generation,
            pending_reads = pending[0],
            pending_writes = pending[1],
            "gaio free"
        );
        Some(fd)
    }

    /// The batch was handed out with the swap bytes it references. The next read
    /// can only happen once that batch is gone (it borrows the watcher), so the
    /// whole buffer is free again from then on.
    pub fn swap_handed_out(&mut self) {
        self.swap_used = 0;
    }

    /// Records a completion. Every accepted request passes through here exactly once.
    #[inline(always)]
    pub fn finish(
        &mut self,
        conn: Conn,
        req: Req<C>,
        size: usize,
        result: Result<()>,
        extra: Extra,
    ) {
        if req.timer() < EXPIRED {
            self.timers.remove(req.timer());
        }
        if let Err(e) = &result {
            trace_failure(conn, size, e);
        }
        let kind = req.kind();
        self.pending(kind.direction(), -1);
        self.stats.completions += 1;
        let buf = match (req.buf, extra) {
            (Buf::Owned(v), _) => DoneBuf::Owned(v),
            (Buf::Shared(b), _) => DoneBuf::Shared(b),
            (Buf::None, Extra::Swap(off)) => DoneBuf::Swap {
                off,
                len: if result.is_ok() { size } else { 0 },
            },
            (Buf::None, Extra::Ring(off)) => DoneBuf::Ring {
                off,
                len: if result.is_ok() { size } else { 0 },
            },
            (Buf::None, Extra::Accepted(conn, peer)) => DoneBuf::Accepted {
                conn,
                peer: peer.map(Box::new),
            },
            (Buf::None, Extra::None) if kind == Kind::Read => DoneBuf::Swap { off: 0, len: 0 },
            (Buf::None, Extra::None) => DoneBuf::None,
        };
        let op = match kind {
            Kind::Read | Kind::ReadFull => Op::Read,
            Kind::Write => Op::Write,
            Kind::Accept => Op::Accept,
            Kind::Connect => Op::Connect,
            Kind::Shutdown => Op::Shutdown,
            Kind::Close => Op::Close,
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

    /// Gives back the memory of a burst when the watcher goes idle.
    pub fn trim_idle(&mut self, trim: &mut Trims) {
        trim.dirty.at_park(&mut self.dirty);
        trim.done.at_park(&mut self.done);
        trim.ready.at_park(&mut self.ready);
        if self.cqes.is_empty() && self.cqes.capacity() > 256 {
            self.cqes = Cqes::new();
        }
        // A burst of accepts that outran the accept requests set many aside.
        #[cfg(target_os = "linux")]
        if self.early.len() < 16 && self.early.capacity() > 256 {
            self.early.shrink_to(64);
        }
    }
}

/// Out of line: a request that failed is not the hot path.
#[cold]
fn trace_failure(conn: Conn, size: usize, e: &Error) {
    tracing::trace!(slot = conn.slot, size, error = %e, "gaio request failed");
}

/// The burst trims of the engine's working vectors.
#[derive(Debug, Default)]
pub(crate) struct Trims {
    pub dirty: Trim,
    pub done: Trim,
    pub ready: Trim,
}

/// Gives back the memory of a burst: a batch vector keeps its capacity (so the
/// steady state allocates nothing) until 64 batches in a row used under an eighth
/// of it; then it shrinks. 10k connections registered at once must not leave
/// ~80 bytes per connection of batch buffer behind for good.
#[derive(Debug, Default)]
pub(crate) struct Trim {
    quiet: u32,
    /// Entries the last batch used.
    last: usize,
}

impl Trim {
    pub fn after<T>(&mut self, v: &mut Vec<T>, used: usize) {
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

    /// When the watcher goes idle, shrinks `v` if the last batch used under an
    /// eighth of it: an idle server should not sit on the buffers of its last
    /// burst (it may never run another batch to trigger `after`).
    pub fn at_park<T>(&mut self, v: &mut Vec<T>) {
        let cap = v.capacity();
        if cap > 256 && self.last < cap / 8 {
            v.shrink_to((self.last * 2).max(64));
            self.quiet = 0;
        }
    }
}
