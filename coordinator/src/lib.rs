//! The DSM coordinator as a library: [`Coordinator::bind`] then [`Coordinator::run`] (or
//! [`spawn`] for a coordinator on its own thread, as tests and `cargo xtask` use it).
//!
//! - `registry.rs`: the sans-IO core (sessions, barriers, semaphores); `registry/running.rs` a
//!   running session; `registry/snapshot.rs` its read-only views for operators;
//! - `server.rs`: QUIC endpoint, one task pair per connection, frames in and out; `thread.rs`:
//!   a coordinator on a thread of its own ([`spawn`]);
//! - `status.rs`: answering status requests; `query.rs`: asking for them ([`StatusClient`]);
//! - `metrics.rs` (+ `metrics/http.rs`): Prometheus metrics and their `/metrics` endpoint;
//! - `journal.rs`: registry events as log lines; `logging.rs`: the binaries' log set-up;
//! - `workers.rs`: the runtime and its default number of worker threads.

mod homes;
mod journal;
pub mod logging;
mod metrics;
mod query;
mod registry;
mod server;
mod status;
mod thread;
mod workers;

pub use metrics::{Metrics, CONTENT_TYPE as METRICS_CONTENT_TYPE};
pub use query::{QueryError, StatusClient};
pub use registry::{ConnId, EndedSession, Event, FollowUp, MemberHandle, Output, Registry, SessionCounts, SessionStats};
pub use server::{Config, Coordinator, ServeError};
pub use thread::{spawn, CoordinatorThread};
pub use homes::use_one_heap_arena;
pub use status::unix_ms;
pub use workers::{default_workers, runtime};

pub use dsm_proto::close_code;
