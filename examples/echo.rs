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
//! TLS: `--tls-cert PEM --tls-key PEM`, or `--self-signed` (a certificate made
//! at start; its SHA-256 fingerprint is printed after the `listening on` line).
//! The same loop then runs over gaio-tls: plaintext reads and writes, records
//! underneath.
//!
//! Reads land in the watcher's swap buffer and write buffers handed back by
//! completions are reused, so an idle connection holds no buffer and a warm server
//! allocates nothing per message.

mod common;
#[path = "common/tls.rs"]
mod tls_flags;

use std::net::SocketAddr;
use std::time::Duration;

use gaio::{Buffer, Completion, Conn, Error, Op, Requests, Watcher};
use gaio_tls::{Ctx, Tls};

const USAGE: &str = "\
usage: echo [--listen ADDR] [--busy-poll MICROS] [--cpu CORE] [--swap BYTES] [--owned BYTES] [--backend auto|epoll|uring]
            [--tls-cert PEM --tls-key PEM | --self-signed]

  --listen ADDR       address to listen on (default 127.0.0.1:0, an ephemeral port)
  --backend KIND      kernel interface: auto, epoll or uring (default epoll or $GAIO_BACKEND)
  --busy-poll MICROS  spin this long before parking in the poller (default 0: off)
  --cpu CORE          pin the watcher's thread to this core
  --swap BYTES        swap buffer size (default 65536)
  --owned BYTES       read into a per-connection buffer of BYTES and write that same
                      buffer back (no copy), instead of reading into the swap buffer
                      and copying into a recycled write buffer
";

fn usage() -> String {
    format!("{USAGE}{}", tls_flags::USAGE)
}

fn main() {
    let usage = usage().leak();
    let mut cli = common::Cli::new("echo", usage);
    let mut tls = tls_flags::Flags::default();
    let mut listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut builder: gaio::Builder<()> = Watcher::builder();
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
            other if tls.take(&mut cli, other) => {}
            other => cli.unknown(other),
        }
    }

    let tls = tls.server(&cli);
    let res = match tls {
        None => {
            let mut w: Watcher<()> = build(&cli, builder, cpu);
            // The watcher accepts too: no thread besides this one.
            let l = cli.watch_listener(&mut w, listen, common::listener(listen));
            serve(&mut w, l, owned)
        }
        Some(tls) => {
            let mut w: Watcher<Ctx<()>> = build(&cli, builder.with_ctx(), cpu);
            let l = cli.watch_listener(&mut w, listen, common::listener(listen));
            cli.note(tls.note.as_deref());
            serve_tls(&mut w, l, owned, tls.config)
        }
    };
    if let Err(e) = res {
        cli.fail(common::gaio_reason(&e));
    }
}

/// The watcher, or one line saying why not.
fn build<C>(cli: &common::Cli, builder: gaio::Builder<C>, cpu: Option<usize>) -> Watcher<C> {
    builder.build().unwrap_or_else(|e| match e {
        Error::InvalidCpu(_) => cli.usage_error(format!(
            "--cpu {}: not a core this process may run on",
            cpu.unwrap_or_default()
        )),
        e => cli.fail(format!(
            "cannot start the watcher: {}",
            common::gaio_reason(&e)
        )),
    })
}

/// Accepts pending at once: a burst of connections is taken in one turn.
const ACCEPTS: usize = 64;

/// The echo loop. `owned: None` reads into the swap buffer (no buffer per idle
/// connection) and copies each read into a recycled write buffer;
/// `Some(size)` reads into a buffer of `size` per connection and writes that same
/// buffer back: no copy.
///
/// The TLS loop below runs the same logic through [`Echo::handle`]; this one
/// keeps it inline because `cargo xtask bench --instructions` counts this
/// loop's instructions per message, and sharing the match cost about 30 of
/// them (the arms TLS needs change how the match is compiled).
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

