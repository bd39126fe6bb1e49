//! Fixed-size cells: the only unit that crosses a link.
//!
//! Every cell is exactly [`CELL_LEN`] = 514 bytes: a 4-byte circuit id, a
//! 1-byte command and a 509-byte body (Tor's sizes, so per-cell costs compare
//! directly). A [`Cell`] owns one `BytesMut` of that length for its whole life:
//! links split received datagrams into cells without copying, relays peel and
//! add onion layers in place, and forwarding moves the buffer.

use bytes::BytesMut;

use crate::error::CellError;

/// Bytes in a cell on every link.
pub const CELL_LEN: usize = 514;
/// Circuit id (4) + command (1).
pub const HEADER_LEN: usize = 5;
/// Bytes in a cell body.
pub const BODY_LEN: usize = CELL_LEN - HEADER_LEN;

/// A circuit id on one link. Zero is never a valid circuit id.
///
/// The end of a link that initiated it picks ids with the top bit set, the
/// responder picks ids with it clear, so the two ends never collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CircId(u32);

impl CircId {
    /// The bit that says which end of the link chose the id.
    pub const INITIATOR_BIT: u32 = 0x8000_0000;

    /// A circuit id, or `None` for zero.
    pub fn new(raw: u32) -> Option<CircId> {
        (raw != 0).then_some(CircId(raw))
    }

    /// The raw value.
    pub fn get(self) -> u32 {
        self.0
    }

    /// Whether the link initiator chose this id.
    pub fn chosen_by_initiator(self) -> bool {
        self.0 & Self::INITIATOR_BIT != 0
    }
}

impl std::fmt::Display for CircId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

/// Cell commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CellCommand {
    /// Link-level padding; dropped on receipt.
    Padding = 0,
    /// Opens a circuit: body carries the client's handshake.
    Create = 1,
    /// Answers CREATE: body carries the server's handshake.
    Created = 2,
    /// Onion-encrypted relay message.
    Relay = 3,
    /// Tears a circuit down; body byte 0 is a [`crate::DestroyReason`].
    Destroy = 4,
    /// Link-level: the sender's signed descriptor (identity, onion key,
    /// addresses), sent once when a link comes up so that a neighbour can
    /// build circuits through the sender. Consumed by the driver; a node
    /// drops it like padding.
    LinkInfo = 5,
}

impl CellCommand {
    /// Parses a command byte.
    pub fn from_u8(b: u8) -> Result<CellCommand, CellError> {
        Ok(match b {
            0 => CellCommand::Padding,
            1 => CellCommand::Create,
            2 => CellCommand::Created,
            3 => CellCommand::Relay,
            4 => CellCommand::Destroy,
            5 => CellCommand::LinkInfo,
            other => return Err(CellError::UnknownCommand(other)),
        })
    }
}

/// One 514-byte cell in its own buffer.
///
/// Invariant: `buf.len() == CELL_LEN`, checked by every constructor, so the
/// accessors below index within bounds whatever the bytes say.
#[derive(Debug)]
pub struct Cell {
    buf: BytesMut,
    /// The buffer is an allocation of its own, made here for one cell, so a
    /// [`CellPool`] may keep it. Buffers handed in by links
    /// ([`Cell::from_bytes`]) are usually views of a larger receive block
    /// (33 KB for udt and QUIC, 131 KB for tcp) that `BytesMut` cannot tell
    /// apart from an own allocation (a view's capacity is exactly its
    /// length): pooling one would keep its whole block alive for as long as
    /// the pool holds it, up to the pool's 4,096 entries times a block.
    own_allocation: bool,
    /// Microseconds this cell spent in links' reordering buffers on its way
    /// here, waiting for an earlier cell of its circuit that was lost or
    /// late (see [`Cell::reorder_wait_us`]).
    reorder_wait_us: u32,
}

