//! `--tcp-target` and `--rdma-target`:
//! `listen=ADDR,nqn=NQN,ns=BACKEND[,bs=N]...[,allow=HOSTNQN[:SECRET[:CTRLSECRET]]...]`.
//!
//! SECRET and CTRLSECRET are DH-HMAC-CHAP secrets (`DHHC-1:XX:BASE64:`):
//! a host with a secret must authenticate every queue before it may use
//! it; with CTRLSECRET the controller can prove itself to the host.
//! `dhchap-hashes=` and `dhchap-dhgroups=` (colon-separated, in order of
//! preference) say what the target accepts.

use leapio_backends::BackendSpec;
use leapio_nvme_auth::{DhGroup, HashId, Policy, Secret, Secrets};
use leapio_options::{Opt, OptionError, Options};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// A host on the allow list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedHost {
    pub nqn: String,
    /// DH-HMAC-CHAP secrets: the host must authenticate.
    pub secrets: Option<Arc<Secrets>>,
}

impl AllowedHost {
    /// `HOSTNQN[:DHHC-1:..:[:DHHC-1:..:]]`.
    fn parse(value: &str) -> Result<AllowedHost, String> {
        let (nqn, secrets) = match value.find(":DHHC-1:") {
            None => (value, None),
            Some(i) => (&value[..i], Some(parse_secrets(&value[i + 1..])?)),
        };
        if !valid_nqn(nqn) {
            return Err(format!("allow='{nqn}' is not a host NQN"));
        }
        Ok(AllowedHost {
            nqn: nqn.to_string(),
            secrets: secrets.map(Arc::new),
        })
    }
}

/// `DHHC-1:..:[:DHHC-1:..:]`: the host secret and the controller secret.
fn parse_secrets(s: &str) -> Result<Secrets, String> {
    let starts: Vec<usize> = s.match_indices("DHHC-1:").map(|(i, _)| i).collect();
    let piece = |k: usize| {
        let end = starts.get(k + 1).copied().unwrap_or(s.len());
        let text = &s[starts[k]..end];
        // "SECRET:" followed by ":CTRLSECRET" leaves a second colon
        let text = text
            .strip_suffix(':')
            .filter(|t| t.ends_with(':'))
            .unwrap_or(text);
        text.parse::<Secret>()
    };
    match starts.len() {
        1 => Ok(Secrets {
            host: piece(0).map_err(|e| format!("host secret: {e}"))?,
            ctrl: None,
        }),
        2 => Ok(Secrets {
            host: piece(0).map_err(|e| format!("host secret: {e}"))?,
            ctrl: Some(piece(1).map_err(|e| format!("controller secret: {e}"))?),
        }),
        n => Err(format!(
            "{n} secrets after the host NQN; expected HOSTNQN:SECRET or HOSTNQN:SECRET:CTRLSECRET"
        )),
    }
}

/// The names of `o`'s list (joined by ':'), each known to `parse`.
fn names<T>(o: &Opt<'_>, parse: impl Fn(&str) -> Option<T>, all: &str) -> Result<Vec<T>, String> {
    o.list(':')
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|n| parse(n).ok_or_else(|| format!("{}: unknown '{n}' (known: {all})", o.key)))
        .collect()
}

/// One `--tcp-target` or `--rdma-target` argument: a listener and the
/// subsystem it exports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSpec {
    pub listen: SocketAddr,
    pub nqn: String,
    pub namespaces: Vec<BackendSpec>,
    /// Hosts allowed to connect; empty means any host.
    pub allow: Vec<AllowedHost>,
    /// Hash functions and DH groups accepted for DH-HMAC-CHAP.
    pub dhchap: Policy,
    /// I/O queues per controller.
    pub io_queues: u16,
    /// Entries per queue (CAP.MQES + 1).
    pub queue_entries: u32,
    /// Maximum data transfer: 4 KiB << mdts.
    pub mdts: u8,
    pub serial: Option<String>,
    /// How long a new connection may take to send its ICReq.
    pub icreq_timeout: Duration,
    /// How long a queue that must authenticate may take to do so.
    pub auth_timeout: Duration,
    /// How long a poller keeps polling its sockets after its last work
    /// before it sleeps in epoll_wait (0: sleep at once).
    pub busy_poll: Duration,
    /// The ANA state reported to hosts (`ana=`); None: no ANA reporting.
    pub ana: Option<u8>,
}

