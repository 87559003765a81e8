//! The runtime thread's loop: one `select!` over the coordinator's stream, the application
//! threads' commands, the region's userfaultfd, the replay eventfd and a timer for stale
//! replays. Messages to the coordinator are framed into one buffer and written in order;
//! frames from it are decoded and applied in order (ordering rule 2).
//!
//! Session requests (barriers, semaphores, ping, detach) are answered here; page messages and
//! faults go to the region's [`FaultService`]. When the connection fails, every waiting request
//! gets the error, later ones get it at once, and the region is failed (see `crate::fault`).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use dsm_proto::{close_code, FrameQueue, FrameReader, ReqId, SessionFault, ToCoordinator, ToProcess};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::errors::{read_error, write_error};
use super::peers::{PeerEvent, PeerLinks};
use super::{Command, Reply};
use crate::error::{Error, Result};
use crate::fatal::fatal;
use crate::fault::FaultService;
use crate::sys::UffdFd;

/// Chunks taken from quinn per read: about one packet's stream data each.
const READ_CHUNKS: usize = 32;

/// Pages one step of a detach releases (16 MiB): the most write-back data held in memory
/// beyond what quinn buffers.
const RELEASE_PAGES: usize = 4096;

/// The runtime thread's state: the stream, and the requests waiting for replies.
pub(crate) struct Driver {
    addr: String,
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    inbuf: FrameReader,
    /// Frames not yet written; page data in them is not copied (`FrameQueue`).
    outbuf: FrameQueue,
    next_req: ReqId,
    waiting: HashMap<ReqId, Waiting>,
    barrier: Option<Reply<()>>,
    barrier_epoch: u64,
    detach: Option<Reply<()>>,
    /// Detaching: the pages written back so far, while some are left to release.
    releasing: Option<usize>,
    /// Set once the connection failed; every later request gets this error.
    dead: Option<Error>,
    /// The failure of a fire-and-forget post, returned by the next barrier or semaphore wait.
    failed_post: Option<Error>,
    /// The region whose faults this driver services, if any.
    region: Option<FaultService>,
    uffd: Option<AsyncFd<UffdFd>>,
    efd: Option<AsyncFd<UffdFd>>,
    /// Keeps this thread polling for a moment after traffic (see `dsm_cert::BusyPoll`).
    busy: dsm_cert::BusyPoll,
    /// Direct transfers with the other members, when the session forwards (set by
    /// `connect.rs`).
    peers: Option<PeerLinks>,
    /// Their events, until `run` takes them into its loop.
    peer_events: Option<mpsc::UnboundedReceiver<PeerEvent>>,
}

enum Waiting {
    Done(Reply<()>),
    Pong(Reply<Vec<u8>>),
}

impl Driver {
    /// A driver for a connection whose hello is done.
    pub(super) fn new(
        addr: String,
        endpoint: quinn::Endpoint,
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        busy_poll: Duration,
    ) -> Driver {
        Driver {
            addr,
            endpoint,
            conn,
            send,
            recv,
            inbuf: FrameReader::with_capacity(64 * 1024),
            outbuf: FrameQueue::new(),
            next_req: 1,
            waiting: HashMap::new(),
            barrier: None,
            barrier_epoch: 0,
            detach: None,
            releasing: None,
            dead: None,
            failed_post: None,
            region: None,
            uffd: None,
            efd: None,
            busy: dsm_cert::BusyPoll::spawn(busy_poll),
            peers: None,
            peer_events: None,
        }
    }

    /// Also serve a region's faults (its userfaultfd and replay eventfd, registered with this
    /// thread's reactor).
    pub(super) fn serve_region(&mut self, service: FaultService, uffd: AsyncFd<UffdFd>, efd: AsyncFd<UffdFd>) {
        self.region = Some(service);
        self.uffd = Some(uffd);
        self.efd = Some(efd);
    }

    /// Also carry direct transfers (`PeerLinks::new`'s links and events).
    pub(super) fn serve_peers(&mut self, (links, events): (PeerLinks, mpsc::UnboundedReceiver<PeerEvent>)) {
        self.peers = Some(links);
        self.peer_events = Some(events);
    }

    pub(super) fn close(&self, code: u32, reason: &[u8]) {
        self.conn.close(code.into(), reason);
    }

    pub(super) async fn send(&mut self, msg: ToCoordinator) -> Result<()> {
        self.queue(msg)?;
        self.flush().await
    }

