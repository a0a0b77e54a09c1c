//! `leapioctl top`: a live view of what a runtime serves, refreshed every
//! interval from its control socket (`io_stats`, `qos_stats`), as
//! `spdk_top` or `iostat -x 1` show theirs: per namespace IOPS, MB/s,
//! latency percentiles and queue depth; per QoS tenant its rate and
//! throttling; per poller how busy it is.
//!
//! On a terminal it takes the screen and reads keys (sort column, reverse,
//! quit); otherwise it prints one plain table per interval.

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, terminal};
use leapio_service::control::call;
use leapio_service::metrics::LatencySnapshot;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the rows are sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    Iops,
    Bandwidth,
    P99,
    Depth,
    Name,
}

impl Sort {
    fn name(self) -> &'static str {
        match self {
            Sort::Iops => "IOPS",
            Sort::Bandwidth => "MB/s",
            Sort::P99 => "p99",
            Sort::Depth => "depth",
            Sort::Name => "name",
        }
    }
}

impl std::str::FromStr for Sort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "iops" => Sort::Iops,
            "mbps" | "bw" => Sort::Bandwidth,
            "p99" | "latency" => Sort::P99,
            "depth" | "qd" => Sort::Depth,
            "name" => Sort::Name,
            other => {
                return Err(format!(
                    "sort by {other:?}: expected iops, mbps, p99, depth or name"
                ))
            }
        })
    }
}

/// How `top` runs.
pub struct Options {
    pub sock: PathBuf,
    pub interval: Duration,
    pub sort: Sort,
    /// Stop after this many tables (None: until q or Ctrl-C).
    pub count: Option<u64>,
}

/// One namespace's counters at one moment.
#[derive(Clone, Default)]
struct Ns {
    /// Controller name, or the subsystem's NQN.
    owner: String,
    nsid: u64,
    reads: u64,
    writes: u64,
    read_bytes: u64,
    written_bytes: u64,
    errors: u64,
    in_flight: u64,
    read_latency: LatencySnapshot,
    write_latency: LatencySnapshot,
}

#[derive(Clone, Default)]
struct Tenant {
    name: String,
    qos: String,
    ios: u64,
    bytes: u64,
    throttled: u64,
    held: u64,
    p99_us: f64,
}

/// Everything read at one moment.
struct Sample {
    at: Instant,
    namespaces: Vec<Ns>,
    controllers: Vec<(String, bool)>,
    busy_ns: Vec<u64>,
    tenants: Vec<Tenant>,
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn latency(v: &Value, k: &str) -> LatencySnapshot {
    v.get(k)
        .cloned()
        .and_then(|l| serde_json::from_value(l).ok())
        .unwrap_or_default()
}

fn tenants_of(q: &Value, out: &mut Vec<Tenant>) {
    if let Some(all) = q.get("schedulers").and_then(Value::as_array) {
        for s in all {
            tenants_of(s, out);
        }
        return;
    }
    let qos = q.get("name").and_then(Value::as_str).unwrap_or("qos");
    for t in q
        .get("tenants")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push(Tenant {
            name: t.get("name").and_then(Value::as_str).unwrap_or("?").into(),
            qos: qos.into(),
            ios: u(t, "ios"),
            bytes: u(t, "bytes"),
            throttled: u(t, "throttled_cmds"),
            held: u(t, "held_now"),
            p99_us: t.get("lat_p99_us").and_then(Value::as_f64).unwrap_or(0.0),
        });
    }
}

