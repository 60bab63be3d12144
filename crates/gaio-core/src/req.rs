//! A request: what it asks for ([`Kind`], its [`Direction`]), its buffer and
//! context, its progress, and the policy that decides when it is complete — read
//! what is there, fill the buffer (`read_full`), write everything. The bit layout
//! that packs the kind and the timer id into one word is defined here and nowhere
//! else.

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
}

impl Kind {
    pub fn direction(self) -> Direction {
        match self {
            Kind::Read | Kind::ReadFull => Direction::Read,
            Kind::Write => Direction::Write,
        }
    }
}

// The layout of `Req::meta`: kind in the top two bits, then the doomed bit, then
// the timer id.
const KIND_SHIFT: u32 = 30;
const DOOMED: u32 = 1 << 29;
const TIMER_BITS: u32 = 29;
const TIMER_MASK: u32 = (1 << TIMER_BITS) - 1;
/// The timer id of a request without a deadline; real ids are below it.
pub(crate) const NO_TIMER: u32 = TIMER_MASK;

/// The largest buffer a request may carry: progress is counted in a `u32`.
pub(crate) const MAX_BUF: usize = u32::MAX as usize;

/// Refuses what can never complete: an empty buffer where one is needed (a
/// `Some` read buffer, `read_full`, a write) or one over 4 GiB.
#[inline]
pub(crate) fn check_buf(buf: Option<&Vec<u8>>, kind: Kind) -> Result<()> {
    match buf.map(Vec::len) {
        None if kind != Kind::Read => Err(Error::EmptyBuffer),
        Some(0) => Err(Error::EmptyBuffer),
        Some(n) if n > MAX_BUF => Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a request's buffer must be under 4 GiB",
        ))),
        _ => Ok(()),
    }
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
    pub fn new(buf: Option<Vec<u8>>, ctx: C, kind: Kind) -> Req<C> {
        debug_assert!(check_buf(buf.as_ref(), kind).is_ok());
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

    /// Made after its connection was freed: it waits in line (so completions keep
    /// their order) but never moves a byte, and completes with `ConnClosed`.
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

    /// The bytes a write still has to send.
    pub fn unsent(&self) -> &[u8] {
        match &self.buf {
            Some(b) => &b[self.done()..],
            None => &[],
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
        if self.buf.is_none() {
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
