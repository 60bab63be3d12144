//! The seam: the engine decides *what* happens next on a connection, a driver
//! decides *how*.
//!
//! The engine calls one method per transfer for the head request of a
//! direction — [`Driver::read`], [`write`](Driver::write),
//! [`accept`](Driver::accept), [`connect`](Driver::connect) — and gets a
//! [`Step`]: done now (with its result), later, or no swap room. A readiness
//! driver ([`poll`]: epoll, kqueue) tries the system call now and answers
//! `Later` when the fd is not ready; a completion driver ([`uring`]: io_uring)
//! submits an operation, answers `Later`, and the result comes back as an
//! event. Either way, [`Driver::poll`] waits; [`Driver::next_event`] and
//! [`Driver::apply`] turn what the kernel reported into a result for the
//! engine ([`Got`]) or just new readiness, after which the engine asks for the
//! next step again.
//!
//! While an operation holds requests (their buffers lent to the kernel),
//! [`Driver::lent`] says how many at the front of a queue the engine must leave
//! in place; [`Driver::cancel`] asks for them back and returns at once: they
//! come back through `apply`. A readiness driver never holds any.
//!
//! Neither knows of request order, deadlines or completions to the
//! application: those are the engine's, the same on every backend. A third
//! driver implements these methods and touches nothing in the engine.

pub(crate) mod poll;
#[cfg(target_os = "linux")]
pub(crate) mod uring;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use crate::Backend;
use crate::conn::Token;
use crate::engine::{Parts, Queue};
use crate::req::{Direction, Req};

/// What a transfer step did.
#[derive(Debug)]
pub(crate) enum Step<T> {
    /// Done now, with this result.
    Done(io::Result<T>),
    /// Not now: the driver reports when it can go on (readiness, or the
    /// operation it submitted completing).
    Later,
    /// A swap-buffer read found no room; it can go on once the swap buffer is
    /// free again (the next batch).
    NoRoom,
}

/// Where the bytes of a read landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // `Ring`: io_uring only
pub(crate) enum Landed {
    /// In the request's own buffer.
    Own,
    /// In the swap buffer at this offset.
    Swap(usize),
    /// In the provided buffer `bid` of the io_uring buffer ring.
    Ring(u16),
}

/// What a read moved: how many bytes, and where they landed.
pub(crate) type Bytes = (usize, Landed);

/// A result the kernel reported for a connection's head request (from a
/// completion driver; a readiness driver's results are all `Step::Done`).
#[derive(Debug)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) enum Got {
    Read(io::Result<Bytes>),
    Wrote(io::Result<usize>),
    Accepted(io::Result<(OwnedFd, Option<SocketAddr>)>),
    Connected(io::Result<()>),
    /// A swap-buffer read found the swap space used up.
    NoRoom,
}

/// The connection a transfer step is for, as a driver sees it.
#[derive(Debug)]
pub(crate) struct On<'a> {
    pub io: &'a mut IoState,
    pub fd: BorrowedFd<'a>,
    /// A socket is written with `send` (no `SIGPIPE`), anything else with `write`.
    pub socket: bool,
    /// What a completion driver tags its operations with.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub token: Token,
}

impl<'a> On<'a> {
    #[inline]
    pub fn new(io: &'a mut IoState, fd: BorrowedFd<'a>, socket: bool, token: Token) -> On<'a> {
        On {
            io,
            fd,
            socket,
            token,
        }
    }
}

/// What a driver keeps per connection, inline in its slot: readiness for a
/// readiness driver, operations in flight for a completion driver.
#[derive(Debug, Default)]
pub(crate) struct IoState {
    pub ready: poll::Readiness,
    /// Operations in flight (`uring::op` bits).
    ops: u8,
    /// Queued writes the write in flight covers.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    wr_n: u8,
    /// Ids of the operations in flight that lent buffers (for cancelling).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    rd_op: u32,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    wr_op: u32,
}

