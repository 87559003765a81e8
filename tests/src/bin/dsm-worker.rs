//! `dsm-worker`: one process of a multi-process integration test. Reads its session from the
//! `DSM_*` environment variables, runs one scenario, prints results on stdout and errors on
//! stderr, and exits non-zero on failure. The barrier, counter, ping-pong and bulk scenarios
//! print `rank R begin` when their timed part starts (after attach, and after the first barrier
//! where there is one), so that a test can act in the middle of it (e.g. cut the link).

use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Args {
    /// Coherence policy rank 0 advises for the whole region before the scenario starts.
    #[arg(long, global = true, value_parser = parse_coherence)]
    coherence: Option<dsm::Coherence>,
    #[command(subcommand)]
    scenario: Scenario,
}

fn parse_coherence(s: &str) -> Result<dsm::Coherence, String> {
    match s {
        "invalidate" => Ok(dsm::Coherence::Invalidate),
        "update" => Ok(dsm::Coherence::Update),
        "adaptive" => Ok(dsm::Coherence::Adaptive),
        other => Err(format!("unknown coherence '{other}' (invalidate, update, adaptive)")),
    }
}

static COHERENCE: std::sync::OnceLock<Option<dsm::Coherence>> = std::sync::OnceLock::new();

#[derive(Subcommand)]
enum Scenario {
    /// `rounds` barriers.
    Barrier {
        #[arg(long, default_value_t = 200)]
        rounds: u32,
    },
    /// Rank 0 and rank 1 hand a token back and forth `rounds` times with two semaphores.
    SemPingpong {
        #[arg(long, default_value_t = 1000)]
        rounds: u32,
    },
    /// Ranks 1.. each wait `per_waiter` times on one counting semaphore; rank 0 posts for all.
    SemCount {
        #[arg(long, default_value_t = 5)]
        per_waiter: u32,
    },
    /// One barrier; then rank `victim` prints its pid and sleeps, the others enter a second
    /// barrier and report how it ended.
    HangInBarrier {
        #[arg(long)]
        victim: u32,
    },
    /// Every rank attaches; rank `rank` then exits with status `code` without detaching, the
    /// others wait without touching DSM until they are stopped (so exactly one process fails).
    ExitRank {
        #[arg(long)]
        rank: u32,
        #[arg(long, default_value_t = 7)]
        code: i32,
    },
    /// Every rank does `adds` fetch_add(1) on one shared AtomicU64; rank 0 checks the total.
    Counter {
        #[arg(long, default_value_t = 10000)]
        adds: u64,
        /// Microseconds to sleep after each add (0: back to back).
        #[arg(long, default_value_t = 0)]
        gap_us: u64,
    },
    /// Busy-wait ring on one shared word, `rounds` hand-offs; each rank also bumps its own
    /// word on the same page while it waits (hot neighbours).
    SpinPingpong {
        #[arg(long, default_value_t = 1000)]
        rounds: u64,
    },
    /// Rank 1 spins on a read-only copy of a word nobody will change; rank 0 waits in a barrier
    /// that cannot complete. (For tests that stop the coordinator meanwhile.)
    SpinRead,
    /// Rank 0 read(2)s from a pipe straight into the region; the others verify the bytes.
    PipeRead,
    /// 8 threads per process fault concurrently on distinct and shared pages.
    Threads,
    /// Rank 0 writes `mib` MiB of a pseudo-random pattern with memcpy, the others verify its
    /// checksum; then every rank rewrites its own slice and verifies everyone else's.
    Bulk {
        #[arg(long, default_value_t = 64)]
        mib: usize,
    },
    /// A litmus test across processes: `iterations` rounds on fresh pages with plain (volatile)
    /// loads and stores; rank 0 checks that no round shows a non-SC outcome.
    Litmus {
        /// SB, MP, LB, 2+2W, CoRR or IRIW.
        #[arg(long)]
        test: String,
        #[arg(long, default_value_t = 2000)]
        iterations: usize,
    },
    /// A compare_exchange spin lock protecting a plain (non-atomic) counter; rank 0 checks it.
    Spinlock {
        #[arg(long, default_value_t = 1000)]
        iters: u64,
    },
    /// Every rank hammers stores on its own word of one shared page `stores` times (neighbours
    /// on one page must all make progress).
    Neighbours {
        #[arg(long, default_value_t = 2000)]
        stores: u64,
    },
    /// Rank 1 writes a word that rank 0 then reads (acknowledged), writes it again (owning the
    /// page) and hangs to be killed; rank 0, once its barrier reports the loss, reads the word
    /// back: the coordinator's last copy (the acknowledged value), never a hang.
    OwnerDies,
    /// Three processes, page runs across pages held elsewhere: rank 1 owns page 10 and reads
    /// page 12; rank 0 writes pages 0..=9 in order (its write-ahead must not take 10 or 12);
    /// rank 2 reads pages 0..=15 in order (a read-ahead run across owners); then rank 0
    /// writes page 10 after all and everyone reads it.
    RunsSplit,
    /// Fill the first `mib` MiB of the region (bytes 0x5c, each page's first 8 bytes its number),
    /// barrier, detach (every page written back).
    FillLeave {
        #[arg(long, default_value_t = 64)]
        mib: usize,
    },
    /// Attach a huge region, touch a few pages, report the resident memory.
    Huge {
        #[arg(long, default_value_t = 8)]
        touch: usize,
    },
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
    COHERENCE.set(args.coherence).expect("set once");
    match run(args.scenario) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(3);
        }
    }
}

