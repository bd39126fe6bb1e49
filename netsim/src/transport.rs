//! The link protocol a simulated host runs, behind one small trait so the
//! host code does not care which link kind it drives (udt here, quic in
//! `quic/`, smoltcp TCP in `tcp.rs`, the TCP model in `tcp_model.rs`).
//!
//! [`UdtCore`] adapts the real `relay-link-udt` sans-IO [`Endpoint`]
//! (Noise handshake, AEAD per datagram, selective ACKs, per-circuit
//! ordering, CUBIC or the BBR-style model with pacing) without changing its
//! behaviour.

use std::net::SocketAddr;

use relay_kernel::{Cell, NodeId, Time};
use relay_link::{Identity, StaticKey};
use relay_link_udt::cc::CongestionKind;
use relay_link_udt::conn::ConnConfig;
use relay_link_udt::endpoint::{ConnId, Endpoint, EndpointConfig, EndpointEvent};
use relay_link_udt::packet::data_packet_number;

use crate::error::SimError;

/// What a link core reports to its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreEvent {
    /// A connection is up and authenticated.
    Connected {
        /// Peer address.
        addr: SocketAddr,
        /// Peer node.
        peer: NodeId,
        /// Whether we dialled.
        initiator: bool,
    },
    /// A dial failed.
    ConnectFailed {
        /// Peer address.
        addr: SocketAddr,
    },
    /// A connection ended.
    Closed {
        /// Peer address.
        addr: SocketAddr,
    },
}

/// A sans-IO link protocol endpoint: one per simulated host.
pub trait LinkCore {
    /// Name of the link kind, for reports.
    fn kind(&self) -> &'static str;
    /// Dials `addr`, expecting `expected`. False if it cannot start.
    fn connect(&mut self, now: Time, addr: SocketAddr, expected: NodeId) -> bool;
    /// A datagram arrived.
    fn handle_datagram(&mut self, now: Time, from: SocketAddr, data: &mut [u8]);
    /// The next datagram to send, if any.
    fn poll_transmit(&mut self, now: Time, out: &mut Vec<u8>) -> Option<SocketAddr>;
    /// When `handle_timeout` should run next.
    fn poll_timeout(&self) -> Option<Time>;
    /// Runs timers.
    fn handle_timeout(&mut self, now: Time);
    /// The next event.
    fn poll_event(&mut self) -> Option<CoreEvent>;
    /// Cells waiting to be sent to `addr` (None: no connection).
    fn queued_cells(&mut self, addr: &SocketAddr) -> Option<usize>;
    /// Queues a cell for `addr`; gives it back if there is no connection.
    fn queue_cell(&mut self, addr: &SocketAddr, cell: Cell) -> Result<(), Cell>;
    /// A cell received from `addr`, in the order the link delivers.
    fn pop_ready(&mut self, addr: &SocketAddr) -> Option<Cell>;
    /// Cells retransmitted on the connection to `addr` so far.
    fn retransmitted(&mut self, addr: &SocketAddr) -> u64;
    /// Circuit ids of the cells in a datagram just sent to `to`.
    fn datagram_circuits(&mut self, to: &SocketAddr, datagram: &[u8], out: &mut Vec<u32>);
    /// Whether the core's datagrams are whole IPv4 packets (the network
    /// then adds no IPv4 + UDP header of its own).
    fn ip_header_included(&self) -> bool {
        false
    }
}

/// Two connections between the same pair of nodes (both dialled at once,
/// or the peer restarted and dialled again): whether the newer one
/// replaces the one we have. Both ends must choose the same, so the rule
/// looks only at who dialled each: keep the one dialled by the smaller
/// node id; between two from the same dialler, the newer.
pub fn keep_newer(me: NodeId, peer: NodeId, old_initiator: bool, new_initiator: bool) -> bool {
    let dialler = |init: bool| if init { me } else { peer };
    let (old, new) = (dialler(old_initiator), dialler(new_initiator));
    old == new || new < old
}

/// The real udt endpoint.
pub struct UdtCore {
    ep: Endpoint,
    /// The connection a host knows per address (the host keeps one link
    /// per address; a Closed of an older connection it already replaced
    /// must not take down the newer one).
    current: std::collections::HashMap<SocketAddr, ConnId>,
}

