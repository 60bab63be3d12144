//! Model-based test of gaio-tls: random sequences of plaintext requests on
//! both ends of a TLS pair (one watcher, gaio-tls server and client) — reads
//! into the swap buffer, owned and `read_full` buffers, with and without
//! deadlines; writes of owned and shared buffers; shutdown, close, free; and
//! turns of the watcher — checked against what each request may complete with:
//!
//! * every accepted request completes exactly once, and every one completes
//!   once both ends are freed;
//! * the plaintext each end reads is a prefix of what the other end wrote, in
//!   order (whatever failed);
//! * no panic, whatever the order.
//!
//! Fixed seed and case count (`GAIO_TLS_MODEL_CASES`, default 96), so CI is
//! repeatable.

mod util;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use gaio_core::{Conn, Op, Requests, Watcher};
use gaio_testkit::{PATIENCE, pattern, tcp_pair};
use gaio_tls::rustls::{ClientConfig, ServerConfig};
use gaio_tls::{Ctx, Tls};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

#[derive(Debug, Clone)]
enum Read {
    Swap,
    Owned(usize),
    Full(usize),
}

#[derive(Debug, Clone)]
enum Step {
    Write {
        side: usize,
        len: usize,
        shared: bool,
    },
    Read {
        side: usize,
        how: Read,
        deadline_ms: Option<u64>,
    },
    Shutdown(usize),
    Close(usize),
    Free(usize),
    Turns(usize),
}

fn step() -> impl Strategy<Value = Step> {
    let side = 0..2usize;
    prop_oneof![
        6 => (side.clone(), 1..40_000usize, any::<bool>())
            .prop_map(|(side, len, shared)| Step::Write { side, len, shared }),
        6 => (
            side.clone(),
            prop_oneof![
                Just(Read::Swap),
                (1..20_000usize).prop_map(Read::Owned),
                (1..20_000usize).prop_map(Read::Full)
            ],
            prop::option::weighted(0.25, 1..30u64),
        )
            .prop_map(|(side, how, deadline_ms)| Step::Read { side, how, deadline_ms }),
        1 => side.clone().prop_map(Step::Shutdown),
        1 => side.clone().prop_map(Step::Close),
        1 => side.prop_map(Step::Free),
        5 => (1..4usize).prop_map(Step::Turns),
    ]
}

fn configs() -> &'static (Arc<ServerConfig>, Arc<ClientConfig>) {
    static C: OnceLock<(Arc<ServerConfig>, Arc<ClientConfig>)> = OnceLock::new();
    C.get_or_init(|| {
        let certs = util::Certs::new();
        (certs.server(), certs.client())
    })
}

/// The state of one case.
struct Case {
    w: Watcher<Ctx<u64>>,
    tls: Tls<u64>,
    conns: [Conn; 2],
    /// Accepted requests not yet completed: id → what it was.
    pending: BTreeMap<u64, String>,
    next_id: u64,
    /// Everything each side wrote (accepted writes, in order).
    sent: [Vec<u8>; 2],
    /// Everything each side read (successful or partial reads, in order).
    got: [Vec<u8>; 2],
    freed: [bool; 2],
}

impl Case {
    fn new() -> Case {
        let (server, client) = configs();
        let (c, s) = tcp_pair();
        let mut w: Watcher<Ctx<u64>> = Watcher::new().unwrap();
        let tls = Tls::new();
        let sc = w.register(s).unwrap();
        let cc = w.register(c).unwrap();
        let mut case = Case {
            w,
            tls,
            conns: [sc, cc],
            pending: BTreeMap::new(),
            next_id: 0,
            sent: [Vec::new(), Vec::new()],
            got: [Vec::new(), Vec::new()],
            freed: [false; 2],
        };
        let (a, b) = (case.id("accept"), case.id("connect"));
        case.tls.accept(&case.w.local(), sc, server, a).unwrap();
        case.tls
            .connect(
                &case.w.local(),
                cc,
                client,
                "localhost".try_into().unwrap(),
                b,
            )
            .unwrap();
        case
    }

    fn id(&mut self, what: &str) -> u64 {
        self.next_id += 1;
        self.pending.insert(self.next_id, what.to_string());
        self.next_id
    }

