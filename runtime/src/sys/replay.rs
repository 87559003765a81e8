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

use dsm_proto::replay_slot::{self as protocol, Phase, Ticket};

use crate::decode::{self, Decoded, Regs};
use crate::replay_times::{self as times, stamp};

/// Slots for threads in the middle of a replay, across all regions of the process.
pub const SLOTS: usize = 256;

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

/// One thread's replay in progress. `word` carries the phase and generation of
/// `dsm_proto::replay_slot`; the payload fields belong to whichever side the phase gives them to
/// (the runtime in `Reserved`, the handler in `Claimed`, the runtime in `Request`), and the
/// acquire/release CAS on `word` orders every hand-over.
pub struct Slot {
    word: AtomicU32,
    tid: AtomicI32,
    fault_addr: AtomicU64,
    efd: AtomicI32,
    request: UnsafeCell<Request>,
    outcome: UnsafeCell<Outcome>,
    /// The runtime thread's stamps of this replay (`crate::replay_times`); the handler reads
    /// them after the outcome is published.
    stamps: [AtomicU64; stamp::COUNT],
}

// SAFETY: `request` and `outcome` are only accessed by the side that owns them according to the
// phase in `word` (see `dsm_proto::replay_slot`), with acquire/release on `word` ordering the
// hand-overs.
unsafe impl Sync for Slot {}

impl Slot {
    const fn new() -> Slot {
        Slot {
            word: AtomicU32::new(0), // Free, generation 0
            tid: AtomicI32::new(0),
            fault_addr: AtomicU64::new(0),
            efd: AtomicI32::new(-1),
            request: UnsafeCell::new(Request::Empty),
            outcome: UnsafeCell::new(Outcome::Retry),
            stamps: [const { AtomicU64::new(0) }; stamp::COUNT],
        }
    }
}

#[allow(clippy::declare_interior_mutable_const)]
const NEW_SLOT: Slot = Slot::new();
/// The process-wide slot table (signal handlers are process-wide too).
static TABLE: [Slot; SLOTS] = [NEW_SLOT; SLOTS];

/// One signalled replay, as the runtime thread tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Claim {
    /// Slot index.
    pub slot: usize,
    /// The use of the slot.
    pub ticket: Ticket,
}

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

/// What [`signal_thread`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signalled {
    /// The thread was signalled; its handler will post a request (or the claim goes stale).
    Claimed(Claim),
    /// Every slot is busy, or the signal could not be sent: serve the fault by ownership.
    NoSlot,
}

/// Reserves a slot for `tid`, fills it and signals the thread. `read_at` and `tested_at` are
/// the first two stamps of the replay (see `crate::replay_times`).
pub fn signal_thread(tid: i32, fault_addr: u64, efd: i32, read_at: u64, tested_at: u64) -> Signalled {
    for (i, slot) in TABLE.iter().enumerate() {
        let Some(ticket) = protocol::reserve(&slot.word) else { continue };
        slot.tid.store(tid, Ordering::Relaxed);
        slot.fault_addr.store(fault_addr, Ordering::Relaxed);
        slot.efd.store(efd, Ordering::Relaxed);
        for s in &slot.stamps {
            s.store(0, Ordering::Relaxed);
        }
        slot.stamps[stamp::FAULT_READ].store(read_at, Ordering::Relaxed);
        slot.stamps[stamp::TESTED].store(tested_at, Ordering::Relaxed);
        // Before the signal: its handler may start before tgkill returns here.
        slot.stamps[stamp::SIGNALLING].store(times::now(), Ordering::Relaxed);
        protocol::publish(&slot.word, ticket);
        let claim = Claim { slot: i, ticket };
        // SAFETY: plain syscall; tid is a thread of this process reported by userfaultfd.
        let r = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, replay_signal()) };
        if r != 0 && reclaim(claim) {
            return Signalled::NoSlot;
        }
        // Sent, or not sent but a handler of an earlier, stale signal of this thread picked it
        // up: either way a request will come.
        return Signalled::Claimed(claim);
    }
    Signalled::NoSlot
}

