//! Shared helpers for the gaio-core integration tests: loopback socket pairs, fd
//! counting, completion collection with bounded waits, and an echo server.
#![allow(dead_code, missing_docs)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use gaio_core::{Buffer, Conn, Error, Op, Watcher};

/// How long any test waits for completions before failing.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Serialises the tests of one test binary (they count the process's fds and
/// some open 16k sockets, so two at once would disturb each other and the fd
/// limit) and checks for leaks: when the guard drops — after every other local of
/// the test, being declared first — the process must hold exactly the fds it held
/// when the test began.
pub fn serial() -> Serial {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    Serial {
        _lock: lock,
        fds: fd_list(),
    }
}

pub struct Serial {
    _lock: std::sync::MutexGuard<'static, ()>,
    fds: Vec<(String, String)>,
}

impl Drop for Serial {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        // A leak is an fd open now that was not when the test began (an fd some
        // earlier test was still closing may vanish meanwhile: not this test's).
        // Fds being closed by other threads get a bounded moment to go.
        let leaked = |now: Vec<(String, String)>| -> Vec<(String, String)> {
            now.into_iter().filter(|f| !self.fds.contains(f)).collect()
        };
        let end = Instant::now() + Duration::from_secs(2);
        let mut new = leaked(fd_list());
        while !new.is_empty() && Instant::now() < end {
            std::thread::yield_now();
            new = leaked(fd_list());
        }
        assert!(
            new.is_empty(),
            "fds leaked by the test: {new:?}\n  open at its start: {:?}",
            self.fds
        );
    }
}

/// `(fd, target)` of every open fd but the one reading the directory.
pub fn fd_list() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), target)
        })
        // Skip the directory handle of this very listing, and fds closed between
        // reading the directory and reading the link (they are gone).
        .filter(|(_, t)| !t.is_empty() && !t.starts_with("/proc/"))
        .collect();
    v.sort();
    v
}

/// Raises the soft fd limit to the hard limit (this machine allows 20,000).
pub fn raise_fd_limit() -> u64 {
    // SAFETY: rlimit is plain data; getrlimit/setrlimit only read/write it.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        r.rlim_cur = r.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
        r.rlim_cur as u64
    }
}

/// Open fds of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Asserts the process has exactly `start` fds open again, listing them if not.
pub fn assert_fds_back_to(start: usize) {
    let now = fd_count();
    if now != start {
        for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            eprintln!(
                "fd {:?} -> {:?}",
                e.file_name(),
                std::fs::read_link(e.path())
            );
        }
    }
    assert_eq!(now, start, "fds open now vs at the start");
}

/// A loopback listener with a backlog of 4096 (std's 128 overflows when thousands
/// of clients connect at once, and each dropped SYN costs a 1 s retransmit).
pub fn listener() -> TcpListener {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(4096).unwrap();
    s.into()
}

/// One connected (client, server) pair on loopback.
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

/// `n` connected (client, server) pairs; accepts run on a helper thread so the
/// listen backlog never overflows.
pub fn tcp_pairs(n: usize) -> Vec<(TcpStream, TcpStream)> {
    let l = listener();
    let addr = l.local_addr().unwrap();
    let acceptor = std::thread::spawn(move || {
        (0..n)
            .map(|_| {
                let (s, peer) = l.accept().unwrap();
                (peer, s)
            })
            .collect::<HashMap<SocketAddr, TcpStream>>()
    });
    let clients: Vec<TcpStream> = (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut servers = acceptor.join().unwrap();
    clients
        .into_iter()
        .map(|c| {
            let s = servers.remove(&c.local_addr().unwrap()).unwrap();
            (c, s)
        })
        .collect()
}

/// A loopback pair whose server side is registered on a fresh watcher: (client,
/// watcher, submitter, conn), the start of most tests.
pub fn watched<C>() -> (TcpStream, Watcher<C>, gaio_core::Submitter<C>, Conn) {
    let (c, s) = tcp_pair();
    let mut w: Watcher<C> = Watcher::new().unwrap();
    let tx = w.submitter();
    let conn = w.register(s).unwrap();
    (c, w, tx, conn)
}

/// A completion with the swap bytes copied out, so it outlives the batch.
#[derive(Debug)]
pub struct Done<C> {
    pub op: Op,
    pub conn: Conn,
    pub ctx: C,
    pub size: usize,
    pub result: Result<(), Error>,
    /// The bytes transferred.
    pub data: Vec<u8>,
    /// The caller's buffer, if it had one.
    pub owned: Option<Vec<u8>>,
    /// When the batch holding it was returned.
    pub at: Instant,
}

/// Runs `wait_io_timeout` until `n` completions arrived (panics after [`PATIENCE`]).
pub fn collect<C>(w: &mut Watcher<C>, n: usize) -> Vec<Done<C>> {
    collect_within(w, n, PATIENCE)
}

pub fn collect_within<C>(w: &mut Watcher<C>, n: usize, patience: Duration) -> Vec<Done<C>> {
    let end = Instant::now() + patience;
    let mut out = Vec::new();
    while out.len() < n {
        let left = end.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "only {} of {n} completions within {patience:?}",
            out.len()
        );
        let batch = w
            .wait_io_timeout(left.min(Duration::from_millis(200)))
            .unwrap();
        let at = Instant::now();
        for c in batch {
            let data = c.data().to_vec();
            let owned = match c.buffer {
                Buffer::Owned(v) => Some(v),
                Buffer::Swap(_) => None,
            };
            out.push(Done {
                op: c.op,
                conn: c.conn,
                ctx: c.ctx,
                size: c.size,
                result: c.result,
                data,
                owned,
                at,
            });
        }
    }
    out
}

