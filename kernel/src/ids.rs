//! Node identities and onion keys.
//!
//! A node id is SHA-256 of the node's long-term Ed25519 identity public key,
//! written as 52 lowercase base32 characters. The X25519 onion key is what
//! circuit handshakes authenticate against.

use data_encoding::BASE32_NOPAD;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};

use crate::crypto::x25519::{DefaultX25519, X25519Key};
use crate::error::IdError;

/// A node's identity: SHA-256 of its Ed25519 identity public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The id of an Ed25519 identity public key.
    pub fn from_identity_key(ed25519_public: &[u8; 32]) -> NodeId {
        NodeId(Sha256::digest(ed25519_public).into())
    }

    /// Raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&BASE32_NOPAD.encode(&self.0).to_ascii_lowercase())
    }
}

impl std::fmt::Debug for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.to_string();
        write!(f, "NodeId({})", &s[..8])
    }
}

impl std::str::FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<NodeId, IdError> {
        if s.len() != 52 {
            return Err(IdError::BadEncoding);
        }
        let raw = BASE32_NOPAD
            .decode(s.to_ascii_uppercase().as_bytes())
            .map_err(|_| IdError::BadEncoding)?;
        let arr: [u8; 32] = raw.try_into().map_err(|_| IdError::BadEncoding)?;
        Ok(NodeId(arr))
    }
}

/// A node's X25519 onion key pair.
#[derive(Clone)]
pub struct OnionKeypair {
    /// The secret, ready for agreements with the kernel's X25519 backend.
    pub(crate) secret: DefaultX25519,
    /// The secret's bytes, for key files (some backends keep the key in a
    /// form they cannot export).
    secret_bytes: [u8; 32],
    /// The public half, published in descriptors.
    pub public: [u8; 32],
}

impl OnionKeypair {
    /// A fresh key pair.
    pub fn generate(rng: &mut dyn CryptoRngCore) -> OnionKeypair {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        OnionKeypair::from_secret(bytes)
    }

    /// A key pair from stored secret bytes.
    pub fn from_secret(bytes: [u8; 32]) -> OnionKeypair {
        let secret = DefaultX25519::from_bytes(bytes);
        let public = secret.public_key();
        OnionKeypair {
            secret,
            secret_bytes: bytes,
            public,
        }
    }

    /// The secret bytes, for storing in a key file.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret_bytes
    }
}

impl Drop for OnionKeypair {
    fn drop(&mut self) {
        // Best effort, as for the hop keys.
        self.secret_bytes = [0; 32];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_text_round_trip() {
        let id = NodeId::from_identity_key(&[9u8; 32]);
        let s = id.to_string();
        assert_eq!(s.len(), 52);
        assert_eq!(s.parse::<NodeId>(), Ok(id));
        assert!("short".parse::<NodeId>().is_err());
        assert!("1".repeat(52).parse::<NodeId>().is_err());
    }
}
