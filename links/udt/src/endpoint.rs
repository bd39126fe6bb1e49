//! The sans-IO udt endpoint: one UDP socket's worth of connections, keyed by
//! peer address, plus their handshakes.
//!
//! Handshake: `HS_INIT` (Noise message 1, optionally with a cookie),
//! `HS_RESP` (message 2, with the responder's certified identity), `HS_FIN`
//! (message 3). Both sides resend their last message until the next one
//! arrives. When more than `max_half_open` handshakes are pending, an
//! `HS_INIT` without a valid cookie gets only a stateless `COOKIE` answer
//! (an HMAC of the sender's address and the current 10-second epoch), so a
//! flood of spoofed handshakes costs the responder no state and no
//! Diffie-Hellman (WireGuard's defence).

use std::collections::VecDeque;
use std::net::SocketAddr;

use relay_kernel::{NodeId, Time};
use relay_link::{Initiator, LinkError, Responder, StaticKey};
use ring::hmac;

use crate::conn::{Conn, ConnConfig, Ended};
use crate::packet::*;

/// Endpoint tunables.
#[derive(Clone, Copy, Debug)]
pub struct EndpointConfig {
    /// Per-connection settings.
    pub conn: ConnConfig,
    /// Give up a handshake after this long (ns).
    pub handshake_timeout: u64,
    /// Resend handshake messages this often (ns).
    pub handshake_retry: u64,
    /// Require cookies beyond this many pending handshakes.
    pub max_half_open: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            conn: ConnConfig::default(),
            handshake_timeout: 10_000_000_000,
            handshake_retry: 300_000_000,
            max_half_open: 64,
        }
    }
}

/// What the endpoint reports.
#[derive(Debug)]
pub enum EndpointEvent {
    /// A connection is established.
    Connected {
        /// Peer address.
        addr: SocketAddr,
        /// Authenticated peer.
        peer: NodeId,
        /// Whether we dialled.
        initiator: bool,
    },
    /// A dial failed.
    ConnectFailed {
        /// Peer address.
        addr: SocketAddr,
        /// Why.
        error: LinkError,
    },
    /// A connection ended.
    Closed {
        /// Peer address.
        addr: SocketAddr,
        /// How.
        reason: Ended,
    },
}

enum Pending {
    Dialing {
        init: Initiator,
        msg1: Vec<u8>,
        cookie: Vec<u8>,
        started: Time,
        last_sent: Time,
    },
    Answering {
        resp: Responder,
        msg2: Vec<u8>,
        started: Time,
    },
}

/// The endpoint.
///
/// Connections live in `slots`, in the order they were established (the
/// round-robin order of `poll_transmit`); `conns` maps addresses to slot
/// positions and is iterated (in its hash order) by `handle_timeout`.
/// Per slot, dense arrays cache what the hot paths need so that they do
/// not visit every connection:
///
/// - `hint`: a time before which the connection's `poll_transmit` returns
///   false (`Conn::transmit_hint`), 0 when it must be asked;
/// - `deadline`: the connection's `timeout()`, `u64::MAX` while the
///   connection is *touched* (handed out mutably or fed an input since the
///   cache was filled; listed in `touched`);
/// - `check`: whether `handle_timeout` must look at it even when no timer
///   is due (it ended, its close completed, or it echoes its handshake).
///
/// The caches only skip work whose result is known; the order in which
/// connections are served and everything they do is as if every
/// connection were asked every time (debug builds check this).
pub struct Endpoint {
    key: StaticKey,
    config: EndpointConfig,
    pending: crate::FastMap<SocketAddr, Pending>,
    conns: crate::FastMap<SocketAddr, usize>,
    slots: Vec<Conn>,
    order: Vec<SocketAddr>,
    hint: Vec<u64>,
    deadline: Vec<u64>,
    check: Vec<bool>,
    touched: Vec<usize>,
    /// Ask every connection every time (the behaviour before the caches;
    /// tests compare the two).
    naive: bool,
    rr: usize,
    events: VecDeque<EndpointEvent>,
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    cookie_key: hmac::Key,
    seed: u64,
    /// Datagrams dropped as malformed or unauthenticated.
    pub dropped: u64,
}

