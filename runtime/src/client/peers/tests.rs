//! [`PeerLinks`] over real QUIC on loopback: runs of pages both ways in order, a stranger
//! refused, a dead address and a vanished peer handing messages back, a bad frame closing the
//! sender's connection.

use std::time::Instant;

use dsm_proto::runs::MAX_RUN;
use dsm_proto::PAGE_SIZE;

use super::*;

/// How long any test waits for an event before failing (a bound, not a sleep).
const PATIENCE: Duration = Duration::from_secs(20);

/// Connect timeout of the test links: a dead address is given up on after this.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

fn transport() -> Transport {
    Transport { idle_timeout: Duration::from_secs(3), keep_alive: Duration::from_millis(500), ..Transport::default() }
}

/// A process's side before the session starts: its identity, its endpoint serving peers.
struct Proc {
    identity: Arc<PeerIdentity>,
    setup: PeerSetup,
    endpoint: quinn::Endpoint,
}

impl Proc {
    fn new() -> Proc {
        let identity = Arc::new(PeerIdentity::generate().unwrap());
        let setup = PeerSetup::with_identity(Arc::clone(&identity), &transport(), CONNECT_TIMEOUT).unwrap();
        let endpoint = dsm_cert::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
        setup.serve(&endpoint);
        Proc { identity, setup, endpoint }
    }

    fn address(&self) -> PeerAddress {
        PeerAddress { addr: self.endpoint.local_addr().unwrap(), fingerprint: self.setup.fingerprint() }
    }

    fn links(self, me: Rank, peers: &[Option<PeerAddress>]) -> (PeerLinks, mpsc::UnboundedReceiver<PeerEvent>) {
        PeerLinks::new(self.setup, self.endpoint, me, peers)
    }
}

/// Two members, ranks 0 and 1, linked.
fn pair() -> ((PeerLinks, mpsc::UnboundedReceiver<PeerEvent>), (PeerLinks, mpsc::UnboundedReceiver<PeerEvent>)) {
    let (a, b) = (Proc::new(), Proc::new());
    let peers = vec![Some(a.address()), Some(b.address())];
    (a.links(0, &peers), b.links(1, &peers))
}

/// A run of `MAX_RUN` pages (the largest page message, just under 1 MiB), every byte tagged.
fn run(tag: u8, req: u64) -> ToPeer {
    let data: Vec<u8> = (0..MAX_RUN as usize * PAGE_SIZE).map(|i| tag.wrapping_add((i / PAGE_SIZE) as u8)).collect();
    ToPeer::Pages { req, first: req * 1000, count: MAX_RUN, data: PageData::from(data) }
}

fn small(req: u64) -> ToPeer {
    ToPeer::Pages { req, first: req, count: 1, data: PageData::from(vec![req as u8; PAGE_SIZE]) }
}

async fn next(events: &mut mpsc::UnboundedReceiver<PeerEvent>) -> PeerEvent {
    tokio::time::timeout(PATIENCE, events.recv()).await.expect("an event in time").expect("the links are alive")
}

#[tokio::test]
async fn runs_of_pages_cross_both_ways_in_order() {
    let ((mut a, mut a_events), (mut b, mut b_events)) = pair();
    const N: u64 = 8;
    for i in 0..N {
        a.send(1, run(1, i));
        b.send(0, run(2, i));
        // Small messages in between stay in their place.
        a.send(1, small(100 + i));
    }
    let mut to_b = Vec::new();
    while to_b.len() < 2 * N as usize {
        match next(&mut b_events).await {
            PeerEvent::Received(0, msg) => to_b.push(msg),
            other => panic!("unexpected at rank 1: {other:?}"),
        }
    }
    let mut to_a = Vec::new();
    while to_a.len() < N as usize {
        match next(&mut a_events).await {
            PeerEvent::Received(1, msg) => to_a.push(msg),
            other => panic!("unexpected at rank 0: {other:?}"),
        }
    }
    let expect_b: Vec<ToPeer> = (0..N).flat_map(|i| [run(1, i), small(100 + i)]).collect();
    let expect_a: Vec<ToPeer> = (0..N).map(|i| run(2, i)).collect();
    assert!(to_b == expect_b, "rank 1 got other messages, or in another order");
    assert!(to_a == expect_a, "rank 0 got other messages, or in another order");
    assert!(a_events.try_recv().is_err() && b_events.try_recv().is_err(), "nothing else, nothing handed back");
}

