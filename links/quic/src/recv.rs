//! The receiving half of a link: one task accepts and reads every stream
//! the peer opens, and ends the link when the connection closes or the
//! peer's graceful close completes (the stream layout and the close are in
//! module `link`).
//!
//! Why one task and not one per stream: see [`relay_link::ready`]. Each
//! stream has a slot with its own waker; a wake lists the slot, and the
//! task reads only listed streams, taking every chunk quinn holds for a
//! stream under one lock (`read_chunks`), cutting them into cells in shared
//! blocks, and handing everything read in one pass to the node in one
//! batch. A lost packet still holds up only its own streams: the others
//! stay readable and are read.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use quinn::{Connection, ReadError, RecvStream};
use relay_link::batch::{Blocks, CellSplitter, Delivery};
use relay_link::link::CloseCell;
use relay_link::ready::ReadySet;
use relay_link::{CellTx, CloseReason};
use tokio::sync::mpsc;

use crate::link::{close_reason, code, send_control, KIND_CELLS, KIND_DRAINED, KIND_FIN};

/// Cells taken from one stream before the others get a turn.
const STREAM_TURN: usize = 256;
/// Cells collected before they are handed to the node mid-pass.
const FLUSH_CELLS: usize = 1024;
/// Chunks taken from quinn per read call.
const CHUNKS: usize = 32;

/// What a stream carries, once its first byte has arrived.
enum Kind {
    /// The kind byte has not arrived yet.
    Unknown,
    Cells(CellSplitter),
    /// `KIND_FIN` or `KIND_DRAINED`: nothing may follow the kind byte.
    Control(u8),
}

struct Slot {
    stream: RecvStream,
    waker: Waker,
    kind: Kind,
}

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
    /// Read to its end; the control byte it carried, if any.
    Finished(Option<u8>),
}

/// Every open stream of the peer's, by slot.
struct Streams {
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    open: usize,
    ready: ReadySet,
}

impl Streams {
    fn insert(&mut self, stream: RecvStream) -> usize {
        let i = self.free.pop().unwrap_or(self.slots.len());
        let slot = Slot {
            stream,
            waker: self.ready.waker(i),
            kind: Kind::Unknown,
        };
        if i == self.slots.len() {
            self.slots.push(Some(slot));
        } else if let Some(s) = self.slots.get_mut(i) {
            *s = Some(slot);
        }
        self.open += 1;
        i
    }

    fn remove(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i) {
            if s.take().is_some() {
                self.free.push(i);
                self.open -= 1;
            }
        }
    }
}

/// Scratch space shared by all streams' reads.
struct Reading {
    chunks: Vec<Bytes>,
    blocks: Blocks,
    out: Delivery,
}

