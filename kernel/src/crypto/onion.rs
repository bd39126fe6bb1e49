//! Onion layers: one AES-128-GCM layer per hop, per-hop tags, and
//! Sphinx-style deterministic padding so that every cell stays 509 bytes of
//! body and no relay can tell its position from what it sees.
//!
//! Outbound (client to the circuit's last hop), a hop receives
//! `X = tag || C` (16 + 493 bytes). It opens `C` with its forward key and
//! counter; if it forwards, the next hop gets `P || pad`, where `P` is the 493
//! plaintext bytes and `pad` is one PRF block under the hop's padding key. The
//! client predicts every pad and the way later hops transform it (the
//! "filler"), so it can compute the tag each hop checks. A message for hop `d`
//! therefore has `493 - 16 (d - 1)` bytes of room.
//!
//! Inbound (last hop to client), only the last hop authenticates: it seals the
//! 493-byte message with its backward seal key and puts the tag in front. Every
//! other hop XORs a keystream over the whole 509-byte body. The client peels
//! those layers and opens the seal, so inbound room does not depend on the path
//! length and the last hop need not know it. docs/protocol.md gives the
//! argument for each security property.

use super::aead::{CellAead, DefaultAead, KEY_LEN, TAG_LEN};
use super::keystream::{Block, CellStream, Keystream};
use crate::cell::BODY_LEN;
use crate::error::CryptoError;

/// Bytes under one hop's seal: the body less one tag.
pub const SEALED_LEN: usize = BODY_LEN - TAG_LEN;
/// Longest path.
pub const MAX_HOPS: usize = 8;
/// Bytes a message to the client may use (at `body[16..]`), any path length.
pub const INBOUND_ROOM: usize = SEALED_LEN;

/// Bytes a message to hop `dest` (1-based) may use, at `body[16..]`.
pub const fn outbound_room(dest: usize) -> usize {
    SEALED_LEN - TAG_LEN * (dest - 1)
}

/// Bytes of key material the handshake derives for one hop.
pub const KEY_MATERIAL_LEN: usize = 4 * KEY_LEN;

/// The four keys of one hop, as derived by the handshake.
pub struct HopKeys {
    /// Forward AEAD key.
    pub forward: [u8; KEY_LEN],
    /// Forward padding PRF key.
    pub pad: [u8; KEY_LEN],
    /// Backward layer (keystream) key.
    pub back_layer: [u8; KEY_LEN],
    /// Backward seal (AEAD) key, used when this hop originates a message.
    pub back_seal: [u8; KEY_LEN],
}

impl HopKeys {
    /// Splits 64 bytes of key material in order: forward, pad, back layer, back seal.
    pub fn from_material(m: &[u8; KEY_MATERIAL_LEN]) -> HopKeys {
        let mut k = [[0u8; KEY_LEN]; 4];
        for (i, key) in k.iter_mut().enumerate() {
            key.copy_from_slice(&m[i * KEY_LEN..(i + 1) * KEY_LEN]);
        }
        HopKeys {
            forward: k[0],
            pad: k[1],
            back_layer: k[2],
            back_seal: k[3],
        }
    }
}

impl Drop for HopKeys {
    fn drop(&mut self) {
        // Best effort: the live key schedules hold the same secrets.
        self.forward = [0; KEY_LEN];
        self.pad = [0; KEY_LEN];
        self.back_layer = [0; KEY_LEN];
        self.back_seal = [0; KEY_LEN];
    }
}

fn split_tag(body: &mut [u8]) -> Result<([u8; TAG_LEN], &mut [u8]), CryptoError> {
    if body.len() != BODY_LEN {
        return Err(CryptoError::BadLength);
    }
    let (tag, rest) = body.split_at_mut(TAG_LEN);
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(tag);
    Ok((t, rest))
}

