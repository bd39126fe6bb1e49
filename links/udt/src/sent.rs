//! The sender's record of packets in flight, by packet number.
//!
//! Packet numbers only grow, so the record is a ring indexed by
//! `pn - base` (a `VecDeque` of slots, emptied ones trimmed from the
//! front) instead of an ordered map: insert, look-up and removal are O(1)
//! and allocate nothing in steady state (the `BTreeMap` it replaced cost
//! 3-5% of udt's CPU on loopback in rebalancing and node moves).
//!
//! An ACK reports *all* received ranges, most of them acknowledged long
//! ago, so visiting every slot an ACK covers would cost the whole window
//! per ACK. Instead the record remembers how far ACKs have been scanned:
//! the slots above that mark are visited once, when an ACK first covers
//! them, and every packet below it that is still outstanding is listed in
//! `holes` (ascending). Those are the only packets an ACK can still
//! acknowledge below the mark, and exactly the candidates for loss
//! detection, which takes them from the front.

use std::collections::VecDeque;

use relay_kernel::Time;

use crate::copies::Slot;

use crate::cc::rate::TxState;

/// Slots an empty record keeps allocated.
const SPARE_SLOTS: usize = 64;

/// One packet in flight.
pub struct Sent {
    /// When it was sent.
    pub time: Time,
    /// Its size on the wire.
    pub bytes: usize,
    /// The cells it carries: their circuit sequence numbers and the slots
    /// of their copies.
    pub cells: Vec<(u32, Slot)>,
    /// The delivery state when it left.
    pub tx: TxState,
}

/// Packets in flight.
#[derive(Default)]
pub struct InFlight {
    /// Packet number of `slots[0]`.
    base: u64,
    slots: VecDeque<Option<Sent>>,
    count: usize,
    /// Every packet number below this was scanned by an ACK.
    scanned: u64,
    /// Outstanding packets below `scanned`, ascending.
    holes: VecDeque<u64>,
}

/// Whether `pn` lies in one of `ranges` (inclusive, highest first, not
/// overlapping).
pub(crate) fn covered(ranges: &[(u64, u64)], pn: u64) -> bool {
    let i = ranges.partition_point(|&(lo, _)| lo > pn);
    ranges.get(i).is_some_and(|&(_, hi)| pn <= hi)
}

impl InFlight {
    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Records packet `pn`, newer than every packet recorded before.
    pub fn insert(&mut self, pn: u64, sent: Sent) {
        if self.count == 0 {
            // Nothing in flight: start over at `pn`, and give back the
            // room a past burst left (a relay has many idle connections).
            self.slots.clear();
            self.slots.shrink_to(SPARE_SLOTS);
            self.base = pn;
        }
        let Some(gap) = pn.checked_sub(self.base + self.slots.len() as u64) else {
            return; // not newer: a caller bug, ignored
        };
        for _ in 0..gap {
            self.slots.push_back(None);
        }
        self.slots.push_back(Some(sent));
        self.count += 1;
    }

    /// Packet `pn`, if in flight.
    pub fn get(&self, pn: u64) -> Option<&Sent> {
        let i = usize::try_from(pn.checked_sub(self.base)?).ok()?;
        self.slots.get(i)?.as_ref()
    }

    /// The oldest packet in flight.
    pub fn oldest(&self) -> Option<u64> {
        (self.count > 0).then_some(self.base)
    }

    fn take(&mut self, pn: u64) -> Option<Sent> {
        let i = usize::try_from(pn.checked_sub(self.base)?).ok()?;
        let s = self.slots.get_mut(i)?.take()?;
        self.count -= 1;
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
        Some(s)
    }

    /// Removes packet `pn` (declared lost or probed).
    pub fn remove(&mut self, pn: u64) -> Option<Sent> {
        let s = self.take(pn)?;
        if pn < self.scanned {
            if let Ok(i) = self.holes.binary_search(&pn) {
                self.holes.remove(i);
            }
        }
        Some(s)
    }

