//! A Redis-protocol (RESP2) server on gaio-pool: pipelining, inline commands,
//! strings with expiry, lists, sets, hashes.
//!
//! Run: `cargo run --release --example resp-server -- --listen 127.0.0.1:0 [--watchers N]`
//! Prints `listening on ADDR` first; then `redis-cli -p PORT` and
//! `redis-benchmark -p PORT` work against it. Runs until SIGINT or SIGTERM,
//! then shuts down gracefully (exit status 0).
//!
//! The store: 64 shards, each a `Mutex<HashMap>`, picked by a hash of the key.
//! Every watcher serves its own connections and locks only the shard of the key
//! at hand (multi-key commands lock one shard at a time), so watchers contend
//! only on the same shard at the same moment. Expired keys are removed when
//! touched and are never returned.
//!
//! Per connection, flow control in the library's terms (`gaio::Flow`): the
//! commands one read brings (a pipeline) are run while the connection is
//! writable, their replies going out in writes of about 64 KiB. When the
//! replies queued for the client pass the high watermark (64 KiB), the server
//! stops running commands and reading, and asks to be told (`writable`) when
//! the client has taken them down to the low one (32 KiB). So a client that
//! pipelines and reads gets every reply; a client that stops reading stops
//! being read — TCP pushes back on it — and costs at most the watermark, one
//! reply and one read's worth of unrun commands, and gets every reply once it
//! reads again. (redis-server's default output buffer for normal clients is
//! unlimited.) Unrun commands wait in a buffer of the connection's own; an idle
//! connection holds none.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gaio::Flow;
use gaio::core::{Buffer, Conn, Op, Requests};
use gaio::pool::{Event, Io, Pool};

const USAGE: &str = "\
usage: resp-server --listen ADDR [--watchers N] [--max-bulk BYTES] [--backend auto|epoll|uring]

  --listen ADDR       address to listen on (127.0.0.1:0: any free port)
  --backend KIND      kernel interface: auto, epoll or uring (default epoll or $GAIO_BACKEND)
  --watchers N        watcher threads, at least 1 (default: the cores this process may use)
  --max-bulk BYTES    longest bulk string accepted (default 536870912, Redis's
                      proto-max-bulk-len); a longer one is a protocol error
";

/// Longest inline command line.
const MAX_INLINE: usize = 64 * 1024;
/// Most arguments in one command.
const MAX_ARGS: usize = 1024 * 1024;
const SHARDS: usize = 64;

enum Value {
    Str(Vec<u8>),
    List(VecDeque<Vec<u8>>),
    Set(HashSet<Vec<u8>>),
    Hash(HashMap<Vec<u8>, Vec<u8>>),
}

struct Entry {
    value: Value,
    expires: Option<Instant>,
}

/// A fast keyed hash (multiply-rotate over 8-byte words, seeded per process)
/// for the shards' maps: SipHash was the top user-space cost per request.
#[derive(Clone, Copy)]
struct Fast(u64);

impl BuildHasher for Fast {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.0)
    }
}

struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn mix(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.mix(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let mut tail = [0u8; 8];
        let rest = chunks.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        self.mix(u64::from_le_bytes(tail) ^ ((bytes.len() as u64) << 56));
    }
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }
    fn finish(&self) -> u64 {
        // Fold the high bits down: hashbrown and the shard pick use low bits.
        self.0 ^ (self.0 >> 29)
    }
}

type Shard = HashMap<Vec<u8>, Entry, Fast>;

struct Store {
    shards: Vec<Mutex<Shard>>,
    hasher: Fast,
}

impl Store {
    fn new() -> Store {
        // The seed comes from std's random keys, so collisions cannot be
        // precomputed offline.
        let seed = std::hash::RandomState::new().hash_one(0u64) | 1;
        let hasher = Fast(seed);
        Store {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(hasher)))
                .collect(),
            hasher,
        }
    }

    fn shard(&self, key: &[u8]) -> MutexGuard<'_, Shard> {
        // Bits the maps use least (hashbrown takes the low ones and the top 7).
        let i = (self.hasher.hash_one(key) >> 32) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The live entry of `key`, removing it first if it has expired.
fn live<'s>(shard: &'s mut Shard, key: &[u8], now: Instant) -> Option<&'s mut Entry> {
    if shard
        .get(key)
        .is_some_and(|e| e.expires.is_some_and(|at| at <= now))
    {
        shard.remove(key);
    }
    shard.get_mut(key)
}

