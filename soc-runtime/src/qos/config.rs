//! `--qos` and `--tenant` specifications.

use super::model::Slo;
use leapio_backend::Owner;
use leapio_options::{Opt, OptionError, Options};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Default bucket depth of LC tenants (microseconds of their rate).
pub const DEFAULT_LC_BURST_US: u64 = 50_000;

/// Who a tenant is: the I/O it covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Selector {
    /// A vfio-user controller (by name), optionally one namespace of it.
    Ctrl { name: String, nsid: Option<u32> },
    /// An NVMe/TCP host (by host NQN), optionally one namespace.
    Host { nqn: String, nsid: Option<u32> },
}

impl Selector {
    /// Does I/O of `who` (a controller's or a host's namespace) belong here?
    pub fn matches(&self, who: &Owner<'_>) -> bool {
        match (self, who) {
            (Selector::Ctrl { name, nsid }, Owner::Controller { name: n, nsid: i })
            | (Selector::Host { nqn: name, nsid }, Owner::Host { nqn: n, nsid: i }) => {
                name == n && nsid.is_none_or(|x| x == *i)
            }
            _ => false,
        }
    }

    /// Namespace-specific selectors win over whole-controller ones.
    pub fn specific(&self) -> bool {
        match self {
            Selector::Ctrl { nsid, .. } | Selector::Host { nsid, .. } => nsid.is_some(),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (k, v, nsid) = match self {
            Selector::Ctrl { name, nsid } => ("ctrl", name, nsid),
            Selector::Host { nqn, nsid } => ("hostnqn", nqn, nsid),
        };
        write!(f, "{k}={v}")?;
        if let Some(n) = nsid {
            write!(f, ",ns={n}")?;
        }
        Ok(())
    }
}

/// Latency-critical or best-effort.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Class {
    /// A tail-latency SLO and a reserved rate at a read/write mix.
    Lc {
        slo: Slo,
        iops: u64,
        /// Percentage of reads in the reserved mix.
        read_pct: u32,
    },
    /// The rest of the device, shared with the other BE tenants in
    /// proportion to `weight`.
    Be { weight: u32 },
}

/// `name=NAME,ctrl=CTRL|hostnqn=NQN[,ns=NSID],class=lc,slo=p95:500us,iops=N[,rw=R:W]`
/// or `name=NAME,ctrl=...|hostnqn=...[,ns=NSID],class=be[,weight=N]`, and
/// `qos=NAME` for the device scheduler it belongs to (needed when there
/// are several).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TenantSpec {
    pub name: String,
    /// The device scheduler (`--qos name=`) the tenant belongs to.
    pub qos: Option<String>,
    pub selector: Selector,
    pub class: Class,
}