/// A relay's crypto state for one circuit.
pub struct RelayHop {
    forward: DefaultAead,
    pad: Keystream,
    back_layer: CellStream,
    back_seal: DefaultAead,
    forward_ctr: u64,
    back_layer_ctr: u64,
    back_seal_ctr: u64,
    /// Pads for counters `pads_from..pads_from + PAD_BATCH`, computed in
    /// one AES call (a call per block cost more than the block).
    pads: [[u8; 16]; PAD_BATCH],
    pads_from: Option<u64>,
}

/// Relay pads computed per batch.
const PAD_BATCH: usize = 16;

impl RelayHop {
    /// Relay state from the hop's keys.
    pub fn new(keys: &HopKeys) -> Result<RelayHop, CryptoError> {
        Ok(RelayHop {
            forward: DefaultAead::new(&keys.forward)?,
            pad: Keystream::new(&keys.pad),
            back_layer: CellStream::new(&keys.back_layer),
            back_seal: DefaultAead::new(&keys.back_seal)?,
            forward_ctr: 0,
            back_layer_ctr: 0,
            back_seal_ctr: 0,
            pads: [[0; 16]; PAD_BATCH],
            pads_from: None,
        })
    }

    fn pad_for(&mut self, counter: u64) -> [u8; 16] {
        let from = match self.pads_from {
            Some(f) if (f..f + PAD_BATCH as u64).contains(&counter) => f,
            _ => {
                self.pad.prf_many(counter, &mut self.pads);
                self.pads_from = Some(counter);
                counter
            }
        };
        self.pads[(counter - from) as usize]
    }

    /// Checks and removes this hop's outbound layer. On success the plaintext
    /// is at `body[16..]` and the tag that was checked is returned. Any
    /// change, replay, drop or reorder makes this fail (the counter is part of
    /// the nonce); the caller then tears the circuit down.
    pub fn open_outbound(&mut self, body: &mut [u8]) -> Result<[u8; TAG_LEN], CryptoError> {
        let (tag, sealed) = split_tag(body)?;
        self.forward.open(self.forward_ctr, sealed, &tag)?;
        self.forward_ctr += 1;
        Ok(tag)
    }

    /// [`Self::open_outbound`] and [`Self::prepare_forward`] in one: checks
    /// and removes this hop's layer, decrypting the plaintext straight to
    /// the front of the body, and appends this hop's pad. What a middle
    /// relay does to every cell it forwards. Returns the checked tag.
    pub fn open_forward(&mut self, body: &mut [u8]) -> Result<[u8; TAG_LEN], CryptoError> {
        let (tag, _) = split_tag(body)?;
        self.forward
            .open_shifted(self.forward_ctr, body, TAG_LEN, &tag)?;
        let pad = self.pad_for(self.forward_ctr);
        self.forward_ctr += 1;
        body[SEALED_LEN..].copy_from_slice(&pad);
        Ok(tag)
    }

    /// After [`Self::open_outbound`], turns the body into what the next hop
    /// expects: the plaintext moved to the front and this hop's padding
    /// appended.
    pub fn prepare_forward(&mut self, body: &mut [u8]) {
        if body.len() != BODY_LEN {
            return;
        }
        body.copy_within(TAG_LEN.., 0);
        // The counter was advanced by open_outbound: the cell used ctr - 1.
        let pad = self.pad_for(self.forward_ctr.wrapping_sub(1));
        body[SEALED_LEN..].copy_from_slice(&pad);
    }

    /// Adds this hop's layer to a cell travelling towards the client.
    pub fn layer_inbound(&mut self, body: &mut [u8]) {
        self.back_layer.xor(self.back_layer_ctr, body);
        self.back_layer_ctr += 1;
    }

    /// Seals a message this hop originates towards the client: the message is
    /// at `body[16..]`; the tag goes in front. Returns the tag.
    pub fn seal_inbound(&mut self, body: &mut [u8]) -> Result<[u8; TAG_LEN], CryptoError> {
        if body.len() != BODY_LEN {
            return Err(CryptoError::BadLength);
        }
        let tag = self
            .back_seal
            .seal(self.back_seal_ctr, &mut body[TAG_LEN..])?;
        self.back_seal_ctr += 1;
        body[..TAG_LEN].copy_from_slice(&tag);
        Ok(tag)
    }
}

