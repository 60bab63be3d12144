//! The example servers as a user runs them: the README's `echo`, and `echo-pool`,
//! which must survive its stdout going away and stop cleanly on Ctrl-C.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `cargo test` builds the examples next to the test binaries' `deps` folder.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    dir.join(name)
}

/// Starts an example and reads its first line, which must be `listening on ADDR`.
fn start(name: &str, args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(example(name))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {e} (built by cargo test)"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // The reader is dropped here: from now on the example's stdout is closed.
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{name}: first line {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

fn echo_through(addr: SocketAddr) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    for i in 0..100u32 {
        let msg: Vec<u8> = (0..200u32).map(|k| (i * 7 + k) as u8).collect();
        c.write_all(&msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }
}

fn interrupt(child: &Child) {
    // SAFETY: kill has no memory preconditions; the pid is our live child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
}

#[test]
fn echo_example_prints_its_address_and_echoes() {
    let (mut child, addr) = start("echo", &[]);
    echo_through(addr);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Regression (found by the soak run): echo-pool printed its stats with
/// `println!`, which panicked on Ctrl-C once the reader of its stdout was gone.
#[test]
fn echo_pool_survives_closed_stdout_and_stops_on_ctrl_c() {
    let (mut child, addr) = start("echo-pool", &["--watchers", "2", "--stats", "0.05"]);
    echo_through(addr);
    interrupt(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "echo-pool exited with {status}");
}

/// Regression: `--stats -1` panicked, `--watchers 0` silently ran one watcher,
/// `--watchers -1` printed a Debug struct without the flag's name.
#[test]
fn bad_flags_are_one_line_usage_errors_with_exit_2() {
    let cases: &[(&str, &[&str], &str)] = &[
        ("echo-pool", &["--stats", "-1"], "echo-pool: --stats -1:"),
        ("echo-pool", &["--stats", "0"], "echo-pool: --stats 0:"),
        (
            "echo-pool",
            &["--watchers", "0"],
            "echo-pool: --watchers 0:",
        ),
        (
            "echo-pool",
            &["--watchers", "-1"],
            "echo-pool: --watchers -1:",
        ),
        (
            "echo-pool",
            &["--balancer", "fastest"],
            "echo-pool: --balancer fastest:",
        ),
        (
            "echo-pool",
            &["--bogus"],
            "echo-pool: unknown option --bogus",
        ),
        ("echo", &["--listen", "nowhere"], "echo: --listen nowhere:"),
        ("echo", &["--swap", "0"], "echo: --swap 0:"),
        ("echo", &["--busy-poll"], "echo: --busy-poll needs a value"),
    ];
    for (name, args, first_line) in cases {
        let out = Command::new(example(name)).args(*args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name} {args:?}: {stderr}");
        assert!(
            stderr.lines().next().unwrap_or("").starts_with(first_line),
            "{name} {args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name} {args:?}: {stderr}");
    }
}

#[test]
fn help_exits_0_without_serving() {
    for name in ["echo", "echo-pool"] {
        let out = Command::new(example(name)).arg("--help").output().unwrap();
        assert!(out.status.success(), "{name} --help: {}", out.status);
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("usage:"));
    }
}

#[test]
fn listen_errors_name_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for name in ["echo", "echo-pool"] {
        let out = Command::new(example(name))
            .args(["--listen", &addr])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert_eq!(
            stderr.trim(),
            format!("{name}: cannot listen on {addr}: address already in use")
        );
    }
}
