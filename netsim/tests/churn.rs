//! Crash and restart: transfers through a crashed relay fail, and once
//! peers have noticed (udt idle timeout) new transfers succeed again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use relay_netsim::output::run;
use relay_netsim::Scenario;

#[test]
fn transfers_recover_after_relays_crash_and_restart() {
    let s = Scenario::parse(
        "inline",
        r#"
        name = "mini-churn"
        duration_s = 90
        [host_defaults]
        up_mbit = 50
        down_mbit = 50
        latency_ms = 10
        [[group]]
        name = "relay"
        count = 4
        role = "relay"
        [[group]]
        name = "exit"
        count = 2
        role = "exit"
        [[group]]
        name = "client"
        count = 6
        role = "client"
        [[traffic]]
        kind = "perf"
        clients = "client"
        pause_s = 1
        sizes = [[51200, 1]]
        timeouts_s = [10]
        stop_s = 75
        [[crash]]
        group = "relay"
        fraction = 0.5
        at_s = 10
        restart_after_s = 10
        [report]
        after_s = 45
        "#,
    )
    .unwrap();
    let r = run(s, 5, |_, _| {}).unwrap();
    let res = &r.results;
    eprintln!(
        "errors {:?}, recovery {:?}",
        res.errors,
        res.recovery.as_ref().map(|x| x.success_rate)
    );
    assert_eq!(res.crashes, 2);
    assert!(
        res.links.to_dead_host > 0,
        "nothing reached the crashed relays"
    );
    let rec = res.recovery.as_ref().unwrap();
    assert!(
        rec.finished >= 30,
        "only {} transfers after recovery",
        rec.finished
    );
    assert_eq!(
        rec.ok, rec.finished,
        "failures after recovery: {:?}",
        res.errors
    );
}
