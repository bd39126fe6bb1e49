//! The `tcp` link kind: a real TCP state machine (smoltcp's) carrying the
//! real tcp link's framing, in virtual time.
//!
//! Each host runs one smoltcp `Interface` (IPv4, no link layer) whose
//! device is a pair of packet queues: the datagrams this core hands the
//! network are whole IPv4 packets with real TCP segments (checksummed),
//! so the network must not add another IPv4 + UDP header (see
//! [`LinkCore::ip_header_included`]). TCP itself is smoltcp's: three-way
//! handshake, sliding window with window scaling, fast retransmit on
//! duplicate ACKs, RTO with smoltcp's 10 ms floor and backoff, CUBIC
//! congestion control, delayed ACKs (10 ms), Nagle off (like the real
//! link's `TCP_NODELAY`), up to 32 out-of-order ranges held by the
//! receiver; it acknowledges with SACK blocks but recovers without them.
//! smoltcp 0.14 or later: 0.12 capped only each burst, not the data in
//! flight, by the congestion window (so CUBIC and Reno gave identical runs
//! and `hol` collapsed into retransmission timeouts). Above TCP the bytes are the real `tcp` link's
//! (`links/tcp`): the Noise XX handshake of `relay-link` in `u16 length ||
//! message` frames, then `u16 length || AES-256-GCM(type || payload)`
//! frames (the frame counter is the nonce) of up to 64 cells, keepalives
//! after 4 s without sending, and a 15 s idle timeout. Delivery is in
//! stream order, so one lost segment holds back every circuit behind it.
//!
//! Peers are named by `peer_ip:9000`, whatever the dialler's ephemeral
//! port. Simultaneous dials give two connections, both kept (each its own
//! kernel link); a second dial from the same end replaces the first
//! ([`crate::transport::replaces`]).

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use relay_kernel::{Cell, NodeId, Time, CELL_LEN};
use relay_link::handshake::{Initiator, Responder, MAX_MSG};
use relay_link::transport::{OpenKey, SealKey, TAG_LEN};
use relay_link::{Identity, StaticKey};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use crate::error::SimError;
use crate::transport::{ConnKey, CoreEvent, LinkCore};

const FRAME_CELLS: u8 = 0;
const FRAME_KEEPALIVE: u8 = 1;
/// Cells per frame (the real link's batch).
const MAX_BATCH: usize = 64;
/// Send and receive buffer per connection (fixed: smoltcp does not
/// autotune): 2 MiB is 500 Mbit/s over one 33 ms `long-fat` hop, and
/// keeps memory at 4 MiB per connection (a 4 MiB buffer made the `web`
/// scenario use 770 MiB).
const BUFFER: usize = 2 << 20;
const IDLE: u64 = 15_000_000_000;
const KEEPALIVE: u64 = 4_000_000_000;
const HANDSHAKE_TIMEOUT: u64 = 10_000_000_000;
/// The port every host listens on (the simulation's `PORT`).
const LISTEN_PORT: u16 = 9000;
/// Bytes of IPv4 + TCP header before a segment's payload (no IP options;
/// smoltcp adds TCP options only to SYNs).
const IP_HEADER: usize = 20;

/// The network interface's device: packets in, packets out.
struct Queues {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl Device for Queues {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _now: SmolInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = self.mtu;
        c
    }
}

/// Where a connection's link handshake stands.
enum Phase {
    /// TCP not established yet.
    Tcp,
    /// Waiting for message 2 (we dialled).
    AwaitM2(Initiator),
    /// Waiting for message 1 (we accepted).
    AwaitM1,
    /// Waiting for message 3.
    AwaitM3(Responder),
    /// Link up.
    Up { seal: SealKey, open: OpenKey },
}

struct Conn {
    handle: SocketHandle,
    /// The peer, keyed `ip:9000`.
    addr: SocketAddr,
    /// The TCP 4-tuple's ports (ours, theirs), once known.
    ports: Option<(u16, u16)>,
    initiator: bool,
    expected: Option<NodeId>,
    phase: Phase,
    current: bool,
    started: Time,
    last_recv: Time,
    last_send: Time,
    send_ctr: u64,
    recv_ctr: u64,
    /// Received stream bytes not yet parsed into frames.
    inbuf: Vec<u8>,
    /// Bytes written into the socket so far (the stream offset).
    written: u64,
    /// (stream offset, circuit) of cells written and maybe unacknowledged.
    cells: VecDeque<(u64, u32)>,
    backlog: VecDeque<Cell>,
    ready: VecDeque<Cell>,
    /// Our initial sequence number, seen on our SYN.
    isn: Option<u32>,
    /// Highest sequence number sent (end of segment), to spot resends.
    snd_max: Option<u32>,
    /// Stream offset just past the highest byte sent (`snd_max`).
    sent_end: u64,
    retransmitted: u64,
}

