//! gaio-sys against real loopback sockets: edge-triggered semantics, waker, timeouts,
//! hang-up and reset, no SIGPIPE, refused fds, EINTR, thread pinning.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gaio_sys::{Event, Events, FdKind, Poller, Waker};

const T: Option<Duration> = Some(Duration::from_secs(5));

/// A connected (client, server) pair with the server side nonblocking.
fn tcp_pair() -> (TcpStream, TcpStream) {
    let (c, s) = gaio_testkit::tcp_pair();
    gaio_sys::set_nonblocking(s.as_fd(), true).unwrap();
    (c, s)
}

fn events_for(
    poller: &Poller,
    events: &mut Events,
    token: u64,
    timeout: Option<Duration>,
) -> Vec<Event> {
    poller.wait(events, timeout).unwrap();
    events.iter().filter(|e| e.token() == token).collect()
}

/// Waits (bounded) until an event for `token` satisfying `pred` arrives.
fn wait_for(
    poller: &Poller,
    events: &mut Events,
    token: u64,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if let Some(e) = events_for(poller, events, token, T)
            .into_iter()
            .find(|e| pred(e))
        {
            return e;
        }
    }
    panic!("no matching event for token {token} within 5 s");
}

fn drain(fd: std::os::fd::BorrowedFd<'_>) -> usize {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    loop {
        match gaio_sys::read(fd, &mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return total,
            Err(e) => panic!("read: {e}"),
        }
    }
}

#[test]
fn edge_triggered_reports_once_until_drained() {
    let (mut c, s) = tcp_pair();
    let poller = Poller::new().unwrap();
    let mut events = Events::with_capacity(8);
    poller.register(s.as_fd(), 1).unwrap();
    // The fresh socket is writable: one edge, then silence.
    let e = wait_for(&poller, &mut events, 1, |e| e.is_writable());
    assert!(!e.is_readable());
    assert!(events_for(&poller, &mut events, 1, Some(Duration::ZERO)).is_empty());

    c.write_all(b"hello").unwrap();
    wait_for(&poller, &mut events, 1, |e| e.is_readable());
    // Not drained: edge-triggered means no second event for the same data.
    assert!(events_for(&poller, &mut events, 1, Some(Duration::from_millis(20))).is_empty());
    assert_eq!(drain(s.as_fd()), 5);
    assert!(events_for(&poller, &mut events, 1, Some(Duration::ZERO)).is_empty());

    // New data after draining to WouldBlock is a new edge.
    c.write_all(b"again").unwrap();
    wait_for(&poller, &mut events, 1, |e| e.is_readable());
    assert_eq!(drain(s.as_fd()), 5);
}

/// epoll refuses an fd added twice; kqueue replaces its token (see the crate docs).
#[cfg(any(target_os = "linux", target_os = "android"))]
#[test]
fn register_twice_is_an_error() {
    let (_c, s) = tcp_pair();
    let poller = Poller::new().unwrap();
    poller.register(s.as_fd(), 1).unwrap();
    let err = poller.register(s.as_fd(), 2).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
    poller.deregister(s.as_fd()).unwrap();
    assert!(poller.deregister(s.as_fd()).is_err());
}

