//! Unit tests of direct transfers on the process side (rules P1-P6 and the flush of a
//! ReadOnly copy): the core driven with a fake mapping of full-size pages that logs its run
//! operations.

use super::*;
use crate::wire::{GrantData, Rank, ToPeer, ToProcess};
use crate::PAGE_SIZE;

/// Full-size pages; logs every operation.
#[derive(Default)]
pub(super) struct FMem {
    /// page -> (writable, bytes)
    pub(super) pages: HashMap<PageNo, (bool, Vec<u8>)>,
    pub(super) log: Vec<String>,
}

impl FMem {
    pub(super) fn take_log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }
    fn bytes(&self, first: PageNo, count: u32) -> Vec<u8> {
        (first..first + u64::from(count)).flat_map(|p| self.pages[&p].1.clone()).collect()
    }
}

impl PageMemory for FMem {
    fn install(&mut self, page: PageNo, data: Option<&[u8]>, writable: bool) {
        self.install_run(page, 1, data, writable);
    }
    fn install_run(&mut self, first: PageNo, count: u32, data: Option<&[u8]>, writable: bool) {
        if let Some(d) = data {
            assert_eq!(d.len(), count as usize * PAGE_SIZE, "install_run of {count} pages");
        }
        for i in 0..count as usize {
            let page = first + i as u64;
            let bytes = data.map_or(vec![0; PAGE_SIZE], |d| d[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].to_vec());
            assert!(self.pages.insert(page, (writable, bytes)).is_none(), "install over a valid page {page}");
        }
        self.log.push(format!("install_run {first} {count} {writable}"));
    }
    fn make_writable(&mut self, page: PageNo) {
        self.pages.get_mut(&page).unwrap().0 = true;
        self.log.push(format!("make_writable {page}"));
    }
    fn write_protect(&mut self, page: PageNo) -> Vec<u8> {
        self.write_protect_run(page, 1)
    }
    fn write_protect_run(&mut self, first: PageNo, count: u32) -> Vec<u8> {
        for p in first..first + u64::from(count) {
            let page = self.pages.get_mut(&p).expect("write-protect of a page not held");
            assert!(page.0, "write-protect of a read-only page {p} (read_run is for those)");
            page.0 = false;
        }
        self.log.push(format!("write_protect_run {first} {count}"));
        self.bytes(first, count)
    }
    fn read_run(&mut self, first: PageNo, count: u32) -> Vec<u8> {
        for p in first..first + u64::from(count) {
            assert!(!self.pages[&p].0, "read_run of a writable page {p}");
        }
        self.log.push(format!("read_run {first} {count}"));
        self.bytes(first, count)
    }
    fn drop_page(&mut self, page: PageNo, want: bool) -> Option<Vec<u8>> {
        self.drop_run(page, 1, want)
    }
    fn drop_run(&mut self, first: PageNo, count: u32, want: bool) -> Option<Vec<u8>> {
        let bytes = want.then(|| self.bytes(first, count));
        for p in first..first + u64::from(count) {
            self.pages.remove(&p).expect("drop of a page not held");
        }
        self.log.push(format!("drop_run {first} {count}"));
        bytes
    }
    fn wake(&mut self, page: PageNo) {
        self.log.push(format!("wake {page}"));
    }
    fn store(&mut self, _: PageNo, _: u16, _: u8, _: u128) {}
}

/// `count` pages whose bytes are `fill`, `fill + 1`, ...
pub(super) fn pages(fill: u8, count: u32) -> Vec<u8> {
    (0..count).flat_map(|i| vec![fill.wrapping_add(i as u8); PAGE_SIZE]).collect()
}

/// A region of 64 pages without read-ahead or write-ahead.
pub(super) fn region() -> (ProcessPages, FMem) {
    let mut p = ProcessPages::new();
    p.limit = 64;
    (p, FMem::default())
}

pub(super) fn msg(p: &mut ProcessPages, m: &mut FMem, msg: ToProcess) -> Vec<ToCoordinator> {
    let mut out = Vec::new();
    p.handle_message(msg, m, &mut out).unwrap();
    out
}

fn peer(p: &mut ProcessPages, m: &mut FMem, req: ReqId, first: PageNo, count: u32, fill: u8) -> Vec<ToCoordinator> {
    let mut out = Vec::new();
    let data = PageData::from(pages(fill, count));
    p.handle_peer(3, ToPeer::Pages { req, first, count, data }, m, &mut out).unwrap();
    out
}

