//! The process side of the INVALIDATE coherence protocol: the sans-IO core that turns page
//! faults and coordinator messages into mapping changes and messages to the coordinator.
//!
//! One [`ProcessPages`] serves one attached region. The driver calls
//! [`ProcessPages::handle_fault`] when a thread faults and [`ProcessPages::handle_message`] for
//! each page message from the coordinator, strictly in arrival order (ordering rule 2: the
//! coordinator's messages travel on one FIFO stream, and applying them out of order breaks
//! sequential consistency). The core changes the real mapping only through [`PageMemory`],
//! synchronously and in order, and appends the messages to send to `out`.
//!
//! # Rules
//!
//! Each page is Invalid, ReadOnly or Writable; at most one request (Fetch or Own) per page is in
//! flight, so several threads faulting on one page produce one request:
//! * read fault on a valid page, write fault on a Writable page: the fault is already resolved,
//!   just wake the thread;
//! * otherwise, if a request for the page is in flight, do nothing: its reply installs the page
//!   and wakes every waiter, and a thread that still lacks write access faults again and then
//!   sends an `Own`;
//! * otherwise send `Fetch` (read on Invalid) or `Own` (write).
//!
//! Replies: `Data` installs a ReadOnly copy; `Grant` with data installs a Writable copy
//! (dropping a ReadOnly one first), `Grant` without data upgrades the ReadOnly copy in place
//! (the coordinator knows it is current). A reply for no in-flight request is an error.
//!
//! Demands: `Invalidate` drops a ReadOnly copy and is always acknowledged (the copy may already
//! be gone). `Downgrade` write-protects a Writable copy and returns its contents, read **after**
//! protecting so no store can land later; `Recall` drops the copy and returns the contents of a
//! Writable one. Both answer `None` when the page is not Writable: that happens when the process
//! wrote the page back ([`ProcessPages::release_all`]) before the demand arrived, and the
//! coordinator then uses the `Writeback` it received first (FIFO). A `Downgrade` reaching a
//! ReadOnly copy (impossible with a correct coordinator, which downgrades only the owner) drops
//! it, so that the `None` answer, which tells the coordinator "not a reader", stays true.

use std::collections::HashMap;

use crate::wire::{GrantData, Mode, PageData, PageNo, ReqId, RmwOp, ToCoordinator, ToProcess};

/// What the caller of [`ProcessPages::handle_fault`] must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// Nothing: a request is on its way (or the page is valid and the thread was woken).
    Wait,
    /// A store to an update-mode page this process holds read-only: decode the faulting
    /// instruction and [`ProcessPages::replay`] it (or fall back to
    /// [`ProcessPages::handle_fault_by_ownership`]).
    Replay,
}

/// A store or RMW to replay at the coordinator (update mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayOp {
    /// Store `width` bytes of `value` at `offset`.
    Store {
        /// Byte offset in the page.
        offset: u16,
        /// 1, 2, 4, 8 or 16.
        width: u8,
        /// Low `width` bytes are stored.
        value: u128,
    },
    /// Atomic read-modify-write.
    Rmw {
        /// Byte offset in the page.
        offset: u16,
        /// 1, 2, 4 or 8.
        width: u8,
        /// The operation.
        op: RmwOp,
        /// Source operand (new value for CmpXchg).
        operand: u64,
        /// Comparand for CmpXchg.
        expected: u64,
    },
}

/// How a replayed write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Sequenced and applied locally; `old` is the value memory held before.
    Done {
        /// Previous value (RMW result).
        old: u64,
    },
    /// Not applied: the page left update mode or this copy was invalidated. Re-execute the
    /// instruction (it will fault again and take the ownership path).
    Retry,
}

/// The kind of access that faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A load.
    Read,
    /// A store (or any read-modify-write).
    Write,
}

/// The state of one page in this process's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PageState {
    /// Not mapped: any access faults.
    #[default]
    Invalid,
    /// Mapped and write-protected: stores fault.
    ReadOnly,
    /// Mapped writable: this process is the page's exclusive owner.
    Writable,
}

/// What the driver does to the real mapping (userfaultfd ioctls, alias reads). Called
/// synchronously, in order.
pub trait PageMemory {
    /// Invalid -> ReadOnly or Writable with these contents (`None` = zero page); wakes threads
    /// waiting on the page.
    fn install(&mut self, page: PageNo, data: Option<&[u8]>, writable: bool);
    /// ReadOnly -> Writable keeping the contents; wakes waiters.
    fn make_writable(&mut self, page: PageNo);
    /// Writable -> ReadOnly; returns the contents AFTER protecting (no store can land later).
    fn write_protect(&mut self, page: PageNo) -> Vec<u8>;
    /// ReadOnly/Writable -> Invalid; returns the contents if `want_contents`.
    fn drop_page(&mut self, page: PageNo, want_contents: bool) -> Option<Vec<u8>>;
    /// Wake threads waiting on `page` without changing it (their fault is already resolved).
    fn wake(&mut self, page: PageNo);
    /// Stores `width` bytes of `value` at `offset` of a ReadOnly (update-mode) page, with a
    /// single store of that width so no reader sees a torn value (rule 7).
    fn store(&mut self, page: PageNo, offset: u16, width: u8, value: u128);

    /// [`install`](Self::install) of `count` consecutive pages (`data`: `count` pages of bytes,
    /// or `None` for zeros) — one copy and one wake-up in a real mapping.
    fn install_run(&mut self, first: PageNo, count: u32, data: Option<&[u8]>, writable: bool) {
        for i in 0..count {
            let page = data.map(|d| &d[i as usize * crate::PAGE_SIZE..(i as usize + 1) * crate::PAGE_SIZE]);
            self.install(first + u64::from(i), page, writable);
        }
    }
    /// [`make_writable`](Self::make_writable) of `count` consecutive pages.
    fn make_writable_run(&mut self, first: PageNo, count: u32) {
        for i in 0..count {
            self.make_writable(first + u64::from(i));
        }
    }
    /// [`write_protect`](Self::write_protect) of `count` consecutive pages; their contents,
    /// page after page.
    fn write_protect_run(&mut self, first: PageNo, count: u32) -> Vec<u8> {
        (0..count).flat_map(|i| self.write_protect(first + u64::from(i))).collect()
    }
    /// [`drop_page`](Self::drop_page) of `count` consecutive pages.
    fn drop_run(&mut self, first: PageNo, count: u32, want_contents: bool) -> Option<Vec<u8>> {
        let mut all = Vec::new();
        for i in 0..count {
            if let Some(d) = self.drop_page(first + u64::from(i), want_contents) {
                all.extend(d);
            }
        }
        want_contents.then_some(all)
    }
    /// [`wake`](Self::wake) of `count` consecutive pages.
    fn wake_run(&mut self, first: PageNo, count: u32) {
        for i in 0..count {
            self.wake(first + u64::from(i));
        }
    }
}

/// Counters of one process's coherence activity.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PageStats {
    /// Fetches issued by read-ahead (also counted in `fetches`).
    pub prefetches: u64,
    /// Stores and RMWs replayed at the coordinator (update mode).
    pub replayed_writes: u64,
    /// Replayed writes answered Retry.
    pub write_retries: u64,
    /// Other processes' replayed stores applied to our copies.
    pub updates_applied: u64,
    /// Read faults handled.
    pub read_faults: u64,
    /// Write faults handled.
    pub write_faults: u64,
    /// `Fetch` requests sent.
    pub fetches: u64,
    /// `Own` requests sent.
    pub ownership_requests: u64,
    /// `Invalidate` messages received.
    pub invalidations: u64,
    /// `Downgrade` messages received.
    pub downgrades: u64,
    /// `Recall` messages received.
    pub recalls: u64,
    /// Page bytes received in `Data`/`Grant`.
    pub bytes_received: u64,
    /// Page bytes sent in acks and writebacks.
    pub bytes_sent: u64,
    /// Pages asked for by write-ahead (conditional ownership).
    pub write_ahead: u64,
    /// Write-ahead pages denied (someone else held them).
    pub write_ahead_denied: u64,
    /// Run messages received (each several pages).
    pub runs_received: u64,
}

