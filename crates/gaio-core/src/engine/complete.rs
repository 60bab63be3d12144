//! The engine's completion half, for the io_uring driver: what to submit for
//! the head request of each direction, and what a completion means for the
//! requests. The readiness half (`read_once`, `write_once`, `accept_once`) tries
//! transfers; this one submits them, at most one operation of each kind per
//! connection, and moves the requests on when their completions come back.
//!
//! The requests, their order, deadlines and completions are the engine's, as
//! on the readiness driver, so every request means the same on both. The rules
//! that are particular to completions:
//!
//! * a buffer the kernel may write to or read from (an owned read's, a queued
//!   write's) stays in its request, in the queue, until the operation's last
//!   completion: a deadline, `free` or `close` that must end the request early
//!   cancels the operation and waits for that completion first ([`Core::settle`]).
//! * swap-buffer reads arm one multishot receive into the buffer ring; its
//!   bytes are handed out in place (`Extra::Ring`) and the buffer goes back to
//!   the ring when the next `wait_io` starts. Bytes that arrive with no read
//!   waiting are copied aside ([`Early`]) and given to the next read, in order;
//!   past [`EARLY_MAX`] bytes the receive is cancelled, so a connection nobody
//!   reads holds at most that much.
//! * an empty ring (`ENOBUFS`) ends the receive; it is armed again when buffers
//!   come back, through the swap waiters, as on the readiness driver.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use gaio_sys::{AcceptError, IOV_MAX};

use super::{Core, Engine, Extra, table::ConnState};
use crate::Error;
use crate::driver::Driver;
use crate::driver::uring::{self, Cqe, op, user_data};
use crate::req::{Buf, Direction, EXPIRED, Kind, Step};

/// Bytes one connection may have copied aside before its receive is cancelled.
const EARLY_MAX: usize = 64 * 1024;

/// A result that arrived before the request it is for.
#[derive(Debug)]
pub(crate) enum Early {
    /// Bytes, and how many of them were handed out already.
    Data(Vec<u8>, usize),
    Eof,
    Err(i32),
    /// An accepted connection.
    Fd(OwnedFd),
}

impl<C> Core<C> {
    #[inline]
    fn uring(&mut self) -> &mut uring::Driver {
        match &mut self.driver {
            Driver::Uring(d) => d,
            Driver::Poll(_) => unreachable!("completion step on the readiness driver"),
        }
    }

    /// Submits what the head request of each direction needs, or completes
    /// it from bytes that arrived early.
    #[inline]
    pub(super) fn submit_ops(&mut self, c: &mut ConnState<C>, slot: u32, swap: &mut [u8]) {
        self.read_ops(c, slot, swap);
        self.write_ops(c, slot);
    }

    fn read_ops(&mut self, c: &mut ConnState<C>, slot: u32, swap: &mut [u8]) {
        loop {
            let (Some(fd), Some(head)) = (c.fd.as_ref(), c.head(Direction::Read)) else {
                return;
            };
            if c.connecting || head.is_doomed() {
                return;
            }
            if c.early {
                if !self.serve_early(c, slot, swap) {
                    return;
                }
                continue;
            }
            if c.ops & op::READS != 0 || c.swap_wait {
                return;
            }
            let fd = fd.as_raw_fd();
            let socket = c.socket;
            let generation = c.generation;
            if head.kind() == Kind::Accept {
                if self
                    .backoff
                    .iter()
                    .any(|b| b.slot == slot && b.at.is_some())
                {
                    return; // out of fds: the backoff arms it again
                }
                c.ops |= op::ACCEPT;
                self.uring()
                    .accept_multi(fd, user_data(op::ACCEPT, slot, generation));
                return;
            }
            let head = c
                .queue(Direction::Read)
                .head
                .as_mut()
                .expect("head checked");
            match head.read_target() {
                None if socket => {
                    c.ops |= op::MULTI;
                    self.uring()
                        .recv_multi(fd, user_data(op::MULTI, slot, generation));
                }
                None => {
                    c.ops |= op::RECV;
                    self.uring()
                        .read_select(fd, user_data(op::RECV, slot, generation));
                }
                Some(target) => {
                    let (ptr, len) = (target.as_mut_ptr(), target.len().min(1 << 30) as u32);
                    c.ops |= op::RECV;
                    // SAFETY: the target is the request's own heap buffer; the
                    // request stays in the queue, its buffer untouched, until
                    // this operation's completion (`settle` waits for it
                    // before anything takes the request out early).
                    unsafe {
                        self.uring().read(
                            fd,
                            socket,
                            ptr,
                            len,
                            user_data(op::RECV, slot, generation),
                        );
                    }
                }
            }
            return;
        }
    }

