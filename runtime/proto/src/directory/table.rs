//! [`PageTable`]: the directory's entries by page number, in chunks of consecutive pages.
//!
//! One hash-table slot per page put neighbouring pages anywhere in a table of many MiB: in a
//! bulk read each page's first lookup missed the caches (and, on a VM, the TLB twice over), and
//! `admit` and `owner_ack`, the first lookups of a fetch and of its acknowledgement, were an
//! eighth of the coordinator's time in `touch.sequential`. Here a hash lookup finds a chunk of
//! [`CHUNK`] consecutive pages whose entries lie side by side, so a run of pages walks memory
//! in order. The price is memory for pages nobody touched in a chunk somebody touched: at most
//! [`CHUNK`] entries (about 3 KiB) for an isolated page, less than the page's own home copy
//! once it is written.

use std::collections::HashMap;

use crate::wire::PageNo;

/// Pages per chunk.
pub(super) const CHUNK: usize = 16;

type Chunk<T> = Box<[Option<T>; CHUNK]>;

/// Entries by page number (see the module docs).
#[derive(Debug)]
pub(super) struct PageTable<T> {
    /// Keyed by `page / CHUNK`; the hasher is seeded at random (page numbers come from clients).
    chunks: HashMap<PageNo, Chunk<T>, foldhash::fast::RandomState>,
}

impl<T> Default for PageTable<T> {
    fn default() -> Self {
        PageTable { chunks: HashMap::default() }
    }
}

fn split(page: PageNo) -> (PageNo, usize) {
    (page / CHUNK as PageNo, (page % CHUNK as PageNo) as usize)
}

impl<T> PageTable<T> {
    pub(super) fn get(&self, page: &PageNo) -> Option<&T> {
        let (chunk, at) = split(*page);
        self.chunks.get(&chunk)?[at].as_ref()
    }

    pub(super) fn get_mut(&mut self, page: &PageNo) -> Option<&mut T> {
        let (chunk, at) = split(*page);
        self.chunks.get_mut(&chunk)?[at].as_mut()
    }

    /// The entry of `page`, made with `make` if it has none.
    pub(super) fn get_or_insert_with(&mut self, page: PageNo, make: impl FnOnce() -> T) -> &mut T {
        let (chunk, at) = split(page);
        let chunk = self.chunks.entry(chunk).or_insert_with(|| Box::new(std::array::from_fn(|_| None)));
        chunk[at].get_or_insert_with(make)
    }

    /// The pages that have an entry, in no particular order.
    pub(super) fn keys(&self) -> impl Iterator<Item = PageNo> + '_ {
        self.chunks.iter().flat_map(|(chunk, entries)| {
            entries.iter().enumerate().filter(|(_, e)| e.is_some()).map(move |(at, _)| chunk * CHUNK as PageNo + at as PageNo)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Acts as a map would, for pages in one chunk, across chunks and at the ends of the range.
    #[test]
    fn acts_like_a_map() {
        let mut t: PageTable<u64> = PageTable::default();
        let pages = [0, 1, 15, 16, 17, 1000, PageNo::MAX / 2, PageNo::MAX];
        for &p in &pages {
            assert_eq!(t.get(&p), None);
            assert_eq!(*t.get_or_insert_with(p, || p ^ 7), p ^ 7);
            assert_eq!(*t.get_or_insert_with(p, || 0), p ^ 7, "an entry is made once");
        }
        for &p in &pages {
            *t.get_mut(&p).unwrap() += 1;
            assert_eq!(t.get(&p), Some(&((p ^ 7) + 1)));
        }
        assert_eq!(t.get(&2), None, "a page in a touched chunk without an entry has none");
        assert!(t.get_mut(&2).is_none());
        let mut keys: Vec<PageNo> = t.keys().collect();
        keys.sort_unstable();
        assert_eq!(keys, pages);
    }
}
