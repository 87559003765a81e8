//! The QUIC client: one runtime thread per attached session.
//!
//! The thread runs a current-thread tokio runtime that owns the connection's single
//! bidirectional stream. Application threads hand it [`Command`]s through a channel and block on
//! a reply; the [`Driver`] writes requests in order, reads the coordinator's frames in order and
//! completes the waiting requests. Keeping one stream and one thread for all traffic is what gives
//! the FIFO delivery the coherence protocol relies on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dsm_proto::pages::{Access, FaultAction, PageMemory, ProcessPages, ReplayOp, WriteOutcome};
use dsm_proto::PageNo;
use tokio::io::unix::AsyncFd;

use dsm_proto::{
    close_code, decode_frame, encode_frame, AttachRequest, Hello, Rank, ReqId, SessionFault,
    ToCoordinator, ToProcess, HELLO_LEN,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::config::{host_of, Config};
use crate::error::{Error, Result};
use crate::region::{RegionMaps, RegionStats};
use crate::sys::replay::{self, Outcome, Request, TABLE};
use crate::sys::{UffdFd, PAGE};

/// How long a page installed for a fault is kept before a revocation is applied, so the faulting
/// instruction can retire: without it two writers hammering one page could livelock. Waking a
/// thread on another CPU costs 20-60 us on these machines.
const HOLD: Duration = Duration::from_micros(100);

static ZERO_PAGE: [u8; PAGE] = [0; PAGE];

/// What the coordinator said when the session started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttachInfo {
    pub rank: Rank,
    pub nprocs: u32,
    pub size: u64,
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
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::os("starting the DSM runtime thread", e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    let (mut driver, info) = match connect(&config).await {
                        Ok(ok) => ok,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    if let Some(maps) = region {
                        match RegionIo::new(maps) {
                            Ok((io, uffd, efd)) => {
                                driver.region = Some(io);
                                driver.uffd = Some(uffd);
                                driver.efd = Some(efd);
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(e));
                                return;
                            }
                        }
                    }
                    let _ = ready_tx.send(Ok(info));
                    driver.run(cmd_rx).await;
                });
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

/// Maps a quinn connection error to an actionable [`Error`].
fn connection_error(addr: &str, e: &quinn::ConnectionError) -> Error {
    use quinn::ConnectionError as C;
    match e {
        C::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            if (0x100..0x200).contains(&code) {
                let alert = code - 0x100;
                // Alerts the coordinator sends when it refuses our certificate. 51 (decrypt
                // error) is what a certificate signed by another CA of the same name yields.
                let name = match alert {
                    42 => "bad certificate",
                    51 => "decrypt error: signed by another CA",
                    43 => "unsupported certificate",
                    44 => "certificate revoked",
                    45 => "certificate expired",
                    46 => "certificate unknown",
                    48 => "unknown CA",
                    49 => "access denied",
                    116 => "certificate required",
                    _ => "",
                };
                if !name.is_empty() {
                    return Error::CertificateRejected {
                        addr: addr.into(),
                        detail: format!("TLS alert {alert}: {name}"),
                    };
                }
                return Error::Tls { addr: addr.into(), detail: close.to_string() };
            }
            Error::ConnectionLost(close.to_string())
        }
        C::TransportError(te) => {
            let code = u64::from(te.code);
            if (0x100..0x200).contains(&code) {
                Error::Tls { addr: addr.into(), detail: te.to_string() }
            } else {
                Error::ConnectionLost(te.to_string())
            }
        }
        C::ApplicationClosed(app) => {
            let code = u64::from(app.error_code);
            let reason = String::from_utf8_lossy(&app.reason).into_owned();
            if code == u64::from(close_code::SHUTDOWN) {
                Error::CoordinatorShutdown
            } else if code == u64::from(close_code::VERSION_MISMATCH) {
                Error::Protocol(format!("the coordinator closed the connection: {reason}"))
            } else {
                Error::ConnectionLost(format!("closed by the coordinator: {reason}"))
            }
        }
        C::TimedOut => Error::ConnectionLost(
            "the coordinator went silent past the idle timeout".into(),
        ),
        C::LocallyClosed => Error::Detached,
        other => Error::ConnectionLost(other.to_string()),
    }
}

