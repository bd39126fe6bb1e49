//! The event queue: a min-heap ordered by (virtual time, sequence number).
//!
//! The sequence number is assigned at insertion, so events due at the same
//! nanosecond run in the order they were scheduled. Together with a
//! single-threaded loop this makes the run order a function of the inputs
//! alone (no ties broken by memory addresses or hash order).
//!
//! The heap is 4-ary (half the depth of a binary heap, and a node's four
//! children are 64 contiguous bytes) over 16-byte keys: the time, and the
//! sequence number with the index of the event's slot in its low bits. The
//! events themselves stay put in `slots`.

use relay_kernel::Time;

/// Bits of a key's low word that hold the slot index.
const SLOT_BITS: u32 = 28;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// Sequence numbers are renumbered before they outgrow their bits.
const SEQ_LIMIT: u64 = 1 << (64 - SLOT_BITS);

/// (time, sequence << SLOT_BITS | slot): compared as a pair.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key(u64, u64);

/// Pending events.
pub struct EventQueue<E> {
    heap: Vec<Key>,
    slots: Vec<Option<E>>,
    free: Vec<u64>,
    seq: u64,
    scheduled: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            heap: Vec::new(),
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
                if let Some(x) = self.slots.get_mut(s as usize) {
                    *x = Some(event);
                }
                s
            }
            None => {
                self.slots.push(Some(event));
                (self.slots.len() - 1) as u64
            }
        };
        debug_assert!(slot <= SLOT_MASK, "event queue: too many pending events");
        let key = Key(at.nanos(), (self.seq << SLOT_BITS) | (slot & SLOT_MASK));
        // Sift up.
        let mut i = self.heap.len();
        self.heap.push(key);
        while i > 0 {
            let p = (i - 1) / 4;
            if self.heap[p] <= key {
                break;
            }
            self.heap[i] = self.heap[p];
            i = p;
        }
        self.heap[i] = key;
    }

    /// Takes the earliest event.
    pub fn pop(&mut self) -> Option<(Time, E)> {
        let top = *self.heap.first()?;
        let last = self.heap.pop()?;
        let n = self.heap.len();
        if n > 0 {
            // Sift `last` down from the root.
            let mut i = 0;
            loop {
                let c = 4 * i + 1;
                if c >= n {
                    break;
                }
                let end = (c + 4).min(n);
                let mut m = c;
                for j in c + 1..end {
                    if self.heap[j] < self.heap[m] {
                        m = j;
                    }
                }
                if self.heap[m] >= last {
                    break;
                }
                self.heap[i] = self.heap[m];
                i = m;
            }
            self.heap[i] = last;
        }
        let slot = top.1 & SLOT_MASK;
        self.free.push(slot);
        let event = self.slots.get_mut(slot as usize)?.take()?;
        Some((Time(top.0), event))
    }

    /// Gives pending events fresh sequence numbers 1.. in their order (a
    /// sorted array is a valid heap).
    fn renumber(&mut self) {
        self.heap.sort_unstable();
        for (i, k) in self.heap.iter_mut().enumerate() {
            k.1 = ((i as u64 + 1) << SLOT_BITS) | (k.1 & SLOT_MASK);
        }
        self.seq = self.heap.len() as u64 + 1;
    }

    /// When the earliest event is due.
    pub fn peek_time(&self) -> Option<Time> {
        self.heap.first().map(|k| Time(k.0))
    }

    /// Events pending.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
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
