//! `quickstart`: the README's first program, verbatim (tests/tests/readme.rs checks that the
//! README shows exactly this file and runs it with `dsm run -n 3`).

use std::sync::atomic::{AtomicU64, Ordering};

use dsm::SharedCell;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `dsm run -n 3 -- ./quickstart` sets DSM_COORDINATOR, DSM_SESSION, DSM_SIZE and DSM_NPROCS.
    // Or: dsm::Config::builder().coordinator("127.0.0.1:4200").session("demo")
    //         .size(64 << 20).nprocs(3).build()?
    let config = dsm::Config::from_env()?;
    let region = dsm::Region::attach(&config)?; // returns once every process attached

    let counter: &[AtomicU64] = region.as_slice(0, 1)?;
    counter[0].fetch_add(1, Ordering::SeqCst); // a distributed atomic

    let sum: &[SharedCell<u64>] = region.as_slice(4096, 1)?; // plain data: volatile get/set
    let lock = region.semaphore_with_count("lock", 1)?; // starts at 1: a mutex
    lock.wait()?;
    sum[0].set(sum[0].get() + 10); // plain loads and stores just propagate
    lock.post()?;

    region.barrier()?; // every process's stores are visible to all after this
    if region.rank() == 0 {
        println!("{} processes: counter={} sum={}", region.nprocs(), counter[0].load(Ordering::SeqCst), sum[0].get());
        println!("{:?}", region.stats()?); // faults, pages moved, bytes, wait time
    }
    Ok(())
}