/// A coordinator message that breaks the protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PagesError {
    /// What was wrong.
    #[error("{0}")]
    Protocol(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    req: ReqId,
    access: Access,
    /// Write-ahead: asked conditionally, may be answered `Denied`.
    ahead: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    state: PageState,
    pending: Option<Pending>,
    /// The mode this copy was installed in (learned from Data, Grant and Retry).
    mode: Mode,
}

/// The process side of the INVALIDATE protocol for one region (see the module docs).
#[derive(Debug)]
pub struct ProcessPages {
    /// Pages that are valid or have a request in flight; absent = Invalid, idle.
    slots: HashMap<PageNo, Slot>,
    next_req: ReqId,
    in_flight: usize,
    stats: PageStats,
    readahead: ReadAhead,
    writeahead: ReadAhead,
    /// Replayed writes in flight: request -> page.
    writes: HashMap<ReqId, PageNo>,
    /// Last known mode of pages, kept after their copies are dropped: a store to an Invalid
    /// page believed in update mode fetches a read-only copy (and is then replayed) instead of
    /// asking for ownership, which would switch the page back to invalidate mode.
    hints: HashMap<PageNo, Mode>,
    /// Advised policies, latest last.
    advice: Vec<(PageNo, PageNo, Mode)>,
    completions: Vec<(ReqId, WriteOutcome)>,
    /// Pages whose replayed write was answered Retry: their next ownership request is forced.
    /// Without it, adversarial mode switches bounce a writer forever (Own answered read-only in
    /// update mode, its replay answered Retry, Own again: the model's B-nofix counterexample);
    /// with it every store completes within a bounded number of requests (B-attempts).
    escalate: std::collections::HashSet<PageNo>,
    /// Pages in the region (messages about pages beyond are protocol errors); 0 = unchecked.
    limit: u64,
}

/// Sequential read-ahead: when read faults walk pages in order, fetch a growing window of the
/// next Invalid pages too, so a sequential first touch streams instead of paying one round trip
/// per page. Scattered faults reset the window to nothing.
#[derive(Debug, Default, Clone, Copy)]
struct ReadAhead {
    /// Pages in the region (no prefetch past the end); 0 = read-ahead off.
    pages: u64,
    /// The last page a read fault hit.
    last: Option<PageNo>,
    /// Current window, doubling up to [`MAX_READ_AHEAD`].
    window: u64,
    /// First page not yet prefetched.
    next: PageNo,
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

impl Default for ProcessPages {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessPages {
    /// Every page Invalid, nothing in flight.
    pub fn new() -> Self {
        ProcessPages {
            slots: HashMap::new(),
            next_req: 1,
            in_flight: 0,
            stats: PageStats::default(),
            readahead: ReadAhead::default(),
            writeahead: ReadAhead::default(),
            writes: HashMap::new(),
            completions: Vec::new(),
            escalate: Default::default(),
            hints: HashMap::new(),
            advice: Vec::new(),
            limit: 0,
        }
    }

    /// A region of `pages` pages: messages about pages beyond it, and page contents or replayed
    /// accesses that do not fit a page, are protocol errors (never a panic or an out-of-bounds
    /// store); sequential read-ahead is on.
    pub fn for_region(pages: u64) -> Self {
        let mut p = Self::new().with_read_ahead(pages).with_write_ahead(pages);
        p.limit = pages;
        p
    }

    /// Enables sequential read-ahead within a region of `pages` pages.
    pub fn with_read_ahead(mut self, pages: u64) -> Self {
        self.readahead.pages = pages;
        self
    }

    /// Enables sequential write-ahead within a region of `pages` pages: sequential write faults
    /// ask for ownership of the next pages too (conditionally for pages this process holds
    /// no copy of — only pages nobody holds are granted — and for read-only copies it holds).
    pub fn with_write_ahead(mut self, pages: u64) -> Self {
        self.writeahead.pages = pages;
        self
    }

    /// The state of `page`.
    pub fn state(&self, page: PageNo) -> PageState {
        self.slots.get(&page).map(|s| s.state).unwrap_or_default()
    }

    /// Whether the current state of `page` lets `access` proceed (a fault with it is resolved).
    pub fn allows(&self, page: PageNo, access: Access) -> bool {
        match access {
            Access::Read => self.state(page) != PageState::Invalid,
            Access::Write => self.state(page) == PageState::Writable,
        }
    }

    /// A thread faulted on `page` with `access`.
    pub fn handle_fault(
        &mut self,
        page: PageNo,
        access: Access,
        mem: &mut impl PageMemory,
        out: &mut Vec<ToCoordinator>,
    ) -> FaultAction {
        match access {
            Access::Read => self.stats.read_faults += 1,
            Access::Write => self.stats.write_faults += 1,
        }
        self.fault(page, access, false, mem, out)
    }

    /// A store the runtime cannot replay (an unsupported instruction, or a store inside a
    /// system call): ask for ownership whatever the page's mode (the coordinator switches an
    /// update-mode page back to invalidate mode for it).
    pub fn handle_fault_by_ownership(
        &mut self,
        page: PageNo,
        mem: &mut impl PageMemory,
        out: &mut Vec<ToCoordinator>,
    ) {
        // The same fault the thread already raised (counted by handle_fault), served another way.
        self.fault(page, Access::Write, true, mem, out);
    }

    /// Sends a replayed store of a thread that faulted on an update-mode page. Returns its
    /// request id, or `None` when the copy is no longer read-only in update mode (an
    /// invalidation or a Retry came in since the fault, rule 6): the caller lets the thread
    /// re-execute the instruction.
    pub fn replay(&mut self, page: PageNo, op: ReplayOp, out: &mut Vec<ToCoordinator>) -> Option<ReqId> {
        let slot = self.slots.get(&page).copied().unwrap_or_default();
        if slot.state != PageState::ReadOnly || slot.mode != Mode::Update || slot.pending.is_some() {
            return None;
        }
        let req = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        self.writes.insert(req, page);
        self.stats.replayed_writes += 1;
        out.push(match op {
            ReplayOp::Store { offset, width, value } => ToCoordinator::Write { req, page, offset, width, value },
            ReplayOp::Rmw { offset, width, op, operand, expected } => {
                ToCoordinator::Rmw { req, page, offset, width, op, operand, expected }
            }
        });
        Some(req)
    }

    /// Replayed writes that ended since the last call.
    pub fn take_completions(&mut self) -> Vec<(ReqId, WriteOutcome)> {
        std::mem::take(&mut self.completions)
    }

