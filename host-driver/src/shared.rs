//! A controller's state that more than one host-driver thread touches: the
//! control thread (vfio-user and the admin queue) and the link readers
//! (events, failed commands and fatal errors reported by the runtime).

use arc_swap::ArcSwap;
use leapio_ats::Domain;
use leapio_controller::NamespaceInfo;
use leapio_link::doorbells::Doorbells;
use leapio_link::irq::Interrupts;
use leapio_link::qstate::{IoCounts, QueueState};
use leapio_nvme::log::ErrorLogEntry;
use leapio_nvme::Status;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Entries kept in the error information log (ELPE + 1).
pub const ERROR_LOG_ENTRIES: usize = 64;
/// Asynchronous events queued at most (older ones are kept, newer dropped).
const MAX_EVENTS: usize = 64;

/// Everything about a controller that is not the control thread's alone.
pub struct CtrlShared {
    pub name: String,
    /// Guest memory as the host-driver sees it (for the admin queue).
    pub domain: Domain,
    pub doorbells: Doorbells,
    pub qstate: Arc<QueueState>,
    pub irqs: Interrupts,
    namespaces: ArcSwap<Vec<NamespaceInfo>>,
    /// Host memory page size (CC.MPS), set at enable.
    pub page_size: AtomicU64,
    /// Maximum data transfer size in bytes.
    pub mdts_bytes: u64,
    /// Controller Fatal Status (set by the runtime or the admin queue).
    pub fatal: AtomicBool,
    /// The link id of the runtime serving the controller (0: none). Link
    /// readers only take reports from that runtime.
    pub runtime: AtomicU64,
    /// Runtimes attached so far, and lost (died or their link dropped)
    /// while attached; and whether a vfio-user client is connected. For
    /// the metrics.
    pub attaches: AtomicU64,
    pub runtime_losses: AtomicU64,
    pub client: AtomicBool,
    /// The controller is being handed to another host-driver: when its
    /// client connection stops being served here, nothing is reset.
    pub releasing: AtomicBool,
    /// Attach requests given to the controller's thread and not yet taken
    /// (bounded: any link may ask).
    pub attach_queued: std::sync::atomic::AtomicUsize,
    /// Processes that may hold the doorbell page and queue-state area
    /// besides this one and runtimes: the hypervisors served (their pids,
    /// once per connection), the fd keeper.
    trusted: Mutex<Vec<i32>>,
    /// I/O counts of completion queues that were deleted.
    retired: Mutex<IoCounts>,
    events: Mutex<VecDeque<u32>>,
    errors: Mutex<ErrorLog>,
    changed_ns: Mutex<Vec<u32>>,
}

