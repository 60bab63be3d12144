//! The resp-server example against a Redis client no one here wrote (the
//! `redis` crate), and against raw sockets for what a client library hides:
//! pipelines cut anywhere, a client that stops reading.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use gaio_testkit::{Example as Server, peak_rss_kib, start_example as start, status_kib};

/// A resp-server and a connection to it through the `redis` crate.
fn resp() -> (Server, SocketAddr, redis::Connection) {
    let (child, addr) = start("resp-server", &["--watchers", "2", "--max-bulk", "2097152"]);
    let server = Server(child);
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let con = client.get_connection().unwrap();
    (server, addr, con)
}

fn q<T: redis::FromRedisValue>(con: &mut redis::Connection, args: &[&str]) -> T {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(con).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn q_err(con: &mut redis::Connection, args: &[&str]) -> String {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    match c.query::<redis::Value>(con) {
        Err(e) => e.to_string(),
        Ok(v) => panic!("{args:?}: expected an error, got {v:?}"),
    }
}

#[test]
fn resp_server_answers_every_command_like_redis() {
    let (_server, _addr, mut c) = resp();
    let c = &mut c;
    assert_eq!(q::<String>(c, &["PING"]), "PONG");
    assert_eq!(q::<String>(c, &["PING", "hi"]), "hi");
    assert_eq!(q::<String>(c, &["ECHO", "x y"]), "x y");
    // Strings, SET options, expiry.
    assert_eq!(q::<String>(c, &["SET", "k", "v"]), "OK");
    assert_eq!(q::<String>(c, &["GET", "k"]), "v");
    assert_eq!(q::<Option<String>>(c, &["SET", "k", "w", "NX"]), None);
    assert_eq!(q::<String>(c, &["GET", "k"]), "v");
    assert_eq!(q::<Option<String>>(c, &["SET", "nope", "w", "XX"]), None);
    assert_eq!(q::<Option<String>>(c, &["GET", "nope"]), None);
    assert_eq!(q::<String>(c, &["SET", "k", "w", "XX", "EX", "100"]), "OK");
    let ttl: i64 = q(c, &["TTL", "k"]);
    assert!((99..=100).contains(&ttl), "ttl {ttl}");
    assert_eq!(q::<i64>(c, &["TTL", "missing"]), -2);
    assert_eq!(q::<String>(c, &["SET", "p", "1", "PX", "1"]), "OK");
    // An expired key is never returned, whatever asks.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while q::<Option<String>>(c, &["GET", "p"]).is_some() {
        assert!(std::time::Instant::now() < until, "PX 1 never expired");
    }
    assert_eq!(q::<i64>(c, &["EXISTS", "p"]), 0);
    assert_eq!(q::<i64>(c, &["TTL", "p"]), -2);
    assert_eq!(q::<i64>(c, &["EXPIRE", "k", "50"]), 1);
    assert_eq!(q::<i64>(c, &["EXPIRE", "missing", "50"]), 0);
    // Counters.
    assert_eq!(q::<i64>(c, &["INCR", "n"]), 1);
    assert_eq!(q::<i64>(c, &["INCRBY", "n", "41"]), 42);
    assert_eq!(q::<i64>(c, &["DECR", "n"]), 41);
    assert!(q_err(c, &["INCR", "k"]).contains("not an integer"));
    // Many keys.
    assert_eq!(q::<String>(c, &["MSET", "a", "1", "b", "2"]), "OK");
    assert_eq!(
        q::<Vec<Option<String>>>(c, &["MGET", "a", "b", "zz"]),
        [Some("1".into()), Some("2".into()), None]
    );
    assert_eq!(q::<i64>(c, &["DEL", "a", "b", "zz"]), 2);
    assert_eq!(q::<i64>(c, &["EXISTS", "a", "k", "n"]), 2);
    // Lists.
    assert_eq!(q::<i64>(c, &["RPUSH", "l", "b", "c"]), 2);
    assert_eq!(q::<i64>(c, &["LPUSH", "l", "a"]), 3);
    assert_eq!(q::<i64>(c, &["LLEN", "l"]), 3);
    assert_eq!(
        q::<Vec<String>>(c, &["LRANGE", "l", "0", "-1"]),
        ["a", "b", "c"]
    );
    assert_eq!(
        q::<Vec<String>>(c, &["LRANGE", "l", "-2", "10"]),
        ["b", "c"]
    );
    assert_eq!(q::<String>(c, &["LPOP", "l"]), "a");
    assert_eq!(q::<String>(c, &["RPOP", "l"]), "c");
    assert_eq!(q::<Vec<String>>(c, &["RPOP", "l", "5"]), ["b"]);
    assert_eq!(q::<Option<String>>(c, &["LPOP", "l"]), None);
    assert!(q_err(c, &["LPUSH", "k", "x"]).contains("WRONGTYPE"));
    // Sets.
    assert_eq!(q::<i64>(c, &["SADD", "s", "x", "y", "x"]), 2);
    assert_eq!(q::<i64>(c, &["SCARD", "s"]), 2);
    let one: String = q(c, &["SPOP", "s"]);
    assert!(one == "x" || one == "y");
    assert_eq!(q::<i64>(c, &["SCARD", "s"]), 1);
    // Hashes.
    assert_eq!(q::<i64>(c, &["HSET", "h", "f", "1", "g", "2"]), 2);
    assert_eq!(q::<i64>(c, &["HSET", "h", "f", "3"]), 0);
    assert_eq!(q::<String>(c, &["HGET", "h", "f"]), "3");
    assert_eq!(q::<Option<String>>(c, &["HGET", "h", "none"]), None);
    // Whole database.
    assert_eq!(q::<i64>(c, &["DBSIZE"]), 4); // k, n, s, h: an emptied list is gone
    assert_eq!(q::<String>(c, &["FLUSHALL"]), "OK");
    assert_eq!(q::<i64>(c, &["DBSIZE"]), 0);
    // Redis's error replies.
    assert!(q_err(c, &["GET"]).contains("wrong number of arguments for 'get' command"));
    assert!(q_err(c, &["NOSUCH", "x"]).contains("unknown command 'NOSUCH'"));
    assert!(q_err(c, &["SET", "k", "v", "EX", "0"]).contains("invalid expire time"));
    assert!(q_err(c, &["SET", "k", "v", "BOGUS"]).contains("syntax error"));
    // What client tools send at start.
    assert_eq!(
        q::<Vec<String>>(c, &["CONFIG", "GET", "save"]),
        ["save", ""]
    );
    assert_eq!(q::<String>(c, &["QUIT"]), "OK");
}

