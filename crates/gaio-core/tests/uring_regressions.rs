//! Regressions found by an audit of the io_uring driver, each absent on epoll:
//! every test runs on both backends (io_uring skipped, loudly, where it cannot
//! be built), epoll first, so a failure names the backend that broke.
//!
//! Not here: completions lost to a completion-queue overflow. The public API
//! cannot overflow the queue: with `DEFER_TASKRUN` the kernel posts completions
//! only inside the watcher's own `io_uring_enter`, which runs at most 20
//! deferred completions per wait and submits at most one submission queue
//! (2,048 entries) before reaping, against a completion queue of 8,192 (27,000
//! completions made ready at once were reaped without one overflow).

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gaio_core::{Backend, Error, Requests, Watcher};
use util::*;

/// Runs `test` on epoll, then on io_uring unless this machine refuses it.
fn on_each_backend(name: &str, mut test: impl FnMut(Backend)) {
    for backend in [Backend::Epoll, Backend::IoUring] {
        if backend == Backend::IoUring {
            if let Err(e) = Watcher::<()>::builder().backend(backend).build() {
                eprintln!("!!! {name}: SKIPPED on io_uring, which this machine refuses: {e}");
                continue;
            }
        }
        let start = Instant::now();
        test(backend);
        eprintln!("{name}: passed on {backend} in {:?}", start.elapsed());
    }
}

fn watcher<C>(backend: Backend) -> Watcher<C> {
    Watcher::builder().backend(backend).build().unwrap()
}

/// Whether `fd` has something to read (bytes, EOF, an error) within `within`.
fn readable(fd: BorrowedFd<'_>, within: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = within.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `p` is one valid pollfd that poll reads and writes for the call's
    // duration; `fd` is borrowed, so open until it returns.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n == 1 && p.revents != 0
}

/// Regression: on io_uring a swap-buffer read leaves its multishot receive
/// armed; bytes the peer sent after it were received by the kernel while
/// another connection's `free` waited for its cancellation, and the `detach`
/// that followed dropped them (the detached socket then had nothing to read).
/// Either the detach succeeds and the socket yields the bytes, or it is
/// refused and the next read on the watcher yields them: no byte is lost.
#[test]
fn detach_after_a_swap_read_loses_no_received_bytes() {
    let _serial = serial();
    on_each_backend("detach_after_a_swap_read_loses_no_received_bytes", |b| {
        for round in 0..20 {
            let mut w: Watcher<u8> = watcher(b);
            let (mut peer, server) = tcp_pair();
            let probe = server.try_clone().unwrap();
            let conn = w.register(server).unwrap();
            // Another connection with an operation in flight: freeing it waits
            // for the kernel (on io_uring), which reaps the receive below too.
            let (_other_peer, other_server) = tcp_pair();
            let other = w.register(other_server).unwrap();
            w.local().read(other, 9, Some(vec![0; 64])).unwrap();
            w.local().read(conn, 0, None).unwrap();
            peer.write_all(b"one").unwrap();
            let d = one(&mut w);
            assert_eq!((d.ctx, &d.data[..]), (0, &b"one"[..]), "round {round}");

            peer.write_all(b"two").unwrap();
            // The bytes are in the socket (a dup of it) before the free.
            assert!(
                readable(probe.as_fd(), Duration::from_secs(5)),
                "round {round}: the peer's bytes never arrived"
            );
            drop(probe);
            w.free(other).unwrap();
            match w.local().detach(conn) {
                Ok(fd) => {
                    let mut s = TcpStream::from(fd);
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut got = [0u8; 3];
                    if let Err(e) = s.read_exact(&mut got) {
                        panic!(
                            "round {round} on {b}: detach succeeded but the 3 bytes \
                             `two` the peer sent are not in the socket (nothing to \
                             read within 2 s: {e}): the watcher dropped them"
                        );
                    }
                    assert_eq!(&got, b"two", "round {round}");
                }
                Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Refused: the bytes wait for the next read on the watcher.
                    w.local().read(conn, 1, None).unwrap();
                    let mut got = Vec::new();
                    let end = Instant::now() + Duration::from_secs(5);
                    while got.len() < 3 && Instant::now() < end {
                        for d in collect_within(&mut w, 1, Duration::from_secs(5)) {
                            if d.ctx == 1 {
                                assert!(d.result.is_ok(), "round {round}: {:?}", d.result);
                                got.extend_from_slice(&d.data);
                                if got.len() < 3 {
                                    w.local().read(conn, 1, None).unwrap();
                                }
                            }
                        }
                    }
                    assert_eq!(&got[..], b"two", "round {round}: detach refused, then");
                    w.free(conn).unwrap();
                }
                Err(e) => panic!("round {round}: detach failed: {e:?}"),
            }
        }
    });
}

