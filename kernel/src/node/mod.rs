//! The node state machine: one per process (or per simulated node).
//!
//! A node is a relay for everyone, and optionally a client (it builds
//! circuits and opens streams) and an exit edge (its driver answers stream
//! requests). The driver feeds it cells from links (`handle_cell`), pulls
//! cells to send (`poll_transmit`), pulls events (`poll_event`), calls the
//! application API (`build_circuit`, `open_stream`, `stream_write`, ...), and
//! honours `poll_timeout`. All randomness comes from the RNG given at
//! construction and all time from the `now` arguments.
//!
//! Submodules: `table` (the circuit table), `relay` (cells on relay
//! circuits, extension), `origin` (circuits this node built), `edge` (relay
//! messages and streams at either end of a circuit).

mod edge;
mod origin;
mod relay;
mod table;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use rand_core::CryptoRngCore;

use crate::cell::{Cell, CellCommand, CellPool, CircId};
use crate::flow::CcParams;
use crate::ids::{NodeId, OnionKeypair};
use crate::relay_msg::{EndReason, StreamKind};
use crate::stream::{StreamLimits, StreamRef, TargetAddr};
use crate::time::Time;

pub use origin::{CircuitInfo, HopSpec};
pub(crate) use table::{fast_map, Circuit, CircuitTable, FastMap, Role, Side};

/// A link, as the driver names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

/// A circuit, as the application names it (node-local; not the wire id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CircuitRef {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

impl std::fmt::Display for CircuitRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}",
            (u64::from(self.generation) << 32) | u64::from(self.slot)
        )
    }
}

impl CircuitRef {
    /// The number shown to users (`list circuits`, `close circuit <n>`).
    pub fn as_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.slot)
    }
    /// Inverse of [`Self::as_u64`].
    pub fn from_u64(n: u64) -> CircuitRef {
        CircuitRef {
            slot: n as u32,
            generation: (n >> 32) as u32,
        }
    }
}

/// What the node tells its driver and application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A circuit this node built is ready for streams.
    CircuitReady(CircuitRef),
    /// A circuit this node built was closed (by either end or a relay).
    CircuitClosed {
        /// The circuit.
        circuit: CircuitRef,
        /// Why.
        reason: EndReason,
    },
    /// A circuit lost its last hop after [`Node::truncate_circuit`].
    CircuitTruncated(CircuitRef),
    /// The node needs a link to this peer: open one, then call
    /// [`Node::link_up`], or [`Node::link_failed`].
    Connect {
        /// Who.
        node: NodeId,
        /// Link address from the EXTEND request.
        addr: String,
    },
    /// (Exit) A client asks to open a stream: answer with
    /// [`Node::accept_stream`] or [`Node::close_stream`].
    StreamRequest {
        /// The stream.
        stream: StreamRef,
        /// TCP, UDP or internal.
        kind: StreamKind,
        /// Where to.
        target: TargetAddr,
    },
    /// (Exit) A client asks to resolve a name: answer with
    /// [`Node::resolve_reply`].
    ResolveRequest {
        /// The stream carrying the request.
        stream: StreamRef,
        /// The name.
        host: String,
    },
    /// (Client) The exit answered a RESOLVE.
    Resolved {
        /// The stream.
        stream: StreamRef,
        /// Addresses (empty on failure).
        addrs: Vec<IpAddr>,
    },
    /// (Client) The exit opened the stream.
    StreamOpened(StreamRef),
    /// Data (or a datagram, or end of stream) is waiting to be read.
    StreamReadable(StreamRef),
    /// There is room to write again after a short write.
    StreamWritable(StreamRef),
    /// The stream is closed; unread data stays readable until read.
    StreamClosed {
        /// The stream.
        stream: StreamRef,
        /// Why.
        reason: EndReason,
    },
}

