//! `dsm-replay-diff`: a differential test of write replay through the REAL fault path.
//!
//! Two processes, configured from the `DSM_*` environment like `dsm-worker`. Rank 0 advises the
//! whole region [`dsm::Coherence::Update`]; rank 1 reads every test page (so another process
//! holds copies the replayed stores must reach). Then rank 0 runs, for every supported store
//! form (the table of `runtime/src/decode/tests.rs`, copied here because it is `cfg(test)`
//! there) and `ROUNDS` random rounds: random registers, flags, xmm and memory, an operand offset
//! anywhere in the page (16-byte aligned for the aligned forms). The instruction runs natively
//! on a private page and then on the update-mode region page (same offset, same bytes; the
//! region's bytes are set with 8-byte stores, themselves replayed). That second run faults, is
//! decoded in the signal handler, replayed at the coordinator and resumed past the instruction.
//! Memory (the whole page), every GPR, every xmm register and the arithmetic flags (0x8D5) must
//! match, and `replayed_writes` must grow with each instruction.
//!
//! Unsupported forms (`rep movsb`, a non-locked `add`, `sete`, an AVX `vmovdqu ymm` store when
//! the CPU has AVX) and an 8-byte store straddling two update-mode pages must still produce the
//! right memory, through the ownership fallback. Finally rank 1 checks a checksum of every test
//! page that rank 0 wrote into the region.
//!
//! Prints `replay-diff: N cases ok`; exits non-zero with the failing form and inputs on the
//! first mismatch, or if nothing progresses for `WATCHDOG` (a hung replay).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dsm::decode::{Regs, Unsupported};

/// Rounds per supported form.
const ROUNDS: usize = 30;
/// Rounds (each on a fresh page) per unsupported form.
const FALLBACK_ROUNDS: usize = 3;
const PAGE: usize = 4096;
/// The arithmetic flags CF PF AF ZF SF OF.
const FLAGS: u64 = 0x8D5;
/// Region pages: 1 for the supported forms, then fresh pages for the fallbacks, the last one
/// carries the checksum for rank 1.
const PAGES: usize = 64;
const SUPPORTED_PAGE: usize = 1;
const FALLBACK_FIRST: usize = 8;
const CHECKSUM_PAGE: usize = PAGES - 1;
const WATCHDOG: Duration = Duration::from_secs(20);
const RAX: usize = 0;
const RCX: usize = 1;
const RSI: usize = 6;
const RDI: usize = 7;

/// Register file the native harness loads before and stores after the instruction.
#[repr(C)]
#[derive(Debug, Clone, Default)]
struct Ctx {
    gpr: [u64; 16], // offset 0; rsp (index 4) is neither loaded nor stored
    rflags: u64,    // offset 128
    _pad: u64,
    xmm: [u128; 16], // offset 144
}

/// Builds an `unsafe fn(*mut Ctx)` that loads every register but rsp from the context, sets the
/// flags, runs the given instruction bytes, and stores registers and flags back.
macro_rules! native {
    ($($b:literal),+) => {{
        /// # Safety
        /// `ctx` must be valid, and the registers must make the instruction access only memory
        /// the caller owns.
        unsafe fn run(ctx: *mut Ctx) {
            // SAFETY: the block saves and restores rbx/rbp (which Rust reserves) on the stack,
            // declares every other register it changes as clobbered, leaves the stack balanced
            // and DF clear; the instruction writes only the caller's buffer (caller contract).
            unsafe {
                core::arch::asm!(
                    "push rbx",
                    "push rbp",
                    "push rdi",
                    "push qword ptr [rdi + 128]",
                    "popfq",
                    "movdqu xmm0, [rdi + 144]",
                    "movdqu xmm1, [rdi + 160]",
                    "movdqu xmm2, [rdi + 176]",
                    "movdqu xmm3, [rdi + 192]",
                    "movdqu xmm4, [rdi + 208]",
                    "movdqu xmm5, [rdi + 224]",
                    "movdqu xmm6, [rdi + 240]",
                    "movdqu xmm7, [rdi + 256]",
                    "movdqu xmm8, [rdi + 272]",
                    "movdqu xmm9, [rdi + 288]",
                    "movdqu xmm10, [rdi + 304]",
                    "movdqu xmm11, [rdi + 320]",
                    "movdqu xmm12, [rdi + 336]",
                    "movdqu xmm13, [rdi + 352]",
                    "movdqu xmm14, [rdi + 368]",
                    "movdqu xmm15, [rdi + 384]",
                    "mov rax, [rdi]",
                    "mov rcx, [rdi + 8]",
                    "mov rdx, [rdi + 16]",
                    "mov rbx, [rdi + 24]",
                    "mov rbp, [rdi + 40]",
                    "mov rsi, [rdi + 48]",
                    "mov r8, [rdi + 64]",
                    "mov r9, [rdi + 72]",
                    "mov r10, [rdi + 80]",
                    "mov r11, [rdi + 88]",
                    "mov r12, [rdi + 96]",
                    "mov r13, [rdi + 104]",
                    "mov r14, [rdi + 112]",
                    "mov r15, [rdi + 120]",
                    "mov rdi, [rdi + 56]",
                    concat!(".byte ", stringify!($($b),+)),
                    "pushfq",
                    "push rdi",
                    "mov rdi, [rsp + 16]",
                    "mov [rdi], rax",
                    "mov [rdi + 8], rcx",
                    "mov [rdi + 16], rdx",
                    "mov [rdi + 24], rbx",
                    "mov [rdi + 40], rbp",
                    "mov [rdi + 48], rsi",
                    "mov [rdi + 64], r8",
                    "mov [rdi + 72], r9",
                    "mov [rdi + 80], r10",
                    "mov [rdi + 88], r11",
                    "mov [rdi + 96], r12",
                    "mov [rdi + 104], r13",
                    "mov [rdi + 112], r14",
                    "mov [rdi + 120], r15",
                    "pop qword ptr [rdi + 56]",
                    "pop qword ptr [rdi + 128]",
                    "movdqu [rdi + 144], xmm0",
                    "movdqu [rdi + 160], xmm1",
                    "movdqu [rdi + 176], xmm2",
                    "movdqu [rdi + 192], xmm3",
                    "movdqu [rdi + 208], xmm4",
                    "movdqu [rdi + 224], xmm5",
                    "movdqu [rdi + 240], xmm6",
                    "movdqu [rdi + 256], xmm7",
                    "movdqu [rdi + 272], xmm8",
                    "movdqu [rdi + 288], xmm9",
                    "movdqu [rdi + 304], xmm10",
                    "movdqu [rdi + 320], xmm11",
                    "movdqu [rdi + 336], xmm12",
                    "movdqu [rdi + 352], xmm13",
                    "movdqu [rdi + 368], xmm14",
                    "movdqu [rdi + 384], xmm15",
                    "pop rdi",
                    "pop rbp",
                    "pop rbx",
                    inout("rdi") ctx => _,
                    out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _,
                    out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                    out("r12") _, out("r13") _, out("r14") _, out("r15") _,
                    out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
                    out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
                    out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
                    out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
                );
            }
        }
        run as unsafe fn(*mut Ctx)
    }};
}

