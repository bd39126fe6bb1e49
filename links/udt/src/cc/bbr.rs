//! A model-based congestion controller in the spirit of BBR
//! (draft-cardwell-iccrg-bbr-congestion-control, version 1, with a
//! BBRv2-style bound on heavy loss).
//!
//! The model is two numbers: the bottleneck bandwidth `btlbw`, the maximum
//! of the delivery-rate samples ([`super::rate`]) over the last 10 round
//! trips, and the propagation RTT `min_rtt`, the minimum RTT sample over
//! the last 10 seconds. Their product is the bandwidth-delay product (BDP).
//! The sender paces at `pacing_gain x btlbw` and keeps at most
//! `cwnd_gain x BDP` (plus three datagrams) in flight:
//!
//! - **Startup**: gain 2/ln 2 = 2.89 for pacing and window, doubling the
//!   rate every round trip until `btlbw` stops growing by 25% for three
//!   rounds (or a round loses over [`LOSS_THRESH`] of its packets);
//! - **Drain**: pacing gain 1/2.89 until the bytes in flight are down to
//!   one BDP (the queue Startup built is gone);
//! - **ProbeBW**: pacing gains cycle through 1.25, 0.75, 1, 1, 1, 1, 1, 1,
//!   one phase per `min_rtt`: probe for more bandwidth, drain the queue the
//!   probe made, cruise. Window gain 2;
//! - **ProbeRTT**: when no RTT sample came within 1/16 of `min_rtt` for
//!   10 s (a standing queue hides the propagation RTT), the window drops
//!   to half the BDP (BBRv2's choice; BBRv1 uses 4 datagrams) for 200 ms
//!   and a round trip so the queue empties and a fresh propagation RTT is
//!   measured. The slack matters on a relay: BBRv1 requires a sample at or
//!   below the minimum, which a path with microsecond jitter rarely gives,
//!   and each ProbeRTT dip backs cells up into the node, where the
//!   circuit's delay-based (Vegas) controller reads it as congestion.
//!
//! Losses do not reduce the rate: a random loss says nothing about the
//! bottleneck, so 1% random loss leaves the model (and the rate) where it
//! was. Only heavy loss does: a round trip that loses over [`LOSS_THRESH`]
//! of the bytes it carried (at least [`LOSS_MIN_PACKETS`] datagrams) ends
//! Startup and bounds the window at 0.7 x the most that round had in
//! flight (`inflight_hi`); each round trip without heavy loss raises the
//! bound by an eighth until it no longer binds. A lasting bandwidth drop
//! is followed once the higher samples leave the 10-round window (sooner
//! through the loss bound when the queue overflows).

use std::collections::VecDeque;

use relay_kernel::Time;

use super::{AckSample, Congestion, Rtt};

/// Startup gain: 2/ln 2.
const HIGH_GAIN: f64 = 2.885;
/// Steady-state window gain.
const CWND_GAIN: f64 = 2.0;
/// ProbeBW pacing gains, one phase per `min_rtt`.
const CYCLE: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// Round trips each of the two ACK-aggregation estimates covers (Linux
/// `bbr_extra_acked_win_rtts`).
const EXTRA_ACKED_WIN_ROUNDS: u32 = 5;
/// The aggregation allowance never exceeds this much time at `btlbw`
/// (Linux `bbr_extra_acked_max_us`), ns.
const EXTRA_ACKED_MAX_NANOS: f64 = 100_000_000.0;
/// Round trips the bandwidth maximum is kept.
const BW_WINDOW_ROUNDS: u64 = 10;
/// How long a `min_rtt` sample is trusted.
const MIN_RTT_WINDOW: u64 = 10_000_000_000;
/// A sample within `min_rtt / MIN_RTT_SLACK` of the minimum keeps it fresh.
const MIN_RTT_SLACK: u64 = 16;
/// How long ProbeRTT holds the window down.
const PROBE_RTT_TIME: u64 = 200_000_000;
/// ProbeRTT's window, as a fraction of the BDP (BBRv2: half of it, not
/// BBRv1's 4 datagrams, so the dip costs about a quarter of a round trip's
/// data, not all of it).
const PROBE_RTT_GAIN: f64 = 0.5;
/// Smallest window, in datagrams.
const MIN_PIPE_PACKETS: usize = 4;
/// Initial window, in datagrams.
const INIT_PACKETS: usize = 10;
/// A round trip losing more than this fraction of its bytes is heavy loss.
pub const LOSS_THRESH: f64 = 0.05;
/// ... provided it lost at least this many datagrams.
pub const LOSS_MIN_PACKETS: u64 = 8;
/// Window bound after heavy loss, as a fraction of the round's maximum in
/// flight.
const LOSS_BETA: f64 = 0.7;

