//! `cargo xtask bench`: every server as its own process on loopback, driven by the
//! same load generator, figures side by side as ratios.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Paths;
use crate::load::{self, Rounds, Spec};
use gaio_testkit::percentile;

/// One server under test.
#[derive(Debug, Clone)]
struct Server {
    name: &'static str,
    /// The executable, relative to the release output folder.
    bin: &'static str,
    args: Vec<String>,
    /// A gaio server (gets ratio columns).
    gaio: bool,
    /// Skipped, loudly, when it cannot run here (io_uring disabled).
    optional: bool,
}

fn servers() -> Vec<Server> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    vec![
        Server {
            name: "raw epoll",
            bin: "bench-raw-epoll",
            args: vec![],
            gaio: false,
            optional: false,
        },
        Server {
            // The io_uring floor: multishot accept and receive, provided buffers.
            name: "raw io_uring",
            bin: "bench-raw-uring",
            args: vec![],
            gaio: false,
            optional: true,
        },
        Server {
            name: "tokio",
            bin: "bench-tokio",
            args: vec![],
            gaio: false,
            optional: false,
        },
        Server {
            name: "gaio-core",
            bin: "examples/echo",
            args: vec![],
            gaio: true,
            optional: false,
        },
        Server {
            // The copy-free echo style: read into the connection's own buffer and
            // write that buffer back (sized for the 1 KiB scenarios).
            name: "gaio-core owned 1 KiB",
            bin: "examples/echo",
            args: vec!["--owned".into(), "1024".into()],
            gaio: true,
            optional: false,
        },
        Server {
            name: "gaio-core busy-poll 50µs",
            bin: "examples/echo",
            args: vec!["--busy-poll".into(), "50".into()],
            gaio: true,
            optional: false,
        },
        Server {
            name: "gaio-pool",
            bin: "examples/echo-pool",
            args: vec!["--watchers".into(), cores.to_string()],
            gaio: true,
            optional: false,
        },
        Server {
            // The same echo on the io_uring driver (skipped where it is refused).
            name: "gaio-core io_uring",
            bin: "examples/echo",
            args: vec!["--backend".into(), "uring".into()],
            gaio: true,
            optional: true,
        },
        Server {
            name: "gaio-pool io_uring",
            bin: "examples/echo-pool",
            args: vec![
                "--watchers".into(),
                cores.to_string(),
                "--backend".into(),
                "uring".into(),
            ],
            gaio: true,
            optional: true,
        },
    ]
}

/// The instruction table: each server's user-space instructions per message
/// under callgrind, as a ratio to the raw epoll loop (the first row), all from the
/// same run. Short next to `servers()`, so `--only-instructions` is quick enough
/// to iterate on a hot path with.
fn instruction_servers() -> Vec<Server> {
    let server = |name, bin: &'static str, args: &[&str], optional| Server {
        name,
        bin,
        args: args.iter().map(|a| a.to_string()).collect(),
        gaio: bin.starts_with("examples/"),
        optional,
    };
    vec![
        server("raw epoll", "bench-raw-epoll", &[], false),
        server("mio", "bench-mio", &[], false),
        server("tokio", "bench-tokio", &[], false),
        server("gaio-core", "examples/echo", &[], false),
        server(
            "gaio-core owned 1 KiB",
            "examples/echo",
            &["--owned", "1024"],
            false,
        ),
        server(
            "gaio-core io_uring",
            "examples/echo",
            &["--backend", "uring"],
            true,
        ),
        server(
            "gaio-core owned 1 KiB io_uring",
            "examples/echo",
            &["--owned", "1024", "--backend", "uring"],
            true,
        ),
    ]
}

struct Running {
    child: Child,
    addr: SocketAddr,
}