/// Tunables.
#[derive(Clone, Copy, Debug)]
pub struct NodeConfig {
    /// Congestion control parameters for circuits this node is an edge of.
    pub cc: CcParams,
    /// Stream buffer limits.
    pub streams: StreamLimits,
    /// A relay destroys a circuit with more cells than this queued on one
    /// link: the bound on what any sender can make a relay hold.
    pub max_queued_per_circuit: u32,
    /// Give up on a circuit not built within this many nanoseconds.
    pub build_timeout: u64,
    /// Spare cell buffers kept for reuse.
    pub cell_pool: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        let cc = CcParams::default();
        NodeConfig {
            cc,
            streams: StreamLimits::default(),
            // The window ceiling plus slack for control cells and the
            // SENDME_INC cells a receiver may hold before acknowledging.
            max_queued_per_circuit: cc.cwnd_max + 1024,
            build_timeout: 60_000_000_000,
            cell_pool: 4096,
        }
    }
}

/// Counters for `stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Cells received on links.
    pub cells_in: u64,
    /// Cells handed to links.
    pub cells_out: u64,
    /// Relay cells forwarded as a middle hop (both directions).
    pub cells_relayed: u64,
    /// Circuits destroyed because of a protocol violation or failed check.
    pub circuits_killed: u64,
    /// Cells dropped because they named no known circuit or were malformed.
    pub cells_dropped: u64,
    /// Largest number of cells queued for one circuit on one link.
    pub max_circuit_queue: u32,
    /// XOFF messages sent (a stream's reader fell behind).
    pub xoffs_sent: u64,
}

/// One link's state in the node.
pub(crate) struct LinkState {
    pub peer: NodeId,
    pub initiator: bool,
    /// Cells outside any live circuit (DESTROY), sent first.
    control: VecDeque<Cell>,
    /// Circuits with cells for this link, served round-robin so one busy
    /// circuit cannot delay the others (Tor schedules circuits likewise).
    circuits: VecDeque<(CircuitRef, Side)>,
    in_ready: bool,
}

/// Everything a circuit handler may need besides the circuit table.
pub(crate) struct Outbox {
    pub links: FastMap<LinkId, LinkState>,
    pub pool: CellPool,
    pub events: VecDeque<Event>,
    ready: VecDeque<LinkId>,
    pub stats: NodeStats,
}

impl Outbox {
    fn mark_ready(&mut self, link: LinkId) {
        if let Some(l) = self.links.get_mut(&link) {
            if !l.in_ready {
                l.in_ready = true;
                self.ready.push_back(link);
            }
        }
    }

    /// Queues a cell of circuit `circ` towards `side`. Returns the length of
    /// that queue, or None (cell recycled) when that side has no link.
    pub fn queue_cell(
        &mut self,
        c: &mut Circuit,
        circ: CircuitRef,
        side: Side,
        cell: Cell,
    ) -> Option<usize> {
        let (queue, at) = match side {
            Side::Prev => (&mut c.to_prev, c.prev),
            Side::Next => (&mut c.to_next, c.next),
        };
        let Some((link, _)) = at else {
            self.pool.give(cell);
            return None;
        };
        let Some(l) = self.links.get_mut(&link) else {
            self.pool.give(cell);
            return None;
        };
        if queue.is_empty() {
            l.circuits.push_back((circ, side));
        }
        if !l.in_ready {
            l.in_ready = true;
            self.ready.push_back(link);
        }
        queue.push_back(cell);
        let len = queue.len();
        self.stats.max_circuit_queue = self.stats.max_circuit_queue.max(len as u32);
        Some(len)
    }

    /// Queues a cell that belongs to no live circuit.
    pub fn queue_control(&mut self, link: LinkId, cell: Cell) {
        match self.links.get_mut(&link) {
            Some(l) => {
                l.control.push_back(cell);
                self.mark_ready(link);
            }
            None => self.pool.give(cell),
        }
    }

