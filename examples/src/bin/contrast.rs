//! `contrast`: contrast-stretches a grayscale PGM image held in the region.
//!
//! Rank 0 puts the image in the region (a 16-byte header, width and height as u64, then one
//! byte per pixel, row-major). Every rank computes the minimum and maximum of the whole image,
//! then stretches its own band of rows in place: `out = (p - min) * 255 / (max - min)`. Rank 0
//! writes the result as a binary PGM (P5) and compares it with a single-process reference.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use anyhow::{bail, Context};
use clap::Parser;

/// Distributed contrast stretch of a PGM image. The session comes from DSM_COORDINATOR,
/// DSM_SESSION, DSM_SIZE, DSM_NPROCS and DSM_CERT_DIR.
#[derive(Parser)]
#[command(
    version,
    after_help = "Region size: DSM_SIZE must be at least 16 + width * height bytes \
    (640x480: 307,216 bytes; 1MiB fits up to 1024x1023, 4MiB up to 2048x2047)."
)]
struct Args {
    /// Input image, PGM P5 (binary) or P2 (ASCII), maxval <= 255.
    #[arg(long, conflicts_with = "generate", required_unless_present = "generate")]
    input: Option<PathBuf>,
    /// Generate a deterministic low-contrast test image of this size instead, e.g. 640x480.
    #[arg(long, value_parser = parse_size)]
    generate: Option<(usize, usize)>,
    /// Where rank 0 writes the stretched image (P5). Not written if absent.
    #[arg(long)]
    output: Option<PathBuf>,
}

const HEADER: usize = 16;

struct Image {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (w, h) = s.split_once(['x', 'X']).ok_or("expected WxH, e.g. 640x480")?;
    let w: usize = w.parse().map_err(|e| format!("width: {e}"))?;
    let h: usize = h.parse().map_err(|e| format!("height: {e}"))?;
    if w == 0 || h == 0 {
        return Err("width and height must be positive".into());
    }
    Ok((w, h))
}

/// A gradient with deterministic noise, squeezed into 60..=190.
fn generate(width: usize, height: usize) -> Image {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut pixels = Vec::with_capacity(width * height);
    for y in 0..height {
        for x in 0..width {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let noise = (state >> 59) as usize; // 0..32
            let gradient = (x * 60 / width.max(1)) + (y * 40 / height.max(1)); // 0..100
            pixels.push((60 + gradient + noise).min(190) as u8);
        }
    }
    Image { width, height, pixels }
}

/// Reads a P5 or P2 PGM file.
fn read_pgm(path: &PathBuf) -> anyhow::Result<Image> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut pos = 0;
    // Next whitespace-separated header token, skipping `#` comments.
    let token = |pos: &mut usize| -> anyhow::Result<String> {
        loop {
            while *pos < data.len() && data[*pos].is_ascii_whitespace() {
                *pos += 1;
            }
            if *pos < data.len() && data[*pos] == b'#' {
                while *pos < data.len() && data[*pos] != b'\n' {
                    *pos += 1;
                }
                continue;
            }
            break;
        }
        let start = *pos;
        while *pos < data.len() && !data[*pos].is_ascii_whitespace() {
            *pos += 1;
        }
        anyhow::ensure!(start < *pos, "{}: truncated PGM header", path.display());
        Ok(String::from_utf8_lossy(&data[start..*pos]).into_owned())
    };
    let magic = token(&mut pos)?;
    let width: usize = token(&mut pos)?.parse().context("PGM width")?;
    let height: usize = token(&mut pos)?.parse().context("PGM height")?;
    let maxval: usize = token(&mut pos)?.parse().context("PGM maxval")?;
    anyhow::ensure!((1..=255).contains(&maxval), "only 8-bit PGM is supported (maxval {maxval})");
    let n = width * height;
    let pixels = match magic.as_str() {
        "P5" => {
            pos += 1; // the single whitespace after maxval
            anyhow::ensure!(data.len() >= pos + n, "{}: truncated pixel data", path.display());
            data[pos..pos + n].to_vec()
        }
        "P2" => {
            let mut px = Vec::with_capacity(n);
            for _ in 0..n {
                let v: usize = token(&mut pos)?.parse().context("PGM pixel")?;
                px.push(v.min(255) as u8);
            }
            px
        }
        m => bail!("{}: not a grayscale PGM (magic {m:?})", path.display()),
    };
    Ok(Image { width, height, pixels })
}

