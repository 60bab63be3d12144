//! A request: what it asks for ([`Kind`], its [`Direction`]), its buffer and
//! context, its progress, and the policy that decides when it is complete — read
//! what is there, fill the buffer (`read_full`), write everything. The bit layout
//! that packs the kind, the doomed flag and the timer id into one word is defined
//! here and nowhere else.

use std::sync::Arc;

use crate::{Error, Result};

/// Which way a request moves bytes; every per-direction structure (queues,
/// readiness, deadlines) is indexed by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Direction {
    Read,
    Write,
}

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Whatever is available, at least one byte (or EOF).
    Read = 0,
    /// Until the buffer is full.
    ReadFull = 1,
    /// All of the buffer.
    Write = 2,
    /// One connection from a listener.
    Accept = 3,
    /// Waits for a nonblocking connect to finish (head of the write queue).
    Connect = 4,
    /// Shuts the write side down once the writes before it are out.
    Shutdown = 5,
    /// Closes the connection once the writes before it are out.
    Close = 6,
    /// Waits for the connection to be writable (its queued write bytes at or
    /// below the low watermark); kept beside the queues, not in them.
    Writable = 7,
}

impl Kind {
    /// What its completion says it did.
    #[inline]
    pub fn op(self) -> crate::Op {
        use crate::Op;
        // A table, not a match: one load on the hot path.
        const OPS: [Op; 8] = [
            Op::Read,
            Op::Read,
            Op::Write,
            Op::Accept,
            Op::Connect,
            Op::Shutdown,
            Op::Close,
            Op::Writable,
        ];
        OPS[self as usize]
    }

    pub fn direction(self) -> Direction {
        match self {
            Kind::Read | Kind::ReadFull | Kind::Accept => Direction::Read,
            Kind::Write | Kind::Connect | Kind::Shutdown | Kind::Close | Kind::Writable => {
                Direction::Write
            }
        }
    }
}

// The layout of `Req::meta`: kind in the top three bits, then the doomed bit,
// then the timer id.
const KIND_SHIFT: u32 = 29;
const DOOMED: u32 = 1 << 28;
const TIMER_BITS: u32 = 28;
const TIMER_MASK: u32 = (1 << TIMER_BITS) - 1;
/// The timer id of a request without a deadline; real ids are below it.
pub(crate) const NO_TIMER: u32 = TIMER_MASK;
/// The timer id of a request whose deadline passed while an operation held its
/// buffer (io_uring): out of the heap, found by the expiry once the operation
/// is over. Real ids are below it too.
pub(crate) const EXPIRED: u32 = TIMER_MASK - 1;

/// The largest buffer a request may carry: progress is counted in a `u32`.
pub(crate) const MAX_BUF: usize = u32::MAX as usize;

/// A request's buffer.
#[derive(Debug)]
pub(crate) enum Buf {
    /// None: a swap-buffer read, or a request that moves no bytes.
    None,
    Owned(Vec<u8>),
    /// An immutable buffer shared with other writes (a broadcast).
    Shared(Arc<[u8]>),
    /// Lent to the kernel by an operation in flight (io_uring): back with its
    /// completion.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Lent,
}

impl Buf {
    #[inline]
    pub fn len(&self) -> usize {
        match self {
            Buf::None | Buf::Lent => 0,
            Buf::Owned(v) => v.len(),
            Buf::Shared(b) => b.len(),
        }
    }
}

/// Refuses what can never complete: an empty buffer where one is needed (a
/// `Some` read buffer, `read_full`, a write) or one over 4 GiB.
#[inline]
pub(crate) fn check_buf(buf: &Buf, kind: Kind) -> Result<()> {
    let len = buf.len();
    if len == 0
        && !(matches!(buf, Buf::None)
            && matches!(
                kind,
                Kind::Read
                    | Kind::Accept
                    | Kind::Connect
                    | Kind::Shutdown
                    | Kind::Close
                    | Kind::Writable
            ))
    {
        return Err(Error::EmptyBuffer);
    }
    if len > MAX_BUF {
        return Err(too_big());
    }
    Ok(())
}

#[cold]
fn too_big() -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "a request's buffer must be under 4 GiB",
    ))
}

/// One pending request: kept inline in its connection's slot while it is first in
/// line, so an idle connection with one read costs no allocation. 40 bytes with a
/// `usize` ctx: the progress count is a `u32` (buffers are limited to 4 GiB) and the
/// kind shares a word with the timer id, so two requests and a connection fit the
/// 128-byte budget per idle connection.
#[derive(Debug)]
pub(crate) struct Req<C> {
    pub buf: Buf,
    pub ctx: C,
    /// Bytes moved so far (read_full and write make progress across calls).
    done: u32,
    /// Kind, doomed bit and timer id (or `NO_TIMER`); see the layout above.
    meta: u32,
}

