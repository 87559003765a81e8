//! What the coordinator sends a process: every page message is checked against the region
//! ([`ProcessPages::validate`]) before anything acts on it, then applied in arrival order, one
//! page at a time or, for a run whose pages are all in the state its one-operation path needs,
//! as one memory operation ([`ProcessPages::handle_run`]).

use super::{Access, PageMemory, PageState, PagesError, ProcessPages, Slot, WriteOutcome};
use crate::wire::{GrantData, Mode, PageData, PageNo, ReqId, ToCoordinator, ToProcess};

impl ProcessPages {
    /// A page message from the coordinator (`Data`, `Grant`, `Invalidate`, `Downgrade`,
    /// `Recall`, their runs, the forward messages `Forward`, `ForwardNote` and
    /// `ForwardAbort` of `pages/forward.rs`, and the backup messages `InvBackup`, `DropBackup`
    /// and `RestoreBackup` of `pages/backup.rs`). Anything else, or a reply to no request in flight,
    /// is an error and changes nothing (an `Invalidate` reaching a Writable page is an error
    /// too; it is still acknowledged, and the page is kept).
    pub fn handle_message(
        &mut self,
        msg: ToProcess,
        mem: &mut impl PageMemory,
        out: &mut Vec<ToCoordinator>,
    ) -> Result<(), PagesError> {
        self.validate(&msg)?;
        match msg {
            ToProcess::Data { req, page, data, mode } => {
                let slot = match self.reply_slot(page, req, Access::Read, "Data") {
                    Ok(slot) => slot,
                    // Rule 3': ownership of an update-mode page is answered with a read-only
                    // copy in update mode; the thread's store faults again and is replayed.
                    Err(_) if mode == Mode::Update => self.reply_slot(page, req, Access::Write, "Data in update mode")?,
                    Err(e) => return Err(e),
                };
                match slot.state {
                    PageState::Invalid => {
                        self.evict_backups(page, 1, mem);
                        mem.install(page, data.as_ref().map(|d| d.as_slice()), false);
                    }
                    PageState::ReadOnly => mem.wake(page),
                    PageState::Writable => {
                        return Err(PagesError::Protocol(format!(
                            "Data for page {page}, which is Writable"
                        )))
                    }
                }
                self.stats.bytes_received += data.map_or(0, |d| d.len() as u64);
                self.finish(page, PageState::ReadOnly, mode);
                self.set_hint(page, mode);
            }
            ToProcess::Grant { req, page, data } => {
                let slot = self.reply_slot(page, req, Access::Write, "Grant")?;
                match (data, slot.state) {
                    (_, PageState::Writable) => {
                        return Err(PagesError::Protocol(format!(
                            "Grant for page {page}, which is already Writable"
                        )))
                    }
                    (None, PageState::Invalid) => {
                        return Err(PagesError::Protocol(format!(
                            "Grant without data for page {page}, which holds no copy"
                        )))
                    }
                    (None, PageState::ReadOnly) => mem.make_writable(page),
                    (Some(d), state) => {
                        if state == PageState::ReadOnly {
                            mem.drop_page(page, false);
                        }
                        self.evict_backups(page, 1, mem);
                        match d {
                            GrantData::Zero => mem.install(page, None, true),
                            GrantData::Bytes(b) => {
                                self.stats.bytes_received += b.len() as u64;
                                mem.install(page, Some(b.as_slice()), true);
                            }
                        }
                    }
                }
                self.finish(page, PageState::Writable, Mode::Invalidate);
                self.set_hint(page, Mode::Invalidate);
            }
            ToProcess::ModeHint { page, mode } => {
                if let Some(slot) = self.slots.get_mut(&page) {
                    if slot.state == PageState::ReadOnly {
                        slot.mode = mode;
                    }
                }
                self.set_hint(page, mode);
            }
            ToProcess::Advice { first, count, coherence } => {
                let mode = match coherence {
                    crate::wire::Coherence::Update => Mode::Update,
                    _ => Mode::Invalidate,
                };
                self.advice.push((first, first.saturating_add(count), mode));
                // Advice overrides older per-page hints in its range.
                self.hints.retain(|p, _| !(first..first.saturating_add(count)).contains(p));
            }
            ToProcess::Update { page, offset, width, value } => {
                // Another process's replayed store; only a ReadOnly copy receives them (a copy
                // dropped since is refetched from the home copy, which has it).
                if self.state(page) == PageState::ReadOnly {
                    mem.store(page, offset, width, value);
                    self.stats.updates_applied += 1;
                }
            }
            ToProcess::WriteAck { req, page, offset, width, value, old } => {
                if self.writes.remove(&req) != Some(page) {
                    return Err(PagesError::Protocol(format!("WriteAck for unknown write {req}")));
                }
                // Rule 4: applied locally only now; every earlier update has arrived before.
                if self.state(page) == PageState::ReadOnly {
                    mem.store(page, offset, width, value);
                }
                self.completions.push((req, WriteOutcome::Done { old }));
            }
            ToProcess::Retry { req, page } => {
                if self.writes.remove(&req) != Some(page) {
                    return Err(PagesError::Protocol(format!("Retry for unknown write {req}")));
                }
                if let Some(slot) = self.slots.get_mut(&page) {
                    slot.mode = Mode::Invalidate;
                }
                self.set_hint(page, Mode::Invalidate);
                self.escalate.insert(page);
                self.stats.write_retries += 1;
                self.completions.push((req, WriteOutcome::Retry));
            }
            ToProcess::Invalidate { page } => {
                self.stats.invalidations += 1;
                // Always acknowledged: the coordinator counts acks, not copies.
                out.push(ToCoordinator::InvalidateAck { page });
                match self.state(page) {
                    PageState::Invalid => {}
                    PageState::ReadOnly => {
                        self.drop_copy(page, mem);
                    }
                    PageState::Writable => {
                        // The owner gets Recall, never Invalidate. Keep the data.
                        return Err(PagesError::Protocol(format!(
                            "Invalidate for page {page}, which is Writable"
                        )));
                    }
                }
            }
            ToProcess::Downgrade { page } => {
                self.stats.downgrades += 1;
                let data = match self.state(page) {
                    PageState::Writable => {
                        let bytes = mem.write_protect(page);
                        self.set_state(page, PageState::ReadOnly);
                        Some(bytes)
                    }
                    // A flush (the home copy is stale, this reader's copy is current): answer
                    // with the contents and keep the copy.
                    PageState::ReadOnly => Some(mem.read_run(page, 1)),
                    PageState::Invalid => None,
                };
                self.stats.bytes_sent += data.as_ref().map_or(0, |d| d.len() as u64);
                out.push(ToCoordinator::DowngradeAck { page, data: data.map(PageData::from) });
            }
            ToProcess::Recall { page } => {
                self.stats.recalls += 1;
                let data = match self.state(page) {
                    PageState::Writable => {
                        let bytes = mem.drop_page(page, true);
                        self.set_state(page, PageState::Invalid);
                        // A driver that returns nothing when asked: send zeros rather than lie
                        // about holding no copy.
                        Some(bytes.unwrap_or_default())
                    }
                    PageState::ReadOnly => {
                        self.drop_copy(page, mem);
                        None
                    }
                    PageState::Invalid => None,
                };
                self.stats.bytes_sent += data.as_ref().map_or(0, |d| d.len() as u64);
                out.push(ToCoordinator::RecallAck { page, data: data.map(PageData::from) });
            }
            ToProcess::Forward { req, first, count, to } => self.forward(req, first, count, to, mem),
            ToProcess::ForwardNote { req, first, count } => return self.forward_note(req, first, count, mem, out),
            ToProcess::ForwardAbort { req, first, count } => return self.forward_abort(req, first, count, out),
            ToProcess::InvBackup { first, count } => return self.inv_backup(first, count, mem, out),
            ToProcess::DropBackup { first, count } => return self.drop_backup(first, count, mem),
            ToProcess::RestoreBackup { first, count } => return self.restore_backup(first, count, mem, out),
            run @ (ToProcess::DataRun { .. }
            | ToProcess::GrantRun { .. }
            | ToProcess::Denied { .. }
            | ToProcess::InvalidateRun { .. }
            | ToProcess::DowngradeRun { .. }
            | ToProcess::RecallRun { .. }) => {
                self.stats.runs_received += 1;
                return self.handle_run(run, mem, out);
            }
            other => {
                return Err(PagesError::Protocol(format!("not a page message: {other:?}")));
            }
        }
        Ok(())
    }

