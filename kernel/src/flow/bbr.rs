//! A BBR-style circuit controller: model the path, pace at its rate.
//!
//! The model is the bottleneck rate (the largest delivery-rate sample of
//! the last [`BW_WINDOW_ROUNDS`] round trips) and the base RTT (the smallest
//! RTT sample of the circuit's life). The sender paces at the rate times a
//! gain and caps what is in flight at twice the modelled bandwidth-delay
//! product, with the state machine of BBR v1 (Cardwell et al., "BBR:
//! Congestion-Based Congestion Control", ACM Queue 2016; the Linux
//! `tcp_bbr.c` constants): Startup doubles the rate each round until it
//! stops growing by a quarter for three rounds, Drain empties the queue
//! Startup built, ProbeBw cruises at the rate and probes for more with one
//! round at 5/4 followed by one at 3/4 every eight.
//!
//! Why this fits a circuit: links deliver a circuit's cells in order, so a
//! lost datagram on any hop holds that circuit's later cells until the
//! retransmission arrives. Those waits raise the RTT but not the rate at
//! which cells get through, so the model keeps its rate where a delay-based
//! controller (Vegas) reads queueing and backs off. What the waits do cost
//! is window: cells waiting count as in flight, so the window must cover
//! the base RTT plus the waits. The controller therefore also tracks the
//! recent RTT and lets the window reach the rate times that RTT (plus the
//! usual one BDP of headroom), capped at [`MAX_RTT_STRETCH`] times the
//! base; pacing, not the window, keeps the rate and so relay queues at the
//! modelled level.
//!
//! ProbeRtt, as in BBR v1: when the base RTT has not been seen again for
//! [`MIN_RTT_WINDOW`], the window drops to its floor for
//! [`PROBE_RTT_TIME`] and a round, so queues (this circuit's and others')
//! drain and the base RTT is measured afresh; without it circuits sharing a
//! bottleneck would each count the others' queue as path delay, and their
//! windows would grow with it. There is no loss signal, since links are
//! reliable: the relays' per-circuit queue bound is the backstop.

use super::{Ack, CcParams, SENDME_INC};
use crate::time::Time;

/// Round trips the bandwidth filter remembers.
pub const BW_WINDOW_ROUNDS: usize = 10;

/// Startup's pacing and window gain, 2/ln 2, in thousandths.
const STARTUP_GAIN_MILLI: u64 = 2885;

/// ProbeBw's pacing gains per phase, in quarters; one phase lasts a base
/// RTT.
const PROBE_GAINS_QUARTERS: [u64; 8] = [5, 3, 4, 4, 4, 4, 4, 4];

/// Window gain in ProbeBw, in thousandths.
const CWND_GAIN_MILLI: u64 = 2000;

/// Headroom for SENDME granularity: the receiver acknowledges every
/// SENDME_INC cells, so up to that many delivered cells are not yet
/// acknowledged, and SENDMEs travel in cells that queue too.
const ACK_ALLOWANCE: u32 = 3 * SENDME_INC;

/// The recent-RTT term of the window never exceeds this many base RTTs.
pub const MAX_RTT_STRETCH: u64 = 4;

/// A base RTT not seen again for this long is measured afresh (ns).
pub const MIN_RTT_WINDOW: u64 = 10_000_000_000;

/// How long ProbeRtt holds the window at its floor (ns).
pub const PROBE_RTT_TIME: u64 = 200_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Startup,
    Drain,
    ProbeBw {
        phase: usize,
        since: Time,
    },
    ProbeRtt {
        /// When the floor was reached and the probe's round has ended.
        done_at: Option<Time>,
        round_done: bool,
        /// The window to go back to.
        prior_cwnd: u32,
    },
}

