//! Received cells are copied into shared blocks of [`BLOCK_CELLS`] cells:
//! one allocation per block instead of one per cell.
//!
//! A cell must leave its datagram in a buffer of its own (the node holds
//! cells one buffer each and changes them in place). `Cell::from_slice`
//! allocated and freed one buffer per cell, about a tenth of udt's CPU on
//! loopback (docs/benchmarks.md). Here each cell is a `BytesMut` view of
//! its block (`split_to`), so a cell costs a copy and a reference count;
//! the block is freed when its last cell is. A cell held for long pins at
//! most its block (33 KB), the trade the tcp and quic links make too.

use bytes::BytesMut;
use relay_kernel::{Cell, CellError, CELL_LEN};

/// Cells per block (a tcp link frame's worth).
pub const BLOCK_CELLS: usize = 64;

/// The block received cells are being cut from.
#[derive(Default)]
pub struct Blocks {
    block: BytesMut,
}

impl Blocks {
    /// A cell holding a copy of `raw` (exactly [`CELL_LEN`] bytes).
    pub fn cell(&mut self, raw: &[u8]) -> Result<Cell, CellError> {
        if raw.len() != CELL_LEN {
            return Err(CellError::BadLength(raw.len()));
        }
        if self.block.capacity() < CELL_LEN {
            self.block = BytesMut::with_capacity(BLOCK_CELLS * CELL_LEN);
        }
        self.block.extend_from_slice(raw);
        Cell::from_bytes(self.block.split_to(CELL_LEN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_independent_copies_and_blocks_are_renewed() {
        let mut b = Blocks::default();
        let mut cells = Vec::new();
        for i in 0..(3 * BLOCK_CELLS) {
            let raw = [i as u8; CELL_LEN];
            cells.push(b.cell(&raw).expect("a cell"));
        }
        assert!(b.cell(&[0; 10]).is_err());
        // Changing one cell leaves its neighbours alone.
        cells[1].body_mut().fill(0xee);
        for (i, c) in cells.iter().enumerate() {
            let want = if i == 1 { 0xee } else { i as u8 };
            assert!(c.body().iter().all(|&x| x == want), "cell {i}");
            assert_eq!(c.as_bytes().len(), CELL_LEN);
        }
    }
}
