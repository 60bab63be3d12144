//! The push server from Go gaio's README: every connected client receives the
//! same timestamp line at every tick, written from one shared buffer.
//!
//! Run: `cargo run --release --example push -- --listen 127.0.0.1:0 [--interval SECS]`
//! Prints `listening on ADDR` first; then every `--interval` seconds (default 1)
//! each client gets `<unix time in ms>\n`. One allocation per tick whatever the
//! number of clients. A client that stops reading is dropped once its queue
//! reaches the write limit (`--limit BYTES`, default 64 KiB): it is never
//! buffered without end (`--sndbuf` bounds what the kernel holds for it too). One thread: the watcher accepts, writes and notices
//! clients leaving.

mod common;

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gaio::{Buffer, Conn, Error, Op, Requests, Watcher};

const USAGE: &str = "\
usage: push --listen ADDR [--interval SECS] [--limit BYTES] [--sndbuf BYTES] [--backend auto|epoll|uring]

  --listen ADDR      address to listen on (127.0.0.1:0: any free port)
  --backend KIND     kernel interface: auto, epoll or uring (default epoll or $GAIO_BACKEND)
  --interval SECS    time between two pushes (default 1; fractions allowed)
  --limit BYTES      bytes a slow client may have queued before it is dropped
                     (default 65536)
  --sndbuf BYTES     kernel send buffer per client (default 65536): what a slow
                     client holds in the kernel before the limit above counts
";

/// Accepts pending at once.
const ACCEPTS: usize = 16;

fn main() {
    let mut cli = common::Cli::new("push", USAGE);
    let mut listen = None;
    let mut interval = Duration::from_secs(1);
    let mut limit = 64 * 1024;
    let mut sndbuf = 64 * 1024;
    let mut builder = Watcher::builder();
    while let Some(flag) = cli.next_flag() {
        match flag.as_str() {
            "--listen" => listen = Some(cli.addr(&flag)),
            "--backend" => builder = builder.backend(cli.parse(&flag)),
            "--interval" => interval = cli.period_secs(&flag),
            "--limit" => limit = cli.count(&flag),
            "--sndbuf" => sndbuf = cli.count(&flag),
            other => cli.unknown(other),
        }
    }
    let Some(listen) = listen else {
        cli.usage_error("--listen is required")
    };
    let mut w: Watcher<()> = builder
        .write_limit(Some(limit))
        .build()
        .unwrap_or_else(|e| {
            cli.fail(format!(
                "cannot start the watcher: {}",
                common::gaio_reason(&e)
            ))
        });
    let l = cli.watch_listener(&mut w, listen, listener(listen, sndbuf));
    if let Err(e) = serve(&mut w, l, interval) {
        cli.fail(common::gaio_reason(&e));
    }
}

fn serve(w: &mut Watcher<()>, listener: Conn, interval: Duration) -> gaio::Result<()> {
    for _ in 0..ACCEPTS {
        w.local().accept(listener, ())?;
    }
    let mut clients: HashSet<Conn> = HashSet::new();
    let mut next = Instant::now() + interval;
    loop {
        let now = Instant::now();
        if now >= next {
            // One buffer per tick, shared by every write.
            let line: Arc<[u8]> = Arc::from(format!("{}\n", unix_millis()).into_bytes());
            let io = w.local();
            let mut slow = Vec::new();
            for &c in &clients {
                match io.write(c, (), line.clone()) {
                    Ok(()) => {}
                    // Not reading: its queue is at the limit. Drop it.
                    Err(Error::WriteLimit) => slow.push(c),
                    Err(e) => return Err(e),
                }
            }
            for c in slow {
                clients.remove(&c);
                io.free(c)?;
            }
            next += interval;
            if next <= now {
                next = now + interval; // fell behind: do not burst to catch up
            }
        }
        let batch = w.wait_io_timeout(next.saturating_duration_since(Instant::now()))?;
        let io = batch.local();
        for res in batch {
            match (res.op, res.buffer) {
                (Op::Accept, Buffer::Accepted { conn, .. }) => {
                    clients.insert(conn);
                    // A read that completes only when the client closes (or
                    // sends something, which is ignored).
                    io.read(conn, (), None)?;
                    io.accept(listener, ())?;
                }
                (Op::Accept, _) => io.accept(listener, ())?,
                (Op::Read, Buffer::Swap(data)) if res.result.is_ok() && !data.is_empty() => {
                    io.read(res.conn, (), None)?;
                }
                (Op::Write, _) if res.result.is_ok() => {}
                // EOF, reset, or a failed write: the client is gone.
                _ => {
                    if clients.remove(&res.conn) {
                        io.free(res.conn)?;
                    }
                }
            }
        }
    }
}

/// A listener whose accepted sockets inherit a fixed send buffer (Linux): the
/// kernel's autotuning would otherwise let a stuck client hold megabytes before
/// the watcher's write limit sees anything.
fn listener(addr: std::net::SocketAddr, sndbuf: usize) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_send_buffer_size(sndbuf)?;
    s.set_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}
