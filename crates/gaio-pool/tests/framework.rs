//! The pool as a server framework: no thread beside the watchers, requests on
//! any connection from any handler, messages and the start event, totals.

mod util;

use std::io::Read;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Instant;

use gaio_core::{Buffer, Conn, Error, Op, Requests};
use gaio_pool::{Event, Io, Pool};
use util::*;

/// Listeners live inside the watchers: both listening modes together start no
/// thread beside the N watcher threads.
#[test]
fn listeners_add_no_thread() {
    let _serial = serial();
    let before = thread_count();
    let (tx, rx) = channel();
    let pool = echo_pool(Pool::builder().watchers(3).pin(false), tx);
    let a = pool.listen("127.0.0.1:0").unwrap();
    let b = pool.listen_reuseport("127.0.0.1:0").unwrap();
    let mut clients: Vec<TcpStream> = (0..12)
        .map(|i| TcpStream::connect(if i % 2 == 0 { a } else { b }).unwrap())
        .collect();
    wait_notes(&rx, 12, |n| matches!(n, Note::Connected { .. }));
    for c in &mut clients {
        echo_once(c, b"served");
    }
    assert_eq!(thread_count() - before, 3, "exactly the watcher threads");
    let st = pool.stats();
    assert_eq!((st.accepts, st.conns), (12, 12));
}

/// What the routing test's handlers report.
#[derive(Debug)]
enum Seen {
    Started {
        watcher: usize,
    },
    Conn {
        watcher: usize,
    },
    Wrote {
        watcher: usize,
        ctx: u32,
        ok: bool,
        shared: Option<Arc<[u8]>>,
    },
    Message {
        watcher: usize,
        value: (usize, u32),
    },
}

type Msg = (usize, u32);

/// A pool whose handlers report everything and, on a message `(to, n)` with
/// `to` a slot in `targets`, write line `n` to that connection, from whichever
/// watcher got the message.
fn reporting_pool(watchers: usize, tx: Sender<Seen>, line: Arc<[u8]>) -> Pool<u32, Msg> {
    let targets: Arc<std::sync::Mutex<Vec<Conn>>> = Arc::default();
    Pool::builder()
        .watchers(watchers)
        .pin(false)
        .build(move |_| {
            let (tx, targets, line) = (tx.clone(), targets.clone(), line.clone());
            move |io: &Io<u32, Msg>, ev: Event<'_, u32, Msg>| {
                let watcher = io.index();
                match ev {
                    Event::Started => {
                        let _ = tx.send(Seen::Started { watcher });
                    }
                    Event::Connected { conn, .. } => {
                        targets.lock().unwrap().push(conn);
                        let _ = tx.send(Seen::Conn { watcher });
                    }
                    Event::Message((to, n)) => {
                        let _ = tx.send(Seen::Message {
                            watcher,
                            value: (to, n),
                        });
                        let conn = targets.lock().unwrap()[to];
                        if n == u32::MAX {
                            // The shared line, to every connection, wherever it lives.
                            for &c in targets.lock().unwrap().iter() {
                                io.write(c, n, line.clone()).unwrap();
                            }
                        } else {
                            io.write(conn, n, format!("{n}\n").into_bytes()).unwrap();
                        }
                    }
                    Event::Completed(res) => {
                        assert_eq!(res.op, Op::Write);
                        let shared = match res.buffer {
                            Buffer::Shared(b) => Some(b),
                            _ => None,
                        };
                        let _ = tx.send(Seen::Wrote {
                            watcher,
                            ctx: res.ctx,
                            ok: res.result.is_ok(),
                            shared,
                        });
                    }
                    _ => {}
                }
            }
        })
        .unwrap()
}

fn next(rx: &Receiver<Seen>) -> Seen {
    rx.recv_timeout(PATIENCE).expect("an event within PATIENCE")
}

