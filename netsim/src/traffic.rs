//! Applications on simulated hosts: download clients and the server model
//! attached to every exit.
//!
//! A client transfer builds a fresh circuit (a fixed path or a
//! bandwidth-weighted random one: guard, middles, exit, all distinct), opens
//! one stream to `dl-SIZE-ID:80`, reads `SIZE` bytes and checks every byte
//! against the transfer's pattern. The exit's server model answers such
//! requests itself (after an optional delay) and streams the pattern.
//! "perf" clients behave like tornettools' OnionPerf-style clients: one
//! transfer at a time, a pause between transfers, sizes drawn by weight,
//! a timeout per size. "bulk" clients run fixed-size transfers back to back,
//! optionally several circuits in parallel.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use relay_kernel::{
    CircuitRef, EndReason, Event, HopSpec, NodeId, StreamKind, StreamRef, TargetAddr, Time,
};

use crate::host::{AppEvent, Host};
use crate::payload;
use crate::scenario::TrafficSpec;

/// Everything the traffic layer needs to know about a host.
#[derive(Clone, Debug)]
pub struct HostInfo {
    /// Name.
    pub name: String,
    /// Node id.
    pub id: NodeId,
    /// How clients address it as a hop.
    pub hop: HopSpec,
    /// "client", "relay" or "exit".
    pub role: String,
    /// Path-selection weight.
    pub weight: f64,
    /// Server answer delay (exits), ns.
    pub server_delay: u64,
}

/// Timers the traffic layer asks the simulator for.
#[derive(Clone, Copy, Debug)]
pub enum AppTimer {
    /// A client slot starts its next transfer.
    Start {
        /// Client slot.
        slot: usize,
    },
    /// A transfer's deadline.
    Timeout {
        /// Transfer index.
        transfer: usize,
    },
    /// An exit's server answers a request.
    Accept {
        /// Exit host.
        host: usize,
        /// The stream.
        stream: StreamRef,
        /// Transfer id requested.
        id: u64,
        /// Bytes requested.
        size: u64,
    },
}

/// One transfer, with everything `transfers.csv` reports.
#[derive(Clone, Debug)]
pub struct Transfer {
    /// Id (also selects the byte pattern).
    pub id: u64,
    /// Client host.
    pub client: usize,
    /// Client slot.
    pub slot: usize,
    /// Bytes.
    pub size: u64,
    /// Path (host indices, guard first).
    pub path: Vec<usize>,
    /// When the client began (circuit build requested).
    pub start: Time,
    /// Circuit ready.
    pub built: Option<Time>,
    /// Stream requested.
    pub opened: Option<Time>,
    /// First byte read.
    pub first_byte: Option<Time>,
    /// Last byte read.
    pub last_byte: Option<Time>,
    /// Bytes received and checked.
    pub received: u64,
    /// Error code (OnionPerf style), None on success or while running.
    pub error: Option<&'static str>,
    /// Done (success or error).
    pub finished: bool,
    /// Timeout (ns after start).
    pub timeout: u64,
    circuit: Option<CircuitRef>,
    stream: Option<StreamRef>,
}

impl Transfer {
    /// Whether it completed byte-exact.
    pub fn ok(&self) -> bool {
        self.finished && self.error.is_none() && self.received == self.size
    }
}

/// A client slot: one sequence of transfers.
struct Slot {
    host: usize,
    spec: usize,
    remaining: usize,
}

struct Served {
    id: u64,
    size: u64,
    sent: u64,
}

/// The traffic layer.
pub struct Traffic {
    /// Host descriptions (index = host index).
    pub info: Vec<HostInfo>,
    specs: Vec<TrafficSpec>,
    fixed_paths: Vec<Vec<usize>>,
    slots: Vec<Slot>,
    /// All transfers, in start order.
    pub transfers: Vec<Transfer>,
    by_circuit: BTreeMap<(usize, CircuitRef), usize>,
    by_stream: BTreeMap<(usize, StreamRef), usize>,
    waiting_link: BTreeMap<(usize, NodeId), Vec<usize>>,
    servers: BTreeMap<usize, BTreeMap<StreamRef, Served>>,
    writable: BTreeMap<usize, BTreeSet<StreamRef>>,
    rng: ChaCha8Rng,
    end: Time,
    /// Client bytes received per bin.
    pub goodput_bins: Vec<u64>,
    /// Bin width (ns).
    pub bin: u64,
    buf: Vec<u8>,
    scratch: Vec<u8>,
}

