//! What the directory reports: its traffic counters ([`DirectoryStats`]), the messages it
//! refuses ([`DirectoryError`]) and a view of one page's entry ([`PageView`]).

use crate::wire::{Mode, PageNo, Rank};

/// Counters of the coherence traffic of one session.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryStats {
    /// `Fetch` requests received.
    pub fetches: u64,
    /// `Grant` messages sent.
    pub ownership_grants: u64,
    /// `Invalidate` messages sent.
    pub invalidations: u64,
    /// `Downgrade` messages sent.
    pub downgrades: u64,
    /// `Recall` messages sent.
    pub recalls: u64,
    /// `Data`/`Grant` messages that carried page bytes (zero pages travel as "zero").
    pub pages_sent: u64,
    /// Page bytes carried by `Data`/`Grant` messages.
    pub bytes_sent: u64,
    /// `Writeback` messages accepted (from the page's owner).
    pub writebacks: u64,
    /// Replayed stores and RMWs applied (update mode).
    pub replayed_writes: u64,
    /// `Update` messages broadcast.
    pub updates: u64,
    /// Replayed writes answered `Retry`.
    pub retries: u64,
    /// Switches to update mode.
    pub to_update: u64,
    /// Switches to invalidate mode.
    pub to_invalidate: u64,
    /// Write-ahead pages granted (nobody held them).
    pub ahead_granted: u64,
    /// Write-ahead pages denied (someone held them, or they were busy or in update mode).
    pub ahead_denied: u64,
    /// Ordinary ownership requests on update-mode pages answered with a read-only copy in
    /// update mode (the process then replays its store) instead of switching the page back.
    pub owns_kept_in_update: u64,
    /// Pages sent directly from a process to the requester (`Forward`).
    pub forwards: u64,
    /// Direct transfers aborted (the source wrote back, was lost or could not send).
    pub forward_aborts: u64,
    /// Stale pages whose contents a reader sent home before an ownership request or a switch.
    pub flushes: u64,
    /// Readers told to keep their copy aside as a backup (`InvBackup`: an upgrade of a stale
    /// page without a flush).
    pub backup_invalidations: u64,
    /// Backups discarded (`DropBackup`: the home caught up).
    pub backups_released: u64,
    /// Backups asked for (`RestoreBackup`: the newer bytes' holders were lost).
    pub restores: u64,
    /// Backups that became the home copy (`BackupData`, or `BackupHome` from a detach).
    pub backups_home: u64,
}

/// A message the directory cannot accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DirectoryError {
    /// The page number is beyond the region.
    #[error("page {page} is outside the region of {pages} pages")]
    OutOfRange {
        /// The page asked for.
        page: PageNo,
        /// Pages in the region.
        pages: u64,
    },
    /// Not a page message, or from an unknown rank.
    #[error("{0}")]
    Unexpected(String),
    /// Page contents of the wrong size.
    #[error("page {page} came with {len} bytes instead of {expected}")]
    BadPageLength {
        /// The page.
        page: PageNo,
        /// Bytes received.
        len: usize,
        /// [`crate::PAGE_SIZE`].
        expected: usize,
    },
    /// A second fetch or ownership request for a page while one is still waiting.
    #[error("rank {rank} asked for page {page} again while its earlier request is still waiting")]
    DuplicateRequest {
        /// The requester.
        rank: Rank,
        /// The page.
        page: PageNo,
    },
    /// More requests waiting than [`MAX_PENDING_PER_RANK`](super::MAX_PENDING_PER_RANK).
    #[error("rank {rank} has more than {max} requests waiting")]
    TooManyRequests {
        /// The requester.
        rank: Rank,
        /// The limit.
        max: u32,
    },
    /// An advice range outside the region, or more ranges than [`MAX_ADVICE`](super::MAX_ADVICE).
    #[error("bad coherence advice: {0}")]
    BadAdvice(String),
    /// A run of pages with a bad count or data length.
    #[error("bad run: {0}")]
    BadRun(String),
}

/// A read-only view of one page's directory entry (for tests, logs and debugging).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PageView {
    /// The process holding the Writable copy.
    pub owner: Option<Rank>,
    /// The processes holding a ReadOnly copy, ascending.
    pub readers: Vec<Rank>,
    /// The home copy (`None`: all zero).
    pub home: Option<Vec<u8>>,
    /// A Fetch/Own transaction is in flight.
    pub busy: bool,
    /// Requests waiting behind it.
    pub queued: usize,
    /// The page's coherence mode.
    pub mode: Mode,
    /// The home copy is not current: the readers hold the current contents.
    pub stale: bool,
    /// The processes keeping a backup of the page, ascending.
    pub backups: Vec<Rank>,
}
