//! kqueue backend (macOS, iOS, FreeBSD, OpenBSD, NetBSD, DragonFly). Mirrors
//! `epoll.rs`: same names, same rules, with the differences kqueue forces listed
//! in the crate docs. CI type-checks it (clippy for macOS, FreeBSD and NetBSD) but
//! no machine here runs it; it was reviewed line by line against mio and polling.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

// gaio-core packs a slot and a generation into a 64-bit token, and kqueue hands
// back only a pointer-sized `udata`: on a 32-bit target the generation would be
// cut off and events for a reused slot dropped as stale.
#[cfg(target_pointer_width = "32")]
compile_error!("gaio's kqueue backend needs a 64-bit target (tokens are 64 bits)");

// The widths of `filter` and `flags` differ between the BSDs.
#[cfg(target_os = "netbsd")]
type Filter = u32;
#[cfg(not(target_os = "netbsd"))]
type Filter = i16;
#[cfg(target_os = "netbsd")]
type Flags = u32;
#[cfg(not(target_os = "netbsd"))]
type Flags = u16;

/// An edge-triggered (`EV_CLEAR`) readiness poller over one kqueue.
#[derive(Debug)]
pub struct Poller {
    kq: OwnedFd,
}

fn kevent_for(ident: libc::uintptr_t, filter: Filter, flags: Flags, token: u64) -> libc::kevent {
    // SAFETY: kevent is plain data; all-zeroes is a valid value.
    let mut ev: libc::kevent = unsafe { std::mem::zeroed() };
    ev.ident = ident as _;
    ev.filter = filter as _;
    ev.flags = flags as _;
    ev.udata = token as usize as _;
    ev
}

impl Poller {
    /// Creates a new kqueue (close-on-exec).
    ///
    /// # Errors
    /// Whatever `kqueue` or `fcntl` reports.
    pub fn new() -> io::Result<Poller> {
        let fd = syscall!(kqueue())?;
        // SAFETY: kqueue just returned this fd and nothing else owns it.
        let kq = unsafe { OwnedFd::from_raw_fd(fd) };
        syscall!(fcntl(kq.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC))?;
        Ok(Poller { kq })
    }

    /// Applies up to two `changes` with `EV_RECEIPT`, so every change is tried
    /// and reports its own result (without receipts kevent stops at the first
    /// failing change, leaving a registration half-applied). Returns each change's
    /// errno, 0 for success.
    fn apply(&self, changes: &mut [libc::kevent]) -> io::Result<[i32; 2]> {
        assert!(changes.len() <= 2, "apply takes at most two changes");
        for c in changes.iter_mut() {
            c.flags |= libc::EV_RECEIPT as Flags;
        }
        // SAFETY: kevent is plain data; all-zeroes is a valid value.
        let mut out: [libc::kevent; 2] = unsafe { std::mem::zeroed() };
        let mut errnos = [0; 2];
        let res = syscall!(kevent(
            self.kq.as_raw_fd(),
            changes.as_ptr(),
            changes.len() as _,
            out.as_mut_ptr(),
            changes.len() as _,
            std::ptr::null()
        ));
        let n = match res {
            Ok(n) => n as usize,
            // Changes are applied before kevent could sleep; EINTR cannot undo them.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(errnos),
            Err(e) => return Err(e),
        };
        // With EV_RECEIPT every change comes back, in order, with EV_ERROR set and
        // its errno (0 for success) in `data`.
        for (errno, ev) in errnos.iter_mut().zip(&out[..n.min(changes.len())]) {
            if ev.flags & (libc::EV_ERROR as Flags) != 0 {
                *errno = ev.data as i32;
            }
        }
        Ok(errnos)
    }

    /// Registers `fd` edge-triggered (`EV_CLEAR`) for read and write with `token`.
    ///
    /// Unlike epoll, kqueue does not refuse an fd added twice: it replaces the
    /// token (gaio-core registers each fd once).
    ///
    /// # Errors
    /// Kernel errors as they come (e.g. `EBADF`). On macOS a pipe whose other end is
    /// already closed makes the write filter fail with `EPIPE`; that is ignored, as
    /// epoll accepts such an fd and the next write reports the error.
    pub fn register(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        let flags = (libc::EV_ADD | libc::EV_CLEAR) as Flags;
        let id = fd.as_raw_fd() as libc::uintptr_t;
        let errnos = self.apply(&mut [
            kevent_for(id, libc::EVFILT_READ as Filter, flags, token),
            kevent_for(id, libc::EVFILT_WRITE as Filter, flags, token),
        ])?;
        match errnos {
            [0, 0] | [0, libc::EPIPE] => Ok(()),
            [0, e] | [e, _] => {
                // Do not leave one filter behind.
                let _ = self.deregister(fd);
                Err(io::Error::from_raw_os_error(e))
            }
        }
    }

    /// Stops watching `fd`: both filters are removed, even if one was missing.
    ///
    /// # Errors
    /// `ENOENT` if `fd` was not registered.
    pub fn deregister(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let id = fd.as_raw_fd() as libc::uintptr_t;
        let del = libc::EV_DELETE as Flags;
        let errnos = self.apply(&mut [
            kevent_for(id, libc::EVFILT_READ as Filter, del, 0),
            kevent_for(id, libc::EVFILT_WRITE as Filter, del, 0),
        ])?;
        match errnos {
            // One filter gone already (e.g. a failed registration) is no error.
            [0, _] | [_, 0] => Ok(()),
            [e, _] => Err(io::Error::from_raw_os_error(e)),
        }
    }

