//! The swap buffer: shared by a batch, bounded, and nothing lost when it fills.

mod util;

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use gaio_core::{Buffer, Requests, Watcher};
use util::*;

#[test]
fn full_swap_buffer_defers_reads_without_losing_bytes() {
    let _serial = serial();
    let pairs = tcp_pairs(20);
    let mut w: Watcher<usize> = Watcher::builder().swap_buffer(4096).build().unwrap();
    let tx = w.submitter();
    let mut conns = HashMap::new();
    let mut clients = Vec::new();
    for (i, (mut c, s)) in pairs.into_iter().enumerate() {
        c.write_all(&pattern(i, 3000)).unwrap();
        let conn = w.register(s).unwrap();
        tx.read(conn, i, None).unwrap();
        conns.insert(i, conn);
        clients.push(c);
    }
    let mut got: HashMap<usize, Vec<u8>> = HashMap::new();
    let end = Instant::now() + PATIENCE;
    let mut batches = 0;
    while got.values().map(Vec::len).sum::<usize>() < 20 * 3000 {
        assert!(Instant::now() < end, "swap reads starved");
        let mut in_batch = 0;
        for res in w.wait_io_timeout(Duration::from_millis(200)).unwrap() {
            assert!(res.result.is_ok());
            assert!(matches!(res.buffer, Buffer::Swap(_)));
            in_batch += res.size;
            got.entry(res.ctx)
                .or_default()
                .extend_from_slice(res.data());
            if got[&res.ctx].len() < 3000 {
                tx.read(res.conn, res.ctx, None).unwrap();
            }
        }
        assert!(
            in_batch <= 4096,
            "one batch used {in_batch} bytes of a 4096-byte swap buffer"
        );
        batches += 1;
    }
    assert!(
        batches >= 15,
        "60,000 bytes cannot pass a 4 KiB swap buffer in {batches} batches"
    );
    for (i, data) in got {
        assert!(
            data == pattern(i, 3000),
            "conn {i}: bytes lost or reordered"
        );
    }
}

/// The swap bytes of one batch are distinct regions: a later read in the batch
/// never overwrites an earlier one's bytes.
#[test]
fn swap_slices_in_one_batch_do_not_overlap() {
    let _serial = serial();
    let pairs = tcp_pairs(8);
    let mut w: Watcher<usize> = Watcher::new().unwrap();
    let tx = w.submitter();
    let mut clients = Vec::new();
    for (i, (mut c, s)) in pairs.into_iter().enumerate() {
        c.write_all(&pattern(100 + i, 500)).unwrap();
        let conn = w.register(s).unwrap();
        tx.read(conn, i, None).unwrap();
        clients.push(c);
    }
    let mut seen = 0;
    let end = Instant::now() + PATIENCE;
    while seen < 8 {
        assert!(Instant::now() < end);
        let batch: Vec<_> = w
            .wait_io_timeout(Duration::from_millis(200))
            .unwrap()
            .collect();
        for res in &batch {
            // Checked after the whole batch ran: every slice still holds its bytes.
            assert!(res.data() == &pattern(100 + res.ctx, 500)[..res.size]);
            if res.size < 500 {
                panic!("loopback delivered a 500-byte write in pieces; test assumption broken");
            }
        }
        seen += batch.len();
    }
}
