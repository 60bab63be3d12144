//! Baselines for the UDP comparison: a UDP echo server three ways, on one
//! thread. Not an example of how to use gaio.
//!
//! * `--mode oneshot`: a blocking `recvfrom` / `sendto` loop, one datagram per
//!   system call each way;
//! * `--mode mmsg` (the default): blocking `recvmmsg` (`MSG_WAITFORONE`, up to
//!   64 datagrams) and one `sendmmsg` of the batch back: the floor of any
//!   design without GSO/GRO;
//! * `--mode tokio`: tokio's `UdpSocket` on a current-thread runtime.
//!
//! Run: `cargo run --release -p gaio-bench --bin bench-udp -- --mode mmsg`
//! Prints `listening on ADDR`, then echoes every datagram to its sender until
//! killed.

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
#[cfg(target_os = "linux")]
use std::os::fd::AsRawFd;

#[cfg(target_os = "linux")]
const BATCH: usize = 64;
const MAX: usize = 65_536;

fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:0".to_string();
    let mut mode = "mmsg".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            "--mode" => mode = args.next().expect("--mode oneshot|mmsg|tokio"),
            other => panic!("unknown argument {other}"),
        }
    }
    let addr: SocketAddr = listen.parse().expect("--listen takes IP:PORT");
    let sock = UdpSocket::bind(addr)?;
    println!("listening on {}", sock.local_addr()?);
    std::io::stdout().flush()?;
    match mode.as_str() {
        "oneshot" => oneshot(&sock),
        "mmsg" => mmsg(&sock),
        "tokio" => tokio_echo(sock),
        other => panic!("unknown mode {other}"),
    }
}

fn oneshot(sock: &UdpSocket) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX];
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        // A peer gone between the two calls is not the server's failure.
        let _ = sock.send_to(&buf[..n], from);
    }
}

/// recvmmsg/sendmmsg as Linux has them (the BSDs' differ in types; the bench
/// runs on Linux).
#[cfg(not(target_os = "linux"))]
fn mmsg(sock: &UdpSocket) -> std::io::Result<()> {
    oneshot(sock)
}

#[cfg(target_os = "linux")]
fn mmsg(sock: &UdpSocket) -> std::io::Result<()> {
    let fd = sock.as_raw_fd();
    let mut bufs = vec![0u8; BATCH * MAX];
    // SAFETY: all-zero sockaddr_storage, iovec and mmsghdr are valid values
    // (null pointers and zero lengths), overwritten below before any use.
    let mut addrs: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; BATCH];
    // SAFETY: as above.
    let mut iovs: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    // SAFETY: as above.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    loop {
        for i in 0..BATCH {
            iovs[i] = libc::iovec {
                iov_base: bufs[i * MAX..].as_mut_ptr().cast(),
                iov_len: MAX,
            };
            msgs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            msgs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            msgs[i].msg_hdr.msg_iov = &mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_len = 0;
        }
        // SAFETY: `msgs` holds BATCH headers, each naming a live iovec over a
        // distinct MAX-byte part of `bufs` and a live sockaddr_storage; all
        // outlive the call, and nothing else touches them during it.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = n as usize;
        for m in &mut msgs[..n] {
            // Send back exactly what came, to whom it came from.
            // SAFETY: msg_iov points at this header's own iovec (set above).
            unsafe { (*m.msg_hdr.msg_iov).iov_len = m.msg_len as usize };
        }
        let mut sent = 0;
        while sent < n {
            // SAFETY: the first `n` headers are as above, now with each iovec
            // cut to its datagram's length; all outlive the call.
            let k = unsafe { libc::sendmmsg(fd, msgs[sent..].as_mut_ptr(), (n - sent) as u32, 0) };
            if k <= 0 {
                // A send error skips that datagram (its sender sees a loss).
                sent += 1;
            } else {
                sent += k as usize;
            }
        }
    }
}

fn tokio_echo(sock: UdpSocket) -> std::io::Result<()> {
    sock.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let sock = tokio::net::UdpSocket::from_std(sock)?;
        let mut buf = vec![0u8; MAX];
        loop {
            let (n, from) = sock.recv_from(&mut buf).await?;
            let _ = sock.send_to(&buf[..n], from).await;
        }
    })
}
