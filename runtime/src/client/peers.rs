//! Direct transfers between the members of a session: [`PeerLinks`], the transport of
//! [`ToPeer`] messages over QUIC peer connections authenticated by pinned fingerprints
//! (`dsm_cert::peer`). The coherence rules that decide what to send live elsewhere; this file
//! only moves messages.
//!
//! - Before the attach, [`PeerSetup::new`] makes this process's ephemeral identity and
//!   [`PeerSetup::serve`] lets the process's one quinn endpoint (the one its coordinator
//!   connection uses) accept peer connections, so the address the coordinator sees is the one
//!   peers reach. Until [`PeerLinks::new`] starts accepting, quinn holds incoming connections.
//! - Once the session starts, [`PeerLinks::new`] takes the members' addresses and fingerprints
//!   (`ToProcess::Attached::peers`): the endpoint accepts exactly those members, and
//!   [`PeerLinks::send`] reaches them.
//!
//! **Sending.** One link per destination rank, made on the first send: a task that connects
//! (the client configuration pins that rank's fingerprint), opens one bidirectional stream and
//! writes the messages as frames, in order. Its queue is *unbounded*: [`PeerLinks::send`] is
//! called from the runtime thread's loop, which must never wait (it serves faults and the
//! coordinator's stream), and a bounded queue would have to either block it or fail sends that
//! nothing went wrong with. What a queue can hold is bounded by what the coordinator asks this
//! process to forward (pages it holds), and quinn's flow control keeps a slow peer's backlog
//! here, where it is visible, rather than in the socket.
//!
//! **Acknowledgements.** A message counts as delivered only when the receiving process has
//! decoded it: the receiver writes back, on the same stream, the count of frames it decoded so
//! far (8 bytes, little-endian, after each read). The sender keeps every message until its
//! count arrives (page data is shared, not copied), so when the link fails (cannot connect, the
//! connection is lost, a stream error) every message not acknowledged, and every message still
//! queued, comes back in order as [`PeerEvent::Undelivered`]. A one-way stream could not do
//! that: a message quinn took into its send buffer may never arrive, and the sender would not
//! know. A message handed back may still have arrived (the connection died before its count
//! did): the forwarding rules tolerate that (`ForwardReturn` then `ForwardAbort`, rules D4b and
//! D5 of the design). A link that failed is not tried again: every later message to that rank
//! comes back at once, so a member that its address does not reach (behind a NAT or a relay)
//! costs one connect timeout, not one per forward.
//!
//! **Receiving.** Peer connections are accepted on the endpoint; a handshake fails unless the
//! client presents a member's certificate (a stranger is refused and logged, never a panic),
//! and the certificate's fingerprint names the sending rank. Every frame becomes a
//! [`PeerEvent::Received`]. A bad frame closes that peer's connection with
//! `close_code::PROTOCOL_ERROR` and is logged.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dsm_cert::{
    is_loopback, peer_client_config, peer_fingerprint, peer_server_config, tls_alert_name, Fingerprint, PeerIdentity,
    PeerSet, Transport, PEER_SERVER_NAME,
};
use dsm_proto::{close_code, FrameQueue, FrameReader, PageData, PeerAddress, Rank, ToPeer};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, warn};

use crate::error::{Error, Result};

/// Chunks taken from quinn per read: about one packet's stream data each.
const READ_CHUNKS: usize = 32;

/// A link stops adding queued messages to one write at this many bytes.
const BATCH_LIMIT: usize = 4 << 20;

/// Bytes of an acknowledgement: the count of frames decoded so far, little-endian.
const ACK_LEN: usize = 8;

/// What the peer transport reports to the runtime thread.
#[derive(Debug)]
pub(crate) enum PeerEvent {
    /// A member sent this message.
    Received(Rank, ToPeer),
    /// This message to that rank could not be delivered (cannot connect, connection lost,
    /// stream error, or the rank takes no direct transfers). It may still have arrived if the
    /// connection died before the receiver's acknowledgement (see the module docs).
    Undelivered(Rank, ToPeer),
}

/// This process's side of direct transfers, made before it attaches: its ephemeral identity,
/// the members its endpoint accepts (empty until the session starts) and the server
/// configurations that accept them.
pub(crate) struct PeerSetup {
    identity: Arc<PeerIdentity>,
    members: PeerSet,
    transport: Transport,
    connect_timeout: Duration,
    /// For peers on other machines (MTU search).
    server: Arc<quinn::ServerConfig>,
    /// For peers on this machine (`Transport::to_quinn_for`: no MTU search).
    loopback_server: Arc<quinn::ServerConfig>,
}