/// BBR's state for one circuit end.
#[derive(Debug)]
pub(crate) struct Bbr {
    params: CcParams,
    mode: Mode,
    cwnd: u32,
    /// Base RTT, nanoseconds (u64::MAX before the first sample), and when
    /// it was last seen.
    min_rtt: u64,
    min_rtt_at: Time,
    /// Largest RTT sample of the current and the previous round, ns.
    rtt_this_round: u64,
    rtt_last_round: u64,
    /// Round counting: a round ends when a cell sent after it began is
    /// acknowledged.
    round: u64,
    next_round_delivered: u64,
    /// Largest rate sample of each of the last rounds that had one:
    /// (round, cells per second).
    bw_by_round: [(u64, u64); BW_WINDOW_ROUNDS],
    /// Round of the newest sample. The filter ages by samples, not by
    /// time (as Linux's minmax does): a sender that stops producing
    /// samples, say because it is application-limited, keeps its model.
    bw_round: u64,
    /// Startup's exit test: the rate that last grew by a quarter, and the
    /// rounds since.
    full_bw: u64,
    full_bw_rounds: u32,
    filled_pipe: bool,
}

impl Bbr {
    pub fn new(params: CcParams) -> Bbr {
        Bbr {
            params,
            mode: Mode::Startup,
            cwnd: params.cwnd_init,
            min_rtt: u64::MAX,
            min_rtt_at: Time(0),
            rtt_this_round: 0,
            rtt_last_round: 0,
            round: 0,
            next_round_delivered: 0,
            bw_by_round: [(0, 0); BW_WINDOW_ROUNDS],
            bw_round: 0,
            full_bw: 0,
            full_bw_rounds: 0,
            filled_pipe: false,
        }
    }

    pub fn cwnd(&self) -> u32 {
        self.cwnd
    }

    pub fn min_rtt(&self) -> Option<u64> {
        (self.min_rtt != u64::MAX).then_some(self.min_rtt)
    }

    /// The modelled bottleneck rate, cells per second.
    pub fn bandwidth(&self) -> Option<u64> {
        let bw = self.max_bw();
        (bw > 0).then_some(bw)
    }

    fn max_bw(&self) -> u64 {
        let oldest = self.bw_round.saturating_sub(BW_WINDOW_ROUNDS as u64 - 1);
        self.bw_by_round
            .iter()
            .filter(|(round, _)| *round >= oldest)
            .map(|(_, bw)| *bw)
            .max()
            .unwrap_or(0)
    }

    /// Pacing gain now, in thousandths.
    fn pacing_gain_milli(&self) -> u64 {
        match self.mode {
            Mode::Startup => STARTUP_GAIN_MILLI,
            Mode::Drain => 1_000_000 / STARTUP_GAIN_MILLI,
            Mode::ProbeBw { phase, .. } => PROBE_GAINS_QUARTERS[phase] * 250,
            Mode::ProbeRtt { .. } => 1000,
        }
    }

    pub fn pacing_interval(&self) -> Option<u64> {
        let gain = self.pacing_gain_milli();
        let bw = self.max_bw();
        // The window per base RTT times the gain, cells per second x 1000.
        let window_rate =
            |rtt: u64| u128::from(self.cwnd) * 1_000_000_000 * u128::from(gain) / u128::from(rtt);
        // Cells per second times a thousand.
        let rate_milli = if bw > 0 {
            let model = u128::from(bw) * u128::from(gain);
            match (self.mode, self.min_rtt()) {
                // In Startup the model lags the window by a round trip, and
                // the link below a circuit may itself be ramping up (its
                // own controller only grows with traffic offered): pacing
                // at the window's rate, as Vegas' slow start does, lets the
                // window's doubling through (netsim quick: 1 MiB transfers
                // took 5 round trips to reach the bottleneck, paced at the
                // model alone).
                (Mode::Startup, Some(rtt)) => model.max(window_rate(rtt) * 1000 / 2885 * 2),
                _ => model,
            }
        } else {
            // No rate sample yet: the initial window per base RTT, as Linux
            // seeds its pacing rate from cwnd / srtt.
            window_rate(self.min_rtt()?)
        };
        let interval = 1_000_000_000_000u128 / rate_milli.max(1);
        Some(u64::try_from(interval).unwrap_or(u64::MAX))
    }

