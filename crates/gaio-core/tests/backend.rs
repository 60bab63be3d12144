//! Backend choice, and what the io_uring driver must not leak. Every other test
//! file runs on whichever backend `GAIO_BACKEND` names (`cargo xtask ci` runs
//! them on both); these pin the backend where it matters.

mod util;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use gaio_core::{Backend, Error, Op, Requests, Watcher};
use util::*;

/// Whether this machine lets a watcher run on io_uring (`None`) or why not.
fn uring_refused() -> Option<Error> {
    Watcher::<()>::builder()
        .backend(Backend::IoUring)
        .build()
        .err()
}

#[test]
fn backend_names_parse_and_print() {
    for (s, b) in [
        ("auto", Backend::Auto),
        ("epoll", Backend::Epoll),
        ("kqueue", Backend::Epoll),
        ("uring", Backend::IoUring),
        ("io_uring", Backend::IoUring),
        ("IO-URING", Backend::IoUring),
    ] {
        assert_eq!(s.parse::<Backend>(), Ok(b));
    }
    assert!("select".parse::<Backend>().is_err());
    for b in [Backend::Auto, Backend::Epoll, Backend::IoUring] {
        assert_eq!(b.to_string().parse::<Backend>(), Ok(b));
    }
}

#[test]
fn auto_resolves_to_a_real_backend_and_says_which() {
    let _serial = serial();
    let w: Watcher<()> = Watcher::builder().backend(Backend::Auto).build().unwrap();
    let got = w.stats().backend;
    let want = if uring_refused().is_none() {
        Backend::IoUring
    } else {
        Backend::Epoll
    };
    assert_eq!(got, want);
    // Other threads see it too.
    assert_eq!(w.submitter().stats().backend, got);
    let e: Watcher<()> = Watcher::builder().backend(Backend::Epoll).build().unwrap();
    assert_eq!(e.stats().backend, Backend::Epoll);
}

#[test]
fn io_uring_where_refused_is_a_clear_error() {
    let _serial = serial();
    match uring_refused() {
        None => {
            let w: Watcher<()> = Watcher::builder()
                .backend(Backend::IoUring)
                .build()
                .unwrap();
            assert_eq!(w.stats().backend, Backend::IoUring);
        }
        Some(Error::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}");
            eprintln!("io_uring refused here: {e}");
        }
        Some(other) => panic!("unexpected error {other:?}"),
    }
}

/// 100,000 connections registered, each with a swap read armed (a multishot
/// receive on io_uring) and an owned read or a write, then freed while those are
/// in flight: every request completes once, and nothing stays behind — no fd,
/// no slot, no buffer the kernel still holds (the table's memory goes back to
/// where it was).
#[test]
fn hundred_thousand_register_free_cycles_leak_nothing() {
    let _serial = serial();
    for backend in [Backend::Epoll, Backend::IoUring] {
        if backend == Backend::IoUring && uring_refused().is_some() {
            eprintln!("SKIPPED on io_uring: refused here");
            continue;
        }
        let mut w: Watcher<u32> = Watcher::builder().backend(backend).build().unwrap();
        let start = fd_count();
        const ROUND: usize = 250;
        let mut peers = Vec::with_capacity(ROUND);
        for round in 0..100_000 / ROUND {
            let mut conns = Vec::with_capacity(ROUND);
            for i in 0..ROUND {
                let (a, b) = UnixStream::pair().unwrap();
                let conn = w.register(a).unwrap();
                let io = w.local();
                io.read(conn, 0, None).unwrap();
                if i % 2 == 0 {
                    io.read(conn, 1, Some(vec![0; 64])).unwrap();
                } else {
                    io.write(conn, 2, vec![1; 64]).unwrap();
                }
                conns.push(conn);
                peers.push(b);
            }
            // Let the operations reach the kernel, then free them in flight.
            let mut done = w.wait_io_timeout(Duration::ZERO).unwrap().count();
            for &c in &conns {
                w.free(c).unwrap();
            }
            while done < 2 * ROUND {
                let n = w.wait_io_timeout(PATIENCE).unwrap().count();
                assert!(n > 0, "round {round}: requests never completed");
                done += n;
            }
            assert_eq!(done, 2 * ROUND, "round {round}: a request completed twice");
            let st = w.stats();
            assert_eq!((st.conns, st.pending_reads, st.pending_writes), (0, 0, 0));
            peers.clear();
            assert_eq!(fd_count(), start, "round {round}: fds left open");
        }
        assert_eq!(w.stats().freed, 100_000);
    }
}

