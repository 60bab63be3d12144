//! `cargo xtask bench --tls`: examples/echo over TLS (`--tls-cert`, one
//! watcher) against tokio + tokio-rustls on a current-thread runtime
//! (`benches/tokio-rustls.rs`), both on the same rustls configuration
//! (`gaio_tls::server_config`, ring), pinned to core 1, the load generator on
//! core 0. The client speaks TLS 1.3 with one cipher suite,
//! TLS13_AES_128_GCM_SHA256, to both. Scenarios, servers interleaved run by run,
//! medians: 64 KiB echo MB/s (one connection), 100 connections × 1 KiB
//! ping-pong (messages/s and the server's CPU per message, from /proc), full
//! and resumed handshakes per second (a new connection per handshake, 16 in
//! flight), and RSS per idle TLS connection with 10,000 open. Also gaio's
//! plaintext 64 KiB echo, for the cost of TLS itself.
//!
//! The TLS load generator is one thread running a gaio watcher with gaio-tls
//! client sessions; every echoed byte is compared with what was sent.

use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gaio_core::{Buffer, Conn, Op, Requests, Watcher};
use gaio_tls::rustls::{self, ClientConfig};
use gaio_tls::{Ctx, Tls};

use crate::Paths;

const IDLE_CONNS: usize = 10_000;
const PINGPONG_CONNS: usize = 100;
const HANDSHAKES_IN_FLIGHT: usize = 16;
const PATIENCE: Duration = Duration::from_secs(60);

/// A client configuration trusting `cert`: TLS 1.3, TLS13_AES_128_GCM_SHA256
/// only, resumption on or off.
pub fn client_config(
    cert: &rustls::pki_types::CertificateDer<'static>,
    resume: bool,
) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert.clone())
        .expect("a certificate rustls can parse");
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

fn name() -> rustls::pki_types::ServerName<'static> {
    "localhost".try_into().expect("a DNS name")
}

/// The client's watcher, pinned to `core`.
fn watcher(core: Option<usize>) -> io::Result<Watcher<Ctx<usize>>> {
    let b = Watcher::builder();
    let b = match core {
        Some(c) => b.cpu(c),
        None => b,
    };
    b.build().map_err(io::Error::from)
}

fn connect(w: &mut Watcher<Ctx<usize>>, addr: SocketAddr) -> io::Result<Conn> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    w.register(s).map_err(io::Error::from)
}

fn fail(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

/// The message connection `i` sends as its `seq`th: a pattern of its own with
/// the sequence number in front.
fn stamp(buf: &mut [u8], i: usize, seq: u64) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = (i.wrapping_mul(31) ^ k.wrapping_mul(7)) as u8;
    }
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
}

