//! The Watcher: per-connection state machine, I/O engine, deadlines, completions.

use std::cell::RefCell;
use std::io;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gaio_sys::Waker;

use crate::Backend;
use crate::conn::WAKE_TOKEN;
use crate::driver::{Driver, Swap, SwapMem, poll};
use crate::engine::{Done, DoneBuf, Engine, Trim, TurnState};
use crate::queue::Shared;
use crate::submit::{Local, Submitter};
use crate::{Buffer, Completion, Conn, Error, Flow, Result, Stats};

/// The batch [`Watcher::wait_io`] returns: an iterator of [`Completion`]s that
/// borrows the watcher, so swap-buffer bytes cannot outlive the next `wait_io`.
/// Completions not taken are dropped with the iterator (their buffers freed).
///
/// Make requests while iterating through [`local`](Self::local) (the hot path) or
/// a [`Submitter`]: the watcher itself is borrowed by the batch, so calling
/// `w.free(..)` inside `for res in w.wait_io()?` does not compile (E0499).
#[derive(Debug)]
pub struct Completions<'a, C> {
    inner: std::vec::Drain<'a, Done<C>>,
    swap: &'a Swap,
    eng: &'a RefCell<Engine<C>>,
}

impl<'a, C> Completions<'a, C> {
    /// A handle for making requests on this watcher while the batch is being
    /// handled; see [`Local`]. Take it before the loop consumes the batch:
    ///
    /// ```no_run
    /// # use gaio_core::Requests;
    /// # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let batch = w.wait_io()?;
    /// let io = batch.local();
    /// for res in batch {
    ///     io.free(res.conn)?;
    /// }
    /// # Ok::<(), gaio_core::Error>(())
    /// ```
    pub fn local(&self) -> Local<'a, C> {
        Local { eng: self.eng }
    }
}

impl<'a, C> Iterator for Completions<'a, C> {
    type Item = Completion<'a, C>;

    #[inline]
    fn next(&mut self) -> Option<Completion<'a, C>> {
        let d = self.inner.next()?;
        let buffer = match d.buf {
            DoneBuf::Owned(v) => Buffer::Owned(v),
            DoneBuf::Swap { at, len } => Buffer::Swap(self.swap.bytes(at, len)),
            DoneBuf::Shared(b) => Buffer::Shared(b),
            DoneBuf::Accepted { conn, peer } => Buffer::Accepted { conn, peer },
            DoneBuf::None => Buffer::None,
        };
        Some(Completion {
            op: d.op,
            conn: d.conn,
            ctx: d.ctx,
            size: d.size,
            result: d.result,
            buffer,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<C> ExactSizeIterator for Completions<'_, C> {}

/// Configures a [`Watcher`]; get one from [`Watcher::builder`], for any context
/// type.
///
/// ```
/// use std::time::Duration;
/// struct Session { id: u64 }
/// let w = gaio_core::Watcher::<Session>::builder()
///     .swap_buffer(16 * 1024)
///     .busy_poll(Some(Duration::from_micros(50)))
///     .write_limit(Some(1 << 20))
///     .build()?;
/// # drop(w);
/// # Ok::<(), gaio_core::Error>(())
/// ```
pub struct Builder<C> {
    swap: Option<usize>,
    events: usize,
    cpu: Option<usize>,
    busy_poll: Option<Duration>,
    write_limit: Option<usize>,
    flow: Flow,
    backend: Option<Backend>,
    _ctx: PhantomData<fn() -> C>,
}

impl<C> std::fmt::Debug for Builder<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("swap", &self.swap)
            .field("events", &self.events)
            .field("cpu", &self.cpu)
            .field("busy_poll", &self.busy_poll)
            .field("write_limit", &self.write_limit)
            .field("flow", &self.flow)
            .field("backend", &self.backend)
            .finish()
    }
}

impl<C> Clone for Builder<C> {
    fn clone(&self) -> Self {
        Builder { ..*self }
    }
}

impl<C> Default for Builder<C> {
    fn default() -> Builder<C> {
        Builder {
            swap: None,
            events: 1024,
            cpu: None,
            busy_poll: None,
            write_limit: None,
            flow: Flow::DEFAULT,
            backend: None,
            _ctx: PhantomData,
        }
    }
}

impl<C> Builder<C> {
    /// Size of the swap buffer that `None`-buffer reads land in (default 64 KiB
    /// on epoll, 16 MiB on io_uring). All swap reads of one batch share it; when
    /// it is used up the remaining ones wait for the next `wait_io`.
    ///
    /// On io_uring it is a ring of provided buffers the kernel fills, one
    /// receive per buffer: a 64th of the size each (at least 256 bytes, at most
    /// 16 KiB: one read returns at most that much), as many as fit (rounded down
    /// to a power of two), so a small swap buffer still has 64 buffers for
    /// connections to share. Its pages are touched as receives use them.
    pub fn swap_buffer(mut self, bytes: usize) -> Self {
        self.swap = Some(bytes);
        self
    }

