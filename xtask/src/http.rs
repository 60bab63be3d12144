//! `cargo xtask bench --http`: examples/http-server with one watcher against
//! hyper 1.x on a tokio current-thread runtime (`benches/hyper.rs`), each
//! pinned to core 1 with the client on core 0, runs interleaved, medians:
//! `/plaintext` and `/json` without pipelining (wrk, 256 connections), and
//! `/plaintext` 16 deep (h2load `--h1`); requests/s, p50/p99 latency, server
//! CPU per request (from `/proc`); then RSS per idle keep-alive connection
//! with 10,000 open.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::Paths;
use crate::redis::pinned;

const IDLE_CONNS: usize = 10_000;
const CONNS: usize = 256;

/// One load: a path, with or without pipelining.
#[derive(Debug, Clone, Copy)]
struct Load {
    path: &'static str,
    /// Requests in flight per connection (1: none pipelined).
    depth: usize,
}

const LOADS: &[Load] = &[
    Load {
        path: "/plaintext",
        depth: 1,
    },
    Load {
        path: "/json",
        depth: 1,
    },
    Load {
        path: "/plaintext",
        depth: 16,
    },
];

/// What the client saw and the server spent, for one load.
#[derive(Debug, Clone, Copy)]
struct Line {
    rps: f64,
    /// Latency percentiles (wrk only; NaN for h2load's pipelined runs).
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_req: f64,
}

/// A server under test (also the TLS comparison's), killed when dropped.
pub(crate) struct Http {
    pub name: &'static str,
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Http {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `bin` can be started at all (wrk and h2load exit 1 on `--version`).
fn installed(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Why the comparison cannot run here, if it cannot.
pub fn missing_tools() -> Option<String> {
    let missing: Vec<&str> = ["wrk", "h2load"]
        .into_iter()
        .filter(|b| !installed(b))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} not found: install with `sudo apt-get install wrk nghttp2-client` (Debian/Ubuntu)",
            missing.join(" and ")
        )
    })
}

/// Starts `bin --listen 127.0.0.1:0 ARGS` pinned to `core` and reads its
/// `listening on` line.
pub(crate) fn start(
    name: &'static str,
    bin: &Path,
    args: &[&str],
    core: Option<usize>,
) -> io::Result<Http> {
    let mut child = pinned(bin, core)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let addr = crate::bench::listening_line(&mut child, bin)?;
    Ok(Http { name, child, addr })
}

/// A latency as wrk prints it (`812.00us`, `1.23ms`, `2.00s`, `1.50m`), in ms.
fn wrk_ms(v: &str) -> Option<f64> {
    let v = v.trim();
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60e3)
    } else if let Some(n) = v.strip_suffix('h') {
        (n, 3_600e3)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

/// One run of one load against `srv`, the server's CPU read around it.
fn one(srv: &Http, load: Load, secs: u64, core: Option<usize>) -> Result<Line, String> {
    let url = format!("http://{}{}", srv.addr, load.path);
    let cpu_before = crate::bench::cpu_secs(srv.child.id());
    let pipelined = load.depth > 1;
    let out = if pipelined {
        pinned(Path::new("h2load"), core)
            .args([
                "--h1",
                "-c",
                &CONNS.to_string(),
                "-m",
                &load.depth.to_string(),
            ])
            .args(["-D", &secs.to_string(), &url])
            .stdin(Stdio::null())
            .output()
    } else {
        pinned(Path::new("wrk"), core)
            .args(["-t1", "-c", &CONNS.to_string(), "-d", &format!("{secs}s")])
            .args(["--latency", &url])
            .stdin(Stdio::null())
            .output()
    }
    .map_err(|e| format!("load generator: {e}"))?;
    let cpu = crate::bench::cpu_secs(srv.child.id()) - cpu_before;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let fail = || format!("{url}: cannot read the load generator's report:\n{text}");
    let (rps, requests, p50, p99) = if pipelined {
        // "finished in 5.00s, 123456.70 req/s, 12.34MB/s" and
        // "requests: 617283 total, 617283 started, 617283 done, 617283 succeeded, 0 failed, …"
        let rps: f64 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("finished in "))
            .and_then(|l| l.split(", ").nth(1))
            .and_then(|v| v.trim_end_matches(" req/s").parse().ok())
            .ok_or_else(fail)?;
        let req_line = text
            .lines()
            .find(|l| l.trim().starts_with("requests:"))
            .ok_or_else(fail)?;
        let field = |name: &str| -> Option<f64> {
            req_line
                .split(',')
                .find_map(|f| f.trim().strip_suffix(name))
                .and_then(|n| n.trim().trim_start_matches("requests:").trim().parse().ok())
        };
        let done = field("succeeded").ok_or_else(fail)?;
        if ["failed", "errored", "timeout"]
            .iter()
            .any(|name| field(name).is_some_and(|f| f > 0.0))
        {
            return Err(format!("{url}: failed requests:\n{text}"));
        }
        (rps, done, f64::NAN, f64::NAN)
    } else {
        if text.contains("Non-2xx") || text.contains("Socket errors") {
            return Err(format!("{url}: errors:\n{text}"));
        }
        let rps: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(fail)?;
        // "  617283 requests in 5.00s, 80.06MB read"
        let requests: f64 = text
            .lines()
            .find(|l| l.contains(" requests in "))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .ok_or_else(fail)?;
        let pct = |p: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(p))
                .and_then(wrk_ms)
        };
        (
            rps,
            requests,
            pct("50%").ok_or_else(fail)?,
            pct("99%").ok_or_else(fail)?,
        )
    };
    Ok(Line {
        rps,
        p50_ms: p50,
        p99_ms: p99,
        cpu_us_per_req: cpu * 1e6 / requests.max(1.0),
    })
}