/// Accepts the peer's streams, reads them all, and ends the link when the
/// connection closes or the peer's graceful close completes.
pub(crate) async fn receiver(
    conn: Connection,
    incoming: CellTx,
    closed: CloseCell,
    destroyed: mpsc::UnboundedSender<u32>,
) {
    let mut streams = Streams {
        slots: Vec::new(),
        free: Vec::new(),
        open: 0,
        ready: ReadySet::new(),
    };
    let mut r = Reading {
        chunks: vec![Bytes::new(); CHUNKS],
        blocks: Blocks::new(),
        out: Delivery::new(Some(incoming), destroyed),
    };
    let mut listed = Vec::new();
    let (mut got_fin, mut drained, mut got_drained) = (false, false, false);
    let reason = 'link: loop {
        // New streams first (a new stream is read at once below), but the
        // listed ones are read on every pass too, so neither starves.
        tokio::select! {
            biased;
            s = conn.accept_uni() => match s {
                Ok(s) => listed.push(streams.insert(s)),
                Err(e) => break close_reason(&e),
            },
            () = streams.ready.take(&mut listed) => {}
        }
        streams.ready.try_take(&mut listed);
        for i in listed.drain(..) {
            let Some(Some(slot)) = streams.slots.get_mut(i) else {
                continue; // a stale listing of a finished stream
            };
            match read_slot(slot, &mut r) {
                Ok(Step::Open) => {}
                Ok(Step::Finished(control)) => {
                    streams.remove(i);
                    match control {
                        Some(KIND_FIN) => got_fin = true,
                        Some(KIND_DRAINED) => got_drained = true,
                        _ => {}
                    }
                }
                Err(Fail::Connection(reason)) => break 'link reason,
                Err(Fail::Protocol(e)) => {
                    conn.close(code::PROTOCOL, b"bad stream");
                    break 'link CloseReason::Error(e);
                }
            }
            if r.out.pending() >= FLUSH_CELLS {
                r.out.flush().await;
            }
        }
        r.out.flush().await;
        if got_fin && !drained && streams.open == 0 {
            // Every cell stream the peer opened came before its FIN, and all
            // have been read to the end: the node has everything.
            drained = true;
            closed.set(CloseReason::Peer);
            r.out.stop();
            if let Err(e) = send_control(&conn, KIND_DRAINED).await {
                break CloseReason::Error(e);
            }
        }
        if drained && got_drained {
            // Both directions are closed and read: nothing is in flight.
            conn.close(code::DONE, b"");
            break CloseReason::Peer;
        }
    };
    closed.set(reason);
}

/// Reads what quinn holds for one stream (at most a turn's worth: then the
/// slot is listed again), registering the slot's waker when it runs dry.
fn read_slot(slot: &mut Slot, r: &mut Reading) -> Result<Step, Fail> {
    let waker = slot.waker.clone();
    let mut cx = Context::from_waker(&waker);
    let start = r.out.pending();
    loop {
        let polled = pin!(slot.stream.read_chunks(&mut r.chunks)).poll(&mut cx);
        match polled {
            Poll::Pending => return Ok(Step::Open),
            Poll::Ready(Ok(None)) => {
                return match &slot.kind {
                    Kind::Unknown => Err(Fail::Protocol("empty stream".into())),
                    Kind::Cells(s) if s.has_partial() => {
                        Err(Fail::Protocol("stream ended inside a cell".into()))
                    }
                    Kind::Cells(_) => Ok(Step::Finished(None)),
                    Kind::Control(k) => Ok(Step::Finished(Some(*k))),
                };
            }
            Poll::Ready(Ok(Some(n))) => {
                for i in 0..n.min(r.chunks.len()) {
                    let chunk = std::mem::take(&mut r.chunks[i]);
                    take_chunk(&mut slot.kind, &chunk, r)?;
                }
            }
            Poll::Ready(Err(e)) => return Err(read_fail(&e)),
        }
        if r.out.pending() - start >= STREAM_TURN {
            // More may be waiting: come back after the other streams.
            waker.wake_by_ref();
            return Ok(Step::Open);
        }
    }
}

/// Consumes one chunk of a stream according to its kind.
fn take_chunk(kind: &mut Kind, mut data: &[u8], r: &mut Reading) -> Result<(), Fail> {
    if let Kind::Unknown = kind {
        let Some((&k, rest)) = data.split_first() else {
            return Ok(());
        };
        *kind = match k {
            KIND_CELLS => Kind::Cells(CellSplitter::new()),
            KIND_FIN | KIND_DRAINED => Kind::Control(k),
            _ => return Err(Fail::Protocol("unknown stream kind".into())),
        };
        data = rest;
    }
    match kind {
        Kind::Cells(s) => s.push(data, &mut r.blocks, &mut r.out),
        Kind::Control(_) if !data.is_empty() => {
            return Err(Fail::Protocol("control stream too long".into()))
        }
        _ => {}
    }
    Ok(())
}

fn read_fail(e: &ReadError) -> Fail {
    match e {
        ReadError::ConnectionLost(e) => Fail::Connection(close_reason(e)),
        other => Fail::Protocol(other.to_string()),
    }
}
