//! The page directory's unit tests: each transaction, the races of the module docs, update mode
//! and the adaptive policy, and malformed or flooding input.

use super::*;
use crate::PAGE_SIZE;
use crate::wire::{GrantData, RmwOp};
use rand::{rngs::SmallRng, Rng, SeedableRng};

type Out = Vec<(Rank, ToProcess)>;

fn run(d: &mut PageDirectory, from: Rank, msg: ToCoordinator) -> Out {
    let mut out = Vec::new();
    d.handle(from, msg, &mut out).unwrap();
    out
}

/// A whole page starting with `b` (zeros after).
fn bytes(b: &[u8]) -> PageData {
    PageData::from(page_of(b))
}

fn page_of(b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    v.resize(crate::PAGE_SIZE, 0);
    v
}

/// A fetch run served after a downgrade run carries the owner's bytes as they came: once the
/// replies are coalesced, the run's data is the acknowledgement's own buffer (no copy read
/// back out of the home copies, no copy into the run), and the home copies hold the bytes.
#[test]
fn a_fetch_run_answered_from_a_downgrade_run_shares_its_bytes() {
    const N: u64 = 4;
    let mut d = PageDirectory::new(2, 8);
    for page in 0..N {
        run(&mut d, 0, ToCoordinator::Own { req: 1, page });
    }
    run(&mut d, 1, ToCoordinator::FetchRun { req: 2, first: 0, count: N as u32 });
    let owner: Vec<u8> = (0..N).flat_map(|p| page_of(&[p as u8 + 1, 0xaa])).collect();
    let ack = bytes::Bytes::from(owner.clone());
    let out = run(&mut d, 0, ToCoordinator::DowngradeAckRun { first: 0, count: N as u32, data: Some(PageData::from(ack.clone())) });
    let to_1: Vec<ToProcess> = out.into_iter().filter(|(r, _)| *r == 1).map(|(_, m)| m).collect();
    match &crate::runs::coalesce_to_process(to_1)[..] {
        [ToProcess::DataRun { req: 2, first: 0, count, data: Some(data), .. }] => {
            assert_eq!(*count, N as u32);
            assert_eq!(data.as_slice(), &owner[..]);
            assert!(data.is_shared(), "the reply run was copied");
            assert_eq!(data.clone().into_bytes().as_ptr(), ack.as_ptr(), "the reply run is not the acknowledgement's buffer");
        }
        other => panic!("{other:?}"),
    }
    for p in 0..N {
        assert_eq!(d.inspect(p).home.as_deref(), Some(&owner[p as usize * PAGE_SIZE..(p as usize + 1) * PAGE_SIZE]));
    }
    // Once handled, the directory keeps no part of the frame: a later fetch reads the store.
    assert!(d.homes.read(N).is_none());
    let later = run(&mut d, 1, ToCoordinator::Fetch { req: 3, page: 0 });
    assert!(matches!(&later[..], [(1, ToProcess::Data { data: Some(h), .. })] if !h.is_shared() && h.as_slice() == &owner[..PAGE_SIZE]));
}

/// Acknowledgement and writeback runs are read in place page by page: a directory fed the
/// run answers, stores and counts exactly like one fed the pages' own messages.
#[test]
fn ack_and_writeback_runs_act_like_their_pages() {
    const N: u64 = 5;
    let pages = |b: u8| -> Vec<u8> { (0..N).flat_map(|p| page_of(&[b, p as u8 + 1])).collect() };
    // Rank 0 owns pages 1..1+N (written), rank 1 fetches them (a Downgrade each), rank 2
    // takes ownership (a Recall each), rank 2 writes back.
    let scenario = |as_runs: bool| {
        let mut d = PageDirectory::new(3, 8);
        let mut outs = Vec::new();
        for page in 1..1 + N {
            outs.extend(run(&mut d, 0, ToCoordinator::Own { req: 1, page }));
        }
        outs.extend(run(&mut d, 1, ToCoordinator::FetchRun { req: 2, first: 1, count: N as u32 }));
        let (down, recall, back) = (pages(7), pages(8), pages(9));
        let page = |all: &[u8], i: u64| PageData::from(all[i as usize * PAGE_SIZE..(i as usize + 1) * PAGE_SIZE].to_vec());
        if as_runs {
            outs.extend(run(&mut d, 0, ToCoordinator::DowngradeAckRun { first: 1, count: N as u32, data: Some(PageData::from(down.clone())) }));
        } else {
            for i in 0..N {
                outs.extend(run(&mut d, 0, ToCoordinator::DowngradeAck { page: 1 + i, data: Some(page(&down, i)) }));
            }
        }
        // Rank 0 kept a copy (it is a reader now); rank 2 asks for ownership while rank 1
        // (also a reader) is invalidated; then rank 2 is made the owner and recalled.
        outs.extend(run(&mut d, 2, ToCoordinator::OwnRun { req: 3, first: 1, count: N as u32, conditional: false }));
        for r in [0, 1] {
            outs.extend(run(&mut d, r, ToCoordinator::InvalidateAckRun { first: 1, count: N as u32 }));
        }
        outs.extend(run(&mut d, 0, ToCoordinator::OwnRun { req: 4, first: 1, count: N as u32, conditional: false }));
        if as_runs {
            outs.extend(run(&mut d, 2, ToCoordinator::RecallAckRun { first: 1, count: N as u32, data: Some(PageData::from(recall.clone())) }));
            outs.extend(run(&mut d, 0, ToCoordinator::WritebackRun { first: 1, count: N as u32, data: PageData::from(back.clone()) }));
        } else {
            for i in 0..N {
                outs.extend(run(&mut d, 2, ToCoordinator::RecallAck { page: 1 + i, data: Some(page(&recall, i)) }));
            }
            for i in 0..N {
                outs.extend(run(&mut d, 0, ToCoordinator::Writeback { page: 1 + i, data: page(&back, i) }));
            }
        }
        let homes: Vec<Option<Vec<u8>>> = (0..8).map(|p| d.homes.read(p).map(|h| h.to_vec())).collect();
        let views: Vec<(Option<Rank>, Vec<Rank>, bool)> =
            (0..8).map(|p| d.inspect(p)).map(|v| (v.owner, v.readers, v.busy)).collect();
        (outs, homes, views, d.stats())
    };
    let (runs, pages_each) = (scenario(true), scenario(false));
    assert_eq!(runs, pages_each);
    // And what they did is what the scenario says: the write-back is the home copy, nobody
    // owns the pages, the downgraded bytes reached the fetcher and the recalled ones rank 0.
    let (outs, homes, views, stats) = runs;
    for i in 0..N {
        assert_eq!(homes[1 + i as usize].as_deref(), Some(&pages(9)[i as usize * PAGE_SIZE..(i as usize + 1) * PAGE_SIZE]));
        assert_eq!(views[1 + i as usize], (None, vec![], false));
    }
    assert_eq!(stats.writebacks, N);
    let sent_to = |r: Rank, b: u8| {
        outs.iter().any(|(to, m)| {
            *to == r
                && match m {
                    ToProcess::Data { data: Some(d), .. } | ToProcess::Grant { data: Some(GrantData::Bytes(d)), .. } => d[0] == b,
                    _ => false,
                }
        })
    };
    assert!(sent_to(1, 7) && sent_to(0, 8));
}

