//! The I/O loop. One thread drives every queue: reap what each CQ holds,
//! record latencies, issue new commands into the freed slots (closed loop)
//! or as the schedule says (open loop), ring each SQ doorbell once per
//! pass. Everything is allocated before the loop: slots with their data
//! buffers and PRPs, the histogram, the verify scratch buffer, the /proc
//! files of the CPU accounting.

use crate::pace::Pacer;
use crate::stats::{new_histogram, CpuTimes, ThreadCpu};
use crate::workload::{check_pattern, fill_pattern, Mismatch, Op, OpGen};
use hdrhistogram::Histogram;
use leapio_nvme::{Cqe, IoOpcode, Sqe};
use leapio_tests::driver::FastQueue;
use leapio_tests::GuestMem;
use std::time::Instant;

/// A command slot: its buffer and PRPs are fixed, the rest is per I/O.
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    pub buf: u64,
    pub prp1: u64,
    pub prp2: u64,
    slba: u64,
    read: bool,
    busy: bool,
    /// Latency origin: submission time (closed loop) or due time (open).
    start_ns: u64,
}

impl Slot {
    pub fn new(buf: u64, prp1: u64, prp2: u64) -> Slot {
        Slot {
            buf,
            prp1,
            prp2,
            ..Slot::default()
        }
    }
}

/// A queue pair with its slots; CID = slot index.
pub struct Queue<'a> {
    pub fq: FastQueue<'a>,
    pub slots: Vec<Slot>,
    free: Vec<u16>,
    /// The CQ's interrupt eventfd, when the loop blocks on interrupts.
    pub irq_fd: Option<std::os::fd::RawFd>,
}

impl<'a> Queue<'a> {
    pub fn new(fq: FastQueue<'a>, slots: Vec<Slot>) -> Queue<'a> {
        assert!(
            slots.len() < fq.entries() as usize,
            "more slots than SQ entries"
        );
        let n = u16::try_from(slots.len()).expect("at most 65535 slots");
        Queue {
            fq,
            irq_fd: None,
            slots,
            free: (0..n).rev().collect(),
        }
    }
}

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct Params {
    pub nsid: u32,
    pub lba_size: u32,
    pub blocks_per_io: u32,
    pub io_size: u64,
    pub warmup_ns: u64,
    pub time_ns: u64,
    pub rate: Option<f64>,
    /// Open loop: sleep this long when idle (0: spin).
    pub idle_sleep_ns: u64,
    pub verify: bool,
    pub seed: u64,
}

/// What a run measured (over the measured window only).
pub struct Outcome {
    pub hist: Histogram<u64>,
    pub ios: u64,
    pub reads: u64,
    pub writes: u64,
    pub bytes: u64,
    pub elapsed_ns: u64,
    /// Completions with an error status (all phases), and the first one.
    pub errors: u64,
    pub first_error: Option<(Cqe, Op)>,
    /// Blocks checked by --verify and mismatches found (all phases).
    pub verified_blocks: u64,
    pub mismatches: u64,
    pub first_mismatch: Option<Mismatch>,
    /// CQEs whose CID names no slot in flight.
    pub stray: u64,
    pub target_cpu: Option<CpuTimes>,
    /// The threads whose CPU `target_cpu` sums.
    pub target_threads: Vec<String>,
    /// The remote NVMe/TCP target's pollers (--remote-pid), and their names.
    pub remote_cpu: Option<CpuTimes>,
    pub remote_threads: Vec<String>,
    pub harness_cpu: CpuTimes,
    /// Open loop: I/Os issued in the window, and the largest backlog of
    /// due-but-unissued I/Os seen.
    pub issued: u64,
    pub max_backlog: u64,
    /// In flight when the run ended and not completed within the drain time.
    pub lost: u64,
}

struct Clock(Instant);

impl Clock {
    fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Counters updated from completions.
struct Tally {
    hist: Histogram<u64>,
    recording: bool,
    ios: u64,
    reads: u64,
    writes: u64,
    errors: u64,
    first_error: Option<(Cqe, Op)>,
    verified_blocks: u64,
    mismatches: u64,
    first_mismatch: Option<Mismatch>,
    stray: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: new_histogram(),
            recording: false,
            ios: 0,
            reads: 0,
            writes: 0,
            errors: 0,
            first_error: None,
            verified_blocks: 0,
            mismatches: 0,
            first_mismatch: None,
            stray: 0,
        }
    }
}

