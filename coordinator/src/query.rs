//! The client side of `dsm status`: a [`StatusClient`] connects to a coordinator over the same
//! mutual-TLS QUIC connection processes use (a CA-signed client certificate is required),
//! exchanges hellos, and asks for [`StatusReport`]s without joining any session.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use dsm_proto::{decode_frame, encode_frame, close_code, Hello, StatusReport, ToCoordinator, ToProcess, HELLO_LEN};

/// Why a coordinator could not be asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// This machine's certificates could not be loaded.
    #[error(transparent)]
    Certificates(#[from] dsm_cert::Error),
    /// The address does not resolve.
    #[error("cannot resolve coordinator address {addr}: {detail}")]
    Resolve {
        /// The address given.
        addr: String,
        /// Why.
        detail: String,
    },
    /// Nothing answered.
    #[error("cannot reach the coordinator at {addr}: {detail}; check that dsm-coordinator runs there (`--listen`) and that UDP port {port} is open between the machines")]
    Unreachable {
        /// The address given.
        addr: String,
        /// The UDP port (for the firewall hint).
        port: u16,
        /// What happened.
        detail: String,
    },
    /// The TLS handshake failed: a certificate was refused on one side.
    #[error("the coordinator at {addr} and this machine do not trust each other ({detail}); use certificates from the coordinator's CA (`dsm certs --client NAME` on the machine holding ca.key), and connect by a name or address in the coordinator's certificate (`dsm certs --san`)")]
    Tls {
        /// The address given.
        addr: String,
        /// The TLS error or alert.
        detail: String,
    },
    /// The coordinator speaks another protocol version or answered nonsense.
    #[error("the coordinator at {addr} answered unexpectedly: {detail}")]
    Protocol {
        /// The address given.
        addr: String,
        /// What was wrong.
        detail: String,
    },
    /// The connection ended before the answer arrived.
    #[error("the connection to the coordinator at {addr} ended: {detail}")]
    Closed {
        /// The address given.
        addr: String,
        /// How.
        detail: String,
    },
}

/// An open status connection to one coordinator. Must be used inside a tokio runtime.
pub struct StatusClient {
    addr: String,
    port: u16,
    timeout: Duration,
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: Vec<u8>,
    next_req: u64,
}

/// Resolves `host:port` (names too).
async fn resolve(addr: &str) -> Result<SocketAddr, QueryError> {
    let bad = |detail: String| QueryError::Resolve { addr: addr.to_string(), detail };
    let mut all = tokio::net::lookup_host(addr).await.map_err(|e| bad(e.to_string()))?;
    all.next().ok_or_else(|| bad("the name resolves to no address".into()))
}

/// The host part of `host:port` or `[v6]:port`: the name the coordinator's certificate must hold.
fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

