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

pub(crate) use relay_link::tls::{node_id, AnyNode, ExpectPeer, NodeCert, Proved};
