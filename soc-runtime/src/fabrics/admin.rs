//! Admin commands and properties of a fabrics controller. The controller
//! core answers the admin commands ([`AdminCore`]), told about this
//! controller through [`Fabrics`]; what is the transport's is here: the
//! fabrics fields of Identify Controller, the Discovery log page (on the
//! discovery controller), Keep Alive Timer and Number of Queues, and the
//! Property Get/Set that stand in for the PCI register file.

use super::subsystem::{Controller, Subsystem};
use leapio_backends::Transport;
use leapio_controller::admin::{AdminCore, FrontEnd, Reply, ACL, AERL};
use leapio_controller::features;
use leapio_controller::identify::ControllerIdentity;
use leapio_controller::log::{Health, LogRequest};
use leapio_controller::regs::Change;
use leapio_controller::NamespaceInfo;
use leapio_nvme::cmd::FeatureId;
use leapio_nvme::fabrics::{
    put_nqn, Disc, DiscoveryLogEntry, DiscoveryLogHeader, FabricsStatus, IdentifyFabrics,
    PropertyCmd, Sgls, DISCOVERY_NQN, LID_DISCOVERY,
};
use leapio_nvme::identify::{Cns, IdentifyController, LPA_CMD_EFFECTS};
use leapio_nvme::log::LogId;
use leapio_nvme::{AdminOpcode, Sqe, Status};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use zerocopy::{FromZeros, IntoBytes};

/// Keep Alive Support granularity: 100 ms units, 10 = 1 s.
const KAS: u16 = 10;
/// Firmware revision reported.
const FIRMWARE: &str = "0.1";

/// Run one admin command (never a Fabrics command) of the controller whose
/// admin queue this is. `xfer_len` is the length of the command's data
/// buffer.
pub fn execute(
    sub: &Subsystem,
    ctrl: &Controller,
    core: &mut AdminCore,
    sqe: &Sqe,
    xfer_len: u32,
) -> Reply {
    if !ctrl.ready() && sqe.opcode != AdminOpcode::KEEP_ALIVE {
        // The controller must be enabled through Property Set first.
        return Reply::status(Status::COMMAND_SEQUENCE_ERROR);
    }
    let cns = (sqe.cdw10.get() & 0xff) as u8;
    if ctrl.discovery && sqe.opcode == AdminOpcode::IDENTIFY && cns != Cns::CONTROLLER {
        return Reply::status(Status::INVALID_FIELD);
    }
    let mut reply = core.execute(&mut Fabrics { sub, ctrl }, sqe);
    // Every namespace is in the one ANA group.
    if let Reply::Done { ref mut data, .. } = reply {
        if sub.ana.enabled() && sqe.opcode == AdminOpcode::IDENTIFY && cns == Cns::NAMESPACE {
            if let Some(g) = data.get_mut(92..96) {
                g.copy_from_slice(&super::ana::GROUP.to_le_bytes());
            }
        }
    }
    match reply {
        // The host's buffer must hold the whole log it asked for.
        Reply::Done { ref data, .. }
            if sqe.opcode == AdminOpcode::GET_LOG_PAGE
                && u64::try_from(data.len()).unwrap_or(u64::MAX) > u64::from(xfer_len) =>
        {
            Reply::status(FabricsStatus::DATA_SGL_LENGTH_INVALID)
        }
        r => r,
    }
}

/// A fabrics controller, as the admin core sees it.
struct Fabrics<'a> {
    sub: &'a Subsystem,
    ctrl: &'a Controller,
}