    /// Allocates a circuit id on a link, never colliding with the peer's.
    /// Ids are random (as in Tor), so a corrupted id is unlikely to name
    /// another live circuit and ids reveal nothing about circuit counts.
    pub fn alloc_circ_id(
        &mut self,
        link: LinkId,
        rng: &mut dyn CryptoRngCore,
        in_use: impl Fn(CircId) -> bool,
    ) -> Option<CircId> {
        let l = self.links.get(&link)?;
        let bit = if l.initiator {
            CircId::INITIATOR_BIT
        } else {
            0
        };
        for _ in 0..1024 {
            let raw = rng.next_u32() & !CircId::INITIATOR_BIT;
            if let Some(id) = CircId::new(raw | bit) {
                if !in_use(id) {
                    return Some(id);
                }
            }
        }
        None
    }

    /// Sends a DESTROY for a wire circuit id.
    pub fn send_destroy(&mut self, link: LinkId, circ: CircId, reason: EndReason) {
        let mut cell = self.pool.take(circ.get(), CellCommand::Destroy);
        cell.body_mut().fill(0);
        cell.body_mut()[0] = reason as u8;
        self.queue_control(link, cell);
    }
}

/// The node.
pub struct Node {
    id: NodeId,
    onion: OnionKeypair,
    config: NodeConfig,
    rng: Box<dyn CryptoRngCore + Send>,
    pub(crate) circuits: CircuitTable,
    pub(crate) out: Outbox,
    /// Relay circuits waiting for a link to a peer.
    pending_connect: HashMap<NodeId, Vec<CircuitRef>>,
}

