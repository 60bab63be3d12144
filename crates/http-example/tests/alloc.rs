//! No allocation per request once warm: the server runs in this process on a
//! pool whose watcher threads count their allocations; the clients' threads
//! and the harness are not counted.

use std::io::{Read, Write};
use std::net::TcpStream;

use gaio::pool::{Event, Io, Pool};
use gaio_http_example::{Config, Ctx, Server};
use gaio_testkit::{CountingAlloc, allocations, count_allocations};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// `rounds` keep-alive request/response round trips on each of `conns`.
fn round_trips(conns: &mut [TcpStream], rounds: usize, path: &str, want: &[u8]) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = vec![0; 4096];
    for _ in 0..rounds {
        for c in conns.iter_mut() {
            c.write_all(req.as_bytes()).unwrap();
        }
        for c in conns.iter_mut() {
            let mut got = 0;
            // The response ends with the body; read until it is there.
            while !buf[..got].ends_with(want) {
                let n = c.read(&mut buf[got..]).unwrap();
                assert!(n > 0, "closed");
                got += n;
            }
        }
    }
}

#[test]
fn no_allocation_per_request_once_warm() {
    let pool: Pool<Ctx> = Pool::builder()
        .watchers(2)
        .pin(false)
        .build(|_| {
            let mut server = Server::new(Config::default());
            move |io: &Io<'_, Ctx>, ev: Event<'_, Ctx>| {
                if let Event::Started = ev {
                    count_allocations(true);
                }
                server.handle(io, ev);
            }
        })
        .unwrap();
    let addr = pool.listen("127.0.0.1:0").unwrap();
    let mut conns: Vec<TcpStream> = (0..50)
        .map(|_| {
            let c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(gaio_testkit::PATIENCE)).unwrap();
            c.set_nodelay(true).unwrap();
            c
        })
        .collect();
    // Warm up: sessions, buffers, the batch vectors.
    round_trips(&mut conns, 50, "/plaintext", b"Hello, World!");
    round_trips(&mut conns, 50, "/json", b"\"Hello, World!\"}");
    let before = allocations();
    round_trips(&mut conns, 200, "/plaintext", b"Hello, World!");
    round_trips(&mut conns, 200, "/json", b"\"Hello, World!\"}");
    let per_request = (allocations() - before) as f64 / (2.0 * 200.0 * 50.0);
    assert!(
        per_request < 0.01,
        "{per_request:.3} allocations per request once warm"
    );
    drop(conns);
    pool.shutdown(std::time::Duration::from_secs(1));
}
