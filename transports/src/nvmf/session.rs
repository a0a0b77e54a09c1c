//! The admin side of a remote controller: bring-up (Connect, CAP/VS, CC.EN,
//! CSTS.RDY, Identify, Number of Queues), the keep-alive timer thread, and
//! the connection of I/O queues (re-creating the controller when the target
//! lost it).

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use leapio_nvme::fabrics::IdentifyFabrics;
use leapio_nvme::identify::{
    Cns, IdentifyController, IdentifyNamespace, ONCS_DSM, ONCS_WRITE_ZEROES,
};
use leapio_nvme::regs::{csts, offset};
use leapio_nvme::{AdminOpcode, IoOpcode, Sqe};
use zerocopy::FromBytes;

use super::{wait_until, Channel, NvmfError, NvmfSpec};
use crate::nvme_host;
use crate::{Features, Geometry};

/// Admin queue entries we ask for.
const ADMIN_SQSIZE: u16 = 31;

/// Opens one connection to the target, ready for Connect (a transport's
/// handshake done): `open(spec, timeout, qid, entries)`.
pub(crate) type Opener<C> = fn(&NvmfSpec, Duration, u16, u32) -> Result<C, NvmfError>;

/// What bring-up learnt about the controller and namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Info {
    pub geometry: Geometry,
    pub features: Features,
    /// Most write data sent in-capsule (0: none).
    pub in_capsule: u32,
    /// Most bytes in one command (MDTS), `u32::MAX` when unlimited.
    pub max_transfer: u32,
    /// I/O queues the controller granted.
    pub io_queues: u16,
    /// Most entries in an I/O queue (CAP.MQES + 1).
    pub max_entries: u32,
    /// The controller reports Asymmetric Namespace Access (CMIC bit 3),
    /// and the ANA group of the namespace.
    pub ana_group: Option<u32>,
}

struct Admin<C> {
    conn: Option<C>,
    cntlid: u16,
}

/// One remote controller as seen by this backend, over connections of
/// type `C`.
pub(crate) struct Session<C: Channel> {
    open: Opener<C>,
    spec: NvmfSpec,
    hostid: [u8; 16],
    info: Info,
    admin: Mutex<Admin<C>>,
    cntlid: AtomicU16,
    /// I/O queue IDs in use (index qid - 1).
    qids: Mutex<Vec<bool>>,
    stopping: AtomicBool,
    wake: Condvar,
    wake_lock: Mutex<()>,
    timer: Mutex<Option<JoinHandle<()>>>,
    /// Bytes of data copied to and from the connections.
    pub(crate) copied: std::sync::atomic::AtomicU64,
    /// I/O queues connected again after their connection was lost.
    pub(crate) reconnects: std::sync::atomic::AtomicU64,
    /// Times the admin queue was connected again: an I/O queue waiting out
    /// its backoff tries again at once (the target is back).
    admin_epoch: std::sync::atomic::AtomicU64,
    /// The namespace's ANA state as last read (0: not reported).
    ana_state: std::sync::atomic::AtomicU8,
}