fn read_error(addr: &str, e: quinn::ReadError) -> Error {
    match e {
        quinn::ReadError::ConnectionLost(c) => connection_error(addr, &c),
        other => Error::ConnectionLost(other.to_string()),
    }
}

fn write_error(addr: &str, e: quinn::WriteError) -> Error {
    match e {
        quinn::WriteError::ConnectionLost(c) => connection_error(addr, &c),
        other => Error::ConnectionLost(other.to_string()),
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host(addr).await.map_err(|e| Error::Unreachable {
        addr: addr.into(),
        detail: format!("cannot resolve the address: {e}"),
    })?;
    addrs.next().ok_or_else(|| Error::Unreachable {
        addr: addr.into(),
        detail: "the name resolves to no address".into(),
    })
}

/// Connects, exchanges hellos, attaches, and waits for the session to start.
async fn connect(config: &Config) -> Result<(Driver, AttachInfo)> {
    let addr_text = config.coordinator.clone();
    let addr = resolve(&addr_text).await?;
    let tls = match &config.client_cert {
        None => dsm_cert::client_tls_config(&config.cert_dir),
        Some((cert, key)) => dsm_cert::client_tls_config_from(
            &config.cert_dir.join(dsm_cert::CA_CERT),
            Some((cert.as_path(), key.as_path())),
        ),
    }
    .map_err(|e| Error::Certificates(e.to_string()))?;
    let client_config = dsm_cert::quic_client_config(tls, &config.transport)
        .map_err(|e| Error::Certificates(e.to_string()))?;
    let bind: SocketAddr =
        if addr.is_ipv6() { "[::]:0".parse().expect("literal") } else { "0.0.0.0:0".parse().expect("literal") };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| Error::os("binding a UDP socket", e))?;
    endpoint.set_default_client_config(client_config);
    let server_name = config.server_name.clone().unwrap_or_else(|| host_of(&addr_text).to_string());
    let connecting = endpoint.connect(addr, &server_name).map_err(|e| Error::Unreachable {
        addr: addr_text.clone(),
        detail: e.to_string(),
    })?;
    let conn = match tokio::time::timeout(config.connect_timeout, connecting).await {
        Err(_) => {
            return Err(Error::Unreachable {
                addr: addr_text,
                detail: format!("no answer within {:?}", config.connect_timeout),
            })
        }
        Ok(Err(quinn::ConnectionError::TimedOut)) => {
            return Err(Error::Unreachable { addr: addr_text, detail: "no answer (timed out)".into() })
        }
        Ok(Err(e)) => return Err(connection_error(&addr_text, &e)),
        Ok(Ok(c)) => c,
    };
    let hello = async {
        let (mut send, mut recv) =
            conn.open_bi().await.map_err(|e| connection_error(&addr_text, &e))?;
        send.write_all(&Hello { version: config.hello_version }.encode())
            .await
            .map_err(|e| write_error(&addr_text, e))?;
        let mut theirs = [0u8; HELLO_LEN];
        recv.read_exact(&mut theirs).await.map_err(|e| match e {
            quinn::ReadExactError::ReadError(e) => read_error(&addr_text, e),
            quinn::ReadExactError::FinishedEarly(_) => {
                Error::Protocol("the coordinator closed the stream during the hello".into())
            }
        })?;
        let theirs = Hello::decode(theirs)?;
        if theirs.version != config.hello_version {
            conn.close(close_code::VERSION_MISMATCH.into(), b"protocol version mismatch");
            return Err(Error::Version(dsm_proto::HelloError::VersionMismatch {
                ours: config.hello_version,
                theirs: theirs.version,
            }));
        }
        Ok((send, recv))
    };
    let (send, recv) = match tokio::time::timeout(config.connect_timeout, hello).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(Error::Unreachable {
                addr: addr_text,
                detail: "the coordinator accepted the connection but sent no hello".into(),
            })
        }
    };
    let mut driver = Driver {
        addr: addr_text,
        endpoint,
        conn,
        send,
        recv,
        inbuf: Vec::with_capacity(64 * 1024),
        outbuf: Vec::with_capacity(64 * 1024),
        next_req: 1,
        waiting: HashMap::new(),
        barrier: None,
        barrier_epoch: 0,
        detach: None,
        dead: None,
        failed_post: None,
        region: None,
        uffd: None,
        efd: None,
    };
    let label = format!(
        "pid {} ({})",
        std::process::id(),
        std::env::args().next().unwrap_or_default()
    );
    driver
        .send(&ToCoordinator::Attach(AttachRequest {
            session: config.session.clone(),
            size: config.size,
            nprocs: config.nprocs,
            label,
        }))
        .await?;
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + config.attach_timeout;
    let mut joined = 0;
    loop {
        let msg = match tokio::time::timeout_at(deadline, driver.next_message()).await {
            Ok(m) => m?,
            Err(_) => {
                driver.conn.close(close_code::OK.into(), b"attach timed out");
                return Err(Error::AttachTimeout {
                    session: config.session.clone(),
                    waited: start.elapsed(),
                    joined,
                    nprocs: config.nprocs,
                });
            }
        };
        match msg {
            ToProcess::Joined { joined: j, nprocs } => {
                joined = j;
                debug!("session '{}': {j} of {nprocs} processes attached", config.session);
            }
            ToProcess::Attached { rank, nprocs, size } => {
                debug!("attached session '{}' as rank {rank} of {nprocs}", config.session);
                return Ok((driver, AttachInfo { rank, nprocs, size }));
            }
            ToProcess::Refused(r) => {
                driver.conn.close(close_code::OK.into(), b"refused");
                return Err(Error::Refused(r));
            }
            other => {
                return Err(Error::Protocol(format!("unexpected message while attaching: {other:?}")))
            }
        }
    }
}

