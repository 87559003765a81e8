//! Where a session's home copies live: the [`HomeStore`] the directory reads and writes whole
//! pages through, and [`HeapHomes`], its heap implementation for tests and simulations (the
//! coordinator's own, one sparse mapping per session, is `dsm_coordinator::homes`).

use std::collections::HashMap;

use crate::wire::PageNo;

/// Where a session's home copies live. The directory reads and writes whole pages through
/// it; all-zero pages are never stored (writing zeros frees a page), so untouched memory costs
/// nothing. The coordinator keeps them in one sparse mapping per session, returned to the OS
/// when the session ends; [`HeapHomes`] keeps them on the heap (tests, simulations).
pub trait HomeStore: Send + std::fmt::Debug {
    /// The home copy of `page`, `None` when it is all zero.
    fn read(&self, page: PageNo) -> Option<Vec<u8>>;
    /// Makes `bytes` (one page) the home copy of `page`.
    fn write(&mut self, page: PageNo, bytes: &[u8]);
    /// Pages with a (non-zero) home copy stored.
    fn stored_pages(&self) -> usize;
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
    fn stored_pages(&self) -> usize {
        self.0.len()
    }
}
