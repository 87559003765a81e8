//! Connecting: resolve the coordinator's address, the QUIC handshake with mutual TLS, the
//! versioned hello, then the attach and the wait for the session to start. With direct
//! transfers on (`Config::direct`), the endpoint also serves peer connections from before the
//! attach ([`PeerSetup`]), the attach carries this process's peer fingerprint, and once the
//! session starts with the members' addresses the driver gets its [`PeerLinks`].

use std::net::SocketAddr;
use std::time::Instant;

use dsm_proto::{close_code, AttachRequest, Hello, ToCoordinator, ToProcess, HELLO_LEN};
use tracing::{debug, warn};

use super::driver::Driver;
use super::errors::{connection_error, read_error, write_error};
use super::peers::{PeerLinks, PeerSetup};
use super::AttachInfo;
use crate::config::{host_of, Config};
use crate::error::{Error, Result};

/// Longest wait for a peer connection: a forward to a member that its address does not reach
/// holds its page this long before it goes through the coordinator (once per member, see
/// `peers.rs`). Members are as near as the coordinator; a handshake takes a few round trips.
const PEER_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

async fn resolve(addr: &str) -> Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host(addr).await.map_err(|e| Error::Unreachable {
        addr: addr.into(),
        detail: format!("cannot resolve the address: {e}"),
    })?;
    addrs.next().ok_or_else(|| Error::Unreachable {
        addr: addr.into(),
        detail: "the name resolves to no address".into(),
    })
}

/// Connects, exchanges hellos, attaches, and waits for the session to start.
pub(super) async fn connect(config: &Config) -> Result<(Driver, AttachInfo)> {
    let addr_text = config.coordinator.clone();
    let addr = resolve(&addr_text).await?;
    let tls = match &config.client_cert {
        None => dsm_cert::client_tls_config(&config.cert_dir),
        Some((cert, key)) => dsm_cert::client_tls_config_from(
            &config.cert_dir.join(dsm_cert::CA_CERT),
            Some((cert.as_path(), key.as_path())),
        ),
    }
    .map_err(|e| Error::Certificates(e.to_string()))?;
    let client_config = dsm_cert::quic_client_config(tls, &config.transport, addr.ip())
        .map_err(|e| Error::Certificates(e.to_string()))?;
    let bind: SocketAddr =
        if addr.is_ipv6() { "[::]:0".parse().expect("literal") } else { "0.0.0.0:0".parse().expect("literal") };
    let mut endpoint = dsm_cert::endpoint(bind, None).map_err(|e| Error::os("binding a UDP socket", e))?;
    endpoint.set_default_client_config(client_config);
    let server_name = config.server_name.clone().unwrap_or_else(|| host_of(&addr_text).to_string());
    let connecting = endpoint.connect(addr, &server_name).map_err(|e| Error::Unreachable {
        addr: addr_text.clone(),
        detail: e.to_string(),
    })?;
    let conn = match tokio::time::timeout(config.connect_timeout, connecting).await {
        Err(_) => {
            return Err(Error::Unreachable {
                addr: addr_text,
                detail: format!("no answer within {:?}", config.connect_timeout),
            })
        }
        Ok(Err(quinn::ConnectionError::TimedOut)) => {
            return Err(Error::Unreachable { addr: addr_text, detail: "no answer (timed out)".into() })
        }
        Ok(Err(e)) => return Err(connection_error(&addr_text, &e)),
        Ok(Ok(c)) => c,
    };
    let hello = async {
        let (mut send, mut recv) =
            conn.open_bi().await.map_err(|e| connection_error(&addr_text, &e))?;
        send.write_all(&Hello { version: config.hello_version }.encode())
            .await
            .map_err(|e| write_error(&addr_text, e))?;
        let mut theirs = [0u8; HELLO_LEN];
        recv.read_exact(&mut theirs).await.map_err(|e| match e {
            quinn::ReadExactError::ReadError(e) => read_error(&addr_text, e),
            quinn::ReadExactError::FinishedEarly(_) => {
                Error::Protocol("the coordinator closed the stream during the hello".into())
            }
        })?;
        let theirs = Hello::decode(theirs)?;
        if theirs.version != config.hello_version {
            conn.close(close_code::VERSION_MISMATCH.into(), b"protocol version mismatch");
            return Err(Error::Version(dsm_proto::HelloError::VersionMismatch {
                ours: config.hello_version,
                theirs: theirs.version,
            }));
        }
        Ok((send, recv))
    };
    // Peers reach this process at the address the coordinator sees its connection come from:
    // this endpoint's. It serves them from before the attach (quinn holds their connections
    // until the session starts and the links accept them).
    let peer_setup = if config.direct {
        match PeerSetup::new(&config.transport, config.connect_timeout.min(PEER_CONNECT_TIMEOUT)) {
            Ok(setup) => {
                setup.serve(&endpoint);
                Some(setup)
            }
            Err(e) => {
                warn!("no direct transfers for this process: {e}");
                None
            }
        }
    } else {
        None
    };
    let peer_endpoint = endpoint.clone();
    let (send, recv) = match tokio::time::timeout(config.connect_timeout, hello).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(Error::Unreachable {
                addr: addr_text,
                detail: "the coordinator accepted the connection but sent no hello".into(),
            })
        }
    };
    let mut driver = Driver::new(addr_text, endpoint, conn, send, recv, config.transport.busy_poll);
    let label = format!(
        "pid {} ({})",
        std::process::id(),
        std::env::args().next().unwrap_or_default()
    );
    driver
        .send(ToCoordinator::Attach(AttachRequest {
            session: config.session.clone(),
            size: config.size,
            nprocs: config.nprocs,
            label,
            peer: peer_setup.as_ref().map(PeerSetup::fingerprint),
        }))
        .await?;
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + config.attach_timeout;
    let mut joined = 0;
    loop {
        let msg = match tokio::time::timeout_at(deadline, driver.next_message()).await {
            Ok(m) => m?,
            Err(_) => {
                driver.close(close_code::OK, b"attach timed out");
                return Err(Error::AttachTimeout {
                    session: config.session.clone(),
                    waited: start.elapsed(),
                    joined,
                    nprocs: config.nprocs,
                });
            }
        };
        match msg {
            ToProcess::Joined { joined: j, nprocs } => {
                joined = j;
                debug!("session '{}': {j} of {nprocs} processes attached", config.session);
            }
            ToProcess::Attached { rank, nprocs, size, peers } => {
                debug!(
                    direct = !peers.is_empty(),
                    "attached session '{}' as rank {rank} of {nprocs}", config.session
                );
                match peer_setup {
                    Some(setup) if !peers.is_empty() => {
                        driver.serve_peers(PeerLinks::new(setup, peer_endpoint, rank, &peers));
                    }
                    // The session does not forward: serve nobody.
                    Some(_) => peer_endpoint.set_server_config(None),
                    None => {}
                }
                return Ok((driver, AttachInfo { rank, nprocs, size, peers }));
            }
            ToProcess::Refused(r) => {
                driver.close(close_code::OK, b"refused");
                return Err(Error::Refused(r));
            }
            other => {
                return Err(Error::Protocol(format!("unexpected message while attaching: {other:?}")))
            }
        }
    }
}

