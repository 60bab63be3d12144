//! Write flow control: writability at the watermarks, `writable` requests,
//! reads paused while a peer does not read, per-connection flows.

mod util;

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use gaio_core::{Error, Flow, Op, Requests, Watcher};
use util::*;

/// Kernel buffers of `bytes` on both sides of a pair, so a peer that does not
/// read backs the writes up soon.
fn small_buffers(client: &std::net::TcpStream, server: &std::net::TcpStream, bytes: usize) {
    socket2::SockRef::from(client)
        .set_recv_buffer_size(bytes)
        .unwrap();
    socket2::SockRef::from(server)
        .set_send_buffer_size(bytes)
        .unwrap();
}

fn watcher_with(flow: Flow) -> Watcher<u32> {
    Watcher::builder().flow(flow).build().unwrap()
}

#[test]
fn writability_turns_at_the_watermarks_and_writable_completes_at_low() {
    let _serial = serial();
    let (mut client, server) = tcp_pair();
    // Small kernel buffers: the peer's and the server's hold little of 1 MiB.
    small_buffers(&client, &server, 16 << 10);
    let mut w = watcher_with(Flow::new(4096, 16384));
    let conn = w.register(server).unwrap();
    let io = w.local();
    assert!(io.is_writable(conn));
    let msg = pattern(1, 1 << 20);
    for chunk in msg.chunks(64 << 10) {
        io.write(conn, 1, chunk.to_vec()).unwrap();
    }
    assert!(!io.is_writable(conn), "1 MiB queued is above 16 KiB");
    assert_eq!(w.stats().unwritable_conns, 1);
    io.writable(conn, 2).unwrap();
    // The peer reads nothing yet: the kernel takes what fits, the rest stays
    // queued, and the connection stays unwritable.
    let mut done = Vec::new();
    for _ in 0..5 {
        done.extend(
            w.wait_io_timeout(Duration::from_millis(20))
                .unwrap()
                .map(|c| (c.op, c.ctx)),
        );
    }
    assert!(
        !done.iter().any(|d| d.1 == 2),
        "writable completed early: {done:?}"
    );
    assert!(w.local().queued(conn) > 4096);
    let reader = std::thread::spawn(move || {
        let mut got = vec![0; 1 << 20];
        client.read_exact(&mut got).unwrap();
        got
    });
    let want = 16 + 1 - done.len();
    let rest = collect(&mut w, want);
    let writable: Vec<_> = rest.iter().filter(|d| d.op == Op::Writable).collect();
    assert_eq!(writable.len(), 1);
    assert!(writable[0].result.is_ok() && writable[0].ctx == 2);
    assert!(
        rest.iter()
            .filter(|d| d.op == Op::Write)
            .all(|d| d.result.is_ok())
    );
    assert!(w.local().is_writable(conn));
    assert_eq!(w.stats().unwritable_conns, 0);
    assert!(reader.join().unwrap() == msg, "bytes differ");
}

#[test]
fn writable_completes_at_once_when_writable_and_closed_on_free() {
    let _serial = serial();
    let (_client, server) = tcp_pair();
    let mut w = watcher_with(Flow::new(0, 100));
    let conn = w.register(server).unwrap();
    w.local().writable(conn, 1).unwrap();
    let d = one(&mut w);
    assert_eq!((d.op, d.ctx), (Op::Writable, 1));
    assert!(d.result.is_ok());
    // Above the high watermark with a peer that never reads: the waiter ends
    // with the connection.
    fill_past_watermarks(&mut w, conn);
    w.local().writable(conn, 2).unwrap();
    w.local().writable(conn, 3).unwrap();
    w.local().free(conn).unwrap();
    let mut got: Vec<_> = collect(&mut w, 3)
        .into_iter()
        .map(|d| (d.op, d.ctx, matches!(d.result, Err(Error::ConnClosed))))
        .collect();
    got.sort_by_key(|g| g.1);
    assert_eq!(
        got,
        [
            (Op::Write, 1, true),
            (Op::Writable, 2, true),
            (Op::Writable, 3, true)
        ]
    );
    assert_eq!(w.stats().unwritable_conns, 0);
    // A stale `Conn`: ConnClosed too.
    w.local().writable(conn, 4).unwrap();
    assert!(matches!(one(&mut w).result, Err(Error::ConnClosed)));
    assert!(matches!(
        w.local().set_flow(conn, Flow::DEFAULT),
        Err(Error::ConnClosed)
    ));
    assert!(!w.local().is_writable(conn));
}

/// Fills `conn`'s queue far past any watermark with one write of 8 MiB (the
/// peer does not read).
fn fill_past_watermarks(w: &mut Watcher<u32>, conn: gaio_core::Conn) {
    w.local().write(conn, 1, vec![7; 8 << 20]).unwrap();
    assert!(!w.local().is_writable(conn));
}

#[test]
fn set_flow_judges_what_is_queued_now() {
    let _serial = serial();
    let (_client, server) = tcp_pair();
    let mut w = watcher_with(Flow::DEFAULT);
    let conn = w.register(server).unwrap();
    let io = w.local();
    io.write(conn, 1, vec![0; 1000]).unwrap();
    assert!(io.is_writable(conn));
    io.set_flow(conn, Flow::new(10, 100)).unwrap();
    assert!(!io.is_writable(conn), "1,000 queued is above a high of 100");
    io.writable(conn, 2).unwrap();
    io.set_flow(conn, Flow::new(1000, 2000)).unwrap();
    assert!(io.is_writable(conn), "1,000 queued is at a low of 1,000");
    let mut ops: Vec<_> = collect(&mut w, 2)
        .into_iter()
        .map(|d| (d.op, d.ctx))
        .collect();
    ops.sort_by_key(|o| o.1);
    assert_eq!(ops, [(Op::Write, 1), (Op::Writable, 2)]);
}

