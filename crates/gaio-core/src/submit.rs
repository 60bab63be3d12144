//! The two ways to make a request: [`Local`] on the watcher's own thread (the hot
//! path: straight into the connection's queue) and [`Submitter`] from any thread
//! (through the cross-thread queue, see `queue.rs`). Both accept the same requests
//! with the same rules; only the path differs.

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use crate::engine::Engine;
use crate::queue::{Cmd, ConnCounts, Shared};
use crate::req::{Kind, Req, check_buf};
use crate::{Conn, Error, Result, Stats};

/// A handle for making requests on the watcher's own thread, from inside the
/// completion loop or between `wait_io` calls: the hot path. A request goes
/// straight into its connection's queue — no atomic read-modify-write, no lock, no
/// copy through a queue — and is tried at the watcher's next turn (requests on one
/// connection made in one batch leave in one `writev`).
///
/// Get one from the batch ([`Completions::local`](crate::Completions::local)) or
/// from the watcher ([`Watcher::local`](crate::Watcher::local)). It borrows the
/// watcher, so it cannot outlive the batch or cross threads; use a
/// [`Submitter`] for other threads. Requests keep the order they were made in,
/// also relative to requests other threads made before (happens-before): those
/// are applied first.
///
/// # Examples
///
/// The completion loop of an echo server: reply and read again through the
/// batch's `Local` while iterating the batch.
///
/// ```
/// use std::io::{Read, Write};
/// use gaio_core::{Op, Watcher};
///
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
/// let (server, _) = listener.accept()?;
///
/// let mut w: Watcher<()> = Watcher::new()?;
/// let conn = w.register(server)?;
/// w.local().read(conn, (), None)?;
/// client.write_all(b"ping")?;
/// let mut echoed = false;
/// while !echoed {
///     let batch = w.wait_io()?;
///     let io = batch.local();
///     for res in batch {
///         match res.op {
///             Op::Read => io.write(res.conn, (), res.data().to_vec())?,
///             Op::Write => echoed = true,
///         }
///     }
/// }
/// let mut back = [0; 4];
/// client.read_exact(&mut back)?;
/// assert_eq!(&back, b"ping");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Local<'w, C> {
    pub(crate) eng: &'w RefCell<Engine<C>>,
}

impl<C> Clone for Local<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for Local<'_, C> {}

