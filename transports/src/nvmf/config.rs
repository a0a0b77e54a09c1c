//! `nvme-tcp:HOST:PORT/SUBNQN[?key=value&key=value...]` and
//! `nvme-rdma:HOST:PORT/SUBNQN[?...]`: a namespace of a remote NVMe over
//! Fabrics subsystem, over TCP or RDMA (RDMA CM addresses).
//!
//! Keys (all optional):
//! - `nsid=N` namespace to use (default 1);
//! - `hostnqn=NQN` our host NQN (default [`DEFAULT_HOSTNQN`]);
//! - `queues=N` most I/O queues (= connections) to open (default 8);
//! - `qd=N` most commands in flight per I/O queue (default 128);
//! - `hdgst=0|1`, `ddgst=0|1` request header / data digests (default 0;
//!   NVMe/TCP only);
//! - `kato=MS` keep-alive timeout announced to the target (default 10000);
//! - `retry=MS` how long a command waits for a lost connection to come back
//!   before it fails with ETIMEDOUT (default 30000);
//! - `timeout=MS` connect/handshake timeout of one attempt (default 3000);
//! - `dhchap=DHHC-1:XX:...:` our DH-HMAC-CHAP secret: every queue
//!   authenticates when the controller asks for it;
//! - `dhchap-ctrl=DHHC-1:XX:...:` the controller's secret: every queue
//!   authenticates, and the controller must prove it holds this secret
//!   (bidirectional; needs `dhchap=`).
//!
//! Secrets never appear in the spec's `Display` (logs, error messages).
//!
//! No commas anywhere, so the spec fits in socp's comma-separated
//! `--ctrl ...,ns=BACKEND,...` lists. IPv6 hosts go in brackets:
//! `nvme-tcp:[::1]:4420/nqn...`.

use leapio_nvme_auth::{Secret, Secrets};
use leapio_options::{OptionError, Options};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Host NQN used when the spec names none.
pub const DEFAULT_HOSTNQN: &str = "nqn.2026-11.io.leapio:host";

/// What carries the capsules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// NVMe/TCP.
    Tcp,
    /// NVMe/RDMA (RoCE, iWARP, InfiniBand through RDMA CM).
    Rdma,
}

impl Transport {
    /// The spec's prefix: `nvme-tcp`, `nvme-rdma`.
    pub fn prefix(self) -> &'static str {
        match self {
            Transport::Tcp => "nvme-tcp",
            Transport::Rdma => "nvme-rdma",
        }
    }
}

/// Where the remote namespace is and how to talk to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvmfSpec {
    /// The transport.
    pub transport: Transport,
    /// Host name or IP address (IPv6 without brackets).
    pub addr: String,
    /// TCP port.
    pub port: u16,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Our host NQN.
    pub hostnqn: String,
    /// Namespace ID.
    pub nsid: u32,
    /// Most I/O queues (connections) opened.
    pub queues: u16,
    /// Most commands in flight per I/O queue.
    pub queue_depth: u32,
    /// Request header digests.
    pub hdgst: bool,
    /// Request data digests.
    pub ddgst: bool,
    /// Keep-alive timeout announced in the admin Connect (0 disables).
    pub kato: Duration,
    /// How long a command waits for a lost connection to be re-established.
    pub retry: Duration,
    /// Time limit of one connection attempt (connect + handshake).
    pub connect_timeout: Duration,
    /// DH-HMAC-CHAP secrets (`dhchap=`, `dhchap-ctrl=`).
    pub dhchap: Option<Arc<Secrets>>,
}

impl NvmfSpec {
    /// `HOST:PORT` as `ToSocketAddrs` wants it.
    pub fn host_port(&self) -> String {
        if self.addr.contains(':') {
            format!("[{}]:{}", self.addr, self.port)
        } else {
            format!("{}:{}", self.addr, self.port)
        }
    }
}

