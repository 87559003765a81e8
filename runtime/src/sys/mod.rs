//! Every raw system call of the runtime: the memfd, its two mappings, userfaultfd set-up and
//! the ioctls the `userfaultfd` crate lacks. Everything outside this module is safe Rust.
//!
//! The region is one memfd mapped twice: the *view* (what the application loads and stores,
//! registered with userfaultfd for missing and write-protect faults) and the *alias* (never
//! registered; the runtime reads page contents through it and never touches the view).
//!
//! Page states map to the kernel like this:
//! - Invalid: a hole in the memfd (`MADV_REMOVE`); any access raises a *missing* fault.
//! - Invalid with a backup kept in place (`InvBackup`): the page stays in the memfd, only the
//!   view's entry is zapped (`MADV_DONTNEED`); with the view registered for *minor* faults too,
//!   any access raises a minor fault. Before the page is installed again its bytes are read out
//!   and a hole punched.
//! - ReadOnly: installed with `UFFDIO_COPY` + `MODE_WP`; a store raises a *write-protect* fault.
//! - Writable: installed with `UFFDIO_COPY`, or write protection cleared.
//!
//! Dropping to Invalid punches a hole instead of `MADV_DONTNEED`: after `DONTNEED` the page
//! would stay in the page cache and the next `UFFDIO_COPY` would fail with `EEXIST`. A minor
//! fault on a page the runtime holds (the kernel unmapped it: reclaim, or the application's own
//! `MADV_DONTNEED`) maps it again as it was (`UFFDIO_CONTINUE`, write-protected if ReadOnly).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use userfaultfd::{FeatureFlags, RegisterMode, Uffd, UffdBuilder};

pub mod replay;

use crate::error::Error;

/// Page size of the region.
pub const PAGE: usize = dsm_proto::PAGE_SIZE;

/// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM`: write-protect faults on shmem (memfd), Linux 5.19+.
const FEATURE_WP_SHMEM: u64 = 1 << 12;
/// `UFFD_FEATURE_EXACT_ADDRESS` (Linux 5.18+): report the exact faulting address, not the page
/// (the replay decoder checks the instruction's operand against it).
const FEATURE_EXACT_ADDRESS: u64 = 1 << 11;
/// `UFFDIO_COPY_MODE_WP`: install the copied page write-protected.
const COPY_MODE_WP: u64 = 1 << 1;
/// `UFFD_FEATURE_MINOR_SHMEM` (Linux 5.14+): minor faults on shmem.
const FEATURE_MINOR_SHMEM: u64 = 1 << 10;
/// `UFFDIO_CONTINUE_MODE_WP` (Linux 6.4+): map the page write-protected.
const CONTINUE_MODE_WP: u64 = 1 << 1;
/// `UFFD_FEATURE_WP_UNPOPULATED`: new in Linux 6.4, as `UFFDIO_CONTINUE_MODE_WP` is (which has
/// no feature bit of its own). Only asked of a probe, never enabled.
const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;

#[repr(C)]
struct UffdioContinue {
    start: u64,
    len: u64,
    mode: u64,
    mapped: i64,
}

nix::ioctl_readwrite!(uffdio_continue, 0xAA, 0x07, UffdioContinue);

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

nix::ioctl_readwrite!(uffdio_copy, 0xAA, 0x03, UffdioCopy);

/// A memfd of the region's size. Untouched pages are holes: no memory.
pub struct Memfd(OwnedFd);

