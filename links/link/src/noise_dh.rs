//! snow's X25519 replaced by the kernel's default backend.
//!
//! snow computes its Diffie-Hellman with curve25519-dalek's Montgomery
//! ladder. The kernel measured that backend against aws-lc's s2n-bignum
//! assembly for circuit handshakes and chose aws-lc (docs/benchmarks.md);
//! a Noise XX handshake costs each side three variable-base and two
//! fixed-base multiplications, and in netsim's scale scenario snow's
//! ladder showed up at 1-6% of a run (perf, 2026-12-07). This resolver
//! gives snow [`DefaultX25519`] for "25519" and leaves the hash, the
//! cipher and the randomness to snow's default resolver, so the protocol
//! and its bytes are unchanged (same RFC 7748 function).

use relay_kernel::crypto::{DefaultX25519, X25519Key};
use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver};
use snow::types::{Cipher, Dh, Hash, Random};

use relay_kernel::crypto::x25519::X25519_LEN;

/// A resolver with the kernel's X25519 first and snow's defaults behind it.
pub fn resolver() -> Box<dyn CryptoResolver + Send> {
    Box::new(FallbackResolver::new(
        Box::new(KernelDh),
        Box::new(DefaultResolver),
    ))
}

struct KernelDh;

impl CryptoResolver for KernelDh {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        None
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(X25519Dh::default())),
            _ => None,
        }
    }

    fn resolve_hash(&self, _: &snow::params::HashChoice) -> Option<Box<dyn Hash>> {
        None
    }

    fn resolve_cipher(&self, _: &snow::params::CipherChoice) -> Option<Box<dyn Cipher>> {
        None
    }
}

/// A Noise "25519" key pair. The secret bytes are kept as given (snow
/// hands them back through `privkey`); the backend clamps when it uses them.
#[derive(Default)]
struct X25519Dh {
    private: [u8; X25519_LEN],
    public: [u8; X25519_LEN],
    key: Option<DefaultX25519>,
}

impl X25519Dh {
    fn set_secret(&mut self, secret: [u8; X25519_LEN]) {
        let key = DefaultX25519::from_bytes(secret);
        self.private = secret;
        self.public = key.public_key();
        self.key = Some(key);
    }
}

impl Dh for X25519Dh {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        X25519_LEN
    }

    fn priv_len(&self) -> usize {
        X25519_LEN
    }

    fn set(&mut self, privkey: &[u8]) {
        let mut secret = [0u8; X25519_LEN];
        let n = privkey.len().min(X25519_LEN);
        secret[..n].copy_from_slice(&privkey[..n]);
        self.set_secret(secret);
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut secret = [0u8; X25519_LEN];
        rng.try_fill_bytes(&mut secret)?;
        self.set_secret(secret);
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        &self.private
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let peer: [u8; X25519_LEN] = pubkey
            .get(..X25519_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(snow::Error::Dh)?;
        // A low-order peer share (all-zero result) is refused, as the
        // kernel refuses it: Noise would otherwise key the session with a
        // value the attacker knows.
        let shared = self
            .key
            .as_ref()
            .and_then(|k| k.agree(&peer))
            .ok_or(snow::Error::Dh)?;
        let out = out.get_mut(..X25519_LEN).ok_or(snow::Error::Dh)?;
        out.copy_from_slice(&shared);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against snow's own implementation: same public key for a secret
    /// and same shared secret, so the handshake bytes do not change.
    #[test]
    fn matches_snows_default_x25519() -> Result<(), snow::Error> {
        let snow_dh = |secret: &[u8]| {
            let mut d = DefaultResolver
                .resolve_dh(&DHChoice::Curve25519)
                .ok_or(snow::Error::Dh)?;
            d.set(secret);
            Ok::<_, snow::Error>(d)
        };
        for seed in 1u8..20 {
            let a: Vec<u8> = (0..32)
                .map(|i| seed.wrapping_mul(31).wrapping_add(i))
                .collect();
            let b: Vec<u8> = (0..32).map(|i| seed.wrapping_mul(17) ^ i).collect();
            let (sa, sb) = (snow_dh(&a)?, snow_dh(&b)?);
            let mut ka = X25519Dh::default();
            ka.set(&a);
            assert_eq!(ka.pubkey(), sa.pubkey());
            assert_eq!(ka.privkey(), sa.privkey());
            let (mut ours, mut theirs) = ([0u8; 32], [0u8; 32]);
            ka.dh(sb.pubkey(), &mut ours)?;
            sa.dh(sb.pubkey(), &mut theirs)?;
            assert_eq!(ours, theirs);
        }
        Ok(())
    }

    #[test]
    fn refuses_a_low_order_share_and_a_short_one() {
        let mut k = X25519Dh::default();
        k.set(&[7u8; 32]);
        let mut out = [0u8; 32];
        // u = 0 is of low order: the result is all zero.
        assert!(k.dh(&[0u8; 32], &mut out).is_err());
        assert!(k.dh(&[9u8; 31], &mut out).is_err());
    }
}
