//! `leapio-scale`: one runtime, many VMs. Plays N guests from
//! this one process, all from the main thread, against a running split
//! deployment (`leapio-hostd` + `socp --link`): each guest connects to its
//! controller's vfio-user socket with a small guest memory of its own,
//! enables the controller, creates two I/O queue pairs and stays idle.
//! Then it measures what the idle guests cost the host-driver and the
//! runtime (threads, RSS, descriptors, CPU from /proc), and what one busy
//! guest (controller 0) gets: 4 KiB random read latency at QD1, IOPS at
//! QD32, and the latency of the first read after a second of quiet.
//! `--all-busy` drives every controller at once instead (QD8 each, round
//! robin from the one thread): aggregate IOPS and fairness.
//! `scripts/bench-scale.sh` starts the deployment and runs it per count;
//! docs/benchmarks-scale.md tells what it found.

use clap::Parser;
use leapio_nvme::regs::offset;
use leapio_nvme::{Cqe, IoOpcode, Sqe, Status};
use leapio_service::error_chain;
use leapio_tests::driver::{FastQueue, PAGE};
use leapio_tests::proc_stat;
use leapio_tests::{Driver, DriverError};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Many guests from one process against a running split deployment; see
/// scripts/bench-scale.sh and docs/benchmarks-scale.md.
///
///   leapio-scale --sock-dir /tmp/x --vms 100 --hostd-pid 123 --socp-pid 456
///   leapio-scale --sock-dir /tmp/x --vms 100 --all-busy
#[derive(Parser, Debug)]
#[command(name = "leapio-scale", verbatim_doc_comment)]
struct Args {
    /// Where the controllers' vfio-user sockets are: DIR/PREFIXi.sock, i
    /// from 0 to --vms - 1.
    #[arg(long, value_name = "DIR")]
    sock_dir: PathBuf,
    /// The sockets' name prefix.
    #[arg(long, default_value = "vm")]
    prefix: String,
    /// How many guests (controllers) to attach.
    #[arg(long)]
    vms: usize,
    /// leapio-hostd's pid: its threads, RSS, descriptors and idle CPU.
    #[arg(long)]
    hostd_pid: Option<u32>,
    /// socp's pid: the same.
    #[arg(long)]
    socp_pid: Option<u32>,
    /// The idle window over which the CPU of both is measured.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    idle_seconds: f64,
    /// Length of each measurement on the busy controller (and of the
    /// --all-busy run), after a warm-up of a fifth of it.
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    seconds: f64,
    /// Queue depth of the busy controller's IOPS measurement.
    #[arg(long, default_value_t = 32)]
    qd: u32,
    /// Samples of the first read after 1 s of quiet (their median is
    /// reported).
    #[arg(long, default_value_t = 5)]
    wake_samples: u32,
    /// Drive every controller at --all-qd, round robin, instead of the
    /// idle and busy-controller measurements.
    #[arg(long)]
    all_busy: bool,
    /// Queue depth per controller of --all-busy.
    #[arg(long, default_value_t = 8)]
    all_qd: u32,
    /// Guest memory per guest, MiB (a memfd each; touched only where the
    /// rings and buffers are).
    #[arg(long, default_value_t = 2)]
    mem_mib: u64,
    /// MSI-X vectors each guest wires to an eventfd (admin + its queues,
    /// as a small Linux guest enables them).
    #[arg(long, default_value_t = 3)]
    vectors: u32,
    /// Stop attaching after this long and measure with the guests
    /// attached so far (reported as the limit that was hit).
    #[arg(long, default_value_t = 300.0, value_name = "SECS")]
    attach_budget: f64,
    /// How long to wait for a guest's namespace to be served.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    ns_wait: f64,
}

/// I/O queue pairs per guest, and their entries.
const QUEUES: u16 = 2;
const QUEUE_ENTRIES: u32 = 64;
/// The I/O size of every measurement.
const IO_SIZE: u64 = 4096;

