//! Identify data and log pages that describe namespaces and the NVM
//! command set, shared by every front end that presents namespaces (the
//! vfio-user controller, the NVMe/TCP target).

use super::NamespaceInfo;
use crate::identify::{
    put_ascii, Cns, IdentifyController, IdentifyNamespace, LbaFormat, NidHeader, NidType,
    LPA_CMD_EFFECTS, ONCS_DSM, ONCS_WRITE_ZEROES,
};
use crate::log::{CmdEffectsLog, CSE_CSUPP, CSE_LBCC};
use crate::regs::VERSION_1_4;
use crate::IoOpcode;
use crate::Status;
use zerocopy::FromZeros;
use zerocopy::IntoBytes;

/// Identify Namespace (CNS 00h) for `ns`.
pub fn namespace_page(ns: &NamespaceInfo) -> IdentifyNamespace {
    let mut id = IdentifyNamespace::zeroed();
    id.nsze = ns.num_blocks.into();
    id.ncap = ns.num_blocks.into();
    id.nuse = ns.num_blocks.into();
    // Bit 0: thin provisioning when deallocate is supported.
    id.nsfeat = u8::from(ns.deallocate);
    // Deallocated blocks read as zeroes; Write Zeroes may deallocate.
    id.dlfeat = if ns.deallocate { 0x1 | (1 << 3) } else { 0 };
    id.lbaf[0] = LbaFormat {
        ms: 0.into(),
        lbads: u8::try_from(ns.block_size.trailing_zeros()).unwrap_or(9),
        rp: 0,
    };
    id.nguid = ns.nguid;
    id.eui64 = ns.eui64;
    id
}

/// The Identify Controller fields that follow from the namespaces: NN,
/// ONCS (DSM and Write Zeroes when every namespace supports them) and VWC.
pub fn set_namespace_fields(id: &mut IdentifyController, namespaces: &[NamespaceInfo]) {
    id.nn = max_nsid(namespaces).into();
    let all = |f: fn(&NamespaceInfo) -> bool| !namespaces.is_empty() && namespaces.iter().all(f);
    let mut oncs = 0u16;
    if all(|n| n.deallocate) {
        oncs |= ONCS_DSM;
    }
    if all(|n| n.write_zeroes) {
        oncs |= ONCS_WRITE_ZEROES;
    }
    id.oncs = oncs.into();
    // VWC present; flush with the broadcast NSID not supported (10b).
    id.vwc = if namespaces.iter().any(|n| n.volatile_write_cache) {
        0x1 | (0x2 << 1)
    } else {
        0
    };
}

/// Commands Supported and Effects: the given admin opcodes and the NVM
/// command set we execute.
pub fn effects_log(admin_opcodes: &[u8]) -> CmdEffectsLog {
    let mut e = CmdEffectsLog::new_zeroed();
    for &op in admin_opcodes {
        e.acs[usize::from(op)] = CSE_CSUPP.into();
    }
    e.iocs[usize::from(IoOpcode::FLUSH)] = CSE_CSUPP.into();
    e.iocs[usize::from(IoOpcode::READ)] = CSE_CSUPP.into();
    for op in [
        IoOpcode::WRITE,
        IoOpcode::WRITE_ZEROES,
        IoOpcode::DATASET_MANAGEMENT,
    ] {
        e.iocs[usize::from(op)] = (CSE_CSUPP | CSE_LBCC).into();
    }
    e
}

/// The fields of Identify Controller every front end fills the same way
/// (identity, limits, queue entry sizes, one read-only firmware slot, the
/// effects log page, one power state); transport fields are the caller's.
pub struct ControllerIdentity<'a> {
    pub vendor_id: u16,
    pub serial: &'a str,
    pub model: &'a str,
    pub firmware: &'a str,
    pub mdts: u8,
    pub cntlid: u16,
    /// Abort Command Limit and Asynchronous Event Request Limit (0's based).
    pub acl: u8,
    pub aerl: u8,
}

