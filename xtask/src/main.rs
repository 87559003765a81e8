//! `cargo xtask`: the project's automation, one module per subcommand.

mod bench;
mod certs;
mod demo;
mod features;
mod install;
mod itest;
mod prereq;
mod procs;
mod relay;
mod test;

use clap::{Parser, Subcommand};

/// DSM project tasks.
#[derive(Parser)]
#[command(
    name = "cargo xtask",
    after_help = "Examples:\n  \
    cargo xtask test                      # the whole test suite (installs build prerequisites first)\n  \
    cargo xtask certs --san myhost        # certificates in ~/.config/dsm/certs (same as `dsm certs`)\n  \
    cargo xtask relay --listen 127.0.0.1:5000 --to 127.0.0.1:4200 --loss 0.05 --delay 10ms --jitter 5ms\n  \
    cargo xtask itest --procs 4 --loss 0.05 --delay 10ms --jitter 5ms   # suites through a lossy link\n  \
    cargo xtask bench                     # benchmarks, as ratios to floors measured in the same run\n  \
    cargo xtask bench --json barrier      # only barrier figures (floors are always measured), as JSON lines\n  \
    cargo xtask demo                      # build and run every example (4 processes each) on a local coordinator\n  \
    sudo cargo xtask install              # libdsm.a/.so, dsm/dsm.h, dsm_util.h, dsm.pc, dsm-coordinator, dsm under /usr/local\n  \
    cargo xtask install --prefix ~/.local # ... or under another prefix\n  \
    cargo xtask uninstall --prefix ~/.local   # remove exactly those files"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create or extend TLS certificates (same as the installed `dsm certs`).
    Certs(certs::Args),
    /// Run a lossy UDP relay in front of a coordinator.
    #[command(after_help = relay::EXAMPLES)]
    Relay(relay::Args),
    /// Run the whole test suite (the README's test command).
    Test(test::Args),
    /// Run the benchmarks.
    Bench(bench::Args),
    /// Build and run the examples against a local coordinator, with a summary table.
    Demo(demo::Args),
    /// Run the multi-process suites against a coordinator process, optionally through the lossy relay.
    Itest(itest::Args),
    /// Build in release mode and install the C library, header, pkg-config file, coordinator and launcher.
    #[command(after_help = "Examples:\n  sudo cargo xtask install\n  cargo xtask install --prefix ~/.local\n  \
        cargo xtask install --prefix /tmp/dsm --profile dev\n\n\
        Installs PREFIX/lib/libdsm.a, PREFIX/lib/libdsm.so, PREFIX/include/dsm/dsm.h, PREFIX/include/dsm/dsm_util.h,\n\
        PREFIX/lib/pkgconfig/dsm.pc, PREFIX/bin/dsm-coordinator and PREFIX/bin/dsm, nothing else.")]
    Install(install::Args),
    /// Remove exactly the files `cargo xtask install` installed under the prefix.
    #[command(after_help = "Examples:\n  sudo cargo xtask uninstall\n  cargo xtask uninstall --prefix ~/.local")]
    Uninstall(install::UninstallArgs),
}

fn main() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    // Colours only on a terminal, and never with NO_COLOR set (as dsm and dsm-coordinator).
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    match Cli::parse().cmd {
        Cmd::Certs(a) => certs::run(a),
        Cmd::Relay(a) => relay::run(a),
        Cmd::Test(a) => test::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Itest(a) => itest::run(a),
        Cmd::Install(a) => install::install(a),
        Cmd::Uninstall(a) => install::uninstall(a),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.parent().expect("xtask is inside the workspace").to_path_buf()
}

/// Runs a command in the workspace root, failing with its exit status.
pub fn run_cmd(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    let status = cmd
        .current_dir(root())
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run {cmd:?}: {e}"))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed with {status}");
    Ok(())
}

/// The cargo that runs us.
pub fn cargo() -> std::process::Command {
    std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}
