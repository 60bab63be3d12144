//! Frames over reads: cut a connection's byte stream into `\n` / `\r\n` lines or
//! big-endian length-prefixed frames, whatever sizes the reads come in.
//!
//! One [`Framer`] per connection keeps only what it must between reads: the
//! partial frame at the end of the last read, or the frames you had not pulled
//! yet when you stopped. Frames that lie whole in one read are lent to you
//! straight from it (the swap buffer, say), without a copy. A frame over the
//! maximum length is an error, found before its bytes are buffered: close the
//! connection (a peer must not grow your memory). With `?` it converts into
//! [`gaio_core::Error`](crate::Error).
//!
//! ```
//! use gaio_core::framing::Framer;
//! let mut f = Framer::lines(64);
//! let mut lines = Vec::new();
//! // Reads arrive cut anywhere.
//! for read in [&b"hel"[..], b"lo\r\nwor", b"ld\n\n"] {
//!     let mut frames = f.frames(read);
//!     while let Some(line) = frames.next()? {
//!         lines.push(line.to_vec()); // or stop here: the rest waits in `f`
//!     }
//! }
//! assert_eq!(lines, [&b"hello"[..], b"world", b""]);
//! # Ok::<(), gaio_core::Error>(())
//! ```
//!
//! A per-frame deadline ([`Framer::deadline`]) bounds how long one frame may
//! take to arrive, which a `read_timeout` re-armed after every read cannot: a
//! peer that sends one byte per interval never lets it expire.

use std::fmt;
use std::ops::Range;
use std::time::{Duration, Instant};

/// How a stream is cut into frames.
///
/// ```
/// use gaio_core::framing::{Framer, Framing};
/// let f = Framer::new(Framing::U32Be, 1 << 20); // same as Framer::u32_be(1 << 20)
/// # drop(f);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Lines ending in `\n`; a `\r` before it is dropped too. The frame is the
    /// line without its ending.
    Lines,
    /// A big-endian `u16` length, then that many bytes (the frame).
    U16Be,
    /// A big-endian `u32` length, then that many bytes (the frame).
    U32Be,
}

impl Framing {
    /// Bytes of the length prefix.
    fn header(self) -> usize {
        match self {
            Framing::Lines => 0,
            Framing::U16Be => 2,
            Framing::U32Be => 4,
        }
    }
}

/// A frame longer than the framer's maximum: the peer is broken or hostile, and
/// the connection should be closed. The framer holds nothing after it.
///
/// ```
/// let err = gaio_core::framing::Framer::lines(4).feed(b"too long\n", |_| {}).unwrap_err();
/// assert_eq!((err.len, err.max), (8, 4));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameError {
    /// The frame's length, as far as known (for a line: what arrived so far).
    pub len: usize,
    /// The maximum the framer allows.
    pub max: usize,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "frame of {} bytes exceeds the maximum of {}",
            self.len, self.max
        )
    }
}

impl std::error::Error for FrameError {}

/// Cuts one connection's reads into frames; see the [module docs](self).
///
/// ```
/// use gaio_core::framing::Framer;
/// let mut f = Framer::u16_be(1024);
/// let mut frames = Vec::new();
/// f.feed(&[0, 3, b'a', b'b'], |fr| frames.push(fr.to_vec()))?;
/// assert!(frames.is_empty() && f.buffered() == 4); // a partial frame, kept
/// f.feed(&[b'c', 0, 1, b'z'], |fr| frames.push(fr.to_vec()))?;
/// assert_eq!(frames, [&b"abc"[..], b"z"]);
/// assert!(f.feed(&[0xff, 0xff], |_| {}).is_err()); // 65,535 > 1,024
/// # Ok::<(), gaio_core::framing::FrameError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Framer {
    framing: Framing,
    max: usize,
    /// Bytes carried between reads: the partial frame at the end of a read,
    /// and the frames of a read left when the caller stopped early.
    buf: Vec<u8>,
    /// Where the undelivered bytes of `buf` start.
    start: usize,
    /// When the first buffered byte arrived (for [`Framer::deadline`]).
    since: Option<Instant>,
}