impl Node {
    /// A node with identity `id`, onion key `onion`, and its RNG.
    pub fn new(
        id: NodeId,
        onion: OnionKeypair,
        config: NodeConfig,
        mut rng: Box<dyn CryptoRngCore + Send>,
    ) -> Node {
        let (table_seed, link_seed) = (rng.next_u64(), rng.next_u64());
        Node {
            id,
            onion,
            config,
            rng,
            circuits: CircuitTable::new(table_seed),
            out: Outbox {
                links: fast_map(link_seed),
                pool: CellPool::with_limit(config.cell_pool),
                events: VecDeque::new(),
                ready: VecDeque::new(),
                stats: NodeStats::default(),
            },
            pending_connect: HashMap::new(),
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's onion public key.
    pub fn onion_key(&self) -> [u8; 32] {
        self.onion.public
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        self.out.stats
    }

    // ----- links -------------------------------------------------------

    /// A link to `peer` is up. `initiator` says whether this node opened it
    /// (which decides the circuit-id half this node allocates from).
    pub fn link_up(&mut self, now: Time, link: LinkId, peer: NodeId, initiator: bool) {
        self.out.links.insert(
            link,
            LinkState {
                peer,
                initiator,
                control: VecDeque::new(),
                circuits: VecDeque::new(),
                in_ready: false,
            },
        );
        if let Some(waiting) = self.pending_connect.remove(&peer) {
            for circ in waiting {
                self.relay_send_create(now, circ, link);
            }
        }
    }

    /// A link to `peer` could not be opened: extensions waiting for it fail.
    pub fn link_failed(&mut self, now: Time, peer: NodeId) {
        if let Some(waiting) = self.pending_connect.remove(&peer) {
            for circ in waiting {
                self.relay_extend_failed(now, circ, EndReason::ConnectFailed);
            }
        }
    }

    /// A link went away: every circuit on it is destroyed, and the other
    /// side of each relayed circuit is told.
    pub fn link_down(&mut self, now: Time, link: LinkId) {
        if let Some(state) = self.out.links.remove(&link) {
            for cell in state.control {
                self.out.pool.give(cell);
            }
        }
        for (circ, side) in self.circuits.on_link(link) {
            self.circuit_lost_side(now, circ, side, EndReason::ConnReset);
        }
    }

    /// The peer of a link.
    pub fn link_peer(&self, link: LinkId) -> Option<NodeId> {
        self.out.links.get(&link).map(|l| l.peer)
    }

    /// Links and their peers.
    pub fn links(&self) -> impl Iterator<Item = (LinkId, NodeId)> + '_ {
        self.out.links.iter().map(|(id, l)| (*id, l.peer))
    }

    /// A link to `peer`, if one is up: the newest (highest id) when there
    /// are several. Two links to one peer come from simultaneous dials
    /// (either serves) or from a peer that restarted and dialled again,
    /// where the older link is dead but may not have timed out yet.
    pub fn link_to(&self, peer: &NodeId) -> Option<LinkId> {
        self.out
            .links
            .iter()
            .filter(|(_, l)| l.peer == *peer)
            .map(|(id, _)| *id)
            .max()
    }

    /// Cells queued on a link (control cells and every circuit's queue).
    pub fn queued_on(&self, link: LinkId) -> usize {
        let control = self.out.links.get(&link).map_or(0, |l| l.control.len());
        let circuits: usize = self
            .circuits
            .iter()
            .map(|(_, c)| {
                let prev = if c.prev.map(|p| p.0) == Some(link) {
                    c.to_prev.len()
                } else {
                    0
                };
                let next = if c.next.map(|n| n.0) == Some(link) {
                    c.to_next.len()
                } else {
                    0
                };
                prev + next
            })
            .sum();
        control + circuits
    }

    // ----- I/O ---------------------------------------------------------

    /// Handles a cell received on `link`. Never fails: a bad cell closes its
    /// circuit or is dropped.
    pub fn handle_cell(&mut self, now: Time, link: LinkId, cell: Cell) {
        self.out.stats.cells_in += 1;
        let (command, circ_id) = match (cell.command(), cell.circ_id()) {
            (Ok(CellCommand::Padding | CellCommand::LinkInfo), _) => {
                self.out.pool.give(cell);
                return;
            }
            (Ok(cmd), Ok(id)) => (cmd, id),
            (Err(_), Ok(id)) => {
                // Unknown command on a known circuit: protocol violation.
                if let Some((circ, _)) = self.circuits.lookup(link, id) {
                    self.kill_circuit(now, circ, EndReason::Protocol);
                }
                self.out.stats.cells_dropped += 1;
                self.out.pool.give(cell);
                return;
            }
            (_, Err(_)) => {
                self.out.stats.cells_dropped += 1;
                self.out.pool.give(cell);
                return;
            }
        };
        match self.circuits.lookup(link, circ_id) {
            // Circuits exist only on known links, so only CREATE needs the
            // link checked.
            None => match command {
                CellCommand::Create if self.out.links.contains_key(&link) => {
                    self.relay_on_create(now, link, circ_id, cell)
                }
                _ => {
                    // DESTROY for a circuit we already closed, or junk.
                    self.out.stats.cells_dropped += 1;
                    self.out.pool.give(cell);
                }
            },
            Some((circ, Side::Prev)) => self.relay_from_prev(now, circ, command, cell),
            Some((circ, Side::Next)) => {
                if self.circuits.is_origin(circ) {
                    self.origin_from_next(now, circ, command, cell)
                } else {
                    self.relay_from_next(now, circ, command, cell)
                }
            }
        }
    }

    /// The next cell to send on `link`, if any: control cells first, then
    /// one cell from each circuit with queued cells in turn.
    pub fn poll_transmit(&mut self, link: LinkId) -> Option<Cell> {
        let l = self.out.links.get_mut(&link)?;
        if let Some(cell) = l.control.pop_front() {
            self.out.stats.cells_out += 1;
            return Some(cell);
        }
        while let Some((circ, side)) = l.circuits.pop_front() {
            let Some(c) = self.circuits.get_mut(circ) else {
                continue;
            };
            let (queue, at) = match side {
                Side::Prev => (&mut c.to_prev, c.prev),
                Side::Next => (&mut c.to_next, c.next),
            };
            // The circuit may have moved that side to another link since.
            if at.map(|(l, _)| l) != Some(link) {
                continue;
            }
            let Some(cell) = queue.pop_front() else {
                continue;
            };
            if !queue.is_empty() {
                l.circuits.push_back((circ, side));
            }
            self.out.stats.cells_out += 1;
            return Some(cell);
        }
        None
    }

    /// A link that got cells to send since it was last returned here. A
    /// driver that stops draining a link early (it is congested) must come
    /// back to it by itself; the link is reported again only when new cells
    /// are queued. At most one entry per link is ever pending.
    pub fn poll_ready_link(&mut self) -> Option<LinkId> {
        while let Some(link) = self.out.ready.pop_front() {
            if let Some(l) = self.out.links.get_mut(&link) {
                l.in_ready = false;
                if !l.control.is_empty() || !l.circuits.is_empty() {
                    return Some(link);
                }
            }
        }
        None
    }

    /// Links that have cells queued now.
    pub fn links_with_output(&self) -> Vec<LinkId> {
        let mut v: Vec<LinkId> = self
            .out
            .links
            .keys()
            .copied()
            .filter(|l| self.queued_on(*l) > 0)
            .collect();
        v.sort();
        v
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    /// Gives a consumed cell's buffer back for reuse.
    pub fn recycle(&mut self, cell: Cell) {
        self.out.pool.give(cell);
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.circuits.earliest_deadline()
    }

    /// Runs timers due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        for circ in self.circuits.expired(now) {
            self.kill_circuit(now, circ, EndReason::Timeout);
        }
        for circ in self.circuits.paced_due(now) {
            self.flush_edge(now, circ);
        }
    }