#[test]
fn deregister_twice_is_an_error() {
    let (_c, s) = tcp_pair();
    let poller = Poller::new().unwrap();
    poller.register(s.as_fd(), 1).unwrap();
    poller.deregister(s.as_fd()).unwrap();
    assert_eq!(
        poller.deregister(s.as_fd()).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
}

#[test]
fn waker_unblocks_wait_from_another_thread_and_coalesces() {
    let poller = Arc::new(Poller::new().unwrap());
    let waker = Arc::new(Waker::new(&poller, 99).unwrap());
    let w2 = waker.clone();
    let t = std::thread::spawn(move || {
        // Three wakes before the poller looks: one event.
        w2.wake().unwrap();
        w2.wake().unwrap();
        w2.wake().unwrap();
    });
    t.join().unwrap();
    let mut events = Events::with_capacity(8);
    let got = events_for(&poller, &mut events, 99, T);
    assert_eq!(got.len(), 1, "wakes before a wait coalesce into one event");
    assert!(events_for(&poller, &mut events, 99, Some(Duration::ZERO)).is_empty());

    // A wait blocked with no timeout returns once another thread wakes it.
    let p2 = poller.clone();
    let blocked = std::thread::spawn(move || {
        let mut events = Events::with_capacity(8);
        loop {
            p2.wait(&mut events, None).unwrap();
            if events.iter().any(|e| e.token() == 99) {
                return;
            }
        }
    });
    waker.wake().unwrap();
    blocked.join().unwrap();
}

#[test]
fn wait_timeout_is_honoured() {
    let poller = Poller::new().unwrap();
    let mut events = Events::with_capacity(8);
    for ms in [0u64, 1, 30] {
        let d = Duration::from_millis(ms);
        let start = Instant::now();
        poller.wait(&mut events, Some(d)).unwrap();
        assert!(events.is_empty());
        assert!(
            start.elapsed() >= d,
            "returned after {:?}, before {d:?}",
            start.elapsed()
        );
    }
    // Sub-millisecond timeouts round up rather than spin.
    let start = Instant::now();
    poller
        .wait(&mut events, Some(Duration::from_micros(10)))
        .unwrap();
    assert!(start.elapsed() >= Duration::from_micros(10));
}

#[test]
fn peer_close_shows_hang_up() {
    let (c, s) = tcp_pair();
    let poller = Poller::new().unwrap();
    let mut events = Events::with_capacity(8);
    poller.register(s.as_fd(), 3).unwrap();
    wait_for(&poller, &mut events, 3, |e| e.is_writable());
    c.shutdown(Shutdown::Write).unwrap();
    let e = wait_for(&poller, &mut events, 3, |e| e.is_read_closed());
    assert!(e.is_readable());
    assert_eq!(gaio_sys::read(s.as_fd(), &mut [0u8; 8]).unwrap(), 0, "EOF");
}

/// Makes `close` send RST instead of FIN.
fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the fd is owned by `s` and outlives the call; `l` is a valid linger
    // struct of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

#[test]
fn peer_reset_shows_error() {
    let (c, s) = tcp_pair();
    let poller = Poller::new().unwrap();
    let mut events = Events::with_capacity(8);
    poller.register(s.as_fd(), 4).unwrap();
    wait_for(&poller, &mut events, 4, |e| e.is_writable());
    set_linger_zero(&c);
    drop(c);
    let e = wait_for(&poller, &mut events, 4, |e| {
        e.is_error() || e.is_read_closed()
    });
    assert!(e.is_error(), "RST must surface as an error event: {e:?}");
    let err = gaio_sys::read(s.as_fd(), &mut [0u8; 8]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECONNRESET));
}