/// Makes `page` Writable with bytes `fill`.
pub(super) fn own(p: &mut ProcessPages, m: &mut FMem, page: PageNo, fill: u8) {
    let mut out = Vec::new();
    p.handle_fault(page, Access::Write, m, &mut out);
    let [ToCoordinator::Own { req, .. }] = out[..] else { panic!("{out:?}") };
    let data = Some(GrantData::Bytes(PageData::from(pages(fill, 1))));
    msg(p, m, ToProcess::Grant { req, page, data });
}

/// Makes `page` ReadOnly (from the home copy) with bytes `fill`.
pub(super) fn read(p: &mut ProcessPages, m: &mut FMem, page: PageNo, fill: u8) {
    let req = fetch(p, m, page);
    msg(p, m, ToProcess::Data { req, page, data: Some(PageData::from(pages(fill, 1))), mode: Mode::Invalidate });
}

/// A read fault on `page`: its Fetch's request.
pub(super) fn fetch(p: &mut ProcessPages, m: &mut FMem, page: PageNo) -> ReqId {
    let mut out = Vec::new();
    p.handle_fault(page, Access::Read, m, &mut out);
    let [ToCoordinator::Fetch { req, .. }] = out[..] else { panic!("{out:?}") };
    req
}

/// A region with read-ahead, and a run of Fetches pending with one request: (request, first
/// page, pages). Page 0 is answered from the home copy.
fn fetch_run() -> (ProcessPages, FMem, ReqId, PageNo, u32) {
    let (mut p, mut m) = (ProcessPages::for_region(1000), FMem::default());
    let req0 = fetch(&mut p, &mut m, 0);
    msg(&mut p, &mut m, ToProcess::Data { req: req0, page: 0, data: None, mode: Mode::Invalidate });
    let mut out = Vec::new();
    p.handle_fault(1, Access::Read, &mut m, &mut out);
    let ToCoordinator::FetchRun { req, first: 1, count } = out[0] else { panic!("{out:?}") };
    m.take_log();
    (p, m, req, 1, count)
}

fn forwarded(p: &ProcessPages, page: PageNo) -> bool {
    p.slots.get(&page).is_some_and(|s| s.forwarded)
}

#[test]
fn p1_forward_sends_one_message_per_run_of_held_pages_and_keeps_read_only_copies() {
    let (mut p, mut m) = region();
    // 1-2 owned, 3 read-only, 4 not held, 5 read-only, 6 not held.
    own(&mut p, &mut m, 1, 10);
    own(&mut p, &mut m, 2, 20);
    read(&mut p, &mut m, 3, 30);
    read(&mut p, &mut m, 5, 50);
    m.take_log();
    let out = msg(&mut p, &mut m, ToProcess::Forward { req: 77, first: 1, count: 6, to: 2 });
    assert!(out.is_empty(), "nothing goes to the coordinator: {out:?}");
    // One write-protect for the owned pages, one read for each run of read-only ones; one
    // message per contiguous run.
    assert_eq!(m.take_log(), ["write_protect_run 1 2", "read_run 3 1", "read_run 5 1"]);
    let sent = p.take_peer_messages();
    let want: Vec<u8> = [pages(10, 1), pages(20, 1), pages(30, 1)].concat();
    assert_eq!(
        sent,
        [
            (2, ToPeer::Pages { req: 77, first: 1, count: 3, data: PageData::from(want) }),
            (2, ToPeer::Pages { req: 77, first: 5, count: 1, data: PageData::from(pages(50, 1)) }),
        ]
    );
    assert!(p.take_peer_messages().is_empty(), "taken once");
    for q in [1, 2, 3, 5] {
        assert_eq!(p.state(q), PageState::ReadOnly, "page {q}");
        assert!(!m.pages[&q].0 && forwarded(&p, q), "page {q}");
    }
    assert_eq!((p.state(4), p.state(6)), (PageState::Invalid, PageState::Invalid));
    // The copies are read-only now: a store asks for ownership again.
    let mut out = Vec::new();
    p.handle_fault(1, Access::Write, &mut m, &mut out);
    assert!(matches!(out[..], [ToCoordinator::Own { page: 1, .. }]), "{out:?}");
    // Pages not held at all (written back before the Forward came): nothing is sent.
    msg(&mut p, &mut m, ToProcess::Forward { req: 78, first: 10, count: 5, to: 2 });
    assert!(p.take_peer_messages().is_empty());
    let s = p.stats();
    assert_eq!((s.pages_forwarded, s.peer_bytes_sent), (4, 4 * PAGE_SIZE as u64));
}

