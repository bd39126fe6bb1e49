//! Helpers for link kinds that carry each circuit on its own stream (quic,
//! s2n): grouping the node's queued cells by circuit (one write per circuit
//! per batch instead of one per cell), and delivering received cells in
//! batches while telling the writer which circuits the peer destroyed.

use std::collections::VecDeque;

use bytes::BytesMut;
use relay_kernel::{Cell, CellCommand, CELL_LEN};
use tokio::sync::mpsc;

use crate::CellTx;

/// Consecutive cells of one circuit taken from the node's queue.
#[derive(Debug)]
pub struct CircuitBatch {
    /// The circuit id.
    pub circ: u32,
    /// The cells, back to back.
    pub bytes: BytesMut,
    /// The batch ends with a DESTROY: the circuit's stream can be finished.
    pub last: bool,
}

/// Appends `cells` (taken from the node's queue, in order) to `batches`,
/// one batch per circuit in order of first appearance (a circuit that was
/// destroyed and reused starts a new batch).
pub fn group_by_circuit(cells: &mut Vec<Cell>, batches: &mut Vec<CircuitBatch>) {
    for c in cells.drain(..) {
        let circ = c.raw_circ_id();
        let destroy = c.raw_command() == CellCommand::Destroy as u8;
        let i = match batches.iter().position(|g| g.circ == circ && !g.last) {
            Some(i) => i,
            None => {
                batches.push(CircuitBatch {
                    circ,
                    bytes: BytesMut::with_capacity(CELL_LEN),
                    last: false,
                });
                batches.len() - 1
            }
        };
        let g = &mut batches[i];
        g.bytes.extend_from_slice(c.as_bytes());
        g.last = destroy;
    }
}

/// Where a stream reader's cells go: collected per read chunk and handed
/// to the node in one batch.
pub struct Delivery {
    /// The node, until it stops listening.
    incoming: Option<CellTx>,
    /// The writer, told of circuits the peer destroyed (their streams can
    /// be finished).
    destroyed: mpsc::UnboundedSender<u32>,
    pending: VecDeque<Cell>,
}

impl Delivery {
    /// Delivers to `incoming` (None: the node stopped listening, cells are
    /// dropped) and reports DESTROYs to `destroyed`.
    pub fn new(incoming: Option<CellTx>, destroyed: mpsc::UnboundedSender<u32>) -> Delivery {
        Delivery {
            incoming,
            destroyed,
            pending: VecDeque::new(),
        }
    }

    /// Adds a received cell to the next batch.
    pub fn push(&mut self, cell: Cell) {
        if cell.raw_command() == CellCommand::Destroy as u8 {
            let _ = self.destroyed.send(cell.raw_circ_id());
        }
        if self.incoming.is_some() {
            self.pending.push_back(cell);
        }
    }

    /// Hands the batch to the node, waiting for room.
    pub async fn flush(&mut self) {
        if let Some(tx) = &self.incoming {
            if tx.send_all(&mut self.pending).await.is_err() {
                self.incoming = None;
            }
        }
    }
}
