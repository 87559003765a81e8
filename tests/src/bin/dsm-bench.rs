//! `dsm-bench`: latency benchmarks of DSM's synchronization, each reported as a ratio to a floor
//! measured in the same run (run it with `cargo xtask bench [--json] [FILTER]`).
//!
//! One in-process coordinator ([`dsm_tests::TestEnv`], loopback, fresh certificates) serves every
//! figure. All latencies are medians of individually timed operations in microseconds, taken
//! after a warm-up:
//!
//! * `quinn.rtt_64b` (floor): raw quinn round trip of 64 bytes on one bidirectional stream
//!   between two threads, each with its own current-thread tokio runtime, using the same TLS
//!   material and transport tuning ([`dsm_cert::Transport::default`]) as DSM.
//! * `coordinator.ping_64b`: [`dsm::Session::ping`] with 64 bytes in a one-process session: the
//!   floor plus the hop between the caller's thread and the runtime thread.
//! * `barrier.2p`, `barrier.4p`: one barrier with 2 / 4 real processes. This binary re-executes
//!   itself (hidden `--worker barrier --rounds N`) for the helper processes and takes part as the
//!   last one, timing each of its barriers.
//! * `semaphore.handoff`: two processes ping-pong with semaphores `ping` / `pong`; one hand-off
//!   is half of one parent iteration (post `ping`, wait `pong`).
//!
//! A FILTER (substring) selects which figures are printed and which non-floor figures are
//! measured; floors are always measured so that ratios stay valid. A ratio above its target only
//! produces a note, never a failing exit code.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use dsm_tests::{session_name, TestEnv, Workers};

/// Region size of the benchmark sessions (synchronization only; the region is unused).
const SIZE: u64 = 64 << 10;
/// How long helper processes get to exit after the parent detached.
const HELPER_EXIT: Duration = Duration::from_secs(20);

const QUINN_WARMUP: usize = 200;
const QUINN_ROUNDS: usize = 2000;
const PING_WARMUP: usize = 200;
const PING_ROUNDS: usize = 2000;
const BARRIER_WARMUP: usize = 50;
const SEM_WARMUP: usize = 100;
const SEM_ROUNDS: usize = 1000;

/// DSM latency benchmarks, as ratios to floors measured in the same run.
#[derive(Parser)]
#[command(name = "dsm-bench")]
struct Args {
    /// One JSON object per line: {"name","value","unit","floor","ratio"}.
    #[arg(long)]
    json: bool,
    /// Only figures whose name contains this (floors are measured anyway).
    filter: Option<String>,
    /// Internal: run as a helper process of a benchmark session (`DSM_*` environment).
    #[arg(long, value_enum, hide = true)]
    worker: Option<WorkerKind>,
    /// Internal: how many operations the helper performs, warm-up included.
    #[arg(long, hide = true, default_value_t = 0)]
    rounds: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum WorkerKind {
    /// `rounds` barriers.
    Barrier,
    /// `rounds` times: wait `ping`, post `pong`.
    Semaphore,
}

impl WorkerKind {
    fn arg(self) -> &'static str {
        match self {
            WorkerKind::Barrier => "barrier",
            WorkerKind::Semaphore => "semaphore",
        }
    }
}

/// One measured figure.
struct Figure {
    name: &'static str,
    value: f64,
    unit: &'static str,
    floor: Option<&'static str>,
    ratio: Option<f64>,
    /// Maximum acceptable ratio, if any.
    target: Option<f64>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let result = match args.worker {
        Some(kind) => worker(kind, args.rounds).with_context(|| format!("{} helper process", kind.arg())),
        None => bench(&args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(3);
    }
}

/// A helper process: attaches from the `DSM_*` environment, runs `rounds` operations, detaches.
fn worker(kind: WorkerKind, rounds: usize) -> Result<()> {
    let config = dsm::Config::from_env().context("reading the DSM_* environment")?;
    let s = dsm::Session::attach(&config).context("attaching")?;
    match kind {
        WorkerKind::Barrier => {
            for i in 0..rounds {
                s.barrier().with_context(|| format!("barrier {i}"))?;
            }
        }
        WorkerKind::Semaphore => {
            let ping = s.semaphore("ping")?;
            let pong = s.semaphore("pong")?;
            for i in 0..rounds {
                ping.wait().with_context(|| format!("wait ping {i}"))?;
                pong.post().with_context(|| format!("post pong {i}"))?;
            }
        }
    }
    s.detach().context("detaching")
}

fn bench(args: &Args) -> Result<()> {
    let filter = args.filter.as_deref().unwrap_or("");
    let selected = |name: &str| name.contains(filter);
    let env = TestEnv::new();
    let mut figures = Vec::new();

    // Floor, always measured.
    let rtt = median_us(&quinn_rtt(env.cert_dir()).context("measuring quinn.rtt_64b")?);
    figures.push(Figure {
        name: "quinn.rtt_64b",
        value: rtt,
        unit: "us",
        floor: None,
        ratio: None,
        target: None,
    });
    let over_rtt = |name: &'static str, value: f64, target: Option<f64>| Figure {
        name,
        value,
        unit: "us",
        floor: Some("quinn.rtt_64b"),
        ratio: Some(value / rtt),
        target,
    };

