//! The TLS examples (`echo` and `proxy` with `--tls-cert`/`--tls-key` or
//! `--self-signed`) against clients no one here wrote: Python's `ssl` module,
//! `openssl s_client` and `s_time`, and rustls' own client. Every byte is
//! verified. The examples run on the backend `GAIO_BACKEND` names (CI runs
//! both); one run also passes `--backend auto`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gaio_testkit::{Example, PATIENCE, example_path, have_tool, pattern, start_example};
use gaio_tls::rustls;

/// A certificate for localhost and 127.0.0.1 in `dir`: (cert.pem, key.pem).
fn cert_files(dir: &Path) -> (PathBuf, PathBuf) {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let c = rcgen::generate_simple_self_signed(names).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gaio-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tls_echo(cert: &Path, key: &Path, extra: &[&str]) -> (Example, SocketAddr) {
    let args = [
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        extra,
    ]
    .concat();
    let (child, addr) = start_example("echo", &args);
    (Example(child), addr)
}

/// Runs a Python script with `args`; it must exit 0. Returns its stdout.
fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python3: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Echoes sizes from 1 byte to 1 MiB over a verified TLS connection, closes
/// with close_notify both ways, then resumes the session on a second one.
const PY_ECHO_AND_RESUME: &str = r#"
import socket, ssl, sys
host, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile)
def connect(session=None):
    raw = socket.create_connection((host, port), timeout=60)
    return ctx.wrap_socket(raw, server_hostname="localhost", session=session)
s = connect()
for i, n in enumerate([1, 100, 1000, 16384, 16385, 100000, 1 << 20]):
    msg = bytes((i * 31 + k * 7) % 256 for k in range(n))
    s.sendall(msg)
    got = bytearray()
    while len(got) < n:
        chunk = s.recv(1 << 20)
        assert chunk, "EOF before the echo"
        got += chunk
    assert got == msg, f"echo of {n} bytes differs"
session = s.session
s.unwrap()  # close_notify from us, and the server's in return
s.close()
t = connect(session)
t.sendall(b"again")
assert t.recv(5) == b"again"
assert t.session_reused, "the second connection did not resume"
t.close()
print("ok", s.version() if hasattr(s, "version") else "")
"#;

#[test]
fn echo_over_tls_with_python_ssl_every_byte_and_resumption() {
    if !have_tool("python3") {
        return;
    }
    let dir = temp_dir("py");
    let (cert, key) = cert_files(&dir);
    for extra in [&[][..], &["--owned", "4096"], &["--backend", "auto"]] {
        let (_server, addr) = tls_echo(&cert, &key, extra);
        let port = addr.port().to_string();
        let out = python(
            PY_ECHO_AND_RESUME,
            &["127.0.0.1", &port, cert.to_str().unwrap()],
        );
        assert!(out.starts_with("ok"), "{out}");
    }
}

/// 1,000 clients connect at once, each echoes three messages of its own.
const PY_THOUSAND: &str = r#"
import asyncio, resource, ssl, sys
host, port, cafile, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
ctx = ssl.create_default_context(cafile=cafile)
ready = [0]
async def client(i, start):
    r, w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost")
    ready[0] += 1
    if ready[0] == n:
        start.set()
    await start.wait()  # all n connected and past their handshakes at once
    for k in range(3):
        msg = bytes((i + k * 13 + j) % 256 for j in range(1000))
        w.write(msg)
        assert await r.readexactly(1000) == msg, f"client {i} message {k} differs"
    w.close()
    return 1
async def main():
    start = asyncio.Event()
    tasks = [asyncio.create_task(client(i, start)) for i in range(n)]
    done = await asyncio.wait_for(asyncio.gather(*tasks), 120)
    print(sum(done))
asyncio.run(main())
"#;

#[test]
fn echo_over_tls_serves_1000_concurrent_python_clients() {
    if !have_tool("python3") {
        return;
    }
    let dir = temp_dir("thousand");
    let (cert, key) = cert_files(&dir);
    let (_server, addr) = tls_echo(&cert, &key, &[]);
    let port = addr.port().to_string();
    let out = python(
        PY_THOUSAND,
        &["127.0.0.1", &port, cert.to_str().unwrap(), "1000"],
    );
    assert_eq!(out.trim(), "1000");
}

/// Runs `openssl s_client`, sends `line`, waits for it to come back, then
/// closes its stdin. Returns everything it printed.
fn s_client(addr: SocketAddr, cafile: &Path, sess: (&str, &Path), line: &str) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .arg("-CAfile")
        .arg(cafile)
        .arg(sess.0)
        .arg(sess.1)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut out = String::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    loop {
        let mut l = String::new();
        assert!(
            reader.read_line(&mut l).unwrap() > 0,
            "s_client ended early:\n{out}"
        );
        out.push_str(&l);
        if l.trim_end() == line {
            break;
        }
    }
    drop(stdin); // EOF: s_client closes
    reader.read_to_string(&mut out).unwrap();
    child.wait().unwrap();
    out
}

