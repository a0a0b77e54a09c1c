//! `leapio-hostd`: the LeapIO host-driver.

use clap::Parser;
use leapio_host_driver::{keep, HostCtrlSpec, HostDriver};
use leapio_service::config_file;
use leapio_service::control::{self, param_str, Handler};
use leapio_service::error_chain as chain;
use leapio_service::notify;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The LeapIO host-driver: the host side of a split deployment.
///
/// Per VM it owns the hypervisor's vfio-user connection, the PCI NVMe
/// function and its admin queue; a runtime (socp) in another process,
/// container or SoC serves the I/O queues through the guest memory,
/// doorbells and queue state this process exports over a link. The
/// runtime can die, restart or be upgraded while the guest keeps its disk:
/// the guest's I/O waits, and the new runtime finishes what the old one
/// left (nothing is lost, nothing completes twice).
///
///   leapio-hostd --link unix:/run/leapio/hostd.sock --ctrl name=vm0,sock=/run/leapio/vm0.sock
///   socp --link unix:/run/leapio/hostd.sock --ctrl name=vm0,ns=file:/srv/vm0.img
///   qemu-system-x86_64 ... -device '{"driver":"vfio-user-pci","socket":{"path":"/run/leapio/vm0.sock","type":"unix"}}'
#[derive(Parser, Debug)]
#[command(name = "leapio-hostd", version, verbatim_doc_comment)]
struct Args {
    /// Where runtimes connect: unix:PATH (created with mode 0600).
    #[arg(long, value_name = "unix:PATH", required_unless_present = "fd_keeper")]
    link: Option<String>,

    /// Keep the guests' connections, memory, interrupts and device state
    /// in an fd keeper at PATH (started if none runs), so that a
    /// host-driver started again after this one dies (or with --handover,
    /// while it runs) takes every controller over without the guests
    /// noticing. Controllers the keeper holds come back with their
    /// clients (a --ctrl naming one of them is ignored: the guest keeps
    /// the device it had); --ctrl adds the others.
    #[arg(long, value_name = "PATH")]
    keep: Option<PathBuf>,

    /// With --keep: replace the running host-driver (an upgrade): it
    /// stops between two messages, hands everything over and exits.
    #[arg(long, requires = "keep")]
    handover: bool,

    /// Run as the fd keeper at PATH (started by --keep).
    #[arg(long, value_name = "PATH", hide = true, conflicts_with_all = ["link", "keep"])]
    fd_keeper: Option<PathBuf>,

    /// A controller: name=NAME,sock=PATH[,io-queues=N][,queue-entries=N][,mdts=N][,vectors=N][,serial=S]
    ///
    /// sock is the vfio-user socket the hypervisor connects to; a runtime
    /// attaches to NAME and declares the namespaces. io-queues: I/O queue
    /// pairs offered (default 32); queue-entries: max entries per queue
    /// (default 1024); mdts: max transfer 4 KiB << N (default 5); vectors:
    /// MSI-X vectors, each an eventfd held for the VM (default io-queues + 1;
    /// with fewer, queues share them).
    #[arg(long = "ctrl", value_name = "SPEC", verbatim_doc_comment)]
    ctrls: Vec<HostCtrlSpec>,

    /// Serve the control socket (JSON-RPC; `leapioctl`) here: add and
    /// remove controllers while running.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,

    /// Serve metrics (Prometheus text format, GET /metrics) here:
    /// IP:PORT or unix:PATH. Per controller: the hypervisor's connection,
    /// the runtime attached, runtimes attached and lost, I/O completed.
    #[arg(long, value_name = "IP:PORT|unix:PATH")]
    metrics: Option<leapio_service::metrics::MetricsAddr>,

    /// Log filter (tracing env-filter syntax), overridden by RUST_LOG.
    #[arg(long, default_value = "info")]
    log_level: String,

    /// Log lines as text, or as JSON objects (one per line, the fields as
    /// keys) for a log collector.
    #[arg(long, default_value = "text", value_name = "text|json")]
    log_format: leapio_service::logging::LogFormat,

    /// The running configuration (--config and the command line), which
    /// the control socket answers as `config`.
    #[arg(skip)]
    running_config: String,
}

