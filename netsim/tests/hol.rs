//! Head-of-line blocking by link kind: over one lossy link shared by many
//! circuits, quic keeps each circuit in its own order (a stream per
//! circuit) while TCP, real (smoltcp) or modelled, holds every circuit
//! behind a lost segment, so the typical cell waits longer on TCP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use relay_netsim::output::{find_scenario, run};

/// Median delay (ms) of cells over the `hol` scenario's lossy link.
fn median_cell_delay(link: &str) -> f64 {
    let mut s = find_scenario("hol").unwrap();
    s.link = link.into();
    s.duration_s = 12.0;
    let r = run(s, 1, |_, _| {}).unwrap();
    let p = &r.results.probes[0];
    assert!(p.all.samples > 1000, "{link}: {} cells", p.all.samples);
    assert!(p.lost_datagrams > 0, "{link}: nothing lost");
    p.all.p50_ms
}

#[test]
fn per_circuit_ordering_beats_tcp_links_at_the_median() {
    let quic = median_cell_delay("quic");
    let tcp = median_cell_delay("tcp");
    let model = median_cell_delay("tcp-model");
    eprintln!("median cell delay: quic {quic:.1} ms, tcp {tcp:.1} ms, tcp-model {model:.1} ms");
    // 20 ms of propagation: quic's median cell sees less than twice that.
    assert!(quic < 40.0, "quic {quic}");
    assert!(tcp > 1.5 * quic, "tcp {tcp} vs quic {quic}");
    assert!(model > 1.5 * quic, "tcp-model {model} vs quic {quic}");
}
