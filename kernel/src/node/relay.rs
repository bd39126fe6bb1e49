//! Cells on circuits this node relays: CREATE, forwarding in both
//! directions, DESTROY, and extension to a next hop.
//!
//! The forwarding path (`relay_from_prev` / `relay_from_next` with a next
//! hop) does one table lookup, one AEAD open or one keystream XOR, and moves
//! the cell's buffer to the other link's queue: no allocation.

use super::edge::Edge;
use super::{Circuit, CircuitRef, LinkId, Node, Role, Side};
use crate::cell::{Cell, CellCommand, CircId};
use crate::crypto::onion::RelayHop;
use crate::handshake::{self, CLIENT_MSG_LEN};
use crate::ids::NodeId;
use crate::relay_msg::{EndReason, Extend, RelayCommand};
use crate::time::Time;

/// Handshake type in CREATE/CREATED bodies.
pub(crate) const HANDSHAKE_NTOR_X25519: u16 = 1;

/// A relay's state for one circuit.
pub(crate) struct RelayState {
    pub hop: RelayHop,
    pub extend: ExtendState,
}

/// Progress of an EXTEND this hop is carrying out.
pub(crate) enum ExtendState {
    None,
    /// Waiting for the driver to open a link to the next node.
    AwaitingLink {
        handshake: Vec<u8>,
    },
    /// CREATE sent; waiting for CREATED.
    AwaitingCreated,
}

/// Reads a CREATE/CREATED body: type (2), length (2), data.
pub(crate) fn parse_handshake_body(body: &[u8]) -> Option<&[u8]> {
    let ty = u16::from_be_bytes([*body.first()?, *body.get(1)?]);
    let len = usize::from(u16::from_be_bytes([*body.get(2)?, *body.get(3)?]));
    if ty != HANDSHAKE_NTOR_X25519 {
        return None;
    }
    body.get(4..4 + len)
}

/// Writes a CREATE/CREATED body.
pub(crate) fn write_handshake_body(body: &mut [u8], data: &[u8]) {
    body.fill(0);
    body[..2].copy_from_slice(&HANDSHAKE_NTOR_X25519.to_be_bytes());
    body[2..4].copy_from_slice(&(data.len() as u16).to_be_bytes());
    body[4..4 + data.len()].copy_from_slice(data);
}

impl Node {
    pub(super) fn relay_on_create(&mut self, now: Time, link: LinkId, id: CircId, cell: Cell) {
        let _ = now;
        let peer_is_initiator = self.out.links.get(&link).is_some_and(|l| !l.initiator);
        if id.chosen_by_initiator() != peer_is_initiator {
            self.out.stats.cells_dropped += 1;
            self.out.pool.give(cell);
            self.out.send_destroy(link, id, EndReason::Protocol);
            return;
        }
        let reply = parse_handshake_body(cell.body()).and_then(|msg| {
            handshake::server_respond(&mut *self.rng, &self.id, &self.onion, msg).ok()
        });
        let Some((reply, keys)) = reply else {
            self.out.stats.cells_dropped += 1;
            self.out.pool.give(cell);
            self.out.send_destroy(link, id, EndReason::Protocol);
            return;
        };
        let Ok(hop) = RelayHop::new(&keys) else {
            self.out.pool.give(cell);
            self.out.send_destroy(link, id, EndReason::Misc);
            return;
        };
        let circ = self.circuits.insert(Circuit::new(
            Some((link, id)),
            None,
            Role::Relay(RelayState {
                hop,
                extend: ExtendState::None,
            }),
            Some(Edge::new(self.config.cc)),
            None,
        ));
        let mut cell = cell;
        cell.set_header(id.get(), CellCommand::Created);
        write_handshake_body(cell.body_mut(), &reply);
        if let Some(c) = self.circuits.get_mut(circ) {
            self.out.queue_cell(c, circ, Side::Prev, cell);
        }
    }