fn run(scenario: Scenario) -> Result<(), dsm::Error> {
    let config = dsm::Config::from_env()?;
    match scenario {
        Scenario::Counter { adds, gap_us } => return counter(&config, adds, gap_us),
        Scenario::SpinPingpong { rounds } => return region_run(&config, |r| spin_pingpong(r, rounds)),
        Scenario::PipeRead => return region_run(&config, pipe_read),
        Scenario::SpinRead => return region_run(&config, spin_read),
        Scenario::Threads => return region_run(&config, threads),
        Scenario::Bulk { mib } => return region_run(&config, |r| bulk(r, mib)),
        Scenario::Huge { touch } => return region_run(&config, |r| huge(r, touch)),
        Scenario::RunsSplit => return region_run(&config, runs_split),
        Scenario::FillLeave { mib } => {
            let region = dsm::Region::attach(&config)?;
            let len = mib << 20;
            let dst = region.ptr_at(0, len).map_err(|e| dsm::Error::Config(e.to_string()))?;
            // SAFETY: inside the region (ptr_at checked the range).
            unsafe { std::ptr::write_bytes(dst, 0x5c, len) };
            // Each page starts with its number, so a page written back in the wrong place shows.
            for page in 0..len / 4096 {
                // SAFETY: as above; 8 bytes at the start of a page inside the range.
                unsafe { std::ptr::write_unaligned(dst.add(page * 4096).cast::<u64>(), page as u64) };
            }
            region.barrier()?;
            region.detach()?;
            println!("filled {mib} MiB and detached");
            return Ok(());
        }
        Scenario::Litmus { test, iterations } => return region_run(&config, |r| litmus(r, &test, iterations)),
        Scenario::Spinlock { iters } => return region_run(&config, |r| spinlock(r, iters)),
        Scenario::OwnerDies => return region_run(&config, owner_dies),
        Scenario::Neighbours { stores } => return region_run(&config, |r| neighbours(r, stores)),
        _ => {}
    }
    let s = dsm::Session::attach(&config)?;
    let rank = s.rank();
    println!("attached rank {rank} of {} pid {}", s.nprocs(), std::process::id());
    match scenario {
        Scenario::Barrier { rounds } => {
            println!("rank {rank} begin");
            for _ in 0..rounds {
                s.barrier()?;
            }
            println!("rank {rank} done {rounds} barriers");
        }
        Scenario::SemPingpong { rounds } => {
            let ping = s.semaphore("ping")?;
            let pong = s.semaphore("pong")?;
            for _ in 0..rounds {
                match rank {
                    0 => {
                        ping.post()?;
                        pong.wait()?;
                    }
                    1 => {
                        ping.wait()?;
                        pong.post()?;
                    }
                    _ => {}
                }
            }
            println!("rank {rank} done {rounds} hand-offs");
        }
        Scenario::SemCount { per_waiter } => {
            let sem = s.semaphore("count")?;
            s.barrier()?;
            if rank == 0 {
                for _ in 0..per_waiter * (s.nprocs() - 1) {
                    sem.post()?;
                }
            } else {
                for _ in 0..per_waiter {
                    sem.wait()?;
                }
            }
            s.barrier()?;
            println!("rank {rank} done");
        }
        Scenario::HangInBarrier { victim } => {
            s.barrier()?;
            if rank == victim {
                println!("victim ready pid {}", std::process::id());
                std::thread::sleep(Duration::from_secs(600));
            }
            println!("entering second barrier");
            s.barrier()?;
            println!("second barrier passed");
        }
        Scenario::ExitRank { rank: victim, code } => {
            if rank == victim {
                println!("rank {rank} exits with status {code}");
                std::process::exit(code);
            }
            loop {
                std::thread::park();
            }
        }
        _ => unreachable!("region scenarios are handled above"),
    }
    s.detach()
}

