//! The `quic` link kind: real quinn-proto connections between simulated
//! hosts, in virtual time.
//!
//! quinn-proto is sans-IO like the udt core: datagrams in, datagrams out,
//! a timer. This adapter runs one quinn-proto `Endpoint` per host and
//! carries cells the way the real `quic` link (`links/quic`) does: one
//! unidirectional stream per circuit and direction, opened by the sender
//! with the first cell of the circuit and starting with a kind byte (0 =
//! cells), then whole 514-byte cells; a stream is finished when its
//! circuit is destroyed (a DESTROY cell sent or received). QUIC orders
//! bytes within a stream only, so a lost packet holds up only the circuits
//! whose stream data it carried. Congestion control is quinn's default
//! (CUBIC); flow-control windows and timeouts are the real link's. The
//! graceful-close handshake of the real link is not modelled (simulated
//! links end by idle timeout, crash or replacement).
//!
//! Determinism: virtual nanoseconds map onto one fixed base `Instant` plus
//! a `Duration` (the base is read once per process and only differences
//! are ever used); the endpoint's RNG seed, connection ids, reset and
//! token keys and all TLS randomness come from the host's seeded stream
//! (see [`tls`]); MTU discovery is off (the initial MTU is the path's).
//!
//! If both ends dial each other at once, both connections stay, each its
//! own kernel link; a second dial from the same end replaces the first
//! ([`crate::transport::replaces`]).

