//! QUIC transport tuning shared by coordinator and clients, and the quinn
//! client/server configurations built from the TLS material.
//!
//! # Why these settings: latency under loss
//!
//! A DSM hand-off is a chain of small request/response messages. When one of
//! them is lost nothing follows it that could reveal the gap, so only the
//! probe timeout (PTO) recovers it: `smoothed RTT + max(4 × RTT variance,
//! 1 ms) + the peer's max ACK delay`, doubling for every probe that goes
//! unanswered. quinn's peers allow themselves 25 ms of ACK delay, which on a
//! fast link dwarfs the round trip itself. Each side therefore asks the other
//! (ACK-frequency extension, [`MAX_ACK_DELAY`]) to acknowledge within 1 ms,
//! the least quinn accepts, and to acknowledge a gap at once
//! ([`REORDERING_THRESHOLD`] 1: with the extension quinn would otherwise wait
//! for a second out-of-order packet). Every second packet is still
//! acknowledged at once (quinn's default), so bulk transfers send no more
//! ACKs than before.
//!
//! Measured with `cargo xtask bench lossy` (mean hand-off or round trip
//! through the relay with 2 ms ± 1 ms one-way delay, as a ratio to the same
//! figure without loss in the same run, on the shared 2-core machine; two
//! runs where two figures are given; every candidate was switched into
//! [`Transport::to_quinn`] for its measurement):
//!
//! | candidate | pingpong 1% | 5% | 20% | quinn_rtt 5% | 20% |
//! |---|---|---|---|---|---|
//! | quinn's defaults (25 ms ACK delay) | 1.35, 1.17 | 1.92, 1.54 | 7.19, 6.67 | 1.84, 1.80 | 6.57, 7.10 |
//! | ACK delay 1 ms (reordering threshold 2) | 1.21 | 1.49 | 5.08 | | |
//! | **ACK delay 1 ms, reordering threshold 1** | 0.93, 1.11 | 1.24, 1.59 | 4.38, 4.81 | 1.49 | 3.63 |
//! | ... and an ACK for every packet | 1.07 | 1.50 | 5.50 | | |
//! | ... and packet threshold 2 (instead of 3) | 1.09 | 1.37 | 5.08 | | |
//! | ... with CUBIC / NewReno instead of BBR | 1.07 / 1.08 | 1.56 / 1.48 | 5.26 / 5.14 | | |
//!
//! The semaphore hand-off at 5% loss went from 1.66 and 1.68 to 1.47 and
//! 1.44. Acknowledging every packet only added datagrams (2,673 instead of
//! 1,874 for the same ping-pong without loss); a lower packet threshold helps
//! only when packets follow the lost one, which latency-bound exchanges rarely
//! have, and invites spurious retransmissions on links that reorder. The
//! initial RTT only matters before the first sample (the handshake) and stays
//! at 10 ms. Pacing follows the congestion window and is not configurable in
//! quinn 0.11.
//!
//! Bulk throughput on a clean link is unchanged: `quinn.stream` medians of six
//! interleaved runs, 117.9 MB/s before and 141.3 MB/s after (spread 97-131 and
//! 105-167: the machine's load dominates), `touch.sequential` 44-54 MB/s
//! before and 46-47 after. The congestion controller decides bulk throughput
//! under loss: one quinn stream through the relay at 5% loss
//! (`lossy.quinn_stream.5pct`) carried 29-34 MB/s with BBR and 0.8-1.0 MB/s
//! with CUBIC or NewReno, so BBR stays the default. On a fast link quinn's BBR keeps
//! too little in flight for the ACK clock (`app.contrast.2p` 352-372 ms, CUBIC 175-189):
//! [`crate::congestion`] raises its window to what its pacing rate sends in two ACK delays
//! (175 ms), loss handling unchanged.
//!
//! What remains at 20% loss is the PTO itself (about two round trips, and
//! doubling when the probe is lost too): quinn offers no knob below its 1 ms
//! timer granularity or its RTT-variance term.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::congestion::{CubicConfig, NewRenoConfig};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};

use crate::congestion::AckClockBbrConfig;
use crate::Error;

/// Per-stream receive window set by [`Transport::to_quinn`] (8 MiB).
pub const STREAM_RECEIVE_WINDOW: u32 = 8 << 20;
/// Per-connection receive window set by [`Transport::to_quinn`] (16 MiB).
pub const RECEIVE_WINDOW: u32 = 16 << 20;
/// Per-connection send window set by [`Transport::to_quinn`] (16 MiB).
pub const SEND_WINDOW: u64 = 16 << 20;

