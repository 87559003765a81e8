//! `cargo xtask demo`: builds the coordinator and the examples in release mode, starts a
//! coordinator on a free local port with dev certificates in `target/demo-certs`, runs every
//! example with 4 processes, and prints a summary table.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

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

/// Child processes killed (and reaped) when dropped, on success and error paths alike.
#[derive(Default)]
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// The coordinator: sent SIGTERM when dropped, then killed if it lingers.
struct Coordinator(Child);

impl Drop for Coordinator {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

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

/// Starts the coordinator on a free UDP port and waits (10 s at most) for its "listening" line.
fn start_coordinator(release: &Path, certs: &Path) -> anyhow::Result<(Coordinator, String)> {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let bin = release.join("dsm-coordinator");
    let mut child = Command::new(&bin)
        .args(["--listen", &addr, "--cert-dir"])
        .arg(certs)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stderr = child.stderr.take().expect("piped");
    let coordinator = Coordinator(child);
    let (tx, rx) = mpsc::channel();
    // Reads the coordinator's log for as long as it runs (so it never blocks on a full pipe),
    // reporting the "listening" line, and keeping the rest for an error message.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(t) = &tx {
                if line.contains("listening") {
                    let _ = t.send(Ok(()));
                    tx = None;
                } else {
                    seen.push_str(&line);
                    seen.push('\n');
                }
            }
        }
        if let Some(t) = tx {
            let _ = t.send(Err(seen));
        }
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => Ok((coordinator, addr)),
        Ok(Err(log)) => bail!("the coordinator exited before listening:\n{log}"),
        Err(_) => bail!("the coordinator did not report \"listening\" within 10 s"),
    }
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
    let start = Instant::now();
    let mut procs = Procs::default();
    let mut readers = Vec::new();
    for _ in 0..nprocs {
        let mut child = Command::new(&bin)
            .args(extra)
            .env("DSM_COORDINATOR", addr)
            .env("DSM_CERT_DIR", certs)
            .env("DSM_SESSION", format!("demo-{}", ex.name))
            .env("DSM_NPROCS", nprocs.to_string())
            .env("DSM_SIZE", ex.size)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let (mut out, mut err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
        readers.push((
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = out.read_to_string(&mut s);
                s
            }),
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = err.read_to_string(&mut s);
                s
            }),
        ));
        procs.0.push(child);
    }
    let deadline = start + Duration::from_secs(timeout);
    let mut statuses = vec![None; procs.0.len()];
    while statuses.iter().any(Option::is_none) {
        for (c, s) in procs.0.iter_mut().zip(&mut statuses) {
            if s.is_none() {
                *s = c.try_wait()?;
            }
        }
        if Instant::now() > deadline {
            drop(procs); // kills the rest
            bail!("timed out after {timeout} s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let wall = start.elapsed();
    let outputs: Vec<(String, String)> =
        readers.into_iter().map(|(o, e)| (o.join().unwrap_or_default(), e.join().unwrap_or_default())).collect();
    let line = |prefix: &str| {
        outputs.iter().find_map(|(o, _)| o.lines().find_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_string())))
    };
    let result = line("result:");
    let pages = line("pages:").unwrap_or_else(|| "-".into());
    let failures: Vec<String> = statuses
        .iter()
        .zip(&outputs)
        .enumerate()
        .filter(|(_, (s, _))| !s.is_some_and(|s| s.success()))
        .map(|(i, (s, (_, e)))| {
            let last = e.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
            format!("process {i} exited with {}: {last}", s.map(|s| s.to_string()).unwrap_or_default())
        })
        .collect();
    let Some(result) = result else {
        bail!("no result line; {}", failures.join("; "));
    };
    let correct = failures.is_empty() && result.split_whitespace().any(|kv| kv == "correct=true");
    let result = if failures.is_empty() { result } else { format!("{result} [{}]", failures.join("; ")) };
    Ok(Outcome { name: ex.name, result, correct, wall, pages })
}