impl<C: Channel + 'static> Session<C> {
    pub fn open(spec: &NvmfSpec, open: Opener<C>) -> Result<Arc<Session<C>>, NvmfError> {
        let hostid = host_id(&spec.hostnqn);
        let (conn, cntlid, info) = bring_up(spec, hostid, open)?;
        let s = Arc::new(Session {
            open,
            spec: spec.clone(),
            hostid,
            info,
            cntlid: AtomicU16::new(cntlid),
            admin: Mutex::new(Admin {
                conn: Some(conn),
                cntlid,
            }),
            qids: Mutex::new(vec![false; usize::from(info.io_queues)]),
            stopping: AtomicBool::new(false),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
            timer: Mutex::new(None),
            copied: std::sync::atomic::AtomicU64::new(0),
            reconnects: std::sync::atomic::AtomicU64::new(0),
            admin_epoch: std::sync::atomic::AtomicU64::new(0),
            ana_state: std::sync::atomic::AtomicU8::new(0),
        });
        let weak = Arc::downgrade(&s);
        let period = if spec.kato.is_zero() {
            Duration::from_secs(5)
        } else {
            (spec.kato / 2).max(Duration::from_millis(50))
        };
        let t = std::thread::Builder::new()
            .name(format!("{}-ka", spec.transport.prefix()))
            .spawn(move || keep_alive_loop(&weak, period))
            .map_err(|source| NvmfError::Io { source })?;
        *lock(&s.timer) = Some(t);
        tracing::info!(
            target_addr = %spec.host_port(), subnqn = %spec.subnqn, cntlid,
            block_size = info.geometry.block_size, blocks = info.geometry.num_blocks,
            io_queues = info.io_queues, in_capsule = info.in_capsule,
            transport = spec.transport.prefix(),
            "NVMe over Fabrics controller connected"
        );
        Ok(s)
    }

    /// A session with no admin queue and no keep-alive thread, already
    /// stopping (so nothing reconnects), for the `fuzzing` harness.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn for_fuzzing(spec: &NvmfSpec, info: Info, open: Opener<C>) -> Arc<Session<C>> {
        Arc::new(Session {
            open,
            spec: spec.clone(),
            hostid: [0; 16],
            info,
            cntlid: AtomicU16::new(1),
            admin: Mutex::new(Admin {
                conn: None,
                cntlid: 1,
            }),
            qids: Mutex::new(vec![true; usize::from(info.io_queues)]),
            stopping: AtomicBool::new(true),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
            timer: Mutex::new(None),
            copied: std::sync::atomic::AtomicU64::new(0),
            reconnects: std::sync::atomic::AtomicU64::new(0),
            admin_epoch: std::sync::atomic::AtomicU64::new(0),
            ana_state: std::sync::atomic::AtomicU8::new(0),
        })
    }

    pub fn spec(&self) -> &NvmfSpec {
        &self.spec
    }

    pub fn info(&self) -> Info {
        self.info
    }

    pub fn cntlid(&self) -> u16 {
        self.cntlid.load(Ordering::Relaxed)
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Stop the keep-alive thread and close the admin queue.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        {
            let _g = lock(&self.wake_lock);
            self.wake.notify_all();
        }
        if let Some(t) = lock(&self.timer).take() {
            let _ = t.join();
        }
        if let Some(c) = lock(&self.admin).conn.take() {
            c.shutdown();
        }
    }

    pub fn alloc_qid(&self) -> Option<u16> {
        let mut q = lock(&self.qids);
        let i = q.iter().position(|used| !used)?;
        q[i] = true;
        u16::try_from(i + 1).ok()
    }

    pub fn free_qid(&self, qid: u16) {
        if let Some(u) = lock(&self.qids).get_mut(usize::from(qid).wrapping_sub(1)) {
            *u = false;
        }
    }

    /// The admin queue, re-created (new controller) when it is gone or does
    /// not answer a Keep Alive.
    fn live_admin(&self) -> Result<MutexGuard<'_, Admin<C>>, NvmfError> {
        if self.stopping() {
            return Err(NvmfError::Unusable("backend closed".into()));
        }
        let mut a = lock(&self.admin);
        if let Some(c) = a.conn.as_mut() {
            if keep_alive(c).is_ok() {
                return Ok(a);
            }
            tracing::warn!(subnqn = %self.spec.subnqn, "admin queue lost");
            a.conn = None;
        }
        self.reconnect_admin(&mut a)?;
        Ok(a)
    }

    fn reconnect_admin(&self, a: &mut Admin<C>) -> Result<(), NvmfError> {
        let (conn, cntlid, info) = bring_up(&self.spec, self.hostid, self.open)?;
        if info.geometry != self.info.geometry {
            conn.shutdown();
            return Err(NvmfError::Unusable(format!(
                "namespace changed on reconnect: {:?} -> {:?}",
                self.info.geometry, info.geometry
            )));
        }
        tracing::info!(subnqn = %self.spec.subnqn, cntlid, "admin queue re-established");
        a.conn = Some(conn);
        a.cntlid = cntlid;
        self.cntlid.store(cntlid, Ordering::Relaxed);
        self.admin_epoch.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// A new I/O queue for a poller asking for `depth` commands: a queue ID,
    /// its entries (within the spec's and the controller's), and its
    /// connection, made into what the queue drives by `into`; the queue ID
    /// is given back when that fails.
    pub fn open_io<T>(
        &self,
        depth: u32,
        into: impl FnOnce(C) -> Result<T, NvmfError>,
    ) -> Result<(u16, u32, T), NvmfError> {
        let info = self.info();
        let qid = self.alloc_qid().ok_or_else(|| {
            NvmfError::Unusable(format!(
                "all {} I/O queues of the controller are in use",
                info.io_queues
            ))
        })?;
        let entries = depth
            .saturating_add(1)
            .min(self.spec.queue_depth.saturating_add(1))
            .min(info.max_entries)
            .max(2);
        match self.connect_io(qid, entries).and_then(into) {
            Ok(t) => Ok((qid, entries, t)),
            Err(e) => {
                self.free_qid(qid);
                Err(e)
            }
        }
    }

    /// Whether the controller answers now: a Keep Alive, or the admin
    /// queue connected again (a new controller) when it was lost.
    pub fn check_live(&self) -> Result<(), NvmfError> {
        self.live_admin().map(drop)
    }

    /// Connect I/O queue `qid` with `entries` entries: the connection,
    /// Connected (and authenticated), for the transport's I/O queue.
    pub fn connect_io(&self, qid: u16, entries: u32) -> Result<C, NvmfError> {
        let mut a = self.live_admin()?;
        let mut c = (self.open)(&self.spec, self.spec.connect_timeout, qid, entries)?;
        let sqsize = u16::try_from(entries.saturating_sub(1)).unwrap_or(u16::MAX);
        match c.connect(&self.spec, self.hostid, qid, a.cntlid, sqsize) {
            Ok(_) => Ok(c),
            Err(e) => {
                // Most likely the controller is gone: re-create it next time.
                if let Some(old) = a.conn.take() {
                    old.shutdown();
                }
                Err(e)
            }
        }
    }

    /// Flush through the admin path: a short-lived I/O queue.
    pub fn flush_sync(&self) -> Result<(), NvmfError> {
        let qid = self
            .alloc_qid()
            .ok_or_else(|| NvmfError::Unusable("no I/O queue free for a flush".into()))?;
        let r = (|| {
            let a = self.live_admin()?;
            let mut c = (self.open)(&self.spec, self.spec.connect_timeout, qid, 2)?;
            c.connect(&self.spec, self.hostid, qid, a.cntlid, 1)?;
            drop(a);
            let sqe = Sqe {
                opcode: IoOpcode::FLUSH,
                nsid: self.spec.nsid.into(),
                ..Default::default()
            };
            c.command_ok("Flush", sqe, &[], 0)?;
            c.shutdown();
            Ok(())
        })();
        self.free_qid(qid);
        r
    }

    /// The namespace's ANA state through this controller (an
    /// `leapio_nvme::log::AnaState`), if it reports one.
    pub fn ana_state(&self) -> Option<u8> {
        let s = self.ana_state.load(Ordering::Acquire);
        (self.info.ana_group.is_some() && s != 0).then_some(s)
    }

    /// A path error was seen: read the ANA state again now.
    pub fn ana_changed(&self) {
        if self.info.ana_group.is_some() {
            self.wake.notify_all();
        }
    }

    /// Read the ANA log (under the admin lock) and keep the namespace's
    /// group's state.
    fn refresh_ana(&self, c: &mut C) {
        let Some(group) = self.info.ana_group else {
            return;
        };
        match read_ana(c, group) {
            Ok(state) => {
                let was = self.ana_state.swap(state, Ordering::AcqRel);
                if was != state {
                    tracing::info!(
                        target_addr = %self.spec.host_port(), subnqn = %self.spec.subnqn,
                        state, "ANA state of the namespace"
                    );
                }
            }
            Err(e) => tracing::warn!(subnqn = %self.spec.subnqn, "reading the ANA log: {e}"),
        }
    }

    fn sleep(&self, d: Duration) {
        let g = lock(&self.wake_lock);
        if !self.stopping() {
            let _ = self.wake.wait_timeout(g, d);
        }
    }
}

