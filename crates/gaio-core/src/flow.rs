//! Write flow control: when a connection counts as writable.

/// A connection's write watermarks, as in Netty's `WriteBufferWaterMark`: the
/// connection stops being *writable* when the bytes queued on it and not yet
/// sent go above `high`, and is writable again once they fall to `low` or below.
///
/// Three mechanisms bound what a peer that reads slowly (or never) can cost,
/// from gentle to hard:
///
/// | mechanism | what happens | set with |
/// |-----------|--------------|----------|
/// | writability | [`Local::is_writable`](crate::Local::is_writable) turns `false` above `high`; a [`writable`](crate::Requests::writable) request completes once queued bytes are back at `low`: produce more then | [`Builder::flow`](crate::Builder::flow), [`Local::set_flow`](crate::Local::set_flow) |
/// | paused reads ([`pause_reads`](Self::pause_reads)) | while not writable, no read on that connection completes (none is attempted): the peer's own sends back up in TCP | the same |
/// | write limit | a write that would take queued bytes past it is refused ([`Error::WriteLimit`](crate::Error::WriteLimit)) | [`Builder::write_limit`](crate::Builder::write_limit) |
///
/// Queued bytes count from the moment a write is accepted — a batch that
/// queues many replies before the watcher's next turn counts all of them — until
/// the kernel has taken them.
///
/// # Example: reply only while the peer keeps up
///
/// A request-reply server holds the requests it has read but not answered, and
/// answers them only while the connection is writable; when it is not, it asks
/// to be told, and reads nothing more meanwhile. Memory per connection stays
/// under `high` + one reply + what one read brought, however fast the peer
/// pipelines, and every reply is delivered once the peer reads.
///
/// ```
/// use std::collections::VecDeque;
/// use std::io::{Read, Write};
/// use gaio_core::{Conn, Flow, Local, Op, Requests, Watcher};
///
/// /// Answers held requests while writable; then either reads on or waits.
/// fn serve(io: &Local<'_, ()>, conn: Conn, held: &mut VecDeque<u8>) -> gaio_core::Result<()> {
///     while io.is_writable(conn) {
///         match held.pop_front() {
///             Some(b) => io.write(conn, (), vec![b; 1000])?, // a 1,000-byte reply
///             None => return io.read(conn, (), None),        // all answered: read on
///         }
///     }
///     io.writable(conn, ()) // Op::Writable completes once the peer caught up
/// }
///
/// let l = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let mut client = std::net::TcpStream::connect(l.local_addr()?)?;
/// let mut w: Watcher<()> = Watcher::builder().flow(Flow::new(2_000, 8_000)).build()?;
/// let conn = w.register(l.accept()?.0)?;
/// w.local().read(conn, (), None)?;
/// client.write_all(&[7; 100])?; // 100 requests in one packet: 100,000 bytes of replies
/// let (mut held, mut most) = (VecDeque::new(), 0);
/// let mut got = 0;
/// while got < 100_000 {
///     let batch = w.wait_io()?;
///     let io = batch.local();
///     for res in batch {
///         match res.op {
///             Op::Read => held.extend(res.data()),
///             Op::Write | Op::Writable => {}
///             _ => unreachable!(),
///         }
///         if res.op != Op::Write {
///             serve(&io, conn, &mut held)?;
///         }
///     }
///     most = most.max(w.local().queued(conn));
///     let mut buf = [0; 4096];
///     client.set_nonblocking(true)?;
///     while let Ok(n) = client.read(&mut buf) {
///         got += n;
///     }
/// }
/// assert!(most <= 8_000 + 1_000, "queued {most}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    low: usize,
    high: usize,
    pause_reads: bool,
}

impl Flow {
    /// Netty's defaults: writable up to 64 KiB queued, again at 32 KiB; reads
    /// are not paused.
    pub const DEFAULT: Flow = Flow::new(32 << 10, 64 << 10);

    /// Watermarks `low` ≤ `high` (bytes), reads not paused.
    ///
    /// ```
    /// let f = gaio_core::Flow::new(16 << 10, 256 << 10).pause_reads(true);
    /// assert_eq!((f.low(), f.high(), f.pauses_reads()), (16 << 10, 256 << 10, true));
    /// ```
    ///
    /// # Panics
    /// If `low > high`.
    pub const fn new(low: usize, high: usize) -> Flow {
        assert!(low <= high, "Flow: the low watermark is above the high one");
        Flow {
            low,
            high,
            pause_reads: false,
        }
    }

    /// While the connection is not writable, attempt no read on it: reads
    /// already submitted stay pending (their deadlines still run) and complete
    /// once it is writable again, so a peer that sends without reading is
    /// pushed back on by TCP. On io_uring a read whose operation the kernel
    /// already holds may still complete.
    pub const fn pause_reads(mut self, on: bool) -> Flow {
        self.pause_reads = on;
        self
    }

    /// The low watermark: writable again at or below it.
    pub const fn low(&self) -> usize {
        self.low
    }

    /// The high watermark: not writable above it.
    pub const fn high(&self) -> usize {
        self.high
    }

    /// Whether reads pause while the connection is not writable.
    pub const fn pauses_reads(&self) -> bool {
        self.pause_reads
    }
}

impl Default for Flow {
    fn default() -> Flow {
        Flow::DEFAULT
    }
}
