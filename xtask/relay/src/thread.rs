//! Blocking wrapper: runs a relay on a dedicated thread with its own
//! current-thread tokio runtime, for callers (tests) that do not use tokio.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::{Counters, RelayConfig, RelayError, RelayStats};
use crate::outage::OutageClock;

/// Handle of a relay running on its own thread (see [`spawn`]).
///
/// Dropping it stops the relay and joins the thread.
#[derive(Debug)]
pub struct RelayThread {
    local_addr: SocketAddr,
    counters: Arc<Counters>,
    outages: Arc<OutageClock>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RelayThread {
    /// Address the relay listens on; point clients here.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counters so far, summed over both directions of all flows.
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Takes the link down in both directions from now for `duration`; see
    /// [`crate::Relay::begin_outage`].
    pub fn begin_outage(&self, duration: Duration) -> (Instant, Instant) {
        // The clock is shared with the relay's thread; no message needed.
        self.outages.begin(Instant::now(), duration)
    }

    /// The current, last or next outage window `[start, end)`, if any.
    pub fn outage_window(&self) -> Option<(Instant, Instant)> {
        self.outages.window()
    }

    /// Stops the relay and joins its thread (same as dropping the handle).
    pub fn shutdown(self) {}
}

impl Drop for RelayThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("relay thread panicked");
            }
        }
    }
}

/// Starts a relay on a dedicated thread with its own current-thread tokio
/// runtime. Returns once the listening socket is bound (or binding failed).
pub fn spawn(cfg: RelayConfig) -> Result<RelayThread, RelayError> {
    cfg.link.validate()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("dsm-relay".into())
        .spawn(move || {
            runtime.block_on(async move {
                match crate::start(cfg).await {
                    Ok(relay) => {
                        let _ = ready_tx.send(Ok((relay.local_addr(), relay.shared())));
                        // Resolves when the handle sends or is dropped.
                        let _ = stop_rx.await;
                        relay.shutdown();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
            // Dropping the runtime here cancels every remaining task and
            // closes all sockets before the thread is joined.
        })?;
    match ready_rx.recv() {
        Ok(Ok((local_addr, (counters, outages)))) => Ok(RelayThread {
            local_addr,
            counters,
            outages,
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(RelayError::Io(std::io::Error::other(
                "relay thread exited during startup",
            )))
        }
    }
}
