//! The cross-thread side of a watcher: what it shares with its [`Submitter`]s.
//!
//! Requests made on the watcher's own thread never come here: they go straight
//! into their connection's queue (`Local`). Requests from any other thread travel
//! as [`Cmd`]s through one lock-free `crossbeam_queue::SegQueue`, which keeps the
//! order of pushes that happen-before one another; the watcher applies them at its
//! next turn, and before any request of its own thread whenever some are waiting,
//! so a request that happens-after another is applied after it, whichever thread
//! made either.
//!
//! The park handshake: the watcher sets `parked` before it blocks in the poller
//! and re-checks the queue; a submitter counts its command in `pushed`, then
//! checks `parked`. Both sides use SeqCst on those two variables, so one of them
//! sees the other: either the watcher sees the command and does not block, or the
//! submitter sees the watcher parked and wakes it.
//!
//! [`Submitter`]: crate::Submitter

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crossbeam_queue::SegQueue;
use gaio_sys::{FdKind, Waker};

use crate::conn::Slots;
use crate::req::Req;
use crate::{Conn, Error, Result, Stats};

/// What another thread asks of the watcher.
#[derive(Debug)]
pub(crate) enum Cmd<C> {
    Submit {
        conn: Conn,
        req: Req<C>,
        deadline: Option<Instant>,
    },
    Free(Conn),
    /// Take an fd over; `true`: a nonblocking connect is under way.
    Register(Conn, OwnedFd, FdKind, bool),
    /// Make `wait_io` return, even with an empty batch.
    Wake,
}

static NEXT_WATCHER_ID: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
pub(crate) struct Shared<C> {
    /// Process-unique id, carried in every `Conn`: a `Conn` handed to another
    /// watcher (easy with a pool) is refused instead of reaching a stranger's slot.
    pub id: u32,
    /// `None` once the watcher closed: its fd must not outlive the watcher just
    /// because a `Submitter` is still around. Read-locked only to wake a parked
    /// watcher, which is rare by design.
    waker: RwLock<Option<Waker>>,
    remote: SegQueue<Cmd<C>>,
    /// Commands queued so far (counted after queueing): what the park check and
    /// the watcher's own submissions read.
    pushed: AtomicU64,
    /// Set by the watcher right before it blocks in the poller; whoever swaps it back
    /// to false owes one wake.
    pub parked: AtomicBool,
    pub closed: AtomicBool,
    pub slots: Slots,
    pub counts: ConnCounts,
    /// The watcher's figures as of its last batch or park, for other threads.
    published: Published,
}

/// Live-connection count of one watcher, readable from any thread (e.g. by a load
/// balancer). A connection counts from the moment `register` returns its `Conn`
/// until the watcher has processed its `free`.
///
/// ```
/// let w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
/// let counts = w.submitter().conn_counts();
/// assert_eq!(counts.live(), 0);
/// # Ok::<(), gaio_core::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ConnCounts {
    inner: Arc<CountsInner>,
}

#[derive(Debug, Default)]
struct CountsInner {
    opened: AtomicU64,
    closed: AtomicU64,
}

impl ConnCounts {
    /// Connections registered and not yet freed.
    pub fn live(&self) -> usize {
        // Read `closed` first: a concurrent open can only make the result larger.
        let closed = self.inner.closed.load(Ordering::Acquire);
        let opened = self.inner.opened.load(Ordering::Acquire);
        opened.saturating_sub(closed) as usize
    }

    pub(crate) fn opened(&self) {
        self.inner.opened.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn closed(&self, n: u64) {
        self.inner.closed.fetch_add(n, Ordering::Release);
    }
}

/// [`Stats`] in atomics: written only by the watcher's thread, read by anyone.
#[derive(Debug, Default)]
struct Published {
    conns: AtomicUsize,
    pending_reads: AtomicUsize,
    pending_writes: AtomicUsize,
    timers: AtomicUsize,
    completions: AtomicU64,
    freed: AtomicU64,
    syscalls: AtomicU64,
    queued_write_bytes: AtomicUsize,
    unwritable_conns: AtomicUsize,
    lost: AtomicU64,
    uring: AtomicBool,
}

impl<C> Shared<C> {
    pub fn new(waker: Waker) -> Shared<C> {
        let id = NEXT_WATCHER_ID.fetch_add(1, Ordering::Relaxed);
        Shared {
            id,
            waker: RwLock::new(Some(waker)),
            remote: SegQueue::new(),
            pushed: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            slots: Slots::new(id),
            counts: ConnCounts::default(),
            published: Published::default(),
        }
    }

