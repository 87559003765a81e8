//! Dev TLS material and rustls/quinn configuration for DSM's mutual-TLS QUIC
//! connections between the coordinator and its clients.
//!
//! * [`generate`] / [`ensure`] create a development CA plus a coordinator and
//!   a client certificate signed by it, as PEM files in a directory
//!   ([`default_dir`] by default). [`issue_client`] issues more client
//!   certificates from that CA. [`make_certs`] is `dsm certs`: it sets up or extends a
//!   directory for several machines and reports what to copy where.
//! * [`server_tls_config`] / [`client_tls_config`] load those files into
//!   rustls configurations that require TLS 1.3, ALPN `dsm`, and a client
//!   certificate that chains to the CA.
//! * [`quic_server_config`] / [`quic_client_config`] wrap them for quinn
//!   together with the shared [`Transport`] tuning; [`endpoint`] binds the UDP socket under
//!   them with kernel buffers sized for bulk traffic.
//!
//! * [`PeerIdentity`], [`peer_server_config`] / [`peer_client_config`]: connections between
//!   the processes of a session, authenticated by ephemeral certificates whose fingerprints the
//!   coordinator hands out (not used by the runtime yet: the groundwork of direct transfers).
//!
//! All errors are [`Error`] values whose messages name the file at fault.

mod busy_poll;
mod error;
mod gen;
mod gso;
mod load;
mod peer;
mod setup;
mod socket;
mod transport;
pub mod congestion;

use std::ffi::OsString;
use std::path::PathBuf;

pub use busy_poll::{BusyPoll, DEFAULT_BUDGET as BUSY_POLL_BUDGET};
pub use error::{tls_alert_name, Error};
pub use gen::{ensure, generate, issue_client, self_signed_client, DEFAULT_SANS};
pub use load::{client_tls_config, client_tls_config_from, server_tls_config, ALPN};
pub use peer::{
    peer_client_config, peer_fingerprint, peer_server_config, Fingerprint, PeerIdentity, PeerSet, PEER_ALPN,
    PEER_SERVER_NAME,
};
pub use socket::{endpoint, udp_socket, SOCKET_BUFFER};
pub use setup::{make_certs, CertsReport, CertsRequest, Written, CLIENTS_DIR};
pub use transport::{
    is_loopback, quic_client_config, quic_server_config, Congestion, Transport, TransportError, MAX_ACK_DELAY,
    MAX_UDP_PAYLOAD, MIN_IDLE_PER_KEEP_ALIVE, RECEIVE_WINDOW, REORDERING_THRESHOLD, SEND_WINDOW,
    STREAM_RECEIVE_WINDOW,
};

/// File name of the CA certificate.
pub const CA_CERT: &str = "ca.pem";
/// File name of the CA private key.
pub const CA_KEY: &str = "ca.key";
/// File name of the coordinator (server) certificate.
pub const COORDINATOR_CERT: &str = "coordinator.pem";
/// File name of the coordinator (server) private key.
pub const COORDINATOR_KEY: &str = "coordinator.key";
/// File name of the client certificate.
pub const CLIENT_CERT: &str = "client.pem";
/// File name of the client private key.
pub const CLIENT_KEY: &str = "client.key";

/// The six files of a full dev set, in the order [`generate`] writes them.
pub const ALL_FILES: [&str; 6] = [
    CA_CERT,
    CA_KEY,
    COORDINATOR_CERT,
    COORDINATOR_KEY,
    CLIENT_CERT,
    CLIENT_KEY,
];

/// The documented default certificate directory:
/// `$DSM_CERT_DIR` if set and non-empty, else `$XDG_CONFIG_HOME/dsm/certs`,
/// else `$HOME/.config/dsm/certs`, else `./.dsm/certs`.
///
/// Empty variables count as unset.
#[must_use]
pub fn default_dir() -> PathBuf {
    default_dir_with(|name| std::env::var_os(name))
}

fn default_dir_with(var: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let get = |name: &str| var(name).filter(|v| !v.is_empty());
    if let Some(dir) = get("DSM_CERT_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = get("XDG_CONFIG_HOME") {
        return PathBuf::from(xdg).join("dsm").join("certs");
    }
    if let Some(home) = get("HOME") {
        return PathBuf::from(home)
            .join(".config")
            .join("dsm")
            .join("certs");
    }
    PathBuf::from(".dsm").join("certs")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn dir(vars: &[(&str, &str)]) -> PathBuf {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        default_dir_with(|name| map.get(name).cloned())
    }

    #[test]
    fn default_dir_precedence() {
        let all = [
            ("DSM_CERT_DIR", "/d"),
            ("XDG_CONFIG_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(dir(&all), PathBuf::from("/d"));
        assert_eq!(dir(&all[1..]), PathBuf::from("/x/dsm/certs"));
        assert_eq!(dir(&all[2..]), PathBuf::from("/h/.config/dsm/certs"));
        assert_eq!(dir(&[]), PathBuf::from(".dsm/certs"));
        // Empty values count as unset.
        assert_eq!(
            dir(&[
                ("DSM_CERT_DIR", ""),
                ("XDG_CONFIG_HOME", ""),
                ("HOME", "/h")
            ]),
            PathBuf::from("/h/.config/dsm/certs")
        );
        assert_eq!(dir(&[("HOME", "")]), PathBuf::from(".dsm/certs"));
    }

    #[test]
    fn default_dir_reads_environment() {
        // Only checks that the real environment is consulted without panicking.
        assert!(!default_dir().as_os_str().is_empty());
    }
}