    /// `gain_milli` thousandths of the modelled bandwidth-delay product, in
    /// cells (None before the model has a rate and a base RTT).
    fn bdp(&self, gain_milli: u64) -> Option<u64> {
        let bw = self.max_bw();
        let rtt = self.min_rtt()?;
        (bw > 0).then(|| {
            let cells =
                u128::from(bw) * u128::from(rtt) * u128::from(gain_milli) / 1_000_000_000_000;
            u64::try_from(cells).unwrap_or(u64::MAX)
        })
    }

    pub fn on_ack(&mut self, ack: &Ack) {
        let expired = ack.now.since(self.min_rtt_at) > MIN_RTT_WINDOW;
        if ack.rtt <= self.min_rtt || expired {
            self.min_rtt = ack.rtt;
            self.min_rtt_at = ack.now;
        }
        let round_start = ack.prior_delivered >= self.next_round_delivered;
        if round_start {
            self.next_round_delivered = ack.total_delivered;
            self.round += 1;
            self.rtt_last_round = self.rtt_this_round;
            self.rtt_this_round = 0;
        }
        // The whole round trip, reordering waits included: the window
        // must cover them to keep the rate (see `update_cwnd`).
        self.rtt_this_round = self.rtt_this_round.max(ack.rtt + ack.waited);
        self.update_bw(ack);
        self.update_mode(ack, round_start);
        self.update_probe_rtt(ack, round_start, expired);
        self.update_cwnd(ack);
    }

    fn update_probe_rtt(&mut self, ack: &Ack, round_start: bool, expired: bool) {
        match &mut self.mode {
            Mode::ProbeRtt {
                done_at,
                round_done,
                prior_cwnd,
            } => match done_at {
                None if ack.inflight <= self.params.cwnd_min => {
                    *done_at = Some(ack.now.plus_nanos(PROBE_RTT_TIME));
                    *round_done = false;
                    self.next_round_delivered = ack.total_delivered;
                }
                Some(at) => {
                    *round_done |= round_start;
                    if *round_done && ack.now >= *at {
                        self.min_rtt_at = ack.now;
                        self.cwnd = self.cwnd.max(*prior_cwnd);
                        self.mode = if self.filled_pipe {
                            self.probe_bw(ack)
                        } else {
                            Mode::Startup
                        };
                    }
                }
                None => {}
            },
            _ if expired => {
                self.mode = Mode::ProbeRtt {
                    done_at: None,
                    round_done: false,
                    prior_cwnd: self.cwnd,
                };
            }
            _ => {}
        }
    }

    /// ProbeBw, starting in a cruise phase picked from the delivered
    /// count, so circuits started together do not probe together.
    fn probe_bw(&self, ack: &Ack) -> Mode {
        let phase = 2 + (ack.total_delivered / u64::from(SENDME_INC) % 6) as usize;
        Mode::ProbeBw {
            phase,
            since: ack.now,
        }
    }

    fn update_bw(&mut self, ack: &Ack) {
        // Samples over less than a base RTT measure a burst, not the path
        // (Linux tcp_rate_gen drops them too).
        if ack.interval == 0 || ack.interval < self.min_rtt {
            return;
        }
        let bw = ack.delivered.saturating_mul(1_000_000_000) / ack.interval;
        // An application-limited sample says what was offered; it only
        // counts when it beats the model.
        if ack.app_limited && bw < self.max_bw() {
            return;
        }
        let slot = &mut self.bw_by_round[self.round as usize % BW_WINDOW_ROUNDS];
        if slot.0 == self.round {
            slot.1 = slot.1.max(bw);
        } else {
            *slot = (self.round, bw);
        }
        self.bw_round = self.round;
    }

