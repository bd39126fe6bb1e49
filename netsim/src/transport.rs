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
use relay_link_udt::packet::{data_packet_cid, data_packet_number};

use crate::error::SimError;

/// Names one connection of a link core, unique for the core's life. Two
/// nodes can have several connections at once (both dialled at the same
/// time): each is a kernel link of its own, as in `relayd`, so circuits
/// built on one never die because the other came up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnKey(pub u64);

/// What a link core reports to its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreEvent {
    /// A connection is up and authenticated.
    Connected {
        /// The connection.
        conn: ConnKey,
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
    /// A connection the host was told of ended.
    Closed {
        /// The connection.
        conn: ConnKey,
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
    /// The connection a datagram just handled was addressed to, when the
    /// datagram's header says: only that connection can have new cells.
    /// None (the default): any connection to the sender may.
    fn input_conn(&self, _datagram: &[u8]) -> Option<ConnKey> {
        None
    }
    /// The next datagram to send, if any.
    fn poll_transmit(&mut self, now: Time, out: &mut Vec<u8>) -> Option<SocketAddr>;
    /// When `handle_timeout` should run next.
    fn poll_timeout(&self) -> Option<Time>;
    /// Runs timers.
    fn handle_timeout(&mut self, now: Time);
    /// The next event.
    fn poll_event(&mut self) -> Option<CoreEvent>;
    /// Cells waiting to be sent on `conn` (None: no such connection).
    fn queued_cells(&mut self, conn: ConnKey) -> Option<usize>;
    /// Queues a cell on `conn`; gives it back if there is no such connection.
    fn queue_cell(&mut self, conn: ConnKey, cell: Cell) -> Result<(), Cell>;
    /// A cell received on `conn`, in the order the link delivers.
    fn pop_ready(&mut self, conn: ConnKey) -> Option<Cell>;
    /// Cells retransmitted over the core's life, on every connection it
    /// has had (read for results, not per datagram).
    fn retransmitted_total(&self) -> u64;
    /// Circuit ids of the cells in a datagram just sent to `to`.
    fn datagram_circuits(&mut self, to: &SocketAddr, datagram: &[u8], out: &mut Vec<u32>);
    /// Whether the core's datagrams are whole IPv4 packets (the network
    /// then adds no IPv4 + UDP header of its own).
    fn ip_header_included(&self) -> bool {
        false
    }
    /// Whether `poll_timeout` covers everything that time alone can make
    /// the core send: then a host woken before that time, with no input,
    /// has nothing to do. False (the default) when not shown: quinn-proto
    /// does send at such wake-ups (the quick and long-fat scenarios differ
    /// when they are skipped).
    fn timeout_covers_sends(&self) -> bool {
        false
    }
}

/// A second connection between the same pair of nodes came up: whether it
/// replaces the one we have. Connections dialled by different ends (both
/// dialled at once) both stay: each is its own kernel link with its own
/// circuits, and closing either would kill circuits built on it. A second
/// connection dialled by the same end as the first means that end lost
/// the first (it restarted, or gave up on it), so the newer replaces it.
/// Both ends see the same diallers, so they agree.
pub fn replaces(old_initiator: bool, new_initiator: bool) -> bool {
    old_initiator == new_initiator
}

/// The real udt endpoint (it keeps several connections per address pair
/// and closes those of a restarted peer itself).
pub struct UdtCore {
    ep: Endpoint,
}

impl UdtCore {
    /// A udt endpoint for `identity`; `secret` seeds its cookie key and
    /// hash tables; `max_datagram` is the UDP payload limit; `cc` the
    /// congestion controller; `probe_ceiling`, when not 0, turns on
    /// datagram size discovery up to that size from a start at the usual
    /// 1,472 bytes (see `Scenario::udt_max_datagram_probe`).
    pub fn new(
        identity: &Identity,
        secret: [u8; 32],
        max_datagram: usize,
        cc: CongestionKind,
        probe_ceiling: usize,
    ) -> Result<Self, SimError> {
        let key = StaticKey::new(identity).map_err(|e| SimError::Link(e.to_string()))?;
        let mut conn = ConnConfig {
            max_datagram,
            cc,
            ..ConnConfig::default()
        };
        if probe_ceiling > 0 {
            // Start at the usual base, as on real sockets, and search.
            conn.max_datagram = max_datagram.min(ConnConfig::default().max_datagram);
            conn.max_datagram_probe = probe_ceiling;
        }
        let config = EndpointConfig {
            conn,
            ..EndpointConfig::default()
        };
        Ok(UdtCore {
            ep: Endpoint::new(key, config, secret),
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

    fn input_conn(&self, datagram: &[u8]) -> Option<ConnKey> {
        // A DATA header names the receiver's connection id in the clear
        // (it is the AEAD's associated data, not encrypted).
        data_packet_cid(datagram).map(ConnKey)
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
        Some(match self.ep.poll_event()? {
            EndpointEvent::Connected {
                id,
                addr,
                peer,
                initiator,
            } => CoreEvent::Connected {
                conn: ConnKey(id.0),
                addr,
                peer,
                initiator,
            },
            EndpointEvent::ConnectFailed { addr, .. } => CoreEvent::ConnectFailed { addr },
            EndpointEvent::Closed { id, addr, .. } => CoreEvent::Closed {
                conn: ConnKey(id.0),
                addr,
            },
        })
    }

    fn queued_cells(&mut self, conn: ConnKey) -> Option<usize> {
        self.ep
            .conn_by_id_ref(ConnId(conn.0))
            .map(|c| c.queued_cells())
    }

    fn queue_cell(&mut self, conn: ConnKey, cell: Cell) -> Result<(), Cell> {
        match self.ep.conn_by_id(ConnId(conn.0)) {
            Some(c) => {
                c.queue_cell(cell);
                Ok(())
            }
            None => Err(cell),
        }
    }

    fn pop_ready(&mut self, conn: ConnKey) -> Option<Cell> {
        self.ep.conn_by_id(ConnId(conn.0))?.pop_ready()
    }

    fn retransmitted_total(&self) -> u64 {
        self.ep.retransmitted_cells()
    }

    fn timeout_covers_sends(&self) -> bool {
        true
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
    fn crossing_dials_both_stay_and_a_redial_replaces() {
        // Each end dialled once: both connections stay, at either end.
        assert!(!replaces(true, false));
        assert!(!replaces(false, true));
        // The same end dialled again (it restarted): the newer wins.
        assert!(replaces(false, false));
        assert!(replaces(true, true));
    }
}
