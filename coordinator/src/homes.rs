//! The home copies of one session in one sparse anonymous mapping of the region's size.
//!
//! Pages nobody wrote are never touched, so they cost nothing; a page written back as zeros is
//! given back to the kernel (`MADV_DONTNEED`); when the session ends the mapping is unmapped,
//! so its memory returns to the operating system at once — heap allocations per page would
//! stay in the allocator's free lists (a coordinator that had hosted a 256 MiB session kept
//! 288 MB resident).

use std::collections::HashSet;

use dsm_proto::directory::HomeStore;
use dsm_proto::{PageNo, PAGE_SIZE};
use memmap2::{MmapMut, MmapOptions, UncheckedAdvice};

/// Home copies of a region of `pages` pages (see the module docs).
pub struct MappedHomes {
    map: MmapMut,
    /// Pages holding a non-zero home copy.
    present: HashSet<PageNo>,
}

impl std::fmt::Debug for MappedHomes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedHomes").field("len", &self.map.len()).field("present", &self.present.len()).finish()
    }
}

impl MappedHomes {
    /// A mapping for `pages` pages, reserving no memory or swap until pages are written.
    pub fn new(pages: u64) -> std::io::Result<MappedHomes> {
        let len = usize::try_from(pages)
            .ok()
            .and_then(|p| p.checked_mul(PAGE_SIZE))
            .filter(|&l| l > 0)
            .ok_or_else(|| std::io::Error::other(format!("a region of {pages} pages does not fit in memory")))?;
        let map = MmapOptions::new().len(len).no_reserve_swap().map_anon()?;
        Ok(MappedHomes { map, present: HashSet::new() })
    }

    fn range(page: PageNo) -> std::ops::Range<usize> {
        let at = page as usize * PAGE_SIZE;
        at..at + PAGE_SIZE
    }
}

impl HomeStore for MappedHomes {
    fn read(&self, page: PageNo) -> Option<Vec<u8>> {
        self.present.contains(&page).then(|| self.map[Self::range(page)].to_vec())
    }

    fn write(&mut self, page: PageNo, bytes: &[u8]) {
        let range = Self::range(page);
        if range.end > self.map.len() || bytes.len() != PAGE_SIZE {
            // The directory checks pages and lengths first; never write outside the mapping.
            tracing::error!(page, len = bytes.len(), "home copy write outside the session's region ignored");
            return;
        }
        if bytes.iter().all(|&b| b == 0) {
            if self.present.remove(&page) {
                // SAFETY: DONTNEED on a private anonymous mapping makes the page read back as
                // zeros and frees it; no reference into this range is alive (`&mut self`), and
                // zeros are exactly its new contents.
                if let Err(e) = unsafe { self.map.unchecked_advise_range(UncheckedAdvice::DontNeed, range.start, PAGE_SIZE) } {
                    tracing::warn!(page, "could not give a zeroed home page back: {e}");
                    self.map[range].fill(0);
                }
            }
            return;
        }
        self.map[range].copy_from_slice(bytes);
        self.present.insert(page);
    }

    fn read_at(&self, page: PageNo, offset: usize, buf: &mut [u8]) {
        let range = Self::range(page);
        let at = range.start + offset;
        match self.map.get(at..at + buf.len()) {
            Some(bytes) if self.present.contains(&page) && offset + buf.len() <= PAGE_SIZE => buf.copy_from_slice(bytes),
            _ => buf.fill(0),
        }
    }

    fn patch(&mut self, page: PageNo, offset: usize, bytes: &[u8]) {
        let range = Self::range(page);
        if range.end > self.map.len() || offset + bytes.len() > PAGE_SIZE {
            tracing::error!(page, offset, len = bytes.len(), "home copy patch outside the session's region ignored");
            return;
        }
        let zeros = bytes.iter().all(|&b| b == 0);
        if zeros && !self.present.contains(&page) {
            return; // already zero there
        }
        let at = range.start + offset;
        self.map[at..at + bytes.len()].copy_from_slice(bytes);
        if zeros && self.map[range.clone()].iter().all(|&b| b == 0) {
            // Back to all zeros: give the page back, as `write` does.
            self.write(page, &[0; PAGE_SIZE]);
        } else {
            self.present.insert(page);
        }
    }

