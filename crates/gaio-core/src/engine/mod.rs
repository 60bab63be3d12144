//! The engine: the connection table with typed state ([`Life`]), per-direction
//! request queues, deadlines, swap-buffer accounting and completions —
//! everything that makes a request mean the same on every backend. It decides
//! what happens next on a connection; the driver decides how (see
//! `driver/mod.rs`), and the engine never asks which driver it has.
//!
//! A read's path: [`Engine::submit`] checks the token ([`Table::live_mut`]),
//! arms its deadline and queues it, marking the connection dirty; at the
//! watcher's next turn [`Engine::run_dirty`] calls [`Core::progress`], which
//! asks the driver for a step on the head request ([`Driver::read`]); a result
//! now, or later through an event ([`Engine::dispatch`] → [`Driver::apply`]),
//! goes to [`Core::read_done`], where the request's own policy
//! ([`Req::after_read`]) says whether it is complete, and [`Core::finish`]
//! records the completion.

mod table;
mod timer;
mod turn;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gaio_sys::{AcceptError, FdKind};

use crate::conn::Token;
use crate::driver::{Bytes, Driver, Got, Landed, On, Step, Swap};
use crate::queue::{Cmd, Shared};
use crate::req::{Buf, Direction, EXPIRED, Kind, NO_TIMER, Req, Step as ReadStep};
use crate::{Conn, Error, Flow, Op, Result, Stats};

use table::{ConnState, PAUSES, UNWRITABLE};
pub(crate) use table::{Life, Parts, Queue, Table};
use timer::Timers;
pub(crate) use turn::TurnState;
use turn::WorkSet;

/// `EPERM`, which epoll answers for fds it cannot watch (regular files): the same
/// value on every unix, so gaio-core needs no libc for it.
const EPERM: i32 = 1;

/// The most bytes one connection may have queued for writing: its count is a
/// `u32`, so every write limit is at most this.
const MAX_QUEUED: usize = u32::MAX as usize;