/// The live value at `key`, or a new one made by `empty` (a collection command
/// on a missing key creates it).
fn or_insert<'s>(
    shard: &'s mut Shard,
    key: &[u8],
    now: Instant,
    empty: fn() -> Value,
) -> &'s mut Value {
    let fresh = shard
        .get(key)
        .is_some_and(|e| e.expires.is_none_or(|at| at > now));
    if !fresh {
        // Missing, or expired: either way a new, empty value.
        shard.insert(
            key.to_vec(),
            Entry {
                value: empty(),
                expires: None,
            },
        );
    }
    &mut shard.get_mut(key).expect("present or just inserted").value
}

/// The optional COUNT of LPOP, RPOP and SPOP; `Err` once the error is replied.
fn count_arg(arg: Option<&&[u8]>, out: &mut Out<'_>) -> Result<Option<usize>, ()> {
    match arg.map(|c| parse_int(c)) {
        None => Ok(None),
        Some(Some(c)) if c >= 0 => Ok(Some(c as usize)),
        Some(_) => {
            out.error("ERR value is out of range, must be positive");
            Err(())
        }
    }
}

/// Replies, RESP2-encoded, appended to one buffer.
struct Out<'a>(&'a mut Vec<u8>);

impl Out<'_> {
    fn simple(&mut self, s: &str) {
        self.0.push(b'+');
        self.0.extend_from_slice(s.as_bytes());
        self.0.extend_from_slice(b"\r\n");
    }
    fn error(&mut self, s: &str) {
        self.0.push(b'-');
        self.0.extend_from_slice(s.as_bytes());
        self.0.extend_from_slice(b"\r\n");
    }
    fn int(&mut self, n: i64) {
        let _ = write!(self.0, ":{n}\r\n");
    }
    fn bulk(&mut self, b: &[u8]) {
        let _ = write!(self.0, "${}\r\n", b.len());
        self.0.extend_from_slice(b);
        self.0.extend_from_slice(b"\r\n");
    }
    fn nil(&mut self) {
        self.0.extend_from_slice(b"$-1\r\n");
    }
    fn nil_array(&mut self) {
        self.0.extend_from_slice(b"*-1\r\n");
    }
    fn array(&mut self, n: usize) {
        let _ = write!(self.0, "*{n}\r\n");
    }
    fn wrong_type(&mut self) {
        self.error("WRONGTYPE Operation against a key holding the wrong kind of value");
    }
    fn not_int(&mut self) {
        self.error("ERR value is not an integer or out of range");
    }
    fn syntax(&mut self) {
        self.error("ERR syntax error");
    }
}

/// What parsing the front of a buffer found.
enum Parsed {
    /// A command, its arguments pushed to the caller's list; the bytes it took.
    Command(usize),
    /// Not all of it has arrived.
    Incomplete,
    /// Not RESP: reply with this error and close.
    Malformed(String),
}

/// A `\r\n`-terminated line at the front of `buf`: (line, bytes with ending).
fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let nl = buf.iter().position(|&b| b == b'\n')?;
    let l = &buf[..nl];
    Some((l.strip_suffix(b"\r").unwrap_or(l), nl + 1))
}

fn parse_int(b: &[u8]) -> Option<i64> {
    let (neg, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if neg { -n } else { n })
}

