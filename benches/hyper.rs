//! The hyper baseline of `cargo xtask bench --http`: what a Rust user would
//! write with hyper 1.x — a tokio current-thread runtime, a task per
//! connection, `GET /plaintext` and `GET /json` (serialized per request with
//! `serde_json`), keep-alive and pipelining (responses flushed together).
//!
//! Usage: `bench-hyper --listen ADDR`; prints `listening on ADDR` first.

use std::convert::Infallible;
use std::io::Write;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::ser::{Serialize, SerializeStruct, Serializer};

struct Message<'a> {
    message: &'a str,
}

impl Serialize for Message<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Message", 1)?;
        m.serialize_field("message", self.message)?;
        m.end()
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, ctype, body) = match req.uri().path() {
        "/plaintext" => (
            StatusCode::OK,
            "text/plain",
            Bytes::from_static(b"Hello, World!"),
        ),
        "/json" => {
            let msg = Message {
                message: "Hello, World!",
            };
            let json = serde_json::to_vec(&msg).expect("a Vec takes any JSON");
            (StatusCode::OK, "application/json", Bytes::from(json))
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"Not Found\n"),
        ),
    };
    let res = Response::builder()
        .status(status)
        .header("content-type", ctype)
        .header("server", "hyper")
        .body(Full::new(body))
        .expect("a valid response");
    Ok(res)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut listen = String::from("127.0.0.1:0");
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            other => panic!("bench-hyper: unknown option {other}"),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .expect("bind --listen");
        println!("listening on {}", listener.local_addr().expect("bound"));
        let _ = std::io::stdout().flush();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::task::spawn(async move {
                let _ = http1::Builder::new()
                    .pipeline_flush(true)
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    });
}
