//! One direction of one flow: the seeded decision maker ([`Decider`]) that
//! runs in the receive path, and the timer-queue sender task
//! ([`run_sender`]) that releases datagrams when they are due (unless the
//! link is down by then).

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{Counters, LinkConfig};
use crate::outage::OutageClock;
use crate::rate::Bottleneck;

/// Capacity of the queue between a receive loop and its sender task. When it
/// is full (the sender cannot keep up) new datagrams are dropped, like a
/// router queue overflowing, instead of blocking the receive loop.
pub(crate) const QUEUE_CAPACITY: usize = 16 * 1024;

/// Direction of a datagram within a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Client -> target.
    Up = 0,
    /// Target -> client.
    Down = 1,
}

/// A datagram copy waiting for its release time.
#[derive(Debug)]
pub(crate) struct Scheduled {
    pub at: Instant,
    pub seq: u64,
    pub data: Vec<u8>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed so that `BinaryHeap` (a max-heap) pops the earliest first;
    /// ties are broken by sequence number (FIFO).
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Seed of the random stream of one direction of one flow.
pub(crate) fn stream_seed(seed: u64, flow: u64, dir: Direction) -> u64 {
    splitmix64(seed ^ splitmix64((flow << 1) | dir as u64))
}

/// Decides, per datagram, whether and when each copy is released.
pub(crate) struct Decider {
    link: Arc<LinkConfig>,
    passthrough: bool,
    rng: SmallRng,
    outages: Arc<OutageClock>,
    bottleneck: Option<Bottleneck>,
    last_release: Option<Instant>,
    seq: u64,
}

impl Decider {
    pub fn new(link: Arc<LinkConfig>, outages: Arc<OutageClock>, flow: u64, dir: Direction) -> Self {
        Self {
            passthrough: link.is_passthrough(),
            rng: SmallRng::seed_from_u64(stream_seed(link.seed, flow, dir)),
            bottleneck: link.rate.map(Bottleneck::new),
            link,
            outages,
            last_release: None,
            seq: 0,
        }
    }

    /// Applies the link model to one datagram received at `now` and hands the
    /// resulting copies (0, 1 or 2) to the sender task without waiting.
    pub fn process(
        &mut self,
        now: Instant,
        data: Vec<u8>,
        tx: &mpsc::Sender<Scheduled>,
        counters: &Counters,
    ) {
        // Checked before any draw: an outage takes no random decisions, so
        // the rest of the stream stays what the seed says.
        if self.outages.on_arrival(now.into_std()) {
            counters.outage_drop();
            return;
        }
        if self.passthrough {
            self.enqueue(now, data, tx, counters);
            return;
        }
        let link = Arc::clone(&self.link);
        // Fixed draw order keeps the streams reproducible for a seed.
        if self.rng.gen::<f64>() < link.loss {
            Counters::bump(&counters.dropped);
            return;
        }
        let copies = if self.rng.gen::<f64>() < link.duplicate {
            Counters::bump(&counters.duplicated);
            2
        } else {
            1
        };
        let reorder = self.rng.gen::<f64>() < link.reorder;
        if reorder {
            Counters::bump(&counters.reordered);
        }
        let hold_back = link.delay + link.jitter + Duration::from_millis(1);
        let mut data = Some(data);
        for copy in 0..copies {
            let bytes = if copy + 1 == copies {
                data.take().unwrap_or_default()
            } else {
                data.clone().unwrap_or_default()
            };
            // The bottleneck comes before the wire: a datagram is delayed
            // after its last bit left the queue's link.
            let sent = match self.bottleneck.as_mut() {
                None => now,
                Some(b) => match b.admit(now, bytes.len()) {
                    Some(done) => done,
                    None => {
                        counters.overflow_drop();
                        continue;
                    }
                },
            };
            let mut at = sent + link.delay;
            if !link.jitter.is_zero() {
                // uniform(-jitter, +jitter); jitter <= delay so `at >= sent`.
                let offset = link.jitter.mul_f64(self.rng.gen::<f64>() * 2.0);
                at = at + offset - link.jitter;
            }
            if reorder {
                // Held back and exempt from the monotone rule, so datagrams
                // sent after it overtake it.
                at += hold_back;
            } else {
                if let Some(last) = self.last_release {
                    at = at.max(last);
                }
                self.last_release = Some(at);
            }
            self.enqueue(at, bytes, tx, counters);
        }
    }