    /// The same settings, for a watcher whose requests carry a `D`: for a
    /// program that picks its context type at run time (plaintext `()`, or
    /// gaio-tls' `Ctx<()>`) after reading its options.
    ///
    /// ```
    /// use gaio_core::{Builder, Watcher};
    /// let settings: Builder<()> = Watcher::builder().swap_buffer(16 * 1024);
    /// let w: Watcher<(u32, u32)> = settings.with_ctx().build()?;
    /// # drop(w);
    /// # Ok::<(), gaio_core::Error>(())
    /// ```
    pub fn with_ctx<D>(self) -> Builder<D> {
        Builder {
            swap: self.swap,
            events: self.events,
            cpu: self.cpu,
            busy_poll: self.busy_poll,
            write_limit: self.write_limit,
            flow: self.flow,
            backend: self.backend,
            _ctx: PhantomData,
        }
    }

    /// Most readiness events taken from the poller per poll (default 1024).
    pub fn events_capacity(mut self, n: usize) -> Self {
        self.events = n.max(1);
        self
    }

    /// Pins the thread that drives the watcher (the one calling `wait_io`) to this
    /// core, at its first `wait_io`.
    pub fn cpu(mut self, core: usize) -> Self {
        self.cpu = Some(core);
        self
    }

    /// Before blocking in the poller, spin on non-blocking polls for up to this
    /// long (e.g. 50 µs): lower latency for a core's worth of CPU. Off by default.
    pub fn busy_poll(mut self, spin: Option<Duration>) -> Self {
        self.busy_poll = spin;
        self
    }

    /// The hard cap on the bytes one connection may have queued for writing:
    /// bytes of writes accepted and not yet taken by the kernel — counted from
    /// the moment each write is accepted, so the writes of one batch count
    /// before the watcher's turn sends any of them. `None` (the default) leaves
    /// only the 4 GiB a connection can ever have queued. A write that would go
    /// past it is refused with [`Error::WriteLimit`] — at once on the watcher's
    /// thread, as its completion from a `Submitter`; a single write larger than
    /// the limit is always refused.
    ///
    /// It is the last line of defence against a peer that never reads; a
    /// server that should keep serving a peer that reads slowly stays under it
    /// by producing only while the connection is writable (see [`Flow`]), and
    /// sets the limit a few high watermarks above.
    pub fn write_limit(mut self, bytes: Option<usize>) -> Self {
        self.write_limit = bytes;
        self
    }

    /// The write watermarks of every connection (default [`Flow::DEFAULT`]:
    /// 32 KiB / 64 KiB, reads not paused); one connection's can be changed with
    /// [`Local::set_flow`](crate::Local::set_flow).
    ///
    /// ```
    /// use gaio_core::{Flow, Watcher};
    /// let w: Watcher<()> = Watcher::builder()
    ///     .flow(Flow::new(64 << 10, 256 << 10).pause_reads(true))
    ///     .write_limit(Some(4 << 20))
    ///     .build()?;
    /// # drop(w);
    /// # Ok::<(), gaio_core::Error>(())
    /// ```
    pub fn flow(mut self, flow: Flow) -> Self {
        self.flow = flow;
        self
    }

