//! The HTTP/1.1 server of `examples/http-server.rs`, as a library so its tests
//! can run it in-process: one [`Server`] per gaio-pool watcher, fed every event
//! of that watcher.
//!
//! Per connection, the flow control of the library (`gaio::Flow`): the
//! requests one read brings (a pipeline) are parsed with `httparse` and
//! answered in order, their responses gathered into one write, while the
//! connection is writable. When responses queued for the client pass the high
//! watermark, parsing and reading stop until a `writable` request says the
//! client caught up: a client that pipelines without reading is paused, not
//! buffered without bound. Requests not parsed yet wait in a buffer of the
//! connection's own; an idle keep-alive connection holds none.
//!
//! Routes: `GET /plaintext`, `GET /json` (serialized by `serde_json` per
//! request), `POST /echo` (a `Content-Length` body, up to
//! [`Config::max_body`]) and `GET /metrics` (the pool's figures in the
//! Prometheus text format); `HEAD` on each `GET` route. Errors: 400 malformed,
//! 404, 405 (with `Allow`), 411 for a body without `Content-Length` (chunked
//! bodies are not supported), 413, 431 (head over [`Config::max_head`] bytes or
//! over 32 headers), 505 for other versions than HTTP/1.0 and 1.1 (HTTP/2 prior
//! knowledge included); each of them closes the connection after the response.
//! `Expect: 100-continue` gets its `100 Continue` before the body is read.
//! A request's head must arrive within [`Config::head_timeout`] of its first
//! byte, and a keep-alive connection may stay silent for
//! [`Config::idle_timeout`]; past either the connection is closed.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gaio::core::{Buffer, Conn, Op, Requests};
use gaio::pool::{Event, Io};
use serde::ser::{Serialize, SerializeStruct, Serializer};

/// Limits and timeouts of a [`Server`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Longest request body accepted (`POST /echo`); longer: 413.
    pub max_body: usize,
    /// Longest request head (request line and headers); longer: 431.
    pub max_head: usize,
    /// A request head must arrive whole within this of its first byte.
    pub head_timeout: Duration,
    /// A keep-alive connection with nothing pending is closed after this.
    pub idle_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_body: 1 << 20,
            max_head: 8 << 10,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// What each request of the server is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctx {
    /// The next bytes from the client.
    Read,
    /// Responses going out.
    Write,
    /// The client caught up: parse the requests waiting.
    Resume,
    /// The write side shuts down after the last response.
    Shutdown,
    /// What the client still sends after the last response, discarded (a
    /// lingering close: closing with unread bytes would reset the connection
    /// and could destroy the response).
    Drain,
    /// The connection closes after its responses.
    Close,
}

/// How long a closing connection may keep sending before it is closed.
const LINGER: Duration = Duration::from_secs(2);

/// Write buffers kept for reuse, at most.
const SPARE: usize = 64;

/// Most headers in one request; more: 431.
const MAX_HEADERS: usize = 32;

/// Responses gathered into one write before writability is checked again.
const BATCH: usize = 64 << 10;

/// A connection's state on its watcher: 40 bytes, in a table indexed by the
/// connection's slot (dense on each watcher), so an idle keep-alive connection
/// costs this and its watcher slot, and finding it hashes nothing.
#[derive(Debug, Default)]
struct Session {
    /// Bytes read and not parsed yet: requests waiting for writability, and a
    /// request whose end has not arrived.
    input: Vec<u8>,
    /// The `Conn`'s generation while the session is live.
    generation: u32,
    /// When the head now partly in `input` began to arrive (or, closing, when
    /// the drain ends): milliseconds after the server's epoch, wrapping, never
    /// 0 (0: none).
    since: u32,
    /// `100 Continue` went out for the request whose body is arriving.
    continued: bool,
    live: bool,
}

/// The sessions of one watcher's connections, by slot.
#[derive(Debug, Default)]
struct Sessions(Vec<Session>);

impl Sessions {
    fn insert(&mut self, conn: Conn) {
        let i = conn.slot() as usize;
        if self.0.len() <= i {
            self.0.resize_with(i + 1, Session::default);
        }
        self.0[i] = Session {
            generation: conn.generation(),
            live: true,
            ..Session::default()
        };
    }

    fn get_mut(&mut self, conn: Conn) -> Option<&mut Session> {
        self.0
            .get_mut(conn.slot() as usize)
            .filter(|s| s.live && s.generation == conn.generation())
    }

