//! Admin command set.

use crate::controller::{ring_mapped, NvmeController};
use crate::port::{CqSetup, SqSetup};
use leapio_ats::{Access, Snapshot};
use leapio_controller::features;
use leapio_controller::identify::{identify_page, ControllerIdentity};
use leapio_controller::log::{check_smart_nsid, fw_slot_log, smart_log, Health, LogRequest};
use leapio_link::Shadow;
use leapio_nvme::cmd::FeatureId;
use leapio_nvme::identify::{IdentifyController, OACS_DBBUF};
use leapio_nvme::log::{CmdEffectsLog, LogId};
use leapio_nvme::{AdminOpcode, Sqe, Status};
use zerocopy::IntoBytes;

/// Asynchronous Event Request Limit (0's based): 4 outstanding.
pub const AERL: u8 = 3;
/// Abort Command Limit (0's based).
const ACL: u8 = 3;
/// Result of one admin command: None means it stays outstanding (AER).
type Outcome = Option<(Status, u32)>;

fn done(s: Status) -> Outcome {
    Some((s, 0))
}

impl NvmeController {
    pub(crate) fn execute_admin(&mut self, snap: &Snapshot, sqe: &Sqe) -> Outcome {
        if sqe.fuse() != 0 || sqe.psdt() != 0 {
            // No fused operations and no SGLs (SGLS = 0).
            return done(Status::INVALID_FIELD);
        }
        match sqe.opcode {
            AdminOpcode::IDENTIFY => done(self.identify(snap, sqe)),
            AdminOpcode::GET_LOG_PAGE => done(self.get_log_page(snap, sqe)),
            AdminOpcode::GET_FEATURES => self.get_features(sqe),
            AdminOpcode::SET_FEATURES => self.set_features(sqe),
            AdminOpcode::CREATE_CQ => done(self.create_cq(sqe)),
            AdminOpcode::CREATE_SQ => done(self.create_sq(sqe)),
            AdminOpcode::DELETE_SQ => done(self.delete_sq(sqe)),
            AdminOpcode::DELETE_CQ => done(self.delete_cq(sqe)),
            AdminOpcode::ASYNC_EVENT_REQUEST => {
                if self.aers.len() > usize::from(AERL) {
                    return done(Status::ASYNC_EVENT_LIMIT_EXCEEDED);
                }
                self.aers.push_back(sqe.cid.get());
                None
            }
            // Commands are never aborted: dword 0 bit 0 set says so.
            AdminOpcode::ABORT => Some((Status::SUCCESS, 1)),
            AdminOpcode::KEEP_ALIVE => done(Status::SUCCESS),
            AdminOpcode::DOORBELL_BUFFER_CONFIG => done(self.doorbell_buffer_config(snap, sqe)),
            _ => done(Status::INVALID_OPCODE),
        }
    }

    fn identify(&self, snap: &Snapshot, sqe: &Sqe) -> Status {
        let cns = (sqe.cdw10.get() & 0xff) as u8;
        let csi = (sqe.cdw11.get() >> 24) as u8;
        let namespaces = self.shared.namespaces();
        let page = identify_page(
            cns,
            csi,
            sqe.nsid.get(),
            &namespaces,
            &self.identify_controller(),
        );
        match page.and_then(|p| self.copy_to_guest(snap, sqe, &p)) {
            Ok(()) => Status::SUCCESS,
            Err(s) => s,
        }
    }

    pub(crate) fn identify_controller(&self) -> IdentifyController {
        let mut id = ControllerIdentity {
            vendor_id: leapio_nvme::identify::VENDOR_ID,
            serial: &self.cfg.serial,
            model: &self.cfg.model,
            firmware: &self.cfg.firmware,
            mdts: self.cfg.mdts,
            cntlid: self.cfg.cntlid,
            acl: ACL,
            aerl: AERL,
        }
        .page(&self.shared.namespaces());
        id.oacs = OACS_DBBUF.into();
        id.elpe = u8::try_from(crate::shared::ERROR_LOG_ENTRIES - 1).unwrap_or(0);
        // Namespace Attribute Notices: namespaces come and go with runtimes.
        id.oaes = (1u32 << 8).into();
        id.sgls = 0.into();
        let nqn = self.cfg.subnqn.as_bytes();
        let n = nqn.len().min(255);
        id.subnqn[..n].copy_from_slice(&nqn[..n]);
        id
    }

