//! Generating dev TLS material with rcgen: a CA, a coordinator (server)
//! certificate and client certificates, written as PEM files.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;

use crate::load::{self, Role};
use crate::{
    Error, ALL_FILES, CA_CERT, CA_KEY, CLIENT_CERT, CLIENT_KEY, COORDINATOR_CERT, COORDINATOR_KEY,
};

/// Common name of the dev CA. [`issue_client`] relies on it to rebuild the
/// issuer from `ca.key`, so it must never change.
const CA_NAME: &str = "DSM development CA";
/// Common name of the coordinator certificate.
pub(crate) const COORDINATOR_NAME: &str = "dsm-coordinator";
/// Common name of the default client certificate.
pub(crate) const CLIENT_NAME: &str = "dsm-client";
/// SANs every coordinator certificate carries.
pub const DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "DSM");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Parameters of the dev CA; deterministic so that [`issue_client`] can
/// rebuild the issuer from `ca.key` alone.
pub(crate) fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

pub(crate) fn leaf_params(
    common_name: &str,
    purpose: ExtendedKeyUsagePurpose,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![purpose];
    params.use_authority_key_identifier_extension = true;
    params
}

fn parse_san(raw: &str) -> Result<SanType, Error> {
    let san = raw.trim();
    let bad = |reason: &str| Error::InvalidSan {
        san: raw.to_string(),
        reason: reason.to_string(),
    };
    if san.is_empty() {
        return Err(bad("it is empty"));
    }
    if let Ok(ip) = san.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    rustls_pki_types::DnsName::try_from(san)
        .map_err(|_| bad("it is neither an IP address nor a valid DNS name"))?;
    let ia5 = san
        .to_string()
        .try_into()
        .map_err(|_| bad("it is not ASCII"))?;
    Ok(SanType::DnsName(ia5))
}

