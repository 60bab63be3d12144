//! Baseline for `cargo xtask bench`: the echo server a Rust user would write with
//! tokio (multi-thread runtime, a task and a 4 KiB buffer per connection). Not an
//! example of how to use gaio.
//!
//! Run: `cargo run --release -p gaio-bench --bin bench-tokio -- --listen 127.0.0.1:7000`
//! Prints `listening on ADDR`, then echoes until killed. `--current-thread` uses
//! tokio's single-threaded runtime instead.

use std::io::Write;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:0".to_string();
    let mut current = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            "--current-thread" => current = true,
            other => panic!("unknown argument {other}"),
        }
    }
    let rt = if current {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        // The same 4096 backlog as every other server in the bench.
        let addr: std::net::SocketAddr = listen.parse().expect("--listen takes IP:PORT");
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        sock.set_reuseaddr(true)?;
        sock.bind(addr)?;
        let listener = sock.listen(4096)?;
        println!("listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        loop {
            let (mut s, _) = listener.accept().await?;
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    })
}