fn keep_alive_loop<C: Channel + 'static>(weak: &std::sync::Weak<Session<C>>, period: Duration) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(s) = weak.upgrade() else { return };
        if s.stopping() {
            return;
        }
        let ok = {
            let mut a = lock(&s.admin);
            match a.conn.as_mut().map(keep_alive) {
                Some(Ok(())) => {
                    if let Some(c) = a.conn.as_mut() {
                        s.refresh_ana(c);
                    }
                    true
                }
                Some(Err(e)) => {
                    tracing::warn!(subnqn = %s.spec.subnqn, "keep alive failed: {e}");
                    if let Some(c) = a.conn.take() {
                        c.shutdown();
                    }
                    s.reconnect_admin(&mut a).is_ok()
                }
                None => s.reconnect_admin(&mut a).is_ok(),
            }
        };
        let wait = if ok {
            backoff = Duration::from_millis(100);
            period
        } else {
            let w = backoff;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            w.min(period)
        };
        s.sleep(wait);
    }
}

fn keep_alive(c: &mut impl Channel) -> Result<(), NvmfError> {
    let sqe = Sqe {
        opcode: AdminOpcode::KEEP_ALIVE,
        ..Default::default()
    };
    c.command_ok("Keep Alive", sqe, &[], 0).map(|_| ())
}