/// Regression: `Watcher::close` on io_uring closed the wake eventfd before
/// waiting for the cancelled operations, and the cancel-all ended the wake
/// poll too, so the next wait re-armed a poll on the eventfd's raw fd number,
/// which by then may belong to a file another thread opened: the closed
/// watcher then held that file until it was dropped (a pipe whose owner closed
/// its end stayed open). Each round: a watcher with many reads in flight (so
/// the cancellations take more than one wait), a thread that opens pipes
/// while `close` runs until one gets the eventfd's number (the lowest free
/// one once `close` has freed it), then that pipe must behave as its owner's
/// alone; and after `close` (not dropped) the watcher holds no fd but its
/// poller. A round hits the race about half the time on the old code.
#[test]
fn close_keeps_no_other_file_open() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let _serial = serial();
    on_each_backend("close_keeps_no_other_file_open", |b| {
        let mut reused = 0;
        for round in 0..50 {
            let pairs = tcp_pairs(128);
            let before = fd_list();
            let mut w: Watcher<()> = watcher(b);
            let mut registered = Vec::new();
            let mut peers = Vec::new();
            for (i, (peer, server)) in pairs.into_iter().enumerate() {
                registered.push(server.as_raw_fd().to_string());
                let conn = w.register(server).unwrap();
                let buf = (i % 2 == 0).then(|| vec![0; 64]);
                w.local().read(conn, (), buf).unwrap();
                peers.push(peer);
            }
            // The reads reach the kernel (and the ring its issuer).
            assert_eq!(w.wait_io_timeout(Duration::ZERO).unwrap().count(), 0);
            let wake: Vec<RawFd> = fd_list()
                .into_iter()
                .filter(|f| !before.contains(f) && f.1.contains("eventfd"))
                .map(|f| f.0.parse().unwrap())
                .collect();
            assert_eq!(wake.len(), 1, "round {round} on {b}: the waker's eventfd");
            let wake = wake[0];

            // Another thread fills every free number below the eventfd's with
            // pipes, then opens pipes until one end takes the eventfd's number,
            // which close() frees.
            let stop = Arc::new(AtomicBool::new(false));
            let ready = Arc::new(AtomicBool::new(false));
            let opener = {
                let (stop, ready) = (stop.clone(), ready.clone());
                std::thread::spawn(move || {
                    let mut holes = Vec::new();
                    while !stop.load(Ordering::Acquire) {
                        let (r, wr) = std::io::pipe().unwrap();
                        let nums = [r.as_raw_fd(), wr.as_raw_fd()];
                        if nums.contains(&wake) {
                            return Some((r, wr));
                        }
                        if nums.iter().any(|&n| n < wake) {
                            holes.push((r, wr));
                        } else {
                            ready.store(true, Ordering::Release);
                        }
                    }
                    None
                })
            };
            let end = Instant::now() + Duration::from_secs(5);
            while !ready.load(Ordering::Acquire) {
                assert!(
                    Instant::now() < end && !opener.is_finished(),
                    "round {round}: the pipe opener did not get going"
                );
                std::thread::yield_now();
            }
            let open = fd_list();
            w.close().unwrap();
            stop.store(true, Ordering::Release);
            let pipe = opener.join().unwrap();

            if let Some((mut r, mut wr)) = pipe {
                reused += 1;
                if wr.as_raw_fd() == wake {
                    drop(wr);
                    let eof = readable(r.as_fd(), Duration::from_secs(2))
                        && matches!(r.read(&mut [0u8; 8]), Ok(0));
                    assert!(
                        eof,
                        "round {round} on {b}: a pipe whose write end took fd {wake} (the \
                         closed watcher's wake eventfd) sees no EOF after its owner closed \
                         that end: the watcher's ring still holds it open"
                    );
                } else {
                    drop(r);
                    let res = wr.write(b"x");
                    assert!(
                        matches!(&res, Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe),
                        "round {round} on {b}: a pipe whose read end took fd {wake} (the \
                         closed watcher's wake eventfd) still has a reader after its owner \
                         closed that end ({res:?}): the watcher's ring still holds it open"
                    );
                }
            }

            // What close() released: every registered socket and the waker.
            let after = fd_list();
            let closed: Vec<_> = open.iter().filter(|f| !after.contains(f)).collect();
            let new: Vec<_> = after.iter().filter(|f| !before.contains(f)).collect();
            assert!(
                new.len() == 1 && (new[0].1.contains("eventpoll") || new[0].1.contains("io_uring")),
                "round {round} on {b}: after close the watcher should hold its poller \
                 only, not {new:?} (closed: {closed:?})"
            );
            let still: Vec<_> = registered
                .iter()
                .filter(|fd| after.iter().any(|(f, _)| f == *fd))
                .collect();
            assert!(
                still.is_empty(),
                "round {round} on {b}: registered sockets still open: {still:?}"
            );
            drop(w);
            drop(peers);
        }
        eprintln!("close_keeps_no_other_file_open: {reused}/50 rounds reused the number on {b}");
    });
}

