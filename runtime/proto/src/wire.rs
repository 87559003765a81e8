//! Every message exchanged between a process and the coordinator.
//!
//! After the [`crate::handshake`], a connection carries exactly one bidirectional QUIC stream,
//! and every message in either direction travels on it as a [`crate::frame`]. One ordered stream
//! per direction is a protocol rule, not a convenience: the coherence protocol needs FIFO
//! delivery both ways (DESIGN.md, ordering rule 2).

use serde::{Deserialize, Serialize};

use crate::{NameError, SizeError, StatusReport};

/// A process's rank within its session, `0..nprocs`.
pub type Rank = u32;

/// A page number within the region (byte offset / [`crate::PAGE_SIZE`]).
pub type PageNo = u64;

/// Correlates a request with its reply. Chosen by the process, unique per connection.
pub type ReqId = u64;

pub use crate::page_data::PageData;

/// The first message of a connection: join (or declare) a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    /// Session name (see [`crate::check_session_name`]).
    pub session: String,
    /// Region size in bytes, a multiple of the page size.
    pub size: u64,
    /// Number of processes in the session.
    pub nprocs: u32,
    /// Free-form description of the process (host, pid, program) for the coordinator's logs.
    pub label: String,
    /// The SHA-256 fingerprint of the certificate this process serves peer connections with
    /// (`dsm_cert::peer`), or `None` if it takes no direct transfers.
    pub peer: Option<[u8; 32]>,
}

/// How to reach a member of a session directly (direct owner -> requester transfers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddress {
    /// The address the coordinator sees the member's connection come from (its endpoint
    /// serves peer connections on the same socket).
    pub addr: std::net::SocketAddr,
    /// The SHA-256 fingerprint of its peer certificate.
    pub fingerprint: [u8; 32],
}

