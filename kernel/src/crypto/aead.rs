//! The per-hop AEAD (AES-128-GCM) behind one small trait.
//!
//! Two backends implement the same standard GCM: ring (runtime-dispatched
//! assembly that stitches AES and GHASH) and RustCrypto's `aes-gcm`. Which is
//! faster depends on the build (generic x86-64 vs `target-cpu=native`), so it
//! is a cargo feature chosen by benchmark (`ring-backend`, on by default; see
//! docs/benchmarks.md). Both produce identical bytes, which a test checks.
//!
//! Nonces are never sent: each key has its own cell counter, and the 96-bit
//! nonce is four zero bytes followed by the counter, big-endian.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::KeyInit;

use crate::error::CryptoError;

/// AES-128 key length.
pub const KEY_LEN: usize = 16;
/// GCM tag length.
pub const TAG_LEN: usize = 16;

/// The 96-bit GCM nonce for a cell counter.
pub fn nonce_for(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// AES-128-GCM with detached tags, in place, no associated data.
pub trait CellAead: Send + Sync + Sized {
    /// A cipher for one key.
    fn new(key: &[u8; KEY_LEN]) -> Result<Self, CryptoError>;
    /// Encrypts `data` in place under the counter's nonce; returns the tag.
    fn seal(&self, counter: u64, data: &mut [u8]) -> Result<[u8; TAG_LEN], CryptoError>;
    /// Checks `tag` and decrypts `data` in place. On failure the contents of
    /// `data` are unspecified (ring clears them): callers tear the circuit down.
    fn open(&self, counter: u64, data: &mut [u8], tag: &[u8; TAG_LEN]) -> Result<(), CryptoError>;
    /// Checks `tag` over the ciphertext at `data[shift..]` and writes its
    /// plaintext to `data[..data.len() - shift]`: what a relay does to every
    /// cell it forwards (the tag in front goes, the plaintext moves up).
    /// This default opens, then moves the bytes; a backend that can decrypt
    /// to a lower offset does both in one pass. Failure leaves `data`
    /// unspecified, as for [`Self::open`].
    fn open_shifted(
        &self,
        counter: u64,
        data: &mut [u8],
        shift: usize,
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CryptoError> {
        let sealed = data.get_mut(shift..).ok_or(CryptoError::BadLength)?;
        self.open(counter, sealed, tag)?;
        data.copy_within(shift.., 0);
        Ok(())
    }
}

/// ring's AES-128-GCM.
///
/// On a cache-line boundary: ring's AES key schedule is only 4-byte
/// aligned, and where it lands moved the client's 3-hop wrap between 549
/// and 604 ns from one heap layout to the next; aligned, 543-550 ns
/// (paired bench over `RELAY_BENCH_HEAP_SHIFT`s, docs/benchmarks.md).
#[repr(align(64))]
pub struct RingGcm(ring::aead::LessSafeKey);

impl CellAead for RingGcm {
    fn new(key: &[u8; KEY_LEN]) -> Result<Self, CryptoError> {
        let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, key)
            .map_err(|_| CryptoError::BadKey)?;
        Ok(RingGcm(ring::aead::LessSafeKey::new(unbound)))
    }

    fn seal(&self, counter: u64, data: &mut [u8]) -> Result<[u8; TAG_LEN], CryptoError> {
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce_for(counter));
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::empty(), data)
            .map_err(|_| CryptoError::Seal)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    fn open(&self, counter: u64, data: &mut [u8], tag: &[u8; TAG_LEN]) -> Result<(), CryptoError> {
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce_for(counter));
        self.0
            .open_in_place_separate_tag(
                nonce,
                ring::aead::Aad::empty(),
                ring::aead::Tag::from(*tag),
                data,
                0..,
            )
            .map(|_| ())
            .map_err(|_| CryptoError::Auth)
    }

    fn open_shifted(
        &self,
        counter: u64,
        data: &mut [u8],
        shift: usize,
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CryptoError> {
        if shift > data.len() {
            return Err(CryptoError::BadLength);
        }
        // ring decrypts `data[shift..]` to the front of `data` as it goes,
        // which saves the separate 493-byte move a forwarded cell needed.
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce_for(counter));
        self.0
            .open_in_place_separate_tag(
                nonce,
                ring::aead::Aad::empty(),
                ring::aead::Tag::from(*tag),
                data,
                shift..,
            )
            .map(|_| ())
            .map_err(|_| CryptoError::Auth)
    }
}