fn write_pgm(path: &PathBuf, width: usize, height: usize, pixels: &[u8]) -> anyhow::Result<()> {
    let mut out = format!("P5\n{width} {height}\n255\n").into_bytes();
    out.extend_from_slice(pixels);
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

fn stretch(p: u8, min: u8, max: u8) -> u8 {
    if max == min {
        return 0;
    }
    ((u32::from(p - min) * 255) / u32::from(max - min)) as u8
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let region = dsm_examples::attach()?;
    // Timed from attach to the last barrier: loading the image into the region included.
    let start = std::time::Instant::now();
    let rank = region.rank() as usize;
    let nprocs = region.nprocs() as usize;
    let header: &[AtomicU64] = region.as_slice(0, 2)?;

    let mut original = None;
    if rank == 0 {
        let image = match (&args.input, args.generate) {
            (Some(path), _) => read_pgm(path)?,
            (None, Some((w, h))) => generate(w, h),
            (None, None) => unreachable!("clap requires one of them"),
        };
        let need = HEADER + image.width * image.height;
        anyhow::ensure!(
            need <= region.len(),
            "the image needs a region of {need} bytes, DSM_SIZE gives {}",
            region.len()
        );
        let px: &[AtomicU8] = region.as_slice(HEADER, image.pixels.len())?;
        for (slot, &p) in px.iter().zip(&image.pixels) {
            slot.store(p, Ordering::Relaxed);
        }
        header[0].store(image.width as u64, Ordering::SeqCst);
        header[1].store(image.height as u64, Ordering::SeqCst);
        original = Some(image);
    }
    region.barrier()?;

    let width = header[0].load(Ordering::SeqCst) as usize;
    let height = header[1].load(Ordering::SeqCst) as usize;
    anyhow::ensure!(width > 0 && height > 0, "no image in the region (did rank 0 fail?)");
    let px: &[AtomicU8] = region.as_slice(HEADER, width * height)?;
    let (mut min, mut max) = (u8::MAX, u8::MIN);
    for p in px {
        let p = p.load(Ordering::Relaxed);
        min = min.min(p);
        max = max.max(p);
    }
    // Nobody may overwrite pixels while another rank still looks for the extremes.
    region.barrier()?;
    let (row_lo, row_hi) = (height * rank / nprocs, height * (rank + 1) / nprocs);
    for p in &px[row_lo * width..row_hi * width] {
        p.store(stretch(p.load(Ordering::Relaxed), min, max), Ordering::Relaxed);
    }
    region.barrier()?;
    let elapsed = start.elapsed();

    let mut correct = true;
    let mut result = format!(
        "size={width}x{height} min={min} max={max} nprocs={nprocs} time={} micros={}",
        dsm_examples::fmt_duration(elapsed),
        elapsed.as_micros()
    );
    if let Some(image) = original {
        let out: Vec<u8> = px.iter().map(|p| p.load(Ordering::Relaxed)).collect();
        let reference: Vec<u8> = image.pixels.iter().map(|&p| stretch(p, min, max)).collect();
        let (rmin, rmax) = (image.pixels.iter().min(), image.pixels.iter().max());
        let differing = out.iter().zip(&reference).filter(|(a, b)| a != b).count();
        correct = differing == 0 && rmin == Some(&min) && rmax == Some(&max);
        result.push_str(&format!(" differing_pixels={differing}"));
        if let Some(path) = &args.output {
            write_pgm(path, width, height, &out)?;
            result.push_str(&format!(" output={}", path.display()));
        }
    }
    dsm_examples::finish(region, &result, correct)
}