/// The client's state for one hop: the relay's keys plus what the client
/// needs to predict that relay's padding.
struct ClientHop {
    forward: DefaultAead,
    forward_stream: Keystream,
    pad: Keystream,
    back_layer: CellStream,
    back_seal: DefaultAead,
    forward_ctr: u64,
    back_layer_ctr: u64,
    back_seal_ctr: u64,
}

/// The client's scratch buffer: a body and all outer tags.
const SCRATCH_LEN: usize = BODY_LEN + MAX_FILLER;

/// Cells whose filler the client computes at once.
const FILLER_BATCH: usize = 16;
/// Longest filler: 16 bytes for each hop but the last.
const MAX_FILLER: usize = TAG_LEN * (MAX_HOPS - 1);

/// The client's onion state for a whole path.
#[derive(Default)]
pub struct ClientOnion {
    hops: Vec<ClientHop>,
    /// Precomputed plaintext tails for the next cells (the filler XOR the
    /// last hop's keystream), `tails[k]` for the cell `k` after
    /// `tails_from` (the last hop's counter then). The filler depends only on
    /// keys and counters, so it is computed in batches: AES calls of a
    /// few blocks each dominated the wrap otherwise.
    tails: Vec<[u128; MAX_HOPS - 1]>,
    tails_from: Option<u64>,
    /// Counter and PRF blocks for `refill_tails` (reused).
    blocks: Vec<Block>,
    /// Room for a body and all outer tags (reused, so not zeroed per cell).
    scratch: Vec<u8>,
}

impl ClientOnion {
    /// An empty path.
    pub fn new() -> ClientOnion {
        ClientOnion {
            // Grown one hop at a time (see `push_hop`): a hop's state is
            // about 3 KiB, so room for MAX_HOPS up front was 26 KiB per
            // client circuit, most of a client's memory with 1,000 circuits.
            hops: Vec::new(),
            tails: Vec::new(),
            tails_from: None,
            blocks: Vec::new(),
            scratch: vec![0; SCRATCH_LEN],
        }
    }

    /// Hops in the path.
    pub fn len(&self) -> usize {
        self.hops.len()
    }

    /// Whether no hop is established yet.
    pub fn is_empty(&self) -> bool {
        self.hops.is_empty()
    }

    /// Appends a hop (after its handshake completes).
    pub fn push_hop(&mut self, keys: &HopKeys) -> Result<(), CryptoError> {
        if self.hops.len() >= MAX_HOPS {
            return Err(CryptoError::TooManyHops);
        }
        self.hops.reserve_exact(1);
        self.hops.push(ClientHop {
            forward: DefaultAead::new(&keys.forward)?,
            forward_stream: Keystream::new(&keys.forward),
            pad: Keystream::new(&keys.pad),
            back_layer: CellStream::new(&keys.back_layer),
            back_seal: DefaultAead::new(&keys.back_seal)?,
            forward_ctr: 0,
            back_layer_ctr: 0,
            back_seal_ctr: 0,
        });
        self.tails_from = None;
        Ok(())
    }

    /// Drops the last hop (after a truncation).
    pub fn pop_hop(&mut self) {
        self.hops.pop();
        self.tails_from = None;
    }