    fn stored_pages(&self) -> usize {
        self.present.len()
    }

    /// Faults the run's pages in with one system call (`MADV_POPULATE_WRITE`, Linux 5.14)
    /// instead of one page fault each as they are written: in `touch.sequential` the faults
    /// of fresh home pages were a fifth of the coordinator's time. Pages already present are
    /// left as they are; on an older kernel (`EINVAL`) the writes fault them in as before.
    fn prepare(&mut self, first: PageNo, count: u32) {
        let start = Self::range(first).start;
        let len = usize::try_from(count).unwrap_or(0).saturating_mul(PAGE_SIZE);
        if start.checked_add(len).is_some_and(|end| end <= self.map.len()) && len > 0 {
            if let Err(e) = self.map.advise_range(memmap2::Advice::PopulateWrite, start, len) {
                tracing::trace!(first, count, "home pages not populated at once: {e}");
            }
        }
    }
}

/// Makes every thread of the process allocate from the one main heap (glibc `M_ARENA_MAX` 1).
/// With one arena per worker thread, `malloc_trim` left ~8 MiB resident in each worker's arena
/// after a 256 MiB session ended (`coordinator.rss_after` 3.0-3.5x idle); with one arena it
/// gives it back (1.1x). Per-thread caches (tcache) still serve most small allocations without
/// the arena lock. Call it first thing in `main`, before any thread exists; a process that
/// embeds the coordinator as a library keeps its own allocator settings.
pub fn use_one_heap_arena() {
    // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Gives heap memory that was freed back to the OS (glibc keeps freed blocks of every arena
/// for reuse: the frame buffers of a large session's connections, tens of MiB, would otherwise
/// stay resident after it ended). Called when a connection closes.
pub fn release_freed_heap() {
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists; it takes the
    // arena locks itself and touches no memory that is in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_trip_and_zeros_free_them() {
        let mut h = MappedHomes::new(1 << 20).unwrap(); // 4 GiB of address space, nothing used
        assert_eq!(h.read(7), None);
        h.write(7, &[3; PAGE_SIZE]);
        assert_eq!(h.read(7), Some(vec![3; PAGE_SIZE]));
        assert_eq!(h.stored_pages(), 1);
        h.write(7, &[0; PAGE_SIZE]);
        assert_eq!((h.read(7), h.stored_pages()), (None, 0));
        // Outside the region or a wrong length: ignored, never a panic.
        h.write(1 << 20, &[1; PAGE_SIZE]);
        h.write(1, &[1; 10]);
        assert_eq!(h.stored_pages(), 0);
        // Patches touch only their bytes; zeros on a page with no copy store nothing, and a
        // page patched back to zeros is given back.
        h.patch(5, 8, &[0; 8]);
        assert_eq!(h.stored_pages(), 0);
        h.patch(5, 8, &[9; 8]);
        let mut b = [1u8; 12];
        h.read_at(5, 6, &mut b);
        assert_eq!(b, [0, 0, 9, 9, 9, 9, 9, 9, 9, 9, 0, 0]);
        assert_eq!(h.read(5).unwrap().iter().filter(|&&x| x == 9).count(), 8);
        h.patch(5, 8, &[0; 8]);
        assert_eq!((h.read(5), h.stored_pages()), (None, 0));
        h.read_at(6, 0, &mut b);
        assert_eq!(b, [0; 12]);
        h.patch(1 << 20, 0, &[1; 8]); // outside: ignored
        h.patch(7, PAGE_SIZE - 4, &[1; 8]); // past the page's end: ignored
        assert_eq!(h.stored_pages(), 0);
        assert!(MappedHomes::new(0).is_err());
    }
}