/// Takes back a claim no handler picked up. False if a handler got to it first (its request
/// will come).
pub fn reclaim(claim: Claim) -> bool {
    protocol::reclaim(&TABLE[claim.slot].word, claim.ticket)
}

/// The request the handler of `claim` posted, if it did.
pub fn take_request(claim: Claim) -> Option<Request> {
    let slot = &TABLE[claim.slot];
    if !protocol::has_request(&slot.word, claim.ticket) {
        return None;
    }
    slot.stamps[stamp::PICKED].store(times::now(), Ordering::Relaxed);
    // SAFETY: in phase Request the runtime thread owns `request` (the handler waits for Done).
    Some(unsafe { std::mem::replace(&mut *slot.request.get(), Request::Empty) })
}

/// Publishes the outcome of `claim` and wakes its handler. False if the claim has no posted
/// request (then nothing changes).
pub fn complete(claim: Claim, outcome: Outcome) -> bool {
    let slot = &TABLE[claim.slot];
    if !protocol::has_request(&slot.word, claim.ticket) {
        return false;
    }
    slot.stamps[stamp::ANSWERED].store(times::now(), Ordering::Relaxed);
    // SAFETY: in phase Request the runtime thread owns `outcome`; the handler reads it only after
    // observing Done (release CAS below).
    unsafe { *slot.outcome.get() = outcome };
    let done = protocol::complete(&slot.word, claim.ticket);
    futex_wake(&slot.word);
    done
}

/// Stamps the moment `claim`'s store was framed for the coordinator.
pub fn stamp_sent(claim: Claim) {
    TABLE[claim.slot].stamps[stamp::SENT].store(times::now(), Ordering::Relaxed);
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

/// Finds the signalled slot of `tid` and picks it up (claims it for this handler).
fn pick_up(tid: i32) -> Option<(&'static Slot, Ticket)> {
    TABLE.iter().find_map(|slot| {
        let observed = protocol::SlotWord::load(&slot.word);
        let signalled = matches!(protocol::decode(observed), Some((Phase::Signalled, _)));
        if !signalled || slot.tid.load(Ordering::Relaxed) != tid {
            return None;
        }
        // CAS from exactly what we saw: a slot reused for another thread since has another
        // generation, and the CAS fails.
        protocol::pick_up_observed(&slot.word, observed).map(|t| (slot, t))
    })
}

extern "C" fn on_signal(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: plain syscall.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    let Some((slot, ticket)) = pick_up(tid) else {
        return; // a stale signal: the runtime took the slot back and served the fault otherwise
    };
    let entered = times::now();
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
        Request::Decoded(d) => Some(*d),
        _ => None,
    };
    // SAFETY: in phase Claimed the handler owns `request`.
    unsafe { *slot.request.get() = request };
    let posted = times::now();
    if !protocol::post(&slot.word, ticket) {
        return; // cannot happen: nobody else moves a Claimed slot
    }
    eventfd_poke(slot.efd.load(Ordering::Relaxed));
    let waiting = protocol::encode(Phase::Request, ticket.generation);
    while protocol::is_waiting(&slot.word, ticket) {
        futex_wait(&slot.word, waiting);
    }
    // SAFETY: after observing Done the handler owns `outcome` again.
    let outcome = unsafe { *slot.outcome.get() };
    if let (Outcome::Done { old }, Some(d)) = (outcome, decoded) {
        let mut stamps: [u64; stamp::COUNT] = std::array::from_fn(|i| slot.stamps[i].load(Ordering::Relaxed));
        stamps[stamp::HANDLER] = entered;
        stamps[stamp::POSTED] = posted;
        stamps[stamp::RESUMED] = times::now();
        times::record(&stamps);
        decode::apply(&d, old, &mut regs);
        // SAFETY: as for read_regs.
        unsafe { write_regs(uc, &regs) };
    }
    protocol::release(&slot.word, ticket);
}
