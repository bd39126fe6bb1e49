//! relayd: the daemon that wires the sans-IO kernel to real links with
//! tokio, and serves tunnels, a SOCKS5 proxy, exits, a tracker and a
//! control port.

pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod descriptor;
pub mod directory;
pub mod exit;
pub mod exit_policy;
pub mod keys;
pub mod peers;
pub mod proxy;
pub mod pump;
pub mod run;
pub mod runtime;
pub mod services;
pub mod socks5;
pub mod spec;
