//! Write replay and contended-counter figures, each over a floor measured in the same run:
//!
//! * `replay.store`: one 8-byte `write_volatile` store to a page advised
//!   [`dsm::Coherence::Update`] in a one-process session (the page was read first, so it is
//!   present and read-only): each store faults, is decoded on the faulting thread, replayed at
//!   the coordinator and resumed past. Floor `quinn.rtt_64b`.
//! * `counter.invalidate.2p`, `counter.invalidate.4p`, `counter.update.2p`,
//!   `counter.update.4p`, `counter.adaptive.4p`: `AtomicU64::fetch_add` on one shared word with
//!   the region advised Invalidate / Update / Adaptive; every process does `COUNTER_OPS` of them
//!   between two barriers, and after each one waits (reading the word, no sleep) until another
//!   process has incremented it too, so that the processes interleave by design (a contended
//!   counter, not a burst on an owned page); operations per second of all processes together,
//!   over the time the parent takes between the barriers (the final total is checked); the
//!   median of `COUNTER_REPEATS` runs, interleaved with the other modes' runs. The update
//!   figures' floor is the invalidate figure of the same process count (target >= 3); the
//!   adaptive figure's floor is the better of the two fixed modes with 4 processes (target >=
//!   0.9).
//! * `counter.latency.invalidate.4p`, `counter.latency.update.4p`, `counter.latency.adaptive.4p`:
//!   from the same 4-process runs, the median time of one contended fetch_add of the parent
//!   (the median over the runs of each run's median; each increment timed alone; the waits
//!   for the other processes are outside it; the increments it makes after every other
//!   process has finished are not counted: they run alone, and in adaptive mode on a page that
//!   went back to ownership, ~0 µs). Floor
//!   `quinn.rtt_64b`; target <= 1.5 for update mode.
//! * `counter.latency.update.2p`: the same from the 2-process update run, no target: on a
//!   2-core machine the 4-process figures share cores (four processes, their runtime threads
//!   and the coordinator), and this one shows what an increment costs when they do not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use dsm_tests::{session_name, TestEnv};

use super::{attach, median, median_us, with_helpers, Figure, Target, WorkerKind, SIZE};

/// `replay.store`: timed replayed stores after warm-up ones.
const REPLAY_WARMUP: usize = 100;
const REPLAY_ROUNDS: usize = 2000;
/// `counter.*`: fetch_adds per process.
const COUNTER_OPS: usize = 1000;
/// `counter.*`: runs of each configuration (the figures are their medians).
const COUNTER_REPEATS: usize = 3;

