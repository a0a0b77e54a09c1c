//! `socp`: the LeapIO runtime.

use clap::Parser;
use leapio_host_driver::control;
use socp::config::CtrlSpec;
use socp::controllers::{Controllers, Served};
use socp::crash::{self, CrashAt};
use socp::embedded::Embedded;
use socp::error_chain;
use socp::link_client::LinkClient;
use socp::pci_function::{self, PciFunction};
use socp::qos::spec::{QosSpec, TenantSpec};
use socp::runtime::Runtime;
use socp::tcp_target::{TcpTarget, TcpTargetSpec};
use socp::transport::{Transport, Windows};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The LeapIO runtime: serves the I/O queues of virtual NVMe controllers.
///
/// Split (the LeapIO deployment): a host-driver (leapio-hostd) owns each
/// VM's vfio-user connection, PCI function and admin queue; socp, in
/// another process, container or SoC, polls the guests' queues through the
/// memory the host-driver exports, and can be restarted or upgraded while
/// the guests keep their disks:
///
///   leapio-hostd --link unix:/run/leapio/hostd.sock --ctrl name=vm0,sock=/run/leapio/vm0.sock
///   socp --link unix:/run/leapio/hostd.sock --ctrl name=vm0,ns=file:/srv/vm0.img
///
/// All-in-one (the host-driver embedded, linked in-process):
///
///   socp --ctrl sock=/run/leapio/vm0.sock,ns=file:/srv/vm0.img
///
/// Either way QEMU >= 10.1 attaches the controller with
///
///   -object memory-backend-memfd,id=mem,size=1G,share=on -machine q35,memory-backend=mem
///   -device '{"driver":"vfio-user-pci","socket":{"path":"/run/leapio/vm0.sock","type":"unix"}}'
///
/// or cloud-hypervisor: --memory shared=on --user-device socket=/run/leapio/vm0.sock
///
/// `socp calibrate BACKEND --slo p95:500us --out FILE` measures a backend's
/// device model for --qos (`socp calibrate --help`).
#[derive(Parser, Debug)]
#[command(name = "socp", version, verbatim_doc_comment)]
struct Args {
    /// A controller: [name=NAME,][sock=PATH,]ns=BACKEND[,bs=N][,ns=BACKEND[,bs=N]...][,io-queues=N][,queue-entries=N][,mdts=N][,serial=S]
    ///
    /// With --link: name= is the host-driver's controller to serve (the
    /// limits and serial are the host-driver's). All-in-one: sock= is the
    /// vfio-user socket the hypervisor connects to.
    /// BACKEND is ram:SIZE (e.g. ram:256M), file:PATH (a regular file or a
    /// block device) or nvme-tcp:HOST:PORT/SUBNQN[?options]. A bs=N right
    /// after an ns= sets that namespace's LBA size (512..65536). Namespaces
    /// get NSIDs 1, 2, ... in order. io-queues: I/O queue pairs offered
    /// (default 32); queue-entries: max entries per queue (default 1024);
    /// mdts: max transfer 4 KiB << N (default 5 = 128 KiB).
    #[arg(long = "ctrl", value_name = "SPEC", verbatim_doc_comment)]
    ctrls: Vec<CtrlSpec>,

    /// Serve the controllers of a separate host-driver: unix:PATH of its
    /// link socket; or, on an SoC, pci:ADDRESS of a link function (pci:
    /// every one found), each serving the --ctrl of the same name. Without
    /// it, socp embeds the host-driver.
    #[arg(long, value_name = "unix:PATH|pci[:ADDRESS]")]
    link: Option<LinkAddr>,

    /// Export namespaces over NVMe/TCP: listen=IP:PORT,nqn=NQN,ns=BACKEND[,bs=N][,ns=...][,allow=HOSTNQN[:SECRET[:CTRLSECRET]]...][,dhchap-hashes=H:H..][,dhchap-dhgroups=G:G..][,io-queues=N][,queue-entries=N][,mdts=N][,serial=S]
    ///
    /// Linux hosts attach with `nvme connect -t tcp -a IP -s PORT -n NQN`;
    /// `nvme discover` works against the same address. Without allow= any
    /// host may connect. A host given a DH-HMAC-CHAP SECRET (DHHC-1:XX:...:,
    /// as `nvme gen-dhchap-key` prints) must authenticate each queue
    /// (`nvme connect --dhchap-secret`); CTRLSECRET lets it authenticate
    /// the controller too (`--dhchap-ctrl-secret`). Hashes: sha256 sha384
    /// sha512; DH groups: ffdhe2048 ffdhe3072 ffdhe4096 null (the default
    /// order).
    #[arg(long = "tcp-target", value_name = "SPEC", verbatim_doc_comment)]
    tcp_targets: Vec<TcpTargetSpec>,