const COOKIE_LEN: usize = 16;
const COOKIE_EPOCH: u64 = 10_000_000_000;

impl Endpoint {
    /// An endpoint with this node's static key; `secret` seeds cookies and
    /// hash tables (from the caller's RNG).
    pub fn new(key: StaticKey, config: EndpointConfig, secret: [u8; 32]) -> Endpoint {
        let seed = u64::from_le_bytes([
            secret[0], secret[1], secret[2], secret[3], secret[4], secret[5], secret[6], secret[7],
        ]);
        Endpoint {
            key,
            config,
            pending: crate::fast_map(seed),
            conns: crate::fast_map(seed ^ 1),
            slots: Vec::new(),
            order: Vec::new(),
            hint: Vec::new(),
            deadline: Vec::new(),
            check: Vec::new(),
            touched: Vec::new(),
            naive: false,
            rr: 0,
            events: VecDeque::new(),
            outbox: VecDeque::new(),
            cookie_key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            seed,
            dropped: 0,
        }
    }

    /// Dials `addr`, expecting node `expected`.
    pub fn connect(
        &mut self,
        now: Time,
        addr: SocketAddr,
        expected: NodeId,
    ) -> Result<(), LinkError> {
        // One connection per address pair (packets carry no connection id).
        if let Some(c) = self.conn_ref(&addr) {
            return Err(if c.peer == expected {
                LinkError::Handshake("already connected to that address")
            } else {
                LinkError::WrongPeer {
                    expected,
                    got: c.peer,
                }
            });
        }
        if self.pending.contains_key(&addr) {
            return Err(LinkError::Handshake("already connecting to that address"));
        }
        let (init, msg1) = Initiator::start(&self.key, expected)?;
        let dg = init_datagram(&[], &msg1);
        self.outbox.push_back((addr, dg));
        self.pending.insert(
            addr,
            Pending::Dialing {
                init,
                msg1,
                cookie: Vec::new(),
                started: now,
                last_sent: now,
            },
        );
        Ok(())
    }

    fn cookie_for(&self, now: Time, addr: &SocketAddr, epoch_back: u64) -> [u8; COOKIE_LEN] {
        let epoch = (now.nanos() / COOKIE_EPOCH).saturating_sub(epoch_back);
        let tag = hmac::sign(&self.cookie_key, format!("{addr}/{epoch}").as_bytes());
        let mut c = [0u8; COOKIE_LEN];
        c.copy_from_slice(&tag.as_ref()[..COOKIE_LEN]);
        c
    }

    /// Handles one received datagram. Never fails: bad datagrams are dropped.
    pub fn handle_datagram(&mut self, now: Time, from: SocketAddr, data: &mut [u8]) {
        let Some(&ty) = data.first() else {
            self.dropped += 1;
            return;
        };
        match ty {
            DATA => match self.conns.get(&from).copied() {
                Some(pos) => {
                    self.touch(pos);
                    self.slots[pos].handle_data(now, data);
                }
                None => self.dropped += 1,
            },
            HS_INIT => self.on_init(now, from, &data[1..]),
            HS_RESP => self.on_resp(now, from, &data[1..]),
            HS_FIN => self.on_fin(now, from, &data[1..]),
            COOKIE => {
                if let Some(Pending::Dialing {
                    cookie,
                    msg1,
                    last_sent,
                    ..
                }) = self.pending.get_mut(&from)
                {
                    if data.len() == 1 + COOKIE_LEN {
                        *cookie = data[1..].to_vec();
                        *last_sent = now;
                        let dg = init_datagram(cookie, msg1);
                        self.outbox.push_back((from, dg));
                    }
                }
            }
            _ => self.dropped += 1,
        }
    }

