//! The server API: accept and connect as requests, half-close, graceful close,
//! the write limit against a peer that never reads, shared write buffers.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gaio_core::{Buffer, Error, Op, Requests, Watcher};
use util::*;

#[test]
fn accepts_through_the_watcher_and_serves_each_connection() {
    let _serial = serial();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut w: Watcher<u32> = Watcher::new().unwrap();
    let l = w.register(listener).unwrap();
    for _ in 0..3 {
        w.local().accept(l, 0).unwrap();
    }
    let mut clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let accepted = collect(&mut w, 3);
    let mut peers = Vec::new();
    for (i, d) in accepted.iter().enumerate() {
        assert_eq!((d.op, d.conn), (Op::Accept, l));
        assert!(d.result.is_ok(), "{:?}", d.result);
        let (conn, peer) = d.accepted.unwrap();
        peers.push(peer.unwrap());
        w.local()
            .write(conn, i as u32, vec![b'a' + i as u8; 4])
            .unwrap();
    }
    let mut mine: Vec<_> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
    mine.sort();
    peers.sort();
    assert_eq!(mine, peers, "peer addresses");
    let done = collect(&mut w, 3);
    assert!(done.iter().all(|d| d.op == Op::Write && d.result.is_ok()));
    let mut got: Vec<u8> = clients
        .iter_mut()
        .map(|c| {
            let mut b = [0u8; 4];
            c.read_exact(&mut b).unwrap();
            assert!(b.iter().all(|&x| x == b[0]));
            b[0]
        })
        .collect();
    got.sort();
    assert_eq!(got, b"abc");
    assert_eq!(w.stats().conns, 4, "listener + 3 accepted");
}

#[test]
fn accepts_on_a_unix_listener_and_stops_when_the_listener_is_freed() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("gaio-accept-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let listener = UnixListener::bind(&dir).unwrap();
    let mut w: Watcher<()> = Watcher::new().unwrap();
    let l = w.register(listener).unwrap();
    w.local().accept(l, ()).unwrap();
    let mut client = UnixStream::connect(&dir).unwrap();
    let d = one(&mut w);
    let (conn, peer) = d.accepted.expect("an accepted connection");
    assert_eq!(peer, None, "no inet address for a Unix peer");
    w.local().write(conn, (), b"unix".to_vec()).unwrap();
    assert!(one(&mut w).result.is_ok());
    let mut b = [0u8; 4];
    client.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"unix");
    // A pending accept ends with ConnClosed when the listener goes.
    w.local().accept(l, ()).unwrap();
    w.free(l).unwrap();
    assert!(matches!(one(&mut w).result, Err(Error::ConnClosed)));
    let _ = std::fs::remove_file(&dir);
}

#[test]
fn connect_completes_and_queued_writes_follow() {
    let _serial = serial();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut w: Watcher<u8> = Watcher::new().unwrap();
    let conn = w
        .local()
        .connect(listener.local_addr().unwrap(), 1, None)
        .unwrap();
    w.local().write(conn, 2, b"early".to_vec()).unwrap();
    let done = collect(&mut w, 2);
    assert_eq!(
        done.iter()
            .map(|d| (d.op, d.ctx, d.result.is_ok()))
            .collect::<Vec<_>>(),
        [(Op::Connect, 1, true), (Op::Write, 2, true)]
    );
    let (mut s, _) = listener.accept().unwrap();
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"early");
    // Reads work after the connect, too.
    w.local().read(conn, 3, None).unwrap();
    s.write_all(b"back").unwrap();
    assert_eq!(one(&mut w).data, b"back");
}

#[test]
fn refused_connect_is_one_error_and_closes_the_connection() {
    let _serial = serial();
    // A port nobody listens on: bind, note it, close.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut w: Watcher<u8> = Watcher::new().unwrap();
    let conn = w.submitter().connect(addr, 1, None).unwrap();
    w.submitter().read(conn, 2, None).unwrap();
    w.submitter().write(conn, 3, vec![1]).unwrap();
    let done = collect(&mut w, 3);
    let connect = done.iter().find(|d| d.op == Op::Connect).unwrap();
    match &connect.result {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
        other => panic!("connect: {other:?}"),
    }
    for d in done.iter().filter(|d| d.op != Op::Connect) {
        assert!(matches!(d.result, Err(Error::ConnClosed)), "{:?}", d.result);
    }
    assert_eq!(w.stats().conns, 0, "closed after the failed connect");
}