    /// The kernel interface to drive (default: [`Backend::from_env`], which is
    /// `Epoll` unless `GAIO_BACKEND` says otherwise). See [`Backend`].
    ///
    /// ```
    /// use gaio_core::{Backend, Watcher};
    /// // io_uring where the kernel offers it, epoll otherwise.
    /// let w: Watcher<()> = Watcher::builder().backend(Backend::Auto).build()?;
    /// println!("running on {}", w.stats().backend);
    /// # Ok::<(), gaio_core::Error>(())
    /// ```
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Creates the watcher.
    ///
    /// # Errors
    /// [`Error::InvalidCpu`] when the core set with [`cpu`](Self::cpu) is not one
    /// this thread may run on; [`Error::Io`] when the poller cannot be created or
    /// the swap buffer size is 0, or (kind `Unsupported`, saying what is missing)
    /// when [`Backend::IoUring`] was asked for and the kernel does not offer it.
    pub fn build(self) -> Result<Watcher<C>> {
        if self.swap == Some(0) {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "swap buffer must hold at least one byte",
            )));
        }
        if let Some(core) = self.cpu {
            let allowed = gaio_sys::current_thread_affinity()?;
            if !allowed.contains(&core) {
                return Err(Error::InvalidCpu(core));
            }
        }
        let backend = self.backend.unwrap_or_else(Backend::from_env);
        let plain = || readiness(self.events, self.swap.unwrap_or(64 * 1024));
        let ring = || uring(self.swap.unwrap_or(URING_SWAP));
        let (driver, waker, mem) = match backend {
            Backend::Epoll => plain()?,
            Backend::IoUring => ring()?,
            Backend::Auto => ring().or_else(|e| {
                tracing::info!(error = %e, "gaio: io_uring unavailable, using epoll");
                plain()
            })?,
        };
        tracing::debug!(backend = %driver.backend(), "gaio watcher built");
        let shared = Arc::new(Shared::new(waker));
        let w = Watcher {
            eng: RefCell::new(Engine::new(
                shared.clone(),
                driver,
                self.write_limit,
                self.flow,
            )),
            shared,
            swap: Swap::new(mem),
            batch: Vec::new(),
            batch_used: 0,
            batch_trim: Trim::default(),
            turn: TurnState::new(self.busy_poll),
            cpu: self.cpu,
            pinned_on: None,
        };
        // Submitter::stats tells the backend from the start.
        w.shared.publish(&w.stats());
        Ok(w)
    }
}

/// The readiness driver, its waker and a plain swap buffer of `swap` bytes.
fn readiness(events: usize, swap: usize) -> Result<(Driver, Waker, SwapMem)> {
    let driver = poll::Driver::new(events)?;
    let waker = Waker::new(driver.poller(), WAKE_TOKEN)?;
    let mem = SwapMem::Plain(vec![0; swap].into_boxed_slice());
    Ok((Driver::Poll(driver), waker, mem))
}

/// The io_uring swap buffer by default: 1,024 ring buffers of 16 KiB.
const URING_SWAP: usize = 16 << 20;

/// The io_uring driver, its waker and the ring of provided buffers
/// swap-buffer reads land in (`swap` bytes, see [`Builder::swap_buffer`]), or
/// why not.
#[cfg(target_os = "linux")]
fn uring(swap: usize) -> Result<(Driver, Waker, SwapMem)> {
    use crate::driver::uring;
    let waker = Waker::eventfd()?;
    // At least 64 buffers where the size allows (a 64 KiB swap buffer is 64 of
    // 1 KiB, not 4 of 16 KiB that every connection fights over: each receive
    // takes one buffer); 256 bytes to 16 KiB each; never more than `swap` in all.
    let buffer_len = (swap / 64).clamp(256, 16 * 1024);
    let count = (swap / buffer_len).clamp(1, 1 << 15);
    let count = 1u16 << count.ilog2(); // a power of two (the ring's index mask)
    let cfg = uring::Config {
        entries: 2048,
        buffers: count,
        buffer_len: buffer_len as u32,
    };
    let (driver, buffers) = uring::Driver::new(cfg, &waker).map_err(|e| {
        if e.kind() == io::ErrorKind::Unsupported {
            Error::Io(e)
        } else {
            Error::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring unavailable: {e}"),
            ))
        }
    })?;
    Ok((Driver::Uring(driver), waker, SwapMem::Ring(buffers)))
}

