//! `cargo xtask relay`: a lossy UDP relay in front of a coordinator.

use std::net::SocketAddr;
use std::time::Duration;

use dsm_proto::units::{parse_duration, parse_size};

/// Examples of `cargo xtask relay`, shown by `--help`.
pub const EXAMPLES: &str = "Examples:\n  \
    cargo xtask relay --listen 127.0.0.1:5000 --to 127.0.0.1:4770 --loss 0.05 --delay 10ms --jitter 5ms\n  \
    cargo xtask relay --listen 127.0.0.1:5000 --to 127.0.0.1:4770 --delay 2ms --jitter 1ms --reorder 0.01 --duplicate 0.01\n  \
    cargo xtask relay --listen 127.0.0.1:5000 --to 127.0.0.1:4770 --outage-at 5s --outage-for 3s   # 3 s of 100% loss\n  \
    cargo xtask relay --listen 127.0.0.1:5000 --to 127.0.0.1:4770 --rate 100 --queue 512KiB --delay 5ms  # a 100 Mbit/s link";

/// Forward UDP datagrams between clients and a coordinator, dropping, delaying, reordering and
/// duplicating them (deterministic for a seed), optionally through a rate-limited link with a
/// drop-tail queue and with an outage window. Jitter never reorders by itself; only --reorder
/// does. Point clients at --listen instead of the coordinator.
#[derive(clap::Args)]
pub struct Args {
    /// Address clients send to.
    #[arg(long)]
    listen: SocketAddr,
    /// The coordinator's address.
    #[arg(long)]
    to: SocketAddr,
    #[command(flatten)]
    link: LinkArgs,
}

/// The link a relay simulates (shared by `relay` and `itest`).
#[derive(clap::Args, Clone)]
pub struct LinkArgs {
    /// Probability of dropping a datagram (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// One-way delay (e.g. 10ms).
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub delay: Duration,
    /// Uniform jitter around the delay (at most the delay).
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub jitter: Duration,
    /// Probability of holding a datagram back so later ones overtake it.
    #[arg(long, default_value_t = 0.0)]
    pub reorder: f64,
    /// Probability of sending a datagram twice.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate: f64,
    /// Seed of the random decisions.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Bandwidth of each direction of each flow, in Mbit/s (e.g. 100 or 0.5); unlimited when absent.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Queue in front of the --rate link (default 256KiB); datagrams that do not fit are dropped.
    #[arg(long, requires = "rate", value_parser = parse_size)]
    pub queue: Option<u64>,
    /// Start of an outage (100% loss both ways), measured from the first datagram (e.g. 5s).
    #[arg(long, requires = "outage_for", value_parser = parse_duration)]
    pub outage_at: Option<Duration>,
    /// Length of the outage (e.g. 3s).
    #[arg(long, requires = "outage_at", value_parser = parse_duration)]
    pub outage_for: Option<Duration>,
}

impl LinkArgs {
    /// The relay's link configuration, validated.
    pub fn link(&self) -> anyhow::Result<dsm_relay::LinkConfig> {
        let link = dsm_relay::LinkConfig {
            loss: self.loss,
            delay: self.delay,
            jitter: self.jitter,
            reorder: self.reorder,
            duplicate: self.duplicate,
            seed: self.seed,
            rate: match self.rate {
                None => None,
                Some(mbit_per_s) => {
                    let queue = self.queue.unwrap_or(dsm_relay::RateLimit::DEFAULT_QUEUE as u64);
                    let queue_bytes = usize::try_from(queue)
                        .map_err(|_| anyhow::anyhow!("--queue {queue} is larger than this machine can address"))?;
                    Some(dsm_relay::RateLimit { mbit_per_s, queue_bytes })
                }
            },
            outage: self
                .outage_at
                .zip(self.outage_for)
                .map(|(at, duration)| dsm_relay::Outage { at, duration }),
        };
        link.validate()?;
        Ok(link)
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let link = a.link.link()?;
    let link_outage = link.outage;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let relay = dsm_relay::start(dsm_relay::RelayConfig { listen: a.listen, to: a.to, link }).await?;
        println!("relaying {} -> {} (Ctrl-C to stop)", relay.local_addr(), a.to);
        if let Some(o) = link_outage {
            println!("outage: {:?} of 100% loss from {:?} after the first datagram", o.duration, o.at);
        }
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = tick.tick() => println!("{}", relay.stats()),
            }
        }
        println!("{}", relay.stats());
        relay.shutdown();
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        link: LinkArgs,
    }

    fn parse(args: &[&str]) -> Result<dsm_relay::LinkConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("relay").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        cli.link.link().map_err(|e| e.to_string())
    }

    #[test]
    fn outage_and_rate_options() {
        let link = parse(&["--outage-at", "5s", "--outage-for", "1500ms", "--rate", "0.5", "--queue", "64KiB"]).unwrap();
        assert_eq!(
            link.outage,
            Some(dsm_relay::Outage { at: Duration::from_secs(5), duration: Duration::from_millis(1500) })
        );
        assert_eq!(link.rate, Some(dsm_relay::RateLimit { mbit_per_s: 0.5, queue_bytes: 64 << 10 }));
        assert!(!link.is_passthrough());
        let link = parse(&["--rate", "100"]).unwrap();
        assert_eq!(link.rate.map(|r| r.queue_bytes), Some(dsm_relay::RateLimit::DEFAULT_QUEUE));
        assert!(parse(&[]).unwrap().is_passthrough());
    }

    #[test]
    fn bad_outage_and_rate_options_are_clear_errors() {
        let e = parse(&["--outage-at", "5s"]).unwrap_err();
        assert!(e.contains("--outage-for"), "{e}");
        let e = parse(&["--outage-for", "5s"]).unwrap_err();
        assert!(e.contains("--outage-at"), "{e}");
        let e = parse(&["--outage-at", "1s", "--outage-for", "0s"]).unwrap_err();
        assert!(e.contains("outage must last a positive time"), "{e}");
        let e = parse(&["--outage-at", "soon", "--outage-for", "1s"]).unwrap_err();
        assert!(e.contains("not a duration"), "{e}");
        let e = parse(&["--queue", "1MiB"]).unwrap_err();
        assert!(e.contains("--rate"), "{e}");
        let e = parse(&["--rate", "0"]).unwrap_err();
        assert!(e.contains("rate must be a positive number of Mbit/s"), "{e}");
        let e = parse(&["--rate", "10", "--queue", "0"]).unwrap_err();
        assert!(e.contains("queue"), "{e}");
        let e = parse(&["--rate", "10", "--queue", "lots"]).unwrap_err();
        assert!(e.contains("not a size"), "{e}");
    }
}
