//! The completion driver: Linux io_uring. The engine's transfers are submitted
//! as operations (SQEs) instead of attempted; their results come back as
//! completions (CQEs), reaped in batches by one `io_uring_enter` that also
//! submits what the turn queued and waits.
//!
//! What it relies on, all checked when the watcher is built (a missing piece
//! makes `Backend::Auto` fall back to epoll, and `Backend::IoUring` fail):
//!
//! * `IORING_SETUP_SINGLE_ISSUER` + `DEFER_TASKRUN` (6.1): completions are
//!   processed only when the watcher's thread asks, in its own `io_uring_enter`,
//!   so a batch is not interrupted by task work. The ring is created disabled
//!   and enabled by the first `wait_io`, so the thread that drives the watcher
//!   is its issuer.
//! * a provided-buffer ring (5.19): each swap-buffer receive takes one buffer.
//!   (Incremental consumption, 6.12, would pack small receives into one buffer,
//!   but the kernel may post the completions of two receives into one buffer
//!   in another order than it filled them, so their bytes cannot be located.)
//! * multishot receive (6.0) and accept (5.19), cancel by fd (5.19),
//!   `IORING_FEAT_EXT_ARG` (5.11) for the wait timeout, `SUBMIT_STABLE` (5.5),
//!   so the iovec arrays of coalesced writes only live until submission.
//!
//! The kernel writes into memory the engine lends it (owned read buffers, the
//! buffer ring); the engine keeps each buffer alive and unmoved until the
//! operation's final completion. That contract is why this module and the
//! engine's completion half are the only places in gaio-core with `unsafe`.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::types::{BufRingEntry, CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

/// The operations a connection can have in flight, one bit each (at most one
/// of each kind at a time): what `ConnState::ops` holds.
pub(crate) mod op {
    /// A one-shot read: into a request's own buffer, or (not a socket) into
    /// the buffer ring.
    pub const RECV: u8 = 1;
    /// A multishot receive into the buffer ring (swap-buffer reads).
    pub const MULTI: u8 = 2;
    /// A multishot accept.
    pub const ACCEPT: u8 = 4;
    /// Waits for readability after a read found nothing (`EAGAIN`).
    pub const POLL_IN: u8 = 8;
    /// A write, possibly of several queued writes at once.
    pub const WRITE: u8 = 16;
    /// Waits for writability: a connect finishing, or a write that found no room.
    pub const POLL_OUT: u8 = 32;
    /// Every operation of the read side.
    pub const READS: u8 = RECV | MULTI | ACCEPT | POLL_IN;
    /// Every operation of the write side.
    pub const WRITES: u8 = WRITE | POLL_OUT;
    /// Operations that end with several completions (the last has no `MORE`).
    pub const MULTISHOT: u8 = MULTI | ACCEPT;
}

/// Tags of completions that belong to no connection.
const WAKE: u8 = 0x80;
const CANCEL: u8 = 0x40;

/// A completion's user data: the operation, and the connection's slot and the
/// low 24 bits of its generation (a check: a slot is never reused while an
/// operation on it is in flight).
pub(crate) fn user_data(tag: u8, slot: u32, generation: u32) -> u64 {
    (u64::from(tag) << 56) | (u64::from(generation & 0x00ff_ffff) << 32) | u64::from(slot)
}

/// One completion, copied out of the completion queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cqe {
    pub tag: u8,
    pub slot: u32,
    pub generation: u32,
    pub res: i32,
    pub flags: u32,
}

impl Cqe {
    fn of(e: &cqueue::Entry) -> Cqe {
        let d = e.user_data();
        Cqe {
            tag: (d >> 56) as u8,
            slot: d as u32,
            generation: ((d >> 32) & 0x00ff_ffff) as u32,
            res: e.result(),
            flags: e.flags(),
        }
    }

    /// The generation the operation was submitted under matches `generation`.
    pub fn is_for(&self, generation: u32) -> bool {
        self.generation == generation & 0x00ff_ffff
    }

    /// The operation ends with this completion.
    pub fn is_last(&self) -> bool {
        self.tag & op::MULTISHOT == 0 || !cqueue::more(self.flags)
    }