/// The same loop over TLS: the TLS layer turns each completion of the watcher
/// into plaintext ones (or none), and the requests made through it into records.
fn serve_tls(
    w: &mut Watcher<Ctx<()>>,
    listener: Conn,
    owned: Option<usize>,
    config: std::sync::Arc<gaio_tls::rustls::ServerConfig>,
) -> gaio::Result<()> {
    for _ in 0..ACCEPTS {
        w.local().accept(listener, Ctx::App(()))?;
    }
    let mut echo = Echo::new(listener, owned);
    let tls: Tls<()> = Tls::new();
    let mut failed = Ok(());
    loop {
        let batch = w.wait_io()?;
        let io = batch.local();
        for res in batch {
            tls.complete(&io, res, |tio, res| {
                let start = |conn| tls.accept(tio.inner(), conn, &config, ());
                if let Err(e) = echo.handle(tio, res, start) {
                    failed = Err(e);
                }
            });
            std::mem::replace(&mut failed, Ok(()))?;
        }
    }
}

/// What the echo loop keeps: the listener, the read style, spare write buffers.
struct Echo {
    listener: Conn,
    owned: Option<usize>,
    spare: Vec<Vec<u8>>,
}

impl Echo {
    fn new(listener: Conn, owned: Option<usize>) -> Echo {
        Echo {
            listener,
            owned,
            spare: Vec::new(),
        }
    }

    /// One completion: the echo server's whole logic, for any request path.
    /// `start` runs on each new connection before its first read (TLS: the
    /// handshake).
    fn handle(
        &mut self,
        io: &impl Requests<()>,
        res: Completion<'_, ()>,
        start: impl FnOnce(Conn) -> gaio::Result<()>,
    ) -> gaio::Result<()> {
        let ok = res.result.is_ok() && !res.is_eof();
        match (res.op, res.buffer) {
            (Op::Accept, Buffer::Accepted { conn, .. }) => {
                // The first read, then the next accept.
                match start(conn) {
                    Ok(()) => io.read(conn, (), self.owned.map(|n| vec![0; n]))?,
                    Err(e) => {
                        eprintln!("echo: {}", common::gaio_reason(&e));
                        free(io, conn)?;
                    }
                }
                io.accept(self.listener, ())?;
            }
            (Op::Accept, _) => {
                // Out of fds is paced by the watcher; anything else is logged.
                if let Err(e) = &res.result {
                    eprintln!("echo: accept: {}", common::gaio_reason(e));
                }
                io.accept(self.listener, ())?;
            }
            // Swap style: send back a copy; read again once it is written.
            (Op::Read, Buffer::Swap(data)) if ok => {
                let mut out = self.spare.pop().unwrap_or_default();
                out.extend_from_slice(data);
                io.write(res.conn, (), out)?;
            }
            // Copy-free style: write the read buffer itself back.
            (Op::Read, Buffer::Owned(mut v)) if ok => {
                v.truncate(res.size);
                io.write(res.conn, (), v)?;
            }
            (Op::Write, Buffer::Owned(mut v)) if ok => match self.owned {
                Some(size) => {
                    v.resize(size, 0);
                    io.read(res.conn, (), Some(v))?;
                }
                None => {
                    v.clear();
                    self.spare.push(v);
                    io.read(res.conn, (), None)?;
                }
            },
            // The TLS handshake is done: the read made at accept goes on.
            (Op::Connect, _) if ok => {}
            // EOF: close after the echoes still queued (over TLS, with a
            // close_notify after them).
            (Op::Read, _) if res.result.is_ok() => io.close(res.conn, (), None)?,
            (Op::Close, _) => {}
            // An error (a failed handshake included): free the connection.
            _ => free(io, res.conn)?,
        }
        Ok(())
    }
}

/// Frees a connection; one already gone (closed by the TLS layer after a failed
/// handshake) is fine.
fn free(io: &impl Requests<()>, conn: Conn) -> gaio::Result<()> {
    match io.free(conn) {
        Err(Error::ConnClosed) => Ok(()),
        res => res,
    }
}