    if selected("coordinator.ping_64b") {
        let v = median_us(&coordinator_ping(&env).context("measuring coordinator.ping_64b")?);
        figures.push(over_rtt("coordinator.ping_64b", v, None));
    }
    for (name, nprocs, rounds) in [("barrier.2p", 2, 500), ("barrier.4p", 4, 300)] {
        if selected(name) {
            let v = median_us(&barrier(&env, nprocs, rounds).with_context(|| format!("measuring {name}"))?);
            figures.push(over_rtt(name, v, Some(2.0)));
        }
    }
    if selected("semaphore.handoff") {
        let v = median_us(&semaphore_handoff(&env).context("measuring semaphore.handoff")?) / 2.0;
        figures.push(over_rtt("semaphore.handoff", v, Some(2.5)));
    }

    let shown: Vec<&Figure> = figures.iter().filter(|f| selected(f.name)).collect();
    if args.json {
        for f in &shown {
            println!("{}", json_line(f));
        }
    } else {
        print_table(&shown);
    }
    Ok(())
}

/// Raw quinn: an echo server thread and a client in this thread, each on its own
/// current-thread runtime; returns the timed round trips after the warm-up.
fn quinn_rtt(cert_dir: &Path) -> Result<Vec<Duration>> {
    let transport = dsm_cert::Transport::default();
    let server_config = dsm_cert::quic_server_config(cert_dir, &transport).context("quinn server config")?;
    let tls = dsm_cert::client_tls_config(cert_dir).context("client TLS config")?;
    let client_config = dsm_cert::quic_client_config(tls, &transport).context("quinn client config")?;

    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let server = std::thread::Builder::new()
        .name("quinn-echo".into())
        .spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let endpoint = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse()?)
                    .context("binding the echo server")?;
                let _ = addr_tx.send(endpoint.local_addr()?);
                let incoming = tokio::time::timeout(Duration::from_secs(10), endpoint.accept())
                    .await
                    .context("no client connected within 10 s")?
                    .context("endpoint closed")?;
                let conn = incoming.await.context("accepting the connection")?;
                let (mut send, mut recv) = conn.accept_bi().await.context("accepting the stream")?;
                let mut buf = [0u8; 64];
                loop {
                    match recv.read_exact(&mut buf).await {
                        Ok(()) => send.write_all(&buf).await.context("echo write")?,
                        Err(quinn::ReadExactError::FinishedEarly(0)) => break,
                        Err(e) => return Err(e).context("echo read"),
                    }
                }
                send.finish()?;
                conn.closed().await;
                endpoint.wait_idle().await;
                Ok(())
            })
        })
        .context("starting the echo server thread")?;
    let Ok(addr) = addr_rx.recv() else {
        return Err(match server.join() {
            Ok(Err(e)) => e,
            _ => anyhow::anyhow!("the echo server thread ended without an address"),
        });
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = rt.block_on(async move {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?).context("binding the client")?;
        endpoint.set_default_client_config(client_config);
        let conn = endpoint.connect(addr, "localhost")?.await.context("connecting")?;
        let (mut send, mut recv) = conn.open_bi().await.context("opening a stream")?;
        let out = [0x5au8; 64];
        let mut back = [0u8; 64];
        let mut samples = Vec::with_capacity(QUINN_ROUNDS);
        for i in 0..QUINN_WARMUP + QUINN_ROUNDS {
            let t = Instant::now();
            send.write_all(&out).await.context("write")?;
            recv.read_exact(&mut back).await.context("read")?;
            let took = t.elapsed();
            if i >= QUINN_WARMUP {
                samples.push(took);
            }
        }
        send.finish()?;
        let rest = recv
            .read_to_end(64)
            .await
            .context("waiting for the echo stream to finish")?;
        anyhow::ensure!(rest.is_empty(), "unexpected {} trailing bytes", rest.len());
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        Ok::<_, anyhow::Error>(samples)
    });
    let served = server
        .join()
        .map_err(|_| anyhow::anyhow!("the echo server thread panicked"))?;
    let samples = client?;
    served.context("echo server")?;
    Ok(samples)
}

/// `Session::ping` with 64 bytes in a session of this process alone.
fn coordinator_ping(env: &TestEnv) -> Result<Vec<Duration>> {
    let s = attach(env, &session_name("bench-ping"), 1)?;
    let mut samples = Vec::with_capacity(PING_ROUNDS);
    for i in 0..PING_WARMUP + PING_ROUNDS {
        let took = s.ping(vec![0; 64]).context("ping")?;
        if i >= PING_WARMUP {
            samples.push(took);
        }
    }
    s.detach().context("detaching")?;
    Ok(samples)
}

