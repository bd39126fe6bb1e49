//! The sans-IO udt endpoint: one UDP socket's worth of connections, keyed
//! by connection id, plus their handshakes.
//!
//! Handshake: `HS_INIT` (Noise message 1, optionally with a cookie),
//! `HS_RESP` (message 2, with the responder's certified identity), `HS_FIN`
//! (message 3). Both sides resend their last message until the next one
//! arrives. When more than `max_half_open` handshakes are pending, an
//! `HS_INIT` without a valid cookie gets only a stateless `COOKIE` answer
//! (an HMAC of the sender's address and the current 10-second epoch), so a
//! flood of spoofed handshakes costs the responder no state and no
//! Diffie-Hellman (WireGuard's defence).
//!
//! Connection ids: each side picks a random 64-bit id for every
//! connection, the one its peer puts at the front of every datagram it
//! sends on it (QUIC's destination connection id). The initiator's id
//! travels in `HS_INIT` and comes back in `HS_RESP` and `COOKIE`; the
//! responder's in `HS_RESP`, `HS_FIN` and every `DATA`. So several
//! connections can share one address pair, and a handshake from an
//! address that already has a connection is a new connection, not a
//! duplicate. Each endpoint also sends a random *instance* number in its
//! handshake message, the same for all of its connections: when a
//! handshake completes with an instance that differs from that of the
//! connections already open to that address, the peer process there has
//! restarted, and those connections are closed at once
//! ([`Ended::Replaced`]) instead of idling out. Only a completed,
//! authenticated handshake closes anything: an off-path attacker cannot
//! complete one from someone else's address.

use std::collections::VecDeque;
use std::net::SocketAddr;

use relay_kernel::{CellBlocks, NodeId, Time};
use relay_link::{Initiator, LinkError, Responder, StaticKey};
use ring::hmac;

use crate::conn::{Conn, ConnConfig, Ended};
use crate::min_tree::MinTree;
use crate::packet::*;

/// Names a connection of an endpoint: the id the peer puts in every
/// datagram it sends on it (chosen by us, unique among our connections and
/// dials, never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

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
        /// The connection (for a dial: the id `connect` returned).
        id: ConnId,
        /// Peer address.
        addr: SocketAddr,
        /// Authenticated peer.
        peer: NodeId,
        /// Whether we dialled.
        initiator: bool,
    },
    /// A dial failed.
    ConnectFailed {
        /// The id `connect` returned.
        id: ConnId,
        /// Peer address.
        addr: SocketAddr,
        /// Why.
        error: LinkError,
    },
    /// A connection ended. A connection replaced by a restarted peer is
    /// reported before the new connection's `Connected`.
    Closed {
        /// The connection.
        id: ConnId,
        /// Peer address.
        addr: SocketAddr,
        /// How.
        reason: Ended,
    },
}

enum Pending {
    Dialing {
        addr: SocketAddr,
        init: Initiator,
        msg1: Vec<u8>,
        cookie: Vec<u8>,
        started: Time,
        last_sent: Time,
    },
    Answering {
        addr: SocketAddr,
        /// The initiator's id for this connection.
        peer_cid: u64,
        peer_instance: u64,
        resp: Responder,
        /// The whole `HS_RESP` datagram, resent on a repeated `HS_INIT`.
        msg2: Vec<u8>,
        started: Time,
    },
}

/// Per-slot facts about an established connection.
#[derive(Clone, Copy)]
struct Meta {
    id: ConnId,
    addr: SocketAddr,
    peer_cid: u64,
    peer_instance: u64,
}

