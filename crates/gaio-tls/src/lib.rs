//! gaio-tls: TLS on gaio connections, on rustls' unbuffered API.
//!
//! A TLS connection is driven by the same requests and completions as a plain
//! one. The application submits plaintext reads and writes through a
//! [`TlsIo`] — which implements [`gaio_core::Requests`], so `read`,
//! `read_full`, `write` (owned or shared `Arc<[u8]>`), deadlines, `shutdown`,
//! `close`, `free` and `writable` are the methods it already knows — and gets
//! plaintext [`Completion`]s from [`Tls::complete`]. Handshake, records,
//! alerts, `close_notify`, session tickets and key updates happen underneath.
//!
//! | to | use |
//! |----|-----|
//! | configure | [`ServerConfigBuilder`] ([`server_config`]): certificate chain and key from PEM ([`load_certs`], [`load_key`]), SNI, ALPN, client auth, tickets; [`client_config`] |
//! | set up, per watcher thread | [`Tls::new`], [`Tls::handshake_timeout`] (10 s by default) |
//! | start TLS on a connection | [`Tls::accept`] (server), [`Tls::connect`] (client): completes as [`Op::Connect`] when the handshake ends |
//! | make requests | [`Tls::io`] → [`TlsIo`], the [`Requests`] methods |
//! | collect completions | [`Tls::complete`] on each completion of the watcher |
//! | look at a session | [`Tls::state`] (ALPN, version, resumed or not), [`Tls::got_close_notify`] |
//! | watch it | [`Tls::stats`]: [`TlsStats`] (sessions, handshakes done, resumed, failed) |
//!
//! # How it sits on a watcher
//!
//! The watcher's context type is [`Ctx<C>`]: `Ctx::App(C)` for requests of
//! the application, `Ctx::Tls(_)` for the ciphertext the layer moves. Plain
//! connections on the same watcher (a proxy's upstream, a listener) pass
//! through a [`TlsIo`] unchanged. One [`Tls`] serves the connections of one
//! watcher, on that watcher's thread; requests on a TLS connection are made
//! there (in a pool, from the owner's handler: a [`TlsIo`] refuses another
//! watcher's `Conn` with [`Error::ForeignConn`]).
//!
//! # Example: a TLS echo server and a client on one watcher
//!
//! ```
//! use std::sync::Arc;
//! use gaio_core::{Op, Requests, Watcher};
//! use gaio_tls::{Ctx, Tls};
//!
//! let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
//! let chain = vec![cert.cert.der().clone()];
//! let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
//! let server_cfg = gaio_tls::server_config().cert(chain.clone(), key).build()?;
//! let mut roots = rustls::RootCertStore::empty();
//! roots.add(chain[0].clone())?;
//! let client_cfg = gaio_tls::client_config(roots);
//!
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let client = std::net::TcpStream::connect(listener.local_addr()?)?;
//! let mut w: Watcher<Ctx<&str>> = Watcher::new()?;
//! let tls: Tls<&str> = Tls::new();
//! let s = w.register(listener.accept()?.0)?;
//! let c = w.register(client)?;
//! tls.accept(&w.local(), s, &server_cfg, "server handshake")?;
//! tls.connect(&w.local(), c, &client_cfg, "localhost".try_into()?, "client handshake")?;
//! let io = w.local();
//! let tio = tls.io(&io);
//! tio.read(s, "server read", None)?; // plaintext, into the swap buffer
//! tio.write(c, "client write", b"hello".to_vec())?; // sent once the handshake is done
//! tio.read_full(c, "client read", vec![0; 5], None)?;
//! let mut echoed = None;
//! while echoed.is_none() {
//!     let batch = w.wait_io()?;
//!     let io = batch.local();
//!     for res in batch {
//!         tls.complete(&io, res, |tio, res| match (res.op, res.ctx) {
//!             (Op::Read, "server read") => {
//!                 let data = res.data().to_vec();
//!                 tio.write(s, "server write", data).unwrap(); // echo
//!             }
//!             (Op::Read, "client read") => echoed = Some(res.into_vec().unwrap()),
//!             (_, _) => assert!(res.result.is_ok(), "{:?}", res.result),
//!         });
//!     }
//! }
//! assert_eq!(echoed.unwrap(), b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Semantics over TLS
//!
//! * **Exactly once**, as on a watcher: every request accepted completes once
//!   (with its plaintext buffer and context); one refused returns `Err` at once.
//! * **Reads** complete with plaintext. A swap-buffer read (`buf: None`) lends
//!   the plaintext of everything that arrived, from a buffer of the `Tls` (one
//!   per thread), valid during the callback. Records are decrypted in place in
//!   that thread's buffer: a connection holds ciphertext only while a record is
//!   incomplete, and plaintext only when it arrived with no read waiting (for
//!   example with the client's last handshake flight). An idle TLS connection
//!   holds its rustls session and nothing else.
//! * **Writes** are encrypted when submitted (or, before the handshake ends,
//!   when it ends): the plaintext is read once, from the caller's `Vec` or shared
//!   `Arc<[u8]>`, straight into the records, and the caller's buffer comes back
//!   with the completion, `size` its length. A write that cannot go out whole —
//!   refused by the write limit, a deadline that passes, a reset — ends the TLS
//!   connection (a record sequence cannot skip a record); its `size` is then 0.
//!   Watermarks and the write limit ([`gaio_core::Flow`]) count ciphertext,
//!   about 22 bytes per 16 KiB record more than the plaintext.
//! * **Deadlines** on reads bound the plaintext read, from the call. A
//!   handshake that has not finished by [`Tls::handshake_timeout`] fails with
//!   [`Error::Deadline`] and the connection is closed.
//! * **Close**: [`close`](Requests::close) sends `close_notify` after the
//!   writes before it, then closes. [`shutdown`](Requests::shutdown) sends
//!   `close_notify` after the writes before it and shuts the socket's write side:
//!   a half-close, which TLS 1.3 allows (reads go on until the peer's
//!   `close_notify` or EOF). A peer's `close_notify`, and EOF on the socket,
//!   read as EOF (`Ok`, size 0). [`free`](Requests::free) frees at once.
//! * **Errors**: a TLS failure (a bad record, garbage instead of a ClientHello,
//!   a record over the size TLS allows, a certificate refused) sends the alert,
//!   closes the connection and completes every waiting request with
//!   `Error::Io` of kind `InvalidData` saying why.
#![forbid(unsafe_code)]