struct Form {
    asm: &'static str,
    bytes: &'static [u8],
    run: unsafe fn(*mut Ctx),
}

macro_rules! form {
    ($asm:literal, [$($b:literal),+]) => {
        Form { asm: $asm, bytes: &[$($b),+], run: native!($($b),+) }
    };
}

fn forms() -> Vec<Form> {
    vec![
        // Plain stores from general registers and immediates.
        form!("mov [rsi+0x10], al", [0x88, 0x46, 0x10]),
        form!("mov [rsi+0x10], ah", [0x88, 0x66, 0x10]),
        form!("mov [rsi+rdx*2+0x10], cx", [0x66, 0x89, 0x4c, 0x56, 0x10]),
        form!("mov [rsi+rdx*4-0x8], r9d", [0x44, 0x89, 0x4c, 0x96, 0xf8]),
        form!(
            "mov [rsi+rdx*8+0x1000], r10",
            [0x4c, 0x89, 0x94, 0xd6, 0x00, 0x10, 0x00, 0x00]
        ),
        form!("mov [r13], r15b", [0x45, 0x88, 0x7d, 0x00]),
        form!("mov [r12], sil", [0x41, 0x88, 0x34, 0x24]),
        form!("mov [rbp+rbx-0x40], rdi", [0x48, 0x89, 0x7c, 0x1d, 0xc0]),
        form!("mov byte ptr [rsi+0x7], -0x7b", [0xc6, 0x46, 0x07, 0x85]),
        form!("mov word ptr [rsi], 0x1234", [0x66, 0xc7, 0x06, 0x34, 0x12]),
        form!(
            "mov dword ptr [r8+0x20], -0x76543211",
            [0x41, 0xc7, 0x40, 0x20, 0xef, 0xcd, 0xab, 0x89]
        ),
        form!(
            "mov qword ptr [rsi+rcx], -0x12345678",
            [0x48, 0xc7, 0x04, 0x0e, 0x88, 0xa9, 0xcb, 0xed]
        ),
        form!(
            "mov qword ptr [rdi], 0x7fffffff",
            [0x48, 0xc7, 0x07, 0xff, 0xff, 0xff, 0x7f]
        ),
        form!("movnti [rsi+0x8], ecx", [0x0f, 0xc3, 0x4e, 0x08]),
        form!("movnti [rsi+0x8], r11", [0x4c, 0x0f, 0xc3, 0x5e, 0x08]),
        form!("mov fs:[rsi], ecx", [0x64, 0x89, 0x0e]),
        // Stores from XMM registers.
        form!("movd [rsi+0x4], xmm3", [0x66, 0x0f, 0x7e, 0x5e, 0x04]),
        form!("movq [rsi+0x4], xmm9", [0x66, 0x4c, 0x0f, 0x7e, 0x4e, 0x04]),
        form!("movq [rsi+0x4], xmm2", [0x66, 0x0f, 0xd6, 0x56, 0x04]),
        form!("movss [rsi+0x4], xmm1", [0xf3, 0x0f, 0x11, 0x4e, 0x04]),
        form!(
            "movsd [rsi+0x4], xmm14",
            [0xf2, 0x44, 0x0f, 0x11, 0x76, 0x04]
        ),
        form!("movups [rsi+0x3], xmm5", [0x0f, 0x11, 0x6e, 0x03]),
        form!(
            "movupd [rsi+0x1], xmm15",
            [0x66, 0x44, 0x0f, 0x11, 0x7e, 0x01]
        ),
        form!(
            "movdqu [rsi+rdx], xmm12",
            [0xf3, 0x44, 0x0f, 0x7f, 0x24, 0x16]
        ),
        form!("movaps [rsi], xmm6", [0x0f, 0x29, 0x36]),
        form!("movapd [rsi], xmm0", [0x66, 0x0f, 0x29, 0x06]),
        form!("movdqa [rsi+0x10], xmm7", [0x66, 0x0f, 0x7f, 0x7e, 0x10]),
        form!("movntdq [rsi], xmm1", [0x66, 0x0f, 0xe7, 0x0e]),
        form!("movntps [rsi], xmm2", [0x0f, 0x2b, 0x16]),
        form!("movntpd [rsi], xmm10", [0x66, 0x44, 0x0f, 0x2b, 0x16]),
        form!("movlps [rsi], xmm4", [0x0f, 0x13, 0x26]),
        form!("movhps [rsi], xmm4", [0x0f, 0x17, 0x26]),
        form!("movlpd [rsi+0x2], xmm5", [0x66, 0x0f, 0x13, 0x6e, 0x02]),
        form!(
            "movhpd [rsi+0x2], xmm11",
            [0x66, 0x44, 0x0f, 0x17, 0x5e, 0x02]
        ),
        // xchg (implicitly locked).
        form!("xchg [rsi], cl", [0x86, 0x0e]),
        form!("xchg [rsi], bh", [0x86, 0x3e]),
        form!("xchg [rsi+0x2], dx", [0x66, 0x87, 0x56, 0x02]),
        form!("xchg [rsi], ecx", [0x87, 0x0e]),
        form!("xchg [rsi], r9", [0x4c, 0x87, 0x0e]),
        // lock add/sub/and/or/xor with registers and immediates.
        form!("lock add [rsi], dl", [0xf0, 0x00, 0x16]),
        form!("lock add [rsi], cx", [0x66, 0xf0, 0x01, 0x0e]),
        form!("lock add [rsi], ecx", [0xf0, 0x01, 0x0e]),
        form!("lock add [rsi], r8", [0xf0, 0x4c, 0x01, 0x06]),
        form!("lock add byte ptr [rsi], 0x7f", [0xf0, 0x80, 0x06, 0x7f]),
        form!(
            "lock add word ptr [rsi], -0x6dcc",
            [0x66, 0xf0, 0x81, 0x06, 0x34, 0x92]
        ),
        form!(
            "lock add dword ptr [rsi], 0x12345678",
            [0xf0, 0x81, 0x06, 0x78, 0x56, 0x34, 0x12]
        ),
        form!(
            "lock add qword ptr [rsi], -0x1",
            [0xf0, 0x48, 0x83, 0x06, 0xff]
        ),
        form!(
            "lock add qword ptr [rsi], -0x7fffffff",
            [0xf0, 0x48, 0x81, 0x06, 0x01, 0x00, 0x00, 0x80]
        ),
        form!(
            "lock add word ptr [rsi], -0x80",
            [0x66, 0xf0, 0x83, 0x06, 0x80]
        ),
        form!("lock sub [rsi], ecx", [0xf0, 0x29, 0x0e]),
        form!("lock sub [rsi], ah", [0xf0, 0x28, 0x26]),
        form!(
            "lock sub qword ptr [rsi], 0x5",
            [0xf0, 0x48, 0x83, 0x2e, 0x05]
        ),
        form!("lock sub [rsi], r13w", [0x66, 0xf0, 0x44, 0x29, 0x2e]),
        form!("lock and [rsi], r10d", [0xf0, 0x44, 0x21, 0x16]),
        form!("lock and byte ptr [rsi], 0xf", [0xf0, 0x80, 0x26, 0x0f]),
        form!(
            "lock and qword ptr [rsi], -0xf01",
            [0xf0, 0x48, 0x81, 0x26, 0xff, 0xf0, 0xff, 0xff]
        ),
        form!("lock or [rsi], cx", [0x66, 0xf0, 0x09, 0x0e]),
        form!(
            "lock or qword ptr [rsi], -0x80",
            [0xf0, 0x48, 0x83, 0x0e, 0x80]
        ),
        form!("lock or byte ptr [rsi], -0x7f", [0xf0, 0x80, 0x0e, 0x81]),
        form!("lock xor [rsi], rdx", [0xf0, 0x48, 0x31, 0x16]),
        form!("lock xor dword ptr [rsi], -0x1", [0xf0, 0x83, 0x36, 0xff]),
        form!("lock xor [rsi], bl", [0xf0, 0x30, 0x1e]),
        // lock inc/dec/neg/not.
        form!("lock inc byte ptr [rsi]", [0xf0, 0xfe, 0x06]),
        form!("lock inc word ptr [rsi]", [0x66, 0xf0, 0xff, 0x06]),
        form!("lock inc dword ptr [rsi]", [0xf0, 0xff, 0x06]),
        form!("lock inc qword ptr [rsi]", [0xf0, 0x48, 0xff, 0x06]),
        form!("lock dec byte ptr [rsi]", [0xf0, 0xfe, 0x0e]),
        form!("lock dec word ptr [rsi]", [0x66, 0xf0, 0xff, 0x0e]),
        form!("lock dec dword ptr [rsi]", [0xf0, 0xff, 0x0e]),
        form!("lock dec qword ptr [rsi]", [0xf0, 0x48, 0xff, 0x0e]),
        form!("lock neg byte ptr [rsi]", [0xf0, 0xf6, 0x1e]),
        form!("lock neg word ptr [rsi]", [0x66, 0xf0, 0xf7, 0x1e]),
        form!("lock neg dword ptr [rsi]", [0xf0, 0xf7, 0x1e]),
        form!("lock neg qword ptr [rsi]", [0xf0, 0x48, 0xf7, 0x1e]),
        form!("lock not byte ptr [rsi]", [0xf0, 0xf6, 0x16]),
        form!("lock not word ptr [rsi]", [0x66, 0xf0, 0xf7, 0x16]),
        form!("lock not dword ptr [rsi]", [0xf0, 0xf7, 0x16]),
        form!("lock not qword ptr [rsi]", [0xf0, 0x48, 0xf7, 0x16]),
        // lock xadd / cmpxchg.
        form!("lock xadd [rsi], cl", [0xf0, 0x0f, 0xc0, 0x0e]),
        form!("lock xadd [rsi], ah", [0xf0, 0x0f, 0xc0, 0x26]),
        form!("lock xadd [rsi], cx", [0x66, 0xf0, 0x0f, 0xc1, 0x0e]),
        form!("lock xadd [rsi], ecx", [0xf0, 0x0f, 0xc1, 0x0e]),
        form!("lock xadd [rsi], r11", [0xf0, 0x4c, 0x0f, 0xc1, 0x1e]),
        form!(
            "lock xadd [rbx+rbp*2+0x7f], rax",
            [0xf0, 0x48, 0x0f, 0xc1, 0x44, 0x6b, 0x7f]
        ),
        form!(
            "lock xadd fs:[rsi], rcx",
            [0xf0, 0x64, 0x48, 0x0f, 0xc1, 0x0e]
        ),
        form!("lock cmpxchg [rsi], cl", [0xf0, 0x0f, 0xb0, 0x0e]),
        form!("lock cmpxchg [rsi], dh", [0xf0, 0x0f, 0xb0, 0x36]),
        form!("lock cmpxchg [rsi], cx", [0x66, 0xf0, 0x0f, 0xb1, 0x0e]),
        form!("lock cmpxchg [rsi], ecx", [0xf0, 0x0f, 0xb1, 0x0e]),
        form!("lock cmpxchg [rsi], r9", [0xf0, 0x4c, 0x0f, 0xb1, 0x0e]),
    ]
}

