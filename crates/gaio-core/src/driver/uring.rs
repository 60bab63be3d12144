//! The completion driver: Linux io_uring, over `gaio_sys::uring` (safe code:
//! the buffer contract lives there). Each transfer step submits one operation
//! and answers `Later`; its completion comes back through `apply` as a result
//! for the engine. At most one operation per direction per connection is in
//! flight, and every one is single-shot, so nothing arrives that no request
//! asked for: bytes stay in the socket until a read takes them.
//!
//! * Owned-buffer reads and every write lend their buffers to the ring (the
//!   requests stay in their queue, their buffers marked lent) until the
//!   completion hands them back; cancelling (free, close, a deadline) asks the
//!   kernel to end the operation and returns at once.
//! * Swap-buffer reads receive into the ring of provided buffers; an empty
//!   ring (`ENOBUFS`) waits, like a full swap buffer, for the batch that holds
//!   the buffers to end.
//! * Sends carry `MSG_DONTWAIT`: a full socket buffer completes with `EAGAIN`
//!   and a poll for writability, never a kernel worker blocked in `send`.
//! * `EAGAIN` from what is not a socket (a pipe) is met with a poll, then the
//!   operation is submitted again.
//!
//! What it relies on, checked when the watcher is built (a missing piece
//! makes `Backend::Auto` fall back to epoll and `Backend::IoUring` fail):
//! `SINGLE_ISSUER` + `DEFER_TASKRUN` (6.1: completions run only in the
//! watcher's own `io_uring_enter`), `EXT_ARG` (the wait's timeout),
//! `SUBMIT_STABLE`, `NODROP`, a provided-buffer ring (5.19).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use gaio_sys::IOV_MAX;
use gaio_sys::uring::{self, Cqe, OpId, Ring};

use super::{Bytes, Event, Got, IoState, Landed, On, Step, Swap, SwapMem};
use crate::Backend;
use crate::conn::Token;
use crate::engine::{Parts, Queue};
use crate::req::{Buf, Direction, Req};

/// The operations a connection can have in flight, one bit each (at most one
/// of each side at a time): what `IoState::ops` holds, and the tag in the top
/// byte of an operation's user data.
mod op {
    /// A read into the ring of provided buffers (a swap-buffer read).
    pub const RECV_SEL: u8 = 1;
    /// A read into the head request's own buffer.
    pub const RECV_OWN: u8 = 2;
    pub const ACCEPT: u8 = 4;
    /// Waits for readability after a read found nothing (`EAGAIN`).
    pub const POLL_IN: u8 = 8;
    /// A write of the queued writes at the front.
    pub const WRITE: u8 = 16;
    /// Waits for writability after a write found no room.
    pub const POLL_OUT: u8 = 32;
    /// Waits for a nonblocking connect to finish.
    pub const CONNECT: u8 = 64;
    /// Operations that hold the head read request.
    pub const HOLD_READ: u8 = RECV_SEL | RECV_OWN | ACCEPT;
    pub const READS: u8 = HOLD_READ | POLL_IN;
    pub const WRITES: u8 = WRITE | POLL_OUT | CONNECT;
}

/// An operation's user data (62 bits are ours): its tag, and the connection's
/// slot and the low 16 bits of its generation (a check: a slot is not reused
/// while an operation on it is in flight).
fn user_data(tag: u8, token: Token) -> u64 {
    (u64::from(tag) << 48) | (u64::from(token.generation & 0xffff) << 32) | u64::from(token.slot)
}

fn decode(user: u64) -> (u8, Token) {
    let token = Token {
        slot: user as u32,
        generation: ((user >> 32) & 0xffff) as u32,
    };
    ((user >> 48) as u8, token)
}

/// Settings of the ring.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub entries: u32,
    pub buffers: u16,
    pub buffer_len: u32,
}

#[derive(Debug)]
pub(crate) struct Driver {
    ring: Ring,
    /// Completions of the last poll, handed out from the back.
    cqes: Vec<Cqe>,
    reaped: Vec<Cqe>,
    /// Fds of closed connections that submissions not yet handed to the
    /// kernel may name: closed right after the next enter.
    closing: Vec<OwnedFd>,
    /// System calls made beside the ring's (peer address, connect result,
    /// shutdown, close).
    syscalls: u64,
}

