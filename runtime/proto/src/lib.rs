//! The DSM wire protocol and the sans-IO protocol cores.
//!
//! This crate performs no I/O: no sockets, no clocks, no system calls. It holds
//! - [`wire`]: every message exchanged between a process and the coordinator;
//! - [`frame`]: the length-prefixed frame codec (hard size cap, never panics on bad input);
//! - [`handshake`]: the versioned hello that opens every connection;
//! - [`directory`]: the coordinator's page directory (INVALIDATE coherence protocol);
//! - [`pages`]: the process side of the same protocol;
//! - [`fault_track`]: the life cycle of faults on the process side (holds, replays, failure);
//! - [`replay_slot`]: the hand-over protocol between the runtime thread and the signal handler
//!   of a replayed store.
//! - [`status`]: the coordinator's status report (`dsm status`).
//!
//! Both the runtime (`dsm`) and the coordinator depend on it, so the two sides can never
//! disagree about the format.

pub mod buffers;
pub mod directory;
pub mod fault_track;
pub mod frame;
pub mod handshake;
mod page_data;
pub mod pages;
pub mod replay_slot;
pub mod runs;
pub mod status;
pub mod units;
pub mod wire;

pub use directory::{DirectoryError, DirectoryStats, PageDirectory, PageView};
pub use frame::{decode_frame, encode_frame, FrameError, FrameQueue, FrameReader, PageBytes, MAX_FRAME_LEN};
pub use handshake::{Hello, HelloError, HELLO_LEN, MAGIC, PROTOCOL_VERSION};
pub use pages::{Access, PageMemory, PageState, PageStats, PagesError, ProcessPages};
pub use status::{LostRank, MemberState, MemberStatus, PageTraffic, SessionState, SessionStatus, StatusReport};
pub use wire::*;

/// Size of one coherence unit (an x86-64 base page).
pub const PAGE_SIZE: usize = 4096;

/// Longest accepted semaphore name, in bytes of UTF-8.
pub const MAX_SEMAPHORE_NAME: usize = 64;

/// Longest accepted session name, in bytes of UTF-8.
pub const MAX_SESSION_NAME: usize = 128;

/// Largest region a session may declare (64 TiB): far beyond any real use, small enough that
/// page numbers and offsets never overflow.
pub const MAX_REGION_SIZE: u64 = 1 << 46;

/// Largest number of processes in one session.
pub const MAX_PROCESSES: u32 = 1024;

/// QUIC application close codes used by both sides.
pub mod close_code {
    /// Normal close.
    pub const OK: u32 = 0;
    /// The peer's hello had the wrong magic or version.
    pub const VERSION_MISMATCH: u32 = 1;
    /// A malformed or oversized frame.
    pub const PROTOCOL_ERROR: u32 = 2;
    /// The coordinator is shutting down.
    pub const SHUTDOWN: u32 = 3;
    /// The attach was refused.
    pub const REFUSED: u32 = 4;
}

/// ALPN protocol name both sides require during the TLS handshake.
pub const ALPN: &[u8] = b"dsm";

/// Checks a semaphore name against the documented rules: non-empty, at most
/// [`MAX_SEMAPHORE_NAME`] bytes. Names are never truncated.
pub fn check_semaphore_name(name: &str) -> Result<(), NameError> {
    check_name(name, MAX_SEMAPHORE_NAME, NameKind::Semaphore)
}

/// Checks a session name: non-empty, at most [`MAX_SESSION_NAME`] bytes, no control characters.
pub fn check_session_name(name: &str) -> Result<(), NameError> {
    check_name(name, MAX_SESSION_NAME, NameKind::Session)
}

fn check_name(name: &str, max: usize, kind: NameKind) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > max {
        return Err(NameError::TooLong { kind, len: name.len(), max });
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter { kind });
    }
    Ok(())
}

/// Checks a region size: a non-zero multiple of [`PAGE_SIZE`], at most [`MAX_REGION_SIZE`].
pub fn check_region_size(size: u64) -> Result<(), SizeError> {
    if size == 0 {
        return Err(SizeError::Zero);
    }
    if !size.is_multiple_of(PAGE_SIZE as u64) {
        return Err(SizeError::NotPageMultiple { size });
    }
    if size > MAX_REGION_SIZE {
        return Err(SizeError::TooLarge { size, max: MAX_REGION_SIZE });
    }
    Ok(())
}

/// Rounds a byte count up to whole pages.
pub fn round_up_to_pages(size: u64) -> u64 {
    size.div_ceil(PAGE_SIZE as u64).saturating_mul(PAGE_SIZE as u64)
}

/// Which kind of name failed a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NameKind {
    /// A session name.
    Session,
    /// A semaphore name.
    Semaphore,
}

impl std::fmt::Display for NameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameKind::Session => "session",
            NameKind::Semaphore => "semaphore",
        })
    }
}

/// A session or semaphore name that breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("{kind} name is empty")]
    Empty {
        /// Session or semaphore.
        kind: NameKind,
    },
    /// The name is longer than allowed; it is not truncated.
    #[error("{kind} name is {len} bytes long; the limit is {max} bytes (names are never truncated)")]
    TooLong {
        /// Session or semaphore.
        kind: NameKind,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name contains a control character.
    #[error("{kind} name contains a control character")]
    ControlCharacter {
        /// Session or semaphore.
        kind: NameKind,
    },
}

/// A region size that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum SizeError {
    /// Size zero.
    #[error("region size is zero")]
    Zero,
    /// Not a multiple of the page size (the runtime rounds up before sending).
    #[error("region size {size} is not a multiple of the page size (4096)")]
    NotPageMultiple {
        /// The size given.
        size: u64,
    },
    /// Larger than [`MAX_REGION_SIZE`].
    #[error("region size {size} exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The size given.
        size: u64,
        /// The limit.
        max: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_not_truncated() {
        assert!(check_semaphore_name("s").is_ok());
        assert!(check_semaphore_name(&"a".repeat(MAX_SEMAPHORE_NAME)).is_ok());
        let err = check_semaphore_name(&"a".repeat(MAX_SEMAPHORE_NAME + 1)).unwrap_err();
        assert_eq!(err, NameError::TooLong { kind: NameKind::Semaphore, len: 65, max: 64 });
        assert!(check_semaphore_name("").is_err());
        assert!(check_session_name("a\nb").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(round_up_to_pages(1), 4096);
        assert_eq!(round_up_to_pages(4096), 4096);
        assert_eq!(round_up_to_pages(0), 0);
        assert!(check_region_size(4096).is_ok());
        assert_eq!(check_region_size(100), Err(SizeError::NotPageMultiple { size: 100 }));
        assert!(check_region_size(MAX_REGION_SIZE + 4096).is_err());
        assert_eq!(check_region_size(0), Err(SizeError::Zero));
    }
}
