//! Node descriptors: a node's signed statement of its keys, link addresses
//! and role, published to trackers and sent to each neighbour in a LinkInfo
//! cell when a link comes up.
//!
//! Anyone may relay a descriptor (trackers serve other nodes' descriptors),
//! so it carries its own Ed25519 signature by the node's identity key and
//! [`Descriptor::decode`] refuses anything whose signature does not verify:
//! a descriptor in hand is always what its node signed. The node id is
//! derived from the identity key, never sent, so it cannot disagree.
//!
//! The encoding is compact binary so it fits one 509-byte cell body:
//!
//! ```text
//! version      1 byte   (1)
//! identity    32 bytes  Ed25519 public key
//! onion_key   32 bytes  X25519 public key
//! published    8 bytes  unix seconds, big-endian
//! expires      8 bytes  unix seconds, big-endian
//! flags        1 byte   bit 0 exit, bit 1 tracker, others zero
//! n_addrs      1 byte   at most 4
//! n_addrs x { len 1 byte, len bytes of LinkAddr text "scheme://ip:port" }
//! signature   64 bytes  over every byte above, context "relaynet-descriptor-v1"
//! padding     zero bytes only (the rest of a cell body)
//! ```
//!
//! The encoding is canonical: decoding accepts only what encoding produces
//! (addresses must be IP literals in their `Display` form, unknown flag
//! bits are refused), so a descriptor has one byte form. Addresses are
//! parsed without name resolution: a descriptor comes from the network and
//! must never make us query DNS.
//!
//! Four addresses of the longest form (an IPv6 address with a scope id)
//! take 4 x 65 bytes, so every descriptor with at most 4 addresses fits
//! (at most 407 bytes); the size check in [`Descriptor::encode`] is a
//! guard, not a limit users can reach.

use std::net::SocketAddr;

use relay_kernel::{NodeId, BODY_LEN};
use relay_link::{verify_signed, Identity, LinkAddr, Scheme};
use thiserror::Error;

/// Signature context (domain separation from every other signature made
/// with the identity key).
pub const CONTEXT: &[u8] = b"relaynet-descriptor-v1";
/// Encoding version.
pub const VERSION: u8 = 1;
/// At most this many link addresses.
pub const MAX_ADDRS: usize = 4;
/// Seconds a descriptor's `published` may lie in the future (clock skew).
pub const MAX_SKEW: u64 = 300;

const FLAG_EXIT: u8 = 0x01;
const FLAG_TRACKER: u8 = 0x02;
const SIG_LEN: usize = 64;

/// Why a descriptor was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DescriptorError {
    /// Ended early.
    #[error("descriptor truncated")]
    Truncated,
    /// An encoding this build does not know.
    #[error("unknown descriptor version {0}")]
    Version(u8),
    /// Too many addresses.
    #[error("descriptor lists {0} addresses, at most {max}", max = MAX_ADDRS)]
    TooManyAddrs(usize),
    /// An address that is not canonical `scheme://ip:port`.
    #[error("descriptor address {0:?} is not scheme://IP:PORT in canonical form")]
    BadAddr(String),
    /// Flag bits this version does not define.
    #[error("descriptor has unknown flags {0:#04x}")]
    Flags(u8),
    /// Bytes other than zero padding after the signature.
    #[error("descriptor has nonzero bytes after its signature")]
    Trailing,
    /// The signature does not verify.
    #[error("descriptor signature does not verify")]
    BadSignature,
    /// Would not fit a cell body.
    #[error("descriptor encodes to {0} bytes, more than a cell body ({max})", max = BODY_LEN)]
    TooLarge(usize),
}

/// A node's signed descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Ed25519 identity public key.
    pub identity: [u8; 32],
    /// X25519 onion key for circuit handshakes.
    pub onion_key: [u8; 32],
    /// Where the node accepts links (at most [`MAX_ADDRS`]).
    pub addrs: Vec<LinkAddr>,
    /// When it was signed (unix seconds).
    pub published: u64,
    /// When it stops being valid (unix seconds).
    pub expires: u64,
    /// The node accepts exit streams (its policy has an accept rule).
    pub exit: bool,
    /// The node serves relay lists.
    pub tracker: bool,
    /// Ed25519 signature over the encoding up to this field.
    pub signature: [u8; 64],
}

