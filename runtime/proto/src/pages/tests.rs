//! The process-side core's unit tests: faults and replies, update-mode replays, read-ahead and
//! write-ahead runs, runs applied in one operation or page by page, and malformed replies.

use super::*;
use crate::wire::{GrantData, ToProcess};

/// Records the calls; keeps page contents.
#[derive(Default)]
struct Mem {
    pages: HashMap<PageNo, (bool, Vec<u8>)>,
    log: Vec<String>,
}

impl PageMemory for Mem {
    fn install(&mut self, page: PageNo, data: Option<&[u8]>, writable: bool) {
        assert!(!self.pages.contains_key(&page), "install over a valid page");
        self.pages.insert(page, (writable, data.map_or(vec![0; 4], <[u8]>::to_vec)));
        self.log.push(format!("install {page} {writable}"));
    }
    fn make_writable(&mut self, page: PageNo) {
        self.pages.get_mut(&page).unwrap().0 = true;
        self.log.push(format!("make_writable {page}"));
    }
    fn store(&mut self, page: PageNo, offset: u16, width: u8, value: u128) {
        let p = self.pages.get_mut(&page).unwrap();
        assert!(!p.0, "updates go to read-only copies");
        let (o, w) = (usize::from(offset), usize::from(width));
        if p.1.len() < o + w {
            p.1.resize(o + w, 0);
        }
        p.1[o..o + w].copy_from_slice(&value.to_le_bytes()[..w]);
        self.log.push(format!("store {page} {offset} {width} {value}"));
    }
    fn write_protect(&mut self, page: PageNo) -> Vec<u8> {
        let p = self.pages.get_mut(&page).unwrap();
        p.0 = false;
        self.log.push(format!("write_protect {page}"));
        p.1.clone()
    }
    fn drop_page(&mut self, page: PageNo, want: bool) -> Option<Vec<u8>> {
        self.log.push(format!("drop {page}"));
        let p = self.pages.remove(&page).unwrap();
        want.then_some(p.1)
    }
    fn wake(&mut self, page: PageNo) {
        self.log.push(format!("wake {page}"));
    }
}

fn msg(p: &mut ProcessPages, m: &mut Mem, msg: ToProcess) -> Vec<ToCoordinator> {
    let mut out = Vec::new();
    p.handle_message(msg, m, &mut out).unwrap();
    out
}

fn fault(p: &mut ProcessPages, m: &mut Mem, page: PageNo, a: Access) -> Vec<ToCoordinator> {
    let mut out = Vec::new();
    p.handle_fault(page, a, m, &mut out);
    out
}

#[test]
fn read_fault_fetches_once_then_installs() {
    let (mut p, mut m) = (ProcessPages::new(), Mem::default());
    assert_eq!(
        fault(&mut p, &mut m, 3, Access::Read),
        vec![ToCoordinator::Fetch { req: 1, page: 3 }]
    );
    assert!(fault(&mut p, &mut m, 3, Access::Read).is_empty());
    assert!(fault(&mut p, &mut m, 3, Access::Write).is_empty());
    assert!(!p.is_idle());
    let data = Some(PageData::from(vec![1, 2, 3, 4]));
    assert!(msg(&mut p, &mut m, ToProcess::Data { req: 1, page: 3, data, mode: Mode::Invalidate }).is_empty());
    assert_eq!(p.state(3), PageState::ReadOnly);
    assert!(p.is_idle());
    assert_eq!(m.pages[&3], (false, vec![1, 2, 3, 4]));
    // A read fault now is resolved; a write fault asks for ownership.
    assert!(fault(&mut p, &mut m, 3, Access::Read).is_empty());
    assert_eq!(m.log.last().unwrap(), "wake 3");
    assert_eq!(
        fault(&mut p, &mut m, 3, Access::Write),
        vec![ToCoordinator::Own { req: 2, page: 3 }]
    );
    assert!(msg(&mut p, &mut m, ToProcess::Grant { req: 2, page: 3, data: None }).is_empty());
    assert_eq!(p.state(3), PageState::Writable);
    assert_eq!(m.log.last().unwrap(), "make_writable 3");
    let s = p.stats();
    assert_eq!((s.read_faults, s.write_faults, s.fetches, s.ownership_requests), (3, 2, 1, 1));
    assert_eq!(s.bytes_received, 4);
}