/// Where the state machine is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Exponential search for the bandwidth.
    Startup,
    /// Empty the queue Startup built.
    Drain,
    /// Steady state: gain cycling around the bandwidth estimate.
    ProbeBw,
    /// Window at half the BDP to measure the propagation RTT.
    ProbeRtt,
}

/// Windowed maximum over round trips (a monotonic deque: exact, and short
/// because it only keeps samples larger than every later one).
#[derive(Clone, Debug, Default)]
struct MaxFilter {
    samples: VecDeque<(u64, f64)>,
}

impl MaxFilter {
    fn update(&mut self, round: u64, value: f64) {
        while self.samples.back().is_some_and(|&(_, v)| v <= value) {
            self.samples.pop_back();
        }
        self.samples.push_back((round, value));
        self.expire(round);
    }

    fn expire(&mut self, round: u64) {
        while self.samples.len() > 1
            && self
                .samples
                .front()
                .is_some_and(|&(r, _)| r + BW_WINDOW_ROUNDS <= round)
        {
            self.samples.pop_front();
        }
    }

    fn get(&self) -> f64 {
        self.samples.front().map_or(0.0, |&(_, v)| v)
    }
}

/// The BBR-style controller.
pub struct Bbr {
    mss: usize,
    mode: Mode,
    pacing_gain: f64,
    cwnd_gain: f64,
    cwnd: usize,
    /// Bytes per second; 0 before the first pacing decision.
    pacing_rate: f64,
    btlbw: MaxFilter,
    min_rtt: u64,
    min_rtt_stamp: Time,
    // Round trips.
    round: u64,
    round_start: bool,
    next_round_delivered: u64,
    delivered: u64,
    // Startup's end.
    filled_pipe: bool,
    full_bw: f64,
    full_bw_rounds: u32,
    // ProbeBW.
    cycle_index: usize,
    cycle_stamp: Time,
    lost_since_ack: bool,
    // ProbeRTT.
    probe_rtt_done: Option<Time>,
    probe_rtt_round_done: bool,
    prior_cwnd: usize,
    // Heavy loss.
    round_lost: u64,
    round_lost_packets: u64,
    round_delivered_start: u64,
    round_max_in_flight: usize,
    inflight_hi: usize,
    // ACK aggregation: bytes acknowledged beyond what `btlbw` explains,
    // the larger of the last two windows of EXTRA_ACKED_WIN_ROUNDS rounds.
    extra_acked: [usize; 2],
    extra_acked_idx: usize,
    extra_acked_rounds: u32,
    ack_epoch_start: Time,
    ack_epoch_acked: usize,
    seed: u64,
}

impl Bbr {
    /// A controller for datagrams of `mss` bytes; `seed` picks the ProbeBW
    /// phase it starts in (as Linux does at random, so flows sharing a
    /// bottleneck do not probe in step).
    pub fn new(mss: usize, seed: u64) -> Bbr {
        let mss = mss.max(1);
        Bbr {
            mss,
            mode: Mode::Startup,
            pacing_gain: HIGH_GAIN,
            cwnd_gain: HIGH_GAIN,
            cwnd: INIT_PACKETS * mss,
            pacing_rate: 0.0,
            btlbw: MaxFilter::default(),
            min_rtt: u64::MAX,
            min_rtt_stamp: Time(0),
            round: 0,
            round_start: false,
            next_round_delivered: 0,
            delivered: 0,
            filled_pipe: false,
            full_bw: 0.0,
            full_bw_rounds: 0,
            cycle_index: 0,
            cycle_stamp: Time(0),
            lost_since_ack: false,
            probe_rtt_done: None,
            probe_rtt_round_done: false,
            prior_cwnd: 0,
            round_lost: 0,
            round_lost_packets: 0,
            round_delivered_start: 0,
            round_max_in_flight: 0,
            inflight_hi: usize::MAX,
            extra_acked: [0; 2],
            extra_acked_idx: 0,
            extra_acked_rounds: 0,
            ack_epoch_start: Time(0),
            ack_epoch_acked: 0,
            seed,
        }
    }

