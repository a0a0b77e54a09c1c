//! Command line: which controllers to serve and what backs their namespaces.

use leapio_backends::BackendSpec;
use std::str::FromStr;

/// One `--ctrl` argument of the runtime: the host-driver's controller to
/// serve (by name) and the namespaces the runtime gives it. The
/// controller's limits, its serial and the socket the hypervisor connects
/// to are the host side's (`leapio-hostd --ctrl`, or the all-in-one
/// `leapio --ctrl`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtrlSpec {
    /// The controller's name on the host-driver.
    pub name: String,
    pub namespaces: Vec<BackendSpec>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("controller spec '{spec}': {why}")]
    Invalid { spec: String, why: String },
}

impl FromStr for CtrlSpec {
    type Err = ConfigError;

    /// `name=NAME,ns=BACKEND[,bs=N][,ns=BACKEND...]`
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| ConfigError::Invalid {
            spec: leapio_nvme_auth::redact(s),
            why,
        };
        let mut name = None;
        let mut namespaces = Vec::new();
        let mut last_ns: Option<String> = None;
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(bad(format!("'{part}' is not key=value")));
            };
            match key {
                "name" => {
                    leapio_link::proto::check_ctrl_name(value).map_err(bad)?;
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
                    return Err(bad(format!(
                        "unknown key '{key}' (expected name, ns, bs; the socket, limits and serial are the host side's: leapio-hostd --ctrl, or leapio --ctrl all-in-one)"
                    )))
                }
            }
        }
        let Some(name) = name else {
            return Err(bad(
                "missing name=NAME (the host-driver's controller)".into()
            ));
        };
        if namespaces.is_empty() {
            return Err(bad("needs at least one ns=BACKEND".into()));
        }
        Ok(CtrlSpec { name, namespaces })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_spec() {
        let c: CtrlSpec = "name=vm0,ns=ram:64M,bs=4096,ns=ram:1M".parse().unwrap();
        assert_eq!(c.name, "vm0");
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
        let e = "name=a,bs=4096,ns=ram:1M"
            .parse::<CtrlSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("bs= must follow an ns="), "{e}");
    }

    #[test]
    fn errors_name_the_problem() {
        let e = "ns=ram:64M".parse::<CtrlSpec>().unwrap_err().to_string();
        assert!(e.contains("missing name=NAME"), "{e}");
        let e = "name=a/b,ns=ram:1M"
            .parse::<CtrlSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("name must be"), "{e}");
        let e = "name=x".parse::<CtrlSpec>().unwrap_err().to_string();
        assert!(e.contains("at least one ns"), "{e}");
        for host_key in ["sock=/x", "io-queues=4"] {
            let e = format!("name=x,ns=ram:1M,{host_key}")
                .parse::<CtrlSpec>()
                .unwrap_err()
                .to_string();
            assert!(e.contains("the host side's"), "{e}");
        }
        let e = "name=x,ns=floppy:1"
            .parse::<CtrlSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("namespace 'floppy:1'"), "{e}");
    }
}