/// Non-replayable forms run through the same harness: (form, register adjusted to point at the
/// operand, operand width; 0 = `rep movsb`, whose width is rcx).
fn fallback_forms() -> Vec<(Form, usize, usize)> {
    vec![
        (form!("rep movsb [rdi], [rsi]", [0xf3, 0xa4]), RDI, 0),
        (form!("add [rsi], ecx", [0x01, 0x0e]), RSI, 4),
        (form!("sete [rsi]", [0x0f, 0x94, 0x06]), RSI, 1),
        (form!("xadd [rsi], rcx", [0x48, 0x0f, 0xc1, 0x0e]), RSI, 8),
    ]
}

#[repr(C, align(4096))]
struct Pages([u8; 2 * PAGE]);

fn thread_pointer() -> u64 {
    let tp: u64;
    // SAFETY: on x86-64 Linux (glibc and musl) fs:0 holds the thread control block's address,
    // which is the fs base; the load has no side effects.
    unsafe { core::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags)) };
    tp
}

/// Tiny xorshift64* generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A random value whose low 1/2/4/8 bytes are often a boundary value.
    fn interesting(&mut self) -> u64 {
        let r = self.next();
        if self.below(2) == 0 {
            return r;
        }
        let m = mask([1, 2, 4, 8][self.below(4) as usize]);
        let pick = match self.below(8) {
            0 => 0,
            1 => 1,
            2 => m >> 1,
            3 => (m >> 1) + 1,
            4 => m,
            5 => m - 1,
            6 => 0xf,
            _ => 0x10,
        };
        (self.next() & !m) | pick
    }
}