fn main() -> ExitCode {
    let (mut args, config) = config_file::parse_or_exit::<Args>(std::env::args_os());
    args.running_config = config.toml;
    leapio_service::logging::init(&args.log_level, args.log_format);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leapio-hostd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    if let Some(path) = &args.fd_keeper {
        return keep::run_keeper(path);
    }
    let link = args.link.as_deref().unwrap_or_default();
    let link = link
        .strip_prefix("unix:")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| format!("--link: expected unix:PATH, got '{link}'"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("cannot install signal handler: {e}"))?;
    }
    let host = HostDriver::new(&format!("leapio-hostd {}", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &args.keep {
        // The keeper asks this process to let go with SIGUSR2.
        signal_hook::flag::register(signal_hook::consts::SIGUSR2, release.clone())
            .map_err(|e| format!("cannot install signal handler: {e}"))?;
        let t = std::time::Instant::now();
        let (keeper, held) = keep::Keeper::open(path, args.handover).map_err(|e| chain(&e))?;
        let restored = host
            .keep_in(Arc::new(keeper), held)
            .map_err(|e| chain(&e))?;
        if !restored.is_empty() || args.handover {
            tracing::info!(controllers = ?restored, took = ?t.elapsed(), "took over from the previous host-driver");
        }
    }
    let started = (|| {
        let have = host.status();
        for c in &args.ctrls {
            if let Some(kept) = have.iter().find(|k| k.name == c.name) {
                // The guest has the device as it was: its limits cannot
                // change under it.
                if kept.sock != c.sock.display().to_string() {
                    tracing::warn!(ctrl = %c.name, kept = %kept.sock, given = %c.sock.display(), "the controller was taken over with its socket: --ctrl for it is ignored");
                }
                continue;
            }
            host.add_controller(c).map_err(|e| chain(&e))?;
        }
        host.listen(&link).map_err(|e| chain(&e))?;
        if let Some(path) = &args.control {
            let h = control::with_config(handler(host.clone()), args.running_config.clone());
            control::serve(path, h, stop.clone())
                .map_err(|e| format!("control socket {}: {e}", path.display()))?;
        }
        if let Some(addr) = &args.metrics {
            let h = host.clone();
            let render: leapio_service::metrics::Render = Arc::new(move || {
                let mut e = leapio_service::metrics::Exposition::default();
                h.expose(&mut e);
                e.render()
            });
            leapio_service::metrics::serve(addr, render, stop.clone())
                .map_err(|e| format!("metrics {addr}: {e}"))?;
        }
        Ok::<(), String>(())
    })();
    if let Err(e) = started {
        host.shutdown();
        return Err(e);
    }
    tracing::info!(controllers = args.ctrls.len(), link = %link.display(), "leapio-hostd running");
    // Serving: the controllers' sockets, the link listener and the control
    // socket are up.
    notify::ready(&format!(
        "serving {} controllers, link {}",
        host.status().len(),
        link.display()
    ));
    let h = host.clone();
    let watchdog = notify::Watchdog::start(notify::counters_moved(
        "the host-driver's events thread",
        move || h.heartbeat().into_iter().collect(),
    ));
    while !stop.load(Ordering::Acquire) {
        if release.load(Ordering::Acquire) {
            tracing::info!("handing over to a new host-driver");
            // Not STOPPING=1: a successor takes the service over.
            notify::status("handing over to a new host-driver");
            drop(watchdog);
            host.release();
            // Nothing is torn down: sockets, connections and memory stay
            // with the keeper and the successor.
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    tracing::info!("stopping");
    notify::stopping();
    // Before the events thread stops: that is no hang.
    drop(watchdog);
    host.shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// The control socket's methods.
fn handler(host: Arc<HostDriver>) -> Handler {
    Arc::new(move |method, params| match method {
        "ctrl_add" => {
            let spec: HostCtrlSpec = param_str(params, "spec")?.parse()?;
            host.add_controller(&spec).map_err(|e| chain(&e))?;
            Ok(json!({ "name": spec.name, "sock": spec.sock }))
        }
        "ctrl_remove" => {
            host.remove_controller(param_str(params, "name")?)
                .map_err(|e| chain(&e))?;
            Ok(json!(true))
        }
        "status" => Ok(json!({ "controllers": host.status() })),
        _ => Err(format!(
            "unknown method {method} (ctrl_add, ctrl_remove, status)"
        )),
    })
}
