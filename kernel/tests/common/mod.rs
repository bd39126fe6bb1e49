//! An in-memory network for kernel tests: nodes running the real kernel,
//! links as pipes with latency and an optional rate limit, a virtual clock,
//! and small applications (an echo server at exits, senders at clients).
//! Tests can tamper with cells on any pipe.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, VecDeque};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use relay_kernel::*;

/// What a tamper hook does with a cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pass,
    Drop,
    /// Deliver it twice (a replay).
    Duplicate,
    /// Deliver it after the next cell of the same circuit (a reorder).
    HoldOne,
}

pub type Hook = Box<dyn FnMut(&mut Cell) -> Action>;

pub struct Pipe {
    pub from: (usize, LinkId),
    pub to: (usize, LinkId),
    pub latency: u64,
    /// Cells per tick, or unlimited.
    pub rate: Option<usize>,
    inflight: VecDeque<(Time, Cell)>,
    held: Option<Cell>,

    pub hook: Option<Hook>,
    pub max_inflight: usize,
}

/// Per-stream client application: sends `data`, expects it echoed back.
pub struct Sender {
    pub stream: StreamRef,
    pub node: usize,
    /// What the client sends.
    pub data: Vec<u8>,
    /// What the client must receive (== data for echo streams).
    pub expect: Vec<u8>,
    pub sent: usize,
    pub finished: bool,
    pub received: Vec<u8>,
    pub closed: Option<EndReason>,
    pub opened: bool,
}

impl Sender {
    pub fn done(&self) -> bool {
        self.closed.is_some() && self.received.len() == self.expect.len()
    }
    pub fn ok(&self) -> bool {
        self.done() && self.received == self.expect
    }
}

#[derive(Default)]
struct Echo {
    pending: Vec<u8>,
    finished: bool,
    received_total: usize,
}

pub struct Net {
    pub now: Time,
    pub tick: u64,
    pub nodes: Vec<Node>,
    pub pipes: Vec<Pipe>,
    next_link: u64,
    pub latency: u64,
    /// Events each node produced that the harness did not consume.
    pub events: Vec<Vec<Event>>,
    pub senders: Vec<Sender>,
    echoes: HashMap<(usize, StreamRef), Echo>,
    /// What exits received per echo stream, keyed by target host: checked
    /// against what clients sent, so no altered byte goes unnoticed.
    pub expected: HashMap<String, Vec<u8>>,
    exit_targets: HashMap<(usize, StreamRef), String>,
    pub altered_at_exit: usize,
    /// When false, exits do not read (a slow reader).
    pub exits_read: bool,
    pub clients_read: bool,
    /// Called with true before and false after every call into `counted`
    /// (the zero-allocation test arms its allocator with it).
    pub arm: Option<(usize, fn(bool))>,
}

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

impl Net {
    /// `n` nodes, all relays; node i gets identity seed i.
    pub fn new(n: usize, seed: u64) -> Net {
        Self::with_config(n, seed, NodeConfig::default())
    }

    pub fn with_config(n: usize, seed: u64, config: NodeConfig) -> Net {
        Self::with_node_configs(n, seed, |_| config)
    }

    pub fn with_node_configs(n: usize, seed: u64, config: impl Fn(usize) -> NodeConfig) -> Net {
        let mut r = rng(seed);
        let nodes = (0..n)
            .map(|i| {
                let mut ed = [0u8; 32];
                r.fill_bytes(&mut ed);
                let id = NodeId::from_identity_key(&ed);
                let onion = OnionKeypair::generate(&mut r);
                let node_rng = rng(seed.wrapping_mul(1000).wrapping_add(i as u64));
                Node::new(id, onion, config(i), Box::new(node_rng))
            })
            .collect();
        Net {
            now: Time(0),
            tick: 1_000_000,
            nodes,
            pipes: Vec::new(),
            next_link: 1,
            latency: 5_000_000,
            events: vec![Vec::new(); n],
            senders: Vec::new(),
            echoes: HashMap::new(),
            expected: HashMap::new(),
            exit_targets: HashMap::new(),
            altered_at_exit: 0,
            exits_read: true,
            clients_read: true,
            arm: None,
        }
    }

