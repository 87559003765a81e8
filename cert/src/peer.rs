//! Process-to-process QUIC connections (for direct page transfers between the members of a
//! session), authenticated by identities the coordinator vouches for.
//!
//! Each process makes an ephemeral identity when it attaches ([`PeerIdentity::generate`]: a
//! fresh ECDSA P-256 key and a self-signed certificate, kept in memory only) and tells the
//! coordinator its certificate's SHA-256 [`Fingerprint`] over their mutually authenticated
//! connection; the coordinator hands every member the session's fingerprints by rank. A peer
//! connection then authenticates both ends by fingerprint, as WebRTC does with DTLS
//! fingerprints exchanged over its signalling channel:
//! - the client ([`peer_client_config`]) accepts exactly the server it meant to reach;
//! - the server ([`peer_server_config`]) accepts exactly the clients in its [`PeerSet`] (the
//!   session's members, updated as they come and go) and learns which one connected
//!   ([`peer_fingerprint`], then [`PeerSet::get`]).
//!
//! Both ends still prove possession of their key in the TLS 1.3 handshake: the verifiers check
//! its signatures with the crypto provider's algorithms, only the certificate *chain* check is
//! replaced by the pin. Nothing here trusts the dev CA: a CA-signed certificate that is not
//! pinned is refused. The ALPN protocol is [`PEER_ALPN`], so a peer connection can never be
//! taken for a coordinator connection or the other way round.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::load::provider;
use crate::{Error, Transport};

/// The ALPN protocol of peer connections.
pub const PEER_ALPN: &[u8] = b"dsm-peer";

/// The server name a peer client connects with. It is not checked (the pin is): it only has to
/// be a valid name.
pub const PEER_SERVER_NAME: &str = "dsm-peer";

/// The SHA-256 digest of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of `cert`.
    pub fn of(cert: &CertificateDer<'_>) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Fingerprint(bytes)
    }
}

impl fmt::Display for Fingerprint {
    /// The first 8 bytes in hex, enough to tell members apart in messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// An ephemeral peer identity: a key pair and a self-signed certificate for it.
pub struct PeerIdentity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    fingerprint: Fingerprint,
}

impl PeerIdentity {
    /// A fresh identity (ECDSA P-256; about a millisecond).
    pub fn generate() -> Result<PeerIdentity, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "dsm peer");
        params.distinguished_name = name;
        let cert = params.self_signed(&key)?;
        let cert = cert.der().clone();
        let fingerprint = Fingerprint::of(&cert);
        Ok(PeerIdentity { cert, key: PrivatePkcs8KeyDer::from(key.serialize_der()), fingerprint })
    }

    /// What the coordinator passes on to the other members.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    fn chain_and_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (vec![self.cert.clone()], PrivateKeyDer::Pkcs8(self.key.clone_key()))
    }
}

impl fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerIdentity").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

/// The fingerprints a peer server accepts, each with the caller's id for it (a rank). Cloning
/// shares the set: a server configuration made from it sees later changes.
#[derive(Clone, Default)]
pub struct PeerSet(Arc<RwLock<HashMap<Fingerprint, u32>>>);

impl PeerSet {
    /// Accepts `fingerprint` from now on, as `id`.
    pub fn insert(&self, fingerprint: Fingerprint, id: u32) {
        self.0.write().unwrap_or_else(PoisonError::into_inner).insert(fingerprint, id);
    }

    /// Refuses `fingerprint` from now on (connections already made are the caller's to close).
    pub fn remove(&self, fingerprint: &Fingerprint) {
        self.0.write().unwrap_or_else(PoisonError::into_inner).remove(fingerprint);
    }

    /// The id `fingerprint` was accepted as, if it is accepted.
    pub fn get(&self, fingerprint: &Fingerprint) -> Option<u32> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).get(fingerprint).copied()
    }
}

impl fmt::Debug for PeerSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self.0.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_map().entries(set.iter()).finish()
    }
}

/// The error a refused certificate gets (the other side sees the TLS alert "access denied").
fn not_pinned() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