impl FromStr for TenantSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<TenantSpec, String> {
        let bad = |why: String| format!("tenant '{s}': {why}");
        let opts = Options::parse(s, ',').map_err(|e| bad(e.to_string()))?;
        opts.check_once(&[
            "name", "qos", "ctrl", "hostnqn", "ns", "class", "slo", "iops", "rw", "weight",
        ])
        .map_err(|e| bad(e.to_string()))?;
        let e = |e: OptionError| bad(e.to_string());
        let text = |k: &str| opts.get(k).map(|o| o.value.to_string());
        let nsid = opts
            .get("ns")
            .map(|o| o.number(1..=u32::MAX))
            .transpose()
            .map_err(e)?;
        let selector = match (text("ctrl"), text("hostnqn")) {
            (Some(name), None) => Selector::Ctrl { name, nsid },
            (None, Some(nqn)) => Selector::Host { nqn, nsid },
            _ => return Err(bad("give exactly one of ctrl= and hostnqn=".into())),
        };
        let slo = opts
            .get("slo")
            .map(|o| o.parse::<Slo>())
            .transpose()
            .map_err(e)?;
        let iops = opts
            .get("iops")
            .map(|o| o.number(0..=u64::MAX))
            .transpose()
            .map_err(e)?;
        let read_pct = match opts.get("rw") {
            None => None,
            Some(o) => Some(
                o.value
                    .split_once(':')
                    .and_then(|(r, w)| Some((r.parse::<u32>().ok()?, w.parse::<u32>().ok()?)))
                    .filter(|(r, w)| r + w == 100)
                    .map(|(r, _)| r)
                    .ok_or_else(|| {
                        e(o.invalid("must be READ:WRITE percentages adding to 100 (e.g. 90:10)"))
                    })?,
            ),
        };
        let weight = opts
            .get("weight")
            .map(|o| o.number(1..=1000))
            .transpose()
            .map_err(e)?;
        let class = match opts.get("class").map(|o| o.value) {
            Some("lc") => {
                let slo = slo.ok_or_else(|| bad("class=lc needs slo=".into()))?;
                let iops = iops
                    .filter(|i| *i > 0)
                    .ok_or_else(|| bad("class=lc needs iops= (> 0)".into()))?;
                if weight.is_some() {
                    return Err(bad("weight= is for class=be".into()));
                }
                Class::Lc {
                    slo,
                    iops,
                    read_pct: read_pct.unwrap_or(100),
                }
            }
            Some("be") | None => {
                if slo.is_some() || iops.is_some() || read_pct.is_some() {
                    return Err(bad("slo=, iops= and rw= are for class=lc".into()));
                }
                Class::Be {
                    weight: weight.unwrap_or(1),
                }
            }
            Some(c) => return Err(bad(format!("class must be lc or be, not {c}"))),
        };
        Ok(TenantSpec {
            name: text("name").unwrap_or_else(|| selector.to_string()),
            qos: text("qos"),
            selector,
            class,
        })
    }
}

/// `--qos device=FILE[,name=NAME][,backend=SPEC][,be-floor=PCT][,burst-us=N][,lc-burst-us=N][,feedback=...]`.
#[derive(Clone, Debug, PartialEq)]
pub struct QosSpec {
    /// The device model.
    pub device: PathBuf,
    /// The scheduler's name (tenants name it with `qos=`).
    pub name: Option<String>,
    /// The backend it protects (a backend spec without commas); default:
    /// the one the model was calibrated on.
    pub backend: Option<String>,
    /// Share of the device's rate that LC reservations may not take (so
    /// that best effort never starves), in percent.
    pub be_floor_pct: u32,
    /// Bucket depth of BE tenants in microseconds of their rate.
    pub burst_us: u64,
    /// Bucket depth of LC tenants in microseconds of their rate.
    pub lc_burst_us: u64,
    /// The feedback's target; None: off.
    pub feedback: Option<super::feedback::Target>,
}

impl FromStr for QosSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<QosSpec, String> {
        let bad = |why: String| format!("--qos '{s}': {why}");
        let opts = Options::parse(s, ',').map_err(|e| bad(e.to_string()))?;
        opts.check_once(&[
            "device",
            "name",
            "backend",
            "be-floor",
            "burst-us",
            "lc-burst-us",
            "feedback",
        ])
        .map_err(|e| bad(e.to_string()))?;
        let e = |e: OptionError| bad(e.to_string());
        let mut q = QosSpec {
            device: PathBuf::from(opts.require("device", "device=FILE").map_err(e)?.value),
            name: opts.get("name").map(|o| o.value.to_string()),
            backend: opts.get("backend").map(|o| o.value.to_string()),
            be_floor_pct: 5,
            burst_us: 1000,
            lc_burst_us: DEFAULT_LC_BURST_US,
            feedback: Some(super::feedback::Target::Auto),
        };
        if let Some(o) = opts.get("be-floor") {
            // A percentage; best effort must never starve.
            let pct = Opt {
                value: o.value.trim_end_matches('%'),
                ..o
            };
            q.be_floor_pct = pct.number(1..=99).map_err(e)?;
        }
        if let Some(o) = opts.get("burst-us") {
            q.burst_us = o.number(10..=1_000_000).map_err(e)?;
        }
        if let Some(o) = opts.get("lc-burst-us") {
            q.lc_burst_us = o.number(10..=10_000_000).map_err(e)?;
        }
        if let Some(o) = opts.get("feedback") {
            q.feedback = super::feedback::Target::parse(o.value).map_err(bad)?;
        }
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qos::feedback::Target;
    use crate::qos::model::Pct;

