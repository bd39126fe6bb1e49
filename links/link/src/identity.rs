//! A node's long-term identity on links: an Ed25519 key whose SHA-256 is
//! the node id. Links run a Noise handshake with a fresh static X25519 key per
//! process; the identity key signs that static key (a one-line certificate),
//! so a peer that completes the handshake proves both the Noise key and the
//! node id.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand_core::CryptoRngCore;
use relay_kernel::NodeId;

use crate::error::LinkError;

const CERT_CONTEXT: &[u8] = b"relaynet-link-static-key-v1";

/// Bytes of a certificate: Ed25519 public key, signature.
pub const CERT_LEN: usize = 32 + 64;

/// A node's identity key.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl Identity {
    /// A fresh identity.
    pub fn generate(rng: &mut dyn CryptoRngCore) -> Identity {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        Identity::from_secret(secret)
    }

    /// An identity from its stored 32-byte secret.
    pub fn from_secret(secret: [u8; 32]) -> Identity {
        Identity {
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// The secret, for the key file.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The Ed25519 public key.
    pub fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The node id (SHA-256 of the public key).
    pub fn node_id(&self) -> NodeId {
        NodeId::from_identity_key(&self.public())
    }

    /// Signs `msg` under `context` (domain separation: a signature made for
    /// one purpose never verifies for another), e.g. a node descriptor.
    pub fn sign(&self, context: &[u8], msg: &[u8]) -> [u8; 64] {
        self.key.sign(&[context, msg].concat()).to_bytes()
    }

    /// Certifies a link static key: public key || signature.
    pub fn certify(&self, static_key: &[u8]) -> [u8; CERT_LEN] {
        let sig = self.key.sign(&[CERT_CONTEXT, static_key].concat());
        let mut out = [0u8; CERT_LEN];
        out[..32].copy_from_slice(&self.public());
        out[32..].copy_from_slice(&sig.to_bytes());
        out
    }
}

/// Checks a certificate for `static_key`; returns the node id it names.
pub fn verify_cert(cert: &[u8], static_key: &[u8]) -> Result<NodeId, LinkError> {
    if cert.len() != CERT_LEN {
        return Err(LinkError::Handshake("bad certificate length"));
    }
    let mut public = [0u8; 32];
    public.copy_from_slice(&cert[..32]);
    let key =
        VerifyingKey::from_bytes(&public).map_err(|_| LinkError::Handshake("bad identity key"))?;
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&cert[32..]);
    key.verify(
        &[CERT_CONTEXT, static_key].concat(),
        &Signature::from_bytes(&sig),
    )
    .map_err(|_| LinkError::Handshake("bad certificate signature"))?;
    Ok(NodeId::from_identity_key(&public))
}

/// Checks a signature made by [`Identity::sign`] and returns the signer's
/// node id.
pub fn verify_signed(
    public: &[u8; 32],
    context: &[u8],
    msg: &[u8],
    signature: &[u8; 64],
) -> Result<NodeId, LinkError> {
    let key =
        VerifyingKey::from_bytes(public).map_err(|_| LinkError::Handshake("bad identity key"))?;
    key.verify_strict(&[context, msg].concat(), &Signature::from_bytes(signature))
        .map_err(|_| LinkError::Handshake("bad signature"))?;
    Ok(NodeId::from_identity_key(public))
}
