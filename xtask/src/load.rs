//! The load generator: many nonblocking connections on one thread, driven by
//! edge-triggered epoll (through gaio-sys' thin wrapper, the same for every server
//! under test). Every echoed byte is compared with what was sent.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use gaio_sys::{Events, Poller};
use gaio_testkit::pattern;

/// How long each connection keeps going.
#[derive(Debug, Clone, Copy)]
pub enum Rounds {
    /// One message per connection.
    Once,
    /// Ping-pong until the time is up.
    For(Duration),
    /// This many messages per connection.
    Count(u64),
}

#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub conns: usize,
    pub msg: usize,
    pub rounds: Rounds,
    /// Keep every round-trip time (for percentiles).
    pub latencies: bool,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub msgs: u64,
    pub bytes: u64,
    /// From the first connect to the last byte back.
    pub elapsed: Duration,
    /// From the first message sent to the last byte back (connects excluded).
    pub busy: Duration,
    pub latencies_ns: Vec<u32>,
}

struct Client {
    s: TcpStream,
    /// The message: a per-connection pattern with the sequence number in front.
    msg: Vec<u8>,
    sent: usize,
    got: Vec<u8>,
    seq: u64,
    started: Instant,
    done: bool,
}

impl Client {
    fn stamp(&mut self) {
        let n = self.msg.len().min(8);
        self.msg[..n].copy_from_slice(&self.seq.to_le_bytes()[..n]);
        self.sent = 0;
        self.got.clear();
        self.started = Instant::now();
    }

    /// Writes what it can of the current message.
    fn push(&mut self) -> io::Result<()> {
        while self.sent < self.msg.len() {
            match self.s.write(&self.msg[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what is there; returns true when the whole echo arrived (verified).
    fn pull(&mut self, scratch: &mut [u8]) -> io::Result<bool> {
        loop {
            let want = self.msg.len() - self.got.len();
            if want == 0 {
                break;
            }
            let room = want.min(scratch.len());
            match self.s.read(&mut scratch[..room]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "server closed",
                    ));
                }
                Ok(n) => self.got.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        if self.got != self.msg {
            return Err(io::Error::other(format!(
                "echo mismatch on message {} ({} bytes)",
                self.seq,
                self.msg.len()
            )));
        }
        Ok(true)
    }
}

/// Runs one load against `addr`.
pub fn run(addr: SocketAddr, spec: Spec, patience: Duration) -> io::Result<Outcome> {
    let start = Instant::now();
    let poller = Poller::new()?;
    let mut clients = Vec::with_capacity(spec.conns);
    for i in 0..spec.conns {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        poller.register(s.as_fd(), i as u64)?;
        clients.push(Client {
            s,
            msg: pattern(i, spec.msg),
            sent: 0,
            got: Vec::with_capacity(spec.msg),
            seq: 0,
            started: start,
            done: false,
        });
    }
    let busy_start = Instant::now();
    let end_by = match spec.rounds {
        Rounds::For(d) => Some(busy_start + d),
        _ => None,
    };
    let give_up = busy_start + patience;
    let mut out = Outcome::default();
    let mut live = spec.conns;
    for c in &mut clients {
        c.stamp();
        c.push()?;
    }
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; 64 * 1024];
    while live > 0 {
        let now = Instant::now();
        if now > give_up {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{live} of {} connections unfinished after {patience:?}",
                    spec.conns
                ),
            ));
        }
        poller.wait(&mut events, Some(Duration::from_millis(100)))?;
        for ev in events.iter() {
            let c = &mut clients[ev.token() as usize];
            if c.done {
                continue;
            }
            c.push()?;
            while c.pull(&mut scratch)? {
                out.msgs += 1;
                out.bytes += c.msg.len() as u64;
                if spec.latencies {
                    out.latencies_ns
                        .push(c.started.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                }
                c.seq += 1;
                let finished = match spec.rounds {
                    Rounds::Once => true,
                    Rounds::Count(n) => c.seq >= n,
                    Rounds::For(_) => end_by.is_some_and(|e| Instant::now() >= e),
                };
                if finished {
                    c.done = true;
                    live -= 1;
                    break;
                }
                c.stamp();
                c.push()?;
            }
        }
    }
    out.elapsed = start.elapsed();
    out.busy = busy_start.elapsed();
    Ok(out)
}

/// Opens `n` connections and keeps them idle until the returned value drops.
pub fn idle(addr: SocketAddr, n: usize) -> io::Result<Vec<TcpStream>> {
    (0..n).map(|_| TcpStream::connect(addr)).collect()
}
