//! Circuits this node builds: telescoping construction, extension and
//! truncation, and unwrapping of cells that come back.

use super::edge::Edge;
use super::relay::{parse_handshake_body, write_handshake_body};
use super::{Circuit, CircuitRef, Event, LinkId, Node, Role, Side};
use crate::cell::{Cell, CellCommand, BODY_LEN};
use crate::crypto::onion::{ClientOnion, MAX_HOPS};
use crate::error::NodeError;
use crate::flow::{CircuitCc, SendmeCounter};
use crate::handshake::ClientHandshake;
use crate::ids::NodeId;
use crate::relay_msg::{EndReason, Extend, RelayCommand};
use crate::time::Time;

/// One hop of a path, as the client knows it (from a descriptor).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HopSpec {
    /// Node id.
    pub id: NodeId,
    /// Onion key.
    pub onion_key: [u8; 32],
    /// Link address, e.g. `udt://127.0.0.1:9001` (used by the previous hop).
    pub addr: String,
}

/// Where a circuit this node builds is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Hops are being added towards the requested path.
    Building,
    /// Usable.
    Ready,
    /// TRUNCATE sent; waiting for TRUNCATED from the hop before the last.
    Truncating,
}

/// The origin's state for one circuit.
pub(crate) struct OriginState {
    pub onion: ClientOnion,
    /// The full requested path; `onion.len()` hops of it are built.
    pub path: Vec<HopSpec>,
    pub pending: Option<ClientHandshake>,
    pub phase: Phase,
}

/// Information about a circuit for listings.
#[derive(Clone, Debug)]
pub struct CircuitInfo {
    /// The circuit.
    pub circuit: CircuitRef,
    /// Node ids of the hops built so far (origin circuits), else empty.
    pub hops: Vec<NodeId>,
    /// Whether this node built it.
    pub origin: bool,
    /// Whether it is ready for streams (origin circuits).
    pub ready: bool,
    /// Open streams at this node.
    pub streams: usize,
    /// Cells queued on links for it.
    pub queued: u32,
    /// Congestion window, where this node is an edge.
    pub cwnd: Option<u32>,
    /// Cells sent and not yet acknowledged by a SENDME, where this node is
    /// an edge.
    pub inflight: Option<u32>,
    /// Link and wire id towards the client (relayed circuits).
    pub prev: Option<(LinkId, crate::cell::CircId)>,
    /// Link and wire id towards the last hop.
    pub next: Option<(LinkId, crate::cell::CircId)>,
}

impl Node {
    /// Builds a circuit along `path` (1 to 8 hops), starting on `first_link`,
    /// which must be a link to `path[0]`. [`Event::CircuitReady`] or
    /// [`Event::CircuitClosed`] follows.
    pub fn build_circuit(
        &mut self,
        now: Time,
        first_link: LinkId,
        path: Vec<HopSpec>,
    ) -> Result<CircuitRef, NodeError> {
        if path.is_empty() || path.len() > MAX_HOPS {
            return Err(NodeError::BadPathLength);
        }
        let first = &path[0];
        if self.link_peer(first_link) != Some(first.id) {
            return Err(NodeError::NoSuchLink);
        }
        let circuits = &self.circuits;
        let id = self
            .out
            .alloc_circ_id(first_link, &mut *self.rng, |id| {
                circuits.id_in_use(first_link, id)
            })
            .ok_or(NodeError::TooManyStreams)?;
        let (hs, msg) = ClientHandshake::start(&mut *self.rng, first.id, first.onion_key);
        let circ = self.circuits.insert(Circuit::new(
            None,
            Some((first_link, id)),
            Role::Origin(Box::new(OriginState {
                onion: ClientOnion::new(),
                path,
                pending: Some(hs),
                phase: Phase::Building,
            })),
            Some(Edge::new(self.config.cc)),
            Some(now.plus_nanos(self.config.build_timeout)),
        ));
        let mut cell = self.out.pool.take(id.get(), CellCommand::Create);
        write_handshake_body(cell.body_mut(), &msg);
        if let Some(c) = self.circuits.get_mut(circ) {
            self.out.queue_cell(c, circ, Side::Next, cell);
        }
        Ok(circ)
    }

    /// Adds one hop to a ready circuit (for example after a truncation).
    pub fn extend_circuit(
        &mut self,
        now: Time,
        circ: CircuitRef,
        hop: HopSpec,
    ) -> Result<(), NodeError> {
        let deadline = now.plus_nanos(self.config.build_timeout);
        let (c, o) = self
            .circuits
            .origin_mut(circ)
            .ok_or(NodeError::NoSuchCircuit)?;
        if o.phase != Phase::Ready {
            return Err(NodeError::NotReady);
        }
        if o.path.len() >= MAX_HOPS {
            return Err(NodeError::BadPathLength);
        }
        o.path.truncate(o.onion.len());
        o.path.push(hop);
        o.phase = Phase::Building;
        *c.deadline = Some(deadline);
        self.origin_continue_build(now, circ);
        Ok(())
    }

