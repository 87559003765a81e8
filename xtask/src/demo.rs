//! `cargo xtask demo`: builds the coordinator and the examples in release mode, starts a
//! coordinator on a free local port with dev certificates in `target/demo-certs`, runs every
//! example with 4 processes, and prints a summary table.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;

use crate::procs::{run_group, start_coordinator};
use crate::{cargo, prereq, root, run_cmd};

/// Build and run every example (4 processes each) against a fresh local coordinator, and print
/// each one's result, correctness, wall time and pages moved. Exits non-zero if any is incorrect.
#[derive(clap::Args)]
pub struct Args {
    /// Processes per example.
    #[arg(long, default_value_t = 4)]
    nprocs: u32,
    /// Only run examples whose name contains this.
    filter: Option<String>,
    /// Skip `cargo build` (use the binaries already in target/release).
    #[arg(long)]
    no_build: bool,
    /// Per-example timeout in seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

struct Example {
    name: &'static str,
    args: &'static [&'static str],
    size: &'static str,
}

const EXAMPLES: &[Example] = &[
    Example { name: "pingpong", args: &["--rounds", "1000"], size: "1MiB" },
    Example { name: "pingpong-sem", args: &["--rounds", "1000"], size: "1MiB" },
    Example { name: "pi", args: &[], size: "1MiB" },
    Example { name: "primes", args: &[], size: "1MiB" },
    Example { name: "counter", args: &[], size: "1MiB" },
    Example { name: "contrast", args: &["--generate", "640x480"], size: "4MiB" },
];

struct Outcome {
    name: &'static str,
    result: String,
    correct: bool,
    wall: Duration,
    pages: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    prereq::ensure()?;
    let root = root();
    let certs = root.join("target/demo-certs");
    if dsm_cert::ensure(&certs, &[])? {
        println!("created dev certificates in {}", certs.display());
    }
    if !args.no_build {
        let mut cmd = cargo();
        cmd.args(["build", "--release", "-p", "dsm-coordinator", "-p", "dsm-examples"]);
        run_cmd(&mut cmd)?;
    }
    let release = root.join("target/release");
    let out_dir = root.join("target/demo");
    std::fs::create_dir_all(&out_dir)?;

    let (coordinator, addr) = start_coordinator(&release, &certs)?;
    println!("coordinator listening on {addr} (pid {})", coordinator.0.id());

    let mut outcomes = Vec::new();
    for ex in EXAMPLES {
        if args.filter.as_deref().is_some_and(|f| !ex.name.contains(f)) {
            continue;
        }
        let mut extra: Vec<String> = ex.args.iter().map(|s| s.to_string()).collect();
        if ex.name == "contrast" {
            extra.push("--output".into());
            extra.push(out_dir.join("contrast.pgm").display().to_string());
        }
        print!("running {:<13} ", ex.name);
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let o = run_example(&release, ex, &extra, &addr, &certs, args.nprocs, args.timeout);
        let o = o.unwrap_or_else(|e| Outcome {
            name: ex.name,
            result: format!("FAILED: {e:#}"),
            correct: false,
            wall: Duration::ZERO,
            pages: "-".into(),
        });
        println!("{} in {:.2}s", if o.correct { "ok" } else { "FAILED" }, o.wall.as_secs_f64());
        outcomes.push(o);
    }
    drop(coordinator);

    println!();
    println!("{:<13} {:<8} {:>8}  {:<26} result", "example", "correct", "wall", "pages (rank 0)");
    for o in &outcomes {
        println!(
            "{:<13} {:<8} {:>7.2}s  {:<26} {}",
            o.name,
            o.correct,
            o.wall.as_secs_f64(),
            o.pages,
            o.result
        );
    }
    let failed: Vec<&str> = outcomes.iter().filter(|o| !o.correct).map(|o| o.name).collect();
    if !failed.is_empty() {
        bail!("incorrect or failed: {}", failed.join(", "));
    }
    println!("\nall {} examples correct", outcomes.len());
    Ok(())
}

/// Runs one example with `nprocs` processes; rank 0's `result:` and `pages:` lines make the
/// outcome.
fn run_example(
    release: &Path,
    ex: &Example,
    extra: &[String],
    addr: &str,
    certs: &Path,
    nprocs: u32,
    timeout: u64,
) -> anyhow::Result<Outcome> {
    let bin: PathBuf = release.join(ex.name);
    let env = [
        ("DSM_COORDINATOR", addr.to_string()),
        ("DSM_CERT_DIR", certs.display().to_string()),
        ("DSM_SESSION", format!("demo-{}", ex.name)),
        ("DSM_NPROCS", nprocs.to_string()),
        ("DSM_SIZE", ex.size.to_string()),
    ];
    let (finished, wall) = run_group(&bin, extra, &env, nprocs, Duration::from_secs(timeout))?;
    let line = |prefix: &str| {
        finished.iter().find_map(|f| f.stdout.lines().find_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_string())))
    };
    let result = line("result:");
    let pages = line("pages:").unwrap_or_else(|| "-".into());
    let failures: Vec<String> = finished
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.status.success())
        .map(|(i, f)| {
            let last = f.stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
            format!("process {i} exited with {}: {last}", f.status)
        })
        .collect();
    let Some(result) = result else {
        bail!("no result line; {}", failures.join("; "));
    };
    let correct = failures.is_empty() && result.split_whitespace().any(|kv| kv == "correct=true");
    let result = if failures.is_empty() { result } else { format!("{result} [{}]", failures.join("; ")) };
    Ok(Outcome { name: ex.name, result, correct, wall, pages })
}
