//! Real mutual-TLS checks over quinn on 127.0.0.1: a client with a
//! certificate from the CA is served; clients with no certificate, a
//! self-signed one, or one from another CA are refused, and the server sees
//! the handshake fail.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dsm_cert::*;
use quinn::{ConnectionError, Endpoint};
use tokio::sync::mpsc;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(5);

/// A server that echoes each bi stream and reports every failed handshake.
struct Server {
    endpoint: Endpoint,
    addr: SocketAddr,
    failures: mpsc::UnboundedReceiver<ConnectionError>,
}

fn start_server(dir: &Path) -> Server {
    let config = quic_server_config(dir, &Transport::default(), std::net::Ipv4Addr::LOCALHOST.into()).unwrap();
    let endpoint = Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (tx, failures) = mpsc::unbounded_channel();
    let accept = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => {
                        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                            let Ok(data) = recv.read_to_end(1 << 20).await else {
                                break;
                            };
                            let _ = send.write_all(&data).await;
                            let _ = send.finish();
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(e);
                    }
                }
            });
        }
    });
    Server {
        endpoint,
        addr,
        failures,
    }
}

/// Connects with `tls`, sends `payload` on a bi stream and returns the echo.
async fn echo(
    addr: SocketAddr,
    server_name: &str,
    tls: rustls::ClientConfig,
    payload: &[u8],
) -> Result<Vec<u8>, String> {
    let config = quic_client_config(tls, &Transport::default(), addr.ip()).map_err(|e| e.to_string())?;
    let mut endpoint = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let result = async {
        let conn = endpoint
            .connect(addr, server_name)
            .map_err(|e| format!("connect: {e}"))?
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        // With TLS 1.3 the client may finish its side of the handshake before
        // the server has judged the client certificate; the refusal then
        // shows up on first use.
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("open_bi: {e}"))?;
        send.write_all(payload)
            .await
            .map_err(|e| format!("write: {e}"))?;
        send.finish().map_err(|e| format!("finish: {e}"))?;
        let data = recv
            .read_to_end(1 << 20)
            .await
            .map_err(|e| format!("read: {e}"))?;
        conn.close(0u32.into(), b"done");
        Ok(data)
    };
    let out = match timeout(LIMIT, result).await {
        Ok(r) => r,
        Err(_) => Err("timed out".to_string()),
    };
    endpoint.close(0u32.into(), b"bye");
    out
}

fn paths(dir: &Path, cert: &str, key: &str) -> (PathBuf, PathBuf) {
    (dir.join(cert), dir.join(key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_accepts_good_clients_and_refuses_others() {
    let good = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    generate(good.path(), &[]).unwrap();
    generate(other.path(), &[]).unwrap();
    let ca = good.path().join(CA_CERT);
    let mut server = start_server(good.path());

    // The dev client, by DNS name and by IP address.
    for name in ["localhost", "127.0.0.1"] {
        let tls = client_tls_config(good.path()).unwrap();
        let data = echo(server.addr, name, tls, b"hello dsm").await;
        assert_eq!(data.as_deref(), Ok(&b"hello dsm"[..]), "server name {name}");
    }
    // A client certificate issued later from the same CA.
    let (cert, key) = issue_client(good.path(), "worker-7", &good.path().join("issued")).unwrap();
    let tls = client_tls_config_from(&ca, Some((&cert, &key))).unwrap();
    assert_eq!(
        echo(server.addr, "localhost", tls, b"x").await.as_deref(),
        Ok(&b"x"[..])
    );
    assert!(
        server.failures.try_recv().is_err(),
        "good clients must not fail"
    );

    let rogue_dir = tempfile::tempdir().unwrap();
    let (rogue_cert, rogue_key) = self_signed_client("rogue", rogue_dir.path()).unwrap();
    let (other_cert, other_key) = paths(other.path(), CLIENT_CERT, CLIENT_KEY);
    let bad: [(&str, Option<(&Path, &Path)>); 3] = [
        ("no certificate", None),
        ("self-signed", Some((&rogue_cert, &rogue_key))),
        ("other CA", Some((&other_cert, &other_key))),
    ];
    for (label, client) in bad {
        let tls = client_tls_config_from(&ca, client).unwrap();
        let result = echo(server.addr, "localhost", tls, b"let me in").await;
        let err = result.expect_err(label);
        assert_ne!(err, "timed out", "{label}: refusal must not hang");
        let seen = timeout(LIMIT, server.failures.recv())
            .await
            .unwrap_or_else(|_| panic!("{label}: server saw no failed handshake (client: {err})"))
            .unwrap();
        match &seen {
            ConnectionError::TransportError(e) => {
                let code = u64::from(e.code);
                assert!(
                    (0x100..0x200).contains(&code),
                    "{label}: expected a TLS alert, got {e}"
                );
            }
            other => panic!("{label}: expected a handshake failure, got {other:?}"),
        }
        eprintln!("{label}: client saw `{err}`, server saw `{seen}`");
    }

    // The client also refuses a server whose certificate is from another CA.
    let tls = client_tls_config(other.path()).unwrap();
    let err = echo(server.addr, "localhost", tls, b"?").await.unwrap_err();
    assert!(err.starts_with("handshake"), "{err}");
    eprintln!("wrong server CA: client saw `{err}`");

    server.endpoint.close(0u32.into(), b"bye");
}
