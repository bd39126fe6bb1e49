//! TOR_VEGAS (Tor proposal 324): a delay-based window.
//!
//! Each SENDME gives an RTT sample. Vegas estimates the cells queued along
//! the path as `cwnd * (rtt - min_rtt) / rtt` and grows the window while
//! that is below `alpha`, shrinks it above `beta`. So the window follows
//! the path's bandwidth-delay product while relay queues stay near
//! `alpha..beta` cells; but any delay that is not queueing (a head-of-line
//! wait for a retransmission on a lossy hop) shrinks it too.

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
        let p = self.params;
        let queue = (u64::from(self.cwnd) * (rtt - self.min_rtt) / rtt) as u32;
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
            v.on_sendme(*now, &[1; 16])?;
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
}
