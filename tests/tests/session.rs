//! Sessions, barriers and semaphores across real processes and real QUIC connections with real
//! mutual TLS.

use std::time::{Duration, Instant};

use dsm_tests::{lossy_relay, run_workers, session_name, TestEnv, Workers};

const WORKER: &str = env!("CARGO_BIN_EXE_dsm-worker");
const PAGE: u64 = 4096;

fn worker() -> &'static std::path::Path {
    std::path::Path::new(WORKER)
}

#[test]
fn four_processes_200_barriers() {
    let env = TestEnv::new();
    let name = session_name("barrier");
    let w = run_workers(worker(), &["barrier", "--rounds", "200"], &env.worker_env(env.addr(), &name, PAGE, 4), 4, Duration::from_secs(120));
    let done = w.seen.iter().filter(|l| l.text.contains("done 200 barriers")).count();
    assert_eq!(done, 4, "{}", w.transcript());
    // Ranks are 0..3, each exactly once.
    let mut ranks: Vec<String> = w.seen.iter().filter(|l| l.text.starts_with("attached rank")).map(|l| l.text.split_whitespace().nth(2).unwrap().to_string()).collect();
    ranks.sort();
    assert_eq!(ranks, ["0", "1", "2", "3"]);
}

#[test]
fn semaphore_ping_pong_1000_handoffs() {
    let env = TestEnv::new();
    let name = session_name("pingpong");
    let w = run_workers(worker(), &["sem-pingpong", "--rounds", "1000"], &env.worker_env(env.addr(), &name, PAGE, 2), 2, Duration::from_secs(120));
    assert_eq!(w.seen.iter().filter(|l| l.text.contains("done 1000 hand-offs")).count(), 2, "{}", w.transcript());
}

#[test]
fn counting_semaphore_releases_several_waiters() {
    let env = TestEnv::new();
    let name = session_name("count");
    let w = run_workers(worker(), &["sem-count", "--per-waiter", "7"], &env.worker_env(env.addr(), &name, PAGE, 4), 4, Duration::from_secs(60));
    assert_eq!(w.seen.iter().filter(|l| l.text.contains("done")).count(), 4, "{}", w.transcript());
}