/// Timers to schedule, with their times.
pub type Schedule = Vec<(Time, AppTimer)>;

impl Traffic {
    /// The traffic layer for `specs`; `fixed_paths[i]` is spec i's path
    /// (empty: random).
    pub fn new(
        info: Vec<HostInfo>,
        specs: Vec<TrafficSpec>,
        fixed_paths: Vec<Vec<usize>>,
        clients: Vec<Vec<usize>>,
        rng: ChaCha8Rng,
        end: Time,
        bin: u64,
    ) -> (Traffic, Schedule) {
        let mut t = Traffic {
            info,
            specs,
            fixed_paths,
            slots: Vec::new(),
            transfers: Vec::new(),
            by_circuit: BTreeMap::new(),
            by_stream: BTreeMap::new(),
            waiting_link: BTreeMap::new(),
            servers: BTreeMap::new(),
            writable: BTreeMap::new(),
            rng,
            end,
            goodput_bins: Vec::new(),
            bin: bin.max(1),
            buf: vec![0u8; 64 * 1024],
            scratch: Vec::new(),
        };
        let mut sched = Vec::new();
        for (spec_i, hosts) in clients.iter().enumerate() {
            let Some(spec) = t.specs.get(spec_i).cloned() else {
                continue;
            };
            for &host in hosts {
                let lanes = if spec.kind == "bulk" {
                    spec.parallel
                } else {
                    1
                };
                for _ in 0..lanes {
                    let slot = t.slots.len();
                    t.slots.push(Slot {
                        host,
                        spec: spec_i,
                        remaining: if spec.kind == "bulk" {
                            spec.count
                        } else {
                            usize::MAX
                        },
                    });
                    let start = secs(spec.start_s);
                    let at = if spec.kind == "perf" && spec.pause_s > 0.0 {
                        start + t.rng.gen_range(0..=secs(spec.pause_s))
                    } else {
                        start
                    };
                    sched.push((Time(at), AppTimer::Start { slot }));
                }
            }
        }
        (t, sched)
    }

    /// Handles a timer.
    pub fn on_timer(
        &mut self,
        now: Time,
        timer: AppTimer,
        hosts: &mut [Host],
        sched: &mut Schedule,
    ) {
        match timer {
            AppTimer::Start { slot } => self.start(now, slot, hosts, sched),
            AppTimer::Timeout { transfer } => {
                let client = self.transfers.get(transfer).map(|t| t.client);
                if let Some(h) = client.and_then(|c| hosts.get_mut(c)) {
                    self.fail(now, transfer, "TIMEOUT", h, sched);
                }
            }
            AppTimer::Accept {
                host,
                stream,
                id,
                size,
            } => {
                if let Some(h) = hosts.get_mut(host) {
                    if h.up && h.node.accept_stream(now, stream, None).is_ok() {
                        self.servers
                            .entry(host)
                            .or_default()
                            .insert(stream, Served { id, size, sent: 0 });
                        self.writable.entry(host).or_default().insert(stream);
                    }
                }
            }
        }
    }

    fn pick_size(&mut self, spec: &TrafficSpec) -> (u64, u64) {
        if spec.kind == "bulk" {
            return (spec.size, secs(spec.timeout_s));
        }
        let total: u32 = spec.sizes.iter().map(|(_, w)| *w).sum();
        let mut x = self.rng.gen_range(0..total.max(1));
        for (i, (size, w)) in spec.sizes.iter().enumerate() {
            if x < *w {
                let timeout = spec.timeouts_s.get(i).copied().unwrap_or(60.0);
                return (*size, secs(timeout));
            }
            x -= w;
        }
        (spec.sizes.first().map_or(0, |s| s.0), secs(60.0))
    }

    /// A weighted random path of `hops` distinct relays ending at an exit.
    fn pick_path(&mut self, hops: usize, client: usize) -> Option<Vec<usize>> {
        let exits: Vec<usize> = (0..self.info.len())
            .filter(|&i| self.info[i].role == "exit" && i != client)
            .collect();
        let exit = self.weighted(&exits)?;
        let mut path = vec![exit];
        for _ in 1..hops {
            let cands: Vec<usize> = (0..self.info.len())
                .filter(|&i| self.info[i].role != "client" && i != client && !path.contains(&i))
                .collect();
            path.push(self.weighted(&cands)?);
        }
        path.reverse();
        Some(path)
    }

