//! The relay-wide outage clock: when the link is down.
//!
//! One [`OutageClock`] is shared by every direction of every flow, so an
//! outage cuts all of them at the same instants. Its window is either planned
//! by [`crate::Outage`] (relative to the first datagram the relay received)
//! or started on demand by [`crate::Relay::begin_outage`].

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::config::Outage;

/// When the link is (or was, or will be) down.
#[derive(Debug)]
pub(crate) struct OutageClock {
    planned: Option<Outage>,
    /// Arrival of the first datagram: the origin of a planned outage.
    first: OnceLock<Instant>,
    /// The current, last or next window `[start, end)`. Only one at a time: a
    /// window begun on demand replaces it.
    window: Mutex<Option<(Instant, Instant)>>,
}

impl OutageClock {
    pub fn new(planned: Option<Outage>) -> Self {
        Self {
            planned,
            first: OnceLock::new(),
            window: Mutex::new(None),
        }
    }

    /// Records the arrival of a datagram at `now` (the first one schedules a
    /// planned outage) and tells whether the link is down at that instant.
    pub fn on_arrival(&self, now: Instant) -> bool {
        if self.first.set(now).is_ok() {
            if let Some(p) = self.planned {
                let start = now + p.at;
                self.set_window(start, start + p.duration);
            }
        }
        self.is_down(now)
    }

    /// Whether the link is down at `now`.
    pub fn is_down(&self, now: Instant) -> bool {
        self.window()
            .is_some_and(|(start, end)| start <= now && now < end)
    }

    /// Takes the link down from `now` for `duration`, replacing any window.
    pub fn begin(&self, now: Instant, duration: Duration) -> (Instant, Instant) {
        let window = (now, now + duration);
        self.set_window(window.0, window.1);
        window
    }

    /// The current, last or next window, if any.
    pub fn window(&self) -> Option<(Instant, Instant)> {
        // A poisoned lock only means a panic elsewhere; the value is a plain
        // pair of instants and still meaningful.
        *self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_window(&self, start: Instant, end: Instant) {
        *self.window.lock().unwrap_or_else(PoisonError::into_inner) = Some((start, end));
        tracing::info!(
            in_ms = start.saturating_duration_since(Instant::now()).as_millis() as u64,
            for_ms = (end - start).as_millis() as u64,
            "relay outage scheduled"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_window_starts_at_the_first_datagram() {
        let clock = OutageClock::new(Some(Outage {
            at: Duration::from_millis(100),
            duration: Duration::from_millis(50),
        }));
        let t0 = Instant::now();
        assert_eq!(clock.window(), None);
        assert!(!clock.on_arrival(t0));
        // A later datagram does not move the origin.
        assert!(!clock.on_arrival(t0 + Duration::from_millis(99)));
        assert!(clock.on_arrival(t0 + Duration::from_millis(100)));
        assert!(clock.is_down(t0 + Duration::from_millis(149)));
        assert!(!clock.is_down(t0 + Duration::from_millis(150)));
        assert_eq!(
            clock.window(),
            Some((t0 + Duration::from_millis(100), t0 + Duration::from_millis(150)))
        );
    }

    #[test]
    fn no_plan_means_never_down_until_begun() {
        let clock = OutageClock::new(None);
        let t0 = Instant::now();
        assert!(!clock.on_arrival(t0));
        assert!(!clock.is_down(t0 + Duration::from_secs(3600)));
        let t1 = t0 + Duration::from_secs(1);
        clock.begin(t1, Duration::from_secs(3));
        assert!(!clock.is_down(t1 - Duration::from_millis(1)));
        assert!(clock.is_down(t1));
        assert!(clock.is_down(t1 + Duration::from_millis(2999)));
        assert!(!clock.is_down(t1 + Duration::from_secs(3)));
    }
}
