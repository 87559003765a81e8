//! Session configuration: a builder, and `DSM_*` environment variables for launchers.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `DSM_COORDINATOR` | coordinator address, `host:port` | `127.0.0.1:4200` |
//! | `DSM_SERVER_NAME` | name in the coordinator's certificate | the host part of the address |
//! | `DSM_SESSION` | session name | required |
//! | `DSM_SIZE` | region size (`4096`, `64MiB`, `1GiB`) | required |
//! | `DSM_NPROCS` | number of processes (else `OMPI_COMM_WORLD_SIZE`, else `PMI_SIZE`) | required |
//! | `DSM_RANK` | launch-order rank hint (else `OMPI_COMM_WORLD_RANK`, `PMI_RANK`); informational: ranks are assigned in attach order | - |
//! | `DSM_CERT_DIR` | directory with `ca.pem`, `client.pem`, `client.key` | `~/.config/dsm/certs` |
//! | `DSM_ATTACH_TIMEOUT` | how long to wait for all processes (`30s`) | `60s` |
//! | `DSM_IDLE_TIMEOUT` | declare the coordinator lost after this silence (at least 3 keep-alives) | `10s` |
//! | `DSM_KEEP_ALIVE` | send a keep-alive after this much silence | `1s` |
//! | `DSM_BUSY_POLL` | keep the runtime thread polling this long after traffic (`0s`: never; see [`dsm_cert::BusyPoll`]) | `200us` |
//! | `DSM_DIRECT` | take direct page transfers from other processes (`1`/`on`; `0`/`off`: every page goes through the coordinator) | `1` |

use std::path::PathBuf;
use std::time::Duration;

use dsm_proto::units::{parse_duration, parse_size};

use crate::error::{Error, Result};

/// Variables giving the process count, in order of precedence: ours, Open MPI's, then the PMI
/// ones of MPICH / Intel MPI / Slurm (`mpirun -n 4 ./prog` works when `DSM_COORDINATOR` is set).
pub const NPROCS_VARS: [&str; 3] = ["DSM_NPROCS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"];

/// Variables giving a launch-order rank hint, in order of precedence. Informational only: ranks
/// are assigned by the coordinator in attach order, whatever these say.
pub const RANK_HINT_VARS: [&str; 3] = ["DSM_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"];

/// The launcher's rank hint for this process (see [`RANK_HINT_VARS`]), if any. The rank a
/// process actually gets ([`crate::Region::rank`]) is assigned in attach order and may differ.
pub fn rank_hint() -> Option<u32> {
    RANK_HINT_VARS
        .iter()
        .find_map(|name| std::env::var(name).ok().and_then(|v| v.trim().parse().ok()))
}

/// Default coordinator port.
pub const DEFAULT_PORT: u16 = 4200;

/// Default coordinator address.
pub const DEFAULT_COORDINATOR: &str = "127.0.0.1:4200";

/// How to attach a session. Build with [`Config::builder`] or [`Config::from_env`].
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) coordinator: String,
    pub(crate) server_name: Option<String>,
    pub(crate) session: String,
    pub(crate) size: u64,
    pub(crate) nprocs: u32,
    pub(crate) cert_dir: PathBuf,
    pub(crate) attach_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) transport: dsm_cert::Transport,
    pub(crate) hello_version: u16,
    pub(crate) client_cert: Option<(PathBuf, PathBuf)>,
    /// Offer direct page transfers: serve peer connections and send a peer fingerprint in the
    /// attach (the coordinator decides whether the session uses them).
    pub(crate) direct: bool,
}

impl Config {
    /// A builder with defaults; session, size and process count must be set.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// Reads the `DSM_*` variables (see the module docs).
    pub fn from_env() -> Result<Config> {
        ConfigBuilder::default().env_overrides()?.build()
    }

    /// The session name.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// Region size in bytes (rounded up to whole pages).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Number of processes.
    pub fn nprocs(&self) -> u32 {
        self.nprocs
    }

    /// The coordinator address.
    pub fn coordinator(&self) -> &str {
        &self.coordinator
    }

    /// Whether this process offers direct page transfers (see
    /// [`ConfigBuilder::direct_transfers`]).
    pub fn direct_transfers(&self) -> bool {
        self.direct
    }
}