pub(super) fn measure(env: &TestEnv, selected: &dyn Fn(&str) -> bool, figures: &mut Vec<Figure>) -> Result<()> {
    if selected("replay.store") {
        let (samples, hops) = replay_store(env).context("measuring replay.store")?;
        let v = median_us(&samples);
        figures.push(Figure::over(figures, "replay.store", v, "us", "quinn.rtt_64b", Some(Target::AtMost(1.2))));
        // Where the time goes: the mean of each stage of the path, and what is left of the mean
        // store (the kernel's fault path and wake-up of the runtime thread, and sigreturn).
        let mean_store = samples.iter().sum::<Duration>().as_secs_f64() * 1e6 / samples.len() as f64;
        let mut accounted = 0.0;
        for (stage, mean) in hops.means() {
            let us = mean.as_secs_f64() * 1e6;
            accounted += us;
            let name: &'static str = Box::leak(format!("replay.store.hop.{stage}").into_boxed_str());
            figures.push(Figure { name, value: us, unit: "us", floor: None, ratio: None, target: None });
        }
        if hops.replays > 0 {
            let rest = mean_store - accounted;
            figures.push(Figure { name: "replay.store.hop.fault_and_return", value: rest, unit: "us", floor: None, ratio: None, target: None });
        }
    }
    // The counter figures: invalidate ones are measured whenever a figure over them is selected.
    let want = |names: &[&str]| names.iter().any(|n| selected(n));
    let counters: [(&'static str, u32, dsm::Coherence, bool); 5] = [
        ("counter.invalidate.2p", 2, dsm::Coherence::Invalidate, want(&["counter.invalidate.2p", "counter.update.2p"])),
        (
            "counter.invalidate.4p",
            4,
            dsm::Coherence::Invalidate,
            want(&["counter.invalidate.4p", "counter.update.4p", "counter.adaptive.4p", "counter.latency.invalidate.4p"]),
        ),
        ("counter.update.2p", 2, dsm::Coherence::Update, want(&["counter.update.2p", "counter.latency.update.2p"])),
        ("counter.update.4p", 4, dsm::Coherence::Update, want(&["counter.update.4p", "counter.adaptive.4p", "counter.latency.update.4p"])),
        ("counter.adaptive.4p", 4, dsm::Coherence::Adaptive, want(&["counter.adaptive.4p", "counter.latency.adaptive.4p"])),
    ];
    // Each configuration runs COUNTER_REPEATS times, the rounds interleaved (so that a change in
    // the machine's load falls on every mode alike), and its figures are the medians.
    let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new(); counters.len()];
    for _ in 0..COUNTER_REPEATS {
        for ((name, nprocs, coherence, measure), results) in counters.iter().zip(&mut runs) {
            if *measure {
                results.push(counter_rate(env, *nprocs, *coherence).with_context(|| format!("measuring {name}"))?);
            }
        }
    }
    let mut latencies = Vec::new();
    for ((name, nprocs, coherence, measure), results) in counters.into_iter().zip(runs) {
        if !measure {
            continue;
        }
        let v = median(results.iter().map(|r| r.0).collect());
        let latency = median(results.iter().map(|r| r.1).collect());
        latencies.push((nprocs, coherence, latency));
        let figure = match coherence {
            dsm::Coherence::Invalidate => Figure { name, value: v, unit: "ops/s", floor: None, ratio: None, target: None },
            dsm::Coherence::Update => {
                let floor = if nprocs == 2 { "counter.invalidate.2p" } else { "counter.invalidate.4p" };
                Figure::over(figures, name, v, "ops/s", floor, Some(Target::AtLeast(3.0)))
            }
            _ => {
                let value_of = |n: &str| figures.iter().find(|f| f.name == n).map_or(f64::NAN, |f| f.value);
                let floor = if value_of("counter.update.4p") >= value_of("counter.invalidate.4p") {
                    "counter.update.4p"
                } else {
                    "counter.invalidate.4p"
                };
                Figure::over(figures, name, v, "ops/s", floor, Some(Target::AtLeast(0.9)))
            }
        };
        figures.push(figure);
    }
    // Per-operation latency of the contended increment, from the same runs (4 processes).
    // With 2 processes (one core each here) the same figure for update mode, without a target:
    // what the increment costs when the processes do not also share cores.
    for (nprocs, coherence, latency) in latencies {
        let (name, target) = match (nprocs, coherence) {
            (2, dsm::Coherence::Update) => ("counter.latency.update.2p", None),
            (2, _) => continue,
            (_, dsm::Coherence::Invalidate) => ("counter.latency.invalidate.4p", None),
            (_, dsm::Coherence::Update) => ("counter.latency.update.4p", Some(Target::AtMost(1.5))),
            _ => ("counter.latency.adaptive.4p", None),
        };
        if selected(name) {
            figures.push(Figure::over(figures, name, latency, "us", "quinn.rtt_64b", target));
        }
    }
    Ok(())
}

/// `replay.store`: individually timed 8-byte stores to an update-mode page of a one-process
/// region (the page is read first, so every store is a write-protect fault that is replayed).
/// Also returns the stages of the timed stores' path (`dsm::ReplayPathTimes`).
fn replay_store(env: &TestEnv) -> Result<(Vec<Duration>, dsm::ReplayPathTimes)> {
    let r: dsm::Region = attach(env, &session_name("bench-replay"), 1, SIZE)?;
    r.advise(0, r.len(), dsm::Coherence::Update).context("advising the region")?;
    let word = r.ptr_at(0, 8)?.cast::<u64>();
    // SAFETY: inside the region (bounds-checked above).
    unsafe { std::ptr::read_volatile(word) };
    let before = r.stats().context("stats")?.replayed_writes;
    let mut samples = Vec::with_capacity(REPLAY_ROUNDS);
    let mut hops_before = dsm::ReplayPathTimes::now();
    for i in 0..REPLAY_WARMUP + REPLAY_ROUNDS {
        if i == REPLAY_WARMUP {
            hops_before = dsm::ReplayPathTimes::now();
        }
        let t = Instant::now();
        // SAFETY: as above.
        unsafe { std::ptr::write_volatile(word, i as u64 + 1) };
        let took = t.elapsed();
        if i >= REPLAY_WARMUP {
            samples.push(took);
        }
    }
    let stats = r.stats().context("stats")?;
    // SAFETY: as above.
    let last = unsafe { std::ptr::read_volatile(word) };
    ensure!(last == (REPLAY_WARMUP + REPLAY_ROUNDS) as u64, "the word holds {last} after the stores");
    let replayed = stats.replayed_writes - before;
    ensure!(
        replayed >= (REPLAY_WARMUP + REPLAY_ROUNDS) as u64,
        "only {replayed} of {} stores were replayed ({stats:?})",
        REPLAY_WARMUP + REPLAY_ROUNDS
    );
    let hops = dsm::ReplayPathTimes::now().since(&hops_before);
    r.detach().context("detaching")?;
    Ok((samples, hops))
}

