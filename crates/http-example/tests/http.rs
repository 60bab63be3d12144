//! examples/http-server against clients no one here wrote — curl, Python's
//! http.client, wrk — and raw sockets for what a client hides: pipelines,
//! limits, slow and silent clients, a client that does not read.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gaio_testkit::{Example as Server, PATIENCE, peak_rss_kib, start_example, status_kib};

fn start(args: &[&str]) -> (Server, SocketAddr) {
    let (child, addr) = start_example("http-server", &[&["--watchers", "2"], args].concat());
    (Server(child), addr)
}

use gaio_testkit::have_tool as have;

fn run(cmd: &mut Command, stdin: &[u8]) -> (String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn curl_keeps_alive_heads_and_posts() {
    if !have("curl") {
        return;
    }
    let (_server, addr) = start(&[]);
    let url = |path: &str| format!("http://{addr}{path}");
    let (out, err) = run(
        Command::new("curl").args(["-sv", &url("/plaintext"), &url("/json")]),
        b"",
    );
    assert_eq!(out, r#"Hello, World!{"message":"Hello, World!"}"#);
    let err = err.to_ascii_lowercase();
    assert!(
        err.contains("re-using existing connection") || err.contains("reusing existing connection"),
        "curl opened a second connection:\n{err}"
    );
    assert!(
        err.contains("< server: gaio") && err.contains("< date: "),
        "{err}"
    );
    let (metrics, _) = run(Command::new("curl").args(["-s", &url("/metrics")]), b"");
    assert!(metrics.contains("# TYPE gaio_conns gauge\n"), "{metrics}");
    assert!(
        metrics.contains("gaio_conns{watcher=\"0\"} ")
            && metrics.contains("gaio_accepts_total{watcher=\"1\"} "),
        "{metrics}"
    );
    let (out, _) = run(Command::new("curl").args(["-sI", &url("/json")]), b"");
    let out = out.to_ascii_lowercase();
    assert!(out.starts_with("http/1.1 200 ok\r\n"), "{out}");
    assert!(
        out.contains("content-length: 27\r\n") && out.contains("content-type: application/json")
    );
    assert!(out.ends_with("\r\n\r\n"), "HEAD has no body: {out:?}");
    // A body larger than curl sends without `Expect: 100-continue`.
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut curl = Command::new("curl");
    curl.args(["-s", "--data-binary", "@-", "-o", "-", &url("/echo")]);
    let child = curl
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.as_ref().unwrap();
    stdin.write_all(&body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(out.stdout == body, "POST /echo changed the body");
}

/// `Expect: 100-continue`: the go comes before the body is sent.
#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let (_server, addr) = start(&[]);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    c.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .unwrap();
    let mut go = [0; 25];
    c.read_exact(&mut go).unwrap();
    assert_eq!(&go, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b"hello").unwrap();
    let mut got = Vec::new();
    let mut buf = [0; 512];
    while !got.ends_with(b"hello") {
        let n = c.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before the response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
}

/// Python's `http.client` reads the responses to one pipelined burst, one by
/// one from the same connection: each in order, each complete.
const PYTHON_PIPELINE: &str = r#"
import http.client, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port))
reqs = []
for i in range(50):
    reqs.append(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
    reqs.append(b"GET /json?i=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
    body = b"body %d" % i
    reqs.append(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    reqs.append(b"HEAD /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
s.sendall(b"".join(reqs))
f = s.makefile("rb")
class Keep:
    # The shared reader, which a response must not close when it is read.
    def __getattr__(self, name):
        return getattr(f, name)
    def close(self):
        pass
class Sock:
    def makefile(self, *a, **k):
        return Keep()
for i in range(50):
    for method, want in [("GET", b"Hello, World!"), ("GET", b'{"message":"Hello, World!"}'),
                         ("POST", b"body %d" % i), ("HEAD", b"")]:
        r = http.client.HTTPResponse(Sock(), method=method)
        r.begin()
        got = r.read()
        assert r.status == 200, (i, method, r.status)
        assert got == want, (i, method, got, want)
        assert r.getheader("Server") == "gaio" and r.getheader("Date")
print("ok")
"#;

/// Each request gets its status, then the connection is closed.
const PYTHON_LIMITS: &str = r#"
import http.client, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
cases = [
    (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 404, False),
    (b"DELETE /plaintext HTTP/1.1\r\nHost: x\r\n\r\n", 405, False),
    (b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", 405, False),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", 413, True),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 411, True),
    (b"GET /plaintext HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n", 431, True),
    (b"GET /plaintext HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(40)) + b"\r\n", 431, True),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, True),
    (b"GET /plaintext HTTP/3.0\r\n\r\n", 505, True),
    (b"GARBAGE\x00\x01\r\n\r\n", 400, True),
    (b"GET /plaintext HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400, True),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello", 400, True),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400, True),
    (b"GET /plaintext HTTP/1.1\r\n\r\n", 400, True),
    (b"GET /plaintext HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, True),
    (b"GET /plaintext HTTP/1.0\r\nConnection: close, keep-alive\r\n\r\n", 200, True),
    (b"GET /plaintext HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 200, True),
    (b"GET /plaintext HTTP/1.0\r\n\r\n", 200, True),
    (b"GET /plaintext HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 200, False),
]
for raw, status, closes in cases:
    s = socket.create_connection((host, port))
    s.settimeout(30)
    s.sendall(raw)
    f = s.makefile("rb")
    class Keep:
        def __getattr__(self, name):
            return getattr(f, name)
        def close(self):
            pass
    class Sock:
        def makefile(self, *a, **k):
            return Keep()
    r = http.client.HTTPResponse(Sock(), method="GET")
    r.begin()
    r.read()
    assert r.status == status, (raw[:40], r.status, status)
    if closes:
        assert r.getheader("Connection") == "close", raw[:40]
        assert f.read() == b"", raw[:40]  # EOF: the server closed
    else:
        if raw.startswith(b"GET /plaintext HTTP/1.0"):
            assert r.getheader("Connection") == "keep-alive", raw[:40]
        # Still open: another request on it works.
        s.sendall(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
        r = http.client.HTTPResponse(Sock(), method="GET")
        r.begin()
        assert r.status == 200 and r.read() == b"Hello, World!", raw[:40]
    s.close()
print("ok")
"#;

fn python(script: &str, addr: SocketAddr) {
    let (out, _) = run(
        Command::new("python3").args([
            "-c",
            script,
            &addr.ip().to_string(),
            &addr.port().to_string(),
        ]),
        b"",
    );
    assert_eq!(out.trim(), "ok");
}

#[test]
fn python_http_client_reads_pipelined_responses_in_order() {
    if !have("python3") {
        return;
    }
    let (_server, addr) = start(&[]);
    python(PYTHON_PIPELINE, addr);
}

#[test]
fn limits_and_errors_get_their_status_and_close_the_connection() {
    if !have("python3") {
        return;
    }
    let (_server, addr) = start(&["--max-body", "4096", "--max-head", "2048"]);
    python(PYTHON_LIMITS, addr);
}

#[test]
fn wrk_smoke_without_errors() {
    if !have("wrk") {
        return;
    }
    let (_server, addr) = start(&[]);
    for path in ["/plaintext", "/json"] {
        let url = format!("http://{addr}{path}");
        let (out, _) = run(Command::new("wrk").args(["-t1", "-c16", "-d1s", &url]), b"");
        let rps: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("wrk said:\n{out}"));
        assert!(rps > 0.0, "{out}");
        assert!(
            !out.contains("Non-2xx") && !out.contains("Socket errors"),
            "{out}"
        );
    }
}

/// Reads until the server closes the connection; panics after [`PATIENCE`].
fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => got,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => got,
        Err(e) => panic!("the server did not close the connection: {e}"),
    }
}

/// A client that sends its head a byte at a time is closed once the head
/// timeout passes, however often it sends; a silent keep-alive connection
/// once the idle timeout passes.
#[test]
fn slow_heads_and_idle_connections_are_closed() {
    let (_server, addr) = start(&["--head-timeout", "0.3", "--idle-timeout", "0.3"]);
    let mut slow = TcpStream::connect(addr).unwrap();
    let mut reader = slow.try_clone().unwrap();
    let started = Instant::now();
    // Pacing the client is the behaviour under test, not a wait for I/O.
    let trickle = std::thread::spawn(move || {
        for b in b"GET /plaintext HTTP/1.1\r\nHost: a-very-long-host-name.example\r\n"
            .iter()
            .cycle()
        {
            if slow.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    until_closed(&mut reader);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed early"
    );
    trickle.join().unwrap();
    // Idle: one request answered, then silence.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let answered = Instant::now();
    let got = until_closed(&mut idle);
    assert!(
        answered.elapsed() >= Duration::from_millis(300),
        "closed before the idle timeout"
    );
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n") && got.ends_with(b"Hello, World!"));
}

/// A client that pipelines 20,000 echo requests of 4 KiB (80 MiB of responses)
/// and reads nothing stops being read: the server's memory stays bounded, and
/// every response arrives, whole and in order, once it reads.
#[test]
fn a_client_that_pipelines_without_reading_is_paused_not_buffered() {
    const N: usize = 20_000;
    const BODY: usize = 4096;
    let (server, addr) = start(&[]);
    let pid = server.0.id();
    let s = TcpStream::connect(addr).unwrap();
    let before = status_kib(pid, "VmRSS:");
    let body = |i: usize| gaio_testkit::pattern(i, BODY);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let head = format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {BODY}\r\n\r\n");
        let mut burst = Vec::new();
        for i in 0..N {
            burst.extend_from_slice(head.as_bytes());
            burst.extend_from_slice(&body(i));
            if burst.len() > 1 << 20 || i == N - 1 {
                w.write_all(&burst).unwrap();
                burst.clear();
            }
        }
    });
    // The client reads nothing for a second; the server's memory meanwhile.
    let most = peak_rss_kib(pid, Duration::from_secs(1)).max(before);
    assert!(
        most - before < 32 * 1024,
        "server RSS grew by {} KiB while the client did not read",
        most - before
    );
    // Every response: a head, then the body sent.
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut r = std::io::BufReader::with_capacity(1 << 16, s);
    let mut head = Vec::new();
    let mut got = vec![0; BODY];
    for i in 0..N {
        head.clear();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0];
            r.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200 OK\r\n"), "response {i}");
        r.read_exact(&mut got).unwrap();
        assert!(got == body(i), "response {i}: body differs");
    }
    writer.join().unwrap();
}

/// `HEAD` gets headers only, also for an error status, so the next response
/// on the connection is read right.
#[test]
fn head_responses_carry_no_body_even_for_errors() {
    let (_server, addr) = start(&[]);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    let reqs = "HEAD /nowhere HTTP/1.1\r\nHost: x\r\n\r\n\
                HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n\
                GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n";
    c.write_all(reqs.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    while !got.ends_with(b"Hello, World!") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    let statuses: Vec<&str> = text.split("HTTP/1.1 ").skip(1).map(|r| &r[..3]).collect();
    assert_eq!(statuses, ["404", "405", "200"], "{text}");
    assert!(
        !text.contains("Not Found\n") && !text.contains("Method Not Allowed\n"),
        "{text}"
    );
}

/// A refusal while the client is still sending its body arrives whole: the
/// server shuts its side down and drains instead of resetting.
#[test]
fn a_413_arrives_while_the_client_still_sends_its_body() {
    let (_server, addr) = start(&["--max-body", "4096"]);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut w = c.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n";
        let _ = w.write_all(head);
        for _ in 0..20 {
            if w.write_all(&[7; 50_000]).is_err() {
                break;
            }
        }
    });
    let got = until_closed(&mut c);
    sender.join().unwrap();
    assert!(
        got.starts_with(b"HTTP/1.1 413 "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn sigterm_shuts_down_with_status_0() {
    let (mut server, addr) = start(&[]);
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = [0; 12];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"HTTP/1.1 200");
    let kill = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = server.0.wait().unwrap();
    assert!(status.success(), "http-server exited with {status}");
}
