//! The coordinator's sans-IO core: sessions, membership, barriers and named semaphores.
//!
//! [`Registry`] is fed events (`handle_message`, `handle_disconnect`) for connections identified
//! by a [`ConnId`] and pushes the messages to send into an [`Outbox`]. It never touches a socket
//! or a clock, so every rule here is unit-tested deterministically below; `server.rs` is the one
//! place where it meets QUIC.
//!
//! Session life cycle: the first attach declares a session (name, size, process count); later
//! attaches must match. Members wait ("pending") until all `nprocs` have joined, then get ranks in
//! join order. A running session ends when every member has detached or been lost, and its name
//! can be used again.
//!
//! Read-only views for operators live in `registry/snapshot.rs` ([`Registry::status_report`]);
//! what happened since the I/O layer last looked is queued as [`Event`]s and [`EndedSession`]s.

mod snapshot;

pub use snapshot::SessionCounts;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use dsm_proto::directory::{DirectoryStats, PageDirectory};
use dsm_proto::{
    check_region_size, check_semaphore_name, check_session_name, AttachRequest, Rank, Refusal,
    ReqId, SessionFault, ToCoordinator, ToProcess, MAX_PROCESSES,
};

/// Most semaphore names one session keeps.
pub const MAX_SEMAPHORES: usize = 4096;

/// Most semaphore waits one process may have blocked at once (one per waiting thread).
pub const MAX_WAITS_PER_RANK: usize = 4096;

/// Identifies one client connection.
pub type ConnId = u64;

/// What the I/O layer must do after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a message on a connection's stream (in order).
    Send(ConnId, ToProcess),
    /// Flush what was sent on the connection, then close it.
    Close(ConnId, &'static str),
}

/// Messages and closes produced by one event, in order.
pub type Outbox = Vec<Output>;

/// Traffic figures of one session, logged when it ends.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionStats {
    /// Barriers completed.
    pub barriers: u64,
    /// Semaphore waits completed.
    pub semaphore_waits: u64,
    /// Semaphore posts.
    pub semaphore_posts: u64,
    /// Page traffic of the shared region.
    pub pages: DirectoryStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemberState {
    Active,
    Detached,
    Lost,
}

#[derive(Debug)]
struct Member {
    conn: ConnId,
    label: String,
    state: MemberState,
}

#[derive(Debug)]
struct Semaphore {
    /// The count it was created with (fixed by the first use of its name).
    initial: u32,
    count: u64,
    waiters: VecDeque<(Rank, ReqId)>,
}

#[derive(Debug)]
struct Barrier {
    epoch: u64,
    arrived: Vec<bool>,
    count: u32,
}

#[derive(Debug)]
enum Phase {
    /// Waiting for processes; connections in join order.
    Pending(Vec<(ConnId, String)>),
    /// All processes joined; members indexed by rank.
    /// Behind its own lock: members' messages are handled under it alone (see
    /// [`Registry::member`]), so sessions proceed in parallel.
    Running(Arc<Mutex<Running>>),
}

#[derive(Debug)]
struct Running {
    members: Vec<Member>,
    barrier: Barrier,
    semaphores: HashMap<String, Semaphore>,
    /// First rank lost, with what was seen; once set, barriers and blocking waits fail.
    lost: Option<(Rank, String)>,
    /// Every rank lost, in order, with what was seen (for the status view).
    losses: Vec<(Rank, String)>,
    stats: SessionStats,
    /// Coherence state of the shared region's pages.
    directory: PageDirectory,
}

#[derive(Debug)]
struct Session {
    size: u64,
    nprocs: u32,
    phase: Phase,
    /// Attaches for this name that arrived while this session was ending (running, with some
    /// members already gone): they form the next session of the name once this one ends.
    next: Vec<(ConnId, AttachRequest)>,
}

/// Where a connection belongs.
#[derive(Debug, Clone)]
enum ConnState {
    /// Joined `session`, waiting for it to start.
    Pending { session: String },
    /// Waiting for the ending session of that name to end, to join the next one.
    Queued { session: String },
    /// Member of a running session with this rank.
    Member { session: String, rank: Rank },
}

/// A member of a running session, to handle its messages under the session's own lock.
#[derive(Clone)]
pub struct MemberHandle {
    run: Arc<Mutex<Running>>,
    rank: Rank,
    session: String,
}

/// What [`MemberHandle::handle`] leaves for [`Registry::follow_up`].
#[derive(Debug, Default)]
#[must_use]
pub struct FollowUp {
    event: Option<Event>,
    check_end: bool,
}

impl FollowUp {
    /// Whether [`Registry::follow_up`] has anything to do (else the global lock is not needed).
    pub fn needed(&self) -> bool {
        self.event.is_some() || self.check_end
    }
}

