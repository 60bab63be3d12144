//! The one request vocabulary: [`Requests`], whose provided methods (`read`,
//! `write`, `accept`, `connect`, `close`, …) are written — and documented — once
//! for every way into a watcher. An implementor supplies only the path: how a
//! [`Request`] reaches a connection's queue (`submit`), how a connecting socket
//! is taken over (`connect_fd`) and how a connection is freed (`free`). The rules
//! of each path (refusals, thread checks, ordering) live in those three methods
//! of that path, nowhere else.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::req::{Buf, Kind, Req, check_buf};
use crate::{Conn, Result};

/// One request as it travels from a [`Requests`] method to the watcher: what it
/// asks for (read, write, accept, …), the caller's context, its buffer and its
/// deadline. The provided methods of [`Requests`] make it; an implementor passes
/// it on, changing at most the context ([`map_ctx`](Self::map_ctx)), or takes
/// it apart ([`into_parts`](Self::into_parts)) after the same checks. Nothing
/// else can make one, so every request a watcher sees was checked by the same
/// code.
#[derive(Debug)]
pub struct Request<C> {
    /// Already in the engine's form: handing it on moves it once.
    req: Req<C>,
    deadline: Option<Instant>,
}

impl<C> Request<C> {
    #[inline]
    pub(crate) fn new(kind: Kind, ctx: C, buf: Buf, deadline: Option<Instant>) -> Request<C> {
        Request {
            req: Req::new(buf, ctx, kind),
            deadline,
        }
    }

