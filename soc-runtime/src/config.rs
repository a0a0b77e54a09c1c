//! Command line: which controllers to serve and what backs their namespaces.

use leapio_host_driver::{CtrlLimits, HostCtrlSpec};
use leapio_transports::BackendSpec;
use std::path::PathBuf;
use std::str::FromStr;

/// One `--ctrl` argument. With a link to a separate host-driver it names
/// the host-driver's controller and gives its namespaces; all-in-one it
/// also says where the hypervisor connects (`sock=`) and the controller's
/// limits (which are otherwise the host-driver's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtrlSpec {
    /// The controller's name on the host-driver (all-in-one: defaults to
    /// the socket file's name).
    pub name: Option<String>,
    pub sock: Option<PathBuf>,
    pub namespaces: Vec<BackendSpec>,
    /// The host-driver's settings (all-in-one: the embedded host-driver's).
    pub limits: CtrlLimits,
    /// Which of them were given, to refuse them with a link.
    pub host_keys: Vec<String>,
}

impl CtrlSpec {
    /// The embedded host-driver's spec of this controller, on `sock`.
    pub fn host_spec(&self, sock: &std::path::Path) -> HostCtrlSpec {
        HostCtrlSpec {
            name: self.ctrl_name(),
            sock: sock.to_path_buf(),
            soc: None,
            limits: self.limits.clone(),
        }
    }

    /// The controller's name: `name=`, else the socket file's stem.
    pub fn ctrl_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        self.sock
            .as_ref()
            .and_then(|p| p.file_stem())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "ctrl".into())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("controller spec '{spec}': {why}")]
    Invalid { spec: String, why: String },
}

impl FromStr for CtrlSpec {
    type Err = ConfigError;

    /// `[name=NAME,][sock=PATH,]ns=BACKEND[,bs=N][,ns=BACKEND...]` and the
    /// host-driver's keys ([`CtrlLimits`]: io-queues, queue-entries, mdts,
    /// serial, sock-mode, sock-owner)
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| ConfigError::Invalid {
            spec: leapio_nvme_auth::redact(s),
            why,
        };
        let mut sock = None;
        let mut name = None;
        let mut host_keys = Vec::new();
        let mut limits = CtrlLimits::default();
        let mut namespaces = Vec::new();
        let mut last_ns: Option<String> = None;
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(bad(format!("'{part}' is not key=value")));
            };
            match key {
                "sock" => sock = Some(PathBuf::from(value)),
                "name" => {
                    if value.is_empty()
                        || value.len() > 64
                        || !value
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                    {
                        return Err(bad(format!(
                            "name must be 1-64 letters, digits, '-', '_' or '.', got '{value}'"
                        )));
                    }
                    name = Some(value.to_string());
                }
                "ns" => {
                    namespaces.push(
                        value
                            .parse::<BackendSpec>()
                            .map_err(|e| bad(format!("namespace '{value}': {e}")))?,
                    );
                    last_ns = Some(value.to_string());
                }
                "bs" => {
                    // Block size of the namespace just before it.
                    let Some(ns) = last_ns.take() else {
                        return Err(bad("bs= must follow an ns=".into()));
                    };
                    let full = format!("{ns},bs={value}");
                    let spec = full
                        .parse::<BackendSpec>()
                        .map_err(|e| bad(format!("namespace '{full}': {e}")))?;
                    if let Some(last) = namespaces.last_mut() {
                        *last = spec;
                    }
                }
                _ => {
                    if !limits.set(key, value).map_err(bad)? {
                        return Err(bad(format!(
                            "unknown key '{key}' (expected name, sock, ns, bs, {})",
                            CtrlLimits::KEYS
                        )));
                    }
                    host_keys.push(key.to_string());
                }
            }
        }
        if sock.is_none() && name.is_none() {
            return Err(bad(
                "missing sock=PATH (all-in-one) or name=NAME (with --link)".into(),
            ));
        }
        if namespaces.is_empty() {
            return Err(bad("needs at least one ns=BACKEND".into()));
        }
        Ok(CtrlSpec {
            name,
            host_keys,
            sock,
            namespaces,
            limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_spec() {
        let c: CtrlSpec = "sock=/run/x.sock,ns=ram:64M,ns=ram:1G,io-queues=4,queue-entries=256,mdts=6,serial=AB12".parse().unwrap();
        assert_eq!(c.sock, Some(PathBuf::from("/run/x.sock")));
        assert_eq!(c.ctrl_name(), "x");
        assert_eq!(
            c.host_keys,
            ["io-queues", "queue-entries", "mdts", "serial"]
        );
        let named: CtrlSpec = "name=vm0,ns=ram:1M".parse().unwrap();
        assert_eq!(
            (named.ctrl_name().as_str(), named.sock.as_ref()),
            ("vm0", None)
        );
        assert_eq!(c.namespaces.len(), 2);
        assert_eq!(c.limits.io_queues, 4);
        assert_eq!(c.limits.queue_entries, 256);
        assert_eq!(c.limits.mdts, 6);
        assert_eq!(c.limits.serial.as_deref(), Some("AB12"));
        let c: CtrlSpec = "sock=/s,ns=ram:64M,bs=4096,ns=ram:1M".parse().unwrap();
        assert_eq!(
            c.namespaces[0],
            BackendSpec::Ram {
                size: 64 << 20,
                block_size: 4096
            }
        );
        assert_eq!(
            c.namespaces[1],
            BackendSpec::Ram {
                size: 1 << 20,
                block_size: 512
            }
        );
        let e = "sock=/s,bs=4096,ns=ram:1M"
            .parse::<CtrlSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("bs= must follow an ns="), "{e}");
    }

    #[test]
    fn errors_name_the_problem() {
        let e = "ns=ram:64M".parse::<CtrlSpec>().unwrap_err().to_string();
        assert!(
            e.contains("missing sock=PATH (all-in-one) or name=NAME"),
            "{e}"
        );
        let e = "name=a/b,ns=ram:1M"
            .parse::<CtrlSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("name must be"), "{e}");
        let e = "sock=/x".parse::<CtrlSpec>().unwrap_err().to_string();
        assert!(e.contains("at least one ns"), "{e}");
        let e = "sock=/x,ns=ram:1M,io-queues=0"
            .parse::<CtrlSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("io-queues"), "{e}");
        let e = "sock=/x,ns=ram:1M,color=red"
            .parse::<CtrlSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key 'color'"), "{e}");
        let e = "sock=/x,ns=floppy:1"
            .parse::<CtrlSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("namespace 'floppy:1'"), "{e}");
    }
}
