//! Drives a Watcher with byte-encoded operation sequences on Unix socket pairs
//! and TCP (reads, writes with owned and shared buffers, deadlines, graceful
//! close, shutdown, free, accept, connect, peer writes and closes) through both
//! submission paths, and
//! checks its promises: no panic, every accepted request completes exactly once,
//! bytes arrive in order.
//!
//! The fuzz target's body: `fuzz_targets/watcher_ops.rs` feeds it libFuzzer's
//! inputs (`cargo +nightly fuzz run watcher_ops`); gaio-core's `tests/fuzz_ops.rs`
//! replays generated inputs (and a local corpus) through it on stable, on each
//! backend (`GAIO_BACKEND`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use gaio_core::{Conn, Error, Op, Requests, Watcher};

/// The far end of a connection: a Unix socket pair, or TCP for connections the
/// watcher accepted or connected.
trait Stream: Read + Write {}
impl Stream for UnixStream {}
impl Stream for TcpStream {}

struct Peer {
    conn: Conn,
    peer: Option<Box<dyn Stream>>,
    sent: Vec<u8>,
    consumed: usize,
}

fn peer(conn: Conn, s: impl Stream + 'static) -> Peer {
    Peer {
        conn,
        peer: Some(Box::new(s)),
        sent: Vec::new(),
        consumed: 0,
    }
}