/// Everything the loop shares between queues.
struct Ctx<'m> {
    mem: &'m GuestMem,
    p: Params,
    scratch: Vec<u8>,
    lba_size: usize,
    io_len: usize,
}

impl<'m> Ctx<'m> {
    /// `scratch`: whether reads are checked (a buffer of one I/O to compare).
    fn new(mem: &'m GuestMem, p: Params, scratch: bool) -> Ctx<'m> {
        let io_len = usize::try_from(p.io_size).expect("I/O size fits in memory");
        let lba_size = usize::try_from(p.lba_size).expect("LBA size fits in memory");
        Ctx {
            mem,
            scratch: vec![0u8; if scratch { io_len } else { 0 }],
            lba_size,
            io_len,
            p,
        }
    }

    fn sqe(&self, s: &Slot, cid: u16) -> Sqe {
        let (lo, hi) = split_u64(s.slba);
        Sqe {
            opcode: if s.read {
                IoOpcode::READ
            } else {
                IoOpcode::WRITE
            },
            cid: cid.into(),
            nsid: self.p.nsid.into(),
            prp1: s.prp1.into(),
            prp2: s.prp2.into(),
            cdw10: lo.into(),
            cdw11: hi.into(),
            cdw12: (self.p.blocks_per_io - 1).into(),
            ..Default::default()
        }
    }

    /// Put `op` into slot `cid` of `q` and write its SQE (no doorbell).
    fn issue(&mut self, q: &mut Queue<'_>, cid: u16, op: Op, start_ns: u64) {
        let s = &mut q.slots[usize::from(cid)];
        s.slba = op.slba;
        s.read = op.read;
        s.start_ns = start_ns;
        s.busy = true;
        let s = *s;
        if self.p.verify && !op.read {
            let buf = &mut self.scratch[..self.io_len];
            fill_pattern(buf, op.slba, self.lba_size, self.p.seed);
            self.mem.write(s.buf, buf);
        }
        let sqe = self.sqe(&s, cid);
        let pushed = q.fq.push(&sqe);
        debug_assert!(pushed, "slots < SQ entries: the SQ cannot be full");
    }

    /// Reap queue `q`: account each completion (timestamped once per batch,
    /// right after the first CQE was seen) and free its slot.
    fn reap(&mut self, q: &mut Queue<'_>, clock: &Clock, t: &mut Tally) -> usize {
        let Queue {
            fq, slots, free, ..
        } = q;
        let mut now = 0u64;
        let mem = self.mem;
        let (verify, seed, lba_size, io_len) =
            (self.p.verify, self.p.seed, self.lba_size, self.io_len);
        let scratch = &mut self.scratch;
        fq.reap(usize::MAX, |cqe| {
            if now == 0 {
                now = clock.now();
            }
            let cid = cqe.cid.get();
            let Some(s) = slots.get_mut(usize::from(cid)).filter(|s| s.busy) else {
                t.stray += 1;
                return;
            };
            s.busy = false;
            let op = Op {
                read: s.read,
                slba: s.slba,
            };
            let status = cqe.status_field();
            if !status.is_success() {
                t.errors += 1;
                if t.first_error.is_none() {
                    t.first_error = Some((*cqe, op));
                }
            } else if verify && s.read {
                let buf = &mut scratch[..io_len];
                mem.read(s.buf, buf);
                t.verified_blocks += (io_len / lba_size) as u64;
                if let Some(m) = check_pattern(buf, s.slba, lba_size, seed) {
                    t.mismatches += 1;
                    if t.first_mismatch.is_none() {
                        t.first_mismatch = Some(m);
                    }
                }
            }
            if t.recording {
                t.hist
                    .saturating_record(now.saturating_sub(s.start_ns).max(1));
                t.ios += 1;
                if s.read {
                    t.reads += 1;
                } else {
                    t.writes += 1;
                }
            }
            free.push(cid);
        })
    }
}

fn split_u64(v: u64) -> (u32, u32) {
    (
        u32::try_from(v & 0xffff_ffff).unwrap_or(0),
        u32::try_from(v >> 32).unwrap_or(0),
    )
}

/// How long to wait for the commands still in flight at the end.
const DRAIN_NS: u64 = 10_000_000_000;

/// Whose CPU time a run accounts over its measured window.
pub struct Cpus<'a> {
    /// socp's pollers serving the queues driven.
    pub target: Option<&'a mut ThreadCpu>,
    /// The NVMe/TCP target behind them (another process).
    pub remote: Option<&'a mut ThreadCpu>,
    /// The thread issuing and reaping the I/O.
    pub harness: &'a mut ThreadCpu,
}

