//! Same scenario and seed: byte-identical results.json and transfers.csv;
//! another seed: different ones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use relay_netsim::output::{find_scenario, run};
use relay_netsim::results::transfers_csv;

fn outputs(seed: u64) -> (String, String) {
    let mut s = find_scenario("quick").unwrap();
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

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let (json1, csv1) = outputs(11);
    let (json2, csv2) = outputs(11);
    assert!(csv1.lines().count() > 5, "too few transfers:\n{csv1}");
    assert_eq!(json1, json2, "results.json differs between identical runs");
    assert_eq!(csv1, csv2, "transfers.csv differs between identical runs");
    let (json3, csv3) = outputs(12);
    assert_ne!(json1, json3);
    assert_ne!(csv1, csv3);
}
