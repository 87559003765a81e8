//! Busy-polling for a short while after traffic, so that the thread driving a connection is
//! still awake when the answer comes.
//!
//! On a virtual machine a thread that blocks lets its vCPU halt, and waking a halted vCPU is a
//! trip through the host scheduler: measured on the 2-core machine (guest `haltpoll` idle driver
//! with `guest_halt_poll_ns` 0), a raw quinn 64-byte round trip took 340-380 µs while both
//! vCPUs went idle in between, and 38 µs with any other thread keeping a vCPU busy. Every
//! request of the DSM protocol crosses two or more such sleeps (runtime → coordinator →
//! runtime, and for replayed stores the application thread's as well).
//!
//! [`BusyPoll::spawn`] starts a task on the current tokio runtime that, for `budget` after the
//! last [`BusyPoll::touch`], keeps the runtime polling its I/O driver without blocking (each
//! round: `sched_yield`, so that any other thread runnable on this CPU runs first, then
//! `tokio::task::yield_now`, which makes the scheduler poll the reactor with a zero timeout
//! before it runs the task again). Packets, userfaultfd events and wake-ups from other threads
//! are then seen at once instead of after a vCPU wake-up. Past the budget the task sleeps until
//! the next touch: an idle connection costs nothing.
//!
//! The price is CPU time while traffic flows, given up to every other runnable thread first.
//! `dsm run -n 4 -- contrast --generate 4096x4096` used 0.94-0.95 s of CPU with and without
//! polling; the busy-wait `pingpong` example (2 processes, 1000 hand-offs) finished in 150-211 ms
//! instead of 349-367 ms and used less CPU in all (0.32-0.41 s against 0.54-0.55 s).
//!
//! Tried and not taken: the runtime polling the whole budget only while it awaits an answer,
//! and 50 µs after traffic it did not ask for (revocations, updates). Interleaved runs, three
//! each (`dsm-bench` medians, µs; ms for contrast): `pingpong.update` 97 / 163 / 101 with
//! polling after all traffic against 167 / 178 / 171, `fault.read_home` 62 / 81 / 68 against
//! 109 / 100 / 63, `app.contrast.4p` 351 / 353 / 345 against 347 / 370 / 293: no gain on the
//! loaded figure to pay for the loss on the latency ones.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long the runtimes and the coordinator keep polling after their last traffic by default:
/// longer than a request through the coordinator takes when no vCPU halts on the way (a page
/// fault served from the home copy: 62-91 µs polling). Measured on the 2-core machine
/// (`dsm-bench fault`, two interleaved runs per budget, medians in µs, read_home /
/// read_remote / ownership_transfer): no polling 218-686 / 404-927 / 399-1130; 50 µs
/// 689-750 / 421-1126 / 1039-1147 (shorter than the answer takes: no gain); 150 µs 62-91 /
/// 155-160 / 235-303; 300 µs 69-80 / 161-187 / 189-198.
pub const DEFAULT_BUDGET: Duration = Duration::from_micros(200);

/// A handle to a busy-poll task; cloning shares the task, dropping the last handle ends it.
#[derive(Clone)]
pub struct BusyPoll {
    inner: Arc<Inner>,
}

struct Inner {
    epoch: Instant,
    /// Nanoseconds after `epoch` of the last touch ([`NEVER`] before the first).
    last: AtomicU64,
    /// The task is (about to be) asleep on `wake`.
    sleeping: AtomicBool,
    wake: Arc<Notify>,
    budget_nanos: u64,
}

/// `Inner::last` before the first touch.
const NEVER: u64 = u64::MAX;

impl Drop for Inner {
    fn drop(&mut self) {
        // The task holds only a weak reference: wake it so that it sees the handles are gone.
        self.wake.notify_one();
    }
}

impl Inner {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn within_budget(&self) -> bool {
        let last = self.last.load(Ordering::SeqCst);
        last != NEVER && self.now().saturating_sub(last) < self.budget_nanos
    }
}