impl ControllerIdentity<'_> {
    /// Identify Controller with the common fields and the namespace fields
    /// of `namespaces`.
    pub fn page(&self, namespaces: &[NamespaceInfo]) -> IdentifyController {
        let mut id = IdentifyController::zeroed();
        id.vid = self.vendor_id.into();
        id.ssvid = self.vendor_id.into();
        put_ascii(&mut id.sn, self.serial);
        put_ascii(&mut id.mn, self.model);
        put_ascii(&mut id.fr, self.firmware);
        id.rab = 6;
        id.ieee = [0x4c, 0x45, 0x00];
        id.mdts = self.mdts;
        id.cntlid = self.cntlid.into();
        id.ver = VERSION_1_4.into();
        // Controller type: I/O controller.
        id.cntrltype = 1;
        id.acl = self.acl;
        id.aerl = self.aerl;
        // One read-only firmware slot.
        id.frmw = 0x3;
        id.lpa = LPA_CMD_EFFECTS;
        id.wctemp = 343.into();
        id.cctemp = 373.into();
        id.sqes = 0x66;
        id.cqes = 0x44;
        set_namespace_fields(&mut id, namespaces);
        id.psd[0].mp = 2500.into();
        id
    }
}

/// The data of an Identify command (CNS in CDW10, CSI in CDW11, `nsid`)
/// over `namespaces` (NSID order; NSIDs need not be contiguous), with
/// `controller` as the Identify Controller page. Identify of an inactive
/// NSID is all zeroes, as the specification says.
pub fn identify_page(
    cns: u8,
    csi: u8,
    nsid: u32,
    namespaces: &[NamespaceInfo],
    controller: &IdentifyController,
) -> Result<Vec<u8>, Status> {
    let mut page = vec![0u8; 4096];
    let find = |n: u32| namespaces.iter().find(|ns| ns.nsid == n);
    match cns {
        Cns::CONTROLLER => page.copy_from_slice(controller.as_bytes()),
        Cns::NAMESPACE => {
            if nsid == 0 || (nsid > max_nsid(namespaces) && nsid != u32::MAX) {
                return Err(Status::INVALID_NAMESPACE);
            }
            if let Some(ns) = find(nsid) {
                page.copy_from_slice(namespace_page(ns).as_bytes());
            }
        }
        Cns::ACTIVE_NAMESPACES | Cns::CS_ACTIVE_NAMESPACES => {
            if cns == Cns::CS_ACTIVE_NAMESPACES && csi != 0 {
                return Err(Status::INVALID_FIELD);
            }
            if nsid >= 0xffff_fffe {
                return Err(Status::INVALID_NAMESPACE);
            }
            for (slot, ns) in page
                .chunks_exact_mut(4)
                .zip(namespaces.iter().filter(|n| n.nsid > nsid))
            {
                slot.copy_from_slice(&ns.nsid.to_le_bytes());
            }
        }
        Cns::NS_DESCRIPTORS => {
            let ns = find(nsid).ok_or(Status::INVALID_NAMESPACE)?;
            let mut at = 0usize;
            for (kind, id) in [
                (NidType::EUI64, &ns.eui64[..]),
                (NidType::NGUID, &ns.nguid[..]),
                (NidType::UUID, &ns.uuid[..]),
                (NidType::CSI, &[0u8][..]),
            ] {
                let h = NidHeader {
                    nidt: kind,
                    nidl: u8::try_from(id.len()).unwrap_or(0),
                    rsvd: 0.into(),
                };
                page[at..at + 4].copy_from_slice(h.as_bytes());
                page[at + 4..at + 4 + id.len()].copy_from_slice(id);
                at += 4 + id.len();
            }
        }
        // NVM command set controller data: all limits "not reported".
        Cns::CS_CONTROLLER if csi == 0 => {}
        _ => return Err(Status::INVALID_FIELD),
    }
    Ok(page)
}

/// The highest NSID (Identify Controller NN).
pub fn max_nsid(namespaces: &[NamespaceInfo]) -> u32 {
    namespaces.iter().map(|n| n.nsid).max().unwrap_or(0)
}