/// What a completion hands back.
#[derive(Debug)]
pub(crate) enum DoneBuf {
    None,
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
    /// Bytes a swap-buffer read received, where they landed.
    Swap {
        at: Landed,
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
    /// A swap-buffer read landed here.
    Landed(Landed),
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
    /// Connections with work outside an event this turn.
    work: WorkSet,
    /// Commands taken from the cross-thread queue so far.
    pub drained: u64,
    /// A `Submitter::wake` arrived: return from `wait_io` even with no completions.
    pub woken: bool,
    /// This turn's clock reading, if taken.
    now: Option<Instant>,
    /// The watcher was closed: every request is refused.
    pub closed: bool,
    /// Bytes a connection may have queued for writing (at most 4 GiB).
    write_limit: usize,
    /// The write watermarks connections use (`ConnState::flow` indexes it);
    /// the first is the builder's, for every new connection.
    flows: Vec<Flow>,
    /// Connections accepted this turn, installed before the batch is handed out.
    accepted: Vec<(Conn, OwnedFd)>,
    /// Listeners waiting out fd exhaustion.
    backoff: Vec<Backoff>,
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
        write_limit: Option<usize>,
        flow: Flow,
    ) -> Engine<C> {
        Engine {
            table: Table::new(),
            core: Core {
                id: shared.id,
                shared,
                driver,
                timers: Timers::default(),
                done: Vec::new(),
                stats: Stats::default(),
                work: WorkSet::default(),
                drained: 0,
                woken: false,
                now: None,
                closed: false,
                write_limit: write_limit.map_or(MAX_QUEUED, |l| l.min(MAX_QUEUED)),
                flows: vec![flow],
                accepted: Vec::new(),
                backoff: Vec::new(),
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
        let c = table.get_or_grow(conn.slot);
        c.install(fd, conn.generation, kind == FdKind::Socket, connecting);
        if core.flows[0].pauses_reads() {
            c.wstate = PAUSES;
        }
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
        // A `Conn` of another watcher was refused on the way in (`ForeignConn`).
        debug_assert_eq!(conn.watcher, core.id);
        let live = table.live_mut(conn.slot, conn.generation);
        let len = req.buf.len();
        if let Some(c) = &live {
            if kind == Kind::Write && c.queued as u64 + len as u64 > core.write_limit as u64 {
                if c.life.is_ending() {
                    // It would complete with ConnClosed anyway; it must not
                    // take the count past 4 GiB.
                    core.pending(dir, 1);
                    core.finish(conn, req, 0, Err(Error::ConnClosed), Extra::None);
                    return Ok(());
                }
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
        if kind == Kind::Write {
            // Every queued write counts until it leaves its queue (`unqueue`).
            c.queued += len as u32; // the write limit keeps it under 4 GiB
            core.stats.queued_write_bytes += len;
        } else if kind == Kind::Writable {
            core.wait_writable(c, conn, req);
            return Ok(());
        }
        if c.life.is_ending() {
            // Freed or closing, not closed yet: it completes with ConnClosed when
            // it reaches the head of its queue, after the requests made before.
            req.doom();
            c.push(dir, req);
            return Ok(());
        }
        if let Some(at) = deadline {
            if at <= core.now() {
                core.end(c, conn.slot, req, Err(Error::Deadline));
                if matches!(kind, Kind::Connect | Kind::Close) {
                    // As when such a deadline passes later: the connection
                    // goes now.
                    core.close(c, conn.slot);
                }
                return Ok(());
            }
            req.set_timer(core.timers.insert(at, conn.slot, conn.generation, dir));
        }
        if kind == Kind::Write
            && c.is_writable()
            && c.queued as usize > core.flows[c.flow as usize].high()
        {
            core.unwritable(c);
        }
        if kind == Kind::Close {
            // Reads end now (a read an operation holds, when it comes back);
            // writes before the close still go out.
            c.drain();
            c.queue(Direction::Read).iter_mut().for_each(Req::doom);
            core.driver
                .cancel(&mut c.io, Token::of(conn), Direction::Read);
        }
        c.push(dir, req);
        // A transfer the driver cannot start now is tried when it reports
        // (readiness, or the operation out in that direction coming back).
        let transfer = matches!(
            kind,
            Kind::Read | Kind::ReadFull | Kind::Write | Kind::Accept
        );
        if !transfer || core.driver.may_step(&c.io, dir) {
            core.mark_dirty(c, conn.slot);
        }
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
    pub fn retry_backoff(&mut self, swap: &mut Swap) {
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
            c.free();
            core.mark_dirty(c, conn.slot);
        }
    }

    /// Frees `conn` at once: the requests queued before get their chance to move,
    /// then it closes. Only between batches (it may read into the swap buffer).
    pub fn free_now(&mut self, conn: Conn, swap: &mut Swap) {
        self.free(conn);
        let Engine { table, core } = self;
        if let Some(c) = table.live_mut(conn.slot, conn.generation) {
            if c.life == Life::Closing {
                core.progress(c, conn.slot, swap);
                core.close(c, conn.slot);
            }
        }
    }

    /// Takes `conn` out of the watcher without closing it: pending requests
    /// complete with `ConnClosed`, but a read an operation holds completes when
    /// the operation comes back, with the bytes it took if any (so none is lost).
    pub fn detach(&mut self, conn: Conn) -> Result<OwnedFd> {
        let Engine { table, core } = self;
        if conn.watcher != core.id {
            return Err(Error::ConnClosed);
        }
        let c = table
            .live_mut(conn.slot, conn.generation)
            .filter(|c| c.life != Life::Closing)
            .ok_or(Error::ConnClosed)?;
        let fd = c.fd.take().ok_or(Error::ConnClosed)?;
        core.driver.detach(fd.as_fd());
        core.close(c, conn.slot);
        Ok(fd)
    }

    /// Gives `conn` the watermarks `flow`, judged again at once against what
    /// is queued now.
    pub fn set_flow(&mut self, conn: Conn, flow: Flow) -> Result<()> {
        let Engine { table, core } = self;
        let c = table
            .live_mut(conn.slot, conn.generation)
            .filter(|_| conn.watcher == core.id)
            .ok_or(Error::ConnClosed)?;
        let index = match core.flows.iter().position(|f| *f == flow) {
            Some(i) => i,
            None if core.flows.len() <= u8::MAX as usize => {
                core.flows.push(flow);
                core.flows.len() - 1
            }
            None => {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a watcher holds at most 256 different flows",
                )));
            }
        };
        let was_paused = c.reads_paused();
        c.flow = index as u8;
        c.wstate = (c.wstate & UNWRITABLE) | if flow.pauses_reads() { PAUSES } else { 0 };
        let queued = c.queued as usize;
        if c.is_writable() && queued > flow.high() {
            core.unwritable(c);
        } else if !c.is_writable() && queued <= flow.low() {
            core.writable_again(c, conn.slot);
        }
        if was_paused && !c.reads_paused() {
            core.mark_dirty(c, conn.slot); // its reads go on
        }
        Ok(())
    }

    /// Whether `conn` is writable (`false` for a stale one).
    pub fn is_writable(&mut self, conn: Conn) -> bool {
        conn.watcher == self.core.id
            && self
                .table
                .live_mut(conn.slot, conn.generation)
                .is_some_and(|c| c.is_writable())
    }

    /// Frees every live connection at once.
    pub fn free_all(&mut self, swap: &mut Swap) {
        let live: Vec<Conn> = self.table.live(self.core.id).collect();
        for conn in live {
            self.free_now(conn, swap);
        }
    }

    /// Tries every connection that got requests (or a `free`) since the last turn.
    pub fn run_dirty(&mut self, swap: &mut Swap) {
        let Engine { table, core } = self;
        let dirty = core.work.take_dirty();
        for &slot in &dirty {
            let Some(c) = table.get_mut(slot) else {
                continue;
            };
            c.dirty = false;
            core.progress(c, slot, swap);
            if c.life == Life::Closing {
                core.close(c, slot);
            }
        }
        // Keep the list's capacity (nothing was pushed meanwhile: progress and
        // close never dirty a connection).
        debug_assert!(core.work.dirty_mut().is_empty());
        WorkSet::put_back(core.work.dirty_mut(), dirty);
    }

    /// Handles what the last poll reported: for each event, the driver applies
    /// it (readiness, or an operation's result) and the connection moves on.
    pub fn dispatch(&mut self, swap: &mut Swap) {
        let Engine { table, core } = self;
        while let Some((token, ev)) = core.driver.next_event() {
            let Some(c) = table
                .get_mut(token.slot)
                .filter(|c| c.life != Life::Vacant && token.is_for(c.generation))
            else {
                continue; // an event for a closed (or not yet installed) connection
            };
            let got = core.driver.apply(&mut c.parts(), ev, swap);
            if let Some(got) = got {
                core.got(c, token.slot, got);
            }
            // Nothing queued (the result just completed the last request) and
            // nothing to retire: no step to take.
            if c.head(Direction::Read).is_some()
                || c.head(Direction::Write).is_some()
                || c.life == Life::Retiring
            {
                core.progress(c, token.slot, swap);
            }
        }
    }

    /// Completes every request whose deadline has passed. One an operation
    /// holds is marked and its operation cancelled: it completes when the
    /// operation comes back (with what it did meanwhile, if anything).
    pub fn expire(&mut self, swap: &mut Swap) {
        let Engine { table, core } = self;
        if core.timers.len() == 0 {
            return;
        }
        let now = core.now();
        while let Some(t) = core.timers.pop_expired(now) {
            let Some(c) = table.get_mut(t.slot) else {
                continue;
            };
            debug_assert!(c.generation == t.generation && c.life != Life::Vacant);
            let lent = core.driver.lent(&c.io, t.dir);
            let mut q = c.queue(t.dir);
            let Some((pos, req)) = q.find_by_timer(t.id) else {
                debug_assert!(false, "armed timer without its request");
                continue;
            };
            tracing::trace!(slot = t.slot, dir = ?t.dir, "gaio deadline");
            if pos < lent {
                req.set_timer(EXPIRED);
                let token = c.token(t.slot);
                core.driver.cancel(&mut c.io, token, t.dir);
                continue;
            }
            let (mut req, was_head) = q.take_by_timer(t.id).expect("found above");
            req.set_timer(NO_TIMER); // already out of the heap
            let kind = req.kind();
            let paused = c.reads_paused();
            core.end(c, t.slot, req, Err(Error::Deadline));
            if matches!(kind, Kind::Connect | Kind::Close) {
                // A connect that never finished, or a close whose writes never
                // drained: the connection goes now.
                core.close(c, t.slot);
            } else if was_head || (paused && !c.reads_paused()) {
                // The next request in line may be able to proceed now, or the
                // write that expired made the connection writable: its paused
                // reads go on.
                core.progress(c, t.slot, swap);
            }
        }
    }

    /// Swap reads that waited for room try again.
    pub fn retry_swap_waiters(&mut self, swap: &mut Swap) {
        let Engine { table, core } = self;
        if !core.work.has_swap_waiters() {
            return;
        }
        let waiters = core.work.take_swap_waiters();
        for &slot in &waiters {
            if let Some(c) = table.get_mut(slot) {
                c.swap_wait = false;
                core.progress(c, slot, swap);
            }
        }
        // Reads that still found no room re-added themselves to the (new) list.
        WorkSet::put_back(core.work.swap_waiters_mut(), waiters);
    }

    /// Closes every fd but leaks every pending request: for a watcher dropped
    /// where it cannot wait for the kernel to give their buffers back (off its
    /// io_uring thread). The driver leaks what the kernel may still use.
    pub fn abandon(&mut self) {
        self.table.close_fds();
        std::mem::forget(std::mem::replace(&mut self.table, Table::new()));
    }

    /// Ends every operation (waiting for the kernel to hand back what it
    /// holds), then drops every connection (closing its fd) and every pending
    /// request. Errors leave the requests the kernel may still use leaked.
    pub fn clear(&mut self) {
        if let Err(e) = self.core.driver.close_all() {
            tracing::error!(error = %e, "gaio: closing the watcher left operations in flight; their buffers are leaked");
            self.abandon();
        }
        self.table.clear();
        let core = &mut self.core;
        core.shared.counts.closed(core.stats.conns as u64);
        core.done.clear();
        core.work.clear();
        core.timers = Timers::default();
        core.stats.conns = 0;
        core.stats.pending_reads = 0;
        core.stats.pending_writes = 0;
        core.stats.queued_write_bytes = 0;
        core.stats.unwritable_conns = 0;
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
            lost_completions: self.driver.lost(),
            ..self.stats
        }
    }

