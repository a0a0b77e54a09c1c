//! `leapio-perf`: an NVMe benchmark over vfio-user, in the spirit of SPDK's
//! spdk_nvme_perf. It plays the guest and the hypervisor (the tests'
//! [`Driver`]) against a socp controller with no VM, or against a null
//! controller to measure itself. See `leapio-perf --help`.

#[path = "perf/cli.rs"]
mod cli;
#[path = "perf/direct.rs"]
mod direct;
#[path = "perf/engine.rs"]
mod engine;
#[path = "perf/null.rs"]
mod null;
#[path = "perf/pace.rs"]
mod pace;
#[path = "perf/stats.rs"]
mod stats;
#[path = "perf/workload.rs"]
mod workload;

use clap::Parser;
use cli::{Args, Config, Target};
use engine::{Outcome, Params, Queue, Slot};
use leapio_nvme::identify::IdentifyNamespace;
use leapio_nvme::regs::offset;
use leapio_nvme::Status;
use leapio_service::error_chain;
use leapio_tests::driver::{write_prps, FastQueue, QueueCursor, PAGE};
use leapio_tests::server::TestServer;
use leapio_tests::{Driver, DriverError, GuestMem};
use null::{NullQueue, NullTarget};
use stats::{CpuTimes, LatencySummary, ThreadCpu};
use std::path::Path;
use std::process::ExitCode;
use workload::OpGen;

/// Name prefixes of the threads doing socp's I/O work: its pollers, and the
/// io_uring workers the kernel runs for them (`iou-wrk-*` when a request is
/// punted to io-wq, `iou-sqp-*` for SQPOLL rings).
const SOCP_THREADS: [&str; 3] = ["socp-poller", "iou-wrk", "iou-sqp"];
/// Guest-physical addresses the driver keeps free at the bottom.
const LOW_GPA: u64 = 0x10000;

#[derive(Debug, thiserror::Error)]
enum PerfError {
    #[error("{0}")]
    Driver(#[from] DriverError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Setup(String),
}

fn main() -> ExitCode {
    // The spawned socp's log, when asked for (stderr).
    if std::env::var_os("RUST_LOG").is_some() {
        leapio_service::init_logging("warn");
    }
    let args = Args::parse();
    let cfg = match Config::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("leapio-perf: {e}");
            return ExitCode::from(2);
        }
    };
    if cfg.more {
        return match run_more(cfg) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("leapio-perf: {e}");
                ExitCode::from(2)
            }
        };
    }
    match run(&cfg) {
        Ok(r) => {
            print_report(&r, cfg.json, false);
            if r.failed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("leapio-perf: {e}");
            ExitCode::from(2)
        }
    }
}

