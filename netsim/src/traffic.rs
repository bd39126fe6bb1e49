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
//! optionally several circuits in parallel. "web" clients load pages: one
//! circuit per page, the document first, then its objects over several
//! streams at once (each object a `dl-SIZE-ID` request); the page's TTLB is
//! its load time. "echo" clients run interactive sessions: one stream to
//! `echo-ID:7` at the exit, whose server sends back every byte; a message
//! (sequence number + pattern) goes out every interval and its round trip
//! is measured when it comes back, byte-checked.

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
    /// An echo session sends its next message.
    Echo {
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
    /// What it fetches.
    pub kind: Kind,
    circuit: Option<CircuitRef>,
    stream: Option<StreamRef>,
}

/// What a transfer is.
#[derive(Clone, Debug)]
pub enum Kind {
    /// One stream of `size` bytes.
    Download,
    /// A web page: several objects over one circuit.
    Page(Page),
    /// An interactive echo session.
    Echo(Echo),
}

/// One object of a page.
#[derive(Clone, Debug)]
pub struct Object {
    /// Bytes.
    pub size: u64,
    /// Stream opened.
    pub opened: Option<Time>,
    /// Last byte read.
    pub last_byte: Option<Time>,
    /// Bytes read and checked.
    pub received: u64,
    /// Complete.
    pub done: bool,
}

/// A page load in progress.
#[derive(Clone, Debug)]
pub struct Page {
    /// The document first, then its objects.
    pub objects: Vec<Object>,
    /// Objects fetched at once.
    streams: usize,
    /// Next object to request.
    next: usize,
    /// Objects being fetched.
    active: usize,
}

/// An echo session.
#[derive(Clone, Debug)]
pub struct Echo {
    /// Messages to send.
    pub messages: usize,
    /// Bytes per message.
    pub message_bytes: usize,
    /// Between messages, ns.
    interval: u64,
    /// When each message sent so far was written.
    pub sent_at: Vec<Time>,
    /// Round trip of each message answered, ns (in order).
    pub rtts: Vec<u64>,
    /// Written but not accepted by the stream yet.
    outbuf: Vec<u8>,
    /// Received bytes of an incomplete reply.
    inbuf: Vec<u8>,
}

/// The pattern id of object `k` of the page of transfer `id`.
fn object_id(id: u64, k: usize) -> u64 {
    (id << 8) | k as u64
}

impl Transfer {
    /// Whether it completed byte-exact.
    pub fn ok(&self) -> bool {
        self.finished && self.error.is_none() && self.received == self.size
    }

