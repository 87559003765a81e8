//! Failing the fault path releases every waiting fault: random sequences of faults, replies,
//! replay claims and completions on [`ProcessPages`] and [`FaultTracker`], then a failure at a
//! random moment — a protocol error from the coordinator (a reply nobody asked for) or a panic
//! inside the memory layer (caught, as the runtime thread catches its panics). What the
//! tracker releases must be exactly the faults and replays still waiting, tracked here by an
//! independent model, and every later fault must be refused.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use dsm_proto::fault_track::{FaultTracker, FaultVerdict};
use dsm_proto::pages::{Access, FaultAction, PageMemory, ProcessPages};
use dsm_proto::{GrantData, Mode, PageNo, ToCoordinator, ToProcess};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const PAGES: u64 = 6;

/// A memory layer that panics on its `panic_at`-th call (to simulate a runtime bug).
struct Mem {
    calls: u32,
    panic_at: Option<u32>,
}

impl Mem {
    fn tick(&mut self) {
        self.calls += 1;
        if Some(self.calls) == self.panic_at {
            panic!("simulated runtime panic");
        }
    }
}

impl PageMemory for Mem {
    fn install(&mut self, _: PageNo, _: Option<&[u8]>, _: bool) {
        self.tick();
    }
    fn make_writable(&mut self, _: PageNo) {
        self.tick();
    }
    fn write_protect(&mut self, _: PageNo) -> Vec<u8> {
        self.tick();
        vec![0; dsm_proto::PAGE_SIZE]
    }
    fn drop_page(&mut self, _: PageNo, want: bool) -> Option<Vec<u8>> {
        self.tick();
        want.then(|| vec![0; dsm_proto::PAGE_SIZE])
    }
    fn wake(&mut self, _: PageNo) {
        self.tick();
    }
    fn store(&mut self, _: PageNo, _: u16, _: u8, _: u128) {
        self.tick();
    }
}

#[derive(Clone, Copy, Debug)]
enum Failure {
    ProtocolError,
    Panic,
}

