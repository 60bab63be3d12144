//! Running out of fds at accept must not spin a core, and serving resumes when fds
//! free up. Alone in its binary: it lowers this process's RLIMIT_NOFILE.

mod util;

use std::sync::mpsc::channel;
use std::time::Duration;

use gaio_pool::Pool;
use util::*;

/// CPU seconds (user + system) this process has used, read through a file opened
/// before the fd limit was lowered.
fn cpu_seconds(stat: &std::fs::File) -> f64 {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 1024];
    let n = stat.read_at(&mut buf, 0).unwrap();
    let stat = std::str::from_utf8(&buf[..n]).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are 12 and 13 after the command name.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

#[test]
fn emfile_at_accept_backs_off_and_recovers() {
    let _serial = serial();
    let (tx, rx) = channel();
    let pool = echo_pool(Pool::builder().watchers(1).pin(false), tx);
    // 30 client sockets exist before the limit drops; connecting needs no new fd.
    use socket2::{Domain, Socket, Type};
    let socks: Vec<Socket> = (0..30)
        .map(|_| Socket::new(Domain::IPV4, Type::STREAM, None).unwrap())
        .collect();
    let stat = std::fs::File::open("/proc/self/stat").unwrap();
    // Room for the listener and 10 accepted connections, then EMFILE. The limit
    // drops before the pool listens: io_uring's accept reads it when the
    // (multishot) accept is submitted, not at each connection.
    gaio_testkit::set_fd_limit(fd_count() as u64 + 11);
    let addr = pool.listen("127.0.0.1:0").unwrap();
    let mut clients: Vec<std::net::TcpStream> = socks
        .into_iter()
        .map(|s| {
            s.connect(&addr.into()).unwrap();
            s.into()
        })
        .collect();
    let mut accepted = Vec::new();
    while let Ok(Note::Connected { peer, .. }) = rx.recv_timeout(Duration::from_millis(300)) {
        accepted.push(peer.unwrap());
    }
    let first = accepted.len();
    assert!(
        first < 30,
        "the fd limit must stop some accepts (got {first})"
    );
    // The accepting watcher is now out of fds with connections queued: it must not spin.
    let cpu0 = cpu_seconds(&stat);
    let quiet = rx.recv_timeout(Duration::from_millis(700));
    let used = cpu_seconds(&stat) - cpu0;
    assert!(quiet.is_err(), "nothing can be accepted while out of fds");
    assert!(
        used < 0.35,
        "{used:.2} CPU-seconds in 0.7 s while out of fds: a busy loop"
    );
    // Existing connections are still served while accepting is out of fds.
    assert!(first > 0);
    let c = clients
        .iter_mut()
        .find(|c| accepted.contains(&c.local_addr().unwrap()))
        .unwrap();
    echo_once(c, b"served while out of fds");
    // Free fds: the backlog is accepted and served.
    raise_fd_limit();
    let rest = wait_notes(&rx, 30 - first, |n| matches!(n, Note::Connected { .. }));
    assert_eq!(rest.len(), 30 - first);
    for (i, c) in clients.iter_mut().enumerate() {
        echo_once(c, &pattern(i, 32));
    }
}
