//! An established udt connection fed hostile DATA: the fuzzer is the
//! authenticated peer, so its frames get past the AEAD into the
//! connection's ACK, cell, capacity and close handling.
//!
//! Setup: endpoint B (node `[2; 32]`) and a hand-driven client C at
//! 10.0.0.4:4 that ran the real handshake with it, so the target holds
//! C's session keys. The input is a list of records; the selector's low 3
//! bits pick:
//! - 0, 1: a DATA datagram sealed with C's key: packet number the next
//!   one (or, with bit 3, any u64 from the input, so replays and jumps),
//!   then frames: u16 length (at most 1400) and bytes, and with bit 4 an
//!   extra CELL frame (sequence u32, circuit id u32, fill byte);
//! - 2: a raw datagram from C (u16 length, bytes), with bit 3 its bytes
//!   1..9 set to B's connection id;
//! - 3: the clock advances (byte × 10 ms, × 1 s with bit 3), timers run;
//! - 4: B queues 1-32 cells on the connection;
//! - 5: B reads every delivered cell;
//! - 6: B closes the connection gracefully;
//! - 7: a DATA datagram with B's id from another address.
//!
//! Checks: no panic (with debug assertions, so B's caches are checked);
//! B sends only to C; every DATA datagram B sends carries C's id, a packet
//! number above all earlier ones, opens with C's key and holds only
//! well-formed frames; B's ACKs acknowledge only packet numbers C sealed;
//! a cell B sends is one it was given, a cell it delivers is one C sent;
//! a DATA datagram from another address is dropped; afterwards a fresh
//! client still connects and delivers a cell.
#![no_main]

mod common;

use std::collections::{BTreeSet, HashSet};

use common::{addr, endpoint, node_id, static_key, still_works, Input};
use libfuzzer_sys::fuzz_target;
use relay_kernel::{Cell, CellCommand, Time, CELL_LEN};
use relay_link::{Initiator, Session};
use relay_link_udt::endpoint::{ConnId, Endpoint};
use relay_link_udt::packet::{
    write_cell, Frame, Frames, DATA, DATA_HEADER, HS_FIN, HS_INIT, HS_RESP,
};

const C_CID: u64 = 0x4444_4444_4444_4444;

struct Peer {
    session: Session,
    b_cid: u64,
    /// Packet numbers C sealed.
    sealed: BTreeSet<u64>,
    next_pn: u64,
    /// Cells C sent, and cells B was given to send.
    sent_cells: HashSet<Vec<u8>>,
    queued_cells: HashSet<Vec<u8>>,
    /// The newest packet number B used.
    b_pn: Option<u64>,
}

fn handshake(b: &mut Endpoint, now: Time, c_addr: std::net::SocketAddr) -> Peer {
    let ckey = static_key(4);
    let (init, msg1) = Initiator::start(&ckey, node_id(2)).expect("msg1");
    let mut dg = vec![HS_INIT];
    dg.extend_from_slice(&C_CID.to_be_bytes());
    dg.extend_from_slice(&7u64.to_be_bytes());
    dg.push(0);
    dg.extend_from_slice(&msg1);
    b.handle_datagram(now, c_addr, &mut dg);
    let mut buf = Vec::new();
    let to = b.poll_transmit(now, &mut buf).expect("HS_RESP");
    assert!(to == c_addr && buf[0] == HS_RESP);
    let b_cid = u64::from_be_bytes(buf[9..17].try_into().expect("8 bytes"));
    let (msg3, session) = init.finish(&buf[25..]).expect("genuine message 2");
    let mut fin = vec![HS_FIN];
    fin.extend_from_slice(&b_cid.to_be_bytes());
    fin.extend_from_slice(&msg3);
    b.handle_datagram(now, c_addr, &mut fin);
    assert!(b.conn_by_id(ConnId(b_cid)).is_some(), "handshake completed");
    while b.poll_event().is_some() {}
    Peer {
        session,
        b_cid,
        sealed: BTreeSet::new(),
        next_pn: 0,
        sent_cells: HashSet::new(),
        queued_cells: HashSet::new(),
        b_pn: None,
    }
}

