//! Datagram and frame formats.
//!
//! Every datagram starts with a type byte, then the connection id its
//! receiver chose (8 bytes; see `endpoint` for how ids are exchanged).
//! Handshake datagrams carry Noise messages in the clear (Noise protects
//! them):
//!
//! - `HS_INIT`: `1 || initiator's id || instance (u64) || cookie length (u8)
//!   || cookie || message 1`
//! - `HS_RESP`: `2 || initiator's id || responder's id || instance ||
//!   message 2`
//! - `HS_FIN`: `3 || responder's id || message 3`
//! - `COOKIE`: `5 || initiator's id || cookie (16)`
//!
//! DATA datagrams are `4 || receiver's id || packet number (u64) ||
//! AES-256-GCM(frames)` with the first 17 bytes as associated data and the
//! packet number as nonce; a packet number is never reused,
//! retransmissions go out under fresh ones. All integers are big-endian.
//!
//! Frames: ACK (largest acknowledged, ACK delay, receive window, up to 32
//! ranges of received packet numbers, newest first), CELL (the circuit's
//! sequence number on this link, then the 514-byte cell), WAITED_CELL (a
//! CELL with the microseconds the cell waited in reordering buffers on
//! earlier links, for circuit congestion control), PING (elicits an
//! ACK; the keepalive), CLOSE (graceful close after everything was
//! acknowledged), CAPACITY (the receiver's packet-pair estimate of the
//! bottleneck, bytes per second, for the UDT rate controller) and PAIR
//! (marks the second packet of a back-to-back pair).

use relay_kernel::CELL_LEN;

/// Handshake message 1 (`1 || cookie length || cookie || noise`).
pub const HS_INIT: u8 = 1;
/// Handshake message 2.
pub const HS_RESP: u8 = 2;
/// Handshake message 3.
pub const HS_FIN: u8 = 3;
/// Encrypted frames.
pub const DATA: u8 = 4;
/// A stateless cookie: retry the handshake with it.
pub const COOKIE: u8 = 5;

/// Bytes of a connection id.
pub const CID_LEN: usize = 8;
/// DATA header: type, the receiver's connection id, packet number.
pub const DATA_HEADER: usize = 1 + CID_LEN + 8;

/// The big-endian u64 at `at` in a DATA datagram's header (None for
/// anything else).
fn data_header_u64(datagram: &[u8], at: usize) -> Option<u64> {
    if datagram.first() != Some(&DATA) {
        return None;
    }
    let b: [u8; 8] = datagram.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// The receiver's connection id in a DATA datagram (None for anything else).
pub fn data_packet_cid(datagram: &[u8]) -> Option<u64> {
    data_header_u64(datagram, 1)
}

/// The packet number of a DATA datagram (None for anything else).
pub fn data_packet_number(datagram: &[u8]) -> Option<u64> {
    data_header_u64(datagram, 1 + CID_LEN)
}

pub const FRAME_ACK: u8 = 1;
pub const FRAME_CELL: u8 = 2;
pub const FRAME_PING: u8 = 3;
pub const FRAME_CLOSE: u8 = 4;
/// The bottleneck capacity the receiver estimated from packet pairs.
pub const FRAME_CAPACITY: u8 = 5;
/// Marks the second packet of a packet pair.
pub const FRAME_PAIR: u8 = 6;
/// Padding: the rest of the packet, zero bytes, is ignored. It makes the
/// datagram-size probes of [`crate::mtu`] as large as the size they test.
/// (Zeros only, so the encoding stays canonical.)
pub const FRAME_PADDING: u8 = 7;
/// A cell that waited in reordering buffers on earlier links: a CELL frame
/// with the wait, in microseconds, between the sequence number and the
/// cell. Used only for a non-zero wait (the encoding stays canonical).
pub const FRAME_WAITED_CELL: u8 = 8;
/// Encoded length of a CAPACITY frame.
pub const CAPACITY_FRAME_LEN: usize = 9;

/// CELL frame: type, circuit sequence, cell.
pub const CELL_FRAME_LEN: usize = 1 + 4 + CELL_LEN;
/// WAITED_CELL frame: type, circuit sequence, wait, cell.
pub const WAITED_CELL_FRAME_LEN: usize = CELL_FRAME_LEN + 4;

/// Encoded length of the frame of a cell that waited `wait_us`.
pub fn cell_frame_len(wait_us: u32) -> usize {
    if wait_us == 0 {
        CELL_FRAME_LEN
    } else {
        WAITED_CELL_FRAME_LEN
    }
}

/// Appends the frame of cell `raw` with circuit sequence `seq` and
/// reordering wait `wait_us`.
pub fn write_cell(out: &mut Vec<u8>, seq: u32, wait_us: u32, raw: &[u8]) {
    if wait_us == 0 {
        out.push(FRAME_CELL);
        out.extend_from_slice(&seq.to_be_bytes());
    } else {
        out.push(FRAME_WAITED_CELL);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&wait_us.to_be_bytes());
    }
    out.extend_from_slice(raw);
}