    #[test]
    fn tenant_specs_parse() {
        let t: TenantSpec = "name=db,ctrl=vm0,class=lc,slo=p95:500us,iops=20000,rw=90:10"
            .parse()
            .unwrap();
        assert_eq!(t.name, "db");
        assert_eq!(
            t.selector,
            Selector::Ctrl {
                name: "vm0".into(),
                nsid: None
            }
        );
        assert_eq!(
            t.class,
            Class::Lc {
                slo: Slo {
                    pct: Pct::P95,
                    us: 500
                },
                iops: 20000,
                read_pct: 90
            }
        );
        let t: TenantSpec = "hostnqn=nqn.x:h1,ns=2,class=be,weight=3".parse().unwrap();
        assert_eq!(t.name, "hostnqn=nqn.x:h1,ns=2");
        assert_eq!(t.class, Class::Be { weight: 3 });
        assert!(t.selector.matches(&Owner::Host {
            nqn: "nqn.x:h1",
            nsid: 2
        }));
        assert!(!t.selector.matches(&Owner::Host {
            nqn: "nqn.x:h1",
            nsid: 1
        }));
        assert!(!t.selector.matches(&Owner::Controller {
            name: "nqn.x:h1",
            nsid: 2
        }));
        for bad in [
            "name=a,class=lc,slo=p95:1ms,iops=5",          // no selector
            "ctrl=a,hostnqn=b",                            // two selectors
            "ctrl=a,class=lc,iops=5",                      // no slo
            "ctrl=a,class=lc,slo=p95:1ms",                 // no iops
            "ctrl=a,class=lc,slo=p95:1ms,iops=5,rw=90:20", // not 100
            "ctrl=a,class=be,iops=5",                      // lc keys on be
            "ctrl=a,class=xx",
            "ctrl=a,ns=0",
            "ctrl=a,color=red",
        ] {
            assert!(bad.parse::<TenantSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn qos_spec_parses() {
        let q: QosSpec = "device=/tmp/d.json,be-floor=10,burst-us=500"
            .parse()
            .unwrap();
        assert_eq!(q.device, PathBuf::from("/tmp/d.json"));
        assert_eq!((q.be_floor_pct, q.burst_us), (10, 500));
        let q: QosSpec = "device=x".parse().unwrap();
        assert_eq!((q.be_floor_pct, q.burst_us), (5, 1000));
        assert_eq!(q.lc_burst_us, 50_000);
        let q: QosSpec = "device=x,lc-burst-us=2000".parse().unwrap();
        assert_eq!(q.lc_burst_us, 2000);
        assert_eq!(q.feedback, Some(Target::Auto));
        let q: QosSpec = "device=x,feedback=off".parse().unwrap();
        assert_eq!(q.feedback, None);
        let q: QosSpec = "device=x,feedback=60%".parse().unwrap();
        assert_eq!(q.feedback, Some(Target::Pct(60)));
        let q: QosSpec = "device=x,feedback=auto".parse().unwrap();
        assert_eq!(q.feedback, Some(Target::Auto));
        assert!("device=x,feedback=5".parse::<QosSpec>().is_err());
        assert!("device=x,feedback=on".parse::<QosSpec>().is_err());
        assert!("be-floor=5".parse::<QosSpec>().is_err());
        assert!("device=x,be-floor=100".parse::<QosSpec>().is_err());
        assert!("device=x,be-floor=0".parse::<QosSpec>().is_err());
    }
}
