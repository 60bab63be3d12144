//! The connection table: typed per-connection state in fixed-size chunks, so
//! growing never moves a connection (no realloc copy of a 10k-connection table in
//! the middle of a batch) and memory grows by one chunk at a time.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::Conn;
use crate::conn::Token;
use crate::driver::IoState;
use crate::req::{Direction, Kind, Req};

const CHUNK: usize = 256;

/// `ConnState::wstate`: queued bytes went above the high watermark and have
/// not fallen to the low one since.
pub(crate) const UNWRITABLE: u8 = 1;
/// `ConnState::wstate`: its flow pauses reads while it is not writable.
pub(crate) const PAUSES: u8 = 2;

/// A connection's life. Transitions, all in [`Engine`](super::Engine):
///
/// ```text
/// Vacant ─install─▶ Open ─close request─▶ Draining ─┐
///    │                │  ─free─▶ Closing ──next turn─┤
///    └install(connect)▶ Connecting ─connected─▶ Open  │
///                                                    ▼
///           Vacant ◀─driver holds nothing─ Retiring ◀─┘ (closed for the application)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Life {
    /// No connection (or one registered through a `Submitter` and not taken
    /// over yet).
    #[default]
    Vacant,
    /// A nonblocking connect has not finished: reads wait (a read would consume
    /// the connect's error).
    Connecting,
    Open,
    /// A graceful close is queued behind the writes: reads are over, requests
    /// made now complete with `ConnClosed`.
    Draining,
    /// Freed: closes at the next turn, once the requests queued before the
    /// `free` had their chance; requests made now complete with `ConnClosed`.
    Closing,
    /// Closed for the application (its `Conn` is stale); the driver still
    /// holds requests of it, which complete as their operations come back. The
    /// slot goes back to the allocator once nothing is held.
    Retiring,
}

impl Life {
    /// Whether the connection takes requests (made on a live `Conn`): the one
    /// check of liveness.
    #[inline]
    pub fn is_live(self) -> bool {
        !matches!(self, Life::Vacant | Life::Retiring)
    }

    /// Live, but new requests complete with `ConnClosed`.
    #[inline]
    pub fn is_ending(self) -> bool {
        matches!(self, Life::Draining | Life::Closing)
    }
}

/// Requests beyond the first of each direction (one box for both keeps an idle
/// connection small).
#[derive(Debug)]
pub(crate) struct Spill<C> {
    reads: VecDeque<Req<C>>,
    writes: VecDeque<Req<C>>,
    /// `writable` requests waiting for the connection to be writable again.
    pub waiters: Vec<Req<C>>,
}

/// One connection's requests in one direction, in order: the head inline, the
/// rest in the shared spill box.
#[derive(Debug)]
pub(crate) struct Queue<'a, C> {
    pub head: &'a mut Option<Req<C>>,
    pub rest: Option<&'a mut VecDeque<Req<C>>>,
}

impl<C> Queue<'_, C> {
    /// Takes the head; the next request in line becomes head.
    pub fn pop(&mut self) -> Option<Req<C>> {
        let next = self.rest.as_mut().and_then(|q| q.pop_front());
        std::mem::replace(self.head, next)
    }

    /// The writes queued behind the head that can go out with it in one
    /// system call; `None` when there are none, the common case.
    #[inline]
    pub fn queued_writes(&self) -> Option<impl Iterator<Item = &Req<C>>> {
        let rest = self.rest.as_ref().filter(|q| !q.is_empty())?;
        Some(
            rest.iter()
                .take_while(|r| r.kind() == Kind::Write && !r.is_doomed() && !r.is_expired()),
        )
    }

    /// Every request, in order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Req<C>> {
        self.head
            .iter_mut()
            .chain(self.rest.iter_mut().flat_map(|r| r.iter_mut()))
    }

    /// The request armed with timer `id`, and its place in line.
    pub fn find_by_timer(&mut self, id: u32) -> Option<(usize, &mut Req<C>)> {
        if let Some(r) = self.head.as_mut().filter(|r| r.timer() == id) {
            return Some((0, r));
        }
        let q = self.rest.as_mut()?;
        let i = q.iter().position(|r| r.timer() == id)?;
        Some((i + 1, &mut q[i]))
    }

    /// Removes the request armed with timer `id`; says whether it was the head
    /// (then the next one may be able to proceed).
    pub fn take_by_timer(&mut self, id: u32) -> Option<(Req<C>, bool)> {
        if self.head.as_ref().is_some_and(|r| r.timer() == id) {
            return self.pop().map(|r| (r, true));
        }
        let q = self.rest.as_mut()?;
        let i = q.iter().position(|r| r.timer() == id)?;
        q.remove(i).map(|r| (r, false))
    }
}

