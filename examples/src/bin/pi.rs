//! `pi`: numerical integration of 4/(1+x²) over [0, 1] (midpoint rule). Each rank sums its slice
//! of the steps, then adds its partial into one shared f64 slot under the semaphore `pi-lock`.
//! Rank 0 prints the estimate and its error; correct if it is within 1e-6 of π.

use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser;

/// Parallel π by integration. The session comes from DSM_COORDINATOR, DSM_SESSION, DSM_SIZE (at
/// least one page), DSM_NPROCS and DSM_CERT_DIR.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Integration steps (split evenly between the ranks).
    #[arg(long, default_value_t = 10_000_000)]
    steps: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.steps > 0, "--steps must be positive");
    let region = dsm_examples::attach()?;
    let rank = u64::from(region.rank());
    let nprocs = u64::from(region.nprocs());
    // The f64 sum as its bits: a fresh region is zero, and 0u64 is 0.0.
    let sum: &[AtomicU64] = region.as_slice(0, 1)?;
    let sum = &sum[0];
    let lock = region.semaphore("pi-lock")?;
    let start = std::time::Instant::now();

    let h = 1.0 / args.steps as f64;
    let (lo, hi) = (args.steps * rank / nprocs, args.steps * (rank + 1) / nprocs);
    let partial: f64 = (lo..hi)
        .map(|i| {
            let x = (i as f64 + 0.5) * h;
            4.0 / (1.0 + x * x)
        })
        .sum::<f64>()
        * h;

    region.barrier()?;
    if rank == 0 {
        lock.post()?;
    }
    lock.wait()?;
    let s = f64::from_bits(sum.load(Ordering::SeqCst)) + partial;
    sum.store(s.to_bits(), Ordering::SeqCst);
    lock.post()?;
    region.barrier()?;

    let pi = f64::from_bits(sum.load(Ordering::SeqCst));
    let error = (pi - std::f64::consts::PI).abs();
    let result = format!(
        "pi={pi:.12} error={error:.3e} steps={} nprocs={nprocs} time={}",
        args.steps,
        dsm_examples::fmt_duration(start.elapsed())
    );
    drop(lock);
    dsm_examples::finish(region, &result, error < 1e-6)
}