/// The state of ANA group `group` in the controller's ANA log (read with
/// groups only).
fn read_ana(c: &mut impl Channel, group: u32) -> Result<u8, NvmfError> {
    const LEN: u32 = 4096;
    let sqe = Sqe {
        opcode: AdminOpcode::GET_LOG_PAGE,
        nsid: u32::MAX.into(),
        // LID 0Ch, LSP bit 0 (RGO), NUMDL.
        cdw10: (u32::from(leapio_nvme::log::LogId::ANA) | (1 << 8) | ((LEN / 4 - 1) << 16)).into(),
        ..Default::default()
    };
    let (_, d) = c.command_ok("Get Log Page (ANA)", sqe, &[], LEN as usize)?;
    let short = || NvmfError::Protocol("short ANA log".into());
    let groups = u16::from_le_bytes([*d.get(8).ok_or_else(short)?, *d.get(9).ok_or_else(short)?]);
    let mut at = 16usize;
    for _ in 0..groups {
        let desc = d.get(at..at + 32).ok_or_else(short)?;
        let id = u32::from_le_bytes([desc[0], desc[1], desc[2], desc[3]]);
        let nsids = u32::from_le_bytes([desc[4], desc[5], desc[6], desc[7]]);
        if id == group {
            return Ok(desc[16] & 0x0f);
        }
        at += 32 + 4 * usize::try_from(nsids).map_err(|_| short())?;
    }
    Err(NvmfError::Protocol(format!(
        "ANA group {group} not in the ANA log"
    )))
}

fn identify(c: &mut impl Channel, cns: u8, nsid: u32) -> Result<Vec<u8>, NvmfError> {
    let (_, d) = c.command_ok("Identify", nvme_host::identify(cns, nsid), &[], 4096)?;
    Ok(d)
}