/// The smoltcp endpoint of one host.
pub struct SmolTcpCore {
    iface: Interface,
    dev: Queues,
    sockets: SocketSet<'static>,
    listener: SocketHandle,
    key: StaticKey,
    conns: BTreeMap<u64, Conn>,
    /// Cells retransmitted by connections since forgotten.
    retransmitted_closed: u64,
    next_conn: u64,
    /// The connection each end dialled last, per peer address.
    by_addr: BTreeMap<(SocketAddr, bool), u64>,
    dialing: BTreeMap<SocketAddr, u64>,
    next_port: u16,
    events: VecDeque<CoreEvent>,
    deadline: Option<Time>,
    dirty: bool,
    frame: Vec<u8>,
}

fn smol(t: Time) -> SmolInstant {
    SmolInstant::from_micros(i64::try_from(t.nanos() / 1000).unwrap_or(i64::MAX))
}

fn new_socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0u8; BUFFER]),
        tcp::SocketBuffer::new(vec![0u8; BUFFER]),
    );
    s.set_nagle_enabled(false);
    s.set_congestion_control(tcp::CongestionControl::Cubic);
    s
}

fn v4(a: IpEndpoint) -> Option<SocketAddrV4> {
    match a.addr {
        IpAddress::Ipv4(ip) => Some(SocketAddrV4::new(ip, a.port)),
    }
}

/// The fields of an IPv4/TCP packet this core looks at.
struct Seg {
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    seq: u32,
    syn: bool,
    payload: usize,
}

fn parse(p: &[u8]) -> Option<Seg> {
    let ihl = usize::from(p.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*p.get(2)?, *p.get(3)?]));
    let dst = Ipv4Addr::new(*p.get(16)?, *p.get(17)?, *p.get(18)?, *p.get(19)?);
    let t = p.get(ihl..total)?;
    let port = |i: usize| Some(u16::from_be_bytes([*t.get(i)?, *t.get(i + 1)?]));
    let seq = u32::from_be_bytes(t.get(4..8)?.try_into().ok()?);
    let doff = usize::from(t.get(12)? >> 4) * 4;
    Some(Seg {
        dst,
        src_port: port(0)?,
        dst_port: port(2)?,
        seq,
        syn: t.get(13)? & 0x02 != 0,
        payload: t.len().saturating_sub(doff),
    })
}

