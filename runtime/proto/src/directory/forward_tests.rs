//! Direct transfers at the directory (rules D1-D11, `forward.rs`): the forward and its note,
//! stale homes served by readers, flushes, and every way a transfer can end.

use super::*;
use crate::wire::GrantData;
use rand::{rngs::SmallRng, Rng, SeedableRng};

pub(super) type Out = Vec<(Rank, ToProcess)>;

pub(super) fn run(d: &mut PageDirectory, from: Rank, msg: ToCoordinator) -> Out {
    let mut out = Vec::new();
    d.handle(from, msg, &mut out).unwrap();
    out
}

pub(super) fn leave(d: &mut PageDirectory, rank: Rank) -> Out {
    let mut out = Vec::new();
    d.handle_leave(rank, &mut out);
    out
}

pub(super) fn page(b: u8) -> PageData {
    PageData::from(vec![b; crate::PAGE_SIZE])
}

pub(super) const P: PageNo = 3;

pub(super) fn fwd(req: ReqId, to: Rank) -> ToProcess {
    ToProcess::Forward { req, first: P, count: 1, to }
}

pub(super) fn note(req: ReqId) -> ToProcess {
    ToProcess::ForwardNote { req, first: P, count: 1 }
}

fn abort(req: ReqId) -> ToProcess {
    ToProcess::ForwardAbort { req, first: P, count: 1 }
}

pub(super) fn got() -> ToCoordinator {
    ToCoordinator::Got { first: P, count: 1 }
}

fn aborted() -> ToCoordinator {
    ToCoordinator::ForwardAborted { first: P, count: 1 }
}

/// `nprocs` processes, forwards on, rank 0 owning page P.
pub(super) fn owned_by_0(nprocs: u32) -> PageDirectory {
    own_0(PageDirectory::new(nprocs, 8).with_forwards(true))
}

/// Rank 0 asks `d` for page P, which nobody holds.
fn own_0(mut d: PageDirectory) -> PageDirectory {
    let out = run(&mut d, 0, ToCoordinator::Own { req: 1, page: P });
    assert!(matches!(&out[..], [(0, ToProcess::Grant { .. })]), "{out:?}");
    d
}

/// Rank 0 owned P and forwarded it to rank 1: readers {0, 1}, home stale.
pub(super) fn stale_0_1(nprocs: u32) -> PageDirectory {
    forwarded_0_1(owned_by_0(nprocs))
}

/// Rank 0 owns P in `d`, which it forwards to rank 1.
fn forwarded_0_1(mut d: PageDirectory) -> PageDirectory {
    run(&mut d, 1, ToCoordinator::Fetch { req: 2, page: P });
    assert!(run(&mut d, 1, got()).is_empty());
    d
}

#[test]
fn a_fetch_of_an_owned_page_is_forwarded_with_a_note_and_completes_on_got() {
    let mut d = owned_by_0(2);
    let out = run(&mut d, 1, ToCoordinator::Fetch { req: 2, page: P });
    assert_eq!(out, vec![(0, fwd(2, 1)), (1, note(2))]);
    let v = d.inspect(P);
    assert!(v.busy && v.owner == Some(0), "{v:?}");
    // An unrelated Got (from the owner) changes nothing.
    assert!(run(&mut d, 0, got()).is_empty());
    assert!(d.inspect(P).busy);
    assert!(run(&mut d, 1, got()).is_empty());
    let v = d.inspect(P);
    assert_eq!((v.owner, v.readers.clone(), v.stale, v.busy), (None, vec![0, 1], true, false), "{v:?}");
    assert_eq!((d.stats().forwards, d.stats().downgrades), (1, 0));
}

#[test]
fn forwards_are_off_unless_the_session_turns_them_on() {
    let mut d = PageDirectory::new(2, 8);
    run(&mut d, 0, ToCoordinator::Own { req: 1, page: P });
    let out = run(&mut d, 1, ToCoordinator::Fetch { req: 2, page: P });
    assert_eq!(out, vec![(0, ToProcess::Downgrade { page: P })]);
}

