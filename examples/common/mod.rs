//! Command-line plumbing shared by the example servers (not an example itself):
//! flags validated up front, one-line errors that name the flag or address they
//! concern, exit status 2 for usage errors and 1 for failures, and a tracing
//! subscriber (honouring `RUST_LOG`, default `warn`) so the library's warnings reach
//! the terminal, and the soft fd limit raised to the hard one (as Go does at
//! start-up), so a server is not stopped at 1,024 connections.
#![allow(dead_code)] // each example uses part of it

use std::fmt::Display;
use std::io::Write;
use std::net::SocketAddr;
use std::process::exit;
use std::str::FromStr;
use std::time::Duration;

use gaio::pool::Pool;

/// An example's command line.
pub struct Cli {
    prog: &'static str,
    usage: &'static str,
    args: std::vec::IntoIter<String>,
}

impl Cli {
    /// Reads the process arguments, installs the tracing subscriber and raises
    /// the soft fd limit.
    pub fn new(prog: &'static str, usage: &'static str) -> Cli {
        init_tracing();
        raise_fd_limit();
        Cli {
            prog,
            usage,
            args: std::env::args().skip(1).collect::<Vec<_>>().into_iter(),
        }
    }

    /// The next flag; `-h`/`--help` prints the usage and exits 0.
    pub fn next_flag(&mut self) -> Option<String> {
        let flag = self.args.next()?;
        if flag == "-h" || flag == "--help" {
            print!("{}", self.usage);
            exit(0);
        }
        Some(flag)
    }

    /// The value after `flag`, parsed.
    pub fn parse<T: FromStr>(&mut self, flag: &str) -> T
    where
        T::Err: Display,
    {
        let Some(v) = self.args.next() else {
            self.usage_error(format!("{flag} needs a value"))
        };
        v.parse()
            .unwrap_or_else(|e| self.usage_error(format!("{flag} {v}: {e}")))
    }

    /// A count of at least 1.
    pub fn count(&mut self, flag: &str) -> usize {
        let n: i64 = self.parse(flag);
        if n < 1 {
            self.usage_error(format!("{flag} {n}: must be at least 1"));
        }
        n as usize
    }

    /// A number of at least 0 (e.g. a core index, or a duration in µs).
    pub fn natural(&mut self, flag: &str) -> u64 {
        let n: i64 = self.parse(flag);
        if n < 0 {
            self.usage_error(format!("{flag} {n}: must not be negative"));
        }
        n as u64
    }

    /// A period in seconds (fractions allowed) that must be more than zero.
    pub fn period_secs(&mut self, flag: &str) -> Duration {
        let s: f64 = self.parse(flag);
        if !(s.is_finite() && s > 0.0) || Duration::try_from_secs_f64(s).is_err() {
            self.usage_error(format!("{flag} {s}: must be a positive number of seconds"));
        }
        Duration::from_secs_f64(s)
    }

    /// A socket address such as `127.0.0.1:7000` or `[::1]:0`.
    pub fn addr(&mut self, flag: &str) -> SocketAddr {
        self.parse(flag)
    }

    /// Prints `prog: msg` and the usage to stderr; exits 2.
    pub fn usage_error(&self, msg: impl Display) -> ! {
        eprint!("{}: {msg}\n\n{}", self.prog, self.usage);
        exit(2)
    }

    /// An option this example does not know.
    pub fn unknown(&self, flag: &str) -> ! {
        self.usage_error(format!("unknown option {flag}"))
    }

    /// Prints `prog: msg` to stderr; exits 1.
    pub fn fail(&self, msg: impl Display) -> ! {
        eprintln!("{}: {msg}", self.prog);
        exit(1)
    }

    /// A pool server's start: the built pool (or a one-line failure),
    /// SIGINT/SIGTERM caught before anything is announced, `listen` (which
    /// binds and returns the address), then `listening on ADDR`.
    pub fn start_pool<C: Send + 'static, M: Send + 'static>(
        &self,
        pool: gaio::Result<Pool<C, M>>,
        listen: SocketAddr,
        bind: impl FnOnce(&Pool<C, M>) -> gaio::Result<SocketAddr>,
    ) -> Pool<C, M> {
        let mut pool = pool
            .unwrap_or_else(|e| self.fail(format!("cannot start the pool: {}", gaio_reason(&e))));
        // Before the address goes out: a client that signals at once gets a
        // clean exit.
        if let Err(e) = pool.catch_signals() {
            self.fail(format!("cannot catch signals: {}", gaio_reason(&e)));
        }
        let addr = bind(&pool).unwrap_or_else(|e| {
            self.fail(format!("cannot listen on {listen}: {}", gaio_reason(&e)))
        });
        println!("listening on {addr}");
        let _ = std::io::stdout().flush();
        pool
    }

    /// Serves until SIGINT or SIGTERM, then shuts the pool down gracefully.
    pub fn run_pool<C: Send + 'static, M: Send + 'static>(&self, pool: Pool<C, M>) {
        if let Err(e) = pool.run() {
            self.fail(format!("cannot wait for a signal: {}", gaio_reason(&e)));
        }
    }

    /// Hands the listener bound on `addr` (or the error binding it) to the
    /// watcher, which then accepts on it, and prints `listening on ADDR`: the
    /// line clients wait for. Any failure ends the example with one line.
    pub fn watch_listener<C>(
        &self,
        w: &mut gaio::Watcher<C>,
        addr: SocketAddr,
        bound: std::io::Result<std::net::TcpListener>,
    ) -> gaio::Conn {
        use std::io::Write;
        let listener =
            bound.unwrap_or_else(|e| self.fail(format!("cannot listen on {addr}: {}", reason(&e))));
        let local = listener
            .local_addr()
            .unwrap_or_else(|e| self.fail(format!("cannot listen on {addr}: {}", reason(&e))));
        let conn = w.register(listener).unwrap_or_else(|e| {
            self.fail(format!("cannot watch the listener: {}", gaio_reason(&e)))
        });
        println!("listening on {local}");
        let _ = std::io::stdout().flush();
        conn
    }

    /// Prints a line after `listening on` (the TLS certificate's fingerprint).
    pub fn note(&self, line: Option<&str>) {
        if let Some(line) = line {
            println!("{line}");
            let _ = std::io::stdout().flush();
        }
    }
}

/// A TCP listener with a 4096 backlog (std's 128 overflows when thousands of
/// clients connect at once, and every dropped SYN costs the client a 1 s
/// retransmit) and `TCP_NODELAY`, which accepted sockets inherit on Linux:
/// replies are not held back by Nagle.
pub fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// An I/O error as a short reason: `permission denied`, not
/// `Permission denied (os error 13)` or a Debug struct.
pub fn reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error ") {
        Some(i) if e.raw_os_error().is_some() => &text[..i],
        _ => &text[..],
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => text.to_string(),
    }
}

/// A gaio error as a short reason (the I/O cause when there is one).
pub fn gaio_reason(e: &gaio::Error) -> String {
    match e {
        gaio::Error::Io(io) => reason(io),
        other => other.to_string(),
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Soft `RLIMIT_NOFILE` up to the hard limit; failure only means fewer clients.
fn raise_fd_limit() {
    // SAFETY: rlimit is plain data for which all-zeroes is valid; getrlimit and
    // setrlimit only read and write the struct passed by reference.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                eprintln!("warning: could not raise the fd limit");
            }
        }
    }
}
