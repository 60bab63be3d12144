//! Drivers move bytes; the engine decides what to move.
//!
//! A driver owns the kernel interface of one watcher. There are two kinds:
//!
//! * the readiness driver ([`poll`], epoll or kqueue): `register(fd, token)`,
//!   `poll(timeout)` reporting which fds became ready (`events`), and transfers
//!   (`read`, `write`) attempted at once that come back `WouldBlock` when the
//!   fd is not ready. The engine's `read_once`/`write_once` use it.
//! * the completion driver ([`uring`], Linux io_uring): the engine submits each
//!   transfer as an operation on a buffer it keeps alive, and `poll(timeout)`
//!   submits them and reaps their results as completions. The engine's
//!   `engine::complete` half uses it.
//!
//! Neither knows of requests, their order, deadlines or completions to the
//! application: those are the engine's, the same on every backend. Both count
//! their system calls (`syscalls`) for `Stats`.

pub(crate) mod poll;
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) mod uring;

use std::io;
use std::time::Duration;

use crate::Backend;

/// The driver of one watcher (one per watcher, inline: the size of the larger
/// variant costs nothing, a box would cost a load per operation).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Driver {
    Poll(poll::Driver),
    #[cfg(target_os = "linux")]
    Uring(uring::Driver),
}

impl Driver {
    #[inline]
    pub fn is_uring(&self) -> bool {
        !matches!(self, Driver::Poll(_))
    }

    pub fn backend(&self) -> Backend {
        if self.is_uring() {
            Backend::IoUring
        } else {
            Backend::Epoll
        }
    }

    /// The readiness driver (the engine's readiness half only runs with it).
    #[inline]
    pub fn ready(&mut self) -> &mut poll::Driver {
        match self {
            Driver::Poll(d) => d,
            #[cfg(target_os = "linux")]
            Driver::Uring(_) => unreachable!("readiness step on the io_uring driver"),
        }
    }

    /// Starts reporting on `fd` (the completion driver needs no registration).
    pub fn register(&mut self, fd: std::os::fd::BorrowedFd<'_>, token: u64) -> io::Result<()> {
        match self {
            Driver::Poll(d) => d.register(fd, token),
            #[cfg(target_os = "linux")]
            Driver::Uring(_) => Ok(()),
        }
    }

    pub fn deregister(&mut self, fd: std::os::fd::BorrowedFd<'_>) {
        match self {
            Driver::Poll(d) => d.deregister(fd),
            #[cfg(target_os = "linux")]
            Driver::Uring(_) => {}
        }
    }

    /// Whether this thread may drive the watcher: always on epoll/kqueue; on
    /// io_uring, only the thread that first waited (`SINGLE_ISSUER`).
    pub fn check_thread(&self) -> io::Result<()> {
        match self {
            Driver::Poll(_) => Ok(()),
            #[cfg(target_os = "linux")]
            Driver::Uring(d) if !d.on_issuer() => Err(uring::wrong_thread()),
            #[cfg(target_os = "linux")]
            Driver::Uring(_) => Ok(()),
        }
    }

    /// Operations queued and not yet handed to the kernel.
    #[inline]
    pub fn has_unsubmitted(&mut self) -> bool {
        match self {
            Driver::Poll(_) => false,
            #[cfg(target_os = "linux")]
            Driver::Uring(d) => d.has_unsubmitted(),
        }
    }

    pub fn syscalls(&self) -> u64 {
        match self {
            Driver::Poll(d) => d.syscalls,
            #[cfg(target_os = "linux")]
            Driver::Uring(d) => d.syscalls,
        }
    }

    /// A system call made on the driver's behalf (accept, close, shutdown).
    pub fn count_syscall(&mut self) {
        match self {
            Driver::Poll(d) => d.syscalls += 1,
            #[cfg(target_os = "linux")]
            Driver::Uring(d) => d.syscalls += 1,
        }
    }
}

/// Completions reaped by the io_uring driver (none elsewhere).
#[cfg(target_os = "linux")]
pub(crate) type Cqes = Vec<uring::Cqe>;
#[cfg(not(target_os = "linux"))]
pub(crate) type Cqes = Vec<()>;

impl Driver {
    /// Waits for readiness or completions: `true` if any connection has
    /// something (readiness events in the poll driver; completions appended to
    /// `cqes`).
    #[inline]
    pub fn poll(&mut self, timeout: Option<Duration>, _cqes: &mut Cqes) -> io::Result<bool> {
        match self {
            Driver::Poll(d) => d.poll(timeout),
            #[cfg(target_os = "linux")]
            Driver::Uring(d) => d.enter(timeout, _cqes),
        }
    }
}