    /// A run message: when every page of it is in the state its fast path needs, one memory
    /// operation for the whole run (one copy, one ioctl, one wake-up) and one reply; otherwise
    /// its pages one by one, exactly as the per-page messages it stands for (`crate::runs`).
    fn handle_run(
        &mut self,
        msg: ToProcess,
        mem: &mut impl PageMemory,
        out: &mut Vec<ToCoordinator>,
    ) -> Result<(), PagesError> {
        let all = |this: &Self, first: PageNo, count: u32, f: &dyn Fn(&Slot) -> bool| {
            (0..u64::from(count)).all(|i| this.slots.get(&(first + i)).is_some_and(f))
        };
        let pending = |req: ReqId, access: Access| move |s: &Slot| s.pending.is_some_and(|p| p.req == req && p.access == access);
        match &msg {
            ToProcess::DataRun { req, first, count, data, mode } => {
                let is = pending(*req, Access::Read);
                if all(self, *first, *count, &|s| is(s) && s.state == PageState::Invalid) {
                    self.evict_backups(*first, *count, mem);
                    mem.install_run(*first, *count, data.as_ref().map(|d| d.as_slice()), false);
                    self.stats.bytes_received += data.as_ref().map_or(0, |d| d.len() as u64);
                    for page in *first..*first + u64::from(*count) {
                        self.finish(page, PageState::ReadOnly, *mode);
                        self.set_hint(page, *mode);
                    }
                    return Ok(());
                }
            }
            ToProcess::GrantRun { req, first, count, data } => {
                let is = pending(*req, Access::Write);
                let fast = match data {
                    None => all(self, *first, *count, &|s| is(s) && s.state == PageState::ReadOnly),
                    Some(_) => all(self, *first, *count, &|s| is(s) && s.state == PageState::Invalid),
                };
                if fast {
                    if data.is_some() {
                        self.evict_backups(*first, *count, mem);
                    }
                    match data {
                        None => mem.make_writable_run(*first, *count),
                        Some(GrantData::Zero) => mem.install_run(*first, *count, None, true),
                        Some(GrantData::Bytes(b)) => {
                            self.stats.bytes_received += b.len() as u64;
                            mem.install_run(*first, *count, Some(b.as_slice()), true);
                        }
                    }
                    for page in *first..*first + u64::from(*count) {
                        self.finish(page, PageState::Writable, Mode::Invalidate);
                        self.set_hint(page, Mode::Invalidate);
                    }
                    return Ok(());
                }
            }
            ToProcess::Denied { req, first, count } => {
                let is = pending(*req, Access::Write);
                if !all(self, *first, *count, &|s| is(s) && s.pending.is_some_and(|p| p.ahead)) {
                    return Err(PagesError::Protocol(format!(
                        "Denied for pages {first}..+{count} with request {req}, which were not asked for ahead"
                    )));
                }
                for page in *first..*first + u64::from(*count) {
                    let state = self.state(page);
                    self.finish(page, state, Mode::Invalidate);
                    if state == PageState::Invalid {
                        self.slots.remove(&page);
                    }
                }
                self.stats.write_ahead_denied += u64::from(*count);
                // A thread that touched one of them meanwhile waits for this answer: it retries
                // (and asks for the page by itself).
                mem.wake_run(*first, *count);
                return Ok(());
            }
            ToProcess::InvalidateRun { first, count }
                if all(self, *first, *count, &|s| s.state == PageState::ReadOnly) => {
                    mem.drop_run(*first, *count, false);
                    self.stats.invalidations += u64::from(*count);
                    for page in *first..*first + u64::from(*count) {
                        self.set_state(page, PageState::Invalid);
                    }
                    out.push(ToCoordinator::InvalidateAckRun { first: *first, count: *count });
                    return Ok(());
                }
            // Owned copies (one write-protect) or flushed ReadOnly ones (one read); a run of
            // both goes page by page.
            ToProcess::DowngradeRun { first, count }
                if all(self, *first, *count, &|s| s.state == PageState::Writable)
                    || all(self, *first, *count, &|s| s.state == PageState::ReadOnly) => {
                    let bytes = if self.state(*first) == PageState::Writable {
                        mem.write_protect_run(*first, *count)
                    } else {
                        mem.read_run(*first, *count)
                    };
                    self.stats.downgrades += u64::from(*count);
                    self.stats.bytes_sent += bytes.len() as u64;
                    for page in *first..*first + u64::from(*count) {
                        self.set_state(page, PageState::ReadOnly);
                    }
                    out.push(ToCoordinator::DowngradeAckRun { first: *first, count: *count, data: Some(crate::buffers::page_data(bytes)) });
                    return Ok(());
                }
            ToProcess::RecallRun { first, count }
                if all(self, *first, *count, &|s| s.state == PageState::Writable) => {
                    let bytes = mem.drop_run(*first, *count, true).unwrap_or_default();
                    self.stats.recalls += u64::from(*count);
                    self.stats.bytes_sent += bytes.len() as u64;
                    for page in *first..*first + u64::from(*count) {
                        self.set_state(page, PageState::Invalid);
                    }
                    out.push(ToCoordinator::RecallAckRun { first: *first, count: *count, data: Some(crate::buffers::page_data(bytes)) });
                    return Ok(());
                }
            _ => {}
        }
        // Mixed states: page by page; the replies are merged into runs again by the driver.
        let mut acks = Vec::new();
        for m in crate::runs::expand_to_process(msg) {
            self.handle_message(m, mem, &mut acks)?;
        }
        out.extend(crate::runs::coalesce_to_coordinator(acks));
        Ok(())
    }

