//! The DSM coordinator as a library: [`Coordinator::bind`] then [`Coordinator::run`] (or
//! [`spawn`] for a coordinator on its own thread, as tests and `cargo xtask` use it).
//!
//! - `registry.rs`: the sans-IO core (sessions, barriers, semaphores);
//! - `server.rs`: QUIC endpoint, one task pair per connection, frames in and out.

mod registry;
mod server;

pub use registry::{ConnId, EndedSession, Output, Registry, SessionStats};
pub use server::{spawn, Config, Coordinator, CoordinatorThread, ServeError};

pub use dsm_proto::close_code;
