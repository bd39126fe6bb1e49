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
//! it dialled, and records the id the peer proved so that a mismatch can be
//! reported as [`relay_link::LinkError::WrongPeer`].

use std::sync::{Arc, Mutex};

use relay_kernel::NodeId;
use relay_link::tls::{identity_key, no_tls12, verify_signature};
pub(crate) use relay_link::tls::{node_id, AnyNode, NodeCert};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// Where a dial's verifier records the id the peer proved.
pub(crate) type Proved = Arc<Mutex<Option<NodeId>>>;

/// The dialler's check of the listener: its certificate must carry an
/// Ed25519 key whose hash is the node id we dialled.
#[derive(Debug)]
pub(crate) struct ExpectPeer {
    expected: NodeId,
    /// The id the peer proved (set once its signature checks out).
    pub(crate) proved: Proved,
    algs: WebPkiSupportedAlgorithms,
}

impl ExpectPeer {
    pub(crate) fn new(expected: NodeId, provider: &CryptoProvider) -> ExpectPeer {
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
