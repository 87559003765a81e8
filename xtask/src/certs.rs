//! `cargo xtask certs`: a thin wrapper over `dsm_cert::make_certs`, the same call as the
//! installed `dsm certs` (which is what users without the source tree run).

use std::path::PathBuf;

/// Create or extend certificates: a CA, the coordinator's (SANs localhost, 127.0.0.1, ::1 and
/// any --san), this machine's client certificate and one set per --client NAME; never replaces
/// a file without --force. Same as `dsm certs`.
#[derive(clap::Args)]
pub struct Args {
    /// Directory to write into (default: $DSM_CERT_DIR, else ~/.config/dsm/certs).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Extra name or IP address for the coordinator's certificate (repeatable).
    #[arg(long = "san")]
    sans: Vec<String>,
    /// Issue a certificate set for client machine NAME under DIR/clients/NAME/ (repeatable).
    #[arg(long = "client")]
    clients: Vec<String>,
    /// Start over with a new CA (needs --force when one exists).
    #[arg(long)]
    new_ca: bool,
    /// Allow replacing existing files.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let req = dsm_cert::CertsRequest {
        dir: args.dir.unwrap_or_else(dsm_cert::default_dir),
        sans: args.sans,
        clients: args.clients,
        new_ca: args.new_ca,
        force: args.force,
    };
    print!("{}", dsm_cert::make_certs(&req)?);
    Ok(())
}
