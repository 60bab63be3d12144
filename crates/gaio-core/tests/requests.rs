//! Request semantics: refused input, unsupported fds, ctx passing, read_full,
//! peer close and reset, cached readiness, writev batching.

mod util;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gaio_core::{Error, Op, Requests, Watcher};
use util::*;

#[test]
fn empty_buffers_are_refused_at_once() {
    let _serial = serial();
    let (_c, mut w, tx, conn) = watched::<()>();
    assert!(matches!(
        tx.write(conn, (), Vec::new()),
        Err(Error::EmptyBuffer)
    ));
    assert!(matches!(
        tx.write_deadline(conn, (), Vec::new(), Instant::now()),
        Err(Error::EmptyBuffer)
    ));
    assert!(matches!(
        tx.read_full(conn, (), Vec::new(), None),
        Err(Error::EmptyBuffer)
    ));
    assert!(matches!(
        tx.read(conn, (), Some(Vec::new())),
        Err(Error::EmptyBuffer)
    ));
    // Nothing was accepted, so nothing completes.
    assert_quiet(&mut w, Duration::from_millis(20));
    assert_eq!(w.stats().pending_reads + w.stats().pending_writes, 0);
}

#[test]
fn unsupported_fd_is_refused_and_closed() {
    let _serial = serial();
    let start = fd_count();
    let mut w: Watcher<()> = Watcher::new().unwrap();
    let tx = w.submitter();
    let base = fd_count();
    let path = std::env::temp_dir().join(format!("gaio-core-file-{}", std::process::id()));
    let f = std::fs::File::create(&path).unwrap();
    assert!(matches!(w.register(f), Err(Error::Unsupported)));
    let f = std::fs::File::open(&path).unwrap();
    assert!(matches!(tx.register(f), Err(Error::Unsupported)));
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    assert!(matches!(w.register(udp), Err(Error::Unsupported)));
    std::fs::remove_file(&path).unwrap();
    assert_eq!(fd_count(), base, "refused fds are closed, not leaked");
    assert_eq!(w.stats().conns, 0);
    drop((w, tx));
    assert_fds_back_to(start);
}

#[test]
fn context_is_handed_back_unchanged() {
    let _serial = serial();
    #[derive(Debug, PartialEq)]
    struct Session {
        id: u64,
        name: String,
    }
    let (mut c, mut w, tx, conn) = watched::<Session>();
    tx.write(
        conn,
        Session {
            id: 7,
            name: "w".into(),
        },
        b"x".to_vec(),
    )
    .unwrap();
    tx.read(
        conn,
        Session {
            id: 8,
            name: "r".into(),
        },
        None,
    )
    .unwrap();
    c.write_all(b"y").unwrap();
    let mut done = collect(&mut w, 2);
    done.sort_by_key(|d| d.ctx.id);
    assert_eq!(
        done[0].ctx,
        Session {
            id: 7,
            name: "w".into()
        }
    );
    assert_eq!(
        done[1].ctx,
        Session {
            id: 8,
            name: "r".into()
        }
    );
    assert_eq!(done[1].data, b"y");
}

#[test]
fn read_full_waits_for_every_byte() {
    let _serial = serial();
    let (mut c, mut w, tx, conn) = watched::<()>();
    tx.read_full(conn, (), vec![0; 10], None).unwrap();
    c.write_all(b"0123").unwrap();
    assert_quiet(&mut w, Duration::from_millis(30));
    c.write_all(b"456789").unwrap();
    let d = one(&mut w);
    assert!(d.result.is_ok());
    assert_eq!((d.size, &d.data[..]), (10, &b"0123456789"[..]));
}

#[test]
fn read_full_eof_before_full_is_unexpected_eof() {
    let _serial = serial();
    let (mut c, mut w, tx, conn) = watched::<()>();
    tx.read_full(conn, (), vec![0; 10], None).unwrap();
    c.write_all(b"abc").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let d = one(&mut w);
    match &d.result {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
        other => panic!("{other:?}"),
    }
    assert_eq!(d.size, 3, "partial count reported");
    assert_eq!(
        &d.owned.unwrap()[..3],
        b"abc",
        "buffer handed back with the bytes read"
    );
}