/// Waits for exactly one completion.
pub fn one<C>(w: &mut Watcher<C>) -> Done<C> {
    let mut v = collect(w, 1);
    assert_eq!(v.len(), 1, "expected one completion, got {}", v.len());
    v.pop().unwrap()
}

/// Asserts nothing completes within `d` (used only where "nothing happens" is the
/// behaviour under test; never to wait for I/O).
pub fn assert_quiet<C: std::fmt::Debug>(w: &mut Watcher<C>, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        let got: Vec<_> = w
            .wait_io_timeout(end.saturating_duration_since(Instant::now()))
            .unwrap()
            .map(|c| (c.op, c.ctx, c.size, c.result))
            .collect();
        assert!(got.is_empty(), "unexpected completions: {got:?}");
    }
}

/// A deterministic byte pattern distinct per `seed`.
pub fn pattern(seed: usize, len: usize) -> Vec<u8> {
    let mut x = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// How the echo server reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Every read into the swap buffer.
    Swap,
    /// Every read into an owned buffer of this size.
    Owned(usize),
    /// Per connection, swap or owned by a hash of the slot.
    Mixed,
}

/// Echo server: registers `streams` on a watcher in its own thread and echoes until
/// every connection reached EOF (then frees it). Returns the bytes echoed.
pub fn spawn_echo(streams: Vec<TcpStream>, mode: ReadMode) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut w: Watcher<()> = Watcher::new().unwrap();
        let tx = w.submitter();
        let n = streams.len();
        let read = move |conn: Conn, reuse: Option<Vec<u8>>| {
            let owned = match mode {
                ReadMode::Swap => false,
                ReadMode::Owned(_) => true,
                ReadMode::Mixed => conn.slot().wrapping_mul(2_654_435_761).is_multiple_of(3),
            };
            let size = if let ReadMode::Owned(s) = mode {
                s
            } else {
                1500
            };
            let buf = owned.then(|| {
                reuse
                    .filter(|v| v.len() == size)
                    .unwrap_or_else(|| vec![0; size])
            });
            tx.read(conn, (), buf).unwrap();
        };
        for s in streams {
            let c = w.register(s).unwrap();
            read(c, None);
        }
        let tx = w.submitter();
        let mut closed = 0;
        let mut echoed = 0;
        let end = Instant::now() + PATIENCE;
        while closed < n {
            assert!(
                Instant::now() < end,
                "echo server: {closed} of {n} conns closed in time"
            );
            for res in w.wait_io_timeout(Duration::from_millis(200)).unwrap() {
                match res.op {
                    Op::Read if res.result.is_ok() && res.size > 0 => {
                        echoed += res.size;
                        tx.write(res.conn, (), res.data().to_vec()).unwrap();
                    }
                    Op::Read => {
                        tx.free(res.conn).unwrap();
                        closed += 1;
                    }
                    Op::Write => {
                        res.result.expect("echo write");
                        read(res.conn, None);
                    }
                }
            }
        }
        echoed
    })
}
