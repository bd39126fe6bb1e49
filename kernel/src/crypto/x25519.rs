//! X25519 behind one small trait, so the backend is chosen by measurement.
//!
//! The circuit handshake costs two variable-base X25519 multiplications and
//! one fixed-base one on each side, so the server handshake is almost
//! exactly the price of the X25519 backend (docs/benchmarks.md). All
//! backends compute RFC 7748 X25519 and refuse an all-zero shared secret
//! (a low-order or otherwise non-contributory peer share):
//!
//! - [`AwsLcX25519`]: aws-lc (s2n-bignum's x86-64/aarch64 assembly), the
//!   default (cargo feature `aws-lc`); aws-lc-rs is already built for
//!   s2n-quic, so it costs the workspace no new build.
//! - [`DalekX25519`]: x25519-dalek's Montgomery ladder, pure Rust: the
//!   portable path (builds for any target, e.g. MIPS routers without aws-lc).
//! - [`DalekEdwardsX25519`]: curve25519-dalek's Edwards variable-base
//!   multiplication (AVX2 at run time on x86-64), kept because it was a
//!   candidate and so the benchmarks can show why it lost.
//!
//! ring is not a candidate: its X25519 keys come only from its own system
//! RNG, and the kernel takes its randomness from the caller (netsim runs
//! must be reproducible and the test vectors need given secrets).

#[cfg(feature = "aws-lc")]
use std::sync::Arc;

#[cfg(feature = "aws-lc")]
use aws_lc_rs::agreement;
use curve25519_dalek::{EdwardsPoint, MontgomeryPoint};
use x25519_dalek::{PublicKey, StaticSecret};

/// Bytes in an X25519 secret, public key or shared secret.
pub const X25519_LEN: usize = 32;

/// An X25519 secret scalar, usable for any number of agreements (a relay's
/// onion key) or for one (an ephemeral key).
pub trait X25519Key: Clone + Send + Sync + Sized {
    /// The key for 32 secret bytes (clamped as RFC 7748 says).
    fn from_bytes(secret: [u8; X25519_LEN]) -> Self;
    /// The public key: the secret times the base point.
    fn public_key(&self) -> [u8; X25519_LEN];
    /// The shared secret with a peer's public key, or `None` when it is all
    /// zero (the peer sent a low-order point) or the backend failed.
    fn agree(&self, peer: &[u8; X25519_LEN]) -> Option<[u8; X25519_LEN]>;
}

/// `None` for the all-zero output a low-order peer share produces, in
/// constant time over the bytes.
fn contributory(shared: [u8; X25519_LEN]) -> Option<[u8; X25519_LEN]> {
    let acc = shared.iter().fold(0u8, |acc, b| acc | b);
    (acc != 0).then_some(shared)
}

/// x25519-dalek's Montgomery ladder.
#[derive(Clone)]
pub struct DalekX25519 {
    secret: StaticSecret,
    public: [u8; X25519_LEN],
}

impl X25519Key for DalekX25519 {
    fn from_bytes(secret: [u8; X25519_LEN]) -> Self {
        let secret = StaticSecret::from(secret);
        let public = PublicKey::from(&secret).to_bytes();
        DalekX25519 { secret, public }
    }

    fn public_key(&self) -> [u8; X25519_LEN] {
        self.public
    }

    fn agree(&self, peer: &[u8; X25519_LEN]) -> Option<[u8; X25519_LEN]> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*peer));
        contributory(shared.to_bytes())
    }
}

/// curve25519-dalek's Edwards variable-base multiplication: the peer's
/// Montgomery u is mapped to an Edwards point, multiplied by the clamped
/// scalar and mapped back. Both steps are constant time in the secret. The
/// result equals X25519 for every point on the curve (the sign lost by the
/// map does not change u); a u on the twist has no Edwards point and is
/// refused, where X25519 would answer: no honest share is on the twist.
#[derive(Clone)]
pub struct DalekEdwardsX25519 {
    secret: [u8; X25519_LEN],
    public: [u8; X25519_LEN],
}

impl X25519Key for DalekEdwardsX25519 {
    fn from_bytes(secret: [u8; X25519_LEN]) -> Self {
        let public = EdwardsPoint::mul_base_clamped(secret)
            .to_montgomery()
            .to_bytes();
        DalekEdwardsX25519 { secret, public }
    }

    fn public_key(&self) -> [u8; X25519_LEN] {
        self.public
    }

    fn agree(&self, peer: &[u8; X25519_LEN]) -> Option<[u8; X25519_LEN]> {
        let point = MontgomeryPoint(*peer).to_edwards(0)?;
        contributory(point.mul_clamped(self.secret).to_montgomery().to_bytes())
    }
}

impl Drop for DalekEdwardsX25519 {
    fn drop(&mut self) {
        // Best effort, as for the hop keys.
        self.secret = [0; X25519_LEN];
    }
}

/// aws-lc's X25519 through aws-lc-rs's safe `agreement` API.
#[cfg(feature = "aws-lc")]
#[derive(Clone)]
pub struct AwsLcX25519 {
    /// `None` only if aws-lc could not allocate the key: every agreement
    /// then fails, and the public key is all zero, which every peer refuses
    /// (its shared secret would be zero). Shared, as aws-lc keys do not
    /// clone (a relay's onion key is cloned with its node's key pair).
    key: Option<Arc<agreement::PrivateKey>>,
    public: [u8; X25519_LEN],
}