    fn remove(&mut self, conn: Conn) {
        if let Some(s) = self.get_mut(conn) {
            *s = Session::default(); // its buffer goes too
        }
    }
}

/// One watcher's HTTP server: call [`handle`](Self::handle) with every event.
#[derive(Debug)]
pub struct Server {
    sessions: Sessions,
    w: Worker,
}

/// Everything but the sessions, so a session can be borrowed beside it.
#[derive(Debug)]
struct Worker {
    cfg: Config,
    /// Write buffers handed back, reused.
    spare: Vec<Vec<u8>>,
    /// A JSON body being serialized.
    scratch: Vec<u8>,
    date: Date,
    /// What `Session::since` counts from.
    epoch: Instant,
}

/// How far [`Worker::serve`] went.
struct Served {
    /// Bytes of whole requests answered.
    used: usize,
    /// A response said the connection closes.
    close: bool,
    /// The next request's head is whole; its body is not.
    in_body: bool,
    /// ... and it asked for `100 Continue` before sending the body.
    expect_continue: bool,
}

impl Server {
    /// A server with `cfg`'s limits.
    pub fn new(cfg: Config) -> Server {
        Server {
            sessions: Sessions::default(),
            w: Worker {
                cfg,
                spare: Vec::new(),
                scratch: Vec::new(),
                date: Date::default(),
                epoch: Instant::now(),
            },
        }
    }

    /// Handles one event of the watcher.
    pub fn handle(&mut self, io: &Io<'_, Ctx>, ev: Event<'_, Ctx>) {
        let res = match ev {
            Event::Connected { conn, .. } => {
                self.sessions.insert(conn);
                let idle = self.w.cfg.idle_timeout;
                if io.read_timeout(conn, Ctx::Read, None, idle).is_err() {
                    self.sessions.remove(conn);
                    let _ = io.free(conn);
                }
                return;
            }
            Event::Completed(res) => res,
            _ => return,
        };
        let conn = res.conn;
        let next = match (res.op, res.ctx) {
            (Op::Read, Ctx::Read) if res.result.is_ok() && res.size > 0 => {
                match self.sessions.get_mut(conn) {
                    Some(s) => self.w.pump(io, conn, s, res.data()),
                    None => Ok(()),
                }
            }
            (Op::Writable, Ctx::Resume) if res.result.is_ok() => {
                match self.sessions.get_mut(conn) {
                    Some(s) => self.w.pump(io, conn, s, &[]),
                    None => Ok(()),
                }
            }
            (Op::Write, Ctx::Write) if res.result.is_ok() => {
                if let Buffer::Owned(mut v) = res.buffer {
                    if v.capacity() <= 2 * BATCH && self.w.spare.len() < SPARE {
                        v.clear();
                        self.w.spare.push(v);
                    }
                }
                Ok(())
            }
            // The client sent its last bytes (EOF): the responses queued go
            // out, then the connection closes.
            (Op::Read, Ctx::Read) if res.result.is_ok() => {
                let at = Instant::now() + self.w.cfg.idle_timeout;
                io.close(conn, Ctx::Close, Some(at))
            }
            (Op::Read, Ctx::Drain) if res.result.is_ok() && res.size > 0 => {
                match self.sessions.get_mut(conn) {
                    Some(s) => {
                        let at = self.w.at(s.since);
                        io.read_deadline(conn, Ctx::Drain, None, at)
                    }
                    None => Ok(()),
                }
            }
            // The drain is over (EOF, deadline): close once the responses
            // are out.
            (Op::Read, Ctx::Drain) => {
                let at = Instant::now() + self.w.cfg.idle_timeout;
                io.close(conn, Ctx::Close, Some(at))
            }
            (Op::Close, _) => {
                self.sessions.remove(conn);
                Ok(())
            }
            // A shutdown or a writability wait that a close ended: the close
            // completes on its own.
            (Op::Shutdown | Op::Writable, _) => Ok(()),
            // A reset, a head or idle deadline, a write the client did not
            // take in time.
            _ => Err(gaio::Error::ConnClosed),
        };
        if next.is_err() {
            self.sessions.remove(conn);
            let _ = io.free(conn);
        }
    }
}

impl Worker {
    /// `t` as a session stamp: milliseconds after the epoch, wrapping (a stamp
    /// is read back within days, not 49), never 0.
    fn stamp(&self, t: Instant) -> u32 {
        let ms = t.saturating_duration_since(self.epoch).as_millis() as u32;
        ms.max(1)
    }