/// Default `busy-poll-us`: long enough to span a host's turnaround between
/// a completion and its next command (so a queue at depth 1 never waits
/// for its poller to wake up, which costs tens of microseconds on a
/// virtual CPU), short enough that an idle target sleeps.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetConfigError {
    #[error("tcp target spec '{spec}': {why}")]
    Invalid { spec: String, why: String },
}

/// An NQN as the NVMe Base Specification allows it: "nqn." prefix, at most
/// 223 bytes, printable ASCII.
pub fn valid_nqn(s: &str) -> bool {
    s.starts_with("nqn.") && s.len() <= 223 && s.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

impl TargetSpec {
    /// The keys of `--tcp-target`.
    pub const KEYS: [&'static str; 15] = [
        "listen",
        "nqn",
        "ns",
        "bs",
        "allow",
        "dhchap-hashes",
        "dhchap-dhgroups",
        "io-queues",
        "queue-entries",
        "mdts",
        "serial",
        "icreq-timeout-ms",
        "auth-timeout-ms",
        "busy-poll-us",
        "ana",
    ];
}

impl FromStr for TargetSpec {
    type Err = TargetConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| TargetConfigError::Invalid {
            spec: leapio_nvme_auth::redact(s),
            why,
        };
        let opts = Options::parse(s, ',').map_err(|e| bad(e.to_string()))?;
        let once: Vec<&str> = TargetSpec::KEYS
            .into_iter()
            .filter(|k| !matches!(*k, "ns" | "bs" | "allow"))
            .collect();
        opts.check(&TargetSpec::KEYS, &once)
            .map_err(|e| bad(e.to_string()))?;
        let mut t = TargetSpec {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            nqn: String::new(),
            namespaces: Vec::new(),
            allow: Vec::new(),
            dhchap: Policy::default(),
            io_queues: 8,
            queue_entries: 128,
            mdts: 5,
            serial: None,
            icreq_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(30),
            busy_poll: DEFAULT_BUSY_POLL,
            ana: None,
        };
        let e = |e: OptionError| bad(e.to_string());
        for o in opts.iter() {
            match o.key {
                "listen" => {
                    t.listen = o
                        .value
                        .parse::<SocketAddr>()
                        .map_err(|err| e(o.invalid(format_args!("must be IP:PORT ({err})"))))?
                }
                "nqn" => {
                    if !valid_nqn(o.value) || o.value == leapio_nvme::fabrics::DISCOVERY_NQN {
                        return Err(bad(format!("'{}' is not a usable subsystem NQN", o.value)));
                    }
                    t.nqn = o.value.to_string();
                }
                "allow" => t.allow.push(AllowedHost::parse(o.value).map_err(bad)?),
                "dhchap-hashes" => {
                    t.dhchap.hashes =
                        names(o, HashId::from_name, "sha256, sha384, sha512").map_err(bad)?
                }
                "dhchap-dhgroups" => {
                    t.dhchap.groups = names(
                        o,
                        DhGroup::from_name,
                        "null, ffdhe2048, ffdhe3072, ffdhe4096",
                    )
                    .map_err(bad)?
                }
                "io-queues" => t.io_queues = o.number(1..=64).map_err(e)?,
                "queue-entries" => t.queue_entries = o.number(32..=1024).map_err(e)?,
                "mdts" => t.mdts = o.number(1..=8).map_err(e)?,
                "serial" => {
                    leapio_controller::check_serial(o.value).map_err(bad)?;
                    t.serial = Some(o.value.to_string());
                }
                "icreq-timeout-ms" => t.icreq_timeout = o.millis(1..=600_000).map_err(e)?,
                "auth-timeout-ms" => t.auth_timeout = o.millis(1..=600_000).map_err(e)?,
                "busy-poll-us" => t.busy_poll = o.micros(0..=1_000_000).map_err(e)?,
                "ana" => t.ana = Some(super::ana::parse_state(o.value).map_err(bad)?),
                // ns and bs: below.
                _ => {}
            }
        }
        if !opts.has("listen") {
            return Err(bad("missing listen=IP:PORT".into()));
        }
        if !opts.has("nqn") {
            return Err(bad("missing nqn=NQN".into()));
        }
        t.namespaces = crate::config::namespaces(&opts).map_err(bad)?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_spec() {
        let t: TargetSpec = "listen=127.0.0.1:4420,nqn=nqn.2026-11.io.leapio:tgt0,ns=ram:256M,ns=ram:1M,bs=4096,allow=nqn.2014-08.org.nvmexpress:uuid:1,allow=nqn.x:h2"
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
        assert_eq!(t.allow[1].nqn, "nqn.x:h2");
        assert!(t.allow[1].secrets.is_none());
        let t: TargetSpec = "listen=[::1]:4420,nqn=nqn.a:b,ns=ram:1M".parse().unwrap();
        assert!(t.allow.is_empty());
        assert_eq!(t.busy_poll, DEFAULT_BUSY_POLL);
        let t: TargetSpec = "listen=[::1]:4420,nqn=nqn.a:b,ns=ram:1M,busy-poll-us=0"
            .parse()
            .unwrap();
        assert_eq!(t.busy_poll, Duration::ZERO);
        for bad in ["busy-poll-us=-1", "busy-poll-us=1000001", "busy-poll-us=x"] {
            let e = format!("listen=[::1]:4420,nqn=nqn.a:b,ns=ram:1M,{bad}")
                .parse::<TargetSpec>()
                .unwrap_err();
            assert!(e.to_string().contains("busy-poll-us must be"), "{e}");
        }
        assert_eq!(t.dhchap, Policy::default());
    }

    const S1: &str = "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
    const S2: &str = "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";

    #[test]
    fn parses_dhchap_secrets() {
        let host = "nqn.2014-08.org.nvmexpress:uuid:6c656170-696f-0000-0000-000000000001";
        for (allow, bidi) in [
            (format!("{host}:{S1}"), false),
            (format!("{host}:{S1}:{S2}"), true),
            (
                format!(
                    "{host}:{}:{}",
                    S1.trim_end_matches(':'),
                    S2.trim_end_matches(':')
                ),
                true,
            ),
        ] {
            let t: TargetSpec =
                format!("listen=127.0.0.1:1,nqn=nqn.a:b,ns=ram:1M,allow={allow},allow=nqn.x:plain,dhchap-hashes=sha384:sha256,dhchap-dhgroups=null")
                    .parse()
                    .unwrap();
            assert_eq!(t.allow[0].nqn, host, "{allow}");
            let s = t.allow[0].secrets.as_ref().unwrap();
            assert_eq!(s.host, S1.parse().unwrap());
            assert_eq!(s.ctrl.is_some(), bidi, "{allow}");
            if bidi {
                assert_eq!(s.ctrl, Some(S2.parse().unwrap()));
            }
            assert!(t.allow[1].secrets.is_none());
            assert_eq!(t.dhchap.hashes, [HashId::Sha384, HashId::Sha256]);
            assert_eq!(t.dhchap.groups, [DhGroup::Null]);
            assert!(!format!("{t:?}").contains("AAEC"), "Debug shows no secret");
        }
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
            (
                "listen=127.0.0.1:1,nqn=nqn.a:b,ns=ram:1M,allow=nqn.a:h:DHHC-1:00:AAAA:",
                "host secret: the key decodes to 3 bytes",
            ),
            (
                "listen=127.0.0.1:1,nqn=nqn.a:b,ns=ram:1M,allow=nqn.a:h:DHHC-1:07:AAAA:",
                "unknown hash transformation '07'",
            ),
            (
                "listen=127.0.0.1:1,nqn=nqn.a:b,ns=ram:1M,allow=nqn.a:h:DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaS:",
                "CRC-32 mismatch",
            ),
            (
                "listen=127.0.0.1:1,nqn=nqn.a:b,ns=ram:1M,dhchap-hashes=md5",
                "dhchap-hashes: unknown 'md5'",
            ),
            (
                "listen=127.0.0.1:1,nqn=nqn.a:b,ns=ram:1M,dhchap-dhgroups=ffdhe2048:modp",
                "dhchap-dhgroups: unknown 'modp'",
            ),
        ] {
            let e = s.parse::<TargetSpec>().unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
    }
}