/// Ping-pong over `conns` TLS connections with messages of `msg` bytes for
/// `secs`, after every handshake is done: (messages, seconds).
pub fn pingpong(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    conns: usize,
    msg: usize,
    secs: f64,
    core: Option<usize>,
) -> io::Result<(u64, f64)> {
    let mut w = watcher(core)?;
    let tls: Tls<usize> = Tls::new();
    let mut ids = Vec::with_capacity(conns);
    for i in 0..conns {
        let c = connect(&mut w, addr)?;
        tls.connect(&w.local(), c, config, name(), i)
            .map_err(io::Error::from)?;
        ids.push(c);
    }
    let mut seq = vec![0u64; conns];
    let mut expect = vec![vec![0u8; msg]; conns];
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let (mut shaken, mut done, mut live) = (0, 0u64, conns);
    let mut started: Option<Instant> = None;
    let mut error: Option<io::Error> = None;
    let deadline = Instant::now() + PATIENCE + Duration::from_secs_f64(secs);
    while live > 0 && error.is_none() {
        if Instant::now() > deadline {
            return Err(fail("pingpong", "no progress"));
        }
        let batch = w
            .wait_io_timeout(Duration::from_secs(1))
            .map_err(io::Error::from)?;
        let io = batch.local();
        for res in batch {
            tls.complete(&io, res, |tio, res| {
                let i = res.ctx;
                let send =
                    |i: usize, seq: u64, expect: &mut Vec<u8>, out: Vec<u8>, read: Vec<u8>| {
                        let mut out = out;
                        out.resize(msg, 0);
                        stamp(&mut out, i, seq);
                        expect.copy_from_slice(&out);
                        tio.write(ids[i], i, out)?;
                        tio.read_full(ids[i], i, read, None)
                    };
                let step = match (res.op, &res.result) {
                    (Op::Connect, Ok(())) => {
                        shaken += 1;
                        if shaken == conns {
                            started = Some(Instant::now());
                        }
                        send(
                            i,
                            0,
                            &mut expect[i],
                            spare.pop().unwrap_or_default(),
                            vec![0; msg],
                        )
                    }
                    (Op::Write, Ok(())) => {
                        if let Buffer::Owned(v) = res.buffer {
                            spare.push(v);
                        }
                        Ok(())
                    }
                    (Op::Read, Ok(())) => {
                        let got = res.data();
                        if got != &expect[i][..] {
                            Err(gaio_core::Error::Io(fail(
                                "pingpong",
                                format!("connection {i}: echo differs"),
                            )))
                        } else {
                            if started.is_some() {
                                done += 1;
                            }
                            seq[i] += 1;
                            let over = started.is_some_and(|t| t.elapsed().as_secs_f64() >= secs);
                            let read = res.into_vec().unwrap_or_default();
                            if over {
                                live -= 1;
                                tio.free(ids[i])
                            } else {
                                send(
                                    i,
                                    seq[i],
                                    &mut expect[i],
                                    spare.pop().unwrap_or_default(),
                                    read,
                                )
                            }
                        }
                    }
                    (_, Err(e)) => Err(gaio_core::Error::Io(fail(
                        "pingpong",
                        format!("connection {i}: {e}"),
                    ))),
                    _ => Ok(()),
                };
                if let Err(e) = step {
                    error.get_or_insert(e.into());
                }
            });
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    let secs = started.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok((done, secs))
}

/// New connections, each a handshake and a one-byte echo, `in_flight` at a
/// time, for `secs`: (handshakes, of which resumed, seconds).
pub fn handshakes(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    in_flight: usize,
    secs: f64,
    core: Option<usize>,
) -> io::Result<(u64, u64, f64)> {
    let mut w = watcher(core)?;
    let tls: Tls<usize> = Tls::new();
    let start = Instant::now();
    let (mut done, mut resumed, mut live) = (0u64, 0u64, 0usize);
    let mut error: Option<io::Error> = None;
    let open = |w: &mut Watcher<Ctx<usize>>, tls: &Tls<usize>| -> io::Result<()> {
        let c = connect(w, addr)?;
        tls.connect(&w.local(), c, config, name(), 0)
            .map_err(io::Error::from)
    };
    for _ in 0..in_flight {
        open(&mut w, &tls)?;
        live += 1;
    }
    while live > 0 && error.is_none() {
        if start.elapsed() > PATIENCE + Duration::from_secs_f64(secs) {
            return Err(fail("handshakes", "no progress"));
        }
        let mut again = 0;
        let batch = w
            .wait_io_timeout(Duration::from_secs(1))
            .map_err(io::Error::from)?;
        let io = batch.local();
        for res in batch {
            tls.complete(&io, res, |tio, res| {
                let conn = res.conn;
                let step = match (res.op, &res.result) {
                    (Op::Connect, Ok(())) => tio
                        .write(conn, 0, vec![b'h'])
                        .and_then(|()| tio.read_full(conn, 0, vec![0], None)),
                    (Op::Read, Ok(())) if res.data() == b"h" => {
                        done += 1;
                        let kind = tls.state(conn, |s| s.handshake_kind()).flatten();
                        if kind == Some(rustls::HandshakeKind::Resumed) {
                            resumed += 1;
                        }
                        live -= 1;
                        if start.elapsed().as_secs_f64() < secs {
                            again += 1;
                        }
                        tio.free(conn)
                    }
                    (Op::Write, Ok(())) => Ok(()),
                    (op, r) => Err(gaio_core::Error::Io(fail(
                        "handshakes",
                        format!("{op:?}: {r:?}"),
                    ))),
                };
                if let Err(e) = step {
                    error.get_or_insert(e.into());
                }
            });
        }
        for _ in 0..again {
            open(&mut w, &tls)?;
            live += 1;
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    Ok((done, resumed, start.elapsed().as_secs_f64()))
}

/// `n` TLS connections, each past its handshake and one echo, then idle:
/// returns what keeps them open.
fn idle(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    n: usize,
) -> io::Result<(Watcher<Ctx<usize>>, Tls<usize>)> {
    let mut w = watcher(None)?;
    let tls: Tls<usize> = Tls::new();
    let mut opened = 0;
    let mut ready = 0;
    let start = Instant::now();
    while ready < n {
        if start.elapsed() > PATIENCE * 2 {
            return Err(fail("idle", format!("{ready} of {n} connections ready")));
        }
        // At most 256 handshakes at a time: no SYN flood.
        while opened < n && opened - ready < 256 {
            let c = connect(&mut w, addr)?;
            tls.connect(&w.local(), c, config, name(), 0)
                .map_err(io::Error::from)?;
            opened += 1;
        }
        let mut error = None;
        let batch = w
            .wait_io_timeout(Duration::from_secs(1))
            .map_err(io::Error::from)?;
        let io = batch.local();
        for res in batch {
            tls.complete(&io, res, |tio, res| {
                let r = match (res.op, &res.result) {
                    (Op::Connect, Ok(())) => tio
                        .write(res.conn, 0, vec![b'i'])
                        .and_then(|()| tio.read_full(res.conn, 0, vec![0], None)),
                    (Op::Read, Ok(())) => {
                        ready += 1;
                        Ok(())
                    }
                    (Op::Write, Ok(())) => Ok(()),
                    (op, r) => Err(gaio_core::Error::Io(fail("idle", format!("{op:?}: {r:?}")))),
                };
                if let Err(e) = r {
                    error.get_or_insert(e);
                }
            });
        }
        if let Some(e) = error {
            return Err(e.into());
        }
    }
    Ok((w, tls))
}

use crate::http::Http as Srv;

fn start(
    name: &'static str,
    bin: &Path,
    args: &[&str],
    core: Option<usize>,
) -> Result<Srv, String> {
    crate::http::start(name, bin, args, core).map_err(|e| format!("{}: {e}", bin.display()))
}

/// One server's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    mb_s_64k: f64,
    msgs_s: f64,
    cpu_us_per_msg: f64,
    full_hs_s: f64,
    resumed_hs_s: f64,
    resumed_share: f64,
    idle_bytes: f64,
}

/// Everything `run` measured.
pub struct Results {
    servers: Vec<(String, Figures)>,
    plain_mb_s_64k: f64,
    runs: usize,
    secs: f64,
    pinned: bool,
}

/// A certificate for localhost in `dir`: (cert.pem, key.pem, its DER).
fn cert_files(
    dir: &Path,
) -> Result<(PathBuf, PathBuf, rustls::pki_types::CertificateDer<'static>), String> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(&key, made.key_pair.serialize_pem()).map_err(|e| e.to_string())?;
    Ok((cert, key, made.cert.der().clone()))
}

/// Runs every scenario against tokio-rustls and gaio's TLS echo. `release`
/// holds the built binaries, `scratch` a directory for the certificate.
pub fn run(release: &Path, scratch: &Path, quick: bool) -> Result<Results, String> {
    gaio_testkit::raise_fd_limit();
    let (client_core, server_core) = crate::redis::client_and_server_cores();
    let (cert, key, der) = cert_files(scratch)?;
    let tls_args = [
        "--tls-cert",
        cert.to_str().unwrap_or(""),
        "--tls-key",
        key.to_str().unwrap_or(""),
    ];
    let tokio_bin = release.join("bench-tokio-rustls");
    let echo_bin = release.join("examples/echo");
    let uring_args = [&tls_args[..], &["--backend", "uring"]].concat();
    // gaio on io_uring too, where the kernel allows it (said loudly if not).
    let uring = gaio_core::Watcher::<()>::builder()
        .backend(gaio_core::Backend::IoUring)
        .build()
        .err();
    if let Some(why) = &uring {
        eprintln!("bench --tls: SKIPPING gaio on io_uring: {why}");
    }
    let n = if uring.is_none() { 3 } else { 2 };
    let fresh = |i: usize| -> Result<Srv, String> {
        match i {
            0 => start("tokio-rustls", &tokio_bin, &tls_args, server_core),
            1 => start("gaio echo --tls", &echo_bin, &tls_args, server_core),
            _ => start(
                "gaio echo --tls, io_uring",
                &echo_bin,
                &uring_args,
                server_core,
            ),
        }
    };
    let err = |e: io::Error| e.to_string();
    let full = client_config(&der, false);
    let resume = client_config(&der, true);
    let (runs, secs) = if quick { (1, 1.0) } else { (3, 3.0) };

    // Idle memory first, each on a fresh server.
    let mut figures = vec![Figures::default(); n];
    for (i, f) in figures.iter_mut().enumerate() {
        let srv = fresh(i)?;
        let base = crate::bench::rss_bytes(srv.child.id());
        let held = idle(srv.addr, &full, IDLE_CONNS).map_err(err)?;
        std::thread::sleep(Duration::from_millis(500));
        let grown = crate::bench::rss_bytes(srv.child.id()).saturating_sub(base);
        f.idle_bytes = grown as f64 / IDLE_CONNS as f64;
        eprintln!(
            "bench --tls: {}: {IDLE_CONNS} idle TLS connections, {:.0} B each",
            srv.name, f.idle_bytes
        );
        drop(held);
    }

    let srvs = (0..n).map(fresh).collect::<Result<Vec<_>, _>>()?;
    let plain = start("gaio echo", &echo_bin, &[], server_core)?;
    let mut samples: Vec<Vec<Figures>> = vec![Vec::new(); n];
    let mut plain_samples = Vec::new();
    for _ in 0..runs {
        for (i, srv) in srvs.iter().enumerate() {
            let mut f = Figures::default();
            let (n, s) = pingpong(srv.addr, &full, 1, 65536, secs, client_core).map_err(err)?;
            f.mb_s_64k = n as f64 * 65536.0 / s / 1e6;
            let cpu = crate::bench::cpu_secs(srv.child.id());
            let (n, s) =
                pingpong(srv.addr, &full, PINGPONG_CONNS, 1024, secs, client_core).map_err(err)?;
            let cpu = crate::bench::cpu_secs(srv.child.id()) - cpu;
            f.msgs_s = n as f64 / s;
            f.cpu_us_per_msg = cpu * 1e6 / n.max(1) as f64;
            let (n, _, s) = handshakes(srv.addr, &full, HANDSHAKES_IN_FLIGHT, secs, client_core)
                .map_err(err)?;
            f.full_hs_s = n as f64 / s;
            // One full handshake first fills the ticket store.
            handshakes(srv.addr, &resume, 1, 0.0, client_core).map_err(err)?;
            let (n, r, s) = handshakes(srv.addr, &resume, HANDSHAKES_IN_FLIGHT, secs, client_core)
                .map_err(err)?;
            f.resumed_hs_s = r as f64 / s;
            f.resumed_share = r as f64 / n.max(1) as f64;
            eprintln!(
                "  {}: 64 KiB {:.0} MB/s; 100×1 KiB {:.0} msg/s, {:.2} µs CPU/msg; handshakes full {:.0}/s, resumed {:.0}/s ({:.0}% resumed)",
                srv.name,
                f.mb_s_64k,
                f.msgs_s,
                f.cpu_us_per_msg,
                f.full_hs_s,
                f.resumed_hs_s,
                f.resumed_share * 100.0
            );
            samples[i].push(f);
        }
        let spec = crate::load::Spec {
            conns: 1,
            msg: 65536,
            rounds: crate::load::Rounds::For(Duration::from_secs_f64(secs)),
            latencies: false,
        };
        let o = crate::load::run(plain.addr, spec, PATIENCE).map_err(err)?;
        let mb = o.bytes as f64 / o.busy.as_secs_f64() / 1e6;
        eprintln!("  gaio echo (plaintext): 64 KiB {mb:.0} MB/s");
        plain_samples.push(mb);
    }
    let med =
        |v: &[Figures], f: fn(&Figures) -> f64| crate::bench::median(v.iter().map(f).collect());
    let servers = srvs
        .iter()
        .zip(samples.iter().zip(figures))
        .map(|(srv, (v, idle))| {
            let f = Figures {
                mb_s_64k: med(v, |f| f.mb_s_64k),
                msgs_s: med(v, |f| f.msgs_s),
                cpu_us_per_msg: med(v, |f| f.cpu_us_per_msg),
                full_hs_s: med(v, |f| f.full_hs_s),
                resumed_hs_s: med(v, |f| f.resumed_hs_s),
                resumed_share: med(v, |f| f.resumed_share),
                idle_bytes: idle.idle_bytes,
            };
            let pin = server_core.map_or(String::new(), |c| format!(", core {c}"));
            (format!("{}{pin}", srv.name), f)
        })
        .collect();
    Ok(Results {
        servers,
        plain_mb_s_64k: crate::bench::median(plain_samples),
        runs,
        secs,
        pinned: client_core.is_some(),
    })
}

/// The Markdown table: a row per scenario, gaio's figures as ratios to
/// tokio-rustls'.
pub fn report(r: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\nTLS 1.3, TLS13_AES_128_GCM_SHA256, ring, the same rustls server configuration for all; servers single-threaded{}; {} s per scenario, medians of {} run(s), servers interleaved. Ratios are gaio ÷ tokio-rustls (throughput: higher is better; CPU and memory: lower is better). The load generator is one thread of gaio-tls client sessions.\n",
        if r.pinned {
            " on core 1, the load generator on core 0"
        } else {
            ""
        },
        r.secs,
        r.runs
    );
    let _ = write!(md, "| scenario |");
    for (name, _) in &r.servers {
        let _ = write!(md, " {name} |");
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "|---|{}", "---|".repeat(r.servers.len()));
    let Some((_, base)) = r.servers.first() else {
        return md;
    };
    type Row = (&'static str, fn(&Figures) -> f64, usize);
    let rows: [Row; 6] = [
        ("64 KiB echo, 1 connection, MB/s", |f| f.mb_s_64k, 0),
        ("100 connections × 1 KiB ping-pong, msgs/s", |f| f.msgs_s, 0),
        ("server CPU per 1 KiB message, µs", |f| f.cpu_us_per_msg, 2),
        (
            "full handshakes/s (new connection each, 16 in flight)",
            |f| f.full_hs_s,
            0,
        ),
        ("resumed handshakes/s (tickets)", |f| f.resumed_hs_s, 0),
        (
            "RSS per idle TLS connection (10,000 open), bytes",
            |f| f.idle_bytes,
            0,
        ),
    ];
    for (label, get, digits) in rows {
        let _ = write!(md, "| {label} |");
        for (i, (_, f)) in r.servers.iter().enumerate() {
            let v = get(f);
            if i == 0 {
                let _ = write!(md, " {v:.digits$} |");
            } else {
                let _ = write!(md, " {v:.digits$} ({:.2}×) |", v / get(base));
            }
        }
        let _ = writeln!(md);
    }
    if let Some((_, g)) = r.servers.get(1) {
        let _ = writeln!(
            md,
            "\ngaio's plaintext echo (epoll) at 64 KiB on the same core: {:.0} MB/s; over TLS {:.0} MB/s = {:.2}× of plaintext.",
            r.plain_mb_s_64k,
            g.mb_s_64k,
            g.mb_s_64k / r.plain_mb_s_64k,
        );
        let shares: Vec<String> = r
            .servers
            .iter()
            .map(|(name, f)| format!("{name} {:.0}%", f.resumed_share * 100.0))
            .collect();
        let _ = writeln!(
            md,
            "Handshakes that resumed in the resumed-handshake runs: {}.",
            shares.join(", ")
        );
    }
    md
}

/// Builds what the comparison runs.
pub fn build(paths: &Paths) -> Result<(), String> {
    crate::run(
        "cargo build --release (echo, bench-tokio-rustls)",
        crate::cargo().current_dir(&paths.root).args([
            "build",
            "--release",
            "-p",
            "gaio",
            "--example",
            "echo",
            "-p",
            "gaio-bench",
            "--bin",
            "bench-tokio-rustls",
        ]),
    )
}

/// `cargo xtask bench --tls` on its own.
pub fn bench(paths: &Paths, quick: bool) -> Result<(), String> {
    build(paths)?;
    let out = paths.target.join("bench");
    let r = run(&paths.release(), &out.join("tls-cert"), quick)?;
    let md = report(&r);
    println!("{md}");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let f = out.join("tls.md");
    std::fs::write(&f, &md).map_err(|e| format!("{}: {e}", f.display()))?;
    eprintln!("bench --tls: wrote {}", f.display());
    Ok(())
}
