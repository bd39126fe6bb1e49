//! UDT's rate-based congestion control (DAIMD), after the UDT protocol
//! (draft-gg-udt-03, section 6) and UDT4's `CUDTCC`.
//!
//! The sender paces packets at a rate it changes once per SYN interval
//! (10 ms), whatever the RTT, so flows with different RTTs converge to the
//! same rate:
//!
//! - **Increase** (a SYN without a loss report): the rate grows by
//!   `inc` packets per SYN, where `inc` is set by the *spare capacity*
//!   `B - C`, the bottleneck capacity `B` estimated by packet pairs (below)
//!   minus the current rate `C`:
//!   `inc = max(10^ceil(log10((B - C) x MSS x 8)) x 1.5e-6 / MSS, 0.01)`
//!   packets (UDT4's floor of 0.01). So a flow far below capacity climbs
//!   fast (about 1 packet per SYN per Gbit/s of spare capacity), one near
//!   it creeps, and a slower flow gains faster than a faster one sharing
//!   its bottleneck. While the rate is below the one before the last
//!   decrease, the spare capacity counts as at most `B / 9` (no snapping
//!   back to the rate that just caused loss).
//! - **Decrease** by 1/9 (the packet period grows by 1.125) on the first
//!   loss report of a *congestion period*, a loss of a packet sent after
//!   the last decrease. Further reports within the period decrease again
//!   only every `DecRandom`-th report, at most 5 times in all per period
//!   (0.889^5 = 0.55: a period never halves the rate), where `DecRandom`
//!   is drawn from `[1, AvgNAKNum]`, a moving average of reports per
//!   period (de-synchronises flows). The increase is skipped in the SYN
//!   after a loss.
//! - **Slow start**: the window starts at 16 packets and grows by each
//!   packet acknowledged until the first loss; the rate then starts at the
//!   receive rate. After slow start the window is UDT's flow window,
//!   `receive rate x (RTT + SYN) + 16 packets`.
//!
//! **Packet pairs**: the sender sends every 16th data packet and the next
//! one back to back (the second carries a PAIR frame); the receiver
//! divides the second's size by their arrival gap and reports the median
//! of the last 16 such samples in a CAPACITY frame (`Conn`). The receive
//! rate is the sender's delivery-rate estimate ([`super::rate`]), which is
//! what UDT's receiver-side arrival rate measures. Until a capacity is
//! known (or where the driver's receive timestamps cannot separate a pair,
//! like batched reads on loopback) the spare capacity is taken as the
//! current rate, i.e. the increase acts as if the path could carry twice
//! the rate: UDT itself has no rule for this case.

use relay_kernel::Time;

use super::{AckSample, Congestion, Rtt};

/// Rate control interval (UDT's SYN), ns.
pub const SYN: u64 = 10_000_000;
/// Initial window, packets.
const INIT_PACKETS: f64 = 16.0;
/// Decrease factor of the rate: the packet period grows by 1/8.
const DECREASE: f64 = 1.125;
/// Most decreases per congestion period.
const MAX_DECREASES: u32 = 5;
/// UDT4's smallest increase, packets per SYN.
const MIN_INC: f64 = 0.01;
/// UDT's increase parameter (beta).
const INC_BETA: f64 = 1.5e-6;
/// The largest capacity a receiver's report is taken for, bytes per second.
const MAX_CAPACITY: f64 = 12.5e9;
/// The window's ceiling in slow start, packets (UDT's default flow
/// window, 25,600 packets).
const MAX_SLOW_START_PACKETS: f64 = 25_600.0;

/// The UDT rate controller.
pub struct UdtRate {
    mss: f64,
    slow_start: bool,
    /// Window in bytes.
    cwnd: f64,
    /// Sending rate, bytes per second (0 in slow start: window-limited).
    rate: f64,
    /// The rate before the last decrease.
    last_dec_rate: f64,
    last_rc: Time,
    /// A loss was reported since the last rate change.
    loss: bool,
    /// When the last decrease happened: a loss of a packet sent later opens
    /// a new congestion period.
    last_dec: Time,
    avg_nak: f64,
    nak_count: u32,
    dec_count: u32,
    dec_random: u32,
    /// Smoothed delivery rate, bytes per second.
    recv_rate: f64,
    /// Latest bottleneck capacity reported by the receiver, bytes per s.
    capacity: f64,
    /// Latest smoothed RTT, ns.
    srtt: u64,
    rng: u64,
}

