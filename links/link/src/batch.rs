//! Helpers for link kinds that carry each circuit on its own stream (quic,
//! s2n): grouping the node's queued cells by circuit (one write per circuit
//! per batch instead of one per cell), and delivering received cells while
//! telling the writer which circuits the peer destroyed.

use bytes::BytesMut;
use relay_kernel::{Cell, CellCommand, CELL_LEN};
use tokio::sync::mpsc;

use crate::Outgoing;

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

/// Takes `first` and whatever else is already queued (up to `max` cells)
/// and appends it to `batches`, one batch per circuit in order of first
/// appearance (a circuit that was destroyed and reused starts a new batch).
/// Returns whether a close request was seen (it ends the gathering).
pub fn gather_by_circuit(
    first: Outgoing,
    outgoing: &mut mpsc::Receiver<Outgoing>,
    max: usize,
    batches: &mut Vec<CircuitBatch>,
) -> bool {
    let mut next = Some(first);
    let mut cells = 0;
    while let Some(o) = next.take() {
        match o {
            Outgoing::Cell(c) => {
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
                cells += 1;
            }
            Outgoing::Close => return true,
        }
        if cells < max {
            next = outgoing.try_recv().ok();
        }
    }
    false
}

/// Where a stream reader's cells go.
pub struct Delivery {
    /// The node, until it stops listening.
    pub incoming: Option<mpsc::Sender<Cell>>,
    /// The writer, told of circuits the peer destroyed (their streams can
    /// be finished).
    pub destroyed: mpsc::UnboundedSender<u32>,
}

impl Delivery {
    /// Hands a received cell to the node.
    pub async fn deliver(&mut self, cell: Cell) {
        if cell.raw_command() == CellCommand::Destroy as u8 {
            let _ = self.destroyed.send(cell.raw_circ_id());
        }
        if let Some(tx) = &self.incoming {
            if tx.send(cell).await.is_err() {
                self.incoming = None;
            }
        }
    }
}
