//! The token arithmetic (ReFlex's scheduler), with time passed in so that
//! tests drive it.
//!
//! - The device runs at an *operating rate*: the tokens per second its
//!   model carries at the strictest SLO of the LC tenants (the model's
//!   highest calibrated rate when there are none).
//! - Each LC tenant's bucket fills at its reservation (IOPS x the cost of
//!   its read/write mix) up to `lc_burst_us` worth (50 ms by default: a
//!   host's own jitter sends its commands in bursts, which must not cost it
//!   its SLO); what overflows a full bucket is handed to best effort (an LC
//!   tenant below its reservation leaves its share to others). BE buckets
//!   and the pool hold `burst_us` worth (1 ms, at least one token): best
//!   effort must not burst onto the device.
//! - Best effort gets the operating rate minus the reservations, plus
//!   that overflow, split between the *backlogged* BE tenants (those
//!   refused tokens in the last [`BACKLOG_NS`]) in proportion to their
//!   weights; with none backlogged it collects in a shared pool (at most
//!   a burst) that the first asker takes from. So BE is fair between
//!   tenants that want more, and work-conserving.
//! - A command may be started when its tenant's balance is positive; its
//!   cost is then taken, which may leave the balance negative (a large
//!   I/O waits for the debt to be repaid, never forever).
//! - Admission: an LC tenant is refused when the device cannot carry its
//!   rate at its SLO on top of the reservations already made (with the
//!   strictest SLO of all), keeping `be_floor` of the rate for best
//!   effort, so best effort never starves.
//! - I/O that matches no tenant belongs to the implicit BE tenant
//!   `default`.
//! - Best effort's rate (the leftover and the LC overflow) is scaled by
//!   the [`Feedback`]'s correction from the device's latencies.

use super::config::{Class, Selector, TenantSpec, DEFAULT_LC_BURST_US};
use super::feedback::{Feedback, Target};
use super::model::{DeviceModel, Slo, TOKEN_BYTES};
use super::stats::TenantStats;
use leapio_backend::Owner;
use leapio_backends::IoKind;
use std::sync::Arc;

/// How long a refused BE tenant counts as backlogged.
pub const BACKLOG_NS: u64 = 2_000_000;
/// Smallest bucket, in tokens: one 4 KiB read. A command starts while its
/// tenant's balance is positive, so a larger one goes into debt instead of
/// needing a deeper bucket; and on a slow device a deep bucket lets best
/// effort put several writes on the dies at once, which is what a latency
/// tail is made of.
const MIN_BURST: f64 = 1.0;

/// The implicit tenant of unmatched I/O.
pub const DEFAULT_TENANT: &str = "default";

/// Tokens of one backend operation for a device whose 4 KiB write costs
/// `write_cost`: proportional to the size in 4 KiB units (at least one);
/// flushes, Write Zeroes and deallocation cost one token.
pub fn cost(kind: IoKind, len: u64, write_cost: f64) -> f64 {
    let units = len.div_ceil(TOKEN_BYTES).max(1);
    let units = f64::from(u32::try_from(units).unwrap_or(u32::MAX));
    match kind {
        IoKind::Read => units,
        IoKind::Write | IoKind::WriteFua => units * write_cost,
        _ => 1.0,
    }
}

/// Tokens per second an LC tenant reserves.
pub fn reservation(iops: u64, read_pct: u32, write_cost: f64) -> f64 {
    let r = f64::from(read_pct.min(100)) / 100.0;
    let iops = f64::from(u32::try_from(iops).unwrap_or(u32::MAX));
    iops * (r + (1.0 - r) * write_cost)
}

/// A tenant's state.
pub struct Tenant {
    pub id: u32,
    pub spec: TenantSpec,
    /// Reserved tokens per second (LC), 0 for BE.
    pub rate: f64,
    pub balance: f64,
    pub burst: f64,
    /// Last refusal (BE: backlogged until BACKLOG_NS after it).
    pub refused_ns: Option<u64>,
    pub stats: Arc<TenantStats>,
}

impl Tenant {
    fn weight(&self) -> f64 {
        match self.spec.class {
            Class::Be { weight } => f64::from(weight),
            Class::Lc { .. } => 0.0,
        }
    }
    fn is_lc(&self) -> bool {
        matches!(self.spec.class, Class::Lc { .. })
    }
}