/// A peer that writes while no read is pending: the bytes wait (on io_uring,
/// copied out of the ring, which is lent again) and come, in order, to the next
/// reads of either kind.
#[test]
fn bytes_that_arrive_between_reads_wait_for_the_next_one() {
    let _serial = serial();
    let (a, mut b) = UnixStream::pair().unwrap();
    let mut w: Watcher<u8> = Watcher::new().unwrap();
    let conn = w.register(a).unwrap();
    w.local().read(conn, 0, None).unwrap();
    b.write_all(b"first").unwrap();
    let d = one(&mut w);
    assert_eq!((d.op, &d.data[..]), (Op::Read, &b"first"[..]));
    // No read pending now: these bytes must complete nothing until one is.
    b.write_all(b"second").unwrap();
    b.write_all(b"third").unwrap();
    assert_quiet(&mut w, Duration::from_millis(50));
    w.local().read(conn, 1, Some(vec![0; 3])).unwrap();
    w.local().read(conn, 2, None).unwrap();
    let (mut got, mut pending) = (Vec::new(), 2);
    while got.len() < b"secondthird".len() {
        if pending == 0 {
            w.local().read(conn, 3, None).unwrap();
            pending = 1;
        }
        for d in collect(&mut w, 1) {
            assert!(d.result.is_ok() && d.size > 0, "{:?}", d.result);
            got.extend_from_slice(&d.data);
            pending -= 1;
        }
    }
    assert_eq!(&got[..], &b"secondthird"[..]);
}

/// An io_uring watcher belongs to the thread of its first wait (the ring's one
/// issuer): another thread gets a clear error, not a panic, and dropping it
/// there leaks its pending requests instead of freeing buffers under the kernel.
#[test]
fn io_uring_watcher_moved_to_another_thread_errs_cleanly() {
    let _serial = serial();
    if uring_refused().is_some() {
        eprintln!("SKIPPED: io_uring refused here");
        return;
    }
    let (a, _b) = UnixStream::pair().unwrap();
    let mut w: Watcher<()> = Watcher::builder()
        .backend(Backend::IoUring)
        .build()
        .unwrap();
    let conn = w.register(a).unwrap();
    w.local().read(conn, (), Some(vec![0; 16])).unwrap();
    assert_eq!(w.wait_io_timeout(Duration::ZERO).unwrap().count(), 0);
    std::thread::spawn(move || {
        let e = w
            .wait_io_timeout(Duration::ZERO)
            .map(|b| b.count())
            .unwrap_err();
        assert!(e.to_string().contains("one thread"), "{e}");
        assert!(w.free(conn).is_err());
        assert!(w.close().is_err());
        drop(w); // the read's buffer stays with the kernel: leaked, not freed
    })
    .join()
    .unwrap();
}

/// Bytes that arrive with no read pending stay in the socket on every
/// backend (io_uring reads are single-shot: nothing takes bytes no request
/// asked for), so a detached fd hands them over.
#[test]
fn detach_hands_over_bytes_no_read_took() {
    let _serial = serial();
    let (a, mut b) = UnixStream::pair().unwrap();
    let mut w: Watcher<u8> = Watcher::new().unwrap();
    let conn = w.register(a).unwrap();
    w.local().read(conn, 0, None).unwrap();
    b.write_all(b"one").unwrap();
    assert_eq!(one(&mut w).data, b"one");
    b.write_all(b"two").unwrap();
    // No read pending: nothing may complete.
    assert_quiet(&mut w, Duration::from_millis(50));
    let fd = w.local().detach(conn).unwrap();
    let mut a = UnixStream::from(fd);
    let mut got = [0u8; 3];
    std::io::Read::read_exact(&mut a, &mut got).unwrap();
    assert_eq!(&got, b"two");
}
