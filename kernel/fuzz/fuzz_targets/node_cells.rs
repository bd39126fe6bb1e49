//! Arbitrary cells and arbitrary *authenticated* relay messages into a live
//! relay. A hand-driven client runs the real handshake with relay R (one
//! hop, so R is the last hop and parses every message). The input is cut
//! into 515-byte records: a selector byte, then 514 bytes that are either a
//! raw cell (often with the live circuit id patched in) or a relay message
//! room that the client wraps with the circuit's keys, so it passes
//! authentication and reaches R's message handling (BEGIN, EXTEND, SENDME,
//! DATA, ...). R's requests are answered. Nothing may panic, and R must
//! still accept a new circuit afterwards.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use relay_kernel::crypto::onion::{outbound_room, ClientOnion};
use relay_kernel::handshake::ClientHandshake;
use relay_kernel::{
    Cell, CellCommand, Event, LinkId, Node, NodeConfig, NodeId, OnionKeypair, Time, CELL_LEN,
};

const LINK: LinkId = LinkId(2);

fn relay() -> Node {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let id = NodeId::from_identity_key(&[2; 32]);
    let onion = OnionKeypair::generate(&mut rng);
    Node::new(id, onion, NodeConfig::default(), Box::new(rng))
}

/// Runs the handshake for circuit `circ_id`; returns the client's onion.
fn create(r: &mut Node, circ_id: u32, now: Time) -> Option<ClientOnion> {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let (hs, msg) = ClientHandshake::start(&mut rng, r.id(), r.onion_key());
    let mut cell = Cell::new(circ_id, CellCommand::Create);
    let body = cell.body_mut();
    body[..4].copy_from_slice(&[0, 1, 0, msg.len() as u8]);
    body[4..4 + msg.len()].copy_from_slice(&msg);
    r.handle_cell(now, LINK, cell);
    let reply =
        std::iter::from_fn(|| r.poll_transmit(LINK)).find(|c| c.raw_circ_id() == circ_id)?;
    let keys = hs.finish(reply.body().get(4..68)?).ok()?;
    let mut onion = ClientOnion::new();
    onion.push_hop(&keys).ok()?;
    Some(onion)
}

/// Answers what R asks, then drains its output.
fn serve(r: &mut Node, now: Time) {
    while let Some(ev) = r.poll_event() {
        match ev {
            Event::StreamRequest { stream, .. } => {
                let _ = r.accept_stream(now, stream, None);
            }
            Event::ResolveRequest { stream, .. } => {
                let _ = r.resolve_reply(
                    now,
                    stream,
                    &["127.0.0.1".parse().unwrap_or([0u8; 4].into())],
                );
            }
            _ => {}
        }
    }
    let streams: Vec<_> = r.streams().iter().map(|s| s.stream).collect();
    let mut buf = [0u8; 4096];
    for s in streams {
        while let Ok(n) = r.stream_read(now, s, &mut buf) {
            if n == 0 {
                break;
            }
            let _ = r.stream_write(now, s, &buf[..n.min(600)]);
        }
    }
    while r.poll_transmit(LINK).is_some() {}
}

fuzz_target!(|data: &[u8]| {
    let mut r = relay();
    let now = Time(1);
    // R accepted the link; the client side is the initiator.
    r.link_up(now, LINK, NodeId([1; 32]), false);
    let live = 0x8000_0001;
    let Some(mut onion) = create(&mut r, live, now) else {
        return;
    };
    for record in data.chunks(CELL_LEN + 1) {
        if record.len() < CELL_LEN + 1 {
            break;
        }
        let sel = record[0];
        let cell = if sel & 1 == 1 {
            // An authenticated relay message: the record's bytes are the room.
            let mut cell = Cell::new(live, CellCommand::Relay);
            let body = cell.body_mut();
            let room = outbound_room(1);
            body[16..16 + room].copy_from_slice(&record[1..1 + room]);
            if onion.wrap_outbound(body).is_err() {
                return;
            }
            cell
        } else {
            let mut raw = [0u8; CELL_LEN];
            raw.copy_from_slice(&record[1..]);
            if sel & 2 == 0 {
                raw[..4].copy_from_slice(&live.to_be_bytes());
            }
            match Cell::from_slice(&raw) {
                Ok(c) => c,
                Err(_) => continue,
            }
        };
        r.handle_cell(now, LINK, cell);
        serve(&mut r, now);
    }
    // R still works: a fresh circuit is accepted.
    assert!(create(&mut r, 0x8000_0777, now).is_some());
});
