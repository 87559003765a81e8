//! Where a session's home copies live: the [`HomeStore`] the directory reads and writes whole
//! pages through, [`HeapHomes`], its heap implementation for tests and simulations (the
//! coordinator's own, one sparse mapping per session, is `dsm_coordinator::homes`), and
//! [`Homes`], the store as the directory's steps use it.

use std::collections::HashMap;

use crate::wire::{PageData, PageNo};

/// Where a session's home copies live. The directory reads and writes whole pages through
/// it; all-zero pages are never stored (writing zeros frees a page), so untouched memory costs
/// nothing. The coordinator keeps them in one sparse mapping per session, returned to the OS
/// when the session ends; [`HeapHomes`] keeps them on the heap (tests, simulations).
pub trait HomeStore: Send + std::fmt::Debug {
    /// The home copy of `page`, `None` when it is all zero.
    fn read(&self, page: PageNo) -> Option<Vec<u8>>;
    /// Makes `bytes` (one page) the home copy of `page`.
    fn write(&mut self, page: PageNo, bytes: &[u8]);
    /// Copies `buf.len()` bytes of the home copy of `page` from byte `offset` into `buf`
    /// (zeros for a page with no copy stored). The directory checks `offset + buf.len()`
    /// against the page size first.
    fn read_at(&self, page: PageNo, offset: usize, buf: &mut [u8]);
    /// Writes `bytes` into the home copy of `page` at byte `offset`, the rest of the page
    /// unchanged: a replayed store costs its own bytes, not a page read and written back. A
    /// page patched back to all zeros is freed, as by [`write`](HomeStore::write).
    fn patch(&mut self, page: PageNo, offset: usize, bytes: &[u8]);
    /// Pages with a (non-zero) home copy stored.
    fn stored_pages(&self) -> usize;
    /// Pages `first..first + count` are about to be written whole (a run of acknowledgements
    /// or writebacks with data): a store may make room for them at once. Optional.
    fn prepare(&mut self, _first: PageNo, _count: u32) {}
}

/// Home copies on the heap, one allocation per non-zero page.
#[derive(Debug, Default)]
pub struct HeapHomes(HashMap<PageNo, Box<[u8]>>);

impl HomeStore for HeapHomes {
    fn read(&self, page: PageNo) -> Option<Vec<u8>> {
        self.0.get(&page).map(|b| b.to_vec())
    }
    fn write(&mut self, page: PageNo, bytes: &[u8]) {
        if bytes.iter().all(|&b| b == 0) {
            self.0.remove(&page);
        } else {
            self.0.insert(page, bytes.into());
        }
    }
    fn read_at(&self, page: PageNo, offset: usize, buf: &mut [u8]) {
        match self.0.get(&page).and_then(|b| b.get(offset..offset + buf.len())) {
            Some(bytes) => buf.copy_from_slice(bytes),
            None => buf.fill(0),
        }
    }
    fn patch(&mut self, page: PageNo, offset: usize, bytes: &[u8]) {
        let zeros = bytes.iter().all(|&b| b == 0);
        if zeros && !self.0.contains_key(&page) {
            return;
        }
        let copy = self.0.entry(page).or_insert_with(|| vec![0; crate::PAGE_SIZE].into());
        if let Some(at) = copy.get_mut(offset..offset + bytes.len()) {
            at.copy_from_slice(bytes);
        }
        if zeros && copy.iter().all(|&b| b == 0) {
            self.0.remove(&page);
        }
    }
    fn stored_pages(&self) -> usize {
        self.0.len()
    }
}

/// The home copies as the directory's steps use them: the session's [`HomeStore`], and the
/// page last written from a process's message (an acknowledgement's bytes), which a reply made
/// in the same step carries as it came, a slice of the received frame, instead of a copy read
/// back out of the store. [`forget`](Homes::forget) drops it once the message is handled, so a
/// frame's buffer is never kept alive by the directory.
#[derive(Debug)]
pub(super) struct Homes {
    store: Box<dyn HomeStore>,
    fresh: Option<(PageNo, PageData)>,
}

impl Homes {
    pub(super) fn new(store: Box<dyn HomeStore>) -> Homes {
        Homes { store, fresh: None }
    }

    /// The home copy of `page` (`None`: all zero).
    pub(super) fn read(&self, page: PageNo) -> Option<PageData> {
        match &self.fresh {
            Some((p, data)) if *p == page => Some(data.clone()),
            _ => self.store.read(page).map(PageData::from),
        }
    }

    /// Makes `data` (one page from a process) the home copy of `page`; a reply made before
    /// [`forget`](Homes::forget) carries these very bytes.
    pub(super) fn write_data(&mut self, page: PageNo, data: &PageData) {
        self.store.write(page, data);
        // All zeros is stored as nothing and read as `None`; the fresh copy must read alike.
        let zero = data.iter().all(|&b| b == 0);
        self.fresh = (!zero).then(|| (page, data.clone()));
    }

    /// Makes `bytes` (one page) the home copy of `page`.
    pub(super) fn write(&mut self, page: PageNo, bytes: &[u8]) {
        self.drop_fresh(page);
        self.store.write(page, bytes);
    }

    /// See [`HomeStore::read_at`].
    pub(super) fn read_at(&self, page: PageNo, offset: usize, buf: &mut [u8]) {
        match &self.fresh {
            Some((p, data)) if *p == page => match data.get(offset..offset + buf.len()) {
                Some(bytes) => buf.copy_from_slice(bytes),
                None => buf.fill(0),
            },
            _ => self.store.read_at(page, offset, buf),
        }
    }

    /// See [`HomeStore::patch`].
    pub(super) fn patch(&mut self, page: PageNo, offset: usize, bytes: &[u8]) {
        self.drop_fresh(page);
        self.store.patch(page, offset, bytes);
    }

    /// Drops the fresh page's bytes (the end of a message's handling).
    pub(super) fn forget(&mut self) {
        self.fresh = None;
    }

    fn drop_fresh(&mut self, page: PageNo) {
        if self.fresh.as_ref().is_some_and(|(p, _)| *p == page) {
            self.fresh = None;
        }
    }

    pub(super) fn stored_pages(&self) -> usize {
        self.store.stored_pages()
    }

    /// See [`HomeStore::prepare`].
    pub(super) fn prepare(&mut self, first: PageNo, count: u32) {
        self.store.prepare(first, count);
    }
}
