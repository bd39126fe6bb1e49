//! Link errors.

use relay_kernel::NodeId;
use thiserror::Error;

/// Why a link could not be made or ended.
#[derive(Debug, Error)]
pub enum LinkError {
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer is not the node we asked for.
    #[error("peer is {got}, expected {expected}")]
    WrongPeer {
        /// The id we dialled.
        expected: NodeId,
        /// The id the peer proved.
        got: NodeId,
    },
    /// The handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(&'static str),
    /// A message failed authentication or was malformed.
    #[error("bad packet: {0}")]
    BadPacket(&'static str),
    /// Nothing heard from the peer within the idle timeout.
    #[error("peer silent for longer than the idle timeout")]
    IdleTimeout,
    /// The handshake did not finish in time.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The link is closed.
    #[error("link closed")]
    Closed,
    /// An address that cannot be parsed.
    #[error("bad peer address {0:?}: expected ID@[scheme://]host:port")]
    BadAddress(String),
    /// A link kind this build does not have.
    #[error("unsupported link scheme {0:?}")]
    UnsupportedScheme(String),
}
