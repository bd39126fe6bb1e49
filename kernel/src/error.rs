//! Error types. Every malformed input from a peer becomes one of these values,
//! never a panic; the node turns them into a closed circuit or stream.

use thiserror::Error;

/// A cell that cannot be accepted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CellError {
    /// Not 514 bytes.
    #[error("cell is {0} bytes, expected 514")]
    BadLength(usize),
    /// Unknown command byte.
    #[error("unknown cell command {0}")]
    UnknownCommand(u8),
    /// Circuit id zero.
    #[error("circuit id zero")]
    ZeroCircId,
}

/// A crypto operation failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// Tag check failed: the cell was altered, replayed, dropped or reordered.
    #[error("authentication failed")]
    Auth,
    /// The backend refused to seal.
    #[error("seal failed")]
    Seal,
    /// A key of the wrong size.
    #[error("bad key")]
    BadKey,
    /// A body of the wrong size.
    #[error("body is not 509 bytes")]
    BadLength,
    /// No hop in the path.
    #[error("circuit has no such hop")]
    NoHops,
    /// Path longer than the maximum.
    #[error("path longer than 8 hops")]
    TooManyHops,
}

/// A handshake failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// Message too short or of an unknown type.
    #[error("malformed handshake message")]
    Malformed,
    /// The client asked for another node.
    #[error("handshake addressed to another node id")]
    WrongNode,
    /// The client used an onion key this node does not hold.
    #[error("handshake uses an unknown onion key")]
    WrongOnionKey,
    /// A Diffie-Hellman result was all zeros (a low-order point).
    #[error("non-contributory Diffie-Hellman share")]
    BadShare,
    /// The server's AUTH did not verify: wrong onion key or an impostor.
    #[error("server authentication failed (wrong onion key or impostor)")]
    AuthFailed,
    /// Key derivation failed.
    #[error("key derivation failed")]
    Kdf,
}

/// A relay message that cannot be parsed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MsgError {
    /// Shorter than its header or its declared length.
    #[error("relay message truncated")]
    Truncated,
    /// Unknown relay command.
    #[error("unknown relay command {0}")]
    UnknownCommand(u8),
    /// A field holds a value outside its range.
    #[error("bad field: {0}")]
    BadField(&'static str),
    /// The message does not fit in a cell.
    #[error("message of {0} bytes does not fit")]
    TooLong(usize),
}

/// A node-id string that cannot be parsed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IdError {
    /// Not 52 base32 characters.
    #[error("node id must be 52 base32 characters (a-z, 2-7)")]
    BadEncoding,
}

/// An API call the node cannot carry out.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NodeError {
    /// Unknown or closed circuit.
    #[error("no such circuit")]
    NoSuchCircuit,
    /// Unknown or closed stream.
    #[error("no such stream")]
    NoSuchStream,
    /// Unknown link.
    #[error("no such link")]
    NoSuchLink,
    /// Path of zero or more than 8 hops.
    #[error("path must have 1 to 8 hops")]
    BadPathLength,
    /// The circuit is not built yet, or is being extended or truncated.
    #[error("circuit is not ready")]
    NotReady,
    /// No stream id left on the circuit.
    #[error("too many streams on circuit")]
    TooManyStreams,
    /// A message too long for a cell.
    #[error(transparent)]
    Msg(#[from] MsgError),
    /// The stream cannot send (closed, or not connected).
    #[error("stream is not open for sending")]
    StreamNotWritable,
    /// Crypto failure.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}
