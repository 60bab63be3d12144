//! Memory: no heap allocation per request or completion once warm, and an idle
//! connection with a pending swap read costs at most 128 bytes of heap.
//!
//! A counting global allocator counts only on threads that opt in, so the client
//! threads and the test harness do not disturb the figures.

mod util;

use std::io::{Read, Write};
use std::time::Duration;

use gaio_core::{Buffer, Op, Requests, Watcher};
use gaio_testkit::{CountingAlloc, allocations, count_allocations as count_here, live_bytes};
use util::*;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

#[test]
fn echo_steady_state_allocates_nothing() {
    let _serial = serial();
    const WARM: usize = 1_000;
    const COUNTED: usize = 10_000;
    let (mut c, s) = tcp_pair();
    s.set_nodelay(true).unwrap();
    let client = std::thread::spawn(move || {
        let mut buf = [0u8; 128];
        for i in 0..WARM + COUNTED {
            let msg = pattern(i, 128);
            c.write_all(&msg).unwrap();
            c.read_exact(&mut buf).unwrap();
            assert!(buf[..] == msg[..], "round trip {i} echoed wrong bytes");
        }
    });

    let mut w: Watcher<u32> = Watcher::new().unwrap();
    let tx = w.submitter();
    let conn = w.register(s).unwrap();
    tx.read(conn, 0, None).unwrap();
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut trips = 0;
    let mut allocs_at_start = 0;
    while trips < WARM + COUNTED {
        if trips == WARM {
            allocs_at_start = allocations();
            count_here(true);
        }
        let batch = w.wait_io_timeout(PATIENCE).unwrap();
        // The hot path: requests from the completion loop go straight to their
        // connection's queue.
        let io = batch.local();
        for res in batch {
            assert!(res.result.is_ok(), "{:?}", res.result);
            match res.op {
                Op::Read => {
                    assert!(res.size > 0, "client closed early");
                    let mut out = spare.pop().unwrap_or_default();
                    out.extend_from_slice(res.data());
                    io.write(res.conn, 1, out).unwrap();
                }
                Op::Write => {
                    if let Buffer::Owned(mut v) = res.buffer {
                        v.clear();
                        spare.push(v);
                    }
                    // A message is 128 bytes; count a round trip per 128 written.
                    trips += res.size / 128;
                    io.read(res.conn, 0, None).unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    count_here(false);
    let allocs = allocations() - allocs_at_start;
    client.join().unwrap();
    assert_eq!(
        allocs, 0,
        "{allocs} heap allocations in {COUNTED} echo round trips"
    );
}

#[test]
fn idle_connection_with_pending_swap_read_costs_at_most_128_bytes() {
    let _serial = serial();
    raise_fd_limit();
    const N: usize = 4096;
    let pairs = tcp_pairs(N);
    let (clients, servers): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
    // A usize ctx: what a server would keep to find its session.
    let mut w: Watcher<usize> = Watcher::new().unwrap();
    let tx = w.submitter();
    let _ = w.wait_io_timeout(Duration::ZERO).unwrap().count();

    count_here(true);
    let before = live_bytes();
    for (i, s) in servers.into_iter().enumerate() {
        let conn = w.register(s).unwrap();
        tx.read(conn, i, None).unwrap();
    }
    // Let the reads start (each finds nothing and parks on readiness), then let the
    // burst's command buffers shrink back.
    for _ in 0..200 {
        assert_eq!(w.wait_io_timeout(Duration::ZERO).unwrap().count(), 0);
    }
    let per_conn = (live_bytes() - before) as f64 / N as f64;
    count_here(false);
    assert_eq!(w.stats().pending_reads, N);
    println!("heap per idle connection with a pending swap read: {per_conn:.1} B");
    assert!(per_conn <= 128.0, "{per_conn:.1} B per idle connection");
    drop(clients);
}

/// A peer that never reads while we write 64 MiB: the write stays pending, the
/// watcher's memory does not grow with it (the bytes stay in the caller's buffer),
/// and write_deadline fires.
#[test]
fn pending_64mib_write_to_a_peer_that_never_reads_costs_no_memory() {
    let _serial = serial();
    let (_peer, s) = tcp_pair();
    let mut w: Watcher<()> = Watcher::new().unwrap();
    let tx = w.submitter();
    let conn = w.register(s).unwrap();
    let big = vec![1u8; 64 << 20];
    let _ = w.wait_io_timeout(Duration::ZERO).unwrap().count();
    count_here(true);
    let before = live_bytes();
    let deadline = std::time::Instant::now() + Duration::from_millis(300);
    tx.write_deadline(conn, (), big, deadline).unwrap();
    let mut grew = 0;
    let mut result = None;
    while result.is_none() {
        for res in w.wait_io_timeout(PATIENCE).unwrap() {
            result = Some((res.result.map_err(|e| e.is_deadline()), res.size));
        }
        grew = grew.max(live_bytes() - before);
    }
    count_here(false);
    let (r, size) = result.unwrap();
    assert_eq!(r, Err(true), "write_deadline fired");
    assert!(size > 0 && size < 64 << 20);
    assert!(
        grew < 64 * 1024,
        "the watcher's heap grew by {grew} B during a pending 64 MiB write"
    );
}