/// The endpoint.
///
/// Connections live in `slots`, in the order they were established (the
/// round-robin order of `poll_transmit`); `conns` maps connection ids to
/// slot positions and is iterated (in its hash order) by `handle_timeout`.
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
    /// Handshakes in progress, by our id for the connection.
    pending: crate::FastMap<u64, Pending>,
    /// `Answering` handshakes by (address, initiator's id).
    answering: crate::FastMap<(SocketAddr, u64), u64>,
    conns: crate::FastMap<u64, usize>,
    /// Established connections by (address, peer's id).
    peers: crate::FastMap<(SocketAddr, u64), u64>,
    /// The newest connection to each address.
    newest: crate::FastMap<SocketAddr, u64>,
    slots: Vec<Conn>,
    meta: Vec<Meta>,
    ids: Vec<ConnId>,
    hint: MinTree,
    deadline: MinTree,
    check: Vec<bool>,
    touched: Vec<usize>,
    /// Scratch: the connections `handle_timeout` visits.
    visit: Vec<usize>,
    /// Ask every connection every time (the behaviour before the caches;
    /// tests compare the two).
    naive: bool,
    rr: usize,
    events: VecDeque<EndpointEvent>,
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    cookie_key: hmac::Key,
    /// Where received cells are copied.
    blocks: CellBlocks,
    /// This endpoint's instance number (see the module docs).
    instance: u64,
    /// Connection ids drawn so far.
    cids_drawn: u64,
    seed: u64,
    /// Datagrams dropped as malformed or unauthenticated.
    pub dropped: u64,
    /// Cells retransmitted by connections since removed.
    retransmitted_closed: u64,
}

const COOKIE_LEN: usize = 16;
const COOKIE_EPOCH: u64 = 10_000_000_000;

