//! Tampering: for every hop position and both directions, altered, replayed,
//! dropped and reordered cells tear the affected circuit down, no altered
//! byte reaches an application, and another circuit through the same relays
//! keeps working.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use relay_kernel::*;

#[derive(Clone, Copy, Debug)]
enum Attack {
    /// XOR the byte at this index (of the 514) with the mask.
    Flip(usize, u8),
    Replay,
    Drop,
    Reorder,
}

const HOPS: usize = 3;

/// Runs one attack on the `position`-th link of the path (0 = client to
/// first hop), outbound or inbound, and checks the outcome.
fn run(position: usize, outbound: bool, attack: Attack, seed: u64) {
    let label = format!("position {position} outbound {outbound} {attack:?}");
    let mut net = Net::new(HOPS + 1, seed);
    let path: Vec<usize> = (1..=HOPS).collect();
    let victim = net.build_ready(0, &path);
    let other = net.build_ready(0, &path);
    let ids = net.wire_ids(0, victim, &path);
    assert_eq!(ids.len(), HOPS, "{label}");
    let (a, b, id) = ids[position];
    let (from, to) = if outbound { (a, b) } else { (b, a) };
    let mut seen = 0u32;
    net.pipe(from, to).hook = Some(Box::new(move |cell: &mut Cell| {
        if cell.raw_circ_id() != id || cell.raw_command() != CellCommand::Relay as u8 {
            return Action::Pass;
        }
        seen += 1;
        if seen != 40 {
            return Action::Pass;
        }
        match attack {
            Attack::Flip(at, mask) => {
                let mut raw = cell.as_bytes().to_vec();
                raw[at] ^= mask;
                *cell = Cell::from_slice(&raw).unwrap_or_else(|_| unreachable!());
                Action::Pass
            }
            Attack::Replay => Action::Duplicate,
            Attack::Drop => Action::Drop,
            Attack::Reorder => Action::HoldOne,
        }
    }));
    let v = net.start_echo(0, victim, data(150_000, seed));
    let o = net.start_echo(0, other, data(150_000, seed + 1));
    let finished = net.run_until(20_000, |n| {
        closed_circuits(&n.events[0]).contains_key(&victim) && n.senders[o].done()
    });
    assert!(
        finished,
        "{label}: victim closed {:?}",
        closed_circuits(&net.events[0])
    );
    // Nothing altered reached either application.
    assert_eq!(net.altered_at_exit, 0, "{label}");
    let vs = &net.senders[v];
    assert!(
        vs.data.starts_with(&vs.received),
        "{label}: altered bytes delivered to the client"
    );
    assert!(
        !vs.ok(),
        "{label}: the attacked transfer cannot have completed"
    );
    // The other circuit is untouched.
    assert!(net.senders[o].ok(), "{label}: other circuit damaged");
    assert!(
        !closed_circuits(&net.events[0]).contains_key(&other),
        "{label}"
    );
    // The next honest hop (outbound) or the client (inbound) detected it.
    let detector = if outbound { to } else { 0 };
    assert!(
        net.nodes[detector].stats().circuits_killed >= 1,
        "{label}: node {detector} did not detect it"
    );
    // The victim is gone from every relay; the other remains.
    net.run_until(200, |_| false);
    for hop in &path {
        assert_eq!(net.nodes[*hop].circuit_count(), 1, "{label}: node {hop}");
    }
}

/// Byte positions sampled across the cell: header (circuit id, command)
/// and body (outer tag, sealed region, padding region at the end).
const POSITIONS: [usize; 12] = [0, 3, 4, 5, 12, 20, 21, 100, 260, 430, 497, 513];

#[test]
fn flipped_bytes_are_detected_at_every_position() {
    for position in 0..HOPS {
        for outbound in [true, false] {
            for (k, at) in POSITIONS.iter().enumerate() {
                let mask = if k % 2 == 0 { 0x01 } else { 0x80 };
                run(position, outbound, Attack::Flip(*at, mask), 100 + k as u64);
            }
        }
    }
}

#[test]
fn replayed_dropped_and_reordered_cells_are_detected() {
    for position in 0..HOPS {
        for outbound in [true, false] {
            for attack in [Attack::Replay, Attack::Drop, Attack::Reorder] {
                run(position, outbound, attack, 7);
            }
        }
    }
}

#[test]
fn a_relay_cannot_forge_cells_for_later_hops() {
    // The middle relay replaces a whole forwarded cell with random bytes of
    // the right shape: the exit must reject it.
    let mut net = Net::new(4, 3);
    let c = net.build_ready(0, &[1, 2, 3]);
    let ids = net.wire_ids(0, c, &[1, 2, 3]);
    let (_, _, id) = ids[2];
    let mut n = 0;
    net.pipe(2, 3).hook = Some(Box::new(move |cell: &mut Cell| {
        if cell.raw_circ_id() == id && cell.raw_command() == CellCommand::Relay as u8 {
            n += 1;
            if n == 5 {
                let mut raw = cell.as_bytes().to_vec();
                for (i, b) in raw[5..].iter_mut().enumerate() {
                    *b = (i as u8).wrapping_mul(7);
                }
                *cell = Cell::from_slice(&raw).unwrap_or_else(|_| unreachable!());
            }
        }
        Action::Pass
    }));
    net.start_echo(0, c, data(50_000, 1));
    assert!(net.run_until(5000, |n| closed_circuits(&n.events[0]).contains_key(&c)));
    assert!(net.nodes[3].stats().circuits_killed >= 1);
    assert_eq!(net.altered_at_exit, 0);
}
