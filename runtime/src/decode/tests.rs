//! Table tests and differential tests (native execution vs decode + rmw_result + apply).

use super::*;
use iced_x86::{Formatter, IntelFormatter};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Formats the first instruction of `bytes` in Intel syntax (`0x` hex, signed immediates).
fn format(bytes: &[u8]) -> String {
    let mut decoder = Decoder::with_ip(64, bytes, 0x1000, DecoderOptions::NONE);
    let instr = decoder.decode();
    assert!(!instr.is_invalid(), "{bytes:02x?} is invalid");
    assert_eq!(instr.len(), bytes.len(), "{bytes:02x?}: trailing bytes");
    let mut f = IntelFormatter::new();
    let o = f.options_mut();
    o.set_space_after_operand_separator(true);
    o.set_hex_prefix("0x");
    o.set_hex_suffix("");
    o.set_uppercase_hex(false);
    o.set_small_hex_numbers_in_decimal(false);
    o.set_signed_immediate_operands(true);
    o.set_rip_relative_addresses(true);
    let mut out = String::new();
    f.format(&instr, &mut out);
    out
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

    /// A random value whose low 1/2/4/8 bytes are often a boundary value (0, 1, min, max, ...).
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

fn regs_with(gpr: &[(usize, u64)]) -> Regs {
    let mut regs = Regs {
        rip: 0x40_0000,
        rflags: 0x202,
        ..Regs::default()
    };
    for &(i, v) in gpr {
        regs.gpr[i] = v;
    }
    regs
}

const RAX: usize = 0;
const RCX: usize = 1;
const RDX: usize = 2;
const RBX: usize = 3;
const RSI: usize = 6;
const R9: usize = 9;

// ---------------------------------------------------------------------------------------------
// Table tests: special addressing, exact effects, errors.

#[test]
fn decode_table() {
    let page = 0x7f00_0000_0000u64;
    let mut xmm_regs = regs_with(&[(RSI, page + 0x100)]);
    xmm_regs.xmm[4] = 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff;
    let mut fs_regs = regs_with(&[(RSI, 0x30), (RCX, 0xdead_beef_0102_0304)]);
    fs_regs.fs_base = page;
    let mut gs_regs = regs_with(&[(RAX, 0x20), (RBX, 0x1234)]);
    gs_regs.gs_base = page + 0x1000;
    struct Case {
        asm: &'static str,
        bytes: &'static [u8],
        regs: Regs,
        effect: Effect,
        dest: Option<GprSlot>,
    }
    let store = |addr, width, value| Effect::Store { addr, width, value };
    let rmw = |addr, width, op, operand, expected| Effect::Rmw {
        addr,
        width,
        op,
        operand,
        expected,
    };
    let cases = [
        Case {
            // RIP-relative: next rip (0x40000a) + 0x100.
            asm: "mov dword ptr [rip+0x100], 0x1",
            bytes: &[0xc7, 0x05, 0x00, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00],
            regs: regs_with(&[]),
            effect: store(0x40_010a, 4, 1),
            dest: None,
        },
        Case {
            asm: "mov [rip-0x10], cl",
            bytes: &[0x88, 0x0d, 0xf0, 0xff, 0xff, 0xff],
            regs: regs_with(&[(RCX, 0x1234_5678)]),
            effect: store(0x40_0006 - 0x10, 1, 0x78),
            dest: None,
        },
        Case {
            asm: "mov [0x7f0011223344], rax",
            bytes: &[0x48, 0xa3, 0x44, 0x33, 0x22, 0x11, 0x00, 0x7f, 0x00, 0x00],
            regs: regs_with(&[(RAX, 0x0102_0304_0506_0708)]),
            effect: store(0x7f00_1122_3344, 8, 0x0102_0304_0506_0708),
            dest: None,
        },
        Case {
            asm: "mov fs:[rsi], ecx",
            bytes: &[0x64, 0x89, 0x0e],
            regs: fs_regs.clone(),
            effect: store(page + 0x30, 4, 0x0102_0304),
            dest: None,
        },
        Case {
            asm: "mov gs:[rax], bl",
            bytes: &[0x65, 0x88, 0x18],
            regs: gs_regs,
            effect: store(page + 0x1020, 1, 0x34),
            dest: None,
        },
        Case {
            // 0x67: 32-bit address arithmetic; the upper halves of rax/rcx are ignored.
            asm: "mov [eax+ecx*2+0x10], edx",
            bytes: &[0x67, 0x89, 0x54, 0x48, 0x10],
            regs: regs_with(&[
                (RAX, 0xffff_ffff_0000_0100),
                (RCX, 0xaaaa_aaaa_0000_0008),
                (RDX, 7),
            ]),
            effect: store(0x120, 4, 7),
            dest: None,
        },
        Case {
            // 0x67 wrap-around at 4 GiB.
            asm: "mov byte ptr [eax+0x20], 0x5",
            bytes: &[0x67, 0xc6, 0x40, 0x20, 0x05],
            regs: regs_with(&[(RAX, 0xffff_fff0)]),
            effect: store(0x10, 1, 5),
            dest: None,
        },
        Case {
            asm: "mov qword ptr [rsi], -0x12345678",
            bytes: &[0x48, 0xc7, 0x06, 0x88, 0xa9, 0xcb, 0xed],
            regs: regs_with(&[(RSI, page)]),
            effect: store(page, 8, 0xffff_ffff_edcb_a988),
            dest: None,
        },
        Case {
            asm: "movhps [rsi], xmm4",
            bytes: &[0x0f, 0x17, 0x26],
            regs: xmm_regs.clone(),
            effect: store(page + 0x100, 8, 0x0011_2233_4455_6677),
            dest: None,
        },
        Case {
            asm: "movss [rsi], xmm4",
            bytes: &[0xf3, 0x0f, 0x11, 0x26],
            regs: xmm_regs.clone(),
            effect: store(page + 0x100, 4, 0xccdd_eeff),
            dest: None,
        },
        Case {
            asm: "movdqu [rsi], xmm4",
            bytes: &[0xf3, 0x0f, 0x7f, 0x26],
            regs: xmm_regs,
            effect: store(page + 0x100, 16, 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff),
            dest: None,
        },
        Case {
            asm: "lock add qword ptr [rsi], -0x1",
            bytes: &[0xf0, 0x48, 0x83, 0x06, 0xff],
            regs: regs_with(&[(RSI, page)]),
            effect: rmw(page, 8, RmwOp::Add, u64::MAX, 0),
            dest: None,
        },
        Case {
            asm: "lock sub word ptr [rsi], -0x80",
            bytes: &[0x66, 0xf0, 0x83, 0x2e, 0x80],
            regs: regs_with(&[(RSI, page)]),
            effect: rmw(page, 2, RmwOp::Sub, 0xff80, 0),
            dest: None,
        },
        Case {
            asm: "lock inc dword ptr [rsi]",
            bytes: &[0xf0, 0xff, 0x06],
            regs: regs_with(&[(RSI, page + 1)]),
            effect: rmw(page + 1, 4, RmwOp::Inc, 0, 0),
            dest: None,
        },
        Case {
            asm: "lock xadd fs:[rsi], rcx",
            bytes: &[0xf0, 0x64, 0x48, 0x0f, 0xc1, 0x0e],
            regs: fs_regs,
            effect: rmw(page + 0x30, 8, RmwOp::Xadd, 0xdead_beef_0102_0304, 0),
            dest: Some(GprSlot {
                index: RCX as u8,
                width: 8,
                high8: false,
            }),
        },
        Case {
            asm: "xchg [rsi], bh",
            bytes: &[0x86, 0x3e],
            regs: regs_with(&[(RSI, page), (RBX, 0xabcd)]),
            effect: rmw(page, 1, RmwOp::Xchg, 0xab, 0),
            dest: Some(GprSlot {
                index: RBX as u8,
                width: 1,
                high8: true,
            }),
        },
        Case {
            asm: "lock cmpxchg [rsi], r9w",
            bytes: &[0x66, 0xf0, 0x44, 0x0f, 0xb1, 0x0e],
            regs: regs_with(&[(RSI, page), (R9, 0x5555_6666), (RAX, 0x1111_2222)]),
            effect: rmw(page, 2, RmwOp::CmpXchg, 0x6666, 0x2222),
            dest: None,
        },
    ];
    for case in &cases {
        assert_eq!(format(case.bytes), case.asm);
        let addr = case.effect.addr();
        for fault in [addr, addr + u64::from(case.effect.width()) - 1] {
            let d = decode(case.bytes, &case.regs, fault)
                .unwrap_or_else(|e| panic!("{}: {e}", case.asm));
            assert_eq!(d.len, case.bytes.len(), "{}", case.asm);
            assert_eq!(d.effect, case.effect, "{}", case.asm);
            assert_eq!(d.dest, case.dest, "{}", case.asm);
        }
    }
}

#[test]
fn decode_unsupported_table() {
    let page = 0x7f00_0000_0000u64;
    let regs = regs_with(&[(RSI, page + 0x10), (RDI, page + 0x10), (RCX, 4)]);
    let instruction: &[(&str, &[u8])] = &[
        ("add [rsi], ecx", &[0x01, 0x0e]),
        ("xadd [rsi], ecx", &[0x0f, 0xc1, 0x0e]),
        ("cmpxchg [rsi], ecx", &[0x0f, 0xb1, 0x0e]),
        ("inc dword ptr [rsi]", &[0xff, 0x06]),
        ("rep movsb [rdi], [rsi]", &[0xf3, 0xa4]),
        ("rep stosq [rdi]", &[0xf3, 0x48, 0xab]),
        ("stosb [rdi]", &[0xaa]),
        ("vmovdqu [rsi], ymm0", &[0xc5, 0xfe, 0x7f, 0x06]),
        ("vmovss [rsi], xmm0", &[0xc5, 0xfa, 0x11, 0x06]),
        ("push qword ptr [rsi]", &[0xff, 0x36]),
        ("pop qword ptr [rsi]", &[0x8f, 0x06]),
        ("lock adc [rsi], ecx", &[0xf0, 0x11, 0x0e]),
        ("lock sbb [rsi], ecx", &[0xf0, 0x19, 0x0e]),
        (
            "lock bts dword ptr [rsi], 0x3",
            &[0xf0, 0x0f, 0xba, 0x2e, 0x03],
        ),
        ("lock cmpxchg16b [rsi]", &[0xf0, 0x48, 0x0f, 0xc7, 0x0e]),
        ("lock cmpxchg8b [rsi]", &[0xf0, 0x0f, 0xc7, 0x0e]),
        ("sete [rsi]", &[0x0f, 0x94, 0x06]),
        ("shl dword ptr [rsi], 0x1", &[0xd1, 0x26]),
        ("mov [rsi], es", &[0x8c, 0x06]),
        ("mov eax, [rsi]", &[0x8b, 0x06]),
        ("xadd ecx, edx", &[0x0f, 0xc1, 0xd1]),
        ("xchg ecx, edx", &[0x87, 0xd1]),
        ("fstp qword ptr [rsi], st", &[0xdd, 0x1e]),
        ("ud2", &[0x0f, 0x0b]),
    ];
    for (asm, bytes) in instruction {
        assert_eq!(format(bytes), *asm);
        match decode(bytes, &regs, page + 0x10) {
            Err(Unsupported::Instruction(s)) => assert!(!s.is_empty()),
            other => panic!("{asm}: {other:?}"),
        }
    }
    let undecodable: &[&[u8]] = &[
        &[],
        &[0xf0, 0x0f],             // truncated
        &[0x48, 0xc7, 0x06, 0x88], // truncated immediate
        &[0xf0, 0x89, 0x0e],       // lock mov: #UD
        &[0xf0, 0x01, 0xc8],       // lock add ecx... with a register destination: #UD
        &[0x06],                   // push es: invalid in 64-bit mode
    ];
    for bytes in undecodable {
        assert_eq!(
            decode(bytes, &regs, page + 0x10),
            Err(Unsupported::Undecodable),
            "{bytes:02x?}"
        );
    }
}

const RDI: usize = 7;

#[test]
fn decode_address_checks() {
    let page = 0x7f00_0000_0000u64;
    // mov [rsi], ecx
    let mov = [0x89, 0x0e];
    let regs = regs_with(&[(RSI, page + 0x100)]);
    assert!(decode(&mov, &regs, page + 0x103).is_ok());
    for fault in [page + 0xff, page + 0x104, 0] {
        assert_eq!(
            decode(&mov, &regs, fault),
            Err(Unsupported::AddressMismatch {
                computed: page + 0x100,
                fault
            })
        );
    }
    // Straddling operands, fault in either page.
    for (off, fault_off) in [(0xffd, 0xffd), (0xffd, 0x1000), (0xfff, 0x1002)] {
        let regs = regs_with(&[(RSI, page + off)]);
        assert_eq!(
            decode(&mov, &regs, page + fault_off),
            Err(Unsupported::Straddles {
                addr: page + off,
                width: 4
            })
        );
    }
    // Unaligned but within the page: fine.
    let regs = regs_with(&[(RSI, page + 0xffc)]);
    assert!(decode(&mov, &regs, page + 0xfff).is_ok());
    // movdqu [rsi], xmm0 straddling; movaps [rsi], xmm0 misaligned.
    let regs = regs_with(&[(RSI, page + 0xff8)]);
    assert_eq!(
        decode(&[0xf3, 0x0f, 0x7f, 0x06], &regs, page + 0xff8),
        Err(Unsupported::Straddles {
            addr: page + 0xff8,
            width: 16
        })
    );
    let regs = regs_with(&[(RSI, page + 0x108)]);
    assert_eq!(
        decode(&[0x0f, 0x29, 0x06], &regs, page + 0x108),
        Err(Unsupported::Misaligned {
            addr: page + 0x108,
            align: 16
        })
    );
    assert!(decode(&[0xf3, 0x0f, 0x7f, 0x06], &regs, page + 0x108).is_ok());
    // A lock RMW straddling.
    let regs = regs_with(&[(RSI, page + 0xffe)]);
    assert_eq!(
        decode(&[0xf0, 0x0f, 0xc1, 0x0e], &regs, page + 0x1000),
        Err(Unsupported::Straddles {
            addr: page + 0xffe,
            width: 4
        })
    );
}

#[test]
fn rmw_result_table() {
    use RmwOp::*;
    /// op, width, old, operand, expected, (new, stored)
    type Case = (RmwOp, u8, u64, u64, u64, (u64, bool));
    let cases: &[Case] = &[
        (Add, 1, 0xff, 1, 0, (0, true)),
        (Add, 8, u64::MAX, 2, 0, (1, true)),
        (Sub, 2, 0, 1, 0, (0xffff, true)),
        (And, 4, 0xffff_0000, 0x0ff0_0ff0, 0, (0x0ff0_0000, true)),
        (Or, 1, 0x0f, 0xf0, 0, (0xff, true)),
        (Xor, 8, 0xff, 0x0f, 0, (0xf0, true)),
        (Inc, 4, 0xffff_ffff, 0, 0, (0, true)),
        (Dec, 2, 0, 0, 0, (0xffff, true)),
        (Neg, 1, 1, 0, 0, (0xff, true)),
        (Not, 4, 0, 0, 0, (0xffff_ffff, true)),
        (Xadd, 4, 0xffff_fff0, 0x20, 0, (0x10, true)),
        (Xchg, 8, 5, 9, 0, (9, true)),
        (CmpXchg, 4, 7, 9, 7, (9, true)),
        (CmpXchg, 4, 7, 9, 8, (7, false)),
        // Bits above the width are ignored.
        (CmpXchg, 1, 0x107, 0x209, 0x307, (0x09, true)),
        (Add, 2, 0x1_0001, 0x1_0001, 0, (2, true)),
    ];
    for &(op, width, old, operand, expected, want) in cases {
        assert_eq!(
            rmw_result(op, width, old, operand, expected),
            want,
            "{op:?} {width}"
        );
    }
}

#[test]
fn apply_register_writes() {
    let page = 0x7f00_0000_0000u64;
    let base = regs_with(&[
        (RSI, page),
        (RCX, 0x1111_2222_3333_4444),
        (RAX, 0xaaaa_bbbb_cccc_dddd),
    ]);
    let run = |bytes: &[u8], old: u64| {
        let mut regs = base.clone();
        let d = decode(bytes, &regs, page).unwrap();
        apply(&d, old, &mut regs);
        assert_eq!(regs.rip, base.rip + bytes.len() as u64);
        regs
    };
    // xchg [rsi], cl / cx / ecx / rcx / ch
    assert_eq!(run(&[0x86, 0x0e], 0x99).gpr[RCX], 0x1111_2222_3333_4499);
    assert_eq!(
        run(&[0x66, 0x87, 0x0e], 0x9988).gpr[RCX],
        0x1111_2222_3333_9988
    );
    assert_eq!(run(&[0x87, 0x0e], 0x9988_7766).gpr[RCX], 0x9988_7766);
    assert_eq!(
        run(&[0x48, 0x87, 0x0e], 0x9988_7766_5544).gpr[RCX],
        0x9988_7766_5544
    );
    assert_eq!(run(&[0x86, 0x2e], 0x99).gpr[RCX], 0x1111_2222_3333_9944);
    // lock cmpxchg [rsi], ecx: failure loads eax (zero-extended); success keeps rax.
    let r = run(&[0xf0, 0x0f, 0xb1, 0x0e], 5);
    assert_eq!((r.gpr[RAX], r.rflags & ZF), (5, 0));
    let r = run(&[0xf0, 0x0f, 0xb1, 0x0e], 0xcccc_dddd);
    assert_eq!((r.gpr[RAX], r.rflags & ZF), (0xaaaa_bbbb_cccc_dddd, ZF));
    // lock cmpxchg [rsi], cl: failure writes al only.
    let r = run(&[0xf0, 0x0f, 0xb0, 0x0e], 5);
    assert_eq!(r.gpr[RAX], 0xaaaa_bbbb_cccc_dd05);
    // A store changes nothing but rip.
    let r = run(&[0x89, 0x0e], 0);
    assert_eq!(Regs { rip: base.rip, ..r }, base);
    // not / xchg keep the flags; inc keeps CF.
    let mut flagged = base.clone();
    flagged.rflags = 0x202 | ARITH_FLAGS;
    let d = decode(&[0xf0, 0xf7, 0x16], &flagged, page).unwrap();
    let mut r = flagged.clone();
    apply(&d, 0, &mut r);
    assert_eq!(r.rflags, flagged.rflags);
    let d = decode(&[0xf0, 0xff, 0x06], &flagged, page).unwrap();
    let mut r = flagged.clone();
    apply(&d, 1, &mut r);
    assert_eq!(r.rflags, 0x202 | CF);
}

// ---------------------------------------------------------------------------------------------
// Differential tests: run the real instruction on a private buffer and compare.

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

#[repr(C, align(4096))]
struct Pages([u8; 2 * PAGE_SIZE as usize]);

fn thread_pointer() -> u64 {
    let tp: u64;
    // SAFETY: on x86-64 Linux (glibc and musl) fs:0 holds the thread control block's address,
    // which is the fs base; the load has no side effects.
    unsafe {
        core::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags))
    };
    tp
}

