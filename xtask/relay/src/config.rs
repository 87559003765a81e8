//! Configuration, statistics and error types of the relay.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Impairments applied to each direction of each flow.
///
/// All probabilities are per datagram and must lie in `[0, 1]`; `jitter` must
/// not exceed `delay`. The default is a perfect link (everything zero, no rate
/// limit, no outage) with seed 1.
///
/// A datagram goes through the model in this order: outage (dropped while the
/// link is down), loss, duplication, reordering, the rate limit's queue
/// (dropped when full), then the delay and jitter of the wire.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Base one-way delay added to every datagram. Release times are kept by
    /// tokio's timer, which has millisecond granularity: a delayed datagram
    /// leaves up to about 1 ms later than drawn (measured: a 64-byte quinn
    /// round trip through `2ms ± 1ms` takes 6.6 ms, not 4).
    pub delay: Duration,
    /// Each copy is delayed by `delay + uniform(-jitter, +jitter)`. Jitter
    /// alone never reorders datagrams (release times are kept monotone).
    pub jitter: Duration,
    /// Probability that a datagram is held back by an extra
    /// `delay + jitter + 1 ms`, letting later datagrams overtake it.
    pub reorder: f64,
    /// Probability that a (non-dropped) datagram is sent twice.
    pub duplicate: f64,
    /// Seed of the per-direction, per-flow random streams.
    pub seed: u64,
    /// Bandwidth limit, if any (see [`RateLimit`]).
    pub rate: Option<RateLimit>,
    /// A window of 100% loss in both directions, if any (see [`Outage`]).
    pub outage: Option<Outage>,
}

/// A bandwidth limit: each direction of each flow is a link of `mbit_per_s`
/// fed by a drop-tail queue of `queue_bytes`.
///
/// A datagram occupies the link for `len * 8 / rate`; one that arrives while
/// more than `queue_bytes - len` bytes are still waiting to be sent is dropped
/// (counted in [`RelayStats::overflowed`]), like a router whose buffer is full.
/// A datagram that arrives at an idle link is always accepted, however large.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Link rate in Mbit/s (10^6 bits per second); must be positive and finite.
    pub mbit_per_s: f64,
    /// Capacity of the queue in front of the link, in bytes; must be positive.
    pub queue_bytes: usize,
}

impl RateLimit {
    /// Default queue capacity: 256 KiB (about 20 ms at 100 Mbit/s).
    pub const DEFAULT_QUEUE: usize = 256 << 10;
}

/// A link outage: nothing passes in either direction from `at` after the
/// first datagram the relay received, for `duration`.
///
/// Datagrams that arrive during the window are dropped, and so are those
/// still on the wire (delayed or queued) whose release time falls into it;
/// they are counted in [`RelayStats::outage_dropped`]. Tests that need the
/// outage to start at a given point of their workload call
/// [`crate::Relay::begin_outage`] instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// Start of the window, measured from the first datagram.
    pub at: Duration,
    /// Length of the window; must be positive.
    pub duration: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            loss: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: 0.0,
            duplicate: 0.0,
            seed: 1,
            rate: None,
            outage: None,
        }
    }
}

impl LinkConfig {
    /// Checks that probabilities are in `[0, 1]`, `jitter <= delay`, the rate
    /// and queue are positive and an outage lasts a positive time.
    pub fn validate(&self) -> Result<(), RelayError> {
        for (name, p) in [
            ("loss", self.loss),
            ("reorder", self.reorder),
            ("duplicate", self.duplicate),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(RelayError::InvalidConfig(format!(
                    "{name} must be a probability within [0, 1], got {p}"
                )));
            }
        }
        if self.jitter > self.delay {
            return Err(RelayError::InvalidConfig(format!(
                "jitter ({:?}) must not exceed delay ({:?})",
                self.jitter, self.delay
            )));
        }
        if let Some(rate) = self.rate {
            if !(rate.mbit_per_s.is_finite() && rate.mbit_per_s > 0.0) {
                return Err(RelayError::InvalidConfig(format!(
                    "rate must be a positive number of Mbit/s, got {}",
                    rate.mbit_per_s
                )));
            }
            if rate.queue_bytes == 0 {
                return Err(RelayError::InvalidConfig(
                    "the rate limit's queue must hold at least one byte, got 0".into(),
                ));
            }
        }
        if let Some(outage) = self.outage {
            if outage.duration.is_zero() {
                return Err(RelayError::InvalidConfig(format!(
                    "an outage must last a positive time, got {:?} (at {:?})",
                    outage.duration, outage.at
                )));
            }
        }
        Ok(())
    }

    /// True when the link does nothing at all (datagrams are forwarded
    /// immediately, no RNG, no timers, no rate limit, no outage planned).
    pub fn is_passthrough(&self) -> bool {
        self.rate.is_none()
            && self.outage.is_none()
            && self.loss == 0.0
            && self.reorder == 0.0
            && self.duplicate == 0.0
            && self.delay.is_zero()
            && self.jitter.is_zero()
    }
}

/// What to relay where.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Address the relay listens on (clients send here). Port 0 picks one;
    /// see [`crate::Relay::local_addr`].
    pub listen: SocketAddr,
    /// Address every datagram is forwarded to (e.g. the coordinator).
    pub to: SocketAddr,
    /// Impairments, applied independently to both directions.
    pub link: LinkConfig,
}

/// Counters summed over both directions of all flows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayStats {
    /// Datagrams actually sent out (duplicates count twice).
    pub forwarded: u64,
    /// Datagrams dropped for any reason: the loss probability, an outage, a
    /// full queue.
    pub dropped: u64,
    /// Datagrams that were sent twice.
    pub duplicated: u64,
    /// Datagrams held back so that later ones overtake them.
    pub reordered: u64,
    /// Of `dropped`: datagrams dropped because the link was down (an outage).
    pub outage_dropped: u64,
    /// Of `dropped`: datagrams dropped because a queue was full (the rate
    /// limit's, or the relay's own when it cannot keep up).
    pub overflowed: u64,
}

impl fmt::Display for RelayStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "forwarded={} dropped={} (outage {}, overflow {}) duplicated={} reordered={}",
            self.forwarded,
            self.dropped,
            self.outage_dropped,
            self.overflowed,
            self.duplicated,
            self.reordered
        )
    }
}

/// Shared atomic counters behind [`RelayStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
    pub outage_dropped: AtomicU64,
    pub overflowed: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A datagram lost to an outage (also counted as dropped).
    pub fn outage_drop(&self) {
        Self::bump(&self.dropped);
        Self::bump(&self.outage_dropped);
    }

    /// A datagram dropped at a full queue (also counted as dropped).
    pub fn overflow_drop(&self) {
        Self::bump(&self.dropped);
        Self::bump(&self.overflowed);
    }

    pub fn snapshot(&self) -> RelayStats {
        RelayStats {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
            reordered: self.reordered.load(Ordering::Relaxed),
            outage_dropped: self.outage_dropped.load(Ordering::Relaxed),
            overflowed: self.overflowed.load(Ordering::Relaxed),
        }
    }
}

/// Errors of the relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The listening socket could not be bound.
    #[error("cannot bind UDP socket on {addr}: {source}")]
    Bind {
        /// Address we tried to bind.
        addr: SocketAddr,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The configuration is not valid (see [`LinkConfig::validate`]).
    #[error("invalid relay configuration: {0}")]
    InvalidConfig(String),
    /// Other I/O error (e.g. creating the runtime or thread of [`crate::spawn`]).
    #[error("relay I/O error: {0}")]
    Io(#[from] std::io::Error),
}
