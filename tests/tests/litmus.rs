//! Litmus tests across separate processes with plain loads and stores on fresh pages each round:
//! a non-SC outcome fails the test (the worker's rank 0 checks every round).

use std::time::Duration;

use dsm_tests::{lossy_relay, run_workers, session_name, TestEnv};

const WORKER: &str = env!("CARGO_BIN_EXE_dsm-worker");

fn litmus(env: &TestEnv, addr: std::net::SocketAddr, test: &str, procs: u32, iterations: usize) {
    litmus_with(env, addr, test, procs, iterations, &[]);
}

fn litmus_with(env: &TestEnv, addr: std::net::SocketAddr, test: &str, procs: u32, iterations: usize, vars: &[(&str, &str)]) {
    let size = ((1 + iterations * 4) * 4096 + iterations * procs as usize * 16 + 8192) as u64;
    let name = session_name(&format!("litmus-{test}"));
    let iters = iterations.to_string();
    let mut worker_env = env.worker_env(addr, &name, size, procs);
    worker_env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let w = run_workers(
        std::path::Path::new(WORKER),
        &["litmus", "--test", test, "--iterations", &iters],
        &worker_env,
        procs as usize,
        Duration::from_secs(300),
    );
    let summary = w.seen.iter().find(|l| l.text.starts_with(&format!("litmus {test}:")));
    assert!(summary.is_some(), "no summary from rank 0:\n{}", w.transcript());
    eprintln!("{}", summary.unwrap().text);
    // Direct transfers are on by default, but whether a round's pages come from a peer or
    // through the coordinator depends on the interleaving (2+2W mostly recalls pages before
    // anyone reads them): only their absence is checked here, with them off. That they are the
    // default is checked by `forwards.rs`.
    let forwarded = w.seen.iter().any(|l| l.text.contains(" ok stats") && !l.text.contains("pages_from_peers: 0,"));
    eprintln!("pages came from peers: {forwarded}");
    if vars.contains(&("DSM_DIRECT", "0")) {
        assert!(!forwarded, "a page came from a peer with direct transfers off:\n{}", w.transcript());
    }
}

#[test]
fn sb() {
    let env = TestEnv::new();
    litmus(&env, env.addr(), "SB", 2, 2000);
}

#[test]
fn mp() {
    let env = TestEnv::new();
    litmus(&env, env.addr(), "MP", 2, 2000);
}

#[test]
fn lb() {
    let env = TestEnv::new();
    litmus(&env, env.addr(), "LB", 2, 2000);
}

#[test]
fn two_plus_two_w() {
    let env = TestEnv::new();
    litmus(&env, env.addr(), "2+2W", 2, 2000);
}

#[test]
fn corr() {
    let env = TestEnv::new();
    litmus(&env, env.addr(), "CoRR", 2, 2000);
}

#[test]
fn iriw() {
    let env = TestEnv::new();
    litmus(&env, env.addr(), "IRIW", 4, 2000);
}

/// Without direct transfers (the other tests here run with them, the default) every page
/// goes through the coordinator's home copy.
#[test]
fn mp_sb_and_iriw_through_the_coordinator() {
    let env = TestEnv::new();
    let off = [("DSM_DIRECT", "0")];
    litmus_with(&env, env.addr(), "MP", 2, 1000, &off);
    litmus_with(&env, env.addr(), "SB", 2, 1000, &off);
    litmus_with(&env, env.addr(), "IRIW", 4, 1000, &off);
}

#[test]
fn all_through_a_lossy_link() {
    let env = TestEnv::new();
    let relay = lossy_relay(env.addr(), 3);
    for (test, procs) in [("SB", 2), ("MP", 2), ("LB", 2), ("2+2W", 2), ("CoRR", 2), ("IRIW", 4)] {
        litmus(&env, relay.local_addr(), test, procs, 60);
    }
    assert!(relay.stats().dropped > 0);
}

#[test]
fn all_at_20_percent_loss_with_reordering_and_duplicates() {
    // A short delay keeps the run short; reordering holds a datagram back by delay + jitter +
    // 1 ms, so later ones really overtake it.
    let env = TestEnv::new();
    let relay = dsm_relay::spawn(dsm_relay::RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        to: env.addr(),
        link: dsm_relay::LinkConfig {
            loss: 0.20,
            delay: Duration::from_millis(1),
            jitter: Duration::from_micros(500),
            reorder: 0.02,
            duplicate: 0.02,
            seed: 20,
            ..Default::default()
        },
    })
    .expect("start relay");
    for (test, procs) in [("SB", 2), ("MP", 2), ("LB", 2), ("2+2W", 2), ("CoRR", 2), ("IRIW", 4)] {
        litmus(&env, relay.local_addr(), test, procs, 20);
    }
    let stats = relay.stats();
    eprintln!("relay {stats}");
    assert!(stats.dropped > 0 && stats.reordered > 0 && stats.duplicated > 0, "{stats}");
}
