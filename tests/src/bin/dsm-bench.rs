//! `dsm-bench`: benchmarks of DSM's synchronization and memory, each reported as a ratio to a
//! floor measured in the same run (run it with `cargo xtask bench [--json] [FILTER]`).
//!
//! One in-process coordinator ([`dsm_tests::TestEnv`], loopback, fresh certificates) serves every
//! figure. Unless noted, latencies are medians of individually timed operations in microseconds,
//! taken after a warm-up.
//!
//! Floors (always measured):
//!
//! * `quinn.rtt_64b`: raw quinn round trip of 64 bytes on one bidirectional stream between two
//!   threads, each with its own current-thread tokio runtime, using the same TLS material and
//!   transport tuning ([`dsm_cert::Transport::default`]) as DSM.
//! * `quinn.rtt_4k`: the same with a 16-byte request and a 4096-byte response (the shape of a
//!   page fetch).
//! * `quinn.stream`: one-way throughput (MB/s, 10^6 bytes) of one quinn stream carrying 4 KiB
//!   writes from the client thread to a server thread that reads and counts them, for 256 MiB
//!   or about one second, whichever comes first; timed until the server's byte count came back;
//!   the median of 3 such runs.
//! * `native.store`: 8-byte `write_volatile` stores (millions per second) looping over a private,
//!   4 KiB-aligned 1 MiB buffer; median of several timed repeats.
//!
//! Figures:
//!
//! * `coordinator.ping_64b`: [`dsm::Session::ping`] with 64 bytes in a one-process session: the
//!   floor plus the hop between the caller's thread and the runtime thread.
//! * `barrier.2p`, `barrier.4p`: one barrier with 2 / 4 real processes. This binary re-executes
//!   itself (hidden `--worker KIND --rounds N`) for the helper processes and takes part as the
//!   last one, timing each of its barriers.
//! * `semaphore.handoff`: two processes ping-pong with semaphores `ping` / `pong`; one hand-off
//!   is half of one parent iteration (post `ping`, wait `pong`).
//! * `store.owned`: the `native.store` loop on 1 MiB of a [`dsm::Region`] in a one-process
//!   session, after every page was written once (all pages owned and writable).
//! * `fault.read_remote`: a helper writes each of 2000 pages, barrier; the parent then reads one
//!   byte of each page, timing each first-touch read.
//! * `fault.ownership_transfer`: the same, but the parent writes one byte of each page.
//! * `touch.sequential`: a helper fills 256 MiB with non-zero bytes, barrier; the parent reads
//!   one byte of every page in order; MB/s of pages touched (with direct transfers, the
//!   default, the pages come from the helper). `touch.sequential.coordinator`: the same with
//!   direct transfers off (every page through the coordinator), for reference. Each is the
//!   median of `TOUCH_RUNS` sessions, the two figures' runs interleaved.
//!
//! Every figure runs with the runtime's defaults and the environment (`DSM_DIRECT=0
//! dsm-bench` measures everything through the coordinator), except the `lossy.*` ones, whose
//! processes talk to the coordinator through a relay and cannot reach each other: they run
//! with direct transfers off.
//! * `pingpong.handoff`: two processes busy-wait on one shared `AtomicU64` turn word (rank `r`
//!   waits until `turn % 2 == r`, then increments it); 2000 hand-offs after 100 warm-up ones; one
//!   hand-off is half the time between two consecutive turns of the parent.
//!
//! * `replay.*`, `counter.*`: write replay and contended counters (see the `counter` module).
//! * `pingpong.update`, `pingpong.adaptive`: `pingpong.handoff` with the region advised Update /
//!   Adaptive.
//!
//! * `lossy.*`: latency-bound hand-offs and a bulk read through the lossy relay, each over the
//!   same figure through the same relay without loss (see the `lossy` module).
//!
//! A FILTER (substring) selects which figures are printed and which non-floor figures are
//! measured; floors are always measured so that ratios stay valid. Ratios are value / floor;
//! latency figures have a maximum ratio as target, throughput figures a minimum one. A ratio
//! missing its target only produces a note, never a failing exit code.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use dsm_tests::{session_name, TestEnv, Workers};

// In a directory of its own: a `mod` of a binary's root file would be looked for next to it, in
// `src/bin/`, where Cargo would take it for another binary.
#[path = "dsm-bench/bulk.rs"]
mod bulk;
#[path = "dsm-bench/counter.rs"]
mod counter;
#[path = "dsm-bench/floors.rs"]
mod floors;
#[path = "dsm-bench/lossy.rs"]
mod lossy;

