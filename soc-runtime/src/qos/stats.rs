//! Per-tenant statistics, updated by the pollers with relaxed atomics and
//! read by the control socket while running.

use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-buckets per power of two of the latency histogram (12.5% wide).
const SUB: u32 = 8;
/// Powers of two covered: 1 ns .. 2^40 ns (18 minutes).
const POWERS: u32 = 40;
const BUCKETS: usize = (SUB * POWERS) as usize;

/// Counters of one tenant.
pub struct TenantStats {
    pub ios: AtomicU64,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub bytes: AtomicU64,
    /// Tokens spent, in thousandths.
    pub milli_tokens: AtomicU64,
    /// Commands that had to wait for tokens, and their total wait.
    pub throttled: AtomicU64,
    pub throttled_ns: AtomicU64,
    /// Commands waiting for tokens now.
    pub held: AtomicU64,
    lat: Histogram,
}

/// A latency histogram that pollers update with relaxed atomics.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    pub fn record(&self, ns: u64) {
        self.buckets[bucket(ns)].fetch_add(1, Ordering::Relaxed);
    }

    /// Percentiles (fractions) in microseconds.
    pub fn percentiles_us(&self, ps: &[f64]) -> Vec<f64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        percentiles_us(&counts, ps)
    }

    pub fn reset(&self) {
        for c in self.buckets.iter() {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Empty the histogram: how many latencies it held and percentile `p`
    /// of them in microseconds.
    pub fn take(&self, p: f64) -> (u64, f64) {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|c| c.swap(0, Ordering::Relaxed))
            .collect();
        (counts.iter().sum(), percentiles_us(&counts, &[p])[0])
    }
}

/// Percentiles `ps` (fractions), in microseconds, of histogram `counts`.
fn percentiles_us(counts: &[u64], ps: &[f64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    ps.iter()
        .map(|&p| {
            if total == 0 {
                return 0.0;
            }
            let total_f = f64::from(u32::try_from(total).unwrap_or(u32::MAX));
            let mut seen = 0u64;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if f64::from(u32::try_from(seen).unwrap_or(u32::MAX)) >= p * total_f {
                    let top = u32::try_from(bucket_top(i)).unwrap_or(u32::MAX);
                    return f64::from(top) / 1000.0;
                }
            }
            0.0
        })
        .collect()
}

impl Default for TenantStats {
    fn default() -> Self {
        TenantStats {
            ios: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            milli_tokens: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            throttled_ns: AtomicU64::new(0),
            held: AtomicU64::new(0),
            lat: Histogram::default(),
        }
    }
}

fn bucket(ns: u64) -> usize {
    let v = ns.max(1);
    let p = 63 - v.leading_zeros();
    let sub = if p >= 3 {
        u32::try_from((v >> (p - 3)) & 7).unwrap_or(0)
    } else {
        u32::try_from(v).unwrap_or(0) & 7
    };
    usize::try_from((p.min(POWERS - 1)) * SUB + sub).unwrap_or(BUCKETS - 1)
}

/// Upper edge of bucket `i` in ns.
fn bucket_top(i: usize) -> u64 {
    let i = u32::try_from(i).unwrap_or(0);
    let (p, sub) = (i / SUB, i % SUB);
    if p < 3 {
        return u64::from(sub) + 1;
    }
    ((8 + u64::from(sub) + 1) << (p - 3)).saturating_sub(1)
}

impl TenantStats {
    /// A command started: its cost in tokens.
    pub fn started(&self, cost: f64) {
        // Costs are small positive numbers (<= a few 100k).
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let m = (cost * 1000.0).max(0.0) as u64;
        self.milli_tokens.fetch_add(m, Ordering::Relaxed);
    }

    /// A command completed after `ns` (from fetch, waiting included).
    pub fn completed(&self, read: bool, write: bool, bytes: u64, ns: u64) {
        self.ios.fetch_add(1, Ordering::Relaxed);
        if read {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
        if write {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.lat.record(ns);
    }

    /// A held command got its tokens after waiting `ns`.
    pub fn released(&self, ns: u64) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        self.throttled_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Latency percentiles (fractions) in microseconds, from the histogram.
    pub fn percentiles_us(&self, ps: &[f64]) -> Vec<f64> {
        self.lat.percentiles_us(ps)
    }

    /// Forget the latencies recorded so far.
    pub fn reset_latency(&self) {
        self.lat.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_percentiles_are_within_a_bucket() {
        let s = TenantStats::default();
        for i in 1..=1000u64 {
            s.completed(true, false, 4096, i * 1000); // 1..1000 us
        }
        let p = s.percentiles_us(&[0.5, 0.95, 0.99]);
        assert!((p[0] - 500.0).abs() / 500.0 < 0.13, "{p:?}");
        assert!((p[1] - 950.0).abs() / 950.0 < 0.13, "{p:?}");
        assert!((p[2] - 990.0).abs() / 990.0 < 0.13, "{p:?}");
        assert_eq!(s.ios.load(Ordering::Relaxed), 1000);
        for ns in [0, 1, 7, 8, 9, 1000, u64::MAX] {
            let b = bucket(ns);
            assert!(b < BUCKETS);
            assert!(bucket_top(b) >= ns.min(1 << 40) || b == BUCKETS - 1, "{ns}");
        }
    }
}
