//! Loading PEM certificates and keys into rustls client and server
//! configurations (TLS 1.3 only, ALPN `dsm`, mutual TLS).

use std::path::Path;
use std::sync::Arc;

use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, InconsistentKeys, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::{Error, CA_CERT, CLIENT_CERT, CLIENT_KEY, COORDINATOR_CERT, COORDINATOR_KEY};

/// The ALPN protocol both sides offer and require.
pub const ALPN: &[u8] = b"dsm";

/// The crypto provider used everywhere: ring, chosen explicitly so that no
/// process-wide default provider needs to be installed.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(what: &'static str, path: &Path, reason: impl Into<String>) -> Error {
    Error::Invalid {
        what,
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads a whole file, telling a missing file apart from an unreadable one.
pub(crate) fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::Missing {
                what,
                path: path.to_path_buf(),
            }
        } else {
            Error::Unreadable {
                what,
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

fn pem_reason(err: &pem::Error) -> String {
    format!("broken PEM ({err})")
}

/// Loads every certificate in a PEM file; the file must hold at least one,
/// and each must parse as an X.509 certificate.
pub(crate) fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = read_file(path, what)?;
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(&bytes) {
        certs.push(item.map_err(|e| invalid(what, path, pem_reason(&e)))?);
    }
    if certs.is_empty() {
        return Err(invalid(
            what,
            path,
            "it holds no PEM certificate (no `-----BEGIN CERTIFICATE-----` block)",
        ));
    }
    for cert in &certs {
        ParsedCertificate::try_from(cert)
            .map_err(|e| invalid(what, path, format!("certificate cannot be parsed ({e})")))?;
    }
    Ok(certs)
}

/// Loads the first private key in a PEM file and checks that the crypto
/// provider can use it.
pub(crate) fn load_key(
    path: &Path,
    what: &'static str,
    provider: &CryptoProvider,
) -> Result<PrivateKeyDer<'static>, Error> {
    let bytes = read_file(path, what)?;
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => invalid(
            what,
            path,
            "it holds no PEM private key (no `-----BEGIN PRIVATE KEY-----` block)",
        ),
        other => invalid(what, path, pem_reason(&other)),
    })?;
    provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| invalid(what, path, format!("private key cannot be used ({e})")))?;
    Ok(key)
}

/// Loads a certificate chain and its private key and checks that they
/// belong together.
pub(crate) fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    what_cert: &'static str,
    what_key: &'static str,
    provider: &CryptoProvider,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let certs = load_certs(cert_path, what_cert)?;
    let key = load_key(key_path, what_key, provider)?;
    let signer = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| {
            invalid(
                what_key,
                key_path,
                format!("private key cannot be used ({e})"),
            )
        })?;
    match CertifiedKey::new(certs.clone(), signer).keys_match() {
        // Unknown: the key type cannot report its public key; let rustls decide later.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(Error::KeyMismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            })
        }
        Err(e) => {
            return Err(invalid(
                what_cert,
                cert_path,
                format!("certificate cannot be parsed ({e})"),
            ))
        }
    }
    Ok((certs, key))
}

/// Loads the CA certificate(s) of a PEM file as trust anchors.
pub(crate) fn load_roots(ca_path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_path, "CA certificate")? {
        roots.add(cert).map_err(|e| {
            invalid(
                "CA certificate",
                ca_path,
                format!("it cannot be used as a trust anchor ({e})"),
            )
        })?;
    }
    Ok(roots)
}

/// Which side a certificate is meant for, for [`check_chain`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Role {
    Server,
    Client,
}

