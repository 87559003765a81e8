//! Table tests. The differential test (native execution vs decode + rmw_result + apply) is
//! `tests/tests/decode.rs` in dsm-tests, with the native harness in `dsm_tests::native`.

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
            Err(e @ Unsupported::Instruction { .. }) => assert!(!e.to_string().is_empty()),
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
