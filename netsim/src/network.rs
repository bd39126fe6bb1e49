//! The simulated network: every host's access bottlenecks, the lazily
//! created paths between host pairs, and scheduled partitions.
//!
//! Paths are created on first use with an RNG stream derived from the
//! (sender, receiver) pair, so the random fate of a datagram on one path
//! never depends on traffic elsewhere.

use std::collections::BTreeMap;

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
    /// Live paths (directed).
    pub paths: BTreeMap<(usize, usize), Path>,
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
            paths: BTreeMap::new(),
            partitions: Vec::new(),
            partitioned: 0,
        }
    }

    /// The path from `a` to `b`, created on first use.
    pub fn path(&mut self, a: usize, b: usize) -> &mut Path {
        let seed = self.seed;
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
        self.paths.entry((a, b)).or_insert_with(|| {
            Path::new(
                model,
                model_stream(seed, Purpose::Link, ((a as u64) << 20) | b as u64),
            )
        })
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