/// Builder for [`Config`].
#[derive(Debug, Clone, Default)]
pub struct ConfigBuilder {
    coordinator: Option<String>,
    server_name: Option<String>,
    session: Option<String>,
    size: Option<u64>,
    nprocs: Option<u32>,
    cert_dir: Option<PathBuf>,
    attach_timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    keep_alive: Option<Duration>,
    busy_poll: Option<Duration>,
    hello_version: Option<u16>,
    client_cert: Option<(PathBuf, PathBuf)>,
    direct: Option<bool>,
}

impl ConfigBuilder {
    /// Coordinator address, `host:port` (default `127.0.0.1:4200`).
    pub fn coordinator(mut self, addr: impl Into<String>) -> Self {
        self.coordinator = Some(addr.into());
        self
    }
    /// Name to expect in the coordinator's certificate (default: the host of the address).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }
    /// Session name.
    pub fn session(mut self, name: impl Into<String>) -> Self {
        self.session = Some(name.into());
        self
    }
    /// Region size in bytes; rounded up to whole pages.
    pub fn size(mut self, bytes: u64) -> Self {
        self.size = Some(bytes);
        self
    }
    /// Number of processes in the session.
    pub fn nprocs(mut self, n: u32) -> Self {
        self.nprocs = Some(n);
        self
    }
    /// Certificate directory (default: `DSM_CERT_DIR`, else `~/.config/dsm/certs`).
    pub fn cert_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cert_dir = Some(dir.into());
        self
    }
    /// How long attach waits for all processes (default 60 s).
    pub fn attach_timeout(mut self, t: Duration) -> Self {
        self.attach_timeout = Some(t);
        self
    }
    /// How long to wait for the coordinator to answer at all (default 10 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = Some(t);
        self
    }
    /// Silence after which the coordinator is declared lost (default 10 s).
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = Some(t);
        self
    }
    /// Interval of keep-alive packets (default 1 s).
    pub fn keep_alive(mut self, t: Duration) -> Self {
        self.keep_alive = Some(t);
        self
    }
    /// How long the runtime thread keeps polling after traffic instead of sleeping (default
    /// 200 µs; zero: never). Polling saves a wake-up per message where sleeping is expensive
    /// (virtual machines) and costs CPU time while traffic flows (given up to any other
    /// runnable thread first). See [`dsm_cert::BusyPoll`].
    pub fn busy_poll(mut self, t: Duration) -> Self {
        self.busy_poll = Some(t);
        self
    }
    /// Present this certificate and key instead of the cert directory's `client.pem`.
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }
    /// Offer direct page transfers (default on): the process serves peer connections from
    /// the other members on its own UDP socket, so pages another process holds can come
    /// straight from it rather than through the coordinator. The coordinator forwards only
    /// when every member of a session offers them; off, every page goes through the
    /// coordinator. They make reads of pages another process wrote faster (no page bytes
    /// cross the coordinator); a member the others cannot reach over UDP (a NAT, a firewall)
    /// costs one peer connect timeout per link, then its pages go through the coordinator.
    /// Environment: `DSM_DIRECT=0` turns them off.
    pub fn direct_transfers(mut self, on: bool) -> Self {
        self.direct = Some(on);
        self
    }
    /// Speak another protocol version in the hello (tests of the mismatch error only).
    #[doc(hidden)]
    pub fn hello_version(mut self, v: u16) -> Self {
        self.hello_version = Some(v);
        self
    }

    /// Fills every field not set yet from the `DSM_*` environment variables.
    pub fn env_overrides(mut self) -> Result<Self> {
        fn var(name: &str) -> Option<String> {
            std::env::var(name).ok().filter(|v| !v.trim().is_empty())
        }
        fn bad(name: &str, e: impl std::fmt::Display) -> Error {
            Error::Config(format!("{name}: {e}"))
        }
        if self.coordinator.is_none() {
            self.coordinator = var("DSM_COORDINATOR");
        }
        if self.server_name.is_none() {
            self.server_name = var("DSM_SERVER_NAME");
        }
        if self.session.is_none() {
            self.session = var("DSM_SESSION");
        }
        if self.size.is_none() {
            if let Some(v) = var("DSM_SIZE") {
                self.size = Some(parse_size(&v).map_err(|e| bad("DSM_SIZE", e))?);
            }
        }
        if self.nprocs.is_none() {
            // DSM_NPROCS first, then the MPI launchers' world size (`mpirun -n 4 ./prog`).
            for name in NPROCS_VARS {
                if let Some(v) = var(name) {
                    self.nprocs = Some(v.trim().parse().map_err(|e| bad(name, e))?);
                    break;
                }
            }
        }
        if self.cert_dir.is_none() {
            self.cert_dir = var("DSM_CERT_DIR").map(PathBuf::from);
        }
        if self.attach_timeout.is_none() {
            if let Some(v) = var("DSM_ATTACH_TIMEOUT") {
                self.attach_timeout = Some(parse_duration(&v).map_err(|e| bad("DSM_ATTACH_TIMEOUT", e))?);
            }
        }
        if self.idle_timeout.is_none() {
            if let Some(v) = var("DSM_IDLE_TIMEOUT") {
                self.idle_timeout = Some(parse_duration(&v).map_err(|e| bad("DSM_IDLE_TIMEOUT", e))?);
            }
        }
        if self.keep_alive.is_none() {
            if let Some(v) = var("DSM_KEEP_ALIVE") {
                self.keep_alive = Some(parse_duration(&v).map_err(|e| bad("DSM_KEEP_ALIVE", e))?);
            }
        }
        if self.busy_poll.is_none() {
            if let Some(v) = var("DSM_BUSY_POLL") {
                self.busy_poll = Some(parse_duration(&v).map_err(|e| bad("DSM_BUSY_POLL", e))?);
            }
        }
        if self.direct.is_none() {
            if let Some(v) = var("DSM_DIRECT") {
                self.direct = Some(parse_switch(&v).map_err(|e| bad("DSM_DIRECT", e))?);
            }
        }
        Ok(self)
    }

    /// Checks and finishes the configuration.
    pub fn build(self) -> Result<Config> {
        let session = self.session.ok_or_else(|| {
            Error::Config("no session name: call .session(..) or set DSM_SESSION".into())
        })?;
        dsm_proto::check_session_name(&session)?;
        let size = self
            .size
            .ok_or_else(|| Error::Config("no region size: call .size(..) or set DSM_SIZE".into()))?;
        let size = dsm_proto::round_up_to_pages(size);
        dsm_proto::check_region_size(size).map_err(|e| Error::Config(e.to_string()))?;
        let nprocs = self.nprocs.ok_or_else(|| {
            Error::Config("no process count: call .nprocs(..) or set DSM_NPROCS".into())
        })?;
        if nprocs == 0 || nprocs > dsm_proto::MAX_PROCESSES {
            return Err(Error::Config(format!(
                "process count {nprocs} must be between 1 and {}",
                dsm_proto::MAX_PROCESSES
            )));
        }
        let mut transport = dsm_cert::Transport::default();
        if let Some(t) = self.idle_timeout {
            transport.idle_timeout = t;
        }
        if let Some(t) = self.keep_alive {
            transport.keep_alive = t;
        }
        if let Some(t) = self.busy_poll {
            transport.busy_poll = t;
        }
        transport.validate().map_err(|e| Error::Config(e.to_string()))?;
        Ok(Config {
            coordinator: self.coordinator.unwrap_or_else(|| DEFAULT_COORDINATOR.to_string()),
            server_name: self.server_name,
            session,
            size,
            nprocs,
            cert_dir: self.cert_dir.unwrap_or_else(dsm_cert::default_dir),
            attach_timeout: self.attach_timeout.unwrap_or(Duration::from_secs(60)),
            connect_timeout: self.connect_timeout.unwrap_or(Duration::from_secs(10)),
            transport,
            hello_version: self.hello_version.unwrap_or(dsm_proto::PROTOCOL_VERSION),
            client_cert: self.client_cert,
            direct: self.direct.unwrap_or(true),
        })
    }
}

