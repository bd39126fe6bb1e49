//! Helpers for link kinds that carry each circuit on its own stream (quic,
//! s2n).
//!
//! Sending: the node's queued cells are grouped by circuit into shared
//! buffers, so each circuit's cells of a batch become one contiguous write
//! to its stream ([`Grouper`]). One write per circuit per batch instead of
//! one per cell matters twice over: each write takes the QUIC connection's
//! lock and wakes its driver, and the QUIC stacks keep unacknowledged data
//! as a list of the chunks written (quinn walks that list to find what to
//! send), so fewer, larger chunks are cheaper all the way down.
//!
//! Receiving: stream bytes are cut into cells by a per-stream
//! [`CellSplitter`] that copies them into shared blocks
//! ([`CellBlocks`]), as udt does (the tcp link's cells share their frame's
//! buffer). A cell held by the node pins at most its block. [`Delivery`]
//! collects the cells and hands them to the node in batches while telling
//! the writer which circuits the peer destroyed.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};
use relay_kernel::{Cell, CellBlocks, CellCommand, CELL_LEN};
use tokio::sync::mpsc;

use crate::CellTx;

/// One circuit's cells of a batch, back to back.
#[derive(Debug)]
pub struct CircuitBatch {
    /// The circuit id.
    pub circ: u32,
    /// The cells, a slice of a shared send buffer.
    pub bytes: Bytes,
    /// These cells end with a DESTROY: the circuit's stream can be finished.
    pub last: bool,
}

/// Groups batches of cells by circuit, reusing its scratch space.
#[derive(Debug, Default)]
pub struct Grouper {
    /// Open group of each circuit in the batch being grouped.
    open: HashMap<u32, usize>,
    /// (circuit, cells, ends with DESTROY) per group, in order of first
    /// appearance.
    groups: Vec<(u32, usize, bool)>,
    /// Group of each cell.
    group_of: Vec<usize>,
    /// Where each group's next cell goes in `order`.
    next: Vec<usize>,
    /// Cell indices in buffer order.
    order: Vec<usize>,
    /// What is left of the current send buffer.
    buf: BytesMut,
}

impl Grouper {
    pub fn new() -> Grouper {
        Grouper::default()
    }

    /// Appends `cells` (taken from the node's queue, in order, and drained
    /// here) to `out` as one batch per circuit, in order of first
    /// appearance; a circuit that was destroyed and reused within the batch
    /// starts a new group. A circuit's cells are contiguous, in one slice
    /// or (past a buffer's end) several consecutive ones.
    pub fn group(&mut self, cells: &mut Vec<Cell>, out: &mut Vec<CircuitBatch>) {
        self.open.clear();
        self.groups.clear();
        self.group_of.clear();
        for c in cells.iter() {
            let circ = c.raw_circ_id();
            let g = *self.open.entry(circ).or_insert_with(|| {
                self.groups.push((circ, 0, false));
                self.groups.len() - 1
            });
            let entry = &mut self.groups[g];
            entry.1 += 1;
            if c.raw_command() == CellCommand::Destroy as u8 {
                entry.2 = true;
                self.open.remove(&circ);
            }
            self.group_of.push(g);
        }
        // A counting sort of the cells by group, stable within a group.
        self.next.clear();
        let mut at = 0;
        for &(_, n, _) in &self.groups {
            self.next.push(at);
            at += n;
        }
        self.order.clear();
        self.order.resize(cells.len(), 0);
        for (i, &g) in self.group_of.iter().enumerate() {
            self.order[self.next[g]] = i;
            self.next[g] += 1;
        }
        // Each group's cells are copied into shared buffers of
        // BUFFER_CELLS; a group that does not fit in what is left of one
        // continues in the next, as another slice of the same circuit.
        let mut order = self.order.iter();
        for &(circ, n, last) in &self.groups {
            let mut left = n;
            while left > 0 {
                if self.buf.capacity() - self.buf.len() < CELL_LEN {
                    self.buf = BytesMut::with_capacity(BUFFER_CELLS * CELL_LEN);
                }
                let fit = ((self.buf.capacity() - self.buf.len()) / CELL_LEN).min(left);
                for &i in order.by_ref().take(fit) {
                    if let Some(c) = cells.get(i) {
                        self.buf.extend_from_slice(c.as_bytes());
                    }
                }
                left -= fit;
                out.push(CircuitBatch {
                    circ,
                    bytes: self.buf.split().freeze(),
                    last: last && left == 0,
                });
            }
        }
        cells.clear();
    }
}

/// Cells per send buffer. A slice keeps its whole buffer alive until the
/// QUIC stack has the slice acknowledged, so one buffer per batch (up to
/// 514 KB) would let a slow circuit's one-cell slice pin half a megabyte;
/// buffers as small as the receive blocks bound that.
const BUFFER_CELLS: usize = 64;

