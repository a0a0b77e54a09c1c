//! A controller's side of its runtime: whether a runtime serves it, and the
//! requests the control plane makes of it (queues, memory, interrupts).
//!
//! The queue-state area is updated here before and after the runtime is
//! told, so that it always describes the queues the guest has: a runtime
//! that attaches later (or replaces one that died) finds them there.
//!
//! While no runtime is attached the controller keeps working: the admin
//! queue answers, queues are created and deleted in the queue-state area
//! only, and the guest's I/O waits in its submission queues. A runtime that
//! is gone must be *fenced* (unable to touch guest memory any more) before
//! the host-driver releases memory or queues it may still write: see
//! [`RuntimeLink::fenced`].

use crate::link::RuntimeLink;
use crate::shared::CtrlShared;
use leapio_ats::RegionInfo;
pub use leapio_link::{CqSetup, SqSetup};
use leapio_link::{LinkError, NsDecl, Shadow, ToRuntime};
use leapio_nvme::Status;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

/// How long DMA_UNMAP waits for in-flight I/O on the memory to finish.
pub const UNMAP_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the host-driver waits for a runtime. A runtime that does not
/// answer in time is fenced (killed): it may still be writing guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Queue creation, memory maps.
    pub ack: Duration,
    /// Queue deletion, flush, letting go: the runtime first lets the
    /// queue's commands finish on their backends.
    pub drain: Duration,
    /// A runtime that is gone must have exited within this.
    pub fence: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            ack: Duration::from_secs(5),
            drain: Duration::from_secs(30),
            fence: Duration::from_secs(10),
        }
    }
}

/// What the link readers tell a controller.
pub enum PortEvent {
    /// A runtime asks to serve the controller.
    Attach {
        link: Arc<RuntimeLink>,
        namespaces: Vec<NsDecl>,
        handover: bool,
    },
    /// The runtime let go of the controller (everything it took is done).
    Detached {
        link: u64,
    },
    /// The link closed (the runtime died, or broke the protocol).
    Lost {
        link: u64,
    },
    NsAdd {
        link: u64,
        ns: NsDecl,
    },
    NsRemove {
        link: u64,
        nsid: u32,
    },
}

enum Attachment {
    /// No runtime, nothing to fence.
    None,
    Attached(Arc<RuntimeLink>),
    /// The runtime is gone but not yet known to be unable to write.
    Fencing(Arc<RuntimeLink>),
}

/// The controller's runtime, as its control thread sees it.
pub struct RuntimePort {
    shared: Arc<CtrlShared>,
    state: Attachment,
    timeouts: Timeouts,
    events: Receiver<PortEvent>,
    /// Events that arrived while the thread waited for one in particular
    /// (a detach): taken before the channel's.
    stash: std::collections::VecDeque<PortEvent>,
    /// The last look for processes holding the shared memory of a runtime
    /// that exited, and who (looked for at most every [`HOLDER_SCAN`]).
    holder_scan: Option<(std::time::Instant, Vec<i32>)>,
}

/// How often a runtime being fenced is checked for helpers.
const HOLDER_SCAN: Duration = Duration::from_millis(250);

impl RuntimePort {
    pub fn new(
        shared: Arc<CtrlShared>,
        events: Receiver<PortEvent>,
        timeouts: Timeouts,
    ) -> RuntimePort {
        RuntimePort {
            shared,
            state: Attachment::None,
            timeouts,
            events,
            stash: std::collections::VecDeque::new(),
            holder_scan: None,
        }
    }

    /// The next event for the controller's thread, without waiting.
    pub(crate) fn next_event(&mut self) -> Option<PortEvent> {
        self.stash
            .pop_front()
            .or_else(|| self.events.try_recv().ok())
    }

    /// The runtime serving the controller, if one is attached.
    pub fn runtime(&self) -> Option<&Arc<RuntimeLink>> {
        match &self.state {
            Attachment::Attached(l) => Some(l),
            _ => None,
        }
    }

