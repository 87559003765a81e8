//! The coordinator's I/O: a quinn endpoint, one reader and one writer task per connection.
//!
//! Each connection carries one bidirectional stream (the FIFO rule of the coherence protocol).
//! The reader decodes frames and feeds them to the shared [`Registry`] under a mutex; the
//! messages the registry produces go, in order, to each destination's writer task through an
//! unbounded channel, and the writer batches whatever is queued into one stream write.
//!
//! Operator views hook in at a few points only: status requests are answered here
//! (`status.rs`), every message in and out and every connection event is counted
//! (`metrics.rs`), and registry events are logged as they happen (`journal.rs`).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use dsm_proto::{FrameQueue, FrameReader, Hello, ToCoordinator, ToProcess, HELLO_LEN};
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::close_code;
use crate::metrics::{Metrics, MetricsEndpoint};
use crate::registry::{ConnId, Output, Registry};
use crate::status::LossTimes;

/// Chunks taken from quinn per read: about one packet's stream data each.
const READ_CHUNKS: usize = 32;
/// A writer stops adding queued messages to a batch at this size.
const BATCH_LIMIT: usize = 256 * 1024;

/// How the coordinator is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (UDP).
    pub listen: SocketAddr,
    /// Directory with `ca.pem`, `coordinator.pem` and `coordinator.key`.
    pub cert_dir: PathBuf,
    /// QUIC keep-alive, idle timeout and congestion control.
    pub transport: dsm_cert::Transport,
    /// How long a new connection may take to send its hello.
    pub hello_timeout: Duration,
    /// Where to serve Prometheus metrics over plain HTTP (`/metrics`), if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Worker threads of the runtime [`crate::spawn`] starts (default [`crate::default_workers`]).
    pub workers: usize,
    /// Let sessions transfer pages directly between their members when every member offers it
    /// (default on; see [`crate::Registry::with_direct_transfers`]).
    pub direct_transfers: bool,
}

impl Config {
    /// Defaults: the default certificate directory and transport.
    pub fn new(listen: SocketAddr) -> Self {
        Config {
            listen,
            cert_dir: dsm_cert::default_dir(),
            transport: dsm_cert::Transport::default(),
            hello_timeout: Duration::from_secs(10),
            metrics: None,
            workers: crate::workers::default_workers(),
            direct_transfers: true,
        }
    }

    /// Takes the busy-poll budget from `DSM_BUSY_POLL` when it is set and not blank, as the
    /// processes do (`dsm::Config::from_env`): the private coordinators of `dsm run`, the tests
    /// and the benchmarks poll as their processes do. A value that is not a duration is an
    /// error naming the variable.
    pub fn busy_poll_from_env(&mut self) -> Result<(), String> {
        if let Some(v) = std::env::var("DSM_BUSY_POLL").ok().filter(|v| !v.trim().is_empty()) {
            self.transport.busy_poll = dsm_proto::units::parse_duration(&v).map_err(|e| format!("DSM_BUSY_POLL: {e}"))?;
        }
        Ok(())
    }
}