/// The runtime thread's state: the stream, and the requests waiting for replies.
pub(crate) struct Driver {
    addr: String,
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    next_req: ReqId,
    waiting: HashMap<ReqId, Waiting>,
    barrier: Option<Reply<()>>,
    barrier_epoch: u64,
    detach: Option<Reply<()>>,
    /// Set once the connection failed; every later request gets this error.
    dead: Option<Error>,
    /// The failure of a fire-and-forget post, returned by the next barrier or semaphore wait.
    failed_post: Option<Error>,
    /// The region whose faults this driver services, if any.
    region: Option<RegionIo>,
    uffd: Option<AsyncFd<UffdFd>>,
    efd: Option<AsyncFd<UffdFd>>,
}

/// The runtime thread's half of a region: the fault queue, the page-state core, and page
/// messages waiting for a hold to expire.
struct RegionIo {
    maps: Arc<RegionMaps>,
    pages: ProcessPages,
    /// When each page installed for a fault may be revoked again.
    held: HashMap<PageNo, Instant>,
    /// When the oldest unresolved fault on each page was read.
    faulted: HashMap<PageNo, Instant>,
    wait: Duration,
    pages_count: u64,
    /// Eventfd the signal handlers poke when a decoded store is ready.
    efd: std::os::fd::OwnedFd,
    /// Threads signalled for a replay: slot -> (page, when).
    replays: HashMap<usize, (PageNo, Instant)>,
    /// Replayed writes in flight: request -> slot.
    writes: HashMap<dsm_proto::ReqId, usize>,
}

impl RegionIo {
    fn new(maps: Arc<RegionMaps>) -> Result<(RegionIo, AsyncFd<UffdFd>, AsyncFd<UffdFd>)> {
        let uffd = maps
            .fault
            .async_fd()
            .map_err(|e| Error::os("polling userfaultfd", e))?;
        replay::install_handler().map_err(|e| Error::os("installing the write-replay signal handler", e))?;
        let efd = replay::eventfd().map_err(|e| Error::os("creating an eventfd", e))?;
        let efd_async = crate::sys::async_fd(std::os::fd::AsRawFd::as_raw_fd(&efd))
            .map_err(|e| Error::os("polling an eventfd", e))?;
        let pages_count = (maps.view.len() / PAGE) as u64;
        Ok((RegionIo {
            maps,
            pages: ProcessPages::new().with_read_ahead(pages_count),
            held: HashMap::new(),
            faulted: HashMap::new(),
            wait: Duration::ZERO,
            pages_count,
            efd,
            replays: HashMap::new(),
            writes: HashMap::new(),
        }, uffd, efd_async))
    }

