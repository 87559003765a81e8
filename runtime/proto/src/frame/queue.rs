//! [`FrameQueue`]: frames waiting for one stream write, with page data handed over without a
//! copy.
//!
//! [`crate::encode_frame`] copies a message's page data into the frame buffer, and a writer
//! that hands each batch to quinn starts the next one in a fresh buffer: a 1 MiB run cost a
//! 1 MiB copy into memory the kernel had to fault in and zero first (`perf record -e
//! page-faults` of the contrast example on 2 processes: the frame encoders were 18% of all
//! page faults, in the processes' runtime threads and in the coordinator). A queue keeps the
//! small parts of its frames in one buffer and each message's page data (at least
//! [`SPLIT_MIN`] bytes) as a chunk of its own, the very allocation the message carried; the
//! chunks, in order, are byte for byte what `encode_frame` writes.

use bytes::{Bytes, BytesMut};
use postcard::ser_flavors::Flavor;
use serde::Serialize;

use super::{FrameError, HEADER_LEN, MAX_FRAME_LEN};
use crate::wire::PageData;

/// Page data at least this long travels as its own chunk (one page; shorter data is copied).
pub const SPLIT_MIN: usize = crate::PAGE_SIZE;

/// A message whose page contents a [`FrameQueue`] may take instead of copying (implemented
/// in `wire.rs`, beside each message type's `page_bytes`).
pub trait PageBytes: Serialize {
    /// The page contents the message carries, if any.
    fn page_data_mut(&mut self) -> Option<&mut PageData>;
}

/// Frames waiting for one stream write (see the module docs).
#[derive(Debug, Default)]
pub struct FrameQueue {
    /// Bytes after the last chunk split off.
    buf: BytesMut,
    /// Complete chunks, in order, before `buf`.
    chunks: Vec<Bytes>,
    /// Bytes queued in all.
    queued: usize,
}

impl FrameQueue {
    /// An empty queue.
    pub fn new() -> FrameQueue {
        FrameQueue::default()
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.queued
    }

    /// Nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Appends `msg` as one frame (the bytes [`crate::encode_frame`] writes); its page data,
    /// if at least [`SPLIT_MIN`] bytes, becomes a chunk of its own without a copy. On error
    /// the queue is as it was.
    pub fn push<M: PageBytes>(&mut self, mut msg: M) -> Result<(), FrameError> {
        let size = postcard::experimental::serialized_size(&msg).map_err(|e| FrameError::Malformed(e.to_string()))?;
        if size > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge { len: size, max: MAX_FRAME_LEN });
        }
        let split = msg.page_data_mut().map_or(0, |d| d.len());
        let split = (split >= SPLIT_MIN).then_some(split);
        let start = self.buf.len();
        self.buf.reserve(HEADER_LEN + size - split.unwrap_or(0));
        let len = u32::try_from(size).expect("bounded by MAX_FRAME_LEN (checked above)");
        self.buf.extend_from_slice(&len.to_le_bytes());
        let flavor = SplitFlavor { buf: &mut self.buf, skip: split, at: None };
        let at = match postcard::serialize_with_flavor(&msg, flavor) {
            Ok(at) => at,
            Err(e) => {
                self.buf.truncate(start);
                return Err(FrameError::Malformed(e.to_string()));
            }
        };
        if let (Some(at), Some(d)) = (at, msg.page_data_mut()) {
            // The page data is the only byte string of a page message, so the extension the
            // flavor skipped was this one.
            let data = std::mem::take(d).into_bytes();
            self.chunks.push(self.buf.split_to(at).freeze());
            self.chunks.push(data);
        }
        self.queued += HEADER_LEN + size;
        Ok(())
    }

    /// Everything queued, in order, as chunks for one write; the queue is empty after.
    pub fn take(&mut self) -> Vec<Bytes> {
        if !self.buf.is_empty() {
            self.chunks.push(self.buf.split().freeze());
        }
        self.queued = 0;
        std::mem::take(&mut self.chunks)
    }
}

/// A postcard output into `buf` that leaves out the first byte string of exactly `skip`
/// bytes and reports where it would have been.
struct SplitFlavor<'a> {
    buf: &'a mut BytesMut,
    skip: Option<usize>,
    at: Option<usize>,
}