/// Checks the shape every peer certificate has (one self-signed certificate, well-formed) and
/// returns its fingerprint.
fn pin_of(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Result<Fingerprint, rustls::Error> {
    if !intermediates.is_empty() {
        return Err(not_pinned());
    }
    // Parsing rejects malformed certificates before their signatures are checked against them.
    rustls::server::ParsedCertificate::try_from(end_entity)?;
    Ok(Fingerprint::of(end_entity))
}

/// The handshake-signature checks of both verifiers (rustls's own, with the provider's
/// algorithms): only the certificate check differs between them.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

/// The client side's check: exactly one server certificate is acceptable.
#[derive(Debug)]
struct PinnedServer {
    expected: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if pin_of(end_entity, intermediates)? == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(not_pinned())
        }
    }

    handshake_signatures!();
}

/// The server side's check: a client certificate is mandatory and must be in the set.
#[derive(Debug)]
struct PinnedClients {
    accepted: PeerSet,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.accepted.get(&pin_of(end_entity, intermediates)?) {
            Some(_) => Ok(ClientCertVerified::assertion()),
            None => Err(not_pinned()),
        }
    }

    handshake_signatures!();
}

/// quinn server configuration for accepting peer connections: presents `identity`, requires a
/// client certificate whose fingerprint is in `accepted`, TLS 1.3 and ALPN [`PEER_ALPN`] only,
/// tuned for peers at `peers` ([`Transport::to_quinn_for`]).
pub fn peer_server_config(
    identity: &PeerIdentity,
    accepted: PeerSet,
    transport: &Transport,
    peers: std::net::IpAddr,
) -> Result<quinn::ServerConfig, Error> {
    let provider = provider();
    let verifier = PinnedClients { accepted, algorithms: provider.signature_verification_algorithms };
    let (chain, key) = identity.chain_and_key();
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
    crate::transport::quic_server_config_from(tls, transport, peers)
}

/// quinn client configuration for one peer connection: presents `identity`, accepts only the
/// server whose certificate has fingerprint `expected`, TLS 1.3 and ALPN [`PEER_ALPN`] only,
/// tuned for the peer at `peer`. Connect with the name [`PEER_SERVER_NAME`].
pub fn peer_client_config(
    identity: &PeerIdentity,
    expected: Fingerprint,
    transport: &Transport,
    peer: std::net::IpAddr,
) -> Result<quinn::ClientConfig, Error> {
    let provider = provider();
    let verifier = PinnedServer { expected, algorithms: provider.signature_verification_algorithms };
    let (chain, key) = identity.chain_and_key();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)?;
    tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
    crate::quic_client_config(tls, transport, peer)
}

/// The fingerprint of the certificate the other end of `conn` presented (on a peer
/// connection: the client's on the server side, the server's on the client side).
pub fn peer_fingerprint(conn: &quinn::Connection) -> Option<Fingerprint> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().map(Fingerprint::of)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_fresh_and_fingerprints_are_their_certificates_digests() {
        let a = PeerIdentity::generate().unwrap();
        let b = PeerIdentity::generate().unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), Fingerprint::of(&a.cert));
        // SHA-256 of the empty input, as a known answer.
        let empty = Fingerprint::of(&CertificateDer::from(Vec::new()));
        assert_eq!(empty.to_string(), "e3b0c44298fc1c14");
    }

    #[test]
    fn a_peer_set_is_shared_by_its_clones() {
        let set = PeerSet::default();
        let view = set.clone();
        let fp = Fingerprint([7; 32]);
        assert_eq!(view.get(&fp), None);
        set.insert(fp, 3);
        assert_eq!(view.get(&fp), Some(3));
        set.remove(&fp);
        assert_eq!(view.get(&fp), None);
    }

    #[test]
    fn only_single_well_formed_certificates_are_pinned() {
        let a = PeerIdentity::generate().unwrap();
        assert_eq!(pin_of(&a.cert, &[]).unwrap(), a.fingerprint());
        assert!(pin_of(&a.cert, std::slice::from_ref(&a.cert)).is_err(), "a chain is not a peer certificate");
        assert!(pin_of(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]), &[]).is_err());
    }
}
