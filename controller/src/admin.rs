//! The admin commands every front end answers the same way: Identify, Get
//! Log Page (SMART / Health, Firmware Slot, Commands Supported and
//! Effects), Get and Set Features (the values in [`CommonFeatures`]),
//! Asynchronous Event Request, Abort and Keep Alive. What is the
//! transport's (queue creation and deletion, Doorbell Buffer Config over
//! PCIe; Connect, properties and authentication over a fabric; its own log
//! pages and features) the front end answers itself, before or through its
//! [`FrontEnd`].

use crate::features::{self, CommonFeatures};
use crate::identify::{effects_log, identify_page};
use crate::log::{check_smart_nsid, fw_slot_log, smart_log, Health, LogRequest};
use crate::NamespaceInfo;
use leapio_nvme::cmd::FeatureId;
use leapio_nvme::identify::IdentifyController;
use leapio_nvme::log::LogId;
use leapio_nvme::{AdminOpcode, Sqe, Status};
use std::collections::VecDeque;
use std::sync::Arc;
use zerocopy::IntoBytes;

/// Asynchronous Event Request Limit (0's based): 4 outstanding.
pub const AERL: u8 = 3;
/// Abort Command Limit (0's based).
pub const ACL: u8 = 3;

/// The admin opcodes [`AdminCore`] answers.
pub const CORE_OPCODES: [u8; 7] = [
    AdminOpcode::GET_LOG_PAGE,
    AdminOpcode::IDENTIFY,
    AdminOpcode::ABORT,
    AdminOpcode::SET_FEATURES,
    AdminOpcode::GET_FEATURES,
    AdminOpcode::ASYNC_EVENT_REQUEST,
    AdminOpcode::KEEP_ALIVE,
];

/// What an admin command did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Complete with this status and dword 0; `data` goes to the host's
    /// buffer first (PRPs, or C2HData).
    Done {
        status: Status,
        dw0: u32,
        data: Vec<u8>,
    },
    /// Stays outstanding (Asynchronous Event Request).
    Held,
}

impl Reply {
    /// Complete with `status`, no data.
    pub fn status(status: Status) -> Reply {
        Reply::Done {
            status,
            dw0: 0,
            data: Vec::new(),
        }
    }

    /// Success with dword 0 `dw0`.
    pub fn value(dw0: u32) -> Reply {
        Reply::Done {
            status: Status::SUCCESS,
            dw0,
            data: Vec::new(),
        }
    }

    /// Success with `data` for the host's buffer.
    pub fn data(data: Vec<u8>) -> Reply {
        Reply::Done {
            status: Status::SUCCESS,
            dw0: 0,
            data,
        }
    }
}

/// What a front end tells the admin core about its controller.
pub trait FrontEnd {
    /// The namespaces as the host sees them, in NSID order.
    fn namespaces(&self) -> Arc<Vec<NamespaceInfo>>;
    /// Identify Controller, with the front end's identity and transport
    /// fields.
    fn identify_controller(&self) -> IdentifyController;
    /// The most bytes one command's data may hold (MDTS).
    fn max_transfer(&self) -> u64;
    /// Firmware revision (Firmware Slot Information).
    fn firmware(&self) -> &str;
    /// The admin opcodes the front end answers itself besides
    /// [`CORE_OPCODES`] (Commands Supported and Effects).
    fn own_opcodes(&self) -> &[u8];
    /// A log page of the front end's (error information, changed
    /// namespaces, discovery), or None for the core's.
    fn log_page(&mut self, req: &LogRequest) -> Option<Result<Vec<u8>, Status>>;
    /// SMART / Health Information's counts.
    fn health(&self) -> Health;
    /// Get Features of a feature of the front end's (queue counts,
    /// interrupts, keep alive), or None for the core's.
    fn get_feature(&self, fid: u8, cdw11: u32) -> Option<Result<u32, Status>>;
    /// Set Features of a feature of the front end's: (status, dword 0), or
    /// None for the core's.
    fn set_feature(&mut self, fid: u8, cdw11: u32) -> Option<(Status, u32)>;
    /// The host set Volatile Write Cache: disabled, writes must be durable
    /// when they complete.
    fn write_cache_changed(&mut self, enabled: bool);
}

/// One controller's admin state kept the same way by every front end: the
/// common feature values and the outstanding Asynchronous Event Requests.
/// It serializes, so that a host-driver that is replaced keeps it.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct AdminCore {
    features: CommonFeatures,
    aers: VecDeque<u16>,
}

