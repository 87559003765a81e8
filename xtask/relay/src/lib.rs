//! `dsm-relay`: a UDP relay that simulates a lossy, slow, reordering and
//! duplicating link between DSM processes and the coordinator.
//!
//! `tc netem` is not available in the environments DSM is tested in, so this
//! crate provides the same kind of impairments in user space. A relay listens
//! on one address and forwards every datagram to a target address, in both
//! directions. Each distinct client source address gets its own upstream
//! socket (like a NAT), so the target sees distinct peers.
//!
//! Every direction of every flow has its own seeded RNG, so for a given
//! [`LinkConfig::seed`] the same sequence of datagrams receives the same
//! sequence of drop / duplicate / reorder / delay decisions. Two impairments
//! depend on time instead: a bandwidth limit ([`RateLimit`]: a link of a
//! fixed rate behind a drop-tail queue, per direction and flow) and an outage
//! ([`Outage`]: nothing passes in either direction for a while, on every flow
//! at once; [`Relay::begin_outage`] starts one on demand).
//!
//! * [`start`] runs the relay on the current tokio runtime and returns a
//!   [`Relay`] handle (stopped by [`Relay::shutdown`] or on drop).
//! * [`spawn`] runs it on a dedicated thread with its own runtime and returns a
//!   [`RelayThread`] handle, for callers that do not use tokio.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dsm_relay::RelayError> {
//! use std::time::Duration;
//! use dsm_relay::{LinkConfig, RelayConfig};
//!
//! let link = LinkConfig { loss: 0.05, delay: Duration::from_millis(20), ..LinkConfig::default() };
//! let relay = dsm_relay::start(RelayConfig {
//!     listen: "127.0.0.1:0".parse().unwrap(),
//!     to: "127.0.0.1:4433".parse().unwrap(),
//!     link,
//! })
//! .await?;
//! println!("point clients at {}", relay.local_addr());
//! # Ok(()) }
//! ```

mod config;
mod link;
mod outage;
mod rate;
mod relay;
mod thread;

pub use config::{LinkConfig, Outage, RateLimit, RelayConfig, RelayError, RelayStats};
pub use relay::{start, Relay, IDLE_TIMEOUT, MAX_DATAGRAM};
pub use thread::{spawn, RelayThread};
