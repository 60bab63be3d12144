//! The UDP load generator: many flows (a connected UDP socket each) on one
//! thread, edge-triggered epoll through gaio-sys' poller, a fixed number of
//! datagrams in flight per flow. Every datagram carries its flow and sequence
//! number and a pattern derived from them; every echo is checked. A datagram
//! not echoed within `LOSS_AFTER` counts as lost (and is replaced), one that
//! comes back wrong as corrupt, one that comes back twice (or after it was
//! counted lost) as a duplicate or late: loss is told apart from corruption.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use gaio_sys::{Events, Poller};

/// After this long without its echo, a datagram counts as lost.
const LOSS_AFTER: Duration = Duration::from_millis(200);

/// The header of every datagram: flow (u32), sequence number (u64).
const HEADER: usize = 12;

/// What one load does.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub flows: usize,
    /// Datagram size in bytes (at least the 12-byte header).
    pub size: usize,
    /// Datagrams in flight per flow.
    pub in_flight: usize,
    pub secs: f64,
}

/// What came back.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    pub sent: u64,
    /// Echoed correctly.
    pub echoed: u64,
    /// Never echoed within `LOSS_AFTER`.
    pub lost: u64,
    /// Echoed with other bytes than sent.
    pub corrupt: u64,
    /// Echoed again, or after being counted lost.
    pub duplicate: u64,
    pub secs: f64,
}

/// The payload of datagram `seq` of flow `flow`.
fn fill(buf: &mut [u8], flow: u32, seq: u64) {
    buf[..4].copy_from_slice(&flow.to_le_bytes());
    buf[4..HEADER].copy_from_slice(&seq.to_le_bytes());
    for (k, b) in buf[HEADER..].iter_mut().enumerate() {
        *b = (flow as usize)
            .wrapping_mul(131)
            .wrapping_add(seq as usize * 7)
            .wrapping_add(k) as u8;
    }
}

struct Flow {
    sock: UdpSocket,
    next: u64,
    /// Sequence numbers in flight, oldest first, with when they were sent.
    out: VecDeque<(u64, Instant)>,
}

impl Flow {
    /// Sends datagram `next`; `false` if the socket buffer is full.
    fn send(&mut self, id: u32, buf: &mut [u8]) -> io::Result<bool> {
        fill(buf, id, self.next);
        match self.sock.send(buf) {
            Ok(_) => {
                self.out.push_back((self.next, Instant::now()));
                self.next += 1;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Runs one load against the UDP echo server at `addr`.
pub fn run(addr: SocketAddr, spec: Spec) -> io::Result<Outcome> {
    if spec.size < HEADER || spec.size > 65_507 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("datagram size {} is outside {HEADER}..=65507", spec.size),
        ));
    }
    let poller = Poller::new()?;
    let local: SocketAddr = if addr.is_ipv4() {
        ([127, 0, 0, 1], 0).into()
    } else {
        (std::net::Ipv6Addr::LOCALHOST, 0).into()
    };
    let mut flows = Vec::with_capacity(spec.flows);
    for i in 0..spec.flows {
        let sock = UdpSocket::bind(local)?;
        sock.connect(addr)?;
        sock.set_nonblocking(true)?;
        poller.register(sock.as_fd(), i as u64)?;
        flows.push(Flow {
            sock,
            next: 0,
            out: VecDeque::new(),
        });
    }
    let mut out = Outcome::default();
    let mut buf = vec![0u8; spec.size];
    let mut got = vec![0u8; 65_536];
    let mut want = vec![0u8; spec.size];
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(spec.secs);
    for (i, f) in flows.iter_mut().enumerate() {
        for _ in 0..spec.in_flight {
            if f.send(i as u32, &mut buf)? {
                out.sent += 1;
            }
        }
    }
    let mut events = Events::with_capacity(1024);
    let mut last_sweep = start;
    while Instant::now() < end {
        poller.wait(&mut events, Some(Duration::from_millis(20)))?;
        for ev in events.iter() {
            let i = ev.token() as usize;
            let f = &mut flows[i];
            loop {
                let n = match f.sock.recv(&mut got) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // An ICMP error for an earlier datagram: counted as loss below.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                    Err(e) => return Err(e),
                };
                if n < HEADER {
                    out.corrupt += 1;
                    continue;
                }
                let flow = u32::from_le_bytes(got[..4].try_into().expect("4 bytes"));
                let seq = u64::from_le_bytes(got[4..HEADER].try_into().expect("8 bytes"));
                let Some(pos) = f.out.iter().position(|(s, _)| *s == seq) else {
                    out.duplicate += 1;
                    continue;
                };
                fill(&mut want, flow, seq);
                if flow as usize != i || n != spec.size || got[..n] != want[..] {
                    out.corrupt += 1;
                } else {
                    out.echoed += 1;
                }
                f.out.remove(pos);
                if f.send(i as u32, &mut buf)? {
                    out.sent += 1;
                }
            }
        }
        // Every 50 ms: what waited too long is lost, and replaced.
        let now = Instant::now();
        if now.duration_since(last_sweep) > Duration::from_millis(50) {
            last_sweep = now;
            for (i, f) in flows.iter_mut().enumerate() {
                while f
                    .out
                    .front()
                    .is_some_and(|(_, at)| now.duration_since(*at) > LOSS_AFTER)
                {
                    f.out.pop_front();
                    out.lost += 1;
                }
                while f.out.len() < spec.in_flight && f.send(i as u32, &mut buf)? {
                    out.sent += 1;
                }
            }
        }
    }
    out.secs = start.elapsed().as_secs_f64();
    Ok(out)
}
