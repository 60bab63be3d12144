//! `cargo xtask bench --redis`: the resp-server example against redis-server,
//! both driven by redis-benchmark in one run: requests/s, p50, and server CPU
//! per request (from `/proc`), per command and load; then memory per idle
//! client with 10,000 connected.

use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Paths;

const TESTS: &[&str] = &["ping", "set", "get", "incr", "lpush", "lpop", "mset"];
const IDLE_CLIENTS: usize = 10_000;

/// One load: clients and pipeline depth.
#[derive(Debug, Clone, Copy)]
struct Load {
    clients: usize,
    pipeline: usize,
}

const LOADS: &[Load] = &[
    Load {
        clients: 50,
        pipeline: 1,
    },
    Load {
        clients: 50,
        pipeline: 16,
    },
    Load {
        clients: 1000,
        pipeline: 1,
    },
];

/// One redis-benchmark line: what the client saw and what the server spent.
#[derive(Debug, Clone)]
struct Line {
    test: String,
    rps: f64,
    p50_ms: f64,
    cpu_us_per_req: f64,
}

/// A server under test: a process speaking RESP on `addr`.
struct Resp {
    name: String,
    child: Child,
    addr: SocketAddr,
}

impl Resp {
    fn cpu(&self) -> f64 {
        crate::bench::cpu_secs(self.child.id())
    }
}

impl Drop for Resp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `bin` runs (it is installed).
pub(crate) fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The tools this bench needs, or why they are missing.
pub fn missing_tools() -> Option<String> {
    let missing: Vec<&str> = ["redis-benchmark", "redis-server"]
        .into_iter()
        .filter(|b| !have(b))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} not found: install them with `sudo apt-get install redis-tools redis-server` (Debian/Ubuntu)",
            missing.join(" and ")
        )
    })
}

/// `bin`, run on core `core` through taskset when given.
/// The cores the comparisons pin the load generator and a single-threaded
/// server to: 0 and 1, or none on a one-core machine.
pub(crate) fn client_and_server_cores() -> (Option<usize>, Option<usize>) {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    if cores >= 2 {
        (Some(0), Some(1))
    } else {
        (None, None)
    }
}

pub(crate) fn pinned(bin: &Path, core: Option<usize>) -> Command {
    match core {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &c.to_string()]).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits (bounded) until something accepts on `addr`.
fn wait_listening(addr: SocketAddr) -> io::Result<()> {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(io::Error::other(format!(
        "nothing listens on {addr} after 30 s"
    )))
}

fn start_redis_server(core: Option<usize>) -> io::Result<Resp> {
    let port = free_port()?;
    let child = pinned(Path::new("redis-server"), core)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--maxclients", "20000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut r = Resp {
        name: "redis-server".into(),
        child,
        addr,
    };
    wait_listening(addr)?;
    if let Ok(o) = Command::new("redis-server").arg("--version").output() {
        let v = String::from_utf8_lossy(&o.stdout);
        if let Some(ver) = v.split_whitespace().find_map(|w| w.strip_prefix("v=")) {
            r.name = format!("redis-server {ver}");
        }
    }
    Ok(r)
}

fn start_resp_server(release: &Path, watchers: usize, core: Option<usize>) -> io::Result<Resp> {
    let bin = release.join("examples/resp-server");
    let mut child = pinned(&bin, core)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--watchers",
            &watchers.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let addr = crate::bench::listening_line(&mut child, &bin)?;
    Ok(Resp {
        name: format!("resp-server ({watchers}w)"),
        child,
        addr,
    })
}

