//! Datagram size discovery for one connection (packetization-layer path
//! MTU discovery, RFC 8899's DPLPMTUD, simplified).
//!
//! Why: a datagram carries whole cells, two in the base size of 1,472
//! bytes (a 1,500-byte IPv4 MTU). Every datagram costs a send and receive
//! system call share, an AEAD seal and open, an ACK-tracking entry and a
//! pacing slot, so on paths that carry larger datagrams (loopback, jumbo
//! frames inside a data centre) larger ones cut the link's CPU per byte: a
//! throw-away build with 8,972-byte datagrams ran a loopback relay chain at
//! 0.84-0.88x the CPU per GB (docs/benchmarks.md).
//!
//! How: the sender proves a size before using it. A probe is a DATA packet
//! of exactly the size under test holding only a PING and padding, so
//! losing one loses no cell and is not a congestion signal (probes stay
//! out of the congestion window and of loss recovery). One probe is in
//! flight at a time. An acknowledged probe raises the usable size; a probe
//! is lost once a packet three numbers later is acknowledged or a probe
//! timeout passed, and after [`MAX_PROBES`] losses at one size the search
//! bound drops below it. The first probe tries the ceiling (loopback and
//! jumbo paths pass at once), then the search halves the interval. Sizes
//! that would not add a whole cell to a datagram are not worth a probe, so
//! the search ends when the interval is narrower than one cell frame. It
//! runs again [`RAISE_INTERVAL`] later, as the path may have changed.
//!
//! A path whose MTU shrinks after the search (a route change) would drop
//! every large datagram: a black hole. [`BLACK_HOLE_EPISODES`] loss
//! episodes of large datagrams with no large datagram acknowledged in
//! between send the connection back to the base size, and the search
//! starts again later. Congestion losses do not look like that: the
//! datagrams behind a congestion drop get through and are acknowledged.

use relay_kernel::Time;

use crate::packet::CELL_FRAME_LEN;

/// Losses of a probe size before the search gives up on it (RFC 8899's
/// MAX_PROBES).
pub const MAX_PROBES: u32 = 3;
/// When a finished or reset search runs again (RFC 8899's
/// PMTU_RAISE_TIMER: 600 s).
pub const RAISE_INTERVAL: u64 = 600_000_000_000;
/// Loss episodes of datagrams above the base size, with none of them
/// acknowledged in between, that mean the path no longer carries them.
pub const BLACK_HOLE_EPISODES: u32 = 3;
/// A probe counts as lost once a packet this many numbers later is
/// acknowledged (the packet threshold of loss detection).
const PROBE_REORDER: u64 = 3;

/// The probe in flight.
#[derive(Clone, Copy, Debug)]
struct Probe {
    pn: u64,
    size: usize,
    sent: Time,
}

/// One connection's datagram size search.
#[derive(Debug)]
pub struct PathMtu {
    /// Always usable (`ConnConfig::max_datagram`).
    base: usize,
    /// The largest size tried (`ConnConfig::max_datagram_probe`).
    ceiling: usize,
    /// The largest size confirmed: what datagrams may use.
    current: usize,
    /// No size above this is tried in this search.
    upper: usize,
    probe: Option<Probe>,
    /// Probes of the current candidate lost so far.
    failures: u32,
    /// While the search is idle: when it runs again.
    resume_at: Option<Time>,
    /// Loss episodes of large datagrams since one was last acknowledged.
    black_hole_episodes: u32,
    /// Probes sent, acknowledged and lost; times the size was reset.
    pub stats: MtuStats,
}

/// What the search did, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MtuStats {
    /// Probes sent.
    pub probes: u64,
    /// Probes acknowledged.
    pub acked: u64,
    /// Probes declared lost.
    pub lost: u64,
    /// Returns to the base size after a black hole.
    pub black_holes: u64,
}

