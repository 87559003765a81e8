//! `cargo xtask certs`: dev TLS material.

use std::path::PathBuf;

/// Create dev certificates: a CA, a coordinator certificate (SANs localhost, 127.0.0.1, ::1 and
/// any --san) and a client certificate, as PEM files.
#[derive(clap::Args)]
pub struct Args {
    /// Directory to write into (default: $DSM_CERT_DIR, else ~/.config/dsm/certs).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Extra name or IP address for the coordinator's certificate (repeatable).
    #[arg(long = "san")]
    sans: Vec<String>,
    /// Replace existing certificates (otherwise an existing set is kept).
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = args.dir.unwrap_or_else(dsm_cert::default_dir);
    if args.force {
        for f in dsm_cert::generate(&dir, &args.sans)? {
            println!("wrote {}", f.display());
        }
    } else if dsm_cert::ensure(&dir, &args.sans)? {
        println!("created dev certificates in {}", dir.display());
    } else {
        println!(
            "dev certificates already exist in {} (use --force to replace them)",
            dir.display()
        );
    }
    Ok(())
}
