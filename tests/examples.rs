//! The example servers as a user runs them: the README's `echo`, and `echo-pool`,
//! which must survive its stdout going away and stop cleanly on Ctrl-C.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::time::Duration;

use gaio_testkit::{example_path as example, start_example as start, status_kib};

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

/// Every pool example serves until SIGINT or SIGTERM, then shuts down
/// gracefully and exits with status 0 (a client connected meanwhile sees EOF).
#[test]
fn pool_examples_stop_on_sigint_and_sigterm_with_status_0() {
    for name in ["echo-pool", "chat", "resp-server"] {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            let (mut child, addr) = start(name, &["--watchers", "2"]);
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            if name == "echo-pool" {
                echo_through(addr);
            }
            // SAFETY: kill has no memory preconditions; the pid is our live child.
            assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
            let status = child.wait().unwrap();
            assert!(status.success(), "{name} on signal {signal}: {status}");
            let mut rest = Vec::new();
            let _ = c.read_to_end(&mut rest); // EOF (or a reset): not left hanging
        }
    }
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
        ("chat", &[], "chat: --listen ADDR is required"),
        (
            "chat",
            &["--listen", "127.0.0.1:0", "--watchers", "0"],
            "chat: --watchers 0:",
        ),
        (
            "chat",
            &["--listen", "127.0.0.1:0", "--queue", "x"],
            "chat: --queue x:",
        ),
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
    for name in ["echo", "echo-pool", "chat"] {
        let out = Command::new(example(name)).arg("--help").output().unwrap();
        assert!(out.status.success(), "{name} --help: {}", out.status);
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("usage:"));
    }
}

#[test]
fn listen_errors_name_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for name in ["echo", "echo-pool", "chat"] {
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

use gaio_testkit::Example as Server;

/// Reads a nonblocking stream dry; whether it ended (EOF or a reset): the
/// server dropped it.
fn drained_to_the_end(s: &mut TcpStream) -> bool {
    let mut sink = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true, // reset
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    gaio_testkit::status_kib(pid, "VmRSS:")
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
        let gone = drained_to_the_end(&mut stuck);
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

/// A chat client: its stream, and a reader thread handing over every line.
struct ChatClient {
    stream: TcpStream,
    lines: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
}

impl ChatClient {
    fn connect(addr: SocketAddr) -> ChatClient {
        let stream = TcpStream::connect(addr).unwrap();
        let mut r = BufReader::new(stream.try_clone().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            loop {
                let mut line = Vec::new();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) => return, // EOF: the channel closes
                    Ok(_) => {
                        if tx.send(Ok(line)).is_err() {
                            return;
                        }
                    }
                    Err(e) => return drop(tx.send(Err(e))),
                }
            }
        });
        ChatClient { stream, lines }
    }

    fn send(&mut self, line: &[u8]) {
        self.stream.write_all(line).unwrap();
    }

    /// The next line, within 30 s; `None` once the server closed the connection.
    fn next(&self) -> Option<Vec<u8>> {
        match self.lines.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(line)) => Some(line),
            Ok(Err(_)) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
            Err(e) => panic!("no line within 30 s: {e}"),
        }
    }

    /// Skips lines until one equal to `want` arrives.
    fn wait_for(&self, want: &[u8]) {
        while self.next().expect("connection open") != want {}
    }

    /// The next line that is not a control line (`#…`).
    fn next_data(&self) -> Option<Vec<u8>> {
        loop {
            match self.next() {
                Some(l) if l.starts_with(b"#") => {}
                other => return other,
            }
        }
    }
}

/// Connects `n` clients and returns once the server has registered all of
/// them: each new client's line reaches client 0 (client 1 repeats its line
/// until client 0 is registered too). Control lines start with `#`.
fn chat_room(addr: SocketAddr, n: usize) -> Vec<ChatClient> {
    let mut room = vec![ChatClient::connect(addr), ChatClient::connect(addr)];
    loop {
        room[1].send(b"#sync\n");
        match room[0].lines.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(_)) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            other => panic!("client 0: {other:?}"),
        }
    }
    for k in 2..n {
        let mut c = ChatClient::connect(addr);
        let join = format!("#join {k}\n");
        c.send(join.as_bytes());
        room[0].wait_for(join.as_bytes());
        room.push(c);
    }
    room
}