impl fmt::Display for NvmfSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.transport.prefix(),
            self.host_port(),
            self.subnqn
        )?;
        let mut sep = '?';
        let mut opt = |f: &mut fmt::Formatter<'_>, k: &str, v: String| {
            let r = write!(f, "{sep}{k}={v}");
            sep = '&';
            r
        };
        let d = defaults();
        if self.nsid != d.nsid {
            opt(f, "nsid", self.nsid.to_string())?;
        }
        if self.hostnqn != d.hostnqn {
            opt(f, "hostnqn", self.hostnqn.clone())?;
        }
        if self.queues != d.queues {
            opt(f, "queues", self.queues.to_string())?;
        }
        if self.queue_depth != d.queue_depth {
            opt(f, "qd", self.queue_depth.to_string())?;
        }
        if self.hdgst {
            opt(f, "hdgst", "1".into())?;
        }
        if self.ddgst {
            opt(f, "ddgst", "1".into())?;
        }
        for (k, v, dv) in [
            ("kato", self.kato, d.kato),
            ("retry", self.retry, d.retry),
            ("timeout", self.connect_timeout, d.connect_timeout),
        ] {
            if v != dv {
                opt(f, k, v.as_millis().to_string())?;
            }
        }
        if let Some(s) = &self.dhchap {
            opt(f, "dhchap", "(secret)".into())?;
            if s.ctrl.is_some() {
                opt(f, "dhchap-ctrl", "(secret)".into())?;
            }
        }
        Ok(())
    }
}

fn defaults() -> NvmfSpec {
    NvmfSpec {
        transport: Transport::Tcp,
        addr: String::new(),
        port: 4420,
        subnqn: String::new(),
        hostnqn: DEFAULT_HOSTNQN.to_owned(),
        nsid: 1,
        queues: 8,
        queue_depth: 128,
        hdgst: false,
        ddgst: false,
        kato: Duration::from_secs(10),
        retry: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(3),
        dhchap: None,
    }
}

/// An NQN as the base specification allows it ("nqn." prefix, at most 223
/// bytes, printable ASCII), and without the characters the spec syntax uses.
fn check_nqn(what: &str, s: &str) -> Result<(), String> {
    if !s.starts_with("nqn.")
        || s.len() > 223
        || !s
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b'?' | b'&' | b'/'))
    {
        return Err(format!(
            "{what} '{s}' is not an NQN (nqn.YYYY-MM.domain:name, at most 223 printable characters, no , ? & /)"
        ));
    }
    Ok(())
}

