//! `cargo xtask test`: the README's test command.

use crate::{cargo, prereq, run_cmd};

/// Check build prerequisites (installing them when run as root on Debian), then run every test
/// of the workspace.
#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments for `cargo test` (after --), e.g. a test name filter.
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    prereq::ensure()?;
    // The binaries and libdsm.a that multi-process tests run (`dsm`, `dsm-coordinator`, the
    // examples, the C library): `cargo test` alone builds test harnesses, not these. Built with
    // `--all-targets` in the same package set as the tests below, so that dev-dependency
    // features (iced-x86's formatter, ...) are unified once and the tests reuse every artifact
    // (built separately, a fresh clone compiled dsm, the coordinator and the tests twice).
    // xtask is part of both: its manifest asks for the workspace's features (`features.rs`),
    // so it changes nothing in what the rest is built with, and its own tests run too.
    run_cmd(cargo().args(["build", "--workspace", "--all-targets"]))?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace"]);
    if !args.cargo_args.is_empty() {
        cmd.arg("--").args(&args.cargo_args);
    }
    run_cmd(&mut cmd)
}
