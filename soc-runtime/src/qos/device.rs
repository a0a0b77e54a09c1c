//! Where a scheduler sits: in front of the device it protects.
//!
//! Every backend the runtime shares between its controllers and targets is
//! opened inside a [`QosBackend`]. Its queues pass requests straight
//! through while the device has no scheduler (one atomic load per request);
//! when it has one, each request is charged to its owner's tenant and held
//! (in the queue, in order, never dropped) until the tenant has tokens.
//! Requests carry their owner ([`IoRequest::owner`], from
//! [`Backend::owner`]): the front ends say whose I/O it is, not how it is
//! scheduled.
//!
//! The [`Registry`] is the process's schedulers, one per device, by name:
//! `--qos` and the control socket's `qos_*` methods configure them, and
//! each device's wrapper finds its scheduler there by the backend's spec.

use super::config::{QosSpec, TenantSpec};
use super::{sched, Held, Qos, Running, TenantRef};
use arc_swap::ArcSwapOption;
use leapio_backend::{
    Backend, BackendError, BackendQueue, Completion, Features, Geometry, IoError, IoKind,
    IoRequest, KeptRequest, Owner, SubmitError, ZoneDesc, ZoneGeometry,
};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An owner, kept.
#[derive(Clone, Debug, PartialEq, Eq)]
enum OwnerKey {
    Controller { name: String, nsid: u32 },
    Host { nqn: String, nsid: u32 },
}

impl OwnerKey {
    fn of(who: &Owner<'_>) -> OwnerKey {
        match *who {
            Owner::Controller { name, nsid } => OwnerKey::Controller {
                name: name.to_string(),
                nsid,
            },
            Owner::Host { nqn, nsid } => OwnerKey::Host {
                nqn: nqn.to_string(),
                nsid,
            },
        }
    }

    fn owner(&self) -> Owner<'_> {
        match self {
            OwnerKey::Controller { name, nsid } => Owner::Controller { name, nsid: *nsid },
            OwnerKey::Host { nqn, nsid } => Owner::Host { nqn, nsid: *nsid },
        }
    }
}

/// What a device's wrapper and its queues share.
struct DeviceState {
    /// The backend's spec, as printed: how the registry finds its scheduler.
    key: String,
    sched: ArcSwapOption<Qos>,
    /// Owner ids (index + 1) and whose they are.
    owners: Mutex<Vec<OwnerKey>>,
}

/// A backend with the place for its scheduler.
pub struct QosBackend {
    inner: Arc<dyn Backend>,
    state: Arc<DeviceState>,
}

impl QosBackend {
    /// Wrap `inner`, whose spec is `key`, and give it its scheduler if the
    /// registry has one for it.
    pub fn wrap(key: &str, inner: Arc<dyn Backend>) -> Arc<QosBackend> {
        let state = Arc::new(DeviceState {
            key: key.to_string(),
            sched: ArcSwapOption::empty(),
            owners: Mutex::new(Vec::new()),
        });
        registry().register(&state);
        Arc::new(QosBackend { inner, state })
    }

    /// The scheduler now in front of this device.
    pub fn scheduler(&self) -> Option<Arc<Qos>> {
        self.state.sched.load_full()
    }
}

