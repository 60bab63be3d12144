//! Criterion micro benchmarks of the Watcher, each beside a baseline doing the
//! same I/O with plain std calls, so the figure that matters is the ratio.
//!
//! Run: `cargo bench -p gaio-bench` (or `cargo bench -p gaio-bench -- ready_fd` for
//! one group).
#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gaio::{Conn, Requests, Submitter, Watcher};

fn tcp_pair() -> (TcpStream, TcpStream) {
    let (c, s) = gaio_testkit::tcp_pair();
    c.set_nodelay(true).unwrap();
    s.set_nodelay(true).unwrap();
    (c, s)
}

/// One request on a socket that is already readable (or writable): the cost of
/// submit + wait_io + completion, against the same syscalls made directly.
fn ready_fd(c: &mut Criterion) {
    let mut g = c.benchmark_group("ready_fd");
    let msg = [7u8; 16];

    let (mut peer, s) = tcp_pair();
    let mut w: Watcher<()> = Watcher::new().unwrap();
    let tx = w.submitter();
    let conn = w.register(s).unwrap();
    let mut buf = Some(vec![0u8; 16]);
    g.bench_function("gaio read, owned buffer", |b| {
        b.iter(|| {
            peer.write_all(&msg).unwrap();
            tx.read(conn, (), buf.take()).unwrap();
            let res = w.wait_io().unwrap().next().unwrap();
            assert_eq!(res.size, 16);
            buf = res.into_vec();
        })
    });
    g.bench_function("gaio read, swap buffer", |b| {
        b.iter(|| {
            peer.write_all(&msg).unwrap();
            tx.read(conn, (), None).unwrap();
            let res = w.wait_io().unwrap().next().unwrap();
            black_box(res.data());
        })
    });
    let mut out = Some(vec![9u8; 16]);
    let mut sink = [0u8; 16];
    g.bench_function("gaio write + peer read", |b| {
        b.iter(|| {
            tx.write(conn, (), out.take().unwrap()).unwrap();
            let res = w.wait_io().unwrap().next().unwrap();
            out = res.into_vec();
            peer.read_exact(&mut sink).unwrap();
        })
    });

    let (mut peer, mut s) = tcp_pair();
    s.set_nonblocking(true).unwrap();
    let mut rbuf = [0u8; 16];
    g.bench_function("baseline: std read", |b| {
        b.iter(|| {
            peer.write_all(&msg).unwrap();
            assert_eq!(s.read(&mut rbuf).unwrap(), 16);
        })
    });
    g.bench_function("baseline: std write + peer read", |b| {
        b.iter(|| {
            s.write_all(&msg).unwrap();
            peer.read_exact(&mut sink).unwrap();
        })
    });
    g.finish();
}

/// A blocking echo thread at the far end; the bench thread sends 64 KiB and reads
/// it back, through a watcher or through std.
fn echo_64k(c: &mut Criterion) {
    let mut g = c.benchmark_group("echo_64k");
    g.throughput(Throughput::Bytes(64 * 1024));
    let spawn_echo = |mut s: TcpStream| {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        })
    };

    let (c1, s1) = tcp_pair();
    let echo1 = spawn_echo(s1);
    let mut w: Watcher<()> = Watcher::new().unwrap();
    let tx = w.submitter();
    let conn = w.register(c1).unwrap();
    let mut wbuf = Some(vec![5u8; 64 * 1024]);
    let mut rbuf = Some(vec![0u8; 64 * 1024]);
    g.bench_function("gaio write + read_full", |b| {
        b.iter(|| {
            tx.write(conn, (), wbuf.take().unwrap()).unwrap();
            tx.read_full(conn, (), rbuf.take().unwrap(), None).unwrap();
            while wbuf.is_none() || rbuf.is_none() {
                for res in w.wait_io().unwrap() {
                    assert!(res.result.is_ok());
                    let v = res.into_vec();
                    if wbuf.is_none() {
                        wbuf = v;
                    } else {
                        rbuf = v;
                    }
                }
            }
        })
    });
    w.free(conn).unwrap();
    drop(w);
    echo1.join().unwrap();

    let (mut c2, s2) = tcp_pair();
    let echo2 = spawn_echo(s2);
    let out = vec![5u8; 64 * 1024];
    let mut back = vec![0u8; 64 * 1024];
    // The writer thread is needed: 64 KiB may not fit the socket buffers at once.
    g.bench_function("baseline: std write_all + read_exact (2 threads)", |b| {
        b.iter(|| {
            std::thread::scope(|sc| {
                let mut wr = c2.try_clone().unwrap();
                let out = &out;
                sc.spawn(move || wr.write_all(out).unwrap());
                c2.read_exact(&mut back).unwrap();
            })
        })
    });
    drop(c2);
    echo2.join().unwrap();
    g.finish();
}

fn submit_timeouts(tx: &Submitter<u32>, conn: Conn, n: u32, at: Instant) {
    for i in 0..n {
        tx.read_deadline(conn, i, None, at).unwrap();
    }
}

/// 10,000 deadlines: armed then cancelled (the connection is freed), and armed
/// then expired.
fn deadlines(c: &mut Criterion) {
    let mut g = c.benchmark_group("deadlines_10k");
    g.throughput(Throughput::Elements(10_000));
    let mut w: Watcher<u32> = Watcher::new().unwrap();
    let tx = w.submitter();
    let mut peers = Vec::new();
    g.bench_function("arm + cancel by free", |b| {
        b.iter(|| {
            let (p, s) = tcp_pair();
            peers.push(p);
            let conn = w.register(s).unwrap();
            submit_timeouts(
                &tx,
                conn,
                10_000,
                Instant::now() + Duration::from_secs(3600),
            );
            assert_eq!(w.wait_io_timeout(Duration::ZERO).unwrap().count(), 0);
            w.free(conn).unwrap();
            assert_eq!(w.wait_io().unwrap().count(), 10_000);
        })
    });
    g.bench_function("arm + expire (deadlines 200 µs ahead)", |b| {
        b.iter(|| {
            let (p, s) = tcp_pair();
            peers.push(p);
            let conn = w.register(s).unwrap();
            submit_timeouts(
                &tx,
                conn,
                10_000,
                Instant::now() + Duration::from_micros(200),
            );
            let mut n = 0;
            while n < 10_000 {
                n += w.wait_io().unwrap().count();
            }
            w.free(conn).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, ready_fd, echo_64k, deadlines);
criterion_main!(benches);