    /// The state machine's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Bottleneck bandwidth estimate, bytes per second.
    pub fn btlbw(&self) -> f64 {
        self.btlbw.get()
    }

    /// Propagation RTT estimate, nanoseconds (None before a sample).
    pub fn min_rtt(&self) -> Option<u64> {
        (self.min_rtt != u64::MAX).then_some(self.min_rtt)
    }

    /// Pacing rate, bytes per second (0 before the first ACK).
    pub fn pacing_rate(&self) -> f64 {
        self.pacing_rate
    }

    /// Round trips counted so far.
    pub fn rounds(&self) -> u64 {
        self.round
    }

    /// The window bound set by heavy loss, if any.
    pub fn inflight_hi(&self) -> Option<usize> {
        (self.inflight_hi != usize::MAX).then_some(self.inflight_hi)
    }

    fn min_pipe(&self) -> usize {
        MIN_PIPE_PACKETS * self.mss
    }

    /// `gain` x BDP in bytes, or the initial window before the model has
    /// both numbers.
    fn bdp(&self, gain: f64) -> usize {
        let bw = self.btlbw.get();
        if self.min_rtt == u64::MAX || bw <= 0.0 {
            return INIT_PACKETS * self.mss;
        }
        (gain * bw * self.min_rtt as f64 / 1e9) as usize
    }

    /// The window for `gain`: BDP times gain plus room for three datagrams
    /// (ACKs come every second datagram or after 1 ms, and pacing lets a
    /// few leave together).
    fn target(&self, gain: f64) -> usize {
        self.bdp(gain) + 3 * self.mss
    }

    fn update_round(&mut self, ack: &AckSample) {
        self.round_start = false;
        if let Some(rs) = &ack.rate {
            if rs.prior_delivered >= self.next_round_delivered {
                self.next_round_delivered = ack.delivered;
                self.round += 1;
                self.round_start = true;
            }
        }
    }

    /// At each round's end: was it a round of heavy loss?
    fn check_loss_round(&mut self) {
        if !self.round_start {
            return;
        }
        let delivered = self.delivered - self.round_delivered_start;
        let lost = self.round_lost;
        let heavy = self.round_lost_packets >= LOSS_MIN_PACKETS
            && lost as f64 > LOSS_THRESH * (lost + delivered) as f64;
        if heavy {
            self.filled_pipe = true;
            let bound = (self.round_max_in_flight as f64 * LOSS_BETA) as usize;
            self.inflight_hi = self.inflight_hi.min(bound).max(self.min_pipe());
        } else if self.inflight_hi != usize::MAX {
            self.inflight_hi += (self.inflight_hi / 8).max(self.mss);
            if self.inflight_hi > self.target(CWND_GAIN) * 2 {
                self.inflight_hi = usize::MAX;
            }
        }
        self.round_lost = 0;
        self.round_lost_packets = 0;
        self.round_delivered_start = self.delivered;
        self.round_max_in_flight = 0;
    }

    fn update_btlbw(&mut self, ack: &AckSample) {
        let Some(rs) = &ack.rate else {
            return;
        };
        let Some(rate) = rs.rate() else {
            return;
        };
        if rate >= self.btlbw.get() || !rs.app_limited {
            self.btlbw.update(self.round, rate);
        } else {
            self.btlbw.expire(self.round);
        }
    }

    fn enter_probe_bw(&mut self, now: Time) {
        self.mode = Mode::ProbeBw;
        self.cwnd_gain = CWND_GAIN;
        // Any phase but the draining one.
        let start = 2 + (self.seed % 6) as usize;
        self.cycle_index = start % CYCLE.len();
        self.pacing_gain = CYCLE[self.cycle_index];
        self.cycle_stamp = now;
    }