#[test]
fn resp_server_pipelines_1000_commands_and_1_mib_values() {
    let (_server, _addr, mut c) = resp();
    let mut p = redis::pipe();
    for i in 0..1000 {
        p.cmd("SET").arg(format!("key{i}")).arg(i).ignore();
    }
    for i in 0..1000 {
        p.cmd("GET").arg(format!("key{i}"));
    }
    let got: Vec<i64> = p.query(&mut c).unwrap();
    assert_eq!(got, (0..1000).collect::<Vec<i64>>());
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let _: () = redis::cmd("SET")
        .arg("big")
        .arg(&big)
        .query(&mut c)
        .unwrap();
    let back: Vec<u8> = redis::cmd("GET").arg("big").query(&mut c).unwrap();
    assert!(back == big, "1 MiB value changed");
    // Above --max-bulk (2 MiB here): refused, and the connection is closed.
    let huge = vec![b'h'; 3 << 20];
    let e = redis::cmd("SET").arg("huge").arg(&huge).query::<()>(&mut c);
    assert!(e.is_err());
}

#[test]
fn resp_server_serves_concurrent_clients_one_store() {
    let (_server, addr, _c) = resp();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
                let mut c = client.get_connection().unwrap();
                for i in 0..500 {
                    let _: i64 = redis::cmd("INCR").arg("shared").query(&mut c).unwrap();
                    let _: () = redis::cmd("SET")
                        .arg(format!("t{t}:{i}"))
                        .arg(i)
                        .query(&mut c)
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let mut c = client.get_connection().unwrap();
    let n: i64 = redis::cmd("GET").arg("shared").query(&mut c).unwrap();
    assert_eq!(n, 8 * 500, "every INCR counted once");
    let size: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(size, 8 * 500 + 1);
}

#[test]
fn resp_server_answers_malformed_input_with_an_error_and_closes() {
    let (_server, addr, _c) = resp();
    for bad in [
        &b"*2\r\n$3\r\nGET\r\n:1\r\n"[..],
        b"*x\r\n",
        b"*1\r\n$-5\r\n",
    ] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(bad).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap(); // ends: the server closed
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("-ERR Protocol error"), "{bad:?}: {text:?}");
    }
    // Inline commands work, as with telnet.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"PING\r\nSET a b\r\nGET a\r\n").unwrap();
    let mut got = vec![0; b"+PONG\r\n+OK\r\n$1\r\nb\r\n".len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, b"+PONG\r\n+OK\r\n$1\r\nb\r\n");
}

