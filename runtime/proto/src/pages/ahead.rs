//! Read-ahead and write-ahead: when faults walk the region in order, the requests that follow
//! a fault ask for the next pages too, as runs (a window doubling up to one run, several windows
//! kept in flight), so a sequential first touch streams instead of paying a round trip per page.
//! Scattered faults reset the windows to nothing.

use super::{Access, PageState, Pending, ProcessPages, Slot};
use crate::wire::{Mode, PageNo, ReqId, ToCoordinator};

/// One window's state (`ProcessPages` keeps one for reads, one for writes): where the last
/// fault was, how large the window has grown and how far requests have been sent.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct ReadAhead {
    /// Pages in the region (no prefetch past the end); 0 = read-ahead off.
    pub(super) pages: u64,
    /// The last page a read fault hit.
    pub(super) last: Option<PageNo>,
    /// Current window, doubling up to [`MAX_READ_AHEAD`].
    pub(super) window: u64,
    /// First page not yet prefetched.
    pub(super) next: PageNo,
}

/// Largest read-ahead (and write-ahead) window, in pages: one run (almost 1 MiB).
pub const MAX_READ_AHEAD: u64 = crate::runs::MAX_RUN as u64;

/// Windows kept in flight ahead of a sequential stream of read faults. A remote page crosses two
/// connections (owner -> coordinator -> reader) and the coordinator forwards a run only once it
/// has all of it, so a run in flight is mostly waiting on one of its hops; with eight runs
/// (~8 MiB) every hop has work queued. Measured (`cargo xtask bench touch.sequential`, three
/// interleaved runs of each build): 120 / 120 / 119 MB/s with 2 windows, 141 / 136 / 139 MB/s
/// with 8.
pub const READ_AHEAD_WINDOWS: u64 = 8;

/// Windows kept in flight ahead of a sequential stream of write faults. Kept at two: a
/// conditional write-ahead takes pages nobody holds *yet*, so past the end of a process's own
/// part of an array it takes its neighbour's untouched pages, which the neighbour must then
/// recall; two windows bound that overreach at ~2 MiB.
pub const WRITE_AHEAD_WINDOWS: u64 = 2;

impl ProcessPages {
    /// Whether `page` could join a run now: nothing in flight for it and `eligible` holds.
    fn claimable(&self, page: PageNo, eligible: impl Fn(&Slot) -> bool) -> bool {
        let slot = self.slots.get(&page).copied().unwrap_or_default();
        slot.pending.is_none() && eligible(&slot)
    }

    /// Marks up to `max` consecutive pages from `first` that satisfy `eligible` (and have no
    /// request in flight) as requested by `req`; returns how many (they form one run).
    pub(super) fn claim_run(
        &mut self,
        first: PageNo,
        max: u64,
        req: ReqId,
        access: Access,
        ahead: bool,
        eligible: impl Fn(&Slot) -> bool,
    ) -> u32 {
        let mut n = 0u32;
        let limit = self.readahead.pages.max(self.writeahead.pages);
        while u64::from(n) < max.min(u64::from(crate::runs::MAX_RUN)) {
            let q = first + u64::from(n);
            if q >= limit {
                break;
            }
            let slot = self.slots.get(&q).copied().unwrap_or_default();
            if slot.pending.is_some() || !eligible(&slot) {
                break;
            }
            self.slots.insert(q, Slot { pending: Some(Pending { req, access, ahead }), ..slot });
            self.in_flight += 1;
            n += 1;
        }
        n
    }

    /// How many pages after `page` a read fault on it should fetch too (0 unless read faults
    /// are walking the region in order), and the first page earlier read-ahead had not asked
    /// for yet: the pages before it were asked for already, so they need no second look (one
    /// that came back and was invalidated since faults, and is fetched, on its own).
    pub(super) fn read_ahead_span(&mut self, page: PageNo) -> (u64, PageNo) {
        let ra = &mut self.readahead;
        if ra.pages == 0 {
            return (0, page + 1);
        }
        // Sequential: the next page, or a page inside what was prefetched already (the thread
        // caught up with a run in flight).
        let sequential = ra.last.is_some_and(|l| page > l && page <= ra.next.max(l + 1));
        ra.last = Some(page);
        if !sequential {
            ra.window = 0;
            ra.next = page + 1;
            return (0, page + 1);
        }
        ra.window = (ra.window * 2).clamp(4, MAX_READ_AHEAD);
        let end = (page + 1 + READ_AHEAD_WINDOWS * ra.window).min(ra.pages);
        let asked = ra.next;
        ra.next = ra.next.max(end);
        (end.saturating_sub(page + 1), asked)
    }