impl MemberHandle {
    /// The member's session.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// Handles one message of this member (barriers, semaphores, pages) under its session's
    /// lock, and calls `dispatch` with the outputs while still holding it: messages the session
    /// sends reach every connection's queue in the order the session made them (rule 2), even
    /// when members' connections are served on several threads. Messages of a member that left
    /// are ignored.
    pub fn handle(&self, msg: ToCoordinator, dispatch: impl FnOnce(Outbox)) -> FollowUp {
        let mut run = self.run.lock();
        let rank = self.rank;
        if run.members[rank as usize].state != MemberState::Active {
            // Late messages from a member that already detached are ignored.
            return FollowUp::default();
        }
        let mut out = Vec::new();
        run.handle(rank, msg, &mut out);
        dispatch(out);
        self.follow(&run)
    }

    /// This member's connection is gone: it counts as lost (unless it left already), under the
    /// session's lock, dispatching as [`handle`](Self::handle) does. The caller then tells the
    /// registry ([`Registry::follow_up`], [`Registry::handle_disconnect`]).
    pub fn disconnect(&self, detail: &str, dispatch: impl FnOnce(Outbox)) -> FollowUp {
        let mut run = self.run.lock();
        let rank = self.rank;
        if run.members[rank as usize].state != MemberState::Active {
            return FollowUp { event: None, check_end: true };
        }
        let mut out = Vec::new();
        run.lose(rank, detail, &mut out);
        dispatch(out);
        self.follow(&run)
    }

    fn follow(&self, run: &Running) -> FollowUp {
        let rank = self.rank;
        let state = run.members[rank as usize].state;
        let event = (state == MemberState::Lost).then(|| {
            // Closed for breaking the protocol (`Running::violation`).
            let reason = run.losses.iter().rev().find(|(r, _)| *r == rank).map(|(_, d)| d.clone());
            Event::RankLost {
                session: self.session.clone(),
                rank,
                label: run.members[rank as usize].label.clone(),
                reason: reason.unwrap_or_default(),
            }
        });
        let check_end = state != MemberState::Active && run.members.iter().all(|m| m.state != MemberState::Active);
        FollowUp { event, check_end }
    }
}

/// A session that ended, for the I/O layer to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedSession {
    /// Its name.
    pub name: String,
    /// Its process count.
    pub nprocs: u32,
    /// Its traffic.
    pub stats: SessionStats,
    /// Ranks that were lost rather than detached.
    pub lost: Vec<Rank>,
}

/// Something that happened to a session, for the I/O layer to log and count when it happens
/// (drained with [`Registry::take_events`]; a session's end is an [`EndedSession`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Every process attached: the session runs.
    SessionStarted {
        /// Its name.
        session: String,
        /// Its process count.
        nprocs: u32,
        /// Its region size in bytes.
        size: u64,
    },
    /// A member of a running session disconnected or went silent without detaching.
    RankLost {
        /// The session.
        session: String,
        /// The lost rank.
        rank: Rank,
        /// What the process said about itself when it attached.
        label: String,
        /// What the I/O layer saw.
        reason: String,
    },
    /// A process left a session that was still waiting for its processes.
    LeftWaiting {
        /// The session.
        session: String,
        /// What the process said about itself when it attached.
        label: String,
        /// What the I/O layer saw.
        reason: String,
    },
}

