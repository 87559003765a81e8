//! `dsm status`: asks a running coordinator for its sessions over mutual-TLS QUIC
//! (`dsm_coordinator::StatusClient`) and prints them as a table, or as JSON with `--json`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use dsm_proto::units::parse_duration;
use dsm_proto::{SessionState, StatusReport};

pub const HELP: &str = "\
Prints one block per session: name, state, processes attached/expected, region size, home-copy
bytes the coordinator holds, pages and bytes it sent, barriers, semaphore waits/posts, then each
process (rank, state, address, pid and program) and every lost rank with its reason and time.
A CA-signed client certificate is needed, as for processes (ca.pem, client.pem, client.key in
--cert-dir). Exits 1 with a message when the coordinator cannot be reached or refuses us.

Examples:
  dsm status                                   # the coordinator at $DSM_COORDINATOR, else 127.0.0.1:4200
  dsm status --coordinator 10.0.0.5:4200
  dsm status --json | jq '.sessions[] | {name, state, attached}'";

/// Options of `dsm status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Coordinator address (host:port).
    #[arg(long, env = "DSM_COORDINATOR", default_value = "127.0.0.1:4200")]
    coordinator: String,
    /// Certificate directory (ca.pem, client.pem, client.key) [default: ~/.config/dsm/certs].
    #[arg(long, env = "DSM_CERT_DIR")]
    cert_dir: Option<PathBuf>,
    /// Name to expect in the coordinator's certificate [default: the host part of --coordinator].
    #[arg(long, env = "DSM_SERVER_NAME")]
    server_name: Option<String>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Give up on an unreachable coordinator after this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let cert_dir = args.cert_dir.clone().unwrap_or_else(dsm_cert::default_dir);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")?;
    let report = rt.block_on(async {
        let mut client = dsm_coordinator::StatusClient::connect(
            &args.coordinator,
            &cert_dir,
            args.server_name.as_deref(),
            args.timeout,
        )
        .await?;
        let report = client.status().await?;
        client.close().await;
        anyhow::Ok(report)
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).context("encoding the report as JSON")?);
    } else {
        print!("{}", render(&args.coordinator, &report));
    }
    Ok(0)
}

/// The report as the table `dsm status` prints.
fn render(addr: &str, r: &StatusReport) -> String {
    let mut out = String::new();
    let up = Duration::from_millis(r.now_unix_ms.saturating_sub(r.started_unix_ms));
    let _ = writeln!(
        out,
        "coordinator {addr}: dsm-coordinator {}, up {}, {} connection{}, {} session{}",
        clean(&r.version),
        age(up),
        r.connections,
        plural(u64::from(r.connections)),
        r.sessions.len(),
        plural(r.sessions.len() as u64)
    );
    if r.omitted_sessions > 0 {
        let _ = writeln!(out, "({} more sessions left out: the report would not fit in one message)", r.omitted_sessions);
    }
    if r.sessions.is_empty() {
        return out;
    }
    let header = ["SESSION", "STATE", "PROCS", "SIZE", "HOME", "PAGES SENT", "BYTES SENT", "BARRIERS", "SEM WAIT/POST", "LOST"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(ToString::to_string).collect()];
    for s in &r.sessions {
        rows.push(vec![
            clean(&s.name),
            s.state.to_string(),
            format!("{}/{}", s.attached, s.nprocs),
            bytes(s.size),
            bytes(s.home_bytes),
            s.pages.pages_sent.to_string(),
            bytes(s.pages.bytes_sent),
            s.barriers.to_string(),
            format!("{}/{}", s.semaphore_waits, s.semaphore_posts),
            s.lost.len().to_string(),
        ]);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ", w = widths[i]);
            }
        }
        l
    };
    let _ = writeln!(out, "\n{}", line(&rows[0]));
    for (s, row) in r.sessions.iter().zip(&rows[1..]) {
        let _ = writeln!(out, "{}", line(row));
        for m in &s.members {
            let who = match (s.state, m.rank) {
                (SessionState::Running, Some(rank)) => format!("rank {rank}"),
                _ => "joined".to_string(),
            };
            let peer = m.peer.as_deref().unwrap_or("-");
            let _ = writeln!(out, "    {who:<9} {:<9} {peer:<22} {}", m.state.to_string(), clean(&m.label));
        }
        for lost in &s.lost {
            let when = match lost.at_unix_ms {
                Some(at) => format!(
                    " {} ago ({})",
                    age(Duration::from_millis(r.now_unix_ms.saturating_sub(at))),
                    utc(at)
                ),
                None => String::new(),
            };
            let _ = writeln!(out, "    lost rank {}{when}: {}", lost.rank, clean(&lost.reason));
        }
    }
    out
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Text a client chose, made safe for a terminal: control characters become `?`.
fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// `512B`, `4.0KiB`, `64.0MiB`, ...
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

/// `45s`, `12m05s`, `3h02m`, `2d04h`.
fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// `2026-05-01 08:12:03 UTC` for milliseconds since the Unix epoch.
fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, (rem % 3600) / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use dsm_proto::{LostRank, MemberState, MemberStatus, PageTraffic, SessionStatus};

    use super::*;

    #[test]
    fn units_and_times() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(4096), "4.0KiB");
        assert_eq!(bytes(64 << 20), "64.0MiB");
        assert_eq!(age(Duration::from_secs(125)), "2m05s");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_825_600_000), "2000-02-29 12:00:00 UTC");
        assert_eq!(clean("a\u{1b}[31mb"), "a?[31mb");
    }

    #[test]
    fn the_table_names_sessions_members_and_losses() {
        let report = StatusReport {
            version: "0.1.0".into(),
            now_unix_ms: 10_000,
            started_unix_ms: 4_000,
            connections: 2,
            sessions: vec![SessionStatus {
                name: "pi".into(),
                state: SessionState::Running,
                nprocs: 2,
                attached: 1,
                size: 1 << 20,
                home_bytes: 4096,
                members: vec![
                    MemberStatus { rank: Some(0), state: MemberState::Active, label: "pid 5 (pi)".into(), peer: Some("198.18.0.2:4000".into()) },
                    MemberStatus { rank: Some(1), state: MemberState::Lost, label: "pid 6 (pi)".into(), peer: None },
                ],
                barriers: 3,
                semaphores: 1,
                semaphore_waits: 2,
                semaphore_posts: 3,
                pages: PageTraffic { pages_sent: 7, bytes_sent: 7 * 4096, ..PageTraffic::default() },
                lost: vec![LostRank { rank: 1, reason: "went silent".into(), at_unix_ms: Some(8_000) }],
            }],
            omitted_sessions: 0,
        };
        let text = render("198.18.0.1:4200", &report);
        assert!(text.starts_with("coordinator 198.18.0.1:4200: dsm-coordinator 0.1.0, up 6s, 2 connections, 1 session\n"), "{text}");
        let row = text.lines().find(|l| l.starts_with("pi ")).unwrap_or_else(|| panic!("{text}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells, ["pi", "running", "1/2", "1.0MiB", "4.0KiB", "7", "28.0KiB", "3", "2/3", "1"]);
        assert!(text.contains("rank 0    active    198.18.0.2:4000        pid 5 (pi)"), "{text}");
        assert!(text.contains("lost rank 1 2s ago (1970-01-01 00:00:08 UTC): went silent"), "{text}");
    }
}
