//! The bodies of `POST /v1/messages` and of the answers to it and to polls (spec §21, §27.7), in
//! either encoding ([`Encoding`]):
//!
//! - **NDJSON** ([`NDJSON_MEDIA_TYPE`](crate::wire::NDJSON_MEDIA_TYPE)): one JSON envelope per
//!   line, each followed by `\n`; empty lines are skipped.
//! - **binary** ([`BINARY_MEDIA_TYPE`](crate::wire::BINARY_MEDIA_TYPE)): binary envelopes
//!   ([`crate::binary_envelope`]), each preceded by its length in bytes as a 4-byte big-endian
//!   unsigned integer ([`LENGTH_PREFIX_LEN`]); nothing before the first, between them or after
//!   the last. An empty body carries no envelope.
//!
//! Reading ([`frames`]) is safe on hostile bytes: it never allocates (it yields slices of the
//! body) and never panics. A binary body's framing fails with a typed [`BodyError`] whose
//! [`code`](BodyError::code) is what the receiver answers, as for a bad NDJSON line: the
//! envelopes before it are processed, then the error is answered. A length past the end of the
//! body, a length prefix cut short, or a zero length ends the body (`INVALID_MESSAGE`: nothing
//! after it can be framed); a length over the frame limit within the body is answered
//! `MESSAGE_TOO_LARGE` and skipped, as an NDJSON line over the limit is, and reading goes on.

use crate::error::ErrorCode;
use crate::wire::Encoding;

/// Bytes of the length before each envelope of a binary body.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Why a binary body's framing failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Fewer than [`LENGTH_PREFIX_LEN`] bytes were left where a length was due.
    #[error("a length prefix is cut short: {left} bytes left")]
    TruncatedLength {
        /// The bytes left.
        left: usize,
    },
    /// A length of zero: no envelope is empty.
    #[error("an envelope of length 0")]
    EmptyFrame,
    /// A length past the end of the body.
    #[error("an envelope of {len} bytes with {left} bytes left in the body")]
    TruncatedFrame {
        /// The length read.
        len: usize,
        /// The bytes left after it.
        left: usize,
    },
    /// A length over the receiver's frame limit (the envelope is skipped).
    #[error("an envelope of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The length read.
        len: usize,
        /// The receiver's frame limit.
        max: usize,
    },
}

impl BodyError {
    /// The spec error code answered for it: `MESSAGE_TOO_LARGE` for an envelope over the limit,
    /// `INVALID_MESSAGE` for the rest.
    pub fn code(&self) -> ErrorCode {
        match self {
            BodyError::FrameTooLarge { .. } => ErrorCode::MessageTooLarge,
            BodyError::TruncatedLength { .. }
            | BodyError::EmptyFrame
            | BodyError::TruncatedFrame { .. } => ErrorCode::InvalidMessage,
        }
    }
}

/// Bytes a body adds to an envelope it carries: the `\n` of NDJSON, the length of binary.
pub fn overhead(encoding: Encoding) -> usize {
    match encoding {
        Encoding::Json => 1,
        Encoding::Binary => LENGTH_PREFIX_LEN,
    }
}

/// Appends one envelope to a body in `encoding`. The caller gives frames in that encoding; a
/// frame of 4 GiB or more cannot be framed in binary and is left out (no frame limit admits one).
pub fn push(body: &mut Vec<u8>, frame: &[u8], encoding: Encoding) {
    match encoding {
        Encoding::Json => {
            body.extend_from_slice(frame);
            body.push(b'\n');
        }
        Encoding::Binary => {
            let Ok(len) = u32::try_from(frame.len()) else { return };
            body.extend_from_slice(&len.to_be_bytes());
            body.extend_from_slice(frame);
        }
    }
}

/// A body in `encoding` carrying `frames`, in order.
pub fn encode<'a>(frames: impl IntoIterator<Item = &'a [u8]>, encoding: Encoding) -> Vec<u8> {
    let mut body = Vec::new();
    for frame in frames {
        push(&mut body, frame, encoding);
    }
    body
}

/// The envelopes of `body`, read as `encoding`, with `max_frame_bytes` the receiver's frame
/// limit. NDJSON lines are yielded whatever their length (the envelope decoder checks it); a
/// binary body yields its envelopes and at most one framing error that ends it, or
/// [`BodyError::FrameTooLarge`] for each envelope over the limit.
pub fn frames(body: &[u8], encoding: Encoding, max_frame_bytes: usize) -> Frames<'_> {
    Frames { rest: body, encoding, max_frame_bytes }
}

/// The iterator of [`frames`].
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    rest: &'a [u8],
    encoding: Encoding,
    max_frame_bytes: usize,
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<&'a [u8], BodyError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.encoding {
            Encoding::Json => self.next_line().map(Ok),
            Encoding::Binary => self.next_binary(),
        }
    }
}

