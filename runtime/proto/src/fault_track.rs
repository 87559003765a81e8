//! The life cycle of faults on the process side, next to [`crate::pages::ProcessPages`]: which
//! pages have threads waiting and since when, the hold that lets a woken thread retire its
//! instruction before the page is revoked again, the replays signalled to threads and the
//! replayed writes in flight — and the one transition that ends them all, [`FaultTracker::fail`].
//!
//! Sans-IO like the rest of this crate: time comes in as [`Instant`] arguments, and the claim
//! type `C` (a replay slot and its generation in the runtime) is opaque. The runtime's fault
//! service (`runtime/src/fault/`) feeds it; the simulation tests drive it through failures.
//!
//! # Failure
//! Once the coordinator is gone or broke the protocol, or the runtime thread failed, no fault can
//! be served any more. [`FaultTracker::fail`] returns everything that was waiting (the pages with
//! parked threads, the signalled replays, the writes in flight) so the caller can release every
//! one of them, and from then on [`FaultTracker::fault_read`] answers [`FaultVerdict::Failed`]:
//! a thread touching the region later must not wait for an answer that will never come.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::wire::{PageNo, ReqId};

/// How long a page installed for a fault is kept before a revocation is applied, so the faulting
/// instruction can retire: without it two writers hammering one page could livelock. Waking a
/// thread on another CPU costs 20-60 µs on the machines this was measured on.
pub const HOLD: Duration = Duration::from_micros(100);

/// A signalled replay that no handler picked up for this long is taken back and the fault is
/// served by ownership (the thread has the signal blocked, or the handler was replaced).
pub const STALE_REPLAY: Duration = Duration::from_millis(50);

/// What to do with a fault just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultVerdict {
    /// Serve it.
    Serve,
    /// The region can no longer be served: stop the process with this reason.
    Failed(String),
}

/// Everything that was waiting when the tracker failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released<C> {
    /// Why.
    pub reason: String,
    /// Pages with threads parked on them, ascending.
    pub faults: Vec<PageNo>,
    /// Replays signalled to threads (their handlers may be waiting for an outcome).
    pub claims: Vec<C>,
}

/// The fault bookkeeping of one region (see the module docs).
#[derive(Debug)]
pub struct FaultTracker<C> {
    /// When the oldest unresolved fault on each page was read.
    faulted: HashMap<PageNo, Instant, foldhash::fast::RandomState>,
    /// When each page installed for a fault may be revoked again.
    held: HashMap<PageNo, Instant, foldhash::fast::RandomState>,
    /// Replays signalled to threads: claim -> (page, when).
    claims: HashMap<C, (PageNo, Instant)>,
    /// Replayed writes in flight: request -> claim.
    writes: HashMap<ReqId, C>,
    /// Total time faulting threads waited.
    waited: Duration,
    failed: Option<String>,
}

impl<C: Copy + Eq + Hash + Ord> Default for FaultTracker<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Copy + Eq + Hash + Ord> FaultTracker<C> {
    /// Nothing waiting.
    pub fn new() -> Self {
        FaultTracker {
            faulted: HashMap::default(),
            held: HashMap::default(),
            claims: HashMap::new(),
            writes: HashMap::new(),
            waited: Duration::ZERO,
            failed: None,
        }
    }

    /// A thread faulted on `page`: serve it, unless the region failed.
    pub fn fault_read(&self, _page: PageNo) -> FaultVerdict {
        match &self.failed {
            Some(reason) => FaultVerdict::Failed(reason.clone()),
            None => FaultVerdict::Serve,
        }
    }

    /// The fault on `page` read at `now` was not resolved at once: its thread waits for the
    /// page to be installed. (A fault resolved at once, or replayed — the claim tracks that
    /// one — is not recorded.)
    pub fn fault_waits(&mut self, page: PageNo, now: Instant) {
        self.faulted.entry(page).or_insert(now);
    }

    /// `page` was installed at `now` (its waiting threads woke). A page a thread waited for is
    /// held for [`HOLD`]; a read-ahead page nobody waited for is not.
    pub fn installed(&mut self, page: PageNo, now: Instant) {
        if let Some(since) = self.faulted.remove(&page) {
            self.waited += now.saturating_duration_since(since);
            self.held.insert(page, now + HOLD);
        }
        if self.held.len() > 4096 {
            self.held.retain(|_, until| *until > now);
        }
    }

    /// A revocation of `page` arrived: until when it must wait (the hold), if at all.
    pub fn take_hold(&mut self, page: PageNo) -> Option<Instant> {
        self.held.remove(&page)
    }

