//! Builder settings: CPU pinning, busy polling, swap size; and the stats snapshot.

mod util;

use std::io::{Read, Write};
use std::time::Duration;

use gaio_core::{Error, Op, Requests, Watcher};
use util::*;

#[test]
fn missing_cpu_is_invalid_cpu() {
    let _serial = serial();
    let err = Watcher::<()>::builder().cpu(100_000).build().unwrap_err();
    assert!(matches!(err, Error::InvalidCpu(100_000)), "{err:?}");
}

#[test]
fn watcher_pins_the_thread_that_drives_it() {
    let _serial = serial();
    let core = *gaio_sys::current_thread_affinity().unwrap().last().unwrap();
    let mut w: Watcher<()> = Watcher::builder().cpu(core).build().unwrap();
    std::thread::spawn(move || {
        let _ = w.wait_io_timeout(Duration::ZERO).unwrap().count();
        assert_eq!(gaio_sys::current_thread_affinity().unwrap(), vec![core]);
    })
    .join()
    .unwrap();
}

#[test]
fn zero_swap_buffer_is_refused() {
    let _serial = serial();
    assert!(matches!(
        Watcher::<()>::builder().swap_buffer(0).build(),
        Err(Error::Io(_))
    ));
}

#[test]
fn busy_poll_echo_works() {
    let _serial = serial();
    let (mut c, s) = tcp_pair();
    let mut w: Watcher<()> = Watcher::builder()
        .busy_poll(Some(Duration::from_micros(200)))
        .build()
        .unwrap();
    let tx = w.submitter();
    let conn = w.register(s).unwrap();
    for i in 0..50 {
        tx.read(conn, (), None).unwrap();
        let msg = pattern(i, 64);
        c.write_all(&msg).unwrap();
        let d = one(&mut w);
        assert_eq!(d.data, msg);
    }
    let mut buf = [0u8; 1];
    tx.write(conn, (), b"!".to_vec()).unwrap();
    assert_eq!(one(&mut w).op, Op::Write);
    c.read_exact(&mut buf).unwrap();
}

#[test]
fn stats_track_conns_requests_and_syscalls() {
    let _serial = serial();
    let (mut c, s) = tcp_pair();
    let mut w: Watcher<()> = Watcher::new().unwrap();
    let tx = w.submitter();
    assert_eq!(w.stats().conns, 0);
    let conn = w.register(s).unwrap();
    tx.read(conn, (), None).unwrap();
    tx.read(conn, (), None).unwrap();
    tx.read_deadline(
        conn,
        (),
        None,
        std::time::Instant::now() + Duration::from_secs(60),
    )
    .unwrap();
    let _ = w.wait_io_timeout(Duration::ZERO).unwrap().count();
    let st = w.stats();
    assert_eq!(
        (st.conns, st.pending_reads, st.pending_writes, st.timers),
        (1, 3, 0, 1)
    );
    let before = st.syscalls;
    c.write_all(b"a").unwrap();
    let _ = collect(&mut w, 1);
    let st = w.stats();
    assert_eq!(st.pending_reads, 2);
    assert!(st.syscalls > before);
    assert_eq!(st.completions, 1);
    w.free(conn).unwrap();
    let _ = collect(&mut w, 2);
    let st = w.stats();
    assert_eq!(
        (st.conns, st.pending_reads, st.timers, st.completions),
        (0, 0, 0, 3)
    );
}
