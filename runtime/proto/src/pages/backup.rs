//! Backup copies, the process side (model README "Task E", rules E1-E4; the directory's side is
//! `directory/backup.rs`). When a reader upgrades a stale page, the other readers drop their ReadOnly
//! copies but keep the bytes aside as *backups* until the coordinator says what to do with them:
//! * `InvBackup(p)`: a ReadOnly copy is read, dropped (the page is Invalid, exactly as after
//!   `Invalidate`) and its bytes kept; answered `BackupAck(kept)`. With no copy (a release's
//!   `Writeback` went first) answered `BackupAck(not kept)`. A Writable copy is a protocol error.
//!   A backup kept from before is replaced (the model's `roll` variant: the new generation
//!   replaces the old).
//! * `DropBackup(p)`: the backup is discarded (the home copy caught up).
//! * `RestoreBackup(p)`: the backup's bytes go to the coordinator as `BackupData`, then it is
//!   discarded.
//! * [`ProcessPages::release`] (detach): after its write-backs, every backup goes home as
//!   `BackupHome` and is discarded. A `DropBackup` or `RestoreBackup` the coordinator sent
//!   before that `BackupHome` reached it is ignored: the `BackupHome` answers it.
//!
//! A process never drops a backup by itself, and a backup changes no page state: the page is
//! Invalid, and a later Fetch and its `Data` work as usual without touching the backup.
//! `DropBackup` or `RestoreBackup` for a page without a backup is a protocol error. Every
//! message is a run (answered by one message per contiguous run of pages answered alike); a
//! message that is an error changes nothing.

use std::collections::BTreeMap;

use super::{PageMemory, PageState, PagesError, ProcessPages};
use crate::runs::MAX_RUN;
use crate::wire::{PageData, PageNo, ToCoordinator};
use crate::PAGE_SIZE;

/// The backups one process keeps: page -> its bytes (one page each), not mapped. Ordered, so
/// that a detach sends them home as runs.
pub(super) type Backups = BTreeMap<PageNo, PageData>;

impl ProcessPages {
    /// Whether this process keeps a backup of `page`.
    pub fn has_backup(&self, page: PageNo) -> bool {
        self.backups.contains_key(&page)
    }

    /// The number of backups this process keeps.
    pub fn backup_count(&self) -> usize {
        self.backups.len()
    }

    /// `InvBackup` of `count` pages from `first`: ReadOnly copies become backups (one read and
    /// one drop per contiguous run of them), answered `BackupAck(kept)`; pages not held are
    /// answered `BackupAck(not kept)`. A Writable page anywhere in the run is an error and
    /// changes nothing. (Checked by `validate` already.)
    pub(super) fn inv_backup(
        &mut self,
        first: PageNo,
        count: u32,
        mem: &mut impl PageMemory,
        out: &mut Vec<ToCoordinator>,
    ) -> Result<(), PagesError> {
        let end = first + u64::from(count);
        if let Some(page) = (first..end).find(|&p| self.state(p) == PageState::Writable) {
            return Err(PagesError::Protocol(format!("InvBackup for page {page}, which is Writable")));
        }
        let mut page = first;
        while page < end {
            let held = self.state(page) == PageState::ReadOnly;
            let at = page;
            while page < end && (self.state(page) == PageState::ReadOnly) == held {
                page += 1;
            }
            let n = (page - at) as u32;
            if held {
                // Read before dropping: the bytes are the ones this copy holds now.
                let bytes = PageData::from(crate::buffers::bytes(mem.read_run(at, n)));
                mem.drop_run(at, n, false);
                for (i, q) in (at..page).enumerate() {
                    self.set_state(q, PageState::Invalid);
                    self.backups.insert(q, bytes.page_data(i));
                }
                self.stats.backups_kept += u64::from(n);
            }
            out.push(ToCoordinator::BackupAck { first: at, count: n, kept: held });
        }
        Ok(())
    }

    /// `DropBackup` of `count` pages from `first`: their backups are discarded. A page without
    /// one is an error and changes nothing.
    pub(super) fn drop_backup(&mut self, first: PageNo, count: u32) -> Result<(), PagesError> {
        if self.all_sent_home(first, count) {
            return Ok(());
        }
        self.check_backups("DropBackup", first, count)?;
        for page in first..first + u64::from(count) {
            self.backups.remove(&page);
        }
        self.stats.backups_dropped += u64::from(count);
        Ok(())
    }

    /// `RestoreBackup` of `count` pages from `first`: their backups go to the coordinator as one
    /// `BackupData` and are discarded. A page without one is an error and changes nothing.
    pub(super) fn restore_backup(&mut self, first: PageNo, count: u32, out: &mut Vec<ToCoordinator>) -> Result<(), PagesError> {
        if self.all_sent_home(first, count) {
            // Its `BackupHome`, on the way, answers it (the coordinator takes it as the data).
            return Ok(());
        }
        self.check_backups("RestoreBackup", first, count)?;
        let data = self.take_backups(first, count);
        self.stats.backups_restored += u64::from(count);
        self.stats.bytes_sent += data.len() as u64;
        out.push(ToCoordinator::BackupData { first, count, data });
        Ok(())
    }

    /// The detach's last step ([`ProcessPages::release`], after every write-back): sends home
    /// the lowest `limit` backups as `BackupHome` runs (consecutive pages, at most [`MAX_RUN`]
    /// each) and discards them. Returns whether none is left.
    pub(super) fn send_backups_home(&mut self, out: &mut Vec<ToCoordinator>, limit: usize) -> bool {
        let mut budget = limit;
        while budget > 0 {
            let Some((&first, _)) = self.backups.first_key_value() else { break };
            let count = self
                .backups
                .keys()
                .zip(first..)
                .take(budget.min(MAX_RUN as usize))
                .take_while(|&(&p, want)| p == want)
                .count();
            let data = self.take_backups(first, count as u32);
            self.backups_sent_home.extend(first..first + count as u64);
            self.stats.bytes_sent += data.len() as u64;
            out.push(ToCoordinator::BackupHome { first, count: count as u32, data });
            budget -= count;
        }
        self.backups.is_empty()
    }

    /// Removes the backups of `count` pages from `first` (all present) and returns their bytes
    /// page after page (without a copy when they lie back to back in one buffer, as the pages
    /// of one `InvBackup` run do).
    fn take_backups(&mut self, first: PageNo, count: u32) -> PageData {
        let mut data: Option<PageData> = None;
        for (i, page) in (first..first + u64::from(count)).enumerate() {
            let d = self.backups.remove(&page).expect("checked: every page has a backup");
            match &mut data {
                None => data = Some(d),
                Some(run) => run.append(&d, (count as usize - i - 1) * PAGE_SIZE),
            }
        }
        data.unwrap_or_else(|| PageData::from(Vec::new()))
    }

    /// Every page of the run had its backup sent home by the release (and has none now): a
    /// `DropBackup` or `RestoreBackup` for it crossed the `BackupHome` and is answered by it.
    fn all_sent_home(&self, first: PageNo, count: u32) -> bool {
        (first..first + u64::from(count)).all(|p| self.backups_sent_home.contains(&p) && !self.backups.contains_key(&p))
    }

    /// Checks that every page of the run has a backup.
    fn check_backups(&self, what: &str, first: PageNo, count: u32) -> Result<(), PagesError> {
        match (first..first + u64::from(count)).find(|p| !self.backups.contains_key(p)) {
            Some(page) => Err(PagesError::Protocol(format!("{what} for page {page}, which has no backup"))),
            None => Ok(()),
        }
    }
}