fn advise(region: &dsm::Region) -> Result<(), dsm::Error> {
    if let Some(c) = COHERENCE.get().copied().flatten() {
        if region.rank() == 0 {
            region.advise(0, region.len(), c)?;
        }
    }
    Ok(())
}

fn counter(config: &dsm::Config, adds: u64, gap_us: u64) -> Result<(), dsm::Error> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let region = dsm::Region::attach(config)?;
    advise(&region)?;
    let rank = region.rank();
    println!("attached rank {rank} of {} pid {}", region.nprocs(), std::process::id());
    let c: &[AtomicU64] = region.as_slice(0, 1).expect("fits");
    region.barrier()?;
    println!("rank {rank} begin");
    for _ in 0..adds {
        c[0].fetch_add(1, Ordering::SeqCst);
        if gap_us > 0 {
            std::thread::sleep(std::time::Duration::from_micros(gap_us));
        }
    }
    region.barrier()?;
    let total = c[0].load(Ordering::SeqCst);
    let expect = adds * u64::from(region.nprocs());
    println!("rank {rank} total {total} expected {expect} stats {:?}", region.stats()?);
    if total != expect {
        eprintln!("error: counter is {total}, expected {expect}");
        std::process::exit(4);
    }
    region.detach()
}

type Check = Result<(), String>;

fn region_run(config: &dsm::Config, f: impl FnOnce(&dsm::Region) -> Check) -> Result<(), dsm::Error> {
    let region = dsm::Region::attach(config)?;
    println!("attached rank {} of {} pid {}", region.rank(), region.nprocs(), std::process::id());
    advise(&region)?;
    if let Err(e) = f(&region) {
        eprintln!("error: rank {}: {e}", region.rank());
        std::process::exit(4);
    }
    println!("rank {} ok stats {:?}", region.rank(), region.stats()?);
    region.detach()
}

fn spin_pingpong(region: &dsm::Region, rounds: u64) -> Check {
    use std::sync::atomic::{AtomicU64, Ordering};
    let words: &[AtomicU64] = region.as_slice(0, 1 + region.nprocs() as usize).map_err(|e| e.to_string())?;
    let (rank, n) = (u64::from(region.rank()), u64::from(region.nprocs()));
    region.barrier().map_err(|e| e.to_string())?;
    println!("rank {rank} passed the first barrier");
    println!("rank {rank} begin");
    let mut spins = 0u64;
    loop {
        let t = words[0].load(Ordering::SeqCst);
        if t >= rounds {
            break;
        }
        if t % n == rank {
            words[0].store(t + 1, Ordering::SeqCst);
        } else {
            // Hot neighbour data on the same page as the turn word.
            words[1 + rank as usize].fetch_add(1, Ordering::Relaxed);
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            }
        }
    }
    region.barrier().map_err(|e| e.to_string())?;
    let t = words[0].load(Ordering::SeqCst);
    if t != rounds {
        return Err(format!("turn ended at {t}, expected {rounds}"));
    }
    println!("rank {rank} done {rounds} hand-offs");
    Ok(())
}

