//! Linux io_uring, fenced: ring setup and feature probing, operations whose
//! buffers the ring owns while the kernel may touch them, enter with a timeout,
//! reaping, and the provided-buffer ring with a borrow-bound accessor.
//!
//! # The buffer contract, in one place
//!
//! The kernel reads from or writes into memory named by a submission until the
//! operation's last completion. Every operation here that names memory takes
//! that memory by value ([`Buf`]) and keeps it in the ring's in-flight table
//! until the last completion arrives; [`Ring::reclaim`] hands it back after
//! that, never before. Cancelling ([`Ring::cancel`]) only asks the kernel to
//! end the operation early: it returns at once, and the buffer comes back with
//! the completion. A ring dropped with operations in flight cancels them and
//! waits; if it cannot (another thread, a failing enter), it leaks their
//! buffers and the buffer ring rather than free memory the kernel may write.
//!
//! Receives into the provided-buffer ring ([`Ring::recv_select`]) name no
//! memory of the caller: the kernel picks a buffer of [`Buffers`] and says
//! which in the completion. Its bytes are read with [`Buffers::bytes`], a
//! shared borrow; lending buffers again ([`Buffers::recycle`]) takes `&mut`,
//! so no borrow of a buffer's bytes outlives the moment the kernel may write it
//! again. A buffer the caller keeps ([`Buffers::take`], say as the source of a
//! send in flight) is passed over by `recycle` until [`Buffers::give_back`].
//!
//! A program that drives an io_uring of its own (operations [`Ring`] does not
//! offer) can still use [`Buffers`]: [`Buffers::register`] registers them on
//! that ring. It is `unsafe` because there the ring is the caller's, and so is
//! the duty to keep the buffers until the kernel is done with them, which
//! [`Ring`] otherwise carries.
//!
//! File descriptors are passed as [`BorrowedFd`] and used by the kernel when
//! the submission is consumed: the caller keeps an fd open until every
//! operation on it has completed (as with any readiness registration). The
//! operations cancel by user data, never by fd number.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::types::{BufRingEntry, CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, Submitter, cqueue, opcode, squeue};

use crate::IOV_MAX;

/// `io_uring_enter`: reap (and with `DEFER_TASKRUN`, run) completions (the
/// io-uring crate keeps its `sys` private).
const IORING_ENTER_GETEVENTS: u32 = 1;

/// The buffer group id of the provided-buffer ring.
const GROUP: u16 = 0;

/// User data of completions that belong to no operation of the caller.
const WAKE_DATA: u64 = u64::MAX;
const CANCEL_DATA: u64 = u64::MAX - 1;
/// Bit 63 of user data: the rest is an index into the in-flight table.
const TABLE_BIT: u64 = 1 << 63;
/// Bit 62 of user data: an accept (its result is a new fd).
const ACCEPT_BIT: u64 = 1 << 62;
/// The bits of user data the caller's value keeps (the top two are the ring's).
const USER_MASK: u64 = (1 << 62) - 1;

/// An operation that lent buffers, for [`Ring::cancel_op`]: valid until its
/// completion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpId(u32);

impl OpId {
    /// As a number, to keep in less room.
    pub fn index(self) -> u32 {
        self.0
    }

    /// Back from [`index`](Self::index). Cancelling an id that names no
    /// operation in flight (or another one) is harmless but for that one.
    pub fn from_index(i: u32) -> OpId {
        OpId(i)
    }
}

/// Settings of a ring.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Submission queue entries (the completion queue gets four times as many).
    pub entries: u32,
    /// Buffers of the provided-buffer ring: a power of two.
    pub buffers: u16,
    /// Bytes per provided buffer (one receive takes at most one buffer).
    pub buffer_len: u32,
}

// User data: the caller's value in the low 62 bits; the top two are the ring's.

/// Memory an operation lends the kernel, owned by the ring until the
/// operation's last completion.
#[derive(Debug)]
pub enum Buf {
    /// An owned buffer: reads land in `[off..]`, writes send `[off..]`.
    Vec(Vec<u8>),
    /// A shared, immutable buffer (writes only).
    Shared(Arc<[u8]>),
}

impl Buf {
    fn bytes(&self) -> &[u8] {
        match self {
            Buf::Vec(v) => v,
            Buf::Shared(b) => b,
        }
    }
}