/// Largest UDP payload an endpoint sends or accepts (65,507 bytes, the most one UDP/IPv4
/// datagram carries): the upper bound of quinn's MTU discovery ([`Transport::to_quinn`]) and
/// the `max_udp_payload_size` every endpoint announces ([`crate::endpoint`]). Connections
/// start at QUIC's 1200 and discover what the path carries: 1452-1472 on Ethernet, 8972 with jumbo
/// frames; with a loopback peer (processes on the coordinator's machine) they start at this
/// bound ([`Transport::to_quinn_for`]). quinn hands the
/// kernel up to 10 datagrams in one `sendmsg` (GSO) with no cap on their total, and a batch
/// over 65,507 bytes fails there (`EMSGSIZE`), which quinn reads as a black hole and falls back
/// to 1200 for the whole connection; every endpoint's socket therefore splits such batches
/// (`gso.rs`). Measured on the 2-core machine, interleaved (`dsm-bench touch.sequential`,
/// `dsm-bench app.contrast`): quinn's 1452 -> 6550 (the largest whole batch, before the split):
/// touch.sequential 99-196 -> 165-279 MB/s, app.contrast.2p 240-259 -> 194-229 ms,
/// app.contrast.4p 369-402 -> 293-341 ms; 6550 -> 65,507 (three runs each, another day):
/// touch.sequential 177 / 191 / 207 / 206 / 211 -> 257 / 277 / 285 / 255 / 286 MB/s,
/// app.contrast.4p 307 / 339 / 328 -> 311 / 290 / 315 ms (within that day's noise).
pub const MAX_UDP_PAYLOAD: u16 = crate::gso::MAX_SEND_BYTES as u16;

/// Longest time a peer may wait before acknowledging an ack-eliciting packet, asked of it with
/// the ACK-frequency extension (1 ms, the least quinn accepts: its timer granularity).
pub const MAX_ACK_DELAY: Duration = Duration::from_millis(1);
/// A packet this many packet numbers out of order is acknowledged at once (1: any gap, as
/// without the extension; quinn's default with the extension is 2).
pub const REORDERING_THRESHOLD: u32 = 1;

/// Congestion controller choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    /// CUBIC (quinn's default).
    Cubic,
    /// NewReno.
    NewReno,
    /// BBR (this crate's default: low latency on lightly loaded links, no back-off on random
    /// loss), with its window raised to cover the ACK clock's delays on fast links
    /// ([`crate::congestion`]).
    Bbr,
}

/// Transport tuning shared by both sides of a connection.
#[derive(Debug, Clone)]
pub struct Transport {
    /// Interval between keep-alive packets (default 1 s). Zero disables them.
    pub keep_alive: Duration,
    /// A connection with no traffic for this long is closed (default 10 s).
    /// The effective value is the smaller of both sides'. Zero disables the
    /// timeout; a value beyond QUIC's limit is treated as no timeout.
    pub idle_timeout: Duration,
    /// RTT assumed before the first measurement (default 10 ms).
    pub initial_rtt: Duration,
    /// Congestion controller (default [`Congestion::Bbr`]).
    pub congestion: Congestion,
    /// How long the thread driving the connection keeps polling after traffic instead of
    /// blocking (default [`crate::BUSY_POLL_BUDGET`], 200 µs; zero: never). Local to each
    /// side; see [`crate::BusyPoll`].
    pub busy_poll: Duration,
}

impl Default for Transport {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            initial_rtt: Duration::from_millis(10),
            congestion: Congestion::Bbr,
            busy_poll: crate::BUSY_POLL_BUDGET,
        }
    }
}

/// A [`Transport`] whose timers cannot work together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The idle timeout is not comfortably above the keep-alive interval.
    #[error("the idle timeout ({idle:?}) must be at least {factor} times the keep-alive interval ({keep_alive:?}): below that a healthy but quiet connection is declared dead between two keep-alives; raise the idle timeout (DSM_IDLE_TIMEOUT, --idle-timeout) or shorten the keep-alive (DSM_KEEP_ALIVE, --keep-alive)")]
    IdleBelowKeepAlive {
        /// The idle timeout.
        idle: Duration,
        /// The keep-alive interval.
        keep_alive: Duration,
        /// The required ratio, [`MIN_IDLE_PER_KEEP_ALIVE`].
        factor: u32,
    },
    /// Keep-alives are off while an idle timeout is set.
    #[error("keep-alives are off (0) while the idle timeout is {idle:?}: a process waiting in a barrier would be declared dead; set a keep-alive interval below a third of the idle timeout")]
    NoKeepAlive {
        /// The idle timeout.
        idle: Duration,
    },
}

