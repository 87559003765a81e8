//! The raw quinn floors, measured in every run: `quinn.rtt_64b`, `quinn.rtt_4k` and
//! `quinn.stream` (see the binary's documentation for what each one is), plus the same
//! exchanges through the lossy relay for the `lossy` module.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{median, median_us, Figure};

const QUINN_WARMUP: usize = 200;
const QUINN_ROUNDS: usize = 2000;
/// `quinn.rtt_4k`: request and response sizes.
const FETCH_REQUEST: usize = 16;
const FETCH_RESPONSE: usize = 4096;
/// `quinn.stream`: message size, byte budget and time budget.
const STREAM_MSG: usize = 4096;
const STREAM_BYTES: u64 = 256 << 20;
const STREAM_TIME: Duration = Duration::from_secs(1);
/// `quinn.stream`: runs (the floor is their median).
const STREAM_RUNS: usize = 3;

/// Measures the raw quinn floors (always, whatever the filter) and adds them to `figures`.
pub(super) fn measure(cert_dir: &Path, figures: &mut Vec<Figure>) -> Result<()> {
    let rtt = quinn_bench(cert_dir, QuinnLoad::Echo { request: 64, response: 64 })
        .context("measuring quinn.rtt_64b")?;
    figures.push(Figure::floor("quinn.rtt_64b", median_us(&rtt.rtts), "us"));
    let fetch = quinn_bench(
        cert_dir,
        QuinnLoad::Echo { request: FETCH_REQUEST, response: FETCH_RESPONSE },
    )
    .context("measuring quinn.rtt_4k")?;
    figures.push(Figure::floor("quinn.rtt_4k", median_us(&fetch.rtts), "us"));
    // The stream's throughput swings up to 2x between runs a few seconds apart on a shared
    // 2-core machine (896-1768 MB/s in six runs): the floor is the median of STREAM_RUNS.
    let mut rates = Vec::with_capacity(STREAM_RUNS);
    for _ in 0..STREAM_RUNS {
        rates.push(quinn_bench(cert_dir, QuinnLoad::Stream).context("measuring quinn.stream")?.mb_per_s);
    }
    figures.push(Figure::floor("quinn.stream", median(rates), "MB/s"));
    Ok(())
}

/// What the raw quinn benchmark sends.
#[derive(Clone, Copy)]
pub(super) enum QuinnLoad {
    /// Round trips: `request` bytes out, `response` bytes back, timed one by one.
    Echo { request: usize, response: usize },
    /// One-way stream of `STREAM_MSG`-byte writes, counted by the server.
    Stream,
}

/// Results of [`quinn_bench`]: round trips for `Echo`, throughput for `Stream`.
#[derive(Default)]
pub(super) struct QuinnResult {
    pub(super) rtts: Vec<Duration>,
    pub(super) mb_per_s: f64,
    /// What the relay did, if there was one.
    pub(super) relay: Option<dsm_relay::RelayStats>,
}

/// Raw quinn: a server thread and a client in this thread, each on its own current-thread
/// runtime, one bidirectional stream carrying `load`.
fn quinn_bench(cert_dir: &Path, load: QuinnLoad) -> Result<QuinnResult> {
    quinn_bench_via(cert_dir, load, None, QUINN_ROUNDS)
}