    fn stats(&self) -> RegionStats {
        let s = self.pages.stats();
        RegionStats {
            read_faults: s.read_faults,
            write_faults: s.write_faults,
            pages_fetched: s.fetches,
            ownership_requests: s.ownership_requests,
            pages_invalidated: s.invalidations,
            pages_downgraded: s.downgrades,
            pages_recalled: s.recalls,
            bytes_received: s.bytes_received,
            bytes_sent: s.bytes_sent,
            wait_micros: self.wait.as_micros() as u64,
            replayed_writes: s.replayed_writes,
            write_retries: s.write_retries,
            updates_applied: s.updates_applied,
            prefetches: s.prefetches,
        }
    }
}

/// [`PageMemory`] over the real mappings. A failing ioctl means the region is unusable: the
/// faulting threads could never be served, so the process stops with a clear message instead of
/// hanging (see [`fatal`]).
struct Mem<'a> {
    maps: &'a RegionMaps,
}

impl Mem<'_> {
    fn addr(&self, page: PageNo) -> usize {
        self.maps.view.addr() + page as usize * PAGE
    }
}

/// Stops the process: a fault can no longer be served, and returning would leave application
/// threads hung in the kernel forever.
fn fatal(what: &str, e: &dyn std::fmt::Display) -> ! {
    eprintln!("dsm: fatal: {what}: {e}; the shared region cannot be served any more, aborting");
    std::process::abort();
}

impl PageMemory for Mem<'_> {
    fn install(&mut self, page: PageNo, data: Option<&[u8]>, writable: bool) {
        let src = match data {
            Some(d) if d.len() == PAGE => d,
            Some(d) => fatal("installing a page", &format!("{} bytes instead of {PAGE}", d.len())),
            None => &ZERO_PAGE[..],
        };
        let addr = self.addr(page);
        match self.maps.fault.install(addr, src, writable) {
            Ok(true) => {}
            Ok(false) => {
                // A stale page is in the memfd (should not happen: Invalid pages are holes).
                // Drop it and install again.
                if let Err(e) = self.maps.alias.punch_hole(page) {
                    fatal("punching a stale page", &e);
                }
                if let Err(e) = self.maps.fault.install(addr, src, writable) {
                    fatal("installing a page", &e);
                }
            }
            Err(e) => fatal("installing a page", &e),
        }
    }

    fn make_writable(&mut self, page: PageNo) {
        if let Err(e) = self.maps.fault.make_writable(self.addr(page)) {
            fatal("unprotecting a page", &e);
        }
    }

    fn write_protect(&mut self, page: PageNo) -> Vec<u8> {
        if let Err(e) = self.maps.fault.write_protect(self.addr(page)) {
            fatal("write-protecting a page", &e);
        }
        // After the ioctl's TLB flush no thread of ours can store to the page any more.
        self.maps.alias.read_page(page)
    }

    fn drop_page(&mut self, page: PageNo, want_contents: bool) -> Option<Vec<u8>> {
        let data = if want_contents {
            // Protect first so no store lands between the copy and the hole.
            Some(self.write_protect(page))
        } else {
            None
        };
        if let Err(e) = self.maps.alias.punch_hole(page) {
            fatal("dropping a page", &e);
        }
        data
    }

    fn wake(&mut self, page: PageNo) {
        if let Err(e) = self.maps.fault.wake(self.addr(page)) {
            fatal("waking a faulting thread", &e);
        }
    }

    fn store(&mut self, page: PageNo, offset: u16, width: u8, value: u128) {
        self.maps.alias.store(page, usize::from(offset), width, value);
    }
}

/// The wire form of a decoded store at byte `offset` of its page.
fn replay_op(effect: &crate::decode::Effect, offset: u16) -> ReplayOp {
    use crate::decode::Effect;
    match *effect {
        Effect::Store { width, value, .. } => ReplayOp::Store { offset, width, value },
        Effect::Rmw { width, op, operand, expected, .. } => {
            ReplayOp::Rmw { offset, width, op, operand, expected }
        }
    }
}

/// The page a coherence message concerns, and whether it revokes access.
fn revocation_page(msg: &ToProcess) -> Option<PageNo> {
    match msg {
        ToProcess::Invalidate { page } | ToProcess::Downgrade { page } | ToProcess::Recall { page } => {
            Some(*page)
        }
        _ => None,
    }
}

enum Waiting {
    Done(Reply<()>),
    Pong(Reply<Vec<u8>>),
}

impl Driver {
    async fn send(&mut self, msg: &ToCoordinator) -> Result<()> {
        self.queue(msg);
        self.flush().await
    }