/// Where the next frame of some bytes is.
enum Cut {
    /// `frame` is the frame, `used` bytes make it up (header, line ending).
    Frame { frame: Range<usize>, used: usize },
    /// No whole frame: `need` more bytes at least (lines: unknown, 1).
    Short { need: usize },
}

impl Framer {
    /// A framer of `framing` that refuses frames over `max` bytes.
    pub fn new(framing: Framing, max: usize) -> Framer {
        Framer {
            framing,
            max,
            buf: Vec::new(),
            start: 0,
            since: None,
        }
    }

    /// `\n`- (or `\r\n`-) terminated lines of at most `max` bytes.
    pub fn lines(max: usize) -> Framer {
        Framer::new(Framing::Lines, max)
    }

    /// Frames after a big-endian `u16` length, at most `max` bytes.
    pub fn u16_be(max: usize) -> Framer {
        Framer::new(Framing::U16Be, max)
    }

    /// Frames after a big-endian `u32` length, at most `max` bytes.
    pub fn u32_be(max: usize) -> Framer {
        Framer::new(Framing::U32Be, max)
    }

    /// Bytes held between reads: the partial frame, plus any frames left
    /// undelivered when a [`Frames`] was dropped early.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Gives back the held bytes' memory beyond what they need (e.g. for a
    /// connection gone idle); the bytes are kept.
    pub fn shrink(&mut self) {
        self.compact();
        self.buf.shrink_to_fit();
    }

    /// The frames of `data` (the next bytes of the stream), after any the
    /// framer holds, pulled one at a time with [`Frames::next`]: stop whenever
    /// you like (the connection is not writable, say) and the bytes not yet
    /// delivered stay in the framer — pull them later with `frames(&[])`.
    /// Frames that lie whole in `data` are lent from it without a copy; only
    /// what is left when the `Frames` is dropped is copied (the partial frame
    /// at the end, or everything after the last frame pulled).
    ///
    /// ```
    /// use gaio_core::framing::Framer;
    /// let mut f = Framer::lines(64);
    /// let mut frames = f.frames(b"one\ntwo\nthree\nfo");
    /// assert_eq!(frames.next()?, Some(&b"one"[..]));
    /// drop(frames); // stop early: "two", "three" and "fo" stay
    /// assert_eq!(f.buffered(), 12);
    /// let mut got = Vec::new();
    /// let mut frames = f.frames(b"ur\n");
    /// while let Some(line) = frames.next()? {
    ///     got.push(line.to_vec());
    /// }
    /// assert_eq!(got, [&b"two"[..], b"three", b"four"]);
    /// # Ok::<(), gaio_core::framing::FrameError>(())
    /// ```
    pub fn frames<'f, 'd>(&'f mut self, data: &'d [u8]) -> Frames<'f, 'd> {
        Frames {
            framer: self,
            data,
            pos: 0,
        }
    }

    /// Cuts `data` (the next bytes of the stream) into frames and calls `frame`
    /// with each complete one, in order: [`frames`](Self::frames) pulled to
    /// the end.
    ///
    /// # Errors
    /// [`FrameError`] when a frame is longer than the maximum; frames before it
    /// were delivered.
    pub fn feed(&mut self, data: &[u8], mut frame: impl FnMut(&[u8])) -> Result<(), FrameError> {
        let mut frames = self.frames(data);
        while let Some(f) = frames.next()? {
            frame(f);
        }
        Ok(())
    }

    /// The deadline for the next read under a per-frame limit: a frame must
    /// arrive whole within `per_frame` of its first byte, and (with `idle`)
    /// the first byte of the next frame within `idle` of now. `None`: no
    /// deadline (nothing buffered and no `idle`). Unlike a `read_timeout`
    /// re-armed after every read, this is not reset by a peer that sends one
    /// byte at a time.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use gaio_core::framing::Framer;
    /// let mut f = Framer::lines(64);
    /// assert_eq!(f.deadline(Duration::from_secs(5), None), None);
    /// f.feed(b"GET / HT", |_| {})?; // a frame begun
    /// let at = f.deadline(Duration::from_secs(5), None).unwrap();
    /// assert!(at <= Instant::now() + Duration::from_secs(5));
    /// # Ok::<(), gaio_core::framing::FrameError>(())
    /// ```
    pub fn deadline(&self, per_frame: Duration, idle: Option<Duration>) -> Option<Instant> {
        match self.since {
            Some(t) if self.buffered() > 0 => t.checked_add(per_frame),
            _ => idle.and_then(|d| Instant::now().checked_add(d)),
        }
    }

