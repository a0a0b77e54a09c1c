//! What a process that runs the runtime does whatever serves its
//! controllers (a link to a host-driver in `socp`, the embedded
//! host-driver in the all-in-one `leapio`): the options of the data plane,
//! starting the pollers, NVMe/TCP targets and QoS, the control socket, and
//! stopping it all.

use crate::controllers::Controllers;
use crate::crash::{self, CrashAt};
use crate::error_chain;
use crate::metrics::Sources;
use crate::pcie::runtime::Runtime;
use crate::qos::config::{QosSpec, TenantSpec};
#[cfg(feature = "rdma")]
use crate::rdma_target::RdmaTarget;
use crate::tcp_target::{TargetSpec, TcpTarget};
use leapio_service::control::{self, Handler};
use leapio_service::notify::{self, Watchdog};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The data plane's options.
#[derive(clap::Args, Debug)]
pub struct RuntimeOpts {
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
    pub tcp_targets: Vec<TargetSpec>,

    /// Export namespaces over NVMe/RDMA (RoCE, iWARP, InfiniBand): the
    /// --tcp-target SPEC, listen= an address of an RDMA device.
    ///
    /// Linux hosts attach with `nvme connect -t rdma -a IP -s PORT -n NQN`.
    /// Write data is fetched with RDMA READs and read data sent with RDMA
    /// WRITEs, from and into buffers registered with the device.
    #[cfg(feature = "rdma")]
    #[arg(long = "rdma-target", value_name = "SPEC", verbatim_doc_comment)]
    pub rdma_targets: Vec<TargetSpec>,

    /// Poller threads per NVMe/TCP target.
    #[arg(long, default_value_t = 1)]
    pub tcp_pollers: usize,

    /// Poller threads running the I/O queues.
    #[arg(long, default_value_t = 1)]
    pub pollers: usize,

    /// When a poller has only backend I/O (file, block device) pending and
    /// the guests are quiet, sleep in io_uring up to this many microseconds
    /// instead of spinning (0 = always spin); with only commands held for
    /// QoS tokens pending, sleep that long. Helps when pollers share
    /// cores with the kernel's I/O completion work; costs up to this much
    /// latency on a new submission while waiting.
    #[arg(long, default_value_t = 0, value_name = "US")]
    pub io_wait_us: u64,

    /// What a poller with nothing to do does: busy (spin: the lowest
    /// latency, a core per poller), adaptive (spin 200 us after the last
    /// work, then sleep up to 1 ms), sleep (sleep at once, 50 us growing to
    /// 1 ms). Queues idle for a second are swept instead of polled: with N
    /// such controllers one every max(1 ms / N, gap), the gap 1 us (busy),
    /// 8 us (adaptive) or 20 us (sleep): what idle VMs cost, and the most a
    /// first command after idleness waits (N x gap: 8 ms for 1,000 VMs
    /// with adaptive).
    #[arg(long, default_value = "adaptive", value_name = "POLICY")]
    pub poll: crate::pcie::poller::PollPolicy,

    /// Count each poller's busy time (loops that did work; two clock reads
    /// per loop), shown by the control socket's status as pollers_busy_ns.
    #[arg(long)]
    pub poller_stats: bool,

    /// Pin poller i to the i-th CPU of this list (e.g. 2,3), cycling.
    #[arg(long, value_delimiter = ',', value_name = "CPUS")]
    pub poller_cpus: Vec<usize>,

    /// Serve the control socket (JSON-RPC; `leapioctl`) here: add and
    /// remove controllers and namespaces while running.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// A QoS scheduler (ReFlex-style cost-based tokens) in front of one
    /// device: device=FILE[,name=NAME][,backend=SPEC][,be-floor=PCT][,burst-us=N][,lc-burst-us=N][,feedback=auto|PCT|off]
    ///
    /// FILE is a device model made by socp calibrate (the cost of a 4 KiB
    /// write in tokens, a 4 KiB read costing 1, and the tokens per second
    /// the device carries at each latency). backend: the backend it
    /// protects, as the namespaces name it (default: the one the model was
    /// calibrated on); name: how tenants name the scheduler (default qos0,
    /// qos1, ...). be-floor: share of the rate that latency-critical
    /// reservations may not take (1-99, default 5); burst-us: bucket depth
    /// of best-effort tenants, in microseconds of their rate (1000);
    /// lc-burst-us: that of latency-critical tenants (50000: a host's own
    /// jitter sends bursts). One --qos per device.
    #[arg(long, value_name = "SPEC", verbatim_doc_comment)]
    pub qos: Vec<QosSpec>,

