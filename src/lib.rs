//! gaio: proactor network I/O over edge-triggered epoll (Linux) and kqueue (BSD,
//! macOS), a Rust re-imagining of Go's [xtaci/gaio](https://github.com/xtaci/gaio).
//!
//! This facade re-exports the layers:
//!
//! * [`core`] (`gaio-core`): the [`Watcher`] — register connections, submit reads
//!   and writes, collect completions in batches;
//! * [`pool`] (`gaio-pool`): several watchers on pinned threads with load balancing,
//!   listeners inside the watchers, routing, messages and graceful shutdown.
//!
//! The most used names are re-exported at the top level, among them the
//! [`Requests`] trait: the request methods (`read`, `write`, `free`, …) of
//! every way into a watcher or a pool, so bring it into scope. See the README
//! for the echo server and the [`Watcher`] docs for the rules.
//!
//! ```
//! use std::io::{Read, Write};
//! use gaio::{Op, Requests, Watcher};
//!
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
//! let (server, _) = listener.accept()?;
//!
//! let mut w: Watcher<()> = Watcher::new()?;
//! let tx = w.submitter();
//! let conn = w.register(server)?;
//! tx.read(conn, (), None)?;
//! client.write_all(b"ping")?;
//! for res in w.wait_io()? {
//!     assert_eq!(res.op, Op::Read);
//!     tx.write(res.conn, (), res.data().to_vec())?;
//! }
//! let _ = w.wait_io()?.count(); // the write completes
//! let mut back = [0u8; 4];
//! client.read_exact(&mut back)?;
//! assert_eq!(&back, b"ping");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub use gaio_core as core;
pub use gaio_pool as pool;

pub use gaio_core::{
    Backend, Buffer, Builder, Completion, Completions, Conn, ConnCounts, Error, Flow, Local, Op,
    Request, Requests, Result, Stats, Submitter, Watcher, WriteBuf, framing,
};

/// The README's code blocks, compiled (and the runnable ones run) by `cargo test`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
