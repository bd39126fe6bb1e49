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
use relay_link::tls::{no_tls12, verify_signature};
pub(crate) use relay_link::tls::{node_id, AnyNode, NodeCert};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

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
