//! What an operator sees of a running coordinator, through the real `dsm-coordinator` and `dsm`
//! binaries: Prometheus metrics at `/metrics`, plain logs in a file, and `dsm status`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dsm_proto::{decode_frame, encode_frame, AttachRequest, Hello, ToCoordinator, ToProcess, HELLO_LEN};
use dsm_tests::coordinator_process::CoordinatorProcess;
use dsm_tests::scrape::scrape;
use dsm_tests::{built_binary, session_name};

const PAGE: usize = 4096;

fn start(certs: &Path, log: &Path, extra: &[&str]) -> CoordinatorProcess {
    dsm_cert::generate(certs, &[]).expect("certificates");
    let dir = certs.to_str().unwrap();
    let mut args = vec!["--listen", "127.0.0.1:0", "--cert-dir", dir];
    args.extend_from_slice(extra);
    CoordinatorProcess::start(&[], &args, log)
}

fn config(addr: SocketAddr, certs: &Path, session: &str, nprocs: u32) -> dsm::Config {
    dsm::Config::builder()
        .coordinator(addr.to_string())
        .cert_dir(certs)
        .session(session)
        .size(16 * PAGE as u64)
        .nprocs(nprocs)
        .attach_timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

#[test]
fn metrics_scraped_during_a_session_parse_as_prometheus_text_and_move() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    let coordinator = start(&certs, &tmp.path().join("log"), &["--metrics", "127.0.0.1:0"]);
    let metrics = coordinator.metrics.expect("metrics address");
    let cfg = config(coordinator.addr, &certs, &session_name("metrics"), 2);

    // Two processes' worth of regions in this process; the test thread scrapes between phases:
    // rank 0 writes 8 pages, scrape, rank 1 reads them (8 pages move), scrape.
    let phase = std::sync::Barrier::new(3);
    let scrapes = std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let r = dsm::Region::attach(&cfg).unwrap();
                if r.rank() == 0 {
                    for p in 0..8 {
                        // SAFETY: the region is 16 pages long and nothing else uses this byte.
                        unsafe { r.as_ptr().add(p * PAGE).write_volatile(p as u8 + 1) };
                    }
                }
                r.barrier().unwrap();
                phase.wait(); // scrape 1
                phase.wait();
                if r.rank() == 1 {
                    for p in 0..8 {
                        // SAFETY: as above; reading a byte rank 0 wrote before the barrier.
                        assert_eq!(unsafe { r.as_ptr().add(p * PAGE).read_volatile() }, p as u8 + 1);
                    }
                }
                r.barrier().unwrap();
                phase.wait(); // scrape 2
                phase.wait();
                r.detach().unwrap();
            });
        }
        phase.wait();
        let first = scrape(metrics);
        phase.wait();
        phase.wait();
        let second = scrape(metrics);
        phase.wait();
        (first, second)
    });
    let (first, second) = scrapes;
    assert_eq!(first.status, 200);
    assert!(first.content_type.starts_with("application/openmetrics-text"), "{}", first.content_type);
    for m in [&first, &second] {
        assert_eq!(m.value("dsm_sessions", &[("state", "running")]), 1.0, "{}", m.text);
        assert_eq!(m.value("dsm_connections_open", &[]), 2.0, "{}", m.text);
    }
    let read = |m: &dsm_tests::scrape::Metrics| m.value("dsm_faults_served_total", &[("kind", "read")]);
    let sent = |m: &dsm_tests::scrape::Metrics| m.value("dsm_page_bytes_total", &[("direction", "sent"), ("kind", "data")]);
    let fetch_count =
        |m: &dsm_tests::scrape::Metrics| m.value("dsm_transaction_duration_seconds_count", &[("kind", "fetch")]);
    assert!(first.value("dsm_faults_served_total", &[("kind", "write")]) >= 8.0, "{}", first.text);
    assert!(read(&second) >= read(&first) + 8.0, "8 pages were read:\n{}\n{}", first.text, second.text);
    // Their bytes came from rank 0 directly (forwards) or through the coordinator.
    let forwarded = |m: &dsm_tests::scrape::Metrics| m.value("dsm_pages_forwarded_total", &[]);
    let moved = |m: &dsm_tests::scrape::Metrics| sent(m) + forwarded(m) * PAGE as f64;
    assert!(moved(&second) >= moved(&first) + 8.0 * PAGE as f64, "{}", second.text);
    // Sequential reads travel as runs: at least one fetch transaction, fewer than the pages.
    assert!(fetch_count(&second) >= fetch_count(&first) + 1.0, "{}", second.text);
    let buckets = second.histogram("dsm_transaction_duration_seconds", &[("kind", "fetch")]);
    let last = buckets.last().copied().unwrap_or_default();
    assert!(last.0.is_infinite() && last.1 == fetch_count(&second), "{buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative buckets: {buckets:?}");
    // The session ended after the scrapes: counted as such.
    let after = scrape(metrics);
    assert_eq!(after.value("dsm_sessions_ended_total", &[]), 1.0, "{}", after.text);
    assert_eq!(after.value("dsm_sessions", &[("state", "running")]), 0.0, "{}", after.text);
    // Anything else than /metrics is a clear 404.
    let (status, _, body) = dsm_tests::scrape::get(metrics, "/");
    assert_eq!(status, 404);
    assert!(body.contains("/metrics"), "{body}");
}

