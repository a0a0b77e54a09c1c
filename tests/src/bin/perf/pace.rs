//! Open-loop pacing: the k-th I/O of a stream is due at
//! `start + k * 1e9 / rate` nanoseconds, computed from k each time (no
//! accumulated rounding drift). An I/O that could not be issued on time
//! keeps its due time as its latency origin.

/// A fixed-rate schedule of I/Os.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pacer {
    start_ns: u64,
    /// The rate in I/Os per 1000 s (milli-IOPS): integer math below.
    rate_milli: u64,
    /// I/Os issued so far.
    issued: u64,
}

impl Pacer {
    /// `rate` I/Os per second (>= 0.001) from `start_ns`.
    pub fn new(start_ns: u64, rate: f64) -> Pacer {
        // rate is checked to lie in [1e-3, 1e9] by the caller, so the
        // product is a small positive integer.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rate_milli = ((rate * 1000.0).round() as u64).max(1);
        Pacer {
            start_ns,
            rate_milli,
            issued: 0,
        }
    }

    /// Due time of the `k`-th I/O (0-based).
    pub fn due_ns(&self, k: u64) -> u64 {
        let off = u128::from(k) * 1_000_000_000_000 / u128::from(self.rate_milli);
        self.start_ns
            .saturating_add(u64::try_from(off).unwrap_or(u64::MAX))
    }

    /// Due time of the next I/O to issue.
    pub fn next_due_ns(&self) -> u64 {
        self.due_ns(self.issued)
    }

    /// If the next I/O is due at `now_ns`, take it and return its due time.
    pub fn take_due(&mut self, now_ns: u64) -> Option<u64> {
        let due = self.next_due_ns();
        if due <= now_ns {
            self.issued += 1;
            Some(due)
        } else {
            None
        }
    }

    pub fn issued(&self) -> u64 {
        self.issued
    }

    /// I/Os due by `now_ns` and not issued yet (the backlog a stalled
    /// target built up).
    pub fn backlog(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        let due = u128::from(now_ns - self.start_ns) * u128::from(self.rate_milli)
            / 1_000_000_000_000
            + 1;
        u64::try_from(due)
            .unwrap_or(u64::MAX)
            .saturating_sub(self.issued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_has_no_drift() {
        let p = Pacer::new(1000, 3.0); // every 333,333,333.3 ns
        assert_eq!(p.due_ns(0), 1000);
        assert_eq!(p.due_ns(1), 1000 + 333_333_333);
        assert_eq!(p.due_ns(3), 1000 + 1_000_000_000);
        assert_eq!(p.due_ns(3_000_000), 1000 + 1_000_000_000_000_000);
        let p = Pacer::new(0, 1e9);
        assert_eq!(p.due_ns(12345), 12345);
        let p = Pacer::new(0, 2.5);
        assert_eq!(p.due_ns(5), 2_000_000_000);
    }

    #[test]
    fn take_due_issues_on_schedule_and_catches_up() {
        let mut p = Pacer::new(0, 1000.0); // every 1 ms
        assert_eq!(p.take_due(0), Some(0));
        assert_eq!(p.take_due(999_999), None);
        assert_eq!(p.take_due(1_000_000), Some(1_000_000));
        // Stalled until 10.5 ms: I/Os 2..=10 are all due, each keeping its
        // own due time as latency origin.
        assert_eq!(p.backlog(10_500_000), 9);
        let mut dues = Vec::new();
        while let Some(d) = p.take_due(10_500_000) {
            dues.push(d);
        }
        assert_eq!(dues, (2..=10).map(|k| k * 1_000_000).collect::<Vec<_>>());
        assert_eq!(p.issued(), 11);
        assert_eq!(p.backlog(10_500_000), 0);
        assert_eq!(p.next_due_ns(), 11_000_000);
    }

    #[test]
    fn before_start_nothing_is_due() {
        let mut p = Pacer::new(5_000, 10.0);
        assert_eq!(p.backlog(0), 0);
        assert_eq!(p.take_due(4_999), None);
        assert_eq!(p.take_due(5_000), Some(5_000));
    }
}