fn cid_at(b: &[u8]) -> Option<u64> {
    let b: [u8; CID_LEN] = b.get(..CID_LEN)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

impl Endpoint {
    /// An endpoint with this node's static key; `secret` seeds cookies,
    /// connection ids, the instance number and hash tables (from the
    /// caller's RNG; a restarted process must use a fresh one).
    pub fn new(key: StaticKey, config: EndpointConfig, secret: [u8; 32]) -> Endpoint {
        let seed = u64::from_le_bytes([
            secret[0], secret[1], secret[2], secret[3], secret[4], secret[5], secret[6], secret[7],
        ]);
        let cookie_key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        let instance = {
            let tag = hmac::sign(&cookie_key, b"udt instance");
            cid_at(tag.as_ref()).unwrap_or(seed)
        };
        Endpoint {
            key,
            config,
            pending: crate::fast_map(seed),
            answering: crate::fast_map(seed ^ 2),
            conns: crate::fast_map(seed ^ 1),
            peers: crate::fast_map(seed ^ 3),
            newest: crate::fast_map(seed ^ 4),
            slots: Vec::new(),
            meta: Vec::new(),
            ids: Vec::new(),
            hint: MinTree::default(),
            deadline: MinTree::default(),
            check: Vec::new(),
            touched: Vec::new(),
            visit: Vec::new(),
            naive: false,
            rr: 0,
            events: VecDeque::new(),
            outbox: VecDeque::new(),
            cookie_key,
            blocks: CellBlocks::default(),
            instance,
            cids_drawn: 0,
            seed,
            dropped: 0,
            retransmitted_closed: 0,
        }
    }

    /// This endpoint's instance number.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// A fresh connection id: a keyed hash of a counter (unpredictable to
    /// others, deterministic for a simulator), never 0, never in use.
    fn draw_cid(&mut self) -> u64 {
        loop {
            self.cids_drawn += 1;
            let tag = hmac::sign(&self.cookie_key, &self.cids_drawn.to_be_bytes());
            let cid = cid_at(tag.as_ref()).unwrap_or(self.cids_drawn);
            if cid != 0 && !self.pending.contains_key(&cid) && !self.conns.contains_key(&cid) {
                return cid;
            }
        }
    }

    /// Dials `addr`, expecting node `expected`; the connection will carry
    /// the returned id. Several connections to one address may coexist.
    pub fn connect(
        &mut self,
        now: Time,
        addr: SocketAddr,
        expected: NodeId,
    ) -> Result<ConnId, LinkError> {
        let (init, msg1) = Initiator::start(&self.key, expected)?;
        let cid = self.draw_cid();
        let dg = init_datagram(cid, self.instance, &[], &msg1);
        self.outbox.push_back((addr, dg));
        self.pending.insert(
            cid,
            Pending::Dialing {
                addr,
                init,
                msg1,
                cookie: Vec::new(),
                started: now,
                last_sent: now,
            },
        );
        Ok(ConnId(cid))
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
            DATA => {
                // The id routes the datagram; it must also come from the
                // connection's address (no migration), which spares an
                // AEAD open for a forged id.
                let pos = cid_at(&data[1..]).and_then(|cid| self.conns.get(&cid).copied());
                match pos {
                    Some(pos) if self.meta[pos].addr == from => {
                        self.touch(pos);
                        if !self.slots[pos].handle_data(now, data, &mut self.blocks) {
                            self.dropped += 1;
                        }
                    }
                    _ => self.dropped += 1,
                }
            }
            HS_INIT => self.on_init(now, from, &data[1..]),
            HS_RESP => self.on_resp(now, from, &data[1..]),
            HS_FIN => self.on_fin(now, from, &data[1..]),
            COOKIE => self.on_cookie(now, from, &data[1..]),
            _ => self.dropped += 1,
        }
    }

    fn on_cookie(&mut self, now: Time, from: SocketAddr, body: &[u8]) {
        let Some(cid) = cid_at(body) else {
            self.dropped += 1;
            return;
        };
        let instance = self.instance;
        match self.pending.get_mut(&cid) {
            Some(Pending::Dialing {
                addr,
                cookie,
                msg1,
                last_sent,
                ..
            }) if *addr == from && body.len() == CID_LEN + COOKIE_LEN => {
                *cookie = body[CID_LEN..].to_vec();
                *last_sent = now;
                let dg = init_datagram(cid, instance, cookie, msg1);
                self.outbox.push_back((from, dg));
            }
            _ => self.dropped += 1,
        }
    }

    fn on_init(&mut self, now: Time, from: SocketAddr, body: &[u8]) {
        // cid (8) || instance (8) || cookie length (1) || cookie || msg1
        let (Some(peer_cid), Some(peer_instance)) =
            (cid_at(body), body.get(CID_LEN..).and_then(cid_at))
        else {
            self.dropped += 1;
            return;
        };
        if self.peers.contains_key(&(from, peer_cid)) {
            return; // a late copy of an established connection's message 1
        }
        if let Some(Pending::Answering { msg2, .. }) = self
            .answering
            .get(&(from, peer_cid))
            .and_then(|cid| self.pending.get(cid))
        {
            self.outbox.push_back((from, msg2.clone()));
            return;
        }
        let Some((&clen, rest)) = body[2 * CID_LEN..].split_first() else {
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
                dg.extend_from_slice(&peer_cid.to_be_bytes());
                dg.extend_from_slice(&self.cookie_for(now, &from, 0));
                self.outbox.push_back((from, dg));
                return;
            }
        }
        match Responder::respond(&self.key, msg1) {
            Ok((resp, msg2)) => {
                let cid = self.draw_cid();
                let mut dg = vec![HS_RESP];
                dg.extend_from_slice(&peer_cid.to_be_bytes());
                dg.extend_from_slice(&cid.to_be_bytes());
                dg.extend_from_slice(&self.instance.to_be_bytes());
                dg.extend_from_slice(&msg2);
                self.outbox.push_back((from, dg.clone()));
                self.answering.insert((from, peer_cid), cid);
                self.pending.insert(
                    cid,
                    Pending::Answering {
                        addr: from,
                        peer_cid,
                        peer_instance,
                        resp,
                        msg2: dg,
                        started: now,
                    },
                );
            }
            Err(_) => self.dropped += 1,
        }
    }

    fn on_resp(&mut self, now: Time, from: SocketAddr, body: &[u8]) {
        // initiator's cid (8) || responder's cid (8) || instance (8) || msg2
        let (Some(cid), Some(peer_cid), Some(peer_instance)) = (
            cid_at(body),
            body.get(CID_LEN..).and_then(cid_at),
            body.get(2 * CID_LEN..).and_then(cid_at),
        ) else {
            self.dropped += 1;
            return;
        };
        if !matches!(self.pending.get(&cid), Some(Pending::Dialing { addr, .. }) if *addr == from) {
            self.dropped += 1;
            return;
        }
        let Some(Pending::Dialing { init, started, .. }) = self.pending.remove(&cid) else {
            return;
        };
        match init.finish(&body[3 * CID_LEN..]) {
            Ok((msg3, session)) => {
                let mut fin = vec![HS_FIN];
                fin.extend_from_slice(&peer_cid.to_be_bytes());
                fin.extend_from_slice(&msg3);
                self.outbox.push_back((from, fin.clone()));
                let mut conn = Conn::new(
                    session,
                    true,
                    self.config.conn.for_peer(from),
                    now,
                    self.seed ^ now.nanos(),
                    peer_cid,
                );
                conn.rtt.sample(now.since(started));
                conn.handshake_echo = Some(fin);
                let meta = Meta {
                    id: ConnId(cid),
                    addr: from,
                    peer_cid,
                    peer_instance,
                };
                self.add_conn(meta, conn);
            }
            Err(error) => self.events.push_back(EndpointEvent::ConnectFailed {
                id: ConnId(cid),
                addr: from,
                error,
            }),
        }
    }

    fn on_fin(&mut self, now: Time, from: SocketAddr, body: &[u8]) {
        // responder's cid (8) || msg3
        let Some(cid) = cid_at(body) else {
            self.dropped += 1;
            return;
        };
        if !matches!(self.pending.get(&cid), Some(Pending::Answering { addr, .. }) if *addr == from)
        {
            self.dropped += 1;
            return;
        }
        let Some(Pending::Answering {
            resp,
            started,
            peer_cid,
            peer_instance,
            ..
        }) = self.pending.remove(&cid)
        else {
            return;
        };
        self.answering.remove(&(from, peer_cid));
        match resp.finish(&body[CID_LEN..]) {
            Ok(session) => {
                let mut conn = Conn::new(
                    session,
                    false,
                    self.config.conn.for_peer(from),
                    now,
                    self.seed ^ now.nanos(),
                    peer_cid,
                );
                conn.rtt.sample(now.since(started));
                let meta = Meta {
                    id: ConnId(cid),
                    addr: from,
                    peer_cid,
                    peer_instance,
                };
                self.add_conn(meta, conn);
            }
            Err(_) => self.dropped += 1,
        }
    }

    fn add_conn(&mut self, meta: Meta, conn: Conn) {
        // The peer process at this address restarted: its old connections
        // are dead; report them before the new one.
        let stale: Vec<ConnId> = self
            .meta
            .iter()
            .filter(|m| m.addr == meta.addr && m.peer_instance != meta.peer_instance)
            .map(|m| m.id)
            .collect();
        for id in stale {
            self.remove(id, Ended::Replaced);
        }
        self.events.push_back(EndpointEvent::Connected {
            id: meta.id,
            addr: meta.addr,
            peer: conn.peer,
            initiator: conn.initiator,
        });
        let pos = self.slots.len();
        self.conns.insert(meta.id.0, pos);
        self.peers.insert((meta.addr, meta.peer_cid), meta.id.0);
        self.newest.insert(meta.addr, meta.id.0);
        self.slots.push(conn);
        self.meta.push(meta);
        self.ids.push(meta.id);
        self.hint.push(0);
        self.deadline.push(0);
        self.check.push(false);
        self.touch(pos);
    }

    /// Marks the connection at `pos` as possibly changed: its caches are
    /// refilled by the next `settle`.
    fn touch(&mut self, pos: usize) {
        self.hint.set(pos, 0);
        if self.deadline.get(pos) != u64::MAX {
            self.deadline.set(pos, u64::MAX);
            self.touched.push(pos);
        }
    }

    /// Refills the caches of touched connections.
    fn settle(&mut self) {
        for pos in self.touched.drain(..) {
            let c = &self.slots[pos];
            self.deadline.set(pos, c.timeout().nanos());
            self.check[pos] = c.ended().is_some() || c.close_done() || c.needs_handshake_echo();
        }
    }

    /// The connection `id`.
    pub fn conn_by_id(&mut self, id: ConnId) -> Option<&mut Conn> {
        let pos = *self.conns.get(&id.0)?;
        self.touch(pos);
        self.slots.get_mut(pos)
    }

    /// The connection `id`, read only (leaves the endpoint's caches valid).
    pub fn conn_by_id_ref(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(&id.0).and_then(|&pos| self.slots.get(pos))
    }

    /// The newest connection to `addr` (for callers with one connection
    /// per address).
    pub fn conn(&mut self, addr: &SocketAddr) -> Option<&mut Conn> {
        let id = *self.newest.get(addr)?;
        self.conn_by_id(ConnId(id))
    }

    /// The newest connection to `addr`, read only (leaves the endpoint's
    /// caches valid, unlike [`Endpoint::conn`]).
    pub fn conn_ref(&self, addr: &SocketAddr) -> Option<&Conn> {
        let id = *self.newest.get(addr)?;
        self.conn_by_id_ref(ConnId(id))
    }

    /// The id of the newest connection to `addr`.
    pub fn conn_id_to(&self, addr: &SocketAddr) -> Option<ConnId> {
        self.newest.get(addr).map(|&id| ConnId(id))
    }

    /// Ids of established connections, in the order they were established.
    pub fn ids(&self) -> &[ConnId] {
        &self.ids
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
        // Round robin from `rr`: the first connection with something to
        // send. Those whose hint lies ahead would say no, so the hint tree
        // skips them (debug builds ask them anyway and check).
        let limit = if self.naive { u64::MAX } else { now.nanos() };
        for (lo, hi) in [(self.rr, n), (0, self.rr.min(n))] {
            let mut from = lo;
            while let Some(pos) = self.hint.first_at_most(from, limit).filter(|&p| p < hi) {
                #[cfg(debug_assertions)]
                for skipped in from..pos {
                    self.check_skipped(skipped, now);
                }
                let c = &mut self.slots[pos];
                if c.poll_transmit(now, out) {
                    self.touch(pos);
                    self.rr = (pos + 1) % n;
                    return Some(self.meta[pos].addr);
                }
                self.hint.set(pos, c.transmit_hint().nanos().max(1));
                from = pos + 1;
            }
            #[cfg(debug_assertions)]
            for skipped in from..hi {
                self.check_skipped(skipped, now);
            }
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
        let cached = (!self.slots.is_empty()).then(|| Time(self.deadline.min()));
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
        for (cid, p) in self.pending.iter_mut() {
            match p {
                Pending::Dialing {
                    addr,
                    msg1,
                    cookie,
                    started,
                    last_sent,
                    ..
                } => {
                    if now.since(*started) >= limit {
                        failed.push(*cid);
                    } else if now.since(*last_sent) >= retry {
                        *last_sent = now;
                        let dg = init_datagram(*cid, self.instance, cookie, msg1);
                        self.outbox.push_back((*addr, dg));
                    }
                }
                Pending::Answering { started, .. } => {
                    if now.since(*started) >= limit {
                        failed.push(*cid);
                    }
                }
            }
        }
        for cid in failed {
            match self.pending.remove(&cid) {
                Some(Pending::Dialing { addr, .. }) => {
                    self.events.push_back(EndpointEvent::ConnectFailed {
                        id: ConnId(cid),
                        addr,
                        error: LinkError::HandshakeTimeout,
                    });
                }
                Some(Pending::Answering { addr, peer_cid, .. }) => {
                    self.answering.remove(&(addr, peer_cid));
                }
                None => {}
            }
        }
        self.settle();
        let t = now.nanos();
        let mut ended = Vec::new();
        // A connection whose timer is not due and that has nothing to
        // report is left alone (its handle_timeout would do nothing). The
        // rest are found from the deadline tree and the check flags, and
        // visited in the map's order, as before the caches, when there are
        // several (their echoes and ends are reported in that order).
        // Visiting one does not change whether another is due.
        let wanted = |pos: usize| self.naive || self.deadline.get(pos) <= t || self.check[pos];
        let mut visit = std::mem::take(&mut self.visit);
        visit.clear();
        let mut from = 0;
        while let Some(pos) = self.deadline.first_at_most(from, t) {
            visit.push(pos);
            from = pos + 1;
        }
        visit.extend(
            (0..self.check.len()).filter(|&pos| self.check[pos] && self.deadline.get(pos) > t),
        );
        if visit.len() > 1 || self.naive {
            visit.clear();
            visit.extend(self.conns.values().copied().filter(|&pos| wanted(pos)));
        }
        for &pos in &visit {
            let due = self.deadline.get(pos) <= t || self.naive;
            let c = &mut self.slots[pos];
            if due {
                c.handle_timeout(now);
                self.hint.set(pos, 0);
                if self.deadline.get(pos) != u64::MAX {
                    self.deadline.set(pos, u64::MAX);
                    self.touched.push(pos);
                }
            }
            if c.needs_handshake_echo() && now.since(c.rtt_anchor()) >= retry {
                if let Some(fin) = &c.handshake_echo {
                    self.outbox.push_back((self.meta[pos].addr, fin.clone()));
                }
                c.touch_echo(now);
            }
            if let Some(e) = c.ended() {
                if *e != Ended::Peer || c.ready_len() == 0 {
                    ended.push((self.meta[pos].id, e.clone()));
                }
            } else if c.close_done() {
                ended.push((self.meta[pos].id, Ended::Local));
            }
        }
        self.visit = visit;
        for (id, reason) in ended {
            self.remove(id, reason);
        }
    }

    /// Forgets a connection and reports it.
    pub fn remove(&mut self, id: ConnId, reason: Ended) {
        self.settle();
        let Some(pos) = self.conns.remove(&id.0) else {
            return;
        };
        let conn = self.slots.remove(pos);
        self.retransmitted_closed += conn.retransmitted_cells;
        let meta = self.meta.remove(pos);
        self.ids.remove(pos);
        self.hint.remove(pos);
        self.deadline.remove(pos);
        self.check.remove(pos);
        for p in self.conns.values_mut() {
            if *p > pos {
                *p -= 1;
            }
        }
        self.peers.remove(&(meta.addr, meta.peer_cid));
        if self.newest.get(&meta.addr) == Some(&id.0) {
            match self.meta.iter().rev().find(|m| m.addr == meta.addr) {
                Some(m) => self.newest.insert(meta.addr, m.id.0),
                None => self.newest.remove(&meta.addr),
            };
        }
        self.rr = 0;
        self.events.push_back(EndpointEvent::Closed {
            id,
            addr: meta.addr,
            reason,
        });
    }

    /// Cells put back for resending over the endpoint's life, by every
    /// connection it has had.
    pub fn retransmitted_cells(&self) -> u64 {
        self.retransmitted_closed
            + self
                .slots
                .iter()
                .map(|c| c.retransmitted_cells)
                .sum::<u64>()
    }

    /// Number of handshakes in progress.
    pub fn half_open(&self) -> usize {
        self.pending.len()
    }
}