    /// The same request with its context replaced by `f(ctx)`: how a layer
    /// above a watcher (gaio-pool's handlers, a wrapper of your own) keeps a
    /// value of its own beside the caller's, and unwraps it at completion.
    ///
    /// ```
    /// use gaio_core::{Conn, Local, Request, Requests, Result, Watcher};
    /// use std::os::fd::OwnedFd;
    /// use std::time::Instant;
    ///
    /// /// Requests whose completions say which part of the program made them.
    /// struct Tagged<'w>(Local<'w, (&'static str, u32)>, &'static str);
    ///
    /// impl Requests<u32> for Tagged<'_> {
    ///     fn submit(&self, conn: Conn, req: Request<u32>) -> Result<()> {
    ///         self.0.submit(conn, req.map_ctx(|ctx| (self.1, ctx)))
    ///     }
    ///     fn connect_fd(&self, fd: OwnedFd, ctx: u32, at: Option<Instant>) -> Result<Conn> {
    ///         self.0.connect_fd(fd, (self.1, ctx), at)
    ///     }
    ///     fn free(&self, conn: Conn) -> Result<()> {
    ///         self.0.free(conn)
    ///     }
    /// }
    ///
    /// let mut w: Watcher<(&str, u32)> = Watcher::new()?;
    /// let (a, _b) = std::os::unix::net::UnixStream::pair()?;
    /// let conn = w.register(a)?;
    /// Tagged(w.local(), "greeter").write(conn, 7, b"hi".to_vec())?;
    /// assert_eq!(w.wait_io()?.next().unwrap().ctx, ("greeter", 7));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn map_ctx<D>(self, f: impl FnOnce(C) -> D) -> Request<D> {
        Request {
            req: self.req.map_ctx(f),
            deadline: self.deadline,
        }
    }

    /// Takes the request apart, after the checks every watcher makes (an empty
    /// or oversized buffer is refused here as it would be at submission): for a
    /// layer that serves some connections itself rather than passing their
    /// requests on — gaio-tls turns a plaintext read or write on a TLS
    /// connection into records.
    ///
    /// ```
    /// use gaio_core::{Asks, Conn, Local, Request, Requests, Result, Watcher};
    /// use std::cell::RefCell;
    /// use std::os::fd::OwnedFd;
    /// use std::time::Instant;
    ///
    /// /// Counts the bytes written through it before passing each request on.
    /// struct Metered<'w>(Local<'w, u32>, RefCell<usize>);
    ///
    /// impl Requests<u32> for Metered<'_> {
    ///     fn submit(&self, conn: Conn, req: Request<u32>) -> Result<()> {
    ///         let parts = req.into_parts()?;
    ///         match (parts.asks, parts.deadline) {
    ///             (Asks::Write(buf), None) => {
    ///                 *self.1.borrow_mut() += buf.len();
    ///                 self.0.write(conn, parts.ctx, buf)
    ///             }
    ///             (Asks::Read { buf, full: false }, None) => self.0.read(conn, parts.ctx, buf),
    ///             // The rest, likewise; this example takes no more.
    ///             _ => Err(gaio_core::Error::Unsupported),
    ///         }
    ///     }
    ///     fn connect_fd(&self, fd: OwnedFd, ctx: u32, at: Option<Instant>) -> Result<Conn> {
    ///         self.0.connect_fd(fd, ctx, at)
    ///     }
    ///     fn free(&self, conn: Conn) -> Result<()> {
    ///         self.0.free(conn)
    ///     }
    /// }
    ///
    /// let mut w: Watcher<u32> = Watcher::new()?;
    /// let (a, _b) = std::os::unix::net::UnixStream::pair()?;
    /// let conn = w.register(a)?;
    /// let metered = Metered(w.local(), RefCell::new(0));
    /// metered.write(conn, 7, b"hello".to_vec())?;
    /// assert!(metered.write(conn, 8, Vec::new()).is_err()); // refused: empty
    /// assert_eq!(*metered.1.borrow(), 5);
    /// assert_eq!(w.wait_io()?.next().unwrap().ctx, 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As the request method that made it: [`Error::EmptyBuffer`](crate::Error::EmptyBuffer)
    /// or an oversized buffer.
    pub fn into_parts(self) -> Result<Parts<C>> {
        self.check()?;
        let kind = self.req.kind();
        let asks = match (kind, self.req.buf) {
            (Kind::Read | Kind::ReadFull, buf) => Asks::Read {
                buf: match buf {
                    Buf::Owned(v) => Some(v),
                    _ => None,
                },
                full: kind == Kind::ReadFull,
            },
            (Kind::Write, Buf::Shared(b)) => Asks::Write(WriteBuf::Shared(b)),
            (Kind::Write, Buf::Owned(v)) => Asks::Write(WriteBuf::Owned(v)),
            (Kind::Write, _) => Asks::Write(WriteBuf::Owned(Vec::new())),
            (Kind::Accept, _) => Asks::Accept,
            (Kind::Connect, _) => Asks::Connect,
            (Kind::Shutdown, _) => Asks::Shutdown,
            (Kind::Close, _) => Asks::Close,
            (Kind::Writable, _) => Asks::Writable,
        };
        Ok(Parts {
            asks,
            ctx: self.req.ctx,
            deadline: self.deadline,
        })
    }

    /// Refuses what can never complete (see `check_buf`).
    #[inline]
    pub(crate) fn check(&self) -> Result<()> {
        check_buf(&self.req.buf, self.req.kind())
    }

    /// The engine's form of the request, and its deadline.
    #[inline]
    pub(crate) fn into_req(self) -> (Req<C>, Option<Instant>) {
        (self.req, self.deadline)
    }
}

/// A [`Request`] taken apart by [`Request::into_parts`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Parts<C> {
    /// What it asks for, with its buffer.
    pub asks: Asks,
    /// The caller's context.
    pub ctx: C,
    /// When it must complete by, if ever.
    pub deadline: Option<Instant>,
}

/// What a request asks for (see [`Request::into_parts`]); one variant per
/// request method family of [`Requests`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Asks {
    /// `read*` (`buf: None`: into the swap buffer) or, with `full`, `read_full`.
    Read {
        /// The caller's buffer, or `None` for the swap buffer.
        buf: Option<Vec<u8>>,
        /// Complete only once the buffer is full (`read_full`).
        full: bool,
    },
    /// `write*`, with its bytes.
    Write(WriteBuf),
    /// `accept` (on a listener).
    Accept,
    /// The connect request `connect_fd` queues.
    Connect,
    /// `shutdown`.
    Shutdown,
    /// `close`.
    Close,
    /// `writable`.
    Writable,
}