impl Running {
    fn start(bin: &Path, args: &[String], wrapper: &[String]) -> io::Result<Running> {
        let mut cmd = if let Some((first, rest)) = wrapper.split_first() {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        let mut child = cmd
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let addr = listening_line(&mut child, bin)?;
        Ok(Running { child, addr })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU seconds of the server so far.
    fn cpu(&self) -> f64 {
        cpu_secs(self.pid())
    }

    fn rss_bytes(&self) -> u64 {
        rss_bytes(self.pid())
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }
}

/// Reads a server's first line, which must be `listening on ADDR` (bounded: a
/// server that never prints must not hang the bench; it is killed).
pub(crate) fn listening_line(child: &mut Child, bin: &Path) -> io::Result<SocketAddr> {
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(io::Error::other(format!(
            "{}: no 'listening on' line in 30 s",
            bin.display()
        )));
    };
    line.trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| {
            io::Error::other(format!("{}: unexpected first line {line:?}", bin.display()))
        })
}

/// User + system CPU seconds of process `pid` so far.
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(i) = stat.rfind(')') else { return 0.0 };
    let f: Vec<&str> = stat[i + 2..].split_whitespace().collect();
    let ticks = f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Resident memory of process `pid`.
pub(crate) fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// RSS growth of process `pid` per connection, after `n` connections to `addr`
/// each sent `request` once, read a reply ending in `reply_end`, and stayed
/// open and idle. `name` labels errors.
pub(crate) fn idle_rss_per_conn(
    name: &str,
    pid: u32,
    addr: SocketAddr,
    n: usize,
    request: &[u8],
    reply_end: &[u8],
) -> Result<f64, String> {
    use std::io::{Read, Write};
    let err = |e: io::Error| format!("{name}: {e}");
    let base = rss_bytes(pid);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(std::net::TcpStream::connect(addr).map_err(err)?);
    }
    // Every connection served once, so each is accepted and set up.
    let mut buf = [0u8; 1024];
    for c in &mut conns {
        c.write_all(request).map_err(err)?;
        c.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(err)?;
        let mut got = 0;
        while !buf[..got].ends_with(reply_end) {
            match c.read(&mut buf[got..]).map_err(err)? {
                0 => return Err(format!("{name}: closed an idle connection")),
                k => got += k,
            }
        }
    }
    Ok(rss_bytes(pid).saturating_sub(base) as f64 / n as f64)
}

impl Drop for Running {
    /// Stops the server on every path, early returns and errors included.
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill has no memory preconditions; the pid is our live child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the server's fd count holds still for 100 ms (bounded), and
/// returns it.
fn settled_fds(srv: &Running) -> usize {
    let end = Instant::now() + Duration::from_secs(5);
    let mut last = srv.fds();
    let mut since = Instant::now();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
        let now = srv.fds();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_millis(100) {
            break;
        }
    }
    last
}

/// Settings of one bench run.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub quick: bool,
    /// Add the instruction table (callgrind) after the main table.
    pub instructions: bool,
    /// The instruction table alone: no other scenario, no Redis comparison.
    pub only_instructions: bool,
}

impl Settings {
    fn runs(&self) -> usize {
        if self.quick { 1 } else { 3 }
    }
    fn secs(&self, quick: f64, full: f64) -> Duration {
        Duration::from_secs_f64(if self.quick { quick } else { full })
    }
}

const PATIENCE: Duration = Duration::from_secs(60);
const REGRESSION: [usize; 4] = [1024, 2048, 4096, 8192];

