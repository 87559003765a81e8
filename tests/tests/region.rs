//! The shared region across real processes: real userfaultfd faults, real QUIC, real TLS.

use std::time::Duration;

use dsm_tests::{lossy_relay, run_workers, session_name, TestEnv};

const WORKER: &str = env!("CARGO_BIN_EXE_dsm-worker");

fn run(env: &TestEnv, addr: std::net::SocketAddr, args: &[&str], size: u64, n: u32) -> dsm_tests::Workers {
    let name = session_name(args[0]);
    run_workers(std::path::Path::new(WORKER), args, &env.worker_env(addr, &name, size, n), n as usize, Duration::from_secs(240))
}

fn oks(w: &dsm_tests::Workers) -> usize {
    w.seen.iter().filter(|l| l.text.contains(" ok stats") || l.text.contains("total")).count()
}

#[test]
fn counter_4_processes_10000_fetch_adds_each() {
    let env = TestEnv::new();
    let w = run(&env, env.addr(), &["counter", "--adds", "10000"], 4096, 4);
    let totals = w.seen.iter().filter(|l| l.text.contains("total 40000 expected 40000")).count();
    assert_eq!(totals, 4, "{}", w.transcript());
}

#[test]
fn busy_wait_ping_pong_1000_handoffs_with_hot_neighbours() {
    let env = TestEnv::new();
    let w = run(&env, env.addr(), &["spin-pingpong", "--rounds", "1000"], 4096, 2);
    assert_eq!(oks(&w), 2, "{}", w.transcript());
}

#[test]
fn read_syscall_from_a_pipe_into_the_region_is_seen_by_another_process() {
    let env = TestEnv::new();
    let w = run(&env, env.addr(), &["pipe-read"], 1 << 20, 2);
    assert_eq!(oks(&w), 2, "{}", w.transcript());
}

#[test]
fn eight_threads_per_process_fault_concurrently() {
    let env = TestEnv::new();
    let w = run(&env, env.addr(), &["threads"], 1 << 20, 2);
    assert_eq!(oks(&w), 2, "{}", w.transcript());
}

#[test]
fn bulk_64_mib_written_by_one_verified_by_three_then_disjoint_slices() {
    let env = TestEnv::new();
    let w = run(&env, env.addr(), &["bulk", "--mib", "64"], 64 << 20, 4);
    assert_eq!(oks(&w), 4, "{}", w.transcript());
}

#[test]
fn huge_64_gib_region_attaches_with_little_memory_and_moves_only_touched_pages() {
    let env = TestEnv::new();
    let w = run(&env, env.addr(), &["huge", "--touch", "8"], 64 << 30, 2);
    assert_eq!(oks(&w), 2, "{}", w.transcript());
}

#[test]
fn counter_and_ping_pong_through_a_lossy_link() {
    let env = TestEnv::new();
    let relay = lossy_relay(env.addr(), 11);
    let w = run(&env, relay.local_addr(), &["counter", "--adds", "2000"], 4096, 4);
    assert_eq!(w.seen.iter().filter(|l| l.text.contains("total 8000 expected 8000")).count(), 4, "{}", w.transcript());
    let w = run(&env, relay.local_addr(), &["spin-pingpong", "--rounds", "100"], 4096, 2);
    assert_eq!(oks(&w), 2, "{}", w.transcript());
    assert!(relay.stats().dropped > 0);
}

#[test]
fn a_dead_owners_pages_fall_back_to_the_last_acknowledged_copy() {
    let env = TestEnv::with_idle_timeout(Duration::from_secs(2));
    let name = session_name("owner-dies");
    let mut w = dsm_tests::Workers::spawn(std::path::Path::new(WORKER), &["owner-dies"], &env.worker_env(env.addr(), &name, 4096, 2), 2);
    let victim = w
        .wait_line(Duration::from_secs(60), |l| l.text.starts_with("victim ready"))
        .unwrap_or_else(|| panic!("no victim:\n{}", w.transcript()));
    w.wait_line(Duration::from_secs(30), |l| l.text == "entering barrier")
        .unwrap_or_else(|| panic!("survivor never reached the barrier:\n{}", w.transcript()));
    w.children[victim.worker].kill().unwrap();
    let codes = w.wait_all(Duration::from_secs(60));
    let survivor = 1 - victim.worker;
    assert_eq!(codes[survivor], Some(0), "{}", w.transcript());
    assert!(w.seen.iter().any(|l| l.text.contains("barrier failed") && l.text.contains("rank 1 lost")), "{}", w.transcript());
    assert!(w.seen.iter().any(|l| l.text == "after the loss the word reads 1"), "{}", w.transcript());
}