fn runs_split(region: &dsm::Region) -> Check {
    const P: usize = 4096;
    const HELD: usize = 5;
    let e = |e: dsm::Error| e.to_string();
    let cell = |page: usize| -> Result<&dsm::SharedCell<u64>, String> {
        region.as_slice::<dsm::SharedCell<u64>>(page * P, 1).map(|s| &s[0]).map_err(|e| e.to_string())
    };
    let rank = region.rank();
    if region.nprocs() != 3 {
        return Err("runs-split needs 3 processes".into());
    }
    region.barrier().map_err(e)?;
    // Rank 1 holds page 5 (written) and a read-only copy of 12; rank 0 then writes pages 0..=9
    // except 5 in order, so its write-ahead asks for 5 too, which must be denied.
    if rank == 1 {
        cell(HELD)?.set(0x11);
        cell(12)?.get();
    }
    region.barrier().map_err(e)?;
    if rank == 0 {
        for p in (0..=9).filter(|&p| p != HELD) {
            cell(p)?.set(0x22);
        }
    }
    region.barrier().map_err(e)?;
    let stats = region.stats().map_err(e)?;
    match rank {
        0 if stats.write_ahead_denied == 0 => return Err(format!("write-ahead was never denied: {stats:?}")),
        1 if stats.pages_recalled + stats.pages_invalidated + stats.pages_downgraded > 0 => {
            return Err(format!("write-ahead took a page this process held: {stats:?}"));
        }
        _ => {}
    }
    // Only now may rank 2's reads downgrade rank 1's page.
    region.barrier().map_err(e)?;
    let stats = region.stats().map_err(e)?;
    if rank == 2 {
        for p in 0..=15 {
            let want = match p {
                HELD => 0x11,
                0..=9 => 0x22,
                _ => 0,
            };
            let got = cell(p)?.get();
            if got != want {
                return Err(format!("page {p} reads {got:#x}, expected {want:#x}"));
            }
        }
        let stats = region.stats().map_err(e)?;
        if stats.runs_received == 0 {
            return Err(format!("the sequential reads came page by page: {stats:?}"));
        }
    }
    region.barrier().map_err(e)?;
    if rank == 0 {
        cell(HELD)?.set(0x33);
    }
    region.barrier().map_err(e)?;
    let got = cell(HELD)?.get();
    if got != 0x33 {
        return Err(format!("page {HELD} reads {got:#x} after rank 0 wrote it"));
    }
    println!("rank {rank} runs-split ok: {stats:?}");
    Ok(())
}

fn spin_read(region: &dsm::Region) -> Check {
    use std::sync::atomic::{AtomicU64, Ordering};
    let word: &[AtomicU64] = region.as_slice(0, 1).map_err(|e| e.to_string())?;
    region.barrier().map_err(|e| e.to_string())?;
    if region.rank() == 0 {
        println!("rank 0 waiting in a barrier");
        // The other rank never enters it.
        return region.barrier().map_err(|e| e.to_string());
    }
    let first = word[0].load(Ordering::SeqCst); // fetches a read-only copy
    println!("rank {} spinning on a read-only copy", region.rank());
    while word[0].load(Ordering::SeqCst) == first {
        std::hint::spin_loop();
    }
    Err("the word changed, but nobody writes it".into())
}

fn pattern_byte(i: usize, seed: u64) -> u8 {
    let mut x = (i as u64) ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 29;
    x as u8
}

