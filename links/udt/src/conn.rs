//! One udt connection after its handshake: reliability, per-circuit
//! ordering, flow and congestion control, keepalive and close.
//!
//! Sender: every datagram gets a fresh packet number; cells wait in a send
//! queue and, once sent, as copies ([`crate::copies`]) listed by the
//! `sent` record until acknowledged. A packet is
//! lost once a packet three numbers later is acknowledged, or once it is
//! older than 9/8 of the RTT when a later one was acknowledged (thresholds
//! that grow when a retransmission proves spurious, [`crate::reorder`]);
//! its cells go back to the front of the queue and leave again under new
//! numbers. A probe
//! timer (PTO) resends the oldest unacknowledged cells if acknowledgements
//! stop. The congestion controller (`ConnConfig::cc`: CUBIC or the
//! BBR-style model, see [`crate::cc`]) bounds the bytes in flight and sets
//! the pacing that spreads them. Each packet records the delivery state
//! when it left ([`crate::cc::rate`]), so every ACK yields a delivery-rate
//! sample; a sender with nothing to send marks the samples app-limited.
//!
//! Datagrams start at `ConnConfig::max_datagram` and grow to the largest
//! size the path is proven to carry ([`crate::mtu`]).
//!
//! Receiver: packet numbers seen are kept as ranges (duplicates and replays
//! are dropped) and acknowledged, every second packet or after 1 ms. Each
//! cell carries its circuit's sequence number on this link, so cells are put
//! back in order per circuit: a lost datagram delays only the circuits whose
//! cells it carried. A cell window advertised in every ACK bounds what the
//! receiver holds when the node reads slowly.

use std::collections::{BTreeMap, VecDeque};

use relay_kernel::{Cell, CellBlocks, NodeId, Time};
use relay_link::transport::{OpenKey, SealKey, TAG_LEN};
use relay_link::Session;

use crate::cc::rate::RateSampler;
use crate::cc::{AckSample, Congestion, CongestionKind, Rtt};
use crate::copies::{CellCopies, Slot};
use crate::mtu::{MtuStats, PathMtu};
use crate::packet::*;
use crate::reorder::Reordering;
use crate::sent::{InFlight, Sent};

/// Longest a lone cell waits for a second one to share its datagram (see
/// `Conn::hold_until`).
const HOLD_MAX: u64 = 1_000_000;

/// A cell waiting in the send queue.
enum Queued {
    /// Not sent yet.
    Fresh(Cell),
    /// Sent and declared lost (or probed): its copy, to go again.
    Resend(Slot),
}

/// Tunables for one connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnConfig {
    /// Largest datagram we send before a larger size is proven (the
    /// base size of datagram size discovery: it must fit every path).
    pub max_datagram: usize,
    /// Largest datagram size discovery tries ([`crate::mtu`]); not above
    /// `max_datagram` turns discovery off.
    pub max_datagram_probe: usize,
    /// The same for a peer at a loopback address, whose interface MTU is
    /// 64 KiB rather than a network's (0: `max_datagram_probe`). See
    /// [`ConnConfig::for_peer`].
    pub loopback_max_datagram_probe: usize,
    /// Cells the receiver holds for the node at most (flow control).
    pub recv_window_cells: u64,
    /// Close when nothing was heard for this long.
    pub idle_timeout: u64,
    /// Send a PING after this long without sending.
    pub keepalive: u64,
    /// Congestion controller.
    pub cc: CongestionKind,
    /// Raise the reordering thresholds when a retransmission proves
    /// spurious ([`crate::reorder`]); false keeps them fixed.
    pub adaptive_reordering: bool,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            max_datagram: 1472,
            max_datagram_probe: 1472,
            loopback_max_datagram_probe: 0,
            recv_window_cells: 32768,
            idle_timeout: 15_000_000_000,
            keepalive: 4_000_000_000,
            cc: CongestionKind::default(),
            adaptive_reordering: true,
        }
    }
}

/// The largest UDP payload of a 1,500-byte MTU over IPv6 (40-byte IP
/// header, against IPv4's 20): the base size for IPv6 peers.
pub const IPV6_BASE_DATAGRAM: usize = 1452;

impl ConnConfig {
    /// The settings for a connection to `peer`:
    /// - an IPv6 peer starts at no more than [`IPV6_BASE_DATAGRAM`], since
    ///   the default base (1,472 bytes) fits a 1,500-byte MTU only under
    ///   IPv4's smaller header, and datagrams leave with Don't Fragment set;
    /// - a loopback peer gets the loopback probe ceiling. On loopback a
    ///   datagram of 64 KiB, 126 cells, is what a TCP segment is there; with
    ///   jumbo-frame datagrams a loopback relay chain made as many system
    ///   calls and wake-ups as with 1,472-byte ones (docs/benchmarks.md,
    ///   "Datagram size discovery").
    pub fn for_peer(self, peer: std::net::SocketAddr) -> ConnConfig {
        let mut c = self;
        if peer.is_ipv6() && !peer.ip().is_loopback() {
            c.max_datagram = c.max_datagram.min(IPV6_BASE_DATAGRAM);
        }
        if peer.ip().is_loopback() && c.loopback_max_datagram_probe > 0 {
            c.max_datagram_probe = c.loopback_max_datagram_probe;
        }
        c
    }
}

