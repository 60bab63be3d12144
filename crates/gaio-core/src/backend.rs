//! Which kernel interface a watcher drives: readiness (epoll, kqueue) or
//! completions (io_uring), chosen at build time of the watcher, at run time of
//! the program.

use std::fmt;
use std::str::FromStr;

/// The kernel interface of a watcher, set with
/// [`Builder::backend`](crate::Builder::backend). Every request means the same
/// on each; they differ in cost.
///
/// * `Epoll`: edge-triggered epoll on Linux, kqueue on BSD and macOS. The
///   default, available everywhere.
/// * `IoUring`: Linux io_uring (kernel 6.1 or later, io_uring permitted):
///   reads, writes and accepts are submitted to the kernel and many are
///   reaped per system call; swap-buffer reads land in a ring of provided
///   buffers. A watcher asking for it where it is not available fails to build
///   with [`Error::Unsupported`](crate::Error::Unsupported).
/// * `Auto`: `IoUring` where the kernel offers everything the driver needs and
///   permits it (`kernel.io_uring_disabled`, seccomp, containers), else
///   `Epoll`; decided when the watcher is built, never a panic.
///   [`Stats::backend`](crate::Stats::backend) says which one it got.
///
/// What differs on io_uring: the thread that first calls `wait_io` is the
/// ring's one issuer (`SINGLE_ISSUER`); driving the watcher from another thread
/// afterwards (`wait_io`, `free`, `close`) fails with a clear error. Every
/// operation is single-shot, as on epoll: bytes that arrive while no read is
/// pending stay in the socket, and a cancelled request (`free`, `close`, a
/// deadline) completes when the kernel hands its buffer back, a turn later at
/// most. An accepted connection's peer address costs a `getpeername` (the
/// accept's completion carries none). See `docs/io_uring.md`.
///
/// A builder that is not told uses the `GAIO_BACKEND` environment variable
/// (`auto`, `epoll` or `uring`) when it is set, else `Epoll`: how one test
/// suite runs on both backends.
///
/// ```
/// use gaio_core::{Backend, Watcher};
/// let w: Watcher<()> = Watcher::builder().backend(Backend::Auto).build()?;
/// assert_ne!(w.stats().backend, Backend::Auto); // what it resolved to
/// assert_eq!("uring".parse::<Backend>(), Ok(Backend::IoUring));
/// # Ok::<(), gaio_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// io_uring where available, else epoll/kqueue.
    Auto,
    /// Edge-triggered epoll (Linux) or kqueue (BSD, macOS).
    #[default]
    Epoll,
    /// Linux io_uring; refused where the kernel does not offer it.
    IoUring,
}

impl Backend {
    /// What a builder uses when not told: `GAIO_BACKEND` if set and valid,
    /// else `Epoll`. An invalid value is reported (tracing) and ignored.
    pub fn from_env() -> Backend {
        match std::env::var("GAIO_BACKEND") {
            Ok(v) if !v.is_empty() => v.parse().unwrap_or_else(|e| {
                tracing::warn!(value = %v, error = %e, "gaio: GAIO_BACKEND ignored");
                Backend::Epoll
            }),
            _ => Backend::Epoll,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::Epoll => "epoll",
            Backend::IoUring => "uring",
        })
    }
}

/// A backend name that is none of `auto`, `epoll`, `kqueue`, `uring`, `io_uring`,
/// `io-uring`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseBackendError(String);

impl fmt::Display for ParseBackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown backend {:?} (expected auto, epoll or uring)",
            self.0
        )
    }
}

impl std::error::Error for ParseBackendError {}

impl FromStr for Backend {
    type Err = ParseBackendError;

    fn from_str(s: &str) -> Result<Backend, ParseBackendError> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Backend::Auto),
            "epoll" | "kqueue" | "poll" => Ok(Backend::Epoll),
            "uring" | "io_uring" | "io-uring" | "iouring" => Ok(Backend::IoUring),
            _ => Err(ParseBackendError(s.to_string())),
        }
    }
}