impl PeerSetup {
    /// A fresh identity; peer connections use `transport`, and a link that cannot connect
    /// within `connect_timeout` fails.
    pub fn new(transport: &Transport, connect_timeout: Duration) -> Result<PeerSetup> {
        let identity = PeerIdentity::generate()
            .map_err(|e| Error::Certificates(format!("cannot make this process's peer identity: {e}")))?;
        PeerSetup::with_identity(Arc::new(identity), transport, connect_timeout)
    }

    /// As [`PeerSetup::new`], with a given identity.
    pub fn with_identity(
        identity: Arc<PeerIdentity>,
        transport: &Transport,
        connect_timeout: Duration,
    ) -> Result<PeerSetup> {
        let members = PeerSet::default();
        let server = |ip: IpAddr| {
            peer_server_config(&identity, members.clone(), transport, ip)
                .map(Arc::new)
                .map_err(|e| Error::Certificates(format!("cannot configure the peer server: {e}")))
        };
        let remote = server(IpAddr::V4(Ipv4Addr::UNSPECIFIED))?;
        let loopback = server(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
        Ok(PeerSetup {
            members,
            transport: transport.clone(),
            connect_timeout,
            server: remote,
            loopback_server: loopback,
            identity,
        })
    }

    /// The fingerprint to send in the attach.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.identity.fingerprint().0
    }

    /// Makes `endpoint` accept peer connections (from members only, once [`PeerLinks::new`]
    /// names them; nobody before).
    pub fn serve(&self, endpoint: &quinn::Endpoint) {
        endpoint.set_server_config(Some((*self.server).clone()));
    }
}

/// A member as this process reaches it.
struct Member {
    addr: SocketAddr,
    fingerprint: Fingerprint,
    /// Made on the first send to it.
    client: Option<quinn::ClientConfig>,
    /// A link to it failed: later messages come back at once instead of waiting for another
    /// connection attempt each (a member behind a NAT or a relay, whose address as the
    /// coordinator sees it does not reach it, would cost a connect timeout per forward).
    failed: Arc<AtomicBool>,
}

/// One destination's link: its task's queue, and the task.
struct Link {
    queue: mpsc::UnboundedSender<ToPeer>,
    task: JoinHandle<()>,
}

/// The transport of [`ToPeer`] messages between the members of a session (see the module
/// docs). Dropping it stops every link and stops accepting peer connections.
pub(crate) struct PeerLinks {
    /// By rank; `None` for this process and for members that take no direct transfers.
    members: Vec<Option<Member>>,
    /// By rank, made on the first send.
    links: Vec<Option<Link>>,
    identity: Arc<PeerIdentity>,
    transport: Transport,
    connect_timeout: Duration,
    endpoint: quinn::Endpoint,
    events: mpsc::UnboundedSender<PeerEvent>,
    accept: JoinHandle<()>,
}

impl PeerLinks {
    /// Links to the members listed in `peers` (by rank, as `ToProcess::Attached` gives them)
    /// for this process, rank `me`, whose `endpoint` [`PeerSetup::serve`]s peers. Starts
    /// accepting their connections; must be called inside the tokio runtime that drives
    /// `endpoint`. Returns the links and the receiver of every [`PeerEvent`].
    pub fn new(
        setup: PeerSetup,
        endpoint: quinn::Endpoint,
        me: Rank,
        peers: &[Option<PeerAddress>],
    ) -> (PeerLinks, mpsc::UnboundedReceiver<PeerEvent>) {
        let members: Vec<Option<Member>> = peers
            .iter()
            .enumerate()
            .map(|(rank, p)| {
                let p = p.as_ref().filter(|_| rank != me as usize)?;
                Some(Member { addr: p.addr, fingerprint: Fingerprint(p.fingerprint), client: None, failed: Arc::default() })
            })
            .collect();
        for (rank, m) in members.iter().enumerate() {
            if let Some(m) = m {
                setup.members.insert(m.fingerprint, rank as u32);
            }
        }
        // In case the caller did not: without a server configuration quinn refuses every
        // incoming connection.
        setup.serve(&endpoint);
        let (events, receiver) = mpsc::unbounded_channel();
        let accept = tokio::spawn(accept_loop(
            endpoint.clone(),
            setup.members.clone(),
            Arc::clone(&setup.server),
            Arc::clone(&setup.loopback_server),
            events.clone(),
        ));
        let links = PeerLinks {
            links: members.iter().map(|_| None).collect(),
            members,
            identity: setup.identity,
            transport: setup.transport,
            connect_timeout: setup.connect_timeout,
            endpoint,
            events,
            accept,
        };
        (links, receiver)
    }