    /// A cell from the previous hop (travelling away from the client).
    pub(super) fn relay_from_prev(
        &mut self,
        now: Time,
        circ: CircuitRef,
        command: CellCommand,
        mut cell: Cell,
    ) {
        match command {
            CellCommand::Relay => {}
            CellCommand::Destroy => {
                let reason = EndReason::from_u8(cell.body()[0]);
                self.out.pool.give(cell);
                self.circuit_lost_side(now, circ, Side::Prev, reason);
                return;
            }
            _ => {
                self.out.pool.give(cell);
                self.kill_circuit(now, circ, EndReason::Protocol);
                return;
            }
        }
        let limit = self.config.max_queued_per_circuit;
        let Some(c) = self.circuits.get_mut(circ) else {
            return;
        };
        let Role::Relay(r) = &mut c.role else {
            return;
        };
        // A middle hop peels and pads in one pass; the last hop (or one
        // still extending) opens the cell for its edge.
        let next = match (c.next, &r.extend) {
            (Some((_, next_id)), ExtendState::None) => Some(next_id),
            _ => None,
        };
        let opened = match next {
            Some(_) => r.hop.open_forward(cell.body_mut()),
            None => r.hop.open_outbound(cell.body_mut()),
        };
        let tag = match opened {
            Ok(tag) => tag,
            Err(_) => {
                self.out.pool.give(cell);
                self.kill_circuit(now, circ, EndReason::Protocol);
                return;
            }
        };
        match next {
            Some(next_id) => {
                cell.set_circ_id(next_id);
                self.out.stats.cells_relayed += 1;
                let queued = self.out.queue_cell(c, circ, Side::Next, cell).unwrap_or(0);
                if queued > limit as usize {
                    self.kill_circuit(now, circ, EndReason::ResourceLimit);
                }
            }
            None => self.edge_on_cell(now, circ, tag, cell),
        }
    }

    /// A cell from the next hop (travelling towards the client).
    pub(super) fn relay_from_next(
        &mut self,
        now: Time,
        circ: CircuitRef,
        command: CellCommand,
        mut cell: Cell,
    ) {
        let limit = self.config.max_queued_per_circuit;
        match command {
            CellCommand::Relay => {
                let Some(c) = self.circuits.get_mut(circ) else {
                    return;
                };
                let (Role::Relay(r), Some((_, prev_id))) = (&mut c.role, c.prev) else {
                    return;
                };
                if !matches!(r.extend, ExtendState::None) {
                    self.out.pool.give(cell);
                    self.kill_circuit(now, circ, EndReason::Protocol);
                    return;
                }
                r.hop.layer_inbound(cell.body_mut());
                cell.set_circ_id(prev_id);
                self.out.stats.cells_relayed += 1;
                let queued = self.out.queue_cell(c, circ, Side::Prev, cell).unwrap_or(0);
                if queued > limit as usize {
                    self.kill_circuit(now, circ, EndReason::ResourceLimit);
                }
            }
            CellCommand::Created => {
                let reply = parse_handshake_body(cell.body()).map(|r| r.to_vec());
                self.out.pool.give(cell);
                let awaiting = matches!(
                    self.circuits.get(circ).map(|c| &c.role),
                    Some(Role::Relay(r)) if matches!(r.extend, ExtendState::AwaitingCreated)
                );
                match reply {
                    Some(reply) if awaiting => self.relay_extended(now, circ, &reply),
                    _ => self.kill_circuit(now, circ, EndReason::Protocol),
                }
            }
            CellCommand::Destroy => {
                let reason = EndReason::from_u8(cell.body()[0]);
                self.out.pool.give(cell);
                self.relay_lost_next(now, circ, reason);
            }
            _ => {
                self.out.pool.give(cell);
                self.kill_circuit(now, circ, EndReason::Protocol);
            }
        }
    }

    /// CREATED arrived for our EXTEND: tell the client, and start relaying.
    fn relay_extended(&mut self, now: Time, circ: CircuitRef, reply: &[u8]) {
        let mut body = [0u8; 2 + handshake::SERVER_MSG_LEN];
        let n = reply.len().min(handshake::SERVER_MSG_LEN);
        body[..2].copy_from_slice(&(n as u16).to_be_bytes());
        body[2..2 + n].copy_from_slice(&reply[..n]);
        if self
            .edge_send(now, circ, RelayCommand::Extended, 0, &body[..2 + n])
            .is_err()
        {
            self.kill_circuit(now, circ, EndReason::Misc);
            return;
        }
        let streams = match self.circuits.get_mut(circ) {
            Some(c) => {
                if let Role::Relay(r) = &mut c.role {
                    r.extend = ExtendState::None;
                }
                c.edge.take().map(|e| e.stream_ids()).unwrap_or_default()
            }
            None => return,
        };
        self.report_streams_closed(circ, &streams, EndReason::Destroy);
    }

