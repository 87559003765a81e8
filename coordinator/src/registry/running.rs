//! A running session: its members by rank, its barrier and named semaphores, the page
//! directory of its region, and what happens when a member detaches or is lost (every barrier
//! or semaphore waiter is answered, never left hanging). Each running session sits behind a lock
//! of its own, so its members' messages are handled without the registry's.

use std::collections::{HashMap, VecDeque};

use dsm_proto::directory::PageDirectory;
use dsm_proto::{check_semaphore_name, Rank, ReqId, SessionFault, ToCoordinator, ToProcess};

use super::{ConnId, Output, Outbox, SessionStats, MAX_SEMAPHORES, MAX_WAITS_PER_RANK};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MemberState {
    Active,
    Detached,
    Lost,
}

#[derive(Debug)]
pub(super) struct Member {
    pub(super) conn: ConnId,
    pub(super) label: String,
    pub(super) state: MemberState,
}

#[derive(Debug)]
pub(super) struct Semaphore {
    /// The count it was created with (fixed by the first use of its name).
    pub(super) initial: u32,
    pub(super) count: u64,
    pub(super) waiters: VecDeque<(Rank, ReqId)>,
}

#[derive(Debug)]
pub(super) struct Barrier {
    pub(super) epoch: u64,
    pub(super) arrived: Vec<bool>,
    pub(super) count: u32,
}

#[derive(Debug)]
pub(super) struct Running {
    pub(super) members: Vec<Member>,
    pub(super) barrier: Barrier,
    pub(super) semaphores: HashMap<String, Semaphore>,
    /// First rank lost, with what was seen; once set, barriers and blocking waits fail.
    pub(super) lost: Option<(Rank, String)>,
    /// Every rank lost, in order, with what was seen (for the status view).
    pub(super) losses: Vec<(Rank, String)>,
    pub(super) stats: SessionStats,
    /// Coherence state of the shared region's pages.
    pub(super) directory: PageDirectory,
}

impl Running {
    fn conn(&self, rank: Rank) -> ConnId {
        self.members[rank as usize].conn
    }

    fn lost_fault(&self) -> Option<SessionFault> {
        self.lost
            .as_ref()
            .map(|(rank, detail)| SessionFault::RankLost { rank: *rank, detail: detail.clone() })
    }

    fn fail(&self, rank: Rank, req: Option<ReqId>, error: SessionFault, out: &mut Outbox) {
        out.push(Output::Send(self.conn(rank), ToProcess::Failed { req, error }));
    }

    pub(super) fn handle(&mut self, rank: Rank, msg: ToCoordinator, out: &mut Outbox) {
        match msg {
            ToCoordinator::Barrier { epoch } => self.handle_barrier(rank, epoch, out),
            ToCoordinator::SemaphoreWait { req, name, initial } => self.handle_wait(rank, req, name, initial, out),
            ToCoordinator::SemaphorePost { req, name, initial } => self.handle_post(rank, req, name, initial, out),
            ToCoordinator::Detach => self.handle_detach(rank, out),
            ToCoordinator::Attach(_) => {
                let e = SessionFault::Protocol("attach sent twice on one connection".into());
                self.fail(rank, None, e, out);
            }
            ToCoordinator::Ping { .. } | ToCoordinator::Status { .. } => {}
            page_msg => {
                let mut sends = Vec::new();
                let result = self.directory.handle(rank, page_msg, &mut sends);
                self.send_pages(sends, out);
                if let Err(e) = result {
                    self.violation(rank, e.to_string(), out);
                }
            }
        }
    }

    /// Sends the directory's messages, each process's in their order, with consecutive pages
    /// merged into run messages (`dsm_proto::runs`: only the order per destination matters,
    /// and it is kept).
    fn send_pages(&self, sends: Vec<(Rank, ToProcess)>, out: &mut Outbox) {
        let mut by_rank: Vec<(Rank, Vec<ToProcess>)> = Vec::new();
        for (r, msg) in sends {
            if self.members[r as usize].state != MemberState::Active {
                continue;
            }
            match by_rank.iter_mut().find(|(q, _)| *q == r) {
                Some((_, msgs)) => msgs.push(msg),
                None => by_rank.push((r, vec![msg])),
            }
        }
        for (r, msgs) in by_rank {
            let conn = self.conn(r);
            out.extend(dsm_proto::runs::coalesce_to_process(msgs).into_iter().map(|m| Output::Send(conn, m)));
        }
    }

    /// `rank` left (detached or lost): its pages fall back to the home copies and transactions
    /// waiting for its acknowledgements complete.
    fn leave_pages(&mut self, rank: Rank, out: &mut Outbox) {
        let mut sends = Vec::new();
        self.directory.handle_leave(rank, &mut sends);
        self.send_pages(sends, out);
    }

    /// `rank` broke the protocol: it is told why, its connection is closed, and it counts as
    /// lost (its pages fall back to the home copies; the others get the usual errors).
    fn violation(&mut self, rank: Rank, what: String, out: &mut Outbox) {
        tracing::warn!(rank, "protocol violation: {what}; closing its connection");
        let conn = self.conn(rank);
        self.fail(rank, None, SessionFault::Protocol(what.clone()), out);
        out.push(Output::Close(conn, "protocol violation"));
        self.lose(rank, &format!("protocol violation: {what}"), out);
    }