impl PathMtu {
    /// A search from `base` up to `ceiling` (no search when `ceiling` is
    /// not above `base`).
    pub fn new(base: usize, ceiling: usize) -> PathMtu {
        let ceiling = ceiling.max(base);
        PathMtu {
            base,
            ceiling,
            current: base,
            upper: ceiling,
            probe: None,
            failures: 0,
            resume_at: None,
            black_hole_episodes: 0,
            stats: MtuStats::default(),
        }
    }

    /// The largest datagram the connection may send now.
    pub fn current(&self) -> usize {
        self.current
    }

    /// The size always usable.
    pub fn base(&self) -> usize {
        self.base
    }

    /// Whether the search has sizes left to try (now or later).
    fn searching(&self) -> bool {
        self.upper >= self.current + CELL_FRAME_LEN
    }

    /// When the next probe is due (possibly already): None while one is
    /// in flight or no size is left to try.
    pub fn next_probe_at(&self) -> Option<Time> {
        if self.probe.is_some() || !self.searching() {
            return None;
        }
        Some(self.resume_at.unwrap_or(Time(0)))
    }

    /// The size of the probe to send now, if one is due.
    pub fn probe_due(&self, now: Time) -> Option<usize> {
        if self.next_probe_at().is_none_or(|t| now < t) {
            return None;
        }
        // The ceiling first; then the middle of what is left.
        Some(if self.upper == self.ceiling {
            self.ceiling
        } else {
            self.current + (self.upper - self.current) / 2
        })
    }

    /// A probe of `size` bytes left as packet `pn`.
    pub fn on_probe_sent(&mut self, now: Time, pn: u64, size: usize) {
        self.probe = Some(Probe {
            pn,
            size,
            sent: now,
        });
        self.stats.probes += 1;
    }

    /// An ACK whose ranges (inclusive, highest first) reach up to
    /// `largest` came at `now`.
    pub fn on_ack(&mut self, now: Time, ranges: &[(u64, u64)], largest: u64) {
        let Some(p) = self.probe else {
            return;
        };
        if crate::sent::covered(ranges, p.pn) {
            self.probe = None;
            self.stats.acked += 1;
            self.failures = 0;
            self.current = self.current.max(p.size);
            self.black_hole_episodes = 0;
            self.settle(now);
        } else if largest >= p.pn.saturating_add(PROBE_REORDER) {
            self.probe_lost(now);
        }
    }

    /// Declares the probe lost if it has waited `pto` without an ACK.
    pub fn on_timer(&mut self, now: Time, pto: u64) {
        if self.probe.is_some_and(|p| now.since(p.sent) >= pto) {
            self.probe_lost(now);
        }
    }

    fn probe_lost(&mut self, now: Time) {
        let Some(p) = self.probe.take() else {
            return;
        };
        self.stats.lost += 1;
        self.failures += 1;
        if self.failures >= MAX_PROBES {
            self.failures = 0;
            self.upper = p.size - 1;
            self.settle(now);
        }
    }

    /// Ends the search for now if no size worth a probe is left.
    fn settle(&mut self, now: Time) {
        if !self.searching() {
            self.resume_at = Some(now.plus_nanos(RAISE_INTERVAL));
            self.upper = self.ceiling;
        }
    }

