//! `dsm certs`: certificates for a coordinator and the machines of its processes, made by
//! `dsm_cert::make_certs` (`cargo xtask certs` is a thin wrapper over the same call).

use std::path::PathBuf;

pub const HELP: &str = "\
In a directory without a CA, creates: ca.pem + ca.key (the CA), coordinator.pem + .key (for
localhost, 127.0.0.1, ::1 and every --san), client.pem + .key (for this machine), and for every
--client NAME a directory clients/NAME/ with ca.pem, client.pem and client.key: exactly what
that machine needs in its certificate directory. In a directory with a CA, issues from it only
what is asked (more --client sets; a new coordinator certificate when --san is given). It never
replaces a file without --force, and prints what was written and what to copy to which machine.
Private keys are written with mode 0600.

Examples:
  dsm certs --san 10.0.0.5 --san coord.lab --client node1 --client node2
  dsm certs --client node3                       # one more machine, same CA
  dsm certs --san 10.0.0.6 --force               # the coordinator moved: re-issue its certificate
  dsm certs --dir /etc/dsm/certs --new-ca --force   # start over (every machine needs new files)";

/// Options of `dsm certs`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Certificate directory [default: $DSM_CERT_DIR, else ~/.config/dsm/certs, the directory
    /// dsm-coordinator, dsm run and DSM processes read by default].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// A name or IP address processes use to reach the coordinator; its certificate must hold it
    /// (repeatable).
    #[arg(long = "san", value_name = "NAME_OR_IP")]
    sans: Vec<String>,
    /// Issue a certificate set for client machine NAME under DIR/clients/NAME/ (repeatable).
    #[arg(long = "client", value_name = "NAME")]
    clients: Vec<String>,
    /// Start over with a new CA (certificates issued before stop working; needs --force when a
    /// CA exists).
    #[arg(long)]
    new_ca: bool,
    /// Allow replacing existing files.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let req = dsm_cert::CertsRequest {
        dir: args.dir.unwrap_or_else(dsm_cert::default_dir),
        sans: args.sans,
        clients: args.clients,
        new_ca: args.new_ca,
        force: args.force,
    };
    let report = dsm_cert::make_certs(&req)?;
    print!("{report}");
    Ok(0)
}
