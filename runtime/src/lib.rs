//! DSM: distributed shared memory for Linux x86-64 processes.
//!
//! Processes attach one named session through a coordinator (`dsm-coordinator`) over QUIC with
//! mutual TLS, synchronize with barriers and named semaphores, and (from the shared-region
//! milestone on) load and store one shared region.
//!
//! - [`Config`]: where the coordinator is, which session, how large, how many processes; from a
//!   builder or from `DSM_*` environment variables (see [`config`]).
//! - [`Session`]: rank, process count, [`Session::barrier`], [`Session::semaphore`]; detaches on
//!   drop.
//! - [`Error`]: every failure, with a message that says what to check.
//! - [`capi`]: the C API of `include/dsm/dsm.h` (`libdsm.a` / `libdsm.so`);
//!   [`Region::from_env`] for processes started by `dsm run` or `mpirun`.

pub mod capi;
mod client;
pub mod config;
pub mod decode;
mod env;
mod error;
mod fatal;
mod fault;
mod region;
pub mod replay_times;
mod session;
mod sys;

pub use config::{rank_hint, Config, ConfigBuilder, DEFAULT_COORDINATOR, DEFAULT_PORT};
pub use dsm_proto::{Rank, MAX_SEMAPHORE_NAME};
pub use error::{Error, Result};
pub use region::{Coherence, Plain, Region, RegionStats, Shareable, SharedCell, ViewError};
pub use replay_times::ReplayPathTimes;
pub use session::{Semaphore, Session};
