//! A real `dsm-coordinator` process (the binary users install, not the library), with its
//! stderr redirected to a file: for tests of what operators see (logs, metrics, `dsm status`),
//! and for running it inside a network namespace.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::built_binary;

/// A coordinator process, killed on drop.
pub struct CoordinatorProcess {
    child: Child,
    /// Where its stderr (its log) goes.
    pub log: PathBuf,
    /// The QUIC address it listens on, read from its log.
    pub addr: SocketAddr,
    /// The `/metrics` address, if it serves one.
    pub metrics: Option<SocketAddr>,
}

impl CoordinatorProcess {
    /// Starts `prefix... dsm-coordinator args...` (a prefix such as `ip netns exec NS` runs it
    /// elsewhere) with stderr to `log`, and waits until its log names the addresses it bound
    /// (`--listen HOST:0` and `--metrics HOST:0` pick free ports).
    pub fn start(prefix: &[&str], args: &[&str], log: &Path) -> CoordinatorProcess {
        let exe = built_binary("dsm-coordinator");
        let file = std::fs::File::create(log).expect("create the log file");
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        // Info level whatever the caller's RUST_LOG says: tests read these lines.
        cmd.args(args).env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let mut this = CoordinatorProcess { child, log: log.to_path_buf(), addr: "0.0.0.0:0".parse().unwrap(), metrics: None };
        let wants_metrics = args.contains(&"--metrics");
        let text = this.wait_log(Duration::from_secs(30), |t| {
            t.contains("listening addr=") && (!wants_metrics || t.contains("serving Prometheus metrics"))
        });
        this.addr = field(&text, "listening addr=").parse().expect("a socket address after `listening addr=`");
        if wants_metrics {
            let url = field(&text, "url=http://");
            this.metrics = Some(url.trim_end_matches("/metrics").parse().expect("a socket address in the metrics url"));
        }
        this
    }

    /// Its process id (to signal it: `crate::signal(pid, "KILL")`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Waits until the log satisfies `pred` (polling the file), returning it; panics with the
    /// log after `timeout` or if the process exits first.
    pub fn wait_log(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log_text();
            if pred(&text) {
                return text;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the coordinator exited ({status}) before its log showed what was expected:\n{text}");
            }
            assert!(Instant::now() < deadline, "the coordinator's log never showed what was expected:\n{text}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, wait for the exit (SIGKILL after 10 s), and return the whole log.
    pub fn stop(mut self) -> String {
        // Our own child, not yet reaped: its pid cannot have been reused.
        crate::signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log_text()
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The word following `key` in `text` (up to a space or the end of the line).
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    let at = text.find(key).unwrap_or_else(|| panic!("no `{key}` in:\n{text}")) + key.len();
    let rest = &text[at..];
    let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
    &rest[..end]
}