impl AdminCore {
    /// Run one admin command that is not the front end's own.
    pub fn execute(&mut self, fe: &mut dyn FrontEnd, sqe: &Sqe) -> Reply {
        if sqe.fuse() != 0 {
            // No fused operations.
            return Reply::status(Status::INVALID_FIELD);
        }
        match sqe.opcode {
            AdminOpcode::IDENTIFY => {
                let cns = (sqe.cdw10.get() & 0xff) as u8;
                let csi = (sqe.cdw11.get() >> 24) as u8;
                let page = identify_page(
                    cns,
                    csi,
                    sqe.nsid.get(),
                    &fe.namespaces(),
                    &fe.identify_controller(),
                );
                page.map_or_else(Reply::status, Reply::data)
            }
            AdminOpcode::GET_LOG_PAGE => self
                .log_page(fe, sqe)
                .map_or_else(Reply::status, Reply::data),
            AdminOpcode::GET_FEATURES => self.get_features(fe, sqe),
            AdminOpcode::SET_FEATURES => self.set_features(fe, sqe),
            AdminOpcode::ASYNC_EVENT_REQUEST => {
                if self.aers.len() > usize::from(AERL) {
                    return Reply::status(Status::ASYNC_EVENT_LIMIT_EXCEEDED);
                }
                self.aers.push_back(sqe.cid.get());
                Reply::Held
            }
            // Commands are never aborted: dword 0 bit 0 set says so.
            AdminOpcode::ABORT => Reply::value(1),
            AdminOpcode::KEEP_ALIVE => Reply::status(Status::SUCCESS),
            _ => Reply::status(Status::INVALID_OPCODE),
        }
    }

    fn log_page(&self, fe: &mut dyn FrontEnd, sqe: &Sqe) -> Result<Vec<u8>, Status> {
        let req = LogRequest::of(sqe, fe.max_transfer())?;
        let log = match fe.log_page(&req) {
            Some(log) => log?,
            None => match req.lid {
                LogId::SMART => {
                    let namespaces = fe.namespaces();
                    check_smart_nsid(sqe.nsid.get(), |n| namespaces.iter().any(|ns| ns.nsid == n))?;
                    smart_log(&fe.health())
                }
                LogId::FW_SLOT => fw_slot_log(fe.firmware()),
                LogId::CMD_EFFECTS => {
                    let mut ops = CORE_OPCODES.to_vec();
                    ops.extend_from_slice(fe.own_opcodes());
                    effects_log(&ops, req.csi).as_bytes().to_vec()
                }
                _ => return Err(Status::INVALID_LOG_PAGE),
            },
        };
        req.window(&log)
    }

    fn get_features(&self, fe: &dyn FrontEnd, sqe: &Sqe) -> Reply {
        let cdw10 = sqe.cdw10.get();
        let fid = features::fid(cdw10);
        let current = match fe.get_feature(fid, sqe.cdw11.get()) {
            Some(r) => r,
            None => self
                .features
                .get(fid, any_vwc(fe))
                .unwrap_or(Err(Status::INVALID_FIELD)),
        };
        match current.and_then(|v| features::select(cdw10, v)) {
            Ok(dw0) => Reply::value(dw0),
            Err(status) => Reply::status(status),
        }
    }

    fn set_features(&mut self, fe: &mut dyn FrontEnd, sqe: &Sqe) -> Reply {
        let cdw10 = sqe.cdw10.get();
        let fid = features::fid(cdw10);
        if features::wants_save(cdw10) {
            return Reply::status(Status::FEATURE_NOT_SAVEABLE);
        }
        let v = sqe.cdw11.get();
        if let Some((status, dw0)) = fe.set_feature(fid, v) {
            return Reply::Done {
                status,
                dw0,
                data: Vec::new(),
            };
        }
        let vwc = any_vwc(fe);
        let status = self
            .features
            .set(fid, v, vwc)
            .unwrap_or(Status::INVALID_FIELD);
        if fid == FeatureId::VOLATILE_WRITE_CACHE && status.is_success() {
            fe.write_cache_changed(self.features.write_cache_enabled());
        }
        Reply::status(status)
    }

    /// The feature values kept here.
    pub fn features(&self) -> &CommonFeatures {
        &self.features
    }

