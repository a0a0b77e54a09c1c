//! A poller thread: run-to-completion processing of the I/O queue pairs it
//! owns, for any number of controllers. Each loop it takes queue changes
//! from its mailbox, reaps backend completions and posts them, then fetches
//! new commands from the submission queues (reading doorbells from shared
//! memory), validates them and submits them to the namespaces' backends.
//! Busy, it never sleeps; idle, it backs off so a guest vCPU sharing the core
//! still runs.
//!
//! Every command is recorded in the queue-state area from the moment it
//! leaves its submission queue until its completion is posted, in the order
//! `leapio_link::qstate` describes, so that a runtime that replaces this
//! one after a crash finds what to post and what to run again.

use crate::crash::{self, Point};
use crate::engine::{Engine, QueueId};
use crate::io_stats::{IoShard, OpClass};
use crate::pcie::controller::{CtrlCtx, Namespace};
use leapio_ats::prp::PrpLimits;
use leapio_ats::ring::{CqRing, SqRing};
use leapio_ats::transfer::copy_to_prps;
use leapio_ats::Snapshot;
use leapio_backends::{Completion, IoKind, IoRequest, Journal, Owner};
use leapio_controller::nvm::{self, Op, Plan, PrpData, Settings};
use leapio_link::qstate::{CqJournal, Rerun, SqJournal};
use leapio_link::{CqSetup, Shadow, SqSetup};
use leapio_nvme::cmd::AsyncEvent;
use leapio_nvme::{IoOpcode, Sqe, Status};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Requests from the control path.
pub enum PollerMsg {
    /// Serve a completion queue; with `resume`, take it over from the
    /// queue-state area (a previous runtime served it).
    AddCq {
        ctrl: Arc<CtrlCtx>,
        setup: CqSetup,
        resume: bool,
        ack: Sender<Result<(), Status>>,
    },
    AddSq {
        ctrl: Arc<CtrlCtx>,
        setup: SqSetup,
        resume: bool,
        ack: Sender<Result<(), Status>>,
    },
    /// Stop fetching from the SQ; ack once its commands all completed.
    DelSq {
        ctrl: u64,
        qid: u16,
        ack: Sender<()>,
    },
    DelCq {
        ctrl: u64,
        qid: u16,
        ack: Sender<()>,
    },
}

/// In-flight requests per backend queue.
const BACKEND_DEPTH: u32 = 1024;
/// How long to keep spinning after the last piece of work.
const SPIN: Duration = Duration::from_micros(200);
/// Longest idle sleep.
const MAX_SLEEP: Duration = Duration::from_millis(1);
/// A controller whose queues had no command and no completion for this
/// long is cold: its doorbells are read by the sweep below instead of every
/// loop, so that a thousand idle VMs do not slow the busy ones.
const HOT_FOR: Duration = Duration::from_secs(1);
/// Every cold controller is looked at once in this period, spread over the
/// loops, or less often with many of them (see [`PollPolicy::cold_gap`]):
/// the bound on the extra latency of the first command after idleness.
pub const COLD_SWEEP: Duration = Duration::from_millis(1);

/// What a poller does when it finds nothing to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PollPolicy {
    /// Spin: the lowest latency, a core per poller always.
    Busy,
    /// Spin a moment after the last work, then sleep, longer and longer
    /// (up to 1 ms).
    #[default]
    Adaptive,
    /// Sleep at once (from 50 us, up to 1 ms): the least CPU for workloads
    /// with gaps, at some latency after each gap.
    Sleep,
}

impl PollPolicy {
    /// The least time between two cold controllers looked at. A look reads
    /// a doorbell page no other controller shares: a TLB and a cache miss,
    /// some 175 ns measured in this VM (2026-12-07, 1,000 controllers).
    /// This bounds what idle VMs cost the poller: at most about 17% of a
    /// core (busy), 2% (adaptive), 1% (sleep); and with N cold controllers
    /// the first command after idleness waits up to max(1 ms, N x this).
    pub fn cold_gap(self) -> Duration {
        match self {
            PollPolicy::Busy => Duration::from_micros(1),
            PollPolicy::Adaptive => Duration::from_micros(8),
            PollPolicy::Sleep => Duration::from_micros(20),
        }
    }
}

impl std::str::FromStr for PollPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "busy" => Ok(PollPolicy::Busy),
            "adaptive" => Ok(PollPolicy::Adaptive),
            "sleep" => Ok(PollPolicy::Sleep),
            other => Err(format!(
                "poll policy {other:?}: expected busy, adaptive or sleep"
            )),
        }
    }
}
/// Loops with only backend I/O pending before an `io_wait` poller blocks.
const WAIT_AFTER_LOOPS: u32 = 32;
/// Busy loops between mailbox checks.
const MAILBOX_EVERY: u64 = 64;
/// Idle loops between clock reads.
const CLOCK_EVERY: u32 = 64;

struct SqState {
    ring: SqRing,
    journal: SqJournal,
    /// Commands taken from the queue since it was created.
    consumed: u64,
    in_flight: u32,
    commands: u64,
    /// The doorbell held an invalid value; reported, waiting for a valid one.
    bad_doorbell: bool,
    deleting: Option<Sender<()>>,
}

struct CqState {
    ring: CqRing,
    journal: CqJournal,
    /// Completions posted since the queue was created.
    posted: u64,
    /// Queue-state slots not in use.
    free_slots: Vec<u32>,
    /// Completions promised to commands in flight.
    reserved: u32,
    /// Commands a previous runtime took, to run again once their
    /// submission queue is resumed.
    rerun: Vec<Rerun>,
    bad_doorbell: bool,
    /// The CQ head when the last interrupt was sent, while the host has not
    /// consumed anything since: the host's handler is yet to run and will
    /// see every entry posted meanwhile, so no new interrupt is needed.
    irq_head: Option<u32>,
    /// Raise the interrupt at the next chance whatever the head says (a
    /// resumed queue: the guest may have missed one).
    irq_kick: bool,
}

