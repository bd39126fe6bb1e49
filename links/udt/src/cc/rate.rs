//! Delivery-rate estimation, after draft-cheng-iccrg-delivery-rate-estimation
//! (the scheme of Linux `tcp_rate.c`).
//!
//! Every packet carries a snapshot of the connection's delivery state taken
//! when it was sent ([`TxState`]): bytes delivered so far, when the last of
//! them was acknowledged, and when the first packet of the current flight
//! was sent. When the packet is acknowledged, the bytes delivered since its
//! snapshot divided by the longer of its send interval and its ack interval
//! is a delivery-rate sample ([`RateSample`]). Using the longer interval
//! keeps ACK compression and aggregation from inflating the estimate; a
//! sample shorter than the minimum RTT is discarded for the same reason.
//!
//! Samples taken while the sender had nothing to send are flagged
//! *application-limited*: they show what the application offered, not what
//! the path can carry, and a controller must not let them lower its
//! bandwidth estimate.

use relay_kernel::Time;

/// The delivery state recorded with each sent packet.
#[derive(Clone, Copy, Debug)]
pub struct TxState {
    /// Bytes delivered when the packet was sent.
    pub delivered: u64,
    /// When the last of those bytes was acknowledged.
    pub delivered_time: Time,
    /// When the first packet of the flight this one belongs to was sent.
    pub first_sent_time: Time,
    /// When this packet was sent.
    pub sent_time: Time,
    /// Whether the sender was application-limited.
    pub app_limited: bool,
}

/// One delivery-rate sample, taken per ACK.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateSample {
    /// Bytes delivered over `interval`.
    pub delivered: u64,
    /// Nanoseconds; 0 if the sample is not valid as a rate (shorter than
    /// the minimum RTT), though it still marks rounds.
    pub interval: u64,
    /// `delivered` at the send of the newest packet this ACK acknowledged
    /// (marks round trips: a round ends when a packet sent after the
    /// round began is acknowledged).
    pub prior_delivered: u64,
    /// Whether the newest acknowledged packet was sent app-limited.
    pub app_limited: bool,
}

impl RateSample {
    /// Bytes per second, if the sample is valid.
    pub fn rate(&self) -> Option<f64> {
        (self.interval > 0).then(|| self.delivered as f64 * 1e9 / self.interval as f64)
    }
}

/// Connection-wide delivery state.
#[derive(Clone, Debug, Default)]
pub struct RateSampler {
    delivered: u64,
    delivered_time: Time,
    first_sent_time: Time,
    /// Nonzero while app-limited: the `delivered` value at which the
    /// app-limited stretch is over.
    app_limited_until: u64,
    // The sample being built from the current ACK.
    prior: Option<TxState>,
    send_elapsed: u64,
    ack_elapsed: u64,
}

impl RateSampler {
    /// A sampler starting at `now`.
    pub fn new(now: Time) -> RateSampler {
        RateSampler {
            delivered_time: now,
            first_sent_time: now,
            ..RateSampler::default()
        }
    }

    /// Bytes delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// The snapshot for a packet sent at `now` while `in_flight` bytes
    /// (not counting it) were outstanding.
    pub fn on_send(&mut self, now: Time, in_flight: usize) -> TxState {
        if in_flight == 0 {
            // A new flight: its intervals start now.
            self.first_sent_time = now;
            self.delivered_time = now;
        }
        TxState {
            delivered: self.delivered,
            delivered_time: self.delivered_time,
            first_sent_time: self.first_sent_time,
            sent_time: now,
            app_limited: self.app_limited_until != 0,
        }
    }

    /// The sender has nothing to send with `in_flight` bytes outstanding
    /// and room in its window: packets sent until those bytes are
    /// delivered are app-limited.
    pub fn on_app_limited(&mut self, in_flight: usize) {
        self.app_limited_until = (self.delivered + in_flight as u64).max(1);
    }

    /// A packet of `bytes` sent with `tx` was acknowledged at `now` (call
    /// for each packet of an ACK, then [`Self::take_sample`]).
    pub fn on_packet_acked(&mut self, now: Time, bytes: usize, tx: &TxState) {
        self.delivered += bytes as u64;
        self.delivered_time = now;
        // The sample is taken from the most recently sent packet.
        let newer = self.prior.is_none_or(|p| {
            tx.delivered > p.delivered
                || (tx.delivered == p.delivered && tx.sent_time >= p.sent_time)
        });
        if newer {
            self.prior = Some(*tx);
            self.send_elapsed = tx.sent_time.since(tx.first_sent_time);
            self.ack_elapsed = now.since(tx.delivered_time);
            self.first_sent_time = tx.sent_time;
        }
    }

    /// The sample of the ACK just processed, if it acknowledged a packet
    /// (`min_rtt`: the smallest RTT seen, in nanoseconds; a shorter
    /// interval gives no rate).
    pub fn take_sample(&mut self, min_rtt: u64) -> Option<RateSample> {
        if self.app_limited_until != 0 && self.delivered > self.app_limited_until {
            self.app_limited_until = 0;
        }
        let prior = self.prior.take()?;
        let mut interval = self.send_elapsed.max(self.ack_elapsed);
        let delivered = self.delivered - prior.delivered;
        if interval < min_rtt || delivered == 0 {
            interval = 0;
        }
        Some(RateSample {
            delivered,
            interval,
            prior_delivered: prior.delivered,
            app_limited: prior.app_limited,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// A sender pacing 1000-byte packets every `gap` ns over a path with a
    /// fixed RTT, everything acknowledged: the samples settle at the
    /// sending rate.
    #[test]
    fn steady_flow_gives_its_rate() {
        let mut s = RateSampler::new(Time(0));
        let gap = MS; // 1000 bytes per ms = 1 MB/s
        let rtt = 50 * MS;
        let mut in_flight: std::collections::VecDeque<(Time, TxState)> = Default::default();
        let mut last = None;
        for i in 0..500u64 {
            let now = Time(i * gap);
            while let Some((t, tx)) = in_flight.front().copied() {
                if t.plus_nanos(rtt) > now {
                    break;
                }
                in_flight.pop_front();
                s.on_packet_acked(t.plus_nanos(rtt), 1000, &tx);
                if let Some(r) = s.take_sample(rtt).and_then(|rs| rs.rate()) {
                    last = Some(r);
                }
            }
            let tx = s.on_send(now, in_flight.len() * 1000);
            in_flight.push_back((now, tx));
        }
        let rate = last.expect("samples");
        assert!((rate - 1e6).abs() < 1e6 * 0.03, "{rate}");
    }

    #[test]
    fn short_interval_is_discarded_and_app_limited_flag_clears() {
        let mut s = RateSampler::new(Time(0));
        s.on_app_limited(0);
        let a = s.on_send(Time(0), 0);
        assert!(a.app_limited);
        // Acknowledged after 1 ms while the min RTT is 10 ms: no sample.
        s.on_packet_acked(Time(MS), 1000, &a);
        let rs = s.take_sample(10 * MS).expect("a sample");
        assert_eq!(rs.rate(), None);
        assert!(rs.app_limited);
        // Delivered passed the mark: later packets are not app-limited.
        let b = s.on_send(Time(MS), 0);
        assert!(!b.app_limited);
        s.on_packet_acked(Time(21 * MS), 1000, &b);
        let rs = s.take_sample(10 * MS).expect("a sample");
        assert_eq!(rs.delivered, 1000);
        assert_eq!(rs.interval, 20 * MS);
        assert!(!rs.app_limited);
        assert_eq!(rs.rate(), Some(50_000.0));
    }
}
