//! What the coordinator tells its operator as things happen: each registry [`Event`] and
//! [`EndedSession`] becomes one log line with structured fields, a metric, and (for a lost
//! rank) a time the status view can show.
//!
//! Strings a client chose (its label) are logged with `?` (Debug), which escapes control
//! characters, so a client cannot write terminal escapes into the coordinator's log.

use std::time::SystemTime;

use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::registry::{EndedSession, Event};
use crate::status::{unix_ms, LossTimes};

/// Logs and counts `events` and `ended`, in that order.
pub(crate) fn record(events: Vec<Event>, ended: Vec<EndedSession>, metrics: &Metrics, losses: &mut LossTimes) {
    for event in events {
        metrics.on_event(&event);
        match event {
            Event::SessionStarted { session, nprocs, size } => {
                info!(%session, nprocs, size, "session started");
            }
            Event::RankLost { session, rank, label, reason } => {
                losses.record(&session, rank, unix_ms(SystemTime::now()));
                warn!(%session, rank, ?label, %reason, "rank lost");
            }
            Event::LeftWaiting { session, label, reason } => {
                warn!(%session, ?label, %reason, "process left a session that was still waiting for its processes");
            }
        }
    }
    for e in ended {
        metrics.on_ended(&e);
        losses.forget(&e.name);
        let p = e.stats.pages;
        let lost: Vec<String> = e.lost.iter().map(ToString::to_string).collect();
        info!(
            session = %e.name,
            nprocs = e.nprocs,
            barriers = e.stats.barriers,
            semaphore_waits = e.stats.semaphore_waits,
            semaphore_posts = e.stats.semaphore_posts,
            fetches = p.fetches,
            ownership_grants = p.ownership_grants,
            invalidations = p.invalidations,
            downgrades = p.downgrades,
            recalls = p.recalls,
            pages_sent = p.pages_sent,
            bytes_sent = p.bytes_sent,
            writebacks = p.writebacks,
            replayed_writes = p.replayed_writes,
            updates = p.updates,
            retries = p.retries,
            to_update = p.to_update,
            to_invalidate = p.to_invalidate,
            forwards = p.forwards,
            forward_aborts = p.forward_aborts,
            flushes = p.flushes,
            backup_invalidations = p.backup_invalidations,
            backups_released = p.backups_released,
            restores = p.restores,
            backups_home = p.backups_home,
            lost_ranks = %if lost.is_empty() { "none".to_string() } else { lost.join(",") },
            "session ended"
        );
    }
}
