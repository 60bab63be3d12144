//! `cargo xtask soak --secs N`: a mixed workload against the gaio-pool echo server
//! (its own process) until the time is up — echo with every byte verified, reads
//! that must time out, connections freed mid-conversation and replaced — then a
//! summary: operations, errors by kind, server RSS and fds at start and end.

use crate::Paths;
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use gaio_core::{Conn, Error, Op, Requests, Watcher};

const ECHO: u64 = 0;
const PROBE: u64 = 1;

struct Echo {
    msg: Vec<u8>,
    /// When the current message was sent: an echo outstanding for long is a stall.
    since: Instant,
}

/// An echo of at most 4 KiB on loopback that takes this long is stuck, not slow.
const STALL: Duration = Duration::from_secs(2);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

pub fn soak(paths: &Paths, secs: u64) -> Result<(), String> {
    crate::run(
        "cargo build --release --example echo-pool",
        crate::cargo().current_dir(&paths.root).args([
            "build",
            "--release",
            "--example",
            "echo-pool",
        ]),
    )?;
    let bin = paths.release().join("examples/echo-pool");
    if !bin.exists() {
        return Err(format!("no executable at {}", bin.display()));
    }
    let mut child = std::process::Command::new(&bin)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let addr: SocketAddr = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        line.trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .ok_or(format!("unexpected first line {line:?}"))?
    };
    let pid = child.id();
    let result = drive(addr, pid, Duration::from_secs(secs));
    // SAFETY: kill has no memory preconditions; pid is our live child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let _ = child.wait();
    let summary = result?;
    println!("{summary}");
    Ok(())
}

