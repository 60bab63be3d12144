//! Regressions found by an audit of the io_uring driver, as seen from the pool:
//! each test runs on epoll, then on io_uring (skipped, loudly, where it cannot
//! be built), so a failure names the backend that broke.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gaio_core::{Backend, Op, Requests, Watcher};
use gaio_pool::{Event, Io, Pool};
use util::*;

/// Runs `test` on epoll, then on io_uring unless this machine refuses it.
fn on_each_backend(name: &str, mut test: impl FnMut(Backend)) {
    for backend in [Backend::Epoll, Backend::IoUring] {
        if backend == Backend::IoUring {
            if let Err(e) = Watcher::<()>::builder().backend(backend).build() {
                eprintln!("!!! {name}: SKIPPED on io_uring, which this machine refuses: {e}");
                continue;
            }
        }
        let start = Instant::now();
        test(backend);
        eprintln!("{name}: passed on {backend} in {:?}", start.elapsed());
    }
}

/// What the handlers tell the test.
#[derive(Debug)]
enum Said {
    /// Watcher 0's handler holds its first connection (and its thread).
    Holding,
    /// Watcher 0's handler is about to panic.
    Dying,
}

/// Connects and echoes one byte within `within`; `Err` says what failed.
fn echo_a_byte(addr: SocketAddr, within: Duration) -> Result<TcpStream, std::io::Error> {
    let mut c = TcpStream::connect_timeout(&addr, within)?;
    c.set_read_timeout(Some(within))?;
    c.write_all(b"x")?;
    let mut got = [0u8; 1];
    c.read_exact(&mut got)?;
    Ok(c)
}

/// Regression: when a watcher's handler panics, `rehome` moves its listeners
/// to a live watcher with `detach`, which on io_uring refuses while the
/// multishot accept has accepted connections set aside (accepts that ran
/// ahead of the pending accept requests); the listener was then closed with
/// the dying watcher and every later connect was refused. Here the handler of
/// the watcher holding the listener holds its thread while 200 clients
/// connect (so the next turn accepts more than it has accepts pending), then
/// panics in that turn; afterwards the pool must accept and serve 200 new
/// connections.
#[test]
fn a_handler_panic_while_accepts_ran_ahead_does_not_lose_the_listener() {
    let _serial = serial();
    on_each_backend(
        "a_handler_panic_while_accepts_ran_ahead_does_not_lose_the_listener",
        |b| {
            let (said_tx, said) = channel();
            let (release_tx, release_rx) = channel::<()>();
            let release_rx = Arc::new(Mutex::new(release_rx));
            let pool = Pool::builder()
                .watchers(2)
                .pin(false)
                .backend(b)
                .build(move |index| {
                    let said = said_tx.clone();
                    let release = release_rx.clone();
                    let mut connected = 0;
                    move |io: &Io<()>, ev: Event<'_, ()>| match ev {
                        Event::Connected { conn, .. } if index == 0 => {
                            connected += 1;
                            if connected == 1 {
                                // Hold the thread: the burst queues up meanwhile.
                                let _ = said.send(Said::Holding);
                                let _ = release
                                    .lock()
                                    .unwrap()
                                    .recv_timeout(Duration::from_secs(10));
                                io.read(conn, (), None).unwrap();
                            } else {
                                let _ = said.send(Said::Dying);
                                panic!("watcher 0's handler dies while accepts ran ahead");
                            }
                        }
                        Event::Connected { conn, .. } => io.read(conn, (), None).unwrap(),
                        Event::Completed(res) => match res.op {
                            Op::Read if res.result.is_ok() && res.size > 0 => {
                                let _ = io.write(res.conn, (), res.data().to_vec());
                            }
                            Op::Write if res.result.is_ok() => {
                                let _ = io.read(res.conn, (), None);
                            }
                            _ => {
                                let _ = io.free(res.conn);
                            }
                        },
                        _ => {}
                    }
                })
                .unwrap();
            // Every connection goes to watcher 0 while it lives (then to 1).
            pool.set_balancer(Always(0));
            let addr = pool.listen("127.0.0.1:0").unwrap();
            let wait_for = |said: &Receiver<Said>, what: &str| match said
                .recv_timeout(Duration::from_secs(5))
            {
                Ok(s) => s,
                Err(e) => panic!("on {b}: {what}: {e}"),
            };

            let _first = TcpStream::connect(addr).unwrap();
            assert!(matches!(
                wait_for(&said, "the first connection"),
                Said::Holding
            ));
            // Complete in the kernel's backlog while watcher 0 is held.
            let burst: Vec<TcpStream> = (0..200)
                .map(|_| TcpStream::connect(addr).unwrap())
                .collect();
            release_tx.send(()).unwrap();
            assert!(matches!(
                wait_for(&said, "the handler's panic"),
                Said::Dying
            ));

            // Until watcher 0 is gone a connection may still land on it and
            // be closed; one echo served means the listener lives on watcher 1.
            let end = Instant::now() + Duration::from_secs(5);
            let mut tries = Vec::new();
            loop {
                match echo_a_byte(addr, Duration::from_millis(500)) {
                    Ok(_) => break,
                    Err(e) => tries.push(e),
                }
                // A refused connect means no listener: a moved one never closes.
                let refused = tries
                    .iter()
                    .rev()
                    .take_while(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
                    .count();
                assert!(
                    Instant::now() < end && refused < 1000,
                    "on {b}: no connection served after the handler's panic: the \
                     listener was lost ({} tries: {:?})",
                    tries.len(),
                    tries.last()
                );
            }

            // 200 new connections, all accepted and served.
            let start = Instant::now();
            let mut clients = Vec::new();
            let mut refused = Vec::new();
            for i in 0..200 {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(c) => clients.push((i, c)),
                    Err(e) => refused.push((i, e.to_string())),
                }
            }
            assert!(
                refused.is_empty(),
                "on {b}: {} of 200 connects after the panic failed (first: {:?})",
                refused.len(),
                refused.first()
            );
            for (_, c) in &mut clients {
                c.write_all(b"y").unwrap();
            }
            let mut unserved = Vec::new();
            for (i, c) in &mut clients {
                let left = Duration::from_secs(5).saturating_sub(start.elapsed());
                c.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .unwrap();
                let mut got = [0u8; 1];
                if let Err(e) = c.read_exact(&mut got) {
                    unserved.push((*i, e.to_string()));
                }
            }
            assert!(
                unserved.is_empty(),
                "on {b}: {} of 200 connections after the panic were not served (first: {:?})",
                unserved.len(),
                unserved.first()
            );
            drop(burst);
            drop(clients);
            let shutdown = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.shutdown(Duration::from_millis(50))
            }));
            assert!(shutdown.is_err(), "shutdown re-raises the handler's panic");
        },
    );
}