impl<C> Local<'_, C> {
    fn submit(
        &self,
        conn: Conn,
        ctx: C,
        buf: Option<Vec<u8>>,
        kind: Kind,
        deadline: Option<Instant>,
    ) -> Result<()> {
        check_buf(buf.as_ref(), kind)?;
        let mut eng = self.eng.borrow_mut();
        if eng.closed {
            return Err(Error::WatcherClosed);
        }
        if conn.watcher != eng.shared.id {
            return Err(Error::ConnClosed);
        }
        if eng.remote_pending() {
            // Requests other threads made first go first.
            eng.run_remote();
        }
        eng.submit(conn, Req::new(buf, ctx, kind), deadline);
        Ok(())
    }

    /// Reads whatever is available, at least one byte (or EOF: `Ok` with size 0).
    /// `None` reads into the watcher's swap buffer, borrowed by the completion until
    /// the next `wait_io`; `Some(buf)` reads into `buf[..buf.len()]` and hands `buf`
    /// back.
    ///
    /// # Errors
    /// [`Error::EmptyBuffer`] for `Some` of an empty buffer; [`Error::WatcherClosed`];
    /// [`Error::ConnClosed`] for a `Conn` of another watcher (a stale `Conn` of
    /// this one is accepted and completes with `ConnClosed`).
    pub fn read(&self, conn: Conn, ctx: C, buf: Option<Vec<u8>>) -> Result<()> {
        self.submit(conn, ctx, buf, Kind::Read, None)
    }

    /// [`read`](Self::read) that completes with [`Error::Deadline`] if nothing was
    /// read by `deadline`.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub fn read_timeout(
        &self,
        conn: Conn,
        ctx: C,
        buf: Option<Vec<u8>>,
        deadline: Instant,
    ) -> Result<()> {
        self.submit(conn, ctx, buf, Kind::Read, Some(deadline))
    }

    /// Reads until `buf` is full. Completes early only on an error, the deadline
    /// (`Error::Deadline`), or EOF (`Io` of kind `UnexpectedEof`), reporting the
    /// bytes read so far in `size`.
    ///
    /// # Errors
    /// [`Error::EmptyBuffer`]; [`Error::WatcherClosed`].
    pub fn read_full(
        &self,
        conn: Conn,
        ctx: C,
        buf: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<()> {
        self.submit(conn, ctx, Some(buf), Kind::ReadFull, deadline)
    }

    /// Writes all of `buf`; completes when every byte is written (or on error).
    /// Writes queued on one connection go out in order, several per `writev`.
    ///
    /// # Errors
    /// [`Error::EmptyBuffer`]; [`Error::WatcherClosed`].
    pub fn write(&self, conn: Conn, ctx: C, buf: Vec<u8>) -> Result<()> {
        self.submit(conn, ctx, Some(buf), Kind::Write, None)
    }

    /// [`write`](Self::write) that completes with [`Error::Deadline`] (and the count
    /// written so far) if not finished by `deadline`.
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn write_timeout(&self, conn: Conn, ctx: C, buf: Vec<u8>, deadline: Instant) -> Result<()> {
        self.submit(conn, ctx, Some(buf), Kind::Write, Some(deadline))
    }

    /// Closes the connection at the watcher's next turn, once the requests made
    /// before this call had their chance to move. Every request still pending then
    /// completes with [`Error::ConnClosed`]; requests made after this call complete
    /// with `ConnClosed` too, even once the slot and fd number are reused. Freeing
    /// twice, or a stale `Conn`, is harmless.
    ///
    /// # Errors
    /// [`Error::WatcherClosed`].
    pub fn free(&self, conn: Conn) -> Result<()> {
        let mut eng = self.eng.borrow_mut();
        if eng.closed {
            return Err(Error::WatcherClosed);
        }
        if eng.remote_pending() {
            eng.run_remote();
        }
        eng.free(conn);
        Ok(())
    }

    /// Takes a stream socket or pipe over, as
    /// [`Watcher::register`](crate::Watcher::register) does.
    ///
    /// # Errors
    /// As [`Watcher::register`](crate::Watcher::register).
    pub fn register(&self, fd: impl Into<OwnedFd>) -> Result<Conn> {
        let mut eng = self.eng.borrow_mut();
        if eng.closed {
            return Err(Error::WatcherClosed);
        }
        let (conn, fd, kind) = eng.shared.open(fd.into())?;
        eng.install(conn, fd, kind)?;
        Ok(conn)
    }
}

/// A handle for submitting requests to a [`Watcher`](crate::Watcher) from any thread.
///
/// `Clone + Send + Sync` (for `C: Send`). Submitting never blocks and makes no system
/// call unless the watcher is parked in the poller, in which case the first
/// submission wakes it. Requests travel through a lock-free queue (which allocates
/// a block per 31 submissions) and are applied at the watcher's next turn. On the
/// watcher's own thread a [`Local`] is cheaper; a `Submitter` works there too.
/// Requests are refused at once (`Err`, the request is dropped) only for an empty
/// buffer or a closed watcher; everything accepted completes exactly once through
/// `wait_io`.
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
/// use std::time::Duration;
/// use gaio_core::{Op, Watcher};
///
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
/// let (server, _) = listener.accept()?;
///
/// let mut w: Watcher<u32> = Watcher::new()?;
/// let tx = w.submitter();
/// let conn = w.register(server)?;
/// std::thread::spawn(move || tx.read(conn, 1, None)).join().unwrap()?;
/// client.write_all(b"hi")?;
/// let res = w.wait_io()?.next().unwrap();
/// assert_eq!((res.op, res.ctx, res.data()), (Op::Read, 1, &b"hi"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Submitter<C> {
    pub(crate) shared: Arc<Shared<C>>,
}

impl<C> Clone for Submitter<C> {
    fn clone(&self) -> Self {
        Submitter {
            shared: self.shared.clone(),
        }
    }
}

impl<C> Submitter<C> {
    fn submit(
        &self,
        conn: Conn,
        ctx: C,
        buf: Option<Vec<u8>>,
        kind: Kind,
        deadline: Option<Instant>,
    ) -> Result<()> {
        if conn.watcher != self.shared.id {
            return Err(Error::ConnClosed);
        }
        check_buf(buf.as_ref(), kind)?;
        self.shared.push(Cmd::Submit {
            conn,
            req: Req::new(buf, ctx, kind),
            deadline,
        })
    }

