//! Which watcher gets each connection: built-in balancers, a custom one, swapping
//! at run time, SO_REUSEPORT.

mod util;

use std::collections::HashMap;
use std::sync::mpsc::channel;

use gaio_pool::{BalancerKind, Pool};
use util::*;

#[test]
fn round_robin_spreads_1000_conns_evenly() {
    let _serial = serial();
    let (tx, rx) = channel();
    let pool = echo_pool(Pool::builder().watchers(4).pin(false), tx);
    let addr = pool.listen("127.0.0.1:0").unwrap();
    let clients: Vec<_> = (0..1000)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let notes = wait_notes(&rx, 1000, |n| matches!(n, Note::Connected { .. }));
    let mut per = [0usize; 4];
    for n in notes {
        if let Note::Connected { watcher, .. } = n {
            per[watcher] += 1;
        }
    }
    let (min, max) = (per.iter().min().unwrap(), per.iter().max().unwrap());
    assert!(max - min <= 1, "round-robin spread {per:?}");
    let stats = pool.stats().watchers;
    assert_eq!(stats.iter().map(|s| s.accepts).sum::<u64>(), 1000);
    assert_eq!(stats.iter().map(|s| s.conns).sum::<usize>(), 1000);
    drop(clients);
}

#[test]
fn least_connections_fills_the_emptiest_watcher() {
    let _serial = serial();
    let (tx, rx) = channel();
    let pool = echo_pool(
        Pool::builder()
            .watchers(2)
            .pin(false)
            .balancer(BalancerKind::LeastConnections),
        tx,
    );
    let addr = pool.listen("127.0.0.1:0").unwrap();
    let mut on: [Vec<std::net::TcpStream>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..10 {
        let (c, w) = connect_one(addr, &rx);
        on[w].push(c);
    }
    assert_eq!((on[0].len(), on[1].len()), (5, 5));
    // Close four on watcher 0 and wait until it has freed them.
    on[0].truncate(1);
    wait_notes(&rx, 4, |n| *n == Note::Closed { watcher: 0 });
    let mut landed = Vec::new();
    for _ in 0..4 {
        let (c, w) = connect_one(addr, &rx);
        landed.push(w);
        on[w].push(c);
    }
    assert_eq!(
        landed,
        vec![0, 0, 0, 0],
        "new conns go to the emptier watcher"
    );
    for c in on.iter_mut().flatten() {
        echo_once(c, b"still served");
    }
}

#[test]
fn source_hash_keeps_one_ip_on_one_watcher() {
    let _serial = serial();
    let (tx, rx) = channel();
    let pool = echo_pool(
        Pool::builder()
            .watchers(3)
            .pin(false)
            .balancer(BalancerKind::SourceHash),
        tx,
    );
    let addr = pool.listen("127.0.0.1:0").unwrap();
    let mut clients = Vec::new();
    for ip in 1..=8 {
        for _ in 0..10 {
            clients.push(connect_from(&format!("127.0.0.{ip}"), addr));
        }
    }
    let mut by_ip: HashMap<std::net::IpAddr, Vec<usize>> = HashMap::new();
    for n in wait_notes(&rx, 80, |n| matches!(n, Note::Connected { .. })) {
        if let Note::Connected { watcher, peer } = n {
            by_ip.entry(peer.unwrap().ip()).or_default().push(watcher);
        }
    }
    assert_eq!(by_ip.len(), 8);
    let mut used = std::collections::HashSet::new();
    for (ip, ws) in &by_ip {
        assert!(ws.iter().all(|w| *w == ws[0]), "{ip} spread over {ws:?}");
        used.insert(ws[0]);
    }
    assert!(
        used.len() > 1,
        "8 addresses should not all hash to one of 3 watchers"
    );
}

#[test]
fn custom_balancer_is_honoured_and_can_be_swapped_live() {
    let _serial = serial();
    let (tx, rx) = channel();
    let pool = echo_pool(Pool::builder().watchers(2).pin(false), tx);
    let addr = pool.listen("127.0.0.1:0").unwrap();
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(connect_one(addr, &rx));
    }
    assert!(clients.iter().any(|c| c.1 == 0) && clients.iter().any(|c| c.1 == 1));
    pool.set_balancer(Always(1));
    for _ in 0..10 {
        let (c, w) = connect_one(addr, &rx);
        assert_eq!(w, 1, "the swapped-in balancer decides");
        clients.push((c, w));
    }
    pool.set_balancer(Always(0));
    let (c, w) = connect_one(addr, &rx);
    assert_eq!(w, 0);
    clients.push((c, w));
    // Nothing was dropped along the way.
    for (i, (c, _)) in clients.iter_mut().enumerate() {
        echo_once(c, &pattern(i, 300));
    }
}