    /// Asks the last hop to leave; [`Event::CircuitTruncated`] follows.
    pub fn truncate_circuit(&mut self, now: Time, circ: CircuitRef) -> Result<(), NodeError> {
        let (_, o) = self
            .circuits
            .origin_mut(circ)
            .ok_or(NodeError::NoSuchCircuit)?;
        if o.phase != Phase::Ready || o.onion.len() < 2 {
            return Err(NodeError::NotReady);
        }
        o.phase = Phase::Truncating;
        self.edge_send(now, circ, RelayCommand::Truncate, 0, &[])
    }

    /// Closes a circuit this node built (or any circuit, as an operator).
    pub fn close_circuit(&mut self, now: Time, circ: CircuitRef) -> Result<(), NodeError> {
        if self.circuits.get(circ).is_none() {
            return Err(NodeError::NoSuchCircuit);
        }
        self.kill_circuit(now, circ, EndReason::Done);
        Ok(())
    }

    /// Hops built so far on a circuit this node built.
    pub fn circuit_hops(&self, circ: CircuitRef) -> Option<usize> {
        match &self.circuits.get(circ)?.role {
            Role::Origin(o) => Some(o.onion.len()),
            Role::Relay(_) => None,
        }
    }

    /// All circuits this node knows, for listings.
    pub fn circuits(&self) -> Vec<CircuitInfo> {
        self.circuits
            .iter()
            .map(|(r, c)| Self::info_of(r, c))
            .collect()
    }

    /// One circuit's listing entry.
    pub fn circuit_info(&self, circ: CircuitRef) -> Option<CircuitInfo> {
        self.circuits.get(circ).map(|c| Self::info_of(circ, c))
    }

    fn info_of(r: CircuitRef, c: &Circuit) -> CircuitInfo {
        let (hops, origin, ready) = match &c.role {
            Role::Origin(o) => (
                o.path[..o.onion.len()].iter().map(|h| h.id).collect(),
                true,
                o.phase == Phase::Ready,
            ),
            Role::Relay(_) => (Vec::new(), false, false),
        };
        CircuitInfo {
            circuit: r,
            hops,
            origin,
            ready,
            streams: c.edge.as_ref().map_or(0, |e| e.streams.len()),
            queued: c.queued(),
            cwnd: c.edge.as_ref().map(|e| e.cc.cwnd()),
            inflight: c.edge.as_ref().map(|e| e.cc.inflight()),
            prev: c.prev,
            next: c.next,
        }
    }

    /// A cell from the first hop of a circuit this node built.
    pub(super) fn origin_from_next(
        &mut self,
        now: Time,
        circ: CircuitRef,
        command: CellCommand,
        mut cell: Cell,
    ) {
        match command {
            CellCommand::Created => {
                let ok = self.origin_on_created(circ, cell.body());
                self.out.pool.give(cell);
                match ok {
                    Ok(()) => self.origin_continue_build(now, circ),
                    Err(_) => self.kill_circuit(now, circ, EndReason::Protocol),
                }
            }
            CellCommand::Relay => match self.origin_unwrap(circ, cell.body_mut()) {
                Ok((tag, from_hop, last)) if from_hop == last => {
                    self.edge_on_cell(now, circ, tag, cell)
                }
                Ok((_, from_hop, last)) => {
                    // From an earlier hop: only TRUNCATED is acceptable. It
                    // is the answer to our TRUNCATE when it comes from the
                    // hop before the last while truncating; otherwise the
                    // circuit broke there and is closed with its reason.
                    let room = &cell.body()[16..];
                    let reason = crate::relay_msg::RelayMsg::parse(room)
                        .ok()
                        .filter(|m| m.command == RelayCommand::Truncated)
                        .map(|m| EndReason::from_u8(m.body.first().copied().unwrap_or(1)));
                    self.out.pool.give(cell);
                    let truncating = matches!(
                        self.circuits.get(circ).map(|c| &c.role),
                        Some(Role::Origin(o)) if o.phase == Phase::Truncating
                    );
                    match reason {
                        Some(_) if truncating && from_hop + 1 == last => {
                            self.origin_truncated(now, circ)
                        }
                        Some(reason) => self.kill_circuit(now, circ, reason),
                        None => self.kill_circuit(now, circ, EndReason::Protocol),
                    }
                }
                Err(_) => {
                    self.out.pool.give(cell);
                    self.kill_circuit(now, circ, EndReason::Protocol);
                }
            },
            CellCommand::Destroy => {
                let reason = EndReason::from_u8(cell.body()[0]);
                self.out.pool.give(cell);
                self.circuit_lost_side(now, circ, Side::Next, reason);
            }
            _ => {
                self.out.pool.give(cell);
                self.kill_circuit(now, circ, EndReason::Protocol);
            }
        }
    }