    /// Takes every packet in flight that `ranges` (highest first) covers,
    /// calling `f` for each.
    pub fn acknowledge(&mut self, ranges: &[(u64, u64)], mut f: impl FnMut(u64, Sent)) {
        let Some(&(_, top)) = ranges.first() else {
            return;
        };
        // Below the mark only the holes can be newly acknowledged.
        let mut i = 0;
        while i < self.holes.len() {
            let pn = self.holes[i];
            if covered(ranges, pn) {
                self.holes.remove(i);
                if let Some(s) = self.take(pn) {
                    f(pn, s);
                }
            } else {
                i += 1;
            }
        }
        // Above it, every slot once.
        if top >= self.scanned {
            let mut pn = self.scanned.max(self.base);
            let end = top.min((self.base + self.slots.len() as u64).saturating_sub(1));
            while self.count > 0 && pn <= end {
                if self.get(pn).is_some() {
                    if covered(ranges, pn) {
                        if let Some(s) = self.take(pn) {
                            f(pn, s);
                        }
                    } else {
                        self.holes.push_back(pn);
                    }
                }
                pn += 1;
            }
            // Never past the newest packet recorded: a peer acknowledging
            // numbers never sent must not hide later packets from scans.
            let ring_end = self.base + self.slots.len() as u64;
            self.scanned = self.scanned.max(top.saturating_add(1).min(ring_end));
        }
    }

    /// Outstanding packets below the newest acknowledged one, oldest
    /// first: the candidates for loss.
    pub fn holes(&self) -> impl Iterator<Item = u64> + '_ {
        self.holes.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cc::rate::RateSampler;

    fn sent(t: u64) -> Sent {
        let mut r = RateSampler::new(Time(0));
        Sent {
            time: Time(t),
            bytes: 100,
            cells: Vec::new(),
            tx: r.on_send(Time(t), 0),
        }
    }

    #[test]
    fn acknowledging_numbers_never_sent_changes_nothing_later() {
        let mut ring = InFlight::default();
        ring.insert(0, sent(0));
        let mut n = 0;
        ring.acknowledge(&[(0, u64::MAX)], |_, _| n += 1);
        assert_eq!(n, 1);
        ring.insert(5, sent(5));
        ring.insert(6, sent(6));
        ring.acknowledge(&[(6, 6)], |_, _| n += 1);
        assert_eq!(n, 2);
        assert_eq!(ring.holes().collect::<Vec<_>>(), [5]);
        ring.acknowledge(&[(5, 6)], |_, _| n += 1);
        assert_eq!((n, ring.oldest()), (3, None));
    }

    /// The ring against a reference model under random sends, ACKs of
    /// random ranges (with reordering and old ranges repeated) and
    /// removals.
    #[test]
    fn matches_a_map_under_random_acks() {
        use std::collections::BTreeMap;
        let mut seed = 0x1234_5678u64;
        let mut rand = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n.max(1)
        };
        let mut ring = InFlight::default();
        let mut model: BTreeMap<u64, u64> = BTreeMap::new();
        let mut received: Vec<u64> = Vec::new();
        let mut pn = 0u64;
        for _ in 0..20_000 {
            match rand(10) {
                0..=4 => {
                    pn += 1 + rand(3); // some numbers carry no recorded packet
                    ring.insert(pn, sent(pn));
                    model.insert(pn, pn);
                }
                5..=7 => {
                    // The receiver got a random recent packet.
                    received.push(pn.saturating_sub(rand(40)));
                    received.sort_unstable();
                    received.dedup();
                    let mut ranges: Vec<(u64, u64)> = Vec::new();
                    for &r in received.iter().rev() {
                        match ranges.last_mut() {
                            Some(last) if last.0 == r + 1 => last.0 = r,
                            _ => ranges.push((r, r)),
                        }
                    }
                    let mut acked = Vec::new();
                    ring.acknowledge(&ranges, |p, s| {
                        assert_eq!(s.time, Time(p));
                        acked.push(p);
                    });
                    acked.sort_unstable();
                    let want: Vec<u64> = model
                        .keys()
                        .copied()
                        .filter(|p| covered(&ranges, *p))
                        .collect();
                    assert_eq!(acked, want);
                    for p in want {
                        model.remove(&p);
                    }
                }
                _ => {
                    // Loss detection takes the oldest hole.
                    let first = ring.holes().next();
                    if let Some(h) = first {
                        assert!(ring.remove(h).is_some());
                        assert!(model.remove(&h).is_some());
                    }
                }
            }
            assert_eq!(ring.count, model.len());
            assert_eq!(ring.oldest(), model.keys().next().copied());
            // Holes: outstanding and below the scan mark, in order.
            let holes: Vec<u64> = ring.holes().collect();
            let want: Vec<u64> = model
                .keys()
                .copied()
                .filter(|p| *p < ring.scanned)
                .collect();
            assert_eq!(holes, want);
        }
    }
}
