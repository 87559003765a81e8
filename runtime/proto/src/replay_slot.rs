//! The life cycle of a write-replay slot: a lock-free hand-over protocol on one 32-bit word,
//! shared by the runtime thread and a signal handler running on the faulting thread.
//!
//! The runtime (`runtime/src/sys/replay.rs`) keeps a table of slots in process memory. A slot's
//! word packs a [`Phase`] and a generation; every use of the slot gets a fresh generation, its
//! [`Ticket`], and every step is a compare-and-swap from the exact `(phase, generation)` the
//! step expects. That is what makes the races harmless:
//!
//! ```text
//!  runtime thread                         handler (on the faulting thread)
//!  reserve      Free(g)     -> Reserved(g+1)  fill tid, fault address
//!  publish      Reserved(g) -> Signalled(g)   tgkill
//!  reclaim      Signalled(g)-> Free(g)        (stale: never picked up) ... or ...
//!                                             pick_up  Signalled(g) -> Claimed(g)
//!                                             post     Claimed(g)   -> Request(g), wait
//!  complete     Request(g)  -> Done(g)        (outcome written first)
//!                                             release  Done(g)      -> Free(g)
//! ```
//!
//! * A reclaim and a pick-up race on `Signalled(g)`: exactly one CAS wins. If the reclaim wins,
//!   the handler finds nothing and returns (the instruction re-executes; the runtime served the
//!   fault by ownership). If the pick-up wins, the runtime can no longer reclaim and waits for
//!   the request, which the handler posts without blocking.
//! * A handler can only post, wait for and take the outcome of the generation it picked up: a
//!   slot reused by another fault has another generation, so a late handler never takes that
//!   fault's outcome (and never moves `rip` past a store that was not made).
//!
//! The word is abstract ([`SlotWord`]) so the same functions run on an `AtomicU32` in the runtime
//! and on a simulated cell in the deterministic tests (`tests/replay_slots.rs`).

/// A 32-bit word with atomic load, store and compare-and-swap (an `AtomicU32` with
/// acquire/release ordering in the runtime).
pub trait SlotWord {
    /// Reads the word.
    fn load(&self) -> u32;
    /// Writes the word.
    fn store(&self, value: u32);
    /// Replaces `current` with `new` if the word holds `current`; returns what it held.
    fn compare_exchange(&self, current: u32, new: u32) -> Result<u32, u32>;
}

impl SlotWord for std::sync::atomic::AtomicU32 {
    fn load(&self) -> u32 {
        self.load(std::sync::atomic::Ordering::Acquire)
    }
    fn store(&self, value: u32) {
        self.store(value, std::sync::atomic::Ordering::Release);
    }
    fn compare_exchange(&self, current: u32, new: u32) -> Result<u32, u32> {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        std::sync::atomic::AtomicU32::compare_exchange(self, current, new, AcqRel, Acquire)
    }
}

/// Where a slot is in its life cycle (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Unused.
    Free = 0,
    /// The runtime took it and is filling it in.
    Reserved = 1,
    /// The runtime signalled the thread; no handler has picked it up.
    Signalled = 2,
    /// A handler picked it up and is decoding the instruction.
    Claimed = 3,
    /// The handler posted its request and waits.
    Request = 4,
    /// The runtime posted the outcome.
    Done = 5,
}

const PHASE_BITS: u32 = 3;
const PHASE_MASK: u32 = (1 << PHASE_BITS) - 1;

/// The word for `phase` in generation `generation` (the generation wraps at 2^29).
pub fn encode(phase: Phase, generation: u32) -> u32 {
    (generation << PHASE_BITS) | phase as u32
}

/// The phase and generation of a word (`None` for a word no step ever writes).
pub fn decode(word: u32) -> Option<(Phase, u32)> {
    let phase = match word & PHASE_MASK {
        0 => Phase::Free,
        1 => Phase::Reserved,
        2 => Phase::Signalled,
        3 => Phase::Claimed,
        4 => Phase::Request,
        5 => Phase::Done,
        _ => return None,
    };
    Some((phase, word >> PHASE_BITS))
}

/// One use of a slot: its generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket {
    /// The generation of this use.
    pub generation: u32,
}

impl Ticket {
    fn word(self, phase: Phase) -> u32 {
        encode(phase, self.generation)
    }
}

/// Runtime: takes a free slot for a new use. `None` if it is not free.
pub fn reserve(w: &impl SlotWord) -> Option<Ticket> {
    let v = w.load();
    let (phase, generation) = decode(v)?;
    if phase != Phase::Free {
        return None;
    }
    let next = generation.wrapping_add(1) & (u32::MAX >> PHASE_BITS);
    let t = Ticket { generation: next };
    w.compare_exchange(v, t.word(Phase::Reserved)).ok().map(|_| t)
}

