//! The simulated network: every host's access bottlenecks, the lazily
//! created paths between host pairs, and scheduled partitions.
//!
//! Paths are created on first use with an RNG stream derived from the
//! (sender, receiver) pair, so the random fate of a datagram on one path
//! never depends on traffic elsewhere.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use relay_kernel::Time;

use crate::link::{Bottleneck, Path, PathModel};
use crate::rng::{model_stream, Purpose};

/// A time window during which a set of hosts is cut off from the rest.
#[derive(Clone, Debug)]
pub struct Partition {
    /// Hosts on the inside (sorted).
    pub hosts: Vec<usize>,
    /// Start.
    pub from: Time,
    /// End.
    pub until: Time,
}

/// All links of a run.
pub struct Network {
    seed: u64,
    /// Upload bottleneck per host.
    pub up: Vec<Bottleneck>,
    /// Download bottleneck per host.
    pub down: Vec<Bottleneck>,
    /// One-way latency from each host to the core (ns).
    pub host_latency: Vec<u64>,
    /// Defaults for pairs without overrides.
    pub default_path: PathModel,
    /// Per-pair models (directed).
    pub overrides: BTreeMap<(usize, usize), PathModel>,
    /// Live paths (directed), in creation order; `pairs` and `index` find
    /// them by (sender, receiver).
    path_list: Vec<Path>,
    /// Path positions by pair, ordered (for reports).
    pairs: BTreeMap<(usize, usize), usize>,
    /// Path positions by pair, for the per-datagram lookup (never iterated,
    /// so hash order cannot leak into a run).
    index: HashMap<u64, usize, BuildHasherDefault<PairHasher>>,
    /// Partitions.
    pub partitions: Vec<Partition>,
    /// Datagrams dropped by partitions.
    pub partitioned: u64,
}

impl Network {
    /// A network for hosts with these access links.
    pub fn new(
        seed: u64,
        up: Vec<Bottleneck>,
        down: Vec<Bottleneck>,
        host_latency: Vec<u64>,
        default_path: PathModel,
    ) -> Network {
        Network {
            seed,
            up,
            down,
            host_latency,
            default_path,
            overrides: BTreeMap::new(),
            path_list: Vec::new(),
            pairs: BTreeMap::new(),
            index: HashMap::default(),
            partitions: Vec::new(),
            partitioned: 0,
        }
    }

    /// The path from `a` to `b`, created on first use.
    pub fn path(&mut self, a: usize, b: usize) -> &mut Path {
        let key = ((a as u64) << 32) | b as u64;
        let i = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                let model = match self.overrides.get(&(a, b)) {
                    Some(m) => *m,
                    None => {
                        let lat = |h: usize| self.host_latency.get(h).copied().unwrap_or(0);
                        PathModel {
                            latency: lat(a) + lat(b),
                            ..self.default_path
                        }
                    }
                };
                let i = self.path_list.len();
                self.path_list.push(Path::new(
                    model,
                    model_stream(self.seed, Purpose::Link, ((a as u64) << 20) | b as u64),
                ));
                self.pairs.insert((a, b), i);
                self.index.insert(key, i);
                i
            }
        };
        &mut self.path_list[i]
    }

    /// The path from `a` to `b`, if one was used.
    pub fn path_ref(&self, a: usize, b: usize) -> Option<&Path> {
        self.pairs.get(&(a, b)).and_then(|&i| self.path_list.get(i))
    }

    /// Paths used, ordered by (sender, receiver).
    pub fn paths(&self) -> impl Iterator<Item = ((usize, usize), &Path)> + '_ {
        self.pairs
            .iter()
            .filter_map(|(k, &i)| self.path_list.get(i).map(|p| (*k, p)))
    }

    /// Whether a partition separates `a` and `b` at `now`.
    pub fn cut(&mut self, now: Time, a: usize, b: usize) -> bool {
        let cut = self.partitions.iter().any(|p| {
            now >= p.from
                && now < p.until
                && (p.hosts.binary_search(&a).is_ok() != p.hosts.binary_search(&b).is_ok())
        });
        if cut {
            self.partitioned += 1;
        }
        cut
    }
}

/// A hasher for the (sender, receiver) key packed into a u64: one
/// multiply and a fold (the map is only looked up, never iterated).
#[derive(Default)]
pub struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