    /// The serving runtime, if its link is still open. One whose link has
    /// closed is taken as lost now: its Lost event may still be on its way
    /// from the link's reader thread, and a successor that started at once
    /// must not find it still serving.
    pub fn live_runtime(&mut self) -> Option<Arc<RuntimeLink>> {
        let cur = self.runtime().cloned()?;
        if cur.is_closed() {
            self.runtime_gone(cur.id, false);
            return None;
        }
        Some(cur)
    }

    /// A runtime that is gone and not fenced yet.
    pub fn fencing(&self) -> Option<&Arc<RuntimeLink>> {
        match &self.state {
            Attachment::Fencing(l) => Some(l),
            _ => None,
        }
    }

    pub(crate) fn set_attached(&mut self, link: Arc<RuntimeLink>) {
        self.shared
            .runtime
            .store(link.id, std::sync::atomic::Ordering::Release);
        self.shared
            .attaches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.state = Attachment::Attached(link);
    }

    /// The runtime `link` let go cleanly, or its link was lost.
    pub(crate) fn runtime_gone(&mut self, link: u64, clean: bool) {
        let Attachment::Attached(l) = &self.state else {
            return;
        };
        if l.id != link {
            return;
        }
        self.shared
            .runtime
            .store(0, std::sync::atomic::Ordering::Release);
        let l = l.clone();
        if clean {
            tracing::info!(ctrl = %self.shared.name, runtime = %l.describe(), "runtime detached");
            self.state = Attachment::None;
        } else {
            self.shared
                .runtime_losses
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(ctrl = %self.shared.name, runtime = %l.describe(), "runtime lost: the guest's I/O waits for a new one");
            self.state = Attachment::Fencing(l);
        }
    }

    /// A request to the runtime failed: a runtime that does not answer in
    /// time is killed (it may still be writing guest memory), one whose
    /// link closed is waited for.
    fn failed(&mut self, what: &str, e: &LinkError) {
        if let Attachment::Attached(l) = &self.state {
            let l = l.clone();
            match e {
                LinkError::Closed => l.close(&format!("{what}: link closed")),
                _ => l.kill(&format!("{what}: {e}")),
            }
            self.runtime_gone(l.id, false);
        }
    }

    /// Make sure no runtime that is gone can still write guest memory:
    /// wait for it to exit (killing it if it lingers). False if it could
    /// not be fenced (the caller must not release what it may touch).
    pub fn fence(&mut self) -> bool {
        let Attachment::Fencing(l) = &self.state else {
            return true;
        };
        let l = l.clone();
        if !l.fenced(self.timeouts.fence) {
            l.kill("it closed its link but did not exit");
            if !l.fenced(self.timeouts.fence) {
                tracing::error!(ctrl = %self.shared.name, runtime = %l.describe(), "the previous runtime has not exited: guest memory and queues it may still write are kept");
                return false;
            }
        }
        let deadline = std::time::Instant::now() + self.timeouts.fence;
        while !self.no_helpers(&l, true) {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(HOLDER_SCAN);
        }
        tracing::info!(ctrl = %self.shared.name, runtime = %l.describe(), "previous runtime fenced (exited)");
        self.state = Attachment::None;
        true
    }

    /// Whether no process the runtime `l` (a process that exited) may have
    /// left its descriptors to still holds the controller's shared memory
    /// (see `crate::holders`). `now`: look again even if it was looked at
    /// a moment ago.
    fn no_helpers(&mut self, l: &RuntimeLink, now: bool) -> bool {
        if !matches!(l.peer, crate::link::Peer::Process { .. }) {
            return true;
        }
        if let Some((at, found)) = &self.holder_scan {
            if !now && at.elapsed() < HOLDER_SCAN {
                return found.is_empty();
            }
        }
        let files: Vec<(u64, u64)> = [self.shared.doorbells.fd(), self.shared.qstate.fd()]
            .into_iter()
            .filter_map(crate::holders::identity)
            .collect();
        let found = crate::holders::holders(&files, &self.shared.trusted());
        let new = self.holder_scan.as_ref().is_none_or(|(_, f)| *f != found);
        if new && !found.is_empty() {
            tracing::error!(ctrl = %self.shared.name, runtime = %l.describe(), holders = ?found, "the previous runtime exited but other processes hold the controller's doorbell page or queue-state area (its helpers?): not fenced while they do");
        }
        self.holder_scan = Some((std::time::Instant::now(), found));
        self.holder_scan.as_ref().is_some_and(|(_, f)| f.is_empty())
    }

