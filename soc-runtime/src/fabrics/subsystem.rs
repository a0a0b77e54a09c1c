//! The exported subsystem and its controllers (shared by all pollers).

use super::config::{AllowedHost, TargetSpec};
use crate::io_stats::IoStats;
use leapio_backends::{Backend, Transport};
use leapio_controller::regs::Registers;
use leapio_controller::NamespaceInfo;
use leapio_nvme::regs::Cap;
use leapio_nvme_auth::{Policy, Secrets};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Fixed limits of the target.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Entries per queue (MQES + 1).
    pub queue_entries: u32,
    pub max_io_queues: u16,
    pub mdts: u8,
    /// In-capsule data accepted on any queue.
    pub in_capsule: u32,
    /// MAXH2CDATA announced in ICResp.
    pub maxh2cdata: u32,
    pub icreq_timeout: Duration,
    /// How long a queue may take to authenticate.
    pub auth_timeout: Duration,
    /// Polling without sleeping after the last work.
    pub busy_poll: Duration,
}

impl Limits {
    pub fn mdts_bytes(&self) -> u32 {
        4096u32 << self.mdts
    }
}

/// One subsystem and its namespaces.
pub struct Subsystem {
    pub nqn: String,
    pub serial: String,
    pub listen: SocketAddr,
    /// What carries the capsules (the discovery log says so).
    pub transport: Transport,
    pub namespaces: Arc<Vec<NamespaceInfo>>,
    pub backends: Vec<Arc<dyn Backend>>,
    /// What each namespace served (by index), over all pollers.
    pub io: Vec<IoStats>,
    /// Asymmetric Namespace Access: the state hosts see.
    pub ana: super::ana::Ana,
    pub allow: Vec<AllowedHost>,
    /// What DH-HMAC-CHAP accepts.
    pub dhchap: Arc<Policy>,
    pub limits: Limits,
    ctrls: Mutex<Ctrls>,
    /// Connections open, on all pollers.
    pub connections: AtomicUsize,
    /// Commands of closed connections whose backend I/O is still running.
    pub orphans: AtomicUsize,
    /// The most bytes one connection ever had queued to send.
    pub tx_peak: AtomicUsize,
    /// Controllers waiting for the shutdown flush, and whether the flusher
    /// thread runs (see [`Subsystem::shutdown`]).
    shutdowns: Mutex<(Vec<Arc<Controller>>, bool)>,
}

#[derive(Default)]
struct Ctrls {
    by_id: HashMap<u16, Arc<Controller>>,
    next: u16,
}

impl Subsystem {
    pub fn new(
        spec: &TargetSpec,
        serial: String,
        listen: SocketAddr,
        transport: Transport,
        namespaces: Vec<NamespaceInfo>,
        backends: Vec<Arc<dyn Backend>>,
    ) -> Subsystem {
        Subsystem {
            nqn: spec.nqn.clone(),
            serial,
            listen,
            transport,
            io: namespaces.iter().map(|_| IoStats::default()).collect(),
            ana: super::ana::Ana::new(spec.ana),
            namespaces: Arc::new(namespaces),
            backends,
            allow: spec.allow.clone(),
            dhchap: Arc::new(spec.dhchap.clone()),
            limits: Limits {
                queue_entries: spec.queue_entries,
                max_io_queues: spec.io_queues,
                mdts: spec.mdts,
                in_capsule: 8192,
                maxh2cdata: 4096u32 << spec.mdts,
                icreq_timeout: spec.icreq_timeout,
                auth_timeout: spec.auth_timeout,
                busy_poll: spec.busy_poll,
            },
            ctrls: Mutex::new(Ctrls {
                by_id: HashMap::new(),
                next: 1,
            }),
            connections: AtomicUsize::new(0),
            orphans: AtomicUsize::new(0),
            tx_peak: AtomicUsize::new(0),
            shutdowns: Mutex::new((Vec::new(), false)),
        }
    }

    /// A shutdown notification (CC.SHN) for `ctrl`: CSTS.SHST says
    /// "occurring" until every backend was flushed, then "complete". The
    /// flush runs on one thread per subsystem, never on a poller (it would
    /// stall every connection the poller serves), and requests that arrive
    /// while it runs share the next flush. A discovery controller has no
    /// namespaces: complete at once.
    pub fn shutdown(self: &Arc<Self>, ctrl: &Arc<Controller>) {
        if ctrl.discovery || self.backends.is_empty() {
            ctrl.regs().shutdown_complete();
            return;
        }
        let mut q = self.shutdowns.lock().unwrap_or_else(|p| p.into_inner());
        q.0.push(ctrl.clone());
        if q.1 {
            return;
        }
        q.1 = true;
        drop(q);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("target-flush".into())
            .spawn(move || me.flush_for_shutdowns());
        if spawned.is_err() {
            // No thread: flush here, once.
            self.flush_for_shutdowns();
        }
    }

    fn flush_for_shutdowns(&self) {
        loop {
            let waiting = {
                let mut q = self.shutdowns.lock().unwrap_or_else(|p| p.into_inner());
                if q.0.is_empty() {
                    q.1 = false;
                    return;
                }
                std::mem::take(&mut q.0)
            };
            for b in &self.backends {
                if let Err(e) = b.flush() {
                    tracing::warn!("flushing {} at shutdown: {e}", b.describe());
                }
            }
            for c in waiting {
                c.regs().shutdown_complete();
            }
        }
    }

