//! `Pool::run` serves until SIGTERM, then shuts down and returns. Alone in its
//! binary: it installs signal handlers for the whole process.

use std::io::{Read, Write};

use gaio_core::{Op, Requests};
use gaio_pool::{Event, Io, Pool};

#[test]
fn run_serves_until_sigterm_then_closes_every_connection() {
    let mut pool: Pool<()> = Pool::builder()
        .watchers(2)
        .pin(false)
        .build(|_| {
            |io: &Io<'_, ()>, ev: Event<'_, ()>| match ev {
                Event::Connected { conn, .. } => drop(io.read(conn, (), None)),
                Event::Completed(res) if res.op == Op::Read && res.size > 0 => {
                    drop(io.write(res.conn, (), res.data().to_vec()));
                    drop(io.read(res.conn, (), None));
                }
                _ => {}
            }
        })
        .unwrap();
    // Before anyone can signal: a signal from here on stops the pool.
    pool.catch_signals().unwrap();
    let addr = pool.listen("127.0.0.1:0").unwrap();
    let client = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(gaio_testkit::PATIENCE)).unwrap();
        c.write_all(b"ping").unwrap();
        let mut got = [0; 4];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        // Served: now the process is told to stop.
        signal_hook::low_level::raise(signal_hook::consts::SIGTERM).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap(); // EOF: the pool closed it
        assert!(rest.is_empty());
    });
    pool.run().unwrap();
    client.join().unwrap();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening"
    );
}
