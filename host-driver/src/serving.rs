//! How the host-driver serves its controllers with a fixed number of
//! threads, whatever the number of VMs.
//!
//! - One thread (`hostd-events`) waits on every controller's sockets (its
//!   vfio-user listener, or its client's connection) and timers, and
//!   watches the admin queues' doorbells in the shared doorbell pages:
//!   whatever it sees wakes that controller.
//! - A pool of [`CONTROL_THREADS`] runs the controllers, each on one thread
//!   at a time (a strand): its client's messages, its runtime's reports,
//!   its admin queue, its state for a successor. A controller that waits
//!   (on a runtime's answer, within the link's timeouts) holds one thread.
//!
//! The admin queue's doorbells are written by the guest into shared memory
//! (no exit, no message): the events thread compares them with what the
//! controller last saw, every [`SWEEP_HOT`] while some admin queue was busy
//! in the last [`HOT_FOR`], every [`SWEEP_COLD`] otherwise. That is the
//! bound on the extra latency of an admin command after idleness.

use crate::controller::NvmeController;
use crate::shared::CtrlShared;
use leapio_service::pool::{Finished, Pool, Strand};
use leapio_vmm_shim::vfio_user::{Connection, Device as _, Listener};
use std::collections::{BTreeSet, HashMap};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Threads that run the controllers.
pub const CONTROL_THREADS: usize = 4;
/// How often busy admin queues' doorbells are looked at.
pub const SWEEP_HOT: Duration = Duration::from_millis(1);
/// How often idle admin queues' doorbells are looked at.
pub const SWEEP_COLD: Duration = Duration::from_millis(20);
/// How long an admin queue counts as busy after its doorbell moved.
pub const HOT_FOR: Duration = Duration::from_secs(1);
/// A controller with nothing happening runs this often anyway (everything
/// it does is woken by an event: this is a safety net), and every
/// [`WAITING`] while a runtime waits for the previous one to be fenced.
const PERIODIC: Duration = Duration::from_secs(10);
const WAITING: Duration = Duration::from_millis(20);
/// Messages of one client handled per run (the others' turn comes).
const BUDGET: usize = 64;
/// How long a stopping controller waits for its client's message in
/// progress (it is left between two messages for a successor).
const PARTIAL_MESSAGE_WAIT: Duration = Duration::from_secs(1);
/// Epoll data of the waker.
const WAKER: u64 = u64::MAX;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The events thread and the pool.
pub(crate) struct Serving {
    epoll: Epoll,
    waker: EventFd,
    pool: Pool,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    timers: Mutex<BTreeSet<(Instant, u64)>>,
    next_id: AtomicU64,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The events thread's loops so far: it goes round at least every
    /// [`SWEEP_COLD`] (its epoll wait ends by the next sweep), so a count
    /// that does not move means it is stuck.
    beats: AtomicU64,
}

/// One controller as served.
pub(crate) struct Slot {
    id: u64,
    shared: Arc<CtrlShared>,
    strand: OnceLock<Arc<Strand>>,
    run: Mutex<Run>,
    /// Asked to stop (removed, or handed to a successor).
    stop: AtomicBool,
    finished: Finished,
    /// Its admin queue is enabled: the events thread watches its doorbells.
    watch: AtomicBool,
    /// The admin doorbells (SQ tail, CQ head) as the controller last saw
    /// them.
    seen: AtomicU64,
    /// Until when (ms since the events thread started) its admin queue
    /// counts as busy.
    hot_until: AtomicU64,
    /// Its timer, if one is set.
    timer: Mutex<Option<Instant>>,
}

/// A controller and its sockets, as one run leaves them.
struct Run {
    ctrl: NvmeController,
    listener: Listener,
    /// The client's connection and its process.
    conn: Option<(Connection, Option<i32>)>,
    /// A connection taken over from a previous host-driver, served first.
    handed: Option<UnixStream>,
    stopped_at: Option<Instant>,
    finished: bool,
}

fn doorbells(shared: &CtrlShared) -> u64 {
    (u64::from(shared.doorbells.sq_tail(0)) << 32) | u64::from(shared.doorbells.cq_head(0))
}

