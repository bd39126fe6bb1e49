//! End-to-end congestion control for one circuit direction, in the spirit of
//! Tor proposal 324 (TOR_VEGAS).
//!
//! The receiving edge sends a SENDME after every [`SENDME_INC`] counted relay
//! cells, echoing the tag of the cell that triggered it (so a receiver cannot
//! acknowledge cells it never got, as in Tor proposal 289). The sender times
//! each SENDME to get an RTT sample and runs Vegas: it estimates the cells
//! queued along the path as `cwnd * (rtt - min_rtt) / rtt` and grows the window
//! while that is below `alpha`, shrinks it above `beta`. So the window follows
//! the path's bandwidth-delay product (no fixed cap like Tor's 1000-cell
//! SENDME window) while relay queues stay near `alpha..beta` cells. `cwnd_max`
//! is the hard ceiling, and relays enforce a per-circuit queue bound above it.

use std::collections::VecDeque;

use crate::time::Time;

/// Counted cells per SENDME.
pub const SENDME_INC: u32 = 31;

/// Vegas parameters, in cells.
#[derive(Clone, Copy, Debug)]
pub struct CcParams {
    /// Initial window.
    pub cwnd_init: u32,
    /// Smallest window.
    pub cwnd_min: u32,
    /// Largest window: also bounds what any relay queues for the circuit.
    pub cwnd_max: u32,
    /// Grow in congestion avoidance while the queue estimate is below this.
    pub alpha: u32,
    /// Shrink while the queue estimate is above this.
    pub beta: u32,
    /// Leave slow start when the queue estimate exceeds this.
    pub gamma: u32,
    /// Cut hard when the queue estimate exceeds this.
    pub delta: u32,
}

impl Default for CcParams {
    fn default() -> Self {
        // Tor's exit-side Vegas defaults (proposal 324, consensus values of
        // 2023), with a window ceiling of 32768 cells (about 16 MB in flight,
        // 1.3 Gbit/s at 100 ms RTT).
        CcParams {
            cwnd_init: 4 * SENDME_INC,
            cwnd_min: 4 * SENDME_INC,
            cwnd_max: 32768,
            alpha: 186,
            beta: 248,
            gamma: 186,
            delta: 310,
        }
    }
}

/// Why a SENDME was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendmeError {
    /// More SENDMEs than cells sent.
    Unexpected,
    /// The echoed tag is not the tag of the acknowledged cell.
    WrongTag,
}

/// Sender-side state.
#[derive(Debug)]
pub struct Vegas {
    params: CcParams,
    cwnd: u32,
    inflight: u32,
    sent: u64,
    /// (send time, tag) of every SENDME_INC-th cell, oldest first.
    awaiting: VecDeque<(Time, [u8; 16])>,
    min_rtt: u64,
    slow_start: bool,
    acked_this_round: u32,
}

impl Vegas {
    /// A fresh controller.
    pub fn new(params: CcParams) -> Vegas {
        Vegas {
            params,
            cwnd: params.cwnd_init,
            inflight: 0,
            sent: 0,
            awaiting: VecDeque::new(),
            min_rtt: u64::MAX,
            slow_start: true,
            acked_this_round: 0,
        }
    }

    /// Whether another counted cell may be sent now.
    pub fn can_send(&self) -> bool {
        self.inflight < self.cwnd
    }

    /// The congestion window, in cells.
    pub fn cwnd(&self) -> u32 {
        self.cwnd
    }

    /// Cells sent and not yet acknowledged.
    pub fn inflight(&self) -> u32 {
        self.inflight
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

    /// Smallest RTT seen, in nanoseconds.
    pub fn min_rtt(&self) -> Option<u64> {
        (self.min_rtt != u64::MAX).then_some(self.min_rtt)
    }

    /// Records a counted cell sent at `now` whose destination tag is `tag`.
    pub fn on_send(&mut self, now: Time, tag: [u8; 16]) {
        self.inflight = self.inflight.saturating_add(1);
        self.sent += 1;
        if self.sent.is_multiple_of(u64::from(SENDME_INC)) {
            self.awaiting.push_back((now, tag));
        }
    }

    /// Handles a SENDME echoing `tag`, received at `now`.
    pub fn on_sendme(&mut self, now: Time, tag: &[u8]) -> Result<(), SendmeError> {
        let (sent_at, want) = self.awaiting.pop_front().ok_or(SendmeError::Unexpected)?;
        if tag.get(..16) != Some(&want[..]) {
            return Err(SendmeError::WrongTag);
        }
        self.inflight = self.inflight.saturating_sub(SENDME_INC);
        let rtt = now.since(sent_at).max(1);
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
        Ok(())
    }
}

/// Receiver-side SENDME counter.
#[derive(Debug, Default)]
pub struct SendmeCounter {
    received: u32,
}

impl SendmeCounter {
    /// Counts a received cell; returns true when a SENDME is due for it.
    pub fn on_receive(&mut self) -> bool {
        self.received += 1;
        if self.received == SENDME_INC {
            self.received = 0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack_round(v: &mut Vegas, now: &mut Time, rtt_ms: u64) -> Result<(), SendmeError> {
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
        let mut v = Vegas::new(CcParams::default());
        let mut now = Time(0);
        for _ in 0..20 {
            ack_round(&mut v, &mut now, 100)?;
        }
        assert_eq!(v.cwnd(), CcParams::default().cwnd_max);
        Ok(())
    }

    #[test]
    fn shrinks_when_rtt_inflates() -> Result<(), SendmeError> {
        let mut v = Vegas::new(CcParams::default());
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

    #[test]
    fn refuses_wrong_or_unexpected_sendme() {
        let mut v = Vegas::new(CcParams::default());
        assert_eq!(v.on_sendme(Time(1), &[0; 16]), Err(SendmeError::Unexpected));
        for _ in 0..SENDME_INC {
            v.on_send(Time(0), [7; 16]);
        }
        assert_eq!(v.on_sendme(Time(1), &[8; 16]), Err(SendmeError::WrongTag));
    }
}