/// Emptied per-packet cell lists kept for reuse.
const SPARE_LISTS: usize = 1024;
/// Delay before an ACK for a lone packet.
const MAX_ACK_DELAY: u64 = 1_000_000;
/// After a pause, pacing lets up to this much time's worth of datagrams
/// at the pacing rate leave back to back (Linux sizes its GSO bursts to
/// about 1 ms of the pacing rate, quinn to 2 ms of the window), between
/// [`MIN_BURST`] and [`MAX_BURST`] datagrams. Bursts are what let the
/// driver hand the kernel large GSO batches: with a fixed 8-datagram
/// burst, loopback ran ~10 datagrams per send call and per wake-up
/// (docs/benchmarks.md). Below ~35 Mbit/s the floor of 8 rules, as
/// before; netsim's hol is unchanged with it, while a floor of 10
/// (quinn's) or 2 (Linux's) moved BBR's clean-cell p99 there from 21 ms
/// to 28-30 ms, and 2 ms of the window (not the rate) to 30 ms.
const BURST_NANOS: u64 = 2_000_000;
/// Smallest pacing burst, datagrams.
const MIN_BURST: u64 = 8;
/// Largest pacing burst, datagrams (about four full GSO batches).
const MAX_BURST: u64 = 256;

/// Per-circuit reordering state.
#[derive(Default)]
struct CircuitIn {
    next: u32,
    /// Cells past a gap, with their arrival times.
    waiting: BTreeMap<u32, (Cell, Time)>,
}

/// The receiver's packet-pair estimate of the bottleneck capacity: the
/// median of the last [`PAIR_SAMPLES`] pairs' `size / arrival gap`
/// (UDT's estimator; the median discards pairs that were split or
/// compressed on the way), reported to the sender at most once per
/// [`crate::cc::udt::SYN`].
#[derive(Default)]
struct PairEstimate {
    samples: VecDeque<u64>,
    fresh: bool,
    reported_at: Option<Time>,
}

/// Pair samples kept for the median.
const PAIR_SAMPLES: usize = 16;

impl PairEstimate {
    /// A pair whose second packet of `bytes` came `gap` ns after the first.
    /// A zero gap (both read in one batch with one timestamp) says nothing.
    fn sample(&mut self, _now: Time, bytes: usize, gap: u64) {
        if gap == 0 {
            return;
        }
        if self.samples.len() == PAIR_SAMPLES {
            self.samples.pop_front();
        }
        self.samples
            .push_back((bytes as u128 * 1_000_000_000 / u128::from(gap)) as u64);
        self.fresh = true;
    }

    /// The estimate, if a new sample came since the last report and the
    /// last report is a SYN old.
    fn take_report(&mut self, now: Time) -> Option<u64> {
        if !self.fresh
            || self
                .reported_at
                .is_some_and(|t| now.since(t) < crate::cc::udt::SYN)
        {
            return None;
        }
        let mut sorted: Vec<u64> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        let median = *sorted.get(sorted.len() / 2)?;
        self.fresh = false;
        self.reported_at = Some(now);
        Some(median)
    }
}

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The peer closed gracefully.
    Peer,
    /// We closed gracefully and the peer acknowledged.
    Local,
    /// Silence for the idle timeout.
    IdleTimeout,
    /// The peer process restarted: a new handshake came from its address
    /// with a different instance number (see `endpoint`).
    Replaced,
}

/// An established connection.
pub struct Conn {
    /// The authenticated peer.
    pub peer: NodeId,
    /// Whether we dialled.
    pub initiator: bool,
    seal: SealKey,
    open: OpenKey,
    config: ConnConfig,
    /// The id the peer chose for this connection (heads every DATA).
    peer_cid: u64,
    // Send side.
    next_pn: u64,
    sent: InFlight,
    /// Emptied `Sent::cells` lists for reuse.
    spare_cell_lists: Vec<Vec<(u32, Slot)>>,
    /// The bytes of every cell in flight or queued for a resend.
    copies: CellCopies,
    bytes_in_flight: usize,
    /// (circuit sequence, the cell or its copy)
    queue: VecDeque<(u32, Queued)>,
    circ_out: crate::FastMap<u32, u32>,
    first_sends: u64,
    peer_max_cells: u64,
    cc: Box<dyn Congestion>,
    rate: RateSampler,
    pub(crate) rtt: Rtt,
    pacing_next: Time,
    last_ack_eliciting: Time,
    pto_count: u32,
    largest_acked: Option<u64>,
    /// Loss-detection thresholds.
    reorder: Reordering,
    /// The first packet of a packet pair just sent (its number and time):
    /// the next one may leave at once, marked (UDT's capacity probe).
    pair_first: Option<(u64, Time)>,
    /// The capacity the peer last reported, bytes per second.
    peer_capacity: Option<u64>,
    /// Scratch for the ranges of the ACK being processed.
    ack_ranges: Vec<(u64, u64)>,
    // Receive side.
    received: Vec<(u64, u64)>,
    largest_recv_time: Time,
    ack_pending: u32,
    ack_deadline: Option<Time>,
    window_dirty: bool,
    circ_in: crate::FastMap<u32, CircuitIn>,
    ready: VecDeque<Cell>,
    delivered: u64,
    /// The newest packet accepted and when (the first of a possible pair).
    last_arrival: Option<(u64, Time)>,
    capacity: PairEstimate,
    // Life.
    last_recv: Time,
    last_send: Time,
    close_requested: bool,
    close_sent: bool,
    ended: Option<Ended>,
    /// The handshake's last message, resent until the peer is heard from
    /// (the initiator's message 3 may be lost).
    pub(crate) handshake_echo: Option<Vec<u8>>,
    heard_data: bool,
    echo_at: Time,
    /// Statistics.
    pub retransmitted_cells: u64,
    /// Cells that left the queue for the first time since last asked.
    first_sent_since: u64,
    /// Datagram size discovery.
    mtu: PathMtu,
}

