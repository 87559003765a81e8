//! Direct transfers, the process side (rules P1-P5 in the module docs of `pages.rs`; P6 is
//! [`ProcessPages::release`]): a page another process holds comes straight from it on a peer
//! connection, and the coordinator's `ForwardNote` says when it may be installed.
//!
//! As the source, a `Forward` is answered with one [`ToPeer::Pages`] per contiguous run of pages
//! this process holds (one write-protect or one read per part in one state), queued for
//! [`ProcessPages::take_peer_messages`]. As the requester, what arrived for each pending Fetch
//! is kept in [`Forwards::incoming`] (the note, or the peer's page before its note) until the
//! Fetch ends; pages are installed as runs, one `install_run` and one `Got` per contiguous run.
//!
//! No forward is remembered as aborted (the rules text's P4 said to, and to drop a later
//! `Pages` for it): the coordinator may restart an aborted Fetch with a new forward for the
//! same request, and the new source's `Pages` may overtake the new note; dropped as "aborted",
//! they would never come again (a deadlock the protocol model finds, `runtime/proto/model`
//! README, Task D finding 2). A `Pages` arriving after an abort is kept like any early one
//! instead: a new note installs it, the coordinator's `Data` drops it. It is safe to install
//! whichever source's copy arrives, since the page is busy at the coordinator for the whole
//! transaction: every source sends the same bytes.
//!
//! Every message is checked before anything acts on it: a malformed one is a [`PagesError`]
//! and changes nothing.

use std::collections::HashMap;

use super::{Access, PageMemory, PageState, PagesError, ProcessPages};
use crate::runs::check_run;
use crate::wire::{Mode, PageData, PageNo, Rank, ReqId, ToCoordinator, ToPeer};
use crate::PAGE_SIZE;

/// What arrived so far for a page's pending Fetch answered by a forward.
#[derive(Debug, Clone)]
pub(super) enum Incoming {
    /// The coordinator's note: the peer's page is installed as soon as it arrives.
    Noted,
    /// The peer's page, arrived before the note (or after an abort, before a new note).
    Early(PageData),
}

/// What a peer's page leads to (P3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// Its Fetch is pending and noted: install it.
    Install,
    /// Its Fetch is pending, the note not here yet: keep it until then (replacing a copy kept
    /// before: all carry the same bytes).
    Keep,
    /// No such Fetch pending (answered already, or never asked for): drop it.
    Drop,
}

/// The forward state of one [`ProcessPages`].
#[derive(Debug, Default)]
pub(super) struct Forwards {
    /// Per page with a Fetch in flight: the request and what arrived for it. An entry is
    /// removed when its Fetch ends (`ProcessPages::finish`), so what is kept is bounded by
    /// what is in flight: at most a page of data per pending page.
    pub(super) incoming: HashMap<PageNo, (ReqId, Incoming), foldhash::fast::RandomState>,
    /// Peer messages to send (P1), in order.
    out: Vec<(Rank, ToPeer)>,
}

impl ProcessPages {
    /// A message from peer rank `from` (direct transfers, P3): each page of a `Pages` is
    /// installed if its Fetch with that request is pending and noted, kept until the note if it
    /// is pending without one (also after an abort: see the module docs), dropped otherwise. A message with a bad length, or for pages
    /// outside the region, is an error and changes nothing.
    pub fn handle_peer(
        &mut self,
        from: Rank,
        msg: ToPeer,
        mem: &mut impl PageMemory,
        out: &mut Vec<ToCoordinator>,
    ) -> Result<(), PagesError> {
        let ToPeer::Pages { req, first, count, data } = msg;
        let what = format!("Pages from rank {from}");
        // Always checked (even without a region limit): the pages are sliced out of `data`.
        check_run(&what, count, Some(data.len())).map_err(PagesError::Protocol)?;
        self.check_span(&what, first, count)?;
        // Runs of consecutive noted pages, installed straight from the message's bytes.
        let mut run: Option<(PageNo, u32)> = None;
        for i in 0..=count {
            let page = first + u64::from(i);
            let action = if i == count { Arrival::Drop } else { self.arrival(page, req) };
            if action == Arrival::Install {
                match &mut run {
                    Some((_, n)) => *n += 1,
                    None => run = Some((page, 1)),
                }
                continue;
            }
            if let Some((at, n)) = run.take() {
                let from_byte = (at - first) as usize * PAGE_SIZE;
                self.install_forwarded(at, n, &data[from_byte..from_byte + n as usize * PAGE_SIZE], mem, out);
            }
            match action {
                Arrival::Keep => {
                    self.fwd.incoming.insert(page, (req, Incoming::Early(data.page_data(i as usize))));
                }
                Arrival::Drop if i < count => self.stats.peer_pages_dropped += 1,
                _ => {}
            }
        }
        Ok(())
    }