#[test]
fn update_mode_stores_are_replayed_and_applied_on_ack() {
    let (mut p, mut m) = (ProcessPages::new(), Mem::default());
    fault(&mut p, &mut m, 5, Access::Read);
    msg(&mut p, &mut m, ToProcess::Data { req: 1, page: 5, data: None, mode: Mode::Update });
    // A store to the read-only update-mode copy is to be replayed, not owned.
    let mut out = Vec::new();
    assert_eq!(p.handle_fault(5, Access::Write, &mut m, &mut out), FaultAction::Replay);
    assert!(out.is_empty());
    let op = ReplayOp::Store { offset: 8, width: 2, value: 0xBEEF };
    let req = p.replay(5, op, &mut out).unwrap();
    assert_eq!(out, vec![ToCoordinator::Write { req, page: 5, offset: 8, width: 2, value: 0xBEEF }]);
    assert!(!p.is_idle());
    // Another process's update lands first (FIFO), then our ack: both applied in order.
    msg(&mut p, &mut m, ToProcess::Update { page: 5, offset: 0, width: 1, value: 7 });
    msg(&mut p, &mut m, ToProcess::WriteAck { req, page: 5, offset: 8, width: 2, value: 0xBEEF, old: 0 });
    assert_eq!(p.take_completions(), vec![(req, WriteOutcome::Done { old: 0 })]);
    assert_eq!(&m.pages[&5].1[..10], &[7, 0, 0, 0, 0, 0, 0, 0, 0xEF, 0xBE]);
    assert!(p.is_idle());
    // A Retry switches our belief to invalidate mode: the re-executed store asks for
    // ownership, forced (escalation after a bounce: no Own / read-only / Retry cycle).
    let req = p.replay(5, op, &mut out).unwrap();
    msg(&mut p, &mut m, ToProcess::Retry { req, page: 5 });
    assert_eq!(p.take_completions(), vec![(req, WriteOutcome::Retry)]);
    let mut out = Vec::new();
    assert_eq!(p.handle_fault(5, Access::Write, &mut m, &mut out), FaultAction::Wait);
    assert!(matches!(out[0], ToCoordinator::ForceOwn { page: 5, .. }), "{out:?}");
}

#[test]
fn replay_refused_once_the_copy_is_gone() {
    let (mut p, mut m) = (ProcessPages::new(), Mem::default());
    fault(&mut p, &mut m, 1, Access::Read);
    msg(&mut p, &mut m, ToProcess::Data { req: 1, page: 1, data: None, mode: Mode::Update });
    let mut out = Vec::new();
    assert_eq!(p.handle_fault(1, Access::Write, &mut m, &mut out), FaultAction::Replay);
    // An invalidation overtakes the decoding (rule 6): no Write is sent.
    msg(&mut p, &mut m, ToProcess::Invalidate { page: 1 });
    assert_eq!(p.replay(1, ReplayOp::Store { offset: 0, width: 8, value: 1 }, &mut out), None);
    assert!(out.is_empty());
    // Unsupported instructions ask for ownership whatever the mode.
    fault(&mut p, &mut m, 1, Access::Read);
    msg(&mut p, &mut m, ToProcess::Data { req: 2, page: 1, data: None, mode: Mode::Update });
    p.handle_fault_by_ownership(1, &mut m, &mut out);
    assert!(matches!(out[0], ToCoordinator::ForceOwn { page: 1, .. }), "{out:?}");
}

#[test]
fn ownership_answered_read_only_in_update_mode_turns_the_store_into_a_replay() {
    let (mut p, mut m) = (ProcessPages::new(), Mem::default());
    // The process believes invalidate mode: its store asks for ownership.
    assert!(matches!(fault(&mut p, &mut m, 2, Access::Write)[..], [ToCoordinator::Own { req: 1, page: 2 }]));
    // Rule 3': the page is in update mode and stays there; the answer is a read-only copy.
    let data = Some(PageData::from(vec![4; 4]));
    assert!(msg(&mut p, &mut m, ToProcess::Data { req: 1, page: 2, data, mode: Mode::Update }).is_empty());
    assert_eq!(p.state(2), PageState::ReadOnly);
    assert_eq!(m.pages[&2], (false, vec![4; 4]));
    // The thread's store faults again and is replayed, not sent as ownership.
    let mut out = Vec::new();
    assert_eq!(p.handle_fault(2, Access::Write, &mut m, &mut out), FaultAction::Replay);
    assert!(out.is_empty());
    // Data in invalidate mode is no answer to an ownership request.
    fault(&mut p, &mut m, 3, Access::Write);
    let bad = ToProcess::Data { req: 2, page: 3, data: None, mode: Mode::Invalidate };
    assert!(p.handle_message(bad, &mut m, &mut out).is_err());
}

