//! The controllers this runtime serves, as the operator configured them
//! (`--ctrl`, or the control socket while running): attached over the
//! current link, re-attached when the link comes back, added and removed
//! at run time, with namespaces added and removed too.

use crate::config::CtrlSpec;
use crate::error_chain;
use crate::link::client::LinkClient;
use crate::namespaces::open_served;
use crate::pcie::controller::Namespace;
use leapio_backends::BackendSpec;
use leapio_service::control::{param_str, Handler};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How long an attach may take (the host-driver may be waiting for a
/// previous runtime to be fenced).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

/// One controller: its name on the host-driver and its namespaces by NSID.
#[derive(Clone, Debug)]
pub struct Served {
    pub name: String,
    pub namespaces: Vec<(u32, BackendSpec)>,
}

impl Served {
    pub fn of(spec: &CtrlSpec) -> Served {
        Served {
            name: spec.name.clone(),
            namespaces: spec
                .namespaces
                .iter()
                .enumerate()
                .map(|(i, b)| (u32::try_from(i + 1).unwrap_or(u32::MAX), b.clone()))
                .collect(),
        }
    }
}

/// The runtime's controllers.
pub struct Controllers {
    served: Mutex<Vec<Served>>,
    client: Mutex<Option<Arc<LinkClient>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Controllers {
    pub fn new(served: Vec<Served>) -> Arc<Controllers> {
        Arc::new(Controllers {
            served: Mutex::new(served),
            client: Mutex::new(None),
        })
    }

    /// Serve `c` too (before the link is connected).
    pub fn serve(&self, c: Served) {
        lock(&self.served).push(c);
    }

    /// The link in use (after a reconnection, the new one).
    pub fn set_client(&self, c: Option<Arc<LinkClient>>) {
        *lock(&self.client) = c;
    }

    fn client(&self) -> Result<Arc<LinkClient>, String> {
        lock(&self.client)
            .clone()
            .ok_or_else(|| "no link to a host-driver".to_string())
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.served).is_empty()
    }

    /// Attach one controller over the current link and wait for the answer.
    fn attach(&self, s: &Served, handover: bool, stop: &AtomicBool) -> Result<(), String> {
        let client = self.client()?;
        // Taking over from a runtime that still holds the backends: claim
        // them once it has let go (after the attach).
        let ns = open_served(&s.namespaces, &s.name, !handover).map_err(|(nsid, e)| {
            format!(
                "controller {}: namespace {nsid}: {}",
                s.name,
                error_chain(&e)
            )
        })?;
        let rx = client.attach(&s.name, ns, handover);
        let deadline = std::time::Instant::now() + ATTACH_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(r) => return r.map_err(|why| format!("controller {}: {why}", s.name)),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    if !stop.load(Ordering::Acquire) && std::time::Instant::now() < deadline => {}
                Err(_) => {
                    return Err(format!(
                        "controller {}: no answer from the host-driver",
                        s.name
                    ))
                }
            }
        }
    }

    /// Attach every controller (at start, or after the link came back).
    pub fn attach_all(&self, handover: bool, stop: &AtomicBool) -> Result<(), String> {
        let served = lock(&self.served).clone();
        for s in &served {
            self.attach(s, handover, stop)?;
        }
        Ok(())
    }

    /// Serve one more controller (the control socket's `ctrl_add`).
    pub fn add(&self, spec: &CtrlSpec) -> Result<Value, String> {
        let s = Served::of(spec);
        if lock(&self.served).iter().any(|x| x.name == s.name) {
            return Err(format!("controller {} is served already", s.name));
        }
        let never = AtomicBool::new(false);
        self.attach(&s, false, &never)?;
        lock(&self.served).push(s.clone());
        Ok(json!({ "name": s.name }))
    }

    /// Stop serving a controller (`ctrl_remove`): its queues drain and the
    /// host-driver is told.
    pub fn remove(&self, name: &str) -> Result<Value, String> {
        self.forget(name)?;
        if let Ok(c) = self.client() {
            c.detach(name);
        }
        Ok(json!(true))
    }

    /// Stop re-attaching controller `name` (the all-in-one: its embedded
    /// host-driver removes the controller and lets the runtime go).
    pub fn forget(&self, name: &str) -> Result<(), String> {
        let mut served = lock(&self.served);
        let Some(i) = served.iter().position(|s| s.name == name) else {
            return Err(format!("controller {name} is not served"));
        };
        served.remove(i);
        Ok(())
    }

    /// Add a namespace to a served controller (`ns_add`): the next NSID.
    pub fn ns_add(&self, ctrl: &str, ns: &str) -> Result<Value, String> {
        let spec: BackendSpec = ns.parse().map_err(|e| format!("namespace '{ns}': {e}"))?;
        let client = self.client()?;
        let nsid = client.nsids(ctrl).into_iter().max().unwrap_or(0) + 1;
        let mut opened = open_served(&[(nsid, spec.clone())], ctrl, true)
            .map_err(|(nsid, e)| format!("namespace {nsid}: {}", error_chain(&e)))?;
        let n = opened.pop().ok_or("no namespace opened")?;
        client.ns_add(ctrl, n)?;
        if let Some(s) = lock(&self.served).iter_mut().find(|s| s.name == ctrl) {
            s.namespaces.push((nsid, spec));
        }
        Ok(json!({ "ctrl": ctrl, "nsid": nsid }))
    }

    /// Remove namespace `nsid` of a served controller (`ns_remove`).
    pub fn ns_remove(&self, ctrl: &str, nsid: u32) -> Result<Value, String> {
        self.client()?.ns_remove(ctrl, nsid)?;
        if let Some(s) = lock(&self.served).iter_mut().find(|s| s.name == ctrl) {
            s.namespaces.retain(|(n, _)| *n != nsid);
        }
        Ok(json!(true))
    }

    /// Each controller served: its name, whether it is attached, and the
    /// namespaces the runtime serves for it now.
    pub fn namespaces(&self) -> Vec<(String, bool, Vec<Arc<Namespace>>)> {
        let client = lock(&self.client).clone();
        let served = client.as_ref().map(|c| c.served()).unwrap_or_default();
        lock(&self.served)
            .iter()
            .map(|s| {
                let ns = client
                    .as_ref()
                    .map_or_else(Vec::new, |c| c.namespaces(&s.name));
                (s.name.clone(), served.contains(&s.name), ns)
            })
            .collect()
    }

    /// `service {ctrl, nsid[, action, child]}`: the state of the storage
    /// service a namespace is (a mirror's children and resync), or an
    /// action on one of its children (fail, readd, rebuild).
    pub fn service(&self, params: &Value) -> Result<Value, String> {
        let ctrl = param_str(params, "ctrl")?;
        let nsid = params
            .get("nsid")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or("missing number parameter \"nsid\"")?;
        let ns = self
            .namespaces()
            .into_iter()
            .find(|(name, _, _)| name == ctrl)
            .and_then(|(_, _, nss)| nss.into_iter().find(|n| n.info.nsid == nsid))
            .ok_or_else(|| format!("controller {ctrl} serves no namespace {nsid} here"))?;
        let svc = ns.backend.service().ok_or_else(|| {
            format!(
                "namespace {nsid} of {ctrl} is no service with children to operate ({})",
                ns.backend.describe()
            )
        })?;
        match params.get("action").and_then(Value::as_str) {
            None => serde_json::from_str(&svc.state()).map_err(|e| e.to_string()),
            Some(action) => {
                // "args": strings; "child": a number (the older form).
                let args: Vec<String> = match (params.get("args"), params.get("child")) {
                    (Some(Value::Array(a)), _) => a
                        .iter()
                        .map(|v| match v {
                            Value::String(s) => Ok(s.clone()),
                            Value::Number(n) => Ok(n.to_string()),
                            _ => Err("parameter \"args\": strings or numbers only"),
                        })
                        .collect::<Result<_, _>>()?,
                    (None, Some(Value::Number(n))) => vec![n.to_string()],
                    (None, None) => Vec::new(),
                    _ => return Err("parameter \"args\" must be an array".into()),
                };
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let done = svc.control(action, &args)?;
                tracing::info!(ctrl, nsid, action, args = ?args, "{done}");
                Ok(json!({ "done": done }))
            }
        }
    }

    /// What is served.
    pub fn status(&self) -> Value {
        let client = lock(&self.client).clone();
        let served: Vec<Value> = lock(&self.served)
            .iter()
            .map(|s| {
                let states = client
                    .as_ref()
                    .map_or_else(Vec::new, |c| c.ns_states(&s.name));
                let namespaces: Vec<Value> = s
                    .namespaces
                    .iter()
                    .map(|(n, b)| {
                        let st = states.iter().find(|st| st.nsid == *n);
                        json!({
                            "nsid": n,
                            "backend": b.to_string(),
                            "state": st.map(|st| &st.describe),
                            "copied_bytes": st.map(|st| st.copied_bytes),
                        })
                    })
                    .collect();
                json!({
                    "name": s.name,
                    "attached": client.as_ref().is_some_and(|c| c.served().contains(&s.name)),
                    "write_cache": client.as_ref().and_then(|c| c.write_cache(&s.name)),
                    "namespaces": namespaces,
                })
            })
            .collect();
        let busy = client
            .as_ref()
            .map(|c| c.runtime().stats().clone())
            .filter(|s| s.enabled.load(std::sync::atomic::Ordering::Relaxed))
            .map(|s| s.busy_ns());
        json!({
            "host_driver": client.as_ref().map(|c| c.host().to_string()),
            "controllers": served,
            "pollers_busy_ns": busy,
        })
    }

    /// The control socket's methods.
    /// One control socket for several sets (the link functions of an SoC,
    /// each with its controller): `status` lists every set's controllers;
    /// other methods go to each set in turn until one takes them.
    pub fn handler_of_all(sets: Vec<Arc<Controllers>>) -> Handler {
        let handlers: Vec<Handler> = sets.iter().map(Controllers::handler).collect();
        Arc::new(move |method, params| {
            if method == "status" {
                let all: Vec<Value> = sets.iter().map(|c| c.status()).collect();
                let controllers: Vec<Value> = all
                    .iter()
                    .filter_map(|s| s["controllers"].as_array())
                    .flatten()
                    .cloned()
                    .collect();
                let host = all
                    .iter()
                    .find_map(|s| s["host_driver"].as_str().map(str::to_owned));
                // The pollers are the process's: any set says the same.
                let busy = all
                    .iter()
                    .map(|s| s["pollers_busy_ns"].clone())
                    .find(|b| !b.is_null());
                return Ok(json!({
                    "host_driver": host,
                    "controllers": controllers,
                    "pollers_busy_ns": busy,
                }));
            }
            let mut last = Err(format!("unknown method {method}"));
            for h in &handlers {
                last = h(method, params);
                if last.is_ok() {
                    break;
                }
            }
            last
        })
    }

    pub fn handler(self: &Arc<Self>) -> Handler {
        let me = self.clone();
        Arc::new(move |method, params| {
            match method {
            "ctrl_add" => {
                let spec: CtrlSpec = param_str(params, "spec")?
                    .parse()
                    .map_err(|e: crate::config::ConfigError| e.to_string())?;
                me.add(&spec)
            }
            "ctrl_remove" => me.remove(param_str(params, "name")?),
            "ns_add" => me.ns_add(param_str(params, "ctrl")?, param_str(params, "ns")?),
            "ns_remove" => {
                let nsid = params
                    .get("nsid")
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or("missing number parameter \"nsid\"")?;
                me.ns_remove(param_str(params, "ctrl")?, nsid)
            }
            "status" => Ok(me.status()),
            "service" => me.service(params),
            _ => Err(format!(
                "unknown method {method} (ctrl_add, ctrl_remove, ns_add, ns_remove, status, service)"
            )),
        }
        })
    }
}
