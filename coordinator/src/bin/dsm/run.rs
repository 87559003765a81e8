//! `dsm run -n N -- PROGRAM ARGS...`: starts N processes of one session, like `mpirun`, with a
//! private coordinator unless `--coordinator` names one, and waits for them all. While they
//! attach and when one fails it asks the coordinator (`watch.rs`) which processes joined and
//! which DSM rank each got.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dsm_proto::units::{parse_duration, parse_size};
use dsm_proto::MAX_PROCESSES;

use crate::watch::Watch;

pub const HELP: &str = "\
Each process gets DSM_COORDINATOR, DSM_SESSION, DSM_NPROCS, DSM_RANK (0..N-1, launch order;
informational: global ids are assigned by the coordinator in attach order), DSM_SIZE and
DSM_CERT_DIR, which dsm::Region::from_env() and dsm_init() with a NULL config read. Each output
line is prefixed with [launch index]. After a second at attach, dsm run says which processes
have not joined yet. If a process fails, dsm run names it by DSM rank and launch index and says
how it ended, stops the others (SIGTERM, then SIGKILL after --grace) and exits non-zero; Ctrl-C
stops everything. A session holds at most 1024 processes.

Without --coordinator, a private coordinator runs inside dsm run on a free loopback port, with the
certificates of --cert-dir (or $DSM_CERT_DIR, ~/.config/dsm/certs) when they include the
coordinator's, else with fresh dev certificates in a temporary directory. It logs only errors;
RUST_LOG=dsm_coordinator=info shows its whole log.

Examples:
  dsm run -n 4 -- ./target/release/pi --steps 100000000
  dsm run -n 4 --size 16MiB -- ./contrast
  dsm run -n 8 --coordinator 10.0.0.5:4200 --session sim --cert-dir /etc/dsm/certs -- ./sim in.dat
  # one session over two machines, 4 processes each (run on both):
  dsm run -n 4 --total 8 --coordinator 10.0.0.5:4200 --session sim --size 1GiB -- ./sim
  mpirun -n 4 env DSM_COORDINATOR=10.0.0.5:4200 DSM_SESSION=sim DSM_SIZE=1GiB ./sim   # also works";

/// Options of `dsm run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Number of processes to start here.
    #[arg(short = 'n', long = "nprocs", value_parser = clap::value_parser!(u32).range(1..))]
    nprocs: u32,
    /// Processes in the whole session, when dsm run on other machines starts the rest (needs
    /// --coordinator and --session) [default: N].
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u32).range(1..))]
    total: Option<u32>,
    /// Coordinator address (host:port); default: a private coordinator on a free loopback port.
    #[arg(long, env = "DSM_COORDINATOR")]
    coordinator: Option<String>,
    /// Session name; default: a unique name.
    #[arg(long)]
    session: Option<String>,
    /// Region size: bytes or with a unit (64KiB, 16MiB, 1GiB).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    size: u64,
    /// Certificate directory (ca.pem, client.pem, client.key; coordinator.* for a private one).
    #[arg(long, env = "DSM_CERT_DIR")]
    cert_dir: Option<PathBuf>,
    /// How long stopped processes get between SIGTERM and SIGKILL.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    grace: Duration,
    /// The program and its arguments.
    #[arg(required = true, last = true, value_name = "PROGRAM ARGS")]
    command: Vec<String>,
}

/// How often the session is looked at while its processes attach.
const ATTACH_POLL: Duration = Duration::from_millis(50);
/// After this long at attach, say which processes have not joined; then again this often.
const FIRST_WAITING_REPORT: Duration = Duration::from_secs(1);
const WAITING_REPORT_EVERY: Duration = Duration::from_secs(10);

/// The signal that asked us to stop (0: none yet).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
}

