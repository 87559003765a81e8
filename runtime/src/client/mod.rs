//! The QUIC client: one runtime thread per attached session.
//!
//! The thread runs a current-thread tokio runtime that owns the connection's single
//! bidirectional stream. Application threads hand it [`Command`]s through a channel and block on
//! a reply; the [`driver::Driver`] writes requests in order, reads the coordinator's frames in
//! order and completes the waiting requests. Keeping one stream and one thread for all traffic
//! is what gives the FIFO delivery the coherence protocol relies on.
//!
//! - `mod.rs`: the [`Client`] handle and the runtime thread's life (a panic on it is fatal,
//!   never a silent hang of the threads that wait for it);
//! - `connect.rs`: resolve, QUIC + mutual TLS, hello, attach;
//! - `driver.rs`: framing, the select loop, session requests (barriers, semaphores, ping,
//!   detach), and what happens when the connection fails;
//! - `errors.rs`: quinn errors as actionable [`Error`]s;
//! - `peers.rs`: [`peers::PeerLinks`], the transport of direct page transfers between members.
//!
//! The region's faults are served on the same thread by `crate::fault`.

mod connect;
mod driver;
mod errors;
mod peers;

use std::sync::Arc;

use dsm_proto::{PageNo, Rank};
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::fault::FaultService;
use crate::region::{RegionMaps, RegionStats};

/// What the coordinator said when the session started.
#[derive(Debug, Clone)]
pub(crate) struct AttachInfo {
    pub rank: Rank,
    pub nprocs: u32,
    pub size: u64,
    /// Every member's peer address by rank; empty when the session does not forward pages
    /// directly (the driver then has no [`peers::PeerLinks`]).
    #[allow(dead_code)] // Read once forwards are served.
    pub peers: Vec<Option<dsm_proto::PeerAddress>>,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// A request from an application thread to the runtime thread.
pub(crate) enum Command {
    Barrier(Reply<()>),
    SemaphoreWait { name: String, initial: u32, reply: Reply<()> },
    /// Ordered after everything this thread sent before, like a store; without a reply it is
    /// fire and forget.
    SemaphorePost { name: String, initial: u32, reply: Option<Reply<()>> },
    Ping(Vec<u8>, Reply<Vec<u8>>),
    Detach(Reply<()>),
    Stats(Reply<RegionStats>),
    /// Fire and forget, ordered like every message.
    Advise { first: PageNo, count: u64, coherence: dsm_proto::Coherence },
}

/// Handle to the runtime thread.
pub(crate) struct Client {
    commands: mpsc::UnboundedSender<Command>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub info: AttachInfo,
}

impl Client {
    /// Starts the runtime thread, connects, attaches, and returns once the session started.
    pub fn attach(config: &Config) -> Result<Client> {
        Self::attach_region(config, None)
    }

    /// Like [`Client::attach`], also servicing the faults of `region`.
    pub fn attach_region(config: &Config, region: Option<Arc<RegionMaps>>) -> Result<Client> {
        let config = config.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("dsm-runtime".into())
            .spawn(move || {
                // A panic here would leave every thread waiting on this one parked forever (in a
                // fault, a replay, a barrier): it is fatal instead, with its message.
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    runtime_thread(config, region, ready_tx, cmd_rx)
                }));
                if let Err(panic) = run {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    crate::fatal::fatal("the DSM runtime thread panicked", &msg);
                }
            })
            .map_err(|e| Error::os("spawning the DSM runtime thread", e))?;
        match ready_rx.recv() {
            Ok(Ok(info)) => Ok(Client { commands: cmd_tx, thread: Some(thread), info }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(Error::os("starting the DSM runtime thread", "it exited unexpectedly"))
            }
        }
    }

    /// Sends a command without waiting for anything.
    pub fn post(&self, cmd: Command) -> Result<()> {
        self.commands
            .send(cmd)
            .map_err(|_| Error::ConnectionLost("the DSM runtime thread has stopped".into()))
    }

    /// Sends a command and blocks until its reply.
    pub fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .map_err(|_| Error::ConnectionLost("the DSM runtime thread has stopped".into()))?;
        rx.blocking_recv()
            .unwrap_or_else(|_| Err(Error::ConnectionLost("the DSM runtime thread has stopped".into())))
    }
}

/// The runtime thread: connect and attach, report the outcome on `ready`, then drive the
/// connection (and the region's faults) until detach or failure.
fn runtime_thread(
    config: Config,
    region: Option<Arc<RegionMaps>>,
    ready: std::sync::mpsc::Sender<Result<AttachInfo>>,
    commands: mpsc::UnboundedReceiver<Command>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(Error::os("starting the DSM runtime thread", e)));
            return;
        }
    };
    rt.block_on(async move {
        let (mut driver, info) = match connect::connect(&config).await {
            Ok(ok) => ok,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        if let Some(maps) = region {
            match FaultService::new(maps) {
                Ok((service, uffd, efd)) => driver.serve_region(service, uffd, efd),
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            }
        }
        let _ = ready.send(Ok(info));
        driver.run(commands).await;
    });
}

impl Drop for Client {
    fn drop(&mut self) {
        // Closing the channel ends the driver loop, which closes the connection.
        let (tx, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.commands, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