    fn write_ops(&mut self, c: &mut ConnState<C>, slot: u32) {
        loop {
            if c.ops & op::WRITES != 0 {
                return;
            }
            let (Some(fd), Some(head)) = (c.fd.as_ref(), c.head(Direction::Write)) else {
                return;
            };
            if head.is_doomed() {
                return;
            }
            let fd = fd.as_raw_fd();
            let data = |tag| user_data(tag, slot, c.generation);
            match head.kind() {
                Kind::Write => {
                    let mut bufs: [&[u8]; IOV_MAX] = [&[]; IOV_MAX];
                    bufs[0] = head.unsent();
                    let mut n = 1;
                    if let Some(queued) = c.queued_writes() {
                        for r in queued
                            .iter()
                            .take_while(|r| r.kind() == Kind::Write && !r.is_doomed())
                            .take(IOV_MAX - 1)
                        {
                            bufs[n] = r.unsent();
                            n += 1;
                        }
                    }
                    let data = data(op::WRITE);
                    // SAFETY: the slices are the queued requests' buffers (heap
                    // `Vec`s or `Arc`s, never moved by the queue); the `n`
                    // requests stay queued, unchanged, until the completion
                    // (`settle` waits for it before taking one out early).
                    unsafe { self.uring().write(fd, c.socket, &bufs[..n], data) };
                    c.ops |= op::WRITE;
                    c.wr_n = n as u8;
                    return;
                }
                Kind::Connect => {
                    let data = data(op::POLL_OUT);
                    c.ops |= op::POLL_OUT;
                    self.uring().poll(fd, true, data);
                    return;
                }
                _ => {
                    // Shutdown or close: every write before it is out.
                    if !self.control_once(c, slot) {
                        return;
                    }
                }
            }
        }
    }

    /// Applies one completion to its connection's requests. Submits nothing
    /// new but a poll after `EAGAIN`: the caller moves the connection on.
    pub(super) fn on_cqe(&mut self, c: &mut ConnState<C>, slot: u32, e: Cqe) {
        if e.is_last() {
            c.ops &= !e.tag;
        }
        // Being taken out of the watcher: results are dropped, buffers returned.
        let live = c.fd.is_some();
        match e.tag {
            op::MULTI => self.received(c, slot, e, live),
            op::RECV => {
                if e.buffer().is_some() || e.res == -libc::ENOBUFS {
                    self.received(c, slot, e, live);
                } else {
                    self.read_done(c, slot, e, live);
                }
            }
            op::ACCEPT => self.accept_done(c, slot, e, live),
            op::WRITE => {
                let covered = std::mem::take(&mut c.wr_n);
                debug_assert!(covered > 0);
                let conn = self.conn(slot, c.generation);
                match e.res {
                    n if n >= 0 => self.wrote(c, conn, n as usize),
                    x if x == -libc::EAGAIN && live => {
                        c.ops |= op::POLL_OUT;
                        let fd = c.fd.as_ref().expect("live").as_raw_fd();
                        self.uring()
                            .poll(fd, true, user_data(op::POLL_OUT, slot, c.generation));
                    }
                    x if x == -libc::ECANCELED || x == -libc::EAGAIN => {}
                    x => self.write_failed(c, conn, io::Error::from_raw_os_error(-x)),
                }
            }
            op::POLL_OUT => {
                let connect = c.head(Direction::Write).map(|r| r.kind()) == Some(Kind::Connect);
                if live && connect && e.res != -libc::ECANCELED {
                    self.control_once(c, slot);
                }
            }
            _ => {} // POLL_IN: the read is submitted again
        }
    }

