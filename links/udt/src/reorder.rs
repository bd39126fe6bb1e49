//! When an unacknowledged packet counts as lost: the reordering
//! thresholds, and how they adapt when a retransmission proves spurious.
//!
//! A packet is lost once a packet `packets` numbers later is acknowledged
//! (the packet threshold, 3 at first as in TCP and QUIC), or once it is
//! older than `time_eighths / 8` of the RTT when a later packet was
//! acknowledged (the time threshold, 9/8 at first as in QUIC and RACK).
//!
//! A path that reorders by more than that makes every reordered packet
//! look lost: its cells are sent twice and the congestion controller
//! backs off for nothing. So every packet declared lost is remembered
//! for a while; when an ACK later covers one of them, the original did
//! arrive and the retransmission was spurious (the receiver's ranges are
//! what it got, not what we resent: resent cells travel under new packet
//! numbers). Then, as Linux does with its reordering metric and RACK
//! with its reordering window:
//!
//! - a packet declared lost by the packet threshold raises the threshold
//!   to the reordering it saw plus one (up to [`MAX_PACKETS`]);
//! - a packet declared lost by the time threshold raises that by an
//!   eighth of the RTT (up to twice the RTT).
//!
//! Both decay back towards the defaults, by a quarter of the excess,
//! after [`QUIET_EPISODES`] loss declarations in a row without a
//! spurious one, so a path that stopped reordering recovers its fast
//! loss detection. Real losses are still caught by the time threshold
//! while the packet threshold is high.

use std::collections::BTreeMap;

/// The default packet threshold.
pub const DEFAULT_PACKETS: u64 = 3;
/// The default time threshold, eighths of the RTT.
pub const DEFAULT_TIME_EIGHTHS: u64 = 9;
/// Highest packet threshold.
pub const MAX_PACKETS: u64 = 1024;
/// Highest time threshold, eighths of the RTT.
const MAX_TIME_EIGHTHS: u64 = 16;
/// Declared losses remembered for the spurious check.
const REMEMBERED: usize = 4096;
/// Loss declarations without a spurious one before the thresholds decay.
pub const QUIET_EPISODES: u32 = 16;

struct Declared {
    /// How far below the largest acknowledged packet it was.
    distance: u64,
    /// Declared by the time threshold (not the packet threshold).
    by_time: bool,
    cells: u32,
}

/// Loss-detection thresholds of one connection.
pub struct Reordering {
    adaptive: bool,
    packets: u64,
    time_eighths: u64,
    declared: BTreeMap<u64, Declared>,
    quiet: u32,
    /// Packets declared lost that arrived after all.
    pub spurious_packets: u64,
    /// Cells those packets carried (sent twice for nothing).
    pub spurious_cells: u64,
}

impl Reordering {
    /// Thresholds at their defaults; `adaptive` false keeps them there
    /// (spurious retransmissions are still counted).
    pub fn new(adaptive: bool) -> Reordering {
        Reordering {
            adaptive,
            packets: DEFAULT_PACKETS,
            time_eighths: DEFAULT_TIME_EIGHTHS,
            declared: BTreeMap::new(),
            quiet: 0,
            spurious_packets: 0,
            spurious_cells: 0,
        }
    }

    /// The packet threshold.
    pub fn packet_threshold(&self) -> u64 {
        self.packets
    }

    /// The time threshold for an RTT of `rtt` ns.
    pub fn time_threshold(&self, rtt: u64) -> u64 {
        rtt.saturating_mul(self.time_eighths) / 8
    }

    /// Whether packet `pn`, sent `age` ns ago, is lost now that `largest`
    /// is acknowledged (`pn < largest`). Returns the reason: `Some(true)`
    /// by time, `Some(false)` by packets.
    pub fn lost(&self, largest: u64, pn: u64, age: u64, rtt: u64) -> Option<bool> {
        if largest.saturating_sub(pn) >= self.packets {
            Some(false)
        } else if age > self.time_threshold(rtt) {
            Some(true)
        } else {
            None
        }
    }

    /// Packet `pn` carrying `cells` cells was declared lost while `largest`
    /// was the largest acknowledged.
    pub fn declared_lost(&mut self, pn: u64, largest: u64, by_time: bool, cells: usize) {
        if self.declared.len() >= REMEMBERED {
            self.declared.pop_first();
        }
        self.declared.insert(
            pn,
            Declared {
                distance: largest.saturating_sub(pn),
                by_time,
                cells: cells.min(u32::MAX as usize) as u32,
            },
        );
        self.quiet += 1;
        if self.adaptive && self.quiet >= QUIET_EPISODES {
            self.quiet = 0;
            self.packets -= (self.packets - DEFAULT_PACKETS) / 4;
            self.time_eighths -= (self.time_eighths - DEFAULT_TIME_EIGHTHS) / 4;
        }
    }

    /// An ACK covers `lo..=hi`: any of those declared lost was not.
    pub fn acked(&mut self, lo: u64, hi: u64) {
        if self.declared.is_empty() {
            return;
        }
        while let Some((&pn, _)) = self.declared.range(lo..=hi).next() {
            let Some(d) = self.declared.remove(&pn) else {
                break;
            };
            self.spurious_packets += 1;
            self.spurious_cells += u64::from(d.cells);
            self.quiet = 0;
            if !self.adaptive {
                continue;
            }
            if d.by_time {
                self.time_eighths = (self.time_eighths + 1).min(MAX_TIME_EIGHTHS);
            } else {
                self.packets = self.packets.max(d.distance + 1).min(MAX_PACKETS);
            }
        }
    }

    /// Forgets declared losses below `pn` (their ACK ranges are gone).
    pub fn forget_below(&mut self, pn: u64) {
        while self
            .declared
            .first_key_value()
            .is_some_and(|(&k, _)| k < pn)
        {
            self.declared.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spurious_loss_raises_the_packet_threshold_to_the_reordering_seen() {
        let mut r = Reordering::new(true);
        assert_eq!(r.lost(10, 6, 0, 1000), Some(false));
        r.declared_lost(6, 10, false, 2);
        r.acked(5, 7);
        assert_eq!((r.spurious_packets, r.spurious_cells), (1, 2));
        assert_eq!(r.packet_threshold(), 5);
        assert_eq!(r.lost(10, 6, 0, 1000), None);
        // Acknowledged again: counted once.
        r.acked(5, 7);
        assert_eq!(r.spurious_packets, 1);
    }

    #[test]
    fn a_spurious_time_loss_widens_the_time_window() {
        let mut r = Reordering::new(true);
        assert_eq!(r.lost(10, 9, 1200, 1000), Some(true));
        r.declared_lost(9, 10, true, 1);
        r.acked(9, 9);
        assert_eq!(r.time_threshold(800), 1000);
        assert_eq!(r.lost(10, 9, 1200, 1000), None);
    }

    #[test]
    fn thresholds_decay_without_spurious_losses_and_stay_fixed_when_not_adaptive() {
        let mut r = Reordering::new(true);
        r.declared_lost(0, 100, false, 1);
        r.acked(0, 0);
        assert_eq!(r.packet_threshold(), 101);
        for pn in 1..=QUIET_EPISODES as u64 {
            r.declared_lost(pn * 1000, pn * 1000 + 200, false, 1);
        }
        assert_eq!(r.packet_threshold(), 101 - 98 / 4);
        let mut fixed = Reordering::new(false);
        fixed.declared_lost(0, 100, false, 1);
        fixed.acked(0, 0);
        assert_eq!(fixed.packet_threshold(), DEFAULT_PACKETS);
        assert_eq!(fixed.spurious_packets, 1);
    }
}