    /// Waits for readiness or completions (see [`Driver::poll`]).
    #[inline]
    pub fn poll_driver(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.driver.poll(timeout)
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
        self.work.mark_dirty(c, slot);
    }

    /// The one entry point that makes a connection progress: for the head
    /// request of each direction, a step through the driver, as long as one is
    /// done at once. Requests that are over without moving bytes (made after a
    /// close, or past their deadline) complete here when no operation holds them.
    #[inline]
    pub fn progress(&mut self, c: &mut ConnState<C>, slot: u32, swap: &mut Swap) {
        loop {
            while self.read_step(c, slot, swap) {}
            let connecting = c.life == Life::Connecting;
            let paused = c.reads_paused();
            while self.write_step(c, slot) {}
            // Reads waited for a connect that just finished, or for writes to
            // drain to the low watermark.
            if (!connecting || c.life == Life::Connecting) && (!paused || c.reads_paused()) {
                break;
            }
        }
        if c.life == Life::Retiring {
            self.retire(c, slot);
        }
    }

    /// The kind of `dir`'s head request if the driver should take a step for
    /// it; else (`Err`) whether to try again: no head, an operation holds it,
    /// or it was over and has just completed.
    #[inline(always)]
    fn head_to_step(
        &mut self,
        c: &mut ConnState<C>,
        slot: u32,
        dir: Direction,
    ) -> std::result::Result<Kind, bool> {
        let Some(head) = c.head(dir) else {
            return Err(false);
        };
        if self.driver.lent(&c.io, dir) > 0 {
            return Err(false);
        }
        if head.is_doomed() || head.is_expired() {
            return Err(self.end_over(c, slot, dir));
        }
        let kind = head.kind();
        if dir == Direction::Read && c.reads_paused() && kind != Kind::Accept {
            return Err(false); // waits for the writes to drain (`writable_again`)
        }
        // Not ready (readiness) or an operation out (completion): nothing to
        // do until the driver reports. Control requests need no readiness.
        if matches!(kind, Kind::Read | Kind::ReadFull | Kind::Write)
            && !self.driver.may_step(&c.io, dir)
        {
            return Err(false);
        }
        Ok(kind)
    }