#[test]
fn fetch_of_untouched_page_is_zero_and_costs_nothing() {
    let mut d = PageDirectory::new(2, 4);
    let out = run(&mut d, 0, ToCoordinator::Fetch { req: 1, page: 3 });
    assert_eq!(out, vec![(0, ToProcess::Data { req: 1, page: 3, data: None, mode: Mode::Invalidate })]);
    assert_eq!(d.inspect(3).readers, vec![0]);
    assert_eq!(d.stored_pages(), 0);
    assert_eq!(d.stats().fetches, 1);
    assert_eq!(d.stats().pages_sent, 0);
}

#[test]
fn own_invalidates_readers_and_grants_after_every_ack() {
    let mut d = PageDirectory::new(3, 1);
    run(&mut d, 0, ToCoordinator::Fetch { req: 1, page: 0 });
    run(&mut d, 1, ToCoordinator::Fetch { req: 1, page: 0 });
    run(&mut d, 2, ToCoordinator::Fetch { req: 1, page: 0 });
    let out = run(&mut d, 0, ToCoordinator::Own { req: 2, page: 0 });
    assert_eq!(
        out,
        vec![(1, ToProcess::Invalidate { page: 0 }), (2, ToProcess::Invalidate { page: 0 })]
    );
    assert!(run(&mut d, 1, ToCoordinator::InvalidateAck { page: 0 }).is_empty());
    // An ack nobody waits for is ignored.
    assert!(run(&mut d, 1, ToCoordinator::InvalidateAck { page: 0 }).is_empty());
    let out = run(&mut d, 2, ToCoordinator::InvalidateAck { page: 0 });
    // The requester was a reader: no data needed.
    assert_eq!(out, vec![(0, ToProcess::Grant { req: 2, page: 0, data: None })]);
    let v = d.inspect(0);
    assert_eq!((v.owner, v.readers.len(), v.busy), (Some(0), 0, false));
    assert_eq!(d.stats().invalidations, 2);
    assert_eq!(d.stats().ownership_grants, 1);
}

#[test]
fn own_by_non_reader_gets_zero_then_recall_moves_data() {
    let mut d = PageDirectory::new(2, 1);
    let out = run(&mut d, 0, ToCoordinator::Own { req: 1, page: 0 });
    assert_eq!(
        out,
        vec![(0, ToProcess::Grant { req: 1, page: 0, data: Some(GrantData::Zero) })]
    );
    let out = run(&mut d, 1, ToCoordinator::Own { req: 1, page: 0 });
    assert_eq!(out, vec![(0, ToProcess::Recall { page: 0 })]);
    let out = run(&mut d, 0, ToCoordinator::RecallAck { page: 0, data: Some(bytes(&[7, 0])) });
    assert_eq!(
        out,
        vec![(
            1,
            ToProcess::Grant { req: 1, page: 0, data: Some(GrantData::Bytes(bytes(&[7, 0]))) }
        )]
    );
    assert_eq!(d.stored_pages(), 1);
    assert_eq!(d.stats().bytes_sent, crate::PAGE_SIZE as u64);
    assert_eq!(d.inspect(0).owner, Some(1));
}

