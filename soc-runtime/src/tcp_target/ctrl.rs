//! The exported subsystem and its controllers (shared by all pollers).

use super::config::{AllowedHost, TcpTargetSpec};
use leapio_nvme::controller::NamespaceInfo;
use leapio_nvme::regs::csts;
use leapio_nvme_auth::{Policy, Secrets};
use leapio_transports::Backend;
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
    pub namespaces: Vec<NamespaceInfo>,
    pub backends: Vec<Arc<dyn Backend>>,
    pub allow: Vec<AllowedHost>,
    /// What DH-HMAC-CHAP accepts.
    pub dhchap: Arc<Policy>,
    pub limits: Limits,
    ctrls: Mutex<Ctrls>,
    /// Connections open, on all pollers.
    pub connections: AtomicUsize,
    /// Commands of closed connections whose backend I/O is still running.
    pub orphans: AtomicUsize,
}

#[derive(Default)]
struct Ctrls {
    by_id: HashMap<u16, Arc<Controller>>,
    next: u16,
}

impl Subsystem {
    pub fn new(
        spec: &TcpTargetSpec,
        serial: String,
        listen: SocketAddr,
        namespaces: Vec<NamespaceInfo>,
        backends: Vec<Arc<dyn Backend>>,
    ) -> Subsystem {
        Subsystem {
            nqn: spec.nqn.clone(),
            serial,
            listen,
            namespaces,
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
            },
            ctrls: Mutex::new(Ctrls {
                by_id: HashMap::new(),
                next: 1,
            }),
            connections: AtomicUsize::new(0),
            orphans: AtomicUsize::new(0),
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
                    cc: AtomicU32::new(0),
                    csts: AtomicU32::new(0),
                    kato_ms: AtomicU32::new(kato_ms),
                    queues_granted: AtomicU32::new(u32::from(self.limits.max_io_queues)),
                    io_qids: Mutex::new(BTreeSet::new()),
                    epoch: AtomicU64::new(0),
                    dead: AtomicBool::new(false),
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
    pub cc: AtomicU32,
    pub csts: AtomicU32,
    pub kato_ms: AtomicU32,
    /// I/O queues granted by Set Features Number of Queues.
    pub queues_granted: AtomicU32,
    /// I/O queues connected.
    io_qids: Mutex<BTreeSet<u16>>,
    /// Bumped on controller reset: I/O queues of an older epoch close.
    pub epoch: AtomicU64,
    /// Torn down (admin queue gone, keep-alive timeout).
    pub dead: AtomicBool,
}

impl Controller {
    pub fn ready(&self) -> bool {
        self.csts.load(Ordering::Acquire) & csts::RDY != 0
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
        self.csts.store(0, Ordering::Release);
        self.queues_granted.store(u32::MAX, Ordering::Release);
    }
}
