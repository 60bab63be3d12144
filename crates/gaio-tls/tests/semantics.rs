//! The core's promises over TLS, with gaio-tls on both ends of loopback pairs
//! on one watcher: exactly-once completion, order, requests made during the
//! handshake, read_full, deadlines, close_notify on close, half-close, free.
//! Each runs on the backend `GAIO_BACKEND` names (CI runs both).

mod util;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gaio_core::{Conn, Error, Op, Requests, Watcher};
use gaio_testkit::{PATIENCE, fd_count, pattern, tcp_pair};
use gaio_tls::{Ctx, Tls};
use util::Certs;

#[derive(Debug)]
struct Done {
    op: Op,
    ctx: u32,
    size: usize,
    result: Result<(), String>,
    data: Vec<u8>,
}

struct Pair {
    w: Watcher<Ctx<u32>>,
    tls: Tls<u32>,
    server: Conn,
    client: Conn,
}

/// A loopback pair, TLS started on both ends (handshake ctx 100 server, 200 client).
fn pair() -> Pair {
    let certs = Certs::new();
    let (c, s) = tcp_pair();
    let mut w: Watcher<Ctx<u32>> = Watcher::new().unwrap();
    let tls = Tls::new();
    let server = w.register(s).unwrap();
    let client = w.register(c).unwrap();
    tls.accept(&w.local(), server, &certs.server(), 100)
        .unwrap();
    tls.connect(
        &w.local(),
        client,
        &certs.client(),
        "localhost".try_into().unwrap(),
        200,
    )
    .unwrap();
    Pair {
        w,
        tls,
        server,
        client,
    }
}

impl Pair {
    /// Collects completions until `until` says stop (panics after `PATIENCE`).
    fn run(&mut self, mut until: impl FnMut(&[Done]) -> bool) -> Vec<Done> {
        let mut done = Vec::new();
        let end = Instant::now() + PATIENCE;
        while !until(&done) {
            assert!(Instant::now() < end, "timed out with {done:#?}");
            let batch = self.w.wait_io_timeout(Duration::from_millis(50)).unwrap();
            let io = batch.local();
            for res in batch {
                self.tls.complete(&io, res, |_, res| {
                    done.push(Done {
                        op: res.op,
                        ctx: res.ctx,
                        size: res.size,
                        result: res.result.as_ref().map(|_| ()).map_err(|e| e.to_string()),
                        data: res.data().to_vec(),
                    })
                });
            }
        }
        done
    }

    fn run_until_ctx(&mut self, ctxs: &[u32]) -> HashMap<u32, Done> {
        let done = self.run(|d| ctxs.iter().all(|c| d.iter().any(|x| x.ctx == *c)));
        let mut by = HashMap::new();
        for d in done {
            assert!(by.insert(d.ctx, d).is_none(), "a request completed twice");
        }
        by
    }
}

#[test]
fn requests_made_during_the_handshake_complete_in_order() {
    let mut p = pair();
    let io = p.w.local();
    let t = p.tls.io(&io);
    let shared: Arc<[u8]> = pattern(2, 30_000).into();
    t.write(p.client, 1, pattern(1, 5_000)).unwrap();
    t.write(p.client, 2, shared.clone()).unwrap();
    t.write(p.client, 3, pattern(3, 70_000)).unwrap();
    t.read_full(p.server, 4, vec![0; 105_000], None).unwrap();
    let by = p.run_until_ctx(&[100, 200, 1, 2, 3, 4]);
    assert_eq!((by[&100].op, &by[&100].result), (Op::Connect, &Ok(())));
    assert_eq!((by[&200].op, &by[&200].result), (Op::Connect, &Ok(())));
    assert_eq!(
        [by[&1].size, by[&2].size, by[&3].size],
        [5_000, 30_000, 70_000]
    );
    let mut want = pattern(1, 5_000);
    want.extend_from_slice(&shared);
    want.extend(pattern(3, 70_000));
    assert_eq!(by[&4].size, 105_000);
    assert!(by[&4].data == want, "bytes differ");
    let st = p.tls.stats();
    assert_eq!(
        (st.sessions, st.handshakes, st.resumed, st.failed),
        (2, 2, 0, 0)
    );
}

#[test]
fn close_sends_close_notify_after_the_writes_before_it() {
    let mut p = pair();
    let io = p.w.local();
    let t = p.tls.io(&io);
    t.write(p.server, 1, b"bye".to_vec()).unwrap();
    t.close(p.server, 2, None).unwrap();
    assert!(t.write(p.server, 3, b"late".to_vec()).is_err()); // refused at once
    t.read_full(p.client, 4, vec![0; 3], None).unwrap();
    t.read(p.client, 5, None).unwrap();
    let by = p.run_until_ctx(&[1, 2, 4, 5]);
    assert_eq!(by[&4].data, b"bye");
    assert_eq!((by[&5].size, &by[&5].result), (0, &Ok(())), "EOF");
    let notified = p.tls.got_close_notify(p.client);
    assert_eq!(notified, Some(true), "the EOF was a close_notify");
    assert_eq!((by[&2].op, &by[&2].result), (Op::Close, &Ok(())));
    // The server's session is gone with its connection.
    assert!(!p.tls.is_tls(p.server));
    assert_eq!(p.tls.sessions(), 1);
}