#[test]
fn a_stale_page_is_forwarded_by_its_lowest_reader() {
    let mut d = stale_0_1(3);
    let out = run(&mut d, 2, ToCoordinator::Fetch { req: 5, page: P });
    assert_eq!(out, vec![(0, fwd(5, 2)), (2, note(5))]);
    run(&mut d, 2, got());
    let v = d.inspect(P);
    assert_eq!((v.readers, v.stale), (vec![0, 1, 2], true));
    // Still nothing went home: the home was never written.
    assert_eq!(v.home, None);
}

#[test]
fn requests_queue_behind_a_forward_and_see_its_result() {
    let mut d = owned_by_0(3);
    run(&mut d, 1, ToCoordinator::Fetch { req: 2, page: P });
    assert!(run(&mut d, 2, ToCoordinator::Own { req: 3, page: P }).is_empty(), "an Own must wait for the forward");
    // The Got completes the forward; the queued Own by a non-holder of the now stale page
    // first brings a reader's copy home.
    let out = run(&mut d, 1, got());
    assert_eq!(out, vec![(0, ToProcess::Downgrade { page: P })]);
    let out = run(&mut d, 0, ToCoordinator::DowngradeAck { page: P, data: Some(page(9)) });
    assert_eq!(out, vec![(0, ToProcess::Invalidate { page: P }), (1, ToProcess::Invalidate { page: P })]);
    run(&mut d, 0, ToCoordinator::InvalidateAck { page: P });
    let out = run(&mut d, 1, ToCoordinator::InvalidateAck { page: P });
    assert_eq!(out, vec![(2, ToProcess::Grant { req: 3, page: P, data: Some(GrantData::Bytes(page(9))) })]);
    let v = d.inspect(P);
    assert_eq!((v.owner, v.stale, d.stats().flushes), (Some(2), false, 1));
}

/// Without backups, a reader upgrading a stale page first has another reader's copy sent
/// home: otherwise its copy would be the only current one once the others are invalidated,
/// and its crash would take back writes they had seen (model: `FW-up`, `FD-ww`). Its own copy
/// needs no data. (With backups the others keep their bytes instead: `backup_tests.rs`.)
#[test]
fn without_backups_an_own_by_a_reader_of_a_stale_page_flushes_another_reader_first() {
    let mut d = forwarded_0_1(own_0(PageDirectory::new(2, 8).with_forwards(true).with_backups(false)));
    let out = run(&mut d, 1, ToCoordinator::Own { req: 7, page: P });
    assert_eq!(out, vec![(0, ToProcess::Downgrade { page: P })]);
    let out = run(&mut d, 0, ToCoordinator::DowngradeAck { page: P, data: Some(page(2)) });
    assert_eq!(out, vec![(0, ToProcess::Invalidate { page: P })]);
    let out = run(&mut d, 0, ToCoordinator::InvalidateAck { page: P });
    assert_eq!(out, vec![(1, ToProcess::Grant { req: 7, page: P, data: None })]);
    let v = d.inspect(P);
    assert_eq!((v.owner, v.stale, d.stats().flushes), (Some(1), false, 1));
    assert_eq!(v.home, Some(page(2).to_vec()));
}

/// The only reader of a stale page upgrades at once: nobody else saw anything its crash
/// could take back.
#[test]
fn the_only_reader_of_a_stale_page_upgrades_without_a_flush() {
    let mut d = owned_by_0(2);
    run(&mut d, 1, ToCoordinator::Fetch { req: 2, page: P });
    leave(&mut d, 1); // the requester is lost: rank 0 alone holds the stale page
    assert_eq!(d.inspect(P).readers, vec![0]);
    let out = run(&mut d, 0, ToCoordinator::Own { req: 3, page: P });
    assert_eq!(out, vec![(0, ToProcess::Grant { req: 3, page: P, data: None })]);
    assert_eq!(d.stats().flushes, 0);
}