    /// CAP as a fabrics controller of this subsystem reports it.
    pub fn cap(&self) -> Cap {
        Cap {
            mqes: self.limits.queue_entries,
            cqr: true,
            // 7.5 s to become ready (we are ready at once).
            timeout: 15,
            dstrd: 0,
            mpsmin: 0,
            mpsmax: 0,
        }
    }

    fn ctrls(&self) -> MutexGuard<'_, Ctrls> {
        self.ctrls.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|a| a.nqn == hostnqn)
    }

    /// The DH-HMAC-CHAP secrets of a host that must authenticate.
    pub fn host_secrets(&self, hostnqn: &str) -> Option<Arc<Secrets>> {
        self.allow
            .iter()
            .find(|a| a.nqn == hostnqn)
            .and_then(|a| a.secrets.clone())
    }

    pub fn namespace(&self, nsid: u32) -> Option<(usize, &NamespaceInfo)> {
        let i = usize::try_from(nsid.checked_sub(1)?).ok()?;
        self.namespaces.get(i).map(|n| (i, n))
    }

    /// A new controller (dynamic model), None when all IDs are in use.
    pub fn create_controller(
        &self,
        discovery: bool,
        hostnqn: &str,
        hostid: [u8; 16],
        kato_ms: u32,
        secrets: Option<Arc<Secrets>>,
    ) -> Option<Arc<Controller>> {
        let mut c = self.ctrls();
        // CNTLIDs 1..=0xffef.
        for _ in 0..0xffef {
            let id = c.next;
            c.next = if c.next >= 0xffef { 1 } else { c.next + 1 };
            if let std::collections::hash_map::Entry::Vacant(slot) = c.by_id.entry(id) {
                let ctrl = Arc::new(Controller {
                    cntlid: id,
                    discovery,
                    hostnqn: hostnqn.to_string(),
                    hostid,
                    secrets,
                    regs: Mutex::new(Registers::fabrics(self.cap())),
                    kato_ms: AtomicU32::new(kato_ms),
                    queues_granted: AtomicU32::new(u32::from(self.limits.max_io_queues)),
                    io_qids: Mutex::new(BTreeSet::new()),
                    epoch: AtomicU64::new(0),
                    dead: AtomicBool::new(false),
                    write_cache: AtomicBool::new(true),
                });
                slot.insert(ctrl.clone());
                return Some(ctrl);
            }
        }
        None
    }

    pub fn controller(&self, cntlid: u16) -> Option<Arc<Controller>> {
        self.ctrls().by_id.get(&cntlid).cloned()
    }

    /// Tear a controller down: its I/O queue connections close.
    pub fn remove_controller(&self, ctrl: &Controller) {
        ctrl.dead.store(true, Ordering::Release);
        let mut c = self.ctrls();
        if c.by_id
            .get(&ctrl.cntlid)
            .is_some_and(|x| std::ptr::eq(&**x, ctrl))
        {
            c.by_id.remove(&ctrl.cntlid);
        }
    }

    pub fn controller_count(&self) -> usize {
        self.ctrls().by_id.len()
    }
}

/// One controller: the association of an admin queue and its I/O queues.
pub struct Controller {
    pub cntlid: u16,
    pub discovery: bool,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    /// DH-HMAC-CHAP secrets: every queue must authenticate.
    pub secrets: Option<Arc<Secrets>>,
    /// CC and CSTS (Property Get and Set).
    regs: Mutex<Registers>,
    pub kato_ms: AtomicU32,
    /// I/O queues granted by Set Features Number of Queues.
    pub queues_granted: AtomicU32,
    /// I/O queues connected.
    io_qids: Mutex<BTreeSet<u16>>,
    /// Bumped on controller reset: I/O queues of an older epoch close.
    pub epoch: AtomicU64,
    /// Torn down (admin queue gone, keep-alive timeout).
    pub dead: AtomicBool,
    /// Volatile Write Cache as the host set it: off, writes get FUA.
    pub write_cache: AtomicBool,
}

impl Controller {
    /// The controller's registers (the admin queue's connection writes
    /// them; the flusher and the I/O queues' connections read them).
    pub fn regs(&self) -> MutexGuard<'_, Registers> {
        self.regs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ready(&self) -> bool {
        self.regs().ready()
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    fn qids(&self) -> MutexGuard<'_, BTreeSet<u16>> {
        self.io_qids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claim I/O queue `qid`; false if it is already connected.
    pub fn claim_qid(&self, qid: u16) -> bool {
        self.qids().insert(qid)
    }

    pub fn release_qid(&self, qid: u16) {
        self.qids().remove(&qid);
    }

    pub fn io_queue_count(&self) -> usize {
        self.qids().len()
    }

    /// Controller reset (CC.EN 1 -> 0): drop every I/O queue.
    pub fn reset(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.qids().clear();
        self.regs().reset_done(true);
        self.queues_granted.store(u32::MAX, Ordering::Release);
        self.write_cache.store(true, Ordering::Release);
    }
}