pub(crate) fn coordinator_sans(extra: &[String]) -> Result<Vec<SanType>, Error> {
    let mut sans: Vec<SanType> = Vec::new();
    let all = DEFAULT_SANS
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str));
    for raw in all {
        let san = parse_san(raw)?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    let bad = |reason: &str| Error::InvalidName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > 64 {
        return Err(bad("it is longer than 64 characters"));
    }
    if name.starts_with('.') {
        return Err(bad("it starts with '.'"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(bad(
            "it contains characters other than letters, digits, '-', '_' and '.'",
        ));
    }
    Ok(())
}

pub(crate) fn create_dir(dir: &Path) -> Result<(), Error> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `contents` to `path` through a temporary file in the same
/// directory and a rename, so that readers never see a half-written file.
/// Private keys get mode 0600 (on Unix) before any byte is written.
pub(crate) fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), Error> {
    let write_err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(if private { 0o600 } else { 0o644 });
        }
        let mut file = options.open(&tmp)?;
        #[cfg(unix)]
        {
            // The mode above only applies to newly created files.
            use std::os::unix::fs::PermissionsExt;
            let mode = if private { 0o600 } else { 0o644 };
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

/// Writes a certificate and its key as `<name>.pem` / `<name>.key` in `out_dir`.
fn write_pair(
    out_dir: &Path,
    name: &str,
    cert: &Certificate,
    key: &KeyPair,
) -> Result<(PathBuf, PathBuf), Error> {
    create_dir(out_dir)?;
    let cert_path = out_dir.join(format!("{name}.pem"));
    let key_path = out_dir.join(format!("{name}.key"));
    write_file(&cert_path, &cert.pem(), false)?;
    write_file(&key_path, &key.serialize_pem(), true)?;
    Ok((cert_path, key_path))
}

/// Creates a dev CA, a coordinator certificate and a client certificate
/// (CN `dsm-client`), both signed by the CA, and writes them as PEM into
/// `dir` (created if missing, mode 0700 on Unix; private keys mode 0600).
///
/// The coordinator certificate's SANs are `localhost`, `127.0.0.1`, `::1`
/// and `extra_sans`; an extra SAN that parses as an IP address becomes an IP
/// SAN, anything else must be a valid DNS name. Existing files are
/// overwritten. Returns the six files written, in [`ALL_FILES`] order.
pub fn generate(dir: &Path, extra_sans: &[String]) -> Result<Vec<PathBuf>, Error> {
    // Validate input before touching the file system.
    let sans = coordinator_sans(extra_sans)?;

    let ca_key = KeyPair::generate()?;
    let ca = ca_params().self_signed(&ca_key)?;

    let coord_key = KeyPair::generate()?;
    let mut coord_params = leaf_params(COORDINATOR_NAME, ExtendedKeyUsagePurpose::ServerAuth);
    coord_params.subject_alt_names = sans;
    let coord = coord_params.signed_by(&coord_key, &ca, &ca_key)?;

    let client_key = KeyPair::generate()?;
    let client = leaf_params(CLIENT_NAME, ExtendedKeyUsagePurpose::ClientAuth).signed_by(
        &client_key,
        &ca,
        &ca_key,
    )?;

    create_dir(dir)?;
    let contents = [
        (CA_CERT, ca.pem(), false),
        (CA_KEY, ca_key.serialize_pem(), true),
        (COORDINATOR_CERT, coord.pem(), false),
        (COORDINATOR_KEY, coord_key.serialize_pem(), true),
        (CLIENT_CERT, client.pem(), false),
        (CLIENT_KEY, client_key.serialize_pem(), true),
    ];
    let mut written = Vec::with_capacity(contents.len());
    for (name, text, private) in contents {
        let path = dir.join(name);
        write_file(&path, &text, private)?;
        written.push(path);
    }
    tracing::info!(dir = %dir.display(), "generated dev TLS certificates");
    Ok(written)
}

/// Makes sure a full dev set exists in `dir`.
///
/// If none of the six files exist, calls [`generate`] and returns
/// `Ok(true)`. If all six exist, returns `Ok(false)` without touching them.
/// If only some exist, returns [`Error::Incomplete`] naming the missing ones
/// (rather than overwriting the others).
pub fn ensure(dir: &Path, extra_sans: &[String]) -> Result<bool, Error> {
    let missing: Vec<PathBuf> = ALL_FILES
        .iter()
        .map(|name| dir.join(name))
        .filter(|path| !path.exists())
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    if missing.len() < ALL_FILES.len() {
        return Err(Error::Incomplete {
            dir: dir.to_path_buf(),
            missing,
        });
    }
    generate(dir, extra_sans)?;
    Ok(true)
}

/// Issues another client certificate (CN `name`) signed by the CA in `dir`
/// (needs `ca.pem` and `ca.key`), and writes `<name>.pem` / `<name>.key`
/// into `out_dir` (created if missing; key mode 0600).
/// Returns `(cert_path, key_path)`.
///
/// `name` may hold only ASCII letters, digits, `-`, `_` and `.`. The CA must
/// have been created by [`generate`]; otherwise [`Error::ForeignCa`].
pub fn issue_client(dir: &Path, name: &str, out_dir: &Path) -> Result<(PathBuf, PathBuf), Error> {
    check_name(name)?;
    let issuer = Issuer::load(dir)?;
    let key = KeyPair::generate()?;
    let cert = leaf_params(name, ExtendedKeyUsagePurpose::ClientAuth).signed_by(
        &key,
        &issuer.cert,
        &issuer.key,
    )?;
    issuer.check(&cert, Role::Client, &out_dir.join(format!("{name}.pem")))?;
    write_pair(out_dir, name, &cert, &key)
}

/// The CA of a directory, rebuilt from `ca.key` so that it can sign more certificates.
pub(crate) struct Issuer {
    pub(crate) cert: Certificate,
    pub(crate) key: KeyPair,
    /// `ca.pem` as it is on disk (the rebuilt `cert` has the same subject and key but another
    /// signature, so copies handed to other machines must be this text).
    pub(crate) pem: String,
    roots: Arc<rustls::RootCertStore>,
    ca_path: PathBuf,
}

impl Issuer {
    /// Loads `ca.pem` and `ca.key` from `dir` and rebuilds the issuer.
    pub(crate) fn load(dir: &Path) -> Result<Issuer, Error> {
        let provider = load::provider();
        let ca_path = dir.join(CA_CERT);
        let ca_key_path = dir.join(CA_KEY);
        let (ca_certs, _) = load::load_pair(
            &ca_path,
            &ca_key_path,
            "CA certificate",
            "CA private key",
            &provider,
        )?;
        let ca_key_pem = String::from_utf8(load::read_file(&ca_key_path, "CA private key")?)
            .map_err(|_| invalid_ca_key(&ca_key_path, "it is not UTF-8 text"))?;
        let key = KeyPair::from_pem(&ca_key_pem)
            .map_err(|e| invalid_ca_key(&ca_key_path, &format!("rcgen cannot use it ({e})")))?;
        // Rebuild the issuer: same subject and key as ca.pem, which is all a
        // signature and the authority key identifier depend on.
        let cert = ca_params().self_signed(&key)?;
        let pem =
            String::from_utf8(load::read_file(&ca_path, "CA certificate")?).map_err(|_| {
                Error::Invalid {
                    what: "CA certificate",
                    path: ca_path.clone(),
                    reason: "it is not UTF-8 text".into(),
                }
            })?;
        let mut roots = rustls::RootCertStore::empty();
        for c in ca_certs {
            roots.add(c)?;
        }
        Ok(Issuer {
            cert,
            key,
            pem,
            roots: Arc::new(roots),
            ca_path,
        })
    }

    /// A new CA: its certificate and key, made now.
    pub(crate) fn create() -> Result<Issuer, Error> {
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(cert.der().to_vec()))?;
        Ok(Issuer {
            pem: cert.pem(),
            cert,
            key,
            roots: Arc::new(roots),
            ca_path: PathBuf::from(CA_CERT),
        })
    }

    /// Makes sure `issued` really chains to the CA on disk before anyone writes it.
    pub(crate) fn check(&self, issued: &Certificate, role: Role, path: &Path) -> Result<(), Error> {
        let issued = [CertificateDer::from(issued.der().to_vec())];
        let what = match role {
            Role::Client => "client certificate",
            Role::Server => "coordinator certificate",
        };
        match load::check_chain(
            &self.roots,
            &issued,
            role,
            what,
            path,
            &self.ca_path,
            &load::provider(),
        ) {
            Ok(()) => Ok(()),
            Err(Error::NotSignedByCa { .. }) => Err(Error::ForeignCa {
                ca: self.ca_path.clone(),
            }),
            Err(e) => Err(e),
        }
    }
}

fn invalid_ca_key(path: &Path, reason: &str) -> Error {
    Error::Invalid {
        what: "CA private key",
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Writes a self-signed client certificate (CN `name`, not signed by any CA)
/// as `<name>.pem` / `<name>.key` into `out_dir`; for tests that check that
/// such a certificate is refused. Returns `(cert_path, key_path)`.
pub fn self_signed_client(name: &str, out_dir: &Path) -> Result<(PathBuf, PathBuf), Error> {
    check_name(name)?;
    let key = KeyPair::generate()?;
    let cert = leaf_params(name, ExtendedKeyUsagePurpose::ClientAuth).self_signed(&key)?;
    write_pair(out_dir, name, &cert, &key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_are_typed_and_deduplicated() {
        let sans = coordinator_sans(&[
            "10.0.0.7".into(),
            "fe80::1".into(),
            "coord.example".into(),
            "localhost".into(),
            " 127.0.0.1 ".into(),
        ])
        .unwrap();
        assert_eq!(sans.len(), 6);
        assert!(sans.contains(&SanType::IpAddress("10.0.0.7".parse().unwrap())));
        assert!(sans.contains(&SanType::IpAddress("fe80::1".parse().unwrap())));
        assert!(sans.contains(&SanType::DnsName(
            "coord.example".to_string().try_into().unwrap()
        )));
    }

    #[test]
    fn bad_sans_and_names_are_rejected() {
        for bad in ["", "  ", "has space", "bad/name", "é.example"] {
            assert!(
                matches!(
                    coordinator_sans(&[bad.into()]),
                    Err(Error::InvalidSan { .. })
                ),
                "{bad:?}"
            );
        }
        for bad in ["", ".hidden", "a/b", "../x", "a b", &"x".repeat(65)] {
            assert!(
                matches!(check_name(bad), Err(Error::InvalidName { .. })),
                "{bad:?}"
            );
        }
        check_name("node-1.dsm_test").unwrap();
    }
}
