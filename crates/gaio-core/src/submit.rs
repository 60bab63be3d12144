//! The two ways into a watcher: [`Local`] on the watcher's own thread (the hot
//! path: straight into the connection's queue) and [`Submitter`] from any thread
//! (through the cross-thread queue, see `queue.rs`). Both take the same
//! requests, the [`Requests`] trait's methods; each supplies only its path
//! (`submit`, `connect_fd`, `free`), and with it the rules that differ.

use std::cell::{RefCell, RefMut};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use crate::engine::Engine;
use crate::queue::{Cmd, ConnCounts, Shared};
use crate::req::{Buf, Kind};
use crate::{Conn, Error, Request, Requests, Result, Stats};

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
/// Its requests are the [`Requests`] methods (bring the trait into scope). A
/// request the watcher would refuse is refused at once with `Err`, a write past
/// the [write limit](crate::Builder::write_limit) included.
///
/// # Examples
///
/// The completion loop of an echo server: reply and read again through the
/// batch's `Local` while iterating the batch.
///
/// ```
/// use std::io::{Read, Write};
/// use gaio_core::{Op, Requests, Watcher};
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
///             _ => echoed = true,
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

impl<C> Requests<C> for Local<'_, C> {
    /// Refuses at once what the engine refuses (a write past the write limit
    /// included), after applying what other threads submitted first.
    #[inline]
    fn submit(&self, conn: Conn, req: Request<C>) -> Result<()> {
        req.check()?;
        let mut eng = self.engine_for(conn)?;
        if eng.remote_pending() {
            // Requests other threads made first go first.
            eng.run_remote();
        }
        let (req, deadline) = req.into_req();
        eng.submit(conn, req, deadline, true)
    }

    fn connect_fd(&self, fd: OwnedFd, ctx: C, deadline: Option<Instant>) -> Result<Conn> {
        let mut eng = self.engine()?;
        let (conn, fd, kind) = eng.shared.open(fd)?;
        eng.install(conn, fd, kind, true)?;
        let (req, deadline) = Request::new(Kind::Connect, ctx, Buf::None, deadline).into_req();
        eng.submit(conn, req, deadline, true)?;
        Ok(conn)
    }

    fn free(&self, conn: Conn) -> Result<()> {
        let mut eng = self.engine_for(conn)?;
        if eng.remote_pending() {
            eng.run_remote();
        }
        eng.free(conn);
        Ok(())
    }
}

