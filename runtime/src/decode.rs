//! Pure decoder/emulator for stores that fault on update-mode pages (write replay).
//!
//! An update-mode page stays read-only in every process. When a thread stores to it, the fault
//! handler reads the instruction bytes at `rip` and the thread's saved registers, and calls
//! [`decode`]: it classifies the instruction and computes its memory [`Effect`] (a plain
//! [`Effect::Store`] or an atomic [`Effect::Rmw`]) with the effective address checked against the
//! faulting address. The coordinator applies a store as one store of its width (DESIGN.md ordering
//! rule 7) and executes an RMW with [`rmw_result`]; the old value it saw comes back and [`apply`]
//! writes the registers exactly as the CPU would have (destination register, `rax` for
//! `cmpxchg`, the arithmetic flags) and advances `rip` past the instruction.
//!
//! Anything not listed below is [`Unsupported`], and the caller falls back to ownership
//! (invalidate mode) for that page — never a wrong result.
//!
//! Supported forms (64-bit mode; any addressing form: base, index×scale, displacement,
//! RIP-relative, absolute `moffs`, `fs:`/`gs:` overrides, `0x67` 32-bit address size):
//! - `mov m8/16/32/64, r`, `mov m8/16/32, imm`, `mov m64, imm32` (sign-extended),
//!   `mov moffs, al/ax/eax/rax`;
//! - `movnti m32/m64, r`;
//! - `movd m32, xmm`, `movq m64, xmm` (both encodings), `movss m32, xmm`, `movsd m64, xmm`,
//!   `movlps/movlpd/movhps/movhpd m64, xmm`;
//! - `movups/movupd/movdqu m128, xmm` (any alignment within a page), `movaps/movapd/movdqa`,
//!   `movntps/movntpd/movntdq m128, xmm` (16-byte aligned, else [`Unsupported::Misaligned`]:
//!   the CPU would raise #GP);
//! - `xchg m, r` (8/16/32/64, implicitly locked);
//! - `lock add/sub/and/or/xor m, r|imm` (including the sign-extended `imm8` forms),
//!   `lock inc/dec/neg/not m`, `lock xadd m, r`, `lock cmpxchg m, r` (8/16/32/64).
//!
//! Not supported (returns [`Unsupported`]): the same RMWs without `lock` (they are stores, but
//! not atomic; the caller takes ownership instead), `cmpxchg8b/16b`, `adc/sbb`, `bt*`, shifts,
//! string instructions, `push/pop` to memory, `setcc`, AVX/AVX-512 stores, x87 stores, any operand
//! that crosses a page boundary ([`Unsupported::Straddles`]).
//!
//! Unaligned operands within one page are accepted, including for atomics (the CPU accepts them
//! too, with a split lock when they cross a cache line).

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, OpKind, Register};

/// Page size the straddle check assumes.
pub const PAGE_SIZE: u64 = 4096;

/// The arithmetic flags: CF PF AF ZF SF OF.
pub const ARITH_FLAGS: u64 = CF | PF | AF | ZF | SF | OF;
const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;

/// x86-64 registers the emulator reads and writes (from/to the signal ucontext).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Regs {
    /// rax rcx rdx rbx rsp rbp rsi rdi r8..r15, in that (hardware encoding) order.
    pub gpr: [u64; 16],
    /// Address of the faulting instruction (advanced by [`apply`]).
    pub rip: u64,
    /// Flags; [`apply`] changes only the arithmetic bits ([`ARITH_FLAGS`]).
    pub rflags: u64,
    /// xmm0..xmm15.
    pub xmm: [u128; 16],
    /// Base of the `fs` segment (thread pointer on Linux).
    pub fs_base: u64,
    /// Base of the `gs` segment.
    pub gs_base: u64,
}

/// The operation of an atomic read-modify-write: the wire type, so the coordinator executes
/// exactly what the decoder classified.
pub use dsm_proto::RmwOp;

/// The memory effect of a decoded store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Plain store of `width` bytes (1, 2, 4, 8, 16) of `value` (little-endian, low `width` bytes
    /// valid, the rest zero) at `addr`.
    Store {
        /// Effective (linear) address.
        addr: u64,
        /// Bytes stored.
        width: u8,
        /// Value stored (low `width` bytes).
        value: u128,
    },
    /// Atomic read-modify-write of `width` (1, 2, 4, 8) bytes at `addr` with `operand` (the
    /// source register or immediate, sign-extended as the CPU does and masked to `width`; 0 for
    /// inc/dec/neg/not). For [`RmwOp::CmpXchg`], `operand` is the new value and `expected` is
    /// rax's low bytes; otherwise `expected` is 0.
    Rmw {
        /// Effective (linear) address.
        addr: u64,
        /// Operand size in bytes.
        width: u8,
        /// The operation.
        op: RmwOp,
        /// Source operand, masked to `width`.
        operand: u64,
        /// Compared value for cmpxchg (rax masked to `width`).
        expected: u64,
    },
}