impl SmolTcpCore {
    /// A TCP endpoint for `identity` at `addr`; `secret` seeds smoltcp's
    /// random choices (initial sequence numbers) and our ephemeral ports;
    /// `mtu` is the IP packet limit.
    pub fn new(
        identity: &Identity,
        addr: SocketAddr,
        secret: [u8; 32],
        mtu: usize,
    ) -> Result<SmolTcpCore, SimError> {
        let SocketAddr::V4(me) = addr else {
            return Err(SimError::Invalid("tcp link needs IPv4 addresses".into()));
        };
        let key = StaticKey::new(identity).map_err(|e| SimError::Link(e.to_string()))?;
        let mut rng = ChaCha20Rng::from_seed(secret);
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = rng.next_u64();
        let mut dev = Queues {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu,
        };
        let mut iface = Interface::new(config, &mut dev, SmolInstant::from_micros(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(*me.ip()), 8));
        });
        let mut sockets = SocketSet::new(Vec::new());
        let mut l = new_socket();
        l.listen(LISTEN_PORT)
            .map_err(|e| SimError::Link(format!("tcp listen: {e}")))?;
        let listener = sockets.add(l);
        Ok(SmolTcpCore {
            iface,
            dev,
            sockets,
            listener,
            key,
            conns: BTreeMap::new(),
            retransmitted_closed: 0,
            next_conn: 0,
            by_addr: BTreeMap::new(),
            dialing: BTreeMap::new(),
            // A fresh range per incarnation, so a restarted host does not
            // reuse the 4-tuple of a connection its peers still hold.
            next_port: 49_152 + (rng.next_u32() % 8192) as u16,
            events: VecDeque::new(),
            deadline: None,
            dirty: false,
            frame: Vec::with_capacity(2 + 1 + MAX_BATCH * CELL_LEN + TAG_LEN),
        })
    }

    fn add_conn(
        &mut self,
        now: Time,
        handle: SocketHandle,
        addr: SocketAddr,
        dial: Option<NodeId>,
    ) -> u64 {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                handle,
                addr,
                ports: None,
                initiator: dial.is_some(),
                expected: dial,
                phase: if dial.is_some() {
                    Phase::Tcp
                } else {
                    Phase::AwaitM1
                },
                current: false,
                started: now,
                last_recv: now,
                last_send: now,
                send_ctr: 0,
                recv_ctr: 0,
                inbuf: Vec::new(),
                written: 0,
                cells: VecDeque::new(),
                backlog: VecDeque::new(),
                ready: VecDeque::new(),
                isn: None,
                snd_max: None,
                sent_end: 0,
                retransmitted: 0,
            },
        );
        id
    }

    /// Turns the listener into a connection once it took a SYN, and
    /// listens again with a fresh socket.
    fn promote_listener(&mut self, now: Time) {
        let s = self.sockets.get::<tcp::Socket>(self.listener);
        if s.state() == tcp::State::Listen {
            return;
        }
        let (remote, local) = (s.remote_endpoint(), s.local_endpoint());
        let old = self.listener;
        let mut l = new_socket();
        // Only a working listener may replace it (the handle must stay
        // valid); listening on a fresh socket does not fail in practice.
        if l.listen(LISTEN_PORT).is_err() {
            return;
        }
        self.listener = self.sockets.add(l);
        match remote.and_then(v4) {
            Some(r) => {
                let addr = SocketAddr::V4(SocketAddrV4::new(*r.ip(), LISTEN_PORT));
                let id = self.add_conn(now, old, addr, None);
                if let (Some(c), Some(l)) = (self.conns.get_mut(&id), local) {
                    c.ports = Some((l.port, r.port()));
                }
            }
            None => {
                self.sockets.remove(old);
            }
        }
    }

    /// One pass over the connections: handshakes, frames in and out,
    /// timeouts, ends. True if it wrote anything into a socket.
    fn service(&mut self, now: Time) -> bool {
        self.promote_listener(now);
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        let mut wrote = false;
        for id in ids {
            wrote |= self.service_conn(now, id);
        }
        wrote
    }

    fn service_conn(&mut self, now: Time, id: u64) -> bool {
        let Some(c) = self.conns.get_mut(&id) else {
            return false;
        };
        let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
        let mut wrote = false;
        let mut fail = matches!(
            s.state(),
            tcp::State::Closed
                | tcp::State::TimeWait
                | tcp::State::CloseWait
                | tcp::State::Closing
                | tcp::State::LastAck
                | tcp::State::Listen
        );
        let up = matches!(c.phase, Phase::Up { .. });
        if !up && now.since(c.started) >= HANDSHAKE_TIMEOUT {
            fail = true;
        }
        if up && now.since(c.last_recv) >= IDLE {
            fail = true;
        }
        let mut connected = None;
        if !fail && s.state() == tcp::State::Established {
            if matches!(c.phase, Phase::Tcp) {
                let Some(expected) = c.expected else {
                    return false;
                };
                match Initiator::start(&self.key, expected) {
                    Ok((i, m1)) => {
                        wrote |= write_msg(s, c, &m1);
                        c.phase = Phase::AwaitM2(i);
                    }
                    Err(_) => fail = true,
                }
            }
            // Read what arrived.
            if s.can_recv() {
                let _ = s.recv(|b| {
                    c.inbuf.extend_from_slice(b);
                    (b.len(), ())
                });
                c.last_recv = now;
            }
            match read_frames(&self.key, s, c, now, &mut wrote) {
                Ok(Some(peer)) => connected = Some(peer),
                Ok(None) => {}
                Err(()) => fail = true,
            }
            if let Phase::Up { seal, .. } = &c.phase {
                // Cells into frames while the send buffer has room for one.
                while !c.backlog.is_empty() {
                    let n = c.backlog.len().min(MAX_BATCH);
                    let need = 3 + n * CELL_LEN + TAG_LEN;
                    if s.send_capacity() - s.send_queue() < need {
                        break;
                    }
                    self.frame.clear();
                    self.frame.extend_from_slice(&[0, 0, FRAME_CELLS]);
                    for (k, cell) in c.backlog.drain(..n).enumerate() {
                        let off = c.written + 3 + (k * CELL_LEN) as u64;
                        c.cells.push_back((off, cell.raw_circ_id()));
                        self.frame.extend_from_slice(cell.as_bytes());
                    }
                    if !send_frame(s, seal, &mut c.send_ctr, &mut self.frame) {
                        fail = true;
                        break;
                    }
                    c.written += self.frame.len() as u64;
                    c.last_send = now;
                    wrote = true;
                }
                if now.since(c.last_send) >= KEEPALIVE
                    && s.send_capacity() - s.send_queue() >= 3 + TAG_LEN
                {
                    self.frame.clear();
                    self.frame.extend_from_slice(&[0, 0, FRAME_KEEPALIVE]);
                    if send_frame(s, seal, &mut c.send_ctr, &mut self.frame) {
                        c.written += self.frame.len() as u64;
                        c.last_send = now;
                        wrote = true;
                    }
                }
                // Forget cells the peer acknowledged.
                let acked = c.written.saturating_sub(s.send_queue() as u64);
                while c
                    .cells
                    .front()
                    .is_some_and(|(o, _)| o + CELL_LEN as u64 <= acked)
                {
                    c.cells.pop_front();
                }
            }
        }
        if fail {
            s.abort();
            self.end(id);
            return wrote;
        }
        if let Some(peer) = connected {
            self.on_connected(id, peer);
        }
        wrote
    }

    fn on_connected(&mut self, id: u64, peer: NodeId) {
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        let (addr, initiator) = (c.addr, c.initiator);
        if self.dialing.get(&addr) == Some(&id) {
            self.dialing.remove(&addr);
        }
        // by_addr is keyed by who dialled, so an older entry is always one
        // this connection replaces.
        let old = self
            .by_addr
            .get(&(addr, initiator))
            .copied()
            .filter(|o| *o != id);
        if let Some(o) = old.and_then(|o| self.conns.get_mut(&o)) {
            // Still reported as closed when it ends (it stays `current`).
            self.sockets.get_mut::<tcp::Socket>(o.handle).abort();
        }
        self.by_addr.insert((addr, initiator), id);
        if let Some(c) = self.conns.get_mut(&id) {
            c.current = true;
        }
        self.events.push_back(CoreEvent::Connected {
            conn: ConnKey(id),
            addr,
            peer,
            initiator,
        });
    }

    /// A connection ended: tell the host and forget it.
    fn end(&mut self, id: u64) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        self.retransmitted_closed += c.retransmitted;
        self.sockets.remove(c.handle);
        if c.current {
            if self.by_addr.get(&(c.addr, c.initiator)) == Some(&id) {
                self.by_addr.remove(&(c.addr, c.initiator));
            }
            self.events.push_back(CoreEvent::Closed {
                conn: ConnKey(id),
                addr: c.addr,
            });
        } else if self.dialing.get(&c.addr) == Some(&id) {
            self.dialing.remove(&c.addr);
            self.events
                .push_back(CoreEvent::ConnectFailed { addr: c.addr });
        }
    }

    /// Runs smoltcp and our connections until neither has more to do now.
    fn run(&mut self, now: Time) {
        let t = smol(now);
        for _ in 0..8 {
            self.iface.poll(t, &mut self.dev, &mut self.sockets);
            if !self.service(now) {
                break;
            }
        }
        self.dirty = false;
        self.refresh_deadline(now);
    }

    fn refresh_deadline(&mut self, now: Time) {
        let t = smol(now);
        // smoltcp counts microseconds: a deadline inside the current one
        // becomes the next, or the host would wake a thousand times.
        let next_us = (now.nanos() / 1000 + 1) * 1000;
        let mut d = self
            .iface
            .poll_at(t, &self.sockets)
            .map(|i| Time((u64::try_from(i.total_micros()).unwrap_or(0) * 1000).max(next_us)));
        for c in self.conns.values() {
            let own = if matches!(c.phase, Phase::Up { .. }) {
                c.last_recv
                    .plus_nanos(IDLE)
                    .min(c.last_send.plus_nanos(KEEPALIVE))
            } else {
                c.started.plus_nanos(HANDSHAKE_TIMEOUT)
            };
            d = Some(d.map_or(own, |x| x.min(own)));
        }
        self.deadline = d;
    }

    /// The connection an outgoing packet belongs to.
    fn conn_of(&mut self, seg: &Seg) -> Option<&mut Conn> {
        let to = SocketAddr::V4(SocketAddrV4::new(seg.dst, LISTEN_PORT));
        self.conns
            .values_mut()
            .find(|c| c.addr == to && c.ports == Some((seg.src_port, seg.dst_port)))
    }
}

