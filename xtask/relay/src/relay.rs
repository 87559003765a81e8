//! The async relay: listening socket, per-client flows with their own
//! upstream sockets, and the [`Relay`] handle.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::config::{Counters, LinkConfig, RelayConfig, RelayError, RelayStats};
use crate::link::{
    millis_since, run_sender, Decider, Direction, Scheduled, SenderCtx, QUEUE_CAPACITY,
};
use crate::outage::OutageClock;

/// Largest datagram the relay can carry.
pub const MAX_DATAGRAM: usize = 65535;

/// A flow (client address) silent in both directions for this long is
/// forgotten: its upstream socket is closed and a later datagram from the
/// same client starts a new flow (with a new upstream port).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often idle flows are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// After this many consecutive receive errors a socket loop backs off briefly
/// so that a persistent error cannot spin the CPU.
const ERROR_BURST: u32 = 64;
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Handle of a relay running on a tokio runtime (see [`start`]).
///
/// Dropping it (or calling [`Relay::shutdown`]) stops the relay: all tasks
/// are aborted and the sockets closed; datagrams still queued are discarded.
#[derive(Debug)]
pub struct Relay {
    local_addr: SocketAddr,
    counters: Arc<Counters>,
    outages: Arc<OutageClock>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Address the relay listens on; point clients here.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counters so far, summed over both directions of all flows.
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Takes the link down in both directions from now for `duration`
    /// (replacing a planned [`crate::Outage`]); returns the window
    /// `[start, end)`. For tests that start the outage at a chosen point of
    /// their workload.
    pub fn begin_outage(&self, duration: Duration) -> (std::time::Instant, std::time::Instant) {
        self.outages.begin(std::time::Instant::now(), duration)
    }

    /// The current, last or next outage window `[start, end)`, if any.
    pub fn outage_window(&self) -> Option<(std::time::Instant, std::time::Instant)> {
        self.outages.window()
    }

    /// Stops the relay (same as dropping the handle).
    pub fn shutdown(self) {}

