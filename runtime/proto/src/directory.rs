//! The coordinator's page directory: the sans-IO core of the INVALIDATE coherence protocol
//! (single writer / many readers, home copy at the coordinator).
//!
//! One [`PageDirectory`] serves one session. It consumes the page messages of
//! [`ToCoordinator`] and produces the [`ToProcess`] messages to send, in order; the caller owns
//! the connections. It performs no I/O and never panics, whatever the input.
//!
//! # State
//!
//! Per page (only pages ever touched get an entry): the `owner` (the one process holding a
//! Writable copy), the `readers` (processes holding a ReadOnly copy), the `home` copy
//! (`None` = all zero; all-zero contents are never stored), at most one `busy` transaction and a
//! FIFO `queue` of waiting requests. Invariant: if there is an owner there are no readers.
//!
//! # Transactions
//!
//! * `Fetch(r)`: if there is an owner `o`, send `Downgrade` to `o` and wait for its
//!   `DowngradeAck`; its data (if any) becomes the home copy, and `o` stays a reader only if its
//!   ack carried data (otherwise it no longer held the page). Then send `Data(home)` to `r` and add
//!   `r` to the readers.
//! * `Own(r)`: send `Invalidate` to every reader but `r` and `Recall` to the owner if it is not
//!   `r`; wait for every ack (a `RecallAck` with data updates the home copy); only then (ordering
//!   rule 3, which keeps single-writer) send `Grant` to `r`, without data if `r` still held a
//!   current copy, else with the home copy. `r` becomes the owner, the reader set is emptied.
//! * `Writeback(r, data)` from the owner: the data becomes the home copy and the page has no
//!   owner. From anyone else it is ignored.
//!
//! # Why these rules (DESIGN.md, "Coherence", rules 1-3)
//!
//! * Rule 1: at most one Fetch/Own transaction per page is in flight; a request arriving while
//!   the page is busy, or while requests already wait, queues FIFO behind it. So the reader set
//!   and the owner cannot change under a transaction, and an ack can only belong to the
//!   transaction in progress.
//! * Rule 2 (FIFO channels both ways) is what makes the races benign: an `Invalidate` sent to
//!   `r` by an earlier transaction reaches `r` before any later `Grant`/`Data`, and a
//!   `Writeback` sent by `r` reaches the directory before the ack `r` sends for a later
//!   `Downgrade`/`Recall`. Hence the race "owner writes back while a Downgrade/Recall is on its
//!   way": the `Writeback` arrives first and sets the home copy, the ack then comes with `None`
//!   and the transaction uses the home copy.
//! * Rule 3: a `Grant` leaves only after every `Invalidate`/`Recall` is acknowledged, so no
//!   other valid copy exists when the new owner starts writing.
//!
//! An ack no transaction awaits is ignored. A process that leaves ([`PageDirectory::handle_leave`])
//! is removed everywhere, and every ack awaited from it counts as received without data: its
//! pages fall back to the home copy.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::wire::{
    Coherence, GrantData, Mode, PageData, PageNo, Rank, ReqId, RmwOp, ToCoordinator, ToProcess,
};

/// Adaptive policy: a page whose ownership went to a different process this many grants in a
/// row switches to update mode. Four alternations mean the page is ping-ponging (a flag, a
/// contended counter, neighbours' data); fewer would switch pages that merely changed hands.
pub const PINGPONG_GRANTS: u32 = 4;

/// Adaptive policy: an update-mode page written this many times in a row by one process (and
/// nobody else) switches back to invalidate mode, where that process's stores run at native
/// speed once it owns the page. 64 replayed stores cost about as much as one ownership
/// transfer plus a few re-fetches by readers.
pub const WRITE_RUN: u32 = 64;

/// Most requests (fetches, ownership requests, replayed writes) one process may have waiting
/// at the directory at once. A correct process has at most one fetch or ownership request per
/// page in flight and one replayed write per thread, far below this; a flood beyond it is a
/// protocol violation, so one client cannot grow the coordinator's memory without bound.
pub const MAX_PENDING_PER_RANK: u32 = 1 << 16;

/// Most advised ranges a session keeps (ranges fully covered by a later advice are dropped
/// first).
pub const MAX_ADVICE: usize = 4096;

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

/// Counters of the coherence traffic of one session.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryStats {
    /// `Fetch` requests received.
    pub fetches: u64,
    /// `Grant` messages sent.
    pub ownership_grants: u64,
    /// `Invalidate` messages sent.
    pub invalidations: u64,
    /// `Downgrade` messages sent.
    pub downgrades: u64,
    /// `Recall` messages sent.
    pub recalls: u64,
    /// `Data`/`Grant` messages that carried page bytes (zero pages travel as "zero").
    pub pages_sent: u64,
    /// Page bytes carried by `Data`/`Grant` messages.
    pub bytes_sent: u64,
    /// `Writeback` messages accepted (from the page's owner).
    pub writebacks: u64,
    /// Replayed stores and RMWs applied (update mode).
    pub replayed_writes: u64,
    /// `Update` messages broadcast.
    pub updates: u64,
    /// Replayed writes answered `Retry`.
    pub retries: u64,
    /// Switches to update mode.
    pub to_update: u64,
    /// Switches to invalidate mode.
    pub to_invalidate: u64,
    /// Write-ahead pages granted (nobody held them).
    pub ahead_granted: u64,
    /// Write-ahead pages denied (someone held them, or they were busy or in update mode).
    pub ahead_denied: u64,
    /// Ordinary ownership requests on update-mode pages answered with a read-only copy in
    /// update mode (the process then replays its store) instead of switching the page back.
    pub owns_kept_in_update: u64,
}

/// A message the directory cannot accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DirectoryError {
    /// The page number is beyond the region.
    #[error("page {page} is outside the region of {pages} pages")]
    OutOfRange {
        /// The page asked for.
        page: PageNo,
        /// Pages in the region.
        pages: u64,
    },
    /// Not a page message, or from an unknown rank.
    #[error("{0}")]
    Unexpected(String),
    /// Page contents of the wrong size.
    #[error("page {page} came with {len} bytes instead of {expected}")]
    BadPageLength {
        /// The page.
        page: PageNo,
        /// Bytes received.
        len: usize,
        /// [`crate::PAGE_SIZE`].
        expected: usize,
    },
    /// A second fetch or ownership request for a page while one is still waiting.
    #[error("rank {rank} asked for page {page} again while its earlier request is still waiting")]
    DuplicateRequest {
        /// The requester.
        rank: Rank,
        /// The page.
        page: PageNo,
    },
    /// More requests waiting than [`MAX_PENDING_PER_RANK`].
    #[error("rank {rank} has more than {max} requests waiting")]
    TooManyRequests {
        /// The requester.
        rank: Rank,
        /// The limit.
        max: u32,
    },
    /// An advice range outside the region, or more ranges than [`MAX_ADVICE`].
    #[error("bad coherence advice: {0}")]
    BadAdvice(String),
    /// A run of pages with a bad count or data length.
    #[error("bad run: {0}")]
    BadRun(String),
}

