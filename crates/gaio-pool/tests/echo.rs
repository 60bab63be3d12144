//! 8,192 connections × 1 KiB through a 2-watcher pool, every byte compared.

mod util;

use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use gaio_core::{Op, Requests, Watcher};
use gaio_pool::Pool;
use util::*;

#[test]
fn echo_8k_conns_1kib_through_2_watchers() {
    let _serial = serial();
    raise_fd_limit();
    const N: usize = 8192;
    let (tx, rx) = channel();
    let pool = echo_pool(Pool::builder().watchers(2), tx);
    let addr = pool.listen("127.0.0.1:0").unwrap();
    // The clients run on a watcher of their own.
    let mut w: Watcher<usize> = Watcher::new().unwrap();
    let sub = w.submitter();
    for i in 0..N {
        let conn = w
            .register(std::net::TcpStream::connect(addr).unwrap())
            .unwrap();
        sub.write(conn, i, pattern(i, 1024)).unwrap();
        sub.read_full(conn, i, vec![0; 1024], None).unwrap();
    }
    let end = Instant::now() + PATIENCE;
    let mut reads = 0;
    let mut writes = 0;
    while reads + writes < 2 * N {
        assert!(
            Instant::now() < end,
            "{reads} reads, {writes} writes of {N}"
        );
        for res in w.wait_io_timeout(Duration::from_millis(200)).unwrap() {
            assert!(res.result.is_ok(), "conn {}: {:?}", res.ctx, res.result);
            assert_eq!(res.size, 1024);
            match res.op {
                Op::Write => writes += 1,
                Op::Read => {
                    assert!(
                        res.data() == &pattern(res.ctx, 1024)[..],
                        "conn {} bytes",
                        res.ctx
                    );
                    reads += 1;
                    sub.free(res.conn).unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let per: Vec<u64> = pool.stats().watchers.iter().map(|s| s.accepts).collect();
    assert_eq!(per.iter().sum::<u64>(), N as u64);
    assert!(per.iter().all(|&a| a > 0), "both watchers served: {per:?}");
    drop(rx);
}
