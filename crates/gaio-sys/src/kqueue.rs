//! kqueue backend (macOS, iOS, FreeBSD, OpenBSD, NetBSD, DragonFly). Mirrors
//! `epoll.rs`: same names, same rules. Not compiled on the Linux CI machine; it
//! follows libc's BSD definitions and is kept small for that reason.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// An edge-triggered (`EV_CLEAR`) readiness poller over one kqueue.
#[derive(Debug)]
pub struct Poller {
    kq: OwnedFd,
}

fn kevent_for(ident: libc::uintptr_t, filter: i16, flags: u16, token: u64) -> libc::kevent {
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

    fn apply(&self, changes: &[libc::kevent]) -> io::Result<()> {
        syscall!(kevent(
            self.kq.as_raw_fd(),
            changes.as_ptr(),
            changes.len() as _,
            std::ptr::null_mut(),
            0,
            std::ptr::null()
        ))?;
        Ok(())
    }

    /// Registers `fd` edge-triggered (`EV_CLEAR`) for read and write with `token`.
    ///
    /// # Errors
    /// `EEXIST` when already registered (checked by the caller's bookkeeping on
    /// kqueue, which silently updates); kernel errors as they come.
    pub fn register(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        let flags = libc::EV_ADD | libc::EV_CLEAR;
        let id = fd.as_raw_fd() as libc::uintptr_t;
        self.apply(&[
            kevent_for(id, libc::EVFILT_READ, flags, token),
            kevent_for(id, libc::EVFILT_WRITE, flags, token),
        ])
    }

    /// Stops watching `fd`.
    ///
    /// # Errors
    /// `ENOENT` if `fd` was not registered.
    pub fn deregister(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let id = fd.as_raw_fd() as libc::uintptr_t;
        self.apply(&[
            kevent_for(id, libc::EVFILT_READ, libc::EV_DELETE, 0),
            kevent_for(id, libc::EVFILT_WRITE, libc::EV_DELETE, 0),
        ])
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
            events.list.capacity() as _,
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
    // filter/flags are i16/u16 on some BSDs and other widths on others.
    #[allow(clippy::unnecessary_cast)]
    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.list.iter().map(|e| Event {
            token: e.udata as usize as u64,
            filter: e.filter as i16,
            flags: e.flags as u16,
        })
    }
}

/// One readiness event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    token: u64,
    filter: i16,
    flags: u16,
}

impl Event {
    /// The token the fd was registered with.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Data (or EOF, or an error) can be read.
    pub fn is_readable(&self) -> bool {
        self.filter == libc::EVFILT_READ || self.filter == libc::EVFILT_USER
    }

    /// Data can be written (or a write would fail at once).
    pub fn is_writable(&self) -> bool {
        self.filter == libc::EVFILT_WRITE
    }

    /// The peer hung up or shut down its write side.
    pub fn is_read_closed(&self) -> bool {
        self.filter == libc::EVFILT_READ && self.flags & libc::EV_EOF != 0
    }

    /// An error is pending on the fd; the next read or write returns it.
    pub fn is_error(&self) -> bool {
        self.flags & libc::EV_ERROR != 0
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
        poller.apply(&[kevent_for(
            WAKER_IDENT,
            libc::EVFILT_USER,
            libc::EV_ADD | libc::EV_CLEAR,
            token,
        )])?;
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
        let mut ev = kevent_for(WAKER_IDENT, libc::EVFILT_USER, 0, self.token);
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