#[test]
fn fetch_downgrades_owner_which_stays_reader() {
    let mut d = PageDirectory::new(2, 1);
    run(&mut d, 0, ToCoordinator::Own { req: 1, page: 0 });
    let out = run(&mut d, 1, ToCoordinator::Fetch { req: 1, page: 0 });
    assert_eq!(out, vec![(0, ToProcess::Downgrade { page: 0 })]);
    let out = run(&mut d, 0, ToCoordinator::DowngradeAck { page: 0, data: Some(bytes(&[1])) });
    assert_eq!(out, vec![(1, ToProcess::Data { req: 1, page: 0, data: Some(bytes(&[1])), mode: Mode::Invalidate })]);
    let v = d.inspect(0);
    assert_eq!((v.owner, v.readers), (None, vec![0, 1]));
}

#[test]
fn requests_queue_behind_a_busy_page() {
    let mut d = PageDirectory::new(3, 1);
    run(&mut d, 0, ToCoordinator::Own { req: 1, page: 0 });
    assert_eq!(run(&mut d, 1, ToCoordinator::Own { req: 1, page: 0 }).len(), 1); // Recall
    assert!(run(&mut d, 2, ToCoordinator::Fetch { req: 1, page: 0 }).is_empty());
    assert_eq!(d.inspect(0).queued, 1);
    let out = run(&mut d, 0, ToCoordinator::RecallAck { page: 0, data: Some(bytes(&[5])) });
    // Grant to 1, then the queued Fetch starts: Downgrade to the new owner 1.
    assert_eq!(
        out,
        vec![
            (
                1,
                ToProcess::Grant { req: 1, page: 0, data: Some(GrantData::Bytes(bytes(&[5]))) }
            ),
            (1, ToProcess::Downgrade { page: 0 }),
        ]
    );
    let out = run(&mut d, 1, ToCoordinator::DowngradeAck { page: 0, data: Some(bytes(&[6])) });
    assert_eq!(out, vec![(2, ToProcess::Data { req: 1, page: 0, data: Some(bytes(&[6])), mode: Mode::Invalidate })]);
}

#[test]
fn writeback_races_with_recall() {
    let mut d = PageDirectory::new(2, 1);
    run(&mut d, 0, ToCoordinator::Own { req: 1, page: 0 });
    assert_eq!(run(&mut d, 1, ToCoordinator::Own { req: 1, page: 0 }).len(), 1);
    // 0 wrote back before seeing the Recall, then answers it without data.
    assert!(run(&mut d, 0, ToCoordinator::Writeback { page: 0, data: bytes(&[9]) }).is_empty());
    let out = run(&mut d, 0, ToCoordinator::RecallAck { page: 0, data: None });
    assert_eq!(
        out,
        vec![(
            1,
            ToProcess::Grant { req: 1, page: 0, data: Some(GrantData::Bytes(bytes(&[9]))) }
        )]
    );
    assert_eq!(d.stats().writebacks, 1);
    // A writeback from a non-owner is ignored.
    run(&mut d, 0, ToCoordinator::Writeback { page: 0, data: bytes(&[1]) });
    assert_eq!(d.inspect(0).home, Some(page_of(&[9])));
    // Zero contents are not stored.
    run(&mut d, 1, ToCoordinator::Writeback { page: 0, data: bytes(&[0, 0]) });
    assert_eq!(d.stored_pages(), 0);
}

#[test]
fn leave_completes_pending_downgrade_with_home_copy() {
    let mut d = PageDirectory::new(3, 1);
    run(&mut d, 0, ToCoordinator::Own { req: 1, page: 0 });
    run(&mut d, 0, ToCoordinator::Writeback { page: 0, data: bytes(&[3]) });
    run(&mut d, 0, ToCoordinator::Own { req: 2, page: 0 });
    assert_eq!(run(&mut d, 1, ToCoordinator::Fetch { req: 1, page: 0 }).len(), 1);
    let mut out = Vec::new();
    d.handle_leave(0, &mut out);
    assert_eq!(out, vec![(1, ToProcess::Data { req: 1, page: 0, data: Some(bytes(&[3])), mode: Mode::Invalidate })]);
    let v = d.inspect(0);
    assert_eq!((v.owner, v.readers, v.busy), (None, vec![1], false));
}

#[test]
fn leave_of_requester_and_of_reader() {
    let mut d = PageDirectory::new(3, 1);
    run(&mut d, 1, ToCoordinator::Fetch { req: 1, page: 0 });
    run(&mut d, 2, ToCoordinator::Fetch { req: 1, page: 0 });
    assert_eq!(run(&mut d, 0, ToCoordinator::Own { req: 1, page: 0 }).len(), 2);
    run(&mut d, 1, ToCoordinator::InvalidateAck { page: 0 });
    let mut out = Vec::new();
    d.handle_leave(0, &mut out); // the requester leaves: no Grant
    assert!(out.is_empty());
    d.handle_leave(2, &mut out); // the last awaited ack counts as received
    assert!(out.is_empty());
    let v = d.inspect(0);
    assert_eq!((v.owner, v.readers.len(), v.busy), (None, 0, false));
    // Later acks from the departed are ignored.
    assert!(run(&mut d, 2, ToCoordinator::InvalidateAck { page: 0 }).is_empty());
}

