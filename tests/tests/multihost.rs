//! Three machines made of network namespaces on one bridge (addresses from 198.18.0.0/15, only
//! inside those namespaces): the coordinator on one, with a certificate from
//! `dsm certs --san <its address>`; a process of the pi example on each of the other two, each
//! with its own client certificate; `dsm status` from a host other than the coordinator's lists
//! the session while it runs, with both processes' addresses. Skipped, saying why, without root
//! or `ip netns`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dsm_proto::{SessionState, StatusReport};
use dsm_tests::coordinator_process::CoordinatorProcess;
use dsm_tests::netns::{self, Lab};
use dsm_tests::{built_binary, session_name, signal, Workers};

/// `dsm status` run on `host`, with that host's certificates.
fn status(lab: &Lab, host: &str, certs: &Path, coordinator: &str, json: bool) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.ns(host)])
        .arg(built_binary("dsm"))
        .args(["status", "--coordinator", coordinator, "--cert-dir"])
        .arg(certs)
        .env_remove("DSM_SERVER_NAME");
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "dsm status on {host}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `dsm status --json` on `host` until `pred` holds for the session `name`.
fn wait_status(
    lab: &Lab,
    host: &str,
    certs: &Path,
    coordinator: &str,
    name: &str,
    pred: impl Fn(&dsm_proto::SessionStatus) -> bool,
) -> StatusReport {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let report: StatusReport = serde_json::from_str(&status(lab, host, certs, coordinator, true)).unwrap();
        if report.sessions.iter().any(|s| s.name == name && pred(s)) {
            return report;
        }
        assert!(Instant::now() < deadline, "session {name} never reached the expected state: {report:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pi_on_two_hosts_with_the_coordinator_on_a_third_and_dsm_status_from_another() {
    if let Some(why) = netns::unavailable() {
        eprintln!("skipped: the multi-host test needs network namespaces, and {why}");
        return;
    }
    let lab = match Lab::new(&format!("dsmt{}", std::process::id()), &["coord", "a", "b"]) {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("skipped: network namespaces cannot be created here: {e}");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    let coord_ip = lab.addr("coord").to_string();
    let made = Command::new(built_binary("dsm"))
        .args(["certs", "--dir", certs.to_str().unwrap(), "--san", &coord_ip, "--client", "host-a", "--client", "host-b"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));

    let exec_coord = lab.exec("coord");
    let prefix: Vec<&str> = exec_coord.iter().map(String::as_str).collect();
    let listen = format!("{coord_ip}:0");
    let coordinator = CoordinatorProcess::start(
        &prefix,
        &["--listen", &listen, "--cert-dir", certs.to_str().unwrap()],
        &tmp.path().join("coordinator.log"),
    );
    let addr = coordinator.addr.to_string();
    assert!(addr.starts_with(&coord_ip), "{addr}");

    let name = session_name("multihost");
    let pi = built_binary("pi");
    let process_on = |host: &str| {
        let env = vec![
            ("DSM_COORDINATOR".to_string(), addr.clone()),
            ("DSM_SESSION".to_string(), name.clone()),
            ("DSM_NPROCS".to_string(), "2".to_string()),
            ("DSM_SIZE".to_string(), "1MiB".to_string()),
            ("DSM_CERT_DIR".to_string(), certs.join("clients").join(format!("host-{host}")).display().to_string()),
            ("DSM_ATTACH_TIMEOUT".to_string(), "60s".to_string()),
            // Pages go from host to host directly (peer connections across the bridge).
            ("DSM_DIRECT".to_string(), "1".to_string()),
        ];
        let ns = lab.ns(host);
        let args = ["netns", "exec", ns.as_str(), pi.to_str().unwrap(), "--steps", "2000000"];
        Workers::spawn(Path::new("ip"), &args, &env, 1)
    };
    let host_b_certs = certs.join("clients/host-b");

    // Host a joins; the session waits for its second process.
    let mut a = process_on("a");
    wait_status(&lab, "b", &host_b_certs, &addr, &name, |s| s.state == SessionState::Waiting && s.attached == 1);
    // Hold host a's process still (`ip netns exec` execs the program, so this pid is pi), so
    // the session, once host b joins, is certainly still running when dsm status looks.
    let a_pid = a.children[0].id();
    assert!(signal(a_pid, "STOP"));
    let mut b = process_on("b");
    let report = wait_status(&lab, "b", &host_b_certs, &addr, &name, |s| s.state == SessionState::Running);
    let s = report.sessions.iter().find(|s| s.name == name).unwrap();
    assert_eq!((s.attached, s.nprocs, s.size), (2, 2, 1 << 20), "{s:?}");
    let mut ranks: Vec<u32> = s.members.iter().filter_map(|m| m.rank).collect();
    ranks.sort_unstable();
    assert_eq!(ranks, [0, 1], "{s:?}");
    let mut hosts: Vec<String> = s
        .members
        .iter()
        .map(|m| m.peer.as_deref().and_then(|p| p.rsplit_once(':')).map(|(ip, _)| ip.to_string()).unwrap_or_default())
        .collect();
    hosts.sort();
    assert_eq!(hosts, [lab.addr("a"), lab.addr("b")], "{s:?}");
    let table = status(&lab, "b", &host_b_certs, &addr, false);
    let row = table.lines().find(|l| l.starts_with(&name)).unwrap_or_else(|| panic!("no row for {name}:\n{table}"));
    assert_eq!(row.split_whitespace().take(3).collect::<Vec<_>>(), [name.as_str(), "running", "2/2"], "{table}");
    for host in ["a", "b"] {
        assert!(table.contains(&format!("{}:", lab.addr(host))), "{table}");
    }
    assert!(signal(a_pid, "CONT"));

    // Both finish, and the result is right.
    let codes = [a.wait_all(Duration::from_secs(120)), b.wait_all(Duration::from_secs(120))];
    assert_eq!(codes, [vec![Some(0)], vec![Some(0)]], "{}\n{}", a.transcript(), b.transcript());
    let result = a
        .seen
        .iter()
        .chain(&b.seen)
        .find(|l| l.text.starts_with("result: pi="))
        .unwrap_or_else(|| panic!("no result line:\n{}\n{}", a.transcript(), b.transcript()));
    assert!(result.text.contains("nprocs=2") && result.text.ends_with("correct=true"), "{}", result.text);
    drop(coordinator);
}
