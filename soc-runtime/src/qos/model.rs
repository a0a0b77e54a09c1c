//! The device model (ReFlex's): what one I/O costs in tokens, and how many
//! tokens per second the device carries at a given tail-latency SLO. Made
//! by `socp-calibrate` from the device's latency-vs-load curve, loaded by
//! `--qos device=FILE`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// Bytes one token pays for: a 4 KiB read costs 1.
pub const TOKEN_BYTES: u64 = 4096;

/// A tail-latency objective: percentile and bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slo {
    pub pct: Pct,
    /// The bound, in microseconds.
    pub us: u64,
}

impl Slo {
    /// The bound in microseconds, as the latencies it is compared with.
    pub fn bound_us(&self) -> f64 {
        f64::from(u32::try_from(self.us).unwrap_or(u32::MAX))
    }
}

/// Which percentile an SLO bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pct {
    P95,
    P99,
}

impl Pct {
    /// As a fraction.
    pub fn fraction(self) -> f64 {
        match self {
            Pct::P95 => 0.95,
            Pct::P99 => 0.99,
        }
    }
}

impl fmt::Display for Slo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.pct {
            Pct::P95 => "p95",
            Pct::P99 => "p99",
        };
        write!(f, "{p} {}us", self.us)
    }
}

impl FromStr for Slo {
    type Err = String;
    /// `p95:500us`, `p99:2ms`, `p95:500` (microseconds).
    fn from_str(s: &str) -> Result<Slo, String> {
        let (p, t) = s
            .split_once(':')
            .ok_or_else(|| format!("SLO '{s}': expected p95:TIME or p99:TIME"))?;
        let pct = match p {
            "p95" => Pct::P95,
            "p99" => Pct::P99,
            _ => return Err(format!("SLO '{s}': percentile must be p95 or p99")),
        };
        let us = parse_us(t).ok_or_else(|| {
            format!("SLO '{s}': time must be a number with us, ms or s (e.g. 500us)")
        })?;
        if us == 0 {
            return Err(format!("SLO '{s}': time must be positive"));
        }
        Ok(Slo { pct, us })
    }
}

/// `500us`, `2ms`, `1s`, `500` (microseconds).
pub fn parse_us(t: &str) -> Option<u64> {
    let (num, mul) = if let Some(n) = t.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1e6)
    } else {
        (t, 1.0)
    };
    let v: f64 = num.parse().ok()?;
    if !v.is_finite() || v < 0.0 || v * mul > 1e12 {
        return None;
    }
    // Checked to lie in [0, 1e12] above.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some((v * mul).round() as u64)
}

/// One measured point of the latency-vs-load curve.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Offered load in tokens per second (read-only load: IOPS).
    pub tokens_per_s: f64,
    pub p95_us: f64,
    pub p99_us: f64,
}

impl Point {
    fn latency(&self, pct: Pct) -> f64 {
        match pct {
            Pct::P95 => self.p95_us,
            Pct::P99 => self.p99_us,
        }
    }
}

/// What a read/write mix sustains at the calibration SLO (informative).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MixRate {
    pub read_pct: u32,
    pub iops_at_slo: f64,
}

/// A device's cost model (the `--qos device=FILE` JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceModel {
    /// What was calibrated (a backend spec), informative.
    #[serde(default)]
    pub backend: String,
    /// Tokens of a 4 KiB write (a 4 KiB read costs 1).
    pub write_cost: f64,
    /// The read-only latency-vs-load curve, in increasing load.
    pub points: Vec<Point>,
    /// Per read/write mix, IOPS at `calib_slo`: how the write cost was derived.
    #[serde(default)]
    pub mixes: Vec<MixRate>,
    /// The SLO the write cost was derived at, informative.
    #[serde(default)]
    pub calib_slo: Option<Slo>,
}

