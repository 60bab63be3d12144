//! The two ways to make a request: [`Local`] on the watcher's own thread (the hot
//! path: straight into the connection's queue) and [`Submitter`] from any thread
//! (through the cross-thread queue, see `queue.rs`). Both accept the same requests
//! with the same rules; only the path differs.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::Engine;
use crate::queue::{Cmd, ConnCounts, Shared};
use crate::req::{Buf, Kind, Req, check_buf};
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

impl<C> Local<'_, C> {
    fn submit(
        &self,
        conn: Conn,
        ctx: C,
        buf: Buf,
        kind: Kind,
        deadline: Option<Instant>,
    ) -> Result<()> {
        check_buf(&buf, kind)?;
        let mut eng = self.eng.borrow_mut();
        if eng.closed {
            return Err(Error::WatcherClosed);
        }
        if conn.watcher != eng.shared.id {
            return Err(Error::ForeignConn);
        }
        let remote = eng.remote_pending();
        if remote || kind == Kind::Close {
            // Either may wait for the kernel (io_uring): only on its thread.
            eng.driver.check_thread()?;
        }
        if remote {
            // Requests other threads made first go first.
            eng.run_remote();
        }
        eng.submit(conn, Req::new(buf, ctx, kind), deadline, true)
    }

    /// Reads whatever is available, at least one byte (or EOF: `Ok` with size 0).
    /// `None` reads into the watcher's swap buffer, borrowed by the completion until
    /// the next `wait_io`; `Some(buf)` reads into `buf[..buf.len()]` and hands `buf`
    /// back.
    ///
    /// ```
    /// # use std::io::Write;
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let mut client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// w.local().read(conn, (), None)?; // into the swap buffer
    /// client.write_all(b"hi")?;
    /// assert_eq!(w.wait_io()?.next().unwrap().data(), b"hi");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::EmptyBuffer`] for `Some` of an empty buffer; [`Error::WatcherClosed`];
    /// [`Error::ForeignConn`] for a `Conn` of another watcher (a stale `Conn` of
    /// this one is accepted and completes with `ConnClosed`).
    pub fn read(&self, conn: Conn, ctx: C, buf: Option<Vec<u8>>) -> Result<()> {
        self.submit(conn, ctx, buf.into(), Kind::Read, None)
    }

    /// [`read`](Self::read) that completes with [`Error::Deadline`] if nothing was
    /// read within `timeout`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let _client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// w.local().read_timeout(conn, (), None, Duration::from_millis(5))?;
    /// let res = w.wait_io()?.next().unwrap();
    /// assert!(matches!(res.result, Err(gaio_core::Error::Deadline)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub fn read_timeout(
        &self,
        conn: Conn,
        ctx: C,
        buf: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<()> {
        self.submit(conn, ctx, buf.into(), Kind::Read, deadline_in(timeout))
    }

    /// [`read`](Self::read) that completes with [`Error::Deadline`] if nothing was
    /// read by `deadline`.
    ///
    /// ```
    /// # use std::time::{Duration, Instant};
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let _client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// let deadline = Instant::now() + Duration::from_millis(5);
    /// w.local().read_deadline(conn, (), Some(vec![0; 64]), deadline)?;
    /// let res = w.wait_io()?.next().unwrap();
    /// assert!(res.result.unwrap_err().is_deadline());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub fn read_deadline(
        &self,
        conn: Conn,
        ctx: C,
        buf: Option<Vec<u8>>,
        deadline: Instant,
    ) -> Result<()> {
        self.submit(conn, ctx, buf.into(), Kind::Read, Some(deadline))
    }

    /// Reads until `buf` is full. Completes early only on an error, the deadline
    /// (`Error::Deadline`), or EOF (`Io` of kind `UnexpectedEof`), reporting the
    /// bytes read so far in `size`.
    ///
    /// ```
    /// # use std::io::Write;
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let mut client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// w.local().read_full(conn, (), vec![0; 4], None)?; // a 4-byte header
    /// client.write_all(b"ab")?;
    /// client.write_all(b"cd")?;
    /// let res = loop {
    ///     if let Some(res) = w.wait_io()?.next() { break res.into_vec().unwrap(); }
    /// };
    /// assert_eq!(res, b"abcd");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::EmptyBuffer`]; [`Error::WatcherClosed`]; [`Error::ForeignConn`] for
    /// a `Conn` of another watcher.
    pub fn read_full(
        &self,
        conn: Conn,
        ctx: C,
        buf: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<()> {
        self.submit(conn, ctx, Buf::Owned(buf), Kind::ReadFull, deadline)
    }

    /// Writes all of `buf` — a `Vec<u8>`, handed back in the completion, or a
    /// shared `Arc<[u8]>` (one allocation for a broadcast to many connections);
    /// completes when every byte is written (or on error). Writes queued on one
    /// connection go out in order, several per `writev`.
    ///
    /// ```
    /// # use std::io::Read;
    /// # use std::sync::Arc;
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let mut client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// let io = w.local();
    /// io.write(conn, (), b"owned ".to_vec())?;
    /// let shared: Arc<[u8]> = Arc::from(&b"shared"[..]); // clone it per recipient
    /// io.write(conn, (), shared.clone())?;
    /// assert_eq!(w.wait_io()?.count(), 2); // both written, in one writev
    /// let mut got = [0; 12];
    /// client.read_exact(&mut got)?;
    /// assert_eq!(&got, b"owned shared");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::EmptyBuffer`]; [`Error::WriteLimit`] when it would take the
    /// connection's queued bytes past the watcher's
    /// [`write_limit`](crate::Builder::write_limit); [`Error::WatcherClosed`];
    /// [`Error::ForeignConn`] for a `Conn` of another watcher.
    pub fn write(&self, conn: Conn, ctx: C, buf: impl Into<WriteBuf>) -> Result<()> {
        self.submit(conn, ctx, buf.into().into(), Kind::Write, None)
    }

    /// [`write`](Self::write) that completes with [`Error::Deadline`] (and the
    /// count written so far) if not finished within `timeout`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let _client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// w.local().write_timeout(conn, (), vec![1; 16], Duration::from_secs(5))?;
    /// assert!(w.wait_io()?.next().unwrap().result.is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn write_timeout(
        &self,
        conn: Conn,
        ctx: C,
        buf: impl Into<WriteBuf>,
        timeout: Duration,
    ) -> Result<()> {
        self.submit(
            conn,
            ctx,
            buf.into().into(),
            Kind::Write,
            deadline_in(timeout),
        )
    }

    /// [`write`](Self::write) that completes with [`Error::Deadline`] (and the
    /// count written so far) if not finished by `deadline`.
    ///
    /// ```
    /// # use std::time::{Duration, Instant};
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let _client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// let deadline = Instant::now() + Duration::from_secs(5);
    /// w.local().write_deadline(conn, (), vec![1; 16], deadline)?;
    /// assert_eq!(w.wait_io()?.next().unwrap().size, 16);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn write_deadline(
        &self,
        conn: Conn,
        ctx: C,
        buf: impl Into<WriteBuf>,
        deadline: Instant,
    ) -> Result<()> {
        self.submit(conn, ctx, buf.into().into(), Kind::Write, Some(deadline))
    }

    /// Accepts one connection on a registered listener (TCP or Unix). It
    /// completes as [`Op::Accept`](crate::Op::Accept) with the new connection,
    /// already registered on this watcher, in
    /// [`Completion::accepted`](crate::Completion::accepted). One request, one
    /// connection: keep accepting by submitting the next accept from the
    /// completion, and keep several pending to take bursts in one turn. Running
    /// out of fds pauses that listener (10 ms, doubling to 1 s) instead of
    /// spinning; freeing the listener stops it (pending accepts complete with
    /// `ConnClosed`).
    ///
    /// ```
    /// use gaio_core::{Op, Watcher};
    /// let mut w: Watcher<()> = Watcher::new()?;
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let addr = listener.local_addr()?;
    /// let l = w.register(listener)?;
    /// w.local().accept(l, ())?;
    /// let _client = std::net::TcpStream::connect(addr)?;
    /// let res = loop {
    ///     if let Some(res) = w.wait_io()?.next() { break res; }
    /// };
    /// assert_eq!(res.op, Op::Accept);
    /// let (conn, peer) = res.accepted().unwrap();
    /// assert_eq!(peer, Some(_client.local_addr()?));
    /// # let _ = conn;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::WatcherClosed`]; [`Error::ForeignConn`] for a `Conn` of another
    /// watcher. An fd that is not a listener completes with the OS's error.
    pub fn accept(&self, listener: Conn, ctx: C) -> Result<()> {
        self.submit(listener, ctx, Buf::None, Kind::Accept, None)
    }

    /// Connects to `addr` without blocking: returns the new connection's `Conn`
    /// at once, and completes as [`Op::Connect`](crate::Op::Connect) once
    /// connected — or with the error (refused, unreachable: `Io`; `deadline`:
    /// [`Error::Deadline`]), the connection then closed and everything queued on
    /// it completed with `ConnClosed`. Requests may be queued on the `Conn` right
    /// away: writes go out once connected.
    ///
    /// ```
    /// use gaio_core::{Op, Watcher};
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let mut w: Watcher<()> = Watcher::new()?;
    /// let conn = w.local().connect(listener.local_addr()?, (), None)?;
    /// w.local().write(conn, (), b"hello".to_vec())?;
    /// let mut ops = Vec::new();
    /// while ops.len() < 2 {
    ///     ops.extend(w.wait_io()?.map(|r| (r.op, r.result.is_ok())));
    /// }
    /// assert_eq!(ops, [(Op::Connect, true), (Op::Write, true)]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// What `socket`/`connect` report at once (e.g. `EMFILE`);
    /// [`Error::WatcherClosed`].
    pub fn connect(&self, addr: SocketAddr, ctx: C, deadline: Option<Instant>) -> Result<Conn> {
        self.connect_fd(gaio_sys::connect_tcp(&addr)?, ctx, deadline)
    }

    /// [`connect`](Self::connect) to the Unix stream socket at `path`.
    ///
    /// ```no_run
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let conn = w.local().connect_unix("/run/app.sock".as_ref(), (), None)?;
    /// # let _ = conn;
    /// # Ok::<(), gaio_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`connect`](Self::connect); `InvalidInput` for a path too long for a
    /// socket address.
    pub fn connect_unix(&self, path: &Path, ctx: C, deadline: Option<Instant>) -> Result<Conn> {
        self.connect_fd(gaio_sys::connect_unix(path)?, ctx, deadline)
    }

    fn connect_fd(&self, fd: OwnedFd, ctx: C, deadline: Option<Instant>) -> Result<Conn> {
        let mut eng = self.eng.borrow_mut();
        if eng.closed {
            return Err(Error::WatcherClosed);
        }
        let (conn, fd, kind) = eng.shared.open(fd)?;
        eng.install(conn, fd, kind, true)?;
        eng.submit(
            conn,
            Req::new(Buf::None, ctx, Kind::Connect),
            deadline,
            true,
        )?;
        Ok(conn)
    }

    /// Shuts the write side down (a half-close: the peer reads EOF) once every
    /// write queued before it is out; reading goes on. Completes as
    /// [`Op::Shutdown`](crate::Op::Shutdown).
    ///
    /// ```
    /// # use std::io::Read;
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let mut client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// let io = w.local();
    /// io.write(conn, (), b"last words".to_vec())?;
    /// io.shutdown(conn, ())?;
    /// assert_eq!(w.wait_io()?.count(), 2);
    /// let mut got = String::new();
    /// client.read_to_string(&mut got)?; // EOF after the bytes
    /// assert_eq!(got, "last words");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::WatcherClosed`]; [`Error::ForeignConn`] for a `Conn` of another
    /// watcher.
    pub fn shutdown(&self, conn: Conn, ctx: C) -> Result<()> {
        self.submit(conn, ctx, Buf::None, Kind::Shutdown, None)
    }

    /// Closes gracefully: pending reads complete with `ConnClosed` now, every
    /// write queued before it goes out, then the fd is closed and this completes
    /// as [`Op::Close`](crate::Op::Close). With a `deadline`, writes still queued
    /// then complete with `ConnClosed` and the close with [`Error::Deadline`].
    /// Requests made after it complete with `ConnClosed`. ([`free`](Self::free)
    /// closes without waiting for writes.)
    ///
    /// ```
    /// # use std::io::Read;
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let mut client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// let io = w.local();
    /// io.write(conn, (), b"bye".to_vec())?;
    /// io.close(conn, (), None)?; // send "bye", then close
    /// assert_eq!(w.wait_io()?.count(), 2);
    /// let mut got = Vec::new();
    /// client.read_to_end(&mut got)?;
    /// assert_eq!(got, b"bye");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::WatcherClosed`]; [`Error::ForeignConn`] for a `Conn` of another
    /// watcher.
    pub fn close(&self, conn: Conn, ctx: C, deadline: Option<Instant>) -> Result<()> {
        self.submit(conn, ctx, Buf::None, Kind::Close, deadline)
    }

    /// Closes the connection at the watcher's next turn, once the requests made
    /// before this call had their chance to move. Every request still pending then
    /// completes with [`Error::ConnClosed`]; requests made after this call complete
    /// with `ConnClosed` too, even once the slot and fd number are reused. Freeing
    /// twice, or a stale `Conn`, is harmless.
    ///
    /// ```
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let _client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// w.local().read(conn, (), None)?;
    /// w.local().free(conn)?;
    /// let res = w.wait_io()?.next().unwrap();
    /// assert!(matches!(res.result, Err(gaio_core::Error::ConnClosed)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::WatcherClosed`]; [`Error::ForeignConn`] for a `Conn` of another
    /// watcher.
    pub fn free(&self, conn: Conn) -> Result<()> {
        let mut eng = self.eng.borrow_mut();
        if eng.closed {
            return Err(Error::WatcherClosed);
        }
        if conn.watcher != eng.shared.id {
            return Err(Error::ForeignConn);
        }
        if eng.remote_pending() {
            eng.driver.check_thread()?;
            eng.run_remote();
        }
        eng.free(conn);
        Ok(())
    }

    /// Takes `conn` out of the watcher and hands its socket back, open and
    /// nonblocking, as `mio`'s `deregister` or tokio's `into_std` do: to pass a
    /// connection to another watcher, thread or library. Requests still pending
    /// on it complete with [`Error::ConnClosed`] (nothing was lost in flight: a
    /// read that had taken bytes has completed already); requests made later on
    /// the `Conn` are treated as on a freed one. On io_uring a connection whose
    /// swap reads left its receive armed may hold bytes that arrived after its
    /// last read: then detach is refused (`WouldBlock`), the connection stays,
    /// and the next read gets them.
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
    /// [`Error::WatcherClosed`]; `Error::Io` (`WouldBlock`) on io_uring for
    /// bytes waiting for a read, or (`Other`) off the thread driving it.
    pub fn detach(&self, conn: Conn) -> Result<OwnedFd> {
        let mut eng = self.eng.borrow_mut();
        if eng.closed {
            return Err(Error::WatcherClosed);
        }
        if conn.watcher != eng.shared.id {
            return Err(Error::ForeignConn);
        }
        if eng.remote_pending() {
            // A registration other threads made first goes first.
            eng.run_remote();
        }
        eng.driver.check_thread()?;
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
        let mut eng = self.eng.borrow_mut();
        if eng.closed {
            return Err(Error::WatcherClosed);
        }
        let (conn, fd, kind) = eng.shared.open(fd.into())?;
        eng.install(conn, fd, kind, false)?;
        Ok(conn)
    }

    /// Bytes queued for writing on `conn` and not sent yet (0 for a stale
    /// `Conn`): what [`write_limit`](crate::Builder::write_limit) bounds.
    ///
    /// ```
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
            .map_or(0, |c| c.queued)
    }
}

