//! relay-netsim: a deterministic discrete-event network simulator that runs
//! the real relay kernel in virtual time over real link protocol cores
//! (udt, quinn-proto's QUIC, smoltcp's TCP) or a TCP model.
//!
//! Why it exists: performance claims (long fat paths, head-of-line
//! blocking, whole-network behaviour) need a measurement that is
//! reproducible and independent of a noisy machine. A run is a pure
//! function of (scenario, seed): one thread, one virtual clock, an event
//! heap ordered by (time, sequence), ordered containers only, and every
//! random number, the nodes' cryptographic RNGs included, drawn from a
//! ChaCha stream derived from the seed.
//!
//! Modules, one job each: [`queue`] (the event heap), [`rng`] (seed
//! derivation), [`link`] (bottlenecks, CoDel and path impairments),
//! [`network`] (all links of a run), [`transport`] (the link-core trait
//! and the udt adapter), [`quic`] (quinn-proto links), [`tcp`] (smoltcp
//! links), [`tcp_model`] (the NewReno TCP model), [`host`] (kernel node +
//! link core at a virtual address), [`traffic`] (clients, web and echo
//! sessions, the exit servers), [`payload`] (checkable transfer bytes),
//! [`probe`] (cell-delay probes), [`pcap`] (captures), [`plot`] (SVG
//! charts), [`progress`] (the terminal progress bar), [`scenario`] (TOML
//! schema), [`sim`] (world and event loop), [`stats`] and [`results`]
//! (figures), [`output`] (files).

pub mod error;
pub mod host;
pub mod link;
pub mod network;
pub mod output;
pub mod payload;
pub mod pcap;
pub mod plot;
pub mod probe;
pub mod progress;
pub mod queue;
pub mod quic;
pub mod results;
pub mod rng;
pub mod scenario;
pub mod sim;
pub mod stats;
pub mod tcp;
pub mod tcp_model;
pub mod traffic;
pub mod transport;

pub use error::SimError;
pub use results::Results;
pub use scenario::Scenario;
pub use sim::Sim;