/// Messages from a process to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToCoordinator {
    /// Join a session. Answered by zero or more [`ToProcess::Joined`] progress reports, then
    /// [`ToProcess::Attached`] or [`ToProcess::Refused`].
    Attach(AttachRequest),
    /// Enter barrier number `epoch` (counted from 0 per process). Answered by
    /// [`ToProcess::BarrierDone`] once every process of the session entered it.
    Barrier {
        /// The barrier's sequence number.
        epoch: u64,
    },
    /// Decrement semaphore `name`, waiting while it is zero. Answered by
    /// [`ToProcess::SemaphoreAcquired`] or [`ToProcess::Failed`].
    SemaphoreWait {
        /// Request id echoed in the reply.
        req: ReqId,
        /// Semaphore name.
        name: String,
        /// The count the semaphore starts with if this is the first use of `name` in the session;
        /// a later use naming another initial count fails with
        /// [`SessionFault::SemaphoreInitialMismatch`].
        initial: u32,
    },
    /// Increment semaphore `name`, waking its oldest waiter. Answered by
    /// [`ToProcess::SemaphorePosted`] or [`ToProcess::Failed`].
    SemaphorePost {
        /// Request id echoed in the reply.
        req: ReqId,
        /// Semaphore name.
        name: String,
        /// As for [`ToCoordinator::SemaphoreWait`].
        initial: u32,
    },
    /// Ask for a read-only copy of a page.
    Fetch {
        /// Request id echoed in the reply.
        req: ReqId,
        /// The page.
        page: PageNo,
    },
    /// Ask for exclusive (writable) ownership of a page.
    Own {
        /// Request id echoed in the reply.
        req: ReqId,
        /// The page.
        page: PageNo,
    },
    /// The process dropped its copy of `page` after [`ToProcess::Invalidate`].
    InvalidateAck {
        /// The page.
        page: PageNo,
    },
    /// The process write-protected its owned copy after [`ToProcess::Downgrade`]; `data` is its
    /// contents (`None` if the process no longer owned it: it wrote it back before).
    DowngradeAck {
        /// The page.
        page: PageNo,
        /// The page's contents, if the process still owned it.
        data: Option<PageData>,
    },
    /// The process dropped its owned copy after [`ToProcess::Recall`]; `data` as for
    /// [`ToCoordinator::DowngradeAck`].
    RecallAck {
        /// The page.
        page: PageNo,
        /// The page's contents, if the process still owned it.
        data: Option<PageData>,
    },
    /// The process gives up ownership of a page it owns (before detaching); the coordinator
    /// makes `data` the home copy.
    Writeback {
        /// The page.
        page: PageNo,
        /// Its final contents.
        data: PageData,
    },
    /// Leave the session. Answered by [`ToProcess::Detached`]. Owned pages must be written
    /// back before.
    Detach,
    /// A store replayed for the coordinator to apply (update mode): `width` bytes of `value`
    /// (little-endian) at byte `offset` of `page`. Answered by [`ToProcess::WriteAck`] or
    /// [`ToProcess::Retry`]. Sent only while the process holds a read-only copy (rule 6).
    Write {
        /// Request id echoed in the reply.
        req: ReqId,
        /// The page.
        page: PageNo,
        /// Byte offset in the page.
        offset: u16,
        /// 1, 2, 4, 8 or 16 bytes.
        width: u8,
        /// The bytes to store (low `width` bytes).
        value: u128,
    },
    /// An atomic read-modify-write the coordinator executes on the home copy (update mode).
    /// Answered like [`ToCoordinator::Write`]; the ack carries the old value.
    Rmw {
        /// Request id echoed in the reply.
        req: ReqId,
        /// The page.
        page: PageNo,
        /// Byte offset in the page.
        offset: u16,
        /// 1, 2, 4 or 8 bytes.
        width: u8,
        /// The operation.
        op: RmwOp,
        /// Its source operand (the new value for `CmpXchg`).
        operand: u64,
        /// The comparand (`rax`) for `CmpXchg`.
        expected: u64,
    },
    /// Set the coherence policy of `count` pages from `first` (see `Region::advise`).
    Advise {
        /// First page.
        first: PageNo,
        /// Number of pages.
        count: u64,
        /// The policy.
        coherence: Coherence,
    },
    /// `Fetch` of the `count` pages from `first` (a run: one request id for all of them). The
    /// coordinator serves each page as its own `Fetch`; the replies come back as runs where
    /// consecutive pages are answered together ([`ToProcess::DataRun`]).
    FetchRun {
        /// Request id echoed in every reply.
        req: ReqId,
        /// First page.
        first: PageNo,
        /// Pages, 1 to [`crate::runs::MAX_RUN`].
        count: u32,
    },
    /// Ownership of the `count` pages from `first`, one request id for all. Unconditional
    /// (`conditional: false`): each page is served as its own `Own`. Conditional (write-ahead):
    /// a page is granted only if nobody holds it (no owner, no readers, no transaction, in
    /// invalidate mode), else answered [`ToProcess::Denied`] with nothing changed: a
    /// speculative request never takes a page from another process.
    OwnRun {
        /// Request id echoed in every reply.
        req: ReqId,
        /// First page.
        first: PageNo,
        /// Pages, 1 to [`crate::runs::MAX_RUN`].
        count: u32,
        /// Write-ahead: grant only pages nobody holds.
        conditional: bool,
    },
    /// [`ToCoordinator::InvalidateAck`] for `count` pages from `first`.
    InvalidateAckRun {
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
    },
    /// [`ToCoordinator::DowngradeAck`] for `count` pages from `first`, all with data
    /// (`count` pages of bytes) or all without.
    DowngradeAckRun {
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
        /// Their contents, page after page.
        data: Option<PageData>,
    },
    /// [`ToCoordinator::RecallAck`] for a run, as [`ToCoordinator::DowngradeAckRun`].
    RecallAckRun {
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
        /// Their contents, page after page.
        data: Option<PageData>,
    },
    /// [`ToCoordinator::Writeback`] of `count` pages from `first`.
    WritebackRun {
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
        /// Their contents, page after page.
        data: PageData,
    },
    /// The process installed the pages a peer forwarded for its request (after the
    /// [`ToProcess::ForwardNote`]): it now holds them read-only.
    Got {
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
    },
    /// Answer to [`ToProcess::ForwardAbort`] for pages not installed yet: the process drops
    /// whatever a peer sends for them and waits for the coordinator's answer.
    ForwardAborted {
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
    },
    /// The process could not deliver pages a [`ToProcess::Forward`] asked it to send (the peer
    /// is unreachable); here are their contents instead. It keeps read-only copies. `req` and
    /// `to` name that forward: a return that arrives after the forward ended (the peer did get
    /// the pages) must not touch a later one.
    ForwardReturn {
        /// The requester's request, as in the `Forward`.
        req: ReqId,
        /// The requester.
        to: Rank,
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
        /// Their contents, page after page.
        data: PageData,
    },
    /// Answer to [`ToProcess::InvBackup`] for `count` pages from `first`: `kept` when this
    /// process held ReadOnly copies of them and now keeps their bytes as backups (the copies
    /// are dropped), not `kept` when it held no copy. Pages of both kinds in one `InvBackup`
    /// are answered by separate runs.
    BackupAck {
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
        /// Whether the process keeps backups of them.
        kept: bool,
    },
    /// Answer to [`ToProcess::RestoreBackup`]: the bytes of the backups of `count` pages from
    /// `first` (the process no longer keeps them).
    BackupData {
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
        /// Their backups' bytes, page after page.
        data: PageData,
    },
    /// A detaching process's backups of `count` pages from `first` (after its write-backs,
    /// before `Detach`): a variant of `Writeback` the coordinator must not take as current.
    BackupHome {
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
        /// Their backups' bytes, page after page.
        data: PageData,
    },
    /// Echo `payload` back (used to measure the round trip through the coordinator).
    Ping {
        /// Request id echoed in the reply.
        req: ReqId,
        /// Arbitrary bytes, echoed.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// Ask for the coordinator's [`StatusReport`] (what `dsm status` shows). Allowed on any
    /// connection at any time, attached or not: a status client never joins a session.
    /// Answered by [`ToProcess::Status`].
    Status {
        /// Request id echoed in the reply.
        req: ReqId,
    },
    /// Ownership of a page that must be granted whatever its mode: the process has a store it
    /// cannot replay (an unsupported instruction, a page-straddling operand, a store made by
    /// the kernel). On an update-mode page it switches the page back to invalidate mode; an
    /// ordinary [`ToCoordinator::Own`] there is answered with a read-only copy in update mode
    /// instead, and the process replays its store.
    ForceOwn {
        /// Request id echoed in the reply.
        req: ReqId,
        /// The page.
        page: PageNo,
    },
}