#[test]
fn typed_views_check_alignment_and_bounds_and_shared_cells_read_back_their_stores() {
    let env = TestEnv::new();
    let cfg = env.config(&session_name("views"), 2 * 4096, 1).build().unwrap();
    let region = dsm::Region::attach(&cfg).unwrap();
    let cells: &[dsm::SharedCell<u32>] = region.as_slice(4, 3).unwrap();
    cells[2].set(0xDEAD_BEEF);
    assert_eq!(cells[2].get(), 0xDEAD_BEEF);
    // Seen through another view type of the same bytes.
    let bytes: &[dsm::SharedCell<u8>] = region.as_slice(12, 4).unwrap();
    assert_eq!(bytes.iter().map(dsm::SharedCell::get).collect::<Vec<_>>(), 0xDEAD_BEEFu32.to_le_bytes());
    assert!(matches!(
        region.as_slice::<dsm::SharedCell<u32>>(2, 1),
        Err(dsm::ViewError::Misaligned { offset: 2, align: 4 })
    ));
    assert!(matches!(
        region.as_slice::<std::sync::atomic::AtomicU64>(8192 - 8, 2),
        Err(dsm::ViewError::OutOfBounds { .. })
    ));
    assert!(region.ptr_at(8192 - 8, 8).is_ok());
    assert!(matches!(region.ptr_at(8192 - 8, 9), Err(dsm::ViewError::OutOfBounds { .. })));
    assert!(matches!(region.ptr_at(usize::MAX, 2), Err(dsm::ViewError::OutOfBounds { .. })));
    region.detach().unwrap();
}

#[test]
fn page_runs_split_at_pages_held_elsewhere_and_write_ahead_never_takes_them() {
    let env = TestEnv::new();
    let w = run(&env, env.addr(), &["runs-split"], 64 * 4096, 3);
    let ok = w.seen.iter().filter(|l| l.text.contains("runs-split ok")).count();
    assert_eq!(ok, 3, "{}", w.transcript());
}

/// The application unmaps pages it holds with its own `MADV_DONTNEED` (or the kernel reclaims
/// them): the next access maps them again as they were (a minor fault the runtime serves with
/// `UFFDIO_CONTINUE`), a written page keeps its bytes, a read-only one stays write-protected
/// (a store to it then asks for ownership and lands).
#[test]
fn pages_the_application_unmaps_itself_come_back_as_they_were() {
    let env = TestEnv::new();
    let cfg = env.config(&session_name("dontneed"), 3 * 4096, 1).build().unwrap();
    let region = dsm::Region::attach(&cfg).unwrap();
    let words: &[std::sync::atomic::AtomicU64] = region.as_slice(0, 3 * 512).unwrap();
    use std::sync::atomic::Ordering::SeqCst;
    words[0].store(0x1234, SeqCst); // page 0: Writable
    assert_eq!(words[512].load(SeqCst), 0); // page 1: ReadOnly (zeros)
    let base = region.ptr_at(0, 2 * 4096).unwrap();
    // SAFETY: the first two pages of the region's view, which this test owns; DONTNEED only
    // drops their page table entries (the region's memory keeps the pages).
    let r = unsafe { libc::madvise(base.cast(), 2 * 4096, libc::MADV_DONTNEED) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(words[0].load(SeqCst), 0x1234);
    words[0].store(0x5678, SeqCst);
    assert_eq!(words[0].load(SeqCst), 0x5678);
    assert_eq!(words[512].load(SeqCst), 0);
    let before = region.stats().unwrap().ownership_requests;
    words[512].store(7, SeqCst);
    assert_eq!(words[512].load(SeqCst), 7);
    assert!(region.stats().unwrap().ownership_requests > before, "the read-only page was not write-protected");
    region.detach().unwrap();
}