/// One completion, copied out of the completion queue. Not `Clone`: an
/// accepted fd in it is taken once.
#[derive(Debug)]
pub struct Cqe {
    /// The user data the operation was submitted with.
    pub user: u64,
    /// The result: bytes moved, an fd (accept), or `-errno`.
    pub res: i32,
    flags: u32,
    /// In-flight table index, for operations that lent buffers.
    entry: Option<u32>,
    /// An accept's completion: `res` is a new fd until taken.
    accept: bool,
}

impl Cqe {
    /// The provided buffer this receive filled, if any.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }

    /// Whether buffers lent by the operation wait in [`Ring::reclaim`].
    pub fn has_buffers(&self) -> bool {
        self.entry.is_some()
    }

    /// The error of a failed operation.
    pub fn error(&self) -> Option<io::Error> {
        (self.res < 0).then(|| io::Error::from_raw_os_error(-self.res))
    }

    /// Takes the connection a successful [`Ring::accept`] created (the
    /// completion's `res` becomes `-EBADF`, so it is taken once). `None` for
    /// other operations, a failed accept, or one taken already.
    pub fn take_accepted(&mut self) -> Option<OwnedFd> {
        if !self.accept || self.res < 0 {
            return None;
        }
        let fd = std::mem::replace(&mut self.res, -libc::EBADF);
        // SAFETY: a successful accept's result (`accept` is set only for those)
        // is a new fd the kernel created for this completion, which nobody else
        // owns; `res` no longer names it, and `Cqe` is not `Clone`, so it is
        // taken at most once.
        Some(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// One operation that lent buffers: the caller's user data and the buffers,
/// the first inline (the common case: one buffer per operation).
#[derive(Debug, Default)]
struct Entry {
    user: u64,
    first: Option<(Buf, usize)>,
    more: Vec<(Buf, usize)>,
}

/// The iovecs (and, for a socket, the message header) of one vectored write:
/// they stay put until the submission is consumed (`SUBMIT_STABLE`).
struct IovBlock {
    msg: libc::msghdr,
    iov: [libc::iovec; IOV_MAX],
}

/// The memory of the provided-buffer ring: the ring of entries the kernel takes
/// buffers from, and the buffers. Held by [`Buffers`] (read by the application)
/// and, for gaio's own ring, by [`Ring`] too, which lets go of it only once the
/// kernel is done with it; freed when all are gone, unless leaked because the
/// kernel may still write into it.
#[derive(Debug)]
struct BufMem {
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    mem: *mut u8,
    mem_layout: Layout,
    count: u16,
    len: u32,
}

// SAFETY: the pointers are this struct's own heap allocations, tied to no
// thread; `Buffers` (the only writer, through `&mut`) and the kernel are the
// only users, and the kernel's use does not depend on which thread holds them.
unsafe impl Send for BufMem {}
// SAFETY: shared access only reads buffer bytes the kernel is done with
// (`Buffers::bytes`) or the immutable layout fields.
unsafe impl Sync for BufMem {}

impl BufMem {
    fn new(count: u16, len: u32) -> io::Result<BufMem> {
        if !count.is_power_of_two() || len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "provided buffers: a power-of-two count of nonempty buffers",
            ));
        }
        let entries_layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        // No alignment asked for: `alloc_zeroed` is then `calloc`, which maps
        // zero pages lazily, so the buffers are resident only as receives use them.
        let mem_layout =
            Layout::array::<u8>(usize::from(count) * len as usize).map_err(io::Error::other)?;
        // SAFETY: both layouts have a nonzero size (count and len are nonzero).
        let (entries, mem) = unsafe { (alloc_zeroed(entries_layout), alloc_zeroed(mem_layout)) };
        let m = BufMem {
            entries: entries.cast(),
            entries_layout,
            mem,
            mem_layout,
            count,
            len,
        };
        if entries.is_null() || mem.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into()); // `m` frees what was allocated
        }
        Ok(m)
    }
}

impl Drop for BufMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts (null where that failed);
        // the last owner drops it only once the kernel is done with it (a ring
        // that cannot prove so leaks its reference).
        unsafe {
            if !self.entries.is_null() {
                dealloc(self.entries.cast(), self.entries_layout);
            }
            if !self.mem.is_null() {
                dealloc(self.mem, self.mem_layout);
            }
        }
    }
}

/// Where one provided buffer is, as [`Buffers`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BufState {
    /// Lent to the kernel: it may write into it.
    Lent,
    /// Handed back and waiting for the next [`Buffers::recycle`].
    Returned,
    /// Handed back and kept by the caller ([`Buffers::take`]) until
    /// [`Buffers::give_back`].
    Kept,
}

