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
//! Backup copies (`InvBackup`, `DropBackup`, `RestoreBackup`; the model's Task E) are in
//! `pages/backup.rs`.
//!
//! Replies: `Data` installs a ReadOnly copy; `Grant` with data installs a Writable copy
//! (dropping a ReadOnly one first), `Grant` without data upgrades the ReadOnly copy in place
//! (the coordinator knows it is current). A reply for no in-flight request is an error.
//!
//! Demands: `Invalidate` drops a ReadOnly copy and is always acknowledged (the copy may already
//! be gone). `Downgrade` write-protects a Writable copy and returns its contents, read **after**
//! protecting so no store can land later; `Recall` drops the copy and returns the contents of a
//! Writable one. `Downgrade` answers `None` when the page is not held, `Recall` when it is not
//! Writable: that happens when the process wrote the page back ([`ProcessPages::release_all`])
//! before the demand arrived, and the coordinator then uses the `Writeback` it received first
//! (FIFO). A `Downgrade` reaching a
//! ReadOnly copy is a *flush* (the home copy is stale and the readers hold the current
//! contents, see below): it answers with the contents and keeps the copy. A `Recall` reaching a
//! ReadOnly copy drops it and answers `None`.
//!
//! # Direct transfers (forwards)
//!
//! The coordinator may have a page another process holds sent straight to the requester
//! (`pages/forward.rs`; the coordinator's side is in [`crate::directory`]). Per page, with S the
//! process that sends and R the one that asked:
//! * P1 `Forward(p, to R, req)`: S write-protects a Writable copy (reading it after protecting;
//!   it stays ReadOnly), reads a ReadOnly one, skips a page it no longer holds (it wrote it
//!   back, and the coordinator saw that first), and sends `ToPeer::Pages` to R — one message per
//!   contiguous run of pages sent, taken with [`ProcessPages::take_peer_messages`]. The page is
//!   marked *forwarded*: the home copy may be stale while this process holds it.
//! * P2 `ForwardNote(p, req)` (coordinator stream) for R's pending Fetch: if the peer's page is
//!   here already, install it ReadOnly (invalidate mode), mark it forwarded, send `Got`; else
//!   remember the note. The note orders the peer's data after every earlier message of the
//!   coordinator's stream (an `Update` must not be overtaken).
//! * P3 `Pages(req, p)` from a peer ([`ProcessPages::handle_peer`]): installed as in P2 if the
//!   Fetch with that request is pending and its note arrived; kept until the note if it is
//!   pending without one (a later copy replaces it); dropped if no such Fetch is pending
//!   (answered already). What is kept is bounded by the Fetches in flight: one page per pending
//!   page, forgotten when it ends.
//! * P4 `ForwardAbort(p, req)`: a note held for a page not installed yet is dropped, answered
//!   `ForwardAborted`; the Fetch stays pending (the coordinator answers it, with `Data` or a new
//!   note for the same request). For a page installed already (`Got` sent) it is ignored. The
//!   aborted forward is *not* remembered: a `Pages` that comes after the abort is kept as in P3
//!   (the new source's may overtake the new note; every source of one transaction sends the
//!   same bytes), and `Data` drops it (the model's Task D, finding 2).
//! * P5 A peer message that could not be delivered ([`ProcessPages::peer_failed`]) goes to the
//!   coordinator as `ForwardReturn` with its data; the copies stay ReadOnly.
//! * P6 [`ProcessPages::release`] writes back ReadOnly copies marked forwarded too (the
//!   coordinator keeps them only while the page is stale). The mark goes when the copy is
//!   dropped or becomes Writable.
//!
//! Every forward message is a run (consecutive pages, one request): applied with one memory
//! operation and answered with one message per contiguous run of pages it applies to.
//!
//! The promise that changes: a reader may see the last writes of a process that then crashes,
//! writes the home copy never got; they survive while any process that read them still holds
//! the page, and are lost only if every holder crashes.

use std::collections::HashMap;

mod ahead;
mod backup;
mod forward;
mod incoming;

