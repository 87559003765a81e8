//! The signal half of write replay (update mode): the one place where the runtime runs on an
//! application thread.
//!
//! The runtime thread reads a write-protect fault on an update-mode page from the userfaultfd,
//! fills a [`Slot`] for the faulting thread and sends it [`replay_signal`] with `tgkill`. The
//! signal interrupts the thread's wait in the kernel; [`on_signal`] runs on that thread with the
//! faulting instruction's registers in its `ucontext`: it decodes the store (iced-x86, see
//! `decode.rs`), posts the request in the slot, wakes the runtime thread through the region's
//! eventfd and sleeps on a futex until the runtime thread publishes the outcome. On success it
//! writes the registers back with `rip` past the instruction; on a retry it returns unchanged and
//! the instruction runs again (and faults again).
//!
//! Async-signal safety: the handler uses atomics, `futex`, `write` to an eventfd and the decoder.
//! The decoder may allocate on error paths; that is safe here because the thread was stopped at a
//! store into the region, never inside the allocator (unless the application places its heap in
//! the region, which is documented as unsupported).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::Once;

use crate::decode::{self, Decoded, Regs};

/// Slots for threads in the middle of a replay, across all regions of the process.
pub const SLOTS: usize = 256;

/// Slot states.
pub const FREE: u32 = 0;
/// The runtime thread signalled `tid`; the handler has not picked it up.
pub const SIGNALLED: u32 = 1;
/// The handler posted a decoded request.
pub const REQUEST: u32 = 2;
/// The runtime thread posted the outcome.
pub const DONE: u32 = 3;

/// What the runtime thread answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The store was sequenced; `old` is the value before (RMW result).
    Done {
        /// Previous memory value.
        old: u64,
    },
    /// Re-execute the instruction.
    Retry,
}

/// What the handler found.
#[derive(Debug, Clone)]
pub enum Request {
    /// Nothing posted yet.
    Empty,
    /// A replayable store.
    Decoded(Decoded),
    /// An instruction the emulator does not replay: fall back to ownership.
    Unsupported,
    /// A store whose operand crosses into the next page: own every page it touches.
    Straddles {
        /// Operand address.
        addr: u64,
        /// Operand width.
        width: u8,
    },
    /// The thread was not at a store to the fault address (it was woken meanwhile): nothing to do.
    Spurious,
}

/// One thread's replay in progress. Ownership protocol: the runtime thread claims a free slot
/// (`tid` 0 -> thread id), fills `fault_addr`/`efd`, then publishes `SIGNALLED`; the handler owns
/// `request` until it publishes `REQUEST`; the runtime thread owns `outcome` until it publishes
/// `DONE`; the handler frees the slot (`FREE`, then `tid` 0).
pub struct Slot {
    pub tid: AtomicI32,
    pub state: AtomicU32,
    pub fault_addr: AtomicU64,
    pub efd: AtomicI32,
    request: UnsafeCell<Request>,
    outcome: UnsafeCell<Outcome>,
}

// SAFETY: `request` and `outcome` are only accessed by the side that owns them according to the
// state machine above, with Release/Acquire on `state` ordering the hand-overs.
unsafe impl Sync for Slot {}

impl Slot {
    const fn new() -> Slot {
        Slot {
            tid: AtomicI32::new(0),
            state: AtomicU32::new(FREE),
            fault_addr: AtomicU64::new(0),
            efd: AtomicI32::new(-1),
            request: UnsafeCell::new(Request::Empty),
            outcome: UnsafeCell::new(Outcome::Retry),
        }
    }

    /// Takes the handler's request (runtime thread, after observing `REQUEST`).
    pub fn take_request(&self) -> Request {
        debug_assert_eq!(self.state.load(Ordering::Acquire), REQUEST);
        // SAFETY: in state REQUEST the runtime thread owns `request` (the handler waits for DONE).
        unsafe { std::mem::replace(&mut *self.request.get(), Request::Empty) }
    }

    /// Publishes the outcome and wakes the handler (runtime thread).
    pub fn complete(&self, outcome: Outcome) {
        // SAFETY: in state REQUEST the runtime thread owns `outcome`; the handler reads it only
        // after observing DONE (Release below).
        unsafe { *self.outcome.get() = outcome };
        self.state.store(DONE, Ordering::Release);
        futex_wake(&self.state);
    }
}

