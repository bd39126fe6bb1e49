//! The receiving half of a link: one task accepts and reads every stream
//! the peer opens, and ends the link when the connection closes or the
//! peer's graceful close completes (the stream layout and the close are in
//! module `link`).
//!
//! Why one task and not one per stream: see [`relay_link::ready`]. Each
//! stream has a slot with its own waker; a wake lists the slot, and the
//! task reads only listed streams, taking every chunk s2n-quic holds for a
//! stream per call (`poll_receive_vectored`), cutting them into cells in
//! shared blocks, and handing everything read in one pass to the node in
//! one batch. A lost packet still holds up only its own streams: the others
//! stay readable and are read.

use std::task::{Context, Poll};

use bytes::Bytes;
use relay_kernel::CellBlocks;
use relay_link::batch::{Carried, Delivery, StreamState, KIND_DRAINED};
use relay_link::link::CloseCell;
use relay_link::ready::{ReadySet, Slots};
use relay_link::{CellTx, CloseReason};
use s2n_quic::connection::{Handle, StreamAcceptor};
use s2n_quic::stream::ReceiveStream;
use tokio::sync::{mpsc, watch};

use crate::link::{close_reason, code, send_control, stream_reason};

/// Cells taken from one stream before the others get a turn.
const STREAM_TURN: usize = 256;
/// Cells collected before they are handed to the node mid-pass.
const FLUSH_CELLS: usize = 1024;
/// Chunks taken from s2n-quic per read call.
const CHUNKS: usize = 32;

/// Why reading a stream failed.
enum Fail {
    /// The connection failed (or was closed) under the stream.
    Connection(CloseReason),
    /// The peer broke the stream protocol.
    Protocol(String),
}

/// What a read left the stream as.
enum Step {
    Open,
    Finished(Carried),
}

/// Scratch space shared by all streams' reads.
struct Reading {
    chunks: Vec<Bytes>,
    blocks: CellBlocks,
    out: Delivery,
}

/// Accepts the peer's streams, reads them all, and ends the link when the
/// connection closes or the peer's graceful close completes. `_ended` is
/// dropped on return, which tells the writer.
pub(crate) async fn receiver(
    conn: Handle,
    mut acceptor: StreamAcceptor,
    incoming: CellTx,
    closed: CloseCell,
    destroyed: mpsc::UnboundedSender<u32>,
    _ended: watch::Sender<()>,
) {
    let ready = ReadySet::new();
    let mut streams: Slots<(ReceiveStream, StreamState)> = Slots::new(&ready);
    let mut r = Reading {
        chunks: vec![Bytes::new(); CHUNKS],
        blocks: CellBlocks::new(),
        out: Delivery::new(Some(incoming), destroyed),
    };
    let mut listed = Vec::new();
    let (mut got_fin, mut drained, mut got_drained) = (false, false, false);
    let reason = 'link: loop {
        // New streams first (a new stream is read at once below), but the
        // listed ones are read on every pass too, so neither starves.
        tokio::select! {
            biased;
            s = acceptor.accept_receive_stream() => match s {
                Ok(Some(s)) => listed.push(streams.insert((s, StreamState::default()))),
                // s2n-quic says None for a clean close and for an idle
                // timeout alike; the handle still knows which.
                Ok(None) => match conn.clone().ping() {
                    Err(e) => break close_reason(&e),
                    Ok(()) => break CloseReason::Error("connection closed".into()),
                },
                Err(e) => break close_reason(&e),
            },
            () = ready.take(&mut listed) => {}
        }
        ready.try_take(&mut listed);
        for i in listed.drain(..) {
            let Some(((stream, state), waker)) = streams.get_mut(i) else {
                continue; // a stale listing of a finished stream
            };
            // (A Context is not Send: it must not live across the awaits.)
            let step = read_stream(stream, state, &mut Context::from_waker(waker), &mut r);
            match step {
                Ok(Step::Open) => {}
                Ok(Step::Finished(carried)) => {
                    streams.remove(i);
                    match carried {
                        Carried::Fin => got_fin = true,
                        Carried::Drained => got_drained = true,
                        Carried::Cells => {}
                    }
                }
                Err(Fail::Connection(reason)) => break 'link reason,
                Err(Fail::Protocol(e)) => {
                    conn.close(code::protocol());
                    break 'link CloseReason::Error(e);
                }
            }
            if r.out.pending() >= FLUSH_CELLS {
                r.out.flush().await;
            }
        }
        r.out.flush().await;
        // Neither the ready set nor the node queue counts against tokio's
        // cooperative budget, and with data always waiting this loop would
        // never yield: give the connection's own tasks their turn.
        tokio::task::coop::consume_budget().await;
        if got_fin && !drained && streams.is_empty() {
            // Every cell stream the peer opened came before its FIN, and all
            // have been read to the end: the node has everything.
            drained = true;
            closed.set(CloseReason::Peer);
            r.out.stop();
            if let Err(e) = send_control(&conn, KIND_DRAINED).await {
                break e;
            }
        }
        if drained && got_drained {
            // Both directions are closed and read: nothing is in flight.
            conn.close(code::done());
            break CloseReason::Peer;
        }
    };
    closed.set(reason);
}

