//! The simulation: builds hosts, network and traffic from a scenario and
//! runs the discrete-event loop.
//!
//! One loop, one thread, one clock: events come off the queue in (time,
//! sequence) order; each names a host, which takes its input (a datagram,
//! a timer), lets its node and applications react, and sends datagrams into
//! the network, which schedules their arrivals. Nothing reads the wall
//! clock except the performance counters, which never feed back.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use rand::seq::SliceRandom;
use rand::RngCore;
use relay_kernel::flow::CcParams;
use relay_kernel::{HopSpec, Node, NodeConfig, NodeId, OnionKeypair, Time};
use relay_link::Identity;

use crate::error::SimError;
use crate::host::{AppEvent, BufPool, Datagram, Directory, Host};
use crate::link::{Bottleneck, PathModel};
use crate::network::{Network, Partition};
use crate::probe::Probes;
use crate::quic::QuicCore;
use crate::rng::{crypto_stream, model_stream, Purpose};
use crate::scenario::{HostParams, PathParams, Scenario};
use crate::tcp::SmolTcpCore;
use crate::tcp_model::TcpCore;
use crate::traffic::{secs, AppTimer, HostInfo, Schedule, Traffic};
use crate::transport::{LinkCore, UdtCore};

/// The port every simulated host listens on.
pub const PORT: u16 = 9000;

/// Bytes of IPv4 + UDP header: what `ip_overhead` counts by default, and
/// what link cores that send whole IP packets carry themselves.
const UDP_IP_HEADER: usize = 28;

/// What the event loop processes.
enum Ev {
    /// A datagram reaches a host's download bottleneck.
    Downlink {
        from: usize,
        to: usize,
        data: Vec<u8>,
        circuits: Vec<u32>,
    },
    /// A datagram is delivered to a host.
    Deliver {
        from: usize,
        to: usize,
        data: Vec<u8>,
    },
    /// A host's timers may be due.
    Wake { host: usize, incarnation: u32 },
    /// An application timer.
    App(AppTimer),
    /// A host crashes.
    Crash { host: usize },
    /// A host restarts.
    Restart { host: usize },
}

/// Makes host `host` (index `h`) wake up by `t`, and not before `now` +
/// 1 ns. `timer` is the earliest pending wake-up: a later deadline needs no
/// new event, as the pending one fires first and reschedules. So stale
/// wake-ups do not pile up in the heap (deadlines move later at almost
/// every step: keepalives, idle timeouts).
fn arm_wake(
    queue: &mut crate::queue::EventQueue<Ev>,
    host: &mut Host,
    h: usize,
    now: Time,
    t: Time,
) {
    let t = t.max(now.plus_nanos(1));
    if host.timer.is_none_or(|p| t < p) {
        host.timer = Some(t);
        queue.push(
            t,
            Ev::Wake {
                host: h,
                incarnation: host.incarnation,
            },
        );
    }
}

/// Per-host fixed facts.
struct Keys {
    identity: [u8; 32],
    onion: [u8; 32],
}

struct Dir<'a> {
    ids: &'a BTreeMap<NodeId, usize>,
    addrs: &'a [SocketAddr],
}

impl Directory for Dir<'_> {
    fn addr_of(&self, id: &NodeId) -> Option<SocketAddr> {
        self.ids.get(id).and_then(|i| self.addrs.get(*i)).copied()
    }
}

/// A crash that happened.
#[derive(Clone, Debug)]
pub struct CrashRecord {
    /// Host.
    pub host: usize,
    /// When.
    pub at: Time,
    /// Restart time, if any.
    pub restart: Option<Time>,
}

