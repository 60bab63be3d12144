//! Hostile peers: slowloris, a peer that resets mid-write, half-close, connect-and-
//! drop storms beside live echo traffic, and a peer that sends more than any
//! pending read can hold.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gaio_core::{Error, Op, Requests, Watcher};
use util::*;

#[test]
fn slowloris_1000_conns_read_full_with_deadlines() {
    let _serial = serial();
    raise_fd_limit();
    const N: usize = 1000;
    let pairs = tcp_pairs(N);
    let (mut clients, servers): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
    let mut w: Watcher<usize> = Watcher::new().unwrap();
    let tx = w.submitter();
    let start = Instant::now();
    let deadline = start + Duration::from_millis(80);
    for (i, s) in servers.into_iter().enumerate() {
        let conn = w.register(s).unwrap();
        tx.read_full(conn, i, vec![0; 64], Some(deadline)).unwrap();
    }
    // One byte per connection every 5 ms: the pacing is the attack under test.
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let drip = std::thread::spawn(move || {
        let mut sent = 0usize;
        while !st.load(Ordering::Relaxed) && sent < 40 {
            for (i, c) in clients.iter_mut().enumerate() {
                c.write_all(&[pattern(i, 64)[sent]]).unwrap();
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        clients
    });
    let done = collect(&mut w, N);
    stop.store(true, Ordering::Relaxed);
    let clients = drip.join().unwrap();
    assert!(Instant::now() >= deadline);
    for d in &done {
        assert!(
            matches!(d.result, Err(Error::Deadline)),
            "conn {}: {:?}",
            d.ctx,
            d.result
        );
        assert!(
            d.size < 64,
            "a trickle of 5 ms per byte cannot fill 64 bytes in 80 ms"
        );
        assert_eq!(
            &d.owned.as_ref().unwrap()[..d.size],
            &pattern(d.ctx, 64)[..d.size]
        );
    }
    assert_eq!(w.stats().timers, 0);
    drop(clients);
}

#[test]
fn reset_in_the_middle_of_a_large_write() {
    let _serial = serial();
    let (mut c, mut w, tx, conn) = watched::<()>();
    tx.write(conn, (), pattern(3, 32 << 20)).unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; 1 << 20];
        c.read_exact(&mut got).unwrap();
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c); // RST with the write still going
        got
    });
    let d = one(&mut w);
    let got = reader.join().unwrap();
    assert_eq!(got, pattern(3, 32 << 20)[..1 << 20]);
    match &d.result {
        Err(Error::Io(e)) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(
        d.size >= 1 << 20 && d.size < 32 << 20,
        "partial count {}",
        d.size
    );
}

#[test]
fn half_close_peer_still_reads_our_writes() {
    let _serial = serial();
    let (mut c, mut w, tx, conn) = watched::<u8>();
    tx.read(conn, 1, None).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let d = one(&mut w);
    assert!(d.result.is_ok() && d.size == 0, "our read sees EOF");
    let data = pattern(4, 1 << 20);
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        got
    });
    tx.write(conn, 2, data.clone()).unwrap();
    let d = one(&mut w);
    assert!(
        d.result.is_ok(),
        "writes still succeed after the peer's half-close"
    );
    w.free(conn).unwrap();
    assert!(reader.join().unwrap() == data);
}

#[test]
fn peer_sends_more_than_any_pending_read_holds() {
    let _serial = serial();
    let (mut c, s) = tcp_pair();
    let mut w: Watcher<()> = Watcher::builder().swap_buffer(4096).build().unwrap();
    let tx = w.submitter();
    let conn = w.register(s).unwrap();
    let data = pattern(5, 1 << 20);
    let d2 = data.clone();
    let writer = std::thread::spawn(move || c.write_all(&d2).map(|_| c));
    let mut got = Vec::new();
    let mut k = 0;
    while got.len() < data.len() {
        // Alternate small owned buffers and the (small) swap buffer.
        let buf = (k % 2 == 0).then(|| vec![0u8; 100]);
        k += 1;
        tx.read(conn, (), buf).unwrap();
        let d = one(&mut w);
        assert!(d.result.is_ok() && d.size > 0);
        assert!(d.size <= 4096);
        got.extend_from_slice(&d.data);
    }
    assert!(
        got == data,
        "1 MiB through reads of at most 4 KiB, in order"
    );
    drop(writer.join().unwrap().unwrap());
}

#[test]
fn connect_and_drop_storm_beside_live_echo() {
    let _serial = serial();
    raise_fd_limit();
    let l = listener();
    let addr = l.local_addr().unwrap();
    let mut w: Watcher<()> = Watcher::new().unwrap();
    let tx = w.submitter();
    let stop = Arc::new(AtomicBool::new(false));
    // Acceptor: every connection is registered and read, like a server would.
    let acc = {
        let tx = tx.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(s) = s else { continue };
                let conn = tx.register(s).unwrap();
                tx.read(conn, (), None).unwrap();
            }
        })
    };
    // 50 echo clients verifying every byte, and 10,000 connect-and-drop clients.
    let echo = std::thread::spawn(move || {
        let mut cs: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(addr).unwrap()).collect();
        for round in 0..100 {
            for (i, c) in cs.iter_mut().enumerate() {
                let msg = pattern(i * 1000 + round, 200);
                c.write_all(&msg).unwrap();
                let mut back = vec![0u8; 200];
                c.read_exact(&mut back).unwrap();
                assert!(back == msg, "echo client {i} round {round}");
            }
        }
        cs
    });
    let storm = std::thread::spawn(move || {
        for i in 0..10_000 {
            let c = TcpStream::connect(addr).unwrap();
            match i % 3 {
                0 => {}
                1 => {
                    let _ = (&c).write_all(b"x");
                }
                _ => socket2::SockRef::from(&c)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap(),
            }
        }
    });
    let tx2 = w.submitter();
    let end = Instant::now() + PATIENCE;
    let mut storm_done = false;
    let mut echo_clients = None;
    loop {
        assert!(Instant::now() < end, "storm test stuck: {:?}", w.stats());
        for res in w.wait_io_timeout(Duration::from_millis(50)).unwrap() {
            match res.op {
                Op::Read if res.result.is_ok() && res.size > 0 => {
                    tx2.write(res.conn, (), res.data().to_vec()).unwrap();
                }
                Op::Write if res.result.is_ok() => tx2.read(res.conn, (), None).unwrap(),
                _ => tx2.free(res.conn).unwrap(),
            }
        }
        if !storm_done && storm.is_finished() {
            storm_done = true;
        }
        if echo_clients.is_none() && echo.is_finished() {
            echo_clients = Some(());
        }
        // Done when both finished and only the 50 echo connections remain.
        if storm_done && echo_clients.is_some() && w.stats().conns == 50 {
            break;
        }
    }
    storm.join().unwrap();
    let cs = echo.join().unwrap();
    drop(cs);
    stop.store(true, Ordering::Relaxed);
    let _ = TcpStream::connect(addr); // unblock the acceptor
    acc.join().unwrap();
}
