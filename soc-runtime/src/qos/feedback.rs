//! Delay-based correction of the best-effort rate (after Gimbal,
//! SIGCOMM'21): the device model is a calibration, and a device under a
//! mix it was not calibrated at (a few slow programs among many reads) can
//! have a worse tail than the model says at the same tokens per second.
//! So the scheduler also watches the device: every window it takes the
//! tail of the latencies the device gave the latency-critical tenants'
//! reads (from a command's start on the backend to its completion, time
//! held for tokens excluded: a tenant beyond its reservation must not
//! make best effort pay; small reads only) and scales best effort's share
//! down when that tail passes a target below the strictest SLO, and back
//! up when it is well below.
//!
//! - Multiplicative decrease, in proportion to the overshoot (at most
//!   by [`MAX_CUT`] per window); additive increase when the tail is under
//!   [`RECOVER_BELOW`] of the target. The scale never exceeds 1 (the model
//!   stays the upper bound: the loop only corrects it downwards) and never
//!   falls under [`MIN_SCALE`] (best effort never starves).
//! - Reservations are never scaled: the LC tenants' rates are what
//!   admission promised them.
//! - A window closes after [`WINDOW_NS`] once it holds [`MIN_SAMPLES`]
//!   reads; a window without enough reads after [`MAX_WINDOW_NS`] changes
//!   nothing (no signal, no correction).
//! - The arithmetic is here, with time passed in; the samples are in
//!   [`super::Qos`] (a histogram the pollers fill without a lock).

/// Length of a measurement window.
pub const WINDOW_NS: u64 = 100_000_000;
/// A window without this many reads is extended. The p95 of 100 reads
/// is their 5th slowest and may be anything from the 92nd to the 98th
/// percentile: near the knee of a flash device's curve such a window cut
/// best effort where the run's p95 had room. With 400 it is the 93.9th
/// to the 96.1st. (`bash scripts/bench-qos.sh --calibration DIR`, two
/// runs of each on one calibration: BE's share of the leftover 83/78/78%
/// at 20/40/60% load with 100, 84/81/78% with 400; the LC tenant's p95
/// 4.8-6.0 ms with 100, 5.1-5.3 ms with 400, against a 6 ms SLO.)
pub const MIN_SAMPLES: u64 = 400;
/// ... up to this long, then dropped.
pub const MAX_WINDOW_NS: u64 = 1_000_000_000;
/// Lowest share of its rate best effort keeps.
pub const MIN_SCALE: f64 = 0.05;
/// Additive increase per window.
const STEP_UP: f64 = 0.05;
/// Below this fraction of the target, the scale grows back.
pub const RECOVER_BELOW: f64 = 0.85;
/// Deepest cut per window.
const MAX_CUT: f64 = 0.7;
/// The percentages of the SLO one may set as target (`--qos feedback=`,
/// `qos_device`).
pub const TARGET_PCT: std::ops::RangeInclusive<u32> = 10..=100;
/// [`Target::Auto`]'s largest margin below the SLO, in microseconds.
pub const AUTO_MARGIN_US: f64 = 100.0;

/// What the device's read tail is held under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The strictest SLO less a margin for what the device's latency does
    /// not see (the poller, the transport, the guest's driver): a tenth of
    /// the SLO, at most [`AUTO_MARGIN_US`]. That time is a few tens of
    /// microseconds whatever the SLO (an NVMe/TCP round trip on loopback
    /// under load, a poller pass), so a fixed percentage would either
    /// leave a millisecond SLO's best effort short by a tenth of the
    /// device or give a 200 us SLO no margin at all.
    Auto,
    /// This percentage of the strictest SLO ([`TARGET_PCT`]).
    Pct(u32),
}

impl Target {
    /// The target in microseconds for an SLO of `slo_us`.
    pub fn of(self, slo_us: f64) -> f64 {
        match self {
            Target::Auto => slo_us - (slo_us / 10.0).min(AUTO_MARGIN_US),
            Target::Pct(p) => slo_us * f64::from(p) / 100.0,
        }
    }

    /// `auto`, a percentage (`90` or `90%`) or `off` (None).
    pub fn parse(v: &str) -> Result<Option<Target>, String> {
        match v {
            "off" => Ok(None),
            "auto" => Ok(Some(Target::Auto)),
            _ => v
                .trim_end_matches('%')
                .parse()
                .ok()
                .filter(|p| TARGET_PCT.contains(p))
                .map(|p| Some(Target::Pct(p)))
                .ok_or_else(|| {
                    format!(
                        "feedback must be auto, off or 10..100 (% of the strictest SLO), not {v:?}"
                    )
                }),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Auto => f.write_str("auto"),
            Target::Pct(p) => write!(f, "{p}%"),
        }
    }
}

/// Reads larger than this do not count (their latency is their size's).
pub const MAX_READ_BYTES: u64 = 16 * 1024;