pub mod tls;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn_proto::{
    ClientConfig, ConnectionHandle, ConnectionId, ConnectionIdGenerator, DatagramEvent, Dir,
    Endpoint, EndpointConfig, Event, ServerConfig, StreamEvent, StreamId, TransportConfig, VarInt,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use relay_kernel::{Cell, CellCommand, NodeId, Time, CELL_LEN};
use relay_link::tls::NodeCert;
use relay_link::Identity;
use rustls::crypto::CryptoProvider;

use crate::error::SimError;
use crate::transport::{ConnKey, CoreEvent, LinkCore};
use tls::{Proved, RngLease};

/// First byte of a stream of cells (as in `links/quic`).
const KIND_CELLS: u8 = 0;
/// The real link's windows: a circuit alone can fill a fast link; the
/// send window bounds what queues inside the connection.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 32 << 20;
const SEND_WINDOW: u64 = 8 << 20;
const MAX_STREAMS: u32 = 4096;
/// The real link's idle timeout and keepalive (`LinkConfig::default`).
const IDLE: Duration = Duration::from_secs(15);
const KEEPALIVE: Duration = Duration::from_secs(4);
/// Application close codes.
const CLOSE_DUPLICATE: u32 = 5;
/// Length of our connection ids.
const CID_LEN: usize = 8;

/// The instant virtual time 0 maps to. Only differences between instants
/// reach quinn-proto's logic, so the value itself never shows in a run.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Connection ids from the host's seeded stream (quinn's default draws
/// them from the OS).
struct SeededCids(ChaCha20Rng);

impl ConnectionIdGenerator for SeededCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut b = [0u8; CID_LEN];
        self.0.fill_bytes(&mut b);
        ConnectionId::new(&b)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// A received stream: its kind byte once read, and a cell being assembled.
#[derive(Default)]
struct RecvState {
    kind: Option<u8>,
    partial: Vec<u8>,
}

struct Conn {
    conn: quinn_proto::Connection,
    addr: SocketAddr,
    initiator: bool,
    /// For dials: who we expect, and who the verifier saw.
    proved: Option<Proved>,
    /// The authenticated peer, once connected.
    peer: Option<NodeId>,
    /// Reported to the host as the link to `addr`.
    current: bool,
    /// Circuit -> our open send stream.
    send: BTreeMap<u32, StreamId>,
    /// Cells not yet written into a stream (FIFO), and how much of the
    /// front one was written.
    backlog: VecDeque<Cell>,
    front_written: usize,
    recv: BTreeMap<StreamId, RecvState>,
    ready: VecDeque<Cell>,
    /// Next time quinn-proto wants `handle_timeout`.
    deadline: Option<Time>,
}

/// The quinn-proto endpoint of one host.
pub struct QuicCore {
    ep: Endpoint,
    provider: Arc<CryptoProvider>,
    cert: NodeCert,
    transport: Arc<TransportConfig>,
    conns: BTreeMap<usize, Conn>,
    /// Cells retransmitted by connections since forgotten.
    retransmitted_closed: u64,
    /// The connection each end dialled last, per peer address.
    by_addr: BTreeMap<(SocketAddr, bool), usize>,
    /// Dials not yet connected, per address.
    dialing: BTreeMap<SocketAddr, usize>,
    rng: Option<ChaCha20Rng>,
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<CoreEvent>,
    rr: usize,
    deadline: Option<Time>,
    scratch: Vec<u8>,
}

/// quinn-proto counts lost bytes, not resent cells: the lost bytes in
/// cells (what had to be sent again).
fn lost_cells(c: &Conn) -> u64 {
    c.conn.stats().path.lost_bytes / CELL_LEN as u64
}

fn instant(t: Time) -> Instant {
    base() + Duration::from_nanos(t.nanos())
}

fn virtual_time(i: Instant) -> Time {
    Time(u64::try_from(i.saturating_duration_since(base()).as_nanos()).unwrap_or(u64::MAX))
}

fn link_err(e: impl std::fmt::Display) -> SimError {
    SimError::Link(format!("quic: {e}"))
}

impl QuicCore {
    /// A QUIC endpoint for `identity`; `secret` seeds every random choice
    /// it and its TLS sessions make; `max_datagram` is the UDP payload
    /// limit (the initial and only MTU).
    pub fn new(
        identity: &Identity,
        secret: [u8; 32],
        max_datagram: usize,
    ) -> Result<QuicCore, SimError> {
        let mut rng = ChaCha20Rng::from_seed(secret);
        let mut seed = [0u8; 32];
        let mut reset = [0u8; 64];
        let mut token = [0u8; 64];
        let mut cids = [0u8; 32];
        rng.fill_bytes(&mut seed);
        rng.fill_bytes(&mut reset);
        rng.fill_bytes(&mut token);
        rng.fill_bytes(&mut cids);
        let provider = tls::provider();
        let cert = NodeCert::new(identity).map_err(link_err)?;
        let mtu = u16::try_from(max_datagram).unwrap_or(u16::MAX).max(1200);
        let mut t = TransportConfig::default();
        t.max_idle_timeout(Some(IDLE.try_into().map_err(link_err)?))
            .keep_alive_interval(Some(KEEPALIVE))
            .max_concurrent_bidi_streams(VarInt::from_u32(0))
            .max_concurrent_uni_streams(VarInt::from_u32(MAX_STREAMS))
            .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
            .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
            .send_window(SEND_WINDOW)
            .datagram_receive_buffer_size(None)
            .initial_mtu(mtu)
            .min_mtu(mtu.min(1200))
            .mtu_discovery_config(None)
            .enable_segmentation_offload(false);
        let transport = Arc::new(t);
        let server_tls = tls::server_config(&provider, &cert)?;
        let server_tls = QuicServerConfig::try_from(server_tls).map_err(link_err)?;
        let token_key = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&token);
        let mut server = ServerConfig::new(Arc::new(server_tls), Arc::new(token_key));
        server
            .transport_config(transport.clone())
            .time_source(Arc::new(tls::FixedTime))
            .migration(false);
        let mut config = EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &reset,
        )));
        config.cid_generator(move || Box::new(SeededCids(ChaCha20Rng::from_seed(cids))));
        config.rng_seed(Some(seed));
        let ep = Endpoint::new(Arc::new(config), Some(Arc::new(server)), false, Some(seed));
        Ok(QuicCore {
            ep,
            provider,
            cert,
            transport,
            conns: BTreeMap::new(),
            retransmitted_closed: 0,
            by_addr: BTreeMap::new(),
            dialing: BTreeMap::new(),
            rng: Some(rng),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            rr: 0,
            deadline: None,
            scratch: Vec::with_capacity(2048),
        })
    }

    fn add(&mut self, ch: ConnectionHandle, conn: quinn_proto::Connection, proved: Option<Proved>) {
        let addr = conn.remote_address();
        let initiator = proved.is_some();
        self.conns.insert(
            ch.0,
            Conn {
                conn,
                addr,
                initiator,
                proved,
                peer: None,
                current: false,
                send: BTreeMap::new(),
                backlog: VecDeque::new(),
                front_written: 0,
                recv: BTreeMap::new(),
                ready: VecDeque::new(),
                deadline: None,
            },
        );
    }

    /// Runs a connection's pending work: endpoint events, connection events
    /// (handshake, streams, loss), writes of its backlog; refreshes its
    /// deadline; forgets it once drained.
    fn drive(&mut self, now: Time, h: usize) {
        let Some(c) = self.conns.get_mut(&h) else {
            return;
        };
        let ch = ConnectionHandle(h);
        while let Some(ev) = c.conn.poll_endpoint_events() {
            if let Some(back) = self.ep.handle_event(ch, ev) {
                c.conn.handle_event(back);
            }
        }
        let mut connected = false;
        let mut lost = false;
        while let Some(ev) = c.conn.poll() {
            match ev {
                Event::Connected => connected = true,
                Event::ConnectionLost { .. } => lost = true,
                Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                    while let Some(id) = c.conn.streams().accept(Dir::Uni) {
                        c.recv.insert(id, RecvState::default());
                        read_stream(c, id);
                    }
                }
                Event::Stream(StreamEvent::Readable { id }) => read_stream(c, id),
                _ => {}
            }
        }
        pump(c);
        if connected {
            self.on_connected(now, h);
        }
        if lost {
            self.on_lost(h);
        }
        if let Some(c) = self.conns.get_mut(&h) {
            // Stream work may have produced endpoint events (new ids).
            while let Some(ev) = c.conn.poll_endpoint_events() {
                if let Some(back) = self.ep.handle_event(ch, ev) {
                    c.conn.handle_event(back);
                }
            }
            c.deadline = c.conn.poll_timeout().map(virtual_time);
            if c.conn.is_drained() {
                if let Some(c) = self.conns.remove(&h) {
                    self.retransmitted_closed += lost_cells(&c);
                }
            }
        }
    }

    fn on_connected(&mut self, now: Time, h: usize) {
        let Some(c) = self.conns.get_mut(&h) else {
            return;
        };
        let peer = match &c.proved {
            Some(p) => p.lock().ok().and_then(|g| *g),
            None => tls::peer_id(c.conn.crypto_session().peer_identity()),
        };
        let Some(peer) = peer else {
            c.conn.close(
                instant(now),
                VarInt::from_u32(CLOSE_DUPLICATE),
                Default::default(),
            );
            return;
        };
        c.peer = Some(peer);
        let (addr, initiator) = (c.addr, c.initiator);
        if self.dialing.get(&addr) == Some(&h) {
            self.dialing.remove(&addr);
        }
        // Keyed by who dialled: an older connection dialled by the same end
        // is one that end gave up (it restarted), so this one replaces it
        // (`transport::replaces`); one dialled by the other end stays.
        let old = self
            .by_addr
            .get(&(addr, initiator))
            .copied()
            .filter(|o| *o != h);
        if let Some(o) = old.and_then(|o| self.conns.get_mut(&o)) {
            o.conn.close(
                instant(now),
                VarInt::from_u32(CLOSE_DUPLICATE),
                Default::default(),
            );
        }
        self.by_addr.insert((addr, initiator), h);
        if let Some(c) = self.conns.get_mut(&h) {
            c.current = true;
        }
        self.events.push_back(CoreEvent::Connected {
            conn: ConnKey(h as u64),
            addr,
            peer,
            initiator,
        });
    }

    fn on_lost(&mut self, h: usize) {
        let Some(c) = self.conns.get_mut(&h) else {
            return;
        };
        let (addr, initiator) = (c.addr, c.initiator);
        if c.current {
            c.current = false;
            if self.by_addr.get(&(addr, initiator)) == Some(&h) {
                self.by_addr.remove(&(addr, initiator));
            }
            self.events.push_back(CoreEvent::Closed {
                conn: ConnKey(h as u64),
                addr,
            });
        } else if self.dialing.get(&addr) == Some(&h) {
            self.dialing.remove(&addr);
            self.events.push_back(CoreEvent::ConnectFailed { addr });
        }
    }

    fn refresh_deadline(&mut self) {
        self.deadline = self.conns.values().filter_map(|c| c.deadline).min();
    }

    fn current(&mut self, conn: ConnKey) -> Option<&mut Conn> {
        let h = usize::try_from(conn.0).ok()?;
        self.conns.get_mut(&h).filter(|c| c.current)
    }
}