#[test]
fn shutdown_is_a_half_close() {
    let mut p = pair();
    let io = p.w.local();
    let t = p.tls.io(&io);
    t.shutdown(p.client, 1).unwrap();
    t.read(p.server, 2, None).unwrap();
    t.read(p.client, 4, None).unwrap();
    let by = p.run_until_ctx(&[1, 2]);
    assert_eq!((by[&1].op, &by[&1].result), (Op::Shutdown, &Ok(())));
    assert_eq!(
        (by[&2].size, &by[&2].result),
        (0, &Ok(())),
        "EOF at the server"
    );
    // The other way still works.
    let io = p.w.local();
    p.tls
        .io(&io)
        .write(p.server, 3, b"still here".to_vec())
        .unwrap();
    let by = p.run_until_ctx(&[3, 4]);
    assert_eq!(by[&4].data, b"still here");
}

/// Regression: a close after a shutdown was refused (the write side was
/// closed), so a proxy closing both ends of a finished pair failed.
#[test]
fn close_after_shutdown_closes_without_a_second_close_notify() {
    let mut p = pair();
    p.run_until_ctx(&[100, 200]);
    let io = p.w.local();
    let t = p.tls.io(&io);
    t.shutdown(p.server, 1).unwrap();
    t.close(p.server, 2, None).unwrap();
    t.read(p.client, 3, None).unwrap();
    let by = p.run_until_ctx(&[1, 2, 3]);
    assert_eq!((by[&1].op, &by[&1].result), (Op::Shutdown, &Ok(())));
    assert_eq!((by[&2].op, &by[&2].result), (Op::Close, &Ok(())));
    assert_eq!((by[&3].size, &by[&3].result), (0, &Ok(())));
    assert_eq!(p.tls.got_close_notify(p.client), Some(true));
    // And the same made during the handshake, kept until it ends.
    let mut p = pair();
    let io = p.w.local();
    let t = p.tls.io(&io);
    t.write(p.server, 1, b"last".to_vec()).unwrap();
    t.shutdown(p.server, 2).unwrap();
    t.close(p.server, 3, None).unwrap();
    t.read_full(p.client, 4, vec![0; 4], None).unwrap();
    let by = p.run_until_ctx(&[1, 2, 3, 4]);
    for ctx in [1, 2, 3, 4] {
        assert_eq!(by[&ctx].result, Ok(()), "{ctx}");
    }
    assert_eq!(by[&4].data, b"last");
}

#[test]
fn a_read_deadline_completes_once_and_the_next_read_gets_the_bytes() {
    let mut p = pair();
    p.run_until_ctx(&[100, 200]);
    let io = p.w.local();
    let t = p.tls.io(&io);
    t.read_timeout(p.server, 1, None, Duration::from_millis(50))
        .unwrap();
    let by = p.run_until_ctx(&[1]);
    assert_eq!(by[&1].result, Err(Error::Deadline.to_string()));
    let io = p.w.local();
    let t = p.tls.io(&io);
    t.read(p.server, 2, None).unwrap();
    t.write(p.client, 3, b"late".to_vec()).unwrap();
    let by = p.run_until_ctx(&[2, 3]);
    assert_eq!(by[&2].data, b"late");
}

#[test]
fn plaintext_no_read_took_waits_for_the_next_read() {
    let mut p = pair();
    let io = p.w.local();
    let t = p.tls.io(&io);
    t.write(p.client, 1, pattern(7, 3000)).unwrap();
    t.read(p.server, 2, Some(vec![0; 1000])).unwrap();
    let by = p.run_until_ctx(&[1, 2]);
    assert_eq!(by[&2].data, pattern(7, 3000)[..1000]);
    // The other 2,000 bytes are held; a read takes them with no more traffic.
    let io = p.w.local();
    p.tls.io(&io).read(p.server, 3, None).unwrap();
    let by = p.run_until_ctx(&[3]);
    assert_eq!(by[&3].data, pattern(7, 3000)[1000..]);
}