/// Runtime: the slot's payload is written; a handler may now pick it up.
pub fn publish(w: &impl SlotWord, t: Ticket) {
    w.store(t.word(Phase::Signalled));
}

/// Runtime: gives back a reserved slot that was never published (the signal could not be sent).
pub fn cancel(w: &impl SlotWord, t: Ticket) -> bool {
    w.compare_exchange(t.word(Phase::Reserved), t.word(Phase::Free)).is_ok()
}

/// Runtime: takes back a signalled slot no handler picked up. False when a handler got to it
/// first: the runtime must then wait for its request.
pub fn reclaim(w: &impl SlotWord, t: Ticket) -> bool {
    w.compare_exchange(t.word(Phase::Signalled), t.word(Phase::Free)).is_ok()
}

/// Runtime: whether the handler of `t` posted its request.
pub fn has_request(w: &impl SlotWord, t: Ticket) -> bool {
    w.load() == t.word(Phase::Request)
}

/// Runtime: publishes the outcome of `t` (written to the payload before). False if `t` has no
/// posted request (then nothing changes).
pub fn complete(w: &impl SlotWord, t: Ticket) -> bool {
    w.compare_exchange(t.word(Phase::Request), t.word(Phase::Done)).is_ok()
}

/// Handler: picks up a signalled slot. `None` if the slot is not signalled (any more).
pub fn pick_up(w: &impl SlotWord) -> Option<Ticket> {
    pick_up_observed(w, w.load())
}

/// Handler: picks up the slot if it still holds `observed` (a word it read while checking
/// that the slot is for its thread) and that word is a signalled one. A slot reclaimed and
/// reused since holds another generation, so the pick-up fails instead of taking another
/// thread's replay.
pub fn pick_up_observed(w: &impl SlotWord, observed: u32) -> Option<Ticket> {
    let v = observed;
    match decode(v)? {
        (Phase::Signalled, generation) => {
            let t = Ticket { generation };
            w.compare_exchange(v, t.word(Phase::Claimed)).ok().map(|_| t)
        }
        _ => None,
    }
}

/// Handler: posts the request of `t` (written to the payload before).
pub fn post(w: &impl SlotWord, t: Ticket) -> bool {
    w.compare_exchange(t.word(Phase::Claimed), t.word(Phase::Request)).is_ok()
}

/// Handler: whether `t` still waits for its outcome (the value to wait on is
/// `encode(Phase::Request, t.generation)`).
pub fn is_waiting(w: &impl SlotWord, t: Ticket) -> bool {
    w.load() == t.word(Phase::Request)
}

/// Handler: after reading the outcome of `t`, frees the slot.
pub fn release(w: &impl SlotWord, t: Ticket) -> bool {
    w.compare_exchange(t.word(Phase::Done), t.word(Phase::Free)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn words_round_trip() {
        for phase in [Phase::Free, Phase::Reserved, Phase::Signalled, Phase::Claimed, Phase::Request, Phase::Done] {
            for g in [0, 1, 12345, u32::MAX >> PHASE_BITS] {
                assert_eq!(decode(encode(phase, g)), Some((phase, g)));
            }
        }
        assert_eq!(decode(6), None);
    }

    #[test]
    fn one_use_end_to_end() {
        let w = AtomicU32::new(encode(Phase::Free, 0));
        let t = reserve(&w).unwrap();
        assert!(reserve(&w).is_none(), "a reserved slot is not free");
        assert!(pick_up(&w).is_none(), "not published yet");
        publish(&w, t);
        let h = pick_up(&w).unwrap();
        assert_eq!(h, t);
        assert!(!reclaim(&w, t), "picked up: the runtime can no longer take it back");
        assert!(!has_request(&w, t));
        assert!(post(&w, h));
        assert!(is_waiting(&w, h));
        assert!(complete(&w, t));
        assert!(!is_waiting(&w, h));
        assert!(release(&w, h));
        let t2 = reserve(&w).unwrap();
        assert_ne!(t2, t, "every use has a fresh generation");
        // A handler of the old generation can do nothing to the new use.
        publish(&w, t2);
        assert!(!post(&w, t) && !release(&w, t) && !complete(&w, t));
        assert!(reclaim(&w, t2));
        assert!(pick_up(&w).is_none(), "reclaimed: a late handler finds nothing");
    }

    #[test]
    fn generations_wrap_without_touching_the_phase() {
        let w = AtomicU32::new(encode(Phase::Free, u32::MAX >> PHASE_BITS));
        let t = reserve(&w).unwrap();
        assert_eq!(t.generation, 0);
        assert_eq!(decode(w.load(std::sync::atomic::Ordering::Relaxed)), Some((Phase::Reserved, 0)));
    }
}
