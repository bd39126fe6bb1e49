//! A simulated host: the real kernel [`Node`] wired to a link core
//! ([`LinkCore`]) at a virtual address, doing what `relayd`'s driver does
//! (connections become kernel links, cells move between the two, the
//! node's `Connect` requests become dials) but in virtual time.
//!
//! The host knows nothing of traffic or of the network: it turns inputs
//! into node events for the application layer and datagrams for the
//! network. Everything it iterates is ordered (Vec, BTreeMap), so a run
//! does not depend on hash order.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;

use relay_kernel::{Event, LinkId, Node, NodeId, Time};

use crate::probe::Probes;
use crate::transport::{ConnKey, CoreEvent, LinkCore};

/// Cells the host moves from the node into a connection's send queue at
/// most (like the udt driver's send credit): the rest wait in the node,
/// which schedules circuits round-robin.
const CORE_QUEUE_CELLS: usize = 256;

/// What the application layer hears from a host.
#[derive(Debug)]
pub enum AppEvent {
    /// A kernel event for applications (circuits, streams).
    Node(Event),
    /// A link to this peer came up (dialled by us or by it).
    LinkUp(NodeId),
    /// Dialling this peer failed.
    LinkFailed(NodeId),
}

/// A datagram leaving a host.
pub struct Datagram {
    /// Destination.
    pub to: SocketAddr,
    /// Bytes (UDP payload).
    pub data: Vec<u8>,
    /// Circuits whose cells it carries (only for probed links).
    pub circuits: Vec<u32>,
}

/// Resolves node ids to addresses (the simulation's directory).
pub trait Directory {
    /// The address of a node, if it exists.
    fn addr_of(&self, id: &NodeId) -> Option<SocketAddr>;
}

/// One simulated host.
pub struct Host {
    /// Index in the simulation.
    pub index: usize,
    /// Virtual address.
    pub addr: SocketAddr,
    /// Whether it is running (not crashed).
    pub up: bool,
    /// Bumped at every restart: stale timers are ignored.
    pub incarnation: u32,
    /// The kernel.
    pub node: Node,
    /// The link protocol.
    pub core: Box<dyn LinkCore>,
    /// Kernel link per connection, ordered by peer address so the
    /// connections of one peer are a range.
    links: BTreeMap<(SocketAddr, ConnKey), LinkId>,
    /// The same for point lookups, per datagram: a link core's connection
    /// keys are unique among all its peers. Never iterated, so its hash
    /// order cannot reach the run (the ordered map above is the one
    /// walked). Searching the ordered map by (address, key) was 1.6% of
    /// the scale run in perf.
    link_of: HashMap<ConnKey, LinkId, foldhash::fast::FixedState>,
    /// Connection per kernel link, indexed by the link's number (numbers
    /// are handed out in order from 1, a few hundred per host at most).
    conn_of: Vec<Option<(SocketAddr, ConnKey)>>,
    next_link: u64,
    blocked: BTreeSet<LinkId>,
    dialing: BTreeMap<SocketAddr, NodeId>,
    /// The earliest wake-up event pending for this host.
    pub timer: Option<Time>,
    /// Cells retransmitted by the link cores of earlier incarnations.
    retransmitted_before: u64,
    /// Relay cells forwarded by earlier incarnations.
    pub relayed_before: u64,
    /// The connection the last datagram received was for, when the link
    /// core can tell (see [`LinkCore::input_conn`]).
    input: Option<ConnKey>,
    /// Reused buffers (no allocation per call).
    fresh: VecDeque<(SocketAddr, ConnKey)>,
    links_scratch: Vec<LinkId>,
}

/// Spare datagram buffers: a datagram's buffer goes back here once it is
/// delivered or dropped, so sending one allocates nothing.
#[derive(Default)]
pub struct BufPool {
    spare: Vec<Vec<u8>>,
}

/// Buffers kept at most (about 6 MiB).
const POOL_MAX: usize = 4096;

impl BufPool {
    /// An empty buffer (with room for a datagram).
    pub fn take(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_else(|| Vec::with_capacity(1536))
    }

    /// Returns a buffer.
    pub fn give(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < POOL_MAX {
            buf.clear();
            self.spare.push(buf);
        }
    }
}

