//! The link conformance suite on s2n-quic links.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use relay_link::conformance::{self, Factory};
use relay_link::Transport;
use relay_link_s2n::S2nTransport;

fn factory() -> Factory {
    Arc::new(|identity, config| {
        Box::pin(async move {
            let t = S2nTransport::bind("127.0.0.1:0".parse().unwrap(), &identity, config).await?;
            Ok(Arc::new(t) as Arc<dyn Transport>)
        })
    })
}

#[tokio::test]
async fn handshake() {
    conformance::handshake(&factory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_200_mb_both_ways() {
    conformance::bulk_both_ways(&factory(), 200_000_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_circuits() {
    conformance::many_circuits(&factory(), 1000, 20).await;
}

#[tokio::test]
async fn vanished_peer() {
    conformance::vanished_peer(&factory(), Duration::from_secs(3)).await;
}

#[tokio::test]
async fn garbage() {
    conformance::garbage(&factory()).await;
}

#[tokio::test]
async fn graceful_close() {
    conformance::graceful_close(&factory()).await;
}