fn pipe_read(region: &dsm::Region) -> Check {
    const OFF: usize = 4096 + 100; // straddles into a second page
    const LEN: usize = 6000;
    let buf: &[dsm::SharedCell<u8>] = region.as_slice(OFF, LEN).map_err(|e| e.to_string())?;
    let dst = region.ptr_at(OFF, LEN).map_err(|e| e.to_string())?;
    if region.rank() == 0 {
        let mut fds = [0i32; 2];
        // SAFETY: test code: plain pipe/write/read syscalls on valid buffers. The read(2)
        // destination is the shared region: the kernel itself faults on pages this process does
        // not have yet, which the runtime's fault thread must serve.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let data: Vec<u8> = (0..LEN).map(|i| pattern_byte(i, 7)).collect();
            let w = std::thread::spawn(move || {
                let n = libc::write(fds[1], data.as_ptr().cast(), data.len());
                libc::close(fds[1]);
                n
            });
            let mut got = 0usize;
            while got < LEN {
                let n = libc::read(fds[0], dst.add(got).cast::<libc::c_void>(), LEN - got);
                if n <= 0 {
                    return Err(format!("read(2) into the region failed: {}", std::io::Error::last_os_error()));
                }
                got += n as usize;
            }
            libc::close(fds[0]);
            assert_eq!(w.join().unwrap(), LEN as isize);
        }
    }
    region.barrier().map_err(|e| e.to_string())?;
    for (i, b) in buf.iter().map(dsm::SharedCell::get).enumerate() {
        if b != pattern_byte(i, 7) {
            return Err(format!("byte {i} is {b}, expected {}", pattern_byte(i, 7)));
        }
    }
    Ok(())
}

fn threads(region: &dsm::Region) -> Check {
    use std::sync::atomic::{AtomicU64, Ordering};
    const T: usize = 8;
    let n = region.nprocs() as usize;
    let rank = region.rank() as usize;
    let words: &[AtomicU64] = region.as_slice_all().map_err(|e| e.to_string())?;
    let per_page = 4096 / 8;
    if words.len() < (1 + n * T) * per_page {
        return Err("region too small".into());
    }
    region.barrier().map_err(|e| e.to_string())?;
    std::thread::scope(|s| {
        for t in 0..T {
            s.spawn(move || {
                let own = (1 + rank * T + t) * per_page;
                for i in 0..per_page {
                    words[own + i].store((rank * 1000 + t * 10) as u64 + i as u64, Ordering::Relaxed);
                    if i % 64 == 0 {
                        words[0].fetch_add(1, Ordering::SeqCst); // shared page
                    }
                }
            });
        }
    });
    region.barrier().map_err(|e| e.to_string())?;
    let total = words[0].load(Ordering::SeqCst);
    let expect = (n * T * per_page / 64) as u64;
    if total != expect {
        return Err(format!("shared counter {total}, expected {expect}"));
    }
    for r in 0..n {
        for t in 0..T {
            let own = (1 + r * T + t) * per_page;
            for i in (0..per_page).step_by(37) {
                let v = words[own + i].load(Ordering::Relaxed);
                if v != (r * 1000 + t * 10) as u64 + i as u64 {
                    return Err(format!("rank {r} thread {t} word {i} is {v}"));
                }
            }
        }
    }
    Ok(())
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.chunks(8).fold(0xcbf2_9ce4_8422_2325u64, |h, c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        (h ^ u64::from_le_bytes(w)).wrapping_mul(0x100_0000_01b3)
    })
}