    fn check_cycle_phase(&mut self, now: Time, ack: &AckSample) {
        if self.mode != Mode::ProbeBw {
            return;
        }
        let full_length = self.min_rtt != u64::MAX && now.since(self.cycle_stamp) > self.min_rtt;
        let next = if self.pacing_gain > 1.0 {
            full_length
                && (self.lost_since_ack || ack.prior_in_flight >= self.bdp(self.pacing_gain))
        } else if self.pacing_gain < 1.0 {
            full_length || ack.prior_in_flight <= self.bdp(1.0)
        } else {
            full_length
        };
        if next {
            self.cycle_index = (self.cycle_index + 1) % CYCLE.len();
            self.pacing_gain = CYCLE[self.cycle_index];
            self.cycle_stamp = now;
        }
    }

    fn check_full_pipe(&mut self, ack: &AckSample) {
        if self.filled_pipe || !self.round_start || ack.rate.is_none_or(|rs| rs.app_limited) {
            return;
        }
        let bw = self.btlbw.get();
        if bw >= self.full_bw * 1.25 {
            self.full_bw = bw;
            self.full_bw_rounds = 0;
            return;
        }
        self.full_bw_rounds += 1;
        if self.full_bw_rounds >= 3 {
            self.filled_pipe = true;
        }
    }

    fn check_drain(&mut self, now: Time, ack: &AckSample) {
        if self.mode == Mode::Startup && self.filled_pipe {
            self.mode = Mode::Drain;
            self.pacing_gain = 1.0 / HIGH_GAIN;
            self.cwnd_gain = HIGH_GAIN;
        }
        if self.mode == Mode::Drain && ack.in_flight <= self.bdp(1.0) {
            self.enter_probe_bw(now);
        }
    }

    fn update_min_rtt(&mut self, now: Time, ack: &AckSample) {
        let expired = now.since(self.min_rtt_stamp) > MIN_RTT_WINDOW;
        if let Some(rtt) = ack.rtt {
            if rtt <= self.min_rtt || expired {
                self.min_rtt = rtt;
                self.min_rtt_stamp = now;
            } else if rtt <= self.min_rtt + self.min_rtt / MIN_RTT_SLACK {
                // Within a sixteenth of the minimum: no standing queue
                // worth a ProbeRTT (whose dip upstream relays feel).
                self.min_rtt_stamp = now;
            }
        }
        if expired && self.mode != Mode::ProbeRtt && self.min_rtt != u64::MAX {
            self.mode = Mode::ProbeRtt;
            self.pacing_gain = 1.0;
            self.cwnd_gain = 1.0;
            self.prior_cwnd = self.cwnd.max(self.prior_cwnd);
            self.probe_rtt_done = None;
        }
        if self.mode != Mode::ProbeRtt {
            return;
        }
        match self.probe_rtt_done {
            None if ack.in_flight <= self.bdp(PROBE_RTT_GAIN).max(self.min_pipe()) => {
                self.probe_rtt_done = Some(now.plus_nanos(PROBE_RTT_TIME));
                self.probe_rtt_round_done = false;
                self.next_round_delivered = self.delivered;
            }
            None => {}
            Some(done) => {
                if self.round_start {
                    self.probe_rtt_round_done = true;
                }
                if self.probe_rtt_round_done && now >= done {
                    self.min_rtt_stamp = now;
                    self.cwnd = self.cwnd.max(self.prior_cwnd);
                    self.prior_cwnd = 0;
                    if self.filled_pipe {
                        self.enter_probe_bw(now);
                    } else {
                        self.mode = Mode::Startup;
                        self.pacing_gain = HIGH_GAIN;
                        self.cwnd_gain = HIGH_GAIN;
                    }
                }
            }
        }
    }

    fn set_pacing_rate(&mut self) {
        let bw = self.btlbw.get();
        if bw <= 0.0 {
            return;
        }
        let mut rate = self.pacing_gain * bw;
        if self.min_rtt != u64::MAX {
            // Never slower than a fresh connection's first flight: a link
            // that carried only small app-limited bursts has a low `btlbw`
            // (the max of what it was offered), and pacing the next burst
            // at that rate would make it slower than it was on a new link.
            let floor = HIGH_GAIN * (INIT_PACKETS * self.mss) as f64 * 1e9 / self.min_rtt as f64;
            rate = rate.max(floor);
        }
        if self.filled_pipe || rate > self.pacing_rate {
            self.pacing_rate = rate;
        }
    }

