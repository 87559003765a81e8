//! Link outages shorter than the idle timeout: every process reaches the coordinator through the
//! relay, which cuts the link in both directions for 3 s in the middle of a workload (default
//! transport: 10 s idle timeout, 1 s keep-alive). QUIC retransmits once the link is back, and
//! every operation that was in flight completes with the exact result.
//!
//! Each test starts the outage when a worker prints `rank R begin` (its timed part started),
//! then checks that no worker finished before the outage ended, so a workload too short to be
//! cut fails the test instead of passing it without an outage.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use dsm_tests::{session_name, TestEnv, Workers};

const WORKER: &str = env!("CARGO_BIN_EXE_dsm-worker");
const OUTAGE: Duration = Duration::from_secs(3);
/// Every operation crosses the relay with this one-way delay, so that the workloads last long
/// enough to be cut in the middle (and do not finish between a worker's `begin` and the cut).
const DELAY: Duration = Duration::from_millis(1);
/// Generous: 3 s of outage, up to a few seconds of QUIC's backed-off probes, and the workload.
const TIMEOUT: Duration = Duration::from_secs(120);

fn relay(to: SocketAddr) -> dsm_relay::RelayThread {
    dsm_relay::spawn(dsm_relay::RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        to,
        link: dsm_relay::LinkConfig { delay: DELAY, ..Default::default() },
    })
    .expect("start relay")
}

/// Runs `nprocs` workers with `args` through a relay, cuts the link for [`OUTAGE`] when worker
/// output matches `begin`, and returns the workers once all exited 0. `finished` recognizes a
/// line printed only at the end of the workload.
fn through_an_outage(
    args: &[&str],
    size: u64,
    nprocs: u32,
    begin: &str,
    finished: impl Fn(&str) -> bool,
) -> Workers {
    let env = TestEnv::new();
    assert_eq!(dsm_cert::Transport::default().idle_timeout, Duration::from_secs(10));
    let relay = relay(env.addr());
    let name = session_name(&format!("outage-{}", args[0]));
    let mut w = Workers::spawn(
        Path::new(WORKER),
        args,
        &env.worker_env(relay.local_addr(), &name, size, nprocs),
        nprocs as usize,
    );
    if w.wait_line(TIMEOUT, |l| l.text == begin).is_none() {
        panic!("no `{begin}` line:\n{}", w.transcript());
    }
    let (_, end) = relay.begin_outage(OUTAGE);
    // Nothing may finish while the link is down (the wait ends when the outage does).
    let early = w.wait_line(end.saturating_duration_since(Instant::now()), |l| finished(&l.text));
    assert!(
        early.is_none(),
        "{early:?} before the outage ended: the workload is too short to be cut\n{}",
        w.transcript()
    );
    let done = w.wait_line(TIMEOUT, |l| finished(&l.text));
    // For the log: how long after the link came back the first worker finished (QUIC's
    // backed-off probes, then the rest of the workload).
    eprintln!("{args:?}: first worker finished {:?} after the outage ({done:?})", end.elapsed());
    let codes = w.wait_all(TIMEOUT);
    assert_eq!(codes, vec![Some(0); nprocs as usize], "{}", w.transcript());
    let stats = relay.stats();
    assert!(stats.outage_dropped > 0, "the outage dropped nothing: {stats}");
    eprintln!("{args:?}: relay {stats}");
    w
}

fn count(w: &Workers, pattern: &str) -> usize {
    w.seen.iter().filter(|l| l.text.contains(pattern)).count()
}

#[test]
fn busy_wait_ping_pong_survives_an_outage() {
    let w = through_an_outage(&["spin-pingpong", "--rounds", "300"], 4096, 2, "rank 0 begin", |t| {
        t.contains("done 300 hand-offs")
    });
    // Each rank checked that the turn word ended at exactly 300.
    assert_eq!(count(&w, "done 300 hand-offs"), 2, "{}", w.transcript());
}

#[test]
fn barrier_loop_survives_an_outage() {
    let w = through_an_outage(&["barrier", "--rounds", "300"], 4096, 3, "rank 0 begin", |t| {
        t.contains("done 300 barriers")
    });
    assert_eq!(count(&w, "done 300 barriers"), 3, "{}", w.transcript());
}

#[test]
fn replayed_store_counter_survives_an_outage() {
    // Update mode: every fetch_add is decoded, sent to the coordinator and replayed there.
    let w = through_an_outage(
        &["--coherence", "update", "counter", "--adds", "300"],
        4096,
        3,
        "rank 0 begin",
        |t| t.contains("total"),
    );
    assert_eq!(count(&w, "total 900 expected 900"), 3, "{}", w.transcript());
    // The stats line of each rank shows its stores went by replay, not by ownership.
    let replayed = w.replayed_writes("total 900");
    assert!(replayed.len() == 3 && replayed.iter().all(|&n| n >= 300), "{replayed:?}\n{}", w.transcript());
}

#[test]
fn bulk_read_survives_an_outage() {
    // Rank 0 writes 2 MiB; once past the barrier rank 1 reads them all (page faults, pages
    // recalled from rank 0) and checks their checksum, then both rewrite and check slices.
    let w = through_an_outage(&["bulk", "--mib", "2"], 2 << 20, 2, "rank 1 begin", |t| {
        t.contains(" ok stats")
    });
    assert_eq!(count(&w, " ok stats"), 2, "{}", w.transcript());
}
