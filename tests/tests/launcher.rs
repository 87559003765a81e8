//! `dsm run` as a user runs it: the session limit checked before anything starts, a failed
//! process named by its DSM rank and launch index, and processes missing at attach named.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dsm_tests::built_binary;

const WORKER: &str = env!("CARGO_BIN_EXE_dsm-worker");

/// `dsm run` with its own fresh certificate directory (so a private coordinator and fresh dev
/// certificates are used, whatever the machine has).
fn dsm_run(certs: &std::path::Path) -> Command {
    let mut cmd = Command::new(built_binary("dsm"));
    cmd.arg("run").env("DSM_CERT_DIR", certs).env_remove("DSM_COORDINATOR");
    cmd
}

#[test]
fn more_processes_than_a_session_holds_are_refused_before_any_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("started");
    let out = dsm_run(tmp.path())
        .args(["-n", "5000", "--", "sh", "-c"])
        .arg(format!("echo started >> {}", marker.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("-n 5000") && err.contains("at most 1024 processes") && err.contains("nothing was started"), "{err}");
    assert!(!marker.exists(), "a process was started");
}

#[test]
fn a_failed_process_is_named_by_dsm_rank_and_launch_index() {
    let tmp = tempfile::tempdir().unwrap();
    let out = dsm_run(tmp.path())
        .args(["-n", "3", "--grace", "1s", "--", WORKER, "exit-rank", "--rank", "1", "--code", "7"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(7), "{stdout}\n{stderr}");
    // `[launch] attached rank 1 of 3 pid P`: which launched process got rank 1.
    let line = stdout
        .lines()
        .find(|l| l.contains("attached rank 1 of 3"))
        .unwrap_or_else(|| panic!("rank 1 never attached:\n{stdout}\n{stderr}"));
    let launch: usize = line[1..line.find(']').unwrap()].parse().unwrap();
    let pid = line.rsplit(' ').next().unwrap();
    let expected = format!("dsm run: process with DSM rank 1 (launch index {launch}, pid {pid}) exited with status 7");
    assert!(stderr.lines().any(|l| l == expected), "expected {expected:?} in:\n{stderr}");
}

#[test]
fn processes_not_joined_after_a_second_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let go = tmp.path().join("go");
    // Launch index 1 holds back until the test has seen dsm run name it.
    let script = format!(
        "if [ \"$DSM_RANK\" = 1 ]; then while [ ! -e {} ]; do sleep 0.05; done; fi; exec {WORKER} barrier --rounds 1",
        go.display()
    );
    let mut child = dsm_run(tmp.path())
        .args(["-n", "2", "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let report = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("not joined yet") => break l,
            Ok(l) => seen.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!("dsm run never said who is missing:\n{}", seen.join("\n"));
            }
        }
    };
    assert!(report.contains("1 of 2 processes joined session"), "{report}");
    assert!(report.contains("not joined yet: launch index 1 (pid "), "{report}");
    assert!(!report.contains("launch index 0"), "launch index 0 has joined: {report}");
    std::fs::write(&go, b"").unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "dsm run ended with {status} after the last process joined");
}

#[test]
fn two_launchers_share_one_session_with_total() {
    let env = dsm_tests::TestEnv::new();
    let name = dsm_tests::session_name("total");
    let addr = env.addr().to_string();
    let launch = || {
        dsm_run(env.cert_dir())
            .args(["-n", "2", "--total", "4", "--coordinator", &addr, "--session", &name])
            .args(["--", WORKER, "barrier", "--rounds", "20"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (launch(), launch());
    let outs = [first.wait_with_output().unwrap(), second.wait_with_output().unwrap()];
    let mut ranks = Vec::new();
    for out in &outs {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
        ranks.extend(text.lines().filter(|l| l.contains("done 20 barriers")).map(ToString::to_string));
    }
    assert_eq!(ranks.len(), 4, "four processes in one session of four: {ranks:?}");
    // Without a shared session name the other machines could not find it: refused.
    let out = dsm_run(env.cert_dir()).args(["-n", "1", "--total", "2", "--", WORKER, "barrier"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--total needs --coordinator and --session"));
}