    /// Tracks how far ACKs run ahead of the modelled rate (Linux
    /// `bbr_update_ack_aggregation`). Where the receiver acknowledges in
    /// batches (GRO and `recvmmsg` on a fast path, delayed ACKs) the
    /// sender hears of a batch of deliveries at once and then of nothing
    /// for a while; a window of 2 BDP over a `min_rtt` of tens of
    /// microseconds then runs dry between the batches, the rate samples
    /// fall with it, and the model spirals down (udt with this controller
    /// ran loopback at a third of CUBIC's rate without this).
    fn update_ack_aggregation(&mut self, now: Time, ack: &AckSample) {
        let bw = self.btlbw.get();
        if ack.acked == 0 || bw <= 0.0 {
            return;
        }
        if self.round_start {
            self.extra_acked_rounds += 1;
            if self.extra_acked_rounds >= EXTRA_ACKED_WIN_ROUNDS {
                self.extra_acked_rounds = 0;
                self.extra_acked_idx ^= 1;
                self.extra_acked[self.extra_acked_idx] = 0;
            }
        }
        let mut expected = (bw * now.since(self.ack_epoch_start) as f64 / 1e9) as usize;
        // A new epoch once the ACKs fall behind the rate (or after a very
        // long run ahead of it, so the sum stays small).
        if self.ack_epoch_acked <= expected
            || self.ack_epoch_acked + ack.acked >= (1 << 20) * self.mss
        {
            self.ack_epoch_acked = 0;
            self.ack_epoch_start = now;
            expected = 0;
        }
        self.ack_epoch_acked += ack.acked;
        let extra = (self.ack_epoch_acked - expected).min(self.cwnd);
        let slot = &mut self.extra_acked[self.extra_acked_idx];
        *slot = (*slot).max(extra);
    }

    /// Window allowance for ACK aggregation, once Startup is over.
    fn aggregation_cwnd(&self) -> usize {
        if !self.filled_pipe {
            return 0;
        }
        let cap = (self.btlbw.get() * EXTRA_ACKED_MAX_NANOS / 1e9) as usize;
        self.extra_acked[0].max(self.extra_acked[1]).min(cap)
    }

    fn set_cwnd(&mut self, ack: &AckSample) {
        let target = self.target(self.cwnd_gain) + self.aggregation_cwnd();
        if self.filled_pipe {
            self.cwnd = (self.cwnd + ack.acked).min(target);
        } else if self.cwnd < target || self.delivered < (INIT_PACKETS * self.mss) as u64 {
            self.cwnd += ack.acked;
        }
        // Likewise the window: at least the initial window (ProbeRTT caps
        // it separately in `window`).
        self.cwnd = self.cwnd.max(INIT_PACKETS * self.mss);
    }
}

impl Congestion for Bbr {
    fn window(&self) -> usize {
        let w = if self.mode == Mode::ProbeRtt {
            self.cwnd.min(self.bdp(PROBE_RTT_GAIN).max(self.min_pipe()))
        } else {
            self.cwnd
        };
        w.min(self.inflight_hi).max(self.min_pipe())
    }

    fn on_ack(&mut self, now: Time, ack: &AckSample, _rtt: &Rtt) {
        self.delivered = ack.delivered;
        self.round_max_in_flight = self.round_max_in_flight.max(ack.prior_in_flight);
        self.update_round(ack);
        self.check_loss_round();
        self.update_btlbw(ack);
        self.update_ack_aggregation(now, ack);
        self.check_cycle_phase(now, ack);
        self.check_full_pipe(ack);
        self.check_drain(now, ack);
        self.update_min_rtt(now, ack);
        self.set_pacing_rate();
        self.set_cwnd(ack);
        self.lost_since_ack = false;
    }

    fn on_loss(&mut self, _now: Time, _sent: Time, bytes: usize) {
        self.lost_since_ack = true;
        self.round_lost += bytes as u64;
        self.round_lost_packets += ((bytes + self.mss / 2) / self.mss).max(1) as u64;
    }

