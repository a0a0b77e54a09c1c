//! Identify data and log pages that describe namespaces and the NVM
//! command set, shared by every front end that presents namespaces (the
//! vfio-user controller, the NVMe/TCP target).

use super::NamespaceInfo;
use crate::identify::{
    IdentifyController, IdentifyNamespace, LbaFormat, ONCS_DSM, ONCS_WRITE_ZEROES,
};
use crate::log::{CmdEffectsLog, CSE_CSUPP, CSE_LBCC};
use crate::IoOpcode;
use zerocopy::FromZeros;

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
    id.nn = u32::try_from(namespaces.len()).unwrap_or(0).into();
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