    /// One step for the head read request; whether to try again.
    #[inline(always)]
    fn read_step(&mut self, c: &mut ConnState<C>, slot: u32, swap: &mut Swap) -> bool {
        let kind = match self.head_to_step(c, slot, Direction::Read) {
            Ok(kind) => kind,
            Err(again) => return again,
        };
        if !matches!(c.life, Life::Open | Life::Draining | Life::Closing) {
            return false;
        }
        let token = c.token(slot);
        if kind == Kind::Accept {
            if self
                .backoff
                .iter()
                .any(|b| b.slot == slot && b.at.is_some())
            {
                return false; // out of fds: the back-off tries again
            }
            let p = c.parts();
            let Some(fd) = p.fd else { return false };
            let on = On::new(p.io, fd, p.socket, token);
            return match self.driver.accept(on) {
                Step::Done(res) => self.accepted(c, slot, res),
                _ => false,
            };
        }
        let p = c.parts();
        let (Some(fd), Some(head)) = (p.fd, p.reads.head.as_mut()) else {
            return false;
        };
        let on = On::new(p.io, fd, p.socket, token);
        match self.driver.read(on, head, swap) {
            Step::Done(res) => {
                self.read_done(c, slot, res);
                true
            }
            Step::Later => false,
            Step::NoRoom => {
                self.wait_for_swap(c, slot);
                false
            }
        }
    }