    fn pacing_interval(&self, bytes: usize, rtt: &Rtt) -> u64 {
        let rate = if self.pacing_rate > 0.0 {
            self.pacing_rate
        } else {
            // Before the first estimate: the initial window per smoothed
            // RTT, times the Startup gain.
            HIGH_GAIN * self.cwnd as f64 * 1e9 / rtt.srtt.max(1) as f64
        };
        (bytes as f64 * 1e9 / rate) as u64
    }
}

#[cfg(test)]
mod tests {
    //! The controller against a packet-level model of one path: a pacing
    //! sender that always has data, a FIFO bottleneck with a drop-tail
    //! queue, random loss before it, a fixed propagation delay, one ACK per
    //! packet, and a packet declared lost once a later one is acknowledged.

    use std::collections::VecDeque;

    use super::*;
    use crate::cc::rate::{RateSampler, TxState};

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000_000_000;
    const PKT: usize = 1472;

    struct Path {
        /// Bottleneck rate (bytes/s) from a given time on.
        rates: Vec<(u64, f64)>,
        /// One-way propagation delay (from a given time on).
        delays: Vec<(u64, u64)>,
        queue_bytes: f64,
        loss: f64,
        /// ACKs reach the sender only at multiples of this (ns; 0: at
        /// once), as when the receiver's reads and the sender's wake-ups
        /// come in batches.
        ack_batch: u64,
    }

    impl Path {
        fn rate(&self, now: u64) -> f64 {
            self.rates
                .iter()
                .rev()
                .find(|(t, _)| *t <= now)
                .map_or(self.rates[0].1, |(_, r)| *r)
        }

        fn delay(&self, now: u64) -> u64 {
            self.delays
                .iter()
                .rev()
                .find(|(t, _)| *t <= now)
                .map_or(self.delays[0].1, |(_, d)| *d)
        }
    }

    #[derive(Default)]
    struct Trace {
        /// (time, bytes delivered so far) every 100 ms.
        delivered: Vec<(u64, u64)>,
        modes: Vec<(u64, Mode)>,
        min_window: Vec<(u64, usize)>,
        /// Largest queueing delay at the bottleneck after each second.
        queue_delay: Vec<u64>,
        dropped_queue: u64,
    }

    impl Trace {
        /// Goodput in bytes/s between two times.
        fn goodput(&self, from: u64, to: u64) -> f64 {
            let at = |t: u64| {
                self.delivered
                    .iter()
                    .find(|(x, _)| *x >= t)
                    .map_or(0, |(_, d)| *d)
            };
            (at(to) - at(from)) as f64 * SEC as f64 / (to - from) as f64
        }
    }