/// Cuts one stream's bytes into cells.
#[derive(Debug, Default)]
pub struct CellSplitter {
    /// The start of a cell whose end has not arrived yet.
    partial: Vec<u8>,
}

impl CellSplitter {
    pub fn new() -> CellSplitter {
        CellSplitter::default()
    }

    /// Takes the next bytes of the stream: complete cells go to `out`, the
    /// start of an unfinished one is kept for the next call.
    pub fn push(&mut self, mut data: &[u8], blocks: &mut CellBlocks, out: &mut Delivery) {
        if !self.partial.is_empty() {
            let take = (CELL_LEN - self.partial.len()).min(data.len());
            let (head, rest) = data.split_at(take);
            self.partial.extend_from_slice(head);
            data = rest;
            if self.partial.len() < CELL_LEN {
                return;
            }
            blocks.cells(&self.partial, |c| out.push(c));
            self.partial.clear();
        }
        let whole = data.len() - data.len() % CELL_LEN;
        let (cells, tail) = data.split_at(whole);
        blocks.cells(cells, |c| out.push(c));
        self.partial.extend_from_slice(tail);
    }

    /// Whether the stream stopped inside a cell (an error at its end).
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }
}

/// First byte of a stream of cells (then whole cells until its end).
pub const KIND_CELLS: u8 = 0;
/// First and only byte of the stream announcing a graceful close.
pub const KIND_FIN: u8 = 1;
/// First and only byte of the stream confirming that everything the peer
/// sent before its FIN was read.
pub const KIND_DRAINED: u8 = 2;

/// What a finished stream carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carried {
    Cells,
    Fin,
    Drained,
}

/// One received stream: its kind byte, then cells or nothing.
#[derive(Debug, Default)]
pub enum StreamState {
    /// The kind byte has not arrived yet.
    #[default]
    Unknown,
    Cells(CellSplitter),
    /// A control stream: nothing may follow its kind byte.
    Control(Carried),
}

impl StreamState {
    /// Takes the stream's next bytes; an error means the peer broke the
    /// stream protocol.
    pub fn take(
        &mut self,
        mut data: &[u8],
        blocks: &mut CellBlocks,
        out: &mut Delivery,
    ) -> Result<(), &'static str> {
        if let StreamState::Unknown = self {
            let Some((&k, rest)) = data.split_first() else {
                return Ok(());
            };
            *self = match k {
                KIND_CELLS => StreamState::Cells(CellSplitter::new()),
                KIND_FIN => StreamState::Control(Carried::Fin),
                KIND_DRAINED => StreamState::Control(Carried::Drained),
                _ => return Err("unknown stream kind"),
            };
            data = rest;
        }
        match self {
            StreamState::Cells(s) => s.push(data, blocks, out),
            StreamState::Control(_) if !data.is_empty() => return Err("control stream too long"),
            _ => {}
        }
        Ok(())
    }

    /// The stream ended: what it carried, or why its end is an error.
    pub fn end(&self) -> Result<Carried, &'static str> {
        match self {
            StreamState::Unknown => Err("empty stream"),
            StreamState::Cells(s) if s.has_partial() => Err("stream ended inside a cell"),
            StreamState::Cells(_) => Ok(Carried::Cells),
            StreamState::Control(c) => Ok(*c),
        }
    }
}

