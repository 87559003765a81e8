//! The blocking session handle users hold: rank, process count, barriers, semaphores.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use dsm_proto::Rank;
use parking_lot::Mutex;

use crate::client::{Client, Command};
use crate::config::Config;
use crate::error::{Error, Result};

/// Membership in a running session. Detaches on drop.
///
/// Semaphores: [`Session::semaphore`] starts a name at 0 (a signal: `wait` blocks until some
/// process posts); [`Session::semaphore_with_count`] chooses the initial count (1 makes a
/// mutex, as the original C API's semaphores, which `dsm.h` keeps). The first use of a name in
/// a session fixes its count; a later use asking for another count is an error.
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
    /// Semaphore names (with their initial count) the coordinator has accepted from this
    /// process: posts to them need not wait for an answer.
    confirmed: Mutex<HashSet<(String, u32)>>,
}

impl Session {
    /// Connects to the coordinator and joins the session; returns once every process attached.
    pub fn attach(config: &Config) -> Result<Session> {
        let client = Client::attach(config)?;
        Ok(Self::from_client(client, config))
    }

    pub(crate) fn from_client(client: Client, config: &Config) -> Session {
        Session {
            client: Some(client),
            barrier: Mutex::new(()),
            session: config.session.clone(),
            confirmed: Mutex::new(HashSet::new()),
        }
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

    /// A named counting semaphore of the session that starts at **0** on first use: `wait`
    /// blocks until some process posts. Same as `semaphore_with_count(name, 0)`. Names are at
    /// most [`dsm_proto::MAX_SEMAPHORE_NAME`] bytes; longer names are an error, never truncated.
    pub fn semaphore(&self, name: &str) -> Result<Semaphore<'_>> {
        self.semaphore_with_count(name, 0)
    }

    /// A named counting semaphore that starts at `initial` on the first use of its name in the
    /// session (1: a mutex, as in the original C system). The first use of a name by any
    /// process fixes its count: a use asking for another count fails with
    /// [`SessionFault::SemaphoreInitialMismatch`](dsm_proto::SessionFault) from `wait` or
    /// `post`, checked by the coordinator (the first post of a name by a process waits for the
    /// coordinator's answer for this reason; later posts do not wait).
    ///
    /// ```no_run
    /// # let session = dsm::Session::attach(&dsm::Config::from_env()?)?;
    /// let lock = session.semaphore_with_count("lock", 1)?;
    /// lock.wait()?; // the first process in passes at once; the others wait for its post
    /// // ... critical section ...
    /// lock.post()?;
    /// # Ok::<(), dsm::Error>(())
    /// ```
    pub fn semaphore_with_count(&self, name: &str, initial: u32) -> Result<Semaphore<'_>> {
        dsm_proto::check_semaphore_name(name)?;
        Ok(Semaphore { session: self, name: name.to_string(), initial })
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
    initial: u32,
}

impl Semaphore<'_> {
    /// Decrements the semaphore, blocking while it is zero.
    pub fn wait(&self) -> Result<()> {
        let (name, initial) = (self.name.clone(), self.initial);
        self.session.client()?.call(|r| Command::SemaphoreWait { name, initial, reply: r })?;
        self.session.confirmed.lock().insert((self.name.clone(), self.initial));
        Ok(())
    }

    /// Increments the semaphore, waking its oldest waiter. Once the coordinator has accepted
    /// this name and initial count from this process, a post does not wait for the coordinator:
    /// it is ordered before everything this process sends afterwards.
    pub fn post(&self) -> Result<()> {
        let key = (self.name.clone(), self.initial);
        let client = self.session.client()?;
        if self.session.confirmed.lock().contains(&key) {
            return client.post(Command::SemaphorePost { name: key.0, initial: key.1, reply: None });
        }
        client.call(|r| Command::SemaphorePost { name: self.name.clone(), initial: self.initial, reply: Some(r) })?;
        self.session.confirmed.lock().insert(key);
        Ok(())
    }

    /// The count the semaphore starts with on the first use of its name.
    pub fn initial_count(&self) -> u32 {
        self.initial
    }

    /// The semaphore's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}