impl Conn {
    /// The stream offset of sequence number `seq`: sequence numbers count
    /// from the SYN (isn + 1), and the offset is near what we wrote, so
    /// the high bits come from `written`.
    fn offset_of(&self, seq: u32) -> Option<u64> {
        let rel = u64::from(seq.wrapping_sub(self.isn?).wrapping_sub(1));
        let mut off = (self.written & !0xffff_ffff) | rel;
        if off > self.written {
            off = off.saturating_sub(1 << 32);
        }
        Some(off)
    }

    /// Cells written into the socket but not yet sent once: with the
    /// backlog, what the host's send credit counts (as TCP_NOTSENT_LOWAT
    /// would; without it the 2 MiB socket buffer fills and a new circuit's
    /// first cell waits behind all of it).
    fn unsent_cells(&self) -> usize {
        self.backlog.len() + (self.written.saturating_sub(self.sent_end) as usize) / CELL_LEN
    }
}

/// Writes a handshake message (`u16 length || message`).
fn write_msg(s: &mut tcp::Socket, c: &mut Conn, msg: &[u8]) -> bool {
    let Ok(len) = u16::try_from(msg.len()) else {
        return false;
    };
    let mut buf = len.to_be_bytes().to_vec();
    buf.extend_from_slice(msg);
    match s.send_slice(&buf) {
        Ok(n) => {
            c.written += n as u64;
            n == buf.len()
        }
        Err(_) => false,
    }
}

