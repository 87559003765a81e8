//! [`Mem`]: the [`PageMemory`] of the protocol core over the real mappings — userfaultfd ioctls
//! on the view, copies and holes through the alias.
//!
//! A failing ioctl means the region is unusable: the faulting threads could never be served, so
//! the process stops with a clear message instead of hanging (see [`crate::fatal`]).

use dsm_proto::pages::PageMemory;
use dsm_proto::PageNo;

use crate::fatal::fatal;
use crate::region::RegionMaps;
use crate::sys::PAGE;

static ZERO_PAGE: [u8; PAGE] = [0; PAGE];

/// [`PageMemory`] over one region's mappings.
pub(crate) struct Mem<'a> {
    pub maps: &'a RegionMaps,
}

impl Mem<'_> {
    fn addr(&self, page: PageNo) -> usize {
        self.maps.view.addr() + page as usize * PAGE
    }
}

impl PageMemory for Mem<'_> {
    fn install(&mut self, page: PageNo, data: Option<&[u8]>, writable: bool) {
        let src = match data {
            Some(d) if d.len() == PAGE => d,
            // `ProcessPages::for_region` refuses such messages before they get here.
            Some(d) => fatal("installing a page", &format!("{} bytes instead of {PAGE}", d.len())),
            None => &ZERO_PAGE[..],
        };
        let addr = self.addr(page);
        match self.maps.fault.install(addr, src, writable) {
            Ok(true) => {}
            Ok(false) => {
                // A stale page is in the memfd (should not happen: Invalid pages are holes).
                // Drop it and install again.
                if let Err(e) = self.maps.alias.punch_hole(page) {
                    fatal("punching a stale page", &e);
                }
                if let Err(e) = self.maps.fault.install(addr, src, writable) {
                    fatal("installing a page", &e);
                }
            }
            Err(e) => fatal("installing a page", &e),
        }
    }

    fn make_writable(&mut self, page: PageNo) {
        if let Err(e) = self.maps.fault.make_writable(self.addr(page)) {
            fatal("unprotecting a page", &e);
        }
    }

    fn write_protect(&mut self, page: PageNo) -> Vec<u8> {
        if let Err(e) = self.maps.fault.write_protect(self.addr(page)) {
            fatal("write-protecting a page", &e);
        }
        // After the ioctl's TLB flush no thread of ours can store to the page any more.
        self.maps.alias.read_page(page)
    }

    fn drop_page(&mut self, page: PageNo, want_contents: bool) -> Option<Vec<u8>> {
        let data = if want_contents {
            // Protect first so no store lands between the copy and the hole.
            Some(self.write_protect(page))
        } else {
            None
        };
        if let Err(e) = self.maps.alias.punch_hole(page) {
            fatal("dropping a page", &e);
        }
        data
    }

    fn wake(&mut self, page: PageNo) {
        if let Err(e) = self.maps.fault.wake(self.addr(page)) {
            fatal("waking a faulting thread", &e);
        }
    }

    fn store(&mut self, page: PageNo, offset: u16, width: u8, value: u128) {
        if let Err(e) = self.maps.alias.store(page, usize::from(offset), width, value) {
            fatal("applying a replayed store", &e);
        }
    }
}