    fn update_mode(&mut self, ack: &Ack, round_start: bool) {
        if !self.filled_pipe && round_start && !ack.app_limited {
            let bw = self.max_bw();
            if bw >= self.full_bw.saturating_mul(5) / 4 {
                self.full_bw = bw;
                self.full_bw_rounds = 0;
            } else {
                self.full_bw_rounds += 1;
                self.filled_pipe = self.full_bw_rounds >= 3;
            }
        }
        let inflight = u64::from(ack.inflight);
        match self.mode {
            Mode::Startup if self.filled_pipe => self.mode = Mode::Drain,
            Mode::Drain if self.bdp(1000).is_some_and(|b| inflight <= b) => {
                self.mode = self.probe_bw(ack);
            }
            Mode::ProbeBw { phase, since } => {
                let elapsed = ack.now.since(since);
                let full = elapsed > self.min_rtt;
                let gain = PROBE_GAINS_QUARTERS[phase];
                let next = if gain > 4 {
                    // Probe until the extra rate showed up as extra cells
                    // in flight (or a few RTTs passed without it).
                    full && self
                        .bdp(gain * 250)
                        .is_none_or(|b| inflight >= b || elapsed > 3 * self.min_rtt)
                } else if gain < 4 {
                    full || self.bdp(1000).is_some_and(|b| inflight <= b)
                } else {
                    full
                };
                if next {
                    self.mode = Mode::ProbeBw {
                        phase: (phase + 1) % PROBE_GAINS_QUARTERS.len(),
                        since: ack.now,
                    };
                }
            }
            _ => {}
        }
    }