#[test]
fn openssl_s_client_echoes_verifies_and_resumes() {
    if !have_tool("openssl") {
        return;
    }
    let dir = temp_dir("s_client");
    let (cert, key) = cert_files(&dir);
    let (_server, addr) = tls_echo(&cert, &key, &[]);
    let sess = dir.join("session.pem");
    let first = s_client(addr, &cert, ("-sess_out", &sess), "hello over tls");
    assert!(first.contains("Verify return code: 0 (ok)"), "{first}");
    assert!(first.contains("New, TLSv1.3"), "{first}");
    let second = s_client(addr, &cert, ("-sess_in", &sess), "hello again");
    assert!(
        second.contains("Reused, TLSv1.3"),
        "did not resume:\n{second}"
    );
}

#[test]
fn openssl_s_time_makes_new_and_resumed_connections() {
    if !have_tool("openssl") {
        return;
    }
    let dir = temp_dir("s_time");
    let (cert, key) = cert_files(&dir);
    let (_server, addr) = tls_echo(&cert, &key, &[]);
    for mode in ["-new", "-reuse"] {
        let out = Command::new("openssl")
            .args(["s_time", "-connect", &addr.to_string(), mode, "-time", "1"])
            .arg("-CAfile")
            .arg(&cert)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let conns: u64 = text
            .lines()
            .find_map(|l| {
                l.split_once(" connections in ")
                    .map(|(n, _)| n.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("s_time {mode}: {text}"));
        assert!(conns > 10, "s_time {mode}: {text}");
    }
}

#[test]
fn rustls_client_echoes_through_the_tls_echo_example() {
    let dir = temp_dir("rustls");
    let (cert, key) = cert_files(&dir);
    let (_server, addr) = tls_echo(&cert, &key, &[]);
    let chain = gaio_tls::load_certs(&cert).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(chain[0].clone()).unwrap();
    let config = gaio_tls::client_config(roots);
    let mut threads = Vec::new();
    for t in 0..8 {
        let config = config.clone();
        threads.push(std::thread::spawn(move || {
            let tcp = TcpStream::connect(addr).unwrap();
            tcp.set_read_timeout(Some(PATIENCE)).unwrap();
            let conn =
                rustls::ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
            let mut s = rustls::StreamOwned::new(conn, tcp);
            for i in 0..50 {
                let msg = pattern(t * 1000 + i, 1 + (i * 977) % 40_000);
                s.write_all(&msg).unwrap();
                let mut got = vec![0; msg.len()];
                s.read_exact(&mut got).unwrap();
                assert!(got == msg, "thread {t} message {i} differs");
            }
            s.conn.send_close_notify();
            s.flush().unwrap();
            // The server answers close_notify with its own and closes: a clean EOF.
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty());
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn self_signed_prints_the_fingerprint_of_the_certificate_it_serves() {
    if !have_tool("python3") {
        return;
    }
    let child = Command::new(example_path("echo"))
        .args(["--listen", "127.0.0.1:0", "--self-signed"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Example(child);
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr: SocketAddr = first
        .strip_prefix("listening on ")
        .unwrap()
        .parse()
        .unwrap();
    let second = lines.next().unwrap().unwrap();
    let printed = second
        .rsplit(' ')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();
    let served = python(
        r#"
import hashlib, socket, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection((sys.argv[1], int(sys.argv[2]))), server_hostname="localhost")
s.sendall(b"x")
assert s.recv(1) == b"x"
print(hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest())
"#,
        &["127.0.0.1", &addr.port().to_string()],
    );
    assert_eq!(served.trim(), printed, "line 2: {second}");
}

#[test]
fn proxy_terminates_tls_in_front_of_a_plain_upstream() {
    if !have_tool("python3") {
        return;
    }
    let dir = temp_dir("proxy");
    let (cert, key) = cert_files(&dir);
    let (upstream, up_addr) = start_example("echo", &[]);
    let _upstream = Example(upstream);
    let args = [
        "--upstream",
        &up_addr.to_string(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let (proxy, addr) = start_example("proxy", &args);
    let _proxy = Example(proxy);
    let out = python(
        PY_ECHO_AND_RESUME,
        &[
            "127.0.0.1",
            &addr.port().to_string(),
            cert.to_str().unwrap(),
        ],
    );
    assert!(out.starts_with("ok"), "{out}");
    // The plaintext side is untouched: the upstream echo speaks plain TCP.
    let mut plain = TcpStream::connect(up_addr).unwrap();
    plain.write_all(b"plain").unwrap();
    let mut got = [0; 5];
    plain.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"plain");
}