    /// The next hop is gone: this hop becomes the last one and tells the
    /// client with TRUNCATED (the client decides whether to go on).
    pub(super) fn relay_lost_next(&mut self, now: Time, circ: CircuitRef, reason: EndReason) {
        let cc = self.config.cc;
        let Some(c) = self.circuits.get_mut(circ) else {
            return;
        };
        for cell in c.to_next.drain(..) {
            self.out.pool.give(cell);
        }
        if let Some(next) = c.next.take() {
            self.circuits.unbind(next);
        }
        let Some(c) = self.circuits.get_mut(circ) else {
            return;
        };
        if let Role::Relay(r) = &mut c.role {
            r.extend = ExtendState::None;
        }
        if c.edge.is_none() {
            c.edge = Some(Edge::new(cc));
        }
        if c.prev.is_none() {
            self.kill_circuit(now, circ, reason);
            return;
        }
        if self
            .edge_send(now, circ, RelayCommand::Truncated, 0, &[reason as u8])
            .is_err()
        {
            self.kill_circuit(now, circ, reason);
        }
    }

    /// EXTEND arrived at this (last) hop.
    pub(super) fn relay_on_extend(&mut self, now: Time, circ: CircuitRef, body: &[u8]) {
        let Ok(ext) = Extend::parse(body) else {
            self.kill_circuit(now, circ, EndReason::Protocol);
            return;
        };
        let node = NodeId(ext.node);
        if node == self.id || ext.handshake.len() != CLIENT_MSG_LEN {
            self.relay_extend_failed(now, circ, EndReason::Protocol);
            return;
        }
        let addr = ext.addr.to_string();
        let handshake = ext.handshake.to_vec();
        match self.circuits.get_mut(circ).map(|c| &mut c.role) {
            Some(Role::Relay(r)) if matches!(r.extend, ExtendState::None) => {
                r.extend = ExtendState::AwaitingLink { handshake };
            }
            _ => {
                self.kill_circuit(now, circ, EndReason::Protocol);
                return;
            }
        }
        match self.link_to(&node) {
            Some(link) => self.relay_send_create(now, circ, link),
            None => {
                let waiting = self.pending_connect.entry(node).or_default();
                if waiting.is_empty() {
                    self.out
                        .events
                        .push_back(super::Event::Connect { node, addr });
                }
                waiting.push(circ);
            }
        }
    }

    /// A link to the next node is up: send it the CREATE.
    pub(super) fn relay_send_create(&mut self, now: Time, circ: CircuitRef, link: LinkId) {
        let circuits = &self.circuits;
        let Some(id) = self
            .out
            .alloc_circ_id(link, &mut *self.rng, |id| circuits.id_in_use(link, id))
        else {
            self.relay_extend_failed(now, circ, EndReason::ResourceLimit);
            return;
        };
        let Some(c) = self.circuits.get_mut(circ) else {
            return;
        };
        let Role::Relay(r) = &mut c.role else {
            return;
        };
        let ExtendState::AwaitingLink { handshake, .. } =
            std::mem::replace(&mut r.extend, ExtendState::AwaitingCreated)
        else {
            return;
        };
        c.next = Some((link, id));
        let mut cell = self.out.pool.take(id.get(), CellCommand::Create);
        write_handshake_body(cell.body_mut(), &handshake);
        self.out.queue_cell(c, circ, Side::Next, cell);
        self.circuits.bind((link, id), circ, Side::Next);
    }

    /// The extension could not be made: TRUNCATED back to the client.
    pub(super) fn relay_extend_failed(&mut self, now: Time, circ: CircuitRef, reason: EndReason) {
        if let Some(Role::Relay(r)) = self.circuits.get_mut(circ).map(|c| &mut c.role) {
            r.extend = ExtendState::None;
        }
        if self
            .edge_send(now, circ, RelayCommand::Truncated, 0, &[reason as u8])
            .is_err()
        {
            self.kill_circuit(now, circ, reason);
        }
    }
}
