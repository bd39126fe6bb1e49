//! TLS for the simulated QUIC links, made deterministic.
//!
//! QUIC needs TLS 1.3; the real `quic` link binds certificates to node
//! identities (`relay_link::tls`) and we reuse those pieces. What differs is
//! where randomness and time come from: rustls draws client randoms,
//! legacy session ids and ephemeral X25519 keys from the process's
//! `CryptoProvider`, whose random source and key-exchange groups are
//! `&'static` objects. To make a run a pure function of its seed, the
//! provider here uses [`SeededRandom`] and [`SeededX25519`], which read a
//! ChaCha stream the calling host lends to the current thread for the
//! duration of each call into quinn-proto ([`RngLease`]). Certificates are
//! already deterministic (Ed25519 signatures, a serial derived from the
//! key, fixed validity), and the wall clock is replaced by [`FixedTime`].

use std::cell::RefCell;
use std::sync::Arc;

use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;
use relay_kernel::NodeId;
pub use relay_link::tls::Proved;
use relay_link::tls::{node_id, AnyNode, ExpectPeer, NodeCert};
use rustls::crypto::{
    ActiveKeyExchange, CryptoProvider, GetRandomFailed, SecureRandom, SharedSecret,
    SupportedKxGroup,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::time_provider::TimeProvider;
use rustls::NamedGroup;

use crate::error::SimError;

/// Application protocol name (as the real link's).
pub const ALPN: &[u8] = b"relay-link/1";

thread_local! {
    /// The random stream of the host whose QUIC endpoint runs on this
    /// thread right now (see [`RngLease`]).
    static LENT: RefCell<Option<ChaCha20Rng>> = const { RefCell::new(None) };
}

/// Lends a host's random stream to this thread while it calls into
/// quinn-proto and rustls; gives it back when dropped.
pub struct RngLease<'a> {
    slot: &'a mut Option<ChaCha20Rng>,
}

impl<'a> RngLease<'a> {
    /// Moves `slot`'s stream into the thread until the lease ends.
    pub fn new(slot: &'a mut Option<ChaCha20Rng>) -> RngLease<'a> {
        let rng = slot.take();
        LENT.with(|l| *l.borrow_mut() = rng);
        RngLease { slot }
    }
}

impl Drop for RngLease<'_> {
    fn drop(&mut self) {
        *self.slot = LENT.with(|l| l.borrow_mut().take());
    }
}

/// Fills `buf` from the lent stream; fails if no host lent one (so
/// nothing can silently fall back to OS randomness).
fn fill_lent(buf: &mut [u8]) -> Result<(), GetRandomFailed> {
    LENT.with(|l| match l.borrow_mut().as_mut() {
        Some(r) => {
            r.fill_bytes(buf);
            Ok(())
        }
        None => Err(GetRandomFailed),
    })
}

/// rustls' random source: the lent stream.
#[derive(Debug)]
pub struct SeededRandom;

impl SecureRandom for SeededRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        fill_lent(buf)
    }
}

/// X25519 with ephemeral keys from the lent stream (rustls' own groups
/// draw them from the OS).
#[derive(Debug)]
pub struct SeededX25519;

struct X25519Active {
    secret: x25519_dalek::StaticSecret,
    public: [u8; 32],
}

impl SupportedKxGroup for SeededX25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let mut k = [0u8; 32];
        fill_lent(&mut k).map_err(|_| rustls::Error::FailedToGetRandomBytes)?;
        let secret = x25519_dalek::StaticSecret::from(k);
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        Ok(Box::new(X25519Active { secret, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

impl ActiveKeyExchange for X25519Active {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, rustls::Error> {
        let peer: [u8; 32] = peer
            .try_into()
            .map_err(|_| rustls::Error::from(rustls::PeerMisbehaved::InvalidKeyShare))?;
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer));
        // RFC 8446 7.4.2: an all-zero shared secret must be refused.
        if !shared.was_contributory() {
            return Err(rustls::PeerMisbehaved::InvalidKeyShare.into());
        }
        Ok(SharedSecret::from(&shared.as_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// A clock stopped at a fixed date (certificates are valid 1975-4096 and
/// our verifiers ignore time; only ticket bookkeeping would read it).
#[derive(Debug)]
pub struct FixedTime;

/// 2026-01-01T00:00:00Z.
const FIXED_UNIX_SECS: u64 = 1_767_225_600;

impl TimeProvider for FixedTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            FIXED_UNIX_SECS,
        )))
    }
}