    /// One step for the head of the write queue: a write (coalesced with the
    /// writes queued behind it), or a connect, shutdown or close waiting there
    /// behind earlier writes. Returns whether to try again.
    #[inline(always)]
    fn write_step(&mut self, c: &mut ConnState<C>, slot: u32) -> bool {
        let kind = match self.head_to_step(c, slot, Direction::Write) {
            Ok(kind) => kind,
            Err(again) => return again,
        };
        let token = c.token(slot);
        let mut p = c.parts();
        let Some(fd) = p.fd else {
            return false;
        };
        let on = On::new(p.io, fd, p.socket, token);
        match kind {
            Kind::Write => match self.driver.write(on, &mut p.writes) {
                Step::Done(res) => {
                    self.wrote(c, slot, res);
                    true
                }
                _ => false,
            },
            Kind::Connect => match self.driver.connect(on) {
                Step::Done(res) => self.connected(c, slot, res),
                _ => false,
            },
            Kind::Shutdown => {
                let res = self.driver.shutdown(fd).map_err(Error::Io);
                let req = c.queue(Direction::Write).pop().expect("head");
                self.finish(self.conn(slot, c.generation), req, 0, res, Extra::None);
                true
            }
            _ => {
                // Close: every write before it is out.
                let req = c.queue(Direction::Write).pop().expect("head");
                self.finish(self.conn(slot, c.generation), req, 0, Ok(()), Extra::None);
                self.close(c, slot);
                false
            }
        }
    }