    /// Sends `msg` to rank `to`, behind every message sent to it before, without waiting. A
    /// message that cannot be delivered comes back as [`PeerEvent::Undelivered`] (at once if
    /// `to` is this process or takes no direct transfers).
    pub fn send(&mut self, to: Rank, msg: ToPeer) {
        let Some(member) = self.members.get_mut(to as usize).and_then(Option::as_mut) else {
            warn!(to, "no direct transfers to rank {to} (this process, not a member, or it takes none)");
            self.undelivered(to, msg);
            return;
        };
        if member.failed.load(Ordering::Relaxed) {
            self.undelivered(to, msg);
            return;
        }
        let msg = match &self.links[to as usize] {
            None => msg,
            Some(link) => match link.queue.send(msg) {
                Ok(()) => return,
                // The link ended without failing (cannot happen while `PeerLinks` lives): make
                // a new one.
                Err(mpsc::error::SendError(msg)) => msg,
            },
        };
        let client = match &member.client {
            Some(c) => c.clone(),
            None => match peer_client_config(&self.identity, member.fingerprint, &self.transport, member.addr.ip()) {
                Ok(c) => member.client.insert(c).clone(),
                Err(e) => {
                    error!(to, "cannot configure a peer connection to rank {to}: {e}");
                    self.undelivered(to, msg);
                    return;
                }
            },
        };
        let (queue, rx) = mpsc::unbounded_channel();
        queue.send(msg).expect("the receiver is here");
        let target = Target {
            rank: to,
            addr: member.addr,
            client,
            endpoint: self.endpoint.clone(),
            connect_timeout: self.connect_timeout,
            events: self.events.clone(),
            failed: Arc::clone(&member.failed),
        };
        let task = tokio::spawn(run_link(target, rx));
        if let Some(old) = self.links[to as usize].replace(Link { queue, task }) {
            // Already finished, or finishing its report.
            drop(old.queue);
        }
    }

    fn undelivered(&self, to: Rank, msg: ToPeer) {
        // The receiver is gone only when the runtime thread is: nobody to tell.
        let _ = self.events.send(PeerEvent::Undelivered(to, msg));
    }
}

impl Drop for PeerLinks {
    fn drop(&mut self) {
        self.accept.abort();
        for link in self.links.iter_mut().filter_map(Option::take) {
            link.task.abort();
        }
        self.endpoint.set_server_config(None);
    }
}

/// Where one link goes, and how.
struct Target {
    rank: Rank,
    addr: SocketAddr,
    client: quinn::ClientConfig,
    endpoint: quinn::Endpoint,
    connect_timeout: Duration,
    events: mpsc::UnboundedSender<PeerEvent>,
    /// Set when the link fails (see [`Member::failed`]).
    failed: Arc<AtomicBool>,
}

/// Messages written and not yet acknowledged, in order.
#[derive(Default)]
struct Unacked {
    /// Messages acknowledged so far (the count before `msgs`).
    acked: u64,
    msgs: VecDeque<ToPeer>,
}

impl Unacked {
    /// The receiver decoded `count` frames in all.
    fn ack(&mut self, count: u64) -> std::result::Result<(), String> {
        let done = count.checked_sub(self.acked).filter(|&n| n <= self.msgs.len() as u64).ok_or_else(|| {
            format!(
                "the peer acknowledged {count} messages, but {} were sent",
                self.acked + self.msgs.len() as u64
            )
        })?;
        self.msgs.drain(..done as usize);
        self.acked = count;
        Ok(())
    }
}