    /// Where the next frame of `data` is, checking the maximum as soon as a
    /// frame's length is known (a line's: as far as it has arrived).
    fn cut(&self, data: &[u8]) -> Result<Cut, FrameError> {
        match self.framing {
            Framing::Lines => match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let len = strip_cr(&data[..i]).len();
                    self.check(len)?;
                    Ok(Cut::Frame {
                        frame: 0..len,
                        used: i + 1,
                    })
                }
                None => {
                    // A '\r' may still be waiting for its '\n'.
                    self.check(strip_cr(data).len())?;
                    Ok(Cut::Short { need: 1 })
                }
            },
            _ => {
                let h = self.framing.header();
                if data.len() < h {
                    return Ok(Cut::Short {
                        need: h - data.len(),
                    });
                }
                let len = self.length(&data[..h]);
                self.check(len)?;
                if data.len() < h + len {
                    return Ok(Cut::Short {
                        need: h + len - data.len(),
                    });
                }
                Ok(Cut::Frame {
                    frame: h..h + len,
                    used: h + len,
                })
            }
        }
    }

    /// How many bytes of `data` to move behind a partial frame of the buffer
    /// that needs `need` more: a line up to its ending, a length-prefixed
    /// frame up to its end. Refuses before buffering what would make the
    /// frame too long.
    fn take_for_partial(&self, data: &[u8], need: usize) -> Result<usize, FrameError> {
        let have = self.buffered();
        match self.framing {
            Framing::Lines => {
                let take = data
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(data.len(), |i| i + 1);
                // The line so far without its ending: a '\n', a '\r' before
                // it (maybe the last byte held), or a '\r' still waiting for it.
                let chunk = &data[..take];
                let held_cr = have > 0 && self.buf.last() == Some(&b'\r');
                let mut len = have + take;
                let cr = if chunk.last() == Some(&b'\n') {
                    len -= 1;
                    match chunk.len() {
                        1 => held_cr,
                        n => chunk[n - 2] == b'\r',
                    }
                } else {
                    chunk.last() == Some(&b'\r')
                };
                self.check(len - usize::from(cr))?;
                Ok(take)
            }
            _ => Ok(need.min(data.len())),
        }
    }

    /// Drops the delivered bytes from the front of the buffer.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Keeps `data` for later (the caller stopped, or a partial frame).
    fn hold(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if self.buffered() == 0 {
            self.buf.clear();
            self.start = 0;
            self.since = Some(Instant::now());
        }
        self.buf.extend_from_slice(data);
    }

    fn length(&self, header: &[u8]) -> usize {
        match self.framing {
            Framing::U16Be => u16::from_be_bytes([header[0], header[1]]) as usize,
            Framing::U32Be => {
                u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize
            }
            Framing::Lines => 0,
        }
    }

    fn check(&self, len: usize) -> Result<(), FrameError> {
        if len > self.max {
            Err(FrameError { len, max: self.max })
        } else {
            Ok(())
        }
    }
}

/// The frames of one read, pulled one at a time: see [`Framer::frames`].
/// Dropping it keeps the bytes not yet delivered in the framer.
#[derive(Debug)]
pub struct Frames<'f, 'd> {
    framer: &'f mut Framer,
    /// The read; `data[pos..]` is not looked at yet.
    data: &'d [u8],
    pos: usize,
}

/// Where [`Frames::next`] found the frame.
enum Found {
    /// In the framer's buffer.
    Held(Range<usize>),
    /// In the read.
    Read(Range<usize>),
}