    fn update_cwnd(&mut self, ack: &Ack) {
        let p = self.params;
        let gain = if self.mode == Mode::Startup {
            STARTUP_GAIN_MILLI
        } else {
            CWND_GAIN_MILLI
        };
        let target = self.bdp(gain).map(|headroom| {
            // The window covers the base-RTT headroom plus the cells that
            // sat in head-of-line waits: rate times (recent RTT - base).
            // Not in Startup: there the RTT rises with the queue Startup
            // itself builds, and the window would grow with it.
            let recent = if self.mode == Mode::Startup {
                self.min_rtt
            } else {
                self.rtt_last_round
                    .max(self.rtt_this_round)
                    .min(MAX_RTT_STRETCH.saturating_mul(self.min_rtt))
            };
            let waits = u128::from(self.max_bw()) * u128::from(recent.saturating_sub(self.min_rtt))
                / 1_000_000_000;
            let cells = u128::from(headroom) + waits + u128::from(ACK_ALLOWANCE);
            u32::try_from(cells).unwrap_or(u32::MAX)
        });
        let acked = SENDME_INC;
        if let Mode::ProbeRtt { .. } = self.mode {
            self.cwnd = p.cwnd_min;
            return;
        }
        match target {
            Some(t) if self.filled_pipe => {
                self.cwnd = self.cwnd.saturating_add(acked).min(t);
            }
            Some(t) if self.cwnd >= t && ack.total_delivered >= u64::from(p.cwnd_init) => {}
            _ => self.cwnd = self.cwnd.saturating_add(acked),
        }
        self.cwnd = self.cwnd.clamp(p.cwnd_min, p.cwnd_max);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::PathSim;
    use super::super::{CcAlgorithm, CircuitCc, SendmeError};
    use super::*;

    fn new_cc(algorithm: CcAlgorithm) -> CircuitCc {
        CircuitCc::new(CcParams {
            algorithm,
            ..CcParams::default()
        })
    }

    fn no_wait(_: u64) -> u64 {
        0
    }

    #[test]
    fn fills_a_clean_long_path_and_keeps_the_queue_small() -> Result<(), SendmeError> {
        // 100 cells/ms, 100 ms base RTT: BDP 10,000 cells, far above any
        // fixed Tor window.
        let mut cc = new_cc(CcAlgorithm::Bbr);
        let mut path = PathSim::new(100, 100);
        path.run(&mut cc, 3_000, &no_wait)?;
        let (cells, queue) = path.run(&mut cc, 5_000, &no_wait)?;
        let rate = cells / 5_000;
        eprintln!(
            "clean: {rate} cells/ms, max queue {queue}, cwnd {}",
            cc.cwnd()
        );
        assert!(rate >= 90, "{rate} cells/ms");
        // Steady state: ProbeBw's 5/4 phase adds a quarter BDP for one RTT.
        assert!(queue <= 3_500, "{queue}");
        Ok(())
    }

    #[test]
    fn head_of_line_waits_cost_window_not_rate() -> Result<(), SendmeError> {
        // The same path, but SENDMEs are held 0-100 ms more, as if their
        // cells had waited for a retransmission on some hop: the RTT swings
        // between 1x and 2x the base. Vegas reads that as a queue of up to
        // a BDP and backs off.
        let waits = |seq: u64| (seq / 31 * 7919 % 100) * 1_000_000;
        let mut rates = Vec::new();
        for algorithm in [CcAlgorithm::Bbr, CcAlgorithm::Vegas] {
            let mut cc = new_cc(algorithm);
            let mut path = PathSim::new(100, 100);
            path.run(&mut cc, 3_000, &waits)?;
            let (cells, _) = path.run(&mut cc, 5_000, &waits)?;
            rates.push(cells / 5_000);
        }
        let (bbr, vegas) = (rates[0], rates[1]);
        eprintln!("head-of-line waits: bbr {bbr} cells/ms, vegas {vegas}");
        assert!(bbr >= 80, "{bbr}");
        assert!(bbr >= 2 * vegas, "{bbr} vs {vegas}");
        Ok(())
    }

    #[test]
    fn window_stays_within_bounds() -> Result<(), SendmeError> {
        // A huge BDP (1000 cells/ms x 400 ms): the ceiling holds.
        let mut cc = new_cc(CcAlgorithm::Bbr);
        let mut path = PathSim::new(1_000, 400);
        path.run(&mut cc, 6_000, &no_wait)?;
        assert_eq!(cc.cwnd(), CcParams::default().cwnd_max);
        // A BDP below the floor (1 cell/ms x 2 ms): the window sits at its
        // floor and the queue it makes is about the floor too.
        let mut cc = new_cc(CcAlgorithm::Bbr);
        let mut path = PathSim::new(1, 2);
        path.run(&mut cc, 2_000, &no_wait)?;
        let (_, queue) = path.run(&mut cc, 20_000, &no_wait)?;
        let floor = CcParams::default().cwnd_min;
        eprintln!("tiny path: cwnd {}, queue {queue}", cc.cwnd());
        assert!(cc.cwnd() >= floor);
        assert!(queue <= u64::from(floor + ACK_ALLOWANCE), "{queue}");
        Ok(())
    }

    #[test]
    fn probe_rtt_drains_the_queue_and_finds_the_base_rtt() -> Result<(), SendmeError> {
        // The base RTT is first seen with a queue in it (every SENDME of the
        // first 3 s held 50 ms longer); once that ends, ProbeRtt within
        // MIN_RTT_WINDOW learns the real 20 ms.
        let mut cc = new_cc(CcAlgorithm::Bbr);
        let mut path = PathSim::new(50, 20);
        path.run(&mut cc, 3_000, &|_| 50_000_000)?;
        let inflated = cc.min_rtt().unwrap_or(0);
        path.run(&mut cc, 12_000, &no_wait)?;
        let learned = cc.min_rtt().unwrap_or(0);
        eprintln!("base rtt {inflated} -> {learned} ns");
        assert!(inflated >= 70_000_000, "{inflated}");
        assert!(learned < 25_000_000, "{learned}");
        Ok(())
    }

    #[test]
    fn app_limited_sender_keeps_its_rate_estimate() -> Result<(), SendmeError> {
        let mut cc = new_cc(CcAlgorithm::Bbr);
        let mut path = PathSim::new(100, 50);
        path.run(&mut cc, 3_000, &no_wait)?;
        // Let everything in flight be acknowledged.
        let mut now = path.now.plus_nanos(1_000_000_000);
        while cc.inflight() >= SENDME_INC {
            cc.on_sendme(now, &[1; 16], 0)?;
        }
        let before = cc.bandwidth().unwrap_or(0);
        // A trickle: one SENDME's worth per 60 ms, marked app-limited.
        for _ in 0..200 {
            cc.on_app_limited();
            for _ in 0..SENDME_INC {
                cc.on_send(now, [1; 16]);
            }
            now = now.plus_nanos(60_000_000);
            cc.on_sendme(now, &[1; 16], 0)?;
        }
        let after = cc.bandwidth().unwrap_or(0);
        assert!(before >= 90_000, "{before} cells/s");
        assert!(after * 10 >= before * 9, "{after} vs {before}");
        Ok(())
    }
}
