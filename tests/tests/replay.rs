//! Write replay (update mode) across real processes: the differential test of every replayable
//! store form through the real fault / signal / coordinator path (`dsm-replay-diff`), and the
//! `dsm-worker` scenarios under update and adaptive coherence, also through a lossy link.

use std::time::Duration;

use dsm_tests::{lossy_relay, run_workers, session_name, TestEnv, Workers};

const WORKER: &str = env!("CARGO_BIN_EXE_dsm-worker");
const REPLAY_DIFF: &str = env!("CARGO_BIN_EXE_dsm-replay-diff");
const TIMEOUT: Duration = Duration::from_secs(150);

fn run_exe(exe: &str, addr: std::net::SocketAddr, env: &TestEnv, args: &[&str], size: u64, n: u32) -> Workers {
    let name = session_name(args.iter().find(|a| !a.starts_with('-') && !matches!(**a, "update" | "adaptive" | "invalidate")).unwrap_or(&"replay"));
    run_workers(std::path::Path::new(exe), args, &env.worker_env(addr, &name, size, n), n as usize, TIMEOUT)
}

fn run(env: &TestEnv, args: &[&str], size: u64, n: u32) -> Workers {
    run_exe(WORKER, env.addr(), env, args, size, n)
}

fn count(w: &Workers, needle: &str) -> usize {
    w.seen.iter().filter(|l| !l.stderr && l.text.contains(needle)).count()
}

#[test]
fn differential_every_store_form_through_the_real_replay_path() {
    let env = TestEnv::new();
    let w = run_exe(REPLAY_DIFF, env.addr(), &env, &["replay-diff"], 64 * 4096, 2);
    let summary = w.seen.iter().find(|l| l.text.starts_with("replay-diff: ") && l.text.contains("cases ok in"));
    assert!(summary.is_some(), "{}", w.transcript());
    assert_eq!(count(&w, "matches"), 1, "rank 1 did not confirm the checksum:\n{}", w.transcript());
    eprintln!("{}", summary.unwrap().text);
}

#[test]
fn counter_update_4_processes() {
    let env = TestEnv::new();
    let w = run(&env, &["--coherence", "update", "counter", "--adds", "10000"], 4096, 4);
    assert_eq!(count(&w, "total 40000 expected 40000"), 4, "{}", w.transcript());
    let r = w.replayed_writes("total 40000");
    assert!(r.len() == 4 && r.iter().all(|&n| n > 0), "replayed_writes {r:?}:\n{}", w.transcript());
}

/// Rule 3' end to end: a counter four processes increment in turn (a pause after each, so
/// their increments interleave) on a page advised Adaptive. The page switches to update mode
/// once ownership ping-pongs; ownership requests that processes queued before they heard of
/// the switch are answered read-only in update mode instead of switching it back, so most
/// increments are replayed at the coordinator (a replay is only acknowledged in update mode).
/// With the old rule every switch was undone at once and nearly none were.
#[test]
fn contended_adaptive_counter_stays_in_update_mode_and_most_increments_are_replayed() {
    let env = TestEnv::new();
    let adds = 400u64;
    let w = run(&env, &["--coherence", "adaptive", "counter", "--adds", &adds.to_string(), "--gap-us", "50"], 4096, 4);
    let line = format!("total {} expected {}", 4 * adds, 4 * adds);
    assert_eq!(count(&w, &line), 4, "{}", w.transcript());
    let r = w.replayed_writes(&line);
    assert_eq!(r.len(), 4, "{}", w.transcript());
    let replayed: u64 = r.iter().sum();
    assert!(replayed * 2 >= 4 * adds, "only {replayed} of {} increments replayed ({r:?}):\n{}", 4 * adds, w.transcript());
}

#[test]
fn spinlock_update_4_processes() {
    let env = TestEnv::new();
    let w = run(&env, &["--coherence", "update", "spinlock", "--iters", "300"], 4096, 4);
    assert_eq!(count(&w, "spinlock total 1200 expected 1200"), 4, "{}", w.transcript());
}

#[test]
fn neighbours_in_every_mode() {
    let env = TestEnv::new();
    for mode in ["invalidate", "update", "adaptive"] {
        let w = run(&env, &["--coherence", mode, "neighbours"], 4096, 2);
        assert_eq!(count(&w, "neighbours done"), 2, "{mode}:\n{}", w.transcript());
        if mode == "update" {
            let r = w.replayed_writes("neighbours done");
            assert!(r.iter().all(|&n| n > 0), "{mode}: replayed_writes {r:?}");
        }
    }
}