/// Barrier, `ops` fetch_adds on the word at offset 0, barrier; returns the time between the
/// barriers and the own time of each fetch_add made while another process still had some to
/// make, and checks the final total.
///
/// The processes interleave by design, with no sleep: after each increment a process waits
/// (reading the word, yielding the CPU) until another process has incremented it too, or until
/// every other process is done. So every increment contends (without the wait, each process
/// would do its whole burst on a page it owns, and invalidate mode would measure local atomics),
/// and the time between the barriers is the counter's own serialized rate in that mode.
pub(super) fn counter_ops(r: &dsm::Region, ops: usize) -> Result<(Duration, Vec<Duration>)> {
    let word = &r.as_slice::<AtomicU64>(0, 1)?[0];
    let total = ops as u64 * u64::from(r.nprocs());
    let mut each = Vec::with_capacity(ops);
    r.barrier().context("barrier before the fetch_adds")?;
    let t = Instant::now();
    for done in 1..=ops {
        let op = Instant::now();
        let mine = word.fetch_add(1, Ordering::SeqCst) + 1;
        let took = op.elapsed();
        // Everyone else is done once the word holds all their increments and all of ours so far.
        let others_done = mine == total - (ops - done) as u64;
        // An increment after which nobody else is left did not contend (once the others have
        // finished, the rest of ours run alone, on a page this process may own): not timed.
        if !others_done {
            each.push(took);
        }
        if done < ops && !others_done {
            while word.load(Ordering::SeqCst) == mine {
                std::thread::yield_now();
            }
        }
    }
    r.barrier().context("barrier after the fetch_adds")?;
    let took = t.elapsed();
    let got = word.load(Ordering::SeqCst);
    ensure!(got == total, "the counter is {got}, expected {total}");
    Ok((took, each))
}

/// `counter.*`: fetch_adds per second of `nprocs` processes on one word advised `coherence`,
/// and the median time of one fetch_add of this process (the pauses between them untimed).
fn counter_rate(env: &TestEnv, nprocs: u32, coherence: dsm::Coherence) -> Result<(f64, f64)> {
    let session = session_name("bench-counter");
    with_helpers(env, &session, nprocs, SIZE, WorkerKind::Counter, COUNTER_OPS, |r: &dsm::Region| {
        r.advise(0, r.len(), coherence).context("advising the region")?;
        let hops_before = dsm::ReplayPathTimes::now();
        let (took, each) = counter_ops(r, COUNTER_OPS)?;
        if std::env::var_os("DSM_BENCH_STATS").is_some() {
            eprintln!("counter {coherence:?} {nprocs}p: {took:?}, rank 0 {:?}", r.stats()?);
            eprintln!("counter {coherence:?} {nprocs}p: rank 0 made {} of its {COUNTER_OPS} increments while others were still at it", each.len());
            // Where rank 0's replayed increments spent their time (means, as replay.store's hops).
            let hops = dsm::ReplayPathTimes::now().since(&hops_before);
            let means: Vec<String> = hops.means().iter().map(|(stage, d)| format!("{stage} {:.1}", d.as_secs_f64() * 1e6)).collect();
            eprintln!("counter {coherence:?} {nprocs}p: rank 0's {} replays, mean us per stage: {}", hops.replays, means.join(", "));
        }
        Ok(((COUNTER_OPS * nprocs as usize) as f64 / took.as_secs_f64(), median_us(&each)))
    })
}