/// The idle timeout must be at least this many keep-alive intervals, so that losing a
/// keep-alive or two on a lossy link does not end a healthy connection.
pub const MIN_IDLE_PER_KEEP_ALIVE: u32 = 3;

impl Transport {
    /// Checks that the timers work together: an idle timeout (unless disabled with 0) of at
    /// least [`MIN_IDLE_PER_KEEP_ALIVE`] keep-alive intervals.
    pub fn validate(&self) -> Result<(), TransportError> {
        if self.idle_timeout.is_zero() {
            return Ok(());
        }
        if self.keep_alive.is_zero() {
            return Err(TransportError::NoKeepAlive { idle: self.idle_timeout });
        }
        if self.idle_timeout < self.keep_alive * MIN_IDLE_PER_KEEP_ALIVE {
            return Err(TransportError::IdleBelowKeepAlive {
                idle: self.idle_timeout,
                keep_alive: self.keep_alive,
                factor: MIN_IDLE_PER_KEEP_ALIVE,
            });
        }
        Ok(())
    }

    /// Builds the quinn transport configuration: keep-alive, idle timeout,
    /// initial RTT and congestion controller from `self`, plus larger flow
    /// control windows ([`STREAM_RECEIVE_WINDOW`], [`RECEIVE_WINDOW`],
    /// [`SEND_WINDOW`]) and MTU discovery up to [`MAX_UDP_PAYLOAD`]. Stream
    /// limits and datagram settings keep quinn's defaults.
    #[must_use]
    pub fn to_quinn(&self) -> quinn::TransportConfig {
        self.to_quinn_for(None)
    }

    /// [`to_quinn`](Self::to_quinn) for connections with `peer`: when it is a loopback
    /// address (every packet stays on this machine, whose loopback carries 64 KiB datagrams)
    /// the connection starts at [`MAX_UDP_PAYLOAD`] instead of searching up to it. The search
    /// costs more than it finds there: about a dozen probes padded to up to 64 KiB each way,
    /// and quinn parses padding one byte at a time, so a new loopback connection spent
    /// milliseconds of CPU on each side (`quinn_proto::frame::Iter::next` and
    /// `process_payload` were the runtime threads' largest symbols in `app.contrast`).
    /// Should the path carry less after all, quinn's black-hole detection falls back to 1200.
    #[must_use]
    pub fn to_quinn_for(&self, peer: Option<IpAddr>) -> quinn::TransportConfig {
        let mut config = quinn::TransportConfig::default();
        config
            .keep_alive_interval((!self.keep_alive.is_zero()).then_some(self.keep_alive))
            .max_idle_timeout(if self.idle_timeout.is_zero() {
                None
            } else {
                IdleTimeout::try_from(self.idle_timeout).ok()
            })
            .initial_rtt(self.initial_rtt)
            .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
            .receive_window(VarInt::from_u32(RECEIVE_WINDOW))
            .send_window(SEND_WINDOW)
            .ack_frequency_config(Some(ack_frequency()))
            .mtu_discovery_config(Some(mtu_discovery()));
        let first_mtu = if peer.is_some_and(is_loopback) { MAX_UDP_PAYLOAD } else { INITIAL_MTU };
        config.initial_mtu(first_mtu);
        match self.congestion {
            Congestion::Cubic => {
                let mut cubic = CubicConfig::default();
                cubic.initial_window(initial_window(first_mtu));
                config.congestion_controller_factory(Arc::new(cubic))
            }
            Congestion::NewReno => {
                let mut reno = NewRenoConfig::default();
                reno.initial_window(initial_window(first_mtu));
                config.congestion_controller_factory(Arc::new(reno))
            }
            Congestion::Bbr => {
                config.congestion_controller_factory(Arc::new(AckClockBbrConfig::default()))
            }
        };
        config
    }
}

/// The MTU a connection starts at unless its peer is on loopback (QUIC's minimum, quinn's
/// default, set explicitly so that the initial window below is computed from it).
const INITIAL_MTU: u16 = 1200;

/// RFC 9002's initial window (section 7.2) for datagrams of `mtu` bytes: `min(10 × mtu,
/// max(14720, 2 × mtu))`. quinn's CUBIC and NewReno take 14720 whatever the MTU, which holds
/// no packet of a loopback connection's 65,507 bytes: its handshake never went out.
fn initial_window(mtu: u16) -> u64 {
    let mtu = u64::from(mtu);
    (10 * mtu).min(14720.max(2 * mtu))
}

/// quinn's MTU discovery (every 600 s, black-hole detection) searching up to [`MAX_UDP_PAYLOAD`].
fn mtu_discovery() -> quinn::MtuDiscoveryConfig {
    let mut config = quinn::MtuDiscoveryConfig::default();
    config.upper_bound(MAX_UDP_PAYLOAD);
    config
}