/// Most ranges in one ACK frame.
pub const MAX_ACK_RANGES: usize = 32;

/// Encoded length of an ACK frame with `ranges` ranges.
pub fn ack_len(ranges: usize) -> usize {
    1 + 4 + 8 + 1 + 16 * ranges
}

/// Appends an ACK frame: `delay_us` the microseconds the receiver held it
/// (for RTT), `max_cells` the cells it will accept in total (flow
/// control), `ranges` inclusive ranges of received packet numbers, highest
/// first, not overlapping (at most [`MAX_ACK_RANGES`] are written).
pub fn write_ack(out: &mut Vec<u8>, delay_us: u32, max_cells: u64, ranges: &[(u64, u64)]) {
    let ranges = &ranges[..ranges.len().min(MAX_ACK_RANGES)];
    out.push(FRAME_ACK);
    out.extend_from_slice(&delay_us.to_be_bytes());
    out.extend_from_slice(&max_cells.to_be_bytes());
    out.push(ranges.len() as u8);
    for (lo, hi) in ranges {
        out.extend_from_slice(&lo.to_be_bytes());
        out.extend_from_slice(&hi.to_be_bytes());
    }
}

/// A received ACK frame, borrowing its ranges from the datagram (parsing
/// allocates nothing). The parser checked that the ranges are well formed:
/// `lo <= hi`, highest first, not overlapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack<'a> {
    /// Microseconds the receiver held the ACK (for RTT).
    pub delay_us: u32,
    /// Cells the receiver will accept in total (flow control).
    pub max_cells: u64,
    raw: &'a [u8],
}

impl<'a> Ack<'a> {
    /// The ranges, highest first.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + 'a {
        self.raw
            .chunks_exact(16)
            .map(|r| (u64_at(r), u64_at(&r[8..])))
    }

    /// How many ranges.
    pub fn range_count(&self) -> usize {
        self.raw.len() / 16
    }
}

/// A parsed frame, borrowing from the datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Acknowledgements.
    Ack(Ack<'a>),
    /// A cell with its circuit sequence number and the microseconds it
    /// waited in reordering buffers on earlier links (see
    /// [`relay_kernel::Cell::reorder_wait_us`]).
    Cell(u32, u32, &'a [u8]),
    /// Keepalive.
    Ping,
    /// Graceful close.
    Close,
    /// Bottleneck capacity, bytes per second.
    Capacity(u64),
    /// This packet left right behind the previous packet number.
    Pair,
    /// Padding to the end of the packet: this many bytes after the type.
    /// Only the last frame of a packet can be padding.
    Padding(usize),
}

impl Frame<'_> {
    /// Appends this frame's encoding: what [`Frames`] parses back to an
    /// equal frame (the encoding is canonical). A `Cell` frame's cell must
    /// be `CELL_LEN` bytes.
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Ack(ack) => {
                out.push(FRAME_ACK);
                out.extend_from_slice(&ack.delay_us.to_be_bytes());
                out.extend_from_slice(&ack.max_cells.to_be_bytes());
                out.push(ack.range_count() as u8);
                out.extend_from_slice(ack.raw);
            }
            Frame::Cell(seq, wait_us, cell) => write_cell(out, *seq, *wait_us, cell),
            Frame::Ping => out.push(FRAME_PING),
            Frame::Close => out.push(FRAME_CLOSE),
            Frame::Capacity(c) => {
                out.push(FRAME_CAPACITY);
                out.extend_from_slice(&c.to_be_bytes());
            }
            Frame::Pair => out.push(FRAME_PAIR),
            Frame::Padding(n) => {
                out.push(FRAME_PADDING);
                out.resize(out.len() + n, 0);
            }
        }
    }
}