    fn weighted(&mut self, cands: &[usize]) -> Option<usize> {
        let total: f64 = cands.iter().map(|&i| self.info[i].weight.max(0.0)).sum();
        if cands.is_empty() || total <= 0.0 {
            return None;
        }
        let mut x = self.rng.gen_range(0.0..total);
        for &i in cands {
            let w = self.info[i].weight.max(0.0);
            if x < w {
                return Some(i);
            }
            x -= w;
        }
        cands.last().copied()
    }

    fn start(&mut self, now: Time, slot: usize, hosts: &mut [Host], sched: &mut Schedule) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        let stop = self
            .specs
            .get(s.spec)
            .and_then(|sp| sp.stop_s)
            .map_or(self.end, |t| Time(secs(t)));
        if s.remaining == 0 || now >= self.end || now > stop {
            return;
        }
        s.remaining -= 1;
        let (client, spec_i) = (s.host, s.spec);
        let Some(spec) = self.specs.get(spec_i).cloned() else {
            return;
        };
        let (size, timeout) = self.pick_size(&spec);
        let fixed = self.fixed_paths.get(spec_i).cloned().unwrap_or_default();
        let path = if fixed.is_empty() {
            self.pick_path(spec.hops, client)
        } else {
            Some(fixed)
        };
        let index = self.transfers.len();
        self.transfers.push(Transfer {
            id: index as u64 + 1,
            client,
            slot,
            size,
            path: path.clone().unwrap_or_default(),
            start: now,
            built: None,
            opened: None,
            first_byte: None,
            last_byte: None,
            received: 0,
            error: None,
            finished: false,
            timeout,
            circuit: None,
            stream: None,
        });
        sched.push((
            now.plus_nanos(timeout),
            AppTimer::Timeout { transfer: index },
        ));
        let Some(h) = hosts.get_mut(client) else {
            return;
        };
        let Some(guard) = path.as_ref().and_then(|p| p.first().copied()) else {
            self.fail(now, index, "PATH", h, sched);
            return;
        };
        let gid = self.info[guard].id;
        if h.link_to(&gid).is_some() {
            self.build(now, index, h, sched);
        } else {
            let addr = hop_addr(&self.info[guard].hop);
            match addr {
                Some(a) if h.dial(now, a, gid) => self
                    .waiting_link
                    .entry((client, gid))
                    .or_default()
                    .push(index),
                _ => self.fail(now, index, "CONNECT", h, sched),
            }
        }
    }

    fn build(&mut self, now: Time, index: usize, h: &mut Host, sched: &mut Schedule) {
        let Some(t) = self.transfers.get(index) else {
            return;
        };
        if t.finished {
            return;
        }
        let hops: Vec<HopSpec> = t.path.iter().map(|&i| self.info[i].hop.clone()).collect();
        let Some(first) = hops.first().and_then(|g| h.link_to(&g.id)) else {
            self.fail(now, index, "CONNECT", h, sched);
            return;
        };
        match h.node.build_circuit(now, first, hops) {
            Ok(c) => {
                self.by_circuit.insert((h.index, c), index);
                if let Some(t) = self.transfers.get_mut(index) {
                    t.circuit = Some(c);
                }
            }
            Err(_) => self.fail(now, index, "CIRCUIT", h, sched),
        }
    }

    /// Ends a transfer with an error (no-op if it already ended).
    fn fail(
        &mut self,
        now: Time,
        index: usize,
        code: &'static str,
        h: &mut Host,
        sched: &mut Schedule,
    ) {
        let Some(t) = self.transfers.get_mut(index) else {
            return;
        };
        if t.finished {
            return;
        }
        t.error = Some(code);
        self.finish(now, index, h, sched);
    }

    fn finish(&mut self, now: Time, index: usize, h: &mut Host, sched: &mut Schedule) {
        let Some(t) = self.transfers.get_mut(index) else {
            return;
        };
        t.finished = true;
        let (circuit, stream, slot) = (t.circuit.take(), t.stream.take(), t.slot);
        if let Some(c) = circuit {
            self.by_circuit.remove(&(h.index, c));
            if h.up {
                let _ = h.node.close_circuit(now, c);
            }
        }
        if let Some(s) = stream {
            self.by_stream.remove(&(h.index, s));
        }
        if let Some(s) = self.slots.get(slot) {
            if s.remaining > 0 {
                let pause = self
                    .specs
                    .get(s.spec)
                    .filter(|sp| sp.kind == "perf")
                    .map_or(0, |sp| secs(sp.pause_s));
                sched.push((now.plus_nanos(pause), AppTimer::Start { slot }));
            }
        }
    }

    /// Handles what a host reported.
    pub fn on_events(
        &mut self,
        now: Time,
        h: &mut Host,
        events: &mut Vec<AppEvent>,
        sched: &mut Schedule,
    ) {
        let host = h.index;
        for ev in events.drain(..) {
            match ev {
                AppEvent::LinkUp(peer) => {
                    for index in self.waiting_link.remove(&(host, peer)).unwrap_or_default() {
                        self.build(now, index, h, sched);
                    }
                }
                AppEvent::LinkFailed(peer) => {
                    for index in self.waiting_link.remove(&(host, peer)).unwrap_or_default() {
                        self.fail(now, index, "CONNECT", h, sched);
                    }
                }
                AppEvent::Node(ev) => self.on_node_event(now, h, ev, sched),
            }
        }
    }

    fn on_node_event(&mut self, now: Time, h: &mut Host, ev: Event, sched: &mut Schedule) {
        let host = h.index;
        match ev {
            Event::CircuitReady(c) => {
                let Some(&index) = self.by_circuit.get(&(host, c)) else {
                    return;
                };
                let Some(t) = self.transfers.get_mut(index) else {
                    return;
                };
                t.built = Some(now);
                let target = TargetAddr::Host(format!("dl-{}-{}", t.size, t.id), 80);
                match h.node.open_stream(now, c, StreamKind::Tcp, &target) {
                    Ok(s) => {
                        t.stream = Some(s);
                        t.opened = Some(now);
                        self.by_stream.insert((host, s), index);
                    }
                    Err(_) => self.fail(now, index, "STREAM", h, sched),
                }
            }
            Event::CircuitClosed { circuit, .. } => {
                if let Some(index) = self.by_circuit.remove(&(host, circuit)) {
                    self.fail(now, index, "CIRCUIT", h, sched);
                }
            }
            Event::StreamReadable(s) | Event::StreamOpened(s) => {
                if let Some(&index) = self.by_stream.get(&(host, s)) {
                    self.read(now, index, s, h, sched);
                }
            }
            Event::StreamClosed { stream, reason } => {
                if let Some(&index) = self.by_stream.get(&(host, stream)) {
                    self.read(now, index, stream, h, sched);
                    if reason != EndReason::Done {
                        self.fail(now, index, "STREAM", h, sched);
                    }
                } else if let Some(m) = self.servers.get_mut(&host) {
                    m.remove(&stream);
                }
            }
            Event::StreamRequest { stream, target, .. } => {
                self.on_request(now, h, stream, target, sched)
            }
            Event::StreamWritable(s)
                if self.servers.get(&host).is_some_and(|m| m.contains_key(&s)) =>
            {
                self.writable.entry(host).or_default().insert(s);
            }
            _ => {}
        }
    }

    fn on_request(
        &mut self,
        now: Time,
        h: &mut Host,
        stream: StreamRef,
        target: TargetAddr,
        sched: &mut Schedule,
    ) {
        let host = h.index;
        let parsed = match &target {
            TargetAddr::Host(name, _) => parse_request(name),
            _ => None,
        };
        let Some((size, id)) = parsed else {
            let _ = h.node.close_stream(now, stream, EndReason::ExitPolicy);
            return;
        };
        let delay = self.info.get(host).map_or(0, |i| i.server_delay);
        if delay > 0 {
            sched.push((
                now.plus_nanos(delay),
                AppTimer::Accept {
                    host,
                    stream,
                    id,
                    size,
                },
            ));
        } else if h.node.accept_stream(now, stream, None).is_ok() {
            self.servers
                .entry(host)
                .or_default()
                .insert(stream, Served { id, size, sent: 0 });
            self.writable.entry(host).or_default().insert(stream);
        }
    }

    fn read(&mut self, now: Time, index: usize, s: StreamRef, h: &mut Host, sched: &mut Schedule) {
        loop {
            let n = match h.node.stream_read(now, s, &mut self.buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let Some(t) = self.transfers.get_mut(index) else {
                return;
            };
            if t.finished {
                return;
            }
            let bin = (now.nanos() / self.bin) as usize;
            if self.goodput_bins.len() <= bin {
                self.goodput_bins.resize(bin + 1, 0);
            }
            self.goodput_bins[bin] += n as u64;
            t.first_byte.get_or_insert(now);
            let fits = t.received + n as u64 <= t.size;
            let good = fits && payload::check(t.id, t.received, &self.buf[..n], &mut self.scratch);
            t.received += n as u64;
            if !good {
                self.fail(now, index, "CORRUPT", h, sched);
                return;
            }
            if t.received == t.size {
                t.last_byte = Some(now);
            }
        }
        let Some(t) = self.transfers.get(index) else {
            return;
        };
        if !t.finished && h.node.stream_at_eof(s) {
            if t.received == t.size {
                self.finish(now, index, h, sched);
            } else {
                self.fail(now, index, "SHORT", h, sched);
            }
        }
    }

    /// Lets exit servers write what their streams have room for.
    pub fn serve(&mut self, now: Time, h: &mut Host) {
        let host = h.index;
        let Some(set) = self.writable.get_mut(&host) else {
            return;
        };
        if set.is_empty() {
            return;
        }
        let streams: Vec<StreamRef> = std::mem::take(set).into_iter().collect();
        let Some(served) = self.servers.get_mut(&host) else {
            return;
        };
        for s in streams {
            let Some(sv) = served.get_mut(&s) else {
                continue;
            };
            while sv.sent < sv.size {
                let n = (sv.size - sv.sent).min(self.buf.len() as u64) as usize;
                payload::fill(sv.id, sv.sent, &mut self.buf[..n]);
                match h.node.stream_write(now, s, &self.buf[..n]) {
                    Ok(w) => {
                        sv.sent += w as u64;
                        if w < n {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            if sv.sent >= sv.size {
                let _ = h.node.stream_finish(now, s);
                served.remove(&s);
            }
        }
    }

    /// A host crashed: its server streams and transfers are gone.
    pub fn on_crash(&mut self, now: Time, h: &mut Host, sched: &mut Schedule) {
        let host = h.index;
        self.servers.remove(&host);
        self.writable.remove(&host);
        let mine: Vec<usize> = (0..self.transfers.len())
            .filter(|&i| self.transfers[i].client == host && !self.transfers[i].finished)
            .collect();
        for i in mine {
            self.fail(now, i, "CRASH", h, sched);
        }
        self.waiting_link.retain(|(c, _), _| *c != host);
    }
}

/// Parses `dl-SIZE-ID`.
fn parse_request(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("dl-")?;
    let (size, id) = rest.split_once('-')?;
    Some((size.parse().ok()?, id.parse().ok()?))
}

/// The socket address in a hop's link address (`udt://IP:PORT`).
pub fn hop_addr(hop: &HopSpec) -> Option<std::net::SocketAddr> {
    let a = hop
        .addr
        .split_once("://")
        .map_or(hop.addr.as_str(), |(_, a)| a);
    a.parse().ok()
}

/// Seconds to nanoseconds.
pub fn secs(s: f64) -> u64 {
    (s.max(0.0) * 1e9) as u64
}

/// A size as OnionPerf labels it.
pub fn size_label(size: u64) -> String {
    match size {
        51_200 => "50KiB".into(),
        1_048_576 => "1MiB".into(),
        5_242_880 => "5MiB".into(),
        n if n % 1_048_576 == 0 => format!("{}MiB", n / 1_048_576),
        n if n % 1024 == 0 => format!("{}KiB", n / 1024),
        n => format!("{n}B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_labels() {
        assert_eq!(parse_request("dl-51200-7"), Some((51200, 7)));
        assert_eq!(parse_request("dl-x-7"), None);
        assert_eq!(parse_request("echo"), None);
        assert_eq!(size_label(51_200), "50KiB");
        assert_eq!(size_label(5_242_880), "5MiB");
        assert_eq!(size_label(100 << 20), "100MiB");
    }
}
