//! Support for the integration tests and the benchmark binary: a coordinator with fresh dev
//! certificates on a free loopback port, configs pointing at it, and worker processes.
//!
//! Tests bind port 0, never sleep to synchronize, and kill the processes they start
//! ([`Workers`] does so on drop).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use dsm_coordinator::CoordinatorThread;

pub mod coordinator_process;
pub mod native;
pub mod netns;
pub mod programs;
pub mod scrape;

/// A coordinator on 127.0.0.1 with its own certificates in a temporary directory.
pub struct TestEnv {
    pub certs: tempfile::TempDir,
    pub coordinator: CoordinatorThread,
}

impl TestEnv {
    /// Default transport (10 s idle timeout).
    pub fn new() -> TestEnv {
        Self::with_transport(dsm_cert::Transport::default())
    }

    /// A short idle timeout, for tests of lost processes.
    pub fn with_idle_timeout(idle: Duration) -> TestEnv {
        let t = dsm_cert::Transport { idle_timeout: idle, keep_alive: idle / 4, ..Default::default() };
        Self::with_transport(t)
    }

    pub fn with_transport(transport: dsm_cert::Transport) -> TestEnv {
        Self::with_config(|c| c.transport = transport)
    }

    /// A coordinator whose config `adjust` changes (e.g. to serve metrics on 127.0.0.1:0).
    pub fn with_config(adjust: impl FnOnce(&mut dsm_coordinator::Config)) -> TestEnv {
        Self::try_with_config("127.0.0.1:0".parse().unwrap(), adjust).expect("start coordinator")
    }

    /// A coordinator listening on `addr` exactly; an error if it cannot (the port is taken).
    pub fn try_at(addr: SocketAddr, transport: dsm_cert::Transport) -> anyhow::Result<TestEnv> {
        Self::try_with_config(addr, |c| c.transport = transport)
    }

    fn try_with_config(addr: SocketAddr, adjust: impl FnOnce(&mut dsm_coordinator::Config)) -> anyhow::Result<TestEnv> {
        let certs = tempfile::tempdir()?;
        dsm_cert::generate(certs.path(), &[])?;
        let mut config = dsm_coordinator::Config::new(addr);
        config.cert_dir = certs.path().to_path_buf();
        adjust(&mut config);
        // As `dsm run`'s private coordinator: it polls as the processes do (`DSM_BUSY_POLL=0s
        // dsm-bench` measures everything without polling; after `adjust`, whose transports are
        // the defaults but for their timers).
        config.busy_poll_from_env().map_err(anyhow::Error::msg)?;
        let coordinator = dsm_coordinator::spawn(config)?;
        Ok(TestEnv { certs, coordinator })
    }

    pub fn addr(&self) -> SocketAddr {
        self.coordinator.local_addr()
    }

    pub fn cert_dir(&self) -> &Path {
        self.certs.path()
    }

    /// A config builder pointing at this coordinator (or at `via`, e.g. a relay).
    pub fn config(&self, session: &str, size: u64, nprocs: u32) -> dsm::ConfigBuilder {
        self.config_via(self.addr(), session, size, nprocs)
    }

    pub fn config_via(&self, addr: SocketAddr, session: &str, size: u64, nprocs: u32) -> dsm::ConfigBuilder {
        dsm::Config::builder()
            .coordinator(addr.to_string())
            .cert_dir(self.cert_dir())
            .session(session)
            .size(size)
            .nprocs(nprocs)
            .attach_timeout(Duration::from_secs(60))
    }