#[test]
fn p1_a_forward_of_a_full_run_is_one_message() {
    let (mut p, mut m) = region();
    p.limit = 1000;
    for q in (0..u64::from(MAX_RUN)).rev() {
        own(&mut p, &mut m, q, q as u8);
    }
    m.take_log();
    msg(&mut p, &mut m, ToProcess::Forward { req: 5, first: 0, count: MAX_RUN, to: 1 });
    assert_eq!(m.take_log(), [format!("write_protect_run 0 {MAX_RUN}")]);
    let sent = p.take_peer_messages();
    assert_eq!(sent.len(), 1);
    let (to, ToPeer::Pages { req, first, count, data }) = &sent[0];
    assert_eq!((*to, *req, *first, *count, data.as_slice()), (1, 5, 0, MAX_RUN, &pages(0, MAX_RUN)[..]));
}

#[test]
fn p2_note_before_data_installs_when_the_pages_arrive() {
    let (mut p, mut m, req, first, count) = fetch_run();
    assert!(count >= 8, "a run of {count}");
    assert!(msg(&mut p, &mut m, ToProcess::ForwardNote { req, first, count: 4 }).is_empty());
    assert!(m.take_log().is_empty(), "nothing installed before the data");
    assert!((1..5).all(|q| p.state(q) == PageState::Invalid));
    let out = peer(&mut p, &mut m, req, first, 4, 7);
    assert_eq!(out, [ToCoordinator::Got { first: 1, count: 4 }]);
    assert_eq!(m.take_log(), ["install_run 1 4 false"], "one install for the run (it wakes the waiters)");
    assert_eq!(m.bytes(1, 4), pages(7, 4));
    for q in 1..5 {
        assert_eq!(p.state(q), PageState::ReadOnly);
        assert!(forwarded(&p, q));
        assert!(p.slots[&q].pending.is_none() && p.slots[&q].mode == Mode::Invalidate);
    }
    assert!(p.fwd.incoming.is_empty(), "nothing kept for installed pages");
    // A read fault on them is resolved; the rest of the run is still in flight.
    let mut out = Vec::new();
    p.handle_fault(2, Access::Read, &mut m, &mut out);
    assert_eq!(m.take_log(), ["wake 2"]);
    assert!(!p.is_idle());
    let s = p.stats();
    assert_eq!((s.pages_got, s.peer_bytes_received), (4, 4 * PAGE_SIZE as u64));
}

#[test]
fn p3_data_before_note_is_kept_until_the_note() {
    let (mut p, mut m, req, first, _) = fetch_run();
    assert!(peer(&mut p, &mut m, req, first, 4, 9).is_empty(), "no Got before the note");
    assert!(m.take_log().is_empty(), "not installed before the note");
    assert_eq!(p.fwd.incoming.len(), 4);
    let out = msg(&mut p, &mut m, ToProcess::ForwardNote { req, first, count: 4 });
    assert_eq!(out, [ToCoordinator::Got { first: 1, count: 4 }]);
    assert_eq!(m.take_log(), ["install_run 1 4 false"]);
    assert_eq!(m.bytes(1, 4), pages(9, 4));
    assert!((1..5).all(|q| p.state(q) == PageState::ReadOnly && forwarded(&p, q)));
    assert!(p.fwd.incoming.is_empty());
}

#[test]
fn installs_split_into_runs_where_pages_are_not_here() {
    let (mut p, mut m, req, _, _) = fetch_run();
    // Early data for 1-2 and 5-6; the note for 1-7.
    peer(&mut p, &mut m, req, 1, 2, 1);
    peer(&mut p, &mut m, req, 5, 2, 5);
    let out = msg(&mut p, &mut m, ToProcess::ForwardNote { req, first: 1, count: 7 });
    assert_eq!(out, [ToCoordinator::Got { first: 1, count: 2 }, ToCoordinator::Got { first: 5, count: 2 }]);
    assert_eq!(m.take_log(), ["install_run 1 2 false", "install_run 5 2 false"]);
    // 3-4 and 7 wait for their data; a message covering 2-7 installs 3-4 and 7 only (2, 5
    // and 6 are installed already: their copies are dropped).
    let out = peer(&mut p, &mut m, req, 2, 6, 102);
    assert_eq!(out, [ToCoordinator::Got { first: 3, count: 2 }, ToCoordinator::Got { first: 7, count: 1 }]);
    assert_eq!(m.take_log(), ["install_run 3 2 false", "install_run 7 1 false"]);
    assert_eq!(m.bytes(1, 7), [pages(1, 2), pages(103, 2), pages(5, 2), pages(107, 1)].concat());
    assert_eq!(p.stats().peer_pages_dropped, 3);
    assert!(p.fwd.incoming.is_empty());
}