/// Every figure of one server (medians over runs).
#[derive(Debug, Default, Clone)]
struct Figures {
    rt_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    mb_per_s: f64,
    msgs_per_s: f64,
    cpu_ms_per_1k: f64,
    /// 1,000 conns × 128 B ping-pong: msgs/s and server CPU per 1,000 msgs.
    many_msgs_per_s: f64,
    many_cpu_ms_per_1k: f64,
    /// 100 conns streaming 128 B messages, 16 in flight each: msgs/s and server
    /// CPU per 1,000 msgs.
    stream_msgs_per_s: f64,
    stream_cpu_ms_per_1k: f64,
    /// System calls per message (perf's raw_syscalls:sys_enter on the server).
    sys_per_msg: f64,
    many_sys_per_msg: f64,
    completion_8k_s: f64,
    regression: Vec<(usize, f64)>,
    fit: (f64, f64, f64),
    idle_bytes_per_conn: f64,
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Least squares y = a·x + b; returns (slope, intercept, r²).
fn fit(points: &[(usize, f64)]) -> (f64, f64, f64) {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), &(x, y)| (a + x as f64, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for &(x, y) in points {
        let dx = x as f64 - mx;
        let dy = y - my;
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    let slope = sxy / sxx;
    let r2 = if syy == 0.0 {
        1.0
    } else {
        (sxy * sxy) / (sxx * syy)
    };
    (slope, my - slope * mx, r2)
}

/// Where `s`'s executable is; an error if it has not been built.
fn executable(release: &Path, s: &Server) -> io::Result<PathBuf> {
    let bin = release.join(s.bin);
    if !bin.exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no executable at {}", bin.display()),
        ));
    }
    Ok(bin)
}