impl quinn_proto::TimeSource for FixedTime {
    fn now(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(FIXED_UNIX_SECS)
    }
}

static SEEDED_RANDOM: SeededRandom = SeededRandom;
static SEEDED_X25519: SeededX25519 = SeededX25519;

/// ring's cipher suites and signature checks with the seeded random source
/// and key exchange.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.kx_groups = vec![&SEEDED_X25519];
    p.secure_random = &SEEDED_RANDOM;
    Arc::new(p)
}

fn tls_err(what: &str) -> SimError {
    SimError::Link(format!("quic tls: {what}"))
}

/// The listener's TLS config: any node with an identity certificate.
pub fn server_config(
    provider: &Arc<CryptoProvider>,
    cert: &NodeCert,
) -> Result<rustls::ServerConfig, SimError> {
    let mut tls = rustls::ServerConfig::builder_with_details(provider.clone(), Arc::new(FixedTime))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|_| tls_err("TLS 1.3 unavailable"))?
        .with_client_cert_verifier(Arc::new(AnyNode::new(provider)))
        .with_single_cert(vec![cert.cert.clone()], cert.key())
        .map_err(|_| tls_err("identity key rejected"))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    Ok(tls)
}

/// A dial's TLS config, accepting only `expected`; `Proved` learns the id
/// the peer proved.
pub fn client_config(
    provider: &Arc<CryptoProvider>,
    cert: &NodeCert,
    expected: NodeId,
) -> Result<(rustls::ClientConfig, Proved), SimError> {
    let verifier = ExpectPeer::new(expected, provider);
    let proved = verifier.proved.clone();
    let mut tls = rustls::ClientConfig::builder_with_details(provider.clone(), Arc::new(FixedTime))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|_| tls_err("TLS 1.3 unavailable"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![cert.cert.clone()], cert.key())
        .map_err(|_| tls_err("identity key rejected"))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    Ok((tls, proved))
}

/// The node id a connection's peer proved with its certificate.
pub fn peer_id(identity: Option<Box<dyn std::any::Any>>) -> Option<NodeId> {
    let certs = identity?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    node_id(certs.first()?).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn randomness_comes_only_from_the_lent_stream() {
        let mut buf = [0u8; 16];
        // Nothing lent: refuse rather than fall back to the OS.
        assert!(SeededRandom.fill(&mut buf).is_err());
        let mut slot = Some(ChaCha20Rng::seed_from_u64(7));
        let (a, b) = {
            let _lease = RngLease::new(&mut slot);
            let mut a = [0u8; 16];
            SeededRandom.fill(&mut a).unwrap();
            let k = SeededX25519.start().unwrap();
            (a, k.pub_key().to_vec())
        };
        assert!(slot.is_some(), "the stream comes back");
        let mut slot2 = Some(ChaCha20Rng::seed_from_u64(7));
        let _lease = RngLease::new(&mut slot2);
        let mut a2 = [0u8; 16];
        SeededRandom.fill(&mut a2).unwrap();
        assert_eq!(a, a2);
        assert_eq!(b, SeededX25519.start().unwrap().pub_key().to_vec());
    }

    #[test]
    fn key_exchange_agrees() {
        let mut slot = Some(ChaCha20Rng::seed_from_u64(1));
        let _lease = RngLease::new(&mut slot);
        let a = SeededX25519.start().unwrap();
        let b = SeededX25519.start().unwrap();
        let pa = a.pub_key().to_vec();
        let pb = b.pub_key().to_vec();
        let sa = a.complete(&pb).unwrap();
        let sb = b.complete(&pa).unwrap();
        assert_eq!(sa.secret_bytes(), sb.secret_bytes());
        let c = SeededX25519.start().unwrap();
        assert!(c.complete(&[0u8; 32]).is_err(), "low-order point refused");
    }
}
