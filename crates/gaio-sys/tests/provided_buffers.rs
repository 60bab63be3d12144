//! `uring::Buffers` registered on a ring of the test's own: a kept buffer
//! (`take`) is not lent again by `recycle` until `give_back`, and bad settings
//! are refused before the kernel is asked.
#![cfg(target_os = "linux")]

use std::io::{self, Write};
use std::os::fd::AsRawFd;

use gaio_sys::uring::Buffers;
use io_uring::types::Fd;
use io_uring::{IoUring, cqueue, opcode, squeue};

const GROUP: u16 = 7;

/// A ring, or `None` (the test passes vacuously) where io_uring is missing or
/// forbidden here.
fn ring() -> Option<IoUring> {
    match IoUring::new(8) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("skipped: io_uring unavailable: {e}");
            None
        }
    }
}

/// One receive on `fd` into a buffer of `GROUP`: its result and buffer id.
fn recv(ring: &mut IoUring, fd: i32, len: u32) -> (i32, Option<u16>) {
    let sqe = opcode::Recv::new(Fd(fd), std::ptr::null_mut(), len)
        .buf_group(GROUP)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT)
        .user_data(1);
    // SAFETY: the receive names no memory of ours: the kernel picks a buffer
    // of the registered group, which outlives the operation (it completes
    // before this function returns).
    unsafe { ring.submission().push(&sqe) }.expect("room in the queue");
    ring.submit_and_wait(1).unwrap();
    let c = ring.completion().next().expect("a completion");
    (c.result(), cqueue::buffer_select(c.flags()))
}

#[test]
fn kept_buffer_is_lent_again_only_after_give_back() {
    let Some(mut ring) = ring() else { return };
    // SAFETY: every receive below completes before `bufs` is dropped, and none
    // is submitted after.
    let bufs = unsafe { Buffers::register(&ring.submitter(), GROUP, 1, 64) };
    let mut bufs = match bufs {
        Ok(b) => b,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            eprintln!("skipped: no provided-buffer rings: {e}");
            return;
        }
        Err(e) => panic!("register: {e}"),
    };
    assert_eq!((bufs.count(), bufs.buffer_len()), (1, 64));
    let (mut client, server) = gaio_testkit::tcp_pair();
    let fd = server.as_raw_fd();

    client.write_all(b"first").unwrap();
    let (n, bid) = recv(&mut ring, fd, 64);
    assert_eq!(n, 5);
    let bid = bid.expect("a receive with data names its buffer");
    bufs.take(bid);
    assert_eq!(bufs.bytes(bid, 5), b"first");
    assert!(!bufs.recycle(), "a kept buffer is not lent again");

    // The one buffer is kept: the kernel has none to receive into.
    client.write_all(b"second").unwrap();
    assert_eq!(recv(&mut ring, fd, 64), (-libc::ENOBUFS, None));
    assert_eq!(bufs.bytes(bid, 5), b"first", "the kernel left it alone");

    bufs.give_back(bid);
    assert_eq!(bufs.returned(), 1);
    assert_eq!(bufs.bytes(bid, 5), b"first", "readable until recycled");
    assert!(bufs.recycle());
    let (n, again) = recv(&mut ring, fd, 64);
    assert_eq!((n, again), (6, Some(bid)));
    bufs.filled(bid);
    assert_eq!(bufs.bytes(bid, 6), b"second");
    bufs.give_back(bid); // not kept: nothing happens
    assert_eq!(bufs.returned(), 1);
}

#[test]
fn bad_settings_are_refused_without_an_os_error() {
    let Some(ring) = ring() else { return };
    for (count, len) in [(3, 64), (0, 64), (4, 0)] {
        // SAFETY: refused before registering, so the kernel never sees them.
        let e = unsafe { Buffers::register(&ring.submitter(), GROUP, count, len) }.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{count} × {len}");
        assert_eq!(e.raw_os_error(), None);
    }
}
