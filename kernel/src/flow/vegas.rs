//! TOR_VEGAS (Tor proposal 324): a delay-based window.
//!
//! Each SENDME gives an RTT sample. Vegas estimates the cells queued along
//! the path as `cwnd * (rtt - min_rtt) / rtt` and grows the window while
//! that is below `alpha`, shrinks it above `beta`. So the window follows
//! the path's bandwidth-delay product while relay queues stay near
//! `alpha..beta` cells; but any delay that is not queueing shrinks it
//! too. The largest such delay, a cell's wait in a link's reordering
//! buffer for a retransmission on a lossy hop, is reported by the links
//! that can see it (udt) and left out of the RTT samples (see
//! [`super::ledger`]); the queue estimate is then the circuit's rate
//! (`cwnd` over the whole round trip) times the delay beyond `min_rtt`.
//!
//! What the waits do not remove: a hop releases the cells held behind a
//! retransmission together, and the next hop sends them only as fast as
//! its link paces, at about the rate the circuit has been sending, so they
//! and the cells behind them queue there for up to about as long as they
//! waited. That queue is real and short-lived; Vegas reads it as
//! congestion and, on netsim's lossy long-fat path, ends slow start early
//! (80 Mbit/s of 1,000 at 1% loss per link, against 16 before the waits
//! were reported). Acting on the least estimate over a span of twice the
//! longest wait ignored those bursts (630 Mbit/s) but also lasting queues
//! wherever congestion drops made waits: in netsim `web` it took 20 times
//! the queue drops and 17% longer page loads at the 90th percentile, so it
//! is not used (docs/benchmarks.md, "Reordering waits").
//!
//! On fast paths Tor's cell counts are a fraction of a millisecond of
//! queue, less than the batching delay of the hops themselves, which
//! Vegas then reads as congestion; so the thresholds never stand for less
//! than [`CcParams::queue_floor_ns`] of queue at the circuit's rate.

use super::{Ack, CcParams, SENDME_INC};

/// Vegas' window state.
#[derive(Debug)]
pub(crate) struct Vegas {
    params: CcParams,
    cwnd: u32,
    min_rtt: u64,
    slow_start: bool,
    acked_this_round: u32,
}

impl Vegas {
    pub fn new(params: CcParams) -> Vegas {
        Vegas {
            params,
            cwnd: params.cwnd_init,
            min_rtt: u64::MAX,
            slow_start: true,
            acked_this_round: 0,
        }
    }

    pub fn cwnd(&self) -> u32 {
        self.cwnd
    }

    /// Nanoseconds between cells when paced, or None before the first RTT
    /// sample. Sending a window as one burst builds a queue at the
    /// bottleneck that Vegas reads as congestion and leaves slow start far
    /// too early on long paths (measured in tests/flow_control.rs); pacing
    /// at `cwnd / min_rtt` times a gain (2 in slow start so the window can
    /// still double each RTT, 1.25 after) avoids that.
    pub fn pacing_interval(&self) -> Option<u64> {
        let rtt = self.min_rtt()?;
        let gain_x4: u64 = if self.slow_start { 8 } else { 5 };
        Some(rtt * 4 / (u64::from(self.cwnd.max(1)) * gain_x4))
    }

    pub fn min_rtt(&self) -> Option<u64> {
        (self.min_rtt != u64::MAX).then_some(self.min_rtt)
    }

