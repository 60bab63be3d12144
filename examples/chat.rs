//! A chat server on the pool: every line a client sends goes to every other
//! connected client, whichever watcher each is on.
//!
//! Run: `cargo run --release --example chat -- --listen 127.0.0.1:0 [--watchers N] [--reuseport]`
//! Prints `listening on ADDR` first. Then:
//! - each `\n`-terminated line a client sends (at most 4,096 bytes before the
//!   `\n`) is delivered unchanged (ending included) to every other connected
//!   client, never back to its sender, in the order sent;
//! - a line longer than that closes its sender's connection (the lines before
//!   it are delivered);
//! - a client that falls behind in reading stops being read once 256 KiB of
//!   lines are queued for it (it cannot talk while it does not listen; TCP
//!   pushes back on it), and is read again at 64 KiB (`gaio::Flow` with paused
//!   reads);
//! - a client that stops reading is disconnected once it has 4 MiB or 256
//!   writes queued (`--queue BYTES` changes the first) beyond its 64 KiB
//!   kernel send buffer (`--sndbuf`), and the others go on unhindered; a
//!   partial line at EOF is dropped.
//! - SIGINT or SIGTERM shuts it down gracefully (exit status 0).
//!
//! How: a read's complete lines become one `Arc<[u8]>`, broadcast as a message
//! to every watcher (the sender's included); each watcher writes that one
//! buffer to each of its own clients. One allocation per read, a reference
//! count per recipient, no lock, and no connection is ever touched by two
//! threads.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use gaio::Flow;
use gaio::core::{Conn, Error, Op, Requests};
use gaio::pool::{Event, Io, Pool};

const USAGE: &str = "\
usage: chat --listen ADDR [--watchers N] [--reuseport] [--queue BYTES] [--sndbuf BYTES] [--backend auto|epoll|uring]

  --listen ADDR     address to listen on (127.0.0.1:0: any free port)
  --backend KIND    kernel interface: auto, epoll or uring (default epoll or $GAIO_BACKEND)
  --watchers N      watcher threads, at least 1 (default: the cores this process may use)
  --reuseport       one SO_REUSEPORT listener per watcher instead of one balanced one
  --queue BYTES     bytes a client that does not read may have queued before it is
                    disconnected (default 4194304); 256 queued writes also disconnect
  --sndbuf BYTES    kernel send buffer per client (default 65536): what a client
                    that does not read holds in the kernel besides its queue
";

/// Longest line accepted, `\n` not counted.
const MAX_LINE: usize = 4096;
/// Writes a client may have pending before it counts as not reading (bounds
/// the per-write bookkeeping, as `--queue` bounds the bytes).
const MAX_WRITES: u32 = 256;

#[derive(Debug, Clone, Copy)]
enum Ctx {
    Read,
    Write,
}

/// Complete lines one client sent in one read.
#[derive(Debug, Clone)]
struct Lines {
    from: Conn,
    bytes: Arc<[u8]>,
}

#[derive(Default)]
struct Client {
    /// The start of a line whose `\n` has not arrived yet.
    partial: Vec<u8>,
    /// Writes submitted and not completed.
    writes: u32,
}

/// One watcher's clients (only its own: another watcher's are its business).
#[derive(Default)]
struct Room {
    clients: HashMap<Conn, Client>,
}

impl Room {
    fn leave(&mut self, io: &Io<'_, Ctx, Lines>, conn: Conn) {
        if self.clients.remove(&conn).is_some() {
            let _ = io.free(conn);
        }
    }

    /// A read of `data` from `conn`: broadcast its complete lines, keep the
    /// rest; `false` when a line is too long (the caller closes).
    fn heard(&mut self, io: &Io<'_, Ctx, Lines>, conn: Conn, data: &[u8]) -> bool {
        let Some(c) = self.clients.get_mut(&conn) else {
            return true;
        };
        // Check each line's length; `end` is just past the last good `\n`.
        let mut start = 0; // of the current line within `data`
        let mut carried = c.partial.len();
        let mut end = 0;
        let mut ok = true;
        while let Some(nl) = data[start..].iter().position(|&b| b == b'\n') {
            if carried + nl > MAX_LINE {
                ok = false;
                break;
            }
            start += nl + 1;
            end = start;
            carried = 0;
        }
        if ok && carried + (data.len() - start) > MAX_LINE {
            ok = false; // the unfinished line is too long already
        }
        if end > 0 {
            let bytes: Arc<[u8]> = if c.partial.is_empty() {
                Arc::from(&data[..end])
            } else {
                let mut v = std::mem::take(&mut c.partial);
                v.extend_from_slice(&data[..end]);
                Arc::from(v)
            };
            let _ = io.pool().broadcast(Lines { from: conn, bytes });
        }
        if ok {
            c.partial.extend_from_slice(&data[end..]);
            if c.partial.is_empty() {
                c.partial = Vec::new(); // an idle client holds no buffer
            }
        }
        ok
    }

