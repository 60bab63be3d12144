//! gaio-pool: N [`gaio_core::Watcher`]s on N CPU-pinned threads — a server
//! framework with listeners inside the watchers, pluggable load balancing,
//! requests on any connection from anywhere, and messages between watchers.
//!
//! Go gaio tells its users to "create multiple Watchers and distribute connections
//! with your preferred strategy" and to use reuseport listeners. This crate is that
//! advice, done once:
//! - each watcher thread runs your [`Handler`], which sees every event of its
//!   watcher: [`Event::Started`], [`Event::Connected`], [`Event::Completed`] and
//!   [`Event::Message`];
//! - the watchers accept themselves, with no thread beside them: with
//!   [`Pool::listen_reuseport`] each watcher accepts on its own SO_REUSEPORT
//!   listener and keeps what it accepts; with [`Pool::listen`] one watcher accepts
//!   and the [`Balancer`] places each connection;
//! - a request on any pool `Conn` goes to the watcher that owns it, from any
//!   handler ([`Io`]) or thread ([`Handle`]);
//! - [`Handle::send`] and [`Handle::broadcast`] hand application values to one
//!   watcher or to all, as events on their own threads;
//! - [`Pool::run`] serves until SIGINT or SIGTERM; shutdown is graceful.
//!
//! # API index
//!
//! | to | use |
//! |----|-----|
//! | build it | [`Pool::builder`]: [`watchers`](Builder::watchers), [`pin`](Builder::pin), [`balancer`](Builder::balancer), [`backend`](Builder::backend), [`swap_buffer`](Builder::swap_buffer), [`flow`](Builder::flow), [`write_limit`](Builder::write_limit), [`message_limit`](Builder::message_limit), [`grace`](Builder::grace), then [`build`](Builder::build) with a [`Handler`] factory |
//! | take connections | [`Pool::listen`], [`Pool::listen_reuseport`], [`Pool::listen_on`], [`Pool::assign`]; outgoing: [`Io::connect`](gaio_core::Requests::connect), [`Handle::connect`] |
//! | handle events | [`Event`]: `Started`, `Connected`, `Completed`, `Message` |
//! | make requests | [`Io`] in a handler, [`Handle`] anywhere: the [`Requests`] methods — reads and writes with timeouts and deadlines, `accept`, `connect`, `shutdown`, `close`, `free`, `writable` |
//! | slow peers | [`Io::is_writable`], [`Io::set_flow`], [`Io::queued`], [`Builder::flow`], [`Builder::write_limit`] (see [`gaio_core::Flow`]) |
//! | talk to watchers | [`Handle::send`], [`Handle::broadcast`] (bounded by [`Builder::message_limit`]) |
//! | watch it | [`Handle::stats`]: [`PoolStats`], [`WatcherStats`] |
//! | run and stop it | [`Pool::run`] (until SIGINT/SIGTERM), [`Pool::join`] (until [`Handle::stop`]), [`Pool::shutdown`]; dropping it shuts down too |
//!
//! # Example: a multi-core echo server
//!
//! ```no_run
//! use gaio_pool::{Event, Io, Pool};
//! use gaio_core::{Buffer, Op, Requests};
//!
//! let pool = Pool::builder().watchers(2).build(|_watcher| {
//!     let mut spare: Vec<Vec<u8>> = Vec::new(); // per-thread state, no locks
//!     move |io: &Io<()>, ev: Event<'_, ()>| {
//!         let res = match ev {
//!             Event::Connected { conn, .. } => return drop(io.read(conn, (), None)),
//!             Event::Completed(res) => res,
//!             _ => return,
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
//! pool.run()?; // serves until Ctrl-C or SIGTERM, then shuts down gracefully
//! # Ok::<(), gaio_core::Error>(())
//! ```
//!
//! Handlers are built per thread by a factory closure rather than required to be
//! `Send + Clone`: each watcher thread owns its handler outright, so per-thread
//! state (buffer pools, session maps) needs no lock and no `Send` bound, and the
//! factory learns which watcher it builds for.
//!
//! # Reaching another watcher's connections
//!
//! A `Conn` names the watcher that owns it, and every request method of [`Io`]
//! and [`Handle`] (those of the [`Requests`] trait, as on a single watcher)
//! sends the request there: on the owner's own thread straight into the
//! connection's queue (the hot path), from anywhere else through the
//! owner's lock-free cross-thread queue, which costs a queue push (an allocation
//! per 31 requests) and, if the owner is idle in the poller, one wake-up system
//! call. The request completes on the owner's thread, at the owner's handler.
//! Requests made by one thread on one connection keep their order. For a
//! broadcast, write one `Arc<[u8]>` to every recipient (a reference count each,
//! no copy), or [`broadcast`](Handle::broadcast) a message and let each watcher
//! write to its own connections, as `examples/chat.rs` does.
#![forbid(unsafe_code)]

mod balancer;
mod listen;
mod route;

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_queue::SegQueue;
use gaio_core::{
    Completion, Conn, ConnCounts, Error, Flow, Local, Request, Requests, Result, Submitter, Watcher,
};

pub use balancer::{Balancer, BalancerKind, LeastConnections, Loads, RoundRobin, SourceHash};

use route::{Ctx, Target};

