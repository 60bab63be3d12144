//! gaio-pool: N [`gaio_core::Watcher`]s on N CPU-pinned threads, with
//! pluggable load balancing and SO_REUSEPORT acceptors.
//!
//! Go gaio tells its users to "create multiple Watchers and distribute connections
//! with your preferred strategy" and to use reuseport listeners. This crate is that
//! advice, done once: each watcher thread runs your [`Handler`], connections reach
//! a watcher through a [`Balancer`] or through one SO_REUSEPORT listener per
//! watcher, and shutdown is graceful.
//!
//! # Example: a multi-core echo server
//!
//! ```no_run
//! use gaio_pool::{Event, Io, Pool};
//! use gaio_core::{Buffer, Op};
//!
//! let pool = Pool::builder().watchers(2).build(|_watcher| {
//!     let mut spare: Vec<Vec<u8>> = Vec::new(); // per-thread state, no locks
//!     move |io: &Io<()>, ev: Event<'_, ()>| {
//!         let res = match ev {
//!             Event::Connected { conn, .. } => return drop(io.read(conn, (), None)),
//!             Event::Completed(res) => res,
//!         };
//!         match res.op {
//!             Op::Read if res.result.is_ok() && res.size > 0 => {
//!                 let mut out = spare.pop().unwrap_or_default();
//!                 out.extend_from_slice(res.data());
//!                 let _ = io.write(res.conn, (), out);
//!             }
//!             Op::Write if res.result.is_ok() => {
//!                 if let Buffer::Owned(mut v) = res.buffer {
//!                     v.clear();
//!                     spare.push(v);
//!                 }
//!                 let _ = io.read(res.conn, (), None);
//!             }
//!             _ => drop(io.free(res.conn)),
//!         }
//!     }
//! })?;
//! let addr = pool.listen("127.0.0.1:7000")?;
//! println!("listening on {addr}");
//! # Ok::<(), gaio_core::Error>(())
//! ```
//!
//! Handlers are built per thread by a factory closure rather than required to be
//! `Send + Clone`: each watcher thread owns its handler outright, so per-thread
//! state (buffer pools, session maps) needs no lock and no `Send` bound, and the
//! factory learns which watcher it builds for.
#![forbid(unsafe_code)]

mod acceptor;
mod balancer;

use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Deref;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_queue::SegQueue;
use gaio_core::{Completion, Conn, ConnCounts, Error, Local, Result, Submitter, Watcher};

pub use balancer::{Balancer, BalancerKind, LeastConnections, Loads, RoundRobin, SourceHash};

use acceptor::Acceptor;

/// What a watcher thread hands its [`Handler`].
#[derive(Debug)]
pub enum Event<'a, C> {
    /// A connection was assigned to this watcher (accepted or [`Pool::assign`]ed).
    /// Submit its first request here.
    Connected {
        /// Its token on this watcher.
        conn: Conn,
        /// The client's address, when known.
        peer: Option<SocketAddr>,
    },
    /// A request completed. Swap-buffer bytes are valid during this call only.
    Completed(Completion<'a, C>),
}

/// The user's code on a watcher thread: sees every event of its watcher, in order.
///
/// Implemented for every `FnMut(&Io<C>, Event<'_, C>)`.
pub trait Handler<C>: 'static {
    /// Handles one event; make further requests through `io`.
    fn handle(&mut self, io: &Io<'_, C>, event: Event<'_, C>);
}

impl<C, F> Handler<C> for F
where
    F: for<'a, 'b> FnMut(&Io<'b, C>, Event<'a, C>) + 'static,
{
    fn handle(&mut self, io: &Io<'_, C>, event: Event<'_, C>) {
        self(io, event)
    }
}

/// A handler's way back into its watcher: dereferences to the watcher's
/// [`Local`] handle (`io.read(..)`, `io.write(..)`, `io.free(..)`), the hot path
/// for requests on the watcher's own thread. For another thread, take a
/// [`Submitter`] with [`submitter`](Self::submitter).
#[derive(Debug)]
pub struct Io<'a, C> {
    index: usize,
    local: Local<'a, C>,
    tx: &'a Submitter<C>,
}

