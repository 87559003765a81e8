//! The fault service of one region, on the runtime thread: where page faults, the coordinator's
//! page messages and replayed stores meet the real mappings.
//!
//! ```text
//! userfaultfd events ─▶ handle_faults ─▶ ProcessPages (sans-IO) ─▶ Fetch / Own / Write ─▶ driver
//! coordinator's page messages ─▶ handle_page_message ─▶ installs, revocations (after the hold)
//! signal handlers' requests ─▶ handle_replay_requests (replay.rs) ─▶ Write / Rmw, or ownership
//! ```
//!
//! Decisions live in the sans-IO cores of `dsm-proto`: [`ProcessPages`] (page states, requests,
//! read-ahead), [`FaultTracker`] (waiting faults, holds, replay claims, failure) and
//! `replay_slot` (the hand-over with signal handlers). This module does the I/O: it reads
//! events, calls the cores, and applies their decisions through [`memory::Mem`].
//!
//! **Failure:** when the region can no longer be served ([`FaultService::fail`]), a process
//! with threads parked in faults or replays stops at once with one line on stderr (they could
//! never be woken with an answer); otherwise every page is revoked, so the next access by any
//! thread — a spinner on a read-only copy included — faults and stops the process then.

mod memory;
mod replay;
mod syscall_probe;

use std::sync::Arc;
use std::time::Instant;

use dsm_proto::fault_track::{FaultTracker, FaultVerdict};
use dsm_proto::pages::{Access, FaultAction, PageState, PagesError, ProcessPages, WriteOutcome};
use dsm_proto::{PageNo, Rank, ToCoordinator, ToPeer, ToProcess};
use tokio::io::unix::AsyncFd;
use tracing::debug;

use crate::error::{Error, Result};
use crate::fatal::fatal;
use crate::region::{RegionMaps, RegionStats};
use crate::sys::replay::{self as signal, Claim, Outcome};
use crate::sys::{UffdFd, PAGE};

pub(crate) use memory::Mem;

/// The runtime thread's half of a region (see the module docs).
pub(crate) struct FaultService {
    maps: Arc<RegionMaps>,
    pages: ProcessPages,
    tracker: FaultTracker<Claim>,
    pages_count: u64,
    /// Eventfd the signal handlers poke when a decoded store is ready.
    efd: std::os::fd::OwnedFd,
    /// Tells user-mode faults (replayable) from kernel-mode ones.
    probe: syscall_probe::SyscallProbe,
}

impl FaultService {
    /// The service, and the userfaultfd and eventfd registered with the current tokio reactor
    /// (to be dropped before the service).
    pub fn new(maps: Arc<RegionMaps>) -> Result<(FaultService, AsyncFd<UffdFd>, AsyncFd<UffdFd>)> {
        let uffd = maps.fault.async_fd().map_err(|e| Error::os("polling userfaultfd", e))?;
        signal::install_handler().map_err(|e| Error::os("installing the write-replay signal handler", e))?;
        let efd = signal::eventfd().map_err(|e| Error::os("creating an eventfd", e))?;
        let efd_async = crate::sys::async_fd(std::os::fd::AsRawFd::as_raw_fd(&efd))
            .map_err(|e| Error::os("polling an eventfd", e))?;
        let pages_count = (maps.view.len() / PAGE) as u64;
        let service = FaultService {
            maps,
            pages: ProcessPages::for_region(pages_count),
            tracker: FaultTracker::new(),
            pages_count,
            efd,
            probe: syscall_probe::SyscallProbe::default(),
        };
        Ok((service, uffd, efd_async))
    }

