//! The replay-slot protocol (`dsm_proto::replay_slot`) under random schedules: one runtime
//! thread and several application threads, each with a queue of pending signals, over a small
//! slot table, with stale reclaims at arbitrary moments and slots reused by later faults.
//!
//! Checked in every run: every fault is resolved exactly once (replayed, or served by
//! ownership after a reclaim or a spurious request); a handler only ever takes the outcome of
//! the fault it decoded; no handler waits for an outcome nobody will post; the payload is only
//! written by the side the phase gives it to. A failing seed replays identically.

use std::cell::Cell;
use std::collections::HashMap;

use dsm_proto::replay_slot::{self as slot, Phase, SlotWord, Ticket};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

struct Sim(Cell<u32>);

impl SlotWord for Sim {
    fn load(&self) -> u32 {
        self.0.get()
    }
    fn store(&self, v: u32) {
        self.0.set(v)
    }
    fn compare_exchange(&self, current: u32, new: u32) -> Result<u32, u32> {
        let v = self.0.get();
        if v == current {
            self.0.set(new);
            Ok(v)
        } else {
            Err(v)
        }
    }
}

/// What the handler decoded: the fault the thread is stopped at, or nothing (spurious).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Decoded(u32),
    Spurious,
}

#[derive(Default)]
struct Payload {
    tid: usize,
    fault: u32,
    request: Option<Request>,
    outcome: Option<Option<u32>>, // Some(Some(f)): replayed fault f; Some(None): retry
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Handler {
    /// Saw `observed` in `slot` (signalled, for this thread); about to pick it up.
    Found { slot: usize, observed: u32 },
    /// Decoding: picked up `ticket` of `slot`.
    Decoding { slot: usize, ticket: Ticket },
    /// Posted, waiting for the outcome.
    Waiting { slot: usize, ticket: Ticket, request: Request },
}

struct Thread {
    /// The fault the thread is stopped at (blocked in the kernel), if any.
    fault: Option<u32>,
    signals: u32,
    handler: Option<Handler>,
    faults_left: u32,
}

struct World {
    words: Vec<Sim>,
    payload: Vec<Payload>,
    threads: Vec<Thread>,
    /// Runtime: slot -> (ticket, fault) it signalled for.
    claims: HashMap<usize, (Ticket, u32)>,
    /// Faults waiting for the runtime to read them: (thread, fault).
    unread: Vec<(usize, u32)>,
    resolved: HashMap<u32, &'static str>,
    next_fault: u32,
}

impl World {
    fn resolve(&mut self, fault: u32, how: &'static str) {
        if let Some(before) = self.resolved.insert(fault, how) {
            panic!("fault {fault} resolved twice ({before}, then {how})");
        }
        for t in &mut self.threads {
            if t.fault == Some(fault) {
                t.fault = None;
            }
        }
    }

    /// One random enabled step; false when nothing can move.
    fn step(&mut self, rng: &mut SmallRng) -> bool {
        let mut choices: Vec<u8> = Vec::new();
        if !self.unread.is_empty() {
            choices.push(0);
        }
        if !self.claims.is_empty() {
            choices.extend([1, 2]);
        }
        if self.threads.iter().any(|t| t.fault.is_none() && t.handler.is_none() && t.faults_left > 0) {
            choices.push(3);
        }
        if self.threads.iter().any(|t| t.signals > 0 || t.handler.is_some()) {
            choices.extend([4, 4]);
        }
        let Some(&c) = choices.get(rng.gen_range(0..choices.len().max(1))) else { return false };
        match c {
            0 => {
                // The runtime reads a fault and signals the thread through a free slot, or
                // serves it by ownership when every slot is busy.
                let (tid, fault) = self.unread.remove(rng.gen_range(0..self.unread.len()));
                let free = (0..self.words.len()).find_map(|i| slot::reserve(&self.words[i]).map(|t| (i, t)));
                match free {
                    None => self.resolve(fault, "ownership: no free slot"),
                    Some((i, t)) => {
                        self.payload[i].tid = tid;
                        self.payload[i].fault = fault;
                        if rng.gen_bool(0.05) {
                            // tgkill failed (the thread is gone): give the slot back.
                            assert!(slot::cancel(&self.words[i], t));
                            self.resolve(fault, "ownership: signal failed");
                        } else {
                            slot::publish(&self.words[i], t);
                            self.threads[tid].signals += 1;
                            self.claims.insert(i, (t, fault));
                        }
                    }
                }
            }
            1 => {
                // The stale timer: try to take back a claim at a random moment.
                let keys: Vec<usize> = self.claims.keys().copied().collect();
                let i = keys[rng.gen_range(0..keys.len())];
                let (t, fault) = self.claims[&i];
                if slot::reclaim(&self.words[i], t) {
                    self.claims.remove(&i);
                    self.resolve(fault, "ownership: reclaimed");
                }
            }
            2 => {
                // The runtime serves posted requests.
                let keys: Vec<usize> = self.claims.keys().copied().collect();
                let i = keys[rng.gen_range(0..keys.len())];
                let (t, fault) = self.claims[&i];
                if slot::has_request(&self.words[i], t) {
                    let request = self.payload[i].request.take().expect("a posted request");
                    let outcome = match request {
                        Request::Decoded(f) => {
                            assert_eq!(f, fault, "the request of slot {i} is for another fault");
                            Some(f)
                        }
                        Request::Spurious => {
                            self.resolve(fault, "ownership: spurious");
                            None
                        }
                    };
                    self.payload[i].outcome = Some(outcome);
                    assert!(slot::complete(&self.words[i], t));
                    self.claims.remove(&i);
                }
            }
            3 => {
                // A running thread stores to an update-mode page and blocks in a fault.
                let ready: Vec<usize> = (0..self.threads.len())
                    .filter(|&i| {
                        let t = &self.threads[i];
                        t.fault.is_none() && t.handler.is_none() && t.faults_left > 0
                    })
                    .collect();
                let tid = ready[rng.gen_range(0..ready.len())];
                let fault = self.next_fault;
                self.next_fault += 1;
                self.threads[tid].fault = Some(fault);
                self.threads[tid].faults_left -= 1;
                self.unread.push((tid, fault));
            }
            _ => {
                let busy: Vec<usize> = (0..self.threads.len())
                    .filter(|&i| self.threads[i].signals > 0 || self.threads[i].handler.is_some())
                    .collect();
                let tid = busy[rng.gen_range(0..busy.len())];
                self.handler_step(tid);
            }
        }
        true
    }