/// Why the coordinator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Certificates could not be loaded.
    #[error(transparent)]
    Certificates(#[from] dsm_cert::Error),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The transport settings cannot work together.
    #[error(transparent)]
    Transport(#[from] dsm_cert::TransportError),
    /// The metrics address could not be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    MetricsBind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Some other I/O failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What all connections share, behind one lock: the registry (attach, pending sessions,
/// disconnects, status) and the operator views. Members' messages of running sessions do not
/// take it: they go to their session's own lock (`Registry::member`).
struct Shared {
    registry: Registry,
    /// Remote address of every served connection (for the status view).
    peers: HashMap<ConnId, SocketAddr>,
    losses: LossTimes,
    metrics: Arc<Metrics>,
    writers: Writers,
}

enum WriterCmd {
    Send(ToProcess),
    Close(&'static str),
}

/// Every served connection's writer task, read-mostly: sessions dispatch in parallel under the
/// read lock; a connection is added or removed under the write lock.
#[derive(Clone, Default)]
struct Writers(Arc<RwLock<HashMap<ConnId, mpsc::UnboundedSender<WriterCmd>>>>);

impl Writers {
    /// Hands every output to its connection's writer, in order.
    fn dispatch(&self, out: Vec<Output>, metrics: &Metrics) {
        let writers = self.0.read();
        for o in out {
            match o {
                Output::Send(conn, msg) => {
                    if let Some(w) = writers.get(&conn) {
                        metrics.on_send(conn, &msg);
                        let _ = w.send(WriterCmd::Send(msg));
                    }
                }
                Output::Close(conn, why) => {
                    if let Some(w) = writers.get(&conn) {
                        let _ = w.send(WriterCmd::Close(why));
                    }
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.0.read().len()
    }
}

impl Shared {
    fn dispatch(&mut self, out: Vec<Output>) {
        self.writers.dispatch(out, &self.metrics);
        let (events, ended) = (self.registry.take_events(), self.registry.take_ended());
        if !ended.is_empty() {
            // A session ended: the run buffers kept for bulk traffic go back to the OS, so an
            // idle coordinator holds none (`coordinator.rss_after`).
            dsm_proto::buffers::trim();
        }
        crate::journal::record(events, ended, &self.metrics, &mut self.losses);
    }

    fn status_report(&self, started: SystemTime) -> dsm_proto::StatusReport {
        let cx = crate::status::Context {
            peers: &self.peers,
            losses: &self.losses,
            started,
            connections: self.writers.len(),
        };
        crate::status::report(&self.registry, &cx)
    }
}

/// A bound coordinator, ready to [`run`](Coordinator::run).
pub struct Coordinator {
    endpoint: quinn::Endpoint,
    /// The server configuration for peers on a loopback address.
    loopback_config: Arc<quinn::ServerConfig>,
    shared: Arc<Mutex<Shared>>,
    hello_timeout: Duration,
    /// How long the workers keep polling after a message ([`dsm_cert::Transport::busy_poll`]).
    busy_poll: Duration,
    next_conn: AtomicU64,
    metrics: Arc<Metrics>,
    metrics_endpoint: Mutex<Option<MetricsEndpoint>>,
    metrics_addr: Option<SocketAddr>,
    started: SystemTime,
}

impl Coordinator {
    /// Loads the certificates and binds the UDP socket. Must be called inside a tokio runtime.
    pub fn bind(config: &Config) -> Result<Self, ServeError> {
        config.transport.validate()?;
        let server_config = dsm_cert::quic_server_config(&config.cert_dir, &config.transport, config.listen.ip())?;
        // Peers on this machine get the loopback transport whatever the listening address
        // (`dsm_cert::Transport::to_quinn_for`: no MTU search); same certificates.
        let mut loopback_config = server_config.clone();
        let loopback = std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST);
        loopback_config.transport_config(Arc::new(config.transport.to_quinn_for(Some(loopback))));
        let loopback_config = Arc::new(loopback_config);
        let endpoint = dsm_cert::endpoint(config.listen, Some(server_config))
            .map_err(|source| ServeError::Bind { addr: config.listen, source })?;
        let metrics_endpoint = match config.metrics {
            Some(addr) => Some(MetricsEndpoint::bind(addr).map_err(|source| ServeError::MetricsBind { addr, source })?),
            None => None,
        };
        let metrics_addr = metrics_endpoint.as_ref().map(MetricsEndpoint::local_addr).transpose()?;
        let metrics = Arc::new(Metrics::new());
        Ok(Coordinator {
            endpoint,
            loopback_config,
            shared: Arc::new(Mutex::new(Shared {
                registry: Registry::new().with_direct_transfers(config.direct_transfers),
                peers: HashMap::new(),
                losses: LossTimes::default(),
                metrics: Arc::clone(&metrics),
                writers: Writers::default(),
            })),
            hello_timeout: config.hello_timeout,
            busy_poll: config.transport.busy_poll,
            next_conn: AtomicU64::new(1),
            metrics,
            metrics_endpoint: Mutex::new(metrics_endpoint),
            metrics_addr,
            started: SystemTime::now(),
        })
    }

    /// The address `/metrics` is served on, if [`Config::metrics`] asked for it.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// A function that returns the full status report (what `dsm status` gets), usable after
    /// [`run`](Self::run) took `self`.
    pub fn report_handle(&self) -> impl Fn() -> dsm_proto::StatusReport + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        let started = self.started;
        move || shared.lock().status_report(started)
    }

    /// A function that returns the metrics text (what `/metrics` serves).
    pub fn metrics_handle(&self) -> impl Fn() -> String + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        let metrics = Arc::clone(&self.metrics);
        move || {
            let counts = shared.lock().registry.session_counts();
            metrics.render(counts)
        }
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// One line per session.
    pub fn status(&self) -> Vec<String> {
        self.shared.lock().registry.status()
    }

    /// A function that returns the status lines, usable after [`run`](Self::run) took `self`.
    pub fn status_handle(&self) -> impl Fn() -> Vec<String> + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || shared.lock().registry.status()
    }

    /// Serves until `shutdown` completes, then closes every connection with a "shutting down"
    /// reason and waits briefly for the peers to hear it.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let metrics_task = self.metrics_endpoint.lock().take().map(|endpoint| {
            tokio::spawn(endpoint.serve(Arc::new(self.metrics_handle())).in_current_span())
        });
        let this = Arc::new(self);
        // Keeps the worker polling for a moment after each message (see `dsm_cert::BusyPoll`).
        let busy = dsm_cert::BusyPoll::spawn(this.busy_poll);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                incoming = this.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let id = this.next_conn.fetch_add(1, Ordering::Relaxed);
                    let remote = incoming.remote_address();
                    let span = info_span!("conn", id, %remote);
                    tokio::spawn(Arc::clone(&this).handle_incoming(id, incoming, busy.clone()).instrument(span));
                }
                () = &mut shutdown => break,
            }
        }
        info!("shutting down");
        if let Some(task) = metrics_task {
            task.abort();
        }
        this.endpoint.close(close_code::SHUTDOWN.into(), b"coordinator shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), this.endpoint.wait_idle()).await;
    }

    async fn handle_incoming(self: Arc<Self>, id: ConnId, incoming: quinn::Incoming, busy: dsm_cert::BusyPoll) {
        let local = dsm_cert::is_loopback(incoming.remote_address().ip());
        let connecting = if local { incoming.accept_with(Arc::clone(&self.loopback_config)) } else { incoming.accept() };
        let conn = match async { connecting?.await }.await {
            Ok(c) => c,
            Err(e) => {
                // TLS refusals (no client certificate, unknown CA, self-signed) show up here.
                self.metrics.on_refused("tls");
                warn!(reason = %e, "handshake refused");
                return;
            }
        };
        self.metrics.on_accept();
        debug!("connected");
        match tokio::time::timeout(self.hello_timeout, self.open(&conn)).await {
            Ok(Ok((send, recv))) => self.serve(id, conn, send, recv, busy).await,
            Ok(Err(why)) => {
                self.metrics.on_refused("hello");
                warn!(reason = %why, "handshake refused");
            }
            Err(_) => {
                self.metrics.on_refused("timeout");
                warn!(reason = %format!("no hello within {:?}", self.hello_timeout), "handshake refused");
                conn.close(close_code::PROTOCOL_ERROR.into(), b"no hello in time");
            }
        }
    }

    /// Accepts the connection's stream and exchanges hellos.
    async fn open(
        &self,
        conn: &quinn::Connection,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let mut hello = [0u8; HELLO_LEN];
        recv.read_exact(&mut hello).await.map_err(|e| format!("reading hello: {e}"))?;
        send.write_all(&Hello::ours().encode()).await.map_err(|e| e.to_string())?;
        if let Err(e) = Hello::decode(hello).and_then(Hello::check) {
            // Our hello is on its way; the client reports the mismatch from it. Give it a moment
            // to arrive before the close discards it.
            let _ = send.finish();
            let reason = e.to_string();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            conn.close(close_code::VERSION_MISMATCH.into(), reason.as_bytes());
            return Err(reason);
        }
        Ok((send, recv))
    }

    async fn serve(
        self: Arc<Self>,
        id: ConnId,
        conn: quinn::Connection,
        send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        busy: dsm_cert::BusyPoll,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let writers = {
            let mut shared = self.shared.lock();
            shared.writers.0.write().insert(id, tx);
            shared.peers.insert(id, conn.remote_address());
            // Where the process's peers reach it: its endpoint serves them on this socket.
            shared.registry.connected(id, conn.remote_address());
            shared.writers.clone()
        };
        // Set once this connection is a member of a running session: its messages then take
        // only that session's lock.
        let mut member: Option<crate::registry::MemberHandle> = None;
        self.metrics.on_open();
        let writer = tokio::spawn(write_loop(conn.clone(), send, rx).in_current_span());

        let mut frames = FrameReader::with_capacity(64 * 1024);
        let mut chunks: [Bytes; READ_CHUNKS] = Default::default();
        let (detail, clean) = 'read: loop {
            match recv.read_chunks(&mut chunks).await {
                Ok(Some(n)) => {
                    busy.touch();
                    frames.extend_from_chunks(&mut chunks[..n]);
                }
                Ok(None) => break 'read ("closed its stream".to_string(), true),
                Err(e) => break 'read (connection_detail(&e), is_clean(&e)),
            }
            loop {
                match frames.next::<ToCoordinator>() {
                    Ok(Some(msg)) => {
                        self.metrics.on_receive(id, &msg);
                        if !matches!(msg, ToCoordinator::Status { .. } | ToCoordinator::Ping { .. }) {
                            if member.is_none() {
                                member = self.shared.lock().registry.member(id);
                            }
                            if let Some(m) = &member {
                                let follow = m.handle(msg, |out| writers.dispatch(out, &self.metrics));
                                if follow.needed() {
                                    let mut shared = self.shared.lock();
                                    let mut out = Vec::new();
                                    shared.registry.follow_up(m, follow, &mut out);
                                    shared.dispatch(out);
                                }
                                continue;
                            }
                        }
                        let mut shared = self.shared.lock();
                        if let ToCoordinator::Status { req } = msg {
                            // Answered here rather than by the registry: only this layer knows
                            // peer addresses and times.
                            let report = shared.status_report(self.started);
                            shared.dispatch(vec![Output::Send(id, ToProcess::Status { req, report })]);
                            continue;
                        }
                        let mut out = Vec::new();
                        shared.registry.handle_message(id, msg, &mut out);
                        shared.dispatch(out);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!(reason = %e, "closing connection: bad frame");
                        conn.close(close_code::PROTOCOL_ERROR.into(), e.to_string().as_bytes());
                        break 'read (format!("sent a bad frame ({e})"), false);
                    }
                }
            }
        };
        // A member is lost under its session's lock (what that sends is ordered with the
        // session's other messages); the registry then learns of it.
        let follow = member.as_ref().map(|m| (m, m.disconnect(&detail, |out| writers.dispatch(out, &self.metrics))));
        let mut shared = self.shared.lock();
        log_close(shared.registry.place(id), &detail, clean);
        let mut out = Vec::new();
        if let Some((m, follow)) = follow {
            shared.registry.follow_up(m, follow, &mut out);
        }
        shared.registry.handle_disconnect(id, &detail, &mut out);
        shared.dispatch(out);
        shared.writers.0.write().remove(&id);
        shared.peers.remove(&id);
        drop(shared);
        self.metrics.on_close(id, clean);
        writer.abort();
        // Now, and once more when quinn has drained the connection and dropped its buffers.
        crate::homes::release_freed_heap();
        tokio::spawn(async {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            crate::homes::release_freed_heap();
        });
    }
}

