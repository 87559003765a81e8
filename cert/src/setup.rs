//! `dsm certs` (and its thin wrapper `cargo xtask certs`): set up or extend a certificate
//! directory for a coordinator and the machines of its processes, and say what to copy where.
//!
//! A directory without a CA gets a new CA, the coordinator's certificate, a client certificate
//! for this machine and one set per `--client NAME` under `clients/NAME/`. A directory with a CA
//! gets from it what is asked for. Nothing is ever overwritten without `force`, and every
//! conflict is found before the first file is written. [`make_certs`] only writes files; the
//! [`CertsReport`] it returns is the text to show the user.

use std::fmt;
use std::path::{Path, PathBuf};

use rcgen::{ExtendedKeyUsagePurpose, KeyPair, SanType};

use crate::gen::{self, Issuer, CLIENT_NAME, COORDINATOR_NAME};
use crate::load::Role;
use crate::{Error, CA_CERT, CA_KEY, CLIENT_CERT, CLIENT_KEY, COORDINATOR_CERT, COORDINATOR_KEY};

/// Sub-directory holding one set of files per client machine.
pub const CLIENTS_DIR: &str = "clients";

/// What to create or issue.
#[derive(Debug, Clone, Default)]
pub struct CertsRequest {
    /// The certificate directory (the one holding, or to hold, the CA).
    pub dir: PathBuf,
    /// Extra names and addresses for the coordinator's certificate (beyond localhost,
    /// 127.0.0.1 and ::1). With an existing CA, giving any re-issues that certificate.
    pub sans: Vec<String>,
    /// Client machines to issue a certificate set for, under `clients/NAME/`.
    pub clients: Vec<String>,
    /// Start over with a new CA (every earlier certificate stops working).
    pub new_ca: bool,
    /// Allow replacing existing files.
    pub force: bool,
}

/// One file or set written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The file (or, for a client set, its directory).
    pub path: PathBuf,
    /// What it is, for the user.
    pub what: String,
}

/// What [`make_certs`] did; its `Display` is the text for the user.
#[derive(Debug, Clone)]
pub struct CertsReport {
    /// The certificate directory.
    pub dir: PathBuf,
    /// Whether a new CA was created.
    pub new_ca: bool,
    /// Files and sets written, in order.
    pub written: Vec<Written>,
    /// The names in the coordinator's certificate, if it was issued now.
    pub coordinator_names: Option<Vec<String>>,
    /// Client machines issued now, with their directories.
    pub clients: Vec<(String, PathBuf)>,
}