#[test]
fn errors() {
    let mut d = PageDirectory::new(2, 2);
    let mut out = Vec::new();
    assert_eq!(
        d.handle(0, ToCoordinator::Fetch { req: 1, page: 2 }, &mut out),
        Err(DirectoryError::OutOfRange { page: 2, pages: 2 })
    );
    assert!(matches!(
        d.handle(0, ToCoordinator::Detach, &mut out),
        Err(DirectoryError::Unexpected(_))
    ));
    assert!(matches!(
        d.handle(5, ToCoordinator::Fetch { req: 1, page: 0 }, &mut out),
        Err(DirectoryError::Unexpected(_))
    ));
    assert!(out.is_empty());
}

/// Arbitrary message sequences (protocol-violating ones included) never panic, and the
/// owner/readers invariant holds throughout.
#[test]
fn random_input_never_panics() {
    for seed in 0..300u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut d = PageDirectory::new(4, 3);
        let mut out = Vec::new();
        for _ in 0..200 {
            let from = rng.gen_range(0..5);
            let page = rng.gen_range(0..4);
            let with_data = rng.gen_bool(0.5);
            let data = || with_data.then(|| PageData::from(vec![1; 3]));
            let msg = match rng.gen_range(0..8) {
                0 => ToCoordinator::Fetch { req: rng.gen(), page },
                1 => ToCoordinator::Own { req: rng.gen(), page },
                2 => ToCoordinator::InvalidateAck { page },
                3 => ToCoordinator::DowngradeAck { page, data: data() },
                4 => ToCoordinator::RecallAck { page, data: data() },
                5 => ToCoordinator::Writeback { page, data: PageData::from(vec![rng.gen(); 2]) },
                6 => ToCoordinator::Detach,
                _ => {
                    d.handle_leave(from, &mut out);
                    continue;
                }
            };
            let _ = d.handle(from, msg, &mut out);
            assert_invariants(&d, 3, seed);
        }
    }
}

/// The directory's invariants on pages `0..pages`: an owner excludes readers; a stale page has
/// readers, no owner, and is in invalidate mode.
pub(super) fn assert_invariants(d: &PageDirectory, pages: PageNo, seed: u64) {
    for p in 0..pages {
        let v = d.inspect(p);
        assert!(v.owner.is_none() || v.readers.is_empty(), "seed {seed}: {v:?}");
        if v.stale {
            assert!(v.owner.is_none() && !v.readers.is_empty() && v.mode == Mode::Invalidate, "seed {seed}: {v:?}");
        }
        if !v.backups.is_empty() {
            // Backups hold newer bytes than the home: an idle page has someone newer still
            // (owner or stale readers), or a restore is under way (E3); never update mode.
            assert!(v.busy || v.owner.is_some() || v.stale, "seed {seed}: backups of an idle page nobody holds: {v:?}");
            assert_eq!(v.mode, Mode::Invalidate, "seed {seed}: backups in update mode: {v:?}");
        }
    }
}

// ---- update mode ----

/// `out` without the mode hints (ModeHint, Advice): the tests check the protocol messages.
fn no_hints(out: Out) -> Out {
    out.into_iter()
        .filter(|(_, m)| !matches!(m, ToProcess::ModeHint { .. } | ToProcess::Advice { .. }))
        .collect()
}

fn write(req: ReqId, offset: u16, width: u8, value: u128) -> ToCoordinator {
    ToCoordinator::Write { req, page: 0, offset, width, value }
}

fn rmw(req: ReqId, op: RmwOp, operand: u64, expected: u64) -> ToCoordinator {
    ToCoordinator::Rmw { req, page: 0, offset: 8, width: 4, op, operand, expected }
}

fn ack(req: ReqId, offset: u16, width: u8, value: u128, old: u64) -> ToProcess {
    ToProcess::WriteAck { req, page: 0, offset, width, value, old }
}

/// A one-page directory in update mode whose readers are `readers`.
fn update_page(nprocs: u32, readers: &[Rank]) -> PageDirectory {
    let mut d = PageDirectory::new(nprocs, 1).with_default_policy(Coherence::Update);
    for &r in readers {
        let out = run(&mut d, r, ToCoordinator::Fetch { req: 1, page: 0 });
        assert!(matches!(out[..], [(_, ToProcess::Data { mode: Mode::Update, .. })]));
    }
    assert_eq!(d.inspect(0).mode, Mode::Update);
    d
}

#[test]
fn update_write_applies_to_home_and_broadcasts_to_other_readers() {
    let mut d = update_page(4, &[0, 1, 2]);
    let out = run(&mut d, 1, write(7, 8, 2, 0xBEEF));
    let update = ToProcess::Update { page: 0, offset: 8, width: 2, value: 0xBEEF };
    // The other readers only (not 3, which holds no copy), then the writer's ack.
    assert_eq!(out, vec![(0, update.clone()), (2, update), (1, ack(7, 8, 2, 0xBEEF, 0))]);
    let home = d.inspect(0).home.unwrap();
    assert_eq!(home.len(), crate::PAGE_SIZE);
    assert_eq!(home[8..10], [0xEF, 0xBE]);
    assert!(home.iter().enumerate().all(|(i, &b)| b == 0 || i == 8 || i == 9));
    // A 16-byte store; `old` holds the low 8 bytes it replaced.
    let out = run(&mut d, 0, write(8, 8, 16, u128::MAX));
    assert_eq!(out.last(), Some(&(0, ack(8, 8, 16, u128::MAX, 0xBEEF))));
    let v = d.inspect(0);
    assert_eq!(
        (v.owner, v.readers, v.busy, v.mode),
        (None, vec![0, 1, 2], false, Mode::Update)
    );
    let s = d.stats();
    assert_eq!((s.replayed_writes, s.updates, s.retries), (2, 4, 0));
    // Storing zeros back makes the page all zero again: nothing stored.
    run(&mut d, 0, write(9, 8, 16, 0));
    assert_eq!(d.stored_pages(), 0);
}