    fn on_init(&mut self, now: Time, from: SocketAddr, body: &[u8]) {
        if self.conns.contains_key(&from) {
            return;
        }
        if let Some(Pending::Answering { msg2, .. }) = self.pending.get(&from) {
            let dg = [&[HS_RESP][..], msg2].concat();
            self.outbox.push_back((from, dg));
            return;
        }
        let Some((&clen, rest)) = body.split_first() else {
            self.dropped += 1;
            return;
        };
        let clen = usize::from(clen);
        if rest.len() < clen {
            self.dropped += 1;
            return;
        }
        let (cookie, msg1) = rest.split_at(clen);
        if self.pending.len() >= self.config.max_half_open {
            let valid = (0..2).any(|back| cookie == self.cookie_for(now, &from, back));
            if !valid {
                let mut dg = vec![COOKIE];
                dg.extend_from_slice(&self.cookie_for(now, &from, 0));
                self.outbox.push_back((from, dg));
                return;
            }
        }
        match Responder::respond(&self.key, msg1) {
            Ok((resp, msg2)) => {
                let dg = [&[HS_RESP][..], &msg2].concat();
                self.outbox.push_back((from, dg));
                self.pending.insert(
                    from,
                    Pending::Answering {
                        resp,
                        msg2,
                        started: now,
                    },
                );
            }
            Err(_) => self.dropped += 1,
        }
    }

    fn on_resp(&mut self, now: Time, from: SocketAddr, msg2: &[u8]) {
        if let Some(c) = self.conn_ref(&from) {
            // Our message 3 was lost: send it again.
            if let Some(fin) = &c.handshake_echo {
                self.outbox.push_back((from, fin.clone()));
            }
            return;
        }
        if !matches!(self.pending.get(&from), Some(Pending::Dialing { .. })) {
            self.dropped += 1;
            return;
        }
        let Some(Pending::Dialing { init, started, .. }) = self.pending.remove(&from) else {
            return;
        };
        match init.finish(msg2) {
            Ok((msg3, session)) => {
                let fin = [&[HS_FIN][..], &msg3].concat();
                self.outbox.push_back((from, fin.clone()));
                let mut conn = Conn::new(
                    session,
                    true,
                    self.config.conn,
                    now,
                    self.seed ^ now.nanos(),
                );
                conn.rtt.sample(now.since(started));
                conn.handshake_echo = Some(fin);
                self.add_conn(from, conn);
            }
            Err(error) => self
                .events
                .push_back(EndpointEvent::ConnectFailed { addr: from, error }),
        }
    }

    fn on_fin(&mut self, now: Time, from: SocketAddr, msg3: &[u8]) {
        if !matches!(self.pending.get(&from), Some(Pending::Answering { .. })) {
            self.dropped += 1;
            return;
        }
        let Some(Pending::Answering { resp, started, .. }) = self.pending.remove(&from) else {
            return;
        };
        match resp.finish(msg3) {
            Ok(session) => {
                let mut conn = Conn::new(
                    session,
                    false,
                    self.config.conn,
                    now,
                    self.seed ^ now.nanos(),
                );
                conn.rtt.sample(now.since(started));
                self.add_conn(from, conn);
            }
            Err(_) => self.dropped += 1,
        }
    }

    fn add_conn(&mut self, addr: SocketAddr, conn: Conn) {
        self.events.push_back(EndpointEvent::Connected {
            addr,
            peer: conn.peer,
            initiator: conn.initiator,
        });
        let pos = self.slots.len();
        self.conns.insert(addr, pos);
        self.slots.push(conn);
        self.order.push(addr);
        self.hint.push(0);
        self.deadline.push(0);
        self.check.push(false);
        self.touch(pos);
    }