struct CtrlState {
    ctx: Arc<CtrlCtx>,
    snap: Arc<Snapshot>,
    /// Commands in flight that point into `snap`'s memory.
    snap_users: u32,
    /// Earlier snapshots that commands still in flight point into, with
    /// their counts: each is dropped (letting a DMA unmap finish) when its
    /// last command completes. Counting here instead of cloning the Arc
    /// per command keeps locked instructions off the I/O path.
    retired: Vec<(Arc<Snapshot>, u32)>,
    sqs: Vec<Option<SqState>>,
    cqs: Vec<Option<CqState>>,
    /// One backend queue per namespace (index NSID - 1), opened on first
    /// use; `ns_gen` is the namespace table generation they follow.
    nsq: Vec<Option<QueueId>>,
    ns_gen: u64,
    /// The owner id of this controller's I/O on each backend (by
    /// namespace index), with the backend queue.
    owners: Vec<u32>,
    /// This poller's counters of each namespace (by namespace index), and
    /// the namespace each backend queue was opened for (a namespace
    /// removed and another added under its NSID gets a queue of its own).
    io: Vec<Option<(Arc<IoShard>, Weak<Namespace>)>>,
    /// Queues of namespaces that were replaced.
    old_nsq: Vec<QueueId>,
    /// Until when it counts as busy (see [`HOT_FOR`]).
    hot_until: Instant,
    /// It is in the poller's hot list.
    in_hot: bool,
}

impl CtrlState {
    /// A command that pointed into the snapshot of generation `gen` is done.
    fn release_snapshot(&mut self, gen: u64) {
        if gen == self.snap.generation() {
            self.snap_users = self.snap_users.saturating_sub(1);
            return;
        }
        if let Some(i) = self.retired.iter().position(|(s, _)| s.generation() == gen) {
            self.retired[i].1 -= 1;
            if self.retired[i].1 == 0 {
                // Its memory may now be unmapped.
                self.retired.swap_remove(i);
            }
        }
    }
}

/// A command in flight.
struct Slot {
    ctrl: usize,
    sqid: u16,
    cqid: u16,
    /// Its record in the completion queue's queue-state slots.
    jslot: u32,
    cid: u16,
    nsid: u32,
    opcode: u8,
    bytes: u64,
    /// Backend operations still outstanding.
    remaining: u32,
    status: Status,
    /// Completion dword 0 (Zone Append: the LBA written).
    dw0: u32,
    /// Block size of the namespace (Zone Append's byte offset to LBA).
    block_size: u32,
    /// Generation of the snapshot whose memory the request points into
    /// (kept mapped by its controller's `snap_users` / `retired` count).
    snap_gen: u64,
    /// A previous runtime took it and died before recording its completion.
    rerun: bool,
    /// When it was taken (the poller's clock for that loop).
    start: Instant,
    /// It was counted as started by its namespace's [`IoShard`].
    counted: bool,
}

/// Where a command was taken from and is journalled.
#[derive(Clone, Copy)]
struct Taken {
    sqid: u16,
    cqid: u16,
    /// Its record in the completion queue's queue-state slots.
    jslot: u32,
    /// A previous runtime took it and died before recording its completion.
    rerun: bool,
}

pub struct QueuePoller {
    index: usize,
    rx: Receiver<PollerMsg>,
    stop: Arc<AtomicBool>,
    ctrls: Vec<CtrlState>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// The backend queues of every controller's namespaces.
    engine: Engine,
    iov: Vec<libc::iovec>,
    done: Vec<Completion>,
    /// A queue was deleted: look for controllers without queues.
    gc_pending: bool,
    /// Submission queues waiting for their commands before deletion.
    deletes_pending: usize,
    /// Block in the backend (up to this long) while only backend I/O is
    /// pending, instead of spinning.
    io_wait: Option<Duration>,
    /// Where the time of loops that did work is counted, when asked for.
    stats: Option<Arc<PollerStats>>,
    /// A previous runtime's writes to run again once its copies can no
    /// longer land (`Backend::stale_writes_for`).
    held: Vec<Held>,
    policy: PollPolicy,
    /// The time at the start of this loop.
    now: Instant,
    /// The controllers looked at every loop (indexes into `ctrls`).
    hot: Vec<usize>,
    /// The next cold controller to look at, and when.
    cold_cursor: usize,
    next_cold: Instant,
}

/// A command of a previous runtime waiting to run again.
struct Held {
    due: Instant,
    /// The controller's `CtrlCtx::id` (indexes shift as controllers go).
    ctrl: u64,
    sqid: u16,
    cqid: u16,
    rerun: Rerun,
}

/// How busy the pollers are: the time each spent in loops that did some
/// work (fetched or posted a command, moved a request), as SPDK counts a
/// poller's busy time; spinning and sleeping are left out. Counting costs
/// two clock reads per loop, so it is on only when asked for. And whether
/// they go round at all: each poller's loops (always counted, a load and a
/// store of a counter only it writes), which the service manager's
/// watchdog checks.
#[derive(Debug)]
pub struct PollerStats {
    /// Whether the pollers count.
    pub enabled: AtomicBool,
    busy_ns: Vec<AtomicU64>,
    /// Poller i's loops at `i * BEAT_STRIDE`: each on a cache line of its
    /// own (and not the next one's, which prefetchers pair), as every loop
    /// writes it.
    beats: Vec<AtomicU64>,
}

impl PollerStats {
    const BEAT_STRIDE: usize = 16;

