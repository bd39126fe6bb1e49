//! End-to-end congestion control for one circuit direction.
//!
//! The receiving edge sends a SENDME after every [`SENDME_INC`] counted relay
//! cells, echoing the tag of the cell that triggered it (so a receiver cannot
//! acknowledge cells it never got, as in Tor proposal 289). The sender's
//! [`ledger`] checks each echo, counts cells in flight and turns every SENDME
//! into an RTT and a delivery-rate sample; a controller turns the samples
//! into a window and a pacing rate. Two controllers share that ledger:
//!
//! - [`vegas`]: Tor proposal 324's TOR_VEGAS, which reads a rise of the RTT
//!   over its minimum as queueing. It keeps relay queues small. Links
//!   deliver each circuit's cells in order, so after a lost datagram the
//!   circuit's later cells wait for the retransmission on that hop; udt
//!   reports those waits with the cells ([`crate::Cell::reorder_wait_us`])
//!   and the [`ledger`] leaves them out of RTT samples. Unreported, Vegas
//!   read them as queueing and starved on lossy paths (16 Mbit/s of
//!   1 Gbit/s at 1% loss per link in netsim `long-fat`); with them, 80
//!   (the rest: see the module docs of [`vegas`]).
//! - [`bbr`]: a model of the path's bottleneck rate and base RTT in the
//!   manner of BBR (Cardwell et al., 2016). Head-of-line waits do not lower
//!   the delivery rate the model measures, so they cost window, not rate
//!   (555 Mbit/s in netsim long-fat). It builds larger queues at shared
//!   bottlenecks and so slows other circuits' small transfers, so Vegas
//!   stays the default.
//!
//! Neither has a fixed window like Tor's 1000-cell SENDME window; both stop
//! at [`CcParams::cwnd_max`], and relays enforce a per-circuit queue bound
//! above it whatever the sender runs.

pub mod bbr;
mod ledger;
pub mod vegas;

use crate::time::Time;

use bbr::Bbr;
use ledger::Ledger;
use vegas::Vegas;

/// Counted cells per SENDME.
pub const SENDME_INC: u32 = 31;

/// Which controller a circuit end runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CcAlgorithm {
    /// Delay-based (Tor proposal 324). The default: in netsim's quick,
    /// onionperf, churn and web scenarios it finishes 50 KiB to 5 MiB
    /// transfers sooner than BBR (docs/benchmarks.md, "Circuit congestion
    /// control").
    #[default]
    Vegas,
    /// Model-based: bottleneck rate and base RTT. Keeps its rate on lossy
    /// long fat paths, where Vegas reaches a fraction of it.
    Bbr,
}

impl std::str::FromStr for CcAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vegas" => Ok(CcAlgorithm::Vegas),
            "bbr" => Ok(CcAlgorithm::Bbr),
            other => Err(format!(
                "unknown circuit congestion control {other:?} (vegas or bbr)"
            )),
        }
    }
}

/// Congestion-control parameters, in cells.
#[derive(Clone, Copy, Debug)]
pub struct CcParams {
    /// The controller.
    pub algorithm: CcAlgorithm,
    /// Initial window.
    pub cwnd_init: u32,
    /// Smallest window.
    pub cwnd_min: u32,
    /// Largest window: also bounds what any relay queues for the circuit.
    pub cwnd_max: u32,
    /// Vegas: grow in congestion avoidance while the queue estimate is
    /// below this.
    pub alpha: u32,
    /// Vegas: shrink while the queue estimate is above this.
    pub beta: u32,
    /// Vegas: leave slow start when the queue estimate exceeds this.
    pub gamma: u32,
    /// Vegas: cut hard when the queue estimate exceeds this.
    pub delta: u32,
    /// Vegas: the queueing delay (nanoseconds) a circuit may always build
    /// at its own rate: where `alpha` cells are less than this at the
    /// circuit's rate, `alpha`, `beta` and `delta` are scaled up to it (0:
    /// off; `gamma`, the slow-start exit, is never scaled).
    pub queue_floor_ns: u64,
}

