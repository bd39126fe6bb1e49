//! The descriptors a node knows: learned from neighbours' LinkInfo cells and
//! from trackers' lists. Only verified (decoded) descriptors get here, and
//! stale ones are never handed out, so a `rand` hop is always a node that
//! signed a current descriptor.

use std::collections::HashMap;

use relay_kernel::NodeId;

use crate::descriptor::Descriptor;

/// Known descriptors by node id.
#[derive(Default)]
pub struct Directory {
    nodes: HashMap<NodeId, Descriptor>,
}

/// Most descriptors kept (a flood of valid-but-useless descriptors from a
/// hostile tracker cannot grow memory without bound).
const MAX_NODES: usize = 10_000;

impl Directory {
    /// Keeps `d` if it is fresh and newer than what is known. Returns whether
    /// anything changed.
    pub fn insert(&mut self, d: Descriptor, now: u64) -> bool {
        if !d.is_fresh(now) {
            return false;
        }
        let id = d.node_id();
        if let Some(old) = self.nodes.get(&id) {
            if old.published >= d.published {
                return false;
            }
        } else if self.nodes.len() >= MAX_NODES {
            self.prune(now);
            if self.nodes.len() >= MAX_NODES {
                return false;
            }
        }
        self.nodes.insert(id, d);
        true
    }

    /// The descriptor of `id` if it is still fresh.
    pub fn get(&self, id: &NodeId, now: u64) -> Option<&Descriptor> {
        self.nodes.get(id).filter(|d| d.is_fresh(now))
    }

    /// Every fresh descriptor, in node-id order.
    pub fn fresh(&self, now: u64) -> Vec<Descriptor> {
        let mut v: Vec<Descriptor> = self
            .nodes
            .values()
            .filter(|d| d.is_fresh(now))
            .cloned()
            .collect();
        v.sort_by_key(|d| d.node_id().0);
        v
    }

    /// Forgets stale descriptors.
    pub fn prune(&mut self, now: u64) {
        self.nodes.retain(|_, d| d.is_fresh(now));
    }

    /// How many are known (fresh or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether none is known.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_link::{Identity, LinkAddr};

    fn desc(id: &Identity, published: u64, expires: u64) -> Descriptor {
        Descriptor::sign(
            id,
            [9; 32],
            vec![LinkAddr::parse("udt://127.0.0.1:9001").unwrap()],
            published,
            expires,
            true,
            false,
        )
    }

    #[test]
    fn keeps_fresh_newest_descriptors_only() {
        let now = 1_000_000;
        let a = Identity::from_secret([1; 32]);
        let b = Identity::from_secret([2; 32]);
        let mut dir = Directory::default();
        assert!(dir.insert(desc(&a, now - 10, now + 100), now));
        // Older or equal publication: ignored.
        assert!(!dir.insert(desc(&a, now - 20, now + 500), now));
        // Newer: replaces.
        assert!(dir.insert(desc(&a, now - 5, now + 50), now));
        assert_eq!(dir.get(&a.node_id(), now).unwrap().expires, now + 50);
        // Stale on arrival: refused.
        assert!(!dir.insert(desc(&b, now - 100, now - 1), now));
        assert!(dir.get(&b.node_id(), now).is_none());
        // Expiry hides it, prune drops it.
        assert_eq!(dir.fresh(now).len(), 1);
        assert!(dir.get(&a.node_id(), now + 60).is_none());
        assert!(dir.fresh(now + 60).is_empty());
        dir.prune(now + 60);
        assert!(dir.is_empty());
    }
}
