//! `pingpong`: a token goes around the ring of all ranks `--rounds` times in total, handed off by
//! busy-waiting on one shared `AtomicU64` "turn" word: rank `r` waits until `turn % nprocs == r`,
//! then increments it. Rank 0 reports the mean hand-off time (one page moving between processes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::Parser;

/// Busy-wait ring hand-off on a shared word. The session comes from DSM_COORDINATOR,
/// DSM_SESSION, DSM_SIZE (at least one page), DSM_NPROCS and DSM_CERT_DIR.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Total hand-offs (turn increments) around the ring.
    #[arg(long, default_value_t = 1000)]
    rounds: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let region = dsm_examples::attach()?;
    let rank = u64::from(region.rank());
    let nprocs = u64::from(region.nprocs());
    let turn: &[AtomicU64] = region.as_slice(0, 1)?;
    let turn = &turn[0];
    region.barrier()?;
    let start = Instant::now();
    let mut mine = rank;
    while mine < args.rounds {
        dsm_examples::spin_until(|| turn.load(Ordering::SeqCst) == mine);
        turn.store(mine + 1, Ordering::SeqCst);
        mine += nprocs;
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
    dsm_examples::finish(region, &result, final_turn == args.rounds)
}