    /// Waits for events, replacing the contents of `events`; see the crate docs for
    /// the timeout and `EINTR` rules.
    ///
    /// # Errors
    /// Whatever `kevent` reports other than `EINTR`.
    pub fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        events.list.clear();
        let ts = timeout.map(|d| {
            // Round up to whole ms like epoll so both backends wake at the same time.
            let ms = crate::timeout_ms(Some(d)) as i64;
            libc::timespec {
                tv_sec: (ms / 1000) as _,
                tv_nsec: ((ms % 1000) * 1_000_000) as _,
            }
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        let res = syscall!(kevent(
            self.kq.as_raw_fd(),
            std::ptr::null(),
            0,
            events.list.as_mut_ptr(),
            events.list.capacity().min(i32::MAX as usize) as _,
            ts_ptr
        ));
        match res {
            Ok(n) => {
                // SAFETY: kevent initialised the first `n` entries (n <= capacity).
                unsafe { events.list.set_len(n as usize) };
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A reusable buffer of events filled by [`Poller::wait`].
#[derive(Debug)]
pub struct Events {
    list: Vec<libc::kevent>,
}

// SAFETY: `kevent::udata` is a raw pointer only in type: this module stores
// integer tokens in it and never dereferences it, so moving the buffer to another
// thread, or reading it from several (`&Events` only hands out copies), shares no
// memory through it. Everything else in a kevent is plain integers.
unsafe impl Send for Events {}
// SAFETY: as above; `&Events` gives read-only copies of plain data.
unsafe impl Sync for Events {}

impl Events {
    /// A buffer that receives at most `capacity` events per wait (at least 1).
    pub fn with_capacity(capacity: usize) -> Events {
        Events {
            list: Vec::with_capacity(capacity.max(1)),
        }
    }

    /// How many events the last wait returned.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether the last wait returned no events.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The most events one wait can return.
    pub fn capacity(&self) -> usize {
        self.list.capacity()
    }

    /// Iterates over the events of the last wait. kqueue reports read and write
    /// readiness of one fd as separate events with the same token.
    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.list.iter().map(|e| Event {
            token: e.udata as usize as u64,
            filter: e.filter,
            flags: e.flags,
            fflags: e.fflags,
        })
    }
}

/// One readiness event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    token: u64,
    filter: Filter,
    flags: Flags,
    /// With `EV_EOF`, the socket's pending error (errno), or 0.
    fflags: u32,
}

impl Event {
    /// The token the fd was registered with.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Data (or EOF, or an error) can be read.
    pub fn is_readable(&self) -> bool {
        self.filter == libc::EVFILT_READ as Filter || self.filter == libc::EVFILT_USER as Filter
    }

    /// Data can be written (or a write would fail at once).
    pub fn is_writable(&self) -> bool {
        self.filter == libc::EVFILT_WRITE as Filter
    }

    /// The peer hung up or shut down its write side.
    pub fn is_read_closed(&self) -> bool {
        self.filter == libc::EVFILT_READ as Filter && self.flags & libc::EV_EOF as Flags != 0
    }

    /// An error is pending on the fd; the next read or write returns it. kqueue
    /// reports a socket error (reset, refused) as `EV_EOF` with the errno in
    /// `fflags`, on either filter.
    pub fn is_error(&self) -> bool {
        self.flags & libc::EV_ERROR as Flags != 0
            || (self.flags & libc::EV_EOF as Flags != 0 && self.fflags != 0)
    }
}

/// Wakes a [`Poller::wait`] from any thread, through an `EVFILT_USER` event.
#[derive(Debug)]
pub struct Waker {
    kq: libc::c_int,
    token: u64,
    _poller: OwnedFd,
}

/// The `ident` of the waker's user event; fds and user events live in separate
/// namespaces, so it cannot collide with a registered fd.
const WAKER_IDENT: libc::uintptr_t = 0;

impl Waker {
    /// Creates a waker whose wakes show up in `poller` as readable events with `token`.
    ///
    /// # Errors
    /// Whatever `kevent` or `dup` reports.
    pub fn new(poller: &Poller, token: u64) -> io::Result<Waker> {
        let [errno, _] = poller.apply(&mut [kevent_for(
            WAKER_IDENT,
            libc::EVFILT_USER as Filter,
            (libc::EV_ADD | libc::EV_CLEAR) as Flags,
            token,
        )])?;
        if errno != 0 {
            // No EVFILT_USER: NetBSD before 10, OpenBSD before 7.8.
            return Err(io::Error::from_raw_os_error(errno));
        }
        // Keep the kqueue alive as long as the waker, even if the Poller drops first.
        let dup = syscall!(fcntl(poller.kq.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0))?;
        // SAFETY: fcntl just returned this new fd and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(dup) };
        Ok(Waker {
            kq: owned.as_raw_fd(),
            token,
            _poller: owned,
        })
    }

    /// Triggers the user event; triggers before the next wait coalesce (`EV_CLEAR`).
    ///
    /// # Errors
    /// Whatever `kevent` reports.
    pub fn wake(&self) -> io::Result<()> {
        // A change on an existing knote also replaces its udata: pass the token again.
        let mut ev = kevent_for(WAKER_IDENT, libc::EVFILT_USER as Filter, 0, self.token);
        ev.fflags = libc::NOTE_TRIGGER;
        syscall!(kevent(
            self.kq,
            &ev,
            1,
            std::ptr::null_mut(),
            0,
            std::ptr::null()
        ))?;
        Ok(())
    }
}
