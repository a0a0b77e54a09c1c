//! `socp`: serve virtual NVMe controllers over vfio-user.

use clap::Parser;
use socp::config::CtrlSpec;
use socp::error_chain;
use socp::runtime::Runtime;
use socp::server::start_controller;
use socp::tcp_target::{TcpTarget, TcpTargetSpec};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Serve virtual NVMe controllers to stock hypervisors over vfio-user.
///
/// Each --ctrl is one PCI NVMe controller at a vfio-user socket, with one or
/// more namespaces. Attach it with QEMU >= 10.1:
///
///   -object memory-backend-memfd,id=mem,size=1G,share=on -machine q35,memory-backend=mem
///   -device '{"driver":"vfio-user-pci","socket":{"path":"/run/leapio/vm0.sock","type":"unix"}}'
///
/// or cloud-hypervisor: --memory shared=on --user-device socket=/run/leapio/vm0.sock
#[derive(Parser, Debug)]
#[command(name = "socp", version, verbatim_doc_comment)]
struct Args {
    /// A controller: sock=PATH,ns=BACKEND[,bs=N][,ns=BACKEND[,bs=N]...][,io-queues=N][,queue-entries=N][,mdts=N][,serial=S]
    ///
    /// BACKEND is ram:SIZE (e.g. ram:256M) or file:PATH (a regular file or a
    /// block device). A bs=N right after an ns= sets that namespace's LBA
    /// size (512..65536; files default to 512, block devices to their
    /// logical block size). Namespaces get NSIDs 1, 2, ... in order.
    /// io-queues: I/O queue pairs offered (default 32); queue-entries: max
    /// entries per queue (default 1024); mdts: max transfer 4 KiB << N
    /// (default 5 = 128 KiB).
    #[arg(
        long = "ctrl",
        required_unless_present = "tcp_targets",
        value_name = "SPEC",
        verbatim_doc_comment
    )]
    ctrls: Vec<CtrlSpec>,

    /// Export namespaces over NVMe/TCP: listen=IP:PORT,nqn=NQN,ns=BACKEND[,bs=N][,ns=...][,allow=HOSTNQN...][,io-queues=N][,queue-entries=N][,mdts=N][,serial=S]
    ///
    /// Linux hosts attach with `nvme connect -t tcp -a IP -s PORT -n NQN`;
    /// `nvme discover` works against the same address. Without allow= any
    /// host may connect.
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
    /// instead of spinning (0 = always spin). Helps when pollers share
    /// cores with the kernel's I/O completion work; costs up to this much
    /// latency on a new submission while waiting.
    #[arg(long, default_value_t = 0, value_name = "US")]
    io_wait_us: u64,

    /// Pin poller i to the i-th CPU of this list (e.g. 2,3), cycling.
    #[arg(long, value_delimiter = ',', value_name = "CPUS")]
    poller_cpus: Vec<usize>,

    /// Log filter (tracing env-filter syntax), overridden by RUST_LOG.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("socp: cannot install signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }

    let io_wait = (args.io_wait_us > 0).then(|| Duration::from_micros(args.io_wait_us));
    let rt = match Runtime::start_with(args.pollers, &args.poller_cpus, io_wait) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("socp: starting pollers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut served = Vec::new();
    let mut failed = false;
    for (i, spec) in args.ctrls.iter().enumerate() {
        match start_controller(i, spec, &rt, stop.clone()) {
            Ok(s) => served.push(s),
            Err(e) => {
                eprintln!("socp: {}", error_chain(&e));
                failed = true;
                break;
            }
        }
    }
    let mut targets = Vec::new();
    if !failed {
        for (i, spec) in args.tcp_targets.iter().enumerate() {
            match TcpTarget::start(i, spec, args.tcp_pollers, stop.clone()) {
                Ok(t) => targets.push(t),
                Err(e) => {
                    eprintln!("socp: {}", error_chain(&e));
                    failed = true;
                    break;
                }
            }
        }
    }
    if failed {
        stop.store(true, Ordering::Release);
    } else {
        tracing::info!(
            controllers = served.len(),
            pollers = rt.pollers(),
            "socp running"
        );
    }
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("stopping");
    // Control threads first: they reset their controllers, which needs the
    // pollers to drain the queues.
    let mut backends = Vec::new();
    for s in served {
        if s.thread.join().is_err() {
            tracing::error!(ctrl = %s.sock, "control thread panicked");
        }
        backends.extend(s.backends);
    }
    for t in targets {
        backends.extend(t.join());
    }
    rt.shutdown();
    for b in &backends {
        if let Err(e) = b.flush() {
            tracing::error!("flushing {}: {e}", b.describe());
            failed = true;
        }
    }
    tracing::info!("stopped");
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