/// Frames of a decrypted DATA payload; stops with an error at the first
/// malformed frame (the whole packet is then discarded by the caller).
pub struct Frames<'a> {
    buf: &'a [u8],
}

impl<'a> Frames<'a> {
    /// Iterates over `payload`.
    pub fn new(buf: &'a [u8]) -> Frames<'a> {
        Frames { buf }
    }
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if buf.len() < n {
        return None;
    }
    let (a, b) = buf.split_at(n);
    *buf = b;
    Some(a)
}

/// The big-endian `u32` at the head of `b` (at least 4 bytes).
pub(crate) fn u32_at(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn u64_at(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&ty, rest) = self.buf.split_first()?;
        self.buf = rest;
        let frame = (|| match ty {
            FRAME_ACK => {
                let h = take(&mut self.buf, 13)?;
                let n = usize::from(h[12]);
                if n > MAX_ACK_RANGES {
                    return None;
                }
                let raw = take(&mut self.buf, 16 * n)?;
                // Each range well formed and below the one before it (the
                // first may end at u64::MAX).
                let mut floor: Option<u64> = None;
                for r in raw.chunks_exact(16) {
                    let (lo, hi) = (u64_at(r), u64_at(&r[8..]));
                    if lo > hi || floor.is_some_and(|f| hi >= f) {
                        return None;
                    }
                    floor = Some(lo);
                }
                Some(Frame::Ack(Ack {
                    delay_us: u32_at(h),
                    max_cells: u64_at(&h[4..]),
                    raw,
                }))
            }
            FRAME_CELL => {
                let b = take(&mut self.buf, 4 + CELL_LEN)?;
                Some(Frame::Cell(u32_at(b), 0, &b[4..]))
            }
            FRAME_WAITED_CELL => {
                let b = take(&mut self.buf, 8 + CELL_LEN)?;
                let wait_us = u32_at(&b[4..]);
                // A zero wait is written as a plain CELL frame.
                (wait_us != 0).then(|| Frame::Cell(u32_at(b), wait_us, &b[8..]))
            }
            FRAME_PING => Some(Frame::Ping),
            FRAME_CLOSE => Some(Frame::Close),
            FRAME_CAPACITY => take(&mut self.buf, 8).map(|b| Frame::Capacity(u64_at(b))),
            FRAME_PAIR => Some(Frame::Pair),
            FRAME_PADDING => {
                let n = self.buf.len();
                let zeros = self.buf.iter().all(|&b| b == 0);
                self.buf = &[];
                zeros.then_some(Frame::Padding(n))
            }
            _ => None,
        })();
        match frame {
            Some(f) => Some(Ok(f)),
            None => {
                self.buf = &[];
                Some(Err(()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    #[allow(clippy::panic)]
    fn frames_round_trip() {
        let mut out = Vec::new();
        write_ack(&mut out, 7, 99, &[(10, 20), (1, 5)]);
        assert_eq!(out.len(), ack_len(2));
        out.push(FRAME_CELL);
        out.extend_from_slice(&3u32.to_be_bytes());
        out.extend_from_slice(&[9u8; CELL_LEN]);
        out.push(FRAME_PING);
        out.push(FRAME_CAPACITY);
        out.extend_from_slice(&123_456u64.to_be_bytes());
        out.push(FRAME_PAIR);
        // Padding ends the packet; it must be zeros.
        out.push(FRAME_PADDING);
        out.extend_from_slice(&[0, 0, 0]);
        let frames: Vec<_> = Frames::new(&out).collect();
        assert_eq!(frames.len(), 6);
        assert_eq!(frames[5], Ok(Frame::Padding(3)));
        let mut bad = vec![FRAME_PADDING, 0, FRAME_PING];
        assert_eq!(Frames::new(&bad).collect::<Vec<_>>(), [Err(())]);
        bad.truncate(1);
        assert_eq!(
            Frames::new(&bad).collect::<Vec<_>>(),
            [Ok(Frame::Padding(0))]
        );
        assert_eq!(frames[3], Ok(Frame::Capacity(123_456)));
        assert_eq!(frames[4], Ok(Frame::Pair));
        let Ok(Frame::Ack(ack)) = frames[0] else {
            panic!("{:?}", frames[0]);
        };
        assert_eq!((ack.delay_us, ack.max_cells), (7, 99));
        assert_eq!(ack.ranges().collect::<Vec<_>>(), [(10, 20), (1, 5)]);
        assert_eq!(frames[1], Ok(Frame::Cell(3, 0, &[9u8; CELL_LEN][..])));
        assert_eq!(frames[2], Ok(Frame::Ping));
    }

    #[test]
    fn a_waited_cell_frame_with_no_wait_is_malformed() {
        let mut out = vec![FRAME_WAITED_CELL];
        out.extend_from_slice(&5u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&[1u8; CELL_LEN]);
        assert_eq!(Frames::new(&out).collect::<Vec<_>>(), [Err(())]);
        out[8] = 7;
        assert_eq!(
            Frames::new(&out).collect::<Vec<_>>(),
            [Ok(Frame::Cell(5, 7, &[1u8; CELL_LEN][..]))]
        );
    }

    #[test]
    fn unordered_or_overlapping_ranges_are_malformed() {
        for ranges in [[(1, 5), (10, 20)], [(10, 20), (5, 10)], [(10, 20), (9, 3)]] {
            let mut out = Vec::new();
            write_ack(&mut out, 0, 0, &ranges);
            assert!(Frames::new(&out).any(|f| f.is_err()), "{ranges:?} accepted");
        }
    }

    /// A frame to encode: ACK ranges as (gap, length) steps downwards
    /// from `top`, so they are well formed whenever they fit in a u64.
    #[derive(Clone, Debug)]
    enum Spec {
        Ack(u32, u64, u64, Vec<(u64, u64)>),
        Cell(u32, u32, u8),
        Ping,
        Close,
        Capacity(u64),
        Pair,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        prop_oneof![
            (
                any::<u32>(),
                any::<u64>(),
                // The edges too: ranges ending at the last packet number
                // or running down to 0.
                prop_oneof![any::<u64>(), Just(u64::MAX), 0..2000u64],
                proptest::collection::vec((0..1000u64, 0..1000u64), 0..=MAX_ACK_RANGES)
            )
                .prop_map(|(d, m, top, steps)| Spec::Ack(d, m, top, steps)),
            (
                any::<u32>(),
                prop_oneof![Just(0u32), any::<u32>()],
                any::<u8>()
            )
                .prop_map(|(s, w, f)| Spec::Cell(s, w, f)),
            Just(Spec::Ping),
            Just(Spec::Close),
            any::<u64>().prop_map(Spec::Capacity),
            Just(Spec::Pair),
        ]
    }

    /// Ranges from `top` downwards: each `(gap, len)` leaves `gap`
    /// numbers out, then covers `len + 1`; stops where u64 runs out.
    fn ranges(top: u64, steps: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut hi = top;
        for &(gap, len) in steps {
            let Some(lo) = hi.checked_sub(len) else { break };
            out.push((lo, hi));
            let Some(next) = lo.checked_sub(gap + 1) else {
                break;
            };
            hi = next;
        }
        out
    }

    /// Regression (found by the udt_conn fuzz target): a peer that sent
    /// packet number u64::MAX got ACKs whose first range ends there, and
    /// the parser refused them (it compared the first range against
    /// u64::MAX as if a range above it existed), so every later ACK of
    /// the connection was dropped as malformed.
    #[test]
    #[allow(clippy::panic)]
    fn ranges_may_end_at_the_last_packet_number() {
        let mut out = Vec::new();
        write_ack(&mut out, 0, 0, &[(u64::MAX, u64::MAX), (5, 5)]);
        let frames: Vec<_> = Frames::new(&out).collect();
        let [Ok(Frame::Ack(ack))] = frames[..] else {
            panic!("{frames:?}");
        };
        assert_eq!(
            ack.ranges().collect::<Vec<_>>(),
            [(u64::MAX, u64::MAX), (5, 5)]
        );
        // Still refused: a range overlapping the one above.
        out.clear();
        write_ack(&mut out, 0, 0, &[(3, u64::MAX), (9, 9)]);
        assert!(Frames::new(&out).any(|f| f.is_err()));
    }

    proptest! {
        #[test]
        fn never_panics_on_garbage(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            // Whatever parses re-encodes to the bytes it came from.
            let mut again = Vec::new();
            let mut ok = 0;
            let mut failed = false;
            for f in Frames::new(&data) {
                match f {
                    Ok(f) => {
                        prop_assert!(!failed, "a frame after an error");
                        f.write(&mut again);
                        ok += 1;
                    }
                    Err(()) => failed = true,
                }
            }
            prop_assert!(data.starts_with(&again), "{} frames", ok);
            if !failed {
                prop_assert_eq!(&again, &data);
            }
        }

        /// Any sequence of frames encodes and parses back to itself, with
        /// the writers the connection uses (`write_ack`) and `Frame::write`
        /// agreeing.
        #[test]
        fn frames_encode_and_decode(
            specs in proptest::collection::vec(spec(), 0..12),
            padding in proptest::option::of(0..3000usize),
        ) {
            let cells: Vec<[u8; CELL_LEN]> = specs
                .iter()
                .map(|s| [if let Spec::Cell(_, _, f) = s { *f } else { 0 }; CELL_LEN])
                .collect();
            let mut by_writer = Vec::new();
            for (s, cell) in specs.iter().zip(&cells) {
                match s {
                    Spec::Ack(d, m, top, steps) => {
                        let r = ranges(*top, steps);
                        let start = by_writer.len();
                        write_ack(&mut by_writer, *d, *m, &r);
                        prop_assert_eq!(by_writer.len() - start, ack_len(r.len()));
                    }
                    Spec::Cell(seq, wait, _) => {
                        let start = by_writer.len();
                        write_cell(&mut by_writer, *seq, *wait, cell);
                        prop_assert_eq!(by_writer.len() - start, cell_frame_len(*wait));
                    }
                    Spec::Ping => by_writer.push(FRAME_PING),
                    Spec::Close => by_writer.push(FRAME_CLOSE),
                    Spec::Capacity(c) => {
                        by_writer.push(FRAME_CAPACITY);
                        by_writer.extend_from_slice(&c.to_be_bytes());
                    }
                    Spec::Pair => by_writer.push(FRAME_PAIR),
                }
            }
            if let Some(n) = padding {
                by_writer.push(FRAME_PADDING);
                by_writer.resize(by_writer.len() + n, 0);
            }
            let mut parsed: Vec<Frame<'_>> = Frames::new(&by_writer)
                .collect::<Result<_, ()>>()
                .map_err(|()| TestCaseError::fail("a written frame failed to parse"))?;
            let pad = if padding.is_some() { parsed.pop() } else { None };
            prop_assert_eq!(pad, padding.map(Frame::Padding));
            prop_assert_eq!(parsed.len(), specs.len());
            let mut by_write = Vec::new();
            for ((f, s), cell) in parsed.iter().zip(&specs).zip(&cells) {
                match (f, s) {
                    (Frame::Ack(a), Spec::Ack(d, m, top, steps)) => {
                        prop_assert_eq!((a.delay_us, a.max_cells), (*d, *m));
                        prop_assert_eq!(a.ranges().collect::<Vec<_>>(), ranges(*top, steps));
                    }
                    (Frame::Cell(seq, wait, raw), Spec::Cell(want, want_wait, _)) => {
                        prop_assert_eq!(seq, want);
                        prop_assert_eq!(wait, want_wait);
                        prop_assert_eq!(*raw, &cell[..]);
                    }
                    (Frame::Ping, Spec::Ping)
                    | (Frame::Close, Spec::Close)
                    | (Frame::Pair, Spec::Pair) => {}
                    (Frame::Capacity(c), Spec::Capacity(want)) => prop_assert_eq!(c, want),
                    (f, s) => prop_assert!(false, "{:?} parsed as {:?}", s, f),
                }
                f.write(&mut by_write);
            }
            if let Some(n) = padding {
                Frame::Padding(n).write(&mut by_write);
            }
            prop_assert_eq!(by_write, by_writer);
        }

        /// The packet number of a DATA datagram is its bytes 9..17; other
        /// types and short datagrams have none.
        #[test]
        fn data_packet_numbers(ty in 0u8..8, cid in any::<u64>(), pn in any::<u64>(), cut in 0usize..=DATA_HEADER) {
            let mut dg = vec![ty];
            dg.extend_from_slice(&cid.to_be_bytes());
            dg.extend_from_slice(&pn.to_be_bytes());
            let want = (ty == DATA && cut == DATA_HEADER).then_some(pn);
            prop_assert_eq!(data_packet_number(&dg[..cut]), want);
        }
    }
}
