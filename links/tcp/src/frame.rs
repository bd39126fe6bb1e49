//! The tcp link's frames, without IO: `u16 length || AES-256-GCM(type ||
//! payload)`, the frame counter as nonce. The link's reader and writer use
//! these functions; they are public for the fuzz targets (`links/fuzz`) and
//! tests.
//!
//! Types: `FRAME_CELLS` (payload: whole 514-byte cells, at most
//! [`MAX_BATCH`]), `FRAME_KEEPALIVE` and `FRAME_CLOSE` (any payload is
//! ignored).

use std::collections::VecDeque;

use bytes::BytesMut;
use relay_kernel::{Cell, CELL_LEN};
use relay_link::transport::{OpenKey, SealKey, TAG_LEN};
use relay_link::LinkError;

/// A frame of cells.
pub const FRAME_CELLS: u8 = 0;
/// A keepalive (resets the peer's idle timer).
pub const FRAME_KEEPALIVE: u8 = 1;
/// A graceful close.
pub const FRAME_CLOSE: u8 = 2;
/// Cells per frame: 64 × 514 bytes fits a u16 length with room to spare.
pub const MAX_BATCH: usize = 64;
/// Longest sealed frame (what follows the length).
pub const MAX_FRAME: usize = 1 + MAX_BATCH * CELL_LEN + TAG_LEN;
/// Shortest sealed frame: a type byte and the tag.
pub const MIN_FRAME: usize = 1 + TAG_LEN;

/// Why a received frame ends the link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is outside `MIN_FRAME..=MAX_FRAME`.
    #[error("bad frame length")]
    BadLength(usize),
    /// The frame did not open with the expected key and counter.
    #[error("frame failed authentication")]
    Authentication,
    /// An unknown type, or a cells frame whose payload is not whole cells.
    #[error("bad frame type")]
    BadType(u8),
}

/// What a frame that opened carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Cells, appended to the caller's queue.
    Cells,
    /// A keepalive.
    Keepalive,
    /// The peer closes the link.
    Close,
}

/// Checks a received length prefix; the sealed frame's length.
pub fn check_len(len: usize) -> Result<usize, FrameError> {
    if (MIN_FRAME..=MAX_FRAME).contains(&len) {
        Ok(len)
    } else {
        Err(FrameError::BadLength(len))
    }
}

/// What [`next_frame`] found at the start of a receive buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A whole sealed frame (without its length prefix), split off the
    /// buffer without copying: it shares the buffer's allocation.
    Frame(BytesMut),
    /// The next frame is not all there yet: at least this many more bytes
    /// are needed.
    Need(usize),
}

/// Splits the next frame off `buf`, a byte stream of `length || sealed
/// frame` records; checks the length (see [`check_len`]).
pub fn next_frame(buf: &mut BytesMut) -> Result<Next, FrameError> {
    let [a, b, ..] = buf[..] else {
        return Ok(Next::Need(2 - buf.len()));
    };
    let len = check_len(usize::from(u16::from_be_bytes([a, b])))?;
    if buf.len() < 2 + len {
        return Ok(Next::Need(2 + len - buf.len()));
    }
    let mut sealed = buf.split_to(2 + len);
    let _ = sealed.split_to(2);
    Ok(Next::Frame(sealed))
}

/// Opens the sealed frame `buf` (what followed the length prefix) as frame
/// number `counter` and parses it; a cells frame's cells are appended to
/// `cells` (sharing `buf`'s allocation).
pub fn open(
    key: &OpenKey,
    counter: u64,
    mut buf: BytesMut,
    cells: &mut VecDeque<Cell>,
) -> Result<Received, FrameError> {
    let plain_len = match key.open(counter, &mut buf) {
        Ok(p) => p.len(),
        Err(_) => return Err(FrameError::Authentication),
    };
    buf.truncate(plain_len);
    let Some(&ty) = buf.first() else {
        return Err(FrameError::BadLength(plain_len));
    };
    let _ = buf.split_to(1);
    match ty {
        FRAME_CELLS if buf.len().is_multiple_of(CELL_LEN) => {
            while !buf.is_empty() {
                match Cell::from_bytes(buf.split_to(CELL_LEN)) {
                    Ok(c) => cells.push_back(c),
                    Err(_) => break,
                }
            }
            Ok(Received::Cells)
        }
        FRAME_KEEPALIVE => Ok(Received::Keepalive),
        FRAME_CLOSE => Ok(Received::Close),
        _ => Err(FrameError::BadType(ty)),
    }
}

/// Starts a frame of type `ty` in `buf`, with room for the length; the
/// payload is appended next, then [`seal`] finishes the frame.
pub fn start_frame(buf: &mut Vec<u8>, ty: u8) {
    buf.clear();
    append_frame(buf, ty);
}

/// Starts a frame of type `ty` after the frames already in `buf` (several
/// frames then go out in one write); returns where it starts, for
/// [`seal_at`].
pub fn append_frame(buf: &mut Vec<u8>, ty: u8) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&[0, 0, ty]);
    at
}

