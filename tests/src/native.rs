//! Native execution of x86-64 store forms, shared by the decoder's differential test
//! (`tests/tests/decode.rs`) and the replay-diff binary (`dsm-replay-diff`).
//!
//! [`forms`] is the table of every store form the decoder supports, each with its Intel syntax,
//! hand-assembled bytes and an `asm!` harness ([`Form::run`]) that loads every register but rsp,
//! the flags and the xmm registers from a [`Ctx`], runs exactly those bytes and stores the
//! registers back. [`fallback_forms`] are forms the decoder refuses. [`Rng`], [`Pages`] and
//! [`thread_pointer`] are the helpers both users need to drive them.

/// Register file the native harness loads before and stores after the instruction.
#[repr(C)]
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    pub gpr: [u64; 16], // offset 0; rsp (index 4) is neither loaded nor stored
    pub rflags: u64,    // offset 128
    _pad: u64,
    pub xmm: [u128; 16], // offset 144
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

/// One instruction form: its Intel syntax, its hand-assembled bytes and the native harness that
/// runs exactly those bytes.
pub struct Form {
    /// Intel syntax as iced-x86's formatter prints it (`0x` hex, signed immediates).
    pub asm: &'static str,
    pub bytes: &'static [u8],
    /// Loads the registers and flags from the context, runs the instruction, stores them back.
    ///
    /// # Safety
    /// The context must make the instruction access only memory the caller owns.
    pub run: unsafe fn(*mut Ctx),
}

macro_rules! form {
    ($asm:literal, [$($b:literal),+]) => {
        Form { asm: $asm, bytes: &[$($b),+], run: native!($($b),+) }
    };
}

/// Every store form that `dsm::decode::decode` supports (replayable writes).
pub fn forms() -> Vec<Form> {
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

/// Forms the decoder refuses (they take the ownership fallback), run through the same harness:
/// (form, register to point at the operand, operand width; 0 = `rep movsb`, whose width is rcx).
pub fn fallback_forms() -> Vec<(Form, usize, usize)> {
    const RSI: usize = 6;
    const RDI: usize = 7;
    vec![
        (form!("rep movsb [rdi], [rsi]", [0xf3, 0xa4]), RDI, 0),
        (form!("add [rsi], ecx", [0x01, 0x0e]), RSI, 4),
        (form!("sete [rsi]", [0x0f, 0x94, 0x06]), RSI, 1),
        (form!("xadd [rsi], rcx", [0x48, 0x0f, 0xc1, 0x0e]), RSI, 8),
    ]
}

/// Bytes of a page.
pub const PAGE: usize = 4096;

/// Two page-aligned pages (an operand anywhere in the first one may run into the second).
#[repr(C, align(4096))]
pub struct Pages(pub [u8; 2 * PAGE]);

/// The calling thread's fs base.
pub fn thread_pointer() -> u64 {
    let tp: u64;
    // SAFETY: on x86-64 Linux (glibc and musl) fs:0 holds the thread control block's address,
    // which is the fs base; the load has no side effects.
    unsafe {
        core::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags))
    };
    tp
}

/// Tiny xorshift64* generator.
pub struct Rng(pub u64);

impl Rng {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A random value whose low 1/2/4/8 bytes are often a boundary value (0, 1, min, max, ...).
    pub fn interesting(&mut self) -> u64 {
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

/// The low `width` bytes (8 or more: all).
pub fn mask(width: usize) -> u64 {
    if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (width * 8)) - 1
    }
}
