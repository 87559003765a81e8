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
    }
    s.detach()
}