/// A running (or finished) simulation.
pub struct Sim {
    /// The scenario.
    pub scenario: Scenario,
    /// The seed.
    pub seed: u64,
    /// Virtual time.
    pub now: Time,
    /// End of the run.
    pub end: Time,
    queue: crate::queue::EventQueue<Ev>,
    /// Hosts.
    pub hosts: Vec<Host>,
    keys: Vec<Keys>,
    addrs: Vec<SocketAddr>,
    ids: BTreeMap<NodeId, usize>,
    /// The network.
    pub net: Network,
    /// Applications.
    pub traffic: Traffic,
    /// Cell-delay probes.
    pub probes: Probes,
    /// Crashes scheduled.
    pub crashes: Vec<CrashRecord>,
    /// pcap captures by directed host pair.
    pub captures: BTreeMap<(usize, usize), crate::pcap::Capture>,
    /// Events processed.
    pub events: u64,
    /// Datagrams sent by hosts.
    pub datagrams: u64,
    /// Datagrams that arrived at a crashed host.
    pub to_dead_host: u64,
    /// Wake-ups that found no timer due (their deadline had moved later).
    pub idle_wakes: u64,
    max_datagram: usize,
    /// Bytes the network adds to each datagram on the wire.
    overhead: usize,
    /// The link cores send whole IPv4 packets (pcap writes them as they are).
    raw_ip: bool,
    app: Vec<AppEvent>,
    out: Vec<Datagram>,
    pool: BufPool,
    sched: Schedule,
}

fn host_addr(i: usize) -> SocketAddr {
    let n = i + 1;
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8),
        PORT,
    ))
}

fn mbit(m: f64) -> u64 {
    (m.max(0.0) * 1e6 / 8.0) as u64
}

fn ms(m: f64) -> u64 {
    (m.max(0.0) * 1e6) as u64
}

fn path_model(p: &PathParams, latency: u64) -> PathModel {
    PathModel {
        latency,
        jitter: ms(p.jitter_ms),
        loss: p.loss,
        gilbert: p.gilbert,
        duplicate: p.duplicate,
        reorder: p.reorder,
        reorder_delay: ms(p.reorder_delay_ms),
        mtu: if p.mtu == 0 { 1500 } else { p.mtu },
        rate: 0,
        queue: 1 << 20,
        aqm: crate::link::Aqm::Droptail,
    }
}