impl Host {
    /// A running host.
    pub fn new(index: usize, addr: SocketAddr, node: Node, core: Box<dyn LinkCore>) -> Host {
        Host {
            index,
            addr,
            up: true,
            incarnation: 0,
            node,
            core,
            links: BTreeMap::new(),
            link_of: HashMap::with_hasher(foldhash::fast::FixedState::with_seed(0)),
            conn_of: Vec::new(),
            next_link: 1,
            blocked: BTreeSet::new(),
            dialing: BTreeMap::new(),
            timer: None,
            retransmitted_before: 0,
            relayed_before: 0,
            input: None,
            fresh: VecDeque::new(),
            links_scratch: Vec::new(),
        }
    }

    /// Replaces the node and link core after a crash (all state is lost;
    /// keys are the caller's choice).
    pub fn restart(&mut self, node: Node, core: Box<dyn LinkCore>) {
        self.relayed_before += self.node.stats().cells_relayed;
        self.retransmitted_before += self.core.retransmitted_total();
        self.node = node;
        self.core = core;
        self.links.clear();
        self.link_of.clear();
        self.conn_of.clear();
        self.blocked.clear();
        self.dialing.clear();
        self.incarnation += 1;
        self.up = true;
        self.timer = None;
    }

    /// Relay cells forwarded over the host's life.
    pub fn cells_relayed(&self) -> u64 {
        self.relayed_before + self.node.stats().cells_relayed
    }

    /// Cells retransmitted by the link core over the host's life.
    pub fn retransmitted(&self) -> u64 {
        self.retransmitted_before + self.core.retransmitted_total()
    }

    /// The kernel link to `peer`, if one is up.
    pub fn link_to(&self, peer: &NodeId) -> Option<LinkId> {
        self.node.link_to(peer)
    }

    /// Starts a connection to `peer` at `addr` unless one is being made.
    /// False if the link core refused to dial.
    pub fn dial(&mut self, now: Time, addr: SocketAddr, peer: NodeId) -> bool {
        if self.dialing.contains_key(&addr) {
            return true;
        }
        if self.core.connect(now, addr, peer) {
            self.dialing.insert(addr, peer);
            true
        } else {
            false
        }
    }

    /// A datagram arrived from `from`.
    pub fn receive(&mut self, now: Time, from: SocketAddr, data: &mut [u8]) {
        self.core.handle_datagram(now, from, data);
        self.input = self.core.input_conn(data);
    }