    /// Frames `msg` behind everything queued before. An error (a message over the frame
    /// limit) leaves the queue as it was.
    fn queue(&mut self, msg: ToCoordinator) -> Result<()> {
        let what = kind(&msg);
        self.outbuf.push(msg).map_err(|e| Error::Protocol(format!("cannot send a {what} message: {e}")))
    }

    /// Queues protocol messages produced by the fault service. They are small by construction;
    /// one that cannot be framed would leave the coherence protocol waiting forever, so it is
    /// fatal.
    fn queue_all(&mut self, msgs: Vec<ToCoordinator>) {
        // Consecutive acknowledgements and writebacks of neighbouring pages travel as runs.
        for m in dsm_proto::runs::coalesce_to_coordinator(msgs) {
            if let Err(e) = self.queue(m) {
                fatal("queueing a coherence message", &e);
            }
        }
    }

    async fn flush(&mut self) -> Result<()> {
        if self.outbuf.is_empty() {
            return Ok(());
        }
        self.busy.touch();
        // Handed to quinn as they are (no copy into its send buffer).
        let mut frames = self.outbuf.take();
        self.send.write_all_chunks(&mut frames).await.map_err(|e| write_error(&self.addr, e))
    }

    /// Flushes, failing everything if the connection is gone.
    async fn flush_or_fail(&mut self) {
        if let Err(e) = self.flush().await {
            self.fail_all(e);
        }
    }

    /// Reads until one whole message is buffered.
    pub(super) async fn next_message(&mut self) -> Result<ToProcess> {
        loop {
            if let Some(msg) = self.try_decode()? {
                return Ok(msg);
            }
            self.fill().await?;
        }
    }

    fn try_decode(&mut self) -> Result<Option<ToProcess>> {
        match self.inbuf.next::<ToProcess>() {
            Ok(msg) => Ok(msg),
            Err(e) => {
                self.conn.close(close_code::PROTOCOL_ERROR.into(), e.to_string().as_bytes());
                Err(Error::Protocol(format!("bad frame from the coordinator: {e}")))
            }
        }
    }

    async fn fill(&mut self) -> Result<()> {
        let mut chunks: [Bytes; READ_CHUNKS] = Default::default();
        match self.recv.read_chunks(&mut chunks).await {
            Ok(Some(n)) => {
                self.inbuf.extend_from_chunks(&mut chunks[..n]);
                Ok(())
            }
            Ok(None) => Err(Error::ConnectionLost("the coordinator closed the stream".into())),
            Err(e) => Err(read_error(&self.addr, e)),
        }
    }