    fn fault(
        &mut self,
        page: PageNo,
        access: Access,
        force_own: bool,
        mem: &mut impl PageMemory,
        out: &mut Vec<ToCoordinator>,
    ) -> FaultAction {
        let slot = self.slots.get(&page).copied().unwrap_or_default();
        let resolved = match access {
            Access::Read => slot.state != PageState::Invalid,
            Access::Write => slot.state == PageState::Writable,
        };
        if resolved {
            // Another thread's request already brought the page in.
            mem.wake(page);
            return FaultAction::Wait;
        }
        if slot.pending.is_some() {
            // Its reply wakes this thread; it re-faults if still not allowed.
            // A stream of faults that caught up with pages asked for ahead keeps the windows
            // ahead of it in flight.
            match (access, slot.pending) {
                (Access::Read, _) => self.read_ahead(page, out),
                (Access::Write, Some(p)) if p.access == Access::Write => self.write_ahead(page, slot.state, p.req, out),
                _ => {}
            }
            return FaultAction::Wait;
        }
        if access == Access::Write
            && !force_own
            && slot.state == PageState::ReadOnly
            && slot.mode == Mode::Update
        {
            return FaultAction::Replay;
        }
        // A store to an Invalid page believed in update mode: fetch a copy first; the store
        // faults again on the read-only copy and is replayed.
        let access = if access == Access::Write
            && !force_own
            && slot.state == PageState::Invalid
            && self.hint(page) == Mode::Update
        {
            Access::Read
        } else {
            access
        };
        let req = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        self.slots.insert(page, Slot { pending: Some(Pending { req, access, ahead: false }), ..slot });
        self.in_flight += 1;
        match access {
            Access::Read => {
                self.stats.fetches += 1;
                // The pages read-ahead wants right after this one travel in the same request,
                // the rest of the windows in runs of their own.
                let (ahead, asked) = self.read_ahead_span(page);
                let first_run = ahead.min(u64::from(crate::runs::MAX_RUN) - 1);
                let count = 1 + self.claim_run(page + 1, first_run, req, Access::Read, false, |s| s.state == PageState::Invalid);
                self.stats.fetches += u64::from(count - 1);
                self.stats.prefetches += u64::from(count - 1);
                if count == 1 {
                    out.push(ToCoordinator::Fetch { req, page });
                } else {
                    out.push(ToCoordinator::FetchRun { req, first: page, count });
                }
                self.fetch_runs((page + u64::from(count)).max(asked), page + 1 + ahead, out);
            }
            Access::Write => {
                self.stats.ownership_requests += 1;
                let forced = self.escalate.remove(&page) || force_own;
                out.push(if forced { ToCoordinator::ForceOwn { req, page } } else { ToCoordinator::Own { req, page } });
                self.write_ahead(page, slot.state, req, out);
            }
        }
        FaultAction::Wait
    }

    /// Marks up to `max` consecutive pages from `first` that satisfy `eligible` (and have no
    /// request in flight) as requested by `req`; returns how many (they form one run).
    /// Whether `page` could join a run now: nothing in flight for it and `eligible` holds.
    fn claimable(&self, page: PageNo, eligible: impl Fn(&Slot) -> bool) -> bool {
        let slot = self.slots.get(&page).copied().unwrap_or_default();
        slot.pending.is_none() && eligible(&slot)
    }