impl Descriptor {
    /// Builds and signs a descriptor. Only the first [`MAX_ADDRS`] addresses
    /// are kept, so the result always encodes.
    pub fn sign(
        identity: &Identity,
        onion_key: [u8; 32],
        mut addrs: Vec<LinkAddr>,
        published: u64,
        expires: u64,
        exit: bool,
        tracker: bool,
    ) -> Descriptor {
        addrs.truncate(MAX_ADDRS);
        let mut d = Descriptor {
            identity: identity.public(),
            onion_key,
            addrs,
            published,
            expires,
            exit,
            tracker,
            signature: [0; SIG_LEN],
        };
        // Cannot fail with at most MAX_ADDRS addresses; were it to, the
        // signature over nothing would simply never verify.
        let msg = d.signed_part().unwrap_or_default();
        d.signature = identity.sign(CONTEXT, &msg);
        d
    }

    /// The node id: SHA-256 of the identity key.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_identity_key(&self.identity)
    }

    /// Usable at `now` (unix seconds): not published more than
    /// [`MAX_SKEW`] seconds in the future, and not expired.
    pub fn is_fresh(&self, now: u64) -> bool {
        self.published <= now.saturating_add(MAX_SKEW) && now < self.expires
    }

    /// The bytes the signature covers.
    fn signed_part(&self) -> Result<Vec<u8>, DescriptorError> {
        if self.addrs.len() > MAX_ADDRS {
            return Err(DescriptorError::TooManyAddrs(self.addrs.len()));
        }
        let mut out = Vec::with_capacity(BODY_LEN);
        out.push(VERSION);
        out.extend_from_slice(&self.identity);
        out.extend_from_slice(&self.onion_key);
        out.extend_from_slice(&self.published.to_be_bytes());
        out.extend_from_slice(&self.expires.to_be_bytes());
        let flags =
            if self.exit { FLAG_EXIT } else { 0 } | if self.tracker { FLAG_TRACKER } else { 0 };
        out.push(flags);
        out.push(self.addrs.len() as u8); // <= MAX_ADDRS
        for a in &self.addrs {
            let text = a.to_string();
            let len =
                u8::try_from(text.len()).map_err(|_| DescriptorError::BadAddr(text.clone()))?;
            out.push(len);
            out.extend_from_slice(text.as_bytes());
        }
        Ok(out)
    }

    /// The wire form (without padding); refuses descriptors with more than
    /// [`MAX_ADDRS`] addresses or longer than a cell body.
    pub fn encode(&self) -> Result<Vec<u8>, DescriptorError> {
        let mut out = self.signed_part()?;
        out.extend_from_slice(&self.signature);
        if out.len() > BODY_LEN {
            return Err(DescriptorError::TooLarge(out.len()));
        }
        Ok(out)
    }

    /// Parses a wire form (zero padding after it allowed) and verifies its
    /// signature.
    pub fn decode(buf: &[u8]) -> Result<Descriptor, DescriptorError> {
        let mut r = Reader { buf, pos: 0 };
        let version = r.u8()?;
        if version != VERSION {
            return Err(DescriptorError::Version(version));
        }
        let identity = r.array::<32>()?;
        let onion_key = r.array::<32>()?;
        let published = u64::from_be_bytes(r.array::<8>()?);
        let expires = u64::from_be_bytes(r.array::<8>()?);
        let flags = r.u8()?;
        if flags & !(FLAG_EXIT | FLAG_TRACKER) != 0 {
            return Err(DescriptorError::Flags(flags));
        }
        let n = usize::from(r.u8()?);
        if n > MAX_ADDRS {
            return Err(DescriptorError::TooManyAddrs(n));
        }
        let mut addrs = Vec::with_capacity(n);
        for _ in 0..n {
            let len = usize::from(r.u8()?);
            addrs.push(parse_addr(r.take(len)?)?);
        }
        let signed_len = r.pos;
        let signature = r.array::<SIG_LEN>()?;
        if r.rest().iter().any(|&b| b != 0) {
            return Err(DescriptorError::Trailing);
        }
        let signed = buf.get(..signed_len).ok_or(DescriptorError::Truncated)?;
        verify_signed(&identity, CONTEXT, signed, &signature)
            .map_err(|_| DescriptorError::BadSignature)?;
        Ok(Descriptor {
            identity,
            onion_key,
            addrs,
            published,
            expires,
            exit: flags & FLAG_EXIT != 0,
            tracker: flags & FLAG_TRACKER != 0,
            signature,
        })
    }
}