fn parse<'b>(buf: &'b [u8], max_bulk: usize, args: &mut Vec<&'b [u8]>) -> Parsed {
    if buf.first() != Some(&b'*') {
        // Inline: words separated by spaces, up to the end of the line.
        let Some((l, used)) = line(buf) else {
            return if buf.len() > MAX_INLINE {
                Parsed::Malformed("ERR Protocol error: too big inline request".into())
            } else {
                Parsed::Incomplete
            };
        };
        args.extend(
            l.split(|b| b.is_ascii_whitespace())
                .filter(|w| !w.is_empty()),
        );
        return Parsed::Command(used);
    }
    let Some((head, mut at)) = line(&buf[1..]) else {
        return Parsed::Incomplete;
    };
    at += 1;
    let n = match parse_int(head) {
        Some(n) if (0..=MAX_ARGS as i64).contains(&n) => n as usize,
        _ => return Parsed::Malformed("ERR Protocol error: invalid multibulk length".into()),
    };
    for _ in 0..n {
        let rest = &buf[at..];
        if rest.is_empty() {
            return Parsed::Incomplete;
        }
        if rest[0] != b'$' {
            let got = rest[0] as char;
            return Parsed::Malformed(format!("ERR Protocol error: expected '$', got '{got}'"));
        }
        let Some((len, used)) = line(&rest[1..]) else {
            return Parsed::Incomplete;
        };
        let len = match parse_int(len) {
            Some(l) if l >= 0 && (l as u64) <= max_bulk as u64 => l as usize,
            _ => return Parsed::Malformed("ERR Protocol error: invalid bulk length".into()),
        };
        let start = at + 1 + used;
        if buf.len() < start + len + 2 {
            return Parsed::Incomplete;
        }
        if &buf[start + len..start + len + 2] != b"\r\n" {
            return Parsed::Malformed("ERR Protocol error: bulk string not ended by CRLF".into());
        }
        args.push(&buf[start..start + len]);
        at = start + len + 2;
    }
    Parsed::Command(at)
}

/// What a command asks of the connection besides its reply.
#[derive(PartialEq)]
enum After {
    Continue,
    Close,
}

fn arity_error(out: &mut Out<'_>, name: &str) {
    out.error(&format!(
        "ERR wrong number of arguments for '{name}' command"
    ));
}