/// Seals `buf[2..]` (frame type and payload) as frame number `counter` and
/// puts its length in `buf[..2]`: `buf` is then the whole frame.
pub fn seal(key: &SealKey, counter: u64, buf: &mut Vec<u8>) -> Result<(), LinkError> {
    seal_at(key, counter, buf, 0)
}

/// Seals the frame that starts at `at` in `buf` (see [`append_frame`]) and
/// runs to its end, as frame number `counter`.
pub fn seal_at(key: &SealKey, counter: u64, buf: &mut Vec<u8>, at: usize) -> Result<(), LinkError> {
    if buf.len() < at.saturating_add(3) {
        return Err(LinkError::BadPacket("frame without a type"));
    }
    key.seal_from(counter, buf, at + 2)?;
    let len =
        u16::try_from(buf.len() - at - 2).map_err(|_| LinkError::BadPacket("frame too long"))?;
    buf[at..at + 2].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;
    use relay_kernel::CellCommand;

    fn keys() -> (SealKey, OpenKey) {
        (
            SealKey::new(&[7; 32]).unwrap(),
            OpenKey::new(&[7; 32]).unwrap(),
        )
    }

    /// The receiving side of a byte stream: length, check, open.
    fn receive(
        key: &OpenKey,
        counter: u64,
        wire: &[u8],
        cells: &mut VecDeque<Cell>,
    ) -> Result<Received, FrameError> {
        let len = usize::from(u16::from_be_bytes([wire[0], wire[1]]));
        check_len(len)?;
        assert_eq!(wire.len(), 2 + len, "one whole frame");
        open(key, counter, BytesMut::from(&wire[2..]), cells)
    }

    #[test]
    fn lengths_outside_the_frame_bounds_are_refused() {
        assert_eq!(check_len(0), Err(FrameError::BadLength(0)));
        assert_eq!(check_len(MIN_FRAME - 1), Err(FrameError::BadLength(16)));
        assert_eq!(check_len(MIN_FRAME), Ok(MIN_FRAME));
        assert_eq!(check_len(MAX_FRAME), Ok(MAX_FRAME));
        assert!(check_len(MAX_FRAME + 1).is_err());
        // The reader's error text is what the link reports.
        assert_eq!(FrameError::BadLength(1).to_string(), "bad frame length");
    }

    #[test]
    fn next_frame_waits_for_whole_frames_and_refuses_bad_lengths() {
        let mut rx = BytesMut::new();
        assert_eq!(next_frame(&mut rx), Ok(Next::Need(2)));
        rx.extend_from_slice(&[0]);
        assert_eq!(next_frame(&mut rx), Ok(Next::Need(1)));
        rx.extend_from_slice(&[MIN_FRAME as u8, 9]);
        assert_eq!(next_frame(&mut rx), Ok(Next::Need(MIN_FRAME - 1)));
        let mut bad = BytesMut::from(&[0u8, 3, 0, 0, 0][..]);
        assert_eq!(next_frame(&mut bad), Err(FrameError::BadLength(3)));
    }

    #[test]
    fn appended_frames_are_the_frames_sealed_one_by_one() {
        let (seal_key, _) = keys();
        let (mut joined, mut one, mut wire) = (Vec::new(), Vec::new(), Vec::new());
        for (i, ty) in [FRAME_CELLS, FRAME_KEEPALIVE, FRAME_CELLS]
            .into_iter()
            .enumerate()
        {
            let at = append_frame(&mut joined, ty);
            start_frame(&mut one, ty);
            for b in [&mut joined, &mut one] {
                b.extend_from_slice(&[i as u8; CELL_LEN]);
            }
            seal_at(&seal_key, i as u64, &mut joined, at).unwrap();
            seal(&seal_key, i as u64, &mut one).unwrap();
            wire.extend_from_slice(&one);
        }
        assert_eq!(joined, wire);
        assert!(seal_at(&seal_key, 9, &mut joined.clone(), joined.len() - 2).is_err());
    }

    #[test]
    fn wrong_counter_or_type_is_refused() {
        let (seal_key, open_key) = keys();
        let mut buf = Vec::new();
        start_frame(&mut buf, FRAME_KEEPALIVE);
        seal(&seal_key, 5, &mut buf).unwrap();
        let mut cells = VecDeque::new();
        assert_eq!(
            receive(&open_key, 4, &buf, &mut cells),
            Err(FrameError::Authentication)
        );
        assert_eq!(
            receive(&open_key, 5, &buf, &mut cells),
            Ok(Received::Keepalive)
        );
        start_frame(&mut buf, 9);
        seal(&seal_key, 6, &mut buf).unwrap();
        assert_eq!(
            receive(&open_key, 6, &buf, &mut cells),
            Err(FrameError::BadType(9))
        );
        // A cells frame with a partial cell.
        start_frame(&mut buf, FRAME_CELLS);
        buf.extend_from_slice(&[1; CELL_LEN + 1]);
        seal(&seal_key, 7, &mut buf).unwrap();
        assert_eq!(
            receive(&open_key, 7, &buf, &mut cells),
            Err(FrameError::BadType(FRAME_CELLS))
        );
        assert!(cells.is_empty());
    }

    proptest! {
        /// A stream of frames read in pieces of any sizes splits into the
        /// same frames, each opening with its counter; the cells share the
        /// receive buffer's allocation.
        #[test]
        fn frames_split_off_a_stream_in_any_pieces(
            counts in proptest::collection::vec(0..=MAX_BATCH, 1..6),
            cuts in proptest::collection::vec(1usize..40_000, 1..20),
        ) {
            let (seal_key, open_key) = keys();
            let mut wire = Vec::new();
            let mut buf = Vec::new();
            for (i, &n) in counts.iter().enumerate() {
                start_frame(&mut buf, FRAME_CELLS);
                for k in 0..n {
                    let mut c = Cell::new(1 + k as u32, CellCommand::Relay);
                    c.body_mut().fill(i as u8);
                    buf.extend_from_slice(c.as_bytes());
                }
                seal(&seal_key, i as u64, &mut buf).unwrap();
                wire.extend_from_slice(&buf);
            }
            let mut rx = BytesMut::with_capacity(wire.len());
            let base = rx.as_ptr() as usize;
            let (mut at, mut cut, mut counter) = (0, cuts.iter().cycle(), 0u64);
            let mut got = VecDeque::new();
            while at < wire.len() {
                let end = (at + cut.next().unwrap()).min(wire.len());
                rx.extend_from_slice(&wire[at..end]);
                at = end;
                while let Next::Frame(f) = next_frame(&mut rx).unwrap() {
                    prop_assert_eq!(open(&open_key, counter, f, &mut got), Ok(Received::Cells));
                    counter += 1;
                }
            }
            prop_assert_eq!(counter as usize, counts.len());
            prop_assert!(rx.is_empty());
            prop_assert_eq!(got.len(), counts.iter().sum::<usize>());
            for c in &got {
                let p = c.as_bytes().as_ptr() as usize;
                prop_assert!(p >= base && p < base + wire.len(), "a cell was copied");
            }
        }

        /// Any batch of cells, sealed as frame `counter`, opens as the same
        /// cells in order; any other counter fails.
        #[test]
        fn cells_round_trip(
            counter in any::<u64>(),
            cells in proptest::collection::vec((any::<u32>(), any::<u8>(), any::<u8>()), 0..=MAX_BATCH),
        ) {
            let (seal_key, open_key) = keys();
            let sent: Vec<Cell> = cells
                .iter()
                .map(|&(circ, cmd, fill)| {
                    let mut c = Cell::new(circ, CellCommand::Relay);
                    c.body_mut().fill(fill);
                    let mut raw = BytesMut::from(c.as_bytes());
                    raw[4] = cmd;
                    Cell::from_bytes(raw).unwrap()
                })
                .collect();
            let mut buf = Vec::new();
            start_frame(&mut buf, FRAME_CELLS);
            for c in &sent {
                buf.extend_from_slice(c.as_bytes());
            }
            seal(&seal_key, counter, &mut buf).unwrap();
            let mut got = VecDeque::new();
            prop_assert_eq!(receive(&open_key, counter, &buf, &mut got), Ok(Received::Cells));
            prop_assert_eq!(got.len(), sent.len());
            for (a, b) in got.iter().zip(&sent) {
                prop_assert_eq!(a.as_bytes(), b.as_bytes());
            }
            let mut other = VecDeque::new();
            prop_assert_eq!(
                receive(&open_key, counter.wrapping_add(1), &buf, &mut other),
                Err(FrameError::Authentication)
            );
            prop_assert!(other.is_empty());
        }

        /// Control frames round-trip with any payload (it is ignored).
        #[test]
        fn control_frames_round_trip(
            close in any::<bool>(),
            payload in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let (seal_key, open_key) = keys();
            let mut buf = Vec::new();
            start_frame(&mut buf, if close { FRAME_CLOSE } else { FRAME_KEEPALIVE });
            buf.extend_from_slice(&payload);
            seal(&seal_key, 3, &mut buf).unwrap();
            let want = if close { Received::Close } else { Received::Keepalive };
            let mut cells = VecDeque::new();
            prop_assert_eq!(receive(&open_key, 3, &buf, &mut cells), Ok(want));
            prop_assert!(cells.is_empty());
        }

        /// Arbitrary bytes never panic: a bad length or a failed open.
        #[test]
        fn garbage_is_refused(counter in any::<u64>(), data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let (_, open_key) = keys();
            let mut cells = VecDeque::new();
            let got = check_len(data.len())
                .and_then(|_| open(&open_key, counter, BytesMut::from(&data[..]), &mut cells));
            prop_assert!(got.is_err());
            prop_assert!(cells.is_empty());
        }
    }
}
