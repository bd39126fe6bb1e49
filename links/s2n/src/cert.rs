//! TLS certificates bound to the node identity.
//!
//! QUIC always runs TLS 1.3, so instead of layering our Noise handshake on
//! top we make TLS itself prove the node id: each node's certificate is
//! self-signed with its Ed25519 identity key, and the node id is SHA-256 of
//! the key in the certificate. No certificate authority is involved; what
//! makes the binding hold is that TLS 1.3's CertificateVerify message is a
//! signature over the handshake transcript with that key, so a peer that
//! completes the handshake holds the identity key its certificate names.
//!
//! Both sides present certificates (the listener demands a client
//! certificate). The dialler's verifier also checks the id against the one
//! it dialled (carried in the TLS server name), and records the id the peer
//! claimed so that a mismatch can be reported as
//! [`relay_link::LinkError::WrongPeer`]. Each side learns the id its peer
//! proved from the verified certificate chain, via an s2n-quic event
//! subscriber (module `peer`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use relay_kernel::NodeId;
use relay_link::{Identity, LinkError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// PKCS#8 v1 (RFC 8410) encoding of an Ed25519 private key, up to the
/// 32-byte seed that follows it.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// SubjectPublicKeyInfo of an Ed25519 key (RFC 8410), up to the 32-byte
/// public key that follows it.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A node's certificate and the matching private key, ready for rustls.
pub(crate) struct NodeCert {
    pub(crate) cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl NodeCert {
    /// A self-signed certificate for `identity`'s Ed25519 key. The subject
    /// alternative name is the node id, for anyone reading the certificate;
    /// verification ignores names and looks only at the key.
    pub(crate) fn new(identity: &Identity) -> Result<NodeCert, LinkError> {
        let secret = identity.secret_bytes();
        let mut pkcs8 = Vec::with_capacity(ED25519_PKCS8_PREFIX.len() + secret.len());
        pkcs8.extend_from_slice(&ED25519_PKCS8_PREFIX);
        pkcs8.extend_from_slice(&secret);
        let key = PrivatePkcs8KeyDer::from(pkcs8);
        let pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&key, &rcgen::PKCS_ED25519)
            .map_err(|_| LinkError::Handshake("identity key rejected by rcgen"))?;
        let params = rcgen::CertificateParams::new(vec![identity.node_id().to_string()])
            .map_err(|_| LinkError::Handshake("bad certificate parameters"))?;
        let cert = params
            .self_signed(&pair)
            .map_err(|_| LinkError::Handshake("could not sign certificate"))?;
        Ok(NodeCert {
            cert: cert.der().clone(),
            key,
        })
    }

    /// The private key, in the form rustls takes.
    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// The Ed25519 public key a certificate carries, or an error for any other
/// kind of key or a certificate that does not parse.
pub(crate) fn identity_key(cert: &CertificateDer<'_>) -> Result<[u8; 32], rustls::Error> {
    let parsed = ParsedCertificate::try_from(cert)?;
    let spki = parsed.subject_public_key_info();
    let spki = spki.as_ref();
    let bad = || rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
    let key = spki
        .strip_prefix(&ED25519_SPKI_PREFIX[..])
        .ok_or_else(bad)?;
    key.try_into().map_err(|_| bad())
}

/// The node id a certificate names.
pub(crate) fn node_id(cert: &CertificateDer<'_>) -> Result<NodeId, rustls::Error> {
    Ok(NodeId::from_identity_key(&identity_key(cert)?))
}

/// Checks the TLS 1.3 CertificateVerify signature: Ed25519 only.
fn verify_signature(
    algs: &WebPkiSupportedAlgorithms,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::NoSignatureSchemesInCommon,
        ));
    }
    verify_tls13_signature(message, cert, dss, algs)
}

fn no_tls12() -> rustls::Error {
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered)
}

/// Ids that dials' peers claimed when they were not the id dialled, by
/// the dial's TLS server name (unique per dial), so that the dial can report
/// [`relay_link::LinkError::WrongPeer`].
pub(crate) type Mismatches = Arc<Mutex<HashMap<String, NodeId>>>;

/// The TLS server name of a dial: the expected node id, then a label
/// unique to the dial. (A node id is 52 base32 characters, one DNS label.)
pub(crate) fn dial_name(expected: NodeId, dial: u64) -> String {
    format!("{expected}.d{dial}")
}

/// The dialler's check of the listener: its certificate must carry an
/// Ed25519 key whose hash is the node id we dialled, which the dial puts in
/// the TLS server name (s2n-quic builds one TLS client config per
/// endpoint, so the expected id travels with each dial this way).
#[derive(Debug)]
pub(crate) struct ExpectPeer {
    /// Where a mismatch is recorded.
    pub(crate) mismatches: Mismatches,
    algs: WebPkiSupportedAlgorithms,
}

impl ExpectPeer {
    pub(crate) fn new(provider: &CryptoProvider) -> ExpectPeer {
        ExpectPeer {
            mismatches: Arc::default(),
            algs: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for ExpectPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ServerName::DnsName(name) = server_name else {
            return Err(rustls::Error::General("not a relay dial".into()));
        };
        let name = name.as_ref();
        let expected: NodeId = name
            .split('.')
            .next()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| rustls::Error::General("not a relay dial".into()))?;
        let got = node_id(end_entity)?;
        if got != expected {
            // Refused before the peer proves it holds the key: the id is
            // the one its certificate claims (it only informs the error).
            if let Ok(mut m) = self.mismatches.lock() {
                m.insert(name.to_string(), got);
            }
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        // The CertificateVerify signature, checked next, proves the key.
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(&self.algs, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The listener's check of a dialler: any node may connect, but it must
/// present an Ed25519 certificate and prove it holds the key; the link then
/// learns its id from the certificate.
#[derive(Debug)]
pub(crate) struct AnyNode {
    algs: WebPkiSupportedAlgorithms,
}

impl AnyNode {
    pub(crate) fn new(provider: &CryptoProvider) -> AnyNode {
        AnyNode {
            algs: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for AnyNode {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        identity_key(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(&self.algs, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn certificate_carries_the_identity_key() {
        let id = Identity::from_secret([7; 32]);
        let nc = NodeCert::new(&id).unwrap();
        assert_eq!(identity_key(&nc.cert).unwrap(), id.public());
        assert_eq!(node_id(&nc.cert).unwrap(), id.node_id());
        // The PKCS#8 we build is a key ring (hence rustls) accepts, and it
        // signs as the identity does.
        let pair = ::ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(
            nc.key.secret_pkcs8_der(),
        )
        .unwrap();
        use ::ring::signature::KeyPair;
        assert_eq!(pair.public_key().as_ref(), id.public());
    }

    #[test]
    fn garbage_certificates_are_rejected() {
        assert!(identity_key(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_err());
        assert!(identity_key(&CertificateDer::from(Vec::new())).is_err());
    }
}