/// The requests a watcher takes — read, write, accept, connect, shutdown, close,
/// free — the same whichever way they reach it. Bring the trait into scope
/// (`use gaio_core::Requests;`, or `use gaio::Requests;`) to call them.
///
/// | implementor | from | path |
/// |-------------|------|------|
/// | [`Local`](crate::Local) | the watcher's own thread | straight into the connection's queue (the hot path) |
/// | [`Submitter`](crate::Submitter) | any thread | the watcher's lock-free cross-thread queue, applied at its next turn |
/// | `gaio_pool::Io` | a pool handler | to the watcher that owns the `Conn`: a `Local` on its own thread, its `Submitter` elsewhere |
/// | `gaio_pool::Handle` | any thread | the owner's `Submitter` |
///
/// Every request accepted (`Ok`) completes exactly once, through the watcher's
/// `wait_io`, with its `ctx`, its byte count and its buffer; one refused
/// (`Err`) never completes and is dropped. Requests on one connection complete
/// in the order made, per direction (reads and writes are independent); the
/// order holds across paths by happens-before. A timeout counts from the call.
///
/// # Examples
///
/// Code written once for every path: here a greeting, written through the
/// watcher's own `Local` and, the same way, through a `Submitter`.
///
/// ```
/// use std::io::Read;
/// use gaio_core::{Conn, Requests, Result, Watcher};
///
/// fn greet(io: &impl Requests<u8>, conn: Conn, who: u8) -> Result<()> {
///     io.write(conn, who, b"hello\n".to_vec())
/// }
///
/// let (a, mut b) = std::os::unix::net::UnixStream::pair()?;
/// let mut w: Watcher<u8> = Watcher::new()?;
/// let conn = w.register(a)?;
/// greet(&w.local(), conn, 1)?;
/// greet(&w.submitter(), conn, 2)?;
/// let mut done = Vec::new();
/// while done.len() < 2 {
///     done.extend(w.wait_io()?.map(|res| res.ctx));
/// }
/// done.sort();
/// assert_eq!(done, [1, 2]);
/// let mut got = [0; 12];
/// b.read_exact(&mut got)?;
/// assert_eq!(&got, b"hello\nhello\n");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Implementing it
///
/// An implementor supplies the path — [`submit`](Self::submit),
/// [`connect_fd`](Self::connect_fd) and [`free`](Self::free) — and gets every
/// request method with the rules above. A [`Request`] cannot be made outside
/// gaio-core, so an implementor of its own passes each one on to a `Local` or
/// `Submitter` (see [`Request::map_ctx`]), or takes it apart
/// ([`Request::into_parts`]) to serve it itself, as gaio-tls does.
pub trait Requests<C> {
    /// Takes one request on `conn`: the path every provided request method but
    /// `connect` and `free` goes through. Each implementor's refusals live here
    /// (see [`write`](Self::write) for where a `Local` and a `Submitter` differ).
    ///
    /// # Errors
    /// As the request method that made `req`.
    fn submit(&self, conn: Conn, req: Request<C>) -> Result<()>;

    /// Takes over `fd`, a stream socket with a nonblocking connect under way,
    /// and queues the connect request on it: the part of [`connect`](Self::connect)
    /// that differs per implementor. Call it directly for a socket with options
    /// of your own (a bound source address, buffer sizes), once `connect` has
    /// returned `EINPROGRESS` (or succeeded) on it.
    ///
    /// ```
    /// # use gaio_core::Requests;
    /// use socket2::{Domain, Socket, Type};
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let to = listener.local_addr()?;
    /// let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    /// s.set_nonblocking(true)?;
    /// s.set_recv_buffer_size(16 << 10)?;
    /// match s.connect(&to.into()) {
    ///     Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => return Err(e.into()),
    ///     _ => {}
    /// }
    /// let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let conn = w.local().connect_fd(s.into(), (), None)?;
    /// let res = loop { if let Some(r) = w.wait_io()?.next() { break r; } };
    /// assert_eq!((res.op, res.conn), (gaio_core::Op::Connect, conn));
    /// assert!(res.result.is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`connect`](Self::connect); [`Error::Unsupported`](crate::Error::Unsupported)
    /// for an fd the watcher cannot drive (it is closed).
    fn connect_fd(&self, fd: OwnedFd, ctx: C, deadline: Option<Instant>) -> Result<Conn>;