impl<'w, C> Local<'w, C> {
    /// The engine, unless the watcher is closed.
    #[inline]
    fn engine(&self) -> Result<RefMut<'w, Engine<C>>> {
        let eng = self.eng.borrow_mut();
        if eng.closed {
            return Err(Error::WatcherClosed);
        }
        Ok(eng)
    }

    /// The engine, for something on `conn`: refused for a closed watcher or a
    /// `Conn` of another watcher.
    #[inline]
    fn engine_for(&self, conn: Conn) -> Result<RefMut<'w, Engine<C>>> {
        let eng = self.engine()?;
        if conn.watcher != eng.shared.id {
            return Err(Error::ForeignConn);
        }
        Ok(eng)
    }

    /// Takes `conn` out of the watcher and hands its socket back, open and
    /// nonblocking, as `mio`'s `deregister` or tokio's `into_std` do: to pass a
    /// connection to another watcher, thread or library. Requests still pending
    /// on it complete with [`Error::ConnClosed`] (nothing was lost in flight: a
    /// read that had taken bytes has completed already); requests made later on
    /// the `Conn` are treated as on a freed one. Bytes that arrived with no read
    /// pending are still in the socket, on every backend. On io_uring a read
    /// whose operation is out when `detach` is called completes once the
    /// operation comes back — with the bytes it took, if it took any.
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// let (a, mut b) = std::os::unix::net::UnixStream::pair()?;
    /// let w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let conn = w.local().register(a)?;
    /// let fd = w.local().detach(conn)?;
    /// let mut a = std::os::unix::net::UnixStream::from(fd);
    /// a.write_all(b"still open")?;
    /// let mut got = [0; 10];
    /// b.read_exact(&mut got)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ConnClosed`] for a stale or freed `Conn`; [`Error::ForeignConn`];
    /// [`Error::WatcherClosed`].
    pub fn detach(&self, conn: Conn) -> Result<OwnedFd> {
        let mut eng = self.engine_for(conn)?;
        if eng.remote_pending() {
            // A registration other threads made first goes first.
            eng.run_remote();
        }
        eng.detach(conn)
    }

    /// Takes a stream socket, listener or pipe over, as
    /// [`Watcher::register`](crate::Watcher::register) does.
    ///
    /// ```
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let (a, _b) = std::os::unix::net::UnixStream::pair()?;
    /// let conn = w.local().register(a)?;
    /// # let _ = conn;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Watcher::register`](crate::Watcher::register).
    pub fn register(&self, fd: impl Into<OwnedFd>) -> Result<Conn> {
        let mut eng = self.engine()?;
        let (conn, fd, kind) = eng.shared.open(fd.into())?;
        eng.install(conn, fd, kind, false)?;
        Ok(conn)
    }

    /// Bytes queued for writing on `conn` and not sent yet (0 for a stale
    /// `Conn`): what [`write_limit`](crate::Builder::write_limit) bounds.
    ///
    /// ```
    /// # use gaio_core::Requests;
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let _client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// w.local().write(conn, (), vec![0; 100])?;
    /// assert_eq!(w.local().queued(conn), 100); // until the next wait_io sends it
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn queued(&self, conn: Conn) -> usize {
        let mut eng = self.eng.borrow_mut();
        if conn.watcher != eng.shared.id {
            return 0;
        }
        eng.table
            .live_mut(conn.slot, conn.generation)
            .map_or(0, |c| c.queued as usize)
    }

    /// Whether `conn` is writable: its queued bytes have not gone above the
    /// high watermark of its [`Flow`](crate::Flow), or have fallen back to the low one
    /// since (`false` for a stale `Conn` or another watcher's). Produce more
    /// for it while it is; when it is not, a
    /// [`writable`](Requests::writable) request says when it is again.
    ///
    /// ```
    /// # use gaio_core::{Flow, Requests};
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let _client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::builder()
    ///     .flow(Flow::new(100, 1000))
    ///     .build()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// let io = w.local();
    /// io.write(conn, (), vec![0; 1000])?;
    /// assert!(io.is_writable(conn)); // at the high watermark, not above
    /// io.write(conn, (), vec![0; 1])?;
    /// assert!(!io.is_writable(conn));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_writable(&self, conn: Conn) -> bool {
        self.eng.borrow_mut().is_writable(conn)
    }

    /// Gives `conn` watermarks of its own, instead of the watcher's
    /// ([`Builder::flow`](crate::Builder::flow)); they apply at once to what is
    /// queued now (a waiting [`writable`](Requests::writable) request may
    /// complete, paused reads may go on). A watcher holds up to 256 different
    /// flows.
    ///
    /// ```
    /// # use gaio_core::{Flow, Requests};
    /// # let (a, _b) = std::os::unix::net::UnixStream::pair()?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(a)?;
    /// // A bulk peer: more in flight before it counts as slow.
    /// w.local().set_flow(conn, Flow::new(1 << 20, 4 << 20))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ConnClosed`] for a stale `Conn` or another watcher's;
    /// [`Error::WatcherClosed`]; [`Error::Io`] of kind `InvalidInput` past 256
    /// different flows.
    pub fn set_flow(&self, conn: Conn, flow: crate::Flow) -> Result<()> {
        self.engine()?.set_flow(conn, flow)
    }
}

/// A handle for submitting requests to a [`Watcher`](crate::Watcher) from any thread.
///
/// `Clone + Send + Sync` (for `C: Send`). Submitting never blocks and makes no system
/// call unless the watcher is parked in the poller, in which case the first
/// submission wakes it. Requests travel through a lock-free queue (which allocates
/// a block per 31 submissions) and are applied at the watcher's next turn. On the
/// watcher's own thread a [`Local`] is cheaper; a `Submitter` works there too.
/// Its requests are the [`Requests`] methods (bring the trait into scope).
/// Requests are refused at once (`Err`, the request is dropped) only for an empty
/// buffer, a `Conn` of another watcher or a closed watcher; everything accepted
/// completes exactly once through `wait_io` — a write past the
/// [write limit](crate::Builder::write_limit) completes with
/// [`Error::WriteLimit`], as the watcher only knows when it applies it.
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
/// use std::time::Duration;
/// use gaio_core::{Op, Requests, Watcher};
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