impl UdtRate {
    /// A controller for datagrams of `mss` bytes.
    pub fn new(mss: usize, seed: u64) -> UdtRate {
        let mss = mss.max(1) as f64;
        UdtRate {
            mss,
            slow_start: true,
            cwnd: INIT_PACKETS * mss,
            rate: 0.0,
            last_dec_rate: 0.0,
            last_rc: Time(0),
            loss: false,
            last_dec: Time(0),
            avg_nak: 1.0,
            nak_count: 0,
            dec_count: 0,
            dec_random: 1,
            recv_rate: 0.0,
            capacity: 0.0,
            srtt: Rtt::default().srtt,
            rng: seed | 1,
        }
    }

    /// The sending rate, bytes per second (0 during slow start).
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Whether slow start is over.
    pub fn in_slow_start(&self) -> bool {
        self.slow_start
    }

    /// xorshift64*: deterministic per connection.
    fn random(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Leaves slow start at the receive rate, or the window's rate.
    fn end_slow_start(&mut self) {
        self.slow_start = false;
        self.rate = if self.recv_rate > 0.0 {
            self.recv_rate
        } else {
            self.cwnd * 1e9 / (self.srtt + SYN) as f64
        };
        self.last_dec_rate = self.rate;
    }

    /// The increase of one SYN, packets.
    fn increase(&self) -> f64 {
        let capacity = if self.capacity > 0.0 {
            self.capacity
        } else {
            2.0 * self.rate
        };
        let mut spare = capacity - self.rate;
        if self.rate < self.last_dec_rate {
            spare = spare.min(capacity / 9.0);
        }
        if spare <= 0.0 {
            return MIN_INC;
        }
        // Spare packets per second x MSS x 8 is spare bits per second.
        let bits = spare * 8.0;
        (10f64.powf(bits.log10().ceil()) * INC_BETA / self.mss).max(MIN_INC)
    }
}

impl Congestion for UdtRate {
    fn window(&self) -> usize {
        self.cwnd.max(2.0 * self.mss) as usize
    }

    fn on_ack(&mut self, now: Time, ack: &AckSample, rtt: &Rtt) {
        self.srtt = rtt.srtt;
        if let Some(c) = ack.capacity {
            // The peer's claim, bounded: a lying receiver could only
            // speed up our increase, never past 100 Gbit/s of "capacity".
            self.capacity = c.min(MAX_CAPACITY);
        }
        if let Some(r) = ack.rate.filter(|r| !r.app_limited).and_then(|r| r.rate()) {
            self.recv_rate = if self.recv_rate == 0.0 {
                r
            } else {
                (7.0 * self.recv_rate + r) / 8.0
            };
        }
        if self.slow_start {
            self.cwnd += ack.acked as f64;
            if self.cwnd > MAX_SLOW_START_PACKETS * self.mss {
                self.end_slow_start();
            }
            return;
        }
        // The flow window: what the receive rate delivers in RTT + SYN.
        self.cwnd = self.recv_rate * (rtt.srtt + SYN) as f64 / 1e9 + INIT_PACKETS * self.mss;
        if now.since(self.last_rc) < SYN {
            return;
        }
        self.last_rc = now;
        if self.loss {
            self.loss = false;
            return;
        }
        // rate += inc packets per SYN.
        self.rate += self.increase() * self.mss * 1e9 / SYN as f64;
    }

    fn on_loss(&mut self, now: Time, sent: Time, _bytes: usize) {
        if self.slow_start {
            // UDT: the first loss ends slow start at the receive rate,
            // without a decrease. The rest of the overshoot's losses
            // belong to the same congestion period; the switch to the
            // measured receive rate has paid for it, so they do not
            // decrease further (UDT4 lets them, up to five times, which
            // halves the rate after every slow start that filled a queue).
            self.end_slow_start();
            self.last_dec = now;
            self.nak_count = 1;
            self.dec_count = MAX_DECREASES;
            return;
        }
        self.loss = true;
        if sent > self.last_dec {
            // A new congestion period.
            self.last_dec_rate = self.rate;
            self.rate /= DECREASE;
            self.avg_nak = (self.avg_nak * 0.875 + f64::from(self.nak_count) * 0.125).ceil();
            self.nak_count = 1;
            self.dec_count = 1;
            self.last_dec = now;
            self.dec_random = ((self.avg_nak * self.random()).ceil() as u32).max(1);
        } else {
            self.nak_count += 1;
            if self.dec_count < MAX_DECREASES && self.nak_count.is_multiple_of(self.dec_random) {
                self.dec_count += 1;
                self.rate /= DECREASE;
                self.last_dec = now;
            }
        }
        self.rate = self.rate.max(self.mss);
    }