/// An on/off setting: `1`, `on`, `true`, `yes` or `0`, `off`, `false`, `no` (any case).
pub(crate) fn parse_switch(v: &str) -> std::result::Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "on" | "true" | "yes" => Ok(true),
        "0" | "off" | "false" | "no" => Ok(false),
        other => Err(format!("'{other}' is not a switch (use 1/on/true/yes or 0/off/false/no)")),
    }
}

/// Splits `host:port` (or `[v6]:port`) and returns the host for TLS server-name checks.
pub(crate) fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_requires_session_size_nprocs() {
        let e = Config::builder().size(1).nprocs(1).build().unwrap_err();
        assert!(e.to_string().contains("DSM_SESSION"), "{e}");
        let c = Config::builder().session("s").size(1).nprocs(2).build().unwrap();
        assert_eq!(c.size(), 4096);
        assert_eq!(c.coordinator(), DEFAULT_COORDINATOR);
        assert!(Config::builder().session("s").size(1).nprocs(0).build().is_err());
    }

    #[test]
    fn an_idle_timeout_below_the_keep_alive_is_a_clear_error() {
        let b = || Config::builder().session("s").size(1).nprocs(1);
        let e = b().idle_timeout(Duration::from_millis(1)).build().unwrap_err();
        assert!(matches!(e, Error::Config(_)) && e.to_string().contains("keep-alive"), "{e}");
        let ok = b().idle_timeout(Duration::from_secs(2)).keep_alive(Duration::from_millis(500)).build();
        assert!(ok.is_ok());
    }

    #[test]
    fn keep_alive_and_idle_timeout_from_the_environment() {
        // The only test of this crate that touches these variables (the environment is
        // process-wide).
        let base = || Config::builder().session("s").size(1).nprocs(1);
        std::env::set_var("DSM_KEEP_ALIVE", "250ms");
        std::env::set_var("DSM_IDLE_TIMEOUT", "30s");
        let c = base().env_overrides().unwrap().build().unwrap();
        assert_eq!(c.transport.keep_alive, Duration::from_millis(250));
        assert_eq!(c.transport.idle_timeout, Duration::from_secs(30));
        // The builder wins over the environment.
        let c = base().keep_alive(Duration::from_secs(2)).env_overrides().unwrap().build().unwrap();
        assert_eq!(c.transport.keep_alive, Duration::from_secs(2));
        std::env::set_var("DSM_KEEP_ALIVE", "often");
        let e = base().env_overrides().unwrap_err().to_string();
        std::env::remove_var("DSM_KEEP_ALIVE");
        std::env::remove_var("DSM_IDLE_TIMEOUT");
        assert!(e.contains("DSM_KEEP_ALIVE") && e.contains("often"), "{e}");
        let c = base().env_overrides().unwrap().build().unwrap();
        assert_eq!(c.transport.keep_alive, dsm_cert::Transport::default().keep_alive);
        // Busy polling: on by default, set or turned off from the environment, the builder wins.
        assert_eq!(c.transport.busy_poll, dsm_cert::BUSY_POLL_BUDGET);
        assert!(!c.transport.busy_poll.is_zero());
        std::env::set_var("DSM_BUSY_POLL", "0s");
        let off = base().env_overrides().unwrap().build().unwrap();
        std::env::set_var("DSM_BUSY_POLL", "50us");
        let short = base().env_overrides().unwrap().build().unwrap();
        let built = base().busy_poll(Duration::from_millis(1)).env_overrides().unwrap().build().unwrap();
        std::env::set_var("DSM_BUSY_POLL", "soon");
        let e = base().env_overrides().unwrap_err().to_string();
        std::env::remove_var("DSM_BUSY_POLL");
        assert_eq!(off.transport.busy_poll, Duration::ZERO);
        assert_eq!(short.transport.busy_poll, Duration::from_micros(50));
        assert_eq!(built.transport.busy_poll, Duration::from_millis(1));
        assert!(e.contains("DSM_BUSY_POLL") && e.contains("soon"), "{e}");
        // Direct transfers: on by default, off from the environment, the builder wins.
        assert!(c.direct_transfers());
        std::env::set_var("DSM_DIRECT", "0");
        let off = base().env_overrides().unwrap().build().unwrap();
        let on = base().direct_transfers(true).env_overrides().unwrap().build().unwrap();
        std::env::set_var("DSM_DIRECT", "maybe");
        let e = base().env_overrides().unwrap_err().to_string();
        std::env::remove_var("DSM_DIRECT");
        assert!(!off.direct_transfers());
        assert!(on.direct_transfers());
        assert!(e.contains("DSM_DIRECT") && e.contains("maybe"), "{e}");
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("127.0.0.1:4200"), "127.0.0.1");
        assert_eq!(host_of("[::1]:4200"), "::1");
        assert_eq!(host_of("example.org:1"), "example.org");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