impl Frames<'_, '_> {
    /// The next whole frame, or `None` once every whole frame was delivered
    /// (a partial one stays in the framer for the next read).
    ///
    /// # Errors
    /// [`FrameError`] for a frame over the maximum, detected before its bytes
    /// are buffered (the framer then holds at most the maximum plus one
    /// read's tail); the connection should be closed. Nothing is kept after
    /// it.
    #[allow(clippy::should_implement_trait)] // a lending, fallible iterator
    pub fn next(&mut self) -> Result<Option<&[u8]>, FrameError> {
        match self.find() {
            Ok(Some(Found::Held(r))) => Ok(Some(&self.framer.buf[r])),
            Ok(Some(Found::Read(r))) => Ok(Some(&self.data[r])),
            Ok(None) => Ok(None),
            Err(e) => {
                // A broken stream: nothing of it is worth keeping.
                self.pos = self.data.len();
                let f = &mut *self.framer;
                f.buf.clear();
                f.start = 0;
                f.since = None;
                Err(e)
            }
        }
    }

    fn find(&mut self) -> Result<Option<Found>, FrameError> {
        let f = &mut *self.framer;
        if f.start == f.buf.len() && f.start > 0 {
            // The last held frame was delivered: the buffer is empty again.
            f.buf.clear();
            f.start = 0;
            f.since = None;
        }
        // Frames held from before come first.
        while f.buffered() > 0 {
            match f.cut(&f.buf[f.start..])? {
                Cut::Frame { frame, used } => {
                    let at = f.start;
                    f.start += used;
                    if f.buffered() > 0 {
                        // The next frame's time counts from now: the caller
                        // held these frames, the peer did not.
                        f.since = Some(Instant::now());
                    }
                    return Ok(Some(Found::Held(at + frame.start..at + frame.end)));
                }
                Cut::Short { need } => {
                    let rest = &self.data[self.pos..];
                    if rest.is_empty() {
                        return Ok(None);
                    }
                    let take = f.take_for_partial(rest, need)?;
                    f.compact();
                    f.buf.extend_from_slice(&rest[..take]);
                    self.pos += take;
                }
            }
        }
        // Then frames straight from the read, lent without a copy.
        let rest = &self.data[self.pos..];
        if rest.is_empty() {
            return Ok(None);
        }
        match f.cut(rest)? {
            Cut::Frame { frame, used } => {
                let at = self.pos;
                self.pos += used;
                Ok(Some(Found::Read(at + frame.start..at + frame.end)))
            }
            Cut::Short { .. } => {
                f.hold(rest);
                self.pos = self.data.len();
                Ok(None)
            }
        }
    }
}

impl Drop for Frames<'_, '_> {
    /// Keeps what was not delivered: the caller stopped early.
    fn drop(&mut self) {
        let rest = &self.data[self.pos..];
        self.framer.hold(rest);
    }
}

/// A frame over the maximum is a broken peer: `Error::Io` of kind
/// `InvalidData`, so `?` works in code that returns [`crate::Result`].
impl From<FrameError> for crate::Error {
    fn from(e: FrameError) -> crate::Error {
        crate::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way of cutting `stream` into reads gives the same frames.
    fn frames_by_cuts(mut make: impl FnMut() -> Framer, stream: &[u8]) -> Vec<Vec<u8>> {
        let mut whole = Vec::new();
        make().feed(stream, |f| whole.push(f.to_vec())).unwrap();
        for cut in 0..=stream.len() {
            for cut2 in cut..=stream.len() {
                let mut f = make();
                let mut got = Vec::new();
                for part in [&stream[..cut], &stream[cut..cut2], &stream[cut2..]] {
                    f.feed(part, |fr| got.push(fr.to_vec())).unwrap();
                }
                assert_eq!(got, whole, "cut at {cut} and {cut2}");
            }
        }
        whole
    }

    #[test]
    fn lines_survive_any_cut() {
        let got = frames_by_cuts(|| Framer::lines(8), b"ab\r\n\ncd\nefgh\r\n");
        assert_eq!(got, [&b"ab"[..], b"", b"cd", b"efgh"]);
    }

    #[test]
    fn length_prefixes_survive_any_cut() {
        let got = frames_by_cuts(|| Framer::u16_be(8), &[0, 2, 1, 2, 0, 0, 0, 1, 9]);
        assert_eq!(got, [&[1u8, 2][..], &[], &[9]]);
        let got = frames_by_cuts(|| Framer::u32_be(8), &[0, 0, 0, 3, 7, 8, 9, 0, 0, 0, 1, 5]);
        assert_eq!(got, [&[7u8, 8, 9][..], &[5]]);
    }

    #[test]
    fn too_long_is_an_error_whole_or_in_pieces() {
        assert!(Framer::lines(4).feed(b"12345\n", |_| {}).is_err());
        let mut f = Framer::lines(4);
        assert!(f.feed(b"123", |_| {}).is_ok());
        assert_eq!(f.feed(b"45", |_| {}), Err(FrameError { len: 5, max: 4 }));
        // Exactly the maximum, with \r\n, is fine.
        assert!(Framer::lines(4).feed(b"1234\r\n", |_| {}).is_ok());
        assert!(Framer::u32_be(10).feed(&[0, 0, 0, 11], |_| {}).is_err());
    }

    #[test]
    fn stopping_early_and_resuming_gives_the_same_frames_at_any_cut() {
        let stream = b"ab\r\n\ncd\nefgh\r\nij\n";
        let whole = frames_by_cuts(|| Framer::lines(8), stream);
        for cut in 0..=stream.len() {
            // Pull one frame per read, then resume with empty reads.
            let mut f = Framer::lines(8);
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                if let Some(fr) = f.frames(part).next().unwrap() {
                    got.push(fr.to_vec());
                }
            }
            loop {
                let mut frames = f.frames(&[]);
                match frames.next().unwrap() {
                    Some(fr) => got.push(fr.to_vec()),
                    None => break,
                }
            }
            assert_eq!(got, whole, "cut at {cut}");
            assert_eq!(f.buffered(), 0);
        }
    }

