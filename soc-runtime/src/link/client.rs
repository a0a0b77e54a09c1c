//! The runtime's end of the link: it says who it is, attaches the
//! controllers it serves (declaring their namespaces), and then does what
//! the host-driver asks: map and unmap guest memory, wire interrupts,
//! create and delete I/O queues on the pollers (resuming them from the
//! queue-state area when a previous runtime served them).
//!
//! Threads: one reader (this link's messages, routed by controller), one
//! writer (everything the runtime sends, from a bounded outbox, so that no
//! poller ever blocks on the socket). Each controller's requests run in
//! order on a strand of the runtime's control pool (a slow queue deletion
//! on one VM holds up that VM only, and threads do not grow with VMs).

use crate::link::carrier::{Carrier, Windows};
use crate::pcie::controller::{CtrlCtx, Namespace, NsTable};
use crate::pcie::runtime::{next_ctrl_id, CtrlQueues, Runtime};
use leapio_ats::Prot;
use leapio_link::doorbells::Doorbells;
use leapio_link::proto::{PROTOCOL_MAJOR, PROTOCOL_MINOR};
use leapio_link::qstate::QueueState;
use leapio_link::{LinkError, NsDecl, ToHost, ToRuntime};
use leapio_nvme::Status;
use leapio_service::pool::{Finished, Strand};
use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Whether this process is a runtime of its own (`socp`), which aborts when
/// a link is lost while a backend still holds commands of its queues: it
/// would otherwise connect again as a runtime that let go of everything
/// (see [`set_exit_if_undrained`]).
static EXIT_IF_UNDRAINED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Say that this process is a runtime of its own: a link lost while a
/// backend still holds commands ends the process (its exit is what fences
/// it). An embedded runtime (the all-in-one `leapio`, tests) only logs it.
pub fn set_exit_if_undrained(on: bool) {
    EXIT_IF_UNDRAINED.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Reports queued for the host-driver before new ones are dropped.
const OUTBOX: usize = 4096;
/// How long the host-driver has to answer Hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to drain a queue's commands when letting go of a controller.
pub const UNMAP_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What happened to an attach request.
pub type AttachResult = Result<(), String>;

enum Work {
    Msg(ToRuntime, Vec<OwnedFd>),
    /// Let go of the controller: drain, then tell the host-driver (unless
    /// the link is gone).
    Stop {
        tell_host: bool,
    },
}

/// A controller being served: its strand on the control pool, the
/// strand's mailbox, and what the pollers see of it.
struct Worker {
    mailbox: Arc<Mailbox>,
    strand: Arc<Strand>,
    ctx: Arc<CtrlCtx>,
}

/// A controller's requests, and whether it has let go.
#[derive(Default)]
struct Mailbox {
    queue: Mutex<VecDeque<Work>>,
    let_go: Finished,
}

impl Worker {
    fn send(&self, w: Work) {
        lock(&self.mailbox.queue).push_back(w);
        self.strand.wake();
    }

    /// Let go of the controller (see [`Work::Stop`]); the returned worker
    /// says when it is done.
    fn stop(self, tell_host: bool) -> Worker {
        self.send(Work::Stop { tell_host });
        self
    }

    /// Wait until the controller has let go (or its work failed).
    fn wait_done(&self) {
        if !self.mailbox.let_go.wait(&self.strand) {
            tracing::error!(ctrl = %self.ctx.name, "the controller's work failed while letting go");
        }
    }
}

struct Pending {
    namespaces: Vec<Arc<Namespace>>,
    reply: Option<Sender<AttachResult>>,
}

/// A connected link.
pub struct LinkClient {
    rt: Arc<Runtime>,
    carrier: Carrier,
    outbox: SyncSender<ToHost>,
    pending: Mutex<HashMap<String, Pending>>,
    workers: Mutex<HashMap<String, Worker>>,
    host: String,
    /// The link went down (its controllers are let go of by the reader).
    down: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The declaration of a namespace the runtime serves.
pub fn declare(ns: &Namespace) -> NsDecl {
    NsDecl {
        nsid: ns.info.nsid,
        block_size: ns.info.block_size,
        num_blocks: ns.info.num_blocks,
        volatile_write_cache: ns.info.volatile_write_cache,
        write_zeroes: ns.info.write_zeroes,
        deallocate: ns.info.deallocate,
        persistent: ns.backend.persistent(),
        describe: ns.backend.describe(),
        zoned: ns.info.zoned.map(|z| leapio_link::ZonedDecl {
            zone_blocks: z.zone_blocks,
            capacity: z.capacity,
            max_open: z.max_open,
            max_active: z.max_active,
        }),
    }
}

impl LinkClient {
    /// Say Hello over `carrier` and start the reader and writer.
    /// `software` names this runtime ("socp 0.1.0").
    pub fn connect(
        carrier: Carrier,
        rt: Arc<Runtime>,
        software: &str,
    ) -> Result<(Arc<LinkClient>, JoinHandle<LinkError>), LinkError> {
        carrier.send(&ToHost::Hello {
            major: PROTOCOL_MAJOR,
            minor: PROTOCOL_MINOR,
            software: software.to_string(),
        })?;
        let host = match carrier.recv(Some(WELCOME_TIMEOUT))? {
            (
                ToRuntime::Welcome {
                    major,
                    minor,
                    software: host,
                },
                _,
            ) => {
                leapio_link::proto::check_version(major, minor, &host, software)
                    .map_err(LinkError::Protocol)?;
                host
            }
            (ToRuntime::Refused { reason }, _) => {
                return Err(LinkError::Protocol(format!(
                    "refused by the host-driver: {reason}"
                )))
            }
            (other, _) => {
                return Err(LinkError::Protocol(format!(
                    "expected Welcome, got {other:?}"
                )))
            }
        };
        tracing::info!(host = %host, "link up");
        let (tx, rx) = sync_channel(OUTBOX);
        let writer = carrier.clone();
        std::thread::Builder::new()
            .name("socp-link-tx".into())
            .spawn(move || write_loop(writer, rx))
            .map_err(LinkError::Io)?;
        let client = Arc::new(LinkClient {
            rt,
            carrier: carrier.clone(),
            outbox: tx,
            pending: Mutex::new(HashMap::new()),
            workers: Mutex::new(HashMap::new()),
            host,
            down: std::sync::atomic::AtomicBool::new(false),
        });
        let me = client.clone();
        let reader = std::thread::Builder::new()
            .name("socp-link-rx".into())
            .spawn(move || me.read_loop(carrier))
            .map_err(LinkError::Io)?;
        Ok((client, reader))
    }

    /// The host-driver's name for itself.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Ask to serve controller `ctrl` with `namespaces`; the answer comes
    /// on the returned channel (Err says why the host-driver refused).
    pub fn attach(
        &self,
        ctrl: &str,
        namespaces: Vec<Arc<Namespace>>,
        handover: bool,
    ) -> Receiver<AttachResult> {
        let (tx, rx) = channel();
        if lock(&self.workers).contains_key(ctrl) || lock(&self.pending).contains_key(ctrl) {
            let _ = tx.send(Err(format!(
                "controller {ctrl} is already served or being attached"
            )));
            return rx;
        }
        let decls = namespaces.iter().map(|n| declare(n)).collect();
        lock(&self.pending).insert(
            ctrl.to_string(),
            Pending {
                namespaces,
                reply: Some(tx.clone()),
            },
        );
        if self
            .outbox
            .send(ToHost::Attach {
                ctrl: ctrl.to_string(),
                namespaces: decls,
                handover,
            })
            .is_err()
        {
            lock(&self.pending).remove(ctrl);
            let _ = tx.send(Err("the link is down".into()));
        }
        rx
    }

    /// Let go of `ctrl`: drain its queues, tell the host-driver.
    pub fn detach(&self, ctrl: &str) -> bool {
        let w = lock(&self.workers).remove(ctrl);
        match w {
            Some(w) => {
                w.stop(true).wait_done();
                true
            }
            None => false,
        }
    }

    /// Let go of every controller (graceful stop or handover).
    pub fn detach_all(&self) {
        // All at once: they drain on the pool in parallel.
        let workers: Vec<_> = lock(&self.workers).drain().collect();
        let stopping: Vec<_> = workers.into_iter().map(|(_, w)| w.stop(true)).collect();
        for m in stopping {
            m.wait_done();
        }
    }

    /// End the link: the reader and writer stop (the controllers are not
    /// let go of: a runtime that stops this way leaves the queue-state
    /// area for its successor, as if it had died).
    pub fn close(&self) {
        self.carrier.shutdown();
    }

    /// Whether the link is still up (a link that went down lets go of its
    /// controllers on its own).
    pub fn link_up(&self) -> bool {
        !self.down.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The controllers being served.
    pub fn served(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.workers).keys().cloned().collect();
        v.sort();
        v
    }

    /// Serve a new namespace on controller `ctrl` (opened and claimed;
    /// its NSID is given) and tell the host-driver, which presents it to
    /// the guest (Namespace Attribute Changed).
    pub fn ns_add(&self, ctrl: &str, ns: Arc<Namespace>) -> Result<(), String> {
        let workers = lock(&self.workers);
        let w = workers
            .get(ctrl)
            .ok_or_else(|| format!("controller {ctrl} is not served"))?;
        let nsid = ns.info.nsid;
        let old = w.ctx.namespaces.load_full();
        if old.get(nsid).is_some() {
            return Err(format!("controller {ctrl} has a namespace {nsid} already"));
        }
        let mut entries = old.entries.clone();
        let i = usize::try_from(nsid.saturating_sub(1)).map_err(|e| e.to_string())?;
        if entries.len() <= i {
            entries.resize_with(i + 1, || None);
        }
        let decl = declare(&ns);
        entries[i] = Some(ns);
        w.ctx.namespaces.store(Arc::new(NsTable {
            generation: old.generation + 1,
            entries,
        }));
        self.outbox
            .send(ToHost::NsAdd {
                ctrl: ctrl.to_string(),
                ns: decl,
            })
            .map_err(|_| "the link is down".to_string())
    }

    /// Stop serving namespace `nsid` of `ctrl` (new commands for it get
    /// Invalid Namespace; those in flight finish) and tell the host-driver.
    pub fn ns_remove(&self, ctrl: &str, nsid: u32) -> Result<(), String> {
        let workers = lock(&self.workers);
        let w = workers
            .get(ctrl)
            .ok_or_else(|| format!("controller {ctrl} is not served"))?;
        let old = w.ctx.namespaces.load_full();
        if old.get(nsid).is_none() {
            return Err(format!("controller {ctrl} has no namespace {nsid}"));
        }
        let mut entries = old.entries.clone();
        if let Some(e) = usize::try_from(nsid - 1)
            .ok()
            .and_then(|i| entries.get_mut(i))
        {
            *e = None;
        }
        w.ctx.namespaces.store(Arc::new(NsTable {
            generation: old.generation + 1,
            entries,
        }));
        self.outbox
            .send(ToHost::NsRemove {
                ctrl: ctrl.to_string(),
                nsid,
            })
            .map_err(|_| "the link is down".to_string())
    }

    /// Whether the host left `ctrl`'s volatile write cache enabled (None if
    /// `ctrl` is not served).
    pub fn write_cache(&self, ctrl: &str) -> Option<bool> {
        lock(&self.workers)
            .get(ctrl)
            .map(|w| w.ctx.write_cache.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// What each namespace served for `ctrl` is, now: its backend's own
    /// description (a flash namespace's includes the FTL's write
    /// amplification, GC victims and erase counts).
    /// The pollers this client's controllers run on.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.rt
    }

    pub fn ns_states(&self, ctrl: &str) -> Vec<NsState> {
        self.each_ns(ctrl, |n| NsState {
            nsid: n.info.nsid,
            describe: n.backend.describe(),
            copied_bytes: n.backend.copied_bytes(),
        })
    }

    /// The namespaces served for `ctrl`.
    pub fn namespaces(&self, ctrl: &str) -> Vec<Arc<crate::pcie::controller::Namespace>> {
        self.each_ns(ctrl, Arc::clone)
    }

    /// The NSIDs served for `ctrl`.
    pub fn nsids(&self, ctrl: &str) -> Vec<u32> {
        self.each_ns(ctrl, |n| n.info.nsid)
    }

    /// `f` of each namespace served for `ctrl` (none for an unknown one).
    fn each_ns<T>(
        &self,
        ctrl: &str,
        f: impl Fn(&Arc<crate::pcie::controller::Namespace>) -> T,
    ) -> Vec<T> {
        lock(&self.workers).get(ctrl).map_or_else(Vec::new, |w| {
            w.ctx
                .namespaces
                .load()
                .entries
                .iter()
                .flatten()
                .map(&f)
                .collect()
        })
    }

    fn read_loop(self: Arc<Self>, carrier: Carrier) -> LinkError {
        let end = loop {
            let (msg, fds) = match carrier.recv(None) {
                Ok(m) => m,
                Err(e) => break e,
            };
            if let Err(e) = self.route(msg, fds) {
                break e;
            }
        };
        match &end {
            LinkError::Closed => tracing::warn!("link closed by the host-driver"),
            e => tracing::error!("link failed: {e}"),
        }
        self.down.store(true, std::sync::atomic::Ordering::Release);
        carrier.shutdown();
        // Nothing more will come: stop serving (the host-driver has gone,
        // and with it the guests' devices).
        let workers: Vec<_> = lock(&self.workers).drain().collect();
        let stopping: Vec<_> = workers.into_iter().map(|(_, w)| w.stop(false)).collect();
        for m in stopping {
            m.wait_done();
        }
        for (ctrl, p) in lock(&self.pending).drain() {
            if let Some(r) = p.reply {
                let _ = r.send(Err(format!("{ctrl}: the link went down")));
            }
        }
        end
    }

    fn route(&self, msg: ToRuntime, fds: Vec<OwnedFd>) -> Result<(), LinkError> {
        match msg {
            ToRuntime::Welcome { .. } | ToRuntime::Refused { .. } => {
                Err(LinkError::Protocol("a second Welcome".into()))
            }
            ToRuntime::Attached {
                ctrl,
                config,
                epoch,
                windows,
            } => {
                let shared = match (windows, self.carrier.windows()) {
                    (true, Some(w)) => Shared::Windows(w.clone()),
                    (false, _) => {
                        let mut fds = fds.into_iter();
                        let (Some(db), Some(qs)) = (fds.next(), fds.next()) else {
                            return Err(LinkError::Protocol(
                                "Attached without its descriptors".into(),
                            ));
                        };
                        Shared::Fds(db, qs)
                    }
                    (true, None) => {
                        return Err(LinkError::Protocol("windows offered over a socket".into()))
                    }
                };
                let Some(p) = lock(&self.pending).remove(&ctrl) else {
                    return Err(LinkError::Protocol(format!(
                        "Attached for {ctrl}, never asked"
                    )));
                };
                let r = self.start_worker(&ctrl, &config, epoch, shared, p.namespaces);
                if let Err(why) = &r {
                    tracing::error!(ctrl, "cannot serve: {why}");
                }
                if let Some(reply) = p.reply {
                    let _ = reply.send(r);
                }
                Ok(())
            }
            ToRuntime::AttachRefused { ctrl, reason } => {
                tracing::error!(ctrl, "the host-driver refused to attach: {reason}");
                if let Some(p) = lock(&self.pending).remove(&ctrl) {
                    if let Some(reply) = p.reply {
                        let _ = reply.send(Err(reason));
                    }
                }
                Ok(())
            }
            ToRuntime::AttachWaiting { ctrl, reason } => {
                tracing::info!(ctrl, "attach waits: {reason}");
                Ok(())
            }
            ToRuntime::Detach { ctrl, reason } => {
                tracing::info!(ctrl, "the host-driver asks to let go: {reason}");
                if let Some(w) = lock(&self.workers).remove(&ctrl) {
                    // Draining may take a while: on the pool, not here.
                    drop(w.stop(true));
                }
                Ok(())
            }
            other => {
                let ctrl = other.ctrl().unwrap_or_default().to_string();
                match lock(&self.workers).get(&ctrl) {
                    Some(w) => w.send(Work::Msg(other, fds)),
                    None => {
                        tracing::warn!(ctrl, "message for a controller this runtime does not serve")
                    }
                }
                Ok(())
            }
        }
    }

    fn start_worker(
        &self,
        ctrl: &str,
        config: &leapio_link::CtrlConfig,
        epoch: u64,
        shared: Shared,
        namespaces: Vec<Arc<Namespace>>,
    ) -> AttachResult {
        let (doorbells, qstate, irq_sink) = match &shared {
            Shared::Fds(db, qs) => (
                Doorbells::open(db.try_clone().map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?,
                QueueState::open(qs.try_clone().map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?,
                None,
            ),
            Shared::Windows(w) => {
                let db = w.doorbells().map_err(|e| format!("doorbell window: {e}"))?;
                let qs = w.qstate().map_err(|e| format!("queue-state window: {e}"))?;
                let w2 = w.clone();
                let sink: leapio_link::irq::IrqSink = Arc::new(move |v| w2.irq(v));
                (
                    Doorbells::from_window(db).map_err(|e| e.to_string())?,
                    QueueState::from_window(qs).map_err(|e| e.to_string())?,
                    Some(sink),
                )
            }
        };
        let qstate = Arc::new(qstate);
        let mut table = NsTable {
            generation: 1,
            entries: Vec::new(),
        };
        for n in namespaces {
            let i = usize::try_from(n.info.nsid.saturating_sub(1)).unwrap_or(0);
            if table.entries.len() <= i {
                table.entries.resize_with(i + 1, || None);
            }
            table.entries[i] = Some(n);
        }
        let ctx = Arc::new(CtrlCtx::new(
            next_ctrl_id(&self.rt),
            ctrl.to_string(),
            doorbells,
            qstate,
            config.vectors,
            irq_sink,
            config.mdts_bytes,
            table,
            self.outbox.clone(),
        ));
        let queues = self.rt.queues_for(ctx.clone());
        let mailbox = Arc::new(Mailbox::default());
        let outbox = self.outbox.clone();
        let name = ctrl.to_string();
        let windows = self.carrier.windows().cloned();
        let state = Mutex::new(WorkerState {
            queues: Some(queues),
            claimed: false,
        });
        let mb = mailbox.clone();
        let strand = self.rt.control().strand(ctrl, move || {
            work(&state, &mb, &outbox, windows.as_ref());
        });
        tracing::info!(ctrl = %name, epoch, host = %self.host, "attached: serving its I/O queues");
        let w = Worker {
            mailbox,
            strand,
            ctx,
        };
        // Claiming the backends is the strand's first work.
        w.strand.wake();
        lock(&self.workers).insert(name, w);
        Ok(())
    }
}

/// How often the writer says the runtime is alive (the rings' heartbeat).
const HEARTBEAT: Duration = Duration::from_millis(100);

fn write_loop(carrier: Carrier, rx: Receiver<ToHost>) {
    loop {
        match rx.recv_timeout(HEARTBEAT) {
            Ok(msg) => {
                if let Err(e) = carrier.send(&msg) {
                    tracing::warn!("link: sending to the host-driver failed: {e}");
                    carrier.shutdown();
                    return;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if carrier.is_closed() {
            return;
        }
        carrier.beat();
    }
}

/// A served namespace as it is now.
pub struct NsState {
    /// Its NSID.
    pub nsid: u32,
    /// Its backend's description.
    pub describe: String,
    /// Bytes of I/O data the runtime's CPU copied for it.
    pub copied_bytes: u64,
}

/// How the host-driver's shared memory reaches this runtime.
enum Shared {
    Fds(OwnedFd, OwnedFd),
    Windows(Arc<dyn Windows>),
}

/// What a controller's strand keeps between runs.
struct WorkerState {
    /// None once it has let go.
    queues: Option<CtrlQueues>,
    /// Its backends were claimed.
    claimed: bool,
}

/// One run of a controller's strand: its requests, in order.
fn work(
    state: &Mutex<WorkerState>,
    mailbox: &Mailbox,
    outbox: &SyncSender<ToHost>,
    windows: Option<&Arc<dyn Windows>>,
) {
    let mut st = lock(state);
    let WorkerState { queues, claimed } = &mut *st;
    let Some(q) = queues.as_mut() else {
        return;
    };
    let name = q.ctx().name.clone();
    if !*claimed {
        *claimed = true;
        // Backends opened for a handover are claimed now that the previous
        // runtime let go (it may take a moment to close them).
        let table = q.ctx().namespaces.load_full();
        for n in table.entries.iter().flatten() {
            if let Err(e) = n.backend.claim() {
                q.ctx().set_fatal(format!(
                    "namespace {}: {}",
                    n.info.nsid,
                    crate::error_chain(&e)
                ));
            }
        }
    }
    let ack = |req: u64, status: u16| {
        let _ = outbox.send(ToHost::Ack { req, status });
    };
    loop {
        let Some(w) = lock(&mailbox.queue).pop_front() else {
            return;
        };
        let (msg, fds) = match w {
            Work::Msg(m, f) => (m, f),
            Work::Stop { tell_host } => {
                // Every command taken is completed and posted once the
                // pollers let go of the queues; the queue-state area then
                // says so for whoever comes next.
                let drained = q.delete_all();
                if !drained
                    && !tell_host
                    && EXIT_IF_UNDRAINED.load(std::sync::atomic::Ordering::Relaxed)
                {
                    // The link is gone and this runtime would connect again
                    // as one that let go of everything: it must not, while
                    // a backend may still write the guest's memory. Dying
                    // fences it (the host-driver waits for its exit).
                    tracing::error!(ctrl = %name, "commands still running on a backend after the link was lost: exiting so that the host-driver can fence this runtime");
                    std::process::abort();
                }
                if !drained {
                    tracing::error!(ctrl = %name, "commands still running on a backend while letting go");
                }
                if let Err(e) = q.flush() {
                    tracing::error!(ctrl = %name, "flushing on the way out: {e}");
                }
                if tell_host && drained {
                    let _ = outbox.send(ToHost::Detach { ctrl: name.clone() });
                }
                tracing::info!(ctrl = %name, "detached");
                *queues = None;
                lock(&mailbox.queue).clear();
                mailbox.let_go.set();
                return;
            }
        };
        handle(q, msg, fds, windows, &ack);
    }
}

/// Map guest memory for a Map message: through the link function's window
/// (the guest RAM BAR, at the region's offset) or from the descriptor that
/// came with it. Returns the status to answer with.
fn map(
    ctx: &Arc<CtrlCtx>,
    msg: &ToRuntime,
    fds: Vec<OwnedFd>,
    windows: Option<&Arc<dyn Windows>>,
) -> u16 {
    let ToRuntime::Map {
        gpa,
        size,
        file_offset,
        read,
        write,
        window,
        ..
    } = *msg
    else {
        return Status::INTERNAL_ERROR.field();
    };
    let (fd, offset) = match (window, windows) {
        (Some(off), Some(w)) => match w.guest_mem() {
            Ok(f) => (Some(OwnedFd::from(f)), off),
            Err(e) => {
                tracing::warn!(ctrl = %ctx.name, "guest memory window: {e}");
                (None, 0)
            }
        },
        _ => (fds.into_iter().next(), file_offset),
    };
    match ctx.domain.map(gpa, size, fd, offset, Prot { read, write }) {
        Ok(()) => 0,
        Err(e) => {
            tracing::warn!(ctrl = %ctx.name, gpa = format_args!("{gpa:#x}"), size, "cannot map guest memory: {e}");
            Status::INTERNAL_ERROR.field()
        }
    }
}

/// Unmap guest memory once nothing in flight points into it. An unknown
/// range is already unmapped. Returns the status to answer with.
fn unmap(ctx: &CtrlCtx, gpa: u64, size: u64, all: bool) -> u16 {
    let r = if all {
        ctx.domain.unmap_all(UNMAP_DRAIN_TIMEOUT)
    } else {
        ctx.domain.unmap(gpa, size, UNMAP_DRAIN_TIMEOUT)
    };
    match r {
        Ok(()) | Err(leapio_ats::AtsError::UnknownMapping { .. }) => 0,
        Err(e) => {
            tracing::warn!(ctrl = %ctx.name, gpa = format_args!("{gpa:#x}"), size, "unmap: {e}");
            Status::INTERNAL_ERROR.field()
        }
    }
}

fn handle(
    q: &mut CtrlQueues,
    msg: ToRuntime,
    fds: Vec<OwnedFd>,
    windows: Option<&Arc<dyn Windows>>,
    ack: &impl Fn(u64, u16),
) {
    let ctx = q.ctx().clone();
    let status = |r: Result<(), Status>| r.err().map_or(0, |s| s.field());
    let drained = |ok: bool| {
        if ok {
            0
        } else {
            Status::INTERNAL_ERROR.field()
        }
    };
    match msg {
        ToRuntime::State {
            page_size,
            shadow,
            write_cache,
            ..
        } => {
            ctx.page_size
                .store(page_size, std::sync::atomic::Ordering::Relaxed);
            ctx.shadow.set(shadow);
            ctx.write_cache
                .store(write_cache, std::sync::atomic::Ordering::Relaxed);
        }
        ToRuntime::Map { req, .. } => ack(req, map(&ctx, &msg, fds, windows)),
        ToRuntime::Unmap {
            req,
            gpa,
            size,
            all,
            ..
        } => ack(req, unmap(&ctx, gpa, size, all)),
        ToRuntime::Irqs { first, has_fd, .. } => {
            let mut fds = fds.into_iter();
            for (i, has) in has_fd.iter().enumerate() {
                let v = first.saturating_add(u16::try_from(i).unwrap_or(u16::MAX));
                let fd = if *has {
                    fds.next().map(std::fs::File::from)
                } else {
                    None
                };
                ctx.irqs.set_eventfd(v, fd);
            }
        }
        ToRuntime::CreateCq {
            req, setup, resume, ..
        } => ack(req, status(q.create_cq(setup, resume))),
        ToRuntime::CreateSq {
            req, setup, resume, ..
        } => ack(req, status(q.create_sq(setup, resume))),
        ToRuntime::DeleteSq { .. } | ToRuntime::DeleteCq { .. } if crate::crash::hang_deletes() => {
        }
        ToRuntime::DeleteSq { req, qid, .. } => ack(req, drained(q.delete_sq(qid))),
        ToRuntime::DeleteCq { req, qid, .. } => ack(req, drained(q.delete_cq(qid))),
        ToRuntime::Reset { .. } => {
            ctx.fatal.store(false, std::sync::atomic::Ordering::Release);
            ctx.shadow.set(None);
            if let Err(e) = q.close_open_zones() {
                tracing::error!(ctrl = %ctx.name, "closing the open zones at a reset: {e}");
            }
        }
        ToRuntime::Flush { req, .. } => match q.close_open_zones().and_then(|()| q.flush()) {
            Ok(()) => ack(req, 0),
            Err(e) => {
                tracing::error!(ctrl = %ctx.name, "flush failed: {e}");
                ack(req, Status::INTERNAL_ERROR.field());
            }
        },
        // Routed by the reader, never here.
        ToRuntime::Detach { .. }
        | ToRuntime::Welcome { .. }
        | ToRuntime::Refused { .. }
        | ToRuntime::Attached { .. }
        | ToRuntime::AttachRefused { .. }
        | ToRuntime::AttachWaiting { .. } => {}
    }
}
