//! What an operator's dashboard reads: both daemons serve their figures in
//! the Prometheus text format (`--metrics`), read here with a Prometheus
//! text parser, and they match what a guest did.

use leapio_service::metrics::{scrape, MetricsAddr};
use leapio_tests::split::{bin, kill9, term};
use leapio_tests::Driver;
use prometheus_parse::{Sample, Scrape, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BS: u32 = 512;
const WRITES: u64 = 40;
const READS: u64 = 25;

fn parse(page: &str) -> Scrape {
    Scrape::parse(page.lines().map(|l| Ok(l.to_string()))).expect("a page in the text format")
}

/// The value of `metric` with `labels` (counters and gauges).
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    sample(s, metric, labels).and_then(|x| match &x.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
        _ => None,
    })
}

fn sample<'a>(s: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
}

/// The count in the last (+Inf) bucket of histogram `metric`.
fn histogram_count(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    match &sample(s, metric, labels)?.value {
        Value::Histogram(b) => b
            .iter()
            .find(|c| c.less_than.is_infinite())
            .map(|c| c.count),
        _ => None,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn spawn_socp(dir: &Path, link: &Path, metrics: &MetricsAddr, log: &str) -> Child {
    let log = std::fs::File::create(dir.join(log)).unwrap();
    Command::new(bin("socp"))
        .arg("--link")
        .arg(format!("unix:{}", link.display()))
        .arg("--ctrl")
        .arg(format!(
            "name=vm0,ns=file:{},ns=flash:{}?channels=1&dies=2&blocks=32&pages=16&read=0&prog=0&erase=0",
            dir.join("vm0.img").display(),
            dir.join("vm0.flash").display()
        ))
        .arg("--metrics")
        .arg(metrics.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn socp")
}

/// Scrape `addr` until `ready` holds for the page (the daemons start
/// serving a moment after they are spawned).
fn scrape_until(addr: &MetricsAddr, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(page) = scrape(addr) {
            let s = parse(&page);
            if ready(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("{what} not seen in 30 s; last page:\n{page}");
            }
        } else if Instant::now() > deadline {
            panic!("{what}: {addr} never answered");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn both_daemons_serve_metrics_that_match_what_the_guest_did() {
    let dir = leapio_tests::server::test_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("link.sock");
    // A file: a runtime that replaces a dead one takes it over.
    std::fs::File::create(dir.join("vm0.img"))
        .and_then(|f| f.set_len(4 << 20))
        .unwrap();
    let vfio = dir.join("vm0.sock");
    let host_addr = MetricsAddr::Tcp(format!("127.0.0.1:{}", free_port()).parse().unwrap());
    let rt_addr = MetricsAddr::Unix(dir.join("socp-metrics.sock"));
    let mut hostd = Command::new(bin("leapio-hostd"))
        .arg("--link")
        .arg(format!("unix:{}", link.display()))
        .arg("--ctrl")
        .arg(format!("name=vm0,sock={},io-queues=2", vfio.display()))
        .arg("--metrics")
        .arg(host_addr.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("hostd.log")).unwrap())
        .spawn()
        .expect("spawn leapio-hostd");
    let mut socp = spawn_socp(&dir, &link, &rt_addr, "socp-1.log");
    let attached =
        |s: &Scrape| value(s, "leapio_host_runtime_attached", &[("ctrl", "vm0")]) == Some(1.0);
    scrape_until(&host_addr, "the runtime attached", attached);

    // The guest: writes, reads, and one read past the end (an error).
    let mut d = Driver::bring_up(&vfio, 1 << 20, 2, 16).expect("guest");
    let block: Vec<u8> = (0..BS).map(|i| u8::try_from(i % 251).unwrap()).collect();
    for i in 0..WRITES {
        let c = d
            .write_blocks(1 + u16::try_from(i % 2).unwrap(), 1, i, BS, &block)
            .unwrap();
        Driver::check("write", &c).unwrap();
    }
    for i in 0..READS {
        let (c, back) = d.read_blocks(1, 1, i, BS, u64::from(BS)).unwrap();
        Driver::check("read", &c).unwrap();
        assert_eq!(back, block);
    }
    // The flash namespace: its FTL's figures.
    let page = d.identify_namespace(2).expect("namespace 2");
    let fbs = 1u32 << page.lbaf[usize::from(page.flbas & 0xf)].lbads;
    for i in 0..4u64 {
        let c = d
            .write_blocks(1, 2, i, fbs, &vec![9u8; fbs as usize])
            .unwrap();
        Driver::check("flash write", &c).unwrap();
    }
    let blocks = (4u64 << 20) / u64::from(BS);
    let (c, _) = d.read_blocks(2, 1, blocks, BS, u64::from(BS)).unwrap();
    assert!(Driver::check("read past the end", &c).is_err());

    // The runtime: per namespace, with the controller's labels.
    let ns = [("ctrl", "vm0"), ("nsid", "1")];
    let rt = scrape_until(&rt_addr, "the guest's commands", |s| {
        value(s, "leapio_ns_read_commands_total", &ns) == Some((READS + 1) as f64)
    });
    let v = |m: &str| value(&rt, m, &ns).unwrap_or_else(|| panic!("no {m} for vm0/1"));
    assert_eq!(v("leapio_ns_write_commands_total"), WRITES as f64);
    assert_eq!(
        v("leapio_ns_written_bytes_total"),
        (WRITES * u64::from(BS)) as f64
    );
    assert_eq!(
        v("leapio_ns_read_bytes_total"),
        (READS * u64::from(BS)) as f64
    );
    assert_eq!(v("leapio_ns_errors_total"), 1.0);
    assert_eq!(v("leapio_ns_in_flight"), 0.0);
    assert_eq!(
        histogram_count(&rt, "leapio_ns_read_latency_seconds", &ns),
        Some((READS + 1) as f64)
    );
    assert_eq!(
        histogram_count(&rt, "leapio_ns_write_latency_seconds", &ns),
        Some(WRITES as f64)
    );
    assert_eq!(
        value(
            &rt,
            "leapio_runtime_controller_attached",
            &[("ctrl", "vm0")]
        ),
        Some(1.0)
    );
    assert!(
        rt.docs.contains_key("leapio_ns_read_commands_total"),
        "families have their HELP"
    );
    let flash = [("ctrl", "vm0"), ("nsid", "2")];
    assert_eq!(
        value(&rt, "leapio_backend_ftl_host_pages_written_total", &flash),
        Some(4.0)
    );
    let wa = value(&rt, "leapio_backend_ftl_write_amplification", &flash).unwrap();
    assert!(wa >= 1.0, "write amplification {wa}");

    // The host-driver: the guest's view, from the queue-state area.
    let c = [("ctrl", "vm0")];
    let host = scrape_until(&host_addr, "the guest's reads", |s| {
        value(s, "leapio_host_read_commands_total", &c) == Some(READS as f64)
    });
    let h = |m: &str| value(&host, m, &c).unwrap_or_else(|| panic!("no {m} for vm0"));
    // Both namespaces: the file's and the 4 flash pages.
    assert_eq!(h("leapio_host_write_commands_total"), (WRITES + 4) as f64);
    assert_eq!(h("leapio_host_client_connected"), 1.0);
    assert_eq!(h("leapio_host_runtime_attaches_total"), 1.0);
    assert_eq!(h("leapio_host_runtime_losses_total"), 0.0);

    // A runtime that dies and is replaced: counted, and the guest's counts
    // survive it.
    kill9(&mut socp);
    let mut socp = spawn_socp(&dir, &link, &rt_addr, "socp-2.log");
    let host = scrape_until(&host_addr, "the second runtime", |s| {
        value(s, "leapio_host_runtime_attaches_total", &c) == Some(2.0) && attached(s)
    });
    assert_eq!(
        value(&host, "leapio_host_runtime_losses_total", &c),
        Some(1.0)
    );
    assert_eq!(
        value(&host, "leapio_host_read_commands_total", &c),
        Some(READS as f64)
    );
    drop(d);
    let _ = term(&mut socp, Duration::from_secs(10));
    let _ = term(&mut hostd, Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The live view, read off a terminal: `leapioctl top` under tmux shows the
/// busy namespace with its rates, sorts by another key when asked, and
/// quits on q.
#[test]
fn top_shows_the_busy_namespace_and_sorts_and_quits_on_keys() {
    let dir = leapio_tests::server::test_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("link.sock");
    let control = dir.join("socp-ctl.sock");
    let mut hostd = Command::new(bin("leapio-hostd"))
        .arg("--link")
        .arg(format!("unix:{}", link.display()))
        .arg("--ctrl")
        .arg(format!("name=vm0,sock={}", dir.join("vm0.sock").display()))
        .arg("--ctrl")
        .arg(format!("name=vm1,sock={}", dir.join("vm1.sock").display()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("hostd.log")).unwrap())
        .spawn()
        .expect("spawn leapio-hostd");
    let mut socp = Command::new(bin("socp"))
        .arg("--link")
        .arg(format!("unix:{}", link.display()))
        .arg("--ctrl")
        .arg("name=vm0,ns=ram:4M")
        .arg("--ctrl")
        .arg("name=vm1,ns=ram:4M")
        .arg("--control")
        .arg(&control)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("socp.log")).unwrap())
        .spawn()
        .expect("spawn socp");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut guest = loop {
        match leapio_tests::split::Workload::new(&dir.join("vm1.sock"), 64, 8, 1) {
            Ok(w) => break w,
            Err(e) => assert!(Instant::now() < deadline, "vm1 never came up: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // vm1 busy (verified reads and writes at QD 8), vm0 idle, while top
    // runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let io = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                guest.run_for(Duration::from_millis(100));
            }
            guest.drain(Duration::from_secs(10));
            assert!(guest.errors.is_empty(), "{:?}", guest.errors);
            guest.completed
        })
    };
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .arg("-L")
            .arg(format!("leapio-top-{}", std::process::id()))
            .args(args)
            .output()
            .expect("tmux (scripts/setup-host.sh installs it)")
    };
    let cmd = format!(
        "{} -s {} top --interval 0.5",
        bin("leapioctl").display(),
        control.display()
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "40",
        &cmd,
    ]);
    assert!(started.status.success(), "tmux: {started:?}");
    let screen = |what: &str, ready: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = tmux(&["capture-pane", "-p", "-t", "top"]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if ready(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not on the screen:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // The rows: vm1's first (sorted by IOPS), with read and write IOPS
    // above 0.
    let row_iops = |text: &str, name: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let f: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .take(2)
            .map(|v| v.parse().unwrap_or(-1.0))
            .collect();
        Some(f.iter().sum())
    };
    let first = screen("vm1 writing", &|t| {
        row_iops(t, "vm1/1").is_some_and(|w| w > 0.0)
    });
    let order: Vec<&str> = first
        .lines()
        .filter(|l| l.starts_with("vm"))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(order, ["vm1/1", "vm0/1"], "sorted by IOPS:\n{first}");
    assert!(first.contains("controllers: 2 (2 attached)"), "{first}");
    assert_eq!(
        row_iops(&first, "vm0/1"),
        Some(0.0),
        "vm0 is idle:\n{first}"
    );
    // n: by name.
    tmux(&["send-keys", "-t", "top", "n"]);
    let by_name = screen("sorted by name", &|t| t.contains("sorted by name"));
    let order: Vec<&str> = by_name
        .lines()
        .filter(|l| l.starts_with("vm"))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(order, ["vm0/1", "vm1/1"], "sorted by name:\n{by_name}");
    // q: it quits and gives the terminal back.
    tmux(&["send-keys", "-t", "top", "q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux(&["has-session", "-t", "top"]).status.success() {
        assert!(Instant::now() < deadline, "top did not quit on q");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(io.join().unwrap() > 0);
    let _ = tmux(&["kill-server"]);
    let _ = term(&mut socp, Duration::from_secs(10));
    let _ = term(&mut hostd, Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
}
