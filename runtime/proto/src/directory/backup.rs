//! Backup copies, the directory's side (model README "Task E", rules E1-E4, checked with
//! `python3 sweeps.py F-backup-all`; the process side is `pages/backup.rs`).
//!
//! After a forward the home is *stale*: the readers hold the current bytes. When one of them,
//! R, asks for ownership, Task D's flush first brought one copy home (a page through the
//! coordinator on every write after a forwarded read). With backups the other readers keep
//! their bytes aside instead, and the home may stay behind:
//!
//! * **E1 upgrade.** An `Own` from a reader R of a stale page with other readers, when the page
//!   has no backups: `InvBackup` to every other reader; each makes its copy Invalid, keeps the
//!   bytes and answers `BackupAck(kept)` (not kept: it had released the page, its `Writeback`
//!   came first). The kept ones are the page's backup holders `B` (or are told `DropBackup` at
//!   once if the home became current meanwhile). Once every ack is in, R is granted ownership
//!   without data, as before. A second upgrade while `B` is not empty flushes as in Task D
//!   (the model's default `flush` variant).
//! * **E2 release.** Whenever the home gets bytes from a current holder (the owner's
//!   writeback, a recall or downgrade with data, a flush, a stale reader's writeback, a
//!   `ForwardReturn`), every holder is told `DropBackup` and `B` is emptied. Forwards do not
//!   release: the page is just stale again.
//! * **E3 restore.** Whenever the home would be used while `B` is not empty — the page has no
//!   owner and is not stale: its owner or all its stale readers were lost — the directory
//!   first asks one holder H (`RestoreBackup`; H leaves `B` then) for its bytes and waits for
//!   `BackupData`, which becomes the home and releases the others; then it goes on with what it
//!   was doing. If H is lost first it asks the next; with none left the older home is used
//!   (everyone who saw the newer bytes is gone).
//! * **E4 detach.** A detaching holder sends its backup home (`BackupHome`): the home takes
//!   it (the flag stays) and the other holders are released. A lost holder just leaves `B`.
//!
//! The restore is part of a transaction ([`super::txn::Txn::restore`]): [`super::txn::drive`]
//! starts it when a transaction is about to finish (or the page is idle) in the state above.

use super::txn::{Entry, Txn};
use super::{DirectoryStats, PageDirectory};
use crate::wire::{PageData, PageNo, Rank, ToProcess};

/// E1: sends `InvBackup` to every reader but the requester and waits for their acks.
pub(super) fn begin_upgrade(e: &Entry, stats: &mut DirectoryStats, page: PageNo, txn: &mut Txn, out: &mut Vec<(Rank, ToProcess)>) {
    for r in e.readers.iter().filter(|&r| r != txn.request.from) {
        out.push((r, ToProcess::InvBackup { first: page, count: 1 }));
        stats.backup_invalidations += 1;
        txn.backup_acks.insert(r);
    }
}

/// E1's rule: an upgrade of a stale page by one of its readers, while it has no backups.
pub(super) fn upgrades_with_backups(e: &Entry, from: Rank) -> bool {
    e.stale && e.backups.is_empty() && e.readers.contains(from)
}

/// E2: the home got current bytes; every backup holder drops its backup.
pub(super) fn release(e: &mut Entry, stats: &mut DirectoryStats, page: PageNo, out: &mut Vec<(Rank, ToProcess)>) {
    for r in e.backups.iter() {
        out.push((r, ToProcess::DropBackup { first: page, count: 1 }));
        stats.backups_released += 1;
    }
    e.backups.clear();
}

/// E3's condition: the home would be used (no owner, not stale) but holders keep newer bytes.
pub(super) fn needs_restore(e: &Entry) -> bool {
    !e.backups.is_empty() && e.owner.is_none() && !e.stale
}

/// E3: asks the lowest holder for its backup; it leaves `B` now (model finding: a release
/// while its answer is on the way must not tell it to drop a backup it no longer has).
pub(super) fn begin_restore(e: &mut Entry, stats: &mut DirectoryStats, page: PageNo, txn: &mut Txn, out: &mut Vec<(Rank, ToProcess)>) {
    let Some(h) = e.backups.iter().next() else { return };
    e.backups.remove(h);
    out.push((h, ToProcess::RestoreBackup { first: page, count: 1 }));
    stats.restores += 1;
    txn.restore = Some(h);
}

impl PageDirectory {
    /// `BackupAck(page, kept)` from `from`, awaited by an upgrade (E1).
    pub(super) fn backup_ack(&mut self, page: PageNo, from: Rank, kept: bool, out: &mut Vec<(Rank, ToProcess)>) {
        let Some(e) = self.entries.get_mut(&page) else { return };
        let Some(txn) = e.busy.as_mut() else { return };
        if !txn.backup_acks.remove(from) {
            return;
        }
        if kept {
            if e.stale {
                e.backups.insert(from);
            } else {
                // The home became current meanwhile (a stale reader's writeback): not needed.
                out.push((from, ToProcess::DropBackup { first: page, count: 1 }));
                self.stats.backups_released += 1;
            }
        }
        self.progress(page, out);
    }

    /// `BackupData(page)` from `from` (E3) or `BackupHome(page)` (E4, `home`: a detach).
    pub(super) fn backup_bytes(&mut self, page: PageNo, from: Rank, data: &PageData, home: bool, out: &mut Vec<(Rank, ToProcess)>) {
        let Some(e) = self.entries.get_mut(&page) else { return };
        let restoring = e.busy.as_ref().is_some_and(|t| t.restore == Some(from));
        if restoring {
            if let Some(txn) = e.busy.as_mut() {
                txn.restore = None;
            }
        } else if !(home && e.backups.remove(from)) {
            // Released (or restored from another holder) meanwhile: nothing newer in it.
            return;
        }
        self.homes.write_data(page, data);
        self.stats.backups_home += 1;
        release(e, &mut self.stats, page, out);
        self.progress(page, out);
    }
}