impl BusyPoll {
    /// Starts the task on the current tokio runtime (panics outside one, as `tokio::spawn`
    /// does). A zero `budget` never polls: the task sleeps until the handles are dropped.
    pub fn spawn(budget: Duration) -> BusyPoll {
        let inner = Arc::new(Inner {
            epoch: Instant::now(),
            last: AtomicU64::new(NEVER),
            sleeping: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
            budget_nanos: budget.as_nanos().min(u128::from(u64::MAX)) as u64,
        });
        tokio::spawn(run(Arc::downgrade(&inner)));
        BusyPoll { inner }
    }

    /// Traffic happened (a message sent or received): keep polling for the budget from now.
    pub fn touch(&self) {
        self.inner.last.store(self.inner.now(), Ordering::SeqCst);
        if self.inner.sleeping.load(Ordering::SeqCst) {
            self.inner.wake.notify_one();
        }
    }

    /// Whether the task is polling now (the last touch is within the budget).
    pub fn is_polling(&self) -> bool {
        self.inner.within_budget()
    }
}

impl std::fmt::Debug for BusyPoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusyPoll")
            .field("budget", &Duration::from_nanos(self.inner.budget_nanos))
            .field("polling", &self.is_polling())
            .finish()
    }
}

/// The task: poll while within the budget, sleep otherwise, end when every handle is gone.
async fn run(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else { return };
        if strong.within_budget() {
            drop(strong);
            std::thread::yield_now();
            tokio::task::yield_now().await;
            continue;
        }
        strong.sleeping.store(true, Ordering::SeqCst);
        // A touch between the test above and the flag did not see the flag: test again.
        if strong.within_budget() {
            strong.sleeping.store(false, Ordering::SeqCst);
            continue;
        }
        let wake = Arc::clone(&strong.wake);
        drop(strong);
        wake.notified().await;
        match inner.upgrade() {
            Some(strong) => strong.sleeping.store(false, Ordering::SeqCst),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn a_touch_polls_for_the_budget_then_the_task_sleeps() {
        rt().block_on(async {
            let poll = BusyPoll::spawn(Duration::from_millis(30));
            assert!(!poll.is_polling(), "not touched yet");
            poll.touch();
            assert!(poll.is_polling());
            tokio::time::sleep(Duration::from_millis(60)).await;
            assert!(!poll.is_polling());
            tokio::task::yield_now().await;
            assert!(poll.inner.sleeping.load(Ordering::SeqCst), "the task went to sleep past the budget");
            poll.touch();
            // The touch woke it: it clears the flag when it runs.
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            assert!(!poll.inner.sleeping.load(Ordering::SeqCst), "the touch woke the task");
        });
    }

    #[test]
    fn while_polling_the_runtime_keeps_running_its_reactor_without_blocking() {
        // A current-thread runtime whose only other task waits on a timer: while the poller
        // runs, the thread never blocks, so it burns CPU time; asleep, it does not.
        rt().block_on(async {
            let cpu = || {
                let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                // SAFETY: clock_gettime writes into a live local; the clock always exists.
                unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
                Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
            };
            let poll = BusyPoll::spawn(Duration::from_millis(50));
            let before = cpu();
            poll.touch();
            tokio::time::sleep(Duration::from_millis(40)).await;
            let polling = cpu() - before;
            tokio::time::sleep(Duration::from_millis(20)).await; // past the budget
            let before = cpu();
            tokio::time::sleep(Duration::from_millis(40)).await;
            let asleep = cpu() - before;
            assert!(polling > Duration::from_millis(10), "polling used {polling:?} of CPU in 40 ms");
            assert!(asleep < Duration::from_millis(5), "asleep it used {asleep:?} of CPU in 40 ms");
        });
    }

    #[test]
    fn dropping_every_handle_ends_the_task() {
        let rt = rt();
        rt.block_on(async {
            let poll = BusyPoll::spawn(Duration::from_millis(10));
            let weak = Arc::downgrade(&poll.inner);
            let second = poll.clone();
            drop(poll);
            assert!(weak.upgrade().is_some(), "a clone keeps it");
            drop(second);
            assert!(weak.upgrade().is_none());
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        });
        assert_eq!(rt.metrics().num_alive_tasks(), 0, "the task ended");
    }
}