impl ToCoordinator {
    /// Bytes of page contents this message carries (acknowledgements with data, writebacks).
    pub fn page_bytes(&self) -> usize {
        match self {
            ToCoordinator::DowngradeAck { data: Some(d), .. }
            | ToCoordinator::RecallAck { data: Some(d), .. }
            | ToCoordinator::DowngradeAckRun { data: Some(d), .. }
            | ToCoordinator::RecallAckRun { data: Some(d), .. }
            | ToCoordinator::Writeback { data: d, .. }
            | ToCoordinator::WritebackRun { data: d, .. }
            | ToCoordinator::BackupData { data: d, .. }
            | ToCoordinator::BackupHome { data: d, .. } => d.len(),
            _ => 0,
        }
    }
}

/// The same variants as [`ToCoordinator::page_bytes`], for [`crate::FrameQueue`] to take.
impl crate::frame::PageBytes for ToCoordinator {
    fn page_data_mut(&mut self) -> Option<&mut PageData> {
        match self {
            ToCoordinator::DowngradeAck { data: Some(d), .. }
            | ToCoordinator::RecallAck { data: Some(d), .. }
            | ToCoordinator::DowngradeAckRun { data: Some(d), .. }
            | ToCoordinator::RecallAckRun { data: Some(d), .. }
            | ToCoordinator::Writeback { data: d, .. }
            | ToCoordinator::WritebackRun { data: d, .. }
            | ToCoordinator::BackupData { data: d, .. }
            | ToCoordinator::BackupHome { data: d, .. } => Some(d),
            _ => None,
        }
    }
}