    #[test]
    fn a_line_of_the_maximum_with_its_ending_split_is_accepted() {
        for cut in 0..=6 {
            let line = b"abcd\r\n";
            let mut f = Framer::lines(4);
            let mut got = Vec::new();
            f.feed(&line[..cut], |l| got.push(l.to_vec())).unwrap();
            f.feed(&line[cut..], |l| got.push(l.to_vec())).unwrap();
            assert_eq!(got, [b"abcd"], "cut at {cut}");
        }
    }

    #[test]
    fn the_maximum_is_enforced_before_buffering() {
        // 69,632 bytes of one line in 4 KiB reads: refused at the read that
        // would take it past 65,536, with that read not buffered.
        let mut f = Framer::lines(65536);
        let read = [b'x'; 4096];
        let mut most = 0;
        let err = (0..17)
            .find_map(|_| {
                let r = f.feed(&read, |_| {});
                most = most.max(f.buffered());
                r.err()
            })
            .expect("a line over the maximum");
        assert_eq!((err.len, err.max), (65536 + 4096, 65536));
        assert!(most <= 65536, "buffered {most}");
        assert_eq!(f.buffered(), 0, "nothing kept after the error");
        // A length prefix over the maximum: refused before its body arrives.
        let mut f = Framer::u32_be(1000);
        assert!(f.feed(&[0, 0, 0x10, 0], |_| {}).is_err());
        let e: crate::Error = FrameError { len: 2, max: 1 }.into();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn the_frame_deadline_counts_from_the_first_byte_of_the_frame() {
        use std::time::{Duration, Instant};
        let per = Duration::from_secs(10);
        let mut f = Framer::u16_be(100);
        assert_eq!(f.deadline(per, None), None);
        let idle = f.deadline(per, Some(per)).unwrap();
        assert!(idle > Instant::now());
        let before = Instant::now();
        f.feed(&[0, 5, 1], |_| {}).unwrap();
        let first = f.deadline(per, None).unwrap();
        assert!(first >= before + per);
        // More bytes of the same frame do not move it.
        f.feed(&[2], |_| {}).unwrap();
        assert_eq!(f.deadline(per, None), Some(first));
        f.feed(&[3, 4, 5], |_| {}).unwrap();
        assert_eq!(f.deadline(per, None), None, "frame complete: no deadline");
    }

    #[test]
    fn whole_frames_are_lent_from_the_read_without_copying() {
        let data = b"one\ntwo\npart";
        let mut f = Framer::lines(16);
        let mut ptrs = Vec::new();
        f.feed(data, |fr| ptrs.push(fr.as_ptr())).unwrap();
        assert_eq!(ptrs, [data.as_ptr(), data[4..].as_ptr()]);
        assert_eq!(f.buffered(), 4, "only the partial frame is kept");
    }
}
