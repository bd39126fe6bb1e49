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

/// Blocks encrypted per batch.
const CHUNK_BLOCKS: usize = 8;

/// An AES-128 encryption key schedule used as a keystream generator.
#[derive(Clone)]
pub struct Keystream(Aes128Enc);

impl Keystream {
    /// A generator for one key.
    pub fn new(key: &[u8; KEY_LEN]) -> Keystream {
        Keystream(Aes128Enc::new(GenericArray::from_slice(key)))
    }

    /// XORs into `data` the GCM keystream for `counter`, starting at byte
    /// `offset` of the GCM plaintext. Any offset and length (the 32-bit block counter wraps after 64 GiB).
    pub fn xor_at(&self, counter: u64, offset: usize, data: &mut [u8]) {
        let nonce = nonce_for(counter);
        let mut block_index = offset / 16;
        let mut skip = offset % 16;
        let mut rest = data;
        // Eight blocks at a time: AES-NI pipelines eight, and a small array
        // keeps short calls (the filler's 16 to 112 bytes) cheap.
        while !rest.is_empty() {
            let want = (skip + rest.len()).div_ceil(16).min(CHUNK_BLOCKS);
            let mut blocks = [GenericArray::default(); CHUNK_BLOCKS];
            for (j, block) in blocks.iter_mut().take(want).enumerate() {
                block[..12].copy_from_slice(&nonce);
                block[12..].copy_from_slice(&(2 + (block_index + j) as u32).to_be_bytes());
            }
            self.0.encrypt_blocks(&mut blocks[..want]);
            block_index += want;
            for block in &blocks[..want] {
                let ks = &block[skip..];
                let n = ks.len().min(rest.len());
                let (head, tail) = std::mem::take(&mut rest).split_at_mut(n);
                if n == 16 {
                    // Whole block: one 128-bit XOR (a byte-wise iterator
                    // chain here cost 1.6 us per cell in the benches).
                    let mut a = [0u8; 16];
                    a.copy_from_slice(head);
                    let mut b = [0u8; 16];
                    b.copy_from_slice(ks);
                    head.copy_from_slice(
                        &(u128::from_ne_bytes(a) ^ u128::from_ne_bytes(b)).to_ne_bytes(),
                    );
                } else {
                    for (d, k) in head.iter_mut().zip(ks) {
                        *d ^= k;
                    }
                }
                rest = tail;
                skip = 0;
            }
        }
    }

    /// Keystream bytes `offset..offset + len` for `count` consecutive counters
    /// from `first`, written one after another into `out` (`count * len`
    /// bytes), with as few AES calls as possible: per-call dispatch costs
    /// more than a block, so the client precomputes its filler this way.
    pub fn stream_many(&self, first: u64, count: usize, offset: usize, len: usize, out: &mut [u8]) {
        const BATCH_BLOCKS: usize = 64;
        let skip = offset % 16;
        let per = (skip + len).div_ceil(16).max(1);
        if len == 0 || per > BATCH_BLOCKS {
            return;
        }
        let per_call = BATCH_BLOCKS / per;
        let mut done = 0;
        while done < count {
            let n = per_call.min(count - done);
            let mut blocks = [GenericArray::default(); BATCH_BLOCKS];
            for c in 0..n {
                let nonce = nonce_for(first + (done + c) as u64);
                for j in 0..per {
                    let b = &mut blocks[c * per + j];
                    b[..12].copy_from_slice(&nonce);
                    b[12..].copy_from_slice(&(2 + (offset / 16 + j) as u32).to_be_bytes());
                }
            }
            self.0.encrypt_blocks(&mut blocks[..n * per]);
            for c in 0..n {
                let dst = &mut out[(done + c) * len..(done + c + 1) * len];
                let mut at = 0;
                for (j, b) in blocks[c * per..(c + 1) * per].iter().enumerate() {
                    let from = if j == 0 { skip } else { 0 };
                    let take = (16 - from).min(len - at);
                    dst[at..at + take].copy_from_slice(&b[from..from + take]);
                    at += take;
                }
            }
            done += n;
        }
    }

    /// PRF blocks for `out.len()` consecutive counters from `first`, in one
    /// AES call.
    pub fn prf_many(&self, first: u64, out: &mut [[u8; 16]]) {
        for chunk_start in (0..out.len()).step_by(64) {
            let n = (out.len() - chunk_start).min(64);
            let mut blocks = [GenericArray::default(); 64];
            for (k, b) in blocks[..n].iter_mut().enumerate() {
                b[4..12].copy_from_slice(&(first + (chunk_start + k) as u64).to_be_bytes());
            }
            self.0.encrypt_blocks(&mut blocks[..n]);
            for (o, b) in out[chunk_start..chunk_start + n]
                .iter_mut()
                .zip(&blocks[..n])
            {
                o.copy_from_slice(b);
            }
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
    fn batched_forms_match_single_calls() {
        let ks = Keystream::new(&[5u8; 16]);
        let mut many = vec![0u8; 7 * 37];
        ks.stream_many(100, 7, 461, 37, &mut many);
        for c in 0..7 {
            let mut one = [0u8; 37];
            ks.xor_at(100 + c as u64, 461, &mut one);
            assert_eq!(&many[c * 37..(c + 1) * 37], &one[..]);
        }
        let mut prfs = [[0u8; 16]; 70];
        ks.prf_many(9, &mut prfs);
        for (k, p) in prfs.iter().enumerate() {
            assert_eq!(*p, ks.prf_block(9 + k as u64));
        }
    }

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