    /// Computes the tails of the next FILLER_BATCH cells: per hop, one AES
    /// call for the pads of all those cells and one for the keystream
    /// blocks that meet the filler. The tails are kept as big-endian 128-bit
    /// numbers, so the keystream bytes (which start 13 bytes into a block,
    /// as 493 is not a multiple of 16) are two shifts per 16 bytes; byte
    /// loops here cost more than the AES itself. With blocks built in a
    /// reused buffer and no copies out, the filler of a 3-hop path went from
    /// ~40 to ~29 ns per cell (paired bench, 7 AES blocks per cell).
    fn refill_tails(&mut self) {
        // The first filler byte of hop i sits at SEALED_LEN - 16 i, which is
        // SKIP bytes into a keystream block for every i.
        const SKIP: usize = SEALED_LEN % 16;
        const _: () = assert!(SKIP != 0);
        let d = self.hops.len();
        self.tails.resize(FILLER_BATCH, [0; MAX_HOPS - 1]);
        // A hop's keystream share spans at most MAX_HOPS blocks per cell.
        self.blocks
            .resize(FILLER_BATCH * MAX_HOPS, Block::default());
        for (i, hop) in self.hops.iter().enumerate() {
            // What hop i+1 (1-based) receives ends with the 16 i bytes of
            // filler the hops before it appended. It decrypts them with
            // its keystream there (for the last hop: the client must make
            // its ciphertext equal them, so the plaintext tail is the
            // filler XOR that keystream), then appends its own pad.
            if i > 0 {
                let first = (SEALED_LEN - TAG_LEN * i) / 16;
                let per = i + 1;
                let blocks = &mut self.blocks[..FILLER_BATCH * per];
                for (k, cell) in blocks.chunks_exact_mut(per).enumerate() {
                    for (j, b) in cell.iter_mut().enumerate() {
                        *b = Keystream::counter_block(hop.forward_ctr + k as u64, first + j);
                    }
                }
                hop.forward_stream.encrypt(blocks);
                for (t, cell) in self.tails.iter_mut().zip(blocks.chunks_exact(per)) {
                    let mut prev = u128::from_be_bytes(cell[0].into());
                    for (x, b) in t[..i].iter_mut().zip(&cell[1..]) {
                        let next = u128::from_be_bytes((*b).into());
                        *x ^= (prev << (8 * SKIP)) | (next >> (8 * (16 - SKIP)));
                        prev = next;
                    }
                }
            }
            if i + 1 < d {
                let blocks = &mut self.blocks[..FILLER_BATCH];
                for (k, b) in blocks.iter_mut().enumerate() {
                    *b = Keystream::prf_input(hop.forward_ctr + k as u64);
                }
                hop.pad.encrypt(blocks);
                for (t, b) in self.tails.iter_mut().zip(blocks.iter()) {
                    t[i] = u128::from_be_bytes((*b).into());
                }
            }
        }
        self.tails_from = Some(self.hops[d - 1].forward_ctr);
    }

