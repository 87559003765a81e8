//! Peer connections over real QUIC on loopback: both ends authenticated by pinned fingerprints
//! (`dsm_cert::peer`), a client refused by a server that does not list it, a server refused by
//! a client that expected another one.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use dsm_cert::*;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A peer server presenting `identity` and accepting `accepted`; it echoes one stream of each
/// connection and reports the fingerprint the client presented.
fn server(identity: &PeerIdentity, accepted: PeerSet) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Fingerprint>) {
    let config = peer_server_config(identity, accepted, &Transport::default(), LOOPBACK).unwrap();
    let endpoint = endpoint("127.0.0.1:0".parse().unwrap(), Some(config)).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                // A refused handshake ends here.
                let Ok(conn) = incoming.await else { return };
                let _ = tx.send(peer_fingerprint(&conn).unwrap());
                if let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let got = recv.read_to_end(1 << 16).await.unwrap();
                    send.write_all(&got).await.unwrap();
                    send.finish().unwrap();
                }
                conn.closed().await;
            });
        }
    });
    (addr, rx)
}

/// Connects as `identity` to `addr`, expecting the certificate with `expected`.
async fn connect(identity: &PeerIdentity, expected: Fingerprint, addr: SocketAddr) -> Result<quinn::Connection, quinn::ConnectionError> {
    let client = endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let config = peer_client_config(identity, expected, &Transport::default(), LOOPBACK).unwrap();
    client.connect_with(config, addr, PEER_SERVER_NAME).unwrap().await
}

/// Connects as `identity` and returns why the connection ended: a QUIC client finishes its
/// handshake before the server has checked the client's certificate, so a refusal can also
/// arrive as the close of a connection that looked established.
async fn refusal(identity: &PeerIdentity, expected: Fingerprint, addr: SocketAddr) -> quinn::ConnectionError {
    match connect(identity, expected, addr).await {
        Err(e) => e,
        // Keep-alives would hold an accepted connection open forever: give up after a while.
        Ok(conn) => tokio::time::timeout(std::time::Duration::from_secs(5), conn.closed())
            .await
            .expect("the server accepted the connection"),
    }
}

/// Sends `msg` on a new stream and returns the echo.
async fn echo(conn: &quinn::Connection, msg: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(msg).await.unwrap();
    send.finish().unwrap();
    recv.read_to_end(1 << 16).await.unwrap()
}

/// The TLS alert that ended a refused handshake, by name.
fn alert(e: &quinn::ConnectionError) -> Option<&'static str> {
    let code = match e {
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code,
        quinn::ConnectionError::TransportError(t) => t.code,
        _ => return None,
    };
    let code = u64::from(code);
    (0x100..0x200).contains(&code).then(|| tls_alert_name(code - 0x100)).flatten()
}

#[tokio::test]
async fn members_connect_and_each_end_knows_the_other() {
    let (a, b) = (PeerIdentity::generate().unwrap(), PeerIdentity::generate().unwrap());
    let members = PeerSet::default();
    members.insert(b.fingerprint(), 2);
    let (addr, mut clients) = server(&a, members.clone());
    let conn = connect(&b, a.fingerprint(), addr).await.expect("a member's connection is accepted");
    assert_eq!(echo(&conn, b"page 7").await, b"page 7");
    assert_eq!(peer_fingerprint(&conn), Some(a.fingerprint()), "the client sees the server it pinned");
    let seen = clients.recv().await.unwrap();
    assert_eq!(seen, b.fingerprint(), "the server sees the client's certificate");
    assert_eq!(members.get(&seen), Some(2), "and knows it as rank 2");
    conn.close(0u32.into(), b"done");
}

#[tokio::test]
async fn a_server_refuses_a_client_it_does_not_list() {
    let (a, b, stranger) =
        (PeerIdentity::generate().unwrap(), PeerIdentity::generate().unwrap(), PeerIdentity::generate().unwrap());
    let members = PeerSet::default();
    members.insert(b.fingerprint(), 1);
    let (addr, mut clients) = server(&a, members.clone());
    let e = refusal(&stranger, a.fingerprint(), addr).await;
    assert_eq!(alert(&e), Some("access denied"), "{e}");
    // A member that leaves is refused from then on.
    let conn = connect(&b, a.fingerprint(), addr).await.expect("a member is accepted");
    assert_eq!(echo(&conn, b"x").await, b"x");
    assert_eq!(clients.recv().await.unwrap(), b.fingerprint(), "only the member's connection was served");
    members.remove(&b.fingerprint());
    let e = refusal(&b, a.fingerprint(), addr).await;
    assert_eq!(alert(&e), Some("access denied"), "{e}");
}

#[tokio::test]
async fn a_client_refuses_a_server_it_did_not_pin() {
    let (a, b, impostor) =
        (PeerIdentity::generate().unwrap(), PeerIdentity::generate().unwrap(), PeerIdentity::generate().unwrap());
    let members = PeerSet::default();
    members.insert(b.fingerprint(), 1);
    // The impostor accepts b, but b expects a.
    let (addr, mut clients) = server(&impostor, members);
    let e = connect(&b, a.fingerprint(), addr).await.expect_err("the impostor is refused");
    assert!(
        matches!(&e, quinn::ConnectionError::TransportError(t) if t.reason.contains("certificate")),
        "the client's own verifier refuses the server: {e}"
    );
    assert!(clients.try_recv().is_err(), "no connection was served");
}