impl<C> Requests<C> for Submitter<C> {
    /// Refuses only what it can know without the watcher; the rest (a write
    /// past the write limit, a stale `Conn`) completes with its error.
    #[inline]
    fn submit(&self, conn: Conn, req: Request<C>) -> Result<()> {
        if conn.watcher != self.shared.id {
            return Err(Error::ForeignConn);
        }
        req.check()?;
        let (req, deadline) = req.into_req();
        self.shared.push(Cmd::Submit {
            conn,
            req,
            deadline,
        })
    }

    fn connect_fd(&self, fd: OwnedFd, ctx: C, deadline: Option<Instant>) -> Result<Conn> {
        let (conn, fd, kind) = self.shared.open(fd)?;
        self.shared.push(Cmd::Register(conn, fd, kind, true))?;
        self.submit(conn, Request::new(Kind::Connect, ctx, Buf::None, deadline))?;
        Ok(conn)
    }

    fn free(&self, conn: Conn) -> Result<()> {
        if conn.watcher != self.shared.id {
            return Err(Error::ForeignConn);
        }
        self.shared.push(Cmd::Free(conn))
    }
}

impl<C> Submitter<C> {
    /// Hands a stream socket, listener or pipe to the watcher, from any thread.
    /// It is made nonblocking; every socket option already set is kept. The
    /// watcher adds it to its poller at its next turn; requests submitted after
    /// this call are ordered after it. Should the poller refuse it then (the
    /// kernel is out of memory for watches), the fd is closed, an error is
    /// logged, and requests on the `Conn` complete with [`Error::ConnClosed`].
    ///
    /// ```
    /// # let w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let tx = w.submitter();
    /// let (a, _b) = std::os::unix::net::UnixStream::pair()?;
    /// let conn = std::thread::spawn(move || tx.register(a)).join().unwrap()?;
    /// # let _ = conn;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Unsupported`] for anything but a stream socket or pipe (the fd is
    /// closed), [`Error::WatcherClosed`], or the OS error from `fstat`/`fcntl`.
    pub fn register(&self, fd: impl Into<OwnedFd>) -> Result<Conn> {
        let (conn, fd, kind) = self.shared.open(fd.into())?;
        self.shared.push(Cmd::Register(conn, fd, kind, false))?;
        Ok(conn)
    }

    /// The watcher's process-unique id, as [`Conn::watcher`] carries it.
    ///
    /// ```
    /// let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let (a, _b) = std::os::unix::net::UnixStream::pair()?;
    /// assert_eq!(w.register(a)?.watcher(), w.submitter().id());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn id(&self) -> u32 {
        self.shared.id
    }

    /// Makes the watcher's current (or next) `wait_io` return, with an empty batch if
    /// nothing completed: for a thread that drives the watcher and also has other
    /// work to pick up, such as new connections handed over by an acceptor.
    ///
    /// ```
    /// let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let tx = w.submitter();
    /// std::thread::spawn(move || tx.wake()).join().unwrap()?;
    /// assert_eq!(w.wait_io()?.count(), 0); // returns at once, empty
    /// # Ok::<(), gaio_core::Error>(())
    /// ```
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
    /// use gaio_core::Requests;
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
    ///
    /// ```
    /// let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let counts = w.submitter().conn_counts();
    /// let (a, _b) = std::os::unix::net::UnixStream::pair()?;
    /// w.register(a)?;
    /// assert_eq!(counts.live(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn conn_counts(&self) -> ConnCounts {
        self.shared.counts.clone()
    }

    /// Whether the watcher has been closed or dropped.
    ///
    /// ```
    /// let w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let tx = w.submitter();
    /// drop(w);
    /// assert!(tx.is_closed());
    /// # Ok::<(), gaio_core::Error>(())
    /// ```
    pub fn is_closed(&self) -> bool {
        self.shared
            .closed
            .load(std::sync::atomic::Ordering::Acquire)
    }
}
