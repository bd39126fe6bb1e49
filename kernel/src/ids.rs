//! Node identities and onion keys.
//!
//! A node id is SHA-256 of the node's long-term Ed25519 identity public key,
//! written as 52 lowercase base32 characters. The X25519 onion key is what
//! circuit handshakes authenticate against.

use data_encoding::BASE32_NOPAD;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

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
    pub(crate) secret: StaticSecret,
    /// The public half, published in descriptors.
    pub public: [u8; 32],
}

impl OnionKeypair {
    /// A fresh key pair.
    pub fn generate(rng: &mut dyn CryptoRngCore) -> OnionKeypair {
        OnionKeypair::from_secret(StaticSecret::random_from_rng(rng).to_bytes())
    }

    /// A key pair from stored secret bytes.
    pub fn from_secret(bytes: [u8; 32]) -> OnionKeypair {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret).to_bytes();
        OnionKeypair { secret, public }
    }

    /// The secret bytes, for storing in a key file.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
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