fn sample(sock: &Path) -> Result<Sample, String> {
    let io = call(sock, "io_stats", json!({})).map_err(|e| {
        if e.contains("unknown method") {
            format!("{e}: top needs the control socket of socp or leapio")
        } else {
            e
        }
    })?;
    let namespaces = io
        .get("namespaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|n| Ns {
            owner: n
                .get("ctrl")
                .or_else(|| n.get("subsystem"))
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            nsid: u(n, "nsid"),
            reads: u(n, "reads"),
            writes: u(n, "writes"),
            read_bytes: u(n, "read_bytes"),
            written_bytes: u(n, "written_bytes"),
            errors: u(n, "errors"),
            in_flight: u(n, "in_flight"),
            read_latency: latency(n, "read_latency"),
            write_latency: latency(n, "write_latency"),
        })
        .collect();
    let controllers = io
        .get("controllers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string(),
                c.get("attached").and_then(Value::as_bool).unwrap_or(false),
            )
        })
        .collect();
    let busy_ns = io
        .get("pollers_busy_ns")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|b| b.as_u64().unwrap_or(0))
        .collect();
    let mut tenants = Vec::new();
    if let Ok(q) = call(sock, "qos_stats", json!({})) {
        tenants_of(&q, &mut tenants);
    }
    Ok(Sample {
        at: Instant::now(),
        namespaces,
        controllers,
        busy_ns,
        tenants,
    })
}

/// A namespace's row: rates over the interval.
struct Row {
    name: String,
    r_iops: f64,
    w_iops: f64,
    r_mbps: f64,
    w_mbps: f64,
    r_p50: Option<u64>,
    r_p99: Option<u64>,
    w_p50: Option<u64>,
    w_p99: Option<u64>,
    depth: u64,
    errors: f64,
}

fn rows(prev: &Sample, now: &Sample) -> Vec<Row> {
    let secs = now.at.duration_since(prev.at).as_secs_f64().max(1e-3);
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    now.namespaces
        .iter()
        .map(|n| {
            let p = prev
                .namespaces
                .iter()
                .find(|p| p.owner == n.owner && p.nsid == n.nsid)
                .cloned()
                .unwrap_or_default();
            let rl = n.read_latency.since(&p.read_latency);
            let wl = n.write_latency.since(&p.write_latency);
            Row {
                name: format!("{}/{}", n.owner, n.nsid),
                r_iops: rate(p.reads, n.reads),
                w_iops: rate(p.writes, n.writes),
                r_mbps: rate(p.read_bytes, n.read_bytes) / 1e6,
                w_mbps: rate(p.written_bytes, n.written_bytes) / 1e6,
                r_p50: rl.quantile_us(0.5),
                r_p99: rl.quantile_us(0.99),
                w_p50: wl.quantile_us(0.5),
                w_p99: wl.quantile_us(0.99),
                depth: n.in_flight,
                errors: rate(p.errors, n.errors),
            }
        })
        .collect()
}

fn sort_rows(rows: &mut [Row], by: Sort, reverse: bool) {
    let p99 = |r: &Row| r.r_p99.max(r.w_p99).unwrap_or(0);
    rows.sort_by(|a, b| {
        let o = match by {
            Sort::Iops => (b.r_iops + b.w_iops).total_cmp(&(a.r_iops + a.w_iops)),
            Sort::Bandwidth => (b.r_mbps + b.w_mbps).total_cmp(&(a.r_mbps + a.w_mbps)),
            Sort::P99 => p99(b).cmp(&p99(a)),
            Sort::Depth => b.depth.cmp(&a.depth),
            Sort::Name => a.name.cmp(&b.name),
        };
        o.then_with(|| a.name.cmp(&b.name))
    });
    if reverse {
        rows.reverse();
    }
}