#[test]
fn p4_abort_before_install_answers_forward_aborted_and_data_drops_a_late_pages() {
    let (mut p, mut m, req, first, _) = fetch_run();
    msg(&mut p, &mut m, ToProcess::ForwardNote { req, first, count: 4 });
    let out = msg(&mut p, &mut m, ToProcess::ForwardAbort { req, first, count: 4 });
    assert_eq!(out, [ToCoordinator::ForwardAborted { first: 1, count: 4 }]);
    // The Fetch stays pending, without its note.
    assert!((1..5).all(|q| p.slots[&q].pending.is_some_and(|x| x.req == req)));
    assert!(p.fwd.incoming.is_empty());
    // The source's pages arrive late: not installed (no note), kept for a new note.
    assert!(peer(&mut p, &mut m, req, first, 4, 9).is_empty());
    assert!(m.take_log().is_empty());
    assert_eq!(p.fwd.incoming.len(), 4);
    // The coordinator answers from the home copy: what was kept is dropped; the copies are
    // not forwarded ones (not written back at release).
    let data = Some(PageData::from(pages(40, 4)));
    assert!(msg(&mut p, &mut m, ToProcess::DataRun { req, first, count: 4, data, mode: Mode::Invalidate }).is_empty());
    assert_eq!(m.take_log(), ["install_run 1 4 false"]);
    assert_eq!(m.bytes(1, 4), pages(40, 4));
    assert!((1..5).all(|q| p.state(q) == PageState::ReadOnly && !forwarded(&p, q)));
    assert!(p.fwd.incoming.is_empty(), "forgotten with the Fetch");
    // Still later, the same pages: no Fetch pending, dropped.
    assert!(peer(&mut p, &mut m, req, first, 4, 9).is_empty());
    assert!(p.fwd.incoming.is_empty() && m.take_log().is_empty());
    assert_eq!(m.bytes(1, 4), pages(40, 4));
    assert_eq!((p.stats().peer_pages_dropped, p.stats().forwards_aborted), (4, 4));
}

#[test]
fn p4_abort_after_install_is_ignored_and_a_partial_one_answers_the_rest() {
    let (mut p, mut m, req, first, _) = fetch_run();
    msg(&mut p, &mut m, ToProcess::ForwardNote { req, first, count: 6 });
    // 1-2 and 5 arrived and were installed (Got sent); 3-4 and 6 not yet.
    peer(&mut p, &mut m, req, 1, 2, 1);
    peer(&mut p, &mut m, req, 5, 1, 5);
    let out = msg(&mut p, &mut m, ToProcess::ForwardAbort { req, first, count: 6 });
    assert_eq!(out, [ToCoordinator::ForwardAborted { first: 3, count: 2 }, ToCoordinator::ForwardAborted { first: 6, count: 1 }]);
    // All installed: ignored.
    let (mut p, mut m, req, first, _) = fetch_run();
    msg(&mut p, &mut m, ToProcess::ForwardNote { req, first, count: 2 });
    assert_eq!(peer(&mut p, &mut m, req, first, 2, 1), [ToCoordinator::Got { first: 1, count: 2 }]);
    assert!(msg(&mut p, &mut m, ToProcess::ForwardAbort { req, first, count: 2 }).is_empty());
    assert!((1..3).all(|q| p.state(q) == PageState::ReadOnly));
    assert_eq!(p.stats().forwards_aborted, 0);
}