/// Parse what follows `nvme-tcp:` or `nvme-rdma:`.
pub(crate) fn parse(transport: Transport, body: &str) -> Result<NvmfSpec, String> {
    let digests = if transport == Transport::Tcp {
        "&hdgst=1&ddgst=1"
    } else {
        ""
    };
    let shape = format!(
        "expected '{}:HOST:PORT/SUBNQN[?nsid=N&hostnqn=NQN&qd=N&queues=N{digests}&kato=MS&retry=MS&timeout=MS&dhchap=DHHC-1:..:&dhchap-ctrl=DHHC-1:..:]'",
        transport.prefix()
    );
    let shape = shape.as_str();
    if let Some((_, opt)) = body.split_once(',') {
        if opt.starts_with("bs=") {
            return Err("bs= cannot be set: the block size comes from the remote namespace".into());
        }
        return Err(format!("unexpected ',{opt}' ({shape})"));
    }
    let (target, query) = match body.split_once('?') {
        Some((t, q)) => (t, Some(q)),
        None => (body, None),
    };
    let Some((hostport, subnqn)) = target.split_once('/') else {
        return Err(format!("no '/SUBNQN' after the address ({shape})"));
    };
    let (addr, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let Some((a, p)) = rest.split_once("]:") else {
            return Err(format!("address '{hostport}' is not [IPV6]:PORT"));
        };
        (a, p)
    } else {
        let Some((a, p)) = hostport.rsplit_once(':') else {
            return Err(format!("address '{hostport}' has no :PORT ({shape})"));
        };
        if a.contains(':') {
            return Err(format!(
                "address '{hostport}': put IPv6 addresses in brackets, [::1]:4420"
            ));
        }
        (a, p)
    };
    if addr.is_empty() {
        return Err("host is empty".into());
    }
    let port: u16 = match p_port(port) {
        Some(p) => p,
        None => return Err(format!("port '{port}' is not a number from 1 to 65535")),
    };
    check_nqn("subsystem NQN", subnqn)?;
    if subnqn == "nqn.2014-08.org.nvmexpress.discovery" {
        return Err("the discovery subsystem has no namespaces: name an NVM subsystem".into());
    }
    let mut s = NvmfSpec {
        transport,
        addr: addr.to_owned(),
        port,
        subnqn: subnqn.to_owned(),
        ..defaults()
    };
    let opts = Options::parse(query.unwrap_or(""), '&').map_err(|e| e.to_string())?;
    if opts.has("bs") {
        return Err("bs cannot be set: the block size comes from the remote namespace".into());
    }
    if transport != Transport::Tcp {
        for k in ["hdgst", "ddgst"] {
            if opts.has(k) {
                return Err(format!("{k} is NVMe/TCP's (RDMA has no digests)"));
            }
        }
    }
    opts.check_once(&[
        "nsid",
        "hostnqn",
        "queues",
        "qd",
        "hdgst",
        "ddgst",
        "kato",
        "retry",
        "timeout",
        "dhchap",
        "dhchap-ctrl",
    ])
    .map_err(|e| e.to_string())?;
    let (mut host_secret, mut ctrl_secret) = (None, None);
    let e = |e: OptionError| e.to_string();
    for o in opts.iter() {
        let ms = |min: u64| o.millis(min..=3_600_000).map_err(e);
        match o.key {
            "nsid" => s.nsid = o.number(1..=0xffff_fffe).map_err(e)?,
            "hostnqn" => {
                check_nqn("hostnqn", o.value)?;
                s.hostnqn = o.value.to_owned();
            }
            "queues" => s.queues = o.number(1..=1024).map_err(e)?,
            "qd" => s.queue_depth = o.number(1..=1023).map_err(e)?,
            "hdgst" => s.hdgst = o.toggle().map_err(e)?,
            "ddgst" => s.ddgst = o.toggle().map_err(e)?,
            "kato" => s.kato = ms(0)?,
            "retry" => s.retry = ms(0)?,
            "timeout" => s.connect_timeout = ms(1)?,
            "dhchap" => {
                host_secret = Some(
                    o.value
                        .parse::<Secret>()
                        .map_err(|e| format!("dhchap: {e}"))?,
                )
            }
            "dhchap-ctrl" => {
                ctrl_secret = Some(
                    o.value
                        .parse::<Secret>()
                        .map_err(|e| format!("dhchap-ctrl: {e}"))?,
                )
            }
            _ => {}
        }
    }
    s.dhchap = match (host_secret, ctrl_secret) {
        (None, None) => None,
        (Some(host), ctrl) => Some(Arc::new(Secrets { host, ctrl })),
        (None, Some(_)) => {
            return Err("dhchap-ctrl needs dhchap (the host's own secret)".into());
        }
    };
    Ok(s)
}