/// Where a link's received cells go: collected and handed to the node in
/// one batch.
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

    /// Cells waiting for [`Delivery::flush`].
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// From now on cells are dropped (the node has all it wanted).
    pub fn stop(&mut self) {
        self.incoming = None;
        self.pending.clear();
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn cell(circ: u32, command: CellCommand, i: u8) -> Cell {
        let mut c = Cell::new(circ, command);
        c.body_mut().fill(i);
        c
    }

    #[test]
    fn groups_by_circuit_in_order_and_splits_at_destroy() {
        let mut cells = vec![
            cell(1, CellCommand::Relay, 0),
            cell(2, CellCommand::Relay, 1),
            cell(1, CellCommand::Relay, 2),
            cell(1, CellCommand::Destroy, 3),
            cell(2, CellCommand::Relay, 4),
            cell(1, CellCommand::Relay, 5),
        ];
        let mut g = Grouper::new();
        let mut out = Vec::new();
        g.group(&mut cells, &mut out);
        assert!(cells.is_empty());
        let got: Vec<(u32, Vec<u8>, bool)> = out
            .iter()
            .map(|b| {
                let marks = b.bytes.chunks(CELL_LEN).map(|c| c[CELL_LEN - 1]).collect();
                (b.circ, marks, b.last)
            })
            .collect();
        assert_eq!(
            got,
            [
                (1, vec![0, 2, 3], true),
                (2, vec![1, 4], false),
                (1, vec![5], false)
            ]
        );
        // Scratch space is reset between batches.
        let mut cells = vec![cell(7, CellCommand::Relay, 9)];
        out.clear();
        g.group(&mut cells, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].circ, out[0].bytes.len()), (7, CELL_LEN));
    }

    #[test]
    fn a_long_group_continues_in_the_next_buffer() {
        let mut cells: Vec<Cell> = (0..150u32)
            .map(|i| cell(5, CellCommand::Relay, i as u8))
            .collect();
        cells.push(cell(5, CellCommand::Destroy, 150));
        cells.push(cell(6, CellCommand::Relay, 151));
        let mut g = Grouper::new();
        let mut out = Vec::new();
        g.group(&mut cells, &mut out);
        let sizes: Vec<(u32, usize, bool)> = out
            .iter()
            .map(|b| (b.circ, b.bytes.len() / CELL_LEN, b.last))
            .collect();
        assert_eq!(
            sizes,
            [
                (5, BUFFER_CELLS, false),
                (5, BUFFER_CELLS, false),
                (5, 151 - 2 * BUFFER_CELLS, true),
                (6, 1, false)
            ]
        );
        let marks: Vec<u8> = out
            .iter()
            .filter(|b| b.circ == 5)
            .flat_map(|b| b.bytes.chunks(CELL_LEN).map(|c| c[CELL_LEN - 1]))
            .collect();
        assert_eq!(marks, (0..=150u8).collect::<Vec<_>>(), "order kept");
    }

    #[test]
    fn splitter_reassembles_cells_across_any_chunking() {
        let cells: Vec<Cell> = (0..200u32)
            .map(|i| cell(i + 1, CellCommand::Relay, i as u8))
            .collect();
        let stream: Vec<u8> = cells.iter().flat_map(|c| c.as_bytes().to_vec()).collect();
        for step in [1, 7, 513, 514, 515, 1000, 514 * 70 + 3, stream.len()] {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let (ctx, mut crx) = crate::cell_queue(1000);
            let mut out = Delivery::new(Some(ctx), tx);
            let (mut s, mut blocks) = (CellSplitter::new(), CellBlocks::new());
            for chunk in stream.chunks(step) {
                s.push(chunk, &mut blocks, &mut out);
            }
            assert!(!s.has_partial());
            assert_eq!(out.pending(), cells.len(), "step {step}");
            let mut got = Vec::new();
            while let Some(c) = out.pending.pop_front() {
                got.push(c);
            }
            for (a, b) in got.iter().zip(&cells) {
                assert_eq!(a.as_bytes(), b.as_bytes(), "step {step}");
            }
            assert!(rx.try_recv().is_err(), "no destroys");
            assert_eq!(crx.try_recv_many(&mut Vec::new(), 10), 0);
        }
    }

    #[test]
    fn stream_kinds_and_their_errors() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut out = Delivery::new(None, tx);
        let mut blocks = CellBlocks::new();
        let mut st = StreamState::default();
        assert_eq!(st.end(), Err("empty stream"));
        st.take(&[], &mut blocks, &mut out).unwrap();
        st.take(&[KIND_FIN], &mut blocks, &mut out).unwrap();
        assert_eq!(st.end(), Ok(Carried::Fin));
        assert!(st.take(&[0], &mut blocks, &mut out).is_err());
        let mut st = StreamState::default();
        assert!(st.take(&[7], &mut blocks, &mut out).is_err());
        let mut st = StreamState::default();
        let c = cell(3, CellCommand::Relay, 1);
        let mut data = vec![KIND_CELLS];
        data.extend_from_slice(&c.as_bytes()[..10]);
        st.take(&data, &mut blocks, &mut out).unwrap();
        assert_eq!(st.end(), Err("stream ended inside a cell"));
        st.take(&c.as_bytes()[10..], &mut blocks, &mut out).unwrap();
        assert_eq!(st.end(), Ok(Carried::Cells));
    }

    #[test]
    fn splitter_keeps_a_partial_cell_and_reports_destroys() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut out = Delivery::new(None, tx);
        let (mut s, mut blocks) = (CellSplitter::new(), CellBlocks::new());
        let d = cell(9, CellCommand::Destroy, 0);
        s.push(&d.as_bytes()[..100], &mut blocks, &mut out);
        assert!(s.has_partial());
        s.push(&d.as_bytes()[100..], &mut blocks, &mut out);
        assert!(!s.has_partial());
        assert_eq!(rx.try_recv().unwrap(), 9);
        // The node is not listening: nothing is kept.
        assert_eq!(out.pending(), 0);
    }
}
