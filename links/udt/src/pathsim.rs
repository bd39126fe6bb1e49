//! Two udt endpoints over a modelled path in virtual time: the harness of
//! the impairment tests (`tests/impairment.rs`) and of the `udtpath` bench
//! binary (full-size long-fat runs too slow for the debug test profile).
//!
//! Each direction is a bottleneck of a given rate with a drop-tail queue,
//! then a fixed latency, with random or bursty (Gilbert-Elliott) loss,
//! duplication and reordering (an extra delay of up to 3 ms). Endpoint
//! `a` dials `b`; `b`'s node reads every cell as soon as it is ready and
//! checks that each circuit's cells arrive complete, in order and
//! unaltered. Everything is a function of the seed (a small SplitMix64
//! generator: the harness must not need an RNG crate to build).
//!
//! This is not netsim: one link, no kernel, no hosts; it measures the
//! link core alone.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use relay_kernel::{Cell, CellCommand, Time};
use relay_link::{Identity, StaticKey};

use crate::conn::Ended;
use crate::endpoint::{ConnId, Endpoint, EndpointConfig, EndpointEvent};

/// Nanoseconds per second.
pub const SEC: u64 = 1_000_000_000;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum PathSimError {
    /// A cell arrived out of order or altered.
    #[error("circuit {circuit}: expected cell {expected}, got other content")]
    Misdelivered {
        /// The circuit.
        circuit: u32,
        /// The cell index that was due.
        expected: u32,
    },
    /// A connection closed.
    #[error("connection closed: {0:?}")]
    Closed(Ended),
    /// The transfer did not finish in time.
    #[error("stalled: {delivered} of {total} cells delivered")]
    Stalled {
        /// Cells delivered.
        delivered: u64,
        /// Cells wanted.
        total: u64,
    },
    /// No connection to feed.
    #[error("not connected")]
    NotConnected,
    /// The handshake could not start.
    #[error("link: {0}")]
    Link(#[from] relay_link::LinkError),
}

/// SplitMix64.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64) < p * (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (0 for n = 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Fills `out`.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// One direction of the simulated path.
#[derive(Clone, Copy, Debug)]
pub struct PathModel {
    /// One-way latency after the bottleneck, ns.
    pub latency: u64,
    /// Bytes per second at the bottleneck.
    pub rate: u64,
    /// Bytes the bottleneck queue holds (drop-tail).
    pub queue_bytes: usize,
    /// Random loss probability per datagram.
    pub loss: f64,
    /// Gilbert-Elliott: P(good -> bad), P(bad -> good), loss in bad.
    pub burst: Option<(f64, f64, f64)>,
    /// Probability of a duplicate.
    pub duplicate: f64,
    /// Probability of an extra delay of up to 3 ms (reordering).
    pub reorder: f64,
    /// Largest datagram the path carries (UDP payload bytes); larger
    /// ones are dropped, as a router drops a packet above its MTU.
    pub max_datagram: usize,
}

impl Default for PathModel {
    /// 50 MB/s, 10 ms one way, a 1 MiB queue, no impairment.
    fn default() -> Self {
        PathModel {
            latency: 10_000_000,
            rate: 50_000_000,
            queue_bytes: 1 << 20,
            loss: 0.0,
            burst: None,
            duplicate: 0.0,
            reorder: 0.0,
            max_datagram: usize::MAX,
        }
    }
}

/// One direction's state.
pub struct Direction {
    /// The model.
    pub model: PathModel,
    /// When the bottleneck is free again.
    busy_until: Time,
    queued_bytes: VecDeque<(Time, usize)>,
    /// Sum of `queued_bytes`.
    backlog: usize,
    flight: BTreeMap<(Time, u64), Vec<u8>>,
    bad: bool,
    seq: u64,
    /// Datagram indices to drop deliberately.
    pub drop_these: Vec<u64>,
    /// Datagrams offered.
    pub sent: u64,
    /// Datagrams lost (queue overflow, loss, `drop_these`, too large).
    pub lost: u64,
    /// Largest datagram offered.
    pub largest: usize,
    /// Datagrams dropped for being larger than `model.max_datagram`.
    pub too_large: u64,
}

impl Direction {
    fn new(model: PathModel) -> Direction {
        Direction {
            model,
            busy_until: Time(0),
            queued_bytes: VecDeque::new(),
            backlog: 0,
            flight: BTreeMap::new(),
            bad: false,
            seq: 0,
            drop_these: Vec::new(),
            sent: 0,
            lost: 0,
            largest: 0,
            too_large: 0,
        }
    }

    fn send(&mut self, now: Time, dg: Vec<u8>, rng: &mut SimRng) {
        let index = self.sent;
        self.sent += 1;
        self.largest = self.largest.max(dg.len());
        if dg.len() > self.model.max_datagram {
            self.too_large += 1;
            self.lost += 1;
            return;
        }
        if self.drop_these.contains(&index) {
            self.lost += 1;
            return;
        }
        // Bottleneck queue (drop-tail).
        while let Some(&(t, b)) = self.queued_bytes.front() {
            if t > now {
                break;
            }
            self.queued_bytes.pop_front();
            self.backlog -= b;
        }
        if self.backlog + dg.len() > self.model.queue_bytes {
            self.lost += 1;
            return;
        }
        let lose = match self.model.burst {
            Some((g2b, b2g, bad_loss)) => {
                self.bad = if self.bad {
                    !rng.chance(b2g)
                } else {
                    rng.chance(g2b)
                };
                self.bad && rng.chance(bad_loss)
            }
            None => rng.chance(self.model.loss),
        };
        let ser = dg.len() as u64 * SEC / self.model.rate.max(1);
        let start = self.busy_until.max(now);
        self.busy_until = start.plus_nanos(ser);
        self.queued_bytes.push_back((self.busy_until, dg.len()));
        self.backlog += dg.len();
        if lose {
            self.lost += 1;
            return;
        }
        let mut at = self.busy_until.plus_nanos(self.model.latency);
        if rng.chance(self.model.reorder) {
            at = at.plus_nanos(rng.below(3_000_000));
        }
        if rng.chance(self.model.duplicate) {
            self.seq += 1;
            self.flight
                .insert((at.plus_nanos(100_000), self.seq), dg.clone());
        }
        self.seq += 1;
        self.flight.insert((at, self.seq), dg);
    }

    fn next_arrival(&self) -> Option<Time> {
        self.flight.keys().next().map(|(t, _)| *t)
    }

    fn pop_due(&mut self, now: Time) -> Option<Vec<u8>> {
        let key = *self.flight.keys().next()?;
        if key.0 > now {
            return None;
        }
        self.flight.remove(&key)
    }
}

/// Cell `i` of circuit `circ`: its body is a function of both, so the
/// receiver can check it.
pub fn cell(circ: u32, i: u32) -> Cell {
    let mut c = Cell::new(circ, CellCommand::Relay);
    SimRng::new((u64::from(circ) << 32) | u64::from(i)).fill(c.body_mut());
    c
}

/// Two endpoints and the path between them.
pub struct Sim {
    /// Virtual time.
    pub now: Time,
    /// The dialling endpoint (node 1).
    pub a: Endpoint,
    /// The answering endpoint (node 2).
    pub b: Endpoint,
    /// `a`'s address.
    pub a_addr: SocketAddr,
    /// `b`'s address.
    pub b_addr: SocketAddr,
    /// The path from `a` to `b`.
    pub ab: Direction,
    /// The path from `b` to `a`.
    pub ba: Direction,
    rng: SimRng,
    /// Per circuit: next cell index to deliver at b.
    next_at_b: BTreeMap<u32, u32>,
    /// (time, circuit, index) of every delivery at b.
    pub deliveries: Vec<(Time, u32, u32)>,
    /// The reordering wait (microseconds) of each cell delivered at b
    /// with a non-zero one, by (circuit, index).
    pub reorder_waits: BTreeMap<(u32, u32), u32>,
    /// Most cells `b` held for one connection (ready or waiting).
    pub max_buffered: usize,
    /// Most cells queued at `a` for one connection.
    pub max_queued: usize,
}

impl Sim {
    /// `a` dials `b` over `forward` (a to b) and `back`.
    pub fn new(
        forward: PathModel,
        back: PathModel,
        seed: u64,
        cfg: EndpointConfig,
    ) -> Result<Sim, PathSimError> {
        let a_id = Identity::from_secret([1; 32]);
        let b_id = Identity::from_secret([2; 32]);
        let mut sim = Sim {
            now: Time(1),
            a: Endpoint::new(StaticKey::new(&a_id)?, cfg, [1; 32]),
            b: Endpoint::new(StaticKey::new(&b_id)?, cfg, [2; 32]),
            a_addr: SocketAddr::from(([10, 0, 0, 1], 1)),
            b_addr: SocketAddr::from(([10, 0, 0, 2], 1)),
            ab: Direction::new(forward),
            ba: Direction::new(back),
            rng: SimRng::new(seed),
            next_at_b: BTreeMap::new(),
            deliveries: Vec::new(),
            reorder_waits: BTreeMap::new(),
            max_buffered: 0,
            max_queued: 0,
        };
        sim.a.connect(sim.now, sim.b_addr, b_id.node_id())?;
        Ok(sim)
    }

    /// When b delivered cell `idx` of circuit `circ`, if it did.
    pub fn delivered_at(&self, circ: u32, idx: u32) -> Option<Time> {
        self.deliveries
            .iter()
            .find(|(_, c, i)| *c == circ && *i == idx)
            .map(|(t, _, _)| *t)
    }

    /// Dials another connection from `a` to `b`.
    pub fn connect_again(&mut self) -> Result<ConnId, PathSimError> {
        let b_id = Identity::from_secret([2; 32]).node_id();
        Ok(self.a.connect(self.now, self.b_addr, b_id)?)
    }

    /// Advances to the next event and processes it.
    pub fn step(&mut self) -> Result<(), PathSimError> {
        let mut buf = Vec::new();
        while self.a.poll_transmit(self.now, &mut buf).is_some() {
            self.ab.send(self.now, buf.clone(), &mut self.rng);
        }
        while self.b.poll_transmit(self.now, &mut buf).is_some() {
            self.ba.send(self.now, buf.clone(), &mut self.rng);
        }
        let next = [
            self.ab.next_arrival(),
            self.ba.next_arrival(),
            self.a.poll_timeout(),
            self.b.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else { return Ok(()) };
        self.now = next.max(self.now.plus_nanos(1));
        while let Some(mut dg) = self.ab.pop_due(self.now) {
            self.b.handle_datagram(self.now, self.a_addr, &mut dg);
        }
        while let Some(mut dg) = self.ba.pop_due(self.now) {
            self.a.handle_datagram(self.now, self.b_addr, &mut dg);
        }
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        while let Some(ev) = self.a.poll_event().or_else(|| self.b.poll_event()) {
            if let EndpointEvent::Closed { reason, .. } = ev {
                return Err(PathSimError::Closed(reason));
            }
        }
        // b's node reads everything ready on every connection, checking
        // order and content (connections use disjoint circuits).
        for id in self.b.ids().to_vec() {
            let Some(conn) = self.b.conn_by_id(id) else {
                continue;
            };
            self.max_buffered = self.max_buffered.max(conn.buffered_cells());
            while let Some(c) = conn.pop_ready() {
                let circ = c.raw_circ_id();
                let next = self.next_at_b.entry(circ).or_insert(0);
                if c.as_bytes() != cell(circ, *next).as_bytes() {
                    return Err(PathSimError::Misdelivered {
                        circuit: circ,
                        expected: *next,
                    });
                }
                self.deliveries.push((self.now, circ, *next));
                if c.reorder_wait_us() > 0 {
                    self.reorder_waits
                        .insert((circ, *next), c.reorder_wait_us());
                }
                *next += 1;
            }
        }
        Ok(())
    }

    /// Sends `per_circuit` cells on each circuit over `a`'s newest
    /// connection, `batch` cells of a circuit at a time in turn, keeping
    /// a's queue topped up; fails if not done by `max_time`.
    pub fn transfer(
        &mut self,
        circuits: &[u32],
        per_circuit: u32,
        batch: u32,
        max_time: u64,
    ) -> Result<(), PathSimError> {
        let mut sent: BTreeMap<u32, u32> = circuits.iter().map(|c| (*c, 0)).collect();
        let total = u64::from(per_circuit) * circuits.len() as u64;
        let before = self.deliveries.len() as u64;
        while (self.deliveries.len() as u64) - before < total {
            if self.now.nanos() >= max_time {
                return Err(PathSimError::Stalled {
                    delivered: self.deliveries.len() as u64 - before,
                    total,
                });
            }
            if let Some(conn) = self.a.conn(&self.b_addr) {
                while conn.queued_cells() < 512 && sent.values().any(|s| *s < per_circuit) {
                    for c in circuits {
                        for _ in 0..batch {
                            let Some(s) = sent.get_mut(c) else { continue };
                            if *s < per_circuit {
                                conn.queue_cell(cell(*c, *s));
                                *s += 1;
                            }
                        }
                    }
                }
                self.max_queued = self.max_queued.max(conn.queued_cells());
            }
            self.step()?;
        }
        Ok(())
    }

    /// Keeps every connection of `a` busy, each on its own circuit (100 +
    /// its index), until `end`; dials a second connection at `second_at`.
    pub fn bulk(&mut self, end: u64, second_at: Option<u64>) -> Result<(), PathSimError> {
        let mut sent: BTreeMap<u32, u32> = BTreeMap::new();
        let mut second_at = second_at;
        while self.now.nanos() < end {
            if second_at.is_some_and(|t| self.now.nanos() >= t) {
                second_at = None;
                self.connect_again()?;
            }
            let ids: Vec<ConnId> = self.a.ids().to_vec();
            for (i, id) in ids.into_iter().enumerate() {
                let circ = 100 + i as u32;
                let conn = self.a.conn_by_id(id).ok_or(PathSimError::NotConnected)?;
                let s = sent.entry(circ).or_insert(0);
                while conn.queued_cells() < 512 {
                    conn.queue_cell(cell(circ, *s));
                    *s += 1;
                }
                self.max_queued = self.max_queued.max(conn.queued_cells());
            }
            self.step()?;
        }
        Ok(())
    }

    /// Cell bytes per second delivered on `circ` between `from` and `to`.
    pub fn goodput(&self, circ: u32, from: u64, to: u64) -> f64 {
        let n = self
            .deliveries
            .iter()
            .filter(|(t, c, _)| *c == circ && t.nanos() >= from && t.nanos() < to)
            .count();
        n as f64 * relay_kernel::CELL_LEN as f64 * 1e9 / to.saturating_sub(from).max(1) as f64
    }

    /// Cell bytes per second from the first delivery to the last.
    pub fn transfer_goodput(&self) -> f64 {
        let first = self.deliveries.first().map_or(0, |d| d.0.nanos());
        let last = self.deliveries.last().map_or(0, |d| d.0.nanos());
        self.deliveries.len() as f64 * relay_kernel::CELL_LEN as f64 * 1e9
            / last.saturating_sub(first).max(1) as f64
    }
}

/// The long fat lossy path: 1 Gbit/s, 50 ms one way (100 ms RTT),
/// a 4 MiB bottleneck queue (as netsim's long-fat), `loss` both ways.
pub fn long_fat(loss: f64) -> PathModel {
    PathModel {
        latency: 50_000_000,
        rate: 125_000_000,
        queue_bytes: 4 << 20,
        loss,
        ..PathModel::default()
    }
}

/// What [`bulk_goodput`] measured.
#[derive(Clone, Copy, Debug)]
pub struct BulkResult {
    /// Goodput over the whole run, bytes per second of cells.
    pub whole: f64,
    /// Goodput over the last 60% of the run.
    pub steady: f64,
    /// Datagrams lost a to b (random loss and queue overflow).
    pub lost: u64,
    /// Datagrams sent a to b.
    pub sent: u64,
    /// Cells retransmitted by a.
    pub retransmitted: u64,
}

/// One connection with controller `cc` kept busy on one circuit over
/// `model` (both ways) for `secs` of virtual time. The receive window is
/// `window` cells: with random loss the one circuit nearly always has a
/// cell waiting for its retransmission (about an RTT), and the cells
/// behind it wait in the receiver's window, so a long fat path needs
/// several bandwidth-delay products of it.
pub fn bulk_goodput(
    model: PathModel,
    cc: crate::cc::CongestionKind,
    window: u64,
    secs: u64,
    seed: u64,
) -> Result<BulkResult, PathSimError> {
    let cfg = EndpointConfig {
        conn: crate::conn::ConnConfig {
            cc,
            recv_window_cells: window,
            ..crate::conn::ConnConfig::default()
        },
        ..EndpointConfig::default()
    };
    let mut sim = Sim::new(model, model, seed, cfg)?;
    sim.bulk(secs * SEC, None)?;
    let b_addr = sim.b_addr;
    Ok(BulkResult {
        whole: sim.goodput(100, 0, secs * SEC),
        steady: sim.goodput(100, secs * SEC * 2 / 5, secs * SEC),
        lost: sim.ab.lost,
        sent: sim.ab.sent,
        retransmitted: sim.a.conn_ref(&b_addr).map_or(0, |c| c.retransmitted_cells),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_uniform_enough_and_seeded() {
        let mut r = SimRng::new(5);
        let hits = (0..100_000).filter(|_| r.chance(0.01)).count();
        assert!((800..1200).contains(&hits), "{hits}");
        assert_eq!(SimRng::new(9).next_u64(), SimRng::new(9).next_u64());
        assert_ne!(cell(1, 2).as_bytes(), cell(1, 3).as_bytes());
    }
}