/// RustCrypto's AES-128-GCM.
pub struct RustCryptoGcm(aes_gcm::Aes128Gcm);

impl CellAead for RustCryptoGcm {
    fn new(key: &[u8; KEY_LEN]) -> Result<Self, CryptoError> {
        aes_gcm::Aes128Gcm::new_from_slice(key)
            .map(RustCryptoGcm)
            .map_err(|_| CryptoError::BadKey)
    }

    fn seal(&self, counter: u64, data: &mut [u8]) -> Result<[u8; TAG_LEN], CryptoError> {
        let nonce = nonce_for(counter);
        let tag = self
            .0
            .encrypt_in_place_detached((&nonce).into(), b"", data)
            .map_err(|_| CryptoError::Seal)?;
        Ok(tag.into())
    }

    fn open(&self, counter: u64, data: &mut [u8], tag: &[u8; TAG_LEN]) -> Result<(), CryptoError> {
        let nonce = nonce_for(counter);
        self.0
            .decrypt_in_place_detached((&nonce).into(), b"", data, tag.into())
            .map_err(|_| CryptoError::Auth)
    }
}

/// The backend the kernel uses, chosen at build time.
#[cfg(feature = "ring-backend")]
pub type DefaultAead = RingGcm;
/// The backend the kernel uses, chosen at build time.
#[cfg(not(feature = "ring-backend"))]
pub type DefaultAead = RustCryptoGcm;

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<A: CellAead>() -> Result<([u8; 509], [u8; 16]), CryptoError> {
        let key = [7u8; 16];
        let a = A::new(&key)?;
        let mut data = [0u8; 509];
        for (i, b) in data.iter_mut().enumerate() {
            *b = i as u8;
        }
        let tag = a.seal(42, &mut data)?;
        let sealed = data;
        a.open(42, &mut data, &tag)?;
        assert!(data.iter().enumerate().all(|(i, b)| *b == i as u8));
        let mut wrong = sealed;
        assert!(a.open(43, &mut wrong, &tag).is_err());
        let mut flipped = sealed;
        flipped[100] ^= 1;
        assert!(a.open(42, &mut flipped, &tag).is_err());
        Ok((sealed, tag))
    }

    /// `open_shifted` equals `open` then a move, and still checks the tag.
    fn shifted<A: CellAead>() -> Result<[u8; 509], CryptoError> {
        let a = A::new(&[9u8; 16])?;
        let mut cell = [0u8; 509];
        for (i, b) in cell.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(3);
        }
        let tag = a.seal(5, &mut cell[16..])?;
        let sealed = cell;
        a.open_shifted(5, &mut cell, 16, &tag)?;
        let mut want = sealed;
        a.open(5, &mut want[16..], &tag)?;
        assert_eq!(&cell[..493], &want[16..]);
        let mut flipped = sealed;
        flipped[300] ^= 4;
        assert!(a.open_shifted(5, &mut flipped, 16, &tag).is_err());
        assert!(a.open_shifted(6, &mut sealed.clone(), 16, &tag).is_err());
        assert!(a.open_shifted(5, &mut sealed.clone(), 510, &tag).is_err());
        Ok(cell)
    }

    #[test]
    fn shifted_open_is_open_then_move() -> Result<(), CryptoError> {
        let r = shifted::<RingGcm>()?;
        let c = shifted::<RustCryptoGcm>()?;
        assert_eq!(&r[..493], &c[..493]);
        Ok(())
    }

    #[test]
    fn backends_agree_and_detect_tampering() -> Result<(), CryptoError> {
        let r = round_trip::<RingGcm>()?;
        let c = round_trip::<RustCryptoGcm>()?;
        assert_eq!(r.0, c.0);
        assert_eq!(r.1, c.1);
        Ok(())
    }
}
