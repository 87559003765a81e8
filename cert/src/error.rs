//! The crate's single error type, [`Error`].
//!
//! Every message names the file (or directory) involved, says what is wrong
//! with it and what to do about it, so that it can be shown to a user as is.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while creating or loading TLS material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A certificate or key file does not exist.
    #[error(
        "{what} file {} is missing; create certificates with `dsm certs --dir {}`",
        .path.display(),
        parent(.path).display()
    )]
    Missing {
        /// What the file should hold, e.g. "CA certificate".
        what: &'static str,
        /// The file that was looked for.
        path: PathBuf,
    },

    /// A certificate or key file exists but could not be read.
    #[error(
        "{what} file {} cannot be read: {source}; check that it is a readable file",
        .path.display()
    )]
    Unreadable {
        /// What the file should hold, e.g. "CA certificate".
        what: &'static str,
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A file was read but does not hold what it should (no PEM block of the
    /// right kind, broken PEM, or a certificate/key that cannot be parsed).
    #[error(
        "{what} file {} is not valid: {reason}; replace it, or start over with `dsm certs --new-ca --force --dir {}`",
        .path.display(),
        parent(.path).display()
    )]
    Invalid {
        /// What the file should hold, e.g. "coordinator certificate".
        what: &'static str,
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A certificate and a private key that are used together do not belong
    /// to each other.
    #[error(
        "private key {} does not belong to certificate {}; put the matching key next to the certificate, or start over with `dsm certs --new-ca --force --dir {}`",
        .key.display(),
        .cert.display(),
        parent(.cert).display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The private key file that does not match it.
        key: PathBuf,
    },

    /// A certificate is not signed by the CA it is supposed to chain to, so
    /// the other side would refuse it.
    #[error(
        "certificate {} is not signed by the CA in {}; use certificates issued by that CA, or start over with `dsm certs --new-ca --force --dir {}`",
        .cert.display(),
        .ca.display(),
        parent(.ca).display()
    )]
    NotSignedByCa {
        /// The certificate that does not chain to the CA.
        cert: PathBuf,
        /// The CA certificate file.
        ca: PathBuf,
    },

    /// The CA certificate was not created by this crate, so new certificates
    /// cannot be issued with it.
    #[error(
        "CA certificate {} was not created by dsm-cert (a certificate issued with it would not verify), so it cannot issue client certificates; issue them with the tool that created this CA, or start over with `dsm certs --new-ca --force --dir {}`",
        .ca.display(),
        parent(.ca).display()
    )]
    ForeignCa {
        /// The CA certificate file.
        ca: PathBuf,
    },

    /// Some, but not all, of the six dev certificate files exist.
    #[error(
        "certificate directory {} is incomplete: {} missing; create the missing ones with `dsm certs --dir {}` (needs ca.key), or start over with `dsm certs --new-ca --force --dir {}` (this replaces the remaining files)",
        .dir.display(),
        list(.missing),
        .dir.display(),
        .dir.display()
    )]
    Incomplete {
        /// The certificate directory.
        dir: PathBuf,
        /// The files that are missing.
        missing: Vec<PathBuf>,
    },

    /// A subject alternative name given for the coordinator certificate is
    /// neither an IP address nor a valid DNS name.
    #[error("subject alternative name {san:?} is not valid: {reason}; pass an IP address or a DNS name such as `coordinator.local`")]
    InvalidSan {
        /// The rejected name.
        san: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A client name cannot be used as a certificate name and file name.
    #[error("client name {name:?} is not valid: {reason}; use letters, digits, '-', '_' and '.'")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A file `dsm certs` would write exists, and replacing was not allowed.
    #[error(
        "{} exists and nothing was written: add --force to replace it (issued again from the same CA), or --new-ca --force to start over with a new CA",
        .path.display()
    )]
    Exists {
        /// The existing file.
        path: PathBuf,
    },

    /// Certificates must be issued, but the directory lacks the CA's private key.
    #[error(
        "cannot issue certificates in {}: its CA private key (ca.key) is not there (a machine's copy holds only ca.pem and its own certificate); run dsm certs on the machine that holds ca.key, or start over with --new-ca",
        .dir.display()
    )]
    NoCaKey {
        /// The certificate directory.
        dir: PathBuf,
    },

    /// A file or directory could not be written.
    #[error(
        "cannot write {}: {source}; check that the directory exists and is writable",
        .path.display()
    )]
    Write {
        /// The file or directory that could not be written.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// rcgen failed to generate a key or certificate.
    #[error("generating TLS material failed: {0}")]
    Generate(#[from] rcgen::Error),

    /// rustls rejected the configuration for a reason not covered above.
    #[error("TLS configuration error: {0}")]
    Tls(#[from] rustls::Error),

    /// The certificate verifier could not be built.
    #[error("cannot build certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),

    /// The rustls configuration cannot be used for QUIC (it lacks a TLS 1.3
    /// cipher suite usable for QUIC initial packets).
    #[error("TLS configuration cannot be used for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn list(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let verb = if names.len() == 1 { "is" } else { "are" };
    // The caller's format string reads "... incomplete: X missing", so add the verb.
    format!("{} {verb}", names.join(", "))
}

/// A short description of the TLS alert a peer sent when it refused a handshake (QUIC reports
/// them as crypto error `0x100 + alert`), for the alerts a certificate problem produces; `None`
/// for others.
pub fn tls_alert_name(alert: u64) -> Option<&'static str> {
    Some(match alert {
        42 => "bad certificate",
        // What a certificate signed by another CA of the same name yields.
        51 => "decrypt error: signed by another CA",
        43 => "unsupported certificate",
        44 => "certificate revoked",
        45 => "certificate expired",
        46 => "certificate unknown",
        48 => "unknown CA",
        49 => "access denied",
        116 => "certificate required",
        _ => return None,
    })
}
