//! The circuit handshake: one-way authenticated X25519 in the style of Tor's
//! ntor (tor-spec 5.1.4), with HMAC-SHA256 and HKDF-SHA256.
//!
//! The client knows the relay's node id `ID` and onion key `B`; it sends
//! `ID | B | X`. Both sides compute
//! `secret = X^y | X^b | ID | B | X | Y | PROTOID` (as `Y^x | B^x` on the
//! client), `verify = HMAC(t_verify, secret)`,
//! `AUTH = HMAC(t_mac, verify | ID | B | Y | X | PROTOID | "Server")`, and the
//! hop keys `HKDF(salt = t_key, ikm = secret, info = m_expand, 64 bytes)`.
//! Only the holder of `b` can produce AUTH, so a wrong onion key fails the
//! handshake; the keys depend on the ephemeral `x` and `y`, so they are
//! forward secret once both are erased.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::CryptoRngCore;
use sha2::Sha256;

use crate::crypto::onion::{HopKeys, KEY_MATERIAL_LEN};
use crate::crypto::x25519::{DefaultX25519, X25519Key};
use crate::error::HandshakeError;
use crate::ids::{NodeId, OnionKeypair};

/// Protocol id mixed into every derivation.
pub const PROTOID: &[u8] = b"relaynet-ntor-x25519-sha256-1";
const T_MAC: &[u8] = b"relaynet-ntor-x25519-sha256-1:mac";
const T_KEY: &[u8] = b"relaynet-ntor-x25519-sha256-1:key_extract";
const T_VERIFY: &[u8] = b"relaynet-ntor-x25519-sha256-1:verify";
const M_EXPAND: &[u8] = b"relaynet-ntor-x25519-sha256-1:key_expand";

/// Client message: node id, onion key, ephemeral public key.
pub const CLIENT_MSG_LEN: usize = 96;
/// Server message: ephemeral public key, AUTH.
pub const SERVER_MSG_LEN: usize = 64;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so new_from_slice cannot fail here;
    // fall back to an all-zero output that can never verify.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut m) => {
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().into()
        }
        Err(_) => [0u8; 32],
    }
}

/// What both sides compute from the four DH inputs.
fn derive(
    xy: &[u8; 32],
    xb: &[u8; 32],
    id: &NodeId,
    b: &[u8; 32],
    x: &[u8; 32],
    y: &[u8; 32],
) -> Result<([u8; 32], [u8; KEY_MATERIAL_LEN]), HandshakeError> {
    let mut secret = [0u8; 32 * 6 + PROTOID.len()];
    let parts: [&[u8]; 7] = [xy, xb, &id.0, b, x, y, PROTOID];
    let mut at = 0;
    for p in parts {
        secret[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    let verify = hmac(T_VERIFY, &[&secret]);
    let auth = hmac(T_MAC, &[&verify, &id.0, b, y, x, PROTOID, b"Server"]);
    let mut okm = [0u8; KEY_MATERIAL_LEN];
    Hkdf::<Sha256>::new(Some(T_KEY), &secret)
        .expand(M_EXPAND, &mut okm)
        .map_err(|_| HandshakeError::Kdf)?;
    secret.fill(0);
    Ok((auth, okm))
}

/// A client's half-done handshake with one relay, with X25519 backend `K`
/// (the kernel's [`DefaultX25519`] unless a benchmark or test picks one).
pub struct ClientHandshake<K: X25519Key = DefaultX25519> {
    x: K,
    big_x: [u8; 32],
    id: NodeId,
    b: [u8; 32],
}

impl ClientHandshake {
    /// Starts a handshake with relay `id` whose onion key is `onion_key`.
    /// Returns the state and the 96-byte message to send.
    pub fn start(
        rng: &mut dyn CryptoRngCore,
        id: NodeId,
        onion_key: [u8; 32],
    ) -> (ClientHandshake, [u8; CLIENT_MSG_LEN]) {
        ClientHandshake::start_using(rng, id, onion_key)
    }

    /// [`Self::start`] with a given ephemeral secret (for test vectors).
    pub fn with_ephemeral(
        x: [u8; 32],
        id: NodeId,
        onion_key: [u8; 32],
    ) -> (ClientHandshake, [u8; CLIENT_MSG_LEN]) {
        ClientHandshake::with_ephemeral_using(x, id, onion_key)
    }
}

impl<K: X25519Key> ClientHandshake<K> {
    /// [`ClientHandshake::start`] with X25519 backend `K`.
    pub fn start_using(
        rng: &mut dyn CryptoRngCore,
        id: NodeId,
        onion_key: [u8; 32],
    ) -> (ClientHandshake<K>, [u8; CLIENT_MSG_LEN]) {
        Self::with_ephemeral_using(random_secret(rng), id, onion_key)
    }

    /// [`ClientHandshake::with_ephemeral`] with X25519 backend `K`.
    pub fn with_ephemeral_using(
        x: [u8; 32],
        id: NodeId,
        onion_key: [u8; 32],
    ) -> (ClientHandshake<K>, [u8; CLIENT_MSG_LEN]) {
        let x = K::from_bytes(x);
        let big_x = x.public_key();
        let mut msg = [0u8; CLIENT_MSG_LEN];
        msg[..32].copy_from_slice(&id.0);
        msg[32..64].copy_from_slice(&onion_key);
        msg[64..].copy_from_slice(&big_x);
        (
            ClientHandshake {
                x,
                big_x,
                id,
                b: onion_key,
            },
            msg,
        )
    }

    /// Completes the handshake with the relay's reply.
    pub fn finish(self, reply: &[u8]) -> Result<HopKeys, HandshakeError> {
        if reply.len() < SERVER_MSG_LEN {
            return Err(HandshakeError::Malformed);
        }
        let mut y = [0u8; 32];
        y.copy_from_slice(&reply[..32]);
        let xy = self.x.agree(&y).ok_or(HandshakeError::BadShare)?;
        let xb = self.x.agree(&self.b).ok_or(HandshakeError::BadShare)?;
        let (auth, okm) = derive(&xy, &xb, &self.id, &self.b, &self.big_x, &y)?;
        // Constant-time comparison of AUTH.
        let diff = auth
            .iter()
            .zip(&reply[32..SERVER_MSG_LEN])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(HandshakeError::AuthFailed);
        }
        Ok(HopKeys::from_material(&okm))
    }
}

/// 32 random bytes for an ephemeral secret (the same draw from the RNG as
/// x25519-dalek's `random_from_rng`, so seeded runs did not change).
fn random_secret(rng: &mut dyn CryptoRngCore) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    bytes
}