impl<'a> Frames<'a> {
    fn next_line(&mut self) -> Option<&'a [u8]> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let (line, rest) = match self.rest.iter().position(|&b| b == b'\n') {
                Some(at) => {
                    let (line, rest) = self.rest.split_at(at);
                    (line, rest.get(1..).unwrap_or(&[]))
                }
                None => (self.rest, &[][..]),
            };
            self.rest = rest;
            if !line.is_empty() {
                return Some(line);
            }
        }
    }

    fn next_binary(&mut self) -> Option<Result<&'a [u8], BodyError>> {
        if self.rest.is_empty() {
            return None;
        }
        let Some((prefix, after)) = self.rest.split_first_chunk::<LENGTH_PREFIX_LEN>() else {
            let left = self.rest.len();
            self.rest = &[];
            return Some(Err(BodyError::TruncatedLength { left }));
        };
        let len = usize::try_from(u32::from_be_bytes(*prefix)).unwrap_or(usize::MAX);
        if len == 0 {
            self.rest = &[];
            return Some(Err(BodyError::EmptyFrame));
        }
        if len > after.len() {
            self.rest = &[];
            return Some(Err(BodyError::TruncatedFrame { len, left: after.len() }));
        }
        let (frame, rest) = after.split_at(len);
        self.rest = rest;
        if len > self.max_frame_bytes {
            return Some(Err(BodyError::FrameTooLarge { len, max: self.max_frame_bytes }));
        }
        Some(Ok(frame))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn read(body: &[u8], encoding: Encoding, max: usize) -> Vec<Result<Vec<u8>, BodyError>> {
        frames(body, encoding, max).map(|r| r.map(<[u8]>::to_vec)).collect()
    }

    #[test]
    fn a_binary_body_is_length_prefixed_envelopes() {
        let body = encode([&[1u8, 2, 3][..], &[1u8][..]], Encoding::Binary);
        assert_eq!(body, [0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 1, 1]);
        assert_eq!(read(&body, Encoding::Binary, 3), [Ok(vec![1, 2, 3]), Ok(vec![1])]);
        assert!(read(&[], Encoding::Binary, 3).is_empty());
    }

    #[test]
    fn an_ndjson_body_is_lines_and_skips_empty_ones() {
        let body = encode([&b"{}"[..], &b"{\"a\":1}"[..]], Encoding::Json);
        assert_eq!(body, b"{}\n{\"a\":1}\n");
        let lines = read(b"\n{}\n\n{\"a\":1}", Encoding::Json, 1);
        assert_eq!(lines, [Ok(b"{}".to_vec()), Ok(b"{\"a\":1}".to_vec())]);
        assert_eq!(overhead(Encoding::Json), 1);
        assert_eq!(overhead(Encoding::Binary), LENGTH_PREFIX_LEN);
    }

    #[test]
    fn a_length_cut_short_ends_the_body() {
        let mut body = encode([&[1u8, 9][..]], Encoding::Binary);
        body.extend_from_slice(&[0, 0]);
        let got = read(&body, Encoding::Binary, 10);
        assert_eq!(got, [Ok(vec![1, 9]), Err(BodyError::TruncatedLength { left: 2 })]);
        assert_eq!(BodyError::TruncatedLength { left: 2 }.code(), ErrorCode::InvalidMessage);
    }

    #[test]
    fn a_length_past_the_end_ends_the_body() {
        let got = read(&[0, 0, 0, 5, 1, 2], Encoding::Binary, 10);
        assert_eq!(got, [Err(BodyError::TruncatedFrame { len: 5, left: 2 })]);
        // The largest length there is: refused without allocating anything.
        let got = read(&[0xff, 0xff, 0xff, 0xff, 1], Encoding::Binary, usize::MAX);
        assert_eq!(got, [Err(BodyError::TruncatedFrame { len: 0xffff_ffff, left: 1 })]);
        assert_eq!(got[0].clone().unwrap_err().code(), ErrorCode::InvalidMessage);
    }

    #[test]
    fn a_zero_length_ends_the_body() {
        let got = read(&[0, 0, 0, 0, 0, 0, 0, 1, 1], Encoding::Binary, 10);
        assert_eq!(got, [Err(BodyError::EmptyFrame)]);
        assert_eq!(BodyError::EmptyFrame.code(), ErrorCode::InvalidMessage);
    }

    #[test]
    fn an_envelope_over_the_limit_is_refused_and_skipped() {
        let body = encode([&[1u8; 5][..], &[1u8, 2][..]], Encoding::Binary);
        let got = read(&body, Encoding::Binary, 4);
        assert_eq!(got, [Err(BodyError::FrameTooLarge { len: 5, max: 4 }), Ok(vec![1, 2])]);
        assert_eq!(got[0].clone().unwrap_err().code(), ErrorCode::MessageTooLarge);
    }

    proptest! {
        #[test]
        fn a_body_reads_back_the_frames_it_was_made_of(
            frames_in in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 1..64), 0..8),
        ) {
            let body = encode(frames_in.iter().map(Vec::as_slice), Encoding::Binary);
            let back: Vec<Vec<u8>> = frames(&body, Encoding::Binary, 64)
                .map(|r| r.map(<[u8]>::to_vec))
                .collect::<Result<_, _>>()
                .unwrap();
            prop_assert_eq!(back, frames_in);
        }

        #[test]
        fn any_bytes_read_without_panic_and_within_the_body(
            body in proptest::collection::vec(any::<u8>(), 0..256),
            max in 0usize..300,
        ) {
            let mut total = 0usize;
            let mut errors = 0usize;
            for r in frames(&body, Encoding::Binary, max) {
                match r {
                    Ok(frame) => {
                        prop_assert!(!frame.is_empty() && frame.len() <= max);
                        total += frame.len() + LENGTH_PREFIX_LEN;
                    }
                    Err(BodyError::FrameTooLarge { len, .. }) => total += len + LENGTH_PREFIX_LEN,
                    Err(_) => errors += 1,
                }
            }
            prop_assert!(total <= body.len());
            prop_assert!(errors <= 1);
        }
    }
}
