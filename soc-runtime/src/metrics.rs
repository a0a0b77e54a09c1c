//! What the runtime tells operators, from one collection: the metrics page
//! (`--metrics`, Prometheus text format) and the control socket's
//! `io_stats` (what `leapioctl top` shows).
//!
//! Namespaces of a host-driver's controllers carry the labels `ctrl` and
//! `nsid`; those of an NVMe over Fabrics target `subsystem` (its NQN) and
//! `nsid`.

use crate::controllers::Controllers;
use crate::fabrics::subsystem::Subsystem;
use crate::io_stats::IoTotals;
use crate::pcie::runtime::Runtime;
use leapio_backend::{Backend, Figure};
use leapio_service::metrics::Exposition;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Where the figures come from.
#[derive(Clone)]
pub struct Sources {
    pub rt: Arc<Runtime>,
    /// The host-driver controllers served (one set per link).
    pub ctrls: Vec<Arc<Controllers>>,
    /// The NVMe over Fabrics targets' subsystems.
    pub targets: Vec<Arc<Subsystem>>,
    /// The host-driver's own metrics, when it runs in this process.
    pub host: Option<Expose>,
}

/// Adds a component's metrics to a page.
pub type Expose = Arc<dyn Fn(&mut Exposition) + Send + Sync>;

/// One namespace's figures.
#[derive(Serialize)]
pub struct NsReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctrl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subsystem: Option<String>,
    pub nsid: u32,
    pub backend: String,
    #[serde(flatten)]
    pub io: IoTotals,
    pub copied_bytes: u64,
    #[serde(skip)]
    figures: Vec<Figure>,
}

/// Everything, at one moment.
#[derive(Serialize)]
pub struct Report {
    pub controllers: Vec<CtrlReport>,
    pub namespaces: Vec<NsReport>,
    /// Each I/O poller's busy time so far (loops that did work).
    pub pollers_busy_ns: Vec<u64>,
    pub targets: Vec<TargetReport>,
}

#[derive(Serialize)]
pub struct CtrlReport {
    pub name: String,
    /// The host-driver has it attached to this runtime.
    pub attached: bool,
}

#[derive(Serialize)]
pub struct TargetReport {
    pub subsystem: String,
    pub listen: String,
    pub connections: u64,
    /// The ANA state reported, if the target reports one.
    pub ana: Option<&'static str>,
}

fn ns_report(
    ctrl: Option<&str>,
    subsystem: Option<&str>,
    nsid: u32,
    backend: &dyn Backend,
    io: IoTotals,
) -> NsReport {
    NsReport {
        ctrl: ctrl.map(str::to_owned),
        subsystem: subsystem.map(str::to_owned),
        nsid,
        backend: backend.describe(),
        io,
        copied_bytes: backend.copied_bytes(),
        figures: backend.figures(),
    }
}

impl Sources {
    /// `target_ana {"nqn": NQN, ["listen": "IP:PORT",] "state":
    /// "optimized"|"non-optimized"|"inaccessible"}`: the ANA state an NVMe
    /// over Fabrics target (one listener: one path) reports; hosts are
    /// told.
    pub fn set_ana(&self, params: &serde_json::Value) -> Result<serde_json::Value, String> {
        let nqn = leapio_service::control::param_str(params, "nqn")?;
        let state =
            crate::fabrics::ana::parse_state(leapio_service::control::param_str(params, "state")?)?;
        let listen = params.get("listen").and_then(serde_json::Value::as_str);
        let sub = self
            .targets
            .iter()
            .find(|s| s.nqn == nqn && listen.is_none_or(|l| s.listen.to_string() == l))
            .ok_or_else(|| {
                format!(
                    "no target serves {nqn}{}",
                    listen.map_or(String::new(), |l| format!(" on {l}"))
                )
            })?;
        sub.ana.set(state)?;
        tracing::info!(
            nqn,
            state = crate::fabrics::ana::state_name(state),
            "ANA state changed"
        );
        Ok(
            serde_json::json!({"nqn": nqn, "state": crate::fabrics::ana::state_name(state), "change": sub.ana.change_count()}),
        )
    }