/// What a watcher thread hands its [`Handler`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a, C, M = ()> {
    /// The watcher's thread is running: the first event of every handler, before
    /// any connection reaches it. Set up per-thread work here (timers, outgoing
    /// connections with [`Io::connect`]).
    Started,
    /// A connection was assigned to this watcher (accepted by a pool listener or
    /// [`Pool::assign`]ed). Submit its first request here.
    Connected {
        /// Its token (owned by this watcher).
        conn: Conn,
        /// The client's address, when known.
        peer: Option<SocketAddr>,
    },
    /// A request on one of this watcher's connections completed (whichever
    /// thread made it). Swap-buffer bytes are valid during this call only.
    Completed(Completion<'a, C>),
    /// A value sent with [`Handle::send`] or [`Handle::broadcast`]. Values from
    /// one thread arrive in the order sent.
    Message(M),
}

/// The user's code on a watcher thread: sees every event of its watcher, in order.
///
/// Implemented for every `FnMut(&Io<C, M>, Event<'_, C, M>)`.
pub trait Handler<C, M = ()>: 'static {
    /// Handles one event; make further requests through `io`.
    fn handle(&mut self, io: &Io<'_, C, M>, event: Event<'_, C, M>);
}

impl<C, M, F> Handler<C, M> for F
where
    F: for<'a, 'b> FnMut(&Io<'b, C, M>, Event<'a, C, M>) + 'static,
{
    fn handle(&mut self, io: &Io<'_, C, M>, event: Event<'_, C, M>) {
        self(io, event)
    }
}

/// A handler's way into the pool: the request methods of [`Requests`]
/// (`io.read(..)`, `io.write(..)`, `io.free(..)`, …) for any connection of the
/// pool — on this watcher's connections they take the hot path (a write past
/// the write limit is refused at once there), on another's its cross-thread
/// queue — with `io.connect(..)` connecting on this watcher; plus this
/// watcher's own operations (`register`, `queued`) and, through
/// [`pool`](Self::pool), messages and stats.
pub struct Io<'a, C, M = ()> {
    index: usize,
    id: u32,
    local: Local<'a, Ctx<C>>,
    pool: &'a Handle<C, M>,
}

impl<C, M> std::fmt::Debug for Io<'_, C, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io").field("index", &self.index).finish()
    }
}

impl<'a, C, M> Io<'a, C, M> {
    /// Which watcher of the pool this is (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The whole pool, from this thread: [`send`](Handle::send),
    /// [`broadcast`](Handle::broadcast), [`stats`](Handle::stats), and a
    /// `Clone + Send` handle for other threads.
    pub fn pool(&self) -> &'a Handle<C, M> {
        self.pool
    }

    fn target(&self, conn: Conn) -> Result<Target<'a, C>> {
        if conn.watcher() == self.id {
            Ok(Target::Local(self.local))
        } else {
            self.pool.target(conn)
        }
    }

    /// Takes a socket or pipe over on this watcher (no [`Event::Connected`]
    /// follows: the caller has the `Conn`).
    ///
    /// # Errors
    /// As [`gaio_core::Watcher::register`].
    pub fn register(&self, fd: impl Into<OwnedFd>) -> Result<Conn> {
        self.local.register(fd)
    }

    /// Bytes queued for writing on one of this watcher's connections (0 for a
    /// stale `Conn` or another watcher's).
    pub fn queued(&self, conn: Conn) -> usize {
        self.local.queued(conn)
    }

    /// Whether one of this watcher's connections is writable (see
    /// [`gaio_core::Local::is_writable`]); `false` for a stale `Conn` or
    /// another watcher's.
    pub fn is_writable(&self, conn: Conn) -> bool {
        self.local.is_writable(conn)
    }

    /// Gives one of this watcher's connections watermarks of its own (see
    /// [`gaio_core::Local::set_flow`]).
    ///
    /// # Errors
    /// [`Error::ForeignConn`] for another watcher's `Conn`; as
    /// `gaio_core::Local::set_flow`.
    pub fn set_flow(&self, conn: Conn, flow: Flow) -> Result<()> {
        if conn.watcher() != self.id {
            return Err(Error::ForeignConn);
        }
        self.local.set_flow(conn, flow)
    }
}

impl<C, M> Requests<C> for Io<'_, C, M> {
    #[inline]
    fn submit(&self, conn: Conn, req: Request<C>) -> Result<()> {
        self.target(conn)?.submit(conn, req)
    }

    /// Connects on this watcher: its handler gets the completion.
    #[inline]
    fn connect_fd(&self, fd: OwnedFd, ctx: C, deadline: Option<Instant>) -> Result<Conn> {
        self.local.connect_fd(fd, Ctx::User(ctx), deadline)
    }

    #[inline]
    fn free(&self, conn: Conn) -> Result<()> {
        self.target(conn)?.free(conn)
    }
}

/// The pool from any thread (`Clone + Send + Sync`): the request methods of
/// [`Requests`] on any connection (through the owner's cross-thread queue),
/// [`connect`](Self::connect) on a watcher of your choice, messages, stats.
/// [`Pool`] dereferences to it; handlers reach it with [`Io::pool`].
pub struct Handle<C, M = ()> {
    inner: Arc<Inner<C, M>>,
}

