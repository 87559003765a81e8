//! The relay's bandwidth limit over real UDP sockets on 127.0.0.1: pacing
//! at the rate and a drop-tail queue.

mod common;

use std::time::{Duration, Instant};

use common::{bind, processed, relay_to, seq_of, wait_until, Sink, DEADLINE};
use dsm_relay::LinkConfig;

#[test]
fn rate_limit_spaces_datagrams_and_drops_when_the_queue_is_full() {
    let sink = Sink::new(false);
    // 8 Mbit/s: one byte per microsecond; a 1000-byte datagram takes 1 ms.
    let link = LinkConfig {
        rate: Some(dsm_relay::RateLimit { mbit_per_s: 8.0, queue_bytes: 10_000 }),
        ..LinkConfig::default()
    };
    let relay = relay_to(sink.addr, link);
    let client = bind();
    // A burst of 40 kB: far more than the queue holds or the link drains in
    // the time it takes to send it (and little enough for the relay's own
    // socket buffer).
    for i in 0u32..40 {
        let mut d = i.to_be_bytes().to_vec();
        d.resize(1000, 0xcd);
        client.send_to(&d, relay.local_addr()).unwrap();
    }
    wait_until("relay to deal with the burst", || processed(relay.stats()) == 40);
    let stats = relay.stats();
    wait_until("sink to receive what was forwarded", || sink.len() as u64 == stats.forwarded);
    assert!(stats.overflowed > 0 && stats.overflowed == stats.dropped, "{stats}");
    assert_eq!(stats.forwarded + stats.overflowed, 40, "{stats}");
    // The queue holds 10 kB, the datagram on the link included; a slow
    // sender lets a few more drain in meanwhile, never all of them.
    assert!(stats.forwarded >= 10, "{stats}");
    let seqs: Vec<u32> = sink.received().iter().map(|(_, d)| seq_of(d)).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "a queue keeps the order: {seqs:?}");
}

#[test]
fn rate_limit_holds_throughput_to_the_rate() {
    let echo = Sink::new(true);
    let link = LinkConfig {
        rate: Some(dsm_relay::RateLimit { mbit_per_s: 8.0, queue_bytes: 1 << 20 }),
        ..LinkConfig::default()
    };
    let relay = relay_to(echo.addr, link);
    let client = bind();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    // 50 datagrams of 1000 bytes fit the queue; through the link and back
    // they need at least 50 ms each way, however fast the machine.
    let t = Instant::now();
    for i in 0u32..50 {
        let mut d = i.to_be_bytes().to_vec();
        d.resize(1000, 0xcd);
        client.send_to(&d, relay.local_addr()).unwrap();
    }
    let mut buf = [0u8; 2048];
    for i in 0u32..50 {
        let (n, _) = client.recv_from(&mut buf).expect("echo through the rate limit");
        assert_eq!((n, seq_of(&buf)), (1000, i));
    }
    assert!(t.elapsed() >= Duration::from_millis(50), "{:?} is faster than 8 Mbit/s", t.elapsed());
    assert_eq!(relay.stats().dropped, 0);
}