    /// Closes the connection at the watcher's next turn, once the requests made
    /// before this call had their chance to move. Every request still pending then
    /// completes with [`Error::ConnClosed`](crate::Error::ConnClosed); requests
    /// made after this call complete with `ConnClosed` too, even once the slot and
    /// fd number are reused. Freeing twice, or a stale `Conn`, is harmless.
    /// ([`close`](Self::close) lets queued writes out first.)
    ///
    /// ```
    /// # use gaio_core::Requests;
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
    /// [`Error::WatcherClosed`](crate::Error::WatcherClosed);
    /// [`Error::ForeignConn`](crate::Error::ForeignConn) for a `Conn` of another
    /// watcher (of no watcher of the pool, for gaio-pool).
    fn free(&self, conn: Conn) -> Result<()>;

    /// Reads whatever is available, at least one byte (or EOF: `Ok` with size 0).
    /// `None` reads into the watcher's swap buffer, borrowed by the completion until
    /// the next `wait_io`; `Some(buf)` reads into `buf[..buf.len()]` and hands `buf`
    /// back.
    ///
    /// ```
    /// # use std::io::Write;
    /// # use gaio_core::Requests;
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
    /// [`Error::EmptyBuffer`](crate::Error::EmptyBuffer) for `Some` of an empty
    /// buffer; [`Error::WatcherClosed`](crate::Error::WatcherClosed) (for
    /// gaio-pool: once the owner stopped);
    /// [`Error::ForeignConn`](crate::Error::ForeignConn) for a `Conn` of another
    /// watcher (of no watcher of the pool, for gaio-pool). A stale `Conn` of this
    /// watcher is accepted and completes with `ConnClosed`.
    #[inline]
    fn read(&self, conn: Conn, ctx: C, buf: Option<Vec<u8>>) -> Result<()> {
        self.submit(conn, Request::new(Kind::Read, ctx, buf.into(), None))
    }

    /// [`read`](Self::read) that completes with
    /// [`Error::Deadline`](crate::Error::Deadline) if nothing was read within
    /// `timeout` (counted from this call). As an idle timeout it is re-armed
    /// by each read, so a peer sending a byte just inside it is never dropped;
    /// to bound a whole frame, read with the deadline
    /// [`Framer::deadline`](crate::framing::Framer::deadline) gives.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use gaio_core::Requests;
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
    #[inline]
    fn read_timeout(
        &self,
        conn: Conn,
        ctx: C,
        buf: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = deadline_in(timeout);
        self.submit(conn, Request::new(Kind::Read, ctx, buf.into(), deadline))
    }

    /// [`read`](Self::read) that completes with
    /// [`Error::Deadline`](crate::Error::Deadline) if nothing was read by
    /// `deadline`.
    ///
    /// ```
    /// # use std::time::{Duration, Instant};
    /// # use gaio_core::Requests;
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
    #[inline]
    fn read_deadline(
        &self,
        conn: Conn,
        ctx: C,
        buf: Option<Vec<u8>>,
        deadline: Instant,
    ) -> Result<()> {
        let req = Request::new(Kind::Read, ctx, buf.into(), Some(deadline));
        self.submit(conn, req)
    }

    /// Reads until `buf` is full. Completes early only on an error, the deadline
    /// ([`Error::Deadline`](crate::Error::Deadline)), or EOF (`Io` of kind
    /// `UnexpectedEof`), reporting the bytes read so far in `size`.
    ///
    /// ```
    /// # use std::io::Write;
    /// # use gaio_core::Requests;
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
    /// [`Error::EmptyBuffer`](crate::Error::EmptyBuffer); otherwise as
    /// [`read`](Self::read).
    #[inline]
    fn read_full(&self, conn: Conn, ctx: C, buf: Vec<u8>, deadline: Option<Instant>) -> Result<()> {
        let req = Request::new(Kind::ReadFull, ctx, Buf::Owned(buf), deadline);
        self.submit(conn, req)
    }

