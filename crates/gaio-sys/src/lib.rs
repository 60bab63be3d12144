//! The OS boundary of gaio: the only crate in the workspace that makes system calls,
//! and the only one with `unsafe`.
//!
//! It offers four things, each the same on every supported platform:
//!
//! * [`Poller`]: an edge-triggered readiness poller (epoll on Linux/Android, kqueue on
//!   macOS/iOS and the BSDs). An fd is registered once for read + write + peer hang-up
//!   with a 64-bit token; [`Poller::wait`] fills [`Events`].
//! * [`Waker`]: wakes a [`Poller::wait`] blocked in another thread. Wakes that happen
//!   before the poller next waits coalesce into one event.
//! * Nonblocking calls on raw fds: [`read`], [`send`], [`write()`], [`sendv`], [`writev`],
//!   [`accept`], [`connect_tcp`], [`connect_unix`] (with [`take_error`] to learn how a
//!   connect ended), [`shutdown_write`], [`set_nonblocking`], [`fd_kind`]. `EINTR` is retried inside; `EAGAIN`
//!   comes back as [`std::io::ErrorKind::WouldBlock`]; [`send`] and [`sendv`] never raise
//!   `SIGPIPE`. [`AcceptError`] says what an accept failure means for an accept loop.
//! * Thread pinning: [`pin_current_thread`] and [`current_thread_affinity`].
//! * Linux io_uring ([`uring`]): ring setup and feature probing, operations whose
//!   buffers the ring owns until their last completion, enter with a timeout,
//!   reaping, and the provided-buffer ring with a borrow-bound accessor.
//!
//! # Quick start
//!
//! ```
//! use std::io::Write;
//! use std::os::fd::AsFd;
//! use std::time::Duration;
//! use gaio_sys::{Events, Poller};
//!
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
//! let (server, _) = listener.accept()?;
//! gaio_sys::set_nonblocking(server.as_fd(), true)?;
//!
//! let poller = Poller::new()?;
//! poller.register(server.as_fd(), 7)?;
//! client.write_all(b"ping")?;
//!
//! let mut events = Events::with_capacity(16);
//! poller.wait(&mut events, Some(Duration::from_secs(5)))?;
//! let ev = events.iter().find(|e| e.token() == 7).expect("an event for token 7");
//! assert!(ev.is_readable());
//!
//! let mut buf = [0u8; 16];
//! assert_eq!(gaio_sys::read(server.as_fd(), &mut buf)?, 4);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Backends
//!
//! | OS | backend | waker |
//! |----|---------|-------|
//! | Linux, Android | `epoll` (`EPOLLET`) | `eventfd` |
//! | macOS, iOS, FreeBSD, OpenBSD, NetBSD, DragonFly | `kqueue` (`EV_CLEAR`) | `EVFILT_USER` |
//!
//! `EVFILT_USER` exists on macOS, FreeBSD ≥ 8.1, DragonFly ≥ 4.0, NetBSD ≥ 10 and
//! OpenBSD ≥ 7.8; on older systems `Waker::new` fails with the kernel's error. The
//! kqueue backend needs a 64-bit target. CI type-checks it (clippy for
//! x86_64/aarch64 macOS, FreeBSD and NetBSD); no machine here runs it.
//!
//! Every backend provides the same names with the same rules:
//!
//! * `Poller::new`, `register(fd, token)` (edge-triggered, read + write + hang-up),
//!   `deregister(fd)` (`ENOENT` if not registered), `wait(events, timeout)`. One
//!   difference kqueue forces: epoll refuses an fd added twice (`EEXIST`), kqueue
//!   replaces its token — callers register each fd once.
//! * `wait` with `None` blocks until an event or a wake; `Some(d)` returns after at
//!   most about `d` with possibly no events; a timeout under 1 ms that is not zero is
//!   rounded up to 1 ms, never down to a busy spin. `EINTR` returns `Ok` with no
//!   events (a spurious wakeup): callers loop, as they must for any wakeup.
//! * `Event`: `token`, `is_readable`, `is_writable`, `is_read_closed` (peer hung up
//!   or shut down its write side), `is_error`.
//! * `Waker::new(&poller, token)`, `wake()`: thread-safe, coalescing.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(unix)]
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        #[allow(unused_unsafe)]
        // SAFETY: every caller passes fds it borrows for the call and pointers to live
        // buffers of the length it passes; the macro only turns -1 into an io::Error.
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod epoll;
#[cfg(any(target_os = "linux", target_os = "android"))]
pub use epoll::{Event, Events, Poller, Waker};

#[cfg(gaio_kqueue)]
mod kqueue;
#[cfg(gaio_kqueue)]
pub use kqueue::{Event, Events, Poller, Waker};

#[cfg(not(any(target_os = "linux", target_os = "android", gaio_kqueue)))]
compile_error!("gaio supports Linux/Android (epoll) and macOS/iOS/BSD (kqueue) only");

mod affinity;
mod io;
#[cfg(target_os = "linux")]
pub mod uring;

pub use affinity::{current_thread_affinity, pin_current_thread};
pub use io::{
    AcceptError, FdKind, accept, connect_tcp, connect_unix, fd_kind, peer_addr, read, send, sendv,
    set_nonblocking, shutdown_write, take_error, write, writev,
};

/// The most buffers one [`writev`]/[`sendv`] call passes to the kernel. POSIX
/// guarantees at least 16 (`_XOPEN_IOV_MAX`); Linux and the BSDs allow 1024.
pub const IOV_MAX: usize = 64;

/// Milliseconds for a poll timeout: `None` blocks (-1); a nonzero duration under 1 ms
/// rounds up to 1 ms so a short deadline never turns into a busy spin, and anything is
/// rounded up so the poller never wakes before a deadline it was asked to wait for.
pub(crate) fn timeout_ms(timeout: Option<std::time::Duration>) -> i32 {
    match timeout {
        None => -1,
        Some(d) => {
            let ms = d.as_nanos().div_ceil(1_000_000);
            ms.min(i32::MAX as u128) as i32
        }
    }
}