#[cfg(feature = "aws-lc")]
impl X25519Key for AwsLcX25519 {
    fn from_bytes(secret: [u8; X25519_LEN]) -> Self {
        let key = agreement::PrivateKey::from_private_key(&agreement::X25519, &secret).ok();
        let mut public = [0u8; X25519_LEN];
        let computed = key.as_ref().and_then(|k| k.compute_public_key().ok());
        match computed {
            Some(p) if p.as_ref().len() == X25519_LEN => public.copy_from_slice(p.as_ref()),
            _ => return AwsLcX25519 { key: None, public },
        }
        AwsLcX25519 {
            key: key.map(Arc::new),
            public,
        }
    }

    fn public_key(&self) -> [u8; X25519_LEN] {
        self.public
    }

    fn agree(&self, peer: &[u8; X25519_LEN]) -> Option<[u8; X25519_LEN]> {
        let key: &agreement::PrivateKey = self.key.as_ref()?;
        let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, peer);
        // aws-lc itself refuses an all-zero result (RFC 7748 section 6.1);
        // checking again keeps the rule in one place for every backend.
        agreement::agree(key, peer, (), |shared| {
            let mut out = [0u8; X25519_LEN];
            if shared.len() != X25519_LEN {
                return Err(());
            }
            out.copy_from_slice(shared);
            Ok(out)
        })
        .ok()
        .and_then(contributory)
    }
}

/// The backend the kernel uses, chosen at build time by benchmark.
#[cfg(feature = "aws-lc")]
pub type DefaultX25519 = AwsLcX25519;
/// The backend the kernel uses, chosen at build time by benchmark.
#[cfg(not(feature = "aws-lc"))]
pub type DefaultX25519 = DalekX25519;

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7748 section 5.2, first test vector.
    const RFC_SCALAR: &str = "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4";
    const RFC_U: &str = "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c";
    const RFC_OUT: &str = "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552";
    /// RFC 7748 section 6.1: Alice's key pair.
    const ALICE: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
    const ALICE_PUB: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or(0);
        }
        out
    }

    fn rfc_vectors<K: X25519Key>() {
        let k = K::from_bytes(hex32(RFC_SCALAR));
        assert_eq!(k.agree(&hex32(RFC_U)), Some(hex32(RFC_OUT)));
        assert_eq!(K::from_bytes(hex32(ALICE)).public_key(), hex32(ALICE_PUB));
    }

    /// Low-order points on the curve (RFC 7748 and the usual list): every
    /// clamped scalar maps them to zero.
    fn low_order_points() -> Vec<[u8; 32]> {
        let mut v = vec![[0u8; 32], {
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        }];
        v.push(hex32(
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        ));
        v.push(hex32(
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        ));
        // p - 1, p, p + 1 (non-canonical encodings of -1, 0 and 1).
        v.push(hex32(
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ));
        v.push(hex32(
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ));
        v.push(hex32(
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ));
        v
    }

    fn refuses_low_order<K: X25519Key>() {
        let k = K::from_bytes([0x42; 32]);
        for p in low_order_points() {
            assert_eq!(k.agree(&p), None, "{p:02x?}");
            // The ignored top bit changes nothing.
            let mut high = p;
            high[31] |= 0x80;
            assert_eq!(k.agree(&high), None);
        }
    }

    #[test]
    fn every_backend_meets_rfc_7748_and_refuses_low_order_points() {
        rfc_vectors::<DalekX25519>();
        rfc_vectors::<DalekEdwardsX25519>();
        #[cfg(feature = "aws-lc")]
        rfc_vectors::<AwsLcX25519>();
        refuses_low_order::<DalekX25519>();
        refuses_low_order::<DalekEdwardsX25519>();
        #[cfg(feature = "aws-lc")]
        refuses_low_order::<AwsLcX25519>();
    }

    /// A small deterministic generator for test inputs.
    fn next(state: &mut u64) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            *state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        out
    }

    /// `K` against the ladder on 200 random secrets, with real shares and
    /// with arbitrary bytes as the peer's share. Returns how many arbitrary
    /// shares `K` refused where the ladder answered.
    fn agrees_with_ladder<K: X25519Key>() -> usize {
        let mut s = 0x1234_5678_9abc_def0u64;
        let mut refused = 0;
        for _ in 0..200 {
            let (a, b) = (next(&mut s), next(&mut s));
            let (ladder, k) = (DalekX25519::from_bytes(a), K::from_bytes(a));
            assert_eq!(k.public_key(), ladder.public_key());
            // A real share (on the curve): the same secret.
            let share = DalekX25519::from_bytes(b).public_key();
            let want = ladder.agree(&share);
            assert!(want.is_some());
            assert_eq!(k.agree(&share), want);
            // Arbitrary bytes: about half are on the twist, some have the
            // top bit set or are non-canonical.
            let want = ladder.agree(&b);
            match k.agree(&b) {
                Some(got) => assert_eq!(Some(got), want),
                None => refused += 1,
            }
        }
        refused
    }

    #[test]
    fn backends_agree_on_random_inputs() {
        #[cfg(feature = "aws-lc")]
        assert_eq!(agrees_with_ladder::<AwsLcX25519>(), 0);
        // The Edwards form refuses exactly the twist points: about half.
        let twist = agrees_with_ladder::<DalekEdwardsX25519>();
        assert!((50..150).contains(&twist), "{twist}");
    }
}