fn measure(release: &Path, s: &Server, set: Settings) -> io::Result<Figures> {
    let bin = executable(release, s)?;
    let mut f = Figures::default();
    let (mut rt, mut p50, mut p99, mut mbs, mut mps, mut cpu, mut idle) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut many_mps, mut many_cpu, mut sys, mut many_sys) = (vec![], vec![], vec![], vec![]);
    let (mut stream_mps, mut stream_cpu) = (vec![], vec![]);
    let mut reg: Vec<Vec<f64>> = vec![Vec::new(); REGRESSION.len()];
    for run in 0..set.runs() {
        eprintln!("  {} run {}/{}", s.name, run + 1, set.runs());
        // 1 conn × 128 B ping-pong.
        let srv = Running::start(&bin, &s.args, &[])?;
        let o = load::run(
            srv.addr,
            Spec {
                conns: 1,
                msg: 128,
                rounds: Rounds::For(set.secs(1.0, 3.0)),
                latencies: true,
            },
            PATIENCE,
        )?;
        let mut lat = o.latencies_ns;
        lat.sort_unstable();
        rt.push(o.msgs as f64 / o.busy.as_secs_f64());
        p50.push(percentile(&lat, 0.50));
        p99.push(percentile(&lat, 0.99));
        // 1 conn × 64 KiB.
        let o = load::run(
            srv.addr,
            Spec {
                conns: 1,
                msg: 64 * 1024,
                rounds: Rounds::For(set.secs(1.0, 3.0)),
                latencies: false,
            },
            PATIENCE,
        )?;
        mbs.push(o.bytes as f64 / o.busy.as_secs_f64() / 1e6);
        // 100 conns × 1 KiB ping-pong, with server CPU.
        let c0 = srv.cpu();
        let o = load::run(
            srv.addr,
            Spec {
                conns: 100,
                msg: 1024,
                rounds: Rounds::For(set.secs(1.5, 3.0)),
                latencies: false,
            },
            PATIENCE,
        )?;
        let c1 = srv.cpu();
        mps.push(o.msgs as f64 / o.busy.as_secs_f64());
        cpu.push((c1 - c0) * 1000.0 / (o.msgs as f64 / 1000.0));
        // 1,000 conns × 128 B ping-pong, with server CPU.
        let many = Spec {
            conns: 1000,
            msg: 128,
            rounds: Rounds::For(set.secs(1.5, 3.0)),
            latencies: false,
        };
        let c0 = srv.cpu();
        let o = load::run(srv.addr, many, PATIENCE)?;
        let c1 = srv.cpu();
        many_mps.push(o.msgs as f64 / o.busy.as_secs_f64());
        many_cpu.push((c1 - c0) * 1000.0 / (o.msgs as f64 / 1000.0));
        // 100 conns streaming 128 B messages (16 in flight each), with server CPU.
        let c0 = srv.cpu();
        let o = load::stream(srv.addr, 100, 128, 16, set.secs(1.5, 3.0))?;
        let c1 = srv.cpu();
        stream_mps.push(o.msgs as f64 / o.busy.as_secs_f64());
        stream_cpu.push((c1 - c0) * 1000.0 / (o.msgs as f64 / 1000.0));
        // System calls per message, counted by perf in runs of their own (the
        // tracepoint costs CPU, so not in the runs above).
        let short = Rounds::For(set.secs(0.5, 1.0));
        sys.push(syscalls_per_msg(srv.pid(), || {
            load::run(
                srv.addr,
                Spec {
                    conns: 100,
                    msg: 1024,
                    rounds: short,
                    latencies: false,
                },
                PATIENCE,
            )
        })?);
        many_sys.push(syscalls_per_msg(srv.pid(), || {
            load::run(
                srv.addr,
                Spec {
                    rounds: short,
                    ..many
                },
                PATIENCE,
            )
        })?);
        drop(srv); // SIGTERM (callgrind writes its profile), then wait
        // n conns × 1 KiB once, each on a fresh server (the seed's 8K test).
        for (k, &n) in REGRESSION.iter().enumerate() {
            let srv = Running::start(&bin, &s.args, &[])?;
            let o = load::run(
                srv.addr,
                Spec {
                    conns: n,
                    msg: 1024,
                    rounds: Rounds::Once,
                    latencies: false,
                },
                PATIENCE,
            )?;
            reg[k].push(o.elapsed.as_secs_f64());
            drop(srv); // SIGTERM (callgrind writes its profile), then wait
        }
        // Idle memory: RSS growth per registered connection.
        let srv = Running::start(&bin, &s.args, &[])?;
        // Warm the server once so one-off allocations are not counted per conn.
        load::run(
            srv.addr,
            Spec {
                conns: 1,
                msg: 16,
                rounds: Rounds::Once,
                latencies: false,
            },
            PATIENCE,
        )?;
        // The warm-up connection's fd may still be closing: wait for a stable base.
        let base_fds = settled_fds(&srv);
        let rss0 = srv.rss_bytes();
        let n = 8000;
        let conns = load::idle(srv.addr, n)?;
        let end = Instant::now() + PATIENCE;
        while srv.fds() < base_fds + n {
            if Instant::now() >= end {
                return Err(io::Error::other(format!(
                    "{}: only {} of {n} idle connections registered",
                    s.name,
                    srv.fds().saturating_sub(base_fds)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let batch buffers from the accept burst settle, as in a server's life.
        std::thread::sleep(Duration::from_millis(300));
        let rss1 = srv.rss_bytes();
        idle.push((rss1 as f64 - rss0 as f64) / n as f64);
        drop(conns);
        drop(srv); // SIGTERM (callgrind writes its profile), then wait
    }
    f.rt_per_s = median(rt);
    f.p50_us = median(p50);
    f.p99_us = median(p99);
    f.mb_per_s = median(mbs);
    f.msgs_per_s = median(mps);
    f.cpu_ms_per_1k = median(cpu);
    f.many_msgs_per_s = median(many_mps);
    f.many_cpu_ms_per_1k = median(many_cpu);
    f.stream_msgs_per_s = median(stream_mps);
    f.stream_cpu_ms_per_1k = median(stream_cpu);
    f.sys_per_msg = median(sys);
    f.many_sys_per_msg = median(many_sys);
    f.regression = REGRESSION
        .iter()
        .zip(reg)
        .map(|(&n, v)| (n, median(v)))
        .collect();
    f.completion_8k_s = f.regression.last().map_or(f64::NAN, |p| p.1);
    f.fit = fit(&f.regression);
    f.idle_bytes_per_conn = median(idle);
    Ok(f)
}

/// The server's system calls per message while `load` runs: `perf stat -e
/// raw_syscalls:sys_enter -p PID` around it (every thread of the server). NaN,
/// with a note, where perf cannot count them.
fn syscalls_per_msg(pid: u32, load: impl FnOnce() -> io::Result<load::Outcome>) -> io::Result<f64> {
    let perf = Command::new("perf")
        .args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p"])
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(perf) = perf else {
        eprintln!("  (no perf here: syscalls per message not counted)");
        load()?;
        return Ok(f64::NAN);
    };
    // perf needs a moment to attach before the load starts.
    std::thread::sleep(Duration::from_millis(200));
    let o = load();
    // SAFETY: SIGINT to our own child, which makes perf print its counts.
    unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
    let out = perf.wait_with_output()?;
    let o = o?;
    let text = String::from_utf8_lossy(&out.stderr);
    let count = text
        .lines()
        .find(|l| l.contains("raw_syscalls:sys_enter"))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.trim().parse::<f64>().ok());
    Ok(match count {
        Some(n) if o.msgs > 0 => n / o.msgs as f64,
        _ => {
            eprintln!("  (perf counted no syscalls: {})", text.trim());
            f64::NAN
        }
    })
}

/// User-space instructions per echoed message under callgrind: the difference
/// between a long and a short run of 100 conns × 1 KiB, so start-up and connection
/// set-up cancel out.
fn instructions(bin: &Path, args: &[String], set: Settings) -> io::Result<f64> {
    let (short, long) = instruction_rounds(set);
    let mut ir = Vec::new();
    for per_conn in [short, long] {
        let out = std::env::temp_dir().join(format!(
            "gaio-callgrind-{}-{per_conn}.out",
            std::process::id()
        ));
        let wrapper = vec![
            "valgrind".to_string(),
            "--tool=callgrind".into(),
            format!("--callgrind-out-file={}", out.display()),
            "--quiet".into(),
        ];
        let mut srv = Running::start(bin, args, &wrapper)?;
        load::run(
            srv.addr,
            Spec {
                conns: 100,
                msg: 1024,
                rounds: Rounds::Count(per_conn),
                latencies: false,
            },
            Duration::from_secs(600),
        )?;
        let dumped = callgrind_dump(srv.pid());
        // The counts are on disk: no SIGTERM, which an io_uring server would not see.
        let _ = srv.child.kill();
        drop(srv);
        let dump = out.with_extension("out.1");
        let text = dumped.and_then(|()| std::fs::read_to_string(&dump));
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(&dump);
        let text = text?;
        let total = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("summary:")
                    .or_else(|| l.strip_prefix("totals:"))
            })
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .ok_or_else(|| io::Error::other("no callgrind summary"))?;
        ir.push(total);
    }
    Ok((ir[1] - ir[0]) / (100.0 * (long - short) as f64))
}

/// Has callgrind in process `pid` write its counts so far (to `<out file>.1`)
/// while the server runs, rather than at exit on SIGTERM: valgrind 3.19 does not
/// count `io_uring_enter` as a blocking call, so it holds signals back while a
/// server waits in io_uring, and that server never sees SIGTERM. vgdb, behind
/// callgrind_control, interrupts the wait. Bounded: an answer in 60 s or an error.
fn callgrind_dump(pid: u32) -> io::Result<()> {
    let mut c = Command::new("callgrind_control")
        .arg("--dump")
        .arg(pid.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let end = Instant::now() + Duration::from_secs(60);
    while c.try_wait()?.is_none() {
        if Instant::now() >= end {
            let _ = c.kill();
            let _ = c.wait();
            return Err(io::Error::other(
                "callgrind_control --dump: no answer in 60 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // It exits 0 on failure too; success is its "OK.".
    let said = String::from_utf8_lossy(&c.wait_with_output()?.stdout).into_owned();
    if said.contains("OK.") {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "callgrind_control --dump: {}",
            said.trim()
        )))
    }
}

/// Round trips per connection of the short and the long callgrind run.
fn instruction_rounds(set: Settings) -> (u64, u64) {
    if set.quick { (20, 120) } else { (20, 520) }
}

/// Measures every row of `instruction_servers()` and returns the Markdown table.
fn instruction_table(release: &Path, set: Settings) -> Result<String, String> {
    let mut rows: Vec<(&str, f64)> = Vec::new();
    for s in instruction_servers() {
        eprintln!("instructions: {}", s.name);
        match executable(release, &s).and_then(|bin| instructions(&bin, &s.args, set)) {
            Ok(v) => {
                eprintln!("  {} instr/msg", thousands(v));
                rows.push((s.name, v));
            }
            Err(e) if s.optional => eprintln!("instructions: SKIPPING {}: {e}", s.name),
            Err(e) => return Err(format!("{} under callgrind: {e}", s.name)),
        }
    }
    let raw = rows[0].1;
    let (short, long) = instruction_rounds(set);
    let mut md = format!(
        "\nUser-space instructions per message (valgrind callgrind, 100 conns × 1 KiB \
         ping-pong; a run of {long} minus a run of {short} round trips per connection, so \
         start-up and set-up cancel out). × raw: ÷ the raw epoll loop, same run.\n\n\
         | server | instr per msg | × raw |\n|---|---|---|\n"
    );
    for (name, v) in rows {
        let _ = writeln!(md, "| {name} | {} | {} |", thousands(v), ratio(v, raw));
    }
    Ok(md)
}

/// `1452.3` → `1,452`.
fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < -0.5 { format!("-{out}") } else { out }
}

fn ratio(x: f64, base: f64) -> String {
    if base.is_finite() && base > 0.0 && x.is_finite() {
        format!("{:.2}×", x / base)
    } else {
        "–".into()
    }
}

fn report(results: &[(Server, Figures)], set: Settings, machine: &str) -> String {
    let raw = results
        .iter()
        .find(|(s, _)| s.name == "raw epoll")
        .map(|r| r.1.clone())
        .unwrap_or_default();
    let tokio = results
        .iter()
        .find(|(s, _)| s.name == "tokio")
        .map(|r| r.1.clone())
        .unwrap_or_default();
    let floor = results
        .iter()
        .find(|(s, _)| s.name == "raw io_uring")
        .map(|r| r.1.clone())
        .unwrap_or_default();
    type Metric = (&'static str, fn(&Figures) -> f64, &'static str, bool);
    let metrics: Vec<Metric> = vec![
        (
            "1 conn × 128 B ping-pong",
            |f| f.rt_per_s,
            "round trips/s",
            true,
        ),
        ("1 conn × 128 B p50 latency", |f| f.p50_us, "µs", false),
        ("1 conn × 128 B p99 latency", |f| f.p99_us, "µs", false),
        ("1 conn × 64 KiB echo", |f| f.mb_per_s, "MB/s", true),
        (
            "100 conns × 1 KiB ping-pong",
            |f| f.msgs_per_s,
            "msgs/s",
            true,
        ),
        (
            "server CPU per 1,000 msgs (100 × 1 KiB)",
            |f| f.cpu_ms_per_1k,
            "ms",
            false,
        ),
        (
            "1,000 conns × 128 B ping-pong",
            |f| f.many_msgs_per_s,
            "msgs/s",
            true,
        ),
        (
            "server CPU per 1,000 msgs (1,000 × 128 B)",
            |f| f.many_cpu_ms_per_1k,
            "ms",
            false,
        ),
        (
            "100 conns × 128 B streaming, 16 in flight",
            |f| f.stream_msgs_per_s,
            "msgs/s",
            true,
        ),
        (
            "server CPU per 1,000 msgs (streaming)",
            |f| f.stream_cpu_ms_per_1k,
            "ms",
            false,
        ),
        (
            "server syscalls per msg (100 × 1 KiB)",
            |f| f.sys_per_msg,
            "calls",
            false,
        ),
        (
            "server syscalls per msg (1,000 × 128 B)",
            |f| f.many_sys_per_msg,
            "calls",
            false,
        ),
        (
            "8,192 conns × 1 KiB once",
            |f| f.completion_8k_s,
            "s",
            false,
        ),
        (
            "idle RSS per connection (8,000)",
            |f| f.idle_bytes_per_conn,
            "B",
            false,
        ),
    ];
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {machine}. Mode: {}; medians of {} run(s). Ratios are gaio ÷ raw epoll and gaio ÷ tokio, from the same run.\n",
        if set.quick { "--quick" } else { "full" },
        set.runs()
    );
    let _ = write!(md, "| scenario | unit |");
    for (s, _) in results {
        let _ = write!(md, " {} |", s.name);
    }
    let _ = write!(md, "\n|---|---|");
    for _ in results {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    let mut rows: Vec<(String, String, Vec<String>)> = metrics
        .iter()
        .map(|(name, get, unit, _)| {
            let cells = results
                .iter()
                .map(|(s, f)| {
                    let v = get(f);
                    let shown = fmt_num(v);
                    if s.gaio && s.name.contains("io_uring") {
                        format!(
                            "{shown} ({} raw, {} tokio, {} raw io_uring)",
                            ratio(v, get(&raw)),
                            ratio(v, get(&tokio)),
                            ratio(v, get(&floor))
                        )
                    } else if s.gaio {
                        format!(
                            "{shown} ({} raw, {} tokio)",
                            ratio(v, get(&raw)),
                            ratio(v, get(&tokio))
                        )
                    } else if s.name == "raw io_uring" {
                        format!("{shown} ({} raw)", ratio(v, get(&raw)))
                    } else {
                        shown
                    }
                })
                .collect();
            (name.to_string(), unit.to_string(), cells)
        })
        .collect();
    rows.push((
        "regression: completion = slope·conns + intercept".into(),
        "s".into(),
        results
            .iter()
            .map(|(_, f)| format!("{:.3e}·x + {:.3} (R² {:.3})", f.fit.0, f.fit.1, f.fit.2))
            .collect(),
    ));
    for (name, unit, cells) in rows {
        let _ = write!(md, "| {name} | {unit} |");
        for c in cells {
            let _ = write!(md, " {c} |");
        }
        md.push('\n');
    }
    let _ = writeln!(md, "\nRegression points (conns → seconds):\n");
    for (s, f) in results {
        let pts: Vec<String> = f
            .regression
            .iter()
            .map(|(n, t)| format!("{n} → {t:.3}"))
            .collect();
        let _ = writeln!(md, "- {}: {}", s.name, pts.join(", "));
    }
    md
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v >= 1000.0 {
        format!("{:.0}", v)
    } else if v >= 10.0 {
        format!("{:.1}", v)
    } else {
        format!("{:.3}", v)
    }
}

/// An SVG line plot of completion time over connections, one line per server.
fn svg(results: &[(Server, Figures)]) -> String {
    let (w, h, pad) = (640.0, 400.0, 50.0);
    let max_x = *REGRESSION.last().unwrap() as f64;
    let max_y = results
        .iter()
        .flat_map(|(_, f)| f.regression.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.1;
    let px = |x: f64| pad + x / max_x * (w - 2.0 * pad);
    let py = |y: f64| h - pad - y / max_y * (h - 2.0 * pad);
    let colors = [
        "#888888", "#d62728", "#1f77b4", "#17becf", "#2ca02c", "#9467bd",
    ];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\">n connections × 1 KiB echo: completion time</text>\n\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>\n",
        w / 2.0,
        h - pad,
        w - pad,
        h - pad,
        h - pad
    );
    for &n in &REGRESSION {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{n}</text>",
            px(n as f64),
            h - pad + 16.0
        );
    }
    for k in 0..=4 {
        let y = max_y * k as f64 / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{y:.2}s</text>",
            pad - 4.0,
            py(y) + 4.0
        );
    }
    for (i, (srv, f)) in results.iter().enumerate() {
        let c = colors[i % colors.len()];
        let pts: Vec<String> = f
            .regression
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x as f64), py(y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
            pts.join(" ")
        );
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" fill=\"{c}\">{}</text>",
            pad + 10.0,
            pad + 16.0 * i as f64,
            srv.name
        );
    }
    s.push_str("</svg>\n");
    s
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