#[allow(clippy::declare_interior_mutable_const)]
const NEW_SLOT: Slot = Slot::new();
/// The process-wide slot table (signal handlers are process-wide too).
pub static TABLE: [Slot; SLOTS] = [NEW_SLOT; SLOTS];

/// The signal used to interrupt faulting threads.
pub fn replay_signal() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

/// Installs the handler once per process.
pub fn install_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid starting point; we set a handler with the
        // SA_SIGINFO signature and an empty mask, then install it for our signal only.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(replay_signal(), &sa, std::ptr::null_mut()) != 0 {
                result = Err(std::io::Error::last_os_error());
            }
        }
    });
    result
}

/// Claims a slot for `tid` and signals it. Returns the slot index, or None when every slot is
/// busy or the signal could not be sent (the caller then falls back to ownership).
pub fn signal_thread(tid: i32, fault_addr: u64, efd: i32) -> Option<usize> {
    for (i, slot) in TABLE.iter().enumerate() {
        if slot.tid.compare_exchange(0, tid, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            slot.fault_addr.store(fault_addr, Ordering::Relaxed);
            slot.efd.store(efd, Ordering::Relaxed);
            slot.state.store(SIGNALLED, Ordering::Release);
            // SAFETY: plain syscall; tid is a thread of this process reported by userfaultfd.
            let r = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, replay_signal()) };
            if r != 0 {
                release_unclaimed(i);
                return None;
            }
            return Some(i);
        }
    }
    None
}

/// Takes back a slot the handler has not picked up (stale signal, thread gone). Returns false if
/// the handler got to it first.
pub fn release_unclaimed(i: usize) -> bool {
    let slot = &TABLE[i];
    if slot.state.compare_exchange(SIGNALLED, FREE, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
        slot.tid.store(0, Ordering::Release);
        true
    } else {
        false
    }
}

/// Writes to an eventfd (async-signal-safe).
pub fn eventfd_poke(efd: i32) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an fd; failure (EAGAIN on overflow) is harmless
    // because the counter is already non-zero then.
    unsafe { libc::write(efd, (&one as *const u64).cast(), 8) };
}

/// Drains an eventfd (runtime thread).
pub fn eventfd_drain(efd: i32) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64 from a non-blocking eventfd.
    unsafe { libc::read(efd, (&mut v as *mut u64).cast(), 8) };
}

/// Creates a non-blocking eventfd.
pub fn eventfd() -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: plain syscall; the returned fd is checked and then owned.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and owned by nothing else.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT on a live, aligned u32; returns on wake, signal or value change.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a live, aligned u32.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, i32::MAX);
    }
}

/// Whether thread `tid` is inside a system call (its fault is a kernel-mode fault, which must
/// never be interrupted with a signal). `/proc/self/task/TID/syscall` starts with the syscall
/// number, `-1` for a thread blocked outside any system call (a user-mode fault), or `running`.
pub fn in_syscall(tid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")) {
        Ok(s) => {
            tracing::trace!("thread {tid} syscall state: {}", s.trim());
            !s.starts_with("-1")
        }
        Err(_) => true,
    }
}

const GPR_FROM_GREGS: [libc::c_int; 16] = [
    libc::REG_RAX,
    libc::REG_RCX,
    libc::REG_RDX,
    libc::REG_RBX,
    libc::REG_RSP,
    libc::REG_RBP,
    libc::REG_RSI,
    libc::REG_RDI,
    libc::REG_R8,
    libc::REG_R9,
    libc::REG_R10,
    libc::REG_R11,
    libc::REG_R12,
    libc::REG_R13,
    libc::REG_R14,
    libc::REG_R15,
];

