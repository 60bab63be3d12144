//! Helpers for the gaio-core integration tests: completion collection with bounded
//! waits and an echo server, over the workspace-wide ones of `gaio-testkit`.
#![allow(dead_code, missing_docs, unused_imports)]

use std::net::TcpStream;
use std::time::{Duration, Instant};

use gaio_core::{Buffer, Conn, Error, Op, Requests, Watcher};
pub use gaio_testkit::{
    PATIENCE, fd_count, fd_list, listener, pattern, percentile, raise_fd_limit, serial, tcp_pair,
    tcp_pairs,
};

/// Asserts the process has exactly `start` fds open again, listing them if not.
pub fn assert_fds_back_to(start: usize) {
    let now = fd_count();
    if now != start {
        for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            eprintln!(
                "fd {:?} -> {:?}",
                e.file_name(),
                std::fs::read_link(e.path())
            );
        }
    }
    assert_eq!(now, start, "fds open now vs at the start");
}

/// A loopback pair whose server side is registered on a fresh watcher: (client,
/// watcher, submitter, conn), the start of most tests.
pub fn watched<C>() -> (TcpStream, Watcher<C>, gaio_core::Submitter<C>, Conn) {
    let (c, s) = tcp_pair();
    let mut w: Watcher<C> = Watcher::new().unwrap();
    let tx = w.submitter();
    let conn = w.register(s).unwrap();
    (c, w, tx, conn)
}

/// A completion with the swap bytes copied out, so it outlives the batch.
#[derive(Debug)]
pub struct Done<C> {
    pub op: Op,
    pub conn: Conn,
    pub ctx: C,
    pub size: usize,
    pub result: Result<(), Error>,
    /// The bytes transferred.
    pub data: Vec<u8>,
    /// The caller's buffer, if it had one.
    pub owned: Option<Vec<u8>>,
    /// What an accept produced.
    pub accepted: Option<(Conn, Option<std::net::SocketAddr>)>,
    /// When the batch holding it was returned.
    pub at: Instant,
}

/// Runs `wait_io_timeout` until `n` completions arrived (panics after [`PATIENCE`]).
pub fn collect<C>(w: &mut Watcher<C>, n: usize) -> Vec<Done<C>> {
    collect_within(w, n, PATIENCE)
}

pub fn collect_within<C>(w: &mut Watcher<C>, n: usize, patience: Duration) -> Vec<Done<C>> {
    let end = Instant::now() + patience;
    let mut out = Vec::new();
    while out.len() < n {
        let left = end.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "only {} of {n} completions within {patience:?}",
            out.len()
        );
        let batch = w
            .wait_io_timeout(left.min(Duration::from_millis(200)))
            .unwrap();
        let at = Instant::now();
        for c in batch {
            let data = c.data().to_vec();
            let accepted = c.accepted();
            let owned = match c.buffer {
                Buffer::Owned(v) => Some(v),
                _ => None,
            };
            out.push(Done {
                op: c.op,
                conn: c.conn,
                ctx: c.ctx,
                size: c.size,
                result: c.result,
                data,
                owned,
                accepted,
                at,
            });
        }
    }
    out
}

/// Waits for exactly one completion.
pub fn one<C>(w: &mut Watcher<C>) -> Done<C> {
    let mut v = collect(w, 1);
    assert_eq!(v.len(), 1, "expected one completion, got {}", v.len());
    v.pop().unwrap()
}

/// Asserts nothing completes within `d` (used only where "nothing happens" is the
/// behaviour under test; never to wait for I/O).
pub fn assert_quiet<C: std::fmt::Debug>(w: &mut Watcher<C>, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        let got: Vec<_> = w
            .wait_io_timeout(end.saturating_duration_since(Instant::now()))
            .unwrap()
            .map(|c| (c.op, c.ctx, c.size, c.result))
            .collect();
        assert!(got.is_empty(), "unexpected completions: {got:?}");
    }
}

/// How the echo server reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Every read into the swap buffer.
    Swap,
    /// Every read into an owned buffer of this size.
    Owned(usize),
    /// Per connection, swap or owned by a hash of the slot.
    Mixed,
}

/// Echo server: registers `streams` on a watcher in its own thread and echoes until
/// every connection reached EOF (then frees it). Returns the bytes echoed.
pub fn spawn_echo(streams: Vec<TcpStream>, mode: ReadMode) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut w: Watcher<()> = Watcher::new().unwrap();
        let tx = w.submitter();
        let n = streams.len();
        let read = move |conn: Conn, reuse: Option<Vec<u8>>| {
            let owned = match mode {
                ReadMode::Swap => false,
                ReadMode::Owned(_) => true,
                ReadMode::Mixed => conn.slot().wrapping_mul(2_654_435_761).is_multiple_of(3),
            };
            let size = if let ReadMode::Owned(s) = mode {
                s
            } else {
                1500
            };
            let buf = owned.then(|| {
                reuse
                    .filter(|v| v.len() == size)
                    .unwrap_or_else(|| vec![0; size])
            });
            tx.read(conn, (), buf).unwrap();
        };
        for s in streams {
            let c = w.register(s).unwrap();
            read(c, None);
        }
        let tx = w.submitter();
        let mut closed = 0;
        let mut echoed = 0;
        let end = Instant::now() + PATIENCE;
        while closed < n {
            assert!(
                Instant::now() < end,
                "echo server: {closed} of {n} conns closed in time"
            );
            for res in w.wait_io_timeout(Duration::from_millis(200)).unwrap() {
                match res.op {
                    Op::Read if res.result.is_ok() && res.size > 0 => {
                        echoed += res.size;
                        tx.write(res.conn, (), res.data().to_vec()).unwrap();
                    }
                    Op::Read => {
                        tx.free(res.conn).unwrap();
                        closed += 1;
                    }
                    Op::Write => {
                        res.result.expect("echo write");
                        read(res.conn, None);
                    }
                    other => panic!("echo server: unexpected {other:?}"),
                }
            }
        }
        echoed
    })
}