    fn queue(&mut self, msg: &ToCoordinator) {
        if let Err(e) = encode_frame(msg, &mut self.outbuf) {
            warn!("dropping a message that cannot be encoded: {e}");
        }
    }

    async fn flush(&mut self) -> Result<()> {
        if self.outbuf.is_empty() {
            return Ok(());
        }
        let r = self.send.write_all(&self.outbuf).await;
        self.outbuf.clear();
        r.map_err(|e| write_error(&self.addr, e))
    }

    /// Reads until one whole message is buffered.
    async fn next_message(&mut self) -> Result<ToProcess> {
        loop {
            if let Some(msg) = self.try_decode()? {
                return Ok(msg);
            }
            self.fill().await?;
        }
    }

    fn try_decode(&mut self) -> Result<Option<ToProcess>> {
        match decode_frame::<ToProcess>(&self.inbuf) {
            Ok(Some((msg, n))) => {
                self.inbuf.drain(..n);
                Ok(Some(msg))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.conn.close(close_code::PROTOCOL_ERROR.into(), e.to_string().as_bytes());
                Err(Error::Protocol(format!("bad frame from the coordinator: {e}")))
            }
        }
    }

    async fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        match self.recv.read(&mut chunk).await {
            Ok(Some(n)) => {
                self.inbuf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Ok(None) => Err(Error::ConnectionLost("the coordinator closed the stream".into())),
            Err(e) => Err(read_error(&self.addr, e)),
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut chunk = vec![0u8; 64 * 1024];
        let uffd = self.uffd.take();
        let efd = self.efd.take();
        let mut stale_check = tokio::time::interval(Duration::from_millis(20));
        loop {
            let replays_pending = self.region.as_ref().is_some_and(|r| !r.replays.is_empty());
            tokio::select! {
                ready = async { efd.as_ref().expect("guarded").readable().await }, if efd.is_some() => {
                    match ready {
                        Ok(mut guard) => {
                            self.handle_replay_requests();
                            guard.clear_ready();
                        }
                        Err(e) => fatal("polling the replay eventfd", &e),
                    }
                    if let Err(e) = self.flush().await {
                        self.fail_all(e);
                    }
                }
                _ = stale_check.tick(), if replays_pending => {
                    self.reclaim_stale_replays();
                    if let Err(e) = self.flush().await {
                        self.fail_all(e);
                    }
                }
                ready = async { uffd.as_ref().expect("guarded").readable().await }, if uffd.is_some() => {
                    match ready {
                        Ok(mut guard) => {
                            self.handle_faults();
                            guard.clear_ready();
                        }
                        Err(e) => fatal("polling userfaultfd", &e),
                    }
                    if let Err(e) = self.flush().await {
                        self.fail_all(e);
                    }
                }
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { break };
                    self.handle_command(cmd);
                    while let Ok(cmd) = commands.try_recv() {
                        self.handle_command(cmd);
                    }
                    if let Err(e) = self.flush().await {
                        self.fail_all(e);
                    }
                }
                read = self.recv.read(&mut chunk), if self.dead.is_none() => {
                    match read {
                        Ok(Some(n)) => {
                            self.inbuf.extend_from_slice(&chunk[..n]);
                            loop {
                                match self.try_decode() {
                                    Ok(Some(msg)) => self.handle_message(msg),
                                    Ok(None) => break,
                                    Err(e) => { self.fail_all(e); break }
                                }
                            }
                            // Acks and requests produced by page messages.
                            if let Err(e) = self.flush().await {
                                self.fail_all(e);
                            }
                        }
                        Ok(None) => self.fail_all(Error::ConnectionLost("the coordinator closed the stream".into())),
                        Err(e) => { let e = read_error(&self.addr, e); self.fail_all(e) }
                    }
                }
            }
        }
        self.conn.close(close_code::OK.into(), b"detached");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    fn next_req(&mut self) -> ReqId {
        let r = self.next_req;
        self.next_req += 1;
        r
    }

    fn handle_command(&mut self, cmd: Command) {
        if let Some(e) = &self.dead {
            let e = e.clone();
            match cmd {
                Command::Barrier(r) | Command::SemaphoreWait { reply: r, .. } => {
                    let _ = r.send(Err(e));
                }
                Command::SemaphorePost { name, reply, .. } => match reply {
                    Some(r) => {
                        let _ = r.send(Err(e));
                    }
                    None => debug!("post of '{name}' after the connection failed: {e}"),
                },
                Command::Detach(r) => {
                    // Nothing left to detach from; the session is over for us either way.
                    let _ = r.send(Ok(()));
                }
                Command::Ping(_, r) => {
                    let _ = r.send(Err(e));
                }
                Command::Stats(r) => {
                    let _ = r.send(Ok(self.region.as_ref().map(RegionIo::stats).unwrap_or_default()));
                }
                Command::Advise { .. } => {}
            }
            return;
        }
        match cmd {
            Command::Barrier(reply) => {
                if let Some(e) = self.failed_post.take() {
                    let _ = reply.send(Err(e));
                    return;
                }
                let epoch = self.barrier_epoch;
                self.barrier_epoch += 1;
                self.barrier = Some(reply);
                self.queue(&ToCoordinator::Barrier { epoch });
            }
            Command::SemaphoreWait { name, initial, reply } => {
                if let Some(e) = self.failed_post.take() {
                    let _ = reply.send(Err(e));
                    return;
                }
                let req = self.next_req();
                self.waiting.insert(req, Waiting::Done(reply));
                self.queue(&ToCoordinator::SemaphoreWait { req, name, initial });
            }
            Command::SemaphorePost { name, initial, reply } => {
                // Nobody waits for the answer: the stream keeps the post ordered before whatever
                // this process sends next, and a failure is reported by the coordinator's
                // `Failed` (logged) or by the next blocking call.
                let req = self.next_req();
                if let Some(reply) = reply {
                    self.waiting.insert(req, Waiting::Done(reply));
                }
                self.queue(&ToCoordinator::SemaphorePost { req, name, initial });
            }
            Command::Ping(payload, reply) => {
                let req = self.next_req();
                self.waiting.insert(req, Waiting::Pong(reply));
                self.queue(&ToCoordinator::Ping { req, payload });
            }
            Command::Detach(reply) => {
                // Owned pages go home first, on the same ordered stream, so no write is lost.
                if let Some(r) = &mut self.region {
                    let mut out = Vec::new();
                    let mut mem = Mem { maps: &r.maps };
                    let n = r.pages.release_all(&mut mem, &mut out);
                    debug!("detaching: wrote back {n} owned pages; stats {:?}", r.stats());
                    for m in &out {
                        self.queue(m);
                    }
                }
                self.detach = Some(reply);
                self.queue(&ToCoordinator::Detach);
            }
            Command::Stats(reply) => {
                let stats = self.region.as_ref().map(RegionIo::stats).unwrap_or_default();
                let _ = reply.send(Ok(stats));
            }
            Command::Advise { first, count, coherence } => {
                self.queue(&ToCoordinator::Advise { first, count, coherence });
            }
        }
    }

    fn handle_message(&mut self, msg: ToProcess) {
        match msg {
            ToProcess::BarrierDone { .. } => {
                if let Some(r) = self.barrier.take() {
                    let _ = r.send(Ok(()));
                }
            }
            ToProcess::SemaphoreAcquired { req } | ToProcess::SemaphorePosted { req } => {
                if let Some(Waiting::Done(r)) = self.waiting.remove(&req) {
                    let _ = r.send(Ok(()));
                }
            }
            ToProcess::Pong { req, payload } => {
                if let Some(Waiting::Pong(r)) = self.waiting.remove(&req) {
                    let _ = r.send(Ok(payload));
                }
            }
            ToProcess::Failed { req, error } => self.handle_failed(req, error),
            ToProcess::Detached => {
                if let Some(r) = self.detach.take() {
                    let _ = r.send(Ok(()));
                }
                self.dead = Some(Error::Detached);
            }
            page_msg @ (ToProcess::Data { .. }
            | ToProcess::Grant { .. }
            | ToProcess::Invalidate { .. }
            | ToProcess::Downgrade { .. }
            | ToProcess::Recall { .. }
            | ToProcess::Update { .. }
            | ToProcess::WriteAck { .. }
            | ToProcess::Retry { .. }
            | ToProcess::ModeHint { .. }
            | ToProcess::Advice { .. }) => self.handle_page_message(page_msg),
            other => warn!("ignoring unexpected message from the coordinator: {other:?}"),
        }
    }

    /// Reads every queued fault and lets the page core turn them into requests.
    fn handle_faults(&mut self) {
        let Some(r) = &mut self.region else { return };
        let mut out = Vec::new();
        loop {
            let fault = match r.maps.fault.next_fault() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => fatal("reading a page fault", &e),
            };
            let (addr, write, tid) = fault;
            let page = ((addr - r.maps.view.addr()) / PAGE) as PageNo;
            if page >= r.pages_count {
                fatal("page fault outside the region", &format!("address {addr:#x}"));
            }
            if let Some(e) = &self.dead {
                fatal(&format!("thread {tid} faulted on page {page} after the connection was lost"), e);
            }
            let access = if write { Access::Write } else { Access::Read };
            r.faulted.entry(page).or_insert_with(Instant::now);
            let mut mem = Mem { maps: &r.maps };
            if r.pages.handle_fault(page, access, &mut mem, &mut out) == FaultAction::Replay {
                // A store to an update-mode page: replay it on the faulting thread, unless the
                // thread is inside a system call (the kernel is the writer; never interrupt it).
                let efd = std::os::fd::AsRawFd::as_raw_fd(&r.efd);
                let slot = if replay::in_syscall(tid) {
                    debug!("store to update-mode page {page} by thread {tid} inside a system call: by ownership");
                    None
                } else {
                    replay::signal_thread(tid, addr as u64, efd)
                };
                tracing::trace!("replay: page {page} thread {tid} slot {slot:?}");
                match slot {
                    Some(i) => {
                        r.replays.insert(i, (page, Instant::now()));
                    }
                    None => r.pages.handle_fault_by_ownership(page, &mut mem, &mut out),
                }
            }
        }
        for m in &out {
            self.queue(m);
        }
    }