/// A source whose Writeback is not kept (another reader's made the home current first) still
/// skipped the Forward: the directory must abort it all the same (model: D3 "always").
#[test]
fn a_source_writeback_aborts_its_forward_even_when_the_writeback_is_not_kept() {
    let mut d = stale_0_1(3);
    run(&mut d, 2, ToCoordinator::Fetch { req: 5, page: P });
    assert!(run(&mut d, 1, ToCoordinator::Writeback { page: P, data: page(7) }).is_empty());
    assert!(!d.inspect(P).stale);
    let out = run(&mut d, 0, ToCoordinator::Writeback { page: P, data: page(7) });
    assert_eq!(out, vec![(2, abort(5))]);
    let out = run(&mut d, 2, aborted());
    assert_eq!(out, vec![(2, ToProcess::Data { req: 5, page: P, data: Some(page(7)), mode: Mode::Invalidate })]);
    let v = d.inspect(P);
    assert_eq!((v.readers, v.stale, v.busy), (vec![2], false, false));
}

#[test]
fn a_flush_answered_without_data_drops_that_reader_and_tries_the_next() {
    let mut d = stale_0_1(3);
    let out = run(&mut d, 2, ToCoordinator::Own { req: 7, page: P });
    assert_eq!(out, vec![(0, ToProcess::Downgrade { page: P })]);
    // Rank 0 no longer holds it (a correct process wrote it back first; this one did not).
    let out = run(&mut d, 0, ToCoordinator::DowngradeAck { page: P, data: None });
    assert_eq!(out, vec![(1, ToProcess::Downgrade { page: P })]);
    let out = run(&mut d, 1, ToCoordinator::DowngradeAck { page: P, data: Some(page(4)) });
    assert_eq!(out, vec![(1, ToProcess::Invalidate { page: P })]);
}

#[test]
fn a_switch_to_update_mode_flushes_a_stale_page_first() {
    let mut d = stale_0_1(2);
    let mut out = Vec::new();
    d.request_switch(P, Mode::Update, &mut out);
    // (A switch is made on behalf of rank 0: another reader is asked.)
    assert_eq!(out, vec![(1, ToProcess::Downgrade { page: P })]);
    let out = run(&mut d, 1, ToCoordinator::DowngradeAck { page: P, data: Some(page(6)) });
    assert!(out.iter().all(|(_, m)| matches!(m, ToProcess::ModeHint { mode: Mode::Update, .. })), "{out:?}");
    let v = d.inspect(P);
    assert_eq!((v.mode, v.stale, v.readers), (Mode::Update, false, vec![0, 1]));
    assert_eq!(v.home, Some(page(6).to_vec()));
}

#[test]
fn a_source_that_wrote_back_first_makes_the_directory_abort_and_serve_from_home() {
    let mut d = owned_by_0(2);
    run(&mut d, 1, ToCoordinator::Fetch { req: 2, page: P });
    let out = run(&mut d, 0, ToCoordinator::Writeback { page: P, data: page(8) });
    assert_eq!(out, vec![(1, abort(2))]);
    let out = run(&mut d, 1, aborted());
    assert_eq!(out, vec![(1, ToProcess::Data { req: 2, page: P, data: Some(page(8)), mode: Mode::Invalidate })]);
    let v = d.inspect(P);
    assert_eq!((v.owner, v.readers, v.stale, v.busy), (None, vec![1], false, false));
}

#[test]
fn a_lost_source_whose_page_arrived_leaves_the_requester_holding_it() {
    let mut d = owned_by_0(2);
    run(&mut d, 1, ToCoordinator::Fetch { req: 2, page: P });
    assert_eq!(leave(&mut d, 0), vec![(1, abort(2))]);
    // The requester had installed the page before the abort reached it.
    assert!(run(&mut d, 1, got()).is_empty());
    let v = d.inspect(P);
    assert_eq!((v.readers, v.stale, v.busy), (vec![1], true, false));
    // The late ForwardAborted that a confused process might still send changes nothing.
    assert!(run(&mut d, 1, aborted()).is_empty());
}

