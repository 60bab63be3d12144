//! Baseline for `cargo xtask bench --instructions`: the raw epoll loop
//! (`raw-epoll.rs`) written on mio instead of libc, to show what a thin portable
//! readiness layer costs per message. Not an example of how to use gaio.
//!
//! Run: `cargo run --release -p gaio-bench --bin bench-mio -- --listen 127.0.0.1:7000`
//! Prints `listening on ADDR`, then echoes until killed. The same semantics as the
//! raw loop: one shared 64 KiB read buffer, edge-triggered, read and send back
//! until drained (WouldBlock, or a short read: on Linux the next data is a new
//! edge), a pending-output Vec per connection only after a short write.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    stream: TcpStream,
    /// Bytes read but not yet written back (only after a short write).
    pending: Vec<u8>,
}

fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:0".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            other => panic!("unknown argument {other}"),
        }
    }
    let std_listener = std::net::TcpListener::bind(&listen)?;
    std_listener.set_nonblocking(true)?;
    // SAFETY: listen on the listening fd `std_listener` owns, alive for the call;
    // Linux takes a new backlog this way: the same 4096 as every server in the bench.
    assert_eq!(unsafe { libc::listen(std_listener.as_raw_fd(), 4096) }, 0);
    let mut listener = TcpListener::from_std(std_listener);
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;

    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    // Indexed by fd, as in the raw loop: a token is the connection's fd.
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in &events {
            if ev.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    let _ = stream.set_nodelay(true);
                    let fd = stream.as_raw_fd() as usize;
                    poll.registry().register(
                        &mut stream,
                        Token(fd),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    if conns.len() <= fd {
                        conns.resize_with(fd + 1, || None);
                    }
                    conns[fd] = Some(Conn {
                        stream,
                        pending: Vec::new(),
                    });
                }
                continue;
            }
            let slot = &mut conns[ev.token().0];
            if let Some(c) = slot {
                if serve(c, &mut buf).is_err() {
                    *slot = None; // closing the fd takes it out of epoll
                }
            }
        }
    }
}

/// Flushes pending output, then echoes until the socket is drained. `Err` means
/// close the connection.
fn serve(c: &mut Conn, buf: &mut [u8]) -> Result<(), ()> {
    if !c.pending.is_empty() {
        match c.stream.write(&c.pending) {
            Ok(w) => drop(c.pending.drain(..w)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(_) => return Err(()),
        }
        if !c.pending.is_empty() {
            return Ok(()); // wait for the next writable edge
        }
    }
    loop {
        let r = match c.stream.read(buf) {
            Ok(0) => return Err(()),
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(_) => return Err(()),
        };
        let w = match c.stream.write(&buf[..r]) {
            Ok(w) => w,
            Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
            Err(_) => return Err(()),
        };
        if w < r {
            c.pending.extend_from_slice(&buf[w..r]);
            return Ok(());
        }
        if r < buf.len() {
            return Ok(()); // short read: drained (Linux), the next data is a new edge
        }
    }
}
