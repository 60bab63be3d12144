//! Connection identity: [`Conn`], the poller token it becomes (encoded and decoded
//! here only), and the slot allocator, which hands out slots from any thread and is
//! the one place that retires their generations.

use std::sync::atomic::{AtomicU32, Ordering};

use crossbeam_queue::SegQueue;

/// A registered connection: a slot in the watcher's table and the generation of
/// that slot, so a token for a freed connection can never act on a newer one, plus
/// the watcher's id, so it cannot act on another watcher's connection either.
///
/// ```
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let _client = std::net::TcpStream::connect(listener.local_addr()?)?;
/// let (server, _) = listener.accept()?;
/// let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
/// let conn = w.register(server)?;
/// assert_eq!((conn.slot(), conn.generation()), (0, 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Conn {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
    pub(crate) watcher: u32,
}

impl Conn {
    /// The slot index (dense, reused after `free`): handy to index per-connection
    /// state in the application.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// How many times the slot was freed before this connection took it.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The process-unique id of the watcher it belongs to
    /// ([`Submitter::id`](crate::Submitter::id)): how a pool finds a
    /// connection's owner.
    pub fn watcher(&self) -> u32 {
        self.watcher
    }
}

/// The poller token of the waker's events; connection tokens never reach it
/// because a slot index is below `u32::MAX`.
pub(crate) const WAKE_TOKEN: u64 = u64::MAX;

/// What a poller event names: a slot and the generation it was registered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub slot: u32,
    pub generation: u32,
}

impl Token {
    pub fn of(conn: Conn) -> Token {
        Token {
            slot: conn.slot,
            generation: conn.generation,
        }
    }

    /// As a poller token.
    pub fn encode(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.slot)
    }

    pub fn decode(token: u64) -> Token {
        Token {
            slot: token as u32,
            generation: (token >> 32) as u32,
        }
    }

    /// Whether an event under this token is for the slot's connection of
    /// `generation`. Drivers may carry only its low 16 bits (io_uring user
    /// data has no room for more); a slot is never reused 65,536 times while
    /// an event for it waits.
    #[inline]
    pub fn is_for(self, generation: u32) -> bool {
        (self.generation ^ generation) & 0xffff == 0
    }
}

/// Hands out slots (from any thread: `Submitter::register` returns a `Conn` at
/// once) and takes them back with their next generation.
#[derive(Debug)]
pub(crate) struct Slots {
    watcher: u32,
    next: AtomicU32,
    free: SegQueue<Conn>,
}

impl Slots {
    pub fn new(watcher: u32) -> Slots {
        Slots {
            watcher,
            next: AtomicU32::new(0),
            free: SegQueue::new(),
        }
    }

    /// A slot nobody uses, with the generation it must be installed with; `None`
    /// when all 2^32 - 1 are taken.
    pub fn alloc(&self) -> Option<Conn> {
        let conn = self.free.pop().unwrap_or_else(|| Conn {
            slot: self.next.fetch_add(1, Ordering::Relaxed),
            generation: 0,
            watcher: self.watcher,
        });
        (conn.slot != u32::MAX).then_some(conn)
    }

    /// Retires `conn`'s generation and puts the slot back; returns the generation
    /// its next user gets, which the table stores so `conn` stays stale for good.
    pub fn release(&self, conn: Conn) -> u32 {
        let next = conn.generation.wrapping_add(1);
        self.free.push(Conn {
            generation: next,
            ..conn
        });
        next
    }
}
