//! The `tcp-model` link kind: a TCP model written for netsim, what matters
//! for the head-of-line comparison without a full TCP stack (the `tcp`
//! kind, in `tcp.rs`, runs smoltcp's real one).
//!
//! This is a model, not a real TCP stack: one byte stream per host pair
//! carrying 514-byte cells back to back, MSS-sized segments, cumulative
//! ACKs without SACK, fast retransmit on three duplicate ACKs with NewReno
//! recovery, a retransmission timeout (RFC 6298, 200 ms floor, exponential
//! backoff, go-back-N after a timeout), slow start and Reno congestion
//! avoidance, delayed ACKs (every second segment or 1 ms), no pacing.
//! Delivery to the node is strictly in stream order, so one lost segment
//! holds back every circuit behind it: the cross-circuit head-of-line
//! blocking of Tor's TCP links. The connection setup is a two-message
//! exchange of node ids (no cryptography, so no AEAD cost per segment;
//! 16 bytes per segment stand in for a record tag and the header is padded
//! to a TCP header's size so wire sizes match).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use relay_kernel::{Cell, NodeId, Time, CELL_LEN};

use crate::transport::{ConnKey, CoreEvent, LinkCore};

const SYN: u8 = 1;
const SYN_ACK: u8 = 2;
const SEG: u8 = 3;
/// type, seq, ack, payload length, padding to 32 bytes (a TCP header with
/// timestamps is 32 bytes against UDP's 8 plus udt's 9).
const HEADER: usize = 32;
const TAG: usize = 16;
const MIN_RTO: u64 = 200_000_000;
const MAX_RTO: u64 = 60_000_000_000;
const ACK_DELAY: u64 = 1_000_000;
const IDLE: u64 = 15_000_000_000;
const KEEPALIVE: u64 = 4_000_000_000;
const SYN_RETRY: u64 = 1_000_000_000;
const SYN_GIVE_UP: u64 = 10_000_000_000;

struct Segment {
    data: Vec<u8>,
    sent: Time,
    retransmitted: bool,
}

struct Conn {
    /// The authenticated peer (kept for debugging).
    #[allow(dead_code)]
    peer: NodeId,
    // Sender.
    unsent: VecDeque<u8>,
    /// (stream offset, circuit id) of cells not yet acknowledged.
    cells: VecDeque<(u64, u32)>,
    next_seq: u64,
    una: u64,
    segs: BTreeMap<u64, Segment>,
    retx: BTreeSet<u64>,
    in_flight: usize,
    cwnd: f64,
    ssthresh: f64,
    dupacks: u32,
    recover: Option<u64>,
    srtt: Option<f64>,
    rttvar: f64,
    rto: u64,
    rto_at: Option<Time>,
    // Receiver.
    rcv_nxt: u64,
    ooo: BTreeMap<u64, Vec<u8>>,
    partial: Vec<u8>,
    ready: VecDeque<Cell>,
    ack_owed: u32,
    ack_at: Option<Time>,
    dup_ack_now: bool,
    // Life.
    last_recv: Time,
    last_send: Time,
    retransmitted: u64,
}

impl Conn {
    fn new(peer: NodeId, now: Time, mss: usize) -> Conn {
        Conn {
            peer,
            unsent: VecDeque::new(),
            cells: VecDeque::new(),
            next_seq: 0,
            una: 0,
            segs: BTreeMap::new(),
            retx: BTreeSet::new(),
            in_flight: 0,
            cwnd: 10.0 * mss as f64,
            ssthresh: f64::MAX,
            dupacks: 0,
            recover: None,
            srtt: None,
            rttvar: 0.0,
            rto: 1_000_000_000,
            rto_at: None,
            rcv_nxt: 0,
            ooo: BTreeMap::new(),
            partial: Vec::new(),
            ready: VecDeque::new(),
            ack_owed: 0,
            ack_at: None,
            dup_ack_now: false,
            last_recv: now,
            last_send: now,
            retransmitted: 0,
        }
    }