/// The scheduler of one device.
pub struct Sched {
    pub model: DeviceModel,
    pub be_floor: f64,
    pub burst_us: u64,
    /// Bucket depth of LC tenants, in microseconds of their rate.
    pub lc_burst_us: u64,
    pub tenants: Vec<Tenant>,
    /// BE tokens no backlogged tenant took.
    pub be_pool: f64,
    /// The delay-based correction of the BE rate; None: off.
    pub feedback: Option<Feedback>,
    last_ns: u64,
    next_id: u32,
}

impl Sched {
    pub fn new(model: DeviceModel, be_floor_pct: u32, burst_us: u64, now_ns: u64) -> Sched {
        let mut s = Sched {
            model,
            be_floor: f64::from(be_floor_pct.clamp(1, 99)) / 100.0,
            burst_us,
            lc_burst_us: DEFAULT_LC_BURST_US,
            tenants: Vec::new(),
            be_pool: 0.0,
            feedback: Some(Feedback::new(Target::Auto, now_ns)),
            last_ns: now_ns,
            next_id: 1,
        };
        s.push(TenantSpec {
            name: DEFAULT_TENANT.into(),
            qos: None,
            // Matches nothing: reached by falling through.
            selector: Selector::Ctrl {
                name: String::new(),
                nsid: Some(u32::MAX),
            },
            class: Class::Be { weight: 1 },
        });
        s
    }

