//! QUIC-specific behaviour beyond the conformance suite: streams are
//! released when circuits are destroyed (either way), so a long-lived link
//! outlasts the peer's stream limit; both ends may close at once without
//! losing data, and the closing end still hears the other until it closes
//! too (a half-close, as on tcp); dropping a link closes it gracefully;
//! dropping a transport is noticed by peers at once (unlike a crash).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use relay_kernel::{Cell, CellCommand};
use relay_link::{CloseReason, Identity, Link, LinkConfig, Transport};
use relay_link_quic::QuicTransport;
use tokio::time::timeout;

/// More circuits over a link's life than the peer allows open at once.
const CIRCUITS: u32 = 10_000;

async fn bind(seed: u8) -> Arc<QuicTransport> {
    let id = Identity::from_secret([seed; 32]);
    Arc::new(
        QuicTransport::bind("127.0.0.1:0".parse().unwrap(), &id, LinkConfig::default())
            .await
            .unwrap(),
    )
}

async fn linked() -> (Arc<QuicTransport>, Arc<QuicTransport>, Link, Link) {
    let a = bind(1).await;
    let b = bind(2).await;
    let (la, lb) = tokio::join!(
        a.connect(b.local_addr(), Identity::from_secret([2; 32]).node_id()),
        b.accept()
    );
    (a, b, la.unwrap(), lb.unwrap())
}

fn cell(circ: u32, command: CellCommand, i: u32) -> Cell {
    let mut c = Cell::new(circ, command);
    c.body_mut()[..4].copy_from_slice(&i.to_be_bytes());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuits_destroyed_by_sender_release_streams() {
    let (_a, _b, la, mut lb) = linked().await;
    let tx = la.tx.clone();
    let sender = tokio::spawn(async move {
        for circ in 1..=CIRCUITS {
            tx.send(cell(circ, CellCommand::Relay, 0)).await.unwrap();
            tx.send(cell(circ, CellCommand::Destroy, 1)).await.unwrap();
        }
    });
    let mut seen = vec![0u8; CIRCUITS as usize + 1];
    for _ in 0..2 * CIRCUITS {
        let c = timeout(Duration::from_secs(10), lb.rx.recv())
            .await
            .expect("stalled: streams not released?")
            .unwrap();
        let circ = c.raw_circ_id() as usize;
        // Each circuit's relay cell comes before its destroy.
        let want = if seen[circ] == 0 {
            CellCommand::Relay
        } else {
            CellCommand::Destroy
        };
        assert_eq!(c.raw_command(), want as u8, "circuit {circ}");
        seen[circ] += 1;
    }
    sender.await.unwrap();
    assert!(seen[1..].iter().all(|n| *n == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuits_destroyed_by_peer_release_streams() {
    let (_a, _b, la, lb) = linked().await;
    let Link {
        tx: atx,
        rx: mut arx,
        ..
    } = la;
    let Link {
        tx: btx,
        rx: mut brx,
        ..
    } = lb;
    // a opens circuits; b destroys each as soon as it hears of it.
    let sender = tokio::spawn(async move {
        for circ in 1..=CIRCUITS {
            atx.send(cell(circ, CellCommand::Relay, 0)).await.unwrap();
        }
        atx
    });
    let destroyer = tokio::spawn(async move {
        for _ in 0..CIRCUITS {
            let c = timeout(Duration::from_secs(10), brx.recv())
                .await
                .expect("stalled: streams not released?")
                .unwrap();
            btx.send(cell(c.raw_circ_id(), CellCommand::Destroy, 0))
                .await
                .unwrap();
        }
        (btx, brx)
    });
    for _ in 0..CIRCUITS {
        let c = timeout(Duration::from_secs(10), arx.recv())
            .await
            .expect("stalled")
            .unwrap();
        assert_eq!(c.raw_command(), CellCommand::Destroy as u8);
    }
    let _keep = (sender.await.unwrap(), destroyer.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ends_close_at_once() {
    let (_a, _b, la, lb) = linked().await;
    let n = 20_000u32;
    let run = |link: Link, circ: u32, peer_circ: u32| async move {
        let Link { tx, mut rx, .. } = link;
        let sender = tokio::spawn(async move {
            for i in 0..n {
                tx.send(cell(circ, CellCommand::Relay, i)).await.unwrap();
            }
            tx.close();
        });
        for i in 0..n {
            let c = timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("stalled")
                .unwrap_or_else(|| panic!("closed after {i} of {n}"));
            assert_eq!(c.raw_circ_id(), peer_circ);
            assert_eq!(c.body()[..4], i.to_be_bytes());
        }
        sender.await.unwrap();
        let end = timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no end");
        assert!(end.is_none());
        rx.close_reason()
    };
    let (ra, rb) = tokio::join!(run(la, 1, 2), run(lb, 2, 1));
    // Whichever came first: its own close or the peer's, both graceful.
    for r in [ra, rb] {
        assert!(
            matches!(r, Some(CloseReason::Local | CloseReason::Peer)),
            "{r:?}"
        );
    }
}

#[tokio::test]
async fn dropping_the_link_closes_gracefully() {
    let (_a, _b, la, mut lb) = linked().await;
    for i in 0..100 {
        la.tx.send(cell(3, CellCommand::Relay, i)).await.unwrap();
    }
    drop(la);
    for i in 0..100u32 {
        let c = lb.rx.recv().await.unwrap();
        assert_eq!(c.body()[..4], i.to_be_bytes());
    }
    assert!(timeout(Duration::from_secs(10), lb.rx.recv())
        .await
        .unwrap()
        .is_none());
    assert_eq!(lb.rx.close_reason(), Some(CloseReason::Peer));
}

#[tokio::test]
async fn dropped_transport_is_noticed_at_once() {
    let (a, b, _la, mut lb) = linked().await;
    drop(a);
    let end = timeout(Duration::from_secs(2), lb.rx.recv())
        .await
        .expect("not noticed");
    assert!(end.is_none());
    assert!(matches!(lb.rx.close_reason(), Some(CloseReason::Error(_))));
    drop(b);
}

#[tokio::test]
async fn closing_end_still_hears_the_other_until_it_closes() {
    let (_a, _b, mut la, mut lb) = linked().await;
    for i in 0..100 {
        la.tx.send(cell(4, CellCommand::Relay, i)).await.unwrap();
    }
    la.tx.close();
    for i in 0..100u32 {
        let c = lb.rx.recv().await.unwrap();
        assert_eq!(c.body()[..4], i.to_be_bytes());
    }
    assert!(lb.rx.recv().await.is_none());
    assert_eq!(lb.rx.close_reason(), Some(CloseReason::Peer));
    // b's end is still open: what it sends now reaches a, then b closes.
    for i in 0..100 {
        lb.tx.send(cell(5, CellCommand::Relay, i)).await.unwrap();
    }
    lb.tx.close();
    for i in 0..100u32 {
        let c = timeout(Duration::from_secs(10), la.rx.recv())
            .await
            .expect("stalled")
            .unwrap();
        assert_eq!(c.raw_circ_id(), 5);
        assert_eq!(c.body()[..4], i.to_be_bytes());
    }
    assert!(timeout(Duration::from_secs(10), la.rx.recv())
        .await
        .unwrap()
        .is_none());
    assert_eq!(la.rx.close_reason(), Some(CloseReason::Local));
}