    /// The buffer ring's buffer this completion filled, if any.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

// From the kernel's io_uring.h (the io-uring crate keeps its `sys` private).
/// `io_uring_enter`: reap (and with `DEFER_TASKRUN`, run) completions.
const IORING_ENTER_GETEVENTS: u32 = 1;

/// The buffer group id of the watcher's buffer ring.
const GROUP: u16 = 0;

/// The swap buffer of io_uring: `count` buffers of `len` bytes the kernel
/// takes one per receive, and the ring that lends them.
#[derive(Debug)]
struct BufRing {
    /// The ring of `count` entries the kernel takes buffers from (page aligned).
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    /// The buffers, `count * len` bytes; only ever reached through raw pointers
    /// (the kernel writes into it while completions read other parts).
    mem: *mut u8,
    mem_layout: Layout,
    count: u16,
    len: u32,
    tail: u16,
    /// Buffers the kernel is done with: lent again once the batch that
    /// references their bytes is over.
    returned: Vec<u16>,
    /// The kernel may still write into the memory: never free it.
    leak: bool,
}

impl BufRing {
    fn new(count: u16, len: u32) -> io::Result<BufRing> {
        assert!(count.is_power_of_two() && len > 0);
        let entries_layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        // No alignment asked for: `alloc_zeroed` is then `calloc`, which maps
        // fresh zero pages lazily instead of writing every byte (as it does for
        // an over-aligned layout), so the ring is resident only as receives use it.
        let mem_layout =
            Layout::array::<u8>(usize::from(count) * len as usize).map_err(io::Error::other)?;
        // SAFETY: both layouts have a nonzero size (count and len are nonzero).
        let (entries, mem) = unsafe { (alloc_zeroed(entries_layout), alloc_zeroed(mem_layout)) };
        if entries.is_null() || mem.is_null() {
            // SAFETY: whichever was allocated was allocated with its layout.
            unsafe {
                if !entries.is_null() {
                    dealloc(entries, entries_layout);
                }
                if !mem.is_null() {
                    dealloc(mem, mem_layout);
                }
            }
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let mut ring = BufRing {
            entries: entries.cast(),
            entries_layout,
            mem,
            mem_layout,
            count,
            len,
            tail: 0,
            leak: false,
            returned: Vec::with_capacity(usize::from(count)),
        };
        for bid in 0..count {
            ring.lend(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// Puts buffer `bid` at the ring's tail (visible to the kernel at `publish`).
    fn lend(&mut self, bid: u16) {
        let i = usize::from(self.tail & (self.count - 1));
        // SAFETY: `i < count`, the ring's length; the kernel reads entries only
        // between head and the published tail, and this one is past the tail.
        let e = unsafe { &mut *self.entries.add(i) };
        // SAFETY: `bid < count`, so the buffer lies inside `mem`.
        e.set_addr(unsafe { self.mem.add(usize::from(bid) * self.len as usize) } as u64);
        e.set_len(self.len);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field overlays the first entry's reserved field, and
        // the kernel reads it with acquire ordering.
        unsafe {
            let tail = BufRingEntry::tail(self.entries).cast_mut();
            (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release);
        }
    }

    /// The kernel filled `bid` and handed it back: returns where its bytes
    /// start in `mem`; it is lent again by the next `recycle`.
    fn filled(&mut self, bid: u16) -> usize {
        self.returned.push(bid);
        usize::from(bid) * self.len as usize
    }

    /// Lends again every buffer handed back so far.
    fn recycle(&mut self) -> bool {
        if self.returned.is_empty() {
            return false;
        }
        let mut returned = std::mem::take(&mut self.returned);
        for &bid in &returned {
            self.lend(bid);
        }
        returned.clear();
        self.returned = returned;
        self.publish();
        true
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leak {
            return;
        }
        // SAFETY: allocated in `new` with these layouts; the ring that used them
        // is gone (the driver drops the ring first).
        unsafe {
            dealloc(self.entries.cast(), self.entries_layout);
            dealloc(self.mem, self.mem_layout);
        }
    }
}

/// The iovecs (and, for a socket, the message header) of one coalesced write.
/// They must stay put until the SQE is submitted (`SUBMIT_STABLE`: not longer).
#[derive(Debug)]
struct IovBlock {
    msg: libc::msghdr,
    iov: [libc::iovec; gaio_sys::IOV_MAX],
}

/// Settings of the ring.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub entries: u32,
    pub buffers: u16,
    pub buffer_len: u32,
}

pub(crate) struct Driver {
    // Dropped first: the ring's exit cancels everything before the memory it
    // used goes.
    ring: IoUring,
    bufs: BufRing,
    /// SQEs that found the submission queue full, submitted at the next enter
    /// (so nothing but `wait_io` enters the ring, on the issuer thread).
    backlog: Vec<squeue::Entry>,
    /// Boxed: an SQE points into a block, which must not move when more are added.
    #[allow(clippy::vec_box)]
    blocks: Vec<Box<IovBlock>>,
    blocks_used: usize,
    /// The waker's eventfd, polled (multishot) so a cross-thread wake is a
    /// completion. The waker outlives every wait: it closes with the watcher.
    wake: RawFd,
    wake_armed: bool,
    /// The thread that enabled the ring (its first wait): the only one that may
    /// enter it (`SINGLE_ISSUER`).
    issuer: Option<std::thread::ThreadId>,
    /// Operations submitted whose last completion has not arrived.
    pub inflight: usize,
    pub syscalls: u64,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("uring::Driver")
            .field("bufs", &self.bufs)
            .field("backlog", &self.backlog.len())
            .field("inflight", &self.inflight)
            .field("syscalls", &self.syscalls)
            .finish_non_exhaustive()
    }
}

// SAFETY: the raw pointers are the driver's own allocations (buffer ring,
// iovec blocks), used only by the thread that owns the driver; nothing is
// shared with another thread but the kernel.
unsafe impl Send for Driver {}

impl Driver {
    /// Sets up the ring and its buffer ring; any missing feature is an error
    /// (`Unsupported` kind), for `Backend::Auto` to fall back on.
    pub fn new(cfg: Config, waker: &gaio_sys::Waker) -> io::Result<Driver> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_r_disabled()
            .setup_cqsize(cfg.entries * 4)
            .build(cfg.entries)?;
        let p = ring.params();
        if !(p.is_feature_ext_arg() && p.is_feature_submit_stable() && p.is_feature_nodrop()) {
            return Err(unsupported(
                "io_uring lacks EXT_ARG, SUBMIT_STABLE or NODROP",
            ));
        }
        let bufs = BufRing::new(cfg.buffers, cfg.buffer_len)?;
        // SAFETY: the ring entries stay allocated until `bufs` drops, after `ring`.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(bufs.entries as u64, bufs.count, GROUP, 0)
        }
        .map_err(|e| unsupported(&format!("no provided-buffer ring: {e}")))?;
        Ok(Driver {
            ring,
            bufs,
            backlog: Vec::new(),
            blocks: Vec::new(),
            blocks_used: 0,
            wake: waker.as_fd().as_raw_fd(),
            wake_armed: false,
            issuer: None,
            inflight: 0,
            syscalls: 1,
        })
    }

