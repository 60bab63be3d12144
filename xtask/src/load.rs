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

/// One streaming client: up to `depth` messages in flight, a new one sent for
/// each one echoed, every echoed byte checked.
struct Streamer {
    s: TcpStream,
    base: Vec<u8>,
    out: Vec<u8>,
    out_at: usize,
    sent_seq: u64,
    recv_seq: u64,
    got: Vec<u8>,
}

impl Streamer {
    /// Message `seq`: the connection's pattern with `seq` in its first bytes.
    fn message(&self, seq: u64, into: &mut Vec<u8>) {
        let at = into.len();
        into.extend_from_slice(&self.base);
        let n = self.base.len().min(8);
        into[at..at + n].copy_from_slice(&seq.to_le_bytes()[..n]);
    }

    fn queue(&mut self) {
        let mut out = std::mem::take(&mut self.out);
        self.message(self.sent_seq, &mut out);
        self.out = out;
        self.sent_seq += 1;
    }

    fn flush(&mut self) -> io::Result<()> {
        while self.out_at < self.out.len() {
            match self.s.write(&self.out[self.out_at..]) {
                Ok(n) => self.out_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.out_at = 0;
        Ok(())
    }
}

/// Streams: `conns` connections each keep `depth` messages of `msg` bytes in
/// flight for `secs`, sending one more for each echoed (and verified) one.
/// `msgs` counts echoed messages; `busy` is the streaming time.
pub fn stream(
    addr: SocketAddr,
    conns: usize,
    msg: usize,
    depth: usize,
    secs: Duration,
) -> io::Result<Outcome> {
    let start = Instant::now();
    let poller = Poller::new()?;
    let mut clients = Vec::with_capacity(conns);
    for i in 0..conns {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        poller.register(s.as_fd(), i as u64)?;
        clients.push(Streamer {
            s,
            base: pattern(i, msg),
            out: Vec::with_capacity(msg * depth),
            out_at: 0,
            sent_seq: 0,
            recv_seq: 0,
            got: Vec::with_capacity(msg * depth),
        });
    }
    let busy_start = Instant::now();
    let end = busy_start + secs;
    for c in &mut clients {
        for _ in 0..depth {
            c.queue();
        }
        c.flush()?;
    }
    let mut out = Outcome::default();
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; 64 * 1024];
    let mut expect = Vec::with_capacity(msg);
    while Instant::now() < end {
        poller.wait(&mut events, Some(Duration::from_millis(100)))?;
        for ev in events.iter() {
            let c = &mut clients[ev.token() as usize];
            c.flush()?;
            loop {
                match c.s.read(&mut scratch) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "server closed",
                        ));
                    }
                    Ok(n) => c.got.extend_from_slice(&scratch[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            let mut used = 0;
            while c.got.len() - used >= msg {
                expect.clear();
                c.message(c.recv_seq, &mut expect);
                if c.got[used..used + msg] != expect[..] {
                    return Err(io::Error::other(format!(
                        "streamed echo mismatch on message {}",
                        c.recv_seq
                    )));
                }
                used += msg;
                c.recv_seq += 1;
                out.msgs += 1;
                out.bytes += msg as u64;
                c.queue();
            }
            c.got.drain(..used);
            c.flush()?;
        }
    }
    out.elapsed = start.elapsed();
    out.busy = busy_start.elapsed();
    Ok(out)
}