fn mask(width: usize) -> u64 {
    if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (width * 8)) - 1
    }
}

/// What the watchdog reports if nothing progresses.
static CURRENT: Mutex<String> = Mutex::new(String::new());
static PROGRESS: AtomicU64 = AtomicU64::new(0);

fn progress(what: impl FnOnce() -> String) {
    PROGRESS.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut c) = CURRENT.lock() {
        *c = what();
    }
}

fn start_watchdog() {
    std::thread::spawn(|| {
        let mut last = u64::MAX;
        let mut since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let p = PROGRESS.load(Ordering::Relaxed);
            if p != last {
                last = p;
                since = Instant::now();
            } else if since.elapsed() > WATCHDOG {
                let what = CURRENT.lock().map(|c| c.clone()).unwrap_or_default();
                eprintln!("replay-diff: HANG: no progress for {WATCHDOG:?}; last step: {what}");
                dump_threads();
                std::process::exit(2);
            }
        }
    });
}

/// Prints every thread's name, system call state and wait channel (for a hang report); with
/// `DSM_REPLAY_DIFF_GDB=1`, also every thread's backtrace from gdb.
fn dump_threads() {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return };
    for t in tasks.flatten() {
        let p = t.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default().trim().to_string();
        eprintln!(
            "replay-diff: thread {} {:?} syscall [{}] wchan {}",
            t.file_name().to_string_lossy(),
            read("comm"),
            read("syscall"),
            read("wchan")
        );
    }
    if std::env::var_os("DSM_REPLAY_DIFF_GDB").is_some() {
        let pid = std::process::id().to_string();
        if let Ok(out) = std::process::Command::new("gdb")
            .args(["-p", &pid, "-batch", "-ex", "thread apply all bt 25"])
            .output()
        {
            eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        }
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let r = run();
    if let Err(e) = r {
        eprintln!("replay-diff: FAILED: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let config = dsm::Config::from_env().map_err(|e| e.to_string())?;
    let region = dsm::Region::attach(&config).map_err(|e| e.to_string())?;
    let rank = region.rank();
    println!("attached rank {rank} of {} pid {}", region.nprocs(), std::process::id());
    if region.nprocs() != 2 {
        return Err(format!("needs 2 processes, the session has {}", region.nprocs()));
    }
    if region.len() < PAGES * PAGE {
        return Err(format!("needs a region of at least {} bytes", PAGES * PAGE));
    }
    let e = |e: dsm::Error| e.to_string();
    if rank == 0 {
        region.advise(0, region.len(), dsm::Coherence::Update).map_err(e)?;
    }
    region.barrier().map_err(e)?;
    let base = region.as_ptr();
    if rank == 1 {
        // Hold a read-only copy of every page: replayed stores must reach us.
        let mut sum = 0u64;
        for p in 0..PAGES {
            // SAFETY: inside the region (size checked above).
            sum += u64::from(unsafe { std::ptr::read_volatile(base.add(p * PAGE)) });
        }
        println!("rank 1 touched {PAGES} pages ({sum})");
    }
    region.barrier().map_err(e)?;
    if rank == 0 {
        start_watchdog();
        let t = Instant::now();
        let cases = rank0(&region)?;
        let sum = checksum(base, CHECKSUM_PAGE * PAGE);
        // SAFETY: the checksum page lies inside the region.
        unsafe { std::ptr::write_volatile(base.add(CHECKSUM_PAGE * PAGE).cast::<u64>(), sum) };
        println!("replay-diff: checksum {sum:#018x}");
        let stats = region.stats().map_err(e)?;
        println!("replay-diff: {cases} cases ok in {:.1?} stats {stats:?}", t.elapsed());
    }
    region.barrier().map_err(e)?;
    if rank == 1 {
        // SAFETY: inside the region.
        let want = unsafe { std::ptr::read_volatile(base.add(CHECKSUM_PAGE * PAGE).cast::<u64>()) };
        let got = checksum(base, CHECKSUM_PAGE * PAGE);
        if got != want {
            return Err(format!("rank 1 sees checksum {got:#x} of the test pages, rank 0 wrote {want:#x}"));
        }
        println!("rank 1 checksum {got:#018x} matches");
    }
    region.barrier().map_err(e)?;
    println!("rank {rank} ok stats {:?}", region.stats().map_err(e)?);
    region.detach().map_err(e)
}

fn checksum(base: *const u8, len: usize) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for i in (0..len).step_by(8) {
        // SAFETY: callers pass a range inside the region; 8-byte aligned.
        let w = unsafe { std::ptr::read_volatile(base.add(i).cast::<u64>()) };
        h = (h ^ w).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The operand address `decode` computes for `regs` (any outcome that names it).
fn probe(bytes: &[u8], regs: &Regs) -> Option<u64> {
    match dsm::decode::decode(bytes, regs, 0) {
        Ok(d) => Some(d.effect.addr()),
        Err(Unsupported::AddressMismatch { computed, .. }) => Some(computed),
        Err(Unsupported::Straddles { addr, .. }) | Err(Unsupported::Misaligned { addr, .. }) => Some(addr),
        Err(_) => None,
    }
}

fn to_regs(ctx: &Ctx, fs_base: u64) -> Regs {
    Regs { gpr: ctx.gpr, rip: 0x5555_0000_1000, rflags: ctx.rflags, xmm: ctx.xmm, fs_base, gs_base: 0 }
}

/// How a form addresses its operand: the coefficient of every GPR in the address, the register
/// adjusted to point at the target, the width and whether it needs 16-byte alignment.
struct Addressing {
    coef: [u64; 16],
    adjust: usize,
    width: usize,
    aligned: bool,
}

fn addressing(form: &Form, fs_base: u64) -> Result<Addressing, String> {
    let mut ctx = Ctx { gpr: [0x1000_0000; 16], ..Ctx::default() };
    let at = |c: &Ctx| probe(form.bytes, &to_regs(c, fs_base)).ok_or_else(|| format!("{}: decode does not support it", form.asm));
    let a0 = at(&ctx)?;
    let mut coef = [0u64; 16];
    for (i, c) in coef.iter_mut().enumerate() {
        if i == 4 {
            continue; // rsp is neither loaded nor saved by the harness
        }
        let mut p = ctx.clone();
        p.gpr[i] += 0x100;
        *c = at(&p)?.wrapping_sub(a0) / 0x100;
    }
    let adjust = coef.iter().position(|&c| c == 1).ok_or_else(|| format!("{}: no base register", form.asm))?;
    ctx.gpr[adjust] = 0;
    let k = at(&ctx)?;
    let want = 0x4000_0000_0000u64;
    ctx.gpr[adjust] = want.wrapping_sub(k);
    let d = dsm::decode::decode(form.bytes, &to_regs(&ctx, fs_base), want)
        .map_err(|e| format!("{}: decode refuses an aligned in-page operand: {e}", form.asm))?;
    let aligned = ["movaps", "movapd", "movdqa", "movntdq", "movntps", "movntpd"].iter().any(|m| form.asm.starts_with(m));
    Ok(Addressing { coef, adjust, width: usize::from(d.effect.width()), aligned })
}

/// The region-side and private-side state of one case, for the failure message.
fn describe(form: &str, round: usize, off: usize, ctx: &Ctx, initial: &[u8]) -> String {
    format!("form `{form}` round {round} offset {off:#x} initial regs {ctx:x?} initial operand bytes {initial:02x?}")
}

/// Compares the outcome of one case; `adjust` is the register that holds a page pointer (its
/// value relative to the page is compared).
#[allow(clippy::too_many_arguments)]
fn compare(
    what: &str,
    adjust: usize,
    native0: &Ctx,
    native: &Ctx,
    region0: &Ctx,
    region: &Ctx,
    mirror: &[u8],
    page: &[u8],
) -> Result<(), String> {
    if mirror != page {
        let diffs: Vec<String> = (0..mirror.len())
            .filter(|&i| mirror[i] != page[i])
            .take(16)
            .map(|i| format!("[{i:#x}] native {:02x} replayed {:02x}", mirror[i], page[i]))
            .collect();
        return Err(format!("memory differs: {what}: {}", diffs.join(", ")));
    }
    for i in 0..16 {
        if i == 4 {
            continue;
        }
        let (n, r) = if i == adjust || native0.gpr[i] != region0.gpr[i] {
            (native.gpr[i].wrapping_sub(native0.gpr[i]), region.gpr[i].wrapping_sub(region0.gpr[i]))
        } else {
            (native.gpr[i], region.gpr[i])
        };
        if n != r {
            return Err(format!("gpr {i} differs: native {n:#x} replayed {r:#x} (relative if a pointer): {what}"));
        }
    }
    if native.xmm != region.xmm {
        return Err(format!("xmm differs: native {:x?} replayed {:x?}: {what}", native.xmm, region.xmm));
    }
    if native.rflags & FLAGS != region.rflags & FLAGS {
        return Err(format!(
            "flags differ: native {:#x} replayed {:#x} (mask {FLAGS:#x}): {what}",
            native.rflags & FLAGS,
            region.rflags & FLAGS
        ));
    }
    Ok(())
}

/// Writes `bytes` at `page + from` (8-aligned, multiple of 8) with 8-byte stores.
fn store_words(page: *mut u8, from: usize, bytes: &[u8]) {
    for (j, c) in bytes.chunks(8).enumerate() {
        let w = u64::from_le_bytes(c.try_into().expect("8-byte chunks"));
        // SAFETY: callers pass an 8-aligned range inside a region page.
        unsafe { std::ptr::write_volatile(page.add(from + 8 * j).cast::<u64>(), w) };
    }
}

/// Randomizes the 8-aligned window around `off..off + width` on both sides; returns it.
fn randomize(rng: &mut Rng, mirror: &mut [u8], page: *mut u8, off: usize, width: usize) -> (usize, usize) {
    let w0 = off.saturating_sub(8) & !7;
    let w1 = ((off + width + 8 + 7) & !7).min(PAGE);
    for b in &mut mirror[w0..w1] {
        *b = rng.next() as u8;
    }
    if width <= 8 && rng.below(2) == 0 {
        let v = rng.interesting().to_le_bytes();
        mirror[off..off + width].copy_from_slice(&v[..width]);
    }
    store_words(page, w0, &mirror[w0..w1]);
    (w0, w1)
}

fn region_page(region: &dsm::Region, p: usize) -> (*mut u8, &[u8]) {
    let s: &[u8] = region.as_slice(p * PAGE, PAGE).expect("inside the region");
    (s.as_ptr().cast_mut(), s)
}

fn replayed(region: &dsm::Region) -> Result<u64, String> {
    Ok(region.stats().map_err(|e| e.to_string())?.replayed_writes)
}

fn rank0(region: &dsm::Region) -> Result<usize, String> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let fs_base = thread_pointer();
    let mut buf = Box::new(Pages([0; 2 * PAGE]));
    let mut cases = 0usize;
    let start = replayed(region)?;

    // 1. Supported forms on one update-mode page, replayed.
    let (page, view) = region_page(region, SUPPORTED_PAGE);
    // The page starts zeroed on both sides.
    if view.iter().any(|&b| b != 0) {
        return Err("the fresh region page is not zero".into());
    }
    for form in forms() {
        let a = addressing(&form, fs_base)?;
        let width = a.width;
        for round in 0..ROUNDS {
            progress(|| format!("form `{}` round {round}", form.asm));
            let step = if a.aligned { 16 } else { 1 };
            let off = match rng.below(4) {
                0 => PAGE - width,
                1 => rng.below(8) as usize * step,
                _ => rng.below(((PAGE - width) / step + 1) as u64) as usize * step,
            };
            let mirror = &mut buf.0[..PAGE];
            if mirror != view {
                return Err(format!("before form `{}` round {round}: the region page no longer matches its private mirror", form.asm));
            }
            randomize(&mut rng, mirror, page, off, width);
            let mut ctx = Ctx::default();
            for g in ctx.gpr.iter_mut() {
                *g = rng.interesting();
            }
            for x in ctx.xmm.iter_mut() {
                *x = u128::from(rng.next()) << 64 | u128::from(rng.next());
            }
            ctx.rflags = 0x202 | (rng.next() & FLAGS);
            for i in 0..16 {
                if a.coef[i] != 0 && i != a.adjust {
                    ctx.gpr[i] = rng.below(64);
                }
            }
            if a.coef[RAX] == 0 && rng.below(2) == 0 {
                // Make cmpxchg succeed about half of the time.
                let mut cur = [0u8; 8];
                let n = width.min(8);
                cur[..n].copy_from_slice(&mirror[off..off + n]);
                let m = mask(n);
                ctx.gpr[RAX] = (ctx.gpr[RAX] & !m) | u64::from_le_bytes(cur);
            }
            ctx.gpr[a.adjust] = 0;
            let k = probe(form.bytes, &to_regs(&ctx, fs_base)).ok_or("probe failed")?;
            let mut native0 = ctx.clone();
            native0.gpr[a.adjust] = (mirror.as_ptr() as u64 + off as u64).wrapping_sub(k);
            let mut region0 = ctx.clone();
            region0.gpr[a.adjust] = (page as u64 + off as u64).wrapping_sub(k);
            let initial = mirror[off..off + width].to_vec();
            let what = describe(form.asm, round, off, &native0, &initial);
            let mut native = native0.clone();
            // SAFETY: the registers make the instruction access only `mirror` at `off`, inside
            // the page (the address was computed by decode, which the unit tests check against
            // the CPU).
            unsafe { (form.run)(&mut native) };
            let before = replayed(region)?;
            let mut replay = region0.clone();
            // SAFETY: the same instruction on the region page at the same offset.
            unsafe { (form.run)(&mut replay) };
            let after = replayed(region)?;
            compare(&what, a.adjust, &native0, &native, &region0, &replay, &buf.0[..PAGE], view)?;
            if after <= before {
                return Err(format!("the store was not replayed (replayed_writes {before} -> {after}): {what}"));
            }
            cases += 1;
        }
    }
    let mid = replayed(region)?;
    println!("replay-diff: {cases} replayed cases ok, replayed_writes {start} -> {mid}");
    if mid <= start {
        return Err("replayed_writes did not grow".into());
    }

    // 2. Unsupported forms, each round on a fresh update-mode page: the ownership fallback.
    let mut next_page = FALLBACK_FIRST;
    let src: Vec<u8> = (0..64).map(|_| rng.next() as u8).collect();
    for (form, adjust, fixed_width) in fallback_forms() {
        for round in 0..FALLBACK_ROUNDS {
            progress(|| format!("fallback form `{}` round {round}", form.asm));
            let (page, view) = region_page(region, next_page);
            next_page += 1;
            let mirror = &mut buf.0[..PAGE];
            mirror.copy_from_slice(view);
            let width = if fixed_width == 0 { 1 + rng.below(16) as usize } else { fixed_width };
            let off = match round {
                0 => PAGE - width,
                _ => rng.below((PAGE - width + 1) as u64) as usize,
            };
            randomize(&mut rng, mirror, page, off, width);
            let mut ctx = Ctx::default();
            for g in ctx.gpr.iter_mut() {
                *g = rng.interesting();
            }
            for x in ctx.xmm.iter_mut() {
                *x = u128::from(rng.next()) << 64 | u128::from(rng.next());
            }
            ctx.rflags = 0x202 | (rng.next() & FLAGS);
            if fixed_width == 0 {
                ctx.gpr[RSI] = src.as_ptr() as u64;
                ctx.gpr[RCX] = width as u64;
            }
            let mut native0 = ctx.clone();
            native0.gpr[adjust] = mirror.as_ptr() as u64 + off as u64;
            let mut region0 = ctx.clone();
            region0.gpr[adjust] = page as u64 + off as u64;
            let what = describe(form.asm, round, off, &native0, &mirror[off..off + width]);
            let mut native = native0.clone();
            // SAFETY: the instruction accesses `mirror` at `off..off + width` (and `src`).
            unsafe { (form.run)(&mut native) };
            let mut replay = region0.clone();
            // SAFETY: the same on the region page.
            unsafe { (form.run)(&mut replay) };
            compare(&what, adjust, &native0, &native, &region0, &replay, &buf.0[..PAGE], view)?;
            cases += 1;
        }
    }
    if std::arch::is_x86_feature_detected!("avx") {
        for round in 0..FALLBACK_ROUNDS {
            progress(|| format!("vmovdqu ymm round {round}"));
            let (page, view) = region_page(region, next_page);
            next_page += 1;
            let mirror = &mut buf.0[..PAGE];
            mirror.copy_from_slice(view);
            let off = if round == 0 { PAGE - 32 } else { rng.below((PAGE - 32 + 1) as u64) as usize };
            randomize(&mut rng, mirror, page, off, 32);
            let s = rng.below(32) as usize;
            // SAFETY: AVX is available; both destinations are 32 bytes inside their page and
            // the source is 32 bytes inside `src`.
            unsafe {
                vmovdqu_ymm(mirror.as_mut_ptr().add(off), src.as_ptr().add(s));
                vmovdqu_ymm(page.add(off), src.as_ptr().add(s));
            }
            if buf.0[..PAGE] != *view {
                return Err(format!("memory differs after `vmovdqu [m], ymm0` at offset {off:#x} (ownership fallback)"));
            }
            cases += 1;
        }
    } else {
        println!("replay-diff: no AVX, skipping vmovdqu ymm");
    }
    // 3. An 8-byte store straddling the end of an update-mode page into the next one.
    // `DSM_REPLAY_DIFF_SKIP_STRADDLE=1` skips it (to check the rest while it is known to hang).
    let straddle_rounds = if std::env::var_os("DSM_REPLAY_DIFF_SKIP_STRADDLE").is_some() {
        println!("replay-diff: skipping the straddling store (DSM_REPLAY_DIFF_SKIP_STRADDLE)");
        0
    } else {
        FALLBACK_ROUNDS
    };
    for round in 0..straddle_rounds {
        progress(|| format!("straddling store round {round}"));
        let first = next_page;
        next_page += 2;
        let (page, view) = region_page(region, first);
        let (page2, view2) = region_page(region, first + 1);
        buf.0[..PAGE].copy_from_slice(view);
        buf.0[PAGE..].copy_from_slice(view2);
        let off = PAGE - 1 - rng.below(7) as usize; // 1..7 bytes in the first page
        for (p, m) in [(page, 0), (page2, PAGE)] {
            let lo = if m == 0 { PAGE - 16 } else { 0 };
            for b in &mut buf.0[m + lo..m + lo + 16] {
                *b = rng.next() as u8;
            }
            progress(|| format!("straddling store round {round}: setting bytes of page {} (8-byte stores)", if m == 0 { first } else { first + 1 }));
            store_words(p, lo, &buf.0[m + lo..m + lo + 16]);
        }
        progress(|| format!("straddling store round {round}: mov qword [page {first} + {off:#x}] (crosses into page {})", first + 1));
        let v = rng.next();
        buf.0[off..off + 8].copy_from_slice(&v.to_le_bytes());
        // SAFETY: 8 bytes at page + off lie in two consecutive region pages.
        unsafe {
            core::arch::asm!("mov qword ptr [{p}], {v}", p = in(reg) page.add(off), v = in(reg) v, options(nostack, preserves_flags))
        };
        if buf.0[..PAGE] != *view || buf.0[PAGE..] != *view2 {
            return Err(format!("memory differs after a straddling 8-byte store of {v:#x} at page end - {}", PAGE - off));
        }
        cases += 1;
    }
    if next_page > CHECKSUM_PAGE {
        return Err("too many fallback pages".into());
    }
    Ok(cases)
}

/// `vmovdqu ymm0, [src]; vmovdqu [dst], ymm0`.
///
/// # Safety
/// AVX must be available; `dst` and `src` must be valid for 32 bytes.
#[target_feature(enable = "avx")]
unsafe fn vmovdqu_ymm(dst: *mut u8, src: *const u8) {
    // SAFETY: per the contract.
    unsafe {
        core::arch::asm!(
            "vmovdqu ymm0, [{s}]",
            "vmovdqu [{d}], ymm0",
            s = in(reg) src,
            d = in(reg) dst,
            out("ymm0") _,
            options(nostack, preserves_flags),
        )
    };
}
