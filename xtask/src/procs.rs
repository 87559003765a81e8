//! Processes xtask starts: a coordinator on a free port and groups of DSM processes, all killed
//! and reaped when their guards drop (success and error paths alike).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Child processes killed (and reaped) when dropped, on success and error paths alike.
#[derive(Default)]
pub struct Procs(pub Vec<Child>);

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
pub struct Coordinator(pub Child);

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

/// Starts the coordinator on a free UDP port and waits (10 s at most) for its "listening" line.
pub fn start_coordinator(release: &Path, certs: &Path) -> anyhow::Result<(Coordinator, String)> {
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


/// What one process of a group printed and how it ended.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `nprocs` copies of `bin args` with `env` until all exit (killing them after `timeout`);
/// returns each one's status and output, and the wall time.
pub fn run_group(
    bin: &Path,
    args: &[String],
    env: &[(&str, String)],
    nprocs: u32,
    timeout: Duration,
) -> anyhow::Result<(Vec<Finished>, Duration)> {
    let start = Instant::now();
    let mut procs = Procs::default();
    let mut readers = Vec::new();
    for _ in 0..nprocs {
        let mut child = Command::new(bin)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
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
    let deadline = start + timeout;
    let mut statuses = vec![None; procs.0.len()];
    while statuses.iter().any(Option::is_none) {
        for (c, s) in procs.0.iter_mut().zip(&mut statuses) {
            if s.is_none() {
                *s = c.try_wait()?;
            }
        }
        if Instant::now() > deadline {
            drop(procs); // kills the rest
            bail!("timed out after {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let wall = start.elapsed();
    let finished = statuses
        .into_iter()
        .zip(readers)
        .map(|(s, (o, e))| Finished {
            status: s.expect("all exited"),
            stdout: o.join().unwrap_or_default(),
            stderr: e.join().unwrap_or_default(),
        })
        .collect();
    Ok((finished, wall))
}
