//! Web-like and interactive traffic: pages of many small objects over one
//! circuit load byte-exact, and echo round trips are measured, never
//! below the circuit's propagation round trip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use relay_netsim::output::{find_scenario, run};
use relay_netsim::traffic::Kind;

#[test]
fn pages_load_byte_exact_and_echoes_measure_round_trips() {
    let mut s = find_scenario("web").unwrap();
    s.duration_s = 30.0;
    for t in &mut s.traffic {
        t.stop_s = Some(15.0);
        if t.kind == "echo" {
            t.messages = 20;
        }
    }
    let r = run(s, 5, |_, _| {}).unwrap();
    let res = &r.results;
    assert_eq!(res.error_rate, 0.0, "errors: {:?}", res.errors);
    let web = res.web.as_ref().expect("web section");
    assert!(web.pages >= 20, "only {} pages", web.pages);
    assert_eq!(web.ok, web.pages);
    // The document plus 10 objects, each its own stream on the circuit.
    assert_eq!(web.objects_per_page.p50, 11.0);
    assert_eq!(web.object_ttlb_s.n, web.ok * 11);
    let echo = res.echo.as_ref().expect("echo section");
    assert!(echo.sessions >= 10, "only {} sessions", echo.sessions);
    assert_eq!(echo.ok, echo.sessions);
    assert_eq!(echo.messages, echo.sessions * 20);
    // Three hops of 2 x 10 ms each way: 120 ms of propagation per round
    // trip; a measured round trip can only be longer.
    assert!(echo.rtt_ms.p10 >= 120.0, "rtt p10 {}", echo.rtt_ms.p10);
    assert!(echo.rtt_ms.p50 < 400.0, "rtt p50 {}", echo.rtt_ms.p50);
    for t in &r.sim.traffic.transfers {
        if !t.finished {
            continue;
        }
        match &t.kind {
            Kind::Page(p) => {
                assert!(t.ok());
                for o in &p.objects {
                    assert!(o.done && o.received == o.size);
                }
                // The objects came after the document.
                let doc_end = p.objects[0].last_byte.unwrap();
                assert!(p.objects[1..].iter().all(|o| o.opened.unwrap() >= doc_end));
            }
            Kind::Echo(e) => assert_eq!(e.rtts.len(), e.messages),
            Kind::Download => assert!(t.ok()),
        }
    }
    // The CSV has a row per page and session, labelled.
    let csv = relay_netsim::results::transfers_csv(&r.sim);
    assert!(csv.contains(",page,") && csv.contains(",echo,"));
}