fn bulk(region: &dsm::Region, mib: usize) -> Check {
    let len = mib << 20;
    let rank = region.rank() as usize;
    let n = region.nprocs() as usize;
    let mem: &[dsm::SharedCell<u64>] = region.as_slice(0, len / 8).map_err(|e| e.to_string())?;
    let ptr = region.ptr_at(0, len).map_err(|e| e.to_string())?;
    // Reads a range of the region as bytes, 8 at a time (volatile loads).
    let bytes = |from: usize, to: usize| -> Vec<u8> {
        let words: Vec<u8> = mem[from / 8..to.div_ceil(8)].iter().flat_map(|w| w.get().to_le_bytes()).collect();
        words[from % 8..from % 8 + (to - from)].to_vec()
    };
    let pattern: Vec<u8> = (0..len).map(|i| pattern_byte(i, 1)).collect();
    let expect = checksum(&pattern);
    if rank == 0 {
        // SAFETY: test code; the destination lies inside the region (checked by as_slice).
        unsafe { std::ptr::copy_nonoverlapping(pattern.as_ptr(), ptr, len) };
    }
    region.barrier().map_err(|e| e.to_string())?;
    println!("rank {rank} begin");
    let got = checksum(&bytes(0, len));
    if got != expect {
        return Err(format!("checksum {got:#x}, expected {expect:#x}"));
    }
    region.barrier().map_err(|e| e.to_string())?;
    let slice = len / n;
    let mine: Vec<u8> = (0..slice).map(|i| pattern_byte(i, 100 + rank as u64)).collect();
    // SAFETY: test code; each rank writes only its own slice inside the region.
    unsafe { std::ptr::copy_nonoverlapping(mine.as_ptr(), ptr.add(rank * slice), slice) };
    region.barrier().map_err(|e| e.to_string())?;
    for r in 0..n {
        let theirs: Vec<u8> = (0..slice).map(|i| pattern_byte(i, 100 + r as u64)).collect();
        if checksum(&bytes(r * slice, (r + 1) * slice)) != checksum(&theirs) {
            return Err(format!("slice of rank {r} differs"));
        }
    }
    Ok(())
}

fn resident_mib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    (statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096) >> 20
}

fn huge(region: &dsm::Region, touch: usize) -> Check {
    use std::sync::atomic::{AtomicU64, Ordering};
    let len = region.len();
    let step = len / touch;
    for i in 0..touch {
        let w: &[AtomicU64] = region.as_slice(i * step, 1).map_err(|e| e.to_string())?;
        if region.rank() == 0 {
            w[0].store(i as u64 + 1, Ordering::SeqCst);
        }
    }
    region.barrier().map_err(|e| e.to_string())?;
    for i in 0..touch {
        let w: &[AtomicU64] = region.as_slice(i * step, 1).map_err(|e| e.to_string())?;
        let v = w[0].load(Ordering::SeqCst);
        if v != i as u64 + 1 {
            return Err(format!("page {i} holds {v}"));
        }
    }
    let stats = region.stats().map_err(|e| e.to_string())?;
    let rss = resident_mib();
    println!("huge: region {} GiB, resident {rss} MiB, pages fetched {}, ownership requests {}", len >> 30, stats.pages_fetched, stats.ownership_requests);
    if rss > 256 {
        return Err(format!("resident memory {rss} MiB for a few touched pages"));
    }
    if stats.pages_fetched + stats.ownership_requests > 2 * touch as u64 {
        return Err(format!("touching {touch} pages moved {} pages", stats.pages_fetched + stats.ownership_requests));
    }
    Ok(())
}

/// Region bytes a litmus run of `iterations` rounds needs (4 variables of one page each per
/// round, then the results).
pub fn litmus_size(iterations: usize, nprocs: usize) -> usize {
    (1 + iterations * 4) * 4096 + iterations * nprocs * 2 * 8 + 4096
}