    /// Poller threads per NVMe/TCP target.
    #[arg(long, default_value_t = 1)]
    tcp_pollers: usize,

    /// Poller threads running the I/O queues.
    #[arg(long, default_value_t = 1)]
    pollers: usize,

    /// When a poller has only backend I/O (file, block device) pending and
    /// the guests are quiet, sleep in io_uring up to this many microseconds
    /// instead of spinning (0 = always spin); with only commands held for
    /// QoS tokens pending, sleep that long. Helps when pollers share
    /// cores with the kernel's I/O completion work; costs up to this much
    /// latency on a new submission while waiting.
    #[arg(long, default_value_t = 0, value_name = "US")]
    io_wait_us: u64,

    /// Pin poller i to the i-th CPU of this list (e.g. 2,3), cycling.
    #[arg(long, value_delimiter = ',', value_name = "CPUS")]
    poller_cpus: Vec<usize>,

    /// With --link: take the controllers over from the runtime serving them
    /// now (it drains and lets go; an upgrade in place).
    #[arg(long, requires = "link")]
    handover: bool,

    /// With --link: how long to keep trying to reach the host-driver.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    link_timeout: u64,

    /// Serve the control socket (JSON-RPC; `leapioctl`) here: add and
    /// remove controllers and namespaces while running.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,

    /// QoS (ReFlex-style cost-based tokens) in front of the backends:
    /// device=FILE[,be-floor=PCT][,burst-us=N][,lc-burst-us=N]
    ///
    /// FILE is a device model made by socp-calibrate (the cost of a 4 KiB
    /// write in tokens, a 4 KiB read costing 1, and the tokens per second
    /// the device carries at each latency). be-floor: share of the rate
    /// that latency-critical reservations may not take (1-99, default 5);
    /// burst-us: bucket depth of best-effort tenants, in microseconds of
    /// their rate (1000); lc-burst-us: that of latency-critical tenants
    /// (50000: a host's own jitter sends bursts).
    #[arg(long, value_name = "SPEC", verbatim_doc_comment)]
    qos: Option<QosSpec>,

    /// A QoS tenant (needs --qos):
    /// [name=NAME,]ctrl=CTRL|hostnqn=NQN[,ns=NSID],class=lc,slo=p95:500us|p99:1ms,iops=N[,rw=READ:WRITE]
    /// [name=NAME,]ctrl=CTRL|hostnqn=NQN[,ns=NSID],class=be[,weight=N]
    ///
    /// Latency-critical tenants reserve IOPS at a read/write mix (default
    /// 100:0) under a tail-latency SLO and are refused (socp does not
    /// start) when the device cannot carry them; best-effort tenants share
    /// what is left by weight. I/O of no tenant is best effort (tenant
    /// "default"). Changed at run time with leapioctl qos-add / qos-remove.
    #[arg(long = "tenant", value_name = "SPEC", verbatim_doc_comment)]
    tenants: Vec<TenantSpec>,

    /// Log filter (tracing env-filter syntax), overridden by RUST_LOG.
    #[arg(long, default_value = "info")]
    log_level: String,

    /// Test hook: kill this process (SIGKILL) the N-th time the queue
    /// protocol reaches POINT (sqe-fetched, inflight-recorded,
    /// completion-recorded, cqe-written, cqe-posted).
    #[arg(long, value_name = "POINT:N", hide = true)]
    crash_at: Option<CrashAt>,

    /// Test hook: never answer the host-driver's queue deletions.
    #[arg(long, hide = true)]
    test_hang_deletes: bool,
}

/// `unix:PATH`.
#[derive(Clone, Debug)]
enum LinkAddr {
    Unix(PathBuf),
    /// A link function on the PCI bus (an SoC): one address, or all found.
    Pci(Option<String>),
}

