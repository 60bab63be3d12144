//! gaio-tls from a gaio-pool handler: one `Tls` per watcher thread, built in
//! the handler factory; connections spread over two watchers by the balancer.

mod util;

use std::io::Write;

use gaio_core::{Op, Requests};
use gaio_pool::{Event, Io, Pool};
use gaio_testkit::pattern;
use gaio_tls::{Ctx, Tls};
use util::{Certs, client, echo};

#[test]
fn a_pool_serves_tls_from_every_watcher() {
    let certs = Certs::new();
    let config = certs.server();
    let pool = Pool::builder()
        .watchers(2)
        .build(move |_watcher| {
            let tls: Tls<()> = Tls::new();
            let config = config.clone();
            move |io: &Io<Ctx<()>>, ev: Event<'_, Ctx<()>>| match ev {
                Event::Connected { conn, .. } => {
                    tls.accept(io, conn, &config, ()).unwrap();
                    tls.io(io).read(conn, (), None).unwrap();
                }
                Event::Completed(res) => tls.complete(io, res, |tio, res| match res.op {
                    Op::Read if res.result.is_ok() && res.size > 0 => {
                        let data = res.data().to_vec();
                        tio.write(res.conn, (), data).unwrap();
                        tio.read(res.conn, (), None).unwrap();
                    }
                    Op::Read => {
                        let _ = tio.close(res.conn, (), None);
                    }
                    _ => {}
                }),
                _ => {}
            }
        })
        .unwrap();
    let addr = pool.listen("127.0.0.1:0").unwrap();
    let config = certs.client();
    let clients: Vec<_> = (0..8)
        .map(|t| {
            let config = config.clone();
            std::thread::spawn(move || {
                let mut c = client(addr, &config);
                for i in 0..20 {
                    let msg = pattern(t * 100 + i, 1 + i * 3000);
                    assert!(echo(&mut c, &msg) == msg);
                }
                c.conn.send_close_notify();
                c.flush().unwrap();
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let stats = pool.handle().stats();
    assert!(
        stats.watchers.iter().all(|w| w.completions > 0),
        "{stats:?}"
    );
    pool.shutdown(std::time::Duration::from_secs(1));
}