    fn pacing_interval(&self, bytes: usize, rtt: &Rtt) -> u64 {
        if self.slow_start || self.rate <= 0.0 {
            // Window-limited: spread the window over the RTT.
            let w = self.window().max(1) as u128;
            return (u128::from(rtt.srtt) * bytes as u128 * 4 / (w * 5)) as u64;
        }
        (bytes as f64 * 1e9 / self.rate) as u64
    }

    fn probe_pairs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: usize = 1000;

    fn ack(acked: usize) -> AckSample {
        AckSample {
            acked,
            ..AckSample::default()
        }
    }

    fn steady(rate: f64, capacity: f64) -> UdtRate {
        let mut c = UdtRate::new(MSS, 7);
        c.slow_start = false;
        c.rate = rate;
        c.last_dec_rate = rate;
        c.capacity = capacity;
        c
    }

    #[test]
    fn slow_start_ends_at_the_first_loss_without_a_decrease() {
        let mut c = UdtRate::new(MSS, 1);
        let rtt = Rtt::default();
        c.on_ack(Time(1), &ack(10 * MSS), &rtt);
        assert_eq!(c.window(), 26 * MSS);
        c.recv_rate = 5e6;
        c.on_loss(Time(2), Time(1), MSS);
        assert!(!c.in_slow_start());
        assert_eq!(c.rate(), 5e6);
    }

    #[test]
    fn increase_follows_spare_capacity() {
        // 1 Gbit/s spare: 10^9 x 1.5e-6 / 1000 = 1.5 packets per SYN.
        let c = steady(0.0, 125e6);
        assert!((c.increase() - 1.5).abs() < 1e-9);
        // 50 Mbit/s spare rounds up to 10^8: 0.15.
        let c = steady(118.75e6, 125e6);
        assert!((c.increase() - 0.15).abs() < 1e-9, "{}", c.increase());
        // No spare: the floor.
        let c = steady(130e6, 125e6);
        assert_eq!(c.increase(), MIN_INC);
    }

    #[test]
    fn one_decrease_per_congestion_period_then_randomised_extra_ones() {
        let mut c = steady(1e8, 2e8);
        c.on_loss(Time(100), Time(50), MSS);
        assert!((c.rate() - 1e8 / 1.125).abs() < 1.0);
        // Reports of packets sent before the decrease: at most 4 more
        // decreases, however many reports come.
        for i in 0..1000 {
            c.on_loss(Time(200 + i), Time(60), MSS);
        }
        let floor = 1e8 / 1.125f64.powi(5);
        assert!(c.rate() >= floor - 1.0, "{} < {floor}", c.rate());
        // A loss of a packet sent after the last decrease: a new period.
        let before = c.rate();
        c.on_loss(Time(5000), Time(4000), MSS);
        assert!((c.rate() - before / 1.125).abs() < 1.0);
    }

    #[test]
    fn rate_changes_once_per_syn_and_not_right_after_a_loss() {
        let rtt = Rtt::default();
        let mut c = steady(1e6, 125e6);
        let r0 = c.rate();
        c.on_ack(Time(SYN), &ack(MSS), &rtt);
        let r1 = c.rate();
        assert!(r1 > r0);
        c.on_ack(Time(SYN + 1), &ack(MSS), &rtt);
        assert_eq!(c.rate(), r1, "twice in one SYN");
        c.on_loss(Time(SYN + 2), Time(SYN + 1), MSS);
        let r2 = c.rate();
        c.on_ack(Time(2 * SYN + 2), &ack(MSS), &rtt);
        assert_eq!(c.rate(), r2, "increase right after a loss");
        c.on_ack(Time(3 * SYN + 2), &ack(MSS), &rtt);
        assert!(c.rate() > r2);
    }
}
