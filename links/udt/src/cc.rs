//! Congestion control for udt links behind one trait, plus the RTT
//! estimator.
//!
//! Three controllers, chosen per connection by [`CongestionKind`] in
//! `ConnConfig`:
//!
//! - [`Cubic`] (RFC 9438), loss-based: every loss episode cuts the window
//!   by 30%, so on a path with random (non-congestion) loss it settles
//!   near Reno's `1.22 MSS / (RTT sqrt(p))`;
//! - [`bbr::Bbr`] (the default), model-based in the spirit of BBR: it
//!   estimates the
//!   bottleneck bandwidth (windowed max of per-ACK delivery-rate samples,
//!   [`rate`]) and the minimum RTT, paces at a gain times the bandwidth and
//!   bounds the bytes in flight at twice their product plus an allowance
//!   for ACKs that arrive in batches. Random loss does
//!   not move it; only a round trip losing over 5% of its packets bounds
//!   its window (BBRv2-style);
//! - [`udt::UdtRate`], UDT's rate-based DAIMD: the rate changes once per
//!   10 ms, up by an amount set by the spare capacity (packet-pair
//!   estimate of the bottleneck minus the current rate), down by 1/9 on a
//!   loss event, with UDT's limits on repeated decreases.
//!
//! The connection feeds the controller an [`AckSample`] per ACK (bytes
//! acknowledged, the delivery-rate sample, bytes in flight, the RTT sample)
//! and the bytes of each batch of packets declared lost; the controller
//! gives back the window and the pacing interval.

pub mod bbr;
pub mod rate;
pub mod udt;

use relay_kernel::Time;
use relay_link::transport::TAG_LEN;

pub use rate::RateSample;

/// Which congestion controller a connection runs. BBR by default: on
/// random loss it keeps its rate where CUBIC collapses, and in netsim's
/// onionperf, web, churn and scale scenarios transfers of 1 MiB and more
/// finish sooner over it (docs/benchmarks.md, "Which controller is udt's
/// default").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CongestionKind {
    /// CUBIC with pacing at 1.25 x window / RTT.
    Cubic,
    /// The BBR-style model ([`bbr::Bbr`]).
    #[default]
    Bbr,
    /// UDT's rate-based scheme ([`udt::UdtRate`]).
    UdtRate,
}

impl CongestionKind {
    /// A controller of this kind for datagrams of up to `max_datagram`
    /// bytes; `seed` gives it its (deterministic) randomness.
    pub fn build(self, max_datagram: usize, seed: u64) -> Box<dyn Congestion> {
        match self {
            CongestionKind::Cubic => Box::new(Cubic::new(
                max_datagram.saturating_sub(crate::packet::DATA_HEADER + TAG_LEN),
            )),
            CongestionKind::Bbr => Box::new(bbr::Bbr::new(max_datagram, seed)),
            CongestionKind::UdtRate => Box::new(udt::UdtRate::new(max_datagram, seed)),
        }
    }
}

impl std::str::FromStr for CongestionKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cubic" => Ok(CongestionKind::Cubic),
            "bbr" => Ok(CongestionKind::Bbr),
            "udt" => Ok(CongestionKind::UdtRate),
            _ => Err(format!(
                "congestion control must be cubic, bbr or udt, not {s}"
            )),
        }
    }
}

impl std::fmt::Display for CongestionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CongestionKind::Cubic => "cubic",
            CongestionKind::Bbr => "bbr",
            CongestionKind::UdtRate => "udt",
        })
    }
}

/// What one ACK told the sender.
#[derive(Clone, Copy, Debug, Default)]
pub struct AckSample {
    /// Bytes newly acknowledged.
    pub acked: usize,
    /// Bytes in flight before the ACK.
    pub prior_in_flight: usize,
    /// Bytes in flight after it (before loss detection).
    pub in_flight: usize,
    /// Bytes delivered over the connection's life, this ACK included.
    pub delivered: u64,
    /// The delivery-rate sample of the newest packet acknowledged.
    pub rate: Option<RateSample>,
    /// The RTT sample of this ACK (ACK delay removed), if it gave one.
    pub rtt: Option<u64>,
    /// The bottleneck capacity the receiver last estimated from packet
    /// pairs, bytes per second (only senders that send pairs get one).
    pub capacity: Option<f64>,
}

/// Smoothed RTT state (RFC 9002 style), in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Rtt {
    /// Smoothed RTT.
    pub srtt: u64,
    /// RTT variation.
    pub rttvar: u64,
    /// Smallest sample.
    pub min: u64,
    /// Latest sample.
    pub latest: u64,
    has_sample: bool,
}

impl Default for Rtt {
    fn default() -> Self {
        // 100 ms before the first sample (RFC 9002 uses 333 ms; links here
        // are usually faster and the handshake gives a sample at once).
        Rtt {
            srtt: 100_000_000,
            rttvar: 50_000_000,
            min: u64::MAX,
            latest: 100_000_000,
            has_sample: false,
        }
    }
}

