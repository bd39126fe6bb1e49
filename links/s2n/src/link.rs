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
//! The idle timeout is QUIC's own (see the connection limits); the writer
//! sends a PING every keepalive interval. A peer that vanishes shows up as
//! the idle timer expiring.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use relay_kernel::Cell;
use relay_link::batch::{CircuitBatch, Grouper, KIND_CELLS, KIND_FIN};
use relay_link::link::CloseCell;
use relay_link::{CellRx, CloseReason, LinkIo};
use s2n_quic::connection::{Error as ConnectionError, Handle};
use s2n_quic::provider::event::Location;
use s2n_quic::stream::SendStream;
use tokio::sync::{mpsc, watch};

use crate::recv::receiver;

/// Connection close codes.
pub(crate) mod code {
    use s2n_quic::application::Error;
    fn code(n: u64) -> Error {
        Error::new(n).unwrap_or(Error::UNKNOWN)
    }
    /// Graceful close: everything sent was read.
    pub(crate) const DONE: u64 = 1;
    pub(crate) fn done() -> Error {
        code(DONE)
    }
    /// The peer broke the stream protocol.
    pub(crate) fn protocol() -> Error {
        code(3)
    }
    /// A graceful close that the peer did not complete in time.
    pub(crate) fn close_timeout() -> Error {
        code(4)
    }
}

/// Most cells the writer takes from the node at once: what is queued, up
/// to this. Larger batches mean larger writes per circuit and fewer
/// wake-ups of the connection; 1024 cells are 514 KB.
const BATCH_CELLS: usize = 1024;
/// How long a closing link waits for the peer to read everything.
const CLOSE_LINGER: Duration = Duration::from_secs(60);

/// Why a QUIC connection ended, as a link close reason.
pub(crate) fn close_reason(e: &ConnectionError) -> CloseReason {
    match e {
        ConnectionError::IdleTimerExpired { .. } => CloseReason::IdleTimeout,
        ConnectionError::Closed {
            initiator: Location::Local,
            ..
        }
        | ConnectionError::Application {
            initiator: Location::Local,
            ..
        } => CloseReason::Local,
        ConnectionError::Application { error, .. } if u64::from(*error) == code::DONE => {
            CloseReason::Peer
        }
        ConnectionError::Application { error, .. } => {
            CloseReason::Error(format!("peer closed the link (code {})", u64::from(*error)))
        }
        other => CloseReason::Error(other.to_string()),
    }
}

/// A stream error as a close reason.
pub(crate) fn stream_reason(e: &s2n_quic::stream::Error) -> Option<CloseReason> {
    match e {
        s2n_quic::stream::Error::ConnectionError { error, .. } => Some(close_reason(error)),
        _ => None,
    }
}

/// Starts the tasks of an established link; returns them for the transport
/// to abort on a crash.
pub(crate) fn spawn(
    conn: s2n_quic::Connection,
    io: LinkIo,
    keepalive: Duration,
) -> [tokio::task::JoinHandle<()>; 2] {
    let LinkIo {
        outgoing,
        incoming,
        closed,
    } = io;
    let (handle, acceptor) = conn.split();
    let (destroyed_tx, destroyed_rx) = mpsc::unbounded_channel();
    // Dropped when the receiver ends, which it does when the connection does.
    let (ended_tx, ended_rx) = watch::channel(());
    let r = tokio::spawn(receiver(
        handle.clone(),
        acceptor,
        incoming,
        closed.clone(),
        destroyed_tx,
        ended_tx,
    ));
    let w = tokio::spawn(writer(
        handle,
        outgoing,
        closed,
        destroyed_rx,
        ended_rx,
        keepalive,
    ));
    [r, w]
}

/// A stream error as a close reason.
fn reason_of(e: s2n_quic::stream::Error) -> CloseReason {
    stream_reason(&e).unwrap_or_else(|| CloseReason::Error(e.to_string()))
}

