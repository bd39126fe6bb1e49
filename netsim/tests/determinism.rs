//! Same scenario and seed: byte-identical results.json and transfers.csv;
//! another seed: different ones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use relay_netsim::output::{find_scenario, run};
use relay_netsim::results::transfers_csv;

fn outputs(link: &str, seed: u64) -> (String, String) {
    let mut s = find_scenario("quick").unwrap();
    s.link = link.into();
    s.duration_s = 20.0;
    for t in &mut s.traffic {
        t.stop_s = Some(12.0);
    }
    let r = run(s, seed, |_, _| {}).unwrap();
    (
        serde_json::to_string_pretty(&r.results).unwrap(),
        transfers_csv(&r.sim),
    )
}

fn same_seed_same_bytes_other_seed_other_bytes(link: &str) {
    let (json1, csv1) = outputs(link, 11);
    let (json2, csv2) = outputs(link, 11);
    assert!(csv1.lines().count() > 5, "too few transfers:\n{csv1}");
    assert!(json1.contains(&format!("\"kind\": \"{link}\"")), "{json1}");
    assert_eq!(
        json1, json2,
        "{link}: results.json differs between identical runs"
    );
    assert_eq!(
        csv1, csv2,
        "{link}: transfers.csv differs between identical runs"
    );
    let (json3, csv3) = outputs(link, 12);
    assert_ne!(json1, json3);
    assert_ne!(csv1, csv3);
}

#[test]
fn udt_runs_are_deterministic() {
    same_seed_same_bytes_other_seed_other_bytes("udt");
}

/// quinn-proto and rustls draw on OS randomness and the clock unless told
/// otherwise: this catches any source netsim failed to seed.
#[test]
fn quic_runs_are_deterministic() {
    same_seed_same_bytes_other_seed_other_bytes("quic");
}

#[test]
fn tcp_model_runs_are_deterministic() {
    same_seed_same_bytes_other_seed_other_bytes("tcp-model");
}

#[test]
fn tcp_runs_are_deterministic() {
    same_seed_same_bytes_other_seed_other_bytes("tcp");
}
