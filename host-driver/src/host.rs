//! The host-driver: its controllers (one per VM, each with its vfio-user
//! socket, served by a fixed set of threads: [`crate::serving`]) and the
//! runtimes connected to it over links. Controllers are added and removed
//! while it runs.

use crate::controller::{ControllerConfig, NvmeController};
use crate::keep::{Held, Keeper};
use crate::link::{Carrier, Links, Peer, RuntimeLink};
use crate::port::{PortEvent, Timeouts};
use crate::serving::{Serving, Slot};
use crate::shared::CtrlShared;
use leapio_link::proto::{check_version, PROTOCOL_MAJOR, PROTOCOL_MINOR};
use leapio_link::{LinkError, ToHost, ToRuntime};
use leapio_nvme::Status;
use leapio_options::{Opt, OptionError, Options};
use leapio_vmm_shim::vfio_user::{Listener, SocketAccess};
use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a runtime has to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// A controller to serve: `name` is what runtimes attach to, `sock` where
/// the hypervisor connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCtrlSpec {
    pub name: String,
    pub sock: PathBuf,
    /// Where an SoC's hypervisor connects for this controller's link
    /// function (a runtime on the SoC serves it).
    pub soc: Option<PathBuf>,
    pub limits: CtrlLimits,
}

impl HostCtrlSpec {
    /// A controller with the default limits.
    pub fn new(name: &str, sock: &Path) -> HostCtrlSpec {
        HostCtrlSpec {
            name: name.to_string(),
            sock: sock.to_path_buf(),
            soc: None,
            limits: CtrlLimits::default(),
        }
    }
}

/// What the host-driver decides for a controller besides its name and
/// sockets: the limits the guest sees, and who may connect to its sockets.
/// The same keys in every controller spec that reaches a host-driver
/// (`leapio-hostd --ctrl`, the all-in-one `leapio --ctrl`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtrlLimits {
    pub serial: Option<String>,
    pub io_queues: u16,
    pub queue_entries: u32,
    pub mdts: u8,
    /// MSI-X vectors; 0: one per queue.
    pub vectors: u16,
    /// Mode and owner of the vfio-user socket(s).
    pub access: SocketAccess,
}

impl Default for CtrlLimits {
    fn default() -> Self {
        let d = ControllerConfig::default();
        CtrlLimits {
            serial: None,
            io_queues: d.max_io_queues,
            queue_entries: d.max_queue_entries,
            mdts: d.mdts,
            vectors: 0,
            access: SocketAccess::default(),
        }
    }
}

impl CtrlLimits {
    /// The keys [`CtrlLimits::set`] takes.
    pub const KEYS: [&'static str; 7] = [
        "io-queues",
        "queue-entries",
        "mdts",
        "vectors",
        "serial",
        "sock-mode",
        "sock-owner",
    ];