    /// Drops this process's copy of `page` (its contents are not needed): the page is Invalid.
    fn drop_copy(&mut self, page: PageNo, mem: &mut impl PageMemory) {
        mem.drop_page(page, false);
        self.set_state(page, PageState::Invalid);
    }

    /// Checks that `count` pages from `first` lie in the region (when it is known), and never
    /// run past the last page number (the coordinator's runs and the peers' `Pages`).
    pub(super) fn check_span(&self, what: &str, first: PageNo, count: u32) -> Result<(), PagesError> {
        let end = first.checked_add(u64::from(count));
        if end.is_none_or(|e| self.limit > 0 && e > self.limit) {
            return Err(PagesError::Protocol(format!(
                "{what}: {count} pages from page {first} leave the region of {} pages",
                self.limit
            )));
        }
        Ok(())
    }

    /// Checks what a message carries against the region before anything acts on it.
    fn validate(&self, msg: &ToProcess) -> Result<(), PagesError> {
        let run = match msg {
            ToProcess::DataRun { first, count, data, .. } => Some((*first, *count, data.as_ref().map(|d| d.len()))),
            ToProcess::GrantRun { first, count, data, .. } => {
                let len = match data {
                    Some(GrantData::Bytes(b)) => Some(b.len()),
                    _ => None,
                };
                Some((*first, *count, len))
            }
            other => other.run_span().map(|(first, count)| (first, count, None)),
        };
        if let Some((first, count, len)) = run {
            crate::runs::check_run("a run", count, len.filter(|_| self.limit > 0)).map_err(PagesError::Protocol)?;
            return self.check_span("a run", first, count);
        }
        let (page, access, data) = match msg {
            ToProcess::Data { page, data, .. } => (*page, None, data.as_ref().map(|d| d.len())),
            ToProcess::Grant { page, data, .. } => {
                let len = match data {
                    Some(GrantData::Bytes(b)) => Some(b.len()),
                    _ => None,
                };
                (*page, None, len)
            }
            ToProcess::Update { page, offset, width, .. } | ToProcess::WriteAck { page, offset, width, .. } => {
                (*page, Some((*offset, *width)), None)
            }
            ToProcess::Invalidate { page }
            | ToProcess::Downgrade { page }
            | ToProcess::Recall { page }
            | ToProcess::Retry { page, .. }
            | ToProcess::ModeHint { page, .. } => (*page, None, None),
            _ => return Ok(()),
        };
        if self.limit > 0 && page >= self.limit {
            return Err(PagesError::Protocol(format!("page {page} is outside the region of {} pages", self.limit)));
        }
        if let (Some(len), true) = (data, self.limit > 0) {
            if len != crate::PAGE_SIZE {
                return Err(PagesError::Protocol(format!("page {page} came with {len} bytes instead of {}", crate::PAGE_SIZE)));
            }
        }
        if let Some((offset, width)) = access {
            if !matches!(width, 1 | 2 | 4 | 8 | 16) || usize::from(offset) + usize::from(width) > crate::PAGE_SIZE {
                return Err(PagesError::Protocol(format!("a {width}-byte update at offset {offset} of page {page}")));
            }
        }
        Ok(())
    }

    /// The slot of `page` if a `kind` request `req` is in flight for it.
    fn reply_slot(
        &self,
        page: PageNo,
        req: ReqId,
        access: Access,
        what: &str,
    ) -> Result<Slot, PagesError> {
        match self.slots.get(&page) {
            Some(slot) if slot.pending.is_some_and(|p| p.req == req && p.access == access) => Ok(*slot),
            slot => Err(PagesError::Protocol(format!(
                "{what} for page {page} with request {req}, but the request in flight is {:?}",
                slot.and_then(|s| s.pending)
            ))),
        }
    }
}
