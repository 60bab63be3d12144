//! A TCP proxy on one watcher: accepts clients, connects each to the upstream,
//! and forwards every byte both ways.
//!
//! Run: `cargo run --release --example proxy -- --listen 127.0.0.1:0 --upstream 127.0.0.1:7000`
//! Prints `listening on ADDR` first.
//!
//! Backpressure without a buffer per idle connection (`gaio::Flow`): a chunk
//! read from one side (into the swap buffer, copied into a recycled write
//! buffer) is queued for the other, and the next read from that side follows
//! at once while the other side is writable — chunks stream, several in
//! flight. Once more than the high watermark (64 KiB) waits for the other side,
//! the proxy stops reading this one and asks to be told (`writable`) when it is
//! back at the low one (32 KiB). So when one side stops reading, the proxy stops
//! reading from the other, and memory stays bounded whatever the peers do. A
//! half-close (EOF) on one side becomes a shutdown of the other's write side
//! after everything before it was written; the other direction goes on until
//! it ends too, then both close.
//!
//! TLS termination: with `--tls-cert PEM --tls-key PEM` (or `--self-signed`)
//! clients speak TLS and the upstream plaintext. The same loop runs either way:
//! every request goes through gaio-tls, which passes the plaintext connections'
//! through unchanged.

mod common;
#[path = "common/tls.rs"]
mod tls_flags;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gaio::{Buffer, Completion, Conn, Requests, Watcher};
use gaio_tls::rustls::ServerConfig;
use gaio_tls::{Tls, TlsIo};

type TlsCtx = gaio_tls::Ctx<Ctx>;

const USAGE: &str = "\
usage: proxy --listen ADDR --upstream ADDR [--connect-timeout SECS] [--backend auto|epoll|uring]
             [--tls-cert PEM --tls-key PEM | --self-signed]

  --listen ADDR            address to accept clients on (127.0.0.1:0: any free port)
  --backend KIND           kernel interface: auto, epoll or uring (default epoll or $GAIO_BACKEND)
  --upstream ADDR          address to connect each client to
  --connect-timeout SECS   give up on an upstream connect after SECS (default 10)
";

/// What a request was for.
#[derive(Debug, Clone, Copy)]
enum Ctx {
    Accept,
    Connect,
    /// A client's TLS handshake ended.
    Handshake,
    Read,
    /// A chunk written to a side.
    Write,
    /// The other side of `from` is writable again: read `from` on.
    Resume {
        from: Conn,
    },
    Shutdown,
    Close,
}

/// One side of a proxied pair.
#[derive(Debug)]
struct Side {
    peer: Conn,
    /// This side sent EOF (its direction is done).
    eof: bool,
}

/// Accepts pending at once.
const ACCEPTS: usize = 16;

fn main() {
    let usage = format!("{USAGE}{}", tls_flags::USAGE).leak();
    let mut cli = common::Cli::new("proxy", usage);
    let mut tls = tls_flags::Flags::default();
    let mut listen = None;
    let mut upstream = None;
    let mut connect_timeout = Duration::from_secs(10);
    let mut builder = Watcher::builder();
    while let Some(flag) = cli.next_flag() {
        match flag.as_str() {
            "--listen" => listen = Some(cli.addr(&flag)),
            "--backend" => builder = builder.backend(cli.parse(&flag)),
            "--upstream" => upstream = Some(cli.addr(&flag)),
            "--connect-timeout" => connect_timeout = cli.period_secs(&flag),
            other if tls.take(&mut cli, other) => {}
            other => cli.unknown(other),
        }
    }
    let (Some(listen), Some(upstream)) = (listen, upstream) else {
        cli.usage_error("--listen and --upstream are required")
    };
    let tls = tls.server(&cli);
    let mut w: Watcher<TlsCtx> = builder.build().unwrap_or_else(|e| {
        cli.fail(format!(
            "cannot start the watcher: {}",
            common::gaio_reason(&e)
        ))
    });
    let l = cli.watch_listener(&mut w, listen, TcpListener::bind(listen));
    cli.note(tls.as_ref().and_then(|t| t.note.as_deref()));
    let proxy = Proxy {
        listener: l,
        upstream,
        timeout: connect_timeout,
        tls: tls.map(|t| t.config),
        sides: HashMap::new(),
        spare: Vec::new(),
    };
    if let Err(e) = serve(&mut w, proxy) {
        cli.fail(common::gaio_reason(&e));
    }
}

/// The proxy's state: its settings and the pairs.
struct Proxy {
    listener: Conn,
    upstream: SocketAddr,
    timeout: Duration,
    /// Clients speak TLS with this configuration.
    tls: Option<Arc<ServerConfig>>,
    sides: HashMap<Conn, Side>,
    spare: Vec<Vec<u8>>,
}

fn serve(w: &mut Watcher<TlsCtx>, mut proxy: Proxy) -> gaio::Result<()> {
    for _ in 0..ACCEPTS {
        w.local().accept(proxy.listener, TlsCtx::App(Ctx::Accept))?;
    }
    let tls: Tls<Ctx> = Tls::new();
    let mut failed = Ok(());
    loop {
        let batch = w.wait_io()?;
        let io = batch.local();
        for res in batch {
            tls.complete(&io, res, |tio, res| {
                if let Err(e) = proxy.handle(tio, res) {
                    failed = Err(e);
                }
            });
            std::mem::replace(&mut failed, Ok(()))?;
        }
    }
}