impl FrontEnd for Fabrics<'_> {
    fn namespaces(&self) -> Arc<Vec<NamespaceInfo>> {
        if self.ctrl.discovery {
            return Arc::default();
        }
        self.sub.namespaces.clone()
    }

    fn identify_controller(&self) -> IdentifyController {
        identify_controller(self.sub, self.ctrl)
    }

    fn max_transfer(&self) -> u64 {
        u64::from(self.sub.limits.mdts_bytes())
    }

    fn firmware(&self) -> &str {
        FIRMWARE
    }

    fn own_opcodes(&self) -> &[u8] {
        &[]
    }

    fn log_page(&mut self, req: &LogRequest) -> Option<Result<Vec<u8>, Status>> {
        if self.ctrl.discovery {
            return Some(match req.lid {
                LID_DISCOVERY => Ok(discovery_log(self.sub, self.ctrl)),
                _ => Err(Status::INVALID_LOG_PAGE),
            });
        }
        match req.lid {
            LogId::ANA if self.sub.ana.enabled() => {
                let nsids: Vec<u32> = self.sub.namespaces.iter().map(|n| n.nsid).collect();
                Some(Ok(self.sub.ana.log_page(&nsids, req.lsp & 1 != 0)))
            }
            LogId::ERROR => Some(Ok(vec![0u8; 64])),
            LogId::CHANGED_NS_LIST => Some(Ok(vec![0u8; 4096])),
            _ => None,
        }
    }

    fn health(&self) -> Health {
        Health::default()
    }

    fn get_feature(&self, fid: u8, _cdw11: u32) -> Option<Result<u32, Status>> {
        match fid {
            FeatureId::KEEP_ALIVE_TIMER => Some(Ok(self.ctrl.kato_ms.load(Ordering::Acquire))),
            // A discovery controller has only Keep Alive Timer and
            // Asynchronous Event Configuration.
            FeatureId::ASYNC_EVENT_CONFIG => None,
            _ if self.ctrl.discovery => Some(Err(Status::INVALID_FIELD)),
            FeatureId::NUMBER_OF_QUEUES => {
                let n = u32::from(queues_granted(self.sub, self.ctrl) - 1);
                Some(Ok(n | (n << 16)))
            }
            _ => None,
        }
    }

    fn set_feature(&mut self, fid: u8, v: u32) -> Option<(Status, u32)> {
        match fid {
            FeatureId::KEEP_ALIVE_TIMER => {
                self.ctrl.kato_ms.store(v, Ordering::Release);
                Some((Status::SUCCESS, 0))
            }
            FeatureId::ASYNC_EVENT_CONFIG => None,
            _ if self.ctrl.discovery => Some((Status::INVALID_FIELD, 0)),
            FeatureId::NUMBER_OF_QUEUES => Some(set_queue_count(self.sub, self.ctrl, v)),
            _ => None,
        }
    }

    fn write_cache_changed(&mut self, enabled: bool) {
        // The I/O queues write through (FUA) while the cache is off.
        self.ctrl.write_cache.store(enabled, Ordering::Release);
    }
}

/// Identify Controller of an I/O or discovery controller over NVMe/TCP.
pub fn identify_controller(sub: &Subsystem, ctrl: &Controller) -> IdentifyController {
    let l = &sub.limits;
    let no_namespaces: &[NamespaceInfo] = &[];
    let mut id = ControllerIdentity {
        vendor_id: leapio_nvme::identify::VENDOR_ID,
        serial: &sub.serial,
        model: if ctrl.discovery {
            "LeapIO NVMe/TCP discovery"
        } else {
            "LeapIO NVMe/TCP"
        },
        firmware: FIRMWARE,
        mdts: l.mdts,
        cntlid: ctrl.cntlid,
        acl: ACL,
        aerl: AERL,
    }
    .page(if ctrl.discovery {
        no_namespaces
    } else {
        &sub.namespaces
    });
    // 1: I/O controller, 2: discovery controller.
    id.cntrltype = if ctrl.discovery { 2 } else { 1 };
    // Commands Supported and Effects; extended data for Get Log Page.
    id.lpa = LPA_CMD_EFFECTS | (1 << 2);
    id.kas = KAS.into();
    if sub.ana.enabled() && !ctrl.discovery {
        // ANA reporting (CMIC bit 3); optimized, non-optimized and
        // inaccessible reported, group ids fixed while attached; one group.
        id.cmic |= 1 << 3;
        id.anatt = super::ana::ANATT;
        id.anacap = 0x07 | (1 << 6);
        id.anagrpmax = super::ana::GROUP.into();
        id.nanagrpid = super::ana::GROUP.into();
    }
    id.maxcmd = u16::try_from(l.queue_entries).unwrap_or(u16::MAX).into();
    // Host data is described by the transport's descriptor: TCP's data
    // block, RDMA's keyed one; both carry in-capsule data at an offset.
    let data_block = match sub.transport {
        Transport::Tcp => Sgls::TRANSPORT_DATA_BLOCK,
        Transport::Rdma => Sgls::KEYED_DATA_BLOCK,
    };
    id.sgls = (Sgls::SUPPORTED | Sgls::OFFSET | data_block).into();
    let nqn = if ctrl.discovery {
        DISCOVERY_NQN
    } else {
        sub.nqn.as_str()
    };
    put_nqn(&mut id.subnqn, nqn);
    let mut f = IdentifyFabrics::new_zeroed();
    f.ioccsz = ((64 + l.in_capsule) / 16).into();
    f.iorcsz = 1.into();
    f.icdoff = 0.into();
    f.fcatt = 0;
    f.msdbd = 1;
    id.fabrics.copy_from_slice(f.as_bytes());
    id
}

