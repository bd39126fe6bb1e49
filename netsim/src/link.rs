//! The link model: what happens to a datagram between two simulated hosts.
//!
//! A datagram from host A to host B crosses up to three stages:
//! A's uplink (a [`Bottleneck`]: bandwidth, serialization delay, bounded
//! drop-tail queue), the A->B [`Path`] (an optional pair bottleneck of its
//! own, then propagation latency with jitter, random or Gilbert-Elliott
//! loss, duplication, reordering, an MTU), and B's downlink (another
//! bottleneck). Stages are FIFO and computed analytically: a datagram's
//! departure time is known when it enters a bottleneck, so the simulator
//! needs at most two events per datagram (arrival at B's downlink, and
//! delivery). All randomness comes from the path's own RNG stream.

use std::collections::VecDeque;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use relay_kernel::Time;
use serde::Deserialize;

use crate::stats::Histogram;

/// How a bottleneck's queue drops: at the tail when full, or CoDel.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Aqm {
    /// Drop only what does not fit.
    #[default]
    Droptail,
    /// CoDel (RFC 8289) in front of the drop-tail limit.
    Codel,
}

/// RFC 8289's defaults: the acceptable standing queue delay and the
/// window over which it must persist before CoDel drops.
const CODEL_TARGET: u64 = 5_000_000;
const CODEL_INTERVAL: u64 = 100_000_000;
/// A queue of at most one full-size datagram is never "standing".
const CODEL_MAX_PACKET: usize = 1500;

/// CoDel's state (RFC 8289 section 5), run at each datagram's dequeue.
///
/// The bottleneck is FIFO with a known rate, so a datagram's dequeue time
/// (when its serialization starts) and its sojourn time are known the
/// moment it arrives, and datagrams dequeue in arrival order. The state
/// machine can therefore run at admission, on (dequeue time, sojourn) in
/// dequeue order, exactly as it would run at dequeue; a dropped datagram
/// takes no serialization time, so the next one dequeues at the same
/// instant (the RFC's drop loop). The one approximation: "at most one
/// packet queued" looks at the bytes ahead of the datagram when it
/// arrived, not those behind it when it leaves.
#[derive(Debug, Default)]
struct CoDel {
    first_above: Option<Time>,
    drop_next: Time,
    count: u32,
    lastcount: u32,
    dropping: bool,
}

impl CoDel {
    fn control_law(t: Time, count: u32) -> Time {
        t.plus_nanos((CODEL_INTERVAL as f64 / f64::from(count.max(1)).sqrt()) as u64)
    }

    /// Whether the sojourn has stayed above target for an interval.
    fn ok_to_drop(&mut self, now: Time, sojourn: u64, ahead: usize) -> bool {
        if sojourn < CODEL_TARGET || ahead <= CODEL_MAX_PACKET {
            self.first_above = None;
            return false;
        }
        match self.first_above {
            None => {
                self.first_above = Some(now.plus_nanos(CODEL_INTERVAL));
                false
            }
            Some(t) => now >= t,
        }
    }

    /// Whether the datagram dequeued at `now` after waiting `sojourn` is
    /// dropped.
    fn drop(&mut self, now: Time, sojourn: u64, ahead: usize) -> bool {
        let ok = self.ok_to_drop(now, sojourn, ahead);
        if self.dropping {
            if !ok {
                self.dropping = false;
                return false;
            }
            if now >= self.drop_next {
                self.count += 1;
                self.drop_next = Self::control_law(self.drop_next, self.count);
                return true;
            }
            return false;
        }
        if !ok {
            return false;
        }
        self.dropping = true;
        // Resume near the last drop rate if we were dropping recently.
        let delta = self.count.saturating_sub(self.lastcount);
        self.count = if delta > 1 && now.since(self.drop_next) < 16 * CODEL_INTERVAL {
            delta
        } else {
            1
        };
        self.drop_next = Self::control_law(now, self.count);
        self.lastcount = self.count;
        true
    }
}