/// Messages from the coordinator to a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToProcess {
    /// Attach progress: `joined` of `nprocs` processes are here.
    Joined {
        /// Processes attached so far, this one included.
        joined: u32,
        /// Processes the session needs.
        nprocs: u32,
    },
    /// The session started: every process has attached.
    Attached {
        /// This process's rank.
        rank: Rank,
        /// Number of processes.
        nprocs: u32,
        /// Region size in bytes.
        size: u64,
        /// Every member's peer address by rank (`None`: that member takes no direct
        /// transfers), or empty when the session does not forward pages directly.
        peers: Vec<Option<PeerAddress>>,
    },
    /// The attach was refused; the connection is closed after this message.
    Refused(Refusal),
    /// Every process entered barrier `epoch`.
    BarrierDone {
        /// The barrier's sequence number.
        epoch: u64,
    },
    /// A [`ToCoordinator::SemaphoreWait`] completed.
    SemaphoreAcquired {
        /// The request.
        req: ReqId,
    },
    /// A [`ToCoordinator::SemaphorePost`] completed.
    SemaphorePosted {
        /// The request.
        req: ReqId,
    },
    /// A barrier (when `req` is `None`) or a request failed.
    Failed {
        /// The failed request, or `None` for the pending barrier.
        req: Option<ReqId>,
        /// Why.
        error: SessionFault,
    },
    /// A read-only copy of a page, answering [`ToCoordinator::Fetch`].
    Data {
        /// The request.
        req: ReqId,
        /// The page.
        page: PageNo,
        /// Its contents (`None`: all zero).
        data: Option<PageData>,
        /// The page's coherence mode: in update mode stores are replayed, not owned.
        mode: Mode,
    },
    /// Exclusive ownership of a page, answering [`ToCoordinator::Own`]. `data` is present when
    /// the process held no valid copy; when it is absent the process's read-only copy is current.
    Grant {
        /// The request.
        req: ReqId,
        /// The page.
        page: PageNo,
        /// Its contents when the process needs them.
        data: Option<GrantData>,
    },
    /// Drop your read-only copy of `page` and answer [`ToCoordinator::InvalidateAck`].
    Invalidate {
        /// The page.
        page: PageNo,
    },
    /// Write-protect your owned copy of `page`, keep it readable, answer with its contents.
    Downgrade {
        /// The page.
        page: PageNo,
    },
    /// Drop your owned copy of `page` and answer with its contents.
    Recall {
        /// The page.
        page: PageNo,
    },
    /// Another process's replayed store to a page this process holds read-only: apply it with
    /// one store of `width` bytes (rule 7: never torn).
    Update {
        /// The page.
        page: PageNo,
        /// Byte offset.
        offset: u16,
        /// 1, 2, 4, 8 or 16.
        width: u8,
        /// The stored bytes.
        value: u128,
    },
    /// This process's replayed store or RMW was sequenced: apply `value` locally (one store of
    /// `width`), then resume the thread; `old` is the value before (for RMWs).
    WriteAck {
        /// The request.
        req: ReqId,
        /// The page.
        page: PageNo,
        /// Byte offset.
        offset: u16,
        /// Width in bytes.
        width: u8,
        /// The bytes now in memory.
        value: u128,
        /// The value before (RMW result for the thread's registers).
        old: u64,
    },
    /// The replayed store was not applied (the page left update mode, or this process no longer
    /// holds a copy): redo it by ownership.
    Retry {
        /// The request.
        req: ReqId,
        /// The page.
        page: PageNo,
    },
    /// A hint: `page` is now in `mode` (sent to its readers when it switches to update mode).
    /// Processes use hints only to pick the cheaper request; the coordinator checks every
    /// request against the real mode, so a stale hint costs a retry, never correctness.
    ModeHint {
        /// The page.
        page: PageNo,
        /// Its mode.
        mode: Mode,
    },
    /// A hint: some process advised `coherence` for these pages (see `ModeHint`).
    Advice {
        /// First page.
        first: PageNo,
        /// Number of pages.
        count: u64,
        /// The policy.
        coherence: Coherence,
    },
    /// [`ToProcess::Data`] for `count` consecutive pages from `first`, all answering `req`,
    /// all in `mode`; `data` holds every page (page after page) or is `None` (all zero).
    DataRun {
        /// The request.
        req: ReqId,
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
        /// Their contents (`None`: all zero).
        data: Option<PageData>,
        /// Their mode.
        mode: Mode,
    },
    /// [`ToProcess::Grant`] for `count` consecutive pages from `first`, all answering `req`;
    /// `data` is `None` (every copy current), `Zero` (all zero) or every page's bytes.
    GrantRun {
        /// The request.
        req: ReqId,
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
        /// Their contents when the process needs them.
        data: Option<GrantData>,
    },
    /// Pages of a conditional [`ToCoordinator::OwnRun`] that were not granted (someone holds
    /// them, or they are in update mode): nothing changed for them.
    Denied {
        /// The request.
        req: ReqId,
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
    },
    /// [`ToProcess::Invalidate`] for `count` pages from `first`.
    InvalidateRun {
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
    },
    /// [`ToProcess::Downgrade`] for `count` pages from `first`.
    DowngradeRun {
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
    },
    /// [`ToProcess::Recall`] for `count` pages from `first`.
    RecallRun {
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
    },
    /// Send your copies of `count` pages from `first` to rank `to` as [`ToPeer::Pages`]
    /// answering its request `req`: a Writable copy is write-protected first and stays
    /// ReadOnly; a page this process no longer holds is skipped (it wrote it back, and the
    /// coordinator has seen that first).
    Forward {
        /// The requester's request.
        req: ReqId,
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
        /// The requester.
        to: Rank,
    },
    /// Your request `req` for these pages is answered by a peer: install the pages it sends
    /// only after this note (the note orders them after every earlier message of this
    /// stream), then send [`ToCoordinator::Got`].
    ForwardNote {
        /// The request.
        req: ReqId,
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
    },
    /// The peer forwarding these pages is gone or could not send them: if they are not
    /// installed yet, drop them and answer [`ToCoordinator::ForwardAborted`] (the coordinator
    /// then answers the request itself); if they are, ignore this (the `Got` is on its way).
    ForwardAbort {
        /// The request.
        req: ReqId,
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
    },
    /// Drop your ReadOnly copies of `count` pages from `first`, keeping their bytes aside as
    /// backups, and answer [`ToCoordinator::BackupAck`] (`kept`, or not for pages not held).
    InvBackup {
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
    },
    /// Discard your backups of `count` pages from `first` (the home copy caught up).
    DropBackup {
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
    },
    /// Send your backups of `count` pages from `first` as [`ToCoordinator::BackupData`], then
    /// discard them.
    RestoreBackup {
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
    },
    /// The process left the session; the connection can be closed.
    Detached,
    /// Answer to [`ToCoordinator::Ping`].
    Pong {
        /// The request.
        req: ReqId,
        /// The bytes sent.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// Answer to [`ToCoordinator::Status`].
    Status {
        /// The request.
        req: ReqId,
        /// The coordinator's sessions and counters.
        report: StatusReport,
    },
}

