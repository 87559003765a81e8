//! Unit tests of backup copies on the process side (`pages/backup.rs`, the model's Task E):
//! the core driven with the fake mapping of the forward tests (full-size pages, run operations
//! logged).

use super::forward_tests::{fetch, msg, own, pages, read, region, FMem};
use super::*;
use crate::wire::{GrantData, ToPeer, ToProcess};
use crate::PAGE_SIZE;

fn try_msg(p: &mut ProcessPages, m: &mut FMem, msg: ToProcess) -> Result<Vec<ToCoordinator>, PagesError> {
    let mut out = Vec::new();
    p.handle_message(msg, m, &mut out).map(|()| out)
}

/// Pages 1-2 and 4 ReadOnly (bytes 10, 20, 40), 3 not held: `InvBackup` of 1..=4 keeps
/// backups of 1, 2 and 4.
fn with_backups() -> (ProcessPages, FMem) {
    let (mut p, mut m) = region();
    read(&mut p, &mut m, 1, 10);
    read(&mut p, &mut m, 2, 20);
    read(&mut p, &mut m, 4, 40);
    msg(&mut p, &mut m, ToProcess::InvBackup { first: 1, count: 4 });
    m.take_log();
    (p, m)
}

#[test]
fn inv_backup_drops_read_only_copies_keeps_their_bytes_and_acks_per_run() {
    let (mut p, mut m) = region();
    read(&mut p, &mut m, 1, 10);
    read(&mut p, &mut m, 2, 20);
    read(&mut p, &mut m, 4, 40);
    m.take_log();
    let out = msg(&mut p, &mut m, ToProcess::InvBackup { first: 1, count: 4 });
    // Read before dropping, one read and one drop per run of copies.
    assert_eq!(m.take_log(), ["read_run 1 2", "drop_run 1 2", "read_run 4 1", "drop_run 4 1"]);
    assert_eq!(
        out,
        [
            ToCoordinator::BackupAck { first: 1, count: 2, kept: true },
            ToCoordinator::BackupAck { first: 3, count: 1, kept: false },
            ToCoordinator::BackupAck { first: 4, count: 1, kept: true },
        ]
    );
    for q in 1..=4 {
        assert_eq!(p.state(q), PageState::Invalid, "page {q}");
        assert!(!m.pages.contains_key(&q), "page {q} is unmapped");
        assert_eq!(p.has_backup(q), q != 3, "page {q}");
    }
    assert_eq!((p.backup_count(), p.stats().backups_kept), (3, 3));
    // Nothing in flight, no slot left behind: the backup is no page state.
    assert!(p.is_idle());
    assert!(p.slots.is_empty(), "{:?}", p.slots);
    // Nothing held at all: every page answered not kept.
    let out = msg(&mut p, &mut m, ToProcess::InvBackup { first: 10, count: 3 });
    assert_eq!(out, [ToCoordinator::BackupAck { first: 10, count: 3, kept: false }]);
    assert!(m.take_log().is_empty());
}

#[test]
fn inv_backup_of_a_writable_copy_is_an_error_and_changes_nothing() {
    let (mut p, mut m) = region();
    read(&mut p, &mut m, 1, 10);
    own(&mut p, &mut m, 2, 20);
    m.take_log();
    let mut out = Vec::new();
    assert!(p.handle_message(ToProcess::InvBackup { first: 1, count: 2 }, &mut m, &mut out).is_err());
    assert!(out.is_empty(), "{out:?}");
    assert!(m.take_log().is_empty());
    assert_eq!((p.state(1), p.state(2)), (PageState::ReadOnly, PageState::Writable));
    assert_eq!(p.backup_count(), 0);
    // Outside the region: an error too.
    assert!(try_msg(&mut p, &mut m, ToProcess::InvBackup { first: 63, count: 2 }).is_err());
    assert!(try_msg(&mut p, &mut m, ToProcess::DropBackup { first: 0, count: 0 }).is_err());
}

#[test]
fn restore_backup_sends_the_kept_bytes_once_then_discards_them() {
    let (mut p, mut m) = with_backups();
    let out = msg(&mut p, &mut m, ToProcess::RestoreBackup { first: 1, count: 2 });
    assert_eq!(out, [ToCoordinator::BackupData { first: 1, count: 2, data: PageData::from([pages(10, 1), pages(20, 1)].concat()) }]);
    assert!(m.take_log().is_empty(), "the mapping is not touched");
    assert!(!p.has_backup(1) && !p.has_backup(2) && p.has_backup(4));
    assert_eq!(p.stats().backups_restored, 2);
    // No backup any more (or never one): a protocol error that changes nothing.
    assert!(try_msg(&mut p, &mut m, ToProcess::RestoreBackup { first: 2, count: 1 }).is_err());
    assert!(try_msg(&mut p, &mut m, ToProcess::RestoreBackup { first: 3, count: 2 }).is_err());
    assert!(p.has_backup(4), "a run with a page without a backup restores nothing");
    let out = msg(&mut p, &mut m, ToProcess::RestoreBackup { first: 4, count: 1 });
    assert_eq!(out, [ToCoordinator::BackupData { first: 4, count: 1, data: PageData::from(pages(40, 1)) }]);
    assert_eq!((p.backup_count(), p.stats().backups_restored), (0, 3));
}