/// `cargo build --release` of just `servers`' executables.
fn build(paths: &Paths, servers: &[Server]) -> Result<(), String> {
    let mut cmd = crate::cargo();
    cmd.current_dir(&paths.root)
        .args(["build", "--release", "-p", "gaio", "-p", "gaio-bench"]);
    let mut bins: Vec<&str> = servers.iter().map(|s| s.bin).collect();
    bins.sort_unstable();
    bins.dedup();
    for bin in &bins {
        match bin.strip_prefix("examples/") {
            Some(example) => cmd.args(["--example", example]),
            None => cmd.args(["--bin", bin]),
        };
    }
    crate::run(
        &format!("cargo build --release ({})", bins.join(", ")),
        &mut cmd,
    )
}

pub fn bench(paths: &Paths, set: Settings) -> Result<(), String> {
    gaio_testkit::raise_fd_limit();
    let release = paths.release();
    let started = Instant::now();
    let out = paths.target.join("bench");
    let write = |name: &str, body: &str| {
        let f = out.join(name);
        std::fs::write(&f, body).map_err(|e| format!("{}: {e}", f.display()))
    };
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    if set.only_instructions {
        build(paths, &instruction_servers())?;
        let md = format!(
            "Machine: {}.\n{}",
            machine(),
            instruction_table(&release, set)?
        );
        println!("{md}");
        // Its own file: a partial run must not overwrite a full report.md.
        write("instructions.md", &md)?;
        eprintln!(
            "bench: done in {:.0} s; wrote instructions.md in {}",
            started.elapsed().as_secs_f64(),
            out.display()
        );
        return Ok(());
    }
    crate::run(
        "cargo build --release (gaio examples, gaio-bench baselines)",
        crate::cargo().current_dir(&paths.root).args([
            "build",
            "--release",
            "-p",
            "gaio",
            "--examples",
            "-p",
            "gaio-bench",
            "--bins",
        ]),
    )?;
    let mut results = Vec::new();
    for s in servers() {
        eprintln!("bench: {}", s.name);
        let f = match measure(&release, &s, set) {
            Ok(f) => f,
            Err(e) if s.optional => {
                eprintln!("bench: SKIPPING {}: {e}", s.name);
                continue;
            }
            Err(e) => return Err(format!("{}: {e}", s.name)),
        };
        eprintln!(
            "  {:.0} rt/s, p50 {:.1} µs, {:.0} MB/s, {:.0} msgs/s, {:.3} ms CPU/1k msgs, 8k in {:.3} s, {:.0} B/idle conn",
            f.rt_per_s,
            f.p50_us,
            f.mb_per_s,
            f.msgs_per_s,
            f.cpu_ms_per_1k,
            f.completion_8k_s,
            f.idle_bytes_per_conn,
        );
        results.push((s, f));
    }
    let mut md = report(&results, set, &machine());
    if set.instructions {
        md.push_str(&instruction_table(&release, set)?);
    }
    if !set.quick {
        // The full bench includes the Redis comparison when the tools are here.
        match crate::redis::missing_tools() {
            Some(why) => {
                eprintln!("bench: SKIPPING the Redis comparison: {why}");
                md.push_str(&format!("\nRedis comparison skipped: {why}.\n"));
            }
            None => md.push_str(&crate::redis::report(&crate::redis::run(
                &release, set.quick,
            )?)),
        }
        // The TLS comparison needs nothing but what cargo builds.
        crate::tls::build(paths)?;
        md.push_str(&crate::tls::report(&crate::tls::run(
            &release,
            &out.join("tls-cert"),
            set.quick,
        )?));
        // And the HTTP comparison, likewise.
        match crate::http::missing_tools() {
            Some(why) => {
                eprintln!("bench: SKIPPING the HTTP comparison: {why}");
                md.push_str(&format!("\nHTTP comparison skipped: {why}.\n"));
            }
            None => {
                crate::http::build(paths)?;
                md.push_str(&crate::http::report(&crate::http::run(
                    &release, set.quick,
                )?));
            }
        }
    }
    println!("{md}");
    write("report.md", &md)?;
    write("regression.svg", &svg(&results))?;
    eprintln!(
        "bench: done in {:.0} s; wrote report.md and regression.svg in {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}
