//! gaio-tls against rustls' own blocking client (its buffered API), and against
//! raw bytes: echo, resumption, SNI, ALPN, client auth, close_notify, and the
//! defences (garbage, truncation, oversized records, the handshake deadline).
//! Each runs on the backend `GAIO_BACKEND` names (CI runs both).

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use gaio_testkit::pattern;
use rustls::HandshakeKind;
use util::{Certs, PATIENCE, Server, client, echo};

#[test]
fn echo_every_size_swap_and_owned_reads() {
    let certs = Certs::new();
    for owned in [None, Some(1000)] {
        let server = Server::start(certs.server(), None, owned);
        let mut c = client(server.addr, &certs.client());
        for (i, len) in [1, 100, 1024, 16_383, 16_384, 16_385, 100_000, 1 << 20]
            .into_iter()
            .enumerate()
        {
            let msg = pattern(i, len);
            assert!(
                echo(&mut c, &msg) == msg,
                "echo of {len} bytes differs (owned {owned:?})"
            );
        }
        assert!(server.shake().result.is_ok());
        c.conn.send_close_notify();
        c.flush().unwrap();
        drop(c);
        server.wait_sessions(0);
    }
}

#[test]
fn a_second_connection_resumes() {
    let certs = Certs::new();
    let server = Server::start(certs.server(), None, None);
    let config = certs.client();
    let mut first = client(server.addr, &config);
    assert_eq!(echo(&mut first, b"one"), b"one");
    assert_eq!(server.shake().kind, Some(HandshakeKind::Full));
    // The tickets arrive after the handshake; the echo above read past them.
    let mut second = client(server.addr, &config);
    assert_eq!(echo(&mut second, b"two"), b"two");
    assert_eq!(second.conn.handshake_kind(), Some(HandshakeKind::Resumed));
    assert_eq!(server.shake().kind, Some(HandshakeKind::Resumed));
}

#[test]
fn sni_picks_the_certificate_and_alpn_is_negotiated() {
    let (a_chain, a_key) = util::cert(&["a.test"]);
    let (b_chain, b_key) = util::cert(&["b.test"]);
    let config = gaio_tls::server_config()
        .sni("a.test", a_chain.clone(), a_key)
        .sni("b.test", b_chain.clone(), b_key)
        .alpn(&[b"h2", b"gaio/1"])
        .build()
        .unwrap();
    let server = Server::start(config, None, None);
    for (name, chain) in [("a.test", &a_chain), ("b.test", &b_chain)] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(chain[0].clone()).unwrap();
        let mut cfg = (*gaio_tls::client_config(roots)).clone();
        cfg.alpn_protocols = vec![b"gaio/1".to_vec()];
        let tcp = TcpStream::connect(server.addr).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(cfg), name.try_into().unwrap()).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        assert_eq!(echo(&mut s, name.as_bytes()), name.as_bytes()); // verified as `name`
        assert_eq!(s.conn.alpn_protocol(), Some(&b"gaio/1"[..]));
        assert_eq!(server.shake().alpn.as_deref(), Some(&b"gaio/1"[..]));
    }
    // A name with no certificate and no default: refused with an alert.
    let mut s = client(server.addr, &Certs::new().client());
    assert!(
        s.write_all(b"x")
            .and_then(|_| s.flush())
            .and_then(|_| s.read(&mut [0; 1]))
            .is_err()
    );
    assert!(server.shake().result.is_err());
}

