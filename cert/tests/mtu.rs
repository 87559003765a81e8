//! MTU discovery between two `dsm_cert::endpoint`s on loopback (MTU 65536): the connection
//! starts at QUIC's 1200 bytes and finds [`MAX_UDP_PAYLOAD`], not Ethernet's 1452 (quinn's
//! default bound) and not the 1200 it falls back to when a GSO batch is too large for one
//! `sendmsg` (ten 65,507-byte datagrams: the endpoint's socket must send them in parts; without
//! the split this test fails with "the path MTU fell from 65507 to 1200").

use std::time::{Duration, Instant};

use dsm_cert::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_connections_discover_the_largest_payload() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), &[]).unwrap();
    let transport = Transport::default();
    let server = endpoint("127.0.0.1:0".parse().unwrap(), Some(quic_server_config(dir.path(), &transport).unwrap()))
        .unwrap();
    let addr = server.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let (_send, mut recv) = conn.accept_bi().await.unwrap();
        // Drain the client's bulk data so that the server acknowledges it.
        while let Ok(Some(_)) = recv.read_chunk(1 << 20, true).await {}
        conn
    });
    let mut client = endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    client.set_default_client_config(quic_client_config(client_tls_config(dir.path()).unwrap(), &transport).unwrap());
    let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
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
    send.finish().unwrap();
    drop(send);
    let _server_conn = accept.await.unwrap();
    conn.close(0u32.into(), b"done");
}
