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

/// Kills the child when dropped, so a failing test leaves no server behind.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The proxy contract: every byte both ways, many clients at once, through an
/// independent upstream (the echo example).
#[test]
fn proxy_forwards_every_byte_both_ways() {
    let (echo, upstream) = start("echo", &[]);
    let _echo = Server(echo);
    let (proxy, addr) = start("proxy", &["--upstream", &upstream.to_string()]);
    let _proxy = Server(proxy);
    let clients: Vec<_> = (0..16u32)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let data: Vec<u8> = (0..256 * 1024u32).map(|k| (k * 31 + i) as u8).collect();
                let mut w = c.try_clone().unwrap();
                let sent = data.clone();
                let writer = std::thread::spawn(move || w.write_all(&sent).unwrap());
                let mut back = vec![0u8; data.len()];
                c.read_exact(&mut back).unwrap();
                writer.join().unwrap();
                assert!(back == data, "client {i}: bytes differ");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}

/// A half-close reaches the other side, and the bytes of the other direction
/// still arrive before the close.
#[test]
fn proxy_propagates_half_close_and_finishes_the_other_direction() {
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = upstream.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap(); // the client's EOF, through the proxy
        let reply = format!("got {} bytes", got.len());
        s.write_all(reply.as_bytes()).unwrap();
        s.write_all(&vec![b'x'; 1 << 20]).unwrap(); // more after the client's EOF
        got
    });
    let (proxy, addr) = start("proxy", &["--upstream", &up_addr.to_string()]);
    let _proxy = Server(proxy);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let data = vec![7u8; 300_000];
    c.write_all(&data).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    let head = b"got 300000 bytes";
    assert_eq!(&back[..head.len()], head);
    assert_eq!(
        back.len(),
        head.len() + (1 << 20),
        "every byte before the close"
    );
    assert!(server.join().unwrap() == data);
}

/// A client pushing into an upstream that never reads cannot grow the proxy.
#[test]
fn proxy_memory_stays_bounded_when_upstream_never_reads() {
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let (proxy, addr) = start("proxy", &["--upstream", &up_addr.to_string()]);
    let pid = proxy.id();
    let _proxy = Server(proxy);
    let mut c = TcpStream::connect(addr).unwrap();
    let (_stuck, _) = upstream.accept().unwrap(); // accepted, never read
    // Push until the proxy stops reading (a write blocks for a second): up to 1 GiB.
    c.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let chunk = vec![1u8; 1 << 20];
    let mut pushed = 0usize;
    while pushed < 1 << 30 {
        match c.write(&chunk) {
            Ok(n) => pushed += n,
            Err(_) => break,
        }
    }
    assert!(pushed < 1 << 30, "the proxy never pushed back");
    let rss = rss_kib(pid);
    assert!(
        rss < 64 * 1024,
        "proxy RSS {rss} KiB after {pushed} bytes pushed"
    );
}

/// The push contract: every connected client gets the same lines, from one
/// buffer per tick, and a client that stops reading is dropped without holding
/// back the others.
#[test]
fn push_sends_every_client_the_same_lines_and_drops_a_stuck_one() {
    let (push, addr) = start(
        "push",
        &["--interval", "0.001", "--limit", "1024", "--sndbuf", "4096"],
    );
    let _push = Server(push);
    // A client that never reads, with a tiny receive buffer.
    let stuck = {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(1024).unwrap();
        s.connect(&addr.into()).unwrap();
        TcpStream::from(s)
    };
    let mut readers: Vec<BufReader<TcpStream>> = (0..4)
        .map(|_| {
            let c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            BufReader::new(c)
        })
        .collect();
    let mut lines: Vec<Vec<u128>> = vec![Vec::new(); readers.len()];
    let mut read_lines = |readers: &mut Vec<BufReader<TcpStream>>, n: usize| {
        for _ in 0..n {
            for (r, got) in readers.iter_mut().zip(&mut lines) {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                got.push(line.trim().parse().expect("a timestamp line"));
            }
        }
    };
    // The readers keep getting lines while the stuck client's queue fills (its
    // kernel buffers, then the 1 KiB limit). Then draining what it holds must
    // end in EOF or a reset: it was dropped. Draining lets the server send again,
    // so if it was not dropped yet, wait twice as long before the next look.
    let mut stuck = stuck;
    stuck.set_nonblocking(true).unwrap();
    let mut wait = 1000;
    let dropped = loop {
        read_lines(&mut readers, wait);
        let mut sink = vec![0u8; 1 << 16];
        let gone = loop {
            match stuck.read(&mut sink) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(_) => break true, // reset
            }
        };
        if gone || wait >= 16_000 {
            break gone;
        }
        wait *= 2;
    };
    assert!(dropped, "the stuck client was never dropped");
    // The others were not held back.
    read_lines(&mut readers, 50);
    // The same line for a tick at every reader: their last lines agree.
    let last: Vec<u128> = lines.iter().map(|l| *l.last().unwrap()).collect();
    for l in &lines {
        assert!(l.windows(2).all(|w| w[0] <= w[1]), "lines in order");
        let tail: std::collections::HashSet<_> = l[l.len() - 10..].iter().collect();
        assert!(
            last.iter().filter(|t| tail.contains(t)).count() >= 1,
            "readers saw different lines"
        );
    }
}