    /// Collect the figures. The pollers count their busy time from the
    /// first collection on (it costs two clock reads per busy loop).
    pub fn report(&self) -> Report {
        let stats = self.rt.stats();
        stats.enabled.store(true, Ordering::Relaxed);
        let mut controllers = Vec::new();
        let mut namespaces = Vec::new();
        for set in &self.ctrls {
            for (name, attached, nss) in set.namespaces() {
                for n in nss {
                    namespaces.push(ns_report(
                        Some(&name),
                        None,
                        n.info.nsid,
                        n.backend.as_ref(),
                        n.io.totals(),
                    ));
                }
                controllers.push(CtrlReport { name, attached });
            }
        }
        let mut targets = Vec::new();
        for sub in &self.targets {
            for (i, (info, backend)) in sub.namespaces.iter().zip(&sub.backends).enumerate() {
                let io = sub.io.get(i).map(|s| s.totals()).unwrap_or_default();
                namespaces.push(ns_report(
                    None,
                    Some(&sub.nqn),
                    info.nsid,
                    backend.as_ref(),
                    io,
                ));
            }
            targets.push(TargetReport {
                subsystem: sub.nqn.clone(),
                listen: sub.listen.to_string(),
                connections: sub.connections.load(Ordering::Relaxed) as u64,
                ana: sub
                    .ana
                    .enabled()
                    .then(|| crate::fabrics::ana::state_name(sub.ana.state())),
            });
        }
        Report {
            controllers,
            namespaces,
            pollers_busy_ns: stats.busy_ns(),
            targets,
        }
    }

    /// The metrics page.
    pub fn expose(&self, e: &mut Exposition) {
        let r = self.report();
        for c in &r.controllers {
            e.gauge(
                "leapio_runtime_controller_attached",
                "Whether the host-driver has the controller attached to this runtime (1) or not (0).",
                &[("ctrl", &c.name)],
                f64::from(u8::from(c.attached)),
            );
        }
        for t in &r.targets {
            e.gauge(
                "leapio_target_connections",
                "Connections open to the NVMe over Fabrics subsystem.",
                &[("subsystem", &t.subsystem), ("listen", &t.listen)],
                t.connections as f64,
            );
        }
        for n in &r.namespaces {
            let nsid = n.nsid.to_string();
            let labels: Vec<(&str, &str)> = match (&n.ctrl, &n.subsystem) {
                (Some(c), _) => vec![("ctrl", c), ("nsid", &nsid)],
                (None, Some(s)) => vec![("subsystem", s), ("nsid", &nsid)],
                (None, None) => vec![("nsid", &nsid)],
            };
            let l = labels.as_slice();
            let io = &n.io;
            e.counter(
                "leapio_ns_read_commands_total",
                "Read commands completed.",
                l,
                io.reads as f64,
            );
            e.counter(
                "leapio_ns_write_commands_total",
                "Write and Zone Append commands completed.",
                l,
                io.writes as f64,
            );
            e.counter("leapio_ns_other_commands_total", "Other I/O commands completed (Flush, Write Zeroes, Dataset Management, zone management).", l, io.others as f64);
            e.counter(
                "leapio_ns_read_bytes_total",
                "Bytes read by commands that succeeded.",
                l,
                io.read_bytes as f64,
            );
            e.counter(
                "leapio_ns_written_bytes_total",
                "Bytes written by commands that succeeded.",
                l,
                io.written_bytes as f64,
            );
            e.counter(
                "leapio_ns_errors_total",
                "I/O commands completed with an error status.",
                l,
                io.errors as f64,
            );
            e.gauge(
                "leapio_ns_in_flight",
                "I/O commands started and not completed: the queue depth now.",
                l,
                io.in_flight as f64,
            );
            e.latency(
                "leapio_ns_read_latency_seconds",
                "Read latency, from the command's fetch to its completion.",
                l,
                &io.read_latency,
            );
            e.latency(
                "leapio_ns_write_latency_seconds",
                "Write latency, from the command's fetch to its completion.",
                l,
                &io.write_latency,
            );
            e.counter("leapio_ns_copied_bytes_total", "Bytes of I/O data the backend's CPU copied (0 when a device moves the data itself).", l, n.copied_bytes as f64);
            for f in &n.figures {
                let name = format!("leapio_backend_{}", f.name);
                if f.counter {
                    e.counter(&name, f.help, l, f.value);
                } else {
                    e.gauge(&name, f.help, l, f.value);
                }
            }
        }
        for (i, ns) in r.pollers_busy_ns.iter().enumerate() {
            e.counter(
                "leapio_poller_busy_seconds_total",
                "Time the I/O poller spent in loops that did work (counted from the first scrape or io_stats on).",
                &[("poller", &i.to_string())],
                *ns as f64 / 1e9,
            );
        }
        crate::qos::registry().expose(e);
        if let Some(h) = &self.host {
            h(e);
        }
    }
}