impl ToProcess {
    /// `(first, count)` of a message in run form (`DataRun`, `GrantRun`, `Denied`, the
    /// revocation runs, the forward and backup messages); `None` for every other message.
    pub fn run_span(&self) -> Option<(PageNo, u32)> {
        match self {
            ToProcess::DataRun { first, count, .. }
            | ToProcess::GrantRun { first, count, .. }
            | ToProcess::Denied { first, count, .. }
            | ToProcess::InvalidateRun { first, count }
            | ToProcess::DowngradeRun { first, count }
            | ToProcess::RecallRun { first, count }
            | ToProcess::Forward { first, count, .. }
            | ToProcess::ForwardNote { first, count, .. }
            | ToProcess::ForwardAbort { first, count, .. }
            | ToProcess::InvBackup { first, count }
            | ToProcess::DropBackup { first, count }
            | ToProcess::RestoreBackup { first, count } => Some((*first, *count)),
            _ => None,
        }
    }

    /// Bytes of page contents this message carries (0 for all-zero or no data).
    pub fn page_bytes(&self) -> usize {
        match self {
            ToProcess::Data { data: Some(d), .. } | ToProcess::DataRun { data: Some(d), .. } => d.len(),
            ToProcess::Grant { data: Some(GrantData::Bytes(d)), .. }
            | ToProcess::GrantRun { data: Some(GrantData::Bytes(d)), .. } => d.len(),
            _ => 0,
        }
    }
}

