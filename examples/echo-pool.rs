//! The multi-core echo demo: N pinned watchers behind one balanced listener or
//! N SO_REUSEPORT listeners.
//!
//! Run: `cargo run --release --example echo-pool -- --watchers 2 --stats 5`
//! Prints `listening on ADDR` first, then (with `--stats N`) per-watcher figures
//! every N seconds, and once more on Ctrl-C before a graceful shutdown.
//!
//! Options: `--listen ADDR` (default 127.0.0.1:0), `--watchers N` (default: cores),
//! `--balancer round-robin|least-conn|source-hash`, `--reuseport`, `--stats SECS`,
//! `--no-pin`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gaio::core::{Buffer, Op};
use gaio::pool::{BalancerKind, Event, Io, Pool};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen = "127.0.0.1:0".to_string();
    let mut builder = Pool::builder();
    let mut balancer = BalancerKind::RoundRobin;
    let mut reuseport = false;
    let mut stats_every: Option<Duration> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = value()?,
            "--watchers" => builder = builder.watchers(value()?.parse()?),
            "--balancer" => balancer = value()?.parse()?,
            "--reuseport" => reuseport = true,
            "--stats" => stats_every = Some(Duration::from_secs_f64(value()?.parse()?)),
            "--no-pin" => builder = builder.pin(false),
            "-h" | "--help" => {
                println!(
                    "usage: echo-pool [--listen ADDR] [--watchers N] \
                     [--balancer round-robin|least-conn|source-hash] [--reuseport] \
                     [--stats SECS] [--no-pin]"
                );
                return Ok(());
            }
            other => return Err(format!("unknown argument {other} (try --help)").into()),
        }
    }

    let pool = builder.balancer(balancer).build(|_watcher| {
        let mut spare: Vec<Vec<u8>> = Vec::new();
        move |io: &Io<()>, ev: Event<'_, ()>| {
            let res = match ev {
                Event::Connected { conn, .. } => {
                    let _ = io.read(conn, (), None);
                    return;
                }
                Event::Completed(res) => res,
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
    })?;
    let addr = if reuseport {
        pool.listen_reuseport(&listen)?
    } else {
        pool.listen(&listen)?
    };
    println!("listening on {addr}");
    std::io::stdout().flush()?;

    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let mut last = Instant::now();
    // The main thread has nothing to do but report: wake a few times a second.
    while !INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        if stats_every.is_some_and(|d| last.elapsed() >= d) {
            print_stats(&pool);
            last = Instant::now();
        }
    }
    print_stats(&pool);
    pool.shutdown(Duration::from_secs(1));
    Ok(())
}

fn print_stats(pool: &Pool<()>) {
    // A closed stdout (the reader went away) must not take the server down.
    let mut out = std::io::stdout().lock();
    for s in pool.stats() {
        let _ = writeln!(
            out,
            "watcher {}: live {} accepts {} completions {} pending r/w {}/{}",
            s.index, s.live_conns, s.accepts, s.completions, s.pending_reads, s.pending_writes
        );
    }
    let _ = out.flush();
}
