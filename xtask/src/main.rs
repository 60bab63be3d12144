//! Project automation, run as `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! Tasks:
//! * `ci`: what `.ci/run` checks — `cargo fmt --check`, clippy with `-D warnings`,
//!   `cargo doc` without warnings, the whole test suite, and `bench --quick` as a
//!   smoke test.
//! * `bench [--quick] [--instructions]`: every echo server (gaio-core, gaio-pool,
//!   tokio, a raw epoll loop) as its own process, driven by one load generator;
//!   prints a Markdown table and writes `target/bench/report.md` and
//!   `target/bench/regression.svg`.
//! * `memcheck`: the gaio-sys and gaio-core tests under valgrind memcheck.
//! * `soak [--secs N]`: a mixed workload against the gaio-pool echo server, with a
//!   summary of operations, errors, RSS and fds.

mod bench;
mod load;
mod memcheck;
mod soak;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

const HELP: &str = "\
usage: cargo xtask <task>

tasks:
  ci                              fmt --check, clippy -D warnings, doc, cargo test --workspace,
                                  then bench --quick as a smoke test
  bench [--quick] [--instructions]
                                  echo servers side by side (gaio-core, gaio-pool, tokio, raw epoll);
                                  --quick: under a minute; --instructions: callgrind counts per message
  memcheck                        gaio-sys and gaio-core tests under valgrind memcheck (zero errors)
  soak [--secs N]                 mixed echo + timeout + free load on the gaio-pool echo server
                                  for N seconds (default 60), then a summary
  load --addr ADDR [--conns N] [--msg BYTES] [--secs S | --count PER_CONN]
                                  drive any echo server with the bench's verifying load generator
                                  (run several at once for a multi-process load)
  help                            this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => {
            let mut set = bench::Settings {
                quick: false,
                instructions: false,
            };
            let mut bad = None;
            for a in &args[1..] {
                match a.as_str() {
                    "--quick" => set.quick = true,
                    "--instructions" => set.instructions = true,
                    other => bad = Some(other.to_string()),
                }
            }
            match bad {
                Some(b) => Err(format!("unknown bench option {b}\n\n{HELP}")),
                None => bench::bench(&root(), set),
            }
        }
        Some("memcheck") => memcheck::memcheck(&root()),
        Some("soak") => match args.get(1..) {
            Some([flag, n]) if flag == "--secs" => match n.parse() {
                Ok(secs) => soak::soak(&root(), secs),
                Err(_) => Err(format!("--secs takes a number, not {n:?}")),
            },
            Some([]) | None => soak::soak(&root(), 60),
            Some(other) => Err(format!("unknown soak options {other:?}\n\n{HELP}")),
        },
        Some("load") => load_cmd(&args[1..]),
        Some("help") | Some("-h") | Some("--help") => {
            print!("{HELP}");
            Ok(())
        }
        other => {
            if let Some(t) = other {
                eprintln!("unknown task: {t}\n");
            }
            eprint!("{HELP}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
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

fn ci() -> Result<(), String> {
    let root = root();
    run(
        "cargo fmt --check",
        cargo()
            .current_dir(&root)
            .args(["fmt", "--all", "--", "--check"]),
    )?;
    run(
        "cargo clippy",
        cargo().current_dir(&root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "cargo doc",
        cargo()
            .current_dir(&root)
            .args(["doc", "--workspace", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    run(
        "cargo test",
        cargo().current_dir(&root).args(["test", "--workspace"]),
    )?;
    // Figures are printed, never asserted: timing belongs in benchmarks.
    bench::bench(
        &root,
        bench::Settings {
            quick: true,
            instructions: false,
        },
    )
}

/// `cargo xtask load`: one load generator process against an echo server.
fn load_cmd(args: &[String]) -> Result<(), String> {
    let mut addr = None;
    let (mut conns, mut msg) = (100usize, 1024usize);
    let mut rounds = load::Rounds::For(std::time::Duration::from_secs(5));
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--addr" => addr = Some(val()?.parse().map_err(|e| format!("--addr: {e}"))?),
            "--conns" => conns = val()?.parse().map_err(|e| format!("--conns: {e}"))?,
            "--msg" => msg = val()?.parse().map_err(|e| format!("--msg: {e}"))?,
            "--secs" => {
                let s: f64 = val()?.parse().map_err(|e| format!("--secs: {e}"))?;
                rounds = load::Rounds::For(std::time::Duration::from_secs_f64(s));
            }
            "--count" => {
                rounds = load::Rounds::Count(val()?.parse().map_err(|e| format!("--count: {e}"))?)
            }
            other => return Err(format!("unknown load option {other}\n\n{HELP}")),
        }
    }
    let addr = addr.ok_or("load needs --addr")?;
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
    let p = |q: f64| bench::percentile(&lat, q);
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
