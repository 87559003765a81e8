//! The decoder's differential test: every store form of [`dsm_tests::native::forms`] runs
//! natively on a private buffer, then through `decode` + `rmw_result` + `apply` on a copy of the
//! same bytes and registers; memory, GPRs, xmm registers and the arithmetic flags must match.
//! The same operand moved across the page end must be refused, an aligned form misaligned too.
//! (The table tests of the decoder stay in `runtime/src/decode/tests.rs`.)

use dsm::decode::{apply, decode, rmw_result, Effect, Regs, Unsupported, ARITH_FLAGS, PAGE_SIZE};
use dsm_tests::native::{forms, mask, thread_pointer, Ctx, Pages, Rng, PAGE};
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter, Register};

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

/// The index into [`Regs::gpr`] of a 64-bit general register (none for rip or no register).
fn gpr_index(reg: Register) -> Option<usize> {
    reg.is_gpr64()
        .then(|| reg as usize - Register::RAX as usize)
}

/// Iterations per form.
const ROUNDS: usize = 300;

#[test]
fn differential_native_vs_emulated() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = Box::new(Pages([0; 2 * PAGE]));
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
        let base_reg =
            gpr_index(instr.memory_base()).expect("differential forms use a base register");
        let index_reg = gpr_index(instr.memory_index());
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
                let m = mask(width.min(8) as usize);
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