mod config;
mod session;

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gaio_core::{Asks, Buffer, Completion, Conn, Error, Op, Request, Requests, Result, WriteBuf};
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::{ClientConfig, ServerConfig};

pub use config::{
    ServerConfigBuilder, client_config, load_certs, load_key, provider, server_config,
};
pub use rustls;

use session::{Job, MAX_PENDING, Read, Session, Side, Waiting};

/// The context of a request on a watcher that serves TLS: the application's
/// own (`App`), or the layer's (`Tls`, opaque). Give the watcher (or pool) this
/// type: `Watcher<Ctx<C>>`.
#[derive(Debug)]
pub enum Ctx<C> {
    /// A request of the application's, on a plain connection or passed through
    /// (`writable`, `close`, `shutdown`, `accept`, `connect`).
    App(C),
    /// Ciphertext the TLS layer moves; hand its completion to [`Tls::complete`].
    Tls(Internal<C>),
}

/// The TLS layer's own request context (opaque).
#[derive(Debug)]
pub struct Internal<C>(Kind<C>);

#[derive(Debug)]
enum Kind<C> {
    /// A ciphertext read, and the deadline it carries.
    Read(Option<Instant>),
    /// The records of one plaintext write: the caller's request and buffer.
    Write { ctx: C, plain: WriteBuf },
    /// Handshake records, alerts, tickets, `close_notify`.
    Records,
    /// The records of the writes made during the handshake (kept, with their
    /// requests, in the session until this completes).
    Flushed,
    /// The shutdown or close made during the handshake (kept in the session).
    End { close: bool },
    /// The layer's own close after a fatal error.
    Close,
}

fn internal<C>(k: Kind<C>) -> Ctx<C> {
    Ctx::Tls(Internal(k))
}

/// The TLS layer of one watcher: its sessions, and the buffers records are
/// decrypted and encrypted in. Make one per watcher thread (in a pool, in the
/// handler factory); it is not `Send`.
pub struct Tls<C> {
    handshake_timeout: Option<Duration>,
    /// Sessions by connection slot.
    sessions: RefCell<Vec<Option<Box<Session<C>>>>>,
    /// Ciphertext being decrypted (one connection's at a time).
    cipher: RefCell<Vec<u8>>,
    /// Plaintext being delivered (one connection's at a time), and how much of
    /// it was taken.
    plain: RefCell<Vec<u8>>,
    taken: Cell<usize>,
    /// The connection whose completions are being delivered: requests on it
    /// leave the next read to the delivery.
    settling: Cell<Option<Conn>>,
    /// Ciphertext buffers back from the watcher, for the next records.
    spare: RefCell<Vec<Vec<u8>>>,
    /// The watcher this layer serves, learnt from its first connection.
    watcher: Cell<Option<u32>>,
    live: Cell<usize>,
    stats: Cell<TlsStats>,
}

/// A TLS layer's counters, from [`Tls::stats`].
///
/// ```
/// let tls: gaio_tls::Tls<()> = gaio_tls::Tls::new();
/// assert_eq!(tls.stats(), gaio_tls::TlsStats::default());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsStats {
    /// Sessions alive now (from `accept`/`connect` until the connection is
    /// freed or closed and nothing of it is left in flight).
    pub sessions: usize,
    /// Handshakes that finished, since the layer was made.
    pub handshakes: u64,
    /// Of those, how many resumed an earlier session (a ticket or the cache).
    pub resumed: u64,
    /// Handshakes that failed: a TLS error, EOF, the handshake deadline, or the
    /// connection freed first.
    pub failed: u64,
}

impl<C> std::fmt::Debug for Tls<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("sessions", &self.live.get())
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

impl<C> Default for Tls<C> {
    fn default() -> Self {
        Tls::new()
    }
}

/// The most spare ciphertext buffers kept, and the largest kept.
const SPARE_MAX: usize = 64;
const SPARE_BYTES: usize = 64 * 1024;

impl<C> Tls<C> {
    /// A TLS layer with a 10 s handshake deadline.
    pub fn new() -> Tls<C> {
        Tls {
            handshake_timeout: Some(Duration::from_secs(10)),
            sessions: RefCell::new(Vec::new()),
            cipher: RefCell::new(Vec::new()),
            plain: RefCell::new(Vec::new()),
            taken: Cell::new(0),
            settling: Cell::new(None),
            spare: RefCell::new(Vec::new()),
            watcher: Cell::new(None),
            live: Cell::new(0),
            stats: Cell::new(TlsStats::default()),
        }
    }

