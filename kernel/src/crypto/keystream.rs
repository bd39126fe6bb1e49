//! AES-128 in counter mode, laid out exactly as GCM's own keystream.
//!
//! The client must predict the bytes each relay appends (its padding) as they
//! look after later relays decrypt them, so it needs the GCM keystream of those
//! relays at given offsets: block `j` of the keystream for a cell counter is
//! `AES(key, nonce_for(counter) || BE32(2 + j))`, as GCM (NIST SP 800-38D,
//! 96-bit IV) defines it. Inbound layers use the same function with their own
//! keys; the outbound padding PRF is a single block under its own key.

use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use aes::Aes128Enc;

use super::aead::{nonce_for, KEY_LEN};

/// Blocks needed to cover a cell body.
const MAX_BLOCKS: usize = 33;

/// An AES-128 encryption key schedule used as a keystream generator.
#[derive(Clone)]
pub struct Keystream(Aes128Enc);

impl Keystream {
    /// A generator for one key.
    pub fn new(key: &[u8; KEY_LEN]) -> Keystream {
        Keystream(Aes128Enc::new(GenericArray::from_slice(key)))
    }

    /// XORs into `data` the GCM keystream for `counter`, starting at byte
    /// `offset` of the GCM plaintext. `offset + data.len()` is at most 512.
    pub fn xor_at(&self, counter: u64, offset: usize, data: &mut [u8]) {
        if data.is_empty() {
            return;
        }
        let first = offset / 16;
        let last = (offset + data.len()).div_ceil(16);
        let count = (last - first).min(MAX_BLOCKS);
        let nonce = nonce_for(counter);
        let mut blocks = [GenericArray::default(); MAX_BLOCKS];
        for (j, block) in blocks.iter_mut().take(count).enumerate() {
            block[..12].copy_from_slice(&nonce);
            block[12..].copy_from_slice(&(2 + (first + j) as u32).to_be_bytes());
        }
        self.0.encrypt_blocks(&mut blocks[..count]);
        let skip = offset % 16;
        let stream = blocks[..count].iter().flat_map(|b| b.iter()).skip(skip);
        for (d, k) in data.iter_mut().zip(stream) {
            *d ^= k;
        }
    }

    /// One block of PRF output for a counter (used as relay padding).
    pub fn prf_block(&self, counter: u64) -> [u8; 16] {
        let mut block = GenericArray::default();
        block[4..12].copy_from_slice(&counter.to_be_bytes());
        self.0.encrypt_block(&mut block);
        block.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::aead::{CellAead, DefaultAead};

    #[test]
    fn matches_gcm_keystream_at_any_offset() -> Result<(), crate::error::CryptoError> {
        let key = [3u8; 16];
        let gcm = DefaultAead::new(&key)?;
        let ks = Keystream::new(&key);
        let mut zeros = [0u8; 493];
        gcm.seal(9, &mut zeros)?; // ciphertext of zeros = keystream
        for (off, len) in [(0, 493), (5, 16), (477, 16), (461, 32), (13, 1), (492, 1)] {
            let mut out = vec![0u8; len];
            ks.xor_at(9, off, &mut out);
            assert_eq!(&out[..], &zeros[off..off + len], "offset {off}");
        }
        Ok(())
    }
}
