//! Admin commands and properties of a fabrics controller: Identify pages
//! with the fabrics fields, Get Log Page (with the Discovery log page on the
//! discovery controller), Get/Set Features, Keep Alive, AER and the
//! Property Get/Set that stand in for the PCI register file.

use super::ctrl::{Controller, Subsystem};
use leapio_controller::features::{self, CommonFeatures};
use leapio_controller::identify::{identify_page, ControllerIdentity};
use leapio_controller::log::{check_smart_nsid, fw_slot_log, smart_log, Health, LogRequest};
use leapio_controller::regs::Change;
use leapio_nvme::cmd::FeatureId;
use leapio_nvme::fabrics::{
    put_nqn, Disc, DiscoveryLogEntry, DiscoveryLogHeader, IdentifyFabrics, PropertyCmd, Sgls,
    DISCOVERY_NQN, LID_DISCOVERY,
};
use leapio_nvme::identify::{Cns, IdentifyController, LPA_CMD_EFFECTS};
use leapio_nvme::log::{CmdEffectsLog, LogId};
use leapio_nvme::{AdminOpcode, Sqe, Status};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use zerocopy::{FromZeros, IntoBytes};

/// Asynchronous Event Request Limit (0's based).
pub const AERL: u8 = 3;
/// Keep Alive Support granularity: 100 ms units, 10 = 1 s.
const KAS: u16 = 10;
/// Firmware revision reported.
const FIRMWARE: &str = "0.1";

/// Per-controller admin state kept by the admin queue's connection.
#[derive(Default)]
pub struct AdminState {
    /// Outstanding Asynchronous Event Requests (CIDs).
    pub aers: Vec<u16>,
    features: CommonFeatures,
}

/// What an admin command did.
pub enum Reply {
    /// Complete with this status and dword 0; `data` goes to the host first.
    Done {
        status: Status,
        dw0: u32,
        data: Vec<u8>,
    },
    /// Stays outstanding (Asynchronous Event Request).
    Held,
}

fn done(status: Status) -> Reply {
    Reply::Done {
        status,
        dw0: 0,
        data: Vec::new(),
    }
}

fn data(page: Vec<u8>) -> Reply {
    Reply::Done {
        status: Status::SUCCESS,
        dw0: 0,
        data: page,
    }
}

/// Run one admin command (never a Fabrics command). `xfer_len` is the
/// length of the command's data buffer.
pub fn execute(
    sub: &Subsystem,
    ctrl: &Controller,
    st: &mut AdminState,
    sqe: &Sqe,
    xfer_len: u32,
) -> Reply {
    if !ctrl.ready() && sqe.opcode != AdminOpcode::KEEP_ALIVE {
        // The controller must be enabled through Property Set first.
        return done(Status::COMMAND_SEQUENCE_ERROR);
    }
    match sqe.opcode {
        AdminOpcode::IDENTIFY => identify(sub, ctrl, sqe),
        AdminOpcode::GET_LOG_PAGE => get_log_page(sub, ctrl, sqe, xfer_len),
        AdminOpcode::GET_FEATURES => get_features(sub, ctrl, st, sqe),
        AdminOpcode::SET_FEATURES => set_features(sub, ctrl, st, sqe),
        AdminOpcode::KEEP_ALIVE => done(Status::SUCCESS),
        AdminOpcode::ASYNC_EVENT_REQUEST => {
            if st.aers.len() > usize::from(AERL) {
                return done(Status::ASYNC_EVENT_LIMIT_EXCEEDED);
            }
            st.aers.push(sqe.cid.get());
            Reply::Held
        }
        // Nothing is ever aborted: dword 0 bit 0 says so.
        AdminOpcode::ABORT => Reply::Done {
            status: Status::SUCCESS,
            dw0: 1,
            data: Vec::new(),
        },
        _ => done(Status::INVALID_OPCODE),
    }
}

fn identify(sub: &Subsystem, ctrl: &Controller, sqe: &Sqe) -> Reply {
    let cns = (sqe.cdw10.get() & 0xff) as u8;
    let csi = (sqe.cdw11.get() >> 24) as u8;
    if ctrl.discovery && cns != Cns::CONTROLLER {
        return done(Status::INVALID_FIELD);
    }
    let id = identify_controller(sub, ctrl);
    match identify_page(cns, csi, sqe.nsid.get(), &sub.namespaces, &id) {
        Ok(page) => data(page),
        Err(s) => done(s),
    }
}