impl Effect {
    /// Effective address of the operand.
    pub fn addr(&self) -> u64 {
        match *self {
            Effect::Store { addr, .. } | Effect::Rmw { addr, .. } => addr,
        }
    }

    /// Operand size in bytes.
    pub fn width(&self) -> u8 {
        match *self {
            Effect::Store { width, .. } | Effect::Rmw { width, .. } => width,
        }
    }
}

/// A general-purpose register as an instruction names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GprSlot {
    /// Index into [`Regs::gpr`].
    pub index: u8,
    /// Bytes (1, 2, 4, 8).
    pub width: u8,
    /// `ah`/`ch`/`dh`/`bh`: bits 8..16 of the register.
    pub high8: bool,
}

impl GprSlot {
    fn from_register(reg: Register) -> Option<GprSlot> {
        if !reg.is_gpr() {
            return None;
        }
        let high8 = matches!(
            reg,
            Register::AH | Register::CH | Register::DH | Register::BH
        );
        let index = (reg.full_register() as usize).checked_sub(Register::RAX as usize)?;
        if index >= 16 {
            return None;
        }
        Some(GprSlot {
            index: index as u8,
            width: reg.size() as u8,
            high8,
        })
    }

    /// The register's value, zero-extended.
    pub fn read(self, regs: &Regs) -> u64 {
        let full = regs.gpr[usize::from(self.index)];
        if self.high8 {
            (full >> 8) & 0xff
        } else {
            full & mask(self.width)
        }
    }

    /// Writes `value` as the CPU does: 8/16-bit writes keep the other bits, 32-bit writes zero
    /// the upper half, 64-bit writes replace the register.
    pub fn write(self, regs: &mut Regs, value: u64) {
        let r = &mut regs.gpr[usize::from(self.index)];
        *r = match (self.width, self.high8) {
            (1, true) => (*r & !0xff00) | ((value & 0xff) << 8),
            (1, false) => (*r & !0xff) | (value & 0xff),
            (2, _) => (*r & !0xffff) | (value & 0xffff),
            (4, _) => value & 0xffff_ffff,
            _ => value,
        };
    }
}

/// A decoded faulting store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Instruction length in bytes ([`apply`] advances `rip` by this much).
    pub len: usize,
    /// What the instruction does to memory.
    pub effect: Effect,
    /// For `xadd`/`xchg`: the register that receives the old memory value.
    pub dest: Option<GprSlot>,
}

/// Why an instruction cannot be replayed (the caller falls back to ownership).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unsupported {
    /// The bytes are not a valid (or complete) 64-bit instruction.
    #[error("undecodable instruction bytes")]
    Undecodable,
    /// A valid instruction the emulator does not replay (no heap: this runs in the signal
    /// handler).
    #[error("unsupported instruction {code:?}{why}")]
    Instruction {
        /// The instruction.
        code: Code,
        /// What about it is not supported (`""` when the instruction itself is not).
        why: &'static str,
    },
    /// The computed operand does not contain the faulting address (wrong registers or bytes).
    #[error("computed address {computed:#x} does not contain the fault address {fault:#x}")]
    AddressMismatch {
        /// Effective address computed from the registers.
        computed: u64,
        /// Address the kernel reported.
        fault: u64,
    },
    /// The operand crosses a page boundary.
    #[error("{width}-byte operand at {addr:#x} crosses a page boundary")]
    Straddles {
        /// Effective address.
        addr: u64,
        /// Operand size in bytes.
        width: u8,
    },
    /// An alignment-checked store (`movaps`, `movdqa`, `movnt*`) with a misaligned address: the
    /// CPU raises #GP, never a page fault.
    #[error("{align}-byte aligned store to misaligned address {addr:#x}")]
    Misaligned {
        /// Effective address.
        addr: u64,
        /// Required alignment in bytes.
        align: u8,
    },
}

fn mask(width: u8) -> u64 {
    if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (u32::from(width) * 8)) - 1
    }
}

