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
    dsm-coordinator --listen [::]:4200 --cert-dir /etc/dsm/certs\n  \
    RUST_LOG=dsm_coordinator=debug dsm-coordinator --listen 0.0.0.0:4200 --idle-timeout 5s\n\n\
    Certificates come from --cert-dir, else $DSM_CERT_DIR, else ~/.config/dsm/certs;\n\
    create dev certificates with `cargo xtask certs`."
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
    /// Log a status line per session this often (0 = never).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    status_interval: Duration,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = dsm_coordinator::Config::new(args.listen);
    if let Some(dir) = args.cert_dir {
        config.cert_dir = dir;
    }
    config.transport.idle_timeout = args.idle_timeout;
    config.transport.keep_alive = args.keep_alive;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let coordinator = dsm_coordinator::Coordinator::bind(&config)
            .with_context(|| format!("starting the coordinator on {}", config.listen))?;
        info!(
            addr = %coordinator.local_addr()?,
            cert_dir = %config.cert_dir.display(),
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