    /// Whether an Asynchronous Event Request waits for an event.
    pub fn aer_outstanding(&self) -> bool {
        !self.aers.is_empty()
    }

    /// The oldest outstanding Asynchronous Event Request (its CID), to
    /// complete with an event.
    pub fn take_aer(&mut self) -> Option<u16> {
        self.aers.pop_front()
    }

    /// Controller reset: features at their defaults, outstanding requests
    /// gone.
    pub fn reset(&mut self) {
        *self = AdminCore::default();
    }
}

/// Whether any namespace has a volatile write cache (without one the
/// feature does not exist).
fn any_vwc(fe: &dyn FrontEnd) -> bool {
    fe.namespaces().iter().any(|n| n.volatile_write_cache)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identify::ControllerIdentity;
    use leapio_nvme::identify::Cns;
    use leapio_nvme::log::{CmdEffectsLog, CSE_CSUPP};
    use zerocopy::FromBytes;

    /// A front end with one namespace and one feature of its own (Number
    /// of Queues), recording what the core told it.
    struct Fake {
        namespaces: Arc<Vec<NamespaceInfo>>,
        queues: u32,
        write_cache: Option<bool>,
    }

    impl FrontEnd for Fake {
        fn namespaces(&self) -> Arc<Vec<NamespaceInfo>> {
            self.namespaces.clone()
        }
        fn identify_controller(&self) -> IdentifyController {
            ControllerIdentity {
                vendor_id: leapio_nvme::identify::VENDOR_ID,
                serial: "S1",
                model: "M",
                firmware: "F",
                mdts: 5,
                cntlid: 7,
                acl: ACL,
                aerl: AERL,
            }
            .page(&self.namespaces)
        }
        fn max_transfer(&self) -> u64 {
            128 << 10
        }
        fn firmware(&self) -> &str {
            "F"
        }
        fn own_opcodes(&self) -> &[u8] {
            &[AdminOpcode::CREATE_SQ]
        }
        fn log_page(&mut self, req: &LogRequest) -> Option<Result<Vec<u8>, Status>> {
            (req.lid == LogId::ERROR).then(|| Ok(vec![0xee; 64]))
        }
        fn health(&self) -> Health {
            Health {
                read_commands: 5,
                ..Health::default()
            }
        }
        fn get_feature(&self, fid: u8, _cdw11: u32) -> Option<Result<u32, Status>> {
            (fid == FeatureId::NUMBER_OF_QUEUES).then_some(Ok(self.queues))
        }
        fn set_feature(&mut self, fid: u8, cdw11: u32) -> Option<(Status, u32)> {
            if fid != FeatureId::NUMBER_OF_QUEUES {
                return None;
            }
            self.queues = cdw11;
            Some((Status::SUCCESS, cdw11))
        }
        fn write_cache_changed(&mut self, enabled: bool) {
            self.write_cache = Some(enabled);
        }
    }

    fn fake() -> Fake {
        let (nguid, eui64, uuid) = crate::namespace_ids("S1", 1);
        Fake {
            namespaces: Arc::new(vec![NamespaceInfo {
                nsid: 1,
                block_size: 512,
                num_blocks: 1024,
                volatile_write_cache: true,
                write_zeroes: true,
                deallocate: true,
                zoned: None,
                nguid,
                eui64,
                uuid,
            }]),
            queues: 0x0003_0003,
            write_cache: None,
        }
    }

    fn cmd(opcode: u8, cdw10: u32, cdw11: u32) -> Sqe {
        let mut s = Sqe {
            opcode,
            ..Default::default()
        };
        s.cdw10 = cdw10.into();
        s.cdw11 = cdw11.into();
        s
    }

    fn data(r: Reply) -> Vec<u8> {
        match r {
            Reply::Done {
                status: Status::SUCCESS,
                data,
                ..
            } => data,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn identify_and_logs_come_from_the_front_end_and_the_core() {
        let (mut core, mut fe) = (AdminCore::default(), fake());
        let page = data(core.execute(
            &mut fe,
            &cmd(AdminOpcode::IDENTIFY, u32::from(Cns::CONTROLLER), 0),
        ));
        let id = IdentifyController::read_from_bytes(&page).unwrap();
        assert_eq!((id.cntlid.get(), id.nn.get()), (7, 1));
        // Get Log Page: 64 bytes (NUMD 15) of the front end's error log...
        let log = |lid: u8| cmd(AdminOpcode::GET_LOG_PAGE, u32::from(lid) | (15 << 16), 0);
        assert_eq!(
            data(core.execute(&mut fe, &log(LogId::ERROR))),
            vec![0xee; 64]
        );
        // ...and the core's effects log, listing the front end's opcodes.
        let full = cmd(
            AdminOpcode::GET_LOG_PAGE,
            u32::from(LogId::CMD_EFFECTS) | (1023 << 16),
            0,
        );
        let e = CmdEffectsLog::read_from_bytes(&data(core.execute(&mut fe, &full))).unwrap();
        for op in [AdminOpcode::CREATE_SQ, AdminOpcode::KEEP_ALIVE] {
            assert_ne!(e.acs[usize::from(op)].get() & CSE_CSUPP, 0);
        }
        assert_eq!(e.acs[usize::from(AdminOpcode::DELETE_SQ)].get(), 0);
        // Health counts are the front end's; an unknown log is refused.
        let smart = data(core.execute(
            &mut fe,
            &cmd(
                AdminOpcode::GET_LOG_PAGE,
                u32::from(LogId::SMART) | (127 << 16),
                0,
            ),
        ));
        assert_eq!(smart[64], 5, "host read commands");
        assert_eq!(
            core.execute(&mut fe, &log(0x7f)),
            Reply::status(Status::INVALID_LOG_PAGE)
        );
    }

    #[test]
    fn features_aers_and_reset() {
        let (mut core, mut fe) = (AdminCore::default(), fake());
        let get = |fid: u8| cmd(AdminOpcode::GET_FEATURES, u32::from(fid), 0);
        let set = |fid: u8, v: u32| cmd(AdminOpcode::SET_FEATURES, u32::from(fid), v);
        // The front end's feature, then the core's.
        assert_eq!(
            core.execute(&mut fe, &get(FeatureId::NUMBER_OF_QUEUES)),
            Reply::value(0x0003_0003)
        );
        assert_eq!(
            core.execute(&mut fe, &set(FeatureId::NUMBER_OF_QUEUES, 1)),
            Reply::value(1)
        );
        assert_eq!(fe.queues, 1);
        assert_eq!(
            core.execute(&mut fe, &set(FeatureId::VOLATILE_WRITE_CACHE, 0)),
            Reply::status(Status::SUCCESS)
        );
        assert_eq!(fe.write_cache, Some(false), "the front end hears of it");
        assert_eq!(
            core.execute(&mut fe, &get(FeatureId::VOLATILE_WRITE_CACHE)),
            Reply::value(0)
        );
        assert_eq!(
            core.execute(
                &mut fe,
                &cmd(
                    AdminOpcode::SET_FEATURES,
                    u32::from(FeatureId::ARBITRATION) | (1 << 31),
                    0
                )
            ),
            Reply::status(Status::FEATURE_NOT_SAVEABLE)
        );
        assert_eq!(
            core.execute(&mut fe, &get(0x7e)),
            Reply::status(Status::INVALID_FIELD)
        );
        // Four AERs are held, the fifth is over the limit.
        for cid in 1..=4u16 {
            let mut c = cmd(AdminOpcode::ASYNC_EVENT_REQUEST, 0, 0);
            c.cid = cid.into();
            assert_eq!(core.execute(&mut fe, &c), Reply::Held);
        }
        assert_eq!(
            core.execute(&mut fe, &cmd(AdminOpcode::ASYNC_EVENT_REQUEST, 0, 0)),
            Reply::status(Status::ASYNC_EVENT_LIMIT_EXCEEDED)
        );
        assert_eq!(core.take_aer(), Some(1));
        // Abort never aborts; fused commands and unknown opcodes are refused.
        assert_eq!(
            core.execute(&mut fe, &cmd(AdminOpcode::ABORT, 0, 0)),
            Reply::value(1)
        );
        let mut fused = cmd(AdminOpcode::IDENTIFY, 1, 0);
        fused.flags = 1;
        assert_eq!(
            core.execute(&mut fe, &fused),
            Reply::status(Status::INVALID_FIELD)
        );
        assert_eq!(
            core.execute(&mut fe, &cmd(0xc5, 0, 0)),
            Reply::status(Status::INVALID_OPCODE)
        );
        core.reset();
        assert!(!core.aer_outstanding());
        assert!(core.features().write_cache_enabled());
    }
}
