//! Graceful shutdown: every pending write completes or reports an error, every fd
//! is closed, every thread joined.

mod util;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::time::Duration;

use gaio_core::{Op, Requests};
use gaio_pool::{Event, Io, Pool};
use util::*;

#[test]
fn shutdown_with_1000_live_conns_and_pending_writes() {
    let _serial = serial();
    raise_fd_limit();
    let fds = fd_count();
    let threads = thread_count();
    assert_eq!(threads, 0);
    let submitted = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let (conn_tx, conn_rx) = channel();
    let (s, o, f) = (submitted.clone(), ok.clone(), failed.clone());
    let pool = Pool::builder()
        .watchers(2)
        .build(move |_| {
            let (s, o, f, conn_tx) = (s.clone(), o.clone(), f.clone(), conn_tx.clone());
            move |io: &Io<()>, ev: Event<'_, ()>| match ev {
                Event::Connected { conn, .. } => {
                    // Small writes finish; 256 KiB ones stay pending (clients never
                    // read, and both socket buffers are a few KiB).
                    for size in [100, 256 << 10] {
                        io.write(conn, (), vec![7; size]).unwrap();
                        s.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = conn_tx.send(());
                }
                Event::Completed(res) => {
                    assert_eq!(res.op, Op::Write);
                    if res.result.is_ok() {
                        o.fetch_add(1, Ordering::SeqCst);
                    } else {
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                }
                _ => {}
            }
        })
        .unwrap();
    // Accept here to shrink each server socket's send buffer (a fixed size turns
    // off autotuning), then hand it to the pool.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut clients = Vec::new();
    for _ in 0..1000 {
        clients.push(small_window_client(addr));
        let (s, _) = l.accept().unwrap();
        socket2::SockRef::from(&s)
            .set_send_buffer_size(4096)
            .unwrap();
        pool.assign(s).unwrap();
    }
    drop(l);
    for _ in 0..1000 {
        conn_rx
            .recv_timeout(PATIENCE)
            .expect("all 1000 connections handed over");
    }
    assert!(thread_count() >= 2, "the watcher threads are counted");
    pool.shutdown(Duration::from_millis(200));
    let (s, o, f) = (
        submitted.load(Ordering::SeqCst),
        ok.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
    );
    assert_eq!(s, 2000);
    assert_eq!(
        o + f,
        s,
        "every write completed ({o}) or reported an error ({f})"
    );
    assert!(
        f > 0,
        "the 256 KiB writes to non-reading clients cannot have finished"
    );
    drop(clients);
    assert_eq!(fd_count(), fds, "every fd closed");
    assert_threads_back_to(threads);
}

#[test]
fn drop_stops_everything_with_the_default_grace() {
    let _serial = serial();
    let fds = fd_count();
    let threads = thread_count();
    {
        let (tx, rx) = channel();
        let pool = echo_pool(
            Pool::builder().watchers(2).grace(Duration::from_millis(50)),
            tx,
        );
        let addr = pool.listen_reuseport("127.0.0.1:0").unwrap();
        let _ = pool.listen("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        wait_notes(&rx, 1, |n| matches!(n, Note::Connected { .. }));
        echo_once(&mut c, b"bye");
    }
    assert_eq!(fd_count(), fds);
    assert_threads_back_to(threads);
}

/// A client with a 4 KiB receive buffer, so little of what the server writes fits.
fn small_window_client(addr: std::net::SocketAddr) -> std::net::TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    s.into()
}

/// Joined threads can linger in /proc for a moment after `join` returns (the
/// kernel clears the tid before the task is reaped): allow a bounded wait.
fn assert_threads_back_to(threads: usize) {
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while thread_count() != threads && std::time::Instant::now() < end {
        std::thread::yield_now();
    }
    assert_eq!(thread_count(), threads, "every thread joined");
}
