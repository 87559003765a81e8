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

use crate::wire::{Coherence, Mode, PageData, PageNo, Rank, ReqId, ToCoordinator, ToProcess};

mod backup;
mod forward;
mod homes;
mod ranks;
mod report;
mod table;
mod txn;

pub use homes::{HeapHomes, HomeStore};
pub use report::{DirectoryError, DirectoryStats, PageView};
use homes::Homes;
use table::PageTable;
use txn::{drive, grant_home, Entry, Kind, Request, Rules, WriteOp};

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

/// The coordinator side of the INVALIDATE protocol for one session (see the module docs).
#[derive(Debug)]
pub struct PageDirectory {
    nprocs: u32,
    pages: u64,
    entries: PageTable<Entry>,
    stats: DirectoryStats,
    /// `Advise` ranges, latest last: the policy of a page created later.
    advice: Vec<(PageNo, PageNo, Coherence)>,
    /// Default policy of pages no advice covers.
    default_policy: Coherence,
    /// Requests of each rank waiting in page queues (bounded by [`MAX_PENDING_PER_RANK`]).
    pending: Vec<u32>,
    /// The home copies.
    homes: Homes,
    /// Pages go directly from process to process (every member serves peer connections).
    forwards: bool,
    /// With forwards: readers of an upgraded stale page keep backups (E1) instead of a flush.
    backups: bool,
}

impl PageDirectory {
    /// A directory for `nprocs` processes sharing a region of `pages` pages, all zero.
    pub fn new(nprocs: u32, pages: u64) -> Self {
        PageDirectory {
            nprocs,
            pages,
            entries: PageTable::default(),
            stats: DirectoryStats::default(),
            advice: Vec::new(),
            default_policy: Coherence::Adaptive,
            pending: vec![0; nprocs as usize],
            homes: Homes::new(Box::new(HeapHomes::default())),
            forwards: false,
            backups: true,
        }
    }

    /// Sends pages another process holds directly from that process to the requester
    /// (`Forward`; every member must serve peer connections). Off by default.
    pub fn with_forwards(mut self, on: bool) -> Self {
        self.forwards = on;
        self
    }

    /// With forwards, an upgrade of a stale page leaves the other readers' bytes as backups
    /// (on by default); off, one reader first sends its copy home (a flush).
    pub fn with_backups(mut self, on: bool) -> Self {
        self.backups = on;
        self
    }

    fn rules(&self) -> Rules {
        Rules { nprocs: self.nprocs, forwards: self.forwards, backups: self.forwards && self.backups }
    }

    /// Keeps the home copies in `homes` (it must be empty).
    pub fn with_homes(mut self, homes: Box<dyn HomeStore>) -> Self {
        self.homes = Homes::new(homes);
        self
    }

    /// The policy of pages no `Advise` covers (default: adaptive).
    pub fn with_default_policy(mut self, policy: Coherence) -> Self {
        self.default_policy = policy;
        self
    }

    fn policy_for(&self, page: PageNo) -> Coherence {
        policy_of(&self.advice, self.default_policy, page)
    }

    fn entry(&mut self, page: PageNo) -> &mut Entry {
        entry_in(&mut self.entries, &self.advice, self.default_policy, page)
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
        let handled = self.handle_message(from, msg, out);
        // The replies are made: the message's buffer is no longer needed here.
        self.homes.forget();
        handled
    }