/// A 60 KB value under key `v`, and the exact bytes of its `GET` reply.
fn big_value(addr: SocketAddr) -> Vec<u8> {
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let mut c = client.get_connection().unwrap();
    let value: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    let _: () = redis::cmd("SET")
        .arg("v")
        .arg(&value)
        .query(&mut c)
        .unwrap();
    let mut reply = format!("${}\r\n", value.len()).into_bytes();
    reply.extend_from_slice(&value);
    reply.extend_from_slice(b"\r\n");
    reply
}

const GET_V: &[u8] = b"*2\r\n$3\r\nGET\r\n$1\r\nv\r\n";

/// Reads `n` replies, each exactly `reply`.
fn read_replies(s: &mut TcpStream, reply: &[u8], n: usize) {
    let mut got = vec![0; reply.len()];
    for i in 0..n {
        s.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("reply {i} of {n}: {e}"));
        assert!(got == reply, "reply {i} of {n} differs");
    }
}

/// Many large replies to one packet of requests: a client that reads gets
/// them all (a write limit counting one turn's replies used to drop it).
#[test]
fn resp_server_answers_a_pipeline_of_large_replies_to_a_client_that_reads() {
    let (server, addr) = start("resp-server", &["--watchers", "2"]);
    let _server = Server(server);
    let reply = big_value(addr);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&GET_V.repeat(18)).unwrap(); // one packet, 1 MB of replies
    read_replies(&mut s, &reply, 18);
    // And a long pipeline written while the replies are read.
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&GET_V.repeat(2000)).unwrap());
    read_replies(&mut s, &reply, 2000);
    writer.join().unwrap();
}

/// A client that pipelines 10,000 GETs of a 60 KB value (600 MB of replies)
/// and reads nothing stops being read: the server's memory stays within a
/// few watermarks, and every reply arrives once the client reads.
#[test]
fn resp_server_stops_reading_a_client_that_does_not_read_and_delivers_later() {
    const N: usize = 10_000;
    let (server, addr) = start("resp-server", &["--watchers", "2"]);
    let pid = server.id();
    let _server = Server(server);
    let reply = big_value(addr);
    let before = status_kib(pid, "VmRSS:");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&GET_V.repeat(N)).unwrap());
    // The client reads nothing for a second; the server's memory meanwhile.
    let most = peak_rss_kib(pid, Duration::from_secs(1)).max(before);
    assert!(
        most - before < 32 * 1024,
        "server RSS grew by {} KiB while the client did not read",
        most - before
    );
    read_replies(&mut s, &reply, N);
    writer.join().unwrap();
    let after = status_kib(pid, "VmHWM:");
    assert!(
        after - before < 64 * 1024,
        "server peak RSS {after} KiB (from {before} KiB) serving {N} replies"
    );
}
