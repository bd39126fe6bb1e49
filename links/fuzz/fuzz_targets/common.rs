//! Shared by the udt targets: endpoints and the "still works" check.
#![allow(dead_code)]

use std::net::SocketAddr;

use relay_kernel::{Cell, CellCommand, NodeId, Time};
use relay_link::{Identity, StaticKey};
use relay_link_udt::endpoint::{ConnId, Endpoint, EndpointConfig, EndpointEvent};

pub fn static_key(b: u8) -> StaticKey {
    StaticKey::new(&Identity::from_secret([b; 32])).expect("static key")
}

pub fn node_id(b: u8) -> NodeId {
    Identity::from_secret([b; 32]).node_id()
}

/// The endpoint under test: identity `[2; 32]`, fixed secret, datagram
/// size discovery on up to 8,972 bytes (as relayd's driver runs it), so
/// hostile ACKs reach the search and its black-hole rule too.
pub fn endpoint() -> Endpoint {
    let mut config = EndpointConfig::default();
    config.conn.max_datagram_probe = 8972;
    Endpoint::new(static_key(2), config, [5; 32])
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// Where the fresh client of [`still_works`] lives; no fuzzed datagram
/// comes from there.
pub const FRESH: &str = "10.9.9.9:9";

/// A fresh endpoint dials `b` (node `b_id` at `b_addr`), and a cell it
/// sends arrives: `b` still accepts and serves connections. Runs at most
/// 10 simulated seconds from `now`; panics if it does not get there.
pub fn still_works(mut now: Time, b: &mut Endpoint, b_addr: SocketAddr, b_id: NodeId) {
    let a_addr = addr(FRESH);
    let mut a = Endpoint::new(static_key(9), EndpointConfig::default(), [9; 32]);
    let dial = a.connect(now, b_addr, b_id).expect("connect");
    // Earlier events of `b` are not ours.
    while b.poll_event().is_some() {}
    let mut cell = Cell::new(77, CellCommand::Relay);
    cell.body_mut().fill(0xa5);
    let (mut a_up, mut b_conn): (bool, Option<ConnId>) = (false, None);
    let mut sent = false;
    let end = now.plus_nanos(10_000_000_000);
    let mut buf = Vec::new();
    while now < end {
        for _ in 0..100 {
            let mut moved = false;
            while let Some(to) = a.poll_transmit(now, &mut buf) {
                moved = true;
                if to == b_addr {
                    b.handle_datagram(now, a_addr, &mut buf);
                }
            }
            while let Some(to) = b.poll_transmit(now, &mut buf) {
                moved = true;
                if to == a_addr {
                    a.handle_datagram(now, b_addr, &mut buf);
                }
            }
            if !moved {
                break;
            }
        }
        while let Some(e) = a.poll_event() {
            match e {
                EndpointEvent::Connected { id, peer, .. } if id == dial => {
                    assert_eq!(peer, b_id);
                    a_up = true;
                }
                EndpointEvent::ConnectFailed { error, .. } => panic!("dial failed: {error}"),
                _ => {}
            }
        }
        while let Some(e) = b.poll_event() {
            if let EndpointEvent::Connected { id, addr, .. } = e {
                if addr == a_addr {
                    b_conn = Some(id);
                }
            }
        }
        if a_up && !sent {
            let copy = Cell::from_slice(cell.as_bytes()).expect("cell");
            a.conn_by_id(dial).expect("dialled conn").queue_cell(copy);
            sent = true;
            continue;
        }
        if let Some(id) = b_conn {
            if let Some(c) = b.conn_by_id(id) {
                if let Some(got) = c.pop_ready() {
                    assert_eq!(got.as_bytes(), cell.as_bytes());
                    return;
                }
            }
        }
        let next = [a.poll_timeout(), b.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .map_or(now.plus_nanos(1_000_000), |t| t.max(now.plus_nanos(1)));
        now = next.min(now.plus_nanos(5_000_000));
        a.handle_timeout(now);
        b.handle_timeout(now);
    }
    panic!("no cell over a fresh connection (a up: {a_up}, b conn: {b_conn:?}, sent: {sent})");
}

/// Reads a fuzz input front to back; past its end, reads give zeros and
/// short slices.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    pub fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }
}
