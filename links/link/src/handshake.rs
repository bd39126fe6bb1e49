//! The link handshake: Noise XX (X25519, AES-GCM, SHA-256, via `snow`),
//! each side's static key certified by its node identity (see `identity`).
//!
//! XX hides both static keys from passive observers and gives both sides
//! the other's key; the certificates bind those keys to node ids. The
//! initiator checks the responder's id against the one it dialled before it
//! reveals its own. The result is a pair of AES-256-GCM keys, one per
//! direction, used by each link kind's own framing (explicit nonces for
//! datagram links, so loss and reordering are fine). X25519 is the
//! kernel's backend, not snow's (see `noise_dh`).

use relay_kernel::NodeId;

use crate::error::LinkError;
use crate::identity::{verify_cert, Identity, CERT_LEN};
use crate::transport::{OpenKey, SealKey};

const NOISE: &str = "Noise_XX_25519_AESGCM_SHA256";
/// Largest handshake message.
pub const MAX_MSG: usize = 256;

/// The static Noise key of a process, with its certificate.
pub struct StaticKey {
    private: Vec<u8>,
    cert: [u8; CERT_LEN],
    id: NodeId,
}

impl StaticKey {
    /// A fresh static key certified by `identity`.
    pub fn new(identity: &Identity) -> Result<StaticKey, LinkError> {
        let params = NOISE
            .parse()
            .map_err(|_| LinkError::Handshake("noise params"))?;
        let kp = snow::Builder::with_resolver(params, crate::noise_dh::resolver())
            .generate_keypair()
            .map_err(|_| LinkError::Handshake("keygen"))?;
        Ok(StaticKey {
            cert: identity.certify(&kp.public),
            private: kp.private,
            id: identity.node_id(),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.id
    }

    fn builder(&self) -> Result<snow::Builder<'_>, LinkError> {
        let params = NOISE
            .parse()
            .map_err(|_| LinkError::Handshake("noise params"))?;
        snow::Builder::with_resolver(params, crate::noise_dh::resolver())
            .local_private_key(&self.private)
            .map_err(|_| LinkError::Handshake("noise key"))
    }
}

/// Keys for an established link.
pub struct Session {
    /// The authenticated peer.
    pub peer: NodeId,
    /// Seals what we send.
    pub seal: SealKey,
    /// Opens what we receive.
    pub open: OpenKey,
}

fn session(
    mut hs: snow::HandshakeState,
    peer: NodeId,
    initiator: bool,
) -> Result<Session, LinkError> {
    let (i2r, r2i) = hs.dangerously_get_raw_split();
    let (send, recv) = if initiator { (i2r, r2i) } else { (r2i, i2r) };
    Ok(Session {
        peer,
        seal: SealKey::new(&send)?,
        open: OpenKey::new(&recv)?,
    })
}

/// The dialling side.
pub struct Initiator {
    hs: snow::HandshakeState,
    expected: NodeId,
    cert: [u8; CERT_LEN],
}

impl Initiator {
    /// Starts a handshake with the node `expected`; returns message 1.
    pub fn start(key: &StaticKey, expected: NodeId) -> Result<(Initiator, Vec<u8>), LinkError> {
        let mut hs = key
            .builder()?
            .build_initiator()
            .map_err(|_| LinkError::Handshake("noise init"))?;
        let mut buf = vec![0u8; MAX_MSG];
        let n = hs
            .write_message(&[], &mut buf)
            .map_err(|_| LinkError::Handshake("noise write"))?;
        buf.truncate(n);
        Ok((
            Initiator {
                hs,
                expected,
                cert: key.cert,
            },
            buf,
        ))
    }