    /// Makes the request; a refused one is forgotten (it must never complete).
    fn apply(&mut self, step: &Step) {
        let io = self.w.local();
        let t = self.tls.io(&io);
        let id = self.next_id + 1;
        let res = match step {
            Step::Write { side, len, shared } => {
                let data = pattern(id as usize, *len);
                let res = if *shared {
                    t.write(self.conns[*side], id, Arc::<[u8]>::from(&data[..]))
                } else {
                    t.write(self.conns[*side], id, data.clone())
                };
                if res.is_ok() {
                    self.sent[*side].extend_from_slice(&data);
                }
                res
            }
            Step::Read {
                side,
                how,
                deadline_ms,
            } => {
                let conn = self.conns[*side];
                let at = deadline_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
                match (how, at) {
                    (Read::Swap, None) => t.read(conn, id, None),
                    (Read::Swap, Some(d)) => t.read_deadline(conn, id, None, d),
                    (Read::Owned(n), None) => t.read(conn, id, Some(vec![0; *n])),
                    (Read::Owned(n), Some(d)) => t.read_deadline(conn, id, Some(vec![0; *n]), d),
                    (Read::Full(n), d) => t.read_full(conn, id, vec![0; *n], d),
                }
            }
            Step::Shutdown(side) => t.shutdown(self.conns[*side], id),
            Step::Close(side) => t.close(self.conns[*side], id, None),
            Step::Free(side) => {
                self.freed[*side] = true;
                let _ = t.free(self.conns[*side]);
                return;
            }
            Step::Turns(n) => {
                for _ in 0..*n {
                    self.turn(Duration::from_millis(5));
                }
                return;
            }
        };
        if res.is_ok() {
            self.id(&format!("{step:?}"));
        }
    }

    /// One `wait_io`, every completion checked.
    fn turn(&mut self, timeout: Duration) {
        let Case {
            w,
            tls,
            conns,
            pending,
            got,
            ..
        } = self;
        let batch = w.wait_io_timeout(timeout).unwrap();
        let io = batch.local();
        for res in batch {
            tls.complete(&io, res, |_, res| {
                assert!(
                    pending.remove(&res.ctx).is_some(),
                    "request {} completed twice or was never accepted: {:?} {:?}",
                    res.ctx,
                    res.op,
                    res.result
                );
                if res.op == Op::Read {
                    let side = if res.conn == conns[0] { 0 } else { 1 };
                    got[side].extend_from_slice(res.data());
                }
            });
        }
    }

    fn check_streams(&self) {
        for side in 0..2 {
            let (got, sent) = (&self.got[side], &self.sent[1 - side]);
            assert!(
                sent.starts_with(got),
                "side {side} read {} bytes that are not a prefix of the {} the other side wrote",
                got.len(),
                sent.len()
            );
        }
    }
}

fn run_case(steps: &[Step]) -> Result<(), TestCaseError> {
    let mut case = Case::new();
    for step in steps {
        case.apply(step);
        case.check_streams();
    }
    // Free both ends: everything accepted completes.
    for side in 0..2 {
        let io = case.w.local();
        let _ = case.tls.io(&io).free(case.conns[side]);
        case.freed[side] = true;
    }
    let end = Instant::now() + PATIENCE;
    while !case.pending.is_empty() {
        prop_assert!(Instant::now() < end, "never completed: {:?}", case.pending);
        case.turn(Duration::from_millis(20));
        case.check_streams();
    }
    // The sessions go once the watcher has handed back what they had in
    // flight (a ciphertext read, the layer's own close).
    while case.tls.sessions() > 0 {
        prop_assert!(
            Instant::now() < end,
            "{} sessions never went",
            case.tls.sessions()
        );
        case.turn(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn random_requests_on_a_tls_pair_complete_exactly_once_with_the_bytes_in_order() {
    let config = Config {
        cases: std::env::var("GAIO_TLS_MODEL_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(96),
        failure_persistence: None,
        max_shrink_iters: 512,
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let result = runner.run(&proptest::collection::vec(step(), 1..40), |steps| {
        run_case(&steps)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