#[test]
fn client_auth_required_refuses_a_client_without_a_certificate() {
    let certs = Certs::new();
    let (ca_chain, ca_key) = util::cert(&["client"]);
    let mut client_roots = rustls::RootCertStore::empty();
    client_roots.add(ca_chain[0].clone()).unwrap();
    let config = gaio_tls::server_config()
        .cert(certs.chain.clone(), certs.key.clone_key())
        .client_auth(client_roots, true)
        .build()
        .unwrap();
    let server = Server::start(config, None, None);
    // Without a certificate: the server refuses.
    let mut anon = client(server.addr, &certs.client());
    let _ = anon.write_all(b"x").and_then(|_| anon.flush());
    assert!(anon.read(&mut [0; 1]).is_err());
    assert!(server.shake().result.is_err());
    // With one: served, and the server sees it.
    let cfg = rustls::ClientConfig::builder_with_provider(gaio_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(certs.roots())
        .with_client_auth_cert(ca_chain, ca_key)
        .unwrap();
    let mut authed = client(server.addr, &Arc::new(cfg));
    assert_eq!(echo(&mut authed, b"me"), b"me");
    let shake = server.shake();
    assert!(shake.result.is_ok());
    assert_eq!(shake.peer_certs, 1);
}

/// Reads until EOF or an error; returns what came.
fn drain(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

#[test]
fn garbage_instead_of_a_client_hello_gets_an_alert_and_a_close() {
    let certs = Certs::new();
    let server = Server::start(certs.server(), None, None);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let got = drain(&mut s);
    assert_eq!(got.first(), Some(&0x15), "an alert record, got {got:?}");
    let shake = server.shake();
    assert!(shake.result.is_err());
    server.wait_sessions(0);
}

#[test]
fn a_truncated_handshake_ends_cleanly() {
    let certs = Certs::new();
    let server = Server::start(certs.server(), None, None);
    // The first 40 bytes of a real ClientHello, then EOF.
    let mut hello = Vec::new();
    let mut c =
        rustls::ClientConnection::new(certs.client(), "localhost".try_into().unwrap()).unwrap();
    c.write_tls(&mut hello).unwrap();
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(&hello[..40]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    drain(&mut s);
    let shake = server.shake();
    assert!(shake.result.unwrap_err().contains("EOF"));
    server.wait_sessions(0);
}

#[test]
fn an_oversized_record_is_refused() {
    let certs = Certs::new();
    let server = Server::start(certs.server(), None, None);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    // A handshake record header claiming 60,000 bytes (TLS allows 16,384 + 2,048).
    s.write_all(&[0x16, 0x03, 0x01, 0xea, 0x60]).unwrap();
    s.write_all(&[0; 1000]).unwrap();
    let got = drain(&mut s);
    assert_eq!(got.first(), Some(&0x15), "an alert record, got {got:?}");
    assert!(server.shake().result.is_err());
    server.wait_sessions(0);
}

#[test]
fn a_silent_peer_is_cut_off_at_the_handshake_deadline() {
    let certs = Certs::new();
    let server = Server::start(certs.server(), Some(Duration::from_millis(200)), None);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    assert!(drain(&mut s).is_empty()); // closed, nothing said
    let shake = server.shake();
    assert_eq!(
        shake.result.unwrap_err(),
        gaio_core::Error::Deadline.to_string()
    );
    server.wait_sessions(0);
}

#[test]
fn a_handshake_message_over_the_cap_is_refused() {
    // A peer announcing a huge handshake message is cut off before it is
    // buffered (rustls caps one at 64 KiB; the session's ciphertext at that).
    let certs = Certs::new();
    let server = Server::start(certs.server(), None, None);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    // Records of 16 KiB each carrying one handshake message that never ends.
    let mut first = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
    first.resize(5 + 0x4000, 0);
    let _ = s.write_all(&first);
    for _ in 0..8 {
        let mut rec = vec![0x16, 0x03, 0x03, 0x40, 0x00];
        rec.resize(5 + 0x4000, 0);
        if s.write_all(&rec).is_err() {
            break;
        }
    }
    // The server may reset the connection (the client's records are unread),
    // so the alert may not reach this side; the server says why it stopped.
    drain(&mut s);
    let why = server.shake().result.unwrap_err();
    assert!(why.contains("HandshakePayloadTooLarge"), "{why}");
    server.wait_sessions(0);
}
