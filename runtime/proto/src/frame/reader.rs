//! [`FrameReader`]: the bytes of a stream as they arrive, taken off as whole frames in order.

use bytes::BytesMut;
use serde::de::DeserializeOwned;

use super::{decode_payload, peek_len, FrameError, HEADER_LEN};

/// Buffers what a stream delivered and decodes complete frames from it, in order.
///
/// Each complete frame is split off the buffer (no copy) and decoded with the frame lent to
/// its page data ([`crate::wire::PageData`]): a page in a decoded message is a slice of the
/// buffer the stream's bytes were copied into once, not a copy of its own. When a frame's
/// header says how long it is, room for all of it is made at once, so a frame split over many
/// reads moves once; a frame of [`LARGE_FRAME`] bytes or more (a run of pages) is read into a
/// buffer used again (`crate::buffers`) instead of fresh memory.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: BytesMut,
    /// A large frame (at least [`LARGE_FRAME`] bytes, its length prefix included) being read
    /// into a pooled buffer (`crate::buffers`), and its whole length: its bytes go there, not
    /// into `buf`, until it is complete. It is always the first frame not yet decoded.
    large: Option<(Vec<u8>, usize)>,
    /// Set by a bad frame: the stream cannot be read further.
    failed: Option<String>,
}

/// Frames this long or longer (runs of pages) are read into buffers used again
/// (`crate::buffers`) rather than into fresh memory.
pub const LARGE_FRAME: usize = 64 << 10;