impl<C, M> Clone for Handle<C, M> {
    fn clone(&self) -> Self {
        Handle {
            inner: self.inner.clone(),
        }
    }
}

impl<C, M> std::fmt::Debug for Handle<C, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("watchers", &self.inner.workers.len())
            .finish_non_exhaustive()
    }
}

impl<C, M> Handle<C, M> {
    /// Number of watchers.
    pub fn watchers(&self) -> usize {
        self.inner.workers.len()
    }

    fn target(&self, conn: Conn) -> Result<Target<'_, C>> {
        Ok(Target::Remote(&self.inner.worker_of(conn)?.tx))
    }

    /// Which watcher owns `conn`.
    ///
    /// # Errors
    /// [`Error::ForeignConn`] for a `Conn` of no watcher of this pool.
    pub fn owner(&self, conn: Conn) -> Result<usize> {
        self.inner.index_of(conn)
    }

    /// Connects on watcher `watcher`, as [`Requests::connect`] does; that
    /// watcher's handler gets the completion. `handle.connect(..)` is this
    /// inherent method; the trait's `connect` and `connect_unix` on a `Handle`
    /// (from generic code, or as `Requests::connect(&handle, ..)`) let the
    /// balancer choose the watcher.
    ///
    /// # Errors
    /// [`Error::Io`] of kind `InvalidInput` for an index out of range; as
    /// [`Requests::connect`].
    pub fn connect(
        &self,
        watcher: usize,
        addr: SocketAddr,
        ctx: C,
        deadline: Option<Instant>,
    ) -> Result<Conn> {
        Requests::connect(
            &self.inner.worker(watcher)?.tx,
            addr,
            Ctx::User(ctx),
            deadline,
        )
    }

    /// Hands `msg` to watcher `watcher`'s handler as [`Event::Message`], on that
    /// watcher's thread, at its next turn (waking it if idle). Messages from
    /// one thread to one watcher arrive in the order sent.
    ///
    /// # Errors
    /// [`Error::Io`] of kind `InvalidInput` for an index out of range;
    /// [`Error::WatcherClosed`] once the pool or that watcher stopped.
    pub fn send(&self, watcher: usize, msg: M) -> Result<()> {
        let w = self.inner.worker(watcher)?;
        if self.inner.closed.load(Ordering::Acquire) || w.tx.is_closed() {
            return Err(Error::WatcherClosed);
        }
        if !w.reserve(self.inner.message_limit) {
            return Err(Error::WriteLimit);
        }
        w.messages.push(msg);
        w.tx.wake()
    }

    /// Hands a clone of `msg` to every watcher (this one included), as
    /// [`send`](Self::send) does. Wrap big values in an `Arc` so a clone is a
    /// reference count.
    ///
    /// # Errors
    /// [`Error::WatcherClosed`] once the pool stopped. A watcher whose thread is
    /// gone is skipped. [`Error::WriteLimit`], delivering to none, when a
    /// watcher has its [message limit](Builder::message_limit) waiting.
    pub fn broadcast(&self, msg: M) -> Result<()>
    where
        M: Clone,
    {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::WatcherClosed);
        }
        // A place on every watcher first (a gone one never refuses), so a
        // refusal delivers to none.
        let workers = &self.inner.workers;
        let limit = self.inner.message_limit;
        for (i, w) in workers.iter().enumerate() {
            if !w.reserve(if w.tx.is_closed() { usize::MAX } else { limit }) {
                for w in &workers[..i] {
                    w.waiting.fetch_sub(1, Ordering::Relaxed);
                }
                return Err(Error::WriteLimit);
            }
        }
        for w in workers {
            if w.tx.is_closed() {
                w.waiting.fetch_sub(1, Ordering::Relaxed);
            } else {
                w.messages.push(msg.clone());
                let _ = w.tx.wake();
            }
        }
        Ok(())
    }

    /// Asks the pool to stop: [`Pool::join`] and [`Pool::run`] return after a
    /// graceful shutdown. From any thread or handler (a `SHUTDOWN` command,
    /// say); it returns at once.
    ///
    /// ```
    /// use gaio_pool::{Event, Io, Pool};
    /// let pool: Pool<()> = Pool::builder().watchers(1).build(|_| {
    ///     // Stops as soon as it runs: a handler may end the pool.
    ///     |io: &Io<'_, ()>, ev: Event<'_, ()>| if let Event::Started = ev { io.pool().stop() }
    /// })?;
    /// pool.join(); // returns once stopped and shut down
    /// # Ok::<(), gaio_core::Error>(())
    /// ```
    pub fn stop(&self) {
        self.inner.stop.ask();
    }

    /// Per-watcher figures and totals (each watcher publishes its own after
    /// every batch and whenever it goes idle).
    pub fn stats(&self) -> PoolStats {
        let watchers: Vec<WatcherStats> = self
            .inner
            .workers
            .iter()
            .enumerate()
            .map(|(index, w)| {
                let st = w.tx.stats();
                // The pool's own accepts are not the application's reads.
                let accepts_pending =
                    w.counters.listeners.load(Ordering::Relaxed) * listen::ACCEPT_DEPTH;
                WatcherStats {
                    index,
                    conns: w.counters.live_conns(),
                    waiting_messages: w.waiting.load(Ordering::Relaxed),
                    unwritable_conns: st.unwritable_conns,
                    pending_reads: st.pending_reads.saturating_sub(accepts_pending),
                    pending_writes: st.pending_writes,
                    queued_write_bytes: st.queued_write_bytes,
                    completions: st.completions,
                    accepts: w.counters.accepts.load(Ordering::Relaxed),
                    messages: w.counters.messages.load(Ordering::Relaxed),
                    backend: st.backend,
                }
            })
            .collect();
        PoolStats {
            conns: watchers.iter().map(|w| w.conns).sum(),
            queued_write_bytes: watchers.iter().map(|w| w.queued_write_bytes).sum(),
            accepts: watchers.iter().map(|w| w.accepts).sum(),
            watchers,
        }
    }
}

