//! Quality of service in front of the backends: ReFlex's cost-based token
//! scheduler (Klimovic et al., ASPLOS'17), one per device it protects, for
//! vfio-user controllers and NVMe/TCP hosts alike.
//!
//! - [`device`]: where a scheduler sits: a wrapper around the backend it
//!   protects, whose queues hold requests for their owner's tokens, and
//!   the registry of the process's schedulers (the control socket's
//!   methods). Front ends know nothing of it: requests carry their owner.
//! - [`calibrate`]: `socp calibrate`, the device model from a backend's
//!   latency-vs-load curve.
//! - [`model`]: the device model (the cost of a write, tokens per second at
//!   a latency SLO), made by `socp-calibrate`.
//! - [`spec`]: `--qos` and `--tenant`.
//! - [`sched`]: the token arithmetic and admission control.
//! - [`feedback`]: the correction of best effort's rate from the read
//!   latencies the device actually gives.
//! - [`stats`]: per-tenant statistics.
//! - [`Held`]: the requests a queue holds back for lack of tokens, one
//!   FIFO per tenant: queued, never dropped, and a throttled tenant does not
//!   hold up another.

pub mod calibrate;
pub mod config;
pub mod device;
pub mod feedback;
pub mod model;
pub mod sched;
pub mod stats;

use config::{Class, QosSpec, TenantSpec};
use leapio_backend::Owner;
use model::DeviceModel;
use sched::Sched;
use serde_json::{json, Value};
use stats::{Histogram, TenantStats};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

pub use device::{registry, QosBackend, Registry};