    /// Runs due timers.
    pub fn run_timers(&mut self, now: Time) {
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
        }
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now);
        }
    }

    /// Moves link events and received cells into the node and collects
    /// what the application layer must see. `from` is the peer a datagram
    /// just came from (only its connection can have new cells).
    pub fn exchange(
        &mut self,
        now: Time,
        from: Option<SocketAddr>,
        dir: &dyn Directory,
        probes: &mut Probes,
        app: &mut Vec<AppEvent>,
    ) {
        let mut fresh = std::mem::take(&mut self.fresh);
        fresh.clear();
        match (from, self.input.take()) {
            (Some(from), Some(conn)) => fresh.push_back((from, conn)),
            (Some(from), None) => fresh.extend(self.links.range(conns_of(from)).map(|(k, _)| *k)),
            (None, _) => {}
        }
        loop {
            let mut progress = false;
            while let Some(ev) = self.core.poll_event() {
                progress = true;
                match ev {
                    CoreEvent::Connected {
                        conn,
                        addr,
                        peer,
                        initiator,
                    } => {
                        // A second connection to the same peer (both ends
                        // dialled at once) is a second kernel link: the
                        // circuits on the first stay where they are.
                        let link = LinkId(self.next_link);
                        self.next_link += 1;
                        self.links.insert((addr, conn), link);
                        self.link_of.insert(conn, link);
                        self.set_conn_of(link, Some((addr, conn)));
                        self.dialing.remove(&addr);
                        self.node.link_up(now, link, peer, initiator);
                        app.push(AppEvent::LinkUp(peer));
                        fresh.push_back((addr, conn));
                    }
                    CoreEvent::ConnectFailed { addr } => {
                        if let Some(peer) = self.dialing.remove(&addr) {
                            self.node.link_failed(now, peer);
                            app.push(AppEvent::LinkFailed(peer));
                        }
                    }
                    CoreEvent::Closed { conn, addr } => {
                        if let Some(link) = self.links.remove(&(addr, conn)) {
                            self.link_of.remove(&conn);
                            self.set_conn_of(link, None);
                            self.blocked.remove(&link);
                            self.node.link_down(now, link);
                        }
                    }
                }
            }
            while let Some((addr, conn)) = fresh.pop_front() {
                let Some(&link) = self.link_of.get(&conn) else {
                    continue;
                };
                let probe = probes.index(addr, self.addr);
                while let Some(cell) = self.core.pop_ready(conn) {
                    if let Some(p) = probe {
                        probes.delivered(p, now, cell.raw_circ_id());
                    }
                    self.node.handle_cell(now, link, cell);
                    progress = true;
                }
            }
            while let Some(ev) = self.node.poll_event() {
                progress = true;
                match ev {
                    Event::Connect { node: peer, .. } => match dir.addr_of(&peer) {
                        Some(addr) => {
                            if !self.dial(now, addr, peer) {
                                self.node.link_failed(now, peer);
                            }
                        }
                        None => self.node.link_failed(now, peer),
                    },
                    other => app.push(AppEvent::Node(other)),
                }
            }
            if !progress {
                break;
            }
        }
        self.fresh = fresh;
    }

    /// Moves cells from the node into connections and collects the
    /// datagrams the link core sends now.
    pub fn flush(
        &mut self,
        now: Time,
        probes: &mut Probes,
        pool: &mut BufPool,
        out: &mut Vec<Datagram>,
    ) {
        while let Some(l) = self.node.poll_ready_link() {
            self.blocked.insert(l);
        }
        let mut rounds = 0;
        loop {
            rounds += 1;
            let mut links = std::mem::take(&mut self.links_scratch);
            links.clear();
            links.extend(self.blocked.iter().copied());
            for &link in &links {
                let Some((addr, conn)) = self.conn(link) else {
                    self.blocked.remove(&link);
                    continue;
                };
                let probe = probes.index(self.addr, addr);
                // Each queued cell adds one to the connection's queue.
                let mut room = match self.core.queued_cells(conn) {
                    Some(n) => CORE_QUEUE_CELLS.saturating_sub(n),
                    None => {
                        self.blocked.remove(&link);
                        continue;
                    }
                };
                while room > 0 {
                    let Some(cell) = self.node.poll_transmit(link) else {
                        self.blocked.remove(&link);
                        break;
                    };
                    if let Some(p) = probe {
                        probes.queued(p, now, cell.raw_circ_id());
                    }
                    if let Err(cell) = self.core.queue_cell(conn, cell) {
                        self.node.recycle(cell);
                        self.blocked.remove(&link);
                        break;
                    }
                    room -= 1;
                }
            }
            self.links_scratch = links;
            let before = out.len();
            loop {
                let mut buf = pool.take();
                let Some(to) = self.core.poll_transmit(now, &mut buf) else {
                    pool.give(buf);
                    break;
                };
                let mut circuits = Vec::new();
                if probes.index(self.addr, to).is_some() {
                    self.core.datagram_circuits(&to, &buf, &mut circuits);
                }
                out.push(Datagram {
                    to,
                    data: buf,
                    circuits,
                });
            }
            if out.len() == before || self.blocked.is_empty() || rounds > 64 {
                break;
            }
        }
    }

    /// The connection a kernel link runs on.
    fn conn(&self, link: LinkId) -> Option<(SocketAddr, ConnKey)> {
        let i = usize::try_from(link.0).ok()?;
        self.conn_of.get(i).copied().flatten()
    }

    fn set_conn_of(&mut self, link: LinkId, conn: Option<(SocketAddr, ConnKey)>) {
        let Ok(i) = usize::try_from(link.0) else {
            return;
        };
        if self.conn_of.len() <= i {
            self.conn_of.resize(i + 1, None);
        }
        self.conn_of[i] = conn;
    }

    /// When a host woken at `now` with no input may sleep on untouched:
    /// its next deadline, if that is later and the link core's deadlines
    /// cover all it would send (see [`LinkCore::timeout_covers_sends`]).
    /// A wake-up is scheduled for the earliest deadline a host has had,
    /// and deadlines move later at almost every send (keepalives, idle
    /// timeouts): in the scale run a quarter of wake-ups found nothing
    /// due, and each ran the whole exchange and flush for nothing.
    pub fn idle_until(&self, now: Time) -> Option<Time> {
        if !self.core.timeout_covers_sends() {
            return None;
        }
        self.next_wake().filter(|&t| t > now)
    }

    /// When the host must wake up next.
    pub fn next_wake(&self) -> Option<Time> {
        match (self.core.poll_timeout(), self.node.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The key range of every connection to `addr` in [`Host`]'s link map.
fn conns_of(addr: SocketAddr) -> std::ops::RangeInclusive<(SocketAddr, ConnKey)> {
    (addr, ConnKey(0))..=(addr, ConnKey(u64::MAX))
}