    fn get_log_page(&self, snap: &Snapshot, sqe: &Sqe) -> Status {
        let req = match LogRequest::of(sqe, self.shared.mdts_bytes) {
            Ok(r) => r,
            Err(s) => return s,
        };
        let log: Vec<u8> = match req.lid {
            LogId::ERROR => {
                let (_, entries) = self.shared.error_log();
                let mut v = vec![0u8; crate::shared::ERROR_LOG_ENTRIES * 64];
                for (slot, e) in v.chunks_exact_mut(64).zip(entries) {
                    slot.copy_from_slice(e.as_bytes());
                }
                v
            }
            LogId::SMART => {
                if let Err(s) =
                    check_smart_nsid(sqe.nsid.get(), |n| self.shared.namespace(n).is_some())
                {
                    return s;
                }
                let io = self.shared.io_counts(self.cqs.keys().copied());
                smart_log(&Health {
                    read_commands: io.read_commands,
                    write_commands: io.write_commands,
                    read_sectors: io.read_sectors,
                    write_sectors: io.write_sectors,
                    media_errors: io.media_errors,
                    error_log_entries: self.shared.error_log().0,
                })
            }
            LogId::FW_SLOT => fw_slot_log(&self.cfg.firmware),
            LogId::CHANGED_NS_LIST => {
                let mut v = vec![0u8; 4096];
                let changed = self.shared.take_changed_namespaces();
                if changed.len() > 1024 {
                    // More than the list holds: FFFFFFFFh in the first entry.
                    v[..4].copy_from_slice(&u32::MAX.to_le_bytes());
                } else {
                    for (slot, n) in v.chunks_exact_mut(4).zip(changed) {
                        slot.copy_from_slice(&n.to_le_bytes());
                    }
                }
                v
            }
            LogId::CMD_EFFECTS => self.effects_log(req.csi).as_bytes().to_vec(),
            _ => return Status::INVALID_LOG_PAGE,
        };
        match req
            .window(&log)
            .and_then(|out| self.copy_to_guest(snap, sqe, &out))
        {
            Ok(()) => Status::SUCCESS,
            Err(s) => s,
        }
    }

    fn effects_log(&self, csi: u8) -> CmdEffectsLog {
        leapio_controller::identify::effects_log(
            &[
                AdminOpcode::DELETE_SQ,
                AdminOpcode::CREATE_SQ,
                AdminOpcode::GET_LOG_PAGE,
                AdminOpcode::DELETE_CQ,
                AdminOpcode::CREATE_CQ,
                AdminOpcode::IDENTIFY,
                AdminOpcode::ABORT,
                AdminOpcode::SET_FEATURES,
                AdminOpcode::GET_FEATURES,
                AdminOpcode::ASYNC_EVENT_REQUEST,
                AdminOpcode::KEEP_ALIVE,
                AdminOpcode::DOORBELL_BUFFER_CONFIG,
            ],
            csi,
        )
    }

    fn any_vwc(&self) -> bool {
        self.shared
            .namespaces()
            .iter()
            .any(|n| n.volatile_write_cache)
    }

    fn queue_counts(&self) -> (u16, u16) {
        self.features
            .queues_granted
            .unwrap_or((self.cfg.max_io_queues, self.cfg.max_io_queues))
    }

    fn get_features(&self, sqe: &Sqe) -> Outcome {
        let cdw10 = sqe.cdw10.get();
        let fid = features::fid(cdw10);
        let f = &self.features;
        let current = match fid {
            FeatureId::NUMBER_OF_QUEUES => {
                let (s, c) = self.queue_counts();
                u32::from(s - 1) | (u32::from(c - 1) << 16)
            }
            FeatureId::INTERRUPT_COALESCING => f.coalescing,
            FeatureId::INTERRUPT_VECTOR_CONFIG => {
                let iv = (sqe.cdw11.get() & 0xffff) as u16;
                if iv >= self.shared.irqs.count() {
                    return done(Status::INVALID_FIELD);
                }
                f.vector_config.get(&iv).copied().unwrap_or(u32::from(iv))
            }
            FeatureId::KEEP_ALIVE_TIMER => f.keep_alive,
            _ => match f.common.get(fid, self.any_vwc()) {
                Some(Ok(v)) => v,
                Some(Err(status)) => return done(status),
                None => return done(Status::INVALID_FIELD),
            },
        };
        match features::select(cdw10, current) {
            Ok(dw0) => Some((Status::SUCCESS, dw0)),
            Err(status) => done(status),
        }
    }