    /// Lines from `from` (on any watcher) to every client here but the sender.
    fn deliver(&mut self, io: &Io<'_, Ctx, Lines>, msg: &Lines) {
        let mut gone = Vec::new();
        for (&conn, c) in &mut self.clients {
            if conn == msg.from {
                continue;
            }
            if c.writes >= MAX_WRITES {
                gone.push(conn);
                continue;
            }
            match io.write(conn, Ctx::Write, msg.bytes.clone()) {
                Ok(()) => c.writes += 1,
                // WriteLimit: it stopped reading. Anything else: it is closing.
                Err(_) => gone.push(conn),
            }
        }
        for conn in gone {
            self.leave(io, conn);
        }
    }
}

fn main() {
    let mut cli = common::Cli::new("chat", USAGE);
    let mut listen: Option<SocketAddr> = None;
    let mut builder = Pool::builder();
    let mut reuseport = false;
    let mut queue = 4 << 20;
    let mut sndbuf = 64 * 1024;
    while let Some(flag) = cli.next_flag() {
        match flag.as_str() {
            "--listen" => listen = Some(cli.addr(&flag)),
            "--backend" => builder = builder.backend(cli.parse(&flag)),
            "--watchers" => builder = builder.watchers(cli.count(&flag)),
            "--reuseport" => reuseport = true,
            "--queue" => queue = cli.count(&flag),
            "--sndbuf" => sndbuf = cli.count(&flag),
            other => cli.unknown(other),
        }
    }
    let Some(listen) = listen else {
        cli.usage_error("--listen ADDR is required")
    };

    let pool = builder
        .write_limit(Some(queue))
        .flow(Flow::new(64 << 10, 256 << 10).pause_reads(true))
        .grace(Duration::from_secs(1))
        .build(|_watcher| {
            let mut room = Room::default();
            move |io: &Io<Ctx, Lines>, ev: Event<'_, Ctx, Lines>| match ev {
                Event::Connected { conn, .. } => {
                    room.clients.insert(conn, Client::default());
                    if io.read(conn, Ctx::Read, None).is_err() {
                        room.leave(io, conn);
                    }
                }
                Event::Message(msg) => room.deliver(io, &msg),
                Event::Completed(res) => match (res.op, res.ctx) {
                    (Op::Read, Ctx::Read) => {
                        let fine = res.result.is_ok() && res.size > 0;
                        if fine
                            && room.heard(io, res.conn, res.data())
                            && io.read(res.conn, Ctx::Read, None).is_ok()
                        {
                            return;
                        }
                        // EOF, error, or a line too long.
                        room.leave(io, res.conn);
                    }
                    (_, Ctx::Write) => {
                        if let Some(c) = room.clients.get_mut(&res.conn) {
                            c.writes -= 1;
                            if matches!(res.result, Err(ref e) if !matches!(e, Error::Deadline)) {
                                room.leave(io, res.conn);
                            }
                        }
                    }
                    _ => room.leave(io, res.conn),
                },
                _ => {}
            }
        });
    let pool = cli.start_pool(pool, listen, |pool| {
        let first = bind(listen, reuseport, sndbuf)?;
        let addr = first.local_addr()?;
        if reuseport {
            // The others join the port the first one got.
            let mut all = vec![first];
            for _ in 1..pool.watchers() {
                all.push(bind(addr, true, sndbuf)?);
            }
            pool.listen_reuseport_on(all)?;
        } else {
            pool.listen_on(first)?;
        }
        Ok(addr)
    });
    cli.run_pool(pool);
}

/// A listener whose accepted connections inherit `SO_SNDBUF` (Linux does).
fn bind(addr: SocketAddr, reuseport: bool, sndbuf: usize) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if reuseport {
        s.set_reuse_port(true)?;
    }
    s.set_send_buffer_size(sndbuf)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}