    /// Where the buffer ring's bytes start (completions borrow from there).
    pub fn ring_mem(&self) -> *const u8 {
        self.bufs.mem
    }

    /// A completion filled `bid`: returns the offset of its bytes from
    /// [`ring_mem`](Self::ring_mem); the buffer is lent again at the next
    /// [`recycle`](Self::recycle).
    pub fn filled(&mut self, bid: u16) -> usize {
        self.bufs.filled(bid)
    }

    /// Lends the kernel again the buffers of batches that are over; whether any.
    pub fn recycle(&mut self) -> bool {
        self.bufs.recycle()
    }

    /// Operations queued and not yet submitted.
    #[inline]
    pub fn has_unsubmitted(&mut self) -> bool {
        !self.backlog.is_empty() || !self.ring.submission().is_empty()
    }

    /// Queues an operation.
    #[inline]
    pub fn push(&mut self, sqe: squeue::Entry) {
        self.inflight += 1;
        self.push_raw(sqe);
    }

    #[inline]
    fn push_raw(&mut self, sqe: squeue::Entry) {
        if !self.backlog.is_empty() {
            self.backlog.push(sqe);
            return;
        }
        // SAFETY: every SQE the engine builds points at memory it keeps alive
        // until the operation's last completion (see the module docs).
        if unsafe { self.ring.submission().push(&sqe) }.is_err() {
            self.backlog.push(sqe);
        }
    }

    /// Queues a cancellation of every operation on `fd`.
    pub fn cancel_fd(&mut self, fd: RawFd) {
        let sqe = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all())
            .build()
            .user_data(user_data(CANCEL, 0, 0));
        self.push_raw(sqe);
    }

    /// Queues a cancellation of the operation submitted with `data`.
    pub fn cancel_op(&mut self, data: u64) {
        let sqe = opcode::AsyncCancel2::new(CancelBuilder::user_data(data))
            .build()
            .user_data(user_data(CANCEL, 0, 0));
        self.push_raw(sqe);
    }

    /// Queues a cancellation of every operation of the ring.
    pub fn cancel_all(&mut self) {
        let sqe = opcode::AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(user_data(CANCEL, 0, 0));
        self.push_raw(sqe);
    }

