//! The bottom floor: what a finished request looks like to the application
//! ([`Op`], [`Completion`], [`Buffer`]) and a watcher's counters ([`Stats`]).
//! Everything above (engine, queue, watcher) uses these; this module imports
//! nothing of the crate but the leaf types `Conn`, `Error` and `Backend`.

use crate::{Backend, Conn, Result};

/// What a request did.
///
/// ```
/// use gaio_core::Op;
/// assert_ne!(Op::Read, Op::Write);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `read`, `read_timeout`, `read_deadline` or `read_full`.
    Read,
    /// `write`, `write_timeout` or `write_deadline`.
    Write,
    /// `accept`: the new connection is in [`Completion::accepted`].
    Accept,
    /// `connect`: the connection (the completion's `conn`) is connected, or the
    /// error says why not (and the connection is closed).
    Connect,
    /// `shutdown`: the write side is shut down, after every write before it.
    Shutdown,
    /// `close`: every write before it went out and the connection is closed.
    Close,
    /// `writable`: the connection's queued write bytes are at or below its low
    /// watermark (see [`Flow`](crate::Flow)).
    Writable,
}

/// What a completion hands back.
///
/// ```
/// # use gaio_core::Buffer;
/// fn reuse(b: Buffer<'_>, spare: &mut Vec<Vec<u8>>) {
///     if let Buffer::Owned(mut v) = b {
///         v.clear();
///         spare.push(v); // the next write's buffer, without allocating
///     }
/// }
/// # reuse(Buffer::Owned(vec![1]), &mut Vec::new());
/// ```
#[derive(Debug)]
pub enum Buffer<'a> {
    /// The caller's own buffer, with the length it was submitted with; the
    /// completion's `size` says how much of it was filled (reads) or sent (writes).
    Owned(Vec<u8>),
    /// The shared buffer a write was given ([`WriteBuf::Shared`](crate::WriteBuf)).
    Shared(std::sync::Arc<[u8]>),
    /// The bytes a swap-buffer read received (exactly `size` bytes), borrowed from
    /// the watcher until the next `wait_io`.
    Swap(&'a [u8]),
    /// An accepted connection, already registered on this watcher, and its peer
    /// (`None` for a Unix socket). Boxed so every other completion stays small;
    /// [`Completion::accepted`] copies both out.
    Accepted {
        /// The new connection.
        conn: Conn,
        /// The client's address, for TCP.
        peer: Option<Box<std::net::SocketAddr>>,
    },
    /// Nothing: a request that carried no buffer (connect, shutdown, close).
    None,
}

/// One finished request, from [`Watcher::wait_io`](crate::Watcher::wait_io).
///
/// ```
/// use std::io::Write;
/// use gaio_core::{Op, Requests, Watcher};
///
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
/// let mut w: Watcher<u8> = Watcher::new()?;
/// let conn = w.register(listener.accept()?.0)?;
/// w.local().read(conn, 7, None)?;
/// client.write_all(b"abc")?;
/// let res = w.wait_io()?.next().unwrap();
/// assert_eq!((res.op, res.conn, res.ctx, res.size), (Op::Read, conn, 7, 3));
/// assert!(res.result.is_ok() && !res.is_eof());
/// assert_eq!(res.data(), b"abc");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Completion<'a, C> {
    /// What the request did.
    pub op: Op,
    /// The connection the request was on (for an accept: the listener).
    pub conn: Conn,
    /// The value given at submission, unchanged.
    pub ctx: C,
    /// Bytes transferred, also when `result` is an error (deadline, free, reset).
    /// 0 with `Ok` on a read means EOF.
    pub size: usize,
    /// `Ok` or why the request ended early.
    pub result: Result<()>,
    /// The caller's buffer, the swap-buffer bytes, or the accepted connection.
    pub buffer: Buffer<'a>,
}

impl<'a, C> Completion<'a, C> {
    /// The bytes transferred: `buffer[..size]` (empty for accept, connect,
    /// shutdown and close).
    pub fn data(&self) -> &[u8] {
        match &self.buffer {
            Buffer::Owned(v) => &v[..self.size],
            Buffer::Shared(b) => &b[..self.size],
            Buffer::Swap(s) => s,
            Buffer::Accepted { .. } | Buffer::None => &[],
        }
    }

    /// Takes the caller's buffer back (`None` unless it was a `Vec`).
    pub fn into_vec(self) -> Option<Vec<u8>> {
        match self.buffer {
            Buffer::Owned(v) => Some(v),
            _ => None,
        }
    }

    /// The connection an accept produced, and its peer.
    pub fn accepted(&self) -> Option<(Conn, Option<std::net::SocketAddr>)> {
        match &self.buffer {
            Buffer::Accepted { conn, peer } => Some((*conn, peer.as_deref().copied())),
            _ => None,
        }
    }

    /// A successful read of 0 bytes: the peer will send nothing more.
    pub fn is_eof(&self) -> bool {
        self.op == Op::Read && self.size == 0 && self.result.is_ok()
    }
}

/// A cheap snapshot of a watcher's counters, from [`Watcher::stats`](crate::Watcher::stats) (or, from
/// any thread, [`Submitter::stats`](crate::Submitter::stats)).
///
/// ```
/// let w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
/// let st: gaio_core::Stats = w.stats();
/// assert_eq!((st.conns, st.pending_reads, st.completions), (0, 0, 0));
/// # Ok::<(), gaio_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Registered connections not yet freed.
    pub conns: usize,
    /// Read requests accepted and not yet completed.
    pub pending_reads: usize,
    /// Write requests accepted and not yet completed.
    pub pending_writes: usize,
    /// Deadlines armed.
    pub timers: usize,
    /// Completions produced since the watcher was built.
    pub completions: u64,
    /// Connections freed since the watcher was built (by `free` or `free_all`).
    pub freed: u64,
    /// System calls the watcher made on its own thread (poll, read, write, close).
    pub syscalls: u64,
    /// Bytes queued for writing and not sent yet, all connections together.
    pub queued_write_bytes: usize,
    /// Connections not writable now: their queued bytes went above the high
    /// watermark and have not fallen to the low one (see [`Flow`](crate::Flow)).
    pub unwritable_conns: usize,
    /// The backend the watcher runs on (`Epoll` or `IoUring`, never `Auto`).
    pub backend: Backend,
    /// Completions the kernel reported lost (io_uring: a completion queue
    /// overflow it could not buffer; the watcher bounds operations in flight by
    /// the queue's size, so this stays 0 unless the kernel ran out of memory).
    /// Requests whose completion was lost never complete; this says so.
    pub lost_completions: u64,
}
