//! Cells cut from shared blocks: one allocation per block of
//! [`BLOCK_CELLS`] cells instead of one per cell.
//!
//! A cell leaves a link's receive buffer in a buffer of its own (the node
//! holds cells one buffer each and changes them in place). Allocating and
//! freeing one buffer per cell cost about a tenth of udt's CPU on loopback
//! (docs/benchmarks.md), so links copy received cells into a block and hand
//! out each cell as a `BytesMut` view of it (`split_to`): a cell costs a
//! copy and a reference count, and a block is freed when its last cell is.
//! A cell held for long pins at most its block (33 KB), the trade the tcp
//! link makes too (its cells share their frame's buffer).
//!
//! Not done, measured (2026-12-08): keeping used-up blocks and reusing each
//! once its cells are gone (`BytesMut::try_reclaim`). It cut linkbench's
//! udt page faults 4.7x but not its CPU per GB (1.06 s/GB both ways, four
//! alternating runs), nor netsim's run time.
//!
//! `cell` and `make_room` are `#[inline]`: links in other crates call them
//! once per cell. Without it netsim's scale run (60 s) peaked at 305 MiB
//! instead of 245 MiB with outputs byte-identical; why inlining changes
//! the allocator's footprint was not traced.

use bytes::BytesMut;

use crate::cell::{Cell, CELL_LEN};
use crate::error::CellError;

/// Cells per block (a tcp link frame's worth).
pub const BLOCK_CELLS: usize = 64;

/// Cuts cells out of shared blocks.
#[derive(Debug, Default)]
pub struct CellBlocks {
    /// The block cells are being cut from (its spare capacity).
    block: BytesMut,
}

impl CellBlocks {
    pub fn new() -> CellBlocks {
        CellBlocks::default()
    }

    /// A cell holding a copy of `raw`, which must be exactly [`CELL_LEN`]
    /// bytes.
    #[inline]
    pub fn cell(&mut self, raw: &[u8]) -> Result<Cell, CellError> {
        if raw.len() != CELL_LEN {
            return Err(CellError::BadLength(raw.len()));
        }
        self.make_room();
        self.block.extend_from_slice(raw);
        Cell::from_bytes(self.block.split_to(CELL_LEN))
    }

    /// Copies the whole cells at the start of `data` (a shorter tail is
    /// ignored) and passes each to `out`, in order.
    pub fn cells(&mut self, mut data: &[u8], mut out: impl FnMut(Cell)) {
        while data.len() >= CELL_LEN {
            self.make_room();
            let fit = (self.block.capacity() / CELL_LEN).min(data.len() / CELL_LEN);
            let (now, rest) = data.split_at(fit * CELL_LEN);
            data = rest;
            self.block.extend_from_slice(now);
            for _ in 0..fit {
                // Exactly CELL_LEN bytes, so this cannot fail.
                if let Ok(cell) = Cell::from_bytes(self.block.split_to(CELL_LEN)) {
                    out(cell);
                }
            }
        }
    }

    /// Makes sure the current block has room for a cell.
    #[inline]
    fn make_room(&mut self) {
        if self.block.capacity() < CELL_LEN {
            self.block = BytesMut::with_capacity(BLOCK_CELLS * CELL_LEN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(i: usize) -> [u8; CELL_LEN] {
        [i as u8; CELL_LEN]
    }

    #[test]
    fn cells_are_independent_copies_across_blocks() {
        let mut b = CellBlocks::new();
        let mut cells = Vec::new();
        for i in 0..(3 * BLOCK_CELLS) {
            cells.push(b.cell(&raw(i)).expect("a cell"));
        }
        assert!(b.cell(&[0; 10]).is_err());
        cells[1].body_mut().fill(0xee);
        for (i, c) in cells.iter().enumerate() {
            let want = if i == 1 { 0xee } else { i as u8 };
            assert!(c.body().iter().all(|&x| x == want), "cell {i}");
            assert_eq!(c.as_bytes().len(), CELL_LEN);
        }
    }

    #[test]
    fn cells_from_a_stream_chunk_ignore_a_short_tail() {
        let mut b = CellBlocks::new();
        let mut data = Vec::new();
        for i in 0..(BLOCK_CELLS + 5) {
            data.extend_from_slice(&raw(i));
        }
        data.extend_from_slice(&[9; 100]);
        let mut got = Vec::new();
        b.cells(&data, |c| got.push(c));
        assert_eq!(got.len(), BLOCK_CELLS + 5);
        for (i, c) in got.iter().enumerate() {
            assert!(c.as_bytes().iter().all(|&x| x == i as u8), "cell {i}");
        }
    }
}