impl UdtCore {
    /// A udt endpoint for `identity`; `secret` seeds its cookie key and
    /// hash tables; `max_datagram` is the UDP payload limit; `cc` the
    /// congestion controller.
    pub fn new(
        identity: &Identity,
        secret: [u8; 32],
        max_datagram: usize,
        cc: CongestionKind,
    ) -> Result<Self, SimError> {
        let key = StaticKey::new(identity).map_err(|e| SimError::Link(e.to_string()))?;
        let config = EndpointConfig {
            conn: ConnConfig {
                max_datagram,
                cc,
                ..ConnConfig::default()
            },
            ..EndpointConfig::default()
        };
        Ok(UdtCore {
            ep: Endpoint::new(key, config, secret),
            current: std::collections::HashMap::new(),
        })
    }
}

impl LinkCore for UdtCore {
    fn kind(&self) -> &'static str {
        "udt"
    }

    fn connect(&mut self, now: Time, addr: SocketAddr, expected: NodeId) -> bool {
        self.ep.connect(now, addr, expected).is_ok()
    }

    fn handle_datagram(&mut self, now: Time, from: SocketAddr, data: &mut [u8]) {
        self.ep.handle_datagram(now, from, data);
    }

    fn poll_transmit(&mut self, now: Time, out: &mut Vec<u8>) -> Option<SocketAddr> {
        self.ep.poll_transmit(now, out)
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.ep.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Time) {
        self.ep.handle_timeout(now);
    }

    fn poll_event(&mut self) -> Option<CoreEvent> {
        loop {
            let ev = match self.ep.poll_event()? {
                EndpointEvent::Connected {
                    id,
                    addr,
                    peer,
                    initiator,
                } => {
                    self.current.insert(addr, id);
                    CoreEvent::Connected {
                        addr,
                        peer,
                        initiator,
                    }
                }
                EndpointEvent::ConnectFailed { addr, .. } => CoreEvent::ConnectFailed { addr },
                EndpointEvent::Closed { id, addr, .. } => {
                    if self.current.get(&addr) != Some(&id) {
                        continue; // an older connection the host replaced
                    }
                    self.current.remove(&addr);
                    CoreEvent::Closed { addr }
                }
            };
            return Some(ev);
        }
    }

    fn queued_cells(&mut self, addr: &SocketAddr) -> Option<usize> {
        self.ep.conn_ref(addr).map(|c| c.queued_cells())
    }

    fn queue_cell(&mut self, addr: &SocketAddr, cell: Cell) -> Result<(), Cell> {
        match self.ep.conn(addr) {
            Some(c) => {
                c.queue_cell(cell);
                Ok(())
            }
            None => Err(cell),
        }
    }

    fn pop_ready(&mut self, addr: &SocketAddr) -> Option<Cell> {
        self.ep.conn(addr)?.pop_ready()
    }

    fn retransmitted(&mut self, addr: &SocketAddr) -> u64 {
        self.ep.conn_ref(addr).map_or(0, |c| c.retransmitted_cells)
    }

    fn datagram_circuits(&mut self, to: &SocketAddr, datagram: &[u8], out: &mut Vec<u32>) {
        let Some(pn) = data_packet_number(datagram) else {
            return;
        };
        if let Some(c) = self.ep.conn_ref(to) {
            out.extend(c.packet_circuits(pn));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_keep_the_same_connection() {
        let (a, b) = (NodeId([1; 32]), NodeId([2; 32]));
        // A (smaller id) has B's connection and then completes its own
        // dial; B has A's and then completes its own: both keep A's.
        assert!(keep_newer(a, b, false, true));
        assert!(!keep_newer(b, a, false, true));
        // In the other order each keeps A's too.
        assert!(!keep_newer(a, b, true, false));
        assert!(keep_newer(b, a, true, false));
        // A restarted peer dials again: the newer one wins at either end.
        assert!(keep_newer(a, b, false, false));
        assert!(keep_newer(b, a, true, true));
    }
}
