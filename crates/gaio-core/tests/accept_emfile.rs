//! Running out of fds at accept backs off instead of spinning, and accepting
//! resumes when fds free up. Alone in its binary: it lowers RLIMIT_NOFILE.

mod util;

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use gaio_core::{Op, Requests, Watcher};
use util::*;

#[test]
fn accept_out_of_fds_backs_off_then_resumes() {
    let _serial = serial();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut w: Watcher<()> = Watcher::new().unwrap();
    let l = w.register(listener).unwrap();
    let _client = TcpStream::connect(addr).unwrap();
    let before = raise_fd_limit();
    // No fd left for the accepted socket: the limit is on fd numbers, so set it
    // to the lowest free one.
    let lowest_free = std::fs::File::open("/dev/null").unwrap().as_raw_fd();
    gaio_testkit::set_fd_limit(lowest_free as u64);
    w.local().accept(l, ()).unwrap();
    let syscalls = w.stats().syscalls;
    // 300 ms of nothing to do but retry: a spinning accept loop would make
    // thousands of calls; the back-off (10, 20, 40, 80, 160 ms) makes a handful.
    let got: Vec<_> = w
        .wait_io_timeout(Duration::from_millis(300))
        .unwrap()
        .map(|c| (c.op, c.result))
        .collect();
    assert!(got.is_empty(), "nothing accepted without an fd: {got:?}");
    let spent = w.stats().syscalls - syscalls;
    assert!(spent < 50, "{spent} syscalls while out of fds");
    gaio_testkit::set_fd_limit(before);
    let d = one(&mut w);
    assert_eq!(d.op, Op::Accept);
    assert!(d.result.is_ok() && d.accepted.is_some(), "{:?}", d.result);
}
