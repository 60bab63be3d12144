//! Helpers for the gaio-pool tests: an echo handler that reports what it sees,
//! bounded waits on those reports; the workspace-wide helpers come from
//! `gaio-testkit`.
#![allow(dead_code, missing_docs, unused_imports)]

use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use gaio_core::{Op, Requests};
use gaio_pool::{Balancer, Builder, Event, Io, Loads, Pool};
pub use gaio_testkit::{PATIENCE, fd_count, pattern, raise_fd_limit, serial};

/// Threads the pool started (it names them `gaio-w{N}`).
pub fn thread_count() -> usize {
    gaio_testkit::thread_count("gaio-")
}

/// What the echo handler reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Connected {
        watcher: usize,
        peer: Option<SocketAddr>,
    },
    Closed {
        watcher: usize,
    },
    Wrote {
        watcher: usize,
        ok: bool,
    },
}

/// An echo pool whose handlers report connections, closes and write outcomes.
pub fn echo_pool(builder: Builder, notes: Sender<Note>) -> Pool<()> {
    builder
        .build(move |_| {
            let notes = notes.clone();
            move |io: &Io<()>, ev: Event<'_, ()>| {
                let w = io.index();
                let res = match ev {
                    Event::Connected { conn, peer } => {
                        let _ = notes.send(Note::Connected { watcher: w, peer });
                        io.read(conn, (), None).unwrap();
                        return;
                    }
                    Event::Completed(res) => res,
                    _ => return,
                };
                match res.op {
                    Op::Read if res.result.is_ok() && res.size > 0 => {
                        let _ = io.write(res.conn, (), res.data().to_vec());
                    }
                    Op::Write => {
                        let ok = res.result.is_ok();
                        let _ = notes.send(Note::Wrote { watcher: w, ok });
                        if ok {
                            let _ = io.read(res.conn, (), None);
                        }
                    }
                    _ => {
                        let _ = io.free(res.conn);
                        let _ = notes.send(Note::Closed { watcher: w });
                    }
                }
            }
        })
        .unwrap()
}

/// The next `n` notes matching `keep` (others are dropped), within [`PATIENCE`].
pub fn wait_notes(rx: &Receiver<Note>, n: usize, keep: impl Fn(&Note) -> bool) -> Vec<Note> {
    let end = Instant::now() + PATIENCE;
    let mut out = Vec::new();
    while out.len() < n {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(note) if keep(&note) => out.push(note),
            Ok(_) => {}
            Err(e) => panic!("only {} of {n} notes: {e}", out.len()),
        }
    }
    out
}

/// Connects and waits until the pool reports the connection; returns the stream
/// and the watcher that got it.
pub fn connect_one(addr: SocketAddr, rx: &Receiver<Note>) -> (TcpStream, usize) {
    let c = TcpStream::connect(addr).unwrap();
    let me = c.local_addr().unwrap();
    let n = wait_notes(
        rx,
        1,
        |n| matches!(n, Note::Connected { peer: Some(p), .. } if *p == me),
    );
    match n[0] {
        Note::Connected { watcher, .. } => (c, watcher),
        _ => unreachable!(),
    }
}

/// Connects from a chosen loopback source address.
pub fn connect_from(src: &str, addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&format!("{src}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.connect(&addr.into()).unwrap();
    s.into()
}

/// Writes `msg` and reads it back (blocking, with a timeout).
pub fn echo_once(c: &mut TcpStream, msg: &[u8]) {
    use std::io::{Read, Write};
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    c.write_all(msg).unwrap();
    let mut got = vec![0; msg.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

/// A balancer that sends everything to one watcher.
pub struct Always(pub usize);

impl Balancer for Always {
    fn pick(&self, _: Option<SocketAddr>, loads: &Loads<'_>) -> usize {
        assert!(self.0 < loads.len());
        self.0
    }
}