/// One link's task: delivers the queue's messages until the link fails or [`PeerLinks`] is
/// dropped; on failure, hands back every message not acknowledged and closes the queue.
async fn run_link(target: Target, mut queue: mpsc::UnboundedReceiver<ToPeer>) {
    let unacked = Mutex::new(Unacked::default());
    let outcome = deliver(&target, &mut queue, &unacked).await;
    if outcome.is_err() {
        // Before the queue closes, so that no send starts a second link: there is no second
        // attempt, every later message to this rank comes back at once (see `Member::failed`).
        target.failed.store(true, Ordering::Relaxed);
    }
    // No message can join the queue after this.
    queue.close();
    let mut lost: Vec<ToPeer> = unacked.into_inner().msgs.into();
    while let Ok(m) = queue.try_recv() {
        lost.push(m);
    }
    let (rank, addr) = (target.rank, target.addr);
    match outcome {
        Ok(()) => debug!(rank, %addr, "peer link closed"),
        Err(e) => {
            warn!(
                rank,
                %addr,
                undelivered = lost.len(),
                "peer link to rank {rank} failed: {e}; pages for it go through the coordinator from now on"
            );
        }
    }
    for m in lost {
        let _ = target.events.send(PeerEvent::Undelivered(rank, m));
    }
}

/// Connects, then writes the queue's messages and reads the receiver's acknowledgements until
/// either fails. `Ok` when the queue closed ([`PeerLinks`] dropped).
async fn deliver(
    target: &Target,
    queue: &mut mpsc::UnboundedReceiver<ToPeer>,
    unacked: &Mutex<Unacked>,
) -> std::result::Result<(), String> {
    let addr = target.addr;
    let connecting = target
        .endpoint
        .connect_with(target.client.clone(), addr, PEER_SERVER_NAME)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let conn = match tokio::time::timeout(target.connect_timeout, connecting).await {
        Err(_) => return Err(format!("no answer from {addr} within {:?}", target.connect_timeout)),
        Ok(Err(e)) => return Err(format!("cannot connect to {addr}: {}", describe(&e))),
        Ok(Ok(conn)) => conn,
    };
    debug!(rank = target.rank, %addr, "peer link connected");
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| describe(&e))?;
    let writer = async {
        let mut frames = FrameQueue::new();
        while let Some(first) = queue.recv().await {
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                let msg = shared(msg);
                match frames.push(msg.clone()) {
                    Ok(()) => unacked.lock().msgs.push_back(msg),
                    Err(e) => {
                        error!(rank = target.rank, "cannot frame a message to a peer: {e}");
                        let _ = target.events.send(PeerEvent::Undelivered(target.rank, msg));
                    }
                }
                if frames.len() < BATCH_LIMIT {
                    next = queue.try_recv().ok();
                }
            }
            let mut chunks = frames.take();
            send.write_all_chunks(&mut chunks).await.map_err(|e| match e {
                quinn::WriteError::ConnectionLost(e) => describe(&e),
                other => format!("the stream failed: {other}"),
            })?;
        }
        let _ = send.finish();
        Ok(())
    };
    let acks = async {
        let mut count = [0u8; ACK_LEN];
        loop {
            match recv.read_exact(&mut count).await {
                Ok(()) => unacked.lock().ack(u64::from_le_bytes(count))?,
                Err(quinn::ReadExactError::FinishedEarly(_)) => {
                    return Err("the peer closed its acknowledgement stream".to_string())
                }
                Err(quinn::ReadExactError::ReadError(e)) => return Err(read_detail(e)),
            }
        }
    };
    let outcome = tokio::select! {
        r = writer => r,
        r = acks => r,
    };
    if let Err(e) = &outcome {
        if e.starts_with("the peer acknowledged") {
            conn.close(close_code::PROTOCOL_ERROR.into(), e.as_bytes());
        }
    }
    outcome
}

/// `msg` with its page data shared (a clone costs a reference count, not a copy).
fn shared(mut msg: ToPeer) -> ToPeer {
    let ToPeer::Pages { data, .. } = &mut msg;
    if !data.is_shared() {
        *data = PageData::from(std::mem::take(data).into_bytes());
    }
    msg
}