#[test]
fn socket_close_completes_pending_read_with_eof() {
    let _serial = serial();
    let (c, mut w, tx, conn) = watched::<()>();
    tx.read(conn, (), None).unwrap();
    tx.read(conn, (), Some(vec![0; 8])).unwrap();
    drop(c);
    let done = collect(&mut w, 2);
    for d in &done {
        assert!(
            d.result.is_ok() && d.size == 0,
            "EOF is Ok(0): {:?}",
            d.result
        );
    }
}

#[test]
fn peer_reset_fails_pending_read_and_write() {
    let _serial = serial();
    let (c, mut w, tx, conn) = watched::<()>();
    tx.read(conn, (), None).unwrap();
    assert_quiet(&mut w, Duration::from_millis(10));
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c); // RST
    let d = one(&mut w);
    assert_eq!(d.op, Op::Read);
    match d.result {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        other => panic!("{other:?}"),
    }
    tx.write(conn, (), vec![1; 1024]).unwrap();
    let d = one(&mut w);
    assert!(matches!(d.result, Err(Error::Io(_))), "{:?}", d.result);
    assert_eq!(d.owned.unwrap().len(), 1024, "buffer handed back on error");
}

static SIGPIPES: AtomicUsize = AtomicUsize::new(0);
extern "C" fn count_sigpipe(_: libc::c_int) {
    SIGPIPES.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn write_on_closed_conn_errors_without_sigpipe() {
    let _serial = serial();
    // SAFETY: the handler only touches an atomic (async-signal-safe).
    let prev = unsafe {
        libc::signal(
            libc::SIGPIPE,
            count_sigpipe as *const () as libc::sighandler_t,
        )
    };
    let (c, mut w, tx, conn) = watched::<usize>();
    drop(c);
    // Keep writing until the reset surfaces; every write completes exactly once.
    let mut err = None;
    for i in 0..1000 {
        tx.write(conn, i, vec![0; 4096]).unwrap();
        let d = one(&mut w);
        assert_eq!(d.ctx, i);
        if let Err(e) = d.result {
            err = Some(e);
            break;
        }
    }
    match err {
        Some(Error::Io(e)) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        ),
        other => panic!("expected an i/o error, got {other:?}"),
    }
    assert_eq!(SIGPIPES.load(Ordering::SeqCst), 0);
    // SAFETY: restores the previous disposition.
    unsafe { libc::signal(libc::SIGPIPE, prev) };
}

#[test]
fn request_on_ready_fd_completes_without_a_new_edge() {
    let _serial = serial();
    let (mut c, mut w, tx, conn) = watched::<u8>();
    tx.read(conn, 1, Some(vec![0; 4])).unwrap();
    c.write_all(b"0123456789").unwrap();
    let d = one(&mut w);
    assert_eq!(d.data, b"0123");
    // The rest is buffered in the kernel and no new edge will come: the watcher
    // must remember the fd is readable.
    tx.read(conn, 2, Some(vec![0; 4])).unwrap();
    assert_eq!(one(&mut w).data, b"4567");
    tx.read(conn, 3, None).unwrap();
    assert_eq!(one(&mut w).data, b"89");
}

#[test]
fn queued_writes_go_out_in_order_in_one_writev() {
    let _serial = serial();
    let (mut c, mut w, tx, conn) = watched::<usize>();
    let before = w.stats().syscalls;
    for i in 0..20 {
        tx.write(conn, i, pattern(i, 100)).unwrap();
    }
    let done = collect(&mut w, 20);
    let order: Vec<usize> = done.iter().map(|d| d.ctx).collect();
    assert_eq!(order, (0..20).collect::<Vec<_>>(), "FIFO completion");
    assert!(done.iter().all(|d| d.result.is_ok() && d.size == 100));
    // One send for the first request, one sendmsg for the 19 queued behind it.
    let used = w.stats().syscalls - before;
    assert!(used <= 3, "20 small writes took {used} syscalls");
    let mut got = vec![0; 2000];
    c.read_exact(&mut got).unwrap();
    let want: Vec<u8> = (0..20).flat_map(|i| pattern(i, 100)).collect();
    assert!(got == want);
}

