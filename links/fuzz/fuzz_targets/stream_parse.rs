//! The stream protocol of the QUIC link kinds (quic, s2n): each received
//! stream goes through `relay_link::batch::StreamState` (a kind byte, then
//! whole cells, or a lone FIN / DRAINED byte), which is what their
//! receivers run on the bytes the peer sent.
//!
//! The input is a list of records: a selector byte (bits 0-2 pick one of 8
//! streams; bit 3 ends that stream; bit 4 makes the chunk a DESTROY cell
//! header, so destroy reporting is reached) and a chunk: a u16 length (at
//! most 2000) and bytes, fed to the stream.
//!
//! Checks against a model of the protocol: no panic; `take` fails exactly
//! when the stream's kind byte is unknown or a control stream has bytes
//! after its kind (afterwards the stream is dropped, as the receivers
//! do); the cells delivered are the cells stream bytes concatenated, cut
//! at 514 bytes, in order, per stream; every DESTROY cell is reported with
//! its circuit id; `end` says `Cells`, `Fin` or `Drained` exactly for a
//! well-formed stream and errs for an empty one or one stopped inside a
//! cell.
#![no_main]

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use common::Input;
use libfuzzer_sys::fuzz_target;
use relay_kernel::{CellBlocks, CellCommand, CELL_LEN};
use relay_link::batch::{
    Carried, Delivery, StreamState, KIND_CELLS, KIND_DRAINED, KIND_FIN,
};
use relay_link::cell_queue;

#[derive(Default)]
struct Model {
    /// Every byte fed so far, while the stream is alive.
    bytes: Vec<u8>,
    dead: bool,
}

impl Model {
    /// What `take` must say after `bytes` grew.
    fn valid(&self) -> bool {
        match self.bytes.first() {
            None => true,
            Some(&KIND_CELLS) => true,
            Some(&KIND_FIN) | Some(&KIND_DRAINED) => self.bytes.len() == 1,
            Some(_) => false,
        }
    }

    fn end(&self) -> Result<Carried, ()> {
        match self.bytes.first() {
            None => Err(()),
            Some(&KIND_CELLS) if (self.bytes.len() - 1) % CELL_LEN == 0 => Ok(Carried::Cells),
            Some(&KIND_CELLS) => Err(()),
            Some(&KIND_FIN) => Ok(Carried::Fin),
            Some(&KIND_DRAINED) => Ok(Carried::Drained),
            Some(_) => Err(()),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (tx, mut rx) = cell_queue(1 << 16);
    let (dtx, mut drx) = tokio::sync::mpsc::unbounded_channel();
    let mut out = Delivery::new(Some(tx), dtx);
    let mut blocks = CellBlocks::new();
    let mut streams: Vec<(StreamState, Model)> = (0..8).map(|_| Default::default()).collect();
    let mut want_cells: Vec<Vec<u8>> = Vec::new();
    let mut want_destroys = Vec::new();
    let mut input = Input(data);
    while !input.is_empty() {
        let sel = input.byte();
        let s = usize::from(sel & 7);
        let mut chunk = if sel & 0x10 != 0 {
            let mut c = input.u32().to_be_bytes().to_vec();
            c.push(CellCommand::Destroy as u8);
            c
        } else {
            let len = usize::from(input.u16()).min(2000);
            input.take(len).to_vec()
        };
        let (st, m) = &mut streams[s];
        if m.dead {
            chunk.clear();
        }
        if !chunk.is_empty() {
            let before = m.bytes.len();
            m.bytes.extend_from_slice(&chunk);
            let ok = m.valid();
            let got = st.take(&chunk, &mut blocks, &mut out);
            assert_eq!(got.is_ok(), ok, "take on {:?}", &m.bytes[..m.bytes.len().min(8)]);
            if ok && m.bytes[0] == KIND_CELLS {
                // Cells completed by this chunk.
                let cells_before = before.saturating_sub(1) / CELL_LEN;
                let cells_now = (m.bytes.len() - 1) / CELL_LEN;
                for i in cells_before..cells_now {
                    let c = &m.bytes[1 + i * CELL_LEN..1 + (i + 1) * CELL_LEN];
                    if c[4] == CellCommand::Destroy as u8 {
                        want_destroys.push(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                    }
                    want_cells.push(c.to_vec());
                }
            }
            if !ok {
                m.dead = true;
            }
        }
        if sel & 0x08 != 0 && !m.dead {
            let end = st.end();
            assert_eq!(end.map_err(|_| ()), m.end(), "end of stream");
            *st = StreamState::default();
            *m = Model::default();
        }
    }
    assert_eq!(out.pending(), want_cells.len());
    // Hand the batch over (the queue has room: completes at once).
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(pin!(out.flush()).as_mut().poll(&mut cx), Poll::Ready(())));
    let mut got = Vec::new();
    rx.try_recv_many(&mut got, usize::MAX);
    assert_eq!(got.len(), want_cells.len());
    for (g, w) in got.iter().zip(&want_cells) {
        assert_eq!(g.as_bytes(), &w[..]);
    }
    let mut destroys = Vec::new();
    while let Ok(id) = drx.try_recv() {
        destroys.push(id);
    }
    assert_eq!(destroys, want_destroys);
});