/// Runs redis-benchmark for one test and load; the server's CPU is read
/// around it.
fn one(
    srv: &Resp,
    test: &str,
    load: Load,
    requests: usize,
    core: Option<usize>,
) -> Result<Line, String> {
    let before = srv.cpu();
    let out = pinned(Path::new("redis-benchmark"), core)
        .args(["-h", "127.0.0.1", "-p", &srv.addr.port().to_string()])
        .args(["-c", &load.clients.to_string()])
        .args(["-P", &load.pipeline.to_string()])
        .args(["-n", &requests.to_string(), "-t", test, "--csv"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("redis-benchmark: {e}"))?;
    let cpu = srv.cpu() - before;
    if !out.status.success() {
        return Err(format!(
            "redis-benchmark -t {test} against {} failed: {}",
            srv.name,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.to_ascii_lowercase().contains("error") {
        return Err(format!(
            "redis-benchmark -t {test} against {}: {}",
            srv.name,
            stderr.trim()
        ));
    }
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",…
    let row = text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .last()
        .ok_or_else(|| format!("redis-benchmark -t {test}: no CSV row in {text:?}"))?;
    let f: Vec<String> = row
        .split(',')
        .map(|c| c.trim_matches('"').to_string())
        .collect();
    let num = |i: usize| -> Result<f64, String> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("redis-benchmark -t {test}: bad CSV row {row:?}"))
    };
    // `-t ping` runs PING_INLINE and PING_MBULK: the last row (MBULK) is the
    // one every client library sends; the CPU covers both, hence the 2.
    let runs = if test == "ping" { 2.0 } else { 1.0 };
    Ok(Line {
        test: f[0].clone(),
        rps: num(1)?,
        p50_ms: num(4)?,
        cpu_us_per_req: cpu * 1e6 / (requests as f64 * runs),
    })
}

/// RSS growth per connected, idle client (served one PING).
fn idle_bytes_per_client(srv: &Resp) -> Result<f64, String> {
    let pid = srv.child.id();
    crate::bench::idle_rss_per_conn(
        &srv.name,
        pid,
        srv.addr,
        IDLE_CLIENTS,
        b"PING\r\n",
        b"+PONG\r\n",
    )
}

/// One server's figures: its name, the lines of each load, bytes per idle client.
type ServerFigures = (String, Vec<(Load, Vec<Line>)>, f64);

pub struct Results {
    servers: Vec<ServerFigures>,
    runs: usize,
    pinned: bool,
}

/// Runs every load against redis-server and resp-server. `release` holds the
/// built examples.
pub fn run(release: &Path, quick: bool) -> Result<Results, String> {
    if let Some(why) = missing_tools() {
        return Err(why);
    }
    gaio_testkit::raise_fd_limit();
    // With 2 cores or more: redis-benchmark on core 0, the single-threaded
    // servers (redis-server, resp-server with 1 watcher) on core 1, so the
    // client does not steal the server's core and runs are comparable. The
    // N-watcher server runs where the kernel puts it (it shares the client's).
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (client_core, server_core) = client_and_server_cores();
    let mut srvs = vec![start_redis_server(server_core).map_err(|e| format!("redis-server: {e}"))?];
    srvs.push(start_resp_server(release, 1, server_core).map_err(|e| format!("resp-server: {e}"))?);
    if cores > 1 {
        srvs.push(
            start_resp_server(release, cores, None).map_err(|e| format!("resp-server: {e}"))?,
        );
    }
    // Memory first, on fresh servers: after the loads, the allocator's free
    // lists would hide what new clients cost.
    let mut idle = Vec::new();
    for srv in &srvs {
        let b = idle_bytes_per_client(srv)?;
        eprintln!(
            "bench --redis: {}: {IDLE_CLIENTS} idle clients, {b:.0} B each",
            srv.name
        );
        idle.push(b);
    }
    let runs = if quick { 1 } else { 3 };
    let mut per_server: Vec<Vec<(Load, Vec<Line>)>> = srvs.iter().map(|_| Vec::new()).collect();
    for &load in LOADS {
        let requests = match (quick, load.pipeline) {
            (true, 1) => 20_000,
            (true, _) => 200_000,
            (false, 1) => 100_000,
            (false, _) => 1_000_000,
        };
        for figures in per_server.iter_mut() {
            figures.push((load, Vec::new()));
        }
        for t in TESTS {
            // Servers interleaved run by run, so drift on a noisy machine hits
            // them alike; medians of `runs`.
            let mut got: Vec<Vec<Line>> = srvs.iter().map(|_| Vec::new()).collect();
            for _ in 0..runs {
                for (i, srv) in srvs.iter().enumerate() {
                    got[i].push(one(srv, t, load, requests, client_core)?);
                }
            }
            for (i, lines) in got.into_iter().enumerate() {
                let l = median_line(lines);
                eprintln!(
                    "  {} -c {} -P {} {}: {:.0} req/s, p50 {:.3} ms, {:.2} µs CPU/req",
                    srvs[i].name,
                    load.clients,
                    load.pipeline,
                    l.test,
                    l.rps,
                    l.p50_ms,
                    l.cpu_us_per_req
                );
                per_server[i].last_mut().expect("pushed").1.push(l);
            }
        }
    }
    let servers = srvs
        .iter()
        .zip(per_server)
        .zip(idle)
        .map(|((srv, loads), idle)| {
            let pin = match (
                srv.name.contains("(1w)") || srv.name.starts_with("redis"),
                server_core,
            ) {
                (true, Some(c)) => format!(", core {c}"),
                _ => String::new(),
            };
            (format!("{}{pin}", srv.name), loads, idle)
        })
        .collect();
    Ok(Results {
        servers,
        runs,
        pinned: client_core.is_some(),
    })
}

/// Field by field medians of one test's runs.
fn median_line(lines: Vec<Line>) -> Line {
    let med = |f: fn(&Line) -> f64| crate::bench::median(lines.iter().map(f).collect());
    Line {
        test: lines[0].test.clone(),
        rps: med(|l| l.rps),
        p50_ms: med(|l| l.p50_ms),
        cpu_us_per_req: med(|l| l.cpu_us_per_req),
    }
}

/// The Markdown table: one row per command and load, each server's figures,
/// resp-server's as ratios to redis-server's.
pub fn report(r: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\nredis-benchmark{}, medians of {} run(s) per line, servers interleaved; ratios are resp-server ÷ redis-server (req/s: higher is better; CPU/req, the server's user + system time from /proc: lower is better).\n",
        if r.pinned { " on core 0" } else { "" },
        r.runs
    );
    let _ = write!(md, "| load | command |");
    for (name, _, _) in &r.servers {
        let _ = write!(md, " {name} req/s | p50 ms | CPU µs/req |");
    }
    let _ = writeln!(md);
    let _ = write!(md, "|---|---|");
    for _ in &r.servers {
        let _ = write!(md, "---|---|---|");
    }
    let _ = writeln!(md);
    let Some((_, base_loads, base_idle)) = r.servers.first() else {
        return md;
    };
    for (li, (load, base_lines)) in base_loads.iter().enumerate() {
        for (ti, base) in base_lines.iter().enumerate() {
            let _ = write!(
                md,
                "| -c {} -P {} | {} |",
                load.clients, load.pipeline, base.test
            );
            for (si, (_, loads, _)) in r.servers.iter().enumerate() {
                let l = &loads[li].1[ti];
                if si == 0 {
                    let _ = write!(
                        md,
                        " {:.0} | {:.3} | {:.2} |",
                        l.rps, l.p50_ms, l.cpu_us_per_req
                    );
                } else {
                    let _ = write!(
                        md,
                        " {:.0} ({:.2}×) | {:.3} | {:.2} ({:.2}×) |",
                        l.rps,
                        l.rps / base.rps,
                        l.p50_ms,
                        l.cpu_us_per_req,
                        l.cpu_us_per_req / base.cpu_us_per_req
                    );
                }
            }
            let _ = writeln!(md);
        }
    }
    let _ = write!(md, "| {IDLE_CLIENTS} idle clients | RSS per client |");
    for (si, (_, _, idle)) in r.servers.iter().enumerate() {
        if si == 0 {
            let _ = write!(md, " {idle:.0} B | | |");
        } else {
            let _ = write!(md, " {idle:.0} B ({:.2}×) | | |", idle / base_idle);
        }
    }
    let _ = writeln!(md);
    md
}

/// `cargo xtask bench --redis` on its own.
pub fn bench(paths: &Paths, quick: bool) -> Result<(), String> {
    if let Some(why) = missing_tools() {
        return Err(why);
    }
    crate::run(
        "cargo build --release --example resp-server",
        crate::cargo().current_dir(&paths.root).args([
            "build",
            "--release",
            "-p",
            "gaio",
            "--example",
            "resp-server",
        ]),
    )?;
    let r = run(&paths.release(), quick)?;
    let md = report(&r);
    println!("{md}");
    let out = paths.target.join("bench");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let f = out.join("redis.md");
    std::fs::write(&f, &md).map_err(|e| format!("{}: {e}", f.display()))?;
    eprintln!("bench --redis: wrote {}", f.display());
    Ok(())
}
