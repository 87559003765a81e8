//! `cargo xtask itest`: the multi-process suites (litmus, counter, bulk, ping-pong, barriers,
//! semaphores) against a real coordinator process, optionally through the lossy relay, with a
//! pass/fail table. `cargo xtask test` runs the same worker scenarios through `cargo test`.

use std::time::{Duration, Instant};

use dsm_proto::units::parse_duration;

use crate::procs::{run_group, start_coordinator};
use crate::{cargo, prereq, root, run_cmd};

/// Run the multi-process suites against a coordinator process (release build) and print a
/// pass/fail table. With --loss/--delay/--jitter/--reorder/--duplicate, every process talks to
/// the coordinator through the lossy UDP relay.
#[derive(clap::Args)]
pub struct Args {
    /// Processes for the counter, bulk, ping-pong and barrier suites (litmus tests use the
    /// count each test needs).
    #[arg(long, default_value_t = 4)]
    procs: u32,
    /// Rounds per litmus test (default 2000, or 100 through a lossy link).
    #[arg(long)]
    iterations: Option<usize>,
    /// The lossy link between the processes and the coordinator (none by default).
    #[command(flatten)]
    link: crate::relay::LinkArgs,
    /// Only suites whose name contains this.
    filter: Option<String>,
    /// Per-suite timeout.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    timeout: Duration,
}

struct Suite {
    name: String,
    args: Vec<String>,
    procs: u32,
    size: u64,
}

fn litmus_size(iterations: usize, procs: u32) -> u64 {
    ((1 + iterations * 4) * 4096 + iterations * procs as usize * 16 + 8192) as u64
}

pub fn run(a: Args) -> anyhow::Result<()> {
    prereq::ensure()?;
    let link = a.link.link()?;
    let lossy = !link.is_passthrough();
    let iterations = a.iterations.unwrap_or(if lossy { 100 } else { 2000 });
    let n = a.procs;
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut suites = Vec::new();
    for (t, p) in [("SB", 2), ("MP", 2), ("LB", 2), ("2+2W", 2), ("CoRR", 2), ("IRIW", 4)] {
        suites.push(Suite {
            name: format!("litmus {t}"),
            args: s(&["litmus", "--test", t, "--iterations", &iterations.to_string()]),
            procs: p,
            size: litmus_size(iterations, p),
        });
    }
    suites.push(Suite { name: "counter".into(), args: s(&["counter", "--adds", "10000"]), procs: n, size: 4096 });
    suites.push(Suite { name: "bulk 64MiB".into(), args: s(&["bulk", "--mib", "64"]), procs: n, size: 64 << 20 });
    suites.push(Suite { name: "ping-pong (busy-wait)".into(), args: s(&["spin-pingpong", "--rounds", "1000"]), procs: n, size: 4096 });
    suites.push(Suite { name: "threads".into(), args: s(&["threads"]), procs: n, size: 1 << 20 });
    suites.push(Suite { name: "barrier x200".into(), args: s(&["barrier", "--rounds", "200"]), procs: n, size: 4096 });
    suites.push(Suite { name: "semaphore ping-pong".into(), args: s(&["sem-pingpong", "--rounds", "1000"]), procs: 2, size: 4096 });
    suites.retain(|x| a.filter.as_deref().is_none_or(|f| x.name.contains(f)));

    let root = root();
    run_cmd(cargo().args(["build", "--release", "-p", "dsm-coordinator", "-p", "dsm-tests", "--bins"]))?;
    let certs = root.join("target/itest-certs");
    dsm_cert::ensure(&certs, &[])?;
    let release = root.join("target/release");
    let (coordinator, addr) = start_coordinator(&release, &certs)?;
    let relay = if lossy {
        let r = dsm_relay::spawn(dsm_relay::RelayConfig {
            listen: "127.0.0.1:0".parse()?,
            to: addr.parse()?,
            link: link.clone(),
        })?;
        println!("coordinator on {addr}, processes connect through the relay on {} ({link:?})", r.local_addr());
        Some(r)
    } else {
        println!("coordinator on {addr}");
        None
    };
    let target = relay.as_ref().map_or(addr.clone(), |r| r.local_addr().to_string());
    let worker = release.join("dsm-worker");
    let mut rows = Vec::new();
    let started = Instant::now();
    for (i, suite) in suites.iter().enumerate() {
        print!("{:<24} ", suite.name);
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let env = [
            ("DSM_COORDINATOR", target.clone()),
            ("DSM_CERT_DIR", certs.display().to_string()),
            ("DSM_SESSION", format!("itest-{i}-{}", std::process::id())),
            ("DSM_NPROCS", suite.procs.to_string()),
            ("DSM_SIZE", suite.size.to_string()),
            ("DSM_ATTACH_TIMEOUT", "120s".to_string()),
        ];
        let (pass, detail, wall) = match run_group(&worker, &suite.args, &env, suite.procs, a.timeout) {
            Ok((finished, wall)) => {
                let failed: Vec<String> = finished
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| !f.status.success())
                    .map(|(r, f)| {
                        let last = f.stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
                        format!("process {r}: {} {last}", f.status)
                    })
                    .collect();
                let note = finished
                    .iter()
                    .find_map(|f| f.stdout.lines().find(|l| l.starts_with("litmus ")).map(str::to_string))
                    .unwrap_or_default();
                (failed.is_empty(), if failed.is_empty() { note } else { failed.join("; ") }, wall)
            }
            Err(e) => (false, format!("{e:#}"), Duration::ZERO),
        };
        println!("{} ({:.1}s)", if pass { "pass" } else { "FAIL" }, wall.as_secs_f64());
        rows.push((suite.name.clone(), suite.procs, pass, wall, detail));
    }
    drop(relay);
    drop(coordinator);
    println!("\n{:<24} {:>5}  {:<6} {:>8}  detail", "suite", "procs", "result", "wall");
    for (name, procs, pass, wall, detail) in &rows {
        let detail: String = detail.chars().take(150).collect();
        println!("{name:<24} {procs:>5}  {:<6} {:>7.1}s  {detail}", if *pass { "pass" } else { "FAIL" }, wall.as_secs_f64());
    }
    let failed = rows.iter().filter(|r| !r.2).count();
    println!("\n{} passed, {} failed in {:.0}s", rows.len() - failed, failed, started.elapsed().as_secs_f64());
    anyhow::ensure!(failed == 0, "{failed} suite(s) failed");
    Ok(())
}
