//! The runtime: poller threads, and the per-controller hand-off of I/O
//! queues (as the host-driver creates and deletes them) to a poller.

use crate::pcie::controller::CtrlCtx;
use crate::pcie::poller::{PollPolicy, PollerMsg, PollerStats, QueuePoller};
use leapio_link::{CqSetup, SqSetup};
use leapio_nvme::Status;
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the control path waits for a poller to answer (a queue deletion
/// waits for the queue's commands to complete).
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Threads that run the controllers' control work (the link's requests:
/// mapping, queue creation and deletion, draining), whatever the number of
/// controllers.
pub const CONTROL_THREADS: usize = 4;

/// How pollers wait.
#[derive(Clone, Copy, Debug, Default)]
pub struct PollerOptions {
    /// A poller that only waits on backend I/O sleeps in the kernel (up to
    /// that long) instead of spinning.
    pub io_wait: Option<Duration>,
    /// What a poller with nothing to do does.
    pub policy: PollPolicy,
}

/// The poller threads, and the pool that runs the controllers' control
/// work.
pub struct Runtime {
    senders: Vec<Mutex<Sender<PollerMsg>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
    next_poller: AtomicUsize,
    next_ctrl: AtomicU64,
    stats: Arc<PollerStats>,
    control: leapio_service::pool::Pool,
}

/// A controller id unique in this process.
pub fn next_ctrl_id(rt: &Runtime) -> u64 {
    rt.next_ctrl.fetch_add(1, Ordering::Relaxed)
}

impl Runtime {
    /// Start `n` pollers (at least one).
    pub fn start(n: usize) -> io::Result<Arc<Runtime>> {
        Runtime::start_with(n, &[], PollerOptions::default())
    }

    /// Start `n` pollers, poller i pinned to `cpus[i % cpus.len()]` (no
    /// pinning when `cpus` is empty).
    pub fn start_with(n: usize, cpus: &[usize], opts: PollerOptions) -> io::Result<Arc<Runtime>> {
        let control = leapio_service::pool::Pool::start("socp-ctl", CONTROL_THREADS)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(PollerStats::new(n.max(1), false));
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        // The kernel's io_uring workers must not queue behind a spinning
        // poller on its own CPU.
        leapio_backends::keep_workers_off(cpus);
        for i in 0..n.max(1) {
            let (tx, rx) = channel();
            let st = stop.clone();
            let stats = stats.clone();
            let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
            let t = std::thread::Builder::new()
                .name(format!("socp-poller-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        match pin_to_cpu(cpu) {
                            Ok(()) => tracing::info!(poller = i, cpu, "poller pinned"),
                            Err(e) => tracing::warn!(poller = i, cpu, "cannot pin poller: {e}"),
                        }
                    }
                    QueuePoller::new(i, rx, st)
                        .with_io_wait(opts.io_wait)
                        .with_policy(opts.policy)
                        .with_stats(stats)
                        .run()
                })?;
            senders.push(Mutex::new(tx));
            threads.push(t);
        }
        Ok(Arc::new(Runtime {
            control,
            senders,
            threads: Mutex::new(threads),
            stop,
            next_poller: AtomicUsize::new(0),
            next_ctrl: AtomicU64::new(1),
            stats,
        }))
    }

    /// The pollers' busy time and heartbeats (see [`PollerStats`]).
    pub fn stats(&self) -> &Arc<PollerStats> {
        &self.stats
    }

    /// The pool running the controllers' control work.
    pub fn control(&self) -> &leapio_service::pool::Pool {
        &self.control
    }

    pub fn pollers(&self) -> usize {
        self.senders.len()
    }

    fn send(&self, poller: usize, msg: PollerMsg) -> bool {
        match self.senders.get(poller).and_then(|s| s.lock().ok()) {
            Some(tx) => tx.send(msg).is_ok(),
            None => false,
        }
    }

    /// The queue handler for one controller.
    pub fn queues_for(self: &Arc<Runtime>, ctx: Arc<CtrlCtx>) -> CtrlQueues {
        CtrlQueues {
            rt: self.clone(),
            ctx,
            cq_poller: BTreeMap::new(),
            sq_poller: BTreeMap::new(),
        }
    }

    /// Whether the pollers are stopping (or stopped).
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Stop the pollers after they finish what is in flight.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        if let Ok(mut t) = self.threads.lock() {
            for h in t.drain(..) {
                let _ = h.join();
            }
        }
    }
}

/// Pin the calling thread to one CPU.
fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::other(format!("cpu {cpu} out of range")));
    }
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpu is below CPU_SETSIZE, checked above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: a valid set of the size we pass, for the calling thread (0).
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One controller's I/O queues on the pollers: each completion queue (and
/// the submission queues that post to it) lives on one poller.
pub struct CtrlQueues {
    rt: Arc<Runtime>,
    ctx: Arc<CtrlCtx>,
    cq_poller: BTreeMap<u16, usize>,
    sq_poller: BTreeMap<u16, usize>,
}