impl Backend for QosBackend {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn features(&self) -> Features {
        self.inner.features()
    }
    fn open_queue(&self, depth: u32) -> Result<Box<dyn BackendQueue>, BackendError> {
        Ok(Box::new(QosQueue {
            inner: self.inner.open_queue(depth)?,
            dev: self.state.clone(),
            tenants: Vec::new(),
            tenants_of: None,
            held: Held::default(),
            ready: VecDeque::new(),
            failed: Vec::new(),
            running: HashMap::new(),
            released: Vec::new(),
        }))
    }
    fn flush(&self) -> Result<(), BackendError> {
        self.inner.flush()
    }
    fn close_open_zones(&self) -> Result<(), BackendError> {
        self.inner.close_open_zones()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn persistent(&self) -> bool {
        self.inner.persistent()
    }
    fn max_io_bytes(&self) -> u64 {
        self.inner.max_io_bytes()
    }
    fn copied_bytes(&self) -> u64 {
        self.inner.copied_bytes()
    }
    fn figures(&self) -> Vec<leapio_backend::Figure> {
        self.inner.figures()
    }
    fn ana_state(&self) -> Option<u8> {
        self.inner.ana_state()
    }
    fn service(&self) -> Option<&dyn leapio_backend::ServiceControl> {
        self.inner.service()
    }
    fn stale_writes_for(&self) -> std::time::Duration {
        self.inner.stale_writes_for()
    }
    fn claim(&self) -> Result<(), BackendError> {
        self.inner.claim()
    }
    fn zoned(&self) -> Option<ZoneGeometry> {
        self.inner.zoned()
    }
    fn report_zones(&self, from: u64, max: usize) -> Vec<ZoneDesc> {
        self.inner.report_zones(from, max)
    }
    fn owner(&self, who: &Owner<'_>) -> u32 {
        let key = OwnerKey::of(who);
        let mut owners = lock(&self.state.owners);
        let i = match owners.iter().position(|k| *k == key) {
            Some(i) => i,
            None => {
                owners.push(key);
                owners.len() - 1
            }
        };
        u32::try_from(i + 1).unwrap_or(0)
    }
}

/// A command's requests in flight under a scheduler (a DSM command's
/// ranges share a tag).
struct Run {
    running: Running,
    kind: IoKind,
    len: u64,
    requests: u32,
}

/// A queue of a [`QosBackend`].
struct QosQueue {
    inner: Box<dyn BackendQueue>,
    dev: Arc<DeviceState>,
    /// Tenants by owner id (index), for scheduler `tenants_of` at its
    /// generation.
    tenants: Vec<Option<TenantRef>>,
    tenants_of: Option<(usize, u64)>,
    /// Requests waiting for their tenant's tokens.
    held: Held<KeptRequest>,
    /// Requests that have their tokens and found the inner queue full.
    ready: VecDeque<KeptRequest>,
    /// Requests the inner queue refused after they were accepted here.
    failed: Vec<Completion>,
    running: HashMap<u64, Run>,
    released: Vec<KeptRequest>,
}

impl QosQueue {
    /// The tenant of `owner` under scheduler `q`.
    fn tenant(&mut self, q: &Qos, owner: u32) -> TenantRef {
        let id = std::ptr::from_ref(q) as usize;
        if self.tenants_of != Some((id, q.generation())) {
            self.tenants.clear();
            self.tenants_of = Some((id, q.generation()));
        }
        let i = usize::try_from(owner).unwrap_or(0);
        if let Some(Some(t)) = self.tenants.get(i) {
            return t.clone();
        }
        let t = {
            let owners = lock(&self.dev.owners);
            let key = i.checked_sub(1).and_then(|k| owners.get(k));
            q.resolve(key.map(OwnerKey::owner).as_ref())
        };
        if self.tenants.len() <= i {
            self.tenants.resize_with(i + 1, || None);
        }
        self.tenants[i] = Some(t.clone());
        t
    }

    /// Held requests whose tenants have tokens now (all of them without a
    /// scheduler) join the ready ones; the ready ones go to the device.
    fn release(&mut self, q: Option<&Qos>) {
        if !self.held.is_empty() {
            let mut out = std::mem::take(&mut self.released);
            self.held.release(q, &mut out);
            for k in out.drain(..) {
                if let Some(r) = self.running.get_mut(&k.tag) {
                    r.running.start();
                }
                self.ready.push_back(k);
            }
            self.released = out;
        }
        while let Some(k) = self.ready.front() {
            // SAFETY: the iovecs are the submitter's, valid until this
            // tag completes (the contract of our own `submit`).
            match unsafe { self.inner.submit(&k.request()) } {
                Ok(()) => {
                    self.ready.pop_front();
                }
                Err(SubmitError::Full) => break,
                Err(SubmitError::Invalid(why)) => {
                    tracing::warn!(device = %self.dev.key, "backend refused a request: {why}");
                    if let Some(k) = self.ready.pop_front() {
                        self.failed.push(Completion {
                            tag: k.tag,
                            result: Err(IoError::from_errno(libc::EINVAL)),
                            value: 0,
                        });
                    }
                }
            }
        }
    }