pub use ahead::{MAX_READ_AHEAD, READ_AHEAD_WINDOWS, WRITE_AHEAD_WINDOWS};
use ahead::ReadAhead;
use crate::runs::MAX_RUN;
use crate::wire::{Mode, PageData, PageNo, ReqId, RmwOp, ToCoordinator};

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
    /// The contents of `count` consecutive pages this process holds ReadOnly, page after page
    /// (what a forward, a flush or a forwarded copy's write-back sends); nothing changes. By
    /// default a [`write_protect_run`](Self::write_protect_run) of them, which changes nothing
    /// on a real mapping's ReadOnly pages; a mapping can read them without the ioctl (and must
    /// implement this if its `write_protect` accepts only Writable pages).
    fn read_run(&mut self, first: PageNo, count: u32) -> Vec<u8> {
        self.write_protect_run(first, count)
    }
    /// [`wake`](Self::wake) of `count` consecutive pages.
    fn wake_run(&mut self, first: PageNo, count: u32) {
        for i in 0..count {
            self.wake(first + u64::from(i));
        }
    }
    /// ReadOnly -> Invalid for `count` consecutive pages whose contents become backups
    /// (`InvBackup`): returns them, page after page, or `None` when the memory keeps them in
    /// place (a later access must still fault as on any Invalid page), to be given back with
    /// [`unshelve_run`](Self::unshelve_run). By default they are read out and the pages
    /// dropped.
    fn shelve_run(&mut self, first: PageNo, count: u32) -> Option<Vec<u8>> {
        let bytes = self.read_run(first, count);
        self.drop_run(first, count, false);
        Some(bytes)
    }
    /// Gives back `count` consecutive pages [`shelve_run`](Self::shelve_run) kept in place,
    /// returning their contents first if `read` (the pages stay Invalid, and can be installed
    /// again afterwards). Called only for pages kept in place.
    fn unshelve_run(&mut self, _first: PageNo, _count: u32, _read: bool) -> Option<Vec<u8>> {
        None
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
    /// Pages sent to peers for the coordinator's `Forward`s (P1).
    pub pages_forwarded: u64,
    /// Pages installed from peers (P2, P3).
    pub pages_got: u64,
    /// Page bytes sent to peers.
    pub peer_bytes_sent: u64,
    /// Page bytes installed from peers.
    pub peer_bytes_received: u64,
    /// Pages of forwards aborted before they were installed (P4).
    pub forwards_aborted: u64,
    /// Pages from peers dropped: for no pending Fetch (P3).
    pub peer_pages_dropped: u64,
    /// Pages returned to the coordinator because a peer could not be reached (P5).
    pub forward_returns: u64,
    /// Pages whose ReadOnly copy became a backup (`InvBackup`, `pages/backup.rs`).
    pub backups_kept: u64,
    /// Backups discarded on the coordinator's `DropBackup`.
    pub backups_dropped: u64,
    /// Backups sent to the coordinator on its `RestoreBackup`.
    pub backups_restored: u64,
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
    /// A ReadOnly copy this process sent to a peer or got from one: the home copy may be stale,
    /// so [`ProcessPages::release`] writes it back (P6). Cleared when the copy is dropped or
    /// becomes Writable.
    forwarded: bool,
}

impl Slot {
    /// Whether releasing this copy writes it back: an owned page, or a forwarded one.
    fn writes_back(&self) -> bool {
        self.state == PageState::Writable || (self.state == PageState::ReadOnly && self.forwarded)
    }
}

/// The process side of the INVALIDATE protocol for one region (see the module docs).
#[derive(Debug)]
pub struct ProcessPages {
    /// Pages that are valid or have a request in flight; absent = Invalid, idle. (foldhash:
    /// looked up several times per page of every run; the keys are this process's own pages.)
    slots: HashMap<PageNo, Slot, foldhash::fast::RandomState>,
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
    hints: HashMap<PageNo, Mode, foldhash::fast::RandomState>,
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
    /// Direct transfers: what arrived for pending Fetches, peer messages to send.
    fwd: forward::Forwards,
    /// Backup copies kept for the coordinator (`pages/backup.rs`): page -> bytes.
    backups: backup::Backups,
    /// Pages whose backups went home at the release (`BackupHome`): a `DropBackup` or
    /// `RestoreBackup` the coordinator sent before it got them is answered by them.
    backups_sent_home: std::collections::BTreeSet<PageNo>,
}