#[test]
fn write_in_invalidate_mode_or_from_a_non_reader_is_retried() {
    let mut d = PageDirectory::new(2, 1).with_default_policy(Coherence::Invalidate);
    run(&mut d, 0, ToCoordinator::Fetch { req: 1, page: 0 });
    assert_eq!(
        run(&mut d, 0, write(2, 0, 8, 5)),
        vec![(0, ToProcess::Retry { req: 2, page: 0 })]
    );
    let out = run(&mut d, 0, rmw(3, RmwOp::Add, 1, 0));
    assert_eq!(out, vec![(0, ToProcess::Retry { req: 3, page: 0 })]);
    assert_eq!((d.inspect(0).home, d.stats().retries, d.stats().replayed_writes), (None, 2, 0));
    // Update mode, but 1 holds no copy (rule 6).
    let mut d = update_page(2, &[0]);
    assert_eq!(
        run(&mut d, 1, write(4, 0, 8, 5)),
        vec![(1, ToProcess::Retry { req: 4, page: 0 })]
    );
    assert_eq!(d.inspect(0).home, None);
    // Bad accesses are errors, not retries.
    let mut out = Vec::new();
    for (offset, width) in [(0, 3), (4095, 2), (0, 32)] {
        let msg = ToCoordinator::Write { req: 5, page: 0, offset, width, value: 1 };
        assert!(matches!(d.handle(0, msg, &mut out), Err(DirectoryError::Unexpected(_))));
    }
    let msg = ToCoordinator::Rmw {
        req: 6,
        page: 0,
        offset: 0,
        width: 16,
        op: RmwOp::Add,
        operand: 1,
        expected: 0,
    };
    assert!(d.handle(0, msg, &mut out).is_err());
    assert!(out.is_empty());
}