    /// A receive into the buffer ring: its bytes go to the head read, or aside.
    fn received(&mut self, c: &mut ConnState<C>, slot: u32, e: Cqe, live: bool) {
        let at = e.buffer().map(|bid| self.uring().filled(bid));
        if !live || e.res == -libc::ECANCELED {
            return;
        }
        if e.res == -libc::ENOBUFS {
            // The ring is empty: armed again when buffers come back.
            if !c.swap_wait {
                c.swap_wait = true;
                self.swap_waiters.push(slot);
            }
            return;
        }
        if e.res == -libc::EAGAIN {
            self.poll_in(c, slot);
            return;
        }
        let n = e.res.max(0) as usize;
        let bytes = match at {
            // SAFETY: the kernel filled these `n` bytes of the ring and does
            // not write them again before the buffer is lent anew, which
            // happens only after the batch handing them out is over.
            Some(at) => unsafe { std::slice::from_raw_parts(self.uring().ring_mem().add(at), n) },
            None => &[][..],
        };
        let conn = self.conn(slot, c.generation);
        let head_ready = !c.early
            && !c.connecting
            && c.head(Direction::Read)
                .is_some_and(|r| !r.is_doomed() && r.kind() != Kind::Accept);
        if head_ready {
            let mut q = c.queue(Direction::Read);
            let req = q.head.as_mut().expect("head checked");
            if e.res < 0 {
                let req = q.pop().expect("head checked");
                let done = req.done();
                let err = io::Error::from_raw_os_error(-e.res);
                self.finish(conn, req, done, Err(Error::Io(err)), Extra::None);
                return;
            }
            let (step, used) = match req.read_target() {
                None => {
                    // The swap-buffer read: its bytes stay where they landed.
                    let req = q.pop().expect("head checked");
                    let extra = match at {
                        Some(at) if n > 0 => Extra::Ring(at),
                        _ => Extra::None,
                    };
                    self.finish(conn, req, n, Ok(()), extra);
                    return;
                }
                Some(target) => {
                    let k = n.min(target.len());
                    target[..k].copy_from_slice(&bytes[..k]);
                    let want = target.len();
                    (req.after_read(k, want), k)
                }
            };
            if used < n {
                let data = self.copy_aside(&bytes[used..]);
                self.keep_early(c, slot, data);
            }
            if let Step::Complete { size, result } = step {
                let req = c.queue(Direction::Read).pop().expect("head checked");
                self.finish(conn, req, size, result, Extra::None);
            }
            return;
        }
        let early = match e.res {
            0 => Early::Eof,
            x if x < 0 => Early::Err(-x),
            _ => self.copy_aside(bytes),
        };
        self.keep_early(c, slot, early);
    }

    /// Bytes copied out of the ring (which must be lent again) to wait for
    /// their read, in a spare buffer when there is one.
    fn copy_aside(&mut self, bytes: &[u8]) -> Early {
        let mut v = self.spare.pop().unwrap_or_default();
        v.extend_from_slice(bytes);
        Early::Data(v, 0)
    }