impl Default for CcParams {
    fn default() -> Self {
        // Vegas: Tor's exit-side defaults (proposal 324, consensus values of
        // 2023). The window ceiling of 32768 cells is about 16 MB in flight,
        // 1.3 Gbit/s at 100 ms RTT.
        CcParams {
            algorithm: CcAlgorithm::default(),
            cwnd_init: 4 * SENDME_INC,
            cwnd_min: 4 * SENDME_INC,
            cwnd_max: 65536,
            alpha: 186,
            beta: 248,
            gamma: 186,
            delta: 310,
            // Tor's 186 cells are tens of milliseconds of queue at a few
            // MB/s, but a quarter of a millisecond at 3 Gbit/s, less than the
            // batching delay of a fast path's hops (a wake-up and a system
            // call per batch at each). The floor applies only above
            // 46.5 cells per ms (~190 Mbit/s); below that these are Tor's
            // values unchanged. Measured in chainbench (docs/benchmarks.md):
            // 1 ms gave 1.14-1.21x the throughput of no floor; 4 ms gives
            // 1.34-1.37x that of 1 ms over udt links (2 ms: 0.89x of 4 ms)
            // and 0.93-0.95x over tcp links, which batch in the kernel. In
            // netsim only lossless long-fat changes (goodput +6%, p99 hop
            // queueing 1 -> 4 ms).
            queue_floor_ns: 4_000_000,
        }
    }
}

/// Why a SENDME was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendmeError {
    /// More SENDMEs than cells sent.
    #[error("SENDME without cells to acknowledge")]
    Unexpected,
    /// The echoed tag is not the tag of the acknowledged cell.
    #[error("SENDME echoes the wrong tag")]
    WrongTag,
}

/// What one SENDME tells a controller.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ack {
    /// When the SENDME arrived.
    pub now: Time,
    /// Round-trip time of the acknowledged cell and its SENDME, less what
    /// they waited in reordering buffers (nanoseconds, at least 1).
    pub rtt: u64,
    /// The reordering waits left out of `rtt` (nanoseconds): the whole
    /// round trip took `rtt + waited`.
    pub waited: u64,
    /// Cells delivered while the acknowledged cell was in flight, and the
    /// interval they took (nanoseconds): a delivery-rate sample.
    pub delivered: u64,
    pub interval: u64,
    /// Cells delivered in total before the acknowledged cell was sent.
    pub prior_delivered: u64,
    /// Cells delivered in total, this SENDME included.
    pub total_delivered: u64,
    /// The sample was taken while the sender had less data than window:
    /// its rate says what was offered, not what the path can carry.
    pub app_limited: bool,
    /// Cells in flight after this SENDME.
    pub inflight: u32,
}

/// Sender-side state of one circuit end: the ledger plus its controller.
#[derive(Debug)]
pub struct CircuitCc {
    ledger: Ledger,
    controller: Controller,
}

// Inline, not boxed: BBR is the default, so the larger variant is the one
// in use, and a box would cost an allocation per circuit end.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Controller {
    Vegas(Vegas),
    Bbr(Bbr),
}

impl CircuitCc {
    /// A fresh controller of the kind `params` names.
    pub fn new(params: CcParams) -> CircuitCc {
        let controller = match params.algorithm {
            CcAlgorithm::Vegas => Controller::Vegas(Vegas::new(params)),
            CcAlgorithm::Bbr => Controller::Bbr(Bbr::new(params)),
        };
        CircuitCc {
            ledger: Ledger::default(),
            controller,
        }
    }

    /// Whether another counted cell may be sent now.
    pub fn can_send(&self) -> bool {
        self.ledger.inflight() < self.cwnd()
    }

    /// The congestion window, in cells.
    pub fn cwnd(&self) -> u32 {
        match &self.controller {
            Controller::Vegas(v) => v.cwnd(),
            Controller::Bbr(b) => b.cwnd(),
        }
    }

    /// Cells sent and not yet acknowledged.
    pub fn inflight(&self) -> u32 {
        self.ledger.inflight()
    }

    /// Nanoseconds between cells when paced, or None to send as the window
    /// allows.
    pub fn pacing_interval(&self) -> Option<u64> {
        match &self.controller {
            Controller::Vegas(v) => v.pacing_interval(),
            Controller::Bbr(b) => b.pacing_interval(),
        }
    }

    /// Smallest RTT seen, in nanoseconds.
    pub fn min_rtt(&self) -> Option<u64> {
        match &self.controller {
            Controller::Vegas(v) => v.min_rtt(),
            Controller::Bbr(b) => b.min_rtt(),
        }
    }

