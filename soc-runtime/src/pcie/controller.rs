//! A controller as the runtime sees it: what the host-driver exported over
//! the link (guest memory in the runtime's own translation domain, the
//! doorbell page, the queue-state area, interrupt eventfds, controller
//! state) and the namespaces the runtime serves with their backends.
//! Pollers read it on the I/O path through atomics and lock-free pointers
//! only; what they report (asynchronous events, failed commands, fatal
//! errors) goes to the host-driver through a bounded outbox that never
//! blocks them.

use arc_swap::ArcSwap;
use leapio_ats::{DeviceAccess, Domain};
use leapio_backends::dma::DmaRegistry;
use leapio_backends::Backend;
use leapio_controller::NamespaceInfo;
use leapio_link::doorbells::Doorbells;
use leapio_link::irq::Interrupts;
use leapio_link::qstate::QueueState;
use leapio_link::{Shadow, ToHost};
use leapio_nvme::Status;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;

/// A namespace the runtime serves.
pub struct Namespace {
    pub info: NamespaceInfo,
    pub backend: Arc<dyn Backend>,
    /// What the pollers served of it.
    pub io: crate::io_stats::IoStats,
}

/// The namespaces by NSID (index NSID - 1; None for a hole), with a
/// generation that changes whenever the table does.
#[derive(Default)]
pub struct NsTable {
    pub generation: u64,
    pub entries: Vec<Option<Arc<Namespace>>>,
}

impl NsTable {
    pub fn get(&self, nsid: u32) -> Option<&Arc<Namespace>> {
        let i = usize::try_from(nsid.checked_sub(1)?).ok()?;
        self.entries.get(i)?.as_ref()
    }
}

/// The current shadow doorbell configuration: two atomics so that pollers
/// read it every loop for the price of two plain loads. `dbs == 0` means
/// none (Doorbell Buffer Config refuses address 0).
#[derive(Default)]
pub struct ShadowConfig {
    dbs: AtomicU64,
    eis: AtomicU64,
}

impl ShadowConfig {
    pub fn get(&self) -> Option<Shadow> {
        let dbs = self.dbs.load(Ordering::Acquire);
        if dbs == 0 {
            return None;
        }
        Some(Shadow {
            dbs,
            eis: self.eis.load(Ordering::Acquire),
        })
    }

    pub fn set(&self, v: Option<Shadow>) {
        match v {
            Some(s) => {
                self.dbs.store(0, Ordering::Release);
                self.eis.store(s.eis, Ordering::Release);
                self.dbs.store(s.dbs, Ordering::Release);
            }
            None => self.dbs.store(0, Ordering::Release),
        }
    }
}

/// Everything the pollers need from a controller.
pub struct CtrlCtx {
    /// Unique in this runtime.
    pub id: u64,
    pub name: String,
    /// Guest memory, as mapped by this runtime from the link's maps.
    pub domain: Domain,
    pub doorbells: Doorbells,
    pub qstate: Arc<QueueState>,
    pub irqs: Interrupts,
    pub namespaces: ArcSwap<NsTable>,
    /// Host memory page size (CC.MPS).
    pub page_size: AtomicU64,
    /// Maximum data transfer size in bytes.
    pub mdts_bytes: u64,
    pub shadow: ShadowConfig,
    /// Volatile Write Cache as the host set it: off, writes get FUA.
    pub write_cache: AtomicBool,
    /// The runtime hit an error it cannot go on from (e.g. a queue's
    /// memory unmapped under it); cleared by a controller reset.
    pub fatal: AtomicBool,
    outbox: SyncSender<ToHost>,
    dropped_reports: AtomicU64,
}

/// The process's IOMMU domain (`leapio_backend::dma`): every guest region
/// a controller maps is registered in it, so a device this runtime drives
/// from user space (an NVMe SSD through VFIO) reads and writes the guest's
/// memory itself.
#[derive(Debug)]
struct IommuDomain;

impl DeviceAccess for IommuDomain {
    unsafe fn grant(
        &self,
        addr: *mut u8,
        len: usize,
        writable: bool,
    ) -> Result<Box<dyn std::any::Any + Send + Sync>, String> {
        // SAFETY: the caller keeps the memory mapped until the guard drops
        // (the `grant` contract is `register`'s).
        let region = unsafe { DmaRegistry::global().register(addr, len, writable) };
        match region {
            Ok(r) => Ok(Box::new(r)),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl CtrlCtx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        name: String,
        doorbells: Doorbells,
        qstate: Arc<QueueState>,
        vectors: u16,
        irq_sink: Option<leapio_link::irq::IrqSink>,
        mdts_bytes: u64,
        namespaces: NsTable,
        outbox: SyncSender<ToHost>,
    ) -> CtrlCtx {
        CtrlCtx {
            id,
            name,
            domain: Domain::with_device(Arc::new(IommuDomain)),
            doorbells,
            irqs: match irq_sink {
                Some(sink) => Interrupts::remote(vectors, qstate.clone(), sink),
                None => Interrupts::new(vectors, qstate.clone()),
            },
            qstate,
            namespaces: ArcSwap::from_pointee(namespaces),
            page_size: AtomicU64::new(4096),
            mdts_bytes,
            shadow: ShadowConfig::default(),
            write_cache: AtomicBool::new(true),
            fatal: AtomicBool::new(false),
            outbox,
            dropped_reports: AtomicU64::new(0),
        }
    }

    pub fn page_size(&self) -> u64 {
        self.page_size.load(Ordering::Relaxed)
    }

    /// Report to the host-driver without ever blocking: a full outbox
    /// drops the report (and counts it).
    fn report(&self, msg: ToHost) {
        match self.outbox.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let n = self.dropped_reports.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(ctrl = %self.name, dropped = n + 1, "link outbox full: reports to the host-driver dropped");
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Queue an asynchronous event for the guest.
    pub fn post_event(&self, dw0: u32) {
        self.report(ToHost::Event {
            ctrl: self.name.clone(),
            dw0,
        });
    }

    /// Record a failed command in the controller's error log.
    pub fn log_error(&self, sqid: u16, cid: u16, status: Status, nsid: u32, lba: u64) {
        self.report(ToHost::Error {
            ctrl: self.name.clone(),
            sqid,
            cid,
            status: status.field(),
            nsid,
            lba,
        });
    }

    /// Stop serving the controller's queues and tell the host-driver
    /// (Controller Fatal Status).
    pub fn set_fatal(&self, reason: String) {
        if !self.fatal.swap(true, Ordering::AcqRel) {
            tracing::error!(ctrl = %self.name, "controller fatal status: {reason}");
            self.report(ToHost::Fatal {
                ctrl: self.name.clone(),
                reason,
            });
        }
    }
}