/// Seals `frame` (2 length bytes, then type and payload) and writes it.
fn send_frame(s: &mut tcp::Socket, seal: &SealKey, ctr: &mut u64, frame: &mut Vec<u8>) -> bool {
    if seal.seal_from(*ctr, frame, 2).is_err() {
        return false;
    }
    *ctr += 1;
    let Ok(len) = u16::try_from(frame.len() - 2) else {
        return false;
    };
    frame[..2].copy_from_slice(&len.to_be_bytes());
    matches!(s.send_slice(frame), Ok(n) if n == frame.len())
}

/// Parses whole frames from the connection's input: handshake messages
/// until the link is up, then sealed frames. `Ok(Some(peer))` when the
/// handshake just completed; `Err` when the peer broke the protocol.
fn read_frames(
    key: &StaticKey,
    s: &mut tcp::Socket,
    c: &mut Conn,
    now: Time,
    wrote: &mut bool,
) -> Result<Option<NodeId>, ()> {
    let mut connected = None;
    let mut at = 0;
    while let Some(hdr) = c.inbuf.get(at..at + 2) {
        let len = usize::from(u16::from_be_bytes([hdr[0], hdr[1]]));
        let Some(body) = c.inbuf.get_mut(at + 2..at + 2 + len) else {
            break;
        };
        at += 2 + len;
        let phase = std::mem::replace(&mut c.phase, Phase::Tcp);
        c.phase = match phase {
            Phase::Tcp => return Err(()),
            Phase::AwaitM1 => {
                if len > MAX_MSG {
                    return Err(());
                }
                let (r, m2) = Responder::respond(key, body).map_err(|_| ())?;
                *wrote |= write_msg(s, c, &m2);
                Phase::AwaitM3(r)
            }
            Phase::AwaitM2(i) => {
                if len > MAX_MSG {
                    return Err(());
                }
                let (m3, session) = i.finish(body).map_err(|_| ())?;
                *wrote |= write_msg(s, c, &m3);
                connected = Some(session.peer);
                c.last_send = now;
                Phase::Up {
                    seal: session.seal,
                    open: session.open,
                }
            }
            Phase::AwaitM3(r) => {
                let session = r.finish(body).map_err(|_| ())?;
                connected = Some(session.peer);
                Phase::Up {
                    seal: session.seal,
                    open: session.open,
                }
            }
            Phase::Up { seal, open } => {
                let plain = open.open(c.recv_ctr, body).map_err(|_| ())?;
                c.recv_ctr += 1;
                let (&ty, payload) = plain.split_first().ok_or(())?;
                match ty {
                    FRAME_CELLS if payload.len() % CELL_LEN == 0 => {
                        for chunk in payload.chunks_exact(CELL_LEN) {
                            c.ready.push_back(Cell::from_slice(chunk).map_err(|_| ())?);
                        }
                    }
                    FRAME_KEEPALIVE => {}
                    _ => return Err(()),
                }
                Phase::Up { seal, open }
            }
        };
    }
    c.inbuf.drain(..at);
    Ok(connected)
}