impl<C, M> Requests<C> for Handle<C, M> {
    #[inline]
    fn submit(&self, conn: Conn, req: Request<C>) -> Result<()> {
        self.target(conn)?.submit(conn, req)
    }

    /// Connects on the watcher the balancer picks (as for [`Pool::assign`],
    /// with no peer address); that watcher's handler gets the completion.
    fn connect_fd(&self, fd: OwnedFd, ctx: C, deadline: Option<Instant>) -> Result<Conn> {
        let index = self.inner.live_from(self.inner.pick(None))?;
        self.inner.workers[index]
            .tx
            .connect_fd(fd, Ctx::User(ctx), deadline)
    }

    #[inline]
    fn free(&self, conn: Conn) -> Result<()> {
        self.target(conn)?.free(conn)
    }
}

/// Per-watcher counters read by balancers and [`Handle::stats`]; the watcher
/// publishes its own figures (see [`Submitter::stats`]).
#[derive(Debug)]
pub(crate) struct Counters {
    /// Kept by the watcher itself, so a free counts as soon as it is processed.
    conns: ConnCounts,
    /// The pool's listeners on this watcher: counted in `conns`, but not load.
    listeners: AtomicUsize,
    accepts: AtomicU64,
    messages: AtomicU64,
}

impl Counters {
    /// Connections, listeners left out.
    pub(crate) fn live_conns(&self) -> usize {
        self.conns
            .live()
            .saturating_sub(self.listeners.load(Ordering::Relaxed))
    }
}

/// One watcher's figures, from [`Handle::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WatcherStats {
    /// Watcher index.
    pub index: usize,
    /// Connections on this watcher and not yet freed (the pool's listeners
    /// not counted): `gaio_core::Stats::conns` without the listeners.
    pub conns: usize,
    /// Connections not writable now (see [`gaio_core::Flow`]), as of the last
    /// batch or park.
    pub unwritable_conns: usize,
    /// Messages sent to this watcher and not yet handled (what
    /// [`Builder::message_limit`] bounds).
    pub waiting_messages: usize,
    /// Reads pending, as of the watcher's last batch or park (an idle watcher's
    /// figures include every request it has taken in); the accepts the pool
    /// keeps pending on its listeners are not counted.
    pub pending_reads: usize,
    /// Writes pending, as of the watcher's last batch or park.
    pub pending_writes: usize,
    /// Bytes queued for writing and not sent yet, as of the last batch or park.
    pub queued_write_bytes: usize,
    /// Completions handled.
    pub completions: u64,
    /// Connections the pool's listeners accepted and handed to this watcher.
    pub accepts: u64,
    /// Messages delivered to this watcher's handler.
    pub messages: u64,
    /// The kernel interface the watcher runs on.
    pub backend: gaio_core::Backend,
}

/// The whole pool's figures, from [`Handle::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Each watcher's figures, by index.
    pub watchers: Vec<WatcherStats>,
    /// Connections on all watchers (listeners not counted).
    pub conns: usize,
    /// Bytes queued for writing on all watchers: what slow readers cost.
    pub queued_write_bytes: usize,
    /// Connections accepted by the pool's listeners.
    pub accepts: u64,
}

struct Worker<C, M> {
    tx: Submitter<Ctx<C>>,
    new_conns: SegQueue<(Conn, Option<SocketAddr>)>,
    messages: SegQueue<M>,
    /// Messages pushed and not yet handed to the handler.
    waiting: AtomicUsize,
    counters: Arc<Counters>,
    stop: AtomicBool,
    /// Grace period for shutdown, in nanoseconds.
    grace_nanos: AtomicU64,
}

