//! Build prerequisites a fresh machine lacks, checked (and installed as root on Debian) before
//! anything builds the runtime.
//!
//! The `userfaultfd` crate generates its bindings with bindgen, which loads libclang through
//! clang-sys. Detection follows what clang-sys actually loads: `libclang.so`, `libclang-*.so`,
//! `libclang.so.*` and `libclang-*.so.*` in the usual library directories (and
//! `/usr/lib/llvm-*/lib`), or the directory named by `LIBCLANG_PATH`. `libclang-cpp*` is the
//! C++ interface, which bindgen cannot use: a fresh Debian machine ships it without libclang.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Prereq {
    what: &'static str,
    why: &'static str,
    debian_package: &'static str,
    present: fn() -> bool,
}

/// Whether `name` is a file name clang-sys would load as libclang.
fn is_libclang_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("libclang") else { return false };
    // `libclang.so`, `libclang.so.13`, ...
    if rest == ".so" || rest.starts_with(".so.") {
        return true;
    }
    // `libclang-14.so`, `libclang-14.so.1`, ... but never `libclang-cpp.so.14`.
    let Some(version) = rest.strip_prefix('-') else { return false };
    let Some((version, tail)) = version.split_once(".so") else { return false };
    !version.is_empty()
        && version.chars().all(|c| c.is_ascii_digit() || c == '.')
        && (tail.is_empty() || tail.starts_with('.'))
}

fn dir_has_libclang(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|es| es.flatten().any(|e| is_libclang_name(&e.file_name().to_string_lossy())))
        .unwrap_or(false)
}

/// The directories searched under `root` ("/" on a real machine): the standard library
/// directories and every `lib/llvm-*/lib`.
fn candidate_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["usr/lib", "usr/lib64", "usr/local/lib", "usr/lib/x86_64-linux-gnu", "lib", "lib64"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    if let Ok(entries) = std::fs::read_dir(root.join("usr/lib")) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("llvm-") {
                dirs.push(e.path().join("lib"));
            }
        }
    }
    dirs
}

fn libclang_under(root: &Path, libclang_path: Option<&Path>) -> bool {
    if let Some(dir) = libclang_path {
        // clang-sys takes LIBCLANG_PATH as a directory (or the file itself).
        return dir_has_libclang(dir) || dir.file_name().is_some_and(|n| is_libclang_name(&n.to_string_lossy()));
    }
    candidate_dirs(root).iter().any(|d| dir_has_libclang(d))
}

fn libclang_present() -> bool {
    let env = std::env::var_os("LIBCLANG_PATH").map(PathBuf::from);
    libclang_under(Path::new("/"), env.as_deref())
}

const PREREQS: &[Prereq] = &[Prereq {
    what: "libclang",
    why: "the userfaultfd crate generates its kernel bindings with bindgen at build time",
    debian_package: "libclang-dev",
    present: libclang_present,
}];

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.trim_ascii() == b"0").unwrap_or(false)
}

/// Makes sure every prerequisite is there, installing missing ones when possible.
pub fn ensure() -> anyhow::Result<()> {
    let missing: Vec<&Prereq> = PREREQS.iter().filter(|p| !(p.present)()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|p| p.debian_package).collect();
    for p in &missing {
        eprintln!("xtask: {} is missing: {}", p.what, p.why);
    }
    let debian = Path::new("/etc/debian_version").exists();
    if !(debian && is_root()) {
        anyhow::bail!(
            "install the missing build prerequisites first:\n    sudo apt-get install -y {}",
            packages.join(" ")
        );
    }
    eprintln!("xtask: installing {} with apt-get (running as root on Debian)", packages.join(" "));
    let update = Command::new("apt-get").arg("update").arg("-q").status()?;
    anyhow::ensure!(update.success(), "apt-get update failed");
    let install = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    anyhow::ensure!(install.success(), "apt-get install {} failed", packages.join(" "));
    for p in &missing {
        anyhow::ensure!((p.present)(), "{} is still missing after installing {}", p.what, p.debian_package);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for f in files {
            let p = root.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"").unwrap();
        }
        root
    }

    #[test]
    fn names_clang_sys_loads() {
        for yes in ["libclang.so", "libclang.so.1", "libclang-14.so", "libclang-14.so.1", "libclang-14.0.6.so.14"] {
            assert!(is_libclang_name(yes), "{yes} should count");
        }
        for no in ["libclang-cpp.so.14", "libclang-cpp.so", "libclangBasic.a", "libclang.a", "libclang-14.a", "libclang-.so"] {
            assert!(!is_libclang_name(no), "{no} should not count");
        }
    }

    #[test]
    fn only_libclang_cpp_is_missing() {
        let root = tree(&["usr/lib/x86_64-linux-gnu/libclang-cpp.so.14", "usr/lib/llvm-14/lib/libclang-cpp.so.14"]);
        assert!(!libclang_under(root.path(), None));
    }

    #[test]
    fn versioned_libclang_is_present() {
        let root = tree(&["usr/lib/x86_64-linux-gnu/libclang-14.so.1"]);
        assert!(libclang_under(root.path(), None));
        let root = tree(&["usr/lib/llvm-14/lib/libclang.so.1"]);
        assert!(libclang_under(root.path(), None));
    }

    #[test]
    fn libclang_path_is_checked_not_trusted() {
        let empty = tree(&["x/readme"]);
        assert!(!libclang_under(empty.path(), Some(&empty.path().join("x"))));
        let lib = tree(&["x/libclang-14.so.1"]);
        assert!(libclang_under(lib.path(), Some(&lib.path().join("x"))));
    }
}