impl Conn {
    /// A connection with fresh keys; `peer_cid` is the id the peer chose
    /// for it.
    pub fn new(
        session: Session,
        initiator: bool,
        config: ConnConfig,
        now: Time,
        seed: u64,
        peer_cid: u64,
    ) -> Conn {
        Conn {
            peer: session.peer,
            initiator,
            seal: session.seal,
            open: session.open,
            config,
            peer_cid,
            next_pn: 0,
            sent: InFlight::default(),
            spare_cell_lists: Vec::new(),
            copies: CellCopies::default(),
            bytes_in_flight: 0,
            queue: VecDeque::new(),
            circ_out: crate::fast_map(seed),
            first_sends: 0,
            peer_max_cells: config.recv_window_cells,
            cc: config.cc.build(config.max_datagram, seed),
            rate: RateSampler::new(now),
            rtt: Rtt::default(),
            pacing_next: now,
            last_ack_eliciting: now,
            pto_count: 0,
            largest_acked: None,
            reorder: Reordering::new(config.adaptive_reordering),
            pair_first: None,
            peer_capacity: None,
            ack_ranges: Vec::new(),
            received: Vec::new(),
            largest_recv_time: now,
            ack_pending: 0,
            ack_deadline: None,
            window_dirty: false,
            circ_in: crate::fast_map(seed ^ 0x5a5a),
            ready: VecDeque::new(),
            delivered: 0,
            last_arrival: None,
            capacity: PairEstimate::default(),
            last_recv: now,
            last_send: now,
            close_requested: false,
            close_sent: false,
            ended: None,
            handshake_echo: None,
            heard_data: false,
            echo_at: now,
            retransmitted_cells: 0,
            first_sent_since: 0,
            mtu: PathMtu::new(config.max_datagram, config.max_datagram_probe),
        }
    }

    /// Queues a cell.
    pub fn queue_cell(&mut self, cell: Cell) {
        let seq = self.circ_out.entry(cell.raw_circ_id()).or_insert(0);
        let s = *seq;
        *seq = seq.wrapping_add(1);
        self.queue.push_back((s, Queued::Fresh(cell)));
    }

    /// Asks for a graceful close once everything queued is acknowledged.
    pub fn close(&mut self) {
        self.close_requested = true;
    }

    /// How it ended, once it has.
    pub fn ended(&self) -> Option<&Ended> {
        self.ended.as_ref()
    }

    /// Takes the next cell ready for the node.
    pub fn pop_ready(&mut self) -> Option<Cell> {
        let c = self.ready.pop_front()?;
        self.delivered += 1;
        // Advertise the larger window soon when it grew by a quarter.
        if self
            .delivered
            .is_multiple_of((self.config.recv_window_cells / 4).max(1))
        {
            self.window_dirty = true;
        }
        Some(c)
    }

    /// Puts back a cell the node could not take.
    pub fn unpop_ready(&mut self, cell: Cell) {
        self.delivered -= 1;
        self.ready.push_front(cell);
    }

    /// Cells waiting for the node.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Handles a DATA datagram (the whole datagram, header included);
    /// false if it was dropped (short, a duplicate or replay, forged or
    /// corrupt, or malformed inside).
    /// Received cells are copied into `blocks`.
    pub fn handle_data(&mut self, now: Time, datagram: &mut [u8], blocks: &mut CellBlocks) -> bool {
        if datagram.len() < DATA_HEADER + TAG_LEN {
            return false;
        }
        let Some(pn) = data_packet_number(datagram) else {
            return false;
        };
        let datagram_len = datagram.len();
        if self.was_received(pn) {
            return false; // duplicate or replay
        }
        let (header, body) = datagram.split_at_mut(DATA_HEADER);
        let Ok(plain) = self.open.open_with_aad(pn, header, body) else {
            return false; // forged or corrupt: dropped, the link goes on
        };
        // Validate every frame before acting on any.
        if Frames::new(plain).any(|f| f.is_err()) {
            return false;
        }
        self.record_received(pn, now);
        self.last_recv = now;
        self.heard_data = true;
        self.handshake_echo = None;
        let mut eliciting = false;
        let prev_arrival = self.last_arrival.replace((pn, now));
        let len = datagram_len;
        for frame in Frames::new(plain).flatten() {
            match frame {
                Frame::Pair => {
                    if let Some((prev, at)) = prev_arrival {
                        if prev.checked_add(1) == Some(pn) {
                            self.capacity.sample(now, len, now.since(at));
                        }
                    }
                }
                Frame::Capacity(c) => self.peer_capacity = Some(c),
                Frame::Ack(ack) => self.on_ack(now, &ack),
                Frame::Cell(seq, wait_us, raw) => {
                    eliciting = true;
                    self.on_cell(now, seq, wait_us, raw, blocks);
                }
                Frame::Ping => eliciting = true,
                Frame::Padding(_) => {}
                Frame::Close => {
                    eliciting = true;
                    if self.ended.is_none() {
                        self.ended = Some(Ended::Peer);
                    }
                }
            }
        }
        if eliciting {
            self.ack_pending += 1;
            if self.ack_deadline.is_none() {
                self.ack_deadline = Some(now.plus_nanos(MAX_ACK_DELAY));
            }
        }
        true
    }

