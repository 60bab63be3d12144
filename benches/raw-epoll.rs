//! Baseline for `cargo xtask bench`: a minimal single-threaded edge-triggered
//! epoll echo loop written directly on libc — the practical floor of any epoll
//! design. Not an example of how to use gaio.
//!
//! Run: `cargo run --release -p gaio-bench --bin bench-raw-epoll -- --listen 127.0.0.1:7000`
//! Prints `listening on ADDR`, then echoes until killed. Per connection it keeps a
//! pending-output Vec that is empty (no heap) unless a write came up short.

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("bench-raw-epoll: the raw epoll baseline runs on Linux only");
    std::process::exit(1);
}

#[cfg(target_os = "linux")]
fn main() -> std::io::Result<()> {
    linux::main()
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io::Write;
    use std::net::TcpListener;
    use std::os::fd::{AsRawFd, RawFd};

    const LISTENER: u64 = u64::MAX;

    #[derive(Default)]
    struct Conn {
        /// Bytes read but not yet written back (only after a short write).
        pending: Vec<u8>,
        open: bool,
    }

    pub fn main() -> std::io::Result<()> {
        let mut listen = "127.0.0.1:0".to_string();
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--listen" => listen = args.next().expect("--listen ADDR"),
                other => panic!("unknown argument {other}"),
            }
        }
        let listener = TcpListener::bind(&listen)?;
        listener.set_nonblocking(true)?;
        // SAFETY: listen on our own listening fd; Linux accepts a new backlog this way.
        // The same 4096 as every other server in the bench (std's default is 128).
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 4096) }, 0);
        println!("listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;

        // SAFETY: plain syscalls on fds this function owns; buffers are live locals
        // of the lengths passed.
        unsafe {
            let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            assert!(ep >= 0);
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLET) as u32,
                u64: LISTENER,
            };
            assert_eq!(
                libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, listener.as_raw_fd(), &mut ev),
                0
            );
            let mut conns: Vec<Conn> = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut events: Vec<libc::epoll_event> =
                vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
            loop {
                let n = libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1);
                if n < 0 {
                    continue; // EINTR
                }
                for ev in &events[..n as usize] {
                    let token = ev.u64;
                    if token == LISTENER {
                        loop {
                            let fd = libc::accept4(
                                listener.as_raw_fd(),
                                std::ptr::null_mut(),
                                std::ptr::null_mut(),
                                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                            );
                            if fd < 0 {
                                break;
                            }
                            let one: libc::c_int = 1;
                            libc::setsockopt(
                                fd,
                                libc::IPPROTO_TCP,
                                libc::TCP_NODELAY,
                                (&one as *const libc::c_int).cast(),
                                4,
                            );
                            let mut ev = libc::epoll_event {
                                events: (libc::EPOLLIN
                                    | libc::EPOLLOUT
                                    | libc::EPOLLRDHUP
                                    | libc::EPOLLET) as u32,
                                u64: fd as u64,
                            };
                            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev);
                            if conns.len() <= fd as usize {
                                conns.resize_with(fd as usize + 1, Conn::default);
                            }
                            conns[fd as usize].open = true;
                        }
                        continue;
                    }
                    let fd = token as RawFd;
                    serve(fd, &mut conns[fd as usize], &mut buf);
                }
            }
        }
    }

    /// Flushes pending output, then echoes until the socket is drained.
    fn serve(fd: RawFd, c: &mut Conn, buf: &mut [u8]) {
        if !c.open {
            return;
        }
        // SAFETY: fd is open (c.open) and owned by this loop; the buffers passed are
        // live and of the lengths given.
        unsafe {
            if !c.pending.is_empty() {
                let w = libc::send(
                    fd,
                    c.pending.as_ptr().cast(),
                    c.pending.len(),
                    libc::MSG_NOSIGNAL,
                );
                if w < 0 {
                    return close(fd, c);
                }
                c.pending.drain(..w as usize);
                if !c.pending.is_empty() {
                    return; // wait for the next writable edge
                }
            }
            loop {
                let r = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                if r == 0 {
                    return close(fd, c);
                }
                if r < 0 {
                    if *libc::__errno_location() == libc::EAGAIN {
                        return;
                    }
                    return close(fd, c);
                }
                let r = r as usize;
                let w = libc::send(fd, buf.as_ptr().cast(), r, libc::MSG_NOSIGNAL);
                if w < 0 && *libc::__errno_location() != libc::EAGAIN {
                    return close(fd, c);
                }
                let w = w.max(0) as usize;
                if w < r {
                    c.pending.extend_from_slice(&buf[w..r]);
                    return;
                }
                if r < buf.len() {
                    return; // short read: drained (Linux), the next data is a new edge
                }
            }
        }
    }

    fn close(fd: RawFd, c: &mut Conn) {
        c.open = false;
        c.pending = Vec::new();
        // SAFETY: fd is open and owned by this loop; closing removes it from epoll.
        unsafe { libc::close(fd) };
    }
}