    /// A result the driver reported later (an operation came back).
    fn got(&mut self, c: &mut ConnState<C>, slot: u32, got: Got) {
        // An accept or connect that came back after its connection closed:
        // its request ends `ConnClosed` (`progress` follows), an accepted fd
        // closes. Bytes read are delivered: nothing taken from a socket is lost.
        let over = |dir| c.head(dir).is_some_and(Req::is_doomed);
        match got {
            Got::Read(res) => self.read_done(c, slot, res),
            Got::Wrote(res) => self.wrote(c, slot, res),
            Got::Accepted(_) if over(Direction::Read) => {}
            Got::Accepted(res) => {
                self.accepted(c, slot, res);
            }
            Got::Connected(_) if over(Direction::Write) => {}
            Got::Connected(res) => {
                self.connected(c, slot, res);
            }
            Got::NoRoom => self.wait_for_swap(c, slot),
        }
    }

    /// The head read moved `n` bytes (0: EOF), or failed: its own policy says
    /// whether it is complete.
    #[inline]
    fn read_done(&mut self, c: &mut ConnState<C>, slot: u32, res: io::Result<Bytes>) {
        let conn = self.conn(slot, c.generation);
        let mut q = c.queue(Direction::Read);
        let req = q.head.as_mut().expect("a read result has its request");
        let (size, result, landed) = match res {
            Ok((n, landed)) => {
                // What the read was offered: the rest of its own buffer.
                let want = req.read_target().map_or(0, |t| t.len());
                match req.after_read(n, want) {
                    // Past its deadline meanwhile, or made after a close: it
                    // keeps what it got and ends now.
                    ReadStep::More if req.is_expired() => {
                        (req.done(), Err(Error::Deadline), landed)
                    }
                    ReadStep::More if req.is_doomed() => {
                        (req.done(), Err(Error::ConnClosed), landed)
                    }
                    ReadStep::More => return,
                    ReadStep::Complete { size, result } => (size, result, landed),
                }
            }
            Err(e) => (req.done(), Err(Error::Io(e)), Landed::Own),
        };
        let req = q.pop().expect("head");
        let extra = if matches!(req.buf, Buf::None) {
            Extra::Landed(landed)
        } else {
            Extra::None
        };
        self.finish(conn, req, size, result, extra);
    }

    /// `res` bytes of the writes at the front went out, in order (or the head
    /// failed): the requests they finish complete.
    #[inline]
    fn wrote(&mut self, c: &mut ConnState<C>, slot: u32, res: io::Result<usize>) {
        let conn = self.conn(slot, c.generation);
        let mut written = match res {
            Ok(n) => n,
            Err(e) => {
                let req = c.queue(Direction::Write).pop().expect("write head present");
                self.end(c, slot, req, Err(Error::Io(e)));
                return;
            }
        };
        self.unqueue(c, written);
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
        self.check_writable(c, slot);
    }

    /// A nonblocking connect finished; whether to go on.
    #[cold]
    fn connected(&mut self, c: &mut ConnState<C>, slot: u32, res: io::Result<()>) -> bool {
        let failed = res.is_err();
        let req = c.queue(Direction::Write).pop().expect("connect head");
        self.finish(
            self.conn(slot, c.generation),
            req,
            0,
            res.map_err(Error::Io),
            Extra::None,
        );
        if failed {
            // Never connected: nothing else can succeed.
            self.close(c, slot);
            return false;
        }
        c.connected();
        true
    }

    /// An accept step's result for the head accept request; whether to try
    /// again.
    #[cold]
    fn accepted(
        &mut self,
        c: &mut ConnState<C>,
        slot: u32,
        res: io::Result<(OwnedFd, Option<SocketAddr>)>,
    ) -> bool {
        let listener = self.conn(slot, c.generation);
        let (result, extra) = match res {
            Ok((fd, peer)) => {
                self.backoff.retain(|b| b.slot != slot);
                match self.shared.slots.alloc() {
                    Some(conn) => {
                        self.shared.counts.opened();
                        self.accepted.push((conn, fd));
                        (Ok(()), Extra::Accepted(conn, peer))
                    }
                    None => (
                        Err(Error::Io(io::Error::other("too many connections"))),
                        Extra::None,
                    ),
                }
            }
            Err(e) => match AcceptError::of(&e) {
                AcceptError::Fatal => (Err(Error::Io(e)), Extra::None),
                AcceptError::Exhausted => {
                    self.back_off(c, slot, e);
                    return false;
                }
                // A connection that went away before it was taken: the next.
                _ => return true,
            },
        };
        let req = c.queue(Direction::Read).pop().expect("accept head present");
        self.finish(listener, req, 0, result, extra);
        true
    }