/// Nanoseconds on a process-wide monotonic clock.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let e = EPOCH.get_or_init(Instant::now);
    u64::try_from(e.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The scheduler of one device.
pub struct Qos {
    /// How tenants and the control socket name it.
    pub name: String,
    /// The backend it protects (its spec, as printed).
    pub backend: String,
    /// Changes whenever tenants or the model change (queues' caches).
    generation: AtomicU64,
    /// The model's write cost, as f64 bits.
    write_cost: AtomicU64,
    sched: Mutex<Sched>,
    /// Per tenant: the last stats read (time, ios) for the IOPS column.
    last_read: Mutex<Vec<(u32, u64, u64)>>,
    /// The device's read latencies in the feedback's current window, and
    /// how many.
    window: Histogram,
    window_reads: AtomicU64,
}

/// Which tenant a request belongs to (resolved once per configuration).
#[derive(Clone)]
pub struct TenantRef {
    pub id: u32,
    pub stats: Arc<TenantStats>,
    /// Latency-critical: its reads are the feedback's samples.
    pub lc: bool,
}

/// A request's QoS bookkeeping while it runs.
pub struct Running {
    qos: Arc<Qos>,
    pub stats: Arc<TenantStats>,
    /// Of a latency-critical tenant.
    pub lc: bool,
    /// When the request reached the device's queue.
    pub fetched_ns: u64,
    /// When it started on the backend (after any wait for tokens).
    pub started_ns: u64,
}

impl Running {
    pub fn new(qos: &Arc<Qos>, t: &TenantRef) -> Running {
        let now = now_ns();
        Running {
            qos: qos.clone(),
            stats: t.stats.clone(),
            lc: t.lc,
            fetched_ns: now,
            started_ns: now,
        }
    }

    /// It got its tokens after waiting: it starts now.
    pub fn start(&mut self) {
        self.started_ns = now_ns();
    }

    /// It completed: the tenant's statistics (from the fetch) and, for a
    /// latency-critical tenant's read, the feedback's sample (from the
    /// start).
    pub fn done(&self, read: bool, write: bool, bytes: u64) {
        let now = now_ns();
        self.stats
            .completed(read, write, bytes, now.saturating_sub(self.fetched_ns));
        if read && self.lc {
            self.qos
                .observe_read(bytes, now.saturating_sub(self.started_ns));
        }
    }
}

impl Qos {
    /// A scheduler named `name` for backend `backend` with the device model
    /// and settings of `spec`, and `tenants`.
    pub fn new(
        name: &str,
        backend: &str,
        spec: &QosSpec,
        tenants: &[TenantSpec],
    ) -> Result<Qos, String> {
        let model = DeviceModel::load(&spec.device)?;
        let mut s = Sched::new(model, spec.be_floor_pct, spec.burst_us, now_ns());
        s.lc_burst_us = spec.lc_burst_us;
        s.feedback = spec.feedback.map(|t| feedback::Feedback::new(t, now_ns()));
        for t in tenants {
            s.add(t.clone(), now_ns())?;
        }
        Ok(Qos::with(name, backend, s))
    }

    fn with(name: &str, backend: &str, s: Sched) -> Qos {
        let q = Qos {
            name: name.to_string(),
            backend: backend.to_string(),
            generation: AtomicU64::new(0),
            write_cost: AtomicU64::new(0),
            sched: Mutex::new(s),
            last_read: Mutex::new(Vec::new()),
            window: Histogram::default(),
            window_reads: AtomicU64::new(0),
        };
        q.changed(&q.lock());
        q
    }

    fn lock(&self) -> MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn write_cost(&self) -> f64 {
        f64::from_bits(self.write_cost.load(Ordering::Relaxed))
    }

    fn changed(&self, s: &Sched) {
        self.write_cost
            .store(s.model.write_cost.to_bits(), Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The tenant of I/O for `who` (None: nobody in particular, the
    /// default tenant).
    pub fn resolve(&self, who: Option<&Owner<'_>>) -> TenantRef {
        let g = self.lock();
        let t = match who {
            Some(w) => g.lookup(w),
            None => g.default_tenant(),
        };
        TenantRef {
            id: t.id,
            stats: t.stats.clone(),
            lc: matches!(t.spec.class, Class::Lc { .. }),
        }
    }

    /// Take `cost` tokens for tenant `id` if it may start now.
    pub fn try_acquire(&self, id: u32, cost: f64) -> bool {
        let mut s = self.lock();
        let now = now_ns();
        self.feedback(&mut s, now);
        s.try_acquire(id, cost, now)
    }

    /// A read of `bytes` took `ns` on the backend (from its start, time
    /// held for tokens excluded): a sample for the feedback.
    pub fn observe_read(&self, bytes: u64, ns: u64) {
        if bytes <= feedback::MAX_READ_BYTES {
            self.window.record(ns);
            self.window_reads.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Close the feedback's window when it is due.
    /// Called on every admission: the cheap test first.
    fn feedback(&self, s: &mut Sched, now: u64) {
        let reads = self.window_reads.load(Ordering::Relaxed);
        if !s.feedback.as_ref().is_some_and(|f| f.ready(reads, now)) {
            return;
        }
        let Some(slo) = s.strictest() else {
            return;
        };
        let Some(fb) = s.feedback.as_mut() else {
            return;
        };
        let (n, tail) = self.window.take(slo.pct.fraction());
        self.window_reads.store(0, Ordering::Relaxed);
        fb.close(n, tail, slo.bound_us(), now);
    }

    /// Add (or replace) a tenant.
    pub fn tenant_add(&self, spec: TenantSpec) -> Result<Value, String> {
        let mut s = self.lock();
        s.add(spec.clone(), now_ns())?;
        self.changed(&s);
        tracing::info!(qos = %self.name, tenant = %spec.name, "QoS tenant added or changed");
        Ok(
            json!({"qos": self.name, "tenant": spec.name, "operating_rate": s.operating_rate(), "reserved": s.reserved()}),
        )
    }

    /// Whether a tenant of this name is configured here.
    pub fn has_tenant(&self, name: &str) -> bool {
        self.lock().tenants.iter().any(|t| t.spec.name == name)
    }

    pub fn tenant_remove(&self, name: &str) -> Result<Value, String> {
        let mut s = self.lock();
        s.remove(name)?;
        self.changed(&s);
        tracing::info!(qos = %self.name, tenant = name, "QoS tenant removed");
        Ok(json!({"removed": name}))
    }

    /// Replace the device model (`qos_device` on a configured device), and
    /// the feedback's target when "feedback" is given.
    pub fn set_model(&self, model: DeviceModel, params: &Value) -> Result<(), String> {
        let mut s = self.lock();
        s.set_model(model, now_ns())?;
        set_feedback(&mut s, params.get("feedback"))?;
        self.changed(&s);
        Ok(())
    }

    /// A scheduler from `qos_device`'s parameters: `{"path": FILE[,
    /// "be_floor": PCT, "burst_us": N, "lc_burst_us": N, "feedback": PCT|"auto"|"off"]}`.
    pub fn from_params(
        name: &str,
        backend: &str,
        model: DeviceModel,
        params: &Value,
    ) -> Result<Qos, String> {
        let floor = params
            .get("be_floor")
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(5)
            .clamp(1, 99);
        let burst = params
            .get("burst_us")
            .and_then(Value::as_u64)
            .unwrap_or(1000);
        let mut s = Sched::new(model, floor, burst, now_ns());
        if let Some(b) = params.get("lc_burst_us").and_then(Value::as_u64) {
            s.lc_burst_us = b.clamp(10, 10_000_000);
        }
        set_feedback(&mut s, params.get("feedback"))?;
        Ok(Qos::with(name, backend, s))
    }
    /// Per-tenant statistics (JSON), IOPS since the previous read.
    /// Each tenant's counters as metrics (labels `qos` and `tenant`).
    pub fn expose(&self, e: &mut leapio_service::metrics::Exposition) {
        let s = self.lock();
        for t in &s.tenants {
            let st = &t.stats;
            let l = [
                ("qos", self.name.as_str()),
                ("tenant", t.spec.name.as_str()),
            ];
            let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as f64;
            let counters = [
                (
                    "leapio_qos_commands_total",
                    "Commands of the tenant the scheduler passed.",
                    get(&st.ios),
                ),
                (
                    "leapio_qos_bytes_total",
                    "Bytes of the tenant's commands.",
                    get(&st.bytes),
                ),
                (
                    "leapio_qos_tokens_total",
                    "Tokens the tenant's commands cost (a 4 KiB read costs 1).",
                    get(&st.milli_tokens) / 1000.0,
                ),
                (
                    "leapio_qos_throttled_total",
                    "Commands of the tenant that waited for tokens.",
                    get(&st.throttled),
                ),
                (
                    "leapio_qos_throttled_seconds_total",
                    "Time the tenant's commands waited for tokens.",
                    get(&st.throttled_ns) / 1e9,
                ),
            ];
            for (name, help, v) in counters {
                e.counter(name, help, &l, v);
            }
            e.gauge("leapio_qos_reserved_tokens_per_second", "Tokens per second reserved for the tenant (latency-critical) or its share now (best effort).", &l, t.rate);
            e.gauge(
                "leapio_qos_held",
                "Commands of the tenant waiting for tokens now.",
                &l,
                get(&st.held),
            );
        }
    }

    pub fn stats(&self, reset: bool) -> Value {
        let s = self.lock();
        let now = now_ns();
        let mut last = self
            .last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tenants: Vec<Value> = s
            .tenants
            .iter()
            .map(|t| {
                let st = &t.stats;
                let ios = st.ios.load(Ordering::Relaxed);
                let (since, before) = last
                    .iter()
                    .find(|(id, _, _)| *id == t.id)
                    .map_or((0, 0), |&(_, a, b)| (a, b));
                let dt = now.saturating_sub(since).max(1);
                let iops = (ios.saturating_sub(before)) as f64 * 1e9 / dt as f64;
                let p = st.percentiles_us(&[0.5, 0.95, 0.99]);
                if reset {
                    st.reset_latency();
                }
                let class = match t.spec.class {
                    Class::Lc {
                        slo,
                        iops,
                        read_pct,
                    } => json!({"class": "lc", "slo": slo.to_string(), "iops": iops, "read_pct": read_pct}),
                    Class::Be { weight } => json!({"class": "be", "weight": weight}),
                };
                json!({
                    "name": t.spec.name,
                    "selector": if t.spec.name == sched::DEFAULT_TENANT { "(unmatched I/O)".to_string() } else { t.spec.selector.to_string() },
                    "config": class,
                    "reserved_tokens_per_s": t.rate,
                    "balance": t.balance,
                    "ios": ios,
                    "reads": st.reads.load(Ordering::Relaxed),
                    "writes": st.writes.load(Ordering::Relaxed),
                    "bytes": st.bytes.load(Ordering::Relaxed),
                    "iops": iops,
                    "tokens_used": st.milli_tokens.load(Ordering::Relaxed) as f64 / 1000.0,
                    "throttled_cmds": st.throttled.load(Ordering::Relaxed),
                    "throttled_ms": st.throttled_ns.load(Ordering::Relaxed) as f64 / 1e6,
                    "held_now": st.held.load(Ordering::Relaxed),
                    "lat_p50_us": p[0],
                    "lat_p95_us": p[1],
                    "lat_p99_us": p[2],
                })
            })
            .collect();
        *last = s
            .tenants
            .iter()
            .map(|t| (t.id, now, t.stats.ios.load(Ordering::Relaxed)))
            .collect();
        let fb = s.feedback.as_ref().map_or(json!("off"), |f| {
            json!({
                "target": f.target.to_string(),
                "target_us": s.strictest().map(|slo| f.target.of(slo.bound_us())),
                "be_scale": f.scale,
                "cuts": f.cuts,
                "last_window_reads": f.last.map(|l| l.0),
                "last_window_tail_us": f.last.map(|l| l.1),
            })
        });
        json!({
            "qos": self.name,
            "backend": self.backend,
            "device": s.model.backend,
            "write_cost": s.model.write_cost,
            "operating_rate": s.operating_rate(),
            "reserved": s.reserved(),
            "be_model_rate": s.be_model_rate(),
            "be_rate": s.be_rate(),
            "feedback": fb,
            "tenants": tenants,
        })
    }
}

/// `qos_device`'s "feedback": "auto", a percentage of the strictest SLO
/// (a number or "90%"), or "off".
fn set_feedback(s: &mut Sched, v: Option<&Value>) -> Result<(), String> {
    let target = match v {
        None => return Ok(()),
        Some(Value::String(t)) => feedback::Target::parse(t)?,
        Some(v) => feedback::Target::parse(&v.to_string())?,
    };
    s.feedback = target.map(|t| feedback::Feedback::new(t, now_ns()));
    Ok(())
}

/// A command held back, with what it costs and since when.
struct HeldCmd<T> {
    item: T,
    cost: f64,
    since: u64,
}

struct HeldQueue<T> {
    tenant: TenantRef,
    cmds: VecDeque<HeldCmd<T>>,
}

/// A poller's commands waiting for tokens: one FIFO per tenant.
pub struct Held<T> {
    queues: Vec<HeldQueue<T>>,
    count: usize,
    /// Where the next release round starts (round robin).
    next: usize,
}

impl<T> Default for Held<T> {
    fn default() -> Self {
        Held {
            queues: Vec::new(),
            count: 0,
            next: 0,
        }
    }
}

impl<T> Held<T> {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn len(&self) -> usize {
        self.count
    }

    /// May a command of `tenant` costing `cost` start now? Yes (the
    /// tokens are taken) when nothing of the tenant waits already and the
    /// scheduler gives them; else the caller [`hold`](Self::hold)s it.
    pub fn try_start(&mut self, q: &Qos, tenant: &TenantRef, cost: f64) -> bool {
        let waiting = self.count > 0
            && self
                .queues
                .iter()
                .any(|h| h.tenant.id == tenant.id && !h.cmds.is_empty());
        if !waiting && q.try_acquire(tenant.id, cost) {
            tenant.stats.started(cost);
            return true;
        }
        false
    }

    /// Queue a command behind the tenant's others.
    pub fn hold(&mut self, tenant: &TenantRef, cost: f64, item: T) {
        let i = match self.queues.iter().position(|h| h.tenant.id == tenant.id) {
            Some(i) => i,
            None => {
                self.queues.push(HeldQueue {
                    tenant: tenant.clone(),
                    cmds: VecDeque::new(),
                });
                self.queues.len() - 1
            }
        };
        self.queues[i].cmds.push_back(HeldCmd {
            item,
            cost,
            since: now_ns(),
        });
        tenant.stats.held.fetch_add(1, Ordering::Relaxed);
        self.count += 1;
    }

    /// [`try_start`](Self::try_start), else [`hold`](Self::hold): the item
    /// back when it may start now.
    pub fn admit(&mut self, q: &Qos, tenant: &TenantRef, cost: f64, item: T) -> Option<T> {
        if self.try_start(q, tenant, cost) {
            return Some(item);
        }
        self.hold(tenant, cost, item);
        None
    }

    /// Move the commands whose tenants now have tokens to `out`, in each
    /// tenant's order; tenants take turns at going first.
    pub fn release(&mut self, q: Option<&Qos>, out: &mut Vec<T>) {
        if self.count == 0 {
            return;
        }
        let n = self.queues.len();
        let now = now_ns();
        for k in 0..n {
            let h = &mut self.queues[(self.next + k) % n];
            while let Some(front) = h.cmds.front() {
                let ok = q.is_none_or(|q| q.try_acquire(h.tenant.id, front.cost));
                if !ok {
                    break;
                }
                let Some(c) = h.cmds.pop_front() else {
                    break;
                };
                h.tenant.stats.started(c.cost);
                h.tenant.stats.released(now.saturating_sub(c.since));
                h.tenant.stats.held.fetch_sub(1, Ordering::Relaxed);
                self.count -= 1;
                out.push(c.item);
            }
        }
        self.next = self.next.wrapping_add(1);
        if self.count == 0 && self.queues.len() > 64 {
            self.queues.clear();
        }
    }

    /// Everything, whatever the tokens (shutdown, QoS turned off).
    pub fn drain(&mut self, out: &mut Vec<T>) {
        self.release(None, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scheduler with a one-point model (1M tokens/s at p95 100 us),
    /// `--qos device=...EXTRA` and `tenants`.
    fn configured(extra: &str, tenants: &[&str]) -> (Qos, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.json");
        let m = DeviceModel {
            backend: "t".into(),
            write_cost: 10.0,
            points: vec![model::Point {
                tokens_per_s: 1_000_000.0,
                p95_us: 100.0,
                p99_us: 200.0,
            }],
            mixes: vec![],
            calib_slo: None,
        };
        std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
        let spec: QosSpec = format!("device={}{extra}", path.display()).parse().unwrap();
        let tenants: Vec<TenantSpec> = tenants.iter().map(|t| t.parse().unwrap()).collect();
        let q = Qos::new("t", "ram:1M", &spec, &tenants).unwrap();
        (q, dir)
    }

    #[test]
    fn held_commands_keep_their_order_and_do_not_block_other_tenants() {
        let (q, _dir) = configured(
            "",
            &[
                "name=slow,ctrl=slow,class=lc,slo=p95:100us,iops=1",
                "name=fast,ctrl=fast,class=lc,slo=p95:100us,iops=900000",
            ],
        );
        let slow = q.resolve(Some(&Owner::Controller {
            name: "slow",
            nsid: 1,
        }));
        let fast = q.resolve(Some(&Owner::Controller {
            name: "fast",
            nsid: 1,
        }));
        let mut held: Held<u32> = Held::default();
        // The slow tenant gets 1 token/s: after at most one command (its
        // bucket may hold a fraction of a token), everything waits.
        let mut passed_slow = Vec::new();
        for i in 0..5 {
            if let Some(i) = held.admit(&q, &slow, 100.0, i) {
                passed_slow.push(i);
            }
        }
        assert!(passed_slow.len() <= 1);
        assert_eq!(held.len(), 5 - passed_slow.len());
        // The fast tenant is not held up by the slow one's queue.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut passed = 0;
        for i in 100..110 {
            if held.admit(&q, &fast, 1.0, i).is_some() {
                passed += 1;
            }
        }
        assert!(passed > 0);
        let mut out = Vec::new();
        held.release(Some(&q), &mut out);
        // At most one more slow one (a positive balance may go into debt).
        assert!(out.iter().filter(|i| **i < 100).count() <= 1, "{out:?}");
        held.drain(&mut out);
        passed_slow.extend(out.iter().copied().filter(|i| *i < 100));
        assert_eq!(passed_slow, vec![0, 1, 2, 3, 4]);
        assert!(held.is_empty());
        assert_eq!(slow.stats.held.load(Ordering::Relaxed), 0);
        let st = q.stats(false);
        assert_eq!(st["tenants"].as_array().unwrap().len(), 3);
        // The metrics say so: the slow tenant's commands waited for tokens.
        let mut e = leapio_service::metrics::Exposition::default();
        q.expose(&mut e);
        let page = e.render();
        let waited = |tenant: &str| -> f64 {
            let l = page
                .lines()
                .find(|l| {
                    l.starts_with("leapio_qos_throttled_total{")
                        && l.contains(&format!("tenant=\"{tenant}\""))
                })
                .unwrap_or_else(|| panic!("no {tenant}:\n{page}"));
            l.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(waited("slow") >= 4.0, "{page}");
        assert_eq!(waited("fast"), 0.0, "{page}");
    }

    #[test]
    fn slow_lc_reads_on_the_device_cut_best_effort_and_fast_ones_restore_it() {
        let (q, _dir) = configured(
            ",feedback=100",
            &[
                "name=lc,ctrl=lc,class=lc,slo=p95:100us,iops=1000",
                "name=be,ctrl=be,class=be",
            ],
        );
        let key = |name| Owner::Controller { name, nsid: 1 };
        let (lc, be) = (q.resolve(Some(&key("lc"))), q.resolve(Some(&key("be"))));
        assert!(lc.lc && !be.lc);
        let scale = |q: &Qos| q.stats(false)["feedback"]["be_scale"].as_f64().unwrap();
        let window = std::time::Duration::from_nanos(feedback::WINDOW_NS + 10_000_000);
        assert_eq!(scale(&q), 1.0);
        // Large reads are no samples.
        q.observe_read(1 << 20, 1_000_000_000);
        assert_eq!(q.window_reads.load(Ordering::Relaxed), 0);
        // A window of LC reads at 10x the SLO: best effort cut by the
        // deepest cut.
        for _ in 0..feedback::MIN_SAMPLES {
            q.observe_read(4096, 1_000_000);
        }
        std::thread::sleep(window);
        q.try_acquire(be.id, 1.0);
        let cut = scale(&q);
        assert!((cut - 0.7).abs() < 1e-9, "{cut}");
        let st = q.stats(false);
        assert!(
            (st["be_rate"].as_f64().unwrap() - 0.7 * st["be_model_rate"].as_f64().unwrap()).abs()
                < 1.0
        );
        // A window of fast ones: it grows back.
        for _ in 0..feedback::MIN_SAMPLES {
            q.observe_read(4096, 10_000);
        }
        std::thread::sleep(window);
        q.try_acquire(lc.id, 1.0);
        assert!(scale(&q) > cut);
        // Turned off at run time: best effort gets the model's leftover.
        let model = || DeviceModel::load(&_dir.path().join("dev.json")).unwrap();
        q.set_model(model(), &json!({"feedback": "off"})).unwrap();
        assert_eq!(q.stats(false)["feedback"], json!("off"));
        assert!(q.set_model(model(), &json!({"feedback": 5})).is_err());
        // Back on, by percentage or automatic margin; the SLO is 100 us.
        for (v, target, us) in [(json!(80), "80%", 80.0), (json!("auto"), "auto", 90.0)] {
            q.set_model(model(), &json!({"feedback": v})).unwrap();
            let fb = &q.stats(false)["feedback"];
            assert_eq!(fb["target"], json!(target));
            assert_eq!(fb["target_us"].as_f64(), Some(us));
        }
    }
}