#[cfg(not(target_os = "linux"))]
fn uring(_swap: usize) -> Result<(Driver, Waker, SwapMem)> {
    Err(Error::Io(io::Error::new(
        io::ErrorKind::Unsupported,
        "io_uring is Linux only",
    )))
}

/// A proactor: owns registered connections, performs their reads and writes inside
/// [`wait_io`](Self::wait_io) on the caller's thread, and returns completions in
/// batches. See the [crate docs](crate) for the rules.
///
/// Requests come from the watcher's own thread through a [`Local`] (from
/// [`local`](Self::local) or the batch's [`Completions::local`]) and from any
/// thread through a [`Submitter`].
///
/// ```
/// use std::io::Write;
/// use std::time::Duration;
/// use gaio_core::{Requests, Watcher};
///
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
/// let (server, _) = listener.accept()?;
/// let mut w: Watcher<&str> = Watcher::new()?;
/// let conn = w.register(server)?;
/// w.local().read(conn, "greeting", Some(vec![0; 16]))?;
/// client.write_all(b"hello")?;
/// let res = w.wait_io()?.next().unwrap();
/// assert_eq!((res.ctx, res.data()), ("greeting", &b"hello"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Watcher<C> {
    /// In a `RefCell` so a [`Local`] can queue requests while a batch borrows the
    /// swap buffer and the batch vector; `wait_io` reaches it through `get_mut`
    /// (no runtime borrow check).
    eng: RefCell<Engine<C>>,
    shared: Arc<Shared<C>>,
    /// Where swap-buffer reads land; batches borrow it.
    swap: Swap,
    /// The batch being handed out: the engine's completions, swapped in at the
    /// end of each `wait_io`.
    batch: Vec<Done<C>>,
    batch_used: usize,
    batch_trim: Trim,
    /// What the engine keeps from one turn to the next.
    turn: TurnState,
    cpu: Option<usize>,
    /// The thread the watcher was last pinned on.
    pinned_on: Option<std::thread::ThreadId>,
}

impl<C> Watcher<C> {
    /// A [`Builder`] for custom settings: `Watcher::<MyCtx>::builder()`, or
    /// `Watcher::builder()` where the result's type says the context.
    pub fn builder() -> Builder<C> {
        Builder::default()
    }

    /// A watcher with default settings (64 KiB swap buffer, no pinning, no write
    /// limit).
    ///
    /// ```
    /// let w: gaio_core::Watcher<u64> = gaio_core::Watcher::new()?;
    /// # drop(w);
    /// # Ok::<(), gaio_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// When the poller or waker cannot be created (e.g. out of fds).
    pub fn new() -> Result<Watcher<C>> {
        Builder::default().build()
    }

    /// A handle to submit requests from any thread (`Clone + Send + Sync`).
    ///
    /// ```
    /// let w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let tx = w.submitter();
    /// std::thread::spawn(move || tx.wake()).join().unwrap()?;
    /// # Ok::<(), gaio_core::Error>(())
    /// ```
    pub fn submitter(&self) -> Submitter<C> {
        Submitter {
            shared: self.shared.clone(),
        }
    }

