//! The shared region: `Region::attach` maps the session's memory and serves its page faults.
//!
//! A `Region` owns a [`Session`](crate::Session)-like client whose runtime thread also services
//! the region's userfaultfd: faults of any application thread are read there, turned into
//! requests by the [`ProcessPages`](dsm_proto::pages::ProcessPages) core and resolved with
//! `UFFDIO_COPY` / `UFFDIO_WRITEPROTECT` when the coordinator answers. Many faults can be in
//! flight at once (one per page), so threads faulting on different pages proceed in parallel.

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};
use std::sync::Arc;

pub use dsm_proto::Coherence;
use dsm_proto::Rank;

use crate::client::{Client, Command};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::session::Session;
use crate::sys::{Fault, Mapping, Memfd};

/// The kernel objects behind a region: kept alive by the region and its runtime thread.
pub(crate) struct RegionMaps {
    pub view: Mapping,
    pub alias: Mapping,
    pub fault: Fault,
    _memfd: Memfd,
}

/// Per-process counters of the region (see [`Region::stats`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RegionStats {
    /// Faults on loads.
    pub read_faults: u64,
    /// Faults on stores.
    pub write_faults: u64,
    /// Pages fetched read-only.
    pub pages_fetched: u64,
    /// Ownership requests sent.
    pub ownership_requests: u64,
    /// Read-only copies dropped because another process wrote.
    pub pages_invalidated: u64,
    /// Owned pages downgraded to read-only for a reader.
    pub pages_downgraded: u64,
    /// Owned pages given up to another writer.
    pub pages_recalled: u64,
    /// Page bytes received.
    pub bytes_received: u64,
    /// Page bytes sent.
    pub bytes_sent: u64,
    /// Total time faulting threads waited for the coordinator, in microseconds.
    pub wait_micros: u64,
    /// Stores and RMWs replayed at the coordinator (update mode).
    pub replayed_writes: u64,
    /// Replayed writes that had to be redone by ownership.
    pub write_retries: u64,
    /// Other processes' replayed stores applied to our copies.
    pub updates_applied: u64,
    /// Pages fetched by sequential read-ahead (also in `pages_fetched`).
    pub prefetches: u64,
    /// Pages asked for by sequential write-ahead (also in `ownership_requests`).
    pub write_ahead: u64,
    /// Write-ahead pages denied because another process held them.
    pub write_ahead_denied: u64,
    /// Run messages received (one message for several consecutive pages).
    pub runs_received: u64,
    /// Pages sent directly to another process that asked for them (direct transfers).
    pub pages_forwarded: u64,
    /// Pages received directly from another process (also in `pages_fetched`).
    pub pages_from_peers: u64,
    /// Page bytes sent to other processes directly (not in `bytes_sent`).
    pub peer_bytes_sent: u64,
    /// Page bytes received from other processes directly (not in `bytes_received`).
    pub peer_bytes_received: u64,
    /// Direct transfers that failed and were served through the coordinator instead (pages
    /// this process could not send, and pages it was sent whose transfer was aborted).
    pub forwards_failed: u64,
    /// Read-only copies kept aside as backups when another process upgraded them (`InvBackup`).
    pub backups_kept: u64,
    /// Backups given up because the coordinator's copy caught up (`DropBackup`).
    pub backups_dropped: u64,
    /// Backups sent to the coordinator because the newer copy's holder was lost.
    pub backups_restored: u64,
}

/// Element types of a typed view of the region ([`Region::as_slice`]): types whose values may
/// legitimately change under a shared reference — the std atomics, and [`SharedCell`] of a plain
/// number (volatile loads and stores of exactly that width). Plain `&[u64]` or `&[u8]` views are
/// not offered: other processes (and this process's runtime thread, applying their replayed
/// stores) change the memory underneath, which Rust forbids behind `&T` for non-atomic `T`. For
/// C-style code there is [`Region::as_ptr`] and [`Region::ptr_at`].
///
/// # Safety
/// Every bit pattern must be a valid value, the type must have no padding, no drop glue, and
/// interior mutability through `&self` must be sound under concurrent modification.
pub unsafe trait Shareable: Sized {}

macro_rules! shareable_atomics {
    ($($t:ty),*) => { $(
        // SAFETY: the atomics accept every bit pattern, have no padding, and are designed to be
        // modified concurrently through shared references.
        unsafe impl Shareable for $t {}
    )* };
}
shareable_atomics!(AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, std::sync::atomic::AtomicI8,
    std::sync::atomic::AtomicI16, std::sync::atomic::AtomicI32, std::sync::atomic::AtomicI64,
    std::sync::atomic::AtomicIsize);

/// Plain numbers a [`SharedCell`] may hold: every bit pattern valid, at most 8 bytes (so an
/// aligned access is one instruction).
///
/// # Safety
/// As stated: every bit pattern is a valid value, no padding, size 1, 2, 4 or 8.
pub unsafe trait Plain: Copy {}

macro_rules! plain {
    ($($t:ty),*) => { $(
        // SAFETY: primitive numbers of 1-8 bytes accept every bit pattern and have no padding.
        unsafe impl Plain for $t {}
    )* };
}
plain!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize, f32, f64);

