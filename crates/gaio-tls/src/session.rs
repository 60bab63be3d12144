//! One TLS connection: rustls' unbuffered state machine and the plaintext
//! requests waiting on it. Nothing here makes a request of the watcher; the
//! layer above (`lib.rs`) submits what a session asks for and delivers what it
//! completes.

use std::collections::VecDeque;
use std::time::Instant;

use gaio_core::{Conn, Error, WriteBuf};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedConnectionCommon, UnbufferedStatus,
};

/// The most ciphertext a session holds between reads: a partial record (at most
/// 16 KiB of payload plus its expansion), or a handshake message split over
/// records (rustls caps one at 64 KiB) with the records it starts and ends in.
/// A peer that sends more without completing one is cut off.
pub(crate) const MAX_PENDING: usize = 64 * 1024 + 2 * (16 * 1024 + 2048 + 5);

/// rustls' two unbuffered connection types share the state machine but not the
/// entry point; this is the entry point once.
pub(crate) trait Process {
    type Data;
    /// Whether rustls has records queued to send (an alert after an error).
    fn has_records(&self) -> bool;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Process for UnbufferedConnectionCommon<ServerConnectionData> {
    type Data = ServerConnectionData;
    fn has_records(&self) -> bool {
        self.wants_write()
    }
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

impl Process for UnbufferedConnectionCommon<ClientConnectionData> {
    type Data = ClientConnectionData;
    fn has_records(&self) -> bool {
        self.wants_write()
    }
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

/// Which end of the handshake this session is.
pub(crate) enum Side {
    Server(UnbufferedServerConnection),
    Client(UnbufferedClientConnection),
}

/// What to encrypt once the connection may send application data.
#[derive(Clone, Copy)]
pub(crate) enum Job<'a> {
    /// Nothing: just run the state machine (send what it has to send).
    None,
    /// These plaintext bytes, as records.
    Encrypt(&'a [u8]),
    /// A `close_notify` alert.
    CloseNotify,
}

/// What one run of the state machine saw.
#[derive(Default)]
pub(crate) struct Turn {
    /// The handshake is over (the connection may send application data).
    pub open: bool,
    /// The job was done (the state machine reached `WriteTraffic`).
    pub done: bool,
    /// The peer sent `close_notify`.
    pub peer_closed: bool,
    /// A fatal error; its alert, if any, is in `out`.
    pub error: Option<rustls::Error>,
}

/// A plaintext read waiting for bytes.
pub(crate) struct Read<C> {
    pub ctx: C,
    /// `None`: hand over the bytes borrowed (a swap-buffer read).
    pub buf: Option<Vec<u8>>,
    /// `read_full`: complete only once `buf` is full.
    pub full: bool,
    /// Bytes already in `buf` (read_full).
    pub done: usize,
    pub deadline: Option<Instant>,
    /// Made while this connection's completions were being delivered: it may
    /// take plaintext already here, but EOF, a failure or its deadline reach
    /// it at the next batch (so a loop that reads again on EOF does not spin).
    pub late: bool,
}

/// A write-side request made before the handshake finished, kept in order.
pub(crate) enum Waiting<C> {
    Write(C, WriteBuf, Option<Instant>),
    Shutdown(C),
    Close(C, Option<Instant>),
}

/// One TLS connection.
pub(crate) struct Session<C> {
    pub conn: Conn,
    pub side: Side,
    /// The handshake's own request (`accept`/`connect`): completes as
    /// `Op::Connect` when the handshake ends, either way.
    pub handshake: Option<C>,
    pub handshake_deadline: Option<Instant>,
    pub open: bool,
    /// Ciphertext received and not yet a whole record.
    pub pending_in: Vec<u8>,
    /// Plaintext received with no read to take it.
    pub plain_rest: Vec<u8>,
    pub reads: VecDeque<Read<C>>,
    pub waiting: VecDeque<Waiting<C>>,
    /// Requests made during the handshake whose records are at the watcher:
    /// they complete with those bytes.
    pub flushed: VecDeque<Waiting<C>>,
    /// Ciphertext reads in flight at the watcher.
    pub core_reads: u32,
    /// The deadlines of the ciphertext reads in flight that have one.
    pub armed: Vec<Instant>,
    /// No more plaintext will come (close_notify, or EOF on the socket).
    pub peer_eof: bool,
    /// The peer sent close_notify (its EOF was not a truncation).
    pub notified: bool,
    /// close_notify was sent (or a shutdown or close is queued): no more writes.
    pub write_closed: bool,
    /// A close (the application's or the layer's) is on its way.
    pub closing: bool,
    /// Why the connection ended; every request still waiting completes with it.
    pub failed: Option<Error>,
    /// Freed or closed at the watcher: the session goes once nothing is in flight.
    pub dead: bool,
}

impl<C> Session<C> {
    pub fn new(conn: Conn, side: Side, ctx: C, deadline: Option<Instant>) -> Session<C> {
        Session {
            conn,
            side,
            handshake: Some(ctx),
            handshake_deadline: deadline,
            open: false,
            pending_in: Vec::new(),
            plain_rest: Vec::new(),
            reads: VecDeque::new(),
            waiting: VecDeque::new(),
            flushed: VecDeque::new(),
            core_reads: 0,
            armed: Vec::new(),
            peer_eof: false,
            notified: false,
            write_closed: false,
            closing: false,
            failed: None,
            dead: false,
        }
    }

    /// The rustls state both sides share (ALPN, version, handshake kind, …).
    pub fn common(&self) -> &rustls::CommonState {
        match &self.side {
            Side::Server(c) => c,
            Side::Client(c) => c,
        }
    }

    /// Runs the state machine over `incoming` (whole records are consumed; a
    /// partial one stays), appending plaintext to `plain` and records to send to
    /// `out`, and doing `job` if the connection may send application data.
    pub fn drive(
        &mut self,
        incoming: &mut Vec<u8>,
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
        job: Job<'_>,
    ) -> Turn {
        let turn = match &mut self.side {
            Side::Server(c) => drive(&mut **c, incoming, plain, out, job),
            Side::Client(c) => drive(&mut **c, incoming, plain, out, job),
        };
        if turn.open {
            self.open = true;
        }
        turn
    }

    /// Whether a ciphertext read should be made now, and its deadline: one
    /// ending at once when bytes (or EOF) wait for a read; one when the
    /// session needs ciphertext and none is in flight; one ending at the
    /// earliest deadline when no read in flight ends by then.
    pub fn read_plan(&self) -> Option<Option<Instant>> {
        if self.failed.is_some() || self.dead {
            return None;
        }
        if !self.reads.is_empty() && (!self.plain_rest.is_empty() || self.peer_eof) {
            let now = Instant::now();
            return (!self.armed.iter().any(|a| *a <= now)).then_some(Some(now));
        }
        if !self.wants_read() {
            return None;
        }
        let due = self.read_deadline();
        if self.core_reads == 0 {
            return Some(due);
        }
        let d = due?;
        (!self.armed.iter().any(|a| *a <= d)).then_some(Some(d))
    }

    /// A ciphertext read was made (`deadline`) or came back.
    pub fn read_armed(&mut self, deadline: Option<Instant>) {
        self.core_reads += 1;
        self.armed.extend(deadline);
    }

    pub fn read_back(&mut self, deadline: Option<Instant>) {
        self.core_reads = self.core_reads.saturating_sub(1);
        if let Some(d) = deadline {
            if let Some(i) = self.armed.iter().position(|a| *a == d) {
                self.armed.swap_remove(i);
            }
        }
    }

    /// The earliest deadline a ciphertext read should carry: the handshake's
    /// while it lasts, and every waiting read's.
    pub fn read_deadline(&self) -> Option<Instant> {
        let hs = if self.open {
            None
        } else {
            self.handshake_deadline
        };
        self.reads.iter().filter_map(|r| r.deadline).chain(hs).min()
    }

    /// Whether the session needs ciphertext: the handshake, or a read waiting.
    pub fn wants_read(&self) -> bool {
        self.failed.is_none()
            && !self.dead
            && (!self.open
                || (!self.reads.is_empty() && !self.peer_eof && self.plain_rest.is_empty()))
    }

    /// Whether anything of the application's still waits here.
    pub fn holds_requests(&self) -> bool {
        self.handshake.is_some()
            || !self.reads.is_empty()
            || !self.waiting.is_empty()
            || !self.flushed.is_empty()
    }

    /// The next request whose bytes just went out: a write (`end` `None`), or
    /// the shutdown (`Some(false)`) or close (`Some(true)`) after them.
    pub fn next_flushed(&mut self, end: Option<bool>) -> Option<Waiting<C>> {
        let i = self.flushed.iter().position(|w| {
            matches!(
                (w, end),
                (Waiting::Write(..), None)
                    | (Waiting::Shutdown(_), Some(false))
                    | (Waiting::Close(..), Some(true))
            )
        })?;
        // Writes go in order, each with the run that carried it.
        if end.is_none() && i != 0 {
            return None;
        }
        self.flushed.remove(i)
    }

    /// Reads made during a delivery are ordinary reads once it is over.
    pub fn settled(&mut self) {
        for r in &mut self.reads {
            r.late = false;
        }
    }

    /// Puts requests whose records never reached the watcher back in line, to
    /// complete with the session's failure.
    pub fn unflush(&mut self) {
        let mut all = std::mem::take(&mut self.flushed);
        all.extend(self.waiting.drain(..));
        self.waiting = all;
    }
}

fn drive<P: Process>(
    conn: &mut P,
    incoming: &mut Vec<u8>,
    plain: &mut Vec<u8>,
    out: &mut Vec<u8>,
    job: Job<'_>,
) -> Turn {
    let mut turn = Turn::default();
    let mut consumed = 0;
    // A connection cannot loop forever: each state either consumes input, emits
    // output, or ends the loop. The bound only guards against a rustls change.
    for _ in 0..100_000 {
        let UnbufferedStatus { discard, state } = conn.process(&mut incoming[consumed..]);
        let mut stop = false;
        match state {
            Err(e) => {
                turn.error = Some(e);
                stop = true;
            }
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                let mut extra = 0;
                while let Some(rec) = r.next_record() {
                    match rec {
                        Ok(rec) => {
                            plain.extend_from_slice(rec.payload);
                            extra += rec.discard;
                        }
                        Err(e) => {
                            turn.error = Some(e);
                            break;
                        }
                    }
                }
                consumed += extra;
                stop = turn.error.is_some();
            }
            Ok(ConnectionState::EncodeTlsData(mut e)) => {
                if let Err(err) = put(out, 512, |b| match e.encode(b) {
                    Ok(n) => Ok(n),
                    Err(EncodeError::InsufficientSize(s)) => Err(Some(s.required_size)),
                    Err(EncodeError::AlreadyEncoded) => Err(None),
                }) {
                    turn.error = Some(err);
                    stop = true;
                }
            }
            Ok(ConnectionState::TransmitTlsData(t)) => {
                // `out` goes to the watcher's write queue as soon as this run
                // ends, ahead of anything submitted after it.
                t.done();
            }
            Ok(ConnectionState::BlockedHandshake) => stop = true,
            Ok(ConnectionState::PeerClosed) => turn.peer_closed = true,
            Ok(ConnectionState::Closed) => {
                turn.peer_closed = true;
                stop = true;
            }
            Ok(ConnectionState::WriteTraffic(mut w)) => {
                turn.open = true;
                let res = match job {
                    Job::None => Ok(()),
                    Job::Encrypt(data) => {
                        let hint = data.len() + (data.len() / 16384 + 1) * 64;
                        put(out, hint, |b| encrypted(w.encrypt(data, b)))
                    }
                    Job::CloseNotify => put(out, 64, |b| encrypted(w.queue_close_notify(b))),
                };
                match res {
                    Ok(()) => turn.done = true,
                    Err(e) => turn.error = Some(e),
                }
                stop = true;
            }
            Ok(_) => stop = true,
        }
        consumed += discard;
        if stop {
            break;
        }
    }
    if turn.error.is_some() {
        // rustls queues the fatal alert; another run hands it over — only while
        // one is queued, as a run with none would parse the bad bytes again.
        // (Over the same bytes: rustls may hold positions in them.)
        for _ in 0..4 {
            if !conn.has_records() {
                break;
            }
            let rest = consumed.min(incoming.len());
            match conn.process(&mut incoming[rest..]).state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    let _ = put(out, 64, |b| match e.encode(b) {
                        Ok(n) => Ok(n),
                        Err(EncodeError::InsufficientSize(s)) => Err(Some(s.required_size)),
                        Err(EncodeError::AlreadyEncoded) => Err(None),
                    });
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => break,
            }
        }
    }
    incoming.drain(..consumed.min(incoming.len()));
    turn
}

fn encrypted(r: Result<usize, EncryptError>) -> Result<usize, Option<usize>> {
    match r {
        Ok(n) => Ok(n),
        Err(EncryptError::InsufficientSize(s)) => Err(Some(s.required_size)),
        Err(EncryptError::EncryptExhausted) => Err(None),
    }
}

/// Appends what `f` writes to `out`, growing it to the size `f` asks for.
fn put(
    out: &mut Vec<u8>,
    hint: usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> Result<(), rustls::Error> {
    let start = out.len();
    let mut room = hint.max(64);
    for _ in 0..3 {
        out.resize(start + room, 0);
        match f(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Some(need)) if need > room => room = need,
            Err(_) => break,
        }
    }
    out.truncate(start);
    Err(rustls::Error::EncryptError)
}
