//! Command line: which controllers to serve and what backs their namespaces.

use leapio_transports::BackendSpec;
use std::path::PathBuf;
use std::str::FromStr;

/// One `--ctrl` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtrlSpec {
    pub sock: PathBuf,
    pub namespaces: Vec<BackendSpec>,
    pub io_queues: u16,
    pub queue_entries: u32,
    pub mdts: u8,
    pub serial: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("controller spec '{spec}': {why}")]
    Invalid { spec: String, why: String },
}

impl FromStr for CtrlSpec {
    type Err = ConfigError;

    /// `sock=PATH,ns=BACKEND[,bs=N][,ns=BACKEND...][,io-queues=N][,queue-entries=N][,mdts=N][,serial=S]`
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| ConfigError::Invalid {
            spec: s.to_string(),
            why,
        };
        let mut sock = None;
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
                    io_queues = value.parse().ok().filter(|n| (1..=511).contains(n)).ok_or_else(|| bad(format!("io-queues must be 1..=511, got '{value}'")))?
                }
                "queue-entries" => {
                    queue_entries = value
                        .parse()
                        .ok()
                        .filter(|n| (2..=4096).contains(n))
                        .ok_or_else(|| bad(format!("queue-entries must be 2..=4096, got '{value}'")))?
                }
                "mdts" => {
                    mdts = value.parse().ok().filter(|n| (1..=10).contains(n)).ok_or_else(|| bad(format!("mdts must be 1..=10 (4 KiB << mdts), got '{value}'")))?
                }
                "serial" => {
                    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(bad(format!("serial must be 1-20 printable ASCII characters, got '{value}'")));
                    }
                    serial = Some(value.to_string());
                }
                other => return Err(bad(format!("unknown key '{other}' (expected sock, ns, io-queues, queue-entries, mdts, serial)"))),
            }
        }
        let sock = sock.ok_or_else(|| bad("missing sock=PATH".into()))?;
        if namespaces.is_empty() {
            return Err(bad("needs at least one ns=BACKEND".into()));
        }
        Ok(CtrlSpec {
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
        assert_eq!(c.sock, PathBuf::from("/run/x.sock"));
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
        assert!(e.contains("missing sock"), "{e}");
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