/// Reads what a stream has: cells into the connection's ready queue. A
/// stream that breaks the framing is stopped (its cells so far stand).
fn read_stream(c: &mut Conn, id: StreamId) {
    let Some(st) = c.recv.get_mut(&id) else {
        return;
    };
    let mut finished = false;
    let mut bad = false;
    let mut destroyed = Vec::new();
    {
        let mut rs = c.conn.recv_stream(id);
        let Ok(mut chunks) = rs.read(true) else {
            c.recv.remove(&id);
            return;
        };
        loop {
            match chunks.next(usize::MAX) {
                Ok(Some(chunk)) => {
                    let mut data = &chunk.bytes[..];
                    if st.kind.is_none() {
                        let Some((&k, rest)) = data.split_first() else {
                            continue;
                        };
                        st.kind = Some(k);
                        data = rest;
                        if k != KIND_CELLS {
                            bad = true;
                            break;
                        }
                    }
                    while !data.is_empty() {
                        let take = (CELL_LEN - st.partial.len()).min(data.len());
                        st.partial.extend_from_slice(&data[..take]);
                        data = &data[take..];
                        if st.partial.len() == CELL_LEN {
                            match Cell::from_slice(&st.partial) {
                                Ok(cell) => {
                                    if cell.raw_command() == CellCommand::Destroy as u8 {
                                        destroyed.push(cell.raw_circ_id());
                                    }
                                    c.ready.push_back(cell);
                                }
                                Err(_) => bad = true,
                            }
                            st.partial.clear();
                        }
                    }
                }
                Ok(None) => {
                    finished = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let _ = chunks.finalize();
    }
    if bad {
        let _ = c.conn.recv_stream(id).stop(VarInt::from_u32(1));
        finished = true;
    }
    if finished {
        c.recv.remove(&id);
    }
    // The peer destroyed these circuits: finish our streams for them (as
    // the real link does), giving back their slots in the peer's limit.
    for circ in destroyed {
        if let Some(s) = c.send.remove(&circ) {
            let _ = c.conn.send_stream(s).finish();
        }
    }
}

/// Writes the backlog into streams, in order, as far as flow control and
/// the send window allow.
fn pump(c: &mut Conn) {
    if c.conn.is_handshaking() || c.conn.is_closed() {
        return;
    }
    while let Some(cell) = c.backlog.front() {
        let circ = cell.raw_circ_id();
        let sid = match c.send.get(&circ) {
            Some(s) => *s,
            None => {
                let Some(s) = c.conn.streams().open(Dir::Uni) else {
                    return; // at the peer's stream limit: wait
                };
                if c.conn.send_stream(s).write(&[KIND_CELLS]) != Ok(1) {
                    return;
                }
                c.send.insert(circ, s);
                s
            }
        };
        let bytes = cell.as_bytes();
        let Some(rest) = bytes.get(c.front_written..) else {
            return;
        };
        match c.conn.send_stream(sid).write(rest) {
            Ok(n) => {
                c.front_written += n;
                if c.front_written < CELL_LEN {
                    return;
                }
            }
            Err(quinn_proto::WriteError::Blocked) => return,
            Err(_) => {
                // Stopped by the peer or gone: its cells are lost, as they
                // would be on the real link.
                c.send.remove(&circ);
                c.front_written = 0;
                c.backlog.pop_front();
                continue;
            }
        }
        c.front_written = 0;
        let destroy = cell.raw_command() == CellCommand::Destroy as u8;
        c.backlog.pop_front();
        if destroy {
            if let Some(s) = c.send.remove(&circ) {
                let _ = c.conn.send_stream(s).finish();
            }
        }
    }
}

impl LinkCore for QuicCore {
    fn kind(&self) -> &'static str {
        "quic"
    }

    fn connect(&mut self, now: Time, addr: SocketAddr, expected: NodeId) -> bool {
        if self.dialing.contains_key(&addr) {
            return true;
        }
        let Ok((tls, proved)) = tls::client_config(&self.provider, &self.cert, expected) else {
            return false;
        };
        let Ok(tls) = QuicClientConfig::try_from(tls) else {
            return false;
        };
        let mut config = ClientConfig::new(Arc::new(tls));
        config.transport_config(self.transport.clone());
        let mut slot = self.rng.take();
        let res = {
            let _lease = RngLease::new(&mut slot);
            self.ep.connect(instant(now), config, addr, "relay")
        };
        self.rng = slot;
        let Ok((ch, conn)) = res else {
            return false;
        };
        self.add(ch, conn, Some(proved));
        self.dialing.insert(addr, ch.0);
        self.drive(now, ch.0);
        self.refresh_deadline();
        true
    }

    fn handle_datagram(&mut self, now: Time, from: SocketAddr, data: &mut [u8]) {
        let mut slot = self.rng.take();
        let lease = RngLease::new(&mut slot);
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let ev = self.ep.handle(
            instant(now),
            from,
            None,
            None,
            BytesMut::from(&data[..]),
            &mut buf,
        );
        let touched = match ev {
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some(c) = self.conns.get_mut(&ch.0) {
                    c.conn.handle_event(ev);
                }
                Some(ch.0)
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                buf.clear();
                match self.ep.accept(incoming, instant(now), &mut buf, None) {
                    Ok((ch, conn)) => {
                        self.add(ch, conn, None);
                        Some(ch.0)
                    }
                    Err(e) => {
                        if let Some(t) = e.response {
                            self.outbox.push_back((
                                t.destination,
                                buf.get(..t.size).unwrap_or(&[]).to_vec(),
                            ));
                        }
                        None
                    }
                }
            }
            Some(DatagramEvent::Response(t)) => {
                self.outbox
                    .push_back((t.destination, buf.get(..t.size).unwrap_or(&[]).to_vec()));
                None
            }
            None => None,
        };
        self.scratch = buf;
        if let Some(h) = touched {
            self.drive(now, h);
        }
        drop(lease);
        self.rng = slot;
        self.refresh_deadline();
    }

    fn poll_transmit(&mut self, now: Time, out: &mut Vec<u8>) -> Option<SocketAddr> {
        if let Some((to, dg)) = self.outbox.pop_front() {
            out.clear();
            out.extend_from_slice(&dg);
            return Some(to);
        }
        let keys: Vec<usize> = self.conns.keys().copied().collect();
        let n = keys.len();
        let mut slot = self.rng.take();
        let lease = RngLease::new(&mut slot);
        let mut found = None;
        for i in 0..n {
            let h = keys[(self.rr + i) % n];
            let Some(c) = self.conns.get_mut(&h) else {
                continue;
            };
            // Acknowledgements may have opened the window since the last
            // write: top the streams up before asking for a datagram.
            pump(c);
            out.clear();
            if let Some(t) = c.conn.poll_transmit(instant(now), 1, out) {
                out.truncate(t.size);
                self.rr = (self.rr + i + 1) % n;
                found = Some((h, t.destination));
                break;
            }
        }
        match found {
            Some((h, _)) => self.drive(now, h),
            // Nothing to send: refresh every deadline (pacing, loss timers).
            None => {
                for h in keys {
                    self.drive(now, h);
                }
            }
        }
        drop(lease);
        self.rng = slot;
        self.refresh_deadline();
        found.map(|(_, to)| to)
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.deadline
    }

    fn handle_timeout(&mut self, now: Time) {
        let due: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(h, _)| *h)
            .collect();
        let mut slot = self.rng.take();
        let lease = RngLease::new(&mut slot);
        for h in due {
            if let Some(c) = self.conns.get_mut(&h) {
                c.conn.handle_timeout(instant(now));
            }
            self.drive(now, h);
        }
        drop(lease);
        self.rng = slot;
        self.refresh_deadline();
    }

    fn poll_event(&mut self) -> Option<CoreEvent> {
        self.events.pop_front()
    }

    fn queued_cells(&mut self, conn: ConnKey) -> Option<usize> {
        self.current(conn).map(|c| c.backlog.len())
    }

    fn queue_cell(&mut self, conn: ConnKey, cell: Cell) -> Result<(), Cell> {
        let Some(c) = self.current(conn) else {
            return Err(cell);
        };
        c.backlog.push_back(cell);
        // Write at once: the host polls for datagrams right after queueing.
        pump(c);
        Ok(())
    }

    fn pop_ready(&mut self, conn: ConnKey) -> Option<Cell> {
        self.current(conn)?.ready.pop_front()
    }

    fn retransmitted_total(&self) -> u64 {
        self.retransmitted_closed + self.conns.values().map(lost_cells).sum::<u64>()
    }

    fn datagram_circuits(&mut self, _to: &SocketAddr, _datagram: &[u8], _out: &mut Vec<u32>) {
        // Packet contents are quinn-proto's choice and are encrypted: the
        // probe cannot attribute a lost QUIC packet to circuits.
    }
}