/// Identify Controller of an I/O or discovery controller over NVMe/TCP.
pub fn identify_controller(sub: &Subsystem, ctrl: &Controller) -> IdentifyController {
    let l = &sub.limits;
    let no_namespaces: &[leapio_controller::NamespaceInfo] = &[];
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
        acl: 3,
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
    id.maxcmd = u16::try_from(l.queue_entries).unwrap_or(u16::MAX).into();
    id.sgls = (Sgls::SUPPORTED | Sgls::OFFSET | Sgls::TRANSPORT_DATA_BLOCK).into();
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

fn get_log_page(sub: &Subsystem, ctrl: &Controller, sqe: &Sqe, xfer_len: u32) -> Reply {
    let req = match LogRequest::of(sqe, u64::from(sub.limits.mdts_bytes())) {
        Ok(r) => r,
        Err(s) => return done(s),
    };
    if req.len > u64::from(xfer_len) {
        return done(leapio_nvme::fabrics::FabricsStatus::DATA_SGL_LENGTH_INVALID);
    }
    let log: Vec<u8> = match req.lid {
        LID_DISCOVERY if ctrl.discovery => discovery_log(sub, ctrl),
        _ if ctrl.discovery => return done(Status::INVALID_LOG_PAGE),
        LogId::ERROR => vec![0u8; 64],
        LogId::SMART => {
            if let Err(s) = check_smart_nsid(sqe.nsid.get(), |n| sub.namespace(n).is_some()) {
                return done(s);
            }
            smart_log(&Health::default())
        }
        LogId::FW_SLOT => fw_slot_log(FIRMWARE),
        LogId::CHANGED_NS_LIST => vec![0u8; 4096],
        LogId::CMD_EFFECTS => effects_log(req.csi).as_bytes().to_vec(),
        _ => return done(Status::INVALID_LOG_PAGE),
    };
    match req.window(&log) {
        Ok(out) => data(out),
        Err(s) => done(s),
    }
}

/// The Discovery log page: one entry for the subsystem, if this host may
/// connect to it.
pub fn discovery_log(sub: &Subsystem, ctrl: &Controller) -> Vec<u8> {
    let mut entries = Vec::new();
    if sub.host_allowed(&ctrl.hostnqn) {
        let mut e = DiscoveryLogEntry::zeroed();
        e.trtype = Disc::TRTYPE_TCP;
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

fn effects_log(csi: u8) -> CmdEffectsLog {
    leapio_controller::identify::effects_log(
        &[
            AdminOpcode::GET_LOG_PAGE,
            AdminOpcode::IDENTIFY,
            AdminOpcode::ABORT,
            AdminOpcode::SET_FEATURES,
            AdminOpcode::GET_FEATURES,
            AdminOpcode::ASYNC_EVENT_REQUEST,
            AdminOpcode::KEEP_ALIVE,
        ],
        csi,
    )
}

fn any_vwc(sub: &Subsystem) -> bool {
    sub.namespaces.iter().any(|n| n.volatile_write_cache)
}

/// I/O queues granted (1-based).
pub fn queues_granted(sub: &Subsystem, ctrl: &Controller) -> u16 {
    let g = ctrl.queues_granted.load(Ordering::Acquire);
    u16::try_from(g.min(u32::from(sub.limits.max_io_queues))).unwrap_or(1)
}

fn get_features(sub: &Subsystem, ctrl: &Controller, st: &AdminState, sqe: &Sqe) -> Reply {
    let cdw10 = sqe.cdw10.get();
    let fid = features::fid(cdw10);
    let current = match fid {
        FeatureId::KEEP_ALIVE_TIMER => ctrl.kato_ms.load(Ordering::Acquire),
        FeatureId::ASYNC_EVENT_CONFIG => st.features.async_event_config(),
        // A discovery controller has only the two above.
        _ if ctrl.discovery => return done(Status::INVALID_FIELD),
        FeatureId::NUMBER_OF_QUEUES => {
            let n = u32::from(queues_granted(sub, ctrl) - 1);
            n | (n << 16)
        }
        _ => match st.features.get(fid, any_vwc(sub)) {
            Some(Ok(v)) => v,
            Some(Err(status)) => return done(status),
            None => return done(Status::INVALID_FIELD),
        },
    };
    match features::select(cdw10, current) {
        Ok(dw0) => Reply::Done {
            status: Status::SUCCESS,
            dw0,
            data: Vec::new(),
        },
        Err(status) => done(status),
    }
}

fn set_features(sub: &Subsystem, ctrl: &Controller, st: &mut AdminState, sqe: &Sqe) -> Reply {
    let cdw10 = sqe.cdw10.get();
    let fid = features::fid(cdw10);
    if features::wants_save(cdw10) {
        return done(Status::FEATURE_NOT_SAVEABLE);
    }
    let v = sqe.cdw11.get();
    match fid {
        FeatureId::KEEP_ALIVE_TIMER => {
            ctrl.kato_ms.store(v, Ordering::Release);
            done(Status::SUCCESS)
        }
        // A discovery controller has only Keep Alive and Asynchronous Event
        // Configuration.
        _ if ctrl.discovery && fid != FeatureId::ASYNC_EVENT_CONFIG => done(Status::INVALID_FIELD),
        FeatureId::NUMBER_OF_QUEUES => set_queue_count(sub, ctrl, v),
        _ => {
            let s = st
                .features
                .set(fid, v, any_vwc(sub))
                .unwrap_or(Status::INVALID_FIELD);
            // The I/O queues write through (FUA) while the cache is off.
            let wc = st.features.write_cache_enabled();
            ctrl.write_cache.store(wc, Ordering::Release);
            done(s)
        }
    }
}

/// Set Features, Number of Queues: one count for both kinds of queue.
fn set_queue_count(sub: &Subsystem, ctrl: &Controller, v: u32) -> Reply {
    let (nsq, ncq) = match features::queue_counts_requested(v) {
        Ok(n) => n,
        Err(status) => return done(status),
    };
    if ctrl.io_queue_count() != 0 {
        return done(Status::COMMAND_SEQUENCE_ERROR);
    }
    let max = u32::from(sub.limits.max_io_queues);
    let n = nsq.min(ncq).min(max);
    ctrl.queues_granted.store(n, Ordering::Release);
    Reply::Done {
        status: Status::SUCCESS,
        dw0: (n - 1) | ((n - 1) << 16),
        data: Vec::new(),
    }
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