    pub fn on_ack(&mut self, ack: &Ack) {
        let rtt = ack.rtt;
        self.min_rtt = self.min_rtt.min(rtt);
        let p = with_queue_floor(self.params, self.cwnd, rtt);
        // The circuit's rate is the window over the whole round trip,
        // reordering waits included; the queue is that rate times the
        // delay beyond the minimum, waits left out.
        let queue = (u64::from(self.cwnd) * (rtt - self.min_rtt) / (rtt + ack.waited)) as u32;
        if self.slow_start {
            if queue > p.gamma {
                self.slow_start = false;
                self.cwnd = self.cwnd.saturating_sub(queue - p.gamma);
            } else {
                self.cwnd = self.cwnd.saturating_add(SENDME_INC);
            }
        } else {
            self.acked_this_round += SENDME_INC;
            if self.acked_this_round >= self.cwnd {
                self.acked_this_round = 0;
                if queue > p.delta {
                    self.cwnd = self.cwnd.saturating_sub(queue - p.delta + SENDME_INC);
                } else if queue > p.beta {
                    self.cwnd = self.cwnd.saturating_sub(SENDME_INC);
                } else if queue < p.alpha {
                    self.cwnd = self.cwnd.saturating_add(SENDME_INC);
                }
            }
        }
        self.cwnd = self.cwnd.clamp(p.cwnd_min, p.cwnd_max);
    }
}

