//! One page's transactions: [`drive`] (rule 1: the busy transaction, then the queue, in
//! order) and the steps it takes: [`start`] a request (send the revocations it needs, or
//! answer at once), [`complete`] it once every ack is in (update the entry, reply, and run the
//! adaptive policy's ownership side), and [`write`], a replayed store or RMW in update mode (the
//! policy's write-run side). The entry and request
//! types are what these steps read and change; the module docs of [`super`] give the rules.

use std::collections::VecDeque;

use super::backup;
use super::forward::{self, Forward};
use super::homes::Homes;
use super::ranks::RankSet;
use super::{DirectoryStats, PINGPONG_GRANTS, WRITE_RUN};
use crate::wire::{Coherence, GrantData, Mode, PageData, PageNo, Rank, ReqId, RmwOp, ToProcess};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WriteOp {
    Store { offset: u16, width: u8, value: u128 },
    Rmw { offset: u16, width: u8, op: RmwOp, operand: u64, expected: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
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
pub(super) struct Request {
    pub(super) from: Rank,
    pub(super) req: ReqId,
    pub(super) kind: Kind,
}

#[derive(Debug)]
pub(super) struct Txn {
    pub(super) request: Request,
    /// The requester left: finish the state changes, send no reply.
    pub(super) requester_gone: bool,
    /// The rank whose `DowngradeAck` (Fetch) or `RecallAck` (Own) is awaited.
    pub(super) owner_ack: Option<Rank>,
    /// The ranks whose `InvalidateAck` is awaited (Own only).
    pub(super) invalidate_acks: RankSet,
    /// The awaited `owner_ack` is a `DowngradeAck` from a reader of a stale page (a flush:
    /// the reader keeps its copy and sends its contents home).
    pub(super) flush: bool,
    /// When every ack is in, start the request again instead of completing it (after a flush,
    /// or a forward the requester gave up: the page's state changed under the first try).
    pub(super) restart: bool,
    /// A direct transfer from another process to the requester (Fetch only).
    pub(super) forward: Option<Forward>,
    /// The ranks whose `BackupAck` is awaited (an upgrade of a stale page, E1).
    pub(super) backup_acks: RankSet,
    /// The backup holder whose `BackupData` is awaited before the transaction goes on (E3).
    pub(super) restore: Option<Rank>,
}

/// What the directory's rules depend on besides the page (the session's settings).
#[derive(Debug, Clone, Copy)]
pub(super) struct Rules {
    pub(super) nprocs: u32,
    /// Pages go from process to process (`Forward`).
    pub(super) forwards: bool,
    /// Readers of an upgraded stale page keep backups instead of a flush (E1).
    pub(super) backups: bool,
}

impl Txn {
    pub(super) fn new(request: Request) -> Txn {
        Txn {
            request,
            requester_gone: false,
            owner_ack: None,
            invalidate_acks: RankSet::default(),
            flush: false,
            restart: false,
            forward: None,
            backup_acks: RankSet::default(),
            restore: None,
        }
    }

    /// A transaction of its own for a restore (E3) of an idle page: nothing to do after it.
    fn restore_only() -> Txn {
        let request = Request { from: 0, req: 0, kind: Kind::Switch(Mode::Invalidate) };
        Txn { requester_gone: true, restart: true, ..Txn::new(request) }
    }

    pub(super) fn done(&self) -> bool {
        self.owner_ack.is_none()
            && self.invalidate_acks.is_empty()
            && self.backup_acks.is_empty()
            && self.restore.is_none()
            && self.forward.as_ref().is_none_or(Forward::finished)
    }
}

#[derive(Debug, Default)]
pub(super) struct Entry {
    pub(super) owner: Option<Rank>,
    pub(super) readers: RankSet,
    pub(super) busy: Option<Txn>,
    pub(super) queue: VecDeque<Request>,
    pub(super) mode: Mode,
    pub(super) policy: Coherence,
    /// Adaptive bookkeeping: the last grantee and how many grants in a row changed hands.
    pub(super) last_grantee: Option<Rank>,
    pub(super) alternations: u32,
    /// Adaptive bookkeeping: the process writing the current run of replayed writes.
    pub(super) run_writer: Option<Rank>,
    pub(super) run_len: u32,
    /// The home copy is not current: the readers hold the current contents (a forward gave
    /// the page from process to process). Never with an owner, never in update mode.
    pub(super) stale: bool,
    /// The processes keeping a backup of the page (E1-E4, `backup.rs`): not empty when the
    /// home is behind the bytes they keep. Never in update mode.
    pub(super) backups: RankSet,
}

impl Entry {
    pub(super) fn new(policy: Coherence) -> Entry {
        let mode = if policy == Coherence::Update { Mode::Update } else { Mode::Invalidate };
        Entry { policy, mode, ..Entry::default() }
    }

}

/// Starts `request`: sends the Downgrade / Invalidates / Recall it needs and marks the page
/// busy (a transaction with nothing to wait for completes at the next step of `progress`).
#[allow(clippy::too_many_arguments)]
pub(super) fn start(
    e: &mut Entry,
    homes: &mut Homes,
    stats: &mut DirectoryStats,
    rules: Rules,
    page: PageNo,
    request: Request,
    out: &mut Vec<(Rank, ToProcess)>,
) {
    let forwards = rules.forwards;
    // Rule 3': an ordinary ownership request on an update-mode page (which nobody owns) is
    // answered like a fetch, with a read-only copy in update mode; the process then replays
    // its store. Only a forced request (a store that cannot be replayed) switches the page
    // back, so an Own queued before its sender heard of the switch no longer undoes it.
    if request.kind == Kind::Own && e.mode == Mode::Update && e.owner.is_none() {
        stats.owns_kept_in_update += 1;
        let data = if e.readers.contains(request.from) { None } else { send_home(homes, stats, page) };
        out.push((request.from, ToProcess::Data { req: request.req, page, data, mode: Mode::Update }));
        e.readers.insert(request.from);
        return;
    }
    let request = if request.kind == Kind::ForceOwn { Request { kind: Kind::Own, ..request } } else { request };
    let mut txn = Txn::new(request);
    if rules.backups && request.kind == Kind::Own && backup::upgrades_with_backups(e, request.from) {
        // E1: the other readers keep their bytes aside instead of a flush; granted without
        // data once they all answered (`complete`, as any Own from a reader).
        backup::begin_upgrade(e, stats, page, &mut txn, out);
        e.busy = Some(txn);
        return;
    }
    // A stale page's contents are only at its readers: an ownership request by a process
    // without a copy, a switch to update mode and (wrongly) a fetch by its only reader first
    // bring one reader's copy home, then start again.
    let needs_home = match request.kind {
        // Also from a reader, unless it is the only one: upgraded without data, its copy
        // would be the only current one, and its crash would take back writes that the other
        // readers, invalidated now, had already seen (model: `FW-up`, `FD-ww`).
        Kind::Own | Kind::ForceOwn => e.readers.iter().any(|r| r != request.from),
        Kind::Switch(Mode::Update) => e.mode == Mode::Invalidate,
        Kind::Fetch => !forwards || e.readers.iter().all(|r| r == request.from),
        _ => false,
    };
    if e.stale && needs_home {
        // Another reader than the requester if there is one (any holds the current bytes).
        let other = e.readers.iter().find(|&r| r != request.from);
        if let Some(s) = other.or_else(|| e.readers.iter().next()) {
            out.push((s, ToProcess::Downgrade { page }));
            stats.flushes += 1;
            txn.owner_ack = Some(s);
            txn.flush = true;
            txn.restart = true;
            e.busy = Some(txn);
            return;
        }
    }
    let forward_from = match request.kind {
        Kind::Fetch if forwards && e.mode == Mode::Invalidate => forward::source(e, request.from),
        _ => None,
    };
    match request.kind {
        Kind::Fetch if forward_from.is_some() => {
            txn.forward = forward_from.map(|source| forward::begin(stats, page, &request, source, out));
        }
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
            for r in e.readers.iter() {
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

/// Drives one page (rule 1): completes its busy transaction if every ack is in, then starts
/// queued requests, oldest first, until one has to wait or none is left. `new` joins the
/// queue's end first; when nothing is busy or queued it starts directly.
#[allow(clippy::too_many_arguments)]
pub(super) fn drive(
    e: &mut Entry,
    homes: &mut Homes,
    stats: &mut DirectoryStats,
    pending: &mut [u32],
    rules: Rules,
    page: PageNo,
    mut new: Option<Request>,
    out: &mut Vec<(Rank, ToProcess)>,
) {
    loop {
        // E3: the home is about to be used (a transaction ends, or the page is idle) while
        // backups hold newer bytes: restore one first. Not before a forward's `Got` completes
        // it: that uses no home, and the page is stale again after it.
        if backup::needs_restore(e) {
            let ends = e.busy.as_ref().is_some_and(|t| t.done() && (t.forward.is_none() || t.restart));
            if ends || e.busy.is_none() {
                let mut txn = e.busy.take().unwrap_or_else(Txn::restore_only);
                backup::begin_restore(e, stats, page, &mut txn, out);
                e.busy = Some(txn);
            }
        }
        match &e.busy {
            Some(txn) if !txn.done() => {
                e.queue.extend(new.take());
                return;
            }
            Some(_) => {
                if let Some(txn) = e.busy.take() {
                    if txn.restart && !txn.requester_gone {
                        // The same request again, on the page as it is now (it keeps its place:
                        // nothing queued behind it starts first).
                        start(e, homes, stats, rules, page, txn.request, out);
                        continue;
                    }
                    if !txn.restart {
                        complete(e, homes, stats, rules.nprocs, page, &txn, out);
                    }
                    // (Back to the top: the page as it is now may need a restore first.)
                    continue;
                }
            }
            None => {}
        }
        let request = match new.take() {
            Some(r) if e.queue.is_empty() => r,
            new => {
                e.queue.extend(new);
                let Some(r) = e.queue.pop_front() else { return };
                r
            }
        };
        if !matches!(request.kind, Kind::Switch(_)) {
            if let Some(n) = pending.get_mut(request.from as usize) {
                *n = n.saturating_sub(1);
            }
        }
        start(e, homes, stats, rules, page, request, out);
    }
}

/// Applies a replayed store or RMW (update mode) to the home copy, broadcasts it to the other
/// readers and acknowledges it; or answers Retry (phase-2 rule 2 and rule 6).
fn write(
    e: &mut Entry,
    homes: &mut Homes,
    stats: &mut DirectoryStats,
    page: PageNo,
    request: Request,
    op: WriteOp,
    out: &mut Vec<(Rank, ToProcess)>,
) {
    let Request { from, req, .. } = request;
    if e.mode != Mode::Update || !e.readers.contains(from) {
        stats.retries += 1;
        out.push((from, ToProcess::Retry { req, page }));
        return;
    }
    let (offset, width) = match op {
        WriteOp::Store { offset, width, .. } | WriteOp::Rmw { offset, width, .. } => {
            (usize::from(offset), usize::from(width))
        }
    };
    // Only the written bytes are read and written (checked to lie inside the page, `handle`).
    let mut cur = [0u8; 16];
    homes.read_at(page, offset, &mut cur[..width]);
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
        homes.patch(page, offset, &new.to_le_bytes()[..width]);
    }
    stats.replayed_writes += 1;
    let value = if stored { new } else { old128 };
    let (offset, width) = (offset as u16, width as u8);
    if stored {
        for r in e.readers.iter() {
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
pub(super) fn complete(
    e: &mut Entry,
    homes: &mut Homes,
    stats: &mut DirectoryStats,
    nprocs: u32,
    page: PageNo,
    txn: &Txn,
    out: &mut Vec<(Rank, ToProcess)>,
) {
    let Request { from, req, kind } = txn.request;
    if let Some(f) = &txn.forward {
        forward::complete(e, f, from, txn.requester_gone);
        return;
    }
    match kind {
        Kind::Fetch => {
            // Any owner was downgraded (or left, or wrote back): home is current.
            e.owner = None;
            if txn.requester_gone {
                return;
            }
            let data = send_home(homes, stats, page);
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
            let had_copy = e.owner == Some(from) || e.readers.contains(from);
            e.readers.clear();
            e.stale = false;
            if txn.requester_gone {
                e.owner = None;
                return;
            }
            e.owner = Some(from);
            let data = if had_copy { None } else { Some(grant_home(homes, stats, page)) };
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

/// The home copy of `page` as a reply carries it (`None`: all zero), counted as sent.
fn send_home(homes: &Homes, stats: &mut DirectoryStats, page: PageNo) -> Option<PageData> {
    let data = homes.read(page)?;
    stats.pages_sent += 1;
    stats.bytes_sent += data.len() as u64;
    Some(data)
}

/// The home copy of `page` as a `Grant` carries it, counted as sent.
pub(super) fn grant_home(homes: &Homes, stats: &mut DirectoryStats, page: PageNo) -> GrantData {
    send_home(homes, stats, page).map_or(GrantData::Zero, GrantData::Bytes)
}