/// The Discovery log page: one entry for the subsystem, if this host may
/// connect to it.
pub fn discovery_log(sub: &Subsystem, ctrl: &Controller) -> Vec<u8> {
    let mut entries = Vec::new();
    if sub.host_allowed(&ctrl.hostnqn) {
        let mut e = DiscoveryLogEntry::zeroed();
        e.trtype = match sub.transport {
            leapio_backends::Transport::Tcp => Disc::TRTYPE_TCP,
            leapio_backends::Transport::Rdma => {
                e.tsas[0] = Disc::RDMA_QPTYPE_CONNECTED;
                e.tsas[1] = Disc::RDMA_PRTYPE_NOT_SPECIFIED;
                e.tsas[2] = Disc::RDMA_CMS_RDMA_CM;
                Disc::TRTYPE_RDMA
            }
        };
        e.adrfam = if sub.listen.is_ipv4() {
            Disc::ADRFAM_IPV4
        } else {
            Disc::ADRFAM_IPV6
        };
        e.subtype = Disc::SUBTYPE_NVME;
        e.treq = Disc::TREQ_NOT_SPECIFIED;
        e.portid = 1.into();
        e.cntlid = leapio_nvme::fabrics::CNTLID_DYNAMIC.into();
        e.asqsz = 32.into();
        put_nqn(&mut e.trsvcid, &sub.listen.port().to_string());
        put_nqn(&mut e.subnqn, &sub.nqn);
        put_nqn(&mut e.traddr, &sub.listen.ip().to_string());
        // TSAS for TCP: SECTYPE 0, no security.
        entries.push(e);
    }
    let mut h = DiscoveryLogHeader::zeroed();
    h.genctr = 1.into();
    h.numrec = u64::try_from(entries.len()).unwrap_or(0).into();
    h.recfmt = 0.into();
    let mut v = h.as_bytes().to_vec();
    for e in &entries {
        v.extend_from_slice(e.as_bytes());
    }
    v
}

/// I/O queues granted (1-based).
pub fn queues_granted(sub: &Subsystem, ctrl: &Controller) -> u16 {
    let g = ctrl.queues_granted.load(Ordering::Acquire);
    u16::try_from(g.min(u32::from(sub.limits.max_io_queues))).unwrap_or(1)
}

/// Set Features, Number of Queues: one count for both kinds of queue.
fn set_queue_count(sub: &Subsystem, ctrl: &Controller, v: u32) -> (Status, u32) {
    let (nsq, ncq) = match features::queue_counts_requested(v) {
        Ok(n) => n,
        Err(status) => return (status, 0),
    };
    if ctrl.io_queue_count() != 0 {
        return (Status::COMMAND_SEQUENCE_ERROR, 0);
    }
    let max = u32::from(sub.limits.max_io_queues);
    let n = nsq.min(ncq).min(max);
    ctrl.queues_granted.store(n, Ordering::Release);
    (Status::SUCCESS, (n - 1) | ((n - 1) << 16))
}

/// Property Get: (status, value).
pub fn property_get(ctrl: &Controller, cmd: &PropertyCmd) -> (Status, u64) {
    let Some(size) = cmd.size() else {
        return (Status::INVALID_FIELD, 0);
    };
    match ctrl.regs().read(u64::from(cmd.offset.get()), size) {
        Some(v) => (Status::SUCCESS, v),
        None => (Status::INVALID_FIELD, 0),
    }
}

/// What a Property Set asked the connection to do besides answering.
#[derive(Debug, PartialEq, Eq)]
pub enum PropertyEffect {
    None,
    /// CC.EN went 1 -> 0: I/O queues are gone.
    Reset,
}

/// Property Set: only CC is writable.
pub fn property_set(
    sub: &Arc<Subsystem>,
    ctrl: &Arc<Controller>,
    cmd: &PropertyCmd,
) -> (Status, PropertyEffect) {
    let Some(size) = cmd.size() else {
        return (Status::INVALID_FIELD, PropertyEffect::None);
    };
    let changes = ctrl
        .regs()
        .property_set(u64::from(cmd.offset.get()), size, cmd.value.get());
    let changes = match changes {
        Ok(c) => c,
        Err(s) => return (s, PropertyEffect::None),
    };
    let mut effect = PropertyEffect::None;
    for change in changes {
        match change {
            Change::Enabled { .. } => {}
            Change::EnableRefused(why) => {
                tracing::warn!(cntlid = ctrl.cntlid, "enable refused: {why}");
            }
            Change::Disabled => {
                ctrl.reset();
                effect = PropertyEffect::Reset;
            }
            // Make what was written durable (off the poller), then report
            // it done.
            Change::Shutdown => sub.shutdown(ctrl),
        }
    }
    (Status::SUCCESS, effect)
}