fn run(seed: u64, failure: Failure) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let mut pages = ProcessPages::for_region(PAGES);
    let mut tracker: FaultTracker<u32> = FaultTracker::new();
    let mut mem = Mem { calls: 0, panic_at: None };
    // The model: pages with a thread waiting, and claims outstanding.
    let mut waiting: BTreeSet<PageNo> = BTreeSet::new();
    let mut claims: BTreeSet<u32> = BTreeSet::new();
    // Requests sent and not answered: req -> pages, each (page, is Own, conditional).
    let mut requests: BTreeMap<u64, Vec<(PageNo, bool, bool)>> = BTreeMap::new();
    let mut next_claim = 0u32;
    let steps = rng.gen_range(0..40);
    for step in 0..steps {
        let now = t0 + Duration::from_micros(step * 10);
        match rng.gen_range(0..4) {
            0 => {
                let page = rng.gen_range(0..PAGES);
                let access = if rng.gen() { Access::Write } else { Access::Read };
                assert_eq!(tracker.fault_read(page), FaultVerdict::Serve);
                let mut out = Vec::new();
                let action = pages.handle_fault(page, access, &mut mem, &mut out);
                for m in out {
                    let (req, pages): (u64, Vec<(PageNo, bool, bool)>) = match m {
                        ToCoordinator::Fetch { req, page } => (req, vec![(page, false, false)]),
                        ToCoordinator::Own { req, page } => (req, vec![(page, true, false)]),
                        ToCoordinator::FetchRun { req, first, count } => {
                            (req, (first..first + u64::from(count)).map(|q| (q, false, false)).collect())
                        }
                        ToCoordinator::OwnRun { req, first, count, conditional } => {
                            (req, (first..first + u64::from(count)).map(|q| (q, true, conditional)).collect())
                        }
                        other => panic!("unexpected {other:?}"),
                    };
                    requests.entry(req).or_default().extend(pages);
                }
                // As the runtime does: a replay is tracked by its claim, a fault that must wait
                // for a reply by its page; one resolved at once by nothing.
                if action == FaultAction::Replay {
                    claims.insert(next_claim);
                    tracker.claimed(next_claim, page, now);
                    next_claim += 1;
                } else if !pages.allows(page, access) {
                    tracker.fault_waits(page, now);
                    waiting.insert(page);
                }
            }
            1 => {
                // The coordinator answers the oldest request correctly, page by page; a
                // write-ahead page is granted or denied.
                let Some((&req, _)) = requests.iter().next() else { continue };
                for (page, own, conditional) in requests.remove(&req).unwrap_or_default() {
                    let msg = if conditional && rng.gen() {
                        ToProcess::Denied { req, first: page, count: 1 }
                    } else if own {
                        ToProcess::Grant { req, page, data: Some(GrantData::Zero) }
                    } else {
                        ToProcess::Data { req, page, data: None, mode: Mode::Invalidate }
                    };
                    let installs = !matches!(msg, ToProcess::Denied { .. });
                    pages.handle_message(msg, &mut mem, &mut Vec::new()).expect("a correct reply");
                    if installs {
                        tracker.installed(page, now);
                        waiting.remove(&page);
                    }
                }
            }
            2 => {
                // A claim ends (its handler's request was taken).
                if let Some(&c) = claims.iter().next() {
                    claims.remove(&c);
                    assert!(tracker.end_claim(c).is_some());
                }
            }
            _ => {
                // A replayed write in flight for an outstanding claim.
                if let Some(&c) = claims.iter().next() {
                    tracker.write_sent(1_000_000 + u64::from(c), c);
                }
            }
        }
    }
    // The failure.
    let reason = match failure {
        Failure::ProtocolError => {
            let bogus = ToProcess::Data { req: 999_999, page: 0, data: None, mode: Mode::Invalidate };
            let e = pages.handle_message(bogus, &mut mem, &mut Vec::new()).expect_err("a reply nobody asked for");
            e.to_string()
        }
        Failure::Panic => {
            mem.panic_at = Some(mem.calls + 1);
            let page = rng.gen_range(0..PAGES);
            let r = catch_unwind(AssertUnwindSafe(|| {
                // Whatever the runtime was doing when it panicked.
                pages.release_all(&mut mem, &mut Vec::new());
                pages.handle_fault(page, Access::Write, &mut mem, &mut Vec::new());
                pages.handle_fault(page, Access::Read, &mut mem, &mut Vec::new());
            }));
            match r {
                Err(_) => "the runtime thread panicked".to_string(),
                Ok(()) => "nothing panicked (no memory call happened)".to_string(),
            }
        }
    };
    let released = tracker.fail(reason.clone());
    assert_eq!(released.reason, reason);
    assert_eq!(
        released.faults,
        waiting.iter().copied().collect::<Vec<_>>(),
        "seed {seed} {failure:?}: released faults differ from the waiting ones"
    );
    assert_eq!(
        released.claims,
        claims.iter().copied().collect::<Vec<_>>(),
        "seed {seed} {failure:?}: released replays differ from the outstanding ones"
    );
    // Nothing is left, and a later fault is refused with the reason.
    assert!(tracker.waiting_faults().is_empty() && !tracker.has_claims());
    assert_eq!(tracker.fault_read(0), FaultVerdict::Failed(reason));
}

/// The simulated panics are expected: keep the default hook's report for every other panic.
fn quiet_simulated_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&"simulated runtime panic") {
                default(info);
            }
        }));
    });
}

#[test]
fn a_protocol_error_releases_every_waiting_fault_and_replay() {
    for seed in 0..3000 {
        run(seed, Failure::ProtocolError);
    }
}

#[test]
fn a_runtime_panic_releases_every_waiting_fault_and_replay() {
    quiet_simulated_panics();
    for seed in 0..3000 {
        run(seed, Failure::Panic);
    }
}
