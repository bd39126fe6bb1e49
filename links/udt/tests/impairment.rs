//! The udt protocol core under a simulated link in virtual time: random and
//! bursty loss, reordering, duplication, a small bottleneck queue. Delivery
//! stays byte-exact and in order per circuit, memory stays bounded, and a
//! lost datagram delays only the circuits whose cells it carried.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use relay_kernel::Time;
use relay_link::{Identity, StaticKey};
use relay_link_udt::cc::CongestionKind;
use relay_link_udt::conn::ConnConfig;
use relay_link_udt::endpoint::{Endpoint, EndpointConfig};
use relay_link_udt::pathsim::{long_fat, PathModel, Sim, SEC};

fn cc_config(cc: CongestionKind) -> EndpointConfig {
    EndpointConfig {
        conn: ConnConfig {
            cc,
            ..ConnConfig::default()
        },
        ..EndpointConfig::default()
    }
}

/// UDT's rate control fills a clean 50 MB/s, 20 ms RTT path.
#[test]
fn udt_rate_fills_a_clean_path() {
    let model = PathModel::default();
    let mut sim = Sim::new(model, model, 11, cc_config(CongestionKind::UdtRate)).unwrap();
    sim.bulk(8 * SEC, None).unwrap();
    let g = sim.goodput(100, 4 * SEC, 8 * SEC);
    let rate = model.rate as f64;
    eprintln!(
        "udt rate, clean path: {g:.0} B/s of {rate:.0} ({:.0}%), lost {} of {}",
        100.0 * g / rate,
        sim.ab.lost,
        sim.ab.sent
    );
    assert!(g > 0.8 * rate, "{g} of {rate}");
}

/// Under 1% random loss UDT's rate control keeps more of the path than
/// CUBIC (each loss event takes 1/9 of the rate, not 3/10), without
/// flooding the bottleneck queue: the loss stays the path's random loss.
/// It is still a loss-driven scheme: nearly every random loss opens a
/// congestion period, so the rate settles where the decreases balance the
/// increase (about `sqrt(9 x increase / p)`), a few percent of the path.
#[test]
fn udt_rate_stays_within_bounds_under_one_percent_loss() {
    let model = PathModel {
        loss: 0.01,
        ..PathModel::default()
    };
    let run = |cc| relay_link_udt::pathsim::bulk_goodput(model, cc, 8192, 20, 12).unwrap();
    let (udt, cubic) = (run(CongestionKind::UdtRate), run(CongestionKind::Cubic));
    let rate = model.rate as f64;
    let lost = udt.lost as f64 / udt.sent as f64;
    eprintln!(
        "udt rate, 1% loss: {:.0} B/s of {rate:.0} ({:.1}%) in the last 60% of 20 s; cubic {:.0} B/s; datagrams lost {:.2}%",
        udt.steady,
        100.0 * udt.steady / rate,
        cubic.steady,
        100.0 * lost,
    );
    assert!(
        udt.steady > cubic.steady && udt.steady < rate,
        "udt {udt:?}, cubic {cubic:?}, path {rate}"
    );
    assert!(lost < 0.015, "the sender overflows the queue: {lost}");
}

/// Two UDT-rate connections share a 100 Mbit/s bottleneck; the second
/// starts 2 s after the first, and they end up with similar rates.
#[test]
fn udt_rate_is_fair_to_itself() {
    let model = PathModel {
        rate: 12_500_000,
        queue_bytes: 250_000,
        ..PathModel::default()
    };
    let mut sim = Sim::new(model, model, 13, cc_config(CongestionKind::UdtRate)).unwrap();
    sim.bulk(40 * SEC, Some(2 * SEC)).unwrap();
    let (g1, g2) = (
        sim.goodput(100, 20 * SEC, 40 * SEC),
        sim.goodput(101, 20 * SEC, 40 * SEC),
    );
    let rate = model.rate as f64;
    let jain = (g1 + g2).powi(2) / (2.0 * (g1 * g1 + g2 * g2));
    eprintln!(
        "udt rate, two flows: {g1:.0} and {g2:.0} B/s of {rate:.0}, Jain index {jain:.3}, lost {} of {}",
        sim.ab.lost, sim.ab.sent
    );
    assert!(g1 + g2 > 0.7 * rate, "together {} of {rate}", g1 + g2);
    assert!(g1.min(g2) > 0.5 * g1.max(g2), "unfair: {g1} vs {g2}");
}