    /// Fetches, as runs of up to [`crate::runs::MAX_RUN`] pages with a request each, every page
    /// in `from..end` that is Invalid with nothing in flight (pages valid or requested already
    /// are skipped).
    pub(super) fn fetch_runs(&mut self, from: PageNo, end: PageNo, out: &mut Vec<ToCoordinator>) {
        let mut q = from;
        let invalid = |s: &Slot| s.state == PageState::Invalid;
        while q < end {
            if !self.claimable(q, invalid) {
                q += 1;
                continue;
            }
            let req = self.next_req;
            let count = self.claim_run(q, end - q, req, Access::Read, false, invalid);
            if count == 0 {
                break;
            }
            self.next_req = self.next_req.wrapping_add(1);
            self.stats.fetches += u64::from(count);
            self.stats.prefetches += u64::from(count);
            out.push(if count == 1 { ToCoordinator::Fetch { req, page: q } } else { ToCoordinator::FetchRun { req, first: q, count } });
            q += u64::from(count);
        }
    }

    /// After a write fault on `page` (whose copy was `state`), when write faults walk the region
    /// in order: ask for the next pages in the same state too — conditionally for pages with no
    /// copy (granted only if nobody holds them: first writes to fresh memory cost one round trip
    /// per run), unconditionally for read-only copies (upgrades in place, no data).
    pub(super) fn write_ahead(&mut self, page: PageNo, state: PageState, req: ReqId, out: &mut Vec<ToCoordinator>) {
        let wa = &mut self.writeahead;
        if wa.pages == 0 || state == PageState::Writable {
            return;
        }
        let sequential = wa.last.is_some_and(|l| page > l && page <= wa.next.max(l + 1));
        wa.last = Some(page);
        if !sequential {
            wa.window = 0;
            wa.next = page + 1;
            return;
        }
        wa.window = (wa.window * 2).clamp(4, MAX_READ_AHEAD);
        let end = (page + 1 + WRITE_AHEAD_WINDOWS * wa.window).min(wa.pages);
        let conditional = state == PageState::Invalid;
        let eligible = move |s: &Slot| {
            if conditional {
                s.state == PageState::Invalid
            } else {
                s.state == PageState::ReadOnly && s.mode == Mode::Invalidate
            }
        };
        // A run that starts right after the faulting page shares its request (its grants come
        // back as one run with the page's own); the others get requests of their own.
        let mut q = page + 1;
        while q < end {
            if !self.claimable(q, eligible) {
                q += 1;
                continue;
            }
            let shared = q == page + 1;
            let run_req = if shared { req } else { self.next_req };
            let count = self.claim_run(q, end - q, run_req, Access::Write, conditional, eligible);
            if count == 0 {
                break;
            }
            if !shared {
                self.next_req = self.next_req.wrapping_add(1);
            }
            self.stats.write_ahead += u64::from(count);
            self.stats.ownership_requests += u64::from(count);
            out.push(ToCoordinator::OwnRun { req: run_req, first: q, count, conditional });
            q += u64::from(count);
        }
        let wa = &mut self.writeahead;
        wa.next = wa.next.max(q).max(page + 1);
    }

    /// A read fault on `page`, whose request is in flight already: when read faults walk the
    /// region in order, fetch the next pages beyond what is in flight, as one run.
    pub(super) fn read_ahead(&mut self, page: PageNo, out: &mut Vec<ToCoordinator>) {
        let (span, asked) = self.read_ahead_span(page);
        if span > 0 {
            self.fetch_runs((page + 1).max(asked), page + 1 + span, out);
        }
    }
}