    /// How long a handshake may take from [`accept`](Self::accept) or
    /// [`connect`](Self::connect) (`None`: forever). A peer that has not
    /// finished by then is cut off and the handshake completes with
    /// [`Error::Deadline`].
    pub fn handshake_timeout(mut self, timeout: Option<Duration>) -> Tls<C> {
        self.handshake_timeout = timeout;
        self
    }

    /// Plaintext requests on this layer's connections through `inner` (a
    /// `Local`, a pool's `Io`): a [`TlsIo`], which implements [`Requests`].
    pub fn io<'a, R: Requests<Ctx<C>>>(&'a self, inner: &'a R) -> TlsIo<'a, C, R> {
        TlsIo { tls: self, inner }
    }

    /// TLS sessions alive on this layer.
    pub fn sessions(&self) -> usize {
        self.live.get()
    }

    /// The layer's counters: sessions, and handshakes done, resumed and failed.
    pub fn stats(&self) -> TlsStats {
        TlsStats {
            sessions: self.live.get(),
            ..self.stats.get()
        }
    }

    /// Whether `conn` is one of this layer's TLS connections.
    pub fn is_tls(&self, conn: Conn) -> bool {
        self.with(conn, |_| ()).is_some()
    }

    /// Starts the server side of TLS on `conn` (accepted, registered on the
    /// watcher `io` submits to). Reads and writes may be submitted at once; they
    /// wait for the handshake. `ctx` completes as [`Op::Connect`] when the
    /// handshake ends: `Ok`, or why it failed (the connection is then closed).
    ///
    /// # Errors
    /// [`Error::ForeignConn`] for another watcher's `Conn`; `InvalidInput` if
    /// `conn` already speaks TLS, or if `config` allows 0-RTT early data
    /// (`max_early_data_size > 0`), which this layer does not take; as `read`
    /// on `io`.
    pub fn accept<R: Requests<Ctx<C>>>(
        &self,
        io: &R,
        conn: Conn,
        config: &Arc<ServerConfig>,
        ctx: C,
    ) -> Result<()> {
        if config.max_early_data_size > 0 {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "gaio-tls does not take 0-RTT early data: set max_early_data_size to 0",
            )));
        }
        let side = UnbufferedServerConnection::new(config.clone()).map_err(tls_error)?;
        self.start(io, conn, Side::Server(side), ctx)
    }

    /// Starts the client side of TLS on `conn` (connected — after its
    /// `Op::Connect` — and registered on the watcher `io` submits to),
    /// verifying the server as `name`. As [`accept`](Self::accept) otherwise.
    ///
    /// # Errors
    /// As [`accept`](Self::accept).
    pub fn connect<R: Requests<Ctx<C>>>(
        &self,
        io: &R,
        conn: Conn,
        config: &Arc<ClientConfig>,
        name: ServerName<'static>,
        ctx: C,
    ) -> Result<()> {
        let side = UnbufferedClientConnection::new(config.clone(), name).map_err(tls_error)?;
        self.start(io, conn, Side::Client(side), ctx)
    }

    fn start<R: Requests<Ctx<C>>>(&self, io: &R, conn: Conn, side: Side, ctx: C) -> Result<()> {
        self.check_watcher(conn)?;
        if self.is_tls(conn) {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the connection already speaks TLS",
            )));
        }
        let deadline = self
            .handshake_timeout
            .and_then(|t| Instant::now().checked_add(t));
        let mut s = Box::new(Session::new(conn, side, ctx, deadline));
        // A client speaks first.
        let mut out = self.spare_buf();
        let turn = s.drive(&mut Vec::new(), &mut Vec::new(), &mut out, Job::None);
        if let Some(e) = turn.error {
            return Err(tls_error(e));
        }
        if !out.is_empty() {
            io.write(conn, internal(Kind::Records), out)?;
        }
        read_at(io, conn, deadline)?;
        s.read_armed(deadline);
        let slot = conn.slot() as usize;
        let mut t = self.sessions.borrow_mut();
        if t.len() <= slot {
            t.resize_with(slot + 1, || None);
        }
        t[slot] = Some(s);
        self.live.set(self.live.get() + 1);
        Ok(())
    }

    /// Reads the rustls state of a session (ALPN protocol, protocol version,
    /// cipher suite, whether the handshake was resumed, peer certificates).
    /// `f` runs with the session table borrowed: it must not call into this
    /// `Tls` (copy out what it needs instead).
    ///
    /// ```
    /// # let tls: gaio_tls::Tls<()> = gaio_tls::Tls::new();
    /// # let conn = gaio_core::Watcher::<()>::new()?.register(std::os::unix::net::UnixStream::pair()?.0)?;
    /// use rustls::HandshakeKind;
    /// let resumed = tls.state(conn, |s| s.handshake_kind() == Some(HandshakeKind::Resumed));
    /// assert_eq!(resumed, None); // not a TLS connection
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn state<T>(&self, conn: Conn, f: impl FnOnce(&rustls::CommonState) -> T) -> Option<T> {
        self.with(conn, |s| f(s.common()))
    }

    /// Whether the peer ended its side with `close_notify` (`Some(false)` for
    /// a TLS connection whose peer did not, or not yet: an EOF read then means
    /// the peer closed TCP without it, which a protocol without its own framing
    /// must treat as a possible truncation).
    pub fn got_close_notify(&self, conn: Conn) -> Option<bool> {
        self.with(conn, |s| s.notified)
    }

    fn with<T>(&self, conn: Conn, f: impl FnOnce(&mut Session<C>) -> T) -> Option<T> {
        let mut t = self.sessions.borrow_mut();
        match t.get_mut(conn.slot() as usize) {
            Some(Some(s)) if s.conn == conn => Some(f(s)),
            _ => None,
        }
    }

    fn check_watcher(&self, conn: Conn) -> Result<()> {
        match self.watcher.get() {
            None => {
                self.watcher.set(Some(conn.watcher()));
                Ok(())
            }
            Some(w) if w == conn.watcher() => Ok(()),
            Some(_) => Err(Error::ForeignConn),
        }
    }

    fn spare_buf(&self) -> Vec<u8> {
        self.spare.borrow_mut().pop().unwrap_or_default()
    }

    fn recycle(&self, buffer: Buffer<'_>) {
        if let Buffer::Owned(mut v) = buffer {
            let mut spare = self.spare.borrow_mut();
            if v.capacity() <= SPARE_BYTES && spare.len() < SPARE_MAX {
                v.clear();
                spare.push(v);
            }
        }
    }

    /// Hands one completion of the watcher to the layer: a completion of the
    /// application's passes through to `f` as it is; the layer's own
    /// (`Ctx::Tls`) moves the TLS connection on and calls `f` with each
    /// plaintext completion it finishes (none, one or several). Call it for
    /// every completion of a watcher that has TLS connections; `f` gets a
    /// [`TlsIo`] to make further requests with.
    pub fn complete<R, F>(&self, io: &R, res: Completion<'_, Ctx<C>>, mut f: F)
    where
        R: Requests<Ctx<C>>,
        F: FnMut(&TlsIo<'_, C, R>, Completion<'_, C>),
    {
        let tio = TlsIo {
            tls: self,
            inner: io,
        };
        let Completion {
            op,
            conn,
            ctx,
            size,
            result,
            buffer,
        } = res;
        match ctx {
            Ctx::App(ctx) => {
                let closed = op == Op::Close && self.with(conn, |s| s.dead = true).is_some();
                f(
                    &tio,
                    Completion {
                        op,
                        conn,
                        ctx,
                        size,
                        result,
                        buffer,
                    },
                );
                if closed {
                    self.settle(&tio, conn, &mut f);
                }
            }
            Ctx::Tls(Internal(kind)) => match kind {
                Kind::Read(deadline) => {
                    self.with(conn, |s| s.read_back(deadline));
                    self.ciphertext(&tio, conn, result, &buffer, size, &mut f)
                }
                Kind::Write { ctx, plain } => {
                    let sent = result.is_ok();
                    self.recycle(buffer);
                    if let Err(e) = &result {
                        self.fail(io, conn, dup(e), Vec::new());
                    }
                    let size = if sent { plain.len() } else { 0 };
                    let buffer = plain_buffer(plain);
                    f(
                        &tio,
                        Completion {
                            op: Op::Write,
                            conn,
                            ctx,
                            size,
                            result,
                            buffer,
                        },
                    );
                    self.settle(&tio, conn, &mut f);
                }
                Kind::Records => {
                    self.recycle(buffer);
                    if let Err(e) = &result {
                        self.fail(io, conn, dup(e), Vec::new());
                        self.settle(&tio, conn, &mut f);
                    }
                }
                Kind::Close => {
                    self.with(conn, |s| s.dead = true);
                    self.settle(&tio, conn, &mut f);
                }
                Kind::Flushed | Kind::End { .. } => {
                    // A `Flushed` completion ends every write it carried; an
                    // `End` completion ends its one shutdown or close (which
                    // may complete first: a deadline goes ahead of the queue).
                    let end = match kind {
                        Kind::End { close } => Some(close),
                        _ => {
                            self.recycle(buffer);
                            None
                        }
                    };
                    if let Err(e) = &result {
                        self.fail(io, conn, dup(e), Vec::new());
                    }
                    let mut once = false;
                    while let Some(item) = (!once)
                        .then(|| self.with(conn, |s| s.next_flushed(end)).flatten())
                        .flatten()
                    {
                        once = end.is_some();
                        if matches!(item, Waiting::Close(..)) {
                            self.with(conn, |s| s.dead = true);
                        }
                        let res = match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(dup(e)),
                        };
                        f(&tio, Out::Waiting(item, res).into_completion(conn, &[]));
                    }
                    self.settle(&tio, conn, &mut f);
                }
            },
        }
    }

    /// A ciphertext read completed: decrypt what came, then deliver.
    fn ciphertext<R, F>(
        &self,
        tio: &TlsIo<'_, C, R>,
        conn: Conn,
        result: Result<()>,
        buffer: &Buffer<'_>,
        size: usize,
        f: &mut F,
    ) where
        R: Requests<Ctx<C>>,
        F: FnMut(&TlsIo<'_, C, R>, Completion<'_, C>),
    {
        let mut alert = Vec::new();
        let mut failure = None;
        let mut flush = false;
        let found = self.with(conn, |s| {
            let mut plain = self.plain.borrow_mut();
            plain.clear();
            plain.append(&mut s.plain_rest);
            s.plain_rest = Vec::new();
            self.taken.set(0);
            if s.failed.is_some() {
                return;
            }
            match result {
                Ok(()) if size > 0 => {
                    let data: &[u8] = match buffer {
                        Buffer::Swap(d) => d,
                        Buffer::Owned(v) => &v[..size],
                        _ => &[],
                    };
                    let mut cipher = self.cipher.borrow_mut();
                    cipher.clear();
                    cipher.append(&mut s.pending_in);
                    cipher.extend_from_slice(data);
                    let was_open = s.open;
                    alert = self.spare_buf();
                    let turn = s.drive(&mut cipher, &mut plain, &mut alert, Job::None);
                    if turn.peer_closed {
                        s.peer_eof = true;
                        s.notified = true;
                    }
                    if let Some(e) = turn.error {
                        failure = Some(tls_error(e));
                    } else if cipher.len() > MAX_PENDING {
                        failure = Some(invalid("a TLS record or handshake message too large"));
                    } else {
                        s.pending_in = if cipher.is_empty() {
                            Vec::new()
                        } else {
                            cipher.to_vec()
                        };
                        flush = turn.open && !was_open;
                    }
                }
                Ok(()) => {
                    s.peer_eof = true;
                    if !s.open {
                        failure = Some(Error::Io(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "EOF during the TLS handshake",
                        )));
                    }
                }
                Err(Error::Deadline) => {
                    let expired = s.handshake_deadline.is_some_and(|d| d <= Instant::now());
                    if !s.open && expired {
                        failure = Some(Error::Deadline);
                    }
                }
                Err(e) => failure = Some(e),
            }
        });
        if found.is_none() {
            return;
        }
        if let Some(e) = failure {
            self.fail(tio.inner, conn, e, alert);
        } else {
            if !alert.is_empty() {
                if let Err(e) = tio.inner.write(conn, internal(Kind::Records), alert) {
                    self.fail(tio.inner, conn, e, Vec::new());
                }
            } else if alert.capacity() > 0 {
                self.spare.borrow_mut().push(alert);
            }
            if flush {
                self.flush_waiting(tio.inner, conn);
            }
        }
        self.settle(tio, conn, f);
    }

    /// Ends a session with `err`: sends `alert` (if any), closes the connection
    /// (unless the application already is), and leaves every waiting request to
    /// complete with the error.
    fn fail<R: Requests<Ctx<C>>>(&self, io: &R, conn: Conn, err: Error, alert: Vec<u8>) {
        let close = self
            .with(conn, |s| {
                if s.failed.is_some() {
                    return false;
                }
                s.failed = Some(err);
                let close = !s.dead && !s.closing;
                s.write_closed = true;
                s.closing = true;
                close
            })
            .unwrap_or(false);
        if close {
            if !alert.is_empty() {
                let _ = io.write(conn, internal(Kind::Records), alert);
            }
            let grace = Instant::now() + Duration::from_secs(1);
            if io.close(conn, internal(Kind::Close), Some(grace)).is_err() {
                self.with(conn, |s| s.dead = true);
            }
        }
    }

    /// The handshake ended: encrypt what waited for it into one run of
    /// records, in order, and send it. The requests stay in the session until
    /// the watcher completes those bytes, so each completes exactly once, even if
    /// the watcher refuses them.
    fn flush_waiting<R: Requests<Ctx<C>>>(&self, io: &R, conn: Conn) {
        let Some(items) = self.with(conn, |s| std::mem::take(&mut s.waiting)) else {
            return;
        };
        if items.is_empty() {
            return;
        }
        // Writes, then at most a shutdown and a close (writes after those were
        // refused when made): the writes' records and one close_notify in one
        // buffer, then the shutdown and close themselves.
        let mut out = self.spare_buf();
        let mut res = Ok(());
        let mut notified = false;
        for item in &items {
            if res.is_err() {
                break;
            }
            res = match item {
                Waiting::Write(_, buf, _) => {
                    self.encrypt(io, conn, Job::Encrypt(buf.as_ref()), &mut out)
                }
                Waiting::Shutdown(_) | Waiting::Close(..) if !notified => {
                    notified = true;
                    self.encrypt(io, conn, Job::CloseNotify, &mut out)
                }
                _ => Ok(()),
            };
        }
        let ends: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                Waiting::Shutdown(_) => Some((false, None)),
                Waiting::Close(_, deadline) => Some((true, *deadline)),
                Waiting::Write(..) => None,
            })
            .collect();
        // The records go as one write, due by the earliest deadline among them.
        let due = items
            .iter()
            .filter_map(|i| match i {
                Waiting::Write(_, _, d) => *d,
                _ => None,
            })
            .min();
        self.with(conn, |s| s.flushed.extend(items));
        let sent = res.and_then(|()| match due {
            Some(d) => io.write_deadline(conn, internal(Kind::Flushed), out, d),
            None => io.write(conn, internal(Kind::Flushed), out),
        });
        if let Err(e) = sent {
            // Nothing reached the watcher: the requests complete with the
            // failure at the next delivery.
            if self.with(conn, |s| s.failed.is_none()) == Some(true) {
                self.fail(io, conn, e, Vec::new());
            }
            self.with(conn, Session::unflush);
            return;
        }
        for (i, (close, deadline)) in ends.iter().enumerate() {
            let res = if *close {
                io.close(conn, internal(Kind::End { close: true }), *deadline)
                    .inspect(|()| {
                        self.with(conn, |s| s.closing = true);
                    })
            } else {
                io.shutdown(conn, internal(Kind::End { close: false }))
            };
            if let Err(e) = res {
                // This one and those after it never reach the watcher: they
                // complete with the failure.
                self.fail(io, conn, e, Vec::new());
                self.with(conn, |s| {
                    let keep = s.flushed.len() - (ends.len() - i);
                    let rest: Vec<_> = s.flushed.drain(keep..).collect();
                    for w in rest.into_iter().rev() {
                        s.waiting.push_front(w);
                    }
                });
                return;
            }
        }
    }

    /// Encrypts `buf` and queues its records.
    fn send_write<R: Requests<Ctx<C>>>(
        &self,
        io: &R,
        conn: Conn,
        ctx: C,
        buf: WriteBuf,
        deadline: Option<Instant>,
    ) -> Result<()> {
        let mut out = self.spare_buf();
        self.encrypt(io, conn, Job::Encrypt(buf.as_ref()), &mut out)?;
        let plain = buf;
        let ctx = internal(Kind::Write { ctx, plain });
        match deadline {
            Some(d) => io.write_deadline(conn, ctx, out, d),
            None => io.write(conn, ctx, out),
        }
        .inspect_err(|e| self.fail(io, conn, dup(e), Vec::new()))
    }

    /// Sends `close_notify`, then the application's shutdown or close.
    fn send_end<R: Requests<Ctx<C>>>(
        &self,
        io: &R,
        conn: Conn,
        ctx: C,
        deadline: Option<Instant>,
        close: bool,
    ) -> Result<()> {
        let mut out = self.spare_buf();
        self.encrypt(io, conn, Job::CloseNotify, &mut out)?;
        self.with(conn, |s| s.write_closed = true);
        if let Err(e) = io.write(conn, internal(Kind::Records), out) {
            // close_notify is spent: the connection cannot end cleanly.
            self.fail(io, conn, dup(&e), Vec::new());
            return Err(e);
        }
        if close {
            io.close(conn, Ctx::App(ctx), deadline)?;
            self.with(conn, |s| s.closing = true);
            Ok(())
        } else {
            io.shutdown(conn, Ctx::App(ctx))
        }
    }

    /// Runs `job` on an open session, into `out`.
    fn encrypt<R: Requests<Ctx<C>>>(
        &self,
        io: &R,
        conn: Conn,
        job: Job<'_>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let mut plain = Vec::new();
        let turn = self
            .with(conn, |s| {
                let mut incoming = std::mem::take(&mut s.pending_in);
                let turn = s.drive(&mut incoming, &mut plain, out, job);
                s.pending_in = incoming;
                s.plain_rest.append(&mut plain);
                turn
            })
            .ok_or(Error::ConnClosed)?;
        if let Some(e) = turn.error {
            let alert = std::mem::take(out);
            self.fail(io, conn, tls_error(e), alert);
            return Err(invalid("TLS failed while encrypting"));
        }
        if !turn.done {
            return Err(Error::ConnClosed);
        }
        Ok(())
    }

    /// Delivers every completion `conn`'s session has ready (plaintext to
    /// reads, EOF, expired deadlines, the handshake's end, failures), then asks
    /// the watcher for more ciphertext if a read still waits, or drops the
    /// session if it is over.
    fn settle<R, F>(&self, tio: &TlsIo<'_, C, R>, conn: Conn, f: &mut F)
    where
        R: Requests<Ctx<C>>,
        F: FnMut(&TlsIo<'_, C, R>, Completion<'_, C>),
    {
        let outer = self.settling.replace(Some(conn));
        loop {
            let next = self.with(conn, |s| self.next(s)).flatten();
            if let Some(out) = next {
                let plain = self.plain.borrow();
                f(tio, out.into_completion(conn, &plain));
                continue;
            }
            // Nothing more to deliver: keep what no read took, then read more
            // or let go.
            let arm = self.with(conn, |s| {
                let plain = self.plain.borrow();
                let rest = &plain[self.taken.get().min(plain.len())..];
                if !rest.is_empty() {
                    s.plain_rest.extend_from_slice(rest);
                }
                s.settled();
                s.read_plan()
            });
            self.plain.borrow_mut().clear();
            self.taken.set(0);
            match arm.flatten() {
                None => {
                    self.reap(conn);
                    break;
                }
                Some(deadline) => match self.arm(tio.inner, conn, deadline) {
                    Ok(()) => break,
                    Err(e) => self.fail(tio.inner, conn, e, Vec::new()),
                },
            }
        }
        self.settling.set(outer);
    }

    fn arm<R: Requests<Ctx<C>>>(
        &self,
        io: &R,
        conn: Conn,
        deadline: Option<Instant>,
    ) -> Result<()> {
        read_at(io, conn, deadline)?;
        self.with(conn, |s| s.read_armed(deadline));
        Ok(())
    }

    /// Drops a session that is over (freed or closed at the watcher) and has
    /// nothing in flight or waiting.
    fn reap(&self, conn: Conn) {
        let mut t = self.sessions.borrow_mut();
        if let Some(slot) = t.get_mut(conn.slot() as usize) {
            let over = slot.as_ref().is_some_and(|s| {
                s.conn == conn && s.dead && s.core_reads == 0 && !s.holds_requests()
            });
            if over {
                *slot = None;
                self.live.set(self.live.get() - 1);
            }
        }
    }

    /// The next completion a session has ready, if any.
    fn next(&self, s: &mut Session<C>) -> Option<Out<C>> {
        if s.open && s.failed.is_none() {
            if let Some(ctx) = s.handshake.take() {
                let mut st = self.stats.get();
                st.handshakes += 1;
                if s.common().handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    st.resumed += 1;
                }
                self.stats.set(st);
                return Some(Out::Handshake(ctx, Ok(())));
            }
        }
        if s.reads.iter().any(|r| r.deadline.is_some() && !r.late) {
            let now = Instant::now();
            if let Some(i) = s
                .reads
                .iter()
                .position(|r| !r.late && r.deadline.is_some_and(|d| d <= now))
            {
                let r = s.reads.remove(i)?;
                return Some(Out::Read(r, Err(Error::Deadline), 0..0));
            }
        }
        if let Some(err) = &s.failed {
            if let Some(ctx) = s.handshake.take() {
                let mut st = self.stats.get();
                st.failed += 1;
                self.stats.set(st);
                return Some(Out::Handshake(ctx, Err(dup(err))));
            }
            if s.reads.front().is_some_and(|r| !r.late) {
                let r = s.reads.pop_front()?;
                return Some(Out::Read(r, Err(dup(err)), 0..0));
            }
            return s
                .waiting
                .pop_front()
                .map(|w| Out::Waiting(w, Err(dup(err))));
        }
        let plain = self.plain.borrow();
        let at = self.taken.get().min(plain.len());
        let avail = plain.len() - at;
        if avail > 0 {
            let r = s.reads.front_mut()?;
            let n = match &mut r.buf {
                None => avail,
                Some(buf) => {
                    let n = (buf.len() - r.done).min(avail);
                    buf[r.done..r.done + n].copy_from_slice(&plain[at..at + n]);
                    n
                }
            };
            self.taken.set(at + n);
            r.done += n;
            let full = r.buf.as_ref().is_some_and(|b| r.done == b.len());
            if r.full && !full {
                return None;
            }
            let r = s.reads.pop_front()?;
            return Some(Out::Read(r, Ok(()), at..at + n));
        }
        if s.peer_eof && s.plain_rest.is_empty() && s.reads.front().is_some_and(|r| !r.late) {
            let r = s.reads.pop_front()?;
            let result = if r.full {
                Err(Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF before the buffer was full",
                )))
            } else {
                Ok(())
            };
            return Some(Out::Read(r, result, 0..0));
        }
        None
    }
}