impl DeviceModel {
    pub fn load(path: &Path) -> Result<DeviceModel, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("device model {}: {e}", path.display()))?;
        let m: DeviceModel = serde_json::from_str(&text)
            .map_err(|e| format!("device model {}: {e}", path.display()))?;
        m.check()
            .map_err(|e| format!("device model {}: {e}", path.display()))?;
        Ok(m)
    }

    pub fn check(&self) -> Result<(), String> {
        if !(self.write_cost.is_finite() && self.write_cost >= 1.0 && self.write_cost <= 1000.0) {
            return Err(format!(
                "write_cost {} is not between 1 and 1000",
                self.write_cost
            ));
        }
        if self.points.is_empty() {
            return Err("no points in the latency curve".into());
        }
        for p in &self.points {
            if !(p.tokens_per_s.is_finite()
                && p.tokens_per_s > 0.0
                && p.p95_us.is_finite()
                && p.p99_us.is_finite())
            {
                return Err(format!("bad point {p:?}"));
            }
        }
        Ok(())
    }

    /// Tokens per second the device carries with the SLO's percentile at
    /// or under its bound: the highest load of the curve whose latency
    /// stays within it, interpolated linearly towards the next load (which
    /// breaks it). A lighter load that broke the bound once (a measurement
    /// spike on a shared machine) does not cut the curve short. 0 if no
    /// load meets the bound.
    pub fn rate_at(&self, slo: Slo) -> f64 {
        let mut pts = self.points.clone();
        pts.sort_by(|a, b| a.tokens_per_s.total_cmp(&b.tokens_per_s));
        let bound = slo.bound_us();
        let Some(i) = pts.iter().rposition(|p| p.latency(slo.pct) <= bound) else {
            return 0.0;
        };
        let b = pts[i];
        match pts.get(i + 1) {
            None => b.tokens_per_s,
            Some(p) => {
                let (lb, l) = (b.latency(slo.pct), p.latency(slo.pct));
                let f = if l > lb { (bound - lb) / (l - lb) } else { 0.0 };
                b.tokens_per_s + f * (p.tokens_per_s - b.tokens_per_s)
            }
        }
    }

    /// The highest load calibrated (the rate with no latency objective).
    pub fn max_rate(&self) -> f64 {
        self.points
            .iter()
            .map(|p| p.tokens_per_s)
            .fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> DeviceModel {
        DeviceModel {
            backend: "test".into(),
            write_cost: 10.0,
            points: vec![
                Point {
                    tokens_per_s: 10_000.0,
                    p95_us: 100.0,
                    p99_us: 150.0,
                },
                Point {
                    tokens_per_s: 50_000.0,
                    p95_us: 200.0,
                    p99_us: 400.0,
                },
                Point {
                    tokens_per_s: 100_000.0,
                    p95_us: 600.0,
                    p99_us: 2000.0,
                },
            ],
            mixes: vec![],
            calib_slo: None,
        }
    }

    #[test]
    fn slo_parses() {
        assert_eq!(
            "p95:500us".parse::<Slo>().unwrap(),
            Slo {
                pct: Pct::P95,
                us: 500
            }
        );
        assert_eq!("p99:2ms".parse::<Slo>().unwrap().us, 2000);
        assert_eq!("p95:750".parse::<Slo>().unwrap().us, 750);
        for bad in ["p90:1ms", "p95", "p95:fast", "p95:0us", "p95:-1ms"] {
            assert!(bad.parse::<Slo>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rate_at_interpolates_the_curve() {
        let m = model();
        let p95 = |us| Slo { pct: Pct::P95, us };
        // At a point exactly.
        assert!((m.rate_at(p95(200)) - 50_000.0).abs() < 1e-6);
        // Halfway between 200 and 600 us: halfway between 50k and 100k.
        assert!((m.rate_at(p95(400)) - 75_000.0).abs() < 1e-6);
        // Looser than every point: the highest load.
        assert!((m.rate_at(p95(10_000)) - 100_000.0).abs() < 1e-6);
        // Stricter than the lightest load: nothing.
        assert_eq!(m.rate_at(p95(50)), 0.0);
        // A spike at a light load does not cut the curve short.
        let mut spiky = m.clone();
        spiky.points[0].p95_us = 5000.0;
        assert!((spiky.rate_at(p95(400)) - 75_000.0).abs() < 1e-6);
        // p99 uses its own column.
        let r = m.rate_at(Slo {
            pct: Pct::P99,
            us: 400,
        });
        assert!((r - 50_000.0).abs() < 1e-6);
        assert!((m.max_rate() - 100_000.0).abs() < 1e-6);
    }

    #[test]
    fn model_round_trips_and_is_checked() {
        let m = model();
        let s = serde_json::to_string(&m).unwrap();
        let back: DeviceModel = serde_json::from_str(&s).unwrap();
        assert_eq!(back, m);
        let mut bad = m.clone();
        bad.write_cost = 0.5;
        assert!(bad.check().is_err());
        bad = m;
        bad.points.clear();
        assert!(bad.check().is_err());
    }
}