    fn handle_message(
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
                    if txn.request.kind == Kind::Own && txn.invalidate_acks.remove(from) {
                        self.progress(page, out);
                    }
                }
            }
            ToCoordinator::DowngradeAck { page, data } => {
                self.check(page)?;
                check_len(page, data.as_ref())?;
                self.owner_ack(page, from, Kind::Fetch, data, out);
            }
            ToCoordinator::RecallAck { page, data } => {
                self.check(page)?;
                check_len(page, data.as_ref())?;
                self.owner_ack(page, from, Kind::Own, data, out);
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
                    self.entries.keys().filter(|p| (first..end).contains(p)).collect();
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
                self.writeback(page, from, &data, out);
            }
            ToCoordinator::Got { first, count } => {
                self.check_span("got", first, count, None)?;
                for page in first..first + u64::from(count) {
                    self.got(page, from, out);
                }
            }
            ToCoordinator::ForwardAborted { first, count } => {
                self.check_span("forward aborted", first, count, None)?;
                for page in first..first + u64::from(count) {
                    self.forward_aborted(page, from, out);
                }
            }
            ToCoordinator::ForwardReturn { req, to, first, count, data } => {
                self.check_span("forward return", first, count, Some(data.len()))?;
                for (page, i) in (first..first + u64::from(count)).zip(0..) {
                    self.forward_return(page, from, (req, to), &data.page_data(i), out);
                }
            }
            ToCoordinator::BackupAck { first, count, kept } => {
                self.check_span("backup acknowledgement", first, count, None)?;
                for page in first..first + u64::from(count) {
                    self.backup_ack(page, from, kept, out);
                }
            }
            ToCoordinator::BackupData { first, count, ref data } | ToCoordinator::BackupHome { first, count, ref data } => {
                let home = matches!(msg, ToCoordinator::BackupHome { .. });
                self.check_span("backup data", first, count, Some(data.len()))?;
                for (page, i) in (first..first + u64::from(count)).zip(0..) {
                    self.backup_bytes(page, from, &data.page_data(i), home, out);
                }
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
            | ToCoordinator::WritebackRun { .. }) => self.handle_ack_run(from, run, out)?,
            other => {
                return Err(DirectoryError::Unexpected(format!("not a page message: {other:?}")))
            }
        }
        Ok(())
    }

    /// A run of acknowledgements or writebacks: each page acts as its own message would, its
    /// bytes read in place (no per-page copy).
    fn handle_ack_run(&mut self, from: Rank, run: ToCoordinator, out: &mut Vec<(Rank, ToProcess)>) -> Result<(), DirectoryError> {
        let (first, count, len) = match &run {
            ToCoordinator::InvalidateAckRun { first, count } => (*first, *count, None),
            ToCoordinator::DowngradeAckRun { first, count, data } | ToCoordinator::RecallAckRun { first, count, data } => {
                (*first, *count, data.as_ref().map(|d| d.len()))
            }
            ToCoordinator::WritebackRun { first, count, data } => (*first, *count, Some(data.len())),
            other => return Err(DirectoryError::Unexpected(format!("not an acknowledgement run: {other:?}"))),
        };
        // Checked here: the run's data is `count` whole pages, so `page(i)` is each page's.
        self.check_span("acknowledgement run", first, count, len)?;
        if len.is_some() {
            self.homes.prepare(first, count);
        }
        let pages = (first..first + u64::from(count)).zip(0..);
        match run {
            ToCoordinator::DowngradeAckRun { data, .. } => {
                for (page, i) in pages {
                    self.owner_ack(page, from, Kind::Fetch, data.as_ref().map(|d| d.page_data(i)), out);
                }
            }
            ToCoordinator::RecallAckRun { data, .. } => {
                for (page, i) in pages {
                    self.owner_ack(page, from, Kind::Own, data.as_ref().map(|d| d.page_data(i)), out);
                }
            }
            ToCoordinator::WritebackRun { data, .. } => {
                for (page, i) in pages {
                    self.writeback(page, from, data.page(i), out);
                }
            }
            run => {
                for msg in crate::runs::expand_to_coordinator(run) {
                    self.handle_message(from, msg, out)?;
                }
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
        let e = self.entries.get_or_insert_with(page, || Entry::new(policy));
        e.owner = Some(from);
        let data = grant_home(&self.homes, stats, page);
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
        let mut pages: Vec<PageNo> = self.entries.keys().collect();
        pages.sort_unstable();
        for page in pages {
            self.forward_left(page, rank, out);
            let Some(e) = self.entries.get_mut(&page) else { continue };
            e.readers.remove(rank);
            e.backups.remove(rank);
            if e.owner == Some(rank) {
                e.owner = None;
            }
            if e.stale && e.readers.is_empty() {
                // Nobody holds the current contents any more (every holder crashed): the
                // home, older, is all there is.
                e.stale = false;
            }
            e.queue.retain(|r| r.from != rank || matches!(r.kind, Kind::Switch(_)));
            if let Some(txn) = e.busy.as_mut() {
                if txn.request.from == rank {
                    txn.requester_gone = true;
                }
                txn.invalidate_acks.remove(rank);
                txn.backup_acks.remove(rank);
                if txn.restore == Some(rank) {
                    // Lost before it answered: the next holder is asked (`drive`).
                    txn.restore = None;
                }
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
                readers: e.readers.iter().collect(),
                home: self.homes.read(page).map(|d| d.to_vec()),
                busy: e.busy.is_some(),
                queued: e.queue.len(),
                mode: e.mode,
                stale: e.stale,
                backups: e.backups.iter().collect(),
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

    /// Queues `request` behind whatever `page` has under way and drives the page (a request
    /// for an idle page starts at once, without a trip through the queue).
    fn submit(&mut self, page: PageNo, request: Request, out: &mut Vec<(Rank, ToProcess)>) {
        let rules = self.rules();
        let e = entry_in(&mut self.entries, &self.advice, self.default_policy, page);
        drive(e, &mut self.homes, &mut self.stats, &mut self.pending, rules, page, Some(request), out);
    }

    /// A Writeback of `page` (one page of `bytes`) from `from`: kept from its owner, and from
    /// a reader of a stale page (a process leaving with the current contents); ignored from
    /// anyone else.
    fn writeback(&mut self, page: PageNo, from: Rank, bytes: &[u8], out: &mut Vec<(Rank, ToProcess)>) {
        let Some(e) = self.entries.get_mut(&page) else { return };
        let kept = if e.owner == Some(from) {
            e.owner = None;
            true
        } else if e.stale && e.readers.contains(from) {
            e.readers.remove(from);
            e.stale = false;
            true
        } else {
            false
        };
        if kept {
            self.homes.write(page, bytes);
            self.stats.writebacks += 1;
            backup::release(e, &mut self.stats, page, out);
        }
        self.written_back(page, from, kept, out);
        self.progress(page, out);
    }

    /// A DowngradeAck (`kind` Fetch) or RecallAck (`kind` Own) from `from`, with the page's
    /// bytes if it sent them.
    fn owner_ack(
        &mut self,
        page: PageNo,
        from: Rank,
        kind: Kind,
        data: Option<PageData>,
        out: &mut Vec<(Rank, ToProcess)>,
    ) {
        let Some(e) = self.entries.get_mut(&page) else { return };
        let Some(txn) = e.busy.as_mut() else { return };
        // A DowngradeAck answers a Fetch, a switch to update mode or a flush; a RecallAck an Own.
        let downgrade = txn.flush || matches!(txn.request.kind, Kind::Fetch | Kind::Switch(Mode::Update));
        let matches_kind = if kind == Kind::Fetch { downgrade } else { txn.request.kind == Kind::Own && !txn.flush };
        if !matches_kind || txn.owner_ack != Some(from) {
            return;
        }
        txn.owner_ack = None;
        if txn.flush {
            // A reader of a stale page sent its copy home (it keeps it); without data it no
            // longer held the page (its Writeback, first on the stream, made the home current).
            match &data {
                Some(d) => {
                    self.homes.write_data(page, d);
                    e.stale = false;
                    backup::release(e, &mut self.stats, page, out);
                }
                None => {
                    e.readers.remove(from);
                    if e.readers.is_empty() {
                        e.stale = false;
                    }
                }
            }
            self.progress(page, out);
            return;
        }
        // The former owner no longer holds a Writable copy either way. With data: it is the
        // current contents. Without: the owner wrote back before (home is current).
        e.owner = None;
        if let Some(d) = &data {
            // A reply this step makes carries these bytes as they came (`Homes`).
            self.homes.write_data(page, d);
            backup::release(e, &mut self.stats, page, out);
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
        let rules = self.rules();
        let Some(e) = self.entries.get_mut(&page) else { return };
        drive(e, &mut self.homes, &mut self.stats, &mut self.pending, rules, page, None, out);
    }
}

/// The policy of `page`: the latest advice covering it, else `default`.
fn policy_of(advice: &[(PageNo, PageNo, Coherence)], default: Coherence, page: PageNo) -> Coherence {
    advice.iter().rev().find(|(first, end, _)| (*first..*end).contains(&page)).map_or(default, |a| a.2)
}

/// The entry of `page`, made with its policy if it has none (a function of the fields it
/// needs, so that the caller can borrow the others beside it).
fn entry_in<'a>(
    entries: &'a mut PageTable<Entry>,
    advice: &[(PageNo, PageNo, Coherence)],
    default: Coherence,
    page: PageNo,
) -> &'a mut Entry {
    entries.get_or_insert_with(page, || Entry::new(policy_of(advice, default, page)))
}

fn check_len(page: PageNo, data: Option<&PageData>) -> Result<(), DirectoryError> {
    match data {
        Some(d) if d.len() != crate::PAGE_SIZE => {
            Err(DirectoryError::BadPageLength { page, len: d.len(), expected: crate::PAGE_SIZE })
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


#[cfg(test)]
mod tests;

#[cfg(test)]
mod forward_tests;

#[cfg(test)]
mod backup_tests;