/// Runs one byte-encoded operation sequence and checks every promise.
pub fn run(data: &[u8]) {
    let mut w: Watcher<u64> = Watcher::new().unwrap();
    let tx = w.submitter();
    let mut conns: Vec<Peer> = Vec::new();
    let mut pending: HashMap<u64, (usize, Op)> = HashMap::new();
    let mut next = 0u64;
    // Connects go to `target` (accepted with std); accepts come from `listener`.
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut listener: Option<(Conn, std::net::SocketAddr)> = None;
    let mut accepting: Vec<TcpStream> = Vec::new();
    let check = |w: &mut Watcher<u64>,
                 conns: &mut Vec<Peer>,
                 pending: &mut HashMap<u64, (usize, Op)>,
                 accepting: &mut Vec<TcpStream>,
                 t: Duration| {
        let batch: Vec<_> = w
            .wait_io_timeout(t)
            .unwrap()
            .map(|c| {
                let accepted = c.accepted();
                (c.ctx, c.op, c.data().to_vec(), c.result, accepted)
            })
            .collect();
        for (id, op, bytes, result, accepted) in batch {
            let (i, want) = pending
                .remove(&id)
                .expect("completed twice or never submitted");
            assert_eq!(op, want);
            if op == Op::Accept {
                match (result, accepted) {
                    (Ok(()), Some((conn, Some(addr)))) => {
                        let k = accepting
                            .iter()
                            .position(|c| c.local_addr().unwrap() == addr)
                            .expect("accepted a client that never connected");
                        conns.push(peer(conn, accepting.swap_remove(k)));
                    }
                    (Err(Error::ConnClosed), None) => {}
                    other => panic!("accept: {other:?}"),
                }
                continue;
            }
            if op == Op::Read && !matches!(result, Err(Error::ConnClosed)) {
                let p = &mut conns[i];
                let end = p.consumed + bytes.len();
                assert!(end <= p.sent.len(), "read bytes the peer never sent");
                assert_eq!(&bytes[..], &p.sent[p.consumed..end], "bytes out of order");
                p.consumed = end;
            }
        }
    };
    for chunk in data.chunks(3) {
        let (op, a, b) = (
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&1),
        );
        let pick = |n: usize| (n > 0).then(|| a as usize % n);
        match op % 8 {
            0 if conns.len() < 4 => {
                let (x, y) = UnixStream::pair().unwrap();
                y.set_nonblocking(true).unwrap();
                let conn = w.register(x).unwrap();
                conns.push(peer(conn, y));
            }
            1 | 2 => {
                if let Some(i) = pick(conns.len()) {
                    let buf = (op % 8 == 2).then(|| vec![0u8; 1 + b as usize]);
                    // Both submission paths: the hot path and the cross-thread queue.
                    if b % 2 == 0 {
                        w.local().read(conns[i].conn, next, buf).unwrap();
                    } else {
                        tx.read(conns[i].conn, next, buf).unwrap();
                    }
                    pending.insert(next, (i, Op::Read));
                    next += 1;
                }
            }
            3 => {
                if let Some(i) = pick(conns.len()) {
                    let conn = conns[i].conn;
                    match b % 4 {
                        0 => {
                            // A graceful close, behind the writes before it.
                            w.local()
                                .close(conn, next, Some(Instant::now() + Duration::from_millis(5)))
                                .unwrap();
                            pending.insert(next, (i, Op::Close));
                        }
                        1 => {
                            w.local().shutdown(conn, next).unwrap();
                            pending.insert(next, (i, Op::Shutdown));
                        }
                        2 => {
                            // A shared buffer, as a broadcast would send it.
                            let buf: std::sync::Arc<[u8]> = vec![b; 1 + b as usize].into();
                            w.local().write(conn, next, buf).unwrap();
                            pending.insert(next, (i, Op::Write));
                        }
                        _ => {
                            let deadline = Instant::now() + Duration::from_micros(b as u64 * 50);
                            tx.write_deadline(conn, next, vec![b; 1 + b as usize], deadline)
                                .unwrap();
                            pending.insert(next, (i, Op::Write));
                        }
                    }
                    next += 1;
                }
            }
            4 => {
                if let Some(i) = pick(conns.len()) {
                    let p = &mut conns[i];
                    if let Some(s) = p.peer.as_mut() {
                        let bytes = vec![b; 1 + b as usize];
                        if let Ok(n) = s.write(&bytes) {
                            p.sent.extend_from_slice(&bytes[..n]);
                        }
                    }
                }
            }
            5 => {
                if let Some(i) = pick(conns.len()) {
                    if let Some(s) = conns[i].peer.as_mut() {
                        let mut sink = [0u8; 4096];
                        let _ = s.read(&mut sink);
                    }
                }
            }
            6 => {
                if let Some(i) = pick(conns.len()) {
                    if b % 4 == 0 {
                        w.free(conns[i].conn).unwrap();
                    } else if b % 4 == 2 {
                        w.local().free(conns[i].conn).unwrap();
                    } else {
                        conns[i].peer = None;
                    }
                }
            }
            7 if b % 2 == 0 && conns.len() + accepting.len() < 4 => {
                // Accept on the watcher's own listener.
                let (l, addr) = *listener.get_or_insert_with(|| {
                    let std_l = TcpListener::bind("127.0.0.1:0").unwrap();
                    let addr = std_l.local_addr().unwrap();
                    (w.register(std_l).unwrap(), addr)
                });
                w.local().accept(l, next).unwrap();
                pending.insert(next, (usize::MAX, Op::Accept));
                next += 1;
                let c = TcpStream::connect(addr).unwrap();
                c.set_nonblocking(true).unwrap();
                accepting.push(c);
            }
            7 if conns.len() < 4 => {
                // Connect; the kernel finishes the handshake with `target`.
                let conn = tx
                    .connect(target.local_addr().unwrap(), next, None)
                    .unwrap();
                let (s, _) = target.accept().unwrap();
                s.set_nonblocking(true).unwrap();
                conns.push(peer(conn, s));
                pending.insert(next, (conns.len() - 1, Op::Connect));
                next += 1;
            }
            _ => check(
                &mut w,
                &mut conns,
                &mut pending,
                &mut accepting,
                Duration::from_micros(b as u64 * 10),
            ),
        }
    }
    w.free_all().unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    while !pending.is_empty() {
        assert!(Instant::now() < end, "requests never completed");
        check(
            &mut w,
            &mut conns,
            &mut pending,
            &mut accepting,
            Duration::from_millis(10),
        );
        // Connections accepted while everything is being freed go too.
        w.free_all().unwrap();
    }
}
