//! A pool's life: `join` until `stop`, and messages refused past the limit.

use std::sync::{Arc, Mutex, mpsc};

use gaio_core::Error;
use gaio_pool::{Event, Io, Pool};

#[test]
fn join_returns_once_another_thread_asks_to_stop() {
    let _serial = gaio_testkit::serial();
    let pool: Pool<()> = Pool::builder()
        .watchers(2)
        .pin(false)
        .build(|_| |_: &Io<'_, ()>, _: Event<'_, ()>| {})
        .unwrap();
    let addr = pool.listen("127.0.0.1:0").unwrap();
    let handle = pool.handle();
    let stopper = std::thread::spawn(move || handle.stop());
    pool.join();
    stopper.join().unwrap();
    // Shut down: its listener is closed.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn messages_past_the_limit_are_refused_and_the_rest_delivered() {
    let _serial = gaio_testkit::serial();
    let wait = gaio_testkit::PATIENCE;
    let (started_tx, started) = mpsc::channel::<()>();
    let (release, gate) = mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(Some(gate)));
    let (seen_tx, seen) = mpsc::channel::<u32>();
    let pool: Pool<(), u32> = Pool::builder()
        .watchers(1)
        .pin(false)
        .message_limit(Some(2))
        .build(move |_| {
            let gate = gate.lock().unwrap().take().expect("one watcher");
            let (started_tx, seen_tx) = (started_tx.clone(), seen_tx.clone());
            move |_: &Io<'_, (), u32>, ev: Event<'_, (), u32>| {
                if let Event::Message(m) = ev {
                    if m == 1 {
                        // The handler falls behind: messages pile up meanwhile.
                        started_tx.send(()).unwrap();
                        gate.recv_timeout(wait).unwrap();
                    }
                    seen_tx.send(m).unwrap();
                }
            }
        })
        .unwrap();
    pool.send(0, 1).unwrap();
    started.recv_timeout(wait).unwrap();
    pool.send(0, 2).unwrap();
    pool.send(0, 3).unwrap();
    assert!(matches!(pool.send(0, 4), Err(Error::WriteLimit)));
    assert!(matches!(pool.broadcast(5), Err(Error::WriteLimit)));
    assert_eq!(pool.stats().watchers[0].waiting_messages, 2);
    release.send(()).unwrap();
    let got: Vec<u32> = (0..3).map(|_| seen.recv_timeout(wait).unwrap()).collect();
    assert_eq!(got, [1, 2, 3], "refused messages were not delivered");
    pool.broadcast(6).unwrap();
    assert_eq!(seen.recv_timeout(wait), Ok(6));
    assert_eq!(pool.stats().watchers[0].waiting_messages, 0);
}