    /// A multishot receive into the buffer ring.
    pub fn recv_multi(&mut self, fd: RawFd, data: u64) {
        self.push(
            opcode::RecvMulti::new(Fd(fd), GROUP)
                .build()
                .user_data(data),
        );
    }

    /// A one-shot read into the buffer ring (for what is not a socket).
    pub fn read_select(&mut self, fd: RawFd, data: u64) {
        self.push(
            opcode::Read::new(Fd(fd), std::ptr::null_mut(), self.bufs.len)
                .offset(u64::MAX)
                .buf_group(GROUP)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
                .user_data(data),
        );
    }

    /// A one-shot read into `len` bytes at `buf`.
    ///
    /// # Safety
    /// `buf..buf + len` stays valid for writes, and is not otherwise accessed,
    /// until the operation's completion.
    pub unsafe fn read(&mut self, fd: RawFd, socket: bool, buf: *mut u8, len: u32, data: u64) {
        let sqe = if socket {
            opcode::Recv::new(Fd(fd), buf, len).build()
        } else {
            opcode::Read::new(Fd(fd), buf, len).offset(u64::MAX).build()
        };
        self.push(sqe.user_data(data));
    }

    /// A write of `bufs` in order (`send` with `MSG_NOSIGNAL` on a socket).
    ///
    /// # Safety
    /// The bytes of every slice stay valid and unchanged until the operation's
    /// completion.
    pub unsafe fn write(&mut self, fd: RawFd, socket: bool, bufs: &[&[u8]], data: u64) {
        let sqe = match (bufs, socket) {
            ([one], true) => opcode::Send::new(Fd(fd), one.as_ptr(), one.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build(),
            ([one], false) => opcode::Write::new(Fd(fd), one.as_ptr(), one.len() as u32)
                .offset(u64::MAX)
                .build(),
            (many, socket) => {
                let b = self.block();
                for (v, s) in b.iov.iter_mut().zip(many) {
                    *v = libc::iovec {
                        iov_base: s.as_ptr().cast_mut().cast(),
                        iov_len: s.len(),
                    };
                }
                let n = many.len().min(b.iov.len());
                if socket {
                    // SAFETY: msghdr is plain data; all-zeroes is "no address, no
                    // control data".
                    b.msg = unsafe { std::mem::zeroed() };
                    b.msg.msg_iov = b.iov.as_mut_ptr();
                    b.msg.msg_iovlen = n as _;
                    opcode::SendMsg::new(Fd(fd), &raw const b.msg)
                        .flags(libc::MSG_NOSIGNAL as u32)
                        .build()
                } else {
                    opcode::Writev::new(Fd(fd), b.iov.as_ptr(), n as u32)
                        .offset(u64::MAX)
                        .build()
                }
            }
        };
        self.push(sqe.user_data(data));
    }

    /// A multishot accept (new sockets nonblocking and close-on-exec).
    pub fn accept_multi(&mut self, fd: RawFd, data: u64) {
        self.push(
            opcode::AcceptMulti::new(Fd(fd))
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                .build()
                .user_data(data),
        );
    }

    /// A one-shot poll for readability (`out`: writability).
    pub fn poll(&mut self, fd: RawFd, out: bool, data: u64) {
        let events = if out { libc::POLLOUT } else { libc::POLLIN };
        self.push(
            opcode::PollAdd::new(Fd(fd), events as u32)
                .build()
                .user_data(data),
        );
    }

    /// An iovec block that lives until the next submission.
    fn block(&mut self) -> &mut IovBlock {
        if self.blocks_used == self.blocks.len() {
            self.blocks.push(Box::new(IovBlock {
                // SAFETY: plain data; all-zeroes is valid for both.
                msg: unsafe { std::mem::zeroed() },
                // SAFETY: as above.
                iov: unsafe { std::mem::zeroed() },
            }));
        }
        self.blocks_used += 1;
        &mut self.blocks[self.blocks_used - 1]
    }

    /// Submits what was queued and reaps completions into `out`, waiting for at
    /// least one for up to `timeout` (`None`: until one comes; zero: no wait),
    /// unless `out` holds completions not dispatched yet. Returns whether a
    /// completion other than a wake arrived.
    pub fn enter(&mut self, timeout: Option<Duration>, out: &mut Vec<Cqe>) -> io::Result<bool> {
        let pending = out.iter().any(|e| e.tag != 0);
        self.enter_inner(timeout, out, pending)
    }

    /// Submits what was queued and waits for at least one new completion,
    /// appended to `out` (what is in `out` already does not count).
    pub fn wait_more(&mut self, out: &mut Vec<Cqe>) -> io::Result<()> {
        self.enter_inner(None, out, false).map(drop)
    }

    fn enter_inner(
        &mut self,
        timeout: Option<Duration>,
        out: &mut Vec<Cqe>,
        pending: bool,
    ) -> io::Result<bool> {
        match self.issuer {
            None => {
                // The thread that first waits is the ring's one issuer.
                self.ring.submitter().register_enable_rings()?;
                self.syscalls += 1;
                self.issuer = Some(std::thread::current().id());
            }
            Some(t) if t != std::thread::current().id() => return Err(wrong_thread()),
            Some(_) => {}
        }
        if !self.wake_armed {
            self.wake_armed = true;
            let sqe = opcode::PollAdd::new(Fd(self.wake), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(user_data(WAKE, 0, 0));
            self.push_raw(sqe);
        }
        // Whatever did not fit the submission queue goes in as room frees up.
        while !self.backlog.is_empty() {
            let mut sq = self.ring.submission();
            let room = sq.capacity() - sq.len();
            let n = room.min(self.backlog.len());
            // SAFETY: as in `push`.
            unsafe { sq.push_multiple(&self.backlog[..n]) }.expect("room was checked");
            drop(sq);
            self.backlog.drain(..n);
            if !self.backlog.is_empty() {
                self.submit(0, None)?;
                self.reap(out);
            } else if self.backlog.capacity() > 256 {
                // A burst (thousands of connections at once) is over.
                self.backlog = Vec::new();
            }
        }
        let want = match timeout {
            Some(d) if d.is_zero() => 0,
            _ => 1,
        };
        let ts;
        let ts_ref = match timeout {
            Some(d) if !d.is_zero() => {
                ts = Timespec::from(d);
                Some(&ts)
            }
            _ => None,
        };
        // Completions already waiting (in the queue, or reaped by a cancellation
        // and not dispatched yet) need no sleep.
        let want = if pending || !self.ring.completion().is_empty() {
            0
        } else {
            want
        };
        self.submit(want, ts_ref)?;
        if self.backlog.is_empty() && self.ring.submission().is_empty() {
            // Every SQE that pointed into a block is consumed (`EAGAIN` or
            // `EBUSY` from the enter may leave some in the queue).
            self.blocks_used = 0;
        }
        Ok(self.reap(out) || pending)
    }

    fn submit(&mut self, want: usize, ts: Option<&Timespec>) -> io::Result<()> {
        self.syscalls += 1;
        let res = match ts {
            Some(ts) => self
                .ring
                .submitter()
                .submit_with_args(want, &SubmitArgs::new().timespec(ts)),
            None => {
                let n = self.ring.submission().len() as u32;
                // SAFETY: no argument is passed; flags are plain GETEVENTS.
                unsafe {
                    self.ring.submitter().enter::<libc::sigset_t>(
                        n,
                        want as u32,
                        IORING_ENTER_GETEVENTS,
                        None,
                    )
                }
            }
        };
        match res {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                // Timed out, interrupted, or completions to reap first.
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => Ok(()),
                Some(libc::EEXIST) => Err(wrong_thread()),
                _ => Err(e),
            },
        }
    }

    /// Copies the completion queue out; whether any belongs to a connection.
    fn reap(&mut self, out: &mut Vec<Cqe>) -> bool {
        let mut any = false;
        for e in self.ring.completion() {
            let cqe = Cqe::of(&e);
            match cqe.tag {
                WAKE => {
                    if !cqueue::more(cqe.flags) {
                        self.wake_armed = false;
                    }
                }
                CANCEL => {}
                _ => {
                    if cqe.is_last() {
                        self.inflight -= 1;
                    }
                    any = true;
                    out.push(cqe);
                }
            }
        }
        any
    }
}

impl Driver {
    /// Keeps the buffer ring's memory allocated for good (see `Engine::abandon`).
    pub fn leak_on_drop(&mut self) {
        self.bufs.leak = true;
    }

    /// Whether the calling thread may enter the ring (it is the issuer, or
    /// there is none yet).
    pub fn on_issuer(&self) -> bool {
        self.issuer.is_none_or(|t| t == std::thread::current().id())
    }
}

pub(crate) fn wrong_thread() -> io::Error {
    io::Error::other(
        "an io_uring watcher is driven by one thread, the one that first waited on it; \
         this is another",
    )
}

fn unsupported(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, what.to_string())
}
