//! Metrics for dashboards: latency histograms a hot path records without
//! locked instructions, the Prometheus text exposition format (version
//! 0.0.4), and a small HTTP endpoint that serves it on a TCP address or a
//! Unix socket (`--metrics 127.0.0.1:9100`, `--metrics unix:PATH`).
//!
//! The daemons keep their counters where their hot paths are (a poller's
//! own counters, the queue-state area) and render them only when scraped:
//! a scrape costs the scraper's thread, never a poller.

use crate::socket::{OwnedSocket, SocketAccess};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Latency buckets: upper bounds 1 us << i for i in 0..BUCKETS - 1 (1 us
/// to about 4.2 s), and the last one unbounded.
pub const BUCKETS: usize = 24;

/// Add `v` to a counter only one thread writes: a plain load and store,
/// no locked instruction; readers see a value that only grows.
#[inline]
pub fn bump(c: &AtomicU64, v: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
}

/// A latency histogram with one writer (see [`bump`]).
pub struct Latency {
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

/// The bucket of a latency of `ns` nanoseconds.
#[inline]
pub fn bucket_of(ns: u64) -> usize {
    let us = ns.div_ceil(1000);
    // 0-1 us: 0; 2 us: 1; 3-4 us: 2; 5-8 us: 3; ...
    let i = u64::BITS - us.saturating_sub(1).leading_zeros();
    usize::try_from(i).map_or(BUCKETS - 1, |i| i.min(BUCKETS - 1))
}

/// The upper bound of bucket `i` in microseconds (None: unbounded).
pub fn bucket_bound_us(i: usize) -> Option<u64> {
    (i < BUCKETS - 1).then(|| 1u64 << i)
}

impl Latency {
    /// Count one latency (single writer).
    #[inline]
    pub fn record(&self, ns: u64) {
        bump(&self.buckets[bucket_of(ns)], 1);
        bump(&self.sum_ns, ns);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// What a [`Latency`] counted: per bucket (not cumulative), and the sum.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySnapshot {
    pub buckets: Vec<u64>,
    pub sum_ns: u64,
}

impl LatencySnapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// Add another histogram's counts (of the same buckets).
    pub fn add(&mut self, o: &LatencySnapshot) {
        if self.buckets.len() < o.buckets.len() {
            self.buckets.resize(o.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a = a.saturating_add(*b);
        }
        self.sum_ns = self.sum_ns.saturating_add(o.sum_ns);
    }

    /// What was counted since `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &LatencySnapshot) -> LatencySnapshot {
        LatencySnapshot {
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, b)| b.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
                .collect(),
            sum_ns: self.sum_ns.saturating_sub(earlier.sum_ns),
        }
    }

    /// The upper bound (microseconds) of the bucket holding quantile `q`
    /// (0..=1), as Prometheus's histogram_quantile bounds it from above;
    /// None when nothing was counted or it falls in the unbounded bucket.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * n as f64).ceil().max(1.0);
        let mut seen = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            seen = seen.saturating_add(*b);
            if seen as f64 >= rank {
                return bucket_bound_us(i);
            }
        }
        None
    }
}

/// The type of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

struct Family {
    kind: Kind,
    help: String,
    lines: String,
}

/// A page of metrics in the text exposition format. Samples may be added
/// in any order: they are grouped by family when rendered, families in the
/// order they first appeared.
#[derive(Default)]
pub struct Exposition {
    order: Vec<String>,
    families: HashMap<String, Family>,
}

/// Label values are escaped as the format asks (backslash, quote, newline).
fn write_labels(out: &mut String, labels: &[(&str, &str)], extra: Option<(&str, &str)>) {
    let all: Vec<(&str, &str)> = labels.iter().copied().chain(extra).collect();
    if all.is_empty() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in all.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for ch in v.chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

impl Exposition {
    fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut String {
        if !self.families.contains_key(name) {
            self.order.push(name.to_string());
        }
        &mut self
            .families
            .entry(name.to_string())
            .or_insert_with(|| Family {
                kind,
                help: help.to_string(),
                lines: String::new(),
            })
            .lines
    }

    /// A counter's value (`name` ends in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.sample(name, Kind::Counter, help, labels, v);
    }

    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.sample(name, Kind::Gauge, help, labels, v);
    }

    fn sample(&mut self, name: &str, kind: Kind, help: &str, labels: &[(&str, &str)], v: f64) {
        let out = self.family(name, kind, help);
        out.push_str(name);
        write_labels(out, labels, None);
        out.push(' ');
        write_value(out, v);
        out.push('\n');
    }

    /// A latency histogram, in seconds (`name` ends in `_seconds`).
    pub fn latency(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        h: &LatencySnapshot,
    ) {
        let out = self.family(name, Kind::Histogram, help);
        let mut cumulative = 0u64;
        for (i, b) in h.buckets.iter().enumerate() {
            cumulative = cumulative.saturating_add(*b);
            let le = match bucket_bound_us(i) {
                Some(us) => format!("{}", us as f64 / 1e6),
                None => "+Inf".to_string(),
            };
            let _ = write!(out, "{name}_bucket");
            write_labels(out, labels, Some(("le", &le)));
            let _ = writeln!(out, " {cumulative}");
        }
        if h.buckets.len() < BUCKETS {
            // Every histogram ends with +Inf.
            let _ = write!(out, "{name}_bucket");
            write_labels(out, labels, Some(("le", "+Inf")));
            let _ = writeln!(out, " {cumulative}");
        }
        let _ = write!(out, "{name}_sum");
        write_labels(out, labels, None);
        out.push(' ');
        write_value(out, h.sum_ns as f64 / 1e9);
        out.push('\n');
        let _ = write!(out, "{name}_count");
        write_labels(out, labels, None);
        let _ = writeln!(out, " {cumulative}");
    }

    /// The page.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for name in &self.order {
            let f = &self.families[name];
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {}", f.kind.name());
            out.push_str(&f.lines);
        }
        out
    }
}

