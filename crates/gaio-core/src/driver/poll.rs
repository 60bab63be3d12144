//! The readiness driver: edge-triggered epoll (Linux) or kqueue (BSD, macOS)
//! through gaio-sys. Readiness is cached per connection ([`Readiness`]);
//! transfers are tried at once and answer `Later` when the fd is not ready,
//! until an event says it is.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use gaio_sys::{Events, IOV_MAX, Poller};

use super::{Bytes, Event, Got, IoState, Landed, On, Step, Swap, SwapMem};
use crate::Backend;
use crate::conn::{Token, WAKE_TOKEN};
use crate::engine::{Parts, Queue};
use crate::req::{Direction, Req};

/// Readiness cached from edge-triggered events, cleared when an attempt finds the
/// fd not ready. `HUP` is sticky: the peer hung up (or reset) and no later edge
/// will say so again, so reads go on until they see EOF or the error. One byte
/// of bits: it sits in every connection's slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Readiness(u8);

const READABLE: u8 = 1;
const WRITABLE: u8 = 2;
const HUP: u8 = 4;

fn bit(dir: Direction) -> u8 {
    match dir {
        Direction::Read => READABLE,
        Direction::Write => WRITABLE,
    }
}

impl Readiness {
    /// What a fresh fd is assumed to be: an edge may have fired before it was
    /// registered, so the first attempt finds out.
    pub const ASSUMED: Readiness = Readiness(READABLE | WRITABLE);

    pub fn is_ready(self, dir: Direction) -> bool {
        self.0 & bit(dir) != 0
    }

    /// An attempt in `dir` found the fd not ready (`WouldBlock`).
    pub fn clear(&mut self, dir: Direction) {
        self.0 &= !bit(dir);
    }

    /// A transfer in `dir` came up short. On Linux that proves the buffer was
    /// drained or filled at that instant, so the next data (or space) is a new
    /// edge: readiness is cleared without paying a syscall for `EAGAIN` (tokio
    /// does the same). A hung-up fd stays readable: EOF is still to be read.
    /// Other systems keep going until `WouldBlock`.
    pub fn short(&mut self, dir: Direction) {
        if cfg!(any(target_os = "linux", target_os = "android"))
            && !(dir == Direction::Read && self.0 & HUP != 0)
        {
            self.clear(dir);
        }
    }

    /// Merges an event.
    pub fn add(&mut self, ev: Ready) {
        // A hang-up or error is both: reads see EOF or the error, writes the error.
        if ev.hup {
            self.0 |= READABLE | WRITABLE | HUP;
        }
        if ev.readable {
            self.0 |= READABLE;
        }
        if ev.writable {
            self.0 |= WRITABLE;
        }
    }
}

/// What an event says about one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ready {
    pub readable: bool,
    pub writable: bool,
    /// Peer hang-up or a pending error: no later edge will announce it.
    pub hup: bool,
}

#[derive(Debug)]
pub(crate) struct Driver {
    poller: Poller,
    events: Events,
    /// The connections' events of the last poll, handed out from the back.
    ready: Vec<(Token, Ready)>,
    syscalls: u64,
}

impl Driver {
    pub fn new(events: usize) -> io::Result<Driver> {
        Ok(Driver {
            poller: Poller::new()?,
            events: Events::with_capacity(events),
            ready: Vec::new(),
            syscalls: 0,
        })
    }

    pub fn poller(&self) -> &Poller {
        &self.poller
    }

    pub fn backend(&self) -> Backend {
        Backend::Epoll
    }

    pub fn syscalls(&self) -> u64 {
        self.syscalls
    }

    pub fn lost(&self) -> u64 {
        0
    }

    pub fn check_thread(&self) -> io::Result<()> {
        Ok(())
    }

    pub fn register(&mut self, fd: BorrowedFd<'_>, token: Token) -> io::Result<()> {
        self.syscalls += 1;
        self.poller.register(fd, token.encode())
    }

    #[inline]
    pub fn read<C>(&mut self, on: On<'_>, req: &mut Req<C>, swap: &mut Swap) -> Step<Bytes> {
        let (io, fd) = (on.io, on.fd);
        if !io.ready.is_ready(Direction::Read) {
            return Step::Later;
        }
        let (res, want, at) = match req.read_target() {
            Some(target) => {
                let want = target.len();
                (gaio_sys::read(fd, target), want, Landed::Own)
            }
            None => {
                #[allow(irrefutable_let_patterns)] // kqueue systems have no ring
                let SwapMem::Plain(mem) = &mut swap.mem else {
                    unreachable!("the readiness driver reads into a plain swap buffer")
                };
                let off = swap.used;
                let room = mem.len() - off;
                if room < swap.min {
                    return Step::NoRoom;
                }
                let res = gaio_sys::read(fd, &mut mem[off..]);
                if let Ok(n) = res {
                    swap.used += n;
                }
                (res, room, Landed::Swap(off))
            }
        };
        self.syscalls += 1;
        match res {
            Ok(n) => {
                if n > 0 && n < want {
                    io.ready.short(Direction::Read);
                }
                Step::Done(Ok((n, at)))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                io.ready.clear(Direction::Read);
                Step::Later
            }
            Err(e) => Step::Done(Err(e)),
        }
    }