    /// Marks the connection at `pos` as possibly changed: its caches are
    /// refilled by the next `settle`.
    fn touch(&mut self, pos: usize) {
        self.hint[pos] = 0;
        if self.deadline[pos] != u64::MAX {
            self.deadline[pos] = u64::MAX;
            self.touched.push(pos);
        }
    }

    /// Refills the caches of touched connections.
    fn settle(&mut self) {
        for pos in self.touched.drain(..) {
            let c = &self.slots[pos];
            self.deadline[pos] = c.timeout().nanos();
            self.check[pos] = c.ended().is_some() || c.close_done() || c.needs_handshake_echo();
        }
    }

    /// The connection to `addr`.
    pub fn conn(&mut self, addr: &SocketAddr) -> Option<&mut Conn> {
        let pos = *self.conns.get(addr)?;
        self.touch(pos);
        self.slots.get_mut(pos)
    }

    /// The connection to `addr`, read only (leaves the endpoint's caches
    /// valid, unlike [`Endpoint::conn`]).
    pub fn conn_ref(&self, addr: &SocketAddr) -> Option<&Conn> {
        self.conns.get(addr).and_then(|&pos| self.slots.get(pos))
    }

    /// Addresses of established connections.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.order
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.events.pop_front()
    }

    /// The next datagram to send, written into `out`; returns its
    /// destination. Connections take turns.
    pub fn poll_transmit(&mut self, now: Time, out: &mut Vec<u8>) -> Option<SocketAddr> {
        if let Some((addr, dg)) = self.outbox.pop_front() {
            out.clear();
            out.extend_from_slice(&dg);
            return Some(addr);
        }
        let n = self.slots.len();
        let t = now.nanos();
        // Round robin from `rr`: the first connection with something to
        // send. Those whose hint lies ahead would say no (debug builds ask
        // them anyway and check).
        for pos in (self.rr..n).chain(0..self.rr.min(n)) {
            if self.hint[pos] > t && !self.naive {
                #[cfg(debug_assertions)]
                self.check_skipped(pos, now);
                continue;
            }
            let c = &mut self.slots[pos];
            if c.poll_transmit(now, out) {
                self.touch(pos);
                self.rr = (pos + 1) % n;
                return Some(self.order[pos]);
            }
            self.hint[pos] = c.transmit_hint().nanos().max(1);
        }
        self.settle();
        None
    }

    #[cfg(debug_assertions)]
    fn check_skipped(&mut self, pos: usize, now: Time) {
        let mut scratch = Vec::new();
        assert!(
            !self.slots[pos].poll_transmit(now, &mut scratch),
            "udt endpoint: a skipped connection had something to send"
        );
    }

    /// When `handle_timeout` should next run.
    pub fn poll_timeout(&self) -> Option<Time> {
        let cached = self.deadline.iter().copied().min().map(Time);
        let touched = self.touched.iter().map(|&pos| self.slots[pos].timeout());
        let pending = self.pending.values().map(|p| match p {
            Pending::Dialing { last_sent, .. } => last_sent.plus_nanos(self.config.handshake_retry),
            Pending::Answering { started, .. } => started.plus_nanos(self.config.handshake_timeout),
        });
        let t = cached.into_iter().chain(touched).chain(pending).min();
        #[cfg(debug_assertions)]
        {
            let all = self.slots.iter().map(|c| c.timeout());
            let pending = self.pending.values().map(|p| match p {
                Pending::Dialing { last_sent, .. } => {
                    last_sent.plus_nanos(self.config.handshake_retry)
                }
                Pending::Answering { started, .. } => {
                    started.plus_nanos(self.config.handshake_timeout)
                }
            });
            assert_eq!(
                t,
                all.chain(pending).min(),
                "udt endpoint: stale timer cache"
            );
        }
        t
    }

    /// Runs timers: handshake resends and expiry, connection timers, ends.
    pub fn handle_timeout(&mut self, now: Time) {
        let retry = self.config.handshake_retry;
        let limit = self.config.handshake_timeout;
        let mut failed = Vec::new();
        for (addr, p) in self.pending.iter_mut() {
            match p {
                Pending::Dialing {
                    msg1,
                    cookie,
                    started,
                    last_sent,
                    ..
                } => {
                    if now.since(*started) >= limit {
                        failed.push((*addr, true));
                    } else if now.since(*last_sent) >= retry {
                        *last_sent = now;
                        self.outbox.push_back((*addr, init_datagram(cookie, msg1)));
                    }
                }
                Pending::Answering { started, .. } => {
                    if now.since(*started) >= limit {
                        failed.push((*addr, false));
                    }
                }
            }
        }
        for (addr, dialing) in failed {
            self.pending.remove(&addr);
            if dialing {
                self.events.push_back(EndpointEvent::ConnectFailed {
                    addr,
                    error: LinkError::HandshakeTimeout,
                });
            }
        }
        self.settle();
        let t = now.nanos();
        let mut ended = Vec::new();
        // In the map's order, as before the caches; a connection whose
        // timer is not due and that has nothing to report is left alone
        // (its handle_timeout would do nothing).
        for (addr, &pos) in self.conns.iter() {
            let due = self.deadline[pos] <= t || self.naive;
            if !due && !self.check[pos] {
                continue;
            }
            let c = &mut self.slots[pos];
            if due {
                c.handle_timeout(now);
                self.hint[pos] = 0;
                if self.deadline[pos] != u64::MAX {
                    self.deadline[pos] = u64::MAX;
                    self.touched.push(pos);
                }
            }
            if c.needs_handshake_echo() && now.since(c.rtt_anchor()) >= retry {
                if let Some(fin) = &c.handshake_echo {
                    self.outbox.push_back((*addr, fin.clone()));
                }
                c.touch_echo(now);
            }
            if let Some(e) = c.ended() {
                if *e != Ended::Peer || c.ready_len() == 0 {
                    ended.push((*addr, e.clone()));
                }
            } else if c.close_done() {
                ended.push((*addr, Ended::Local));
            }
        }
        for (addr, reason) in ended {
            self.remove(addr, reason);
        }
    }

    /// Forgets a connection and reports it.
    pub fn remove(&mut self, addr: SocketAddr, reason: Ended) {
        self.settle();
        if let Some(pos) = self.conns.remove(&addr) {
            self.slots.remove(pos);
            self.order.remove(pos);
            self.hint.remove(pos);
            self.deadline.remove(pos);
            self.check.remove(pos);
            for p in self.conns.values_mut() {
                if *p > pos {
                    *p -= 1;
                }
            }
            self.rr = 0;
            self.events
                .push_back(EndpointEvent::Closed { addr, reason });
        }
    }

    /// Number of handshakes in progress.
    pub fn half_open(&self) -> usize {
        self.pending.len()
    }
}

