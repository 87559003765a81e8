//! Length-prefixed frames: a 4-byte little-endian payload length, then a postcard-encoded
//! message.
//!
//! [`decode_frame`] is a pure function over a byte buffer in the style of mini-redis's
//! `Frame::parse`: it returns `Ok(None)` when more bytes are needed, an error for a frame that
//! can never be valid, and never panics, whatever the input (see the property tests below).

use serde::{de::DeserializeOwned, Serialize};

mod queue;
mod reader;
pub use queue::{FrameQueue, PageBytes, SPLIT_MIN};
pub use reader::{FrameReader, LARGE_FRAME};

/// Largest payload a frame may carry (1 MiB: 256 pages with headroom). Anything larger is an
/// error before a single payload byte is buffered.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// A frame that cannot be decoded or encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME_LEN`] bytes.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload is not a valid message, or has trailing bytes.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Appends `msg` as one frame to `out`. On error `out` is left exactly as it was: frames
/// queued before stay queued.
pub fn encode_frame<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    // The exact size first (a walk over the message that copies nothing), so the one copy of
    // its bytes goes into room reserved once, not into a buffer that doubles and moves.
    let size = postcard::experimental::serialized_size(msg).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if size > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len: size, max: MAX_FRAME_LEN });
    }
    out.reserve(HEADER_LEN + size);
    out.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(e) = postcard::to_io(msg, &mut *out) {
        out.truncate(start);
        return Err(FrameError::Malformed(e.to_string()));
    }
    let len = out.len() - start - HEADER_LEN;
    debug_assert_eq!(len, size, "postcard's size walk and its encoding disagree");
    let len = u32::try_from(len).expect("bounded by MAX_FRAME_LEN (checked above)");
    out[start..start + HEADER_LEN].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Returns the payload length announced by the header at the start of `buf`, if complete.
pub fn peek_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else { return Ok(None) };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len, max: MAX_FRAME_LEN });
    }
    Ok(Some(len))
}

/// Decodes one frame from the start of `buf`.
///
/// Returns `Ok(Some((msg, consumed)))` for a complete frame, `Ok(None)` when `buf` holds only a
/// prefix of a frame, and an error for an oversized or malformed frame.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(len) = peek_len(buf)? else { return Ok(None) };
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else { return Ok(None) };
    let msg = decode_payload(payload)?;
    Ok(Some((msg, HEADER_LEN + len)))
}

/// Decodes a frame's payload (without its header). Trailing bytes are an error.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes::<T>(payload)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!("{} trailing bytes after the message", rest.len())));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::*;
    use proptest::prelude::*;

    fn samples() -> Vec<ToCoordinator> {
        vec![
            ToCoordinator::Attach(AttachRequest {
                session: "s".into(),
                size: 8192,
                nprocs: 4,
                label: "pid 1".into(),
                peer: Some([7; 32]),
            }),
            ToCoordinator::Barrier { epoch: 7 },
            ToCoordinator::SemaphoreWait { req: 1, name: "lock".into(), initial: 1 },
            ToCoordinator::DowngradeAck { page: 3, data: Some(PageData::from(vec![7; 4096])) },
            ToCoordinator::Ping { req: 9, payload: vec![1, 2, 3] },
        ]
    }

    #[test]
    fn round_trip() {
        for msg in samples() {
            let mut buf = Vec::new();
            encode_frame(&msg, &mut buf).unwrap();
            let (back, used) = decode_frame::<ToCoordinator>(&buf).unwrap().unwrap();
            assert_eq!(back, msg);
            assert_eq!(used, buf.len());
            // Every strict prefix is incomplete, never an error or a wrong message.
            for cut in 0..buf.len() {
                assert!(decode_frame::<ToCoordinator>(&buf[..cut]).unwrap().is_none());
            }
        }
    }

    #[test]
    fn oversized_header_is_rejected_before_payload() {
        let buf = (MAX_FRAME_LEN as u32 + 1).to_le_bytes();
        assert!(matches!(decode_frame::<ToProcess>(&buf), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn oversized_message_is_not_encoded() {
        let msg = ToCoordinator::Ping { req: 1, payload: vec![0; MAX_FRAME_LEN + 1] };
        let mut buf = vec![1, 2];
        assert!(matches!(encode_frame(&msg, &mut buf), Err(FrameError::TooLarge { .. })));
        assert_eq!(buf, vec![1, 2], "a failed encode leaves the buffer as it was");
    }

    #[test]
    fn a_message_that_fails_to_serialize_keeps_the_frames_queued_before() {
        struct Refuses;
        impl Serialize for Refuses {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("refused"))
            }
        }
        let mut buf = Vec::new();
        encode_frame(&ToCoordinator::Detach, &mut buf).unwrap();
        let before = buf.clone();
        assert!(matches!(encode_frame(&Refuses, &mut buf), Err(FrameError::Malformed(_))));
        assert_eq!(buf, before);
        assert!(decode_frame::<ToCoordinator>(&buf).unwrap().is_some());
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut buf = Vec::new();
        encode_frame(&ToCoordinator::Detach, &mut buf).unwrap();
        buf[0] += 1;
        buf.push(0);
        assert!(matches!(decode_frame::<ToCoordinator>(&buf), Err(FrameError::Malformed(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_frame::<ToCoordinator>(&bytes);
            let _ = decode_frame::<ToProcess>(&bytes);
        }

        #[test]
        fn random_payloads_behind_a_valid_header_never_panic(
            payload in proptest::collection::vec(any::<u8>(), 0..600)
        ) {
            let mut buf = (payload.len() as u32).to_le_bytes().to_vec();
            buf.extend_from_slice(&payload);
            let _ = decode_frame::<ToCoordinator>(&buf);
            let _ = decode_frame::<ToProcess>(&buf);
        }

        #[test]
        fn mutated_valid_frames_never_panic(idx in 0usize..5, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
            let mut buf = Vec::new();
            encode_frame(&samples()[idx], &mut buf).unwrap();
            for (pos, val) in flips {
                let n = buf.len();
                buf[pos % n] ^= val;
            }
            let n = buf.len();
            buf.truncate(cut % (n + 1));
            let _ = decode_frame::<ToCoordinator>(&buf);
        }
    }
}