/// A connection ended: logged at once, a warning unless it ended cleanly. (A rank this loses is
/// logged again, as "rank lost", by the journal.)
fn log_close(place: Option<(&str, Option<dsm_proto::Rank>)>, detail: &str, clean: bool) {
    match (place, clean) {
        (Some((session, rank)), true) => info!(%session, rank, reason = %detail, "connection closed"),
        (Some((session, rank)), false) => warn!(%session, rank, reason = %detail, "connection closed"),
        (None, true) => info!(reason = %detail, "connection closed"),
        (None, false) => warn!(reason = %detail, "connection closed"),
    }
}

/// Whether the peer ended the connection on purpose (closed it with code 0, or we did).
fn is_clean(e: &quinn::ReadError) -> bool {
    match e {
        quinn::ReadError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(c)) => {
            u64::from(c.error_code) == u64::from(close_code::OK)
        }
        quinn::ReadError::ConnectionLost(quinn::ConnectionError::LocallyClosed) => true,
        _ => false,
    }
}

fn connection_detail(e: &quinn::ReadError) -> String {
    match e {
        quinn::ReadError::ConnectionLost(quinn::ConnectionError::TimedOut) => {
            "went silent past the idle timeout".into()
        }
        quinn::ReadError::ConnectionLost(c) => format!("connection lost: {c}"),
        other => other.to_string(),
    }
}

