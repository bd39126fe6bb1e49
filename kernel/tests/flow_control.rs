//! Flow and congestion control, end to end per circuit: senders fill long
//! fat paths (no fixed window), relay queues stay bounded when a link is
//! slow or a reader stalls, and a sender that ignores congestion control is
//! cut off by the relay's per-circuit bound without hurting others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use relay_kernel::flow::CcParams;
use relay_kernel::*;

/// Cell payload per DATA cell from the exit (inbound).
const DATA_PER_CELL: f64 = 488.0;

/// Every node runs `algorithm` with otherwise default settings.
fn net_with(algorithm: flow::CcAlgorithm, nodes: usize, seed: u64) -> Net {
    let config = NodeConfig {
        cc: CcParams {
            algorithm,
            ..CcParams::default()
        },
        ..NodeConfig::default()
    };
    Net::with_node_configs(nodes, seed, |_| config)
}

const BOTH: [flow::CcAlgorithm; 2] = [flow::CcAlgorithm::Vegas, flow::CcAlgorithm::Bbr];

#[test]
fn fills_a_long_fat_path_beyond_any_fixed_window() {
    for algorithm in BOTH {
        fills_a_long_fat_path(algorithm);
    }
}

fn fills_a_long_fat_path(algorithm: flow::CcAlgorithm) {
    // 3 hops, 50 ms per link (300 ms RTT), bottleneck 100 cells/ms (about
    // 49 MB/s) on the last link towards the client. BDP = 30,000 cells: a
    // Tor-style fixed 1000-cell window would reach about 3% of it.
    let mut net = net_with(algorithm, 4, 21);
    net.latency = 50_000_000;
    let c = net.build_ready(0, &[1, 2, 3]);
    net.pipe(1, 0).rate = Some(100);
    let size = 40_000_000;
    net.start_download(0, c, size, 3);
    // Time from 10 MB received (slow start over) to the end.
    assert!(net.run_until(60_000, |n| n.senders[0].received.len() >= 10_000_000));
    let (t0, b0) = (net.now, net.senders[0].received.len());
    assert!(net.run_until(60_000, |n| n.all_senders_done()));
    assert!(net.senders[0].ok());
    let ms = net.now.since(t0) as f64 / 1e6;
    let cells_per_ms = (size - b0) as f64 / DATA_PER_CELL / ms;
    let q = net.nodes[1].stats().max_circuit_queue;
    eprintln!(
        "long fat path, {algorithm:?}: {cells_per_ms:.1} cells/ms of 100 after slow start; relay max queue {q}"
    );
    assert!(cells_per_ms > 75.0, "{cells_per_ms}");
    // Slow start's one overshoot is bounded by the path's BDP.
    assert!(q < 30_000, "{q}");
}

#[test]
fn slow_link_keeps_relay_queue_bounded() {
    for algorithm in BOTH {
        slow_link_bounded(algorithm);
    }
}

fn slow_link_bounded(algorithm: flow::CcAlgorithm) {
    let mut net = net_with(algorithm, 4, 22);
    let c = net.build_ready(0, &[1, 2, 3]);
    net.pipe(1, 0).rate = Some(5);
    net.start_echo(0, c, data(3_000_000, 4));
    assert!(net.run_until(100_000, |n| n.all_senders_done()));
    assert!(net.senders[0].ok());
    let q = net.nodes[1].stats().max_circuit_queue;
    eprintln!("slow link, {algorithm:?}: relay max queue {q} cells");
    let p = CcParams::default();
    // Startup may overshoot once; afterwards the controller holds the
    // queue near its target (Vegas: alpha..beta; BBR: a fraction of a BDP).
    assert!(q <= 2 * p.delta + 4 * flow::SENDME_INC, "{q}");
}

#[test]
fn stalled_reader_holds_bounded_buffers_then_completes() {
    for algorithm in BOTH {
        stalled_reader(algorithm);
    }
}