/// The relay side: checks the client's message and answers it.
pub fn server_respond(
    rng: &mut dyn CryptoRngCore,
    id: &NodeId,
    keys: &OnionKeypair,
    msg: &[u8],
) -> Result<([u8; SERVER_MSG_LEN], HopKeys), HandshakeError> {
    server_respond_using::<DefaultX25519>(random_secret(rng), id, &keys.secret, msg)
}

/// [`server_respond`] with a given ephemeral secret (for test vectors).
pub fn server_respond_with_ephemeral(
    y: [u8; 32],
    id: &NodeId,
    keys: &OnionKeypair,
    msg: &[u8],
) -> Result<([u8; SERVER_MSG_LEN], HopKeys), HandshakeError> {
    server_respond_using::<DefaultX25519>(y, id, &keys.secret, msg)
}

/// [`server_respond_with_ephemeral`] with X25519 backend `K`: ephemeral
/// secret `y`, onion key `onion`.
pub fn server_respond_using<K: X25519Key>(
    y: [u8; 32],
    id: &NodeId,
    onion: &K,
    msg: &[u8],
) -> Result<([u8; SERVER_MSG_LEN], HopKeys), HandshakeError> {
    if msg.len() < CLIENT_MSG_LEN {
        return Err(HandshakeError::Malformed);
    }
    if msg[..32] != id.0 {
        return Err(HandshakeError::WrongNode);
    }
    let onion_public = onion.public_key();
    if msg[32..64] != onion_public {
        return Err(HandshakeError::WrongOnionKey);
    }
    let mut big_x = [0u8; 32];
    big_x.copy_from_slice(&msg[64..96]);
    let y = K::from_bytes(y);
    let big_y = y.public_key();
    let xy = y.agree(&big_x).ok_or(HandshakeError::BadShare)?;
    let xb = onion.agree(&big_x).ok_or(HandshakeError::BadShare)?;
    let (auth, okm) = derive(&xy, &xb, id, &onion_public, &big_x, &big_y)?;
    let mut reply = [0u8; SERVER_MSG_LEN];
    reply[..32].copy_from_slice(&big_y);
    reply[32..].copy_from_slice(&auth);
    Ok((reply, HopKeys::from_material(&okm)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay() -> (NodeId, OnionKeypair) {
        (
            NodeId::from_identity_key(&[1u8; 32]),
            OnionKeypair::from_secret([2u8; 32]),
        )
    }

    #[test]
    fn both_sides_derive_the_same_keys() -> Result<(), HandshakeError> {
        let (id, kp) = relay();
        let (client, msg) = ClientHandshake::with_ephemeral([3u8; 32], id, kp.public);
        let (reply, server_keys) = server_respond_with_ephemeral([4u8; 32], &id, &kp, &msg)?;
        let client_keys = client.finish(&reply)?;
        assert_eq!(client_keys.forward, server_keys.forward);
        assert_eq!(client_keys.back_seal, server_keys.back_seal);
        Ok(())
    }

    #[test]
    fn wrong_onion_key_fails() {
        let (id, kp) = relay();
        let other = OnionKeypair::from_secret([5u8; 32]);
        // The client believes the relay's key is `other`: the relay refuses.
        let (_, msg) = ClientHandshake::with_ephemeral([3u8; 32], id, other.public);
        assert_eq!(
            server_respond_with_ephemeral([4u8; 32], &id, &kp, &msg).err(),
            Some(HandshakeError::WrongOnionKey)
        );
        // An impostor holding `other` answers for the real relay's key: AUTH fails.
        let (client, msg) = ClientHandshake::with_ephemeral([3u8; 32], id, kp.public);
        let mut forged = msg;
        forged[32..64].copy_from_slice(&other.public);
        let reply = server_respond_with_ephemeral([4u8; 32], &id, &other, &forged)
            .map(|(r, _)| r)
            .unwrap_or([0; 64]);
        assert_eq!(
            client.finish(&reply).err(),
            Some(HandshakeError::AuthFailed)
        );
    }

    #[test]
    fn wrong_node_and_garbage_fail() {
        let (id, kp) = relay();
        let (_, mut msg) = ClientHandshake::with_ephemeral([3u8; 32], id, kp.public);
        msg[0] ^= 1;
        assert_eq!(
            server_respond_with_ephemeral([4u8; 32], &id, &kp, &msg).err(),
            Some(HandshakeError::WrongNode)
        );
        assert_eq!(
            server_respond_with_ephemeral([4u8; 32], &id, &kp, &msg[..10]).err(),
            Some(HandshakeError::Malformed)
        );
        // A low-order point as X is refused.
        let (_, mut msg) = ClientHandshake::with_ephemeral([3u8; 32], id, kp.public);
        msg[64..].fill(0);
        assert_eq!(
            server_respond_with_ephemeral([4u8; 32], &id, &kp, &msg).err(),
            Some(HandshakeError::BadShare)
        );
    }
}