/// This thread's id (for the names of its io_uring workers).
fn tid() -> String {
    let p = std::fs::read_link("/proc/thread-self").unwrap();
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// io_uring worker threads (io-wq) serving this thread's rings: the kernel
/// names them `iou-wrk-<tid>`.
fn io_wq_workers(tid: &str) -> usize {
    let name = format!("iou-wrk-{tid}");
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .count()
}

/// Reads `peer` until EOF or reset; `Err` if neither comes within `within`.
fn drain_to_eof(peer: &mut TcpStream, within: Duration) -> Result<usize, String> {
    peer.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let end = Instant::now() + within;
    let mut buf = vec![0; 256 * 1024];
    let mut total = 0;
    loop {
        match peer.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(total),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if Instant::now() >= end {
                    return Err(format!(
                        "no EOF within {within:?} after {total} bytes: the socket was never closed"
                    ));
                }
            }
            Err(e) => return Err(format!("read after {total} bytes: {e}")),
        }
    }
}

/// Regression: on io_uring sends went out without `MSG_DONTWAIT`. A send that
/// finds the socket buffer full waits for room in the kernel (poll) and is
/// retried when room is signalled; after 128 retries that found the buffer
/// full again the kernel hands it to a worker thread (io-wq), where it blocks.
/// Cancelling it then (a deadline, `free`, or a close with a deadline, while
/// the peer does not read) completed the write with `EINTR`, and a connection
/// whose close had completed could stay open in that worker. Each round
/// reproduces the retries exactly: the peer drains the socket (room is
/// signalled) and a dup of the socket fills it again before the watcher's
/// next wait retries the send, a few hundred times; then the peer stops
/// reading and the write is cancelled. No completion may carry EINTR, no io-wq
/// worker may start, and once the dup is gone too the peer reads to EOF.
#[test]
fn cancelled_sends_to_a_full_socket_end_cleanly() {
    let _serial = serial();
    let big: Arc<[u8]> = pattern(3, 64 << 20).into();
    on_each_backend("cancelled_sends_to_a_full_socket_end_cleanly", |b| {
        // Each round on a thread of its own: io-wq workers belong to the
        // thread that submitted, and idle ones linger for seconds.
        let failed: Vec<String> = (0..9)
            .filter_map(|round| {
                let big = big.clone();
                std::thread::spawn(move || cancel_a_send_to_a_full_socket(b, round, big))
                    .join()
                    .unwrap()
                    .err()
            })
            .collect();
        assert!(
            failed.is_empty(),
            "on {b}, {} of 9 rounds failed:\n{}",
            failed.len(),
            failed.join("\n")
        );
    });
}

