//! The sender's copies of the cells in flight, kept for retransmission.
//!
//! A cell is copied here when it first leaves in a datagram, and the cell
//! itself is dropped at once. Holding the cells themselves until
//! acknowledged, as before, kept every forwarded cell's 33 KB receive
//! block alive for a round trip downstream and paid a cold reference-count
//! drop per cell on each ACK (about 6% of netsim's scale run in perf).
//! A copy costs one 514-byte `memcpy` of bytes that are in cache anyway
//! (they were just encrypted into the datagram). Handing the cells back to
//! netsim's per-node cell pools instead of dropping them was tried and
//! was not faster (pooled buffers are cold when reused).
//!
//! Slots live in chunks of [`CHUNK_CELLS`] that are never moved (no
//! reallocation copies while the window grows); a free list reuses slots
//! last-in first-out, and everything is given back at the connection's
//! next timer once nothing is in flight: a relay has many mostly idle
//! connections, and keeping one chunk each cost netsim's scale run
//! 350 MiB of its peak.

use relay_kernel::CELL_LEN;

/// Cells per chunk (33 KB).
const CHUNK_CELLS: usize = 64;

/// A slot holding one cell's bytes.
pub type Slot = u32;

/// Copies of cells in flight.
#[derive(Default)]
pub struct CellCopies {
    chunks: Vec<Box<[u8]>>,
    /// Each slot's cell's reordering wait ([`relay_kernel::Cell::reorder_wait_us`]),
    /// which travels beside the cell, not in its bytes.
    waits: Vec<u32>,
    /// Released slots below `fresh`.
    free: Vec<Slot>,
    /// Slots at and above this were never handed out since the last reset.
    fresh: Slot,
    used: usize,
}

impl CellCopies {
    /// Copies `raw` (exactly [`CELL_LEN`] bytes) and its cell's reordering
    /// wait into a slot.
    pub fn put(&mut self, raw: &[u8], wait_us: u32) -> Slot {
        debug_assert_eq!(raw.len(), CELL_LEN);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                let s = self.fresh;
                if s as usize == self.chunks.len() * CHUNK_CELLS {
                    self.chunks
                        .push(vec![0; CHUNK_CELLS * CELL_LEN].into_boxed_slice());
                }
                self.fresh += 1;
                s
            }
        };
        self.used += 1;
        let (chunk, at) = Self::locate(slot);
        self.chunks[chunk][at..at + CELL_LEN].copy_from_slice(&raw[..CELL_LEN]);
        let i = slot as usize;
        if self.waits.len() <= i {
            self.waits.resize(i + 1, 0);
        }
        self.waits[i] = wait_us;
        slot
    }

    /// The bytes in `slot`.
    pub fn get(&self, slot: Slot) -> &[u8] {
        let (chunk, at) = Self::locate(slot);
        &self.chunks[chunk][at..at + CELL_LEN]
    }

    /// The reordering wait of the cell in `slot`.
    pub fn wait_us(&self, slot: Slot) -> u32 {
        self.waits.get(slot as usize).copied().unwrap_or(0)
    }

    /// Frees `slot` (its packet was acknowledged, or could not be sealed).
    pub fn release(&mut self, slot: Slot) {
        debug_assert!(slot < self.fresh && self.used > 0);
        self.used -= 1;
        if self.used == 0 {
            // Start again from slot 0 (in order, in the warm first chunk).
            self.free.clear();
            self.fresh = 0;
        } else {
            self.free.push(slot);
        }
    }

    /// Gives the memory back if nothing is held (the connection calls
    /// this from its timers, so a flow that drains its window every round
    /// trip keeps its chunks rather than reallocating them each time).
    pub fn trim(&mut self) {
        if self.used == 0 {
            self.chunks = Vec::new();
            self.waits = Vec::new();
            self.free = Vec::new();
        }
    }

    /// Slots in use.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.used
    }

    /// Bytes allocated for cells.
    #[cfg(test)]
    pub fn allocated(&self) -> usize {
        self.chunks.len() * CHUNK_CELLS * CELL_LEN
    }

    fn locate(slot: Slot) -> (usize, usize) {
        let s = slot as usize;
        (s / CHUNK_CELLS, (s % CHUNK_CELLS) * CELL_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// Every slot keeps its own bytes and wait whatever else is put and
        /// released.
        #[test]
        fn slots_keep_their_bytes(ops in proptest::collection::vec((any::<bool>(), any::<u8>()), 1..600)) {
            let mut copies = CellCopies::default();
            let mut held: HashMap<Slot, u8> = HashMap::new();
            for (put, b) in ops {
                if put || held.is_empty() {
                    let slot = copies.put(&[b; CELL_LEN], u32::from(b));
                    prop_assert!(held.insert(slot, b).is_none(), "slot {} handed out twice", slot);
                } else {
                    let slot = *held.keys().nth(usize::from(b) % held.len()).unwrap_or(&0);
                    held.remove(&slot);
                    copies.release(slot);
                }
                prop_assert_eq!(copies.len(), held.len());
                for (&slot, &b) in &held {
                    prop_assert!(copies.get(slot).iter().all(|&x| x == b));
                    prop_assert_eq!(copies.wait_us(slot), u32::from(b));
                }
            }
        }
    }

    #[test]
    fn memory_is_given_back_when_nothing_is_in_flight() {
        let mut copies = CellCopies::default();
        let slots: Vec<Slot> = (0..1000)
            .map(|i| copies.put(&[i as u8; CELL_LEN], 0))
            .collect();
        let peak = copies.allocated();
        assert!(peak >= 1000 * CELL_LEN);
        for s in slots {
            copies.release(s);
        }
        assert_eq!(copies.allocated(), peak, "kept until trimmed");
        copies.trim();
        assert_eq!(copies.allocated(), 0);
        assert_eq!(copies.put(&[9; CELL_LEN], 0), 0);
    }
}