    fn was_received(&self, pn: u64) -> bool {
        self.received
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&pn))
            || self
                .received
                .last()
                .is_some_and(|(lo, _)| pn < *lo && self.received.len() >= MAX_ACK_RANGES)
    }

    fn record_received(&mut self, pn: u64, now: Time) {
        let r = &mut self.received;
        if r.first().is_none_or(|(_, hi)| pn > *hi) {
            self.largest_recv_time = now;
        }
        // The common case, the next packet in order, extends the newest
        // range (what the general merge below would also produce).
        if let Some(first) = r.first_mut() {
            if first.1.checked_add(1) == Some(pn) {
                first.1 = pn;
                return;
            }
        }
        // Ranges are kept highest first and merged.
        let at = r.iter().position(|(lo, _)| *lo <= pn).unwrap_or(r.len());
        r.insert(at, (pn, pn));
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(r.len());
        for &(lo, hi) in r.iter() {
            match merged.last_mut() {
                Some(last) if lo <= last.0.saturating_add(1) && hi.saturating_add(1) >= last.0 => {
                    last.0 = last.0.min(lo);
                    last.1 = last.1.max(hi);
                }
                _ => merged.push((lo, hi)),
            }
        }
        merged.truncate(MAX_ACK_RANGES);
        *r = merged;
    }

    /// A cell arrived: delivered with any it released, or held until the
    /// cells before it on its circuit arrive.
    ///
    /// Each cell's reordering wait grows by how long it was held here; a
    /// cell that fills a gap (a retransmission, or one overtaken) counts as
    /// having waited since the first cell after the gap arrived, which is
    /// about when it should have. Relays forward the sum with the cell and
    /// circuit congestion control leaves it out of its RTT samples
    /// ([`relay_kernel::Cell::reorder_wait_us`]).
    fn on_cell(&mut self, now: Time, seq: u32, wait_us: u32, raw: &[u8], blocks: &mut CellBlocks) {
        let Ok(mut cell) = blocks.cell(raw) else {
            return;
        };
        cell.add_reorder_wait_us(wait_us);
        let st = self.circ_in.entry(cell.raw_circ_id()).or_default();
        if seq.wrapping_sub(st.next) >= u32::MAX / 2 {
            return; // already delivered: a retransmitted copy
        }
        if seq != st.next {
            st.waiting.insert(seq, (cell, now));
            return;
        }
        if let Some((_, (_, first_after_gap))) = st.waiting.first_key_value() {
            cell.add_reorder_wait_us(micros_since(now, *first_after_gap));
        }
        self.ready.push_back(cell);
        st.next = st.next.wrapping_add(1);
        while let Some((mut c, arrived)) = st.waiting.remove(&st.next) {
            c.add_reorder_wait_us(micros_since(now, arrived));
            self.ready.push_back(c);
            st.next = st.next.wrapping_add(1);
        }
    }

    fn on_ack(&mut self, now: Time, ack: &Ack<'_>) {
        self.peer_max_cells = self.peer_max_cells.max(ack.max_cells);
        let mut ranges = std::mem::take(&mut self.ack_ranges);
        ranges.clear();
        ranges.extend(ack.ranges());
        self.on_ranges(now, ack.delay_us, &ranges);
        self.ack_ranges = ranges;
    }

    fn on_ranges(&mut self, now: Time, delay_us: u32, ranges: &[(u64, u64)]) {
        let Some(&(_, largest)) = ranges.first() else {
            return;
        };
        let mut acked_bytes = 0;
        let mut largest_newly = None;
        let prior_in_flight = self.bytes_in_flight;
        for &(lo, hi) in ranges {
            self.reorder.acked(lo, hi);
        }
        let mut emptied = std::mem::take(&mut self.spare_cell_lists);
        let (rate, in_flight, copies) =
            (&mut self.rate, &mut self.bytes_in_flight, &mut self.copies);
        let base = self.mtu.base();
        let mut large_acked = false;
        self.sent.acknowledge(ranges, |pn, mut s| {
            large_acked |= s.bytes > base;
            *in_flight -= s.bytes;
            acked_bytes += s.bytes;
            rate.on_packet_acked(now, s.bytes, &s.tx);
            if pn == largest {
                largest_newly = Some(s.time);
            }
            for &(_, slot) in &s.cells {
                copies.release(slot);
            }
            s.cells.clear();
            if emptied.len() < SPARE_LISTS && s.cells.capacity() > 0 {
                emptied.push(s.cells);
            }
        });
        self.spare_cell_lists = emptied;
        if let Some(&(lo, _)) = ranges.last() {
            // Older packets can no longer be reported received.
            self.reorder.forget_below(lo);
        }
        let mut rtt_sample = None;
        if let Some(sent_at) = largest_newly {
            let rtt = now
                .since(sent_at)
                .saturating_sub(u64::from(delay_us) * 1000);
            let rtt = rtt.max(now.since(sent_at) / 8);
            self.rtt.sample(rtt);
            rtt_sample = Some(rtt);
        }
        if acked_bytes > 0 {
            self.pto_count = 0;
            let min_rtt = if self.rtt.min == u64::MAX {
                0
            } else {
                self.rtt.min
            };
            let sample = AckSample {
                acked: acked_bytes,
                prior_in_flight,
                in_flight: self.bytes_in_flight,
                delivered: self.rate.delivered(),
                rate: self.rate.take_sample(min_rtt),
                rtt: rtt_sample,
                capacity: self.peer_capacity.map(|c| c as f64),
            };
            self.cc.on_ack(now, &sample, &self.rtt);
        }
        self.largest_acked = Some(self.largest_acked.map_or(largest, |l| l.max(largest)));
        self.mtu.on_ack(now, ranges, largest);
        // A probe's timeout is checked here rather than by a timer: while
        // no ACKs come the link is idle, and the search can wait.
        self.mtu.on_timer(now, self.rtt.pto());
        let large_lost = self.detect_losses(now);
        self.mtu.on_data_outcome(now, large_acked, large_lost);
    }

    /// Declares packets lost and queues their cells again; true if one of
    /// them was larger than the base datagram size.
    fn detect_losses(&mut self, now: Time) -> bool {
        let Some(largest) = self.largest_acked else {
            return false;
        };
        let rtt = self.rtt.srtt.max(self.rtt.latest);
        // The holes below the largest acknowledged packet, oldest first;
        // being lost is monotone in the packet number (older and further
        // from `largest`), so the lost ones are a prefix.
        let mut lost: Vec<(u64, bool)> = Vec::new();
        for pn in self.sent.holes() {
            let Some(s) = self.sent.get(pn) else { continue };
            if pn >= largest {
                break;
            }
            match self.reorder.lost(largest, pn, now.since(s.time), rtt) {
                Some(by_time) => lost.push((pn, by_time)),
                None => break,
            }
        }
        if lost.is_empty() {
            return false;
        }
        let base = self.mtu.base();
        let mut large_lost = false;
        for &(pn, by_time) in &lost {
            let (cells, bytes) = self
                .sent
                .get(pn)
                .map_or((0, 0), |s| (s.cells.len(), s.bytes));
            large_lost |= bytes > base;
            self.reorder.declared_lost(pn, largest, by_time, cells);
        }
        let lost: Vec<u64> = lost.into_iter().map(|(pn, _)| pn).collect();
        self.requeue(now, &lost);
        large_lost
    }

    /// Keeps an emptied per-packet cell list for the next packet (bounded),
    /// so steady sending allocates none.
    fn recycle_cell_list(&mut self, list: Vec<(u32, Slot)>) {
        if self.spare_cell_lists.len() < SPARE_LISTS && list.capacity() > 0 {
            self.spare_cell_lists.push(list);
        }
    }

    /// Puts the cells of lost packets back at the front, oldest first.
    fn requeue(&mut self, now: Time, lost: &[u64]) {
        let mut newest_sent = None;
        let mut lost_bytes = 0;
        for pn in lost.iter().rev() {
            if let Some(s) = self.sent.remove(*pn) {
                self.bytes_in_flight -= s.bytes;
                lost_bytes += s.bytes;
                newest_sent = Some(newest_sent.map_or(s.time, |t: Time| t.max(s.time)));
                self.retransmitted_cells += s.cells.len() as u64;
                for (seq, slot) in s.cells.into_iter().rev() {
                    self.queue.push_front((seq, Queued::Resend(slot)));
                }
            }
        }
        if let Some(t) = newest_sent {
            self.cc.on_loss(now, t, lost_bytes);
        }
    }

    /// When `handle_timeout` must next run.
    pub fn timeout(&self) -> Time {
        let mut t = self.last_recv.plus_nanos(self.config.idle_timeout);
        if let Some(d) = self.ack_deadline {
            t = t.min(d);
        }
        if !self.sent.is_empty() {
            t = t.min(self.pto_deadline());
            if self.pto_count > 0 {
                // The probe PING of `poll_transmit`: once a probe timeout
                // has fired, one PTO after the last send while ACKs are
                // still missing. It had no timer before and left only when
                // something unrelated woke the endpoint.
                t = t.min(self.last_send.plus_nanos(self.rtt.pto()));
            }
        }
        t = t.min(self.last_send.plus_nanos(self.config.keepalive));
        // Pacing needs a timer only when it alone holds data back: with the
        // window or the peer's cell window full, an ACK restarts sending.
        let window_open = self.bytes_in_flight + self.config.max_datagram <= self.cc.window();
        let flow_open = self.front_may_go();
        if window_open && flow_open {
            let cells_at = self.cells_may_leave_at();
            if cells_at > self.last_send {
                t = t.min(cells_at);
            }
        }
        t
    }

    /// A time before which `poll_transmit` keeps returning false unless
    /// the connection changes (an input, a timer, a queued or popped cell):
    /// the earliest of the time thresholds in `poll_transmit` that are not
    /// already passed or blocked by state. The endpoint skips the
    /// connection until then. Must be kept in step with `poll_transmit`.
    pub fn transmit_hint(&self) -> Time {
        let mut t = self.last_send.plus_nanos(self.config.keepalive);
        if let Some(d) = self.ack_deadline {
            t = t.min(d);
        }
        let window_open = self.bytes_in_flight + self.config.max_datagram <= self.cc.window();
        let flow_open = self.front_may_go();
        if window_open && flow_open {
            t = t.min(self.cells_may_leave_at());
            if let Some((_, at)) = self.pair_first {
                t = t.min(at);
            }
        }
        if !self.sent.is_empty() && self.pto_count > 0 {
            t = t.min(self.last_send.plus_nanos(self.rtt.pto()));
        }
        if self.may_probe() {
            if let Some(at) = self.mtu.next_probe_at() {
                t = t.min(at);
            }
        }
        t
    }

    /// Whether datagram size probes may leave: only while the connection
    /// carries data. An idle link has nothing to gain from larger
    /// datagrams, and a due probe would keep the endpoint asking it.
    fn may_probe(&self) -> bool {
        self.ended.is_none()
            && !self.close_requested
            && !(self.queue.is_empty() && self.sent.is_empty())
    }

    /// Builds a datagram size probe of `size` bytes into `out`: a PING
    /// padded to the size, outside the congestion window and loss
    /// recovery (see [`crate::mtu`]).
    fn build_probe(&mut self, now: Time, size: usize, out: &mut Vec<u8>) -> bool {
        self.start_data_packet(out);
        out.push(FRAME_PING);
        out.push(FRAME_PADDING);
        out.resize(size.saturating_sub(TAG_LEN).max(out.len()), 0);
        let pn = self.next_pn;
        self.next_pn += 1;
        if self.seal.seal_after_header(pn, out, DATA_HEADER).is_err() {
            return false;
        }
        self.mtu.on_probe_sent(now, pn, out.len());
        true
    }

    /// Empties `out` and writes a DATA packet's header for the next packet
    /// number (the caller seals it with that number).
    fn start_data_packet(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(DATA);
        out.extend_from_slice(&self.peer_cid.to_be_bytes());
        out.extend_from_slice(&self.next_pn.to_be_bytes());
    }

    /// The largest datagram to build now: the size discovery has proven,
    /// cut to the congestion window's room but never below the base size
    /// (the room `window_open` checks for), so a window smaller than one
    /// large datagram still sends.
    fn datagram_limit(&self) -> usize {
        let room = self.cc.window().saturating_sub(self.bytes_in_flight);
        self.mtu.current().min(room.max(self.config.max_datagram))
    }

    /// Until when a lone new cell waits for a second one to share its
    /// datagram: one full datagram's pacing interval after the last send,
    /// at most [`HOLD_MAX`]; None when more than one cell (or a resend) is
    /// queued. A datagram has room for two cells, and a paced sender that
    /// is not window-limited sent most cells alone, as the kernel hands
    /// them over one at a time (netsim onionperf: 983k one-cell against
    /// 243k two-cell datagrams). Waiting up to the slot a full datagram
    /// would have had costs the rate nothing; an ACK that is due takes the
    /// cell along at once.
    fn hold_until(&self) -> Option<Time> {
        if self.queue.len() != 1 || !matches!(self.queue.front(), Some((_, Queued::Fresh(_)))) {
            return None;
        }
        let wait = self
            .cc
            .pacing_interval(self.config.max_datagram, &self.rtt)
            .min(HOLD_MAX);
        (wait > 0).then(|| self.last_send.plus_nanos(wait))
    }

    /// The earliest time queued cells may leave as far as pacing and the
    /// lone-cell hold go (the window and flow control aside).
    fn cells_may_leave_at(&self) -> Time {
        self.hold_until()
            .map_or(self.pacing_next, |h| self.pacing_next.max(h))
    }

    /// Whether the cell at the head of the queue may leave as far as flow
    /// control goes: a resend always, a first send within the peer's cell
    /// window.
    fn front_may_go(&self) -> bool {
        self.queue.front().is_some_and(|(_, queued)| {
            matches!(queued, Queued::Resend(_)) || self.first_sends < self.peer_max_cells
        })
    }

    fn pto_deadline(&self) -> Time {
        self.last_ack_eliciting
            .plus_nanos(self.rtt.pto() << self.pto_count.min(6))
    }

    /// Runs timers.
    pub fn handle_timeout(&mut self, now: Time) {
        self.copies.trim();
        if now.since(self.last_recv) >= self.config.idle_timeout && self.ended.is_none() {
            self.ended = Some(Ended::IdleTimeout);
            return;
        }
        if !self.sent.is_empty() && now >= self.pto_deadline() {
            // Probe: resend the oldest unacknowledged packet's cells.
            self.pto_count += 1;
            let oldest: Vec<u64> = self.sent.oldest().into_iter().collect();
            let mut newest_sent = None;
            for pn in &oldest {
                if let Some(s) = self.sent.remove(*pn) {
                    self.bytes_in_flight -= s.bytes;
                    newest_sent = Some(s.time);
                    self.retransmitted_cells += s.cells.len() as u64;
                    for (seq, slot) in s.cells.into_iter().rev() {
                        self.queue.push_front((seq, Queued::Resend(slot)));
                    }
                }
            }
            let _ = newest_sent;
            self.last_ack_eliciting = now;
        }
    }

    /// Builds the next DATA datagram into `out`, if there is anything to
    /// send now.
    pub fn poll_transmit(&mut self, now: Time, out: &mut Vec<u8>) -> bool {
        if matches!(self.ended, Some(Ended::IdleTimeout)) {
            return false;
        }
        if self.may_probe() {
            if let Some(size) = self.mtu.probe_due(now) {
                return self.build_probe(now, size, out);
            }
        }
        let limit = self.datagram_limit() - TAG_LEN;
        self.start_data_packet(out);
        let ack_due = self.ack_pending >= 2
            || self.ack_deadline.is_some_and(|d| d <= now)
            || self.window_dirty;
        let mut cells = self.spare_cell_lists.pop().unwrap_or_default();
        let mut eliciting = false;
        let pair_second = self.pair_second_due(now);
        let paced = now >= self.pacing_next || pair_second;
        let window_open = self.bytes_in_flight + self.config.max_datagram <= self.cc.window();
        let held = !ack_due && self.hold_until().is_some_and(|end| now < end);
        if paced && window_open && !held && self.ended.is_none() {
            while let Some((_, queued)) = self.queue.front() {
                let (first_send, wait_us) = match queued {
                    Queued::Fresh(cell) => (true, cell.reorder_wait_us()),
                    Queued::Resend(slot) => (false, self.copies.wait_us(*slot)),
                };
                // Room for the cell and an ACK of two ranges.
                if out.len() + cell_frame_len(wait_us) + ack_len(2) > limit
                    || (first_send && self.first_sends >= self.peer_max_cells)
                {
                    break;
                }
                let Some((seq, queued)) = self.queue.pop_front() else {
                    break;
                };
                let slot = match queued {
                    Queued::Fresh(cell) => {
                        write_cell(out, seq, wait_us, cell.as_bytes());
                        self.first_sends += 1;
                        self.first_sent_since += 1;
                        // The cell itself is freed here, not a round
                        // trip later (see `crate::copies`).
                        self.copies.put(cell.as_bytes(), wait_us)
                    }
                    Queued::Resend(slot) => {
                        write_cell(out, seq, wait_us, self.copies.get(slot));
                        slot
                    }
                };
                cells.push((seq, slot));
            }
        }
        eliciting |= !cells.is_empty();
        if pair_second && !cells.is_empty() {
            out.push(FRAME_PAIR);
        }
        // Keepalive, or the close once everything is acknowledged.
        if self.close_requested
            && !self.close_sent
            && self.queue.is_empty()
            && self.sent.is_empty()
            && self.ended.is_none()
        {
            out.push(FRAME_CLOSE);
            self.close_sent = true;
            eliciting = true;
        } else if !eliciting
            && (now.since(self.last_send) >= self.config.keepalive
                || (!self.sent.is_empty()
                    && self.pto_count > 0
                    && now.since(self.last_send) >= self.rtt.pto()))
        {
            // Keepalive, or a probe while acknowledgements are missing
            // (both have their times in `timeout`). Chosen over sending
            // probes only at the probe timeout itself, as QUIC does: in
            // netsim's scale run (150 s) that made 1.0% more datagrams and
            // 12% more retransmitted cells than this rule, whose PINGs
            // elicit ACKs before the next timeout resends; transfer times
            // were the same within 1-2%. A peer that has vanished gets a
            // PING per PTO until the idle timeout ends the connection.
            out.push(FRAME_PING);
            eliciting = true;
        }
        let want_ack =
            !self.received.is_empty() && (ack_due || (eliciting && self.ack_pending > 0));
        if !eliciting && !want_ack {
            self.recycle_cell_list(cells);
            self.note_app_limited();
            return false;
        }
        if want_ack {
            if let Some(c) = self.capacity.take_report(now) {
                if limit.saturating_sub(out.len()) >= CAPACITY_FRAME_LEN + 14 + 16 {
                    out.push(FRAME_CAPACITY);
                    out.extend_from_slice(&c.to_be_bytes());
                }
            }
            let delay_us =
                (now.since(self.largest_recv_time) / 1000).min(u64::from(u32::MAX)) as u32;
            let room = limit.saturating_sub(out.len());
            let mut n = self.received.len().min(MAX_ACK_RANGES);
            while n > 0 && ack_len(n) > room {
                n -= 1;
            }
            write_ack(
                out,
                delay_us,
                self.delivered + self.config.recv_window_cells,
                &self.received[..n],
            );
            self.ack_pending = 0;
            self.ack_deadline = None;
            self.window_dirty = false;
        }
        let pn = self.next_pn;
        self.next_pn += 1;
        if self.seal.seal_after_header(pn, out, DATA_HEADER).is_err() {
            // The key is exhausted: the connection cannot send again.
            for (_, slot) in cells {
                self.copies.release(slot);
            }
            return false;
        }
        // Every 16th data packet opens a pair when the controller asks.
        self.pair_first = (self.cc.probe_pairs() && !cells.is_empty() && pn.is_multiple_of(16))
            .then_some((pn, now));
        self.last_send = now;
        if eliciting {
            let bytes = out.len();
            let tx = self.rate.on_send(now, self.bytes_in_flight);
            self.bytes_in_flight += bytes;
            self.last_ack_eliciting = now;
            if !cells.is_empty() {
                let interval = self.cc.pacing_interval(bytes, &self.rtt);
                let burst = (BURST_NANOS / interval.max(1)).clamp(MIN_BURST, MAX_BURST);
                let floor = Time(now.nanos().saturating_sub(interval * burst));
                self.pacing_next = self.pacing_next.max(floor).plus_nanos(interval);
            }
            self.sent.insert(
                pn,
                Sent {
                    time: now,
                    bytes,
                    cells,
                    tx,
                },
            );
        } else {
            self.recycle_cell_list(cells);
        }
        self.note_app_limited();
        true
    }

    /// With room in the window but no cell it may send (the queue is empty
    /// or the peer's cell window is full), the sender is app-limited:
    /// delivery-rate samples show what it was given, not what the path
    /// carries.
    fn note_app_limited(&mut self) {
        let can_send = self.front_may_go();
        if !can_send && self.bytes_in_flight + self.config.max_datagram <= self.cc.window() {
            self.rate.on_app_limited(self.bytes_in_flight);
        }
    }

    /// Whether the packet being built is the second of a packet pair: the
    /// first left at this very instant.
    fn pair_second_due(&self, now: Time) -> bool {
        self.pair_first
            .is_some_and(|(pn, at)| at == now && pn.checked_add(1) == Some(self.next_pn))
    }

    /// The largest datagram this connection may send now (its proven
    /// size).
    pub fn max_datagram(&self) -> usize {
        self.mtu.current()
    }

    /// What datagram size discovery did so far.
    pub fn mtu_stats(&self) -> MtuStats {
        self.mtu.stats
    }

    /// Packets and cells retransmitted for nothing so far: declared lost,
    /// then acknowledged after all (reordering, not loss).
    pub fn spurious(&self) -> (u64, u64) {
        (self.reorder.spurious_packets, self.reorder.spurious_cells)
    }

    /// The current packet threshold of loss detection.
    pub fn reorder_threshold(&self) -> u64 {
        self.reorder.packet_threshold()
    }

    /// Cells sent for the first time since the last call (the driver turns
    /// them into room for the node to queue more).
    pub fn take_first_sent(&mut self) -> u64 {
        std::mem::take(&mut self.first_sent_since)
    }

    /// Circuit ids of the cells in sent packet `pn` while it is still
    /// unacknowledged (lets a simulator attribute a lost datagram to the
    /// circuits whose cells it carried).
    pub fn packet_circuits(&self, pn: u64) -> impl Iterator<Item = u32> + '_ {
        self.sent.get(pn).into_iter().flat_map(|s| {
            s.cells
                .iter()
                .map(|&(_, slot)| u32_at(self.copies.get(slot))) // the raw circuit id
        })
    }

    /// Whether everything sent was acknowledged and nothing waits.
    pub fn is_idle(&self) -> bool {
        self.sent.is_empty() && self.queue.is_empty()
    }

    /// Cells held on the receive side: ready for the node plus waiting for
    /// an earlier cell of their circuit.
    pub fn buffered_cells(&self) -> usize {
        self.ready.len()
            + self
                .circ_in
                .values()
                .map(|c| c.waiting.len())
                .sum::<usize>()
    }

    /// Cells waiting to be sent or resent.
    pub fn queued_cells(&self) -> usize {
        self.queue.len()
    }

    /// Bytes in flight (for tests and stats).
    pub fn in_flight(&self) -> usize {
        self.bytes_in_flight
    }

    /// Whether the close has been sent and acknowledged.
    pub fn close_done(&self) -> bool {
        self.close_sent && self.sent.is_empty()
    }

    /// When the handshake echo was last sent.
    pub fn rtt_anchor(&self) -> Time {
        self.echo_at
    }

    /// Records a handshake echo.
    pub fn touch_echo(&mut self, now: Time) {
        self.echo_at = now;
    }

    /// Whether the handshake's last message should be resent.
    pub fn needs_handshake_echo(&self) -> bool {
        self.handshake_echo.is_some() && !self.heard_data
    }
}

/// Whole microseconds from `then` to `now`, saturating.
fn micros_since(now: Time, then: Time) -> u32 {
    u32::try_from(now.since(then) / 1000).unwrap_or(u32::MAX)
}