    /// Unwraps an inbound cell. Normally only the last hop sends to the
    /// client; an earlier hop speaks only to say the circuit was cut after it
    /// (TRUNCATED), so when the last hop's seal does not verify, the earlier
    /// hops are tried, nearest first. Returns (tag, originating hop, hops).
    fn origin_unwrap(
        &mut self,
        circ: CircuitRef,
        body: &mut [u8],
    ) -> Result<([u8; 16], usize, usize), NodeError> {
        let (_, o) = self
            .circuits
            .origin_mut(circ)
            .ok_or(NodeError::NoSuchCircuit)?;
        let n = o.onion.len();
        // A failed open leaves the body unspecified: keep the original.
        let mut copy = [0u8; BODY_LEN];
        copy.copy_from_slice(body);
        if let Ok(tag) = o.onion.unwrap_inbound_from(n, body) {
            return Ok((tag, n, n));
        }
        for k in (1..n).rev() {
            body.copy_from_slice(&copy);
            if let Ok(tag) = o.onion.unwrap_inbound_from(k, body) {
                return Ok((tag, k, n));
            }
        }
        Err(NodeError::Crypto(crate::error::CryptoError::Auth))
    }

    fn origin_on_created(&mut self, circ: CircuitRef, body: &[u8]) -> Result<(), NodeError> {
        let (_, o) = self
            .circuits
            .origin_mut(circ)
            .ok_or(NodeError::NoSuchCircuit)?;
        if !o.onion.is_empty() {
            return Err(NodeError::NotReady);
        }
        let hs = o.pending.take().ok_or(NodeError::NotReady)?;
        let reply = parse_handshake_body(body).ok_or(NodeError::NotReady)?;
        let keys = hs.finish(reply).map_err(|_| NodeError::NotReady)?;
        o.onion.push_hop(&keys)?;
        Ok(())
    }

    /// EXTENDED from the last hop: add the new hop and go on.
    pub(super) fn origin_on_extended(&mut self, now: Time, circ: CircuitRef, body: &[u8]) {
        let result = (|| -> Result<(), NodeError> {
            let (c, o) = self
                .circuits
                .origin_mut(circ)
                .ok_or(NodeError::NoSuchCircuit)?;
            let hs = o.pending.take().ok_or(NodeError::NotReady)?;
            let len = usize::from(u16::from_be_bytes([
                *body.first().ok_or(NodeError::NotReady)?,
                *body.get(1).ok_or(NodeError::NotReady)?,
            ]));
            let reply = body.get(2..2 + len).ok_or(NodeError::NotReady)?;
            let keys = hs.finish(reply).map_err(|_| NodeError::NotReady)?;
            o.onion.push_hop(&keys)?;
            if let Some(e) = c.edge.as_mut() {
                e.cc = CircuitCc::new(self.config.cc);
                e.sendme = SendmeCounter::default();
            }
            Ok(())
        })();
        match result {
            Ok(()) => self.origin_continue_build(now, circ),
            Err(_) => self.kill_circuit(now, circ, EndReason::Protocol),
        }
    }

    /// Sends the next EXTEND, or declares the circuit ready.
    fn origin_continue_build(&mut self, now: Time, circ: CircuitRef) {
        let Some((c, o)) = self.circuits.origin_mut(circ) else {
            return;
        };
        let built = o.onion.len();
        let Some(hop) = o.path.get(built).cloned() else {
            o.phase = Phase::Ready;
            *c.deadline = None;
            self.out.events.push_back(Event::CircuitReady(circ));
            return;
        };
        let (hs, msg) = ClientHandshake::start(&mut *self.rng, hop.id, hop.onion_key);
        o.pending = Some(hs);
        let ext = Extend {
            node: hop.id.0,
            addr: &hop.addr,
            handshake: &msg,
        };
        let mut body = [0u8; 512];
        let sent = ext
            .write(&mut body)
            .map_err(NodeError::from)
            .and_then(|n| self.edge_send(now, circ, RelayCommand::Extend, 0, &body[..n]));
        if sent.is_err() {
            self.kill_circuit(now, circ, EndReason::Misc);
        }
    }

    /// TRUNCATED arrived from the hop before the last, as asked.
    fn origin_truncated(&mut self, now: Time, circ: CircuitRef) {
        let cc = self.config.cc;
        let Some((c, o)) = self.circuits.origin_mut(circ) else {
            return;
        };
        o.onion.pop_hop();
        o.path.truncate(o.onion.len());
        o.phase = Phase::Ready;
        let old = c.edge.replace(Edge::new(cc));
        let streams = match old {
            Some(old) => {
                // Keep stream ids unique for the circuit's life, so a
                // StreamRef the application still holds never names a new
                // stream.
                if let Some(e) = c.edge.as_mut() {
                    e.continue_ids_from(&old);
                }
                old.stream_ids()
            }
            None => Vec::new(),
        };
        self.report_streams_closed(circ, &streams, EndReason::Destroy);
        self.out.events.push_back(Event::CircuitTruncated(circ));
        let _ = now;
    }

    /// TRUNCATED that the client did not ask for: the circuit is broken.
    pub(super) fn origin_on_unexpected_truncated(
        &mut self,
        now: Time,
        circ: CircuitRef,
        reason: EndReason,
    ) {
        self.kill_circuit(now, circ, reason);
    }
}
