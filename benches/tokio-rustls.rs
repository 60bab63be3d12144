//! Baseline for `cargo xtask bench --tls`: the TLS echo server a Rust user
//! would write with tokio and tokio-rustls (a task, a 4 KiB buffer and a
//! buffered rustls `ServerConnection` per connection), on the same rustls
//! configuration as gaio's (`gaio_tls::server_config`: the same provider,
//! tickets and session cache). Not an example of how to use gaio.
//!
//! Run: `cargo run --release -p gaio-bench --bin bench-tokio-rustls -- --tls-cert PEM --tls-key PEM`
//! Prints `listening on ADDR`, then echoes until killed. Runs on tokio's
//! single-threaded runtime (`--multi-thread`: the multi-threaded one).

use std::io::Write;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:0".to_string();
    let (mut cert, mut key) = (None, None);
    let mut multi = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            "--tls-cert" => cert = args.next(),
            "--tls-key" => key = args.next(),
            "--multi-thread" => multi = true,
            other => panic!("unknown argument {other}"),
        }
    }
    let chain = gaio_tls::load_certs(cert.expect("--tls-cert PEM"))?;
    let key = gaio_tls::load_key(key.expect("--tls-key PEM"))?;
    let config = gaio_tls::server_config()
        .cert(chain, key)
        .build()
        .map_err(std::io::Error::other)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let rt = if multi {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        let addr: std::net::SocketAddr = listen.parse().expect("--listen takes IP:PORT");
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.set_reuseaddr(true)?;
        sock.bind(addr)?;
        let listener = sock.listen(4096)?;
        println!("listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        loop {
            let (s, _) = listener.accept().await?;
            let _ = s.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    })
}