/// `scheme://ip:port`, IP literal only (no DNS), in canonical form.
fn parse_addr(raw: &[u8]) -> Result<LinkAddr, DescriptorError> {
    let bad = || DescriptorError::BadAddr(String::from_utf8_lossy(raw).into_owned());
    let text = std::str::from_utf8(raw).map_err(|_| bad())?;
    let (scheme, rest) = text.split_once("://").ok_or_else(bad)?;
    let scheme = Scheme::parse(scheme).map_err(|_| bad())?;
    let addr: SocketAddr = rest.parse().map_err(|_| bad())?;
    let link = LinkAddr { scheme, addr };
    if link.to_string() != text {
        return Err(bad());
    }
    Ok(link)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DescriptorError> {
        let end = self.pos.checked_add(n).ok_or(DescriptorError::Truncated)?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(DescriptorError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DescriptorError> {
        Ok(self.array::<1>()?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DescriptorError> {
        self.take(N)?
            .try_into()
            .map_err(|_| DescriptorError::Truncated)
    }

    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ident(n: u8) -> Identity {
        Identity::from_secret([n; 32])
    }

    fn addr(s: &str) -> LinkAddr {
        LinkAddr::parse(s).unwrap()
    }

    fn sample() -> Descriptor {
        Descriptor::sign(
            &ident(1),
            [9; 32],
            vec![
                addr("udt://127.0.0.1:9001"),
                addr("quic://[2001:db8::1]:443"),
            ],
            1_700_000_000,
            1_700_003_600,
            true,
            false,
        )
    }

    #[test]
    fn round_trip() {
        let d = sample();
        assert_eq!(d.node_id(), ident(1).node_id());
        let b = d.encode().unwrap();
        assert_eq!(b[0], VERSION);
        let back = Descriptor::decode(&b).unwrap();
        assert_eq!(back, d);
        assert!(back.exit && !back.tracker);
        assert_eq!(back.addrs[1].scheme, Scheme::Quic);
        assert_eq!(back.encode().unwrap(), b);

        let t = Descriptor::sign(&ident(2), [3; 32], vec![], 5, 6, false, true);
        let back = Descriptor::decode(&t.encode().unwrap()).unwrap();
        assert!(back.tracker && !back.exit && back.addrs.is_empty());
    }

    #[test]
    fn cell_padding_is_allowed_but_nothing_else() {
        let mut b = sample().encode().unwrap();
        b.resize(BODY_LEN, 0);
        assert_eq!(Descriptor::decode(&b).unwrap(), sample());
        b[BODY_LEN - 1] = 1;
        assert_eq!(Descriptor::decode(&b), Err(DescriptorError::Trailing));
    }

    #[test]
    fn truncated_at_every_length() {
        let b = sample().encode().unwrap();
        for n in 0..b.len() {
            assert_eq!(
                Descriptor::decode(&b[..n]),
                Err(DescriptorError::Truncated),
                "{n}"
            );
        }
    }

    #[test]
    fn freshness() {
        let d = sample();
        assert!(!d.is_fresh(d.published - MAX_SKEW - 1));
        assert!(d.is_fresh(d.published - MAX_SKEW));
        assert!(d.is_fresh(d.published));
        assert!(d.is_fresh(d.expires - 1));
        assert!(!d.is_fresh(d.expires));
        assert!(!d.is_fresh(u64::MAX));
        let far = Descriptor::sign(&ident(1), [0; 32], vec![], u64::MAX, u64::MAX, false, false);
        assert!(!far.is_fresh(0));
    }

    #[test]
    fn too_many_addrs() {
        let five: Vec<LinkAddr> = (1..=5)
            .map(|p| addr(&format!("tcp://127.0.0.1:{p}")))
            .collect();
        let d = Descriptor::sign(&ident(1), [0; 32], five.clone(), 1, 2, false, false);
        assert_eq!(d.addrs, five[..4]);
        assert!(Descriptor::decode(&d.encode().unwrap()).is_ok());

        let mut big = d.clone();
        big.addrs = five;
        assert_eq!(big.encode(), Err(DescriptorError::TooManyAddrs(5)));

        // A crafted, correctly signed five-address message is refused too.
        let mut msg = d.signed_part().unwrap();
        let count_at = 1 + 32 + 32 + 8 + 8 + 1;
        msg[count_at] = 5;
        let extra = b"tcp://127.0.0.1:5";
        msg.push(extra.len() as u8);
        msg.extend_from_slice(extra);
        let sig = ident(1).sign(CONTEXT, &msg);
        msg.extend_from_slice(&sig);
        assert_eq!(
            Descriptor::decode(&msg),
            Err(DescriptorError::TooManyAddrs(5))
        );
    }

    /// Signs arbitrary body bytes so tests reach checks past the signature.
    fn signed(msg: &[u8]) -> Vec<u8> {
        let mut v = msg.to_vec();
        v.extend_from_slice(&ident(1).sign(CONTEXT, msg));
        v
    }

    #[test]
    fn addresses_must_be_canonical_ip_literals() {
        let base = Descriptor::sign(&ident(1), [0; 32], vec![], 1, 2, false, false)
            .signed_part()
            .unwrap();
        let count_at = base.len() - 1;
        for bad in [
            &b"udt://localhost:80"[..],
            b"127.0.0.1:80",
            b"ftp://127.0.0.1:80",
            b"udt://127.0.0.01:80",
            b"udt://[0:0::1]:80",
            b"UDT://127.0.0.1:80",
            b"udt://127.0.0.1:080",
            b"udt://\xff",
        ] {
            let mut m = base.clone();
            m[count_at] = 1;
            m.push(bad.len() as u8);
            m.extend_from_slice(bad);
            assert!(
                matches!(
                    Descriptor::decode(&signed(&m)),
                    Err(DescriptorError::BadAddr(_))
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn unknown_version_and_flags() {
        let mut b = sample().encode().unwrap();
        b[0] = 2;
        assert_eq!(Descriptor::decode(&b), Err(DescriptorError::Version(2)));
        let mut m = sample().signed_part().unwrap();
        m[1 + 32 + 32 + 16] |= 0x80;
        assert_eq!(
            Descriptor::decode(&signed(&m)),
            Err(DescriptorError::Flags(0x81))
        );
    }

    #[test]
    fn signature_is_bound_to_key_and_context() {
        let d = sample();
        // Same bytes signed by another key under our identity field.
        let msg = d.signed_part().unwrap();
        let mut forged = msg.clone();
        forged.extend_from_slice(&ident(2).sign(CONTEXT, &msg));
        assert_eq!(
            Descriptor::decode(&forged),
            Err(DescriptorError::BadSignature)
        );
        // Right key, other context.
        let mut other = msg.clone();
        other.extend_from_slice(&ident(1).sign(b"relaynet-something-else", &msg));
        assert_eq!(
            Descriptor::decode(&other),
            Err(DescriptorError::BadSignature)
        );
    }

    #[test]
    fn largest_descriptor_fits_a_cell() {
        let long = "s2n://[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535";
        let a = LinkAddr {
            scheme: Scheme::S2n,
            addr: long.trim_start_matches("s2n://").parse().unwrap(),
        };
        assert_eq!(a.to_string(), long);
        let d = Descriptor::sign(&ident(1), [0; 32], vec![a; 4], 1, 2, true, true);
        let b = d.encode().unwrap();
        assert!(b.len() <= BODY_LEN, "{}", b.len());
        assert_eq!(b.len(), 83 + 4 * (1 + long.len()) + 64);
        assert_eq!(b.len(), 407);
        assert_eq!(Descriptor::decode(&b).unwrap(), d);
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let b = sample().encode().unwrap();
        for bit in 0..b.len() * 8 {
            let mut m = b.clone();
            m[bit / 8] ^= 1 << (bit % 8);
            assert!(Descriptor::decode(&m).is_err(), "bit {bit}");
        }
    }

    proptest! {
        #[test]
        fn any_flipped_bit_is_rejected(bit in 0usize..(BODY_LEN * 8)) {
            let mut b = sample().encode().unwrap();
            b.resize(BODY_LEN, 0);
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Descriptor::decode(&b).is_err());
        }

        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Descriptor::decode(&b);
        }

        #[test]
        fn decode_never_panics_on_near_valid(
            cut in 0usize..200,
            noise in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut b = sample().encode().unwrap();
            b.truncate(cut);
            b.extend_from_slice(&noise);
            let _ = Descriptor::decode(&b);
        }

        #[test]
        fn round_trip_any(
            secret in any::<[u8; 32]>(),
            onion in any::<[u8; 32]>(),
            ports in proptest::collection::vec(any::<u16>(), 0..=4),
            published in any::<u64>(),
            expires in any::<u64>(),
            exit in any::<bool>(),
            tracker in any::<bool>(),
        ) {
            let addrs = ports.iter().map(|p| addr(&format!("tcp://[::1]:{p}"))).collect();
            let d = Descriptor::sign(&Identity::from_secret(secret), onion, addrs, published, expires, exit, tracker);
            prop_assert_eq!(Descriptor::decode(&d.encode().unwrap()).unwrap(), d);
        }
    }
}
