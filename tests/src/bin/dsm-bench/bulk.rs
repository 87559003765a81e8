//! Bulk-data figures (page runs, write-ahead, home copies), each over a floor measured in the
//! same run:
//!
//! * `touch.first_write` (MB/s): a one-process session writes every byte of 256 MiB nobody
//!   touched (`write_bytes`), over `native.first_touch`: the same writes to a fresh private
//!   anonymous allocation of the same size in this process.
//! * `touch.detach_writeback` (MB/s): the same session's `detach`, which writes the 256 MiB back
//!   to the coordinator, over `quinn.stream` (no target: a program's exit waits for it).
//! * `touch.write_shared` (MB/s): a helper fills 256 MiB, this process reads one byte of every
//!   page (both now hold every page read-only), then writes every byte, over `quinn.stream`.
//! * `fault.read_home` (µs): a helper fills pages, a second helper reads them all (so their
//!   home copies are current and nobody owns them), then this process touches them in a
//!   scattered order (no read-ahead), over `quinn.rtt_4k`. Direct transfers off (with them the
//!   second helper's pages would come from the first, leaving the home behind).
//! * `app.contrast.{2p,4p}` (ms): the `contrast` example on a generated 4096×4096 image, rank
//!   0's time from attach to the last barrier, over `app.contrast.1p`.
//! * `coordinator.rss_after` (MiB): a coordinator process's resident memory after a 256 MiB
//!   session whose pages were all written back ended, over `coordinator.rss_idle`, the same
//!   process's before the session.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use dsm_tests::coordinator_process::CoordinatorProcess;
use dsm_tests::{session_name, sibling_binary, TestEnv, Workers};

use super::{attach, median_us, Figure, Target, WorkerKind, PAGE};

/// Bytes of the touch figures.
const TOUCH_BYTES: usize = 256 << 20;
/// Pages of `fault.read_home`.
const HOME_PAGES: usize = 2000;
/// The contrast image.
const CONTRAST: &str = "4096x4096";
const CONTRAST_BYTES: u64 = 16 + 4096 * 4096;
/// The session whose memory `coordinator.rss_after` measures.
const RSS_BYTES: usize = 256 << 20;

pub(super) fn measure(env: &TestEnv, selected: &dyn Fn(&str) -> bool, figures: &mut Vec<Figure>) -> Result<()> {
    if selected("touch.first_write") || selected("touch.detach_writeback") {
        let native = native_first_touch().context("measuring native.first_touch")?;
        figures.push(Figure::floor("native.first_touch", native, "MB/s"));
        let (v, detach) = first_write(env).context("measuring touch.first_write")?;
        figures.push(Figure::over(figures, "touch.first_write", v, "MB/s", "native.first_touch", Some(Target::AtLeast(0.3))));
        figures.push(Figure::over(figures, "touch.detach_writeback", detach, "MB/s", "quinn.stream", None));
    }
    if selected("touch.write_shared") {
        let v = write_shared(env).context("measuring touch.write_shared")?;
        figures.push(Figure::over(figures, "touch.write_shared", v, "MB/s", "quinn.stream", Some(Target::AtLeast(0.5))));
    }
    if selected("fault.read_home") {
        // Without direct transfers: with them the second helper's reads would leave the home
        // behind (the pages come from the first helper), and the figure is the home's path.
        let v = median_us(&super::without_direct(|| read_home(env)).context("measuring fault.read_home")?);
        figures.push(Figure::over(figures, "fault.read_home", v, "us", "quinn.rtt_4k", Some(Target::AtMost(1.5))));
    }
    if ["app.contrast.1p", "app.contrast.2p", "app.contrast.4p"].iter().any(|n| selected(n)) {
        let one = contrast(env, 1).context("measuring app.contrast.1p")?;
        figures.push(Figure::floor("app.contrast.1p", one, "ms"));
        for (name, n) in [("app.contrast.2p", 2), ("app.contrast.4p", 4)] {
            let v = contrast(env, n).with_context(|| format!("measuring {name}"))?;
            figures.push(Figure::over(figures, name, v, "ms", "app.contrast.1p", Some(Target::AtMost(3.0))));
        }
    }
    if ["coordinator.rss_idle", "coordinator.rss_after"].iter().any(|n| selected(n)) {
        let (idle, after) = coordinator_rss().context("measuring coordinator.rss_after")?;
        figures.push(Figure::floor("coordinator.rss_idle", idle, "MiB"));
        figures.push(Figure::over(figures, "coordinator.rss_after", after, "MiB", "coordinator.rss_idle", Some(Target::AtMost(1.5))));
    }
    Ok(())
}