async fn write_loop(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<WriterCmd>,
) {
    // Page data goes to quinn as the allocation the message carried (no copy into the batch).
    let mut queue = FrameQueue::new();
    while let Some(first) = rx.recv().await {
        let mut close = None;
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                WriterCmd::Send(msg) => {
                    if let Err(e) = queue.push(msg) {
                        // Dropping it would leave the peer waiting forever for an answer:
                        // close the connection instead, so it gets a clear error.
                        tracing::error!("a message to this connection cannot be framed ({e}); closing it");
                        let _ = send.write_all_chunks(&mut queue.take()).await;
                        conn.close(close_code::PROTOCOL_ERROR.into(), b"internal error: a reply could not be framed");
                        return;
                    }
                }
                WriterCmd::Close(why) => {
                    close = Some(why);
                    break;
                }
            }
            if queue.len() < BATCH_LIMIT {
                next = rx.try_recv().ok();
            }
        }
        if !queue.is_empty() {
            // Handed to quinn as they are, without a copy into its send buffer.
            if let Err(e) = send.write_all_chunks(&mut queue.take()).await {
                debug!("write failed: {e}");
                return;
            }
        }
        if let Some(why) = close {
            debug!("closing: {why}");
            let _ = send.finish();
            // Let the peer read what we sent; it closes the connection itself.
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
            conn.close(close_code::REFUSED.into(), why.as_bytes());
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_poll_budget_follows_dsm_busy_poll_when_set_and_not_blank() {
        // The only test of this crate that touches the variable (the environment is process-wide).
        let fresh = || Config::new("127.0.0.1:0".parse().unwrap());
        std::env::remove_var("DSM_BUSY_POLL");
        let mut unset = fresh();
        unset.busy_poll_from_env().unwrap();
        std::env::set_var("DSM_BUSY_POLL", "  ");
        let mut blank = fresh();
        blank.busy_poll_from_env().unwrap();
        std::env::set_var("DSM_BUSY_POLL", "0s");
        let mut off = fresh();
        off.busy_poll_from_env().unwrap();
        std::env::set_var("DSM_BUSY_POLL", "soon");
        let e = fresh().busy_poll_from_env().unwrap_err();
        std::env::remove_var("DSM_BUSY_POLL");
        assert_eq!(unset.transport.busy_poll, dsm_cert::BUSY_POLL_BUDGET);
        assert_eq!(blank.transport.busy_poll, dsm_cert::BUSY_POLL_BUDGET);
        assert_eq!(off.transport.busy_poll, Duration::ZERO);
        assert!(e.contains("DSM_BUSY_POLL") && e.contains("soon"), "{e}");
    }
}
