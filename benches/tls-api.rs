//! Which rustls API gaio-tls builds on, by measurement: the buffered
//! `ServerConnection` (what tokio-rustls and compio-tls use) against the
//! unbuffered `UnbufferedServerConnection` (what gaio-tls uses), in memory, no
//! sockets: heap held per idle server session after a handshake and one 1 KiB
//! echo, and the server's time per 1 KiB echo (decrypt one record, encrypt
//! one). The client is rustls' buffered one for both.
//!
//! Run: `cargo run --release -p gaio-bench --bin bench-tls-api`

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use gaio_testkit::CountingAlloc;
use gaio_tls::rustls;
use rustls::unbuffered::ConnectionState;
use rustls::{ClientConnection, ServerConnection, server::UnbufferedServerConnection};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const SESSIONS: usize = 1000;
const ECHOES: usize = 100_000;

/// The buffered server and its client, pumped through memory.
fn buffered_echo(
    s: &mut ServerConnection,
    c: &mut ClientConnection,
    msg: &[u8],
    wire: &mut Vec<u8>,
) {
    // client → server
    c.writer().write_all(msg).unwrap();
    wire.clear();
    c.write_tls(wire).unwrap();
    let mut rd = &wire[..];
    while !rd.is_empty() {
        s.read_tls(&mut rd).unwrap();
    }
    s.process_new_packets().unwrap();
    let mut buf = [0u8; 4096];
    let n = s.reader().read(&mut buf).unwrap();
    s.writer().write_all(&buf[..n]).unwrap();
    wire.clear();
    s.write_tls(wire).unwrap();
    // server → client
    let mut rd = &wire[..];
    while !rd.is_empty() {
        c.read_tls(&mut rd).unwrap();
    }
    c.process_new_packets().unwrap();
    let mut back = vec![0u8; msg.len()];
    c.reader().read_exact(&mut back).unwrap();
}

/// Moves every pending byte between a buffered pair until neither has more.
fn pump_buffered(s: &mut ServerConnection, c: &mut ClientConnection) {
    let mut wire = Vec::new();
    for _ in 0..10 {
        wire.clear();
        c.write_tls(&mut wire).unwrap();
        let mut rd = &wire[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
        }
        s.process_new_packets().unwrap();
        wire.clear();
        s.write_tls(&mut wire).unwrap();
        let mut rd = &wire[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
        }
        c.process_new_packets().unwrap();
    }
}

/// The unbuffered server's side of an exchange: takes the bytes in `incoming`
/// (whole records are consumed), returns the plaintext received, appends what
/// to send to `out`, and echoes `echo` back if given.
fn unbuffered_step(
    s: &mut UnbufferedServerConnection,
    incoming: &mut Vec<u8>,
    out: &mut Vec<u8>,
    plain: &mut Vec<u8>,
    echo: bool,
) {
    let mut consumed = 0;
    loop {
        let st = s.process_tls_records(&mut incoming[consumed..]);
        let discard = st.discard;
        match st.state.unwrap() {
            ConnectionState::ReadTraffic(mut r) => {
                while let Some(rec) = r.next_record() {
                    plain.extend_from_slice(rec.unwrap().payload);
                }
            }
            ConnectionState::EncodeTlsData(mut e) => {
                let start = out.len();
                out.resize(start + 4096, 0);
                let n = e.encode(&mut out[start..]).unwrap();
                out.truncate(start + n);
            }
            ConnectionState::TransmitTlsData(t) => t.done(),
            ConnectionState::WriteTraffic(mut w) => {
                if echo && !plain.is_empty() {
                    let start = out.len();
                    out.resize(start + plain.len() + 64, 0);
                    let n = w.encrypt(plain, &mut out[start..]).unwrap();
                    out.truncate(start + n);
                    plain.clear();
                }
                consumed += discard;
                break;
            }
            _ => {
                consumed += discard;
                break;
            }
        }
        consumed += discard;
    }
    incoming.drain(..consumed);
}

