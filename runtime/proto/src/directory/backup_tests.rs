//! Backup copies at the directory (rules E1-E4, `backup.rs`): an upgrade of a stale page keeps
//! the other readers' bytes aside, the home catching up releases them, a lost owner is
//! restored from one, and a detaching holder sends its backup home.

use super::forward_tests::{fwd, got, leave, note, owned_by_0, page, run, stale_0_1, Out, P};
use super::*;
use crate::wire::GrantData;

fn inv_backup() -> ToProcess {
    ToProcess::InvBackup { first: P, count: 1 }
}

fn drop_backup() -> ToProcess {
    ToProcess::DropBackup { first: P, count: 1 }
}

fn restore() -> ToProcess {
    ToProcess::RestoreBackup { first: P, count: 1 }
}

fn backup_ack(kept: bool) -> ToCoordinator {
    ToCoordinator::BackupAck { first: P, count: 1, kept }
}

fn backup_data(b: u8) -> ToCoordinator {
    ToCoordinator::BackupData { first: P, count: 1, data: page(b) }
}

fn backup_home(b: u8) -> ToCoordinator {
    ToCoordinator::BackupHome { first: P, count: 1, data: page(b) }
}

/// Readers {0, 1} of a stale page; rank 1 upgrades and rank 0 keeps a backup: rank 1 owns the
/// page, B = {0}, and the home was never written.
fn upgraded_1_backup_0(nprocs: u32) -> PageDirectory {
    let mut d = stale_0_1(nprocs);
    let out = run(&mut d, 1, ToCoordinator::Own { req: 7, page: P });
    assert_eq!(out, vec![(0, inv_backup())]);
    let out = run(&mut d, 0, backup_ack(true));
    assert_eq!(out, vec![(1, ToProcess::Grant { req: 7, page: P, data: None })]);
    d
}

/// Four processes; readers {0, 1, 2} of a stale page, rank 2 upgrades, ranks 0 and 1 keep
/// backups.
fn upgraded_2_backups_0_1() -> PageDirectory {
    let mut d = stale_0_1(4);
    run(&mut d, 2, ToCoordinator::Fetch { req: 3, page: P });
    run(&mut d, 2, got());
    run(&mut d, 2, ToCoordinator::Own { req: 9, page: P });
    run(&mut d, 0, backup_ack(true));
    run(&mut d, 1, backup_ack(true));
    d
}

/// E1: no flush, no page bytes anywhere; the upgrader gets a grant without data.
#[test]
fn an_upgrade_of_a_stale_page_keeps_the_other_readers_bytes_as_backups() {
    let d = upgraded_1_backup_0(2);
    let v = d.inspect(P);
    assert_eq!((v.owner, v.readers.clone(), v.stale, v.backups.clone(), v.home.clone()), (Some(1), vec![], false, vec![0], None), "{v:?}");
    let s = d.stats();
    assert_eq!((s.flushes, s.backup_invalidations, s.invalidations, s.pages_sent), (0, 1, 0, 0));
}

/// E1 waits for every reader's ack (rule 3): no grant while one is missing.
#[test]
fn the_upgrade_waits_for_every_backup_ack() {
    let mut d = stale_0_1(3);
    run(&mut d, 2, ToCoordinator::Fetch { req: 3, page: P });
    run(&mut d, 2, got());
    let out = run(&mut d, 2, ToCoordinator::Own { req: 9, page: P });
    assert_eq!(out, vec![(0, inv_backup()), (1, inv_backup())]);
    assert!(run(&mut d, 1, backup_ack(true)).is_empty());
    // An ack from a process not asked changes nothing.
    assert!(run(&mut d, 2, backup_ack(true)).is_empty());
    let out = run(&mut d, 0, backup_ack(true));
    assert_eq!(out, vec![(2, ToProcess::Grant { req: 9, page: P, data: None })]);
    assert_eq!(d.inspect(P).backups, vec![0, 1]);
}