fn install_signal_handlers() -> anyhow::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `on_signal` is an `extern "C" fn(c_int)` that only stores to an atomic, which
        // is async-signal-safe; sigaction is given a fully initialized struct.
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        anyhow::ensure!(r == 0, "cannot install a signal handler: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Fresh dev certificates in a temporary directory, removed on drop.
struct TempCerts(PathBuf);

impl Drop for TempCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn has_coordinator_certs(dir: &Path) -> bool {
    [
        dsm_cert::CA_CERT,
        dsm_cert::COORDINATOR_CERT,
        dsm_cert::COORDINATOR_KEY,
        dsm_cert::CLIENT_CERT,
        dsm_cert::CLIENT_KEY,
    ]
    .iter()
    .all(|f| dir.join(f).is_file())
}

fn unique_session() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("run-{}-{nanos:09}", std::process::id())
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}{}", signal_name(s).map(|n| format!(" ({n})")).unwrap_or_default()),
        _ => format!("ended with {status}"),
    }
}

fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => return None,
    })
}

/// Exit code of `dsm run` for a failed process: its own code, or 128 + signal.
fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(c), _) if c != 0 => c,
        (None, Some(s)) => 128 + s,
        _ => 1,
    }
}

/// Copies `from` line by line to our stdout or stderr, each line prefixed with `[launch index] `.
fn forward(launch: usize, from: impl Read + Send + 'static, to_stderr: bool, done: mpsc::Sender<()>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        let prefix = format!("[{launch}] ");
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if line.last() != Some(&b'\n') {
                line.push(b'\n');
            }
            let mut out = Vec::with_capacity(prefix.len() + line.len());
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(&line);
            // One write per line, so lines of different processes never interleave.
            let _ = if to_stderr {
                std::io::stderr().lock().write_all(&out)
            } else {
                std::io::stdout().lock().write_all(&out)
            };
        }
        let _ = done.send(());
    });
}

/// The started processes, each the leader of its own process group (so that a program's own
/// children are stopped with it). Stopped (TERM, grace, KILL) and reaped on drop.
struct Group {
    children: Vec<Option<Child>>,
    pids: Vec<u32>,
    grace: Duration,
}

impl Group {
    fn signal_all(&self, sig: libc::c_int) {
        for (c, pid) in self.children.iter().zip(&self.pids) {
            if c.is_some() {
                if let Ok(pid) = libc::pid_t::try_from(*pid) {
                    // SAFETY: kill(2) has no memory-safety preconditions; -pid names the process
                    // group this child leads (we created it with process_group(0)), which
                    // contains only processes we started or they started.
                    unsafe { libc::kill(-pid, sig) };
                }
            }
        }
    }