/// Reads the interrupted thread's registers.
///
/// # Safety
/// `uc` must be the ucontext passed to an SA_SIGINFO handler of this thread.
unsafe fn read_regs(uc: *const libc::ucontext_t) -> Regs {
    // SAFETY: per the contract, uc points to the live signal frame.
    let mc = unsafe { &(*uc).uc_mcontext };
    let mut regs = Regs::default();
    for (i, &g) in GPR_FROM_GREGS.iter().enumerate() {
        regs.gpr[i] = mc.gregs[g as usize] as u64;
    }
    regs.rip = mc.gregs[libc::REG_RIP as usize] as u64;
    regs.rflags = mc.gregs[libc::REG_EFL as usize] as u64;
    if !mc.fpregs.is_null() {
        // SAFETY: the kernel points fpregs at the saved FXSAVE area inside the signal frame.
        let fp = unsafe { &*mc.fpregs };
        for (i, x) in fp._xmm.iter().enumerate() {
            let e = x.element;
            regs.xmm[i] = u128::from(e[0])
                | (u128::from(e[1]) << 32)
                | (u128::from(e[2]) << 64)
                | (u128::from(e[3]) << 96);
        }
    }
    let mut base: u64 = 0;
    // SAFETY: ARCH_GET_FS/GS write the calling thread's segment bases into a live u64.
    unsafe {
        libc::syscall(libc::SYS_arch_prctl, 0x1003 /* ARCH_GET_FS */, &mut base as *mut u64);
        regs.fs_base = base;
        libc::syscall(libc::SYS_arch_prctl, 0x1004 /* ARCH_GET_GS */, &mut base as *mut u64);
        regs.gs_base = base;
    }
    regs
}

/// Writes back what an emulated instruction changes: general registers, rip and rflags.
///
/// # Safety
/// As for [`read_regs`].
unsafe fn write_regs(uc: *mut libc::ucontext_t, regs: &Regs) {
    // SAFETY: per the contract, uc points to the live signal frame; sigreturn restores it.
    let mc = unsafe { &mut (*uc).uc_mcontext };
    for (i, &g) in GPR_FROM_GREGS.iter().enumerate() {
        mc.gregs[g as usize] = regs.gpr[i] as i64;
    }
    mc.gregs[libc::REG_RIP as usize] = regs.rip as i64;
    mc.gregs[libc::REG_EFL as usize] = regs.rflags as i64;
}

extern "C" fn on_signal(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: plain syscall.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    let Some(slot) = TABLE
        .iter()
        .find(|s| s.tid.load(Ordering::Acquire) == tid && s.state.load(Ordering::Acquire) == SIGNALLED)
    else {
        return; // a stale signal: the runtime took the slot back
    };
    let uc = ctx.cast::<libc::ucontext_t>();
    // SAFETY: ctx is this handler's ucontext (SA_SIGINFO).
    let mut regs = unsafe { read_regs(uc) };
    // SAFETY: rip points into mapped, executable code of this thread; x86 instructions are at
    // most 15 bytes. (An instruction ending within 15 bytes of an unmapped page would make this
    // read fault; code is followed by more code or padding in practice.)
    let bytes = unsafe { std::slice::from_raw_parts(regs.rip as *const u8, 15) };
    let fault = slot.fault_addr.load(Ordering::Relaxed);
    let request = match decode::decode(bytes, &regs, fault) {
        Ok(d) => Request::Decoded(d),
        Err(decode::Unsupported::AddressMismatch { .. }) => Request::Spurious,
        Err(decode::Unsupported::Straddles { addr, width }) => Request::Straddles { addr, width },
        Err(_) => Request::Unsupported,
    };
    let decoded = match &request {
        Request::Decoded(d) => Some(d.clone()),
        _ => None,
    };
    // SAFETY: in state SIGNALLED the handler owns `request`.
    unsafe { *slot.request.get() = request };
    slot.state.store(REQUEST, Ordering::Release);
    eventfd_poke(slot.efd.load(Ordering::Relaxed));
    while slot.state.load(Ordering::Acquire) == REQUEST {
        futex_wait(&slot.state, REQUEST);
    }
    // SAFETY: after observing DONE the handler owns `outcome` again.
    let outcome = unsafe { *slot.outcome.get() };
    if let (Outcome::Done { old }, Some(d)) = (outcome, decoded) {
        decode::apply(&d, old, &mut regs);
        // SAFETY: as for read_regs.
        unsafe { write_regs(uc, &regs) };
    }
    slot.state.store(FREE, Ordering::Release);
    slot.tid.store(0, Ordering::Release);
}
