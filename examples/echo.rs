//! The echo server from Go gaio's README, on one watcher.
//!
//! Run: `cargo run --release --example echo [-- --listen 127.0.0.1:7000]`
//! Prints `listening on ADDR` as its first line, then echoes every byte each client
//! sends until the client closes. Try it with `nc 127.0.0.1 PORT`.
//!
//! Options: `--listen ADDR` (default 127.0.0.1:0, an ephemeral port),
//! `--busy-poll MICROS` (spin before parking), `--cpu CORE` (pin the watcher),
//! `--swap BYTES` (swap buffer size, default 64 KiB), `--owned BYTES` (read into a
//! buffer of its own per connection and write it back: no copy).
//!
//! Reads land in the watcher's swap buffer and write buffers handed back by
//! completions are reused, so an idle connection holds no buffer and a warm server
//! allocates nothing per message.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use gaio::{Buffer, Error, Op, Watcher};

const USAGE: &str = "\
usage: echo [--listen ADDR] [--busy-poll MICROS] [--cpu CORE] [--swap BYTES] [--owned BYTES]

  --listen ADDR       address to listen on (default 127.0.0.1:0, an ephemeral port)
  --busy-poll MICROS  spin this long before parking in the poller (default 0: off)
  --cpu CORE          pin the watcher's thread to this core
  --swap BYTES        swap buffer size (default 65536)
  --owned BYTES       read into a per-connection buffer of BYTES and write that same
                      buffer back (no copy), instead of reading into the swap buffer
                      and copying into a recycled write buffer
";

fn main() {
    let mut cli = common::Cli::new("echo", USAGE);
    let mut listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut builder = Watcher::builder();
    let mut cpu = None;
    let mut owned = None;
    while let Some(flag) = cli.next_flag() {
        match flag.as_str() {
            "--listen" => listen = cli.addr(&flag),
            "--busy-poll" => {
                let us = cli.natural(&flag);
                builder = builder.busy_poll((us > 0).then(|| Duration::from_micros(us)));
            }
            "--cpu" => {
                let core = cli.natural(&flag) as usize;
                cpu = Some(core);
                builder = builder.cpu(core);
            }
            "--swap" => builder = builder.swap_buffer(cli.count(&flag)),
            "--owned" => owned = Some(cli.count(&flag)),
            other => cli.unknown(other),
        }
    }

    let mut w: Watcher<()> = match builder.build() {
        Ok(w) => w,
        Err(Error::InvalidCpu(_)) => cli.usage_error(format!(
            "--cpu {}: not a core this process may run on",
            cpu.unwrap_or_default()
        )),
        Err(e) => cli.fail(format!(
            "cannot start the watcher: {}",
            common::gaio_reason(&e)
        )),
    };
    let listener = listener(listen)
        .unwrap_or_else(|e| cli.fail(format!("cannot listen on {listen}: {}", common::reason(&e))));
    let local = listener
        .local_addr()
        .expect("a bound listener has an address");
    println!("listening on {local}");
    let _ = std::io::stdout().flush();

    // Accept on a plain thread and delegate each connection to the watcher.
    let tx = w.submitter();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("echo: accept: {}", common::reason(&e));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            match tx.register(stream) {
                // The first read: into the swap buffer, or a buffer of its own.
                Ok(conn) => {
                    let _ = tx.read(conn, (), owned.map(|n| vec![0; n]));
                }
                Err(e) => eprintln!("echo: register: {}", common::gaio_reason(&e)),
            }
        }
    });

    let served = match owned {
        None => serve_swap(&mut w),
        Some(size) => serve_owned(&mut w, size),
    };
    if let Err(e) = served {
        cli.fail(common::gaio_reason(&e));
    }
}

/// Swap-buffer reads (no buffer per idle connection), each copied into a
/// recycled write buffer.
fn serve_swap(w: &mut Watcher<()>) -> gaio::Result<()> {
    let mut spare: Vec<Vec<u8>> = Vec::new();
    loop {
        let batch = w.wait_io()?;
        // Requests from the completion loop take the hot path.
        let io = batch.local();
        for res in batch {
            match res.op {
                // Send back everything; read again only once the write completed.
                Op::Read if res.result.is_ok() && res.size > 0 => {
                    let mut out = spare.pop().unwrap_or_default();
                    out.extend_from_slice(res.data());
                    io.write(res.conn, (), out)?;
                }
                Op::Write if res.result.is_ok() => {
                    if let Buffer::Owned(mut v) = res.buffer {
                        v.clear();
                        spare.push(v);
                    }
                    io.read(res.conn, (), None)?;
                }
                // EOF or an error: close the connection.
                _ => io.free(res.conn)?,
            }
        }
    }
}

/// Reads into a buffer of `size` per connection and writes that same buffer
/// back: no copy.
fn serve_owned(w: &mut Watcher<()>, size: usize) -> gaio::Result<()> {
    loop {
        let batch = w.wait_io()?;
        let io = batch.local();
        for res in batch {
            let ok = res.result.is_ok() && !res.is_eof();
            match (res.op, res.buffer) {
                (Op::Read, Buffer::Owned(mut v)) if ok => {
                    v.truncate(res.size);
                    io.write(res.conn, (), v)?;
                }
                (Op::Write, Buffer::Owned(mut v)) if ok => {
                    v.resize(size, 0);
                    io.read(res.conn, (), Some(v))?;
                }
                _ => io.free(res.conn)?,
            }
        }
    }
}

/// A listener with a 4096 backlog: std's 128 overflows when thousands of clients
/// connect at once, and every dropped SYN costs the client a 1 s retransmit.
fn listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}