impl Proxy {
    fn handle(
        &mut self,
        io: &TlsIo<'_, Ctx, gaio::Local<'_, TlsCtx>>,
        res: Completion<'_, Ctx>,
    ) -> gaio::Result<()> {
        let conn = res.conn;
        let ok = res.result.is_ok();
        let sides = &mut self.sides;
        match (res.ctx, res.buffer) {
            (Ctx::Accept, Buffer::Accepted { conn: client, .. }) => {
                io.accept(self.listener, Ctx::Accept)?;
                if let Some(config) = &self.tls {
                    if let Err(e) = io.tls().accept(io.inner(), client, config, Ctx::Handshake) {
                        eprintln!("proxy: TLS: {}", common::gaio_reason(&e));
                        return free(io, client);
                    }
                }
                let deadline = Instant::now() + self.timeout;
                match io.connect(self.upstream, Ctx::Connect, Some(deadline)) {
                    Ok(up) => {
                        sides.insert(
                            client,
                            Side {
                                peer: up,
                                eof: false,
                            },
                        );
                        sides.insert(
                            up,
                            Side {
                                peer: client,
                                eof: false,
                            },
                        );
                        // Both directions start now; the upstream's requests
                        // wait for its connect (and the client's for its
                        // handshake).
                        io.read(client, Ctx::Read, None)?;
                        io.read(up, Ctx::Read, None)?;
                    }
                    Err(e) => {
                        eprintln!(
                            "proxy: connect to {}: {}",
                            self.upstream,
                            common::gaio_reason(&e)
                        );
                        free(io, client)?;
                    }
                }
            }
            (Ctx::Accept, _) => {
                if let Err(e) = &res.result {
                    eprintln!("proxy: accept: {}", common::gaio_reason(e));
                }
                io.accept(self.listener, Ctx::Accept)?;
            }
            (Ctx::Connect, _) if !ok => {
                if let Err(e) = &res.result {
                    eprintln!(
                        "proxy: connect to {}: {}",
                        self.upstream,
                        common::gaio_reason(e)
                    );
                }
                drop_pair(io, sides, conn)?;
            }
            (Ctx::Handshake, _) if !ok => drop_pair(io, sides, conn)?,
            (Ctx::Read, Buffer::Swap(data)) if ok && !data.is_empty() => {
                let Some(side) = sides.get(&conn) else {
                    return Ok(());
                };
                let mut out = self.spare.pop().unwrap_or_default();
                out.extend_from_slice(data);
                let peer = side.peer;
                io.write(peer, Ctx::Write, out)?;
                if io.inner().is_writable(peer) {
                    io.read(conn, Ctx::Read, None)?;
                } else {
                    // Backpressure: read `conn` again once `peer` caught up.
                    io.writable(peer, Ctx::Resume { from: conn })?;
                }
            }
            (Ctx::Read, _) if ok => {
                // EOF: pass the half-close on, after the bytes before it.
                let Some(side) = sides.get_mut(&conn) else {
                    return Ok(());
                };
                side.eof = true;
                let peer = side.peer;
                io.shutdown(peer, Ctx::Shutdown)?;
                if sides.get(&peer).is_some_and(|p| p.eof) {
                    // Both directions ended: close both once their writes are out.
                    sides.remove(&conn);
                    sides.remove(&peer);
                    io.close(conn, Ctx::Close, None)?;
                    io.close(peer, Ctx::Close, None)?;
                }
            }
            (Ctx::Write, buffer) if ok => {
                if let Buffer::Owned(mut v) = buffer {
                    if v.capacity() <= 64 << 10 {
                        v.clear();
                        self.spare.push(v);
                    }
                }
            }
            (Ctx::Resume { from }, _) if ok => {
                if sides.contains_key(&from) {
                    io.read(from, Ctx::Read, None)?;
                }
            }
            // The pair is gone: nothing to resume.
            (Ctx::Resume { .. }, _) => {}
            (Ctx::Connect | Ctx::Handshake | Ctx::Close, _) => {}
            (Ctx::Shutdown, _) if ok => {}
            // A reset, a failed write or shutdown: the pair is over.
            _ => drop_pair(io, sides, conn)?,
        }
        Ok(())
    }
}

/// Frees a connection and its peer (pending requests complete with ConnClosed).
fn drop_pair(
    io: &impl Requests<Ctx>,
    sides: &mut HashMap<Conn, Side>,
    conn: Conn,
) -> gaio::Result<()> {
    if let Some(side) = sides.remove(&conn) {
        sides.remove(&side.peer);
        free(io, side.peer)?;
    }
    free(io, conn)
}

/// Frees a connection; one already gone (a TLS connection closed after a failed
/// handshake, a pair whose other side failed first) is fine.
fn free(io: &impl Requests<Ctx>, conn: Conn) -> gaio::Result<()> {
    match io.free(conn) {
        Err(gaio::Error::ConnClosed) => Ok(()),
        res => res,
    }
}
