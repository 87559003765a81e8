//! The coordinator's tokio runtime: how many worker threads serve connections.
//!
//! Sessions are served in parallel (each session's messages under its own lock, connections'
//! tasks on every worker), but every extra worker costs latency on a small machine: tokio wakes
//! an idle worker whenever a busy one has more than one task ready (here: a connection's reader
//! handing a reply to its writer while quinn's driver has a datagram), and on a VM that wake is
//! a cross-vCPU interrupt that also takes the CPU the waiting client needs. Measured on the
//! 2-core machine (the in-process coordinator switched between 1 and 2 workers, interleaved runs,
//! `cargo xtask bench` figures): the replay round trip (`replay.store.hop.coordinator_round_trip`)
//! 69-104 us (mean 90, bimodal) with 2 workers and 69-84 us (mean 75) with 1; `fault.read_home`
//! 136 / 111 us against 110 / 105; `counter.update.4p` 9259 / 9377 ops/s against 9879 / 10440;
//! `app.contrast.4p` 455 / 436 ms against 487 / 461 (bulk work gains a little from the second
//! worker). So the default leaves one core to the network stack and to processes on the same
//! host: one worker per core but one, at least one.

use std::num::NonZeroUsize;

/// Worker threads by default: the machine's cores but one, at least one.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get).saturating_sub(1).max(1)
}

/// A multi-threaded runtime with `workers` worker threads (at least one) named
/// `dsm-coordinator`, I/O and timers enabled.
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .thread_name("dsm-coordinator")
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_leaves_one_core_and_is_never_zero() {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        assert_eq!(default_workers(), if cores > 1 { cores - 1 } else { 1 });
    }

    #[test]
    fn the_runtime_has_the_workers_asked_for() {
        let rt = runtime(1).unwrap();
        assert_eq!(rt.metrics().num_workers(), 1);
        let rt = runtime(0).unwrap();
        assert_eq!(rt.metrics().num_workers(), 1, "zero is taken as one");
        let rt = runtime(3).unwrap();
        assert_eq!(rt.metrics().num_workers(), 3);
    }
}