/// MB/s of writing `TOUCH_BYTES` into a fresh zeroed allocation (its pages are mapped on first
/// write, as the region's are).
fn native_first_touch() -> Result<f64> {
    // A zeroed allocation this large is a fresh anonymous mapping nothing has touched.
    let mut buf = vec![0u8; TOUCH_BYTES];
    let t = Instant::now();
    buf.fill(0xa5);
    // Keeps the stores: without a use of the buffer they are dead and may be dropped.
    std::hint::black_box(&mut buf);
    let took = t.elapsed();
    ensure!(buf[TOUCH_BYTES - 1] == 0xa5, "the buffer was not written");
    Ok(TOUCH_BYTES as f64 / took.as_secs_f64() / 1e6)
}

/// `touch.first_write` and `touch.detach_writeback`, both in MB/s.
fn first_write(env: &TestEnv) -> Result<(f64, f64)> {
    let r: dsm::Region = attach(env, &session_name("bench-first-write"), 1, TOUCH_BYTES as u64)?;
    let dst = r.ptr_at(0, TOUCH_BYTES)?;
    let t = Instant::now();
    // SAFETY: inside the region (ptr_at checked the range); this process is its only user.
    unsafe { std::ptr::write_bytes(dst, 0xa5, TOUCH_BYTES) };
    let took = t.elapsed();
    let stats = r.stats().context("stats")?;
    ensure!(stats.bytes_received == 0, "untouched pages came with {} bytes of data", stats.bytes_received);
    // Detaching writes every page back to the coordinator.
    let t = Instant::now();
    r.detach().context("detaching")?;
    let detach = t.elapsed();
    Ok((TOUCH_BYTES as f64 / took.as_secs_f64() / 1e6, TOUCH_BYTES as f64 / detach.as_secs_f64() / 1e6))
}

fn write_shared(env: &TestEnv) -> Result<f64> {
    let session = session_name("bench-write-shared");
    let pages = TOUCH_BYTES / PAGE;
    super::with_helpers(env, &session, 2, TOUCH_BYTES as u64, WorkerKind::Fill, pages, |r: &dsm::Region| {
        r.barrier().context("barrier after the helper's writes")?;
        let base = r.ptr_at(0, TOUCH_BYTES)?;
        for p in 0..pages {
            // SAFETY: inside the region.
            let v = unsafe { std::ptr::read_volatile(base.add(p * PAGE)) };
            ensure!(v == 0xa5, "page {p} reads {v:#x} after the helper filled it");
        }
        let before = r.stats().context("stats")?;
        let t = Instant::now();
        // SAFETY: inside the region; the helper only waits in its barrier now.
        unsafe { std::ptr::write_bytes(base, 0x5a, TOUCH_BYTES) };
        let took = t.elapsed();
        if std::env::var_os("DSM_BENCH_STATS").is_some() {
            eprintln!("write_shared: rank 0 before the writes {before:?}\nand after {:?}", r.stats()?);
        }
        r.barrier().context("final barrier")?;
        Ok(TOUCH_BYTES as f64 / took.as_secs_f64() / 1e6)
    })
}

fn read_home(env: &TestEnv) -> Result<Vec<Duration>> {
    let session = session_name("bench-read-home");
    let size = (HOME_PAGES * PAGE) as u64;
    let exe = std::env::current_exe().context("locating the benchmark binary")?;
    let worker_env = super::helper_env(env, env.addr(), &session, size, 3);
    let rounds = HOME_PAGES.to_string();
    let mut helpers = Workers::spawn(&exe, &["--worker", WorkerKind::FillWait.arg(), "--rounds", &rounds], &worker_env, 1);
    helpers.add(&exe, &["--worker", WorkerKind::ReadAll.arg(), "--rounds", &rounds], &worker_env);
    let body = || -> Result<Vec<Duration>> {
        let r: dsm::Region = attach(env, &session, 3, size)?;
        r.barrier().context("barrier after the fill")?;
        r.barrier().context("barrier after the other helper's reads")?;
        let base = r.ptr_at(0, HOME_PAGES * PAGE)?;
        let mut samples = Vec::with_capacity(HOME_PAGES);
        for i in 0..HOME_PAGES {
            // A scattered order: no read-ahead, every access a cold fault on a page whose home
            // copy is current.
            let p = (i * 7919) % HOME_PAGES;
            let t = Instant::now();
            // SAFETY: inside the region.
            let v = unsafe { std::ptr::read_volatile(base.add(p * PAGE)) };
            samples.push(t.elapsed());
            ensure!(v == 0xa5, "page {p} reads {v:#x}");
        }
        let downgrades = r.stats().context("stats")?.pages_fetched;
        ensure!(downgrades as usize >= HOME_PAGES, "{downgrades} pages fetched");
        r.barrier().context("final barrier")?;
        r.detach().context("detaching")?;
        Ok(samples)
    };
    let result = body();
    let codes = helpers.wait_all(Duration::from_secs(60));
    if result.is_ok() && codes.iter().any(|c| *c != Some(0)) {
        bail!("helpers exited with {codes:?}:\n{}", helpers.transcript());
    }
    result.map_err(|e| e.context(format!("helper output:\n{}", helpers.transcript())))
}