/// Attaches a 1-process session by hand and then drops the connection with an error code,
/// without detaching: the coordinator sees a lost rank at once.
fn attach_and_abandon(addr: SocketAddr, certs: &Path, session: &str) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tls = dsm_cert::client_tls_config(certs).unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(dsm_cert::quic_client_config(tls, &dsm_cert::Transport::default(), std::net::Ipv4Addr::LOCALHOST.into()).unwrap());
        let conn = ep.connect(addr, "127.0.0.1").unwrap().await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&Hello::ours().encode()).await.unwrap();
        let mut h = [0u8; HELLO_LEN];
        recv.read_exact(&mut h).await.unwrap();
        let mut buf = Vec::new();
        let req = AttachRequest { session: session.into(), size: PAGE as u64, nprocs: 1, label: "pid 1 (abandoner)".into(), peer: None };
        encode_frame(&ToCoordinator::Attach(req), &mut buf).unwrap();
        send.write_all(&buf).await.unwrap();
        let mut inbuf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((msg, _)) = decode_frame::<ToProcess>(&inbuf).unwrap() {
                assert!(matches!(msg, ToProcess::Attached { rank: 0, .. }), "{msg:?}");
                break;
            }
            let n = recv.read(&mut chunk).await.unwrap().expect("an answer to the attach");
            inbuf.extend_from_slice(&chunk[..n]);
        }
        conn.close(7u32.into(), b"the test abandons its session");
        ep.wait_idle().await;
    });
}

#[test]
fn coordinator_logs_in_a_file_hold_no_escape_bytes_and_name_each_event() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    let mut coordinator = start(&certs, &tmp.path().join("coordinator.log"), &[]);

    // A session that runs and ends normally.
    let ok = session_name("logs-ok");
    let s = dsm::Session::attach(&config(coordinator.addr, &certs, &ok, 1)).unwrap();
    s.barrier().unwrap();
    s.detach().unwrap();
    // A client certificate from another CA: refused at the handshake.
    let other = tempfile::tempdir().unwrap();
    let (cert, key) = dsm_cert::self_signed_client("mallory", other.path()).unwrap();
    let cfg = dsm::Config::builder()
        .coordinator(coordinator.addr.to_string())
        .cert_dir(&certs)
        .client_cert(cert, key)
        .session(session_name("logs-refused"))
        .size(PAGE as u64)
        .nprocs(1)
        .build()
        .unwrap();
    assert!(dsm::Session::attach(&cfg).is_err());
    // A process that vanishes without detaching: a lost rank.
    let lost = session_name("logs-lost");
    attach_and_abandon(coordinator.addr, &certs, &lost);

    let lost_line = format!("session={lost} rank=0");
    coordinator.wait_log(Duration::from_secs(30), |t| t.contains("handshake refused") && t.contains(&lost_line));
    let log = coordinator.stop();
    assert!(!log.as_bytes().contains(&0x1b), "escape bytes in a log written to a file:\n{log:?}");
    let line = |needles: &[&str]| {
        log.lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no log line with {needles:?}:\n{log}"))
            .to_string()
    };
    line(&[" WARN ", "handshake refused", "reason="]);
    line(&[" WARN ", "rank lost", &lost_line, "reason=connection lost", "the test abandons its session"]);
    line(&[" WARN ", "connection closed", &lost_line]);
    line(&[" INFO ", "session started", &format!("session={ok}"), "nprocs=1"]);
    let ended = line(&[" INFO ", "session ended", &format!("session={ok}")]);
    for field in ["barriers=1", "fetches=0", "bytes_sent=0", "lost_ranks=none"] {
        assert!(ended.contains(field), "{field} in {ended}");
    }
    line(&["session ended", &format!("session={lost}"), "lost_ranks=0"]);
    assert!(!log.contains("DirectoryStats"), "no Debug dumps:\n{log}");
}

