//! Build prerequisites a fresh machine lacks, checked (and installed as root on Debian) before
//! anything builds the runtime.
//!
//! The `userfaultfd` crate generates its bindings with bindgen, which needs libclang.

use std::path::Path;
use std::process::Command;

struct Prereq {
    what: &'static str,
    why: &'static str,
    debian_package: &'static str,
    present: fn() -> bool,
}

fn libclang_present() -> bool {
    if std::env::var_os("LIBCLANG_PATH").is_some() {
        return true;
    }
    ["/usr/lib", "/usr/lib64", "/usr/local/lib", "/usr/lib/x86_64-linux-gnu"].iter().any(|d| {
        let Ok(entries) = std::fs::read_dir(d) else { return false };
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libclang") && name.contains(".so")
                || (e.path().is_dir() && name.starts_with("llvm-") && has_libclang(&e.path()))
        })
    })
}

fn has_libclang(llvm: &Path) -> bool {
    std::fs::read_dir(llvm.join("lib"))
        .map(|es| es.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libclang.so")))
        .unwrap_or(false)
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