/// The goodput target, scaled down for the test profile: a
/// 200 Mbit/s path with the target's 100 ms RTT and 1% random loss both
/// ways, 6 s per controller, one circuit, a 32,768-cell receive window
/// (2.7 BDP). BBR keeps at least half the path once out of Startup; the
/// loss-driven controllers (CUBIC, UDT's rate control) fall far short.
/// The full-size run (1 Gbit/s) is the `udtpath` bench binary
/// (docs/benchmarks.md).
#[test]
fn goodput_on_a_long_fat_path_with_one_percent_loss() {
    let model = PathModel {
        rate: 25_000_000,
        ..long_fat(0.01)
    };
    let rate = model.rate as f64;
    let run = |cc| {
        let r = relay_link_udt::pathsim::bulk_goodput(model, cc, 32_768, 6, 31).unwrap();
        eprintln!(
            "200 Mbit/s, 100 ms RTT, 1% loss, {cc}: {:.1} Mbit/s whole run, {:.1} Mbit/s ({:.0}%) in the last 60%; {} of {} datagrams lost",
            r.whole * 8e-6,
            r.steady * 8e-6,
            100.0 * r.steady / rate,
            r.lost,
            r.sent
        );
        r
    };
    let bbr = run(CongestionKind::Bbr);
    let cubic = run(CongestionKind::Cubic);
    let udt = run(CongestionKind::UdtRate);
    assert!(bbr.steady >= 0.5 * rate, "bbr {} of {rate}", bbr.steady);
    assert!(bbr.whole > 5.0 * cubic.whole.max(udt.whole));
}

fn run(model: PathModel, seed: u64) -> Sim {
    let mut sim = Sim::new(
        model,
        PathModel {
            loss: model.loss,
            burst: model.burst,
            ..PathModel::default()
        },
        seed,
        EndpointConfig::default(),
    )
    .unwrap();
    sim.transfer(&[1, 2, 3, 4], 2500, 3, 120_000_000_000)
        .unwrap();
    sim
}

fn report(name: &str, sim: &mut Sim) {
    let secs = sim.now.nanos() as f64 / 1e9;
    eprintln!(
        "{name}: {} cells in {secs:.2} s virtual, {} of {} datagrams lost a->b, max buffered at b {}, retransmitted {}",
        sim.deliveries.len(),
        sim.ab.lost,
        sim.ab.sent,
        sim.max_buffered,
        sim.a.conn(&"10.0.0.2:1".parse().unwrap()).map_or(0, |c| c.retransmitted_cells),
    );
}

#[test]
fn exact_delivery_with_one_percent_loss() {
    let mut sim = run(
        PathModel {
            loss: 0.01,
            ..PathModel::default()
        },
        1,
    );
    report("1% loss", &mut sim);
    assert!(sim.ab.lost > 0);
    assert!(sim.max_buffered <= 8192);
}

/// Goodput (cell bytes per second) of a bulk transfer over a 50 MB/s,
/// 20 ms RTT path with 1% random loss both ways, with controller `cc`.
fn lossy_goodput(cc: CongestionKind, per_circuit: u32) -> f64 {
    let model = PathModel {
        loss: 0.01,
        ..PathModel::default()
    };
    let cfg = EndpointConfig {
        conn: ConnConfig {
            cc,
            ..ConnConfig::default()
        },
        ..EndpointConfig::default()
    };
    let mut sim = Sim::new(model, model, 7, cfg).unwrap();
    sim.transfer(&[1, 2, 3, 4], per_circuit, 3, 600_000_000_000)
        .unwrap();
    report(&format!("{cc} at 1% loss"), &mut sim);
    let first = sim.deliveries.first().map_or(0, |d| d.0.nanos());
    let last = sim.deliveries.last().map_or(0, |d| d.0.nanos());
    sim.deliveries.len() as f64 * 514.0 * 1e9 / (last - first).max(1) as f64
}

