//! The conformance suite: the same tests for every link kind, on real
//! sockets on 127.0.0.1. A link crate's tests call each function with a
//! factory that binds its transport; see `links/tcp/tests/conformance.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use relay_kernel::{Cell, CellCommand, CELL_LEN};

use crate::{BoxFut, CloseReason, Identity, Link, LinkConfig, LinkError, Scheme, Transport};

/// Binds a transport of the kind under test on 127.0.0.1:0.
pub type Factory = Arc<
    dyn Fn(Identity, LinkConfig) -> BoxFut<'static, Result<Arc<dyn Transport>, LinkError>>
        + Send
        + Sync,
>;

fn ident(seed: u8) -> Identity {
    Identity::from_secret([seed; 32])
}

/// Two transports and a link between them (a dialled b).
async fn linked(
    f: &Factory,
    config: LinkConfig,
) -> (Arc<dyn Transport>, Arc<dyn Transport>, Link, Link) {
    let a = f(ident(1), config).await.expect("bind a");
    let b = f(ident(2), config).await.expect("bind b");
    let baddr = b.local_addr();
    let (la, lb) = tokio::join!(a.connect(baddr, ident(2).node_id()), b.accept());
    (a, b, la.expect("connect"), lb.expect("accept"))
}

/// Cell `i` of circuit `circ`: its content is a function of both.
fn cell(circ: u32, i: u32) -> Cell {
    let mut c = Cell::new(circ, CellCommand::Relay);
    let mut r = ChaCha20Rng::seed_from_u64((u64::from(circ) << 32) | u64::from(i));
    r.fill_bytes(c.body_mut());
    c.body_mut()[..4].copy_from_slice(&i.to_be_bytes());
    c
}

fn check(c: &Cell, circ: u32, i: u32) {
    assert_eq!(
        c.as_bytes(),
        cell(circ, i).as_bytes(),
        "circuit {circ} cell {i}"
    );
}

/// The handshake succeeds with the right node id, both sides learn the
/// peer's id, and it fails with `WrongPeer` for a wrong id.
pub async fn handshake(f: &Factory) {
    let (a, b, la, lb) = linked(f, LinkConfig::default()).await;
    assert_eq!(la.peer, ident(2).node_id());
    assert_eq!(lb.peer, ident(1).node_id());
    assert!(la.initiator && !lb.initiator);
    // A wrong id fails the full handshake (from a fresh transport, so no
    // link to b exists yet).
    let c = f(ident(4), LinkConfig::default()).await.expect("bind c");
    let wrong = ident(3).node_id();
    match c.connect(b.local_addr(), wrong).await {
        Err(LinkError::WrongPeer { expected, got }) => {
            assert_eq!(expected, wrong);
            assert_eq!(got, ident(2).node_id());
        }
        Err(e) => panic!("expected WrongPeer, got {e}"),
        Ok(_) => panic!("connected to the wrong node"),
    }
    // Nothing listens here: a clear error, not a hang.
    let nobody: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let t = Instant::now();
    assert!(a.connect(nobody, wrong).await.is_err());
    assert!(t.elapsed() < Duration::from_secs(15));
}

/// `bytes` of cells each way at once, byte-exact and in order.
pub async fn bulk_both_ways(f: &Factory, bytes: usize) {
    let (_a, _b, la, lb) = linked(f, LinkConfig::default()).await;
    let n = (bytes / CELL_LEN) as u32;
    let start = Instant::now();
    exchange(la, lb, n).await;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "bulk: {n} cells each way in {secs:.2} s ({:.0} Mbit/s each way)",
        f64::from(n) * CELL_LEN as f64 * 8.0 / secs / 1e6
    );
}

/// Sends `n` cells each way at once over the two ends of one link and
/// checks that every cell arrives byte-exact and in order (link crates'
/// own tests use it too).
pub async fn exchange(la: Link, lb: Link, n: u32) {
    let run = |link: Link, circ: u32, peer_circ: u32| async move {
        let Link { tx, mut rx, .. } = link;
        let sender = tokio::spawn(async move {
            for i in 0..n {
                tx.send(cell(circ, i)).await.expect("send");
            }
            tx
        });
        for i in 0..n {
            let c = rx.recv().await.expect("link closed early");
            check(&c, peer_circ, i);
        }
        let tx = sender.await.unwrap();
        (tx, rx)
    };
    let (ra, rb) = tokio::join!(run(la, 11, 22), run(lb, 22, 11));
    drop((ra, rb));
}

/// `circuits` circuit ids multiplexed on one link, each cell verified and
/// each circuit's order kept.
pub async fn many_circuits(f: &Factory, circuits: u32, per_circuit: u32) {
    let (_a, _b, la, mut lb) = linked(f, LinkConfig::default()).await;
    let tx = la.tx.clone();
    let sender = tokio::spawn(async move {
        for i in 0..per_circuit {
            for c in 1..=circuits {
                tx.send(cell(c, i)).await.expect("send");
            }
        }
    });
    let mut next = vec![0u32; circuits as usize + 1];
    for _ in 0..circuits * per_circuit {
        let c = lb.rx.recv().await.expect("closed early");
        let circ = c.raw_circ_id();
        assert!((1..=circuits).contains(&circ), "unknown circuit {circ}");
        check(&c, circ, next[circ as usize]);
        next[circ as usize] += 1;
    }
    sender.await.unwrap();
    assert!(next[1..].iter().all(|n| *n == per_circuit));
}

