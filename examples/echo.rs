//! The echo server from Go gaio's README, on one watcher.
//!
//! Run: `cargo run --release --example echo [-- --listen 127.0.0.1:7000]`
//! Prints `listening on ADDR` as its first line, then echoes every byte each client
//! sends until the client closes. Try it with `nc 127.0.0.1 PORT`.
//!
//! Options: `--listen ADDR` (default 127.0.0.1:0, an ephemeral port),
//! `--busy-poll MICROS` (spin before parking), `--cpu CORE` (pin the watcher),
//! `--swap BYTES` (swap buffer size, default 64 KiB).
//!
//! Reads land in the watcher's swap buffer and write buffers handed back by
//! completions are reused, so an idle connection holds no buffer and a warm server
//! allocates nothing per message.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use gaio::{Buffer, Op, Watcher};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen = "127.0.0.1:0".to_string();
    let mut builder = Watcher::builder();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = value()?,
            "--busy-poll" => {
                builder = builder.busy_poll(Some(Duration::from_micros(value()?.parse()?)))
            }
            "--cpu" => builder = builder.cpu(value()?.parse()?),
            "--swap" => builder = builder.swap_buffer(value()?.parse()?),
            "-h" | "--help" => {
                println!(
                    "usage: echo [--listen ADDR] [--busy-poll MICROS] [--cpu CORE] [--swap BYTES]"
                );
                return Ok(());
            }
            other => return Err(format!("unknown argument {other} (try --help)").into()),
        }
    }

    let mut w: Watcher<()> = builder.build()?;
    let listener = listener(&listen)?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;

    // Accept on a plain thread and delegate each connection to the watcher.
    let tx = w.submitter();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("accept: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            match tx.register(stream) {
                // The first read, into the swap buffer.
                Ok(conn) => {
                    let _ = tx.read(conn, (), None);
                }
                Err(e) => eprintln!("register: {e}"),
            }
        }
    });

    let tx = w.submitter();
    let mut spare: Vec<Vec<u8>> = Vec::new();
    loop {
        for res in w.wait_io()? {
            match res.op {
                // Send back everything; read again only once the write completed.
                Op::Read if res.result.is_ok() && res.size > 0 => {
                    let mut out = spare.pop().unwrap_or_default();
                    out.extend_from_slice(res.data());
                    tx.write(res.conn, (), out)?;
                }
                Op::Write if res.result.is_ok() => {
                    if let Buffer::Owned(mut v) = res.buffer {
                        v.clear();
                        spare.push(v);
                    }
                    tx.read(res.conn, (), None)?;
                }
                // EOF or an error: close the connection.
                _ => tx.free(res.conn)?,
            }
        }
    }
}

/// A listener with a 4096 backlog: std's 128 overflows when thousands of clients
/// connect at once, and every dropped SYN costs the client a 1 s retransmit.
fn listener(addr: &str) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}
