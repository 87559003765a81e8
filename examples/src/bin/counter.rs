//! `counter`: every rank does `--adds` `fetch_add(1)` on one shared `AtomicU64`; after a barrier
//! rank 0 checks that the total is `adds * nprocs`.

use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser;

/// Distributed atomic counter. The session comes from DSM_COORDINATOR, DSM_SESSION, DSM_SIZE
/// (at least one page), DSM_NPROCS and DSM_CERT_DIR.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// fetch_add(1) operations per rank.
    #[arg(long, default_value_t = 10_000)]
    adds: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let region = dsm_examples::attach()?;
    let counter: &[AtomicU64] = region.as_slice(0, 1)?;
    region.barrier()?;
    let start = std::time::Instant::now();
    for _ in 0..args.adds {
        counter[0].fetch_add(1, Ordering::SeqCst);
    }
    region.barrier()?;
    let elapsed = start.elapsed();
    let total = counter[0].load(Ordering::SeqCst);
    let expected = args.adds * u64::from(region.nprocs());
    let per_add = elapsed / u32::try_from(args.adds.max(1)).unwrap_or(u32::MAX);
    let result = format!(
        "total={total} expected={expected} nprocs={} time={} per_add={}",
        region.nprocs(),
        dsm_examples::fmt_duration(elapsed),
        dsm_examples::fmt_duration(per_add)
    );
    dsm_examples::finish(region, &result, total == expected)
}
