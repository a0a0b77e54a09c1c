//! Command line: which controllers to serve and what backs their namespaces.

use leapio_backends::BackendSpec;
use leapio_options::{OptionError, Options};
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

/// The namespaces of `opts`, in order: each `ns=BACKEND`, with the block
/// size of a `bs=N` right after it (a backend spec may hold commas of its
/// own, so `bs` is an option of the namespace string).
pub fn namespaces(opts: &Options<'_>) -> Result<Vec<BackendSpec>, String> {
    let mut namespaces: Vec<BackendSpec> = Vec::new();
    let mut last_ns: Option<&str> = None;
    for o in opts.iter() {
        match o.key {
            "ns" => {
                let spec = o
                    .value
                    .parse::<BackendSpec>()
                    .map_err(|e| format!("namespace '{}': {e}", o.value))?;
                namespaces.push(spec);
                last_ns = Some(o.value);
                continue;
            }
            "bs" => {
                let Some(ns) = last_ns.take() else {
                    return Err("bs= must follow an ns=".into());
                };
                let full = format!("{ns},bs={}", o.value);
                let spec = full
                    .parse::<BackendSpec>()
                    .map_err(|e| format!("namespace '{full}': {e}"))?;
                if let Some(last) = namespaces.last_mut() {
                    *last = spec;
                }
            }
            _ => {}
        }
        last_ns = None;
    }
    if namespaces.is_empty() {
        return Err("needs at least one ns=BACKEND".into());
    }
    Ok(namespaces)
}

impl CtrlSpec {
    /// The keys of a runtime's `--ctrl`.
    pub const KEYS: [&'static str; 3] = ["name", "ns", "bs"];

    /// A controller from `opts`' `name`, `ns` and `bs` options (others are
    /// the caller's); `name` when the options have none.
    pub fn from_options(opts: &Options<'_>, name: Option<&str>) -> Result<CtrlSpec, String> {
        let namespaces = namespaces(opts)?;
        let name = match opts.get("name") {
            Some(o) => o.value,
            None => name.ok_or("missing name=NAME (the host-driver's controller)")?,
        };
        leapio_link::proto::check_ctrl_name(name)?;
        Ok(CtrlSpec {
            name: name.to_string(),
            namespaces,
        })
    }
}

impl FromStr for CtrlSpec {
    type Err = ConfigError;

    /// `name=NAME,ns=BACKEND[,bs=N][,ns=BACKEND...]`
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| ConfigError::Invalid {
            spec: leapio_nvme_auth::redact(s),
            why,
        };
        let opts = Options::parse(s, ',').map_err(|e| bad(e.to_string()))?;
        opts.check(&CtrlSpec::KEYS, &["name"]).map_err(|e| match e {
            OptionError::Unknown { .. } => bad(format!(
                "{e}; the socket, limits and serial are the host side's: leapio-hostd --ctrl, or leapio --ctrl all-in-one"
            )),
            e => bad(e.to_string()),
        })?;
        CtrlSpec::from_options(&opts, None).map_err(bad)
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
