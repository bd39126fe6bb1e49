//! The link model against closed forms, with the real kernel and udt core
//! on top: a bulk transfer fills a bottleneck to its configured rate, the
//! measured loss rate matches the configured one within sampling error,
//! and no datagram ever waits longer than queue size / bandwidth.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use relay_netsim::{Scenario, Sim};

fn one_link(extra: &str) -> String {
    format!(
        r#"
        name = "one-link"
        duration_s = 30
        [host_defaults]
        up_mbit = 0
        down_mbit = 0
        latency_ms = 5
        [[group]]
        name = "client"
        role = "client"
        [[group]]
        name = "server"
        role = "exit"
        [[traffic]]
        kind = "bulk"
        clients = "client"
        path = ["server"]
        {extra}
        "#
    )
}

fn run(text: &str, seed: u64) -> Sim {
    let s = Scenario::parse("inline", text).unwrap();
    let mut sim = Sim::new(s, seed).unwrap();
    sim.run(|_| {}).unwrap();
    sim
}

#[test]
fn bulk_transfer_reaches_the_configured_bandwidth() {
    // 20 Mbit/s, 20 ms RTT, a queue of about two bandwidth-delay products.
    let sim = run(
        &one_link(
            r#"
            size = 20000000
            [[pair]]
            a = "server"
            b = "client"
            bandwidth_mbit = 20
            queue_kib = 100
            "#,
        ),
        1,
    );
    let t = &sim.traffic.transfers[0];
    assert!(t.ok(), "{t:?}");
    let (server, client) = (
        sim.host_named("server").unwrap(),
        sim.host_named("client").unwrap(),
    );
    let b = &sim.net.path_ref(server, client).unwrap().bottleneck;
    // Wire throughput while the transfer ran (stream open to last byte):
    // the window is long enough that ramp-up is a small part.
    let secs = (t.last_byte.unwrap().since(t.opened.unwrap())) as f64 / 1e9;
    let wire_mbit = b.bytes as f64 * 8.0 / secs / 1e6;
    let goodput = t.size as f64 * 8.0 / secs / 1e6;
    eprintln!("wire {wire_mbit:.2} Mbit/s, goodput {goodput:.2} Mbit/s over {secs:.2} s");
    assert!(
        wire_mbit <= 20.0 * 1.01,
        "faster than the link: {wire_mbit}"
    );
    assert!(wire_mbit >= 20.0 * 0.95, "link not filled: {wire_mbit}");
}

#[test]
fn measured_loss_matches_configured_loss() {
    let p = 0.03;
    let sim = run(
        &one_link(&format!(
            r#"
            size = 5000000
            [[pair]]
            a = "server"
            b = "client"
            loss = {p}
            "#
        )),
        2,
    );
    assert!(sim.traffic.transfers[0].ok(), "transfer failed under loss");
    for ((a, b), path) in sim.net.paths() {
        let n = path.offered as f64;
        let measured = path.lost as f64 / n;
        let sigma = (p * (1.0 - p) / n).sqrt();
        eprintln!(
            "{a}->{b}: {} of {} lost ({measured:.4}), sigma {sigma:.4}",
            path.lost, path.offered
        );
        assert!(path.offered > 1000);
        assert!((measured - p).abs() <= 4.0 * sigma, "{measured} vs {p}");
    }
}

#[test]
fn queueing_delay_never_exceeds_queue_over_bandwidth() {
    // Four parallel transfers into a 10 Mbit/s downlink with a 64 KiB
    // queue: the queue fills and overflows.
    let sim = run(
        r#"
        name = "queue"
        duration_s = 20
        [host_defaults]
        up_mbit = 0
        down_mbit = 0
        latency_ms = 10
        [[group]]
        name = "client"
        role = "client"
        down_mbit = 10
        queue_kib = 64
        [[group]]
        name = "server"
        role = "exit"
        [[traffic]]
        kind = "bulk"
        clients = "client"
        path = ["server"]
        size = 3000000
        parallel = 4
        "#,
        3,
    );
    let client = sim.host_named("client").unwrap();
    let down = &sim.net.down[client];
    let bound = down.max_queue_delay();
    eprintln!(
        "max queueing delay {} ns, bound {bound} ns, {} drops",
        down.queue_delay.max(),
        down.dropped
    );
    assert!(bound > 0);
    assert!(down.queue_delay.max() <= bound);
    assert!(
        down.queue_delay.max() >= bound / 2,
        "the queue never filled"
    );
    for b in sim.net.up.iter().chain(&sim.net.down) {
        assert!(b.queue_delay.max() <= b.max_queue_delay().max(1) || !b.limited());
    }
    assert!(sim.traffic.transfers.iter().all(|t| t.ok()));
}

/// Eight bulk circuits into a 20 Mbit/s downlink with a 512 KiB buffer
/// (210 ms at that rate), drop-tail and then CoDel. The links run CUBIC:
/// the question is what the queue discipline does with loss-based
/// senders, which fill whatever buffer they get (BBR, udt's default, does
/// not fill it, so it would say nothing about drop-tail).
fn codel_run(aqm: &str) -> Sim {
    run(
        &format!(
            r#"
        name = "aqm"
        duration_s = 20
        cc = "cubic"
        [host_defaults]
        up_mbit = 0
        down_mbit = 0
        latency_ms = 10
        [[group]]
        name = "client"
        role = "client"
        down_mbit = 20
        queue_kib = 512
        aqm = "{aqm}"
        [[group]]
        name = "server"
        role = "exit"
        [[traffic]]
        kind = "bulk"
        clients = "client"
        path = ["server"]
        size = 100000000
        parallel = 8
        timeout_s = 100
        "#
        ),
        4,
    )
}

#[test]
fn codel_keeps_the_standing_queue_near_target_where_drop_tail_fills_the_buffer() {
    let tail = codel_run("droptail");
    let codel = codel_run("codel");
    let client = tail.host_named("client").unwrap();
    let (t, c) = (&tail.net.down[client], &codel.net.down[client]);
    let ms = |ns: u64| ns as f64 / 1e6;
    let bound = ms(t.max_queue_delay());
    eprintln!(
        "drop-tail: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms (bound {bound:.0} ms), {} drops",
        ms(t.queue_delay.quantile(0.5)),
        ms(t.queue_delay.quantile(0.9)),
        ms(t.queue_delay.max()),
        t.dropped
    );
    eprintln!(
        "codel: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms, {} drops ({} by CoDel)",
        ms(c.queue_delay.quantile(0.5)),
        ms(c.queue_delay.quantile(0.9)),
        ms(c.queue_delay.max()),
        c.dropped,
        c.aqm_dropped
    );
    // Drop-tail: the loss-based senders fill the buffer.
    assert!(ms(t.queue_delay.quantile(0.5)) > bound / 2.0);
    assert_eq!(t.aqm_dropped, 0);
    // CoDel: the standing queue stays near its 5 ms target (within a few
    // targets at the median) and it did the dropping.
    assert!(c.aqm_dropped > 0 && c.aqm_dropped == c.dropped);
    assert!(ms(c.queue_delay.quantile(0.5)) < 15.0);
    // And the link is still used: at least 90% of drop-tail's bytes.
    assert!(
        c.bytes as f64 >= 0.9 * t.bytes as f64,
        "{} vs {}",
        c.bytes,
        t.bytes
    );
}