#[test]
fn started_comes_first_on_every_watcher() {
    let _serial = serial();
    let (tx, rx) = channel();
    let pool = reporting_pool(3, tx, Arc::from(&b"x\n"[..]));
    let mut started: Vec<usize> = (0..3)
        .map(|_| match next(&rx) {
            Seen::Started { watcher } => watcher,
            other => panic!("first events must be Started, got {other:?}"),
        })
        .collect();
    started.sort();
    assert_eq!(started, [0, 1, 2]);
    drop(pool);
}

/// Watcher 0's handler writes to a connection owned by watcher 1: the request
/// reaches the owner (not `ConnClosed`), its completion comes to the owner's
/// handler, and 2,000 writes from one handler arrive in order.
#[test]
fn a_handler_writes_to_another_watchers_connection_in_order() {
    let _serial = serial();
    let (tx, rx) = channel();
    let pool = reporting_pool(2, tx, Arc::from(&b"x\n"[..]));
    for _ in 0..2 {
        assert!(matches!(next(&rx), Seen::Started { .. }));
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    pool.set_balancer(Always(1));
    let (owner, conn) = pool.assign(l.accept().unwrap().0).unwrap();
    assert_eq!(owner, 1);
    assert_eq!(pool.owner(conn).unwrap(), 1);
    assert!(matches!(next(&rx), Seen::Conn { watcher: 1, .. }));
    const N: u32 = 2000;
    for n in 0..N {
        pool.send(0, (0, n)).unwrap();
    }
    let mut wrote = 0;
    while wrote < N {
        match next(&rx) {
            Seen::Message { watcher, value } => assert_eq!((watcher, value.0), (0, 0)),
            Seen::Wrote { watcher, ok, .. } => {
                assert_eq!(watcher, 1, "the owner completes the write");
                assert!(ok);
                wrote += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let expect: String = (0..N).map(|n| format!("{n}\n")).collect();
    let mut got = vec![0; expect.len()];
    client.set_read_timeout(Some(PATIENCE)).unwrap();
    client.read_exact(&mut got).unwrap();
    assert_eq!(String::from_utf8(got).unwrap(), expect, "order kept");
}

/// One `Arc<[u8]>` written to connections on both watchers: every recipient
/// gets the bytes and every completion hands back the same allocation.
#[test]
fn one_shared_buffer_reaches_connections_on_every_watcher() {
    let _serial = serial();
    let (tx, rx) = channel();
    let line: Arc<[u8]> = Arc::from(&b"to everyone\n"[..]);
    let pool = reporting_pool(2, tx, line.clone());
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut clients = Vec::new();
    let mut owners = Vec::new();
    for i in 0..6 {
        clients.push(TcpStream::connect(l.local_addr().unwrap()).unwrap());
        pool.set_balancer(Always(i % 2));
        owners.push(pool.assign(l.accept().unwrap().0).unwrap().0);
    }
    assert_eq!(owners, [0, 1, 0, 1, 0, 1]);
    let mut conns = 0;
    while conns < 6 {
        if let Seen::Conn { .. } = next(&rx) {
            conns += 1;
        }
    }
    pool.send(1, (0, u32::MAX)).unwrap();
    let mut done = 0;
    while done < 6 {
        if let Seen::Wrote {
            ok, shared, ctx, ..
        } = next(&rx)
        {
            assert!(ok && ctx == u32::MAX);
            assert!(
                Arc::ptr_eq(&shared.unwrap(), &line),
                "no copy per recipient"
            );
            done += 1;
        }
    }
    for c in &mut clients {
        let mut got = vec![0; line.len()];
        c.set_read_timeout(Some(PATIENCE)).unwrap();
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, &line[..]);
    }
}

/// `broadcast` reaches every watcher on its own thread; values from one sender
/// arrive in order; `send` to a watcher that does not exist is refused.
#[test]
fn messages_reach_one_or_every_watcher_in_order() {
    let _serial = serial();
    let (tx, rx) = channel();
    let pool: Pool<(), u32> = Pool::builder()
        .watchers(3)
        .pin(false)
        .build(move |_| {
            let tx = tx.clone();
            let me = std::thread::current().id();
            move |io: &Io<(), u32>, ev: Event<'_, (), u32>| {
                if let Event::Message(v) = ev {
                    assert_eq!(std::thread::current().id(), me, "on the watcher's thread");
                    let _ = tx.send((io.index(), v));
                }
            }
        })
        .unwrap();
    for v in 0..100 {
        pool.broadcast(v).unwrap();
    }
    pool.send(2, 1000).unwrap();
    let mut per: [Vec<u32>; 3] = Default::default();
    for _ in 0..301 {
        let (w, v) = rx.recv_timeout(PATIENCE).unwrap();
        per[w].push(v);
    }
    for (w, got) in per.iter().enumerate() {
        let mut want: Vec<u32> = (0..100).collect();
        if w == 2 {
            want.push(1000);
        }
        assert_eq!(got, &want, "watcher {w}");
    }
    assert_eq!(
        pool.stats()
            .watchers
            .iter()
            .map(|s| s.messages)
            .sum::<u64>(),
        301
    );
    match pool.send(3, 0) {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput),
        other => panic!("send to watcher 3 of 3: {other:?}"),
    }
    let handle = pool.handle();
    pool.shutdown(PATIENCE);
    assert!(matches!(handle.send(0, 1), Err(Error::WatcherClosed)));
}

/// A `Conn` of another pool (or a bare watcher) is refused with `ForeignConn`.
#[test]
fn a_conn_of_another_pool_is_refused() {
    let _serial = serial();
    let (tx, _rx) = channel();
    let a = echo_pool(Pool::builder().watchers(1).pin(false), tx.clone());
    let b = echo_pool(Pool::builder().watchers(1).pin(false), tx);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (_, conn) = a.assign(l.accept().unwrap().0).unwrap();
    assert!(matches!(
        b.write(conn, (), vec![1]),
        Err(Error::ForeignConn)
    ));
    assert!(matches!(b.free(conn), Err(Error::ForeignConn)));
    assert!(matches!(b.owner(conn), Err(Error::ForeignConn)));
    assert_eq!(a.owner(conn).unwrap(), 0);
}

/// The totals count bytes queued for writing to a peer that does not read.
#[test]
fn stats_total_the_bytes_queued_for_writing() {
    let _serial = serial();
    let (tx, rx) = channel();
    let pool = reporting_pool(2, tx, Arc::from(&b"x\n"[..]));
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let _stuck = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    socket2::SockRef::from(&s)
        .set_send_buffer_size(4096)
        .unwrap();
    let (_, conn) = pool.assign(s).unwrap();
    while !matches!(next(&rx), Seen::Conn { .. }) {}
    // 8 MiB can never fit in the socket buffers: most of it stays queued.
    pool.write(conn, 7, vec![1; 8 << 20]).unwrap();
    let end = Instant::now() + PATIENCE;
    loop {
        let st = pool.stats();
        let per: usize = st.watchers.iter().map(|w| w.queued_write_bytes).sum();
        assert_eq!(st.queued_write_bytes, per);
        if st.queued_write_bytes > 4 << 20 {
            break;
        }
        assert!(Instant::now() < end, "queued bytes never showed: {st:?}");
        std::thread::yield_now();
    }
}

/// What one watcher's handler reports of a completion: the watcher, op, ctx,
/// success and connection.
type Done = (usize, Op, u32, bool, Conn);

/// Two watchers whose handlers report every completion and free its
/// connection.
fn completions_pool() -> (Pool<u32>, Receiver<Done>) {
    let (tx, rx) = channel();
    let pool = Pool::builder()
        .watchers(2)
        .pin(false)
        .build(move |_| {
            let tx = tx.clone();
            move |io: &Io<u32>, ev: Event<'_, u32>| {
                if let Event::Completed(res) = ev {
                    let _ = tx.send((io.index(), res.op, res.ctx, res.result.is_ok(), res.conn));
                    let _ = io.free(res.conn);
                }
            }
        })
        .unwrap();
    (pool, rx)
}