/// The real udt core: with BBR, 1% random loss keeps most of the path's
/// rate; CUBIC takes every loss for congestion.
#[test]
fn bbr_keeps_the_rate_under_random_loss() {
    let bbr = lossy_goodput(CongestionKind::Bbr, 25_000);
    let cubic = lossy_goodput(CongestionKind::Cubic, 2_500);
    let rate = PathModel::default().rate as f64;
    eprintln!("goodput: bbr {bbr:.0} B/s, cubic {cubic:.0} B/s, path {rate:.0} B/s");
    assert!(bbr > 0.6 * rate, "bbr {bbr} of {rate}");
    assert!(bbr > 5.0 * cubic, "bbr {bbr} vs cubic {cubic}");
}

#[test]
fn exact_delivery_with_five_percent_loss() {
    let mut sim = run(
        PathModel {
            loss: 0.05,
            ..PathModel::default()
        },
        2,
    );
    report("5% loss", &mut sim);
    assert!(sim.ab.lost > sim.ab.sent / 40);
    assert!(sim.max_buffered <= 8192);
}

#[test]
fn exact_delivery_with_bursty_loss() {
    let mut sim = run(
        PathModel {
            burst: Some((0.01, 0.3, 0.8)),
            ..PathModel::default()
        },
        3,
    );
    report("bursty loss", &mut sim);
    assert!(sim.ab.lost > 0);
}

#[test]
fn exact_delivery_with_reordering_and_duplication() {
    let mut sim = run(
        PathModel {
            reorder: 0.2,
            duplicate: 0.05,
            ..PathModel::default()
        },
        4,
    );
    report("reorder+dup", &mut sim);
}

/// A bulk transfer over a path that delays 30% of datagrams by up to
/// 3 ms (reordering by up to ~100 packets at 50 MB/s), no loss; returns
/// spurious (packets, cells), cells retransmitted, the final packet
/// threshold and the goodput.
fn heavy_reordering(adaptive: bool) -> ((u64, u64), u64, u64, f64) {
    let model = PathModel {
        reorder: 0.3,
        ..PathModel::default()
    };
    let cfg = EndpointConfig {
        conn: ConnConfig {
            adaptive_reordering: adaptive,
            ..ConnConfig::default()
        },
        ..EndpointConfig::default()
    };
    let mut sim = Sim::new(model, PathModel::default(), 21, cfg).unwrap();
    sim.transfer(&[1, 2, 3, 4], 10_000, 3, 120_000_000_000)
        .unwrap();
    let first = sim.deliveries.first().map_or(0, |d| d.0.nanos());
    let last = sim.deliveries.last().map_or(0, |d| d.0.nanos());
    let goodput = sim.deliveries.len() as f64 * 514.0 * 1e9 / (last - first).max(1) as f64;
    let b_addr = sim.b_addr;
    let conn = sim.a.conn_ref(&b_addr).unwrap();
    (
        conn.spurious(),
        conn.retransmitted_cells,
        conn.reorder_threshold(),
        goodput,
    )
}