/// A read-only view of one page's directory entry (for tests, logs and debugging).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PageView {
    /// The process holding the Writable copy.
    pub owner: Option<Rank>,
    /// The processes holding a ReadOnly copy, ascending.
    pub readers: Vec<Rank>,
    /// The home copy (`None`: all zero).
    pub home: Option<Vec<u8>>,
    /// A Fetch/Own transaction is in flight.
    pub busy: bool,
    /// Requests waiting behind it.
    pub queued: usize,
    /// The page's coherence mode.
    pub mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteOp {
    Store { offset: u16, width: u8, value: u128 },
    Rmw { offset: u16, width: u8, op: RmwOp, operand: u64, expected: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fetch,
    Own,
    /// Ownership whatever the mode (`ForceOwn`); served as `Own` after switching an
    /// update-mode page back to invalidate mode.
    ForceOwn,
    /// A replayed store or RMW (update mode); never leaves the page busy.
    Write(WriteOp),
    /// A mode switch (I->U downgrades the owner first; U->I is immediate).
    Switch(Mode),
}

#[derive(Debug, Clone, Copy)]
struct Request {
    from: Rank,
    req: ReqId,
    kind: Kind,
}

#[derive(Debug)]
struct Txn {
    request: Request,
    /// The requester left: finish the state changes, send no reply.
    requester_gone: bool,
    /// The rank whose `DowngradeAck` (Fetch) or `RecallAck` (Own) is awaited.
    owner_ack: Option<Rank>,
    /// The ranks whose `InvalidateAck` is awaited (Own only).
    invalidate_acks: BTreeSet<Rank>,
}

impl Txn {
    fn done(&self) -> bool {
        self.owner_ack.is_none() && self.invalidate_acks.is_empty()
    }
}

#[derive(Debug, Default)]
struct Entry {
    owner: Option<Rank>,
    readers: BTreeSet<Rank>,
    busy: Option<Txn>,
    queue: VecDeque<Request>,
    mode: Mode,
    policy: Coherence,
    /// Adaptive bookkeeping: the last grantee and how many grants in a row changed hands.
    last_grantee: Option<Rank>,
    alternations: u32,
    /// Adaptive bookkeeping: the process writing the current run of replayed writes.
    run_writer: Option<Rank>,
    run_len: u32,
}

impl Entry {
    fn new(policy: Coherence) -> Entry {
        let mode = if policy == Coherence::Update { Mode::Update } else { Mode::Invalidate };
        Entry { policy, mode, ..Entry::default() }
    }

}

/// The coordinator side of the INVALIDATE protocol for one session (see the module docs).
#[derive(Debug)]
pub struct PageDirectory {
    nprocs: u32,
    pages: u64,
    entries: HashMap<PageNo, Entry>,
    stats: DirectoryStats,
    /// `Advise` ranges, latest last: the policy of a page created later.
    advice: Vec<(PageNo, PageNo, Coherence)>,
    /// Default policy of pages no advice covers.
    default_policy: Coherence,
    /// Requests of each rank waiting in page queues (bounded by [`MAX_PENDING_PER_RANK`]).
    pending: Vec<u32>,
    /// The home copies.
    homes: Box<dyn HomeStore>,
}

impl PageDirectory {
    /// A directory for `nprocs` processes sharing a region of `pages` pages, all zero.
    pub fn new(nprocs: u32, pages: u64) -> Self {
        PageDirectory {
            nprocs,
            pages,
            entries: HashMap::new(),
            stats: DirectoryStats::default(),
            advice: Vec::new(),
            default_policy: Coherence::Adaptive,
            pending: vec![0; nprocs as usize],
            homes: Box::new(HeapHomes::default()),
        }
    }

    /// Keeps the home copies in `homes` (it must be empty).
    pub fn with_homes(mut self, homes: Box<dyn HomeStore>) -> Self {
        self.homes = homes;
        self
    }

    /// The policy of pages no `Advise` covers (default: adaptive).
    pub fn with_default_policy(mut self, policy: Coherence) -> Self {
        self.default_policy = policy;
        self
    }

    fn policy_for(&self, page: PageNo) -> Coherence {
        self.advice
            .iter()
            .rev()
            .find(|(first, end, _)| (*first..*end).contains(&page))
            .map_or(self.default_policy, |a| a.2)
    }

    fn entry(&mut self, page: PageNo) -> &mut Entry {
        let policy = self.policy_for(page);
        self.entries.entry(page).or_insert_with(|| Entry::new(policy))
    }

    /// Queues a mode switch of `page` behind its current transaction (as the adaptive policy
    /// does; tests and simulations use it to switch at arbitrary moments).
    pub fn request_switch(&mut self, page: PageNo, to: Mode, out: &mut Vec<(Rank, ToProcess)>) {
        if page >= self.pages {
            return;
        }
        self.submit(page, Request { from: 0, req: 0, kind: Kind::Switch(to) }, out);
    }

    /// Handles one page message from `from` (Fetch, Own, the three acks, Writeback), appending
    /// the messages to send to `out` in the order they must be sent. Anything else is
    /// [`DirectoryError::Unexpected`]; a page beyond the region is
    /// [`DirectoryError::OutOfRange`]. Unawaited acks are ignored.
    pub fn handle(
        &mut self,
        from: Rank,
        msg: ToCoordinator,
        out: &mut Vec<(Rank, ToProcess)>,
    ) -> Result<(), DirectoryError> {
        if from >= self.nprocs {
            return Err(DirectoryError::Unexpected(format!(
                "message from rank {from}, but the session has {} processes",
                self.nprocs
            )));
        }
        match msg {
            ToCoordinator::Fetch { req, page } => {
                self.check(page)?;
                self.admit(from, page, Kind::Fetch)?;
                self.stats.fetches += 1;
                self.submit(page, Request { from, req, kind: Kind::Fetch }, out);
            }
            ToCoordinator::Own { req, page } => {
                self.check(page)?;
                self.admit(from, page, Kind::Own)?;
                self.submit(page, Request { from, req, kind: Kind::Own }, out);
            }
            ToCoordinator::ForceOwn { req, page } => {
                self.check(page)?;
                self.admit(from, page, Kind::ForceOwn)?;
                self.submit(page, Request { from, req, kind: Kind::ForceOwn }, out);
            }
            ToCoordinator::InvalidateAck { page } => {
                self.check(page)?;
                if let Some(txn) = self.entries.get_mut(&page).and_then(|e| e.busy.as_mut()) {
                    if txn.request.kind == Kind::Own && txn.invalidate_acks.remove(&from) {
                        self.progress(page, out);
                    }
                }
            }
            ToCoordinator::DowngradeAck { page, data } => {
                self.check(page)?;
                check_len(page, data.as_ref())?;
                self.owner_ack(page, from, Kind::Fetch, data.as_ref().map(|d| &d.0[..]), out);
            }
            ToCoordinator::RecallAck { page, data } => {
                self.check(page)?;
                check_len(page, data.as_ref())?;
                self.owner_ack(page, from, Kind::Own, data.as_ref().map(|d| &d.0[..]), out);
            }
            ToCoordinator::Write { req, page, offset, width, value } => {
                self.check(page)?;
                check_access(offset, width, 16)?;
                let op = WriteOp::Store { offset, width, value };
                self.admit(from, page, Kind::Write(op))?;
                self.submit(page, Request { from, req, kind: Kind::Write(op) }, out);
            }
            ToCoordinator::Rmw { req, page, offset, width, op, operand, expected } => {
                self.check(page)?;
                check_access(offset, width, 8)?;
                let op = WriteOp::Rmw { offset, width, op, operand, expected };
                self.admit(from, page, Kind::Write(op))?;
                self.submit(page, Request { from, req, kind: Kind::Write(op) }, out);
            }
            ToCoordinator::Advise { first, count, coherence } => {
                let end = first.checked_add(count).filter(|&e| count > 0 && e <= self.pages).ok_or_else(|| {
                    DirectoryError::BadAdvice(format!("{count} pages from page {first} in a region of {} pages", self.pages))
                })?;
                if self.advice.last() == Some(&(first, end, coherence)) {
                    return Ok(()); // the same advice again changes nothing: no broadcast
                }
                // Older ranges this one covers entirely can never decide a page's policy again.
                self.advice.retain(|&(f, e, _)| !(first <= f && e <= end));
                if self.advice.len() >= MAX_ADVICE {
                    return Err(DirectoryError::BadAdvice(format!("more than {MAX_ADVICE} advised ranges")));
                }
                self.advice.push((first, end, coherence));
                for r in 0..self.nprocs {
                    out.push((r, ToProcess::Advice { first, count, coherence }));
                }
                let mut touched: Vec<PageNo> =
                    self.entries.keys().copied().filter(|p| (first..end).contains(p)).collect();
                touched.sort_unstable();
                for page in touched {
                    let e = self.entry(page);
                    e.policy = coherence;
                    let to = match (coherence, e.mode) {
                        (Coherence::Update, Mode::Invalidate) => Mode::Update,
                        (Coherence::Invalidate, Mode::Update) => Mode::Invalidate,
                        _ => continue,
                    };
                    self.submit(page, Request { from, req: 0, kind: Kind::Switch(to) }, out);
                }
            }
            ToCoordinator::Writeback { page, data } => {
                self.check(page)?;
                check_len(page, Some(&data))?;
                self.writeback(page, from, &data.0);
            }
            ToCoordinator::FetchRun { req, first, count } => {
                self.check_span("fetch run", first, count, None)?;
                for page in first..first + u64::from(count) {
                    self.admit(from, page, Kind::Fetch)?;
                    self.stats.fetches += 1;
                    self.submit(page, Request { from, req, kind: Kind::Fetch }, out);
                }
            }
            ToCoordinator::OwnRun { req, first, count, conditional: false } => {
                self.check_span("ownership run", first, count, None)?;
                for page in first..first + u64::from(count) {
                    self.admit(from, page, Kind::Own)?;
                    self.submit(page, Request { from, req, kind: Kind::Own }, out);
                }
            }
            ToCoordinator::OwnRun { req, first, count, conditional: true } => {
                self.check_span("write-ahead run", first, count, None)?;
                for page in first..first + u64::from(count) {
                    self.own_ahead(from, req, page, out);
                }
            }
            run @ (ToCoordinator::InvalidateAckRun { .. }
            | ToCoordinator::DowngradeAckRun { .. }
            | ToCoordinator::RecallAckRun { .. }
            | ToCoordinator::WritebackRun { .. }) => {
                let (first, count, len) = match &run {
                    ToCoordinator::InvalidateAckRun { first, count } => (*first, *count, None),
                    ToCoordinator::DowngradeAckRun { first, count, data } | ToCoordinator::RecallAckRun { first, count, data } => {
                        (*first, *count, data.as_ref().map(|d| d.0.len()))
                    }
                    ToCoordinator::WritebackRun { first, count, data } => (*first, *count, Some(data.0.len())),
                    _ => unreachable!("matched above"),
                };
                self.check_span("acknowledgement run", first, count, len)?;
                // Each page as its own message would be, its bytes read in place (checked
                // above: the run's data is `count` whole pages).
                let pages = (first..first + u64::from(count)).zip(0..);
                match run {
                    ToCoordinator::DowngradeAckRun { data, .. } => {
                        for (page, i) in pages {
                            self.owner_ack(page, from, Kind::Fetch, data.as_ref().map(|d| d.page(i)), out);
                        }
                    }
                    ToCoordinator::RecallAckRun { data, .. } => {
                        for (page, i) in pages {
                            self.owner_ack(page, from, Kind::Own, data.as_ref().map(|d| d.page(i)), out);
                        }
                    }
                    ToCoordinator::WritebackRun { data, .. } => {
                        for (page, i) in pages {
                            self.writeback(page, from, data.page(i));
                        }
                    }
                    run => {
                        for msg in crate::runs::expand_to_coordinator(run) {
                            self.handle(from, msg, out)?;
                        }
                    }
                }
            }
            other => {
                return Err(DirectoryError::Unexpected(format!("not a page message: {other:?}")))
            }
        }
        Ok(())
    }

    /// Checks a run's pages are inside the region and its data (if any) their size.
    fn check_span(&self, what: &str, first: PageNo, count: u32, len: Option<usize>) -> Result<(), DirectoryError> {
        crate::runs::check_run(what, count, len).map_err(DirectoryError::BadRun)?;
        match first.checked_add(u64::from(count)) {
            Some(end) if end <= self.pages => Ok(()),
            _ => Err(DirectoryError::OutOfRange { page: first.saturating_add(u64::from(count)) - 1, pages: self.pages }),
        }
    }

    /// Write-ahead: grants `page` to `from` if nobody holds it and nothing is under way for it
    /// (no owner, no readers, no transaction or queue, invalidate mode and not advised update);
    /// otherwise answers `Denied` and changes nothing. Never recalls or invalidates.
    fn own_ahead(&mut self, from: Rank, req: ReqId, page: PageNo, out: &mut Vec<(Rank, ToProcess)>) {
        let policy = self.policy_for(page);
        let free = match self.entries.get(&page) {
            None => policy != Coherence::Update,
            Some(e) => {
                e.mode == Mode::Invalidate
                    && e.policy != Coherence::Update
                    && e.owner.is_none()
                    && e.readers.is_empty()
                    && e.busy.is_none()
                    && e.queue.is_empty()
            }
        };
        if !free {
            self.stats.ahead_denied += 1;
            out.push((from, ToProcess::Denied { req, first: page, count: 1 }));
            return;
        }
        let stats = &mut self.stats;
        let e = self.entries.entry(page).or_insert_with(|| Entry::new(policy));
        e.owner = Some(from);
        let data = match self.homes.read(page) {
            None => GrantData::Zero,
            Some(bytes) => {
                stats.pages_sent += 1;
                stats.bytes_sent += bytes.len() as u64;
                GrantData::Bytes(PageData(bytes))
            }
        };
        stats.ownership_grants += 1;
        stats.ahead_granted += 1;
        // Not an alternation: nobody else held the page.
        e.last_grantee = Some(from);
        e.alternations = 0;
        out.push((from, ToProcess::Grant { req, page, data: Some(data) }));
    }

    /// `rank` detached or was lost: removes it from every reader set and owner slot (its pages
    /// fall back to the home copy), drops its queued requests, and treats every ack a busy
    /// transaction awaits from it as received without data. A transaction it requested still
    /// completes its state changes but sends no reply. The caller must ignore its later
    /// messages.
    pub fn handle_leave(&mut self, rank: Rank, out: &mut Vec<(Rank, ToProcess)>) {
        if let Some(n) = self.pending.get_mut(rank as usize) {
            *n = 0;
        }
        let mut pages: Vec<PageNo> = self.entries.keys().copied().collect();
        pages.sort_unstable();
        for page in pages {
            let Some(e) = self.entries.get_mut(&page) else { continue };
            e.readers.remove(&rank);
            if e.owner == Some(rank) {
                e.owner = None;
            }
            e.queue.retain(|r| r.from != rank || matches!(r.kind, Kind::Switch(_)));
            if let Some(txn) = e.busy.as_mut() {
                if txn.request.from == rank {
                    txn.requester_gone = true;
                }
                txn.invalidate_acks.remove(&rank);
                if txn.owner_ack == Some(rank) {
                    txn.owner_ack = None;
                }
            }
            self.progress(page, out);
        }
    }

    /// The traffic counters so far.
    pub fn stats(&self) -> DirectoryStats {
        self.stats
    }

    /// Pages that have a non-zero home copy stored (the memory cost: untouched and all-zero
    /// pages cost nothing).
    pub fn stored_pages(&self) -> usize {
        self.homes.stored_pages()
    }

    /// The directory's view of `page` (an untouched page reads as the default view).
    pub fn inspect(&self, page: PageNo) -> PageView {
        match self.entries.get(&page) {
            None => PageView::default(),
            Some(e) => PageView {
                owner: e.owner,
                readers: e.readers.iter().copied().collect(),
                home: self.homes.read(page),
                busy: e.busy.is_some(),
                queued: e.queue.len(),
                mode: e.mode,
            },
        }
    }

    /// Admits a request of `from` for `page` into the page's queue: at most one fetch or
    /// ownership request per page and rank, at most [`MAX_PENDING_PER_RANK`] waiting in all.
    fn admit(&mut self, from: Rank, page: PageNo, kind: Kind) -> Result<(), DirectoryError> {
        if matches!(kind, Kind::Fetch | Kind::Own | Kind::ForceOwn) {
            if let Some(e) = self.entries.get(&page) {
                // Its reply has not been sent while the request is busy or queued.
                let busy = e.busy.as_ref().map(|t| &t.request);
                let dup = busy
                    .into_iter()
                    .chain(e.queue.iter())
                    .any(|r| r.from == from && matches!(r.kind, Kind::Fetch | Kind::Own | Kind::ForceOwn));
                if dup {
                    return Err(DirectoryError::DuplicateRequest { rank: from, page });
                }
            }
        }
        let n = &mut self.pending[from as usize];
        if *n >= MAX_PENDING_PER_RANK {
            return Err(DirectoryError::TooManyRequests { rank: from, max: MAX_PENDING_PER_RANK });
        }
        *n += 1;
        Ok(())
    }

    fn check(&self, page: PageNo) -> Result<(), DirectoryError> {
        if page < self.pages {
            Ok(())
        } else {
            Err(DirectoryError::OutOfRange { page, pages: self.pages })
        }
    }

    fn submit(&mut self, page: PageNo, request: Request, out: &mut Vec<(Rank, ToProcess)>) {
        self.entry(page).queue.push_back(request);
        self.progress(page, out);
    }

    /// A Writeback of `page` (one page of `bytes`) from `from`: kept only from its owner.
    fn writeback(&mut self, page: PageNo, from: Rank, bytes: &[u8]) {
        if let Some(e) = self.entries.get_mut(&page) {
            if e.owner == Some(from) {
                self.homes.write(page, bytes);
                e.owner = None;
                self.stats.writebacks += 1;
            }
        }
    }

    /// A DowngradeAck (`kind` Fetch) or RecallAck (`kind` Own) from `from`, with the page's
    /// bytes if it sent them.
    fn owner_ack(
        &mut self,
        page: PageNo,
        from: Rank,
        kind: Kind,
        data: Option<&[u8]>,
        out: &mut Vec<(Rank, ToProcess)>,
    ) {
        let Some(e) = self.entries.get_mut(&page) else { return };
        let Some(txn) = e.busy.as_mut() else { return };
        // A DowngradeAck answers a Fetch or a switch to update mode; a RecallAck an Own.
        let downgrade = matches!(txn.request.kind, Kind::Fetch | Kind::Switch(Mode::Update));
        let matches_kind = if kind == Kind::Fetch { downgrade } else { txn.request.kind == Kind::Own };
        if !matches_kind || txn.owner_ack != Some(from) {
            return;
        }
        txn.owner_ack = None;
        // The former owner no longer holds a Writable copy either way. With data: it is the
        // current contents. Without: the owner wrote back before (home is current).
        e.owner = None;
        if let Some(d) = data {
            self.homes.write(page, d);
            if downgrade {
                // Downgraded to ReadOnly, keeps a copy equal to the new home.
                e.readers.insert(from);
            }
        }
        self.progress(page, out);
    }

    /// Completes the busy transaction of `page` if it has every ack, then starts queued
    /// requests until one has to wait (or the queue is empty).
    fn progress(&mut self, page: PageNo, out: &mut Vec<(Rank, ToProcess)>) {
        let Some(e) = self.entries.get_mut(&page) else { return };
        let stats = &mut self.stats;
        let pending = &mut self.pending;
        let homes = &mut *self.homes;
        let nprocs = self.nprocs;
        loop {
            match &e.busy {
                Some(txn) if !txn.done() => return,
                Some(_) => {
                    if let Some(txn) = e.busy.take() {
                        complete(e, homes, stats, nprocs, page, &txn, out);
                    }
                }
                None => {}
            }
            let Some(request) = e.queue.pop_front() else { return };
            if !matches!(request.kind, Kind::Switch(_)) {
                if let Some(n) = pending.get_mut(request.from as usize) {
                    *n = n.saturating_sub(1);
                }
            }
            start(e, homes, stats, page, request, out);
        }
    }
}

/// Starts `request`: sends the Downgrade / Invalidates / Recall it needs and marks the page
/// busy (a transaction with nothing to wait for completes at the next step of `progress`).
fn start(
    e: &mut Entry,
    homes: &mut dyn HomeStore,
    stats: &mut DirectoryStats,
    page: PageNo,
    request: Request,
    out: &mut Vec<(Rank, ToProcess)>,
) {
    // Rule 3': an ordinary ownership request on an update-mode page (which nobody owns) is
    // answered like a fetch, with a read-only copy in update mode; the process then replays
    // its store. Only a forced request (a store that cannot be replayed) switches the page
    // back, so an Own queued before its sender heard of the switch no longer undoes it.
    if request.kind == Kind::Own && e.mode == Mode::Update && e.owner.is_none() {
        stats.owns_kept_in_update += 1;
        let data = if e.readers.contains(&request.from) { None } else { homes.read(page).map(PageData) };
        if let Some(d) = &data {
            stats.pages_sent += 1;
            stats.bytes_sent += d.0.len() as u64;
        }
        out.push((request.from, ToProcess::Data { req: request.req, page, data, mode: Mode::Update }));
        e.readers.insert(request.from);
        return;
    }
    let request = if request.kind == Kind::ForceOwn { Request { kind: Kind::Own, ..request } } else { request };
    let mut txn =
        Txn { request, requester_gone: false, owner_ack: None, invalidate_acks: BTreeSet::new() };
    match request.kind {
        Kind::Fetch => {
            if let Some(o) = e.owner {
                // Also when o == request.from (cannot happen with a correct process): the
                // downgrade makes its copy ReadOnly and the directory consistent again.
                out.push((o, ToProcess::Downgrade { page }));
                stats.downgrades += 1;
                txn.owner_ack = Some(o);
            }
        }
        // (A forced request was turned into `Own` above.)
        Kind::Own | Kind::ForceOwn => {
            if e.mode == Mode::Update {
                // A forced ownership request on an update-mode page (an instruction the process
                // could not replay, or a store inside a system call) switches it back
                // (phase-2 rule 3; answering Retry instead livelocks).
                e.mode = Mode::Invalidate;
                stats.to_invalidate += 1;
            }
            for &r in &e.readers {
                if r != request.from {
                    out.push((r, ToProcess::Invalidate { page }));
                    stats.invalidations += 1;
                    txn.invalidate_acks.insert(r);
                }
            }
            if let Some(o) = e.owner {
                if o != request.from {
                    out.push((o, ToProcess::Recall { page }));
                    stats.recalls += 1;
                    txn.owner_ack = Some(o);
                }
            }
        }
        Kind::Write(op) => {
            write(e, homes, stats, page, request, op, out);
            return;
        }
        Kind::Switch(Mode::Invalidate) => {
            // U->I: nothing to tell anyone; readers keep their copies, the next Own
            // invalidates them (phase-2 rule 5).
            if e.mode == Mode::Update {
                e.mode = Mode::Invalidate;
                stats.to_invalidate += 1;
            }
            return;
        }
        Kind::Switch(Mode::Update) => {
            if e.mode == Mode::Update {
                return;
            }
            // I->U: downgrade the owner first, flip once it acknowledged (rule 5).
            if let Some(o) = e.owner {
                out.push((o, ToProcess::Downgrade { page }));
                stats.downgrades += 1;
                txn.owner_ack = Some(o);
            }
        }
    }
    e.busy = Some(txn);
}

fn check_len(page: PageNo, data: Option<&PageData>) -> Result<(), DirectoryError> {
    match data {
        Some(d) if d.0.len() != crate::PAGE_SIZE => {
            Err(DirectoryError::BadPageLength { page, len: d.0.len(), expected: crate::PAGE_SIZE })
        }
        _ => Ok(()),
    }
}

fn check_access(offset: u16, width: u8, max_width: u8) -> Result<(), DirectoryError> {
    let ok = matches!(width, 1 | 2 | 4 | 8 | 16)
        && width <= max_width
        && usize::from(offset) + usize::from(width) <= crate::PAGE_SIZE;
    if ok {
        Ok(())
    } else {
        Err(DirectoryError::Unexpected(format!("bad replayed access: {width} bytes at offset {offset}")))
    }
}

/// Applies a replayed store or RMW (update mode) to the home copy, broadcasts it to the other
/// readers and acknowledges it; or answers Retry (phase-2 rule 2 and rule 6).
fn write(
    e: &mut Entry,
    homes: &mut dyn HomeStore,
    stats: &mut DirectoryStats,
    page: PageNo,
    request: Request,
    op: WriteOp,
    out: &mut Vec<(Rank, ToProcess)>,
) {
    let Request { from, req, .. } = request;
    if e.mode != Mode::Update || !e.readers.contains(&from) {
        stats.retries += 1;
        out.push((from, ToProcess::Retry { req, page }));
        return;
    }
    let mut bytes = homes.read(page).unwrap_or_else(|| vec![0; crate::PAGE_SIZE]);
    if bytes.len() < crate::PAGE_SIZE {
        bytes.resize(crate::PAGE_SIZE, 0);
    }
    let (offset, width) = match op {
        WriteOp::Store { offset, width, .. } | WriteOp::Rmw { offset, width, .. } => {
            (usize::from(offset), usize::from(width))
        }
    };
    let mut cur = [0u8; 16];
    cur[..width].copy_from_slice(&bytes[offset..offset + width]);
    let old128 = u128::from_le_bytes(cur);
    let old = old128 as u64;
    let (new, stored) = match op {
        WriteOp::Store { value, .. } => (value, true),
        WriteOp::Rmw { width, op, operand, expected, .. } => {
            let (new, stored) = op.execute(width, old, operand, expected);
            (u128::from(new), stored)
        }
    };
    if stored {
        bytes[offset..offset + width].copy_from_slice(&new.to_le_bytes()[..width]);
    }
    homes.write(page, &bytes);
    stats.replayed_writes += 1;
    let value = if stored { new } else { old128 };
    let (offset, width) = (offset as u16, width as u8);
    if stored {
        for &r in &e.readers {
            if r != from {
                out.push((r, ToProcess::Update { page, offset, width, value }));
                stats.updates += 1;
            }
        }
    }
    out.push((from, ToProcess::WriteAck { req, page, offset, width, value, old }));
    // Adaptive: a long run of writes by one process goes back to ownership.
    if e.run_writer == Some(from) {
        e.run_len += 1;
    } else {
        e.run_writer = Some(from);
        e.run_len = 1;
    }
    if e.policy == Coherence::Adaptive && e.run_len >= WRITE_RUN {
        e.mode = Mode::Invalidate;
        stats.to_invalidate += 1;
        e.run_len = 0;
        e.alternations = 0;
    }
}

/// Finishes a transaction whose acks have all arrived: updates the entry and replies.
fn complete(
    e: &mut Entry,
    homes: &mut dyn HomeStore,
    stats: &mut DirectoryStats,
    nprocs: u32,
    page: PageNo,
    txn: &Txn,
    out: &mut Vec<(Rank, ToProcess)>,
) {
    let Request { from, req, kind } = txn.request;
    match kind {
        Kind::Fetch => {
            // Any owner was downgraded (or left, or wrote back): home is current.
            e.owner = None;
            if txn.requester_gone {
                return;
            }
            let data = homes.read(page).map(PageData);
            if let Some(d) = &data {
                stats.pages_sent += 1;
                stats.bytes_sent += d.0.len() as u64;
            }
            out.push((from, ToProcess::Data { req, page, data, mode: e.mode }));
            e.readers.insert(from);
        }
        Kind::Switch(_) => {
            // I->U after the owner's DowngradeAck: it stays a reader (owner_ack added it).
            e.owner = None;
            e.mode = Mode::Update;
            stats.to_update += 1;
            e.run_writer = None;
            e.run_len = 0;
            // Tell every process, not only the readers: a process that last held the page
            // through a Grant still believes invalidate mode, and its next store would ask for
            // ownership and flip the page straight back.
            for r in 0..nprocs {
                out.push((r, ToProcess::ModeHint { page, mode: Mode::Update }));
            }
        }
        Kind::Write(_) => {}
        Kind::Own | Kind::ForceOwn => {
            // Every other copy is gone. The requester's own copy is current if it is still
            // listed: nobody could have written the page since it got that copy.
            let had_copy = e.owner == Some(from) || e.readers.contains(&from);
            e.readers.clear();
            if txn.requester_gone {
                e.owner = None;
                return;
            }
            e.owner = Some(from);
            let data = if had_copy {
                None
            } else {
                Some(match homes.read(page) {
                    None => GrantData::Zero,
                    Some(bytes) => {
                        stats.pages_sent += 1;
                        stats.bytes_sent += bytes.len() as u64;
                        GrantData::Bytes(PageData(bytes))
                    }
                })
            };
            stats.ownership_grants += 1;
            out.push((from, ToProcess::Grant { req, page, data }));
            // Adaptive: ownership changing hands grant after grant means fine-grained sharing.
            if e.last_grantee.is_some_and(|g| g != from) {
                e.alternations += 1;
            } else {
                e.alternations = 0;
            }
            e.last_grantee = Some(from);
            let to_update = match e.policy {
                Coherence::Adaptive => e.alternations >= PINGPONG_GRANTS,
                // Ownership was needed for an instruction the process could not replay. Switch
                // back once another process wants the page, not at once: an instruction
                // touching two pages (a straddling store) needs both writable at the same time.
                Coherence::Update => e.alternations >= 1,
                Coherence::Invalidate => false,
            };
            if to_update {
                e.alternations = 0;
                e.queue.push_back(Request { from, req: 0, kind: Kind::Switch(Mode::Update) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PAGE_SIZE;
    use rand::{rngs::SmallRng, Rng, SeedableRng};

    type Out = Vec<(Rank, ToProcess)>;

    fn run(d: &mut PageDirectory, from: Rank, msg: ToCoordinator) -> Out {
        let mut out = Vec::new();
        d.handle(from, msg, &mut out).unwrap();
        out
    }

    /// A whole page starting with `b` (zeros after).
    fn bytes(b: &[u8]) -> PageData {
        PageData(page_of(b))
    }

    fn page_of(b: &[u8]) -> Vec<u8> {
        let mut v = b.to_vec();
        v.resize(crate::PAGE_SIZE, 0);
        v
    }

    /// Acknowledgement and writeback runs are read in place page by page: a directory fed the
    /// run answers, stores and counts exactly like one fed the pages' own messages.
    #[test]
    fn ack_and_writeback_runs_act_like_their_pages() {
        const N: u64 = 5;
        let pages = |b: u8| -> Vec<u8> { (0..N).flat_map(|p| page_of(&[b, p as u8 + 1])).collect() };
        // Rank 0 owns pages 1..1+N (written), rank 1 fetches them (a Downgrade each), rank 2
        // takes ownership (a Recall each), rank 2 writes back.
        let scenario = |as_runs: bool| {
            let mut d = PageDirectory::new(3, 8);
            let mut outs = Vec::new();
            for page in 1..1 + N {
                outs.extend(run(&mut d, 0, ToCoordinator::Own { req: 1, page }));
            }
            outs.extend(run(&mut d, 1, ToCoordinator::FetchRun { req: 2, first: 1, count: N as u32 }));
            let (down, recall, back) = (pages(7), pages(8), pages(9));
            let page = |all: &[u8], i: u64| PageData(all[i as usize * PAGE_SIZE..(i as usize + 1) * PAGE_SIZE].to_vec());
            if as_runs {
                outs.extend(run(&mut d, 0, ToCoordinator::DowngradeAckRun { first: 1, count: N as u32, data: Some(PageData(down.clone())) }));
            } else {
                for i in 0..N {
                    outs.extend(run(&mut d, 0, ToCoordinator::DowngradeAck { page: 1 + i, data: Some(page(&down, i)) }));
                }
            }
            // Rank 0 kept a copy (it is a reader now); rank 2 asks for ownership while rank 1
            // (also a reader) is invalidated; then rank 2 is made the owner and recalled.
            outs.extend(run(&mut d, 2, ToCoordinator::OwnRun { req: 3, first: 1, count: N as u32, conditional: false }));
            for r in [0, 1] {
                outs.extend(run(&mut d, r, ToCoordinator::InvalidateAckRun { first: 1, count: N as u32 }));
            }
            outs.extend(run(&mut d, 0, ToCoordinator::OwnRun { req: 4, first: 1, count: N as u32, conditional: false }));
            if as_runs {
                outs.extend(run(&mut d, 2, ToCoordinator::RecallAckRun { first: 1, count: N as u32, data: Some(PageData(recall.clone())) }));
                outs.extend(run(&mut d, 0, ToCoordinator::WritebackRun { first: 1, count: N as u32, data: PageData(back.clone()) }));
            } else {
                for i in 0..N {
                    outs.extend(run(&mut d, 2, ToCoordinator::RecallAck { page: 1 + i, data: Some(page(&recall, i)) }));
                }
                for i in 0..N {
                    outs.extend(run(&mut d, 0, ToCoordinator::Writeback { page: 1 + i, data: page(&back, i) }));
                }
            }
            let homes: Vec<Option<Vec<u8>>> = (0..8).map(|p| d.homes.read(p)).collect();
            let views: Vec<(Option<Rank>, Vec<Rank>, bool)> =
                (0..8).map(|p| d.inspect(p)).map(|v| (v.owner, v.readers, v.busy)).collect();
            (outs, homes, views, d.stats())
        };
        let (runs, pages_each) = (scenario(true), scenario(false));
        assert_eq!(runs, pages_each);
        // And what they did is what the scenario says: the write-back is the home copy, nobody
        // owns the pages, the downgraded bytes reached the fetcher and the recalled ones rank 0.
        let (outs, homes, views, stats) = runs;
        for i in 0..N {
            assert_eq!(homes[1 + i as usize].as_deref(), Some(&pages(9)[i as usize * PAGE_SIZE..(i as usize + 1) * PAGE_SIZE]));
            assert_eq!(views[1 + i as usize], (None, vec![], false));
        }
        assert_eq!(stats.writebacks, N);
        let sent_to = |r: Rank, b: u8| {
            outs.iter().any(|(to, m)| {
                *to == r
                    && match m {
                        ToProcess::Data { data: Some(d), .. } | ToProcess::Grant { data: Some(GrantData::Bytes(d)), .. } => d.0[0] == b,
                        _ => false,
                    }
            })
        };
        assert!(sent_to(1, 7) && sent_to(0, 8));
    }

    #[test]
    fn fetch_of_untouched_page_is_zero_and_costs_nothing() {
        let mut d = PageDirectory::new(2, 4);
        let out = run(&mut d, 0, ToCoordinator::Fetch { req: 1, page: 3 });
        assert_eq!(out, vec![(0, ToProcess::Data { req: 1, page: 3, data: None, mode: Mode::Invalidate })]);
        assert_eq!(d.inspect(3).readers, vec![0]);
        assert_eq!(d.stored_pages(), 0);
        assert_eq!(d.stats().fetches, 1);
        assert_eq!(d.stats().pages_sent, 0);
    }

    #[test]
    fn own_invalidates_readers_and_grants_after_every_ack() {
        let mut d = PageDirectory::new(3, 1);
        run(&mut d, 0, ToCoordinator::Fetch { req: 1, page: 0 });
        run(&mut d, 1, ToCoordinator::Fetch { req: 1, page: 0 });
        run(&mut d, 2, ToCoordinator::Fetch { req: 1, page: 0 });
        let out = run(&mut d, 0, ToCoordinator::Own { req: 2, page: 0 });
        assert_eq!(
            out,
            vec![(1, ToProcess::Invalidate { page: 0 }), (2, ToProcess::Invalidate { page: 0 })]
        );
        assert!(run(&mut d, 1, ToCoordinator::InvalidateAck { page: 0 }).is_empty());
        // An ack nobody waits for is ignored.
        assert!(run(&mut d, 1, ToCoordinator::InvalidateAck { page: 0 }).is_empty());
        let out = run(&mut d, 2, ToCoordinator::InvalidateAck { page: 0 });
        // The requester was a reader: no data needed.
        assert_eq!(out, vec![(0, ToProcess::Grant { req: 2, page: 0, data: None })]);
        let v = d.inspect(0);
        assert_eq!((v.owner, v.readers.len(), v.busy), (Some(0), 0, false));
        assert_eq!(d.stats().invalidations, 2);
        assert_eq!(d.stats().ownership_grants, 1);
    }

    #[test]
    fn own_by_non_reader_gets_zero_then_recall_moves_data() {
        let mut d = PageDirectory::new(2, 1);
        let out = run(&mut d, 0, ToCoordinator::Own { req: 1, page: 0 });
        assert_eq!(
            out,
            vec![(0, ToProcess::Grant { req: 1, page: 0, data: Some(GrantData::Zero) })]
        );
        let out = run(&mut d, 1, ToCoordinator::Own { req: 1, page: 0 });
        assert_eq!(out, vec![(0, ToProcess::Recall { page: 0 })]);
        let out = run(&mut d, 0, ToCoordinator::RecallAck { page: 0, data: Some(bytes(&[7, 0])) });
        assert_eq!(
            out,
            vec![(
                1,
                ToProcess::Grant { req: 1, page: 0, data: Some(GrantData::Bytes(bytes(&[7, 0]))) }
            )]
        );
        assert_eq!(d.stored_pages(), 1);
        assert_eq!(d.stats().bytes_sent, crate::PAGE_SIZE as u64);
        assert_eq!(d.inspect(0).owner, Some(1));
    }

    #[test]
    fn fetch_downgrades_owner_which_stays_reader() {
        let mut d = PageDirectory::new(2, 1);
        run(&mut d, 0, ToCoordinator::Own { req: 1, page: 0 });
        let out = run(&mut d, 1, ToCoordinator::Fetch { req: 1, page: 0 });
        assert_eq!(out, vec![(0, ToProcess::Downgrade { page: 0 })]);
        let out = run(&mut d, 0, ToCoordinator::DowngradeAck { page: 0, data: Some(bytes(&[1])) });
        assert_eq!(out, vec![(1, ToProcess::Data { req: 1, page: 0, data: Some(bytes(&[1])), mode: Mode::Invalidate })]);
        let v = d.inspect(0);
        assert_eq!((v.owner, v.readers), (None, vec![0, 1]));
    }

    #[test]
    fn requests_queue_behind_a_busy_page() {
        let mut d = PageDirectory::new(3, 1);
        run(&mut d, 0, ToCoordinator::Own { req: 1, page: 0 });
        assert_eq!(run(&mut d, 1, ToCoordinator::Own { req: 1, page: 0 }).len(), 1); // Recall
        assert!(run(&mut d, 2, ToCoordinator::Fetch { req: 1, page: 0 }).is_empty());
        assert_eq!(d.inspect(0).queued, 1);
        let out = run(&mut d, 0, ToCoordinator::RecallAck { page: 0, data: Some(bytes(&[5])) });
        // Grant to 1, then the queued Fetch starts: Downgrade to the new owner 1.
        assert_eq!(
            out,
            vec![
                (
                    1,
                    ToProcess::Grant { req: 1, page: 0, data: Some(GrantData::Bytes(bytes(&[5]))) }
                ),
                (1, ToProcess::Downgrade { page: 0 }),
            ]
        );
        let out = run(&mut d, 1, ToCoordinator::DowngradeAck { page: 0, data: Some(bytes(&[6])) });
        assert_eq!(out, vec![(2, ToProcess::Data { req: 1, page: 0, data: Some(bytes(&[6])), mode: Mode::Invalidate })]);
    }

    #[test]
    fn writeback_races_with_recall() {
        let mut d = PageDirectory::new(2, 1);
        run(&mut d, 0, ToCoordinator::Own { req: 1, page: 0 });
        assert_eq!(run(&mut d, 1, ToCoordinator::Own { req: 1, page: 0 }).len(), 1);
        // 0 wrote back before seeing the Recall, then answers it without data.
        assert!(run(&mut d, 0, ToCoordinator::Writeback { page: 0, data: bytes(&[9]) }).is_empty());
        let out = run(&mut d, 0, ToCoordinator::RecallAck { page: 0, data: None });
        assert_eq!(
            out,
            vec![(
                1,
                ToProcess::Grant { req: 1, page: 0, data: Some(GrantData::Bytes(bytes(&[9]))) }
            )]
        );
        assert_eq!(d.stats().writebacks, 1);
        // A writeback from a non-owner is ignored.
        run(&mut d, 0, ToCoordinator::Writeback { page: 0, data: bytes(&[1]) });
        assert_eq!(d.inspect(0).home, Some(page_of(&[9])));
        // Zero contents are not stored.
        run(&mut d, 1, ToCoordinator::Writeback { page: 0, data: bytes(&[0, 0]) });
        assert_eq!(d.stored_pages(), 0);
    }

    #[test]
    fn leave_completes_pending_downgrade_with_home_copy() {
        let mut d = PageDirectory::new(3, 1);
        run(&mut d, 0, ToCoordinator::Own { req: 1, page: 0 });
        run(&mut d, 0, ToCoordinator::Writeback { page: 0, data: bytes(&[3]) });
        run(&mut d, 0, ToCoordinator::Own { req: 2, page: 0 });
        assert_eq!(run(&mut d, 1, ToCoordinator::Fetch { req: 1, page: 0 }).len(), 1);
        let mut out = Vec::new();
        d.handle_leave(0, &mut out);
        assert_eq!(out, vec![(1, ToProcess::Data { req: 1, page: 0, data: Some(bytes(&[3])), mode: Mode::Invalidate })]);
        let v = d.inspect(0);
        assert_eq!((v.owner, v.readers, v.busy), (None, vec![1], false));
    }

    #[test]
    fn leave_of_requester_and_of_reader() {
        let mut d = PageDirectory::new(3, 1);
        run(&mut d, 1, ToCoordinator::Fetch { req: 1, page: 0 });
        run(&mut d, 2, ToCoordinator::Fetch { req: 1, page: 0 });
        assert_eq!(run(&mut d, 0, ToCoordinator::Own { req: 1, page: 0 }).len(), 2);
        run(&mut d, 1, ToCoordinator::InvalidateAck { page: 0 });
        let mut out = Vec::new();
        d.handle_leave(0, &mut out); // the requester leaves: no Grant
        assert!(out.is_empty());
        d.handle_leave(2, &mut out); // the last awaited ack counts as received
        assert!(out.is_empty());
        let v = d.inspect(0);
        assert_eq!((v.owner, v.readers.len(), v.busy), (None, 0, false));
        // Later acks from the departed are ignored.
        assert!(run(&mut d, 2, ToCoordinator::InvalidateAck { page: 0 }).is_empty());
    }

    #[test]
    fn errors() {
        let mut d = PageDirectory::new(2, 2);
        let mut out = Vec::new();
        assert_eq!(
            d.handle(0, ToCoordinator::Fetch { req: 1, page: 2 }, &mut out),
            Err(DirectoryError::OutOfRange { page: 2, pages: 2 })
        );
        assert!(matches!(
            d.handle(0, ToCoordinator::Detach, &mut out),
            Err(DirectoryError::Unexpected(_))
        ));
        assert!(matches!(
            d.handle(5, ToCoordinator::Fetch { req: 1, page: 0 }, &mut out),
            Err(DirectoryError::Unexpected(_))
        ));
        assert!(out.is_empty());
    }

    /// Arbitrary message sequences (protocol-violating ones included) never panic, and the
    /// owner/readers invariant holds throughout.
    #[test]
    fn random_input_never_panics() {
        for seed in 0..300u64 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut d = PageDirectory::new(4, 3);
            let mut out = Vec::new();
            for _ in 0..200 {
                let from = rng.gen_range(0..5);
                let page = rng.gen_range(0..4);
                let with_data = rng.gen_bool(0.5);
                let data = || with_data.then(|| PageData(vec![1; 3]));
                let msg = match rng.gen_range(0..8) {
                    0 => ToCoordinator::Fetch { req: rng.gen(), page },
                    1 => ToCoordinator::Own { req: rng.gen(), page },
                    2 => ToCoordinator::InvalidateAck { page },
                    3 => ToCoordinator::DowngradeAck { page, data: data() },
                    4 => ToCoordinator::RecallAck { page, data: data() },
                    5 => ToCoordinator::Writeback { page, data: PageData(vec![rng.gen(); 2]) },
                    6 => ToCoordinator::Detach,
                    _ => {
                        d.handle_leave(from, &mut out);
                        continue;
                    }
                };
                let _ = d.handle(from, msg, &mut out);
                for p in 0..3 {
                    let v = d.inspect(p);
                    assert!(v.owner.is_none() || v.readers.is_empty(), "seed {seed}: {v:?}");
                }
            }
        }
    }

    // ---- update mode ----

    /// `out` without the mode hints (ModeHint, Advice): the tests check the protocol messages.
    fn no_hints(out: Out) -> Out {
        out.into_iter()
            .filter(|(_, m)| !matches!(m, ToProcess::ModeHint { .. } | ToProcess::Advice { .. }))
            .collect()
    }

    fn write(req: ReqId, offset: u16, width: u8, value: u128) -> ToCoordinator {
        ToCoordinator::Write { req, page: 0, offset, width, value }
    }

    fn rmw(req: ReqId, op: RmwOp, operand: u64, expected: u64) -> ToCoordinator {
        ToCoordinator::Rmw { req, page: 0, offset: 8, width: 4, op, operand, expected }
    }

    fn ack(req: ReqId, offset: u16, width: u8, value: u128, old: u64) -> ToProcess {
        ToProcess::WriteAck { req, page: 0, offset, width, value, old }
    }

    /// A one-page directory in update mode whose readers are `readers`.
    fn update_page(nprocs: u32, readers: &[Rank]) -> PageDirectory {
        let mut d = PageDirectory::new(nprocs, 1).with_default_policy(Coherence::Update);
        for &r in readers {
            let out = run(&mut d, r, ToCoordinator::Fetch { req: 1, page: 0 });
            assert!(matches!(out[..], [(_, ToProcess::Data { mode: Mode::Update, .. })]));
        }
        assert_eq!(d.inspect(0).mode, Mode::Update);
        d
    }

    #[test]
    fn update_write_applies_to_home_and_broadcasts_to_other_readers() {
        let mut d = update_page(4, &[0, 1, 2]);
        let out = run(&mut d, 1, write(7, 8, 2, 0xBEEF));
        let update = ToProcess::Update { page: 0, offset: 8, width: 2, value: 0xBEEF };
        // The other readers only (not 3, which holds no copy), then the writer's ack.
        assert_eq!(out, vec![(0, update.clone()), (2, update), (1, ack(7, 8, 2, 0xBEEF, 0))]);
        let home = d.inspect(0).home.unwrap();
        assert_eq!(home.len(), crate::PAGE_SIZE);
        assert_eq!(home[8..10], [0xEF, 0xBE]);
        assert!(home.iter().enumerate().all(|(i, &b)| b == 0 || i == 8 || i == 9));
        // A 16-byte store; `old` holds the low 8 bytes it replaced.
        let out = run(&mut d, 0, write(8, 8, 16, u128::MAX));
        assert_eq!(out.last(), Some(&(0, ack(8, 8, 16, u128::MAX, 0xBEEF))));
        let v = d.inspect(0);
        assert_eq!(
            (v.owner, v.readers, v.busy, v.mode),
            (None, vec![0, 1, 2], false, Mode::Update)
        );
        let s = d.stats();
        assert_eq!((s.replayed_writes, s.updates, s.retries), (2, 4, 0));
        // Storing zeros back makes the page all zero again: nothing stored.
        run(&mut d, 0, write(9, 8, 16, 0));
        assert_eq!(d.stored_pages(), 0);
    }

    #[test]
    fn write_in_invalidate_mode_or_from_a_non_reader_is_retried() {
        let mut d = PageDirectory::new(2, 1).with_default_policy(Coherence::Invalidate);
        run(&mut d, 0, ToCoordinator::Fetch { req: 1, page: 0 });
        assert_eq!(
            run(&mut d, 0, write(2, 0, 8, 5)),
            vec![(0, ToProcess::Retry { req: 2, page: 0 })]
        );
        let out = run(&mut d, 0, rmw(3, RmwOp::Add, 1, 0));
        assert_eq!(out, vec![(0, ToProcess::Retry { req: 3, page: 0 })]);
        assert_eq!((d.inspect(0).home, d.stats().retries, d.stats().replayed_writes), (None, 2, 0));
        // Update mode, but 1 holds no copy (rule 6).
        let mut d = update_page(2, &[0]);
        assert_eq!(
            run(&mut d, 1, write(4, 0, 8, 5)),
            vec![(1, ToProcess::Retry { req: 4, page: 0 })]
        );
        assert_eq!(d.inspect(0).home, None);
        // Bad accesses are errors, not retries.
        let mut out = Vec::new();
        for (offset, width) in [(0, 3), (4095, 2), (0, 32)] {
            let msg = ToCoordinator::Write { req: 5, page: 0, offset, width, value: 1 };
            assert!(matches!(d.handle(0, msg, &mut out), Err(DirectoryError::Unexpected(_))));
        }
        let msg = ToCoordinator::Rmw {
            req: 6,
            page: 0,
            offset: 0,
            width: 16,
            op: RmwOp::Add,
            operand: 1,
            expected: 0,
        };
        assert!(d.handle(0, msg, &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn rmw_returns_the_old_value_and_stores_the_new_bytes() {
        let mut d = update_page(2, &[0, 1]);
        run(&mut d, 1, write(1, 8, 4, 10));
        // Add: old 10, new 15, broadcast.
        let out = run(&mut d, 0, rmw(2, RmwOp::Add, 5, 0));
        let update = |value| (1, ToProcess::Update { page: 0, offset: 8, width: 4, value });
        assert_eq!(out, vec![update(15), (0, ack(2, 8, 4, 15, 10))]);
        assert_eq!(d.inspect(0).home.unwrap()[8..12], 15u32.to_le_bytes());
        // CmpXchg that succeeds: old 15 == expected, memory becomes 20.
        let out = run(&mut d, 0, rmw(3, RmwOp::CmpXchg, 20, 15));
        assert_eq!(out, vec![update(20), (0, ack(3, 8, 4, 20, 15))]);
        // CmpXchg that fails: memory unchanged, nothing broadcast, the ack carries the current
        // value as old (what lands in rax).
        let out = run(&mut d, 1, rmw(4, RmwOp::CmpXchg, 99, 7));
        assert_eq!(out, vec![(1, ack(4, 8, 4, 20, 20))]);
        assert_eq!(d.inspect(0).home.unwrap()[8..12], 20u32.to_le_bytes());
        // The width truncates: 4-byte add wraps around without touching the next bytes.
        run(&mut d, 0, write(5, 8, 8, 0x1_FFFF_FFFF));
        let out = run(&mut d, 0, rmw(6, RmwOp::Xadd, 1, 0));
        assert_eq!(out.last(), Some(&(0, ack(6, 8, 4, 0, 0xFFFF_FFFF))));
        assert_eq!(d.inspect(0).home.unwrap()[8..16], [0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(d.stats().replayed_writes, 6);
    }

    #[test]
    fn ordinary_own_on_an_update_page_is_answered_read_only_and_the_page_stays_in_update_mode() {
        let mut d = PageDirectory::new(3, 1).with_default_policy(Coherence::Adaptive);
        for r in 0..2 {
            run(&mut d, r, ToCoordinator::Fetch { req: 1, page: 0 });
        }
        let mut out = Vec::new();
        d.request_switch(0, Mode::Update, &mut out);
        run(&mut d, 1, write(2, 0, 8, 3));
        // A reader that still believed invalidate mode: no data (its copy is current).
        assert_eq!(
            run(&mut d, 0, ToCoordinator::Own { req: 3, page: 0 }),
            vec![(0, ToProcess::Data { req: 3, page: 0, data: None, mode: Mode::Update })]
        );
        // A process without a copy: the home copy, and it becomes a reader receiving updates.
        let out = run(&mut d, 2, ToCoordinator::Own { req: 1, page: 0 });
        let [(2, ToProcess::Data { req: 1, page: 0, data: Some(home), mode: Mode::Update })] = &out[..] else { panic!("{out:?}") };
        assert_eq!(home.0[0..8], 3u64.to_le_bytes());
        let v = d.inspect(0);
        assert_eq!((v.owner, v.readers, v.mode, v.busy), (None, vec![0, 1, 2], Mode::Update, false));
        let s = d.stats();
        assert_eq!((s.to_invalidate, s.owns_kept_in_update, s.ownership_grants), (0, 2, 0));
        // Its replayed store reaches the other two.
        let out = run(&mut d, 2, write(4, 0, 8, 5));
        assert_eq!(out.iter().filter(|(_, m)| matches!(m, ToProcess::Update { .. })).count(), 2, "{out:?}");
    }

    #[test]
    fn forced_own_on_an_update_page_switches_to_invalidate_and_invalidates_the_others() {
        // Adaptive page switched to update mode by hand (an Update-policy page switches back
        // after the grant; see below).
        let mut d = PageDirectory::new(3, 1).with_default_policy(Coherence::Adaptive);
        for r in 0..3 {
            run(&mut d, r, ToCoordinator::Fetch { req: 1, page: 0 });
        }
        let mut out = Vec::new();
        d.request_switch(0, Mode::Update, &mut out);
        assert_eq!(no_hints(out), vec![]);
        assert_eq!(d.inspect(0).mode, Mode::Update);
        run(&mut d, 2, write(2, 0, 8, 3));
        let out = run(&mut d, 0, ToCoordinator::ForceOwn { req: 3, page: 0 });
        assert_eq!(
            out,
            vec![(1, ToProcess::Invalidate { page: 0 }), (2, ToProcess::Invalidate { page: 0 })]
        );
        assert_eq!(d.inspect(0).mode, Mode::Invalidate);
        assert_eq!(d.stats().to_invalidate, 1);
        // A write queued behind the Own is answered Retry once the page is in invalidate mode.
        assert!(run(&mut d, 2, write(4, 0, 8, 9)).is_empty());
        run(&mut d, 1, ToCoordinator::InvalidateAck { page: 0 });
        let out = run(&mut d, 2, ToCoordinator::InvalidateAck { page: 0 });
        assert_eq!(
            out,
            vec![
                (0, ToProcess::Grant { req: 3, page: 0, data: None }),
                (2, ToProcess::Retry { req: 4, page: 0 }),
            ]
        );
        let v = d.inspect(0);
        assert_eq!((v.owner, v.readers), (Some(0), vec![]));
        // The replayed store before the Own is in the home copy (the new owner's copy has it).
        assert_eq!(v.home.map(|h| h[0]), Some(3));

        // Policy Update: the forced Own is served and the owner keeps the page (an instruction
        // may need two pages writable at once); once another process asks for it, the page goes
        // back to update mode by downgrading that new owner.
        let mut d = update_page(2, &[0, 1]);
        assert_eq!(run(&mut d, 1, ToCoordinator::ForceOwn { req: 2, page: 0 }).len(), 1);
        let out = run(&mut d, 0, ToCoordinator::InvalidateAck { page: 0 });
        assert_eq!(out, vec![(1, ToProcess::Grant { req: 2, page: 0, data: None })]);
        assert_eq!(d.inspect(0).mode, Mode::Invalidate);
        let out = run(&mut d, 0, ToCoordinator::Own { req: 3, page: 0 });
        assert_eq!(out, vec![(1, ToProcess::Recall { page: 0 })]);
        let out = run(&mut d, 1, ToCoordinator::RecallAck { page: 0, data: Some(bytes(&[4])) });
        assert_eq!(
            out,
            vec![
                (0, ToProcess::Grant { req: 3, page: 0, data: Some(GrantData::Bytes(bytes(&[4]))) }),
                (0, ToProcess::Downgrade { page: 0 }),
            ]
        );
        let out = run(&mut d, 0, ToCoordinator::DowngradeAck { page: 0, data: Some(bytes(&[5])) });
        assert!(no_hints(out).is_empty());
        let v = d.inspect(0);
        assert_eq!((v.owner, v.readers, v.mode, v.busy), (None, vec![0], Mode::Update, false));
    }

    #[test]
    fn switch_to_update_downgrades_the_owner_first() {
        let mut d = PageDirectory::new(2, 1).with_default_policy(Coherence::Invalidate);
        run(&mut d, 0, ToCoordinator::Own { req: 1, page: 0 });
        let mut out = Vec::new();
        d.request_switch(0, Mode::Update, &mut out);
        assert_eq!(out, vec![(0, ToProcess::Downgrade { page: 0 })]);
        // Not flipped yet: the owner may still be storing.
        let v = d.inspect(0);
        assert_eq!((v.mode, v.owner, v.busy), (Mode::Invalidate, Some(0), true));
        // Requests queue behind the switch.
        assert!(run(&mut d, 1, ToCoordinator::Fetch { req: 1, page: 0 }).is_empty());
        let out = run(&mut d, 0, ToCoordinator::DowngradeAck { page: 0, data: Some(bytes(&[6])) });
        // The former owner stays a reader (and is told the mode); the fetcher gets Data in
        // update mode.
        assert!(out.contains(&(0, ToProcess::ModeHint { page: 0, mode: Mode::Update })));
        assert_eq!(
            no_hints(out),
            vec![(
                1,
                ToProcess::Data { req: 1, page: 0, data: Some(bytes(&[6])), mode: Mode::Update }
            )]
        );
        let v = d.inspect(0);
        assert_eq!((v.mode, v.owner, v.readers, v.busy), (Mode::Update, None, vec![0, 1], false));
        assert_eq!(d.stats().to_update, 1);
        // The former owner's replayed store is accepted.
        assert_eq!(run(&mut d, 0, write(2, 0, 1, 7)).len(), 2);
        // Back to invalidate: immediate, silent; readers keep their copies.
        let mut out = Vec::new();
        d.request_switch(0, Mode::Invalidate, &mut out);
        assert!(out.is_empty());
        let v = d.inspect(0);
        assert_eq!((v.mode, v.readers), (Mode::Invalidate, vec![0, 1]));
        // A switch to the current mode is a no-op; out-of-range pages are ignored.
        d.request_switch(0, Mode::Invalidate, &mut out);
        d.request_switch(9, Mode::Update, &mut out);
        assert!(out.is_empty());
        assert_eq!(d.stats().to_invalidate, 1);
        // Without an owner the switch to update mode is immediate.
        d.request_switch(0, Mode::Update, &mut out);
        assert_eq!(d.inspect(0).mode, Mode::Update);
        assert!(no_hints(out).is_empty());
    }

    #[test]
    fn adaptive_ping_pong_switches_to_update_and_a_write_run_switches_back() {
        let mut d = PageDirectory::new(2, 1).with_default_policy(Coherence::Adaptive);
        let mut grants = 0;
        let mut last = Vec::new();
        // Ownership alternates between 0 and 1; the first grant does not count as a change.
        for k in 0..=PINGPONG_GRANTS {
            let (r, other) = (k % 2, 1 - k % 2);
            let out = run(&mut d, r, ToCoordinator::Own { req: k.into(), page: 0 });
            let out = if k == 0 {
                out
            } else {
                assert_eq!(out, vec![(other, ToProcess::Recall { page: 0 })]);
                run(
                    &mut d,
                    other,
                    ToCoordinator::RecallAck { page: 0, data: Some(bytes(&[k as u8])) },
                )
            };
            assert!(matches!(out[0], (g, ToProcess::Grant { .. }) if g == r), "{out:?}");
            grants += 1;
            assert_eq!(d.inspect(0).mode, Mode::Invalidate);
            if k < PINGPONG_GRANTS {
                assert_eq!(out.len(), 1, "no switch after {grants} grants: {out:?}");
            }
            last = out;
        }
        // The grant that made PINGPONG_GRANTS changes of hands queues the switch: Downgrade.
        let owner = PINGPONG_GRANTS % 2;
        assert_eq!(last[1], (owner, ToProcess::Downgrade { page: 0 }));
        run(&mut d, owner, ToCoordinator::DowngradeAck { page: 0, data: Some(bytes(&[1])) });
        let v = d.inspect(0);
        assert_eq!((v.mode, v.owner, v.readers), (Mode::Update, None, vec![owner]));
        run(&mut d, 1 - owner, ToCoordinator::Fetch { req: 99, page: 0 });
        // Writes by both processes: no run.
        let w = |d: &mut PageDirectory, from: Rank, req: ReqId| {
            run(d, from, write(req, 0, 8, req.into()))
        };
        for req in 0..3 * u64::from(WRITE_RUN) {
            let out = w(&mut d, (req % 2) as Rank, req);
            assert!(matches!(out.last(), Some((_, ToProcess::WriteAck { .. }))));
        }
        assert_eq!(d.inspect(0).mode, Mode::Update);
        // WRITE_RUN writes in a row by one process switch back after the last one.
        for req in 1..u64::from(WRITE_RUN) {
            w(&mut d, 0, 1000 + req);
            assert_eq!(d.inspect(0).mode, Mode::Update, "after {req} writes");
        }
        let out = w(&mut d, 0, 2000);
        assert!(
            matches!(out.last(), Some((0, ToProcess::WriteAck { .. }))),
            "the last write is applied"
        );
        assert_eq!(d.inspect(0).mode, Mode::Invalidate);
        assert_eq!(w(&mut d, 0, 2001), vec![(0, ToProcess::Retry { req: 2001, page: 0 })]);
        let s = d.stats();
        assert_eq!((s.to_update, s.to_invalidate), (1, 1));
    }

    #[test]
    fn advise_switches_touched_pages_both_ways() {
        let mut d = PageDirectory::new(2, 3).with_default_policy(Coherence::Invalidate);
        run(&mut d, 0, ToCoordinator::Fetch { req: 1, page: 0 });
        run(&mut d, 1, ToCoordinator::Own { req: 1, page: 1 });
        let advise = |coherence| ToCoordinator::Advise { first: 0, count: 2, coherence };
        let out = run(&mut d, 0, advise(Coherence::Update));
        // Page 0 (a reader only) flips at once; page 1 downgrades its owner first.
        assert_eq!(no_hints(out), vec![(1, ToProcess::Downgrade { page: 1 })]);
        assert_eq!((d.inspect(0).mode, d.inspect(1).mode), (Mode::Update, Mode::Invalidate));
        run(&mut d, 1, ToCoordinator::DowngradeAck { page: 1, data: None });
        assert_eq!(d.inspect(1).mode, Mode::Update);
        assert_eq!(d.inspect(1).readers, Vec::<Rank>::new(), "no data: no copy left");
        // Untouched page 2 keeps the default; a page touched later in the range gets the advice.
        assert_eq!(
            run(&mut d, 1, ToCoordinator::Fetch { req: 2, page: 2 })[0].1,
            ToProcess::Data { req: 2, page: 2, data: None, mode: Mode::Invalidate }
        );
        run(&mut d, 0, advise(Coherence::Invalidate));
        assert_eq!((d.inspect(0).mode, d.inspect(1).mode), (Mode::Invalidate, Mode::Invalidate));
        assert_eq!(
            run(&mut d, 0, write(5, 0, 8, 1)),
            vec![(0, ToProcess::Retry { req: 5, page: 0 })]
        );
        // Advice before the first touch: the page is created in update mode.
        let mut d = PageDirectory::new(2, 3).with_default_policy(Coherence::Invalidate);
        run(&mut d, 0, ToCoordinator::Advise { first: 2, count: 1, coherence: Coherence::Update });
        let out = run(&mut d, 0, ToCoordinator::Fetch { req: 1, page: 2 });
        assert_eq!(
            out,
            vec![(0, ToProcess::Data { req: 1, page: 2, data: None, mode: Mode::Update })]
        );
        let s = d.stats();
        assert_eq!((s.to_update, s.to_invalidate), (0, 0));
    }

    #[test]
    fn malformed_and_flooding_requests_are_errors_not_state() {
        let mut d = PageDirectory::new(2, 4);
        let mut out = Vec::new();
        // Page contents must be whole pages, in every message that carries them.
        let short = PageData(vec![1; 10]);
        let long = PageData(vec![1; crate::PAGE_SIZE + 1]);
        for msg in [
            ToCoordinator::Writeback { page: 0, data: short.clone() },
            ToCoordinator::DowngradeAck { page: 0, data: Some(long.clone()) },
            ToCoordinator::RecallAck { page: 0, data: Some(short) },
        ] {
            assert!(matches!(d.handle(0, msg, &mut out), Err(DirectoryError::BadPageLength { .. })));
        }
        // One fetch or ownership request per page and rank at a time.
        run(&mut d, 0, ToCoordinator::Own { req: 1, page: 1 });
        run(&mut d, 1, ToCoordinator::Own { req: 1, page: 1 }); // busy: recalls rank 0
        let dup = d.handle(1, ToCoordinator::Fetch { req: 2, page: 1 }, &mut out);
        assert_eq!(dup, Err(DirectoryError::DuplicateRequest { rank: 1, page: 1 }));
        // Advice: inside the region only; repeating it broadcasts nothing; ranges are bounded.
        let advise = |first, count| ToCoordinator::Advise { first, count, coherence: Coherence::Update };
        assert!(matches!(d.handle(0, advise(3, 2), &mut out), Err(DirectoryError::BadAdvice(_))));
        assert!(matches!(d.handle(0, advise(0, 0), &mut out), Err(DirectoryError::BadAdvice(_))));
        assert!(matches!(d.handle(0, advise(u64::MAX, 2), &mut out), Err(DirectoryError::BadAdvice(_))));
        assert_eq!(run(&mut d, 0, advise(2, 1)).len(), 2, "one Advice per process");
        assert!(run(&mut d, 0, advise(2, 1)).is_empty());
        let mut big = PageDirectory::new(1, 2 * MAX_ADVICE as u64);
        for i in 0..MAX_ADVICE as u64 {
            let c = if i % 2 == 0 { Coherence::Update } else { Coherence::Invalidate };
            big.handle(0, ToCoordinator::Advise { first: 2 * i, count: 1, coherence: c }, &mut Vec::new()).unwrap();
        }
        let r = big.handle(0, ToCoordinator::Advise { first: 1, count: 1, coherence: Coherence::Update }, &mut Vec::new());
        assert!(matches!(r, Err(DirectoryError::BadAdvice(_))), "{r:?}");
        // A range covering all earlier ones replaces them.
        big.handle(0, ToCoordinator::Advise { first: 0, count: 2 * MAX_ADVICE as u64, coherence: Coherence::Invalidate }, &mut Vec::new())
            .unwrap();
    }

    #[test]
    fn waiting_requests_per_rank_are_bounded() {
        let mut d = PageDirectory::new(2, 1).with_default_policy(Coherence::Update);
        run(&mut d, 1, ToCoordinator::ForceOwn { req: 1, page: 0 });
        run(&mut d, 0, ToCoordinator::Fetch { req: 1, page: 0 }); // busy downgrading rank 1
        let mut out = Vec::new();
        let mut refused = None;
        for req in 0..=u64::from(MAX_PENDING_PER_RANK) {
            let w = ToCoordinator::Write { req, page: 0, offset: 0, width: 8, value: 1 };
            if let Err(e) = d.handle(0, w, &mut out) {
                refused = Some((req, e));
                break;
            }
        }
        let (at, e) = refused.expect("a flood must be refused");
        assert_eq!(e, DirectoryError::TooManyRequests { rank: 0, max: MAX_PENDING_PER_RANK });
        assert_eq!(at, u64::from(MAX_PENDING_PER_RANK), "every queued write counts; the started fetch no longer does");
        // Rank 1 is not affected.
        assert!(d.handle(1, ToCoordinator::Write { req: 9, page: 0, offset: 0, width: 8, value: 1 }, &mut out).is_ok());
    }
}
