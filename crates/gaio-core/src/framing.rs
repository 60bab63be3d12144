//! Frames over reads: cut a connection's byte stream into `\n` / `\r\n` lines or
//! big-endian length-prefixed frames, whatever sizes the reads come in.
//!
//! One [`Framer`] per connection keeps only the partial frame at the end of the
//! last read; frames that lie whole in one read are lent to you straight from
//! it (the swap buffer, say), without a copy. A frame over the maximum length is
//! an error: close the connection (a peer must not grow your memory).
//!
//! ```
//! use gaio_core::framing::Framer;
//! let mut f = Framer::lines(64);
//! let mut lines = Vec::new();
//! // Reads arrive cut anywhere.
//! for read in [&b"hel"[..], b"lo\r\nwor", b"ld\n\n"] {
//!     f.feed(read, |line| lines.push(line.to_vec()))?;
//! }
//! assert_eq!(lines, [&b"hello"[..], b"world", b""]);
//! # Ok::<(), gaio_core::framing::FrameError>(())
//! ```

use std::fmt;

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
/// the connection should be closed. The framer's state is unspecified after it.
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
    /// The partial frame (header included) carried to the next read.
    partial: Vec<u8>,
}

impl Framer {
    /// A framer of `framing` that refuses frames over `max` bytes.
    pub fn new(framing: Framing, max: usize) -> Framer {
        Framer {
            framing,
            max,
            partial: Vec::new(),
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

    /// Bytes of the partial frame held for the next read.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Gives back the partial frame's memory (e.g. for a connection gone idle);
    /// the bytes are kept.
    pub fn shrink(&mut self) {
        self.partial.shrink_to_fit();
    }

    /// Cuts `data` (the next bytes of the stream) into frames and calls `frame`
    /// with each complete one, in order. Frames whole within `data` are lent
    /// without copying; the tail that does not make a whole frame is kept for the
    /// next call.
    ///
    /// # Errors
    /// [`FrameError`] when a frame is longer than the maximum; frames before it
    /// were delivered.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        mut frame: impl FnMut(&[u8]),
    ) -> Result<(), FrameError> {
        if !self.partial.is_empty() || data.is_empty() {
            match self.complete_partial(&mut data, &mut frame)? {
                true => {}
                false => return Ok(()), // all of `data` went into the partial frame
            }
        }
        while !data.is_empty() {
            match self.framing {
                Framing::Lines => match data.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        let line = strip_cr(&data[..i]);
                        self.check(line.len())?;
                        frame(line);
                        data = &data[i + 1..];
                    }
                    None => {
                        // A '\r' may still be waiting for its '\n'.
                        self.check(strip_cr(data).len())?;
                        self.partial.extend_from_slice(data);
                        return Ok(());
                    }
                },
                _ => {
                    let h = self.framing.header();
                    if data.len() < h {
                        self.partial.extend_from_slice(data);
                        return Ok(());
                    }
                    let len = self.length(&data[..h]);
                    self.check(len)?;
                    if data.len() < h + len {
                        self.partial.extend_from_slice(data);
                        return Ok(());
                    }
                    frame(&data[h..h + len]);
                    data = &data[h + len..];
                }
            }
        }
        Ok(())
    }

    /// Moves bytes from `data` into the partial frame until it is complete (then
    /// delivers it and returns true, `data` advanced past it) or `data` runs out
    /// (false).
    fn complete_partial(
        &mut self,
        data: &mut &[u8],
        frame: &mut impl FnMut(&[u8]),
    ) -> Result<bool, FrameError> {
        if self.partial.is_empty() {
            return Ok(!data.is_empty());
        }
        match self.framing {
            Framing::Lines => match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.partial.extend_from_slice(&data[..i]);
                    *data = &data[i + 1..];
                    let line_len = strip_cr(&self.partial).len();
                    self.check(line_len)?;
                    frame(strip_cr(&self.partial));
                    self.partial.clear();
                    Ok(true)
                }
                None => {
                    self.partial.extend_from_slice(data);
                    *data = &[];
                    self.check(strip_cr(&self.partial).len())?;
                    Ok(false)
                }
            },
            _ => {
                let h = self.framing.header();
                if self.partial.len() < h {
                    let take = (h - self.partial.len()).min(data.len());
                    self.partial.extend_from_slice(&data[..take]);
                    *data = &data[take..];
                    if self.partial.len() < h {
                        return Ok(false);
                    }
                }
                let len = self.length(&self.partial[..h]);
                self.check(len)?;
                let take = (h + len - self.partial.len()).min(data.len());
                self.partial.extend_from_slice(&data[..take]);
                *data = &data[take..];
                if self.partial.len() < h + len {
                    return Ok(false);
                }
                frame(&self.partial[h..]);
                self.partial.clear();
                Ok(!data.is_empty())
            }
        }
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
    fn whole_frames_are_lent_from_the_read_without_copying() {
        let data = b"one\ntwo\npart";
        let mut f = Framer::lines(16);
        let mut ptrs = Vec::new();
        f.feed(data, |fr| ptrs.push(fr.as_ptr())).unwrap();
        assert_eq!(ptrs, [data.as_ptr(), data[4..].as_ptr()]);
        assert_eq!(f.buffered(), 4, "only the partial frame is kept");
    }
}
