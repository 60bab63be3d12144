//! Deadlines: never early, past deadlines at the next wait_io, partial counts,
//! out-of-order expiry of a queued request, thousands of timers.

mod util;

use std::io::Write;
use std::time::{Duration, Instant};

use gaio_core::{Error, Op, Requests, Watcher};
use util::*;

#[test]
fn read_on_silent_peer_completes_with_deadline_not_before() {
    let _serial = serial();
    let (_c, mut w, tx, conn) = watched::<()>();
    let deadline = Instant::now() + Duration::from_millis(50);
    tx.read_deadline(conn, (), None, deadline).unwrap();
    let d = one(&mut w);
    assert!(Instant::now() >= deadline, "completed before its deadline");
    assert!(matches!(d.result, Err(Error::Deadline)), "{:?}", d.result);
    assert_eq!(d.size, 0);
    assert_eq!(w.stats().timers, 0);
}

#[test]
fn past_deadline_completes_on_next_wait_io() {
    let _serial = serial();
    let (_c, mut w, tx, conn) = watched::<()>();
    let past = Instant::now() - Duration::from_secs(1);
    tx.read_deadline(conn, (), Some(vec![0; 8]), past).unwrap();
    tx.write_deadline(conn, (), vec![1; 8], past).unwrap();
    let got: Vec<_> = w
        .wait_io_timeout(Duration::from_secs(5))
        .unwrap()
        .map(|c| (c.op, c.result.map_err(|e| e.is_deadline())))
        .collect();
    assert_eq!(got, vec![(Op::Read, Err(true)), (Op::Write, Err(true))]);
}

/// Regression: a close whose deadline had already passed when it was made
/// completed with `Deadline` but left the connection open (the fd leaked until
/// the watcher went); a deadline passing later did close it.
#[test]
fn a_close_with_a_past_deadline_still_closes() {
    use std::io::Read;
    let _serial = serial();
    let (mut c, mut w, _tx, conn) = watched::<u8>();
    let io = w.local();
    io.read(conn, 1, None).unwrap();
    io.close(conn, 2, Some(Instant::now() - Duration::from_secs(1)))
        .unwrap();
    let done = collect(&mut w, 2);
    let close = done.iter().find(|d| d.ctx == 2).unwrap();
    assert!(
        matches!(close.result, Err(Error::Deadline)),
        "{:?}",
        close.result
    );
    let read = done.iter().find(|d| d.ctx == 1).unwrap();
    assert!(read.result.is_err(), "{:?}", read.result);
    assert_eq!(w.stats().conns, 0, "the connection is gone");
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    assert_eq!(c.read(&mut [0; 1]).unwrap(), 0, "the peer sees EOF");
}

#[test]
fn deadline_reports_partial_read_full_count() {
    let _serial = serial();
    let (mut c, mut w, tx, conn) = watched::<()>();
    c.write_all(b"abc").unwrap();
    tx.read_full(
        conn,
        (),
        vec![0; 10],
        Some(Instant::now() + Duration::from_millis(50)),
    )
    .unwrap();
    let d = one(&mut w);
    assert!(matches!(d.result, Err(Error::Deadline)));
    assert_eq!(d.size, 3);
    assert_eq!(&d.owned.unwrap()[..3], b"abc");
}

#[test]
fn write_deadline_fires_when_peer_never_reads() {
    let _serial = serial();
    let (_c, mut w, tx, conn) = watched::<()>();
    let big = vec![9u8; 64 << 20];
    tx.write_deadline(conn, (), big, Instant::now() + Duration::from_millis(100))
        .unwrap();
    let d = one(&mut w);
    assert!(matches!(d.result, Err(Error::Deadline)), "{:?}", d.result);
    assert!(d.size > 0 && d.size < 64 << 20, "partial count {}", d.size);
    assert_eq!(d.owned.unwrap().len(), 64 << 20, "buffer handed back whole");
}

