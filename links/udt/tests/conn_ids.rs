//! Connection ids: a restarted peer at the same address reconnects at once
//! and its old connection is reported closed, several connections share
//! one address pair, and datagrams with forged or unknown ids are dropped
//! without disturbing live connections. The sans-IO endpoints run over a
//! lossless simulated network in virtual time; the last test uses the
//! tokio driver on real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use relay_kernel::{Cell, CellCommand, Time};
use relay_link::{CloseReason, Identity, LinkConfig, StaticKey, Transport};
use relay_link_udt::conn::Ended;
use relay_link_udt::endpoint::{ConnId, Endpoint, EndpointConfig, EndpointEvent};
use relay_link_udt::packet::{DATA, HS_FIN, HS_RESP};
use relay_link_udt::UdtTransport;

/// One-way latency of the simulated network.
const LATENCY: u64 = 5_000_000;

fn addr(i: u8) -> SocketAddr {
    format!("10.0.0.{i}:1").parse().unwrap()
}

fn endpoint(identity: u8, secret: u8) -> Endpoint {
    let key = StaticKey::new(&Identity::from_secret([identity; 32])).unwrap();
    Endpoint::new(key, EndpointConfig::default(), [secret; 32])
}

fn node_id(identity: u8) -> relay_kernel::NodeId {
    Identity::from_secret([identity; 32]).node_id()
}

fn cell(circ: u32, i: u8) -> Cell {
    let mut c = Cell::new(circ, CellCommand::Relay);
    c.body_mut().fill(i);
    c
}

/// Endpoints at addresses, a lossless network between them, and a log of
/// every event with its time.
struct Net {
    now: Time,
    nodes: BTreeMap<SocketAddr, Endpoint>,
    flight: BTreeMap<(u64, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    seq: u64,
    log: Vec<(Time, SocketAddr, EndpointEvent)>,
}

impl Net {
    fn new() -> Net {
        Net {
            now: Time(1),
            nodes: BTreeMap::new(),
            flight: BTreeMap::new(),
            seq: 0,
            log: Vec::new(),
        }
    }

    fn ep(&mut self, at: SocketAddr) -> &mut Endpoint {
        self.nodes.get_mut(&at).unwrap()
    }

    /// Puts a datagram on the wire as if `from` had sent it.
    fn inject(&mut self, from: SocketAddr, to: SocketAddr, dg: Vec<u8>) {
        self.seq += 1;
        self.flight
            .insert((self.now.nanos() + LATENCY, self.seq), (from, to, dg));
    }

    fn step(&mut self) {
        let mut buf = Vec::new();
        let addrs: Vec<SocketAddr> = self.nodes.keys().copied().collect();
        for from in &addrs {
            let now = self.now;
            while let Some(to) = self.ep(*from).poll_transmit(now, &mut buf) {
                let dg = buf.clone();
                self.inject(*from, to, dg);
            }
        }
        let next = self
            .nodes
            .values()
            .filter_map(|e| e.poll_timeout())
            .map(|t| t.nanos())
            .chain(self.flight.keys().next().map(|k| k.0))
            .min()
            .unwrap_or(self.now.nanos() + 1_000_000);
        self.now = Time(next.max(self.now.nanos() + 1));
        while let Some(entry) = self.flight.first_entry() {
            if entry.key().0 > self.now.nanos() {
                break;
            }
            let (from, to, mut dg) = entry.remove();
            // Datagrams to an address nobody holds vanish.
            if let Some(ep) = self.nodes.get_mut(&to) {
                ep.handle_datagram(self.now, from, &mut dg);
            }
        }
        for (at, ep) in self.nodes.iter_mut() {
            if ep.poll_timeout().is_some_and(|t| t <= self.now) {
                ep.handle_timeout(self.now);
            }
            while let Some(ev) = ep.poll_event() {
                self.log.push((self.now, *at, ev));
            }
        }
    }

    /// Steps until `done` holds, at most `limit` ns of virtual time.
    fn run_until(&mut self, limit: u64, mut done: impl FnMut(&mut Net) -> bool) {
        let end = self.now.nanos() + limit;
        while !done(self) {
            assert!(self.now.nanos() < end, "timed out");
            self.step();
        }
    }

    fn connected(&self, at: SocketAddr, id: ConnId) -> bool {
        self.log.iter().any(|(_, a, ev)| {
            *a == at && matches!(ev, EndpointEvent::Connected { id: i, .. } if *i == id)
        })
    }

    /// Connected events at `at`, in order: (time, id, peer address).
    fn accepted(&self, at: SocketAddr) -> Vec<(Time, ConnId, SocketAddr)> {
        self.log
            .iter()
            .filter(|(_, a, _)| *a == at)
            .filter_map(|(t, _, ev)| match ev {
                EndpointEvent::Connected {
                    id,
                    addr,
                    initiator: false,
                    ..
                } => Some((*t, *id, *addr)),
                _ => None,
            })
            .collect()
    }

