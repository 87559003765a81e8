//! `dsm-coordinator`: the server every DSM process connects to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use dsm_proto::units::parse_duration;
use tracing::info;

/// The DSM coordinator: hosts named sessions (barriers, semaphores, the shared region's page
/// directory) for processes that connect over QUIC with mutual TLS.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Examples:\n  \
    dsm-coordinator --listen 127.0.0.1:4200\n  \
    dsm-coordinator --listen 0.0.0.0:4200 --metrics 127.0.0.1:9477   # Prometheus text at /metrics\n  \
    dsm-coordinator --listen [::]:4200 --cert-dir /etc/dsm/certs\n  \
    dsm-coordinator --listen 0.0.0.0:4200 --workers 8   # a dedicated host serving many sessions\n  \
    dsm-coordinator --listen 0.0.0.0:4200 --busy-poll 0s   # never poll: its cores run compute jobs\n  \
    RUST_LOG=dsm_coordinator=debug dsm-coordinator --listen 0.0.0.0:4200 --idle-timeout 5s\n\n\
    Certificates come from --cert-dir, else $DSM_CERT_DIR, else ~/.config/dsm/certs; create them\n\
    with `dsm certs --san <this machine's name or address>` (the coordinator needs ca.pem,\n\
    coordinator.pem and coordinator.key). Processes and `dsm status` connect over QUIC: open\n\
    the --listen UDP port in the firewall. Logs go to stderr, coloured only on a terminal\n\
    (NO_COLOR=1 turns colours off there too); RUST_LOG sets the level (default info)."
)]
struct Args {
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:4200")]
    listen: SocketAddr,
    /// Directory holding ca.pem, coordinator.pem and coordinator.key.
    #[arg(long, env = "DSM_CERT_DIR")]
    cert_dir: Option<PathBuf>,
    /// A process silent for this long is declared lost (QUIC idle timeout).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Interval of QUIC keep-alives.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    keep_alive: Duration,
    /// Keep polling this long after each message instead of sleeping (0s: never). Saves a
    /// wake-up per message where sleeping is expensive (virtual machines), at the cost of CPU
    /// time while traffic flows (given up to any other runnable thread first).
    #[arg(long, default_value = "200us", value_parser = parse_duration)]
    busy_poll: Duration,
    /// Serve Prometheus metrics over plain HTTP at http://ADDR/metrics (unauthenticated: bind
    /// it to loopback or a monitoring network).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Log a status line per session this often (0 = never; `dsm status` shows more).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    status_interval: Duration,
    /// Worker threads serving connections [default: the machine's cores but one, at least one;
    /// a dedicated coordinator host with many sessions may want one per core].
    #[arg(long, env = "DSM_COORDINATOR_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// Never transfer pages directly between processes: every page goes through the
    /// coordinator (by default a session's pages travel from the process holding them to the
    /// one asking when every process of the session offers it; processes opt out with
    /// DSM_DIRECT=0). Direct transfers need UDP between the processes' machines.
    #[arg(long)]
    no_direct_transfers: bool,
}

fn main() -> anyhow::Result<()> {
    dsm_coordinator::use_one_heap_arena();
    let args = Args::parse();
    dsm_coordinator::logging::init("info");
    let mut config = dsm_coordinator::Config::new(args.listen);
    if let Some(dir) = args.cert_dir {
        config.cert_dir = dir;
    }
    config.transport.idle_timeout = args.idle_timeout;
    config.transport.keep_alive = args.keep_alive;
    config.transport.busy_poll = args.busy_poll;
    config.metrics = args.metrics;
    config.direct_transfers = !args.no_direct_transfers;
    // Sessions are served in parallel: connections' tasks run on every worker, each session's
    // messages under its own lock (see `workers.rs` for the default count).
    let workers = args.workers.map_or_else(dsm_coordinator::default_workers, usize::from);
    let rt = dsm_coordinator::runtime(workers).context("starting the tokio runtime")?;
    rt.block_on(async move {
        let coordinator = dsm_coordinator::Coordinator::bind(&config)
            .with_context(|| format!("starting the coordinator on {}", config.listen))?;
        info!(
            addr = %coordinator.local_addr()?,
            cert_dir = %config.cert_dir.display(),
            workers,
            "listening"
        );
        let shutdown = async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => info!("SIGTERM received"),
                _ = int.recv() => info!("SIGINT received"),
            }
        };
        if args.status_interval.is_zero() {
            coordinator.run(shutdown).await;
        } else {
            let status = coordinator.status_handle();
            let every = args.status_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    let lines = status();
                    if lines.is_empty() {
                        info!("no sessions");
                    }
                    for line in lines {
                        info!("{line}");
                    }
                }
            });
            coordinator.run(shutdown).await;
        }
        anyhow::Ok(())
    })
}
