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

    fn stored_pages(&self) -> usize {
        self.present.len()
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
        assert!(MappedHomes::new(0).is_err());
    }
}