/// Checks that `certs` (end entity first) chains to the trust anchors in
/// `roots`, so that the peer will accept it. Issuer and signature failures
/// become [`Error::NotSignedByCa`]; other certificate problems (expired,
/// wrong key usage, ...) become [`Error::Invalid`] for the certificate file.
pub(crate) fn check_chain(
    roots: &Arc<RootCertStore>,
    certs: &[CertificateDer<'static>],
    role: Role,
    what: &'static str,
    cert_path: &Path,
    ca_path: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<(), Error> {
    let Some((end_entity, intermediates)) = certs.split_first() else {
        return Err(invalid(what, cert_path, "it holds no certificate"));
    };
    let now = UnixTime::now();
    let result = match role {
        Role::Client => {
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()?
                .verify_client_cert(end_entity, intermediates, now)
                .map(drop)
        }
        Role::Server => {
            let parsed = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &parsed,
                roots,
                intermediates,
                now,
                provider.signature_verification_algorithms.all,
            )
        }
    };
    match result {
        Ok(()) => Ok(()),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => Err(Error::NotSignedByCa {
            cert: cert_path.to_path_buf(),
            ca: ca_path.to_path_buf(),
        }),
        Err(rustls::Error::InvalidCertificate(e)) => Err(invalid(
            what,
            cert_path,
            format!(
                "it does not verify against the CA in {} ({e})",
                ca_path.display()
            ),
        )),
        Err(e) => Err(Error::Tls(e)),
    }
}

/// rustls server configuration for the coordinator, from the dev set in `dir`.
///
/// Presents `coordinator.pem`/`coordinator.key`, requires a client
/// certificate that chains to `ca.pem`, offers ALPN `dsm` only and speaks
/// TLS 1.3 only. Also checks up front that the coordinator certificate chains
/// to `ca.pem` ([`Error::NotSignedByCa`] otherwise).
pub fn server_tls_config(dir: &Path) -> Result<ServerConfig, Error> {
    let provider = provider();
    let ca_path = dir.join(CA_CERT);
    let cert_path = dir.join(COORDINATOR_CERT);
    let roots = Arc::new(load_roots(&ca_path)?);
    let (certs, key) = load_pair(
        &cert_path,
        &dir.join(COORDINATOR_KEY),
        "coordinator certificate",
        "coordinator private key",
        &provider,
    )?;
    check_chain(
        &roots,
        &certs,
        Role::Server,
        "coordinator certificate",
        &cert_path,
        &ca_path,
        &provider,
    )?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// rustls client configuration from the dev set in `dir`: trusts only
/// `ca.pem`, presents `client.pem`/`client.key`, ALPN `dsm`, TLS 1.3 only.
///
/// Also checks up front that the client certificate chains to `ca.pem`
/// ([`Error::NotSignedByCa`] otherwise).
pub fn client_tls_config(dir: &Path) -> Result<ClientConfig, Error> {
    let provider = provider();
    let ca_path = dir.join(CA_CERT);
    let cert_path = dir.join(CLIENT_CERT);
    let roots = Arc::new(load_roots(&ca_path)?);
    let pair = load_pair(
        &cert_path,
        &dir.join(CLIENT_KEY),
        "client certificate",
        "client private key",
        &provider,
    )?;
    check_chain(
        &roots,
        &pair.0,
        Role::Client,
        "client certificate",
        &cert_path,
        &ca_path,
        &provider,
    )?;
    build_client(provider, roots, Some(pair))
}

/// rustls client configuration from explicit paths: trusts only the
/// certificates in `ca_cert`, presents `client` = `(cert, key)` if given (no
/// certificate at all if `None`), ALPN `dsm`, TLS 1.3 only.
///
/// Unlike [`client_tls_config`] this does not check that the client
/// certificate chains to `ca_cert` (the server may trust another CA).
pub fn client_tls_config_from(
    ca_cert: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<ClientConfig, Error> {
    let provider = provider();
    let roots = Arc::new(load_roots(ca_cert)?);
    let pair = match client {
        Some((cert, key)) => Some(load_pair(
            cert,
            key,
            "client certificate",
            "client private key",
            &provider,
        )?),
        None => None,
    };
    build_client(provider, roots, pair)
}

fn build_client(
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    pair: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, Error> {
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut config = match pair {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}
