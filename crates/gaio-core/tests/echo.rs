//! Echo scenarios from Go gaio's aio_test.go: tiny, huge, bidirectional, many
//! parallel connections with every byte verified, cross-thread submission.

mod util;

use std::io::{Read, Write};
use std::time::Duration;

use gaio_core::{Op, Requests, Watcher};
use util::*;

#[test]
fn echo_tiny() {
    let _serial = serial();
    let (mut c, s) = tcp_pair();
    let server = spawn_echo(vec![s], ReadMode::Swap);
    c.write_all(b"hello").unwrap();
    let mut got = [0u8; 5];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    drop(c);
    assert_eq!(server.join().unwrap(), 5);
}

#[test]
fn echo_huge_16mib_through_one_conn() {
    let _serial = serial();
    let (c, s) = tcp_pair();
    let server = spawn_echo(vec![s], ReadMode::Owned(64 * 1024));
    let data = pattern(16, 16 << 20);
    let mut w: Watcher<()> = Watcher::new().unwrap();
    let tx = w.submitter();
    let conn = w.register(c).unwrap();
    tx.write(conn, (), data.clone()).unwrap();
    tx.read_full(conn, (), vec![0; data.len()], None).unwrap();
    let done = collect(&mut w, 2);
    for d in &done {
        assert!(d.result.is_ok(), "{:?}", d.result);
        assert_eq!(d.size, data.len());
    }
    let read = done.iter().find(|d| d.op == Op::Read).unwrap();
    assert!(read.data == data, "16 MiB echoed intact");
    w.free(conn).unwrap();
    assert_eq!(server.join().unwrap(), data.len());
}

#[test]
fn bidirectional_both_ends_on_one_watcher() {
    let _serial = serial();
    let (c, s) = tcp_pair();
    let mut w: Watcher<&'static str> = Watcher::new().unwrap();
    let tx = w.submitter();
    let a = w.register(c).unwrap();
    let b = w.register(s).unwrap();
    tx.read(b, "b-read", None).unwrap();
    tx.read(a, "a-read", Some(vec![0; 64])).unwrap();
    tx.write(a, "a-write", b"ping".to_vec()).unwrap();
    tx.write(b, "b-write", b"pong".to_vec()).unwrap();
    let done = collect(&mut w, 4);
    let by = |ctx| done.iter().find(|d| d.ctx == ctx).unwrap();
    assert_eq!(by("b-read").data, b"ping");
    assert_eq!(by("a-read").data, b"pong");
    assert_eq!(by("a-write").size, 4);
    assert_eq!(by("b-write").size, 4);
}

/// `n` clients each send `size` bytes and read them back through a client-side
/// watcher; the server echoes with `mode`. Every byte is compared.
fn parallel_echo(n: usize, size: usize, mode: ReadMode) {
    raise_fd_limit();
    let start_fds = fd_count();
    let pairs = tcp_pairs(n);
    let (clients, servers): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
    let server = spawn_echo(servers, mode);
    let mut w: Watcher<usize> = Watcher::new().unwrap();
    let tx = w.submitter();
    let conns: Vec<_> = clients
        .into_iter()
        .map(|c| w.register(c).unwrap())
        .collect();
    for (i, &conn) in conns.iter().enumerate() {
        tx.write(conn, i, pattern(i, size)).unwrap();
        tx.read_full(conn, i, vec![0; size], None).unwrap();
    }
    let done = collect(&mut w, 2 * n);
    let mut reads = 0;
    for d in &done {
        assert!(d.result.is_ok(), "conn {}: {:?}", d.ctx, d.result);
        assert_eq!(d.size, size);
        if d.op == Op::Read {
            reads += 1;
            assert!(
                d.data == pattern(d.ctx, size),
                "conn {} echoed wrong bytes",
                d.ctx
            );
        }
    }
    assert_eq!(reads, n);
    for conn in conns {
        w.free(conn).unwrap();
    }
    let _ = w.wait_io_timeout(Duration::ZERO).unwrap().count();
    assert_eq!(server.join().unwrap(), n * size);
    drop(w);
    assert_fds_back_to(start_fds);
}

#[test]
fn parallel_1k_conns_1kib() {
    let _serial = serial();
    parallel_echo(1024, 1024, ReadMode::Swap);
}

#[test]
fn parallel_2k_conns_1kib() {
    let _serial = serial();
    parallel_echo(2048, 1024, ReadMode::Owned(1024));
}

#[test]
fn parallel_4k_conns_1kib() {
    let _serial = serial();
    parallel_echo(4096, 1024, ReadMode::Swap);
}

#[test]
fn parallel_8k_conns_1kib() {
    let _serial = serial();
    parallel_echo(8192, 1024, ReadMode::Owned(512));
}

#[test]
fn parallel_1k_2k_4k_conns_16b() {
    let _serial = serial();
    for n in [1024, 2048, 4096] {
        parallel_echo(n, 16, ReadMode::Swap);
    }
}

#[test]
fn parallel_8k_random_mix_of_swap_and_owned() {
    let _serial = serial();
    parallel_echo(8192, 1024, ReadMode::Mixed);
}

#[test]
fn parallel_8k_all_swap_buffer() {
    let _serial = serial();
    parallel_echo(8192, 1024, ReadMode::Swap);
}

#[test]
fn cross_thread_submission_from_4_threads() {
    let _serial = serial();
    let pairs = tcp_pairs(64);
    let (clients, servers): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
    let server = spawn_echo(servers, ReadMode::Swap);
    let mut w: Watcher<usize> = Watcher::new().unwrap();
    // Each thread registers its own 16 connections and submits on them while the
    // watcher is parked in another thread's wait.
    let mut clients = clients.into_iter();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let tx = w.submitter();
            let mine: Vec<_> = clients.by_ref().take(16).collect();
            std::thread::spawn(move || {
                for (k, c) in mine.into_iter().enumerate() {
                    let id = t * 16 + k;
                    let conn = tx.register(c).unwrap();
                    for part in 0..4 {
                        tx.write(conn, id, pattern(id * 4 + part, 100)).unwrap();
                    }
                    tx.read_full(conn, id, vec![0; 400], None).unwrap();
                }
            })
        })
        .collect();
    let done = collect(&mut w, 64 * 5);
    for t in threads {
        t.join().unwrap();
    }
    let mut conns = Vec::new();
    for d in done.iter().filter(|d| d.op == Op::Read) {
        let want: Vec<u8> = (0..4).flat_map(|p| pattern(d.ctx * 4 + p, 100)).collect();
        assert!(
            d.data == want,
            "conn {}: writes from its thread arrived out of order",
            d.ctx
        );
        conns.push(d.conn);
    }
    assert_eq!(conns.len(), 64);
    assert_eq!(
        done.iter()
            .filter(|d| d.op == Op::Write && d.result.is_ok())
            .count(),
        256
    );
    for c in conns {
        w.free(c).unwrap();
    }
    assert_eq!(server.join().unwrap(), 64 * 400);
}