    /// Apply option `o`: Ok(false) if its key is not one of [`Self::KEYS`].
    pub fn set(&mut self, o: &Opt<'_>) -> Result<bool, OptionError> {
        match o.key {
            "io-queues" => self.io_queues = o.number(1..=511)?,
            "queue-entries" => self.queue_entries = o.number(2..=4096)?,
            "mdts" => self.mdts = o.number(1..=10)?,
            "vectors" => self.vectors = o.number(1..=512)?,
            "serial" => {
                leapio_controller::check_serial(o.value).map_err(OptionError::Other)?;
                self.serial = Some(o.value.to_string());
            }
            "sock-mode" => self.access.set_mode(o.value).map_err(OptionError::Other)?,
            "sock-owner" => self.access.set_owner(o.value).map_err(OptionError::Other)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("a controller named {0} exists already")]
    Exists(String),
    #[error("no controller named {0}")]
    NoSuchController(String),
    #[error("controller {name}: bad name (letters, digits, '-', '_', '.'; at most 64)")]
    BadName { name: String },
    #[error("controller {name}")]
    Controller {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("controller {name}: listening on {sock}")]
    Listen {
        name: String,
        sock: String,
        #[source]
        source: leapio_vmm_shim::vfio_user::ServerError,
    },
    #[error("link socket {path}")]
    LinkListen {
        path: String,
        #[source]
        source: leapio_vmm_shim::vfio_user::ServerError,
    },
    #[error("starting a thread")]
    Thread(#[source] std::io::Error),
}

struct CtrlEntry {
    sock: PathBuf,
    shared: Arc<CtrlShared>,
    /// The runtime's reports for it; each send wakes `slot`.
    events: Sender<PortEvent>,
    slot: Arc<Slot>,
    /// Stops the link function's thread.
    stop: Arc<AtomicBool>,
    /// The link function's thread, if an SoC serves the controller.
    soc_thread: Option<JoinHandle<()>>,
}

/// What `status` reports about one controller.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CtrlStatus {
    pub name: String,
    pub sock: String,
    pub namespaces: usize,
    /// The link id of the runtime serving it (0: none).
    pub runtime: u64,
    /// Who that runtime is.
    pub runtime_desc: Option<String>,
}

/// Attach requests that may wait for one controller.
const MAX_QUEUED_ATTACH: usize = 4;

/// The host-driver.
pub struct HostDriver {
    software: String,
    stop: Arc<AtomicBool>,
    ctrls: Mutex<BTreeMap<String, CtrlEntry>>,
    links: Mutex<Vec<Arc<RuntimeLink>>>,
    next_link: AtomicU64,
    next_index: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
    timeouts: Mutex<Timeouts>,
    /// Where descriptors and state are kept for a successor.
    keeper: Mutex<Option<Arc<Keeper>>>,
    /// The link listener a keeper gave back.
    held_link: Mutex<Option<std::os::fd::OwnedFd>>,
    /// The threads serving the controllers (started with the first).
    serving: OnceLock<Arc<Serving>>,
}

impl CtrlEntry {
    /// Give the controller a report from its runtime.
    fn send(&self, ev: PortEvent) -> bool {
        let sent = self.events.send(ev).is_ok();
        self.slot.wake();
        sent
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl HostDriver {
    /// A host-driver with no controllers; `software` names it to runtimes
    /// ("leapio-hostd 0.1.0").
    pub fn new(software: &str) -> Arc<HostDriver> {
        Arc::new(HostDriver {
            software: software.to_string(),
            stop: Arc::new(AtomicBool::new(false)),
            ctrls: Mutex::new(BTreeMap::new()),
            links: Mutex::new(Vec::new()),
            next_link: AtomicU64::new(1),
            next_index: AtomicUsize::new(0),
            threads: Mutex::new(Vec::new()),
            timeouts: Mutex::new(Timeouts::default()),
            keeper: Mutex::new(None),
            held_link: Mutex::new(None),
            serving: OnceLock::new(),
        })
    }

    fn serving(&self) -> Result<Arc<Serving>, HostError> {
        if let Some(s) = self.serving.get() {
            return Ok(s.clone());
        }
        let s = Serving::start().map_err(HostError::Thread)?;
        match self.serving.set(s.clone()) {
            Ok(()) => Ok(s),
            Err(_) => {
                // Another caller started one first: this one stops.
                s.shutdown();
                Ok(self.serving.get().cloned().unwrap_or(s))
            }
        }
    }

    /// Keep descriptors and device state in `keeper` from now on (a
    /// host-driver that replaces this one, after an upgrade or a crash,
    /// takes them back), and rebuild what it `held`: controllers, with
    /// their clients still connected, and the link listener. Returns the
    /// names of the controllers rebuilt.
    pub fn keep_in(
        self: &Arc<Self>,
        keeper: Arc<Keeper>,
        mut held: Held,
    ) -> Result<Vec<String>, HostError> {
        *lock(&self.keeper) = Some(keeper.clone());
        *lock(&self.held_link) = held.take_one("link");
        let names: Vec<String> = held
            .names("ctrl/")
            .iter()
            .filter_map(|n| n.strip_prefix("ctrl/")?.strip_suffix("/state"))
            .map(str::to_string)
            .collect();
        let mut restored = Vec::new();
        for name in names {
            match self.restore_controller(&keeper, &name, &mut held) {
                Ok(()) => restored.push(name),
                Err(why) => {
                    // What cannot be rebuilt is let go (its guest loses the
                    // device, as with a host-driver that was not kept).
                    tracing::error!(ctrl = %name, "cannot take the controller back: {why}");
                    let _ = keeper.remove(&crate::kept::prefix(&name));
                }
            }
        }
        Ok(restored)
    }

    fn restore_controller(
        self: &Arc<Self>,
        keeper: &Arc<Keeper>,
        name: &str,
        held: &mut Held,
    ) -> Result<(), String> {
        if lock(&self.ctrls).contains_key(name) {
            return Err("a controller of that name exists already".into());
        }
        let (tx, rx) = channel();
        let (ctrl, conn, sock) =
            NvmeController::restore(name, keeper.clone(), held, rx, *lock(&self.timeouts))?;
        ctrl.shared().trust(keeper.pid());
        let lfd = held
            .take_one(&format!("{}listener", crate::kept::prefix(name)))
            .ok_or("the keeper has no listener")?;
        let listener = Listener::adopt(lfd, &sock).map_err(|e| e.to_string())?;
        tracing::info!(ctrl = %name, sock = %sock.display(), client = conn.is_some(), "controller taken over from the previous host-driver");
        self.start_controller(name, &sock, ctrl, tx, listener, None, conn)
            .map_err(|e| e.to_string())
    }

    /// How long controllers added from now on wait for their runtime.
    pub fn set_timeouts(&self, t: Timeouts) {
        *lock(&self.timeouts) = t;
    }

    /// Serve a new controller: bind its vfio-user socket and hand it to the
    /// serving threads. It has no namespaces until a runtime attaches.
    pub fn add_controller(self: &Arc<Self>, spec: &HostCtrlSpec) -> Result<(), HostError> {
        if leapio_link::proto::check_ctrl_name(&spec.name).is_err() {
            return Err(HostError::BadName {
                name: spec.name.clone(),
            });
        }
        if lock(&self.ctrls).contains_key(&spec.name) {
            return Err(HostError::Exists(spec.name.clone()));
        }
        let index = self.next_index.fetch_add(1, Ordering::Relaxed);
        let serial = spec
            .limits
            .serial
            .clone()
            .unwrap_or_else(|| format!("LEAPIO{index:04}"));
        let cfg = ControllerConfig {
            subnqn: format!("nqn.2026-11.io.leapio:{serial}"),
            serial,
            cntlid: 1,
            max_io_queues: spec.limits.io_queues,
            max_queue_entries: spec.limits.queue_entries,
            mdts: spec.limits.mdts,
            msix_vectors: spec.limits.vectors,
            ..ControllerConfig::default()
        };
        let (tx, rx) = channel();
        let name = spec.name.clone();
        let mut ctrl =
            NvmeController::new(&name, cfg, rx, *lock(&self.timeouts)).map_err(|source| {
                HostError::Controller {
                    name: name.clone(),
                    source,
                }
            })?;
        let listener = Listener::bind_with(&spec.sock, &spec.limits.access).map_err(|source| {
            HostError::Listen {
                name: name.clone(),
                sock: spec.sock.display().to_string(),
                source,
            }
        })?;
        let soc_listener = match &spec.soc {
            Some(path) => Some(Listener::bind_with(path, &spec.limits.access).map_err(
                |source| HostError::Listen {
                    name: name.clone(),
                    sock: path.display().to_string(),
                    source,
                },
            )?),
            None => None,
        };
        if let Some(keeper) = lock(&self.keeper).clone() {
            ctrl.shared().trust(keeper.pid());
            let kept = if spec.soc.is_some() {
                Err(std::io::Error::other(
                    "a controller with an SoC link function cannot be kept for a successor yet",
                ))
            } else {
                keeper
                    .put(
                        &format!("{}listener", crate::kept::prefix(&name)),
                        &[listener.fd()],
                    )
                    .map_err(std::io::Error::other)
                    .and_then(|()| ctrl.keep(keeper.clone(), &spec.sock))
            };
            if let Err(source) = kept {
                let _ = keeper.remove(&crate::kept::prefix(&name));
                return Err(HostError::Controller { name, source });
            }
        }
        tracing::info!(ctrl = %spec.name, sock = %spec.sock.display(), serial = ctrl.serial(), "controller added: waiting for a runtime and a vfio-user client");
        self.start_controller(&name, &spec.sock, ctrl, tx, listener, soc_listener, None)
    }

    /// Serve a controller (and start its link function's thread) and list
    /// it.
    #[allow(clippy::too_many_arguments)]
    fn start_controller(
        self: &Arc<Self>,
        name: &str,
        sock: &Path,
        ctrl: NvmeController,
        events: Sender<PortEvent>,
        listener: Listener,
        soc_listener: Option<Listener>,
        conn: Option<UnixStream>,
    ) -> Result<(), HostError> {
        let shared = ctrl.shared().clone();
        let stop = Arc::new(AtomicBool::new(false));
        let serving = self.serving()?;
        let soc_thread = match soc_listener {
            Some(l) => {
                let me: Arc<dyn Links> = self.clone();
                let (sh, st) = (shared.clone(), stop.clone());
                Some(
                    std::thread::Builder::new()
                        .name(format!("hostd-{name}-soc"))
                        .spawn(move || crate::soc::serve_function(me, sh, l, &st))
                        .map_err(HostError::Thread)?,
                )
            }
            None => None,
        };
        let slot = match serving.add(ctrl, listener, conn) {
            Ok(s) => s,
            Err(e) => {
                stop.store(true, Ordering::Release);
                if let Some(t) = soc_thread {
                    let _ = t.join();
                }
                return Err(HostError::Thread(e));
            }
        };
        lock(&self.ctrls).insert(
            name.to_string(),
            CtrlEntry {
                sock: sock.to_path_buf(),
                shared,
                events,
                slot,
                stop,
                soc_thread,
            },
        );
        Ok(())
    }

    /// Stop serving a controller: its client is disconnected (the guest
    /// loses the device), its runtime is asked to let go.
    pub fn remove_controller(&self, name: &str) -> Result<(), HostError> {
        // The entry stays in the table while it stops: the runtime's
        // answer to "let go" comes through it.
        let (slot, soc_thread) = {
            let mut ctrls = lock(&self.ctrls);
            let e = ctrls
                .get_mut(name)
                .ok_or_else(|| HostError::NoSuchController(name.to_string()))?;
            e.stop.store(true, Ordering::Release);
            (e.slot.clone(), e.soc_thread.take())
        };
        if let Some(t) = soc_thread {
            let _ = t.join();
        }
        slot.stop_and_wait();
        lock(&self.ctrls).remove(name);
        tracing::info!(ctrl = name, "controller removed");
        Ok(())
    }

    /// The controllers, by name.
    /// The metrics of every controller (label `ctrl`) and of the links.
    pub fn expose(&self, e: &mut leapio_service::metrics::Exposition) {
        let links = lock(&self.links).len();
        let ctrls: Vec<(String, Arc<CtrlShared>)> = lock(&self.ctrls)
            .iter()
            .map(|(n, c)| (n.clone(), c.shared.clone()))
            .collect();
        e.gauge(
            "leapio_host_runtimes_connected",
            "Runtimes connected to the host-driver's link socket.",
            &[],
            links as f64,
        );
        for (name, s) in &ctrls {
            let l = [("ctrl", name.as_str())];
            let flag = |b: bool| f64::from(u8::from(b));
            e.gauge(
                "leapio_host_client_connected",
                "Whether the hypervisor's vfio-user client is connected (1) or not (0).",
                &l,
                flag(s.client.load(Ordering::Relaxed)),
            );
            e.gauge("leapio_host_runtime_attached", "Whether a runtime serves the controller's I/O queues (1) or the guest's I/O waits for one (0).", &l, flag(s.runtime.load(Ordering::Acquire) != 0));
            e.counter(
                "leapio_host_runtime_attaches_total",
                "Runtimes that attached to the controller (a restart or a handover adds one).",
                &l,
                s.attaches.load(Ordering::Relaxed) as f64,
            );
            e.counter(
                "leapio_host_runtime_losses_total",
                "Runtimes lost while attached (died, or their link dropped).",
                &l,
                s.runtime_losses.load(Ordering::Relaxed) as f64,
            );
            e.gauge(
                "leapio_host_namespaces",
                "Namespaces the controller shows the guest.",
                &l,
                s.namespaces().len() as f64,
            );
            let queues = u16::try_from(s.qstate.queues()).unwrap_or(u16::MAX);
            let io = s.io_counts(1..=queues);
            e.counter("leapio_host_read_commands_total", "Reads completed to the guest (from the queue-state area: kept across runtime restarts).", &l, io.read_commands as f64);
            e.counter(
                "leapio_host_write_commands_total",
                "Writes completed to the guest.",
                &l,
                io.write_commands as f64,
            );
            e.counter(
                "leapio_host_read_bytes_total",
                "Bytes the guest read.",
                &l,
                io.read_sectors.saturating_mul(512) as f64,
            );
            e.counter(
                "leapio_host_written_bytes_total",
                "Bytes the guest wrote.",
                &l,
                io.write_sectors.saturating_mul(512) as f64,
            );
            e.counter(
                "leapio_host_media_errors_total",
                "Commands completed with a media error.",
                &l,
                io.media_errors as f64,
            );
        }
    }

    pub fn status(&self) -> Vec<CtrlStatus> {
        let links = lock(&self.links).clone();
        lock(&self.ctrls)
            .iter()
            .map(|(name, e)| {
                let runtime = e.shared.runtime.load(Ordering::Acquire);
                CtrlStatus {
                    name: name.clone(),
                    sock: e.sock.display().to_string(),
                    namespaces: e.shared.namespaces().len(),
                    runtime,
                    runtime_desc: links.iter().find(|l| l.id == runtime).map(|l| l.describe()),
                }
            })
            .collect()
    }

    /// Accept runtimes on the Unix socket `path` (mode 0600).
    pub fn listen(self: &Arc<Self>, path: &Path) -> Result<(), HostError> {
        let link_err = |source| HostError::LinkListen {
            path: path.display().to_string(),
            source,
        };
        let listener = match lock(&self.held_link).take() {
            Some(fd) => Listener::adopt(fd, path).map_err(link_err)?,
            None => {
                let l = Listener::bind(path).map_err(link_err)?;
                if let Some(k) = lock(&self.keeper).as_ref() {
                    if let Err(e) = k.put("link", &[l.fd()]) {
                        tracing::error!("keeping the link socket: {e}");
                    }
                }
                l
            }
        };
        let me = self.clone();
        let t = std::thread::Builder::new()
            .name("hostd-link".into())
            .spawn(move || {
                while !me.stop.load(Ordering::Acquire) {
                    match listener.accept_timeout(Duration::from_millis(100)) {
                        Ok(Some(sock)) => match Peer::of(&sock) {
                            Ok(peer) => me.start_link(sock, peer),
                            Err(e) => tracing::warn!("runtime connection without credentials: {e}"),
                        },
                        Ok(None) => {}
                        Err(e) => {
                            tracing::error!("accepting runtimes: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })
            .map_err(HostError::Thread)?;
        lock(&self.threads).push(t);
        tracing::info!(path = %path.display(), "accepting runtimes");
        Ok(())
    }

    /// The in-process carrier: a socket pair whose other end this
    /// host-driver serves; the returned end is the runtime's.
    pub fn connect_in_process(self: &Arc<Self>) -> std::io::Result<UnixStream> {
        let (ours, theirs) = UnixStream::pair()?;
        self.start_link(ours, Peer::InProcess);
        Ok(theirs)
    }

    fn start_link(self: &Arc<Self>, sock: UnixStream, peer: Peer) {
        // The reader's Hello deadline: socket options are shared with the
        // link's clone of the socket.
        if let Err(e) = sock.set_read_timeout(Some(HELLO_TIMEOUT)) {
            tracing::error!("runtime link: {e}");
            return;
        }
        self.start_carrier(Carrier::Socket(sock), peer);
    }

    /// Serve a link on `carrier`; returns its id.
    pub(crate) fn start_carrier(self: &Arc<Self>, carrier: Carrier, peer: Peer) -> Option<u64> {
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let link = match RuntimeLink::new(id, peer, carrier) {
            Ok(l) => Arc::new(l),
            Err(e) => {
                tracing::error!("runtime link: {e}");
                return None;
            }
        };
        lock(&self.links).push(link.clone());
        let me = self.clone();
        let t = std::thread::Builder::new()
            .name(format!("hostd-link-{id}"))
            .spawn(move || me.serve_link(link));
        match t {
            Ok(t) => {
                let mut threads = lock(&self.threads);
                // Links that ended (superseded sessions, closed runtimes)
                // leave nothing behind.
                threads.retain(|t| !t.is_finished());
                threads.push(t);
            }
            Err(e) => tracing::error!("runtime link: starting its thread: {e}"),
        }
        Some(id)
    }

    /// Read one runtime's messages until its link ends.
    fn serve_link(&self, link: Arc<RuntimeLink>) {
        let end = self.read_link(&link);
        match &end {
            Err(LinkError::Protocol(why)) => link.kill(&format!("protocol violation: {why}")),
            Err(LinkError::Closed) => link.close("closed by the runtime"),
            Err(e) => link.close(&e.to_string()),
            Ok(()) => link.close("host-driver stopping"),
        }
        for e in lock(&self.ctrls).values() {
            e.send(PortEvent::Lost { link: link.id });
        }
        lock(&self.links).retain(|l| l.id != link.id);
    }

    fn read_link(&self, link: &Arc<RuntimeLink>) -> Result<(), LinkError> {
        let hello = link.recv().map_err(|e| match e {
            LinkError::Timeout(_) => LinkError::Protocol("no Hello in time".into()),
            e => e,
        })?;
        let ToHost::Hello {
            major,
            minor,
            software,
        } = hello
        else {
            return Err(LinkError::Protocol(
                "the first message must be Hello".into(),
            ));
        };
        link.set_software(&software);
        if let Err(reason) = check_version(major, minor, &software, &self.software) {
            tracing::error!(runtime = %link.describe(), "runtime refused: {reason}");
            let _ = link.send(&ToRuntime::Refused { reason }, &[]);
            return Ok(());
        }
        link.send(
            &ToRuntime::Welcome {
                major: PROTOCOL_MAJOR,
                minor: PROTOCOL_MINOR,
                software: self.software.clone(),
            },
            &[],
        )?;
        tracing::info!(link = link.id, runtime = %link.describe(), "runtime connected");
        link.no_read_timeout().map_err(LinkError::Io)?;
        loop {
            if self.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            let msg = link.recv()?;
            self.dispatch(link, msg)?;
        }
    }

    fn dispatch(&self, link: &Arc<RuntimeLink>, msg: ToHost) -> Result<(), LinkError> {
        let id = link.id;
        let ctrls = lock(&self.ctrls);
        // Reports count only from the runtime that serves the controller.
        let serving = |ctrl: &str| {
            ctrls
                .get(ctrl)
                .filter(|e| e.shared.runtime.load(Ordering::Acquire) == id)
                .map(|e| &e.shared)
        };
        // Only the runtime serving a controller changes it (the others'
        // messages about it are dropped here, before they cost its thread).
        let forward = |ctrl: &str, ev: PortEvent| {
            if let Some(e) = ctrls.get(ctrl) {
                if e.shared.runtime.load(Ordering::Acquire) == id {
                    e.send(ev);
                } else {
                    tracing::debug!(
                        ctrl,
                        link = id,
                        "a report from a runtime that does not serve it: dropped"
                    );
                }
            }
        };
        // A link function belongs to one controller: its runtime names no
        // other.
        if let (Peer::Soc { function }, Some(ctrl)) = (&link.peer, msg.ctrl()) {
            if ctrl != function {
                return Err(LinkError::Protocol(format!(
                    "the link function of {function} names controller {}",
                    leapio_link::proto::software_shown(ctrl)
                )));
            }
        }
        match msg {
            ToHost::Hello { .. } => return Err(LinkError::Protocol("a second Hello".into())),
            ToHost::Attach {
                ctrl,
                namespaces,
                handover,
            } => {
                let refused = match ctrls.get(&ctrl) {
                    // Any runtime may ask: what waits for the controller's
                    // thread is bounded.
                    Some(e)
                        if e.shared.attach_queued.fetch_add(1, Ordering::AcqRel)
                            >= MAX_QUEUED_ATTACH =>
                    {
                        e.shared.attach_queued.fetch_sub(1, Ordering::AcqRel);
                        Some(format!(
                            "{MAX_QUEUED_ATTACH} attach requests already wait for controller {ctrl}"
                        ))
                    }
                    Some(e) => {
                        let sent = e.send(PortEvent::Attach {
                            link: link.clone(),
                            namespaces,
                            handover,
                        });
                        if !sent {
                            e.shared.attach_queued.fetch_sub(1, Ordering::AcqRel);
                            Some(format!("controller {ctrl} is being removed"))
                        } else {
                            None
                        }
                    }
                    None => Some(format!(
                        "no controller named {} on this host-driver",
                        leapio_link::proto::software_shown(&ctrl)
                    )),
                };
                if let Some(reason) = refused {
                    drop(ctrls);
                    tracing::warn!(runtime = %link.describe(), "attach refused: {reason}");
                    link.send(&ToRuntime::AttachRefused { ctrl, reason }, &[])?;
                }
            }
            ToHost::Detach { ctrl } => forward(&ctrl, PortEvent::Detached { link: id }),
            ToHost::NsAdd { ctrl, ns } => forward(&ctrl, PortEvent::NsAdd { link: id, ns }),
            ToHost::NsRemove { ctrl, nsid } => {
                forward(&ctrl, PortEvent::NsRemove { link: id, nsid })
            }
            ToHost::Ack { req, status } => {
                if !link.acked(req, status) {
                    tracing::debug!(link = id, req, "acknowledgement nobody waits for (late)");
                }
            }
            ToHost::Event { ctrl, dw0 } => {
                if let Some(s) = serving(&ctrl) {
                    s.post_event(dw0);
                }
                if let Some(e) = ctrls.get(&ctrl) {
                    e.slot.wake();
                }
            }
            ToHost::Error {
                ctrl,
                sqid,
                cid,
                status,
                nsid,
                lba,
            } => {
                if let Some(s) = serving(&ctrl) {
                    s.log_error(sqid, cid, Status::from_field(status), nsid, lba);
                }
            }
            ToHost::Fatal { ctrl, reason } => {
                if let Some(s) = serving(&ctrl) {
                    tracing::error!(ctrl, runtime = %link.describe(), "controller fatal status: {reason}");
                    s.fatal.store(true, Ordering::Release);
                }
                if let Some(e) = ctrls.get(&ctrl) {
                    e.slot.wake();
                }
            }
        }
        Ok(())
    }

    /// The loops of the thread that watches every controller's sockets,
    /// timers and admin doorbells (it goes round at least every 20 ms); None
    /// before the first controller started it. For a watchdog: a count
    /// that does not move means the host-driver is stuck.
    pub fn heartbeat(&self) -> Option<u64> {
        self.serving.get().map(|s| s.heartbeat())
    }

    /// Stop: remove every controller (runtimes are asked to let go), close
    /// the links.
    pub fn shutdown(&self) {
        let names: Vec<String> = lock(&self.ctrls).keys().cloned().collect();
        for name in names {
            let _ = self.remove_controller(&name);
        }
        self.stop.store(true, Ordering::Release);
        for l in lock(&self.links).iter() {
            l.close("host-driver stopping");
        }
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            let _ = t.join();
        }
        if let Some(k) = lock(&self.keeper).take() {
            k.quit();
        }
        if let Some(s) = self.serving.get() {
            s.shutdown();
        }
    }

    /// Hand everything to the host-driver that replaces this one: each
    /// controller stops between two messages of its client and writes its
    /// last state; nothing is reset and no runtime is asked to let go
    /// (their links end with this process, and they come back to the
    /// successor). The caller exits without tearing anything down.
    pub fn release(&self) {
        self.stop.store(true, Ordering::Release);
        let slots: Vec<Arc<Slot>> = lock(&self.ctrls)
            .values()
            .map(|e| {
                e.shared.releasing.store(true, Ordering::Release);
                e.stop.store(true, Ordering::Release);
                e.slot.clone()
            })
            .collect();
        // All at once: each waits at most for its client's message in
        // progress.
        for s in &slots {
            s.request_stop();
        }
        for s in slots {
            s.stop_and_wait();
        }
        tracing::info!("every controller handed over");
    }
}

impl Links for HostDriver {
    fn admit(self: Arc<Self>, carrier: Carrier, peer: Peer) -> Option<u64> {
        HostDriver::start_carrier(&self, carrier, peer)
    }
}

impl HostCtrlSpec {
    /// The keys [`HostCtrlSpec::set`] takes besides [`CtrlLimits::KEYS`].
    pub const KEYS: [&'static str; 3] = ["name", "sock", "soc"];

    /// Apply option `o`: Ok(false) if its key is none of [`Self::KEYS`]
    /// and [`CtrlLimits::KEYS`].
    pub fn set(&mut self, o: &Opt<'_>) -> Result<bool, OptionError> {
        match o.key {
            "name" => self.name = o.value.to_string(),
            "sock" => self.sock = PathBuf::from(o.value),
            "soc" => self.soc = Some(PathBuf::from(o.value)),
            _ => return self.limits.set(o),
        }
        Ok(true)
    }

    /// After the options: sock= is required, the name defaults to the
    /// socket file's stem.
    pub fn finish(&mut self) -> Result<(), String> {
        if self.sock.as_os_str().is_empty() {
            return Err("missing sock=PATH".into());
        }
        if self.name.is_empty() {
            self.name = self
                .sock
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .ok_or("missing name=NAME")?;
        }
        leapio_link::proto::check_ctrl_name(&self.name)
    }
}

impl std::str::FromStr for HostCtrlSpec {
    type Err = String;

    /// `name=NAME,sock=PATH[,soc=PATH]` and the keys of [`CtrlLimits`]
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| format!("controller spec '{s}': {why}");
        let opts = Options::parse(s, ',').map_err(|e| bad(e.to_string()))?;
        let known: Vec<&str> = HostCtrlSpec::KEYS
            .iter()
            .chain(&CtrlLimits::KEYS)
            .copied()
            .collect();
        opts.check_once(&known).map_err(|e| bad(e.to_string()))?;
        let mut spec = HostCtrlSpec::new("", Path::new(""));
        for o in opts.iter() {
            spec.set(o).map_err(|e| bad(e.to_string()))?;
        }
        spec.finish().map_err(bad)?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leapio_link::frame;

    /// A host-driver serving controllers `names` (sockets in a fresh
    /// directory, removed by the caller).
    fn driver(names: &[&str]) -> (Arc<HostDriver>, PathBuf) {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "leapio-hostd-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let h = HostDriver::new("leapio-hostd test");
        for n in names {
            h.add_controller(&HostCtrlSpec::new(n, &dir.join(format!("{n}.sock"))))
                .unwrap();
        }
        (h, dir)
    }

    /// A runtime's end of a link of `peer`, welcomed.
    fn runtime(h: &Arc<HostDriver>, peer: Peer) -> UnixStream {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(HELLO_TIMEOUT)).unwrap();
        h.start_carrier(Carrier::Socket(ours), peer).unwrap();
        theirs
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let hello = ToHost::Hello {
            major: PROTOCOL_MAJOR,
            minor: PROTOCOL_MINOR,
            software: "test runtime".into(),
        };
        frame::send(&theirs, &hello, &[]).unwrap();
        assert!(matches!(
            frame::recv::<ToRuntime>(&theirs).unwrap().0,
            ToRuntime::Welcome { .. }
        ));
        theirs
    }

    fn attach(ctrl: &str) -> ToHost {
        ToHost::Attach {
            ctrl: ctrl.into(),
            namespaces: Vec::new(),
            handover: true,
        }
    }

    #[test]
    fn a_link_function_speaks_for_its_controller_only() {
        let (h, dir) = driver(&["vm0", "vm1"]);
        let soc = runtime(
            &h,
            Peer::Soc {
                function: "vm0".into(),
            },
        );
        frame::send(&soc, &attach("vm1"), &[]).unwrap();
        // The link is cut; vm1 never heard of it.
        assert!(matches!(
            frame::recv::<ToRuntime>(&soc),
            Err(LinkError::Closed | LinkError::Io(_))
        ));
        let vm1 = lock(&h.ctrls)["vm1"].shared.clone();
        assert_eq!(vm1.attach_queued.load(Ordering::Acquire), 0);
        assert_eq!(vm1.runtime.load(Ordering::Acquire), 0);
        // A runtime of this host asking for a controller that does not
        // exist learns nothing of the others.
        let local = runtime(&h, Peer::InProcess);
        frame::send(&local, &attach("vm9"), &[]).unwrap();
        match frame::recv::<ToRuntime>(&local).unwrap().0 {
            ToRuntime::AttachRefused { reason, .. } => {
                assert!(
                    !reason.contains("vm0") && !reason.contains("vm1"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        h.shutdown();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn attach_requests_waiting_for_a_controller_are_bounded() {
        let (h, dir) = driver(&["vm0"]);
        // The controller's thread takes no more requests: they go to a
        // channel nobody reads.
        let (tx, _untaken) = channel();
        lock(&h.ctrls).get_mut("vm0").unwrap().events = tx;
        let local = runtime(&h, Peer::InProcess);
        for _ in 0..10 {
            frame::send(&local, &attach("vm0"), &[]).unwrap();
        }
        for _ in 0..6 {
            match frame::recv::<ToRuntime>(&local).unwrap().0 {
                ToRuntime::AttachRefused { reason, .. } => {
                    assert!(reason.contains("already wait"), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
        let vm0 = lock(&h.ctrls)["vm0"].shared.clone();
        assert_eq!(vm0.attach_queued.load(Ordering::Acquire), MAX_QUEUED_ATTACH);
        h.shutdown();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn links_that_ended_leave_no_thread_behind() {
        let (h, dir) = driver(&[]);
        for _ in 0..50 {
            drop(runtime(&h, Peer::InProcess));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lock(&h.links).len() > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(runtime(&h, Peer::InProcess));
        assert!(
            lock(&h.threads).len() < 10,
            "{} threads kept",
            lock(&h.threads).len()
        );
        assert!(
            lock(&h.links).len() <= 2,
            "{} links kept",
            lock(&h.links).len()
        );
        h.shutdown();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_answer_to_a_runtime_that_does_not_read_is_brief() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let link = RuntimeLink::new(1, Peer::InProcess, Carrier::Socket(ours)).unwrap();
        let refusal = ToRuntime::AttachRefused {
            ctrl: "vm0".into(),
            reason: "x".repeat(4000),
        };
        // The runtime never reads: its socket fills, then one answer times
        // out in a moment (not the link's 5 s) and the link is closed.
        let mut slowest = Duration::ZERO;
        let mut sent = 0;
        loop {
            let t = std::time::Instant::now();
            let r = link.send_brief(&refusal);
            slowest = slowest.max(t.elapsed());
            if r.is_err() {
                break;
            }
            sent += 1;
            assert!(sent < 100_000, "the socket never filled");
        }
        assert!(
            slowest < Duration::from_secs(1),
            "an answer took {slowest:?}"
        );
        assert!(link.is_closed());
        drop(theirs);
    }

    #[test]
    fn controller_specs() {
        let s: HostCtrlSpec = "name=vm0,sock=/run/x.sock,io-queues=4,mdts=6,serial=AB"
            .parse()
            .unwrap();
        assert_eq!(
            (
                s.name.as_str(),
                s.limits.io_queues,
                s.limits.mdts,
                s.limits.serial.as_deref()
            ),
            ("vm0", 4, 6, Some("AB"))
        );
        assert_eq!(
            s.limits.access.mode, 0o600,
            "only the server's user by default"
        );
        let s: HostCtrlSpec = "sock=/x,sock-mode=0660,sock-owner=107:108".parse().unwrap();
        assert_eq!(
            (
                s.limits.access.mode,
                s.limits.access.uid,
                s.limits.access.gid
            ),
            (0o660, Some(107), Some(108))
        );
        let s: HostCtrlSpec = "sock=/run/leapio/vm7.sock".parse().unwrap();
        assert_eq!(s.name, "vm7");
        for (bad, why) in [
            ("name=a", "missing sock"),
            (
                "sock=/x,io-queues=0",
                "io-queues must be a number from 1 to 511",
            ),
            ("sock=/x,color=red", "unknown key 'color'"),
            ("sock=/x,sock-mode=999", "sock-mode must be an octal mode"),
            ("sock=/x,sock-owner=qemu", "sock-owner must be UID"),
            ("name=a b,sock=/x", "name must be"),
        ] {
            let e = bad.parse::<HostCtrlSpec>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn fewer_vectors_than_queues_are_offered_and_more_are_refused() {
        let (h, dir) = driver(&[]);
        let spec: HostCtrlSpec =
            format!("name=a,sock={}/a.sock,io-queues=4,vectors=2", dir.display())
                .parse()
                .unwrap();
        assert_eq!(spec.limits.vectors, 2);
        h.add_controller(&spec).unwrap();
        assert_eq!(lock(&h.ctrls)["a"].shared.irqs.count(), 2);
        let spec: HostCtrlSpec =
            format!("name=b,sock={}/b.sock,io-queues=4,vectors=6", dir.display())
                .parse()
                .unwrap();
        let e = h.add_controller(&spec).unwrap_err();
        assert!(
            leapio_service::error_chain(&e).contains("msix vectors must be 1..=5"),
            "{}",
            leapio_service::error_chain(&e)
        );
        h.shutdown();
        let _ = std::fs::remove_dir_all(dir);
    }
}