    /// Reads message 2, checks the responder is the node dialled, and
    /// returns message 3 and the session.
    pub fn finish(mut self, msg2: &[u8]) -> Result<(Vec<u8>, Session), LinkError> {
        let mut payload = vec![0u8; MAX_MSG];
        let n = self
            .hs
            .read_message(msg2, &mut payload)
            .map_err(|_| LinkError::Handshake("bad message 2"))?;
        let remote = self
            .hs
            .get_remote_static()
            .ok_or(LinkError::Handshake("no static key"))?;
        let got = verify_cert(&payload[..n], remote)?;
        if got != self.expected {
            return Err(LinkError::WrongPeer {
                expected: self.expected,
                got,
            });
        }
        let mut msg3 = vec![0u8; MAX_MSG];
        let n = self
            .hs
            .write_message(&self.cert, &mut msg3)
            .map_err(|_| LinkError::Handshake("noise write"))?;
        msg3.truncate(n);
        Ok((msg3, session(self.hs, got, true)?))
    }
}

/// The answering side.
pub struct Responder {
    hs: snow::HandshakeState,
}

impl Responder {
    /// Reads message 1; returns the state and message 2.
    pub fn respond(key: &StaticKey, msg1: &[u8]) -> Result<(Responder, Vec<u8>), LinkError> {
        let mut hs = key
            .builder()?
            .build_responder()
            .map_err(|_| LinkError::Handshake("noise init"))?;
        let mut scratch = vec![0u8; MAX_MSG];
        hs.read_message(msg1, &mut scratch)
            .map_err(|_| LinkError::Handshake("bad message 1"))?;
        let mut msg2 = vec![0u8; MAX_MSG];
        let n = hs
            .write_message(&key.cert, &mut msg2)
            .map_err(|_| LinkError::Handshake("noise write"))?;
        msg2.truncate(n);
        Ok((Responder { hs }, msg2))
    }

    /// Reads message 3; returns the session with the initiator's id.
    pub fn finish(mut self, msg3: &[u8]) -> Result<Session, LinkError> {
        let mut payload = vec![0u8; MAX_MSG];
        let n = self
            .hs
            .read_message(msg3, &mut payload)
            .map_err(|_| LinkError::Handshake("bad message 3"))?;
        let remote = self
            .hs
            .get_remote_static()
            .ok_or(LinkError::Handshake("no static key"))?;
        let peer = verify_cert(&payload[..n], remote)?;
        session(self.hs, peer, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(b: u8) -> Identity {
        Identity::from_secret([b; 32])
    }

    #[test]
    fn both_sides_authenticate() -> Result<(), LinkError> {
        let (a, b) = (StaticKey::new(&ident(1))?, StaticKey::new(&ident(2))?);
        let (i, m1) = Initiator::start(&a, b.node_id())?;
        let (r, m2) = Responder::respond(&b, &m1)?;
        let (m3, si) = i.finish(&m2)?;
        let sr = r.finish(&m3)?;
        assert_eq!(si.peer, b.node_id());
        assert_eq!(sr.peer, a.node_id());
        let mut msg = b"cells".to_vec();
        si.seal.seal(7, &mut msg)?;
        let plain = sr.open.open(7, &mut msg)?;
        assert_eq!(plain, b"cells");
        Ok(())
    }

    #[test]
    fn wrong_id_is_refused() -> Result<(), LinkError> {
        let (a, b) = (StaticKey::new(&ident(1))?, StaticKey::new(&ident(2))?);
        let someone_else = ident(3).node_id();
        let (i, m1) = Initiator::start(&a, someone_else)?;
        let (_, m2) = Responder::respond(&b, &m1)?;
        let err = i.finish(&m2).err();
        assert!(
            matches!(err, Some(LinkError::WrongPeer { expected, got })
                if expected == someone_else && got == b.node_id()),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn garbage_is_refused() -> Result<(), LinkError> {
        let b = StaticKey::new(&ident(2))?;
        assert!(Responder::respond(&b, &[1, 2, 3]).is_err());
        let a = StaticKey::new(&ident(1))?;
        let (i, _) = Initiator::start(&a, b.node_id())?;
        assert!(i.finish(&[0u8; 150]).is_err());
        Ok(())
    }
}