fn init_datagram(cookie: &[u8], msg1: &[u8]) -> Vec<u8> {
    let mut dg = vec![HS_INIT, cookie.len() as u8];
    dg.extend_from_slice(cookie);
    dg.extend_from_slice(msg1);
    dg
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::collections::BTreeMap;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use relay_kernel::{Cell, CellCommand};
    use relay_link::Identity;

    use super::*;

    /// What the hub sent: (time, destination, length, packet type).
    type Transcript = Vec<(u64, SocketAddr, usize, u8)>;

    /// A hub with eight spokes over lossy paths of different latencies;
    /// the hub queues bursts of cells to random spokes at random times,
    /// the spokes read and answer. Returns the hub's transmissions.
    fn hub_run(naive: bool, seed: u64) -> Transcript {
        const SPOKES: usize = 8;
        let key = |b: u8| StaticKey::new(&Identity::from_secret([b; 32])).unwrap();
        let addr = |i: usize| -> SocketAddr { format!("10.0.0.{}:1", i + 1).parse().unwrap() };
        let config = EndpointConfig::default();
        // Endpoint 0 is the hub.
        let mut eps: Vec<Endpoint> = (0..=SPOKES)
            .map(|i| Endpoint::new(key(i as u8 + 1), config, [i as u8 + 1; 32]))
            .collect();
        eps[0].naive = naive;
        let hub_id = Identity::from_secret([1; 32]).node_id();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut now = Time(1);
        for ep in eps.iter_mut().skip(1) {
            ep.connect(now, addr(0), hub_id).unwrap();
        }
        let mut flight: BTreeMap<(u64, u64), (usize, usize, Vec<u8>)> = BTreeMap::new();
        let mut seq = 0u64;
        let mut transcript = Transcript::new();
        let mut next_app = 5_000_000u64;
        let mut buf = Vec::new();
        while now.nanos() < 4_000_000_000 {
            for (i, ep) in eps.iter_mut().enumerate() {
                while let Some(to) = ep.poll_transmit(now, &mut buf) {
                    let j = (0..=SPOKES).find(|&j| addr(j) == to).unwrap();
                    if i == 0 {
                        transcript.push((now.nanos(), to, buf.len(), buf[0]));
                    }
                    if rng.gen_bool(0.03) {
                        continue;
                    }
                    let spoke = i.max(j);
                    let latency = 2_000_000 + spoke as u64 * 1_500_000 + rng.gen_range(0..200_000);
                    seq += 1;
                    flight.insert((now.nanos() + latency, seq), (i, j, buf.clone()));
                }
            }
            let next = eps
                .iter()
                .filter_map(|e| e.poll_timeout())
                .map(|t| t.nanos())
                .chain(flight.keys().next().map(|k| k.0))
                .chain([next_app])
                .min()
                .unwrap();
            now = Time(next.max(now.nanos() + 1));
            while let Some(entry) = flight.first_entry() {
                if entry.key().0 > now.nanos() {
                    break;
                }
                let (from, to, mut data) = entry.remove();
                eps[to].handle_datagram(now, addr(from), &mut data);
            }
            for ep in eps.iter_mut() {
                if ep.poll_timeout().is_some_and(|t| t <= now) {
                    ep.handle_timeout(now);
                }
                while ep.poll_event().is_some() {}
            }
            if now.nanos() >= next_app {
                next_app = now.nanos() + rng.gen_range(100_000..6_000_000);
                let spoke = rng.gen_range(1..=SPOKES);
                let cells = rng.gen_range(1..60);
                if let Some(c) = eps[0].conn(&addr(spoke)) {
                    for k in 0..cells {
                        c.queue_cell(Cell::new(1 + k % 3, CellCommand::Relay));
                    }
                }
                // Now and then a spoke answers.
                let other = rng.gen_range(1..=SPOKES);
                if let Some(c) = eps[other].conn(&addr(0)) {
                    c.queue_cell(Cell::new(7, CellCommand::Relay));
                }
            }
            for ep in eps.iter_mut().skip(1) {
                if let Some(c) = ep.conn(&addr(0)) {
                    while c.pop_ready().is_some() {}
                }
            }
            // The hub reads only now and then (reading touches every
            // connection, which resets the caches).
            if rng.gen_bool(0.01) {
                for j in 1..=SPOKES {
                    if let Some(c) = eps[0].conn(&addr(j)) {
                        while c.pop_ready().is_some() {}
                    }
                }
            }
        }
        transcript
    }

    #[test]
    fn caches_give_the_same_transmissions_as_asking_everyone() {
        for seed in 1..=3 {
            let cached = hub_run(false, seed);
            let naive = hub_run(true, seed);
            assert!(cached.len() > 1000, "too little traffic: {}", cached.len());
            assert_eq!(cached, naive, "seed {seed}");
        }
    }
}