#[test]
fn deadline_of_queued_request_completes_it_ahead_of_the_head() {
    let _serial = serial();
    let (mut c, mut w, tx, conn) = watched::<u8>();
    tx.read(conn, 1, None).unwrap();
    tx.read_deadline(conn, 2, None, Instant::now() + Duration::from_millis(30))
        .unwrap();
    tx.read(conn, 3, None).unwrap();
    let d = one(&mut w);
    assert_eq!(d.ctx, 2);
    assert!(matches!(d.result, Err(Error::Deadline)));
    // The others keep their order.
    c.write_all(b"x").unwrap();
    let d = one(&mut w);
    assert_eq!((d.ctx, &d.data[..]), (1, &b"x"[..]));
    c.write_all(b"y").unwrap();
    let d = one(&mut w);
    assert_eq!((d.ctx, &d.data[..]), (3, &b"y"[..]));
}

#[test]
fn finished_requests_disarm_their_timers() {
    let _serial = serial();
    let (mut c, mut w, tx, conn) = watched::<()>();
    for _ in 0..100 {
        tx.read_deadline(conn, (), None, Instant::now() + Duration::from_secs(30))
            .unwrap();
        c.write_all(b"z").unwrap();
        assert!(one(&mut w).result.is_ok());
    }
    assert_eq!(
        w.stats().timers,
        0,
        "no timer left behind by completed requests"
    );
}

#[test]
fn deadlines_on_1k_to_8k_conns() {
    let _serial = serial();
    raise_fd_limit();
    for n in [1024, 2048, 4096, 8192] {
        let pairs = tcp_pairs(n);
        let mut w: Watcher<usize> = Watcher::new().unwrap();
        let tx = w.submitter();
        let start = Instant::now();
        let mut deadlines = Vec::new();
        let mut clients = Vec::new();
        for (i, (c, s)) in pairs.into_iter().enumerate() {
            clients.push(c);
            let conn = w.register(s).unwrap();
            // Spread deadlines over 50..150 ms, in scrambled order.
            let at = start + Duration::from_millis(50 + (i * 37 % 100) as u64);
            deadlines.push(at);
            tx.read_deadline(conn, i, None, at).unwrap();
        }
        let done = collect(&mut w, n);
        let now = Instant::now();
        for d in &done {
            assert!(
                matches!(d.result, Err(Error::Deadline)),
                "conn {}: {:?}",
                d.ctx,
                d.result
            );
            assert!(now >= deadlines[d.ctx]);
        }
        assert_eq!(w.stats().timers, 0);
        assert_eq!(w.stats().pending_reads, 0);
    }
}

/// A peer that sends one byte per interval re-arms a `read_timeout` with every
/// read and is never dropped; a per-frame deadline (`Framer::deadline`)
/// counts from the frame's first byte and drops it.
#[test]
fn per_frame_deadline_drops_a_one_byte_per_interval_peer() {
    use gaio_core::framing::Framer;
    let _serial = serial();
    let (mut c, mut w, _tx, conn) = watched::<()>();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    // Pacing the peer is the behaviour under test, not a wait for I/O.
    let peer = std::thread::spawn(move || {
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) && c.write_all(b"x").is_ok() {
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let per_frame = Duration::from_millis(150);
    let mut framer = Framer::lines(1 << 20);
    let mut reads = 0;
    let end = Instant::now() + PATIENCE;
    let first_byte = loop {
        assert!(Instant::now() < end, "the slow peer was never dropped");
        match framer.deadline(per_frame, None) {
            Some(at) => w.local().read_deadline(conn, (), None, at).unwrap(),
            None => w.local().read(conn, (), None).unwrap(),
        }
        let d = one(&mut w);
        if matches!(d.result, Err(Error::Deadline)) {
            break framer.deadline(per_frame, None).unwrap() - per_frame;
        }
        assert!(d.result.is_ok() && d.size > 0);
        reads += 1;
        framer
            .feed(&d.data, |_| panic!("no line ever ends"))
            .unwrap();
    };
    assert!(reads >= 2, "{reads} reads: the peer did trickle");
    assert!(Instant::now() >= first_byte + per_frame, "dropped early");
    w.local().free(conn).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(w);
    peer.join().unwrap();
}
