//! Answering `dsm status`: the registry's snapshot ([`Registry::status_report`]) completed with
//! what only the I/O layer knows — peer addresses, when ranks were lost, the coordinator's own
//! clock and connection count — and cut to fit in one frame.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use dsm_proto::{encode_frame, FrameError, Rank, StatusReport, ToProcess};

use crate::registry::{ConnId, Registry};

/// Milliseconds since the Unix epoch (0 for a clock before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// When each lost rank of a live session was lost (the registry has no clock).
#[derive(Debug, Default)]
pub(crate) struct LossTimes(HashMap<(String, Rank), u64>);

impl LossTimes {
    pub(crate) fn record(&mut self, session: &str, rank: Rank, at_unix_ms: u64) {
        self.0.insert((session.to_string(), rank), at_unix_ms);
    }

    /// The session ended; its name may be reused, so its times must go.
    pub(crate) fn forget(&mut self, session: &str) {
        self.0.retain(|(s, _), _| s != session);
    }
}

/// Everything the I/O layer adds to the registry's snapshot.
pub(crate) struct Context<'a> {
    pub(crate) peers: &'a HashMap<ConnId, SocketAddr>,
    pub(crate) losses: &'a LossTimes,
    pub(crate) started: SystemTime,
    pub(crate) connections: usize,
}

/// The full report, as sent to a status client.
pub(crate) fn report(registry: &Registry, cx: &Context<'_>) -> StatusReport {
    let mut report = registry.status_report(&|conn| cx.peers.get(&conn).map(ToString::to_string));
    report.now_unix_ms = unix_ms(SystemTime::now());
    report.started_unix_ms = unix_ms(cx.started);
    report.connections = u32::try_from(cx.connections).unwrap_or(u32::MAX);
    for s in &mut report.sessions {
        for lost in &mut s.lost {
            lost.at_unix_ms = cx.losses.0.get(&(s.name.clone(), lost.rank)).copied();
        }
    }
    fit_to_frame(&mut report);
    report
}

/// Drops sessions from the end (counting them in `omitted_sessions`) until the answer fits in
/// one frame: a coordinator with thousands of big sessions still answers, never fails to.
fn fit_to_frame(report: &mut StatusReport) {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let msg = ToProcess::Status { req: u64::MAX, report: report.clone() };
        match encode_frame(&msg, &mut buf) {
            Err(FrameError::TooLarge { .. }) if !report.sessions.is_empty() => {
                let cut = (report.sessions.len() / 8).max(1);
                let keep = report.sessions.len() - cut;
                report.sessions.truncate(keep);
                report.omitted_sessions += u32::try_from(cut).unwrap_or(u32::MAX);
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use dsm_proto::{PageTraffic, SessionState, SessionStatus};

    use super::*;

    #[test]
    fn an_oversized_report_is_cut_to_one_frame() {
        let session = |i: usize| SessionStatus {
            name: format!("s{i:05}-{}", "x".repeat(100)),
            state: SessionState::Waiting,
            nprocs: 2,
            attached: 1,
            size: 4096,
            home_bytes: 0,
            members: Vec::new(),
            barriers: 0,
            semaphores: 0,
            semaphore_waits: 0,
            semaphore_posts: 0,
            pages: PageTraffic::default(),
            lost: Vec::new(),
        };
        let mut report = StatusReport { sessions: (0..20_000).map(session).collect(), ..Default::default() };
        fit_to_frame(&mut report);
        assert!(report.omitted_sessions > 0);
        assert_eq!(report.sessions.len() + report.omitted_sessions as usize, 20_000);
        let mut buf = Vec::new();
        encode_frame(&ToProcess::Status { req: 1, report }, &mut buf).expect("fits now");
    }
}