/// Reads what s2n-quic holds for one stream (at most a turn's worth: then
/// the stream is listed again), leaving `cx`'s waker with s2n-quic when it
/// runs dry.
fn read_stream(
    stream: &mut ReceiveStream,
    state: &mut StreamState,
    cx: &mut Context<'_>,
    r: &mut Reading,
) -> Result<Step, Fail> {
    let start = r.out.pending();
    loop {
        let (n, open) = match stream.poll_receive_vectored(&mut r.chunks, cx) {
            Poll::Pending => return Ok(Step::Open),
            Poll::Ready(Ok(got)) => got,
            Poll::Ready(Err(e)) => return Err(read_fail(e)),
        };
        if n == 0 && open {
            // Nothing and no waker registered (not expected): try again on
            // the next pass rather than spin here.
            cx.waker().wake_by_ref();
            return Ok(Step::Open);
        }
        // s2n-quic fills only empty slots: take the chunks out.
        for chunk in r.chunks.iter_mut().take(n) {
            let chunk = std::mem::take(chunk);
            state
                .take(&chunk, &mut r.blocks, &mut r.out)
                .map_err(|e| Fail::Protocol(e.into()))?;
        }
        if !open {
            return state
                .end()
                .map(Step::Finished)
                .map_err(|e| Fail::Protocol(e.into()));
        }
        if r.out.pending() - start >= STREAM_TURN {
            // More may be waiting: come back after the other streams.
            cx.waker().wake_by_ref();
            return Ok(Step::Open);
        }
    }
}

fn read_fail(e: s2n_quic::stream::Error) -> Fail {
    match stream_reason(&e) {
        Some(r) => Fail::Connection(r),
        None => Fail::Protocol(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use bytes::Bytes;
    use relay_kernel::{Cell, CellCommand, CELL_LEN};
    use relay_link::batch::{KIND_CELLS, KIND_FIN};
    use relay_link::{Identity, LinkConfig, Transport};
    use s2n_quic::client::Connect;
    use tokio::time::timeout;

    use crate::S2nTransport;

    async fn bind(seed: u8) -> S2nTransport {
        let id = Identity::from_secret([seed; 32]);
        S2nTransport::bind("127.0.0.1:0".parse().unwrap(), &id, LinkConfig::default())
            .await
            .unwrap()
    }

    /// A peer that breaks the stream protocol loses its link (the node sees
    /// an error and the connection is closed), and the node's other links
    /// go on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broken_stream_closes_only_its_link() {
        let (a, b) = (bind(1).await, bind(2).await);
        let id_b = Identity::from_secret([2; 32]).node_id();
        let (la, lb) = tokio::join!(a.connect(b.local_addr(), id_b), b.accept());
        let (la, mut lb) = (la.unwrap(), lb.unwrap());
        let good = Cell::new(0x8000_0001, CellCommand::Relay);
        let mut cut = vec![KIND_CELLS];
        cut.extend_from_slice(&good.as_bytes()[..CELL_LEN - 1]);
        let bad_streams: [&[u8]; 3] = [&[7], &cut, &[KIND_FIN, 0]];
        for (i, bad) in bad_streams.into_iter().enumerate() {
            // A raw s2n-quic connection with a's identity, accepted by b as
            // another link.
            let name = crate::cert::dial_name(id_b, 1000 + i as u64);
            let mut conn = a
                .client
                .connect(Connect::new(b.local_addr()).with_server_name(name.as_str()))
                .await
                .unwrap();
            let mut lbad = b.accept().await.unwrap();
            let mut s = conn.open_send_stream().await.unwrap();
            s.send(Bytes::copy_from_slice(bad)).await.unwrap();
            s.finish().unwrap();
            let end = timeout(Duration::from_secs(5), lbad.rx.recv()).await;
            assert!(end.unwrap().is_none(), "{bad:?}: no cell, then the end");
            assert!(
                matches!(
                    lbad.rx.close_reason(),
                    Some(relay_link::CloseReason::Error(_))
                ),
                "{bad:?}: {:?}",
                lbad.rx.close_reason()
            );
            // The connection is closed: its streams fail.
            let closed = timeout(Duration::from_secs(5), async {
                loop {
                    if conn.open_send_stream().await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
            assert!(closed.await.is_ok(), "{bad:?}: connection still open");
        }
        la.tx.send(good).await.unwrap();
        let got = timeout(Duration::from_secs(5), lb.rx.recv()).await.unwrap();
        assert_eq!(got.unwrap().raw_circ_id(), 0x8000_0001);
    }
}
