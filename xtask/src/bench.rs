//! `cargo xtask bench`: builds the workspace's binaries in release mode (the benchmarks start
//! the coordinator and the examples as processes) and runs the benchmark binary.

use crate::{cargo, prereq, run_cmd};

/// Run the benchmarks. Every figure is printed with the floor it is compared against, measured
/// in the same run (raw quinn round trips, native stores).
#[derive(clap::Args)]
pub struct Args {
    /// One JSON object per line: {"name","value","unit","floor","ratio"}.
    #[arg(long)]
    json: bool,
    /// Only figures whose name contains this (floors are measured anyway).
    filter: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    prereq::ensure()?;
    // `app.*` and `coordinator.*` run target/release/{contrast,dsm-coordinator,...}.
    run_cmd(cargo().args(["build", "--quiet", "--release", "--workspace", "--bins"]))?;
    let mut cmd = cargo();
    cmd.args(["run", "--quiet", "--release", "-p", "dsm-tests", "--bin", "dsm-bench", "--"]);
    if args.json {
        cmd.arg("--json");
    }
    if let Some(f) = args.filter {
        cmd.arg(f);
    }
    run_cmd(&mut cmd)
}