impl Cell {
    /// A zeroed cell with the given header. Allocates; hot paths reuse cells
    /// from a [`crate::CellPool`] instead.
    pub fn new(circ_id: u32, command: CellCommand) -> Cell {
        let mut cell = Cell {
            buf: BytesMut::zeroed(CELL_LEN),
            own_allocation: true,
            reorder_wait_us: 0,
        };
        cell.set_header(circ_id, command);
        cell
    }

    /// Wraps a received buffer. It must be exactly [`CELL_LEN`] bytes. The
    /// buffer may share its allocation with others (a link's receive
    /// block), so a [`CellPool`] will not keep it.
    pub fn from_bytes(buf: BytesMut) -> Result<Cell, CellError> {
        if buf.len() != CELL_LEN {
            return Err(CellError::BadLength(buf.len()));
        }
        Ok(Cell {
            buf,
            own_allocation: false,
            reorder_wait_us: 0,
        })
    }

    /// Copies a cell out of a slice (tests, fuzzing and framing code).
    pub fn from_slice(bytes: &[u8]) -> Result<Cell, CellError> {
        if bytes.len() != CELL_LEN {
            return Err(CellError::BadLength(bytes.len()));
        }
        Ok(Cell {
            buf: BytesMut::from(bytes),
            own_allocation: true,
            reorder_wait_us: 0,
        })
    }

    /// Reuses a pooled buffer (always an own allocation) as a cell.
    fn recycle(mut buf: BytesMut) -> Cell {
        buf.clear();
        buf.resize(CELL_LEN, 0);
        Cell {
            buf,
            own_allocation: true,
            reorder_wait_us: 0,
        }
    }

    /// Microseconds the cell waited, summed over the links it crossed, in
    /// a receiver's reordering buffer for an earlier cell of its circuit
    /// (links deliver each circuit's cells in order). It is not part of
    /// the cell's 514 bytes: each link kind that can measure it carries it
    /// beside the cell (udt does; tcp and QUIC reorder inside the
    /// transport, where it cannot be seen, and carry 0). A relay forwards
    /// it with the cell, and circuit congestion control subtracts it from
    /// RTT samples: a wait behind a retransmission is not queueing, and
    /// Vegas, reading it as queueing, starved on lossy paths.
    pub fn reorder_wait_us(&self) -> u32 {
        self.reorder_wait_us
    }

    /// Adds `us` to the cell's reordering wait (saturating).
    pub fn add_reorder_wait_us(&mut self, us: u32) {
        self.reorder_wait_us = self.reorder_wait_us.saturating_add(us);
    }

    /// The raw circuit id (zero is invalid but representable on the wire).
    pub fn raw_circ_id(&self) -> u32 {
        u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
    }

    /// The circuit id, or an error for zero.
    pub fn circ_id(&self) -> Result<CircId, CellError> {
        CircId::new(self.raw_circ_id()).ok_or(CellError::ZeroCircId)
    }

    /// The command byte as sent.
    pub fn raw_command(&self) -> u8 {
        self.buf[4]
    }

    /// The parsed command.
    pub fn command(&self) -> Result<CellCommand, CellError> {
        CellCommand::from_u8(self.raw_command())
    }

    /// Rewrites the header (circuit id and command), leaving the body.
    pub fn set_header(&mut self, circ_id: u32, command: CellCommand) {
        self.buf[0..4].copy_from_slice(&circ_id.to_be_bytes());
        self.buf[4] = command as u8;
    }

    /// Rewrites only the circuit id (what a relay does when forwarding).
    pub fn set_circ_id(&mut self, circ_id: CircId) {
        self.buf[0..4].copy_from_slice(&circ_id.get().to_be_bytes());
    }

    /// The 509-byte body.
    pub fn body(&self) -> &[u8] {
        &self.buf[HEADER_LEN..CELL_LEN]
    }

    /// The 509-byte body, mutable.
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.buf[HEADER_LEN..CELL_LEN]
    }

    /// The whole 514 bytes, as they go on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Gives the buffer back (to a link writer or a pool).
    pub fn into_bytes(self) -> BytesMut {
        self.buf
    }
}