fn print_report(r: &Report, json: bool, one_line: bool) {
    if json {
        let s = if one_line {
            serde_json::to_string(r)
        } else {
            serde_json::to_string_pretty(r)
        };
        match s {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("leapio-perf: {e}"),
        }
    } else {
        print_text(r);
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Guest memory of a connection that serves several runs.
const MORE_GUEST_MEM: u64 = 256 << 20;

/// `--more`: the first run, then one per line of standard input, on one
/// connection. Whether every run passed.
fn run_more(first: Config) -> Result<bool, PerfError> {
    let Target::Sock { path, pid } = first.target.clone() else {
        return Err(PerfError::Setup("--more needs --sock".into()));
    };
    let mem = guest_mem_size(&first).max(MORE_GUEST_MEM);
    let mut d = Driver::connect(&path, mem)?;
    let mark = d.mem.mark();
    let mut cfg = first;
    let mut ok = true;
    let mut lines = std::io::stdin().lines();
    loop {
        if guest_mem_size(&cfg) > mem {
            return Err(PerfError::Setup(format!(
                "this run needs {} bytes of guest memory; the connection has {mem}",
                guest_mem_size(&cfg)
            )));
        }
        let cpu = pid.map(CpuSource::Pid).unwrap_or(CpuSource::None);
        let r = run_on(&mut d, &cfg, cpu, "socp", path.display().to_string())?;
        d.mem.release_to(mark);
        print_report(&r, cfg.json, true);
        ok &= !r.failed();
        let Some(line) = lines.next() else {
            return Ok(ok);
        };
        let line = line.map_err(|e| PerfError::Setup(format!("standard input: {e}")))?;
        let mut argv = vec![
            "leapio-perf".to_owned(),
            "--sock".to_owned(),
            path.display().to_string(),
        ];
        argv.extend(line.split_whitespace().map(str::to_owned));
        let a =
            Args::try_parse_from(&argv).map_err(|e| PerfError::Setup(format!("'{line}': {e}")))?;
        cfg = Config::from_args(&a).map_err(|e| PerfError::Setup(format!("'{line}': {e}")))?;
    }
}

/// I/O queue entries for a queue depth (one entry always stays empty).
fn queue_entries(qd: u32) -> u32 {
    (qd + 1).max(2)
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Guest RAM for the rings, the slots' buffers and PRP lists, and the
/// admin queue and identify pages (with room to spare).
fn guest_mem_size(cfg: &Config) -> u64 {
    let entries = u64::from(queue_entries(cfg.qd));
    let n = u64::from(cfg.queues);
    let rings = n * (round_up(entries * 64, PAGE) + round_up(entries * 16, PAGE));
    let prp = if cfg.io_size > 2 * PAGE { PAGE } else { 0 };
    let slots = n * u64::from(cfg.qd) * (round_up(cfg.io_size, PAGE) + prp);
    round_up(LOW_GPA + rings + slots + (4 << 20), 2 << 20)
}

/// `n` slots with their buffers and fixed PRPs.
fn alloc_slots(mem: &mut GuestMem, n: u32, io_size: u64) -> Vec<Slot> {
    (0..n)
        .map(|_| {
            let buf = mem.alloc(round_up(io_size, PAGE), PAGE);
            let list = if io_size > 2 * PAGE {
                mem.alloc(PAGE, PAGE)
            } else {
                0
            };
            let (prp1, prp2) = write_prps(mem, buf, io_size, list);
            Slot::new(buf, prp1, prp2)
        })
        .collect()
}

/// What the run found out about its target before starting.
struct Setup {
    target: String,
    detail: String,
    lba_size: u32,
    range_blocks: u64,
}

fn run(cfg: &Config) -> Result<Report, PerfError> {
    match &cfg.target {
        Target::Null { copy } => run_null(cfg, *copy),
        Target::Backend { spec } => run_direct(cfg, spec),
        Target::Sock { path, pid } => {
            let cpu = pid.map(CpuSource::Pid).unwrap_or(CpuSource::None);
            let detail = match pid {
                Some(p) => format!("{} (pid {p})", path.display()),
                None => path.display().to_string(),
            };
            run_ctrl(cfg, path, cpu, "socp", detail)
        }
        Target::Spawn { spec, pollers } => {
            // What is printed of the spec never shows a DH-HMAC-CHAP secret.
            let shown = leapio_nvme_auth::redact(spec);
            // Check the spec here: TestServer panics on a bad one.
            format!("sock=/x,{spec}")
                .parse::<leapio::CtrlSpec>()
                .map_err(|e| PerfError::Setup(format!("--spawn {shown}: {e}")))?;
            let io_wait =
                (cfg.io_wait_us > 0).then(|| std::time::Duration::from_micros(cfg.io_wait_us));
            let srv = TestServer::try_start(&[spec.as_str()], *pollers, io_wait)
                .map_err(|e| PerfError::Setup(format!("--spawn {shown}: {e}")))?;
            let detail = format!("in-process, {shown}, {pollers} poller(s)");
            run_ctrl(cfg, srv.sock(0), CpuSource::ThisProcess, "socp", detail)
        }
    }
}

fn params(cfg: &Config, lba_size: u32) -> Result<Params, PerfError> {
    if cfg.io_size % u64::from(lba_size) != 0 {
        return Err(PerfError::Setup(format!(
            "-o {} is not a multiple of the namespace's {lba_size} B blocks",
            cfg.io_size
        )));
    }
    let blocks_per_io = u32::try_from(cfg.io_size / u64::from(lba_size))
        .ok()
        .filter(|&b| b <= 65536)
        .ok_or_else(|| PerfError::Setup("more than 65536 blocks per I/O".into()))?;
    Ok(Params {
        nsid: cfg.nsid,
        lba_size,
        blocks_per_io,
        io_size: cfg.io_size,
        warmup_ns: cfg.warmup_ns,
        time_ns: cfg.time_ns,
        rate: cfg.rate,
        idle_sleep_ns: cfg.idle_sleep_ns,
        verify: cfg.verify,
        seed: cfg.seed,
    })
}

/// Prefill when reads are to be verified, then the measured run.
fn drive(
    cfg: &Config,
    mem: &GuestMem,
    queues: &mut [Queue<'_>],
    setup: &Setup,
    target_cpu: Option<&mut ThreadCpu>,
) -> Result<(Outcome, bool), PerfError> {
    pin_harness(cfg)?;
    if let (Some(c), Some(t)) = (cfg.target_cpu, target_cpu.as_deref()) {
        t.pin(c)
            .map_err(|e| PerfError::Setup(format!("pinning the target to CPU {c}: {e}")))?;
    }
    let p = params(cfg, setup.lba_size)?;
    let units = setup.range_blocks / u64::from(p.blocks_per_io);
    if units == 0 {
        return Err(PerfError::Setup("the range holds no whole I/O".into()));
    }
    let mut prefilled = false;
    if cfg.prefill {
        if !cfg.json {
            eprintln!(
                "leapio-perf: writing {} MiB first{}",
                (units * cfg.io_size) >> 20,
                if cfg.verify { " (verify pattern)" } else { "" }
            );
        }
        let (errors, first) = engine::prefill(mem, queues, p.clone(), units);
        if errors > 0 {
            return Err(PerfError::Setup(format!(
                "{errors} error(s) prefilling the range, first: {}",
                first.map_or("no completion".into(), |(c, op)| format!(
                    "{} at LBA {}",
                    c.status_field(),
                    op.slba
                ))
            )));
        }
        prefilled = true;
    }
    let mut gen = op_gen(cfg, &p, units);
    let mut me = ThreadCpu::current_thread()?;
    let mut remote = cfg.remote_pid.map(open_remote).transpose()?;
    let cpus = engine::Cpus {
        target: target_cpu,
        remote: remote.as_mut(),
        harness: &mut me,
    };
    let out = engine::run(mem, queues, p, &mut gen, cpus);
    Ok((out, prefilled))
}

/// The random (or sequential) I/O stream over `units` I/Os of the range.
fn op_gen(cfg: &Config, p: &Params, units: u64) -> OpGen {
    OpGen::new(
        cfg.seed,
        cfg.pattern.random(),
        cfg.read_pct,
        units * u64::from(p.blocks_per_io),
        u64::from(p.blocks_per_io),
    )
}

/// Pin the calling (harness) thread where --cpu says.
fn pin_harness(cfg: &Config) -> Result<(), PerfError> {
    if let Some(c) = cfg.cpu {
        stats::pin_thread(0, c)
            .map_err(|e| PerfError::Setup(format!("pinning the harness to CPU {c}: {e}")))?;
    }
    Ok(())
}

/// The poller threads (`socp-tcp-*`) of the socp serving as the NVMe/TCP
/// target behind the namespace (--remote-pid).
fn open_remote(pid: u32) -> Result<ThreadCpu, PerfError> {
    let t = ThreadCpu::open(Some(pid), &["socp-tcp"])
        .map_err(|e| PerfError::Setup(format!("reading the threads of pid {pid}: {e}")))?;
    if t.is_empty() {
        return Err(PerfError::Setup(format!(
            "--remote-pid {pid}: no socp-tcp-* thread (not a socp with --tcp-target?)"
        )));
    }
    Ok(t)
}

/// Whose poller threads to account.
#[derive(Clone, Copy)]
enum CpuSource {
    None,
    Pid(u32),
    ThisProcess,
}

impl CpuSource {
    /// Look the pollers up (once the queues exist: a thread names itself
    /// some time after it was spawned).
    fn open(self) -> Result<Option<ThreadCpu>, PerfError> {
        let t = match self {
            CpuSource::None => return Ok(None),
            CpuSource::Pid(p) => ThreadCpu::open(Some(p), &SOCP_THREADS).map_err(|e| {
                PerfError::Setup(format!("reading the threads of socp pid {p}: {e}"))
            })?,
            CpuSource::ThisProcess => ThreadCpu::open(None, &SOCP_THREADS)?,
        };
        if t.is_empty() {
            eprintln!(
                "leapio-perf: warning: no socp-poller-* thread found: target CPU not measured"
            );
            return Ok(None);
        }
        Ok(Some(t))
    }
}

/// Identify Namespace `cfg.nsid` until it is active, for up to
/// `--wait-ns` seconds.
fn wait_namespace(d: &mut Driver, cfg: &Config) -> Result<IdentifyNamespace, PerfError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_nanos(cfg.wait_ns_ns);
    loop {
        // Until a runtime attaches, the NSID may be past the controller's
        // namespace count: Invalid Namespace, not yet an error.
        match d.identify_namespace(cfg.nsid) {
            Ok(ns) if ns.nsze.get() != 0 => return Ok(ns),
            Ok(_) => {}
            Err(DriverError::Status { status, .. })
                if status == Status::INVALID_NAMESPACE && cfg.wait_ns_ns > 0 => {}
            Err(e) => return Err(e.into()),
        }
        if std::time::Instant::now() >= deadline {
            let waited = if cfg.wait_ns_ns > 0 {
                format!(" after waiting {:.1} s", cfg.wait_ns_ns as f64 / 1e9)
            } else {
                " (--wait-ns SECS waits for it)".to_owned()
            };
            return Err(PerfError::Setup(format!(
                "namespace {} is not active{waited}",
                cfg.nsid
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn run_ctrl(
    cfg: &Config,
    path: &Path,
    cpu: CpuSource,
    target: &str,
    detail: String,
) -> Result<Report, PerfError> {
    let mut d = Driver::connect(path, guest_mem_size(cfg))?;
    run_on(&mut d, cfg, cpu, target, detail)
}

/// One run on a connected controller, which is left disabled (as a guest
/// shutting down would) when the run lost nothing.
fn run_on(
    d: &mut Driver,
    cfg: &Config,
    cpu: CpuSource,
    target: &str,
    detail: String,
) -> Result<Report, PerfError> {
    let entries = queue_entries(cfg.qd);
    let mqes = (d.reg64(offset::CAP)? & 0xffff) + 1;
    if u64::from(entries) > mqes {
        return Err(PerfError::Setup(format!(
            "-q {} needs {entries}-entry queues; the controller allows {mqes} (socp: queue-entries=)",
            cfg.qd
        )));
    }
    d.enable(32)?;
    let id = d.identify_controller()?;
    if id.mdts != 0 && cfg.io_size > PAGE << id.mdts {
        return Err(PerfError::Setup(format!(
            "-o {} exceeds the controller's maximum transfer of {} B",
            cfg.io_size,
            PAGE << id.mdts
        )));
    }
    let ns = wait_namespace(d, cfg)?;
    let nsze = ns.nsze.get();
    let lbads = ns.lbaf[usize::from(ns.flbas & 0xf)].lbads;
    if !(9..=16).contains(&lbads) {
        return Err(PerfError::Setup(format!("unexpected LBA size 2^{lbads}")));
    }
    let lba_size = 1u32 << lbads;
    let range_blocks = cfg
        .range
        .map_or(nsze, |r| (r / u64::from(lba_size)).min(nsze));
    let (sqs, cqs) = d.set_queue_count(cfg.queues)?;
    if sqs < cfg.queues || cqs < cfg.queues {
        return Err(PerfError::Setup(format!(
            "-n {} but the controller grants {} queue pairs",
            cfg.queues,
            sqs.min(cqs)
        )));
    }
    for q in 1..=cfg.queues {
        d.create_queue_pair_ien(q, entries, q, cfg.irq)?;
    }
    let mut slots: Vec<Vec<Slot>> = (0..cfg.queues)
        .map(|_| alloc_slots(&mut d.mem, cfg.qd, cfg.io_size))
        .collect();
    let mut cpu = cpu.open()?;
    let setup = Setup {
        target: target.to_owned(),
        detail,
        lba_size,
        range_blocks,
    };
    let (out, prefilled, cursors) = {
        let mut queues = Vec::new();
        for (i, s) in slots.drain(..).enumerate() {
            let qid = u16::try_from(i + 1).unwrap_or(u16::MAX);
            let fq = d
                .fast_queue(qid)
                .ok_or_else(|| PerfError::Setup(format!("queue {qid} vanished")))?;
            let mut q = Queue::new(fq, s);
            if cfg.irq_wait {
                q.irq_fd = d.irq_fd(qid);
            }
            queues.push(q);
        }
        let (out, prefilled) = drive(cfg, &d.mem, &mut queues, &setup, cpu.as_mut())?;
        let cursors: Vec<(u16, QueueCursor)> =
            queues.iter().map(|q| (q.fq.qid, q.fq.cursor())).collect();
        (out, prefilled, cursors)
    };
    for (qid, c) in cursors {
        d.set_cursor(qid, c);
    }
    // Leave the controller as a guest shutting down would.
    if out.lost == 0 {
        for q in 1..=cfg.queues {
            if let Err(e) = d.delete_queue_pair(q) {
                eprintln!("leapio-perf: deleting queue {q}: {e}");
                break;
            }
        }
        if let Err(e) = d.disable() {
            eprintln!("leapio-perf: disabling the controller: {e}");
        }
    }
    Ok(Report::new(cfg, &setup, &out, prefilled))
}

fn run_direct(cfg: &Config, spec: &str) -> Result<Report, PerfError> {
    let setup_err = |e: String| PerfError::Setup(format!("--backend {spec}: {e}"));
    let parsed: leapio_backends::BackendSpec =
        spec.parse().map_err(|e| setup_err(format!("{e}")))?;
    let backend = leapio_backends::open_backend(&parsed).map_err(|e| setup_err(error_chain(&e)))?;
    let g = backend.geometry();
    let mut q = backend
        .open_queue(cfg.qd)
        .map_err(|e| setup_err(error_chain(&e)))?;
    let range_blocks = cfg.range.map_or(g.num_blocks, |r| {
        (r / u64::from(g.block_size)).min(g.num_blocks)
    });
    let setup = Setup {
        target: "backend".into(),
        detail: format!("{}, driven from the harness thread", backend.describe()),
        lba_size: g.block_size,
        range_blocks,
    };
    let p = params(cfg, g.block_size)?;
    let units = range_blocks / u64::from(p.blocks_per_io);
    if units == 0 {
        return Err(PerfError::Setup("the range holds no whole I/O".into()));
    }
    pin_harness(cfg)?;
    let mut gen = op_gen(cfg, &p, units);
    let mut me = ThreadCpu::current_thread()?;
    let mut remote = cfg.remote_pid.map(open_remote).transpose()?;
    let dp = direct::DirectParams {
        qd: cfg.qd,
        io_size: cfg.io_size,
        lba_size: g.block_size,
        warmup_ns: cfg.warmup_ns,
        time_ns: cfg.time_ns,
    };
    let cpus = engine::Cpus {
        target: None,
        remote: remote.as_mut(),
        harness: &mut me,
    };
    let out = direct::run(q.as_mut(), &dp, &mut gen, cpus).map_err(PerfError::Setup)?;
    Ok(Report::new(cfg, &setup, &out, false))
}

fn run_null(cfg: &Config, copy: bool) -> Result<Report, PerfError> {
    let entries = queue_entries(cfg.qd);
    let mut mem = GuestMem::new(0, guest_mem_size(cfg))?;
    mem.alloc(LOW_GPA, 1);
    let mut rings = Vec::new();
    for q in 1..=cfg.queues {
        let cq_gpa = mem.alloc(u64::from(entries) * 16, PAGE);
        let sq_gpa = mem.alloc(u64::from(entries) * 64, PAGE);
        rings.push(NullQueue {
            qid: q,
            sq_gpa,
            cq_gpa,
            entries,
        });
    }
    let doorbells = mem.alloc(PAGE, PAGE);
    let mut slots: Vec<Vec<Slot>> = (0..cfg.queues)
        .map(|_| alloc_slots(&mut mem, cfg.qd, cfg.io_size))
        .collect();
    let lba_size = 512;
    let range = cfg.range.unwrap_or(1 << 30);
    let copy_area = copy.then_some(range);
    let target = NullTarget::start(&mem, doorbells, &rings, copy_area)?;
    let mut cpu = ThreadCpu::open(None, &[null::THREAD_PREFIX])?;
    let setup = Setup {
        target: if copy { "null-copy" } else { "null" }.into(),
        detail: if copy {
            format!("controller thread in-process that only copies data to/from a {range}-byte RAM area")
        } else {
            "zero-work controller thread in-process".into()
        },
        lba_size,
        range_blocks: range / u64::from(lba_size),
    };
    let start = QueueCursor {
        sq_tail: 0,
        cq_head: 0,
        phase: true,
    };
    let mut queues = Vec::new();
    for (r, s) in rings.iter().zip(slots.drain(..)) {
        // SAFETY: the doorbell page belongs to `target`'s mapping, which
        // lives until the end of this function, after `queues`.
        let fq = unsafe {
            FastQueue::from_raw(
                &mem,
                target.doorbells(),
                r.qid,
                r.sq_gpa,
                r.cq_gpa,
                r.entries,
                start,
            )
        };
        queues.push(Queue::new(fq, s));
    }
    let (out, prefilled) = drive(cfg, &mem, &mut queues, &setup, Some(&mut cpu))?;
    drop(queues);
    drop(target);
    Ok(Report::new(cfg, &setup, &out, prefilled))
}

// ---- the report ----------------------------------------------------------

#[derive(Debug, serde::Serialize)]
struct Report {
    target: String,
    target_detail: String,
    workload: &'static str,
    io_size: u64,
    queue_depth: u32,
    queues: u16,
    read_pct: u8,
    open_loop_rate: Option<f64>,
    time_s: f64,
    warmup_s: f64,
    irq: bool,
    harness_pinned_cpu: Option<usize>,
    target_pinned_cpu: Option<usize>,
    nsid: u32,
    lba_size: u32,
    range_bytes: u64,
    verify: bool,
    prefilled: bool,
    ios: u64,
    reads: u64,
    writes: u64,
    iops: f64,
    mib_s: f64,
    latency: LatencySummary,
    target_threads: Vec<String>,
    target_cpu_s: Option<f64>,
    target_user_s: Option<f64>,
    target_sys_s: Option<f64>,
    target_cpu_us_per_io: Option<f64>,
    remote_threads: Vec<String>,
    remote_cpu_s: Option<f64>,
    remote_cpu_us_per_io: Option<f64>,
    harness_cpu_s: f64,
    harness_cpu_us_per_io: Option<f64>,
    errors: u64,
    first_error: Option<String>,
    verified_blocks: u64,
    mismatches: u64,
    first_mismatch: Option<String>,
    stray_completions: u64,
    lost: u64,
    open_loop_issued: u64,
    open_loop_max_backlog: u64,
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl Report {
    fn new(cfg: &Config, s: &Setup, o: &Outcome, prefilled: bool) -> Report {
        let window = secs(o.elapsed_ns.max(1));
        let per_io = |c: &CpuTimes| (o.ios > 0).then(|| c.total_ns as f64 / 1000.0 / o.ios as f64);
        Report {
            target: s.target.clone(),
            target_detail: s.detail.clone(),
            workload: cfg.pattern.name(),
            io_size: cfg.io_size,
            queue_depth: cfg.qd,
            queues: cfg.queues,
            read_pct: cfg.read_pct,
            open_loop_rate: cfg.rate,
            time_s: window,
            warmup_s: secs(cfg.warmup_ns),
            irq: cfg.irq,
            harness_pinned_cpu: cfg.cpu,
            target_pinned_cpu: cfg.target_cpu.filter(|_| o.target_cpu.is_some()),
            nsid: cfg.nsid,
            lba_size: s.lba_size,
            range_bytes: s.range_blocks * u64::from(s.lba_size),
            verify: cfg.verify,
            prefilled,
            ios: o.ios,
            reads: o.reads,
            writes: o.writes,
            iops: o.ios as f64 / window,
            mib_s: o.bytes as f64 / window / f64::from(1u32 << 20),
            latency: LatencySummary::of(&o.hist),
            target_threads: o.target_threads.clone(),
            target_cpu_s: o.target_cpu.map(|c| secs(c.total_ns)),
            target_user_s: o.target_cpu.map(|c| secs(c.user_ns)),
            target_sys_s: o.target_cpu.map(|c| secs(c.sys_ns)),
            target_cpu_us_per_io: o.target_cpu.as_ref().and_then(per_io),
            remote_threads: o.remote_threads.clone(),
            remote_cpu_s: o.remote_cpu.map(|c| secs(c.total_ns)),
            remote_cpu_us_per_io: o.remote_cpu.as_ref().and_then(per_io),
            harness_cpu_s: secs(o.harness_cpu.total_ns),
            harness_cpu_us_per_io: per_io(&o.harness_cpu),
            errors: o.errors,
            first_error: o.first_error.map(|(c, op)| {
                format!(
                    "{} on a {} at LBA {} (cid {})",
                    c.status_field(),
                    if op.read { "read" } else { "write" },
                    op.slba,
                    c.cid.get()
                )
            }),
            verified_blocks: o.verified_blocks,
            mismatches: o.mismatches,
            first_mismatch: o.first_mismatch.map(|m| {
                format!(
                    "LBA {} byte {}: expected {:#018x}, found {:#018x}",
                    m.lba, m.offset, m.expected, m.found
                )
            }),
            stray_completions: o.stray,
            lost: o.lost,
            open_loop_issued: o.issued,
            open_loop_max_backlog: o.max_backlog,
        }
    }

    fn failed(&self) -> bool {
        self.errors > 0 || self.mismatches > 0 || self.stray_completions > 0 || self.lost > 0
    }
}

fn print_text(r: &Report) {
    let lp = match r.open_loop_rate {
        Some(rate) => format!("open loop at {rate:.0} IOPS"),
        None => "closed loop".into(),
    };
    println!(
        "leapio-perf: {} [{}], nsid {} ({} B LBAs, {} MiB range)",
        r.target,
        r.target_detail,
        r.nsid,
        r.lba_size,
        r.range_bytes >> 20
    );
    let mix = if r.workload == "randrw" {
        format!(" ({}% reads)", r.read_pct)
    } else {
        String::new()
    };
    println!(
        "  {}{mix} {} B, QD {} x {} queue(s), {lp}, {:.2} s measured after {:.2} s warm-up, {}{}",
        r.workload,
        r.io_size,
        r.queue_depth,
        r.queues,
        r.time_s,
        r.warmup_s,
        if r.irq { "interrupts on" } else { "polled CQs" },
        if r.verify { ", verifying" } else { "" }
    );
    if r.harness_pinned_cpu.is_some() || r.target_pinned_cpu.is_some() {
        let cpu = |c: Option<usize>| c.map_or("any CPU".into(), |c| format!("CPU {c}"));
        println!(
            "  harness on {}, target on {}",
            cpu(r.harness_pinned_cpu),
            cpu(r.target_pinned_cpu)
        );
    }
    let l = &r.latency;
    println!(
        "  {:>12} {:>10} | latency us: {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "IOPS", "MiB/s", "min", "mean", "p50", "p99", "p99.9", "max"
    );
    println!(
        "  {:>12.1} {:>10.2} |             {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        r.iops, r.mib_s, l.min_us, l.mean_us, l.p50_us, l.p99_us, l.p999_us, l.max_us
    );
    match (r.target_cpu_s, r.target_cpu_us_per_io) {
        (Some(c), per) => println!(
            "  target CPU: {c:.3} s (user {:.2} s, sys {:.2} s) over {} thread(s) = {} us/IO",
            r.target_user_s.unwrap_or(0.0),
            r.target_sys_s.unwrap_or(0.0),
            r.target_threads.len(),
            per.map_or("-".into(), |p| format!("{p:.3}"))
        ),
        (None, _) => println!("  target CPU: not measured (--socp-pid PID to measure it)"),
    }
    if let Some(c) = r.remote_cpu_s {
        println!(
            "  NVMe/TCP target CPU: {c:.3} s over {} thread(s) = {} us/IO",
            r.remote_threads.len(),
            r.remote_cpu_us_per_io
                .map_or("-".into(), |p| format!("{p:.3}"))
        );
    }
    println!(
        "  harness CPU: {:.3} s = {} us/IO",
        r.harness_cpu_s,
        r.harness_cpu_us_per_io
            .map_or("-".into(), |p| format!("{p:.3}"))
    );
    if r.open_loop_rate.is_some() {
        println!(
            "  open loop: {} issued in the window, largest backlog {} I/Os",
            r.open_loop_issued, r.open_loop_max_backlog
        );
    }
    if r.verify {
        println!(
            "  verify: {} blocks read back and checked, {} mismatching I/O(s){}",
            r.verified_blocks,
            r.mismatches,
            r.first_mismatch
                .as_ref()
                .map_or(String::new(), |m| format!(", first: {m}"))
        );
    }
    if r.errors > 0 {
        println!(
            "  ERRORS: {} completion(s) with an error status, first: {}",
            r.errors,
            r.first_error.as_deref().unwrap_or("?")
        );
    }
    if r.stray_completions > 0 || r.lost > 0 {
        println!(
            "  PROTOCOL: {} completion(s) for no command in flight, {} command(s) never completed",
            r.stray_completions, r.lost
        );
    }
}
