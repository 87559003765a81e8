//! Helpers shared by the example programs in `src/bin/`.
//!
//! Every example reads its session from the `DSM_*` environment variables
//! ([`dsm::Config::from_env`]), runs on every rank, and rank 0 prints one line
//!
//! ```text
//! result: key=value ... correct=true|false
//! pages: fetched=<n> bytes=<n>
//! ```
//!
//! exiting non-zero when the result is incorrect.

use std::time::Duration;

/// Attaches the region described by the `DSM_*` environment variables.
pub fn attach() -> anyhow::Result<dsm::Region> {
    let config = dsm::Config::from_env()?;
    Ok(dsm::Region::attach(&config)?)
}

/// Spins until `done()` holds: `spin_loop` hints, yielding the CPU every 64 spins (there are
/// often more processes than cores).
pub fn spin_until(mut done: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !done() {
        spins = spins.wrapping_add(1);
        if spins & 63 == 0 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Formats a duration in the most readable unit (`12.3us`, `4.56ms`, `1.23s`).
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.3}s")
    } else if s >= 1e-3 {
        format!("{:.3}ms", s * 1e3)
    } else {
        format!("{:.3}us", s * 1e6)
    }
}

/// Ends an example: rank 0 prints the `result:` line (with `correct=`) and its own page
/// counters, every rank detaches, and rank 0 exits with status 1 if the result is incorrect.
/// `correct` only matters on rank 0.
pub fn finish(region: dsm::Region, result: &str, correct: bool) -> anyhow::Result<()> {
    let rank0 = region.rank() == 0;
    if rank0 {
        let stats = region.stats()?;
        println!("result: {result} correct={correct}");
        println!("pages: fetched={} bytes={}", stats.pages_fetched, stats.bytes_received);
    }
    region.detach()?;
    if rank0 && !correct {
        eprintln!("error: incorrect result");
        std::process::exit(1);
    }
    Ok(())
}