fn us(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// One screen, lines of at most `width` characters.
fn frame(
    o: &Options,
    prev: &Sample,
    now: &Sample,
    sort: Sort,
    reverse: bool,
    width: usize,
) -> Vec<String> {
    let secs = now.at.duration_since(prev.at).as_secs_f64().max(1e-3);
    let mut out = Vec::new();
    out.push(format!(
        "leapioctl top  {}  every {:.1} s  sorted by {}{}  keys: i iops, b MB/s, l p99, d depth, n name, r reverse, q quit",
        o.sock.display(),
        o.interval.as_secs_f64(),
        sort.name(),
        if reverse { " (reversed)" } else { "" },
    ));
    let attached = now.controllers.iter().filter(|c| c.1).count();
    let mut pollers = String::new();
    for (i, b) in now.busy_ns.iter().enumerate() {
        let was = prev.busy_ns.get(i).copied().unwrap_or(0);
        let pct = b.saturating_sub(was) as f64 / (secs * 1e9) * 100.0;
        let _ = write!(pollers, "  {i}: {:.1}%", pct.min(100.0));
    }
    out.push(format!(
        "controllers: {} ({attached} attached)   pollers busy:{pollers}",
        now.controllers.len()
    ));
    out.push(String::new());
    out.push(format!(
        "{:<24} {:>9} {:>9} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7} {:>5} {:>6}",
        "NAMESPACE",
        "r IOPS",
        "w IOPS",
        "r MB/s",
        "w MB/s",
        "r p50",
        "r p99",
        "w p50",
        "w p99",
        "QD",
        "err/s"
    ));
    let mut rs = rows(prev, now);
    sort_rows(&mut rs, sort, reverse);
    for r in &rs {
        out.push(format!(
            "{:<24} {:>9.0} {:>9.0} {:>8.1} {:>8.1} {:>7} {:>7} {:>7} {:>7} {:>5} {:>6.0}",
            r.name,
            r.r_iops,
            r.w_iops,
            r.r_mbps,
            r.w_mbps,
            us(r.r_p50),
            us(r.r_p99),
            us(r.w_p50),
            us(r.w_p99),
            r.depth,
            r.errors
        ));
    }
    if rs.is_empty() {
        out.push("(no namespaces served)".into());
    }
    out.push(
        "latencies in us: the upper bound of the histogram bucket holding the percentile".into(),
    );
    if !now.tenants.is_empty() {
        out.push(String::new());
        out.push(format!(
            "{:<16} {:<8} {:>9} {:>8} {:>10} {:>12} {:>5}",
            "TENANT", "QOS", "IOPS", "MB/s", "p99 us", "throttled/s", "held"
        ));
        for t in &now.tenants {
            let p = prev
                .tenants
                .iter()
                .find(|p| p.name == t.name && p.qos == t.qos)
                .cloned()
                .unwrap_or_default();
            out.push(format!(
                "{:<16} {:<8} {:>9.0} {:>8.1} {:>10.0} {:>12.0} {:>5}",
                t.name,
                t.qos,
                t.ios.saturating_sub(p.ios) as f64 / secs,
                t.bytes.saturating_sub(p.bytes) as f64 / secs / 1e6,
                t.p99_us,
                t.throttled.saturating_sub(p.throttled) as f64 / secs,
                t.held
            ));
        }
    }
    for l in &mut out {
        if l.chars().count() > width {
            *l = l.chars().take(width).collect();
        }
    }
    out
}

/// Puts the terminal back however `top` ends.
struct Screen;

impl Screen {
    fn take() -> Result<Screen, String> {
        terminal::enable_raw_mode().map_err(|e| format!("terminal: {e}"))?;
        let s = Screen;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )
        .map_err(|e| format!("terminal: {e}"))?;
        Ok(s)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(
            std::io::stdout(),
            cursor::Show,
            terminal::LeaveAlternateScreen
        );
        let _ = terminal::disable_raw_mode();
    }
}