impl Sim {
    /// Builds the world of `scenario` for `seed`.
    pub fn new(scenario: Scenario, seed: u64) -> Result<Sim, SimError> {
        let mut infos = Vec::new();
        let mut params: Vec<HostParams> = Vec::new();
        let mut keys = Vec::new();
        let mut group_hosts: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mtu = if scenario.path_defaults.mtu == 0 {
            1500
        } else {
            scenario.path_defaults.mtu
        };
        let max_datagram = mtu.saturating_sub(scenario.ip_overhead).clamp(600, 65_000);
        for g in &scenario.groups {
            let d = scenario.host_defaults;
            let p = HostParams {
                up_mbit: g.up_mbit.unwrap_or(d.up_mbit),
                down_mbit: g.down_mbit.unwrap_or(d.down_mbit),
                latency_ms: g.latency_ms.unwrap_or(d.latency_ms),
                queue_kib: g.queue_kib.unwrap_or(d.queue_kib),
                server_delay_ms: g.server_delay_ms.unwrap_or(d.server_delay_ms),
                aqm: g.aqm.unwrap_or(d.aqm),
            };
            for name in Scenario::host_names(g) {
                let i = infos.len();
                let mut kr = crypto_stream(seed, Purpose::Keys, i as u64, 0);
                let mut identity = [0u8; 32];
                kr.fill_bytes(&mut identity);
                let onion = OnionKeypair::generate(&mut kr);
                let id = Identity::from_secret(identity).node_id();
                let addr = host_addr(i);
                infos.push(HostInfo {
                    name,
                    id,
                    hop: HopSpec {
                        id,
                        onion_key: onion.public,
                        addr: format!("{}://{addr}", scenario.link),
                    },
                    role: g.role.clone(),
                    weight: g
                        .weight
                        .unwrap_or(if p.up_mbit > 0.0 { p.up_mbit } else { 1e6 }),
                    server_delay: ms(p.server_delay_ms),
                });
                keys.push(Keys {
                    identity,
                    onion: onion.secret_bytes(),
                });
                params.push(p);
                group_hosts.entry(g.name.clone()).or_default().push(i);
            }
        }
        let by_name: BTreeMap<String, usize> = infos
            .iter()
            .enumerate()
            .map(|(i, h)| (h.name.clone(), i))
            .collect();
        let named = |n: &str| {
            by_name
                .get(n)
                .copied()
                .ok_or_else(|| SimError::Invalid(format!("no host named {n}")))
        };
        let q = |p: &HostParams| (p.queue_kib * 1024.0) as usize;
        let up = params
            .iter()
            .map(|p| Bottleneck::new(mbit(p.up_mbit), q(p)).with_aqm(p.aqm))
            .collect();
        let down = params
            .iter()
            .map(|p| Bottleneck::new(mbit(p.down_mbit), q(p)).with_aqm(p.aqm))
            .collect();
        let lat: Vec<u64> = params.iter().map(|p| ms(p.latency_ms)).collect();
        let default_path = path_model(&scenario.path_defaults, 0);
        let mut net = Network::new(seed, up, down, lat.clone(), default_path);
        for l in &scenario.links {
            let (a, b) = (named(&l.a)?, named(&l.b)?);
            let dirs = if l.one_way {
                vec![(a, b)]
            } else {
                vec![(a, b), (b, a)]
            };
            for (x, y) in dirs {
                let latency = l.latency_ms.map_or(lat[x] + lat[y], ms);
                let mut m = path_model(&l.path, latency);
                m.rate = l.bandwidth_mbit.map_or(0, mbit);
                m.queue = l.queue_kib.map_or(1 << 20, |k| (k * 1024.0) as usize);
                m.aqm = l.aqm;
                net.overrides.insert((x, y), m);
            }
        }
        for p in &scenario.partitions {
            let mut hosts = p
                .hosts
                .iter()
                .map(|n| named(n))
                .collect::<Result<Vec<_>, _>>()?;
            hosts.sort_unstable();
            net.partitions.push(Partition {
                hosts,
                from: Time(secs(p.from_s)),
                until: Time(secs(p.until_s)),
            });
        }
        let addrs: Vec<SocketAddr> = (0..infos.len()).map(host_addr).collect();
        let mut probes = Probes::default();
        for p in &scenario.probes {
            let (a, b) = (named(&p.from)?, named(&p.to)?);
            probes.add(format!("{}->{}", p.from, p.to), addrs[a], addrs[b]);
        }
        let mut fixed = Vec::new();
        let mut clients = Vec::new();
        for t in &scenario.traffic {
            fixed.push(
                t.path
                    .iter()
                    .map(|n| named(n))
                    .collect::<Result<Vec<_>, _>>()?,
            );
            clients.push(group_hosts.get(&t.clients).cloned().unwrap_or_default());
        }
        let end = Time(secs(scenario.duration_s));
        let bin = secs(scenario.report.bin_s.unwrap_or(1.0));
        let (traffic, sched) = Traffic::new(
            infos.clone(),
            scenario.traffic.clone(),
            fixed,
            clients,
            model_stream(seed, Purpose::Traffic, 0),
            end,
            bin,
        );
        let mut sim = Sim {
            seed,
            now: Time(0),
            end,
            queue: crate::queue::EventQueue::default(),
            hosts: Vec::new(),
            keys,
            ids: infos.iter().enumerate().map(|(i, h)| (h.id, i)).collect(),
            addrs,
            net,
            traffic,
            probes,
            crashes: Vec::new(),
            captures: BTreeMap::new(),
            events: 0,
            datagrams: 0,
            to_dead_host: 0,
            idle_wakes: 0,
            max_datagram,
            overhead: scenario.ip_overhead,
            raw_ip: false,
            app: Vec::new(),
            out: Vec::new(),
            pool: BufPool::default(),
            sched,
            scenario,
        };
        for [a, b] in sim.scenario.pcap.clone() {
            let (x, y) = (named(&a)?, named(&b)?);
            for (f, t) in [(x, y), (y, x)] {
                let name = format!("{}-{}.pcap", infos[f].name, infos[t].name);
                sim.captures.insert((f, t), crate::pcap::Capture::new(name));
            }
        }
        for i in 0..infos.len() {
            let (node, core) = sim.make_node(i, 0)?;
            sim.hosts.push(Host::new(i, sim.addrs[i], node, core));
        }
        if sim
            .hosts
            .first()
            .is_some_and(|h| h.core.ip_header_included())
        {
            sim.raw_ip = true;
            sim.overhead = sim.scenario.ip_overhead.saturating_sub(UDP_IP_HEADER);
        }
        // Crashes: a seeded choice of hosts per spec.
        let mut crash_rng = model_stream(seed, Purpose::Scenario, 0);
        for c in sim.scenario.crashes.clone() {
            let mut members = group_hosts.get(&c.group).cloned().unwrap_or_default();
            members.shuffle(&mut crash_rng);
            let n = ((members.len() as f64) * c.fraction).ceil() as usize;
            for &h in members.iter().take(n.min(members.len())) {
                let at = Time(secs(c.at_s));
                let restart = c.restart_after_s.map(|r| at.plus_nanos(secs(r)));
                sim.queue.push(at, Ev::Crash { host: h });
                if let Some(r) = restart {
                    sim.queue.push(r, Ev::Restart { host: h });
                }
                sim.crashes.push(CrashRecord {
                    host: h,
                    at,
                    restart,
                });
            }
        }
        sim.crashes.sort_by_key(|c| (c.at, c.host));
        let sched = std::mem::take(&mut sim.sched);
        for (t, a) in sched {
            sim.queue.push(t, Ev::App(a));
        }
        Ok(sim)
    }