    /// What to do with a peer's page `page` for request `req` (P3).
    fn arrival(&self, page: PageNo, req: ReqId) -> Arrival {
        if !self.fetch_pending(page, req) {
            // Answered already (or never asked for): the page is dropped.
            return Arrival::Drop;
        }
        match self.fwd.incoming.get(&page) {
            Some((r, Incoming::Noted)) if *r == req => Arrival::Install,
            _ => Arrival::Keep,
        }
    }

    /// The peer messages produced since the last call (P1: answers to `Forward`), in order.
    pub fn take_peer_messages(&mut self) -> Vec<(Rank, ToPeer)> {
        std::mem::take(&mut self.fwd.out)
    }

    /// A peer message that could not be delivered (P5): its pages go to the coordinator as
    /// `ForwardReturn`, with the data and the forward it answered (request and requester);
    /// this process keeps its ReadOnly copies.
    pub fn peer_failed(&mut self, to: Rank, msg: ToPeer, out: &mut Vec<ToCoordinator>) {
        let ToPeer::Pages { req, first, count, data } = msg;
        self.stats.forward_returns += u64::from(count);
        self.stats.bytes_sent += data.len() as u64;
        out.push(ToCoordinator::ForwardReturn { req, to, first, count, data });
    }

    /// P1: sends this process's copies of the pages to `to`, one message per contiguous run of
    /// pages held (pages not held are skipped); Writable copies are write-protected first (and
    /// read after that) and stay ReadOnly. Every page sent is marked forwarded. One memory
    /// operation per run of pages in one state; a run of both states is sent as one message,
    /// its parts' bytes copied together. (Checked by `validate` already.)
    pub(super) fn forward(&mut self, req: ReqId, first: PageNo, count: u32, to: Rank, mem: &mut impl PageMemory) {
        let end = first + u64::from(count);
        let mut page = first;
        while page < end {
            if self.state(page) == PageState::Invalid {
                page += 1;
                continue;
            }
            let at = page;
            let mut bytes: Option<Vec<u8>> = None;
            while page < end {
                let state = self.state(page);
                if state == PageState::Invalid {
                    break;
                }
                let part = page;
                while page < end && self.state(page) == state {
                    page += 1;
                }
                let n = (page - part) as u32;
                let got = if state == PageState::Writable { mem.write_protect_run(part, n) } else { mem.read_run(part, n) };
                match &mut bytes {
                    None => bytes = Some(got),
                    Some(b) => b.extend_from_slice(&got),
                }
            }
            let bytes = bytes.unwrap_or_default();
            let n = (page - at) as u32;
            for q in at..page {
                self.set_state(q, PageState::ReadOnly);
                if let Some(slot) = self.slots.get_mut(&q) {
                    slot.forwarded = true;
                }
            }
            self.stats.pages_forwarded += u64::from(n);
            self.stats.peer_bytes_sent += bytes.len() as u64;
            let data = crate::buffers::page_data(bytes);
            self.fwd.out.push((to, ToPeer::Pages { req, first: at, count: n, data }));
        }
    }