fn main() -> ExitCode {
    let args = Args::parse();
    if args.vms == 0 || args.qd == 0 || args.all_qd == 0 {
        eprintln!("leapio-scale: --vms, --qd and --all-qd must be at least 1");
        return ExitCode::from(2);
    }
    if args.qd.max(args.all_qd) >= QUEUE_ENTRIES {
        eprintln!("leapio-scale: queue depths must stay below {QUEUE_ENTRIES}");
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(record) => {
            println!("{record}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("leapio-scale: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---- /proc ----------------------------------------------------------------

/// What /proc says about a process at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Snapshot {
    threads: u64,
    rss_kib: u64,
    fds: u64,
    maps: u64,
    /// utime + stime of every thread, nanoseconds.
    cpu_ns: u64,
}

impl Snapshot {
    fn take(pid: &str) -> Option<Snapshot> {
        let dir = Path::new("/proc").join(pid);
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        let field = |name: &str| proc_stat::status_value(&status, name);
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        let (_, u, s) = proc_stat::parse_stat(&stat)?;
        let fds = std::fs::read_dir(dir.join("fd")).ok()?.count() as u64;
        let maps = std::fs::read_to_string(dir.join("maps"))
            .map(|m| m.lines().count() as u64)
            .unwrap_or(0);
        Some(Snapshot {
            threads: field("Threads")?,
            rss_kib: field("VmRSS").unwrap_or(0),
            fds,
            maps,
            cpu_ns: (u + s) * proc_stat::tick_ns(),
        })
    }

    fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }
}

/// A process measured by its pid (or this one, "self").
struct Watched {
    name: &'static str,
    pid: String,
}

impl Watched {
    fn snap(&self) -> Option<Snapshot> {
        Snapshot::take(&self.pid)
    }

    /// Its soft limit on open files, from /proc/PID/limits.
    fn fd_limit(&self) -> Option<u64> {
        let l = std::fs::read_to_string(Path::new("/proc").join(&self.pid).join("limits")).ok()?;
        l.lines()
            .find(|l| l.starts_with("Max open files"))?
            .split_ascii_whitespace()
            .nth(3)?
            .parse()
            .ok()
    }

    fn describe(&self, s: Option<Snapshot>) -> String {
        match s {
            Some(s) => format!(
                "{} (pid {}): {} threads, {:.1} MiB RSS, {} fds{}, {} maps",
                self.name,
                self.pid,
                s.threads,
                s.rss_mib(),
                s.fds,
                self.fd_limit()
                    .map(|l| format!(" (limit {l})"))
                    .unwrap_or_default(),
                s.maps
            ),
            None => format!("{} (pid {}): gone", self.name, self.pid),
        }
    }
}

/// CPU used between two snapshots, percent of one core.
fn cpu_pct(a: Option<Snapshot>, b: Option<Snapshot>, wall: Duration) -> Option<f64> {
    let (a, b) = (a?, b?);
    let wall = wall.as_nanos() as f64;
    (wall > 0.0).then(|| b.cpu_ns.saturating_sub(a.cpu_ns) as f64 * 100.0 / wall)
}

fn vm_max_map_count() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// RLIMIT_NOFILE raised to its hard limit: (soft before, soft now).
fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = l.rlim_cur;
    l.rlim_cur = l.rlim_max;
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((before, l.rlim_cur))
}

// ---- the guests -----------------------------------------------------------

/// One attached guest, its I/O queues created and idle.
struct Guest {
    d: Driver,
    lba_size: u32,
    /// 4 KiB units in the namespace.
    units: u64,
    /// The data buffers of queue 1's slots (CID = index).
    bufs: Vec<u64>,
}

/// The errno somewhere in an error's chain, if any.
fn errno_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if let Some(n) = io.raw_os_error() {
                return Some(n);
            }
        }
        cur = c.source();
    }
    None
}