impl StatusClient {
    /// Connects to `addr` (`host:port`) with the client certificate, key and CA of `cert_dir`
    /// (`ca.pem`, `client.pem`, `client.key`), checking the coordinator's certificate against
    /// `server_name` (default: the host part of `addr`). Each step may take up to `timeout`.
    pub async fn connect(
        addr: &str,
        cert_dir: &Path,
        server_name: Option<&str>,
        timeout: Duration,
    ) -> Result<StatusClient, QueryError> {
        let target = resolve(addr).await?;
        let tls = dsm_cert::client_tls_config(cert_dir)?;
        let transport = dsm_cert::Transport::default();
        let client_config = dsm_cert::quic_client_config(tls, &transport, target.ip())?;
        let bind: SocketAddr = if target.is_ipv6() {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
        };
        let port = target.port();
        let unreachable =
            |detail: String| QueryError::Unreachable { addr: addr.to_string(), port, detail };
        let mut endpoint = dsm_cert::endpoint(bind, None).map_err(|e| unreachable(format!("cannot open a UDP socket: {e}")))?;
        endpoint.set_default_client_config(client_config);
        let name = server_name.unwrap_or_else(|| host_of(addr));
        let connecting = endpoint.connect(target, name).map_err(|e| unreachable(e.to_string()))?;
        let conn = match tokio::time::timeout(timeout, connecting).await {
            Err(_) | Ok(Err(quinn::ConnectionError::TimedOut)) => {
                return Err(unreachable(format!("no answer within {timeout:?}")))
            }
            Ok(Err(e)) => return Err(connection_error(addr, port, &e)),
            Ok(Ok(c)) => c,
        };
        let hello = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| connection_error(addr, port, &e))?;
            send.write_all(&Hello::ours().encode()).await.map_err(|e| write_error(addr, port, e))?;
            let mut theirs = [0u8; HELLO_LEN];
            // With TLS 1.3 a refused client certificate shows here, as the connection closing.
            recv.read_exact(&mut theirs).await.map_err(|e| match e {
                quinn::ReadExactError::ReadError(e) => read_error(addr, port, e),
                quinn::ReadExactError::FinishedEarly(_) => QueryError::Protocol {
                    addr: addr.to_string(),
                    detail: "it closed the stream during the hello".into(),
                },
            })?;
            Hello::decode(theirs)
                .and_then(Hello::check)
                .map_err(|e| QueryError::Protocol { addr: addr.to_string(), detail: e.to_string() })?;
            Ok::<_, QueryError>((send, recv))
        };
        let (send, recv) = match tokio::time::timeout(timeout, hello).await {
            Ok(r) => r?,
            Err(_) => return Err(unreachable("it accepted the connection but sent no hello".into())),
        };
        Ok(StatusClient {
            addr: addr.to_string(),
            port,
            timeout,
            endpoint,
            conn,
            send,
            recv,
            buf: Vec::new(),
            next_req: 1,
        })
    }

    /// Asks for the coordinator's current report.
    pub async fn status(&mut self) -> Result<StatusReport, QueryError> {
        let req = self.next_req;
        self.next_req += 1;
        let mut frame = Vec::new();
        encode_frame(&ToCoordinator::Status { req }, &mut frame)
            .map_err(|e| QueryError::Protocol { addr: self.addr.clone(), detail: e.to_string() })?;
        let (addr, port) = (self.addr.clone(), self.port);
        self.send.write_all(&frame).await.map_err(|e| write_error(&addr, port, e))?;
        let wait = async {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match decode_frame::<ToProcess>(&self.buf) {
                    Ok(Some((msg, used))) => {
                        self.buf.drain(..used);
                        match msg {
                            ToProcess::Status { req: r, report } if r == req => return Ok(report),
                            // An older answer (a previous call timed out) or a stray message.
                            _ => continue,
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        return Err(QueryError::Protocol { addr: addr.clone(), detail: e.to_string() })
                    }
                }
                match self.recv.read(&mut chunk).await {
                    Ok(Some(n)) => self.buf.extend_from_slice(&chunk[..n]),
                    Ok(None) => {
                        return Err(QueryError::Closed {
                            addr: addr.clone(),
                            detail: "the coordinator closed the stream".into(),
                        })
                    }
                    Err(e) => return Err(read_error(&addr, port, e)),
                }
            }
        };
        match tokio::time::timeout(self.timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(QueryError::Unreachable {
                addr: self.addr.clone(),
                port: self.port,
                detail: format!("no status answer within {:?}", self.timeout),
            }),
        }
    }

    /// Closes the connection politely and waits (briefly) until the coordinator has heard it,
    /// so that it does not count the connection as open until its idle timeout.
    pub async fn close(self) {
        self.conn.close(close_code::OK.into(), b"status client done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

fn connection_error(addr: &str, port: u16, e: &quinn::ConnectionError) -> QueryError {
    use quinn::ConnectionError as C;
    let tls = |detail: String| QueryError::Tls { addr: addr.to_string(), detail };
    match e {
        C::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            // Crypto errors are 0x100 + the TLS alert.
            if (0x100..0x200).contains(&code) {
                let alert = code - 0x100;
                let name = dsm_cert::tls_alert_name(alert).unwrap_or("TLS alert");
                tls(format!("TLS alert {alert}: {name}"))
            } else {
                QueryError::Closed { addr: addr.to_string(), detail: close.to_string() }
            }
        }
        C::TransportError(te) if (0x100..0x200).contains(&u64::from(te.code)) => tls(te.to_string()),
        C::ApplicationClosed(app) => {
            let reason = String::from_utf8_lossy(&app.reason).into_owned();
            let code = u64::from(app.error_code);
            if code == u64::from(close_code::PROTOCOL_ERROR) {
                QueryError::Protocol {
                    addr: addr.to_string(),
                    detail: format!("it closed the connection ({reason}); is it an older release without `dsm status`?"),
                }
            } else {
                QueryError::Closed { addr: addr.to_string(), detail: format!("closed by the coordinator: {reason}") }
            }
        }
        C::TimedOut => QueryError::Unreachable {
            addr: addr.to_string(),
            port,
            detail: "the coordinator went silent past the idle timeout".into(),
        },
        other => QueryError::Closed { addr: addr.to_string(), detail: other.to_string() },
    }
}

fn read_error(addr: &str, port: u16, e: quinn::ReadError) -> QueryError {
    match e {
        quinn::ReadError::ConnectionLost(c) => connection_error(addr, port, &c),
        other => QueryError::Closed { addr: addr.to_string(), detail: other.to_string() },
    }
}

fn write_error(addr: &str, port: u16, e: quinn::WriteError) -> QueryError {
    match e {
        quinn::WriteError::ConnectionLost(c) => connection_error(addr, port, &c),
        other => QueryError::Closed { addr: addr.to_string(), detail: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(super::host_of("198.18.0.1:4200"), "198.18.0.1");
        assert_eq!(super::host_of("[::1]:4200"), "::1");
        assert_eq!(super::host_of("coord.lab:1"), "coord.lab");
        assert_eq!(super::host_of("coord.lab"), "coord.lab");
    }
}