/// E2: the owner's writeback makes the home current, and the backups are dropped.
#[test]
fn the_owners_writeback_releases_the_backups() {
    let mut d = upgraded_1_backup_0(2);
    let out = run(&mut d, 1, ToCoordinator::Writeback { page: P, data: page(8) });
    assert_eq!(out, vec![(0, drop_backup())]);
    let v = d.inspect(P);
    assert_eq!((v.owner, v.backups, v.home), (None, vec![], Some(page(8).to_vec())));
}

/// E2: a recall with data releases them too, and the new owner gets those bytes.
#[test]
fn a_recall_with_data_releases_the_backups() {
    let mut d = upgraded_1_backup_0(3);
    let out = run(&mut d, 2, ToCoordinator::Own { req: 4, page: P });
    assert_eq!(out, vec![(1, ToProcess::Recall { page: P })]);
    let out = run(&mut d, 1, ToCoordinator::RecallAck { page: P, data: Some(page(6)) });
    assert_eq!(out, vec![(0, drop_backup()), (2, ToProcess::Grant { req: 4, page: P, data: Some(GrantData::Bytes(page(6))) })]);
    assert!(d.inspect(P).backups.is_empty());
}

/// A forward does not release: the page is stale again with the backups kept; a second
/// upgrade then flushes (the model's default `flush` variant), which releases them.
#[test]
fn a_second_upgrade_while_backups_exist_flushes_and_releases_them() {
    let mut d = upgraded_1_backup_0(3);
    let out = run(&mut d, 2, ToCoordinator::Fetch { req: 5, page: P });
    assert_eq!(out, vec![(1, fwd(5, 2)), (2, note(5))]);
    assert!(run(&mut d, 2, got()).is_empty());
    let v = d.inspect(P);
    assert_eq!((v.readers.clone(), v.stale, v.backups.clone()), (vec![1, 2], true, vec![0]), "{v:?}");
    let out = run(&mut d, 2, ToCoordinator::Own { req: 6, page: P });
    assert_eq!(out, vec![(1, ToProcess::Downgrade { page: P })]);
    let out = run(&mut d, 1, ToCoordinator::DowngradeAck { page: P, data: Some(page(3)) });
    assert_eq!(out, vec![(0, drop_backup()), (1, ToProcess::Invalidate { page: P })]);
    let out = run(&mut d, 1, ToCoordinator::InvalidateAck { page: P });
    assert_eq!(out, vec![(2, ToProcess::Grant { req: 6, page: P, data: None })]);
    let v = d.inspect(P);
    assert_eq!((v.owner, v.backups, d.stats().flushes), (Some(2), vec![], 1));
}

/// E3: the owner is lost before its bytes reached the home: a holder's backup becomes the
/// home before anything uses it, and a request that came meanwhile waits for it.
#[test]
fn a_lost_owner_is_restored_from_a_backup_before_the_home_is_used() {
    let mut d = upgraded_1_backup_0(3);
    let out = leave(&mut d, 1);
    assert_eq!(out, vec![(0, restore())]);
    let v = d.inspect(P);
    assert!(v.busy && v.backups.is_empty(), "the target leaves B when asked: {v:?}");
    assert!(run(&mut d, 2, ToCoordinator::Fetch { req: 8, page: P }).is_empty(), "the fetch waits for the restore");
    let out = run(&mut d, 0, backup_data(4));
    assert_eq!(out, vec![(2, ToProcess::Data { req: 8, page: P, data: Some(page(4)), mode: Mode::Invalidate })]);
    assert_eq!(d.inspect(P).home, Some(page(4).to_vec()));
    assert_eq!(d.stats().restores, 1);
}

/// E3 as a transaction goes on: an Own whose recalled owner was lost gets the restored bytes.
#[test]
fn an_own_whose_recalled_owner_is_lost_gets_the_restored_bytes() {
    let mut d = upgraded_1_backup_0(3);
    let out = run(&mut d, 2, ToCoordinator::Own { req: 4, page: P });
    assert_eq!(out, vec![(1, ToProcess::Recall { page: P })]);
    let out = leave(&mut d, 1);
    assert_eq!(out, vec![(0, restore())]);
    let out = run(&mut d, 0, backup_data(5));
    assert_eq!(out, vec![(2, ToProcess::Grant { req: 4, page: P, data: Some(GrantData::Bytes(page(5))) })]);
}