/// The same variants as [`ToProcess::page_bytes`], for [`crate::FrameQueue`] to take.
impl crate::frame::PageBytes for ToProcess {
    fn page_data_mut(&mut self) -> Option<&mut PageData> {
        match self {
            ToProcess::Data { data: Some(d), .. } | ToProcess::DataRun { data: Some(d), .. } => Some(d),
            ToProcess::Grant { data: Some(GrantData::Bytes(d)), .. }
            | ToProcess::GrantRun { data: Some(GrantData::Bytes(d)), .. } => Some(d),
            _ => None,
        }
    }
}

/// Messages between two processes of a session, on a peer connection (direct transfers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToPeer {
    /// The contents of `count` pages from `first`, answering the receiver's request `req`
    /// (which the coordinator forwarded to the sender).
    Pages {
        /// The receiver's request.
        req: ReqId,
        /// First page.
        first: PageNo,
        /// Pages.
        count: u32,
        /// Their contents, page after page.
        data: PageData,
    },
}

/// A [`ToPeer::Pages`]'s contents, for [`crate::FrameQueue`] to take.
impl crate::frame::PageBytes for ToPeer {
    fn page_data_mut(&mut self) -> Option<&mut PageData> {
        match self {
            ToPeer::Pages { data, .. } => Some(data),
        }
    }
}

/// The page contents carried by a [`ToProcess::Grant`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GrantData {
    /// The page is all zero.
    Zero,
    /// The page's bytes.
    Bytes(PageData),
}

/// Why an attach was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// The session exists with another region size.
    #[error("session '{session}' was declared with a region of {declared} bytes, but this process asked for {requested} bytes; every process of a session must use the same size")]
    SizeMismatch {
        /// Session name.
        session: String,
        /// Size the first process declared.
        declared: u64,
        /// Size this process asked for.
        requested: u64,
    },
    /// The session exists with another process count.
    #[error("session '{session}' was declared for {declared} processes, but this process asked for {requested}; every process of a session must use the same count")]
    NprocsMismatch {
        /// Session name.
        session: String,
        /// Count the first process declared.
        declared: u32,
        /// Count this process asked for.
        requested: u32,
    },
    /// The session already has all its processes and is running.
    #[error("session '{session}' is already running with all {nprocs} of its processes; wait for it to end or use another session name")]
    SessionFull {
        /// Session name.
        session: String,
        /// Its process count.
        nprocs: u32,
    },
    /// The session name breaks the naming rules.
    #[error("invalid session name: {0}")]
    BadName(NameError),
    /// The region size cannot be used.
    #[error("invalid region size: {0}")]
    BadSize(SizeError),
    /// The process count is 0 or above the limit.
    #[error("invalid process count {nprocs}: must be between 1 and {max}")]
    BadNprocs {
        /// Count asked for.
        nprocs: u32,
        /// The limit.
        max: u32,
    },
    /// The first message was not an attach.
    #[error("the first message on a connection must be an attach request")]
    NotAttached,
}