#[test]
fn drop_backup_discards_and_without_a_backup_is_an_error() {
    let (mut p, mut m) = with_backups();
    // Page 3 has none: the whole run is refused, nothing is discarded.
    assert!(try_msg(&mut p, &mut m, ToProcess::DropBackup { first: 2, count: 2 }).is_err());
    assert_eq!(p.backup_count(), 3);
    let out = msg(&mut p, &mut m, ToProcess::DropBackup { first: 1, count: 2 });
    assert!(out.is_empty(), "DropBackup is not answered: {out:?}");
    assert!(m.take_log().is_empty());
    assert!(!p.has_backup(1) && !p.has_backup(2) && p.has_backup(4));
    assert_eq!(p.stats().backups_dropped, 2);
    assert!(try_msg(&mut p, &mut m, ToProcess::DropBackup { first: 1, count: 1 }).is_err(), "dropped twice");
    assert!(try_msg(&mut p, &mut m, ToProcess::RestoreBackup { first: 1, count: 1 }).is_err(), "restored after a drop");
}

#[test]
fn a_page_with_a_backup_is_fetched_and_owned_as_usual_and_the_backup_stays() {
    let (mut p, mut m) = with_backups();
    // A read fault on page 1 sends a Fetch; the Data installs a copy; the backup is untouched.
    let req = fetch(&mut p, &mut m, 1);
    msg(&mut p, &mut m, ToProcess::Data { req, page: 1, data: Some(PageData::from(pages(99, 1))), mode: Mode::Invalidate });
    assert_eq!(p.state(1), PageState::ReadOnly);
    assert_eq!(m.pages[&1].1, pages(99, 1));
    // A write fault on page 2 asks for ownership; granted with data, it becomes Writable.
    own(&mut p, &mut m, 2, 77);
    assert_eq!(p.state(2), PageState::Writable);
    // The backups still hold the old bytes.
    let out = msg(&mut p, &mut m, ToProcess::RestoreBackup { first: 1, count: 2 });
    assert_eq!(out, [ToCoordinator::BackupData { first: 1, count: 2, data: PageData::from([pages(10, 1), pages(20, 1)].concat()) }]);
    assert_eq!((p.state(1), p.state(2)), (PageState::ReadOnly, PageState::Writable), "restoring changes no page state");
    // A later InvBackup of the fresh copy keeps its bytes as a new backup.
    msg(&mut p, &mut m, ToProcess::InvBackup { first: 1, count: 1 });
    let out = msg(&mut p, &mut m, ToProcess::RestoreBackup { first: 1, count: 1 });
    assert_eq!(out, [ToCoordinator::BackupData { first: 1, count: 1, data: PageData::from(pages(99, 1)) }]);
}

#[test]
fn inv_backup_replaces_an_older_backup_of_the_page() {
    let (mut p, mut m) = with_backups();
    let req = fetch(&mut p, &mut m, 4);
    msg(&mut p, &mut m, ToProcess::Data { req, page: 4, data: Some(PageData::from(pages(44, 1))), mode: Mode::Invalidate });
    let out = msg(&mut p, &mut m, ToProcess::InvBackup { first: 4, count: 1 });
    assert_eq!(out, [ToCoordinator::BackupAck { first: 4, count: 1, kept: true }]);
    let out = msg(&mut p, &mut m, ToProcess::RestoreBackup { first: 4, count: 1 });
    assert_eq!(out, [ToCoordinator::BackupData { first: 4, count: 1, data: PageData::from(pages(44, 1)) }]);
}

#[test]
fn inv_backup_of_a_copy_with_an_ownership_request_in_flight_keeps_the_request() {
    let (mut p, mut m) = region();
    read(&mut p, &mut m, 5, 50);
    let mut out = Vec::new();
    p.handle_fault(5, Access::Write, &mut m, &mut out);
    let [ToCoordinator::Own { req, .. }] = out[..] else { panic!("{out:?}") };
    let out = msg(&mut p, &mut m, ToProcess::InvBackup { first: 5, count: 1 });
    assert_eq!(out, [ToCoordinator::BackupAck { first: 5, count: 1, kept: true }]);
    assert_eq!(p.state(5), PageState::Invalid);
    assert!(!p.is_idle(), "the Own is still in flight");
    // The copy is gone, so the Grant carries data.
    msg(&mut p, &mut m, ToProcess::Grant { req, page: 5, data: Some(GrantData::Bytes(PageData::from(pages(55, 1)))) });
    assert_eq!(p.state(5), PageState::Writable);
    assert!(p.is_idle() && p.has_backup(5));
}

