//! State shared between the controller (control thread) and the runtime's
//! pollers: guest memory, doorbells, interrupt vectors, shadow doorbells,
//! namespaces, asynchronous events and statistics. Pollers only ever read
//! atomics or lock-free pointers here on the I/O path.

use crate::doorbell::Doorbells;
use crate::irq::Interrupts;
use leapio_ats::Domain;
use leapio_nvme::log::ErrorLogEntry;
use leapio_nvme::Status;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// What the controller tells the guest about one namespace.
#[derive(Clone, Debug)]
pub struct NamespaceInfo {
    pub nsid: u32,
    pub block_size: u32,
    pub num_blocks: u64,
    pub volatile_write_cache: bool,
    pub write_zeroes: bool,
    pub deallocate: bool,
    /// Globally unique identifiers derived from the controller serial.
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    pub uuid: [u8; 16],
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
    pub fn get(&self) -> Option<ShadowDoorbells> {
        let dbs = self.dbs.load(Ordering::Acquire);
        if dbs == 0 {
            return None;
        }
        Some(ShadowDoorbells {
            dbs,
            eis: self.eis.load(Ordering::Acquire),
        })
    }

    pub fn set(&self, v: Option<ShadowDoorbells>) {
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

/// Shadow doorbell and EventIdx buffers (Doorbell Buffer Config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShadowDoorbells {
    pub dbs: u64,
    pub eis: u64,
}

impl ShadowDoorbells {
    pub fn sq_tail(&self, qid: u16) -> u64 {
        self.dbs + u64::from(qid) * 8
    }
    pub fn cq_head(&self, qid: u16) -> u64 {
        self.dbs + u64::from(qid) * 8 + 4
    }
    pub fn sq_event(&self, qid: u16) -> u64 {
        self.eis + u64::from(qid) * 8
    }
    pub fn cq_event(&self, qid: u16) -> u64 {
        self.eis + u64::from(qid) * 8 + 4
    }
}

/// Per-controller counters (SMART log, statistics at exit).
#[derive(Default)]
pub struct Counters {
    pub read_commands: AtomicU64,
    pub write_commands: AtomicU64,
    /// In units of 512 bytes.
    pub read_sectors: AtomicU64,
    pub write_sectors: AtomicU64,
    pub media_errors: AtomicU64,
}

/// Everything the pollers need from a controller.
pub struct CtrlShared {
    pub name: String,
    pub domain: Domain,
    pub doorbells: Doorbells,
    pub irqs: Interrupts,
    pub namespaces: Vec<NamespaceInfo>,
    /// Host memory page size (CC.MPS), set at enable.
    pub page_size: AtomicU64,
    /// Maximum data transfer size in bytes.
    pub mdts_bytes: u64,
    pub shadow: ShadowConfig,
    /// Controller Fatal Status: the runtime could not go on (e.g. a queue's
    /// memory was unmapped under it).
    pub fatal: AtomicBool,
    pub counters: Counters,
    events: Mutex<VecDeque<u32>>,
    errors: Mutex<ErrorLog>,
}

#[derive(Default)]
struct ErrorLog {
    count: u64,
    entries: VecDeque<ErrorLogEntry>,
}

/// Entries kept in the error information log (ELPE + 1).
pub const ERROR_LOG_ENTRIES: usize = 64;

impl CtrlShared {
    pub fn new(
        name: String,
        doorbells: Doorbells,
        irqs: Interrupts,
        namespaces: Vec<NamespaceInfo>,
        mdts_bytes: u64,
    ) -> CtrlShared {
        CtrlShared {
            name,
            domain: Domain::new(),
            doorbells,
            irqs,
            namespaces,
            page_size: AtomicU64::new(4096),
            mdts_bytes,
            shadow: ShadowConfig::default(),
            fatal: AtomicBool::new(false),
            counters: Counters::default(),
            events: Mutex::new(VecDeque::new()),
            errors: Mutex::new(ErrorLog::default()),
        }
    }

    pub fn namespace(&self, nsid: u32) -> Option<&NamespaceInfo> {
        let i = usize::try_from(nsid.checked_sub(1)?).ok()?;
        self.namespaces.get(i)
    }

    pub fn page_size(&self) -> u64 {
        self.page_size.load(Ordering::Relaxed)
    }

    /// Queue an asynchronous event (completion dword 0 of an AER).
    pub fn post_event(&self, dw0: u32) {
        if let Ok(mut q) = self.events.lock() {
            if !q.contains(&dw0) && q.len() < 64 {
                q.push_back(dw0);
            }
        }
    }

    pub fn take_event(&self) -> Option<u32> {
        self.events.lock().ok()?.pop_front()
    }

    pub fn clear_events(&self) {
        if let Ok(mut q) = self.events.lock() {
            q.clear();
        }
    }

    /// Record a failed command in the error information log.
    pub fn log_error(&self, sqid: u16, cid: u16, status: Status, nsid: u32, lba: u64) {
        if let Ok(mut log) = self.errors.lock() {
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
    }

    /// The error log page, newest first.
    pub fn error_log(&self) -> (u64, Vec<ErrorLogEntry>) {
        match self.errors.lock() {
            Ok(log) => (log.count, log.entries.iter().copied().collect()),
            Err(_) => (0, Vec::new()),
        }
    }
}
