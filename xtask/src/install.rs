//! `cargo xtask install` / `uninstall`: the original's `make install`, for C and Rust users.
//!
//! Installs exactly [`FILES`] under the prefix, and uninstall removes exactly those (plus the
//! `include/dsm` directory once empty). When the prefix's `lib` is in the dynamic loader's
//! path (`/usr/local/lib`, `/usr/lib`), `ldconfig` runs afterwards, so `cc prog.c -ldsm` programs
//! run without `LD_LIBRARY_PATH`; elsewhere the printed command (and `dsm.pc`) carry an rpath.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::{cargo, prereq, root, run_cmd};

/// Install the C library (libdsm.a, libdsm.so), dsm/dsm.h, dsm/dsm_util.h, dsm.pc, dsm-coordinator and dsm.
#[derive(clap::Args)]
pub struct Args {
    /// Installation prefix.
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// Cargo profile to build and install (`release`, or `dev` for a quick debug install).
    #[arg(long, default_value = "release")]
    profile: String,
    /// Install what is already built (skip `cargo build`).
    #[arg(long)]
    no_build: bool,
}

/// Remove exactly the files `cargo xtask install` put under the prefix.
#[derive(clap::Args)]
pub struct UninstallArgs {
    /// Installation prefix.
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
}

/// What is installed: (path under the prefix, where it comes from, mode).
enum Source {
    /// A build artifact in the profile's target directory.
    Built(&'static str),
    /// A file of the source tree.
    Tree(&'static str),
    /// The pkg-config file, generated for the prefix.
    PkgConfig,
}

/// Every installed file, relative to the prefix.
pub const FILES: [&str; 7] = [
    "lib/libdsm.a",
    "lib/libdsm.so",
    "include/dsm/dsm.h",
    "include/dsm/dsm_util.h",
    "lib/pkgconfig/dsm.pc",
    "bin/dsm-coordinator",
    "bin/dsm",
];

fn source(file: &str) -> (Source, u32) {
    match file {
        "lib/libdsm.a" => (Source::Built("libdsm.a"), 0o644),
        "lib/libdsm.so" => (Source::Built("libdsm.so"), 0o755),
        "include/dsm/dsm.h" => (Source::Tree("runtime/include/dsm/dsm.h"), 0o644),
        "include/dsm/dsm_util.h" => (Source::Tree("runtime/include/dsm/dsm_util.h"), 0o644),
        "lib/pkgconfig/dsm.pc" => (Source::PkgConfig, 0o644),
        "bin/dsm-coordinator" => (Source::Built("dsm-coordinator"), 0o755),
        "bin/dsm" => (Source::Built("dsm"), 0o755),
        other => unreachable!("{other} is not in FILES"),
    }
}

/// The libraries the static library needs (`cargo rustc -p dsm --lib -- --print
/// native-static-libs`, minus `-lc`).
const NATIVE_STATIC_LIBS: &str = "-lgcc_s -lutil -lrt -lpthread -lm -ldl";

fn pkg_config(prefix: &Path) -> String {
    format!(
        "prefix={prefix}\n\
         exec_prefix=${{prefix}}\n\
         libdir=${{exec_prefix}}/lib\n\
         includedir=${{prefix}}/include\n\
         \n\
         Name: dsm\n\
         Description: Distributed shared memory for Linux x86-64 (C API, dsm/dsm.h)\n\
         Version: {version}\n\
         Libs: -L${{libdir}} -Wl,-rpath,${{libdir}} -ldsm -lpthread -ldl -lm\n\
         Libs.private: {NATIVE_STATIC_LIBS}\n\
         Cflags: -I${{includedir}}\n",
        prefix = prefix.display(),
        version = env!("CARGO_PKG_VERSION"),
    )
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

pub fn install(args: Args) -> anyhow::Result<()> {
    let profile_dir = match args.profile.as_str() {
        "dev" | "debug" => "debug",
        other => other,
    };
    if !args.no_build {
        prereq::ensure()?;
        let mut cmd = cargo();
        cmd.args(["build", "--profile", &args.profile, "-p", "dsm", "-p", "dsm-coordinator"]);
        run_cmd(&mut cmd)?;
    }
    let built = target_dir().join(profile_dir);
    let prefix = std::path::absolute(&args.prefix).unwrap_or(args.prefix.clone());
    // Check every source first, so a missing artifact installs nothing.
    for file in FILES {
        if let (Source::Built(name), _) = source(file) {
            let from = built.join(name);
            anyhow::ensure!(from.is_file(), "{} is missing: build it first (without --no-build)", from.display());
        }
    }
    for file in FILES {
        let to = prefix.join(file);
        let dir = to.parent().expect("FILES are below the prefix");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (src, mode) = source(file);
        // Write to a temporary name, then rename: replacing a library or binary in use is safe.
        let tmp = dir.join(format!(".{}.tmp", to.file_name().expect("file").to_string_lossy()));
        match src {
            Source::Built(name) => copy(&built.join(name), &tmp)?,
            Source::Tree(path) => copy(&root().join(path), &tmp)?,
            Source::PkgConfig => {
                std::fs::write(&tmp, pkg_config(&prefix)).with_context(|| format!("writing {}", tmp.display()))?
            }
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, &to).with_context(|| format!("installing {}", to.display()))?;
        println!("installed {}", to.display());
    }
    let libdir = prefix.join("lib");
    let cached = refresh_loader_cache(&libdir);
    let p = prefix.display();
    println!("\nbuild C programs as with the original (no -lxed any more):");
    if cached {
        println!("  cc prog.c -ldsm -lpthread -lrt");
    } else {
        println!("  cc -I{p}/include prog.c -L{p}/lib -Wl,-rpath,{p}/lib -ldsm -lpthread -lrt");
        println!("  ({p}/lib is not in the dynamic loader's path: the rpath lets programs find libdsm.so)");
    }
    println!("  cc prog.c $(pkg-config --cflags --libs dsm)   # PKG_CONFIG_PATH={p}/lib/pkgconfig if needed");
    println!("  cc -I{p}/include prog.c {p}/lib/libdsm.a -lpthread -ldl -lm   # static");
    Ok(())
}

/// Whether `libdir` is one of the directories the dynamic loader searches through its cache
/// (`/etc/ld.so.conf`): then programs linked with plain `-ldsm` run without `LD_LIBRARY_PATH`
/// once `ldconfig` has run, which we do as root. Returns whether that is the case.
fn refresh_loader_cache(libdir: &Path) -> bool {
    if !loader_dirs().iter().any(|d| same_dir(d, libdir)) {
        return false;
    }
    let root = std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !root {
        println!("note: run `sudo ldconfig` so programs find {}/libdsm.so", libdir.display());
        return true;
    }
    match std::process::Command::new("ldconfig").status() {
        Ok(s) if s.success() => println!("ran ldconfig ({} is in the loader's path)", libdir.display()),
        Ok(s) => println!("warning: ldconfig failed ({s}); run it by hand"),
        Err(e) => println!("warning: cannot run ldconfig ({e}); run it by hand"),
    }
    true
}

/// Directories listed in `/etc/ld.so.conf` and the files it includes.
fn loader_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("/lib"), PathBuf::from("/usr/lib")];
    let mut files = vec![PathBuf::from("/etc/ld.so.conf")];
    while let Some(f) = files.pop() {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        for line in text.lines().map(|l| l.split('#').next().unwrap_or("").trim()) {
            if let Some(pattern) = line.strip_prefix("include ") {
                // Only the `dir/*.conf` form is used in practice.
                if let Some(dir) = pattern.trim().strip_suffix("*.conf") {
                    if let Ok(es) = std::fs::read_dir(dir) {
                        files.extend(es.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "conf")));
                    }
                }
            } else if line.starts_with('/') {
                dirs.push(PathBuf::from(line));
            }
        }
    }
    dirs
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

pub fn uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    let prefix = std::path::absolute(&args.prefix).unwrap_or(args.prefix.clone());
    let mut removed = 0;
    for file in FILES {
        let path = prefix.join(file);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                println!("removed {}", path.display());
                removed += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    let include = prefix.join("include/dsm");
    if std::fs::read_dir(&include).is_ok_and(|mut d| d.next().is_none()) {
        std::fs::remove_dir(&include).with_context(|| format!("removing {}", include.display()))?;
        println!("removed {}/", include.display());
    }
    if removed == 0 {
        println!("nothing of dsm was installed under {}", prefix.display());
    } else {
        refresh_loader_cache(&prefix.join("lib"));
    }
    Ok(())
}