/// The provided-buffer ring's buffers, on the application's side: which the
/// kernel handed back (their bytes readable) and lending them again.
///
/// A buffer the kernel handed back is either *returned* ([`filled`](Self::filled)):
/// readable until the next [`recycle`](Self::recycle), which lends it again;
/// or *kept* ([`take`](Self::take)): readable, and passed over by `recycle`,
/// until [`give_back`](Self::give_back) makes it returned.
#[derive(Debug)]
pub struct Buffers {
    mem: Arc<BufMem>,
    tail: u16,
    /// Per buffer: where it is.
    state: Vec<BufState>,
    /// Buffers returned, lent again at the next `recycle`.
    returned: Vec<u16>,
}

impl Buffers {
    fn new(mem: Arc<BufMem>) -> Buffers {
        let count = mem.count;
        let mut b = Buffers {
            mem,
            tail: 0,
            state: vec![BufState::Lent; usize::from(count)],
            returned: Vec::with_capacity(usize::from(count)),
        };
        for bid in 0..count {
            b.lend(bid);
        }
        b.publish();
        b
    }

    /// Sets up `count` buffers of `len` bytes and registers them with the
    /// kernel as provided-buffer group `group` of `submitter`'s ring, every
    /// buffer lent. For a ring of the caller's own; [`Ring::new`] does this for
    /// gaio's.
    ///
    /// Operations of that ring that select a buffer from `group` (for example
    /// `opcode::RecvMulti::new(fd, group)`) complete with the buffer's id in
    /// their flags (`io_uring::cqueue::buffer_select`): pass it to
    /// [`filled`](Self::filled) or [`take`](Self::take), then read the bytes
    /// with [`bytes`](Self::bytes).
    ///
    /// # Errors
    /// `InvalidInput` (not an OS error) unless `count` is a power of two and
    /// `len` nonzero; `OutOfMemory` (not an OS error) when the memory cannot be
    /// allocated; the OS error of the registration otherwise (`EINVAL` where the
    /// kernel has no provided-buffer rings, `EEXIST` where `group` is taken).
    ///
    /// # Safety
    /// The kernel reads the ring of entries and writes into the buffers for
    /// the ring's operations that select from `group`. Before this `Buffers` is
    /// dropped, every such operation must be over (its last completion
    /// delivered) and no new one submitted; otherwise leak the `Buffers`
    /// (`std::mem::forget`). Unregistering the group or dropping the ring is
    /// no substitute for waiting: an operation that picked a buffer already may
    /// still write into it, and the kernel tears a ring down after its fd
    /// closes, not before.
    pub unsafe fn register(
        submitter: &Submitter<'_>,
        group: u16,
        count: u16,
        len: u32,
    ) -> io::Result<Buffers> {
        let mem = Arc::new(BufMem::new(count, len)?);
        // SAFETY: the entries are `count` entries, page-aligned, allocated by
        // `mem`; they stay allocated while the kernel may read them, because
        // the `Buffers` returned holds `mem` and the caller keeps it until the
        // kernel is done with the group (this function's contract).
        unsafe { submitter.register_buf_ring_with_flags(mem.entries as u64, count, group, 0) }?;
        Ok(Buffers::new(mem))
    }

    /// Bytes per buffer.
    pub fn buffer_len(&self) -> usize {
        self.mem.len as usize
    }

    /// Buffers in the ring.
    pub fn count(&self) -> u16 {
        self.mem.count
    }

    fn lend(&mut self, bid: u16) {
        let m = &*self.mem;
        let i = usize::from(self.tail & (m.count - 1));
        // SAFETY: `i < count`, the ring's length; the kernel reads entries only
        // between its head and the published tail, and this one is past the tail.
        let e = unsafe { &mut *m.entries.add(i) };
        // SAFETY: `bid < count`, so the buffer lies inside `mem`.
        e.set_addr(unsafe { m.mem.add(usize::from(bid) * m.len as usize) } as u64);
        e.set_len(m.len);
        e.set_bid(bid);
        self.state[usize::from(bid)] = BufState::Lent;
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field overlays the first entry's reserved field, and
        // the kernel reads it with acquire ordering.
        unsafe {
            let tail = BufRingEntry::tail(self.mem.entries).cast_mut();
            (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release);
        }
    }

    /// A completion says the kernel filled `bid` and handed it back: its bytes
    /// may be read until the next [`recycle`](Self::recycle), which lends it
    /// again. Does nothing for a buffer not lent, or out of range.
    pub fn filled(&mut self, bid: u16) {
        if self.handed_back(bid, BufState::Returned) {
            self.returned.push(bid);
        }
    }

