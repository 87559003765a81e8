//! Every message exchanged between a process and the coordinator.
//!
//! After the [`crate::handshake`], a connection carries exactly one bidirectional QUIC stream,
//! and every message in either direction travels on it as a [`crate::frame`]. One ordered stream
//! per direction is a protocol rule, not a convenience: the coherence protocol needs FIFO
//! delivery both ways (DESIGN.md, ordering rule 2).

use serde::{Deserialize, Serialize};

use crate::{NameError, SizeError};

/// A process's rank within its session, `0..nprocs`.
pub type Rank = u32;

/// A page number within the region (byte offset / [`crate::PAGE_SIZE`]).
pub type PageNo = u64;

/// Correlates a request with its reply. Chosen by the process, unique per connection.
pub type ReqId = u64;

/// The contents of one page. `None` in a message means "all zero": pages nobody wrote
/// cost no transfer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageData(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl std::fmt::Debug for PageData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageData({} bytes)", self.0.len())
    }
}

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
        /// Semaphore name, created at 0 on first use.
        name: String,
    },
    /// Increment semaphore `name`, waking its oldest waiter. Answered by
    /// [`ToProcess::SemaphorePosted`] or [`ToProcess::Failed`].
    SemaphorePost {
        /// Request id echoed in the reply.
        req: ReqId,
        /// Semaphore name.
        name: String,
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
    /// Echo `payload` back (used to measure the round trip through the coordinator).
    Ping {
        /// Request id echoed in the reply.
        req: ReqId,
        /// Arbitrary bytes, echoed.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
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
    /// A process asked for something the protocol does not allow at this point.
    #[error("protocol violation: {0}")]
    Protocol(String),
}