/// The congestion-avoidance thresholds (`alpha`, `beta`, `delta`), scaled
/// up together where `alpha` cells are less than `queue_floor_ns` of queue
/// at the circuit's rate (`cwnd` per `rtt`). `gamma`, the slow-start exit,
/// stays Tor's: scaled too, slow start on netsim's long-fat path (1 Gbit/s,
/// 100 ms) ran on past the bottleneck's queue, and the loss that followed
/// halved the circuit's goodput (354 against 761 Mbit/s).
fn with_queue_floor(mut p: CcParams, cwnd: u32, rtt: u64) -> CcParams {
    let floor_cells = u64::from(cwnd) * p.queue_floor_ns / rtt.max(1);
    let alpha = u64::from(p.alpha.max(1));
    if floor_cells > alpha {
        let scale = |x: u32| (u64::from(x) * floor_cells / alpha).min(u64::from(u32::MAX)) as u32;
        p.alpha = scale(p.alpha);
        p.beta = scale(p.beta);
        p.delta = scale(p.delta);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::super::{CcAlgorithm, CircuitCc, SendmeError};
    use super::*;
    use crate::time::Time;

    fn vegas() -> CircuitCc {
        CircuitCc::new(CcParams {
            algorithm: CcAlgorithm::Vegas,
            ..CcParams::default()
        })
    }

    fn ack_round(v: &mut CircuitCc, now: &mut Time, rtt_ms: u64) -> Result<(), SendmeError> {
        // Send a window's worth, then acknowledge it after rtt_ms.
        let n = v.cwnd() - v.inflight();
        for _ in 0..n {
            v.on_send(*now, [1; 16]);
        }
        *now = now.plus_nanos(rtt_ms * 1_000_000);
        while v.inflight() >= SENDME_INC {
            v.on_sendme(*now, &[1; 16], 0)?;
        }
        Ok(())
    }

    #[test]
    fn grows_past_any_fixed_window_when_queue_is_empty() -> Result<(), SendmeError> {
        let mut v = vegas();
        let mut now = Time(0);
        for _ in 0..20 {
            ack_round(&mut v, &mut now, 100)?;
        }
        assert_eq!(v.cwnd(), CcParams::default().cwnd_max);
        Ok(())
    }

    #[test]
    fn the_queue_floor_scales_thresholds_only_on_fast_paths() {
        let p = CcParams {
            queue_floor_ns: 1_000_000,
            ..CcParams::default()
        };
        // 300 cells per 10 ms: 30 cells per ms of queue, below alpha.
        let slow = with_queue_floor(p, 300, 10_000_000);
        assert_eq!(
            (slow.alpha, slow.beta, slow.delta),
            (p.alpha, p.beta, p.delta)
        );
        // 4000 cells per 2 ms: 1 ms of queue is 2000 cells.
        let fast = with_queue_floor(p, 4000, 2_000_000);
        assert_eq!(fast.alpha, 2000);
        assert_eq!(fast.beta, 248 * 2000 / 186);
        assert_eq!(fast.delta, 310 * 2000 / 186);
        let off = with_queue_floor(
            CcParams {
                queue_floor_ns: 0,
                ..p
            },
            4000,
            2_000_000,
        );
        assert_eq!(off.alpha, p.alpha);
    }

    #[test]
    fn a_fast_path_keeps_a_window_that_queues_the_floor() -> Result<(), SendmeError> {
        // 1 ms base RTT, and each round's RTT is 1 ms plus 0.5 ms of
        // batching delay: Tor's thresholds read the 0.5 ms as ~1/3 of the
        // window queued and hold it near alpha * 3; with the 1 ms floor the
        // half millisecond is not congestion, and the window grows on.
        let run = |floor: u64| -> Result<u32, SendmeError> {
            let mut v = CircuitCc::new(CcParams {
                algorithm: CcAlgorithm::Vegas,
                queue_floor_ns: floor,
                ..CcParams::default()
            });
            let mut now = Time(0);
            let mut now_us = 0;
            for round in 0..400 {
                let n = v.cwnd() - v.inflight();
                for _ in 0..n {
                    v.on_send(now, [1; 16]);
                }
                let rtt_us = if round == 0 { 1000 } else { 1500 };
                now_us += rtt_us;
                now = Time(now_us * 1000);
                while v.inflight() >= SENDME_INC {
                    v.on_sendme(now, &[1; 16], 0)?;
                }
            }
            Ok(v.cwnd())
        };
        let (tor, floored) = (run(0)?, run(1_000_000)?);
        assert!(tor < 1000, "{tor}");
        assert!(floored > 2 * tor, "{floored} vs {tor}");
        Ok(())
    }

    #[test]
    fn shrinks_when_rtt_inflates() -> Result<(), SendmeError> {
        let mut v = vegas();
        let mut now = Time(0);
        for _ in 0..5 {
            ack_round(&mut v, &mut now, 50)?;
        }
        let grown = v.cwnd();
        for _ in 0..30 {
            ack_round(&mut v, &mut now, 200)?;
        }
        assert!(v.cwnd() < grown / 2, "{} vs {grown}", v.cwnd());
        Ok(())
    }

    /// The path of `bbr::head_of_line_waits_cost_window_not_rate`: SENDMEs
    /// held 0-100 ms more, as behind retransmissions on some hop, on a
    /// 100 cells/ms, 100 ms path. Unreported, Vegas reads the waits as a
    /// queue and starves (3 cells/ms); reported, as udt links report them,
    /// it keeps two thirds of the path (66 cells/ms when written) with the
    /// bottleneck queue near its thresholds rather than the waits' size.
    /// It does not fill the path: the window waits with the SENDMEs, and
    /// the sender's bursts when they come build short queues that end slow
    /// start early.
    #[test]
    fn reported_head_of_line_waits_do_not_shrink_the_window() -> Result<(), SendmeError> {
        use super::super::testing::PathSim;
        let waits = |seq: u64| (seq / 31 * 7919 % 100) * 1_000_000;
        let mut rates = Vec::new();
        let mut queue = 0;
        for report_waits in [false, true] {
            let mut cc = vegas();
            let mut path = PathSim::new(100, 100);
            path.report_waits = report_waits;
            path.run(&mut cc, 3_000, &waits)?;
            let (cells, q) = path.run(&mut cc, 5_000, &waits)?;
            rates.push(cells / 5_000);
            queue = q;
        }
        let (unreported, reported) = (rates[0], rates[1]);
        eprintln!("vegas under head-of-line waits: unreported {unreported} cells/ms, reported {reported} (max queue {queue})");
        assert!(reported >= 50, "{reported} cells/ms");
        assert!(reported >= 10 * unreported, "{reported} vs {unreported}");
        // The 4 ms floor at 100 cells/ms is 400 cells; delta scales to
        // 667. Far below the 10,000 cells the waits would amount to.
        assert!(queue <= 2_000, "{queue}");
        Ok(())
    }
}
