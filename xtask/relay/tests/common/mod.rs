//! Helpers shared by the relay's integration tests: sockets on 127.0.0.1, a
//! relay in front of them, polling with a deadline, a collecting sink.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dsm_relay::{LinkConfig, RelayConfig, RelayStats, RelayThread};

pub const LOCAL: &str = "127.0.0.1:0";
pub const DEADLINE: Duration = Duration::from_secs(10);

pub fn bind() -> UdpSocket {
    let s = UdpSocket::bind(LOCAL).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    s
}

pub fn relay_to(to: SocketAddr, link: LinkConfig) -> RelayThread {
    dsm_relay::spawn(RelayConfig {
        listen: LOCAL.parse().unwrap(),
        to,
        link,
    })
    .unwrap()
}

/// Polls `cond` until it holds; panics after [`DEADLINE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Datagrams the relay has fully dealt with so far (one-way traffic only).
pub fn processed(s: RelayStats) -> u64 {
    // Duplicates are counted when decided, copies when sent: saturate.
    (s.forwarded + s.dropped).saturating_sub(s.duplicated)
}

pub type Received = Arc<Mutex<Vec<(SocketAddr, Vec<u8>)>>>;

/// A server socket whose received datagrams are collected by a thread.
pub struct Sink {
    pub addr: SocketAddr,
    got: Received,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// `echo`: send every datagram back to its source.
    pub fn new(echo: bool) -> Self {
        let sock = bind();
        let addr = sock.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (got, stop) = (Arc::clone(&got), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65535];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        if echo {
                            sock.send_to(&buf[..n], from).unwrap();
                        }
                        got.lock().unwrap().push((from, buf[..n].to_vec()));
                    }
                }
            })
        };
        Self {
            addr,
            got,
            stop,
            thread: Some(thread),
        }
    }

    pub fn len(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    pub fn received(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn seq_of(d: &[u8]) -> u32 {
    u32::from_be_bytes(d[..4].try_into().unwrap())
}
