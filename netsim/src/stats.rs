//! Small statistics helpers: a log-bucketed histogram for delays (millions
//! of samples in constant memory, about 3% relative resolution) and exact
//! percentiles of short lists (per-transfer times).

use serde::Serialize;

/// Sub-buckets per power of two.
const SUB: u64 = 32;

/// A histogram of non-negative integer samples (nanoseconds).
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    max: u64,
}

fn bucket(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let log = 63 - u64::from(v.leading_zeros());
    let shift = log - SUB.trailing_zeros() as u64;
    let sub = (v >> shift) - SUB;
    ((shift + 1) * SUB + sub) as usize
}

fn bucket_low(b: usize) -> u64 {
    let b = b as u64;
    if b < SUB {
        return b;
    }
    let shift = b / SUB - 1;
    (SUB + b % SUB) << shift
}

impl Histogram {
    /// Adds one sample.
    pub fn record(&mut self, v: u64) {
        let b = bucket(v);
        if self.counts.len() <= b {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
        self.total += 1;
        self.sum += u128::from(v);
        self.max = self.max.max(v);
    }

    /// Merges another histogram in.
    pub fn merge(&mut self, other: &Histogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest sample.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean sample (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The `q` quantile (0..=1), as the lower edge of its bucket, capped by
    /// the maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_low(b).min(self.max);
            }
        }
        self.max
    }

    /// Summary in milliseconds.
    pub fn summary_ms(&self) -> DelaySummary {
        let ms = |ns: u64| ns as f64 / 1e6;
        DelaySummary {
            samples: self.total,
            mean_ms: self.mean() / 1e6,
            p50_ms: ms(self.quantile(0.5)),
            p90_ms: ms(self.quantile(0.9)),
            p99_ms: ms(self.quantile(0.99)),
            max_ms: ms(self.max),
        }
    }
}

/// A delay distribution in milliseconds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DelaySummary {
    /// Number of samples.
    pub samples: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// Percentiles of a list of seconds (nearest rank).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Percentiles {
    /// Values.
    pub n: usize,
    /// 10th percentile.
    pub p10: f64,
    /// 25th.
    pub p25: f64,
    /// Median.
    pub p50: f64,
    /// 75th.
    pub p75: f64,
    /// 90th.
    pub p90: f64,
    /// 99th.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// Nearest-rank percentile of sorted values.
pub fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Percentiles of `values`.
pub fn percentiles(values: &[f64]) -> Percentiles {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Percentiles {
        n: v.len(),
        p10: nearest_rank(&v, 0.10),
        p25: nearest_rank(&v, 0.25),
        p50: nearest_rank(&v, 0.50),
        p75: nearest_rank(&v, 0.75),
        p90: nearest_rank(&v, 0.90),
        p99: nearest_rank(&v, 0.99),
        max: v.last().copied().unwrap_or(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotone_and_tight() {
        let mut last = 0;
        for v in [
            0u64,
            1,
            31,
            32,
            33,
            63,
            64,
            100,
            1000,
            123_456,
            9_999_999_999,
        ] {
            let b = bucket(v);
            assert!(b >= last);
            last = b;
            let lo = bucket_low(b);
            assert!(lo <= v, "{v}: {lo}");
            assert!(v - lo <= v / 32 + 1, "{v}: {lo}");
        }
    }

    #[test]
    fn quantiles_of_uniform_samples() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 5_000_000.0).abs() / 5e6 < 0.04, "{p50}");
        assert_eq!(h.max(), 10_000_000);
        assert_eq!(h.count(), 10_000);
        let p = percentiles(&[3.0, 1.0, 2.0, 4.0]);
        assert_eq!((p.p50, p.max, p.p10), (2.0, 4.0, 1.0));
    }
}
