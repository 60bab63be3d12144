//! The echo server from Go gaio's README, on one watcher.
//!
//! Run: `cargo run --release --example echo [-- --listen 127.0.0.1:7000]`
//! Prints `listening on ADDR` as its first line, then echoes every byte each client
//! sends until the client closes. Try it with `nc 127.0.0.1 PORT`. One thread: the
//! watcher accepts, reads and writes.
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

use std::net::SocketAddr;
use std::time::Duration;

use gaio::{Buffer, Conn, Error, Op, Requests, Watcher};

const USAGE: &str = "\
usage: echo [--listen ADDR] [--busy-poll MICROS] [--cpu CORE] [--swap BYTES] [--owned BYTES] [--backend auto|epoll|uring]

  --listen ADDR       address to listen on (default 127.0.0.1:0, an ephemeral port)
  --backend KIND      kernel interface: auto, epoll or uring (default epoll or $GAIO_BACKEND)
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
            "--backend" => builder = builder.backend(cli.parse(&flag)),
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
    // The watcher accepts too: no thread besides this one.
    let l = cli.watch_listener(&mut w, listen, common::listener(listen));

    if let Err(e) = serve(&mut w, l, owned) {
        cli.fail(common::gaio_reason(&e));
    }
}

/// Accepts pending at once: a burst of connections is taken in one turn.
const ACCEPTS: usize = 64;

/// The echo loop. `owned: None` reads into the swap buffer (no buffer per idle
/// connection) and copies each read into a recycled write buffer;
/// `Some(size)` reads into a buffer of `size` per connection and writes that same
/// buffer back: no copy.
fn serve(w: &mut Watcher<()>, listener: Conn, owned: Option<usize>) -> gaio::Result<()> {
    for _ in 0..ACCEPTS {
        w.local().accept(listener, ())?;
    }
    let mut spare: Vec<Vec<u8>> = Vec::new();
    loop {
        let batch = w.wait_io()?;
        // Requests from the completion loop take the hot path.
        let io = batch.local();
        for res in batch {
            let ok = res.result.is_ok() && !res.is_eof();
            match (res.op, res.buffer) {
                (Op::Accept, Buffer::Accepted { conn, .. }) => {
                    // The first read, then the next accept.
                    io.read(conn, (), owned.map(|n| vec![0; n]))?;
                    io.accept(listener, ())?;
                }
                (Op::Accept, _) => {
                    // Out of fds is paced by the watcher; anything else is logged.
                    if let Err(e) = &res.result {
                        eprintln!("echo: accept: {}", common::gaio_reason(e));
                    }
                    io.accept(listener, ())?;
                }
                // Swap style: send back a copy; read again once it is written.
                (Op::Read, Buffer::Swap(data)) if ok => {
                    let mut out = spare.pop().unwrap_or_default();
                    out.extend_from_slice(data);
                    io.write(res.conn, (), out)?;
                }
                // Copy-free style: write the read buffer itself back.
                (Op::Read, Buffer::Owned(mut v)) if ok => {
                    v.truncate(res.size);
                    io.write(res.conn, (), v)?;
                }
                (Op::Write, Buffer::Owned(mut v)) if ok => match owned {
                    Some(size) => {
                        v.resize(size, 0);
                        io.read(res.conn, (), Some(v))?;
                    }
                    None => {
                        v.clear();
                        spare.push(v);
                        io.read(res.conn, (), None)?;
                    }
                },
                // EOF or an error: close the connection.
                _ => io.free(res.conn)?,
            }
        }
    }
}