    fn set_features(&mut self, sqe: &Sqe) -> Outcome {
        let cdw10 = sqe.cdw10.get();
        let fid = features::fid(cdw10);
        if features::wants_save(cdw10) {
            return done(Status::FEATURE_NOT_SAVEABLE);
        }
        let v = sqe.cdw11.get();
        let vwc = self.any_vwc();
        let f = &mut self.features;
        match fid {
            FeatureId::NUMBER_OF_QUEUES => {
                let (nsq, ncq) = match features::queue_counts_requested(v) {
                    Ok(n) => n,
                    Err(status) => return done(status),
                };
                if !self.sqs.is_empty() || !self.cqs.is_empty() {
                    return done(Status::COMMAND_SEQUENCE_ERROR);
                }
                let max = u32::from(self.cfg.max_io_queues);
                let s = u16::try_from(nsq.min(max)).unwrap_or(1);
                let c = u16::try_from(ncq.min(max)).unwrap_or(1);
                f.queues_granted = Some((s, c));
                Some((Status::SUCCESS, u32::from(s - 1) | (u32::from(c - 1) << 16)))
            }
            FeatureId::INTERRUPT_COALESCING => {
                f.coalescing = v & 0xffff;
                done(Status::SUCCESS)
            }
            FeatureId::INTERRUPT_VECTOR_CONFIG => {
                let iv = (v & 0xffff) as u16;
                if iv >= self.shared.irqs.count() {
                    return done(Status::INVALID_FIELD);
                }
                f.vector_config.insert(iv, v & 0x1_ffff);
                done(Status::SUCCESS)
            }
            FeatureId::KEEP_ALIVE_TIMER => {
                f.keep_alive = v;
                done(Status::SUCCESS)
            }
            FeatureId::VOLATILE_WRITE_CACHE => {
                let s = f.common.set(fid, v, vwc).unwrap_or(Status::INVALID_FIELD);
                if s == Status::SUCCESS {
                    // The runtime adds FUA to writes while it is off.
                    let wc = f.common.write_cache_enabled();
                    self.port.state(true, self.shadow, wc);
                }
                done(s)
            }
            _ => done(f.common.set(fid, v, vwc).unwrap_or(Status::INVALID_FIELD)),
        }
    }

    fn max_entries(&self) -> u32 {
        self.cfg.max_queue_entries
    }

    fn create_cq(&mut self, sqe: &Sqe) -> Status {
        let qid = (sqe.cdw10.get() & 0xffff) as u16;
        let entries = (sqe.cdw10.get() >> 16) + 1;
        let pc = sqe.cdw11.get() & 1 != 0;
        let ien = sqe.cdw11.get() & 2 != 0;
        let vector = (sqe.cdw11.get() >> 16) as u16;
        let gpa = sqe.prp1.get();
        let (_, ncq) = self.queue_counts();
        if qid == 0 || qid > ncq || self.cqs.contains_key(&qid) {
            return Status::INVALID_QUEUE_IDENTIFIER;
        }
        if entries < 2 || entries > self.max_entries() {
            return Status::INVALID_QUEUE_SIZE;
        }
        if vector >= self.shared.irqs.count() {
            return Status::INVALID_INTERRUPT_VECTOR;
        }
        if !pc || self.regs.cc().iocqes() != 4 {
            return Status::INVALID_FIELD;
        }
        if gpa % self.shared.page_size() != 0 {
            return Status::PRP_OFFSET_INVALID;
        }
        let setup = CqSetup {
            qid,
            gpa,
            entries,
            vector,
            ien,
        };
        if !ring_mapped(&self.shared, gpa, u64::from(entries) * 16, Access::Write) {
            return Status::INVALID_FIELD;
        }
        // A deleted queue's last head may still sit in the doorbell page.
        self.shared.doorbells.reset_cq(qid);
        match self.port.create_cq(setup, false) {
            Ok(()) => {
                self.cqs.insert(qid, setup);
                Status::SUCCESS
            }
            Err(s) => s,
        }
    }