/// Region size of the synchronization-only sessions (the region is unused).
const SIZE: u64 = 64 << 10;
/// How long helper processes get to exit after the parent detached.
const HELPER_EXIT: Duration = Duration::from_secs(30);
/// Page size of the region.
const PAGE: usize = 4096;

const PING_WARMUP: usize = 200;
const PING_ROUNDS: usize = 2000;
const BARRIER_WARMUP: usize = 50;
const SEM_WARMUP: usize = 100;
const SEM_ROUNDS: usize = 1000;
/// Store loops: buffer size, passes per timed repeat, repeats (after one untimed one).
const STORE_BYTES: usize = 1 << 20;
const STORE_PASSES: usize = 200;
const STORE_REPEATS: usize = 5;
/// Fault figures: pages the helper writes and the parent then touches once each.
const FAULT_PAGES: usize = 2000;
const FAULT_SIZE: u64 = 8 << 20;
/// `touch.sequential`: bytes the helper fills and the parent touches page by page.
const TOUCH_BYTES: u64 = 256 << 20;
/// `touch.sequential`, `touch.sequential.coordinator`: sessions each (the figures are their medians).
const TOUCH_RUNS: usize = 3;
/// The sessions attached now go without direct transfers (`touch.sequential.coordinator`,
/// `lossy.*`): the parent's config and the helpers' `DSM_DIRECT=0`; otherwise both follow the
/// environment.
static NO_DIRECT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs `measure` with direct transfers off (see [`NO_DIRECT`]).
fn without_direct<T>(measure: impl FnOnce() -> T) -> T {
    NO_DIRECT.store(true, std::sync::atomic::Ordering::Relaxed);
    let v = measure();
    NO_DIRECT.store(false, std::sync::atomic::Ordering::Relaxed);
    v
}

/// The helpers' environment for a session: `TestEnv::worker_env`, and `DSM_DIRECT=0` inside
/// [`without_direct`].
fn helper_env(env: &TestEnv, addr: SocketAddr, session: &str, size: u64, nprocs: u32) -> Vec<(String, String)> {
    let mut vars = env.worker_env(addr, session, size, nprocs);
    if NO_DIRECT.load(std::sync::atomic::Ordering::Relaxed) {
        vars.push(("DSM_DIRECT".into(), "0".into()));
    }
    vars
}

/// `pingpong.handoff`: hand-offs of the turn word.
const SPIN_WARMUP: u64 = 100;
const SPIN_ROUNDS: u64 = 2000;
const SPIN_SIZE: u64 = 64 << 10;

/// DSM benchmarks, as ratios to floors measured in the same run.
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
    /// Internal: how many operations the helper performs, warm-up included (for `fill`: pages).
    #[arg(long, hide = true, default_value_t = 0)]
    rounds: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum WorkerKind {
    /// `rounds` barriers.
    Barrier,
    /// `rounds` times: wait `ping`, post `pong`.
    Semaphore,
    /// Region: fill the first `rounds` pages with non-zero bytes, barrier, barrier.
    Fill,
    /// Region: take part in `rounds` hand-offs of the turn word at offset 0.
    Spin,
    /// Region: barrier, `rounds` fetch_adds on the word at offset 0, barrier.
    Counter,
    /// Region: fill the first `rounds` pages, then three barriers.
    FillWait,
    /// Region: barrier, read one byte of each of the first `rounds` pages, two barriers.
    ReadAll,
}

impl WorkerKind {
    fn arg(self) -> &'static str {
        match self {
            WorkerKind::Barrier => "barrier",
            WorkerKind::Semaphore => "semaphore",
            WorkerKind::Fill => "fill",
            WorkerKind::Spin => "spin",
            WorkerKind::Counter => "counter",
            WorkerKind::FillWait => "fill-wait",
            WorkerKind::ReadAll => "read-all",
        }
    }
}

/// Acceptable ratio of a figure to its floor.
#[derive(Clone, Copy)]
enum Target {
    /// Latency: the ratio must not exceed this.
    AtMost(f64),
    /// Throughput: the ratio must reach this.
    AtLeast(f64),
}