/// [`quinn_bench`] with `rounds` timed round trips (for `Echo`), the client talking to the server
/// through a relay with `link` if given.
pub(super) fn quinn_bench_via(
    cert_dir: &Path,
    load: QuinnLoad,
    link: Option<dsm_relay::LinkConfig>,
    rounds: usize,
) -> Result<QuinnResult> {
    let transport = dsm_cert::Transport::default();
    // Both ends on loopback, as the DSM's own connections in these benchmarks.
    let loopback = std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST);
    let server_config = dsm_cert::quic_server_config(cert_dir, &transport, loopback).context("quinn server config")?;
    let tls = dsm_cert::client_tls_config(cert_dir).context("client TLS config")?;
    let client_config = dsm_cert::quic_client_config(tls, &transport, loopback).context("quinn client config")?;

    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let server = std::thread::Builder::new()
        .name("quinn-server".into())
        .spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let endpoint = dsm_cert::endpoint("127.0.0.1:0".parse()?, Some(server_config))
                    .context("binding the server")?;
                let _ = addr_tx.send(endpoint.local_addr()?);
                let incoming = tokio::time::timeout(Duration::from_secs(10), endpoint.accept())
                    .await
                    .context("no client connected within 10 s")?
                    .context("endpoint closed")?;
                let conn = incoming.await.context("accepting the connection")?;
                let (mut send, mut recv) = conn.accept_bi().await.context("accepting the stream")?;
                match load {
                    QuinnLoad::Echo { request, response } => {
                        let mut buf = vec![0u8; request];
                        let answer = vec![0xa5u8; response];
                        loop {
                            match recv.read_exact(&mut buf).await {
                                Ok(()) => send.write_all(&answer).await.context("answer write")?,
                                Err(quinn::ReadExactError::FinishedEarly(0)) => break,
                                Err(e) => return Err(e).context("request read"),
                            }
                        }
                    }
                    QuinnLoad::Stream => {
                        let mut buf = vec![0u8; 64 << 10];
                        let mut total = 0u64;
                        while let Some(n) = recv.read(&mut buf).await.context("stream read")? {
                            total += n as u64;
                        }
                        send.write_all(&total.to_le_bytes()).await.context("count write")?;
                    }
                }
                send.finish()?;
                conn.closed().await;
                endpoint.wait_idle().await;
                Ok(())
            })
        })
        .context("starting the quinn server thread")?;
    let Ok(addr) = addr_rx.recv() else {
        return Err(match server.join() {
            Ok(Err(e)) => e,
            _ => anyhow::anyhow!("the quinn server thread ended without an address"),
        });
    };
    let relay = match link {
        None => None,
        Some(link) => Some(
            dsm_relay::spawn(dsm_relay::RelayConfig { listen: "127.0.0.1:0".parse()?, to: addr, link })
                .context("starting the relay")?,
        ),
    };
    let addr = relay.as_ref().map_or(addr, dsm_relay::RelayThread::local_addr);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = rt.block_on(async move {
        let mut endpoint = dsm_cert::endpoint("127.0.0.1:0".parse()?, None).context("binding the client")?;
        endpoint.set_default_client_config(client_config);
        // Bounded as the server's accept is: a handshake that never completes (a congestion
        // window holding no packet once did that) is an error, not a hang.
        let conn = tokio::time::timeout(Duration::from_secs(10), endpoint.connect(addr, "localhost")?)
            .await
            .context("no connection to the quinn server within 10 s")?
            .context("connecting")?;
        let (mut send, mut recv) = conn.open_bi().await.context("opening a stream")?;
        let mut result = QuinnResult::default();
        match load {
            QuinnLoad::Echo { request, response } => {
                let out = vec![0x5au8; request];
                let mut back = vec![0u8; response];
                result.rtts.reserve(rounds);
                for i in 0..QUINN_WARMUP + rounds {
                    let t = Instant::now();
                    send.write_all(&out).await.context("write")?;
                    recv.read_exact(&mut back).await.context("read")?;
                    let took = t.elapsed();
                    if i >= QUINN_WARMUP {
                        result.rtts.push(took);
                    }
                }
                send.finish()?;
            }
            QuinnLoad::Stream => {
                let msg = vec![0x5au8; STREAM_MSG];
                let mut sent = 0u64;
                let t = Instant::now();
                while sent < STREAM_BYTES {
                    send.write_all(&msg).await.context("stream write")?;
                    sent += STREAM_MSG as u64;
                    if sent.is_multiple_of(1 << 20) && t.elapsed() >= STREAM_TIME {
                        break;
                    }
                }
                send.finish()?;
                let mut count = [0u8; 8];
                recv.read_exact(&mut count).await.context("reading the server's count")?;
                let took = t.elapsed();
                let counted = u64::from_le_bytes(count);
                anyhow::ensure!(counted == sent, "server counted {counted} bytes, {sent} were sent");
                result.mb_per_s = sent as f64 / took.as_secs_f64() / 1e6;
            }
        }
        let rest = recv
            .read_to_end(64)
            .await
            .context("waiting for the server's stream to finish")?;
        anyhow::ensure!(rest.is_empty(), "unexpected {} trailing bytes", rest.len());
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        Ok::<_, anyhow::Error>(result)
    });
    let served = server
        .join()
        .map_err(|_| anyhow::anyhow!("the quinn server thread panicked"))?;
    let mut result = client?;
    served.context("quinn server")?;
    result.relay = relay.map(|r| r.stats());
    Ok(result)
}