    fn make_node(&self, i: usize, incarnation: u32) -> Result<(Node, Box<dyn LinkCore>), SimError> {
        let k = self
            .keys
            .get(i)
            .ok_or_else(|| SimError::Invalid(format!("no host {i}")))?;
        let identity = Identity::from_secret(k.identity);
        let onion = OnionKeypair::from_secret(k.onion);
        let mut rng = crypto_stream(self.seed, Purpose::Node, i as u64, incarnation);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        // A node keeps up to `cell_pool` spare cell buffers: a per-process
        // cache that would cost 2 MiB per simulated host at the default
        // (1000 clients: 2 GiB). 256 spare cells are plenty per host.
        let defaults = NodeConfig::default();
        let config = NodeConfig {
            cell_pool: 256,
            cc: CcParams {
                algorithm: self.scenario.circuit_congestion()?,
                ..defaults.cc
            },
            ..defaults
        };
        let node = Node::new(identity.node_id(), onion, config, Box::new(rng));
        let core: Box<dyn LinkCore> = match self.scenario.link.as_str() {
            "tcp-model" => Box::new(TcpCore::new(identity.node_id(), self.max_datagram, secret)),
            // smoltcp sends whole IPv4 packets: the IPv4 + UDP header the
            // others pay for is room for its IPv4 + TCP header.
            "tcp" => Box::new(SmolTcpCore::new(
                &identity,
                self.addrs[i],
                secret,
                self.max_datagram + UDP_IP_HEADER,
            )?),
            "quic" => Box::new(QuicCore::new(&identity, secret, self.max_datagram)?),
            "udt" => Box::new(UdtCore::new(
                &identity,
                secret,
                self.max_datagram,
                self.scenario.congestion()?,
                self.scenario.udt_max_datagram_probe,
            )?),
            other => return Err(SimError::Invalid(format!("unknown link kind {other}"))),
        };
        Ok((node, core))
    }

    /// Host names.
    pub fn name(&self, h: usize) -> &str {
        self.traffic.info.get(h).map_or("?", |i| i.name.as_str())
    }