    fn handle_barrier(&mut self, rank: Rank, epoch: u64, out: &mut Outbox) {
        if let Some(fault) = self.lost_fault() {
            return self.fail(rank, None, fault, out);
        }
        if let Some(gone) = self.members.iter().position(|m| m.state == MemberState::Detached) {
            return self.fail(rank, None, SessionFault::RankDetached { rank: gone as Rank }, out);
        }
        let b = &mut self.barrier;
        if epoch != b.epoch || b.arrived[rank as usize] {
            let e = SessionFault::Protocol(format!(
                "rank {rank} entered barrier {epoch} while barrier {} is open",
                b.epoch
            ));
            return self.fail(rank, None, e, out);
        }
        b.arrived[rank as usize] = true;
        b.count += 1;
        if b.count as usize == self.members.len() {
            for m in &self.members {
                out.push(Output::Send(m.conn, ToProcess::BarrierDone { epoch }));
            }
            b.epoch += 1;
            b.count = 0;
            b.arrived.iter_mut().for_each(|a| *a = false);
            self.stats.barriers += 1;
        }
    }

    /// The semaphore `name`, created with `initial` on its first use. A use asking for another
    /// initial count than the one it was created with is refused (never silently ignored).
    fn semaphore(
        semaphores: &mut HashMap<String, Semaphore>,
        name: String,
        initial: u32,
    ) -> Result<&mut Semaphore, SessionFault> {
        if let Err(e) = check_semaphore_name(&name) {
            return Err(SessionFault::BadName(e));
        }
        if semaphores.len() >= MAX_SEMAPHORES && !semaphores.contains_key(&name) {
            return Err(SessionFault::Protocol(format!("more than {MAX_SEMAPHORES} semaphore names in one session")));
        }
        let sem = semaphores.entry(name.clone()).or_insert_with(|| Semaphore {
            initial,
            count: u64::from(initial),
            waiters: VecDeque::new(),
        });
        if sem.initial != initial {
            return Err(SessionFault::SemaphoreInitialMismatch { name, declared: sem.initial, requested: initial });
        }
        Ok(sem)
    }

    fn handle_wait(&mut self, rank: Rank, req: ReqId, name: String, initial: u32, out: &mut Outbox) {
        let lost = self.lost_fault();
        let conn = self.conn(rank);
        let waits: usize = self.semaphores.values().map(|s| s.waiters.iter().filter(|(r, _)| *r == rank).count()).sum();
        if waits >= MAX_WAITS_PER_RANK {
            let what = format!("more than {MAX_WAITS_PER_RANK} semaphore waits blocked at once");
            return self.violation(rank, what, out);
        }
        let sem = match Self::semaphore(&mut self.semaphores, name, initial) {
            Ok(sem) => sem,
            Err(e) => return self.fail(rank, Some(req), e, out),
        };
        if sem.count > 0 {
            sem.count -= 1;
            out.push(Output::Send(conn, ToProcess::SemaphoreAcquired { req }));
            self.stats.semaphore_waits += 1;
        } else if let Some(fault) = lost {
            // The lost process may have been the one to post: waiting could hang forever.
            self.fail(rank, Some(req), fault, out);
        } else {
            sem.waiters.push_back((rank, req));
        }
    }

    fn handle_post(&mut self, rank: Rank, req: ReqId, name: String, initial: u32, out: &mut Outbox) {
        let sem = match Self::semaphore(&mut self.semaphores, name, initial) {
            Ok(sem) => sem,
            Err(e) => return self.fail(rank, Some(req), e, out),
        };
        let woken = sem.waiters.pop_front();
        if woken.is_none() {
            sem.count += 1;
        }
        self.stats.semaphore_posts += 1;
        if let Some((waiter, wreq)) = woken {
            self.stats.semaphore_waits += 1;
            out.push(Output::Send(self.conn(waiter), ToProcess::SemaphoreAcquired { req: wreq }));
        }
        out.push(Output::Send(self.conn(rank), ToProcess::SemaphorePosted { req }));
    }

    fn handle_detach(&mut self, rank: Rank, out: &mut Outbox) {
        self.members[rank as usize].state = MemberState::Detached;
        self.drop_waiters_of(rank);
        self.leave_pages(rank, out);
        out.push(Output::Send(self.conn(rank), ToProcess::Detached));
        // Whoever waits in the open barrier can no longer complete it.
        self.fail_barrier_waiters(SessionFault::RankDetached { rank }, out);
    }

    pub(super) fn lose(&mut self, rank: Rank, detail: &str, out: &mut Outbox) {
        self.members[rank as usize].state = MemberState::Lost;
        self.drop_waiters_of(rank);
        self.leave_pages(rank, out);
        if self.lost.is_none() {
            self.lost = Some((rank, detail.to_string()));
        }
        self.losses.push((rank, detail.to_string()));
        let fault = SessionFault::RankLost { rank, detail: detail.to_string() };
        self.fail_barrier_waiters(fault.clone(), out);
        let waiters: Vec<(Rank, ReqId)> =
            self.semaphores.values_mut().flat_map(|s| s.waiters.drain(..)).collect();
        for (r, req) in waiters {
            self.fail(r, Some(req), fault.clone(), out);
        }
    }

    fn drop_waiters_of(&mut self, rank: Rank) {
        for s in self.semaphores.values_mut() {
            s.waiters.retain(|(r, _)| *r != rank);
        }
        if self.barrier.arrived[rank as usize] {
            self.barrier.arrived[rank as usize] = false;
            self.barrier.count -= 1;
        }
    }

    fn fail_barrier_waiters(&mut self, fault: SessionFault, out: &mut Outbox) {
        let waiting: Vec<Rank> = (0..self.members.len() as Rank)
            .filter(|r| self.barrier.arrived[*r as usize])
            .collect();
        for r in waiting {
            if self.members[r as usize].state == MemberState::Active {
                self.fail(r, None, fault.clone(), out);
            }
        }
        // The failed barrier is over; its epoch is spent so a retry cannot mix with it.
        if self.barrier.count > 0 {
            self.barrier.epoch += 1;
            self.barrier.count = 0;
            self.barrier.arrived.iter_mut().for_each(|a| *a = false);
        }
    }
}