    /// Completions of this queue's requests: the tenants' statistics of
    /// the commands they finish.
    fn account(&mut self, done: &[Completion]) {
        if self.running.is_empty() {
            return;
        }
        for c in done {
            let Some(r) = self.running.get_mut(&c.tag) else {
                continue;
            };
            r.requests -= 1;
            if r.requests == 0 {
                if let Some(r) = self.running.remove(&c.tag) {
                    r.running.done(
                        r.kind == IoKind::Read,
                        matches!(r.kind, IoKind::Write | IoKind::WriteFua),
                        r.len,
                    );
                }
            }
        }
    }
}

impl BackendQueue for QosQueue {
    unsafe fn submit(&mut self, req: &IoRequest<'_>) -> Result<(), SubmitError> {
        let Some(q) = self.dev.sched.load_full() else {
            if !self.held.is_empty() || !self.ready.is_empty() {
                // The scheduler went away: what it held goes first.
                self.release(None);
            }
            // SAFETY: the caller's guarantee, passed on.
            return unsafe { self.inner.submit(req) };
        };
        let tenant = self.tenant(&q, req.owner);
        let cost = sched::cost(req.kind, req.len, q.write_cost());
        match self.running.get_mut(&req.tag) {
            Some(r) => r.requests += 1,
            None => {
                self.running.insert(
                    req.tag,
                    Run {
                        running: Running::new(&q, &tenant),
                        kind: req.kind,
                        len: req.len,
                        requests: 1,
                    },
                );
            }
        }
        if !self.held.try_start(&q, &tenant, cost) {
            self.held.hold(&tenant, cost, KeptRequest::of(req));
            return Ok(());
        }
        // SAFETY: the caller's guarantee, passed on.
        match unsafe { self.inner.submit(req) } {
            Ok(()) => Ok(()),
            Err(SubmitError::Full) => {
                // It has its tokens: it goes as soon as there is room.
                self.ready.push_back(KeptRequest::of(req));
                Ok(())
            }
            Err(e) => {
                if let Some(r) = self.running.get_mut(&req.tag) {
                    r.requests -= 1;
                    if r.requests == 0 {
                        self.running.remove(&req.tag);
                    }
                }
                Err(e)
            }
        }
    }

    fn kick(&mut self) -> Result<(), BackendError> {
        if !self.held.is_empty() || !self.ready.is_empty() {
            let q = self.dev.sched.load_full();
            self.release(q.as_deref());
        }
        self.inner.kick()
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        if !self.held.is_empty() || !self.ready.is_empty() {
            let q = self.dev.sched.load_full();
            self.release(q.as_deref());
        }
        let from = out.len();
        out.append(&mut self.failed);
        self.inner.poll(out);
        let (_, new) = out.split_at(from);
        self.account(new);
        out.len() - from
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.held.len() + self.ready.len() + self.failed.len()
    }

    fn held(&self) -> usize {
        self.held.len()
    }

    fn drain(&mut self, out: &mut Vec<Completion>, timeout: Duration) -> usize {
        let from = out.len();
        let deadline = Instant::now() + timeout;
        // Everything held runs now, whatever the tokens.
        loop {
            self.release(None);
            let _ = self.inner.kick();
            self.inner.poll(out);
            if self.ready.is_empty() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        out.append(&mut self.failed);
        let left = deadline.saturating_duration_since(Instant::now());
        self.inner.drain(out, left);
        let (_, new) = out.split_at(from);
        self.account(new);
        out.len() - from
    }

    fn wait_completion(&mut self, timeout: Duration) {
        if self.inner.in_flight() > 0 {
            self.inner.wait_completion(timeout);
        } else if !self.held.is_empty() {
            // Only time gives tokens.
            std::thread::sleep(timeout);
        }
    }
}

/// A device scheduler, by name, and the backend it protects.
struct Device {
    qos: Arc<Qos>,
}

/// The process's schedulers, one per device, and the wrapped backends
/// that find theirs here.
#[derive(Default)]
pub struct Registry {
    devices: Mutex<Vec<Device>>,
    wrapped: Mutex<Vec<Weak<DeviceState>>>,
    /// Names given so far (qos0, qos1, ... for unnamed schedulers).
    created: Mutex<u64>,
}

/// The registry of this process.
pub fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::default)
}

