//! `pingpong-sem`: the `pingpong` ring, handed off with named semaphores instead of busy-waiting:
//! rank `r` waits on `turn-<r>`, increments the shared turn word, and posts `turn-<r+1 mod n>`.
//! Rank 0 reports the mean hand-off time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::Parser;

/// Semaphore ring hand-off. The session comes from DSM_COORDINATOR, DSM_SESSION, DSM_SIZE (at
/// least one page), DSM_NPROCS and DSM_CERT_DIR.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Total hand-offs around the ring.
    #[arg(long, default_value_t = 1000)]
    rounds: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let region = dsm_examples::attach()?;
    let rank = region.rank();
    let nprocs = region.nprocs();
    let turn: &[AtomicU64] = region.as_slice(0, 1)?;
    let turn = &turn[0];
    let me = region.semaphore(&format!("turn-{rank}"))?;
    let next = region.semaphore(&format!("turn-{}", (rank + 1) % nprocs))?;
    region.barrier()?;
    let start = Instant::now();
    if rank == 0 && args.rounds > 0 {
        me.post()?;
    }
    let mut mine = u64::from(rank);
    while mine < args.rounds {
        me.wait()?;
        let t = turn.load(Ordering::SeqCst);
        anyhow::ensure!(t == mine, "rank {rank}: turn is {t}, expected {mine}");
        turn.store(mine + 1, Ordering::SeqCst);
        next.post()?;
        mine += u64::from(nprocs);
    }
    region.barrier()?;
    let elapsed = start.elapsed();
    let final_turn = turn.load(Ordering::SeqCst);
    let mean = elapsed.div_f64(args.rounds.max(1) as f64);
    let result = format!(
        "rounds={} turn={final_turn} nprocs={nprocs} time={} mean_handoff={}",
        args.rounds,
        dsm_examples::fmt_duration(elapsed),
        dsm_examples::fmt_duration(mean)
    );
    drop((me, next));
    dsm_examples::finish(region, &result, final_turn == args.rounds)
}
