//! Direct transfers (forwards) between real processes over real peer connections: by default
//! pages a process holds go straight from it to the process that asks for them, and
//! everything still works through the coordinator with `DSM_DIRECT=0` or when a member
//! cannot be reached.

use std::time::Duration;

use dsm_tests::{run_workers, session_name, TestEnv, Workers};

const WORKER: &str = env!("CARGO_BIN_EXE_dsm-worker");

/// The `bulk` scenario: rank 0 writes `MIB` MiB, every rank checks them, then every rank
/// rewrites its own slice and checks everyone else's (reads of owned pages are forwarded,
/// rewrites of forwarded pages leave the other readers' copies as backups, and a rank reading
/// a page again whose backup it keeps in place reads it out before the new copy goes in).
const MIB: u64 = 8;

fn bulk(env: &TestEnv, addr: std::net::SocketAddr, n: u32, extra_env: &[(&str, &str)]) -> Workers {
    let name = session_name("forwards");
    let mut vars = env.worker_env(addr, &name, MIB << 20, n);
    vars.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mib = MIB.to_string();
    let w = run_workers(std::path::Path::new(WORKER), &["bulk", "--mib", &mib], &vars, n as usize, Duration::from_secs(240));
    let oks = w.seen.iter().filter(|l| l.text.contains(" ok stats")).count();
    assert_eq!(oks, n as usize, "{}", w.transcript());
    w
}

/// The sum over the workers' final stats lines of the counter `field`.
fn total(w: &Workers, field: &str) -> u64 {
    let key = format!("{field}: ");
    w.seen
        .iter()
        .filter(|l| l.text.contains(" ok stats"))
        .map(|l| {
            let at = l.text.find(&key).unwrap_or_else(|| panic!("no {field} in {}", l.text)) + key.len();
            let digits: String = l.text[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().unwrap()
        })
        .sum()
}

#[test]
fn by_default_pages_another_process_holds_come_directly_from_it() {
    let env = TestEnv::new();
    let w = bulk(&env, env.addr(), 3, &[]);
    let got = total(&w, "pages_from_peers");
    // Between two barriers ranks 1 and 2 read every page rank 0 wrote (and owns): each comes
    // from rank 0, or from the other reader. (Later forwards may be aborted: a rank that is
    // done checking detaches while the others still read its slice.)
    // (Each rank prints its counters when it is done, and may still forward pages afterwards:
    // sent and received do not add up exactly.)
    assert!(got >= 2 * (MIB << 20) / 4096, "only {got} pages came from peers:\n{}", w.transcript());
    assert!(total(&w, "pages_forwarded") > 0, "{}", w.transcript());
    assert!(total(&w, "peer_bytes_received") >= got * 4096, "{}", w.transcript());
    // Each rank rewrote its slice of pages the others had read: their copies became backups
    // (kept in place, unmapped), and the rewrites' write-backs released them.
    assert!(total(&w, "backups_kept") > 0, "{}", w.transcript());
    assert!(total(&w, "backups_dropped") > 0, "{}", w.transcript());
}

#[test]
fn without_direct_transfers_every_page_goes_through_the_coordinator() {
    let env = TestEnv::new();
    let w = bulk(&env, env.addr(), 2, &[("DSM_DIRECT", "0")]);
    assert_eq!(total(&w, "pages_from_peers"), 0, "{}", w.transcript());
    assert_eq!(total(&w, "pages_forwarded"), 0, "{}", w.transcript());
    assert!(total(&w, "bytes_received") >= (MIB << 20), "{}", w.transcript());
}

/// Through a relay the coordinator sees the relay's addresses, which do not reach the
/// processes: every link fails (once, within its connect timeout), the pages go home as
/// `ForwardReturn`s, the forwards are aborted and the reads are served by the coordinator.
#[test]
fn members_whose_addresses_do_not_reach_them_get_their_pages_through_the_coordinator() {
    let env = TestEnv::new();
    let relay = dsm_relay::spawn(dsm_relay::RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        to: env.addr(),
        link: dsm_relay::LinkConfig::default(),
    })
    .expect("start relay");
    let w = bulk(&env, relay.local_addr(), 2, &[("DSM_DIRECT", "1")]);
    assert_eq!(total(&w, "pages_from_peers"), 0, "{}", w.transcript());
    assert!(total(&w, "forwards_failed") > 0, "{}", w.transcript());
    assert!(w.seen.iter().all(|l| !l.text.contains("panicked")), "{}", w.transcript());
}
