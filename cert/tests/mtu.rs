//! Path MTU between two `dsm_cert::endpoint`s on loopback (MTU 65536).
//!
//! * Configured as for a remote peer, the connection starts at QUIC's 1200 bytes and discovers
//!   [`MAX_UDP_PAYLOAD`], not Ethernet's 1452 (quinn's default bound) and not the 1200 it falls
//!   back to when a GSO batch is too large for one `sendmsg` (ten 65,507-byte datagrams: the
//!   endpoint's socket must send them in parts; without the split this test fails with "the
//!   path MTU fell from 65507 to 1200").
//! * Configured for its loopback peer, it starts at [`MAX_UDP_PAYLOAD`] and sends no probe.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use dsm_cert::*;

/// A server and a connected client on loopback, configured as if the peers were at `peer`;
/// the server drains what the client sends on its first stream.
async fn connected(dir: &std::path::Path, peer: IpAddr) -> (quinn::Endpoint, quinn::Connection, tokio::task::JoinHandle<quinn::Connection>) {
    connected_with(dir, peer, &Transport::default()).await
}

/// [`connected`] with `transport` on both sides.
async fn connected_with(
    dir: &std::path::Path,
    peer: IpAddr,
    transport: &Transport,
) -> (quinn::Endpoint, quinn::Connection, tokio::task::JoinHandle<quinn::Connection>) {
    let server = endpoint("127.0.0.1:0".parse().unwrap(), Some(quic_server_config(dir, transport, peer).unwrap())).unwrap();
    let addr = server.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let (_send, mut recv) = conn.accept_bi().await.unwrap();
        // Drain the client's bulk data so that the server acknowledges it.
        while let Ok(Some(_)) = recv.read_chunk(1 << 20, true).await {}
        conn
    });
    let mut client = endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    client.set_default_client_config(quic_client_config(client_tls_config(dir).unwrap(), transport, peer).unwrap());
    let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
    (client, conn, accept)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_configured_for_a_remote_peer_discover_the_largest_payload() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), &[]).unwrap();
    // An address that is not loopback: the configuration a remote peer gets.
    let (_client, conn, accept) = connected(dir.path(), IpAddr::from(Ipv4Addr::new(198, 18, 0, 1))).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    // Bulk data in full batches as discovery proceeds, until the search settles (it takes a
    // few round trips; the deadline only bounds a failure).
    let chunk = vec![0x5au8; 256 << 10];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut mtu = conn.stats().path.current_mtu;
    while Instant::now() < deadline {
        send.write_all(&chunk).await.unwrap();
        mtu = conn.stats().path.current_mtu;
        if mtu + 20 >= MAX_UDP_PAYLOAD {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Discovery stops within `minimum_change` (20) of the bound.
    assert!(mtu + 20 >= MAX_UDP_PAYLOAD, "the path MTU reached {mtu}, expected about {MAX_UDP_PAYLOAD}");
    // Full batches of the discovered size go out (a batch too large for one `sendmsg` would be
    // lost and black-hole detection would fall back to 1200).
    for _ in 0..64 {
        send.write_all(&chunk).await.unwrap();
    }
    let after = conn.stats().path.current_mtu;
    assert_eq!(after, mtu, "the path MTU fell from {mtu} to {after} under bulk traffic");
    assert!(conn.stats().path.sent_plpmtud_probes > 0, "the MTU was found without a search");
    send.finish().unwrap();
    drop(send);
    let _server_conn = accept.await.unwrap();
    conn.close(0u32.into(), b"done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_connections_start_at_the_largest_payload_without_probes() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), &[]).unwrap();
    let (_client, conn, accept) = connected(dir.path(), IpAddr::from(Ipv4Addr::LOCALHOST)).await;
    assert_eq!(conn.stats().path.current_mtu, MAX_UDP_PAYLOAD);
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let chunk = vec![0x5au8; 256 << 10];
    for _ in 0..64 {
        send.write_all(&chunk).await.unwrap();
    }
    send.finish().unwrap();
    drop(send);
    let server_conn = accept.await.unwrap();
    let (client, server) = (conn.stats().path, server_conn.stats().path);
    assert_eq!((client.current_mtu, server.current_mtu), (MAX_UDP_PAYLOAD, MAX_UDP_PAYLOAD), "the path MTU fell under bulk traffic");
    assert_eq!((client.sent_plpmtud_probes, server.sent_plpmtud_probes), (0, 0), "a loopback connection probed its MTU");
    assert_eq!(client.black_holes_detected, 0);
    conn.close(0u32.into(), b"done");
}

/// Every congestion controller a `Transport` offers connects and carries bulk data on loopback,
/// where the first packets are already 65,507 bytes (a controller's default initial window of
/// ten Ethernet packets holds none of them: the handshake never went out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_congestion_controller_works_at_the_loopback_payload() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), &[]).unwrap();
    for congestion in [Congestion::Cubic, Congestion::NewReno, Congestion::Bbr] {
        let transport = Transport { congestion, ..Transport::default() };
        let run = async {
            let (_client, conn, accept) = connected_with(dir.path(), IpAddr::from(Ipv4Addr::LOCALHOST), &transport).await;
            let (mut send, _recv) = conn.open_bi().await.unwrap();
            let chunk = vec![0x5au8; 256 << 10];
            for _ in 0..16 {
                send.write_all(&chunk).await.unwrap();
            }
            send.finish().unwrap();
            let server_conn = accept.await.unwrap();
            assert!(server_conn.stats().udp_rx.bytes >= 16 * (256 << 10), "{congestion:?}: the data did not arrive");
            conn.close(0u32.into(), b"done");
        };
        tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .unwrap_or_else(|_| panic!("{congestion:?}: no connection or no data within 20 s"));
    }
}
