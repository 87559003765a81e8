//! Mapping quinn's connection, read and write errors to actionable [`Error`]s: TLS alerts the
//! coordinator sends when it refuses our certificate, its shutdown and close codes, silence past
//! the idle timeout.

use dsm_proto::close_code;

use crate::error::Error;

/// Maps a quinn connection error to an actionable [`Error`].
pub(super) fn connection_error(addr: &str, e: &quinn::ConnectionError) -> Error {
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

pub(super) fn read_error(addr: &str, e: quinn::ReadError) -> Error {
    match e {
        quinn::ReadError::ConnectionLost(c) => connection_error(addr, &c),
        other => Error::ConnectionLost(other.to_string()),
    }
}

pub(super) fn write_error(addr: &str, e: quinn::WriteError) -> Error {
    match e {
        quinn::WriteError::ConnectionLost(c) => connection_error(addr, &c),
        other => Error::ConnectionLost(other.to_string()),
    }
}