    pub(super) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut chunks: [Bytes; READ_CHUNKS] = Default::default();
        let uffd = self.uffd.take();
        let efd = self.efd.take();
        let mut peer_events = self.peer_events.take();
        let mut stale_check = tokio::time::interval(Duration::from_millis(20));
        loop {
            let replays_pending = self.region.as_ref().is_some_and(FaultService::replays_pending);
            tokio::select! {
                ready = async { efd.as_ref().expect("guarded").readable().await }, if efd.is_some() => {
                    match ready {
                        Ok(mut guard) => {
                            let mut out = Vec::new();
                            if let Some(r) = &mut self.region {
                                r.handle_replay_requests(&mut out);
                            }
                            self.queue_all(out);
                            guard.clear_ready();
                        }
                        Err(e) => fatal("polling the replay eventfd", &e),
                    }
                    self.flush_or_fail().await;
                }
                _ = stale_check.tick(), if replays_pending => {
                    let mut out = Vec::new();
                    if let Some(r) = &mut self.region {
                        r.reclaim_stale_replays(&mut out);
                    }
                    self.queue_all(out);
                    self.flush_or_fail().await;
                }
                ready = async { uffd.as_ref().expect("guarded").readable().await }, if uffd.is_some() => {
                    match ready {
                        Ok(mut guard) => {
                            let mut out = Vec::new();
                            if let Some(r) = &mut self.region {
                                r.handle_faults(&mut out);
                            }
                            self.queue_all(out);
                            guard.clear_ready();
                        }
                        Err(e) => fatal("polling userfaultfd", &e),
                    }
                    self.flush_or_fail().await;
                }
                event = async { peer_events.as_mut().expect("guarded").recv().await }, if peer_events.is_some() => {
                    match event {
                        Some(event) => {
                            self.busy.touch();
                            self.handle_peer_event(event);
                            while let Some(event) = peer_events.as_mut().and_then(|r| r.try_recv().ok()) {
                                self.handle_peer_event(event);
                            }
                        }
                        None => peer_events = None,
                    }
                    self.flush_or_fail().await;
                }
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { break };
                    self.handle_command(cmd);
                    while let Ok(cmd) = commands.try_recv() {
                        self.handle_command(cmd);
                    }
                    self.flush_or_fail().await;
                    while self.releasing.is_some() && self.dead.is_none() {
                        self.release_step();
                        self.flush_or_fail().await;
                    }
                }
                read = self.recv.read_chunks(&mut chunks), if self.dead.is_none() => {
                    match read {
                        Ok(Some(n)) => {
                            self.busy.touch();
                            self.inbuf.extend_from_chunks(&mut chunks[..n]);
                            loop {
                                match self.try_decode() {
                                    Ok(Some(msg)) => self.handle_message(msg),
                                    Ok(None) => break,
                                    Err(e) => { self.fail_all(e); break }
                                }
                            }
                            // Pages the coordinator asked this process to forward.
                            self.send_peer_messages();
                            // Acks and requests produced by page messages.
                            self.flush_or_fail().await;
                        }
                        Ok(None) => self.fail_all(Error::ConnectionLost("the coordinator closed the stream".into())),
                        Err(e) => { let e = read_error(&self.addr, e); self.fail_all(e) }
                    }
                }
            }
        }
        if let Some(r) = &mut self.region {
            r.release_handlers();
        }
        // The run buffers kept for bulk traffic go back to the OS (`dsm_proto::buffers`).
        dsm_proto::buffers::trim();
        // Datagrams, losses, congestion events, path RTT: what to look at when a transfer is slow.
        debug!("connection statistics at the end: {:?}", self.conn.stats());
        self.conn.close(close_code::OK.into(), b"detached");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    /// Detaching: releases the next [`RELEASE_PAGES`] pages and queues their write-backs;
    /// once every page is released, queues `Detach`. Each slice is flushed before the next is
    /// made, so a large owned region never needs a second copy of itself in memory.
    fn release_step(&mut self) {
        let Some(so_far) = self.releasing else { return };
        let mut out = Vec::new();
        let (written, done) = match &mut self.region {
            Some(r) => r.release(&mut out, RELEASE_PAGES),
            None => (0, true),
        };
        if done {
            if let Some(r) = &self.region {
                debug!("detaching: wrote back {} owned pages; stats {:?}", so_far + written, r.stats());
            }
            out.push(ToCoordinator::Detach);
            self.releasing = None;
        } else {
            self.releasing = Some(so_far + written);
        }
        self.queue_all(out);
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
                    let _ = r.send(Ok(self.region.as_ref().map(FaultService::stats).unwrap_or_default()));
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
                match self.queue(ToCoordinator::Barrier { epoch }) {
                    Ok(()) => self.barrier = Some(reply),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::SemaphoreWait { name, initial, reply } => {
                if let Some(e) = self.failed_post.take() {
                    let _ = reply.send(Err(e));
                    return;
                }
                let req = self.next_req();
                match self.queue(ToCoordinator::SemaphoreWait { req, name, initial }) {
                    Ok(()) => {
                        self.waiting.insert(req, Waiting::Done(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::SemaphorePost { name, initial, reply } => {
                // Nobody waits for the answer: the stream keeps the post ordered before whatever
                // this process sends next, and a failure is reported by the coordinator's
                // `Failed` (logged) or by the next blocking call.
                let req = self.next_req();
                match (self.queue(ToCoordinator::SemaphorePost { req, name, initial }), reply) {
                    (Ok(()), Some(reply)) => {
                        self.waiting.insert(req, Waiting::Done(reply));
                    }
                    (Err(e), Some(reply)) => {
                        let _ = reply.send(Err(e));
                    }
                    (Ok(()), None) => {}
                    (Err(e), None) => {
                        warn!("a semaphore post could not be sent: {e}");
                        self.failed_post.get_or_insert(e);
                    }
                }
            }
            Command::Ping(payload, reply) => {
                let req = self.next_req();
                match self.queue(ToCoordinator::Ping { req, payload }) {
                    Ok(()) => {
                        self.waiting.insert(req, Waiting::Pong(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Detach(reply) => {
                // Owned pages go home first, on the same ordered stream, so no write is lost;
                // `release_step` sends them a slice at a time, then `Detach`.
                self.detach = Some(reply);
                self.releasing = Some(0);
            }
            Command::Stats(reply) => {
                let stats = self.region.as_ref().map(FaultService::stats).unwrap_or_default();
                let _ = reply.send(Ok(stats));
            }
            Command::Advise { first, count, coherence } => {
                self.queue_all(vec![ToCoordinator::Advise { first, count, coherence }]);
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
                if let Some(r) = &mut self.region {
                    r.detached();
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
            | ToProcess::Advice { .. }
            | ToProcess::DataRun { .. }
            | ToProcess::GrantRun { .. }
            | ToProcess::Denied { .. }
            | ToProcess::InvalidateRun { .. }
            | ToProcess::DowngradeRun { .. }
            | ToProcess::RecallRun { .. }
            | ToProcess::Forward { .. }
            | ToProcess::ForwardNote { .. }
            | ToProcess::ForwardAbort { .. }
            | ToProcess::InvBackup { .. }
            | ToProcess::DropBackup { .. }
            | ToProcess::RestoreBackup { .. }) => self.handle_page_message(page_msg),
            other => warn!("ignoring unexpected message from the coordinator: {other:?}"),
        }
    }

    fn handle_page_message(&mut self, msg: ToProcess) {
        let Some(r) = &mut self.region else {
            warn!("page message for a session without a region: {msg:?}");
            return;
        };
        let mut out = Vec::new();
        match r.handle_page_message(msg, &mut out) {
            Ok(()) => self.queue_all(out),
            Err(e) => {
                // The coordinator and this process disagree about the pages: nothing that waits
                // could ever be answered correctly.
                let e = Error::Protocol(format!("the coordinator broke the coherence protocol: {e}"));
                self.conn.close(close_code::PROTOCOL_ERROR.into(), b"coherence protocol violation");
                self.fail_all(e);
            }
        }
    }

    /// A peer's message, or one of ours that could not reach its peer.
    fn handle_peer_event(&mut self, event: PeerEvent) {
        let Some(r) = &mut self.region else { return };
        let mut out = Vec::new();
        match event {
            PeerEvent::Received(from, msg) => {
                if let Err(e) = r.handle_peer(from, msg, &mut out) {
                    // A member sent pages nobody can account for: the fetch waiting for them
                    // could never be answered correctly.
                    let e = Error::Protocol(format!("rank {from} broke the direct transfer protocol: {e}"));
                    self.fail_all(e);
                    return;
                }
            }
            PeerEvent::Undelivered(to, msg) => {
                debug!("pages for rank {to} could not be sent directly; returning them to the coordinator");
                r.peer_failed(to, msg, &mut out);
            }
        }
        self.queue_all(out);
    }

    /// Sends the pages the region's core wants to send to peers (answers to `Forward`); with
    /// no peer links (cannot happen with a correct coordinator) they go back to it instead.
    fn send_peer_messages(&mut self) {
        let Some(r) = &mut self.region else { return };
        let msgs = r.take_peer_messages();
        if msgs.is_empty() {
            return;
        }
        match &mut self.peers {
            Some(links) => {
                for (to, msg) in msgs {
                    links.send(to, msg);
                }
            }
            None => {
                let mut out = Vec::new();
                for (to, msg) in msgs {
                    r.peer_failed(to, msg, &mut out);
                }
                self.queue_all(out);
            }
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

    /// The connection is gone (or unusable): fail everything waiting, everything asked later,
    /// and the region (see `crate::fault`).
    fn fail_all(&mut self, e: Error) {
        if self.dead.is_some() {
            return;
        }
        debug!("connection failed: {e}");
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
        if let Some(r) = &mut self.region {
            r.fail(&e);
        }
        self.dead = Some(e);
    }
}

/// What kind of message `msg` is, for error messages.
fn kind(msg: &ToCoordinator) -> &'static str {
    match msg {
        ToCoordinator::Attach(_) => "attach",
        ToCoordinator::Barrier { .. } => "barrier",
        ToCoordinator::SemaphoreWait { .. } | ToCoordinator::SemaphorePost { .. } => "semaphore",
        ToCoordinator::Ping { .. } => "ping",
        ToCoordinator::Detach => "detach",
        _ => "coherence",
    }
}