/// A completion a session has ready.
enum Out<C> {
    Handshake(C, Result<()>),
    /// A read, its result, and where its bytes are in the plaintext buffer
    /// (for a swap-buffer read).
    Read(Read<C>, Result<()>, std::ops::Range<usize>),
    /// A request made during the handshake, and how it ended.
    Waiting(Waiting<C>, Result<()>),
}

impl<C> Out<C> {
    fn into_completion(self, conn: Conn, plain: &[u8]) -> Completion<'_, C> {
        let (op, ctx, size, result, buffer) = match self {
            Out::Handshake(ctx, result) => (Op::Connect, ctx, 0, result, Buffer::None),
            Out::Read(r, result, range) => match r.buf {
                Some(v) => (Op::Read, r.ctx, r.done, result, Buffer::Owned(v)),
                None => (
                    Op::Read,
                    r.ctx,
                    range.len(),
                    result,
                    Buffer::Swap(&plain[range]),
                ),
            },
            Out::Waiting(Waiting::Write(ctx, buf, _), res) => {
                let size = if res.is_ok() { buf.len() } else { 0 };
                (Op::Write, ctx, size, res, plain_buffer(buf))
            }
            Out::Waiting(Waiting::Shutdown(ctx), res) => (Op::Shutdown, ctx, 0, res, Buffer::None),
            Out::Waiting(Waiting::Close(ctx, _), res) => (Op::Close, ctx, 0, res, Buffer::None),
        };
        Completion {
            op,
            conn,
            ctx,
            size,
            result,
            buffer,
        }
    }
}

