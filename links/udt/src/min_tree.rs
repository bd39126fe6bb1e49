//! A tournament tree of per-connection times: the endpoint's earliest
//! deadline in O(1) and the next connection due to send, in round-robin
//! order, in O(log n).
//!
//! The endpoint used to scan a dense array of every connection's cached
//! times on each `poll_timeout` and `poll_transmit`. A relay in netsim's
//! scale scenario holds about 130 links and is asked after every event,
//! and those two scans took about 10% of the run (perf, 2026-12-07). An
//! update costs one leaf-to-root walk, which stops as soon as a node's
//! minimum does not change.

/// Minima over `len` values, indexed by connection slot.
#[derive(Default)]
pub struct MinTree {
    len: usize,
    /// `nodes[cap + i]` is value `i`; `nodes[k]` is the minimum of
    /// `nodes[2k]` and `nodes[2k + 1]`; `nodes[0]` is unused. `cap` is a
    /// power of two (so leaves are in index order left to right) and unused
    /// leaves hold `u64::MAX`.
    nodes: Vec<u64>,
}

impl MinTree {
    fn cap(&self) -> usize {
        self.nodes.len() / 2
    }

    /// Value `i`.
    pub fn get(&self, i: usize) -> u64 {
        debug_assert!(i < self.len);
        self.nodes[self.cap() + i]
    }

    /// Sets value `i`.
    pub fn set(&mut self, i: usize, v: u64) {
        debug_assert!(i < self.len);
        let mut k = self.cap() + i;
        let old = self.nodes[k];
        if old == v {
            return;
        }
        self.nodes[k] = v;
        if v < old {
            // Lowered (the endpoint's `touch` sets hints to 0): an ancestor
            // takes the new value exactly when its minimum is above it, and
            // the siblings need not be read.
            while k > 1 {
                k /= 2;
                if self.nodes[k] <= v {
                    break;
                }
                self.nodes[k] = v;
            }
            return;
        }
        while k > 1 {
            k /= 2;
            let m = self.nodes[2 * k].min(self.nodes[2 * k + 1]);
            if self.nodes[k] == m {
                break; // unchanged here, so unchanged above
            }
            self.nodes[k] = m;
        }
    }

    /// The smallest value (`u64::MAX` when empty).
    pub fn min(&self) -> u64 {
        self.nodes.get(1).copied().unwrap_or(u64::MAX)
    }

    /// Appends a value.
    pub fn push(&mut self, v: u64) {
        if self.len == self.cap() {
            let mut values = self.values();
            values.push(v);
            self.rebuild(values);
        } else {
            self.len += 1;
            self.set(self.len - 1, v);
        }
    }

    /// Removes value `i`, shifting the later ones down (connections are
    /// removed rarely; the tree is rebuilt).
    pub fn remove(&mut self, i: usize) {
        let mut values = self.values();
        if i < values.len() {
            values.remove(i);
        }
        self.rebuild(values);
    }

    /// The first index at or after `from` whose value is at most `limit`.
    pub fn first_at_most(&self, from: usize, limit: u64) -> Option<usize> {
        if from >= self.len {
            return None;
        }
        let cap = self.cap();
        let mut k = cap + from;
        // Climb until a subtree to the right of (or at) `from` qualifies.
        while self.nodes[k] > limit {
            while k & 1 == 1 {
                if k == 1 {
                    return None;
                }
                k /= 2;
            }
            k += 1;
        }
        // Descend to its leftmost qualifying leaf.
        while k < cap {
            k *= 2;
            if self.nodes[k] > limit {
                k += 1;
            }
        }
        let i = k - cap;
        (i < self.len).then_some(i)
    }

    fn values(&self) -> Vec<u64> {
        let cap = self.cap();
        self.nodes
            .get(cap..cap + self.len)
            .map(<[u64]>::to_vec)
            .unwrap_or_default()
    }

    fn rebuild(&mut self, values: Vec<u64>) {
        let cap = values.len().next_power_of_two().max(8);
        self.len = values.len();
        self.nodes.clear();
        self.nodes.resize(2 * cap, u64::MAX);
        self.nodes[cap..cap + values.len()].copy_from_slice(&values);
        for k in (1..cap).rev() {
            self.nodes[k] = self.nodes[2 * k].min(self.nodes[2 * k + 1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(u64),
        Set(usize, u64),
        Remove(usize),
        Query(usize, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Small values so that ties and `limit` hits are common.
        prop_oneof![
            (0u64..20).prop_map(Op::Push),
            (0usize..40, 0u64..20).prop_map(|(i, v)| Op::Set(i, v)),
            (0usize..40).prop_map(Op::Remove),
            (0usize..45, 0u64..20).prop_map(|(i, v)| Op::Query(i, v)),
        ]
    }

    proptest! {
        /// The tree answers as a plain scan of the same values would.
        #[test]
        fn matches_a_linear_scan(ops in proptest::collection::vec(op(), 1..300)) {
            let mut tree = MinTree::default();
            let mut plain: Vec<u64> = Vec::new();
            for op in ops {
                match op {
                    Op::Push(v) => {
                        tree.push(v);
                        plain.push(v);
                    }
                    Op::Set(i, v) if i < plain.len() => {
                        tree.set(i, v);
                        plain[i] = v;
                    }
                    Op::Remove(i) if i < plain.len() => {
                        tree.remove(i);
                        plain.remove(i);
                    }
                    Op::Query(from, limit) => {
                        let want = (from..plain.len()).find(|&i| plain[i] <= limit);
                        prop_assert_eq!(tree.first_at_most(from, limit), want);
                    }
                    _ => {}
                }
                prop_assert_eq!(tree.min(), plain.iter().copied().min().unwrap_or(u64::MAX));
                for (i, &v) in plain.iter().enumerate() {
                    prop_assert_eq!(tree.get(i), v);
                }
            }
        }
    }

    #[test]
    fn unlimited_query_never_returns_unused_leaves() {
        let mut tree = MinTree::default();
        for v in [5, 9, 7] {
            tree.push(v);
        }
        assert_eq!(tree.first_at_most(2, u64::MAX), Some(2));
        assert_eq!(tree.first_at_most(3, u64::MAX), None);
        assert_eq!(tree.first_at_most(0, 6), Some(0));
        assert_eq!(tree.first_at_most(1, 6), None);
    }
}