/// RSS growth per keep-alive connection that made one request and went idle.
fn idle_bytes_per_conn(srv: &Http) -> Result<f64, String> {
    let req = b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n";
    let pid = srv.child.id();
    crate::bench::idle_rss_per_conn(srv.name, pid, srv.addr, IDLE_CONNS, req, b"Hello, World!")
}

/// Every server's name, its line per load, and bytes per idle connection.
pub struct Results {
    servers: Vec<(String, Vec<Line>, f64)>,
    runs: usize,
    secs: u64,
    pinned: bool,
}

/// Runs every load against hyper and http-server. `release` holds the built
/// binaries.
pub fn run(release: &Path, quick: bool) -> Result<Results, String> {
    if let Some(why) = missing_tools() {
        return Err(why);
    }
    gaio_testkit::raise_fd_limit();
    let (client_core, server_core) = crate::redis::client_and_server_cores();
    let hyper = release.join("bench-hyper");
    let gaio = release.join("examples/http-server");
    let idle_timeout = ["--idle-timeout", "600"];
    let srvs = [
        start("hyper", &hyper, &[], server_core).map_err(|e| format!("bench-hyper: {e}"))?,
        start(
            "http-server (1w)",
            &gaio,
            &[&["--watchers", "1"][..], &idle_timeout].concat(),
            server_core,
        )
        .map_err(|e| format!("http-server: {e}"))?,
    ];
    let mut idle = Vec::new();
    for srv in &srvs {
        let b = idle_bytes_per_conn(srv)?;
        eprintln!(
            "bench --http: {}: {IDLE_CONNS} idle keep-alive connections, {b:.0} B each",
            srv.name
        );
        idle.push(b);
    }
    // The idle connections are gone: fresh servers for the loads.
    drop(srvs);
    let srvs = [
        start("hyper", &hyper, &[], server_core).map_err(|e| format!("bench-hyper: {e}"))?,
        start("http-server (1w)", &gaio, &["--watchers", "1"], server_core)
            .map_err(|e| format!("http-server: {e}"))?,
    ];
    let (runs, secs) = if quick { (1, 2) } else { (3, 5) };
    let mut lines: Vec<Vec<Line>> = srvs.iter().map(|_| Vec::new()).collect();
    for &load in LOADS {
        let mut got: Vec<Vec<Line>> = srvs.iter().map(|_| Vec::new()).collect();
        // Servers interleaved run by run, so drift hits them alike.
        for _ in 0..runs {
            for (i, srv) in srvs.iter().enumerate() {
                got[i].push(one(srv, load, secs, client_core)?);
            }
        }
        for (i, runs) in got.into_iter().enumerate() {
            let med = |f: fn(&Line) -> f64| crate::bench::median(runs.iter().map(f).collect());
            let l = Line {
                rps: med(|l| l.rps),
                p50_ms: med(|l| l.p50_ms),
                p99_ms: med(|l| l.p99_ms),
                cpu_us_per_req: med(|l| l.cpu_us_per_req),
            };
            eprintln!(
                "  {} {} depth {}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {:.2} µs CPU/req",
                srvs[i].name, load.path, load.depth, l.rps, l.p50_ms, l.p99_ms, l.cpu_us_per_req
            );
            lines[i].push(l);
        }
    }
    let servers = srvs
        .iter()
        .zip(lines)
        .zip(idle)
        .map(|((srv, lines), idle)| {
            let pin = server_core.map_or(String::new(), |c| format!(", core {c}"));
            (format!("{}{pin}", srv.name), lines, idle)
        })
        .collect();
    Ok(Results {
        servers,
        runs,
        secs,
        pinned: client_core.is_some(),
    })
}

