//! relay-link: what every link kind shares.
//!
//! A link is the authenticated, encrypted connection between two adjacent
//! nodes that carries cells. This crate has the [`Transport`] trait relayd
//! uses for every kind, the node identity and its binding to each link's
//! Noise handshake, the AES-GCM framing keys, peer address parsing, and (with
//! the `conformance` feature) the test suite every link kind runs unchanged.

pub mod addr;
pub mod batch;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod error;
pub mod handshake;
pub mod identity;
pub mod link;
pub mod noise_dh;
pub mod queue;
pub mod ready;
#[cfg(feature = "tls")]
pub mod tls;
pub mod transport;
pub mod udp;

pub use addr::{LinkAddr, PeerAddr, Scheme};
pub use error::LinkError;
pub use handshake::{Initiator, Responder, Session, StaticKey};
pub use identity::{verify_signed, Identity};
pub use link::{
    link_pair, BoxFut, CloseReason, Link, LinkConfig, LinkIo, LinkReceiver, LinkSender, Transport,
};
pub use queue::{cell_queue, CellRx, CellTx, Push};
