//! Cell-delay probes on chosen directed links (the `hol` measurement).
//!
//! A probe timestamps every cell as the sending host hands it to its link
//! core and again as the receiving host's link core releases it to the
//! node, matching cells per wire circuit id in order (both link kinds keep
//! per-circuit order). The network tells the probe which circuits each lost
//! datagram carried, so delays can be split into cells whose own circuit
//! lost something around their time in flight ("dirty") and cells of
//! circuits that lost nothing ("clean"): on a link with cross-circuit
//! head-of-line blocking the clean cells still wait for other circuits'
//! retransmissions; with per-circuit ordering they should not.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use relay_kernel::Time;

use crate::stats::Histogram;

/// One probed link direction.
#[derive(Default)]
pub struct Probe {
    /// Name from the scenario.
    pub name: String,
    sent: BTreeMap<u32, VecDeque<Time>>,
    drops: BTreeMap<u32, Vec<Time>>,
    /// Delays of every cell.
    pub all: Histogram,
    /// Delays of cells whose circuit lost nothing while they were on the way.
    pub clean: Histogram,
    /// Delays of the other cells.
    pub dirty: Histogram,
    /// Datagrams lost on the link.
    pub lost_datagrams: u64,
}

/// All probes of a run, keyed by (sender address, receiver address).
#[derive(Default)]
pub struct Probes {
    by_pair: BTreeMap<(SocketAddr, SocketAddr), usize>,
    /// The probes.
    pub list: Vec<Probe>,
}

impl Probes {
    /// Adds a probe on the link from `from` to `to`.
    pub fn add(&mut self, name: String, from: SocketAddr, to: SocketAddr) {
        self.by_pair.insert((from, to), self.list.len());
        self.list.push(Probe {
            name,
            ..Probe::default()
        });
    }

    /// The probe on `from -> to`, if any.
    pub fn index(&self, from: SocketAddr, to: SocketAddr) -> Option<usize> {
        if self.list.is_empty() {
            return None;
        }
        self.by_pair.get(&(from, to)).copied()
    }

    /// A cell of `circ` entered the sender's link core.
    pub fn queued(&mut self, probe: usize, now: Time, circ: u32) {
        if let Some(p) = self.list.get_mut(probe) {
            p.sent.entry(circ).or_default().push_back(now);
        }
    }

    /// A datagram carrying cells of `circuits` was lost at `now`.
    pub fn lost(&mut self, probe: usize, now: Time, circuits: &[u32]) {
        if let Some(p) = self.list.get_mut(probe) {
            p.lost_datagrams += 1;
            for c in circuits {
                p.drops.entry(*c).or_default().push(now);
            }
        }
    }

    /// A cell of `circ` left the receiver's link core.
    pub fn delivered(&mut self, probe: usize, now: Time, circ: u32) {
        let Some(p) = self.list.get_mut(probe) else {
            return;
        };
        let Some(queued) = p.sent.get_mut(&circ).and_then(|q| q.pop_front()) else {
            return;
        };
        let delay = now.since(queued);
        p.all.record(delay);
        let dirty = p.drops.get(&circ).is_some_and(|d| {
            let i = d.partition_point(|t| *t < queued);
            d.get(i).is_some_and(|t| *t <= now)
        });
        if dirty {
            p.dirty.record(delay);
        } else {
            p.clean.record(delay);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_split_by_their_own_circuits_losses() {
        let a: SocketAddr = "10.0.0.1:9000".parse().unwrap_or_else(|_| unreachable!());
        let b: SocketAddr = "10.0.0.2:9000".parse().unwrap_or_else(|_| unreachable!());
        let mut p = Probes::default();
        p.add("x".into(), a, b);
        let i = p.index(a, b).unwrap_or(usize::MAX);
        assert_eq!(i, 0);
        assert_eq!(p.index(b, a), None);
        p.queued(i, Time(0), 1);
        p.queued(i, Time(0), 2);
        p.lost(i, Time(5), &[1]);
        p.delivered(i, Time(100), 2);
        p.delivered(i, Time(300), 1);
        assert_eq!(p.list[0].clean.count(), 1);
        assert_eq!(p.list[0].clean.max(), 100);
        assert_eq!(p.list[0].dirty.max(), 300);
    }
}
