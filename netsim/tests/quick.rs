//! The shipped `quick` scenario: every transfer completes, byte-exact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use relay_netsim::output::{find_scenario, run};

#[test]
fn quick_scenario_completes_every_transfer_byte_exact() {
    let s = find_scenario("quick").unwrap();
    let r = run(s, 1, |_, _| {}).unwrap();
    let res = &r.results;
    assert!(res.transfers >= 20, "only {} transfers", res.transfers);
    assert_eq!(res.unfinished, 0, "transfers still running at the end");
    assert_eq!(res.ok, res.transfers, "errors: {:?}", res.errors);
    for t in &r.sim.traffic.transfers {
        assert!(
            t.ok() && t.received == t.size,
            "transfer {} incomplete",
            t.id
        );
        assert!(t.first_byte.is_some() && t.last_byte.is_some());
    }
    // Every size label was exercised and the network did relay.
    assert_eq!(res.by_size.len(), 2);
    assert!(res.relays.cells_relayed > 0);
}

/// `quick` over another link kind with 1% loss: every transfer byte-exact
/// and the link core did resend.
fn quick_over(link: &str) {
    let mut s = find_scenario("quick").unwrap();
    s.link = link.into();
    s.set_loss(0.01);
    let r = run(s, 3, |_, _| {}).unwrap();
    let res = &r.results;
    assert!(res.transfers >= 20, "only {} transfers", res.transfers);
    assert_eq!(res.ok, res.transfers, "errors: {:?}", res.errors);
    assert!(
        res.links.retransmitted_cells > 0,
        "1% loss but nothing resent"
    );
    assert_eq!(res.links.kind, link);
    for t in &r.sim.traffic.transfers {
        assert!(t.ok() && t.received == t.size, "{link}: transfer {}", t.id);
    }
}

#[test]
fn quick_scenario_over_the_tcp_model_is_byte_exact_too() {
    quick_over("tcp-model");
}

#[test]
fn quick_scenario_over_quic_is_byte_exact_too() {
    quick_over("quic");
}

#[test]
fn quick_scenario_over_smoltcp_is_byte_exact_too() {
    quick_over("tcp");
}