    /// Sets a result aside for the connection's next read (or accept).
    fn keep_early(&mut self, c: &mut ConnState<C>, slot: u32, early: Early) {
        c.early = true;
        self.early.push((slot, early));
        let (mut bytes, mut n) = (0, 0);
        for (_, e) in self.early.iter().filter(|(s, _)| *s == slot) {
            n += 1;
            if let Early::Data(v, at) = e {
                bytes += v.len() - at;
            }
        }
        let cap = if c.ops & op::ACCEPT != 0 { 64 } else { 1 };
        let over = bytes > EARLY_MAX || (bytes == 0 && n > cap);
        if over && c.ops & op::MULTISHOT != 0 {
            // Nobody reads: stop taking bytes in; the socket buffer holds the rest.
            let tag = c.ops & op::MULTISHOT;
            let data = user_data(tag, slot, c.generation);
            self.uring().cancel_op(data);
        }
    }

    /// Completes the head request from what arrived early; false if it cannot
    /// now (no room in the swap buffer: it waits for the next batch).
    fn serve_early(&mut self, c: &mut ConnState<C>, slot: u32, swap: &mut [u8]) -> bool {
        let Some(i) = self.early.iter().position(|(s, _)| *s == slot) else {
            c.early = false;
            return true;
        };
        let early = self.early.remove(i).1;
        let conn = self.conn(slot, c.generation);
        let accept = c.head(Direction::Read).map(|r| r.kind()) == Some(Kind::Accept);
        let mut keep = None;
        let mut blocked = false;
        match (early, accept) {
            (Early::Fd(fd), true) => self.accepted_one(c, slot, fd, None),
            (Early::Err(x), _) => {
                let req = c.queue(Direction::Read).pop().expect("head");
                let done = req.done();
                let err = io::Error::from_raw_os_error(x);
                self.finish(conn, req, done, Err(Error::Io(err)), Extra::None);
            }
            (Early::Eof, false) => {
                let mut req = c.queue(Direction::Read).pop().expect("head");
                if let Step::Complete { size, result } = req.after_read(0, 0) {
                    self.finish(conn, req, size, result, Extra::None);
                }
            }
            (Early::Data(v, mut at), false) => {
                let req = c.queue(Direction::Read).head.as_mut().expect("head");
                let avail = &v[at..];
                if let Some(target) = req.read_target() {
                    let k = avail.len().min(target.len());
                    target[..k].copy_from_slice(&avail[..k]);
                    at += k;
                    let want = target.len();
                    if let Step::Complete { size, result } = req.after_read(k, want) {
                        let req = c.queue(Direction::Read).pop().expect("head");
                        self.finish(conn, req, size, result, Extra::None);
                    }
                } else {
                    let room = self.swap_len - self.swap_used;
                    if room < avail.len().min(self.swap_min) {
                        blocked = true;
                    } else {
                        let k = avail.len().min(room);
                        let off = self.swap_used;
                        swap[off..off + k].copy_from_slice(&avail[..k]);
                        self.swap_used += k;
                        at += k;
                        let req = c.queue(Direction::Read).pop().expect("head");
                        self.finish(conn, req, k, Ok(()), Extra::Swap(off));
                    }
                }
                if at < v.len() {
                    keep = Some(Early::Data(v, at));
                } else if self.spare.len() < 64 && v.capacity() <= EARLY_MAX {
                    let mut v = v;
                    v.clear();
                    self.spare.push(v);
                }
            }
            // A result of the other kind (a read on a listener): dropped.
            _ => {}
        }
        if let Some(early) = keep {
            self.early.insert(i, (slot, early));
        }
        if blocked && !c.swap_wait {
            c.swap_wait = true;
            self.swap_waiters.push(slot);
        }
        self.early_left(c, slot);
        !blocked
    }

    /// Clears the connection's early flag once nothing is set aside.
    fn early_left(&mut self, c: &mut ConnState<C>, slot: u32) {
        c.early = self.early.iter().any(|(s, _)| *s == slot);
    }

