//! `primes`: counts the primes below `--n`. The range is cut into blocks dealt to the ranks
//! round-robin; each rank sieves its blocks (segmented sieve) and `fetch_add`s its count into a
//! shared `AtomicU64`. Rank 0 checks the total against a plain sieve of its own.

use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser;

/// Parallel prime counting. The session comes from DSM_COORDINATOR, DSM_SESSION, DSM_SIZE (at
/// least one page), DSM_NPROCS and DSM_CERT_DIR.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Count the primes p < n.
    #[arg(long, default_value_t = 2_000_000)]
    n: u64,
    /// Numbers per block (blocks go to the ranks round-robin).
    #[arg(long, default_value_t = 65_536)]
    block: u64,
}

/// Primes below `n`, by the sieve of Eratosthenes.
fn sieve(n: u64) -> Vec<u64> {
    let n = usize::try_from(n).expect("n fits in memory");
    let mut composite = vec![false; n];
    let mut primes = Vec::new();
    for i in 2..n {
        if !composite[i] {
            primes.push(i as u64);
            let mut j = i.saturating_mul(i);
            while j < n {
                composite[j] = true;
                j += i;
            }
        }
    }
    primes
}

/// Primes in `[lo, hi)`, using `base` (every prime up to √hi).
fn count_segment(lo: u64, hi: u64, base: &[u64]) -> u64 {
    let mut composite = vec![false; (hi - lo) as usize];
    for &p in base {
        if p * p >= hi {
            break;
        }
        let mut j = (p * p).max(lo.div_ceil(p) * p);
        while j < hi {
            composite[(j - lo) as usize] = true;
            j += p;
        }
    }
    (lo..hi).zip(&composite).filter(|&(v, &c)| v >= 2 && !c).count() as u64
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.block > 0, "--block must be positive");
    let region = dsm_examples::attach()?;
    let rank = u64::from(region.rank());
    let nprocs = u64::from(region.nprocs());
    let total: &[AtomicU64] = region.as_slice(0, 1)?;
    let total = &total[0];
    region.barrier()?;
    let start = std::time::Instant::now();

    let base = sieve((args.n as f64).sqrt() as u64 + 2);
    let mut mine = 0;
    let mut lo = rank * args.block;
    while lo < args.n {
        mine += count_segment(lo, (lo + args.block).min(args.n), &base);
        lo += nprocs * args.block;
    }
    total.fetch_add(mine, Ordering::SeqCst);
    region.barrier()?;
    let elapsed = start.elapsed();

    let count = total.load(Ordering::SeqCst);
    let (expected, correct) = if rank == 0 {
        let e = sieve(args.n).len() as u64;
        (e, e == count)
    } else {
        (0, true)
    };
    let result = format!(
        "n={} primes={count} expected={expected} nprocs={nprocs} time={}",
        args.n,
        dsm_examples::fmt_duration(elapsed)
    );
    dsm_examples::finish(region, &result, correct)
}