/// `HS_INIT`: type, the initiator's id and instance, cookie, message 1.
fn init_datagram(cid: u64, instance: u64, cookie: &[u8], msg1: &[u8]) -> Vec<u8> {
    let mut dg = vec![HS_INIT];
    dg.extend_from_slice(&cid.to_be_bytes());
    dg.extend_from_slice(&instance.to_be_bytes());
    dg.push(cookie.len() as u8);
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
    /// `spurious`: the driver also asks every endpoint to transmit at
    /// random times of no deadline or input (as a driver woken for other
    /// reasons does), which must change nothing.
    fn hub_run(naive: bool, seed: u64, spurious: bool) -> Transcript {
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
        let mut next_read = 5_000_000u64;
        let mut wake_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        let mut next_spurious = if spurious { 1_000_000 } else { u64::MAX };
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
            let real_next = eps
                .iter()
                .filter_map(|e| e.poll_timeout())
                .map(|t| t.nanos())
                .chain(flight.keys().next().map(|k| k.0))
                .chain([next_app, next_read])
                .min()
                .unwrap()
                .max(now.nanos() + 1);
            if next_spurious < real_next {
                // Only the transmit polls at the top of the loop run then.
                now = Time(next_spurious.max(now.nanos() + 1));
                next_spurious = now.nanos() + wake_rng.gen_range(50_000..3_000_000);
                continue;
            }
            now = Time(real_next);
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
            if now.nanos() >= next_read {
                next_read = now.nanos() + rng.gen_range(1_000_000..100_000_000);
                for j in 1..=SPOKES {
                    if let Some(c) = eps[0].conn(&addr(j)) {
                        while c.pop_ready().is_some() {}
                    }
                }
            }
        }
        transcript
    }

    /// Runs the hub plainly and with one variation (`naive`, `spurious`)
    /// for three seeds and requires the same transmissions.
    fn same_transcripts(naive: bool, spurious: bool) {
        for seed in 1..=3 {
            let plain = hub_run(false, seed, false);
            let varied = hub_run(naive, seed, spurious);
            assert!(plain.len() > 1000, "too little traffic: {}", plain.len());
            assert_eq!(plain, varied, "seed {seed}");
        }
    }

    #[test]
    fn caches_give_the_same_transmissions_as_asking_everyone() {
        same_transcripts(true, false);
    }

    /// `poll_timeout` covers everything time alone makes an endpoint send:
    /// asking it to transmit at other times sends nothing more. (A probe
    /// PING without a timer of its own once went out at such wake-ups.)
    #[test]
    fn extra_wake_ups_change_no_transmission() {
        same_transcripts(false, true);
    }
}
