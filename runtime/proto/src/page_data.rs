//! [`PageData`]: the bytes of a page or of a run of pages, shared without copies where it can.
//!
//! A page crossing the coordinator used to be copied at every step: out of the frame buffer
//! into the decoded message, out of the home copy for the reply, into the reply run. Now a
//! frame decoded by [`crate::FrameReader`] lends its page data to the message (a slice of the
//! frame's buffer, `Shared`), the slices of one run's pages stay slices of it, and slices that
//! are adjacent in one buffer merge back into one slice when the replies are coalesced into a
//! run; what goes to quinn is that slice ([`PageData::into_bytes`]). Data that does not come
//! from a shared buffer (read out of a mapping, built by a test) is an `Owned` vector, which
//! coalescing grows in place, as before.
//!
//! How a decode lends the buffer: [`lend_frame`] names the frame being decoded for the
//! duration of one `postcard` call on this thread, and [`PageData`]'s `Deserialize` takes a
//! slice of it for bytes that lie inside it (postcard hands borrowed bytes). Outside such a
//! call, or for bytes elsewhere, it copies: the result is the same bytes either way.

use std::cell::RefCell;
use std::ops::Range;

use bytes::Bytes;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The contents of one page, or of a run of pages back to back. `None` in a message means
/// "all zero": pages nobody wrote cost no transfer. See the module docs for how it is shared.
#[derive(Clone)]
pub struct PageData(Repr);

#[derive(Clone)]
enum Repr {
    /// `whole[range]`: part of a buffer others may share (a decoded frame).
    Shared { whole: Bytes, range: Range<usize> },
    /// A buffer of its own, which a run may grow.
    Owned(Vec<u8>),
}

impl Default for PageData {
    fn default() -> Self {
        PageData(Repr::Owned(Vec::new()))
    }
}

impl From<Vec<u8>> for PageData {
    fn from(v: Vec<u8>) -> Self {
        PageData(Repr::Owned(v))
    }
}

impl From<Bytes> for PageData {
    fn from(b: Bytes) -> Self {
        let range = 0..b.len();
        PageData(Repr::Shared { whole: b, range })
    }
}

impl std::ops::Deref for PageData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for PageData {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for PageData {}

impl std::fmt::Debug for PageData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageData({} bytes)", self.len())
    }
}

impl PageData {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Repr::Shared { whole, range } => &whole[range.clone()],
            Repr::Owned(v) => v,
        }
    }

    /// The `i`-th page of run data; empty if the data is too short (callers check lengths
    /// first, `runs::check_run`, so this never panics on what a peer sent).
    pub fn page(&self, i: usize) -> &[u8] {
        self.as_slice().get(Self::page_range(i)).unwrap_or_default()
    }

    /// The `i`-th page of run data as data of its own: a slice of the same buffer when it is
    /// shared, else a copy. Empty if the data is too short (as [`page`](Self::page)).
    pub fn page_data(&self, i: usize) -> PageData {
        let want = Self::page_range(i);
        match &self.0 {
            Repr::Shared { whole, range } if want.end <= range.len() => {
                PageData(Repr::Shared { whole: whole.clone(), range: range.start + want.start..range.start + want.end })
            }
            _ => PageData::from(self.page(i).to_vec()),
        }
    }

    fn page_range(i: usize) -> Range<usize> {
        let at = i.saturating_mul(crate::PAGE_SIZE);
        at..at.saturating_add(crate::PAGE_SIZE)
    }

    /// Whether the bytes are a slice of a shared buffer (no copy of their own).
    pub fn is_shared(&self) -> bool {
        matches!(self.0, Repr::Shared { .. })
    }

    /// Appends `next`'s bytes. Two slices that lie back to back in one shared buffer become
    /// one slice, without a copy; otherwise the bytes are copied into a buffer of this data's
    /// own, with room for `room` more bytes made at once when it must grow (a buffer that
    /// doubled would move its bytes again at each step).
    pub fn append(&mut self, next: &PageData, room: usize) {
        if let (Repr::Shared { whole, range }, Repr::Shared { whole: w2, range: r2 }) = (&mut self.0, &next.0) {
            // Both buffers are alive, so the same address and length mean the same memory.
            if whole.as_ptr() == w2.as_ptr() && whole.len() == w2.len() && range.end == r2.start {
                range.end = r2.end;
                return;
            }
        }
        let v = self.make_owned(next.len().saturating_add(room));
        if v.capacity() - v.len() < next.len() {
            v.reserve_exact(next.len().saturating_add(room));
        }
        v.extend_from_slice(next.as_slice());
    }

    /// The bytes as a buffer of this data's own (copied out of a shared one, with room for
    /// `extra` more bytes).
    fn make_owned(&mut self, extra: usize) -> &mut Vec<u8> {
        if let Repr::Shared { whole, range } = &self.0 {
            let mut v = Vec::with_capacity(range.len().saturating_add(extra));
            v.extend_from_slice(&whole[range.clone()]);
            self.0 = Repr::Owned(v);
        }
        match &mut self.0 {
            Repr::Owned(v) => v,
            Repr::Shared { .. } => unreachable!("made owned just above"),
        }
    }

    /// The bytes as one [`Bytes`] for a stream write: the shared slice itself, or the owned
    /// buffer handed over; no copy either way.
    pub fn into_bytes(self) -> Bytes {
        match self.0 {
            Repr::Shared { whole, range } => whole.slice(range),
            Repr::Owned(v) => Bytes::from(v),
        }
    }

    /// Capacity of an owned buffer (tests of how runs reserve room); a shared slice's length.
    pub fn capacity(&self) -> usize {
        match &self.0 {
            Repr::Shared { range, .. } => range.len(),
            Repr::Owned(v) => v.capacity(),
        }
    }
}

