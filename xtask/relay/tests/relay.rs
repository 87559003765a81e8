//! Integration tests of the relay over real UDP sockets on 127.0.0.1: loss,
//! duplicates, reordering, jitter, flows, validation, binding.

mod common;

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::time::Duration;

use common::{bind, processed, relay_to, seq_of, wait_until, Sink, DEADLINE, LOCAL};
use dsm_relay::{LinkConfig, RelayConfig, RelayError, RelayStats};

/// Sends `n` numbered datagrams one way through a relay with `link` and
/// returns the sequence numbers in arrival order, plus the relay stats.
fn one_way(link: LinkConfig, n: u32) -> (Vec<u32>, RelayStats) {
    let sink = Sink::new(false);
    let relay = relay_to(sink.addr, link);
    let client = bind();
    for i in 0..n {
        let mut d = i.to_be_bytes().to_vec();
        d.extend_from_slice(&[0xAB; 60]);
        client.send_to(&d, relay.local_addr()).unwrap();
        // Pace so no kernel buffer overflows (which would add real loss): the
        // relay, and the sink too (on a loaded machine its thread can fall
        // behind by more than its socket buffer holds).
        if i % 64 == 63 {
            let sent = u64::from(i) + 1;
            wait_until("relay to catch up", || processed(relay.stats()) == sent);
            let forwarded = relay.stats().forwarded;
            wait_until("sink to catch up", || sink.len() as u64 >= forwarded);
        }
    }
    wait_until("relay to finish", || {
        processed(relay.stats()) == u64::from(n)
    });
    let stats = relay.stats();
    wait_until("sink to receive everything", || {
        sink.len() as u64 == stats.forwarded
    });
    let seqs = sink.received().iter().map(|(_, d)| seq_of(d)).collect();
    (seqs, stats)
}

#[test]
fn passthrough_echo_1000_in_order_byte_exact() {
    let echo = Sink::new(true);
    let relay = relay_to(echo.addr, LinkConfig::default());
    let client = UdpSocket::bind(LOCAL).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = vec![0u8; 65535];
    for i in 0u32..1000 {
        let len = match i {
            500 => 60_000, // one big datagram
            _ => 4 + (i as usize * 37) % 1400,
        };
        let mut d: Vec<u8> = (0..len).map(|k| (k as u32 ^ i) as u8).collect();
        d[..4].copy_from_slice(&i.to_be_bytes());
        client.send_to(&d, relay.local_addr()).unwrap();
        let (n, from) = client.recv_from(&mut buf).expect("echo reply");
        assert_eq!(from, relay.local_addr());
        assert_eq!(&buf[..n], &d[..], "datagram {i} corrupted");
    }
    // The counter is bumped just after the reply is sent.
    wait_until("last reply counted", || relay.stats().forwarded == 2000);
    assert_eq!(
        relay.stats(),
        RelayStats {
            forwarded: 2000,
            dropped: 0,
            duplicated: 0,
            reordered: 0,
            outage_dropped: 0,
            overflowed: 0,
        }
    );
    // The server saw a single peer, not the client itself.
    let peers: BTreeSet<_> = echo.received().iter().map(|(a, _)| *a).collect();
    assert_eq!(peers.len(), 1);
    assert!(!peers.contains(&client.local_addr().unwrap()));
}

#[test]
fn loss_is_deterministic_for_a_seed() {
    let link = |seed| LinkConfig {
        loss: 0.3,
        seed,
        ..LinkConfig::default()
    };
    let (a, sa) = one_way(link(42), 2000);
    let (b, sb) = one_way(link(42), 2000);
    let (c, _) = one_way(link(43), 2000);
    // Zero delay and no reordering: arrivals are in order.
    assert!(a.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(a, b, "same seed must deliver the same datagrams");
    assert_eq!(sa, sb);
    assert_ne!(a, c, "another seed should deliver another set");
    let dropped = 2000 - a.len();
    assert_eq!(dropped as u64, sa.dropped);
    let frac = dropped as f64 / 2000.0;
    assert!((0.25..=0.35).contains(&frac), "drop fraction {frac}");
}

#[test]
fn duplicates_are_observed() {
    let link = LinkConfig {
        duplicate: 0.2,
        seed: 7,
        ..LinkConfig::default()
    };
    let (seqs, stats) = one_way(link, 500);
    let unique: BTreeSet<_> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), 500, "nothing lost");
    assert_eq!(seqs.len() - 500, stats.duplicated as usize);
    assert!(stats.duplicated > 50 && stats.duplicated < 150, "{stats}");
    assert_eq!(stats.forwarded, 500 + stats.duplicated);
}

fn late_arrivals(seqs: &[u32]) -> usize {
    let mut max = None;
    let mut late = 0;
    for &s in seqs {
        match max {
            Some(m) if s < m => late += 1,
            _ => max = Some(s),
        }
    }
    late
}

#[test]
fn reorder_reorders() {
    let link = LinkConfig {
        reorder: 0.1,
        delay: Duration::from_millis(2),
        seed: 3,
        ..LinkConfig::default()
    };
    let (seqs, stats) = one_way(link, 500);
    assert_eq!(seqs.len(), 500);
    assert!(stats.reordered > 0);
    assert!(late_arrivals(&seqs) > 0, "expected out-of-order arrivals");
}

#[test]
fn reorder_without_delay_still_reorders() {
    let link = LinkConfig {
        reorder: 0.2,
        seed: 5,
        ..LinkConfig::default()
    };
    let (seqs, stats) = one_way(link, 300);
    assert_eq!(seqs.len(), 300);
    assert!(stats.reordered > 0);
    // Needs a datagram right behind a held-back one within 1 ms; the
    // pacing batches of 64 make that near certain.
    assert!(late_arrivals(&seqs) > 0, "expected out-of-order arrivals");
}