    pub fn stats(&self) -> RegionStats {
        let s = self.pages.stats();
        RegionStats {
            read_faults: s.read_faults,
            write_faults: s.write_faults,
            pages_fetched: s.fetches,
            ownership_requests: s.ownership_requests,
            pages_invalidated: s.invalidations,
            pages_downgraded: s.downgrades,
            pages_recalled: s.recalls,
            bytes_received: s.bytes_received,
            bytes_sent: s.bytes_sent,
            wait_micros: self.tracker.waited().as_micros() as u64,
            replayed_writes: s.replayed_writes,
            write_retries: s.write_retries,
            updates_applied: s.updates_applied,
            prefetches: s.prefetches,
            write_ahead: s.write_ahead,
            write_ahead_denied: s.write_ahead_denied,
            runs_received: s.runs_received,
            pages_forwarded: s.pages_forwarded,
            pages_from_peers: s.pages_got,
            peer_bytes_sent: s.peer_bytes_sent,
            peer_bytes_received: s.peer_bytes_received,
            forwards_failed: s.forward_returns + s.forwards_aborted,
            backups_kept: s.backups_kept,
            backups_dropped: s.backups_dropped,
            backups_restored: s.backups_restored,
        }
    }

    /// Reads every queued fault and lets the page core turn them into requests.
    pub fn handle_faults(&mut self, out: &mut Vec<ToCoordinator>) {
        loop {
            let crate::sys::PageFault { addr, write, tid, minor } = match self.maps.fault.next_fault() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => fatal("reading a page fault", &e),
            };
            let read_at = crate::replay_times::now();
            let page = ((addr - self.maps.view.addr()) / PAGE) as PageNo;
            if page >= self.pages_count {
                fatal("page fault outside the region", &format!("address {addr:#x}"));
            }
            if let FaultVerdict::Failed(reason) = self.tracker.fault_read(page) {
                fatal(&reason, &format_args!("thread {tid} touched the shared region afterwards (page {page})"));
            }
            if minor && self.pages.state(page) != PageState::Invalid {
                // A page we hold that the kernel unmapped from the view (reclaim, or the
                // application's own MADV_DONTNEED): map it again as it was.
                let wp = self.pages.state(page) == PageState::ReadOnly;
                if let Err(e) = self.maps.fault.map_cached(self.maps.view.addr() + page as usize * PAGE, PAGE, wp) {
                    fatal("mapping a held page again", &e);
                }
                continue;
            }
            let access = if write { Access::Write } else { Access::Read };
            let mut mem = Mem { maps: &self.maps };
            if self.pages.handle_fault(page, access, &mut mem, out) == FaultAction::Replay {
                self.start_replay(page, addr, tid, read_at, out);
            } else if !self.pages.allows(page, access) {
                self.tracker.fault_waits(page, Instant::now());
            }
        }
    }

    /// A page message from the coordinator, in arrival order. A message that breaks the
    /// protocol is returned as an error: the caller must [`fail`](Self::fail) the region.
    pub fn handle_page_message(&mut self, msg: ToProcess, out: &mut Vec<ToCoordinator>) -> Result<(), PagesError> {
        if let Some((first, count)) = revocation_pages(&msg) {
            // Let a thread woken for one of these pages retire its instruction first (progress
            // rule): wait for the latest hold among them.
            let until = (first..first + u64::from(count)).filter_map(|p| self.tracker.take_hold(p)).max();
            if let Some(until) = until {
                while Instant::now() < until {
                    std::thread::yield_now();
                }
            }
        }
        let installs = match &msg {
            ToProcess::Data { page, .. } | ToProcess::Grant { page, .. } => Some((*page, 1)),
            ToProcess::DataRun { first, count, .. } | ToProcess::GrantRun { first, count, .. } => Some((*first, *count)),
            _ => None,
        };
        let mut mem = Mem { maps: &self.maps };
        let before = out.len();
        self.pages.handle_message(msg, &mut mem, out)?;
        // A note for pages a peer sent already installs them (`Got`).
        self.note_forwarded_installs(&out[before..]);
        for (req, outcome) in self.pages.take_completions() {
            if let Some(claim) = self.tracker.write_ended(req) {
                signal::complete(claim, match outcome {
                    WriteOutcome::Done { old } => Outcome::Done { old },
                    WriteOutcome::Retry => Outcome::Retry,
                });
            }
        }
        if let Some((first, count)) = installs {
            let now = Instant::now();
            for page in first..first + u64::from(count) {
                self.tracker.installed(page, now);
            }
        }
        Ok(())
    }

    /// A message from a peer (direct transfers): pages it forwarded, installed once the
    /// coordinator's note is here. An error means the peer broke the protocol.
    pub fn handle_peer(&mut self, from: Rank, msg: ToPeer, out: &mut Vec<ToCoordinator>) -> Result<(), PagesError> {
        let mut mem = Mem { maps: &self.maps };
        let before = out.len();
        self.pages.handle_peer(from, msg, &mut mem, out)?;
        self.note_forwarded_installs(&out[before..]);
        Ok(())
    }

    /// A peer message this process could not deliver: its pages go to the coordinator instead.
    pub fn peer_failed(&mut self, to: Rank, msg: ToPeer, out: &mut Vec<ToCoordinator>) {
        self.pages.peer_failed(to, msg, out);
    }

    /// The pages to send to peers (answers to `Forward`), since the last call.
    pub fn take_peer_messages(&mut self) -> Vec<(Rank, ToPeer)> {
        self.pages.take_peer_messages()
    }

    /// Forwarded pages installed (each `Got` names them): their waiting threads were woken, so
    /// they get the same hold as pages a `Data` installed (progress rule).
    fn note_forwarded_installs(&mut self, sent: &[ToCoordinator]) {
        let now = Instant::now();
        for m in sent {
            if let ToCoordinator::Got { first, count } = m {
                for page in *first..*first + u64::from(*count) {
                    self.tracker.installed(page, now);
                }
            }
        }
    }

    /// Before detaching: writes back owned pages and drops read-only copies, at most `limit`
    /// pages per call (`ProcessPages::release`). Returns how many pages were written back and
    /// whether all are released.
    pub fn release(&mut self, out: &mut Vec<ToCoordinator>, limit: usize) -> (usize, bool) {
        let mut mem = Mem { maps: &self.maps };
        self.pages.release(&mut mem, out, limit)
    }

    /// The region can no longer be served (see the module docs): stops the process now if any
    /// thread waits in a fault or a replay, else revokes every page so the next access does.
    pub fn fail(&mut self, reason: &Error) {
        let released = self.tracker.fail(reason.to_string());
        if !released.faults.is_empty() || !released.claims.is_empty() {
            let pages: Vec<String> = released.faults.iter().take(8).map(u64::to_string).collect();
            let more = if released.faults.len() > 8 { ", ..." } else { "" };
            fatal(
                &reason.to_string(),
                &format_args!(
                    "threads were waiting for page(s) {}{more} and {} replayed store(s)",
                    pages.join(", "),
                    released.claims.len()
                ),
            );
        }
        debug!("region failed with nothing waiting ({reason}): revoking every page");
        if let Err(e) = self.maps.alias.punch_all() {
            fatal("revoking the region's pages", &e);
        }
    }

    /// The session was detached (every page written back and dropped): a later access to the
    /// region is an error of the program, and stops it with that message.
    pub fn detached(&mut self) {
        self.tracker.fail("the session was detached (the region is no longer shared)");
    }

    /// Whether replays are signalled and unanswered (the driver then polls for stale ones).
    pub fn replays_pending(&self) -> bool {
        self.tracker.has_claims()
    }

    /// The runtime thread is ending (detach): wakes every handler still waiting, to re-execute
    /// its instruction.
    pub fn release_handlers(&mut self) {
        for claim in self.tracker.fail("the session was detached").claims {
            signal::complete(claim, Outcome::Retry);
            signal::reclaim(claim);
        }
    }
}

/// The pages a coherence message revokes access to, if it does.
fn revocation_pages(msg: &ToProcess) -> Option<(PageNo, u32)> {
    match msg {
        ToProcess::Invalidate { page } | ToProcess::Downgrade { page } | ToProcess::Recall { page } => Some((*page, 1)),
        ToProcess::InvalidateRun { first, count }
        | ToProcess::DowngradeRun { first, count }
        | ToProcess::RecallRun { first, count }
        // An owned page is write-protected before it is sent.
        | ToProcess::Forward { first, count, .. }
        // A read-only copy kept aside as a backup is dropped from the mapping.
        | ToProcess::InvBackup { first, count } => Some((*first, *count)),
        _ => None,
    }
}
