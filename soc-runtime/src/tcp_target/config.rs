//! `--tcp-target listen=ADDR,nqn=NQN,ns=BACKEND[,bs=N]...[,allow=HOSTNQN...]`.

use leapio_transports::BackendSpec;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// One `--tcp-target` argument: a listener and the subsystem it exports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpTargetSpec {
    pub listen: SocketAddr,
    pub nqn: String,
    pub namespaces: Vec<BackendSpec>,
    /// Host NQNs allowed to connect; empty means any host.
    pub allow: Vec<String>,
    /// I/O queues per controller.
    pub io_queues: u16,
    /// Entries per queue (CAP.MQES + 1).
    pub queue_entries: u32,
    /// Maximum data transfer: 4 KiB << mdts.
    pub mdts: u8,
    pub serial: Option<String>,
    /// How long a new connection may take to send its ICReq.
    pub icreq_timeout: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TcpConfigError {
    #[error("tcp target spec '{spec}': {why}")]
    Invalid { spec: String, why: String },
}

/// An NQN as the NVMe Base Specification allows it: "nqn." prefix, at most
/// 223 bytes, printable ASCII.
pub fn valid_nqn(s: &str) -> bool {
    s.starts_with("nqn.") && s.len() <= 223 && s.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

impl FromStr for TcpTargetSpec {
    type Err = TcpConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| TcpConfigError::Invalid {
            spec: s.to_string(),
            why,
        };
        let mut listen = None;
        let mut nqn = None;
        let mut namespaces = Vec::new();
        let mut allow = Vec::new();
        let mut io_queues = 8u16;
        let mut queue_entries = 128u32;
        let mut mdts = 5u8;
        let mut serial = None;
        let mut icreq_timeout = Duration::from_secs(10);
        let mut last_ns: Option<String> = None;
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(bad(format!("'{part}' is not key=value")));
            };
            if key != "bs" {
                last_ns = None;
            }
            match key {
                "listen" => {
                    listen = Some(value.parse::<SocketAddr>().map_err(|e| {
                        bad(format!("listen must be IP:PORT, got '{value}': {e}"))
                    })?)
                }
                "nqn" => {
                    if !valid_nqn(value) || value == leapio_nvme::fabrics::DISCOVERY_NQN {
                        return Err(bad(format!("'{value}' is not a usable subsystem NQN")));
                    }
                    nqn = Some(value.to_string());
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
                "allow" => {
                    if !valid_nqn(value) {
                        return Err(bad(format!("allow='{value}' is not a host NQN")));
                    }
                    allow.push(value.to_string());
                }
                "io-queues" => {
                    io_queues = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or_else(|| bad(format!("io-queues must be 1..=64, got '{value}'")))?
                }
                "queue-entries" => {
                    queue_entries = value
                        .parse()
                        .ok()
                        .filter(|n| (32..=1024).contains(n))
                        .ok_or_else(|| {
                            bad(format!("queue-entries must be 32..=1024, got '{value}'"))
                        })?
                }
                "mdts" => {
                    mdts = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=8).contains(n))
                        .ok_or_else(|| bad(format!("mdts must be 1..=8, got '{value}'")))?
                }
                "serial" => {
                    leapio_nvme::controller::check_serial(value).map_err(bad)?;
                    serial = Some(value.to_string());
                }
                "icreq-timeout-ms" => {
                    let ms: u64 = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=600_000).contains(n))
                        .ok_or_else(|| bad(format!("icreq-timeout-ms must be 1..=600000, got '{value}'")))?;
                    icreq_timeout = Duration::from_millis(ms);
                }
                other => {
                    return Err(bad(format!(
                        "unknown key '{other}' (expected listen, nqn, ns, bs, allow, io-queues, queue-entries, mdts, serial, icreq-timeout-ms)"
                    )))
                }
            }
        }
        let listen = listen.ok_or_else(|| bad("missing listen=IP:PORT".into()))?;
        let nqn = nqn.ok_or_else(|| bad("missing nqn=NQN".into()))?;
        if namespaces.is_empty() {
            return Err(bad("needs at least one ns=BACKEND".into()));
        }
        Ok(TcpTargetSpec {
            listen,
            nqn,
            namespaces,
            allow,
            io_queues,
            queue_entries,
            mdts,
            serial,
            icreq_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_spec() {
        let t: TcpTargetSpec = "listen=127.0.0.1:4420,nqn=nqn.2026-11.io.leapio:tgt0,ns=ram:256M,ns=ram:1M,bs=4096,allow=nqn.2014-08.org.nvmexpress:uuid:1,allow=nqn.x:h2"
            .parse()
            .unwrap();
        assert_eq!(t.listen.port(), 4420);
        assert_eq!(t.nqn, "nqn.2026-11.io.leapio:tgt0");
        assert_eq!(t.namespaces.len(), 2);
        assert_eq!(
            t.namespaces[1],
            BackendSpec::Ram {
                size: 1 << 20,
                block_size: 4096
            }
        );
        assert_eq!(t.allow.len(), 2);
        let t: TcpTargetSpec = "listen=[::1]:4420,nqn=nqn.a:b,ns=ram:1M".parse().unwrap();
        assert!(t.allow.is_empty());
    }

    #[test]
    fn errors_name_the_problem() {
        for (s, want) in [
            ("nqn=nqn.a:b,ns=ram:1M", "missing listen"),
            ("listen=127.0.0.1:1,ns=ram:1M", "missing nqn"),
            ("listen=127.0.0.1:1,nqn=nqn.a:b", "at least one ns"),
            ("listen=localhost,nqn=nqn.a:b,ns=ram:1M", "listen must be"),
            (
                "listen=127.0.0.1:1,nqn=foo,ns=ram:1M",
                "not a usable subsystem NQN",
            ),
            (
                "listen=127.0.0.1:1,nqn=nqn.a:b,ns=ram:1M,allow=bad",
                "not a host NQN",
            ),
            (
                "listen=127.0.0.1:1,nqn=nqn.a:b,ns=ram:1M,colour=red",
                "unknown key",
            ),
        ] {
            let e = s.parse::<TcpTargetSpec>().unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
    }
}
