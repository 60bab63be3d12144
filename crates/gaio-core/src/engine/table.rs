//! The connection table: typed per-connection state in fixed-size chunks, so
//! growing never moves a connection (no realloc copy of a 10k-connection table in
//! the middle of a batch) and memory grows by one chunk at a time.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

use crate::Conn;
use crate::req::{Direction, Req};

const CHUNK: usize = 256;

/// Readiness cached from edge-triggered events, cleared when an attempt finds the
/// fd not ready. `hup` is sticky: the peer hung up (or reset) and no later edge
/// will say so again, so reads go on until they see EOF or the error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Readiness {
    readable: bool,
    writable: bool,
    hup: bool,
}

impl Readiness {
    /// What a fresh fd is assumed to be: an edge may have fired before it was
    /// registered, so the first attempt finds out.
    pub const ASSUMED: Readiness = Readiness {
        readable: true,
        writable: true,
        hup: false,
    };

    pub fn is_ready(self, dir: Direction) -> bool {
        match dir {
            Direction::Read => self.readable,
            Direction::Write => self.writable,
        }
    }

    /// An attempt in `dir` found the fd not ready (`WouldBlock`).
    pub fn clear(&mut self, dir: Direction) {
        match dir {
            Direction::Read => self.readable = false,
            Direction::Write => self.writable = false,
        }
    }

    /// A transfer in `dir` came up short. On Linux that proves the buffer was
    /// drained or filled at that instant, so the next data (or space) is a new
    /// edge: readiness is cleared without paying a syscall for `EAGAIN` (tokio
    /// does the same). A hung-up fd stays readable: EOF is still to be read.
    /// Other systems keep going until `WouldBlock`.
    pub fn short(&mut self, dir: Direction) {
        if cfg!(any(target_os = "linux", target_os = "android"))
            && !(dir == Direction::Read && self.hup)
        {
            self.clear(dir);
        }
    }

    /// Merges an event; returns what became ready.
    pub fn add(&mut self, readable: bool, writable: bool, hup: bool) -> Readiness {
        // A hang-up or error is both: reads see EOF or the error, writes the error.
        let new = Readiness {
            readable: readable || hup,
            writable: writable || hup,
            hup,
        };
        self.readable |= new.readable;
        self.writable |= new.writable;
        self.hup |= new.hup;
        new
    }
}

/// Requests beyond the first of each direction (one box for both keeps an idle
/// connection small).
#[derive(Debug)]
pub(crate) struct Spill<C> {
    reads: VecDeque<Req<C>>,
    writes: VecDeque<Req<C>>,
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

    /// The request armed with timer `id`, and its place in line.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
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

/// What moving bytes for one direction's head request touches, borrowed apart.
#[derive(Debug)]
pub(crate) struct Parts<'a, C> {
    pub fd: &'a OwnedFd,
    pub head: &'a mut Req<C>,
    pub ready: &'a mut Readiness,
    pub swap_wait: &'a mut bool,
}

/// Everything the watcher knows about one slot.
#[derive(Debug)]
pub(crate) struct ConnState<C> {
    /// `None`: the slot is vacant (or registered through a `Submitter` and not yet
    /// taken over).
    pub fd: Option<OwnedFd>,
    pub generation: u32,
    pub ready: Readiness,
    /// A socket is written with `send` (no SIGPIPE), anything else with `write`.
    pub socket: bool,
    /// On the list of connections waiting for swap-buffer space.
    pub swap_wait: bool,
    /// Has requests (or a `free`) from this turn that have not been tried yet.
    pub dirty: bool,
    /// Freed: closes at the next turn, once the requests queued before the `free`
    /// had their chance; requests made after it complete with `ConnClosed`.
    pub closing: bool,
    /// A graceful close is queued behind the writes: requests made after it
    /// complete with `ConnClosed`.
    pub draining: bool,
    /// A nonblocking connect has not finished: reads wait (a read would consume
    /// the connect's error).
    pub connecting: bool,
    /// Bytes of the queued writes not sent yet (what the write limit bounds).
    pub queued: usize,
    /// io_uring: the operations in flight (`driver::uring::op` bits) and how
    /// many queued writes the write in flight covers.
    pub ops: u8,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub wr_n: u8,
    /// io_uring: results wait in the engine for the next read or accept.
    pub early: bool,
    read: Option<Req<C>>,
    write: Option<Req<C>>,
    spill: Option<Box<Spill<C>>>,
}

