//! One QUIC connection carrying one link: the tasks behind the channels
//! (the writer here, the receiver in module `recv`).
//!
//! Each circuit gets its own unidirectional stream in each direction, opened
//! by the sender the first time it sends a cell of that circuit. QUIC keeps
//! order within a stream but not across streams, so each circuit's cells stay
//! in order while a lost packet only holds up the circuits whose data it
//! carried (no head-of-line blocking across circuits, unlike TCP). A stream is
//! finished when its circuit is destroyed (a DESTROY cell sent or received), so
//! streams do not pile up over a long-lived link.
//!
//! Every stream starts with one byte saying what it carries: cells (then
//! whole 514-byte cells until the end), or a control message:
//!
//! - `FIN`: "I have sent everything and finished all my cell streams". It is
//!   opened after every cell stream, and QUIC hands streams to the receiver
//!   in the order they were opened, so once it arrives the receiver knows
//!   the set of cell streams is complete; it reads them to their ends, then
//!   reports the end to its node ([`CloseReason::Peer`]).
//! - `DRAINED`: "I have read all you sent", the answer to a `FIN`.
//!
//! A close is a half-close, as on the `tcp` link: the end that did not close
//! may still send until its node closes too (which it does once it sees the
//! end), and the closing end still delivers those cells. Closing the QUIC
//! connection discards whatever is in flight, so it waits until both ends
//! have sent `FIN` and both have said `DRAINED`; either end then closes it.
//! A peer that never closes its end is given [`CLOSE_LINGER`].
//!
//! Keepalives and the idle timeout are QUIC's own (see the transport
//! config); a peer that vanishes shows up as a connection timeout.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, ConnectionError, SendStream};
use relay_kernel::Cell;
use relay_link::batch::{CircuitBatch, Grouper, KIND_CELLS, KIND_FIN};
use relay_link::link::CloseCell;
use relay_link::{CellRx, CloseReason, LinkIo};
use tokio::sync::mpsc;

use crate::recv::receiver;

/// Connection close codes.
pub(crate) mod code {
    use quinn::VarInt;
    /// Graceful close: everything sent was read.
    pub(crate) const DONE: VarInt = VarInt::from_u32(1);
    /// The transport was dropped.
    pub(crate) const GOING_AWAY: VarInt = VarInt::from_u32(2);
    /// The peer broke the stream protocol.
    pub(crate) const PROTOCOL: VarInt = VarInt::from_u32(3);
    /// A graceful close that the peer did not complete in time.
    pub(crate) const CLOSE_TIMEOUT: VarInt = VarInt::from_u32(4);
}

/// Most cells the writer takes from the node at once: what is queued, up
/// to this. Larger batches mean larger writes per circuit (one chunk per
/// circuit per batch, or per 64-cell send buffer, in quinn's send buffer)
/// and fewer wake-ups of the connection driver; 1024 cells are 514 KB, a
/// fraction of the send window.
const BATCH_CELLS: usize = 1024;
/// How long a closing link waits for the peer to read everything.
const CLOSE_LINGER: Duration = Duration::from_secs(60);

/// Why a QUIC connection ended, as a link close reason.
pub(crate) fn close_reason(e: &ConnectionError) -> CloseReason {
    match e {
        ConnectionError::TimedOut => CloseReason::IdleTimeout,
        ConnectionError::LocallyClosed => CloseReason::Local,
        ConnectionError::ApplicationClosed(c) if c.error_code == code::DONE => CloseReason::Peer,
        ConnectionError::ApplicationClosed(c) if c.error_code == code::GOING_AWAY => {
            CloseReason::Error("peer shut down".into())
        }
        ConnectionError::ApplicationClosed(c) => {
            CloseReason::Error(format!("peer closed the link (code {})", c.error_code))
        }
        other => CloseReason::Error(other.to_string()),
    }
}

/// Starts the tasks of an established link; returns them for the transport
/// to abort on a crash.
pub(crate) fn spawn(conn: Connection, io: LinkIo) -> [tokio::task::JoinHandle<()>; 2] {
    let LinkIo {
        outgoing,
        incoming,
        closed,
    } = io;
    let (destroyed_tx, destroyed_rx) = mpsc::unbounded_channel();
    let r = tokio::spawn(receiver(
        conn.clone(),
        incoming,
        closed.clone(),
        destroyed_tx,
    ));
    let w = tokio::spawn(writer(conn, outgoing, closed, destroyed_rx));
    [r, w]
}

