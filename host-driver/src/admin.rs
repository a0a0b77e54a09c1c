//! The admin queue of the PCIe front end: queue creation and deletion and
//! Doorbell Buffer Config are this front end's; everything else is the
//! controller core's ([`AdminCore`]), told about this controller through
//! [`FrontEnd`].

use crate::controller::{ring_mapped, NvmeController};
use crate::port::{CqSetup, SqSetup};
use leapio_ats::{Access, Snapshot};
use leapio_controller::admin::{FrontEnd, Reply, ACL, AERL};
use leapio_controller::features;
use leapio_controller::identify::ControllerIdentity;
use leapio_controller::log::{Health, LogRequest};
use leapio_controller::NamespaceInfo;
use leapio_link::Shadow;
use leapio_nvme::cmd::FeatureId;
use leapio_nvme::identify::{IdentifyController, OACS_DBBUF};
use leapio_nvme::log::LogId;
use leapio_nvme::{AdminOpcode, Sqe, Status};
use std::sync::Arc;
use zerocopy::IntoBytes;

/// Result of one admin command: None means it stays outstanding (AER).
type Outcome = Option<(Status, u32)>;

/// The admin opcodes only this front end answers.
const OWN_OPCODES: [u8; 5] = [
    AdminOpcode::DELETE_SQ,
    AdminOpcode::CREATE_SQ,
    AdminOpcode::DELETE_CQ,
    AdminOpcode::CREATE_CQ,
    AdminOpcode::DOORBELL_BUFFER_CONFIG,
];

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
            AdminOpcode::CREATE_CQ => return done(self.create_cq(sqe)),
            AdminOpcode::CREATE_SQ => return done(self.create_sq(sqe)),
            AdminOpcode::DELETE_SQ => return done(self.delete_sq(sqe)),
            AdminOpcode::DELETE_CQ => return done(self.delete_cq(sqe)),
            AdminOpcode::DOORBELL_BUFFER_CONFIG => {
                return done(self.doorbell_buffer_config(snap, sqe))
            }
            _ => {}
        }
        let mut core = std::mem::take(&mut self.admin_core);
        let reply = core.execute(self, sqe);
        self.admin_core = core;
        match reply {
            Reply::Held => None,
            Reply::Done { status, dw0, data } if data.is_empty() => Some((status, dw0)),
            Reply::Done { status, dw0, data } => match self.copy_to_guest(snap, sqe, &data) {
                Ok(()) => Some((status, dw0)),
                Err(s) => done(s),
            },
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

    fn queue_counts(&self) -> (u16, u16) {
        self.features
            .queues_granted
            .unwrap_or((self.cfg.max_io_queues, self.cfg.max_io_queues))
    }

    /// Whether the host left the volatile write cache on.
    pub(crate) fn write_cache(&self) -> bool {
        self.admin_core.features().write_cache_enabled()
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
        let wc = self.write_cache();
        self.port.state(true, Some(shadow), wc);
        Status::SUCCESS
    }
}

impl FrontEnd for NvmeController {
    fn namespaces(&self) -> Arc<Vec<NamespaceInfo>> {
        self.shared.namespaces()
    }

    fn identify_controller(&self) -> IdentifyController {
        NvmeController::identify_controller(self)
    }

    fn max_transfer(&self) -> u64 {
        self.shared.mdts_bytes
    }

    fn firmware(&self) -> &str {
        &self.cfg.firmware
    }

    fn own_opcodes(&self) -> &[u8] {
        &OWN_OPCODES
    }

    fn log_page(&mut self, req: &LogRequest) -> Option<Result<Vec<u8>, Status>> {
        Some(Ok(match req.lid {
            LogId::ERROR => {
                let (_, entries) = self.shared.error_log();
                let mut v = vec![0u8; crate::shared::ERROR_LOG_ENTRIES * 64];
                for (slot, e) in v.chunks_exact_mut(64).zip(entries) {
                    slot.copy_from_slice(e.as_bytes());
                }
                v
            }
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
            _ => return None,
        }))
    }

    fn health(&self) -> Health {
        let io = self.shared.io_counts(self.cqs.keys().copied());
        Health {
            read_commands: io.read_commands,
            write_commands: io.write_commands,
            read_sectors: io.read_sectors,
            write_sectors: io.write_sectors,
            media_errors: io.media_errors,
            error_log_entries: self.shared.error_log().0,
        }
    }

    fn get_feature(&self, fid: u8, cdw11: u32) -> Option<Result<u32, Status>> {
        let f = &self.features;
        Some(Ok(match fid {
            FeatureId::NUMBER_OF_QUEUES => {
                let (s, c) = self.queue_counts();
                u32::from(s - 1) | (u32::from(c - 1) << 16)
            }
            FeatureId::INTERRUPT_COALESCING => f.coalescing,
            FeatureId::INTERRUPT_VECTOR_CONFIG => {
                let iv = (cdw11 & 0xffff) as u16;
                if iv >= self.shared.irqs.count() {
                    return Some(Err(Status::INVALID_FIELD));
                }
                f.vector_config.get(&iv).copied().unwrap_or(u32::from(iv))
            }
            FeatureId::KEEP_ALIVE_TIMER => f.keep_alive,
            _ => return None,
        }))
    }

    fn set_feature(&mut self, fid: u8, v: u32) -> Option<(Status, u32)> {
        let f = &mut self.features;
        let status = match fid {
            FeatureId::NUMBER_OF_QUEUES => {
                let (nsq, ncq) = match features::queue_counts_requested(v) {
                    Ok(n) => n,
                    Err(status) => return Some((status, 0)),
                };
                if !self.sqs.is_empty() || !self.cqs.is_empty() {
                    return Some((Status::COMMAND_SEQUENCE_ERROR, 0));
                }
                let max = u32::from(self.cfg.max_io_queues);
                let s = u16::try_from(nsq.min(max)).unwrap_or(1);
                let c = u16::try_from(ncq.min(max)).unwrap_or(1);
                f.queues_granted = Some((s, c));
                return Some((Status::SUCCESS, u32::from(s - 1) | (u32::from(c - 1) << 16)));
            }
            FeatureId::INTERRUPT_COALESCING => {
                f.coalescing = v & 0xffff;
                Status::SUCCESS
            }
            FeatureId::INTERRUPT_VECTOR_CONFIG => {
                let iv = (v & 0xffff) as u16;
                if iv >= self.shared.irqs.count() {
                    return Some((Status::INVALID_FIELD, 0));
                }
                f.vector_config.insert(iv, v & 0x1_ffff);
                Status::SUCCESS
            }
            FeatureId::KEEP_ALIVE_TIMER => {
                f.keep_alive = v;
                Status::SUCCESS
            }
            _ => return None,
        };
        Some((status, 0))
    }

    fn write_cache_changed(&mut self, enabled: bool) {
        // The runtime adds FUA to writes while it is off.
        self.port.state(true, self.shadow, enabled);
    }
}