/// `Handle::connect` dials from the chosen watcher; its handler gets the
/// `Connect` completion, on that watcher's thread.
#[test]
fn connect_runs_on_the_chosen_watcher() {
    let _serial = serial();
    let (pool, rx) = completions_pool();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let conn = pool.connect(1, l.local_addr().unwrap(), 9, None).unwrap();
    assert_eq!(pool.owner(conn).unwrap(), 1);
    let (watcher, op, ctx, ok, done) = rx.recv_timeout(PATIENCE).unwrap();
    assert_eq!(
        (watcher, op, ctx, ok, done),
        (1, Op::Connect, 9, true, conn)
    );
    let _accepted = l.accept().unwrap();
    assert!(pool.connect(2, l.local_addr().unwrap(), 0, None).is_err());
}

/// The trait's `connect` on a `Handle` (generic code over every `Requests`)
/// lets the balancer place the connection: round-robin, one watcher each.
#[test]
fn handle_requests_connect_is_placed_by_the_balancer() {
    let _serial = serial();
    let (pool, rx) = completions_pool();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let handle = pool.handle();
    let a = Requests::connect(&handle, l.local_addr().unwrap(), 10, None).unwrap();
    let b = Requests::connect(&handle, l.local_addr().unwrap(), 11, None).unwrap();
    assert_eq!((pool.owner(a).unwrap(), pool.owner(b).unwrap()), (0, 1));
    let mut seen = vec![
        rx.recv_timeout(PATIENCE).unwrap(),
        rx.recv_timeout(PATIENCE).unwrap(),
    ];
    seen.sort_by_key(|s| s.0);
    assert_eq!(
        seen,
        [(0, Op::Connect, 10, true, a), (1, Op::Connect, 11, true, b)]
    );
}