impl IoState {
    /// A fresh fd: assumed ready (an edge may have fired before it was
    /// registered), unless a connect is under way.
    pub fn new(connecting: bool) -> IoState {
        IoState {
            ready: if connecting {
                poll::Readiness::default()
            } else {
                poll::Readiness::ASSUMED
            },
            ..IoState::default()
        }
    }

    /// Nothing of the driver's refers to the connection any more.
    pub fn is_idle(&self) -> bool {
        self.ops == 0
    }
}

/// The swap space swap-buffer reads land in: a plain buffer the readiness
/// driver reads into, or the io_uring ring of provided buffers the kernel
/// fills. Owned by the watcher, outside the engine, so a batch can borrow it
/// while requests are made; `used` counts what the current batch took.
#[derive(Debug)]
pub(crate) struct Swap {
    pub mem: SwapMem,
    pub used: usize,
    /// The least room worth a read (a sliver costs a syscall per few bytes).
    pub min: usize,
}

#[derive(Debug)]
pub(crate) enum SwapMem {
    Plain(Box<[u8]>),
    #[cfg(target_os = "linux")]
    Ring(gaio_sys::uring::Buffers),
}

impl Swap {
    pub fn new(mem: SwapMem) -> Swap {
        let len = match &mem {
            SwapMem::Plain(b) => b.len(),
            #[cfg(target_os = "linux")]
            SwapMem::Ring(b) => b.buffer_len(),
        };
        Swap {
            mem,
            used: 0,
            min: len.min(1024),
        }
    }

    /// The `len` bytes a read left at `at` (borrowed until the swap space is
    /// reused, which needs `&mut self`).
    pub fn bytes(&self, at: Landed, len: usize) -> &[u8] {
        if len == 0 {
            return &[];
        }
        match (&self.mem, at) {
            (SwapMem::Plain(b), Landed::Swap(off)) => &b[off..off + len],
            #[cfg(target_os = "linux")]
            (SwapMem::Ring(b), Landed::Ring(bid)) => b.bytes(bid, len),
            _ => &[],
        }
    }
}

/// The driver of one watcher (inline: the size of the larger variant costs
/// nothing, a box would cost a load per operation).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Driver {
    Poll(poll::Driver),
    #[cfg(target_os = "linux")]
    Uring(uring::Driver),
}

/// Calls the same method on whichever driver this is.
macro_rules! each {
    ($self:expr, $d:ident => $e:expr) => {
        match $self {
            Driver::Poll($d) => $e,
            #[cfg(target_os = "linux")]
            Driver::Uring($d) => $e,
        }
    };
}

impl Driver {
    pub fn backend(&self) -> Backend {
        each!(self, d => d.backend())
    }

    pub fn syscalls(&self) -> u64 {
        each!(self, d => d.syscalls())
    }

    /// Completions the kernel lost (io_uring completion queue overflow).
    pub fn lost(&self) -> u64 {
        each!(self, d => d.lost())
    }

    /// Whether this thread may drive the watcher.
    pub fn check_thread(&self) -> io::Result<()> {
        each!(self, d => d.check_thread())
    }

    /// Starts reporting on `fd` under `token`.
    pub fn register(&mut self, fd: BorrowedFd<'_>, token: Token) -> io::Result<()> {
        each!(self, d => d.register(fd, token))
    }

    /// One read step for the head read request `req`.
    #[inline]
    pub fn read<C>(&mut self, on: On<'_>, req: &mut Req<C>, swap: &mut Swap) -> Step<Bytes> {
        each!(self, d => d.read(on, req, swap))
    }

    /// One write step for the writes at the front of `q` (coalesced: as many
    /// as one system call takes). `Done(n)`: `n` bytes of them went out.
    #[inline]
    pub fn write<C>(&mut self, on: On<'_>, q: &mut Queue<'_, C>) -> Step<usize> {
        each!(self, d => d.write(on, q))
    }