/// Line `j` of client `i`: a few bytes to 4,096 (the maximum) before the `\n`.
fn chat_line(i: usize, j: usize) -> Vec<u8> {
    let len = match j % 50 {
        0 => 4096,
        k => 20 + (i * 131 + j * 37 + k) % 600,
    };
    let head = format!("{i} {j} ");
    let mut line = head.into_bytes();
    while line.len() < len {
        line.push(b'a' + ((line.len() + i + j) % 26) as u8);
    }
    line.push(b'\n');
    line
}

/// The chat contract with 2 watchers in both listening modes: every line of
/// every sender reaches every other client unchanged and in order, never its
/// sender.
#[test]
fn chat_delivers_every_line_to_every_other_client() {
    const CLIENTS: usize = 8;
    const LINES: usize = 300;
    for mode in [&[][..], &["--reuseport"][..]] {
        let mut args = vec!["--watchers", "2"];
        args.extend_from_slice(mode);
        let (chat, addr) = start("chat", &args);
        let _chat = Server(chat);
        let room = chat_room(addr, CLIENTS);
        let mut writers = Vec::new();
        let mut readers = Vec::new();
        for (i, c) in room.into_iter().enumerate() {
            let mut out = c.stream.try_clone().unwrap();
            writers.push(std::thread::spawn(move || {
                for j in 0..LINES {
                    out.write_all(&chat_line(i, j)).unwrap();
                }
            }));
            readers.push(std::thread::spawn(move || {
                let mut next = [0usize; CLIENTS];
                let mut left = (CLIENTS - 1) * LINES;
                while left > 0 {
                    let line = c.next().unwrap_or_else(|| panic!("client {i} closed"));
                    if line.starts_with(b"#") {
                        continue;
                    }
                    let text = String::from_utf8_lossy(&line);
                    let mut parts = text.split(' ');
                    let from: usize = parts.next().unwrap().parse().unwrap();
                    let j: usize = parts.next().unwrap().parse().unwrap();
                    assert_ne!(from, i, "client {i} got its own line back");
                    assert_eq!(j, next[from], "client {i}: lines of {from} out of order");
                    assert_eq!(line, chat_line(from, j), "client {i}: line changed");
                    next[from] += 1;
                    left -= 1;
                }
                c
            }));
        }
        for w in writers {
            w.join().unwrap();
        }
        let _room: Vec<ChatClient> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    }
}

/// A client that stops reading is disconnected without holding back the
/// others; a line over 4,096 bytes closes its sender; 4,096 exactly is fine.
#[test]
fn chat_drops_a_stuck_client_and_a_too_long_line() {
    let (chat, addr) = start("chat", &["--watchers", "2"]);
    let _chat = Server(chat);
    let mut room = chat_room(addr, 2);
    // A client with a 4 KiB receive window that never reads.
    let mut stuck = {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(&addr.into()).unwrap();
        TcpStream::from(s)
    };
    stuck.write_all(b"#join stuck\n").unwrap();
    room[0].wait_for(b"#join stuck\n");
    let line = [vec![b'x'; 4000], vec![b'\n']].concat();
    // Client 1 keeps getting every line while the stuck client's queue fills.
    // Then draining what the stuck one holds must end in EOF or a reset; if
    // it was not dropped yet, draining let it catch up: look again after
    // twice as many lines.
    stuck.set_nonblocking(true).unwrap();
    let (mut sent, mut next_look) = (0, 1000);
    let dropped = loop {
        while sent < next_look {
            room[0].send(&line);
            let got = room[1].next_data().expect("client 1 connected");
            assert!(got == line, "line {sent}: got {} bytes", got.len());
            sent += 1;
        }
        let gone = drained_to_the_end(&mut stuck);
        if gone || next_look >= 32_000 {
            break gone;
        }
        next_look *= 2;
    };
    assert!(dropped, "the stuck client was never disconnected");
    // 4,096 bytes before the `\n` is a line; 4,097 closes the sender.
    let max = [vec![b'm'; 4096], vec![b'\n']].concat();
    room[0].send(&max);
    room[1].wait_for(&max);
    room[0].send(&[vec![b'o'; 4097], vec![b'\n']].concat());
    if let Some(l) = room[0].next() {
        panic!("client 0 got {} bytes after its too-long line", l.len());
    }
    room[1].send(b"still here\n");
    let c3 = ChatClient::connect(addr);
    let _ = c3; // the server keeps serving new clients too
    // Client 1 never saw the long line: nothing arrives but what others send.
    let mut c4 = ChatClient::connect(addr);
    loop {
        c4.send(b"#ping\n");
        match room[1].lines.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(l)) => {
                assert!(l.starts_with(b"#ping"), "client 1 got {l:?}");
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            other => panic!("client 1: {other:?}"),
        }
    }
}