/// Run the view until q, Ctrl-C or `count` tables.
pub fn run(o: &Options) -> Result<(), String> {
    let mut prev = sample(&o.sock)?;
    let tty = std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    let _screen = if tty { Some(Screen::take()?) } else { None };
    let (mut sort, mut reverse) = (o.sort, false);
    let mut shown = 0u64;
    loop {
        // Wait out the interval, reading keys on a terminal.
        let until = Instant::now() + o.interval;
        let mut redraw_only = false;
        if tty {
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                if !event::poll(left).map_err(|e| format!("terminal: {e}"))? {
                    break;
                }
                let Event::Key(k) = event::read().map_err(|e| format!("terminal: {e}"))? else {
                    continue;
                };
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(())
                    }
                    KeyCode::Char('i') => sort = Sort::Iops,
                    KeyCode::Char('b') => sort = Sort::Bandwidth,
                    KeyCode::Char('l') => sort = Sort::P99,
                    KeyCode::Char('d') => sort = Sort::Depth,
                    KeyCode::Char('n') => sort = Sort::Name,
                    KeyCode::Char('r') => reverse = !reverse,
                    _ => continue,
                }
                redraw_only = shown > 0;
                break;
            }
        } else {
            std::thread::sleep(o.interval);
        }
        let now = if redraw_only {
            None
        } else {
            Some(sample(&o.sock)?)
        };
        let (a, b) = match &now {
            Some(n) => (&prev, n),
            None => (&prev, &prev),
        };
        let mut stdout = std::io::stdout().lock();
        if tty {
            let (w, h) = terminal::size().unwrap_or((120, 40));
            let lines = frame(o, a, b, sort, reverse, usize::from(w));
            execute!(
                stdout,
                cursor::MoveTo(0, 0),
                terminal::Clear(terminal::ClearType::All)
            )
            .map_err(|e| format!("terminal: {e}"))?;
            for l in lines.iter().take(usize::from(h)) {
                // Raw mode: lines end with CR LF.
                let _ = write!(stdout, "{l}\r\n");
            }
        } else {
            for l in frame(o, a, b, sort, reverse, usize::MAX) {
                let _ = writeln!(stdout, "{l}");
            }
            let _ = writeln!(stdout);
        }
        let _ = stdout.flush();
        if let Some(n) = now {
            prev = n;
            shown += 1;
            if o.count.is_some_and(|c| shown >= c) {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(owner: &str, reads: u64, read_bytes: u64, depth: u64) -> Ns {
        let l = leapio_service::metrics::Latency::default();
        for _ in 0..reads {
            l.record(3_000);
        }
        let lat = l.snapshot();
        Ns {
            owner: owner.into(),
            nsid: 1,
            reads,
            read_bytes,
            in_flight: depth,
            read_latency: lat,
            ..Ns::default()
        }
    }

    #[test]
    fn rows_are_rates_over_the_interval_and_sort_as_asked() {
        let t0 = Instant::now();
        let prev = Sample {
            at: t0,
            namespaces: vec![ns("a", 0, 0, 0), ns("b", 0, 0, 0)],
            controllers: vec![("a".into(), true), ("b".into(), false)],
            busy_ns: vec![0],
            tenants: Vec::new(),
        };
        let now = Sample {
            at: t0 + Duration::from_secs(2),
            namespaces: vec![ns("a", 100, 409_600, 1), ns("b", 1000, 4_096_000, 7)],
            controllers: prev.controllers.clone(),
            busy_ns: vec![1_000_000_000],
            tenants: Vec::new(),
        };
        let mut r = rows(&prev, &now);
        sort_rows(&mut r, Sort::Iops, false);
        assert_eq!(r[0].name, "b/1");
        assert!((r[0].r_iops - 500.0).abs() < 1e-6);
        assert!((r[1].r_mbps - 0.2048).abs() < 1e-6);
        assert_eq!(r[0].r_p50, Some(4));
        sort_rows(&mut r, Sort::Name, false);
        assert_eq!(r[0].name, "a/1");
        sort_rows(&mut r, Sort::Depth, true);
        assert_eq!(r[0].name, "a/1");
        let o = Options {
            sock: "/x".into(),
            interval: Duration::from_secs(2),
            sort: Sort::Iops,
            count: None,
        };
        let f = frame(&o, &prev, &now, Sort::Iops, false, 200);
        assert!(f[1].contains("controllers: 2 (1 attached)"), "{}", f[1]);
        assert!(f[1].contains("0: 50.0%"), "{}", f[1]);
        assert!(f.iter().all(|l| l.chars().count() <= 200));
    }
}