    fn claim_run(
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
    fn read_ahead_span(&mut self, page: PageNo) -> (u64, PageNo) {
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
    fn fetch_runs(&mut self, from: PageNo, end: PageNo, out: &mut Vec<ToCoordinator>) {
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
    fn write_ahead(&mut self, page: PageNo, state: PageState, req: ReqId, out: &mut Vec<ToCoordinator>) {
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

    fn hint(&self, page: PageNo) -> Mode {
        if let Some(m) = self.hints.get(&page) {
            return *m;
        }
        self.advice
            .iter()
            .rev()
            .find(|(first, end, _)| (*first..*end).contains(&page))
            .map_or(Mode::Invalidate, |a| a.2)
    }

    fn set_hint(&mut self, page: PageNo, mode: Mode) {
        if self.hints.len() > 1 << 20 {
            self.hints.clear(); // hints are only hints: bound their memory
        }
        self.hints.insert(page, mode);
    }

    /// A read fault on `page`, whose request is in flight already: when read faults walk the
    /// region in order, fetch the next pages beyond what is in flight, as one run.
    fn read_ahead(&mut self, page: PageNo, out: &mut Vec<ToCoordinator>) {
        let (span, asked) = self.read_ahead_span(page);
        if span > 0 {
            self.fetch_runs((page + 1).max(asked), page + 1 + span, out);
        }
    }

    /// A page message from the coordinator (`Data`, `Grant`, `Invalidate`, `Downgrade`,
    /// `Recall`). Anything else, or a reply to no request in flight, is an error and changes
    /// nothing (an `Invalidate` reaching a Writable page is an error too; it is still
    /// acknowledged, and the page is kept).
    pub fn handle_message(
        &mut self,
        msg: ToProcess,
        mem: &mut impl PageMemory,
        out: &mut Vec<ToCoordinator>,
    ) -> Result<(), PagesError> {
        self.validate(&msg)?;
        match msg {
            ToProcess::Data { req, page, data, mode } => {
                let slot = match self.reply_slot(page, req, Access::Read, "Data") {
                    Ok(slot) => slot,
                    // Rule 3': ownership of an update-mode page is answered with a read-only
                    // copy in update mode; the thread's store faults again and is replayed.
                    Err(_) if mode == Mode::Update => self.reply_slot(page, req, Access::Write, "Data in update mode")?,
                    Err(e) => return Err(e),
                };
                match slot.state {
                    PageState::Invalid => {
                        mem.install(page, data.as_ref().map(|d| d.0.as_slice()), false);
                    }
                    PageState::ReadOnly => mem.wake(page),
                    PageState::Writable => {
                        return Err(PagesError::Protocol(format!(
                            "Data for page {page}, which is Writable"
                        )))
                    }
                }
                self.stats.bytes_received += data.map_or(0, |d| d.0.len() as u64);
                self.finish(page, PageState::ReadOnly, mode);
                self.set_hint(page, mode);
            }
            ToProcess::Grant { req, page, data } => {
                let slot = self.reply_slot(page, req, Access::Write, "Grant")?;
                match (data, slot.state) {
                    (_, PageState::Writable) => {
                        return Err(PagesError::Protocol(format!(
                            "Grant for page {page}, which is already Writable"
                        )))
                    }
                    (None, PageState::Invalid) => {
                        return Err(PagesError::Protocol(format!(
                            "Grant without data for page {page}, which holds no copy"
                        )))
                    }
                    (None, PageState::ReadOnly) => mem.make_writable(page),
                    (Some(d), state) => {
                        if state == PageState::ReadOnly {
                            mem.drop_page(page, false);
                        }
                        match d {
                            GrantData::Zero => mem.install(page, None, true),
                            GrantData::Bytes(b) => {
                                self.stats.bytes_received += b.0.len() as u64;
                                mem.install(page, Some(&b.0), true);
                            }
                        }
                    }
                }
                self.finish(page, PageState::Writable, Mode::Invalidate);
                self.set_hint(page, Mode::Invalidate);
            }
            ToProcess::ModeHint { page, mode } => {
                if let Some(slot) = self.slots.get_mut(&page) {
                    if slot.state == PageState::ReadOnly {
                        slot.mode = mode;
                    }
                }
                self.set_hint(page, mode);
            }
            ToProcess::Advice { first, count, coherence } => {
                let mode = match coherence {
                    crate::wire::Coherence::Update => Mode::Update,
                    _ => Mode::Invalidate,
                };
                self.advice.push((first, first.saturating_add(count), mode));
                // Advice overrides older per-page hints in its range.
                self.hints.retain(|p, _| !(first..first.saturating_add(count)).contains(p));
            }
            ToProcess::Update { page, offset, width, value } => {
                // Another process's replayed store; only a ReadOnly copy receives them (a copy
                // dropped since is refetched from the home copy, which has it).
                if self.state(page) == PageState::ReadOnly {
                    mem.store(page, offset, width, value);
                    self.stats.updates_applied += 1;
                }
            }
            ToProcess::WriteAck { req, page, offset, width, value, old } => {
                if self.writes.remove(&req) != Some(page) {
                    return Err(PagesError::Protocol(format!("WriteAck for unknown write {req}")));
                }
                // Rule 4: applied locally only now; every earlier update has arrived before.
                if self.state(page) == PageState::ReadOnly {
                    mem.store(page, offset, width, value);
                }
                self.completions.push((req, WriteOutcome::Done { old }));
            }
            ToProcess::Retry { req, page } => {
                if self.writes.remove(&req) != Some(page) {
                    return Err(PagesError::Protocol(format!("Retry for unknown write {req}")));
                }
                if let Some(slot) = self.slots.get_mut(&page) {
                    slot.mode = Mode::Invalidate;
                }
                self.set_hint(page, Mode::Invalidate);
                self.escalate.insert(page);
                self.stats.write_retries += 1;
                self.completions.push((req, WriteOutcome::Retry));
            }
            ToProcess::Invalidate { page } => {
                self.stats.invalidations += 1;
                // Always acknowledged: the coordinator counts acks, not copies.
                out.push(ToCoordinator::InvalidateAck { page });
                match self.state(page) {
                    PageState::Invalid => {}
                    PageState::ReadOnly => {
                        mem.drop_page(page, false);
                        self.set_state(page, PageState::Invalid);
                    }
                    PageState::Writable => {
                        // The owner gets Recall, never Invalidate. Keep the data.
                        return Err(PagesError::Protocol(format!(
                            "Invalidate for page {page}, which is Writable"
                        )));
                    }
                }
            }
            ToProcess::Downgrade { page } => {
                self.stats.downgrades += 1;
                let data = match self.state(page) {
                    PageState::Writable => {
                        let bytes = mem.write_protect(page);
                        self.set_state(page, PageState::ReadOnly);
                        Some(bytes)
                    }
                    PageState::ReadOnly => {
                        // Cannot happen with a correct coordinator (only the owner is
                        // downgraded). Answering None tells it we are not a reader, so drop the
                        // copy to keep that true.
                        mem.drop_page(page, false);
                        self.set_state(page, PageState::Invalid);
                        None
                    }
                    PageState::Invalid => None,
                };
                self.stats.bytes_sent += data.as_ref().map_or(0, |d| d.len() as u64);
                out.push(ToCoordinator::DowngradeAck { page, data: data.map(PageData) });
            }
            ToProcess::Recall { page } => {
                self.stats.recalls += 1;
                let data = match self.state(page) {
                    PageState::Writable => {
                        let bytes = mem.drop_page(page, true);
                        self.set_state(page, PageState::Invalid);
                        // A driver that returns nothing when asked: send zeros rather than lie
                        // about holding no copy.
                        Some(bytes.unwrap_or_default())
                    }
                    PageState::ReadOnly => {
                        mem.drop_page(page, false);
                        self.set_state(page, PageState::Invalid);
                        None
                    }
                    PageState::Invalid => None,
                };
                self.stats.bytes_sent += data.as_ref().map_or(0, |d| d.len() as u64);
                out.push(ToCoordinator::RecallAck { page, data: data.map(PageData) });
            }
            run @ (ToProcess::DataRun { .. }
            | ToProcess::GrantRun { .. }
            | ToProcess::Denied { .. }
            | ToProcess::InvalidateRun { .. }
            | ToProcess::DowngradeRun { .. }
            | ToProcess::RecallRun { .. }) => {
                self.stats.runs_received += 1;
                return self.handle_run(run, mem, out);
            }
            other => {
                return Err(PagesError::Protocol(format!("not a page message: {other:?}")));
            }
        }
        Ok(())
    }

    /// A run message: when every page of it is in the state its fast path needs, one memory
    /// operation for the whole run (one copy, one ioctl, one wake-up) and one reply; otherwise
    /// its pages one by one, exactly as the per-page messages it stands for (`crate::runs`).
    fn handle_run(
        &mut self,
        msg: ToProcess,
        mem: &mut impl PageMemory,
        out: &mut Vec<ToCoordinator>,
    ) -> Result<(), PagesError> {
        let all = |this: &Self, first: PageNo, count: u32, f: &dyn Fn(&Slot) -> bool| {
            (0..u64::from(count)).all(|i| this.slots.get(&(first + i)).is_some_and(f))
        };
        let pending = |req: ReqId, access: Access| move |s: &Slot| s.pending.is_some_and(|p| p.req == req && p.access == access);
        match &msg {
            ToProcess::DataRun { req, first, count, data, mode } => {
                let is = pending(*req, Access::Read);
                if all(self, *first, *count, &|s| is(s) && s.state == PageState::Invalid) {
                    mem.install_run(*first, *count, data.as_ref().map(|d| d.0.as_slice()), false);
                    self.stats.bytes_received += data.as_ref().map_or(0, |d| d.0.len() as u64);
                    for page in *first..*first + u64::from(*count) {
                        self.finish(page, PageState::ReadOnly, *mode);
                        self.set_hint(page, *mode);
                    }
                    return Ok(());
                }
            }
            ToProcess::GrantRun { req, first, count, data } => {
                let is = pending(*req, Access::Write);
                let fast = match data {
                    None => all(self, *first, *count, &|s| is(s) && s.state == PageState::ReadOnly),
                    Some(_) => all(self, *first, *count, &|s| is(s) && s.state == PageState::Invalid),
                };
                if fast {
                    match data {
                        None => mem.make_writable_run(*first, *count),
                        Some(GrantData::Zero) => mem.install_run(*first, *count, None, true),
                        Some(GrantData::Bytes(b)) => {
                            self.stats.bytes_received += b.0.len() as u64;
                            mem.install_run(*first, *count, Some(&b.0), true);
                        }
                    }
                    for page in *first..*first + u64::from(*count) {
                        self.finish(page, PageState::Writable, Mode::Invalidate);
                        self.set_hint(page, Mode::Invalidate);
                    }
                    return Ok(());
                }
            }
            ToProcess::Denied { req, first, count } => {
                let is = pending(*req, Access::Write);
                if !all(self, *first, *count, &|s| is(s) && s.pending.is_some_and(|p| p.ahead)) {
                    return Err(PagesError::Protocol(format!(
                        "Denied for pages {first}..+{count} with request {req}, which were not asked for ahead"
                    )));
                }
                for page in *first..*first + u64::from(*count) {
                    let state = self.state(page);
                    self.finish(page, state, Mode::Invalidate);
                    if state == PageState::Invalid {
                        self.slots.remove(&page);
                    }
                }
                self.stats.write_ahead_denied += u64::from(*count);
                // A thread that touched one of them meanwhile waits for this answer: it retries
                // (and asks for the page by itself).
                mem.wake_run(*first, *count);
                return Ok(());
            }
            ToProcess::InvalidateRun { first, count }
                if all(self, *first, *count, &|s| s.state == PageState::ReadOnly) => {
                    mem.drop_run(*first, *count, false);
                    self.stats.invalidations += u64::from(*count);
                    for page in *first..*first + u64::from(*count) {
                        self.set_state(page, PageState::Invalid);
                    }
                    out.push(ToCoordinator::InvalidateAckRun { first: *first, count: *count });
                    return Ok(());
                }
            ToProcess::DowngradeRun { first, count }
                if all(self, *first, *count, &|s| s.state == PageState::Writable) => {
                    let bytes = mem.write_protect_run(*first, *count);
                    self.stats.downgrades += u64::from(*count);
                    self.stats.bytes_sent += bytes.len() as u64;
                    for page in *first..*first + u64::from(*count) {
                        self.set_state(page, PageState::ReadOnly);
                    }
                    out.push(ToCoordinator::DowngradeAckRun { first: *first, count: *count, data: Some(PageData(bytes)) });
                    return Ok(());
                }
            ToProcess::RecallRun { first, count }
                if all(self, *first, *count, &|s| s.state == PageState::Writable) => {
                    let bytes = mem.drop_run(*first, *count, true).unwrap_or_default();
                    self.stats.recalls += u64::from(*count);
                    self.stats.bytes_sent += bytes.len() as u64;
                    for page in *first..*first + u64::from(*count) {
                        self.set_state(page, PageState::Invalid);
                    }
                    out.push(ToCoordinator::RecallAckRun { first: *first, count: *count, data: Some(PageData(bytes)) });
                    return Ok(());
                }
            _ => {}
        }
        // Mixed states: page by page; the replies are merged into runs again by the driver.
        let mut acks = Vec::new();
        for m in crate::runs::expand_to_process(msg) {
            self.handle_message(m, mem, &mut acks)?;
        }
        out.extend(crate::runs::coalesce_to_coordinator(acks));
        Ok(())
    }

    /// Before detaching: writes back every Writable page (write-protect, then drop) and drops
    /// every ReadOnly copy. Returns how many pages were written back. Requests still in flight
    /// are kept (see [`ProcessPages::is_idle`]).
    pub fn release_all(
        &mut self,
        mem: &mut impl PageMemory,
        out: &mut Vec<ToCoordinator>,
    ) -> usize {
        let mut pages: Vec<(PageNo, PageState)> =
            self.slots.iter().map(|(&p, s)| (p, s.state)).collect();
        pages.sort_unstable_by_key(|&(p, _)| p);
        let mut written = 0;
        for (page, state) in pages {
            match state {
                PageState::Invalid => continue,
                PageState::ReadOnly => {
                    mem.drop_page(page, false);
                }
                PageState::Writable => {
                    let bytes = mem.write_protect(page);
                    mem.drop_page(page, false);
                    self.stats.bytes_sent += bytes.len() as u64;
                    out.push(ToCoordinator::Writeback { page, data: PageData(bytes) });
                    written += 1;
                }
            }
            self.set_state(page, PageState::Invalid);
        }
        written
    }

    /// The counters so far.
    pub fn stats(&self) -> PageStats {
        self.stats
    }

    /// No request and no replayed write is in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.writes.is_empty()
    }

    /// Checks what a message carries against the region before anything acts on it.
    fn validate(&self, msg: &ToProcess) -> Result<(), PagesError> {
        let run = match msg {
            ToProcess::DataRun { first, count, data, .. } => Some((*first, *count, data.as_ref().map(|d| d.0.len()))),
            ToProcess::GrantRun { first, count, data, .. } => {
                let len = match data {
                    Some(GrantData::Bytes(b)) => Some(b.0.len()),
                    _ => None,
                };
                Some((*first, *count, len))
            }
            ToProcess::Denied { first, count, .. }
            | ToProcess::InvalidateRun { first, count }
            | ToProcess::DowngradeRun { first, count }
            | ToProcess::RecallRun { first, count } => Some((*first, *count, None)),
            _ => None,
        };
        if let Some((first, count, len)) = run {
            crate::runs::check_run("a run", count, len.filter(|_| self.limit > 0)).map_err(PagesError::Protocol)?;
            let end = first.checked_add(u64::from(count));
            if self.limit > 0 && end.is_none_or(|e| e > self.limit) {
                return Err(PagesError::Protocol(format!("a run of {count} pages from page {first} leaves the region of {} pages", self.limit)));
            }
            return Ok(());
        }
        let (page, access, data) = match msg {
            ToProcess::Data { page, data, .. } => (*page, None, data.as_ref().map(|d| d.0.len())),
            ToProcess::Grant { page, data, .. } => {
                let len = match data {
                    Some(GrantData::Bytes(b)) => Some(b.0.len()),
                    _ => None,
                };
                (*page, None, len)
            }
            ToProcess::Update { page, offset, width, .. } | ToProcess::WriteAck { page, offset, width, .. } => {
                (*page, Some((*offset, *width)), None)
            }
            ToProcess::Invalidate { page }
            | ToProcess::Downgrade { page }
            | ToProcess::Recall { page }
            | ToProcess::Retry { page, .. }
            | ToProcess::ModeHint { page, .. } => (*page, None, None),
            _ => return Ok(()),
        };
        if self.limit > 0 && page >= self.limit {
            return Err(PagesError::Protocol(format!("page {page} is outside the region of {} pages", self.limit)));
        }
        if let (Some(len), true) = (data, self.limit > 0) {
            if len != crate::PAGE_SIZE {
                return Err(PagesError::Protocol(format!("page {page} came with {len} bytes instead of {}", crate::PAGE_SIZE)));
            }
        }
        if let Some((offset, width)) = access {
            if !matches!(width, 1 | 2 | 4 | 8 | 16) || usize::from(offset) + usize::from(width) > crate::PAGE_SIZE {
                return Err(PagesError::Protocol(format!("a {width}-byte update at offset {offset} of page {page}")));
            }
        }
        Ok(())
    }

    /// The slot of `page` if a `kind` request `req` is in flight for it.
    fn reply_slot(
        &self,
        page: PageNo,
        req: ReqId,
        access: Access,
        what: &str,
    ) -> Result<Slot, PagesError> {
        match self.slots.get(&page) {
            Some(slot) if slot.pending.is_some_and(|p| p.req == req && p.access == access) => Ok(*slot),
            slot => Err(PagesError::Protocol(format!(
                "{what} for page {page} with request {req}, but the request in flight is {:?}",
                slot.and_then(|s| s.pending)
            ))),
        }
    }

    /// The reply to the in-flight request of `page` was applied.
    fn finish(&mut self, page: PageNo, state: PageState, mode: Mode) {
        self.slots.insert(page, Slot { state, pending: None, mode });
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    fn set_state(&mut self, page: PageNo, state: PageState) {
        let slot = self.slots.entry(page).or_default();
        slot.state = state;
        if slot.state == PageState::Invalid && slot.pending.is_none() {
            self.slots.remove(&page);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the calls; keeps page contents.
    #[derive(Default)]
    struct Mem {
        pages: HashMap<PageNo, (bool, Vec<u8>)>,
        log: Vec<String>,
    }

    impl PageMemory for Mem {
        fn install(&mut self, page: PageNo, data: Option<&[u8]>, writable: bool) {
            assert!(!self.pages.contains_key(&page), "install over a valid page");
            self.pages.insert(page, (writable, data.map_or(vec![0; 4], <[u8]>::to_vec)));
            self.log.push(format!("install {page} {writable}"));
        }
        fn make_writable(&mut self, page: PageNo) {
            self.pages.get_mut(&page).unwrap().0 = true;
            self.log.push(format!("make_writable {page}"));
        }
        fn store(&mut self, page: PageNo, offset: u16, width: u8, value: u128) {
            let p = self.pages.get_mut(&page).unwrap();
            assert!(!p.0, "updates go to read-only copies");
            let (o, w) = (usize::from(offset), usize::from(width));
            if p.1.len() < o + w {
                p.1.resize(o + w, 0);
            }
            p.1[o..o + w].copy_from_slice(&value.to_le_bytes()[..w]);
            self.log.push(format!("store {page} {offset} {width} {value}"));
        }
        fn write_protect(&mut self, page: PageNo) -> Vec<u8> {
            let p = self.pages.get_mut(&page).unwrap();
            p.0 = false;
            self.log.push(format!("write_protect {page}"));
            p.1.clone()
        }
        fn drop_page(&mut self, page: PageNo, want: bool) -> Option<Vec<u8>> {
            self.log.push(format!("drop {page}"));
            let p = self.pages.remove(&page).unwrap();
            want.then_some(p.1)
        }
        fn wake(&mut self, page: PageNo) {
            self.log.push(format!("wake {page}"));
        }
    }

    fn msg(p: &mut ProcessPages, m: &mut Mem, msg: ToProcess) -> Vec<ToCoordinator> {
        let mut out = Vec::new();
        p.handle_message(msg, m, &mut out).unwrap();
        out
    }

    fn fault(p: &mut ProcessPages, m: &mut Mem, page: PageNo, a: Access) -> Vec<ToCoordinator> {
        let mut out = Vec::new();
        p.handle_fault(page, a, m, &mut out);
        out
    }

    #[test]
    fn read_fault_fetches_once_then_installs() {
        let (mut p, mut m) = (ProcessPages::new(), Mem::default());
        assert_eq!(
            fault(&mut p, &mut m, 3, Access::Read),
            vec![ToCoordinator::Fetch { req: 1, page: 3 }]
        );
        assert!(fault(&mut p, &mut m, 3, Access::Read).is_empty());
        assert!(fault(&mut p, &mut m, 3, Access::Write).is_empty());
        assert!(!p.is_idle());
        let data = Some(PageData(vec![1, 2, 3, 4]));
        assert!(msg(&mut p, &mut m, ToProcess::Data { req: 1, page: 3, data, mode: Mode::Invalidate }).is_empty());
        assert_eq!(p.state(3), PageState::ReadOnly);
        assert!(p.is_idle());
        assert_eq!(m.pages[&3], (false, vec![1, 2, 3, 4]));
        // A read fault now is resolved; a write fault asks for ownership.
        assert!(fault(&mut p, &mut m, 3, Access::Read).is_empty());
        assert_eq!(m.log.last().unwrap(), "wake 3");
        assert_eq!(
            fault(&mut p, &mut m, 3, Access::Write),
            vec![ToCoordinator::Own { req: 2, page: 3 }]
        );
        assert!(msg(&mut p, &mut m, ToProcess::Grant { req: 2, page: 3, data: None }).is_empty());
        assert_eq!(p.state(3), PageState::Writable);
        assert_eq!(m.log.last().unwrap(), "make_writable 3");
        let s = p.stats();
        assert_eq!((s.read_faults, s.write_faults, s.fetches, s.ownership_requests), (3, 2, 1, 1));
        assert_eq!(s.bytes_received, 4);
    }

    #[test]
    fn update_mode_stores_are_replayed_and_applied_on_ack() {
        let (mut p, mut m) = (ProcessPages::new(), Mem::default());
        fault(&mut p, &mut m, 5, Access::Read);
        msg(&mut p, &mut m, ToProcess::Data { req: 1, page: 5, data: None, mode: Mode::Update });
        // A store to the read-only update-mode copy is to be replayed, not owned.
        let mut out = Vec::new();
        assert_eq!(p.handle_fault(5, Access::Write, &mut m, &mut out), FaultAction::Replay);
        assert!(out.is_empty());
        let op = ReplayOp::Store { offset: 8, width: 2, value: 0xBEEF };
        let req = p.replay(5, op, &mut out).unwrap();
        assert_eq!(out, vec![ToCoordinator::Write { req, page: 5, offset: 8, width: 2, value: 0xBEEF }]);
        assert!(!p.is_idle());
        // Another process's update lands first (FIFO), then our ack: both applied in order.
        msg(&mut p, &mut m, ToProcess::Update { page: 5, offset: 0, width: 1, value: 7 });
        msg(&mut p, &mut m, ToProcess::WriteAck { req, page: 5, offset: 8, width: 2, value: 0xBEEF, old: 0 });
        assert_eq!(p.take_completions(), vec![(req, WriteOutcome::Done { old: 0 })]);
        assert_eq!(&m.pages[&5].1[..10], &[7, 0, 0, 0, 0, 0, 0, 0, 0xEF, 0xBE]);
        assert!(p.is_idle());
        // A Retry switches our belief to invalidate mode: the re-executed store asks for
        // ownership, forced (escalation after a bounce: no Own / read-only / Retry cycle).
        let req = p.replay(5, op, &mut out).unwrap();
        msg(&mut p, &mut m, ToProcess::Retry { req, page: 5 });
        assert_eq!(p.take_completions(), vec![(req, WriteOutcome::Retry)]);
        let mut out = Vec::new();
        assert_eq!(p.handle_fault(5, Access::Write, &mut m, &mut out), FaultAction::Wait);
        assert!(matches!(out[0], ToCoordinator::ForceOwn { page: 5, .. }), "{out:?}");
    }

    #[test]
    fn replay_refused_once_the_copy_is_gone() {
        let (mut p, mut m) = (ProcessPages::new(), Mem::default());
        fault(&mut p, &mut m, 1, Access::Read);
        msg(&mut p, &mut m, ToProcess::Data { req: 1, page: 1, data: None, mode: Mode::Update });
        let mut out = Vec::new();
        assert_eq!(p.handle_fault(1, Access::Write, &mut m, &mut out), FaultAction::Replay);
        // An invalidation overtakes the decoding (rule 6): no Write is sent.
        msg(&mut p, &mut m, ToProcess::Invalidate { page: 1 });
        assert_eq!(p.replay(1, ReplayOp::Store { offset: 0, width: 8, value: 1 }, &mut out), None);
        assert!(out.is_empty());
        // Unsupported instructions ask for ownership whatever the mode.
        fault(&mut p, &mut m, 1, Access::Read);
        msg(&mut p, &mut m, ToProcess::Data { req: 2, page: 1, data: None, mode: Mode::Update });
        p.handle_fault_by_ownership(1, &mut m, &mut out);
        assert!(matches!(out[0], ToCoordinator::ForceOwn { page: 1, .. }), "{out:?}");
    }

    #[test]
    fn ownership_answered_read_only_in_update_mode_turns_the_store_into_a_replay() {
        let (mut p, mut m) = (ProcessPages::new(), Mem::default());
        // The process believes invalidate mode: its store asks for ownership.
        assert!(matches!(fault(&mut p, &mut m, 2, Access::Write)[..], [ToCoordinator::Own { req: 1, page: 2 }]));
        // Rule 3': the page is in update mode and stays there; the answer is a read-only copy.
        let data = Some(PageData(vec![4; 4]));
        assert!(msg(&mut p, &mut m, ToProcess::Data { req: 1, page: 2, data, mode: Mode::Update }).is_empty());
        assert_eq!(p.state(2), PageState::ReadOnly);
        assert_eq!(m.pages[&2], (false, vec![4; 4]));
        // The thread's store faults again and is replayed, not sent as ownership.
        let mut out = Vec::new();
        assert_eq!(p.handle_fault(2, Access::Write, &mut m, &mut out), FaultAction::Replay);
        assert!(out.is_empty());
        // Data in invalidate mode is no answer to an ownership request.
        fault(&mut p, &mut m, 3, Access::Write);
        let bad = ToProcess::Data { req: 2, page: 3, data: None, mode: Mode::Invalidate };
        assert!(p.handle_message(bad, &mut m, &mut out).is_err());
    }

    #[test]
    fn sequential_read_faults_prefetch_a_growing_window_in_runs() {
        let (mut p, mut m) = (ProcessPages::new().with_read_ahead(1000), Mem::default());
        let w = READ_AHEAD_WINDOWS as u32;
        // (first page, pages) of each request.
        let fetched = |out: &[ToCoordinator]| -> Vec<(PageNo, u32)> {
            out.iter()
                .map(|o| match o {
                    ToCoordinator::Fetch { page, .. } => (*page, 1),
                    ToCoordinator::FetchRun { first, count, .. } => (*first, *count),
                    other => panic!("unexpected {other:?}"),
                })
                .collect()
        };
        // A first fault is not sequential yet: no read-ahead.
        assert_eq!(fetched(&fault(&mut p, &mut m, 10, Access::Read)), vec![(10, 1)]);
        // The next page: 11 plus READ_AHEAD_WINDOWS windows of 4, in one request.
        assert_eq!(fetched(&fault(&mut p, &mut m, 11, Access::Read)), vec![(11, 1 + 4 * w)]);
        // 12 is in flight already: the windows (now 8 pages each) grow past what is in flight.
        let next = 12 + 4 * u64::from(w);
        assert_eq!(fetched(&fault(&mut p, &mut m, 12, Access::Read)), vec![(next, 1 + 4 * w)]);
        // A scattered fault resets it.
        assert_eq!(fetched(&fault(&mut p, &mut m, 500, Access::Read)), vec![(500, 1)]);
        // Never past the end of the region.
        fault(&mut p, &mut m, 997, Access::Read);
        assert_eq!(fetched(&fault(&mut p, &mut m, 998, Access::Read)), vec![(998, 2)]);
        assert_eq!(p.stats().prefetches, u64::from(4 * w + (1 + 4 * w) + 1));
        // Write faults never prefetch.
        assert_eq!(fault(&mut p, &mut m, 700, Access::Write).len(), 1);
        // A run reply for pages that were never asked for is an error.
        let req = match fault(&mut p, &mut m, 600, Access::Read).first() {
            Some(ToCoordinator::Fetch { req, .. }) => *req,
            other => panic!("{other:?}"),
        };
        let mut out = Vec::new();
        let bogus = ToProcess::DataRun { req, first: 600, count: 2, data: None, mode: Mode::Invalidate };
        assert!(p.handle_message(bogus, &mut m, &mut out).is_err(), "page 601 was never asked for");
    }

    #[test]
    fn sequential_write_faults_ask_two_windows_ahead_conditionally_for_untouched_pages() {
        let (mut p, mut m) = (ProcessPages::new().with_write_ahead(100), Mem::default());
        // (first page, pages, request, conditional) of each ownership request.
        let owned = |out: &[ToCoordinator]| -> Vec<(PageNo, u32, ReqId, bool)> {
            out.iter()
                .map(|o| match o {
                    ToCoordinator::Own { page, req } => (*page, 1, *req, false),
                    ToCoordinator::OwnRun { first, count, req, conditional } => (*first, *count, *req, *conditional),
                    other => panic!("unexpected {other:?}"),
                })
                .collect()
        };
        assert_eq!(owned(&fault(&mut p, &mut m, 10, Access::Write)), vec![(10, 1, 1, false)]);
        // Sequential: two windows of 4 ahead, conditionally, sharing the fault's request.
        assert_eq!(owned(&fault(&mut p, &mut m, 11, Access::Write)), vec![(11, 1, 2, false), (12, 8, 2, true)]);
        // 12 is asked for already: the windows grow past what is in flight, with a new request.
        assert_eq!(owned(&fault(&mut p, &mut m, 12, Access::Write)), vec![(20, 9, 3, true)]);
        // Denied pages are free to be asked for again; granted ones are writable.
        msg(&mut p, &mut m, ToProcess::Denied { req: 2, first: 12, count: 8 });
        assert!((12..20).all(|q| p.slots.get(&q).is_none_or(|s| s.pending.is_none()) && p.state(q) == PageState::Invalid));
        msg(&mut p, &mut m, ToProcess::GrantRun { req: 3, first: 20, count: 9, data: Some(GrantData::Zero) });
        assert!((20..29).all(|q| p.state(q) == PageState::Writable));
        // Read-only copies are upgraded ahead unconditionally.
        let mut p = ProcessPages::new().with_read_ahead(100).with_write_ahead(100);
        for q in 40..60 {
            let out = fault(&mut p, &mut m, q, Access::Read);
            if let Some(ToCoordinator::Fetch { req, .. } | ToCoordinator::FetchRun { req, .. }) = out.first() {
                let (first, count) = match out[0] {
                    ToCoordinator::Fetch { page, .. } => (page, 1),
                    ToCoordinator::FetchRun { first, count, .. } => (first, count),
                    _ => unreachable!(),
                };
                msg(&mut p, &mut m, ToProcess::DataRun { req: *req, first, count, data: None, mode: Mode::Invalidate });
            }
        }
        assert!((40..60).all(|q| p.state(q) == PageState::ReadOnly));
        fault(&mut p, &mut m, 40, Access::Write);
        let out = owned(&fault(&mut p, &mut m, 41, Access::Write));
        assert_eq!(out[1..], [(42, 8, out[0].2, false)], "{out:?}");
    }

    #[test]
    fn runs_install_in_one_operation_and_fall_back_page_by_page() {
        let (mut p, mut m) = (ProcessPages::new().with_read_ahead(100), Mem::default());
        fault(&mut p, &mut m, 0, Access::Read);
        let out = fault(&mut p, &mut m, 1, Access::Read);
        // The run: page 1 and READ_AHEAD_WINDOWS windows of 4; `e` is the first page after it.
        let n = 1 + 4 * READ_AHEAD_WINDOWS as u32;
        let e = 1 + u64::from(n);
        let ToCoordinator::FetchRun { req, first: 1, count } = out[0] else { panic!("{out:?}") };
        assert_eq!(count, n);
        let reply = ToProcess::DataRun { req, first: 1, count: n, data: None, mode: Mode::Invalidate };
        msg(&mut p, &mut m, reply);
        assert!((1..e).all(|q| p.state(q) == PageState::ReadOnly));
        assert_eq!(p.stats().runs_received, 1);
        // Downgrade of a run in mixed states: page by page, acks merged into runs again.
        for q in [e + 2, e + 3] {
            fault(&mut p, &mut m, q, Access::Write);
            let req = p.slots[&q].pending.unwrap().req;
            msg(&mut p, &mut m, ToProcess::Grant { req, page: q, data: Some(GrantData::Zero) });
        }
        let acks = msg(&mut p, &mut m, ToProcess::DowngradeRun { first: e + 2, count: 2 });
        assert_eq!(acks.len(), 1, "{acks:?}");
        let acks = msg(&mut p, &mut m, ToProcess::InvalidateRun { first: e - 2, count: 6 });
        // e-2, e-1 read-only, e, e+1 invalid, e+2, e+3 read-only again (downgraded): all
        // acknowledged.
        let acked: usize = acks.iter().map(|a| crate::runs::expand_to_coordinator(a.clone()).len()).sum();
        assert_eq!(acked, 6, "{acks:?}");
    }

    #[test]
    fn grant_with_data_replaces_an_invalidated_copy() {
        let (mut p, mut m) = (ProcessPages::new(), Mem::default());
        fault(&mut p, &mut m, 0, Access::Read);
        msg(&mut p, &mut m, ToProcess::Data { req: 1, page: 0, data: None, mode: Mode::Invalidate });
        fault(&mut p, &mut m, 0, Access::Write);
        // Another writer's transaction invalidates us before our Own is served.
        assert_eq!(
            msg(&mut p, &mut m, ToProcess::Invalidate { page: 0 }),
            vec![ToCoordinator::InvalidateAck { page: 0 }]
        );
        assert_eq!(p.state(0), PageState::Invalid);
        let data = Some(GrantData::Bytes(PageData(vec![9; 4])));
        msg(&mut p, &mut m, ToProcess::Grant { req: 2, page: 0, data });
        assert_eq!(m.pages[&0], (true, vec![9; 4]));
        // Invalidate of an Invalid page is still acknowledged.
        assert_eq!(
            msg(&mut p, &mut m, ToProcess::Invalidate { page: 7 }),
            vec![ToCoordinator::InvalidateAck { page: 7 }]
        );
    }

    #[test]
    fn grant_with_data_over_a_read_only_copy_drops_it_first() {
        let (mut p, mut m) = (ProcessPages::new(), Mem::default());
        fault(&mut p, &mut m, 0, Access::Read);
        msg(&mut p, &mut m, ToProcess::Data { req: 1, page: 0, data: None, mode: Mode::Invalidate });
        fault(&mut p, &mut m, 0, Access::Write);
        msg(&mut p, &mut m, ToProcess::Grant { req: 2, page: 0, data: Some(GrantData::Zero) });
        assert_eq!(m.log[m.log.len() - 2..], ["drop 0".to_string(), "install 0 true".to_string()]);
    }

    #[test]
    fn downgrade_and_recall() {
        let (mut p, mut m) = (ProcessPages::new(), Mem::default());
        fault(&mut p, &mut m, 0, Access::Write);
        let data = Some(GrantData::Bytes(PageData(vec![5; 4])));
        msg(&mut p, &mut m, ToProcess::Grant { req: 1, page: 0, data });
        assert_eq!(
            msg(&mut p, &mut m, ToProcess::Downgrade { page: 0 }),
            vec![ToCoordinator::DowngradeAck { page: 0, data: Some(PageData(vec![5; 4])) }]
        );
        assert_eq!(p.state(0), PageState::ReadOnly);
        // Recall of a ReadOnly copy: dropped, no data.
        assert_eq!(
            msg(&mut p, &mut m, ToProcess::Recall { page: 0 }),
            vec![ToCoordinator::RecallAck { page: 0, data: None }]
        );
        assert_eq!(p.state(0), PageState::Invalid);
        fault(&mut p, &mut m, 0, Access::Write);
        msg(&mut p, &mut m, ToProcess::Grant { req: 2, page: 0, data: Some(GrantData::Zero) });
        assert_eq!(
            msg(&mut p, &mut m, ToProcess::Recall { page: 0 }),
            vec![ToCoordinator::RecallAck { page: 0, data: Some(PageData(vec![0; 4])) }]
        );
        assert_eq!(
            msg(&mut p, &mut m, ToProcess::Downgrade { page: 0 }),
            vec![ToCoordinator::DowngradeAck { page: 0, data: None }]
        );
        assert_eq!(p.stats().bytes_sent, 8);
    }

    #[test]
    fn release_all_writes_back_owned_pages() {
        let (mut p, mut m) = (ProcessPages::new(), Mem::default());
        fault(&mut p, &mut m, 1, Access::Write);
        msg(&mut p, &mut m, ToProcess::Grant { req: 1, page: 1, data: Some(GrantData::Zero) });
        fault(&mut p, &mut m, 2, Access::Read);
        msg(&mut p, &mut m, ToProcess::Data { req: 2, page: 2, data: None, mode: Mode::Invalidate });
        let mut out = Vec::new();
        assert_eq!(p.release_all(&mut m, &mut out), 1);
        assert_eq!(out, vec![ToCoordinator::Writeback { page: 1, data: PageData(vec![0; 4]) }]);
        assert_eq!((p.state(1), p.state(2)), (PageState::Invalid, PageState::Invalid));
        assert!(m.pages.is_empty());
        assert_eq!(m.log[m.log.len() - 3..], ["write_protect 1", "drop 1", "drop 2"]);
    }

    #[test]
    fn bad_replies_are_errors_and_change_nothing() {
        let (mut p, mut m) = (ProcessPages::new(), Mem::default());
        let mut out = Vec::new();
        assert!(p
            .handle_message(ToProcess::Data { req: 1, page: 0, data: None, mode: Mode::Invalidate }, &mut m, &mut out)
            .is_err());
        fault(&mut p, &mut m, 0, Access::Read);
        // Wrong request id, wrong kind of reply.
        assert!(p
            .handle_message(ToProcess::Data { req: 9, page: 0, data: None, mode: Mode::Invalidate }, &mut m, &mut out)
            .is_err());
        assert!(p
            .handle_message(ToProcess::Grant { req: 1, page: 0, data: None }, &mut m, &mut out)
            .is_err());
        assert!(p.handle_message(ToProcess::Detached, &mut m, &mut out).is_err());
        fault(&mut p, &mut m, 1, Access::Write);
        assert!(p
            .handle_message(ToProcess::Grant { req: 2, page: 1, data: None }, &mut m, &mut out)
            .is_err());
        assert!(out.is_empty() && m.pages.is_empty());
        assert_eq!((p.state(0), p.state(1)), (PageState::Invalid, PageState::Invalid));
        assert!(!p.is_idle());
    }

    /// A mapping that accepts anything (the core must not panic even on a bogus sequence).
    #[derive(Default)]
    struct Lenient;

    impl PageMemory for Lenient {
        fn install(&mut self, _: PageNo, _: Option<&[u8]>, _: bool) {}
        fn make_writable(&mut self, _: PageNo) {}
        fn write_protect(&mut self, _: PageNo) -> Vec<u8> {
            vec![1]
        }
        fn drop_page(&mut self, _: PageNo, want: bool) -> Option<Vec<u8>> {
            want.then(|| vec![2])
        }
        fn wake(&mut self, _: PageNo) {}
        fn store(&mut self, _: PageNo, _: u16, _: u8, _: u128) {}
    }

    #[test]
    fn random_input_never_panics() {
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        for seed in 0..300u64 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let (mut p, mut m, mut out) = (ProcessPages::new(), Lenient, Vec::new());
            for _ in 0..200 {
                let page = rng.gen_range(0..3);
                let req = rng.gen_range(0..8);
                let data = rng.gen_bool(0.5).then(|| PageData(vec![3; 2]));
                let m2 = match rng.gen_range(0..8) {
                    0 => {
                        let a = if rng.gen() { Access::Read } else { Access::Write };
                        p.handle_fault(page, a, &mut m, &mut out);
                        continue;
                    }
                    1 => {
                        p.release_all(&mut m, &mut out);
                        continue;
                    }
                    2 => ToProcess::Data { req, page, data, mode: Mode::Invalidate },
                    3 => ToProcess::Grant { req, page, data: data.map(GrantData::Bytes) },
                    4 => ToProcess::Invalidate { page },
                    5 => ToProcess::Downgrade { page },
                    6 => ToProcess::Recall { page },
                    _ => ToProcess::Detached,
                };
                let _ = p.handle_message(m2, &mut m, &mut out);
            }
        }
    }
}