/// Runs one command, appending its reply.
fn execute(store: &Store, args: &[&[u8]], now: Instant, out: &mut Out<'_>) -> After {
    let Some(first) = args.first() else {
        return After::Continue; // an empty inline line: Redis ignores it
    };
    // Lower-cased on the stack: no allocation per command.
    let mut lower = [0u8; 16];
    let name: &str = match lower.get_mut(..first.len()) {
        Some(buf) => {
            buf.copy_from_slice(first);
            buf.make_ascii_lowercase();
            std::str::from_utf8(buf).unwrap_or("")
        }
        None => "",
    };
    let argc = args.len();
    // (minimum, maximum) argument counts, name included.
    let arity = |min: usize, max: usize| argc >= min && argc <= max;
    const ANY: usize = usize::MAX;
    let ok = match name {
        "ping" => arity(1, 2),
        "echo" | "get" | "incr" | "decr" | "llen" | "scard" | "ttl" => arity(2, 2),
        "set" => arity(3, ANY),
        "del" | "exists" | "mget" => arity(2, ANY),
        "incrby" | "expire" | "hget" => arity(3, 3),
        "mset" => argc >= 3 && !argc.is_multiple_of(2),
        "lpush" | "rpush" | "sadd" => arity(3, ANY),
        "lpop" | "rpop" | "spop" => arity(2, 3),
        "lrange" => arity(4, 4),
        "hset" => argc >= 4 && argc.is_multiple_of(2),
        "dbsize" | "flushall" | "quit" => arity(1, 2) && (name == "flushall" || argc == 1),
        "config" | "command" | "client" | "info" | "select" => arity(1, ANY),
        _ => {
            let mut msg = format!(
                "ERR unknown command '{}', with args beginning with: ",
                String::from_utf8_lossy(first)
            );
            for a in &args[1..] {
                msg.push_str(&format!("'{}' ", String::from_utf8_lossy(a)));
            }
            out.error(msg.trim_end());
            return After::Continue;
        }
    };
    if !ok {
        arity_error(out, name);
        return After::Continue;
    }
    match name {
        "ping" => match args.get(1) {
            Some(m) => out.bulk(m),
            None => out.simple("PONG"),
        },
        "echo" => out.bulk(args[1]),
        "quit" => {
            out.simple("OK");
            return After::Close;
        }
        "set" => set(store, args, now, out),
        "get" => {
            let mut s = store.shard(args[1]);
            match live(&mut s, args[1], now) {
                None => out.nil(),
                Some(Entry {
                    value: Value::Str(v),
                    ..
                }) => out.bulk(v),
                Some(_) => out.wrong_type(),
            }
        }
        "del" | "exists" => {
            let mut n = 0;
            for k in &args[1..] {
                let mut s = store.shard(k);
                if live(&mut s, k, now).is_some() {
                    n += 1;
                    if name == "del" {
                        s.remove(*k);
                    }
                }
            }
            out.int(n);
        }
        "incr" | "decr" | "incrby" => {
            let by = match name {
                "incr" => Some(1),
                "decr" => Some(-1),
                _ => parse_int(args[2]),
            };
            match by {
                Some(by) => incr(store, args[1], by, now, out),
                None => out.not_int(),
            }
        }
        "mset" => {
            for kv in args[1..].chunks(2) {
                store.shard(kv[0]).insert(
                    kv[0].to_vec(),
                    Entry {
                        value: Value::Str(kv[1].to_vec()),
                        expires: None,
                    },
                );
            }
            out.simple("OK");
        }
        "mget" => {
            out.array(argc - 1);
            for k in &args[1..] {
                let mut s = store.shard(k);
                match live(&mut s, k, now) {
                    Some(Entry {
                        value: Value::Str(v),
                        ..
                    }) => out.bulk(v),
                    _ => out.nil(),
                }
            }
        }
        "expire" => match parse_int(args[2]) {
            None => out.not_int(),
            Some(secs) => {
                let mut s = store.shard(args[1]);
                match live(&mut s, args[1], now) {
                    None => out.int(0),
                    Some(_) if secs <= 0 => {
                        s.remove(args[1]);
                        out.int(1);
                    }
                    Some(e) => {
                        e.expires = now.checked_add(Duration::from_secs(secs as u64));
                        out.int(1);
                    }
                }
            }
        },
        "ttl" => {
            let mut s = store.shard(args[1]);
            match live(&mut s, args[1], now) {
                None => out.int(-2),
                Some(Entry { expires: None, .. }) => out.int(-1),
                Some(Entry {
                    expires: Some(at), ..
                }) => out.int(((*at - now).as_millis() as i64 + 500) / 1000),
            }
        }
        "lpush" | "rpush" => {
            let mut s = store.shard(args[1]);
            let Value::List(list) =
                or_insert(&mut s, args[1], now, || Value::List(VecDeque::new()))
            else {
                return wrong_type(out);
            };
            for v in &args[2..] {
                if name == "lpush" {
                    list.push_front(v.to_vec());
                } else {
                    list.push_back(v.to_vec());
                }
            }
            out.int(list.len() as i64);
        }
        "lpop" | "rpop" => {
            let Ok(count) = count_arg(args.get(2), out) else {
                return After::Continue;
            };
            let mut s = store.shard(args[1]);
            match live(&mut s, args[1], now) {
                None => match count {
                    None => out.nil(),
                    Some(_) => out.nil_array(),
                },
                Some(Entry {
                    value: Value::List(l),
                    ..
                }) => {
                    let mut pop = || {
                        if name == "lpop" {
                            l.pop_front()
                        } else {
                            l.pop_back()
                        }
                    };
                    match count {
                        None => match pop() {
                            Some(v) => out.bulk(&v),
                            None => out.nil(),
                        },
                        Some(c) => {
                            let got: Vec<Vec<u8>> = (0..c).map_while(|_| pop()).collect();
                            out.array(got.len());
                            for v in &got {
                                out.bulk(v);
                            }
                        }
                    }
                    if l.is_empty() {
                        s.remove(args[1]);
                    }
                }
                Some(_) => out.wrong_type(),
            }
        }
        "llen" | "scard" => {
            let mut s = store.shard(args[1]);
            match (name, live(&mut s, args[1], now)) {
                (_, None) => out.int(0),
                (
                    "llen",
                    Some(Entry {
                        value: Value::List(l),
                        ..
                    }),
                ) => out.int(l.len() as i64),
                (
                    "scard",
                    Some(Entry {
                        value: Value::Set(m),
                        ..
                    }),
                ) => out.int(m.len() as i64),
                _ => out.wrong_type(),
            }
        }
        "lrange" => match (parse_int(args[2]), parse_int(args[3])) {
            (Some(start), Some(stop)) => {
                let mut s = store.shard(args[1]);
                match live(&mut s, args[1], now) {
                    None => out.array(0),
                    Some(Entry {
                        value: Value::List(l),
                        ..
                    }) => {
                        let len = l.len() as i64;
                        let norm = |i: i64| if i < 0 { (len + i).max(0) } else { i };
                        let (a, b) = (norm(start), norm(stop).min(len - 1));
                        if a > b || a >= len {
                            out.array(0);
                        } else {
                            out.array((b - a + 1) as usize);
                            for v in l.range(a as usize..=b as usize) {
                                out.bulk(v);
                            }
                        }
                    }
                    Some(_) => out.wrong_type(),
                }
            }
            _ => out.not_int(),
        },
        "sadd" => {
            let mut s = store.shard(args[1]);
            let Value::Set(set) = or_insert(&mut s, args[1], now, || Value::Set(HashSet::new()))
            else {
                return wrong_type(out);
            };
            let added = args[2..].iter().filter(|m| set.insert(m.to_vec())).count();
            out.int(added as i64);
        }
        "spop" => {
            let Ok(count) = count_arg(args.get(2), out) else {
                return After::Continue;
            };
            let mut s = store.shard(args[1]);
            match live(&mut s, args[1], now) {
                None => match count {
                    None => out.nil(),
                    Some(_) => out.array(0),
                },
                Some(Entry {
                    value: Value::Set(m),
                    ..
                }) => {
                    let take = count.unwrap_or(1).min(m.len());
                    let picked: Vec<Vec<u8>> = m.iter().take(take).cloned().collect();
                    for p in &picked {
                        m.remove(p);
                    }
                    match count {
                        None => out.bulk(&picked[0]),
                        Some(_) => {
                            out.array(picked.len());
                            for p in &picked {
                                out.bulk(p);
                            }
                        }
                    }
                    if m.is_empty() {
                        s.remove(args[1]);
                    }
                }
                Some(_) => out.wrong_type(),
            }
        }
        "hset" => {
            let mut s = store.shard(args[1]);
            let Value::Hash(hash) = or_insert(&mut s, args[1], now, || Value::Hash(HashMap::new()))
            else {
                return wrong_type(out);
            };
            let mut added = 0;
            for fv in args[2..].chunks(2) {
                if hash.insert(fv[0].to_vec(), fv[1].to_vec()).is_none() {
                    added += 1;
                }
            }
            out.int(added);
        }
        "hget" => {
            let mut s = store.shard(args[1]);
            match live(&mut s, args[1], now) {
                None => out.nil(),
                Some(Entry {
                    value: Value::Hash(h),
                    ..
                }) => match h.get(args[2]) {
                    Some(v) => out.bulk(v),
                    None => out.nil(),
                },
                Some(_) => out.wrong_type(),
            }
        }
        "dbsize" => {
            let n: usize = store
                .shards
                .iter()
                .map(|s| {
                    let s = s.lock().unwrap_or_else(|e| e.into_inner());
                    s.values()
                        .filter(|e| e.expires.is_none_or(|at| at > now))
                        .count()
                })
                .sum();
            out.int(n as i64);
        }
        "flushall" => {
            for s in &store.shards {
                s.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
            out.simple("OK");
        }
        "select" => match args.get(1).and_then(|d| parse_int(d)) {
            Some(0) => out.simple("OK"),
            _ => out.error("ERR DB index is out of range"),
        },
        "config" => config(args, out),
        // redis-cli asks for command docs at start; an empty answer is valid.
        "command" => out.array(0),
        // CLIENT SETNAME / SETINFO and the like, sent by client libraries.
        "client" => out.simple("OK"),
        "info" => out.bulk(b"# Server\r\nredis_version:7.0.0\r\nredis_mode:standalone\r\n"),
        _ => unreachable!("arity table and dispatch disagree on {name}"),
    }
    After::Continue
}

fn wrong_type(out: &mut Out<'_>) -> After {
    out.wrong_type();
    After::Continue
}

/// CONFIG GET answers what redis-benchmark asks (`save`, `appendonly`) with
/// Redis's defaults for a memory-only server; CONFIG SET/RESETSTAT succeed.
fn config(args: &[&[u8]], out: &mut Out<'_>) {
    let sub = args
        .get(1)
        .map(|s| s.to_ascii_lowercase())
        .unwrap_or_default();
    match sub.as_slice() {
        b"get" if args.len() >= 3 => {
            let known: &[(&str, &str)] = &[("save", ""), ("appendonly", "no"), ("databases", "1")];
            let mut pairs = Vec::new();
            for pat in &args[2..] {
                let pat = String::from_utf8_lossy(pat).to_ascii_lowercase();
                for (k, v) in known {
                    if pat == *k || pat == "*" {
                        pairs.push((k, v));
                    }
                }
            }
            out.array(pairs.len() * 2);
            for (k, v) in pairs {
                out.bulk(k.as_bytes());
                out.bulk(v.as_bytes());
            }
        }
        b"set" | b"resetstat" => out.simple("OK"),
        _ => arity_error(out, "config|get"),
    }
}

fn set(store: &Store, args: &[&[u8]], now: Instant, out: &mut Out<'_>) {
    let (mut expires, mut nx, mut xx) = (None, false, false);
    let mut i = 3;
    while i < args.len() {
        let opt = args[i].to_ascii_lowercase();
        match opt.as_slice() {
            b"nx" => nx = true,
            b"xx" => xx = true,
            b"ex" | b"px" if i + 1 < args.len() && expires.is_none() => {
                let Some(n) = parse_int(args[i + 1]) else {
                    return out.not_int();
                };
                if n <= 0 {
                    return out.error("ERR invalid expire time in 'set' command");
                }
                let d = if opt == b"ex" {
                    Duration::from_secs(n as u64)
                } else {
                    Duration::from_millis(n as u64)
                };
                expires = Some(now.checked_add(d));
                i += 1;
            }
            _ => return out.syntax(),
        }
        i += 1;
    }
    if nx && xx {
        return out.syntax();
    }
    let mut s = store.shard(args[1]);
    let exists = live(&mut s, args[1], now).is_some();
    if (nx && exists) || (xx && !exists) {
        return out.nil();
    }
    s.insert(
        args[1].to_vec(),
        Entry {
            value: Value::Str(args[2].to_vec()),
            expires: expires.flatten(),
        },
    );
    out.simple("OK");
}

fn incr(store: &Store, key: &[u8], by: i64, now: Instant, out: &mut Out<'_>) {
    let mut s = store.shard(key);
    let n = match live(&mut s, key, now) {
        // The common case: rewrite the digits in place, no allocation.
        Some(Entry {
            value: Value::Str(v),
            ..
        }) => {
            let Some(current) = parse_int(v) else {
                return out.not_int();
            };
            let Some(n) = current.checked_add(by) else {
                return out.error("ERR increment or decrement would overflow");
            };
            v.clear();
            let _ = write!(v, "{n}");
            n
        }
        Some(_) => return out.wrong_type(),
        None => {
            s.insert(
                key.to_vec(),
                Entry {
                    value: Value::Str(by.to_string().into_bytes()),
                    expires: None,
                },
            );
            by
        }
    };
    out.int(n);
}

#[derive(Debug)]
enum Ctx {
    Read,
    Write,
    /// The connection is writable again: run the commands waiting.
    Resume,
    Close,
}

/// Replies gathered into one write before it goes out (and writability is
/// checked again).
const BATCH: usize = 64 << 10;

/// One connection's state on its watcher.
#[derive(Default)]
struct Session {
    /// Commands read and not run yet (the connection was not writable), and
    /// the start of a command whose end has not arrived yet.
    partial: Vec<u8>,
}

/// What a connection needs from its watcher, besides the store.
struct Server<'a> {
    store: &'a Store,
    max_bulk: usize,
    /// Write buffers handed back, reused.
    spare: &'a mut Vec<Vec<u8>>,
}