#[test]
fn a_second_note_after_an_abort_takes_the_new_forward_even_when_its_pages_come_first() {
    // The model's deadlock (Task D, finding 2): the aborted source's pages come late, the new
    // source's pages overtake the new note. Neither may be dropped as "aborted".
    let (mut p, mut m, req, first, _) = fetch_run();
    msg(&mut p, &mut m, ToProcess::ForwardNote { req, first, count: 2 });
    msg(&mut p, &mut m, ToProcess::ForwardAbort { req, first, count: 2 });
    assert!(peer(&mut p, &mut m, req, first, 2, 1).is_empty(), "the first source, late");
    assert!(peer(&mut p, &mut m, req, first, 2, 60).is_empty(), "the new source, before its note");
    assert!(m.take_log().is_empty());
    let out = msg(&mut p, &mut m, ToProcess::ForwardNote { req, first, count: 2 });
    assert_eq!(out, [ToCoordinator::Got { first: 1, count: 2 }]);
    assert_eq!(m.take_log(), ["install_run 1 2 false"]);
    assert_eq!(m.bytes(1, 2), pages(60, 2), "the later copy");
    // And in the other order: the new note first, then pages (from either source) install.
    let (mut p, mut m, req, first, _) = fetch_run();
    msg(&mut p, &mut m, ToProcess::ForwardNote { req, first, count: 2 });
    msg(&mut p, &mut m, ToProcess::ForwardAbort { req, first, count: 2 });
    assert!(msg(&mut p, &mut m, ToProcess::ForwardNote { req, first, count: 2 }).is_empty());
    assert_eq!(peer(&mut p, &mut m, req, first, 2, 60), [ToCoordinator::Got { first: 1, count: 2 }]);
    assert_eq!(m.bytes(1, 2), pages(60, 2));
    // A second abort of the new forward is then answered again only for pages not installed.
    assert!(msg(&mut p, &mut m, ToProcess::ForwardAbort { req, first, count: 2 }).is_empty());
}

#[test]
fn pages_for_no_pending_fetch_are_dropped_and_not_kept() {
    let (mut p, mut m) = region();
    // Nothing asked for.
    assert!(peer(&mut p, &mut m, 1, 4, 2, 1).is_empty());
    // An ownership request is never answered by a forward.
    let mut out = Vec::new();
    p.handle_fault(10, Access::Write, &mut m, &mut out);
    let [ToCoordinator::Own { req, .. }] = out[..] else { panic!("{out:?}") };
    assert!(peer(&mut p, &mut m, req, 10, 1, 1).is_empty());
    // Another request for a pending page.
    let req = fetch(&mut p, &mut m, 20);
    assert!(peer(&mut p, &mut m, req + 100, 20, 1, 1).is_empty());
    assert!(p.fwd.incoming.is_empty(), "nothing kept");
    assert!(m.pages.is_empty());
    assert_eq!(p.stats().peer_pages_dropped, 4);
    // The right request: kept.
    assert!(peer(&mut p, &mut m, req, 20, 1, 1).is_empty());
    assert_eq!(p.fwd.incoming.len(), 1);
    // Its Fetch answered by the coordinator instead (a broken coordinator, but what is kept
    // must still go with the Fetch).
    msg(&mut p, &mut m, ToProcess::Data { req, page: 20, data: None, mode: Mode::Invalidate });
    assert!(p.fwd.incoming.is_empty());
}

#[test]
fn p5_an_undelivered_peer_message_returns_its_pages_to_the_coordinator() {
    let (mut p, mut m) = region();
    own(&mut p, &mut m, 1, 10);
    own(&mut p, &mut m, 2, 20);
    msg(&mut p, &mut m, ToProcess::Forward { req: 9, first: 1, count: 2, to: 4 });
    let mut sent = p.take_peer_messages();
    let (to, pm) = sent.pop().unwrap();
    let mut out = Vec::new();
    p.peer_failed(to, pm, &mut out);
    assert_eq!(out, [ToCoordinator::ForwardReturn { req: 9, to: 4, first: 1, count: 2, data: PageData::from(pages(10, 1).into_iter().chain(pages(20, 1)).collect::<Vec<u8>>()) }]);
    // The copies stay, read-only and forwarded.
    assert!((1..3).all(|q| p.state(q) == PageState::ReadOnly && forwarded(&p, q) && m.pages.contains_key(&q)));
    assert_eq!(p.stats().forward_returns, 2);
}