    /// Writes all of `buf` — a `Vec<u8>`, handed back in the completion, or a
    /// shared `Arc<[u8]>` (one allocation for a broadcast to many connections,
    /// whichever watchers own them); completes when every byte is written (or on
    /// error). Writes queued on one connection go out in order, several per
    /// `writev`.
    ///
    /// ```
    /// # use std::io::Read;
    /// # use std::sync::Arc;
    /// # use gaio_core::Requests;
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
    /// [`Error::EmptyBuffer`](crate::Error::EmptyBuffer);
    /// [`Error::WriteLimit`](crate::Error::WriteLimit) when it would take the
    /// connection's queued bytes past the watcher's
    /// [`write_limit`](crate::Builder::write_limit) — refused at once on the
    /// watcher's own thread (a `Local`, or a pool `Io` on the owner's thread);
    /// from anywhere else the write is accepted and completes with `WriteLimit`
    /// (the watcher only knows when it applies it); otherwise as
    /// [`read`](Self::read).
    #[inline]
    fn write(&self, conn: Conn, ctx: C, buf: impl Into<WriteBuf>) -> Result<()> {
        let req = Request::new(Kind::Write, ctx, buf.into().into(), None);
        self.submit(conn, req)
    }

    /// [`write`](Self::write) that completes with
    /// [`Error::Deadline`](crate::Error::Deadline) (and the count written so far)
    /// if not finished within `timeout` (counted from this call).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use gaio_core::Requests;
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
    #[inline]
    fn write_timeout(
        &self,
        conn: Conn,
        ctx: C,
        buf: impl Into<WriteBuf>,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = deadline_in(timeout);
        let req = Request::new(Kind::Write, ctx, buf.into().into(), deadline);
        self.submit(conn, req)
    }

    /// [`write`](Self::write) that completes with
    /// [`Error::Deadline`](crate::Error::Deadline) (and the count written so far)
    /// if not finished by `deadline`.
    ///
    /// ```
    /// # use std::time::{Duration, Instant};
    /// # use gaio_core::Requests;
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
    #[inline]
    fn write_deadline(
        &self,
        conn: Conn,
        ctx: C,
        buf: impl Into<WriteBuf>,
        deadline: Instant,
    ) -> Result<()> {
        let req = Request::new(Kind::Write, ctx, buf.into().into(), Some(deadline));
        self.submit(conn, req)
    }

    /// Accepts one connection on a registered listener (TCP or Unix). It
    /// completes as [`Op::Accept`](crate::Op::Accept) with the new connection,
    /// already registered on the listener's watcher, in
    /// [`Completion::accepted`](crate::Completion::accepted). One request, one
    /// connection: keep accepting by submitting the next accept from the
    /// completion, and keep several pending to take bursts in one turn. Running
    /// out of fds pauses that listener (10 ms, doubling to 1 s) instead of
    /// spinning; freeing the listener stops it (pending accepts complete with
    /// `ConnClosed`). (A gaio-pool's own listeners accept by themselves: this is
    /// for listeners the application registered.)
    ///
    /// ```
    /// use gaio_core::{Op, Requests, Watcher};
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
    /// [`Error::WatcherClosed`](crate::Error::WatcherClosed);
    /// [`Error::ForeignConn`](crate::Error::ForeignConn) for a `Conn` of another
    /// watcher. An fd that is not a listener completes with the OS's error.
    #[inline]
    fn accept(&self, listener: Conn, ctx: C) -> Result<()> {
        self.submit(listener, Request::new(Kind::Accept, ctx, Buf::None, None))
    }

    /// Connects to `addr` without blocking: returns the new connection's `Conn`
    /// at once, and completes as [`Op::Connect`](crate::Op::Connect) once
    /// connected — or with the error (refused, unreachable: `Io`; `deadline`:
    /// [`Error::Deadline`](crate::Error::Deadline)), the connection then closed
    /// and everything queued on it completed with `ConnClosed`. Requests may be
    /// queued on the `Conn` right away: writes go out once connected. The
    /// connection lives on this `Local`'s or `Submitter`'s watcher (a pool `Io`:
    /// its own watcher; a pool `Handle`: the balancer's pick).
    ///
    /// ```
    /// use gaio_core::{Op, Requests, Watcher};
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
    /// [`Error::WatcherClosed`](crate::Error::WatcherClosed).
    #[inline]
    fn connect(&self, addr: SocketAddr, ctx: C, deadline: Option<Instant>) -> Result<Conn> {
        self.connect_fd(gaio_sys::connect_tcp(&addr)?, ctx, deadline)
    }