/// Plaintext requests on a [`Tls`] layer's connections (and, unchanged, on the
/// watcher's plain ones): the [`Requests`] methods, from [`Tls::io`] or the
/// first argument of [`Tls::complete`]'s callback.
pub struct TlsIo<'a, C, R> {
    tls: &'a Tls<C>,
    inner: &'a R,
}

impl<C, R> std::fmt::Debug for TlsIo<'_, C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIo").field("tls", self.tls).finish()
    }
}

impl<'a, C, R: Requests<Ctx<C>>> TlsIo<'a, C, R> {
    /// The layer these requests go to.
    pub fn tls(&self) -> &'a Tls<C> {
        self.tls
    }

    /// The requests underneath (`Ctx`-typed): for the plain side of a proxy,
    /// or to pass an `Op::Accept` on.
    pub fn inner(&self) -> &'a R {
        self.inner
    }

    fn read(&self, conn: Conn, mut read: Read<C>) -> Result<()> {
        let tls = self.tls;
        let arm = tls
            .with(conn, |s| {
                if s.failed.is_some() || s.dead {
                    return Err(Error::ConnClosed);
                }
                let settling = tls.settling.get() == Some(conn);
                read.late = settling;
                s.reads.push_back(read);
                // During a delivery, the delivery reads on when it is done.
                Ok(if settling { None } else { s.read_plan() })
            })
            .ok_or(Error::ConnClosed)??;
        if let Some(deadline) = arm {
            if let Err(e) = tls.arm(self.inner, conn, deadline) {
                // Refused: take the read back out, so it never completes.
                tls.with(conn, |s| s.reads.pop_back());
                return Err(e);
            }
        }
        Ok(())
    }

    fn write_side(&self, conn: Conn, item: Waiting<C>) -> Result<()> {
        let tls = self.tls;
        let mut item = Some(item);
        let now = tls
            .with(conn, |s| {
                let is_close = matches!(item, Some(Waiting::Close(..)));
                // A close after a shutdown: close_notify went with the shutdown.
                let after_shutdown = is_close && s.write_closed && !s.closing;
                if s.failed.is_some() || s.dead || (s.write_closed && !after_shutdown) {
                    return Err(Error::ConnClosed);
                }
                if !s.open || !s.waiting.is_empty() {
                    if let Some(Waiting::Shutdown(_) | Waiting::Close(..)) = &item {
                        s.write_closed = true;
                    }
                    s.waiting.extend(item.take());
                    return Ok(false);
                }
                Ok(after_shutdown)
            })
            .ok_or(Error::ConnClosed)??;
        let (io, inner) = (tls, self.inner);
        match (item, now) {
            (None, _) => Ok(()),
            (Some(Waiting::Close(ctx, deadline)), true) => {
                inner.close(conn, Ctx::App(ctx), deadline)?;
                tls.with(conn, |s| s.closing = true);
                Ok(())
            }
            (Some(Waiting::Write(ctx, buf, deadline)), _) => {
                io.send_write(inner, conn, ctx, buf, deadline)
            }
            (Some(Waiting::Shutdown(ctx)), _) => io.send_end(inner, conn, ctx, None, false),
            (Some(Waiting::Close(ctx, deadline)), _) => {
                io.send_end(inner, conn, ctx, deadline, true)
            }
        }
    }
}