impl Driver {
    /// Sets up the ring; the provided buffers go to the watcher's swap space.
    pub fn new(cfg: Config, waker: &gaio_sys::Waker) -> io::Result<(Driver, uring::Buffers)> {
        let (mut ring, buffers) = Ring::new(uring::Config {
            entries: cfg.entries,
            buffers: cfg.buffers,
            buffer_len: cfg.buffer_len,
        })?;
        ring.set_wake(waker);
        let d = Driver {
            ring,
            cqes: Vec::new(),
            reaped: Vec::new(),
            closing: Vec::new(),
            syscalls: 0,
        };
        Ok((d, buffers))
    }

    pub fn backend(&self) -> Backend {
        Backend::IoUring
    }

    pub fn syscalls(&self) -> u64 {
        self.syscalls + self.ring.syscalls()
    }

    pub fn lost(&self) -> u64 {
        self.ring.lost()
    }

    pub fn check_thread(&self) -> io::Result<()> {
        if self.ring.on_issuer() {
            Ok(())
        } else {
            Err(uring::wrong_thread())
        }
    }

    pub fn register(&mut self, _fd: BorrowedFd<'_>, _token: Token) -> io::Result<()> {
        Ok(())
    }

    // Out of line: inlined into the engine's steps, it would weigh on the
    // readiness driver's path too (hoisted constants, a larger frame).
    #[inline(never)]
    pub fn read<C>(&mut self, on: On<'_>, req: &mut Req<C>, _swap: &mut Swap) -> Step<Bytes> {
        let (io, fd, socket, token) = (on.io, on.fd, on.socket, on.token);
        if io.ops & op::READS != 0 {
            return Step::Later;
        }
        match req.lend() {
            Some(Buf::Owned(v)) => {
                let id = self
                    .ring
                    .recv(fd, socket, v, req.done(), user_data(op::RECV_OWN, token));
                io.rd_op = id.index();
                io.ops |= op::RECV_OWN;
            }
            _ => {
                self.ring
                    .recv_select(fd, socket, user_data(op::RECV_SEL, token));
                io.ops |= op::RECV_SEL;
            }
        }
        Step::Later
    }

    // Out of line: inlined into the engine's steps, it would weigh on the
    // readiness driver's path too (hoisted constants, a larger frame).
    #[inline(never)]
    pub fn write<C>(&mut self, on: On<'_>, q: &mut Queue<'_, C>) -> Step<usize> {
        let (io, fd, socket, token) = (on.io, on.fd, on.socket, on.token);
        if io.ops & op::WRITES != 0 {
            return Step::Later;
        }
        let more = q.queued_writes().map_or(0, |w| w.take(IOV_MAX - 1).count());
        let head = q.head.as_mut().expect("a write at the head");
        let first = (to_sys(head.lend()), head.done());
        let mut rest = q
            .rest
            .iter_mut()
            .flat_map(|r| r.iter_mut())
            .take(more)
            .map(|r| (to_sys(r.lend()), r.done()));
        let id = self
            .ring
            .send(fd, socket, first, &mut rest, user_data(op::WRITE, token));
        io.wr_op = id.index();
        io.wr_n = (1 + more) as u8;
        io.ops |= op::WRITE;
        Step::Later
    }

    #[cold]
    pub fn accept(&mut self, on: On<'_>) -> Step<(OwnedFd, Option<SocketAddr>)> {
        let On { io, fd, token, .. } = on;
        if io.ops & op::READS == 0 {
            self.ring.accept(fd, user_data(op::ACCEPT, token));
            io.ops |= op::ACCEPT;
        }
        Step::Later
    }

    #[cold]
    pub fn connect(&mut self, on: On<'_>) -> Step<()> {
        let On { io, fd, token, .. } = on;
        if io.ops & op::WRITES == 0 {
            self.ring.poll(fd, true, user_data(op::CONNECT, token));
            io.ops |= op::CONNECT;
        }
        Step::Later
    }

    /// A system call made on the driver's behalf (shutdown).
    pub fn count_syscall(&mut self) {
        self.syscalls += 1;
    }

    /// Closes `fd` now, or — when submissions not yet handed to the kernel
    /// may name it (they name fds by number, which a later file could take)
    /// — right after the next enter hands them over. Many closes in one turn
    /// cost one enter, not one each.
    pub fn close(&mut self, fd: OwnedFd) {
        self.syscalls += 1;
        if self.ring.has_unsubmitted() {
            self.closing.push(fd);
        } else {
            drop(fd);
        }
    }