    /// [`connect`](Self::connect) to the Unix stream socket at `path`.
    ///
    /// ```no_run
    /// # use gaio_core::Requests;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let conn = w.local().connect_unix("/run/app.sock".as_ref(), (), None)?;
    /// # let _ = conn;
    /// # Ok::<(), gaio_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`connect`](Self::connect); `InvalidInput` for a path too long for a
    /// socket address.
    #[inline]
    fn connect_unix(&self, path: &Path, ctx: C, deadline: Option<Instant>) -> Result<Conn> {
        self.connect_fd(gaio_sys::connect_unix(path)?, ctx, deadline)
    }

    /// Completes (as [`Op::Writable`](crate::Op::Writable), `Ok`) once `conn`
    /// is writable — at once if it is now, else when its queued write bytes
    /// have fallen to the low watermark of its [`Flow`](crate::Flow) — or with
    /// [`Error::ConnClosed`](crate::Error::ConnClosed) if it closes first. The
    /// signal to produce more for a connection a producer stopped feeding
    /// (see [`Local::is_writable`](crate::Local::is_writable)).
    ///
    /// ```
    /// # use std::io::Read;
    /// # use gaio_core::{Flow, Op, Requests};
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let mut client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::builder()
    ///     .flow(Flow::new(0, 1000))
    ///     .build()?;
    /// # let conn = w.register(l.accept()?.0)?;
    /// let io = w.local();
    /// io.write(conn, (), vec![1; 5000])?; // above the high watermark
    /// io.writable(conn, ())?;
    /// let ops: Vec<Op> = w.wait_io()?.map(|res| res.op).collect();
    /// assert_eq!(ops, [Op::Write, Op::Writable]); // all sent: writable again
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`shutdown`](Self::shutdown).
    #[inline]
    fn writable(&self, conn: Conn, ctx: C) -> Result<()> {
        self.submit(conn, Request::new(Kind::Writable, ctx, Buf::None, None))
    }

    /// Shuts the write side down (a half-close: the peer reads EOF) once every
    /// write queued before it is out; reading goes on. Completes as
    /// [`Op::Shutdown`](crate::Op::Shutdown).
    ///
    /// ```
    /// # use std::io::Read;
    /// # use gaio_core::Requests;
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
    /// [`Error::WatcherClosed`](crate::Error::WatcherClosed);
    /// [`Error::ForeignConn`](crate::Error::ForeignConn) for a `Conn` of another
    /// watcher.
    #[inline]
    fn shutdown(&self, conn: Conn, ctx: C) -> Result<()> {
        self.submit(conn, Request::new(Kind::Shutdown, ctx, Buf::None, None))
    }

    /// Closes gracefully: pending reads complete with `ConnClosed` now, every
    /// write queued before it goes out, then the fd is closed and this completes
    /// as [`Op::Close`](crate::Op::Close). With a `deadline`, writes still queued
    /// then complete with `ConnClosed` and the close with
    /// [`Error::Deadline`](crate::Error::Deadline). Requests made after it
    /// complete with `ConnClosed`. ([`free`](Self::free) closes without waiting
    /// for writes.)
    ///
    /// ```
    /// # use std::io::Read;
    /// # use gaio_core::Requests;
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
    /// [`Error::WatcherClosed`](crate::Error::WatcherClosed);
    /// [`Error::ForeignConn`](crate::Error::ForeignConn) for a `Conn` of another
    /// watcher.
    #[inline]
    fn close(&self, conn: Conn, ctx: C, deadline: Option<Instant>) -> Result<()> {
        self.submit(conn, Request::new(Kind::Close, ctx, Buf::None, deadline))
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

impl AsRef<[u8]> for WriteBuf {
    /// Its bytes, whichever kind it is.
    fn as_ref(&self) -> &[u8] {
        match self {
            WriteBuf::Owned(v) => v,
            WriteBuf::Shared(b) => b,
        }
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
    #[inline]
    fn from(b: WriteBuf) -> Buf {
        match b {
            WriteBuf::Owned(v) => Buf::Owned(v),
            WriteBuf::Shared(b) => Buf::Shared(b),
        }
    }
}

impl From<Option<Vec<u8>>> for Buf {
    #[inline]
    fn from(b: Option<Vec<u8>>) -> Buf {
        b.map_or(Buf::None, Buf::Owned)
    }
}

/// `timeout` from now as a deadline; one too far to represent is none.
#[inline]
fn deadline_in(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}