impl<C, M> Worker<C, M> {
    /// Takes a place for one more message, unless `limit` are waiting.
    fn reserve(&self, limit: usize) -> bool {
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= limit {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

pub(crate) struct Inner<C, M> {
    workers: Vec<Worker<C, M>>,
    /// The workers' counters again, as one slice free of `C`: what `Loads` shows
    /// a `Balancer`.
    counters: Vec<Arc<Counters>>,
    balancer: ArcSwap<Box<dyn Balancer>>,
    closed: AtomicBool,
    /// The pool's listeners: (watcher index, listener, balanced).
    listeners: Mutex<Vec<(usize, Conn, bool)>>,
    /// Which watcher takes the next balanced listener.
    next_listener: AtomicUsize,
    /// Most messages waiting per watcher.
    message_limit: usize,
    /// Asked to stop ([`Handle::stop`], a signal): what `join` and `run` wait for.
    stop: Stop,
}

/// A request to stop the pool, and who waits for it.
#[derive(Default)]
struct Stop {
    asked: Mutex<bool>,
    cv: Condvar,
    /// The signal iterator `Pool::run` waits on: closing it wakes `run`.
    signals: Mutex<Option<signal_hook::iterator::Handle>>,
}

impl Stop {
    fn ask(&self) {
        *self.asked.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
        if let Some(h) = &*self.signals.lock().unwrap_or_else(|e| e.into_inner()) {
            h.close();
        }
    }

    fn asked(&self) -> bool {
        *self.asked.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait(&self) {
        let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        while !*asked {
            asked = self.cv.wait(asked).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl<C, M> Inner<C, M> {
    fn worker(&self, index: usize) -> Result<&Worker<C, M>> {
        self.workers.get(index).ok_or_else(|| {
            Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("no watcher {index} (the pool has {})", self.workers.len()),
            ))
        })
    }

    fn index_of(&self, conn: Conn) -> Result<usize> {
        self.workers
            .iter()
            .position(|w| w.tx.id() == conn.watcher())
            .ok_or(Error::ForeignConn)
    }

    fn worker_of(&self, conn: Conn) -> Result<&Worker<C, M>> {
        Ok(&self.workers[self.index_of(conn)?])
    }

    pub(crate) fn pick(&self, peer: Option<SocketAddr>) -> usize {
        let loads = Loads {
            watchers: &self.counters,
        };
        self.balancer.load().pick(peer, &loads) % self.workers.len()
    }

    /// Registers `fd` on watcher `to` (or the balancer's choice) and tells its
    /// handler. `accepted`: it came from one of the pool's listeners (counted
    /// in stats).
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
        let index = self.live_from(to.unwrap_or_else(|| self.pick(peer)))?;
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

    /// `index`, or the next watcher whose thread is still running: one whose
    /// handler panicked is skipped rather than refusing everything sent its way.
    pub(crate) fn live_from(&self, index: usize) -> Result<usize> {
        self.live_from_except(index, None)
    }

    /// As `live_from`, never choosing `except` (a watcher on its way out).
    pub(crate) fn live_from_except(&self, index: usize, except: Option<usize>) -> Result<usize> {
        let n = self.workers.len();
        let live = (0..n)
            .map(|k| (index + k) % n)
            .find(|&i| Some(i) != except && !self.workers[i].tx.is_closed())
            .ok_or(Error::WatcherClosed)?;
        if live != index {
            tracing::warn!(
                dead = index,
                to = live,
                "gaio-pool: watcher is gone; sent to another"
            );
        }
        Ok(live)
    }
}

/// Configures a [`Pool`].
#[derive(Debug, Clone)]
pub struct Builder {
    watchers: Option<usize>,
    pin: bool,
    swap: Option<usize>,
    busy_poll: Option<Duration>,
    write_limit: Option<usize>,
    flow: Flow,
    message_limit: Option<usize>,
    backend: Option<gaio_core::Backend>,
    balancer: BalancerKind,
    grace: Duration,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder {
            watchers: None,
            pin: true,
            swap: None,
            busy_poll: None,
            write_limit: None,
            flow: Flow::DEFAULT,
            message_limit: None,
            backend: None,
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

    /// Swap buffer size of each watcher (default: gaio-core's, 64 KiB on epoll,
    /// a 16 MiB buffer ring on io_uring; see `gaio_core::Builder::swap_buffer`).
    pub fn swap_buffer(mut self, bytes: usize) -> Builder {
        self.swap = Some(bytes);
        self
    }

    /// Busy-poll setting of each watcher (see `gaio_core::Builder::busy_poll`).
    pub fn busy_poll(mut self, spin: Option<Duration>) -> Builder {
        self.busy_poll = spin;
        self
    }

    /// Bound on the bytes queued for writing per connection (see
    /// `gaio_core::Builder::write_limit`; default none): a write past it fails
    /// with [`Error::WriteLimit`], the sign of a peer that stopped reading.
    pub fn write_limit(mut self, bytes: Option<usize>) -> Builder {
        self.write_limit = bytes;
        self
    }

    /// The write watermarks of every connection (see [`gaio_core::Flow`];
    /// default 32 KiB / 64 KiB, reads not paused): [`Io::is_writable`], the
    /// `writable` request and paused reads, per watcher as on one.
    pub fn flow(mut self, flow: Flow) -> Builder {
        self.flow = flow;
        self
    }

    /// The most messages ([`Handle::send`], [`Handle::broadcast`]) one
    /// watcher may have waiting for its handler (default: no limit). Past it
    /// `send` and `broadcast` refuse with [`Error::WriteLimit`] and deliver
    /// nothing: the producer's sign that a watcher falls behind.
    pub fn message_limit(mut self, messages: Option<usize>) -> Builder {
        self.message_limit = messages;
        self
    }

    /// The kernel interface of every watcher (see `gaio_core::Backend`; default
    /// `Backend::from_env()`, epoll unless `GAIO_BACKEND` says otherwise).
    /// `Backend::Auto` resolves once per watcher; `PoolStats`' watchers say
    /// what each got.
    ///
    /// ```
    /// use gaio_pool::{Event, Io, Pool};
    /// let pool: Pool<()> = Pool::builder()
    ///     .watchers(1)
    ///     .backend(gaio_core::Backend::Auto)
    ///     .build(|_| |_: &Io<'_, ()>, _: Event<'_, ()>| {})?;
    /// println!("{}", pool.stats().watchers[0].backend);
    /// # drop(pool);
    /// # Ok::<(), gaio_core::Error>(())
    /// ```
    pub fn backend(mut self, backend: gaio_core::Backend) -> Builder {
        self.backend = Some(backend);
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
    /// thread `i` and builds its handler, which then gets [`Event::Started`].
    ///
    /// # Errors
    /// [`Error::Io`] of kind `InvalidInput` for [`watchers(0)`](Self::watchers);
    /// when a watcher cannot be created (out of fds, invalid swap size) or a thread
    /// cannot be spawned.
    pub fn build<C, M, F, H>(self, factory: F) -> Result<Pool<C, M>>
    where
        C: Send + 'static,
        M: Send + 'static,
        F: Fn(usize) -> H + Send + Sync + 'static,
        H: Handler<C, M>,
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
        // Every watcher first (dropping them on error closes what was made), then
        // the shared state, then the threads.
        let mut watchers = Vec::with_capacity(n);
        for i in 0..n {
            let mut b = gaio_core::Watcher::builder()
                .busy_poll(self.busy_poll)
                .write_limit(self.write_limit)
                .flow(self.flow);
            if let Some(backend) = self.backend {
                b = b.backend(backend);
            }
            if let Some(bytes) = self.swap {
                b = b.swap_buffer(bytes);
            }
            if pin {
                if let Some(&c) = cores.get(i) {
                    b = b.cpu(c);
                }
            }
            watchers.push(b.build()?);
        }
        let workers: Vec<Worker<C, M>> = watchers
            .iter()
            .map(|w: &Watcher<Ctx<C>>| Worker {
                tx: w.submitter(),
                new_conns: SegQueue::new(),
                messages: SegQueue::new(),
                waiting: AtomicUsize::new(0),
                counters: Arc::new(Counters {
                    conns: w.submitter().conn_counts(),
                    listeners: AtomicUsize::new(0),
                    accepts: AtomicU64::new(0),
                    messages: AtomicU64::new(0),
                }),
                stop: AtomicBool::new(false),
                grace_nanos: AtomicU64::new(0),
            })
            .collect();
        let handle = Handle {
            inner: Arc::new(Inner {
                counters: workers.iter().map(|w| w.counters.clone()).collect(),
                workers,
                balancer: ArcSwap::from_pointee(self.balancer.build()),
                closed: AtomicBool::new(false),
                listeners: Mutex::new(Vec::new()),
                next_listener: AtomicUsize::new(0),
                message_limit: self.message_limit.unwrap_or(usize::MAX),
                stop: Stop::default(),
            }),
        };
        let factory = Arc::new(factory);
        let mut pool = Pool {
            handle,
            threads: Vec::with_capacity(n),
            grace: self.grace,
            signals: None,
        };
        for (i, w) in watchers.into_iter().enumerate() {
            let f = factory.clone();
            let h = pool.handle.clone();
            let t = std::thread::Builder::new()
                .name(format!("gaio-w{i}"))
                .spawn(move || run_watcher(i, w, &h, f(i)));
            match t {
                Ok(t) => pool.threads.push(t),
                // Dropping the pool stops the threads already running.
                Err(e) => return Err(Error::Io(e)),
            }
        }
        Ok(pool)
    }
}

/// N watchers on N threads. See the [crate docs](crate). Dereferences to its
/// [`Handle`] (requests, messages, stats).
pub struct Pool<C, M = ()> {
    handle: Handle<C, M>,
    threads: Vec<JoinHandle<()>>,
    grace: Duration,
    /// SIGINT and SIGTERM, once caught ([`Pool::catch_signals`]).
    signals: Option<signal_hook::iterator::Signals>,
}

impl<C, M> std::fmt::Debug for Pool<C, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("watchers", &self.handle.inner.workers.len())
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

impl Pool<()> {
    /// A [`Builder`]; the context and message types come from the handler.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<C, M> std::ops::Deref for Pool<C, M> {
    type Target = Handle<C, M>;

    fn deref(&self) -> &Handle<C, M> {
        &self.handle
    }
}

impl<C: Send + 'static, M: Send + 'static> Pool<C, M> {
    /// A handle for other threads (`Clone + Send + Sync`); it outlives the pool
    /// harmlessly (requests then fail with [`Error::WatcherClosed`]).
    pub fn handle(&self) -> Handle<C, M> {
        self.handle.clone()
    }

    /// Listens on `addr` with one listener, accepted on by one watcher (the
    /// next in turn for each `listen` call); the active balancer picks the
    /// watcher of each connection, which gets it without any thread in between.
    /// Returns the bound address (useful with port 0).
    ///
    /// # Errors
    /// When binding fails, or after shutdown.
    pub fn listen(&self, addr: impl ToSocketAddrs) -> Result<SocketAddr> {
        self.listen_on(listen::bind(resolve(addr)?, false)?)
    }

    /// As [`listen`](Self::listen), on a listener the application bound itself,
    /// for socket options of its own: on Linux, accepted connections inherit
    /// `SO_SNDBUF`, `SO_RCVBUF` and `TCP_NODELAY` from their listener. It must
    /// be listening already; it is made nonblocking.
    ///
    /// ```no_run
    /// # let pool = gaio_pool::Pool::builder().build(|_| |_: &gaio_pool::Io<()>, _: gaio_pool::Event<'_, ()>| {})?;
    /// let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// socket2::SockRef::from(&l).set_send_buffer_size(64 << 10)?; // per client
    /// let addr = pool.listen_on(l)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// When the socket is not a listener the watcher can take, or after
    /// shutdown.
    pub fn listen_on(&self, listener: TcpListener) -> Result<SocketAddr> {
        let inner = &self.handle.inner;
        let local = listener.local_addr()?;
        let l = listener;
        let n = inner.workers.len();
        let index = inner.live_from(inner.next_listener.fetch_add(1, Ordering::Relaxed) % n)?;
        listen::start(inner, index, l.into(), true)?;
        Ok(local)
    }

    /// Listens on `addr` with one SO_REUSEPORT listener per watcher, each
    /// accepted on by its own watcher (on the watcher's core when pinned), so the
    /// kernel spreads connections and each stays on the core that accepted it.
    /// Returns the bound address.
    ///
    /// # Errors
    /// When binding fails, or after shutdown.
    pub fn listen_reuseport(&self, addr: impl ToSocketAddrs) -> Result<SocketAddr> {
        let mut addr = resolve(addr)?;
        let mut listeners = Vec::new();
        for _ in 0..self.watchers() {
            let l = listen::bind(addr, true)?;
            addr = l.local_addr()?; // port 0: the others join the port the first got
            listeners.push(l);
        }
        self.listen_reuseport_on(listeners)?;
        Ok(addr)
    }

    /// As [`listen_reuseport`](Self::listen_reuseport), on listeners the
    /// application bound itself (SO_REUSEPORT, one per watcher, in watcher
    /// order), for socket options of its own (see [`listen_on`](Self::listen_on)).
    ///
    /// # Errors
    /// [`Error::Io`] of kind `InvalidInput` unless there is one listener per
    /// watcher; as [`listen_on`](Self::listen_on).
    pub fn listen_reuseport_on(&self, listeners: Vec<TcpListener>) -> Result<()> {
        if listeners.len() != self.watchers() {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{} listeners for {} watchers",
                    listeners.len(),
                    self.watchers()
                ),
            )));
        }
        for (i, l) in listeners.into_iter().enumerate() {
            listen::start(&self.handle.inner, i, l.into(), false)?;
        }
        Ok(())
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
        self.handle.inner.dispatch(fd, peer, None, false)
    }

    /// Replaces the balancer; the next accepted connection uses the new one. No
    /// lock is taken on the accept path.
    pub fn set_balancer(&self, balancer: impl Balancer) {
        self.handle
            .inner
            .balancer
            .store(Arc::new(Box::new(balancer)));
    }

    /// Serves until [`Handle::stop`] is called — by a handler or any thread —
    /// then shuts down as [`shutdown`](Self::shutdown) does, with the
    /// builder's [grace period](Builder::grace).
    ///
    /// # Panics
    /// As [`shutdown`](Self::shutdown).
    pub fn join(self) {
        self.handle.inner.stop.wait();
        let grace = self.grace;
        self.shutdown(grace);
    }

    /// Catches SIGINT and SIGTERM from now on: one arriving before
    /// [`run`](Self::run) is called is kept, and `run` returns at once after
    /// the shutdown, instead of the signal ending the process. Call it before
    /// announcing the server (printing its address); `run` calls it if you did
    /// not. Signals are caught with `signal-hook` (a self-pipe: the handler
    /// itself does nothing but write a byte); no thread is started.
    ///
    /// # Errors
    /// [`Error::Io`] if the signal handlers cannot be installed.
    pub fn catch_signals(&mut self) -> Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        if self.signals.is_some() {
            return Ok(());
        }
        let signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        *self
            .handle
            .inner
            .stop
            .signals
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(signals.handle());
        self.signals = Some(signals);
        Ok(())
    }

    /// Serves until SIGINT (Ctrl-C) or SIGTERM arrives, or [`Handle::stop`] is
    /// called, then shuts down gracefully within the builder's
    /// [grace period](Builder::grace) and returns: the whole `main` of a
    /// server, which then exits with status 0. Signals during the shutdown are
    /// caught too (they do not cut it short): it takes at most the grace
    /// period. See [`catch_signals`](Self::catch_signals).
    ///
    /// ```no_run
    /// use gaio_pool::{Event, Io, Pool};
    /// let mut pool = Pool::builder().build(|_| |_: &Io<'_, ()>, _: Event<'_, ()>| {})?;
    /// pool.catch_signals()?; // from here on, Ctrl-C stops the pool gracefully
    /// println!("listening on {}", pool.listen("127.0.0.1:7000")?);
    /// pool.run()?; // until Ctrl-C or SIGTERM
    /// # Ok::<(), gaio_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] if the signal handlers cannot be installed (the pool is
    /// then shut down).
    ///
    /// # Panics
    /// As [`shutdown`](Self::shutdown).
    pub fn run(mut self) -> Result<()> {
        self.catch_signals()?;
        let mut signals = self.signals.take().expect("caught above");
        // `stop` closes the iterator; a stop asked before is seen here, and a
        // signal caught before is waiting in it.
        if !self.handle.inner.stop.asked() {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "gaio-pool: stopping on a signal");
            }
        }
        let grace = self.grace;
        self.shutdown(grace);
        Ok(())
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

impl<C, M> Pool<C, M> {
    /// Stops everything; returns the first handler panic, if any.
    fn stop(&mut self, grace: Duration) -> Option<Box<dyn std::any::Any + Send>> {
        let inner = &self.handle.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return None;
        }
        // The listeners go first: their pending accepts end, nothing new comes.
        let listeners =
            std::mem::take(&mut *inner.listeners.lock().unwrap_or_else(|e| e.into_inner()));
        for (i, l, _) in listeners {
            let _ = inner.workers[i].tx.free(l);
        }
        let nanos = grace.as_nanos().min(u128::from(u64::MAX)) as u64;
        for w in &inner.workers {
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

impl<C, M> Drop for Pool<C, M> {
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

/// One batch: completions, then connections handed over since the last batch,
/// then messages. Returns how many events the handler saw.
fn turn<C, M, H: Handler<C, M>>(
    index: usize,
    w: &mut Watcher<Ctx<C>>,
    pool: &Handle<C, M>,
    handler: &mut H,
    timeout: Option<Duration>,
) -> Result<usize> {
    let worker = &pool.inner.workers[index];
    let id = worker.tx.id();
    let batch = match timeout {
        None => w.wait_io()?,
        Some(t) => w.wait_io_timeout(t)?,
    };
    let io = Io {
        index,
        id,
        local: batch.local(),
        pool,
    };
    let mut events = 0;
    for res in batch {
        let ctx = match res.ctx {
            Ctx::User(ctx) => ctx,
            Ctx::Accept(balanced) => {
                listen::accepted(&io, res, balanced, handler);
                continue;
            }
        };
        let res = Completion {
            op: res.op,
            conn: res.conn,
            ctx,
            size: res.size,
            result: res.result,
            buffer: res.buffer,
        };
        handler.handle(&io, Event::Completed(res));
        events += 1;
    }
    while let Some((conn, peer)) = worker.new_conns.pop() {
        handler.handle(&io, Event::Connected { conn, peer });
        events += 1;
    }
    // Only those queued now: a sender that never stops cannot hold the watcher.
    for _ in 0..worker.messages.len() {
        let Some(msg) = worker.messages.pop() else {
            break;
        };
        worker.waiting.fetch_sub(1, Ordering::Relaxed);
        worker.counters.messages.fetch_add(1, Ordering::Relaxed);
        handler.handle(&io, Event::Message(msg));
        events += 1;
    }
    Ok(events)
}

fn run_watcher<C, M, H: Handler<C, M>>(
    index: usize,
    mut w: Watcher<Ctx<C>>,
    pool: &Handle<C, M>,
    mut handler: H,
) {
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        serve(index, &mut w, pool, &mut handler)
    }));
    let failed = match &served {
        Ok(Ok(())) => false,
        Ok(Err(e)) => {
            tracing::error!(watcher = index, error = %e, "gaio-pool: watcher failed");
            true
        }
        Err(_) => {
            tracing::error!(
                watcher = index,
                "gaio-pool: handler panicked; watcher stopped"
            );
            true
        }
    };
    if failed && !pool.inner.closed.load(Ordering::Acquire) {
        // Its listeners must not die with it: the others keep accepting.
        listen::rehome(index, &mut w, &pool.inner);
    }
    let _ = w.close();
    if failed && pool.inner.workers.iter().all(|w| w.tx.is_closed()) {
        // No watcher left to serve: `join` and `run` return.
        pool.inner.stop.ask();
    }
    if let Err(panic) = served {
        std::panic::resume_unwind(panic);
    }
}

/// A watcher's life: `Started`, turns until the pool stops, then the graceful
/// end. `Err` when the watcher itself failed.
fn serve<C, M, H: Handler<C, M>>(
    index: usize,
    w: &mut Watcher<Ctx<C>>,
    pool: &Handle<C, M>,
    handler: &mut H,
) -> Result<()> {
    let worker = &pool.inner.workers[index];
    let io = Io {
        index,
        id: w.submitter().id(),
        local: w.local(),
        pool,
    };
    handler.handle(&io, Event::Started);
    while !worker.stop.load(Ordering::Acquire) {
        turn(index, w, pool, handler, None)?;
    }
    // Graceful part 1: let pending writes finish within the grace period. The
    // first turn does not wait: it runs what the handler queued, so it counts.
    let grace = Duration::from_nanos(worker.grace_nanos.load(Ordering::Relaxed));
    let until = Instant::now() + grace;
    let mut wait = Duration::ZERO;
    loop {
        if turn(index, w, pool, handler, Some(wait)).is_err() {
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
        match turn(index, w, pool, handler, Some(Duration::ZERO)) {
            Ok(0) | Err(_) => break,
            Ok(_) if Instant::now() >= hard => break,
            Ok(_) => {}
        }
    }
    tracing::debug!(watcher = index, "gaio-pool: watcher stopped");
    Ok(())
}