#[test]
fn counting_semaphore_counts_in_process() {
    // Three waiter threads, each with its own connection, released one post at a time.
    let env = TestEnv::new();
    let name = session_name("count-threads");
    let cfg = env.config(&name, PAGE, 4).build().unwrap();
    let sessions: Vec<dsm::Session> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4).map(|_| s.spawn(|| dsm::Session::attach(&cfg).unwrap())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (poster, waiters): (Vec<_>, Vec<_>) = sessions.iter().partition(|s| s.rank() == 0);
    let released = std::sync::atomic::AtomicU32::new(0);
    std::thread::scope(|s| {
        for w in &waiters {
            let released = &released;
            s.spawn(move || {
                w.semaphore("gate").unwrap().wait().unwrap();
                released.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        let gate = poster[0].semaphore("gate").unwrap();
        for _ in 0..3 {
            gate.post().unwrap();
        }
    });
    assert_eq!(released.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[test]
fn mismatched_size_and_count_are_clear_errors() {
    let env = TestEnv::new();
    let name = session_name("mismatch");
    // The first process declares (8192 bytes, 2 processes); the others try once the coordinator
    // shows the session waiting (its status view), so there is no race about who declares.
    let first = std::thread::spawn({
        let cfg = env.config(&name, 2 * PAGE, 2).attach_timeout(Duration::from_secs(60)).build().unwrap();
        move || dsm::Session::attach(&cfg)
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.coordinator.status().iter().any(|l| l.contains(&name) && l.contains("waiting, 1 of 2")) {
        assert!(Instant::now() < deadline, "the first attach never showed up: {:?}", env.coordinator.status());
        std::thread::sleep(Duration::from_millis(5));
    }
    let probe = env.config(&name, PAGE, 2).build().unwrap();
    let err = match dsm::Session::attach(&probe) {
        Err(dsm::Error::Refused(r)) => r,
        other => panic!("size mismatch not detected: {other:?}"),
    };
    let text = err.to_string();
    assert!(text.contains("8192") && text.contains("4096") && text.contains(&name), "{text}");
    let err = dsm::Session::attach(&env.config(&name, 2 * PAGE, 3).build().unwrap()).unwrap_err();
    assert!(matches!(err, dsm::Error::Refused(dsm_proto::Refusal::NprocsMismatch { declared: 2, requested: 3, .. })), "{err}");
    assert!(err.to_string().contains("declared for 2 processes"), "{err}");
    // The right shape still joins.
    let second = dsm::Session::attach(&env.config(&name, 2 * PAGE, 2).build().unwrap()).unwrap();
    let first = first.join().unwrap().unwrap();
    assert_eq!(first.rank() + second.rank(), 1);
}

#[test]
fn attach_timeout_names_the_missing_processes() {
    let env = TestEnv::new();
    let name = session_name("timeout");
    let cfg = env.config(&name, PAGE, 3).attach_timeout(Duration::from_millis(500)).build().unwrap();
    let err = dsm::Session::attach(&cfg).unwrap_err();
    assert!(matches!(err, dsm::Error::AttachTimeout { joined: 1, nprocs: 3, .. }), "{err}");
    assert!(err.to_string().contains("1 of 3 processes"), "{err}");
}

#[test]
fn protocol_version_mismatch_is_clear_on_the_client() {
    let env = TestEnv::new();
    let cfg = env.config(&session_name("version"), PAGE, 1).hello_version(99).build().unwrap();
    let err = dsm::Session::attach(&cfg).unwrap_err();
    assert!(
        matches!(err, dsm::Error::Version(dsm_proto::HelloError::VersionMismatch { ours: 99, theirs: dsm_proto::PROTOCOL_VERSION })),
        "{err}"
    );
    assert!(err.to_string().contains("protocol version mismatch"), "{err}");
}

#[test]
fn long_semaphore_names_are_rejected_not_truncated() {
    let env = TestEnv::new();
    let s = dsm::Session::attach(&env.config(&session_name("names"), PAGE, 1).build().unwrap()).unwrap();
    let long = "n".repeat(dsm::MAX_SEMAPHORE_NAME + 1);
    let err = s.semaphore(&long).unwrap_err();
    assert!(err.to_string().contains("65 bytes long; the limit is 64"), "{err}");
    s.semaphore(&"n".repeat(dsm::MAX_SEMAPHORE_NAME)).unwrap().post().unwrap();
}

#[test]
fn killed_process_is_reported_as_lost_rank() {
    let env = TestEnv::with_idle_timeout(Duration::from_secs(2));
    let name = session_name("kill");
    let mut w = Workers::spawn(worker(), &["hang-in-barrier", "--victim", "2"], &env.worker_env(env.addr(), &name, PAGE, 3), 3);
    let victim = w.wait_line(Duration::from_secs(60), |l| l.text.starts_with("victim ready")).unwrap_or_else(|| panic!("no victim:\n{}", w.transcript()));
    // Both survivors must be blocked in the second barrier before the kill.
    for _ in 0..2 {
        let seen = w.seen.iter().filter(|l| l.text == "entering second barrier").count();
        if seen < 2 {
            w.wait_line(Duration::from_secs(30), |l| l.text == "entering second barrier");
        }
    }
    let killed_at = Instant::now();
    w.children[victim.worker].kill().unwrap();
    let codes = w.wait_all(Duration::from_secs(30));
    let took = killed_at.elapsed();
    for (i, code) in codes.iter().enumerate() {
        if i == victim.worker {
            continue;
        }
        assert_eq!(*code, Some(3), "survivor {i} should fail:\n{}", w.transcript());
    }
    let lost = w.seen.iter().filter(|l| l.stderr && l.text.contains("rank 2 lost")).count();
    assert_eq!(lost, 2, "both survivors name the lost rank:\n{}", w.transcript());
    assert!(took < Duration::from_secs(20), "detection took {took:?}");
}

#[test]
fn two_sessions_at_once_and_names_are_reusable() {
    let env = TestEnv::new();
    let a = session_name("a");
    let b = session_name("b");
    let mut wa = Workers::spawn(worker(), &["barrier", "--rounds", "50"], &env.worker_env(env.addr(), &a, PAGE, 2), 2);
    let mut wb = Workers::spawn(worker(), &["sem-pingpong", "--rounds", "100"], &env.worker_env(env.addr(), &b, 2 * PAGE, 2), 2);
    assert_eq!(wa.wait_all(Duration::from_secs(60)), vec![Some(0); 2], "{}", wa.transcript());
    assert_eq!(wb.wait_all(Duration::from_secs(60)), vec![Some(0); 2], "{}", wb.transcript());
    // Session `a` ended: its name can be used again with another shape.
    run_workers(worker(), &["barrier", "--rounds", "5"], &env.worker_env(env.addr(), &a, 3 * PAGE, 3), 3, Duration::from_secs(60));
}

#[test]
fn barriers_and_semaphores_through_a_lossy_link() {
    let env = TestEnv::new();
    let relay = lossy_relay(env.addr(), 7);
    let name = session_name("lossy-barrier");
    run_workers(worker(), &["barrier", "--rounds", "200"], &env.worker_env(relay.local_addr(), &name, PAGE, 4), 4, Duration::from_secs(240));
    let name = session_name("lossy-sem");
    run_workers(worker(), &["sem-pingpong", "--rounds", "1000"], &env.worker_env(relay.local_addr(), &name, PAGE, 2), 2, Duration::from_secs(240));
    let name = session_name("lossy-count");
    run_workers(worker(), &["sem-count", "--per-waiter", "5"], &env.worker_env(relay.local_addr(), &name, PAGE, 4), 4, Duration::from_secs(240));
    let stats = relay.stats();
    assert!(stats.dropped > 0 && stats.forwarded > 0, "the relay really dropped datagrams: {stats:?}");
}

#[test]
fn semaphore_with_count_1_is_a_mutex_and_another_count_for_the_name_is_an_error() {
    // Two sessions (connections) of one 2-process session, in threads.
    let env = TestEnv::new();
    let name = session_name("initial-count");
    let cfg = env.config(&name, PAGE, 2).build().unwrap();
    let sessions: Vec<dsm::Session> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2).map(|_| s.spawn(|| dsm::Session::attach(&cfg).unwrap())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (a, b) = (&sessions[0], &sessions[1]);
    // Created at 1: the first wait passes without any post.
    let lock = a.semaphore_with_count("lock", 1).unwrap();
    assert_eq!(lock.initial_count(), 1);
    lock.wait().unwrap();
    // The same process asking for another count is refused.
    let err = a.semaphore("lock").unwrap().wait().unwrap_err();
    assert!(err.to_string().contains("created with initial count 1") && err.to_string().contains("asked for 0"), "{err}");
    // So is another process.
    let err = b.semaphore_with_count("lock", 3).unwrap().wait().unwrap_err();
    assert!(err.to_string().contains("semaphore 'lock' was created with initial count 1"), "{err}");
    // ... and so is a post.
    let err = b.semaphore_with_count("lock", 2).unwrap().post().unwrap_err();
    assert!(err.to_string().contains("asked for 2"), "{err}");
    // The mutex still works: b blocks until a posts.
    std::thread::scope(|s| {
        let waiter = s.spawn(|| b.semaphore_with_count("lock", 1).unwrap().wait());
        lock.post().unwrap();
        waiter.join().unwrap().unwrap();
    });
    // semaphore() starts at 0: a wait blocks until a post.
    std::thread::scope(|s| {
        let waiter = s.spawn(|| b.semaphore("signal").unwrap().wait());
        a.semaphore("signal").unwrap().post().unwrap();
        waiter.join().unwrap().unwrap();
    });
}