fn litmus(region: &dsm::Region, test: &str, iterations: usize) -> Check {
    use std::ptr::{read_volatile, write_volatile};
    let n = region.nprocs() as usize;
    let rank = region.rank() as usize;
    let procs = match test {
        "IRIW" => 4,
        "SB" | "MP" | "LB" | "2+2W" | "CoRR" => 2,
        other => return Err(format!("unknown litmus test {other}")),
    };
    if n != procs {
        return Err(format!("{test} needs {procs} processes, the session has {n}"));
    }
    if region.len() < litmus_size(iterations, n) {
        return Err(format!("region too small: need {} bytes", litmus_size(iterations, n)));
    }
    let base = region.as_ptr();
    // Variable v of round i lives alone on page 1 + 4i + v.
    let var = |i: usize, v: usize| -> *mut u64 {
        // SAFETY: inside the region (size checked above).
        unsafe { base.add((1 + i * 4 + v) * 4096).cast::<u64>() }
    };
    let mut regs = vec![[0u64; 2]; iterations];
    let mut jitter = 0x1234_5678_u64 ^ (rank as u64) << 32;
    for (i, r) in regs.iter_mut().enumerate() {
        region.barrier().map_err(|e| e.to_string())?;
        // A little random skew so every interleaving gets its chance.
        jitter ^= jitter << 13;
        jitter ^= jitter >> 7;
        jitter ^= jitter << 17;
        for _ in 0..(jitter % 300) {
            std::hint::spin_loop();
        }
        let (x, y) = (var(i, 0), var(i, 1));
        // SAFETY: x and y are aligned u64 slots inside the region; volatile keeps each access a
        // single plain load or store, in program order, as a C program would issue them.
        unsafe {
            match (test, rank) {
                ("SB", 0) => { write_volatile(x, 1); r[0] = read_volatile(y); }
                ("SB", 1) => { write_volatile(y, 1); r[0] = read_volatile(x); }
                ("MP", 0) => { write_volatile(x, 1); write_volatile(y, 1); }
                ("MP", 1) => { r[0] = read_volatile(y); r[1] = read_volatile(x); }
                ("LB", 0) => { r[0] = read_volatile(x); write_volatile(y, 1); }
                ("LB", 1) => { r[0] = read_volatile(y); write_volatile(x, 1); }
                ("2+2W", 0) => { write_volatile(x, 1); write_volatile(y, 2); }
                ("2+2W", 1) => { write_volatile(y, 1); write_volatile(x, 2); }
                ("CoRR", 0) => { write_volatile(x, 1); }
                ("CoRR", 1) => { r[0] = read_volatile(x); r[1] = read_volatile(x); }
                ("IRIW", 0) => { write_volatile(x, 1); }
                ("IRIW", 1) => { write_volatile(y, 1); }
                ("IRIW", 2) => { r[0] = read_volatile(x); r[1] = read_volatile(y); }
                ("IRIW", 3) => { r[0] = read_volatile(y); r[1] = read_volatile(x); }
                _ => {}
            }
        }
    }
    // Publish the registers: results[i][rank][k] after the variables.
    let results = (1 + iterations * 4) * 4096;
    let slot = |i: usize, p: usize, k: usize| -> *mut u64 {
        // SAFETY: inside the region (litmus_size accounts for the results).
        unsafe { base.add(results + ((i * n + p) * 2 + k) * 8).cast::<u64>() }
    };
    region.barrier().map_err(|e| e.to_string())?;
    for (i, r) in regs.iter().enumerate() {
        for (k, v) in r.iter().enumerate() {
            // SAFETY: see `slot`.
            unsafe { write_volatile(slot(i, rank, k), *v) };
        }
    }
    region.barrier().map_err(|e| e.to_string())?;
    if rank != 0 {
        return Ok(());
    }
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    let mut bad = Vec::new();
    for i in 0..iterations {
        // SAFETY: see `slot` and `var`.
        let (g, fx, fy) = unsafe {
            let g = |p: usize, k: usize| read_volatile(slot(i, p, k));
            (
                [[g(0, 0), g(0, 1)], [g(1, 0), g(1, 1)], [g(2 % n, 0), g(2 % n, 1)], [g(3 % n, 0), g(3 % n, 1)]],
                read_volatile(var(i, 0)),
                read_volatile(var(i, 1)),
            )
        };
        let (key, forbidden) = match test {
            "SB" => (format!("r0={} r1={}", g[0][0], g[1][0]), g[0][0] == 0 && g[1][0] == 0),
            "MP" => (format!("y={} x={}", g[1][0], g[1][1]), g[1][0] == 1 && g[1][1] == 0),
            "LB" => (format!("r0={} r1={}", g[0][0], g[1][0]), g[0][0] == 1 && g[1][0] == 1),
            "2+2W" => (format!("x={fx} y={fy}"), fx == 1 && fy == 1),
            "CoRR" => (format!("r0={} r1={}", g[1][0], g[1][1]), g[1][0] == 1 && g[1][1] == 0),
            "IRIW" => (
                format!("P2=({},{}) P3=({},{})", g[2][0], g[2][1], g[3][0], g[3][1]),
                g[2] == [1, 0] && g[3] == [1, 0],
            ),
            _ => unreachable!(),
        };
        if forbidden {
            bad.push(i);
        }
        *outcomes.entry(key).or_default() += 1;
    }
    println!("litmus {test}: {iterations} rounds, outcomes {outcomes:?}");
    if !bad.is_empty() {
        return Err(format!("{test}: {} non-SC outcomes (first in round {})", bad.len(), bad[0]));
    }
    Ok(())
}