/// All sessions of one coordinator.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: HashMap<String, Session>,
    conns: HashMap<ConnId, ConnState>,
    ended: Vec<EndedSession>,
    events: Vec<Event>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of sessions, pending or running.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Sessions that ended since the last call (for logging).
    pub fn take_ended(&mut self) -> Vec<EndedSession> {
        std::mem::take(&mut self.ended)
    }

    /// What happened since the last call (for logging and metrics), in order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// The session `conn` belongs to and its rank there (`None` while the session waits), or
    /// `None` if it has not attached (for logs).
    pub fn place(&self, conn: ConnId) -> Option<(&str, Option<Rank>)> {
        match self.conns.get(&conn)? {
            ConnState::Pending { session } | ConnState::Queued { session } => Some((session, None)),
            ConnState::Member { session, rank } => Some((session, Some(*rank))),
        }
    }

    /// One line per session, for the status view.
    pub fn status(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .sessions
            .iter()
            .map(|(name, s)| match &s.phase {
                Phase::Pending(m) => format!(
                    "session '{name}': waiting, {} of {} processes attached, {} bytes",
                    m.len(),
                    s.nprocs,
                    s.size
                ),
                Phase::Running(r) => {
                    let r = r.lock();
                    let active = r.members.iter().filter(|m| m.state == MemberState::Active).count();
                    format!(
                        "session '{name}': running, {active} of {} processes attached, {} bytes, {} barriers",
                        s.nprocs, s.size, r.stats.barriers
                    )
                }
            })
            .collect();
        lines.sort();
        lines
    }

    /// A message arrived on `conn`.
    pub fn handle_message(&mut self, conn: ConnId, msg: ToCoordinator, out: &mut Outbox) {
        if let ToCoordinator::Ping { req, payload } = msg {
            out.push(Output::Send(conn, ToProcess::Pong { req, payload }));
            return;
        }
        if let ToCoordinator::Status { req } = msg {
            // Any connection may ask, attached or not. The I/O layer usually answers these
            // itself, adding what only it knows (peer addresses, times).
            let report = self.status_report(&|_| None);
            out.push(Output::Send(conn, ToProcess::Status { req, report }));
            return;
        }
        match self.conns.get(&conn).cloned() {
            None => match msg {
                ToCoordinator::Attach(req) => self.handle_attach(conn, req, out),
                _ => refuse(conn, Refusal::NotAttached, out),
            },
            Some(ConnState::Pending { .. } | ConnState::Queued { .. }) => {
                // Nothing but waiting is allowed before the session starts.
                out.push(Output::Send(
                    conn,
                    ToProcess::Failed {
                        req: None,
                        error: SessionFault::Protocol(format!(
                            "{} sent before the session started",
                            kind(&msg)
                        )),
                    },
                ));
                out.push(Output::Close(conn, "protocol violation"));
            }
            Some(ConnState::Member { .. }) => {
                if let Some(member) = self.member(conn) {
                    let follow = member.handle(msg, |o| out.extend(o));
                    self.follow_up(&member, follow, out);
                }
            }
        }
    }

    /// The running session `conn` is a member of, to handle its messages under that session's
    /// lock only ([`MemberHandle::handle`], then [`Registry::follow_up`] when it asks for it).
    pub fn member(&self, conn: ConnId) -> Option<MemberHandle> {
        let ConnState::Member { session, rank } = self.conns.get(&conn)? else { return None };
        let Phase::Running(run) = &self.sessions.get(session)?.phase else { return None };
        Some(MemberHandle { run: Arc::clone(run), rank: *rank, session: session.clone() })
    }

    /// What a member's message left for the registry: the member was lost (closed for breaking
    /// the protocol), or the session may have ended.
    pub fn follow_up(&mut self, member: &MemberHandle, follow: FollowUp, out: &mut Outbox) {
        if let Some(event) = follow.event {
            self.events.push(event);
        }
        if follow.check_end {
            self.reap(&member.session, out);
        }
    }

    /// `conn` is gone (closed, reset, or silent past the idle timeout). `detail` says how.
    pub fn handle_disconnect(&mut self, conn: ConnId, detail: &str, out: &mut Outbox) {
        let Some(state) = self.conns.remove(&conn) else { return };
        match state {
            ConnState::Queued { session } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.next.retain(|(c, _)| *c != conn);
                }
            }
            ConnState::Pending { session } => {
                let Some(s) = self.sessions.get_mut(&session) else { return };
                let Phase::Pending(members) = &mut s.phase else { return };
                if let Some(pos) = members.iter().position(|(c, _)| *c == conn) {
                    let (_, label) = members.remove(pos);
                    self.events.push(Event::LeftWaiting {
                        session: session.clone(),
                        label,
                        reason: detail.to_string(),
                    });
                }
                if members.is_empty() {
                    self.sessions.remove(&session);
                } else {
                    let joined = members.len() as u32;
                    for (c, _) in members.iter() {
                        out.push(Output::Send(*c, ToProcess::Joined { joined, nprocs: s.nprocs }));
                    }
                }
            }
            ConnState::Member { session, rank } => {
                let Some(s) = self.sessions.get_mut(&session) else { return };
                let Phase::Running(run) = &mut s.phase else { return };
                let mut run = run.lock();
                if run.members[rank as usize].state == MemberState::Active {
                    run.lose(rank, detail, out);
                    self.events.push(Event::RankLost {
                        session: session.clone(),
                        rank,
                        label: run.members[rank as usize].label.clone(),
                        reason: detail.to_string(),
                    });
                }
                drop(run);
                self.reap(&session, out);
            }
        }
    }

    fn handle_attach(&mut self, conn: ConnId, req: AttachRequest, out: &mut Outbox) {
        if let Err(e) = check_session_name(&req.session) {
            return refuse(conn, Refusal::BadName(e), out);
        }
        if let Err(e) = check_region_size(req.size) {
            return refuse(conn, Refusal::BadSize(e), out);
        }
        if req.nprocs == 0 || req.nprocs > MAX_PROCESSES {
            return refuse(conn, Refusal::BadNprocs { nprocs: req.nprocs, max: MAX_PROCESSES }, out);
        }
        let s = self.sessions.entry(req.session.clone()).or_insert_with(|| Session {
            size: req.size,
            nprocs: req.nprocs,
            phase: Phase::Pending(Vec::new()),
            next: Vec::new(),
        });
        if let Phase::Running(run) = &s.phase {
            if run.lock().members.iter().any(|m| m.state != MemberState::Active) {
                // The session is ending (a process in a loop of sessions, attaching again while
                // the last detaches of the previous round are in flight): wait for its end.
                self.conns.insert(conn, ConnState::Queued { session: req.session.clone() });
                s.next.push((conn, req));
                return;
            }
        }
        if s.size != req.size {
            let r = Refusal::SizeMismatch {
                session: req.session,
                declared: s.size,
                requested: req.size,
            };
            return refuse(conn, r, out);
        }
        if s.nprocs != req.nprocs {
            let r = Refusal::NprocsMismatch {
                session: req.session,
                declared: s.nprocs,
                requested: req.nprocs,
            };
            return refuse(conn, r, out);
        }
        let Phase::Pending(members) = &mut s.phase else {
            return refuse(conn, Refusal::SessionFull { session: req.session, nprocs: s.nprocs }, out);
        };
        members.push((conn, req.label));
        let joined = members.len() as u32;
        if joined < s.nprocs {
            self.conns.insert(conn, ConnState::Pending { session: req.session });
            for (c, _) in members.iter() {
                out.push(Output::Send(*c, ToProcess::Joined { joined, nprocs: s.nprocs }));
            }
            return;
        }
        let members: Vec<Member> = std::mem::take(members)
            .into_iter()
            .map(|(conn, label)| Member { conn, label, state: MemberState::Active })
            .collect();
        for (rank, m) in members.iter().enumerate() {
            let rank = rank as Rank;
            self.conns.insert(m.conn, ConnState::Member { session: req.session.clone(), rank });
            out.push(Output::Send(
                m.conn,
                ToProcess::Attached { rank, nprocs: s.nprocs, size: s.size },
            ));
        }
        s.phase = Phase::Running(Arc::new(Mutex::new(Running {
            barrier: Barrier { epoch: 0, arrived: vec![false; members.len()], count: 0 },
            members,
            semaphores: HashMap::new(),
            lost: None,
            losses: Vec::new(),
            stats: SessionStats::default(),
            directory: session_directory(s.nprocs, s.size / dsm_proto::PAGE_SIZE as u64),
        })));
        self.events.push(Event::SessionStarted { session: req.session, nprocs: s.nprocs, size: s.size });
    }

    /// Removes `session` if every member has detached or been lost; attaches queued behind it
    /// start the next session of the name.
    fn reap(&mut self, session: &str, out: &mut Outbox) {
        let Some(s) = self.sessions.get(session) else { return };
        let Phase::Running(run) = &s.phase else { return };
        let run = run.lock();
        if run.members.iter().any(|m| m.state == MemberState::Active) {
            return;
        }
        let lost = run
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.state == MemberState::Lost)
            .map(|(r, _)| r as Rank)
            .collect();
        let mut stats = run.stats;
        stats.pages = run.directory.stats();
        let nprocs = s.nprocs;
        drop(run);
        self.ended.push(EndedSession { name: session.to_string(), nprocs, stats, lost });
        let next = self.sessions.remove(session).map(|s| s.next).unwrap_or_default();
        for (conn, req) in next {
            self.conns.remove(&conn);
            self.handle_attach(conn, req, out);
        }
    }

    /// The label a member attached with (for logs).
    pub fn label(&self, conn: ConnId) -> Option<String> {
        match self.conns.get(&conn)? {
            ConnState::Pending { .. } | ConnState::Queued { .. } => None,
            ConnState::Member { session, rank } => match &self.sessions.get(session)?.phase {
                Phase::Running(r) => Some(r.lock().members[*rank as usize].label.clone()),
                Phase::Pending(_) => None,
            },
        }
    }
}