/// A connection's state as a driver step borrows it, apart.
#[derive(Debug)]
pub(crate) struct Parts<'a, C> {
    pub fd: Option<BorrowedFd<'a>>,
    pub io: &'a mut IoState,
    pub socket: bool,
    pub reads: Queue<'a, C>,
    pub writes: Queue<'a, C>,
}

/// Everything the watcher knows about one slot.
#[derive(Debug)]
pub(crate) struct ConnState<C> {
    /// `Some` from install until the connection closes (or is detached).
    pub fd: Option<OwnedFd>,
    pub generation: u32,
    pub life: Life,
    /// What the driver keeps for it (readiness, operations in flight).
    pub io: IoState,
    /// A socket is written with `send` (no SIGPIPE), anything else with `write`.
    pub socket: bool,
    /// On the list of connections waiting for swap-buffer space.
    pub swap_wait: bool,
    /// Has requests (or a `free`) from this turn that have not been tried yet.
    pub dirty: bool,
    /// Bytes of the queued writes not sent yet (what the watermarks and the
    /// write limit bound; at most 4 GiB).
    pub queued: u32,
    /// Its write watermarks: an index into the engine's flows.
    pub flow: u8,
    /// `UNWRITABLE` and `PAUSES` bits.
    pub wstate: u8,
    read: Option<Req<C>>,
    write: Option<Req<C>>,
    spill: Option<Box<Spill<C>>>,
}

impl<C> ConnState<C> {
    fn vacant() -> ConnState<C> {
        ConnState {
            fd: None,
            generation: 0,
            life: Life::Vacant,
            io: IoState::default(),
            socket: false,
            swap_wait: false,
            dirty: false,
            queued: 0,
            flow: 0,
            wstate: 0,
            read: None,
            write: None,
            spill: None,
        }
    }

    /// Takes `fd` over. A socket still connecting is not assumed ready: its
    /// connect reports through the first edge.
    pub fn install(&mut self, fd: OwnedFd, generation: u32, socket: bool, connecting: bool) {
        debug_assert!(self.life == Life::Vacant && self.read.is_none() && self.write.is_none());
        self.fd = Some(fd);
        self.generation = generation;
        self.io = IoState::new(connecting);
        self.life = if connecting {
            Life::Connecting
        } else {
            Life::Open
        };
        self.socket = socket;
    }

    /// The token of the connection in slot `slot` (this one).
    #[inline]
    pub fn token(&self, slot: u32) -> Token {
        Token {
            slot,
            generation: self.generation,
        }
    }

    /// A graceful close was queued: reads are over (live → `Draining`).
    pub fn drain(&mut self) {
        debug_assert!(self.life.is_live());
        self.life = Life::Draining;
    }

    /// Freed: it closes at the next turn (live → `Closing`).
    pub fn free(&mut self) {
        debug_assert!(self.life.is_live());
        self.life = Life::Closing;
    }

    /// Its nonblocking connect finished (`Connecting` → `Open`).
    pub fn connected(&mut self) {
        if self.life == Life::Connecting {
            self.life = Life::Open;
        }
    }

    /// Closed for the application, operations may still be out (live →
    /// `Retiring`); [`retire`](Self::retire) ends it.
    pub fn close(&mut self) {
        debug_assert!(self.life.is_live());
        self.life = Life::Retiring;
    }