#[test]
fn assign_hands_over_a_dialled_connection() {
    let _serial = serial();
    let (tx, rx) = channel();
    let pool = echo_pool(Pool::builder().watchers(2).pin(false), tx);
    pool.set_balancer(Always(1));
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    let (w, _conn) = pool.assign(s).unwrap();
    assert_eq!(w, 1);
    let note = wait_notes(&rx, 1, |n| matches!(n, Note::Connected { .. }));
    assert_eq!(
        note[0],
        Note::Connected {
            watcher: 1,
            peer: Some(c.local_addr().unwrap())
        }
    );
    echo_once(&mut c, b"assigned");
}

#[test]
fn reuseport_listeners_all_accept_and_keep_their_connections() {
    let _serial = serial();
    let (tx, rx) = channel();
    let pool = echo_pool(Pool::builder().watchers(2).pin(false), tx);
    let addr = pool.listen_reuseport("127.0.0.1:0").unwrap();
    let mut clients: Vec<_> = (0..200)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let mut per = [0u64; 2];
    for n in wait_notes(&rx, 200, |n| matches!(n, Note::Connected { .. })) {
        if let Note::Connected { watcher, .. } = n {
            per[watcher] += 1;
        }
    }
    let stats = pool.stats().watchers;
    assert!(
        per[0] > 0 && per[1] > 0,
        "the kernel spread accepts over both listeners: {per:?}"
    );
    // Each listener accepts only for its own watcher: accepts == connections served.
    assert_eq!([stats[0].accepts, stats[1].accepts], per);
    for (i, c) in clients.iter_mut().enumerate().take(20) {
        echo_once(c, &pattern(i, 64));
    }
}

/// Regression: a watcher whose handler panicked made the acceptor give up, and
/// the pool silently stopped accepting.
#[test]
fn a_dead_watcher_does_not_stop_the_listener() {
    let _serial = serial();
    use gaio_core::{Op, Requests};
    use gaio_pool::{Event, Io};
    let (tx, rx) = channel();
    let pool = Pool::builder()
        .watchers(2)
        .pin(false)
        .build(move |_| {
            let tx = tx.clone();
            move |io: &Io<()>, ev: Event<'_, ()>| match ev {
                Event::Connected { conn, peer } => {
                    assert!(io.index() != 0, "handler 0 dies on its first connection");
                    let _ = tx.send(Note::Connected {
                        watcher: io.index(),
                        peer,
                    });
                    io.read(conn, (), None).unwrap();
                }
                Event::Completed(res) => match res.op {
                    Op::Read if res.result.is_ok() && res.size > 0 => {
                        io.write(res.conn, (), res.data().to_vec()).unwrap()
                    }
                    Op::Write => io.read(res.conn, (), None).unwrap(),
                    _ => io.free(res.conn).unwrap(),
                },
                _ => {}
            }
        })
        .unwrap();
    pool.set_balancer(Always(0));
    let addr = pool.listen("127.0.0.1:0").unwrap();
    let _victim = std::net::TcpStream::connect(addr).unwrap();
    // Until watcher 0 is fully gone a connection may still land on it and be
    // closed; after that every connection must be served by watcher 1.
    let mut served = Vec::new();
    let end = std::time::Instant::now() + PATIENCE;
    while served.len() < 3 {
        assert!(
            std::time::Instant::now() < end,
            "the listener stopped serving"
        );
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        let me = c.local_addr().unwrap();
        if let Ok(Note::Connected { watcher, peer }) =
            rx.recv_timeout(std::time::Duration::from_millis(200))
        {
            assert_eq!((watcher, peer), (1, Some(me)));
            echo_once(&mut c, b"still here");
            served.push(c);
        }
    }
    let shutdown = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.shutdown(std::time::Duration::from_millis(50))
    }));
    assert!(shutdown.is_err(), "shutdown re-raises the handler's panic");
}
