//! Baseline for `cargo xtask bench`: a minimal single-threaded io_uring echo loop
//! — the floor an io_uring driver is measured against, beside the raw epoll loop.
//! Not an example of how to use gaio.
//!
//! Multishot accept; multishot receive into a ring of 4,096 provided buffers of
//! 4 KiB (the kernel picks one per receive, so an idle connection holds none;
//! gaio-sys's `Buffers`, registered on this loop's own ring); one send in
//! flight per connection, straight from the provided buffer when nothing else
//! is waiting (the buffer lent again once the send completes), else the bytes
//! queue in the connection's Vec;
//! `SINGLE_ISSUER` + `DEFER_TASKRUN` when the kernel has them. One
//! `io_uring_enter` per loop turn submits everything and waits for completions.
//!
//! Run: `cargo run --release -p gaio-bench --bin bench-raw-uring -- --listen 127.0.0.1:7000`
//! Prints `listening on ADDR`, then echoes until killed; exits 1 with a message
//! when io_uring is not available. `RAW_URING_PLAIN=1` makes a ring without
//! `SINGLE_ISSUER`/`DEFER_TASKRUN`, to see what they are worth.

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("bench-raw-uring: io_uring is Linux only");
    std::process::exit(1);
}

#[cfg(target_os = "linux")]
fn main() {
    if let Err(e) = linux::main() {
        eprintln!("bench-raw-uring: {e}");
        std::process::exit(1);
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io::Write;
    use std::mem::ManuallyDrop;
    use std::net::TcpListener;
    use std::os::fd::{AsRawFd, RawFd};

    use gaio_sys::uring::Buffers;
    use io_uring::types::Fd;
    use io_uring::{IoUring, cqueue, opcode, squeue};

    const BUFS: u16 = 4096;
    const BUF_LEN: u32 = 4096;
    const GROUP: u16 = 0;

    const ACCEPT: u64 = 1;
    const RECV: u64 = 2;
    const SEND: u64 = 3;

    /// user_data: what, the connection's fd, and its generation (so a late
    /// completion of a closed connection is told from its fd's next owner).
    fn tag(kind: u64, fd: RawFd, generation: u32) -> u64 {
        (kind << 56) | (u64::from(generation & 0x00ff_ffff) << 32) | fd as u32 as u64
    }

    fn untag(data: u64) -> (u64, RawFd, u32) {
        (
            data >> 56,
            data as u32 as RawFd,
            ((data >> 32) & 0x00ff_ffff) as u32,
        )
    }

    enum Sending {
        /// Straight from provided buffer `bid` (kept: `Buffers::take`, given
        /// back when the send completes), bytes `at..len`.
        Ring { bid: u16, at: usize, len: usize },
        /// From the connection's own bytes, `at..`.
        Owned { v: Vec<u8>, at: usize },
    }

    #[derive(Default)]
    struct Conn {
        generation: u32,
        open: bool,
        recv_armed: bool,
        /// Bytes received while a send was in flight.
        queued: Vec<u8>,
        sending: Option<Sending>,
        /// EOF or an error: close once nothing is in flight.
        done: bool,
    }

    struct Loop {
        ring: IoUring,
        /// Registered on `ring` as group `GROUP`; never dropped (see `main`).
        bufs: ManuallyDrop<Buffers>,
        conns: Vec<Conn>,
        /// Connections whose receive ended for want of buffers.
        starved: Vec<RawFd>,
    }

    impl Loop {
        fn push(&mut self, sqe: &squeue::Entry) {
            loop {
                // SAFETY: every buffer an SQE points at stays alive and unmoved
                // until its CQE: a provided buffer a send reads is kept
                // (`Buffers::take`) until that send's CQE and the buffers are
                // never freed; a connection's Vec in `Sending::Owned` is neither
                // touched nor dropped before the send's CQE (`on_send`).
                if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                    return;
                }
                self.ring.submit().expect("io_uring_enter");
            }
        }

        fn arm_recv(&mut self, fd: RawFd) {
            let c = &mut self.conns[fd as usize];
            c.recv_armed = true;
            let sqe = opcode::RecvMulti::new(Fd(fd), GROUP).build().user_data(tag(
                RECV,
                fd,
                c.generation,
            ));
            self.push(&sqe);
        }

        fn send(&mut self, fd: RawFd) {
            let c = &self.conns[fd as usize];
            let (ptr, len) = match &c.sending {
                // Kept (`take`) until this send's completion, so `recycle`
                // does not lend it to the kernel while the send reads it.
                Some(Sending::Ring { bid, at, len }) => {
                    (self.bufs.bytes(*bid, *len)[*at..].as_ptr(), len - at)
                }
                Some(Sending::Owned { v, at }) => (v[*at..].as_ptr(), v.len() - at),
                None => return,
            };
            let sqe = opcode::Send::new(Fd(fd), ptr, len as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(tag(SEND, fd, c.generation));
            self.push(&sqe);
        }

        fn maybe_close(&mut self, fd: RawFd) {
            let c = &mut self.conns[fd as usize];
            if c.open && c.done && !c.recv_armed && c.sending.is_none() {
                c.open = false;
                c.queued = Vec::new();
                // SAFETY: our own fd; nothing in flight refers to it any more.
                unsafe { libc::close(fd) };
            }
        }

        fn on_accept(&mut self, res: i32, more: bool, listener: RawFd) {
            if !more {
                let sqe = opcode::AcceptMulti::new(Fd(listener))
                    .build()
                    .user_data(tag(ACCEPT, listener, 0));
                self.push(&sqe);
            }
            if res < 0 {
                return;
            }
            let fd = res;
            let one: libc::c_int = 1;
            // SAFETY: setsockopt on the fd just accepted, with a live c_int.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&raw const one).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            if self.conns.len() <= fd as usize {
                self.conns.resize_with(fd as usize + 1, Conn::default);
            }
            let c = &mut self.conns[fd as usize];
            let generation = c.generation.wrapping_add(1);
            *c = Conn {
                generation,
                open: true,
                ..Conn::default()
            };
            self.arm_recv(fd);
        }

        fn on_recv(&mut self, fd: RawFd, res: i32, flags: u32) {
            let more = cqueue::more(flags);
            let bid = cqueue::buffer_select(flags);
            let c = &mut self.conns[fd as usize];
            if !more {
                c.recv_armed = false;
            }
            if res <= 0 {
                if let Some(bid) = bid {
                    self.bufs.filled(bid);
                }
                if res == -libc::ENOBUFS {
                    self.starved.push(fd); // re-armed once buffers come back
                } else {
                    c.done = true; // EOF or error
                    self.maybe_close(fd);
                }
                return;
            }
            let bid = bid.expect("a receive with data names its buffer");
            let len = res as usize;
            if c.sending.is_none() {
                self.bufs.take(bid);
                c.sending = Some(Sending::Ring { bid, at: 0, len });
                self.send(fd);
            } else {
                self.bufs.filled(bid);
                c.queued.extend_from_slice(self.bufs.bytes(bid, len));
            }
            if !more && !self.conns[fd as usize].done {
                self.arm_recv(fd);
            }
        }

        fn on_send(&mut self, fd: RawFd, res: i32) {
            let c = &mut self.conns[fd as usize];
            if res < 0 {
                if let Some(Sending::Ring { bid, .. }) = c.sending.take() {
                    self.bufs.give_back(bid);
                }
                c.done = true;
                self.maybe_close(fd);
                return;
            }
            let n = res as usize;
            let finished = match c.sending.as_mut() {
                Some(Sending::Ring { at, len, .. }) => {
                    *at += n;
                    at == len
                }
                Some(Sending::Owned { v, at }) => {
                    *at += n;
                    *at == v.len()
                }
                None => true,
            };
            if !finished {
                self.send(fd);
                return;
            }
            match c.sending.take() {
                Some(Sending::Ring { bid, .. }) => self.bufs.give_back(bid),
                Some(Sending::Owned { mut v, .. }) => {
                    // Keep the allocation for the next backlog.
                    v.clear();
                    if c.queued.is_empty() {
                        c.queued = v;
                    }
                }
                None => {}
            }
            if !c.queued.is_empty() && !c.done {
                let v = std::mem::take(&mut c.queued);
                c.sending = Some(Sending::Owned { v, at: 0 });
                self.send(fd);
            } else {
                self.maybe_close(fd);
            }
        }
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
        // SAFETY: listen on our own listening fd; Linux accepts a new backlog this way.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 4096) }, 0);

        // SINGLE_ISSUER + DEFER_TASKRUN (6.1+), else a plain ring.
        let plain = std::env::var_os("RAW_URING_PLAIN").is_some();
        let ring = if plain {
            IoUring::builder().setup_cqsize(16 * 1024).build(4096)?
        } else {
            IoUring::builder()
                .setup_single_issuer()
                .setup_defer_taskrun()
                .setup_cqsize(16 * 1024)
                .build(4096)
                .or_else(|_| IoUring::builder().setup_cqsize(16 * 1024).build(4096))?
        };
        // SAFETY: the buffers are never dropped (`ManuallyDrop`, and the loop
        // ends only when the process does), so the kernel can never write
        // into them after they are freed.
        let bufs = ManuallyDrop::new(unsafe {
            Buffers::register(&ring.submitter(), GROUP, BUFS, BUF_LEN)?
        });
        println!("listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;

        let lfd = listener.as_raw_fd();
        let mut lp = Loop {
            ring,
            bufs,
            conns: Vec::new(),
            starved: Vec::new(),
        };
        let sqe = opcode::AcceptMulti::new(Fd(lfd))
            .build()
            .user_data(tag(ACCEPT, lfd, 0));
        lp.push(&sqe);
        let mut done: Vec<(u64, i32, u32)> = Vec::with_capacity(16 * 1024);
        loop {
            match lp.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            done.extend(
                lp.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(data, res, flags) in &done {
                let (kind, fd, generation) = untag(data);
                if kind == ACCEPT {
                    lp.on_accept(res, cqueue::more(flags), lfd);
                    continue;
                }
                let live = lp
                    .conns
                    .get(fd as usize)
                    .is_some_and(|c| c.open && c.generation & 0x00ff_ffff == generation);
                if !live {
                    // A late completion of a closed connection: only its buffer matters.
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        lp.bufs.filled(bid);
                    }
                    continue;
                }
                match kind {
                    RECV => lp.on_recv(fd, res, flags),
                    SEND => lp.on_send(fd, res),
                    _ => unreachable!("unknown completion {data:#x}"),
                }
            }
            done.clear();
            if lp.bufs.recycle() {
                for fd in std::mem::take(&mut lp.starved) {
                    let c = &lp.conns[fd as usize];
                    if c.open && !c.recv_armed && !c.done {
                        lp.arm_recv(fd);
                    }
                }
            }
        }
    }
}