    /// Like [`filled`](Self::filled), but the caller keeps `bid`: its bytes may
    /// be read, and `recycle` passes it over, until
    /// [`give_back`](Self::give_back) — for bytes that must stay put past the
    /// next `recycle`, such as the source of a send still in flight. Does
    /// nothing for a buffer not lent, or out of range.
    pub fn take(&mut self, bid: u16) {
        self.handed_back(bid, BufState::Kept);
    }

    /// Ends a [`take`](Self::take): buffer `bid` is lent again at the next
    /// [`recycle`](Self::recycle) (until then its bytes may still be read).
    /// Does nothing for a buffer not kept, or out of range.
    pub fn give_back(&mut self, bid: u16) {
        if let Some(s @ BufState::Kept) = self.state.get_mut(usize::from(bid)) {
            *s = BufState::Returned;
            self.returned.push(bid);
        }
    }

    /// Moves `bid` from lent to `to`; whether it was lent.
    fn handed_back(&mut self, bid: u16, to: BufState) -> bool {
        match self.state.get_mut(usize::from(bid)) {
            Some(s @ BufState::Lent) => {
                *s = to;
                true
            }
            _ => false,
        }
    }

    /// The first `len` bytes (at most [`buffer_len`](Self::buffer_len)) of
    /// buffer `bid`, which the kernel handed back.
    ///
    /// # Panics
    /// If `bid` is lent to the kernel (it may be writing it), or out of range.
    pub fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        assert!(
            self.state[usize::from(bid)] != BufState::Lent,
            "provided buffer {bid} is lent to the kernel"
        );
        let len = len.min(self.mem.len as usize);
        // SAFETY: `bid < count` (checked by the index above), so the range lies
        // inside `mem`; the kernel handed the buffer back and does not write it
        // before `recycle` lends it again, which needs `&mut self` and so cannot
        // run while this borrow lives.
        unsafe {
            std::slice::from_raw_parts(
                self.mem.mem.add(usize::from(bid) * self.mem.len as usize),
                len,
            )
        }
    }

    /// Buffers returned (not kept) and not lent again yet.
    pub fn returned(&self) -> usize {
        self.returned.len()
    }

    /// Lends the kernel again every returned buffer (kept ones stay with the
    /// caller); whether any.
    pub fn recycle(&mut self) -> bool {
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

/// An io_uring with everything gaio's driver relies on, and the in-flight table
/// that owns lent buffers. See the module docs for the contract.
pub struct Ring {
    // Dropped after `Drop::drop` settled every operation.
    ring: IoUring,
    mem: Arc<BufMem>,
    /// Operations that lent buffers, by index (user data with `TABLE_BIT`).
    table: Vec<Entry>,
    free: Vec<u32>,
    /// Submissions that found the queue full (or would exceed the completion
    /// queue's room), submitted at the next enter.
    backlog: Vec<squeue::Entry>,
    /// Boxed: a submission points into a block, which must not move when more
    /// are added.
    #[allow(clippy::vec_box)]
    blocks: Vec<Box<IovBlock>>,
    blocks_used: usize,
    /// The waker's fd, polled (multishot), re-armed when the poll ends unless
    /// closing.
    wake: Option<Arc<OwnedFd>>,
    wake_armed: bool,
    closing: bool,
    issuer: Option<std::thread::ThreadId>,
    /// Operations submitted (or in the backlog) whose last completion has not
    /// arrived, cancellations and the wake poll apart.
    inflight: usize,
    /// Most operations in flight at once: the completion queue's size less a
    /// reserve, so the queue cannot overflow.
    limit: usize,
    /// Completions the kernel dropped (CQ overflow it could not buffer).
    lost: u64,
    syscalls: u64,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("inflight", &self.inflight)
            .field("backlog", &self.backlog.len())
            .field("syscalls", &self.syscalls)
            .finish_non_exhaustive()
    }
}

// SAFETY: the raw pointers (iovec blocks, buffer memory through `mem`) are the
// ring's own allocations; the ring moves between threads only as a whole, and
// the kernel is told of the one thread that may enter it (`SINGLE_ISSUER`).
unsafe impl Send for Ring {}