    /// Hands a stream socket or pipe to the watcher, from any thread. It is made
    /// nonblocking; every socket option already set is kept. The watcher adds it to
    /// its poller at its next `wait_io`; requests submitted after this call are
    /// ordered after it. Should the poller refuse it then (the kernel is out of
    /// memory for watches), the fd is closed, an error is logged, and requests on the
    /// `Conn` complete with [`Error::ConnClosed`].
    ///
    /// # Errors
    /// [`Error::Unsupported`] for anything but a stream socket or pipe (the fd is
    /// closed), [`Error::WatcherClosed`], or the OS error from `fstat`/`fcntl`.
    pub fn register(&self, fd: impl Into<OwnedFd>) -> Result<Conn> {
        let (conn, fd, kind) = self.shared.open(fd.into())?;
        self.shared.push(Cmd::Register(conn, fd, kind))?;
        Ok(conn)
    }

    /// As [`Local::read`].
    ///
    /// # Errors
    /// [`Error::EmptyBuffer`] for `Some` of an empty buffer; [`Error::WatcherClosed`];
    /// [`Error::ConnClosed`] for a `Conn` of another watcher.
    pub fn read(&self, conn: Conn, ctx: C, buf: Option<Vec<u8>>) -> Result<()> {
        self.submit(conn, ctx, buf, Kind::Read, None)
    }

    /// As [`Local::read_timeout`].
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub fn read_timeout(
        &self,
        conn: Conn,
        ctx: C,
        buf: Option<Vec<u8>>,
        deadline: Instant,
    ) -> Result<()> {
        self.submit(conn, ctx, buf, Kind::Read, Some(deadline))
    }

    /// As [`Local::read_full`].
    ///
    /// # Errors
    /// [`Error::EmptyBuffer`]; [`Error::WatcherClosed`]; [`Error::ConnClosed`] for a
    /// `Conn` of another watcher.
    pub fn read_full(
        &self,
        conn: Conn,
        ctx: C,
        buf: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<()> {
        self.submit(conn, ctx, Some(buf), Kind::ReadFull, deadline)
    }

    /// As [`Local::write`].
    ///
    /// # Errors
    /// [`Error::EmptyBuffer`]; [`Error::WatcherClosed`]; [`Error::ConnClosed`] for a
    /// `Conn` of another watcher.
    pub fn write(&self, conn: Conn, ctx: C, buf: Vec<u8>) -> Result<()> {
        self.submit(conn, ctx, Some(buf), Kind::Write, None)
    }

    /// As [`Local::write_timeout`].
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn write_timeout(&self, conn: Conn, ctx: C, buf: Vec<u8>, deadline: Instant) -> Result<()> {
        self.submit(conn, ctx, Some(buf), Kind::Write, Some(deadline))
    }

    /// As [`Local::free`], applied at the watcher's next turn.
    ///
    /// # Errors
    /// [`Error::WatcherClosed`]; [`Error::ConnClosed`] for a `Conn` of another
    /// watcher.
    pub fn free(&self, conn: Conn) -> Result<()> {
        if conn.watcher != self.shared.id {
            return Err(Error::ConnClosed);
        }
        self.shared.push(Cmd::Free(conn))
    }

    /// Makes the watcher's current (or next) `wait_io` return, with an empty batch if
    /// nothing completed: for a thread that drives the watcher and also has other
    /// work to pick up, such as new connections handed over by an acceptor.
    ///
    /// # Errors
    /// [`Error::WatcherClosed`].
    pub fn wake(&self) -> Result<()> {
        self.shared.push(Cmd::Wake)
    }

    /// The watcher's counters as it published them, from any thread: at the end
    /// of every `wait_io` batch and whenever it parks in the poller — so an idle
    /// watcher's figures include every request it has taken in. On the watcher's
    /// own thread, [`Watcher::stats`](crate::Watcher::stats) is exact.
    ///
    /// ```
    /// use std::time::Duration;
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let _client = std::net::TcpStream::connect(listener.local_addr()?)?;
    /// let (server, _) = listener.accept()?;
    /// let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let tx = w.submitter();
    /// let conn = w.register(server)?;
    /// tx.read(conn, (), None)?;
    /// assert_eq!(w.wait_io_timeout(Duration::from_millis(1))?.count(), 0);
    /// // The watcher parked with the read pending, and said so.
    /// assert_eq!(tx.stats().pending_reads, 1);
    /// assert_eq!(tx.stats().conns, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Stats {
        self.shared.published()
    }

    /// The watcher's live-connection count, readable from any thread.
    pub fn conn_counts(&self) -> ConnCounts {
        self.shared.counts.clone()
    }

    /// Whether the watcher has been closed or dropped.
    pub fn is_closed(&self) -> bool {
        self.shared
            .closed
            .load(std::sync::atomic::Ordering::Acquire)
    }
}