    // ----- shared circuit plumbing ------------------------------------

    /// Destroys a circuit because of `reason`, telling every side.
    pub(crate) fn kill_circuit(&mut self, now: Time, circ: CircuitRef, reason: EndReason) {
        if matches!(reason, EndReason::Protocol | EndReason::ResourceLimit) {
            self.out.stats.circuits_killed += 1;
        }
        let _ = now;
        let Some(mut c) = self.circuits.remove(circ) else {
            return;
        };
        // Cells still queued for the circuit are dropped: it is gone.
        for cell in c.to_prev.drain(..).chain(c.to_next.drain(..)) {
            self.out.pool.give(cell);
        }
        if let Some((link, id)) = c.prev {
            self.out.send_destroy(link, id, reason);
        }
        if let Some((link, id)) = c.next {
            self.out.send_destroy(link, id, reason);
        }
        self.after_removed(c, circ, reason);
    }

    /// Events and bookkeeping once a circuit has left the table.
    fn after_removed(&mut self, c: Circuit, circ: CircuitRef, reason: EndReason) {
        if let Some(edge) = &c.edge {
            for id in edge.streams.keys() {
                self.out.events.push_back(Event::StreamClosed {
                    stream: StreamRef {
                        circuit: circ,
                        id: *id,
                    },
                    reason: EndReason::Destroy,
                });
            }
        }
        if let Role::Origin(_) = c.role {
            self.out.events.push_back(Event::CircuitClosed {
                circuit: circ,
                reason,
            });
        }
        for waiting in self.pending_connect.values_mut() {
            waiting.retain(|w| *w != circ);
        }
    }

    /// One side of a circuit is gone (DESTROY received or link down).
    fn circuit_lost_side(&mut self, now: Time, circ: CircuitRef, side: Side, reason: EndReason) {
        let is_relay = !self.circuits.is_origin(circ);
        match side {
            Side::Next if is_relay => self.relay_lost_next(now, circ, reason),
            _ => {
                // Forget the side that is gone so no DESTROY goes back to it.
                if let Some(c) = self.circuits.get_mut(circ) {
                    match side {
                        Side::Prev => c.prev = None,
                        Side::Next => c.next = None,
                    }
                }
                self.kill_circuit(now, circ, reason);
            }
        }
    }

    /// Circuits in the table (all roles).
    pub fn circuit_count(&self) -> usize {
        self.circuits.len()
    }
}