#[test]
fn pipe_read_into_an_update_page_is_served_by_ownership() {
    let env = TestEnv::new();
    let w = run(&env, &["--coherence", "update", "pipe-read"], 1 << 20, 2);
    assert_eq!(count(&w, " ok stats"), 2, "{}", w.transcript());
}

#[test]
fn bulk_memcpy_update_falls_back_to_ownership() {
    let env = TestEnv::new();
    let w = run(&env, &["--coherence", "update", "bulk", "--mib", "8"], 8 << 20, 2);
    assert_eq!(count(&w, " ok stats"), 2, "{}", w.transcript());
}

fn litmus(env: &TestEnv, addr: std::net::SocketAddr, mode: &str, test: &str, procs: u32, iterations: usize) {
    let size = ((1 + iterations * 4) * 4096 + iterations * procs as usize * 16 + 8192) as u64;
    let iters = iterations.to_string();
    let w = run_exe(WORKER, addr, env, &["--coherence", mode, "litmus", "--test", test, "--iterations", &iters], size, procs);
    let summary = w.seen.iter().find(|l| l.text.starts_with(&format!("litmus {test}:")));
    assert!(summary.is_some(), "{mode} {test}: no summary from rank 0:\n{}", w.transcript());
    eprintln!("{mode}: {}", summary.unwrap().text);
}

const LITMUS: [(&str, u32); 6] = [("SB", 2), ("MP", 2), ("LB", 2), ("2+2W", 2), ("CoRR", 2), ("IRIW", 4)];

#[test]
fn litmus_update() {
    let env = TestEnv::new();
    for (test, procs) in LITMUS {
        litmus(&env, env.addr(), "update", test, procs, 500);
    }
}

#[test]
fn litmus_adaptive() {
    let env = TestEnv::new();
    for (test, procs) in LITMUS {
        litmus(&env, env.addr(), "adaptive", test, procs, 500);
    }
}

#[test]
fn update_through_a_lossy_link() {
    let env = TestEnv::new();
    let relay = lossy_relay(env.addr(), 17);
    let w = run_exe(WORKER, relay.local_addr(), &env, &["--coherence", "update", "counter", "--adds", "500"], 4096, 2);
    assert_eq!(count(&w, "total 1000 expected 1000"), 2, "{}", w.transcript());
    for test in ["SB", "MP"] {
        litmus(&env, relay.local_addr(), "update", test, 2, 50);
    }
    assert!(relay.stats().dropped > 0);
}

/// Every replayed store is stamped along its path (`dsm::ReplayPathTimes`): each of them is
/// counted, every stage took some time, and the stages together fit inside the stores' own
/// wall time (the stamps are ordered and on one clock). The only in-process replays of this
/// test binary are these (the other tests replay in worker processes).
#[test]
fn replayed_stores_are_timed_stage_by_stage_within_their_wall_time() {
    const STORES: u64 = 50;
    let env = TestEnv::new();
    let cfg = env.config(&session_name("replay-times"), 4096, 1).build().unwrap();
    let region = dsm::Region::attach(&cfg).unwrap();
    region.advise(0, region.len(), dsm::Coherence::Update).unwrap();
    let word: &[std::sync::atomic::AtomicU64] = region.as_slice(0, 1).unwrap();
    assert_eq!(word[0].load(std::sync::atomic::Ordering::SeqCst), 0); // present, read-only
    let replayed_before = region.stats().unwrap().replayed_writes;
    let before = dsm::ReplayPathTimes::now();
    let t = std::time::Instant::now();
    for i in 1..=STORES {
        word[0].store(i, std::sync::atomic::Ordering::Relaxed);
    }
    let wall = t.elapsed();
    let times = dsm::ReplayPathTimes::now().since(&before);
    let replayed = region.stats().unwrap().replayed_writes - replayed_before;
    assert_eq!(word[0].load(std::sync::atomic::Ordering::SeqCst), STORES);
    assert_eq!(replayed, STORES, "every store went by replay");
    assert_eq!(times.replays, STORES, "{times:?}");
    let means = times.means();
    assert_eq!(means.len(), dsm::replay_times::STAGES.len());
    for (stage, total) in dsm::replay_times::STAGES.iter().zip(times.totals_nanos) {
        assert!(total > 0, "stage {stage} took no time: {times:?}");
    }
    let staged: u64 = times.totals_nanos.iter().sum();
    assert!(u128::from(staged) <= wall.as_nanos(), "stages {staged} ns > wall {wall:?}: {means:?}");
    region.detach().unwrap();
}