    /// The instant of `stamp`, taken as the one nearest to now.
    fn at(&self, stamp: u32) -> Instant {
        let now = Instant::now();
        let ahead = stamp.wrapping_sub(self.stamp(now)) as i32; // within ±24 days
        if ahead >= 0 {
            now + Duration::from_millis(ahead as u64)
        } else {
            now.checked_sub(Duration::from_millis(ahead.unsigned_abs() as u64))
                .unwrap_or(now)
        }
    }

    /// Answers the requests of `fresh` (just read) after those waiting in `s`,
    /// while `conn` is writable; then reads on, or waits for writability.
    fn pump(
        &mut self,
        io: &Io<'_, Ctx>,
        conn: Conn,
        s: &mut Session,
        mut fresh: &[u8],
    ) -> gaio::Result<()> {
        loop {
            if !io.is_writable(conn) {
                s.input.extend_from_slice(fresh);
                return io.writable(conn, Ctx::Resume);
            }
            let mut out = self.spare.pop().unwrap_or_default();
            let served = if s.input.is_empty() {
                // The common case: straight from the read, no copy.
                let served = self.serve(io, fresh, &mut out);
                fresh = &fresh[served.used..];
                served
            } else {
                s.input.extend_from_slice(fresh);
                fresh = &[];
                let input = std::mem::take(&mut s.input);
                let served = self.serve(io, &input, &mut out);
                s.input = input;
                s.input.drain(..served.used);
                served
            };
            if served.used > 0 {
                s.since = 0;
                s.continued = false;
            }
            if served.expect_continue && !s.continued {
                out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                s.continued = true;
            }
            if served.close {
                // The last responses, then a lingering close.
                io.write_timeout(conn, Ctx::Write, out, self.cfg.idle_timeout)?;
                io.shutdown(conn, Ctx::Shutdown)?;
                s.input = Vec::new();
                s.since = self.stamp(Instant::now() + LINGER);
                return io.read_deadline(conn, Ctx::Drain, None, self.at(s.since));
            }
            if out.is_empty() {
                self.spare.push(out);
            } else {
                // A client that stops reading is dropped once a write waits
                // longer than the idle timeout.
                io.write_timeout(conn, Ctx::Write, out, self.cfg.idle_timeout)?;
            }
            if served.used == 0 {
                // No whole request left: keep the start of the next, read on.
                s.input.extend_from_slice(fresh);
                let cfg = &self.cfg;
                if s.input.is_empty() {
                    s.input = Vec::new(); // an idle connection holds no buffer
                    return io.read_timeout(conn, Ctx::Read, None, cfg.idle_timeout);
                }
                if served.in_body {
                    return io.read_timeout(conn, Ctx::Read, None, cfg.idle_timeout);
                }
                let head_timeout = cfg.head_timeout;
                if s.since == 0 {
                    s.since = self.stamp(Instant::now());
                }
                let at = self.at(s.since) + head_timeout;
                return io.read_deadline(conn, Ctx::Read, None, at);
            }
        }
    }

    /// Parses and answers the whole requests at the start of `data` until
    /// their responses fill [`BATCH`] or one closes the connection.
    fn serve(&mut self, io: &Io<'_, Ctx>, data: &[u8], out: &mut Vec<u8>) -> Served {
        let mut at = 0;
        let done = |used, close| Served {
            used,
            close,
            in_body: false,
            expect_continue: false,
        };
        while at < data.len() && out.len() < BATCH {
            let rest = &data[at..];
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            let head_len = match req.parse(rest) {
                Ok(httparse::Status::Complete(n)) if n <= self.cfg.max_head => n,
                Ok(httparse::Status::Partial) if rest.len() <= self.cfg.max_head => {
                    return done(at, false);
                }
                Ok(_) | Err(httparse::Error::TooManyHeaders) => {
                    self.error(out, 431, "Request Header Fields Too Large");
                    return done(data.len(), true);
                }
                Err(httparse::Error::Version) => {
                    self.error(out, 505, "HTTP Version Not Supported");
                    return done(data.len(), true);
                }
                Err(_) => {
                    self.error(out, 400, "Bad Request");
                    return done(data.len(), true);
                }
            };
            let head = match Head::of(&req) {
                Ok(head) => head,
                Err((status, reason)) => {
                    self.error(out, status, reason);
                    return done(data.len(), true);
                }
            };
            let body_len = head.length.unwrap_or(0);
            if body_len > self.cfg.max_body {
                self.error(out, 413, "Content Too Large");
                return done(data.len(), true);
            }
            if rest.len() - head_len < body_len {
                return Served {
                    used: at,
                    close: false,
                    in_body: true,
                    expect_continue: head.expect_continue,
                };
            }
            let body = &rest[head_len..head_len + body_len];
            at += head_len + body_len;
            if self.respond(io, &head, body, out) {
                return done(at, true);
            }
        }
        done(at, false)
    }