/// E3: a restore target lost before it answered: the next holder is asked; with none left
/// the older home is used.
#[test]
fn a_lost_restore_target_passes_the_restore_to_the_next_holder() {
    let mut d = upgraded_2_backups_0_1();
    assert_eq!(d.inspect(P).backups, vec![0, 1]);
    assert_eq!(leave(&mut d, 2), vec![(0, restore())]);
    assert_eq!(leave(&mut d, 0), vec![(1, restore())]);
    let out = leave(&mut d, 1);
    assert!(out.is_empty(), "{out:?}");
    let v = d.inspect(P);
    assert!(!v.busy && v.backups.is_empty() && v.owner.is_none(), "{v:?}");
    // The older home (never written: zeros) serves the next fetch.
    let out = run(&mut d, 3, ToCoordinator::Fetch { req: 1, page: P });
    assert_eq!(out, vec![(3, ToProcess::Data { req: 1, page: P, data: None, mode: Mode::Invalidate })]);
}

/// E3 after an upgrade whose requester was lost: the others hold only backups.
#[test]
fn an_upgrader_lost_before_its_grant_leaves_a_restore() {
    let mut d = stale_0_1(2);
    assert_eq!(run(&mut d, 1, ToCoordinator::Own { req: 7, page: P }), vec![(0, inv_backup())]);
    assert!(leave(&mut d, 1).is_empty());
    let out = run(&mut d, 0, backup_ack(true));
    assert_eq!(out, vec![(0, restore())]);
    assert!(run(&mut d, 0, backup_data(2)).is_empty());
    let v = d.inspect(P);
    assert_eq!((v.busy, v.owner, v.backups, v.home), (false, None, vec![], Some(page(2).to_vec())));
}

/// E1 racing a release: a reader's writeback makes the home current during the upgrade, so a
/// backup kept afterwards is dropped at once.
#[test]
fn a_backup_kept_after_the_home_became_current_is_dropped_at_once() {
    let mut d = stale_0_1(3);
    run(&mut d, 2, ToCoordinator::Fetch { req: 3, page: P });
    run(&mut d, 2, got());
    assert_eq!(run(&mut d, 2, ToCoordinator::Own { req: 9, page: P }), vec![(0, inv_backup()), (1, inv_backup())]);
    // Rank 0 released: its Writeback (the current bytes) came before its ack.
    assert!(run(&mut d, 0, ToCoordinator::Writeback { page: P, data: page(7) }).is_empty());
    assert!(run(&mut d, 0, backup_ack(false)).is_empty());
    let out = run(&mut d, 1, backup_ack(true));
    assert_eq!(out, vec![(1, drop_backup()), (2, ToProcess::Grant { req: 9, page: P, data: None })]);
    let v = d.inspect(P);
    assert_eq!((v.owner, v.backups, v.home), (Some(2), vec![], Some(page(7).to_vec())));
}

/// E4: a detaching holder's backup becomes the home and releases the other holders; a
/// BackupHome from a process that holds no backup (released meanwhile) is ignored.
#[test]
fn a_detaching_holders_backup_goes_home_and_releases_the_others() {
    let mut d = upgraded_2_backups_0_1();
    assert!(run(&mut d, 3, backup_home(9)).is_empty());
    assert_eq!(d.inspect(P).home, None);
    let out = run(&mut d, 0, backup_home(6));
    assert_eq!(out, vec![(1, drop_backup())]);
    let v = d.inspect(P);
    assert_eq!((v.owner, v.backups, v.home), (Some(2), vec![], Some(page(6).to_vec())));
}

/// Without forwards nothing is ever stale, so no backups are asked for.
#[test]
fn without_forwards_an_upgrade_invalidates_as_always() {
    let mut d = PageDirectory::new(2, 8);
    run(&mut d, 0, ToCoordinator::Fetch { req: 1, page: P });
    run(&mut d, 1, ToCoordinator::Fetch { req: 1, page: P });
    let out: Out = run(&mut d, 1, ToCoordinator::Own { req: 2, page: P });
    assert_eq!(out, vec![(0, ToProcess::Invalidate { page: P })]);
    let _ = owned_by_0;
}
