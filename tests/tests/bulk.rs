//! Bulk data: the coordinator's memory goes back to the system when a session ends.

use std::time::{Duration, Instant};

use dsm_tests::coordinator_process::CoordinatorProcess;
use dsm_tests::{session_name, Workers};

const WORKER: &str = env!("CARGO_BIN_EXE_dsm-worker");
const MIB: u64 = 64;

/// Resident memory of `pid`, MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib / 1024.0
}

#[test]
fn a_large_write_back_arrives_whole_and_the_coordinators_memory_returns_near_idle() {
    let dir = tempfile::tempdir().unwrap();
    dsm_cert::generate(dir.path(), &[]).unwrap();
    let certs = dir.path().display().to_string();
    let mut c = CoordinatorProcess::start(&[], &["--listen", "127.0.0.1:0", "--cert-dir", &certs], &dir.path().join("log"));
    let idle = rss_mib(c.pid());
    let session = session_name("rss");
    let size = (MIB << 20) + 4096;
    let env = vec![
        ("DSM_COORDINATOR".to_string(), c.addr.to_string()),
        ("DSM_CERT_DIR".to_string(), certs.clone()),
        ("DSM_SESSION".to_string(), session.clone()),
        ("DSM_SIZE".to_string(), size.to_string()),
        ("DSM_NPROCS".to_string(), "2".to_string()),
    ];
    let mut w = Workers::spawn(std::path::Path::new(WORKER), &["fill-leave", "--mib", &MIB.to_string()], &env, 1);
    let config = dsm::Config::builder()
        .coordinator(c.addr.to_string())
        .cert_dir(dir.path())
        .session(&session)
        .size(size)
        .nprocs(2)
        .build()
        .unwrap();
    let region = dsm::Region::attach(&config).unwrap();
    region.barrier().unwrap();
    assert_eq!(w.wait_all(Duration::from_secs(120)), vec![Some(0)], "{}", w.transcript());
    // The worker wrote every page back when it detached: the coordinator holds them now.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut during = rss_mib(c.pid());
    while during < idle + MIB as f64 * 0.8 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        during = rss_mib(c.pid());
    }
    assert!(during >= idle + MIB as f64 * 0.8, "the home copies should be resident during the session: idle {idle:.1} MiB, now {during:.1} MiB");
    // And they are the worker's bytes, each page in its place: its detach released them in
    // several slices (more than `RELEASE_PAGES`), each a set of runs.
    let pages = (MIB << 20) as usize / 4096;
    let words = region.as_slice::<std::sync::atomic::AtomicU64>(0, pages * 512).unwrap();
    for (page, p) in words.chunks_exact(512).enumerate() {
        let number = p[0].load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(number, page as u64, "page {page} holds page {number}'s bytes");
        let fill = u64::from_ne_bytes([0x5c; 8]);
        assert!(p[1..].iter().all(|w| w.load(std::sync::atomic::Ordering::Relaxed) == fill), "page {page} is not the worker's");
    }
    region.detach().unwrap();
    c.wait_log(Duration::from_secs(30), |t| t.contains("session ended"));
    let after = rss_mib(c.pid());
    assert!(
        after <= idle + 16.0,
        "resident memory after the session: {after:.1} MiB (idle {idle:.1} MiB, {during:.1} MiB during it)"
    );
}