    /// Environment for a worker process of `session` (the `DSM_*` variables).
    pub fn worker_env(&self, addr: SocketAddr, session: &str, size: u64, nprocs: u32) -> Vec<(String, String)> {
        vec![
            ("DSM_COORDINATOR".into(), addr.to_string()),
            ("DSM_CERT_DIR".into(), self.cert_dir().display().to_string()),
            ("DSM_SESSION".into(), session.into()),
            ("DSM_SIZE".into(), size.to_string()),
            ("DSM_NPROCS".into(), nprocs.to_string()),
            ("DSM_ATTACH_TIMEOUT".into(), "60s".into()),
        ]
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// One line a worker printed.
#[derive(Debug, Clone)]
pub struct Line {
    pub worker: usize,
    pub text: String,
    pub stderr: bool,
}

/// Worker processes, killed on drop. Their output lines arrive on one channel.
pub struct Workers {
    pub children: Vec<Child>,
    lines: mpsc::Receiver<Line>,
    tx: mpsc::Sender<Line>,
    pub seen: Vec<Line>,
}

impl Workers {
    /// Starts `n` copies of `exe args` with `env`.
    pub fn spawn(exe: &Path, args: &[&str], env: &[(String, String)], n: usize) -> Workers {
        let (tx, rx) = mpsc::channel();
        let mut w = Workers { children: Vec::new(), lines: rx, tx, seen: Vec::new() };
        for _ in 0..n {
            w.add(exe, args, env);
        }
        w
    }

    /// Starts one more worker, `exe args` with `env` (its lines are numbered after the others).
    pub fn add(&mut self, exe: &Path, args: &[&str], env: &[(String, String)]) {
        let i = self.children.len();
        let mut child = Command::new(exe)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        for (stream, is_err) in [
            (Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, false),
            (Box::new(child.stderr.take().unwrap()), true),
        ] {
            let tx = self.tx.clone();
            std::thread::spawn(move || {
                for text in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(Line { worker: i, text, stderr: is_err });
                }
            });
        }
        self.children.push(child);
    }

    /// Waits for a line matching `pred`, up to `timeout`.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&Line) -> bool) -> Option<Line> {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return Some(l.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = pred(&l);
                    self.seen.push(l.clone());
                    if hit {
                        return Some(l);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Waits for every worker to exit (killing all after `timeout`) and returns their exit codes.
    pub fn wait_all(&mut self, timeout: Duration) -> Vec<Option<i32>> {
        let deadline = Instant::now() + timeout;
        let mut codes = vec![None; self.children.len()];
        let mut done = vec![false; self.children.len()];
        while done.iter().any(|d| !d) && Instant::now() < deadline {
            for (i, c) in self.children.iter_mut().enumerate() {
                if !done[i] {
                    if let Ok(Some(st)) = c.try_wait() {
                        codes[i] = st.code();
                        done[i] = true;
                    }
                }
            }
            // Drain output meanwhile so the pipes never fill up.
            while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(20)) {
                self.seen.push(l);
            }
        }
        for (i, c) in self.children.iter_mut().enumerate() {
            if !done[i] {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // Collect what remains of the output.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(l);
        }
        codes
    }

    /// `replayed_writes: N` of every stats line (a `RegionStats` debug dump) containing `marker`.
    pub fn replayed_writes(&self, marker: &str) -> Vec<u64> {
        self.seen
            .iter()
            .filter(|l| l.text.contains(marker) && l.text.contains("replayed_writes"))
            .map(|l| {
                let rest = &l.text[l.text.find("replayed_writes: ").unwrap() + "replayed_writes: ".len()..];
                rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())].parse().unwrap()
            })
            .collect()
    }

    /// Everything printed so far, for assertion messages.
    pub fn transcript(&self) -> String {
        self.seen
            .iter()
            .map(|l| format!("[{}{}] {}", l.worker, if l.stderr { " err" } else { "" }, l.text))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `n` workers to completion and asserts they all exit 0; returns their output.
pub fn run_workers(exe: &Path, args: &[&str], env: &[(String, String)], n: usize, timeout: Duration) -> Workers {
    let mut w = Workers::spawn(exe, args, env, n);
    let codes = w.wait_all(timeout);
    assert!(
        codes.iter().all(|c| *c == Some(0)),
        "workers {args:?} exited with {codes:?}:\n{}",
        w.transcript()
    );
    w
}

/// A lossy relay as the tests specify: 5% loss, 10 ms ± 5 ms, 1% reorder, 1% duplicates.
pub fn lossy_relay(to: SocketAddr, seed: u64) -> dsm_relay::RelayThread {
    dsm_relay::spawn(dsm_relay::RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        to,
        link: dsm_relay::LinkConfig {
            loss: 0.05,
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(5),
            reorder: 0.01,
            duplicate: 0.01,
            seed,
            ..dsm_relay::LinkConfig::default()
        },
    })
    .expect("start relay")
}

/// A unique session name for a test.
pub fn session_name(test: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{test}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Sends signal `name` (`TERM`, `STOP`, `CONT`, ...) to `pid` with kill(1); whether it was
/// delivered.
pub fn signal(pid: u32, name: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// [`sibling_binary`], checked to exist (with what to do if not).
pub fn built_binary(name: &str) -> PathBuf {
    let path = sibling_binary(name);
    assert!(
        path.is_file(),
        "{} is not built; build the workspace's binaries first (`cargo build --workspace`, which `cargo xtask test` does)",
        path.display()
    );
    path
}

/// Path of a binary built next to the test executable (for binaries of other packages, such as
/// the coordinator, which `cargo test --workspace` builds too).
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| if d.ends_with("deps") { d.parent() } else { Some(d) }).unwrap();
    dir.join(name)
}