/// A free list of cell buffers, so that cells a node originates reuse the
/// buffers of cells it consumed instead of allocating.
#[derive(Debug, Default)]
pub struct CellPool {
    free: Vec<BytesMut>,
    limit: usize,
}

impl CellPool {
    /// A pool keeping at most `limit` spare buffers.
    pub fn with_limit(limit: usize) -> CellPool {
        CellPool {
            free: Vec::with_capacity(limit),
            limit,
        }
    }

    /// A cell with the given header and a body of unspecified bytes (callers
    /// overwrite all of it). Allocates only when the pool is empty.
    pub fn take(&mut self, circ_id: u32, command: CellCommand) -> Cell {
        let mut cell = match self.free.pop() {
            Some(buf) => Cell::recycle(buf),
            None => Cell::new(circ_id, command),
        };
        cell.set_header(circ_id, command);
        cell
    }

    /// Returns a cell's buffer to the pool. Dropped instead when the pool is
    /// full or the buffer may share its allocation (see
    /// `Cell::own_allocation`): pooled, such a view would pin its link's
    /// whole receive block.
    pub fn give(&mut self, cell: Cell) {
        if self.free.len() < self.limit && cell.own_allocation {
            self.free.push(cell.buf);
        }
    }

    /// Spare buffers held.
    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// Whether no spare buffer is held.
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let mut c = Cell::new(0x8000_0001, CellCommand::Relay);
        assert_eq!(c.as_bytes().len(), CELL_LEN);
        assert_eq!(c.raw_circ_id(), 0x8000_0001);
        assert_eq!(c.command().ok(), Some(CellCommand::Relay));
        c.body_mut()[508] = 7;
        assert_eq!(c.as_bytes()[513], 7);
        assert!(c
            .circ_id()
            .map(|id| id.chosen_by_initiator())
            .unwrap_or(false));
    }

    #[test]
    fn rejects_wrong_length_and_bad_header() {
        assert!(matches!(
            Cell::from_slice(&[0u8; 513]),
            Err(CellError::BadLength(513))
        ));
        let mut raw = [0u8; CELL_LEN];
        raw[4] = 99;
        let c = Cell::from_slice(&raw).unwrap_or_else(|_| Cell::new(1, CellCommand::Padding));
        assert!(matches!(c.command(), Err(CellError::UnknownCommand(99))));
        assert!(matches!(c.circ_id(), Err(CellError::ZeroCircId)));
    }

    #[test]
    fn pool_reuses_buffers() {
        let mut pool = CellPool::with_limit(2);
        let c = pool.take(5, CellCommand::Relay);
        let ptr = c.as_bytes().as_ptr();
        pool.give(c);
        let c2 = pool.take(6, CellCommand::Destroy);
        assert_eq!(c2.as_bytes().as_ptr(), ptr);
        assert_eq!(c2.raw_circ_id(), 6);
        assert_eq!(c2.as_bytes().len(), CELL_LEN);
    }

    #[test]
    fn pool_refuses_views_of_a_shared_block() {
        // What a link's receive path makes: cells split off one block.
        let mut block = BytesMut::zeroed(4 * CELL_LEN);
        let first = Cell::from_bytes(block.split_to(CELL_LEN)).expect("a cell");
        let second = Cell::from_bytes(block.split_to(CELL_LEN)).expect("a cell");
        let block_start = first.as_bytes().as_ptr();
        let mut pool = CellPool::with_limit(8);
        pool.give(first);
        pool.give(second);
        assert!(pool.is_empty(), "a view of a shared block was pooled");
        // A cell made by the kernel is kept, and a cell from the pool is
        // again an own allocation that goes back.
        pool.give(Cell::new(1, CellCommand::Relay));
        assert_eq!(pool.len(), 1);
        let reused = pool.take(2, CellCommand::Relay);
        assert_ne!(reused.as_bytes().as_ptr(), block_start);
        pool.give(reused);
        assert_eq!(pool.len(), 1);
    }
}
