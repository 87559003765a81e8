//! The coordinator's I/O: a quinn endpoint, one reader and one writer task per connection.
//!
//! Each connection carries one bidirectional stream (the FIFO rule of the coherence protocol).
//! The reader decodes frames and feeds them to the shared [`Registry`] under a mutex; the
//! messages the registry produces go, in order, to each destination's writer task through an
//! unbounded channel, and the writer batches whatever is queued into one stream write.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dsm_proto::{decode_frame, encode_frame, Hello, ToCoordinator, ToProcess, HELLO_LEN};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::close_code;
use crate::registry::{ConnId, Output, Registry};

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
}

impl Config {
    /// Defaults: the default certificate directory and transport.
    pub fn new(listen: SocketAddr) -> Self {
        Config {
            listen,
            cert_dir: dsm_cert::default_dir(),
            transport: dsm_cert::Transport::default(),
            hello_timeout: Duration::from_secs(10),
        }
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
    /// Some other I/O failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

struct Shared {
    registry: Registry,
    writers: HashMap<ConnId, mpsc::UnboundedSender<WriterCmd>>,
}

enum WriterCmd {
    Send(ToProcess),
    Close(&'static str),
}

impl Shared {
    fn dispatch(&mut self, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Send(conn, msg) => {
                    if let Some(w) = self.writers.get(&conn) {
                        let _ = w.send(WriterCmd::Send(msg));
                    }
                }
                Output::Close(conn, why) => {
                    if let Some(w) = self.writers.get(&conn) {
                        let _ = w.send(WriterCmd::Close(why));
                    }
                }
            }
        }
        for ended in self.registry.take_ended() {
            info!(
                session = %ended.name,
                nprocs = ended.nprocs,
                barriers = ended.stats.barriers,
                semaphore_waits = ended.stats.semaphore_waits,
                semaphore_posts = ended.stats.semaphore_posts,
                pages = ?ended.stats.pages,
                lost = ?ended.lost,
                "session ended"
            );
        }
    }
}

/// A bound coordinator, ready to [`run`](Coordinator::run).
pub struct Coordinator {
    endpoint: quinn::Endpoint,
    shared: Arc<Mutex<Shared>>,
    hello_timeout: Duration,
    next_conn: AtomicU64,
}

impl Coordinator {
    /// Loads the certificates and binds the UDP socket. Must be called inside a tokio runtime.
    pub fn bind(config: &Config) -> Result<Self, ServeError> {
        config.transport.validate()?;
        let server_config = dsm_cert::quic_server_config(&config.cert_dir, &config.transport)?;
        let endpoint = quinn::Endpoint::server(server_config, config.listen)
            .map_err(|source| ServeError::Bind { addr: config.listen, source })?;
        Ok(Coordinator {
            endpoint,
            shared: Arc::new(Mutex::new(Shared { registry: Registry::new(), writers: HashMap::new() })),
            hello_timeout: config.hello_timeout,
            next_conn: AtomicU64::new(1),
        })
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
        let this = Arc::new(self);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                incoming = this.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let id = this.next_conn.fetch_add(1, Ordering::Relaxed);
                    let remote = incoming.remote_address();
                    let span = info_span!("conn", id, %remote);
                    tokio::spawn(Arc::clone(&this).handle_incoming(id, incoming).instrument(span));
                }
                () = &mut shutdown => break,
            }
        }
        info!("shutting down");
        this.endpoint.close(close_code::SHUTDOWN.into(), b"coordinator shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), this.endpoint.wait_idle()).await;
    }

    async fn handle_incoming(self: Arc<Self>, id: ConnId, incoming: quinn::Incoming) {
        let conn = match incoming.await {
            Ok(c) => c,
            Err(e) => {
                // TLS refusals (no client certificate, unknown CA, self-signed) show up here.
                warn!("refused connection: {e}");
                return;
            }
        };
        debug!("connected");
        match tokio::time::timeout(self.hello_timeout, self.open(&conn)).await {
            Ok(Ok((send, recv))) => self.serve(id, conn, send, recv).await,
            Ok(Err(why)) => warn!("closing connection: {why}"),
            Err(_) => {
                warn!("closing connection: no hello within {:?}", self.hello_timeout);
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
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared.lock().writers.insert(id, tx);
        let writer = tokio::spawn(write_loop(conn.clone(), send, rx).in_current_span());

        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut chunk = vec![0u8; 64 * 1024];
        let detail = 'read: loop {
            match recv.read(&mut chunk).await {
                Ok(Some(n)) => buf.extend_from_slice(&chunk[..n]),
                Ok(None) => break 'read "closed its stream".to_string(),
                Err(e) => break 'read connection_detail(&e),
            }
            let mut used = 0;
            loop {
                match decode_frame::<ToCoordinator>(&buf[used..]) {
                    Ok(Some((msg, n))) => {
                        used += n;
                        let mut shared = self.shared.lock();
                        let mut out = Vec::new();
                        shared.registry.handle_message(id, msg, &mut out);
                        shared.dispatch(out);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!("closing connection: {e}");
                        conn.close(close_code::PROTOCOL_ERROR.into(), e.to_string().as_bytes());
                        break 'read format!("sent a bad frame ({e})");
                    }
                }
            }
            buf.drain(..used);
        };
        debug!("disconnected: {detail}");
        let mut shared = self.shared.lock();
        let mut out = Vec::new();
        shared.registry.handle_disconnect(id, &detail, &mut out);
        shared.writers.remove(&id);
        shared.dispatch(out);
        drop(shared);
        writer.abort();
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
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let mut close = None;
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                WriterCmd::Send(msg) => {
                    if let Err(e) = encode_frame(&msg, &mut buf) {
                        warn!("dropping a message that cannot be encoded: {e}");
                    }
                }
                WriterCmd::Close(why) => {
                    close = Some(why);
                    break;
                }
            }
            if buf.len() < 256 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            if let Err(e) = send.write_all(&buf).await {
                debug!("write failed: {e}");
                return;
            }
            buf.clear();
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

/// A coordinator running on its own thread (tests, `cargo xtask demo`). Dropping it shuts the
/// coordinator down and joins the thread.
pub struct CoordinatorThread {
    addr: SocketAddr,
    status: Box<dyn Fn() -> Vec<String> + Send + Sync>,
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

/// Starts a coordinator on a new thread with a current-thread tokio runtime.
pub fn spawn(config: Config) -> Result<CoordinatorThread, ServeError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name("dsm-coordinator".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
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
            let status: Box<dyn Fn() -> Vec<String> + Send + Sync> = Box::new(coordinator.status_handle());
            let _ = ready_tx.send(coordinator.local_addr().map(|a| (a, status)).map_err(ServeError::Io));
            coordinator
                .run(async move {
                    let _ = stop_rx.await;
                })
                .await;
        });
    })?;
    let (addr, status) = ready_rx
        .recv()
        .map_err(|_| ServeError::Io(std::io::Error::other("coordinator thread died")))??;
    Ok(CoordinatorThread { addr, status, stop: Some(stop_tx), thread: Some(thread) })
}
