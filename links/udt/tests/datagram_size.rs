//! Datagram size discovery on real sockets: two udt transports on
//! 127.0.0.1 talk through a userspace UDP forwarder that can play a path
//! with a smaller MTU than loopback's (it drops datagrams above a limit,
//! as a router does) and records the sizes it carried.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use relay_link::{Identity, LinkConfig, Transport};
use relay_link_udt::{UdtTransport, LOOPBACK_PROBE_CEILING};
use tokio::net::UdpSocket;

/// What the forwarder saw in one direction.
#[derive(Default)]
struct Seen {
    largest: AtomicUsize,
    dropped: AtomicU64,
    forwarded: AtomicU64,
}

/// Forwards between one dialer (whoever sends to `front` first) and
/// `listener`, dropping datagrams above `limit` bytes.
async fn forwarder(listener: SocketAddr, limit: usize) -> (SocketAddr, Arc<[Seen; 2]>) {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let seen: Arc<[Seen; 2]> = Arc::new([Seen::default(), Seen::default()]);
    let dialer = Arc::new(tokio::sync::OnceCell::<SocketAddr>::new());
    let addr = front.local_addr().unwrap();
    let pass = move |seen: &Seen, len: usize| {
        if len > limit {
            seen.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        seen.largest.fetch_max(len, Ordering::Relaxed);
        seen.forwarded.fetch_add(1, Ordering::Relaxed);
        true
    };
    {
        let (front, back, seen, dialer) =
            (front.clone(), back.clone(), seen.clone(), dialer.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                let _ = dialer.set(from);
                if pass(&seen[0], n) {
                    let _ = back.send_to(&buf[..n], listener).await;
                }
            }
        });
    }
    let seen_back = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = back.recv(&mut buf).await {
            if let Some(to) = dialer.get() {
                if pass(&seen_back[1], n) {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        }
    });
    (addr, seen)
}

/// Sends `cells` cells each way over a link dialled through a forwarder
/// with `limit`, checks every one, and returns what the forwarder saw.
async fn transfer_through(limit: usize, cells: u32) -> Arc<[Seen; 2]> {
    let a = UdtTransport::bind(
        "127.0.0.1:0".parse().unwrap(),
        &Identity::from_secret([1; 32]),
        LinkConfig::default(),
    )
    .await
    .unwrap();
    let b_id = Identity::from_secret([2; 32]);
    let b = UdtTransport::bind("127.0.0.1:0".parse().unwrap(), &b_id, LinkConfig::default())
        .await
        .unwrap();
    let (via, seen) = forwarder(b.local_addr(), limit).await;
    let (la, lb) = tokio::join!(a.connect(via, b_id.node_id()), b.accept());
    relay_link::conformance::exchange(la.unwrap(), lb.unwrap(), cells).await;
    seen
}

/// Loopback carries the loopback ceiling: both ends move to it at once
/// (one probe each), nothing is dropped.
#[tokio::test]
async fn loopback_links_use_the_probe_ceiling() {
    let seen = transfer_through(usize::MAX, 20_000).await;
    for (dir, s) in ["a->b", "b->a"].iter().zip(seen.iter()) {
        let (largest, forwarded) = (
            s.largest.load(Ordering::Relaxed),
            s.forwarded.load(Ordering::Relaxed),
        );
        eprintln!("{dir}: {forwarded} datagrams, largest {largest} bytes");
        assert_eq!(largest, LOOPBACK_PROBE_CEILING, "{dir}");
        assert_eq!(s.dropped.load(Ordering::Relaxed), 0);
        // 20,000 cells in datagrams of up to 126 cells, not 2-cell ones.
        assert!(forwarded < 20_000 / 8, "{dir}: {forwarded}");
    }
}

/// A path with a 1,500-byte MTU: the only datagrams it drops are the size
/// probes (each size above the limit three times; from the loopback
/// ceiling down to 1,972 bytes that is at most eight sizes per direction),
/// no datagram above 1,472 bytes gets through, and every cell arrives.
#[tokio::test]
async fn a_smaller_path_mtu_costs_only_probes() {
    let seen = transfer_through(1472, 20_000).await;
    for (dir, s) in ["a->b", "b->a"].iter().zip(seen.iter()) {
        let (largest, dropped) = (
            s.largest.load(Ordering::Relaxed),
            s.dropped.load(Ordering::Relaxed),
        );
        eprintln!("{dir}: largest {largest} bytes, {dropped} dropped");
        assert!(largest <= 1472, "{dir}: {largest}");
        assert!((3..=24).contains(&dropped), "{dir}: {dropped}");
        assert_eq!(dropped % 3, 0, "{dir}: {dropped}");
    }
}

/// Loopback peers get the loopback ceiling, others the network one, and
/// IPv6 peers a smaller base.
#[test]
fn the_probe_ceiling_depends_on_the_peer() {
    use relay_link_udt::conn::ConnConfig;
    let c = ConnConfig {
        max_datagram_probe: 8972,
        loopback_max_datagram_probe: 65_487,
        ..ConnConfig::default()
    };
    let at = |a: &str| c.for_peer(a.parse().unwrap()).max_datagram_probe;
    assert_eq!(at("127.0.0.1:9"), 65_487);
    assert_eq!(at("127.8.0.2:9"), 65_487);
    assert_eq!(at("[::1]:9"), 65_487);
    assert_eq!(at("10.0.0.2:9"), 8972);
    assert_eq!(at("[2001:db8::1]:9"), 8972);
    // IPv6 peers off loopback start within a 1,500-byte MTU's IPv6
    // payload; IPv4 and loopback peers keep the configured base.
    let base = |a: &str| c.for_peer(a.parse().unwrap()).max_datagram;
    assert_eq!(base("[2001:db8::1]:9"), 1452);
    assert_eq!(base("10.0.0.2:9"), 1472);
    assert_eq!(base("[::1]:9"), 1472);
    // Unset: the network ceiling everywhere.
    let plain = ConnConfig {
        max_datagram_probe: 8972,
        ..ConnConfig::default()
    };
    assert_eq!(
        plain
            .for_peer("127.0.0.1:9".parse().unwrap())
            .max_datagram_probe,
        8972
    );
}