    /// Wraps a message for the last hop. The caller has written the message
    /// into `body[16..16 + outbound_room(len)]`; the rest of the body is
    /// overwritten. Returns the tag the last hop will check (echoed in its
    /// SENDMEs).
    pub fn wrap_outbound(&mut self, body: &mut [u8]) -> Result<[u8; TAG_LEN], CryptoError> {
        let d = self.hops.len();
        if d == 0 {
            return Err(CryptoError::NoHops);
        }
        if body.len() != BODY_LEN {
            return Err(CryptoError::BadLength);
        }
        // The last 16 (d - 1) bytes hop d will receive are the filler that
        // hops 1..d-1 produce (their pads, decrypted by the hops after them).
        // Make hop d's ciphertext end with it: the plaintext tail is the
        // filler XOR hop d's keystream there, precomputed per batch.
        let fill_len = TAG_LEN * (d - 1);
        if fill_len > 0 {
            let ctr = self.hops[d - 1].forward_ctr;
            let k = match self.tails_from {
                Some(from) if (from..from + FILLER_BATCH as u64).contains(&ctr) => ctr - from,
                _ => {
                    self.refill_tails();
                    0
                }
            } as usize;
            let tail = &self.tails[k][..d - 1];
            for (dst, t) in body[BODY_LEN - fill_len..].chunks_exact_mut(16).zip(tail) {
                dst.copy_from_slice(&t.to_be_bytes());
            }
        }
        // Seal from the last hop outwards. Each outer hop seals the first
        // 493 bytes of the inner hop's body (its last 16 bytes are the pad
        // the outer hop will regenerate), so in a scratch buffer with room
        // for all tags each seal simply starts 16 bytes earlier: no shifting
        // (the right shifts this replaces were overlapping backward copies,
        // 6% of the wrap in a profile).
        let mut dest_tag = [0u8; TAG_LEN];
        if d == 1 {
            let hop = &mut self.hops[0];
            dest_tag = hop.forward.seal(hop.forward_ctr, &mut body[TAG_LEN..])?;
            body[..TAG_LEN].copy_from_slice(&dest_tag);
        } else {
            if self.scratch.len() < SCRATCH_LEN {
                self.scratch.resize(SCRATCH_LEN, 0);
            }
            let scratch = &mut self.scratch[..SCRATCH_LEN];
            let base = TAG_LEN * (d - 1);
            scratch[base + TAG_LEN..base + BODY_LEN].copy_from_slice(&body[TAG_LEN..]);
            for (k, hop) in self.hops.iter_mut().enumerate().rev() {
                let off = TAG_LEN * k;
                let tag = hop
                    .forward
                    .seal(hop.forward_ctr, &mut scratch[off + TAG_LEN..off + BODY_LEN])?;
                scratch[off..off + TAG_LEN].copy_from_slice(&tag);
                if k + 1 == d {
                    dest_tag = tag;
                }
            }
            body.copy_from_slice(&scratch[..BODY_LEN]);
        }
        for hop in &mut self.hops {
            hop.forward_ctr += 1;
        }
        Ok(dest_tag)
    }