impl Rtt {
    /// Adds a sample (already corrected for the peer's ACK delay).
    pub fn sample(&mut self, rtt: u64) {
        let rtt = rtt.max(1);
        self.latest = rtt;
        self.min = self.min.min(rtt);
        if !self.has_sample {
            self.srtt = rtt;
            self.rttvar = rtt / 2;
            self.has_sample = true;
        } else {
            let diff = self.srtt.abs_diff(rtt);
            self.rttvar = (3 * self.rttvar + diff) / 4;
            self.srtt = (7 * self.srtt + rtt) / 8;
        }
    }

    /// Probe timeout: srtt + 4 rttvar, at least 2 ms.
    pub fn pto(&self) -> u64 {
        (self.srtt + 4 * self.rttvar).max(2_000_000)
    }
}

/// A congestion controller.
pub trait Congestion: Send {
    /// Bytes that may be in flight.
    fn window(&self) -> usize;
    /// An ACK acknowledged new data.
    fn on_ack(&mut self, now: Time, ack: &AckSample, rtt: &Rtt);
    /// Packets of `bytes` in all, the newest sent at `sent`, were declared
    /// lost (a loss-based controller reduces once per round trip).
    fn on_loss(&mut self, now: Time, sent: Time, bytes: usize);
    /// Pacing interval for a datagram of `bytes`, in nanoseconds.
    fn pacing_interval(&self, bytes: usize, rtt: &Rtt) -> u64 {
        // Pace at 1.25 × window per smoothed RTT.
        let w = self.window().max(1) as u128;
        (u128::from(rtt.srtt) * bytes as u128 * 4 / (w * 5)) as u64
    }
    /// Whether the sender should send packet pairs (every 16th data
    /// packet and the next back to back, the second marked) so that the
    /// receiver estimates the bottleneck capacity.
    fn probe_pairs(&self) -> bool {
        false
    }
}

/// CUBIC (RFC 9438).
pub struct Cubic {
    mss: f64,
    cwnd: f64,
    ssthresh: f64,
    w_max: f64,
    k: f64,
    epoch: Option<Time>,
    recovery_start: Time,
    /// Reno-friendly estimate (RFC 9438 4.3).
    w_est: f64,
}

const C: f64 = 0.4;
const BETA: f64 = 0.7;

impl Cubic {
    /// A controller for datagrams of `mss` bytes, starting at 10 of them.
    pub fn new(mss: usize) -> Cubic {
        let mss = mss as f64;
        Cubic {
            mss,
            cwnd: 10.0 * mss,
            ssthresh: f64::INFINITY,
            w_max: 0.0,
            k: 0.0,
            epoch: None,
            recovery_start: Time(0),
            w_est: 0.0,
        }
    }
}

impl Congestion for Cubic {
    fn window(&self) -> usize {
        self.cwnd as usize
    }

    fn on_ack(&mut self, now: Time, ack: &AckSample, rtt: &Rtt) {
        let bytes = ack.acked as f64;
        if self.cwnd < self.ssthresh {
            self.cwnd += bytes;
            return;
        }
        let epoch = *self.epoch.get_or_insert_with(|| {
            self.w_est = self.cwnd;
            now
        });
        if self.w_max < self.cwnd {
            self.w_max = self.cwnd;
            self.k = 0.0;
        }
        let t = now.since(epoch) as f64 / 1e9 + rtt.srtt as f64 / 1e9;
        let w_max = self.w_max / self.mss;
        let w_cubic = (C * (t - self.k).powi(3) + w_max) * self.mss;
        self.w_est += 3.0 * (1.0 - BETA) / (1.0 + BETA) * bytes / self.cwnd * self.mss;
        let target = w_cubic.max(self.w_est).min(1.5 * self.cwnd);
        if target > self.cwnd {
            self.cwnd += (target - self.cwnd) / self.cwnd * bytes;
        } else {
            self.cwnd += bytes / (100.0 * self.cwnd) * self.mss;
        }
    }

    fn on_loss(&mut self, now: Time, sent: Time, _bytes: usize) {
        if sent < self.recovery_start {
            return;
        }
        self.recovery_start = now;
        self.w_max = self.cwnd;
        self.cwnd = (self.cwnd * BETA).max(2.0 * self.mss);
        self.ssthresh = self.cwnd;
        self.k = (self.w_max / self.mss * (1.0 - BETA) / C).cbrt();
        self.epoch = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(bytes: usize) -> AckSample {
        AckSample {
            acked: bytes,
            ..AckSample::default()
        }
    }

    #[test]
    fn slow_start_then_multiplicative_decrease_then_regrowth() {
        let mut c = Cubic::new(1000);
        let rtt = Rtt::default();
        let w0 = c.window();
        c.on_ack(Time(1), &acked(10_000), &rtt);
        assert_eq!(c.window(), w0 + 10_000);
        c.on_loss(Time(2), Time(1), 1000);
        let after = c.window();
        assert_eq!(after, ((w0 + 10_000) as f64 * BETA) as usize);
        // A second loss from before the reduction is the same event.
        c.on_loss(Time(3), Time(1), 1000);
        assert_eq!(c.window(), after);
        let mut now = Time(3);
        for _ in 0..2000 {
            now = now.plus_nanos(1_000_000);
            c.on_ack(now, &acked(1000), &rtt);
        }
        assert!(c.window() > after);
    }
}