/// What a write sends: a buffer of its own (`Vec<u8>`, handed back in the
/// completion as [`Buffer::Owned`](crate::Buffer::Owned)) or an immutable shared
/// one (`Arc<[u8]>`, [`Buffer::Shared`](crate::Buffer::Shared)), so a broadcast
/// to N connections is one allocation and N reference counts. `Arc<[u8]>` rather
/// than `bytes::Bytes`: it is std (no dependency for every user), and a message
/// written whole to many peers needs no slicing.
///
/// ```
/// use std::sync::Arc;
/// use gaio_core::WriteBuf;
/// let line: Arc<[u8]> = Arc::from(&b"tick\n"[..]);
/// let a: WriteBuf = line.clone().into();
/// let b: WriteBuf = vec![1, 2, 3].into();
/// assert_eq!((a.len(), b.len()), (5, 3));
/// ```
#[derive(Debug, Clone)]
pub enum WriteBuf {
    /// A buffer of its own, handed back in the completion.
    Owned(Vec<u8>),
    /// A shared immutable buffer.
    Shared(Arc<[u8]>),
}

impl WriteBuf {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        match self {
            WriteBuf::Owned(v) => v.len(),
            WriteBuf::Shared(b) => b.len(),
        }
    }

    /// Whether it holds no bytes (a write of it is refused).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<u8>> for WriteBuf {
    fn from(v: Vec<u8>) -> WriteBuf {
        WriteBuf::Owned(v)
    }
}