    /// Unwraps a cell from the client's view of the path, expecting it to be
    /// originated by hop `origin` (1-based; normally the last). On success the
    /// message is at `body[16..]` and the checked tag is returned; on failure
    /// no counter moves and the body is unspecified.
    pub fn unwrap_inbound_from(
        &mut self,
        origin: usize,
        body: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CryptoError> {
        if origin == 0 || origin > self.hops.len() {
            return Err(CryptoError::NoHops);
        }
        if body.len() != BODY_LEN {
            return Err(CryptoError::BadLength);
        }
        for hop in &self.hops[..origin - 1] {
            hop.back_layer.xor(hop.back_layer_ctr, body);
        }
        let (tag, sealed) = split_tag(body)?;
        let hop = &self.hops[origin - 1];
        hop.back_seal.open(hop.back_seal_ctr, sealed, &tag)?;
        for hop in &mut self.hops[..origin - 1] {
            hop.back_layer_ctr += 1;
        }
        self.hops[origin - 1].back_seal_ctr += 1;
        Ok(tag)
    }

    /// [`Self::unwrap_inbound_from`] the last hop.
    pub fn unwrap_inbound(&mut self, body: &mut [u8]) -> Result<[u8; TAG_LEN], CryptoError> {
        self.unwrap_inbound_from(self.hops.len(), body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(seed: u8) -> HopKeys {
        let mut m = [0u8; KEY_MATERIAL_LEN];
        for (i, b) in m.iter_mut().enumerate() {
            *b = seed.wrapping_mul(31).wrapping_add(i as u8);
        }
        HopKeys::from_material(&m)
    }

    /// Client and relays for an n-hop path.
    fn path(n: usize) -> Result<(ClientOnion, Vec<RelayHop>), CryptoError> {
        let mut c = ClientOnion::new();
        let mut relays = Vec::new();
        for i in 0..n {
            let k = keys(i as u8 + 1);
            c.push_hop(&k)?;
            relays.push(RelayHop::new(&k)?);
        }
        Ok((c, relays))
    }

    #[test]
    fn outbound_round_trip_every_length() -> Result<(), CryptoError> {
        for n in 1..=MAX_HOPS {
            let (mut c, mut relays) = path(n)?;
            for round in 0..3u8 {
                let mut body = [0u8; BODY_LEN];
                let room = outbound_room(n);
                for (i, b) in body[TAG_LEN..TAG_LEN + room].iter_mut().enumerate() {
                    *b = (i as u8) ^ round;
                }
                let want = body;
                let tag = c.wrap_outbound(&mut body)?;
                for (i, r) in relays.iter_mut().enumerate() {
                    let got = r.open_outbound(&mut body)?;
                    if i + 1 < n {
                        r.prepare_forward(&mut body);
                    } else {
                        assert_eq!(got, tag);
                    }
                }
                assert_eq!(
                    &body[TAG_LEN..TAG_LEN + room],
                    &want[TAG_LEN..TAG_LEN + room],
                    "n={n}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn outbound_across_filler_batches() -> Result<(), CryptoError> {
        // 40 cells cross two filler batches; a hop added mid-way restarts
        // them at other counters.
        for n in [2usize, 3, 8] {
            let (mut c, mut relays) = path(n)?;
            for round in 0..40u32 {
                if round == 20 && n < MAX_HOPS {
                    let k = keys(99);
                    c.push_hop(&k)?;
                    relays.push(RelayHop::new(&k)?);
                }
                let d = relays.len();
                let room = outbound_room(d);
                let mut body = [0u8; BODY_LEN];
                body[TAG_LEN..TAG_LEN + room].fill(round as u8);
                let want = body;
                let tag = c.wrap_outbound(&mut body)?;
                for (i, r) in relays.iter_mut().enumerate() {
                    if i + 1 < d {
                        r.open_forward(&mut body)?;
                    } else {
                        assert_eq!(r.open_outbound(&mut body)?, tag);
                    }
                }
                assert_eq!(body[TAG_LEN..TAG_LEN + room], want[TAG_LEN..TAG_LEN + room]);
            }
        }
        Ok(())
    }

    #[test]
    fn inbound_round_trip_every_length() -> Result<(), CryptoError> {
        for n in 1..=MAX_HOPS {
            let (mut c, mut relays) = path(n)?;
            for round in 0..3u8 {
                let mut body = [round; BODY_LEN];
                let want = body;
                let tag = relays[n - 1].seal_inbound(&mut body)?;
                for r in relays[..n - 1].iter_mut().rev() {
                    r.layer_inbound(&mut body);
                }
                assert_eq!(c.unwrap_inbound(&mut body)?, tag);
                assert_eq!(&body[TAG_LEN..], &want[TAG_LEN..]);
            }
        }
        Ok(())
    }

    #[test]
    fn open_forward_is_open_then_prepare() -> Result<(), CryptoError> {
        let (mut c, _) = path(3)?;
        let mut split = RelayHop::new(&keys(1))?;
        let mut fused = RelayHop::new(&keys(1))?;
        for round in 0..40u8 {
            let mut body = [round; BODY_LEN];
            c.wrap_outbound(&mut body)?;
            let mut other = body;
            let t1 = split.open_outbound(&mut body)?;
            split.prepare_forward(&mut body);
            let t2 = fused.open_forward(&mut other)?;
            assert_eq!((t1, body), (t2, other), "cell {round}");
        }
        // A tampered cell fails and the counter does not move.
        let mut body = [0u8; BODY_LEN];
        c.wrap_outbound(&mut body)?;
        let good = body;
        body[100] ^= 1;
        assert!(fused.open_forward(&mut body).is_err());
        let mut body = good;
        fused.open_forward(&mut body)?;
        Ok(())
    }

    #[test]
    fn any_flipped_bit_fails_at_next_hop() -> Result<(), CryptoError> {
        for pos in [0usize, 15, 16, 200, 492, 493, 508] {
            let (mut c, mut relays) = path(3)?;
            let mut body = [0u8; BODY_LEN];
            c.wrap_outbound(&mut body)?;
            relays[0].open_outbound(&mut body)?;
            relays[0].prepare_forward(&mut body);
            body[pos] ^= 0x01;
            assert!(relays[1].open_outbound(&mut body).is_err(), "pos {pos}");
        }
        Ok(())
    }
}
