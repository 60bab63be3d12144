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
