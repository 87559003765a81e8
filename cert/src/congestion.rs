//! BBR with a window that covers the ACK clock's delays: the congestion controller
//! [`crate::Transport`] uses by default.
//!
//! quinn's BBR keeps `gain × bandwidth × min RTT` bytes in flight. On a fast link the minimum
//! RTT is a lucky sample (21-28 µs on loopback here) while acknowledgements may come up to
//! [`crate::MAX_ACK_DELAY`] (1 ms) late and the receiving process may wait for a CPU: with a
//! window of a few tens of KiB the sender stalls between ACKs, and a transfer that starts
//! from an idle connection never reaches the link's speed. The DSM's traffic is exactly that:
//! bursts of up to 1 MiB runs, each after a request, with idle gaps between them.
//!
//! [`AckClockBbr`] passes every event to quinn's BBR unchanged and only raises its window to
//! at least what BBR's own pacing rate delivers in [`ACK_CLOCK_ALLOWANCE`] (two ACK delays),
//! at most [`WINDOW_FLOOR_CAP`]. The floor scales with the measured rate, so a slow link
//! gets no more in flight than a fast one needs: at 10 Mbit/s the floor is 2.5 KB, below
//! BBR's own minimum of four packets; loss handling is BBR's (it does not back off on random
//! loss, which is why it is the default: see [`crate::Transport`] and `transport.rs`).
//!
//! Measured on the 2-core machine (`dsm-bench app.contrast`, `touch.sequential`, `lossy`, two
//! interleaved runs each; the contrast example on a 4096×4096 image, rank 0's time):
//!
//! | controller | contrast 2p | 4p | touch.sequential | lossy.quinn_stream 5% |
//! |---|---|---|---|---|
//! | quinn's BBR | 372, 352 ms | 400, 407 ms | 182, 273 MB/s | 81.7 MB/s |
//! | **BBR, floor: pacing rate × 2 ms** | 175, 175 ms | 329, 266 ms | 237, 294 MB/s | 70.7 MB/s |
//! | BBR, floor: pacing rate × 4 ms | 169, 167 ms | 307, 272 ms | 253, 291 MB/s | |
//! | BBR, fixed 1 MiB floor | 178, 168 ms | 264, 317 ms | 269, 250 MB/s | |
//! | CUBIC (`dsm run`, 2 runs) | 175, 189 ms | 295, 295 ms | | 0.8-1.0 MB/s (earlier) |
//!
//! A fixed floor would do as well here but put a megabyte in flight on any link, however slow.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{BbrConfig, Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// How long the window must keep the sender busy at BBR's pacing rate: two ACK delays
/// ([`crate::MAX_ACK_DELAY`]), one for the delayed ACK and one for the receiver to be
/// scheduled.
pub const ACK_CLOCK_ALLOWANCE: Duration = Duration::from_millis(2);

/// The floor never exceeds this (the per-stream receive window: flow control allows no more
/// in flight on the one stream a connection carries).
pub const WINDOW_FLOOR_CAP: u64 = crate::STREAM_RECEIVE_WINDOW as u64;

/// Builds [`AckClockBbr`] controllers (see the module docs).
#[derive(Debug, Default)]
pub struct AckClockBbrConfig {
    bbr: Arc<BbrConfig>,
}

impl ControllerFactory for AckClockBbrConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(AckClockBbr::new(self.bbr.clone().build(now, current_mtu)))
    }
}

/// quinn's BBR with its window raised to the ACK-clock floor (see the module docs).
pub struct AckClockBbr {
    inner: Box<dyn Controller>,
}

impl AckClockBbr {
    /// Wraps `inner` (any controller that reports a pacing rate; one that reports none gets
    /// no floor).
    pub fn new(inner: Box<dyn Controller>) -> AckClockBbr {
        AckClockBbr { inner }
    }

    /// The least window: what the inner controller's pacing rate sends in
    /// [`ACK_CLOCK_ALLOWANCE`], capped at [`WINDOW_FLOOR_CAP`].
    pub fn floor(&self) -> u64 {
        let bytes_per_second = u128::from(self.inner.metrics().pacing_rate.unwrap_or(0) / 8);
        let floor = bytes_per_second * ACK_CLOCK_ALLOWANCE.as_micros() / 1_000_000;
        u64::try_from(floor).unwrap_or(u64::MAX).min(WINDOW_FLOOR_CAP)
    }
}

impl Controller for AckClockBbr {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &RttEstimator) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, largest_packet_num_acked: Option<u64>) {
        self.inner.on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, is_persistent_congestion: bool, lost_bytes: u64) {
        self.inner.on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window().max(self.floor())
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = self.inner.metrics();
        m.congestion_window = self.window();
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(AckClockBbr { inner: self.inner.clone_box() })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A controller with a fixed window and pacing rate.
    #[derive(Clone)]
    struct Fixed {
        window: u64,
        pacing_bits: Option<u64>,
    }

    impl Controller for Fixed {
        fn on_congestion_event(&mut self, _: Instant, _: Instant, _: bool, _: u64) {}
        fn on_mtu_update(&mut self, _: u16) {}
        fn window(&self) -> u64 {
            self.window
        }
        fn metrics(&self) -> ControllerMetrics {
            let mut m = ControllerMetrics::default();
            m.congestion_window = self.window;
            m.pacing_rate = self.pacing_bits;
            m
        }
        fn clone_box(&self) -> Box<dyn Controller> {
            Box::new(self.clone())
        }
        fn initial_window(&self) -> u64 {
            self.window
        }
        fn into_any(self: Box<Self>) -> Box<dyn Any> {
            self
        }
    }

    fn wrapped(window: u64, pacing_bits: Option<u64>) -> AckClockBbr {
        AckClockBbr::new(Box::new(Fixed { window, pacing_bits }))
    }

    #[test]
    fn the_window_covers_two_milliseconds_at_the_pacing_rate() {
        // 400 MB/s for 2 ms: 800 kB, above a 20 kB BBR window.
        let c = wrapped(20_000, Some(400_000_000 * 8));
        assert_eq!(c.floor(), 800_000);
        assert_eq!(c.window(), 800_000);
        assert_eq!(c.metrics().congestion_window, 800_000);
    }

    #[test]
    fn a_larger_inner_window_is_kept_and_a_slow_rate_adds_nothing() {
        // 10 Mbit/s: 2.5 kB of floor, below the inner window.
        let slow = wrapped(6_000, Some(10_000_000));
        assert_eq!(slow.floor(), 2_500);
        assert_eq!(slow.window(), 6_000);
        let big = wrapped(5_000_000, Some(400_000_000 * 8));
        assert_eq!(big.window(), 5_000_000);
        assert_eq!(wrapped(6_000, None).window(), 6_000, "no pacing rate, no floor");
    }

    #[test]
    fn the_floor_is_capped_at_the_stream_window() {
        let c = wrapped(20_000, Some(u64::MAX));
        assert_eq!(c.window(), WINDOW_FLOOR_CAP);
    }

    #[test]
    fn quinns_bbr_inside_starts_at_its_initial_window() {
        let now = Instant::now();
        let c = Arc::new(AckClockBbrConfig::default()).build(now, 1200);
        // Before any RTT sample BBR has no pacing rate: its own initial window.
        assert_eq!(c.window(), c.initial_window());
        assert!(c.clone_box().window() >= c.initial_window());
    }
}