    /// A QoS tenant (needs --qos; qos=NAME picks the scheduler when there
    /// are several):
    /// [name=NAME,][qos=NAME,]ctrl=CTRL|hostnqn=NQN[,ns=NSID],class=lc,slo=p95:500us|p99:1ms,iops=N[,rw=READ:WRITE]
    /// [name=NAME,][qos=NAME,]ctrl=CTRL|hostnqn=NQN[,ns=NSID],class=be[,weight=N]
    ///
    /// Latency-critical tenants reserve IOPS at a read/write mix (default
    /// 100:0) under a tail-latency SLO and are refused (the process does
    /// not start) when the device cannot carry them; best-effort tenants
    /// share what is left by weight. I/O of no tenant is best effort
    /// (tenant "default"). Changed at run time with leapioctl qos-add /
    /// qos-remove.
    #[arg(long = "tenant", value_name = "SPEC", verbatim_doc_comment)]
    pub tenants: Vec<TenantSpec>,

    /// Serve metrics (Prometheus text format, GET /metrics) here:
    /// IP:PORT or unix:PATH. Per namespace: commands, bytes, errors,
    /// latency histograms, queue depth, the backend's own figures; per
    /// tenant: tokens and time throttled; per poller: busy time.
    #[arg(long, value_name = "IP:PORT|unix:PATH")]
    pub metrics: Option<leapio_service::metrics::MetricsAddr>,

    /// Log filter (tracing env-filter syntax), overridden by RUST_LOG.
    #[arg(long, default_value = "info")]
    pub log_level: String,

    /// Log lines as text, or as JSON objects (one per line, the fields as
    /// keys) for a log collector.
    #[arg(long, default_value = "text", value_name = "text|json")]
    pub log_format: leapio_service::logging::LogFormat,

    /// Test hook: kill this process (SIGKILL) the N-th time the queue
    /// protocol reaches POINT (sqe-fetched, inflight-recorded, executed,
    /// completion-recorded, cqe-written, cqe-posted).
    #[arg(long, value_name = "POINT:N", hide = true)]
    pub crash_at: Option<CrashAt>,

    /// Test hook: never answer the host-driver's queue deletions.
    #[arg(long, hide = true)]
    pub test_hang_deletes: bool,

    /// The running configuration (--config and the command line), which
    /// the control socket answers as `config`; set by main after parsing.
    #[arg(skip)]
    pub running_config: String,
}

impl RuntimeOpts {
    /// How many NVMe over Fabrics targets the options start.
    pub fn targets(&self) -> usize {
        #[cfg(feature = "rdma")]
        let rdma = self.rdma_targets.len();
        #[cfg(not(feature = "rdma"))]
        let rdma = 0;
        self.tcp_targets.len() + rdma
    }
}

/// A running data plane: pollers, NVMe over Fabrics targets, QoS.
pub struct Daemon {
    pub rt: Arc<Runtime>,
    /// Set by SIGTERM or SIGINT (and by [`Daemon::finish`]).
    pub stop: Arc<AtomicBool>,
    targets: Vec<TcpTarget>,
    #[cfg(feature = "rdma")]
    rdma_targets: Vec<RdmaTarget>,
    /// Petting the service manager's watchdog, once serving.
    watchdog: Mutex<Option<Watchdog>>,
}

impl Daemon {
    /// Check the options, then start the pollers and the NVMe/TCP targets.
    pub fn start(opts: &RuntimeOpts) -> Result<Daemon, String> {
        if !opts.tenants.is_empty() && opts.qos.is_empty() {
            return Err("--tenant needs --qos device=FILE".into());
        }
        if let Some(c) = opts.crash_at {
            crash::arm(c);
        }
        if opts.test_hang_deletes {
            crash::arm_hang_deletes();
        }
        if !opts.qos.is_empty() {
            crate::qos::registry()
                .configure(&opts.qos, &opts.tenants)
                .map_err(|e| format!("--qos: {e}"))?;
            tracing::info!(
                schedulers = opts.qos.len(),
                tenants = opts.tenants.len(),
                "QoS on"
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, stop.clone())
                .map_err(|e| format!("cannot install signal handler: {e}"))?;
        }
        let io_wait = (opts.io_wait_us > 0).then(|| Duration::from_micros(opts.io_wait_us));
        let poll = crate::pcie::runtime::PollerOptions {
            io_wait,
            policy: opts.poll,
        };
        let rt = Runtime::start_with(opts.pollers, &opts.poller_cpus, poll)
            .map_err(|e| format!("starting pollers: {e}"))?;
        rt.stats()
            .enabled
            .store(opts.poller_stats, Ordering::Relaxed);
        let mut d = Daemon {
            rt,
            stop,
            targets: Vec::new(),
            #[cfg(feature = "rdma")]
            rdma_targets: Vec::new(),
            watchdog: Mutex::new(None),
        };
        for (i, spec) in opts.tcp_targets.iter().enumerate() {
            match TcpTarget::start(i, spec, opts.tcp_pollers, d.stop.clone()) {
                Ok(t) => d.targets.push(t),
                Err(e) => {
                    let why = error_chain(&e);
                    let _ = d.finish(Ok(()));
                    return Err(why);
                }
            }
        }
        #[cfg(feature = "rdma")]
        for (i, spec) in opts.rdma_targets.iter().enumerate() {
            match RdmaTarget::start(i, spec, d.stop.clone()) {
                Ok(t) => d.rdma_targets.push(t),
                Err(e) => {
                    let why = error_chain(&e);
                    let _ = d.finish(Ok(()));
                    return Err(why);
                }
            }
        }
        Ok(d)
    }