    /// Hands the kernel what names `fd` (and the cancellations of operations
    /// on it) before the fd leaves the watcher — submissions name fds by
    /// number, which a later file could take over: a non-blocking enter, which
    /// also lets cancelled operations let go of the socket.
    pub fn detach(&mut self, _fd: BorrowedFd<'_>) {
        if self.ring.has_unsubmitted() {
            // An error leaves them queued: the next wait submits them (and
            // reports the error).
            let _ = self.enter(Some(Duration::ZERO), false);
        }
    }

    /// One `io_uring_enter`: submits, reaps (behind what is not handed out
    /// yet), then closes the fds that waited for their submissions to go in.
    fn enter(&mut self, timeout: Option<Duration>, wait: bool) -> io::Result<()> {
        let lost = self.ring.lost();
        let res = self.ring.enter(timeout, wait, &mut self.reaped);
        if self.ring.lost() > lost {
            lost_completions(self.ring.lost());
        }
        if !self.ring.has_unsubmitted() {
            self.closing.clear();
        }
        self.merge_reaped();
        res
    }

    #[inline]
    pub fn may_step(&self, io: &IoState, dir: Direction) -> bool {
        let mask = match dir {
            Direction::Read => op::READS,
            Direction::Write => op::WRITES,
        };
        io.ops & mask == 0
    }

    #[inline]
    pub fn lent(&self, io: &IoState, dir: Direction) -> usize {
        match dir {
            Direction::Read => usize::from(io.ops & op::HOLD_READ != 0),
            Direction::Write if io.ops & op::WRITE != 0 => usize::from(io.wr_n),
            Direction::Write => usize::from(io.ops & op::CONNECT != 0),
        }
    }

    pub fn cancel(&mut self, io: &mut IoState, token: Token, dir: Direction) {
        let mask = match dir {
            Direction::Read => op::READS,
            Direction::Write => op::WRITES,
        };
        for tag in [
            op::RECV_SEL,
            op::RECV_OWN,
            op::ACCEPT,
            op::POLL_IN,
            op::WRITE,
            op::POLL_OUT,
            op::CONNECT,
        ] {
            if io.ops & mask & tag == 0 {
                continue;
            }
            match tag {
                op::RECV_OWN => self.ring.cancel_op(OpId::from_index(io.rd_op)),
                op::WRITE => self.ring.cancel_op(OpId::from_index(io.wr_op)),
                op::ACCEPT => self.ring.cancel_accept(user_data(tag, token)),
                _ => self.ring.cancel(user_data(tag, token)),
            }
        }
    }

    pub fn poll(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        // Completions reaped outside a wait (by `detach`/`close`) and not
        // handed out yet need no sleep.
        let wait = timeout != Some(Duration::ZERO) && self.cqes.is_empty();
        self.enter(timeout, wait)?;
        Ok(!self.cqes.is_empty())
    }

    /// Queues what was just reaped behind the completions not handed out yet
    /// (`next_event` pops from the back: oldest last in the vector).
    fn merge_reaped(&mut self) {
        if self.reaped.is_empty() {
            return;
        }
        self.reaped.reverse();
        self.reaped.append(&mut self.cqes);
        std::mem::swap(&mut self.cqes, &mut self.reaped);
    }

    pub fn has_unsubmitted(&mut self) -> bool {
        self.ring.has_unsubmitted()
    }

    pub fn flush(&mut self) {
        if !self.closing.is_empty() {
            // An error leaves them for the next wait, which reports it.
            let _ = self.enter(Some(Duration::ZERO), false);
        }
    }

    #[inline]
    pub fn next_event(&mut self) -> Option<(Token, Event)> {
        let cqe = self.cqes.pop()?;
        let (_, token) = decode(cqe.user);
        Some((token, Event::Done(cqe)))
    }

