//! [`Mem`]: the [`PageMemory`] of the protocol core over the real mappings — userfaultfd ioctls
//! on the view, copies and holes through the alias. Runs of pages take one ioctl and one copy
//! each (one TLB flush for a write-protected run, one wake-up for an installed one).
//!
//! A failing ioctl means the region is unusable: the faulting threads could never be served, so
//! the process stops with a clear message instead of hanging (see [`crate::fatal`]).

use dsm_proto::pages::PageMemory;
use dsm_proto::runs::MAX_RUN;
use dsm_proto::PageNo;

use crate::fatal::fatal;
use crate::region::RegionMaps;
use crate::sys::PAGE;

/// Zeros for installing untouched pages: the largest run. In `.bss`, so it costs nothing.
static ZEROS: [u8; MAX_RUN as usize * PAGE] = [0; MAX_RUN as usize * PAGE];

/// [`PageMemory`] over one region's mappings.
pub(crate) struct Mem<'a> {
    pub maps: &'a RegionMaps,
}

impl Mem<'_> {
    fn addr(&self, page: PageNo) -> usize {
        self.maps.view.addr() + page as usize * PAGE
    }

    /// A page of a run that was already in the memfd (should not happen: Invalid pages are
    /// holes): drop the stale page and install this one.
    fn replace_stale(&self, page: PageNo, src: &[u8], writable: bool) {
        if let Err(e) = self.maps.alias.punch_hole(page) {
            fatal("punching a stale page", &e);
        }
        match self.maps.fault.install(self.addr(page), src, writable) {
            Ok(n) if n == PAGE => {}
            Ok(_) => fatal("installing a page", &"it is still there after punching a hole"),
            Err(e) => fatal("installing a page", &e),
        }
    }
}

impl PageMemory for Mem<'_> {
    fn install(&mut self, page: PageNo, data: Option<&[u8]>, writable: bool) {
        self.install_run(page, 1, data, writable);
    }

    fn install_run(&mut self, first: PageNo, count: u32, data: Option<&[u8]>, writable: bool) {
        let len = count as usize * PAGE;
        let src = match data {
            Some(d) if d.len() == len => d,
            // `ProcessPages::for_region` refuses such messages before they get here.
            Some(d) => fatal("installing pages", &format!("{} bytes for {count} pages", d.len())),
            None if len <= ZEROS.len() => &ZEROS[..len],
            None => fatal("installing pages", &format!("a run of {count} pages")),
        };
        let mut off = 0usize;
        while off < len {
            match self.maps.fault.install(self.addr(first) + off, &src[off..], writable) {
                Ok(n) if off + n == len => break,
                // The page after the first `n` bytes was there already.
                Ok(n) => {
                    let at = off + n;
                    self.replace_stale(first + (at / PAGE) as u64, &src[at..at + PAGE], writable);
                    off = at + PAGE;
                }
                Err(e) => fatal("installing pages", &e),
            }
        }
    }

    fn make_writable(&mut self, page: PageNo) {
        self.make_writable_run(page, 1);
    }

    fn make_writable_run(&mut self, first: PageNo, count: u32) {
        if let Err(e) = self.maps.fault.make_writable(self.addr(first), count as usize * PAGE) {
            fatal("unprotecting pages", &e);
        }
    }

    fn write_protect(&mut self, page: PageNo) -> Vec<u8> {
        self.write_protect_run(page, 1)
    }

    fn write_protect_run(&mut self, first: PageNo, count: u32) -> Vec<u8> {
        if let Err(e) = self.maps.fault.write_protect(self.addr(first), count as usize * PAGE) {
            fatal("write-protecting pages", &e);
        }
        // After the ioctl's TLB flush no thread of ours can store to these pages any more.
        self.maps.alias.read_run(first, count)
    }

    fn read_run(&mut self, first: PageNo, count: u32) -> Vec<u8> {
        // ReadOnly copies (a forward or a flush): no store can change them, no ioctl needed.
        self.maps.alias.read_run(first, count)
    }

    fn drop_page(&mut self, page: PageNo, want_contents: bool) -> Option<Vec<u8>> {
        self.drop_run(page, 1, want_contents)
    }

    fn drop_run(&mut self, first: PageNo, count: u32, want_contents: bool) -> Option<Vec<u8>> {
        // Protect first so no store lands between the copy and the hole.
        let data = want_contents.then(|| self.write_protect_run(first, count));
        if let Err(e) = self.maps.alias.punch_run(first, count) {
            fatal("dropping pages", &e);
        }
        data
    }

    fn wake(&mut self, page: PageNo) {
        self.wake_run(page, 1);
    }

    fn wake_run(&mut self, first: PageNo, count: u32) {
        if let Err(e) = self.maps.fault.wake(self.addr(first), count as usize * PAGE) {
            fatal("waking faulting threads", &e);
        }
    }

    fn shelve_run(&mut self, first: PageNo, count: u32) -> Option<Vec<u8>> {
        if !self.maps.fault.minor_faults() {
            // Without minor faults a page left in the memfd would be mapped again silently.
            let bytes = self.read_run(first, count);
            self.drop_run(first, count, false);
            return Some(bytes);
        }
        // Kept in place: only the view's entries go (no copy, no allocation, no hole); the
        // next access raises a minor fault, which the core serves as for any Invalid page.
        if let Err(e) = self.maps.view.zap_run(first, count) {
            fatal("unmapping pages kept as backups", &e);
        }
        None
    }

    fn unshelve_run(&mut self, first: PageNo, count: u32, read: bool) -> Option<Vec<u8>> {
        let bytes = read.then(|| self.maps.alias.read_run(first, count));
        if let Err(e) = self.maps.alias.punch_run(first, count) {
            fatal("giving back pages kept as backups", &e);
        }
        bytes
    }

    fn store(&mut self, page: PageNo, offset: u16, width: u8, value: u128) {
        if let Err(e) = self.maps.alias.store(page, usize::from(offset), width, value) {
            fatal("applying a replayed store", &e);
        }
    }
}