impl Server<'_> {
    /// Runs the commands of `fresh` (just read) after those waiting in `s`,
    /// while `conn` is writable; then reads on once every whole command ran,
    /// or waits for writability.
    fn pump(
        &mut self,
        io: &Io<'_, Ctx>,
        conn: Conn,
        s: &mut Session,
        mut fresh: &[u8],
    ) -> gaio::Result<()> {
        loop {
            if !io.is_writable(conn) {
                s.partial.extend_from_slice(fresh);
                return io.writable(conn, Ctx::Resume);
            }
            let mut out = self.spare.pop().unwrap_or_default();
            let (used, after) = if s.partial.is_empty() {
                // The common case: straight from the read, no copy.
                let (used, after) = serve(self.store, fresh, self.max_bulk, &mut out);
                fresh = &fresh[used..];
                (used, after)
            } else {
                s.partial.extend_from_slice(fresh);
                fresh = &[];
                let (used, after) = serve(self.store, &s.partial, self.max_bulk, &mut out);
                s.partial.drain(..used);
                (used, after)
            };
            if after == After::Close {
                // Replies first, then the connection closes.
                io.write(conn, Ctx::Write, out)?;
                return io.close(conn, Ctx::Close, None);
            }
            if !out.is_empty() {
                io.write(conn, Ctx::Write, out)?;
            } else {
                self.spare.push(out);
            }
            if used == 0 {
                // No whole command left: keep the tail and read on.
                s.partial.extend_from_slice(fresh);
                if s.partial.is_empty() {
                    s.partial = Vec::new(); // an idle connection holds no buffer
                }
                return io.read(conn, Ctx::Read, None);
            }
        }
    }
}

