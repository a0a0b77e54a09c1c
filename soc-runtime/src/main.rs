//! `socp`: the LeapIO runtime.

use clap::Parser;
use leapio_service::config_file;
use socp::cli::{Daemon, RuntimeOpts};
use socp::config::CtrlSpec;
use socp::controllers::{Controllers, Served};
use socp::error_chain;
use socp::link::client::LinkClient;
use socp::link::pci_function::{self, PciFunction};
use socp::link::{Carrier, Windows};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The LeapIO runtime (the data plane): serves the I/O queues of the
/// virtual NVMe controllers of a host-driver, and NVMe/TCP targets.
///
/// A host-driver (leapio-hostd) owns each VM's vfio-user connection, PCI
/// function and admin queue; socp, in another process, container or SoC,
/// polls the guests' queues through the memory the host-driver exports,
/// and can be restarted or upgraded while the guests keep their disks:
///
///   leapio-hostd --link unix:/run/leapio/hostd.sock --ctrl name=vm0,sock=/run/leapio/vm0.sock
///   socp --link unix:/run/leapio/hostd.sock --ctrl name=vm0,ns=file:/srv/vm0.img
///
/// On an SoC, each controller is a link function on its PCI bus:
///
///   socp --link pci --ctrl name=vm0,ns=file:/dev/nvme0n1
///
/// QEMU >= 10.1 attaches the controller with
///
///   -object memory-backend-memfd,id=mem,size=1G,share=on -machine q35,memory-backend=mem
///   -device '{"driver":"vfio-user-pci","socket":{"path":"/run/leapio/vm0.sock","type":"unix"}}'
///
/// or cloud-hypervisor: --memory shared=on --user-device socket=/run/leapio/vm0.sock
///
/// Both halves in one process (the host-driver embedded): `leapio --ctrl
/// sock=/run/leapio/vm0.sock,ns=file:/srv/vm0.img`.
///
/// `socp calibrate BACKEND --slo p95:500us --out FILE` measures a backend's
/// device model for --qos (`socp calibrate --help`).
#[derive(Parser, Debug)]
#[command(name = "socp", version, verbatim_doc_comment)]
struct Args {
    /// A controller of the host-driver to serve: name=NAME,ns=BACKEND[,bs=N][,ns=BACKEND[,bs=N]...]
    ///
    /// BACKEND is ram:SIZE (e.g. ram:256M), file:PATH (a regular file or a
    /// block device), nvme-tcp:HOST:PORT/SUBNQN[?options], flash:PATH[?...]
    /// or zns:PATH[?...]. A bs=N right after an ns= sets that namespace's
    /// LBA size (512..65536). Namespaces get NSIDs 1, 2, ... in order. The
    /// controller's limits and serial are the host-driver's.
    #[arg(long = "ctrl", value_name = "SPEC", verbatim_doc_comment)]
    ctrls: Vec<CtrlSpec>,

    /// The host-driver: unix:PATH of its link socket; or, on an SoC,
    /// pci:ADDRESS of a link function (pci: every one found), each serving
    /// the --ctrl of the same name. Needed to serve controllers.
    #[arg(long, value_name = "unix:PATH|pci[:ADDRESS]")]
    link: Option<LinkAddr>,

    /// Take the controllers over from the runtime serving them now (it
    /// drains and lets go; an upgrade in place).
    #[arg(long, requires = "link")]
    handover: bool,

    /// How long to keep trying to reach the host-driver.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    link_timeout: u64,

    #[command(flatten)]
    opts: RuntimeOpts,
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
    if let Some(code) = socp::cli::subcommand(&argv) {
        return code;
    }
    let (mut args, config) = config_file::parse_or_exit::<Args>(argv);
    args.opts.running_config = config.toml;
    leapio_service::logging::init(&args.opts.log_level, args.opts.log_format);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("socp: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    if args.ctrls.is_empty() && args.opts.targets() == 0 && args.opts.control.is_none() {
        return Err(
            "nothing to serve: give --link and --ctrl, --tcp-target, --rdma-target or --control (see --help)"
                .into(),
        );
    }
    if !args.ctrls.is_empty() && args.link.is_none() {
        return Err("--ctrl serves a host-driver's controller: give --link unix:PATH or pci (the host-driver and the runtime in one process: leapio --ctrl sock=PATH,...)".into());
    }
    let d = Daemon::start(&args.opts)?;
    let served = match &args.link {
        Some(LinkAddr::Unix(path)) => serve_split(&args, path, &d),
        Some(LinkAddr::Pci(bdf)) => serve_pci(&args, bdf.as_deref(), &d),
        None => serve_targets(&args, &d),
    };
    d.finish(served)
}