    pub fn hop(&self, i: usize) -> HopSpec {
        HopSpec {
            id: self.nodes[i].id(),
            onion_key: self.nodes[i].onion_key(),
            addr: format!("mem://{i}"),
        }
    }

    fn node_index(&self, id: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id() == *id)
    }

    /// Connects a and b (a initiates); returns (a's link id, b's link id).
    pub fn connect(&mut self, a: usize, b: usize) -> (LinkId, LinkId) {
        let la = LinkId(self.next_link);
        let lb = LinkId(self.next_link + 1);
        self.next_link += 2;
        let (ida, idb) = (self.nodes[a].id(), self.nodes[b].id());
        let now = self.now;
        self.nodes[a].link_up(now, la, idb, true);
        self.nodes[b].link_up(now, lb, ida, false);
        for (from, to) in [((a, la), (b, lb)), ((b, lb), (a, la))] {
            self.pipes.push(Pipe {
                from,
                to,
                latency: self.latency,
                rate: None,
                inflight: VecDeque::new(),
                held: None,
                hook: None,
                max_inflight: 0,
            });
        }
        (la, lb)
    }

    /// The pipe carrying cells from node a to node b.
    pub fn pipe(&mut self, a: usize, b: usize) -> &mut Pipe {
        self.pipes
            .iter_mut()
            .find(|p| p.from.0 == a && p.to.0 == b)
            .expect("no such pipe")
    }

    /// Builds a circuit from `client` along `path` (node indices).
    pub fn build(&mut self, client: usize, path: &[usize]) -> CircuitRef {
        let first = self.nodes[client]
            .link_to(&self.nodes[path[0]].id())
            .unwrap_or_else(|| self.connect(client, path[0]).0);
        let hops = path.iter().map(|&i| self.hop(i)).collect();
        let now = self.now;
        self.nodes[client].build_circuit(now, first, hops).unwrap()
    }

    /// Runs until `circ` is ready; panics if it closes or times out.
    pub fn build_ready(&mut self, client: usize, path: &[usize]) -> CircuitRef {
        let c = self.build(client, path);
        let ok = self.run_until(20_000, |net| {
            net.events[client].contains(&Event::CircuitReady(c))
        });
        assert!(ok, "circuit not ready: {:?}", self.events[client]);
        self.events[client].retain(|e| *e != Event::CircuitReady(c));
        c
    }

    /// Opens an echo stream carrying `data` from `client` on `circ`.
    pub fn start_echo(&mut self, client: usize, circ: CircuitRef, data: Vec<u8>) -> usize {
        let key = format!("echo-{}", self.senders.len());
        self.expected.insert(key.clone(), data.clone());
        let now = self.now;
        let stream = self.nodes[client]
            .open_stream(now, circ, StreamKind::Tcp, &TargetAddr::Host(key, 7))
            .unwrap();
        self.senders.push(Sender {
            stream,
            node: client,
            expect: data.clone(),
            data,
            sent: 0,
            finished: false,
            received: Vec::new(),
            closed: None,
            opened: false,
        });
        self.senders.len() - 1
    }

    /// Opens a download of `size` generated bytes from the exit.
    pub fn start_download(
        &mut self,
        client: usize,
        circ: CircuitRef,
        size: usize,
        seed: u64,
    ) -> usize {
        let key = format!("gen-{size}-{seed}");
        self.expected.insert(key.clone(), Vec::new());
        let now = self.now;
        let stream = self.nodes[client]
            .open_stream(now, circ, StreamKind::Tcp, &TargetAddr::Host(key, 80))
            .unwrap();
        self.senders.push(Sender {
            stream,
            node: client,
            data: Vec::new(),
            expect: data(size, seed),
            sent: 0,
            finished: false,
            received: Vec::new(),
            closed: None,
            opened: false,
        });
        self.senders.len() - 1
    }

    /// One tick: move cells, run applications, handle events.
    pub fn step(&mut self) {
        self.now = self.now.plus_nanos(self.tick);
        let now = self.now;
        for node in &mut self.nodes {
            if node.poll_timeout().is_some_and(|t| t <= now) {
                node.handle_timeout(now);
            }
        }
        // Pull cells onto pipes.
        for p in &mut self.pipes {
            let budget = p.rate.unwrap_or(usize::MAX);
            for _ in 0..budget {
                let counted = self.arm.filter(|(n, _)| *n == p.from.0).map(|(_, f)| f);
                if let Some(f) = counted {
                    f(true);
                }
                let polled = self.nodes[p.from.0].poll_transmit(p.from.1);
                if let Some(f) = counted {
                    f(false);
                }
                let Some(mut cell) = polled else {
                    break;
                };
                let action = match &mut p.hook {
                    Some(h) => h(&mut cell),
                    None => Action::Pass,
                };
                let at = now.plus_nanos(p.latency);
                let same_circuit = p
                    .held
                    .as_ref()
                    .is_some_and(|h| h.raw_circ_id() == cell.raw_circ_id());
                match action {
                    Action::Pass => p.inflight.push_back((at, cell)),
                    Action::Drop => {}
                    Action::Duplicate => {
                        let copy = Cell::from_slice(cell.as_bytes()).unwrap();
                        p.inflight.push_back((at, cell));
                        p.inflight.push_back((at, copy));
                    }
                    Action::HoldOne => {
                        p.held = Some(cell);
                        continue;
                    }
                }
                if same_circuit {
                    if let Some(h) = p.held.take() {
                        p.inflight.push_back((at, h));
                    }
                }
            }
            p.max_inflight = p.max_inflight.max(p.inflight.len());
        }
        // Deliver.
        for i in 0..self.pipes.len() {
            loop {
                let p = &mut self.pipes[i];
                match p.inflight.front() {
                    Some((t, _)) if *t <= now => {}
                    _ => break,
                }
                let (_, cell) = p.inflight.pop_front().unwrap();
                let (node, link) = p.to;
                let counted = self.arm.filter(|(n, _)| *n == node).map(|(_, f)| f);
                if let Some(f) = counted {
                    f(true);
                }
                self.nodes[node].handle_cell(now, link, cell);
                if let Some(f) = counted {
                    f(false);
                }
            }
        }
        self.run_apps();
    }

    fn run_apps(&mut self) {
        let now = self.now;
        // Events.
        for i in 0..self.nodes.len() {
            while let Some(ev) = self.nodes[i].poll_event() {
                match ev {
                    Event::Connect { node, .. } => {
                        if let Some(j) = self.node_index(&node) {
                            self.connect(i, j);
                        } else {
                            self.nodes[i].link_failed(now, node);
                        }
                    }
                    Event::StreamRequest {
                        stream,
                        target,
                        kind,
                    } => {
                        self.events[i].push(Event::StreamRequest {
                            stream,
                            kind,
                            target: target.clone(),
                        });
                        let host = match &target {
                            TargetAddr::Host(h, _) => h.clone(),
                            _ => String::new(),
                        };
                        if host.starts_with("refuse") {
                            self.nodes[i]
                                .close_stream(now, stream, EndReason::ExitPolicy)
                                .unwrap();
                        } else {
                            self.nodes[i].accept_stream(now, stream, None).unwrap();
                            let mut echo = Echo::default();
                            let parts: Vec<&str> = host.split('-').collect();
                            if let ["gen", size, seed] = parts[..] {
                                echo.pending = data(size.parse().unwrap(), seed.parse().unwrap());
                            }
                            self.echoes.insert((i, stream), echo);
                            self.exit_targets.insert((i, stream), host);
                        }
                    }
                    Event::StreamOpened(s) => {
                        self.events[i].push(Event::StreamOpened(s));
                        for snd in &mut self.senders {
                            if snd.node == i && snd.stream == s {
                                snd.opened = true;
                            }
                        }
                    }
                    Event::StreamClosed { stream, reason } => {
                        let mut mine = false;
                        for snd in &mut self.senders {
                            if snd.node == i && snd.stream == stream {
                                snd.closed = Some(reason);
                                mine = true;
                            }
                        }
                        if !mine && !self.echoes.contains_key(&(i, stream)) {
                            self.events[i].push(Event::StreamClosed { stream, reason });
                        }
                    }
                    Event::StreamReadable(_) | Event::StreamWritable(_) => {}
                    other => self.events[i].push(other),
                }
            }
        }
        // Client senders.
        let mut buf = vec![0u8; 64 * 1024];
        for snd in &mut self.senders {
            let node = &mut self.nodes[snd.node];
            if snd.sent < snd.data.len() {
                if let Ok(n) = node.stream_write(now, snd.stream, &snd.data[snd.sent..]) {
                    snd.sent += n;
                }
            }
            if snd.sent == snd.data.len()
                && !snd.finished
                && node.stream_finish(now, snd.stream).is_ok()
            {
                snd.finished = true;
            }
            if self.clients_read {
                while let Ok(n) = node.stream_read(now, snd.stream, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    snd.received.extend_from_slice(&buf[..n]);
                }
            }
        }
        // Exit echo servers.
        if self.exits_read {
            let keys: Vec<(usize, StreamRef)> = {
                let mut k: Vec<_> = self.echoes.keys().copied().collect();
                k.sort();
                k
            };
            for key in keys {
                let (i, s) = key;
                let node = &mut self.nodes[i];
                let echo = self.echoes.get_mut(&key).unwrap();
                loop {
                    match node.stream_read(now, s, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let host = &self.exit_targets[&key];
                            let want = self.expected.get(host);
                            let at = echo.received_total;
                            let good = want.is_some_and(|w| w.get(at..at + n) == Some(&buf[..n]));
                            if !good {
                                self.altered_at_exit += 1;
                            }
                            echo.received_total += n;
                            echo.pending.extend_from_slice(&buf[..n]);
                        }
                    }
                }
                if !echo.pending.is_empty() {
                    if let Ok(n) = node.stream_write(now, s, &echo.pending) {
                        echo.pending.drain(..n);
                    }
                }
                if echo.pending.is_empty() && !echo.finished && node.stream_at_eof(s) {
                    echo.finished = node.stream_finish(now, s).is_ok();
                }
            }
        }
    }

    /// Steps until `done` or `max_ticks`; returns whether `done` held.
    pub fn run_until(&mut self, max_ticks: usize, mut done: impl FnMut(&Net) -> bool) -> bool {
        for _ in 0..max_ticks {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    pub fn all_senders_done(&self) -> bool {
        self.senders.iter().all(|s| s.done())
    }

    /// Wire id of `circ` (built by `client`) on each pipe along `path`,
    /// as (from node, to node, circ id).
    pub fn wire_ids(
        &self,
        client: usize,
        circ: CircuitRef,
        path: &[usize],
    ) -> Vec<(usize, usize, u32)> {
        let mut out = Vec::new();
        let info = self.nodes[client]
            .circuits()
            .into_iter()
            .find(|c| c.circuit == circ)
            .unwrap();
        let (mut link, mut id) = info.next.unwrap();
        let mut from = client;
        for &hop in path {
            out.push((from, hop, id.get()));
            // The link id on the hop's side of this pipe.
            let their_link = self
                .pipes
                .iter()
                .find(|p| p.from == (from, link))
                .map(|p| p.to.1)
                .unwrap();
            let next = self.nodes[hop]
                .circuits()
                .into_iter()
                .find(|c| c.prev == Some((their_link, id)))
                .and_then(|c| c.next);
            match next {
                Some((l, i)) => {
                    link = l;
                    id = i;
                    from = hop;
                }
                None => break,
            }
        }
        out
    }
}

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng(seed ^ 0xda7a).fill_bytes(&mut v);
    v
}

pub fn closed_circuits(events: &[Event]) -> BTreeMap<CircuitRef, EndReason> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::CircuitClosed { circuit, reason } => Some((*circuit, *reason)),
            _ => None,
        })
        .collect()
}
