//! The circuit table: circuits in a slab, indexed by (link, wire circuit id).
//!
//! A relayed circuit is reachable from both of its links: cells from the
//! previous hop arrive on the `Prev` side, cells from the next hop on the
//! `Next` side. One hash lookup per cell finds the circuit and the direction.
//! Slots carry a generation so a stale [`CircuitRef`] never reaches a newer
//! circuit in a reused slot.

use std::collections::{HashMap, VecDeque};

use super::edge::Edge;
use super::origin::OriginState;
use super::relay::RelayState;
use super::{CircuitRef, LinkId};
use crate::cell::{Cell, CircId};
use crate::time::Time;

/// Which neighbour a (link, circuit id) pair leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// Towards the client.
    Prev,
    /// Towards the last hop.
    Next,
}

/// What this node is on the circuit.
///
/// The relay state is inline, not boxed: it is what every forwarded cell
/// touches, and dropping the pointer chase took the node forward path from
/// 1.36-1.43 to 1.31-1.36 x a raw open (benches/benches/forward.rs, paired).
/// Most circuits at a relay are relayed, so the size is spent anyway.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Role {
    /// This node built it.
    Origin(Box<OriginState>),
    /// This node is a hop.
    Relay(RelayState),
}

/// One circuit.
pub(crate) struct Circuit {
    /// The previous hop (relays only).
    pub prev: Option<(LinkId, CircId)>,
    /// The next hop (the first hop, for the origin).
    pub next: Option<(LinkId, CircId)>,
    pub role: Role,
    /// Streams and congestion control when this node is an end of the
    /// circuit (the origin, or the current last hop).
    pub edge: Option<Edge>,
    /// Cells waiting for the previous hop's link (each circuit has its own
    /// queue per direction; links serve circuits round-robin).
    pub to_prev: VecDeque<Cell>,
    /// Cells waiting for the next hop's link.
    pub to_next: VecDeque<Cell>,
    /// When the circuit must be ready (building circuits only).
    pub deadline: Option<Time>,
}

impl Circuit {
    /// A circuit with empty queues.
    pub fn new(
        prev: Option<(LinkId, CircId)>,
        next: Option<(LinkId, CircId)>,
        role: Role,
        edge: Option<Edge>,
        deadline: Option<Time>,
    ) -> Circuit {
        Circuit {
            prev,
            next,
            role,
            edge,
            to_prev: VecDeque::new(),
            to_next: VecDeque::new(),
            deadline,
        }
    }

    /// Cells queued on links for this circuit.
    pub fn queued(&self) -> u32 {
        (self.to_prev.len() + self.to_next.len()) as u32
    }
}

/// Mutable circuit fields next to its origin state (see `origin_mut`).
pub(crate) struct OriginFields<'a> {
    pub deadline: &'a mut Option<Time>,
    pub edge: &'a mut Option<Edge>,
}

struct Slot {
    generation: u32,
    circuit: Option<Circuit>,
}

/// A hash map with foldhash, seeded per node from the node's RNG: about
/// five times cheaper than SipHash on these small keys (measured in the
/// `forward` bench), and the per-node random seed keeps remote peers, who
/// choose half of the circuit ids, from predicting collisions.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// An empty [`FastMap`] with a seed.
pub(crate) fn fast_map<K, V>(seed: u64) -> FastMap<K, V> {
    HashMap::with_hasher(foldhash::fast::FixedState::with_seed(seed))
}

/// The table.
pub(crate) struct CircuitTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_link: FastMap<(LinkId, CircId), (u32, Side)>,
}

impl CircuitTable {
    pub fn new(seed: u64) -> CircuitTable {
        CircuitTable {
            slots: Vec::new(),
            free: Vec::new(),
            by_link: fast_map(seed),
        }
    }

    pub fn insert(&mut self, circuit: Circuit) -> CircuitRef {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    circuit: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        s.generation = s.generation.wrapping_add(1);
        s.circuit = Some(circuit);
        let r = CircuitRef {
            slot,
            generation: s.generation,
        };
        let (prev, next) = match &s.circuit {
            Some(c) => (c.prev, c.next),
            None => (None, None),
        };
        if let Some(p) = prev {
            self.bind(p, r, Side::Prev);
        }
        if let Some(n) = next {
            self.bind(n, r, Side::Next);
        }
        r
    }