/// Creates or extends the certificate directory as `req` asks (see the module docs).
///
/// Fails without writing anything on an invalid name, on a file that exists when `force` is
/// not set ([`Error::Exists`]), or when certificates must be issued but `ca.key` is not there
/// ([`Error::NoCaKey`]).
pub fn make_certs(req: &CertsRequest) -> Result<CertsReport, Error> {
    let dir = &req.dir;
    let sans = gen::coordinator_sans(&req.sans)?;
    for (i, name) in req.clients.iter().enumerate() {
        gen::check_name(name)?;
        if req.clients[..i].contains(name) {
            return Err(Error::InvalidName {
                name: name.clone(),
                reason: "it is given twice".into(),
            });
        }
    }
    let has = |name: &str| dir.join(name).exists();
    let ca_exists = has(CA_CERT) || has(CA_KEY);
    let new_ca = req.new_ca || !ca_exists;

    // Plan every file first, so that a conflict stops us before anything is written.
    let coordinator =
        new_ca || !req.sans.is_empty() || !has(COORDINATOR_CERT) || !has(COORDINATOR_KEY);
    let own_client = new_ca || !has(CLIENT_CERT) || !has(CLIENT_KEY);
    let mut planned: Vec<PathBuf> = Vec::new();
    if new_ca {
        planned.extend([CA_CERT, CA_KEY].map(|f| dir.join(f)));
    }
    if coordinator {
        planned.extend([COORDINATOR_CERT, COORDINATOR_KEY].map(|f| dir.join(f)));
    }
    if own_client {
        planned.extend([CLIENT_CERT, CLIENT_KEY].map(|f| dir.join(f)));
    }
    for name in &req.clients {
        // A machine's set is one thing to the user: name its directory if it exists.
        planned.push(client_dir(dir, name));
    }
    if !req.force {
        if let Some(path) = planned.iter().find(|p| p.exists()) {
            return Err(Error::Exists { path: path.clone() });
        }
    }
    if !new_ca && !has(CA_KEY) && !planned.is_empty() {
        return Err(Error::NoCaKey { dir: dir.clone() });
    }

    let issuer = if new_ca {
        Issuer::create()?
    } else {
        Issuer::load(dir)?
    };
    let (ca_cert, ca_key, ca_pem) = (&issuer.cert, &issuer.key, issuer.pem.clone());

    // Issue everything in memory (and check each chains to the CA) before writing.
    let mut files: Vec<(PathBuf, String, bool)> = Vec::new();
    let mut written = Vec::new();
    if new_ca {
        files.push((dir.join(CA_CERT), ca_pem.clone(), false));
        files.push((dir.join(CA_KEY), ca_key.serialize_pem(), true));
        written.push(Written {
            path: dir.join(CA_CERT),
            what: "CA certificate (new CA)".into(),
        });
        written.push(Written {
            path: dir.join(CA_KEY),
            what: "CA private key (mode 0600): keep it on this machine only; it signs new certificates".into(),
        });
    }
    let mut coordinator_names = None;
    if coordinator {
        let key = KeyPair::generate()?;
        let mut params = gen::leaf_params(COORDINATOR_NAME, ExtendedKeyUsagePurpose::ServerAuth);
        params.subject_alt_names = sans.clone();
        let cert = params.signed_by(&key, ca_cert, ca_key)?;
        issuer.check(&cert, Role::Server, &dir.join(COORDINATOR_CERT))?;
        let names: Vec<String> = sans.iter().map(san_text).collect();
        files.push((dir.join(COORDINATOR_CERT), cert.pem(), false));
        files.push((dir.join(COORDINATOR_KEY), key.serialize_pem(), true));
        written.push(Written {
            path: dir.join(COORDINATOR_CERT),
            what: format!("coordinator certificate for {}", names.join(", ")),
        });
        written.push(Written {
            path: dir.join(COORDINATOR_KEY),
            what: "coordinator private key (mode 0600)".into(),
        });
        coordinator_names = Some(names);
    }
    if own_client {
        let (cert, key) = client_cert(&issuer, CLIENT_NAME, &dir.join(CLIENT_CERT))?;
        files.push((dir.join(CLIENT_CERT), cert, false));
        files.push((dir.join(CLIENT_KEY), key, true));
        written.push(Written {
            path: dir.join(CLIENT_CERT),
            what: format!("client certificate \"{CLIENT_NAME}\" for this machine (key in {CLIENT_KEY}, mode 0600)"),
        });
    }
    let mut clients = Vec::new();
    for name in &req.clients {
        let d = client_dir(dir, name);
        let (cert, key) = client_cert(&issuer, name, &d.join(CLIENT_CERT))?;
        files.push((d.join(CA_CERT), ca_pem.clone(), false));
        files.push((d.join(CLIENT_CERT), cert, false));
        files.push((d.join(CLIENT_KEY), key, true));
        written.push(Written {
            path: d.clone(),
            what: format!(
                "{CA_CERT}, {CLIENT_CERT}, {CLIENT_KEY} (mode 0600): client certificate \"{name}\""
            ),
        });
        clients.push((name.clone(), d));
    }

    for (path, text, private) in &files {
        if let Some(parent) = path.parent() {
            gen::create_dir(parent)?;
        }
        gen::write_file(path, text, *private)?;
    }
    Ok(CertsReport {
        dir: dir.clone(),
        new_ca,
        written,
        coordinator_names,
        clients,
    })
}

fn client_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join(CLIENTS_DIR).join(name)
}