    fn on_ack(&mut self, now: Time, ack: u64, pure: bool, mss: usize) {
        if ack > self.una && ack <= self.next_seq {
            let acked: Vec<u64> = self.segs.range(..ack).map(|(s, _)| *s).collect();
            let mut bytes = 0usize;
            let mut sample = None;
            for s in acked {
                if let Some(seg) = self.segs.remove(&s) {
                    if !self.retx.remove(&s) {
                        self.in_flight -= seg.data.len();
                    }
                    bytes += seg.data.len();
                    if !seg.retransmitted {
                        sample = Some(now.since(seg.sent));
                    }
                }
            }
            while self
                .cells
                .front()
                .is_some_and(|(o, _)| o + CELL_LEN as u64 <= ack)
            {
                self.cells.pop_front();
            }
            self.una = ack;
            self.dupacks = 0;
            if let Some(rtt) = sample {
                let r = rtt as f64;
                match self.srtt {
                    None => {
                        self.srtt = Some(r);
                        self.rttvar = r / 2.0;
                    }
                    Some(s) => {
                        self.rttvar = 0.75 * self.rttvar + 0.25 * (s - r).abs();
                        self.srtt = Some(0.875 * s + 0.125 * r);
                    }
                }
                let s = self.srtt.unwrap_or(r);
                self.rto = ((s + 4.0 * self.rttvar) as u64).clamp(MIN_RTO, MAX_RTO);
            }
            match self.recover {
                Some(r) if ack > r => {
                    self.recover = None;
                    self.cwnd = self.ssthresh;
                }
                Some(_) => {
                    // NewReno partial ACK: the next hole is lost too.
                    self.mark_lost(self.una);
                }
                None => {
                    if self.cwnd < self.ssthresh {
                        self.cwnd += bytes as f64;
                    } else {
                        self.cwnd += (mss * mss) as f64 * (bytes as f64 / mss as f64) / self.cwnd;
                    }
                }
            }
            self.rto_at = (!self.segs.is_empty()).then(|| now.plus_nanos(self.rto));
        } else if ack == self.una && pure && !self.segs.is_empty() {
            self.dupacks += 1;
            if self.dupacks == 3 && self.recover.is_none() {
                let flight = self.in_flight as f64;
                self.ssthresh = (flight / 2.0).max(2.0 * mss as f64);
                self.cwnd = self.ssthresh + 3.0 * mss as f64;
                self.recover = Some(self.next_seq.saturating_sub(1));
                self.mark_lost(self.una);
            } else if self.dupacks > 3 {
                self.cwnd += mss as f64;
            }
        }
    }

    fn mark_lost(&mut self, seq: u64) {
        if let Some(seg) = self.segs.get(&seq) {
            if self.retx.insert(seq) {
                self.in_flight -= seg.data.len();
            }
        }
    }

    fn on_timeout(&mut self, now: Time, mss: usize) {
        if self.rto_at.is_some_and(|t| t <= now) {
            self.ssthresh = (self.in_flight as f64 / 2.0).max(2.0 * mss as f64);
            self.cwnd = mss as f64;
            self.recover = None;
            self.dupacks = 0;
            let all: Vec<u64> = self.segs.keys().copied().collect();
            for s in all {
                self.mark_lost(s);
            }
            self.rto = (self.rto * 2).min(MAX_RTO);
            self.rto_at = Some(now.plus_nanos(self.rto));
        }
    }

    fn on_data(&mut self, now: Time, seq: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if seq == self.rcv_nxt {
            self.accept(data);
            while let Some(next) = self.ooo.remove(&self.rcv_nxt) {
                self.accept(&next);
            }
            self.ack_owed += 1;
            if self.ack_owed >= 2 || !self.ooo.is_empty() {
                self.dup_ack_now = true;
            } else if self.ack_at.is_none() {
                self.ack_at = Some(now.plus_nanos(ACK_DELAY));
            }
        } else {
            if seq > self.rcv_nxt {
                self.ooo.entry(seq).or_insert_with(|| data.to_vec());
            }
            // Out of order or duplicate: acknowledge at once.
            self.dup_ack_now = true;
        }
    }

