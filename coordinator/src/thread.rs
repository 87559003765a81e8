//! A coordinator on a thread of its own ([`spawn`]), as tests, the benchmarks and `cargo xtask
//! demo` run it: the thread builds the runtime the binary would, binds, reports the address and
//! the operator views, and serves until the [`CoordinatorThread`] is dropped.

use std::net::SocketAddr;

use crate::server::{Config, Coordinator, ServeError};

/// A coordinator running on its own thread (tests, `cargo xtask demo`). Dropping it shuts the
/// coordinator down and joins the thread.
pub struct CoordinatorThread {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    status: Box<dyn Fn() -> Vec<String> + Send + Sync>,
    report: Box<dyn Fn() -> dsm_proto::StatusReport + Send + Sync>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CoordinatorThread {
    /// The address the coordinator listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// One line per session (see [`Coordinator::status`]).
    pub fn status(&self) -> Vec<String> {
        (self.status)()
    }

    /// The full status report (what `dsm status` gets).
    pub fn report(&self) -> dsm_proto::StatusReport {
        (self.report)()
    }

    /// The address `/metrics` is served on, if [`Config::metrics`] asked for it.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }
}

impl Drop for CoordinatorThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a coordinator on a new thread, serving connections on a multi-threaded tokio runtime
/// of `config.workers` workers (as the binary does).
pub fn spawn(config: Config) -> Result<CoordinatorThread, ServeError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name("dsm-coordinator".into()).spawn(move || {
        let rt = match crate::workers::runtime(config.workers) {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(ServeError::Io(e)));
                return;
            }
        };
        rt.block_on(async move {
            let coordinator = match Coordinator::bind(&config) {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let handles = Handles {
                metrics_addr: coordinator.metrics_addr(),
                status: Box::new(coordinator.status_handle()),
                report: Box::new(coordinator.report_handle()),
            };
            let _ = ready_tx.send(coordinator.local_addr().map(|a| (a, handles)).map_err(ServeError::Io));
            coordinator
                .run(async move {
                    let _ = stop_rx.await;
                })
                .await;
        });
    })?;
    let (addr, handles) = ready_rx
        .recv()
        .map_err(|_| ServeError::Io(std::io::Error::other("coordinator thread died")))??;
    Ok(CoordinatorThread {
        addr,
        metrics_addr: handles.metrics_addr,
        status: handles.status,
        report: handles.report,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// What [`spawn`]'s thread hands back once the coordinator is bound.
struct Handles {
    metrics_addr: Option<SocketAddr>,
    status: Box<dyn Fn() -> Vec<String> + Send + Sync>,
    report: Box<dyn Fn() -> dsm_proto::StatusReport + Send + Sync>,
}
