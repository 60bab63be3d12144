//! Project automation, run as `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! Tasks:
//! * `ci`: what `.ci/run` checks — `cargo fmt --check`, clippy with `-D warnings`
//!   (for Linux, then type-checked for macOS and the BSDs), `cargo doc` without
//!   warnings, the whole test suite, and `bench --quick` as a smoke test.
//! * `bench [--quick] [--instructions | --only-instructions] [--redis]`: every echo
//!   server (gaio-core, gaio-pool, tokio, a raw epoll loop) as its own process,
//!   driven by one load generator; prints a Markdown table and writes `report.md`
//!   and `regression.svg` under `<target dir>/bench/`. `--only-instructions`: just
//!   the callgrind table, to iterate on a hot path.
//! * `memcheck`: the gaio-sys and gaio-core tests under valgrind memcheck.
//! * `soak [--secs N]`: a mixed workload against the gaio-pool echo server, with a
//!   summary of operations, errors, RSS and fds.
//! * `load --addr ADDR …`: the bench's verifying load generator against any server.
//!
//! Every task answers `-h`/`--help` with its usage and exits 0 without running;
//! an unknown option prints the usage to stderr and exits 2. Paths come from
//! `cargo metadata`, so any `CARGO_TARGET_DIR` works.

mod bench;
mod http;
mod load;
mod memcheck;
mod redis;
mod soak;
mod tls;
mod udp;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const HELP: &str = "\
usage: cargo xtask <task> [options]     (cargo xtask <task> --help for a task's options)

tasks:
  ci         fmt --check, clippy -D warnings (Linux, then macOS and BSD targets), doc,
             cargo test --workspace, then bench --quick as a smoke test
  bench      echo servers side by side (gaio-core, gaio-pool, tokio, raw epoll)
  memcheck   gaio-sys and gaio-core tests under valgrind memcheck (zero errors)
  soak       mixed echo + timeout + free load on the gaio-pool echo server
  load       drive any echo server with the bench's verifying load generator
  help       this text
";

const CI_USAGE: &str = "\
usage: cargo xtask ci