/// With heavy reordering and no loss, every retransmission is spurious;
/// the adaptive thresholds make far fewer than the fixed ones, delivery is
/// exact either way (the transfer checks every cell).
#[test]
fn adaptive_reordering_threshold_avoids_spurious_retransmissions() {
    let (fixed, fixed_retx, fixed_thr, fixed_g) = heavy_reordering(false);
    let (adaptive, adaptive_retx, adaptive_thr, adaptive_g) = heavy_reordering(true);
    eprintln!(
        "heavy reordering: fixed threshold {fixed_thr}: spurious {fixed:?}, retransmitted {fixed_retx} cells, {fixed_g:.0} B/s; \
         adaptive (now {adaptive_thr}): spurious {adaptive:?}, retransmitted {adaptive_retx} cells, {adaptive_g:.0} B/s"
    );
    assert_eq!(fixed_thr, 3);
    assert!(adaptive_thr > 3);
    assert!(fixed.1 > 300, "the path did not reorder enough: {fixed:?}");
    // No loss: whatever was resent, was resent for nothing.
    assert_eq!((fixed.1, adaptive.1), (fixed_retx, adaptive_retx));
    assert!(
        adaptive.1 * 5 < fixed.1,
        "adaptive {adaptive:?} vs fixed {fixed:?}"
    );
    // Spurious losses also cut the congestion window for nothing.
    assert!(adaptive_g > fixed_g);
}

#[test]
fn exact_delivery_through_a_small_bottleneck_queue() {
    let mut sim = run(
        PathModel {
            rate: 5_000_000,
            queue_bytes: 30_000,
            ..PathModel::default()
        },
        5,
    );
    report("small queue", &mut sim);
    assert!(sim.ab.lost > 0, "the queue never overflowed");
}

/// A clean path whose first data datagram is lost (datagram 0 is the
/// handshake's message 1, 1 its message 3, 2 the first data datagram).
fn losing_the_first_data_datagram(seed: u64) -> Sim {
    let mut sim = Sim::new(
        PathModel::default(),
        PathModel::default(),
        seed,
        EndpointConfig::default(),
    )
    .unwrap();
    sim.ab.drop_these = vec![2];
    sim
}

#[test]
fn a_lost_datagram_delays_only_its_circuit() {
    // Cells leave in pairs per circuit (2 per datagram): datagram k carries
    // circuit 1 for even k and circuit 2 for odd k. The first data
    // datagram, circuit 1's cells 0 and 1, is lost.
    let mut sim = losing_the_first_data_datagram(6);
    sim.transfer(&[1, 2], 400, 2, 10_000_000_000).unwrap();
    let first = |circ: u32, idx: u32| sim.delivered_at(circ, idx).unwrap();
    let c1_first = first(1, 0);
    let c2_before = sim
        .deliveries
        .iter()
        .filter(|(t, c, _)| *c == 2 && *t < c1_first)
        .count();
    eprintln!(
        "circuit 1 waited until {c1_first:?}; circuit 2 delivered {c2_before} cells meanwhile"
    );
    assert!(
        c1_first > first(2, 0),
        "circuit 1 was not delayed: the drop missed it"
    );
    assert!(
        c2_before >= 2,
        "circuit 2 was held back by circuit 1's loss"
    );
}

/// The cells a loss held back report how long they waited, so circuit
/// congestion control can tell that wait from queueing: the retransmitted
/// cells and the first held one waited the longest, later held ones less,
/// and cells of the other circuit and cells after the gap not at all.
#[test]
fn held_cells_report_their_reordering_wait() {
    let mut sim = losing_the_first_data_datagram(6);
    let start = sim.now;
    sim.transfer(&[1, 2], 400, 2, 10_000_000_000).unwrap();
    let delivered_at = |circ: u32, idx: u32| sim.delivered_at(circ, idx).unwrap();
    let wait = |circ: u32, idx: u32| sim.reorder_waits.get(&(circ, idx)).copied().unwrap_or(0);
    let released_at = delivered_at(1, 0);
    let held: Vec<u32> = (0..400)
        .take_while(|&i| delivered_at(1, i) == released_at)
        .collect();
    let waits: Vec<u32> = held.iter().map(|&i| wait(1, i)).collect();
    eprintln!(
        "{} cells released together at {released_at:?}; waits (us) {:?}",
        held.len(),
        &waits[..waits.len().min(8)]
    );
    assert!(held.len() > 2, "nothing was held behind the loss");
    let longest = waits[0];
    assert!(longest > 0, "the retransmitted cell reported no wait");
    // Not longer than the whole transfer took to release them.
    assert!(
        u64::from(longest) * 1000 <= released_at.since(start),
        "{longest} us"
    );
    // Cells 0 and 1 (the lost datagram's) count from cell 2's arrival.
    assert_eq!(waits[1], longest);
    assert_eq!(waits[2], longest);
    assert!(waits.windows(2).all(|w| w[1] <= w[0]), "{waits:?}");
    let after = held.len() as u32;
    assert!(
        (after..400).all(|i| wait(1, i) == 0),
        "cells after the gap waited"
    );
    assert!((0..400).all(|i| wait(2, i) == 0), "circuit 2 waited");
}