#[test]
fn free_completes_every_waiting_request_exactly_once() {
    let fds = fd_count();
    let mut p = pair();
    let io = p.w.local();
    let t = p.tls.io(&io);
    // All made before the handshake could finish.
    t.write(p.client, 1, b"never".to_vec()).unwrap();
    t.read(p.client, 2, None).unwrap();
    t.shutdown(p.client, 3).unwrap();
    t.free(p.client).unwrap();
    t.read(p.server, 4, None).unwrap();
    let by = p.run_until_ctx(&[200, 1, 2, 3, 4, 100]);
    for ctx in [200, 1, 2, 3] {
        assert!(by[&ctx].result.is_err(), "{ctx}: {:?}", by[&ctx]);
    }
    assert!(
        by[&100].result.is_err(),
        "the server's handshake fails (EOF)"
    );
    assert!(by[&4].result.is_err());
    assert_eq!(p.tls.sessions(), 1, "the client's session is gone");
    assert_eq!((p.tls.stats().handshakes, p.tls.stats().failed), (0, 2));
    let io = p.w.local();
    p.tls.io(&io).free(p.server).unwrap_or(());
    let _ = p.run(|_| true);
    assert_eq!(p.tls.sessions(), 0);
    drop(p);
    assert_eq!(fd_count(), fds);
}

#[test]
fn a_write_on_a_plain_connection_passes_through() {
    let (c, s) = tcp_pair();
    let mut w: Watcher<Ctx<u32>> = Watcher::new().unwrap();
    let tls: Tls<u32> = Tls::new();
    let conn = w.register(s).unwrap();
    let io = w.local();
    tls.io(&io).write(conn, 1, b"plain".to_vec()).unwrap();
    let res = w.wait_io_timeout(PATIENCE).unwrap().next().unwrap();
    assert!(matches!(res.ctx, Ctx::App(1)));
    let mut got = [0; 5];
    std::io::Read::read_exact(&mut &c, &mut got).unwrap();
    assert_eq!(&got, b"plain");
}

/// Regression: after a read with a deadline expired while an earlier read
/// without one stayed in flight, a later read's deadline was never armed.
#[test]
fn every_read_deadline_is_kept_while_other_reads_wait() {
    let mut p = pair();
    p.run_until_ctx(&[100, 200]);
    let io = p.w.local();
    let t = p.tls.io(&io);
    t.read(p.server, 1, None).unwrap();
    t.read_timeout(p.server, 2, None, Duration::from_millis(20))
        .unwrap();
    let by = p.run_until_ctx(&[2]);
    assert_eq!(by[&2].result, Err(Error::Deadline.to_string()));
    let io = p.w.local();
    p.tls
        .io(&io)
        .read_timeout(p.server, 3, None, Duration::from_millis(40))
        .unwrap();
    let by = p.run_until_ctx(&[3]);
    assert_eq!(by[&3].result, Err(Error::Deadline.to_string()));
}

/// Regression: a callback that reads again on EOF was handed EOF again inside
/// the same call, forever; now each EOF comes with a batch, as on a watcher.
#[test]
fn a_read_again_on_eof_gets_its_eof_at_the_next_batch() {
    let mut p = pair();
    p.run_until_ctx(&[100, 200]);
    let io = p.w.local();
    let t = p.tls.io(&io);
    t.close(p.client, 1, None).unwrap();
    t.read(p.server, 2, None).unwrap();
    let (server, tls) = (p.server, &p.tls);
    let mut eofs = 0;
    let end = Instant::now() + PATIENCE;
    while eofs < 5 {
        assert!(Instant::now() < end);
        let batch = p.w.wait_io_timeout(Duration::from_millis(50)).unwrap();
        let io = batch.local();
        let mut this_batch = 0;
        for res in batch {
            tls.complete(&io, res, |tio, res| {
                if res.op == Op::Read && res.conn == server && res.is_eof() {
                    this_batch += 1;
                    eofs += 1;
                    if eofs < 5 {
                        tio.read(server, 2, None).unwrap();
                    }
                }
            });
        }
        assert!(this_batch <= 1, "{this_batch} EOFs in one batch");
    }
}

/// Regression: a shutdown and a close made during the handshake completed
/// together at the shutdown's completion, the close with the shutdown's result.
#[test]
fn shutdown_and_close_during_the_handshake_complete_each_with_its_own_result() {
    let mut p = pair();
    let io = p.w.local();
    let t = p.tls.io(&io);
    t.shutdown(p.server, 1).unwrap();
    // Due before the handshake can end: it completes with Deadline, and the
    // connection is closed anyway.
    t.close(p.server, 2, Some(Instant::now())).unwrap();
    t.read(p.client, 3, None).unwrap();
    let by = p.run_until_ctx(&[1, 2, 3, 100]);
    // The close's deadline passed first: it closed the connection, so the
    // shutdown queued before it ends with ConnClosed (as on a watcher).
    let closed = Err(Error::ConnClosed.to_string());
    assert_eq!((by[&1].op, &by[&1].result), (Op::Shutdown, &closed));
    assert_eq!(
        (by[&2].op, &by[&2].result),
        (Op::Close, &Err(Error::Deadline.to_string()))
    );
    assert_eq!(by[&3].size, 0, "EOF at the client");
}