    /// Writes the writes at the front of `q` in one `send`/`write`, or
    /// `sendmsg`/`writev` when several are queued (up to `IOV_MAX`).
    #[inline]
    pub fn write<C>(&mut self, on: On<'_>, q: &mut Queue<'_, C>) -> Step<usize> {
        let (io, fd, socket) = (on.io, on.fd, on.socket);
        if !io.ready.is_ready(Direction::Write) {
            return Step::Later;
        }
        let head = q.head.as_ref().expect("a write at the head");
        let first = IoSlice::new(head.unsent());
        self.syscalls += 1;
        let res = match q.queued_writes() {
            // The common case, one write: no iovec array to fill.
            None => send(fd, socket, std::slice::from_ref(&first)).map(|n| (n, first.len())),
            Some(more) => {
                let mut iov = [IoSlice::new(&[]); IOV_MAX];
                iov[0] = first;
                let mut want = first.len();
                let mut n = 1;
                for r in more.take(IOV_MAX - 1) {
                    iov[n] = IoSlice::new(r.unsent());
                    want += iov[n].len();
                    n += 1;
                }
                send(fd, socket, &iov[..n]).map(|n| (n, want))
            }
        };
        match res {
            Ok((written, want)) => {
                if written < want {
                    io.ready.short(Direction::Write);
                }
                Step::Done(Ok(written))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                io.ready.clear(Direction::Write);
                Step::Later
            }
            Err(e) => Step::Done(Err(e)),
        }
    }

    #[cold]
    pub fn accept(&mut self, on: On<'_>) -> Step<(OwnedFd, Option<SocketAddr>)> {
        let (io, fd) = (on.io, on.fd);
        if !io.ready.is_ready(Direction::Read) {
            return Step::Later;
        }
        self.syscalls += 1;
        match gaio_sys::accept(fd) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                io.ready.clear(Direction::Read);
                Step::Later
            }
            res => Step::Done(res),
        }
    }

    #[cold]
    pub fn connect(&mut self, on: On<'_>) -> Step<()> {
        let (io, fd) = (on.io, on.fd);
        if !io.ready.is_ready(Direction::Write) {
            return Step::Later;
        }
        self.syscalls += 1;
        Step::Done(match gaio_sys::take_error(fd) {
            Ok(None) => {
                // Reads waited for the connect; data may have raised its edge
                // meanwhile.
                io.ready.add(Ready {
                    readable: true,
                    writable: false,
                    hup: false,
                });
                Ok(())
            }
            Ok(Some(e)) | Err(e) => Err(e),
        })
    }

    /// A system call made on the driver's behalf (shutdown).
    pub fn count_syscall(&mut self) {
        self.syscalls += 1;
    }

    pub fn close(&mut self, fd: OwnedFd) {
        self.detach(fd.as_fd());
        drop(fd);
        self.syscalls += 1;
    }

    pub fn detach(&mut self, fd: BorrowedFd<'_>) {
        // Explicitly: a dup of the fd elsewhere would keep the registration (and
        // its events) alive past close. Failure means it is gone already.
        let _ = self.poller.deregister(fd);
        self.syscalls += 1;
    }

    #[inline]
    pub fn may_step(&self, io: &IoState, dir: Direction) -> bool {
        io.ready.is_ready(dir)
    }

    #[inline]
    pub fn lent(&self, _io: &IoState, _dir: Direction) -> usize {
        0
    }

    pub fn cancel(&mut self, _io: &mut IoState, _token: Token, _dir: Direction) {}

    #[inline]
    pub fn poll(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.syscalls += 1;
        self.poller.wait(&mut self.events, timeout)?;
        self.ready.clear();
        let ready = self.events.iter().filter(|ev| ev.token() != WAKE_TOKEN);
        self.ready.extend(ready.map(|ev| {
            let ready = Ready {
                readable: ev.is_readable(),
                writable: ev.is_writable(),
                hup: ev.is_read_closed() || ev.is_error(),
            };
            (Token::decode(ev.token()), ready)
        }));
        // `next_event` pops them in the order the kernel gave them.
        self.ready.reverse();
        Ok(!self.ready.is_empty())
    }

    pub fn has_unsubmitted(&mut self) -> bool {
        false
    }

    pub fn flush(&mut self) {}

    #[inline]
    pub fn next_event(&mut self) -> Option<(Token, Event)> {
        let (token, ready) = self.ready.pop()?;
        Some((token, Event::Ready(ready)))
    }

    #[inline]
    pub fn apply<C>(&mut self, c: &mut Parts<'_, C>, ev: Event, _swap: &mut Swap) -> Option<Got> {
        #[allow(irrefutable_let_patterns)]
        if let Event::Ready(r) = ev {
            c.io.ready.add(r);
        }
        None
    }

    pub fn recycle(&mut self, _swap: &mut Swap) -> bool {
        false
    }

    pub fn close_all(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `send`/`sendmsg` on a socket (never `SIGPIPE`), `write`/`writev` otherwise.
#[inline]
fn send(fd: BorrowedFd<'_>, socket: bool, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    match (bufs, socket) {
        ([one], true) => gaio_sys::send(fd, one),
        ([one], false) => gaio_sys::write(fd, one),
        (many, true) => gaio_sys::sendv(fd, many),
        (many, false) => gaio_sys::writev(fd, many),
    }
}
