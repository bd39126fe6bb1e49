//! The sender's record of counted cells: what is in flight, which tag each
//! SENDME must echo, and the delivery-rate sample each SENDME yields.
//!
//! The rate sample follows the BBR delivery-rate estimator (draft-cheng-
//! iccrg-delivery-rate-estimation): for the acknowledged cell P, the rate is
//! the cells delivered since P was sent, over the longer of the time the
//! acknowledgements took (`now - P.delivered_at`) and the time the sends
//! took (`P.sent_at - P.first_sent_at`). The longer interval keeps a burst
//! of SENDMEs (released together after a head-of-line wait on some hop)
//! from reading as a rate above what was actually sent.
//!
//! RTT samples leave out what the acknowledged cell and its SENDME waited
//! in links' reordering buffers (the SENDME reports the cell's wait, the
//! SENDME cell carries its own; see [`crate::Cell::reorder_wait_us`]): a
//! wait behind a retransmission on some hop is loss recovery, not
//! queueing. The waits come from the far edge and the relays, so a sample
//! never drops below half the smallest RTT measured with them in (not the
//! whole of it: on a path where every sample waited, that smallest RTT
//! holds a wait too, and the queueing below it would go unseen). A hop
//! that overstates waits can hide queueing from the sender (which then
//! grows its window until a relay's per-circuit queue bound ends the
//! circuit) or, past the clamp, make the base RTT look shorter (and the
//! sender back off for nothing); either way it harms only the circuit it
//! is on, which it could as well by delaying or dropping cells.

use std::collections::VecDeque;

use super::{Ack, SendmeError, SENDME_INC};
use crate::time::Time;

/// What the sender noted when it sent a SENDME_INC-th cell.
#[derive(Debug, Clone, Copy)]
struct Sent {
    sent_at: Time,
    tag: [u8; 16],
    /// Ledger's `delivered` and `delivered_at` at send time.
    delivered: u64,
    delivered_at: Time,
    /// Send time of the newest acknowledged cell at send time.
    first_sent_at: Time,
    app_limited: bool,
}

#[derive(Debug, Default)]
pub(super) struct Ledger {
    inflight: u32,
    sent: u64,
    /// Every SENDME_INC-th cell, oldest first.
    awaiting: VecDeque<Sent>,
    /// Cells acknowledged so far, and when that count last grew.
    delivered: u64,
    delivered_at: Time,
    /// Send time of the newest acknowledged cell.
    first_sent_at: Time,
    /// While `delivered` is below this, samples are application-limited
    /// (0: not limited).
    app_limited_until: u64,
    /// Smallest RTT measured, reordering waits included (0: none yet).
    min_raw_rtt: u64,
}

impl Ledger {
    pub fn inflight(&self) -> u32 {
        self.inflight
    }

    pub fn on_send(&mut self, now: Time, tag: [u8; 16]) {
        if self.inflight == 0 {
            // Nothing in flight: a sample must not span the idle time.
            self.delivered_at = now;
            self.first_sent_at = now;
        }
        self.inflight = self.inflight.saturating_add(1);
        self.sent += 1;
        if self.sent.is_multiple_of(u64::from(SENDME_INC)) {
            self.awaiting.push_back(Sent {
                sent_at: now,
                tag,
                delivered: self.delivered,
                delivered_at: self.delivered_at,
                first_sent_at: self.first_sent_at,
                app_limited: self.app_limited_until > self.delivered,
            });
        }
    }

    pub fn on_app_limited(&mut self) {
        self.app_limited_until = (self.delivered + u64::from(self.inflight)).max(1);
    }