    fn handler_step(&mut self, tid: usize) {
        match self.threads[tid].handler {
            None => {
                // A signal is delivered: look for a signalled slot of this thread.
                self.threads[tid].signals -= 1;
                let found = (0..self.words.len()).find_map(|i| {
                    let observed = self.words[i].load();
                    let signalled = matches!(slot::decode(observed), Some((Phase::Signalled, _)));
                    (signalled && self.payload[i].tid == tid).then_some((i, observed))
                });
                if let Some((i, observed)) = found {
                    self.threads[tid].handler = Some(Handler::Found { slot: i, observed });
                }
                // Nothing found: a stale signal; the handler returns.
            }
            Some(Handler::Found { slot: i, observed }) => {
                // Other steps may have reclaimed and reused the slot since it was seen.
                self.threads[tid].handler = slot::pick_up_observed(&self.words[i], observed)
                    .map(|ticket| Handler::Decoding { slot: i, ticket });
            }
            Some(Handler::Decoding { slot: i, ticket }) => {
                // The handler decodes the instruction the thread is stopped at.
                let request = match self.threads[tid].fault {
                    Some(f) if f == self.payload[i].fault => Request::Decoded(f),
                    _ => Request::Spurious,
                };
                assert!(self.payload[i].request.is_none(), "a request was left in slot {i}");
                self.payload[i].request = Some(request);
                assert!(slot::post(&self.words[i], ticket), "claimed slot {i} changed under its handler");
                self.threads[tid].handler = Some(Handler::Waiting { slot: i, ticket, request });
            }
            Some(Handler::Waiting { slot: i, ticket, request }) => {
                if slot::is_waiting(&self.words[i], ticket) {
                    return; // still waiting on the futex
                }
                let outcome = self.payload[i].outcome.take().expect("an outcome after Done");
                match (request, outcome) {
                    (Request::Decoded(f), Some(g)) => {
                        assert_eq!(f, g, "thread {tid} took another fault's outcome");
                        self.resolve(f, "replayed");
                    }
                    (_, None) => {} // retry: the fault was served by ownership
                    (Request::Spurious, Some(g)) => panic!("a spurious request got the outcome of fault {g}"),
                }
                assert!(slot::release(&self.words[i], ticket));
                self.threads[tid].handler = None;
            }
        }
    }
}

fn run(seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let slots = rng.gen_range(1..4);
    let threads = rng.gen_range(1..5);
    let mut w = World {
        words: (0..slots).map(|_| Sim(Cell::new(slot::encode(Phase::Free, 0)))).collect(),
        payload: (0..slots).map(|_| Payload::default()).collect(),
        threads: (0..threads)
            .map(|_| Thread { fault: None, signals: 0, handler: None, faults_left: rng.gen_range(1..8) })
            .collect(),
        claims: HashMap::new(),
        unread: Vec::new(),
        resolved: HashMap::new(),
        next_fault: 0,
    };
    let mut steps = 0;
    while w.step(&mut rng) {
        steps += 1;
        assert!(steps < 100_000, "seed {seed}: no quiescence (livelock?)");
    }
    // Quiescent: every fault resolved, nobody waits, every slot free.
    for f in 0..w.next_fault {
        assert!(w.resolved.contains_key(&f), "seed {seed}: fault {f} never resolved (a thread hangs)");
    }
    for (i, t) in w.threads.iter().enumerate() {
        assert!(t.handler.is_none() && t.fault.is_none(), "seed {seed}: thread {i} stuck: {:?}", t.handler);
    }
    for (i, word) in w.words.iter().enumerate() {
        assert_eq!(slot::decode(word.load()).map(|p| p.0), Some(Phase::Free), "seed {seed}: slot {i} not freed");
    }
}

#[test]
fn random_schedules_with_reclaims_and_reuse_resolve_every_fault_once() {
    for seed in 0..20_000 {
        run(seed);
    }
}