    /// The runtime a previous host-driver had: fenced unless its process
    /// still runs (it may come back, or must exit before another is let in).
    pub(crate) fn restored_runtime(&mut self, rt: crate::image::RuntimeImage) {
        if crate::image::start_time(rt.pid) != Some(rt.start_time) {
            tracing::info!(ctrl = %self.shared.name, pid = rt.pid, "the previous host-driver's runtime has exited");
            return;
        }
        match RuntimeLink::ended(rt.pid) {
            Ok(l) => {
                tracing::info!(ctrl = %self.shared.name, pid = rt.pid, "the previous host-driver's runtime still runs: waiting for it to come back or exit");
                self.state = Attachment::Fencing(Arc::new(l));
            }
            Err(e) => {
                // Without the fence, keep everything it may touch.
                tracing::error!(ctrl = %self.shared.name, pid = rt.pid, "cannot watch the previous runtime ({e}): the controller stays fatal");
                self.shared
                    .fatal
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
    }

    /// A runtime process whose link closed connects again: a runtime
    /// reconnects only once it has let go of everything it served over
    /// the link that closed (its queues drained, nothing in flight), so it
    /// is fenced. True if `link` is that process.
    pub(crate) fn came_back(&mut self, link: &RuntimeLink) -> bool {
        let Attachment::Fencing(old) = &self.state else {
            return false;
        };
        match (old.peer.pid(), link.peer.pid()) {
            (Some(a), Some(b)) if a == b && old.is_closed() => {
                tracing::info!(ctrl = %self.shared.name, pid = a, "the runtime came back after its link closed");
                self.state = Attachment::None;
                true
            }
            _ => false,
        }
    }

    /// Fenced already? (Non-blocking; used to admit a new runtime.)
    pub fn try_fence(&mut self) -> bool {
        match &self.state {
            Attachment::Fencing(l) if l.fenced(Duration::ZERO) => {
                let l = l.clone();
                if !self.no_helpers(&l, false) {
                    return false;
                }
                tracing::info!(ctrl = %self.shared.name, runtime = %l.describe(), "previous runtime fenced (exited)");
                self.state = Attachment::None;
                self.holder_scan = None;
                true
            }
            Attachment::Fencing(_) => false,
            _ => true,
        }
    }

    fn ask(
        &mut self,
        what: &str,
        timeout: Duration,
        build: impl FnOnce(u64) -> ToRuntime,
    ) -> Option<u16> {
        let l = self.runtime()?.clone();
        match l.request(what, build, &[], timeout) {
            Ok(s) => Some(s),
            Err(e) => {
                self.failed(what, &e);
                None
            }
        }
    }

    /// A runtime that says it could not drain a queue (its commands are
    /// stuck on a backend) may still write into it: fence it.
    fn undrained(&mut self, what: &str, answer: Option<u16>) {
        if answer.is_some_and(|s| s != 0) {
            self.failed(
                what,
                &LinkError::Timeout("the queue's commands to finish".into()),
            );
        }
    }

    fn tell(&mut self, what: &str, msg: &ToRuntime, fds: &[BorrowedFd<'_>]) {
        let Some(l) = self.runtime().cloned() else {
            return;
        };
        if let Err(e) = l.send(msg, fds) {
            self.failed(what, &e);
        }
    }

    fn name(&self) -> String {
        self.shared.name.clone()
    }

    /// The guest created completion queue `cq` (validated).
    pub fn create_cq(&mut self, cq: CqSetup, resume: bool) -> Result<(), Status> {
        if !resume && !self.shared.qstate.init_cq(cq.qid, cq.entries) {
            return Err(Status::INVALID_QUEUE_IDENTIFIER);
        }
        let ctrl = self.name();
        let t = self.timeouts.ack;
        let status = self.ask(&format!("creation of CQ {}", cq.qid), t, |req| {
            ToRuntime::CreateCq {
                req,
                ctrl,
                setup: cq,
                resume,
            }
        });
        match status {
            Some(s) if s != 0 && !resume => {
                self.shared.qstate.clear_cq(cq.qid);
                Err(Status::from_field(s))
            }
            Some(s) if s != 0 => Err(Status::from_field(s)),
            // Done, or no runtime: the queue is in the queue-state area and
            // the next runtime resumes it.
            _ => Ok(()),
        }
    }

    /// The guest created submission queue `sq` (validated).
    pub fn create_sq(&mut self, sq: SqSetup, resume: bool) -> Result<(), Status> {
        if !resume && !self.shared.qstate.init_sq(sq.qid, sq.entries, sq.cqid) {
            return Err(Status::INVALID_QUEUE_IDENTIFIER);
        }
        let ctrl = self.name();
        let t = self.timeouts.ack;
        let status = self.ask(&format!("creation of SQ {}", sq.qid), t, |req| {
            ToRuntime::CreateSq {
                req,
                ctrl,
                setup: sq,
                resume,
            }
        });
        match status {
            Some(s) if s != 0 && !resume => {
                self.shared.qstate.clear_sq(sq.qid);
                Err(Status::from_field(s))
            }
            Some(s) if s != 0 => Err(Status::from_field(s)),
            _ => Ok(()),
        }
    }

    /// Delete submission queue `qid`: once this returns Ok, nothing touches
    /// it any more and every command taken from it has completed (or, with
    /// no runtime, was dropped: the guest deleted its queue).
    pub fn delete_sq(&mut self, qid: u16) -> Result<(), Status> {
        let ctrl = self.name();
        let t = self.timeouts.drain;
        let what = format!("deletion of SQ {qid}");
        let answer = self.ask(&what, t, |req| ToRuntime::DeleteSq { req, ctrl, qid });
        self.undrained(&what, answer);
        if !self.fence() {
            return Err(Status::INTERNAL_ERROR);
        }
        let dropped = self.shared.qstate.clear_sq(qid);
        if dropped > 0 {
            tracing::info!(ctrl = %self.shared.name, qid, dropped, "submission queue deleted with commands no runtime finished");
        }
        Ok(())
    }

    /// Delete completion queue `qid` (its submission queues are gone).
    pub fn delete_cq(&mut self, qid: u16) -> Result<(), Status> {
        let ctrl = self.name();
        let t = self.timeouts.drain;
        let what = format!("deletion of CQ {qid}");
        let answer = self.ask(&what, t, |req| ToRuntime::DeleteCq { req, ctrl, qid });
        self.undrained(&what, answer);
        if !self.fence() {
            return Err(Status::INTERNAL_ERROR);
        }
        let counts = self.shared.qstate.clear_cq(qid);
        self.shared.retire_counts(counts);
        Ok(())
    }

    /// Guest memory was mapped (after the host-driver's own domain took
    /// it): returns once the runtime can translate it.
    pub fn map(&mut self, r: &RegionInfo, fd: Option<BorrowedFd<'_>>) {
        let Some(l) = self.runtime().cloned() else {
            return;
        };
        // A runtime on an SoC reaches guest memory through the link
        // function's window, not a descriptor.
        let (fds, window): (Vec<BorrowedFd<'_>>, Option<u64>) = match l.rings() {
            Some(end) => {
                let window = fd.and_then(|f| end.window_offset(f, r.file_offset));
                if window.is_none() && r.translatable {
                    // Its commands fail with a data transfer error.
                    tracing::warn!(ctrl = %self.shared.name, gpa = format_args!("{:#x}", r.gpa), size = r.size, "guest memory outside the link function's window: the SoC cannot reach it");
                }
                (Vec::new(), window)
            }
            None => (fd.into_iter().collect(), None),
        };
        let has_fd = !fds.is_empty();
        let ctrl = self.name();
        let answer = l.request(
            "a memory map",
            |req| ToRuntime::Map {
                req,
                ctrl,
                gpa: r.gpa,
                size: r.size,
                file_offset: r.file_offset,
                read: r.prot.read,
                write: r.prot.write,
                fd: has_fd,
                window,
            },
            &fds,
            self.timeouts.ack,
        );
        match answer {
            Ok(0) => {}
            Ok(s) => {
                tracing::warn!(ctrl = %self.shared.name, gpa = format_args!("{:#x}", r.gpa), "the runtime could not map guest memory ({})", Status::from_field(s));
            }
            Err(e) => self.failed("a memory map", &e),
        }
    }

    /// Guest memory is going away: returns once the runtime no longer
    /// points into it. False if that cannot be made sure.
    pub fn unmap(&mut self, gpa: u64, size: u64, all: bool) -> bool {
        let ctrl = self.name();
        let answer = self.ask("an unmap", UNMAP_DRAIN_TIMEOUT + self.timeouts.ack, |req| {
            ToRuntime::Unmap {
                req,
                ctrl,
                gpa,
                size,
                all,
            }
        });
        if answer.is_some_and(|s| s != 0) {
            // The runtime still has I/O on it after its own drain timeout.
            return false;
        }
        self.fence()
    }

    /// The eventfds of vectors `first..first + count` changed.
    pub fn irqs(&mut self, first: u16, count: u16) {
        // A runtime on an SoC raises vectors through the link function.
        if self.runtime().is_none_or(|l| l.windows()) {
            return;
        }
        let end = first.saturating_add(count).min(self.shared.irqs.count());
        let mut v = first;
        while v < end {
            let chunk = u16::try_from(leapio_link::frame::MAX_FDS).unwrap_or(1);
            let chunk_end = end.min(v.saturating_add(chunk));
            let files: Vec<_> = (v..chunk_end)
                .map(|i| self.shared.irqs.eventfd(i))
                .collect();
            let has_fd = files.iter().map(Option::is_some).collect();
            let fds: Vec<BorrowedFd<'_>> = files.iter().flatten().map(|f| f.as_fd()).collect();
            let msg = ToRuntime::Irqs {
                ctrl: self.name(),
                first: v,
                has_fd,
            };
            self.tell("interrupt eventfds", &msg, &fds);
            v = chunk_end;
        }
    }

    /// Controller state for the runtime: enabled, page size, shadow
    /// doorbells, volatile write cache.
    pub fn state(&mut self, enabled: bool, shadow: Option<Shadow>, write_cache: bool) {
        let msg = ToRuntime::State {
            ctrl: self.name(),
            enabled,
            page_size: self.shared.page_size(),
            shadow,
            write_cache,
        };
        self.tell("controller state", &msg, &[]);
    }

    /// The controller was reset (its queues are already deleted).
    pub fn reset(&mut self) {
        let msg = ToRuntime::Reset { ctrl: self.name() };
        self.tell("a reset", &msg, &[]);
    }

    /// Shutdown notification: make completed writes durable.
    pub fn flush(&mut self) -> Result<(), String> {
        if self.runtime().is_none() {
            return Err("no runtime attached: writes completed by an earlier runtime are only as durable as its host's page cache".into());
        }
        let ctrl = self.name();
        let t = self.timeouts.drain;
        match self.ask("a flush", t, |req| ToRuntime::Flush { req, ctrl }) {
            Some(0) => Ok(()),
            Some(s) => Err(format!(
                "the runtime's flush failed ({})",
                Status::from_field(s)
            )),
            None => Err("the runtime did not answer the flush".into()),
        }
    }

    /// Ask the runtime to let go of the controller (removal): it drains
    /// and detaches; a runtime that does not is cut off.
    pub fn detach(&mut self, reason: &str) {
        let Some(l) = self.runtime().cloned() else {
            return;
        };
        let msg = ToRuntime::Detach {
            ctrl: self.name(),
            reason: reason.to_string(),
        };
        if l.send(&msg, &[]).is_err() {
            self.runtime_gone(l.id, false);
            return;
        }
        let deadline = std::time::Instant::now() + self.timeouts.drain;
        while std::time::Instant::now() < deadline {
            match self.events.recv_timeout(Duration::from_millis(50)) {
                Ok(PortEvent::Detached { link }) if link == l.id => {
                    self.runtime_gone(link, true);
                    return;
                }
                Ok(PortEvent::Lost { link }) if link == l.id => {
                    self.runtime_gone(link, false);
                    return;
                }
                // Other runtimes' requests wait for the thread's next round.
                Ok(other) => self.stash.push_back(other),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        self.failed(
            "detaching",
            &LinkError::Timeout("the runtime to detach".into()),
        );
    }
}