#[tokio::test]
async fn a_stranger_is_refused_and_members_still_get_through() {
    let (a, b, stranger) = (Proc::new(), Proc::new(), Proc::new());
    let peers = vec![Some(a.address()), Some(b.address())];
    let a_addr = a.address();
    let ((_a, mut a_events), (mut b, _b_events)) = (a.links(0, &peers), b.links(1, &peers));
    // The stranger believes it is rank 1 of a session with rank 0 at a's address.
    let (mut s, mut s_events) = stranger.links(1, &[Some(a_addr), None]);
    s.send(0, small(7));
    match next(&mut s_events).await {
        PeerEvent::Undelivered(0, msg) => assert_eq!(msg, small(7)),
        other => panic!("the stranger's message was not refused: {other:?}"),
    }
    // A member still gets through, and rank 0 heard of nothing but it.
    b.send(0, small(8));
    match next(&mut a_events).await {
        PeerEvent::Received(1, msg) => assert_eq!(msg, small(8)),
        other => panic!("unexpected at rank 0: {other:?}"),
    }
    assert!(a_events.try_recv().is_err());
}

#[tokio::test]
async fn a_send_to_a_dead_address_comes_back_undelivered_in_order() {
    // A port nobody listens on any more.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let a = Proc::new();
    let ghost = PeerAddress { addr: dead, fingerprint: PeerIdentity::generate().unwrap().fingerprint().0 };
    let peers = vec![Some(a.address()), Some(ghost)];
    let (mut a, mut events) = a.links(0, &peers);
    let start = Instant::now();
    a.send(1, small(1));
    a.send(1, run(3, 2));
    for expected in [small(1), run(3, 2)] {
        match next(&mut events).await {
            PeerEvent::Undelivered(1, msg) => assert!(msg == expected, "handed back out of order"),
            other => panic!("unexpected: {other:?}"),
        }
    }
    let took = start.elapsed();
    assert!(took < CONNECT_TIMEOUT + Duration::from_secs(2), "handed back after {took:?}");
    // Sending to itself or to a rank without an address is handed back at once.
    a.send(0, small(3));
    a.send(9, small(4));
    assert!(matches!(next(&mut events).await, PeerEvent::Undelivered(0, _)));
    assert!(matches!(next(&mut events).await, PeerEvent::Undelivered(9, _)));
}

#[tokio::test]
async fn a_peer_that_goes_away_gets_later_messages_handed_back() {
    let ((mut a, mut a_events), (b, mut b_events)) = pair();
    a.send(1, small(1));
    assert!(matches!(next(&mut b_events).await, PeerEvent::Received(0, _)));
    // Rank 1 stops taking direct transfers: its connections close, its endpoint refuses.
    drop(b);
    a.send(1, run(4, 2));
    a.send(1, small(3));
    for expected in [run(4, 2), small(3)] {
        match next(&mut a_events).await {
            PeerEvent::Undelivered(1, msg) => assert!(msg == expected, "handed back out of order"),
            other => panic!("unexpected: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_bad_frame_closes_that_peers_connection() {
    let (a, b) = (Proc::new(), Proc::new());
    let peers = vec![Some(a.address()), Some(b.address())];
    let (a_addr, a_fp) = (a.address().addr, Fingerprint(a.setup.fingerprint()));
    let b_identity = Arc::clone(&b.identity);
    let b_endpoint = b.endpoint.clone();
    let ((_a, mut a_events), (mut b, _b_events)) = (a.links(0, &peers), b.links(1, &peers));
    // Rank 1's identity, speaking garbage: a length prefix over the frame limit.
    let client = peer_client_config(&b_identity, a_fp, &transport(), a_addr.ip()).unwrap();
    let conn = b_endpoint.connect_with(client, a_addr, PEER_SERVER_NAME).unwrap().await.unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    send.write_all(&[0; 16]).await.unwrap();
    let closed = tokio::time::timeout(PATIENCE, conn.closed()).await.expect("closed in time");
    match closed {
        quinn::ConnectionError::ApplicationClosed(app) => {
            assert_eq!(u64::from(app.error_code), u64::from(close_code::PROTOCOL_ERROR));
            let reason = String::from_utf8_lossy(&app.reason);
            assert!(reason.contains("bad frame") && reason.contains("limit"), "{reason}");
        }
        other => panic!("closed otherwise: {other}"),
    }
    assert!(a_events.try_recv().is_err(), "nothing delivered from a bad frame");
    // Rank 1's own link still works.
    b.send(0, small(5));
    match next(&mut a_events).await {
        PeerEvent::Received(1, msg) => assert_eq!(msg, small(5)),
        other => panic!("unexpected: {other:?}"),
    }
}

#[test]
fn acknowledgements_release_messages_in_order_and_overcounting_is_an_error() {
    let mut u = Unacked::default();
    for i in 0..4 {
        u.msgs.push_back(small(i));
    }
    u.ack(0).unwrap();
    u.ack(3).unwrap();
    assert_eq!(u.msgs.iter().cloned().collect::<Vec<_>>(), vec![small(3)]);
    assert!(u.ack(2).is_err(), "a count going back");
    assert!(u.ack(5).is_err(), "more than was sent");
    u.ack(4).unwrap();
    assert!(u.msgs.is_empty());
}
