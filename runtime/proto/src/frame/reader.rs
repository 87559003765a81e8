//! [`FrameReader`]: the bytes of a stream as they arrive, taken off as whole frames in order.

use serde::de::DeserializeOwned;

use super::{decode_frame, FrameError};

/// Buffers what a stream delivered and decodes complete frames from it, in order.
///
/// Decoded frames are only marked consumed: the consumed prefix is dropped when it is at least
/// as long as what is still buffered (or is everything), so the bytes a read delivered move
/// at most once however many frames they hold, and a frame split over many reads is copied
/// into the buffer once.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already decoded.
    start: usize,
}

impl FrameReader {
    /// An empty reader with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> FrameReader {
        FrameReader { buf: Vec::with_capacity(capacity), start: 0 }
    }

    /// Appends bytes read from the stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() - self.start {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Appends every chunk of one read, in order, and empties them: the stream's own buffers
    /// (quinn's, one packet's stream data each) go back as soon as their bytes are copied.
    pub fn extend_from_chunks<B: AsRef<[u8]> + Default>(&mut self, chunks: &mut [B]) {
        for chunk in chunks {
            self.extend(std::mem::take(chunk).as_ref());
        }
    }

    /// The next complete frame, `Ok(None)` when the buffered bytes end inside one. After an
    /// error the stream cannot be read further (the caller closes it).
    pub fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let Some((msg, used)) = decode_frame::<T>(&self.buf[self.start..])? else { return Ok(None) };
        self.start += used;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(msg))
    }

    /// Bytes buffered and not yet decoded.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode_frame;
    use crate::wire::{PageData, ToCoordinator};

    fn frames(msgs: &[ToCoordinator]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for m in msgs {
            encode_frame(m, &mut bytes).unwrap();
        }
        bytes
    }

    fn messages() -> Vec<ToCoordinator> {
        (0..40)
            .map(|i| match i % 3 {
                0 => ToCoordinator::Barrier { epoch: i },
                1 => ToCoordinator::DowngradeAck { page: i, data: Some(PageData(vec![i as u8; 4096])) },
                _ => ToCoordinator::Ping { req: i, payload: vec![i as u8; (i as usize * 37) % 300] },
            })
            .collect()
    }

    /// Whatever the sizes of the reads, the same messages come out in the same order, and
    /// nothing stays buffered at the end.
    #[test]
    fn reads_of_any_size_give_the_frames_in_order() {
        let msgs = messages();
        let bytes = frames(&msgs);
        for step in [1, 3, 7, 100, 1200, 4099, 65536, bytes.len()] {
            let mut r = FrameReader::with_capacity(16);
            let mut out = Vec::new();
            for piece in bytes.chunks(step) {
                r.extend(piece);
                while let Some(m) = r.next::<ToCoordinator>().unwrap() {
                    out.push(m);
                }
            }
            assert_eq!(out, msgs, "reads of {step} bytes");
            assert_eq!(r.pending(), 0, "reads of {step} bytes");
        }
    }

    /// Chunks of a read are appended in order and left empty.
    #[test]
    fn chunks_are_taken_in_order() {
        let msgs = messages();
        let bytes = frames(&msgs);
        let mut chunks: Vec<Vec<u8>> = bytes.chunks(1200).map(<[u8]>::to_vec).collect();
        let mut r = FrameReader::default();
        r.extend_from_chunks(&mut chunks);
        assert!(chunks.iter().all(Vec::is_empty));
        let mut out = Vec::new();
        while let Some(m) = r.next::<ToCoordinator>().unwrap() {
            out.push(m);
        }
        assert_eq!(out, msgs);
    }

    /// The consumed prefix does not pile up: with frames decoded as they complete, the buffer
    /// never holds more than a frame and a read beyond what is pending.
    #[test]
    fn the_buffer_stays_bounded_by_what_is_pending() {
        let msgs = messages();
        let bytes = frames(&msgs);
        let mut r = FrameReader::default();
        for piece in bytes.chunks(1000) {
            r.extend(piece);
            assert!(r.buf.len() <= 2 * (r.pending() + 1000), "{} buffered for {} pending", r.buf.len(), r.pending());
            while r.next::<ToCoordinator>().unwrap().is_some() {}
        }
        assert_eq!(r.pending(), 0);
    }

    /// A bad frame is an error, and so is every later read (the stream is unusable).
    #[test]
    fn a_bad_frame_is_an_error() {
        let mut r = FrameReader::default();
        r.extend(&frames(&messages()[..2]));
        r.extend(&[3, 0, 0, 0, 0xff, 0xff, 0xff]);
        assert!(r.next::<ToCoordinator>().unwrap().is_some());
        assert!(r.next::<ToCoordinator>().unwrap().is_some());
        assert!(r.next::<ToCoordinator>().is_err());
        assert!(r.next::<ToCoordinator>().is_err());
    }
}