/// One round of [`cancelled_sends_to_a_full_socket_end_cleanly`]; `Err` says
/// what went wrong.
fn cancel_a_send_to_a_full_socket(b: Backend, round: usize, big: Arc<[u8]>) -> Result<(), String> {
    let me = tid();
    let junk = vec![0u8; 64 * 1024];
    let mode = ["free", "deadline", "close"][round % 3];
    let (mut peer, server) = tcp_pair();
    socket2::SockRef::from(&server)
        .set_send_buffer_size(64 * 1024)
        .unwrap();
    socket2::SockRef::from(&peer)
        .set_recv_buffer_size(64 * 1024)
        .unwrap();
    let mut dup = server.try_clone().unwrap();
    let mut w: Watcher<&'static str> = watcher(b);
    let conn = w.register(server).unwrap();
    // Far later than the cycles below take; the deadline rounds wait it out.
    let cancel_at = Instant::now() + Duration::from_millis(300);
    match mode {
        "deadline" => w.local().write_deadline(conn, "write", big, cancel_at),
        _ => w.local().write(conn, "write", big),
    }
    .unwrap();
    if mode == "close" {
        w.local().close(conn, "close", Some(cancel_at)).unwrap();
    }
    peer.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut done: Vec<(&str, usize, Result<(), Error>)> = Vec::new();
    let mut worker_at = None;
    for cycle in 0..300 {
        // Room: the send is woken. Full again: its retry finds none.
        while matches!(peer.read(&mut buf), Ok(n) if n > 0) {}
        while dup.write(&junk).is_ok() {}
        for _ in 0..2 {
            for c in w.wait_io_timeout(Duration::ZERO).unwrap() {
                done.push((c.ctx, c.size, c.result));
            }
        }
        if io_wq_workers(&me) > 0 {
            worker_at = Some(cycle);
            break;
        }
    }
    assert!(
        done.is_empty(),
        "round {round} ({mode}) on {b}: {done:?} before the cancel"
    );
    // The peer stops reading; the write is cancelled.
    if mode == "free" {
        w.free(conn).unwrap();
    }
    let expect = if mode == "close" { 2 } else { 1 };
    let end = Instant::now() + Duration::from_secs(5);
    while done.len() < expect {
        if Instant::now() >= end {
            return Err(format!(
                "round {round} ({mode}): only {done:?} completed within 5 s (io-wq worker \
                 since retry cycle {worker_at:?})"
            ));
        }
        for c in w.wait_io_timeout(Duration::from_millis(50)).unwrap() {
            done.push((c.ctx, c.size, c.result));
        }
    }
    if mode == "deadline" {
        w.free(conn).unwrap();
    }
    drop(dup);
    let eintr = done
        .iter()
        .any(|d| matches!(&d.2, Err(Error::Io(e)) if e.raw_os_error() == Some(libc::EINTR)));
    let eof = drain_to_eof(&mut peer, Duration::from_secs(3));
    if eintr || eof.is_err() || worker_at.is_some() {
        return Err(format!(
            "round {round} ({mode}): completions {done:?}{}; the peer after the close: \
             {eof:?}; io-wq worker: {}",
            if eintr { " <- EINTR" } else { "" },
            worker_at.map_or("none".to_string(), |c| format!(
                "started after {c} retries that found the buffer full"
            ))
        ));
    }
    let want = match mode {
        "deadline" => matches!(done[0].2, Err(Error::Deadline)),
        "free" => matches!(done[0].2, Err(Error::ConnClosed)),
        _ => done
            .iter()
            .any(|d| d.0 == "close" && matches!(d.2, Err(Error::Deadline))),
    };
    assert!(want, "round {round} ({mode}) on {b}: {done:?}");
    Ok(())
}