#[test]
fn a_lost_source_whose_page_did_not_arrive_is_answered_from_home() {
    let mut d = owned_by_0(2);
    run(&mut d, 1, ToCoordinator::Fetch { req: 2, page: P });
    assert_eq!(leave(&mut d, 0), vec![(1, abort(2))]);
    let out = run(&mut d, 1, aborted());
    // Rank 0's writes are lost with it (never written back): the home is all zero.
    assert_eq!(out, vec![(1, ToProcess::Data { req: 2, page: P, data: None, mode: Mode::Invalidate })]);
    let v = d.inspect(P);
    assert_eq!((v.readers, v.stale), (vec![1], false));
}

#[test]
fn a_lost_stale_source_is_replaced_by_another_reader() {
    let mut d = stale_0_1(3);
    run(&mut d, 2, ToCoordinator::Fetch { req: 5, page: P });
    assert_eq!(leave(&mut d, 0), vec![(2, abort(5))]);
    // Rank 1 still holds the current contents: the Fetch starts again from it.
    let out = run(&mut d, 2, aborted());
    assert_eq!(out, vec![(1, fwd(5, 2)), (2, note(5))]);
    run(&mut d, 2, got());
    let v = d.inspect(P);
    assert_eq!((v.readers, v.stale), (vec![1, 2], true));
}

#[test]
fn a_source_that_cannot_reach_the_requester_returns_the_page_home() {
    for installed in [false, true] {
        let mut d = owned_by_0(2);
        run(&mut d, 1, ToCoordinator::Fetch { req: 2, page: P });
        let out = run(&mut d, 0, ToCoordinator::ForwardReturn { req: 2, to: 1, first: P, count: 1, data: page(5) });
        assert_eq!(out, vec![(1, abort(2))]);
        if installed {
            assert!(run(&mut d, 1, got()).is_empty());
        } else {
            let out = run(&mut d, 1, aborted());
            assert_eq!(out, vec![(1, ToProcess::Data { req: 2, page: P, data: Some(page(5)), mode: Mode::Invalidate })]);
        }
        let v = d.inspect(P);
        assert_eq!((v.owner, v.readers, v.stale), (None, vec![0, 1], false), "installed: {installed}");
        assert_eq!(v.home, Some(page(5).to_vec()));
    }
}

/// A return that names another forward, or comes after its forward ended, changes nothing: its
/// bytes may be older than the page's (model: `F-fail-asis-return`).
#[test]
fn a_return_for_a_forward_that_is_not_awaited_is_ignored() {
    let mut d = owned_by_0(3);
    run(&mut d, 1, ToCoordinator::Fetch { req: 2, page: P });
    assert!(run(&mut d, 0, ToCoordinator::ForwardReturn { req: 9, to: 1, first: P, count: 1, data: page(5) }).is_empty());
    assert!(run(&mut d, 0, ToCoordinator::ForwardReturn { req: 2, to: 2, first: P, count: 1, data: page(5) }).is_empty());
    run(&mut d, 1, got());
    assert!(run(&mut d, 0, ToCoordinator::ForwardReturn { req: 2, to: 1, first: P, count: 1, data: page(5) }).is_empty());
    let v = d.inspect(P);
    assert_eq!((v.readers, v.stale, v.home), (vec![0, 1], true, None));
}

#[test]
fn a_lost_requester_ends_the_forward_with_the_source_holding_the_page() {
    let mut d = owned_by_0(2);
    run(&mut d, 1, ToCoordinator::Fetch { req: 2, page: P });
    assert!(leave(&mut d, 1).is_empty());
    let v = d.inspect(P);
    assert_eq!((v.owner, v.readers, v.stale, v.busy), (None, vec![0], true, false));
}