    /// P2: the note for pending Fetches of these pages. Pages whose peer data is here are
    /// installed (one run and one `Got` per contiguous run of them), the others wait for it. A
    /// note for a page with no such Fetch pending, or noted twice, is an error.
    pub(super) fn forward_note(
        &mut self,
        req: ReqId,
        first: PageNo,
        count: u32,
        mem: &mut impl PageMemory,
        out: &mut Vec<ToCoordinator>,
    ) -> Result<(), PagesError> {
        for page in first..first + u64::from(count) {
            if !self.fetch_pending(page, req) {
                return Err(PagesError::Protocol(format!(
                    "ForwardNote for page {page} with request {req}, but the request in flight is {:?}",
                    self.slots.get(&page).and_then(|s| s.pending)
                )));
            }
            if matches!(self.fwd.incoming.get(&page), Some((r, Incoming::Noted)) if *r == req) {
                return Err(PagesError::Protocol(format!("a second ForwardNote for page {page} with request {req}")));
            }
        }
        // A run of consecutive pages whose data arrived early: their slices, merged (without a
        // copy when they lie back to back in one buffer, as a peer's run does).
        let mut run: Option<(PageNo, u32, PageData)> = None;
        for (i, page) in (first..first + u64::from(count)).enumerate() {
            let early = match self.fwd.incoming.remove(&page) {
                Some((r, Incoming::Early(d))) if r == req => Some(d),
                _ => None,
            };
            match (early, &mut run) {
                (Some(d), Some((_, n, bytes))) => {
                    bytes.append(&d, (count as usize - i - 1) * PAGE_SIZE);
                    *n += 1;
                }
                (Some(d), None) => run = Some((page, 1, d)),
                (None, _) => {
                    if let Some((at, n, bytes)) = run.take() {
                        self.install_forwarded(at, n, &bytes, mem, out);
                    }
                    self.fwd.incoming.insert(page, (req, Incoming::Noted));
                }
            }
        }
        if let Some((at, n, bytes)) = run {
            self.install_forwarded(at, n, &bytes, mem, out);
        }
        Ok(())
    }

    /// P4: the forward of these pages was aborted. Pages noted and not installed lose their
    /// note and are answered `ForwardAborted` (one message per contiguous run); their Fetch
    /// stays pending, for the coordinator's `Data` or a new note. Pages installed already (no
    /// Fetch pending with `req`) are ignored. An abort for a pending page
    /// that holds no note is an error (the note comes first on the coordinator's stream).
    pub(super) fn forward_abort(
        &mut self,
        req: ReqId,
        first: PageNo,
        count: u32,
        out: &mut Vec<ToCoordinator>,
    ) -> Result<(), PagesError> {
        for page in first..first + u64::from(count) {
            if self.fetch_pending(page, req) && !matches!(self.fwd.incoming.get(&page), Some((r, Incoming::Noted)) if *r == req) {
                return Err(PagesError::Protocol(format!("ForwardAbort for page {page} with request {req}, which holds no note")));
            }
        }
        let mut run: Option<(PageNo, u32)> = None;
        for page in first..first + u64::from(count) {
            if self.fetch_pending(page, req) {
                self.fwd.incoming.remove(&page);
                self.stats.forwards_aborted += 1;
                match &mut run {
                    Some((_, n)) => *n += 1,
                    None => run = Some((page, 1)),
                }
            } else if let Some((at, n)) = run.take() {
                out.push(ToCoordinator::ForwardAborted { first: at, count: n });
            }
        }
        if let Some((at, n)) = run {
            out.push(ToCoordinator::ForwardAborted { first: at, count: n });
        }
        Ok(())
    }

    /// Whether a Fetch of `page` with request `req` is pending (the page Invalid meanwhile):
    /// the only request a forward answers.
    pub(super) fn fetch_pending(&self, page: PageNo, req: ReqId) -> bool {
        self.slots.get(&page).is_some_and(|s| {
            s.state == PageState::Invalid && s.pending.is_some_and(|p| p.req == req && p.access == Access::Read)
        })
    }

    /// Installs `count` pages from `first` a peer sent (ReadOnly, invalidate mode, marked
    /// forwarded; their Fetch ends, waiters are woken by the install) and sends `Got`.
    fn install_forwarded(
        &mut self,
        first: PageNo,
        count: u32,
        data: &[u8],
        mem: &mut impl PageMemory,
        out: &mut Vec<ToCoordinator>,
    ) {
        self.evict_backups(first, count, mem);
        mem.install_run(first, count, Some(data), false);
        self.stats.pages_got += u64::from(count);
        self.stats.peer_bytes_received += data.len() as u64;
        for page in first..first + u64::from(count) {
            self.finish(page, PageState::ReadOnly, Mode::Invalidate);
            if let Some(slot) = self.slots.get_mut(&page) {
                slot.forwarded = true;
            }
            self.set_hint(page, Mode::Invalidate);
        }
        out.push(ToCoordinator::Got { first, count });
    }

    /// Forgets what arrived for a forward of `page` (its Fetch ended).
    pub(super) fn forget_forward(&mut self, page: PageNo) {
        if !self.fwd.incoming.is_empty() {
            self.fwd.incoming.remove(&page);
        }
    }
}