impl<C, R: Requests<Ctx<C>>> Requests<C> for TlsIo<'_, C, R> {
    fn submit(&self, conn: Conn, req: Request<C>) -> Result<()> {
        if !self.tls.is_tls(conn) {
            if self.tls.watcher.get().is_some_and(|w| w != conn.watcher()) {
                return Err(Error::ForeignConn);
            }
            return self.inner.submit(conn, req.map_ctx(Ctx::App));
        }
        let parts = req.into_parts()?;
        let (ctx, deadline) = (parts.ctx, parts.deadline);
        match parts.asks {
            Asks::Read { buf, full } => self.read(
                conn,
                Read {
                    ctx,
                    buf,
                    full,
                    done: 0,
                    deadline,
                    late: false,
                },
            ),
            Asks::Write(buf) => self.write_side(conn, Waiting::Write(ctx, buf, deadline)),
            Asks::Shutdown => self.write_side(conn, Waiting::Shutdown(ctx)),
            Asks::Close => self.write_side(conn, Waiting::Close(ctx, deadline)),
            Asks::Writable => self.inner.writable(conn, Ctx::App(ctx)),
            _ => Err(Error::Unsupported),
        }
    }

    fn connect_fd(&self, fd: OwnedFd, ctx: C, deadline: Option<Instant>) -> Result<Conn> {
        self.inner.connect_fd(fd, Ctx::App(ctx), deadline)
    }

    fn free(&self, conn: Conn) -> Result<()> {
        let tls = self.tls;
        tls.with(conn, |s| {
            s.dead = true;
            s.failed.get_or_insert(Error::ConnClosed);
        });
        let res = self.inner.free(conn);
        if tls.settling.get() != Some(conn) {
            tls.reap(conn);
        }
        res
    }
}

