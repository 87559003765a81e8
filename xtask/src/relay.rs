//! `cargo xtask relay`: a lossy UDP relay in front of a coordinator.

use std::net::SocketAddr;
use std::time::Duration;

use dsm_proto::units::parse_duration;

/// Forward UDP datagrams between clients and a coordinator, dropping, delaying, reordering and
/// duplicating them (deterministic for a seed). Jitter never reorders by itself; only --reorder
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
        };
        link.validate()?;
        Ok(link)
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let link = a.link.link()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let relay = dsm_relay::start(dsm_relay::RelayConfig { listen: a.listen, to: a.to, link }).await?;
        println!("relaying {} -> {} (Ctrl-C to stop)", relay.local_addr(), a.to);
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