/// A server that always keeps a read pending and echoes each read without
/// waiting for the write: with paused reads, a peer that sends without
/// reading stops being read, the server queues at most the high watermark
/// plus one read, and every byte arrives once the peer reads.
#[test]
fn paused_reads_push_back_on_a_peer_that_does_not_read() {
    let _serial = serial();
    const HIGH: usize = 32 << 10;
    const TOTAL: usize = 8 << 20;
    let (client, server) = tcp_pair();
    // Small kernel buffers, so the peer gets ahead of the server quickly.
    small_buffers(&client, &server, 64 << 10);
    let mut w: Watcher<u32> = Watcher::builder()
        .flow(Flow::new(HIGH / 4, HIGH).pause_reads(true))
        .swap_buffer(64 << 10)
        .build()
        .unwrap();
    let conn = w.register(server).unwrap();
    w.local().read(conn, 0, None).unwrap();
    let msg = pattern(3, TOTAL);
    let mut writer = client.try_clone().unwrap();
    let sent = msg.clone();
    let writer = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    let (go, start_reading) = mpsc::channel::<()>();
    let mut reader = client;
    let reader = std::thread::spawn(move || {
        start_reading.recv().unwrap();
        let mut got = vec![0; TOTAL];
        reader.read_exact(&mut got).unwrap();
        got
    });
    let (mut echoed, mut most) = (0, 0);
    let mut paused_turns = 0;
    let mut go = Some(go);
    let end = std::time::Instant::now() + PATIENCE;
    while echoed < TOTAL {
        assert!(
            std::time::Instant::now() < end,
            "echoed {echoed} of {TOTAL}"
        );
        let was_paused = !w.local().is_writable(conn);
        let batch = w.wait_io_timeout(Duration::from_millis(20)).unwrap();
        let io = batch.local();
        let mut reads = 0;
        for res in batch {
            match res.op {
                Op::Read => {
                    assert!(res.result.is_ok() && res.size > 0, "{:?}", res.result);
                    reads += 1;
                    echoed += res.size;
                    io.write(conn, 1, res.data().to_vec()).unwrap();
                    io.read(conn, 0, None).unwrap();
                }
                Op::Write => res.result.unwrap(),
                other => panic!("unexpected {other:?}"),
            }
        }
        if was_paused && reads == 0 && !w.local().is_writable(conn) {
            paused_turns += 1; // unwritable all turn: nothing read
        }
        most = most.max(w.local().queued(conn));
        assert!(most <= HIGH + (64 << 10), "queued {most} bytes");
        // Some turns with the peer stuck, then it starts reading.
        if paused_turns >= 5 {
            if let Some(go) = go.take() {
                go.send(()).unwrap();
            }
        }
    }
    writer.join().unwrap();
    assert!(paused_turns >= 5, "the peer never got ahead of the server");
    // The last replies go out.
    while w.stats().queued_write_bytes > 0 {
        assert!(std::time::Instant::now() < end, "replies stuck");
        for res in w.wait_io_timeout(Duration::from_millis(20)).unwrap() {
            res.result.unwrap();
        }
    }
    let got = reader.join().unwrap();
    assert!(got == msg, "echoed bytes differ");
    assert_eq!(w.stats().queued_write_bytes, 0);
}

/// A queued write whose deadline passes can make the connection writable
/// again: reads paused meanwhile must go on without another event.
#[test]
fn an_expired_write_that_ends_the_backlog_resumes_paused_reads() {
    let _serial = serial();
    let (mut client, server) = tcp_pair();
    small_buffers(&client, &server, 16 << 10);
    let mut w = watcher_with(Flow::new(1 << 20, (1 << 20) + 1).pause_reads(true));
    let conn = w.register(server).unwrap();
    let io = w.local();
    io.read(conn, 1, None).unwrap();
    io.write(conn, 2, vec![0; 512 << 10]).unwrap(); // under the low watermark
    let soon = std::time::Instant::now() + Duration::from_millis(100);
    io.write_deadline(conn, 3, vec![0; 8 << 20], soon).unwrap();
    assert!(!io.is_writable(conn));
    client.write_all(b"!").unwrap(); // readable, but reads are paused
    let mut read = None;
    let mut expired = false;
    let end = std::time::Instant::now() + PATIENCE;
    while read.is_none() {
        assert!(
            std::time::Instant::now() < end,
            "the paused read never went on"
        );
        for res in w.wait_io_timeout(Duration::from_millis(50)).unwrap() {
            match res.ctx {
                1 => {
                    assert!(expired, "a read completed while reads were paused");
                    read = Some(res.data().to_vec());
                }
                3 => {
                    assert!(matches!(res.result, Err(Error::Deadline)));
                    expired = true;
                }
                _ => {}
            }
        }
    }
    assert_eq!(read.unwrap(), b"!");
    w.local().free(conn).unwrap();
    collect(&mut w, 1); // the first write ends with the connection
}