    fn push(&mut self, spec: TenantSpec) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        self.tenants.push(Tenant {
            id,
            spec,
            rate: 0.0,
            balance: 0.0,
            burst: MIN_BURST,
            refused_ns: None,
            stats: Arc::new(TenantStats::default()),
        });
        self.rebalance();
        id
    }

    /// The strictest SLO of the LC tenants.
    pub fn strictest(&self) -> Option<Slo> {
        self.tenants
            .iter()
            .filter_map(|t| match t.spec.class {
                Class::Lc { slo, .. } => Some(slo),
                Class::Be { .. } => None,
            })
            .min_by_key(|s| s.us)
    }

    /// Tokens per second the device runs at now.
    pub fn operating_rate(&self) -> f64 {
        match self.strictest() {
            Some(s) => self.model.rate_at(s),
            None => self.model.max_rate(),
        }
    }

    /// Sum of the LC reservations.
    pub fn reserved(&self) -> f64 {
        self.tenants.iter().map(|t| t.rate).sum::<f64>().abs()
    }

    /// Tokens per second the model leaves to best effort.
    pub fn be_model_rate(&self) -> f64 {
        (self.operating_rate() - self.reserved()).max(0.0)
    }

    /// Share of its rate best effort gets now (the feedback's scale).
    pub fn be_scale(&self) -> f64 {
        self.feedback.as_ref().map_or(1.0, |f| f.scale)
    }

    /// Tokens per second best effort gets now (before LC overflow).
    pub fn be_rate(&self) -> f64 {
        self.be_model_rate() * self.be_scale()
    }

    /// Recompute reservations, buckets and rates after a change.
    fn rebalance(&mut self) {
        let wc = self.model.write_cost;
        let burst_s = f64::from(u32::try_from(self.burst_us).unwrap_or(u32::MAX)) / 1e6;
        let lc_burst_s = f64::from(u32::try_from(self.lc_burst_us).unwrap_or(u32::MAX)) / 1e6;
        for t in &mut self.tenants {
            if let Class::Lc { iops, read_pct, .. } = t.spec.class {
                t.rate = reservation(iops, read_pct, wc);
                t.burst = (t.rate * lc_burst_s).max(MIN_BURST);
            }
        }
        let be = self.be_model_rate() * burst_s;
        let total_w: f64 = self.tenants.iter().map(Tenant::weight).sum();
        for t in self.tenants.iter_mut().filter(|t| !t.is_lc()) {
            t.burst = (be * t.weight() / total_w.max(1.0)).max(MIN_BURST);
        }
    }

    /// Add a tenant, or change one of the same name, if the device can
    /// carry it; the message says why not.
    pub fn add(&mut self, spec: TenantSpec, now_ns: u64) -> Result<u32, String> {
        if spec.name == DEFAULT_TENANT {
            return Err(format!("tenant name {DEFAULT_TENANT} is reserved"));
        }
        if let Some(other) = self
            .tenants
            .iter()
            .find(|t| t.spec.name != spec.name && t.spec.selector == spec.selector)
        {
            return Err(format!(
                "tenant {}: {} is already tenant {}",
                spec.name, spec.selector, other.spec.name
            ));
        }
        self.refill(now_ns);
        if let Class::Lc {
            slo,
            iops,
            read_pct,
        } = spec.class
        {
            let wc = self.model.write_cost;
            let need = reservation(iops, read_pct, wc);
            let others: Vec<&Tenant> = self
                .tenants
                .iter()
                .filter(|t| t.is_lc() && t.spec.name != spec.name)
                .collect();
            let strictest = others
                .iter()
                .filter_map(|t| match t.spec.class {
                    Class::Lc { slo, .. } => Some(slo),
                    Class::Be { .. } => None,
                })
                .chain(std::iter::once(slo))
                .min_by_key(|s| s.us)
                .unwrap_or(slo);
            let carry = self.model.rate_at(strictest);
            let cap = carry * (1.0 - self.be_floor);
            // abs(): an empty float sum is -0.0, printed "-0" (rates are >= 0).
            let taken = others.iter().map(|t| t.rate).sum::<f64>().abs();
            if taken + need > cap {
                let names: Vec<&str> = others.iter().map(|t| t.spec.name.as_str()).collect();
                let at = if strictest == slo {
                    format!("at {slo}")
                } else {
                    format!("at {strictest} (the strictest SLO of the tenants already admitted)")
                };
                return Err(format!(
                    "tenant {} needs {:.0} tokens/s ({iops} IOPS at {read_pct}:{} read:write, a write costs {wc:.1}) with {slo}; \
                     the device carries {carry:.0} tokens/s {at}, {cap:.0} of them reservable ({:.0}% kept for best effort), \
                     {taken:.0} already reserved{}",
                    spec.name,
                    need,
                    100 - read_pct.min(100),
                    self.be_floor * 100.0,
                    if names.is_empty() {
                        String::new()
                    } else {
                        format!(" by {}", names.join(", "))
                    }
                ));
            }
        }
        let id = match self.tenants.iter_mut().find(|t| t.spec.name == spec.name) {
            Some(t) => {
                t.spec = spec;
                t.rate = 0.0;
                t.id
            }
            None => self.push(spec),
        };
        self.rebalance();
        Ok(id)
    }

    pub fn remove(&mut self, name: &str) -> Result<(), String> {
        if name == DEFAULT_TENANT {
            return Err(format!("tenant {DEFAULT_TENANT} cannot be removed"));
        }
        let i = self
            .tenants
            .iter()
            .position(|t| t.spec.name == name)
            .ok_or_else(|| format!("no tenant {name}"))?;
        self.tenants.remove(i);
        self.rebalance();
        Ok(())
    }

    /// A new device model (tenants are re-admitted against it; those that
    /// no longer fit are refused and the old model stays).
    pub fn set_model(&mut self, model: DeviceModel, now_ns: u64) -> Result<(), String> {
        model.check()?;
        self.refill(now_ns);
        let wc = model.write_cost;
        let need: f64 = self
            .tenants
            .iter()
            .map(|t| match t.spec.class {
                Class::Lc { iops, read_pct, .. } => reservation(iops, read_pct, wc),
                Class::Be { .. } => 0.0,
            })
            .sum();
        if let Some(slo) = self.strictest() {
            let carry = model.rate_at(slo);
            let cap = carry * (1.0 - self.be_floor);
            if need > cap {
                return Err(format!(
                    "the new device model cannot carry the tenants: they reserve {need:.0} tokens/s \
                     (a write costs {wc:.1}); it carries {carry:.0} at {slo}, {cap:.0} of them reservable"
                ));
            }
        }
        self.model = model;
        self.rebalance();
        Ok(())
    }

    /// The tenant of I/O `key`: a namespace-specific selector first, then
    /// a whole controller or host, else `default`.
    pub fn lookup(&self, key: &Owner<'_>) -> &Tenant {
        self.tenants
            .iter()
            .filter(|t| t.spec.selector.matches(key))
            .max_by_key(|t| t.spec.selector.specific())
            .unwrap_or(&self.tenants[0])
    }

    /// The tenant of I/O that is nobody's in particular (and of I/O no
    /// selector matches).
    pub fn default_tenant(&self) -> &Tenant {
        &self.tenants[0]
    }

    /// Add the tokens earned since the last call.
    pub fn refill(&mut self, now_ns: u64) {
        if now_ns <= self.last_ns {
            return;
        }
        let dt = u32::try_from(now_ns - self.last_ns).map_or(4.295, |d| f64::from(d) / 1e9);
        self.last_ns = now_ns;
        let mut spill = 0.0;
        for t in self.tenants.iter_mut().filter(|t| t.is_lc()) {
            t.balance += t.rate * dt;
            if t.balance > t.burst {
                spill += t.balance - t.burst;
                t.balance = t.burst;
            }
        }
        let mut new = (self.be_model_rate() * dt + spill) * self.be_scale();
        let backlogged = |t: &Tenant| {
            !t.is_lc()
                && t.refused_ns
                    .is_some_and(|r| now_ns.saturating_sub(r) < BACKLOG_NS)
        };
        // Weighted split between the backlogged; what a full bucket cannot
        // take goes round again to the others (a few rounds at most).
        for _ in 0..4 {
            let total_w: f64 = self
                .tenants
                .iter()
                .filter(|t| backlogged(t) && t.balance < t.burst)
                .map(Tenant::weight)
                .sum();
            if total_w <= 0.0 || new <= 1e-9 {
                break;
            }
            let mut left = 0.0;
            for t in self
                .tenants
                .iter_mut()
                .filter(|t| backlogged(t) && t.balance < t.burst)
            {
                t.balance += new * t.weight() / total_w;
                if t.balance > t.burst {
                    left += t.balance - t.burst;
                    t.balance = t.burst;
                }
            }
            new = left;
        }
        let pool_cap =
            (self.be_rate() * f64::from(u32::try_from(self.burst_us).unwrap_or(u32::MAX)) / 1e6)
                .max(MIN_BURST);
        self.be_pool = (self.be_pool + new).min(pool_cap);
    }

    /// May tenant `id` start an operation of `cost` tokens now? Takes the
    /// tokens if so. An unknown tenant (removed meanwhile) always may.
    pub fn try_acquire(&mut self, id: u32, cost: f64, now_ns: u64) -> bool {
        self.refill(now_ns);
        let Some(i) = self.tenants.iter().position(|t| t.id == id) else {
            return true;
        };
        let t = &mut self.tenants[i];
        if t.balance > 0.0 {
            t.balance -= cost;
            return true;
        }
        if !t.is_lc() && self.be_pool > 0.0 {
            self.be_pool -= cost;
            return true;
        }
        t.refused_ns = Some(now_ns);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qos::model::{Pct, Point};

    const MS: u64 = 1_000_000;

    fn model() -> DeviceModel {
        DeviceModel {
            backend: "test".into(),
            write_cost: 10.0,
            points: vec![
                Point {
                    tokens_per_s: 50_000.0,
                    p95_us: 200.0,
                    p99_us: 300.0,
                },
                Point {
                    tokens_per_s: 100_000.0,
                    p95_us: 500.0,
                    p99_us: 1000.0,
                },
                Point {
                    tokens_per_s: 150_000.0,
                    p95_us: 2000.0,
                    p99_us: 5000.0,
                },
            ],
            mixes: vec![],
            calib_slo: None,
        }
    }

    fn spec(s: &str) -> TenantSpec {
        s.parse().unwrap()
    }

    #[test]
    fn costs_are_proportional_to_size_and_writes_cost_more() {
        assert_eq!(cost(IoKind::Read, 4096, 10.0), 1.0);
        assert_eq!(cost(IoKind::Read, 512, 10.0), 1.0);
        assert_eq!(cost(IoKind::Read, 128 * 1024, 10.0), 32.0);
        assert_eq!(cost(IoKind::Write, 4096, 10.0), 10.0);
        assert_eq!(cost(IoKind::WriteFua, 8192, 10.0), 20.0);
        assert_eq!(cost(IoKind::Flush, 0, 10.0), 1.0);
        assert_eq!(cost(IoKind::Deallocate, 1 << 30, 10.0), 1.0);
        // 20k IOPS at 90:10 with writes at 10: 18k + 20k = 38k tokens/s.
        assert!((reservation(20_000, 90, 10.0) - 38_000.0).abs() < 1e-6);
        assert!((reservation(1000, 100, 10.0) - 1000.0).abs() < 1e-6);
    }

    #[test]
    fn lc_bucket_refills_at_its_reservation_and_caps_at_burst() {
        let mut s = Sched::new(model(), 5, 1000, 0);
        let id = s
            .add(spec("name=a,ctrl=a,class=lc,slo=p95:500us,iops=10000"), 0)
            .unwrap();
        // 10k tokens/s: over 100 ms, 1000 tokens would be earned, but the
        // bucket holds 1 ms worth (10 tokens -> the minimum, 64).
        let mut granted = 0;
        let mut now = 0;
        while now < 100 * MS {
            now += 10_000; // every 10 us
            while s.try_acquire(id, 1.0, now) {
                granted += 1;
            }
        }
        // ~1000 granted over 100 ms (+ a burst and one of debt at most).
        assert!((990..=1070).contains(&granted), "granted {granted}");
        // Idle for a second: the balance is capped at the burst.
        s.refill(now + 1000 * MS);
        let t = s.tenants.iter().find(|t| t.id == id).unwrap();
        assert!(t.balance <= t.burst + 1e-9);
    }

    #[test]
    fn large_io_goes_into_debt_instead_of_waiting_forever() {
        let mut s = Sched::new(model(), 5, 1000, 0);
        let id = s
            .add(spec("name=a,ctrl=a,class=lc,slo=p95:500us,iops=1000"), 0)
            .unwrap();
        // A 1 MiB write costs 2560 tokens, far more than the bucket.
        assert!(s.try_acquire(id, 0.5, MS)); // balance 1 - 0.5 > 0
        assert!(s.try_acquire(id, 2560.0, MS));
        // Now in debt for ~2.5 s.
        assert!(!s.try_acquire(id, 1.0, 1000 * MS));
        assert!(s.try_acquire(id, 1.0, 3000 * MS));
    }

    /// Tenants `a` and `b` both flood for one second, asking every 5 us;
    /// the 4 KiB reads each got.
    fn flood_both(s: &mut Sched, a: u32, b: u32) -> (u64, u64) {
        let (mut ga, mut gb) = (0u64, 0u64);
        let mut now = 0;
        while now < 1000 * MS {
            now += 5_000;
            while s.try_acquire(a, 1.0, now) {
                ga += 1;
            }
            while s.try_acquire(b, 1.0, now) {
                gb += 1;
            }
        }
        (ga, gb)
    }

    #[test]
    fn be_tenants_share_the_leftover_fairly_by_weight() {
        let mut s = Sched::new(model(), 5, 1000, 0);
        // Operating rate at p95 500us: 100k; LC reserves 40k: BE gets 60k.
        s.add(spec("name=lc,ctrl=lc,class=lc,slo=p95:500us,iops=40000"), 0)
            .unwrap();
        let a = s.add(spec("name=a,ctrl=a,class=be"), 0).unwrap();
        let b = s.add(spec("name=b,ctrl=b,class=be,weight=2"), 0).unwrap();
        let (ga, gb) = flood_both(&mut s, a, b);
        let total = ga + gb;
        // 60k tokens/s over 1 s (the LC tenant is idle: its 40k overflow
        // to BE too, so up to 100k).
        assert!((95_000..=102_000).contains(&total), "total {total}");
        let share_b = gb as f64 / total as f64;
        assert!((0.63..0.70).contains(&share_b), "b got {share_b}");
    }

    /// An LC tenant reserving 40k of the 100k tokens/s at p95 500 us, with
    /// a 1 ms bucket (its overflow starts at once), and a BE tenant.
    fn lc_and_be() -> (Sched, u32, u32) {
        let mut s = Sched::new(model(), 5, 1000, 0);
        s.lc_burst_us = 1000;
        let lc = s
            .add(spec("name=lc,ctrl=lc,class=lc,slo=p95:500us,iops=40000"), 0)
            .unwrap();
        let be = s.add(spec("name=be,ctrl=be,class=be"), 0).unwrap();
        (s, lc, be)
    }

    #[test]
    fn lc_unused_reservation_goes_to_be_and_busy_lc_gets_its_rate() {
        let (mut s, lc, be) = lc_and_be();
        let (mut gl, mut gb) = (0u64, 0u64);
        let mut now = 0;
        while now < 1000 * MS {
            now += 5_000;
            // LC asks for 20k IOPS only: one every 50 us.
            if now % 50_000 == 0 && s.try_acquire(lc, 1.0, now) {
                gl += 1;
            }
            while s.try_acquire(be, 1.0, now) {
                gb += 1;
            }
        }
        assert!((19_900..=20_000).contains(&gl), "lc {gl}");
        // BE: 60k of its own + the 20k LC left unused.
        assert!((78_000..=82_000).contains(&gb), "be {gb}");
        // LC flooding gets its 40k and no more; BE keeps its 60k.
        let (mut gl, mut gb) = (0u64, 0u64);
        let start = now;
        while now < start + 1000 * MS {
            now += 5_000;
            while s.try_acquire(lc, 1.0, now) {
                gl += 1;
            }
            while s.try_acquire(be, 1.0, now) {
                gb += 1;
            }
        }
        assert!((39_500..=40_500).contains(&gl), "lc {gl}");
        assert!((59_000..=61_000).contains(&gb), "be {gb}");
    }

    #[test]
    fn admission_refuses_what_the_device_cannot_carry_and_says_why() {
        let mut s = Sched::new(model(), 5, 1000, 0);
        // At p95 500us the device carries 100k, 95k reservable.
        s.add(spec("name=a,ctrl=a,class=lc,slo=p95:500us,iops=60000"), 0)
            .unwrap();
        let e = s
            .add(spec("name=b,ctrl=b,class=lc,slo=p95:500us,iops=40000"), 0)
            .unwrap_err();
        assert!(e.contains("tenant b needs 40000 tokens/s"), "{e}");
        assert!(e.contains("carries 100000 tokens/s at p95 500us"), "{e}");
        assert!(e.contains("95000 of them reservable"), "{e}");
        assert!(e.contains("60000 already reserved by a"), "{e}");
        s.add(spec("name=b,ctrl=b,class=lc,slo=p95:500us,iops=35000"), 0)
            .unwrap();
        // A stricter SLO lowers the rate for everybody: 50k at 200 us.
        let e = s
            .add(spec("name=c,ctrl=c,class=lc,slo=p95:200us,iops=10"), 0)
            .unwrap_err();
        assert!(e.contains("carries 50000 tokens/s at p95 200us"), "{e}");
        // Writes cost 10: 20k IOPS at 50:50 is 110k tokens/s.
        let mut s = Sched::new(model(), 5, 1000, 0);
        let e = s
            .add(
                spec("name=w,ctrl=w,class=lc,slo=p99:1ms,iops=20000,rw=50:50"),
                0,
            )
            .unwrap_err();
        assert!(e.contains("needs 110000 tokens/s"), "{e}");
        assert!(e.contains(", 0 already reserved"), "{e}");
        assert!(e.contains("20000 IOPS at 50:50 read:write"), "{e}");
        // An SLO tighter than the device ever gives.
        let e = s
            .add(spec("name=x,ctrl=x,class=lc,slo=p95:100us,iops=1"), 0)
            .unwrap_err();
        assert!(e.contains("carries 0 tokens/s"), "{e}");
        // Names and selectors are unique; default is reserved.
        s.add(spec("name=a,ctrl=a,class=be"), 0).unwrap();
        assert!(s.add(spec("name=z,ctrl=a,class=be"), 0).is_err());
        assert!(s.add(spec("name=default,ctrl=q,class=be"), 0).is_err());
    }

    #[test]
    fn runtime_reconfiguration_changes_rates_and_removes_tenants() {
        let mut s = Sched::new(model(), 5, 1000, 0);
        let id = s
            .add(spec("name=a,ctrl=a,class=lc,slo=p95:500us,iops=10000"), 0)
            .unwrap();
        assert!((s.reserved() - 10_000.0).abs() < 1e-6);
        // Same name: changed in place (same id), re-admitted without itself.
        let id2 = s
            .add(spec("name=a,ctrl=a,class=lc,slo=p95:500us,iops=90000"), 0)
            .unwrap();
        assert_eq!(id, id2);
        assert!((s.reserved() - 90_000.0).abs() < 1e-6);
        assert!((s.be_rate() - 10_000.0).abs() < 1e-6);
        // Looser model: more for BE.
        let mut m = model();
        for p in &mut m.points {
            p.tokens_per_s *= 2.0;
        }
        s.set_model(m, 0).unwrap();
        assert!((s.operating_rate() - 200_000.0).abs() < 1e-6);
        // A model that cannot carry the reservation is refused, the old stays.
        let mut m = model();
        for p in &mut m.points {
            p.tokens_per_s /= 4.0;
        }
        let e = s.set_model(m, 0).unwrap_err();
        assert!(e.contains("cannot carry"), "{e}");
        assert!((s.operating_rate() - 200_000.0).abs() < 1e-6);
        assert!((s.reserved() - 90_000.0).abs() < 1e-6);
        s.remove("a").unwrap();
        assert_eq!(s.reserved(), 0.0);
        assert!(s.remove("a").is_err());
        assert!(s.remove(DEFAULT_TENANT).is_err());
        // A removed tenant's held commands are let through.
        assert!(s.try_acquire(id, 1e9, 1));
    }

    #[test]
    fn lookup_prefers_namespace_selectors_and_falls_back_to_default() {
        let mut s = Sched::new(model(), 5, 1000, 0);
        s.add(spec("name=whole,ctrl=vm0,class=be"), 0).unwrap();
        s.add(spec("name=ns2,ctrl=vm0,ns=2,class=be"), 0).unwrap();
        s.add(spec("name=h,hostnqn=nqn.h,class=be"), 0).unwrap();
        let name = |k: Owner<'_>| s.lookup(&k).spec.name.clone();
        assert_eq!(
            name(Owner::Controller {
                name: "vm0",
                nsid: 1
            }),
            "whole"
        );
        assert_eq!(
            name(Owner::Controller {
                name: "vm0",
                nsid: 2
            }),
            "ns2"
        );
        assert_eq!(
            name(Owner::Host {
                nqn: "nqn.h",
                nsid: 7
            }),
            "h"
        );
        assert_eq!(
            name(Owner::Controller {
                name: "vm9",
                nsid: 1
            }),
            DEFAULT_TENANT
        );
        assert_eq!(
            name(Owner::Host {
                nqn: "vm0",
                nsid: 1
            }),
            DEFAULT_TENANT
        );
    }

    #[test]
    fn the_feedback_scales_best_effort_and_never_the_reservations() {
        let (mut s, lc, be) = lc_and_be();
        // The device's tail was over the target: best effort at 25%.
        s.feedback.as_mut().unwrap().scale = 0.25;
        assert!((s.be_model_rate() - 60_000.0).abs() < 1e-6);
        assert!((s.be_rate() - 15_000.0).abs() < 1e-6);
        let (gl, gb) = flood_both(&mut s, lc, be);
        assert!((39_500..=40_500).contains(&gl), "lc {gl}");
        assert!((14_500..=15_500).contains(&gb), "be {gb}");
        // Off: the model's leftover again.
        s.feedback = None;
        assert!((s.be_rate() - 60_000.0).abs() < 1e-6);
    }

    #[test]
    fn nothing_starves_with_everything_reserved() {
        let mut s = Sched::new(model(), 5, 1000, 0);
        // Reserve all that can be: 95k of 100k.
        let lc = s
            .add(spec("name=lc,ctrl=lc,class=lc,slo=p95:500us,iops=95000"), 0)
            .unwrap();
        let be = s.add(spec("name=be,ctrl=be,class=be"), 0).unwrap();
        let (gl, gb) = flood_both(&mut s, lc, be);
        assert!(gl >= 94_000, "lc {gl}");
        assert!((4_500..=5_500).contains(&gb), "be {gb}");
        let _ = Pct::P95;
    }
}
