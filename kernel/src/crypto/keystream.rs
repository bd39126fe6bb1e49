//! AES-128 in counter mode, laid out exactly as GCM's own keystream.
//!
//! The client must predict the bytes each relay appends (its padding) as they
//! look after later relays decrypt them, so it needs the GCM keystream of those
//! relays at given offsets: block `j` of the keystream for a cell counter is
//! `AES(key, nonce_for(counter) || BE32(2 + j))`, as GCM (NIST SP 800-38D,
//! 96-bit IV) defines it. Inbound layers use the same function with their own
//! keys; the outbound padding PRF is a single block under its own key.
//!
//! Whole-cell keystreams (every inbound layer: one per relay per cell, three
//! per cell at a 3-hop client) go through [`CellStream`], which uses aws-lc's
//! AES-CTR (eight-way AES-NI, one call per cell) when the `aws-lc` feature is
//! on; see docs/benchmarks.md for the measured gain over the `aes` crate.
//! The short batched calls (pads, the client's filler) stay on [`Keystream`].

use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use aes::Aes128Enc;

use super::aead::{nonce_for, KEY_LEN};

/// Blocks encrypted per batch.
const CHUNK_BLOCKS: usize = 8;

/// One AES block, as the batch functions take them.
pub type Block = aes::Block;

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

    /// The GCM counter block for byte `16 * block` of a cell's keystream.
    pub fn counter_block(counter: u64, block: usize) -> Block {
        // `nonce_for(counter) || BE32(2 + block)` is the big-endian form of
        // this number (four zero bytes, the counter, the block counter):
        // one byte swap instead of building the bytes piecewise, which
        // cost more than the AES when the client builds its filler.
        let n = (u128::from(counter) << 32) | u128::from((block as u32).wrapping_add(2));
        Block::from(n.to_be_bytes())
    }

    /// The PRF input block for a counter: `[0; 4] || BE64(counter) || [0; 4]`.
    pub fn prf_input(counter: u64) -> Block {
        Block::from((u128::from(counter) << 32).to_be_bytes())
    }

    /// Encrypts `blocks` in place in one AES call: counter or PRF input
    /// blocks built by the caller, as many as it can batch (a call costs
    /// more than a block, and AES-NI pipelines eight at a time).
    pub fn encrypt(&self, blocks: &mut [Block]) {
        self.0.encrypt_blocks(blocks);
    }

    /// PRF blocks for `out.len()` consecutive counters from `first`, in one
    /// AES call per 16 (a small array, so short batches stay cheap).
    pub fn prf_many(&self, first: u64, out: &mut [[u8; 16]]) {
        const CHUNK: usize = 16;
        for chunk_start in (0..out.len()).step_by(CHUNK) {
            let n = (out.len() - chunk_start).min(CHUNK);
            let mut blocks = [Block::default(); CHUNK];
            for (k, b) in blocks[..n].iter_mut().enumerate() {
                *b = Self::prf_input(first + (chunk_start + k) as u64);
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

/// The keystream of one inbound layer, XORed over whole cells.
///
/// Same bytes as [`Keystream::xor_at`] (checked by the tests below); only
/// the AES implementation differs. GCM's block counter wraps in its low 32
/// bits while CTR's carries into the nonce, but a cell uses blocks 2 to 33,
/// so the two never differ.
pub enum CellStream {
    /// aws-lc's AES-CTR.
    #[cfg(feature = "aws-lc")]
    AwsLc(aws_lc_rs::cipher::EncryptingKey, [u8; KEY_LEN]),
    /// The portable `aes` crate.
    Portable(Keystream),
}

impl CellStream {
    /// A layer for one key.
    pub fn new(key: &[u8; KEY_LEN]) -> CellStream {
        #[cfg(feature = "aws-lc")]
        {
            use aws_lc_rs::cipher::{EncryptingKey, UnboundCipherKey, AES_128};
            // Fails only for a key of the wrong length, which the type rules out.
            if let Ok(k) = UnboundCipherKey::new(&AES_128, key).and_then(EncryptingKey::ctr) {
                return CellStream::AwsLc(k, *key);
            }
        }
        CellStream::Portable(Keystream::new(key))
    }

    /// XORs into `data` the GCM keystream for `counter` from the start of
    /// the GCM plaintext: [`Keystream::xor_at`] at offset 0.
    pub fn xor(&self, counter: u64, data: &mut [u8]) {
        match self {
            #[cfg(feature = "aws-lc")]
            CellStream::AwsLc(k, key) => {
                use aws_lc_rs::cipher::EncryptionContext;
                use aws_lc_rs::iv::FixedLength;
                let iv: [u8; 16] = Keystream::counter_block(counter, 0).into();
                let iv = EncryptionContext::Iv128(FixedLength::from(iv));
                if k.less_safe_encrypt(data, iv).is_err() {
                    // aws-lc refuses (before touching `data`) only an IV
                    // of the wrong kind for the mode, which this is not;
                    // stay correct anyway.
                    Keystream::new(key).xor_at(counter, 0, data);
                }
            }
            CellStream::Portable(ks) => ks.xor_at(counter, 0, data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::aead::{CellAead, DefaultAead};

    #[test]
    fn batched_forms_match_single_calls() {
        let ks = Keystream::new(&[5u8; 16]);
        // Counter blocks encrypted in one call are the keystream.
        let mut blocks: Vec<Block> = (0..7)
            .flat_map(|c| (28..31).map(move |j| Keystream::counter_block(100 + c, j)))
            .collect();
        ks.encrypt(&mut blocks);
        for c in 0..7 {
            let mut one = [0u8; 48];
            ks.xor_at(100 + c as u64, 28 * 16, &mut one);
            let many: Vec<u8> = blocks[3 * c..3 * c + 3].iter().flatten().copied().collect();
            assert_eq!(&many[..], &one[..]);
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

    #[test]
    fn cell_stream_matches_the_portable_keystream() {
        let key = [7u8; 16];
        let (fast, portable) = (CellStream::new(&key), Keystream::new(&key));
        #[cfg(feature = "aws-lc")]
        assert!(matches!(fast, CellStream::AwsLc(..)));
        let pattern: Vec<u8> = (0..509u32).map(|i| (i * 31 % 251) as u8).collect();
        for counter in [0, 1, 77, u64::from(u32::MAX) + 5] {
            for len in [509, 493, 17, 16, 1] {
                let mut a = pattern[..len].to_vec();
                let mut b = a.clone();
                fast.xor(counter, &mut a);
                portable.xor_at(counter, 0, &mut b);
                assert_eq!(a, b, "counter {counter}, length {len}");
                assert_ne!(a, &pattern[..len], "nothing XORed, length {len}");
            }
        }
    }
}