impl LinkCore for SmolTcpCore {
    fn kind(&self) -> &'static str {
        "tcp"
    }

    fn ip_header_included(&self) -> bool {
        true
    }

    fn connect(&mut self, now: Time, addr: SocketAddr, expected: NodeId) -> bool {
        if self.dialing.contains_key(&addr) {
            return true;
        }
        let SocketAddr::V4(a) = addr else {
            return false;
        };
        let mut s = new_socket();
        let port = self.next_port;
        self.next_port = if port >= 65_000 { 49_152 } else { port + 1 };
        let remote = IpEndpoint::new(IpAddress::Ipv4(*a.ip()), a.port());
        if s.connect(self.iface.context(), remote, port).is_err() {
            return false;
        }
        let h = self.sockets.add(s);
        let id = self.add_conn(now, h, addr, Some(expected));
        if let Some(c) = self.conns.get_mut(&id) {
            c.ports = Some((port, a.port()));
        }
        self.dialing.insert(addr, id);
        self.run(now);
        true
    }

    fn handle_datagram(&mut self, now: Time, _from: SocketAddr, data: &mut [u8]) {
        self.dev.rx.push_back(data.to_vec());
        self.run(now);
    }

    fn poll_transmit(&mut self, now: Time, out: &mut Vec<u8>) -> Option<SocketAddr> {
        if self.dev.tx.is_empty() && self.dirty {
            self.run(now);
        }
        let p = self.dev.tx.pop_front()?;
        let seg = parse(&p);
        if let Some(seg) = &seg {
            if let Some(c) = self.conn_of(seg) {
                if seg.syn {
                    c.isn = Some(seg.seq);
                } else if seg.payload > 0 {
                    let end = seg.seq.wrapping_add(seg.payload as u32);
                    match c.snd_max {
                        // At or below the highest sequence sent: a resend.
                        Some(m) if (end.wrapping_sub(m) as i32) <= 0 => {
                            c.retransmitted += seg.payload.div_ceil(CELL_LEN) as u64;
                        }
                        _ => {
                            c.snd_max = Some(end);
                            if let Some(off) = c.offset_of(end) {
                                c.sent_end = c.sent_end.max(off);
                            }
                        }
                    }
                }
            }
        }
        out.clear();
        out.extend_from_slice(&p);
        let dst = seg.map_or(Ipv4Addr::UNSPECIFIED, |s| s.dst);
        Some(SocketAddr::V4(SocketAddrV4::new(dst, LISTEN_PORT)))
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.deadline
    }

    fn handle_timeout(&mut self, now: Time) {
        self.run(now);
    }

    fn poll_event(&mut self) -> Option<CoreEvent> {
        self.events.pop_front()
    }

    fn queued_cells(&mut self, conn: ConnKey) -> Option<usize> {
        self.conns
            .get(&conn.0)
            .filter(|c| c.current)
            .map(Conn::unsent_cells)
    }

    fn queue_cell(&mut self, conn: ConnKey, cell: Cell) -> Result<(), Cell> {
        match self.conns.get_mut(&conn.0).filter(|c| c.current) {
            Some(c) => {
                c.backlog.push_back(cell);
                self.dirty = true;
                Ok(())
            }
            None => Err(cell),
        }
    }

    fn pop_ready(&mut self, conn: ConnKey) -> Option<Cell> {
        self.conns.get_mut(&conn.0)?.ready.pop_front()
    }

    fn retransmitted_total(&self) -> u64 {
        self.retransmitted_closed + self.conns.values().map(|c| c.retransmitted).sum::<u64>()
    }

    fn datagram_circuits(&mut self, _to: &SocketAddr, datagram: &[u8], out: &mut Vec<u32>) {
        let Some(seg) = parse(datagram) else {
            return;
        };
        if seg.payload == 0 || datagram.len() < IP_HEADER {
            return;
        }
        let Some(c) = self.conn_of(&seg) else {
            return;
        };
        let Some(start) = c.offset_of(seg.seq) else {
            return;
        };
        let end = start + seg.payload as u64;
        for (off, circ) in &c.cells {
            if *off + CELL_LEN as u64 > start && *off < end && !out.contains(circ) {
                out.push(*circ);
            }
        }
    }
}
