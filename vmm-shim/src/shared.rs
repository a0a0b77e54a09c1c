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
use std::sync::{Arc, Mutex};

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

/// Per-controller counters (SMART log). The I/O counts live in shards, one
/// per poller serving the controller: each shard has a single writer, which
/// adds with a plain load and store instead of a locked read-modify-write
/// per I/O; readers sum the shards.
#[derive(Default)]
pub struct Counters {
    shards: Mutex<Shards>,
    pub media_errors: AtomicU64,
}

#[derive(Default)]
struct Shards {
    live: Vec<Arc<CounterShard>>,
    /// What retired shards had counted.
    retired: IoCounts,
}

/// One poller's I/O counts for one controller (see [`Counters`]).
#[derive(Default)]
pub struct CounterShard {
    read_commands: AtomicU64,
    write_commands: AtomicU64,
    /// In units of 512 bytes.
    read_sectors: AtomicU64,
    write_sectors: AtomicU64,
}

/// Totals over every shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCounts {
    pub read_commands: u64,
    pub write_commands: u64,
    /// In units of 512 bytes.
    pub read_sectors: u64,
    pub write_sectors: u64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl IoCounts {
    fn add(&mut self, other: IoCounts) {
        self.read_commands += other.read_commands;
        self.write_commands += other.write_commands;
        self.read_sectors += other.read_sectors;
        self.write_sectors += other.write_sectors;
    }
}

impl CounterShard {
    /// The counts so far.
    fn counts(&self) -> IoCounts {
        IoCounts {
            read_commands: self.read_commands.load(Ordering::Relaxed),
            write_commands: self.write_commands.load(Ordering::Relaxed),
            read_sectors: self.read_sectors.load(Ordering::Relaxed),
            write_sectors: self.write_sectors.load(Ordering::Relaxed),
        }
    }

    /// A completed read of `sectors` 512-byte units. Only the shard's owner
    /// may call this (a second writer would lose counts).
    pub fn add_read(&self, sectors: u64) {
        bump(&self.read_commands, 1);
        bump(&self.read_sectors, sectors);
    }

    /// A completed write; see [`add_read`](Self::add_read).
    pub fn add_write(&self, sectors: u64) {
        bump(&self.write_commands, 1);
        bump(&self.write_sectors, sectors);
    }
}

impl Counters {
    /// A new shard for one writer (a poller taking on the controller).
    pub fn shard(&self) -> Arc<CounterShard> {
        let shard = Arc::new(CounterShard::default());
        self.lock().live.push(Arc::clone(&shard));
        shard
    }

    /// The shard's writer is done with it: fold its counts into the totals.
    pub fn retire(&self, shard: &Arc<CounterShard>) {
        let mut shards = self.lock();
        if let Some(i) = shards.live.iter().position(|s| Arc::ptr_eq(s, shard)) {
            let s = shards.live.swap_remove(i);
            shards.retired.add(s.counts());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shards> {
        self.shards
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The I/O counts so far, over every shard.
    pub fn io(&self) -> IoCounts {
        let shards = self.lock();
        let mut t = shards.retired;
        for s in &shards.live {
            t.add(s.counts());
        }
        t
    }
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
