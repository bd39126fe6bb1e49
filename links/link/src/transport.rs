//! AES-256-GCM for link traffic with explicit 64-bit nonces (packet
//! numbers), so datagram links can open packets in any order. ring's
//! implementation (the fastest here, see docs/benchmarks.md).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::error::LinkError;

/// Tag bytes appended to every sealed message.
pub const TAG_LEN: usize = 16;

fn nonce(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(b)
}

fn key(k: &[u8; 32]) -> Result<LessSafeKey, LinkError> {
    UnboundKey::new(&AES_256_GCM, k)
        .map(LessSafeKey::new)
        .map_err(|_| LinkError::Handshake("bad session key"))
}

/// Seals outgoing messages.
pub struct SealKey(LessSafeKey);

impl SealKey {
    /// From a raw key.
    pub fn new(k: &[u8; 32]) -> Result<SealKey, LinkError> {
        key(k).map(SealKey)
    }

    /// Encrypts `buf` in place and appends the tag. Every `n` must be used
    /// once.
    pub fn seal(&self, n: u64, buf: &mut Vec<u8>) -> Result<(), LinkError> {
        self.seal_with_aad(n, &[], buf)
    }

    /// Seals `buf[start..]` in place and appends the tag, leaving
    /// `buf[..start]` (e.g. a clear length prefix) as it is.
    pub fn seal_from(&self, n: u64, buf: &mut Vec<u8>, start: usize) -> Result<(), LinkError> {
        self.seal_tail(n, buf, start, false)
    }

    /// Like [`Self::seal_from`], with the clear prefix `buf[..start]` (a
    /// packet header) authenticated as associated data. No copy, no
    /// allocation: the datagram is sealed where it was built.
    pub fn seal_after_header(
        &self,
        n: u64,
        buf: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), LinkError> {
        self.seal_tail(n, buf, start, true)
    }

    fn seal_tail(
        &self,
        n: u64,
        buf: &mut Vec<u8>,
        start: usize,
        header_is_aad: bool,
    ) -> Result<(), LinkError> {
        if start > buf.len() {
            return Err(LinkError::BadPacket("seal"));
        }
        let (head, body) = buf.split_at_mut(start);
        let aad = if header_is_aad { &head[..] } else { &[][..] };
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce(n), Aad::from(aad), body)
            .map_err(|_| LinkError::BadPacket("seal"))?;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// [`Self::seal`] with associated data (e.g. a clear packet header).
    pub fn seal_with_aad(&self, n: u64, aad: &[u8], buf: &mut Vec<u8>) -> Result<(), LinkError> {
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce(n), Aad::from(aad), buf)
            .map_err(|_| LinkError::BadPacket("seal"))?;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }
}

/// Opens incoming messages.
pub struct OpenKey(LessSafeKey);

impl OpenKey {
    /// From a raw key.
    pub fn new(k: &[u8; 32]) -> Result<OpenKey, LinkError> {
        key(k).map(OpenKey)
    }

    /// Checks and decrypts `buf` (ciphertext and tag) in place; returns the
    /// plaintext.
    pub fn open<'a>(&self, n: u64, buf: &'a mut [u8]) -> Result<&'a mut [u8], LinkError> {
        self.open_with_aad(n, &[], buf)
    }

    /// [`Self::open`] with associated data.
    pub fn open_with_aad<'a>(
        &self,
        n: u64,
        aad: &[u8],
        buf: &'a mut [u8],
    ) -> Result<&'a mut [u8], LinkError> {
        self.0
            .open_in_place(nonce(n), Aad::from(aad), buf)
            .map_err(|_| LinkError::BadPacket("authentication failed"))
    }
}
