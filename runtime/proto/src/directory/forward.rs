//! Direct transfers: a page another process holds goes from that process (the *source*) to
//! the requester on a peer connection, and the directory only orders it. The rules (D1-D11 in
//! ARCHITECTURE.md, "Direct owner → requester transfers"; checked in `runtime/proto/model`):
//!
//! * A Fetch of a page that has an owner, or whose home is *stale* (the readers hold the
//!   current contents), sends `Forward(to R)` to the owner or a reader and, in the same step,
//!   `ForwardNote` to the requester, which installs the page only after the note. The page
//!   stays busy until the requester's `Got`; then the source and the requester are readers and
//!   the home is stale.
//! * When the directory can no longer count on the source — it wrote the page back first, it
//!   was lost, or it could not reach the requester (`ForwardReturn`) — it *aborts*: it sends
//!   `ForwardAbort` and waits for the requester's answer, `Got` (it had installed the page; the
//!   abort is ignored) or `ForwardAborted` (it dropped the forward), and then starts the Fetch
//!   again on the page as it is now. The requester never gets two answers.
//! * A lost requester ends the transfer: the source holds the page (it downgrades when the
//!   `Forward` reaches it, before anything the directory sends it later).

use super::txn::{Entry, Request};
use super::{DirectoryStats, PageDirectory};
use crate::wire::{PageData, PageNo, Rank, ReqId, ToProcess};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `Forward` and `ForwardNote` sent; the requester's `Got` is awaited.
    Awaiting,
    /// `ForwardAbort` sent; its `Got` or `ForwardAborted` is awaited.
    Aborting,
    /// Nothing more to wait for.
    Finished,
}

/// One page's transfer in flight.
#[derive(Debug)]
pub(in crate::directory) struct Forward {
    /// The process sending the page.
    source: Rank,
    state: State,
    /// The source still holds a copy equal to what it sent (it has not written the page back
    /// and was not lost).
    source_holds: bool,
    /// The home copy was made current while the transfer was under way.
    refreshed: bool,
    /// The requester installed the page.
    got: bool,
}

impl Forward {
    pub(super) fn finished(&self) -> bool {
        self.state == State::Finished
    }

    /// The directory can no longer count on the source: ask the requester what it has.
    fn abort(&mut self, request: &Request, requester_gone: bool, page: PageNo, stats: &mut DirectoryStats, out: &mut Vec<(Rank, ToProcess)>) {
        if self.state != State::Awaiting {
            return;
        }
        if requester_gone {
            self.state = State::Finished;
            return;
        }
        stats.forward_aborts += 1;
        out.push((request.from, ToProcess::ForwardAbort { req: request.req, first: page, count: 1 }));
        self.state = State::Aborting;
    }
}

/// Who sends `page` to `from`: its owner, or the lowest reader of a stale page (not `from`).
pub(super) fn source(e: &Entry, from: Rank) -> Option<Rank> {
    match e.owner {
        Some(o) if o != from => Some(o),
        Some(_) => None,
        None if e.stale => e.readers.iter().find(|&r| r != from),
        None => None,
    }
}

/// Starts a transfer from `source` to the requester (one step: `Forward` and `ForwardNote`).
pub(super) fn begin(stats: &mut DirectoryStats, page: PageNo, request: &Request, source: Rank, out: &mut Vec<(Rank, ToProcess)>) -> Forward {
    stats.forwards += 1;
    out.push((source, ToProcess::Forward { req: request.req, first: page, count: 1, to: request.from }));
    out.push((request.from, ToProcess::ForwardNote { req: request.req, first: page, count: 1 }));
    Forward { source, state: State::Awaiting, source_holds: true, refreshed: false, got: false }
}

/// The page's state once the transfer ended, before the requester is counted in: the source
/// owns nothing any more and is a reader if it still holds the page.
fn settle(e: &mut Entry, f: &Forward) {
    if e.owner == Some(f.source) {
        e.owner = None;
    }
    if f.source_holds {
        e.readers.insert(f.source);
    }
    if f.refreshed {
        e.stale = false;
    }
}

/// Completes a transfer (`Got`, or a requester lost): the source and the requester (if it
/// installed the page) are readers; the home is stale unless it was made current meanwhile.
pub(super) fn complete(e: &mut Entry, f: &Forward, requester: Rank, requester_gone: bool) {
    settle(e, f);
    if f.got && !requester_gone {
        e.readers.insert(requester);
    }
    e.stale = !f.refreshed && !e.readers.is_empty();
}