    /// One ACK's outcome for data packets: whether a datagram above the
    /// base size was acknowledged, and whether one was declared lost.
    /// Returns true when the size fell back to the base (a black hole).
    pub fn on_data_outcome(&mut self, now: Time, large_acked: bool, large_lost: bool) -> bool {
        if large_acked {
            self.black_hole_episodes = 0;
        }
        if !large_lost || self.current == self.base {
            return false;
        }
        self.black_hole_episodes += 1;
        if self.black_hole_episodes < BLACK_HOLE_EPISODES {
            return false;
        }
        self.black_hole_episodes = 0;
        self.stats.black_holes += 1;
        self.current = self.base;
        self.upper = self.ceiling;
        self.failures = 0;
        self.probe = None;
        self.resume_at = Some(now.plus_nanos(RAISE_INTERVAL));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search over a path that carries datagrams of up to `path`
    /// bytes, acknowledging or losing each probe at once.
    fn search(base: usize, ceiling: usize, path: usize) -> PathMtu {
        let mut m = PathMtu::new(base, ceiling);
        let mut now = Time(0);
        let mut pn = 0;
        while let Some(size) = m.probe_due(now) {
            m.on_probe_sent(now, pn, size);
            now = now.plus_nanos(1_000_000);
            if size <= path {
                m.on_ack(now, &[(pn, pn)], pn);
            } else {
                m.on_ack(now, &[(pn + 3, pn + 3)], pn + 3);
            }
            pn += 4;
            assert!(m.stats.probes < 100, "no end: {m:?}");
        }
        m
    }

    #[test]
    fn a_path_that_carries_the_ceiling_takes_one_probe() {
        let m = search(1472, 8972, 65_507);
        assert_eq!(m.current(), 8972);
        assert_eq!(m.stats.probes, 1);
    }

    #[test]
    fn the_search_ends_within_a_cell_of_the_path_limit() {
        for path in [1472, 1500, 2000, 4000, 8000, 8971] {
            let m = search(1472, 8972, path);
            assert!(m.current() <= path, "{path}: {m:?}");
            assert!(path - m.current() < CELL_FRAME_LEN, "{path}: {m:?}");
            // Every size that failed was tried MAX_PROBES times.
            assert_eq!(m.stats.lost % u64::from(MAX_PROBES), 0, "{m:?}");
        }
    }

    #[test]
    fn no_search_without_room_above_the_base() {
        let m = PathMtu::new(1472, 1472);
        assert_eq!(m.probe_due(Time(0)), None);
        let m = PathMtu::new(1472, 1472 + CELL_FRAME_LEN - 1);
        assert_eq!(m.probe_due(Time(0)), None);
    }

    #[test]
    fn a_lost_probe_times_out_and_the_search_resumes_later() {
        let mut m = search(1472, 8972, 1500);
        assert_eq!(m.current(), 1472);
        let later = m.next_probe_at().map(|t| t.nanos());
        assert!(later.is_some());
        // Idle until the raise timer, then from the ceiling again.
        let at = Time(later.unwrap_or(0));
        assert_eq!(m.probe_due(Time(at.nanos() - 1)), None);
        assert_eq!(m.probe_due(at), Some(8972));
        m.on_probe_sent(at, 1000, 8972);
        let lost = m.stats.lost;
        m.on_timer(at.plus_nanos(10), 100);
        assert_eq!(m.stats.lost, lost);
        m.on_timer(at.plus_nanos(200), 100);
        assert_eq!(m.stats.lost, lost + 1);
        // Lost once: the same size goes again.
        assert_eq!(m.probe_due(at.plus_nanos(200)), Some(8972));
    }

    #[test]
    fn large_losses_with_no_large_ack_reset_to_the_base() {
        let mut m = search(1472, 8972, 65_507);
        assert_eq!(m.current(), 8972);
        let now = Time(5_000_000_000);
        // Congestion: losses, but later large datagrams get through.
        for _ in 0..10 {
            assert!(!m.on_data_outcome(now, true, true));
        }
        assert_eq!(m.current(), 8972);
        // A black hole: only losses (the last episode above was its
        // first; an ACK without losses does not end it).
        assert!(!m.on_data_outcome(now, false, true));
        assert!(!m.on_data_outcome(now, false, false));
        assert!(m.on_data_outcome(now, false, true));
        assert_eq!(m.current(), 1472);
        assert_eq!(m.stats.black_holes, 1);
        assert_eq!(m.probe_due(now), None);
        assert_eq!(m.probe_due(now.plus_nanos(RAISE_INTERVAL)), Some(8972));
    }
}