fn drive(addr: SocketAddr, pid: u32, secs: Duration) -> Result<String, String> {
    let err = |e: Error| e.to_string();
    let mut w: Watcher<u64> = Watcher::new().map_err(err)?;
    let tx = w.submitter();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut echo: HashMap<Conn, Echo> = HashMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut echoed, mut bytes, mut deadlines, mut freed, mut connects, mut cancelled) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let connect = |w: &mut Watcher<u64>| -> Result<Conn, String> {
        let s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        w.register(s).map_err(|e| e.to_string())
    };
    let new_msg = |rng: &mut Rng| -> Vec<u8> {
        let n = 1 + rng.below(4096) as usize;
        (0..n).map(|_| rng.next() as u8).collect()
    };
    // Warm up the server, then take its baseline.
    {
        let c = connect(&mut w)?;
        tx.write(c, ECHO, vec![1]).map_err(err)?;
        tx.read_full(c, ECHO, vec![0], None).map_err(err)?;
        let mut n = 0;
        while n < 2 {
            n += w
                .wait_io_timeout(Duration::from_secs(10))
                .map_err(err)?
                .count();
        }
        w.free(c).map_err(err)?;
        let _ = w
            .wait_io_timeout(Duration::from_millis(50))
            .map_err(err)?
            .count();
    }
    let wait_fds = |target: usize| {
        let end = Instant::now() + Duration::from_secs(10);
        while fds(pid) != target && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        fds(pid)
    };
    // The warm-up connection's fd may still be closing: wait until the count holds.
    let fds0 = {
        let mut last = fds(pid);
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = fds(pid);
            if now == last || Instant::now() >= end {
                break now;
            }
            last = now;
        }
    };
    let rss0 = proc_field(pid, "status", "VmRSS:");
    let start_echo = |w: &mut Watcher<u64>, c: Conn, msg: Vec<u8>| -> Result<(), String> {
        let tx = w.submitter();
        tx.write(c, ECHO, msg.clone()).map_err(err)?;
        tx.read_full(c, ECHO, vec![0; msg.len()], None)
            .map_err(err)?;
        Ok(())
    };
    for _ in 0..200 {
        let c = connect(&mut w)?;
        connects += 1;
        let m = new_msg(&mut rng);
        start_echo(&mut w, c, m.clone())?;
        echo.insert(
            c,
            Echo {
                msg: m,
                since: Instant::now(),
            },
        );
    }
    let mut probes = Vec::new();
    for _ in 0..20 {
        let c = connect(&mut w)?;
        connects += 1;
        tx.read_deadline(
            c,
            PROBE,
            None,
            Instant::now() + Duration::from_millis(5 + rng.below(20)),
        )
        .map_err(err)?;
        probes.push(c);
    }
    let started = Instant::now();
    let mut next_free = Instant::now();
    while started.elapsed() < secs {
        let batch: Vec<_> = w
            .wait_io_timeout(Duration::from_millis(5))
            .map_err(err)?
            .map(|c| (c.op, c.conn, c.ctx, c.data().to_vec(), c.result))
            .collect();
        for (op, conn, ctx, data, result) in batch {
            match (ctx, op, result) {
                (ECHO, Op::Read, Ok(())) => {
                    let e = echo
                        .get_mut(&conn)
                        .ok_or("completion for an unknown connection")?;
                    if data != e.msg {
                        return Err(format!("echo mismatch on {conn:?}: {} bytes", data.len()));
                    }
                    echoed += 1;
                    bytes += data.len() as u64;
                    e.msg = new_msg(&mut rng);
                    e.since = Instant::now();
                    let m = e.msg.clone();
                    start_echo(&mut w, conn, m)?;
                }
                (ECHO, Op::Write, Ok(())) => {}
                (PROBE, _, Err(Error::Deadline)) => {
                    deadlines += 1;
                    tx.read_deadline(
                        conn,
                        PROBE,
                        None,
                        Instant::now() + Duration::from_millis(5 + rng.below(20)),
                    )
                    .map_err(err)?;
                }
                (_, _, Err(Error::ConnClosed)) => cancelled += 1,
                (_, _, Err(e)) => *errors.entry(format!("{op:?}: {e}")).or_default() += 1,
                (PROBE, _, Ok(())) => *errors.entry("probe read got data".into()).or_default() += 1,
                _ => *errors.entry("unexpected completion".into()).or_default() += 1,
            }
        }
        // Free a random echo connection mid-conversation and replace it.
        if Instant::now() >= next_free {
            next_free = Instant::now() + Duration::from_millis(2);
            let k = rng.below(echo.len() as u64) as usize;
            if let Some(&c) = echo.keys().nth(k) {
                echo.remove(&c);
                w.free(c).map_err(err)?;
                freed += 1;
                let n = connect(&mut w)?;
                connects += 1;
                let m = new_msg(&mut rng);
                start_echo(&mut w, n, m.clone())?;
                echo.insert(
                    n,
                    Echo {
                        msg: m,
                        since: Instant::now(),
                    },
                );
            }
            // Liveness: frees recycle every connection within seconds, which could
            // hide one that stopped making progress; look for it explicitly.
            if let Some((c, e)) = echo.iter().find(|(_, e)| e.since.elapsed() > STALL) {
                return Err(format!(
                    "echo on {c:?} outstanding for {:?}",
                    e.since.elapsed()
                ));
            }
        }
    }
    // Close everything and let the server notice.
    w.free_all().map_err(err)?;
    let _ = w
        .wait_io_timeout(Duration::from_millis(50))
        .map_err(err)?
        .count();
    drop(w);
    let fds1 = wait_fds(fds0);
    let rss1 = proc_field(pid, "status", "VmRSS:");
    let mut s = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "soak: {:.0} s against gaio-pool echo (pid {pid})",
        secs.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "  echoes verified   {echoed} ({:.1} MB)",
        bytes as f64 / 1e6
    );
    let _ = writeln!(s, "  deadlines fired   {deadlines}");
    let _ = writeln!(
        s,
        "  frees mid-flight  {freed} (requests completed ConnClosed: {cancelled})"
    );
    let _ = writeln!(s, "  connections made  {connects}");
    if errors.is_empty() {
        let _ = writeln!(s, "  errors            none");
    } else {
        for (k, v) in &errors {
            let _ = writeln!(s, "  error             {k}: {v}");
        }
    }
    let _ = writeln!(s, "  server RSS        {rss0} kB -> {rss1} kB");
    let _ = writeln!(s, "  server fds        {fds0} -> {fds1}");
    if fds1 != fds0 {
        return Err(format!("{s}server fds did not return to {fds0}"));
    }
    Ok(s)
}
