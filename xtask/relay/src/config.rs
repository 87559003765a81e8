//! Configuration, statistics and error types of the relay.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Impairments applied to each direction of each flow.
///
/// All probabilities are per datagram and must lie in `[0, 1]`; `jitter` must
/// not exceed `delay`. The default is a perfect link (everything zero) with
/// seed 1.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Base one-way delay added to every datagram.
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
        }
    }
}

impl LinkConfig {
    /// Checks that probabilities are in `[0, 1]` and `jitter <= delay`.
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
        Ok(())
    }

    /// True when the link does nothing at all (datagrams are forwarded
    /// immediately, no RNG, no timers).
    pub fn is_passthrough(&self) -> bool {
        self.loss == 0.0
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
    /// Datagrams dropped (by the loss probability, or because a queue was full).
    pub dropped: u64,
    /// Datagrams that were sent twice.
    pub duplicated: u64,
    /// Datagrams held back so that later ones overtake them.
    pub reordered: u64,
}

impl fmt::Display for RelayStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "forwarded={} dropped={} duplicated={} reordered={}",
            self.forwarded, self.dropped, self.duplicated, self.reordered
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
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> RelayStats {
        RelayStats {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
            reordered: self.reordered.load(Ordering::Relaxed),
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