#[test]
fn p6_release_writes_back_forwarded_read_only_copies_as_runs() {
    let (mut p, mut m) = region();
    // 1 owned; 2-3 forwarded from owned and read-only copies; 4 a plain read-only copy;
    // 5 installed from a peer; 6 owned.
    own(&mut p, &mut m, 2, 2);
    read(&mut p, &mut m, 3, 3);
    msg(&mut p, &mut m, ToProcess::Forward { req: 1, first: 2, count: 2, to: 1 });
    own(&mut p, &mut m, 1, 1);
    read(&mut p, &mut m, 4, 4);
    let req = fetch(&mut p, &mut m, 5);
    msg(&mut p, &mut m, ToProcess::ForwardNote { req, first: 5, count: 1 });
    peer(&mut p, &mut m, req, 5, 1, 5);
    own(&mut p, &mut m, 6, 6);
    m.take_log();
    let mut out = Vec::new();
    assert_eq!(p.release_all(&mut m, &mut out), 5);
    assert_eq!(
        m.take_log(),
        [
            "write_protect_run 1 1",
            "drop_run 1 1",
            "read_run 2 2",
            "drop_run 2 2",
            "drop_run 4 1",
            "read_run 5 1",
            "drop_run 5 1",
            "write_protect_run 6 1",
            "drop_run 6 1"
        ]
    );
    let written: Vec<(PageNo, u8)> = out
        .iter()
        .map(|o| match o {
            ToCoordinator::Writeback { page, data } => (*page, data[0]),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(written, [(1, 1), (2, 2), (3, 3), (5, 5), (6, 6)]);
    assert!(m.pages.is_empty());
    // Forwarded read-only copies alone: read, not protected.
    let (mut p, mut m) = region();
    read(&mut p, &mut m, 8, 8);
    read(&mut p, &mut m, 9, 9);
    msg(&mut p, &mut m, ToProcess::Forward { req: 1, first: 8, count: 2, to: 1 });
    m.take_log();
    let mut out = Vec::new();
    assert_eq!(p.release_all(&mut m, &mut out), 2);
    assert_eq!(m.take_log(), ["read_run 8 2", "drop_run 8 2"]);
}

#[test]
fn the_forwarded_mark_goes_with_the_copy_or_when_it_becomes_writable() {
    let (mut p, mut m) = region();
    read(&mut p, &mut m, 1, 1);
    read(&mut p, &mut m, 2, 2);
    msg(&mut p, &mut m, ToProcess::Forward { req: 1, first: 1, count: 2, to: 1 });
    assert!(forwarded(&p, 1) && forwarded(&p, 2));
    // 1 invalidated, fetched again from the home copy: a plain copy.
    msg(&mut p, &mut m, ToProcess::Invalidate { page: 1 });
    assert!(!forwarded(&p, 1));
    read(&mut p, &mut m, 1, 1);
    assert!(!forwarded(&p, 1));
    // 2 upgraded (the coordinator knows the copy is current), then downgraded: not marked.
    let mut out = Vec::new();
    p.handle_fault(2, Access::Write, &mut m, &mut out);
    let [ToCoordinator::Own { req, .. }] = out[..] else { panic!("{out:?}") };
    // While the upgrade is in flight the copy is still read-only and marked.
    assert!(forwarded(&p, 2));
    msg(&mut p, &mut m, ToProcess::Grant { req, page: 2, data: None });
    assert!(!forwarded(&p, 2));
    msg(&mut p, &mut m, ToProcess::Downgrade { page: 2 });
    assert!(!forwarded(&p, 2));
    // 3 forwarded, its upgrade in flight when it is invalidated (the slot stays, Invalid),
    // then answered with a read-only copy in update mode (rule 3'): a plain copy.
    read(&mut p, &mut m, 3, 3);
    msg(&mut p, &mut m, ToProcess::Forward { req: 2, first: 3, count: 1, to: 1 });
    let mut out = Vec::new();
    p.handle_fault(3, Access::Write, &mut m, &mut out);
    let [ToCoordinator::Own { req, .. }] = out[..] else { panic!("{out:?}") };
    msg(&mut p, &mut m, ToProcess::Invalidate { page: 3 });
    assert!(!forwarded(&p, 3));
    msg(&mut p, &mut m, ToProcess::Data { req, page: 3, data: None, mode: Mode::Update });
    assert_eq!(p.state(3), PageState::ReadOnly);
    assert!(!forwarded(&p, 3));
    let mut out = Vec::new();
    assert_eq!(p.release_all(&mut m, &mut out), 0, "nothing written back: {out:?}");
}

#[test]
fn a_downgrade_reaching_a_read_only_copy_answers_with_it_and_keeps_it() {
    let (mut p, mut m) = region();
    read(&mut p, &mut m, 1, 11);
    m.take_log();
    let out = msg(&mut p, &mut m, ToProcess::Downgrade { page: 1 });
    assert_eq!(out, [ToCoordinator::DowngradeAck { page: 1, data: Some(PageData::from(pages(11, 1))) }]);
    assert_eq!(m.take_log(), ["read_run 1 1"]);
    assert_eq!(p.state(1), PageState::ReadOnly);
    assert!(m.pages.contains_key(&1));
    // A run of owned and read-only copies: page by page, the acks merged into one run.
    own(&mut p, &mut m, 2, 12);
    read(&mut p, &mut m, 3, 13);
    m.take_log();
    let out = msg(&mut p, &mut m, ToProcess::DowngradeRun { first: 1, count: 3 });
    assert_eq!(out, [ToCoordinator::DowngradeAckRun { first: 1, count: 3, data: Some(PageData::from(pages(11, 3))) }]);
    assert_eq!(m.take_log(), ["read_run 1 1", "write_protect_run 2 1", "read_run 3 1"]);
    assert!((1..4).all(|q| p.state(q) == PageState::ReadOnly));
    // Read-only copies only: one read.
    let out = msg(&mut p, &mut m, ToProcess::DowngradeRun { first: 1, count: 3 });
    assert_eq!(out.len(), 1);
    assert_eq!(m.take_log(), ["read_run 1 3"]);
    // A page not held in the run: page by page; the held ones answer with data, the other
    // without.
    let out = msg(&mut p, &mut m, ToProcess::DowngradeRun { first: 2, count: 3 });
    let acks: Vec<(PageNo, bool)> = out
        .into_iter()
        .flat_map(crate::runs::expand_to_coordinator)
        .map(|a| match a {
            ToCoordinator::DowngradeAck { page, data } => (page, data.is_some()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(acks, [(2, true), (3, true), (4, false)]);
}

#[test]
fn read_ahead_runs_answered_by_forwards_end_like_data() {
    let (mut p, mut m, req, first, count) = fetch_run();
    // Half of the run from a peer, half from the home copy.
    let half = count / 2;
    msg(&mut p, &mut m, ToProcess::ForwardNote { req, first, count: half });
    assert_eq!(peer(&mut p, &mut m, req, first, half, 0), [ToCoordinator::Got { first, count: half }]);
    let rest = first + u64::from(half);
    msg(&mut p, &mut m, ToProcess::DataRun { req, first: rest, count: count - half, data: None, mode: Mode::Invalidate });
    // Other windows still in flight: answered too.
    let pending: Vec<(PageNo, ReqId)> =
        p.slots.iter().filter_map(|(&q, s)| s.pending.map(|x| (q, x.req))).collect();
    for (q, r) in pending {
        msg(&mut p, &mut m, ToProcess::Data { req: r, page: q, data: None, mode: Mode::Invalidate });
    }
    assert!(p.is_idle());
    assert!((first..first + u64::from(count)).all(|q| p.state(q) == PageState::ReadOnly));
    // Faults on the forwarded pages are resolved; walking on asks only for pages not here.
    m.take_log();
    let mut out = Vec::new();
    for q in first..first + u64::from(half) {
        p.handle_fault(q, Access::Read, &mut m, &mut out);
    }
    assert!(out.is_empty(), "{out:?}");
    assert!(m.take_log().iter().all(|l| l.starts_with("wake")));
}

#[test]
fn malformed_forward_messages_are_errors_and_change_nothing() {
    let (mut p, mut m, req, first, count) = fetch_run();
    let mut out = Vec::new();
    let bad = |req, first, count, len: usize| ToPeer::Pages { req, first, count, data: PageData::from(vec![1; len]) };
    // Length, count, region.
    assert!(p.handle_peer(2, bad(req, first, 2, PAGE_SIZE), &mut m, &mut out).is_err());
    assert!(p.handle_peer(2, bad(req, first, 1, PAGE_SIZE + 1), &mut m, &mut out).is_err());
    assert!(p.handle_peer(2, bad(req, first, 0, 0), &mut m, &mut out).is_err());
    assert!(p.handle_peer(2, bad(req, first, MAX_RUN + 1, (MAX_RUN as usize + 1) * PAGE_SIZE), &mut m, &mut out).is_err());
    assert!(p.handle_peer(2, bad(req, 999, 2, 2 * PAGE_SIZE), &mut m, &mut out).is_err());
    assert!(p.handle_peer(2, bad(req, u64::MAX, 2, 2 * PAGE_SIZE), &mut m, &mut out).is_err());
    for bad in [
        ToProcess::Forward { req, first: 999, count: 2, to: 1 },
        ToProcess::ForwardNote { req, first: 999, count: 2 },
        ToProcess::ForwardAbort { req, first: u64::MAX, count: 2 },
        ToProcess::ForwardNote { req, first, count: 0 },
        // Pages with no such Fetch pending (page 0 was answered; another request).
        ToProcess::ForwardNote { req, first: 0, count: 2 },
        ToProcess::ForwardNote { req: req + 1, first, count: 2 },
        // An abort before any note.
        ToProcess::ForwardAbort { req, first, count: 2 },
    ] {
        assert!(p.handle_message(bad.clone(), &mut m, &mut out).is_err(), "{bad:?}");
    }
    // A second note for the same pages.
    msg(&mut p, &mut m, ToProcess::ForwardNote { req, first, count: 2 });
    assert!(p.handle_message(ToProcess::ForwardNote { req, first: first + 1, count: 2 }, &mut m, &mut out).is_err());
    assert!(out.is_empty() && p.take_peer_messages().is_empty());
    assert!(m.take_log().is_empty());
    assert_eq!(p.fwd.incoming.len(), 2, "only the good note kept");
    assert!((first..first + u64::from(count)).all(|q| p.state(q) == PageState::Invalid));
    assert_eq!(p.stats().peer_pages_dropped, 0);
}

/// A mapping that accepts anything (the core must not panic even on a bogus sequence).
struct Lenient;

impl PageMemory for Lenient {
    fn install(&mut self, _: PageNo, _: Option<&[u8]>, _: bool) {}
    fn make_writable(&mut self, _: PageNo) {}
    fn write_protect(&mut self, _: PageNo) -> Vec<u8> {
        vec![1; PAGE_SIZE]
    }
    fn drop_page(&mut self, _: PageNo, want: bool) -> Option<Vec<u8>> {
        want.then(|| vec![2; PAGE_SIZE])
    }
    fn wake(&mut self, _: PageNo) {}
    fn store(&mut self, _: PageNo, _: u16, _: u8, _: u128) {}
}

#[test]
fn random_forward_traffic_never_panics_and_keeps_only_what_is_pending() {
    use rand::{rngs::SmallRng, Rng, SeedableRng};
    let (mut got, mut aborted) = (0, 0);
    for seed in 0..300u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let (mut p, mut m, mut out) = (ProcessPages::for_region(8), Lenient, Vec::new());
        for _ in 0..300 {
            let count = rng.gen_range(0..4);
            // Mostly a page and request in flight, so that notes and pages meet their Fetches.
            let pending: Vec<(PageNo, ReqId)> = p.slots.iter().filter_map(|(&q, s)| s.pending.map(|x| (q, x.req))).collect();
            let (page, req) = if !pending.is_empty() && rng.gen_bool(0.8) {
                pending[rng.gen_range(0..pending.len())]
            } else {
                (rng.gen_range(0..10), rng.gen_range(0..6))
            };
            let m2 = match rng.gen_range(0..10) {
                0 | 1 => {
                    let a = if rng.gen() { Access::Read } else { Access::Write };
                    p.handle_fault(page, a, &mut m, &mut out);
                    continue;
                }
                2 => {
                    p.release_all(&mut m, &mut out);
                    continue;
                }
                3 | 4 => {
                    let len = if rng.gen_bool(0.8) { count as usize * PAGE_SIZE } else { rng.gen_range(0..3 * PAGE_SIZE) };
                    let pm = ToPeer::Pages { req, first: page, count, data: PageData::from(vec![3; len]) };
                    if rng.gen_bool(0.1) {
                        p.peer_failed(1, pm, &mut out);
                    } else {
                        let _ = p.handle_peer(rng.gen_range(0..4) as Rank, pm, &mut m, &mut out);
                    }
                    continue;
                }
                5 => ToProcess::ForwardNote { req, first: page, count },
                6 => ToProcess::ForwardAbort { req, first: page, count },
                7 => ToProcess::Forward { req, first: page, count, to: 1 },
                8 => ToProcess::DataRun { req, first: page, count, data: None, mode: Mode::Invalidate },
                _ => match rng.gen_range(0..3) {
                    0 => ToProcess::Invalidate { page },
                    1 => ToProcess::Downgrade { page },
                    _ => ToProcess::Recall { page },
                },
            };
            let _ = p.handle_message(m2, &mut m, &mut out);
            p.take_peer_messages();
            // What is kept for forwards is for pending Fetches only.
            for (q, (r, _)) in &p.fwd.incoming {
                assert!(p.fetch_pending(*q, *r), "seed {seed}: kept for page {q} request {r}");
            }
        }
        got += p.stats().pages_got;
        aborted += p.stats().forwards_aborted;
    }
    assert!(got > 100 && aborted > 20, "the traffic reaches installs ({got}) and aborts ({aborted})");
}