/// A FIFO serialization stage with a bounded drop-tail queue, optionally
/// managed by CoDel.
#[derive(Debug)]
pub struct Bottleneck {
    /// Bytes per second; 0 means unlimited (no serialization delay).
    pub rate: u64,
    /// Most bytes queued (waiting or being serialized).
    pub queue_limit: usize,
    busy_until: Time,
    backlog: VecDeque<(Time, usize)>,
    backlog_bytes: usize,
    /// Bytes that left the stage.
    pub bytes: u64,
    /// Datagrams that left.
    pub packets: u64,
    /// Datagrams dropped because the queue was full, or by CoDel.
    pub dropped: u64,
    /// Of those, dropped by CoDel.
    pub aqm_dropped: u64,
    codel: Option<CoDel>,
    /// Time spent waiting before serialization starts, per datagram.
    pub queue_delay: Histogram,
    /// First and last departure (for throughput).
    pub first_start: Option<Time>,
    /// End of the last serialization.
    pub last_end: Time,
}

impl Bottleneck {
    /// A stage of `rate` bytes/s holding at most `queue_limit` bytes.
    pub fn new(rate: u64, queue_limit: usize) -> Bottleneck {
        Bottleneck {
            rate,
            queue_limit,
            busy_until: Time(0),
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            bytes: 0,
            packets: 0,
            dropped: 0,
            aqm_dropped: 0,
            codel: None,
            queue_delay: Histogram::default(),
            first_start: None,
            last_end: Time(0),
        }
    }

    /// The same stage with `aqm` managing its queue.
    pub fn with_aqm(mut self, aqm: Aqm) -> Bottleneck {
        self.codel = (aqm == Aqm::Codel).then(CoDel::default);
        self
    }

    /// Whether the stage delays anything.
    pub fn limited(&self) -> bool {
        self.rate > 0
    }

    /// A datagram of `len` bytes arrives at `now` (arrivals must come in
    /// time order). Returns when its last bit leaves, or None if the queue
    /// is full.
    pub fn admit(&mut self, now: Time, len: usize) -> Option<Time> {
        if self.rate == 0 {
            self.bytes += len as u64;
            self.packets += 1;
            return Some(now);
        }
        while self.backlog.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, b)) = self.backlog.pop_front() {
                self.backlog_bytes -= b;
            }
        }
        if self.backlog_bytes + len > self.queue_limit {
            self.dropped += 1;
            return None;
        }
        let start = self.busy_until.max(now);
        if let Some(c) = &mut self.codel {
            if c.drop(start, start.since(now), self.backlog_bytes) {
                // It holds its place in the buffer until it would have
                // left, then goes without being sent.
                self.backlog.push_back((start, len));
                self.backlog_bytes += len;
                self.dropped += 1;
                self.aqm_dropped += 1;
                return None;
            }
        }
        self.queue_delay.record(start.since(now));
        let ser = serialization_ns(len, self.rate);
        self.busy_until = start.plus_nanos(ser.max(1));
        self.backlog.push_back((self.busy_until, len));
        self.backlog_bytes += len;
        self.bytes += len as u64;
        self.packets += 1;
        self.first_start.get_or_insert(start);
        self.last_end = self.busy_until;
        Some(self.busy_until)
    }

    /// The largest queueing delay the configuration allows (ns).
    pub fn max_queue_delay(&self) -> u64 {
        if self.rate == 0 {
            0
        } else {
            (self.queue_limit as u128 * 1_000_000_000 / u128::from(self.rate)) as u64
        }
    }
}

/// Nanoseconds to send `len` bytes at `rate` bytes/s (rounded down). In
/// 64 bits when the product fits, as it does for any datagram: a 128-bit
/// division is a library call, and this runs once per datagram per
/// bottleneck.
fn serialization_ns(len: usize, rate: u64) -> u64 {
    match (len as u64).checked_mul(1_000_000_000) {
        Some(n) => n / rate.max(1),
        None => (len as u128 * 1_000_000_000 / u128::from(rate.max(1))) as u64,
    }
}

/// Gilbert-Elliott bursty loss: a two-state Markov chain stepped once per
/// datagram.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GilbertElliott {
    /// P(good -> bad) per datagram.
    pub p: f64,
    /// P(bad -> good) per datagram.
    pub r: f64,
    /// Loss probability in the good state.
    #[serde(default)]
    pub loss_good: f64,
    /// Loss probability in the bad state.
    #[serde(default = "one")]
    pub loss_bad: f64,
}

fn one() -> f64 {
    1.0
}

impl GilbertElliott {
    /// Long-run loss rate.
    pub fn mean_loss(&self) -> f64 {
        let pi_bad = self.p / (self.p + self.r);
        pi_bad * self.loss_bad + (1.0 - pi_bad) * self.loss_good
    }
}