    fn create_sq(&mut self, sqe: &Sqe) -> Status {
        let qid = (sqe.cdw10.get() & 0xffff) as u16;
        let entries = (sqe.cdw10.get() >> 16) + 1;
        let pc = sqe.cdw11.get() & 1 != 0;
        let cqid = (sqe.cdw11.get() >> 16) as u16;
        let gpa = sqe.prp1.get();
        let (nsq, _) = self.queue_counts();
        if qid == 0 || qid > nsq || self.sqs.contains_key(&qid) {
            return Status::INVALID_QUEUE_IDENTIFIER;
        }
        if cqid == 0 || !self.cqs.contains_key(&cqid) {
            return Status::COMPLETION_QUEUE_INVALID;
        }
        if entries < 2 || entries > self.max_entries() {
            return Status::INVALID_QUEUE_SIZE;
        }
        if !pc || self.regs.cc().iosqes() != 6 {
            return Status::INVALID_FIELD;
        }
        if gpa % self.shared.page_size() != 0 {
            return Status::PRP_OFFSET_INVALID;
        }
        if !ring_mapped(&self.shared, gpa, u64::from(entries) * 64, Access::Read) {
            return Status::INVALID_FIELD;
        }
        let setup = SqSetup {
            qid,
            cqid,
            gpa,
            entries,
        };
        // A deleted queue's last tail may still sit in the doorbell page.
        self.shared.doorbells.reset_sq(qid);
        match self.port.create_sq(setup, false) {
            Ok(()) => {
                self.sqs.insert(qid, setup);
                Status::SUCCESS
            }
            Err(s) => s,
        }
    }

    fn delete_sq(&mut self, sqe: &Sqe) -> Status {
        let qid = (sqe.cdw10.get() & 0xffff) as u16;
        if qid == 0 || !self.sqs.contains_key(&qid) {
            return Status::INVALID_QUEUE_IDENTIFIER;
        }
        match self.port.delete_sq(qid) {
            Ok(()) => {
                self.sqs.remove(&qid);
                Status::SUCCESS
            }
            Err(s) => s,
        }
    }

    fn delete_cq(&mut self, sqe: &Sqe) -> Status {
        let qid = (sqe.cdw10.get() & 0xffff) as u16;
        if qid == 0 || !self.cqs.contains_key(&qid) {
            return Status::INVALID_QUEUE_IDENTIFIER;
        }
        if self.sqs.values().any(|s| s.cqid == qid) {
            return Status::INVALID_QUEUE_DELETION;
        }
        match self.port.delete_cq(qid) {
            Ok(()) => {
                self.cqs.remove(&qid);
                Status::SUCCESS
            }
            Err(s) => s,
        }
    }

    fn doorbell_buffer_config(&mut self, snap: &Snapshot, sqe: &Sqe) -> Status {
        let dbs = sqe.prp1.get();
        let eis = sqe.prp2.get();
        let ps = self.shared.page_size();
        if dbs == 0 || eis == 0 || dbs % ps != 0 || eis % ps != 0 {
            return Status::INVALID_FIELD;
        }
        if snap.translate(dbs, ps, Access::Write).is_err()
            || snap.translate(eis, ps, Access::Write).is_err()
        {
            return Status::INVALID_FIELD;
        }
        let shadow = Shadow { dbs, eis };
        // Queues that already exist carry on from their current doorbell
        // values: seed the shadow buffer with them.
        for &qid in self.sqs.keys() {
            let _ = snap.store_u32_release(shadow.sq_tail(qid), self.shared.doorbells.sq_tail(qid));
        }
        for &qid in self.cqs.keys() {
            let _ = snap.store_u32_release(shadow.cq_head(qid), self.shared.doorbells.cq_head(qid));
        }
        self.shadow = Some(shadow);
        let wc = self.features.common.write_cache_enabled();
        self.port.state(true, Some(shadow), wc);
        Status::SUCCESS
    }
}