    pub(crate) fn shared(&self) -> (Arc<Counters>, Arc<OutageClock>) {
        (Arc::clone(&self.counters), Arc::clone(&self.outages))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Validates `cfg`, binds the listening socket and spawns the relay tasks on
/// the current tokio runtime.
///
/// Must be called from within a tokio runtime with the time and I/O drivers
/// enabled.
pub async fn start(cfg: RelayConfig) -> Result<Relay, RelayError> {
    cfg.link.validate()?;
    let socket = UdpSocket::bind(cfg.listen)
        .await
        .map_err(|source| RelayError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let local_addr = socket.local_addr()?;
    let counters = Arc::new(Counters::default());
    let outages = Arc::new(OutageClock::new(cfg.link.outage));
    let ctx = MainCtx {
        listen: Arc::new(socket),
        to: cfg.to,
        link: Arc::new(cfg.link),
        counters: Arc::clone(&counters),
        outages: Arc::clone(&outages),
        epoch: Instant::now(),
    };
    tracing::info!(listen = %local_addr, to = %cfg.to, link = ?ctx.link, "relay started");
    let task = tokio::spawn(run(ctx));
    Ok(Relay {
        local_addr,
        counters,
        outages,
        task,
    })
}

struct MainCtx {
    listen: Arc<UdpSocket>,
    to: SocketAddr,
    link: Arc<LinkConfig>,
    counters: Arc<Counters>,
    outages: Arc<OutageClock>,
    epoch: Instant,
}

/// One client address and its upstream socket.
struct Flow {
    index: u64,
    up: Decider,
    up_tx: mpsc::Sender<Scheduled>,
    /// Activity clock (ms since relay start) of the last datagram seen or
    /// sent in either direction.
    activity: Arc<AtomicU64>,
    /// Upstream receiver and both sender tasks; aborted when dropped.
    _tasks: JoinSet<()>,
}

impl Flow {
    fn open(ctx: &MainCtx, index: u64, client: SocketAddr) -> std::io::Result<Self> {
        let bind: SocketAddr = match ctx.to {
            SocketAddr::V4(a) if a.ip().is_loopback() => (Ipv4Addr::LOCALHOST, 0).into(),
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(a) if a.ip().is_loopback() => (Ipv6Addr::LOCALHOST, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let std_sock = std::net::UdpSocket::bind(bind)?;
        std_sock.set_nonblocking(true)?;
        let upstream = Arc::new(UdpSocket::from_std(std_sock)?);
        tracing::debug!(flow = index, %client, upstream = ?upstream.local_addr().ok(), "new relay flow");

        let activity = Arc::new(AtomicU64::new(millis_since(ctx.epoch)));
        let (up_tx, up_rx) = mpsc::channel(QUEUE_CAPACITY);
        let (down_tx, down_rx) = mpsc::channel(QUEUE_CAPACITY);
        let mut tasks = JoinSet::new();
        tasks.spawn(run_sender(
            up_rx,
            SenderCtx {
                socket: Arc::clone(&upstream),
                dest: ctx.to,
                counters: Arc::clone(&ctx.counters),
                activity: Arc::clone(&activity),
                epoch: ctx.epoch,
                outages: Arc::clone(&ctx.outages),
            },
        ));
        tasks.spawn(run_sender(
            down_rx,
            SenderCtx {
                socket: Arc::clone(&ctx.listen),
                dest: client,
                counters: Arc::clone(&ctx.counters),
                activity: Arc::clone(&activity),
                epoch: ctx.epoch,
                outages: Arc::clone(&ctx.outages),
            },
        ));
        tasks.spawn(run_downstream(
            upstream,
            Decider::new(Arc::clone(&ctx.link), Arc::clone(&ctx.outages), index, Direction::Down),
            down_tx,
            Arc::clone(&ctx.counters),
            Arc::clone(&activity),
            ctx.epoch,
        ));
        Ok(Self {
            index,
            up: Decider::new(Arc::clone(&ctx.link), Arc::clone(&ctx.outages), index, Direction::Up),
            up_tx,
            activity,
            _tasks: tasks,
        })
    }
}

/// Receive loop of the listening socket (client -> target direction) and
/// idle-flow bookkeeping.
async fn run(ctx: MainCtx) {
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut next_index = 0u64;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut errors = 0u32;
    loop {
        tokio::select! {
            res = ctx.listen.recv_from(&mut buf) => match res {
                Ok((n, client)) => {
                    errors = 0;
                    let now = Instant::now();
                    let flow = match flows.entry(client) {
                        Entry::Occupied(e) => e.into_mut(),
                        Entry::Vacant(e) => match Flow::open(&ctx, next_index, client) {
                            Ok(flow) => {
                                next_index += 1;
                                e.insert(flow)
                            }
                            Err(err) => {
                                tracing::warn!(%client, error = %err, "cannot open upstream socket, dropping datagram");
                                continue;
                            }
                        },
                    };
                    flow.activity.store(millis_since(ctx.epoch), Ordering::Relaxed);
                    flow.up.process(now, buf[..n].to_vec(), &flow.up_tx, &ctx.counters);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "relay listen socket receive error");
                    errors = backoff(errors).await;
                }
            },
            _ = sweep.tick() => {
                let now_ms = millis_since(ctx.epoch);
                let idle_ms = u64::try_from(IDLE_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
                flows.retain(|client, flow| {
                    let idle = now_ms.saturating_sub(flow.activity.load(Ordering::Relaxed)) >= idle_ms;
                    if idle {
                        tracing::debug!(flow = flow.index, %client, "forgetting idle relay flow");
                    }
                    !idle
                });
            }
        }
    }
}

/// Receive loop of one upstream socket (target -> client direction).
async fn run_downstream(
    upstream: Arc<UdpSocket>,
    mut decider: Decider,
    tx: mpsc::Sender<Scheduled>,
    counters: Arc<Counters>,
    activity: Arc<AtomicU64>,
    epoch: Instant,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut errors = 0u32;
    loop {
        match upstream.recv_from(&mut buf).await {
            Ok((n, _from)) => {
                errors = 0;
                activity.store(millis_since(epoch), Ordering::Relaxed);
                decider.process(Instant::now(), buf[..n].to_vec(), &tx, &counters);
            }
            Err(e) => {
                // e.g. ICMP port unreachable surfacing as ConnectionReset on
                // some platforms: not fatal.
                tracing::debug!(error = %e, "relay upstream socket receive error");
                errors = backoff(errors).await;
            }
        }
    }
}

async fn backoff(errors: u32) -> u32 {
    let errors = errors.saturating_add(1);
    if errors >= ERROR_BURST {
        tokio::time::sleep(ERROR_BACKOFF).await;
    } else {
        tokio::task::yield_now().await;
    }
    errors
}
