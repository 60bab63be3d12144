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

mod table;
mod timer;

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use gaio_sys::{FdKind, IOV_MAX};

use crate::conn::Token;
use crate::driver::Driver;
use crate::driver::poll::Ready;
use crate::queue::{Cmd, Shared};
use crate::req::{Direction, NO_TIMER, Req, Step};
use crate::{Conn, Error, Result, Stats};

use table::ConnState;
pub(crate) use table::Table;
use timer::Timers;

/// `EPERM`, which epoll answers for fds it cannot watch (regular files): the same
/// value on every unix, so gaio-core needs no libc for it.
const EPERM: i32 = 1;

/// Where a completion's bytes are.
#[derive(Debug)]
pub(crate) enum DoneBuf {
    Owned(Vec<u8>),
    Swap { off: usize, len: usize },
}

/// A finished request, until the batch hands it out.
#[derive(Debug)]
pub(crate) struct Done<C> {
    pub dir: Direction,
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
    pub fn new(shared: Arc<Shared<C>>, driver: Driver, swap_len: usize) -> Engine<C> {
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
            },
        }
    }

    /// Takes an fd over under `conn` (a slot from `Shared::open`).
    pub fn install(&mut self, conn: Conn, fd: OwnedFd, kind: FdKind) -> Result<()> {
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
        table
            .get_or_grow(conn.slot)
            .install(fd, conn.generation, kind == FdKind::Socket);
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
            } => self.submit(conn, req, deadline),
            Cmd::Free(conn) => self.free(conn),
            Cmd::Wake => self.woken = true,
            Cmd::Register(conn, fd, kind) => {
                if let Err(e) = self.install(conn, fd, kind) {
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
    /// (`ConnClosed` for a stale or closing `Conn`, `Deadline` for a deadline
    /// already past). Nothing moves until the connection's next `progress`.
    #[inline]
    pub fn submit(&mut self, conn: Conn, mut req: Req<C>, deadline: Option<Instant>) {
        let Engine { table, core } = self;
        let dir = req.kind().direction();
        match dir {
            Direction::Read => core.stats.pending_reads += 1,
            Direction::Write => core.stats.pending_writes += 1,
        }
        let live = table
            .live_mut(conn.slot, conn.generation)
            .filter(|_| conn.watcher == core.id);
        let Some(c) = live else {
            core.finish(conn, dir, req, 0, Err(Error::ConnClosed), 0);
            return;
        };
        if c.closing {
            // Freed, not closed yet: it completes with ConnClosed when the
            // connection closes, after the requests made before the free.
            req.doom();
            c.push(dir, req);
            return;
        }
        if let Some(at) = deadline {
            if at <= core.now() {
                core.finish(conn, dir, req, 0, Err(Error::Deadline), 0);
                return;
            }
            req.set_timer(core.timers.insert(at, conn.slot, conn.generation, dir));
        }
        c.push(dir, req);
        core.mark_dirty(c, conn.slot);
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
        let Engine { table, core } = self;
        let mut ready = std::mem::take(&mut core.ready);
        ready.clear();
        ready.extend(core.driver.events());
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
            let Some((mut req, was_head)) = c.queue(t.dir).take_by_timer(t.id) else {
                debug_assert!(false, "armed timer without its request");
                continue;
            };
            req.set_timer(NO_TIMER); // already out of the heap
            let conn = core.conn(t.slot, t.generation);
            let done = req.done();
            tracing::trace!(slot = t.slot, dir = ?t.dir, done, "gaio deadline");
            core.finish(conn, t.dir, req, done, Err(Error::Deadline), 0);
            if was_head {
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

    /// Drops every connection (closing its fd) and every pending request.
    pub fn clear(&mut self) {
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
    }
}

impl<C> Core<C> {
    pub fn stats(&self) -> Stats {
        Stats {
            timers: self.timers.len(),
            syscalls: self.driver.syscalls,
            ..self.stats
        }
    }

    /// The time, read once per turn and only if asked for.
    pub fn now(&mut self) -> Instant {
        *self.now.get_or_insert_with(Instant::now)
    }

    /// A new turn: the clock must be read again.
    pub fn tick(&mut self) {
        self.now = None;
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.next()
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
        while self.read_once(c, slot, swap) {}
        while self.write_once(c, slot) {}
    }

    /// One read for the head read request, if there is one and the fd is
    /// readable. Returns whether to try again (false: nothing to read into, not
    /// readable, or waiting for swap-buffer room).
    fn read_once(&mut self, c: &mut ConnState<C>, slot: u32, swap: &mut [u8]) -> bool {
        if !c.ready.is_ready(Direction::Read) {
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
        let swap_off = self.swap_used;
        let done = req.done();
        let (res, want) = match req.buf.as_mut() {
            Some(b) => {
                let target = &mut b[done..];
                let want = target.len();
                (self.driver.read(p.fd.as_fd(), target), want)
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
                (self.driver.read(p.fd.as_fd(), &mut swap[swap_off..]), room)
            }
        };
        let (size, result) = match res {
            Ok(n) => {
                if n > 0 && n < want {
                    p.ready.short(Direction::Read);
                }
                if req.buf.is_none() {
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
        self.finish(conn, Direction::Read, req, size, result, swap_off);
        true
    }

    /// One write — the head's unsent bytes, coalesced with the writes queued
    /// behind it into one `writev` (up to `IOV_MAX`) — if there is one and the fd
    /// is writable. Returns whether to try again.
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
        let first = IoSlice::new(head.unsent());
        let res = match c.queued_writes().filter(|q| !q[0].is_doomed()) {
            // The common case, one write: no iovec array to fill.
            None => self
                .driver
                .write(fd.as_fd(), c.socket, std::slice::from_ref(&first))
                .map(|n| (n, first.len())),
            Some(queued) => {
                let mut iov = [IoSlice::new(&[]); IOV_MAX];
                iov[0] = first;
                let mut want = first.len();
                let mut n = 1;
                for r in queued
                    .iter()
                    .take_while(|r| !r.is_doomed())
                    .take(IOV_MAX - 1)
                {
                    iov[n] = IoSlice::new(r.unsent());
                    want += iov[n].len();
                    n += 1;
                }
                self.driver
                    .write(fd.as_fd(), c.socket, &iov[..n])
                    .map(|n| (n, want))
            }
        };
        let conn = self.conn(slot, c.generation);
        match res {
            Ok((mut written, want)) => {
                if written < want {
                    c.ready.short(Direction::Write);
                }
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
                    self.finish(conn, Direction::Write, req, size, Ok(()), 0);
                }
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.ready.clear(Direction::Write);
                false
            }
            Err(e) => {
                let req = c.queue(Direction::Write).pop().expect("write head present");
                let size = req.done();
                self.finish(conn, Direction::Write, req, size, Err(Error::Io(e)), 0);
                true
            }
        }
    }

    /// Closes the connection in `c` now: its fd, then every pending request with
    /// `ConnClosed`; the slot goes back to the allocator under its next generation.
    fn close(&mut self, c: &mut ConnState<C>, slot: u32) {
        let Some(fd) = c.fd.take() else {
            return;
        };
        let conn = self.conn(slot, c.generation);
        self.driver.deregister(fd.as_fd());
        drop(fd);
        self.driver.syscalls += 1; // the close
        let mut pending = [0; 2];
        for (i, dir) in [Direction::Read, Direction::Write].into_iter().enumerate() {
            while let Some(req) = c.queue(dir).pop() {
                pending[i] += 1;
                let done = req.done();
                self.finish(conn, dir, req, done, Err(Error::ConnClosed), 0);
            }
        }
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
        dir: Direction,
        req: Req<C>,
        size: usize,
        result: Result<()>,
        swap_off: usize,
    ) {
        if req.timer() != NO_TIMER {
            self.timers.remove(req.timer());
        }
        if let Err(e) = &result {
            trace_failure(conn, dir, size, e);
        }
        match dir {
            Direction::Read => self.stats.pending_reads -= 1,
            Direction::Write => self.stats.pending_writes -= 1,
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
            dir,
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
    }
}

/// Out of line: a request that failed is not the hot path.
#[cold]
fn trace_failure(conn: Conn, dir: Direction, size: usize, e: &Error) {
    tracing::trace!(slot = conn.slot, ?dir, size, error = %e, "gaio request failed");
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