/// A peer that vanishes without closing is reported closed within the
/// idle timeout (plus slack).
pub async fn vanished_peer(f: &Factory, idle: Duration) {
    let config = LinkConfig {
        idle_timeout: idle,
        keepalive: idle / 4,
        ..LinkConfig::default()
    };
    let (_a, b, mut la, _lb) = linked(f, config).await;
    // Traffic works first.
    la.tx.send(cell(5, 0)).await.unwrap();
    let start = Instant::now();
    b.crash();
    let deadline = idle + Duration::from_secs(3);
    let gone =
        tokio::time::timeout(deadline, async { while la.rx.recv().await.is_some() {} }).await;
    assert!(gone.is_ok(), "peer not reported closed within {deadline:?}");
    eprintln!(
        "vanished peer noticed after {:?}: {:?}",
        start.elapsed(),
        la.rx.close_reason()
    );
    assert_ne!(
        la.rx.close_reason(),
        Some(CloseReason::Peer),
        "a crash is not a graceful close"
    );
}

/// Garbage sent at a listener is dropped: no crash, nothing delivered, the
/// existing link keeps working and new links can still be made.
pub async fn garbage(f: &Factory) {
    let (a, b, la, mut lb) = linked(f, LinkConfig::default()).await;
    let target = b.local_addr();
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    match b.scheme() {
        Scheme::Tcp => {
            use tokio::io::AsyncWriteExt;
            for i in 0..50 {
                if let Ok(mut s) = tokio::net::TcpStream::connect(target).await {
                    let len = rng.gen_range(0..4000);
                    let mut junk = vec![0u8; len];
                    rng.fill_bytes(&mut junk);
                    if i % 5 == 0 {
                        // A plausible length prefix with junk behind it.
                        junk.splice(0..0, [0u8, 32]);
                    }
                    let _ = s.write_all(&junk).await;
                }
            }
        }
        _ => {
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            for _ in 0..2000 {
                let len = rng.gen_range(0..1500);
                let mut junk = vec![0u8; len];
                rng.fill_bytes(&mut junk);
                let _ = sock.send_to(&junk, target).await;
            }
        }
    }
    // The existing link still carries cells both ways.
    la.tx.send(cell(7, 1)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), lb.rx.recv())
        .await
        .expect("link stalled");
    check(&got.expect("link closed"), 7, 1);
    // And a new link can be made (from another node).
    let c = f(ident(4), LinkConfig::default()).await.expect("bind c");
    let (l2, l3) = tokio::join!(c.connect(target, ident(2).node_id()), b.accept());
    assert!(l2.is_ok() && l3.is_ok());
    drop(a);
}

/// Everything sent before a graceful close is delivered, then the receiver
/// sees the end with reason `Peer`.
pub async fn graceful_close(f: &Factory) {
    let (_a, _b, la, mut lb) = linked(f, LinkConfig::default()).await;
    let n = 20_000;
    // Links apply backpressure, so the receiver reads while the sender sends.
    let tx = la.tx.clone();
    let sender = tokio::spawn(async move {
        for i in 0..n {
            tx.send(cell(9, i)).await.unwrap();
        }
        tx.close();
    });
    for i in 0..n {
        let c = tokio::time::timeout(Duration::from_secs(10), lb.rx.recv())
            .await
            .expect("stalled")
            .unwrap_or_else(|| panic!("closed after {i} of {n} cells"));
        check(&c, 9, i);
    }
    sender.await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), lb.rx.recv())
        .await
        .expect("no end");
    assert!(end.is_none());
    assert_eq!(lb.rx.close_reason(), Some(CloseReason::Peer));
}

/// Defines the conformance tests (`handshake`, `bulk_200_mb_both_ways`,
/// `thousand_circuits`, `vanished_peer`, `garbage`, `graceful_close`) in
/// the calling test file, for a transport type with an async
/// `bind(addr, &Identity, LinkConfig) -> Result<T, LinkError>`.
#[macro_export]
macro_rules! conformance_tests {
    ($transport:ty) => {
        fn factory() -> $crate::conformance::Factory {
            ::std::sync::Arc::new(|identity, config| {
                ::std::boxed::Box::pin(async move {
                    let addr = "127.0.0.1:0".parse().expect("address");
                    let t = <$transport>::bind(addr, &identity, config).await?;
                    Ok(::std::sync::Arc::new(t) as ::std::sync::Arc<dyn $crate::Transport>)
                })
            })
        }

        #[tokio::test]
        async fn handshake() {
            $crate::conformance::handshake(&factory()).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn bulk_200_mb_both_ways() {
            $crate::conformance::bulk_both_ways(&factory(), 200_000_000).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn thousand_circuits() {
            $crate::conformance::many_circuits(&factory(), 1000, 20).await;
        }

        #[tokio::test]
        async fn vanished_peer() {
            $crate::conformance::vanished_peer(&factory(), ::std::time::Duration::from_secs(3))
                .await;
        }

        #[tokio::test]
        async fn garbage() {
            $crate::conformance::garbage(&factory()).await;
        }

        #[tokio::test]
        async fn graceful_close() {
            $crate::conformance::graceful_close(&factory()).await;
        }
    };
}