#[test]
fn socket_options_survive_registration() {
    let _serial = serial();
    let (_c, s) = tcp_pair();
    s.set_nodelay(true).unwrap();
    let sock = socket2::SockRef::from(&s);
    sock.set_keepalive(true).unwrap();
    sock.set_send_buffer_size(64 * 1024).unwrap();
    let sndbuf = sock.send_buffer_size().unwrap();
    let raw = s.as_raw_fd();
    let dup = s.try_clone().unwrap(); // to inspect the socket after handing it over
    let mut w: Watcher<()> = Watcher::new().unwrap();
    let _conn = w.register(s).unwrap();
    let sock = socket2::SockRef::from(&dup);
    assert!(sock.nodelay().unwrap());
    assert!(sock.keepalive().unwrap());
    assert_eq!(sock.send_buffer_size().unwrap(), sndbuf);
    assert!(
        sock.nonblocking().unwrap(),
        "registration makes the fd nonblocking"
    );
    assert_ne!(raw, -1);
}

/// Regression: data and FIN collected in one edge, a short read cleared the cached
/// readiness, and the next read waited forever for an edge that never comes.
#[test]
fn short_read_then_peer_close_still_reports_eof() {
    let _serial = serial();
    for full in [false, true] {
        let (mut c, s) = tcp_pair();
        let mut w: Watcher<()> = Watcher::new().unwrap();
        let tx = w.submitter();
        let conn = w.register(s).unwrap();
        tx.read(conn, (), Some(vec![0; 64])).unwrap();
        // The read finds nothing and the watcher forgets readiness.
        assert_eq!(w.wait_io_timeout(Duration::ZERO).unwrap().count(), 0);
        c.write_all(b"hi").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let d = collect_within(&mut w, 1, Duration::from_secs(10))
            .pop()
            .unwrap();
        assert_eq!(d.data, b"hi");
        if full {
            tx.read_full(conn, (), vec![0; 8], None).unwrap();
            let d = collect_within(&mut w, 1, Duration::from_secs(10))
                .pop()
                .unwrap();
            assert!(
                matches!(d.result, Err(Error::Io(ref e)) if e.kind() == std::io::ErrorKind::UnexpectedEof)
            );
        } else {
            tx.read(conn, (), None).unwrap();
            let d = collect_within(&mut w, 1, Duration::from_secs(10))
                .pop()
                .unwrap();
            assert!(d.result.is_ok() && d.size == 0, "EOF after the short read");
        }
    }
}

/// Regression: `wait_io_timeout(ZERO)` returned before polling, so a loop of
/// non-blocking checks never saw new readiness.
#[test]
fn zero_timeout_wait_still_polls() {
    let _serial = serial();
    let (mut c, mut w, tx, conn) = watched::<()>();
    tx.read(conn, (), None).unwrap();
    assert_eq!(w.wait_io_timeout(Duration::ZERO).unwrap().count(), 0);
    c.write_all(b"later").unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < end,
            "non-blocking waits never saw the data"
        );
        let got: Vec<Vec<u8>> = w
            .wait_io_timeout(Duration::ZERO)
            .unwrap()
            .map(|c| c.data().to_vec())
            .collect();
        if let Some(d) = got.first() {
            assert_eq!(d, b"later");
            break;
        }
        std::thread::yield_now();
    }
}

/// Regression: a write and a free in one batch dropped the write unattempted,
/// while the same two calls in two batches sent it.
#[test]
fn write_then_free_in_one_batch_sends_the_write() {
    let _serial = serial();
    let (mut c, mut w, tx, conn) = watched::<()>();
    tx.write(conn, (), b"bye".to_vec()).unwrap();
    tx.free(conn).unwrap();
    let d = one(&mut w);
    assert!(d.result.is_ok(), "{:?}", d.result);
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye");
}

#[test]
fn conn_of_another_watcher_is_refused() {
    let _serial = serial();
    let (_c, s) = tcp_pair();
    let mut a: Watcher<()> = Watcher::new().unwrap();
    let b: Watcher<()> = Watcher::new().unwrap();
    let conn = a.register(s).unwrap();
    let tb = b.submitter();
    assert!(matches!(tb.read(conn, (), None), Err(Error::ForeignConn)));
    assert!(matches!(
        tb.write(conn, (), vec![1]),
        Err(Error::ForeignConn)
    ));
    assert!(matches!(tb.free(conn), Err(Error::ForeignConn)));
    assert!(matches!(b.local().free(conn), Err(Error::ForeignConn)));
    assert!(matches!(b.local().detach(conn), Err(Error::ForeignConn)));
    assert_eq!(conn.watcher(), a.submitter().id());
    assert_ne!(conn.watcher(), tb.id());
    // The owner still has it: the refusals touched nothing.
    assert_eq!(a.stats().conns, 1);
    a.free(conn).unwrap();
}