impl<'a, C> Io<'a, C> {
    /// Which watcher of the pool this is (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// A handle to this watcher for other threads (`Clone + Send + Sync`).
    pub fn submitter(&self) -> &'a Submitter<C> {
        self.tx
    }
}

impl<'a, C> Deref for Io<'a, C> {
    type Target = Local<'a, C>;

    fn deref(&self) -> &Local<'a, C> {
        &self.local
    }
}

/// Per-watcher counters read by balancers and [`Pool::stats`]; the watcher
/// publishes its own figures (see [`Submitter::stats`]), acceptors count accepts.
#[derive(Debug)]
pub(crate) struct Counters {
    /// Kept by the watcher itself, so a free counts as soon as it is processed.
    conns: ConnCounts,
    accepts: AtomicU64,
}

impl Counters {
    pub(crate) fn live_conns(&self) -> usize {
        self.conns.live()
    }
}

/// One watcher's figures, from [`Pool::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WatcherStats {
    /// Watcher index.
    pub index: usize,
    /// Connections assigned and not yet freed.
    pub live_conns: usize,
    /// Reads pending, as of the watcher's last batch or park (an idle watcher's
    /// figures include every request it has taken in).
    pub pending_reads: usize,
    /// Writes pending, as of the watcher's last batch or park.
    pub pending_writes: usize,
    /// Completions handled.
    pub completions: u64,
    /// Connections accepted for this watcher by the pool's listeners.
    pub accepts: u64,
}

struct Worker<C> {
    tx: Submitter<C>,
    new_conns: SegQueue<(Conn, Option<SocketAddr>)>,
    counters: Arc<Counters>,
    stop: AtomicBool,
    /// Grace period for shutdown, in nanoseconds.
    grace_nanos: AtomicU64,
}

pub(crate) struct Inner<C> {
    workers: Vec<Arc<Worker<C>>>,
    /// The workers' counters again, as one slice free of `C`: what `Loads` shows
    /// a `Balancer`.
    counters: Vec<Arc<Counters>>,
    balancer: ArcSwap<Box<dyn Balancer>>,
    pub(crate) closed: AtomicBool,
    /// Core of each watcher thread, if pinned.
    cores: Vec<Option<usize>>,
}

impl<C> Inner<C> {
    fn pick(&self, peer: Option<SocketAddr>) -> usize {
        let loads = Loads {
            watchers: &self.counters,
        };
        self.balancer.load().pick(peer, &loads) % self.workers.len()
    }

    /// Registers `fd` on watcher `to` (or the balancer's choice) and tells its
    /// handler.
    /// `accepted`: it came from one of the pool's listeners (counted in stats).
    pub(crate) fn dispatch(
        &self,
        fd: OwnedFd,
        peer: Option<SocketAddr>,
        to: Option<usize>,
        accepted: bool,
    ) -> Result<(usize, Conn)> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::WatcherClosed);
        }
        let n = self.workers.len();
        let mut index = to.unwrap_or_else(|| self.pick(peer));
        if self.workers[index].tx.is_closed() {
            // That watcher's thread is gone (its handler panicked): keep serving on
            // the others rather than refusing every connection sent its way.
            let live = (1..n)
                .map(|k| (index + k) % n)
                .find(|&i| !self.workers[i].tx.is_closed());
            match live {
                Some(i) => {
                    tracing::warn!(
                        dead = index,
                        to = i,
                        "gaio-pool: watcher is gone; connection sent elsewhere"
                    );
                    index = i;
                }
                None => return Err(Error::WatcherClosed),
            }
        }
        let w = &self.workers[index];
        let conn = w.tx.register(fd)?;
        if accepted {
            // Before the handler can see it, so stats never lag a Connected event.
            w.counters.accepts.fetch_add(1, Ordering::Relaxed);
        }
        w.new_conns.push((conn, peer));
        w.tx.wake()?;
        Ok((index, conn))
    }
}

/// Configures a [`Pool`].
#[derive(Debug, Clone)]
pub struct Builder {
    watchers: Option<usize>,
    pin: bool,
    swap: usize,
    busy_poll: Option<Duration>,
    balancer: BalancerKind,
    grace: Duration,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder {
            watchers: None,
            pin: true,
            swap: 64 * 1024,
            busy_poll: None,
            balancer: BalancerKind::RoundRobin,
            grace: Duration::from_secs(5),
        }
    }
}