/// Rank 0's time of the `contrast` example with `nprocs` processes, in ms.
fn contrast(env: &TestEnv, nprocs: u32) -> Result<f64> {
    let exe = sibling_binary("contrast");
    ensure!(exe.is_file(), "{} is not built (cargo build --release -p dsm-examples)", exe.display());
    let session = session_name("bench-contrast");
    let worker_env = env.worker_env(env.addr(), &session, CONTRAST_BYTES, nprocs);
    let mut w = Workers::spawn(&exe, &["--generate", CONTRAST], &worker_env, nprocs as usize);
    let codes = w.wait_all(Duration::from_secs(300));
    ensure!(codes.iter().all(|c| *c == Some(0)), "contrast exited with {codes:?}:\n{}", w.transcript());
    let line = w
        .seen
        .iter()
        .find(|l| l.text.starts_with("result:"))
        .with_context(|| format!("no result line:\n{}", w.transcript()))?;
    ensure!(line.text.contains("correct=true"), "{}", line.text);
    let micros: f64 = line
        .text
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("micros="))
        .with_context(|| format!("no micros= in {}", line.text))?
        .parse()?;
    Ok(micros / 1e3)
}

/// Resident memory of process `pid` in MiB (VmRSS).
fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// (idle, after) resident MiB of a coordinator process around a 256 MiB session whose pages
/// were all written back to it.
fn coordinator_rss() -> Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    dsm_cert::generate(dir.path(), &[]).context("dev certificates")?;
    let certs = dir.path().to_str().context("a UTF-8 temporary path")?.to_string();
    let mut c = CoordinatorProcess::start(&[], &["--listen", "127.0.0.1:0", "--cert-dir", &certs], &dir.path().join("log"));
    let idle = rss_mib(c.pid())?;
    let config = dsm::Config::builder()
        .coordinator(c.addr.to_string())
        .cert_dir(Path::new(&certs))
        .session(session_name("bench-rss"))
        .size(RSS_BYTES as u64)
        .nprocs(1)
        .build()?;
    let r = dsm::Region::attach(&config)?;
    let dst = r.ptr_at(0, RSS_BYTES)?;
    // SAFETY: inside the region; this process is its only user.
    unsafe { std::ptr::write_bytes(dst, 0xa5, RSS_BYTES) };
    r.detach()?; // writes every page back: 256 MiB of home copies at the coordinator
    let during = c.wait_log(Duration::from_secs(30), |t| t.contains("session ended") && t.contains("connection closed"));
    ensure!(during.contains("session ended"), "the session did not end");
    // Steady state: quinn drains a closed connection for a few round trips before it drops it.
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_mib(c.pid())?;
    if std::env::var_os("DSM_BENCH_STATS").is_some() {
        // The mappings holding the most resident memory, to see what stayed.
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", c.pid()))?;
        let mut maps: Vec<(u64, String)> = Vec::new();
        let mut name = String::new();
        for line in smaps.lines() {
            if let Some(kib) = line.strip_prefix("Rss:") {
                let kib: u64 = kib.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
                maps.push((kib, name.clone()));
            } else if line.split_whitespace().next().is_some_and(|w| w.contains('-') && !w.ends_with(':')) {
                name = line.to_string();
            }
        }
        maps.sort_unstable_by_key(|m| std::cmp::Reverse(m.0));
        for (kib, name) in maps.iter().take(6) {
            eprintln!("coordinator.rss_after: {kib} KiB in {name}");
        }
    }
    Ok((idle, after))
}