impl FromStr for LinkAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "pci" {
            return Ok(LinkAddr::Pci(None));
        }
        if let Some(b) = s.strip_prefix("pci:").filter(|b| !b.is_empty()) {
            return Ok(LinkAddr::Pci(Some(b.to_string())));
        }
        match s.strip_prefix("unix:") {
            Some(p) if !p.is_empty() => Ok(LinkAddr::Unix(PathBuf::from(p))),
            _ => Err(format!("expected unix:PATH, pci:ADDRESS or pci, got '{s}'")),
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("calibrate") {
        leapio_host_driver::init_logging("warn");
        return match socp::qos::calibrate::main(argv.into_iter().skip(1)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                if !e.is_empty() {
                    eprintln!("socp calibrate: {e}");
                }
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    leapio_host_driver::init_logging(&args.log_level);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("socp: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Check the controllers' specs against the deployment.
fn check_specs(args: &Args) -> Result<(), String> {
    if args.ctrls.is_empty() && args.tcp_targets.is_empty() && args.control.is_none() {
        return Err("nothing to serve: give --ctrl, --tcp-target or --control (see --help)".into());
    }
    if !args.tenants.is_empty() && args.qos.is_none() {
        return Err("--tenant needs --qos device=FILE".into());
    }
    for c in &args.ctrls {
        match (&args.link, &c.sock, &c.name) {
            (Some(_), Some(_), _) => {
                return Err(format!(
                    "controller {}: sock= belongs to the host-driver with --link (give name=)",
                    c.ctrl_name()
                ))
            }
            (Some(_), None, None) => return Err("with --link each --ctrl needs name=".into()),
            (Some(_), _, _) if !c.host_keys.is_empty() => {
                return Err(format!(
                "controller {}: {} are set on the host-driver (leapio-hostd --ctrl) with --link",
                c.ctrl_name(),
                c.host_keys.join(", ")
            ))
            }
            (None, None, _) => {
                return Err(format!(
                    "controller {}: all-in-one needs sock=PATH (or give --link)",
                    c.ctrl_name()
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

fn run(args: Args) -> Result<(), String> {
    check_specs(&args)?;
    if let Some(c) = args.crash_at {
        crash::arm(c);
    }
    if args.test_hang_deletes {
        crash::arm_hang_deletes();
    }
    if let Some(q) = &args.qos {
        socp::qos::global()
            .configure(q, &args.tenants)
            .map_err(|e| format!("--qos: {e}"))?;
        tracing::info!(tenants = args.tenants.len(), "QoS on");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("cannot install signal handler: {e}"))?;
    }
    let io_wait = (args.io_wait_us > 0).then(|| Duration::from_micros(args.io_wait_us));
    let rt = Runtime::start_with(args.pollers, &args.poller_cpus, io_wait)
        .map_err(|e| format!("starting pollers: {e}"))?;
    let mut targets = Vec::new();
    for (i, spec) in args.tcp_targets.iter().enumerate() {
        match TcpTarget::start(i, spec, args.tcp_pollers, stop.clone()) {
            Ok(t) => targets.push(t),
            Err(e) => {
                stop.store(true, Ordering::Release);
                rt.shutdown();
                return Err(error_chain(&e));
            }
        }
    }
    let result = match &args.link {
        Some(LinkAddr::Unix(path)) => serve_split(&args, path, &rt, &stop),
        Some(LinkAddr::Pci(bdf)) => serve_pci(&args, bdf.as_deref(), &rt, &stop),
        None => serve_all_in_one(&args, &rt, &stop),
    };
    stop.store(true, Ordering::Release);
    let mut flush_failed = false;
    for t in targets {
        for b in t.join() {
            if let Err(e) = b.flush() {
                tracing::error!("flushing {}: {e}", b.describe());
                flush_failed = true;
            }
        }
    }
    rt.shutdown();
    tracing::info!("stopped");
    result?;
    if flush_failed {
        return Err("flushing backends failed (see above)".into());
    }
    Ok(())
}

fn start_control(
    args: &Args,
    ctrls: &Arc<Controllers>,
    stop: &Arc<AtomicBool>,
) -> Result<(), String> {
    if let Some(path) = &args.control {
        let inner = ctrls.handler();
        let handler: control::Handler = Arc::new(move |method, params| {
            socp::qos::global()
                .handle(method, params)
                .unwrap_or_else(|| inner(method, params))
        });
        control::serve(path, handler, stop.clone())
            .map_err(|e| format!("control socket {}: {e}", path.display()))?;
        tracing::info!(path = %path.display(), "control socket");
    }
    Ok(())
}

/// Serve the controllers of the host-driver at `path`; reconnect if the
/// link drops; on SIGTERM let go of everything cleanly (handover).
fn serve_split(
    args: &Args,
    path: &std::path::Path,
    rt: &Arc<Runtime>,
    stop: &Arc<AtomicBool>,
) -> Result<(), String> {
    let ctrls = Controllers::new(args.ctrls.iter().map(Served::of).collect(), None);
    start_control(args, &ctrls, stop)?;
    let link_timeout = Duration::from_secs(args.link_timeout);
    serve_link(
        args,
        &format!("link {}", path.display()),
        || connect(path, link_timeout, stop).map(Transport::socket),
        &ctrls,
        rt,
        stop,
    )
}

/// Serve link functions (a runtime on an SoC): each serves the --ctrl of
/// its controller's name, in a thread of its own.
fn serve_pci(
    args: &Args,
    bdf: Option<&str>,
    rt: &Arc<Runtime>,
    stop: &Arc<AtomicBool>,
) -> Result<(), String> {
    let bdfs = match bdf {
        Some(b) => vec![b.to_string()],
        None => pci_function::find(),
    };
    if bdfs.is_empty() {
        return Err("no LeapIO link function on the PCI bus (/sys/bus/pci/devices)".into());
    }
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = bdfs
            .iter()
            .map(|b| s.spawn(move || serve_function(args, b, rt, stop)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a link thread panicked".into()))
            })
            .collect()
    });
    results.into_iter().collect()
}

fn serve_function(
    args: &Args,
    bdf: &str,
    rt: &Arc<Runtime>,
    stop: &Arc<AtomicBool>,
) -> Result<(), String> {
    let f = Arc::new(PciFunction::open(bdf).map_err(|e| format!("link function {bdf}: {e}"))?);
    let name = f.name().to_string();
    let spec = args
        .ctrls
        .iter()
        .find(|c| c.ctrl_name() == name)
        .ok_or_else(|| {
            format!(
                "link function {bdf} belongs to controller {name}: give --ctrl name={name},ns=..."
            )
        })?;
    tracing::info!(bdf, ctrl = %name, "link function opened");
    let ctrls = Controllers::new(vec![Served::of(spec)], None);
    let windows: Arc<dyn Windows> = f.clone();
    serve_link(
        args,
        &format!("link function {bdf}"),
        || {
            let rings = f
                .open_session()
                .map_err(|e| format!("link function {bdf}: {e}"))?;
            Ok(Transport::rings(rings, windows.clone()))
        },
        &ctrls,
        rt,
        stop,
    )
}

/// Run one link: connect, attach the controllers, serve until the link
/// drops (then connect again) or SIGTERM (then let go of everything: a
/// handover).
fn serve_link(
    args: &Args,
    what: &str,
    mut connect: impl FnMut() -> Result<Transport, String>,
    ctrls: &Arc<Controllers>,
    rt: &Arc<Runtime>,
    stop: &Arc<AtomicBool>,
) -> Result<(), String> {
    let software = format!("socp {}", env!("CARGO_PKG_VERSION"));
    let mut first = true;
    while !stop.load(Ordering::Acquire) {
        let transport = connect()?;
        let (client, reader) = LinkClient::connect(transport, rt.clone(), &software)
            .map_err(|e| format!("{what}: {}", error_chain(&e)))?;
        ctrls.set_client(Some(client.clone()));
        match ctrls.attach_all(args.handover && first, stop) {
            Ok(()) => {}
            Err(e) if first => {
                client.detach_all();
                return Err(e);
            }
            Err(e) => tracing::error!("{e}"),
        }
        let had_controllers = !ctrls.is_empty();
        first = false;
        tracing::info!(host = %client.host(), controllers = client.served().len(), pollers = rt.pollers(), "socp running ({what})");
        while !stop.load(Ordering::Acquire) && !reader.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
            if had_controllers && args.control.is_none() && client.served().is_empty() {
                tracing::info!("every controller was handed over or removed: exiting");
                return Ok(());
            }
        }
        if stop.load(Ordering::Acquire) {
            tracing::info!("stopping: letting go of every controller");
            client.detach_all();
            ctrls.set_client(None);
            return Ok(());
        }
        let _ = reader.join();
        ctrls.set_client(None);
        tracing::warn!("{what} lost: reconnecting");
    }
    Ok(())
}

/// Connect to the host-driver's link socket, retrying until `timeout`.
fn connect(
    path: &std::path::Path,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<UnixStream, String> {
    let deadline = Instant::now() + timeout;
    let mut said = false;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline || stop.load(Ordering::Acquire) => {
                return Err(format!(
                    "cannot reach the host-driver at {}: {e}",
                    path.display()
                ))
            }
            Err(e) => {
                if !said {
                    tracing::info!(path = %path.display(), "waiting for the host-driver: {e}");
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The all-in-one socp: the host-driver in this process, linked over a
/// socket pair.
fn serve_all_in_one(args: &Args, rt: &Arc<Runtime>, stop: &Arc<AtomicBool>) -> Result<(), String> {
    let mut e = Embedded::start(&args.ctrls, rt)?;
    if let Err(why) = start_control(args, &e.ctrls, stop) {
        e.shutdown();
        return Err(why);
    }
    tracing::info!(
        controllers = args.ctrls.len(),
        pollers = rt.pollers(),
        "socp running"
    );
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("stopping");
    e.shutdown();
    Ok(())
}