#[derive(Default)]
struct ErrorLog {
    count: u64,
    entries: VecDeque<ErrorLogEntry>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl CtrlShared {
    pub fn new(
        name: String,
        doorbells: Doorbells,
        qstate: Arc<QueueState>,
        vectors: u16,
        mdts_bytes: u64,
    ) -> CtrlShared {
        CtrlShared {
            name,
            domain: Domain::new(),
            doorbells,
            irqs: Interrupts::new(vectors, qstate.clone()),
            qstate,
            namespaces: ArcSwap::from_pointee(Vec::new()),
            page_size: AtomicU64::new(4096),
            mdts_bytes,
            fatal: AtomicBool::new(false),
            runtime: AtomicU64::new(0),
            attaches: AtomicU64::new(0),
            runtime_losses: AtomicU64::new(0),
            client: AtomicBool::new(false),
            releasing: AtomicBool::new(false),
            attach_queued: std::sync::atomic::AtomicUsize::new(0),
            trusted: Mutex::new(Vec::new()),
            retired: Mutex::new(IoCounts::default()),
            events: Mutex::new(VecDeque::new()),
            errors: Mutex::new(ErrorLog::default()),
            changed_ns: Mutex::new(Vec::new()),
        }
    }

    /// The namespaces, in NSID order (NSIDs 1..=n).
    pub fn namespaces(&self) -> Arc<Vec<NamespaceInfo>> {
        self.namespaces.load_full()
    }

    pub fn namespace(&self, nsid: u32) -> Option<NamespaceInfo> {
        let i = usize::try_from(nsid.checked_sub(1)?).ok()?;
        self.namespaces.load().get(i).cloned()
    }

    /// Replace the namespaces; `changed` lists the NSIDs whose presence or
    /// attributes changed (for the Changed Namespace List log).
    pub fn set_namespaces(&self, ns: Vec<NamespaceInfo>, changed: &[u32]) {
        self.namespaces.store(Arc::new(ns));
        let mut c = lock(&self.changed_ns);
        for &n in changed {
            if !c.contains(&n) {
                c.push(n);
            }
        }
        c.sort_unstable();
    }

    /// The Changed Namespace List (log page 04h), cleared by reading it.
    pub fn take_changed_namespaces(&self) -> Vec<u32> {
        std::mem::take(&mut *lock(&self.changed_ns))
    }

    pub fn page_size(&self) -> u64 {
        self.page_size.load(Ordering::Relaxed)
    }

    /// Queue an asynchronous event (completion dword 0 of an AER).
    pub fn post_event(&self, dw0: u32) {
        let mut q = lock(&self.events);
        if !q.contains(&dw0) && q.len() < MAX_EVENTS {
            q.push_back(dw0);
        }
    }

    pub fn take_event(&self) -> Option<u32> {
        lock(&self.events).pop_front()
    }

    pub fn clear_events(&self) {
        lock(&self.events).clear();
    }

    /// Record a failed command in the error information log.
    pub fn log_error(&self, sqid: u16, cid: u16, status: Status, nsid: u32, lba: u64) {
        let mut log = lock(&self.errors);
        log.count += 1;
        let entry = ErrorLogEntry {
            error_count: log.count.into(),
            sqid: sqid.into(),
            cid: cid.into(),
            status: (status.field() << 1).into(),
            param_error_location: 0xffff.into(),
            lba: lba.into(),
            nsid: nsid.into(),
            ..Default::default()
        };
        log.entries.push_front(entry);
        log.entries.truncate(ERROR_LOG_ENTRIES);
    }

    /// The error log page, newest first, and the number of errors so far.
    pub fn error_log(&self) -> (u64, Vec<ErrorLogEntry>) {
        let log = lock(&self.errors);
        (log.count, log.entries.iter().copied().collect())
    }

    /// Process `pid` may hold the shared memory (see `trusted`).
    pub fn trust(&self, pid: i32) {
        lock(&self.trusted).push(pid);
    }

    /// One of `pid`'s connections ended.
    pub fn untrust(&self, pid: i32) {
        let mut t = lock(&self.trusted);
        if let Some(i) = t.iter().position(|p| *p == pid) {
            t.swap_remove(i);
        }
    }

    /// This process and those [`CtrlShared::trust`] was told of.
    pub fn trusted(&self) -> Vec<i32> {
        let mut t = lock(&self.trusted).clone();
        t.push(i32::try_from(std::process::id()).unwrap_or(0));
        t
    }

    /// The asynchronous events queued (for the controller's image).
    pub fn events(&self) -> Vec<u32> {
        lock(&self.events).iter().copied().collect()
    }

    /// The Changed Namespace List, not cleared.
    pub fn changed_namespaces(&self) -> Vec<u32> {
        lock(&self.changed_ns).clone()
    }

    /// What deleted completion queues counted.
    pub fn retired(&self) -> IoCounts {
        *lock(&self.retired)
    }

    /// Take back what a previous host-driver had queued and logged.
    pub fn restore_reports(
        &self,
        events: &[u32],
        changed_ns: &[u32],
        error_count: u64,
        errors: Vec<ErrorLogEntry>,
        retired: IoCounts,
    ) {
        *lock(&self.events) = events.iter().copied().take(MAX_EVENTS).collect();
        *lock(&self.changed_ns) = changed_ns.to_vec();
        let mut log = lock(&self.errors);
        log.count = error_count;
        log.entries = errors.into_iter().take(ERROR_LOG_ENTRIES).collect();
        *lock(&self.retired) = retired;
    }

    /// A completion queue was deleted: keep what it counted.
    pub fn retire_counts(&self, c: IoCounts) {
        lock(&self.retired).add(c);
    }

    /// I/O counts over the live completion queues `cqids` and the retired ones.
    pub fn io_counts(&self, cqids: impl Iterator<Item = u16>) -> IoCounts {
        let mut t = *lock(&self.retired);
        for q in cqids {
            t.add(self.qstate.cq_counts(q));
        }
        t
    }
}
