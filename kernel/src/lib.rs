//! relay-kernel: the sans-IO core of the relay network.
//!
//! Cells, onion crypto, circuit handshakes, circuits, streams and flow control,
//! with no sockets, threads, clocks or async runtime: callers pass in `now`
//! (a [`Time`]) and an RNG, feed received cells in, and pull cells to send and
//! events out. That is what lets the same code run in `relayd` (tokio), in the
//! `netsim` simulator (virtual time) and on small devices.

pub mod cell;
pub mod cell_blocks;
pub mod crypto;
pub mod error;
pub mod flow;
pub mod handshake;
pub mod ids;
pub mod node;
pub mod relay_msg;
pub mod stream;
pub mod time;

pub use cell::{Cell, CellCommand, CellPool, CircId, BODY_LEN, CELL_LEN, HEADER_LEN};
pub use cell_blocks::CellBlocks;
pub use error::{CellError, CryptoError, HandshakeError, IdError, MsgError, NodeError};
pub use ids::{NodeId, OnionKeypair};
pub use node::{CircuitRef, Event, HopSpec, LinkId, Node, NodeConfig, NodeStats};
pub use relay_msg::{EndReason, StreamKind};
pub use stream::{StreamRef, TargetAddr};
pub use time::Time;