/// 1,000 clients connected, lines flowing, and some clients not reading: the
/// server stays under 64 MiB of RSS.
#[test]
fn chat_with_1000_clients_stays_under_64_mib() {
    gaio_testkit::raise_fd_limit();
    let (chat, addr) = start("chat", &["--watchers", "2"]);
    let chat = Server(chat);
    let mut room = chat_room(addr, 20);
    // 980 more that never read, with 4 KiB receive windows: their queues on
    // the server fill up to the bound.
    let idle: Vec<TcpStream> = (0..980)
        .map(|_| {
            use socket2::{Domain, Socket, Type};
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.set_recv_buffer_size(4096).unwrap();
            s.connect(&addr.into()).unwrap();
            TcpStream::from(s)
        })
        .collect();
    // 1,000 lines of 1 KB, one at a time (each reaches client 1 before the
    // next is sent), so the idle clients' queues grow a write per line: past
    // the kernel's buffers and then the bound of 256 queued writes.
    for round in 0..1000 {
        let line = format!("{round:06} {}\n", "z".repeat(993));
        room[round % 20].send(line.as_bytes());
        room[(round + 1) % 20].wait_for(line.as_bytes());
    }
    // The peak, not just the end state.
    let rss = status_kib(chat.0.id(), "VmHWM:");
    eprintln!("chat: peak RSS {rss} KiB with 1,000 clients");
    assert!(rss < 64 * 1024, "peak RSS {rss} KiB with 1,000 clients");
    // They were disconnected at the bound: draining ends in EOF or a reset,
    // before all 1 MB arrived.
    for (i, mut c) in idle.into_iter().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut sink = vec![0u8; 1 << 16];
        let mut total = 0;
        loop {
            match c.read(&mut sink) {
                Ok(0) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    panic!("idle client {i} still connected")
                }
                Err(_) => break,
                Ok(n) => total += n,
            }
        }
        assert!(total < 1000 * 1000, "idle client {i} got {total} bytes");
    }
    // The room goes on.
    room[3].send(b"after\n");
    room[4].wait_for(b"after\n");
}

fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// The pool's listeners live inside the watchers: `--watchers N` means N
/// threads plus main, in both listening modes, while serving.
#[test]
fn pool_examples_run_n_watcher_threads_plus_main() {
    for (name, extra) in [
        ("echo-pool", &[][..]),
        ("echo-pool", &["--reuseport"][..]),
        ("chat", &[][..]),
        ("chat", &["--reuseport"][..]),
    ] {
        for n in ["1", "3"] {
            let mut args = vec!["--watchers", n, "--no-pin"];
            if name == "chat" {
                args.pop();
            }
            args.extend_from_slice(extra);
            let (child, addr) = start(name, &args);
            let server = Server(child);
            let _c = TcpStream::connect(addr).unwrap();
            if name == "echo-pool" {
                echo_through(addr);
            }
            let want: usize = n.parse::<usize>().unwrap() + 1;
            assert_eq!(threads_of(server.0.id()), want, "{name} {args:?}");
        }
    }
}