fn mask128(width: u8) -> u128 {
    if width >= 16 {
        u128::MAX
    } else {
        (1u128 << (u32::from(width) * 8)) - 1
    }
}

/// What a supported instruction does, before registers are read.
#[derive(Clone, Copy)]
enum Kind {
    /// Store of a GPR or immediate (operand 1).
    Store,
    /// Store of (part of) an XMM register: byte offset into the register, 16-byte alignment needed.
    StoreXmm { shift: u32, aligned: bool },
    /// Read-modify-write; `locked`: needs a lock prefix to be atomic.
    Rmw { op: RmwOp, locked: bool },
}

fn classify(code: Code) -> Option<Kind> {
    use Code::*;
    let rmw = |op| Some(Kind::Rmw { op, locked: true });
    let xmm = |shift, aligned| Some(Kind::StoreXmm { shift, aligned });
    match code {
        Mov_rm8_r8 | Mov_rm16_r16 | Mov_rm32_r32 | Mov_rm64_r64 | Mov_moffs8_AL
        | Mov_moffs16_AX | Mov_moffs32_EAX | Mov_moffs64_RAX | Mov_rm8_imm8 | Mov_rm16_imm16
        | Mov_rm32_imm32 | Mov_rm64_imm32 | Movnti_m32_r32 | Movnti_m64_r64 => Some(Kind::Store),
        Movd_rm32_xmm | Movq_rm64_xmm | Movq_xmmm64_xmm | Movss_xmmm32_xmm | Movsd_xmmm64_xmm
        | Movlps_m64_xmm | Movlpd_m64_xmm | Movups_xmmm128_xmm | Movupd_xmmm128_xmm
        | Movdqu_xmmm128_xmm => xmm(0, false),
        Movhps_m64_xmm | Movhpd_m64_xmm => xmm(64, false),
        Movaps_xmmm128_xmm | Movapd_xmmm128_xmm | Movdqa_xmmm128_xmm | Movntps_m128_xmm
        | Movntpd_m128_xmm | Movntdq_m128_xmm => xmm(0, true),
        Xchg_rm8_r8 | Xchg_rm16_r16 | Xchg_rm32_r32 | Xchg_rm64_r64 => Some(Kind::Rmw {
            op: RmwOp::Xchg,
            locked: false,
        }),
        Add_rm8_r8 | Add_rm16_r16 | Add_rm32_r32 | Add_rm64_r64 | Add_rm8_imm8 | Add_rm16_imm16
        | Add_rm32_imm32 | Add_rm64_imm32 | Add_rm16_imm8 | Add_rm32_imm8 | Add_rm64_imm8 => {
            rmw(RmwOp::Add)
        }
        Sub_rm8_r8 | Sub_rm16_r16 | Sub_rm32_r32 | Sub_rm64_r64 | Sub_rm8_imm8 | Sub_rm16_imm16
        | Sub_rm32_imm32 | Sub_rm64_imm32 | Sub_rm16_imm8 | Sub_rm32_imm8 | Sub_rm64_imm8 => {
            rmw(RmwOp::Sub)
        }
        And_rm8_r8 | And_rm16_r16 | And_rm32_r32 | And_rm64_r64 | And_rm8_imm8 | And_rm16_imm16
        | And_rm32_imm32 | And_rm64_imm32 | And_rm16_imm8 | And_rm32_imm8 | And_rm64_imm8 => {
            rmw(RmwOp::And)
        }
        Or_rm8_r8 | Or_rm16_r16 | Or_rm32_r32 | Or_rm64_r64 | Or_rm8_imm8 | Or_rm16_imm16
        | Or_rm32_imm32 | Or_rm64_imm32 | Or_rm16_imm8 | Or_rm32_imm8 | Or_rm64_imm8 => {
            rmw(RmwOp::Or)
        }
        Xor_rm8_r8 | Xor_rm16_r16 | Xor_rm32_r32 | Xor_rm64_r64 | Xor_rm8_imm8 | Xor_rm16_imm16
        | Xor_rm32_imm32 | Xor_rm64_imm32 | Xor_rm16_imm8 | Xor_rm32_imm8 | Xor_rm64_imm8 => {
            rmw(RmwOp::Xor)
        }
        Inc_rm8 | Inc_rm16 | Inc_rm32 | Inc_rm64 => rmw(RmwOp::Inc),
        Dec_rm8 | Dec_rm16 | Dec_rm32 | Dec_rm64 => rmw(RmwOp::Dec),
        Neg_rm8 | Neg_rm16 | Neg_rm32 | Neg_rm64 => rmw(RmwOp::Neg),
        Not_rm8 | Not_rm16 | Not_rm32 | Not_rm64 => rmw(RmwOp::Not),
        Xadd_rm8_r8 | Xadd_rm16_r16 | Xadd_rm32_r32 | Xadd_rm64_r64 => rmw(RmwOp::Xadd),
        Cmpxchg_rm8_r8 | Cmpxchg_rm16_r16 | Cmpxchg_rm32_r32 | Cmpxchg_rm64_r64 => {
            rmw(RmwOp::CmpXchg)
        }
        _ => None,
    }
}

