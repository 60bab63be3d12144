use std::fmt;
use std::io;

/// Everything a gaio request or call can fail with.
///
/// ```
/// use gaio_core::Error;
/// let e = Error::Deadline;
/// assert!(e.is_deadline());
/// assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
/// assert_eq!(e.to_string(), "deadline exceeded");
/// let io: std::io::Error = e.into(); // for code that speaks std::io
/// # let _ = io;
/// ```
///
/// EOF on a read is not an error: it completes with `Ok` and size 0, as in
/// `std::io::Read`. A [`read_full`](crate::Requests::read_full) that meets EOF before
/// its buffer is full completes with `Io` of kind [`io::ErrorKind::UnexpectedEof`],
/// like `read_exact`.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The OS reported an error (connection reset, broken pipe, …).
    Io(io::Error),
    /// The request's deadline passed before it finished; the completion's `size`
    /// says how many bytes moved before that.
    Deadline,
    /// The connection was freed (before or while this request was pending) or
    /// the `Conn` is stale.
    ConnClosed,
    /// The `Conn` belongs to another watcher: refused at once. (A pool routes such
    /// requests to the owner; a bare watcher cannot.)
    ForeignConn,
    /// The watcher was closed or dropped.
    WatcherClosed,
    /// A write, `read_full`, or `read` with `Some(buffer)` was given an empty buffer.
    EmptyBuffer,
    /// The fd is not a stream socket or pipe (e.g. a regular file, which epoll
    /// refuses, or a datagram socket).
    Unsupported,
    /// The CPU core asked for does not exist or is not available to this process.
    InvalidCpu(usize),
    /// The write would take the bytes queued on its connection — accepted and
    /// not yet taken by the kernel, those of the current batch included — past
    /// the watcher's [`write_limit`](crate::Builder::write_limit) (or 4 GiB):
    /// the peer is not reading fast enough. Refused at once on the watcher's
    /// thread; a `Submitter` write completes with it. (gaio-pool also refuses a
    /// message with it past its message limit.) Producing only while the
    /// connection [is writable](crate::Flow) keeps a server clear of it.
    WriteLimit,
}

impl Error {
    /// Whether this is [`Error::Deadline`].
    pub fn is_deadline(&self) -> bool {
        matches!(self, Error::Deadline)
    }

    /// The `io::ErrorKind` this error maps to, for code that speaks `std::io`.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Error::Io(e) => e.kind(),
            Error::Deadline => io::ErrorKind::TimedOut,
            Error::ConnClosed | Error::WatcherClosed => io::ErrorKind::NotConnected,
            Error::ForeignConn => io::ErrorKind::InvalidInput,
            Error::EmptyBuffer | Error::InvalidCpu(_) => io::ErrorKind::InvalidInput,
            Error::Unsupported => io::ErrorKind::Unsupported,
            Error::WriteLimit => io::ErrorKind::WouldBlock,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "i/o error: {e}"),
            Error::Deadline => f.write_str("deadline exceeded"),
            Error::ConnClosed => f.write_str("connection closed (freed or stale)"),
            Error::ForeignConn => f.write_str("connection belongs to another watcher"),
            Error::WatcherClosed => f.write_str("watcher closed"),
            Error::EmptyBuffer => f.write_str("empty buffer"),
            Error::Unsupported => f.write_str("fd is not a pollable stream socket or pipe"),
            Error::InvalidCpu(c) => write!(f, "cpu core {c} does not exist"),
            Error::WriteLimit => f.write_str("write limit of the connection reached"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e {
            Error::Io(e) => e,
            other => io::Error::new(other.kind(), other),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