/// Why a barrier or semaphore operation failed after the session started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SessionFault {
    /// A process of the session disconnected or went silent without detaching; barriers can no
    /// longer complete and semaphore waits are released with this error.
    #[error("rank {rank} lost: it disconnected or went silent without detaching ({detail})")]
    RankLost {
        /// The lost process's rank.
        rank: Rank,
        /// What the coordinator saw.
        detail: String,
    },
    /// A process of the session already detached, so a barrier across all processes can never
    /// complete.
    #[error("rank {rank} has already detached, so no barrier across all processes can complete")]
    RankDetached {
        /// The detached process's rank.
        rank: Rank,
    },
    /// The semaphore name breaks the naming rules.
    #[error("invalid semaphore name: {0}")]
    BadName(NameError),
    /// The semaphore was created with another initial count by an earlier use.
    #[error("semaphore '{name}' was created with initial count {declared}, but this use asked for {requested}; every use of a name must ask for the same initial count")]
    SemaphoreInitialMismatch {
        /// Semaphore name.
        name: String,
        /// The count it was created with.
        declared: u32,
        /// The count this use asked for.
        requested: u32,
    },
    /// A process asked for something the protocol does not allow at this point.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Coherence mode of a page at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Mode {
    /// Single writer / many readers: a store needs exclusive ownership.
    #[default]
    Invalidate,
    /// Read-only everywhere; every store is replayed at the coordinator and broadcast.
    Update,
}

/// The policy a process asks for a range of pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Coherence {
    /// Always invalidate mode.
    Invalidate,
    /// Always update mode (stores the runtime cannot replay still fall back to ownership).
    Update,
    /// Switch by observed behaviour (the default).
    #[default]
    Adaptive,
}

/// An atomic read-modify-write executed at the coordinator (x86 `lock` semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RmwOp {
    /// `lock add`
    Add,
    /// `lock sub`
    Sub,
    /// `lock and`
    And,
    /// `lock or`
    Or,
    /// `lock xor`
    Xor,
    /// `lock inc`
    Inc,
    /// `lock dec`
    Dec,
    /// `lock neg`
    Neg,
    /// `lock not`
    Not,
    /// `lock xadd`
    Xadd,
    /// `xchg` with memory (implicitly locked)
    Xchg,
    /// `lock cmpxchg`
    CmpXchg,
}

impl RmwOp {
    /// The new memory value for `old`, and whether memory is written (false only for a
    /// failed `CmpXchg`). Values are truncated to `width` bytes.
    pub fn execute(self, width: u8, old: u64, operand: u64, expected: u64) -> (u64, bool) {
        let mask = if width >= 8 { u64::MAX } else { (1u64 << (u32::from(width) * 8)) - 1 };
        let (old, operand, expected) = (old & mask, operand & mask, expected & mask);
        let new = match self {
            RmwOp::Add | RmwOp::Xadd => old.wrapping_add(operand),
            RmwOp::Sub => old.wrapping_sub(operand),
            RmwOp::And => old & operand,
            RmwOp::Or => old | operand,
            RmwOp::Xor => old ^ operand,
            RmwOp::Inc => old.wrapping_add(1),
            RmwOp::Dec => old.wrapping_sub(1),
            RmwOp::Neg => 0u64.wrapping_sub(old),
            RmwOp::Not => !old,
            RmwOp::Xchg => operand,
            RmwOp::CmpXchg => {
                if old == expected {
                    operand
                } else {
                    return (old, false);
                }
            }
        };
        (new & mask, true)
    }
}