    /// A one-shot read into the head request's own buffer finished.
    fn read_done(&mut self, c: &mut ConnState<C>, slot: u32, e: Cqe, live: bool) {
        if e.res == -libc::ECANCELED {
            return; // whoever cancelled ends the request
        }
        if e.res == -libc::EAGAIN {
            if live {
                self.poll_in(c, slot);
            }
            return;
        }
        let conn = self.conn(slot, c.generation);
        let mut q = c.queue(Direction::Read);
        let req = q
            .head
            .as_mut()
            .expect("an in-flight read keeps its request");
        let (size, result) = if e.res < 0 {
            let err = io::Error::from_raw_os_error(-e.res);
            (req.done(), Err(Error::Io(err)))
        } else {
            let want = req.read_target().map_or(0, |t| t.len());
            match req.after_read(e.res as usize, want) {
                Step::More => return,
                Step::Complete { size, result } => (size, result),
            }
        };
        let req = q.pop().expect("head");
        self.finish(conn, req, size, result, Extra::None);
    }

    fn poll_in(&mut self, c: &mut ConnState<C>, slot: u32) {
        if let Some(fd) = c.fd.as_ref() {
            let fd = fd.as_raw_fd();
            c.ops |= op::POLL_IN;
            self.uring()
                .poll(fd, false, user_data(op::POLL_IN, slot, c.generation));
        }
    }

    /// A multishot accept produced a connection, or failed.
    fn accept_done(&mut self, c: &mut ConnState<C>, slot: u32, e: Cqe, live: bool) {
        if e.res >= 0 {
            // SAFETY: the kernel just created this fd for us; nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(e.res) };
            if !live {
                return; // the listener is going: so is what it accepted
            }
            let head = c.head(Direction::Read);
            if !c.early && head.is_some_and(|r| r.kind() == Kind::Accept && !r.is_doomed()) {
                self.accepted_one(c, slot, fd, None);
            } else {
                self.keep_early(c, slot, Early::Fd(fd));
            }
            return;
        }
        if !live || e.res == -libc::ECANCELED {
            return;
        }
        let err = io::Error::from_raw_os_error(-e.res);
        if AcceptError::of(&err) == AcceptError::Fatal {
            let head = c.head(Direction::Read);
            if !c.early && head.is_some_and(|r| r.kind() == Kind::Accept && !r.is_doomed()) {
                let conn = self.conn(slot, c.generation);
                let req = c.queue(Direction::Read).pop().expect("head");
                self.finish(conn, req, 0, Err(Error::Io(err)), Extra::None);
            } else {
                self.keep_early(c, slot, Early::Err(-e.res));
            }
        } else {
            // Out of fds (backs off), or a connection that went away (retried).
            self.accept_failed(c, slot, err);
        }
    }

    /// Ends the connection's operations in `mask` early: cancels them and
    /// applies their completions (waiting for them: the kernel holds their
    /// buffers until then). With `fd`, cancels every operation on it.
    pub(super) fn settle(&mut self, c: &mut ConnState<C>, slot: u32, mask: u8, fd: Option<RawFd>) {
        if c.ops & mask == 0 {
            return;
        }
        let generation = c.generation;
        match fd {
            Some(fd) => self.uring().cancel_fd(fd),
            None => {
                for tag in [
                    op::RECV,
                    op::MULTI,
                    op::ACCEPT,
                    op::POLL_IN,
                    op::WRITE,
                    op::POLL_OUT,
                ] {
                    if c.ops & mask & tag != 0 {
                        self.uring().cancel_op(user_data(tag, slot, generation));
                    }
                }
            }
        }
        loop {
            // Completions reaped already and not dispatched yet come first.
            let mut at = self.cqe_at;
            while at < self.cqes.len() {
                let e = self.cqes[at];
                if e.tag != 0 && e.slot == slot && e.is_for(generation) {
                    self.cqes[at].tag = 0; // applied here, skipped by dispatch
                    self.on_cqe(c, slot, e);
                }
                at += 1;
            }
            if c.ops & mask == 0 {
                return;
            }
            let mut cqes = std::mem::take(&mut self.cqes);
            let res = self.uring().wait_more(&mut cqes);
            self.cqes = cqes;
            if let Err(e) = res {
                // The kernel still holds this connection's buffers: going on
                // would hand them back while it may write into them.
                panic!("gaio: io_uring wait failed while cancelling: {e}");
            }
        }
    }