    /// The controller's estimate of the path's rate, in cells per second
    /// (BBR only).
    pub fn bandwidth(&self) -> Option<u64> {
        match &self.controller {
            Controller::Vegas(_) => None,
            Controller::Bbr(b) => b.bandwidth(),
        }
    }

    /// Records a counted cell sent at `now` whose destination tag is `tag`.
    pub fn on_send(&mut self, now: Time, tag: [u8; 16]) {
        self.ledger.on_send(now, tag);
    }

    /// The sender could send but had nothing to send: rate samples of the
    /// cells now in flight are marked application-limited.
    pub fn on_app_limited(&mut self) {
        self.ledger.on_app_limited();
    }

    /// Handles a SENDME with body `body` (see [`sendme_body`]), received
    /// at `now` in a cell that waited `own_wait_us` in reordering buffers.
    pub fn on_sendme(
        &mut self,
        now: Time,
        body: &[u8],
        own_wait_us: u32,
    ) -> Result<(), SendmeError> {
        let ack = self.ledger.on_sendme(now, body, own_wait_us)?;
        match &mut self.controller {
            Controller::Vegas(v) => v.on_ack(&ack),
            Controller::Bbr(b) => b.on_ack(&ack),
        }
        Ok(())
    }
}

/// Bytes of a SENDME body: the echoed tag, then the reordering wait of the
/// acknowledged cell.
pub const SENDME_BODY_LEN: usize = 20;

/// A SENDME body: the 16-byte `tag` of the cell that triggered it, then
/// the microseconds that cell waited in links' reordering buffers on its
/// way ([`crate::Cell::reorder_wait_us`]), big-endian.
pub fn sendme_body(tag: &[u8; 16], forward_wait_us: u32) -> [u8; SENDME_BODY_LEN] {
    let mut body = [0; SENDME_BODY_LEN];
    body[..16].copy_from_slice(tag);
    body[16..].copy_from_slice(&forward_wait_us.to_be_bytes());
    body
}