#[test]
fn a_forwarded_copy_that_became_a_backup_goes_home_as_a_backup_not_a_writeback() {
    let (mut p, mut m) = region();
    // Page 6 came from a peer: a forwarded ReadOnly copy that a release writes back.
    let req = fetch(&mut p, &mut m, 6);
    msg(&mut p, &mut m, ToProcess::ForwardNote { req, first: 6, count: 1 });
    let mut out = Vec::new();
    p.handle_peer(2, ToPeer::Pages { req, first: 6, count: 1, data: PageData::from(pages(60, 1)) }, &mut m, &mut out).unwrap();
    assert_eq!(out, [ToCoordinator::Got { first: 6, count: 1 }]);
    msg(&mut p, &mut m, ToProcess::InvBackup { first: 6, count: 1 });
    let mut out = Vec::new();
    assert_eq!(p.release(&mut m, &mut out, usize::MAX), (0, true));
    assert_eq!(out, [ToCoordinator::BackupHome { first: 6, count: 1, data: PageData::from(pages(60, 1)) }]);
}

#[test]
fn release_sends_every_backup_home_after_the_write_backs() {
    let (mut p, mut m) = with_backups();
    own(&mut p, &mut m, 8, 80);
    read(&mut p, &mut m, 9, 90);
    m.take_log();
    let mut out = Vec::new();
    assert_eq!(p.release(&mut m, &mut out, usize::MAX), (1, true));
    assert_eq!(
        out,
        [
            ToCoordinator::Writeback { page: 8, data: PageData::from(pages(80, 1)) },
            ToCoordinator::BackupHome { first: 1, count: 2, data: PageData::from([pages(10, 1), pages(20, 1)].concat()) },
            ToCoordinator::BackupHome { first: 4, count: 1, data: PageData::from(pages(40, 1)) },
        ]
    );
    assert_eq!(p.backup_count(), 0);
    assert!(m.pages.is_empty());
    // Nothing left: a second release sends nothing.
    let mut out = Vec::new();
    assert_eq!(p.release(&mut m, &mut out, usize::MAX), (0, true));
    assert!(out.is_empty());
    let s = p.stats();
    assert_eq!((s.backups_kept, s.backups_dropped, s.backups_restored), (3, 0, 0));
}

#[test]
fn a_release_in_slices_counts_backups_against_its_limit_and_ends_with_them() {
    let (mut p, mut m) = with_backups();
    own(&mut p, &mut m, 8, 80);
    let mut sent = Vec::new();
    let mut calls = Vec::new();
    loop {
        let mut out = Vec::new();
        let (written, done) = p.release(&mut m, &mut out, 2);
        calls.push((written, out.len(), done));
        sent.extend(out);
        if done {
            break;
        }
    }
    // 2 slots per call: the Writeback and the first backup, then the other two backups (a run
    // split by the limit).
    assert_eq!(calls, [(1, 2, false), (0, 2, true)]);
    assert_eq!(
        sent,
        [
            ToCoordinator::Writeback { page: 8, data: PageData::from(pages(80, 1)) },
            ToCoordinator::BackupHome { first: 1, count: 1, data: PageData::from(pages(10, 1)) },
            ToCoordinator::BackupHome { first: 2, count: 1, data: PageData::from(pages(20, 1)) },
            ToCoordinator::BackupHome { first: 4, count: 1, data: PageData::from(pages(40, 1)) },
        ]
    );
    assert_eq!(p.backup_count(), 0);
}

#[test]
fn a_run_and_its_per_page_messages_give_the_same_answers() {
    let run = {
        let (mut p, mut m) = with_backups();
        let mut out = msg(&mut p, &mut m, ToProcess::RestoreBackup { first: 1, count: 2 });
        read(&mut p, &mut m, 3, 30);
        out.extend(msg(&mut p, &mut m, ToProcess::InvBackup { first: 2, count: 3 }));
        crate::runs::coalesce_to_coordinator(out)
    };
    let single = {
        let (mut p, mut m) = with_backups();
        let mut out = Vec::new();
        for m2 in crate::runs::expand_to_process(ToProcess::RestoreBackup { first: 1, count: 2 }) {
            out.extend(msg(&mut p, &mut m, m2));
        }
        read(&mut p, &mut m, 3, 30);
        for m2 in crate::runs::expand_to_process(ToProcess::InvBackup { first: 2, count: 3 }) {
            out.extend(msg(&mut p, &mut m, m2));
        }
        crate::runs::coalesce_to_coordinator(out)
    };
    assert_eq!(run, single);
    assert_eq!(
        run,
        [
            ToCoordinator::BackupData { first: 1, count: 2, data: PageData::from([pages(10, 1), pages(20, 1)].concat()) },
            ToCoordinator::BackupAck { first: 2, count: 1, kept: false },
            ToCoordinator::BackupAck { first: 3, count: 1, kept: true },
            ToCoordinator::BackupAck { first: 4, count: 1, kept: false },
        ]
    );
    assert_eq!(run.iter().map(|m| m.page_bytes()).sum::<usize>(), 2 * PAGE_SIZE);
}