fn stalled_reader(algorithm: flow::CcAlgorithm) {
    let mut net = net_with(algorithm, 4, 23);
    let c = net.build_ready(0, &[1, 2, 3]);
    net.pipe(1, 0).rate = Some(20);
    net.clients_read = false;
    net.start_echo(0, c, data(8_000_000, 5));
    // Ten virtual seconds with nobody reading at the client.
    net.run_until(10_000, |_| false);
    let s = net.senders[0].stream;
    let buffered = net.nodes[0].stream_readable_len(s);
    let limits = stream::StreamLimits::default();
    let relay_q = net.nodes[1].stats().max_circuit_queue;
    let to_client = net.nodes[1].link_to(&net.nodes[0].id()).unwrap();
    let now_queued = net.nodes[1].queued_on(to_client);
    eprintln!("stalled reader, {algorithm:?}: client holds {buffered} bytes; relay max queue {relay_q}, now {now_queued}");
    // XOFF stopped the exit: the client holds its threshold plus what was
    // in flight, not the 8 MB.
    assert!(buffered >= limits.xoff_threshold, "{buffered}");
    assert!(buffered <= limits.xoff_threshold + 1000 * 488, "{buffered}");
    // The relay never held more than the congestion window allowed during
    // slow start, and holds nothing once XOFF took effect.
    assert!(relay_q <= 2000, "{relay_q}");
    assert!(net.nodes[0].stats().xoffs_sent >= 1);
    assert_eq!(now_queued, 0);
    // Everything still arrives once the reader wakes up.
    net.clients_read = true;
    assert!(net.run_until(100_000, |n| n.all_senders_done()));
    assert!(net.senders[0].ok());
}

#[test]
fn a_burst_above_the_xoff_threshold_does_not_stop_the_sender() {
    // A link that releases a circuit's cells all at once (as after a
    // retransmission on a lossy hop) can deliver more than the XOFF
    // threshold in one instant. The reader gets its turn right after and
    // reads everything, so no XOFF may go out: it would stop the exit for a
    // round trip for nothing.
    for algorithm in BOTH {
        let mut net = net_with(algorithm, 4, 25);
        net.latency = 10_000_000;
        let c = net.build_ready(0, &[1, 2, 3]);
        net.start_download(0, c, 40_000_000, 8);
        assert!(net.run_until(60_000, |n| n.senders[0].received.len() >= 10_000_000));
        // Hold the guard's link to the client for 40 ms, then let go.
        net.pipe(1, 0).rate = Some(0);
        net.run_until(40, |_| false);
        net.pipe(1, 0).rate = None;
        let mut largest_step = 0;
        for _ in 0..100 {
            let before = net.senders[0].received.len();
            net.step();
            largest_step = largest_step.max(net.senders[0].received.len() - before);
        }
        let threshold = stream::StreamLimits::default().xoff_threshold;
        let xoffs = net.nodes[0].stats().xoffs_sent;
        eprintln!("{algorithm:?}: largest burst {largest_step} bytes, {xoffs} XOFF");
        assert!(largest_step > threshold, "{largest_step}");
        assert_eq!(xoffs, 0);
        assert!(net.run_until(60_000, |n| n.all_senders_done()));
        assert!(net.senders[0].ok());
    }
}

#[test]
fn greedy_sender_is_cut_off_and_others_continue() {
    for algorithm in BOTH {
        greedy_sender_cut_off(algorithm);
    }
}

fn greedy_sender_cut_off(algorithm: flow::CcAlgorithm) {
    // Node 0 ignores congestion control (a huge fixed window); relays bound
    // each circuit's queue at 2000 cells. Node 4 behaves: its controller's
    // queue stays below the bound (BBR's Startup overshoot, with a base RTT
    // measured behind the greedy circuit's queue, reached 500 cells).
    let greedy = NodeConfig {
        // Vegas paces at cwnd / min RTT: with this window, not at all.
        cc: CcParams {
            algorithm: flow::CcAlgorithm::Vegas,
            cwnd_init: 100_000,
            cwnd_min: 100_000,
            cwnd_max: 100_000,
            ..CcParams::default()
        },
        ..NodeConfig::default()
    };
    let bounded = NodeConfig {
        max_queued_per_circuit: 2000,
        cc: CcParams {
            algorithm,
            ..CcParams::default()
        },
        ..NodeConfig::default()
    };
    let mut net = Net::with_node_configs(5, 24, |i| if i == 0 { greedy } else { bounded });
    let bad = net.build_ready(0, &[1, 2, 3]);
    let good = net.build_ready(4, &[1, 2, 3]);
    net.pipe(1, 2).rate = Some(10);
    let b = net.start_echo(0, bad, data(5_000_000, 6));
    let g = net.start_echo(4, good, data(1_000_000, 7));
    let done = net.run_until(100_000, |n| {
        n.senders[g].done() && closed_circuits(&n.events[0]).contains_key(&bad)
    });
    assert!(done);
    assert_eq!(
        closed_circuits(&net.events[0])[&bad],
        EndReason::ResourceLimit
    );
    assert!(!net.senders[b].ok());
    assert!(net.senders[g].ok());
    assert_eq!(net.nodes[1].stats().circuits_killed, 1);
}