impl PageDirectory {
    /// `Got(page)` from `from`: the requester installed the forwarded page.
    pub(super) fn got(&mut self, page: PageNo, from: Rank, out: &mut Vec<(Rank, ToProcess)>) {
        let Some(txn) = self.entries.get_mut(&page).and_then(|e| e.busy.as_mut()) else { return };
        if txn.request.from != from {
            return;
        }
        let Some(f) = txn.forward.as_mut() else { return };
        if matches!(f.state, State::Awaiting | State::Aborting) {
            f.got = true;
            f.state = State::Finished;
            self.progress(page, out);
        }
    }

    /// `ForwardAborted(page)` from `from`: the requester dropped the transfer; the Fetch starts
    /// again on the page as it is now.
    pub(super) fn forward_aborted(&mut self, page: PageNo, from: Rank, out: &mut Vec<(Rank, ToProcess)>) {
        let Some(e) = self.entries.get_mut(&page) else { return };
        let Some(txn) = e.busy.as_mut() else { return };
        if txn.request.from != from {
            return;
        }
        let Some(f) = txn.forward.take_if(|f| f.state == State::Aborting) else { return };
        settle(e, &f);
        if let Some(txn) = e.busy.as_mut() {
            txn.restart = true;
        }
        self.progress(page, out);
    }

    /// `ForwardReturn(page, data)` from `from` for the forward `(req, to)`: it could not reach
    /// the requester and sends the page home instead, keeping a ReadOnly copy. Only the forward
    /// it names, still awaited, takes it: a return that comes after that forward ended (the
    /// requester did get the page) may carry bytes the page no longer has, and is ignored (the
    /// source is a reader, so nothing is lost).
    pub(super) fn forward_return(
        &mut self,
        page: PageNo,
        from: Rank,
        (req, to): (ReqId, Rank),
        data: &PageData,
        out: &mut Vec<(Rank, ToProcess)>,
    ) {
        let Some(e) = self.entries.get_mut(&page) else { return };
        let Some(txn) = e.busy.as_mut() else { return };
        let named = txn.request.from == to && txn.request.req == req;
        let Some(f) = txn.forward.as_mut().filter(|f| named && f.source == from && f.state == State::Awaiting) else { return };
        self.homes.write_data(page, data);
        f.refreshed = true;
        f.abort(&txn.request, txn.requester_gone, page, &mut self.stats, out);
        // The home has the current bytes: backups are not needed any more (E2).
        super::backup::release(e, &mut self.stats, page, out);
        self.progress(page, out);
    }

    /// A `Writeback` of `page` from `from` reached the directory (`kept`: it became the home
    /// copy). A transfer under way knows the home is current if it was kept; and if `from` is
    /// its source, the source skipped the `Forward` (it held nothing when it came) whether the
    /// writeback was kept or not, so the transfer is aborted and the source drops out.
    pub(super) fn written_back(&mut self, page: PageNo, from: Rank, kept: bool, out: &mut Vec<(Rank, ToProcess)>) {
        let Some(e) = self.entries.get_mut(&page) else { return };
        let Some(txn) = e.busy.as_mut() else { return };
        let Some(f) = txn.forward.as_mut() else { return };
        f.refreshed |= kept;
        if f.source == from && f.state == State::Awaiting {
            f.source_holds = false;
            f.abort(&txn.request, txn.requester_gone, page, &mut self.stats, out);
            e.readers.remove(from);
        }
    }

    /// `rank` left while `page` has a transfer under way: as its requester the transfer ends;
    /// as its source the directory aborts it.
    pub(super) fn forward_left(&mut self, page: PageNo, rank: Rank, out: &mut Vec<(Rank, ToProcess)>) {
        let Some(txn) = self.entries.get_mut(&page).and_then(|e| e.busy.as_mut()) else { return };
        let Some(f) = txn.forward.as_mut() else { return };
        if txn.request.from == rank {
            f.state = State::Finished;
        }
        if f.source == rank {
            f.source_holds = false;
            f.abort(&txn.request, txn.requester_gone, page, &mut self.stats, out);
        }
    }
}
