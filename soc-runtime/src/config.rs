//! Command line: which controllers to serve and what backs their namespaces.

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
    pub io_queues: u16,
    pub queue_entries: u32,
    pub mdts: u8,
    pub serial: Option<String>,
    /// Which of the host-driver's settings were given (io-queues,
    /// queue-entries, mdts, serial), to refuse them with a link.
    pub host_keys: Vec<&'static str>,
}

impl CtrlSpec {
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

    /// `[name=NAME,][sock=PATH,]ns=BACKEND[,bs=N][,ns=BACKEND...][,io-queues=N][,queue-entries=N][,mdts=N][,serial=S]`
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| ConfigError::Invalid {
            spec: leapio_nvme_auth::redact(s),
            why,
        };
        let mut sock = None;
        let mut name = None;
        let mut host_keys = Vec::new();
        let mut namespaces = Vec::new();
        let mut io_queues = 32u16;
        let mut queue_entries = 1024u32;
        let mut mdts = 5u8;
        let mut serial = None;
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
                        || !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                    {
                        return Err(bad(format!("name must be 1-64 letters, digits, '-', '_' or '.', got '{value}'")));
                    }
                    name = Some(value.to_string());
                }
                "ns" => {
                    namespaces.push(value.parse::<BackendSpec>().map_err(|e| bad(format!("namespace '{value}': {e}")))?);
                    last_ns = Some(value.to_string());
                }
                "bs" => {
                    // Block size of the namespace just before it.
                    let Some(ns) = last_ns.take() else {
                        return Err(bad("bs= must follow an ns=".into()));
                    };
                    let full = format!("{ns},bs={value}");
                    let spec = full.parse::<BackendSpec>().map_err(|e| bad(format!("namespace '{full}': {e}")))?;
                    if let Some(last) = namespaces.last_mut() {
                        *last = spec;
                    }
                }
                "io-queues" => {
                    host_keys.push("io-queues");
                    io_queues = value.parse().ok().filter(|n| (1..=511).contains(n)).ok_or_else(|| bad(format!("io-queues must be 1..=511, got '{value}'")))?
                }
                "queue-entries" => {
                    host_keys.push("queue-entries");
                    queue_entries = value
                        .parse()
                        .ok()
                        .filter(|n| (2..=4096).contains(n))
                        .ok_or_else(|| bad(format!("queue-entries must be 2..=4096, got '{value}'")))?
                }
                "mdts" => {
                    host_keys.push("mdts");
                    mdts = value.parse().ok().filter(|n| (1..=10).contains(n)).ok_or_else(|| bad(format!("mdts must be 1..=10 (4 KiB << mdts), got '{value}'")))?
                }
                "serial" => {
                    host_keys.push("serial");
                    leapio_nvme::controller::check_serial(value).map_err(bad)?;
                    serial = Some(value.to_string());
                }
                other => return Err(bad(format!("unknown key '{other}' (expected name, sock, ns, io-queues, queue-entries, mdts, serial)"))),
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
            io_queues,
            queue_entries,
            mdts,
            serial,
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
        assert_eq!(c.io_queues, 4);
        assert_eq!(c.queue_entries, 256);
        assert_eq!(c.mdts, 6);
        assert_eq!(c.serial.as_deref(), Some("AB12"));
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