static SIGPIPES: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_sigpipe(_: libc::c_int) {
    SIGPIPES.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn send_to_reset_peer_fails_without_sigpipe() {
    // Rust ignores SIGPIPE by default, which would hide a missing MSG_NOSIGNAL:
    // count deliveries with a handler instead.
    // SAFETY: the handler only touches an atomic, which is async-signal-safe.
    let prev = unsafe {
        libc::signal(
            libc::SIGPIPE,
            count_sigpipe as *const () as libc::sighandler_t,
        )
    };
    assert_ne!(prev, libc::SIG_ERR);

    let (c, s) = tcp_pair();
    set_linger_zero(&c);
    drop(c);
    let mut saw = None;
    let chunk = [7u8; 1024];
    let end = Instant::now() + Duration::from_secs(5);
    // The first sends may land in the buffer before the RST is processed.
    while Instant::now() < end {
        match gaio_sys::send(s.as_fd(), &chunk) {
            Ok(_) => std::thread::yield_now(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => {
                saw = Some(e);
                break;
            }
        }
    }
    let err = saw.expect("send to a reset peer must fail");
    assert!(
        matches!(
            err.raw_os_error(),
            Some(libc::EPIPE) | Some(libc::ECONNRESET)
        ),
        "{err}"
    );
    // A second send after the error: EPIPE, still no signal. sendv goes the same way.
    let again = gaio_sys::send(s.as_fd(), &chunk).unwrap_err();
    assert_eq!(again.raw_os_error(), Some(libc::EPIPE));
    let bufs = [io::IoSlice::new(&chunk), io::IoSlice::new(&chunk)];
    let v = gaio_sys::sendv(s.as_fd(), &bufs).unwrap_err();
    assert_eq!(v.raw_os_error(), Some(libc::EPIPE));
    assert_eq!(
        SIGPIPES.load(Ordering::SeqCst),
        0,
        "no SIGPIPE may be raised"
    );

    // The handler does count: a plain write() to the dead socket raises SIGPIPE.
    let _ = gaio_sys::write(s.as_fd(), &chunk);
    assert_eq!(
        SIGPIPES.load(Ordering::SeqCst),
        1,
        "the SIGPIPE counter works"
    );
    // SAFETY: restores the disposition we replaced.
    unsafe { libc::signal(libc::SIGPIPE, prev) };
}

#[test]
fn writev_and_sendv_write_in_order() {
    let (mut c, s) = tcp_pair();
    let a = [io::IoSlice::new(b"ab"), io::IoSlice::new(b"cd")];
    assert_eq!(gaio_sys::sendv(s.as_fd(), &a).unwrap(), 4);
    assert_eq!(gaio_sys::writev(s.as_fd(), &a).unwrap(), 4);
    assert_eq!(gaio_sys::send(s.as_fd(), b"e").unwrap(), 1);
    let mut got = [0u8; 9];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"abcdabcde");
}

#[test]
fn regular_file_is_refused() {
    let path = std::env::temp_dir().join(format!("gaio-sys-file-{}", std::process::id()));
    let f = std::fs::File::create(&path).unwrap();
    assert_eq!(gaio_sys::fd_kind(f.as_fd()).unwrap(), FdKind::Unsupported);
    let poller = Poller::new().unwrap();
    let err = poller.register(f.as_fd(), 5).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    std::fs::remove_file(&path).unwrap();

    let (_c, s) = tcp_pair();
    assert_eq!(gaio_sys::fd_kind(s.as_fd()).unwrap(), FdKind::Socket);
    let (r, _w) = std::io::pipe().unwrap();
    assert_eq!(gaio_sys::fd_kind(r.as_fd()).unwrap(), FdKind::Pipe);
    let (u, _u2) = std::os::unix::net::UnixStream::pair().unwrap();
    assert_eq!(gaio_sys::fd_kind(u.as_fd()).unwrap(), FdKind::Socket);
    let d = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(gaio_sys::fd_kind(d.as_fd()).unwrap(), FdKind::Unsupported);
}

#[test]
fn accept_returns_nonblocking_fd_and_peer_addr() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let err = gaio_sys::accept(l.as_fd()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let poller = Poller::new().unwrap();
    poller.register(l.as_fd(), 6).unwrap();
    let mut events = Events::with_capacity(8);
    wait_for(&poller, &mut events, 6, |e| e.is_readable());
    let (fd, addr) = gaio_sys::accept(l.as_fd()).unwrap();
    assert_eq!(addr, Some(c.local_addr().unwrap()));
    let e = gaio_sys::read(fd.as_fd(), &mut [0u8; 4]).unwrap_err();
    assert_eq!(
        e.kind(),
        io::ErrorKind::WouldBlock,
        "accepted fd is nonblocking"
    );
}

extern "C" fn noop(_: libc::c_int) {}

#[test]
fn eintr_from_a_real_signal_is_a_spurious_wakeup() {
    // SAFETY: sigaction is plain data; the handler does nothing; no SA_RESTART, so
    // the blocked epoll_wait really fails with EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = noop as *const () as libc::sighandler_t;
        sa.sa_flags = 0;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let poller = Poller::new().unwrap();
        let mut events = Events::with_capacity(4);
        // SAFETY: pthread_self has no preconditions.
        tx.send(unsafe { libc::pthread_self() } as usize).unwrap();
        // Only the signal can end this wait (nothing is registered): Ok, no events.
        let res = poller.wait(&mut events, Some(Duration::from_secs(30)));
        (res.is_ok(), events.len())
    });
    let tid = rx.recv().unwrap() as libc::pthread_t;
    let start = Instant::now();
    // The thread may not have entered epoll_wait yet: signal until it returns.
    while !t.is_finished() && start.elapsed() < Duration::from_secs(10) {
        // SAFETY: `tid` is a live thread until it is joined below.
        unsafe { libc::pthread_kill(tid, libc::SIGUSR1) };
        std::thread::yield_now();
    }
    let (ok, n) = t.join().unwrap();
    assert!(ok, "EINTR must not reach the caller");
    assert_eq!(n, 0);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the signal interrupted the wait"
    );
}

#[test]
fn pinning_reads_back_and_missing_core_fails() {
    std::thread::spawn(|| {
        let cores = gaio_sys::current_thread_affinity().unwrap();
        let last = *cores.last().unwrap();
        gaio_sys::pin_current_thread(last).unwrap();
        assert_eq!(gaio_sys::current_thread_affinity().unwrap(), vec![last]);
        let err = gaio_sys::pin_current_thread(100_000).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = gaio_sys::pin_current_thread(1000).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("1000"));
        // A failed pin leaves the old affinity in place.
        assert_eq!(gaio_sys::current_thread_affinity().unwrap(), vec![last]);
    })
    .join()
    .unwrap();
}