/// `detach` hands the socket back open: pending requests end with ConnClosed
/// (exactly once), the Conn is dead afterwards, and the fd still carries bytes
/// both ways, e.g. on another watcher.
#[test]
fn detach_hands_the_socket_back_open() {
    let _serial = serial();
    let (mut c, mut w, _tx, conn) = watched::<u8>();
    w.local().read(conn, 1, None).unwrap();
    let fd = w.local().detach(conn).unwrap();
    let done = collect(&mut w, 1);
    assert_eq!(done[0].ctx, 1);
    assert!(matches!(done[0].result, Err(Error::ConnClosed)));
    assert_eq!(w.stats().conns, 0);
    assert!(matches!(w.local().detach(conn), Err(Error::ConnClosed)));
    w.local().read(conn, 2, None).unwrap();
    assert!(matches!(
        collect(&mut w, 1)[0].result,
        Err(Error::ConnClosed)
    ));

    let mut other: Watcher<u8> = Watcher::new().unwrap();
    let moved = other.register(fd).unwrap();
    other.local().read(moved, 3, None).unwrap();
    c.write_all(b"moved").unwrap();
    let done = collect(&mut other, 1);
    assert_eq!((done[0].ctx, done[0].data.as_slice()), (3, &b"moved"[..]));
    other.local().write(moved, 4, b"back".to_vec()).unwrap();
    assert!(collect(&mut other, 1)[0].result.is_ok());
    let mut got = [0; 4];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"back");
}

#[test]
fn local_write_then_free_in_one_batch_sends_the_write() {
    let _serial = serial();
    let (mut c, mut w, _tx, conn) = watched::<()>();
    let io = w.local();
    io.write(conn, (), b"bye".to_vec()).unwrap();
    io.free(conn).unwrap();
    // Requests after the free complete with ConnClosed, never reach the socket.
    io.write(conn, (), b"late".to_vec()).unwrap();
    let done = collect(&mut w, 2);
    assert!(done[0].result.is_ok(), "{:?}", done[0].result);
    assert!(matches!(done[1].result, Err(Error::ConnClosed)));
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye");
}

/// The hot path keeps happens-before order with the cross-thread queue: a write
/// another thread submitted before this thread's write goes out first, though
/// the local one skips the queue.
#[test]
fn remote_request_before_local_request_keeps_order() {
    let _serial = serial();
    let (mut c, mut w, tx, conn) = watched::<u8>();
    for round in 0..50u8 {
        let remote = tx.clone();
        std::thread::spawn(move || remote.write(conn, 1, vec![round; 100]).unwrap())
            .join()
            .unwrap();
        w.local().write(conn, 2, vec![round ^ 0xff; 100]).unwrap();
        let done = collect(&mut w, 2);
        assert_eq!(
            done.iter().map(|d| d.ctx).collect::<Vec<_>>(),
            [1, 2],
            "completion order"
        );
        let mut got = [0u8; 200];
        c.read_exact(&mut got).unwrap();
        assert!(got[..100].iter().all(|&b| b == round), "remote bytes first");
        assert!(got[100..].iter().all(|&b| b == round ^ 0xff));
    }
}

#[test]
fn local_requests_are_refused_like_submitter_ones() {
    let _serial = serial();
    let (_c, mut w, _tx, conn) = watched::<()>();
    let other: Watcher<()> = Watcher::new().unwrap();
    let io = w.local();
    assert!(matches!(
        io.write(conn, (), Vec::new()),
        Err(Error::EmptyBuffer)
    ));
    assert!(matches!(
        io.read(conn, (), Some(Vec::new())),
        Err(Error::EmptyBuffer)
    ));
    assert!(matches!(
        other.local().read(conn, (), None),
        Err(Error::ForeignConn)
    ));
    w.close().unwrap();
    assert!(matches!(
        w.local().read(conn, (), None),
        Err(Error::WatcherClosed)
    ));
}
