//! The bandwidth limit of one direction of one flow: a link of a fixed rate
//! behind a drop-tail queue ([`Bottleneck`]).
//!
//! Nothing waits here: the bottleneck only computes when the last bit of a
//! datagram leaves the link (or that the queue is full), and the sender task
//! releases the datagram at that time plus the wire's delay.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::RateLimit;

/// Transmission state of one link.
#[derive(Debug)]
pub(crate) struct Bottleneck {
    bytes_per_s: f64,
    queue_bytes: f64,
    /// When the link finishes sending everything accepted so far.
    busy_until: Option<Instant>,
}

impl Bottleneck {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            bytes_per_s: limit.mbit_per_s * 1e6 / 8.0,
            queue_bytes: limit.queue_bytes as f64,
            busy_until: None,
        }
    }

    /// Offers a datagram of `len` bytes at `now`. Returns when its last bit
    /// has left the link, or `None` if the queue is full (the datagram is
    /// dropped and costs the link nothing).
    pub fn admit(&mut self, now: Instant, len: usize) -> Option<Instant> {
        let start = match self.busy_until {
            Some(busy) if busy > now => {
                // Bytes still waiting (or being sent) when this one arrives.
                let backlog = (busy - now).as_secs_f64() * self.bytes_per_s;
                if backlog + len as f64 > self.queue_bytes {
                    return None;
                }
                busy
            }
            _ => now,
        };
        let done = start + Duration::from_secs_f64(len as f64 / self.bytes_per_s);
        self.busy_until = Some(done);
        Some(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(mbit_per_s: f64, queue_bytes: usize) -> Bottleneck {
        Bottleneck::new(RateLimit {
            mbit_per_s,
            queue_bytes,
        })
    }

    #[test]
    fn back_to_back_datagrams_leave_at_the_rate() {
        // 8 Mbit/s = 1 byte per microsecond.
        let mut b = limit(8.0, 1 << 20);
        let t0 = Instant::now();
        let mut last = t0;
        for i in 1..=100u64 {
            last = b.admit(t0, 1000).unwrap();
            assert_eq!(last - t0, Duration::from_micros(1000 * i));
        }
        // 100 kB at 1 MB/s: 100 ms.
        assert_eq!(last - t0, Duration::from_millis(100));
    }

    #[test]
    fn an_idle_link_starts_at_once() {
        let mut b = limit(8.0, 1500);
        let t0 = Instant::now();
        assert_eq!(b.admit(t0, 1000), Some(t0 + Duration::from_millis(1)));
        // The link is idle again 5 ms later.
        let t1 = t0 + Duration::from_millis(5);
        assert_eq!(b.admit(t1, 1000), Some(t1 + Duration::from_millis(1)));
        // Larger than the queue, but the link is idle: accepted.
        let t2 = t1 + Duration::from_millis(5);
        assert_eq!(b.admit(t2, 4000), Some(t2 + Duration::from_millis(4)));
    }

    #[test]
    fn a_full_queue_drops_and_drains_at_the_rate() {
        // Half a datagram of slack keeps the comparisons off float boundaries.
        let mut b = limit(8.0, 10_500);
        let t0 = Instant::now();
        let accepted = (0..100).filter(|_| b.admit(t0, 1000).is_some()).count();
        // The first starts at once; the backlog may then reach 10 kB.
        assert_eq!(accepted, 10);
        // 3 ms later 3 kB have left: room for 3 more, not 4.
        let t1 = t0 + Duration::from_millis(3);
        let accepted = (0..4).filter(|_| b.admit(t1, 1000).is_some()).count();
        assert_eq!(accepted, 3);
    }
}