/// Where metrics are served: `HOST:PORT` (an IP address) or `unix:PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for MetricsAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("unix: needs a path".into());
            }
            return Ok(MetricsAddr::Unix(PathBuf::from(p)));
        }
        s.parse()
            .map(MetricsAddr::Tcp)
            .map_err(|_| format!("expected IP:PORT (e.g. 127.0.0.1:9100) or unix:PATH, got '{s}'"))
    }
}

impl std::fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsAddr::Tcp(a) => write!(f, "{a}"),
            MetricsAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Renders the page at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// How long a scraper may take to send its request or read the page.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head read.
const MAX_REQUEST: usize = 8 << 10;

enum Listener {
    Tcp(TcpListener),
    Unix(OwnedSocket),
}

fn listen(addr: &MetricsAddr) -> std::io::Result<Listener> {
    Ok(match addr {
        MetricsAddr::Tcp(a) => {
            let l = TcpListener::bind(a)?;
            l.set_nonblocking(true)?;
            Listener::Tcp(l)
        }
        MetricsAddr::Unix(p) => {
            let s = OwnedSocket::bind(p, &SocketAccess::default())?;
            s.listener().set_nonblocking(true)?;
            Listener::Unix(s)
        }
    })
}

/// Serve `render`'s page at `GET /metrics` (and `/`) on `addr` until
/// `stop`: HTTP/1.1, one request per connection, one scrape at a time
/// (a scraper that stalls is cut off after 5 s). A Unix socket appears
/// with mode 0600 (see [`crate::socket`]). An address in use (the process
/// this one takes over from, in an upgrade) is taken once it is free;
/// any other error is returned.
pub fn serve(
    addr: &MetricsAddr,
    render: Render,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let first = match listen(addr) {
        Ok(l) => Some(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!(%addr, "metrics: the address is in use; served once it is free");
            None
        }
        Err(e) => return Err(e),
    };
    let addr = addr.clone();
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let mut listener = first;
            while listener.is_none() && !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(100));
                match listen(&addr) {
                    Ok(l) => listener = Some(l),
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
                    Err(e) => {
                        tracing::error!(%addr, "metrics: {e}");
                        return;
                    }
                }
            }
            let Some(listener) = listener else { return };
            while !stop.load(Ordering::Acquire) {
                let served = match &listener {
                    Listener::Tcp(l) => l.accept().map(|(s, _)| {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(CLIENT_TIMEOUT));
                        let _ = s.set_write_timeout(Some(CLIENT_TIMEOUT));
                        answer(s, &render);
                    }),
                    Listener::Unix(u) => u.listener().accept().map(|(s, _)| {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(CLIENT_TIMEOUT));
                        let _ = s.set_write_timeout(Some(CLIENT_TIMEOUT));
                        answer(s, &render);
                    }),
                };
                match served {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        tracing::warn!("metrics: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
}

/// Read one request head and answer it.
fn answer<S: Read + Write>(mut s: S, render: &Render) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_REQUEST {
            let _ = respond(
                &mut s,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            );
            return;
        }
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        let _ = respond(
            &mut s,
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n",
        );
        return;
    }
    if path != "/metrics" && path != "/" {
        let _ = respond(&mut s, "404 Not Found", "text/plain", "GET /metrics\n");
        return;
    }
    let page = render();
    let body = if method == "HEAD" { "" } else { page.as_str() };
    let _ = respond(
        &mut s,
        "200 OK",
        "text/plain; version=0.0.4; charset=utf-8",
        body,
    );
}

fn respond<S: Write>(s: &mut S, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body.as_bytes())?;
    s.flush()
}