impl Memfd {
    pub fn new(size: u64) -> Result<Memfd, Error> {
        // SAFETY: the name is a valid NUL-terminated string; the returned fd is checked and
        // then owned by OwnedFd.
        let fd = unsafe { libc::memfd_create(c"dsm-region".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::os("memfd_create", std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh, valid file descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let size_off = libc::off_t::try_from(size).map_err(|_| Error::os("ftruncate", "size too large"))?;
        // SAFETY: plain syscall on a valid fd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size_off) } != 0 {
            return Err(Error::os("sizing the region's memfd", std::io::Error::last_os_error()));
        }
        Ok(Memfd(fd))
    }
}

/// A shared mapping of the memfd, unmapped on drop.
pub struct Mapping {
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; which thread unmaps it does not matter, and
// concurrent access is the application's (view) or the runtime thread's (alias) business.
unsafe impl Send for Mapping {}
// SAFETY: as above; the type itself only exposes the address.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn new(fd: &Memfd, len: usize) -> Result<Mapping, Error> {
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL) of a valid fd; the result is
        // checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd.0.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::os("mapping the region", std::io::Error::last_os_error()));
        }
        let addr = NonNull::new(p.cast::<u8>()).ok_or_else(|| Error::os("mmap", "returned NULL"))?;
        Ok(Mapping { addr, len })
    }

    pub fn addr(&self) -> usize {
        self.addr.as_ptr() as usize
    }

    pub fn ptr(&self) -> *mut u8 {
        self.addr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Copies `count` pages from `first` out through this mapping (the alias), in one copy.
    pub fn read_run(&self, first: u64, count: u32) -> Vec<u8> {
        let off = first as usize * PAGE;
        let len = count as usize * PAGE;
        assert!(off + len <= self.len, "pages {first}..+{count} outside the mapping");
        // Not zeroed first: the copy writes every byte (zeroing a 1 MiB run was ~4% of an
        // owner's CPU in a bulk transfer).
        // A long run goes into a buffer used before if one is kept (`dsm_proto::buffers`):
        // fresh memory would be faulted in and zeroed by the kernel page by page.
        let pooled = (dsm_proto::frame::LARGE_FRAME..=dsm_proto::buffers::BUFFER).contains(&len);
        let mut out = if pooled { dsm_proto::buffers::take() } else { Vec::with_capacity(len) };
        // SAFETY: the range is inside the live mapping (checked above); the alias is never
        // registered with userfaultfd, so reading it cannot fault into our own handler. Other
        // processes' writes cannot land here (only our runtime installs pages). `out` has room
        // for `len` bytes, and the copy initializes all of them before `set_len`.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr().add(off), out.as_mut_ptr(), len);
            out.set_len(len);
        }
        out
    }

    /// Stores `width` bytes of `value` at `offset` of page `page` through this mapping (the
    /// alias) with exactly one store instruction of that width (ordering rule 7: no reader sees
    /// a torn value). Widths other than 1, 2, 4, 8 and 16, or a range outside the page or the
    /// mapping, are refused (the caller validated them; this is the last line of defence).
    pub fn store(&self, page: u64, offset: usize, width: u8, value: u128) -> Result<(), Error> {
        let w = usize::from(width);
        let off = (page as usize).checked_mul(PAGE).and_then(|p| p.checked_add(offset));
        let fits = off.is_some_and(|o| offset + w <= PAGE && o + w <= self.len);
        if !fits || !matches!(width, 1 | 2 | 4 | 8 | 16) {
            return Err(Error::os("storing a replayed update", format!("{width} bytes at offset {offset} of page {page}")));
        }
        let off = off.unwrap_or(0);
        // SAFETY: the target lies inside one page of the live alias mapping (checked above),
        // which is never registered with userfaultfd. Each arm is one `mov`/`movups` of that
        // width written in asm, so the compiler can neither split nor merge it; x86 allows
        // unaligned operands (an aligned one of up to 8 bytes is single-copy atomic).
        unsafe {
            let p = self.ptr().add(off);
            match width {
                1 => std::arch::asm!("mov byte ptr [{p}], {v}", p = in(reg) p, v = in(reg_byte) value as u8, options(nostack, preserves_flags)),
                2 => std::arch::asm!("mov word ptr [{p}], {v:x}", p = in(reg) p, v = in(reg) value as u16, options(nostack, preserves_flags)),
                4 => std::arch::asm!("mov dword ptr [{p}], {v:e}", p = in(reg) p, v = in(reg) value as u32, options(nostack, preserves_flags)),
                8 => std::arch::asm!("mov qword ptr [{p}], {v:r}", p = in(reg) p, v = in(reg) value as u64, options(nostack, preserves_flags)),
                _ => {
                    let v = std::mem::transmute::<u128, std::arch::x86_64::__m128i>(value);
                    std::arch::asm!("movups xmmword ptr [{p}], {v}", p = in(reg) p, v = in(xmm_reg) v, options(nostack, preserves_flags));
                }
            }
        }
        Ok(())
    }

    /// Gives every page back to the kernel at once: the whole region becomes holes, so every
    /// later access by any thread faults (used when the region can no longer be served, so that
    /// no thread keeps reading a stale read-only copy).
    pub fn punch_all(&self) -> Result<(), Error> {
        // SAFETY: the whole live mapping; MADV_REMOVE frees the memfd's pages and zaps them from
        // every mapping of it, after which accesses to the view raise missing faults.
        let r = unsafe { libc::madvise(self.ptr().cast(), self.len, libc::MADV_REMOVE) };
        if r != 0 {
            return Err(Error::os("MADV_REMOVE", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Unmaps `count` pages from `first` from this mapping (the view) only: their contents stay
    /// in the memfd (a backup kept in place), and the next access raises a minor fault.
    pub fn zap_run(&self, first: u64, count: u32) -> Result<(), Error> {
        let off = first as usize * PAGE;
        let len = count as usize * PAGE;
        assert!(off + len <= self.len, "pages {first}..+{count} outside the mapping");
        // SAFETY: the range is inside the live mapping; MADV_DONTNEED on a shared file mapping
        // only drops its page table entries (the memfd keeps the pages), with a TLB flush.
        let r = unsafe { libc::madvise(self.ptr().add(off).cast(), len, libc::MADV_DONTNEED) };
        if r != 0 {
            return Err(Error::os("MADV_DONTNEED", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Gives page `page` back to the kernel: a hole in the memfd, zapped from every mapping.
    pub fn punch_hole(&self, page: u64) -> Result<(), Error> {
        self.punch_run(page, 1)
    }

    /// Gives `count` pages from `first` back to the kernel at once.
    pub fn punch_run(&self, first: u64, count: u32) -> Result<(), Error> {
        let off = first as usize * PAGE;
        let len = count as usize * PAGE;
        assert!(off + len <= self.len, "pages {first}..+{count} outside the mapping");
        // SAFETY: the range is inside the live mapping; MADV_REMOVE frees the backing pages of
        // the shared memfd, which is exactly the Invalid state.
        let r = unsafe { libc::madvise(self.ptr().add(off).cast(), len, libc::MADV_REMOVE) };
        if r != 0 {
            return Err(Error::os("MADV_REMOVE", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own this mapping; nothing references it after the owner drops it (the
        // region joins its runtime thread first).
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}

/// The userfaultfd of one region.
pub struct Fault {
    uffd: Uffd,
    kernel_faults: bool,
    /// Minor faults are reported (and pages can be kept in place, unmapped from the view).
    minor_faults: bool,
}

impl Fault {
    /// Opens a non-blocking userfaultfd that reports missing and write-protect faults on shmem
    /// and the faulting thread's id, and serves kernel-mode faults too (system calls that touch
    /// the region wait instead of failing with EFAULT).
    pub fn new() -> Result<Fault, Error> {
        let features = FeatureFlags::PAGEFAULT_FLAG_WP
            | FeatureFlags::MISSING_SHMEM
            | FeatureFlags::THREAD_ID
            | FeatureFlags::from_bits_retain(FEATURE_WP_SHMEM | FEATURE_EXACT_ADDRESS);
        let build = |user_mode_only: bool, minor: bool| {
            let minor = if minor { FeatureFlags::from_bits_retain(FEATURE_MINOR_SHMEM) } else { FeatureFlags::empty() };
            UffdBuilder::new()
                .close_on_exec(true)
                .non_blocking(true)
                .user_mode_only(user_mode_only)
                .require_features(features | minor)
                .create()
        };
        // Minor faults where the kernel has them and can also map a held page again
        // write-protected (a minor fault on a page we hold: reclaim, or the application's own
        // MADV_DONTNEED), Linux 6.4+: backups then stay in place. Otherwise they are copied out.
        let minor_ok = |user_mode_only: bool| {
            let probe = FeatureFlags::from_bits_retain(FEATURE_MINOR_SHMEM | FEATURE_WP_UNPOPULATED);
            UffdBuilder::new()
                .close_on_exec(true)
                .non_blocking(true)
                .user_mode_only(user_mode_only)
                .require_features(features | probe)
                .create()
                .is_ok()
        };
        let attempt = |user_mode_only: bool| match minor_ok(user_mode_only).then(|| build(user_mode_only, true)) {
            Some(Ok(uffd)) => Ok((uffd, true)),
            _ => build(user_mode_only, false).map(|uffd| (uffd, false)),
        };
        match attempt(false) {
            Ok((uffd, minor_faults)) => Ok(Fault { uffd, kernel_faults: true, minor_faults }),
            Err(full) => match attempt(true) {
                // Unprivileged without /dev/userfaultfd: only user-mode faults are served.
                Ok((uffd, minor_faults)) => Ok(Fault { uffd, kernel_faults: false, minor_faults }),
                Err(_) => Err(Error::os(
                    "opening userfaultfd (needs Linux 5.19+ with write-protect support for shmem, and root, access to /dev/userfaultfd, or sysctl vm.unprivileged_userfaultfd=1)",
                    full,
                )),
            },
        }
    }

    /// Whether faults raised inside system calls (e.g. `read(2)` into the region) are served.
    /// Without it such calls fail with `EFAULT` on pages this process does not hold yet.
    pub fn kernel_faults(&self) -> bool {
        self.kernel_faults
    }

    /// Whether minor faults are reported: a page unmapped from the view but kept in the memfd
    /// ([`Mapping::zap_run`]) faults on the next access.
    pub fn minor_faults(&self) -> bool {
        self.minor_faults
    }

    pub fn register(&self, view: &Mapping) -> Result<(), Error> {
        let minor = if self.minor_faults { RegisterMode::MINOR } else { RegisterMode::empty() };
        self.uffd
            .register_with_mode(view.ptr().cast(), view.len(), RegisterMode::MISSING | RegisterMode::WRITE_PROTECT | minor)
            .map_err(|e| Error::os("registering the region with userfaultfd", e))?;
        Ok(())
    }

    pub fn unregister(&self, view: &Mapping) {
        let _ = self.uffd.unregister(view.ptr().cast(), view.len());
    }

    /// Next pending fault, or None when the queue is empty.
    pub fn next_fault(&self) -> Result<Option<PageFault>, Error> {
        loop {
            match self.uffd.read_event() {
                Ok(None) => return Ok(None),
                Ok(Some(userfaultfd::Event::Pagefault { rw, addr, thread_id, kind })) => {
                    let write = rw == userfaultfd::ReadWrite::Write
                        || kind == userfaultfd::FaultKind::WriteProtected;
                    let minor = kind == userfaultfd::FaultKind::Minor;
                    return Ok(Some(PageFault { addr: addr as usize, write, tid: thread_id.as_raw(), minor }));
                }
                Ok(Some(_other)) => continue,
                Err(e) => return Err(Error::os("reading userfaultfd events", e)),
            }
        }
    }

    /// Installs `src` (whole pages) at `dst` in the view, write-protected unless `writable`,
    /// in one ioctl, and wakes the threads waiting on those pages. Returns how many bytes were
    /// installed: all of `src`, or fewer when the page after them was already there (`EEXIST`;
    /// the caller decides about that page).
    pub fn install(&self, dst: usize, src: &[u8], writable: bool) -> Result<usize, Error> {
        assert!(!src.is_empty() && src.len().is_multiple_of(PAGE));
        let mut done = 0usize;
        loop {
            let mut copy = UffdioCopy {
                dst: (dst + done) as u64,
                src: src[done..].as_ptr() as u64,
                len: (src.len() - done) as u64,
                mode: if writable { 0 } else { COPY_MODE_WP },
                copy: 0,
            };
            // SAFETY: dst..dst+len is inside the registered view (callers compute it from the
            // region's base and check the run against the region); src[done..] is a live buffer
            // of exactly `len` bytes; the struct layout matches `struct uffdio_copy`.
            let r = unsafe { uffdio_copy(self.uffd.as_raw_fd(), &mut copy) };
            // The kernel reports in `copy` how many bytes it installed (and woke) before
            // stopping; a partial copy returns EAGAIN, and the retry then names the cause.
            let copied = usize::try_from(copy.copy).unwrap_or(0);
            match r {
                Ok(_) => return Ok(src.len()),
                Err(nix::errno::Errno::EAGAIN) => done += copied,
                Err(nix::errno::Errno::EEXIST) => return Ok(done + copied),
                Err(e) => return Err(Error::os("UFFDIO_COPY", e)),
            }
        }
    }

    /// Write-protects `len` bytes (whole pages) of the view at `dst`, in one ioctl (one TLB
    /// flush for the whole range).
    pub fn write_protect(&self, dst: usize, len: usize) -> Result<(), Error> {
        self.uffd
            .write_protect(dst as *mut libc::c_void, len)
            .map_err(|e| Error::os("UFFDIO_WRITEPROTECT", e))
    }

    /// Clears write protection of `len` bytes at `dst` and wakes the threads waiting there.
    pub fn make_writable(&self, dst: usize, len: usize) -> Result<(), Error> {
        self.uffd
            .remove_write_protection(dst as *mut libc::c_void, len, true)
            .map_err(|e| Error::os("UFFDIO_WRITEPROTECT (clear)", e))
    }

    /// Wakes the threads waiting on `len` bytes at `dst`.
    pub fn wake(&self, dst: usize, len: usize) -> Result<(), Error> {
        self.uffd.wake(dst as *mut libc::c_void, len).map_err(|e| Error::os("UFFDIO_WAKE", e))
    }

    /// Maps again `len` bytes (whole pages) at `dst` whose pages are in the memfd but not in
    /// the view (a minor fault on a page the runtime holds), write-protected if asked, and
    /// wakes the threads waiting there.
    pub fn map_cached(&self, dst: usize, len: usize, write_protected: bool) -> Result<(), Error> {
        let mut done = 0usize;
        while done < len {
            let mut cont = UffdioContinue {
                start: (dst + done) as u64,
                len: (len - done) as u64,
                mode: if write_protected { CONTINUE_MODE_WP } else { 0 },
                mapped: 0,
            };
            // SAFETY: dst..dst+len is inside the registered view (the caller computes it from
            // a fault's page); the struct layout matches `struct uffdio_continue`.
            let r = unsafe { uffdio_continue(self.uffd.as_raw_fd(), &mut cont) };
            match r {
                Ok(_) => return Ok(()),
                // Mapped meanwhile (another thread's fault): only the waiters are left.
                Err(nix::errno::Errno::EEXIST) => return self.wake(dst, len),
                Err(nix::errno::Errno::EAGAIN) => done += usize::try_from(cont.mapped).unwrap_or(0),
                Err(e) => return Err(Error::os("UFFDIO_CONTINUE", e)),
            }
        }
        Ok(())
    }
}

/// One page fault event of the view.
#[derive(Debug, Clone, Copy)]
pub struct PageFault {
    /// The faulting address.
    pub addr: usize,
    /// A store (or a write-protect fault).
    pub write: bool,
    /// The faulting thread.
    pub tid: i32,
    /// A minor fault: the page is in the memfd but not mapped in the view.
    pub minor: bool,
}

/// Writes all of `bytes` to `fd`, ignoring errors (for the fatal path: stderr may be closed).
pub fn write_fd(fd: RawFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writes from a live buffer of the given length; the result is checked.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = &bytes[n as usize..];
        } else if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        } else {
            return;
        }
    }
}

/// Ends the process at once with `code`: no atexit handlers, no stdio flush, no destructors
/// (see `fatal.rs` for why).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no user-space state.
    unsafe { libc::_exit(code) }
}

/// Raw fd of the userfaultfd for tokio's `AsyncFd` (the [`Fault`] owns the fd).
pub struct UffdFd(RawFd);

impl AsRawFd for UffdFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Registers a raw fd the caller keeps open (an eventfd) with the current tokio reactor.
pub fn async_fd(fd: RawFd) -> std::io::Result<tokio::io::unix::AsyncFd<UffdFd>> {
    // SAFETY: the caller keeps the fd open for the AsyncFd's whole life (the runtime thread drops
    // the AsyncFd at the end of its loop while RegionIo still owns the eventfd).
    unsafe { tokio::io::unix::AsyncFd::register(UffdFd(fd)) }.map_err(|e| e.into_parts().1)
}

impl Fault {
    /// Registers the userfaultfd with the current tokio reactor.
    ///
    /// The returned `AsyncFd` must be dropped before this `Fault`: the runtime thread drops it at
    /// the end of its loop while its `Arc<RegionMaps>` still holds the `Fault`.
    pub fn async_fd(&self) -> std::io::Result<tokio::io::unix::AsyncFd<UffdFd>> {
        // SAFETY: the fd stays open for the AsyncFd's whole life (see above) and is not
        // registered with this reactor anywhere else.
        unsafe { tokio::io::unix::AsyncFd::register(UffdFd(self.uffd.as_raw_fd())) }
            .map_err(|e| e.into_parts().1)
    }
}