    /// Picks up the stores signal handlers decoded and sends them (or falls back).
    fn handle_replay_requests(&mut self) {
        let Some(r) = &mut self.region else { return };
        replay::eventfd_drain(std::os::fd::AsRawFd::as_raw_fd(&r.efd));
        let ready: Vec<usize> = r
            .replays
            .keys()
            .copied()
            .filter(|&i| TABLE[i].state.load(std::sync::atomic::Ordering::Acquire) == replay::REQUEST)
            .collect();
        let mut out = Vec::new();
        for i in ready {
            let Some((page, _)) = r.replays.remove(&i) else { continue };
            let mut mem = Mem { maps: &r.maps };
            let request = TABLE[i].take_request();
            tracing::trace!("replay request on page {page} slot {i}: {request:?}");
            match request {
                Request::Decoded(d) => {
                    let base = r.maps.view.addr() as u64 + page * PAGE as u64;
                    let offset = d.effect.addr().wrapping_sub(base);
                    let op = if offset < PAGE as u64 {
                        Some(replay_op(&d.effect, offset as u16))
                    } else {
                        None
                    };
                    match op.and_then(|op| r.pages.replay(page, op, &mut out)) {
                        Some(req) => {
                            r.writes.insert(req, i);
                        }
                        None => TABLE[i].complete(Outcome::Retry),
                    }
                }
                Request::Unsupported => {
                    debug!("unsupported store to update-mode page {page}: by ownership");
                    r.pages.handle_fault_by_ownership(page, &mut mem, &mut out);
                    TABLE[i].complete(Outcome::Retry);
                }
                Request::Straddles { addr, width } => {
                    // Both pages must be writable at once for the instruction to retire: ask
                    // for ownership of every page the operand touches, in one go.
                    let base = r.maps.view.addr() as u64;
                    let first = addr.saturating_sub(base) / PAGE as u64;
                    let last = (addr + u64::from(width) - 1).saturating_sub(base) / PAGE as u64;
                    debug!("store straddling pages {first}..={last}: by ownership");
                    for p in first..=last.min(r.pages_count - 1) {
                        if r.pages.state(p) != dsm_proto::pages::PageState::Writable {
                            r.pages.handle_fault_by_ownership(p, &mut mem, &mut out);
                        }
                    }
                    TABLE[i].complete(Outcome::Retry);
                }
                Request::Spurious | Request::Empty => {
                    // The thread was not at a store to the fault address (woken meanwhile, or
                    // an instruction the decoder misread): ownership always makes progress.
                    r.pages.handle_fault_by_ownership(page, &mut mem, &mut out);
                    TABLE[i].complete(Outcome::Retry);
                }
            }
        }
        for m in &out {
            self.queue(m);
        }
    }