impl CtrlQueues {
    /// Send poller `p` a message carrying a fresh acknowledgement channel
    /// and wait for the answer; None if the poller is gone or did not answer
    /// within [`ACK_TIMEOUT`].
    fn ask<T>(&self, p: usize, msg: impl FnOnce(Sender<T>) -> PollerMsg) -> Option<T> {
        let (ack, rx) = channel();
        if !self.rt.send(p, msg(ack)) {
            return None;
        }
        rx.recv_timeout(ACK_TIMEOUT).ok()
    }
}

impl CtrlQueues {
    pub fn ctx(&self) -> &Arc<CtrlCtx> {
        &self.ctx
    }

    /// Queue ids (CQs, SQs) placed on pollers.
    pub fn queue_count(&self) -> (usize, usize) {
        (self.cq_poller.len(), self.sq_poller.len())
    }

    pub fn create_cq(&mut self, cq: CqSetup, resume: bool) -> Result<(), Status> {
        if self.cq_poller.contains_key(&cq.qid) {
            return Err(Status::INVALID_QUEUE_IDENTIFIER);
        }
        let p = self.rt.next_poller.fetch_add(1, Ordering::Relaxed) % self.rt.pollers();
        let ctrl = self.ctx.clone();
        let r = self
            .ask(p, |ack| PollerMsg::AddCq {
                ctrl,
                setup: cq,
                resume,
                ack,
            })
            .unwrap_or(Err(Status::INTERNAL_ERROR));
        if r.is_ok() {
            self.cq_poller.insert(cq.qid, p);
        }
        r
    }

    pub fn create_sq(&mut self, sq: SqSetup, resume: bool) -> Result<(), Status> {
        let Some(&p) = self.cq_poller.get(&sq.cqid) else {
            return Err(Status::COMPLETION_QUEUE_INVALID);
        };
        if self.sq_poller.contains_key(&sq.qid) {
            return Err(Status::INVALID_QUEUE_IDENTIFIER);
        }
        let ctrl = self.ctx.clone();
        let r = self
            .ask(p, |ack| PollerMsg::AddSq {
                ctrl,
                setup: sq,
                resume,
                ack,
            })
            .unwrap_or(Err(Status::INTERNAL_ERROR));
        if r.is_ok() {
            self.sq_poller.insert(sq.qid, p);
        }
        r
    }

    /// Delete SQ `qid`; returns false if its commands did not finish in
    /// time (they are still running on a backend).
    pub fn delete_sq(&mut self, qid: u16) -> bool {
        let Some(p) = self.sq_poller.remove(&qid) else {
            return true;
        };
        let ctrl = self.ctx.id;
        if self
            .ask(p, |ack| PollerMsg::DelSq { ctrl, qid, ack })
            .is_none()
        {
            tracing::error!(ctrl = %self.ctx.name, qid, "submission queue deletion timed out: backend I/O still in flight");
            return false;
        }
        true
    }

    pub fn delete_cq(&mut self, qid: u16) -> bool {
        let Some(p) = self.cq_poller.remove(&qid) else {
            return true;
        };
        let ctrl = self.ctx.id;
        if self
            .ask(p, |ack| PollerMsg::DelCq { ctrl, qid, ack })
            .is_none()
        {
            tracing::error!(ctrl = %self.ctx.name, qid, "completion queue deletion timed out");
            return false;
        }
        true
    }

    /// Delete every queue (SQs first).
    pub fn delete_all(&mut self) -> bool {
        let sqs: Vec<u16> = self.sq_poller.keys().copied().collect();
        let cqs: Vec<u16> = self.cq_poller.keys().copied().collect();
        let mut ok = true;
        for q in sqs {
            ok &= self.delete_sq(q);
        }
        for q in cqs {
            ok &= self.delete_cq(q);
        }
        ok
    }

    /// The controller was reset or shut down: zoned namespaces close their
    /// open zones.
    pub fn close_open_zones(&self) -> io::Result<()> {
        let table = self.ctx.namespaces.load();
        for n in table.entries.iter().flatten() {
            n.backend
                .close_open_zones()
                .map_err(|e| io::Error::other(format!("{}: {e}", n.backend.describe())))?;
        }
        Ok(())
    }

    /// Make every completed write durable.
    pub fn flush(&self) -> io::Result<()> {
        let table = self.ctx.namespaces.load();
        for n in table.entries.iter().flatten() {
            n.backend
                .flush()
                .map_err(|e| io::Error::other(format!("{}: {e}", n.backend.describe())))?;
        }
        Ok(())
    }
}