/// No host-driver: the NVMe/TCP targets (and the control socket's QoS
/// methods) until SIGTERM.
fn serve_targets(args: &Args, d: &Daemon) -> Result<(), String> {
    let none: leapio_service::control::Handler = Arc::new(|method, _| {
        Err(format!(
            "unknown method {method} (no host-driver: qos methods only)"
        ))
    });
    d.serve_control(&args.opts, none, d.sources(Vec::new()))?;
    tracing::info!(targets = args.opts.targets(), "socp running");
    d.ready(
        &format!("serving {} NVMe-oF targets", args.opts.targets()),
        || true,
    );
    while !d.stopping() {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Serve the controllers of the host-driver at `path`; reconnect if the
/// link drops; on SIGTERM let go of everything cleanly (handover).
fn serve_split(args: &Args, path: &std::path::Path, d: &Daemon) -> Result<(), String> {
    let ctrls = Controllers::new(args.ctrls.iter().map(Served::of).collect());
    d.serve_control(&args.opts, ctrls.handler(), d.sources(vec![ctrls.clone()]))?;
    let link_timeout = Duration::from_secs(args.link_timeout);
    serve_link(
        args,
        &format!("link {}", path.display()),
        || connect(path, link_timeout, &d.stop).map(Carrier::socket),
        &ctrls,
        d,
        &|status: &str| d.ready(status, || true),
    )
}

/// Serve link functions (a runtime on an SoC): each serves the --ctrl of
/// its controller's name, in a thread of its own.
fn serve_pci(args: &Args, bdf: Option<&str>, d: &Daemon) -> Result<(), String> {
    let bdfs = match bdf {
        Some(b) => vec![b.to_string()],
        None => pci_function::find(),
    };
    if bdfs.is_empty() {
        return Err("no LeapIO link function on the PCI bus (/sys/bus/pci/devices)".into());
    }
    let functions: Vec<(String, Arc<Controllers>)> = bdfs
        .iter()
        .map(|b| (b.clone(), Controllers::new(Vec::new())))
        .collect();
    let sets: Vec<Arc<Controllers>> = functions.iter().map(|(_, c)| c.clone()).collect();
    d.serve_control(
        &args.opts,
        Controllers::handler_of_all(sets.clone()),
        d.sources(sets),
    )?;
    // Ready once every link function served its controller.
    let left = AtomicUsize::new(functions.len());
    let serving = |status: &str| {
        if left.fetch_sub(1, Ordering::AcqRel) == 1 {
            d.ready(status, || true);
        }
    };
    let serving = &serving;
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = functions
            .iter()
            .map(|(b, c)| s.spawn(move || serve_function(args, b, c, d, serving)))
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
    ctrls: &Arc<Controllers>,
    d: &Daemon,
    serving: &(dyn Fn(&str) + Sync),
) -> Result<(), String> {
    let f = Arc::new(PciFunction::open(bdf).map_err(|e| format!("link function {bdf}: {e}"))?);
    let name = f.name().to_string();
    let spec = args.ctrls.iter().find(|c| c.name == name).ok_or_else(|| {
        format!("link function {bdf} belongs to controller {name}: give --ctrl name={name},ns=...")
    })?;
    tracing::info!(bdf, ctrl = %name, "link function opened");
    ctrls.serve(Served::of(spec));
    let windows: Arc<dyn Windows> = f.clone();
    serve_link(
        args,
        &format!("link function {bdf}"),
        || {
            let rings = f
                .open_session()
                .map_err(|e| format!("link function {bdf}: {e}"))?;
            Ok(Carrier::rings(rings, windows.clone()))
        },
        ctrls,
        d,
        serving,
    )
}

/// Run one link: connect, attach the controllers, serve until the link
/// drops (then connect again) or SIGTERM (then let go of everything: a
/// handover). `serving` is called once, when the controllers were first
/// attached, with a status line.
fn serve_link(
    args: &Args,
    what: &str,
    mut connect: impl FnMut() -> Result<Carrier, String>,
    ctrls: &Arc<Controllers>,
    d: &Daemon,
    serving: &(dyn Fn(&str) + Sync),
) -> Result<(), String> {
    let (rt, stop) = (&d.rt, &d.stop);
    socp::link::client::set_exit_if_undrained(true);
    let software = format!("socp {}", env!("CARGO_PKG_VERSION"));
    let mut first = true;
    // After a link was lost: until when a host-driver that does not
    // answer yet (one being restarted) is waited for.
    let mut lost_at: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        let transport = connect()?;
        let (client, reader) = match LinkClient::connect(transport, rt.clone(), &software) {
            Ok(c) => c,
            Err(e)
                if lost_at
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(args.link_timeout)) =>
            {
                tracing::warn!("{what}: {}: trying again", error_chain(&e));
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(format!("{what}: {}", error_chain(&e))),
        };
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
        tracing::info!(host = %client.host(), controllers = client.served().len(), pollers = rt.pollers(), "socp running ({what})");
        if first {
            serving(&format!(
                "serving {} controllers over {what}, {} pollers",
                client.served().len(),
                rt.pollers()
            ));
        }
        first = false;
        while !stop.load(Ordering::Acquire) && !reader.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
            if had_controllers
                && args.opts.control.is_none()
                && client.served().is_empty()
                && client.link_up()
            {
                tracing::info!("every controller was handed over or removed: exiting");
                return Ok(());
            }
        }
        if stop.load(Ordering::Acquire) {
            tracing::info!("stopping: letting go of every controller");
            d.notify_stopping();
            client.detach_all();
            ctrls.set_client(None);
            return Ok(());
        }
        let _ = reader.join();
        ctrls.set_client(None);
        lost_at = Some(Instant::now());
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