    /// Threads that never picked up their replay signal (blocked, or the application changed
    /// our handler): take the slot back and serve the fault by ownership instead.
    fn reclaim_stale_replays(&mut self) {
        let Some(r) = &mut self.region else { return };
        let now = Instant::now();
        let stale: Vec<usize> = r
            .replays
            .iter()
            .filter(|(_, (_, at))| now - *at > Duration::from_millis(50))
            .map(|(&i, _)| i)
            .collect();
        let mut out = Vec::new();
        for i in stale {
            if replay::release_unclaimed(i) {
                if let Some((page, _)) = r.replays.remove(&i) {
                    debug!("replay signal for page {page} not handled in time; using ownership");
                    let mut mem = Mem { maps: &r.maps };
                    r.pages.handle_fault_by_ownership(page, &mut mem, &mut out);
                }
            }
        }
        for m in &out {
            self.queue(m);
        }
    }

    fn handle_page_message(&mut self, msg: ToProcess) {
        let Some(r) = &mut self.region else {
            warn!("page message for a session without a region: {msg:?}");
            return;
        };
        if let Some(page) = revocation_page(&msg) {
            // Let a thread woken for this page retire its instruction first (progress rule).
            if let Some(until) = r.held.remove(&page) {
                while Instant::now() < until {
                    std::thread::yield_now();
                }
            }
        }
        let installs = match &msg {
            ToProcess::Data { page, .. } | ToProcess::Grant { page, .. } => Some(*page),
            _ => None,
        };
        let mut out = Vec::new();
        let mut mem = Mem { maps: &r.maps };
        if let Err(e) = r.pages.handle_message(msg, &mut mem, &mut out) {
            warn!("coherence protocol error: {e}");
        }
        for (req, outcome) in r.pages.take_completions() {
            if let Some(i) = r.writes.remove(&req) {
                TABLE[i].complete(match outcome {
                    WriteOutcome::Done { old } => Outcome::Done { old },
                    WriteOutcome::Retry => Outcome::Retry,
                });
            }
        }
        if let Some(page) = installs {
            let now = Instant::now();
            // Only pages a thread faulted on are held (not read-ahead ones).
            if let Some(t) = r.faulted.remove(&page) {
                r.wait += now - t;
                r.held.insert(page, now + HOLD);
            }
            if r.held.len() > 4096 {
                r.held.retain(|_, until| *until > now);
            }
        }
        for m in &out {
            self.queue(m);
        }
    }