impl Serialize for PageData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.as_slice())
    }
}

impl<'de> Deserialize<'de> for PageData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_bytes(PageDataVisitor)
    }
}

struct PageDataVisitor;

impl<'de> Visitor<'de> for PageDataVisitor {
    type Value = PageData;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("page bytes")
    }

    fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<PageData, E> {
        Ok(lent_slice(v).unwrap_or_else(|| PageData::from(v.to_vec())))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<PageData, E> {
        Ok(PageData::from(v.to_vec()))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<PageData, E> {
        Ok(PageData::from(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PageData, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(crate::frame::MAX_FRAME_LEN));
        while let Some(b) = seq.next_element()? {
            v.push(b);
        }
        Ok(PageData::from(v))
    }
}

thread_local! {
    /// The frame [`lend_frame`] is decoding on this thread, if any.
    static LENT: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` with `frame` lent to the [`PageData`] it deserializes (see the module docs).
/// Restores whatever was lent before, also if `decode` panics.
pub(crate) fn lend_frame<R>(frame: &Bytes, decode: impl FnOnce() -> R) -> R {
    struct Restore(Option<Bytes>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let before = self.0.take();
            LENT.with(|l| *l.borrow_mut() = before);
        }
    }
    let _restore = Restore(LENT.with(|l| l.borrow_mut().replace(frame.clone())));
    decode()
}

/// `v` as a slice of the lent frame, when it lies inside it.
fn lent_slice(v: &[u8]) -> Option<PageData> {
    LENT.with(|l| {
        let lent = l.borrow();
        let whole = lent.as_ref()?;
        let start = (v.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
        let end = start.checked_add(v.len())?;
        (end <= whole.len()).then(|| PageData(Repr::Shared { whole: whole.clone(), range: start..end }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PAGE_SIZE;

    fn run(pages: usize) -> Bytes {
        Bytes::from((0..pages * PAGE_SIZE).map(|i| (i / PAGE_SIZE) as u8 + 1).collect::<Vec<u8>>())
    }

    #[test]
    fn pages_of_a_shared_run_are_slices_and_adjacent_ones_merge_without_a_copy() {
        let whole = run(3);
        let data = PageData::from(whole.clone());
        let (a, b, c) = (data.page_data(0), data.page_data(1), data.page_data(2));
        assert!(a.is_shared() && b.is_shared() && c.is_shared());
        assert_eq!((a[0], b[0], c[PAGE_SIZE - 1]), (1, 2, 3));
        let mut merged = a.clone();
        merged.append(&b, PAGE_SIZE);
        merged.append(&c, 0);
        assert!(merged.is_shared(), "adjacent slices of one buffer merge in place");
        assert_eq!(merged.as_slice(), &whole[..]);
        assert_eq!(merged.clone().into_bytes().as_ptr(), whole.as_ptr(), "no copy on the way to the stream");
        // Out of order, or from another buffer: copied, same bytes.
        let mut gap = a.clone();
        gap.append(&c, 0);
        assert!(!gap.is_shared());
        assert_eq!((gap.len(), gap[0], gap[PAGE_SIZE]), (2 * PAGE_SIZE, 1, 3));
        let other = PageData::from(run(1));
        let mut mixed = a;
        mixed.append(&other, 0);
        assert!(!mixed.is_shared());
        assert_eq!((mixed[0], mixed[PAGE_SIZE]), (1, 1));
    }

    #[test]
    fn short_data_gives_empty_pages_never_a_panic() {
        let data = PageData::from(run(1));
        assert!(data.page_data(1).is_empty());
        assert!(data.page(usize::MAX).is_empty());
        assert!(PageData::from(vec![1; 10]).page_data(0).is_empty());
    }

    #[test]
    fn decoding_lends_the_frame_only_inside_lend_frame() {
        let msg = crate::wire::ToCoordinator::DowngradeAck { page: 1, data: Some(PageData::from(vec![7; PAGE_SIZE])) };
        let bytes = Bytes::from(postcard::to_allocvec(&msg).unwrap());
        let lent: crate::wire::ToCoordinator = lend_frame(&bytes, || postcard::from_bytes(&bytes).unwrap());
        let copied: crate::wire::ToCoordinator = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(lent, msg);
        assert_eq!(copied, msg);
        let data_of = |m: &crate::wire::ToCoordinator| match m {
            crate::wire::ToCoordinator::DowngradeAck { data: Some(d), .. } => d.clone(),
            other => panic!("{other:?}"),
        };
        assert!(data_of(&lent).is_shared());
        assert!(!data_of(&copied).is_shared());
        // Nothing stays lent after the call.
        assert!(LENT.with(|l| l.borrow().is_none()));
    }
}