/// Admin Connect, enable, Identify; returns the connection, CNTLID and info.
fn bring_up<C: Channel>(
    spec: &NvmfSpec,
    hostid: [u8; 16],
    open: Opener<C>,
) -> Result<(C, u16, Info), NvmfError> {
    let mut c = open(spec, spec.connect_timeout, 0, u32::from(ADMIN_SQSIZE) + 1)?;
    let cntlid = c.connect(
        spec,
        hostid,
        0,
        leapio_nvme::fabrics::CNTLID_DYNAMIC,
        ADMIN_SQSIZE,
    )?;
    let cap = c.prop_get(prop(offset::CAP), true)?;
    let vs = c.prop_get(prop(offset::VS), false)?;
    let mqes = u32::try_from(cap & 0xffff).unwrap_or(0) + 1;
    let to = Duration::from_millis(500 * ((cap >> 24) & 0xff).max(1));
    c.prop_set(prop(offset::CC), nvme_host::HOST_CC)?;
    let deadline = Instant::now() + to.min(Duration::from_secs(30));
    let ready = wait_until(deadline, || {
        let st = c.prop_get(prop(offset::CSTS), false)?;
        if st & u64::from(csts::CFS) != 0 {
            return Err(NvmfError::Unusable("controller fatal status".into()));
        }
        Ok(st & u64::from(csts::RDY) != 0)
    })?;
    if !ready {
        return Err(NvmfError::Timeout("CSTS.RDY"));
    }
    let idc = identify(&mut c, Cns::CONTROLLER, 0)?;
    let idc = IdentifyController::read_from_bytes(&idc[..])
        .map_err(|_| NvmfError::Protocol("short Identify Controller".into()))?;
    let nn = idc.nn.get();
    if spec.nsid > nn {
        return Err(NvmfError::Unusable(format!(
            "namespace {} does not exist (the subsystem has {nn})",
            spec.nsid
        )));
    }
    let idn = identify(&mut c, Cns::NAMESPACE, spec.nsid)?;
    let idn = IdentifyNamespace::read_from_bytes(&idn[..])
        .map_err(|_| NvmfError::Protocol("short Identify Namespace".into()))?;
    let Geometry {
        block_size,
        num_blocks: nsze,
    } = nvme_host::namespace_geometry(&idn, spec.nsid).map_err(NvmfError::Unusable)?;
    let fab = IdentifyFabrics::read_from_bytes(&idc.fabrics[..])
        .map_err(|_| NvmfError::Protocol("Identify fabrics area".into()))?;
    let in_capsule = if fab.icdoff.get() == 0 {
        (fab.ioccsz.get().saturating_mul(16)).saturating_sub(64)
    } else {
        0
    };
    let max_transfer = nvme_host::max_transfer(idc.mdts);
    let oncs = idc.oncs.get();
    // Number of Queues: ask for what the spec allows, take what is granted.
    let sqe = nvme_host::set_queue_count(spec.queues);
    let io_queues = match c.command_ok("Set Features (Number of Queues)", sqe, &[], 0) {
        Ok((cqe, _)) => nvme_host::granted_queues(cqe.dw0.get()),
        Err(_) => 1,
    }
    .min(spec.queues.max(1));
    let info = Info {
        geometry: Geometry {
            block_size,
            num_blocks: nsze,
        },
        features: Features {
            volatile_write_cache: idc.vwc & 1 != 0,
            write_zeroes: oncs & ONCS_WRITE_ZEROES != 0,
            deallocate: oncs & ONCS_DSM != 0,
        },
        in_capsule,
        max_transfer,
        io_queues,
        max_entries: mqes,
        ana_group: (idc.cmic & (1 << 3) != 0 && idn.anagrpid.get() != 0)
            .then(|| idn.anagrpid.get()),
    };
    tracing::debug!(
        cntlid,
        vs = format_args!("{vs:#x}"),
        ?info,
        "NVMe/TCP bring-up"
    );
    Ok((c, cntlid, info))
}

fn prop(off: u64) -> u32 {
    u32::try_from(off).unwrap_or(0)
}

/// A stable host identifier derived from the host NQN (FNV-1a), so the
/// target sees the same host after a reconnect.
fn host_id(hostnqn: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (i as u64);
        for b in hostnqn.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        chunk.copy_from_slice(&h.to_le_bytes());
    }
    out
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Connect I/O queue `qid` again (re-creating the controller if it is
/// gone), with exponential backoff from 100 ms to 5 s, until it works,
/// `cancel` is set or the session stops; then send the connection (as
/// `convert` makes it) on `tx`. Run on a helper thread of the queue.
pub(crate) fn reconnect_loop<C: Channel + 'static, T>(
    session: &Session<C>,
    qid: u16,
    entries: u32,
    cancel: &AtomicBool,
    tx: &mpsc::Sender<T>,
    convert: fn(C) -> Result<T, NvmfError>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 0u32;
    loop {
        if cancel.load(Ordering::Acquire) || session.stopping() {
            return;
        }
        match session.connect_io(qid, entries).and_then(convert) {
            Ok(x) => {
                session.reconnects.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(x);
                return;
            }
            Err(e) => {
                attempt += 1;
                if attempt == 1 || attempt % 10 == 0 {
                    tracing::warn!(
                        qid,
                        attempt,
                        transport = session.spec().transport.prefix(),
                        "reconnect failed: {e}"
                    );
                }
            }
        }
        // The backoff, cut short when the admin queue comes back (someone
        // saw the target answer: a Keep Alive, a claim).
        let epoch = session.admin_epoch.load(Ordering::Acquire);
        let until = Instant::now() + backoff;
        while Instant::now() < until {
            if cancel.load(Ordering::Acquire) {
                return;
            }
            if session.admin_epoch.load(Ordering::Acquire) != epoch {
                backoff = Duration::from_millis(50);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
