//! free, close, drop, stale tokens after fd reuse, no leaked fds.

mod util;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use gaio_core::{Error, Op, Requests, Watcher};
use util::*;

#[test]
fn double_close_is_harmless() {
    let _serial = serial();
    let mut w: Watcher<()> = Watcher::new().unwrap();
    w.close().unwrap();
    w.close().unwrap();
}

#[test]
fn wait_io_after_close_fails() {
    let _serial = serial();
    let mut w: Watcher<()> = Watcher::new().unwrap();
    w.close().unwrap();
    assert!(matches!(w.wait_io(), Err(Error::WatcherClosed)));
    assert!(matches!(
        w.wait_io_timeout(Duration::ZERO),
        Err(Error::WatcherClosed)
    ));
}

#[test]
fn requests_and_register_after_close_fail_from_any_submitter() {
    let _serial = serial();
    let (_c, s) = tcp_pair();
    let (_c2, s2) = tcp_pair();
    let mut w: Watcher<()> = Watcher::new().unwrap();
    let tx = w.submitter();
    let conn = w.register(s).unwrap();
    let start = fd_count();
    w.close().unwrap();
    assert!(tx.is_closed());
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        assert!(matches!(
            tx2.read(conn, (), None),
            Err(Error::WatcherClosed)
        ));
        assert!(matches!(
            tx2.write(conn, (), vec![1]),
            Err(Error::WatcherClosed)
        ));
        assert!(matches!(tx2.free(conn), Err(Error::WatcherClosed)));
    })
    .join()
    .unwrap();
    assert!(matches!(
        tx.read_full(conn, (), vec![0; 4], None),
        Err(Error::WatcherClosed)
    ));
    assert!(matches!(tx.register(s2), Err(Error::WatcherClosed)));
    assert!(matches!(w.free(conn), Err(Error::WatcherClosed)));
    // The registered socket, the refused one and the waker are closed even though a
    // Submitter is still alive; the poller goes with the Watcher value.
    assert_eq!(fd_count(), start - 3);
    drop(w);
    assert_eq!(fd_count(), start - 4);
}

#[test]
fn free_completes_pending_requests_with_conn_closed() {
    let _serial = serial();
    let (_c, mut w, tx, conn) = watched::<u8>();
    tx.read(conn, 1, None).unwrap();
    tx.read(conn, 2, Some(vec![0; 16])).unwrap();
    tx.write(conn, 3, vec![5; 32 << 20]).unwrap(); // the peer never reads: stays pending
    tx.write(conn, 4, vec![6; 10]).unwrap();
    assert_quiet(&mut w, Duration::from_millis(30));
    tx.free(conn).unwrap();
    let mut done = collect(&mut w, 4);
    done.sort_by_key(|d| d.ctx);
    for d in &done {
        assert!(
            matches!(d.result, Err(Error::ConnClosed)),
            "ctx {}: {:?}",
            d.ctx,
            d.result
        );
    }
    assert!(done[2].size > 0, "partial write count reported");
    assert_eq!(done[2].owned.as_ref().unwrap().len(), 32 << 20);
    assert_eq!(done[3].size, 0);
    // Later requests with the freed Conn complete with ConnClosed.
    tx.read(conn, 5, None).unwrap();
    tx.write(conn, 6, vec![1]).unwrap();
    let later = collect(&mut w, 2);
    assert!(
        later
            .iter()
            .all(|d| matches!(d.result, Err(Error::ConnClosed)))
    );
    let s = w.stats();
    assert_eq!((s.conns, s.pending_reads, s.pending_writes), (0, 0, 0));
    // Freeing again is harmless.
    tx.free(conn).unwrap();
    w.free(conn).unwrap();
    assert_quiet(&mut w, Duration::from_millis(10));
}

#[test]
fn watcher_free_closes_at_once() {
    let _serial = serial();
    let (mut c, s) = tcp_pair();
    let mut w: Watcher<()> = Watcher::new().unwrap();
    let conn = w.register(s).unwrap();
    w.free(conn).unwrap();
    // The peer sees EOF without any wait_io.
    let mut buf = [0u8; 1];
    assert_eq!(c.read(&mut buf).unwrap(), 0);
}

#[test]
fn stale_conn_never_touches_a_newer_socket_on_the_same_fd() {
    let _serial = serial();
    let (_c1, s1) = tcp_pair();
    let mut w: Watcher<&str> = Watcher::new().unwrap();
    let tx = w.submitter();
    let fd1 = s1.as_raw_fd();
    let old = w.register(s1).unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c2 = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    w.free(old).unwrap();
    let (s2, _) = l.accept().unwrap();
    assert_eq!(s2.as_raw_fd(), fd1, "the kernel reused the fd number");
    let new = w.register(s2).unwrap();
    assert_eq!(new.slot(), old.slot(), "and the watcher reused the slot");
    assert_ne!(new, old);
    tx.write(old, "stale", b"WRONG".to_vec()).unwrap();
    tx.write(new, "fresh", b"right".to_vec()).unwrap();
    let done = collect(&mut w, 2);
    let stale = done.iter().find(|d| d.ctx == "stale").unwrap();
    assert!(matches!(stale.result, Err(Error::ConnClosed)));
    assert_eq!(stale.conn, old);
    let mut got = [0u8; 5];
    c2.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"right");
    c2.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    assert!(c2.read(&mut got).is_err(), "nothing else arrives");
}

