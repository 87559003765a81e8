//! `dsm-worker`: one process of a multi-process integration test. Reads its session from the
//! `DSM_*` environment variables, runs one scenario, prints results on stdout and errors on
//! stderr, and exits non-zero on failure.

use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

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
    /// Every rank does `adds` fetch_add(1) on one shared AtomicU64; rank 0 checks the total.
    Counter {
        #[arg(long, default_value_t = 10000)]
        adds: u64,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
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
    if let Scenario::Counter { adds } = scenario {
        return counter(&config, adds);
    }
    let s = dsm::Session::attach(&config)?;
    let rank = s.rank();
    println!("attached rank {rank} of {} pid {}", s.nprocs(), std::process::id());
    match scenario {
        Scenario::Barrier { rounds } => {
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
        Scenario::Counter { .. } => unreachable!("handled above"),
    }
    s.detach()
}

fn counter(config: &dsm::Config, adds: u64) -> Result<(), dsm::Error> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let region = dsm::Region::attach(config)?;
    let rank = region.rank();
    println!("attached rank {rank} of {} pid {}", region.nprocs(), std::process::id());
    let c: &[AtomicU64] = region.as_slice(0, 1).expect("fits");
    region.barrier()?;
    for _ in 0..adds {
        c[0].fetch_add(1, Ordering::SeqCst);
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
