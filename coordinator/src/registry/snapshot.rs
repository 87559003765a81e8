//! Read-only views of the registry for operators: [`Registry::status_report`], the data behind
//! `dsm status` and the metrics gauges.
//!
//! The registry is sans-IO, so it knows neither peer addresses nor wall-clock time: the caller
//! passes a lookup for the former and fills in the latter (see `status.rs`).

use dsm_proto::{
    LostRank, MemberState as WireMemberState, MemberStatus, PageTraffic, SessionState, SessionStatus,
    StatusReport, PAGE_SIZE,
};

use super::{ConnId, MemberState, Phase, Registry};

/// Counts of sessions by state, for gauges.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionCounts {
    /// Sessions waiting for their processes.
    pub waiting: u64,
    /// Sessions running.
    pub running: u64,
    /// Bytes of home copies held for all running sessions.
    pub home_bytes: u64,
}

impl Registry {
    /// Every session, sorted by name, with its members, counters and lost ranks. `peer` maps a
    /// member's connection to its address as the I/O layer sees it. The coordinator-wide fields
    /// (`now_unix_ms`, `started_unix_ms`, `connections`) and the loss times are left for the
    /// I/O layer to fill in.
    pub fn status_report(&self, peer: &dyn Fn(ConnId) -> Option<String>) -> StatusReport {
        let mut sessions: Vec<SessionStatus> = self
            .sessions
            .iter()
            .map(|(name, s)| match &s.phase {
                Phase::Pending(joined) => SessionStatus {
                    name: name.clone(),
                    state: SessionState::Waiting,
                    nprocs: s.nprocs,
                    attached: joined.len() as u32,
                    size: s.size,
                    home_bytes: 0,
                    members: joined
                        .iter()
                        .map(|j| MemberStatus {
                            rank: None,
                            state: WireMemberState::Waiting,
                            label: j.label.clone(),
                            peer: peer(j.conn),
                        })
                        .collect(),
                    barriers: 0,
                    semaphores: 0,
                    semaphore_waits: 0,
                    semaphore_posts: 0,
                    pages: PageTraffic::default(),
                    lost: Vec::new(),
                },
                Phase::Running(run) => {
                    let run = run.lock();
                    SessionStatus {
                    name: name.clone(),
                    state: SessionState::Running,
                    nprocs: s.nprocs,
                    attached: run.members.iter().filter(|m| m.state == MemberState::Active).count()
                        as u32,
                    size: s.size,
                    home_bytes: home_bytes(run.directory.stored_pages()),
                    members: run
                        .members
                        .iter()
                        .enumerate()
                        .map(|(rank, m)| {
                            let active = m.state == MemberState::Active;
                            MemberStatus {
                                rank: Some(rank as u32),
                                state: match m.state {
                                    MemberState::Active => WireMemberState::Active,
                                    MemberState::Detached => WireMemberState::Detached,
                                    MemberState::Lost => WireMemberState::Lost,
                                },
                                label: m.label.clone(),
                                // A connection id is never reused, but once the member left
                                // its address says nothing useful.
                                peer: if active { peer(m.conn) } else { None },
                            }
                        })
                        .collect(),
                    barriers: run.stats.barriers,
                    semaphores: run.semaphores.len() as u32,
                    semaphore_waits: run.stats.semaphore_waits,
                    semaphore_posts: run.stats.semaphore_posts,
                    pages: PageTraffic::from(run.directory.stats()),
                    lost: run
                        .losses
                        .iter()
                        .map(|(rank, reason)| LostRank { rank: *rank, reason: reason.clone(), at_unix_ms: None })
                        .collect(),
                    }
                },
            })
            .collect();
        sessions.sort_by(|a, b| a.name.cmp(&b.name));
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            sessions,
            ..StatusReport::default()
        }
    }

    /// Sessions by state and the home-copy bytes they hold (cheaper than a full report).
    pub fn session_counts(&self) -> SessionCounts {
        let mut counts = SessionCounts::default();
        for s in self.sessions.values() {
            match &s.phase {
                Phase::Pending(_) => counts.waiting += 1,
                Phase::Running(run) => {
                    counts.running += 1;
                    counts.home_bytes += home_bytes(run.lock().directory.stored_pages());
                }
            }
        }
        counts
    }
}

fn home_bytes(stored_pages: usize) -> u64 {
    (stored_pages as u64).saturating_mul(PAGE_SIZE as u64)
}

#[cfg(test)]
mod tests {
    use dsm_proto::{AttachRequest, ToCoordinator, ToProcess};

    use super::*;
    use crate::registry::Output;

    fn attach(r: &mut Registry, conn: ConnId, session: &str, nprocs: u32) {
        let req = AttachRequest { session: session.into(), size: 8192, nprocs, label: format!("pid {conn}"), peer: None };
        r.handle_message(conn, ToCoordinator::Attach(req), &mut Vec::new());
    }

    fn peer(conn: ConnId) -> Option<String> {
        Some(format!("10.0.0.{conn}:1"))
    }

    #[test]
    fn waiting_and_running_sessions_with_members_and_losses() {
        let mut r = Registry::new();
        attach(&mut r, 1, "b-wait", 3);
        attach(&mut r, 2, "a-run", 2);
        attach(&mut r, 3, "a-run", 2);
        let mut out = Vec::new();
        r.handle_message(2, ToCoordinator::Own { req: 1, page: 1 }, &mut out);
        r.handle_message(3, ToCoordinator::Barrier { epoch: 0 }, &mut out);
        r.handle_disconnect(3, "went silent past the idle timeout", &mut out);

        let report = r.status_report(&peer);
        let names: Vec<&str> = report.sessions.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a-run", "b-wait"], "sorted by name");

        let run = &report.sessions[0];
        assert_eq!((run.state, run.nprocs, run.attached, run.size), (SessionState::Running, 2, 1, 8192));
        assert_eq!(run.pages.ownership_grants, 1);
        let m: Vec<_> = run.members.iter().map(|m| (m.rank, m.state, m.peer.clone())).collect();
        assert_eq!(
            m,
            [
                (Some(0), WireMemberState::Active, Some("10.0.0.2:1".to_string())),
                (Some(1), WireMemberState::Lost, None)
            ]
        );
        assert_eq!(run.lost.len(), 1);
        assert_eq!((run.lost[0].rank, run.lost[0].reason.as_str()), (1, "went silent past the idle timeout"));

        let wait = &report.sessions[1];
        assert_eq!((wait.state, wait.attached, wait.nprocs), (SessionState::Waiting, 1, 3));
        assert_eq!(wait.members[0].label, "pid 1");
        assert_eq!(wait.members[0].rank, None);

        assert_eq!(r.session_counts(), SessionCounts { waiting: 1, running: 1, home_bytes: 0 });
        let events = r.take_events();
        assert!(events.contains(&crate::registry::Event::RankLost {
            session: "a-run".into(),
            rank: 1,
            label: "pid 3".into(),
            reason: "went silent past the idle timeout".into()
        }));
    }

    #[test]
    fn a_status_request_needs_no_attach() {
        let mut r = Registry::new();
        attach(&mut r, 1, "s", 2);
        let mut out = Vec::new();
        r.handle_message(9, ToCoordinator::Status { req: 4 }, &mut out);
        match &out[..] {
            [Output::Send(9, ToProcess::Status { req: 4, report })] => {
                assert_eq!(report.sessions.len(), 1);
                assert_eq!(report.sessions[0].name, "s");
            }
            other => panic!("unexpected answer: {other:?}"),
        }
        // Asking did not join anything: the connection can still attach.
        assert_eq!(r.place(9), None);
    }
}
