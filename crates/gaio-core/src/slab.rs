//! Connection slots, stored in fixed-size chunks: growing never moves a slot (no
//! realloc copy of a 10k-connection table in the middle of a batch) and memory grows
//! by one chunk at a time instead of doubling.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

use gaio_sys::FdKind;

use crate::submit::Req;

const CHUNK: usize = 256;

/// Readiness cached from edge-triggered events (and cleared on `WouldBlock`).
pub(crate) const READABLE: u8 = 1;
pub(crate) const WRITABLE: u8 = 2;
/// The fd is a socket: write with `send` (no SIGPIPE), else `write`.
pub(crate) const SOCKET: u8 = 4;
/// The slot is on the list of connections waiting for swap-buffer space.
pub(crate) const SWAP_WAIT: u8 = 8;
/// The slot got new requests in the command batch being applied: its queues run
/// once the whole batch is in, so a burst of writes leaves in one `writev`.
pub(crate) const DIRTY: u8 = 16;
/// The peer hung up or reset: reads continue until they see EOF or the error, even
/// after a short read (which would otherwise clear `READABLE`).
pub(crate) const HUP: u8 = 32;

/// Requests beyond the first of each direction.
#[derive(Debug)]
pub(crate) struct Spill<C> {
    pub reads: VecDeque<Req<C>>,
    pub writes: VecDeque<Req<C>>,
}

#[derive(Debug)]
pub(crate) struct Slot<C> {
    pub fd: Option<OwnedFd>,
    pub generation: u32,
    pub flags: u8,
    pub read: Option<Req<C>>,
    pub write: Option<Req<C>>,
    pub spill: Option<Box<Spill<C>>>,
}

impl<C> Slot<C> {
    fn vacant() -> Slot<C> {
        Slot {
            fd: None,
            generation: 0,
            flags: 0,
            read: None,
            write: None,
            spill: None,
        }
    }

    pub fn install(&mut self, fd: OwnedFd, kind: FdKind) {
        debug_assert!(self.fd.is_none() && self.read.is_none() && self.write.is_none());
        self.fd = Some(fd);
        // An edge may have fired before the watcher saw this slot; assume ready and
        // let the first attempt find out (WouldBlock clears the flag).
        self.flags = READABLE | WRITABLE | if kind == FdKind::Socket { SOCKET } else { 0 };
    }

    pub fn spill(&mut self) -> &mut Spill<C> {
        self.spill.get_or_insert_with(|| {
            Box::new(Spill {
                reads: VecDeque::new(),
                writes: VecDeque::new(),
            })
        })
    }

    pub fn queued_reads(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.reads.len())
    }

    pub fn queued_writes(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.writes.len())
    }

    /// Replaces the finished read head with the next queued read.
    pub fn next_read(&mut self) -> Option<Req<C>> {
        let next = self.spill.as_mut().and_then(|s| s.reads.pop_front());
        std::mem::replace(&mut self.read, next)
    }

    /// Replaces the finished write head with the next queued write.
    pub fn next_write(&mut self) -> Option<Req<C>> {
        let next = self.spill.as_mut().and_then(|s| s.writes.pop_front());
        std::mem::replace(&mut self.write, next)
    }
}

#[derive(Debug)]
pub(crate) struct Slab<C> {
    chunks: Vec<Box<[Slot<C>]>>,
}

impl<C> Slab<C> {
    pub fn new() -> Slab<C> {
        Slab { chunks: Vec::new() }
    }

    pub fn get_mut(&mut self, slot: u32) -> Option<&mut Slot<C>> {
        let i = slot as usize;
        self.chunks.get_mut(i / CHUNK).map(|c| &mut c[i % CHUNK])
    }

    /// The slot, growing the table to hold it.
    pub fn get_or_grow(&mut self, slot: u32) -> &mut Slot<C> {
        let i = slot as usize;
        while self.chunks.len() <= i / CHUNK {
            self.chunks
                .push((0..CHUNK).map(|_| Slot::vacant()).collect());
        }
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &Slot<C>)> {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .enumerate()
            .map(|(i, s)| (i as u32, s))
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
    }
}