    /// xorshift64*: deterministic loss decisions.
    struct Rng(u64);
    impl Rng {
        fn next_f64(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn run(bbr: &mut Bbr, path: &Path, duration: u64) -> Trace {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut rate = RateSampler::new(Time(0));
        let mut rtt = Rtt::default();
        let mut trace = Trace::default();
        // (ack arrival, pn, sent, tx)
        let mut acks: VecDeque<(u64, u64, u64, TxState)> = VecDeque::new();
        // Dropped packets not yet declared lost: (pn, sent).
        let mut dropped: VecDeque<(u64, u64)> = VecDeque::new();
        let mut busy_until = 0u64;
        let mut in_flight = 0usize;
        let mut next_send = 0u64;
        let mut pn = 0u64;
        let mut now = 0u64;
        let mut next_report = 0u64;
        let mut max_qdelay = 0u64;
        while now < duration {
            let can_send = in_flight + PKT <= bbr.window();
            let send_at = if can_send {
                Some(next_send.max(now))
            } else {
                None
            };
            let ack_at = acks.front().map(|a| a.0);
            now = match (send_at, ack_at) {
                (Some(s), Some(a)) => s.min(a),
                (Some(s), None) => s,
                (None, Some(a)) => a,
                (None, None) => break,
            };
            while next_report <= now {
                trace.delivered.push((next_report, rate.delivered()));
                trace.modes.push((next_report, bbr.mode()));
                if next_report.is_multiple_of(SEC) {
                    trace.queue_delay.push(max_qdelay);
                    max_qdelay = 0;
                }
                next_report += 100 * MS;
            }
            if ack_at == Some(now) {
                let Some((_, apn, sent, tx)) = acks.pop_front() else {
                    break;
                };
                let prior_in_flight = in_flight;
                in_flight -= PKT;
                rate.on_packet_acked(Time(now), PKT, &tx);
                let sample = now - sent;
                rtt.sample(sample);
                let ack = AckSample {
                    acked: PKT,
                    prior_in_flight,
                    in_flight,
                    delivered: rate.delivered(),
                    rate: rate.take_sample(rtt.min),
                    rtt: Some(sample),
                    capacity: None,
                };
                bbr.on_ack(Time(now), &ack, &rtt);
                let mut lost = 0;
                let mut newest = 0;
                while dropped.front().is_some_and(|(p, _)| *p < apn) {
                    if let Some((_, s)) = dropped.pop_front() {
                        lost += PKT;
                        newest = s;
                    }
                }
                if lost > 0 {
                    in_flight -= lost;
                    bbr.on_loss(Time(now), Time(newest), lost);
                }
                trace.min_window.push((now, bbr.window()));
                continue;
            }
            // Send one packet.
            let tx = rate.on_send(Time(now), in_flight);
            in_flight += PKT;
            let this = pn;
            pn += 1;
            next_send = now + bbr.pacing_interval(PKT, &rtt);
            let r = path.rate(now);
            let queued = busy_until.saturating_sub(now) as f64 * r / SEC as f64;
            if rng.next_f64() < path.loss {
                dropped.push_back((this, now));
            } else if queued + PKT as f64 > path.queue_bytes {
                trace.dropped_queue += 1;
                dropped.push_back((this, now));
            } else {
                let start = busy_until.max(now);
                max_qdelay = max_qdelay.max(start - now);
                busy_until = start + (PKT as f64 * SEC as f64 / r) as u64;
                let mut at = busy_until + 2 * path.delay(now);
                if path.ack_batch > 0 {
                    at = at.div_ceil(path.ack_batch) * path.ack_batch;
                }
                acks.push_back((at, this, now, tx));
            }
        }
        trace
    }

    fn path(mbit: f64, rtt_ms: u64, loss: f64) -> Path {
        let rate = mbit * 1e6 / 8.0;
        Path {
            rates: vec![(0, rate)],
            delays: vec![(0, rtt_ms * MS / 2)],
            // One BDP of buffer.
            queue_bytes: rate * rtt_ms as f64 / 1e3,
            loss,
            ack_batch: 0,
        }
    }

    #[test]
    fn batched_acks_do_not_starve_the_window() {
        // A fast, short path whose ACKs arrive in batches 4 ms apart, 8x
        // its RTT: loopback with GRO and a busy driver. A window of 2 BDP
        // empties long before the next batch; the aggregation allowance
        // (what the batches delivered beyond the model's rate) keeps it
        // open: the full rate, where without it this ran at 0.07 of it.
        let mut p = path(400.0, 0, 0.0);
        p.delays = vec![(0, 250_000)];
        p.queue_bytes = 4e6;
        p.ack_batch = 4 * MS;
        let mut bbr = Bbr::new(PKT, 5);
        let t = run(&mut bbr, &p, 3 * SEC);
        let r = p.rate(0);
        let g = t.goodput(SEC, 3 * SEC);
        assert!(g > 0.9 * r, "goodput {g} of {r}");
        assert_eq!(bbr.mode(), Mode::ProbeBw);
    }

    #[test]
    fn estimates_converge_to_the_path() {
        let p = path(100.0, 40, 0.0);
        let mut bbr = Bbr::new(PKT, 1);
        let t = run(&mut bbr, &p, 10 * SEC);
        let r = p.rate(0);
        assert!((bbr.btlbw() - r).abs() < 0.05 * r, "btlbw {}", bbr.btlbw());
        let min_rtt = bbr.min_rtt().unwrap_or(0);
        assert!((40 * MS..42 * MS).contains(&min_rtt), "min_rtt {min_rtt}");
        assert_eq!(bbr.mode(), Mode::ProbeBw);
        let g = t.goodput(2 * SEC, 10 * SEC);
        assert!(g > 0.95 * r, "goodput {g} of {r}");
        // Startup's queue was drained: after it the queue stays well under
        // the one-BDP buffer (ProbeBW's 1.25 phase adds a quarter BDP).
        let worst = t.queue_delay[3..].iter().max().copied().unwrap_or(0);
        assert!(worst < 20 * MS, "queueing delay {worst}");
    }

    #[test]
    fn one_percent_random_loss_keeps_the_rate() {
        let p = path(100.0, 40, 0.01);
        let mut bbr = Bbr::new(PKT, 2);
        let t = run(&mut bbr, &p, 10 * SEC);
        let r = p.rate(0);
        let g = t.goodput(2 * SEC, 10 * SEC);
        // 1% is lost; the rest of the capacity is used.
        assert!(g > 0.93 * r, "goodput {g} of {r}");
        assert!((bbr.btlbw() - r).abs() < 0.1 * r, "btlbw {}", bbr.btlbw());
        assert_eq!(bbr.inflight_hi(), None);
        let bdp = (r * 0.040) as usize;
        assert!(bbr.window() >= 2 * bdp, "window {} bdp {bdp}", bbr.window());
        assert!(bbr.pacing_rate() >= 0.7 * r);
    }

    #[test]
    fn heavy_loss_bounds_the_window() {
        let p = path(100.0, 40, 0.15);
        let mut bbr = Bbr::new(PKT, 3);
        let _ = run(&mut bbr, &p, 5 * SEC);
        let bound = bbr.inflight_hi().unwrap_or(usize::MAX);
        let bdp = (p.rate(0) * 0.040) as usize;
        assert!(bound < 2 * bdp, "inflight_hi {bound} bdp {bdp}");
        assert!(bbr.window() <= bound);
    }

    #[test]
    fn follows_a_bottleneck_drop() {
        let mut p = path(100.0, 40, 0.0);
        let r0 = p.rate(0);
        p.rates.push((5 * SEC, r0 / 4.0));
        let mut bbr = Bbr::new(PKT, 4);
        let t = run(&mut bbr, &p, 10 * SEC);
        let r1 = r0 / 4.0;
        assert!(
            (bbr.btlbw() - r1).abs() < 0.1 * r1,
            "btlbw {} want {r1}",
            bbr.btlbw()
        );
        assert!(bbr.pacing_rate() < 1.3 * r1);
        let g = t.goodput(7 * SEC, 10 * SEC);
        assert!(g > 0.9 * r1, "goodput {g} of {r1}");
        // The queue the drop built (four times the BDP at first) is down
        // to at most one BDP within 3 s.
        let late = t.queue_delay[9..].iter().max().copied().unwrap_or(0);
        assert!(late < 60 * MS, "queueing delay {late}");
    }

    /// The path gets 4 ms longer at 1 s: no RTT sample reaches the old
    /// minimum again, so it expires 10 s after its last refresh, ProbeRTT
    /// runs (briefly, at half the BDP) and the new propagation RTT is learnt.
    #[test]
    fn probe_rtt_learns_a_longer_path() {
        let mut p = path(50.0, 40, 0.0);
        p.delays.push((SEC, 22 * MS));
        let mut bbr = Bbr::new(PKT, 5);
        let t = run(&mut bbr, &p, 15 * SEC);
        let probe: Vec<u64> = t
            .modes
            .iter()
            .filter(|(_, m)| *m == Mode::ProbeRtt)
            .map(|(at, _)| *at)
            .collect();
        assert!(!probe.is_empty(), "no ProbeRTT");
        let first = probe[0];
        assert!((10 * SEC..11_500 * MS).contains(&first), "first at {first}");
        // It is short: about 200 ms plus a round trip.
        assert!(probe.len() <= 4, "{} x 100 ms in ProbeRTT", probe.len());
        let min_rtt = bbr.min_rtt().unwrap_or(0);
        assert!((44 * MS..46 * MS).contains(&min_rtt), "min_rtt {min_rtt}");
        // The window really went down, from twice the BDP to about half of
        // it (of the BDP at the RTT sample taken when ProbeRTT began).
        let bdp = p.rate(0) * 0.044;
        let lowest = t
            .min_window
            .iter()
            .filter(|(at, _)| (first - 300 * MS..first + SEC).contains(at))
            .map(|(_, w)| *w)
            .min()
            .unwrap_or(usize::MAX);
        assert!((lowest as f64) < 0.7 * bdp, "window {lowest}, BDP {bdp}");
        assert_eq!(bbr.mode(), Mode::ProbeBw);
    }
}