    /// Applies one completion: the requests its operation held get their
    /// buffers back, and the result goes to the engine.
    // Out of line: inlined into the engine's steps, it would weigh on the
    // readiness driver's path too (hoisted constants, a larger frame).
    #[inline(never)]
    pub fn apply<C>(&mut self, c: &mut Parts<'_, C>, ev: Event, swap: &mut Swap) -> Option<Got> {
        let Parts {
            io,
            fd,
            reads,
            writes,
            ..
        } = c;
        let fd = *fd;
        let Event::Done(mut cqe) = ev else {
            return None;
        };
        let (tag, token) = decode(cqe.user);
        io.ops &= !tag;
        let res = cqe.res;
        match tag {
            op::RECV_SEL | op::RECV_OWN => {
                if tag == op::RECV_OWN {
                    let head = reads.head.as_mut().expect("a lent read keeps its request");
                    self.ring.reclaim(&cqe, |b| head.give_back(from_sys(b)));
                }
                let bid = cqe.buffer();
                if let (Some(bid), SwapMem::Ring(b)) = (bid, &mut swap.mem) {
                    b.filled(bid);
                }
                match res {
                    n if n >= 0 => {
                        let at = bid.map_or(Landed::Own, Landed::Ring);
                        Some(Got::Read(Ok((n as usize, at))))
                    }
                    e if e == -libc::ECANCELED => None,
                    e if e == -libc::ENOBUFS => Some(Got::NoRoom),
                    e if e == -libc::EAGAIN => {
                        self.poll_again(io, fd, op::POLL_IN, token);
                        None
                    }
                    _ => Some(Got::Read(Err(cqe.error().expect("negative")))),
                }
            }
            op::WRITE => {
                let n = std::mem::take(&mut io.wr_n);
                let mut held = writes
                    .head
                    .iter_mut()
                    .chain(writes.rest.iter_mut().flat_map(|r| r.iter_mut()))
                    .take(usize::from(n));
                self.ring.reclaim(&cqe, |b| {
                    if let Some(r) = held.next() {
                        r.give_back(from_sys(b));
                    }
                });
                match res {
                    n if n >= 0 => Some(Got::Wrote(Ok(n as usize))),
                    e if e == -libc::ECANCELED => None,
                    e if e == -libc::EAGAIN => {
                        self.poll_again(io, fd, op::POLL_OUT, token);
                        None
                    }
                    _ => Some(Got::Wrote(Err(cqe.error().expect("negative")))),
                }
            }
            op::ACCEPT => match cqe.take_accepted() {
                Some(fd) => {
                    self.syscalls += 1;
                    let peer = gaio_sys::peer_addr(fd.as_fd());
                    Some(Got::Accepted(Ok((fd, peer))))
                }
                None if res == -libc::ECANCELED => None,
                None => Some(Got::Accepted(Err(cqe.error().expect("negative")))),
            },
            op::CONNECT if res != -libc::ECANCELED => {
                self.syscalls += 1;
                let result = match fd.map(gaio_sys::take_error) {
                    Some(Ok(None)) => Ok(()),
                    Some(Ok(Some(e)) | Err(e)) => Err(e),
                    None => Err(io::ErrorKind::NotConnected.into()),
                };
                Some(Got::Connected(result))
            }
            _ => None, // a poll ended: the step is tried again
        }
    }

    /// An operation found the fd not ready (`EAGAIN`): wait for it with a poll.
    fn poll_again(&mut self, io: &mut IoState, fd: Option<BorrowedFd<'_>>, tag: u8, token: Token) {
        if let Some(fd) = fd {
            self.ring
                .poll(fd, tag == op::POLL_OUT, user_data(tag, token));
            io.ops |= tag;
        }
    }

    pub fn recycle(&mut self, swap: &mut Swap) -> bool {
        match &mut swap.mem {
            SwapMem::Ring(b) => b.recycle(),
            SwapMem::Plain(_) => false,
        }
    }

    pub fn close_all(&mut self) -> io::Result<()> {
        self.ring.cancel_all();
        let mut out = std::mem::take(&mut self.cqes);
        loop {
            for mut c in out.drain(..) {
                drop(c.take_accepted());
                self.ring.reclaim(&c, drop);
            }
            if self.ring.inflight() == 0 && !self.ring.has_unsubmitted() {
                self.closing.clear();
                self.ring.drop_wake();
                return Ok(());
            }
            if self.ring.lost() > 0 {
                return Err(io::Error::other(
                    "io_uring lost completions: operations may still hold buffers",
                ));
            }
            self.ring.enter(None, self.ring.inflight() > 0, &mut out)?;
        }
    }
}

/// The kernel dropped completions: the requests they belonged to never
/// complete. Operations in flight are bounded by the completion queue's size,
/// so this takes the kernel failing to buffer an overflow.
#[cold]
fn lost_completions(total: u64) {
    tracing::error!(
        total,
        "gaio: io_uring lost completions (Stats::lost_completions); their requests will not complete"
    );
}

fn to_sys(b: Option<Buf>) -> uring::Buf {
    match b {
        Some(Buf::Owned(v)) => uring::Buf::Vec(v),
        Some(Buf::Shared(s)) => uring::Buf::Shared(s),
        _ => unreachable!("a write lends a buffer it has"),
    }
}

fn from_sys(b: uring::Buf) -> Buf {
    match b {
        uring::Buf::Vec(v) => Buf::Owned(v),
        uring::Buf::Shared(s) => Buf::Shared(s),
    }
}