impl From<Arc<[u8]>> for WriteBuf {
    fn from(b: Arc<[u8]>) -> WriteBuf {
        WriteBuf::Shared(b)
    }
}

impl From<WriteBuf> for Buf {
    fn from(b: WriteBuf) -> Buf {
        match b {
            WriteBuf::Owned(v) => Buf::Owned(v),
            WriteBuf::Shared(b) => Buf::Shared(b),
        }
    }
}

impl From<Option<Vec<u8>>> for Buf {
    fn from(b: Option<Vec<u8>>) -> Buf {
        b.map_or(Buf::None, Buf::Owned)
    }
}

/// `timeout` from now as a deadline; one too far to represent is none.
fn deadline_in(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
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
        buf: Buf,
        kind: Kind,
        deadline: Option<Instant>,
    ) -> Result<()> {
        if conn.watcher != self.shared.id {
            return Err(Error::ForeignConn);
        }
        check_buf(&buf, kind)?;
        self.shared.push(Cmd::Submit {
            conn,
            req: Req::new(buf, ctx, kind),
            deadline,
        })
    }

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

    /// As [`Local::read`], from any thread.
    ///
    /// ```
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let _client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// let tx = w.submitter();
    /// std::thread::spawn(move || tx.read(conn, (), Some(vec![0; 512]))).join().unwrap()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Local::read`].
    pub fn read(&self, conn: Conn, ctx: C, buf: Option<Vec<u8>>) -> Result<()> {
        self.submit(conn, ctx, buf.into(), Kind::Read, None)
    }

    /// As [`Local::read_timeout`], from any thread; the timeout counts from this
    /// call.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let _client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// w.submitter().read_timeout(conn, (), None, Duration::from_millis(5))?;
    /// assert!(w.wait_io()?.next().unwrap().result.unwrap_err().is_deadline());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Local::read`].
    pub fn read_timeout(
        &self,
        conn: Conn,
        ctx: C,
        buf: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<()> {
        self.submit(conn, ctx, buf.into(), Kind::Read, deadline_in(timeout))
    }

    /// As [`Local::read_deadline`], from any thread.
    ///
    /// ```
    /// # use std::time::{Duration, Instant};
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let _client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// let at = Instant::now() + Duration::from_millis(5);
    /// w.submitter().read_deadline(conn, (), None, at)?;
    /// assert!(w.wait_io()?.next().unwrap().result.unwrap_err().is_deadline());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Local::read`].
    pub fn read_deadline(
        &self,
        conn: Conn,
        ctx: C,
        buf: Option<Vec<u8>>,
        deadline: Instant,
    ) -> Result<()> {
        self.submit(conn, ctx, buf.into(), Kind::Read, Some(deadline))
    }

    /// As [`Local::read_full`], from any thread.
    ///
    /// ```
    /// # use std::io::Write;
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let mut client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// w.submitter().read_full(conn, (), vec![0; 3], None)?;
    /// client.write_all(b"xyz")?;
    /// assert_eq!(w.wait_io()?.next().unwrap().data(), b"xyz");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Local::read_full`].
    pub fn read_full(
        &self,
        conn: Conn,
        ctx: C,
        buf: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<()> {
        self.submit(conn, ctx, Buf::Owned(buf), Kind::ReadFull, deadline)
    }

    /// As [`Local::write`], from any thread; past the write limit it completes
    /// with [`Error::WriteLimit`] (the watcher only knows when it applies it).
    ///
    /// ```
    /// # use std::io::Read;
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let mut client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// let tx = w.submitter();
    /// std::thread::spawn(move || tx.write(conn, (), b"hey".to_vec())).join().unwrap()?;
    /// assert!(w.wait_io()?.next().unwrap().result.is_ok());
    /// let mut got = [0; 3];
    /// client.read_exact(&mut got)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::EmptyBuffer`]; [`Error::WatcherClosed`]; [`Error::ForeignConn`] for
    /// a `Conn` of another watcher.
    pub fn write(&self, conn: Conn, ctx: C, buf: impl Into<WriteBuf>) -> Result<()> {
        self.submit(conn, ctx, buf.into().into(), Kind::Write, None)
    }

    /// As [`Local::write_timeout`], from any thread; the timeout counts from this
    /// call.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let _client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// w.submitter().write_timeout(conn, (), vec![1], Duration::from_secs(5))?;
    /// assert!(w.wait_io()?.next().unwrap().result.is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn write_timeout(
        &self,
        conn: Conn,
        ctx: C,
        buf: impl Into<WriteBuf>,
        timeout: Duration,
    ) -> Result<()> {
        self.submit(
            conn,
            ctx,
            buf.into().into(),
            Kind::Write,
            deadline_in(timeout),
        )
    }

    /// As [`Local::write_deadline`], from any thread.
    ///
    /// ```
    /// # use std::time::{Duration, Instant};
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let _client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// let at = Instant::now() + Duration::from_secs(5);
    /// w.submitter().write_deadline(conn, (), vec![1], at)?;
    /// assert!(w.wait_io()?.next().unwrap().result.is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn write_deadline(
        &self,
        conn: Conn,
        ctx: C,
        buf: impl Into<WriteBuf>,
        deadline: Instant,
    ) -> Result<()> {
        self.submit(conn, ctx, buf.into().into(), Kind::Write, Some(deadline))
    }

    /// As [`Local::accept`], from any thread.
    ///
    /// ```
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let addr = listener.local_addr()?;
    /// let l = w.register(listener)?;
    /// w.submitter().accept(l, ())?;
    /// let _client = std::net::TcpStream::connect(addr)?;
    /// let res = loop { if let Some(r) = w.wait_io()?.next() { break r; } };
    /// assert!(res.accepted().is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Local::accept`].
    pub fn accept(&self, listener: Conn, ctx: C) -> Result<()> {
        self.submit(listener, ctx, Buf::None, Kind::Accept, None)
    }

    /// As [`Local::connect`], from any thread.
    ///
    /// ```
    /// # let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let conn = w.submitter().connect(listener.local_addr()?, (), None)?;
    /// let res = loop { if let Some(r) = w.wait_io()?.next() { break r; } };
    /// assert_eq!((res.op, res.conn), (gaio_core::Op::Connect, conn));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Local::connect`].
    pub fn connect(&self, addr: SocketAddr, ctx: C, deadline: Option<Instant>) -> Result<Conn> {
        self.connect_fd(gaio_sys::connect_tcp(&addr)?, ctx, deadline)
    }

    /// As [`Local::connect_unix`], from any thread.
    ///
    /// ```no_run
    /// # let w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let conn = w.submitter().connect_unix("/run/app.sock".as_ref(), (), None)?;
    /// # let _ = conn;
    /// # Ok::<(), gaio_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Local::connect_unix`].
    pub fn connect_unix(&self, path: &Path, ctx: C, deadline: Option<Instant>) -> Result<Conn> {
        self.connect_fd(gaio_sys::connect_unix(path)?, ctx, deadline)
    }

    fn connect_fd(&self, fd: OwnedFd, ctx: C, deadline: Option<Instant>) -> Result<Conn> {
        let (conn, fd, kind) = self.shared.open(fd)?;
        self.shared.push(Cmd::Register(conn, fd, kind, true))?;
        self.submit(conn, ctx, Buf::None, Kind::Connect, deadline)?;
        Ok(conn)
    }

    /// As [`Local::shutdown`], from any thread.
    ///
    /// ```
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let _client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// w.submitter().shutdown(conn, ())?;
    /// assert_eq!(w.wait_io()?.next().unwrap().op, gaio_core::Op::Shutdown);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Local::shutdown`].
    pub fn shutdown(&self, conn: Conn, ctx: C) -> Result<()> {
        self.submit(conn, ctx, Buf::None, Kind::Shutdown, None)
    }

    /// As [`Local::close`], from any thread.
    ///
    /// ```
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let _client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// w.submitter().close(conn, (), None)?;
    /// assert_eq!(w.wait_io()?.next().unwrap().op, gaio_core::Op::Close);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Local::close`].
    pub fn close(&self, conn: Conn, ctx: C, deadline: Option<Instant>) -> Result<()> {
        self.submit(conn, ctx, Buf::None, Kind::Close, deadline)
    }

    /// As [`Local::free`], applied at the watcher's next turn.
    ///
    /// ```
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let _client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// w.submitter().free(conn)?;
    /// let _ = w.wait_io_timeout(std::time::Duration::ZERO)?.count();
    /// assert_eq!(w.stats().conns, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::WatcherClosed`]; [`Error::ForeignConn`] for a `Conn` of another
    /// watcher.
    pub fn free(&self, conn: Conn) -> Result<()> {
        if conn.watcher != self.shared.id {
            return Err(Error::ForeignConn);
        }
        self.shared.push(Cmd::Free(conn))
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
