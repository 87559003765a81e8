//! Where the time of a replayed store goes: every replay that completes adds the duration of
//! each stage of its path to process-wide totals, so a benchmark (or a curious user) can see
//! which hop costs what. Always on: a stamp is one vDSO `clock_gettime` (~20-30 ns), and the
//! handler adds the totals with relaxed atomics (async-signal-safe).
//!
//! The stamps of one replay, in order (each taken on the thread named):
//!
//! | stamp | thread | moment |
//! | --- | --- | --- |
//! | `FAULT_READ` | runtime | the write-protect fault was read from the userfaultfd |
//! | `TESTED` | runtime | the thread is known not to be inside a system call |
//! | `SIGNALLING` | runtime | a slot is reserved and filled; `tgkill` is next |
//! | `HANDLER` | application | the signal handler started |
//! | `POSTED` | application | the store is decoded and posted; the runtime thread is poked |
//! | `PICKED` | runtime | the runtime thread took the request |
//! | `SENT` | runtime | the `Write`/`Rmw` was framed for the coordinator (flushed next) |
//! | `ANSWERED` | runtime | the coordinator's answer was read and handed to the handler |
//! | `RESUMED` | application | the handler woke with the answer (it returns next) |
//!
//! Not covered: from the store to the runtime thread reading its fault (the kernel's fault path
//! and the runtime thread's wake-up), and from `RESUMED` back into the application
//! (`sigreturn`). A caller that times whole stores gets those as the remainder.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Index of each stamp in a replay slot (see the module docs).
pub(crate) mod stamp {
    pub const FAULT_READ: usize = 0;
    pub const TESTED: usize = 1;
    pub const SIGNALLING: usize = 2;
    pub const HANDLER: usize = 3;
    pub const POSTED: usize = 4;
    pub const PICKED: usize = 5;
    pub const SENT: usize = 6;
    pub const ANSWERED: usize = 7;
    pub const RESUMED: usize = 8;
    /// Number of stamps.
    pub const COUNT: usize = 9;
}

/// The stages between consecutive stamps, by name.
pub const STAGES: [&str; stamp::COUNT - 1] = [
    "syscall_test",           // FAULT_READ -> TESTED
    "slot",                   // TESTED -> SIGNALLING
    "signal",                 // SIGNALLING -> HANDLER: tgkill, the thread's wake-up, delivery
    "decode",                 // HANDLER -> POSTED
    "handler_to_runtime",     // POSTED -> PICKED: eventfd, the runtime thread's wake-up
    "frame",                  // PICKED -> SENT
    "coordinator_round_trip", // SENT -> ANSWERED: flush, network, coordinator, reading the answer
    "answer_wake",            // ANSWERED -> RESUMED: futex, the thread's wake-up
];

static REPLAYS: AtomicU64 = AtomicU64::new(0);
static TOTALS: [AtomicU64; stamp::COUNT - 1] = [const { AtomicU64::new(0) }; stamp::COUNT - 1];

/// Now, in nanoseconds of `CLOCK_MONOTONIC` (async-signal-safe).
pub(crate) fn now() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes a timespec into a live local; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Adds one completed replay's stamps to the totals (from the signal handler: atomics only).
/// A replay with a missing or out-of-order stamp is not counted.
pub(crate) fn record(stamps: &[u64; stamp::COUNT]) {
    if stamps.windows(2).any(|w| w[0] == 0 || w[1] < w[0]) {
        return;
    }
    for (total, w) in TOTALS.iter().zip(stamps.windows(2)) {
        total.fetch_add(w[1] - w[0], Ordering::Relaxed);
    }
    REPLAYS.fetch_add(1, Ordering::Relaxed);
}

/// The process-wide totals of replayed stores' stages so far (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplayPathTimes {
    /// Replays counted (completed by the coordinator, every stamp present).
    pub replays: u64,
    /// Total nanoseconds spent in each stage of [`STAGES`], over those replays.
    pub totals_nanos: [u64; stamp::COUNT - 1],
}

impl ReplayPathTimes {
    /// The totals now.
    pub fn now() -> ReplayPathTimes {
        ReplayPathTimes {
            replays: REPLAYS.load(Ordering::Relaxed),
            totals_nanos: std::array::from_fn(|i| TOTALS[i].load(Ordering::Relaxed)),
        }
    }

    /// What was added since `earlier`.
    pub fn since(&self, earlier: &ReplayPathTimes) -> ReplayPathTimes {
        ReplayPathTimes {
            replays: self.replays - earlier.replays,
            totals_nanos: std::array::from_fn(|i| self.totals_nanos[i] - earlier.totals_nanos[i]),
        }
    }

    /// Mean time of each stage, by name (empty when nothing was counted).
    pub fn means(&self) -> Vec<(&'static str, Duration)> {
        if self.replays == 0 {
            return Vec::new();
        }
        STAGES.iter().zip(self.totals_nanos).map(|(&name, t)| (name, Duration::from_nanos(t / self.replays))).collect()
    }
}