/// Identify Namespace 1 until the runtime serves it.
fn wait_namespace(d: &mut Driver, wait: Duration) -> Result<(u32, u64), DriverError> {
    let deadline = Instant::now() + wait;
    loop {
        let mark = d.mem.mark();
        let r = d.identify_namespace(1);
        d.mem.release_to(mark);
        match r {
            Ok(ns) if ns.nsze.get() != 0 => {
                let lbads = ns.lbaf[usize::from(ns.flbas & 0xf)].lbads;
                if !(9..=12).contains(&lbads) {
                    return Err(DriverError::Setup(format!(
                        "LBA size 2^{lbads}: 4 KiB reads need 512..4096"
                    )));
                }
                return Ok((1u32 << lbads, ns.nsze.get()));
            }
            Ok(_) => {}
            Err(DriverError::Status { status, .. }) if status == Status::INVALID_NAMESPACE => {}
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            return Err(DriverError::Timeout(format!(
                "namespace 1 to be served ({:.0} s)",
                wait.as_secs_f64()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn attach(args: &Args, i: usize, slots: u32) -> Result<Guest, DriverError> {
    let path = args.sock_dir.join(format!("{}{i}.sock", args.prefix));
    let mut d = Driver::connect_vectors(&path, args.mem_mib << 20, args.vectors)?;
    let mqes = (d.reg64(offset::CAP)? & 0xffff) + 1;
    if u64::from(QUEUE_ENTRIES) > mqes {
        return Err(DriverError::Setup(format!(
            "the controller allows {mqes}-entry queues, {QUEUE_ENTRIES} needed"
        )));
    }
    // A controller left enabled by an earlier client is reset first, as
    // a guest's driver does when it probes.
    if d.reg32(offset::CC)? & 1 != 0 {
        d.disable()?;
    }
    d.enable(32)?;
    let (lba_size, nsze) = wait_namespace(&mut d, Duration::from_secs_f64(args.ns_wait))?;
    let (sqs, cqs) = d.set_queue_count(QUEUES)?;
    if sqs.min(cqs) < QUEUES {
        return Err(DriverError::Setup(format!(
            "{QUEUES} queue pairs asked, {} granted",
            sqs.min(cqs)
        )));
    }
    for q in 1..=QUEUES {
        // Polled: no interrupts on the CQs (as leapio-perf by default).
        d.create_queue_pair_ien(q, QUEUE_ENTRIES, q, false)?;
    }
    let bufs = (0..slots).map(|_| d.mem.alloc(IO_SIZE, PAGE)).collect();
    Ok(Guest {
        d,
        lba_size,
        units: nsze * u64::from(lba_size) / IO_SIZE,
        bufs,
    })
}

/// Why attaching stopped, with the counts that tell which limit was hit.
fn attach_failure(i: usize, e: &DriverError, procs: &[Watched]) -> String {
    let me = Watched {
        name: "leapio-scale",
        pid: "self".into(),
    };
    let mine = me.snap();
    let what = match errno_of(e) {
        Some(libc::EMFILE) => format!(
            "the harness's fd limit (RLIMIT_NOFILE {}) was hit with {} fds open",
            me.fd_limit().unwrap_or(0),
            mine.map_or(0, |s| s.fds)
        ),
        Some(libc::ENFILE) => "the system's file table (fs.file-max) is full".to_owned(),
        Some(libc::ENOMEM) => format!(
            "out of memory or of mappings: the harness has {} maps (vm.max_map_count {})",
            mine.map_or(0, |s| s.maps),
            vm_max_map_count().unwrap_or(0)
        ),
        _ => "see the error".to_owned(),
    };
    let mut s = format!("attaching stopped at guest {i}: {}; {what}", error_chain(e));
    for p in procs.iter().chain(std::iter::once(&me)) {
        s.push_str("\n  ");
        s.push_str(&p.describe(p.snap()));
    }
    s
}

// ---- I/O ------------------------------------------------------------------

/// xorshift64*: the random LBAs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One guest's queue 1 in a closed loop: CID = slot index. A lane lives
/// as long as the run (its queue's cursors are its own from then on).
struct Lane<'a> {
    fq: FastQueue<'a>,
    bufs: &'a [u64],
    blocks_per_io: u32,
    lba_per_unit: u64,
    units: u64,
    qd: usize,
    free: Vec<u16>,
    started: Vec<Instant>,
    /// Completions counted while recording.
    done: u64,
    errors: u64,
    first_error: Option<Status>,
}

impl<'a> Lane<'a> {
    fn new(g: &'a Guest, qd: u32) -> Lane<'a> {
        let fq = g.d.fast_queue(1).expect("queue 1 was created");
        let mut l = Lane {
            fq,
            bufs: &g.bufs,
            blocks_per_io: u32::try_from(IO_SIZE).unwrap_or(4096) / g.lba_size,
            lba_per_unit: IO_SIZE / u64::from(g.lba_size),
            units: g.units.max(1),
            qd: 0,
            free: Vec::new(),
            started: vec![Instant::now(); g.bufs.len()],
            done: 0,
            errors: 0,
            first_error: None,
        };
        l.set_qd(qd);
        l
    }

    /// Change the queue depth (nothing in flight); counters start over.
    fn set_qd(&mut self, qd: u32) {
        assert!(self.idle(), "queue depth changed with I/O in flight");
        self.qd = usize::try_from(qd).unwrap_or(1).min(self.bufs.len());
        let n = u16::try_from(self.qd).unwrap_or(u16::MAX);
        self.free = (0..n).rev().collect();
        self.done = 0;
    }

    /// Write a random read into every free slot (no doorbell).
    fn fill(&mut self, rng: &mut Rng) {
        while let Some(cid) = self.free.pop() {
            let slba = (rng.next() % self.units) * self.lba_per_unit;
            let sqe = Sqe {
                opcode: IoOpcode::READ,
                cid: cid.into(),
                nsid: 1.into(),
                prp1: self.bufs[usize::from(cid)].into(),
                cdw10: u32::try_from(slba & 0xffff_ffff).unwrap_or(0).into(),
                cdw11: u32::try_from(slba >> 32).unwrap_or(0).into(),
                cdw12: (self.blocks_per_io - 1).into(),
                ..Default::default()
            };
            self.started[usize::from(cid)] = Instant::now();
            if !self.fq.push(&sqe) {
                self.free.push(cid);
                break;
            }
        }
    }

    /// Reap what the CQ holds; latencies (ns) into `lat` when given.
    fn reap(&mut self, recording: bool, mut lat: Option<&mut Vec<u64>>) -> usize {
        let now = Instant::now();
        let (free, started) = (&mut self.free, &self.started);
        let (mut done, mut errors, mut first) = (0u64, 0u64, None);
        let n = self.fq.reap(usize::MAX, |c: &Cqe| {
            let cid = c.cid.get();
            let Some(t) = started.get(usize::from(cid)) else {
                return;
            };
            let st = c.status_field();
            if !st.is_success() {
                errors += 1;
                first.get_or_insert(st);
            }
            if recording {
                done += 1;
                if let Some(l) = lat.as_deref_mut() {
                    l.push(u64::try_from(now.duration_since(*t).as_nanos()).unwrap_or(u64::MAX));
                }
            }
            free.push(cid);
        });
        self.done += done;
        self.errors += errors;
        if self.first_error.is_none() {
            self.first_error = first;
        }
        n
    }

    fn idle(&self) -> bool {
        self.free.len() == self.qd
    }
}

/// Closed loop on every lane, round robin, from this thread: `warmup`,
/// then `time` counted (latencies into `lat`), then what is in flight
/// drains. Returns the measured window's length.
fn closed_loop(
    lanes: &mut [Lane<'_>],
    rng: &mut Rng,
    warmup: Duration,
    time: Duration,
    mut lat: Option<&mut Vec<u64>>,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    let (warm_end, end) = (t0 + warmup, t0 + warmup + time);
    let mut recording = false;
    let mut start = t0;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if !recording && now >= warm_end {
            recording = true;
            start = now;
        }
        for l in lanes.iter_mut() {
            l.reap(recording, lat.as_deref_mut());
            l.fill(rng);
            l.fq.ring();
        }
    }
    let window = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lanes.iter().any(|l| !l.idle()) {
        for l in lanes.iter_mut() {
            l.reap(false, None);
        }
        if Instant::now() > deadline {
            return Err("I/O still in flight 10 s after the run".into());
        }
    }
    if let Some(l) = lanes.iter().find(|l| l.errors > 0) {
        return Err(format!(
            "{} reads failed on queue {} (first: {:?})",
            l.errors, l.fq.qid, l.first_error
        ));
    }
    Ok(window)
}

/// The `p`-th percentile (nearest rank) of sorted nanoseconds, in us.
fn percentile(sorted: &[u64], p: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (sorted.len() * p).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

fn opt_round(v: Option<f64>, digits: i32) -> Value {
    v.map_or(Value::Null, |v| json!(round(v, digits)))
}

// ---- the run --------------------------------------------------------------

fn run(args: &Args) -> Result<Value, String> {
    match raise_nofile() {
        Ok((before, now)) => eprintln!("leapio-scale: RLIMIT_NOFILE {before} -> {now} (hard)"),
        Err(e) => eprintln!("leapio-scale: RLIMIT_NOFILE not raised: {e}"),
    }
    let mut procs = Vec::new();
    if let Some(p) = args.hostd_pid {
        procs.push(Watched {
            name: "leapio-hostd",
            pid: p.to_string(),
        });
    }
    if let Some(p) = args.socp_pid {
        procs.push(Watched {
            name: "socp",
            pid: p.to_string(),
        });
    }
    for p in &procs {
        if p.snap().is_none() {
            return Err(format!("{} (pid {}) not found in /proc", p.name, p.pid));
        }
    }
    let n = args.vms;
    // Slots in queue 1: the busy controller's QD (or every guest's, busy).
    let slots = if args.all_busy { args.all_qd } else { args.qd };
    let t0 = Instant::now();
    let mut guests: Vec<Guest> = Vec::with_capacity(n);
    let mut limit: Option<String> = None;
    // When the 100th guest before the current one was attached.
    let mut last100 = Duration::ZERO;
    let budget = Duration::from_secs_f64(args.attach_budget);
    for i in 0..n {
        if t0.elapsed() > budget {
            let mut why = format!(
                "attaching stopped at guest {i}: the attach budget of {:.0} s ran out ({:.1} s since guest {})",
                budget.as_secs_f64(),
                t0.elapsed().as_secs_f64() - last100.as_secs_f64(),
                i / 100 * 100
            );
            for p in &procs {
                why.push_str("\n  ");
                why.push_str(&p.describe(p.snap()));
            }
            eprintln!("leapio-scale: {why}");
            limit = Some(why);
            break;
        }
        // Only the guests that do I/O need buffers.
        let s = if args.all_busy || i == 0 { slots } else { 0 };
        match attach(args, i, s) {
            Ok(g) => guests.push(g),
            Err(e) => {
                let why = attach_failure(i, &e, &procs);
                eprintln!("leapio-scale: {why}");
                limit = Some(why);
                break;
            }
        }
        if (i + 1) % 100 == 0 {
            last100 = t0.elapsed();
        }
        if (i + 1) % 100 == 0 && i + 1 < n {
            eprintln!(
                "leapio-scale: {} guests attached ({:.1} s)",
                i + 1,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let attach_s = t0.elapsed().as_secs_f64();
    let attached = guests.len();
    println!(
        "attached {attached} of {n} guests in {attach_s:.2} s ({:.1} ms each): 2 I/O queue pairs of {QUEUE_ENTRIES} entries, {} MiB of guest memory, {} MSI-X vectors each",
        attach_s * 1000.0 / attached.max(1) as f64,
        args.mem_mib,
        args.vectors
    );
    if guests.is_empty() {
        return Err(limit.unwrap_or_else(|| "no guest attached".into()));
    }
    let me = Watched {
        name: "leapio-scale",
        pid: "self".into(),
    };
    let snaps: Vec<Option<Snapshot>> = procs.iter().map(Watched::snap).collect();
    for (p, s) in procs
        .iter()
        .zip(&snaps)
        .chain(std::iter::once((&me, &me.snap())))
    {
        println!("  {}", p.describe(*s));
    }
    let by_name = |name: &str| {
        procs
            .iter()
            .zip(&snaps)
            .find(|(p, _)| p.name == name)
            .and_then(|(_, s)| *s)
    };
    let (hs, ss) = (by_name("leapio-hostd"), by_name("socp"));
    let mut rec = json!({
        "vms": n,
        "vms_attached": attached,
        "attach_s": round(attach_s, 2),
        "hostd_threads": hs.map(|s| s.threads),
        "socp_threads": ss.map(|s| s.threads),
        "hostd_rss_mib": opt_round(hs.map(|s| s.rss_mib()), 1),
        "socp_rss_mib": opt_round(ss.map(|s| s.rss_mib()), 1),
        "hostd_fds": hs.map(|s| s.fds),
        "socp_fds": ss.map(|s| s.fds),
        "hostd_maps": hs.map(|s| s.maps),
        "socp_maps": ss.map(|s| s.maps),
        "limit": limit,
    });
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let measure = Duration::from_secs_f64(args.seconds);
    let warmup = measure / 5;
    if args.all_busy {
        let busy = all_busy(args, &guests, &procs, &mut rng, warmup, measure)?;
        if let (Value::Object(r), Value::Object(b)) = (&mut rec, busy) {
            r.extend(b);
        }
        return Ok(rec);
    }

    // Idle: every guest quiet, the CPU of both processes over the window
    // (after a second for the last attach to settle).
    std::thread::sleep(Duration::from_secs(1));
    let idle = Duration::from_secs_f64(args.idle_seconds);
    let a: Vec<Option<Snapshot>> = procs.iter().map(Watched::snap).collect();
    let w0 = Instant::now();
    std::thread::sleep(idle);
    let b: Vec<Option<Snapshot>> = procs.iter().map(Watched::snap).collect();
    let wall = w0.elapsed();
    let pct = |name: &str| {
        procs
            .iter()
            .position(|p| p.name == name)
            .and_then(|i| cpu_pct(a[i], b[i], wall))
    };
    let (hc, sc) = (pct("leapio-hostd"), pct("socp"));
    let total = match (hc, sc) {
        (None, None) => None,
        (h, s) => Some(h.unwrap_or(0.0) + s.unwrap_or(0.0)),
    };
    println!(
        "idle {:.1} s, {attached} guests quiet: CPU leapio-hostd {}, socp {}, both {} (% of one core)",
        wall.as_secs_f64(),
        fmt_pct(hc),
        fmt_pct(sc),
        fmt_pct(total)
    );

    // The busy controller: the first read after quiet, then QD1, then QD32.
    let mut lane = Lane::new(&guests[0], 1);
    let mut wake = Vec::new();
    for k in 0..args.wake_samples {
        if k > 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
        let mut lat = Vec::with_capacity(1);
        lane.fill(&mut rng);
        lane.fq.ring();
        let deadline = Instant::now() + Duration::from_secs(10);
        while lane.reap(true, Some(&mut lat)) == 0 {
            if Instant::now() > deadline {
                return Err("the first read after quiet did not complete in 10 s".into());
            }
        }
        if lane.errors > 0 {
            return Err(format!("a read failed: {:?}", lane.first_error));
        }
        wake.push(lat.first().copied().unwrap_or(0) as f64 / 1000.0);
    }
    let wake_us = median(&mut wake.clone());
    println!(
        "first read after 1 s of quiet: median {wake_us:.1} us of {:?}",
        wake.iter().map(|v| round(*v, 1)).collect::<Vec<_>>()
    );

    let mut lat = Vec::with_capacity(1 << 20);
    closed_loop(
        std::slice::from_mut(&mut lane),
        &mut rng,
        warmup,
        measure,
        Some(&mut lat),
    )?;
    lat.sort_unstable();
    let (p50, p99) = (percentile(&lat, 50), percentile(&lat, 99));
    println!(
        "busy controller, QD1 4 KiB randread: p50 {p50:.2} us, p99 {p99:.2} us ({} reads)",
        lat.len()
    );
    lane.set_qd(args.qd);
    let window = closed_loop(
        std::slice::from_mut(&mut lane),
        &mut rng,
        warmup,
        measure,
        None,
    )?;
    let iops = lane.done as f64 / window.as_secs_f64();
    println!(
        "busy controller, QD{} 4 KiB randread: {iops:.0} IOPS",
        args.qd
    );
    if let Value::Object(r) = &mut rec {
        r.extend([
            ("idle_cpu_pct".to_owned(), opt_round(total, 2)),
            ("hostd_idle_cpu_pct".to_owned(), opt_round(hc, 2)),
            ("socp_idle_cpu_pct".to_owned(), opt_round(sc, 2)),
            ("busy_qd1_p50_us".to_owned(), json!(round(p50, 2))),
            ("busy_qd1_p99_us".to_owned(), json!(round(p99, 2))),
            ("busy_qd32_iops".to_owned(), json!(iops.round())),
            (
                "first_cmd_after_idle_us".to_owned(),
                json!(round(wake_us, 1)),
            ),
        ]);
    }
    Ok(rec)
}

fn fmt_pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}%"))
}

/// Every controller at `--all-qd`, round robin from this thread.
fn all_busy(
    args: &Args,
    guests: &[Guest],
    procs: &[Watched],
    rng: &mut Rng,
    warmup: Duration,
    measure: Duration,
) -> Result<Value, String> {
    let mut lanes: Vec<Lane<'_>> = guests.iter().map(|g| Lane::new(g, args.all_qd)).collect();
    let a: Vec<Option<Snapshot>> = procs.iter().map(Watched::snap).collect();
    let window = closed_loop(&mut lanes, rng, warmup, measure, None)?;
    let b: Vec<Option<Snapshot>> = procs.iter().map(Watched::snap).collect();
    let secs = window.as_secs_f64();
    let per: Vec<f64> = lanes.iter().map(|l| l.done as f64 / secs).collect();
    let total: f64 = per.iter().sum();
    let max = per.iter().copied().fold(0.0, f64::max);
    let min = per.iter().copied().fold(f64::INFINITY, f64::min);
    let ratio = if min > 0.0 { Some(max / min) } else { None };
    println!(
        "all {} controllers busy, QD{} each, 4 KiB randread: {total:.0} IOPS; per controller min {min:.0}, max {max:.0}, max/min {}",
        lanes.len(),
        args.all_qd,
        ratio.map_or_else(|| "inf (a controller was starved)".to_owned(), |r| format!("{r:.2}"))
    );
    // The CPU over the run, counting the warm-up as well.
    let run = warmup + window;
    let pct = |name: &str| {
        procs
            .iter()
            .position(|p| p.name == name)
            .and_then(|i| cpu_pct(a[i], b[i], run))
    };
    Ok(json!({
        "mode": "all-busy",
        "qd_per_ctrl": args.all_qd,
        "iops": total.round(),
        "min_ctrl_iops": min.round(),
        "max_ctrl_iops": max.round(),
        "max_min_ratio": ratio.map(|r| round(r, 3)),
        "hostd_busy_cpu_pct": opt_round(pct("leapio-hostd"), 1),
        "socp_busy_cpu_pct": opt_round(pct("socp"), 1),
    }))
}