/// The controller's state.
#[derive(Clone, Debug)]
pub struct Feedback {
    /// What the read tail is held under.
    pub target: Target,
    /// Share of its rate best effort gets now (MIN_SCALE..=1).
    pub scale: f64,
    /// Start of the current window.
    pub window_ns: u64,
    /// The last closed window: reads and their tail in microseconds.
    pub last: Option<(u64, f64)>,
    /// Windows that cut the scale.
    pub cuts: u64,
}

impl Feedback {
    pub fn new(target: Target, now_ns: u64) -> Feedback {
        Feedback {
            target,
            scale: 1.0,
            window_ns: now_ns,
            last: None,
            cuts: 0,
        }
    }

    /// Is the window to be closed, holding `samples` reads now?
    pub fn ready(&self, samples: u64, now_ns: u64) -> bool {
        let age = now_ns.saturating_sub(self.window_ns);
        age >= WINDOW_NS && (samples >= MIN_SAMPLES || age >= MAX_WINDOW_NS)
    }

    /// Close the window: `samples` reads whose tail was `tail_us`, against
    /// an SLO of `slo_us`.
    pub fn close(&mut self, samples: u64, tail_us: f64, slo_us: f64, now_ns: u64) {
        self.window_ns = now_ns;
        if samples < MIN_SAMPLES {
            return;
        }
        self.last = Some((samples, tail_us));
        let target = self.target.of(slo_us);
        if target <= 0.0 {
            return;
        }
        if tail_us > target {
            self.scale = (self.scale * (target / tail_us).max(MAX_CUT)).max(MIN_SCALE);
            self.cuts += 1;
        } else if tail_us < target * RECOVER_BELOW {
            self.scale = (self.scale + STEP_UP).min(1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_automatic_target_leaves_a_tenth_of_the_slo_up_to_100_us() {
        assert_eq!(Target::Auto.of(6000.0), 5900.0);
        assert_eq!(Target::Auto.of(1000.0), 900.0);
        assert_eq!(Target::Auto.of(200.0), 180.0);
        assert_eq!(Target::Pct(90).of(6000.0), 5400.0);
        assert_eq!(Target::parse("auto"), Ok(Some(Target::Auto)));
        assert_eq!(Target::parse("off"), Ok(None));
        assert_eq!(Target::parse("100%"), Ok(Some(Target::Pct(100))));
        for bad in ["9", "101", "on", "", "-5"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Target::Pct(75).to_string(), "75%");
    }

    #[test]
    fn overshoot_cuts_in_proportion_and_recovery_is_gradual() {
        let mut f = Feedback::new(Target::Pct(80), 0);
        let n = MIN_SAMPLES;
        let w = |i: u64| i * WINDOW_NS;
        // SLO 1000 us, target 800 us.
        assert!(!f.ready(n, WINDOW_NS - 1));
        assert!(f.ready(n, w(1)));
        // 10% over: cut by 10%.
        f.close(n, 880.0, 1000.0, w(1));
        assert!((f.scale - 800.0 / 880.0).abs() < 1e-9);
        // 4x over: at most MAX_CUT per window.
        f.scale = 1.0;
        f.close(n, 3200.0, 1000.0, w(2));
        assert!((f.scale - MAX_CUT).abs() < 1e-9);
        // Between RECOVER_BELOW and 100% of the target: held.
        f.close(n, 700.0, 1000.0, w(3));
        assert!((f.scale - MAX_CUT).abs() < 1e-9);
        // Well below: +STEP_UP per window, never above 1.
        f.close(n, 100.0, 1000.0, w(4));
        assert!((f.scale - MAX_CUT - STEP_UP).abs() < 1e-9);
        for i in 0..100 {
            f.close(n, 100.0, 1000.0, w(5 + i));
        }
        assert!((f.scale - 1.0).abs() < 1e-9);
        assert_eq!(f.cuts, 2);
        assert_eq!(f.last, Some((n, 100.0)));
        // Never under the floor, however bad the device gets.
        for i in 0..100 {
            f.close(n, 1e9, 1000.0, w(200 + i));
        }
        assert!((f.scale - MIN_SCALE).abs() < 1e-9);
    }

    #[test]
    fn windows_without_enough_reads_wait_then_change_nothing() {
        let mut f = Feedback::new(Target::Pct(80), 0);
        f.scale = 0.5;
        // Too few reads: the window goes on.
        assert!(!f.ready(5, 2 * WINDOW_NS));
        // Still too few after MAX_WINDOW_NS: dropped, no change.
        assert!(f.ready(5, MAX_WINDOW_NS + 1));
        f.close(5, 5000.0, 1000.0, MAX_WINDOW_NS + 1);
        assert!((f.scale - 0.5).abs() < 1e-9);
        assert_eq!(f.window_ns, MAX_WINDOW_NS + 1);
        assert!(f.last.is_none());
    }
}