/// One exchange with the unbuffered server: what the client has to send goes
/// in, what the server answers goes back and is processed by the client.
fn unbuffered_round(
    s: &mut UnbufferedServerConnection,
    c: &mut ClientConnection,
    incoming: &mut Vec<u8>,
    out: &mut Vec<u8>,
    plain: &mut Vec<u8>,
) {
    c.write_tls(incoming).unwrap();
    unbuffered_step(s, incoming, out, plain, true);
    let mut rd = &out[..];
    while !rd.is_empty() {
        c.read_tls(&mut rd).unwrap();
    }
    out.clear();
    c.process_new_packets().unwrap();
}

fn main() {
    gaio_testkit::count_allocations(true);
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.key_pair.serialize_der().into());
    let server = gaio_tls::server_config()
        .cert(vec![made.cert.der().clone()], key)
        .build()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(made.cert.der().clone()).unwrap();
    let client: Arc<_> = gaio_tls::client_config(roots);
    let msg = vec![7u8; 1024];

    // Buffered: memory per idle session — what stays allocated once the
    // client is gone, session by session.
    let mut servers: Vec<Box<ServerConnection>> = Vec::with_capacity(SESSIONS);
    let mut held = 0isize;
    for _ in 0..SESSIONS {
        let before = gaio_testkit::live_bytes();
        let mut s = Box::new(ServerConnection::new(server.clone()).unwrap());
        let mut c = ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
        pump_buffered(&mut s, &mut c);
        buffered_echo(&mut s, &mut c, &msg, &mut Vec::new());
        drop(c);
        servers.push(s);
        held += gaio_testkit::live_bytes() - before;
    }
    let buffered_idle = held as f64 / SESSIONS as f64;
    drop(servers);

    // Buffered: time per echo (server side and client side both run; the
    // client's cost is the same in both measurements).
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut c = ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
    pump_buffered(&mut s, &mut c);
    let mut wire = Vec::new();
    let t = Instant::now();
    for _ in 0..ECHOES {
        buffered_echo(&mut s, &mut c, &msg, &mut wire);
    }
    let buffered_ns = t.elapsed().as_nanos() as f64 / ECHOES as f64;

    // Unbuffered: memory per idle session (incoming and outgoing buffers are
    // the caller's, shared, so none is kept per session).
    let mut servers = Vec::with_capacity(SESSIONS);
    let (mut incoming, mut out, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    let mut held = 0isize;
    for _ in 0..SESSIONS {
        let before = gaio_testkit::live_bytes();
        let mut s = Box::new(UnbufferedServerConnection::new(server.clone()).unwrap());
        let mut c = ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
        for _ in 0..10 {
            unbuffered_round(&mut s, &mut c, &mut incoming, &mut out, &mut plain);
        }
        c.writer().write_all(&msg).unwrap();
        unbuffered_round(&mut s, &mut c, &mut incoming, &mut out, &mut plain);
        let mut back = vec![0u8; msg.len()];
        c.reader().read_exact(&mut back).unwrap();
        drop(c);
        servers.push(s);
        held += gaio_testkit::live_bytes() - before;
    }
    let unbuffered_idle = held as f64 / SESSIONS as f64;
    drop(servers);
    let mut c = ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
    let mut s = UnbufferedServerConnection::new(server.clone()).unwrap();
    for _ in 0..10 {
        unbuffered_round(&mut s, &mut c, &mut incoming, &mut out, &mut plain);
    }
    let mut back = vec![0u8; msg.len()];
    let t = Instant::now();
    for _ in 0..ECHOES {
        c.writer().write_all(&msg).unwrap();
        unbuffered_round(&mut s, &mut c, &mut incoming, &mut out, &mut plain);
        c.reader().read_exact(&mut back).unwrap();
    }
    let unbuffered_ns = t.elapsed().as_nanos() as f64 / ECHOES as f64;

    println!(
        "| rustls API | heap per idle server session | time per 1 KiB echo (client + server, in memory) |"
    );
    println!("|---|---|---|");
    println!("| buffered `ServerConnection` | {buffered_idle:.0} B | {buffered_ns:.0} ns |");
    println!(
        "| unbuffered `UnbufferedServerConnection` | {unbuffered_idle:.0} B ({:.2}×) | {unbuffered_ns:.0} ns ({:.2}×) |",
        unbuffered_idle / buffered_idle,
        unbuffered_ns / buffered_ns
    );
}
