//! A gaio-tls echo server on its own thread, certificates, and a blocking
//! rustls client (rustls' buffered API, not this crate's code) for the tests.
#![allow(dead_code, missing_docs)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use gaio_core::{Buffer, Op, Requests, Watcher};
use gaio_tls::{Ctx, Tls};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, RootCertStore, ServerConfig, StreamOwned,
};

pub use gaio_testkit::PATIENCE;

/// A self-signed certificate for `names`.
pub fn cert(names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let c =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let key = PrivateKeyDer::Pkcs8(c.key_pair.serialize_der().into());
    (vec![c.cert.der().clone()], key)
}

pub struct Certs {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Certs {
    pub fn new() -> Certs {
        let (chain, key) = cert(&["localhost"]);
        Certs { chain, key }
    }
    pub fn server(&self) -> Arc<ServerConfig> {
        gaio_tls::server_config()
            .cert(self.chain.clone(), self.key.clone_key())
            .build()
            .unwrap()
    }
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.chain[0].clone()).unwrap();
        roots
    }
    pub fn client(&self) -> Arc<ClientConfig> {
        gaio_tls::client_config(self.roots())
    }
}

/// What the server saw of one connection's handshake.
#[derive(Debug)]
pub struct Shake {
    pub result: Result<(), String>,
    pub kind: Option<HandshakeKind>,
    pub alpn: Option<Vec<u8>>,
    pub peer_certs: usize,
}

/// A TLS echo server: every read echoed back, EOF or an error frees the
/// connection. Reads use the swap buffer, or owned buffers of `owned` bytes.
pub struct Server {
    pub addr: SocketAddr,
    pub shakes: Receiver<Shake>,
    pub sessions: Arc<Mutex<usize>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(
        config: Arc<ServerConfig>,
        handshake_timeout: Option<Duration>,
        owned: Option<usize>,
    ) -> Server {
        let listener = gaio_testkit::listener();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sessions = Arc::new(Mutex::new(0));
        let (tx, shakes) = channel();
        let (stop2, sessions2) = (stop.clone(), sessions.clone());
        let thread = std::thread::spawn(move || {
            let mut w: Watcher<Ctx<u8>> = Watcher::new().unwrap();
            let tls: Tls<u8> = Tls::new().handshake_timeout(handshake_timeout);
            let l = w.register(listener).unwrap();
            for _ in 0..64 {
                w.local().accept(l, Ctx::App(0)).unwrap();
            }
            while !stop2.load(Ordering::Relaxed) {
                let batch = w.wait_io_timeout(Duration::from_millis(20)).unwrap();
                let io = batch.local();
                let read = |tio: &gaio_tls::TlsIo<'_, u8, _>, conn| {
                    let _ = tio.read(conn, 1, owned.map(|n| vec![0; n]));
                };
                for res in batch {
                    tls.complete(&io, res, |tio, res| match (res.op, res.ctx) {
                        (Op::Accept, _) => {
                            if let Some((conn, _)) = res.accepted() {
                                tls.accept(tio.inner(), conn, &config, 9).unwrap();
                                read(tio, conn);
                            }
                            tio.accept(l, 0).unwrap();
                        }
                        (Op::Connect, 9) => {
                            let state = |f: fn(&rustls::CommonState) -> Option<Vec<u8>>| {
                                tls.state(res.conn, f).flatten()
                            };
                            let _ = tx.send(Shake {
                                result: res.result.as_ref().map(|_| ()).map_err(|e| e.to_string()),
                                kind: tls.state(res.conn, |s| s.handshake_kind()).flatten(),
                                alpn: state(|s| s.alpn_protocol().map(<[u8]>::to_vec)),
                                peer_certs: tls
                                    .state(res.conn, |s| {
                                        s.peer_certificates().map_or(0, |c| c.len())
                                    })
                                    .unwrap_or(0),
                            });
                        }
                        (Op::Read, _) if res.result.is_ok() && res.size > 0 => {
                            let data = res.data().to_vec();
                            let conn = res.conn;
                            let _ = tio.write(conn, 2, data);
                            read(tio, conn);
                        }
                        (Op::Read, _) => {
                            let _ = tio.free(res.conn);
                        }
                        (Op::Write, _) => {
                            if let Buffer::Owned(_) = res.buffer {}
                            if res.result.is_err() {
                                let _ = tio.free(res.conn);
                            }
                        }
                        _ => {}
                    });
                }
                *sessions2.lock().unwrap() = tls.sessions();
            }
        });
        Server {
            addr,
            shakes,
            sessions,
            stop,
            thread: Some(thread),
        }
    }

    /// The next handshake outcome (panics after `PATIENCE`).
    pub fn shake(&self) -> Shake {
        self.shakes
            .recv_timeout(PATIENCE)
            .expect("a handshake outcome")
    }

    /// Waits until the server holds `n` sessions.
    pub fn wait_sessions(&self, n: usize) {
        let end = std::time::Instant::now() + PATIENCE;
        while *self.sessions.lock().unwrap() != n {
            assert!(
                std::time::Instant::now() < end,
                "sessions stayed at {}",
                self.sessions.lock().unwrap()
            );
            std::thread::yield_now();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A blocking rustls client connected to `addr`.
pub fn client(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> StreamOwned<ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config.clone(), name).unwrap();
    StreamOwned::new(conn, tcp)
}

/// Sends `msg` and reads the same number of bytes back.
pub fn echo(s: &mut StreamOwned<ClientConnection, TcpStream>, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).unwrap();
    s.flush().unwrap();
    let mut got = vec![0; msg.len()];
    s.read_exact(&mut got).unwrap();
    got
}
