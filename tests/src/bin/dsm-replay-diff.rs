//! `dsm-replay-diff`: a differential test of write replay through the REAL fault path.
//!
//! Two processes, configured from the `DSM_*` environment like `dsm-worker`. Rank 0 advises the
//! whole region [`dsm::Coherence::Update`]; rank 1 reads every test page (so another process
//! holds copies the replayed stores must reach). Then rank 0 runs, for every supported store
//! form (the table of [`dsm_tests::native::forms`], shared with the decoder's differential
//! test) and `ROUNDS` random rounds: random registers, flags, xmm and memory, an operand offset
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
use dsm_tests::native::{fallback_forms, forms, mask, thread_pointer, Ctx, Form, Pages, Rng, PAGE};

/// Rounds per supported form.
const ROUNDS: usize = 30;
/// Rounds (each on a fresh page) per unsupported form.
const FALLBACK_ROUNDS: usize = 3;
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
    let mut ctx = Ctx::default();
    ctx.gpr = [0x1000_0000; 16];
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
    let ptr = region.ptr_at(p * PAGE, PAGE).expect("inside the region");
    // SAFETY: test code, and deliberately so: the slice is read only between instructions this
    // single thread runs on the page (their replayed stores complete before the instruction
    // retires), to compare the page with its native mirror. The page stays mapped as long as
    // `region`.
    (ptr, unsafe { std::slice::from_raw_parts(ptr, PAGE) })
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