/// Opens a stream carrying one control byte, and finishes it.
pub(crate) async fn send_control(conn: &Handle, kind: u8) -> Result<(), CloseReason> {
    let mut conn = conn.clone();
    let mut s = conn
        .open_send_stream()
        .await
        .map_err(|e| close_reason(&e))?;
    s.send(Bytes::copy_from_slice(&[kind]))
        .await
        .map_err(reason_of)?;
    s.finish().map_err(reason_of)
}

/// Takes cells from the node and writes each circuit's to its stream.
async fn writer(
    mut conn: Handle,
    mut outgoing: CellRx,
    closed: CloseCell,
    mut destroyed: mpsc::UnboundedReceiver<u32>,
    mut ended: watch::Receiver<()>,
    keepalive: Duration,
) {
    let mut streams: HashMap<u32, SendStream> = HashMap::new();
    let mut grouper = Grouper::new();
    let mut groups: Vec<CircuitBatch> = Vec::new();
    let mut cells: Vec<Cell> = Vec::with_capacity(BATCH_CELLS);
    let mut ping = tokio::time::interval(keepalive);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let n = tokio::select! {
            biased;
            Some(circ) = destroyed.recv() => {
                peer_destroyed(&mut streams, circ);
                continue;
            }
            n = outgoing.recv_many(&mut cells, BATCH_CELLS) => n,
            _ = ping.tick() => {
                let _ = conn.ping();
                continue;
            }
            // The receiver records why the connection ended.
            _ = ended.changed() => return,
        };
        // 0: the node closed or dropped the link: close gracefully.
        let close = n == 0;
        groups.clear();
        grouper.group(&mut cells, &mut groups);
        for g in groups.drain(..) {
            if let Err(e) = write_group(&mut conn, &mut streams, &mut destroyed, g).await {
                closed.set(e);
                return;
            }
        }
        // The node queue does not count against tokio's cooperative
        // budget: with cells always queued, yield now and then.
        tokio::task::coop::consume_budget().await;
        if close {
            close_gracefully(&conn, &closed, streams, ended).await;
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
    conn: &mut Handle,
    streams: &mut HashMap<u32, SendStream>,
    destroyed: &mut mpsc::UnboundedReceiver<u32>,
    g: CircuitBatch,
) -> Result<(), CloseReason> {
    if !streams.contains_key(&g.circ) {
        // At the peer's stream limit this waits for a stream to close, which
        // may be one of ours the peer destroyed: keep finishing those.
        let mut opener = conn.clone();
        let open = opener.open_send_stream();
        tokio::pin!(open);
        let mut s = loop {
            tokio::select! {
                biased;
                Some(circ) = destroyed.recv() => peer_destroyed(streams, circ),
                s = &mut open => break s.map_err(|e| close_reason(&e))?,
            }
        };
        // The kind byte goes out with the first cells, in one call.
        let mut first = [Bytes::from_static(&[KIND_CELLS]), g.bytes];
        s.send_vectored(&mut first).await.map_err(reason_of)?;
        if g.last {
            let _ = s.finish();
        } else {
            streams.insert(g.circ, s);
        }
        return Ok(());
    }
    let s = streams
        .get_mut(&g.circ)
        .ok_or_else(|| CloseReason::Error("stream vanished".into()))?;
    s.send(g.bytes).await.map_err(reason_of)?;
    if g.last {
        if let Some(mut s) = streams.remove(&g.circ) {
            let _ = s.finish();
        }
    }
    Ok(())
}

/// Finishes every stream, announces the close, and waits (a while) for the
/// peer to read everything and close the connection.
async fn close_gracefully(
    conn: &Handle,
    closed: &CloseCell,
    streams: HashMap<u32, SendStream>,
    mut ended: watch::Receiver<()>,
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
    let wait = async { while ended.changed().await.is_ok() {} };
    if tokio::time::timeout(CLOSE_LINGER, wait).await.is_err() {
        conn.close(code::close_timeout());
    }
}