    /// Counters for `n` pollers.
    pub fn new(n: usize, enabled: bool) -> PollerStats {
        PollerStats {
            enabled: AtomicBool::new(enabled),
            busy_ns: (0..n).map(|_| AtomicU64::new(0)).collect(),
            beats: (0..n * Self::BEAT_STRIDE)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// Each poller's loops so far (wrapping): a poller whose count does
    /// not move is stuck.
    pub fn heartbeats(&self) -> Vec<u64> {
        self.beats
            .iter()
            .step_by(Self::BEAT_STRIDE)
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// Poller `i` goes round once more. Only that poller writes its
    /// counter: a plain load and store, no locked instruction.
    #[inline]
    fn beat(&self, i: usize) {
        if let Some(b) = self.beats.get(i * Self::BEAT_STRIDE) {
            b.store(b.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        }
    }

    /// Each poller's busy time so far, in nanoseconds.
    pub fn busy_ns(&self) -> Vec<u64> {
        self.busy_ns
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }
}

impl QueuePoller {
    pub fn new(index: usize, rx: Receiver<PollerMsg>, stop: Arc<AtomicBool>) -> QueuePoller {
        QueuePoller {
            index,
            rx,
            stop,
            ctrls: Vec::new(),
            slots: Vec::new(),
            free: Vec::new(),
            engine: Engine::default(),
            iov: Vec::with_capacity(64),
            done: Vec::with_capacity(256),
            gc_pending: false,
            deletes_pending: 0,
            io_wait: None,
            stats: None,
            held: Vec::new(),
            policy: PollPolicy::default(),
            now: Instant::now(),
            hot: Vec::new(),
            cold_cursor: 0,
            next_cold: Instant::now(),
        }
    }

    /// What to do when there is nothing to do.
    pub fn with_policy(mut self, policy: PollPolicy) -> QueuePoller {
        self.policy = policy;
        self
    }

    /// Count busy time in `stats` (when it is enabled).
    pub fn with_stats(mut self, stats: Arc<PollerStats>) -> QueuePoller {
        self.stats = Some(stats);
        self
    }

    /// Run until `stop` is set, then finish what is in flight.
    pub fn run(mut self) {
        let mut sleep = Duration::from_micros(10);
        let mut loops: u64 = 0;
        let mut idle_loops: u32 = 0;
        let mut idle_since: Option<Instant> = None;
        let mut waiting_loops: u32 = 0;
        while !self.stop.load(Ordering::Relaxed) {
            if let Some(st) = &self.stats {
                st.beat(self.index);
            }
            self.now = Instant::now();
            let t0 = self
                .stats
                .as_ref()
                .filter(|s| s.enabled.load(Ordering::Relaxed))
                .map(|_| Instant::now());
            loops = loops.wrapping_add(1);
            // The mailbox (queue creation/deletion) is checked every few
            // loops while busy, every loop when idle.
            let mut work = if idle_loops > 0 || loops % MAILBOX_EVERY == 0 {
                self.mailbox()
            } else {
                false
            };
            for i in 0..self.hot.len() {
                self.refresh_snapshot(self.hot[i]);
            }
            work |= self.reap();
            work |= self.run_held();
            work |= self.engine.retry();
            work |= self.poll_hot_list();
            work |= self.sweep_cold();
            self.engine.kick();
            if self.gc_pending {
                self.gc_ctrls();
            }
            // Commands in flight on a backend count as work: never sleep on
            // them, except (with `io_wait`) in the kernel until the backend
            // completes something, once the guest has gone quiet.
            let in_flight = self.slots.len() != self.free.len();
            if let (true, Some(t0), Some(st)) = (work, t0, self.stats.as_ref()) {
                if let Some(b) = st.busy_ns.get(self.index) {
                    let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    b.fetch_add(ns, Ordering::Relaxed);
                }
            }
            if work || in_flight {
                idle_loops = 0;
                idle_since = None;
                sleep = Duration::from_micros(10);
                if work {
                    waiting_loops = 0;
                } else {
                    waiting_loops = waiting_loops.saturating_add(1);
                    if let Some(t) = self.io_wait {
                        if waiting_loops >= WAIT_AFTER_LOOPS {
                            self.engine.wait(t);
                        }
                    }
                }
                continue;
            }
            idle_loops = idle_loops.saturating_add(1);
            let spin = match self.policy {
                PollPolicy::Busy => true,
                PollPolicy::Sleep => false,
                // Look at the clock only now and then while spinning.
                PollPolicy::Adaptive => {
                    idle_loops % CLOCK_EVERY != 0
                        || idle_since.get_or_insert(self.now).elapsed() <= SPIN
                }
            };
            if spin {
                std::hint::spin_loop();
                continue;
            }
            if self.policy == PollPolicy::Sleep && idle_loops == 1 {
                sleep = Duration::from_micros(50);
            }
            std::thread::sleep(sleep);
            sleep = (sleep * 2).min(MAX_SLEEP);
        }
        self.shutdown();
    }

    /// With `io_wait`: block instead of spinning while waiting on a backend.
    pub fn with_io_wait(mut self, io_wait: Option<Duration>) -> QueuePoller {
        self.io_wait = io_wait;
        self
    }

    fn mailbox(&mut self) -> bool {
        let mut any = false;
        while let Ok(msg) = self.rx.try_recv() {
            any = true;
            match msg {
                PollerMsg::AddCq {
                    ctrl,
                    setup,
                    resume,
                    ack,
                } => {
                    let r = self.add_cq(ctrl, setup, resume);
                    let _ = ack.send(r);
                }
                PollerMsg::AddSq {
                    ctrl,
                    setup,
                    resume,
                    ack,
                } => {
                    let r = self.add_sq(ctrl, setup, resume);
                    let _ = ack.send(r);
                }
                PollerMsg::DelSq { ctrl, qid, ack } => {
                    let c = self.ctrl_index(ctrl);
                    if let Some(c) = c {
                        self.mark_hot(c);
                    }
                    let found = c.and_then(|c| sq_mut(&mut self.ctrls[c], qid));
                    match found {
                        Some(sq) => {
                            sq.deleting = Some(ack);
                            self.deletes_pending += 1;
                        }
                        None => {
                            let _ = ack.send(());
                        }
                    }
                }
                PollerMsg::DelCq { ctrl, qid, ack } => {
                    self.gc_pending = true;
                    if let Some(c) = self.ctrl_index(ctrl) {
                        if let Some(slot) = self.ctrls[c].cqs.get_mut(usize::from(qid)) {
                            *slot = None;
                        }
                    }
                    let _ = ack.send(());
                }
            }
        }
        any
    }

    fn ctrl_index(&self, id: u64) -> Option<usize> {
        self.ctrls.iter().position(|c| c.ctx.id == id)
    }

    fn ctrl_for(&mut self, ctx: Arc<CtrlCtx>) -> usize {
        if let Some(i) = self.ctrl_index(ctx.id) {
            return i;
        }
        let snap = ctx.domain.snapshot();
        self.ctrls.push(CtrlState {
            ctx,
            snap,
            snap_users: 0,
            retired: Vec::new(),
            sqs: Vec::new(),
            cqs: Vec::new(),
            nsq: Vec::new(),
            ns_gen: u64::MAX,
            owners: Vec::new(),
            io: Vec::new(),
            old_nsq: Vec::new(),
            hot_until: self.now,
            in_hot: false,
        });
        self.ctrls.len() - 1
    }

    fn add_cq(&mut self, ctx: Arc<CtrlCtx>, s: CqSetup, resume: bool) -> Result<(), Status> {
        let Some(journal) = CqJournal::new(ctx.qstate.clone(), s.qid) else {
            return Err(Status::INVALID_QUEUE_IDENTIFIER);
        };
        let c = self.ctrl_for(ctx);
        self.mark_hot(c);
        let ctrl = &mut self.ctrls[c];
        let mut ring = CqRing::new(s.qid, s.gpa, s.entries, s.vector, s.ien);
        let mut cq = CqState {
            ring: ring.clone(),
            free_slots: (0..journal.capacity(s.entries)).rev().collect(),
            journal,
            posted: 0,
            reserved: 0,
            rerun: Vec::new(),
            bad_doorbell: false,
            irq_head: None,
            irq_kick: false,
        };
        if resume {
            let qstate = ctrl.ctx.qstate.clone();
            let consumed = |sqid: u16| {
                SqJournal::new(qstate.clone(), sqid)
                    .and_then(|j| j.resume())
                    .filter(|r| r.cqid == s.qid)
                    .map(|r| r.consumed)
            };
            let Some(rec) = cq.journal.recover(consumed) else {
                tracing::error!(ctrl = %ctrl.ctx.name, qid = s.qid, "resumed completion queue has no state");
                return Err(Status::INTERNAL_ERROR);
            };
            if rec.size != s.entries || rec.head >= s.entries {
                tracing::error!(ctrl = %ctrl.ctx.name, qid = s.qid, size = rec.size, head = rec.head, "resumed completion queue state does not match the queue");
                return Err(Status::INTERNAL_ERROR);
            }
            let size = u64::from(s.entries);
            ring.tail = u32::try_from(rec.posted % size).unwrap_or(0);
            ring.phase = (rec.posted / size) % 2 == 0;
            ring.head = rec.head;
            cq.posted = rec.posted;
            cq.free_slots = rec.free.clone();
            cq.reserved = u32::try_from(rec.rerun.len()).unwrap_or(u32::MAX);
            // Completions recorded but maybe not seen: post them again, at
            // the positions they were given (the same entry, the same phase).
            for u in &rec.unposted {
                if ring.free() == 0 {
                    tracing::error!(ctrl = %ctrl.ctx.name, qid = s.qid, "resumed completion queue full");
                    return Err(Status::INTERNAL_ERROR);
                }
                let status = Status::from_field(u.status_field);
                if ring
                    .post(
                        &ctrl.snap,
                        u.sqid,
                        u32::from(u.sq_head),
                        u.cid,
                        status,
                        u.dw0,
                    )
                    .is_err()
                {
                    tracing::error!(ctrl = %ctrl.ctx.name, qid = s.qid, "resumed completion queue memory not writable");
                    return Err(Status::INTERNAL_ERROR);
                }
                cq.posted += 1;
                cq.journal.posted(cq.posted);
                cq.journal.free(u.slot);
                cq.free_slots.push(u.slot);
            }
            tracing::info!(ctrl = %ctrl.ctx.name, qid = s.qid, posted = rec.posted, reposted = rec.unposted.len(), rerun = rec.rerun.len(), refetch = rec.refetch, "completion queue resumed");
            cq.rerun = rec.rerun;
            cq.ring = ring;
            cq.irq_kick = true;
        }
        let i = usize::from(s.qid);
        if ctrl.cqs.len() <= i {
            ctrl.cqs.resize_with(i + 1, || None);
        }
        ctrl.cqs[i] = Some(cq);
        tracing::debug!(poller = self.index, ctrl = %ctrl.ctx.name, qid = s.qid, entries = s.entries, vector = s.vector, "I/O completion queue created");
        Ok(())
    }

    fn add_sq(&mut self, ctx: Arc<CtrlCtx>, s: SqSetup, resume: bool) -> Result<(), Status> {
        let Some(journal) = SqJournal::new(ctx.qstate.clone(), s.qid) else {
            return Err(Status::INVALID_QUEUE_IDENTIFIER);
        };
        let c = self.ctrl_for(ctx);
        self.mark_hot(c);
        let ctrl = &mut self.ctrls[c];
        if ctrl
            .cqs
            .get(usize::from(s.cqid))
            .is_none_or(|q| q.is_none())
        {
            return Err(Status::COMPLETION_QUEUE_INVALID);
        }
        let mut ring = SqRing::new(s.qid, s.cqid, s.gpa, s.entries);
        let mut consumed = 0;
        if resume {
            match journal.resume() {
                Some(r) if r.size == s.entries && r.cqid == s.cqid => {
                    consumed = r.consumed;
                    ring.head = u32::try_from(r.consumed % u64::from(s.entries)).unwrap_or(0);
                }
                other => {
                    tracing::error!(ctrl = %ctrl.ctx.name, qid = s.qid, state = ?other, "resumed submission queue state does not match the queue");
                    return Err(Status::INTERNAL_ERROR);
                }
            }
        }
        let i = usize::from(s.qid);
        if ctrl.sqs.len() <= i {
            ctrl.sqs.resize_with(i + 1, || None);
        }
        ctrl.sqs[i] = Some(SqState {
            ring,
            journal,
            consumed,
            in_flight: 0,
            commands: 0,
            bad_doorbell: false,
            deleting: None,
        });
        if resume {
            self.rerun(c, s.qid, s.cqid);
        }
        let ctrl = &self.ctrls[c];
        tracing::debug!(poller = self.index, ctrl = %ctrl.ctx.name, qid = s.qid, cqid = s.cqid, entries = s.entries, "I/O submission queue created");
        Ok(())
    }

    /// Run again the commands a previous runtime took from SQ `sqid` and
    /// never completed visibly (their copies are in the queue-state area).
    fn rerun(&mut self, c: usize, sqid: u16, cqid: u16) {
        let Some(cq) = cq_mut(&mut self.ctrls[c], cqid) else {
            return;
        };
        let (mine, others): (Vec<Rerun>, Vec<Rerun>) = std::mem::take(&mut cq.rerun)
            .into_iter()
            .partition(|r| r.sqid == sqid);
        cq.rerun = others;
        if mine.is_empty() {
            return;
        }
        tracing::info!(ctrl = %self.ctrls[c].ctx.name, sqid, commands = mine.len(), "running again the commands the previous runtime had in flight");
        let limits = self.limits(c);
        let now = Instant::now();
        let mut longest = Duration::ZERO;
        let mut held = 0;
        for r in mine {
            if let Some(sq) = sq_mut(&mut self.ctrls[c], sqid) {
                sq.in_flight += 1;
                sq.commands += 1;
            }
            let wait = self.stale_for(c, &r.sqe);
            if wait.is_zero() {
                let taken = Taken {
                    sqid,
                    cqid,
                    jslot: r.slot,
                    rerun: true,
                };
                self.start(c, taken, &r.sqe, &limits, None);
            } else {
                longest = longest.max(wait);
                held += 1;
                self.held.push(Held {
                    due: now + wait,
                    ctrl: self.ctrls[c].ctx.id,
                    sqid,
                    cqid,
                    rerun: r,
                });
            }
        }
        if held > 0 {
            tracing::warn!(ctrl = %self.ctrls[c].ctx.name, sqid, commands = held, wait_ms = longest.as_millis(), "writes the previous runtime sent to a remote target run again once its copies can no longer land there");
        }
    }

    /// How long a previous runtime's command must wait before it runs
    /// again: a write to a namespace whose old copies may still land.
    fn stale_for(&self, c: usize, sqe: &Sqe) -> Duration {
        if matches!(sqe.opcode, IoOpcode::READ | IoOpcode::ZONE_MGMT_RECV) {
            return Duration::ZERO;
        }
        let table = self.ctrls[c].ctx.namespaces.load();
        table
            .get(sqe.nsid.get())
            .map_or(Duration::ZERO, |n| n.backend.stale_writes_for())
    }

    /// Run the held commands whose wait is over.
    fn run_held(&mut self) -> bool {
        if self.held.is_empty() {
            return false;
        }
        let now = Instant::now();
        let (due, later): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.due <= now);
        self.held = later;
        let any = !due.is_empty();
        for h in due {
            let Some(c) = self.ctrls.iter().position(|s| s.ctx.id == h.ctrl) else {
                // The controller left this poller: its queue-state slots
                // stay in flight for whoever serves it next.
                continue;
            };
            let limits = self.limits(c);
            let taken = Taken {
                sqid: h.sqid,
                cqid: h.cqid,
                jslot: h.rerun.slot,
                rerun: true,
            };
            self.start(c, taken, &h.rerun.sqe, &limits, None);
        }
        any
    }

    fn limits(&self, c: usize) -> PrpLimits {
        let ctx = &self.ctrls[c].ctx;
        PrpLimits {
            page_size: ctx.page_size(),
            max_transfer: ctx.mdts_bytes,
        }
    }

    /// Drop controllers that have no queues left (closes their backend queues).
    fn gc_ctrls(&mut self) {
        self.gc_pending = false;
        let busy: Vec<bool> = (0..self.ctrls.len())
            .map(|c| self.slots.iter().flatten().any(|s| s.ctrl == c))
            .collect();
        let mut c = 0;
        let mut removed = false;
        while c < self.ctrls.len() {
            let st = &self.ctrls[c];
            let empty = st.sqs.iter().all(Option::is_none) && st.cqs.iter().all(Option::is_none);
            if empty && busy[c] {
                self.gc_pending = true;
            }
            if empty && !busy[c] && !removed {
                let gone = self.ctrls.remove(c);
                for id in gone.nsq.into_iter().flatten().chain(gone.old_nsq) {
                    self.engine.close(id);
                }
                // Slot indexes of later controllers shift: fix them up.
                for s in self.slots.iter_mut().flatten() {
                    if s.ctrl > c {
                        s.ctrl -= 1;
                    }
                }
                removed = true;
            } else {
                c += 1;
            }
        }
        if removed {
            // So do the hot list's.
            self.hot = (0..self.ctrls.len())
                .filter(|&c| self.ctrls[c].in_hot)
                .collect();
        }
    }

    /// Follow the controller's guest memory: a new snapshot when the domain
    /// changed (commands in flight keep the one they were translated
    /// against).
    fn refresh_snapshot(&mut self, c: usize) {
        let ctrl = &mut self.ctrls[c];
        if ctrl.ctx.domain.generation() != ctrl.snap.generation() {
            let old = std::mem::replace(&mut ctrl.snap, ctrl.ctx.domain.snapshot());
            if ctrl.snap_users > 0 {
                ctrl.retired.push((old, ctrl.snap_users));
            }
            ctrl.snap_users = 0;
        }
    }

    /// Look at controller `c` every loop for the next [`HOT_FOR`].
    fn mark_hot(&mut self, c: usize) {
        let ctrl = &mut self.ctrls[c];
        ctrl.hot_until = self.now + HOT_FOR;
        if !ctrl.in_hot {
            ctrl.in_hot = true;
            self.hot.push(c);
        }
    }

    /// Pass over the hot controllers; those idle for [`HOT_FOR`] leave the
    /// list (the cold sweep looks at them from then on).
    fn poll_hot_list(&mut self) -> bool {
        let mut work = false;
        let mut i = 0;
        while i < self.hot.len() {
            let c = self.hot[i];
            if self.ctrls[c].hot_until <= self.now {
                self.ctrls[c].in_hot = false;
                self.hot.swap_remove(i);
                continue;
            }
            if self.poll_ctrl(c) {
                work = true;
                self.ctrls[c].hot_until = self.now + HOT_FOR;
            }
            i += 1;
        }
        work
    }

    /// Look at the cold controllers due by now: each once per
    /// [`COLD_SWEEP`], spread over the loops; one whose submission queues
    /// have new commands becomes hot and is served at once.
    fn sweep_cold(&mut self) -> bool {
        let n = self.ctrls.len();
        if n == 0 || self.now < self.next_cold {
            return false;
        }
        let every =
            (COLD_SWEEP / u32::try_from(n).unwrap_or(u32::MAX).max(1)).max(self.policy.cold_gap());
        let sweep = every * u32::try_from(n).unwrap_or(u32::MAX);
        if self.now > self.next_cold + sweep {
            // Behind (a sleep, a long loop): a whole sweep is due now, no
            // more.
            self.next_cold = self.now.checked_sub(sweep).unwrap_or(self.now);
        }
        let mut work = false;
        let mut looked = 0;
        while self.now >= self.next_cold && looked < n {
            let c = self.cold_cursor % n;
            self.cold_cursor = self.cold_cursor.wrapping_add(1);
            self.next_cold += every;
            looked += 1;
            if self.ctrls[c].in_hot || !self.cold_has_work(c) {
                continue;
            }
            self.mark_hot(c);
            self.refresh_snapshot(c);
            work |= self.poll_ctrl(c);
        }
        work
    }

    /// Whether a cold controller needs a full pass: a submission queue with
    /// new commands (or a bad doorbell value), a queue being deleted, a
    /// fatal status. Cheap: a doorbell read per submission queue.
    fn cold_has_work(&self, c: usize) -> bool {
        let ctrl = &self.ctrls[c];
        if ctrl.ctx.fatal.load(Ordering::Acquire) {
            return self.deletes_pending > 0;
        }
        let shadow = ctrl.ctx.shadow.get();
        for qid in 1..ctrl.sqs.len() {
            let Some(sq) = ctrl.sqs[qid].as_ref() else {
                continue;
            };
            if sq.deleting.is_some() {
                return true;
            }
            if guest_sq_tail(&ctrl.snap, &ctrl.ctx, sq.ring.qid, shadow) != sq.ring.head {
                return true;
            }
        }
        false
    }

    /// One pass over a controller's queues: completion heads, then new
    /// commands (their completions were reaped for every controller
    /// before).
    fn poll_ctrl(&mut self, c: usize) -> bool {
        let mut work = false;
        if self.ctrls[c].ctx.fatal.load(Ordering::Acquire) {
            self.finish_deletes(c);
            return work;
        }
        let shadow = self.ctrls[c].ctx.shadow.get();
        self.update_cq_heads(c, shadow);
        let nsq = self.ctrls[c].sqs.len();
        for qid in 1..nsq {
            work |= self.fetch_sq(c, qid, shadow);
        }
        self.finish_deletes(c);
        self.raise_irqs(c);
        work
    }

    fn update_cq_heads(&mut self, c: usize, shadow: Option<Shadow>) {
        let ctrl = &mut self.ctrls[c];
        let ctx = &ctrl.ctx;
        for cq in ctrl.cqs.iter_mut().flatten() {
            let qid = cq.ring.qid;
            let head = match &shadow {
                Some(sh) => {
                    let h = ctrl
                        .snap
                        .load_u32_acquire(sh.cq_head(qid))
                        .unwrap_or(cq.ring.head);
                    if h != cq.ring.head {
                        let _ = ctrl.snap.store_u32_release(sh.cq_event(qid), h);
                    }
                    h
                }
                None => ctx.doorbells.cq_head(qid),
            };
            if head == cq.ring.head {
                continue;
            }
            match cq.ring.update_head(head) {
                Ok(()) => {
                    cq.bad_doorbell = false;
                    cq.journal.head(head);
                }
                Err(e) => {
                    if !cq.bad_doorbell {
                        cq.bad_doorbell = true;
                        tracing::warn!(ctrl = %ctx.name, "{e}");
                        ctx.post_event(AsyncEvent::dw0(
                            AsyncEvent::TYPE_ERROR,
                            AsyncEvent::INFO_INVALID_DOORBELL_VALUE,
                            0x01,
                        ));
                    }
                }
            }
        }
    }

    /// The tail doorbell of SQ `sqid`, checked; None if nothing to do.
    fn sq_tail(&mut self, c: usize, qid: usize, shadow: Option<Shadow>) -> Option<u32> {
        let ctrl = &mut self.ctrls[c];
        let sq = ctrl.sqs[qid].as_mut()?;
        if sq.deleting.is_some() {
            return None;
        }
        let ctx = &ctrl.ctx;
        let sqid = sq.ring.qid;
        let tail = guest_sq_tail(&ctrl.snap, ctx, sqid, shadow);
        if let Err(e) = sq.ring.check_tail(tail) {
            if !sq.bad_doorbell {
                sq.bad_doorbell = true;
                tracing::warn!(ctrl = %ctx.name, "{e}");
                ctx.post_event(AsyncEvent::dw0(
                    AsyncEvent::TYPE_ERROR,
                    AsyncEvent::INFO_INVALID_DOORBELL_VALUE,
                    0x01,
                ));
            }
            return None;
        }
        sq.bad_doorbell = false;
        if sq.ring.pending(tail) == 0 {
            return None;
        }
        if let Some(sh) = shadow {
            // EventIdx: the host need not ring the MMIO doorbell for entries
            // up to what we have seen (we poll the shadow anyway).
            let _ = ctrl.snap.store_u32_release(sh.sq_event(sqid), tail);
        }
        Some(tail)
    }

    /// Fetch and start commands from one SQ, as many as its CQ has room for.
    fn fetch_sq(&mut self, c: usize, qid: usize, shadow: Option<Shadow>) -> bool {
        let Some(tail) = self.sq_tail(c, qid, shadow) else {
            return false;
        };
        let limits = self.limits(c);
        // The namespace table, loaded once for the batch.
        let table = self.ctrls[c].ctx.namespaces.load_full();
        let mut work = false;
        loop {
            let ctrl = &mut self.ctrls[c];
            let Some(sq) = ctrl.sqs[qid].as_mut() else {
                break;
            };
            if sq.ring.head == tail {
                break;
            }
            let (sqid, cqid) = (sq.ring.qid, sq.ring.cqid);
            let Some(cq) = ctrl.cqs.get_mut(usize::from(cqid)).and_then(Option::as_mut) else {
                break;
            };
            if cq.ring.free() <= cq.reserved {
                break;
            }
            let Some(jslot) = cq.free_slots.pop() else {
                break;
            };
            let sqe = match sq.ring.fetch(&ctrl.snap) {
                Ok(s) => s,
                Err(e) => {
                    cq.free_slots.push(jslot);
                    ctrl.ctx
                        .set_fatal(format!("submission queue {sqid} memory unreadable: {e}"));
                    break;
                }
            };
            crash::at(Point::SqeFetched);
            cq.journal.begin(jslot, sqid, sq.consumed, &sqe);
            crash::at(Point::InflightRecorded);
            sq.consumed += 1;
            sq.journal.consumed(sq.consumed);
            sq.in_flight += 1;
            sq.commands += 1;
            cq.reserved += 1;
            work = true;
            let taken = Taken {
                sqid,
                cqid,
                jslot,
                rerun: false,
            };
            self.start(c, taken, &sqe, &limits, Some(&table));
        }
        work
    }

    /// Start one command taken from a submission queue (recorded in a
    /// queue-state slot of its completion queue): validate it, translate its
    /// PRPs, submit it.
    fn start(
        &mut self,
        c: usize,
        taken: Taken,
        sqe: &Sqe,
        limits: &PrpLimits,
        table: Option<&Arc<crate::pcie::controller::NsTable>>,
    ) {
        let Taken {
            sqid,
            cqid,
            jslot,
            rerun,
        } = taken;
        let ctrl = &mut self.ctrls[c];
        ctrl.snap_users += 1;
        let snap_gen = ctrl.snap.generation();
        let nsid = sqe.nsid.get();
        let slot = self.alloc_slot(Slot {
            ctrl: c,
            sqid,
            cqid,
            jslot,
            cid: sqe.cid.get(),
            nsid,
            opcode: sqe.opcode,
            bytes: 0,
            remaining: 0,
            status: Status::SUCCESS,
            dw0: 0,
            block_size: 512,
            snap_gen,
            rerun,
            start: self.now,
            counted: false,
        });
        let owned;
        let table: &crate::pcie::controller::NsTable = match table {
            Some(t) => t,
            None => {
                owned = self.ctrls[c].ctx.namespaces.load_full();
                &owned
            }
        };
        let Some(ns) = table.get(nsid) else {
            self.complete_slot(slot, Status::INVALID_NAMESPACE);
            return;
        };
        let ns_index = usize::try_from(nsid - 1).unwrap_or(0);
        if !self.backend_queue(c, ns_index, table) {
            self.complete_slot(slot, Status::INTERNAL_ERROR);
            return;
        }
        if let Some(s) = self.slots[slot].as_mut() {
            s.block_size = ns.info.block_size;
            if let Some(Some((io, _))) = self.ctrls[c].io.get(ns_index) {
                io.started();
                s.counted = true;
            }
        }
        self.iov.clear();
        let ctrl = &self.ctrls[c];
        let settings = Settings {
            max_transfer: limits.max_transfer,
            write_cache: ctrl.ctx.write_cache.load(Ordering::Relaxed),
        };
        let mut data = PrpData {
            snap: &ctrl.snap,
            limits: *limits,
            iov: &mut self.iov,
        };
        let plan = nvm::plan(sqe, &ns.info, settings, &mut data);
        match plan {
            Plan::Complete(status) => self.complete_slot(slot, status),
            Plan::ZoneReport(req) => {
                // Answered from the backend's zones, no backend request.
                let zones = ns.backend.report_zones(req.slba, usize::MAX);
                let report = nvm::zone_report(&req, &zones);
                let snap = &self.ctrls[c].snap;
                let status = copy_to_prps(snap, sqe.prp1.get(), sqe.prp2.get(), &report, *limits)
                    .err()
                    .unwrap_or(Status::SUCCESS);
                self.complete_slot(slot, status);
            }
            Plan::Single(op) => {
                if let Some(s) = self.slots[slot].as_mut() {
                    s.remaining = 1;
                    s.bytes = op.len;
                }
                let iov = std::mem::take(&mut self.iov);
                self.submit(slot, ns_index, op, &iov);
                self.iov = iov;
            }
            Plan::Multi(ops) => {
                if let Some(s) = self.slots[slot].as_mut() {
                    s.remaining = u32::try_from(ops.len()).unwrap_or(u32::MAX);
                }
                for op in ops {
                    self.submit(slot, ns_index, op, &[]);
                }
            }
        }
    }

    /// Make sure this poller has a backend queue for namespace index `ns`
    /// (opened the first time a command needs it).
    fn backend_queue(
        &mut self,
        c: usize,
        ns: usize,
        table: &crate::pcie::controller::NsTable,
    ) -> bool {
        let ctrl = &mut self.ctrls[c];
        if ctrl.nsq.get(ns).is_some_and(Option::is_some) && ctrl.ns_gen == table.generation {
            return true;
        }
        ctrl.ns_gen = table.generation;
        if ctrl.nsq.len() < table.entries.len() {
            ctrl.nsq.resize_with(table.entries.len(), || None);
            ctrl.io.resize_with(table.entries.len(), || None);
            ctrl.owners.resize(table.entries.len(), 0);
        }
        let Some(Some(n)) = table.entries.get(ns) else {
            return false;
        };
        if ctrl.nsq[ns].is_some() {
            let same = ctrl.io[ns]
                .as_ref()
                .is_some_and(|(_, w)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(n)));
            if same {
                return true;
            }
            // Another namespace under this NSID: the old one's queue is
            // closed with the controller (what it still runs completes).
            ctrl.old_nsq.extend(ctrl.nsq[ns].take());
        }
        match self.engine.open(n.backend.as_ref(), BACKEND_DEPTH) {
            Ok(q) => {
                ctrl.nsq[ns] = Some(q);
                ctrl.io[ns] = Some((n.io.shard(), Arc::downgrade(n)));
                ctrl.owners[ns] = n.backend.owner(&Owner::Controller {
                    name: &ctrl.ctx.name,
                    nsid: n.info.nsid,
                });
                true
            }
            Err(e) => {
                tracing::error!(ctrl = %ctrl.ctx.name, "opening a backend queue for {}: {e}", n.backend.describe());
                false
            }
        }
    }

    fn alloc_slot(&mut self, s: Slot) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(s);
                i
            }
            None => {
                self.slots.push(Some(s));
                self.slots.len() - 1
            }
        }
    }

    fn submit(&mut self, slot: usize, ns: usize, op: Op, iov: &[libc::iovec]) {
        let Some((c, cqid, jslot, rerun)) = self.slots[slot]
            .as_ref()
            .map(|s| (s.ctrl, s.cqid, s.jslot, s.rerun))
        else {
            return;
        };
        let ctrl = &self.ctrls[c];
        let journal = ctrl
            .cqs
            .get(usize::from(cqid))
            .and_then(Option::as_ref)
            .and_then(|cq| cq.journal.placed(jslot))
            .map(|placed| Journal { rerun, placed });
        let owner = ctrl.owners.get(ns).copied().unwrap_or(0);
        let Some(Some(q)) = ctrl.nsq.get(ns).copied() else {
            self.op_done(slot, Err(Status::INTERNAL_ERROR));
            return;
        };
        let req = IoRequest {
            tag: slot as u64,
            kind: op.kind,
            offset: op.offset,
            len: op.len,
            iov,
            owner,
            journal,
        };
        // SAFETY: the iovecs point into guest memory of the snapshot the slot
        // holds until this tag completes, and came from the ats translation of
        // the guest's own regions; the journal word is in the queue-state
        // area, which stays mapped while the command is in flight.
        unsafe { self.engine.submit(q, &req) };
    }

    /// Collect backend completions (every controller's).
    fn reap(&mut self) -> bool {
        self.reap_with(false)
    }

    /// Collect backend completions; `stopping`: what the backends hold
    /// back (for a scheduler's tokens) goes now.
    fn reap_with(&mut self, stopping: bool) -> bool {
        let mut done = std::mem::take(&mut self.done);
        done.clear();
        if stopping {
            self.engine.drain(&mut done, Duration::ZERO);
        } else {
            self.engine.poll(&mut done);
        }
        let any = !done.is_empty();
        for comp in done.drain(..) {
            let Ok(slot) = usize::try_from(comp.tag) else {
                continue;
            };
            if let Some(s) = self.slots.get_mut(slot).and_then(Option::as_mut) {
                if s.opcode == IoOpcode::ZONE_APPEND && comp.result.is_ok() {
                    // The LBA (namespaces have fewer than 2^32 blocks).
                    let lba = nvm::zone_append_lba(comp.value, s.block_size);
                    s.dw0 = u32::try_from(lba).unwrap_or(u32::MAX);
                }
            }
            let result = comp.result.map_err(|e| {
                let kind =
                    self.slots
                        .get(slot)
                        .and_then(Option::as_ref)
                        .map_or(IoKind::Write, |s| {
                            if s.opcode == IoOpcode::READ {
                                IoKind::Read
                            } else {
                                IoKind::Write
                            }
                        });
                nvm::io_error_status(kind, &e)
            });
            self.op_done(slot, result);
        }
        self.done = done;
        any
    }

    fn op_done(&mut self, slot: usize, result: Result<(), Status>) {
        let Some(s) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if let Err(st) = result {
            if s.status.is_success() {
                s.status = st;
            }
        }
        s.remaining = s.remaining.saturating_sub(1);
        if s.remaining == 0 {
            let status = s.status;
            self.complete_slot(slot, status);
        }
    }

    /// Post the completion of a command and free its slot: recorded in the
    /// queue-state area first, then written to the guest.
    fn complete_slot(&mut self, slot: usize, status: Status) {
        let Some(s) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.free.push(slot);
        // Its interrupt is raised by the next pass over it.
        self.mark_hot(s.ctrl);
        let ctrl = &mut self.ctrls[s.ctrl];
        ctrl.release_snapshot(s.snap_gen);
        if s.counted {
            let ns = usize::try_from(s.nsid.wrapping_sub(1)).unwrap_or(usize::MAX);
            if let Some(Some((io, _))) = ctrl.io.get(ns) {
                let took = self.now.saturating_duration_since(s.start);
                let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
                io.finished(OpClass::of(s.opcode), s.bytes, status.is_success(), took);
            }
        }
        let ctx = &ctrl.ctx;
        let sq_head = match ctrl
            .sqs
            .get_mut(usize::from(s.sqid))
            .and_then(Option::as_mut)
        {
            Some(sq) => {
                sq.in_flight = sq.in_flight.saturating_sub(1);
                sq.ring.head
            }
            None => 0,
        };
        let Some(cq) = ctrl
            .cqs
            .get_mut(usize::from(s.cqid))
            .and_then(Option::as_mut)
        else {
            return;
        };
        if status.is_success() {
            match s.opcode {
                IoOpcode::READ => cq.journal.add_read(s.bytes / 512),
                IoOpcode::WRITE => cq.journal.add_write(s.bytes / 512),
                _ => {}
            }
        } else {
            if status.sct() == 2 {
                cq.journal.add_media_error();
            }
            ctx.log_error(s.sqid, s.cid, status, s.nsid, 0);
        }
        cq.reserved = cq.reserved.saturating_sub(1);
        let head = u16::try_from(sq_head).unwrap_or(0);
        crash::at(Point::Executed);
        cq.journal
            .complete(s.jslot, cq.posted, status.field(), s.dw0, head);
        crash::at(Point::CompletionRecorded);
        if cq
            .ring
            .post(&ctrl.snap, s.sqid, sq_head, s.cid, status, s.dw0)
            .is_err()
        {
            ctx.set_fatal(format!("completion queue {} memory not writable", s.cqid));
            return;
        }
        crash::at(Point::CqeWritten);
        cq.posted += 1;
        cq.journal.posted(cq.posted);
        crash::at(Point::CqePosted);
        cq.journal.free(s.jslot);
        cq.free_slots.push(s.jslot);
    }

    /// Adaptive interrupts (as SPDK's vfio-user target does): a CQ with
    /// entries the host has not consumed gets an interrupt unless one is
    /// already outstanding, i.e. sent while the head stood where it stands
    /// now. When the host moves the head and entries remain, it gets
    /// another. So a busy host is not interrupted once per completion, and
    /// an idle one is interrupted at once.
    fn raise_irqs(&mut self, c: usize) {
        let ctrl = &mut self.ctrls[c];
        for cq in ctrl.cqs.iter_mut().flatten() {
            if !cq.ring.ien {
                continue;
            }
            if cq.irq_kick {
                // An interrupt with nothing to consume does not move the
                // host's head: it must not count as outstanding, or the
                // next completion would go unannounced.
                cq.irq_kick = false;
                cq.irq_head = (cq.ring.used() > 0).then_some(cq.ring.head);
                ctrl.ctx.irqs.trigger(cq.ring.vector);
                continue;
            }
            if cq.ring.used() == 0 {
                continue;
            }
            if cq.irq_head != Some(cq.ring.head) {
                cq.irq_head = Some(cq.ring.head);
                ctrl.ctx.irqs.trigger(cq.ring.vector);
            }
        }
    }

    /// Finish SQ deletions whose commands have all completed.
    fn finish_deletes(&mut self, c: usize) {
        if self.deletes_pending == 0 {
            return;
        }
        let ctrl = &mut self.ctrls[c];
        for slot in ctrl.sqs.iter_mut() {
            let ready = slot
                .as_ref()
                .is_some_and(|sq| sq.deleting.is_some() && sq.in_flight == 0);
            if ready {
                if let Some(sq) = slot.take() {
                    self.deletes_pending = self.deletes_pending.saturating_sub(1);
                    tracing::info!(ctrl = %ctrl.ctx.name, qid = sq.ring.qid, commands = sq.commands, "I/O submission queue deleted");
                    if let Some(ack) = sq.deleting {
                        let _ = ack.send(());
                    }
                }
            }
        }
    }

    /// Stop: wait for everything in flight and post its completions.
    fn shutdown(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.slots.iter().any(Option::is_some) && Instant::now() < deadline {
            // Commands held for tokens run now, whatever the tokens.
            self.reap_with(true);
            for c in 0..self.ctrls.len() {
                self.raise_irqs(c);
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        for ctrl in &self.ctrls {
            for sq in ctrl.sqs.iter().flatten() {
                tracing::info!(ctrl = %ctrl.ctx.name, qid = sq.ring.qid, commands = sq.commands, "I/O submission queue at exit");
            }
        }
        // Answer pending deletions so nobody waits on us.
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                PollerMsg::AddCq { ack, .. } | PollerMsg::AddSq { ack, .. } => {
                    let _ = ack.send(Err(Status::INTERNAL_ERROR));
                }
                PollerMsg::DelSq { ack, .. } | PollerMsg::DelCq { ack, .. } => {
                    let _ = ack.send(());
                }
            }
        }
    }
}

/// A submission queue's tail as the guest last wrote it: the shadow
/// doorbell in guest memory after Doorbell Buffer Config (the doorbell page
/// if that cannot be read), else the doorbell page.
fn guest_sq_tail(snap: &Snapshot, ctx: &CtrlCtx, sqid: u16, shadow: Option<Shadow>) -> u32 {
    match shadow {
        Some(sh) => snap
            .load_u32_acquire(sh.sq_tail(sqid))
            .unwrap_or_else(|_| ctx.doorbells.sq_tail(sqid)),
        None => ctx.doorbells.sq_tail(sqid),
    }
}

fn sq_mut(ctrl: &mut CtrlState, qid: u16) -> Option<&mut SqState> {
    ctrl.sqs.get_mut(usize::from(qid)).and_then(Option::as_mut)
}

fn cq_mut(ctrl: &mut CtrlState, qid: u16) -> Option<&mut CqState> {
    ctrl.cqs.get_mut(usize::from(qid)).and_then(Option::as_mut)
}