    /// Out of fds: pause the listener, doubling, then try again (no event will
    /// come for the connections already queued).
    #[cold]
    fn back_off(&mut self, c: &mut ConnState<C>, slot: u32, e: io::Error) {
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
    }

    /// Queued bytes went above the high watermark: not writable (reads pause
    /// if its flow says so) until they are back at the low one.
    #[cold]
    fn unwritable(&mut self, c: &mut ConnState<C>) {
        c.wstate |= UNWRITABLE;
        self.stats.unwritable_conns += 1;
    }

    /// `n` queued bytes left (sent, or their write ended).
    #[inline]
    fn unqueue(&mut self, c: &mut ConnState<C>, n: usize) {
        c.queued -= n as u32;
        self.stats.queued_write_bytes -= n;
    }

    /// After writes left the queue (and completed): at the low watermark the
    /// connection is writable again.
    #[inline]
    fn check_writable(&mut self, c: &mut ConnState<C>, slot: u32) {
        if !c.is_writable() && c.queued as usize <= self.flows[c.flow as usize].low() {
            self.writable_again(c, slot);
        }
    }

    /// Writable again: the `writable` requests complete and paused reads go on
    /// (`progress` takes their step).
    #[cold]
    fn writable_again(&mut self, c: &mut ConnState<C>, slot: u32) {
        c.wstate &= !UNWRITABLE;
        self.stats.unwritable_conns -= 1;
        let conn = self.conn(slot, c.generation);
        self.end_waiters(c, conn, false);
    }

    /// A `writable` request: complete at once if the connection is writable
    /// (or ending: `ConnClosed`), else kept until it is.
    fn wait_writable(&mut self, c: &mut ConnState<C>, conn: Conn, req: Req<C>) {
        if c.life.is_ending() {
            self.finish(conn, req, 0, Err(Error::ConnClosed), Extra::None);
        } else if c.is_writable() {
            self.finish(conn, req, 0, Ok(()), Extra::None);
        } else {
            c.spill_mut().waiters.push(req);
        }
    }

    /// Completes every `writable` request waiting on `c`: `Ok`, or
    /// `ConnClosed` when `closed`.
    fn end_waiters(&mut self, c: &mut ConnState<C>, conn: Conn, closed: bool) {
        let Some(waiters) = c.waiters_mut() else {
            return;
        };
        for req in waiters.drain(..) {
            let res = if closed {
                Err(Error::ConnClosed)
            } else {
                Ok(())
            };
            self.finish(conn, req, 0, res, Extra::None);
        }
    }

    /// A swap-buffer read waits for the next batch's swap space.
    fn wait_for_swap(&mut self, c: &mut ConnState<C>, slot: u32) {
        self.work.wait_for_swap(c, slot);
    }

    /// Completes `req` (out of its queue) with `result` and the bytes it moved;
    /// a write's unsent bytes leave the connection's count.
    fn end(&mut self, c: &mut ConnState<C>, slot: u32, req: Req<C>, result: Result<()>) {
        let write = req.kind() == Kind::Write;
        if write {
            self.unqueue(c, req.unsent().len());
        }
        let done = req.done();
        self.finish(
            self.conn(slot, c.generation),
            req,
            done,
            result,
            Extra::None,
        );
        if write {
            self.check_writable(c, slot);
        }
    }