impl Ring {
    /// Sets up a ring (`SINGLE_ISSUER`, `DEFER_TASKRUN`, created disabled) and
    /// its provided-buffer ring. A missing feature is an error of kind
    /// `Unsupported` naming it.
    ///
    /// # Errors
    /// `Unsupported` where io_uring or a needed feature is missing or forbidden;
    /// other OS errors from setup.
    pub fn new(cfg: Config) -> io::Result<(Ring, Buffers)> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_r_disabled()
            .setup_cqsize(cfg.entries * 4)
            .build(cfg.entries)
            .map_err(|e| unsupported(&format!("io_uring unavailable: {e}")))?;
        let p = ring.params();
        if !(p.is_feature_ext_arg()
            && p.is_feature_submit_stable()
            && p.is_feature_nodrop()
            && p.is_feature_skip_cqe_on_success())
        {
            return Err(unsupported(
                "io_uring lacks EXT_ARG, SUBMIT_STABLE, NODROP or CQE_SKIP_SUCCESS",
            ));
        }
        // SAFETY: the ring holds the buffers' memory too (`mem`, below), so the
        // `Buffers` may be dropped first; the ring's drop settles every
        // operation before it lets go of the memory (or leaks it when it
        // cannot), and nothing is submitted after.
        let buffers =
            unsafe { Buffers::register(&ring.submitter(), GROUP, cfg.buffers, cfg.buffer_len) }
                .map_err(|e| match e.raw_os_error() {
                    // The registration failed: no provided-buffer rings here.
                    Some(_) => unsupported(&format!("no provided-buffer ring: {e}")),
                    // A bad `Config`, or no memory: not a reason to fall back.
                    None => e,
                })?;
        let mem = buffers.mem.clone();
        let cq = ring.params().cq_entries() as usize;
        Ok((
            Ring {
                ring,
                mem,
                table: Vec::new(),
                free: Vec::new(),
                backlog: Vec::new(),
                blocks: Vec::new(),
                blocks_used: 0,
                wake: None,
                wake_armed: false,
                closing: false,
                issuer: None,
                inflight: 0,
                limit: cq.saturating_sub(64).max(1),
                lost: 0,
                syscalls: 1,
            },
            buffers,
        ))
    }

    /// Polls the waker's eventfd (multishot), so that a wake from any thread
    /// ends a wait; the ring holds the fd open while it may poll it.
    pub fn set_wake(&mut self, waker: &crate::Waker) {
        self.wake = Some(waker.shared_fd());
        self.wake_armed = false;
    }

    /// Lets go of the waker's fd (after [`cancel_all`](Self::cancel_all): the
    /// poll is not armed again).
    pub fn drop_wake(&mut self) {
        self.wake = None;
    }

    /// System calls made so far (setup, enters, cancellations' enters).
    pub fn syscalls(&self) -> u64 {
        self.syscalls
    }

    /// Operations whose last completion has not arrived.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// Completions the kernel reported lost (completion queue overflow it could
    /// not buffer). Operations they belonged to never complete.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Whether the calling thread may enter the ring: it is the one that first
    /// entered, or none has yet.
    pub fn on_issuer(&self) -> bool {
        self.issuer.is_none_or(|t| t == std::thread::current().id())
    }

    /// Submissions queued and not yet handed to the kernel.
    pub fn has_unsubmitted(&mut self) -> bool {
        !self.backlog.is_empty() || !self.ring.submission().is_empty()
    }

    fn push(&mut self, sqe: squeue::Entry) {
        self.inflight += 1;
        self.push_raw(sqe);
    }

    fn push_raw(&mut self, sqe: squeue::Entry) {
        if !self.backlog.is_empty() || self.inflight > self.limit {
            self.backlog.push(sqe);
            return;
        }
        // SAFETY: every submission built here names only memory the ring owns
        // until the operation's last completion (the in-flight table, the
        // iovec blocks until submission, the provided-buffer ring).
        if unsafe { self.ring.submission().push(&sqe) }.is_err() {
            self.backlog.push(sqe);
        }
    }

    /// Parks `bufs` in the in-flight table under `user`; returns the user data
    /// that names the entry.
    #[inline]
    fn lend(
        &mut self,
        user: u64,
        first: (Buf, usize),
        more: impl Iterator<Item = (Buf, usize)>,
    ) -> (u64, u32) {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.table.push(Entry::default());
                (self.table.len() - 1) as u32
            }
        };
        let e = &mut self.table[i as usize];
        e.user = user & USER_MASK;
        e.first = Some(first);
        for b in more {
            e.more.push(b);
        }
        (TABLE_BIT | u64::from(i), i)
    }

    /// A receive into the provided-buffer ring (a `read` for what is not a
    /// socket). Completes with the bytes in [`Cqe::buffer`], `-ENOBUFS` when the
    /// ring is empty, 0 at EOF.
    pub fn recv_select(&mut self, fd: BorrowedFd<'_>, socket: bool, user: u64) {
        let fd = Fd(fd.as_raw_fd());
        let sqe = if socket {
            opcode::Recv::new(fd, std::ptr::null_mut(), self.mem.len)
                .buf_group(GROUP)
                .build()
        } else {
            opcode::Read::new(fd, std::ptr::null_mut(), self.mem.len)
                .offset(u64::MAX)
                .buf_group(GROUP)
                .build()
        };
        self.push(
            sqe.flags(squeue::Flags::BUFFER_SELECT)
                .user_data(user & USER_MASK),
        );
    }

    /// A receive into `buf[off..]` (a `read` for what is not a socket); the
    /// buffer comes back from [`reclaim`](Self::reclaim) after the completion.
    /// Returns the operation's id for [`cancel_op`](Self::cancel_op) (the
    /// completion carries `user`).
    pub fn recv(
        &mut self,
        fd: BorrowedFd<'_>,
        socket: bool,
        buf: Vec<u8>,
        off: usize,
        user: u64,
    ) -> OpId {
        let off = off.min(buf.len());
        let len = (buf.len() - off).min(1 << 30) as u32;
        let (data, i) = self.lend(user, (Buf::Vec(buf), off), std::iter::empty());
        let Some((Buf::Vec(v), _)) = &mut self.table[i as usize].first else {
            unreachable!("just lent")
        };
        // The pointer stays valid: the Vec's heap memory does not move while the
        // entry owns it, until the completion.
        let ptr = v[off..].as_mut_ptr();
        let fd = Fd(fd.as_raw_fd());
        let sqe = if socket {
            opcode::Recv::new(fd, ptr, len).build()
        } else {
            opcode::Read::new(fd, ptr, len).offset(u64::MAX).build()
        };
        self.push(sqe.user_data(data));
        OpId(i)
    }

    /// Sends `bufs` in order, each from its offset (`sendmsg` with
    /// `MSG_NOSIGNAL | MSG_DONTWAIT` on a socket, so a full socket buffer
    /// completes with `-EAGAIN` instead of parking a kernel worker; `writev` on
    /// anything else). At most [`IOV_MAX`] buffers are taken from the iterator.
    /// The buffers come back from [`reclaim`](Self::reclaim) after the
    /// completion. Returns the operation's id for [`cancel_op`](Self::cancel_op)
    /// (the completion carries `user`).
    pub fn send(
        &mut self,
        fd: BorrowedFd<'_>,
        socket: bool,
        first: (Buf, usize),
        more: impl Iterator<Item = (Buf, usize)>,
        user: u64,
    ) -> OpId {
        let (data, i) = self.lend(user, first, more.take(IOV_MAX - 1));
        let fd = Fd(fd.as_raw_fd());
        let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
        let e = &self.table[i as usize];
        let (one, off) = e.first.as_ref().expect("just lent");
        let sqe = if e.more.is_empty() {
            let b = &one.bytes()[*off..];
            let (ptr, len) = (b.as_ptr(), b.len().min(1 << 30) as u32);
            if socket {
                opcode::Send::new(fd, ptr, len).flags(flags).build()
            } else {
                opcode::Write::new(fd, ptr, len).offset(u64::MAX).build()
            }
        } else {
            if self.blocks_used == self.blocks.len() {
                self.blocks.push(Box::new(IovBlock {
                    // SAFETY: plain C data; all-zeroes is valid for both.
                    msg: unsafe { std::mem::zeroed() },
                    // SAFETY: as above.
                    iov: unsafe { std::mem::zeroed() },
                }));
            }
            let b = &mut self.blocks[self.blocks_used];
            self.blocks_used += 1;
            let e = &self.table[i as usize];
            let all = std::iter::once(e.first.as_ref().expect("just lent")).chain(e.more.iter());
            let mut n = 0;
            for (v, (buf, off)) in b.iov.iter_mut().zip(all) {
                let s = &buf.bytes()[*off..];
                *v = libc::iovec {
                    iov_base: s.as_ptr().cast_mut().cast(),
                    iov_len: s.len(),
                };
                n += 1;
            }
            if socket {
                // SAFETY: plain C data; all-zeroes is "no address, no control".
                b.msg = unsafe { std::mem::zeroed() };
                b.msg.msg_iov = b.iov.as_mut_ptr();
                b.msg.msg_iovlen = n as _;
                opcode::SendMsg::new(fd, &raw const b.msg)
                    .flags(flags as u32)
                    .build()
            } else {
                opcode::Writev::new(fd, b.iov.as_ptr(), n as u32)
                    .offset(u64::MAX)
                    .build()
            }
        };
        self.push(sqe.user_data(data));
        OpId(i)
    }

    /// Accepts one connection (nonblocking, close-on-exec). Take the new fd
    /// from the completion with [`Cqe::take_accepted`].
    pub fn accept(&mut self, fd: BorrowedFd<'_>, user: u64) {
        self.push(
            opcode::Accept::new(
                Fd(fd.as_raw_fd()),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data((user & USER_MASK) | ACCEPT_BIT),
        );
    }

    /// Waits (one shot) for `fd` to be readable, or writable with `out`.
    pub fn poll(&mut self, fd: BorrowedFd<'_>, out: bool, user: u64) {
        let events = if out { libc::POLLOUT } else { libc::POLLIN };
        self.push(
            opcode::PollAdd::new(Fd(fd.as_raw_fd()), events as u32)
                .build()
                .user_data(user & USER_MASK),
        );
    }

    /// Asks the kernel to end an operation that lent buffers early (`op` is
    /// what [`recv`](Self::recv) or [`send`](Self::send) returned). As
    /// [`cancel`](Self::cancel).
    pub fn cancel_op(&mut self, op: OpId) {
        self.cancel_data(TABLE_BIT | u64::from(op.0));
    }

    /// Asks the kernel to end the operation submitted with user data `user`
    /// (one that lent no buffers) early. Returns at once: the operation
    /// completes (`-ECANCELED`, or with what it did before the cancellation
    /// reached it) at a later reap.
    pub fn cancel(&mut self, user: u64) {
        self.cancel_data(user & USER_MASK);
    }

    /// As [`cancel`](Self::cancel), for an [`accept`](Self::accept) submitted
    /// with user data `user`.
    pub fn cancel_accept(&mut self, user: u64) {
        self.cancel_data((user & USER_MASK) | ACCEPT_BIT);
    }

    fn cancel_data(&mut self, data: u64) {
        // One operation (user data is unique while an operation is out: no
        // `all`, which would search every queue again, worker threads' too);
        // a successful cancellation posts nothing (`SKIP_SUCCESS`): the
        // operation's own completion says it ended.
        let sqe = opcode::AsyncCancel2::new(CancelBuilder::user_data(data))
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(CANCEL_DATA);
        self.push_raw(sqe);
    }

    /// Hands back the buffers of a completed operation (in submission order).
    /// Nothing for a completion without buffers.
    #[inline]
    pub fn reclaim(&mut self, cqe: &Cqe, mut out: impl FnMut(Buf)) {
        let Some(i) = cqe.entry else { return };
        let Some(e) = self.table.get_mut(i as usize) else {
            return;
        };
        let Some((first, _)) = e.first.take() else {
            return; // reclaimed already
        };
        out(first);
        if !e.more.is_empty() {
            for (b, _) in e.more.drain(..) {
                out(b);
            }
            if e.more.capacity() > 64 {
                e.more = Vec::new();
            }
        }
        self.free.push(i);
    }

    /// Submits what was queued and reaps completions into `out`: waits for at
    /// least one for up to `timeout` (`None`: until one comes) when `wait`,
    /// else returns at once. The first call fixes the ring's one issuer thread.
    ///
    /// # Errors
    /// Another thread than the issuer (`Other`); the kernel's error from
    /// `io_uring_enter` (not `EINTR`, `ETIME`, `EBUSY` or `EAGAIN`: those
    /// return what was reaped).
    pub fn enter(
        &mut self,
        timeout: Option<Duration>,
        wait: bool,
        out: &mut Vec<Cqe>,
    ) -> io::Result<()> {
        match self.issuer {
            None => {
                self.ring.submitter().register_enable_rings()?;
                self.syscalls += 1;
                self.issuer = Some(std::thread::current().id());
            }
            Some(t) if t != std::thread::current().id() => return Err(wrong_thread()),
            Some(_) => {}
        }
        if !self.wake_armed && !self.closing {
            if let Some(fd) = &self.wake {
                self.wake_armed = true;
                let sqe = opcode::PollAdd::new(Fd(fd.as_raw_fd()), libc::POLLIN as u32)
                    .multi(true)
                    .build()
                    .user_data(WAKE_DATA);
                self.push_raw(sqe);
            }
        }
        self.flush_backlog(out)?;
        let timeout = timeout.filter(|_| wait);
        let want = usize::from(wait && self.ring.completion().is_empty() && out.is_empty());
        self.submit(want, timeout)?;
        if self.backlog.is_empty() && self.ring.submission().is_empty() {
            // Every submission that pointed into a block was consumed.
            self.blocks_used = 0;
        }
        self.reap(out);
        Ok(())
    }

    /// Moves the backlog into the submission queue as room frees up (and the
    /// completion queue has room for what it adds).
    fn flush_backlog(&mut self, out: &mut Vec<Cqe>) -> io::Result<()> {
        while !self.backlog.is_empty() {
            let mut sq = self.ring.submission();
            let room = sq.capacity() - sq.len();
            let n = room.min(self.backlog.len());
            // SAFETY: as in `push_raw`.
            unsafe { sq.push_multiple(&self.backlog[..n]) }.expect("room was checked");
            drop(sq);
            self.backlog.drain(..n);
            if self.backlog.is_empty() {
                if self.backlog.capacity() > 256 {
                    self.backlog = Vec::new(); // a burst is over
                }
                break;
            }
            self.submit(0, None)?;
            self.reap(out);
        }
        Ok(())
    }

    fn submit(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<()> {
        self.syscalls += 1;
        let res = match timeout {
            Some(d) if want > 0 => {
                let ts = Timespec::from(d);
                self.ring
                    .submitter()
                    .submit_with_args(want, &SubmitArgs::new().timespec(&ts))
            }
            _ => {
                let n = self.ring.submission().len() as u32;
                // SAFETY: no argument is passed (`None`); the flags are plain
                // GETEVENTS, which with DEFER_TASKRUN also runs the completions'
                // deferred work even when not waiting (`want` 0).
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
                Some(libc::EBADR) => {
                    // The kernel dropped completions it could not buffer.
                    self.lost += 1;
                    Ok(())
                }
                Some(libc::EEXIST) => Err(wrong_thread()),
                _ => Err(e),
            },
        }
    }

    /// Copies the completion queue out, keeping the caller's ones.
    fn reap(&mut self, out: &mut Vec<Cqe>) {
        let mut cq = self.ring.completion();
        let overflow = u64::from(cq.overflow());
        for e in &mut cq {
            let (user, flags) = (e.user_data(), e.flags());
            match user {
                WAKE_DATA => {
                    if !cqueue::more(flags) {
                        self.wake_armed = false;
                    }
                }
                CANCEL_DATA => {}
                _ => {
                    self.inflight -= 1;
                    let (value, entry) = if user & TABLE_BIT != 0 {
                        let i = (user & !TABLE_BIT) as u32;
                        (self.table[i as usize].user, Some(i))
                    } else {
                        (user & USER_MASK, None)
                    };
                    out.push(Cqe {
                        user: value,
                        res: e.result(),
                        flags,
                        entry,
                        accept: user & (TABLE_BIT | ACCEPT_BIT) == ACCEPT_BIT,
                    });
                }
            }
        }
        drop(cq);
        self.lost = self.lost.max(overflow);
    }

    /// Asks the kernel to end every operation (for closing: the wake poll is
    /// not armed again). Returns at once; [`inflight`](Self::inflight) falls to
    /// zero as their completions are reaped.
    pub fn cancel_all(&mut self) {
        self.closing = true;
        let sqe = opcode::AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(CANCEL_DATA);
        self.push_raw(sqe);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The owner settles operations before dropping (gaio-core does); this
        // is the backstop.
        let mut out = Vec::new();
        if self.inflight > 0 && self.on_issuer() {
            self.cancel_all();
            while self.inflight > 0 && self.enter(None, true, &mut out).is_ok() {
                for c in out.drain(..) {
                    self.reclaim(&c, drop);
                }
            }
        }
        if self.inflight > 0 {
            // The kernel may still write into lent buffers and the provided
            // ring: leak them rather than free them under it.
            for e in self.table.drain(..) {
                std::mem::forget(e);
            }
            std::mem::forget(self.mem.clone());
            return;
        }
        let _ = self.ring.submitter().unregister_buf_ring(GROUP);
    }
}

/// The error for a ring entered from another thread than its issuer.
pub fn wrong_thread() -> io::Error {
    io::Error::other(
        "an io_uring watcher is driven by one thread, the one that first waited on it; \
         this is another",
    )
}

fn unsupported(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, what.to_string())
}