    /// Writes the response to one request; whether the connection closes
    /// after it.
    fn respond(
        &mut self,
        io: &Io<'_, Ctx>,
        req: &Head<'_>,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        let path = req.path.split('?').next().unwrap_or("");
        let get = matches!(req.method, "GET" | "HEAD");
        let head_only = req.method == "HEAD";
        let close = req.close;
        let connection = match (close, req.version) {
            (true, _) => CLOSE,
            (false, 0) => KEEP_ALIVE, // HTTP/1.0 closes unless told
            (false, _) => "",
        };
        match (path, get, req.method) {
            ("/plaintext", true, _) => {
                let text = b"Hello, World!";
                self.head(out, 200, "OK", "text/plain", text.len(), connection, "");
                if !head_only {
                    out.extend_from_slice(text);
                }
            }
            ("/json", true, _) => {
                self.scratch.clear();
                let msg = Message {
                    message: "Hello, World!",
                };
                serde_json::to_writer(&mut self.scratch, &msg).expect("a Vec takes any JSON");
                let json = std::mem::take(&mut self.scratch);
                self.head(
                    out,
                    200,
                    "OK",
                    "application/json",
                    json.len(),
                    connection,
                    "",
                );
                if !head_only {
                    out.extend_from_slice(&json);
                }
                self.scratch = json;
            }
            ("/metrics", true, _) => {
                let text = metrics(io);
                let ctype = "text/plain; version=0.0.4; charset=utf-8";
                self.head(out, 200, "OK", ctype, text.len(), connection, "");
                if !head_only {
                    out.extend_from_slice(text.as_bytes());
                }
            }
            ("/echo", _, "POST") => {
                if req.length.is_none() {
                    self.error(out, 411, "Length Required");
                    return true;
                }
                let ctype = "application/octet-stream";
                self.head(out, 200, "OK", ctype, body.len(), connection, "");
                out.extend_from_slice(body);
            }
            ("/plaintext" | "/json" | "/metrics", _, _) => {
                let allow = "Allow: GET, HEAD\r\n";
                self.reply(out, 405, "Method Not Allowed", connection, allow, head_only);
            }
            ("/echo", _, _) => {
                let allow = "Allow: POST\r\n";
                self.reply(out, 405, "Method Not Allowed", connection, allow, head_only);
            }
            _ => self.reply(out, 404, "Not Found", connection, "", head_only),
        }
        close
    }

    /// A response whose body is its reason phrase and a newline (headers
    /// only for `HEAD`).
    #[allow(clippy::too_many_arguments)]
    fn reply(
        &mut self,
        out: &mut Vec<u8>,
        status: u16,
        reason: &str,
        connection: &str,
        extra: &str,
        head_only: bool,
    ) {
        let len = reason.len() + 1;
        self.head(out, status, reason, "text/plain", len, connection, extra);
        if !head_only {
            out.extend_from_slice(reason.as_bytes());
            out.push(b'\n');
        }
    }

    /// An error response; the connection closes after it.
    fn error(&mut self, out: &mut Vec<u8>, status: u16, reason: &str) {
        self.reply(out, status, reason, CLOSE, "", false);
    }

    /// A response's status line and headers (`connection`: a `Connection`
    /// header line or nothing; `extra`: more header lines).
    #[allow(clippy::too_many_arguments)]
    fn head(
        &mut self,
        out: &mut Vec<u8>,
        status: u16,
        reason: &str,
        ctype: &str,
        len: usize,
        connection: &str,
        extra: &str,
    ) {
        let _ = write!(out, "HTTP/1.1 {status} {reason}\r\nServer: gaio\r\nDate: ");
        out.extend_from_slice(self.date.now());
        let _ = write!(
            out,
            "\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\n{connection}{extra}\r\n"
        );
    }
}

/// The `Connection` header line a response carries.
const CLOSE: &str = "Connection: close\r\n";
const KEEP_ALIVE: &str = "Connection: keep-alive\r\n";