#[test]
fn drop_with_requests_in_flight_closes_every_fd() {
    let _serial = serial();
    raise_fd_limit();
    let start = fd_count();
    let pairs = tcp_pairs(5000);
    let mut w: Watcher<usize> = Watcher::new().unwrap();
    let tx = w.submitter();
    let mut clients = Vec::new();
    for (i, (c, s)) in pairs.into_iter().enumerate() {
        let conn = w.register(s).unwrap();
        match i % 4 {
            0 => tx.read(conn, i, None).unwrap(),
            1 => tx
                .read_full(
                    conn,
                    i,
                    vec![0; 64],
                    Some(Instant::now() + Duration::from_secs(60)),
                )
                .unwrap(),
            // A few writes far larger than the socket buffers stay pending.
            2 if i % 100 == 2 => tx.write(conn, i, vec![0; 8 << 20]).unwrap(),
            2 => tx.write(conn, i, vec![0; 4096]).unwrap(),
            _ => tx
                .read_deadline(
                    conn,
                    i,
                    Some(vec![0; 8]),
                    Instant::now() + Duration::from_secs(60),
                )
                .unwrap(),
        }
        clients.push(c);
    }
    // Some submissions are still queued, some requests are running.
    let _ = w
        .wait_io_timeout(Duration::from_millis(10))
        .unwrap()
        .count();
    tx.write(
        gaio_core::Conn::clone(&w.register(tcp_pair().1).unwrap()),
        999,
        vec![1],
    )
    .unwrap();
    drop(w);
    // Every client sees the server side gone.
    for mut c in clients {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue, // drain what the 8 MiB writes got out
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("client: {e}"),
            }
        }
    }
    assert!(tx.is_closed());
    drop(tx);
    assert_fds_back_to(start);
    // No thread to check for: a Watcher never starts one (gaio-core spawns none).
}

#[test]
fn results_carry_op_and_conn() {
    let _serial = serial();
    let (_c, mut w, tx, conn) = watched::<()>();
    tx.write(conn, (), b"hi".to_vec()).unwrap();
    let d = one(&mut w);
    assert_eq!((d.op, d.conn, d.size), (Op::Write, conn, 2));
}

#[test]
fn wake_from_another_thread_returns_an_empty_batch() {
    let _serial = serial();
    let mut w: Watcher<()> = Watcher::new().unwrap();
    let tx = w.submitter();
    let (started_tx, started) = std::sync::mpsc::channel();
    let waker = std::thread::spawn(move || {
        started.recv().unwrap();
        tx.wake().unwrap();
    });
    started_tx.send(()).unwrap();
    // Nothing is registered: only the wake can end this wait before the timeout.
    let start = Instant::now();
    assert_eq!(w.wait_io_timeout(PATIENCE).unwrap().count(), 0);
    assert!(start.elapsed() < PATIENCE, "the wake did not end the wait");
    waker.join().unwrap();
}

#[test]
fn free_all_completes_every_pending_request() {
    let _serial = serial();
    let pairs = tcp_pairs(10);
    let mut w: Watcher<usize> = Watcher::new().unwrap();
    let tx = w.submitter();
    let mut clients = Vec::new();
    for (i, (c, s)) in pairs.into_iter().enumerate() {
        let conn = w.register(s).unwrap();
        tx.read(conn, i, None).unwrap();
        tx.write(conn, i, vec![0; 16 << 20]).unwrap();
        clients.push(c);
    }
    let _ = w
        .wait_io_timeout(Duration::from_millis(10))
        .unwrap()
        .count();
    w.free_all().unwrap();
    let done = collect(&mut w, 20);
    assert!(
        done.iter()
            .all(|d| matches!(d.result, Err(Error::ConnClosed)))
    );
    let st = w.stats();
    assert_eq!(
        (st.conns, st.freed, st.pending_reads, st.pending_writes),
        (0, 10, 0, 0)
    );
}

/// Regression: `Watcher::free` of a connection registered through a Submitter but
/// not yet taken over did nothing, and the registration then leaked the fd.
#[test]
fn watcher_free_right_after_submitter_register() {
    let _serial = serial();
    let (mut c, s) = tcp_pair();
    let mut w: Watcher<()> = Watcher::new().unwrap();
    let tx = w.submitter();
    let conn = tx.register(s).unwrap();
    w.free(conn).unwrap();
    let _ = w.wait_io_timeout(Duration::ZERO).unwrap().count();
    assert_eq!(w.stats().conns, 0);
    let mut buf = [0u8; 1];
    assert_eq!(c.read(&mut buf).unwrap(), 0, "the fd was closed");
}
