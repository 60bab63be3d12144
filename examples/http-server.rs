//! An HTTP/1.1 server on gaio-pool: keep-alive, pipelining, `HEAD`, bounded
//! requests, and a pause for clients that pipeline without reading.
//!
//! Run: `cargo run --release --example http-server -- --listen 127.0.0.1:8080 [--watchers N] [--reuseport]`
//! Prints `listening on ADDR` first. Then:
//! - `GET /plaintext` → `Hello, World!` (`text/plain`);
//! - `GET /json` → `{"message":"Hello, World!"}`, serialized per request;
//! - `POST /echo` → the request's body, which needs a `Content-Length` (411
//!   without; chunked bodies are not supported) and at most `--max-body` bytes
//!   (413 over);
//! - `GET /metrics` → the pool's figures in the Prometheus text format;
//! - `HEAD` on every `GET` route; 404 elsewhere, 405 for another method;
//! - keep-alive by default (HTTP/1.0: with `Connection: keep-alive`),
//!   `Connection: close` honoured, pipelined requests answered in order, the
//!   answers to one read written together; `Date` (cached per second) and
//!   `Server` headers on every response;
//! - 400 on malformed input, 431 on a head over `--max-head` bytes or 32
//!   headers, 505 on other versions (HTTP/2 prior knowledge too): each closes
//!   the connection after its response;
//! - a head that has not arrived whole `--head-timeout` seconds after its
//!   first byte (a one-byte-per-second client) and a keep-alive connection
//!   silent for `--idle-timeout` seconds are closed;
//! - SIGINT or SIGTERM shuts it down gracefully (exit status 0).
//!
//! The handler is `gaio_http_example::Server` (crates/http-example), one per
//! watcher.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use gaio::pool::{Event, Io, Pool};
use gaio_http_example::{Config, Ctx, Server};

const USAGE: &str = "\
usage: http-server --listen ADDR [--watchers N] [--reuseport] [--backend auto|epoll|uring]
                   [--max-body BYTES] [--max-head BYTES] [--head-timeout SECS] [--idle-timeout SECS]

  --listen ADDR         address to listen on (127.0.0.1:0: any free port)
  --backend KIND        kernel interface: auto, epoll or uring (default epoll or $GAIO_BACKEND)
  --watchers N          watcher threads, at least 1 (default: the cores this process may use)
  --reuseport           one SO_REUSEPORT listener per watcher instead of one balanced one
  --max-body BYTES      longest request body (default 1048576); longer: 413
  --max-head BYTES      longest request line and headers (default 8192); longer: 431
  --head-timeout SECS   a request head must arrive within SECS of its first byte (default 10)
  --idle-timeout SECS   close a keep-alive connection silent for SECS (default 60)
";

fn main() {
    let mut cli = common::Cli::new("http-server", USAGE);
    let mut listen: Option<SocketAddr> = None;
    let mut builder = Pool::builder();
    let mut reuseport = false;
    let mut cfg = Config::default();
    while let Some(flag) = cli.next_flag() {
        match flag.as_str() {
            "--listen" => listen = Some(cli.addr(&flag)),
            "--backend" => builder = builder.backend(cli.parse(&flag)),
            "--watchers" => builder = builder.watchers(cli.count(&flag)),
            "--reuseport" => reuseport = true,
            "--max-body" => cfg.max_body = cli.parse(&flag),
            "--max-head" => cfg.max_head = cli.count(&flag),
            "--head-timeout" => cfg.head_timeout = cli.period_secs(&flag),
            "--idle-timeout" => cfg.idle_timeout = cli.period_secs(&flag),
            other => cli.unknown(other),
        }
    }
    let Some(listen) = listen else {
        cli.usage_error("--listen ADDR is required")
    };
    let pool = builder
        .grace(Duration::from_secs(1))
        .build(move |_watcher| {
            let mut server = Server::new(cfg.clone());
            move |io: &Io<Ctx>, ev: Event<'_, Ctx>| server.handle(io, ev)
        });
    let pool = cli.start_pool(pool, listen, |pool| {
        if reuseport {
            pool.listen_reuseport(listen)
        } else {
            let l = common::listener(listen).map_err(gaio::Error::Io)?;
            pool.listen_on(l)
        }
    });
    cli.run_pool(pool);
}