    /// Before the read requests of `c` are ended early (a graceful close): a
    /// read into a request's own buffer is cancelled and its completion waited
    /// for.
    pub(super) fn settle_reads(&mut self, c: &mut ConnState<C>, slot: u32) {
        if self.driver.is_uring() {
            self.settle(c, slot, op::RECV, None);
        }
    }

    /// Cancels every operation of the ring and waits for them all (the watcher
    /// closes: its requests and their buffers are about to be dropped).
    pub(super) fn settle_all(&mut self) {
        if !self.driver.is_uring() {
            return;
        }
        // Reaped and not dispatched: nobody will.
        let reaped = std::mem::take(&mut self.cqes);
        for &e in &reaped[self.cqe_at.min(reaped.len())..] {
            self.discard(e);
        }
        self.cqe_at = 0;
        if self.uring().inflight == 0 {
            return;
        }
        self.uring().cancel_all();
        let mut cqes = Vec::new();
        while self.uring().inflight > 0 {
            cqes.clear();
            if let Err(e) = self.uring().wait_more(&mut cqes) {
                panic!("gaio: io_uring wait failed while closing: {e}");
            }
            for &e in &cqes {
                self.discard(e);
            }
        }
    }

    /// A completion nobody will apply: its ring buffer goes back, an accepted
    /// fd is closed.
    fn discard(&mut self, e: Cqe) {
        if e.tag == 0 {
            return;
        }
        if let Some(bid) = e.buffer() {
            self.uring().filled(bid);
        }
        if e.tag == op::ACCEPT && e.res >= 0 {
            // SAFETY: an accepted fd nobody else owns; closed here.
            drop(unsafe { OwnedFd::from_raw_fd(e.res) });
        }
    }

    /// For an expiring request of `dir`: if an operation holds its buffer, cancels
    /// it and waits for its completion, and marks the request so the expiry
    /// finds it (it may have completed meanwhile). Returns the id to find it by.
    pub(super) fn unflight(
        &mut self,
        c: &mut ConnState<C>,
        slot: u32,
        dir: Direction,
        id: u32,
    ) -> u32 {
        let (ops, covered) = (c.ops, usize::from(c.wr_n));
        let mut q = c.queue(dir);
        let Some((pos, req)) = q.find_by_timer(id) else {
            return id;
        };
        let held = match dir {
            Direction::Read => pos == 0 && ops & op::RECV != 0 && !matches!(req.buf, Buf::None),
            Direction::Write => ops & op::WRITE != 0 && pos < covered,
        };
        if !held {
            return id;
        }
        req.set_timer(EXPIRED);
        let tag = match dir {
            Direction::Read => op::RECV,
            Direction::Write => op::WRITE,
        };
        self.settle(c, slot, tag, None);
        EXPIRED
    }
}

impl<C> Engine<C> {
    /// Applies the completions of the last wait, in order, moving each
    /// connection on after its completion.
    pub(super) fn dispatch_cqes(&mut self, swap: &mut [u8]) {
        let Engine { table, core } = self;
        while core.cqe_at < core.cqes.len() {
            let e = core.cqes[core.cqe_at];
            core.cqe_at += 1;
            if e.tag == 0 {
                continue; // applied already, by `settle`
            }
            let Some(c) = table.get_mut(e.slot).filter(|c| e.is_for(c.generation)) else {
                debug_assert!(false, "a completion outlived its connection");
                core.discard(e);
                continue;
            };
            core.on_cqe(c, e.slot, e);
            if c.fd.is_some() {
                core.submit_ops(c, e.slot, swap);
            }
        }
        core.cqes.clear();
        core.cqe_at = 0;
    }
}