    /// A replay was signalled to the thread that faulted on `page`.
    pub fn claimed(&mut self, claim: C, page: PageNo, now: Instant) {
        self.claims.insert(claim, (page, now));
    }

    /// The signalled replays, in claim order.
    pub fn claims(&self) -> Vec<C> {
        let mut c: Vec<C> = self.claims.keys().copied().collect();
        c.sort_unstable();
        c
    }

    /// Claims signalled more than [`STALE_REPLAY`] before `now`.
    pub fn stale_claims(&self, now: Instant) -> Vec<C> {
        let mut c: Vec<C> = self
            .claims
            .iter()
            .filter(|(_, (_, at))| now.saturating_duration_since(*at) > STALE_REPLAY)
            .map(|(c, _)| *c)
            .collect();
        c.sort_unstable();
        c
    }

    /// The claim is over (its request was taken, or it was reclaimed): its page.
    pub fn end_claim(&mut self, claim: C) -> Option<PageNo> {
        self.claims.remove(&claim).map(|(page, _)| page)
    }

    /// Whether any replay is signalled and unanswered.
    pub fn has_claims(&self) -> bool {
        !self.claims.is_empty()
    }

    /// The replayed write `req` was sent for the handler of `claim`.
    pub fn write_sent(&mut self, req: ReqId, claim: C) {
        self.writes.insert(req, claim);
    }

    /// The replayed write `req` ended: the claim whose handler waits for its outcome.
    pub fn write_ended(&mut self, req: ReqId) -> Option<C> {
        self.writes.remove(&req)
    }

    /// Total time threads waited for faults.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Whether the tracker failed.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Pages with threads waiting, ascending.
    pub fn waiting_faults(&self) -> Vec<PageNo> {
        let mut p: Vec<PageNo> = self.faulted.keys().copied().collect();
        p.sort_unstable();
        p
    }

    /// The region can no longer be served: returns everything that was waiting (each to be
    /// released by the caller) and fails every later fault. A second failure keeps the first
    /// reason and releases what arrived since.
    pub fn fail(&mut self, reason: impl Into<String>) -> Released<C> {
        let reason = self.failed.get_or_insert_with(|| reason.into()).clone();
        let faults = self.waiting_faults();
        self.faulted.clear();
        self.held.clear();
        let mut claims: Vec<C> = self.claims.drain().map(|(c, _)| c).collect();
        claims.extend(self.writes.drain().map(|(_, c)| c));
        claims.sort_unstable();
        claims.dedup();
        Released { reason, faults, claims }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_only_for_pages_a_thread_waited_for() {
        let t0 = Instant::now();
        let mut f: FaultTracker<u32> = FaultTracker::new();
        assert_eq!(f.fault_read(3), FaultVerdict::Serve);
        f.fault_waits(3, t0);
        f.installed(3, t0 + Duration::from_micros(50));
        f.installed(4, t0); // read-ahead
        assert_eq!(f.take_hold(3), Some(t0 + Duration::from_micros(50) + HOLD));
        assert_eq!(f.take_hold(3), None);
        assert_eq!(f.take_hold(4), None);
        assert_eq!(f.waited(), Duration::from_micros(50));
    }

    #[test]
    fn stale_claims_and_their_end() {
        let t0 = Instant::now();
        let mut f: FaultTracker<u32> = FaultTracker::new();
        f.claimed(7, 1, t0);
        f.claimed(8, 2, t0 + STALE_REPLAY);
        assert_eq!(f.stale_claims(t0 + STALE_REPLAY + Duration::from_millis(1)), vec![7]);
        assert_eq!(f.end_claim(7), Some(1));
        assert_eq!(f.end_claim(7), None);
        assert!(f.has_claims());
    }

    #[test]
    fn failure_releases_everything_and_refuses_later_faults() {
        let t0 = Instant::now();
        let mut f: FaultTracker<u32> = FaultTracker::new();
        f.fault_waits(5, t0);
        f.fault_waits(2, t0);
        f.claimed(1, 9, t0);
        f.write_sent(100, 2);
        let r = f.fail("the coordinator went silent");
        assert_eq!(r.faults, vec![2, 5]);
        assert_eq!(r.claims, vec![1, 2]);
        assert!(f.waiting_faults().is_empty() && !f.has_claims());
        assert_eq!(f.fault_read(6), FaultVerdict::Failed("the coordinator went silent".into()));
        assert_eq!(f.fail("another").reason, "the coordinator went silent");
    }
}
