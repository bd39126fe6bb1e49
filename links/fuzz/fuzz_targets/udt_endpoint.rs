//! The sans-IO udt `Endpoint` as a listener, fed arbitrary datagrams.
//!
//! Setup: endpoint B (node `[2; 32]`) with one dial of its own in progress
//! (to 10.0.0.3:3) and one handshake it is answering (a genuine `HS_INIT`
//! from a hand-driven initiator at 10.0.0.4:4). The input is a list of
//! records: a selector byte, a length (u16, at most 1500) and that many
//! bytes, the datagram. Selector bits 0-1 pick the source address (the
//! dialled peer, the answered initiator, or two strangers); bit 2 patches
//! bytes 1..9 with a connection id B knows (its dial's id for `HS_RESP`
//! and `COOKIE`, its answering id for `HS_FIN` and `DATA`, the answered
//! initiator's id for `HS_INIT`), so the fuzzer reaches the handshake
//! states past the id lookup; bit 3 advances the clock by `length` ms and
//! runs B's timers instead of sending; bit 4 first delivers the genuine
//! `HS_FIN`, completing the answered handshake (once).
//!
//! Checks: no panic (debug assertions on, so B's timer and transmit caches
//! are checked too); B sends only to addresses that sent it something or
//! that it dialled (no reflection to third parties); B never holds more
//! than `max_half_open` (64) handshakes, however many `HS_INIT`s arrive;
//! and afterwards a fresh client still connects to B and delivers a cell.
#![no_main]

mod common;

use std::collections::HashSet;

use common::{addr, endpoint, node_id, static_key, still_works, Input};
use libfuzzer_sys::fuzz_target;
use relay_kernel::Time;
use relay_link::Initiator;
use relay_link_udt::packet::{COOKIE, DATA, HS_FIN, HS_INIT, HS_RESP};

const INITIATOR_CID: u64 = 0x4444_4444_4444_4444;

fuzz_target!(|data: &[u8]| {
    let mut b = endpoint();
    let b_addr = addr("10.0.0.2:2");
    let sources = [
        addr("10.0.0.3:3"),
        addr("10.0.0.4:4"),
        addr("10.0.0.5:5"),
        addr("[::1]:7"),
    ];
    let mut now = Time::from_millis(1);
    let mut heard: HashSet<_> = [sources[0]].into_iter().collect();
    let dial = b.connect(now, sources[0], node_id(3)).expect("dial").0;

    // A genuine initiator at sources[1] starts a handshake with B.
    let ikey = static_key(4);
    let (init, msg1) = Initiator::start(&ikey, node_id(2)).expect("msg1");
    let mut dg = vec![HS_INIT];
    dg.extend_from_slice(&INITIATOR_CID.to_be_bytes());
    dg.extend_from_slice(&7u64.to_be_bytes());
    dg.push(0);
    dg.extend_from_slice(&msg1);
    b.handle_datagram(now, sources[1], &mut dg);
    heard.insert(sources[1]);
    let mut answering = 0u64;
    let mut fin = None;
    let mut buf = Vec::new();
    let mut init = Some(init);
    while let Some(to) = b.poll_transmit(now, &mut buf) {
        if to == sources[1] && buf.first() == Some(&HS_RESP) && buf.len() > 25 {
            answering = u64::from_be_bytes(buf[9..17].try_into().expect("8 bytes"));
            if let Some(i) = init.take() {
                let (msg3, _) = i.finish(&buf[25..]).expect("genuine message 2");
                let mut f = vec![HS_FIN];
                f.extend_from_slice(&answering.to_be_bytes());
                f.extend_from_slice(&msg3);
                fin = Some(f);
            }
        }
    }
    assert!(answering != 0 && fin.is_some(), "B answered the genuine HS_INIT");

    let mut input = Input(data);
    while !input.is_empty() {
        let sel = input.byte();
        let len = usize::from(input.u16()).min(1500);
        if sel & 0x10 != 0 {
            if let Some(mut f) = fin.take() {
                b.handle_datagram(now, sources[1], &mut f);
            }
        }
        if sel & 0x08 != 0 {
            now = now.plus_nanos(len as u64 * 1_000_000);
            b.handle_timeout(now);
        } else {
            let from = sources[usize::from(sel & 3)];
            let mut dg = input.take(len).to_vec();
            if sel & 0x04 != 0 && dg.len() >= 9 {
                let cid = match dg[0] {
                    HS_RESP | COOKIE => dial,
                    HS_FIN | DATA => answering,
                    _ => INITIATOR_CID,
                };
                dg[1..9].copy_from_slice(&cid.to_be_bytes());
            }
            heard.insert(from);
            b.handle_datagram(now, from, &mut dg);
        }
        while let Some(to) = b.poll_transmit(now, &mut buf) {
            assert!(heard.contains(&to), "B sent to {to}, which never sent to it");
        }
        while b.poll_event().is_some() {}
        assert!(b.half_open() <= 64, "{} half-open handshakes", b.half_open());
        let _ = b.poll_timeout();
    }
    still_works(now, &mut b, b_addr, node_id(2));
});