/// The page directory of a new session, its home copies in a mapping of their own (returned
/// to the OS when the session ends); on the heap if that mapping cannot be made.
fn session_directory(nprocs: u32, pages: u64) -> PageDirectory {
    let d = PageDirectory::new(nprocs, pages);
    match crate::homes::MappedHomes::new(pages) {
        Ok(homes) => d.with_homes(Box::new(homes)),
        Err(e) => {
            tracing::warn!(pages, "cannot map the session's home copies ({e}); keeping them on the heap");
            d
        }
    }
}

fn refuse(conn: ConnId, refusal: Refusal, out: &mut Outbox) {
    out.push(Output::Send(conn, ToProcess::Refused(refusal)));
    out.push(Output::Close(conn, "attach refused"));
}

fn kind(msg: &ToCoordinator) -> &'static str {
    match msg {
        ToCoordinator::Attach(_) => "attach",
        ToCoordinator::Barrier { .. } => "barrier",
        ToCoordinator::SemaphoreWait { .. } => "semaphore wait",
        ToCoordinator::SemaphorePost { .. } => "semaphore post",
        ToCoordinator::Fetch { .. } | ToCoordinator::FetchRun { .. } => "page fetch",
        ToCoordinator::Own { .. } | ToCoordinator::ForceOwn { .. } | ToCoordinator::OwnRun { .. } => "page ownership request",
        ToCoordinator::InvalidateAck { .. }
        | ToCoordinator::DowngradeAck { .. }
        | ToCoordinator::RecallAck { .. }
        | ToCoordinator::InvalidateAckRun { .. }
        | ToCoordinator::DowngradeAckRun { .. }
        | ToCoordinator::RecallAckRun { .. } => "page acknowledgement",
        ToCoordinator::Writeback { .. } | ToCoordinator::WritebackRun { .. } => "page writeback",
        ToCoordinator::Write { .. } | ToCoordinator::Rmw { .. } => "replayed write",
        ToCoordinator::Advise { .. } => "coherence advice",
        ToCoordinator::Detach => "detach",
        ToCoordinator::Ping { .. } => "ping",
        ToCoordinator::Status { .. } => "status request",
    }
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

    fn handle(&mut self, rank: Rank, msg: ToCoordinator, out: &mut Outbox) {
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

    fn lose(&mut self, rank: Rank, detail: &str, out: &mut Outbox) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn attach(r: &mut Registry, conn: ConnId, session: &str, size: u64, nprocs: u32) -> Outbox {
        let mut out = Vec::new();
        let req = AttachRequest { session: session.into(), size, nprocs, label: format!("c{conn}") };
        r.handle_message(conn, ToCoordinator::Attach(req), &mut out);
        out
    }

    fn send(r: &mut Registry, conn: ConnId, msg: ToCoordinator) -> Outbox {
        let mut out = Vec::new();
        r.handle_message(conn, msg, &mut out);
        out
    }

    fn start(r: &mut Registry, session: &str, conns: &[ConnId]) {
        for &c in conns {
            attach(r, c, session, 4096, conns.len() as u32);
        }
    }

    #[test]
    fn ranks_follow_attach_order_and_start_waits_for_all() {
        let mut r = Registry::new();
        let out = attach(&mut r, 10, "s", 4096, 3);
        assert_eq!(out, vec![Output::Send(10, ToProcess::Joined { joined: 1, nprocs: 3 })]);
        attach(&mut r, 20, "s", 4096, 3);
        let out = attach(&mut r, 5, "s", 4096, 3);
        let attached: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::Send(c, ToProcess::Attached { rank, .. }) => Some((*c, *rank)),
                _ => None,
            })
            .collect();
        assert_eq!(attached, vec![(10, 0), (20, 1), (5, 2)]);
    }

    #[test]
    fn mismatches_are_refused_clearly() {
        let mut r = Registry::new();
        attach(&mut r, 1, "s", 8192, 2);
        let out = attach(&mut r, 2, "s", 4096, 2);
        assert_eq!(
            out[0],
            Output::Send(
                2,
                ToProcess::Refused(Refusal::SizeMismatch {
                    session: "s".into(),
                    declared: 8192,
                    requested: 4096
                })
            )
        );
        assert!(matches!(out[1], Output::Close(2, _)));
        let out = attach(&mut r, 3, "s", 8192, 3);
        assert!(matches!(
            out[0],
            Output::Send(3, ToProcess::Refused(Refusal::NprocsMismatch { declared: 2, requested: 3, .. }))
        ));
        let out = attach(&mut r, 4, "t", 100, 3);
        assert!(matches!(out[0], Output::Send(4, ToProcess::Refused(Refusal::BadSize(_)))));
        let out = attach(&mut r, 4, "t", 4096, 0);
        assert!(matches!(out[0], Output::Send(4, ToProcess::Refused(Refusal::BadNprocs { .. }))));
    }

    #[test]
    fn full_session_refuses_and_name_is_reusable_after_end() {
        let mut r = Registry::new();
        start(&mut r, "s", &[1, 2]);
        let out = attach(&mut r, 3, "s", 4096, 2);
        assert!(matches!(out[0], Output::Send(3, ToProcess::Refused(Refusal::SessionFull { .. }))));
        send(&mut r, 1, ToCoordinator::Detach);
        assert_eq!(r.session_count(), 1);
        let out = send(&mut r, 2, ToCoordinator::Detach);
        assert_eq!(out, vec![Output::Send(2, ToProcess::Detached)]);
        assert_eq!(r.session_count(), 0);
        assert_eq!(r.take_ended().len(), 1);
        // Same name, new shape: a fresh session.
        start(&mut r, "s", &[7, 8, 9]);
        assert_eq!(r.session_count(), 1);
    }

    #[test]
    fn barrier_releases_everyone_once_all_arrive() {
        let mut r = Registry::new();
        start(&mut r, "s", &[1, 2, 3]);
        for epoch in 0..3 {
            assert!(send(&mut r, 1, ToCoordinator::Barrier { epoch }).is_empty());
            assert!(send(&mut r, 3, ToCoordinator::Barrier { epoch }).is_empty());
            let out = send(&mut r, 2, ToCoordinator::Barrier { epoch });
            assert_eq!(out.len(), 3);
            assert!(out.iter().all(|o| matches!(o, Output::Send(_, ToProcess::BarrierDone { epoch: e }) if *e == epoch)));
        }
    }

    #[test]
    fn counting_semaphore_releases_waiters_in_order() {
        let mut r = Registry::new();
        start(&mut r, "s", &[1, 2, 3]);
        let w = |req| ToCoordinator::SemaphoreWait { req, name: "sem".into(), initial: 0 };
        let p = |req| ToCoordinator::SemaphorePost { req, name: "sem".into(), initial: 0 };
        assert!(send(&mut r, 1, w(11)).is_empty());
        assert!(send(&mut r, 2, w(21)).is_empty());
        let out = send(&mut r, 3, p(31));
        assert_eq!(
            out,
            vec![
                Output::Send(1, ToProcess::SemaphoreAcquired { req: 11 }),
                Output::Send(3, ToProcess::SemaphorePosted { req: 31 })
            ]
        );
        send(&mut r, 3, p(32));
        send(&mut r, 3, p(33)); // count is now 1
        let out = send(&mut r, 1, w(12));
        assert_eq!(out, vec![Output::Send(1, ToProcess::SemaphoreAcquired { req: 12 })]);
        assert!(send(&mut r, 1, w(13)).is_empty());
    }

    #[test]
    fn long_semaphore_names_are_an_error() {
        let mut r = Registry::new();
        start(&mut r, "s", &[1]);
        let name = "x".repeat(dsm_proto::MAX_SEMAPHORE_NAME + 1);
        let out = send(&mut r, 1, ToCoordinator::SemaphorePost { req: 1, name, initial: 0 });
        assert!(matches!(out[0], Output::Send(1, ToProcess::Failed { req: Some(1), error: SessionFault::BadName(_) })));
    }

    #[test]
    fn lost_rank_fails_barrier_and_semaphore_waiters() {
        let mut r = Registry::new();
        start(&mut r, "s", &[1, 2, 3, 4]);
        send(&mut r, 1, ToCoordinator::Barrier { epoch: 0 });
        send(&mut r, 2, ToCoordinator::SemaphoreWait { req: 5, name: "x".into(), initial: 0 });
        let mut out = Vec::new();
        r.handle_disconnect(4, "timed out", &mut out);
        let fault = SessionFault::RankLost { rank: 3, detail: "timed out".into() };
        assert!(out.contains(&Output::Send(1, ToProcess::Failed { req: None, error: fault.clone() })));
        assert!(out.contains(&Output::Send(2, ToProcess::Failed { req: Some(5), error: fault.clone() })));
        // Later barriers fail at once instead of hanging.
        let out = send(&mut r, 3, ToCoordinator::Barrier { epoch: 1 });
        assert_eq!(out, vec![Output::Send(3, ToProcess::Failed { req: None, error: fault })]);
        for c in [1, 2, 3] {
            send(&mut r, c, ToCoordinator::Detach);
        }
        assert_eq!(r.session_count(), 0);
        assert_eq!(r.take_ended()[0].lost, vec![3]);
    }

    #[test]
    fn pending_member_leaving_frees_its_slot() {
        let mut r = Registry::new();
        attach(&mut r, 1, "s", 4096, 2);
        let mut out = Vec::new();
        r.handle_disconnect(1, "closed", &mut out);
        assert_eq!(r.session_count(), 0);
        attach(&mut r, 2, "s", 4096, 3);
        attach(&mut r, 3, "s", 4096, 3);
        let mut out = Vec::new();
        r.handle_disconnect(2, "closed", &mut out);
        assert_eq!(out, vec![Output::Send(3, ToProcess::Joined { joined: 1, nprocs: 3 })]);
    }

    #[test]
    fn detached_rank_fails_barrier_instead_of_hanging() {
        let mut r = Registry::new();
        start(&mut r, "s", &[1, 2]);
        send(&mut r, 1, ToCoordinator::Barrier { epoch: 0 });
        let out = send(&mut r, 2, ToCoordinator::Detach);
        assert!(out.contains(&Output::Send(
            1,
            ToProcess::Failed { req: None, error: SessionFault::RankDetached { rank: 1 } }
        )));
    }

    #[test]
    fn messages_before_attach_are_refused() {
        let mut r = Registry::new();
        let out = send(&mut r, 1, ToCoordinator::Barrier { epoch: 0 });
        assert_eq!(out[0], Output::Send(1, ToProcess::Refused(Refusal::NotAttached)));
    }

    #[test]
    fn the_first_use_of_a_semaphore_fixes_its_initial_count() {
        let mut r = Registry::new();
        start(&mut r, "s", &[1, 2]);
        let w = |req, initial| ToCoordinator::SemaphoreWait { req, name: "m".into(), initial };
        let p = |req, initial| ToCoordinator::SemaphorePost { req, name: "m".into(), initial };
        // Created at 1: a mutex. The first wait passes, the second blocks until a post.
        assert_eq!(send(&mut r, 1, w(1, 1)), vec![Output::Send(1, ToProcess::SemaphoreAcquired { req: 1 })]);
        assert!(send(&mut r, 2, w(2, 1)).is_empty());
        let out = send(&mut r, 1, p(3, 1));
        assert!(out.contains(&Output::Send(2, ToProcess::SemaphoreAcquired { req: 2 })), "{out:?}");
        // Another initial count for the same name is a clear error, for waits and posts alike.
        let mismatch = SessionFault::SemaphoreInitialMismatch { name: "m".into(), declared: 1, requested: 0 };
        let out = send(&mut r, 2, w(4, 0));
        assert_eq!(out, vec![Output::Send(2, ToProcess::Failed { req: Some(4), error: mismatch.clone() })]);
        let out = send(&mut r, 2, p(5, 0));
        assert_eq!(out, vec![Output::Send(2, ToProcess::Failed { req: Some(5), error: mismatch })]);
        // A post created at 0 lets exactly one wait through.
        let q = |req| ToCoordinator::SemaphorePost { req, name: "z".into(), initial: 0 };
        let v = |req| ToCoordinator::SemaphoreWait { req, name: "z".into(), initial: 0 };
        assert!(send(&mut r, 1, v(6)).is_empty());
        let out = send(&mut r, 2, q(7));
        assert!(out.contains(&Output::Send(1, ToProcess::SemaphoreAcquired { req: 6 })), "{out:?}");
    }

    #[test]
    fn an_attach_while_the_session_of_that_name_ends_joins_the_next_one() {
        let mut r = Registry::new();
        start(&mut r, "s", &[1, 2]);
        send(&mut r, 1, ToCoordinator::Detach);
        // Rank 1 is still attached: the session is ending, not over. The new attach waits.
        let out = attach(&mut r, 3, "s", 4096, 2);
        assert!(out.is_empty(), "{out:?}");
        // Messages other than the attach are still a protocol violation while queued.
        assert!(attach(&mut r, 5, "s", 4096, 2).is_empty());
        let out = send(&mut r, 5, ToCoordinator::Barrier { epoch: 0 });
        assert!(out.iter().any(|o| matches!(o, Output::Close(5, _))), "{out:?}");
        r.handle_disconnect(5, "closed after a protocol violation", &mut Vec::new());
        let out = attach(&mut r, 4, "s", 4096, 2);
        assert!(out.is_empty(), "{out:?}");
        // The last detach ends the session; the queued attaches form the next one and start it.
        let out = send(&mut r, 2, ToCoordinator::Detach);
        assert!(out.contains(&Output::Send(2, ToProcess::Detached)));
        assert!(out.contains(&Output::Send(3, ToProcess::Attached { rank: 0, nprocs: 2, size: 4096 })), "{out:?}");
        assert!(out.contains(&Output::Send(4, ToProcess::Attached { rank: 1, nprocs: 2, size: 4096 })), "{out:?}");
        assert_eq!(r.take_ended().len(), 1);
        assert_eq!(r.session_count(), 1);
        // A queued attach may declare a new shape; one that leaves before the end is dropped.
        start(&mut r, "t", &[10, 11]);
        send(&mut r, 10, ToCoordinator::Detach);
        assert!(attach(&mut r, 12, "t", 8192, 1).is_empty());
        assert!(attach(&mut r, 13, "t", 8192, 1).is_empty());
        let mut out = Vec::new();
        r.handle_disconnect(12, "closed", &mut out);
        let out = send(&mut r, 11, ToCoordinator::Detach);
        assert!(out.contains(&Output::Send(13, ToProcess::Attached { rank: 0, nprocs: 1, size: 8192 })), "{out:?}");
        assert!(!out.iter().any(|o| matches!(o, Output::Send(12, _))), "{out:?}");
    }

    #[test]
    fn a_running_session_with_every_member_active_still_refuses_extra_attaches() {
        let mut r = Registry::new();
        start(&mut r, "s", &[1, 2]);
        let out = attach(&mut r, 3, "s", 4096, 2);
        assert!(matches!(out[0], Output::Send(3, ToProcess::Refused(Refusal::SessionFull { .. }))));
    }

    /// Any message a (possibly hostile) client may send, with values around the limits.
    fn arbitrary_message() -> impl proptest::strategy::Strategy<Value = ToCoordinator> {
        use dsm_proto::{Coherence, PageData, RmwOp};
        use proptest::prelude::*;
        let page = prop_oneof![0u64..4, Just(u64::MAX), 4u64..1 << 20];
        let data = prop_oneof![
            Just(PageData(vec![7; dsm_proto::PAGE_SIZE])),
            (0usize..5000).prop_map(|n| PageData(vec![1; n])),
            Just(PageData(vec![2; 1 << 20])),
        ];
        let coherence = prop_oneof![Just(Coherence::Update), Just(Coherence::Invalidate), Just(Coherence::Adaptive)];
        prop_oneof![
            (any::<u64>(), page.clone()).prop_map(|(req, page)| ToCoordinator::Fetch { req, page }),
            (any::<u64>(), page.clone()).prop_map(|(req, page)| ToCoordinator::Own { req, page }),
            (any::<u64>(), page.clone()).prop_map(|(req, page)| ToCoordinator::ForceOwn { req, page }),
            page.clone().prop_map(|page| ToCoordinator::InvalidateAck { page }),
            (page.clone(), proptest::option::of(data.clone())).prop_map(|(page, data)| ToCoordinator::DowngradeAck { page, data }),
            (page.clone(), proptest::option::of(data.clone())).prop_map(|(page, data)| ToCoordinator::RecallAck { page, data }),
            (page.clone(), data).prop_map(|(page, data)| ToCoordinator::Writeback { page, data }),
            (any::<u64>(), page.clone(), any::<u16>(), any::<u8>(), any::<u128>())
                .prop_map(|(req, page, offset, width, value)| ToCoordinator::Write { req, page, offset, width, value }),
            (any::<u64>(), page.clone(), any::<u16>(), any::<u8>(), any::<u64>())
                .prop_map(|(req, page, offset, width, operand)| ToCoordinator::Rmw { req, page, offset, width, op: RmwOp::Xadd, operand, expected: 0 }),
            (page, any::<u64>(), coherence).prop_map(|(first, count, coherence)| ToCoordinator::Advise { first, count, coherence }),
            (any::<u64>(), "[a-z]{0,70}", 0u32..3).prop_map(|(req, name, initial)| ToCoordinator::SemaphoreWait { req, name, initial }),
            (any::<u64>(), "[a-z]{0,70}", 0u32..3).prop_map(|(req, name, initial)| ToCoordinator::SemaphorePost { req, name, initial }),
            any::<u64>().prop_map(|epoch| ToCoordinator::Barrier { epoch }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// A member sending anything never panics the coordinator; a member that breaks the
        /// protocol is closed and lost, and the other member's session keeps answering: a post
        /// and wait of its own go through, and its barrier either completes or fails clearly.
        #[test]
        fn a_hostile_member_is_closed_and_the_other_keeps_clear_answers(
            msgs in proptest::collection::vec(arbitrary_message(), 1..60)
        ) {
            let mut r = Registry::new();
            start(&mut r, "s", &[1, 2]);
            let mut closed = false;
            for m in msgs {
                let out = send(&mut r, 2, m);
                closed |= out.iter().any(|o| matches!(o, Output::Close(2, _)));
                for o in &out {
                    if let Output::Send(c, _) = o {
                        proptest::prop_assert!(*c == 1 || *c == 2, "message to an unknown connection {c}");
                    }
                }
            }
            let p = send(&mut r, 1, ToCoordinator::SemaphorePost { req: 900, name: "rank0-own".into(), initial: 0 });
            proptest::prop_assert!(p.contains(&Output::Send(1, ToProcess::SemaphorePosted { req: 900 })), "{p:?}");
            let w = send(&mut r, 1, ToCoordinator::SemaphoreWait { req: 901, name: "rank0-own".into(), initial: 0 });
            proptest::prop_assert!(w.contains(&Output::Send(1, ToProcess::SemaphoreAcquired { req: 901 })), "{w:?}");
            if closed {
                // Rank 1 (conn 2) is lost: rank 0's barrier fails at once with the reason.
                let b = send(&mut r, 1, ToCoordinator::Barrier { epoch: 0 });
                let clear = b.iter().any(|o| matches!(o, Output::Send(1, ToProcess::Failed { error: SessionFault::RankLost { rank: 1, detail }, .. }) if detail.contains("protocol violation")));
                proptest::prop_assert!(clear, "{b:?}");
            }
        }
    }

    #[test]
    fn a_member_sending_a_short_writeback_is_closed_and_counts_as_lost() {
        let mut r = Registry::new();
        start(&mut r, "s", &[1, 2]);
        send(&mut r, 1, ToCoordinator::Barrier { epoch: 0 });
        let bad = ToCoordinator::Writeback { page: 0, data: dsm_proto::PageData(vec![1; 100]) };
        let out = send(&mut r, 2, bad);
        assert!(out.iter().any(|o| matches!(o, Output::Close(2, "protocol violation"))), "{out:?}");
        assert!(
            out.iter().any(|o| matches!(o, Output::Send(1, ToProcess::Failed { req: None, error: SessionFault::RankLost { rank: 1, .. } }))),
            "the waiting barrier of the other member fails with the reason: {out:?}"
        );
        let lost = r.take_events().into_iter().any(|e| matches!(e, Event::RankLost { rank: 1, reason, .. } if reason.contains("protocol violation")));
        assert!(lost, "the loss is reported to the I/O layer (logs, metrics)");
    }
}
