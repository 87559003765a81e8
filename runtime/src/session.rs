//! The blocking session handle users hold: rank, process count, barriers, semaphores.

use std::time::{Duration, Instant};

use dsm_proto::Rank;
use parking_lot::Mutex;

use crate::client::{Client, Command};
use crate::config::Config;
use crate::error::{Error, Result};

/// Membership in a running session. Detaches on drop.
///
/// ```no_run
/// let config = dsm::Config::builder().session("demo").size(1 << 20).nprocs(2).build()?;
/// let session = dsm::Session::attach(&config)?;
/// println!("rank {} of {}", session.rank(), session.nprocs());
/// session.barrier()?;
/// if session.rank() == 0 {
///     session.semaphore("ready")?.post()?;
/// } else {
///     session.semaphore("ready")?.wait()?;
/// }
/// # Ok::<(), dsm::Error>(())
/// ```
pub struct Session {
    client: Option<Client>,
    /// Serializes barriers of one process: a barrier is entered once per process.
    barrier: Mutex<()>,
    session: String,
}

impl Session {
    /// Connects to the coordinator and joins the session; returns once every process attached.
    pub fn attach(config: &Config) -> Result<Session> {
        let client = Client::attach(config)?;
        Ok(Session { client: Some(client), barrier: Mutex::new(()), session: config.session.clone() })
    }

    pub(crate) fn from_client(client: Client, config: &Config) -> Session {
        Session { client: Some(client), barrier: Mutex::new(()), session: config.session.clone() }
    }

    pub(crate) fn client_ref(&self) -> Result<&Client> {
        self.client()
    }

    fn client(&self) -> Result<&Client> {
        self.client.as_ref().ok_or(Error::Detached)
    }

    /// This process's rank, `0..nprocs()`, in attach order.
    pub fn rank(&self) -> Rank {
        self.client.as_ref().map_or(0, |c| c.info.rank)
    }

    /// Number of processes in the session.
    pub fn nprocs(&self) -> u32 {
        self.client.as_ref().map_or(0, |c| c.info.nprocs)
    }

    /// Region size in bytes.
    pub fn size(&self) -> u64 {
        self.client.as_ref().map_or(0, |c| c.info.size)
    }

    /// The session's name.
    pub fn name(&self) -> &str {
        &self.session
    }

    /// Blocks until every process of the session entered this barrier. Fails (never hangs) when
    /// a process was lost or detached.
    pub fn barrier(&self) -> Result<()> {
        let _one_at_a_time = self.barrier.lock();
        self.client()?.call(Command::Barrier)
    }

    /// A named counting semaphore of the session, created at 0 on first use. Names are at most
    /// [`dsm_proto::MAX_SEMAPHORE_NAME`] bytes; longer names are an error, never truncated.
    pub fn semaphore(&self, name: &str) -> Result<Semaphore<'_>> {
        dsm_proto::check_semaphore_name(name)?;
        Ok(Semaphore { session: self, name: name.to_string() })
    }

    /// Round trip of `payload` through the coordinator (for measurements).
    pub fn ping(&self, payload: Vec<u8>) -> Result<Duration> {
        let start = Instant::now();
        let back = self.client()?.call(|r| Command::Ping(payload, r))?;
        let took = start.elapsed();
        drop(back);
        Ok(took)
    }

    /// Leaves the session. Dropping the session does the same, ignoring errors.
    pub fn detach(mut self) -> Result<()> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<()> {
        let Some(client) = self.client.take() else { return Ok(()) };
        let r = client.call(Command::Detach);
        drop(client);
        r
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Err(e) = self.detach_inner() {
            tracing::debug!("detach on drop: {e}");
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("session", &self.session)
            .field("rank", &self.rank())
            .field("nprocs", &self.nprocs())
            .finish()
    }
}

/// A named counting semaphore (see [`Session::semaphore`]).
#[derive(Debug)]
pub struct Semaphore<'a> {
    session: &'a Session,
    name: String,
}

impl Semaphore<'_> {
    /// Decrements the semaphore, blocking while it is zero.
    pub fn wait(&self) -> Result<()> {
        let name = self.name.clone();
        self.session.client()?.call(|r| Command::SemaphoreWait(name, r))
    }

    /// Increments the semaphore, waking its oldest waiter. Does not wait for the coordinator:
    /// the post is ordered before everything this process sends afterwards.
    pub fn post(&self) -> Result<()> {
        self.session.client()?.post(Command::SemaphorePost(self.name.clone()))
    }

    /// The semaphore's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}