    /// The label it is reported under: the size for downloads (as
    /// OnionPerf), `page` or `echo`.
    pub fn label(&self) -> String {
        match self.kind {
            Kind::Download => size_label(self.size),
            Kind::Page(_) => "page".into(),
            Kind::Echo(_) => "echo".into(),
        }
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
    /// Client streams: transfer and object (0 for downloads and echoes).
    by_stream: BTreeMap<(usize, StreamRef), (usize, usize)>,
    /// Echo server streams at exits: bytes read but not yet written back.
    echo_servers: BTreeMap<(usize, StreamRef), Vec<u8>>,
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
            echo_servers: BTreeMap::new(),
            waiting_link: BTreeMap::new(),
            servers: BTreeMap::new(),
            writable: BTreeMap::new(),
            rng,
            end,
            goodput_bins: Vec::new(),
            bin: bin.max(1),
            buf: vec![0u8; 64 * 1024],
        };
        let mut sched = Vec::new();
        for (spec_i, hosts) in clients.iter().enumerate() {
            let Some(spec) = t.specs.get(spec_i).cloned() else {
                continue;
            };
            for &host in hosts {
                let lanes = if spec.kind == "bulk" || spec.kind == "echo" {
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
                    let at = if spec.kind != "bulk" && spec.pause_s > 0.0 {
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
            AppTimer::Echo { transfer } => {
                let client = self.transfers.get(transfer).map(|t| t.client);
                if let Some(h) = client.and_then(|c| hosts.get_mut(c)) {
                    self.echo_send(now, transfer, h, sched);
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

    /// Bytes, timeout and kind of a client's next transfer.
    fn pick_size(&mut self, spec: &TrafficSpec) -> (u64, u64, Kind) {
        match spec.kind.as_str() {
            "bulk" => return (spec.size, secs(spec.timeout_s), Kind::Download),
            "web" => {
                let mut objects = vec![object(spec.page_size)];
                for _ in 0..spec.objects {
                    let (size, _) = self.weighted_size(&spec.object_sizes);
                    objects.push(object(size));
                }
                let total = objects.iter().map(|o| o.size).sum();
                let page = Page {
                    objects,
                    streams: spec.streams.max(1),
                    next: 0,
                    active: 0,
                };
                return (total, secs(spec.timeout_s), Kind::Page(page));
            }
            "echo" => {
                let echo = Echo {
                    messages: spec.messages,
                    message_bytes: spec.message_bytes.max(8),
                    interval: (spec.interval_ms.max(0.0) * 1e6) as u64,
                    sent_at: Vec::new(),
                    rtts: Vec::new(),
                    outbuf: Vec::new(),
                    inbuf: Vec::new(),
                };
                let size = (echo.messages * echo.message_bytes) as u64;
                return (size, secs(spec.timeout_s), Kind::Echo(echo));
            }
            _ => {}
        }
        let (size, i) = self.weighted_size(&spec.sizes);
        let timeout = spec.timeouts_s.get(i).copied().unwrap_or(60.0);
        (size, secs(timeout), Kind::Download)
    }

    /// A size drawn by weight, and its index.
    fn weighted_size(&mut self, sizes: &[(u64, u32)]) -> (u64, usize) {
        let total: u32 = sizes.iter().map(|(_, w)| *w).sum();
        let mut x = self.rng.gen_range(0..total.max(1));
        for (i, (size, w)) in sizes.iter().enumerate() {
            if x < *w {
                return (*size, i);
            }
            x -= w;
        }
        (sizes.first().map_or(0, |s| s.0), 0)
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
        let (size, timeout, kind) = self.pick_size(&spec);
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
            kind,
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
        let host = h.index;
        self.by_stream
            .retain(|(hh, _), (i, _)| !(*hh == host && *i == index));
        if let Some(s) = self.slots.get(slot) {
            if s.remaining > 0 {
                let pause = self
                    .specs
                    .get(s.spec)
                    .filter(|sp| sp.kind != "bulk")
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
                let target = match &t.kind {
                    Kind::Download => TargetAddr::Host(format!("dl-{}-{}", t.size, t.id), 80),
                    Kind::Page(_) => {
                        self.open_objects(now, index, h, sched);
                        return;
                    }
                    Kind::Echo(_) => TargetAddr::Host(format!("echo-{}", t.id), 7),
                };
                match h.node.open_stream(now, c, StreamKind::Tcp, &target) {
                    Ok(s) => {
                        t.stream = Some(s);
                        t.opened = Some(now);
                        self.by_stream.insert((host, s), (index, 0));
                    }
                    Err(_) => self.fail(now, index, "STREAM", h, sched),
                }
            }
            Event::CircuitClosed { circuit, .. } => {
                if let Some(index) = self.by_circuit.remove(&(host, circuit)) {
                    self.fail(now, index, "CIRCUIT", h, sched);
                }
            }
            Event::StreamOpened(s) => {
                if let Some(&(index, k)) = self.by_stream.get(&(host, s)) {
                    if self.is_echo(index) {
                        self.echo_send(now, index, h, sched);
                    }
                    self.read_any(now, index, k, s, h, sched);
                }
            }
            Event::StreamReadable(s) => {
                if let Some(&(index, k)) = self.by_stream.get(&(host, s)) {
                    self.read_any(now, index, k, s, h, sched);
                } else if self.echo_servers.contains_key(&(host, s)) {
                    self.echo_serve(now, h, s);
                }
            }
            Event::StreamClosed { stream, reason } => {
                if let Some(&(index, k)) = self.by_stream.get(&(host, stream)) {
                    self.read_any(now, index, k, stream, h, sched);
                    let done = self.transfers.get(index).is_some_and(|t| match &t.kind {
                        Kind::Page(p) => p.objects.get(k).is_some_and(|o| o.done),
                        _ => t.finished,
                    });
                    if reason != EndReason::Done || !done {
                        self.fail(now, index, "STREAM", h, sched);
                    }
                } else if self.echo_servers.remove(&(host, stream)).is_some() {
                } else if let Some(m) = self.servers.get_mut(&host) {
                    m.remove(&stream);
                }
            }
            Event::StreamWritable(s) if self.echo_servers.contains_key(&(host, s)) => {
                self.echo_serve(now, h, s);
            }
            Event::StreamWritable(s) if self.by_stream.contains_key(&(host, s)) => {
                if let Some(&(index, _)) = self.by_stream.get(&(host, s)) {
                    self.echo_flush(now, index, s, h);
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
        let echo = match &target {
            TargetAddr::Host(name, 7) => name.starts_with("echo-"),
            _ => false,
        };
        if echo {
            // Interactive: answered at once, whatever the server delay.
            if h.node.accept_stream(now, stream, None).is_ok() {
                self.echo_servers.insert((host, stream), Vec::new());
            }
            return;
        }
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
            let Some(t) = self.transfers.get(index) else {
                return;
            };
            if t.finished {
                return;
            }
            self.count(now, n);
            let Some(t) = self.transfers.get_mut(index) else {
                return;
            };
            t.first_byte.get_or_insert(now);
            let fits = t.received + n as u64 <= t.size;
            let good = fits && payload::check(t.id, t.received, &self.buf[..n]);
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

    /// Counts client bytes into the goodput series.
    fn count(&mut self, now: Time, n: usize) {
        let bin = (now.nanos() / self.bin) as usize;
        if self.goodput_bins.len() <= bin {
            self.goodput_bins.resize(bin + 1, 0);
        }
        self.goodput_bins[bin] += n as u64;
    }

    fn is_echo(&self, index: usize) -> bool {
        matches!(
            self.transfers.get(index).map(|t| &t.kind),
            Some(Kind::Echo(_))
        )
    }

    /// Reads a client stream, whatever the transfer's kind.
    fn read_any(
        &mut self,
        now: Time,
        index: usize,
        k: usize,
        s: StreamRef,
        h: &mut Host,
        sched: &mut Schedule,
    ) {
        match self.transfers.get(index).map(|t| &t.kind) {
            Some(Kind::Download) => self.read(now, index, s, h, sched),
            Some(Kind::Page(_)) => self.read_object(now, index, k, s, h, sched),
            Some(Kind::Echo(_)) => self.echo_read(now, index, s, h, sched),
            None => {}
        }
    }

    /// Requests a page's objects: the document alone, then up to
    /// `streams` objects at a time.
    fn open_objects(&mut self, now: Time, index: usize, h: &mut Host, sched: &mut Schedule) {
        loop {
            let Some(t) = self.transfers.get_mut(index) else {
                return;
            };
            let (Some(c), false) = (t.circuit, t.finished) else {
                return;
            };
            let Kind::Page(p) = &mut t.kind else {
                return;
            };
            let limit = if p.objects.first().is_some_and(|o| o.done) {
                p.streams
            } else {
                1
            };
            if p.next >= p.objects.len() || p.active >= limit {
                return;
            }
            let k = p.next;
            let size = p.objects.get(k).map_or(0, |o| o.size);
            let target = TargetAddr::Host(format!("dl-{}-{}", size, object_id(t.id, k)), 80);
            match h.node.open_stream(now, c, StreamKind::Tcp, &target) {
                Ok(s) => {
                    p.next += 1;
                    p.active += 1;
                    if let Some(o) = p.objects.get_mut(k) {
                        o.opened = Some(now);
                    }
                    if k == 0 {
                        t.opened = Some(now);
                    }
                    self.by_stream.insert((h.index, s), (index, k));
                }
                Err(_) => {
                    self.fail(now, index, "STREAM", h, sched);
                    return;
                }
            }
        }
    }

    /// Reads object `k` of a page; when it is complete, requests the next
    /// ones, and when all are, the page is done.
    fn read_object(
        &mut self,
        now: Time,
        index: usize,
        k: usize,
        s: StreamRef,
        h: &mut Host,
        sched: &mut Schedule,
    ) {
        loop {
            let n = match h.node.stream_read(now, s, &mut self.buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            self.count(now, n);
            let Some(t) = self.transfers.get_mut(index) else {
                return;
            };
            let id = t.id;
            let Kind::Page(p) = &mut t.kind else {
                return;
            };
            let Some(o) = p.objects.get_mut(k) else {
                return;
            };
            if t.finished || o.done {
                return;
            }
            if k == 0 {
                t.first_byte.get_or_insert(now);
            }
            let fits = o.received + n as u64 <= o.size;
            let good = fits && payload::check(object_id(id, k), o.received, &self.buf[..n]);
            o.received += n as u64;
            t.received += n as u64;
            if !good {
                self.fail(now, index, "CORRUPT", h, sched);
                return;
            }
            if o.received == o.size {
                o.last_byte = Some(now);
            }
        }
        if !h.node.stream_at_eof(s) {
            return;
        }
        let Some(t) = self.transfers.get_mut(index) else {
            return;
        };
        let Kind::Page(p) = &mut t.kind else {
            return;
        };
        let Some(o) = p.objects.get_mut(k) else {
            return;
        };
        if t.finished || o.done {
            return;
        }
        if o.received != o.size {
            self.fail(now, index, "SHORT", h, sched);
            return;
        }
        o.done = true;
        p.active = p.active.saturating_sub(1);
        self.by_stream.remove(&(h.index, s));
        if p.objects.iter().all(|o| o.done) {
            t.last_byte = Some(now);
            self.finish(now, index, h, sched);
        } else {
            self.open_objects(now, index, h, sched);
        }
    }

    /// Sends an echo session's next message and schedules the one after.
    fn echo_send(&mut self, now: Time, index: usize, h: &mut Host, sched: &mut Schedule) {
        let Some(t) = self.transfers.get_mut(index) else {
            return;
        };
        let (Some(s), false) = (t.stream, t.finished) else {
            return;
        };
        let Kind::Echo(e) = &mut t.kind else {
            return;
        };
        if e.sent_at.len() >= e.messages {
            return;
        }
        let seq = e.sent_at.len() as u64;
        let start = e.outbuf.len();
        e.outbuf.resize(start + e.message_bytes, 0);
        let msg = &mut e.outbuf[start..];
        payload::fill(t.id, seq * e.message_bytes as u64, msg);
        msg[..8].copy_from_slice(&seq.to_be_bytes());
        e.sent_at.push(now);
        if e.sent_at.len() < e.messages {
            sched.push((
                now.plus_nanos(e.interval),
                AppTimer::Echo { transfer: index },
            ));
        }
        self.echo_flush(now, index, s, h);
    }

    /// Writes what an echo session has not yet handed to its stream.
    fn echo_flush(&mut self, now: Time, index: usize, s: StreamRef, h: &mut Host) {
        let Some(Kind::Echo(e)) = self.transfers.get_mut(index).map(|t| &mut t.kind) else {
            return;
        };
        if !e.outbuf.is_empty() {
            if let Ok(w) = h.node.stream_write(now, s, &e.outbuf) {
                e.outbuf.drain(..w.min(e.outbuf.len()));
            }
        }
    }

    /// Reads echoed messages: each must be the next one sent, byte for
    /// byte; its round trip is recorded.
    fn echo_read(
        &mut self,
        now: Time,
        index: usize,
        s: StreamRef,
        h: &mut Host,
        sched: &mut Schedule,
    ) {
        loop {
            let n = match h.node.stream_read(now, s, &mut self.buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            self.count(now, n);
            let Some(t) = self.transfers.get_mut(index) else {
                return;
            };
            let id = t.id;
            let Kind::Echo(e) = &mut t.kind else {
                return;
            };
            if t.finished {
                return;
            }
            t.first_byte.get_or_insert(now);
            e.inbuf.extend_from_slice(&self.buf[..n]);
            let mb = e.message_bytes;
            let mut bad = false;
            while e.inbuf.len() >= mb {
                let seq = e.rtts.len() as u64;
                let mut want = vec![0u8; mb];
                payload::fill(id, seq * mb as u64, &mut want);
                want[..8].copy_from_slice(&seq.to_be_bytes());
                let sent = e.sent_at.get(e.rtts.len()).copied();
                match sent {
                    Some(at) if e.inbuf[..mb] == want[..] => {
                        e.rtts.push(now.since(at));
                        e.inbuf.drain(..mb);
                        t.received += mb as u64;
                    }
                    _ => {
                        bad = true;
                        break;
                    }
                }
            }
            if bad {
                self.fail(now, index, "CORRUPT", h, sched);
                return;
            }
            if e.rtts.len() == e.messages {
                t.last_byte = Some(now);
                self.finish(now, index, h, sched);
                return;
            }
        }
    }

    /// An exit's echo server: reads what arrived and writes it back.
    fn echo_serve(&mut self, now: Time, h: &mut Host, s: StreamRef) {
        let key = (h.index, s);
        loop {
            let n = match h.node.stream_read(now, s, &mut self.buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(p) = self.echo_servers.get_mut(&key) {
                p.extend_from_slice(&self.buf[..n]);
            }
        }
        if let Some(p) = self.echo_servers.get_mut(&key) {
            if !p.is_empty() {
                if let Ok(w) = h.node.stream_write(now, s, p) {
                    p.drain(..w.min(p.len()));
                }
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
                // Only what the stream can take, and one byte more when the
                // rest does not fit: a short write is how the node learns
                // that we want to be told when there is room again.
                let room = h.node.stream_send_room(s).saturating_add(1);
                let n = (sv.size - sv.sent).min(self.buf.len().min(room) as u64) as usize;
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
        self.echo_servers.retain(|(hh, _), _| *hh != host);
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

fn object(size: u64) -> Object {
    Object {
        size,
        opened: None,
        last_byte: None,
        received: 0,
        done: false,
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