#[test]
fn connect_deadline_fires_when_the_handshake_never_finishes() {
    let _serial = serial();
    // A listener whose backlog is full and never accepts: further SYNs are
    // dropped, so a connect stays in progress.
    let l = {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        s.listen(0).unwrap();
        TcpListener::from(s)
    };
    let addr = l.local_addr().unwrap();
    let mut fillers = Vec::new();
    let mut w: Watcher<u32> = Watcher::new().unwrap();
    // Fill the queue with connects the watcher sees finish; the first that does
    // not finish within its deadline proves the point.
    for i in 0..16u32 {
        let start = Instant::now();
        let conn = w
            .local()
            .connect(addr, i, Some(Instant::now() + Duration::from_millis(200)))
            .unwrap();
        let d = one(&mut w);
        assert_eq!(d.conn, conn);
        if matches!(d.result, Err(Error::Deadline)) {
            assert!(start.elapsed() >= Duration::from_millis(200), "never early");
            assert_eq!(w.stats().conns, fillers.len(), "the connect closed");
            return;
        }
        assert!(d.result.is_ok(), "{:?}", d.result);
        fillers.push(conn);
    }
    panic!("every connect finished: the backlog never filled");
}

#[test]
fn connects_to_a_unix_socket() {
    let _serial = serial();
    let path = std::env::temp_dir().join(format!("gaio-connect-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let mut w: Watcher<()> = Watcher::new().unwrap();
    let conn = w.local().connect_unix(&path, (), None).unwrap();
    w.local().write(conn, (), b"hi".to_vec()).unwrap();
    let done = collect(&mut w, 2);
    assert!(done.iter().all(|d| d.result.is_ok()), "{done:?}");
    let (mut s, _) = listener.accept().unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hi");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn shutdown_sends_eof_after_queued_writes_and_reading_goes_on() {
    let _serial = serial();
    let (mut c, mut w, _tx, conn) = watched::<u8>();
    let io = w.local();
    io.write(conn, 1, vec![7; 100_000]).unwrap();
    io.shutdown(conn, 2).unwrap();
    io.read(conn, 3, Some(vec![0; 16])).unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        c.write_all(b"after eof").unwrap();
        got
    });
    let done = collect(&mut w, 3);
    let ops: Vec<_> = done.iter().map(|d| (d.op, d.ctx)).collect();
    assert!(ops.contains(&(Op::Write, 1)) && ops.contains(&(Op::Shutdown, 2)));
    let read = done.iter().find(|d| d.op == Op::Read).unwrap();
    assert_eq!(read.data, b"after eof");
    assert_eq!(reader.join().unwrap(), vec![7; 100_000]);
}

#[test]
fn graceful_close_sends_every_queued_byte_then_closes() {
    let _serial = serial();
    let (mut c, mut w, _tx, conn) = watched::<u8>();
    let io = w.local();
    io.read(conn, 1, None).unwrap();
    let data = pattern(9, 4 << 20);
    io.write(conn, 2, data.clone()).unwrap();
    io.close(conn, 3, None).unwrap();
    io.write(conn, 4, vec![1]).unwrap(); // after the close: never sent
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        got
    });
    let done = collect(&mut w, 4);
    let by_ctx = |ctx| done.iter().find(|d| d.ctx == ctx).unwrap();
    assert!(
        matches!(by_ctx(1).result, Err(Error::ConnClosed)),
        "pending read ends"
    );
    assert!(by_ctx(2).result.is_ok());
    assert_eq!((by_ctx(3).op, by_ctx(3).result.is_ok()), (Op::Close, true));
    assert!(matches!(by_ctx(4).result, Err(Error::ConnClosed)));
    assert!(reader.join().unwrap() == data, "every byte, then EOF");
    assert_eq!(w.stats().conns, 0);
}

