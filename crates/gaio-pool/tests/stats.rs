//! Pool figures: current once a watcher goes idle, and a pool of no watchers refused.

mod util;

use std::net::TcpStream;
use std::sync::mpsc::channel;
use std::time::Instant;

use gaio_pool::Pool;
use util::*;

/// Regression: with 200 connections open echo-pool printed `live 100 … pending
/// r/w 99/0`. The figures were published before the handler's own submissions were
/// taken in, and an idle watcher never refreshed them.
#[test]
fn pending_reads_are_current_once_watchers_go_idle() {
    let _serial = serial();
    const N: usize = 200;
    let (tx, rx) = channel();
    let pool = echo_pool(Pool::builder().watchers(2).pin(false), tx);
    let addr = pool.listen("127.0.0.1:0").unwrap();
    let clients: Vec<TcpStream> = (0..N).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // Every handler has submitted its connection's first read.
    wait_notes(&rx, N, |n| matches!(n, Note::Connected { .. }));
    let end = Instant::now() + PATIENCE;
    loop {
        let st = pool.stats().watchers;
        let live: usize = st.iter().map(|s| s.conns).sum();
        let reads: usize = st.iter().map(|s| s.pending_reads).sum();
        if live == N && reads == N {
            break;
        }
        assert!(
            Instant::now() < end,
            "live {live}, pending reads {reads}, want {N} each: {st:?}"
        );
        std::thread::yield_now();
    }
    drop(clients);
    pool.shutdown(PATIENCE);
}

#[test]
fn zero_watchers_is_an_error_at_build() {
    let _serial = serial();
    let err = Pool::builder()
        .watchers(0)
        .build(|_| |_: &gaio_pool::Io<()>, _: gaio_pool::Event<'_, ()>| {})
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("at least one watcher"), "{err}");
}