/// A figure and, for every server but the first, its ratio to the first's.
fn cell(v: f64, base: f64, first: bool, digits: usize) -> String {
    if v.is_nan() {
        return "–".into();
    }
    if first {
        format!("{v:.digits$}")
    } else {
        format!("{v:.digits$} ({:.2}×)", v / base)
    }
}

/// The Markdown table: a row per load, each server's figures, http-server's
/// as ratios to hyper's.
pub fn report(r: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\nwrk (no pipelining) and h2load --h1 -m 16 (pipelined){}, {CONNS} connections, {} s per run, medians of {} run(s), servers interleaved; ratios are http-server ÷ hyper (req/s: higher is better; latency and CPU/req, the server's user + system time from /proc: lower is better).\n",
        if r.pinned { " on core 0" } else { "" },
        r.secs,
        r.runs
    );
    let _ = write!(md, "| load |");
    for (name, _, _) in &r.servers {
        let _ = write!(md, " {name} req/s | p50 ms | p99 ms | CPU µs/req |");
    }
    let _ = writeln!(md);
    let _ = write!(md, "|---|");
    for _ in &r.servers {
        let _ = write!(md, "---|---|---|---|");
    }
    let _ = writeln!(md);
    let Some((_, base_lines, base_idle)) = r.servers.first() else {
        return md;
    };
    for (li, load) in LOADS.iter().enumerate() {
        let b = base_lines[li];
        let _ = write!(md, "| GET {} depth {} |", load.path, load.depth);
        for (si, (_, lines, _)) in r.servers.iter().enumerate() {
            let l = lines[li];
            let first = si == 0;
            let _ = write!(
                md,
                " {} | {} | {} | {} |",
                cell(l.rps, b.rps, first, 0),
                cell(l.p50_ms, b.p50_ms, first, 3),
                cell(l.p99_ms, b.p99_ms, first, 3),
                cell(l.cpu_us_per_req, b.cpu_us_per_req, first, 2)
            );
        }
        let _ = writeln!(md);
    }
    let _ = write!(md, "| {IDLE_CONNS} idle keep-alive connections, RSS each |");
    for (si, (_, _, idle)) in r.servers.iter().enumerate() {
        let _ = write!(md, " {} B | | | |", cell(*idle, *base_idle, si == 0, 0));
    }
    let _ = writeln!(md);
    md
}

/// Builds what the comparison runs.
pub fn build(paths: &Paths) -> Result<(), String> {
    crate::run(
        "cargo build --release (http-server, bench-hyper)",
        crate::cargo().current_dir(&paths.root).args([
            "build",
            "--release",
            "-p",
            "gaio-http-example",
            "--example",
            "http-server",
            "-p",
            "gaio-bench",
            "--bin",
            "bench-hyper",
        ]),
    )
}

/// `cargo xtask bench --http` on its own.
pub fn bench(paths: &Paths, quick: bool) -> Result<(), String> {
    if let Some(why) = missing_tools() {
        return Err(why);
    }
    build(paths)?;
    let r = run(&paths.release(), quick)?;
    let md = report(&r);
    println!("{md}");
    let out = paths.target.join("bench");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let f = out.join("http.md");
    std::fs::write(&f, &md).map_err(|e| format!("{}: {e}", f.display()))?;
    eprintln!("bench --http: wrote {}", f.display());
    Ok(())
}