fn unsupported(instr: &Instruction, why: &'static str) -> Unsupported {
    Unsupported::Instruction { code: instr.code(), why }
}

/// Value of a register as the address computation sees it (`None`: not an address register).
fn address_register(regs: &Regs, reg: Register) -> Option<u64> {
    match reg {
        Register::FS => Some(regs.fs_base),
        Register::GS => Some(regs.gs_base),
        Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
        r => GprSlot::from_register(r)
            .filter(|s| !s.high8)
            .map(|s| s.read(regs)),
    }
}

/// Decodes the instruction at `bytes` (up to 15 bytes read at `regs.rip`) and computes its memory
/// effect. `fault_addr` is the faulting address the kernel reported; it must fall inside the
/// operand. Pages are [`PAGE_SIZE`] bytes.
pub fn decode(bytes: &[u8], regs: &Regs, fault_addr: u64) -> Result<Decoded, Unsupported> {
    let mut decoder = Decoder::with_ip(64, bytes, regs.rip, DecoderOptions::NONE);
    if !decoder.can_decode() {
        return Err(Unsupported::Undecodable);
    }
    let instr = decoder.decode();
    if instr.is_invalid() {
        return Err(Unsupported::Undecodable);
    }
    let kind = classify(instr.code()).ok_or_else(|| unsupported(&instr, ""))?;
    if instr.op0_kind() != OpKind::Memory {
        return Err(unsupported(&instr, " with a register destination"));
    }
    let width = instr.memory_size().size();
    if !matches!(width, 1 | 2 | 4 | 8 | 16) {
        return Err(unsupported(&instr, " with an unexpected operand size"));
    }
    let width = width as u8;
    let addr = instr
        .virtual_address(0, 0, |reg, _, _| address_register(regs, reg))
        .ok_or_else(|| unsupported(&instr, " with an unexpected address register"))?;
    if fault_addr.wrapping_sub(addr) >= u64::from(width) {
        return Err(Unsupported::AddressMismatch {
            computed: addr,
            fault: fault_addr,
        });
    }
    if (addr % PAGE_SIZE) + u64::from(width) > PAGE_SIZE {
        return Err(Unsupported::Straddles { addr, width });
    }
    let source = || -> Result<u64, Unsupported> {
        match instr.op1_kind() {
            OpKind::Register => GprSlot::from_register(instr.op1_register())
                .map(|s| s.read(regs))
                .ok_or_else(|| unsupported(&instr, " with an unexpected source register")),
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64 => Ok(instr.immediate(1) & mask(width)),
            _ => Err(unsupported(&instr, " with an unexpected source operand")),
        }
    };
    let (effect, dest) = match kind {
        Kind::Store => (
            Effect::Store {
                addr,
                width,
                value: u128::from(source()?),
            },
            None,
        ),
        Kind::StoreXmm { shift, aligned } => {
            if aligned && addr % 16 != 0 {
                return Err(Unsupported::Misaligned { addr, align: 16 });
            }
            let reg = instr.op1_register();
            let index = (reg as usize).wrapping_sub(Register::XMM0 as usize);
            if !reg.is_xmm() || index >= 16 {
                return Err(unsupported(&instr, " with an unexpected source register"));
            }
            let value = (regs.xmm[index] >> shift) & mask128(width);
            (Effect::Store { addr, width, value }, None)
        }
        Kind::Rmw { op, locked } => {
            if locked && !instr.has_lock_prefix() {
                return Err(unsupported(&instr, " without lock (not atomic)"));
            }
            let (operand, dest) = match op {
                RmwOp::Inc | RmwOp::Dec | RmwOp::Neg | RmwOp::Not => (0, None),
                RmwOp::Xadd | RmwOp::Xchg => {
                    (source()?, GprSlot::from_register(instr.op1_register()))
                }
                _ => (source()?, None),
            };
            let expected = if op == RmwOp::CmpXchg {
                regs.gpr[0] & mask(width)
            } else {
                0
            };
            (
                Effect::Rmw {
                    addr,
                    width,
                    op,
                    operand,
                    expected,
                },
                dest,
            )
        }
    };
    Ok(Decoded {
        len: instr.len(),
        effect,
        dest,
    })
}