    fn enqueue(
        &mut self,
        at: Instant,
        data: Vec<u8>,
        tx: &mpsc::Sender<Scheduled>,
        counters: &Counters,
    ) {
        let seq = self.seq;
        self.seq += 1;
        match tx.try_send(Scheduled { at, seq, data }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                counters.overflow_drop();
                tracing::debug!("relay queue full, dropping datagram");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::trace!("relay sender gone, dropping datagram");
            }
        }
    }
}

/// Milliseconds elapsed since `epoch`, used as a cheap activity clock.
pub(crate) fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Everything a sender task needs besides its queue.
pub(crate) struct SenderCtx {
    pub socket: Arc<UdpSocket>,
    pub dest: SocketAddr,
    pub counters: Arc<Counters>,
    pub activity: Arc<AtomicU64>,
    pub epoch: Instant,
    pub outages: Arc<OutageClock>,
}

/// Releases queued datagrams to `ctx.dest` in release-time order. Datagrams
/// that are already due are sent right away; a timer is armed only when the
/// earliest pending datagram lies in the future.
pub(crate) async fn run_sender(mut rx: mpsc::Receiver<Scheduled>, ctx: SenderCtx) {
    let mut heap: BinaryHeap<Scheduled> = BinaryHeap::new();
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|top| top.at <= now) {
            if let Some(item) = heap.pop() {
                send(&ctx, &item.data).await;
            }
        }
        let next = heap.peek().map(|top| top.at);
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(item) => {
                    if heap.is_empty() && item.at <= Instant::now() {
                        send(&ctx, &item.data).await;
                    } else {
                        heap.push(item);
                    }
                }
                None => break,
            },
            () = tokio::time::sleep_until(next.unwrap_or(now)), if next.is_some() => {}
        }
    }
}

async fn send(ctx: &SenderCtx, data: &[u8]) {
    // Still on the wire when the link went down: lost with it.
    if ctx.outages.is_down(std::time::Instant::now()) {
        ctx.counters.outage_drop();
        return;
    }
    match ctx.socket.send_to(data, ctx.dest).await {
        Ok(_) => {
            Counters::bump(&ctx.counters.forwarded);
            ctx.activity
                .store(millis_since(ctx.epoch), Ordering::Relaxed);
        }
        Err(e) => {
            tracing::warn!(dest = %ctx.dest, len = data.len(), error = %e, "relay send failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(link: LinkConfig, n: usize) -> (Vec<Scheduled>, Instant) {
        let counters = Counters::default();
        let (tx, mut rx) = mpsc::channel(QUEUE_CAPACITY);
        let mut d = Decider::new(Arc::new(link), Arc::new(OutageClock::new(None)), 0, Direction::Up);
        let now = Instant::now();
        for i in 0..n {
            d.process(
                now + Duration::from_micros(i as u64 * 10),
                vec![i as u8],
                &tx,
                &counters,
            );
        }
        drop(tx);
        let mut out = Vec::new();
        while let Ok(s) = rx.try_recv() {
            out.push(s);
        }
        (out, now)
    }

    #[test]
    fn jitter_is_monotone_and_bounded() {
        let link = LinkConfig {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(10),
            seed: 11,
            ..LinkConfig::default()
        };
        let (out, now) = decide(link, 1000);
        assert_eq!(out.len(), 1000);
        assert!(out.windows(2).all(|w| w[0].at <= w[1].at));
        let last = now + Duration::from_micros(9990) + Duration::from_millis(20);
        assert!(out.iter().all(|s| s.at >= now && s.at <= last));
    }

    #[test]
    fn reordered_datagrams_are_held_back() {
        let link = LinkConfig {
            reorder: 0.5,
            delay: Duration::from_millis(4),
            jitter: Duration::from_millis(1),
            seed: 2,
            ..LinkConfig::default()
        };
        let (out, now) = decide(link, 200);
        let held = out
            .iter()
            .filter(|s| s.at >= now + Duration::from_millis(9))
            .count();
        assert!(held > 50, "{held}");
    }

    #[test]
    fn streams_differ_per_flow_direction_and_seed() {
        let a = stream_seed(1, 0, Direction::Up);
        assert_ne!(a, stream_seed(1, 0, Direction::Down));
        assert_ne!(a, stream_seed(1, 1, Direction::Up));
        assert_ne!(a, stream_seed(2, 0, Direction::Up));
    }
}