/// What the response to a request depends on, from its head.
struct Head<'a> {
    method: &'a str,
    path: &'a str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    version: u8,
    /// `Content-Length`, if given.
    length: Option<usize>,
    /// The connection closes after this request (HTTP/1.0 without
    /// keep-alive, or `Connection: close`).
    close: bool,
    /// `Expect: 100-continue` (HTTP/1.1): the client waits for a go before
    /// the body.
    expect_continue: bool,
}

impl<'a> Head<'a> {
    /// The head of a parsed request, or the error response it gets.
    fn of(req: &httparse::Request<'_, 'a>) -> Result<Head<'a>, (u16, &'static str)> {
        const BAD: (u16, &str) = (400, "Bad Request");
        let version = req.version.unwrap_or(1);
        let mut head = Head {
            method: req.method.unwrap_or(""),
            path: req.path.unwrap_or(""),
            version,
            length: None,
            close: false,
            expect_continue: false,
        };
        let (mut hosts, mut close, mut keep_alive) = (0, false, false);
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                // Digits only: no sign, no whitespace a proxy might read otherwise.
                let v = h.value;
                if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                    return Err(BAD);
                }
                let n = std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
                    .ok_or(BAD)?;
                if head.length.is_some_and(|m| m != n) {
                    return Err(BAD);
                }
                head.length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Chunked bodies are not supported: ask for a length.
                return Err((411, "Length Required"));
            } else if h.name.eq_ignore_ascii_case("host") {
                hosts += 1;
            } else if h.name.eq_ignore_ascii_case("expect") {
                head.expect_continue =
                    version == 1 && h.value.eq_ignore_ascii_case(b"100-continue");
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
        }
        // HTTP/1.1 requires exactly one Host.
        if version == 1 && hosts != 1 {
            return Err(BAD);
        }
        head.close = close || (version == 0 && !keep_alive);
        Ok(head)
    }
}

/// The `/json` body, serialized per request.
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

/// The pool's figures in the Prometheus text format.
fn metrics(io: &Io<'_, Ctx>) -> String {
    use std::fmt::Write as _;
    let st = io.pool().stats();
    let mut text = String::new();
    let mut family = |name: &str, kind: &str, help: &str, value: &dyn Fn(usize) -> u64| {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (i, _) in st.watchers.iter().enumerate() {
            let _ = writeln!(text, "{name}{{watcher=\"{i}\"}} {}", value(i));
        }
    };
    let w = &st.watchers;
    family("gaio_conns", "gauge", "Connections open.", &|i| {
        w[i].conns as u64
    });
    family(
        "gaio_unwritable_conns",
        "gauge",
        "Connections above their high write watermark.",
        &|i| w[i].unwritable_conns as u64,
    );
    family(
        "gaio_queued_write_bytes",
        "gauge",
        "Bytes queued for writing and not sent yet.",
        &|i| w[i].queued_write_bytes as u64,
    );
    family(
        "gaio_completions_total",
        "counter",
        "Requests completed.",
        &|i| w[i].completions,
    );
    family(
        "gaio_accepts_total",
        "counter",
        "Connections accepted.",
        &|i| w[i].accepts,
    );
    text
}

/// The `Date` header's value, formatted again only when the second changes.
#[derive(Debug)]
struct Date {
    secs: u64,
    text: [u8; 29],
}

impl Default for Date {
    fn default() -> Date {
        Date {
            secs: 0,
            text: http_date(0),
        }
    }
}

impl Date {
    fn now(&mut self) -> &[u8; 29] {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if secs != self.secs {
            self.secs = secs;
            self.text = http_date(secs);
        }
        &self.text
    }
}

/// `secs` after the Unix epoch as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to a civil date (H. Hinnant's algorithm), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut t = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    t[..3].copy_from_slice(DAYS[days.rem_euclid(7) as usize]);
    let two = |t: &mut [u8; 29], at: usize, v: u64| {
        t[at] = b'0' + (v / 10 % 10) as u8;
        t[at + 1] = b'0' + (v % 10) as u8;
    };
    two(&mut t, 5, day as u64);
    t[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    two(&mut t, 12, (year / 100) as u64);
    two(&mut t, 14, (year % 100) as u64);
    two(&mut t, 17, rem / 3_600);
    two(&mut t, 20, rem % 3_600 / 60);
    two(&mut t, 23, rem % 60);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_match_known_instants() {
        assert_eq!(&http_date(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&http_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(&http_date(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(&http_date(4_102_444_799), b"Thu, 31 Dec 2099 23:59:59 GMT");
    }
}
