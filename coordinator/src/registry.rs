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
//! Direct transfers: the I/O layer tells the registry where each connection comes from
//! ([`Registry::connected`]); a session whose members all offered a peer fingerprint in their
//! attach, on a coordinator that allows direct transfers ([`Registry::with_direct_transfers`]),
//! starts with every member's address and fingerprint in `Attached::peers`, and its directory
//! forwards pages ([`RUNTIME_SERVES_FORWARDS`]).
//!
//! Read-only views for operators live in `registry/snapshot.rs` ([`Registry::status_report`]);
//! what happened since the I/O layer last looked is queued as [`Event`]s and [`EndedSession`]s.

mod running;
mod snapshot;

pub use snapshot::SessionCounts;
use running::{Barrier, Member, MemberState, Running};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use dsm_proto::directory::{DirectoryStats, PageDirectory};
use dsm_proto::{
    check_region_size, check_session_name, AttachRequest, PeerAddress, Rank, Refusal,
    SessionFault, ToCoordinator, ToProcess, MAX_PROCESSES,
};

/// Most semaphore names one session keeps.
pub const MAX_SEMAPHORES: usize = 4096;

/// Most semaphore waits one process may have blocked at once (one per waiting thread).
pub const MAX_WAITS_PER_RANK: usize = 4096;

/// Identifies one client connection.
pub type ConnId = u64;

/// Whether the processes' runtime serves the directory's forwards yet (`ToProcess::Forward`
/// and the rest, `ToPeer::Pages` on its peer links). Until it does, a session that gets its
/// members' peer addresses still has every page served through the coordinator: a forward
/// would be ignored and its request would wait forever. Set to `true` when the runtime's
/// driver handles them.
pub const RUNTIME_SERVES_FORWARDS: bool = true;

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

/// A process waiting for its session to start.
#[derive(Debug)]
struct Joining {
    conn: ConnId,
    /// What the process said about itself.
    label: String,
    /// Its peer fingerprint, if it takes direct transfers.
    peer: Option<[u8; 32]>,
}

#[derive(Debug)]
enum Phase {
    /// Waiting for processes; connections in join order.
    Pending(Vec<Joining>),
    /// All processes joined; members indexed by rank.
    /// Behind its own lock: members' messages are handled under it alone (see
    /// [`Registry::member`]), so sessions proceed in parallel.
    Running(Arc<Mutex<Running>>),
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
#[derive(Debug)]
pub struct Registry {
    sessions: HashMap<String, Session>,
    conns: HashMap<ConnId, ConnState>,
    /// Where each connection comes from, as the I/O layer sees it ([`Registry::connected`]).
    addrs: HashMap<ConnId, SocketAddr>,
    /// Sessions may transfer pages directly between their members.
    direct: bool,
    ended: Vec<EndedSession>,
    events: Vec<Event>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            sessions: HashMap::new(),
            conns: HashMap::new(),
            addrs: HashMap::new(),
            direct: true,
            ended: Vec::new(),
            events: Vec::new(),
        }
    }
}

impl Registry {
    /// An empty registry; direct transfers allowed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows sessions to transfer pages directly between their members (the default) or not:
    /// off, every session starts with no peer addresses and every page goes through the
    /// coordinator.
    pub fn with_direct_transfers(mut self, on: bool) -> Self {
        self.direct = on;
        self
    }

    /// `conn` comes from `addr` (the address its members' peers reach it at: a process's
    /// endpoint serves peer connections on the socket it connected from).
    pub fn connected(&mut self, conn: ConnId, addr: SocketAddr) {
        self.addrs.insert(conn, addr);
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
        self.addrs.remove(&conn);
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
                if let Some(pos) = members.iter().position(|j| j.conn == conn) {
                    let Joining { label, .. } = members.remove(pos);
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
                    for j in members.iter() {
                        out.push(Output::Send(j.conn, ToProcess::Joined { joined, nprocs: s.nprocs }));
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
        members.push(Joining { conn, label: req.label, peer: req.peer });
        let joined = members.len() as u32;
        if joined < s.nprocs {
            self.conns.insert(conn, ConnState::Pending { session: req.session });
            for j in members.iter() {
                out.push(Output::Send(j.conn, ToProcess::Joined { joined, nprocs: s.nprocs }));
            }
            return;
        }
        let joining = std::mem::take(members);
        let peers = peer_addresses(self.direct, &joining, &self.addrs);
        if self.direct && peers.is_empty() {
            tracing::info!(session = %req.session, "no direct transfers: not every process offered them");
        }
        let members: Vec<Member> = joining
            .into_iter()
            .map(|j| Member { conn: j.conn, label: j.label, state: MemberState::Active })
            .collect();
        for (rank, m) in members.iter().enumerate() {
            let rank = rank as Rank;
            self.conns.insert(m.conn, ConnState::Member { session: req.session.clone(), rank });
            out.push(Output::Send(
                m.conn,
                ToProcess::Attached { rank, nprocs: s.nprocs, size: s.size, peers: peers.clone() },
            ));
        }
        let forwards = !peers.is_empty() && RUNTIME_SERVES_FORWARDS;
        s.phase = Phase::Running(Arc::new(Mutex::new(Running {
            barrier: Barrier { epoch: 0, arrived: vec![false; members.len()], count: 0 },
            members,
            semaphores: HashMap::new(),
            lost: None,
            losses: Vec::new(),
            stats: SessionStats::default(),
            directory: session_directory(s.nprocs, s.size / dsm_proto::PAGE_SIZE as u64).with_forwards(forwards),
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

/// Every member's peer address by rank, when direct transfers are allowed and every member
/// offered a fingerprint (and has a known address); else none (the session does not forward).
fn peer_addresses(direct: bool, joining: &[Joining], addrs: &HashMap<ConnId, SocketAddr>) -> Vec<Option<PeerAddress>> {
    if !direct {
        return Vec::new();
    }
    joining
        .iter()
        .map(|j| Some(PeerAddress { addr: *addrs.get(&j.conn)?, fingerprint: j.peer? }))
        .collect::<Option<Vec<PeerAddress>>>()
        .map_or_else(Vec::new, |all| all.into_iter().map(Some).collect())
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
        ToCoordinator::Got { .. } | ToCoordinator::ForwardAborted { .. } => "forward acknowledgement",
        ToCoordinator::ForwardReturn { .. } => "forward return",
        ToCoordinator::BackupAck { .. } => "backup acknowledgement",
        ToCoordinator::BackupData { .. } | ToCoordinator::BackupHome { .. } => "backup data",
        ToCoordinator::Write { .. } | ToCoordinator::Rmw { .. } => "replayed write",
        ToCoordinator::Advise { .. } => "coherence advice",
        ToCoordinator::Detach => "detach",
        ToCoordinator::Ping { .. } => "ping",
        ToCoordinator::Status { .. } => "status request",
    }
}

#[cfg(test)]
mod tests;