impl Default for ProcessPages {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessPages {
    /// Every page Invalid, nothing in flight.
    pub fn new() -> Self {
        ProcessPages {
            slots: HashMap::default(),
            next_req: 1,
            in_flight: 0,
            stats: PageStats::default(),
            readahead: ReadAhead::default(),
            writeahead: ReadAhead::default(),
            writes: HashMap::new(),
            completions: Vec::new(),
            escalate: Default::default(),
            hints: HashMap::default(),
            advice: Vec::new(),
            limit: 0,
            fwd: Default::default(),
            backups: Default::default(),
            backups_sent_home: Default::default(),
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


    /// Before detaching: writes back every Writable page (write-protect, then drop) and every
    /// ReadOnly copy marked forwarded (the home copy may be stale, P6), drops every other
    /// ReadOnly copy, lowest pages first, at most `limit` pages per call. Returns how many pages
    /// were written back, and whether every page is now released (call again until it is,
    /// sending `out` in between, so that a large region's write-back never sits in memory all
    /// at once). Requests still in flight are kept (see [`ProcessPages::is_idle`]).
    ///
    /// Consecutive pages released alike are released as a run of at most [`MAX_RUN`] pages: one
    /// write-protect (one TLB flush) and one copy for a run of owned pages, one read for a run
    /// of forwarded ReadOnly copies, one hole punched per run. Each
    /// page is still its own `Writeback`, a slice of the run's one buffer, which the sender
    /// merges back into runs without copying (`runs::coalesce_to_coordinator`). Page by page,
    /// detaching after writing 256 MiB took 1.15 s.
    ///
    /// After the last write-back, every backup copy (`pages/backup.rs`) goes home as
    /// `BackupHome` runs and is discarded; backups count against `limit` like pages, and the
    /// release is done only when none is left (backups are not counted as written back).
    pub fn release(&mut self, mem: &mut impl PageMemory, out: &mut Vec<ToCoordinator>, limit: usize) -> (usize, bool) {
        // (page, written back, state)
        let mut pages: Vec<(PageNo, bool, PageState)> = self
            .slots
            .iter()
            .filter(|(_, s)| s.state != PageState::Invalid)
            .map(|(&p, s)| (p, s.writes_back(), s.state))
            .collect();
        // The lowest `limit` pages, in order: a selection first, so that each slice of a large
        // region sorts only itself, not every page still left.
        let done = pages.len() <= limit;
        if !done {
            pages.select_nth_unstable_by_key(limit, |&(p, ..)| p);
            pages.truncate(limit);
        }
        pages.sort_unstable_by_key(|&(p, ..)| p);
        let mut written = 0;
        let mut rest = &pages[..];
        while let Some(&(first, back, state)) = rest.first() {
            // Pages only dropped form runs whatever their state; pages written back, runs of
            // one state (owned ones are write-protected, forwarded ones only read).
            let count = rest
                .iter()
                .zip(first..)
                .take(MAX_RUN as usize)
                .take_while(|&(&(p, b, s), want)| p == want && b == back && (!back || s == state))
                .count();
            let n = count as u32;
            if back {
                let bytes = if state == PageState::Writable {
                    mem.write_protect_run(first, n)
                } else {
                    mem.read_run(first, n)
                };
                self.stats.bytes_sent += bytes.len() as u64;
                if n == 1 {
                    out.push(ToCoordinator::Writeback { page: first, data: PageData::from(bytes) });
                } else {
                    let run = PageData::from(crate::buffers::bytes(bytes));
                    out.extend((0..count).map(|i| ToCoordinator::Writeback { page: first + i as u64, data: run.page_data(i) }));
                }
                written += count;
            }
            mem.drop_run(first, n, false);
            for page in first..first + u64::from(n) {
                self.set_state(page, PageState::Invalid);
            }
            rest = &rest[count..];
        }
        // Backups go home after every write-back (E4), within what is left of `limit`.
        let done = done && self.send_backups_home(mem, out, limit - pages.len());
        (written, done)
    }

    /// [`release`](Self::release) of every page at once; returns how many were written back.
    pub fn release_all(&mut self, mem: &mut impl PageMemory, out: &mut Vec<ToCoordinator>) -> usize {
        self.release(mem, out, usize::MAX).0
    }

    /// The counters so far.
    pub fn stats(&self) -> PageStats {
        self.stats
    }

    /// No request and no replayed write is in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.writes.is_empty()
    }


    /// The reply to the in-flight request of `page` was applied (a forwarded copy is marked by
    /// the caller; a ReadOnly copy keeps its mark). What arrived for a forward of it is
    /// forgotten: a later peer message for the request is dropped.
    fn finish(&mut self, page: PageNo, state: PageState, mode: Mode) {
        let slot = self.slots.entry(page).or_default();
        let forwarded = state == PageState::ReadOnly && slot.forwarded;
        *slot = Slot { state, pending: None, mode, forwarded };
        self.in_flight = self.in_flight.saturating_sub(1);
        self.forget_forward(page);
    }

    fn set_state(&mut self, page: PageNo, state: PageState) {
        let slot = self.slots.entry(page).or_default();
        slot.state = state;
        if state != PageState::ReadOnly {
            slot.forwarded = false;
        }
        if slot.state == PageState::Invalid && slot.pending.is_none() {
            self.slots.remove(&page);
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod forward_tests;
#[cfg(test)]
mod backup_tests;