/// A cell's wait from earlier links goes with it over the link (and with
/// its retransmission) and grows by what it waits here.
#[test]
fn a_cells_reordering_wait_crosses_the_link() {
    // The cells' first datagram is lost: they go again.
    let mut sim = losing_the_first_data_datagram(7);
    while sim.a.conn(&sim.b_addr).is_none() {
        sim.step().unwrap();
    }
    for i in 0..4 {
        let mut c = relay_link_udt::pathsim::cell(9, i);
        c.add_reorder_wait_us(1000 + i);
        sim.a.conn(&sim.b_addr).unwrap().queue_cell(c);
    }
    while sim.deliveries.len() < 4 {
        assert!(sim.now.nanos() < 10_000_000_000, "not delivered");
        sim.step().unwrap();
    }
    for i in 0..4 {
        let w = sim.reorder_waits.get(&(9, i)).copied().unwrap_or(0);
        assert!(w >= 1000 + i, "cell {i}: {w}");
    }
}

#[test]
fn handshake_flood_is_answered_with_cookies_and_no_state() {
    let key = StaticKey::new(&Identity::from_secret([2; 32])).unwrap();
    let mut b = Endpoint::new(key, EndpointConfig::default(), [2; 32]);
    let now = Time(5);
    // 1000 different sources send a real message 1 each.
    let a_key = StaticKey::new(&Identity::from_secret([1; 32])).unwrap();
    let b_id = Identity::from_secret([2; 32]).node_id();
    let mut cookies = 0;
    let mut out = Vec::new();
    for i in 0..1000u32 {
        let (_, m1) = relay_link::Initiator::start(&a_key, b_id).unwrap();
        // HS_INIT: type, initiator's connection id, instance, no cookie.
        let mut dg = vec![1u8];
        dg.extend_from_slice(&u64::from(i + 1).to_be_bytes());
        dg.extend_from_slice(&7u64.to_be_bytes());
        dg.push(0);
        dg.extend_from_slice(&m1);
        let from: SocketAddr = format!("10.1.{}.{}:7", i / 250, i % 250).parse().unwrap();
        b.handle_datagram(now, from, &mut dg);
        while b.poll_transmit(now, &mut out).is_some() {
            if out[0] == 5 {
                cookies += 1;
            }
        }
    }
    assert_eq!(b.half_open(), 64, "state beyond the limit");
    assert_eq!(cookies, 1000 - 64);
    // A real client retrying with its cookie still gets in.
    let mut sim = Sim::new(
        PathModel::default(),
        PathModel::default(),
        7,
        EndpointConfig::default(),
    )
    .unwrap();
    sim.transfer(&[1], 10, 1, 5_000_000_000).unwrap();
}

/// A connection that may try datagrams up to `ceiling` bytes.
fn probing(ceiling: usize) -> EndpointConfig {
    EndpointConfig {
        conn: ConnConfig {
            max_datagram_probe: ceiling,
            ..ConnConfig::default()
        },
        ..EndpointConfig::default()
    }
}