impl Target {
    fn met(self, ratio: f64) -> bool {
        match self {
            Target::AtMost(t) => ratio <= t,
            Target::AtLeast(t) => ratio >= t,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::AtMost(t) => write!(f, "<= {t:.1}"),
            Target::AtLeast(t) => write!(f, ">= {t:.1}"),
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
    target: Option<Target>,
}

impl Figure {
    fn floor(name: &'static str, value: f64, unit: &'static str) -> Figure {
        Figure { name, value, unit, floor: None, ratio: None, target: None }
    }

    /// A figure over `floor` (whose value must already be in `figures`).
    fn over(
        figures: &[Figure],
        name: &'static str,
        value: f64,
        unit: &'static str,
        floor: &'static str,
        target: Option<Target>,
    ) -> Figure {
        let base = figures
            .iter()
            .find(|f| f.name == floor)
            .map_or(f64::NAN, |f| f.value);
        Figure { name, value, unit, floor: Some(floor), ratio: Some(value / base), target }
    }
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
    match kind {
        WorkerKind::Barrier | WorkerKind::Semaphore => {
            let s = dsm::Session::attach(&config).context("attaching")?;
            if let WorkerKind::Barrier = kind {
                for i in 0..rounds {
                    s.barrier().with_context(|| format!("barrier {i}"))?;
                }
            } else {
                let ping = s.semaphore("ping")?;
                let pong = s.semaphore("pong")?;
                for i in 0..rounds {
                    ping.wait().with_context(|| format!("wait ping {i}"))?;
                    pong.post().with_context(|| format!("post pong {i}"))?;
                }
            }
            s.detach().context("detaching")
        }
        WorkerKind::Fill => {
            let r = dsm::Region::attach(&config).context("attaching the region")?;
            let bytes = rounds * PAGE;
            ensure!(bytes <= r.len(), "{rounds} pages do not fit the {}-byte region", r.len());
            // SAFETY: the range lies inside the region (checked above); nothing else in this
            // process refers to it.
            unsafe { std::ptr::write_bytes(r.as_ptr(), 0xa5, bytes) };
            r.barrier().context("barrier after filling")?;
            r.barrier().context("final barrier")?;
            r.detach().context("detaching")
        }
        WorkerKind::Spin => {
            let r = dsm::Region::attach(&config).context("attaching the region")?;
            spin_turns(&r, rounds as u64, |_| {})?;
            r.detach().context("detaching")
        }
        WorkerKind::Counter => {
            let r = dsm::Region::attach(&config).context("attaching the region")?;
            counter::counter_ops(&r, rounds)?;
            r.detach().context("detaching")
        }
        WorkerKind::FillWait => {
            let r = dsm::Region::attach(&config).context("attaching the region")?;
            let dst = r.ptr_at(0, rounds * PAGE)?;
            // SAFETY: the range lies inside the region (ptr_at checked it).
            unsafe { std::ptr::write_bytes(dst, 0xa5, rounds * PAGE) };
            for i in 0..3 {
                r.barrier().with_context(|| format!("barrier {i}"))?;
            }
            r.detach().context("detaching")
        }
        WorkerKind::ReadAll => {
            let r = dsm::Region::attach(&config).context("attaching the region")?;
            let base = r.ptr_at(0, rounds * PAGE)?;
            r.barrier().context("barrier after the fill")?;
            for p in 0..rounds {
                // SAFETY: inside the region (ptr_at checked the range).
                let v = unsafe { std::ptr::read_volatile(base.add(p * PAGE)) };
                ensure!(v != 0, "page {p} reads as zero after the fill");
            }
            r.barrier().context("barrier after the reads")?;
            r.barrier().context("final barrier")?;
            r.detach().context("detaching")
        }
    }
}

fn bench(args: &Args) -> Result<()> {
    let filter = args.filter.as_deref().unwrap_or("");
    let selected = |name: &str| name.contains(filter);
    let env = TestEnv::new();
    let mut figures = Vec::new();

    // Floors, always measured.
    floors::measure(env.cert_dir(), &mut figures)?;
    let native = native_store().context("measuring native.store")?;
    figures.push(Figure::floor("native.store", native, "Mstores/s"));

    if selected("coordinator.ping_64b") {
        let v = median_us(&coordinator_ping(&env).context("measuring coordinator.ping_64b")?);
        figures.push(Figure::over(&figures, "coordinator.ping_64b", v, "us", "quinn.rtt_64b", None));
    }
    for (name, nprocs, rounds) in [("barrier.2p", 2, 500), ("barrier.4p", 4, 300)] {
        if selected(name) {
            let v = median_us(&barrier(&env, nprocs, rounds).with_context(|| format!("measuring {name}"))?);
            figures.push(Figure::over(&figures, name, v, "us", "quinn.rtt_64b", Some(Target::AtMost(2.0))));
        }
    }
    if selected("semaphore.handoff") {
        let v = median_us(&semaphore_handoff(&env).context("measuring semaphore.handoff")?) / 2.0;
        figures.push(Figure::over(
            &figures,
            "semaphore.handoff",
            v,
            "us",
            "quinn.rtt_64b",
            Some(Target::AtMost(2.5)),
        ));
    }
    if selected("store.owned") {
        let v = store_owned(&env).context("measuring store.owned")?;
        figures.push(Figure::over(
            &figures,
            "store.owned",
            v,
            "Mstores/s",
            "native.store",
            Some(Target::AtLeast(0.9)),
        ));
    }
    for (name, write, target) in [
        ("fault.read_remote", false, 1.5),
        ("fault.ownership_transfer", true, 2.5),
    ] {
        if selected(name) {
            let v = median_us(&remote_faults(&env, write).with_context(|| format!("measuring {name}"))?);
            figures.push(Figure::over(&figures, name, v, "us", "quinn.rtt_4k", Some(Target::AtMost(target))));
        }
    }
    // Median of TOUCH_RUNS sessions each, the two interleaved: one run swings as much as its
    // floor does (see `floors.rs`).
    let touch = [("touch.sequential", true), ("touch.sequential.coordinator", false)];
    let mut touch_rates = [Vec::new(), Vec::new()];
    for _ in 0..TOUCH_RUNS {
        for ((name, direct), rates) in touch.iter().zip(&mut touch_rates) {
            if selected(name) {
                let v = if *direct { touch_sequential(&env) } else { without_direct(|| touch_sequential(&env)) };
                rates.push(v.with_context(|| format!("measuring {name}"))?);
            }
        }
    }
    for ((name, direct), rates) in touch.into_iter().zip(touch_rates) {
        if selected(name) {
            let target = direct.then_some(Target::AtLeast(0.5));
            figures.push(Figure::over(&figures, name, median(rates), "MB/s", "quinn.stream", target));
        }
    }
    counter::measure(&env, &selected, &mut figures)?;
    for (name, coherence) in [("pingpong.update", dsm::Coherence::Update), ("pingpong.adaptive", dsm::Coherence::Adaptive)] {
        if selected(name) {
            let v = median_us(&spin_handoff(&env, Some(coherence)).with_context(|| format!("measuring {name}"))?);
            figures.push(Figure::over(&figures, name, v, "us", "quinn.rtt_64b", Some(Target::AtMost(3.0))));
        }
    }
    if selected("pingpong.handoff") {
        let v = median_us(&spin_handoff(&env, None).context("measuring pingpong.handoff")?);
        figures.push(Figure::over(
            &figures,
            "pingpong.handoff",
            v,
            "us",
            "quinn.rtt_64b",
            Some(Target::AtMost(3.0)),
        ));
    }

    bulk::measure(&env, &selected, &mut figures)?;
    // Through the relay only the coordinator is reachable: the lossy figures measure its path.
    without_direct(|| lossy::measure(&env, &selected, &mut figures))?;

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

/// `STORE_PASSES` passes of 8-byte volatile stores over `words` words at `ptr`.
///
/// # Safety
/// `ptr` must be valid for writes of `words` u64s and 8-byte aligned.
unsafe fn store_passes(ptr: *mut u64, words: usize) -> Duration {
    let t = Instant::now();
    for pass in 0..STORE_PASSES as u64 {
        for i in 0..words {
            // SAFETY: in bounds by the caller's contract.
            unsafe { std::ptr::write_volatile(ptr.add(i), pass ^ i as u64) };
        }
    }
    t.elapsed()
}

/// Millions of stores per second of the store loop over `STORE_BYTES` at `ptr`: one untimed
/// repeat, then the median rate of `STORE_REPEATS` timed ones.
///
/// # Safety
/// `ptr` must be valid for writes of `STORE_BYTES` bytes and 8-byte aligned.
unsafe fn store_rate(ptr: *mut u64) -> f64 {
    let words = STORE_BYTES / 8;
    // SAFETY: forwarded contract.
    unsafe { store_passes(ptr, words) };
    let mut rates: Vec<f64> = (0..STORE_REPEATS)
        // SAFETY: forwarded contract.
        .map(|_| (STORE_PASSES * words) as f64 / unsafe { store_passes(ptr, words) }.as_secs_f64() / 1e6)
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// `native.store`: the store loop on a private, page-aligned buffer.
fn native_store() -> Result<f64> {
    let layout = std::alloc::Layout::from_size_align(STORE_BYTES, PAGE)?;
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    ensure!(!ptr.is_null(), "allocating {STORE_BYTES} bytes");
    // SAFETY: the buffer is STORE_BYTES long and page-aligned; it is freed right after.
    let rate = unsafe { store_rate(ptr.cast::<u64>()) };
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(ptr, layout) };
    Ok(rate)
}

/// `store.owned`: the store loop on a one-process region whose pages were all written once.
fn store_owned(env: &TestEnv) -> Result<f64> {
    let r: dsm::Region = attach(env, &session_name("bench-store"), 1, STORE_BYTES as u64)?;
    let ptr = r.ptr_at(0, STORE_BYTES)?.cast::<u64>();
    for p in 0..STORE_BYTES / PAGE {
        // SAFETY: inside the region (ptr_at checked the range).
        unsafe { std::ptr::write_volatile(ptr.add(p * PAGE / 8), 1) };
    }
    // SAFETY: the region is STORE_BYTES long (checked by ptr_at) and page-aligned; this
    // process is the only one in the session.
    let rate = unsafe { store_rate(ptr) };
    r.detach().context("detaching")?;
    Ok(rate)
}

/// `fault.read_remote` / `fault.ownership_transfer`: a helper writes `FAULT_PAGES` pages, then
/// this process touches one byte of each (a load, or a store if `write`), timing each access.
fn remote_faults(env: &TestEnv, write: bool) -> Result<Vec<Duration>> {
    let session = session_name(if write { "bench-own" } else { "bench-read" });
    with_helpers(env, &session, 2, FAULT_SIZE, WorkerKind::Fill, FAULT_PAGES, |r: &dsm::Region| {
        r.barrier().context("barrier after the helper's writes")?;
        let base = r.as_ptr();
        let mut samples = Vec::with_capacity(FAULT_PAGES);
        let mut zeros = 0usize;
        for i in 0..FAULT_PAGES {
            // A scattered order (stride coprime to the page count): every access is a cold,
            // isolated fault, never served by the runtime's sequential read-ahead.
            let p = (i * 7919) % FAULT_PAGES;
            // SAFETY: FAULT_PAGES pages fit the region (the helper checked the same size).
            let at = unsafe { base.add(p * PAGE + 8) };
            if write {
                let t = Instant::now();
                // SAFETY: inside the region.
                unsafe { std::ptr::write_volatile(at, 0x5a) };
                samples.push(t.elapsed());
            } else {
                let t = Instant::now();
                // SAFETY: inside the region.
                let v = unsafe { std::ptr::read_volatile(at) };
                samples.push(t.elapsed());
                zeros += usize::from(v == 0);
            }
        }
        ensure!(zeros == 0, "{zeros} of {FAULT_PAGES} pages read as zero after the helper wrote them");
        r.barrier().context("final barrier")?;
        Ok(samples)
    })
}

/// `touch.sequential`: a helper fills `TOUCH_BYTES`, then this process reads one byte of every
/// page in order; MB/s of pages touched.
fn touch_sequential(env: &TestEnv) -> Result<f64> {
    touch_sequential_via(env, env.addr(), TOUCH_BYTES)
}

/// [`touch_sequential`] of `bytes`, every process talking to the coordinator at `addr`.
fn touch_sequential_via(env: &TestEnv, addr: SocketAddr, bytes: u64) -> Result<f64> {
    let session = session_name("bench-touch");
    let pages = bytes as usize / PAGE;
    with_helpers_via(env, addr, &session, 2, bytes, WorkerKind::Fill, pages, |r: &dsm::Region| {
        r.barrier().context("barrier after the helper's writes")?;
        let base = r.as_ptr();
        let mut zeros = 0usize;
        let t = Instant::now();
        for p in 0..pages {
            // SAFETY: the region is `bytes` long.
            zeros += usize::from(unsafe { std::ptr::read_volatile(base.add(p * PAGE)) } == 0);
        }
        let took = t.elapsed();
        ensure!(zeros == 0, "{zeros} of {pages} pages read as zero after the helper filled them");
        if std::env::var_os("DSM_BENCH_STATS").is_some() {
            eprintln!("touch.sequential: {took:?}, reader {:?}", r.stats()?);
        }
        r.barrier().context("final barrier")?;
        Ok(bytes as f64 / took.as_secs_f64() / 1e6)
    })
}

/// Busy-waits for this rank's turns on the turn word at offset 0 until it reaches `total`,
/// calling `on_turn(turn)` at each of them before handing over. Barriers around.
fn spin_turns(r: &dsm::Region, total: u64, mut on_turn: impl FnMut(u64)) -> Result<()> {
    ensure!(r.nprocs() == 2, "the spin ping-pong needs 2 processes, not {}", r.nprocs());
    let turn = &r.as_slice::<AtomicU64>(0, 1)?[0];
    let rank = u64::from(r.rank());
    r.barrier().context("barrier before the ping-pong")?;
    let mut spins = 0u32;
    loop {
        let t = turn.load(Ordering::SeqCst);
        if t >= total {
            break;
        }
        if t % 2 == rank {
            on_turn(t);
            turn.store(t + 1, Ordering::SeqCst);
        } else {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
    r.barrier().context("barrier after the ping-pong")?;
    let end = turn.load(Ordering::SeqCst);
    ensure!(end == total, "turn ended at {end}, expected {total}");
    Ok(())
}

/// `pingpong.handoff`: half the time between consecutive turns of this process, after the
/// warm-up hand-offs.
/// With `coherence`, the parent advises the whole region so before the first barrier.
fn spin_handoff(env: &TestEnv, coherence: Option<dsm::Coherence>) -> Result<Vec<Duration>> {
    spin_handoff_via(env, env.addr(), SPIN_WARMUP, SPIN_ROUNDS, coherence)
}

/// [`spin_handoff`] with `warmup` + `rounds` hand-offs, every process talking to the coordinator
/// at `addr`.
fn spin_handoff_via(
    env: &TestEnv,
    addr: SocketAddr,
    warmup: u64,
    rounds: u64,
    coherence: Option<dsm::Coherence>,
) -> Result<Vec<Duration>> {
    let session = session_name("bench-spin");
    let total = warmup + rounds;
    with_helpers_via(env, addr, &session, 2, SPIN_SIZE, WorkerKind::Spin, total as usize, |r: &dsm::Region| {
        if let Some(c) = coherence {
            r.advise(0, r.len(), c).context("advising the region")?;
        }
        let mut turns: Vec<(u64, Instant)> = Vec::with_capacity(total as usize / 2 + 1);
        spin_turns(r, total, |t| turns.push((t, Instant::now())))?;
        Ok(turns
            .windows(2)
            .filter(|w| w[0].0 >= warmup)
            .map(|w| (w[1].1 - w[0].1) / 2)
            .collect())
    })
}

/// `Session::ping` with 64 bytes in a session of this process alone.
fn coordinator_ping(env: &TestEnv) -> Result<Vec<Duration>> {
    let s: dsm::Session = attach(env, &session_name("bench-ping"), 1, SIZE)?;
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
        SIZE,
        WorkerKind::Barrier,
        BARRIER_WARMUP + rounds,
        |s: &dsm::Session| {
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
    semaphore_handoff_via(env, env.addr(), SEM_WARMUP, SEM_ROUNDS)
}

/// [`semaphore_handoff`] with `warmup` + `rounds` iterations, both processes talking to the
/// coordinator at `addr`.
fn semaphore_handoff_via(env: &TestEnv, addr: SocketAddr, warmup: usize, rounds: usize) -> Result<Vec<Duration>> {
    let session = session_name("bench-sem");
    with_helpers_via(
        env,
        addr,
        &session,
        2,
        SIZE,
        WorkerKind::Semaphore,
        warmup + rounds,
        |s: &dsm::Session| {
            let ping = s.semaphore("ping")?;
            let pong = s.semaphore("pong")?;
            let mut samples = Vec::with_capacity(rounds);
            for i in 0..warmup + rounds {
                let t = Instant::now();
                ping.post().with_context(|| format!("post ping {i}"))?;
                pong.wait().with_context(|| format!("wait pong {i}"))?;
                let took = t.elapsed();
                if i >= warmup {
                    samples.push(took);
                }
            }
            Ok(samples)
        },
    )
}

/// How this process takes part in a session: a plain session or a region.
trait Participant: Sized {
    fn attach(config: &dsm::Config) -> dsm::Result<Self>;
    fn detach(self) -> dsm::Result<()>;
}

impl Participant for dsm::Session {
    fn attach(config: &dsm::Config) -> dsm::Result<Self> {
        dsm::Session::attach(config)
    }
    fn detach(self) -> dsm::Result<()> {
        dsm::Session::detach(self)
    }
}

impl Participant for dsm::Region {
    fn attach(config: &dsm::Config) -> dsm::Result<Self> {
        dsm::Region::attach(config)
    }
    fn detach(self) -> dsm::Result<()> {
        dsm::Region::detach(self)
    }
}

fn attach<P: Participant>(env: &TestEnv, session: &str, nprocs: u32, size: u64) -> Result<P> {
    attach_via(env, env.addr(), session, nprocs, size)
}

fn attach_via<P: Participant>(env: &TestEnv, addr: SocketAddr, session: &str, nprocs: u32, size: u64) -> Result<P> {
    let mut config = env.config_via(addr, session, size, nprocs);
    if NO_DIRECT.load(std::sync::atomic::Ordering::Relaxed) {
        config = config.direct_transfers(false);
    }
    let config = config.build().context("building the session config")?;
    P::attach(&config).with_context(|| format!("attaching session {session}"))
}

/// Starts `nprocs - 1` helpers of `kind` on a region of `size` bytes, attaches this process as
/// the last participant, runs `body`, detaches and checks that every helper exited cleanly.
/// Helpers are killed on any error.
fn with_helpers<P: Participant, T>(
    env: &TestEnv,
    session: &str,
    nprocs: u32,
    size: u64,
    kind: WorkerKind,
    helper_rounds: usize,
    body: impl FnOnce(&P) -> Result<T>,
) -> Result<T> {
    with_helpers_via(env, env.addr(), session, nprocs, size, kind, helper_rounds, body)
}

/// [`with_helpers`], every process talking to the coordinator at `addr` (e.g. a relay).
#[allow(clippy::too_many_arguments)]
fn with_helpers_via<P: Participant, T>(
    env: &TestEnv,
    addr: SocketAddr,
    session: &str,
    nprocs: u32,
    size: u64,
    kind: WorkerKind,
    helper_rounds: usize,
    body: impl FnOnce(&P) -> Result<T>,
) -> Result<T> {
    let exe = std::env::current_exe().context("locating the benchmark binary")?;
    let worker_env = helper_env(env, addr, session, size, nprocs);
    let rounds = helper_rounds.to_string();
    let args = ["--worker", kind.arg(), "--rounds", rounds.as_str()];
    let mut helpers = Workers::spawn(&exe, &args, &worker_env, nprocs as usize - 1);
    let result = attach_via::<P>(env, addr, session, nprocs, size).and_then(|s| {
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

/// Median of figures (the mean of the middle two of an even count; NaN if none).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Median in microseconds.
fn median_us(samples: &[Duration]) -> f64 {
    median(samples.iter().map(|d| d.as_secs_f64() * 1e6).collect())
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

/// The table; the name, unit and floor columns widen (from 22, 5 and 15) to fit longer entries.
fn print_table(figures: &[&Figure]) {
    let nw = figures.iter().map(|f| f.name.len()).max().unwrap_or(0).max(22);
    let uw = figures.iter().map(|f| f.unit.len()).max().unwrap_or(0).max(5);
    let fw = figures.iter().filter_map(|f| f.floor).map(str::len).max().unwrap_or(0).max(15);
    println!(
        "{:<nw$} {:>10}  {:<uw$}  {:<fw$} {:>6}   target",
        "figure", "value", "unit", "floor", "ratio"
    );
    let mut misses = Vec::new();
    for f in figures {
        let ratio = f.ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}"));
        let target = f.target.map_or_else(|| "-".into(), |t| t.to_string());
        println!(
            "{:<nw$} {:>10.1}  {:<uw$}  {:<fw$} {:>6}   {}",
            f.name,
            f.value,
            f.unit,
            f.floor.unwrap_or("-"),
            ratio,
            target
        );
        if let (Some(r), Some(t)) = (f.ratio, f.target) {
            if r.is_nan() || !t.met(r) {
                misses.push(format!(
                    "{} is {r:.2}x {} (target {t})",
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