impl Builder {
    /// Number of watchers (default: the cores this process may use). 0 makes
    /// [`build`](Self::build) fail.
    pub fn watchers(mut self, n: usize) -> Builder {
        self.watchers = Some(n);
        self
    }

    /// Pin watcher `i` to the `i`-th core this process may use (default on). Turned
    /// off, with a warning, when there are more watchers than cores.
    pub fn pin(mut self, on: bool) -> Builder {
        self.pin = on;
        self
    }

    /// Swap buffer size of each watcher (default 64 KiB).
    pub fn swap_buffer(mut self, bytes: usize) -> Builder {
        self.swap = bytes;
        self
    }

    /// Busy-poll setting of each watcher (see `gaio_core::Builder::busy_poll`).
    pub fn busy_poll(mut self, spin: Option<Duration>) -> Builder {
        self.busy_poll = spin;
        self
    }

    /// The built-in balancer to start with (default round-robin); replace it at any
    /// time with [`Pool::set_balancer`].
    pub fn balancer(mut self, kind: BalancerKind) -> Builder {
        self.balancer = kind;
        self
    }

    /// Grace period used when the pool is dropped (default 5 s).
    pub fn grace(mut self, grace: Duration) -> Builder {
        self.grace = grace;
        self
    }

    /// Starts the watcher threads (`gaio-w0`, `gaio-w1`, …). `factory(i)` runs on
    /// thread `i` and builds its handler.
    ///
    /// # Errors
    /// [`Error::Io`] of kind `InvalidInput` for [`watchers(0)`](Self::watchers);
    /// when a watcher cannot be created (out of fds, invalid swap size) or a thread
    /// cannot be spawned.
    pub fn build<C, F, H>(self, factory: F) -> Result<Pool<C>>
    where
        C: Send + 'static,
        F: Fn(usize) -> H + Send + Sync + 'static,
        H: Handler<C>,
    {
        if self.watchers == Some(0) {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a pool needs at least one watcher",
            )));
        }
        let cores = gaio_sys::current_thread_affinity().unwrap_or_default();
        let n = self.watchers.unwrap_or_else(|| cores.len().max(1));
        let pin = self.pin && n <= cores.len();
        if self.pin && !pin {
            tracing::warn!(
                watchers = n,
                cores = cores.len(),
                "gaio-pool: more watchers than cores; not pinning"
            );
        }
        let factory = Arc::new(factory);
        let mut workers: Vec<Arc<Worker<C>>> = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        let mut core_of = Vec::with_capacity(n);
        let mut start = || -> Result<()> {
            for i in 0..n {
                let core = if pin { cores.get(i).copied() } else { None };
                let mut b = gaio_core::Watcher::builder()
                    .swap_buffer(self.swap)
                    .busy_poll(self.busy_poll);
                if let Some(c) = core {
                    b = b.cpu(c);
                }
                let w: Watcher<C> = b.build()?;
                let worker = Arc::new(Worker {
                    tx: w.submitter(),
                    new_conns: SegQueue::new(),
                    counters: Arc::new(Counters {
                        conns: w.submitter().conn_counts(),
                        accepts: AtomicU64::new(0),
                    }),
                    stop: AtomicBool::new(false),
                    grace_nanos: AtomicU64::new(0),
                });
                let f = factory.clone();
                let wk = worker.clone();
                let t = std::thread::Builder::new()
                    .name(format!("gaio-w{i}"))
                    .spawn(move || run_watcher(i, w, &wk, f(i)))
                    .map_err(Error::Io)?;
                workers.push(worker);
                threads.push(t);
                core_of.push(core);
            }
            Ok(())
        };
        if let Err(e) = start() {
            // Stop the watchers already running: nobody else can.
            for w in &workers {
                w.stop.store(true, Ordering::Release);
                let _ = w.tx.wake();
            }
            for t in threads {
                let _ = t.join();
            }
            return Err(e);
        }
        let counters = workers.iter().map(|w| w.counters.clone()).collect();
        Ok(Pool {
            inner: Arc::new(Inner {
                workers,
                counters,
                balancer: ArcSwap::from_pointee(self.balancer.build()),
                closed: AtomicBool::new(false),
                cores: core_of,
            }),
            threads,
            acceptors: Mutex::new(Vec::new()),
            grace: self.grace,
        })
    }
}