/// Impairments of one host-to-host path (one direction).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PathModel {
    /// One-way propagation delay (ns).
    pub latency: u64,
    /// Extra delay, uniform in 0..=jitter (ns); order is kept.
    pub jitter: u64,
    /// Independent loss probability per datagram.
    pub loss: f64,
    /// Bursty loss (replaces `loss` when set).
    pub gilbert: Option<GilbertElliott>,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability a datagram is held back by up to `reorder_delay`.
    pub reorder: f64,
    /// Largest extra delay of a reordered datagram (ns).
    pub reorder_delay: u64,
    /// Largest datagram on the wire, IP header included (bytes).
    pub mtu: usize,
    /// Pair bottleneck: bytes/s (0: none) and its queue.
    pub rate: u64,
    /// Queue of the pair bottleneck (bytes).
    pub queue: usize,
    /// Its queue management.
    pub aqm: Aqm,
}

impl Default for PathModel {
    fn default() -> Self {
        PathModel {
            latency: 10_000_000,
            jitter: 0,
            loss: 0.0,
            gilbert: None,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: 0,
            mtu: 1500,
            rate: 0,
            queue: 1 << 20,
            aqm: Aqm::Droptail,
        }
    }
}

/// What the path did with a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Arrives at the far end at this time (and a duplicate, maybe).
    Arrives(Time, Option<Time>),
    /// Lost on the path (random or bursty loss).
    Lost,
    /// Dropped by the pair bottleneck's full queue.
    QueueFull,
    /// Larger than the MTU.
    TooBig,
}

/// One direction of a host pair, with its RNG and counters.
pub struct Path {
    /// The model.
    pub model: PathModel,
    rng: ChaCha8Rng,
    bad: bool,
    last_arrival: Time,
    /// The pair bottleneck, if the model has one.
    pub bottleneck: Bottleneck,
    /// Datagrams offered to the path.
    pub offered: u64,
    /// Datagrams lost to random or bursty loss.
    pub lost: u64,
    /// Datagrams dropped as too big.
    pub too_big: u64,
    /// Duplicates made.
    pub duplicated: u64,
    /// Datagrams held back for reordering.
    pub reordered: u64,
}

impl Path {
    /// A path with its own RNG stream.
    pub fn new(model: PathModel, rng: ChaCha8Rng) -> Path {
        Path {
            bottleneck: Bottleneck::new(model.rate, model.queue).with_aqm(model.aqm),
            model,
            rng,
            bad: false,
            last_arrival: Time(0),
            offered: 0,
            lost: 0,
            too_big: 0,
            duplicated: 0,
            reordered: 0,
        }
    }

    fn coin(&mut self, p: f64) -> bool {
        p > 0.0 && (p >= 1.0 || self.rng.gen_bool(p))
    }