/// Parses and runs the complete commands in `data` until their replies fill
/// [`BATCH`]; returns the bytes taken and whether to close after the replies.
fn serve(store: &Store, data: &[u8], max_bulk: usize, out: &mut Vec<u8>) -> (usize, After) {
    // One clock reading per read: every command in it sees the same time.
    let now = Instant::now();
    let mut args: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    while at < data.len() && out.len() < BATCH {
        args.clear();
        match parse(&data[at..], max_bulk, &mut args) {
            Parsed::Incomplete => break,
            Parsed::Malformed(msg) => {
                Out(out).error(&msg);
                return (data.len(), After::Close);
            }
            Parsed::Command(used) => {
                at += used;
                if execute(store, &args, now, &mut Out(out)) == After::Close {
                    return (data.len(), After::Close);
                }
            }
        }
    }
    (at, After::Continue)
}

fn main() {
    let mut cli = common::Cli::new("resp-server", USAGE);
    let mut listen: Option<SocketAddr> = None;
    let mut builder = Pool::builder();
    let mut max_bulk = 512 << 20;
    while let Some(flag) = cli.next_flag() {
        match flag.as_str() {
            "--listen" => listen = Some(cli.addr(&flag)),
            "--backend" => builder = builder.backend(cli.parse(&flag)),
            "--watchers" => builder = builder.watchers(cli.count(&flag)),
            "--max-bulk" => max_bulk = cli.count(&flag),
            other => cli.unknown(other),
        }
    }
    let Some(listen) = listen else {
        cli.usage_error("--listen ADDR is required")
    };
    let store = Arc::new(Store::new());
    let pool = builder
        .flow(Flow::DEFAULT)
        .grace(Duration::from_secs(1))
        .build(move |_watcher| {
            let store = store.clone();
            let mut sessions: HashMap<Conn, Session> = HashMap::new();
            let mut spare: Vec<Vec<u8>> = Vec::new();
            move |io: &Io<Ctx>, ev: Event<'_, Ctx>| {
                let res = match ev {
                    Event::Connected { conn, .. } => {
                        sessions.insert(conn, Session::default());
                        if io.read(conn, Ctx::Read, None).is_err() {
                            sessions.remove(&conn);
                            let _ = io.free(conn);
                        }
                        return;
                    }
                    Event::Completed(res) => res,
                    _ => return,
                };
                let conn = res.conn;
                let mut server = Server {
                    store: &store,
                    max_bulk,
                    spare: &mut spare,
                };
                let next = match (res.op, &res.ctx) {
                    (Op::Read, Ctx::Read) if res.result.is_ok() && res.size > 0 => sessions
                        .get_mut(&conn)
                        .map(|s| server.pump(io, conn, s, res.data())),
                    (Op::Writable, Ctx::Resume) if res.result.is_ok() => sessions
                        .get_mut(&conn)
                        .map(|s| server.pump(io, conn, s, &[])),
                    (Op::Write, Ctx::Write) if res.result.is_ok() => {
                        if let Buffer::Owned(mut v) = res.buffer {
                            if v.capacity() <= 2 * BATCH {
                                v.clear();
                                spare.push(v);
                            }
                        }
                        None
                    }
                    (Op::Close, _) => {
                        sessions.remove(&conn);
                        None
                    }
                    // EOF, reset, a write that failed, or a wait the close ended.
                    _ => Some(Err(gaio::Error::ConnClosed)),
                };
                if let Some(Err(_)) = next {
                    sessions.remove(&conn);
                    let _ = io.free(conn);
                }
            }
        });
    let pool = cli.start_pool(pool, listen, |pool| pool.listen(listen));
    cli.run_pool(pool);
}
