//! Cryptographic building blocks: the per-hop AEAD behind one small trait,
//! the GCM-compatible keystream the client needs to predict relay padding,
//! and the onion layers built from them.

pub mod aead;
pub mod keystream;
pub mod onion;
pub mod x25519;

pub use aead::{CellAead, DefaultAead, RingGcm, RustCryptoGcm};
pub use keystream::{CellStream, Keystream};
pub use onion::{ClientOnion, HopKeys, RelayHop};
pub use x25519::{DefaultX25519, X25519Key};