/// The new memory value of an RMW given the old one, and whether the instruction stored (false
/// only for a failed cmpxchg, whose new value is then the old one). The coordinator executes
/// RMWs with this. All values are masked to `width`.
pub fn rmw_result(op: RmwOp, width: u8, old: u64, operand: u64, expected: u64) -> (u64, bool) {
    op.execute(width, old, operand, expected)
}

fn parity_flag(result: u64) -> u64 {
    if (result as u8).count_ones() & 1 == 0 {
        PF
    } else {
        0
    }
}

/// PF ZF SF of a `width`-byte result.
fn result_flags(result: u64, width: u8) -> u64 {
    let bits = u32::from(width) * 8;
    let mut f = parity_flag(result);
    if result & mask(width) == 0 {
        f |= ZF;
    }
    if (result >> (bits - 1)) & 1 != 0 {
        f |= SF;
    }
    f
}

/// Flags of `a + b` at `width` bytes.
fn add_flags(a: u64, b: u64, width: u8) -> u64 {
    let m = mask(width);
    let bits = u32::from(width) * 8;
    let r = a.wrapping_add(b) & m;
    let mut f = result_flags(r, width);
    if u128::from(a) + u128::from(b) > u128::from(m) {
        f |= CF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= AF;
    }
    if ((a ^ r) & (b ^ r)) >> (bits - 1) & 1 != 0 {
        f |= OF;
    }
    f
}

/// Flags of `a - b` at `width` bytes.
fn sub_flags(a: u64, b: u64, width: u8) -> u64 {
    let m = mask(width);
    let bits = u32::from(width) * 8;
    let r = a.wrapping_sub(b) & m;
    let mut f = result_flags(r, width);
    if a < b {
        f |= CF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= AF;
    }
    if ((a ^ b) & (a ^ r)) >> (bits - 1) & 1 != 0 {
        f |= OF;
    }
    f
}

/// Computes the register state after the instruction given the old memory value an RMW saw
/// (ignored for stores): destination register (`xadd`/`xchg`), `rax` for a failed `cmpxchg`, the
/// arithmetic flags CF PF AF ZF SF OF (`inc`/`dec` keep CF; `not`/`xchg` and stores change no
/// flags; AF after `and`/`or`/`xor` is architecturally undefined and cleared, as current CPUs
/// do), and advances `rip` by the instruction length.
pub fn apply(decoded: &Decoded, old: u64, regs: &mut Regs) {
    regs.rip = regs.rip.wrapping_add(decoded.len as u64);
    let Effect::Rmw {
        width,
        op,
        operand,
        expected,
        ..
    } = decoded.effect
    else {
        return;
    };
    let m = mask(width);
    let (old, operand, expected) = (old & m, operand & m, expected & m);
    let flags = match op {
        RmwOp::Add | RmwOp::Xadd => Some(add_flags(old, operand, width)),
        RmwOp::Sub => Some(sub_flags(old, operand, width)),
        RmwOp::And => Some(result_flags(old & operand, width)),
        RmwOp::Or => Some(result_flags(old | operand, width)),
        RmwOp::Xor => Some(result_flags(old ^ operand, width)),
        RmwOp::Inc => Some((add_flags(old, 1, width) & !CF) | (regs.rflags & CF)),
        RmwOp::Dec => Some((sub_flags(old, 1, width) & !CF) | (regs.rflags & CF)),
        RmwOp::Neg => Some(sub_flags(0, old, width)),
        RmwOp::CmpXchg => Some(sub_flags(expected, old, width)),
        RmwOp::Not | RmwOp::Xchg => None,
    };
    if let Some(flags) = flags {
        regs.rflags = (regs.rflags & !ARITH_FLAGS) | flags;
    }
    match op {
        RmwOp::Xadd | RmwOp::Xchg => {
            if let Some(dest) = decoded.dest {
                dest.write(regs, old);
            }
        }
        RmwOp::CmpXchg if old != expected => {
            GprSlot {
                index: 0,
                width,
                high8: false,
            }
            .write(regs, old);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