/// A client certificate and key (PEM) signed by `issuer`, checked against the CA.
fn client_cert(issuer: &Issuer, name: &str, path: &Path) -> Result<(String, String), Error> {
    let key = KeyPair::generate()?;
    let cert = gen::leaf_params(name, ExtendedKeyUsagePurpose::ClientAuth).signed_by(
        &key,
        &issuer.cert,
        &issuer.key,
    )?;
    issuer.check(&cert, Role::Client, path)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn san_text(san: &SanType) -> String {
    match san {
        SanType::IpAddress(ip) => ip.to_string(),
        SanType::DnsName(name) => name.to_string(),
        other => format!("{other:?}"),
    }
}

impl fmt::Display for CertsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = self.dir.display();
        if self.written.is_empty() {
            writeln!(f, "nothing to do: {dir} already holds a CA, the coordinator's certificate and this machine's client certificate.")?;
            writeln!(
                f,
                "  add a machine:               dsm certs --dir {dir} --client NAME"
            )?;
            writeln!(f, "  re-issue the coordinator's:  dsm certs --dir {dir} --san NAME_OR_ADDRESS --force")?;
            return writeln!(
                f,
                "  start over with a new CA:    dsm certs --dir {dir} --new-ca --force"
            );
        }
        writeln!(f, "wrote in {dir}:")?;
        for w in &self.written {
            let shown = w.path.strip_prefix(&self.dir).unwrap_or(&w.path);
            writeln!(f, "  {:<22} {}", shown.display(), w.what)?;
        }
        writeln!(f)?;
        writeln!(f, "what to copy where (each machine reads $DSM_CERT_DIR, else ~/.config/dsm/certs, or --cert-dir):")?;
        if let Some(names) = &self.coordinator_names {
            writeln!(
                f,
                "  the coordinator's machine: {CA_CERT} {COORDINATOR_CERT} {COORDINATOR_KEY}"
            )?;
            writeln!(
                f,
                "      e.g. scp {dir}/{{{CA_CERT},{COORDINATOR_CERT},{COORDINATOR_KEY}}} COORDINATOR_HOST:.config/dsm/certs/"
            )?;
            writeln!(
                f,
                "      processes and `dsm status` must reach it by one of: {} (else re-issue with --san NAME --force)",
                names.join(", ")
            )?;
        }
        for (name, d) in &self.clients {
            writeln!(f, "  machine \"{name}\": everything in {}", d.display())?;
            writeln!(
                f,
                "      e.g. scp -r {}/. {name}:.config/dsm/certs/",
                d.display()
            )?;
        }
        if self.new_ca {
            writeln!(
                f,
                "  this machine: {CA_CERT} {CLIENT_CERT} {CLIENT_KEY} are already in place for `dsm run` and `dsm status`"
            )?;
        }
        writeln!(
            f,
            "  {CA_KEY}: nowhere; keep it here to issue more (dsm certs --dir {dir} --client NAME)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(dir: &Path) -> CertsRequest {
        CertsRequest {
            dir: dir.to_path_buf(),
            ..CertsRequest::default()
        }
    }

    #[test]
    fn create_then_extend_then_refuse_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let first = make_certs(&CertsRequest {
            sans: vec!["198.18.0.1".into()],
            ..req(&dir)
        })
        .unwrap();
        assert!(first.new_ca);
        assert_eq!(
            first.coordinator_names.as_deref(),
            Some(
                &[
                    "localhost".to_string(),
                    "127.0.0.1".into(),
                    "::1".into(),
                    "198.18.0.1".into()
                ][..]
            )
        );
        let ca = std::fs::read(dir.join(CA_CERT)).unwrap();

        // Adding a machine keeps the CA and touches nothing else.
        let coordinator = std::fs::read(dir.join(COORDINATOR_CERT)).unwrap();
        let second = make_certs(&CertsRequest {
            clients: vec!["node-1".into()],
            ..req(&dir)
        })
        .unwrap();
        assert!(!second.new_ca && second.coordinator_names.is_none());
        assert_eq!(std::fs::read(dir.join(CA_CERT)).unwrap(), ca);
        assert_eq!(
            std::fs::read(dir.join(COORDINATOR_CERT)).unwrap(),
            coordinator
        );
        let node = dir.join("clients/node-1");
        assert_eq!(std::fs::read(node.join(CA_CERT)).unwrap(), ca);
        crate::client_tls_config(&node).expect("the machine's set chains to the CA");

        // Re-issuing an existing file needs --force.
        for again in [
            CertsRequest {
                clients: vec!["node-1".into()],
                ..req(&dir)
            },
            CertsRequest {
                sans: vec!["coord.lab".into()],
                ..req(&dir)
            },
            CertsRequest {
                new_ca: true,
                ..req(&dir)
            },
        ] {
            let err = make_certs(&again).unwrap_err();
            assert!(matches!(err, Error::Exists { .. }), "{err}");
            assert!(err.to_string().contains("--force"), "{err}");
        }
        assert_eq!(
            std::fs::read(dir.join(CA_CERT)).unwrap(),
            ca,
            "a refusal writes nothing"
        );

        // Nothing asked, nothing missing: nothing written.
        let idle = make_certs(&req(&dir)).unwrap();
        assert!(idle.written.is_empty());
        assert!(idle.to_string().contains("nothing to do"), "{idle}");

        // --force re-issues the coordinator's certificate from the same CA.
        let third = make_certs(&CertsRequest {
            sans: vec!["coord.lab".into()],
            force: true,
            ..req(&dir)
        })
        .unwrap();
        assert!(!third.new_ca);
        assert_eq!(std::fs::read(dir.join(CA_CERT)).unwrap(), ca);
        assert_ne!(
            std::fs::read(dir.join(COORDINATOR_CERT)).unwrap(),
            coordinator
        );
        crate::server_tls_config(&dir).expect("still chains to the same CA");
    }

    #[test]
    fn a_copy_without_the_ca_key_cannot_issue() {
        let tmp = tempfile::tempdir().unwrap();
        make_certs(&CertsRequest {
            clients: vec!["n1".into()],
            ..req(tmp.path())
        })
        .unwrap();
        let copy = tmp.path().join("clients/n1");
        let err = make_certs(&req(&copy)).unwrap_err();
        assert!(matches!(err, Error::NoCaKey { .. }), "{err}");
        assert!(err.to_string().contains("ca.key"), "{err}");
    }

    #[test]
    fn bad_and_duplicate_names_write_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        for bad in [
            CertsRequest {
                clients: vec!["a/b".into()],
                ..req(&dir)
            },
            CertsRequest {
                clients: vec!["x".into(), "x".into()],
                ..req(&dir)
            },
            CertsRequest {
                sans: vec!["not a name".into()],
                ..req(&dir)
            },
        ] {
            assert!(make_certs(&bad).is_err());
            assert!(!dir.exists());
        }
    }
}