/// A value in the shared region that other processes may change at any time, read and written
/// with volatile accesses of exactly its width (aligned ones of up to 8 bytes are atomic, as
/// every aligned load or store to the region is). For read-modify-writes use the atomics.
///
/// ```no_run
/// use dsm::SharedCell;
/// # let region = dsm::Region::attach(&dsm::Config::from_env()?)?;
/// let pixels: &[SharedCell<u8>] = region.as_slice(4096, 1024)?;
/// pixels[0].set(255);
/// let sum: u32 = pixels.iter().map(|p| u32::from(p.get())).sum();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[repr(transparent)]
pub struct SharedCell<T>(std::cell::UnsafeCell<T>);

// SAFETY: every access is a volatile load or store of a Plain value; concurrent ones from
// several threads are exactly what the region's memory sees from several processes.
unsafe impl<T: Plain> Sync for SharedCell<T> {}

// SAFETY: `repr(transparent)` over a Plain `T`: same size, alignment and bit validity as `T`;
// interior mutability is through volatile accesses only.
unsafe impl<T: Plain> Shareable for SharedCell<T> {}

impl<T: Plain> SharedCell<T> {
    /// Loads the value (one volatile load of its width).
    pub fn get(&self) -> T {
        // SAFETY: the pointer comes from a live reference, is aligned for T (the view checked
        // alignment) and T accepts every bit pattern.
        unsafe { std::ptr::read_volatile(self.0.get()) }
    }

    /// Stores `v` (one volatile store of its width).
    pub fn set(&self, v: T) {
        // SAFETY: as for `get`; storing a Plain value through the cell is its purpose.
        unsafe { std::ptr::write_volatile(self.0.get(), v) }
    }
}

impl<T: Plain + std::fmt::Debug> std::fmt::Debug for SharedCell<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedCell").field(&self.get()).finish()
    }
}

/// A typed view request that does not fit the region.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// The offset is not aligned for the type.
    #[error("offset {offset} is not aligned to {align} bytes")]
    Misaligned {
        /// Byte offset asked for.
        offset: usize,
        /// Alignment the type needs.
        align: usize,
    },
    /// The range ends past the region.
    #[error("{len} elements of {size} bytes at offset {offset} end past the region's {region} bytes")]
    OutOfBounds {
        /// Byte offset.
        offset: usize,
        /// Elements asked for.
        len: usize,
        /// Element size.
        size: usize,
        /// Region size.
        region: usize,
    },
}

// Dropping a Region drops its Session first (detach: owned pages written back, runtime thread
// joined), then the mappings go when the last Arc does.

/// A shared memory region attached by every process of a session.
///
/// # When the coordinator is lost
/// If the connection to the coordinator fails (it was killed and the idle timeout passed, it
/// shut down, or it broke the protocol), barrier and semaphore calls return the error, but the
/// region's memory can no longer be kept coherent: every page is revoked, and the next access
/// to the region by any thread ends the process with one line on stderr (`dsm: fatal: ...`) and
/// exit status 1 — at once if a thread is already waiting for a page. A load cannot return an
/// error, and continuing on stale pages would be silently wrong.
///
/// Loads and stores to it just work across processes: pages are fetched on first touch and kept
/// coherent by the coordinator (single writer, many readers; sequential consistency between
/// single-threaded processes). Detaches on drop: owned pages are written back first, so no
/// acknowledged write is lost.
///
/// ```no_run
/// use std::sync::atomic::{AtomicU64, Ordering};
/// let config = dsm::Config::from_env()?;
/// let region = dsm::Region::attach(&config)?;
/// let counters: &[AtomicU64] = region.as_slice(0, 1)?;
/// counters[0].fetch_add(1, Ordering::SeqCst); // a distributed atomic
/// region.barrier()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Region {
    session: Session,
    maps: Arc<RegionMaps>,
}

impl Region {
    /// Creates the mapping, attaches the session and returns once every process attached.
    pub fn attach(config: &Config) -> Result<Region> {
        let len = usize::try_from(config.size)
            .map_err(|_| Error::Config(format!("region size {} does not fit in memory", config.size)))?;
        let memfd = Memfd::new(config.size)?;
        let view = Mapping::new(&memfd, len)?;
        let alias = Mapping::new(&memfd, len)?;
        let fault = Fault::new()?;
        if !fault.kernel_faults() {
            // A library should not print, but this limit silently breaks programs otherwise.
            eprintln!(
                "dsm: warning: userfaultfd serves only user-mode faults here: system calls that \
                 write into or read from pages of the region this process does not hold yet \
                 (read(2) into a shared buffer, ...) fail with EFAULT. Run as root, grant access \
                 to /dev/userfaultfd, or set sysctl vm.unprivileged_userfaultfd=1."
            );
            tracing::warn!("userfaultfd serves only user-mode faults: system calls on the region may fail with EFAULT");
        }
        fault.register(&view)?;
        let maps = Arc::new(RegionMaps { view, alias, fault, _memfd: memfd });
        let client = Client::attach_region(config, Some(Arc::clone(&maps)))?;
        Ok(Region { session: Session::from_client(client, config), maps })
    }

