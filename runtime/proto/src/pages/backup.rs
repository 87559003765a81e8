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
//!
//! Where the bytes live is the memory's choice ([`PageMemory::shelve_run`]): a real mapping
//! keeps them *in place*, in the memfd, with only the application's view unmapped (no copy, no
//! allocation: a copy into fresh memory made an upgrade cost the holder three times what an
//! `Invalidate` does); the core then only remembers the page is kept in place. Before a page
//! kept in place is installed again (a later Fetch of it), its backup is read out into a
//! buffer of the core's ([`ProcessPages::evict_backups`]).
//! `DropBackup` or `RestoreBackup` for a page without a backup is a protocol error. Every
//! message is a run (answered by one message per contiguous run of pages answered alike); a
//! message that is an error changes nothing.

use std::collections::BTreeMap;

use super::{PageMemory, PageState, PagesError, ProcessPages};
use crate::runs::MAX_RUN;
use crate::wire::{PageData, PageNo, ToCoordinator};
use crate::PAGE_SIZE;

/// One page's backup.
#[derive(Debug, Clone)]
pub(super) enum Backup {
    /// In the memory, where the page was ([`PageMemory::unshelve_run`] gives it back).
    InPlace,
    /// Read out: the page's bytes.
    Bytes(PageData),
}

/// The backups one process keeps: page -> where its bytes are, not mapped. Ordered, so that a
/// detach sends them home as runs.
pub(super) type Backups = BTreeMap<PageNo, Backup>;

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
                let bytes = mem.shelve_run(at, n).map(|b| PageData::from(crate::buffers::bytes(b)));
                for (i, q) in (at..page).enumerate() {
                    self.set_state(q, PageState::Invalid);
                    let backup = bytes.as_ref().map_or(Backup::InPlace, |b| Backup::Bytes(b.page_data(i)));
                    self.backups.insert(q, backup);
                }
                self.stats.backups_kept += u64::from(n);
            }
            out.push(ToCoordinator::BackupAck { first: at, count: n, kept: held });
        }
        Ok(())
    }

    /// `DropBackup` of `count` pages from `first`: their backups are discarded. A page without
    /// one is an error and changes nothing.
    pub(super) fn drop_backup(&mut self, first: PageNo, count: u32, mem: &mut impl PageMemory) -> Result<(), PagesError> {
        if self.all_sent_home(first, count) {
            return Ok(());
        }
        self.check_backups("DropBackup", first, count)?;
        self.take_backups(first, count, mem, false);
        self.stats.backups_dropped += u64::from(count);
        Ok(())
    }

    /// `RestoreBackup` of `count` pages from `first`: their backups go to the coordinator as one
    /// `BackupData` and are discarded. A page without one is an error and changes nothing.
    pub(super) fn restore_backup(
        &mut self,
        first: PageNo,
        count: u32,
        mem: &mut impl PageMemory,
        out: &mut Vec<ToCoordinator>,
    ) -> Result<(), PagesError> {
        if self.all_sent_home(first, count) {
            // Its `BackupHome`, on the way, answers it (the coordinator takes it as the data).
            return Ok(());
        }
        self.check_backups("RestoreBackup", first, count)?;
        let data = self.take_backups(first, count, mem, true);
        self.stats.backups_restored += u64::from(count);
        self.stats.bytes_sent += data.len() as u64;
        out.push(ToCoordinator::BackupData { first, count, data });
        Ok(())
    }

    /// The detach's last step ([`ProcessPages::release`], after every write-back): sends home
    /// the lowest `limit` backups as `BackupHome` runs (consecutive pages, at most [`MAX_RUN`]
    /// each) and discards them. Returns whether none is left.
    pub(super) fn send_backups_home(&mut self, mem: &mut impl PageMemory, out: &mut Vec<ToCoordinator>, limit: usize) -> bool {
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
            let data = self.take_backups(first, count as u32, mem, true);
            self.backups_sent_home.extend(first..first + count as u64);
            self.stats.bytes_sent += data.len() as u64;
            out.push(ToCoordinator::BackupHome { first, count: count as u32, data });
            budget -= count;
        }
        self.backups.is_empty()
    }

    /// Removes the backups of `count` pages from `first` (all present) and, if `read`, returns
    /// their bytes page after page: one read per run of pages kept in place, and no copy for
    /// bytes that lie back to back in one buffer (as the pages of one `InvBackup` run do).
    fn take_backups(&mut self, first: PageNo, count: u32, mem: &mut impl PageMemory, read: bool) -> PageData {
        let end = first + u64::from(count);
        let mut data: Option<PageData> = None;
        let mut add = |d: PageData, after: PageNo| match &mut data {
            None => data = Some(d),
            Some(run) => run.append(&d, (end - after) as usize * PAGE_SIZE),
        };
        let mut page = first;
        while page < end {
            match self.backups.remove(&page) {
                Some(Backup::InPlace) => {
                    let at = page;
                    page += 1;
                    while page < end && matches!(self.backups.get(&page), Some(Backup::InPlace)) {
                        self.backups.remove(&page);
                        page += 1;
                    }
                    let bytes = mem.unshelve_run(at, (page - at) as u32, read);
                    if let Some(b) = bytes.filter(|_| read) {
                        add(PageData::from(crate::buffers::bytes(b)), page);
                    }
                }
                Some(Backup::Bytes(d)) => {
                    page += 1;
                    if read {
                        add(d, page);
                    }
                }
                None => page += 1, // (checked by the callers: every page has a backup)
            }
        }
        data.unwrap_or_else(|| PageData::from(Vec::new()))
    }

    /// Before pages from `first` are installed again: the backups among them that are kept in
    /// place are read out (one read per run), so that the install does not overwrite them.
    pub(super) fn evict_backups(&mut self, first: PageNo, count: u32, mem: &mut impl PageMemory) {
        if self.backups.is_empty() {
            return;
        }
        let end = first + u64::from(count);
        let in_place: Vec<PageNo> =
            self.backups.range(first..end).filter(|(_, b)| matches!(b, Backup::InPlace)).map(|(&p, _)| p).collect();
        let mut rest = &in_place[..];
        while let Some(&at) = rest.first() {
            let n = rest.iter().zip(at..).take_while(|&(&p, want)| p == want).count();
            let bytes = mem.unshelve_run(at, n as u32, true).map(|b| PageData::from(crate::buffers::bytes(b)));
            for (i, page) in (at..at + n as u64).enumerate() {
                // (A memory that kept them in place returns them; without, they are lost.)
                match &bytes {
                    Some(b) if b.len() >= (i + 1) * PAGE_SIZE => {
                        self.backups.insert(page, Backup::Bytes(b.page_data(i)));
                    }
                    _ => {
                        self.backups.remove(&page);
                    }
                }
            }
            rest = &rest[n..];
        }
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