    /// Closes the connection in `c`: its fd now, its `Conn` goes stale, every
    /// pending request completes with `ConnClosed` — those an operation holds
    /// once it comes back (cancelled here, without waiting) — and the slot goes
    /// back to the allocator once nothing is held.
    fn close(&mut self, c: &mut ConnState<C>, slot: u32) {
        if !c.life.is_live() {
            return;
        }
        let conn = self.conn(slot, c.generation);
        let token = Token::of(conn);
        self.driver.cancel(&mut c.io, token, Direction::Read);
        self.driver.cancel(&mut c.io, token, Direction::Write);
        // The fd closes now (the peer sees it go); operations still out hold
        // their own reference to the socket in the kernel.
        if let Some(fd) = c.fd.take() {
            self.driver.close(fd);
        }
        let p = c.parts();
        let (mut reads, mut writes) = (p.reads, p.writes);
        let pending = reads
            .iter_mut()
            .chain(writes.iter_mut())
            .map(Req::doom)
            .count();
        self.end_waiters(c, conn, true);
        if !c.is_writable() {
            c.wstate &= !UNWRITABLE;
            self.stats.unwritable_conns -= 1;
        }
        c.close();
        self.stats.conns -= 1;
        self.stats.freed += 1;
        self.shared.counts.closed(1);
        tracing::debug!(slot, generation = conn.generation, pending, "gaio free");
        self.drain(c, slot);
    }

    /// Completes the requests at the front of each queue that are over
    /// (closed, or past their deadline) and that no operation holds; retires a
    /// closed connection once nothing is left.
    fn drain(&mut self, c: &mut ConnState<C>, slot: u32) {
        for dir in [Direction::Read, Direction::Write] {
            while self.end_over(c, slot, dir) {}
        }
        if c.life == Life::Retiring {
            self.retire(c, slot);
        }
    }

    /// Completes the head of `dir` if it is over — made after a close
    /// (`ConnClosed`) or past its deadline (`Deadline`) — and no operation
    /// holds it; whether it did. A connect or close past its deadline closes
    /// the connection.
    fn end_over(&mut self, c: &mut ConnState<C>, slot: u32, dir: Direction) -> bool {
        let Some(head) = c.head(dir).filter(|r| r.is_doomed() || r.is_expired()) else {
            return false;
        };
        if self.driver.lent(&c.io, dir) > 0 {
            return false;
        }
        let expired = !head.is_doomed();
        let kind = head.kind();
        let req = c.queue(dir).pop().expect("head");
        let result = if expired {
            Error::Deadline
        } else {
            Error::ConnClosed
        };
        self.end(c, slot, req, Err(result));
        if expired && matches!(kind, Kind::Connect | Kind::Close) {
            // A connect that never finished, or a close whose writes never
            // drained: the connection goes now.
            self.close(c, slot);
            return false;
        }
        true
    }

    /// A retiring connection whose requests are all complete and that the
    /// driver holds nothing of: its slot goes back.
    fn retire(&mut self, c: &mut ConnState<C>, slot: u32) {
        if c.head(Direction::Read).is_some()
            || c.head(Direction::Write).is_some()
            || !c.io.is_idle()
        {
            return;
        }
        debug_assert_eq!(c.queued, 0);
        c.retire(self.shared.slots.release(self.conn(slot, c.generation)));
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
        let ok = result.is_ok();
        let buf = match (req.buf, extra) {
            (Buf::Owned(v), _) => DoneBuf::Owned(v),
            (Buf::Shared(b), _) => DoneBuf::Shared(b),
            (Buf::None, Extra::Landed(at)) => DoneBuf::Swap {
                at,
                len: if ok { size } else { 0 },
            },
            (Buf::None, Extra::Accepted(conn, peer)) => DoneBuf::Accepted {
                conn,
                peer: peer.map(Box::new),
            },
            (Buf::None, Extra::None) if kind == Kind::Read => DoneBuf::Swap {
                at: Landed::Own,
                len: 0,
            },
            (_, _) => DoneBuf::None,
        };
        let op = kind.op();
        self.done.push(Done {
            op,
            conn,
            ctx: req.ctx,
            size,
            result,
            buf,
        });
    }
}

/// Out of line: a request that failed is not the hot path.
#[cold]
fn trace_failure(conn: Conn, size: usize, e: &Error) {
    tracing::trace!(slot = conn.slot, size, error = %e, "gaio request failed");
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