    /// Queues a command from another thread and wakes the watcher if it is parked.
    pub fn push(&self, cmd: Cmd<C>) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::WatcherClosed);
        }
        self.remote.push(cmd);
        // The submitter's half of the park handshake (see the module docs).
        self.pushed.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::AcqRel) {
            let waker = self.waker.read().unwrap_or_else(|e| e.into_inner());
            if let Some(Err(e)) = waker.as_ref().map(Waker::wake) {
                // The command is queued: reporting Err would break "refused or
                // completed, never both". The next wake or poll picks it up.
                tracing::error!(error = %e, "gaio: could not wake the watcher");
            }
        }
        if self.closed.load(Ordering::Acquire) {
            // The watcher closed while we queued: drop what is left (and any fd it
            // carries) now rather than when the last handle goes. The command was
            // accepted — the watcher may even have run it before closing — so this
            // is the "closed with requests pending" case, not a refusal.
            self.discard_queued();
        }
        Ok(())
    }

    /// Whether more commands were queued than the `drained` the watcher has taken:
    /// one atomic load, no lock. A command counts only once it is in the queue, so
    /// a submitter preempted half-way never makes the watcher spin; one taken
    /// before it was counted makes this say no, and its submitter then sees
    /// `parked` and wakes the watcher (a spare wake, never a lost one).
    #[inline]
    pub fn has_queued(&self, drained: u64) -> bool {
        self.pushed.load(Ordering::SeqCst) > drained
    }

    /// The next queued command, in push order.
    pub fn pop(&self) -> Option<Cmd<C>> {
        self.remote.pop()
    }

    /// Commands in the queue now (a bound for one drain, so producers that keep
    /// pushing cannot hold the watcher).
    pub fn queued(&self) -> usize {
        self.remote.len()
    }

    /// Marks the watcher closed and closes the waker's fd.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        *self.waker.write().unwrap_or_else(|e| e.into_inner()) = None;
        self.discard_queued();
    }

    fn discard_queued(&self) {
        while self.remote.pop().is_some() {}
    }

    /// Checks an fd, makes it nonblocking and picks a `Conn` for it. The watcher
    /// adds it to its poller when it installs it. On failure the fd is closed.
    pub fn open(&self, fd: OwnedFd) -> Result<(Conn, OwnedFd, FdKind)> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::WatcherClosed);
        }
        let kind = gaio_sys::fd_kind(fd.as_fd())?;
        if kind == FdKind::Unsupported {
            return Err(Error::Unsupported);
        }
        gaio_sys::set_nonblocking(fd.as_fd(), true)?;
        let conn = self
            .slots
            .alloc()
            .ok_or_else(|| Error::Io(std::io::Error::other("too many connections")))?;
        self.counts.opened();
        Ok((conn, fd, kind))
    }

    /// Makes `st` what [`Submitter::stats`](crate::Submitter::stats) reads.
    /// Relaxed: each figure is a snapshot on its own, as a monitoring read expects.
    pub fn publish(&self, st: &Stats) {
        let p = &self.published;
        p.conns.store(st.conns, Ordering::Relaxed);
        p.pending_reads.store(st.pending_reads, Ordering::Relaxed);
        p.pending_writes.store(st.pending_writes, Ordering::Relaxed);
        p.timers.store(st.timers, Ordering::Relaxed);
        p.completions.store(st.completions, Ordering::Relaxed);
        p.freed.store(st.freed, Ordering::Relaxed);
        p.syscalls.store(st.syscalls, Ordering::Relaxed);
        p.queued_write_bytes
            .store(st.queued_write_bytes, Ordering::Relaxed);
        p.unwritable_conns
            .store(st.unwritable_conns, Ordering::Relaxed);
        p.uring
            .store(st.backend == crate::Backend::IoUring, Ordering::Relaxed);
        p.lost.store(st.lost_completions, Ordering::Relaxed);
    }

    pub fn published(&self) -> Stats {
        let p = &self.published;
        Stats {
            conns: p.conns.load(Ordering::Relaxed),
            pending_reads: p.pending_reads.load(Ordering::Relaxed),
            pending_writes: p.pending_writes.load(Ordering::Relaxed),
            timers: p.timers.load(Ordering::Relaxed),
            completions: p.completions.load(Ordering::Relaxed),
            freed: p.freed.load(Ordering::Relaxed),
            syscalls: p.syscalls.load(Ordering::Relaxed),
            queued_write_bytes: p.queued_write_bytes.load(Ordering::Relaxed),
            unwritable_conns: p.unwritable_conns.load(Ordering::Relaxed),
            backend: if p.uring.load(Ordering::Relaxed) {
                crate::Backend::IoUring
            } else {
                crate::Backend::Epoll
            },
            lost_completions: p.lost.load(Ordering::Relaxed),
        }
    }
}