/// Datagram size discovery on a path that carries at most 4,000 bytes:
/// the sender settles within one cell of that, every cell still arrives
/// exactly, and only probes are ever too large for the path.
#[test]
fn datagram_size_discovery_finds_the_path_limit() {
    let path = PathModel {
        max_datagram: 4000,
        ..PathModel::default()
    };
    let mut sim = Sim::new(path, path, 5, probing(8972)).unwrap();
    sim.transfer(&[1, 2, 3, 4], 10_000, 3, 120 * SEC).unwrap();
    report("path limit 4000", &mut sim);
    let b = "10.0.0.2:1".parse().unwrap();
    let conn = sim.a.conn(&b).unwrap();
    let (size, stats, resent) = (
        conn.max_datagram(),
        conn.mtu_stats(),
        conn.retransmitted_cells,
    );
    eprintln!("settled at {size} bytes: {stats:?}, {resent} cells resent");
    assert!((4000 - 519..=4000).contains(&size), "{size}");
    assert!(stats.lost >= 3 && stats.acked >= 1, "{stats:?}");
    assert_eq!(sim.ab.too_large, stats.lost);
    assert_eq!(sim.deliveries.len(), 40_000);
}

/// The same transfer on a clean path without a limit: the first probe (the
/// ceiling) passes and the data moves in a fifth of the datagrams.
#[test]
fn datagram_size_discovery_uses_the_ceiling_where_it_fits() {
    let path = PathModel::default();
    let mut fixed = Sim::new(path, path, 5, EndpointConfig::default()).unwrap();
    fixed.transfer(&[1, 2, 3, 4], 2500, 3, 120 * SEC).unwrap();
    report("no discovery", &mut fixed);
    let mut sim = Sim::new(path, path, 5, probing(8972)).unwrap();
    sim.transfer(&[1, 2, 3, 4], 2500, 3, 120 * SEC).unwrap();
    let b = "10.0.0.2:1".parse().unwrap();
    let conn = sim.a.conn(&b).unwrap();
    let stats = conn.mtu_stats();
    eprintln!(
        "datagrams a->b: {} at 1472 bytes, {} with discovery ({stats:?})",
        fixed.ab.sent, sim.ab.sent
    );
    assert_eq!(conn.max_datagram(), 8972);
    assert_eq!((stats.probes, stats.acked, stats.lost), (1, 1, 0));
    assert!(
        sim.ab.sent * 4 < fixed.ab.sent,
        "{} vs {}",
        sim.ab.sent,
        fixed.ab.sent
    );
}

/// A path whose limit drops below the discovered size mid-transfer (a
/// route change): the large datagrams vanish, the sender goes back to the
/// base size, and every cell still arrives exactly.
#[test]
fn datagram_size_falls_back_when_the_path_starts_dropping_large_ones() {
    let path = PathModel::default();
    let mut sim = Sim::new(path, path, 9, probing(8972)).unwrap();
    sim.transfer(&[1, 2], 2000, 4, 120 * SEC).unwrap();
    let b = "10.0.0.2:1".parse().unwrap();
    assert_eq!(sim.a.conn(&b).unwrap().max_datagram(), 8972);
    sim.ab.model.max_datagram = 1500;
    sim.transfer(&[3, 4], 2000, 4, 240 * SEC).unwrap();
    report("limit dropped to 1500", &mut sim);
    let conn = sim.a.conn(&b).unwrap();
    let stats = conn.mtu_stats();
    eprintln!("after the drop: {} bytes, {stats:?}", conn.max_datagram());
    assert_eq!(conn.max_datagram(), 1472);
    assert_eq!(stats.black_holes, 1);
    assert_eq!(sim.deliveries.len(), 8000);
}

/// The handshake's datagrams fit the smallest MTU IPv6 guarantees (1,280
/// bytes: 1,232 of UDP payload), so a link can come up on any path before
/// datagram size discovery has proven anything.
#[test]
fn handshake_datagrams_fit_the_ipv6_minimum_mtu() {
    let path = PathModel::default();
    let mut sim = Sim::new(path, path, 3, EndpointConfig::default()).unwrap();
    // One cell, so the handshake completes and data flows once.
    sim.transfer(&[1], 1, 1, 10 * SEC).unwrap();
    eprintln!(
        "largest datagram: a->b {} bytes, b->a {} bytes",
        sim.ab.largest, sim.ba.largest
    );
    assert!(sim.ab.largest <= 1232 && sim.ba.largest <= 1232);
}
