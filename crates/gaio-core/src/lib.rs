//! gaio-core: the [`Watcher`], a proactor over edge-triggered epoll (Linux),
//! kqueue (macOS, BSD) or io_uring (Linux, chosen with [`Backend`]).
//!
//! Hand a connected stream socket or pipe to a watcher (or let it accept or
//! connect one), submit reads and writes with owned buffers (or none: the
//! watcher's shared swap buffer), and collect completions in batches. Graceful
//! close, half-close, write watermarks and a write limit per connection, shared
//! write buffers and a framing helper ([`framing`]) make a server out of it. An idle connection
//! costs one slot in a table (about 100 bytes with a pending read) — no task, no
//! thread, no buffer.
//!
//! # API index
//!
//! | to | use |
//! |----|-----|
//! | make a watcher | [`Watcher::new`], [`Watcher::builder`]: [`swap_buffer`](Builder::swap_buffer), [`flow`](Builder::flow), [`write_limit`](Builder::write_limit), [`backend`](Builder::backend), [`busy_poll`](Builder::busy_poll), [`cpu`](Builder::cpu), [`events_capacity`](Builder::events_capacity) |
//! | hand it a socket | [`Watcher::register`], [`Local::register`], [`Submitter::register`]; back out: [`Local::detach`] |
//! | make requests | the [`Requests`] trait on a [`Local`] ([`Watcher::local`], [`Completions::local`]) or a [`Submitter`] ([`Watcher::submitter`]) |
//! | read | [`read`](Requests::read), [`read_timeout`](Requests::read_timeout), [`read_deadline`](Requests::read_deadline), [`read_full`](Requests::read_full) |
//! | write | [`write`](Requests::write), [`write_timeout`](Requests::write_timeout), [`write_deadline`](Requests::write_deadline) ([`WriteBuf`]: a `Vec` or a shared `Arc<[u8]>`) |
//! | accept, connect | [`accept`](Requests::accept), [`connect`](Requests::connect), [`connect_unix`](Requests::connect_unix), [`connect_fd`](Requests::connect_fd) |
//! | end a connection | [`shutdown`](Requests::shutdown) (half-close), [`close`](Requests::close) (after queued writes), [`free`](Requests::free) (now), [`Watcher::free_all`] |
//! | slow peers | [`Flow`]: [`Local::is_writable`], [`writable`](Requests::writable), [`Local::set_flow`], [`Local::queued`], [`Builder::write_limit`] |
//! | frames | [`framing::Framer`]: [`frames`](framing::Framer::frames), [`deadline`](framing::Framer::deadline) |
//! | collect completions | [`Watcher::wait_io`], [`Watcher::wait_io_timeout`]: a batch of [`Completion`] ([`Op`], [`Buffer`], [`Error`]) |
//! | watch it | [`Watcher::stats`], [`Submitter::stats`]: [`Stats`] |
//! | stop it | [`Watcher::close`], or drop it |
//!
//! # Quick start: the echo server from Go gaio's README
//!
//! ```no_run
//! use gaio_core::{Buffer, Op, Requests, Watcher};
//!
//! let mut w: Watcher<()> = Watcher::new()?;
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! println!("listening on {}", listener.local_addr()?);
//! let l = w.register(listener)?; // the watcher accepts too: no other thread
//! for _ in 0..16 {
//!     w.local().accept(l, ())?;
//! }
//! let mut spare: Vec<Vec<u8>> = Vec::new(); // write buffers handed back, reused
//! loop {
//!     let batch = w.wait_io()?;
//!     // Requests from the completion loop: the hot path, straight into the
//!     // connection's queue. (`w.free(..)` here would not compile: the batch
//!     // borrows the watcher.)
//!     let io = batch.local();
//!     for res in batch {
//!         match (res.op, &res.result) {
//!             (Op::Accept, _) => {
//!                 if let Some((conn, _peer)) = res.accepted() {
//!                     io.read(conn, (), None)?; // into the swap buffer
//!                 }
//!                 io.accept(l, ())?;
//!             }
//!             (Op::Read, Ok(())) if res.size > 0 => {
//!                 let mut out = spare.pop().unwrap_or_default();
//!                 out.extend_from_slice(res.data());
//!                 io.write(res.conn, (), out)?; // read again once this completes
//!             }
//!             (Op::Write, Ok(())) => {
//!                 if let Buffer::Owned(mut v) = res.buffer {
//!                     v.clear();
//!                     spare.push(v);
//!                 }
//!                 io.read(res.conn, (), None)?;
//!             }
//!             _ => io.free(res.conn)?, // EOF or error
//!         }
//!     }
//! }
//! # Ok::<(), gaio_core::Error>(())
//! ```
//!
//! # Backends
//!
//! | OS | poller | waker |
//! |----|--------|-------|
//! | Linux, Android | epoll, edge-triggered (`Backend::Epoll`, the default) | eventfd |
//! | Linux ≥ 6.1 | io_uring (`Backend::IoUring`, or `Auto`) | eventfd, polled by the ring |
//! | macOS, iOS, FreeBSD, NetBSD, DragonFly, OpenBSD | kqueue, `EV_CLEAR` | `EVFILT_USER` |
//!
//! CI runs every test on Linux, on epoll and again on io_uring; the kqueue
//! backend is type-checked (clippy) for macOS, FreeBSD and NetBSD and has never
//! run. On io_uring the engine submits each transfer as an operation and keeps
//! its buffer until the kernel's completion; swap-buffer reads land in a ring
//! of provided buffers (see [`Builder::swap_buffer`]). Every request means the
//! same on both; see [`Backend`] for what differs.
//!
//! # Rules
//!
//! * **No hidden threads.** All I/O happens inside [`Watcher::wait_io`] on the
//!   caller's thread.
//! * **One vocabulary, two ways in.** The requests are the methods of the
//!   [`Requests`] trait (bring it into scope: `use gaio_core::Requests;`),
//!   written once for every path. On the watcher's own thread, a [`Local`] (from
//!   [`Completions::local`] inside the completion loop, or [`Watcher::local`])
//!   puts a request straight into its connection's queue: no atomic
//!   read-modify-write, no lock, no copy. From any thread, a [`Submitter`] queues
//!   it through a lock-free queue; a submission wakes the watcher only if it is
//!   parked in the poller, so while it is busy, submitting costs no system call.
//! * **Exactly once.** Every accepted request completes exactly once — success,
//!   error, deadline, [`free`](Requests::free), or peer close — with its `ctx`, its
//!   byte count and (if it had one) its buffer. A refused request returns `Err` at
//!   once. The one exception: closing the watcher drops pending requests.
//! * **Order.** Requests on one connection complete in submission order per
//!   direction (reads and writes are independent), except that a request whose
//!   deadline passes completes then, ahead of requests queued before it.
//!   Submissions are ordered across threads and paths by happens-before: a
//!   `Local` request is applied after every `Submitter` request that happened
//!   before it.
//! * **Swap buffer.** A read with no buffer lands in the watcher's swap buffer
//!   (64 KiB by default); the completion borrows it, so the borrow checker ends its
//!   use before the next `wait_io`. When one batch fills it, further swap reads stay
//!   pending until the next `wait_io`; no byte is lost.
//!
//!   ```compile_fail
//!   # let mut w: gaio_core::Watcher<()> = gaio_core::Watcher::new().unwrap();
//!   let first = w.wait_io().unwrap().next(); // borrows the swap buffer…
//!   let second = w.wait_io();                // …so this does not compile
//!   drop(first);
//!   ```
//! * **Readiness is cached.** A request on a connection already known to be ready is
//!   attempted as soon as the watcher sees it, without waiting for another event.
//!   Several queued writes go out in one `writev`.
//! * **Tokens, not fds.** A [`Conn`] names a slot and a generation; a freed `Conn`
//!   never reaches a newer connection that reuses the slot or the fd number.
//! * **Deadlines** never fire early; a deadline already past completes at the next
//!   `wait_io`. They cost O(log n) in the number of armed deadlines to arm, cancel
//!   and fire, plus a scan of the connection's own queue when the request that
//!   expires is not first in line.
//! * **Signals.** Sockets are written with `MSG_NOSIGNAL` (`SO_NOSIGPIPE` on
//!   BSD/macOS): a reset peer is an `Err`, never a `SIGPIPE`. Pipes have no such
//!   flag: a write to a pipe whose reader is gone raises `SIGPIPE` unless the
//!   process ignores it — Rust programs do by default, C hosts may not.
//! * **Allocation.** Requests made through a `Local`, and all completions,
//!   allocate nothing once warm. `Submitter` requests go through a lock-free
//!   `SegQueue`, which allocates a block per 31 submissions.
#![forbid(unsafe_code)]

// Layout: `watcher` is the public face; a request is made by a `requests` method
// and goes through `submit` (Local: straight to the engine; Submitter: through
// `queue`) → `engine` (table, queues, deadlines,
// completions) → `driver` (moves the bytes). `conn` and `req` define the token
// and the request, each in one place.
mod backend;
mod completion;
mod conn;
mod driver;
mod engine;
mod error;
mod flow;
pub mod framing;
mod queue;
mod req;
mod requests;
mod submit;
mod watcher;

pub use backend::{Backend, ParseBackendError};
pub use completion::{Buffer, Completion, Op, Stats};
pub use conn::Conn;
pub use error::{Error, Result};
pub use flow::Flow;
pub use queue::ConnCounts;
pub use requests::{Asks, Parts, Request, Requests, WriteBuf};
pub use submit::{Local, Submitter};
pub use watcher::{Builder, Completions, Watcher};

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn send<T: Send>() {}
    send_sync::<Submitter<u64>>();
    send_sync::<Conn>();
    send_sync::<Error>();
    send::<Watcher<u64>>();
};
