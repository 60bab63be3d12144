//! epoll backend (Linux, Android). Mirrors `kqueue.rs`: same names, same rules.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::timeout_ms;

/// An edge-triggered readiness poller over one epoll instance.
///
/// `Poller` is `Send + Sync`: registering from one thread while another waits is how
/// the kernel API is meant to be used.
#[derive(Debug)]
pub struct Poller {
    ep: OwnedFd,
}

impl Poller {
    /// Creates a new epoll instance (close-on-exec).
    ///
    /// # Errors
    /// Whatever `epoll_create1` reports, e.g. `EMFILE`.
    pub fn new() -> io::Result<Poller> {
        let fd = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
        // SAFETY: epoll_create1 just returned this fd and nothing else owns it.
        let ep = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Poller { ep })
    }

    /// Registers `fd` edge-triggered for read, write, peer hang-up and errors, with
    /// `token` handed back in each [`Event`]. An fd that is already ready produces
    /// one event at once.
    ///
    /// # Errors
    /// `EEXIST` if `fd` is already registered; `EPERM` for an fd epoll cannot watch
    /// (a regular file or directory); `ENOMEM`/`ENOSPC` when the kernel limits hit.
    pub fn register(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token,
        };
        syscall!(epoll_ctl(
            self.ep.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd.as_raw_fd(),
            &mut ev
        ))?;
        Ok(())
    }

    /// Stops watching `fd`. Closing an fd also removes it, unless another descriptor
    /// (a `dup`) still refers to the same open file.
    ///
    /// # Errors
    /// `ENOENT` if `fd` was not registered.
    pub fn deregister(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        syscall!(epoll_ctl(
            self.ep.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            fd.as_raw_fd(),
            std::ptr::null_mut()
        ))?;
        Ok(())
    }

    /// Waits for events, replacing the contents of `events`.
    ///
    /// `None` blocks until at least one event or a [`Waker::wake`]; `Some(d)` returns
    /// after at most about `d` (rounded up to whole milliseconds, never down).
    /// An interrupted wait (`EINTR`) returns `Ok` with no events.
    ///
    /// # Errors
    /// Whatever `epoll_wait` reports other than `EINTR`.
    #[inline]
    pub fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        events.list.clear();
        let cap = events.list.capacity().min(i32::MAX as usize) as i32;
        let res = syscall!(epoll_wait(
            self.ep.as_raw_fd(),
            events.list.as_mut_ptr(),
            cap,
            timeout_ms(timeout)
        ));
        match res {
            Ok(n) => {
                // SAFETY: epoll_wait initialised the first `n` entries (n <= cap).
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
    list: Vec<libc::epoll_event>,
}

impl Events {
    /// A buffer that receives at most `capacity` events per wait (at least 1).
    pub fn with_capacity(capacity: usize) -> Events {
        Events {
            list: Vec::with_capacity(capacity.max(1)),
        }
    }

    /// How many events the last wait returned.
    #[inline]
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether the last wait returned no events.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The most events one wait can return.
    pub fn capacity(&self) -> usize {
        self.list.capacity()
    }

    /// Iterates over the events of the last wait.
    #[inline]
    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.list.iter().map(|e| Event {
            token: e.u64,
            flags: e.events,
        })
    }
}

/// One readiness event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    token: u64,
    flags: u32,
}

impl Event {
    /// The token the fd was registered with.
    #[inline]
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Data (or EOF, or an error) can be read.
    #[inline]
    pub fn is_readable(&self) -> bool {
        self.flags & (libc::EPOLLIN | libc::EPOLLPRI) as u32 != 0
    }

    /// Data can be written (or a write would fail at once).
    #[inline]
    pub fn is_writable(&self) -> bool {
        self.flags & libc::EPOLLOUT as u32 != 0
    }

    /// The peer hung up or shut down its write side: reads return EOF once drained.
    #[inline]
    pub fn is_read_closed(&self) -> bool {
        self.flags & (libc::EPOLLHUP | libc::EPOLLRDHUP) as u32 != 0
    }

    /// An error is pending on the fd (e.g. the peer reset the connection); the next
    /// read or write returns it.
    #[inline]
    pub fn is_error(&self) -> bool {
        self.flags & libc::EPOLLERR as u32 != 0
    }
}

/// Wakes a [`Poller::wait`] from any thread, through an `eventfd`.
#[derive(Debug)]
pub struct Waker {
    /// Shared with an io_uring ring that polls it (`uring::Ring::set_wake`), so
    /// the fd closes when both are done with it, never under a poll.
    fd: std::sync::Arc<OwnedFd>,
}

impl Waker {
    /// Creates a waker whose wakes show up in `poller` as events with `token`.
    ///
    /// # Errors
    /// Whatever `eventfd` or `epoll_ctl` reports.
    pub fn new(poller: &Poller, token: u64) -> io::Result<Waker> {
        let waker = Waker::eventfd()?;
        let fd = &waker.fd;
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: token,
        };
        syscall!(epoll_ctl(
            poller.ep.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd.as_raw_fd(),
            &mut ev
        ))?;
        Ok(waker)
    }

    /// A waker on no poller: its eventfd ([`AsFd`]) is for an io_uring poll,
    /// which reports every wake as one completion.
    ///
    /// # Errors
    /// Whatever `eventfd` reports.
    pub fn eventfd() -> io::Result<Waker> {
        let fd = syscall!(eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?;
        // SAFETY: eventfd just returned this fd and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Waker {
            fd: std::sync::Arc::new(fd),
        })
    }

    /// The eventfd, for a ring to poll and keep open while it does.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn shared_fd(&self) -> std::sync::Arc<OwnedFd> {
        self.fd.clone()
    }

    /// Wakes the poller. Edge-triggered: every write to the eventfd is a new edge, so
    /// the counter is never read on the hot path; wakes before the next wait coalesce
    /// into one event because the fd is on the ready list at most once.
    ///
    /// # Errors
    /// Whatever `write` reports other than a full counter (which is reset).
    pub fn wake(&self) -> io::Result<()> {
        let one: u64 = 1;
        loop {
            let res = syscall!(write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>()
            ));
            match res {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The counter is at u64::MAX - 1 after ~2^64 wakes: read resets it.
                    let mut sink: u64 = 0;
                    let _ = syscall!(read(
                        self.fd.as_raw_fd(),
                        (&mut sink as *mut u64).cast(),
                        std::mem::size_of::<u64>()
                    ));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsFd for Waker {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
