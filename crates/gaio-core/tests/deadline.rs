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