    /// The connection's queue in `dir`.
    pub fn queue(&mut self, dir: Direction) -> Queue<'_, C> {
        let (head, rest) = match dir {
            Direction::Read => (&mut self.read, self.spill.as_mut().map(|s| &mut s.reads)),
            Direction::Write => (&mut self.write, self.spill.as_mut().map(|s| &mut s.writes)),
        };
        Queue { head, rest }
    }

    /// What a driver step touches, borrowed apart: the fd, the driver's state
    /// and both queues.
    pub fn parts(&mut self) -> Parts<'_, C> {
        let (reads, writes) = match self.spill.as_mut() {
            Some(s) => (Some(&mut s.reads), Some(&mut s.writes)),
            None => (None, None),
        };
        Parts {
            fd: self.fd.as_ref().map(|f| f.as_fd()),
            io: &mut self.io,
            socket: self.socket,
            reads: Queue {
                head: &mut self.read,
                rest: reads,
            },
            writes: Queue {
                head: &mut self.write,
                rest: writes,
            },
        }
    }

    pub fn head(&self, dir: Direction) -> Option<&Req<C>> {
        match dir {
            Direction::Read => self.read.as_ref(),
            Direction::Write => self.write.as_ref(),
        }
    }

    /// Appends a request to the `dir` queue: inline as its head when the
    /// queue is empty (the common case, no allocation), else behind it.
    #[inline(always)]
    pub fn push(&mut self, dir: Direction, req: Req<C>) {
        let head = match dir {
            Direction::Read => &mut self.read,
            Direction::Write => &mut self.write,
        };
        if head.is_none() {
            *head = Some(req);
            return;
        }
        self.push_behind(dir, req);
    }

    /// Appends a request behind the head, in the spill box.
    #[inline(never)]
    fn push_behind(&mut self, dir: Direction, req: Req<C>) {
        let spill = self.spill_mut();
        match dir {
            Direction::Read => spill.reads.push_back(req),
            Direction::Write => spill.writes.push_back(req),
        }
    }

    /// The box of requests beyond the first of each direction, made if needed.
    pub fn spill_mut(&mut self) -> &mut Spill<C> {
        self.spill.get_or_insert_with(|| {
            Box::new(Spill {
                reads: VecDeque::new(),
                writes: VecDeque::new(),
                waiters: Vec::new(),
            })
        })
    }

    /// The `writable` requests waiting, if any ever did.
    pub fn waiters_mut(&mut self) -> Option<&mut Vec<Req<C>>> {
        self.spill.as_mut().map(|s| &mut s.waiters)
    }

    /// Whether the connection is writable (queued bytes have not gone above
    /// the high watermark, or have fallen back to the low one since).
    #[inline]
    pub fn is_writable(&self) -> bool {
        self.wstate & UNWRITABLE == 0
    }

    /// Whether reads wait: not writable, and its flow pauses reads.
    #[inline]
    pub fn reads_paused(&self) -> bool {
        self.wstate == UNWRITABLE | PAUSES
    }

    /// Back to vacant under the next generation; the queues must be empty and
    /// the driver hold nothing of it.
    pub fn retire(&mut self, next_generation: u32) {
        debug_assert!(self.read.is_none() && self.write.is_none());
        debug_assert!(self.spill.as_ref().is_none_or(|s| s.waiters.is_empty()));
        debug_assert!(self.io.is_idle(), "retired with driver work left");
        *self = ConnState {
            generation: next_generation,
            ..ConnState::vacant()
        };
    }
}

#[derive(Debug)]
pub(crate) struct Table<C> {
    /// Arrays, not slices: a slot's place in its chunk needs no bounds check.
    chunks: Vec<Box<[ConnState<C>; CHUNK]>>,
}

impl<C> Table<C> {
    pub fn new() -> Table<C> {
        Table { chunks: Vec::new() }
    }

    /// The slot, whatever its state.
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut ConnState<C>> {
        let i = slot as usize;
        self.chunks.get_mut(i / CHUNK).map(|c| &mut c[i % CHUNK])
    }

    /// The state of `slot` if it holds a live connection of `generation`: the one
    /// check of "is this token still this connection".
    #[inline]
    pub fn live_mut(&mut self, slot: u32, generation: u32) -> Option<&mut ConnState<C>> {
        self.get_mut(slot)
            .filter(|c| c.generation == generation && c.life.is_live())
    }

    /// The slot, growing the table to hold it.
    pub fn get_or_grow(&mut self, slot: u32) -> &mut ConnState<C> {
        let i = slot as usize;
        while self.chunks.len() <= i / CHUNK {
            let chunk: Box<[ConnState<C>]> = (0..CHUNK).map(|_| ConnState::vacant()).collect();
            self.chunks
                .push(chunk.try_into().ok().expect("a chunk of CHUNK slots"));
        }
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    /// Every live connection.
    pub fn live(&self, watcher: u32) -> impl Iterator<Item = Conn> + '_ {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .enumerate()
            .filter(|(_, c)| c.life.is_live())
            .map(move |(i, c)| Conn {
                slot: i as u32,
                generation: c.generation,
                watcher,
            })
    }

    /// Closes every fd, leaving the requests in place.
    pub fn close_fds(&mut self) {
        for c in self.chunks.iter_mut().flat_map(|c| c.iter_mut()) {
            drop(c.fd.take());
        }
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
    }
}