/// The spec string `text` names a backend by, as printed (so that
/// `file:/x` and `file:/x` spelt differently match), or `text` itself.
fn backend_key(text: &str) -> Result<String, String> {
    text.parse::<leapio_backends::BackendSpec>()
        .map(|s| s.to_string())
        .map_err(|e| format!("backend '{text}': {e}"))
}

impl Registry {
    fn register(&self, state: &Arc<DeviceState>) {
        if let Some(d) = lock(&self.devices)
            .iter()
            .find(|d| d.qos.backend == state.key)
        {
            state.sched.store(Some(d.qos.clone()));
        }
        let mut w = lock(&self.wrapped);
        w.retain(|s| s.strong_count() > 0);
        w.push(Arc::downgrade(state));
    }

    /// Put `qos` (or nothing) in front of every open backend of spec `key`.
    fn attach(&self, key: &str, qos: Option<Arc<Qos>>) {
        for s in lock(&self.wrapped).iter().filter_map(Weak::upgrade) {
            if s.key == key {
                s.sched.store(qos.clone());
            }
        }
    }

    fn next_name(&self) -> String {
        let mut n = lock(&self.created);
        let name = format!("qos{n}");
        *n += 1;
        name
    }

    fn add(&self, qos: Qos) -> Result<Arc<Qos>, String> {
        let mut devices = lock(&self.devices);
        if devices.iter().any(|d| d.qos.name == qos.name) {
            return Err(format!("a QoS scheduler named {} exists already", qos.name));
        }
        if let Some(d) = devices.iter().find(|d| d.qos.backend == qos.backend) {
            return Err(format!(
                "backend {} has a scheduler already ({})",
                qos.backend, d.qos.name
            ));
        }
        let qos = Arc::new(qos);
        devices.push(Device { qos: qos.clone() });
        drop(devices);
        self.attach(&qos.backend, Some(qos.clone()));
        tracing::info!(qos = %qos.name, backend = %qos.backend, "QoS scheduler on");
        Ok(qos)
    }

