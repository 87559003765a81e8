//! Failures are errors, never hangs, and never stale reads: processes whose coordinator is
//! killed or shut down stop with a clear message — the one spinning on a valid read-only copy
//! included — and processes started by a killed `dsm run` do not outlive it.
//!
//! Real coordinator processes, real workers. Deadlines here are "it did not hang" bounds (the
//! idle timeout plus a wide margin), not performance measurements.

use std::time::{Duration, Instant};

use dsm_tests::coordinator_process::CoordinatorProcess;
use dsm_tests::{session_name, Workers};

const WORKER: &str = env!("CARGO_BIN_EXE_dsm-worker");
/// The idle timeout the coordinators and workers of these tests use.
const IDLE: &str = "3s";
const IDLE_SECS: u64 = 3;
/// Beyond the idle timeout: time to notice, print and exit on a loaded 2-core machine.
const MARGIN: Duration = Duration::from_secs(20);

fn worker() -> &'static std::path::Path {
    std::path::Path::new(WORKER)
}

/// A coordinator process with a short idle timeout, its certificates and log in `dir`.
struct Coordinator {
    process: CoordinatorProcess,
    dir: tempfile::TempDir,
}

impl Coordinator {
    fn start() -> Coordinator {
        let dir = tempfile::tempdir().unwrap();
        dsm_cert::generate(dir.path(), &[]).expect("dev certificates");
        let certs = dir.path().to_str().unwrap().to_string();
        let args = ["--listen", "127.0.0.1:0", "--cert-dir", &certs, "--idle-timeout", IDLE, "--keep-alive", "500ms"];
        let process = CoordinatorProcess::start(&[], &args, &dir.path().join("coordinator.log"));
        Coordinator { process, dir }
    }

    fn signal(&self, name: &str) {
        assert!(dsm_tests::signal(self.process.pid(), name), "kill -{name} the coordinator");
    }

    /// A worker's environment, with the same short idle timeout.
    fn worker_env(&self, session: &str, nprocs: u32) -> Vec<(String, String)> {
        vec![
            ("DSM_COORDINATOR".into(), self.process.addr.to_string()),
            ("DSM_CERT_DIR".into(), self.dir.path().display().to_string()),
            ("DSM_SESSION".into(), session.into()),
            ("DSM_SIZE".into(), "4096".into()),
            ("DSM_NPROCS".into(), nprocs.to_string()),
            ("DSM_ATTACH_TIMEOUT".into(), "60s".into()),
            ("DSM_IDLE_TIMEOUT".into(), IDLE.into()),
            ("DSM_KEEP_ALIVE".into(), "500ms".into()),
        ]
    }
}

/// Two spinning ping-pong workers at a fresh coordinator, both past their first barrier.
fn spinning_pair() -> (Coordinator, Workers) {
    let coordinator = Coordinator::start();
    let env = coordinator.worker_env(&session_name("coord-gone"), 2);
    let mut w = Workers::spawn(worker(), &["spin-pingpong", "--rounds", "100000000000"], &env, 2);
    for rank in 0..2 {
        let started = w.wait_line(Duration::from_secs(60), |l| l.text == format!("rank {rank} passed the first barrier"));
        assert!(started.is_some(), "rank {rank} did not start:\n{}", w.transcript());
    }
    (coordinator, w)
}

/// Both workers must exit non-zero, each with a one-line fatal message naming the coordinator.
fn assert_both_stopped(w: &mut Workers, within: Duration, expect: &str) {
    let start = Instant::now();
    let codes = w.wait_all(within);
    let took = start.elapsed();
    assert!(
        codes.iter().all(|c| c.is_some_and(|c| c != 0)),
        "both workers must exit non-zero within {within:?} (codes {codes:?} after {took:?}):\n{}",
        w.transcript()
    );
    for worker in 0..2 {
        let fatal: Vec<&str> = w
            .seen
            .iter()
            .filter(|l| l.worker == worker && l.stderr && l.text.starts_with("dsm: fatal: "))
            .map(|l| l.text.as_str())
            .collect();
        assert_eq!(fatal.len(), 1, "worker {worker} must print one fatal line:\n{}", w.transcript());
        assert!(fatal[0].contains(expect), "worker {worker}: {:?} does not say {expect:?}", fatal[0]);
    }
}