impl<C> ConnState<C> {
    fn vacant() -> ConnState<C> {
        ConnState {
            fd: None,
            generation: 0,
            ready: Readiness::default(),
            socket: false,
            swap_wait: false,
            dirty: false,
            closing: false,
            draining: false,
            connecting: false,
            queued: 0,
            ops: 0,
            wr_n: 0,
            early: false,
            read: None,
            write: None,
            spill: None,
        }
    }

    /// Takes `fd` over. A socket still connecting is not assumed ready: its
    /// connect reports through the first edge.
    pub fn install(&mut self, fd: OwnedFd, generation: u32, socket: bool, connecting: bool) {
        debug_assert!(self.fd.is_none() && self.read.is_none() && self.write.is_none());
        self.fd = Some(fd);
        self.generation = generation;
        self.ready = if connecting {
            Readiness::default()
        } else {
            Readiness::ASSUMED
        };
        self.socket = socket;
        self.connecting = connecting;
    }

    /// The connection's queue in `dir`.
    pub fn queue(&mut self, dir: Direction) -> Queue<'_, C> {
        let (head, rest) = match dir {
            Direction::Read => (&mut self.read, self.spill.as_mut().map(|s| &mut s.reads)),
            Direction::Write => (&mut self.write, self.spill.as_mut().map(|s| &mut s.writes)),
        };
        Queue { head, rest }
    }

    /// The fd, the head request of `dir` and the state a transfer updates; `None`
    /// when there is no fd or no request.
    pub fn parts(&mut self, dir: Direction) -> Option<Parts<'_, C>> {
        let head = match dir {
            Direction::Read => self.read.as_mut(),
            Direction::Write => self.write.as_mut(),
        }?;
        Some(Parts {
            fd: self.fd.as_ref()?,
            head,
            ready: &mut self.ready,
            swap_wait: &mut self.swap_wait,
        })
    }

    pub fn head(&self, dir: Direction) -> Option<&Req<C>> {
        match dir {
            Direction::Read => self.read.as_ref(),
            Direction::Write => self.write.as_ref(),
        }
    }

    /// Appends a request to the `dir` queue.
    #[inline]
    pub fn push(&mut self, dir: Direction, req: Req<C>) {
        let head = match dir {
            Direction::Read => &mut self.read,
            Direction::Write => &mut self.write,
        };
        if head.is_none() {
            *head = Some(req);
            return;
        }
        let spill = self.spill.get_or_insert_with(|| {
            Box::new(Spill {
                reads: VecDeque::new(),
                writes: VecDeque::new(),
            })
        });
        match dir {
            Direction::Read => spill.reads.push_back(req),
            Direction::Write => spill.writes.push_back(req),
        }
    }

    /// Back to vacant under the next generation; the queues must be empty.
    pub fn retire(&mut self, next_generation: u32) {
        debug_assert!(self.read.is_none() && self.write.is_none());
        debug_assert!(
            self.ops == 0 && !self.early,
            "retired with io_uring work left"
        );
        *self = ConnState {
            generation: next_generation,
            ..ConnState::vacant()
        };
    }

    /// The writes queued behind the head (for coalescing into one `writev`);
    /// `None` when there are none, the common case, which costs one check.
    #[inline]
    pub fn queued_writes(&self) -> Option<&VecDeque<Req<C>>> {
        self.spill
            .as_ref()
            .map(|s| &s.writes)
            .filter(|q| !q.is_empty())
    }
}

#[derive(Debug)]
pub(crate) struct Table<C> {
    chunks: Vec<Box<[ConnState<C>]>>,
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
            .filter(|c| c.generation == generation && c.fd.is_some())
    }

    /// The slot, growing the table to hold it.
    pub fn get_or_grow(&mut self, slot: u32) -> &mut ConnState<C> {
        let i = slot as usize;
        while self.chunks.len() <= i / CHUNK {
            self.chunks
                .push((0..CHUNK).map(|_| ConnState::vacant()).collect());
        }
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    /// Every live connection.
    pub fn live(&self, watcher: u32) -> impl Iterator<Item = Conn> + '_ {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .enumerate()
            .filter(|(_, c)| c.fd.is_some())
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