/// Listeners the application made: one serves as a balanced listener; for
/// reuseport there must be one per watcher.
#[test]
fn listen_on_takes_the_applications_listeners() {
    let _serial = serial();
    let (tx, rx) = channel();
    let pool = echo_pool(Pool::builder().watchers(2).pin(false), tx);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket2::SockRef::from(&l)
        .set_send_buffer_size(32 << 10)
        .unwrap();
    let addr = pool.listen_on(l).unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    wait_notes(&rx, 1, |n| matches!(n, Note::Connected { .. }));
    echo_once(&mut c, b"through the application's listener");
    let one = vec![std::net::TcpListener::bind("127.0.0.1:0").unwrap()];
    match pool.listen_reuseport_on(one) {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput),
        other => panic!("1 listener for 2 watchers: {other:?}"),
    }
    assert_eq!(pool.stats().accepts, 1);
}

/// A socket that is not listening: the accepts fail, the listener is dropped
/// (with an error logged), and the pool keeps serving.
#[test]
fn a_broken_listener_is_dropped_and_the_pool_goes_on() {
    let _serial = serial();
    let (tx, rx) = channel();
    let pool = echo_pool(Pool::builder().watchers(1).pin(false), tx);
    let fds = fd_count();
    let not_listening: std::net::TcpListener = {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        s.into()
    };
    pool.listen_on(not_listening).unwrap();
    // Its first accept fails (EINVAL): the pool closes it.
    let end = Instant::now() + PATIENCE;
    while fd_count() != fds {
        assert!(Instant::now() < end, "the broken listener was never closed");
        std::thread::yield_now();
    }
    // The pool still accepts on a good listener, and counts no phantom load.
    let addr = pool.listen("127.0.0.1:0").unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    wait_notes(&rx, 1, |n| matches!(n, Note::Connected { .. }));
    echo_once(&mut c, b"still serving");
    let end = Instant::now() + PATIENCE;
    while pool.stats().watchers[0].pending_reads != 1 {
        assert!(Instant::now() < end, "{:?}", pool.stats());
        std::thread::yield_now();
    }
    assert_eq!(pool.stats().conns, 1);
}