/// N watchers on N threads. See the [crate docs](crate).
pub struct Pool<C> {
    inner: Arc<Inner<C>>,
    threads: Vec<JoinHandle<()>>,
    acceptors: Mutex<Vec<Acceptor>>,
    grace: Duration,
}

impl<C> std::fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("watchers", &self.inner.workers.len())
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

impl Pool<()> {
    /// A [`Builder`]; the context type comes from the handler.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<C: Send + 'static> Pool<C> {
    /// Number of watchers.
    pub fn watchers(&self) -> usize {
        self.inner.workers.len()
    }

    /// Accepts on `addr` with one listener; the active balancer picks a watcher for
    /// each connection. Returns the bound address (useful with port 0).
    ///
    /// # Errors
    /// When binding fails, or after shutdown.
    pub fn listen(&self, addr: impl ToSocketAddrs) -> Result<SocketAddr> {
        let addr = resolve(addr)?;
        let l = acceptor::bind(addr, false)?;
        let local = l.local_addr()?;
        let a = Acceptor::spawn(l, None, None, self.inner.clone())?;
        self.acceptors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(a);
        Ok(local)
    }

    /// Accepts on `addr` with one SO_REUSEPORT listener per watcher, each accepting
    /// only for its own watcher (on the watcher's core when pinned), so the kernel
    /// spreads connections and each stays on the core that accepted it. Returns
    /// the bound address.
    ///
    /// # Errors
    /// When binding fails, or after shutdown.
    pub fn listen_reuseport(&self, addr: impl ToSocketAddrs) -> Result<SocketAddr> {
        let mut addr = resolve(addr)?;
        let mut listeners = Vec::new();
        for _ in 0..self.watchers() {
            let l = acceptor::bind(addr, true)?;
            addr = l.local_addr()?; // port 0: the others join the port the first got
            listeners.push(l);
        }
        let mut acc = self.acceptors.lock().unwrap_or_else(|e| e.into_inner());
        for (i, l) in listeners.into_iter().enumerate() {
            acc.push(Acceptor::spawn(
                l,
                Some(i),
                self.inner.cores[i],
                self.inner.clone(),
            )?);
        }
        Ok(addr)
    }

    /// Hands a connection the application accepted or dialled itself (e.g. after a
    /// handshake) to the watcher the balancer picks; its handler gets
    /// [`Event::Connected`]. Returns the watcher index and the connection's token.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a non-stream fd; [`Error::WatcherClosed`] after
    /// shutdown.
    pub fn assign(&self, stream: impl Into<OwnedFd>) -> Result<(usize, Conn)> {
        let fd = stream.into();
        let peer = socket2::SockRef::from(&fd)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket());
        self.inner.dispatch(fd, peer, None, false)
    }

    /// Replaces the balancer; the next accepted connection uses the new one. No
    /// lock is taken on the accept path.
    pub fn set_balancer(&self, balancer: impl Balancer) {
        self.inner.balancer.store(Arc::new(Box::new(balancer)));
    }

    /// Per-watcher figures (published by each watcher after every batch and
    /// whenever it goes idle).
    pub fn stats(&self) -> Vec<WatcherStats> {
        self.inner
            .workers
            .iter()
            .enumerate()
            .map(|(index, w)| {
                let st = w.tx.stats();
                WatcherStats {
                    index,
                    live_conns: w.counters.live_conns(),
                    pending_reads: st.pending_reads,
                    pending_writes: st.pending_writes,
                    completions: st.completions,
                    accepts: w.counters.accepts.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Stops accepting, lets pending writes finish for up to `grace`, then frees
    /// every connection (handlers see each remaining request complete, with
    /// `ConnClosed`), closes the watchers and joins every thread.
    ///
    /// # Panics
    /// If a handler panicked on a watcher thread, that panic resumes here once
    /// every thread is joined (as `std::thread::scope` does).
    pub fn shutdown(mut self, grace: Duration) {
        if let Some(panic) = self.stop(grace) {
            std::panic::resume_unwind(panic);
        }
    }
}

impl<C> Pool<C> {
    /// Stops everything; returns the first handler panic, if any.
    fn stop(&mut self, grace: Duration) -> Option<Box<dyn std::any::Any + Send>> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return None;
        }
        let acceptors =
            std::mem::take(&mut *self.acceptors.lock().unwrap_or_else(|e| e.into_inner()));
        for a in acceptors {
            a.stop();
        }
        let nanos = grace.as_nanos().min(u128::from(u64::MAX)) as u64;
        for w in &self.inner.workers {
            w.grace_nanos.store(nanos, Ordering::Relaxed);
            w.stop.store(true, Ordering::Release);
            let _ = w.tx.wake();
        }
        let mut first_panic = None;
        for t in self.threads.drain(..) {
            if let Err(p) = t.join() {
                tracing::error!("gaio-pool: a watcher thread panicked");
                first_panic.get_or_insert(p);
            }
        }
        first_panic
    }
}

impl<C> Drop for Pool<C> {
    fn drop(&mut self) {
        let grace = self.grace;
        // Dropping must not panic (it may run during unwinding); the panic was
        // logged. `shutdown` re-raises it instead.
        let _ = self.stop(grace);
    }
}

fn resolve(addr: impl ToSocketAddrs) -> Result<SocketAddr> {
    addr.to_socket_addrs()?.next().ok_or_else(|| {
        Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "address resolved to nothing",
        ))
    })
}

