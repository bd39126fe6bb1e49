//! relayd: the daemon that wires the sans-IO kernel to real links with
//! tokio, and serves tunnels, a SOCKS5 proxy, exits, a tracker and a
//! control port.

pub mod config;
pub mod descriptor;
pub mod exit_policy;
pub mod peers;
pub mod socks5;
pub mod spec;
