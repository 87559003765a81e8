//! `dsm run`'s view of its session through the coordinator's status report: which of the
//! processes it launched have joined, and which DSM rank each got (ranks follow attach order,
//! so only the coordinator knows them).
//!
//! A member is matched to a launched process by the pid in the label the runtime attaches with
//! (`pid N (program)`): directly, or through its process group when the launched program is a
//! wrapper (a shell script) and the DSM process its child. A process that never attached, or
//! whose label says nothing, simply has no known rank.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use dsm_coordinator::StatusClient;
use dsm_proto::{Rank, SessionState, SessionStatus};

/// How long one look at the coordinator may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The session as last seen.
#[derive(Debug, Default)]
struct Seen {
    state: Option<SessionState>,
    attached: u32,
    nprocs: u32,
    /// Launch index → rank, once the session runs.
    ranks: HashMap<usize, Rank>,
    /// Launch indices seen among the members.
    joined: Vec<usize>,
}

/// Follows one session at one coordinator.
pub struct Watch {
    rt: tokio::runtime::Runtime,
    client: Option<StatusClient>,
    addr: String,
    cert_dir: PathBuf,
    /// The name to expect in the coordinator's certificate, as the processes do.
    server_name: Option<String>,
    session: String,
    seen: Seen,
    /// Why the last look failed, if it did.
    error: Option<String>,
}

impl Watch {
    /// A watch of `session` at `addr`; nothing is asked until [`Watch::refresh`].
    pub fn new(addr: &str, cert_dir: PathBuf, session: &str) -> anyhow::Result<Watch> {
        // One worker thread drives the QUIC connection between looks (keep-alives), so it does
        // not time out while `dsm run` waits for its processes.
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        Ok(Watch {
            rt,
            client: None,
            addr: addr.to_string(),
            cert_dir,
            server_name: std::env::var("DSM_SERVER_NAME").ok().filter(|n| !n.is_empty()),
            session: session.to_string(),
            seen: Seen::default(),
            error: None,
        })
    }

    /// Asks the coordinator once; `pids` are the launched processes by launch index.
    pub fn refresh(&mut self, pids: &[u32]) {
        let result = self.rt.block_on(async {
            if self.client.is_none() {
                let name = self.server_name.as_deref();
                let c = StatusClient::connect(&self.addr, &self.cert_dir, name, QUERY_TIMEOUT).await?;
                self.client = Some(c);
            }
            match self.client.as_mut() {
                Some(c) => c.status().await,
                None => unreachable!("connected above"),
            }
        });
        match result {
            Ok(report) => {
                self.error = None;
                match report.sessions.iter().find(|s| s.name == self.session) {
                    Some(s) => self.seen = seen(s, pids),
                    // Not there (yet, or any more): keep what we knew about ranks.
                    None => {
                        self.seen.state = None;
                        self.seen.attached = 0;
                        self.seen.joined.clear();
                    }
                }
            }
            Err(e) => {
                // Reconnect next time.
                self.client = None;
                self.error = Some(e.to_string());
            }
        }
    }

    /// Whether the session was seen running (ranks are then final).
    pub fn started(&self) -> bool {
        !self.seen.ranks.is_empty() || self.seen.state == Some(SessionState::Running)
    }

    /// Why the last look failed, if it did.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// "DSM rank R (launch index I, pid P)", or why there is no rank.
    pub fn describe(&self, launch: usize, pid: u32) -> String {
        match self.seen.ranks.get(&launch) {
            Some(rank) => format!("with DSM rank {rank} (launch index {launch}, pid {pid})"),
            None => {
                let why = match (&self.error, self.started()) {
                    (Some(e), _) => format!("DSM rank unknown: cannot ask the coordinator: {e}"),
                    (None, true) => "no DSM rank: it was not a member when the session started".to_string(),
                    (None, false) => "no DSM rank: the session had not started".to_string(),
                };
                format!("at launch index {launch} (pid {pid}; {why})")
            }
        }
    }

    /// What `dsm run` prints while processes are missing at attach.
    pub fn waiting_report(&self, pids: &[u32]) -> String {
        if let Some(e) = &self.error {
            return format!("still waiting for the session to start; cannot ask the coordinator which processes joined: {e}");
        }
        let missing: Vec<String> = (0..pids.len())
            .filter(|i| !self.seen.joined.contains(i))
            .map(|i| format!("launch index {i} (pid {})", pids[i]))
            .collect();
        let joined = match self.seen.state {
            None => format!("no process has joined session '{}' yet", self.session),
            Some(_) => format!("{} of {} processes joined session '{}'", self.seen.attached, self.seen.nprocs, self.session),
        };
        if missing.is_empty() {
            format!("still waiting at attach: {joined}")
        } else {
            format!("still waiting at attach: {joined}; not joined yet: {}", missing.join(", "))
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Politely, so the coordinator does not wait for an idle timeout to notice.
        if let Some(c) = self.client.take() {
            self.rt.block_on(c.close());
        }
    }
}

fn seen(s: &SessionStatus, pids: &[u32]) -> Seen {
    let mut out = Seen { state: Some(s.state), attached: s.attached, nprocs: s.nprocs, ..Seen::default() };
    for m in &s.members {
        let Some(launch) = label_pid(&m.label).and_then(|pid| launch_index(pid, pids)) else { continue };
        out.joined.push(launch);
        if let (SessionState::Running, Some(rank)) = (s.state, m.rank) {
            out.ranks.insert(launch, rank);
        }
    }
    out
}

/// The pid in a runtime label `pid N (program)`.
fn label_pid(label: &str) -> Option<u32> {
    label.strip_prefix("pid ")?.split_whitespace().next()?.parse().ok()
}

/// Which launched process `pid` is: itself, or a process in its process group (each launched
/// process leads its own group).
fn launch_index(pid: u32, pids: &[u32]) -> Option<usize> {
    if let Some(i) = pids.iter().position(|p| *p == pid) {
        return Some(i);
    }
    let group = process_group(pid)?;
    pids.iter().position(|p| *p == group)
}

fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_process_groups() {
        assert_eq!(label_pid("pid 1234 (./pi)"), Some(1234));
        assert_eq!(label_pid("something else"), None);
        let me = std::process::id();
        assert_eq!(launch_index(me, &[1, me]), Some(1));
        // Our own process group is led by whoever started the test runner, not by pid 1.
        let group = process_group(me).expect("/proc/self/stat");
        assert_eq!(launch_index(me, &[group]), Some(0));
    }
}