/// What each side asks of its peer's acknowledgements (the QUIC ACK-frequency extension): an
/// ACK at most [`MAX_ACK_DELAY`] after an ack-eliciting packet, at once for every second one
/// (quinn's default), and at once for any packet that arrives out of order
/// ([`REORDERING_THRESHOLD`]).
fn ack_frequency() -> quinn::AckFrequencyConfig {
    let mut config = quinn::AckFrequencyConfig::default();
    config
        .max_ack_delay(Some(MAX_ACK_DELAY))
        .reordering_threshold(VarInt::from_u32(REORDERING_THRESHOLD));
    config
}

/// Whether `ip` is a loopback address (also as an IPv4-mapped IPv6 address): a peer there gets
/// the loopback transport ([`Transport::to_quinn_for`]).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// quinn server configuration from the dev set in `dir` (see
/// [`crate::server_tls_config`]) with the given transport tuning, for a server listening on
/// `listen` (a loopback address: its peers are on this machine, see
/// [`Transport::to_quinn_for`]).
pub fn quic_server_config(dir: &Path, transport: &Transport, listen: IpAddr) -> Result<quinn::ServerConfig, Error> {
    quic_server_config_from(crate::server_tls_config(dir)?, transport, listen)
}

/// quinn server configuration from a rustls server configuration with the given transport
/// tuning, for a server listening on `listen` (see [`quic_server_config`]).
pub(crate) fn quic_server_config_from(
    tls: rustls::ServerConfig,
    transport: &Transport,
    listen: IpAddr,
) -> Result<quinn::ServerConfig, Error> {
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport.to_quinn_for(Some(listen))));
    Ok(config)
}

/// quinn client configuration from a rustls client configuration (see
/// [`crate::client_tls_config`]) with the given transport tuning, for connections to `peer`
/// (see [`Transport::to_quinn_for`]).
pub fn quic_client_config(
    tls: rustls::ClientConfig,
    transport: &Transport,
    peer: IpAddr,
) -> Result<quinn::ClientConfig, Error> {
    let crypto = QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport.to_quinn_for(Some(peer))));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let t = Transport::default();
        assert_eq!(t.keep_alive, Duration::from_secs(1));
        assert_eq!(t.idle_timeout, Duration::from_secs(10));
        assert_eq!(t.initial_rtt, Duration::from_millis(10));
        assert_eq!(t.congestion, Congestion::Bbr);
    }

    #[test]
    fn an_idle_timeout_not_well_above_the_keep_alive_is_refused() {
        let t = |idle_ms, keep_ms| Transport {
            idle_timeout: Duration::from_millis(idle_ms),
            keep_alive: Duration::from_millis(keep_ms),
            ..Transport::default()
        };
        assert_eq!(Transport::default().validate(), Ok(()));
        assert_eq!(t(3000, 1000).validate(), Ok(()));
        assert_eq!(t(0, 0).validate(), Ok(()), "no idle timeout at all is allowed");
        let e = t(1, 1000).validate().unwrap_err();
        assert!(matches!(e, TransportError::IdleBelowKeepAlive { .. }));
        assert!(e.to_string().contains("DSM_IDLE_TIMEOUT"), "{e}");
        assert!(matches!(t(2999, 1000).validate(), Err(TransportError::IdleBelowKeepAlive { .. })));
        assert!(matches!(t(10_000, 0).validate(), Err(TransportError::NoKeepAlive { .. })));
    }

    #[test]
    fn peers_are_asked_for_prompt_acks() {
        let debug = format!("{:?}", Transport::default().to_quinn());
        assert!(debug.contains("max_ack_delay: Some(1ms)"), "{debug}");
        assert!(debug.contains("reordering_threshold: 1 "), "{debug}");
        // A peer closes the connection when asked for less than its timer
        // granularity (quinn's is 1 ms).
        assert!(MAX_ACK_DELAY >= Duration::from_millis(1));
    }

    #[test]
    fn to_quinn_accepts_every_choice_and_extremes() {
        for congestion in [Congestion::Cubic, Congestion::NewReno, Congestion::Bbr] {
            let t = Transport {
                congestion,
                ..Transport::default()
            };
            let _ = t.to_quinn();
        }
        let extreme = Transport {
            keep_alive: Duration::ZERO,
            idle_timeout: Duration::MAX,
            ..Transport::default()
        };
        let _ = extreme.to_quinn();
        let zero = Transport {
            idle_timeout: Duration::ZERO,
            ..Transport::default()
        };
        let _ = zero.to_quinn();
    }
}