fn spinlock(region: &dsm::Region, iters: u64) -> Check {
    use std::sync::atomic::{AtomicU64, Ordering};
    let lock: &[AtomicU64] = region.as_slice(0, 1).map_err(|e| e.to_string())?;
    let counter = region.as_ptr().wrapping_add(64).cast::<u64>();
    region.barrier().map_err(|e| e.to_string())?;
    for _ in 0..iters {
        let mut spins = 0u32;
        while lock[0].compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            }
            std::hint::spin_loop();
        }
        // SAFETY: test code; the lock serializes every access to this word across processes.
        unsafe {
            let v = std::ptr::read_volatile(counter);
            std::ptr::write_volatile(counter, v + 1);
        }
        lock[0].store(0, Ordering::Release);
    }
    region.barrier().map_err(|e| e.to_string())?;
    // SAFETY: after the barrier nobody writes any more.
    let total = unsafe { std::ptr::read_volatile(counter) };
    let expect = iters * u64::from(region.nprocs());
    println!("rank {} spinlock total {total} expected {expect} stats {:?}", region.rank(), region.stats().map_err(|e| e.to_string())?);
    if total != expect {
        return Err(format!("counter {total}, expected {expect}"));
    }
    Ok(())
}

fn neighbours(region: &dsm::Region, stores: u64) -> Check {
    let rank = region.rank() as usize;
    let n = region.nprocs() as usize;
    let base = region.as_ptr().cast::<u64>();
    region.barrier().map_err(|e| e.to_string())?;
    for i in 1..=stores {
        // SAFETY: test code; word `rank` of page 0 is inside the region.
        unsafe { std::ptr::write_volatile(base.add(rank), i) };
    }
    region.barrier().map_err(|e| e.to_string())?;
    for r in 0..n {
        // SAFETY: as above.
        let v = unsafe { std::ptr::read_volatile(base.add(r)) };
        if v != stores {
            return Err(format!("rank {r}'s word is {v}, expected {stores}"));
        }
    }
    println!("rank {rank} neighbours done stats {:?}", region.stats().map_err(|e| e.to_string())?);
    Ok(())
}

fn owner_dies(region: &dsm::Region) -> Check {
    use std::sync::atomic::{AtomicU64, Ordering};
    let w: &[AtomicU64] = region.as_slice(0, 1).map_err(|e| e.to_string())?;
    if region.rank() == 1 {
        w[0].store(1, Ordering::SeqCst);
    }
    region.barrier().map_err(|e| e.to_string())?;
    if region.rank() == 0 {
        let v = w[0].load(Ordering::SeqCst);
        if v != 1 {
            return Err(format!("read {v} before the loss, expected 1"));
        }
    }
    region.barrier().map_err(|e| e.to_string())?;
    if region.rank() == 1 {
        w[0].store(2, Ordering::SeqCst); // owned again, never acknowledged to anyone
        println!("victim ready pid {}", std::process::id());
        std::thread::sleep(std::time::Duration::from_secs(600));
    }
    println!("entering barrier");
    match region.barrier() {
        Err(e) => println!("barrier failed: {e}"),
        Ok(()) => return Err("the barrier passed although rank 1 is gone".into()),
    }
    let v = w[0].load(Ordering::SeqCst);
    println!("after the loss the word reads {v}");
    if v != 1 {
        return Err(format!("after the loss the word reads {v}, expected the acknowledged 1"));
    }
    Ok(())
}