    /// Base address of the region in this process.
    pub fn as_ptr(&self) -> *mut u8 {
        self.maps.view.ptr()
    }

    /// Whether page faults raised inside system calls are served (false only when the kernel
    /// allows just user-mode userfaultfd handling; `attach` then warns).
    pub fn serves_kernel_faults(&self) -> bool {
        self.maps.fault.kernel_faults()
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.maps.view.len()
    }

    /// Always false: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// `len` elements of `T` starting at byte `offset`: `&[AtomicU64]` for distributed atomics,
    /// `&[SharedCell<u8>]` for plain data (see [`Shareable`]). Checks alignment and bounds.
    pub fn as_slice<T: Shareable>(&self, offset: usize, len: usize) -> Result<&[T], ViewError> {
        let size = std::mem::size_of::<T>();
        let align = std::mem::align_of::<T>();
        if !offset.is_multiple_of(align) {
            return Err(ViewError::Misaligned { offset, align });
        }
        let end = len.checked_mul(size).and_then(|b| b.checked_add(offset));
        if end.is_none_or(|e| e > self.len()) {
            return Err(ViewError::OutOfBounds { offset, len, size, region: self.len() });
        }
        // SAFETY: the range is inside the live view mapping (checked above), aligned for T, and T
        // accepts every bit pattern and concurrent modification through `&T` (Shareable). The
        // mapping lives as long as &self.
        Ok(unsafe { std::slice::from_raw_parts(self.as_ptr().add(offset).cast::<T>(), len) })
    }

    /// The whole region as `&[T]` (length rounded down).
    pub fn as_slice_all<T: Shareable>(&self) -> Result<&[T], ViewError> {
        self.as_slice(0, self.len() / std::mem::size_of::<T>())
    }

    /// A raw pointer to the `len` bytes at `offset`, bounds-checked, for C-style code
    /// (`memcpy`, `read(2)` into the region, SIMD stores). What the pointer is used for is the
    /// caller's business, as with [`Region::as_ptr`].
    pub fn ptr_at(&self, offset: usize, len: usize) -> Result<*mut u8, ViewError> {
        if offset.checked_add(len).is_none_or(|e| e > self.len()) {
            return Err(ViewError::OutOfBounds { offset, len, size: 1, region: self.len() });
        }
        Ok(self.as_ptr().wrapping_add(offset))
    }

    /// This process's rank.
    pub fn rank(&self) -> Rank {
        self.session.rank()
    }

    /// Number of processes.
    pub fn nprocs(&self) -> u32 {
        self.session.nprocs()
    }

    /// Blocks until every process entered this barrier.
    pub fn barrier(&self) -> Result<()> {
        self.session.barrier()
    }

    /// A named counting semaphore of the session that starts at 0 (see [`Session::semaphore`]).
    pub fn semaphore(&self, name: &str) -> Result<crate::Semaphore<'_>> {
        self.session.semaphore(name)
    }

    /// A named counting semaphore that starts at `initial` (see
    /// [`Session::semaphore_with_count`]; 1 makes a mutex).
    pub fn semaphore_with_count(&self, name: &str, initial: u32) -> Result<crate::Semaphore<'_>> {
        self.session.semaphore_with_count(name, initial)
    }

    /// The session handle (rank, barriers, semaphores).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Sets the coherence policy of the pages overlapping `offset..offset + len` for every
    /// process: [`Coherence::Invalidate`] (a store needs exclusive ownership; best for data one
    /// process writes in long runs), [`Coherence::Update`] (pages stay read-only everywhere and
    /// every store is replayed at the coordinator; best for flags, counters and neighbours'
    /// data), or [`Coherence::Adaptive`] (the default: switch by observed behaviour, see
    /// `dsm_proto::directory::PINGPONG_GRANTS` and `WRITE_RUN`). Takes effect in order with
    /// this process's other operations.
    pub fn advise(&self, offset: usize, len: usize, coherence: Coherence) -> Result<()> {
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > self.len()) {
            return Err(Error::Config(format!(
                "advise range {offset}+{len} is outside the region of {} bytes",
                self.len()
            )));
        }
        let first = (offset / crate::sys::PAGE) as u64;
        let last = ((offset + len - 1) / crate::sys::PAGE) as u64;
        self.session
            .client_ref()?
            .post(Command::Advise { first, count: last - first + 1, coherence })
    }

    /// This process's fault and traffic counters.
    pub fn stats(&self) -> Result<RegionStats> {
        self.session.client_ref()?.call(Command::Stats)
    }

    /// Writes back owned pages, leaves the session, unmaps the region.
    pub fn detach(self) -> Result<()> {
        let Region { session, maps } = self;
        let r = session.detach();
        maps.fault.unregister(&maps.view);
        r
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("session", &self.session.name())
            .field("rank", &self.rank())
            .field("len", &self.len())
            .finish()
    }
}