/// The CPU times at the start of the window (threads started since the
/// last look, such as io_uring workers, are picked up first: a directory
/// read, once).
pub fn start_sample(c: &mut ThreadCpu) -> CpuTimes {
    let _ = c.rescan();
    c.sample()
}

/// The CPU used since `start`, and the threads it sums.
pub fn end_sample(
    c: Option<&mut ThreadCpu>,
    start: Option<CpuTimes>,
) -> (Option<CpuTimes>, Vec<String>) {
    match (c, start) {
        (Some(c), Some(c0)) => {
            let _ = c.rescan();
            (Some(c.sample().since(c0)), c.names())
        }
        _ => (None, Vec::new()),
    }
}

/// Run the workload: warm-up, measured window, drain.
pub fn run(
    mem: &GuestMem,
    queues: &mut [Queue<'_>],
    p: Params,
    gen: &mut OpGen,
    cpus: Cpus<'_>,
) -> Outcome {
    let verify = p.verify;
    let mut cx = Ctx::new(mem, p, verify);
    let mut t = Tally::new();
    let Cpus {
        target: mut target_cpu,
        remote: mut remote_cpu,
        harness: harness_cpu,
    } = cpus;
    let clock = Clock(Instant::now());
    let t0 = clock.now();
    let warm_end = t0 + cx.p.warmup_ns;
    let end = warm_end + cx.p.time_ns;
    let mut pacer = cx.p.rate.map(|r| Pacer::new(t0, r));
    let (mut cpu0, mut remote0, mut me0) = (None, None, CpuTimes::default());
    let mut issued_at_warm_end = 0;
    let mut max_backlog = 0;
    let mut measure_start = t0;

    if pacer.is_none() {
        // Closed loop: fill every slot.
        let now = clock.now();
        for q in queues.iter_mut() {
            while let Some(cid) = q.free.pop() {
                let op = gen.next_op();
                cx.issue(q, cid, op, now);
            }
            q.fq.ring();
        }
    }
    let mut rr = 0usize;
    let nq = queues.len();
    loop {
        let now = clock.now();
        if !t.recording && now >= warm_end {
            t.recording = true;
            measure_start = now;
            cpu0 = target_cpu.as_deref_mut().map(start_sample);
            remote0 = remote_cpu.as_deref_mut().map(start_sample);
            me0 = harness_cpu.sample();
            issued_at_warm_end = pacer.as_ref().map_or(0, Pacer::issued);
        }
        if now >= end {
            break;
        }
        match pacer.as_mut() {
            None => {
                let mut reaped = 0;
                for q in queues.iter_mut() {
                    let n = cx.reap(q, &clock, &mut t);
                    reaped += n;
                    if n == 0 {
                        continue;
                    }
                    let now = clock.now();
                    while let Some(cid) = q.free.pop() {
                        let op = gen.next_op();
                        cx.issue(q, cid, op, now);
                    }
                    q.fq.ring();
                }
                if reaped == 0 {
                    wait_irqs(queues);
                }
            }
            Some(pacer) => {
                let mut reaped = 0;
                for q in queues.iter_mut() {
                    reaped += cx.reap(q, &clock, &mut t);
                }
                let now = clock.now();
                let sleep = cx.p.idle_sleep_ns;
                if sleep > 0 && reaped == 0 && pacer.next_due_ns() > now + sleep {
                    std::thread::sleep(std::time::Duration::from_nanos(sleep));
                    continue;
                }
                if t.recording {
                    max_backlog = max_backlog.max(pacer.backlog(now));
                }
                // Due I/Os go round-robin to queues with a free slot.
                let mut tried = 0;
                while tried < nq {
                    let q = &mut queues[rr];
                    let Some(&cid) = q.free.last() else {
                        rr = (rr + 1) % nq;
                        tried += 1;
                        continue;
                    };
                    let Some(due) = pacer.take_due(now) else {
                        break;
                    };
                    q.free.pop();
                    let op = gen.next_op();
                    cx.issue(q, cid, op, due);
                    rr = (rr + 1) % nq;
                    tried = 0;
                }
                for q in queues.iter_mut() {
                    q.fq.ring();
                }
            }
        }
    }
    let stop = clock.now();
    let (target_cpu, target_threads) = end_sample(target_cpu, cpu0);
    let (remote_cpu, remote_threads) = end_sample(remote_cpu, remote0);
    let harness = harness_cpu.sample().since(me0);
    let issued = pacer.as_ref().map_or(0, Pacer::issued) - issued_at_warm_end;
    t.recording = false;
    // Drain: let what is in flight complete, unrecorded.
    let mut lost = 0;
    for q in queues.iter_mut() {
        let deadline = clock.now() + DRAIN_NS;
        while q.free.len() < q.slots.len() && clock.now() < deadline {
            cx.reap(q, &clock, &mut t);
        }
        lost += (q.slots.len() - q.free.len()) as u64;
    }
    Outcome {
        bytes: t.ios * cx.p.io_size,
        hist: t.hist,
        ios: t.ios,
        reads: t.reads,
        writes: t.writes,
        elapsed_ns: stop.saturating_sub(measure_start),
        errors: t.errors,
        first_error: t.first_error,
        verified_blocks: t.verified_blocks,
        mismatches: t.mismatches,
        first_mismatch: t.first_mismatch,
        stray: t.stray,
        target_cpu,
        target_threads,
        remote_cpu,
        remote_threads,
        harness_cpu: harness,
        issued,
        max_backlog,
        lost,
    }
}

/// Write the LBA range `[0, units * blocks_per_io)` once, sequentially, with
/// every slot of every queue busy (not timed; with the --verify pattern when
/// `p.verify`). Returns (errors, first error); a controller that stops
/// completing for the drain time counts as one error without a CQE.
pub fn prefill(
    mem: &GuestMem,
    queues: &mut [Queue<'_>],
    p: Params,
    units: u64,
) -> (u64, Option<(Cqe, Op)>) {
    let bpi = u64::from(p.blocks_per_io);
    let mut cx = Ctx::new(mem, p, true);
    let mut t = Tally::new();
    let clock = Clock(Instant::now());
    let mut next = 0u64;
    let mut last_progress = clock.now();
    loop {
        let mut busy = false;
        for q in queues.iter_mut() {
            if cx.reap(q, &clock, &mut t) > 0 {
                last_progress = clock.now();
            }
            while next < units {
                let Some(cid) = q.free.pop() else { break };
                cx.issue(
                    q,
                    cid,
                    Op {
                        read: false,
                        slba: next * bpi,
                    },
                    0,
                );
                next += 1;
            }
            q.fq.ring();
            busy |= q.free.len() < q.slots.len();
        }
        if !busy && next >= units {
            break;
        }
        if clock.now() - last_progress > DRAIN_NS {
            t.errors += 1;
            break;
        }
    }
    (t.errors, t.first_error)
}

/// Block (up to 1 ms) until one of the queues' interrupt eventfds fires,
/// then clear them. Queues without an eventfd: return at once.
fn wait_irqs(queues: &[Queue<'_>]) {
    let mut fds: Vec<libc::pollfd> = queues
        .iter()
        .filter_map(|q| q.irq_fd)
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    if fds.is_empty() {
        return;
    }
    let n = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
    // SAFETY: fds is a valid array of n pollfd structs for the call.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), n, 1) };
    if r <= 0 {
        return;
    }
    for p in fds.iter().filter(|p| p.revents & libc::POLLIN != 0) {
        let mut b = [0u8; 8];
        // SAFETY: reading 8 bytes into a local buffer from an eventfd.
        let _ = unsafe { libc::read(p.fd, b.as_mut_ptr().cast(), 8) };
    }
}