/// GET `/metrics` from `addr` (tests, `leapioctl`): the page.
pub fn scrape(addr: &MetricsAddr) -> std::io::Result<String> {
    fn get<S: Read + Write>(mut s: S) -> std::io::Result<String> {
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: leapio\r\nConnection: close\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let Some((head, body)) = resp.split_once("\r\n\r\n") else {
            return Err(std::io::Error::other("metrics: no response head"));
        };
        if !head.starts_with("HTTP/1.1 200") {
            let first = head.lines().next().unwrap_or("");
            return Err(std::io::Error::other(format!("metrics: {first}")));
        }
        Ok(body.to_string())
    }
    match addr {
        MetricsAddr::Tcp(a) => {
            let s = std::net::TcpStream::connect_timeout(a, CLIENT_TIMEOUT)?;
            s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
            get(s)
        }
        MetricsAddr::Unix(p) => {
            let s = std::os::unix::net::UnixStream::connect(p)?;
            s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
            get(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_latencies_up_to_their_bound() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1000), 0);
        assert_eq!(bucket_of(1001), 1);
        assert_eq!(bucket_of(2000), 1);
        assert_eq!(bucket_of(3500), 2);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        for ns in [1u64, 999, 1000, 1500, 70_000, 1_000_000, 4_000_000_000] {
            let i = bucket_of(ns);
            if let Some(bound) = bucket_bound_us(i) {
                assert!(ns <= bound * 1000, "{ns} ns above bucket {i}");
            }
            if i > 0 {
                let below = bucket_bound_us(i - 1).unwrap();
                assert!(ns > below * 1000, "{ns} ns belongs below bucket {i}");
            }
        }
    }

    #[test]
    fn quantiles_come_from_bucket_bounds() {
        let l = Latency::default();
        for _ in 0..98 {
            l.record(3_000);
        }
        l.record(100_000);
        l.record(100_000);
        let s = l.snapshot();
        assert_eq!(s.count(), 100);
        assert_eq!(s.quantile_us(0.5), Some(4));
        assert_eq!(s.quantile_us(0.99), Some(128));
        let later = {
            l.record(500);
            l.snapshot()
        };
        let d = later.since(&s);
        assert_eq!(d.count(), 1);
        assert_eq!(d.quantile_us(0.5), Some(1));
        assert_eq!(LatencySnapshot::default().quantile_us(0.5), None);
    }

    #[test]
    fn families_group_their_samples_and_escape_labels() {
        let mut e = Exposition::default();
        e.counter("a_total", "A.", &[("ctrl", "x\"y\\z\n")], 1.0);
        e.gauge("b", "B.", &[], 2.5);
        e.counter("a_total", "A.", &[("ctrl", "w")], 3.0);
        let page = e.render();
        let want = "# HELP a_total A.\n# TYPE a_total counter\n\
                    a_total{ctrl=\"x\\\"y\\\\z\\n\"} 1\na_total{ctrl=\"w\"} 3\n\
                    # HELP b B.\n# TYPE b gauge\nb 2.5\n";
        assert_eq!(page, want);
    }

    #[test]
    fn a_scrape_over_a_unix_socket_gets_the_page_and_other_paths_are_refused() {
        let dir = std::env::temp_dir().join(format!("leapio-metrics-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let addr = MetricsAddr::Unix(dir.join("m.sock"));
        let stop = Arc::new(AtomicBool::new(false));
        let t = serve(&addr, Arc::new(|| "x_total 1\n".to_string()), stop.clone()).unwrap();
        assert_eq!(scrape(&addr).unwrap(), "x_total 1\n");
        let MetricsAddr::Unix(p) = &addr else {
            unreachable!()
        };
        let mut s = std::os::unix::net::UnixStream::connect(p).unwrap();
        s.write_all(b"GET /other HTTP/1.1\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        stop.store(true, Ordering::Release);
        t.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_address_in_use_is_taken_once_it_is_free() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = MetricsAddr::Tcp(held.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let t = serve(&addr, Arc::new(|| "y 2\n".to_string()), stop.clone()).unwrap();
        drop(held);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match scrape(&addr) {
                Ok(page) => {
                    assert_eq!(page, "y 2\n");
                    break;
                }
                Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Release);
        t.join().unwrap();
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            "127.0.0.1:9100".parse::<MetricsAddr>().unwrap(),
            MetricsAddr::Tcp("127.0.0.1:9100".parse().unwrap())
        );
        assert_eq!(
            "unix:/run/m.sock".parse::<MetricsAddr>().unwrap(),
            MetricsAddr::Unix("/run/m.sock".into())
        );
        assert!("localhost".parse::<MetricsAddr>().is_err());
        assert!("unix:".parse::<MetricsAddr>().is_err());
    }
}
