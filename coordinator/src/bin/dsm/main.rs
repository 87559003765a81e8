//! `dsm`: the DSM command-line tool.
//!
//! - `run.rs`: `dsm run -n N -- PROGRAM ARGS...`, the launcher (like `mpirun`), with
//!   `watch.rs` following its session through the coordinator's status;
//! - `status.rs`: `dsm status`, a running coordinator's sessions as a table or JSON;
//! - `certs.rs`: `dsm certs`, certificates for a coordinator and its machines.

mod certs;
mod run;
mod status;
mod watch;

use clap::{Parser, Subcommand};

/// The DSM tool: launch a session's processes, ask a coordinator what it is doing, make
/// certificates.
#[derive(Parser, Debug)]
#[command(
    name = "dsm",
    version,
    after_help = "Examples:\n  \
    dsm certs --san 10.0.0.5 --client node1 --client node2   # a CA and certificates for 3 machines\n  \
    dsm run -n 4 -- ./target/release/pi --steps 100000000   # 4 processes, private coordinator\n  \
    dsm run -n 8 --coordinator 10.0.0.5:4200 -- ./sim       # against a running coordinator\n  \
    dsm status --coordinator 10.0.0.5:4200                   # its sessions as a table\n  \
    dsm status --json | jq '.sessions[].name'\n\n\
    `dsm help COMMAND` shows each command's options and more examples."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start N processes of PROGRAM in one DSM session and wait for them all.
    #[command(after_help = run::HELP)]
    Run(run::RunArgs),
    /// Show a running coordinator's sessions (over the same mutual-TLS QUIC connection
    /// processes use).
    #[command(after_help = status::HELP)]
    Status(status::Args),
    /// Create a CA and certificates for a coordinator and its client machines, or add to them.
    #[command(after_help = certs::HELP)]
    Certs(certs::Args),
}

fn main() {
    let cli = Cli::parse();
    // A private coordinator inside `dsm run` would repeat what dsm run itself reports (and log
    // the ranks it loses when dsm run stops everything): only its errors, unless RUST_LOG says.
    dsm_coordinator::logging::init("warn,dsm_coordinator=error");
    let (name, result) = match cli.cmd {
        Cmd::Run(args) => ("dsm run", run::run(args)),
        Cmd::Status(args) => ("dsm status", status::run(args)),
        Cmd::Certs(args) => ("dsm certs", certs::run(args)),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::exit(1);
        }
    }
}