    /// Runs to the end; `progress` is called about every simulated second
    /// with the current time.
    pub fn run(&mut self, mut progress: impl FnMut(Time)) -> Result<(), SimError> {
        let mut next_report = Time::from_secs(1);
        while let Some(at) = self.queue.peek_time() {
            if at > self.end {
                break;
            }
            let Some((at, ev)) = self.queue.pop() else {
                break;
            };
            self.now = at;
            self.events += 1;
            if at >= next_report {
                progress(at);
                next_report = at.plus_nanos(1_000_000_000);
            }
            self.handle(ev)?;
        }
        self.now = self.end;
        Ok(())
    }

    fn handle(&mut self, ev: Ev) -> Result<(), SimError> {
        let now = self.now;
        match ev {
            Ev::Downlink {
                from,
                to,
                data,
                circuits,
            } => {
                let len = data.len() + self.overhead;
                match self.net.down.get_mut(to).and_then(|d| d.admit(now, len)) {
                    Some(t) => self.queue.push(t, Ev::Deliver { from, to, data }),
                    None => {
                        self.lost(from, to, &circuits);
                        self.pool.give(data);
                    }
                }
            }
            Ev::Deliver { from, to, mut data } => {
                let from_addr = self.addrs[from];
                let Some(host) = self.hosts.get_mut(to) else {
                    return Ok(());
                };
                if !host.up {
                    self.to_dead_host += 1;
                    self.pool.give(data);
                    return Ok(());
                }
                host.receive(now, from_addr, &mut data);
                self.pool.give(data);
                self.process(to, Some(from_addr));
            }
            Ev::Wake { host, incarnation } => {
                let Some(h) = self.hosts.get_mut(host) else {
                    return Ok(());
                };
                if !h.up || h.incarnation != incarnation || h.timer != Some(now) {
                    return Ok(());
                }
                h.timer = None;
                // A deadline that moved later since this wake-up was
                // scheduled leaves nothing to do now but wait again.
                if let Some(t) = h.idle_until(now) {
                    arm_wake(&mut self.queue, h, host, now, t);
                    self.idle_wakes += 1;
                    return Ok(());
                }
                h.run_timers(now);
                self.process(host, None);
            }
            Ev::App(timer) => {
                let mut sched = std::mem::take(&mut self.sched);
                self.traffic
                    .on_timer(now, timer, &mut self.hosts, &mut sched);
                self.sched = sched;
                let host = match timer {
                    AppTimer::Start { .. } | AppTimer::Timeout { .. } | AppTimer::Echo { .. } => {
                        None
                    }
                    AppTimer::Accept { host, .. } => Some(host),
                };
                // The timer may have touched any client; process the one
                // it names or, for client timers, the transfer's client.
                let touched = host.or_else(|| self.timer_host(timer));
                if let Some(h) = touched {
                    if self.hosts.get(h).is_some_and(|x| x.up) {
                        self.process(h, None);
                    }
                }
                self.flush_sched();
            }
            Ev::Crash { host } => {
                let mut sched = std::mem::take(&mut self.sched);
                if let Some(h) = self.hosts.get_mut(host) {
                    h.up = false;
                    h.timer = None;
                    self.traffic.on_crash(now, h, &mut sched);
                }
                self.sched = sched;
                self.flush_sched();
            }
            Ev::Restart { host } => {
                let inc = self.hosts.get(host).map_or(0, |h| h.incarnation + 1);
                let (node, core) = self.make_node(host, inc)?;
                if let Some(h) = self.hosts.get_mut(host) {
                    h.restart(node, core);
                }
                self.process(host, None);
            }
        }
        Ok(())
    }

    fn timer_host(&self, timer: AppTimer) -> Option<usize> {
        match timer {
            AppTimer::Start { .. } => self.traffic.transfers.last().map(|t| t.client),
            AppTimer::Timeout { transfer } | AppTimer::Echo { transfer } => {
                self.traffic.transfers.get(transfer).map(|t| t.client)
            }
            AppTimer::Accept { host, .. } => Some(host),
        }
    }

    fn flush_sched(&mut self) {
        for (t, a) in self.sched.drain(..) {
            self.queue.push(t, Ev::App(a));
        }
    }