/// What one read did to a request.
#[derive(Debug)]
pub(crate) enum Step {
    /// The request is complete with this result; `size` bytes were moved.
    Complete { size: usize, result: Result<()> },
    /// Keep reading into the same request (`read_full` short of its length).
    More,
}

impl<C> Req<C> {
    #[inline]
    pub fn new(buf: Buf, ctx: C, kind: Kind) -> Req<C> {
        Req {
            buf,
            ctx,
            done: 0,
            meta: ((kind as u32) << KIND_SHIFT) | NO_TIMER,
        }
    }

    /// The same request with its context replaced by `f(ctx)`.
    #[inline]
    pub fn map_ctx<D>(self, f: impl FnOnce(C) -> D) -> Req<D> {
        Req {
            buf: self.buf,
            ctx: f(self.ctx),
            done: self.done,
            meta: self.meta,
        }
    }

    #[inline]
    pub fn kind(&self) -> Kind {
        // A table, not a match: one load on the hot path.
        const KINDS: [Kind; 8] = [
            Kind::Read,
            Kind::ReadFull,
            Kind::Write,
            Kind::Accept,
            Kind::Connect,
            Kind::Shutdown,
            Kind::Close,
            Kind::Writable,
        ];
        KINDS[(self.meta >> KIND_SHIFT) as usize & 7]
    }

    pub fn timer(&self) -> u32 {
        self.meta & TIMER_MASK
    }

    pub fn set_timer(&mut self, id: u32) {
        debug_assert!(id <= TIMER_MASK);
        self.meta = (self.meta & !TIMER_MASK) | id;
    }

    /// Made after its connection was freed or closed: it waits in line (so
    /// completions keep their order) but never moves a byte, and completes with
    /// `ConnClosed`.
    pub fn doom(&mut self) {
        self.meta |= DOOMED;
    }

    pub fn is_doomed(&self) -> bool {
        self.meta & DOOMED != 0
    }

    pub fn done(&self) -> usize {
        self.done as usize
    }

    pub fn advance(&mut self, n: usize) {
        self.done += n as u32;
    }

    /// The bytes a write still has to send (none for other kinds).
    #[inline]
    pub fn unsent(&self) -> &[u8] {
        match &self.buf {
            Buf::Owned(b) => &b[self.done()..],
            Buf::Shared(b) => &b[self.done()..],
            Buf::None | Buf::Lent => &[],
        }
    }

    // Used by completion drivers (io_uring) only.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    /// Lends the buffer to an operation (`None` for a swap-buffer read): the
    /// request waits in its queue, marked lent, until [`give_back`](Self::give_back).
    pub fn lend(&mut self) -> Option<Buf> {
        match std::mem::replace(&mut self.buf, Buf::Lent) {
            Buf::None => {
                self.buf = Buf::None;
                None
            }
            b => Some(b),
        }
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    /// The buffer an operation lent comes back.
    pub fn give_back(&mut self, buf: Buf) {
        debug_assert!(matches!(self.buf, Buf::Lent));
        self.buf = buf;
    }

    /// Its deadline passed while an operation held it: it completes with
    /// `Deadline` once the operation is over.
    pub fn is_expired(&self) -> bool {
        self.timer() == EXPIRED
    }

    /// Where an owned-buffer read goes next; `None` for a swap-buffer read.
    pub fn read_target(&mut self) -> Option<&mut [u8]> {
        let done = self.done();
        match &mut self.buf {
            Buf::Owned(b) => Some(&mut b[done..]),
            _ => None,
        }
    }

    /// Accounts for a read of `n` bytes out of `want` offered (`n == 0`: EOF).
    /// The policy of each read kind lives here, not in the loop that moves bytes.
    pub fn after_read(&mut self, n: usize, want: usize) -> Step {
        if n == 0 {
            // EOF. read_full short of its length is an error, like read_exact.
            let result = if self.kind() == Kind::ReadFull {
                Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()))
            } else {
                Ok(())
            };
            return Step::Complete {
                size: self.done(),
                result,
            };
        }
        if matches!(self.buf, Buf::None) {
            return Step::Complete {
                size: n,
                result: Ok(()),
            };
        }
        self.advance(n);
        if self.kind() == Kind::ReadFull && n < want {
            return Step::More;
        }
        Step::Complete {
            size: self.done(),
            result: Ok(()),
        }
    }
}
