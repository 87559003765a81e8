//! The runtime thread's half of write replay: signalling a thread whose store faulted on an
//! update-mode page, turning the request its handler decoded into a `Write`/`Rmw` (or falling
//! back to ownership), and taking back replays no handler picked up.
//!
//! The hand-over with the handler is `dsm_proto::replay_slot` (through `sys::replay`); which
//! claims are outstanding and since when is the [`FaultTracker`](dsm_proto::fault_track).

use std::time::Instant;

use dsm_proto::pages::{PageState, ReplayOp};
use dsm_proto::{PageNo, ToCoordinator};
use tracing::debug;

use super::{FaultService, Mem};
use crate::sys::replay::{self as signal, Outcome, Request, Signalled};
use crate::sys::PAGE;

impl FaultService {
    /// A store to an update-mode page this process holds read-only: replay it on the faulting
    /// thread, unless the thread is inside a system call (the kernel is the writer; never
    /// interrupt it) or no slot is free — then by ownership.
    /// `read_at` is when the fault was read (`crate::replay_times`).
    pub(super) fn start_replay(&mut self, page: PageNo, addr: usize, tid: i32, read_at: u64, out: &mut Vec<ToCoordinator>) {
        let efd = std::os::fd::AsRawFd::as_raw_fd(&self.efd);
        let signalled = if self.probe.in_syscall(tid) {
            debug!("store to update-mode page {page} by thread {tid} inside a system call: by ownership");
            Signalled::NoSlot
        } else {
            signal::signal_thread(tid, addr as u64, efd, read_at, crate::replay_times::now())
        };
        tracing::trace!("replay: page {page} thread {tid}: {signalled:?}");
        match signalled {
            Signalled::Claimed(claim) => self.tracker.claimed(claim, page, Instant::now()),
            Signalled::NoSlot => {
                let mut mem = Mem { maps: &self.maps };
                self.pages.handle_fault_by_ownership(page, &mut mem, out);
            }
        }
    }

    /// Picks up the stores signal handlers decoded and sends them (or falls back).
    pub fn handle_replay_requests(&mut self, out: &mut Vec<ToCoordinator>) {
        signal::eventfd_drain(std::os::fd::AsRawFd::as_raw_fd(&self.efd));
        for claim in self.tracker.claims() {
            let Some(request) = signal::take_request(claim) else { continue };
            let Some(page) = self.tracker.end_claim(claim) else { continue };
            tracing::trace!("replay request on page {page} ({claim:?}): {request:?}");
            let mut mem = Mem { maps: &self.maps };
            match request {
                Request::Decoded(d) => {
                    let base = self.maps.view.addr() as u64 + page * PAGE as u64;
                    let offset = d.effect.addr().wrapping_sub(base);
                    let op = (offset < PAGE as u64).then(|| replay_op(&d.effect, offset as u16));
                    match op.and_then(|op| self.pages.replay(page, op, out)) {
                        Some(req) => {
                            signal::stamp_sent(claim);
                            self.tracker.write_sent(req, claim);
                        }
                        None => {
                            signal::complete(claim, Outcome::Retry);
                        }
                    }
                }
                Request::Unsupported => {
                    debug!("unsupported store to update-mode page {page}: by ownership");
                    self.pages.handle_fault_by_ownership(page, &mut mem, out);
                    signal::complete(claim, Outcome::Retry);
                }
                Request::Straddles { addr, width } => {
                    // Both pages must be writable at once for the instruction to retire: ask
                    // for ownership of every page the operand touches, in one go.
                    let base = self.maps.view.addr() as u64;
                    let first = addr.saturating_sub(base) / PAGE as u64;
                    let last = (addr + u64::from(width) - 1).saturating_sub(base) / PAGE as u64;
                    debug!("store straddling pages {first}..={last}: by ownership");
                    for p in first..=last.min(self.pages_count - 1) {
                        if self.pages.state(p) != PageState::Writable {
                            self.pages.handle_fault_by_ownership(p, &mut mem, out);
                        }
                    }
                    signal::complete(claim, Outcome::Retry);
                }
                Request::Spurious | Request::Empty => {
                    // The thread was not at a store to the fault address (woken meanwhile, or
                    // an instruction the decoder misread): ownership always makes progress.
                    self.pages.handle_fault_by_ownership(page, &mut mem, out);
                    signal::complete(claim, Outcome::Retry);
                }
            }
        }
    }

    /// Threads that never picked up their replay signal (blocked, or the application changed
    /// our handler): take the slot back and serve the fault by ownership instead. A claim a
    /// handler picked up meanwhile is not taken back: its request is coming.
    pub fn reclaim_stale_replays(&mut self, out: &mut Vec<ToCoordinator>) {
        for claim in self.tracker.stale_claims(Instant::now()) {
            if !signal::reclaim(claim) {
                continue;
            }
            if let Some(page) = self.tracker.end_claim(claim) {
                debug!("replay signal for page {page} not handled in time; using ownership");
                let mut mem = Mem { maps: &self.maps };
                self.pages.handle_fault_by_ownership(page, &mut mem, out);
            }
        }
    }
}

/// The wire form of a decoded store at byte `offset` of its page.
fn replay_op(effect: &crate::decode::Effect, offset: u16) -> ReplayOp {
    use crate::decode::Effect;
    match *effect {
        Effect::Store { width, value, .. } => ReplayOp::Store { offset, width, value },
        Effect::Rmw { width, op, operand, expected, .. } => ReplayOp::Rmw { offset, width, op, operand, expected },
    }
}
