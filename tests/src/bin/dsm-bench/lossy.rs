//! `lossy.*` figures: DSM through the lossy relay (`dsm_relay`) with a 2 ms ± 1 ms one-way
//! delay, each figure over the same workload through the same kind of relay without loss,
//! measured in the same run.
//!
//! * `lossy.pingpong.{0,1,5,20}pct`: the busy-wait ping-pong of `pingpong.handoff`, µs per
//!   hand-off. The **mean** over the timed hand-offs (their total time divided by their count),
//!   not the median: at 1% loss most hand-offs lose nothing, and a median would hide exactly the
//!   retransmission delays these figures are about.
//! * `lossy.semaphore.{0,5}pct`: the semaphore ping-pong of `semaphore.handoff`, mean µs per
//!   hand-off.
//! * `lossy.touch.{0,5}pct`: `touch.sequential` on 64 MiB (a helper wrote every page, this
//!   process reads one byte of each in order), MB/s.
//! * `lossy.quinn_rtt.{0,5,20}pct`, `lossy.quinn_stream.{0,5}pct` (no targets): `quinn.rtt_64b`
//!   (mean µs, 500 round trips) and `quinn.stream` through the relay: what the transport alone
//!   does on the same link, to tell its share of a DSM figure from the protocol's.
//!
//! Every figure gets a fresh relay (loss as named, no reordering or duplication, seed
//! [`SEED`]) in front of the run's coordinator; both processes of a figure talk through it. A
//! figure measured with loss checks that the relay really dropped datagrams. The floors
//! (`*.0pct`) are measured whenever a figure of their family is selected.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use dsm_tests::TestEnv;

use dsm_relay::RelayStats;

use super::floors::{quinn_bench_via, QuinnLoad};
use super::{semaphore_handoff_via, spin_handoff_via, touch_sequential_via, Figure, Target};

/// One-way delay of the relay and its jitter (uniform, never reorders by itself).
const DELAY: Duration = Duration::from_millis(2);
const JITTER: Duration = Duration::from_millis(1);
/// Seed of the relay's loss decisions: the same datagrams are lost in every run of a figure.
const SEED: u64 = 11;
/// Raw quinn round trips.
const QUINN_ROUNDS: usize = 500;
/// Busy-wait ping-pong: warm-up and timed hand-offs.
const SPIN_WARMUP: u64 = 20;
const SPIN_ROUNDS: u64 = 400;
/// Semaphore ping-pong: warm-up and timed iterations (two hand-offs each).
const SEM_WARMUP: usize = 10;
const SEM_ROUNDS: usize = 200;
/// `lossy.touch.*`: bytes the helper fills and this process reads.
const TOUCH_BYTES: u64 = 64 << 20;

