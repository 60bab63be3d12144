//! `cargo xtask memcheck`: the gaio-core tests under valgrind memcheck.
//!
//! Runs the test binaries of gaio-sys and gaio-core one test at a time under
//! `valgrind --tool=memcheck --error-exitcode=99`, skipping the scenarios that
//! open thousands of sockets (they are about scale, and take minutes under
//! valgrind). Any memcheck error fails the task.

use crate::Paths;
use std::process::Command;

/// Test binaries (by target name) and the tests to skip in each.
const SUITES: &[(&str, &[&str])] = &[
    ("poller", &[]),
    ("requests", &[]),
    ("lifecycle", &["drop_with_requests_in_flight"]),
    ("deadline", &["deadlines_on_1k_to_8k_conns"]),
    ("swap_buffer", &[]),
    ("pipes", &[]),
    ("builder", &[]),
    ("hostile", &["slowloris", "storm"]),
    ("echo", &["parallel_"]),
    ("model", &[]),
];

pub fn memcheck(paths: &Paths) -> Result<(), String> {
    // Build the test binaries and learn their paths from cargo's JSON messages.
    let out = crate::cargo()
        .current_dir(&paths.root)
        .args([
            "test",
            "-p",
            "gaio-sys",
            "-p",
            "gaio-core",
            "--no-run",
            "--message-format=json",
        ])
        .output()
        .map_err(|e| format!("cargo test --no-run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo test --no-run failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let json = String::from_utf8_lossy(&out.stdout);
    let mut failures = Vec::new();
    for (name, skip) in SUITES {
        let Some(exe) = executable_of(&json, name) else {
            return Err(format!("no test binary named {name}"));
        };
        let mut cmd = Command::new("valgrind");
        cmd.args([
            "--tool=memcheck",
            "--error-exitcode=99",
            "--quiet",
            "--leak-check=no",
            "--track-fds=no",
        ])
        .arg(&exe)
        .args(["--test-threads=1", "-q"]);
        for s in *skip {
            cmd.args(["--skip", s]);
        }
        // Fewer model cases: valgrind is ~30x slower.
        cmd.env("GAIO_MODEL_CASES", "16");
        eprintln!("memcheck: {name}");
        let status = cmd.status().map_err(|e| format!("valgrind: {e}"))?;
        if !status.success() {
            failures.push(format!("{name} ({status})"));
        }
    }
    if failures.is_empty() {
        eprintln!("memcheck: {} suites, zero errors", SUITES.len());
        Ok(())
    } else {
        Err(format!("memcheck failed: {}", failures.join(", ")))
    }
}

/// The `"executable"` of the test target `name` in cargo's JSON output.
fn executable_of(json: &str, name: &str) -> Option<String> {
    let tag = format!("\"name\":\"{name}\"");
    json.lines()
        .filter(|l| l.contains(&tag) && l.contains("\"test\":true"))
        .find_map(|l| {
            let i = l.find("\"executable\":\"")? + "\"executable\":\"".len();
            let j = l[i..].find('"')?;
            Some(l[i..i + j].to_string())
        })
}