/// Checks one datagram B sent to C.
fn check_from_b(p: &mut Peer, dg: &mut [u8]) {
    if dg.first() != Some(&DATA) {
        return; // a handshake answer to a fuzzed HS_INIT
    }
    assert!(dg.len() >= DATA_HEADER, "short DATA from B");
    let cid = u64::from_be_bytes(dg[1..9].try_into().expect("8 bytes"));
    assert_eq!(cid, C_CID, "DATA to C carries C's id");
    let pn = u64::from_be_bytes(dg[9..17].try_into().expect("8 bytes"));
    assert!(p.b_pn.is_none_or(|prev| pn > prev), "B reused or lowered its packet number");
    p.b_pn = Some(pn);
    let (header, body) = dg.split_at_mut(DATA_HEADER);
    let plain = p
        .session
        .open
        .open_with_aad(pn, header, body)
        .expect("B's DATA opens with C's key");
    for f in Frames::new(plain) {
        match f.expect("B writes well-formed frames") {
            Frame::Ack(a) => {
                for (lo, hi) in a.ranges() {
                    let n = p.sealed.range(lo..=hi).count() as u128;
                    assert_eq!(
                        n,
                        u128::from(hi - lo) + 1,
                        "B acknowledged {lo}..={hi}, not all sealed by C"
                    );
                }
            }
            Frame::Cell(_, _, raw) => {
                assert!(p.queued_cells.contains(raw), "B sent a cell it was not given")
            }
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = endpoint();
    let b_addr = addr("10.0.0.2:2");
    let c_addr = addr("10.0.0.4:4");
    let stranger = addr("10.0.0.5:5");
    let mut now = Time::from_millis(1);
    let mut p = handshake(&mut b, now, c_addr);
    let id = ConnId(p.b_cid);
    let mut buf = Vec::new();
    let mut input = Input(data);
    let mut queued = 0u32;
    while !input.is_empty() {
        let sel = input.byte();
        match sel & 7 {
            0 | 1 => {
                let pn = if sel & 0x08 != 0 {
                    input.u64()
                } else {
                    p.next_pn
                };
                p.next_pn = p.next_pn.max(pn.saturating_add(1));
                let mut dg = vec![DATA];
                dg.extend_from_slice(&p.b_cid.to_be_bytes());
                dg.extend_from_slice(&pn.to_be_bytes());
                let len = usize::from(input.u16()).min(1400);
                dg.extend_from_slice(input.take(len));
                if sel & 0x10 != 0 {
                    let seq = input.u32();
                    let mut cell = Cell::new(input.u32(), CellCommand::Relay);
                    cell.body_mut().fill(input.byte());
                    // Half the cells say they waited on an earlier link.
                    let wait = if sel & 0x20 != 0 { input.u32() } else { 0 };
                    write_cell(&mut dg, seq, wait, cell.as_bytes());
                }
                // Every complete CELL frame counts as sent (B may deliver
                // any cell of a packet whose frames all parse).
                for f in Frames::new(&dg[DATA_HEADER..]).flatten() {
                    if let Frame::Cell(_, _, raw) = f {
                        p.sent_cells.insert(raw.to_vec());
                    }
                }
                p.session
                    .seal
                    .seal_after_header(pn, &mut dg, DATA_HEADER)
                    .expect("seal");
                p.sealed.insert(pn);
                b.handle_datagram(now, c_addr, &mut dg);
            }
            2 => {
                let len = usize::from(input.u16()).min(1500);
                let mut dg = input.take(len).to_vec();
                if sel & 0x08 != 0 && dg.len() >= 9 {
                    dg[1..9].copy_from_slice(&p.b_cid.to_be_bytes());
                }
                b.handle_datagram(now, c_addr, &mut dg);
            }
            3 => {
                let step = if sel & 0x08 != 0 { 1_000_000_000 } else { 10_000_000 };
                now = now.plus_nanos(u64::from(input.byte()) * step);
                b.handle_timeout(now);
            }
            4 => {
                let n = input.byte() % 32 + 1;
                if let Some(c) = b.conn_by_id(id) {
                    for i in 0..n {
                        let mut cell = Cell::new(1 + (queued % 5), CellCommand::Relay);
                        cell.body_mut()[..4].copy_from_slice(&queued.to_be_bytes());
                        cell.body_mut()[4] = i;
                        queued += 1;
                        p.queued_cells.insert(cell.as_bytes().to_vec());
                        c.queue_cell(cell);
                    }
                }
            }
            5 => {
                if let Some(c) = b.conn_by_id(id) {
                    while let Some(cell) = c.pop_ready() {
                        assert_eq!(cell.as_bytes().len(), CELL_LEN);
                        assert!(
                            p.sent_cells.contains(cell.as_bytes()),
                            "B delivered a cell C never sent"
                        );
                    }
                }
            }
            6 => {
                if let Some(c) = b.conn_by_id(id) {
                    c.close();
                }
            }
            _ => {
                let len = usize::from(input.u16()).min(1500);
                let mut dg = vec![DATA];
                dg.extend_from_slice(&p.b_cid.to_be_bytes());
                dg.extend_from_slice(input.take(len));
                let dropped = b.dropped;
                b.handle_datagram(now, stranger, &mut dg);
                assert_eq!(b.dropped, dropped + 1, "DATA from another address is dropped");
            }
        }
        while let Some(to) = b.poll_transmit(now, &mut buf) {
            assert_eq!(to, c_addr, "B sent to someone other than C");
            check_from_b(&mut p, &mut buf);
        }
        while b.poll_event().is_some() {}
        let _ = b.poll_timeout();
    }
    still_works(now, &mut b, b_addr, node_id(2));
});