/// The reordering wait a SENDME body reports (0 for a bare 16-byte echo).
fn sendme_forward_wait_us(body: &[u8]) -> u32 {
    match body.get(16..SENDME_BODY_LEN) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
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
pub(crate) mod testing {
    //! A one-flow path model for the controllers' unit tests: a FIFO
    //! bottleneck of `rate` cells per millisecond and a fixed base RTT,
    //! cells sent as the window and pacing allow, a SENDME per SENDME_INC
    //! cells, each SENDME optionally held longer (head-of-line waits), and
    //! those waits optionally reported as links report reordering waits.

    use std::collections::VecDeque;

    use super::*;

    pub struct PathSim {
        pub now: Time,
        per_cell: u64,
        base_rtt: u64,
        next_send: Time,
        link_free: Time,
        /// SENDME arrival times, and what each waited past its base time.
        acks: VecDeque<(Time, u64)>,
        last_ack: Time,
        seq: u64,
        /// The SENDMEs report their waits (as a udt link's reordering
        /// buffers would) instead of only arriving later.
        pub report_waits: bool,
    }

    impl PathSim {
        pub fn new(rate_per_ms: u64, base_rtt_ms: u64) -> PathSim {
            PathSim {
                now: Time(0),
                per_cell: 1_000_000 / rate_per_ms,
                base_rtt: base_rtt_ms * 1_000_000,
                next_send: Time(0),
                link_free: Time(0),
                acks: VecDeque::new(),
                last_ack: Time(0),
                seq: 0,
                report_waits: false,
            }
        }

        /// Runs `cc` for `ms` milliseconds and returns the cells
        /// acknowledged and the largest bottleneck queue seen, in cells.
        /// `extra_delay(n)` adds nanoseconds to the SENDME of cell n.
        pub fn run(
            &mut self,
            cc: &mut CircuitCc,
            ms: u64,
            extra_delay: &dyn Fn(u64) -> u64,
        ) -> Result<(u64, u64), SendmeError> {
            let step = 10_000; // 10 us
            let end = self.now.plus_nanos(ms * 1_000_000);
            let (mut delivered, mut max_queue) = (0, 0);
            while self.now < end {
                let now = self.now;
                while let Some(&(_, wait)) = self.acks.front().filter(|(t, _)| *t <= now) {
                    self.acks.pop_front();
                    let own_wait_us = if self.report_waits {
                        (wait / 1000) as u32
                    } else {
                        0
                    };
                    cc.on_sendme(now, &[1; 16], own_wait_us)?;
                    delivered += u64::from(SENDME_INC);
                }
                while cc.can_send() && self.next_send <= now {
                    cc.on_send(now, [1; 16]);
                    self.seq += 1;
                    let start = self.link_free.max(now);
                    self.link_free = start.plus_nanos(self.per_cell);
                    max_queue = max_queue.max(self.link_free.since(now) / self.per_cell);
                    if self.seq.is_multiple_of(u64::from(SENDME_INC)) {
                        let due = self.link_free.plus_nanos(self.base_rtt);
                        let t = due.plus_nanos(extra_delay(self.seq));
                        // SENDMEs arrive in order: a held one holds the
                        // later ones too.
                        let t = t.max(self.last_ack);
                        self.last_ack = t;
                        self.acks.push_back((t, t.since(due)));
                    }
                    if let Some(i) = cc.pacing_interval() {
                        // At most 1 ms of unused pacing credit.
                        let floor = Time(now.nanos().saturating_sub(1_000_000));
                        self.next_send = self.next_send.max(floor).plus_nanos(i);
                    }
                }
                self.now = now.plus_nanos(step);
            }
            Ok((delivered, max_queue))
        }
    }
}

#[cfg(test)]
mod hostile_sendme_tests {
    //! SENDME timing and content come from the far end of the circuit:
    //! whatever it does, the controllers neither panic nor leave their
    //! bounds, and the ledger's count stays exact.

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Step {
        Send(u16),
        Sendme {
            right_tag: bool,
            forward_wait_us: u32,
            own_wait_us: u32,
        },
        AppLimited,
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1u16..200).prop_map(Step::Send),
            // Reported waits from none to absurd (the far end and the
            // relays report them).
            (
                any::<bool>(),
                any::<u32>(),
                prop_oneof![Just(0u32), any::<u32>()]
            )
                .prop_map(|(right_tag, forward_wait_us, own_wait_us)| Step::Sendme {
                    right_tag,
                    forward_wait_us,
                    own_wait_us,
                }),
            Just(Step::AppLimited),
            // From nothing to 20 s, so ProbeRtt and filter ageing happen.
            (0u64..20_000_000_000).prop_map(Step::Wait),
        ]
    }

    proptest! {
        #[test]
        fn any_sendme_sequence_keeps_the_controllers_sane(
            steps in proptest::collection::vec(step(), 1..400),
            bbr in any::<bool>(),
        ) {
            let params = CcParams {
                algorithm: if bbr { CcAlgorithm::Bbr } else { CcAlgorithm::Vegas },
                ..CcParams::default()
            };
            let mut cc = CircuitCc::new(params);
            let mut now = Time(0);
            let (mut sent, mut acked) = (0u64, 0u64);
            for s in steps {
                match s {
                    Step::Send(n) => {
                        for _ in 0..n {
                            cc.on_send(now, [9; 16]);
                            sent += 1;
                        }
                    }
                    Step::Sendme { right_tag, forward_wait_us, own_wait_us } => {
                        let tag = if right_tag { [9; 16] } else { [8; 16] };
                        let body = sendme_body(&tag, forward_wait_us);
                        let due = sent / u64::from(SENDME_INC) > acked;
                        match cc.on_sendme(now, &body, own_wait_us) {
                            Ok(()) => {
                                prop_assert!(due && right_tag);
                                acked += 1;
                            }
                            Err(SendmeError::Unexpected) => prop_assert!(!due),
                            Err(SendmeError::WrongTag) => prop_assert!(due && !right_tag),
                        }
                    }
                    Step::AppLimited => cc.on_app_limited(),
                    Step::Wait(ns) => now = now.plus_nanos(ns),
                }
                let cwnd = cc.cwnd();
                prop_assert!((params.cwnd_min..=params.cwnd_max).contains(&cwnd), "{cwnd}");
                let expect = sent - acked * u64::from(SENDME_INC);
                prop_assert_eq!(u64::from(cc.inflight()), expect);
                if let Some(i) = cc.pacing_interval() {
                    prop_assert!(i < u64::MAX);
                }
            }
        }
    }
}
