//! TLS certificates bound to the node identity, shared by the QUIC link
//! kinds (quinn and s2n-quic).
//!
//! QUIC always runs TLS 1.3, so instead of layering our Noise handshake on
//! top, TLS itself proves the node id: each node's certificate is
//! self-signed with its Ed25519 identity key, and the node id is SHA-256 of
//! the key in the certificate. What makes the binding hold is that TLS 1.3's
//! CertificateVerify is a signature over the transcript with that key. Each
//! link kind wires these pieces into its own rustls verifiers.

use std::sync::{Arc, Mutex};

use relay_kernel::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::crypto::{verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::DistinguishedName;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use crate::{Identity, LinkError};

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
pub struct NodeCert {
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl NodeCert {
    /// A self-signed certificate for `identity`'s Ed25519 key. The subject
    /// alternative name is the node id, for anyone reading the certificate;
    /// verification ignores names and looks only at the key.
    pub fn new(identity: &Identity) -> Result<NodeCert, LinkError> {
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
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// The Ed25519 public key a certificate carries, or an error for any other
/// kind of key or a certificate that does not parse.
pub fn identity_key(cert: &CertificateDer<'_>) -> Result<[u8; 32], rustls::Error> {
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
pub fn node_id(cert: &CertificateDer<'_>) -> Result<NodeId, rustls::Error> {
    Ok(NodeId::from_identity_key(&identity_key(cert)?))
}

/// Checks the TLS 1.3 CertificateVerify signature: Ed25519 only.
pub fn verify_signature(
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

/// The error for a peer offering TLS 1.2 (we require 1.3).
pub fn no_tls12() -> rustls::Error {
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered)
}

/// Where a dial's verifier records the id the peer proved.
pub type Proved = Arc<Mutex<Option<NodeId>>>;

/// The dialler's check of the listener: its certificate must carry an
/// Ed25519 key whose hash is the node id we dialled. The id the peer
/// proved is recorded so that a mismatch can name it (used by the quinn
/// link and by netsim's QUIC links; s2n-quic's verifier differs, as its
/// client config is per endpoint).
#[derive(Debug)]
pub struct ExpectPeer {
    expected: NodeId,
    /// The id the peer proved (set once its signature checks out).
    pub proved: Proved,
    algs: WebPkiSupportedAlgorithms,
}

impl ExpectPeer {
    pub fn new(expected: NodeId, provider: &CryptoProvider) -> ExpectPeer {
        ExpectPeer {
            expected,
            proved: Arc::default(),
            algs: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for ExpectPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Only the key matters, and whether it is the one we dialled is
        // decided once the peer has proved it holds the key (below), so
        // that a mismatch names an id the peer really has.
        identity_key(end_entity)?;
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
        let valid = verify_signature(&self.algs, message, cert, dss)?;
        let got = node_id(cert)?;
        if let Ok(mut p) = self.proved.lock() {
            *p = Some(got);
        }
        if got != self.expected {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(valid)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The listener's check of a dialler: any node may connect, but it must
/// present an Ed25519 certificate and prove it holds the key; the link then
/// learns its id from the certificate.
#[derive(Debug)]
pub struct AnyNode {
    algs: WebPkiSupportedAlgorithms,
}

impl AnyNode {
    pub fn new(provider: &CryptoProvider) -> AnyNode {
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
        let pair =
            ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(nc.key.secret_pkcs8_der())
                .unwrap();
        use ring::signature::KeyPair;
        assert_eq!(pair.public_key().as_ref(), id.public());
    }

    #[test]
    fn garbage_certificates_are_rejected() {
        assert!(identity_key(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_err());
        assert!(identity_key(&CertificateDer::from(Vec::new())).is_err());
    }
}