fn p_port(p: &str) -> Option<u16> {
    p.parse::<u16>().ok().filter(|&p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<NvmfSpec, String> {
        super::parse(Transport::Tcp, body)
    }

    #[test]
    fn parses_and_round_trips() {
        let s = parse("127.0.0.1:4420/nqn.2026-11.io.leapio:tgt0").unwrap();
        assert_eq!(s.addr, "127.0.0.1");
        assert_eq!(s.port, 4420);
        assert_eq!(s.subnqn, "nqn.2026-11.io.leapio:tgt0");
        assert_eq!(s.nsid, 1);
        assert!(!s.hdgst && !s.ddgst);
        assert_eq!(
            s.to_string(),
            "nvme-tcp:127.0.0.1:4420/nqn.2026-11.io.leapio:tgt0"
        );
        let text = "127.0.0.1:4421/nqn.a:b?nsid=2&hostnqn=nqn.x:h&qd=64&hdgst=1&ddgst=1&retry=500";
        let s = parse(text).unwrap();
        assert_eq!(
            (s.nsid, s.queue_depth, s.hdgst, s.ddgst),
            (2, 64, true, true)
        );
        assert_eq!(s.hostnqn, "nqn.x:h");
        assert_eq!(s.retry, Duration::from_millis(500));
        assert_eq!(s.to_string(), format!("nvme-tcp:{text}"));
        let s = parse("[::1]:4420/nqn.a:b").unwrap();
        assert_eq!(s.addr, "::1");
        assert_eq!(s.host_port(), "[::1]:4420");
        // Over RDMA: the same grammar, no digests.
        let s = super::parse(Transport::Rdma, "10.9.0.1:4420/nqn.a:b?qd=32").unwrap();
        assert_eq!(s.to_string(), "nvme-rdma:10.9.0.1:4420/nqn.a:b?qd=32");
        let e = super::parse(Transport::Rdma, "10.9.0.1:4420/nqn.a:b?hdgst=1").unwrap_err();
        assert!(e.contains("NVMe/TCP's"), "{e}");
    }

    const K0: &str = "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
    const K1: &str = "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";

    #[test]
    fn dhchap_secrets() {
        let s = parse(&format!("h:1/nqn.a:b?dhchap={K0}&dhchap-ctrl={K1}")).unwrap();
        let d = s.dhchap.as_ref().unwrap();
        assert_eq!(d.host, K0.parse().unwrap());
        assert_eq!(d.ctrl, Some(K1.parse().unwrap()));
        let shown = s.to_string();
        assert_eq!(
            shown,
            "nvme-tcp:h:1/nqn.a:b?dhchap=(secret)&dhchap-ctrl=(secret)"
        );
        assert!(!format!("{s:?}").contains("AAEC"));
        let s = parse(&format!("h:1/nqn.a:b?dhchap={K0}")).unwrap();
        assert!(s.dhchap.unwrap().ctrl.is_none());
        for (text, want) in [
            (
                format!("h:1/nqn.a:b?dhchap-ctrl={K0}"),
                "dhchap-ctrl needs dhchap",
            ),
            (
                "h:1/nqn.a:b?dhchap=DHHC-1:00:AAAA:".into(),
                "dhchap: the key decodes to 3 bytes",
            ),
            (
                "h:1/nqn.a:b?dhchap=secret".into(),
                "dhchap: a DH-HMAC-CHAP secret starts with",
            ),
            (
                format!(
                    "h:1/nqn.a:b?dhchap={K0}&dhchap-ctrl={}",
                    K1.replace("AAEC", "AAED")
                ),
                "dhchap-ctrl: CRC-32 mismatch",
            ),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn errors_name_the_problem() {
        for (text, want) in [
            ("127.0.0.1:4420", "no '/SUBNQN'"),
            ("127.0.0.1/nqn.a:b", "no :PORT"),
            ("127.0.0.1:0/nqn.a:b", "port '0'"),
            ("127.0.0.1:x/nqn.a:b", "port 'x'"),
            ("::1:4420/nqn.a:b", "brackets"),
            (":4420/nqn.a:b", "host is empty"),
            ("h:1/foo", "subsystem NQN 'foo'"),
            ("h:1/nqn.2014-08.org.nvmexpress.discovery", "discovery"),
            ("h:1/nqn.a:b?nsid=0", "nsid must be"),
            ("h:1/nqn.a:b?qd=0", "qd must be"),
            ("h:1/nqn.a:b?hdgst=2", "hdgst must be 0 or 1"),
            ("h:1/nqn.a:b?colour=red", "unknown key 'colour'"),
            ("h:1/nqn.a:b?nsid", "not key=value"),
            ("h:1/nqn.a:b?nsid=1&nsid=2", "given twice"),
            ("h:1/nqn.a:b?hostnqn=bad", "hostnqn 'bad'"),
            ("h:1/nqn.a:b,bs=4096", "bs= cannot be set"),
            ("h:1/nqn.a:b?bs=4096", "bs cannot be set"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