    fn accept(&mut self, data: &[u8]) {
        self.rcv_nxt += data.len() as u64;
        self.partial.extend_from_slice(data);
        let whole = self.partial.len() / CELL_LEN * CELL_LEN;
        for chunk in self.partial[..whole].chunks_exact(CELL_LEN) {
            if let Ok(c) = Cell::from_slice(chunk) {
                self.ready.push_back(c);
            }
        }
        self.partial.drain(..whole);
    }

    fn timeout(&self) -> Time {
        let mut t = self.last_recv.plus_nanos(IDLE);
        t = t.min(self.last_send.plus_nanos(KEEPALIVE));
        if let Some(a) = self.ack_at {
            t = t.min(a);
        }
        if let Some(r) = self.rto_at {
            t = t.min(r);
        }
        t
    }
}

enum Pending {
    Dialing {
        expected: NodeId,
        started: Time,
        last: Time,
    },
}

/// The TCP model endpoint of one host.
pub struct TcpCore {
    id: NodeId,
    mss: usize,
    conns: BTreeMap<SocketAddr, Conn>,
    /// Cells retransmitted by connections since forgotten.
    retransmitted_closed: u64,
    /// The address of each connection (the model keeps one per address).
    keys: BTreeMap<ConnKey, SocketAddr>,
    next_key: u64,
    order: Vec<SocketAddr>,
    rr: usize,
    pending: BTreeMap<SocketAddr, Pending>,
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<CoreEvent>,
    now: Time,
}

impl TcpCore {
    /// An endpoint for node `id` sending datagrams of at most
    /// `max_datagram` bytes (the secret is unused: the model has no
    /// cryptography).
    pub fn new(id: NodeId, max_datagram: usize, _secret: [u8; 32]) -> TcpCore {
        TcpCore {
            id,
            mss: max_datagram.saturating_sub(HEADER + TAG).max(CELL_LEN),
            conns: BTreeMap::new(),
            retransmitted_closed: 0,
            keys: BTreeMap::new(),
            next_key: 0,
            order: Vec::new(),
            rr: 0,
            pending: BTreeMap::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            now: Time(0),
        }
    }

    fn hello(&self, ty: u8) -> Vec<u8> {
        let mut v = vec![ty];
        v.extend_from_slice(self.id.as_bytes());
        v
    }

    fn add_conn(&mut self, now: Time, addr: SocketAddr, peer: NodeId, initiator: bool) {
        self.conns.insert(addr, Conn::new(peer, now, self.mss));
        self.order.push(addr);
        let conn = ConnKey(self.next_key);
        self.next_key += 1;
        if let Some(old) = self.key_of(&addr) {
            // The model keeps one connection per address: a new one ends
            // the old.
            self.keys.remove(&old);
            self.events.push_back(CoreEvent::Closed { conn: old, addr });
        }
        self.keys.insert(conn, addr);
        self.events.push_back(CoreEvent::Connected {
            conn,
            addr,
            peer,
            initiator,
        });
    }

    fn remove(&mut self, addr: SocketAddr) {
        if let Some(c) = self.conns.remove(&addr) {
            self.retransmitted_closed += c.retransmitted;
            self.order.retain(|a| *a != addr);
            self.rr = 0;
            if let Some(conn) = self.key_of(&addr) {
                self.keys.remove(&conn);
                self.events.push_back(CoreEvent::Closed { conn, addr });
            }
        }
    }

    fn key_of(&self, addr: &SocketAddr) -> Option<ConnKey> {
        self.keys.iter().find(|(_, a)| *a == addr).map(|(k, _)| *k)
    }

    fn conn(&mut self, key: ConnKey) -> Option<&mut Conn> {
        let addr = self.keys.get(&key)?;
        self.conns.get_mut(addr)
    }

