//! The coordinator's status report: the answer to [`crate::ToCoordinator::Status`], what
//! `dsm status` prints as a table and `dsm status --json` emits.
//!
//! Plain data, no behaviour: the coordinator's registry fills in what it knows (sessions,
//! members, counters), its I/O layer adds what only it knows (peer addresses, wall-clock times).
//! The field names are the JSON keys, so renaming one is a visible change for scripts.

use serde::{Deserialize, Serialize};

use crate::Rank;

/// Everything a coordinator reports about itself and its sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The coordinator's release (its crate version).
    pub version: String,
    /// The coordinator's clock when it made the report, milliseconds since the Unix epoch (so
    /// that ages in the report do not depend on the reader's clock).
    pub now_unix_ms: u64,
    /// When the coordinator started, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Open client connections (processes and status clients such as this one).
    pub connections: u32,
    /// Sessions, waiting or running, sorted by name.
    pub sessions: Vec<SessionStatus>,
    /// Sessions left out because the report would not fit in one frame.
    pub omitted_sessions: u32,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Waiting for all its processes to attach.
    Waiting,
    /// Every process attached; barriers, semaphores and the region are live.
    Running,
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SessionState::Waiting => "waiting",
            SessionState::Running => "running",
        })
    }
}

/// One session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    /// Its name.
    pub name: String,
    /// Waiting or running.
    pub state: SessionState,
    /// Processes it was declared for.
    pub nprocs: u32,
    /// Processes attached now (waiting: joined so far; running: not yet detached or lost).
    pub attached: u32,
    /// Region size in bytes.
    pub size: u64,
    /// Bytes of home copies the coordinator holds for it (pages nobody wrote cost nothing).
    pub home_bytes: u64,
    /// Its processes: in join order while waiting, by rank once running.
    pub members: Vec<MemberStatus>,
    /// Barriers completed.
    pub barriers: u64,
    /// Named semaphores in use.
    pub semaphores: u32,
    /// Semaphore waits completed.
    pub semaphore_waits: u64,
    /// Semaphore posts.
    pub semaphore_posts: u64,
    /// Page traffic of its region.
    pub pages: PageTraffic,
    /// Ranks lost (disconnected or silent without detaching), in the order they were lost.
    pub lost: Vec<LostRank>,
}

/// Where a process of a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Joined, waiting for the session to start.
    Waiting,
    /// Attached to the running session.
    Active,
    /// Left the session cleanly.
    Detached,
    /// Disconnected or went silent without detaching.
    Lost,
}

impl std::fmt::Display for MemberState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MemberState::Waiting => "waiting",
            MemberState::Active => "active",
            MemberState::Detached => "detached",
            MemberState::Lost => "lost",
        })
    }
}

/// One process of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its rank (`None` while the session is waiting: ranks are given at start).
    pub rank: Option<Rank>,
    /// Waiting, active, detached or lost.
    pub state: MemberState,
    /// What the process said about itself when it attached (pid and program).
    pub label: String,
    /// Its address as the coordinator sees it (`None` once its connection is gone).
    pub peer: Option<String>,
}

/// A rank that was lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostRank {
    /// The rank.
    pub rank: Rank,
    /// What the coordinator saw (closed, reset, silent past the idle timeout, ...).
    pub reason: String,
    /// When, milliseconds since the Unix epoch by the coordinator's clock (`None` if unknown).
    pub at_unix_ms: Option<u64>,
}

/// Page traffic of one session's region (counted by its page directory).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageTraffic {
    /// Read-only copies asked for.
    pub fetches: u64,
    /// Ownership grants sent.
    pub ownership_grants: u64,
    /// Invalidations sent.
    pub invalidations: u64,
    /// Downgrades sent.
    pub downgrades: u64,
    /// Recalls sent.
    pub recalls: u64,
    /// Pages sent with their bytes (zero pages travel as "zero" and are not counted).
    pub pages_sent: u64,
    /// Page bytes sent.
    pub bytes_sent: u64,
    /// Pages written back by their owners.
    pub writebacks: u64,
    /// Replayed stores and read-modify-writes applied (update mode).
    pub replayed_writes: u64,
    /// Updates broadcast to readers.
    pub updates: u64,
}

impl From<crate::DirectoryStats> for PageTraffic {
    fn from(s: crate::DirectoryStats) -> Self {
        PageTraffic {
            fetches: s.fetches,
            ownership_grants: s.ownership_grants,
            invalidations: s.invalidations,
            downgrades: s.downgrades,
            recalls: s.recalls,
            pages_sent: s.pages_sent,
            bytes_sent: s.bytes_sent,
            writebacks: s.writebacks,
            replayed_writes: s.replayed_writes,
            updates: s.updates,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_frame, encode_frame, ToProcess};

    #[test]
    fn a_report_travels_as_one_frame() {
        let report = StatusReport {
            version: "0.1.0".into(),
            now_unix_ms: 2,
            started_unix_ms: 1,
            connections: 3,
            sessions: vec![SessionStatus {
                name: "s".into(),
                state: SessionState::Running,
                nprocs: 2,
                attached: 1,
                size: 4096,
                home_bytes: 4096,
                members: vec![MemberStatus {
                    rank: Some(1),
                    state: MemberState::Lost,
                    label: "pid 7 (pi)".into(),
                    peer: None,
                }],
                barriers: 4,
                semaphores: 1,
                semaphore_waits: 5,
                semaphore_posts: 6,
                pages: PageTraffic { pages_sent: 9, bytes_sent: 9 * 4096, ..PageTraffic::default() },
                lost: vec![LostRank { rank: 1, reason: "closed".into(), at_unix_ms: Some(2) }],
            }],
            omitted_sessions: 0,
        };
        let msg = ToProcess::Status { req: 7, report };
        let mut buf = Vec::new();
        encode_frame(&msg, &mut buf).unwrap();
        let (back, used) = decode_frame::<ToProcess>(&buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(back, msg);
    }
}
