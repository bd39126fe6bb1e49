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
    // The scenario captures two client links both ways: every record is
    // an IPv4/UDP packet whose both checksums verify, times never go back.
    assert_eq!(r.sim.captures.len(), 4);
    for c in r.sim.captures.values() {
        let packets = verify_capture(c.bytes());
        assert_eq!(packets, c.packets, "{}", c.name);
        assert!(packets > 10, "{}: {packets} packets", c.name);
    }
}

/// udt's datagram size discovery in the simulator: on paths with a
/// 4,000-byte MTU and a search ceiling above it, every transfer still
/// completes byte-exact, the captured packets grow past 1,500 bytes but
/// never past the MTU, the only datagrams too big for the path are the
/// search's probes, and the run needs fewer datagrams than at 1,500 bytes.
#[test]
fn udt_datagram_size_discovery_in_the_quick_scenario() {
    let base = find_scenario("quick").unwrap();
    let mut probing = base.clone();
    probing.path_defaults.mtu = 4000;
    probing.udt_max_datagram_probe = 8972;
    let r = run(probing, 1, |_, _| {}).unwrap();
    let res = &r.results;
    assert_eq!(res.unfinished, 0);
    assert_eq!(res.ok, res.transfers, "errors: {:?}", res.errors);
    assert!(res.links.too_big > 0, "no probe was too big for the path");
    // Captures record what hosts send, probes the path drops included.
    let sizes: Vec<usize> = r
        .sim
        .captures
        .values()
        .flat_map(|c| packet_sizes(c.bytes()))
        .collect();
    let grown = sizes
        .iter()
        .filter(|&&n| (1501..=4000).contains(&n))
        .count();
    let over = sizes.iter().filter(|&&n| n > 4000).count() as u64;
    assert!(grown > 0, "no packet above 1,500 bytes");
    assert!(
        over > 0 && over <= res.links.too_big,
        "{over} above the MTU"
    );
    let fixed = run(base, 1, |_, _| {}).unwrap();
    assert_eq!(fixed.results.links.too_big, 0);
    assert!(
        res.links.datagrams < fixed.results.links.datagrams,
        "{} datagrams against {} at 1,500 bytes",
        res.links.datagrams,
        fixed.results.links.datagrams
    );
}

/// The sizes of the IP packets in a pcap file (as written by netsim).
fn packet_sizes(bytes: &[u8]) -> Vec<usize> {
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let (mut at, mut sizes) = (24, Vec::new());
    while at < bytes.len() {
        let len = u32_at(at + 8) as usize;
        sizes.push(len);
        at += 16 + len;
    }
    sizes
}

/// Walks a pcap file (nanosecond format, LINKTYPE_RAW) and checks every
/// packet; returns how many there were.
fn verify_capture(bytes: &[u8]) -> u64 {
    use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, UdpPacket};
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    assert_eq!(u32_at(0), 0xa1b2_3c4d);
    assert_eq!(u32_at(20), 101);
    let (mut at, mut n, mut last) = (24, 0, 0u64);
    while at < bytes.len() {
        let t = u64::from(u32_at(at)) * 1_000_000_000 + u64::from(u32_at(at + 4));
        assert!(t >= last);
        last = t;
        let len = u32_at(at + 8) as usize;
        let ip = Ipv4Packet::new_checked(&bytes[at + 16..at + 16 + len]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.next_header(), IpProtocol::Udp);
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        let (src, dst) = (
            IpAddress::Ipv4(ip.src_addr()),
            IpAddress::Ipv4(ip.dst_addr()),
        );
        assert!(udp.verify_checksum(&src, &dst));
        at += 16 + len;
        n += 1;
    }
    n
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
