//! The runtime's error type: one enum with actionable messages.

use std::time::Duration;

use dsm_proto::{HelloError, NameError, Refusal, SessionFault};

/// Everything that can go wrong for a DSM process.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is incomplete or invalid.
    #[error("invalid DSM configuration: {0}")]
    Config(String),
    /// The TLS certificates could not be loaded.
    #[error("{0}")]
    Certificates(String),
    /// No coordinator answered.
    #[error("cannot reach the coordinator at {addr}: {detail} (is dsm-coordinator running there? check DSM_COORDINATOR)")]
    Unreachable {
        /// Address tried.
        addr: String,
        /// What happened.
        detail: String,
    },
    /// The coordinator refused this process's certificate.
    #[error("the coordinator at {addr} refused this process's TLS certificate ({detail}); the client certificate must be signed by the coordinator's CA (check DSM_CERT_DIR)")]
    CertificateRejected {
        /// Address of the coordinator.
        addr: String,
        /// The TLS alert or reason.
        detail: String,
    },
    /// The TLS handshake failed for another reason (for example the coordinator's certificate is
    /// not signed by our CA, or does not name the address we connected to).
    #[error("TLS handshake with the coordinator at {addr} failed: {detail}")]
    Tls {
        /// Address of the coordinator.
        addr: String,
        /// What failed.
        detail: String,
    },
    /// The coordinator speaks another protocol version.
    #[error("{0}")]
    Version(#[from] HelloError),
    /// The coordinator refused the attach.
    #[error("attach refused: {0}")]
    Refused(#[from] Refusal),
    /// Not every process attached in time.
    #[error("timed out after {waited:?} waiting for session '{session}' to start: {joined} of {nprocs} processes attached (start the others, or raise the attach timeout with DSM_ATTACH_TIMEOUT)")]
    AttachTimeout {
        /// The session.
        session: String,
        /// How long we waited.
        waited: Duration,
        /// Processes attached when we gave up.
        joined: u32,
        /// Processes the session needs.
        nprocs: u32,
    },
    /// A barrier or semaphore operation failed (a process was lost, a bad name, ...).
    #[error("{0}")]
    Session(#[from] SessionFault),
    /// A semaphore or session name breaks the rules.
    #[error("{0}")]
    Name(#[from] NameError),
    /// The coordinator shut down.
    #[error("the coordinator shut down")]
    CoordinatorShutdown,
    /// The connection to the coordinator was lost.
    #[error("lost the connection to the coordinator: {0}")]
    ConnectionLost(String),
    /// The coordinator sent something this runtime does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The session was already detached.
    #[error("the session is detached")]
    Detached,
    /// A local system resource failed.
    #[error("{context}: {detail}")]
    Os {
        /// What we were doing.
        context: String,
        /// The OS error.
        detail: String,
    },
}

impl Error {
    pub(crate) fn os(context: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Error::Os { context: context.into(), detail: e.to_string() }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
