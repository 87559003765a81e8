//! The relay's outage window over real UDP sockets on 127.0.0.1: planned
//! from the first datagram, or begun on demand; both directions cut.

mod common;

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bind, relay_to, DEADLINE};
use dsm_relay::{LinkConfig, RelayThread};

/// Nanoseconds since `origin`, the clock both ends of [`two_way`] stamp with.
fn nanos_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap()
}

/// What one direction of [`two_way`] saw: per datagram, when it was sent and
/// (if it arrived) when it was received, in nanoseconds since the origin.
struct Direction {
    sent: Vec<u64>,
    received: Vec<Option<u64>>,
}

/// Both ends send a datagram every millisecond for `run` (the client first,
/// so the relay knows the flow), each stamped with its send time; `during`
/// is called from the test thread once traffic flows. Returns what each
/// direction (client -> server, server -> client) saw.
fn two_way(relay: &RelayThread, server: UdpSocket, run: Duration, during: impl FnOnce()) -> [Direction; 2] {
    let origin = Instant::now();
    let client = bind();
    // The first datagram opens the flow and tells the server the relay's
    // upstream address, which it then sends to.
    client.send_to(&u64::MAX.to_be_bytes(), relay.local_addr()).unwrap();
    let mut buf = [0u8; 64];
    server.set_read_timeout(Some(DEADLINE)).unwrap();
    let (_, peer) = server.recv_from(&mut buf).expect("first datagram through the relay");
    server.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let end = origin + run;
    // Whatever is still on the way arrives within the drain time.
    let drain = end + Duration::from_millis(200);
    let (client, server) = (Arc::new(client), Arc::new(server));
    // Each receiver runs while its peer sends, so no socket buffer overflows.
    let receivers = [Arc::clone(&server), Arc::clone(&client)].map(|sock| {
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while Instant::now() < drain {
                if let Ok((16, _)) = sock.recv_from(&mut buf) {
                    let seq = u64::from_be_bytes(buf[..8].try_into().unwrap()) as usize;
                    got.push((seq, nanos_since(origin)));
                }
            }
            got
        })
    });
    let senders = [(Arc::clone(&client), relay.local_addr()), (Arc::clone(&server), peer)].map(|(sock, to)| {
        std::thread::spawn(move || {
            let mut sent = Vec::new();
            while Instant::now() < end {
                let seq = sent.len() as u64;
                let at = nanos_since(origin);
                let mut d = seq.to_be_bytes().to_vec();
                d.extend_from_slice(&at.to_be_bytes());
                sock.send_to(&d, to).unwrap();
                sent.push(at);
                std::thread::sleep(Duration::from_millis(1));
            }
            sent
        })
    });
    during();
    let sent = senders.map(|s| s.join().unwrap());
    let got = receivers.map(|r| r.join().unwrap());
    let mut dirs = sent.into_iter().zip(got).map(|(sent, got)| {
        let mut received = vec![None; sent.len()];
        for (seq, at) in got {
            received[seq] = Some(at);
        }
        Direction { sent, received }
    });
    [dirs.next().unwrap(), dirs.next().unwrap()]
}

/// Checks one direction against an outage window `[start, end)` (nanoseconds
/// since the origin): nothing sent inside it arrived before it ended; it
/// really dropped something; everything sent well after it arrived.
fn check_outage(dir: &Direction, (start, end): (u64, u64), name: &str) -> usize {
    let mut lost = 0;
    let mut dropped_inside = 0;
    for (seq, (&sent, got)) in dir.sent.iter().zip(&dir.received).enumerate() {
        match got {
            Some(at) if sent >= start && sent < end => {
                assert!(*at >= end, "{name}: datagram {seq} sent inside the outage arrived before its end");
            }
            Some(_) => {}
            None => {
                lost += 1;
                if sent >= start && sent < end {
                    dropped_inside += 1;
                }
                // Loss is off: only the outage may drop, and it cannot have
                // dropped what was sent after it ended (plus slack for the
                // sender's own scheduling).
                assert!(sent < end, "{name}: datagram {seq} sent after the outage was lost");
            }
        }
    }
    assert!(dropped_inside > 0, "{name}: the outage dropped nothing");
    lost
}

fn window_nanos(window: (Instant, Instant), origin: Instant) -> (u64, u64) {
    let rel = |t: Instant| u64::try_from(t.saturating_duration_since(origin).as_nanos()).unwrap();
    (rel(window.0), rel(window.1))
}

#[test]
fn planned_outage_cuts_both_directions_from_the_first_datagram() {
    let server = bind();
    let link = LinkConfig {
        outage: Some(dsm_relay::Outage {
            at: Duration::from_millis(150),
            duration: Duration::from_millis(250),
        }),
        ..LinkConfig::default()
    };
    let relay = relay_to(server.local_addr().unwrap(), link);
    assert_eq!(relay.outage_window(), None, "planned from the first datagram, not before");
    // The origin of the stamps is taken inside two_way just before the first
    // datagram, so a window computed from the relay's clock is comparable.
    let origin = Instant::now();
    let dirs = two_way(&relay, server, Duration::from_millis(700), || {});
    let window = relay.outage_window().expect("the first datagram schedules the outage");
    assert_eq!(window.1 - window.0, Duration::from_millis(250));
    assert!(window.0 >= origin + Duration::from_millis(150));
    let w = window_nanos(window, origin);
    let lost: usize = dirs.iter().zip(["client->server", "server->client"]).map(|(d, n)| check_outage(d, w, n)).sum();
    let stats = relay.stats();
    assert_eq!(stats.outage_dropped as usize, lost, "{stats}");
    assert_eq!(stats.dropped, stats.outage_dropped, "{stats}");
}

#[test]
fn begin_outage_cuts_both_directions_now() {
    let server = bind();
    let relay = relay_to(server.local_addr().unwrap(), LinkConfig::default());
    let origin = Instant::now();
    let mut window = None;
    let dirs = two_way(&relay, server, Duration::from_millis(600), || {
        std::thread::sleep(Duration::from_millis(100));
        window = Some(relay.begin_outage(Duration::from_millis(250)));
    });
    let window = window.unwrap();
    assert_eq!(relay.outage_window(), Some(window));
    let w = window_nanos(window, origin);
    let lost: usize = dirs.iter().zip(["client->server", "server->client"]).map(|(d, n)| check_outage(d, w, n)).sum();
    assert_eq!(relay.stats().outage_dropped as usize, lost, "{}", relay.stats());
}