impl FrameReader {
    /// An empty reader with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> FrameReader {
        FrameReader { buf: BytesMut::with_capacity(capacity), large: None, failed: None }
    }

    /// Appends bytes read from the stream.
    pub fn extend(&mut self, mut bytes: &[u8]) {
        if let Some((frame, len)) = &mut self.large {
            let n = (*len - frame.len()).min(bytes.len());
            frame.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if bytes.is_empty() {
                return;
            }
        }
        if let Ok(Some(len)) = peek_len(&self.buf) {
            if self.start_large(HEADER_LEN + len) {
                self.extend(bytes);
                return;
            }
            // Room for the rest of the frame in progress (bounded by `MAX_FRAME_LEN`), once.
            let rest = (HEADER_LEN + len).saturating_sub(self.buf.len());
            self.buf.reserve(rest.max(bytes.len()));
        }
        self.buf.extend_from_slice(bytes);
    }

    /// If `buf` holds only the start of a large frame of `whole` bytes, moves it into a pooled
    /// buffer, where the rest will go.
    fn start_large(&mut self, whole: usize) -> bool {
        if self.large.is_some() || whole < LARGE_FRAME || self.buf.len() >= whole {
            return false;
        }
        let mut frame = crate::buffers::take();
        frame.extend_from_slice(&self.buf);
        self.buf.clear();
        self.large = Some((frame, whole));
        true
    }

    /// Appends every chunk of one read, in order, and empties them: the stream's own buffers
    /// (quinn's, one packet's stream data each) go back as soon as their bytes are copied.
    pub fn extend_from_chunks<B: AsRef<[u8]> + Default>(&mut self, chunks: &mut [B]) {
        for chunk in chunks {
            self.extend(std::mem::take(chunk).as_ref());
        }
    }

    /// The next complete frame, `Ok(None)` when the buffered bytes end inside one. After an
    /// error the stream cannot be read further (the caller closes it): every later call is
    /// that error again.
    pub fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        if let Some(why) = &self.failed {
            return Err(FrameError::Malformed(why.clone()));
        }
        let frame = match self.large.take() {
            Some((frame, len)) if frame.len() == len => crate::buffers::share(frame),
            Some(partial) => {
                self.large = Some(partial);
                return Ok(None);
            }
            None => {
                let len = match peek_len(&self.buf) {
                    Ok(Some(len)) => len,
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(self.fail(e)),
                };
                if self.buf.len() < HEADER_LEN + len {
                    self.start_large(HEADER_LEN + len);
                    return Ok(None);
                }
                self.buf.split_to(HEADER_LEN + len).freeze()
            }
        };
        let decoded = crate::page_data::lend_frame(&frame, || decode_payload::<T>(&frame[HEADER_LEN..]));
        decoded.map(Some).map_err(|e| self.fail(e))
    }

    fn fail(&mut self, e: FrameError) -> FrameError {
        self.failed = Some(e.to_string());
        e
    }

    /// Bytes buffered and not yet decoded.
    pub fn pending(&self) -> usize {
        self.buf.len() + self.large.as_ref().map_or(0, |(frame, _)| frame.len())
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
                1 => ToCoordinator::DowngradeAck { page: i, data: Some(PageData::from(vec![i as u8; 4096])) },
                _ => ToCoordinator::Ping { req: i, payload: vec![i as u8; (i as usize * 37) % 300] },
            })
            .collect()
    }

    /// Feeds `bytes` to `r` in reads of `step` bytes, decoding after each; the messages and
    /// what is left buffered.
    pub(super) fn read_in_steps(mut r: FrameReader, bytes: &[u8], step: usize) -> (Vec<ToCoordinator>, usize) {
        let mut out = Vec::new();
        for piece in bytes.chunks(step) {
            r.extend(piece);
            while let Some(m) = r.next::<ToCoordinator>().unwrap() {
                out.push(m);
            }
        }
        (out, r.pending())
    }

    /// Whatever the sizes of the reads, the same messages come out in the same order, and
    /// nothing stays buffered at the end.
    #[test]
    fn reads_of_any_size_give_the_frames_in_order() {
        let msgs = messages();
        let bytes = frames(&msgs);
        for step in [1, 3, 7, 100, 1200, 4099, 65536, bytes.len()] {
            let (out, pending) = read_in_steps(FrameReader::with_capacity(16), &bytes, step);
            assert_eq!(out, msgs, "reads of {step} bytes");
            assert_eq!(pending, 0, "reads of {step} bytes");
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

    /// Decoded frames do not pile up: with frames decoded as they complete, the buffer never
    /// holds more than twice a frame and a read beyond what is pending (its room included).
    #[test]
    fn the_buffer_stays_bounded_by_what_is_pending() {
        let msgs = messages();
        let bytes = frames(&msgs);
        let mut r = FrameReader::default();
        for piece in bytes.chunks(1000) {
            r.extend(piece);
            let bound = 2 * (4100 + 1000);
            assert!(r.buf.capacity() <= bound, "room for {} bytes with {} pending", r.buf.capacity(), r.pending());
            while r.next::<ToCoordinator>().unwrap().is_some() {}
        }
        assert_eq!(r.pending(), 0);
    }

    /// A page in a decoded message is a slice of the reader's buffer, not a copy; the bytes
    /// are the same as a copying decode's.
    #[test]
    fn page_data_is_a_slice_of_the_buffer() {
        let msgs = messages();
        let mut r = FrameReader::default();
        r.extend(&frames(&msgs));
        let mut shared = 0;
        for want in &msgs {
            let got = r.next::<ToCoordinator>().unwrap().unwrap();
            if let ToCoordinator::DowngradeAck { data: Some(d), .. } = &got {
                assert!(d.is_shared());
                shared += 1;
            }
            assert_eq!(&got, want);
        }
        assert_eq!(shared, msgs.len() / 3);
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

#[cfg(test)]
mod large_tests {
    use super::*;
    use crate::encode_frame;
    use crate::wire::{PageData, ToCoordinator};

    /// Small frames around runs of 20 and 255 pages (80 KiB and 1 MiB frames).
    fn messages() -> Vec<ToCoordinator> {
        let run = |first: u64, count: u32| ToCoordinator::DowngradeAckRun {
            first,
            count,
            data: Some(PageData::from((0..count as usize * 4096).map(|i| (i / 4096 + first as usize) as u8).collect::<Vec<u8>>())),
        };
        vec![
            ToCoordinator::Barrier { epoch: 1 },
            run(10, 20),
            run(30, 255),
            ToCoordinator::Ping { req: 2, payload: vec![9; 100] },
            run(300, 255),
            run(600, 20),
            ToCoordinator::Barrier { epoch: 3 },
        ]
    }

    /// Whatever the sizes of the reads, large frames (read into pooled buffers) and small ones
    /// come out whole and in order, their page data shared, nothing left over.
    #[test]
    fn large_frames_come_out_whole_and_in_order() {
        let msgs = messages();
        let mut bytes = Vec::new();
        for m in &msgs {
            encode_frame(m, &mut bytes).unwrap();
        }
        for step in [1000, 4096, 65536, 100_000, 1 << 20, bytes.len()] {
            let (out, pending) = super::tests::read_in_steps(FrameReader::default(), &bytes, step);
            assert_eq!(out, msgs, "reads of {step} bytes");
            assert_eq!(pending, 0, "reads of {step} bytes");
            for m in &out {
                if let ToCoordinator::DowngradeAckRun { data: Some(d), .. } = m {
                    assert!(d.is_shared(), "reads of {step} bytes: a run's data is a slice of its frame");
                }
            }
        }
    }

    /// A large frame goes into a pooled buffer: the reader's own buffer never grows to hold it.
    #[test]
    fn a_large_frame_is_not_read_into_the_readers_own_buffer() {
        let mut bytes = Vec::new();
        for m in &messages() {
            encode_frame(m, &mut bytes).unwrap();
        }
        let mut r = FrameReader::default();
        for piece in bytes.chunks(16384) {
            r.extend(piece);
            assert!(r.buf.capacity() < LARGE_FRAME + 16384, "the reader's buffer holds {} bytes", r.buf.capacity());
            while r.next::<ToCoordinator>().unwrap().is_some() {}
        }
        assert_eq!(r.pending(), 0);
    }
}