    /// What the metrics and `io_stats` report: the pollers, the targets,
    /// and the host-driver controllers of `ctrls`.
    pub fn sources(&self, ctrls: Vec<Arc<Controllers>>) -> Sources {
        let targets = self.targets.iter().map(|t| t.sub.clone());
        #[cfg(feature = "rdma")]
        let targets = targets.chain(self.rdma_targets.iter().map(|t| t.sub.clone()));
        Sources {
            rt: self.rt.clone(),
            ctrls,
            targets: targets.collect(),
            host: None,
        }
    }

    /// Serve the control socket of `opts` (if any) with `handler`, the QoS
    /// methods and `io_stats` (the figures of `sources`) answered first;
    /// and the metrics endpoint (if any).
    pub fn serve_control(
        &self,
        opts: &RuntimeOpts,
        handler: Handler,
        sources: Sources,
    ) -> Result<(), String> {
        if let Some(addr) = &opts.metrics {
            let s = sources.clone();
            let render: leapio_service::metrics::Render = Arc::new(move || {
                let mut e = leapio_service::metrics::Exposition::default();
                s.expose(&mut e);
                e.render()
            });
            leapio_service::metrics::serve(addr, render, self.stop.clone())
                .map_err(|e| format!("metrics {addr}: {e}"))?;
            tracing::info!(%addr, "metrics");
        }
        let Some(path) = &opts.control else {
            return Ok(());
        };
        let h: Handler = Arc::new(move |method, params| {
            if method == "io_stats" {
                return serde_json::to_value(sources.report()).map_err(|e| e.to_string());
            }
            if method == "target_ana" {
                return sources.set_ana(params);
            }
            crate::qos::registry()
                .handle(method, params)
                .unwrap_or_else(|| handler(method, params))
        });
        let h = control::with_config(h, opts.running_config.clone());
        control::serve(path, h, self.stop.clone())
            .map_err(|e| format!("control socket {}: {e}", path.display()))?;
        tracing::info!(path = %path.display(), "control socket");
        Ok(())
    }

    /// Whether SIGTERM or SIGINT asked the process to stop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// The process serves (its control socket is up, its controllers are
    /// attached, its targets listen): tell the service manager (`READY=1`
    /// with `status`), and pet its watchdog, if it asked for one, while
    /// every poller goes round between two checks and `also` passes (the
    /// all-in-one's host-driver). Once; later calls do nothing.
    pub fn ready(&self, status: &str, also: impl Fn() -> bool + Send + 'static) {
        let mut w = self.watchdog.lock().unwrap_or_else(|p| p.into_inner());
        if w.is_some() || self.stopping() {
            return;
        }
        notify::ready(status);
        let rt = self.rt.clone();
        let pollers =
            notify::counters_moved("the runtime's pollers", move || rt.stats().heartbeats());
        *w = Watchdog::start(move || pollers() && also());
    }

    /// Tell the service manager the process stops (`STOPPING=1`, once), and
    /// stop petting its watchdog: the threads it watches are about to end.
    pub fn notify_stopping(&self) {
        notify::stopping();
        let w = self
            .watchdog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(w);
    }

    /// Stop: the targets (their backends flushed), then the pollers, after
    /// they finish what is in flight. `served` is how serving the
    /// controllers ended.
    pub fn finish(self, served: Result<(), String>) -> Result<(), String> {
        self.notify_stopping();
        self.stop.store(true, Ordering::Release);
        let mut flush_failed = false;
        let backends = self.targets.into_iter().flat_map(TcpTarget::join);
        #[cfg(feature = "rdma")]
        let backends = backends.chain(self.rdma_targets.into_iter().flat_map(RdmaTarget::join));
        for b in backends {
            if let Err(e) = b.flush() {
                tracing::error!("flushing {}: {e}", b.describe());
                flush_failed = true;
            }
        }
        self.rt.shutdown();
        tracing::info!("stopped");
        served?;
        if flush_failed {
            return Err("flushing backends failed (see above)".into());
        }
        Ok(())
    }
}

/// `socp calibrate ...` and the like: a subcommand before the options.
/// Runs it and returns its exit status, or None for the daemon itself.
pub fn subcommand(argv: &[String]) -> Option<std::process::ExitCode> {
    if argv.get(1).map(String::as_str) != Some("calibrate") {
        return None;
    }
    leapio_service::init_logging("warn");
    Some(
        match crate::qos::calibrate::main(argv.iter().skip(1).cloned()) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                if !e.is_empty() {
                    eprintln!("socp calibrate: {e}");
                }
                std::process::ExitCode::FAILURE
            }
        },
    )
}