/// Iterations per form.
const ROUNDS: usize = 300;

#[test]
fn differential_native_vs_emulated() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = Box::new(Pages([0; 2 * PAGE_SIZE as usize]));
    let base = buf.0.as_ptr() as u64;
    let fs_base = thread_pointer();
    let mut checked = 0;
    for form in forms() {
        assert_eq!(format(form.bytes), form.asm, "hand-assembled bytes");
        let mut decoder = Decoder::with_ip(64, form.bytes, 0, DecoderOptions::NONE);
        let instr = decoder.decode();
        let width = instr.memory_size().size() as u64;
        let aligned = matches!(
            instr.mnemonic(),
            iced_x86::Mnemonic::Movaps
                | iced_x86::Mnemonic::Movapd
                | iced_x86::Mnemonic::Movdqa
                | iced_x86::Mnemonic::Movntdq
                | iced_x86::Mnemonic::Movntps
                | iced_x86::Mnemonic::Movntpd
        );
        let slot = |r: Register| GprSlot::from_register(r).map(|s| usize::from(s.index));
        let base_reg = slot(instr.memory_base()).expect("differential forms use a base register");
        let index_reg = slot(instr.memory_index());
        let seg_base = if instr.memory_segment() == Register::FS {
            fs_base
        } else {
            0
        };
        // Random registers, memory, flags; the base register points the operand at `target`.
        let setup = |rng: &mut Rng, target: u64| {
            let mut ctx = Ctx::default();
            for g in ctx.gpr.iter_mut() {
                *g = rng.interesting();
            }
            for x in ctx.xmm.iter_mut() {
                *x = u128::from(rng.next()) << 64 | u128::from(rng.next());
            }
            ctx.rflags = 0x202 | (rng.next() & ARITH_FLAGS);
            let mut addr = target
                .wrapping_sub(seg_base)
                .wrapping_sub(instr.memory_displacement64());
            if let Some(i) = index_reg {
                ctx.gpr[i] = rng.below(64);
                addr = addr.wrapping_sub(ctx.gpr[i] * u64::from(instr.memory_index_scale()));
            }
            ctx.gpr[base_reg] = addr;
            ctx
        };
        let to_regs = |ctx: &Ctx| Regs {
            gpr: ctx.gpr,
            rip: 0x5555_0000_1000,
            rflags: ctx.rflags,
            xmm: ctx.xmm,
            fs_base,
            gs_base: 0,
        };
        for round in 0..ROUNDS {
            // Operand offset: anywhere in the first page (unaligned too), often at its end.
            let step = if aligned { 16 } else { 1 };
            let off = match rng.below(4) {
                0 => PAGE_SIZE - width,
                1 => rng.below(8) * step,
                _ => rng.below((PAGE_SIZE - width) / step + 1) * step,
            };
            let target = base + off;
            for b in buf.0.iter_mut() {
                *b = rng.next() as u8;
            }
            if width <= 8 && rng.below(2) == 0 {
                let v = rng.interesting().to_le_bytes();
                buf.0[off as usize..(off + width) as usize].copy_from_slice(&v[..width as usize]);
            }
            let mut ctx = setup(&mut rng, target);
            if rng.below(2) == 0 {
                // Make cmpxchg succeed about half of the time.
                let mut cur = [0u8; 8];
                let n = width.min(8) as usize;
                cur[..n].copy_from_slice(&buf.0[off as usize..off as usize + n]);
                let m = mask(width.min(8) as u8);
                ctx.gpr[0] = (ctx.gpr[0] & !m) | u64::from_le_bytes(cur);
                if base_reg == 0 {
                    ctx = setup(&mut rng, target); // rax is the base: keep it pointing right
                }
            }
            let initial = buf.0;
            let mut regs = to_regs(&ctx);
            let mut native = ctx.clone();
            // SAFETY: the registers make the instruction access only `buf` at `target` (the
            // operand lies within the first page of the buffer).
            unsafe { (form.run)(&mut native) };
            let native_mem = buf.0;

            buf.0 = initial;
            let fault = target + rng.below(width);
            let d = decode(form.bytes, &regs, fault)
                .unwrap_or_else(|e| panic!("{}: round {round}: {e}", form.asm));
            assert_eq!(d.len, form.bytes.len(), "{}", form.asm);
            assert_eq!(
                (d.effect.addr(), u64::from(d.effect.width())),
                (target, width),
                "{}",
                form.asm
            );
            let o = off as usize;
            let w = width as usize;
            let mut old = 0;
            match d.effect {
                Effect::Store { value, .. } => {
                    buf.0[o..o + w].copy_from_slice(&value.to_le_bytes()[..w]);
                }
                Effect::Rmw {
                    width: rw,
                    op,
                    operand,
                    expected,
                    ..
                } => {
                    let mut cur = [0u8; 8];
                    cur[..w].copy_from_slice(&buf.0[o..o + w]);
                    old = u64::from_le_bytes(cur);
                    let (new, stored) = rmw_result(op, rw, old, operand, expected);
                    if stored {
                        buf.0[o..o + w].copy_from_slice(&new.to_le_bytes()[..w]);
                    }
                }
            }
            apply(&d, old, &mut regs);
            let what = format!("{} round {round} ctx {ctx:x?}", form.asm);
            assert!(buf.0[..] == native_mem[..], "memory differs: {what}");
            assert_eq!(regs.gpr, native.gpr, "registers differ: {what}");
            assert_eq!(regs.xmm, native.xmm, "xmm differ: {what}");
            assert_eq!(
                regs.rflags & ARITH_FLAGS,
                native.rflags & ARITH_FLAGS,
                "flags differ: {what} old {old:#x}"
            );
            assert_eq!(regs.rip, 0x5555_0000_1000 + form.bytes.len() as u64);
            checked += 1;

            // The same operand moved across the page end must be refused.
            if width > 1 && round % 8 == 0 {
                let target = base + PAGE_SIZE - width + 1 + rng.below(width - 1);
                let regs = to_regs(&setup(&mut rng, target));
                let fault = target + rng.below(width);
                match decode(form.bytes, &regs, fault) {
                    Err(Unsupported::Straddles { addr, width: w }) if addr == target => {
                        assert_eq!(u64::from(w), width)
                    }
                    Err(Unsupported::Misaligned { .. }) if aligned => {}
                    other => panic!("{}: straddling operand gave {other:?}", form.asm),
                }
            }
        }
        if aligned {
            let regs = to_regs(&setup(&mut rng, base + 8));
            assert_eq!(
                decode(form.bytes, &regs, base + 8),
                Err(Unsupported::Misaligned {
                    addr: base + 8,
                    align: 16
                }),
                "{}",
                form.asm
            );
        }
    }
    assert!(checked >= 80 * ROUNDS);
}