#[test]
fn sequential_read_faults_prefetch_a_growing_window_in_runs() {
    let (mut p, mut m) = (ProcessPages::new().with_read_ahead(1000), Mem::default());
    let w = READ_AHEAD_WINDOWS as u32;
    // (first page, pages) of each request.
    let fetched = |out: &[ToCoordinator]| -> Vec<(PageNo, u32)> {
        out.iter()
            .map(|o| match o {
                ToCoordinator::Fetch { page, .. } => (*page, 1),
                ToCoordinator::FetchRun { first, count, .. } => (*first, *count),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    };
    // A first fault is not sequential yet: no read-ahead.
    assert_eq!(fetched(&fault(&mut p, &mut m, 10, Access::Read)), vec![(10, 1)]);
    // The next page: 11 plus READ_AHEAD_WINDOWS windows of 4, in one request.
    assert_eq!(fetched(&fault(&mut p, &mut m, 11, Access::Read)), vec![(11, 1 + 4 * w)]);
    // 12 is in flight already: the windows (now 8 pages each) grow past what is in flight.
    let next = 12 + 4 * u64::from(w);
    assert_eq!(fetched(&fault(&mut p, &mut m, 12, Access::Read)), vec![(next, 1 + 4 * w)]);
    // A scattered fault resets it.
    assert_eq!(fetched(&fault(&mut p, &mut m, 500, Access::Read)), vec![(500, 1)]);
    // Never past the end of the region.
    fault(&mut p, &mut m, 997, Access::Read);
    assert_eq!(fetched(&fault(&mut p, &mut m, 998, Access::Read)), vec![(998, 2)]);
    assert_eq!(p.stats().prefetches, u64::from(4 * w + (1 + 4 * w) + 1));
    // Write faults never prefetch.
    assert_eq!(fault(&mut p, &mut m, 700, Access::Write).len(), 1);
    // A run reply for pages that were never asked for is an error.
    let req = match fault(&mut p, &mut m, 600, Access::Read).first() {
        Some(ToCoordinator::Fetch { req, .. }) => *req,
        other => panic!("{other:?}"),
    };
    let mut out = Vec::new();
    let bogus = ToProcess::DataRun { req, first: 600, count: 2, data: None, mode: Mode::Invalidate };
    assert!(p.handle_message(bogus, &mut m, &mut out).is_err(), "page 601 was never asked for");
}

#[test]
fn sequential_write_faults_ask_two_windows_ahead_conditionally_for_untouched_pages() {
    let (mut p, mut m) = (ProcessPages::new().with_write_ahead(100), Mem::default());
    // (first page, pages, request, conditional) of each ownership request.
    let owned = |out: &[ToCoordinator]| -> Vec<(PageNo, u32, ReqId, bool)> {
        out.iter()
            .map(|o| match o {
                ToCoordinator::Own { page, req } => (*page, 1, *req, false),
                ToCoordinator::OwnRun { first, count, req, conditional } => (*first, *count, *req, *conditional),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    };
    assert_eq!(owned(&fault(&mut p, &mut m, 10, Access::Write)), vec![(10, 1, 1, false)]);
    // Sequential: two windows of 4 ahead, conditionally, sharing the fault's request.
    assert_eq!(owned(&fault(&mut p, &mut m, 11, Access::Write)), vec![(11, 1, 2, false), (12, 8, 2, true)]);
    // 12 is asked for already: the windows grow past what is in flight, with a new request.
    assert_eq!(owned(&fault(&mut p, &mut m, 12, Access::Write)), vec![(20, 9, 3, true)]);
    // Denied pages are free to be asked for again; granted ones are writable.
    msg(&mut p, &mut m, ToProcess::Denied { req: 2, first: 12, count: 8 });
    assert!((12..20).all(|q| p.slots.get(&q).is_none_or(|s| s.pending.is_none()) && p.state(q) == PageState::Invalid));
    msg(&mut p, &mut m, ToProcess::GrantRun { req: 3, first: 20, count: 9, data: Some(GrantData::Zero) });
    assert!((20..29).all(|q| p.state(q) == PageState::Writable));
    // Read-only copies are upgraded ahead unconditionally.
    let mut p = ProcessPages::new().with_read_ahead(100).with_write_ahead(100);
    for q in 40..60 {
        let out = fault(&mut p, &mut m, q, Access::Read);
        if let Some(ToCoordinator::Fetch { req, .. } | ToCoordinator::FetchRun { req, .. }) = out.first() {
            let (first, count) = match out[0] {
                ToCoordinator::Fetch { page, .. } => (page, 1),
                ToCoordinator::FetchRun { first, count, .. } => (first, count),
                _ => unreachable!(),
            };
            msg(&mut p, &mut m, ToProcess::DataRun { req: *req, first, count, data: None, mode: Mode::Invalidate });
        }
    }
    assert!((40..60).all(|q| p.state(q) == PageState::ReadOnly));
    fault(&mut p, &mut m, 40, Access::Write);
    let out = owned(&fault(&mut p, &mut m, 41, Access::Write));
    assert_eq!(out[1..], [(42, 8, out[0].2, false)], "{out:?}");
}

#[test]
fn runs_install_in_one_operation_and_fall_back_page_by_page() {
    let (mut p, mut m) = (ProcessPages::new().with_read_ahead(100), Mem::default());
    fault(&mut p, &mut m, 0, Access::Read);
    let out = fault(&mut p, &mut m, 1, Access::Read);
    // The run: page 1 and READ_AHEAD_WINDOWS windows of 4; `e` is the first page after it.
    let n = 1 + 4 * READ_AHEAD_WINDOWS as u32;
    let e = 1 + u64::from(n);
    let ToCoordinator::FetchRun { req, first: 1, count } = out[0] else { panic!("{out:?}") };
    assert_eq!(count, n);
    let reply = ToProcess::DataRun { req, first: 1, count: n, data: None, mode: Mode::Invalidate };
    msg(&mut p, &mut m, reply);
    assert!((1..e).all(|q| p.state(q) == PageState::ReadOnly));
    assert_eq!(p.stats().runs_received, 1);
    // Downgrade of a run in mixed states: page by page, acks merged into runs again.
    for q in [e + 2, e + 3] {
        fault(&mut p, &mut m, q, Access::Write);
        let req = p.slots[&q].pending.unwrap().req;
        msg(&mut p, &mut m, ToProcess::Grant { req, page: q, data: Some(GrantData::Zero) });
    }
    let acks = msg(&mut p, &mut m, ToProcess::DowngradeRun { first: e + 2, count: 2 });
    assert_eq!(acks.len(), 1, "{acks:?}");
    let acks = msg(&mut p, &mut m, ToProcess::InvalidateRun { first: e - 2, count: 6 });
    // e-2, e-1 read-only, e, e+1 invalid, e+2, e+3 read-only again (downgraded): all
    // acknowledged.
    let acked: usize = acks.iter().map(|a| crate::runs::expand_to_coordinator(a.clone()).len()).sum();
    assert_eq!(acked, 6, "{acks:?}");
}

#[test]
fn grant_with_data_replaces_an_invalidated_copy() {
    let (mut p, mut m) = (ProcessPages::new(), Mem::default());
    fault(&mut p, &mut m, 0, Access::Read);
    msg(&mut p, &mut m, ToProcess::Data { req: 1, page: 0, data: None, mode: Mode::Invalidate });
    fault(&mut p, &mut m, 0, Access::Write);
    // Another writer's transaction invalidates us before our Own is served.
    assert_eq!(
        msg(&mut p, &mut m, ToProcess::Invalidate { page: 0 }),
        vec![ToCoordinator::InvalidateAck { page: 0 }]
    );
    assert_eq!(p.state(0), PageState::Invalid);
    let data = Some(GrantData::Bytes(PageData::from(vec![9; 4])));
    msg(&mut p, &mut m, ToProcess::Grant { req: 2, page: 0, data });
    assert_eq!(m.pages[&0], (true, vec![9; 4]));
    // Invalidate of an Invalid page is still acknowledged.
    assert_eq!(
        msg(&mut p, &mut m, ToProcess::Invalidate { page: 7 }),
        vec![ToCoordinator::InvalidateAck { page: 7 }]
    );
}

#[test]
fn grant_with_data_over_a_read_only_copy_drops_it_first() {
    let (mut p, mut m) = (ProcessPages::new(), Mem::default());
    fault(&mut p, &mut m, 0, Access::Read);
    msg(&mut p, &mut m, ToProcess::Data { req: 1, page: 0, data: None, mode: Mode::Invalidate });
    fault(&mut p, &mut m, 0, Access::Write);
    msg(&mut p, &mut m, ToProcess::Grant { req: 2, page: 0, data: Some(GrantData::Zero) });
    assert_eq!(m.log[m.log.len() - 2..], ["drop 0".to_string(), "install 0 true".to_string()]);
}

#[test]
fn downgrade_and_recall() {
    let (mut p, mut m) = (ProcessPages::new(), Mem::default());
    fault(&mut p, &mut m, 0, Access::Write);
    let data = Some(GrantData::Bytes(PageData::from(vec![5; 4])));
    msg(&mut p, &mut m, ToProcess::Grant { req: 1, page: 0, data });
    assert_eq!(
        msg(&mut p, &mut m, ToProcess::Downgrade { page: 0 }),
        vec![ToCoordinator::DowngradeAck { page: 0, data: Some(PageData::from(vec![5; 4])) }]
    );
    assert_eq!(p.state(0), PageState::ReadOnly);
    // Recall of a ReadOnly copy: dropped, no data.
    assert_eq!(
        msg(&mut p, &mut m, ToProcess::Recall { page: 0 }),
        vec![ToCoordinator::RecallAck { page: 0, data: None }]
    );
    assert_eq!(p.state(0), PageState::Invalid);
    fault(&mut p, &mut m, 0, Access::Write);
    msg(&mut p, &mut m, ToProcess::Grant { req: 2, page: 0, data: Some(GrantData::Zero) });
    assert_eq!(
        msg(&mut p, &mut m, ToProcess::Recall { page: 0 }),
        vec![ToCoordinator::RecallAck { page: 0, data: Some(PageData::from(vec![0; 4])) }]
    );
    assert_eq!(
        msg(&mut p, &mut m, ToProcess::Downgrade { page: 0 }),
        vec![ToCoordinator::DowngradeAck { page: 0, data: None }]
    );
    assert_eq!(p.stats().bytes_sent, 8);
}

#[test]
fn release_all_writes_back_owned_pages() {
    let (mut p, mut m) = (ProcessPages::new(), Mem::default());
    fault(&mut p, &mut m, 1, Access::Write);
    msg(&mut p, &mut m, ToProcess::Grant { req: 1, page: 1, data: Some(GrantData::Zero) });
    fault(&mut p, &mut m, 2, Access::Read);
    msg(&mut p, &mut m, ToProcess::Data { req: 2, page: 2, data: None, mode: Mode::Invalidate });
    let mut out = Vec::new();
    assert_eq!(p.release_all(&mut m, &mut out), 1);
    assert_eq!(out, vec![ToCoordinator::Writeback { page: 1, data: PageData::from(vec![0; 4]) }]);
    assert_eq!((p.state(1), p.state(2)), (PageState::Invalid, PageState::Invalid));
    assert!(m.pages.is_empty());
    assert_eq!(m.log[m.log.len() - 3..], ["write_protect 1", "drop 1", "drop 2"]);
}

#[test]
fn bad_replies_are_errors_and_change_nothing() {
    let (mut p, mut m) = (ProcessPages::new(), Mem::default());
    let mut out = Vec::new();
    assert!(p
        .handle_message(ToProcess::Data { req: 1, page: 0, data: None, mode: Mode::Invalidate }, &mut m, &mut out)
        .is_err());
    fault(&mut p, &mut m, 0, Access::Read);
    // Wrong request id, wrong kind of reply.
    assert!(p
        .handle_message(ToProcess::Data { req: 9, page: 0, data: None, mode: Mode::Invalidate }, &mut m, &mut out)
        .is_err());
    assert!(p
        .handle_message(ToProcess::Grant { req: 1, page: 0, data: None }, &mut m, &mut out)
        .is_err());
    assert!(p.handle_message(ToProcess::Detached, &mut m, &mut out).is_err());
    fault(&mut p, &mut m, 1, Access::Write);
    assert!(p
        .handle_message(ToProcess::Grant { req: 2, page: 1, data: None }, &mut m, &mut out)
        .is_err());
    assert!(out.is_empty() && m.pages.is_empty());
    assert_eq!((p.state(0), p.state(1)), (PageState::Invalid, PageState::Invalid));
    assert!(!p.is_idle());
}

/// A mapping that accepts anything (the core must not panic even on a bogus sequence).
#[derive(Default)]
struct Lenient;

impl PageMemory for Lenient {
    fn install(&mut self, _: PageNo, _: Option<&[u8]>, _: bool) {}
    fn make_writable(&mut self, _: PageNo) {}
    fn write_protect(&mut self, _: PageNo) -> Vec<u8> {
        vec![1]
    }
    fn drop_page(&mut self, _: PageNo, want: bool) -> Option<Vec<u8>> {
        want.then(|| vec![2])
    }
    fn wake(&mut self, _: PageNo) {}
    fn store(&mut self, _: PageNo, _: u16, _: u8, _: u128) {}
}

#[test]
fn random_input_never_panics() {
    use rand::{rngs::SmallRng, Rng, SeedableRng};
    for seed in 0..300u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let (mut p, mut m, mut out) = (ProcessPages::new(), Lenient, Vec::new());
        for _ in 0..200 {
            let page = rng.gen_range(0..3);
            let req = rng.gen_range(0..8);
            let data = rng.gen_bool(0.5).then(|| PageData::from(vec![3; 2]));
            let m2 = match rng.gen_range(0..8) {
                0 => {
                    let a = if rng.gen() { Access::Read } else { Access::Write };
                    p.handle_fault(page, a, &mut m, &mut out);
                    continue;
                }
                1 => {
                    p.release_all(&mut m, &mut out);
                    continue;
                }
                2 => ToProcess::Data { req, page, data, mode: Mode::Invalidate },
                3 => ToProcess::Grant { req, page, data: data.map(GrantData::Bytes) },
                4 => ToProcess::Invalidate { page },
                5 => ToProcess::Downgrade { page },
                6 => ToProcess::Recall { page },
                _ => ToProcess::Detached,
            };
            let _ = p.handle_message(m2, &mut m, &mut out);
        }
    }
}

/// Full-size pages whose bytes name them; logs the run operations.
#[derive(Default)]
struct RunMem {
    pages: HashMap<PageNo, Vec<u8>>,
    log: Vec<String>,
}

impl PageMemory for RunMem {
    fn install(&mut self, page: PageNo, _: Option<&[u8]>, _: bool) {
        self.pages.insert(page, vec![page as u8; crate::PAGE_SIZE]);
    }
    fn make_writable(&mut self, _: PageNo) {}
    fn store(&mut self, _: PageNo, _: u16, _: u8, _: u128) {}
    fn write_protect(&mut self, page: PageNo) -> Vec<u8> {
        self.log.push(format!("write_protect {page}"));
        self.pages[&page].clone()
    }
    fn drop_page(&mut self, page: PageNo, want: bool) -> Option<Vec<u8>> {
        self.log.push(format!("drop {page}"));
        let p = self.pages.remove(&page).unwrap();
        want.then_some(p)
    }
    fn wake(&mut self, _: PageNo) {}
    fn write_protect_run(&mut self, first: PageNo, count: u32) -> Vec<u8> {
        self.log.push(format!("write_protect_run {first} {count}"));
        (first..first + u64::from(count)).flat_map(|p| self.pages[&p].clone()).collect()
    }
    fn drop_run(&mut self, first: PageNo, count: u32, want: bool) -> Option<Vec<u8>> {
        assert!(!want, "release_all copies its runs when it write-protects them");
        self.log.push(format!("drop_run {first} {count}"));
        for p in first..first + u64::from(count) {
            self.pages.remove(&p).unwrap();
        }
        None
    }
}

/// Makes `page` Writable (`write`) or ReadOnly through a fault and its reply. Pages are taken
/// from the highest down, so no read-ahead or write-ahead starts.
fn hold(p: &mut ProcessPages, m: &mut RunMem, page: PageNo, write: bool) {
    let mut out = Vec::new();
    p.handle_fault(page, if write { Access::Write } else { Access::Read }, m, &mut out);
    let reply = match out[..] {
        [ToCoordinator::Own { req, .. }] => ToProcess::Grant { req, page, data: Some(GrantData::Zero) },
        [ToCoordinator::Fetch { req, .. }] => ToProcess::Data { req, page, data: None, mode: Mode::Invalidate },
        _ => panic!("fault on page {page} sent {out:?}"),
    };
    p.handle_message(reply, m, &mut out).unwrap();
}

#[test]
fn release_all_releases_runs_of_pages_in_one_operation_each() {
    let (mut p, mut m) = (ProcessPages::new(), RunMem::default());
    // Owned 1-3 and 6 (alone), read-only 4 and 7-8; 5 never touched.
    for (page, write) in [(8, false), (7, false), (6, true), (4, false), (3, true), (2, true), (1, true)] {
        hold(&mut p, &mut m, page, write);
    }
    let mut out = Vec::new();
    assert_eq!(p.release_all(&mut m, &mut out), 4);
    assert_eq!(
        m.log,
        ["write_protect_run 1 3", "drop_run 1 3", "drop_run 4 1", "write_protect_run 6 1", "drop_run 6 1", "drop_run 7 2"]
    );
    let written: Vec<(PageNo, u8, bool)> = out
        .iter()
        .map(|m| match m {
            ToCoordinator::Writeback { page, data } => {
                assert!(data.iter().all(|&b| b == *page as u8) && data.len() == crate::PAGE_SIZE, "page {page}'s bytes");
                (*page, data[0], data.is_shared())
            }
            other => panic!("not a writeback: {other:?}"),
        })
        .collect();
    // The run's pages are slices of its one buffer; the lone page has its own.
    assert_eq!(written, [(1, 1, true), (2, 2, true), (3, 3, true), (6, 6, false)]);
    assert!(m.pages.is_empty());
    assert!((1..=8).all(|page| p.state(page) == PageState::Invalid));
}

#[test]
fn release_all_splits_runs_longer_than_a_run_message() {
    let (mut p, mut m) = (ProcessPages::new(), RunMem::default());
    let pages = u64::from(MAX_RUN) + 45;
    for page in (0..pages).rev() {
        hold(&mut p, &mut m, page, true);
    }
    let mut out = Vec::new();
    assert_eq!(p.release_all(&mut m, &mut out), pages as usize);
    let rest = pages - u64::from(MAX_RUN);
    assert_eq!(
        m.log,
        [
            format!("write_protect_run 0 {MAX_RUN}"),
            format!("drop_run 0 {MAX_RUN}"),
            format!("write_protect_run {MAX_RUN} {rest}"),
            format!("drop_run {MAX_RUN} {rest}"),
        ]
    );
    assert_eq!(out.len(), pages as usize);
}

#[test]
fn release_in_slices_continues_where_it_stopped() {
    let (mut p, mut m) = (ProcessPages::new(), RunMem::default());
    for page in (0..300).rev() {
        hold(&mut p, &mut m, page, page % 3 != 0);
    }
    let mut out = Vec::new();
    assert_eq!(p.release(&mut m, &mut out, 120), (80, false), "pages 0-119: 80 owned");
    assert!((0..120).all(|page| p.state(page) == PageState::Invalid));
    assert!((120..300).all(|page| p.state(page) != PageState::Invalid));
    assert_eq!(p.release(&mut m, &mut out, 120), (80, false));
    assert_eq!(p.release(&mut m, &mut out, 120), (40, true), "the last 60 pages");
    assert_eq!(p.release(&mut m, &mut out, 120), (0, true), "nothing is left");
    let pages: Vec<PageNo> = out
        .iter()
        .map(|m| match m {
            ToCoordinator::Writeback { page, .. } => *page,
            other => panic!("not a writeback: {other:?}"),
        })
        .collect();
    assert_eq!(pages, (0..300).filter(|p| p % 3 != 0).collect::<Vec<_>>(), "each owned page once, in order");
    assert!(m.pages.is_empty());
}