/// Accepts peer connections on `endpoint` until aborted (with [`PeerLinks`]); each one is
/// served by a task of its own, aborted with this one.
async fn accept_loop(
    endpoint: quinn::Endpoint,
    members: PeerSet,
    server: Arc<quinn::ServerConfig>,
    loopback_server: Arc<quinn::ServerConfig>,
    events: mpsc::UnboundedSender<PeerEvent>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let config = if is_loopback(incoming.remote_address().ip()) { &loopback_server } else { &server };
                conns.spawn(serve_incoming(incoming, Arc::clone(config), members.clone(), events.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    debug!("the endpoint no longer accepts peer connections");
}

/// One incoming peer connection: the handshake (a stranger is refused there), then its
/// streams, one after the other.
async fn serve_incoming(
    incoming: quinn::Incoming,
    config: Arc<quinn::ServerConfig>,
    members: PeerSet,
    events: mpsc::UnboundedSender<PeerEvent>,
) {
    let remote = incoming.remote_address();
    let conn = match incoming.accept_with(config) {
        Ok(connecting) => match connecting.await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(%remote, "refused a peer connection: {}", describe(&e));
                return;
            }
        },
        Err(e) => {
            warn!(%remote, "refused a peer connection: {}", describe(&e));
            return;
        }
    };
    // The handshake checked the certificate against the members; one that left since is
    // refused here.
    let Some(rank) = peer_fingerprint(&conn).and_then(|fp| members.get(&fp)) else {
        warn!(%remote, "refused a peer connection: its certificate is no member's");
        conn.close(close_code::REFUSED.into(), b"not a member of this session");
        return;
    };
    debug!(rank, %remote, "peer connected");
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                debug!(rank, %remote, "peer connection ended: {}", describe(&e));
                return;
            }
        };
        if let Err(e) = read_stream(rank, send, recv, &events).await {
            match e {
                StreamEnd::BadFrame(e) => {
                    warn!(rank, %remote, "closing the connection of rank {rank}: bad frame: {e}");
                    let reason = format!("bad frame: {e}");
                    conn.close(close_code::PROTOCOL_ERROR.into(), reason.as_bytes());
                }
                StreamEnd::Failed(e) => debug!(rank, %remote, "peer stream ended: {e}"),
            }
            return;
        }
    }
}

/// Why a peer stream stopped being read.
enum StreamEnd {
    /// The peer broke the framing: its connection is closed.
    BadFrame(dsm_proto::FrameError),
    /// The stream or connection failed, or this process stopped listening.
    Failed(String),
}

/// Reads one peer stream's frames into events, acknowledging them after each read; `Ok` when
/// the peer finished the stream.
async fn read_stream(
    rank: Rank,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    events: &mpsc::UnboundedSender<PeerEvent>,
) -> std::result::Result<(), StreamEnd> {
    let mut frames = FrameReader::with_capacity(64 << 10);
    let mut chunks: [Bytes; READ_CHUNKS] = Default::default();
    let mut count: u64 = 0;
    loop {
        match recv.read_chunks(&mut chunks).await {
            Ok(Some(n)) => frames.extend_from_chunks(&mut chunks[..n]),
            Ok(None) => return Ok(()),
            Err(e) => return Err(StreamEnd::Failed(read_detail(e))),
        }
        let before = count;
        loop {
            match frames.next::<ToPeer>() {
                Ok(Some(msg)) => {
                    count += 1;
                    if events.send(PeerEvent::Received(rank, msg)).is_err() {
                        return Err(StreamEnd::Failed("this process no longer takes peer messages".into()));
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(StreamEnd::BadFrame(e)),
            }
        }
        if count != before {
            send.write_all(&count.to_le_bytes()).await.map_err(|e| StreamEnd::Failed(e.to_string()))?;
        }
    }
}

/// A quinn connection error in words, TLS alerts by name.
fn describe(e: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as C;
    let code = match e {
        C::ConnectionClosed(c) => Some(u64::from(c.error_code)),
        C::TransportError(t) => Some(u64::from(t.code)),
        _ => None,
    };
    let alert = code.filter(|c| (0x100..0x200).contains(c)).and_then(|c| tls_alert_name(c - 0x100));
    match (e, alert) {
        (_, Some(alert)) => format!("TLS alert: {alert} ({e})"),
        (C::TimedOut, _) => "the peer went silent past the idle timeout".into(),
        (C::ApplicationClosed(app), _) => {
            format!("the peer closed the connection: {}", String::from_utf8_lossy(&app.reason))
        }
        _ => e.to_string(),
    }
}

fn read_detail(e: quinn::ReadError) -> String {
    match e {
        quinn::ReadError::ConnectionLost(e) => describe(&e),
        other => format!("the stream failed: {other}"),
    }
}

#[cfg(test)]
mod tests;