    /// A handle for requests on this thread between `wait_io` calls (the hot
    /// path; see [`Local`]). Inside the completion loop, use the batch's
    /// [`Completions::local`].
    ///
    /// ```
    /// use gaio_core::Requests;
    /// let w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let (a, _b) = std::os::unix::net::UnixStream::pair()?;
    /// let io = w.local();
    /// let conn = io.register(a)?;
    /// io.read(conn, (), None)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn local(&self) -> Local<'_, C> {
        Local { eng: &self.eng }
    }

    /// Takes ownership of a stream socket or pipe (anything `Into<OwnedFd>`, e.g.
    /// `TcpStream`, `UnixStream`, `PipeReader`), makes it nonblocking and returns
    /// its token. Socket options already set are kept.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a regular file, datagram socket or other fd the
    /// poller cannot drive (the fd is closed, not leaked); [`Error::WatcherClosed`];
    /// [`Error::Io`] from the OS.
    ///
    /// ```
    /// let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let l = w.register(listener)?; // a listener: accept on it
    /// let (a, _b) = std::os::unix::net::UnixStream::pair()?;
    /// let c = w.register(a)?; // a stream: read and write on it
    /// assert_ne!(l, c);
    /// let file = std::fs::File::open("Cargo.toml")?;
    /// assert!(matches!(w.register(file), Err(gaio_core::Error::Unsupported)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn register(&mut self, fd: impl Into<OwnedFd>) -> Result<Conn> {
        self.local().register(fd)
    }

    /// Closes `conn` now: requests made before this call (on any thread) get
    /// their chance to move, then the fd is
    /// closed and every request still pending completes with
    /// [`Error::ConnClosed`] in the next `wait_io`. Freeing a stale `Conn` does
    /// nothing. ([`Local::free`](crate::Requests::free) does the same at the next turn.)
    ///
    /// # Errors
    /// [`Error::WatcherClosed`]; [`Error::ForeignConn`] for a `Conn` of another
    /// watcher.
    pub fn free(&mut self, conn: Conn) -> Result<()> {
        if self.eng.get_mut().closed {
            return Err(Error::WatcherClosed);
        }
        if conn.watcher != self.shared.id {
            return Err(Error::ForeignConn);
        }
        let eng = self.eng.get_mut();
        eng.driver.check_thread()?;
        if eng.remote_pending() {
            // A registration (or requests) other threads made first go first.
            eng.run_remote();
        }
        eng.free_now(conn, &mut self.swap);
        eng.driver.flush();
        Ok(())
    }

    /// Frees every registered connection now, as [`free`](Self::free) does for
    /// one: their pending requests complete with [`Error::ConnClosed`] in the next
    /// `wait_io`. For a graceful shutdown that still reports every request.
    ///
    /// # Errors
    /// [`Error::WatcherClosed`].
    ///
    /// ```
    /// use gaio_core::Requests;
    /// let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let (a, _b) = std::os::unix::net::UnixStream::pair()?;
    /// let conn = w.register(a)?;
    /// w.local().read(conn, (), None)?;
    /// w.free_all()?;
    /// let res = w.wait_io()?.next().unwrap();
    /// assert!(matches!(res.result, Err(gaio_core::Error::ConnClosed)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn free_all(&mut self) -> Result<()> {
        if self.eng.get_mut().closed {
            return Err(Error::WatcherClosed);
        }
        let eng = self.eng.get_mut();
        eng.driver.check_thread()?;
        eng.run_remote();
        eng.free_all(&mut self.swap);
        eng.driver.flush();
        Ok(())
    }

    /// The watcher's counters, exact on its own thread.
    ///
    /// ```
    /// use gaio_core::Requests;
    /// let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let (a, _b) = std::os::unix::net::UnixStream::pair()?;
    /// let conn = w.register(a)?;
    /// w.local().write(conn, (), vec![0; 10])?;
    /// let st = w.stats();
    /// assert_eq!((st.conns, st.pending_writes, st.queued_write_bytes), (1, 1, 10));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Stats {
        self.eng.borrow().stats()
    }

    /// Blocks until at least one request completes (or a [`Submitter::wake`]),
    /// performs the I/O that is ready, and returns the batch.
    ///
    /// # Errors
    /// [`Error::WatcherClosed`] after [`close`](Self::close);
    /// [`Error::InvalidCpu`] if pinning to the configured core fails;
    /// [`Error::Io`] if the poller fails.
    ///
    /// ```
    /// use std::io::Write;
    /// use gaio_core::Requests;
    /// let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let (a, mut b) = std::os::unix::net::UnixStream::pair()?;
    /// let conn = w.register(a)?;
    /// w.local().read(conn, (), None)?;
    /// b.write_all(b"x")?;
    /// let batch = w.wait_io()?; // blocks until the read completes
    /// assert_eq!(batch.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_io(&mut self) -> Result<Completions<'_, C>> {
        self.wait(None)
    }

    /// As [`wait_io`](Self::wait_io), but returns after `timeout` even if nothing
    /// completed (an empty batch).
    ///
    /// # Errors
    /// As [`wait_io`](Self::wait_io).
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// // Nothing pending: an empty batch after at most about 1 ms.
    /// assert_eq!(w.wait_io_timeout(Duration::from_millis(1))?.count(), 0);
    /// # Ok::<(), gaio_core::Error>(())
    /// ```
    pub fn wait_io_timeout(&mut self, timeout: Duration) -> Result<Completions<'_, C>> {
        // A timeout too long to represent is no timeout.
        self.wait(Instant::now().checked_add(timeout))
    }

    /// Closes every registered fd and drops pending requests with their buffers.
    /// Later `wait_io`, `register` and submissions fail with
    /// [`Error::WatcherClosed`]. Closing twice is harmless. Dropping the watcher
    /// closes it.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for backends whose close can fail.
    ///
    /// ```
    /// let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new()?;
    /// let tx = w.submitter();
    /// w.close()?;
    /// assert!(tx.is_closed());
    /// assert!(matches!(w.wait_io(), Err(gaio_core::Error::WatcherClosed)));
    /// # Ok::<(), gaio_core::Error>(())
    /// ```
    pub fn close(&mut self) -> Result<()> {
        if self.eng.get_mut().closed {
            return Ok(());
        }
        self.eng.get_mut().driver.check_thread()?;
        let eng = self.eng.get_mut();
        eng.closed = true;
        let conns = eng.stats().conns;
        // Operations end first (the kernel hands back what it holds), then
        // dropping the table closes every fd, which also removes it from the
        // poller; the waker's fd closes last.
        eng.clear();
        self.batch.clear();
        self.shared.close();
        self.shared.publish(&eng.stats());
        tracing::debug!(conns, "gaio watcher closed");
        Ok(())
    }

    fn pin(&mut self) -> Result<()> {
        if let Some(core) = self.cpu {
            let me = std::thread::current().id();
            if self.pinned_on != Some(me) {
                gaio_sys::pin_current_thread(core).map_err(|_| Error::InvalidCpu(core))?;
                self.pinned_on = Some(me);
            }
        }
        Ok(())
    }

    fn wait(&mut self, until: Option<Instant>) -> Result<Completions<'_, C>> {
        if self.eng.get_mut().closed {
            return Err(Error::WatcherClosed);
        }
        self.eng.get_mut().driver.check_thread()?;
        self.pin()?;
        self.batch_trim.after(&mut self.batch, self.batch_used);
        let eng = self.eng.get_mut();
        eng.turn(&mut self.swap, until, &mut self.turn)?;
        std::mem::swap(&mut self.batch, &mut eng.done);
        self.turn.handed_out(&mut eng.done, self.batch_used);
        // The batch owns the swap bytes it refers to until the next call.
        self.swap.used = 0;
        self.batch_used = self.batch.len();
        self.shared.publish(&eng.stats());
        Ok(Completions {
            inner: self.batch.drain(..),
            swap: &self.swap,
            eng: &self.eng,
        })
    }
}

impl<C> Drop for Watcher<C> {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            // Dropped off its io_uring thread: the kernel may still hold buffers
            // of pending requests, and only that thread can wait for them. They
            // are leaked rather than freed under the kernel.
            tracing::error!(error = %e, "gaio: watcher dropped on another thread; its requests and ring are leaked");
            self.shared.close();
            self.eng.get_mut().abandon();
        }
    }
}
