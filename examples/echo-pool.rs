//! The multi-core echo demo: N pinned watchers behind one balanced listener or
//! N SO_REUSEPORT listeners.
//!
//! Run: `cargo run --release --example echo-pool -- --watchers 2 --stats 5`
//! Prints `listening on ADDR` first, then (with `--stats N`) per-watcher figures
//! every N seconds. SIGINT (Ctrl-C) or SIGTERM shuts it down gracefully; the
//! figures are printed once more and it exits with status 0.
//!
//! Options: `--listen ADDR` (default 127.0.0.1:0), `--watchers N` (default: cores),
//! `--balancer round-robin|least-conn|source-hash`, `--reuseport`, `--stats SECS`,
//! `--no-pin`.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use gaio::core::{Buffer, Op, Requests};
use gaio::pool::{BalancerKind, Event, Handle, Io, Pool};

const USAGE: &str = "\
usage: echo-pool [--listen ADDR] [--watchers N] [--balancer round-robin|least-conn|source-hash] [--backend auto|epoll|uring]
                 [--reuseport] [--stats SECS] [--no-pin]

  --listen ADDR     address to listen on (default 127.0.0.1:0, an ephemeral port)
  --backend KIND    kernel interface: auto, epoll or uring (default epoll or $GAIO_BACKEND)
  --watchers N      watcher threads, at least 1 (default: the cores this process may use)
  --balancer KIND   how the single listener spreads connections (default round-robin)
  --reuseport       one SO_REUSEPORT listener per watcher instead of a balancer
  --stats SECS      print per-watcher figures every SECS seconds (fractions allowed)
  --no-pin          do not pin watcher threads to cores
";

fn main() {
    let mut cli = common::Cli::new("echo-pool", USAGE);
    let mut listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut builder = Pool::builder();
    let mut balancer = BalancerKind::RoundRobin;
    let mut reuseport = false;
    let mut stats_every: Option<Duration> = None;
    while let Some(flag) = cli.next_flag() {
        match flag.as_str() {
            "--listen" => listen = cli.addr(&flag),
            "--backend" => builder = builder.backend(cli.parse(&flag)),
            "--watchers" => builder = builder.watchers(cli.count(&flag)),
            "--balancer" => balancer = cli.parse(&flag),
            "--reuseport" => reuseport = true,
            "--stats" => stats_every = Some(cli.period_secs(&flag)),
            "--no-pin" => builder = builder.pin(false),
            other => cli.unknown(other),
        }
    }

    let pool = builder
        .balancer(balancer)
        .grace(Duration::from_secs(1))
        .build(|_watcher| {
            let mut spare: Vec<Vec<u8>> = Vec::new();
            move |io: &Io<()>, ev: Event<'_, ()>| {
                let res = match ev {
                    Event::Connected { conn, .. } => {
                        let _ = io.read(conn, (), None);
                        return;
                    }
                    Event::Completed(res) => res,
                    _ => return,
                };
                match res.op {
                    Op::Read if res.result.is_ok() && res.size > 0 => {
                        let mut out = spare.pop().unwrap_or_default();
                        out.extend_from_slice(res.data());
                        let _ = io.write(res.conn, (), out);
                    }
                    Op::Write if res.result.is_ok() => {
                        if let Buffer::Owned(mut v) = res.buffer {
                            v.clear();
                            spare.push(v);
                        }
                        let _ = io.read(res.conn, (), None);
                    }
                    _ => {
                        let _ = io.free(res.conn);
                    }
                }
            }
        });
    let pool = cli.start_pool(pool, listen, |pool| {
        if reuseport {
            pool.listen_reuseport(listen)
        } else {
            // TCP_NODELAY on the listener, which Linux hands to every accepted
            // socket: echoes go out at once, as the other bench servers' do.
            let l = common::listener(listen).map_err(gaio::Error::Io)?;
            pool.listen_on(l)
        }
    });

    // Figures, if asked for, from a thread of their own: the main thread
    // serves until SIGINT or SIGTERM.
    if let Some(every) = stats_every {
        let handle = pool.handle();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(every);
                print_stats(&handle);
            }
        });
    }
    let handle = pool.handle();
    cli.run_pool(pool);
    print_stats(&handle);
}

fn print_stats(pool: &Handle<()>) {
    // A closed stdout (the reader went away) must not take the server down.
    let mut out = std::io::stdout().lock();
    for s in pool.stats().watchers {
        let _ = writeln!(
            out,
            "watcher {}: conns {} accepts {} completions {} pending r/w {}/{} queued {} B",
            s.index,
            s.conns,
            s.accepts,
            s.completions,
            s.pending_reads,
            s.pending_writes,
            s.queued_write_bytes
        );
    }
    let _ = out.flush();
}