    /// One accept on a listener.
    pub fn accept(&mut self, on: On<'_>) -> Step<(OwnedFd, Option<SocketAddr>)> {
        each!(self, d => d.accept(on))
    }

    /// Whether a nonblocking connect has finished, and how.
    pub fn connect(&mut self, on: On<'_>) -> Step<()> {
        each!(self, d => d.connect(on))
    }

    /// Shuts the write side down (every write before it is out): a plain
    /// system call on every backend.
    pub fn shutdown(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        each!(self, d => d.count_syscall());
        gaio_sys::shutdown_write(fd)
    }

    /// Closes a connection's fd, as soon as nothing the driver queued names it
    /// (at once, or right after the next submission to the kernel).
    pub fn close(&mut self, fd: OwnedFd) {
        each!(self, d => d.close(fd))
    }

    /// Stops reporting on an fd leaving the watcher (closed, or handed back to
    /// the application); nothing queued in the driver names it afterwards.
    pub fn detach(&mut self, fd: BorrowedFd<'_>) {
        each!(self, d => d.detach(fd))
    }

    /// Whether a step in `dir` could do anything now: `false` when the fd is
    /// known not ready (readiness) or an operation in `dir` is out
    /// (completion), so a new transfer request need not be tried before the
    /// driver reports.
    #[inline]
    pub fn may_step(&self, io: &IoState, dir: Direction) -> bool {
        each!(self, d => d.may_step(io, dir))
    }

    /// How many requests at the front of `dir`'s queue an operation holds.
    #[inline]
    pub fn lent(&self, io: &IoState, dir: Direction) -> usize {
        each!(self, d => d.lent(io, dir))
    }

    /// Asks for the requests of `dir` an operation holds back, early. Returns at
    /// once; they come back through [`apply`](Self::apply).
    pub fn cancel(&mut self, io: &mut IoState, token: Token, dir: Direction) {
        each!(self, d => d.cancel(io, token, dir))
    }

    /// Submits what is queued and waits for readiness or completions, up to
    /// `timeout` (`None`: until something comes); whether any connection has
    /// events (see [`next_event`](Self::next_event)).
    #[inline]
    pub fn poll(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        each!(self, d => d.poll(timeout))
    }

    /// Hands the kernel what is queued, without waiting, if a closed fd waits
    /// for that (so a connection closed this turn is closed when the turn
    /// ends, not at the next one).
    pub fn flush(&mut self) {
        each!(self, d => d.flush())
    }

    /// Operations queued and not yet handed to the kernel.
    pub fn has_unsubmitted(&mut self) -> bool {
        each!(self, d => d.has_unsubmitted())
    }

    /// The next connection the last poll reported on.
    #[inline]
    pub fn next_event(&mut self) -> Option<(Token, Event)> {
        each!(self, d => d.next_event())
    }

    /// Applies an event to its connection: readiness, or an operation's result
    /// with the requests it held handed back to their queues. A result for the
    /// engine comes back as [`Got`].
    #[inline]
    pub fn apply<C>(&mut self, c: &mut Parts<'_, C>, ev: Event, swap: &mut Swap) -> Option<Got> {
        each!(self, d => d.apply(c, ev, swap))
    }

    /// Lends the kernel again the swap space of batches that are over (call
    /// only when no completion made since refers to it); whether any.
    pub fn recycle(&mut self, swap: &mut Swap) -> bool {
        each!(self, d => d.recycle(swap))
    }

    /// The watcher closes: ends every operation, waiting for the kernel (the
    /// only wait that is not for a poll: buffers must not be freed under it),
    /// and disposes of what comes back. An error leaves operations in flight;
    /// dropping the driver then leaks their memory.
    pub fn close_all(&mut self) -> io::Result<()> {
        each!(self, d => d.close_all())
    }
}

/// What the kernel reported for one connection.
#[derive(Debug)]
pub(crate) enum Event {
    Ready(poll::Ready),
    #[cfg(target_os = "linux")]
    Done(gaio_sys::uring::Cqe),
}