    /// SIGTERM to every process still running, SIGKILL after the grace period, and reap.
    fn stop(&mut self) {
        if self.children.iter().all(Option::is_none) {
            return;
        }
        self.signal_all(libc::SIGTERM);
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline && self.children.iter().any(Option::is_some) {
            for c in &mut self.children {
                if let Some(child) = c {
                    if let Ok(Some(_)) = child.try_wait() {
                        *c = None;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.signal_all(libc::SIGKILL);
        for c in &mut self.children {
            if let Some(mut child) = c.take() {
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    // Before anything starts: the coordinator would refuse them all, after they were forked.
    let total = args.total.unwrap_or(args.nprocs);
    if total > MAX_PROCESSES {
        let what = if args.total.is_some() { "--total" } else { "-n" };
        bail!("{what} {total} is more than one session can hold: at most {MAX_PROCESSES} processes; nothing was started");
    }
    if total < args.nprocs {
        bail!("--total {total} is less than -n {}: the session must hold the processes started here", args.nprocs);
    }
    if args.total.is_some() && (args.coordinator.is_none() || args.session.is_none()) {
        bail!("--total needs --coordinator and --session: the other machines' processes must find the same session");
    }
    install_signal_handlers()?;
    let cert_dir = args.cert_dir.clone().unwrap_or_else(dsm_cert::default_dir);
    let mut _temp_certs = None;
    let mut _coordinator = None;
    let (addr, cert_dir) = match &args.coordinator {
        Some(addr) => (addr.clone(), cert_dir),
        None => {
            let dir = if has_coordinator_certs(&cert_dir) {
                cert_dir
            } else {
                let dir = std::env::temp_dir().join(format!("dsm-run-certs-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                dsm_cert::generate(&dir, &[]).context("creating dev certificates")?;
                _temp_certs = Some(TempCerts(dir.clone()));
                dir
            };
            let mut config = dsm_coordinator::Config::new("127.0.0.1:0".parse().expect("literal"));
            config.cert_dir = dir.clone();
            // The processes read DSM_BUSY_POLL themselves; the private coordinator follows it.
            config.busy_poll_from_env().map_err(anyhow::Error::msg)?;
            let coordinator = dsm_coordinator::spawn(config).context("starting a private coordinator")?;
            let addr = coordinator.local_addr().to_string();
            _coordinator = Some(coordinator);
            (addr, dir)
        }
    };
    let session = args.session.clone().unwrap_or_else(unique_session);
    let cert_dir = std::path::absolute(&cert_dir).unwrap_or(cert_dir);

    let (program, program_args) = args.command.split_first().expect("clap requires a program");
    let mut group = Group { children: Vec::new(), pids: Vec::new(), grace: args.grace };
    let (done_tx, done_rx) = mpsc::channel();
    let launcher = std::process::id();
    for launch in 0..args.nprocs as usize {
        let mut cmd = Command::new(program);
        // If dsm run itself dies (even by SIGKILL, which it cannot catch), its processes get
        // SIGTERM from the kernel instead of running on without it.
        // SAFETY: the closure runs in the child between fork and exec and only makes two
        // async-signal-safe system calls (prctl, getppid) and possibly _exit.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // dsm run may have died before the prctl: then nobody would signal us.
                if libc::getppid() as u32 != launcher {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let spawned = cmd
            .args(program_args)
            .env("DSM_COORDINATOR", &addr)
            .env("DSM_SESSION", &session)
            .env("DSM_NPROCS", total.to_string())
            .env("DSM_RANK", launch.to_string())
            .env("DSM_SIZE", args.size.to_string())
            .env("DSM_CERT_DIR", &cert_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                group.stop();
                bail!("cannot start process {launch} ({program}): {e}");
            }
        };
        forward(launch, child.stdout.take().expect("piped"), false, done_tx.clone());
        forward(launch, child.stderr.take().expect("piped"), true, done_tx.clone());
        group.pids.push(child.id());
        group.children.push(Some(child));
    }
    drop(done_tx);

    let mut watch = Watch::new(&addr, cert_dir.clone(), &session).context("starting the session watch")?;
    let launched = Instant::now();
    let mut next_look = launched;
    let mut next_waiting_report = launched + FIRST_WAITING_REPORT;
    let mut code = 0;
    loop {
        let sig = STOP_SIGNAL.load(Ordering::SeqCst);
        if sig != 0 {
            let running = group.children.iter().filter(|c| c.is_some()).count();
            eprintln!("dsm run: {} received, stopping {running} process(es)", signal_name(sig).unwrap_or("signal"));
            group.stop();
            code = 128 + sig;
            break;
        }
        let mut failed = None;
        for (launch, c) in group.children.iter_mut().enumerate() {
            let Some(child) = c else { continue };
            if let Some(status) = child.try_wait().context("waiting for a process")? {
                *c = None;
                if !status.success() && failed.is_none() {
                    failed = Some((launch, status));
                }
            }
        }
        if let Some((launch, status)) = failed {
            let pid = group.pids[launch];
            if !watch.started() {
                // One fresh look: the session still lists a member it just lost.
                watch.refresh(&group.pids);
            }
            let running = group.children.iter().filter(|c| c.is_some()).count();
            eprintln!("dsm run: process {} {}", watch.describe(launch, pid), describe(status));
            if running > 0 {
                eprintln!("dsm run: stopping the other {running} process(es)");
            }
            group.stop();
            code = exit_code(status);
            break;
        }
        if group.children.iter().all(Option::is_none) {
            break;
        }
        let now = Instant::now();
        if !watch.started() && now >= next_look {
            watch.refresh(&group.pids);
            // An unreachable status (an old coordinator, say) is asked less often.
            next_look = now + if watch.error().is_some() { Duration::from_secs(1) } else { ATTACH_POLL };
            if !watch.started() && now >= next_waiting_report {
                eprintln!("dsm run: {}", watch.waiting_report(&group.pids));
                next_waiting_report = now + WAITING_REPORT_EVERY;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Let the output of the processes drain (bounded: a daemon they started may hold the pipes).
    let deadline = Instant::now() + Duration::from_secs(2);
    for _ in 0..2 * args.nprocs {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    Ok(code)
}