    fn closed(&self, at: SocketAddr) -> Vec<(usize, ConnId, Ended)> {
        self.log
            .iter()
            .enumerate()
            .filter(|(_, (_, a, _))| *a == at)
            .filter_map(|(i, (_, _, ev))| match ev {
                EndpointEvent::Closed { id, reason, .. } => Some((i, *id, reason.clone())),
                _ => None,
            })
            .collect()
    }

    /// Every cell ready on `at`'s connection `id`, as (circuit, fill byte).
    fn drain(&mut self, at: SocketAddr, id: ConnId) -> Vec<(u32, u8)> {
        let mut got = Vec::new();
        if let Some(c) = self.ep(at).conn_by_id(id) {
            while let Some(cell) = c.pop_ready() {
                got.push((cell.raw_circ_id(), cell.body()[0]));
            }
        }
        got
    }
}

/// Dials `to` from `from`, runs until both ends are up; returns the
/// dialler's id and the acceptor's id for the connection.
fn dial(net: &mut Net, from: SocketAddr, to: SocketAddr, expect: u8) -> (ConnId, ConnId) {
    let before = net.accepted(to).len();
    let now = net.now;
    let id = net.ep(from).connect(now, to, node_id(expect)).unwrap();
    net.run_until(2_000_000_000, |n| {
        n.connected(from, id) && n.accepted(to).len() > before
    });
    let (_, theirs, peer) = net.accepted(to)[before];
    assert_eq!(peer, from);
    (id, theirs)
}

/// Sends cells both ways on one connection and checks they arrive.
fn exchange(net: &mut Net, a: (SocketAddr, ConnId), b: (SocketAddr, ConnId), circ: u32) {
    for i in 0..20 {
        net.ep(a.0)
            .conn_by_id(a.1)
            .unwrap()
            .queue_cell(cell(circ, i));
        net.ep(b.0)
            .conn_by_id(b.1)
            .unwrap()
            .queue_cell(cell(circ + 1, i));
    }
    let (mut at_a, mut at_b) = (Vec::new(), Vec::new());
    net.run_until(2_000_000_000, |n| {
        at_a.extend(n.drain(a.0, a.1));
        at_b.extend(n.drain(b.0, b.1));
        at_a.len() >= 20 && at_b.len() >= 20
    });
    let want = |c: u32| (0..20).map(|i| (c, i)).collect::<Vec<_>>();
    assert_eq!(at_b, want(circ));
    assert_eq!(at_a, want(circ + 1));
}

fn restart(new_identity: bool) {
    let (server, client) = (addr(1), addr(2));
    let mut net = Net::new();
    net.nodes.insert(server, endpoint(1, 1));
    net.nodes.insert(client, endpoint(2, 2));
    let (old_c, old_s) = dial(&mut net, client, server, 1);
    exchange(&mut net, (client, old_c), (server, old_s), 10);
    // The server is busy sending to the client when it dies.
    for i in 0..50 {
        net.ep(server)
            .conn_by_id(old_s)
            .unwrap()
            .queue_cell(cell(3, i));
    }
    net.step();
    // The client process restarts at the same address: all state gone,
    // fresh randomness, the same (or a new) identity.
    let identity = if new_identity { 3 } else { 2 };
    net.nodes.insert(client, endpoint(identity, 9));
    for _ in 0..3 {
        net.step();
    }
    let restarted = net.now;
    let (new_c, new_s) = dial(&mut net, client, server, 1);
    let took = net.now.since(restarted);
    eprintln!("restarted peer connected after {} ms", took / 1_000_000);
    assert!(took < 1_000_000_000, "reconnect took {took} ns");
    assert_ne!(new_s, old_s);
    // The old connection was reported closed as replaced, before the new
    // one was reported up.
    let closed = net.closed(server);
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!((closed[0].1, &closed[0].2), (old_s, &Ended::Replaced));
    let up = net
        .log
        .iter()
        .position(|(_, a, ev)| {
            *a == server && matches!(ev, EndpointEvent::Connected { id, .. } if *id == new_s)
        })
        .unwrap();
    assert!(closed[0].0 < up);
    assert!(net.ep(server).conn_by_id(old_s).is_none());
    assert_eq!(net.ep(server).ids(), &[new_s]);
    exchange(&mut net, (client, new_c), (server, new_s), 20);
}

#[test]
fn a_restarted_peer_reconnects_at_once_and_its_old_connection_closes() {
    restart(false);
}

#[test]
fn a_restarted_peer_with_new_keys_reconnects_at_once() {
    restart(true);
}

#[test]
fn several_connections_share_one_address_pair() {
    let (server, client) = (addr(1), addr(2));
    let mut net = Net::new();
    net.nodes.insert(server, endpoint(1, 1));
    net.nodes.insert(client, endpoint(2, 2));
    let (c1, s1) = dial(&mut net, client, server, 1);
    let (c2, s2) = dial(&mut net, client, server, 1);
    assert_ne!(s1, s2);
    assert_eq!(net.ep(server).ids().len(), 2);
    // Each connection carries its own cells; neither disturbed the other.
    exchange(&mut net, (client, c1), (server, s1), 10);
    exchange(&mut net, (client, c2), (server, s2), 30);
    exchange(&mut net, (client, c1), (server, s1), 50);
    assert!(net.closed(server).is_empty() && net.closed(client).is_empty());
    // Closing one leaves the other.
    net.ep(client).conn_by_id(c1).unwrap().close();
    net.run_until(2_000_000_000, |n| !n.closed(server).is_empty());
    assert_eq!(net.closed(server)[0].1, s1);
    exchange(&mut net, (client, c2), (server, s2), 70);
}

#[test]
fn forged_and_unknown_ids_are_dropped_without_harm() {
    let (server, client, other) = (addr(1), addr(2), addr(3));
    let mut net = Net::new();
    net.nodes.insert(server, endpoint(1, 1));
    net.nodes.insert(client, endpoint(2, 2));
    let (c, s) = dial(&mut net, client, server, 1);
    let dropped = net.ep(server).dropped;
    let live = s.0.to_be_bytes();
    let mut hostile = Vec::new();
    // DATA with an unknown id.
    let mut dg = vec![DATA];
    dg.extend_from_slice(&0x1234_5678_9abc_def0u64.to_be_bytes());
    dg.extend_from_slice(&[7u8; 200]);
    hostile.push((client, dg));
    // DATA with the live id from another address.
    let mut dg = vec![DATA];
    dg.extend_from_slice(&live);
    dg.extend_from_slice(&[0u8; 8]);
    dg.extend_from_slice(&[7u8; 200]);
    hostile.push((other, dg));
    // DATA with the live id from the right address, forged contents
    // (packet numbers near the live ones and far off).
    for pn in [0u64, 1, 2, 5, 1 << 40] {
        let mut dg = vec![DATA];
        dg.extend_from_slice(&live);
        dg.extend_from_slice(&pn.to_be_bytes());
        dg.extend_from_slice(&[9u8; 1100]);
        hostile.push((client, dg));
    }
    // Truncated headers, handshake messages for ids nobody dialled.
    hostile.push((client, vec![DATA, 1, 2, 3]));
    let mut dg = vec![HS_RESP];
    dg.extend_from_slice(&live);
    dg.extend_from_slice(&[5u8; 120]);
    hostile.push((client, dg));
    let mut dg = vec![HS_FIN];
    dg.extend_from_slice(&live);
    dg.extend_from_slice(&[5u8; 90]);
    hostile.push((client, dg));
    let n = hostile.len() as u64;
    for (from, dg) in hostile {
        net.inject(from, server, dg);
    }
    exchange(&mut net, (client, c), (server, s), 10);
    assert!(
        net.ep(server).dropped >= dropped + n,
        "dropped {} of {n}",
        net.ep(server).dropped - dropped
    );
    assert!(net.closed(server).is_empty(), "{:?}", net.closed(server));
    assert_eq!(net.ep(server).ids(), &[s]);
    exchange(&mut net, (client, c), (server, s), 30);
}

/// The tokio driver on real sockets: a process that restarts on the same
/// port reconnects at once, and the survivor's old link closes well within
/// the 15 s idle timeout.
#[tokio::test]
async fn a_restarted_process_on_the_same_port_reconnects_at_once() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (ia, ib) = (
        Identity::from_secret([1; 32]),
        Identity::from_secret([2; 32]),
    );
    let config = LinkConfig::default();
    assert!(config.idle_timeout >= Duration::from_secs(10));
    let a = UdtTransport::bind(any, &ia, config).await.unwrap();
    let b = UdtTransport::bind(any, &ib, config).await.unwrap();
    let b_addr = b.local_addr();
    let lb = b.connect(a.local_addr(), ia.node_id()).await.unwrap();
    let mut la = a.accept().await.unwrap();
    lb.tx.send(cell(1, 1)).await.unwrap();
    assert_eq!(la.rx.recv().await.unwrap().body()[0], 1);
    // Kill b without a close and bind its port again.
    b.crash();
    drop(b);
    let start = std::time::Instant::now();
    let b2 = loop {
        match UdtTransport::bind(b_addr, &ib, config).await {
            Ok(t) => break t,
            Err(_) if start.elapsed() < Duration::from_secs(2) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("rebind: {e}"),
        }
    };
    let mut lb2 = tokio::time::timeout(
        Duration::from_secs(3),
        b2.connect(a.local_addr(), ia.node_id()),
    )
    .await
    .expect("reconnect timed out")
    .unwrap();
    let mut la2 = a.accept().await.unwrap();
    // The old link is reported closed at once, not after the idle timeout.
    let gone = tokio::time::timeout(Duration::from_secs(3), async {
        while la.rx.recv().await.is_some() {}
    })
    .await;
    assert!(gone.is_ok(), "old link not closed");
    assert!(
        matches!(la.rx.close_reason(), Some(CloseReason::Error(_))),
        "{:?}",
        la.rx.close_reason()
    );
    eprintln!("restart handled in {:?}", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(5));
    // The new link works both ways.
    lb2.tx.send(cell(2, 2)).await.unwrap();
    assert_eq!(la2.rx.recv().await.unwrap().body()[0], 2);
    la2.tx.send(cell(3, 3)).await.unwrap();
    assert_eq!(lb2.rx.recv().await.unwrap().body()[0], 3);
}