#[test]
fn jitter_alone_never_reorders() {
    let link = LinkConfig {
        delay: Duration::from_millis(2),
        jitter: Duration::from_millis(2),
        seed: 9,
        ..LinkConfig::default()
    };
    let (seqs, stats) = one_way(link, 500);
    assert_eq!(seqs, (0..500).collect::<Vec<_>>());
    assert_eq!(stats.reordered, 0);
}

#[test]
fn two_clients_are_two_peers() {
    let echo = Sink::new(true);
    let relay = relay_to(echo.addr, LinkConfig::default());
    let clients = [bind(), bind()];
    for (i, c) in clients.iter().enumerate() {
        c.send_to(format!("hello from {i}").as_bytes(), relay.local_addr())
            .unwrap();
    }
    wait_until("server to hear both", || echo.len() == 2);
    let peers: BTreeSet<_> = echo.received().iter().map(|(a, _)| *a).collect();
    assert_eq!(peers.len(), 2, "server must see two distinct sources");
    for c in &clients {
        assert!(!peers.contains(&c.local_addr().unwrap()));
    }
    // Replies are routed back to the right client.
    let mut buf = [0u8; 64];
    for (i, c) in clients.iter().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (n, from) = c.recv_from(&mut buf).unwrap();
        assert_eq!(from, relay.local_addr());
        assert_eq!(&buf[..n], format!("hello from {i}").as_bytes());
    }
}

#[test]
fn validate_rejects_bad_configs() {
    let bad_loss = LinkConfig {
        loss: 1.5,
        ..LinkConfig::default()
    };
    let msg = bad_loss.validate().unwrap_err().to_string();
    assert!(msg.contains("loss") && msg.contains("1.5"), "{msg}");

    let nan = LinkConfig {
        duplicate: f64::NAN,
        ..LinkConfig::default()
    };
    assert!(nan
        .validate()
        .unwrap_err()
        .to_string()
        .contains("duplicate"));

    let bad_jitter = LinkConfig {
        delay: Duration::from_millis(2),
        jitter: Duration::from_millis(5),
        ..LinkConfig::default()
    };
    let msg = bad_jitter.validate().unwrap_err().to_string();
    assert!(msg.contains("jitter") && msg.contains("delay"), "{msg}");

    assert!(LinkConfig::default().validate().is_ok());
    let ok = LinkConfig {
        loss: 1.0,
        reorder: 0.0,
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(5),
        ..LinkConfig::default()
    };
    assert!(ok.validate().is_ok());

    for (rate, queue_bytes, what) in [(0.0, 1000, "rate"), (f64::NAN, 1000, "rate"), (-1.0, 1000, "rate"), (10.0, 0, "queue")] {
        let bad = LinkConfig {
            rate: Some(dsm_relay::RateLimit { mbit_per_s: rate, queue_bytes }),
            ..LinkConfig::default()
        };
        let msg = bad.validate().unwrap_err().to_string();
        assert!(msg.contains(what), "{msg}");
    }
    let no_outage = LinkConfig {
        outage: Some(dsm_relay::Outage { at: Duration::from_secs(1), duration: Duration::ZERO }),
        ..LinkConfig::default()
    };
    let msg = no_outage.validate().unwrap_err().to_string();
    assert!(msg.contains("outage") && msg.contains("positive"), "{msg}");

    let err = dsm_relay::spawn(RelayConfig {
        listen: LOCAL.parse().unwrap(),
        to: LOCAL.parse().unwrap(),
        link: bad_loss,
    })
    .unwrap_err();
    assert!(matches!(err, RelayError::InvalidConfig(_)));
}

#[test]
fn bind_error_and_port_released_on_drop() {
    let taken = UdpSocket::bind(LOCAL).unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = RelayConfig {
        listen: addr,
        to: addr,
        link: LinkConfig::default(),
    };
    match dsm_relay::spawn(cfg.clone()) {
        Err(RelayError::Bind { addr: a, .. }) => assert_eq!(a, addr),
        other => panic!("expected a bind error, got {other:?}"),
    }
    drop(taken);
    let relay = dsm_relay::spawn(cfg.clone()).unwrap();
    assert_eq!(relay.local_addr(), addr);
    drop(relay);
    // Dropping the handle closed the socket.
    UdpSocket::bind(addr).unwrap();
}

#[tokio::test]
async fn async_start_with_delay_round_trip() {
    let server = tokio::net::UdpSocket::bind(LOCAL).await.unwrap();
    let link = LinkConfig {
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(2),
        ..LinkConfig::default()
    };
    let relay = dsm_relay::start(RelayConfig {
        listen: LOCAL.parse().unwrap(),
        to: server.local_addr().unwrap(),
        link,
    })
    .await
    .unwrap();
    let client = tokio::net::UdpSocket::bind(LOCAL).await.unwrap();
    let t0 = tokio::time::Instant::now();
    client.send_to(b"ping", relay.local_addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let (n, peer) = tokio::time::timeout(DEADLINE, server.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"ping");
    server.send_to(b"pong", peer).await.unwrap();
    let (n, from) = tokio::time::timeout(DEADLINE, client.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((&buf[..n], from), (&b"pong"[..], relay.local_addr()));
    assert!(t0.elapsed() >= Duration::from_millis(6), "two 3..7 ms hops");
    assert_eq!(relay.stats().forwarded, 2);
    relay.shutdown();
}
