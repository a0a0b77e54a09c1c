//! The all-in-one `--ctrl`: `sock=PATH[,name=NAME],ns=BACKEND[,bs=N]...`
//! with the host-driver's keys (limits, serial, socket access).

use leapio_host_driver::{CtrlLimits, HostCtrlSpec};
use leapio_options::Options;
use std::path::Path;
use std::str::FromStr;

/// One controller: what the embedded host-driver serves to the hypervisor
/// and what the runtime gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtrlSpec {
    pub host: HostCtrlSpec,
    pub runtime: socp::config::CtrlSpec,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("controller spec '{spec}': {why}")]
    Invalid { spec: String, why: String },
}

impl FromStr for CtrlSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| SpecError::Invalid {
            spec: leapio_nvme_auth::redact(s),
            why,
        };
        let opts = Options::parse(s, ',').map_err(|e| bad(e.to_string()))?;
        if opts.has("soc") {
            return Err(bad(
                "soc= serves a runtime on an SoC: run leapio-hostd and socp --link pci there"
                    .into(),
            ));
        }
        let known: Vec<&str> = ["sock", "name", "ns", "bs"]
            .into_iter()
            .chain(CtrlLimits::KEYS)
            .collect();
        let once: Vec<&str> = known
            .iter()
            .copied()
            .filter(|k| *k != "ns" && *k != "bs")
            .collect();
        opts.check(&known, &once).map_err(|e| bad(e.to_string()))?;
        let mut host = HostCtrlSpec::new("", Path::new(""));
        for o in opts.iter().filter(|o| o.key != "ns" && o.key != "bs") {
            host.set(o).map_err(|e| bad(e.to_string()))?;
        }
        host.finish().map_err(bad)?;
        let runtime = socp::config::CtrlSpec::from_options(&opts, Some(&host.name)).map_err(bad)?;
        Ok(CtrlSpec { host, runtime })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn host_and_runtime_keys_go_to_their_side() {
        let c: CtrlSpec =
            "sock=/run/x.sock,ns=ram:64M,bs=4096,ns=ram:1G,io-queues=4,queue-entries=256,mdts=6,serial=AB12"
                .parse()
                .unwrap();
        assert_eq!(c.host.sock, PathBuf::from("/run/x.sock"));
        assert_eq!((c.host.name.as_str(), c.runtime.name.as_str()), ("x", "x"));
        assert_eq!(c.runtime.namespaces.len(), 2);
        assert_eq!(c.host.limits.io_queues, 4);
        assert_eq!(c.host.limits.queue_entries, 256);
        assert_eq!(c.host.limits.mdts, 6);
        assert_eq!(c.host.limits.serial.as_deref(), Some("AB12"));
        let named: CtrlSpec = "name=vm0,sock=/s,ns=ram:1M".parse().unwrap();
        assert_eq!(named.runtime.name, "vm0");
    }

    #[test]
    fn errors_name_the_problem() {
        for (spec, why) in [
            ("ns=ram:64M", "missing sock=PATH"),
            ("sock=/x", "at least one ns"),
            ("sock=/x,ns=ram:1M,io-queues=0", "io-queues"),
            ("sock=/x,ns=ram:1M,color=red", "unknown key 'color'"),
            ("sock=/x,ns=floppy:1", "namespace 'floppy:1'"),
            ("sock=/x,bs=4096,ns=ram:1M", "bs= must follow an ns="),
            ("sock=/x,name=a/b,ns=ram:1M", "name must be"),
            (
                "sock=/x,soc=/y,ns=ram:1M",
                "soc= serves a runtime on an SoC",
            ),
        ] {
            let e = spec.parse::<CtrlSpec>().unwrap_err().to_string();
            assert!(e.contains(why), "{spec}: {e}");
            assert!(e.starts_with(&format!("controller spec '{spec}'")), "{e}");
        }
    }
}