    /// A datagram of `len` wire bytes enters the path at `now` (in time
    /// order: it left the sender's uplink then).
    pub fn carry(&mut self, now: Time, len: usize) -> Fate {
        self.offered += 1;
        if len > self.model.mtu {
            self.too_big += 1;
            return Fate::TooBig;
        }
        let Some(left) = self.bottleneck.admit(now, len) else {
            return Fate::QueueFull;
        };
        let lose = match self.model.gilbert {
            Some(ge) => {
                self.bad = if self.bad {
                    !self.coin(ge.r)
                } else {
                    self.coin(ge.p)
                };
                let p = if self.bad { ge.loss_bad } else { ge.loss_good };
                self.coin(p)
            }
            None => self.coin(self.model.loss),
        };
        if lose {
            self.lost += 1;
            return Fate::Lost;
        }
        let jitter = if self.model.jitter > 0 {
            self.rng.gen_range(0..=self.model.jitter)
        } else {
            0
        };
        let mut at = left.plus_nanos(self.model.latency + jitter);
        if self.coin(self.model.reorder) && self.model.reorder_delay > 0 {
            self.reordered += 1;
            at = at.plus_nanos(self.rng.gen_range(1..=self.model.reorder_delay));
        } else {
            // Jitter alone does not reorder: a FIFO path.
            at = at.max(self.last_arrival);
            self.last_arrival = at;
        }
        let dup = if self.coin(self.model.duplicate) {
            self.duplicated += 1;
            Some(at.plus_nanos(self.rng.gen_range(0..=100_000)))
        } else {
            None
        };
        Fate::Arrives(at, dup)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn codel_drops_after_an_interval_above_target_then_faster() {
        let ms = |x: u64| Time(x * 1_000_000);
        let mut c = CoDel::default();
        // Below the 5 ms target: never.
        assert!((0..200).all(|i| !c.drop(ms(i), 4_000_000, 10_000)));
        // Above it from 200 ms on: the first drop once that has lasted an
        // interval (100 ms), then at interval / sqrt(count) after the last
        // scheduled drop: +100, +70.7, +57.7, +50 ms.
        let drops: Vec<u64> = (200..700)
            .filter(|&i| c.drop(ms(i), 20_000_000, 10_000))
            .collect();
        assert_eq!(drops[..5], [300, 400, 471, 529, 579]);
        // A datagram below target ends the dropping state ...
        assert!(!c.drop(ms(700), 1_000_000, 10_000));
        // ... and so does a queue of at most one datagram ahead.
        let mut d = CoDel::default();
        assert!((0..300).all(|i| !d.drop(ms(i), 20_000_000, 1500)));
    }

    #[test]
    fn codel_bottleneck_drops_instead_of_queueing() {
        // 1 MB/s, 1000-byte datagrams every 0.5 ms (twice the rate) for 1 s:
        // drop-tail lets the delay climb to the limit; CoDel starts dropping
        // a little past its interval, and a dropped datagram costs no
        // serialization time.
        let mut tail = Bottleneck::new(1_000_000, 1 << 20);
        let mut codel = Bottleneck::new(1_000_000, 1 << 20).with_aqm(Aqm::Codel);
        for i in 0..2000u64 {
            let now = Time(i * 500_000);
            tail.admit(now, 1000);
            codel.admit(now, 1000);
        }
        assert_eq!(tail.dropped, 0);
        assert!(codel.aqm_dropped > 0 && codel.dropped == codel.aqm_dropped);
        assert!(codel.queue_delay.max() < tail.queue_delay.max());
        assert_eq!(codel.packets + codel.dropped, 2000);
    }
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn bottleneck_serializes_and_drops_at_the_tail() {
        // 1000 bytes/s, 3000-byte queue: 1000-byte datagrams take 1 s each.
        let mut b = Bottleneck::new(1000, 3000);
        assert_eq!(b.admit(Time(0), 1000), Some(Time::from_secs(1)));
        assert_eq!(b.admit(Time(0), 1000), Some(Time::from_secs(2)));
        assert_eq!(b.admit(Time(0), 1000), Some(Time::from_secs(3)));
        assert_eq!(b.admit(Time(0), 1000), None);
        assert_eq!(b.dropped, 1);
        // After the first left there is room again.
        assert_eq!(b.admit(Time::from_secs(1), 1000), Some(Time::from_secs(4)));
        assert!(b.queue_delay.max() <= b.max_queue_delay());
    }

    #[test]
    fn path_keeps_order_under_jitter_and_enforces_mtu() {
        let model = PathModel {
            jitter: 5_000_000,
            mtu: 1000,
            ..PathModel::default()
        };
        let mut p = Path::new(model, ChaCha8Rng::seed_from_u64(1));
        assert_eq!(p.carry(Time(0), 1001), Fate::TooBig);
        let mut last = Time(0);
        for i in 0..1000 {
            let fate = p.carry(Time(i * 1000), 500);
            let Fate::Arrives(t, None) = fate else {
                unreachable!("{fate:?}")
            };
            assert!(t >= last);
            last = t;
        }
    }

    #[test]
    fn gilbert_elliott_mean_loss() {
        let ge = GilbertElliott {
            p: 0.01,
            r: 0.3,
            loss_good: 0.0,
            loss_bad: 0.8,
        };
        let model = PathModel {
            gilbert: Some(ge),
            ..PathModel::default()
        };
        let mut p = Path::new(model, ChaCha8Rng::seed_from_u64(2));
        let n = 200_000;
        for i in 0..n {
            p.carry(Time(i), 100);
        }
        let measured = p.lost as f64 / n as f64;
        assert!(
            (measured - ge.mean_loss()).abs() < 0.15 * ge.mean_loss(),
            "{measured} vs {}",
            ge.mean_loss()
        );
    }
}