    /// Lets host `h` react to its input and sends what it has to send.
    fn process(&mut self, h: usize, from: Option<SocketAddr>) {
        let now = self.now;
        let dir = Dir {
            ids: &self.ids,
            addrs: &self.addrs,
        };
        let Some(host) = self.hosts.get_mut(h) else {
            return;
        };
        let mut app = std::mem::take(&mut self.app);
        let mut sched = std::mem::take(&mut self.sched);
        host.exchange(now, from, &dir, &mut self.probes, &mut app);
        let mut rounds = 0;
        while !app.is_empty() && rounds < 16 {
            rounds += 1;
            self.traffic.on_events(now, host, &mut app, &mut sched);
            self.traffic.serve(now, host);
            host.exchange(now, None, &dir, &mut self.probes, &mut app);
        }
        app.clear();
        self.traffic.serve(now, host);
        let mut out = std::mem::take(&mut self.out);
        host.flush(now, &mut self.probes, &mut self.pool, &mut out);
        if let Some(t) = host.next_wake() {
            arm_wake(&mut self.queue, host, h, now, t);
        }
        self.app = app;
        for (t, a) in sched.drain(..) {
            self.queue.push(t, Ev::App(a));
        }
        self.sched = sched;
        for dg in out.drain(..) {
            self.send(h, dg);
        }
        self.out = out;
    }

    /// The host at a virtual address (the inverse of `host_addr`).
    fn host_at(&self, addr: &SocketAddr) -> Option<usize> {
        let SocketAddr::V4(v4) = addr else {
            return None;
        };
        let [a, b, c, d] = v4.ip().octets();
        let n = (usize::from(b) << 16) | (usize::from(c) << 8) | usize::from(d);
        let i = n.checked_sub(1)?;
        (a == 10 && self.addrs.get(i) == Some(addr)).then_some(i)
    }

    fn lost(&mut self, from: usize, to: usize, circuits: &[u32]) {
        if let Some(p) = self.probes.index(self.addrs[from], self.addrs[to]) {
            self.probes.lost(p, self.now, circuits);
        }
    }

    /// Puts a datagram on the network.
    fn send(&mut self, from: usize, dg: Datagram) {
        let now = self.now;
        self.datagrams += 1;
        let Some(to) = self.host_at(&dg.to) else {
            self.pool.give(dg.data);
            return;
        };
        if let Some(c) = self.captures.get_mut(&(from, to)) {
            if self.raw_ip {
                c.record_ip(now.nanos(), &dg.data);
            } else {
                c.record(now.nanos(), self.addrs[from], dg.to, &dg.data);
            }
        }
        if self.net.cut(now, from, to) {
            self.lost(from, to, &dg.circuits);
            self.pool.give(dg.data);
            return;
        }
        let len = dg.data.len() + self.overhead;
        let Some(left) = self.net.up.get_mut(from).and_then(|u| u.admit(now, len)) else {
            self.lost(from, to, &dg.circuits);
            self.pool.give(dg.data);
            return;
        };
        let down_limited = self.net.down.get(to).is_some_and(|d| d.limited());
        match self.net.path(from, to).carry(left, len) {
            crate::link::Fate::Arrives(at, dup) => {
                let mk = |data: Vec<u8>, circuits: Vec<u32>| {
                    if down_limited {
                        Ev::Downlink {
                            from,
                            to,
                            data,
                            circuits,
                        }
                    } else {
                        Ev::Deliver { from, to, data }
                    }
                };
                if let Some(d) = dup {
                    self.queue.push(d, mk(dg.data.clone(), dg.circuits.clone()));
                }
                self.queue.push(at, mk(dg.data, dg.circuits));
            }
            _ => {
                self.lost(from, to, &dg.circuits);
                self.pool.give(dg.data);
            }
        }
    }

    /// The host index of a name.
    pub fn host_named(&self, name: &str) -> Option<usize> {
        self.traffic.info.iter().position(|i| i.name == name)
    }

    /// Events still pending (for tests).
    pub fn pending_events(&self) -> usize {
        self.queue.len()
    }
}