/// Barriers of `nprocs` processes (this one and `nprocs - 1` helpers), timed in this process.
fn barrier(env: &TestEnv, nprocs: u32, rounds: usize) -> Result<Vec<Duration>> {
    let session = session_name("bench-barrier");
    with_helpers(
        env,
        &session,
        nprocs,
        WorkerKind::Barrier,
        BARRIER_WARMUP + rounds,
        |s| {
            for i in 0..BARRIER_WARMUP {
                s.barrier().with_context(|| format!("warm-up barrier {i}"))?;
            }
            let mut samples = Vec::with_capacity(rounds);
            for i in 0..rounds {
                let t = Instant::now();
                s.barrier().with_context(|| format!("barrier {i}"))?;
                samples.push(t.elapsed());
            }
            Ok(samples)
        },
    )
}

/// Ping-pong iterations (post `ping`, wait `pong`) with one helper, timed in this process.
fn semaphore_handoff(env: &TestEnv) -> Result<Vec<Duration>> {
    let session = session_name("bench-sem");
    with_helpers(
        env,
        &session,
        2,
        WorkerKind::Semaphore,
        SEM_WARMUP + SEM_ROUNDS,
        |s| {
            let ping = s.semaphore("ping")?;
            let pong = s.semaphore("pong")?;
            let mut samples = Vec::with_capacity(SEM_ROUNDS);
            for i in 0..SEM_WARMUP + SEM_ROUNDS {
                let t = Instant::now();
                ping.post().with_context(|| format!("post ping {i}"))?;
                pong.wait().with_context(|| format!("wait pong {i}"))?;
                let took = t.elapsed();
                if i >= SEM_WARMUP {
                    samples.push(took);
                }
            }
            Ok(samples)
        },
    )
}

fn attach(env: &TestEnv, session: &str, nprocs: u32) -> Result<dsm::Session> {
    let config = env
        .config(session, SIZE, nprocs)
        .build()
        .context("building the session config")?;
    dsm::Session::attach(&config).with_context(|| format!("attaching session {session}"))
}

/// Starts `nprocs - 1` helpers of `kind`, attaches this process as the last participant, runs
/// `body`, detaches and checks that every helper exited cleanly. Helpers are killed on any error.
fn with_helpers<T>(
    env: &TestEnv,
    session: &str,
    nprocs: u32,
    kind: WorkerKind,
    helper_rounds: usize,
    body: impl FnOnce(&dsm::Session) -> Result<T>,
) -> Result<T> {
    let exe = std::env::current_exe().context("locating the benchmark binary")?;
    let worker_env = env.worker_env(env.addr(), session, SIZE, nprocs);
    let rounds = helper_rounds.to_string();
    let args = ["--worker", kind.arg(), "--rounds", rounds.as_str()];
    let mut helpers = Workers::spawn(&exe, &args, &worker_env, nprocs as usize - 1);
    let result = attach(env, session, nprocs).and_then(|s| {
        let out = body(&s)?;
        s.detach().context("detaching")?;
        Ok(out)
    });
    match result {
        Ok(out) => {
            let codes = helpers.wait_all(HELPER_EXIT);
            if codes.iter().any(|c| *c != Some(0)) {
                bail!(
                    "helper processes exited with {codes:?}:\n{}",
                    helpers.transcript()
                );
            }
            Ok(out)
        }
        Err(e) => {
            for c in &mut helpers.children {
                let _ = c.kill();
            }
            helpers.wait_all(Duration::from_secs(1));
            Err(e.context(format!("helper output:\n{}", helpers.transcript())))
        }
    }
}

/// Median in microseconds.
fn median_us(samples: &[Duration]) -> f64 {
    let mut v: Vec<Duration> = samples.to_vec();
    v.sort_unstable();
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    let mid = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    };
    mid.as_secs_f64() * 1e6
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:.decimals$}")
    } else {
        "null".into()
    }
}

fn json_line(f: &Figure) -> String {
    format!(
        "{{\"name\": {}, \"value\": {}, \"unit\": {}, \"floor\": {}, \"ratio\": {}}}",
        json_str(f.name),
        json_num(f.value, 1),
        json_str(f.unit),
        f.floor.map_or_else(|| "null".into(), json_str),
        f.ratio.map_or_else(|| "null".into(), |r| json_num(r, 2)),
    )
}

fn print_table(figures: &[&Figure]) {
    println!(
        "{:<22} {:>10}  {:<5}  {:<15} {:>6}   target",
        "figure", "value", "unit", "floor", "ratio"
    );
    let mut misses = Vec::new();
    for f in figures {
        let ratio = f.ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}"));
        let target = f.target.map_or_else(|| "-".into(), |t| format!("<= {t:.1}"));
        println!(
            "{:<22} {:>10.1}  {:<5}  {:<15} {:>6}   {}",
            f.name,
            f.value,
            f.unit,
            f.floor.unwrap_or("-"),
            ratio,
            target
        );
        if let (Some(r), Some(t)) = (f.ratio, f.target) {
            if r.is_nan() || r > t {
                misses.push(format!(
                    "{} is {r:.2}x {} (target <= {t:.1})",
                    f.name,
                    f.floor.unwrap_or("its floor")
                ));
            }
        }
    }
    if !misses.is_empty() {
        println!();
        println!("note: {} figure(s) miss their target:", misses.len());
        for m in misses {
            println!("  {m}");
        }
    }
}