#[test]
fn writebacks_of_a_stale_page_are_kept_from_its_readers_and_losing_every_reader_unstales_it() {
    let mut d = stale_0_1(3);
    run(&mut d, 0, ToCoordinator::Writeback { page: P, data: page(3) });
    let v = d.inspect(P);
    assert_eq!((v.readers, v.stale, v.home), (vec![1], false, Some(page(3).to_vec())));
    // The home is current now: a fetch is served from it.
    let out = run(&mut d, 2, ToCoordinator::Fetch { req: 9, page: P });
    assert_eq!(out, vec![(2, ToProcess::Data { req: 9, page: P, data: Some(page(3)), mode: Mode::Invalidate })]);
    // A writeback of a page that is not stale, from a reader, is ignored.
    run(&mut d, 1, ToCoordinator::Writeback { page: P, data: page(4) });
    assert_eq!(d.inspect(P).home, Some(page(3).to_vec()));

    let mut d = stale_0_1(2);
    leave(&mut d, 0);
    assert!(d.inspect(P).stale);
    leave(&mut d, 1);
    assert!(!d.inspect(P).stale);
}

#[test]
fn runs_of_forward_messages_act_page_by_page() {
    let mut d = PageDirectory::new(2, 8).with_forwards(true);
    run(&mut d, 0, ToCoordinator::OwnRun { req: 1, first: 0, count: 4, conditional: false });
    let out = run(&mut d, 1, ToCoordinator::FetchRun { req: 2, first: 0, count: 4 });
    assert_eq!(out.len(), 8);
    run(&mut d, 1, ToCoordinator::Got { first: 0, count: 4 });
    assert!((0..4).all(|p| d.inspect(p).stale && d.inspect(p).readers == vec![0, 1]));
    assert!(d.handle(1, ToCoordinator::Got { first: 6, count: 4 }, &mut Vec::new()).is_err(), "past the region");
    let short = ToCoordinator::ForwardReturn { req: 2, to: 1, first: 0, count: 2, data: page(1) };
    assert!(d.handle(0, short, &mut Vec::new()).is_err(), "two pages of data for a run of two");
}

/// Arbitrary sequences with forwards on, the forward messages included, never panic and keep
/// the invariants: an owner excludes readers, and a stale page has readers, no owner and is in
/// invalidate mode.
#[test]
fn random_input_with_forwards_never_panics_and_keeps_the_invariants() {
    for seed in 0..400u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut d = PageDirectory::new(4, 3).with_forwards(true);
        let mut out = Vec::new();
        for _ in 0..300 {
            let from = rng.gen_range(0..5);
            let page = rng.gen_range(0..3);
            let with_data = rng.gen_bool(0.8);
            let data = || with_data.then(|| self::page(1));
            let msg = match rng.gen_range(0..15) {
                12 => ToCoordinator::BackupAck { first: page, count: 1, kept: rng.gen_bool(0.7) },
                13 => ToCoordinator::BackupData { first: page, count: 1, data: self::page(4) },
                14 => ToCoordinator::BackupHome { first: page, count: 1, data: self::page(5) },
                0 | 1 => ToCoordinator::Fetch { req: 1, page },
                2 => ToCoordinator::Own { req: 1, page },
                3 => ToCoordinator::InvalidateAck { page },
                4 => ToCoordinator::DowngradeAck { page, data: data() },
                5 => ToCoordinator::RecallAck { page, data: data() },
                6 => ToCoordinator::Writeback { page, data: self::page(2) },
                7 => ToCoordinator::Got { first: page, count: 1 },
                8 => ToCoordinator::ForwardAborted { first: page, count: 1 },
                9 => ToCoordinator::ForwardReturn { req: 1, to: rng.gen_range(0..4), first: page, count: 1, data: self::page(3) },
                10 => {
                    let to = if rng.gen_bool(0.5) { Mode::Update } else { Mode::Invalidate };
                    d.request_switch(page, to, &mut out);
                    continue;
                }
                _ => {
                    d.handle_leave(from, &mut out);
                    continue;
                }
            };
            let _ = d.handle(from, msg, &mut out);
            super::tests::assert_invariants(&d, 3, seed);
        }
    }
}