#[test]
fn busy_wait_ping_pong_stops_with_a_clear_error_when_the_coordinator_is_killed() {
    let (coordinator, mut w) = spinning_pair();
    coordinator.signal("KILL");
    assert_both_stopped(&mut w, Duration::from_secs(IDLE_SECS) + MARGIN, "went silent");
}

#[test]
fn busy_wait_ping_pong_stops_with_a_clear_error_when_the_coordinator_shuts_down() {
    let (coordinator, mut w) = spinning_pair();
    coordinator.signal("TERM");
    // A graceful shutdown is announced: no need to wait for the idle timeout.
    assert_both_stopped(&mut w, Duration::from_secs(10), "shut down");
}

#[test]
fn a_process_spinning_on_a_read_only_copy_stops_when_the_coordinator_is_killed() {
    let coordinator = Coordinator::start();
    let env = coordinator.worker_env(&session_name("spin-read"), 2);
    let mut w = Workers::spawn(worker(), &["spin-read"], &env, 2);
    let spinning = w.wait_line(Duration::from_secs(60), |l| l.text.contains("spinning on a read-only copy"));
    let spinner = spinning.unwrap_or_else(|| panic!("nobody spins:\n{}", w.transcript())).worker;
    assert!(w.wait_line(Duration::from_secs(60), |l| l.text == "rank 0 waiting in a barrier").is_some());
    coordinator.signal("KILL");
    let codes = w.wait_all(Duration::from_secs(IDLE_SECS) + MARGIN);
    assert!(codes.iter().all(|c| c.is_some_and(|c| c != 0)), "codes {codes:?}:\n{}", w.transcript());
    // The spinner never faults by itself: its copy is revoked, and its next load stops it.
    let fatal = w.seen.iter().find(|l| l.worker == spinner && l.stderr && l.text.starts_with("dsm: fatal: "));
    let fatal = fatal.unwrap_or_else(|| panic!("no fatal line from the spinner:\n{}", w.transcript()));
    assert!(fatal.text.contains("went silent") && fatal.text.contains("touched the shared region afterwards"), "{}", fatal.text);
    // The other one gets the error from its barrier.
    let waiter = 1 - spinner;
    assert!(
        w.seen.iter().any(|l| l.worker == waiter && l.stderr && l.text.contains("lost the connection to the coordinator")),
        "{}",
        w.transcript()
    );
}

/// The pids of `parent`'s children (from /proc).
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        if rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            out.push(pid);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; only its parent (gone) would reap it.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) != Some("Z"))
}

#[test]
fn processes_started_by_dsm_run_do_not_outlive_it_when_it_is_killed() {
    let pingpong_sem = dsm_tests::sibling_binary("pingpong-sem");
    let certs = tempfile::tempdir().unwrap();
    let mut run = std::process::Command::new(dsm_tests::sibling_binary("dsm"))
        .args(["run", "-n", "2", "--cert-dir"])
        .arg(certs.path())
        .arg("--")
        .arg(&pingpong_sem)
        .args(["--rounds", "1000000000"])
        .env("DSM_IDLE_TIMEOUT", IDLE)
        .env("DSM_KEEP_ALIVE", "500ms")
        .env_remove("DSM_COORDINATOR")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start dsm run");
    // Wait for both processes to be running (and attached: ping-pong has started).
    let deadline = Instant::now() + Duration::from_secs(60);
    let children = loop {
        let c = children_of(run.id());
        if c.len() == 2 {
            break c;
        }
        assert!(Instant::now() < deadline, "dsm run did not start 2 processes");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = run.kill(); // SIGKILL: no chance to stop its children itself
    let _ = run.wait();
    let deadline = Instant::now() + Duration::from_secs(IDLE_SECS) + MARGIN;
    while children.iter().any(|&p| alive(p)) {
        if Instant::now() > deadline {
            for &p in &children {
                // SAFETY: plain syscall; clean up before failing.
                unsafe { libc::kill(p as i32, libc::SIGKILL) };
            }
            panic!("processes {children:?} outlived the killed dsm run");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