    /// The scheduler named `name`, or the only one.
    fn find(&self, name: Option<&str>) -> Result<Arc<Qos>, String> {
        let devices = lock(&self.devices);
        match name {
            Some(n) => devices
                .iter()
                .find(|d| d.qos.name == n)
                .map(|d| d.qos.clone())
                .ok_or_else(|| format!("no QoS scheduler named {n}")),
            None => match devices.as_slice() {
                [d] => Ok(d.qos.clone()),
                [] => Err("QoS is off: load a device model first (qos_device, or --qos)".into()),
                _ => Err(format!(
                    "{} QoS schedulers: name one ({})",
                    devices.len(),
                    devices
                        .iter()
                        .map(|d| d.qos.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            },
        }
    }

    /// Start-up: a scheduler per `--qos`, and the `--tenant`s (each on the
    /// scheduler it names, or the only one).
    pub fn configure(&self, specs: &[QosSpec], tenants: &[TenantSpec]) -> Result<(), String> {
        let mut made = Vec::new();
        for spec in specs {
            let name = spec.name.clone().unwrap_or_else(|| self.next_name());
            let model = super::model::DeviceModel::load(&spec.device)?;
            let backend = match &spec.backend {
                Some(b) => backend_key(b)?,
                None => backend_key(&model.backend)
                    .map_err(|e| format!("--qos {name}: the model's {e}: give backend=SPEC"))?,
            };
            let mine: Vec<TenantSpec> = tenants
                .iter()
                .filter(|t| match &t.qos {
                    Some(q) => *q == name,
                    None => specs.len() == 1,
                })
                .cloned()
                .collect();
            let q =
                Qos::new(&name, &backend, spec, &mine).map_err(|e| format!("--qos {name}: {e}"))?;
            made.push(self.add(q)?);
        }
        for t in tenants {
            if !made.iter().any(|q| q.has_tenant(&t.name)) {
                return Err(match &t.qos {
                    Some(q) => format!("tenant {}: no --qos name={q}", t.name),
                    None => format!(
                        "tenant {}: {} --qos: name its scheduler (qos=NAME)",
                        t.name,
                        specs.len()
                    ),
                });
            }
        }
        Ok(())
    }

    /// The control socket's QoS methods; None for other methods.
    /// Every scheduler's tenants as metrics.
    pub fn expose(&self, e: &mut leapio_service::metrics::Exposition) {
        let devices: Vec<Arc<Qos>> = lock(&self.devices).iter().map(|d| d.qos.clone()).collect();
        for q in devices {
            q.expose(e);
        }
    }

    pub fn handle(&self, method: &str, params: &Value) -> Option<Result<Value, String>> {
        let name = params.get("qos").and_then(Value::as_str);
        let r = match method {
            "qos_stats" => Ok(self.stats(
                name,
                params.get("reset").and_then(Value::as_bool) == Some(true),
            )),
            "qos_tenant_add" => self.tenant_add(params),
            "qos_tenant_remove" => self.tenant_remove(params, name),
            "qos_device" => self.device(params, name),
            _ => return None,
        };
        Some(r)
    }

    fn stats(&self, name: Option<&str>, reset: bool) -> Value {
        let devices: Vec<Arc<Qos>> = lock(&self.devices).iter().map(|d| d.qos.clone()).collect();
        match (name, devices.as_slice()) {
            (_, []) => json!({"qos": "off"}),
            (None, [one]) => one.stats(reset),
            (None, all) => {
                json!({"schedulers": all.iter().map(|q| q.stats(reset)).collect::<Vec<_>>()})
            }
            (Some(n), all) => all.iter().find(|q| q.name == n).map_or_else(
                || json!({"error": format!("no QoS scheduler named {n}")}),
                |q| q.stats(reset),
            ),
        }
    }

    fn tenant_add(&self, params: &Value) -> Result<Value, String> {
        let spec: TenantSpec = params
            .get("spec")
            .and_then(Value::as_str)
            .ok_or("missing string parameter \"spec\"")?
            .parse()?;
        self.find(spec.qos.as_deref())?.tenant_add(spec)
    }

    fn tenant_remove(&self, params: &Value, name: Option<&str>) -> Result<Value, String> {
        let tenant = params
            .get("name")
            .and_then(Value::as_str)
            .ok_or("missing string parameter \"name\"")?;
        let q = match name {
            Some(_) => self.find(name)?,
            None => {
                let devices = lock(&self.devices);
                let with: Vec<&Device> = devices
                    .iter()
                    .filter(|d| d.qos.has_tenant(tenant))
                    .collect();
                match with.as_slice() {
                    [d] => d.qos.clone(),
                    [] => return Err(format!("no QoS tenant {tenant}")),
                    _ => {
                        return Err(format!(
                            "tenant {tenant} is on several schedulers: name one (qos)"
                        ))
                    }
                }
            }
        };
        q.tenant_remove(tenant)
    }

    /// `{"path": FILE[, "qos": NAME, "backend": SPEC, "be_floor": PCT,
    /// "burst_us": N, "lc_burst_us": N, "feedback": ...]}`: load (or
    /// replace) a device model; `{"off": true[, "qos": NAME]}` removes a
    /// scheduler.
    fn device(&self, params: &Value, name: Option<&str>) -> Result<Value, String> {
        if params.get("off").and_then(Value::as_bool) == Some(true) {
            let q = self.find(name)?;
            lock(&self.devices).retain(|d| !Arc::ptr_eq(&d.qos, &q));
            self.attach(&q.backend, None);
            tracing::info!(qos = %q.name, "QoS scheduler off");
            return Ok(json!({"qos": q.name, "off": true}));
        }
        let path = params
            .get("path")
            .and_then(Value::as_str)
            .ok_or("missing string parameter \"path\"")?;
        let model = super::model::DeviceModel::load(std::path::Path::new(path))?;
        let existing = match name {
            Some(n) => lock(&self.devices)
                .iter()
                .find(|d| d.qos.name == n)
                .map(|d| d.qos.clone()),
            None if params.get("backend").is_none() => self.find(None).ok(),
            None => None,
        };
        if let Some(q) = existing {
            q.set_model(model, params)?;
            tracing::info!(qos = %q.name, path, "QoS device model replaced");
            return Ok(json!({"qos": q.name, "backend": q.backend, "device": path}));
        }
        let backend = match params.get("backend").and_then(Value::as_str) {
            Some(b) => backend_key(b)?,
            None => backend_key(&model.backend)
                .map_err(|e| format!("the model's {e}: give \"backend\""))?,
        };
        let name = name.map_or_else(|| self.next_name(), str::to_string);
        let q = self.add(Qos::from_params(&name, &backend, model, params)?)?;
        Ok(json!({"qos": q.name, "backend": q.backend, "device": path}))
    }

    /// Remove every scheduler (tests that configure QoS in one process).
    pub fn clear(&self) {
        let all: Vec<Device> = std::mem::take(&mut *lock(&self.devices));
        for d in all {
            self.attach(&d.qos.backend, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leapio_backends::RamBackend;

    /// A RAM device behind a wrapper whose scheduler gives `rate` tokens
    /// a second to one best-effort tenant of controller `vm`.
    fn device(rate: f64) -> (Arc<QosBackend>, Arc<Qos>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        let m = json!({"write_cost": 4.0, "points": [{"tokens_per_s": rate, "p95_us": 100.0, "p99_us": 200.0}]});
        std::fs::write(&path, m.to_string()).unwrap();
        let spec: QosSpec = format!("device={},burst-us=10", path.display())
            .parse()
            .unwrap();
        let tenant: TenantSpec = "name=t,ctrl=vm,class=be".parse().unwrap();
        let qos = Arc::new(Qos::new("q", "ram:1M", &spec, &[tenant]).unwrap());
        let inner: Arc<dyn Backend> = Arc::new(RamBackend::new(1 << 20, 512).unwrap());
        let b = Arc::new(QosBackend {
            inner,
            state: Arc::new(DeviceState {
                key: "ram:1M".into(),
                sched: ArcSwapOption::from(Some(qos.clone())),
                owners: Mutex::new(Vec::new()),
            }),
        });
        (b, qos, dir)
    }

    #[test]
    fn owners_keep_their_ids() {
        let (b, _q, _dir) = device(1e6);
        let vm = Owner::Controller {
            name: "vm",
            nsid: 1,
        };
        let host = Owner::Host {
            nqn: "nqn.x:h",
            nsid: 1,
        };
        let (a, h) = (b.owner(&vm), b.owner(&host));
        assert!(a != 0 && h != 0 && a != h);
        assert_eq!(b.owner(&vm), a);
    }

    #[test]
    fn a_slow_device_holds_requests_and_a_drain_runs_them() {
        let (b, qos, _dir) = device(10.0);
        let owner = b.owner(&Owner::Controller {
            name: "vm",
            nsid: 1,
        });
        let mut q = b.open_queue(8).unwrap();
        let mut buf = vec![0u8; 4096 * 4];
        for i in 0..4u64 {
            let iov = [libc::iovec {
                iov_base: buf[usize::try_from(i).unwrap() * 4096..]
                    .as_mut_ptr()
                    .cast(),
                iov_len: 4096,
            }];
            let req = IoRequest {
                tag: i,
                kind: IoKind::Read,
                offset: i * 4096,
                len: 4096,
                iov: &iov,
                owner,
                journal: None,
            };
            // SAFETY: `buf` outlives the queue's requests (drained below).
            unsafe { q.submit(&req) }.unwrap();
        }
        // 10 tokens a second: the first read goes, the others wait.
        let mut out = Vec::new();
        q.poll(&mut out);
        assert!(q.held() >= 2, "held {}", q.held());
        assert_eq!(q.in_flight() + out.len(), 4);
        // A drain runs them whatever the tokens; each is the tenant's.
        q.drain(&mut out, Duration::from_secs(5));
        assert_eq!(out.len(), 4);
        assert!(out.iter().all(|c| c.result.is_ok()));
        assert_eq!((q.in_flight(), q.held()), (0, 0));
        let st = qos.stats(false);
        let t = st["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "t")
            .unwrap()
            .clone();
        assert_eq!(t["ios"].as_u64(), Some(4), "{t}");
        assert!(t["throttled_cmds"].as_u64().unwrap() >= 2, "{t}");
    }
}