    pub fn bind(&mut self, (link, id): (LinkId, CircId), r: CircuitRef, side: Side) {
        self.by_link.insert((link, id), (r.slot, side));
    }

    pub fn unbind(&mut self, (link, id): (LinkId, CircId)) {
        self.by_link.remove(&(link, id));
    }

    pub fn get(&self, r: CircuitRef) -> Option<&Circuit> {
        self.slots
            .get(r.slot as usize)
            .filter(|s| s.generation == r.generation)
            .and_then(|s| s.circuit.as_ref())
    }

    pub fn get_mut(&mut self, r: CircuitRef) -> Option<&mut Circuit> {
        self.slots
            .get_mut(r.slot as usize)
            .filter(|s| s.generation == r.generation)
            .and_then(|s| s.circuit.as_mut())
    }

    pub fn remove(&mut self, r: CircuitRef) -> Option<Circuit> {
        let s = self
            .slots
            .get_mut(r.slot as usize)
            .filter(|s| s.generation == r.generation)?;
        let c = s.circuit.take()?;
        self.free.push(r.slot);
        if let Some(p) = c.prev {
            self.unbind(p);
        }
        if let Some(n) = c.next {
            self.unbind(n);
        }
        Some(c)
    }

    pub fn lookup(&self, link: LinkId, id: CircId) -> Option<(CircuitRef, Side)> {
        let (slot, side) = *self.by_link.get(&(link, id))?;
        let generation = self.slots.get(slot as usize)?.generation;
        Some((CircuitRef { slot, generation }, side))
    }

    pub fn id_in_use(&self, link: LinkId, id: CircId) -> bool {
        self.by_link.contains_key(&(link, id))
    }

    pub fn on_link(&self, link: LinkId) -> Vec<(CircuitRef, Side)> {
        let mut v: Vec<(CircuitRef, Side)> = self
            .by_link
            .iter()
            .filter(|((l, _), _)| *l == link)
            .filter_map(|((l, id), _)| self.lookup(*l, *id))
            .collect();
        v.sort_by_key(|(r, _)| *r);
        v
    }

    /// A circuit this node built: its origin state and the circuit fields
    /// the origin code changes alongside it.
    pub fn origin_mut(&mut self, r: CircuitRef) -> Option<(OriginFields<'_>, &mut OriginState)> {
        let c = self.get_mut(r)?;
        match &mut c.role {
            Role::Origin(o) => Some((
                OriginFields {
                    deadline: &mut c.deadline,
                    edge: &mut c.edge,
                },
                o,
            )),
            Role::Relay(_) => None,
        }
    }

    pub fn is_origin(&self, r: CircuitRef) -> bool {
        matches!(self.get(r).map(|c| &c.role), Some(Role::Origin(_)))
    }

    pub fn iter(&self) -> impl Iterator<Item = (CircuitRef, &Circuit)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.circuit.as_ref().map(|c| {
                (
                    CircuitRef {
                        slot: i as u32,
                        generation: s.generation,
                    },
                    c,
                )
            })
        })
    }

    pub fn earliest_deadline(&self) -> Option<Time> {
        self.iter()
            .flat_map(|(_, c)| [c.deadline, c.edge.as_ref().and_then(|e| e.wakeup)])
            .flatten()
            .min()
    }

    /// Circuits whose build deadline passed.
    pub fn expired(&self, now: Time) -> Vec<CircuitRef> {
        self.iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(r, _)| r)
            .collect()
    }

    /// Circuits whose paced sending is due.
    pub fn paced_due(&self, now: Time) -> Vec<CircuitRef> {
        self.iter()
            .filter(|(_, c)| {
                c.edge
                    .as_ref()
                    .and_then(|e| e.wakeup)
                    .is_some_and(|w| w <= now)
            })
            .map(|(r, _)| r)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}