impl Serving {
    pub(crate) fn start() -> std::io::Result<Arc<Serving>> {
        let epoll = Epoll::new()?;
        let waker = EventFd::new(libc::EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            waker.as_raw_fd(),
            EpollEvent::new(EventSet::IN, WAKER),
        )?;
        let me = Arc::new(Serving {
            epoll,
            waker,
            pool: Pool::start("hostd-ctl", CONTROL_THREADS)?,
            slots: Mutex::new(HashMap::new()),
            timers: Mutex::new(BTreeSet::new()),
            next_id: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
            beats: AtomicU64::new(0),
        });
        let m = me.clone();
        let t = std::thread::Builder::new()
            .name("hostd-events".into())
            .spawn(move || m.events())?;
        *lock(&me.thread) = Some(t);
        Ok(me)
    }

    /// Serve `ctrl`, its clients coming to `listener` (`conn`: one taken
    /// over from a previous host-driver).
    pub(crate) fn add(
        self: &Arc<Self>,
        ctrl: NvmeController,
        listener: Listener,
        conn: Option<UnixStream>,
    ) -> std::io::Result<Arc<Slot>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = ctrl.shared().clone();
        let slot = Arc::new(Slot {
            id,
            seen: AtomicU64::new(doorbells(&shared)),
            shared,
            strand: OnceLock::new(),
            run: Mutex::new(Run {
                ctrl,
                listener,
                conn: None,
                handed: conn,
                stopped_at: None,
                finished: false,
            }),
            stop: AtomicBool::new(false),
            finished: Finished::default(),
            watch: AtomicBool::new(false),
            hot_until: AtomicU64::new(0),
            timer: Mutex::new(None),
        });
        {
            let run = lock(&slot.run);
            self.epoll.ctl(
                ControlOperation::Add,
                run.listener.fd().as_raw_fd(),
                EpollEvent::new(EventSet::IN | EventSet::ONE_SHOT, id << 1),
            )?;
        }
        let (me, s) = (Arc::downgrade(self), Arc::downgrade(&slot));
        let strand = self.pool.strand(&slot.shared.name, move || {
            if let (Some(me), Some(s)) = (me.upgrade(), s.upgrade()) {
                s.step(&me);
            }
        });
        let _ = slot.strand.set(strand);
        lock(&self.slots).insert(id, slot.clone());
        slot.wake();
        Ok(slot)
    }

    fn set_timer(&self, slot: &Slot, at: Instant) {
        let mut t = lock(&slot.timer);
        let mut timers = lock(&self.timers);
        if let Some(old) = t.take() {
            timers.remove(&(old, slot.id));
        }
        timers.insert((at, slot.id));
        *t = Some(at);
    }

    fn slot(&self, id: u64) -> Option<Arc<Slot>> {
        lock(&self.slots).get(&id).cloned()
    }

    /// The events thread.
    fn events(&self) {
        let start = Instant::now();
        let ms =
            |t: Instant| u64::try_from(t.duration_since(start).as_millis()).unwrap_or(u64::MAX);
        let mut events = vec![EpollEvent::default(); 256];
        let mut next_sweep = Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            // Only this thread writes it.
            self.beats.store(
                self.beats.load(Ordering::Relaxed).wrapping_add(1),
                Ordering::Relaxed,
            );
            let now = Instant::now();
            let next_timer = lock(&self.timers).first().map(|(t, _)| *t);
            let until = next_timer.map_or(next_sweep, |t| t.min(next_sweep));
            let wait = until.saturating_duration_since(now);
            // Round up: a near deadline is not a busy loop.
            let wait_ms = i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
            let n = match self.epoll.wait(wait_ms, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    tracing::error!("host-driver events: epoll failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    0
                }
            };
            for ev in &events[..n] {
                let data = ev.data();
                if data == WAKER {
                    let _ = self.waker.read();
                    continue;
                }
                if let Some(s) = self.slot(data >> 1) {
                    s.wake();
                }
            }
            let now = Instant::now();
            // Timers due.
            let due: Vec<(Instant, u64)> = {
                let mut timers = lock(&self.timers);
                let mut due = Vec::new();
                while let Some(&(t, id)) = timers.first() {
                    if t > now {
                        break;
                    }
                    timers.pop_first();
                    due.push((t, id));
                }
                due
            };
            for (t, id) in due {
                if let Some(s) = self.slot(id) {
                    // Unless a run set a new one meanwhile.
                    let mut timer = lock(&s.timer);
                    if *timer == Some(t) {
                        *timer = None;
                    }
                    drop(timer);
                    s.wake();
                }
            }
            // Admin doorbells.
            if now >= next_sweep {
                let now_ms = ms(now);
                let mut hot = false;
                // Waking only queues a strand: done under the lock.
                for s in lock(&self.slots).values() {
                    if !s.watch.load(Ordering::Acquire) {
                        continue;
                    }
                    if doorbells(&s.shared) != s.seen.load(Ordering::Acquire) {
                        s.hot_until.store(
                            now_ms.saturating_add(u64::try_from(HOT_FOR.as_millis()).unwrap_or(0)),
                            Ordering::Relaxed,
                        );
                        s.wake();
                    }
                    hot |= s.hot_until.load(Ordering::Relaxed) > now_ms;
                }
                next_sweep = now + if hot { SWEEP_HOT } else { SWEEP_COLD };
            }
        }
    }

    /// The events thread's loops so far (see [`Serving::beats`]).
    pub(crate) fn heartbeat(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }

    /// Stop the events thread (the controllers were removed or handed over
    /// before); the pool's threads end when the last owner lets go.
    pub(crate) fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.write(1);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }

    fn arm(&self, fd: RawFd, id: u64, write: bool, op: ControlOperation) {
        let mut set = EventSet::IN | EventSet::ONE_SHOT;
        if write {
            set |= EventSet::OUT;
        }
        if let Err(e) = self.epoll.ctl(op, fd, EpollEvent::new(set, id)) {
            tracing::error!("host-driver events: cannot watch a socket: {e}");
        }
    }

    fn unwatch(&self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }
}

