//! Helpers shared by every test suite, benchmark and xtask of the gaio workspace
//! (`publish = false`): one copy, so they cannot drift apart.
//!
//! * [`serial`]: serialises the tests of one binary and fails a test that leaks an fd;
//! * [`raise_fd_limit`], [`set_fd_limit`], [`fd_count`], [`fd_list`], [`thread_count`];
//! * loopback sockets: [`listener`], [`tcp_pair`], [`tcp_pairs`];
//! * data: [`pattern`] (deterministic bytes per seed), [`percentile`].
//!
//! Linux-only where it reads `/proc` (fd and thread counts).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// How long any test waits for I/O before failing.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Serialises the tests of one test binary (they count the process's fds and
/// some open 16k sockets, so two at once would disturb each other and the fd
/// limit) and checks for leaks: when the guard drops — after every other local of
/// the test, being declared first — the process must hold exactly the fds it held
/// when the test began.
///
/// ```
/// let _serial = gaio_testkit::serial();
/// let (_client, _server) = gaio_testkit::tcp_pair();
/// // both sockets close before `_serial` checks for leaks
/// ```
pub fn serial() -> Serial {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    Serial {
        _lock: lock,
        fds: fd_list(),
    }
}

/// The guard [`serial`] returns; checks for leaked fds when dropped.
#[derive(Debug)]
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

/// Open fds of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Threads of this process whose name starts with `prefix` (gaio names its own
/// `gaio-…`; the test harness's threads come and go and are not counted).
pub fn thread_count(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .count()
}

/// Raises the soft fd limit to the hard limit (this project's machines allow
/// 20,000) and returns the new soft limit; on failure it leaves the limit as it
/// was and returns that.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: rlimit is plain data for which all-zeroes is valid; getrlimit and
    // setrlimit only read and write the struct we pass by reference.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        let before = r.rlim_cur;
        r.rlim_cur = r.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
            return before as u64;
        }
        r.rlim_cur as u64
    }
}

/// Sets the soft fd limit to `n` (for tests that run out of fds on purpose).
///
/// # Panics
/// If the kernel refuses the limit (above the hard limit).
pub fn set_fd_limit(n: u64) {
    // SAFETY: rlimit is plain data for which all-zeroes is valid; getrlimit and
    // setrlimit only read and write the struct we pass by reference.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        r.rlim_cur = n as libc::rlim_t;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0, "fd limit {n}");
    }
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

/// One connected `(client, server)` pair on loopback, both blocking.
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

/// `n` connected `(client, server)` pairs; accepts run on a helper thread so the
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

/// A deterministic byte pattern, distinct per `seed` (xorshift).
///
/// ```
/// assert_eq!(gaio_testkit::pattern(1, 8), gaio_testkit::pattern(1, 8));
/// assert_ne!(gaio_testkit::pattern(1, 8), gaio_testkit::pattern(2, 8));
/// ```
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

/// The `p` quantile (0.0 ..= 1.0, nearest rank) of sorted nanosecond samples, in
/// µs; NaN when there are none.
///
/// ```
/// assert_eq!(gaio_testkit::percentile(&[1000, 2000, 3000], 0.5), 2.0);
/// ```
pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// The path of example `name` as `cargo test` built it: `examples/` beside the
/// test binary's `deps/` folder (the workspace shares one target directory).
pub fn example_path(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    dir.join(name)
}

/// A running example server, killed when dropped so a failing test leaves
/// none behind.
#[derive(Debug)]
pub struct Example(pub std::process::Child);

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts example `name` with `--listen 127.0.0.1:0` and `args`, and reads
/// its first line, which must be `listening on ADDR`. Its stderr is
/// discarded; its stdout is closed after that line.
pub fn start_example(name: &str, args: &[&str]) -> (std::process::Child, SocketAddr) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(example_path(name))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{name}: {e} (built by `cargo test --workspace`, or `cargo build --examples`)")
        });
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{name}: first line {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

/// Whether a client tool (`curl`, `python3`, `openssl`, …) is here; without it
/// a test says so and passes, unless `GAIO_REQUIRE_TOOLS` is set (as `.ci/run`
/// does), where it fails.
pub fn have_tool(tool: &str) -> bool {
    use std::process::{Command, Stdio};
    let arg = if tool == "openssl" {
        "version"
    } else {
        "--version"
    };
    let found = Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("GAIO_REQUIRE_TOOLS").is_none(),
            "{tool} is missing (Debian: apt-get install {tool})"
        );
        eprintln!("SKIPPED: {tool} is not installed");
    }
    found
}

/// A `kB` figure of `/proc/PID/status` (`"VmRSS:"`, `"VmHWM:"`, …).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A global allocator that counts allocations, and the bytes they hold, made
/// on the threads that opt in ([`count_allocations`]), so a test can check a
/// loop allocates nothing once warm, or what a connection costs, while the
/// harness and its client threads go uncounted. Install it in the test binary:
/// `#[global_allocator] static A: CountingAlloc = CountingAlloc;`.
#[derive(Debug)]
pub struct CountingAlloc;

static ALLOCATIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static LIVE: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

thread_local! {
    static COUNT_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// From now on, allocations on this thread are counted (or no longer are).
pub fn count_allocations(on: bool) {
    COUNT_HERE.with(|c| c.set(on));
}

/// Allocations (and reallocations) counted so far, on every opted-in thread.
pub fn allocations() -> usize {
    ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Bytes allocated and not freed, as counted on the opted-in threads.
pub fn live_bytes() -> isize {
    LIVE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts an allocation of `grown` more bytes (negative: freed), if this
/// thread counts; `new`: a new block (or a reallocation), not a free.
fn counted(grown: isize, new: bool) {
    use std::sync::atomic::Ordering::Relaxed;
    if COUNT_HERE.try_with(std::cell::Cell::get).unwrap_or(false) {
        if new {
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        LIVE.fetch_add(grown, Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counts are atomics and the thread-local is const-initialised (nothing
// allocates).
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        counted(layout.size() as isize, true);
        // SAFETY: the same contract as our caller's.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        counted(-(layout.size() as isize), false);
        // SAFETY: the same contract as our caller's.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        counted(new as isize - layout.size() as isize, true);
        // SAFETY: the same contract as our caller's.
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

/// The most RSS (KiB) process `pid` held while sampled every 20 ms for
/// `during`: what a server costs while a client misbehaves. The sampling is
/// the measurement, not a wait for I/O.
pub fn peak_rss_kib(pid: u32, during: Duration) -> u64 {
    let until = Instant::now() + during;
    let mut most = status_kib(pid, "VmRSS:");
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        most = most.max(status_kib(pid, "VmRSS:"));
    }
    most
}