    fn handle_failed(&mut self, req: Option<ReqId>, error: SessionFault) {
        let waiter = req.and_then(|r| self.waiting.remove(&r));
        match (req, waiter) {
            (_, Some(Waiting::Done(r))) => {
                let _ = r.send(Err(Error::Session(error)));
            }
            (_, Some(Waiting::Pong(r))) => {
                let _ = r.send(Err(Error::Session(error)));
            }
            (None, None) => match self.barrier.take() {
                Some(r) => {
                    let _ = r.send(Err(Error::Session(error)));
                }
                None => warn!("the coordinator reported: {error}"),
            },
            (Some(_), None) => {
                // A post (nobody waits for its answer): the next blocking call reports it.
                warn!("a semaphore post failed: {error}");
                self.failed_post.get_or_insert(Error::Session(error));
            }
        }
    }

    /// The connection is gone: fail everything waiting, and everything asked later.
    fn fail_all(&mut self, e: Error) {
        debug!("connection failed: {e}");
        if let Some(r) = &self.region {
            if !r.pages.is_idle() {
                fatal("a page fault was waiting for the coordinator", &e);
            }
        }
        if let Some(r) = self.barrier.take() {
            let _ = r.send(Err(e.clone()));
        }
        if let Some(r) = self.detach.take() {
            let _ = r.send(Ok(()));
        }
        for (_, w) in self.waiting.drain() {
            match w {
                Waiting::Done(r) => {
                    let _ = r.send(Err(e.clone()));
                }
                Waiting::Pong(r) => {
                    let _ = r.send(Err(e.clone()));
                }
            }
        }
        self.dead = Some(e);
    }
}