#[test]
fn dsm_status_shows_sessions_and_fails_clearly_when_unreachable() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    let coordinator = start(&certs, &tmp.path().join("log"), &[]);
    let dsm = built_binary("dsm");
    let name = session_name("status");
    // One of two processes attached: the session waits, and dsm status shows it.
    let cfg = config(coordinator.addr, &certs, &name, 2);
    let waiting = std::thread::spawn(move || dsm::Session::attach(&cfg));
    let status = |args: &[&str]| {
        Command::new(&dsm)
            .arg("status")
            .args(["--coordinator", &coordinator.addr.to_string(), "--cert-dir", certs.to_str().unwrap()])
            .args(args)
            .env_remove("DSM_SERVER_NAME")
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let report = loop {
        let out = status(&["--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: dsm_proto::StatusReport = serde_json::from_slice(&out.stdout).expect("the JSON is a StatusReport");
        if report.sessions.iter().any(|s| s.name == name) {
            break report;
        }
        assert!(std::time::Instant::now() < deadline, "the waiting session never showed: {report:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let s = report.sessions.iter().find(|s| s.name == name).unwrap();
    assert_eq!((s.state, s.attached, s.nprocs), (dsm_proto::SessionState::Waiting, 1, 2));
    assert!(s.members[0].peer.as_deref().is_some_and(|p| p.starts_with("127.0.0.1:")), "{s:?}");
    assert!(s.members[0].label.starts_with(&format!("pid {} ", std::process::id())), "{s:?}");
    let table = status(&[]);
    let text = String::from_utf8_lossy(&table.stdout);
    let row = text.lines().find(|l| l.starts_with(&name)).unwrap_or_else(|| panic!("no row for {name}:\n{text}"));
    assert_eq!(row.split_whitespace().take(3).collect::<Vec<_>>(), [name.as_str(), "waiting", "1/2"], "{text}");
    // Let the waiting attach finish.
    let second = dsm::Session::attach(&config(coordinator.addr, &certs, &name, 2)).unwrap();
    let first = waiting.join().unwrap().unwrap();
    drop((first, second));

    // A UDP port where nothing answers: a clear error and exit status 1.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let out = Command::new(built_binary("dsm"))
        .args(["status", "--coordinator", &addr, "--cert-dir", certs.to_str().unwrap(), "--timeout", "1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot reach the coordinator at {addr}")), "{err}");
    assert!(err.contains(&format!("UDP port {}", silent.local_addr().unwrap().port())), "{err}");
}

#[test]
fn the_worker_count_is_the_default_or_the_flag_and_zero_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    let threads_named = |pid: u32, name: &str| {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter(|t| {
                let comm = std::fs::read_to_string(t.as_ref().unwrap().path().join("comm")).unwrap_or_default();
                comm.trim() == name
            })
            .count()
    };

    // Default: the machine's cores but one, at least one.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let default = cores.saturating_sub(1).max(1);
    let coordinator = start(&certs, &tmp.path().join("default.log"), &[]);
    let log = coordinator.log_text();
    assert!(log.contains(&format!(" workers={default}")), "{log}");
    coordinator.stop();

    // --workers 3: three worker threads (plus the main thread, named like them).
    let coordinator = start(&certs, &tmp.path().join("three.log"), &["--workers", "3"]);
    let log = coordinator.log_text();
    assert!(log.contains(" workers=3"), "{log}");
    assert!(threads_named(coordinator.pid(), "dsm-coordinator") >= 4, "{log}");
    coordinator.stop();

    let out = Command::new(built_binary("dsm-coordinator")).args(["--workers", "0"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--workers") && err.contains('0'), "{err}");
}