Runs, in order, stopping at the first failure: cargo fmt --check; cargo clippy
--workspace --all-targets -D warnings; the same clippy for each of
x86_64-apple-darwin, aarch64-apple-darwin, x86_64-unknown-freebsd and
x86_64-unknown-netbsd (a missing target is installed with rustup; if rustup cannot
download it, that target is skipped with a one-line note; on the Apple and NetBSD
targets gaio-tls, gaio's examples, the bench and xtask are skipped, with a
one-line note: ring compiles C and no C compiler for them is here); cargo doc --workspace
--no-deps with warnings denied; cargo test --workspace (on the default backend,
epoll); the tests of gaio-core (every core test, the model-based test, the fuzz
target's replay, the zero-allocation test), gaio-pool, gaio-tls and the examples again with
GAIO_BACKEND=uring (reported as SKIPPED, loudly, where io_uring is unavailable);
cargo xtask bench --quick.
";

const BENCH_USAGE: &str = "\
usage: cargo xtask bench [--quick] [--instructions | --only-instructions] [--redis | --http | --tls]

Every echo server (raw epoll, raw io_uring, tokio, gaio-core, gaio-core busy-poll,
gaio-pool, gaio-core and gaio-pool on io_uring; the io_uring ones skipped, loudly,
where io_uring is refused) as its own process on loopback, driven by one verifying
load generator: ping-pong at 1, 100 and 1,000 connections, 64 KiB echo, 100
connections streaming 128 B (16 in flight), 1,024-8,192 connections once, idle
memory, server CPU and (perf) syscalls per message. Prints a Markdown table and
writes <target dir>/bench/report.md and regression.svg. The
full bench (without --quick) adds the Redis comparison when redis-benchmark and
redis-server are installed (`sudo apt-get install redis-tools redis-server`) and
the HTTP comparison when wrk and h2load are (`sudo apt-get install wrk
nghttp2-client`), and says so loudly when they are not.

  --quick          one run per scenario, shorter loads (about 75 s)
  --instructions   add a table of user-space instructions per message (valgrind
                   callgrind, 100 conns × 1 KiB ping-pong, a long run minus a
                   short one) after the main table: raw epoll, mio, tokio, and
                   examples/echo and echo --owned 1024 on epoll and io_uring
                   (io_uring skipped, loudly, where refused), each with its
                   ratio to the raw epoll loop
  --only-instructions
                   that table alone, no other scenario (under a minute; builds
                   only those servers): for iterating on the hot path; writes
                   <target dir>/bench/instructions.md
  --redis          only the Redis comparison: examples/resp-server (1 and N
                   watchers) and redis-server under redis-benchmark -t
                   ping,set,get,incr,lpush,lpop,mset at -c 50 -P 1, -c 50 -P 16
                   and -c 1000 -P 1 (requests/s, p50, server CPU per request
                   from /proc), then RSS per idle client with 10,000 connected;
                   writes <target dir>/bench/redis.md. Fails if the tools are
                   missing.
  --http           only the HTTP comparison: examples/http-server (1 watcher)
                   and hyper 1.x on a tokio current-thread runtime, each on
                   core 1, wrk and h2load on core 0: GET /plaintext and /json
                   at 256 connections, /plaintext 16 deep (requests/s, p50/p99,
                   server CPU per request), then RSS per idle keep-alive
                   connection with 10,000 open; writes <target dir>/bench/http.md.
                   Fails if the tools are missing.
  --tls            only the TLS comparison: examples/echo --tls-cert (1 watcher)
                   and tokio + tokio-rustls (current-thread), the same rustls
                   configuration, each on core 1, the load generator on core 0:
                   64 KiB echo MB/s, 100 connections x 1 KiB ping-pong (msgs/s,
                   server CPU per message), full and resumed handshakes/s, RSS
                   per idle TLS connection with 10,000 open, and gaio's
                   plaintext 64 KiB echo beside it; writes <target dir>/bench/tls.md.
";

const MEMCHECK_USAGE: &str = "\
usage: cargo xtask memcheck

Runs the gaio-sys and gaio-core test binaries one test at a time under valgrind
memcheck (the scale scenarios skipped); any memcheck error fails the task.
";

const SOAK_USAGE: &str = "\
usage: cargo xtask soak [--secs N]

Runs echo + timeouts + frees against the gaio-pool echo server for N seconds
(default 60), then prints a summary of operations, errors, RSS and fds.
";

const LOAD_USAGE: &str = "\
usage: cargo xtask load --addr ADDR [--conns N] [--msg BYTES] [--secs S | --count PER_CONN] [--depth D] [--tls CERT.pem | --udp]

Drives an echo server at ADDR with the bench's verifying load generator (every
echoed byte compared): N connections (default 100) of BYTES-byte messages
(default 1024), for S seconds (default 5) or PER_CONN round trips each. With
--depth D each connection streams instead: D messages in flight, one more sent
for each echoed (for --secs only; no latencies). With --tls the connections
speak TLS 1.3 (TLS13_AES_128_GCM_SHA256), trusting the certificate in CERT.pem
for the name localhost, and ping-pong for --secs after every handshake (no
latencies). With --udp the server is a UDP echo server: N flows (a UDP socket
each) send BYTES-byte datagrams (at least 12: flow and sequence number first),
D in flight per flow (default 8), for --secs; every echo is checked, and lost
datagrams (no echo within 200 ms) are counted apart from corrupt and duplicated
ones. Run several at once for a multi-process load.
";