#[test]
fn rmw_returns_the_old_value_and_stores_the_new_bytes() {
    let mut d = update_page(2, &[0, 1]);
    run(&mut d, 1, write(1, 8, 4, 10));
    // Add: old 10, new 15, broadcast.
    let out = run(&mut d, 0, rmw(2, RmwOp::Add, 5, 0));
    let update = |value| (1, ToProcess::Update { page: 0, offset: 8, width: 4, value });
    assert_eq!(out, vec![update(15), (0, ack(2, 8, 4, 15, 10))]);
    assert_eq!(d.inspect(0).home.unwrap()[8..12], 15u32.to_le_bytes());
    // CmpXchg that succeeds: old 15 == expected, memory becomes 20.
    let out = run(&mut d, 0, rmw(3, RmwOp::CmpXchg, 20, 15));
    assert_eq!(out, vec![update(20), (0, ack(3, 8, 4, 20, 15))]);
    // CmpXchg that fails: memory unchanged, nothing broadcast, the ack carries the current
    // value as old (what lands in rax).
    let out = run(&mut d, 1, rmw(4, RmwOp::CmpXchg, 99, 7));
    assert_eq!(out, vec![(1, ack(4, 8, 4, 20, 20))]);
    assert_eq!(d.inspect(0).home.unwrap()[8..12], 20u32.to_le_bytes());
    // The width truncates: 4-byte add wraps around without touching the next bytes.
    run(&mut d, 0, write(5, 8, 8, 0x1_FFFF_FFFF));
    let out = run(&mut d, 0, rmw(6, RmwOp::Xadd, 1, 0));
    assert_eq!(out.last(), Some(&(0, ack(6, 8, 4, 0, 0xFFFF_FFFF))));
    assert_eq!(d.inspect(0).home.unwrap()[8..16], [0, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(d.stats().replayed_writes, 6);
}

#[test]
fn ordinary_own_on_an_update_page_is_answered_read_only_and_the_page_stays_in_update_mode() {
    let mut d = PageDirectory::new(3, 1).with_default_policy(Coherence::Adaptive);
    for r in 0..2 {
        run(&mut d, r, ToCoordinator::Fetch { req: 1, page: 0 });
    }
    let mut out = Vec::new();
    d.request_switch(0, Mode::Update, &mut out);
    run(&mut d, 1, write(2, 0, 8, 3));
    // A reader that still believed invalidate mode: no data (its copy is current).
    assert_eq!(
        run(&mut d, 0, ToCoordinator::Own { req: 3, page: 0 }),
        vec![(0, ToProcess::Data { req: 3, page: 0, data: None, mode: Mode::Update })]
    );
    // A process without a copy: the home copy, and it becomes a reader receiving updates.
    let out = run(&mut d, 2, ToCoordinator::Own { req: 1, page: 0 });
    let [(2, ToProcess::Data { req: 1, page: 0, data: Some(home), mode: Mode::Update })] = &out[..] else { panic!("{out:?}") };
    assert_eq!(home[0..8], 3u64.to_le_bytes());
    let v = d.inspect(0);
    assert_eq!((v.owner, v.readers, v.mode, v.busy), (None, vec![0, 1, 2], Mode::Update, false));
    let s = d.stats();
    assert_eq!((s.to_invalidate, s.owns_kept_in_update, s.ownership_grants), (0, 2, 0));
    // Its replayed store reaches the other two.
    let out = run(&mut d, 2, write(4, 0, 8, 5));
    assert_eq!(out.iter().filter(|(_, m)| matches!(m, ToProcess::Update { .. })).count(), 2, "{out:?}");
}

#[test]
fn forced_own_on_an_update_page_switches_to_invalidate_and_invalidates_the_others() {
    // Adaptive page switched to update mode by hand (an Update-policy page switches back
    // after the grant; see below).
    let mut d = PageDirectory::new(3, 1).with_default_policy(Coherence::Adaptive);
    for r in 0..3 {
        run(&mut d, r, ToCoordinator::Fetch { req: 1, page: 0 });
    }
    let mut out = Vec::new();
    d.request_switch(0, Mode::Update, &mut out);
    assert_eq!(no_hints(out), vec![]);
    assert_eq!(d.inspect(0).mode, Mode::Update);
    run(&mut d, 2, write(2, 0, 8, 3));
    let out = run(&mut d, 0, ToCoordinator::ForceOwn { req: 3, page: 0 });
    assert_eq!(
        out,
        vec![(1, ToProcess::Invalidate { page: 0 }), (2, ToProcess::Invalidate { page: 0 })]
    );
    assert_eq!(d.inspect(0).mode, Mode::Invalidate);
    assert_eq!(d.stats().to_invalidate, 1);
    // A write queued behind the Own is answered Retry once the page is in invalidate mode.
    assert!(run(&mut d, 2, write(4, 0, 8, 9)).is_empty());
    run(&mut d, 1, ToCoordinator::InvalidateAck { page: 0 });
    let out = run(&mut d, 2, ToCoordinator::InvalidateAck { page: 0 });
    assert_eq!(
        out,
        vec![
            (0, ToProcess::Grant { req: 3, page: 0, data: None }),
            (2, ToProcess::Retry { req: 4, page: 0 }),
        ]
    );
    let v = d.inspect(0);
    assert_eq!((v.owner, v.readers), (Some(0), vec![]));
    // The replayed store before the Own is in the home copy (the new owner's copy has it).
    assert_eq!(v.home.map(|h| h[0]), Some(3));

    // Policy Update: the forced Own is served and the owner keeps the page (an instruction
    // may need two pages writable at once); once another process asks for it, the page goes
    // back to update mode by downgrading that new owner.
    let mut d = update_page(2, &[0, 1]);
    assert_eq!(run(&mut d, 1, ToCoordinator::ForceOwn { req: 2, page: 0 }).len(), 1);
    let out = run(&mut d, 0, ToCoordinator::InvalidateAck { page: 0 });
    assert_eq!(out, vec![(1, ToProcess::Grant { req: 2, page: 0, data: None })]);
    assert_eq!(d.inspect(0).mode, Mode::Invalidate);
    let out = run(&mut d, 0, ToCoordinator::Own { req: 3, page: 0 });
    assert_eq!(out, vec![(1, ToProcess::Recall { page: 0 })]);
    let out = run(&mut d, 1, ToCoordinator::RecallAck { page: 0, data: Some(bytes(&[4])) });
    assert_eq!(
        out,
        vec![
            (0, ToProcess::Grant { req: 3, page: 0, data: Some(GrantData::Bytes(bytes(&[4]))) }),
            (0, ToProcess::Downgrade { page: 0 }),
        ]
    );
    let out = run(&mut d, 0, ToCoordinator::DowngradeAck { page: 0, data: Some(bytes(&[5])) });
    assert!(no_hints(out).is_empty());
    let v = d.inspect(0);
    assert_eq!((v.owner, v.readers, v.mode, v.busy), (None, vec![0], Mode::Update, false));
}

#[test]
fn switch_to_update_downgrades_the_owner_first() {
    let mut d = PageDirectory::new(2, 1).with_default_policy(Coherence::Invalidate);
    run(&mut d, 0, ToCoordinator::Own { req: 1, page: 0 });
    let mut out = Vec::new();
    d.request_switch(0, Mode::Update, &mut out);
    assert_eq!(out, vec![(0, ToProcess::Downgrade { page: 0 })]);
    // Not flipped yet: the owner may still be storing.
    let v = d.inspect(0);
    assert_eq!((v.mode, v.owner, v.busy), (Mode::Invalidate, Some(0), true));
    // Requests queue behind the switch.
    assert!(run(&mut d, 1, ToCoordinator::Fetch { req: 1, page: 0 }).is_empty());
    let out = run(&mut d, 0, ToCoordinator::DowngradeAck { page: 0, data: Some(bytes(&[6])) });
    // The former owner stays a reader (and is told the mode); the fetcher gets Data in
    // update mode.
    assert!(out.contains(&(0, ToProcess::ModeHint { page: 0, mode: Mode::Update })));
    assert_eq!(
        no_hints(out),
        vec![(
            1,
            ToProcess::Data { req: 1, page: 0, data: Some(bytes(&[6])), mode: Mode::Update }
        )]
    );
    let v = d.inspect(0);
    assert_eq!((v.mode, v.owner, v.readers, v.busy), (Mode::Update, None, vec![0, 1], false));
    assert_eq!(d.stats().to_update, 1);
    // The former owner's replayed store is accepted.
    assert_eq!(run(&mut d, 0, write(2, 0, 1, 7)).len(), 2);
    // Back to invalidate: immediate, silent; readers keep their copies.
    let mut out = Vec::new();
    d.request_switch(0, Mode::Invalidate, &mut out);
    assert!(out.is_empty());
    let v = d.inspect(0);
    assert_eq!((v.mode, v.readers), (Mode::Invalidate, vec![0, 1]));
    // A switch to the current mode is a no-op; out-of-range pages are ignored.
    d.request_switch(0, Mode::Invalidate, &mut out);
    d.request_switch(9, Mode::Update, &mut out);
    assert!(out.is_empty());
    assert_eq!(d.stats().to_invalidate, 1);
    // Without an owner the switch to update mode is immediate.
    d.request_switch(0, Mode::Update, &mut out);
    assert_eq!(d.inspect(0).mode, Mode::Update);
    assert!(no_hints(out).is_empty());
}

#[test]
fn adaptive_ping_pong_switches_to_update_and_a_write_run_switches_back() {
    let mut d = PageDirectory::new(2, 1).with_default_policy(Coherence::Adaptive);
    let mut grants = 0;
    let mut last = Vec::new();
    // Ownership alternates between 0 and 1; the first grant does not count as a change.
    for k in 0..=PINGPONG_GRANTS {
        let (r, other) = (k % 2, 1 - k % 2);
        let out = run(&mut d, r, ToCoordinator::Own { req: k.into(), page: 0 });
        let out = if k == 0 {
            out
        } else {
            assert_eq!(out, vec![(other, ToProcess::Recall { page: 0 })]);
            run(
                &mut d,
                other,
                ToCoordinator::RecallAck { page: 0, data: Some(bytes(&[k as u8])) },
            )
        };
        assert!(matches!(out[0], (g, ToProcess::Grant { .. }) if g == r), "{out:?}");
        grants += 1;
        assert_eq!(d.inspect(0).mode, Mode::Invalidate);
        if k < PINGPONG_GRANTS {
            assert_eq!(out.len(), 1, "no switch after {grants} grants: {out:?}");
        }
        last = out;
    }
    // The grant that made PINGPONG_GRANTS changes of hands queues the switch: Downgrade.
    let owner = PINGPONG_GRANTS % 2;
    assert_eq!(last[1], (owner, ToProcess::Downgrade { page: 0 }));
    run(&mut d, owner, ToCoordinator::DowngradeAck { page: 0, data: Some(bytes(&[1])) });
    let v = d.inspect(0);
    assert_eq!((v.mode, v.owner, v.readers), (Mode::Update, None, vec![owner]));
    run(&mut d, 1 - owner, ToCoordinator::Fetch { req: 99, page: 0 });
    // Writes by both processes: no run.
    let w = |d: &mut PageDirectory, from: Rank, req: ReqId| {
        run(d, from, write(req, 0, 8, req.into()))
    };
    for req in 0..3 * u64::from(WRITE_RUN) {
        let out = w(&mut d, (req % 2) as Rank, req);
        assert!(matches!(out.last(), Some((_, ToProcess::WriteAck { .. }))));
    }
    assert_eq!(d.inspect(0).mode, Mode::Update);
    // WRITE_RUN writes in a row by one process switch back after the last one.
    for req in 1..u64::from(WRITE_RUN) {
        w(&mut d, 0, 1000 + req);
        assert_eq!(d.inspect(0).mode, Mode::Update, "after {req} writes");
    }
    let out = w(&mut d, 0, 2000);
    assert!(
        matches!(out.last(), Some((0, ToProcess::WriteAck { .. }))),
        "the last write is applied"
    );
    assert_eq!(d.inspect(0).mode, Mode::Invalidate);
    assert_eq!(w(&mut d, 0, 2001), vec![(0, ToProcess::Retry { req: 2001, page: 0 })]);
    let s = d.stats();
    assert_eq!((s.to_update, s.to_invalidate), (1, 1));
}

#[test]
fn advise_switches_touched_pages_both_ways() {
    let mut d = PageDirectory::new(2, 3).with_default_policy(Coherence::Invalidate);
    run(&mut d, 0, ToCoordinator::Fetch { req: 1, page: 0 });
    run(&mut d, 1, ToCoordinator::Own { req: 1, page: 1 });
    let advise = |coherence| ToCoordinator::Advise { first: 0, count: 2, coherence };
    let out = run(&mut d, 0, advise(Coherence::Update));
    // Page 0 (a reader only) flips at once; page 1 downgrades its owner first.
    assert_eq!(no_hints(out), vec![(1, ToProcess::Downgrade { page: 1 })]);
    assert_eq!((d.inspect(0).mode, d.inspect(1).mode), (Mode::Update, Mode::Invalidate));
    run(&mut d, 1, ToCoordinator::DowngradeAck { page: 1, data: None });
    assert_eq!(d.inspect(1).mode, Mode::Update);
    assert_eq!(d.inspect(1).readers, Vec::<Rank>::new(), "no data: no copy left");
    // Untouched page 2 keeps the default; a page touched later in the range gets the advice.
    assert_eq!(
        run(&mut d, 1, ToCoordinator::Fetch { req: 2, page: 2 })[0].1,
        ToProcess::Data { req: 2, page: 2, data: None, mode: Mode::Invalidate }
    );
    run(&mut d, 0, advise(Coherence::Invalidate));
    assert_eq!((d.inspect(0).mode, d.inspect(1).mode), (Mode::Invalidate, Mode::Invalidate));
    assert_eq!(
        run(&mut d, 0, write(5, 0, 8, 1)),
        vec![(0, ToProcess::Retry { req: 5, page: 0 })]
    );
    // Advice before the first touch: the page is created in update mode.
    let mut d = PageDirectory::new(2, 3).with_default_policy(Coherence::Invalidate);
    run(&mut d, 0, ToCoordinator::Advise { first: 2, count: 1, coherence: Coherence::Update });
    let out = run(&mut d, 0, ToCoordinator::Fetch { req: 1, page: 2 });
    assert_eq!(
        out,
        vec![(0, ToProcess::Data { req: 1, page: 2, data: None, mode: Mode::Update })]
    );
    let s = d.stats();
    assert_eq!((s.to_update, s.to_invalidate), (0, 0));
}

#[test]
fn malformed_and_flooding_requests_are_errors_not_state() {
    let mut d = PageDirectory::new(2, 4);
    let mut out = Vec::new();
    // Page contents must be whole pages, in every message that carries them.
    let short = PageData::from(vec![1; 10]);
    let long = PageData::from(vec![1; crate::PAGE_SIZE + 1]);
    for msg in [
        ToCoordinator::Writeback { page: 0, data: short.clone() },
        ToCoordinator::DowngradeAck { page: 0, data: Some(long.clone()) },
        ToCoordinator::RecallAck { page: 0, data: Some(short) },
    ] {
        assert!(matches!(d.handle(0, msg, &mut out), Err(DirectoryError::BadPageLength { .. })));
    }
    // One fetch or ownership request per page and rank at a time.
    run(&mut d, 0, ToCoordinator::Own { req: 1, page: 1 });
    run(&mut d, 1, ToCoordinator::Own { req: 1, page: 1 }); // busy: recalls rank 0
    let dup = d.handle(1, ToCoordinator::Fetch { req: 2, page: 1 }, &mut out);
    assert_eq!(dup, Err(DirectoryError::DuplicateRequest { rank: 1, page: 1 }));
    // Advice: inside the region only; repeating it broadcasts nothing; ranges are bounded.
    let advise = |first, count| ToCoordinator::Advise { first, count, coherence: Coherence::Update };
    assert!(matches!(d.handle(0, advise(3, 2), &mut out), Err(DirectoryError::BadAdvice(_))));
    assert!(matches!(d.handle(0, advise(0, 0), &mut out), Err(DirectoryError::BadAdvice(_))));
    assert!(matches!(d.handle(0, advise(u64::MAX, 2), &mut out), Err(DirectoryError::BadAdvice(_))));
    assert_eq!(run(&mut d, 0, advise(2, 1)).len(), 2, "one Advice per process");
    assert!(run(&mut d, 0, advise(2, 1)).is_empty());
    let mut big = PageDirectory::new(1, 2 * MAX_ADVICE as u64);
    for i in 0..MAX_ADVICE as u64 {
        let c = if i % 2 == 0 { Coherence::Update } else { Coherence::Invalidate };
        big.handle(0, ToCoordinator::Advise { first: 2 * i, count: 1, coherence: c }, &mut Vec::new()).unwrap();
    }
    let r = big.handle(0, ToCoordinator::Advise { first: 1, count: 1, coherence: Coherence::Update }, &mut Vec::new());
    assert!(matches!(r, Err(DirectoryError::BadAdvice(_))), "{r:?}");
    // A range covering all earlier ones replaces them.
    big.handle(0, ToCoordinator::Advise { first: 0, count: 2 * MAX_ADVICE as u64, coherence: Coherence::Invalidate }, &mut Vec::new())
        .unwrap();
}

#[test]
fn waiting_requests_per_rank_are_bounded() {
    let mut d = PageDirectory::new(2, 1).with_default_policy(Coherence::Update);
    run(&mut d, 1, ToCoordinator::ForceOwn { req: 1, page: 0 });
    run(&mut d, 0, ToCoordinator::Fetch { req: 1, page: 0 }); // busy downgrading rank 1
    let mut out = Vec::new();
    let mut refused = None;
    for req in 0..=u64::from(MAX_PENDING_PER_RANK) {
        let w = ToCoordinator::Write { req, page: 0, offset: 0, width: 8, value: 1 };
        if let Err(e) = d.handle(0, w, &mut out) {
            refused = Some((req, e));
            break;
        }
    }
    let (at, e) = refused.expect("a flood must be refused");
    assert_eq!(e, DirectoryError::TooManyRequests { rank: 0, max: MAX_PENDING_PER_RANK });
    assert_eq!(at, u64::from(MAX_PENDING_PER_RANK), "every queued write counts; the started fetch no longer does");
    // Rank 1 is not affected.
    assert!(d.handle(1, ToCoordinator::Write { req: 9, page: 0, offset: 0, width: 8, value: 1 }, &mut out).is_ok());
}