/// Opens a stream carrying one control byte, and finishes it.
pub(crate) async fn send_control(conn: &Connection, kind: u8) -> Result<(), String> {
    let mut s = conn.open_uni().await.map_err(|e| e.to_string())?;
    s.write_all(&[kind]).await.map_err(|e| e.to_string())?;
    s.finish().map_err(|e| e.to_string())
}

/// Takes cells from the node and writes each circuit's to its stream.
async fn writer(
    conn: Connection,
    mut outgoing: CellRx,
    closed: CloseCell,
    mut destroyed: mpsc::UnboundedReceiver<u32>,
) {
    let mut streams: HashMap<u32, SendStream> = HashMap::new();
    let mut grouper = Grouper::new();
    let mut groups: Vec<CircuitBatch> = Vec::new();
    let mut cells: Vec<Cell> = Vec::with_capacity(BATCH_CELLS);
    loop {
        let n = tokio::select! {
            biased;
            Some(circ) = destroyed.recv() => {
                peer_destroyed(&mut streams, circ);
                continue;
            }
            n = outgoing.recv_many(&mut cells, BATCH_CELLS) => n,
            e = conn.closed() => {
                closed.set(close_reason(&e));
                return;
            }
        };
        // 0: the node closed or dropped the link: close gracefully.
        let close = n == 0;
        groups.clear();
        grouper.group(&mut cells, &mut groups);
        for g in groups.drain(..) {
            if let Err(e) = write_group(&conn, &mut streams, &mut destroyed, g).await {
                fail(&conn, &closed, e);
                return;
            }
        }
        // The node queue does not count against tokio's cooperative
        // budget: with cells always queued, yield now and then.
        tokio::task::coop::consume_budget().await;
        if close {
            close_gracefully(&conn, &closed, streams).await;
            return;
        }
    }
}

/// Finishes the stream of a circuit the peer destroyed: we will send no
/// more on it, and its slot in the peer's stream limit comes back.
fn peer_destroyed(streams: &mut HashMap<u32, SendStream>, circ: u32) {
    if let Some(mut s) = streams.remove(&circ) {
        let _ = s.finish();
    }
}

/// Writes one batch's cells for one circuit, opening its stream if needed.
async fn write_group(
    conn: &Connection,
    streams: &mut HashMap<u32, SendStream>,
    destroyed: &mut mpsc::UnboundedReceiver<u32>,
    g: CircuitBatch,
) -> Result<(), String> {
    if !streams.contains_key(&g.circ) {
        // At the peer's stream limit this waits for a stream to close, which
        // may be one of ours the peer destroyed: keep finishing those.
        let open = conn.open_uni();
        tokio::pin!(open);
        let mut s = loop {
            tokio::select! {
                biased;
                Some(circ) = destroyed.recv() => peer_destroyed(streams, circ),
                s = &mut open => break s.map_err(|e| e.to_string())?,
            }
        };
        // The kind byte goes out with the first cells, in one call.
        let mut first = [Bytes::from_static(&[KIND_CELLS]), g.bytes];
        s.write_all_chunks(&mut first)
            .await
            .map_err(|e| e.to_string())?;
        if g.last {
            let _ = s.finish();
        } else {
            streams.insert(g.circ, s);
        }
        return Ok(());
    }
    let s = streams
        .get_mut(&g.circ)
        .ok_or_else(|| String::from("stream vanished"))?;
    s.write_chunk(g.bytes).await.map_err(|e| e.to_string())?;
    if g.last {
        if let Some(mut s) = streams.remove(&g.circ) {
            let _ = s.finish();
        }
    }
    Ok(())
}

/// Records why the link failed: the connection's reason if it is closed,
/// else `e`.
fn fail(conn: &Connection, closed: &CloseCell, e: String) {
    closed.set(match conn.close_reason() {
        Some(r) => close_reason(&r),
        None => CloseReason::Error(e),
    });
}

/// Finishes every stream, announces the close, and waits (a while) for the
/// peer to read everything and close the connection.
async fn close_gracefully(
    conn: &Connection,
    closed: &CloseCell,
    streams: HashMap<u32, SendStream>,
) {
    for (_, mut s) in streams {
        let _ = s.finish();
    }
    // Recorded first: once the FIN is out the peer may close at once.
    closed.set(CloseReason::Local);
    if send_control(conn, KIND_FIN).await.is_err() {
        return;
    }
    // The connection stays open until both ends have closed and read
    // everything (see the module docs); this bounds the wait for a peer
    // that never closes its end.
    if tokio::time::timeout(CLOSE_LINGER, conn.closed())
        .await
        .is_err()
    {
        conn.close(code::CLOSE_TIMEOUT, b"close not completed");
    }
}