    fn segment(&mut self, addr: SocketAddr, out: &mut Vec<u8>) -> bool {
        let now = self.now;
        let mss = self.mss;
        let Some(c) = self.conns.get_mut(&addr) else {
            return false;
        };
        // A lost segment first, then new data, as the window allows.
        let mut payload: Option<(u64, Vec<u8>, bool)> = None;
        if let Some(&seq) = c.retx.iter().next() {
            if c.in_flight + mss <= c.cwnd as usize || c.in_flight == 0 {
                if let Some(seg) = c.segs.get_mut(&seq) {
                    c.retx.remove(&seq);
                    c.in_flight += seg.data.len();
                    seg.sent = now;
                    seg.retransmitted = true;
                    c.retransmitted += (seg.data.len() / CELL_LEN).max(1) as u64;
                    payload = Some((seq, seg.data.clone(), true));
                }
            }
        } else if !c.unsent.is_empty() && c.in_flight + mss <= c.cwnd.max(mss as f64) as usize {
            let n = c.unsent.len().min(mss);
            let data: Vec<u8> = c.unsent.drain(..n).collect();
            let seq = c.next_seq;
            c.next_seq += n as u64;
            c.in_flight += n;
            c.segs.insert(
                seq,
                Segment {
                    data: data.clone(),
                    sent: now,
                    retransmitted: false,
                },
            );
            if c.rto_at.is_none() {
                c.rto_at = Some(now.plus_nanos(c.rto));
            }
            payload = Some((seq, data, false));
        }
        let ack_due = c.dup_ack_now || c.ack_at.is_some_and(|t| t <= now);
        let keepalive = now.since(c.last_send) >= KEEPALIVE;
        if payload.is_none() && !ack_due && !keepalive {
            return false;
        }
        out.clear();
        out.push(SEG);
        let (seq, data) = match &payload {
            Some((s, d, _)) => (*s, d.as_slice()),
            None => (c.next_seq, &[][..]),
        };
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&c.rcv_nxt.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.resize(HEADER, 0);
        out.extend_from_slice(data);
        out.resize(out.len() + TAG, 0);
        c.ack_owed = 0;
        c.ack_at = None;
        c.dup_ack_now = false;
        c.last_send = now;
        true
    }
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_be_bytes(a))
}