impl Slot {
    /// Have the controller run soon (something may be there for it).
    pub(crate) fn wake(&self) {
        if let Some(s) = self.strand.get() {
            s.wake();
        }
    }

    /// Ask it to stop (see [`Slot::stop_and_wait`]).
    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
    }

    /// Stop serving it: as a removal, or (`releasing` set on its shared
    /// state before) a handover. Returns once it stopped.
    pub(crate) fn stop_and_wait(&self) {
        self.request_stop();
        if let Some(s) = self.strand.get() {
            if !self.finished.wait(s) {
                tracing::error!(ctrl = %self.shared.name, "the controller's work failed: it is dropped");
            }
        }
    }

    /// One run: the client's messages, a new client, the runtime's
    /// reports and the admin queue, then what to wait for next.
    fn step(&self, serving: &Serving) {
        let mut guard = lock(&self.run);
        let run = &mut *guard;
        if run.finished {
            return;
        }
        let stopping = self.stop.load(Ordering::Acquire);
        if let Some(stream) = run.handed.take() {
            let negotiated = run.ctrl.negotiated;
            self.connect(serving, run, stream, negotiated);
        }
        if let Some((conn, _)) = run.conn.as_mut() {
            let r = conn.service(&mut run.ctrl, BUDGET);
            match r {
                Ok(true) => {}
                Ok(false) => self.disconnect(serving, run, None),
                Err(e) => self.disconnect(serving, run, Some(e.to_string())),
            }
        } else if !stopping {
            match run.listener.accept_timeout(Duration::ZERO) {
                Ok(Some(stream)) => {
                    match crate::link::peer_cred(&stream) {
                        Ok(c) => {
                            tracing::info!(ctrl = %self.shared.name, pid = c.pid, uid = c.uid, gid = c.gid, "vfio-user client connected")
                        }
                        Err(e) => {
                            tracing::info!(ctrl = %self.shared.name, "vfio-user client connected (peer unknown: {e})")
                        }
                    }
                    run.ctrl.client_connected(&stream);
                    self.connect(serving, run, stream, false);
                }
                Ok(None) => {}
                Err(e) => tracing::error!(ctrl = %self.shared.name, "accept failed: {e}"),
            }
        }
        // What the doorbells say is seen before the admin queue is polled:
        // a later change wakes it again.
        self.seen.store(doorbells(&self.shared), Ordering::Release);
        run.ctrl.tick();
        self.watch
            .store(run.ctrl.admin.is_some(), Ordering::Release);
        if stopping {
            let since = *run.stopped_at.get_or_insert_with(Instant::now);
            let between = run.conn.as_ref().is_none_or(|(c, _)| c.between_messages());
            if between || since.elapsed() > PARTIAL_MESSAGE_WAIT {
                self.finish(serving, run);
                return;
            }
            // Wait a little for the rest of the message.
            serving.set_timer(self, Instant::now() + Duration::from_millis(10));
        }
        match &run.conn {
            Some((c, _)) => serving.arm(
                c.fd().as_raw_fd(),
                (self.id << 1) | 1,
                c.wants_write(),
                ControlOperation::Modify,
            ),
            None => serving.arm(
                run.listener.fd().as_raw_fd(),
                self.id << 1,
                false,
                ControlOperation::Modify,
            ),
        }
        if !stopping {
            let every = if run.ctrl.waiting_attach.is_some() {
                WAITING
            } else {
                PERIODIC
            };
            let at = Instant::now() + every;
            if lock(&self.timer).is_none_or(|t| t > at) {
                serving.set_timer(self, at);
            }
        }
    }

    fn connect(&self, serving: &Serving, run: &mut Run, stream: UnixStream, negotiated: bool) {
        // The hypervisor maps the doorbell page: not a runtime's helper.
        let client = crate::link::peer_cred(&stream).ok().map(|c| {
            self.shared.trust(c.pid);
            c.pid
        });
        match Connection::new(stream, negotiated) {
            Ok(conn) => {
                serving.arm(
                    conn.fd().as_raw_fd(),
                    (self.id << 1) | 1,
                    false,
                    ControlOperation::Add,
                );
                run.conn = Some((conn, client));
            }
            Err(e) => {
                tracing::warn!(ctrl = %self.shared.name, "vfio-user connection: {e}");
                if let Some(pid) = client {
                    self.shared.untrust(pid);
                }
                run.ctrl.disconnected();
            }
        }
    }

    fn disconnect(&self, serving: &Serving, run: &mut Run, error: Option<String>) {
        let Some((conn, client)) = run.conn.take() else {
            return;
        };
        serving.unwatch(conn.fd().as_raw_fd());
        drop(conn);
        if let Some(pid) = client {
            self.shared.untrust(pid);
        }
        run.ctrl.disconnected();
        match error {
            _ if self.shared.releasing.load(Ordering::Acquire) => {}
            None => tracing::info!(ctrl = %self.shared.name, "vfio-user client disconnected"),
            Some(e) => tracing::warn!(ctrl = %self.shared.name, "vfio-user connection ended: {e}"),
        }
    }

    /// Stop: let the runtime go, or when handing over, only write the
    /// last state.
    fn finish(&self, serving: &Serving, run: &mut Run) {
        run.finished = true;
        self.disconnect(serving, run, None);
        serving.unwatch(run.listener.fd().as_raw_fd());
        if let Some(t) = lock(&self.timer).take() {
            lock(&serving.timers).remove(&(t, self.id));
        }
        lock(&serving.slots).remove(&self.id);
        if self.shared.releasing.load(Ordering::Acquire) {
            run.ctrl.changed();
            run.ctrl.persist();
            tracing::info!(ctrl = %self.shared.name, "handed over");
        } else {
            run.ctrl.release("controller removed");
            run.ctrl.forget_kept();
        }
        self.finished.set();
        if let Some(s) = self.strand.get() {
            s.close();
        }
    }
}