/// Why a task did not complete.
enum Fail {
    /// `--help`: print the usage to stdout, exit 0.
    Help(&'static str),
    /// A bad command line: the message and the usage to stderr, exit 2.
    Usage(String, &'static str),
    /// The task ran and failed: exit 1.
    Failed(String),
}

impl From<String> for Fail {
    fn from(e: String) -> Fail {
        Fail::Failed(e)
    }
}

/// A task's command line: flags and their values, with `--help` and unknown
/// options handled the same way by every task.
struct Args<'a> {
    usage: &'static str,
    it: std::slice::Iter<'a, String>,
}

impl<'a> Args<'a> {
    fn new(args: &'a [String], usage: &'static str) -> Args<'a> {
        Args {
            usage,
            it: args.iter(),
        }
    }

    /// The next flag; `Err(Help)` for `-h`/`--help`.
    fn next_flag(&mut self) -> Result<Option<&'a str>, Fail> {
        match self.it.next().map(String::as_str) {
            Some("-h" | "--help") => Err(Fail::Help(self.usage)),
            other => Ok(other),
        }
    }

    /// The value that follows `flag`, parsed.
    fn value<T: std::str::FromStr>(&mut self, flag: &str) -> Result<T, Fail>
    where
        T::Err: std::fmt::Display,
    {
        let v = self
            .it
            .next()
            .ok_or_else(|| self.bad(format!("{flag} needs a value")))?;
        v.parse()
            .map_err(|e| self.bad(format!("{flag} {v:?}: {e}")))
    }

    fn bad(&self, msg: String) -> Fail {
        Fail::Usage(msg, self.usage)
    }

    fn unknown(&self, flag: &str) -> Fail {
        self.bad(format!("unknown option {flag}"))
    }

    /// For tasks without options.
    fn none(mut self) -> Result<(), Fail> {
        match self.next_flag()? {
            Some(f) => Err(self.unknown(f)),
            None => Ok(()),
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or(&[]);
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(rest),
        Some("bench") => bench_cmd(rest),
        Some("memcheck") => Args::new(rest, MEMCHECK_USAGE)
            .none()
            .and_then(|()| Ok(memcheck::memcheck(&paths()?)?)),
        Some("soak") => soak_cmd(rest),
        Some("load") => load_cmd(rest),
        Some("help" | "-h" | "--help") => Err(Fail::Help(HELP)),
        Some(t) => Err(Fail::Usage(format!("unknown task {t}"), HELP)),
        None => Err(Fail::Usage("no task given".into(), HELP)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail::Help(usage)) => {
            print!("{usage}");
            ExitCode::SUCCESS
        }
        Err(Fail::Usage(msg, usage)) => {
            eprintln!("xtask: {msg}\n\n{usage}");
            ExitCode::from(2)
        }
        Err(Fail::Failed(e)) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where the workspace is and where cargo puts what it builds.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub root: PathBuf,
    /// `target_directory` from `cargo metadata`: honours `CARGO_TARGET_DIR`,
    /// `build.target-dir` and every other way to move it.
    pub target: PathBuf,
}

impl Paths {
    /// The release build's output folder (`<target>/release`).
    pub fn release(&self) -> PathBuf {
        self.target.join("release")
    }
}

fn paths() -> Result<Paths, String> {
    // xtask lives one level below the workspace root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("xtask is not inside a workspace")?
        .to_path_buf();
    let out = cargo()
        .current_dir(&root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .map_err(|e| format!("cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let json = String::from_utf8_lossy(&out.stdout);
    let target = json_string(&json, "target_directory")
        .ok_or("cargo metadata printed no target_directory")?;
    Ok(Paths {
        root,
        target: PathBuf::from(target),
    })
}

/// The string value of the first `"key":"…"` in `json`, unescaped. Enough for
/// cargo's own output without a JSON dependency.
pub(crate) fn json_string(json: &str, key: &str) -> Option<String> {
    let tag = format!("\"{key}\":\"");
    let start = json.find(&tag)? + tag.len();
    let mut out = String::new();
    let mut chars = json[start..].chars();
    loop {
        match chars.next()? {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                c => out.push(c), // \" \\ \/
            },
            c => out.push(c),
        }
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(what: &str, cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: {what}");
    let status = cmd.status().map_err(|e| format!("{what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// The targets `ci` type-checks besides the host: the kqueue backend, which no
/// machine here can run.
const CROSS_TARGETS: &[&str] = &[
    "x86_64-apple-darwin",
    "aarch64-apple-darwin",
    "x86_64-unknown-freebsd",
    "x86_64-unknown-netbsd",
];

fn ci(args: &[String]) -> Result<(), Fail> {
    Args::new(args, CI_USAGE).none()?;
    let p = paths()?;
    let root = &p.root;
    run(
        "cargo fmt --check",
        cargo()
            .current_dir(root)
            .args(["fmt", "--all", "--", "--check"]),
    )?;
    let clippy = |target: Option<&str>| {
        let mut c = cargo();
        c.current_dir(root)
            .args(["clippy", "--workspace", "--all-targets"]);
        if let Some(t) = target {
            c.args(["--target", t]);
        }
        c.args(["--", "-D", "warnings"]);
        c
    };
    run("cargo clippy", &mut clippy(None))?;
    for t in CROSS_TARGETS {
        if !ensure_target(t)? {
            continue;
        }
        if t.contains("apple") || t.contains("netbsd") {
            // ring (gaio-tls' crypto) compiles C for the target, and no C
            // compiler for Apple or NetBSD targets is here (FreeBSD's works with
            // the host's): the packages that build it (gaio-tls; gaio's
            // examples, the bench and xtask, which use it) are skipped there;
            // gaio's library itself is still checked.
            eprintln!(
                "xtask: {t}: skipping gaio-tls and what builds it (ring needs a C compiler for {t})"
            );
            let mut c = cargo();
            c.current_dir(root)
                .args(["clippy", "--workspace", "--all-targets", "--target", t])
                .args([
                    "--exclude",
                    "gaio-tls",
                    "--exclude",
                    "gaio",
                    "--exclude",
                    "gaio-bench",
                ])
                .args(["--exclude", "xtask"])
                .args(["--", "-D", "warnings"]);
            run(
                &format!("cargo clippy --target {t} (without gaio-tls)"),
                &mut c,
            )?;
            run(
                &format!("cargo clippy -p gaio --lib --target {t}"),
                cargo()
                    .current_dir(root)
                    .args(["clippy", "-p", "gaio", "--lib", "--target", t])
                    .args(["--", "-D", "warnings"]),
            )?;
        } else {
            run(&format!("cargo clippy --target {t}"), &mut clippy(Some(t)))?;
        }
    }
    run(
        "cargo doc",
        cargo()
            .current_dir(root)
            .args(["doc", "--workspace", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    run(
        "cargo test",
        cargo().current_dir(root).args(["test", "--workspace"]),
    )?;
    match uring_unavailable() {
        None => run(
            "cargo test on io_uring (GAIO_BACKEND=uring)",
            cargo()
                .current_dir(root)
                .args(["test", "-p", "gaio-core", "-p", "gaio-pool", "-p", "gaio"])
                .args([
                    "-p",
                    "gaio-resp-check",
                    "-p",
                    "gaio-http-example",
                    "-p",
                    "gaio-tls",
                ])
                .args(["--tests"])
                .env("GAIO_BACKEND", "uring"),
        )?,
        Some(why) => {
            eprintln!("==============================================================");
            eprintln!("SKIPPED: the io_uring test run: {why}");
            eprintln!("==============================================================");
        }
    }
    // Figures are printed, never asserted: timing belongs in benchmarks.
    Ok(bench::bench(
        &p,
        bench::Settings {
            quick: true,
            instructions: false,
            only_instructions: false,
        },
    )?)
}

/// Why the io_uring backend cannot run here, if it cannot.
fn uring_unavailable() -> Option<String> {
    let w = gaio_core::Watcher::<()>::builder()
        .backend(gaio_core::Backend::IoUring)
        .build();
    w.err().map(|e| e.to_string())
}

/// Whether the standard library for `target` is installed, installing it with
/// rustup if not. `Ok(false)` (with one line on stderr) when it cannot be had —
/// no rustup, or no network — so CI goes on; an installed target that fails to
/// compile still fails CI.
fn ensure_target(target: &str) -> Result<bool, String> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match installed {
        Ok(o) if o.status.success() => {
            if String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == target)
            {
                return Ok(true);
            }
        }
        Ok(_) | Err(_) => {
            eprintln!("xtask: skipping the {target} check: rustup is not available");
            return Ok(false);
        }
    }
    eprintln!("xtask: rustup target add {target}");
    let add = Command::new("rustup")
        .args(["target", "add", target])
        .output()
        .map_err(|e| format!("rustup target add {target}: {e}"))?;
    if add.status.success() {
        return Ok(true);
    }
    let why = String::from_utf8_lossy(&add.stderr);
    let why = why.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    eprintln!("xtask: skipping the {target} check: rustup could not install it ({why})");
    Ok(false)
}

fn bench_cmd(args: &[String]) -> Result<(), Fail> {
    let mut set = bench::Settings {
        quick: false,
        instructions: false,
        only_instructions: false,
    };
    let mut redis = false;
    let mut http = false;
    let mut tls = false;
    let mut a = Args::new(args, BENCH_USAGE);
    while let Some(flag) = a.next_flag()? {
        match flag {
            "--quick" => set.quick = true,
            "--instructions" => set.instructions = true,
            "--only-instructions" => {
                set.instructions = true;
                set.only_instructions = true;
            }
            "--redis" => redis = true,
            "--http" => http = true,
            "--tls" => tls = true,
            other => return Err(a.unknown(other)),
        }
    }
    if tls {
        if set.instructions || redis || http {
            return Err(a.bad("--tls runs only the TLS comparison".into()));
        }
        return Ok(tls::bench(&paths()?, set.quick)?);
    }
    if http {
        if set.instructions || redis {
            return Err(a.bad("--http runs only the HTTP comparison".into()));
        }
        return Ok(http::bench(&paths()?, set.quick)?);
    }
    if redis {
        if set.instructions {
            return Err(a.bad("--redis runs only the Redis comparison: no instructions".into()));
        }
        return Ok(redis::bench(&paths()?, set.quick)?);
    }
    Ok(bench::bench(&paths()?, set)?)
}

fn soak_cmd(args: &[String]) -> Result<(), Fail> {
    let mut secs = 60u64;
    let mut a = Args::new(args, SOAK_USAGE);
    while let Some(flag) = a.next_flag()? {
        match flag {
            "--secs" => secs = a.value(flag)?,
            other => return Err(a.unknown(other)),
        }
    }
    if secs == 0 {
        return Err(a.bad("--secs must be at least 1".into()));
    }
    Ok(soak::soak(&paths()?, secs)?)
}

/// `cargo xtask load`: one load generator process against an echo server.
fn load_cmd(args: &[String]) -> Result<(), Fail> {
    let mut addr: Option<std::net::SocketAddr> = None;
    let (mut conns, mut msg) = (100usize, 1024usize);
    let mut rounds = load::Rounds::For(std::time::Duration::from_secs(5));
    let mut depth = 0usize;
    let mut tls_cert = None;
    let mut udp = false;
    let mut a = Args::new(args, LOAD_USAGE);
    while let Some(flag) = a.next_flag()? {
        match flag {
            "--addr" => addr = Some(a.value(flag)?),
            "--conns" => conns = a.value(flag)?,
            "--msg" => msg = a.value(flag)?,
            "--secs" => {
                let s: f64 = a.value(flag)?;
                if !(s.is_finite() && s > 0.0) {
                    return Err(a.bad(format!("--secs {s}: must be a positive number")));
                }
                rounds = load::Rounds::For(std::time::Duration::from_secs_f64(s));
            }
            "--count" => rounds = load::Rounds::Count(a.value(flag)?),
            "--depth" => depth = a.value(flag)?,
            "--tls" => tls_cert = Some(a.value::<std::path::PathBuf>(flag)?),
            "--udp" => udp = true,
            other => return Err(a.unknown(other)),
        }
    }
    let addr = addr.ok_or_else(|| a.bad("load needs --addr".into()))?;
    if conns == 0 || msg == 0 {
        return Err(a.bad("--conns and --msg must be at least 1".into()));
    }
    if udp {
        if tls_cert.is_some() {
            return Err(a.bad("--udp and --tls do not go together".into()));
        }
        let load::Rounds::For(secs) = rounds else {
            return Err(a.bad("--udp runs for --secs, not --count".into()));
        };
        let spec = udp::Spec {
            flows: conns,
            size: msg,
            in_flight: if depth > 0 { depth } else { 8 },
            secs: secs.as_secs_f64(),
        };
        let o = udp::run(addr, spec).map_err(|e| e.to_string())?;
        println!(
            "{} datagrams echoed in {:.2} s: {:.0}/s, {:.1} MB/s; {} sent, {} lost, {} corrupt, {} duplicated or late (every byte verified)",
            o.echoed,
            o.secs,
            o.echoed as f64 / o.secs,
            (o.echoed * msg as u64) as f64 / o.secs / 1e6,
            o.sent,
            o.lost,
            o.corrupt,
            o.duplicate
        );
        if o.corrupt > 0 {
            return Err(format!("{} corrupt datagrams", o.corrupt).into());
        }
        return Ok(());
    }
    if let Some(cert) = tls_cert {
        let (load::Rounds::For(secs), 0) = (rounds, depth) else {
            return Err(a.bad("--tls ping-pongs for --secs, without --depth".into()));
        };
        let chain = gaio_tls::load_certs(&cert).map_err(|e| e.to_string())?;
        let config = tls::client_config(&chain[0], false);
        let (n, s) = tls::pingpong(addr, &config, conns, msg, secs.as_secs_f64(), None)
            .map_err(|e| e.to_string())?;
        println!(
            "{n} msgs in {s:.2} s over TLS: {:.0} msgs/s, {:.1} MB/s (every byte verified)",
            n as f64 / s,
            (n * msg as u64) as f64 / s / 1e6
        );
        return Ok(());
    }
    if depth > 0 {
        let load::Rounds::For(secs) = rounds else {
            return Err(a.bad("--depth streams for --secs, not --count".into()));
        };
        let o = load::stream(addr, conns, msg, depth, secs).map_err(|e| e.to_string())?;
        println!(
            "{} msgs in {:.2} s: {:.0} msgs/s, {:.1} MB/s, {depth} in flight per connection (every byte verified)",
            o.msgs,
            o.busy.as_secs_f64(),
            o.msgs as f64 / o.busy.as_secs_f64(),
            o.bytes as f64 / o.busy.as_secs_f64() / 1e6,
        );
        return Ok(());
    }
    let spec = load::Spec {
        conns,
        msg,
        rounds,
        latencies: true,
    };
    let o =
        load::run(addr, spec, std::time::Duration::from_secs(600)).map_err(|e| e.to_string())?;
    let mut lat = o.latencies_ns;
    lat.sort_unstable();
    let p = |q: f64| gaio_testkit::percentile(&lat, q);
    println!(
        "{} msgs in {:.2} s: {:.0} msgs/s, {:.1} MB/s, p50 {:.1} µs, p99 {:.1} µs (every byte verified)",
        o.msgs,
        o.busy.as_secs_f64(),
        o.msgs as f64 / o.busy.as_secs_f64(),
        o.bytes as f64 / o.busy.as_secs_f64() / 1e6,
        p(0.5),
        p(0.99)
    );
    Ok(())
}