impl Flavor for SplitFlavor<'_> {
    type Output = Option<usize>;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.buf.extend_from_slice(&[byte]);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if self.at.is_none() && Some(data.len()) == self.skip {
            self.at = Some(self.buf.len());
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Option<usize>> {
        Ok(self.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{GrantData, Mode, ToCoordinator, ToProcess};
    use crate::{decode_frame, encode_frame, PAGE_SIZE};

    fn joined(q: &mut FrameQueue) -> Vec<u8> {
        q.take().concat()
    }

    fn page(b: u8, pages: usize) -> PageData {
        PageData::from((0..pages * PAGE_SIZE).map(|i| b.wrapping_add(i as u8)).collect::<Vec<u8>>())
    }

    fn messages() -> Vec<ToProcess> {
        vec![
            ToProcess::Invalidate { page: 3 },
            ToProcess::DataRun { req: 7, first: 10, count: 4, data: Some(page(1, 4)), mode: Mode::Update },
            ToProcess::Data { req: 8, page: 2, data: None, mode: Mode::Invalidate },
            ToProcess::Data { req: 9, page: 5, data: Some(page(2, 1)), mode: Mode::Invalidate },
            ToProcess::GrantRun { req: 10, first: 20, count: 2, data: Some(GrantData::Bytes(page(3, 2))) },
            ToProcess::Grant { req: 11, page: 30, data: Some(GrantData::Zero) },
            ToProcess::Grant { req: 12, page: 31, data: Some(GrantData::Bytes(PageData::from(vec![9; 100]))) },
            ToProcess::Retry { req: 13, page: 1 },
        ]
    }

    #[test]
    fn the_chunks_are_the_bytes_encode_frame_writes() {
        let mut q = FrameQueue::new();
        let mut expected = Vec::new();
        for m in messages() {
            encode_frame(&m, &mut expected).unwrap();
            q.push(m).unwrap();
        }
        assert_eq!(q.len(), expected.len());
        let chunks = q.take();
        assert!(q.is_empty() && q.take().is_empty());
        // Three messages have a page or more of data: each is a chunk of its own.
        let data_chunks = chunks.iter().filter(|c| c.len() >= PAGE_SIZE).count();
        assert_eq!(data_chunks, 3, "chunk sizes {:?}", chunks.iter().map(Bytes::len).collect::<Vec<_>>());
        assert_eq!(chunks.concat(), expected);
        // And they decode to the messages, in order.
        let mut bytes = &expected[..];
        for m in messages() {
            let (got, used) = decode_frame::<ToProcess>(bytes).unwrap().unwrap();
            assert_eq!(got, m);
            bytes = &bytes[used..];
        }
    }

    #[test]
    fn the_page_data_is_handed_over_not_copied() {
        let data = page(4, 8);
        let ptr = data.as_ptr();
        let mut q = FrameQueue::new();
        q.push(ToCoordinator::DowngradeAckRun { first: 0, count: 8, data: Some(data) }).unwrap();
        let chunks = q.take();
        assert!(chunks.iter().any(|c| c.as_ptr() == ptr), "no chunk is the message's own allocation");
    }

    #[test]
    fn messages_to_the_coordinator_frame_alike() {
        let msgs = vec![
            ToCoordinator::Fetch { req: 1, page: 2 },
            ToCoordinator::WritebackRun { first: 4, count: 3, data: page(5, 3) },
            ToCoordinator::RecallAck { page: 9, data: Some(page(6, 1)) },
            ToCoordinator::Ping { req: 2, payload: vec![7; PAGE_SIZE] },
        ];
        let mut q = FrameQueue::new();
        let mut expected = Vec::new();
        for m in msgs {
            encode_frame(&m, &mut expected).unwrap();
            q.push(m).unwrap();
        }
        assert_eq!(joined(&mut q), expected);
    }

    fn arbitrary(kind: u8, pages: usize, b: u8, n: u64) -> ToProcess {
        let data = (pages > 0).then(|| page(b, pages));
        match kind % 5 {
            0 => ToProcess::DataRun { req: n, first: n, count: pages as u32, data, mode: Mode::Invalidate },
            1 => ToProcess::Data { req: n, page: n, data, mode: Mode::Update },
            2 => ToProcess::GrantRun { req: n, first: n, count: pages as u32, data: data.map(GrantData::Bytes) },
            3 => ToProcess::Update { page: n, offset: b.into(), width: 8, value: n.into() },
            _ => ToProcess::Invalidate { page: n },
        }
    }

    proptest::proptest! {
        #[test]
        fn any_sequence_frames_as_encode_frame_does(
            msgs in proptest::collection::vec((0u8..5, 0usize..4, proptest::prelude::any::<u8>(), proptest::prelude::any::<u64>()), 0..12),
            cut in 0usize..12,
        ) {
            let mut q = FrameQueue::new();
            let mut expected = Vec::new();
            let mut got = Vec::new();
            for (i, &(kind, pages, b, n)) in msgs.iter().enumerate() {
                if i == cut {
                    // A write in the middle: what was queued goes out, the queue starts again.
                    got.extend(q.take().concat());
                }
                let m = arbitrary(kind, pages, b, n);
                encode_frame(&m, &mut expected).unwrap();
                q.push(m).unwrap();
            }
            got.extend(q.take().concat());
            proptest::prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_and_the_queue_kept() {
        let mut q = FrameQueue::new();
        q.push(ToProcess::Invalidate { page: 1 }).unwrap();
        let before = q.len();
        let big = ToProcess::DataRun { req: 1, first: 0, count: 300, data: Some(page(0, 300)), mode: Mode::Invalidate };
        assert!(matches!(q.push(big), Err(FrameError::TooLarge { .. })));
        assert_eq!(q.len(), before);
        let mut expected = Vec::new();
        encode_frame(&ToProcess::Invalidate { page: 1 }, &mut expected).unwrap();
        assert_eq!(joined(&mut q), expected);
    }
}