/// One batch: completions, then connections handed over since the last batch.
/// Returns how many events the handler saw.
fn turn<C, H: Handler<C>>(
    index: usize,
    w: &mut Watcher<C>,
    worker: &Worker<C>,
    handler: &mut H,
    timeout: Option<Duration>,
) -> Result<usize> {
    let batch = match timeout {
        None => w.wait_io()?,
        Some(t) => w.wait_io_timeout(t)?,
    };
    let io = Io {
        index,
        local: batch.local(),
        tx: &worker.tx,
    };
    let mut events = 0;
    for res in batch {
        handler.handle(&io, Event::Completed(res));
        events += 1;
    }
    while let Some((conn, peer)) = worker.new_conns.pop() {
        handler.handle(&io, Event::Connected { conn, peer });
        events += 1;
    }
    Ok(events)
}

fn run_watcher<C, H: Handler<C>>(
    index: usize,
    mut w: Watcher<C>,
    worker: &Worker<C>,
    mut handler: H,
) {
    while !worker.stop.load(Ordering::Acquire) {
        if let Err(e) = turn(index, &mut w, worker, &mut handler, None) {
            tracing::error!(watcher = index, error = %e, "gaio-pool: watcher failed");
            return;
        }
    }
    // Graceful part 1: let pending writes finish within the grace period. The
    // first turn does not wait: it runs what the handler queued, so it counts.
    let grace = Duration::from_nanos(worker.grace_nanos.load(Ordering::Relaxed));
    let until = Instant::now() + grace;
    let mut wait = Duration::ZERO;
    loop {
        if turn(index, &mut w, worker, &mut handler, Some(wait)).is_err() {
            break;
        }
        wait = until.saturating_duration_since(Instant::now());
        if w.stats().pending_writes == 0 || wait.is_zero() {
            break;
        }
    }
    // Part 2: free everything and hand the handler what was still pending (as
    // ConnClosed). Requests it submits in reply complete the same way on the next
    // turn; a handler that never stops resubmitting gets until the end of the
    // grace period (at least 100 ms) before the rest is dropped with the watcher.
    let hard = until.max(Instant::now() + Duration::from_millis(100));
    loop {
        let _ = w.free_all();
        match turn(index, &mut w, worker, &mut handler, Some(Duration::ZERO)) {
            Ok(0) | Err(_) => break,
            Ok(_) if Instant::now() >= hard => break,
            Ok(_) => {}
        }
    }
    let _ = w.close();
    tracing::debug!(watcher = index, "gaio-pool: watcher stopped");
}
