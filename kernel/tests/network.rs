//! End-to-end behaviour of the kernel over an in-memory network: circuits of
//! 1 to 8 hops, many streams, many circuits, and byte-exact transfers both
//! ways.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use proptest::prelude::*;
use relay_kernel::*;

#[test]
fn echo_over_every_path_length() {
    for hops in [1usize, 2, 3, 8] {
        let mut net = Net::new(hops + 1, hops as u64);
        let path: Vec<usize> = (1..=hops).collect();
        let c = net.build_ready(0, &path);
        assert_eq!(net.nodes[0].circuit_hops(c), Some(hops));
        net.start_echo(0, c, data(200_000, 1));
        assert!(
            net.run_until(20_000, |n| n.all_senders_done()),
            "hops={hops}"
        );
        assert!(net.senders[0].ok(), "hops={hops}");
        assert_eq!(net.senders[0].closed, Some(EndReason::Done));
        assert_eq!(net.altered_at_exit, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Any size from 0 to 10 MB crosses a 3-hop circuit and comes back
    /// byte-exact.
    #[test]
    fn any_size_round_trips(size in prop_oneof![
        0usize..2_000,
        2_000usize..200_000,
        200_000usize..=10_000_000,
    ], seed in any::<u64>()) {
        let mut net = Net::new(4, seed);
        let c = net.build_ready(0, &[1, 2, 3]);
        net.start_echo(0, c, data(size, seed));
        prop_assert!(net.run_until(200_000, |n| n.all_senders_done()));
        prop_assert!(net.senders[0].ok());
        prop_assert_eq!(net.altered_at_exit, 0);
    }
}

#[test]
fn ten_megabytes_each_way_over_three_hops() {
    let mut net = Net::new(4, 77);
    let c = net.build_ready(0, &[1, 2, 3]);
    net.start_echo(0, c, data(10_000_000, 77));
    assert!(net.run_until(200_000, |n| n.all_senders_done()));
    assert!(net.senders[0].ok());
}

#[test]
fn hundred_concurrent_streams_on_one_circuit() {
    let mut net = Net::new(4, 5);
    let c = net.build_ready(0, &[1, 2, 3]);
    for i in 0..100 {
        net.start_echo(0, c, data(1000 + i * 997, i as u64));
    }
    assert!(net.run_until(50_000, |n| n.all_senders_done()));
    for s in &net.senders {
        assert!(s.ok(), "stream {:?}", s.stream);
    }
    assert_eq!(net.altered_at_exit, 0);
}

#[test]
fn fifty_circuits_through_one_relay() {
    // Clients 0..5 each build 10 circuits through relay 5 to exits 6..8.
    let mut net = Net::new(9, 6);
    let mut circs = Vec::new();
    for i in 0..50 {
        let client = i % 5;
        let exit = 6 + i % 3;
        circs.push((client, net.build(client, &[5, exit])));
    }
    assert!(net.run_until(20_000, |n| {
        circs
            .iter()
            .all(|(cl, c)| n.events[*cl].contains(&Event::CircuitReady(*c)))
    }));
    for (i, (client, c)) in circs.iter().enumerate() {
        net.start_echo(*client, *c, data(50_000 + i * 13, i as u64));
    }
    assert!(net.run_until(50_000, |n| n.all_senders_done()));
    assert!(net.senders.iter().all(|s| s.ok()));
    let relay_circuits = net.nodes[5].circuits().iter().filter(|c| !c.origin).count();
    assert_eq!(relay_circuits, 50);
    assert_eq!(net.altered_at_exit, 0);
}

#[test]
fn circuit_count_cleans_up_after_close() {
    let mut net = Net::new(4, 8);
    let c = net.build_ready(0, &[1, 2, 3]);
    assert_eq!(net.nodes[2].circuit_count(), 1);
    let now = net.now;
    net.nodes[0].close_circuit(now, c).unwrap();
    net.run_until(1000, |n| {
        n.nodes[1..].iter().all(|x| x.circuit_count() == 0)
    });
    for i in 0..4 {
        assert_eq!(net.nodes[i].circuit_count(), 0, "node {i}");
    }
    assert_eq!(
        closed_circuits(&net.events[0]).get(&c),
        Some(&EndReason::Done)
    );
}

#[test]
fn exit_refusal_and_resolve_and_datagrams() {
    let mut net = Net::new(3, 9);
    let c = net.build_ready(0, &[1, 2]);
    let now = net.now;
    // Refused by the exit's application (its policy): END(ExitPolicy).
    let refused = net.nodes[0]
        .open_stream(
            now,
            c,
            StreamKind::Tcp,
            &TargetAddr::Host("refuse.example".into(), 80),
        )
        .unwrap();
    let r = net.nodes[0].resolve(now, c, "name.example").unwrap();
    net.run_until(1000, |n| {
        n.events[0].contains(&Event::StreamClosed {
            stream: refused,
            reason: EndReason::ExitPolicy,
        }) && n.events[2]
            .iter()
            .any(|e| matches!(e, Event::ResolveRequest { .. }))
    });
    assert!(net.events[0].contains(&Event::StreamClosed {
        stream: refused,
        reason: EndReason::ExitPolicy
    }));
    let req = net.events[2]
        .iter()
        .find_map(|e| match e {
            Event::ResolveRequest { stream, host } => Some((*stream, host.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(req.1, "name.example");
    let addr: std::net::IpAddr = "192.0.2.7".parse().unwrap();
    let now = net.now;
    net.nodes[2].resolve_reply(now, req.0, &[addr]).unwrap();
    net.run_until(1000, |n| {
        n.events[0]
            .iter()
            .any(|e| matches!(e, Event::Resolved { .. }))
    });
    assert!(net.events[0].contains(&Event::Resolved {
        stream: r,
        addrs: vec![addr]
    }));

    // A UDP association: a datagram out and one back.
    let now = net.now;
    let u = net.nodes[0]
        .open_stream(now, c, StreamKind::Udp, &TargetAddr::None)
        .unwrap();
    net.run_until(1000, |n| {
        n.events[2].iter().any(|e| {
            matches!(
                e,
                Event::StreamRequest {
                    kind: StreamKind::Udp,
                    ..
                }
            )
        })
    });
    let exit_side = net.events[2]
        .iter()
        .find_map(|e| match e {
            Event::StreamRequest {
                stream,
                kind: StreamKind::Udp,
                ..
            } => Some(*stream),
            _ => None,
        })
        .unwrap();
    // The harness accepted it; send a datagram each way.
    assert!(net.run_until(1000, |n| n.events[0].contains(&Event::StreamOpened(u))));
    let dst = TargetAddr::Ip("127.0.0.1:5353".parse().unwrap());
    let now = net.now;
    assert!(net.nodes[0].send_datagram(now, u, &dst, b"ping").unwrap());
    let mut got = None;
    for _ in 0..50 {
        net.step();
        if let Some(d) = net.nodes[2].recv_datagram(exit_side) {
            got = Some(d);
            break;
        }
    }
    assert_eq!(got, Some((dst.clone(), b"ping".to_vec())));
    let now = net.now;
    let from = TargetAddr::Ip("127.0.0.1:5353".parse().unwrap());
    assert!(net.nodes[2]
        .send_datagram(now, exit_side, &from, b"pong")
        .unwrap());
    let mut back = None;
    for _ in 0..50 {
        net.step();
        if let Some(d) = net.nodes[0].recv_datagram(u) {
            back = Some(d);
            break;
        }
    }
    assert_eq!(back, Some((from, b"pong".to_vec())));
    // Oversized datagrams are refused, not truncated.
    let now = net.now;
    let big = vec![0u8; 600];
    assert!(net.nodes[0].send_datagram(now, u, &dst, &big).is_err());
}

#[test]
fn truncate_then_extend_to_another_exit() {
    let mut net = Net::new(5, 10);
    let c = net.build_ready(0, &[1, 2, 3]);
    net.start_echo(0, c, data(30_000, 1));
    assert!(net.run_until(5000, |n| n.all_senders_done()));
    let now = net.now;
    net.nodes[0].truncate_circuit(now, c).unwrap();
    assert!(net.run_until(2000, |n| n.events[0].contains(&Event::CircuitTruncated(c))));
    assert_eq!(net.nodes[0].circuit_hops(c), Some(2));
    assert_eq!(net.nodes[3].circuit_count(), 0);
    let hop = net.hop(4);
    let now = net.now;
    net.nodes[0].extend_circuit(now, c, hop).unwrap();
    assert!(net.run_until(2000, |n| n.events[0].contains(&Event::CircuitReady(c))));
    assert_eq!(net.nodes[0].circuit_hops(c), Some(3));
    let s = net.start_echo(0, c, data(100_000, 2));
    assert_ne!(net.senders[s].stream, net.senders[0].stream);
    assert!(net.run_until(10_000, |n| n.senders[s].done()));
    assert!(net.senders[s].ok());
    assert_eq!(net.nodes[4].circuits().len(), 1);
}

#[test]
fn extension_to_unreachable_node_fails_the_build() {
    let mut net = Net::new(3, 11);
    let first = net.connect(0, 1).0;
    let mut bogus = net.hop(2);
    bogus.id = NodeId([9; 32]);
    let path = vec![net.hop(1), bogus];
    let now = net.now;
    let c = net.nodes[0].build_circuit(now, first, path).unwrap();
    assert!(net.run_until(2000, |n| closed_circuits(&n.events[0]).contains_key(&c)));
    assert_eq!(
        closed_circuits(&net.events[0])[&c],
        EndReason::ConnectFailed
    );
    net.run_until(100, |_| false);
    assert_eq!(net.nodes[1].circuit_count(), 0);
}

#[test]
fn wrong_onion_key_fails_the_build() {
    let mut net = Net::new(3, 12);
    let first = net.connect(0, 1).0;
    let mut bad = net.hop(2);
    bad.onion_key = net.nodes[1].onion_key();
    let path = vec![net.hop(1), bad];
    let now = net.now;
    let c = net.nodes[0].build_circuit(now, first, path).unwrap();
    assert!(net.run_until(2000, |n| closed_circuits(&n.events[0]).contains_key(&c)));
    assert!(!net.events[0].contains(&Event::CircuitReady(c)));
}

#[test]
fn bad_api_input_is_an_error() {
    let mut net = Net::new(10, 13);
    let first = net.connect(0, 1).0;
    let now = net.now;
    assert_eq!(
        net.nodes[0].build_circuit(now, first, vec![]),
        Err(NodeError::BadPathLength)
    );
    let nine: Vec<HopSpec> = (1..10).map(|i| net.hop(i)).collect();
    assert_eq!(
        net.nodes[0].build_circuit(now, first, nine),
        Err(NodeError::BadPathLength)
    );
    let wrong_first = vec![net.hop(2)];
    assert_eq!(
        net.nodes[0].build_circuit(now, first, wrong_first),
        Err(NodeError::NoSuchLink)
    );
    let c = net.build(0, &[1]);
    assert_eq!(
        net.nodes[0]
            .open_stream(now, c, StreamKind::Tcp, &TargetAddr::Host("x".into(), 1))
            .err(),
        Some(NodeError::NotReady)
    );
}

#[test]
fn link_loss_closes_circuits_and_tells_the_client() {
    let mut net = Net::new(4, 14);
    let c = net.build_ready(0, &[1, 2, 3]);
    // The middle relay loses its link to the exit.
    let link = net.nodes[2].link_to(&net.nodes[3].id()).unwrap();
    let now = net.now;
    net.nodes[2].link_down(now, link);
    assert!(net.run_until(1000, |n| closed_circuits(&n.events[0]).contains_key(&c)));
    assert_eq!(closed_circuits(&net.events[0])[&c], EndReason::ConnReset);
    net.run_until(100, |_| false);
    assert_eq!(net.nodes[1].circuit_count(), 0);
    assert_eq!(net.nodes[2].circuit_count(), 0);
}

#[test]
fn padding_is_carried_and_ignored() {
    let mut net = Net::new(4, 15);
    let c = net.build_ready(0, &[1, 2, 3]);
    let before = net.nodes[3].stats().cells_in;
    let now = net.now;
    for _ in 0..40 {
        net.nodes[0].send_padding(now, c).unwrap();
    }
    net.run_until(200, |_| false);
    // 40 DROPs arrived at the exit (plus nothing else), and SENDMEs
    // acknowledged them: the circuit is still healthy.
    assert_eq!(net.nodes[3].stats().cells_in - before, 40);
    net.start_echo(0, c, data(10_000, 1));
    assert!(net.run_until(2000, |n| n.all_senders_done()));
    assert!(net.senders[0].ok());
}