/// A ciphertext read, with a deadline or without.
fn read_at<C, R: Requests<Ctx<C>>>(io: &R, conn: Conn, deadline: Option<Instant>) -> Result<()> {
    match deadline {
        Some(d) => io.read_deadline(conn, internal(Kind::Read(deadline)), None, d),
        None => io.read(conn, internal(Kind::Read(None)), None),
    }
}

/// The caller's write buffer, handed back.
fn plain_buffer(buf: WriteBuf) -> Buffer<'static> {
    match buf {
        WriteBuf::Owned(v) => Buffer::Owned(v),
        WriteBuf::Shared(b) => Buffer::Shared(b),
    }
}

/// One error, again: a failure completes every request that waited on it.
fn dup(e: &Error) -> Error {
    match e {
        Error::Io(e) => Error::Io(io::Error::new(e.kind(), e.to_string())),
        Error::Deadline => Error::Deadline,
        Error::WatcherClosed => Error::WatcherClosed,
        _ => Error::ConnClosed,
    }
}

fn invalid(msg: &'static str) -> Error {
    Error::Io(io::Error::new(io::ErrorKind::InvalidData, msg))
}

fn tls_error(e: rustls::Error) -> Error {
    Error::Io(io::Error::new(io::ErrorKind::InvalidData, e))
}
