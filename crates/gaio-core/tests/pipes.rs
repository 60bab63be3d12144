//! Unix stream sockets and pipes are streams too.

mod util;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use gaio_core::{Error, Op, Requests, Watcher};
use util::*;

#[test]
fn unix_stream_round_trip() {
    let _serial = serial();
    let (mut peer, ours) = UnixStream::pair().unwrap();
    let mut w: Watcher<()> = Watcher::new().unwrap();
    let tx = w.submitter();
    let conn = w.register(ours).unwrap();
    tx.write(conn, (), pattern(1, 300_000)).unwrap();
    tx.read_full(conn, (), vec![0; 5], None).unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0; 300_000];
        peer.read_exact(&mut got).unwrap();
        peer.write_all(b"hello").unwrap();
        got
    });
    let done = collect(&mut w, 2);
    assert!(done.iter().all(|d| d.result.is_ok()));
    assert_eq!(
        done.iter().find(|d| d.op == Op::Read).unwrap().data,
        b"hello"
    );
    assert!(reader.join().unwrap() == pattern(1, 300_000));
}

#[test]
fn pipe_round_trip_and_eof() {
    let _serial = serial();
    let (r, wr) = std::io::pipe().unwrap();
    let mut w: Watcher<&str> = Watcher::new().unwrap();
    let tx = w.submitter();
    let rc = w.register(r).unwrap();
    let wc = w.register(wr).unwrap();
    // Larger than a pipe's 64 KiB buffer: the write must wait for the reader.
    let data = pattern(2, 200_000);
    tx.write(wc, "write", data.clone()).unwrap();
    tx.read_full(rc, "read", vec![0; data.len()], None).unwrap();
    let done = collect(&mut w, 2);
    assert!(done.iter().all(|d| d.result.is_ok()), "{done:?}");
    assert!(done.iter().find(|d| d.ctx == "read").unwrap().data == data);
    // Closing the write end is EOF for the reader.
    w.free(wc).unwrap();
    tx.read(rc, "eof", None).unwrap();
    let d = one(&mut w);
    assert!(d.result.is_ok() && d.size == 0);
}

#[test]
fn pipe_write_to_closed_reader_is_an_error() {
    let _serial = serial();
    let (r, wr) = std::io::pipe().unwrap();
    drop(r);
    let mut w: Watcher<()> = Watcher::new().unwrap();
    let tx = w.submitter();
    let wc = w.register(wr).unwrap();
    tx.write(wc, (), vec![1; 10]).unwrap();
    let d = one(&mut w);
    match d.result {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe),
        other => panic!("{other:?}"),
    }
}