impl LinkCore for TcpCore {
    fn kind(&self) -> &'static str {
        "tcp-model"
    }

    fn connect(&mut self, now: Time, addr: SocketAddr, expected: NodeId) -> bool {
        if self.conns.contains_key(&addr) || self.pending.contains_key(&addr) {
            return false;
        }
        self.outbox.push_back((addr, self.hello(SYN)));
        self.pending.insert(
            addr,
            Pending::Dialing {
                expected,
                started: now,
                last: now,
            },
        );
        true
    }

    fn handle_datagram(&mut self, now: Time, from: SocketAddr, data: &mut [u8]) {
        self.now = now;
        let id = data
            .get(1..33)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(NodeId);
        match data.first() {
            Some(&SYN) => {
                let Some(peer) = id else { return };
                let known = self.conns.get(&from).map(|c| c.last_recv);
                // A SYN on a live connection after data flowed means the
                // peer restarted (TCP would answer with a reset).
                if let Some(last) = known {
                    if now.since(last) > SYN_RETRY {
                        self.remove(from);
                    }
                }
                if !self.conns.contains_key(&from) {
                    self.add_conn(now, from, peer, false);
                }
                self.outbox.push_back((from, self.hello(SYN_ACK)));
            }
            Some(&SYN_ACK) => {
                let Some(peer) = id else { return };
                if let Some(Pending::Dialing { expected, .. }) = self.pending.remove(&from) {
                    if expected == peer {
                        self.add_conn(now, from, peer, true);
                    } else {
                        self.events
                            .push_back(CoreEvent::ConnectFailed { addr: from });
                    }
                }
            }
            Some(&SEG) => {
                let mss = self.mss;
                let Some(c) = self.conns.get_mut(&from) else {
                    return;
                };
                let (Some(seq), Some(ack)) = (read_u64(data, 1), read_u64(data, 9)) else {
                    return;
                };
                let len = data
                    .get(17..21)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map_or(0, |b| u32::from_be_bytes(b) as usize);
                let Some(payload) = data.get(HEADER..HEADER + len) else {
                    return;
                };
                c.last_recv = now;
                c.on_ack(now, ack, len == 0, mss);
                c.on_data(now, seq, payload);
            }
            _ => {}
        }
    }

    fn poll_transmit(&mut self, now: Time, out: &mut Vec<u8>) -> Option<SocketAddr> {
        self.now = now;
        if let Some((addr, dg)) = self.outbox.pop_front() {
            out.clear();
            out.extend_from_slice(&dg);
            return Some(addr);
        }
        let n = self.order.len();
        for i in 0..n {
            let addr = self.order[(self.rr + i) % n];
            if self.segment(addr, out) {
                self.rr = (self.rr + i + 1) % n;
                return Some(addr);
            }
        }
        None
    }

    fn poll_timeout(&self) -> Option<Time> {
        let conns = self.conns.values().map(Conn::timeout);
        let pending = self
            .pending
            .values()
            .map(|Pending::Dialing { last, .. }| last.plus_nanos(SYN_RETRY));
        conns.chain(pending).min()
    }

    fn handle_timeout(&mut self, now: Time) {
        self.now = now;
        let mss = self.mss;
        let mut failed = Vec::new();
        for (addr, Pending::Dialing { started, last, .. }) in self.pending.iter_mut() {
            if now.since(*started) >= SYN_GIVE_UP {
                failed.push(*addr);
            } else if now.since(*last) >= SYN_RETRY {
                *last = now;
                let mut v = vec![SYN];
                v.extend_from_slice(self.id.as_bytes());
                self.outbox.push_back((*addr, v));
            }
        }
        for addr in failed {
            self.pending.remove(&addr);
            self.events.push_back(CoreEvent::ConnectFailed { addr });
        }
        let mut dead = Vec::new();
        for (addr, c) in self.conns.iter_mut() {
            if now.since(c.last_recv) >= IDLE {
                dead.push(*addr);
                continue;
            }
            c.on_timeout(now, mss);
        }
        for addr in dead {
            self.remove(addr);
        }
    }

    fn poll_event(&mut self) -> Option<CoreEvent> {
        self.events.pop_front()
    }

    fn queued_cells(&mut self, conn: ConnKey) -> Option<usize> {
        self.conn(conn).map(|c| c.unsent.len() / CELL_LEN)
    }

    fn queue_cell(&mut self, conn: ConnKey, cell: Cell) -> Result<(), Cell> {
        match self.conn(conn) {
            Some(c) => {
                let offset = c.next_seq + c.unsent.len() as u64;
                c.cells.push_back((offset, cell.raw_circ_id()));
                c.unsent.extend(cell.as_bytes());
                Ok(())
            }
            None => Err(cell),
        }
    }

    fn pop_ready(&mut self, conn: ConnKey) -> Option<Cell> {
        self.conn(conn)?.ready.pop_front()
    }

    fn retransmitted_total(&self) -> u64 {
        self.retransmitted_closed + self.conns.values().map(|c| c.retransmitted).sum::<u64>()
    }

    fn datagram_circuits(&mut self, to: &SocketAddr, datagram: &[u8], out: &mut Vec<u32>) {
        let (Some(c), Some(seq)) = (self.conns.get(to), read_u64(datagram, 1)) else {
            return;
        };
        let len = datagram.len().saturating_sub(HEADER + TAG) as u64;
        if datagram.first() != Some(&SEG) || len == 0 {
            return;
        }
        for (offset, circ) in &c.cells {
            if *offset + CELL_LEN as u64 > seq && *offset < seq + len && !out.contains(circ) {
                out.push(*circ);
            }
        }
    }
}