#[test]
fn graceful_close_deadline_closes_when_the_peer_never_reads() {
    let _serial = serial();
    let (_c, mut w, _tx, conn) = watched::<u8>();
    let io = w.local();
    io.write(conn, 1, vec![0; 32 << 20]).unwrap();
    let at = Instant::now() + Duration::from_millis(100);
    io.close(conn, 2, Some(at)).unwrap();
    let done = collect(&mut w, 2);
    let close = done.iter().find(|d| d.ctx == 2).unwrap();
    assert!(matches!(close.result, Err(Error::Deadline)));
    assert!(close.at >= at, "never early");
    let write = done.iter().find(|d| d.ctx == 1).unwrap();
    assert!(matches!(write.result, Err(Error::ConnClosed)));
    assert!(write.size < 32 << 20);
    assert_eq!(w.stats().conns, 0);
}

/// The backpressure bound: a peer that never reads cannot make the watcher
/// queue more than the write limit, whatever the writer does.
#[test]
fn write_limit_bounds_what_a_non_reading_peer_can_queue() {
    let _serial = serial();
    const LIMIT: usize = 1 << 20;
    let (c, s) = tcp_pair();
    let mut w: Watcher<usize> = Watcher::builder().write_limit(Some(LIMIT)).build().unwrap();
    let conn = w.register(s).unwrap();
    let mut accepted = 0usize;
    let mut refused = 0;
    // Keep writing 64 KiB messages, as a broadcast to a stuck client would.
    for i in 0..400 {
        match w.local().write(conn, i, vec![1; 64 << 10]) {
            Ok(()) => accepted += 64 << 10,
            Err(Error::WriteLimit) => refused += 1,
            Err(e) => panic!("{e}"),
        }
        let queued = w.local().queued(conn);
        assert!(queued <= LIMIT, "{queued} bytes queued past the limit");
        assert!(w.stats().queued_write_bytes <= LIMIT);
        for d in w.wait_io_timeout(Duration::ZERO).unwrap() {
            assert!(d.result.is_ok(), "{:?}", d.result);
        }
    }
    assert!(refused > 0, "the limit was never reached");
    // What was accepted is what the kernel holds plus at most the limit.
    assert!(accepted < 400 * (64 << 10));
    // From another thread the refusal is the completion's error.
    let tx = w.submitter();
    std::thread::spawn(move || tx.write(conn, 999, vec![1; LIMIT]).unwrap())
        .join()
        .unwrap();
    let d = collect(&mut w, 1).pop().unwrap();
    assert_eq!(d.ctx, 999);
    assert!(matches!(d.result, Err(Error::WriteLimit)));
    // A write larger than the limit is always refused, and nothing is lost: the
    // queue still drains once the peer reads.
    assert!(matches!(
        w.local().write(conn, 0, vec![1; LIMIT + 1]),
        Err(Error::WriteLimit)
    ));
    drop(c);
}

#[test]
fn one_shared_buffer_is_written_to_many_connections() {
    let _serial = serial();
    let pairs = tcp_pairs(20);
    let mut w: Watcher<usize> = Watcher::new().unwrap();
    let mut clients = Vec::new();
    let mut conns = Vec::new();
    for (c, s) in pairs {
        clients.push(c);
        conns.push(w.register(s).unwrap());
    }
    let msg: Arc<[u8]> = Arc::from(&b"one allocation, twenty readers\n"[..]);
    for (i, &conn) in conns.iter().enumerate() {
        w.local().write(conn, i, msg.clone()).unwrap();
    }
    let mut shared = 0;
    let end = Instant::now() + PATIENCE;
    while shared < conns.len() {
        assert!(Instant::now() < end);
        for res in w.wait_io_timeout(Duration::from_millis(100)).unwrap() {
            assert!(res.result.is_ok());
            match res.buffer {
                Buffer::Shared(b) => assert!(Arc::ptr_eq(&b, &msg), "the same buffer back"),
                other => panic!("{other:?}"),
            }
            shared += 1;
        }
    }
    assert_eq!(
        Arc::strong_count(&msg),
        1,
        "every clone handed back and dropped"
    );
    for c in &mut clients {
        let mut b = vec![0u8; msg.len()];
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b[..], &msg[..]);
    }
    let _ = clients[0].shutdown(Shutdown::Both);
}