/// A figure of a family: its name, the relay's loss probability and its target over the
/// family's floor, the first member (loss 0).
type Member = (&'static str, f64, Option<Target>);

const QUINN: [Member; 3] = [
    ("lossy.quinn_rtt.0pct", 0.0, None),
    ("lossy.quinn_rtt.5pct", 0.05, None),
    ("lossy.quinn_rtt.20pct", 0.20, None),
];
const QUINN_STREAM: [Member; 2] = [
    ("lossy.quinn_stream.0pct", 0.0, None),
    ("lossy.quinn_stream.5pct", 0.05, None),
];
const PINGPONG: [Member; 4] = [
    ("lossy.pingpong.0pct", 0.0, None),
    ("lossy.pingpong.1pct", 0.01, Some(Target::AtMost(1.3))),
    ("lossy.pingpong.5pct", 0.05, Some(Target::AtMost(2.0))),
    ("lossy.pingpong.20pct", 0.20, Some(Target::AtMost(5.0))),
];
const SEMAPHORE: [Member; 2] = [
    ("lossy.semaphore.0pct", 0.0, None),
    ("lossy.semaphore.5pct", 0.05, Some(Target::AtMost(2.0))),
];
const TOUCH: [Member; 2] = [
    ("lossy.touch.0pct", 0.0, None),
    ("lossy.touch.5pct", 0.05, Some(Target::AtLeast(0.5))),
];

/// What one family measures through a relay with the given link: a value, and what the relay
/// did.
type Measure<'a> = &'a dyn Fn(dsm_relay::LinkConfig) -> Result<(f64, RelayStats)>;

/// Measures the selected `lossy.*` figures (and their floors) into `figures`.
pub(super) fn measure(env: &TestEnv, selected: &dyn Fn(&str) -> bool, figures: &mut Vec<Figure>) -> Result<()> {
    let quinn = |link| -> Result<(f64, RelayStats)> {
        let load = QuinnLoad::Echo { request: 64, response: 64 };
        let r = quinn_bench_via(env.cert_dir(), load, Some(link), QUINN_ROUNDS)?;
        Ok((mean_us(&r.rtts), r.relay.unwrap_or_default()))
    };
    let quinn_stream = |link| -> Result<(f64, RelayStats)> {
        let r = quinn_bench_via(env.cert_dir(), QuinnLoad::Stream, Some(link), QUINN_ROUNDS)?;
        Ok((r.mb_per_s, r.relay.unwrap_or_default()))
    };
    let pingpong = |link| {
        through_relay(env, link, |addr| Ok(mean_us(&spin_handoff_via(env, addr, SPIN_WARMUP, SPIN_ROUNDS, None)?)))
    };
    let semaphore = |link| {
        // Each sample is one iteration of the parent: post `ping`, wait `pong`.
        through_relay(env, link, |addr| Ok(mean_us(&semaphore_handoff_via(env, addr, SEM_WARMUP, SEM_ROUNDS)?) / 2.0))
    };
    let touch = |link| through_relay(env, link, |addr| touch_sequential_via(env, addr, TOUCH_BYTES));
    let families: [(&[Member], &str, Measure<'_>); 5] = [
        (&QUINN, "us", &quinn),
        (&QUINN_STREAM, "MB/s", &quinn_stream),
        (&PINGPONG, "us", &pingpong),
        (&SEMAPHORE, "us", &semaphore),
        (&TOUCH, "MB/s", &touch),
    ];
    for (members, unit, measure) in families {
        if !members.iter().any(|(name, ..)| selected(name)) {
            continue;
        }
        let floor = members[0].0;
        for (i, &(name, loss, target)) in members.iter().enumerate() {
            // The floor (first member) is measured whenever its family is.
            if i > 0 && !selected(name) {
                continue;
            }
            let link = dsm_relay::LinkConfig { loss, delay: DELAY, jitter: JITTER, seed: SEED, ..Default::default() };
            let (value, stats) = measure(link).with_context(|| format!("measuring {name}"))?;
            // On stderr, beside the table: the traffic a figure took and what the relay dropped.
            eprintln!("{name}: relay {stats}");
            ensure!(loss == 0.0 || stats.dropped > 0, "{name}: the relay dropped nothing: {stats}");
            figures.push(if i == 0 {
                Figure::floor(name, value, unit)
            } else {
                Figure::over(figures, name, value, unit, floor, target)
            });
        }
    }
    Ok(())
}

/// Runs `measure` with the address of a fresh relay with `link` in front of the run's
/// coordinator.
fn through_relay(
    env: &TestEnv,
    link: dsm_relay::LinkConfig,
    measure: impl FnOnce(std::net::SocketAddr) -> Result<f64>,
) -> Result<(f64, RelayStats)> {
    let relay = dsm_relay::spawn(dsm_relay::RelayConfig { listen: "127.0.0.1:0".parse()?, to: env.addr(), link })
        .context("starting the relay")?;
    let value = measure(relay.local_addr())?;
    Ok((value, relay.stats()))
}

/// Mean in microseconds.
fn mean_us(samples: &[Duration]) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.iter().sum::<Duration>().as_secs_f64() * 1e6 / samples.len() as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn mean_is_not_the_median() {
        let ms = |n| std::time::Duration::from_millis(n);
        assert_eq!(super::mean_us(&[ms(1), ms(1), ms(10)]), 4000.0);
        assert_eq!(super::super::median_us(&[ms(1), ms(1), ms(10)]), 1000.0);
        assert!(super::mean_us(&[]).is_nan());
    }
}