    /// Handles a SENDME whose body is `body` (see [`super::sendme_body`])
    /// and whose cell waited `own_wait_us` in reordering buffers on its way.
    pub fn on_sendme(
        &mut self,
        now: Time,
        body: &[u8],
        own_wait_us: u32,
    ) -> Result<Ack, SendmeError> {
        let p = *self.awaiting.front().ok_or(SendmeError::Unexpected)?;
        if body.get(..16) != Some(&p.tag[..]) {
            return Err(SendmeError::WrongTag);
        }
        let forward_wait_us = super::sendme_forward_wait_us(body);
        self.awaiting.pop_front();
        self.inflight = self.inflight.saturating_sub(SENDME_INC);
        self.delivered += u64::from(SENDME_INC);
        self.delivered_at = now;
        self.first_sent_at = p.sent_at;
        if self.app_limited_until != 0 && self.delivered > self.app_limited_until {
            self.app_limited_until = 0;
        }
        let send_elapsed = p.sent_at.since(p.first_sent_at);
        let ack_elapsed = now.since(p.delivered_at);
        let raw_rtt = now.since(p.sent_at).max(1);
        if self.min_raw_rtt == 0 || raw_rtt < self.min_raw_rtt {
            self.min_raw_rtt = raw_rtt;
        }
        let waits = (u64::from(forward_wait_us) + u64::from(own_wait_us)) * 1000;
        let rtt = raw_rtt
            .saturating_sub(waits)
            .max(self.min_raw_rtt / 2)
            .max(1);
        Ok(Ack {
            now,
            rtt,
            waited: raw_rtt - rtt,
            delivered: self.delivered - p.delivered,
            interval: send_elapsed.max(ack_elapsed),
            prior_delivered: p.delivered,
            total_delivered: self.delivered,
            app_limited: p.app_limited,
            inflight: self.inflight,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_sample_of_a_steady_sender() -> Result<(), SendmeError> {
        // One cell per 10 us (100 cells/ms), acknowledged 50 ms later.
        let mut l = Ledger::default();
        let mut acks = Vec::new();
        for i in 0..10_000u64 {
            let t = Time(i * 10_000);
            while acks.first().is_some_and(|a: &Time| *a <= t) {
                let a = acks.remove(0);
                let ack = l.on_sendme(a, &[3; 16], 0)?;
                if ack.prior_delivered > 0 {
                    let rate = ack.delivered * 1_000_000 / ack.interval;
                    assert!((95..=105).contains(&rate), "{rate} cells/ms");
                }
            }
            l.on_send(t, [3; 16]);
            if (i + 1) % u64::from(SENDME_INC) == 0 {
                acks.push(t.plus_nanos(50_000_000));
            }
        }
        Ok(())
    }

    #[test]
    fn burst_of_sendmes_does_not_read_as_a_higher_rate() -> Result<(), SendmeError> {
        // 100 cells/ms sent; the SENDMEs of 20 ms of cells all arrive at
        // once (a head-of-line wait released them together).
        let mut l = Ledger::default();
        for i in 0..4000u64 {
            l.on_send(Time(i * 10_000), [4; 16]);
        }
        let mut max_rate = 0;
        for k in 0..(4000 / u64::from(SENDME_INC)) {
            let at = if k < 64 { 60_000_000 } else { 80_000_000 };
            let ack = l.on_sendme(Time(at + k), &[4; 16], 0)?;
            if let Some(rate) = (ack.delivered * 1_000_000).checked_div(ack.interval) {
                max_rate = max_rate.max(rate);
            }
        }
        assert!(max_rate <= 105, "{max_rate} cells/ms");
        Ok(())
    }

    #[test]
    fn app_limited_marks_cells_in_flight() -> Result<(), SendmeError> {
        let mut l = Ledger::default();
        l.on_app_limited();
        for i in 0..u64::from(SENDME_INC) {
            l.on_send(Time(i), [5; 16]);
        }
        assert!(l.on_sendme(Time(100), &[5; 16], 0)?.app_limited);
        for i in 0..u64::from(SENDME_INC) {
            l.on_send(Time(200 + i), [5; 16]);
        }
        assert!(!l.on_sendme(Time(300), &[5; 16], 0)?.app_limited);
        Ok(())
    }

    #[test]
    fn refuses_wrong_or_unexpected_sendme() {
        let mut l = Ledger::default();
        assert!(matches!(
            l.on_sendme(Time(1), &[0; 16], 0),
            Err(SendmeError::Unexpected)
        ));
        for _ in 0..SENDME_INC {
            l.on_send(Time(0), [7; 16]);
        }
        assert!(matches!(
            l.on_sendme(Time(1), &[8; 16], 0),
            Err(SendmeError::WrongTag)
        ));
        // A short echo is wrong too, and the right one still works after.
        assert!(matches!(
            l.on_sendme(Time(1), &[7; 3], 0),
            Err(SendmeError::WrongTag)
        ));
        assert!(l.on_sendme(Time(1), &[7; 16], 0).is_ok());
    }
}
