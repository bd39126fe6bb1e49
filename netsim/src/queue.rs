//! The event queue: a min-heap ordered by (virtual time, sequence number).
//!
//! The sequence number is assigned at insertion, so events due at the same
//! nanosecond run in the order they were scheduled. Together with a
//! single-threaded loop this makes the run order a function of the inputs
//! alone (no ties broken by memory addresses or hash order).
//!
//! The heap is 4-ary (half the depth of a binary heap, and a node's four
//! children are 64 contiguous bytes) over 128-bit keys: the time in the
//! high word, and the sequence number with the index of the event's slot
//! in its low bits. The events themselves stay put in `slots`.
//!
//! Sifting down picks the least of four children with selects rather than
//! branches, as a tournament of fixed shape. With keys whose order is
//! random, a branchy search of the children mispredicts about every other
//! comparison; the select form made a pop-and-push 0.45x as costly in a
//! hold-model benchmark of 7,000 pending events (the scale run's size).
//! It needs all four children to exist, so the heap array always ends in
//! [`PAD`] keys that compare above everything and are never selected.

use relay_kernel::Time;

/// Bits of a key's low word that hold the slot index.
const SLOT_BITS: u32 = 28;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// Sequence numbers are renumbered before they outgrow their bits.
const SEQ_LIMIT: u64 = 1 << (64 - SLOT_BITS);
/// Keys past the last event: enough that every child group of a node in
/// the heap is complete.
const PAD: usize = 3;
/// The padding key (above any real key: a real key's slot is below
/// `SLOT_MASK`, see `push`).
const NONE: u128 = u128::MAX;

/// `time << 64 | sequence << SLOT_BITS | slot`: the pair (time,
/// sequence) compared as one number.
fn key(at: Time, seq: u64, slot: u64) -> u128 {
    (u128::from(at.nanos()) << 64) | u128::from((seq << SLOT_BITS) | (slot & SLOT_MASK))
}

fn time_of(key: u128) -> Time {
    Time((key >> 64) as u64)
}

fn slot_of(key: u128) -> usize {
    (key as u64 & SLOT_MASK) as usize
}

/// An event's place, one cache line: the slot of a popped event was
/// scheduled long before (a path's latency ago, thousands of events), so
/// it is rarely in cache, and an unaligned 64-byte event (the simulator's)
/// would cost two misses instead of one.
#[repr(align(64))]
struct Slot<E>(Option<E>);

/// Pending events.
pub struct EventQueue<E> {
    /// `len` keys in heap order, then `PAD` or more `NONE`.
    heap: Vec<u128>,
    len: usize,
    slots: Vec<Slot<E>>,
    free: Vec<usize>,
    seq: u64,
    scheduled: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            heap: vec![NONE; PAD],
            len: 0,
            slots: Vec::new(),
            free: Vec::new(),
            seq: 0,
            scheduled: 0,
        }
    }
}

impl<E> EventQueue<E> {
    /// Schedules `event` at `at`.
    pub fn push(&mut self, at: Time, event: E) {
        self.scheduled += 1;
        self.seq += 1;
        if self.seq >= SEQ_LIMIT {
            self.renumber();
        }
        let slot = match self.free.pop() {
            Some(s) => {
                if let Some(x) = self.slots.get_mut(s) {
                    x.0 = Some(event);
                }
                s
            }
            None => {
                self.slots.push(Slot(Some(event)));
                self.slots.len() - 1
            }
        };
        // A slot index of SLOT_MASK could make a key equal to NONE.
        debug_assert!(
            slot < SLOT_MASK as usize,
            "event queue: too many pending events"
        );
        let key = key(at, self.seq, slot as u64);
        let mut i = self.len;
        self.len += 1;
        if self.heap.len() < self.len + PAD {
            self.heap.push(NONE);
        }
        // Sift up (new events are mostly later than most: short).
        while i > 0 {
            let p = (i - 1) / 4;
            let parent = self.heap[p];
            if parent <= key {
                break;
            }
            self.heap[i] = parent;
            i = p;
        }
        self.heap[i] = key;
    }

    /// Takes the earliest event.
    pub fn pop(&mut self) -> Option<(Time, E)> {
        if self.len == 0 {
            return None;
        }
        let top = self.heap[0];
        self.len -= 1;
        let n = self.len;
        let last = std::mem::replace(&mut self.heap[n], NONE);
        if n > 0 {
            // Sift `last` down from the root.
            let mut i = 0;
            loop {
                let c = 4 * i + 1;
                if c >= n {
                    break;
                }
                // Complete thanks to the padding (c < n, and PAD = 3).
                let Some(&[a, b, d, e]) = self.heap.get(c..c + 4) else {
                    break;
                };
                let (m1, j1) = if b < a { (b, c + 1) } else { (a, c) };
                let (m2, j2) = if e < d { (e, c + 3) } else { (d, c + 2) };
                let (m, j) = if m2 < m1 { (m2, j2) } else { (m1, j1) };
                if m >= last {
                    break;
                }
                self.heap[i] = m;
                i = j;
            }
            self.heap[i] = last;
        }
        let slot = slot_of(top);
        self.free.push(slot);
        let event = self.slots.get_mut(slot)?.0.take()?;
        Some((time_of(top), event))
    }

    /// Gives pending events fresh sequence numbers 1.. in their order (a
    /// sorted array is a valid heap, and the padding sorts last).
    fn renumber(&mut self) {
        self.heap.sort_unstable();
        for (i, k) in self.heap[..self.len].iter_mut().enumerate() {
            *k = key(time_of(*k), i as u64 + 1, slot_of(*k) as u64);
        }
        self.seq = self.len as u64 + 1;
    }

    /// When the earliest event is due.
    pub fn peek_time(&self) -> Option<Time> {
        (self.len > 0).then(|| time_of(self.heap[0]))
    }

    /// Events pending.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Events scheduled so far.
    pub fn scheduled(&self) -> u64 {
        self.scheduled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_fifo_on_ties() {
        let mut q = EventQueue::default();
        q.push(Time(5), "b");
        q.push(Time(1), "a");
        q.push(Time(5), "c");
        q.push(Time(3), "x");
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(
            order,
            vec![
                (Time(1), "a"),
                (Time(3), "x"),
                (Time(5), "b"),
                (Time(5), "c")
            ]
        );
    }

    /// Against a sorted reference: random times with many ties, pops
    /// interleaved with pushes, and sequence renumbering on the way.
    #[test]
    fn matches_a_sorted_reference() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut q = EventQueue::default();
        let mut reference: Vec<(u64, u64, u32)> = Vec::new();
        let mut seq = 0u64;
        let mut now = 0u64;
        for round in 0..20_000u32 {
            if round == 10_000 {
                // Force a renumbering with events pending.
                q.seq = SEQ_LIMIT - 1;
            }
            for _ in 0..rng.gen_range(0..4) {
                let at = now + rng.gen_range(0..50);
                seq += 1;
                q.push(Time(at), round);
                reference.push((at, seq, round));
            }
            for _ in 0..rng.gen_range(0..4) {
                reference.sort_unstable();
                let want = (!reference.is_empty()).then(|| reference.remove(0));
                let got = q.pop();
                assert_eq!(got, want.map(|(at, _, ev)| (Time(at), ev)));
                if let Some((at, _, _)) = want {
                    now = at;
                }
            }
            assert_eq!(q.len(), reference.len());
        }
    }
}
