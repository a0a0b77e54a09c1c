//! Identify data and log pages that describe namespaces and the NVM
//! command set, shared by every front end that presents namespaces (the
//! vfio-user controller, the NVMe/TCP target).

use crate::{NamespaceInfo, ZonedInfo};
use leapio_nvme::identify::{
    put_ascii, Cns, IdentifyController, IdentifyNamespace, LbaFormat, NidHeader, NidType,
    LPA_CMD_EFFECTS, ONCS_DSM, ONCS_WRITE_ZEROES,
};
use leapio_nvme::log::{CmdEffectsLog, CSE_CSUPP, CSE_LBCC};
use leapio_nvme::regs::VERSION_1_4;
use leapio_nvme::zns::{Csi, IdentifyNamespaceZns, OZCS_RAZB};
use leapio_nvme::IoOpcode;
use leapio_nvme::Status;
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

/// I/O Command Set specific Identify Namespace for ZNS (CNS 05h, CSI 02h):
/// no zone operation characteristics, reads may cross zones, the open and
/// active limits (0's based), the zone size of the one LBA format.
pub fn zns_namespace_page(z: &ZonedInfo) -> IdentifyNamespaceZns {
    let mut id = IdentifyNamespaceZns::zeroed();
    id.zoc = 0.into();
    id.ozcs = OZCS_RAZB.into();
    id.mar = z.max_active.saturating_sub(1).into();
    id.mor = z.max_open.saturating_sub(1).into();
    id.lbafe[0].zsze = z.zone_blocks.into();
    id
}

/// Commands Supported and Effects of command set `csi`: the given admin
/// opcodes and the I/O commands we execute (for ZNS, the NVM ones and Zone
/// Management Send/Receive and Zone Append).
pub fn effects_log(admin_opcodes: &[u8], csi: u8) -> CmdEffectsLog {
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
    if csi == Csi::ZNS {
        e.iocs[usize::from(IoOpcode::ZONE_MGMT_RECV)] = CSE_CSUPP.into();
        for op in [IoOpcode::ZONE_MGMT_SEND, IoOpcode::ZONE_APPEND] {
            e.iocs[usize::from(op)] = (CSE_CSUPP | CSE_LBCC).into();
        }
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
            if cns == Cns::CS_ACTIVE_NAMESPACES && csi != Csi::NVM && csi != Csi::ZNS {
                return Err(Status::INVALID_FIELD);
            }
            if nsid >= 0xffff_fffe {
                return Err(Status::INVALID_NAMESPACE);
            }
            let listed = |n: &&NamespaceInfo| {
                n.nsid > nsid && (cns == Cns::ACTIVE_NAMESPACES || n.csi() == csi)
            };
            for (slot, ns) in page
                .chunks_exact_mut(4)
                .zip(namespaces.iter().filter(listed))
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
                (NidType::CSI, &[ns.csi()][..]),
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
        // Command set specific namespace data: ZNS for zoned namespaces;
        // NVM: nothing beyond Identify Namespace (all zeroes).
        Cns::CS_NAMESPACE if csi == Csi::NVM || csi == Csi::ZNS => {
            if nsid == 0 || nsid == u32::MAX || nsid > max_nsid(namespaces) {
                return Err(Status::INVALID_NAMESPACE);
            }
            if let Some(ns) = find(nsid) {
                match (csi, &ns.zoned) {
                    (Csi::ZNS, Some(z)) => page.copy_from_slice(zns_namespace_page(z).as_bytes()),
                    (Csi::ZNS, None) => return Err(Status::INVALID_FIELD),
                    _ => {}
                }
            }
        }
        // Command set specific controller data: NVM, all limits "not
        // reported"; ZNS, ZASL 0: Zone Append up to MDTS.
        Cns::CS_CONTROLLER if csi == Csi::NVM || csi == Csi::ZNS => {}
        // I/O Command Set profile: one combination, NVM and ZNS.
        Cns::IO_COMMAND_SETS => {
            let sets: u64 = (1 << Csi::NVM) | (1 << Csi::ZNS);
            page[..8].copy_from_slice(&sets.to_le_bytes());
        }
        _ => return Err(Status::INVALID_FIELD),
    }
    Ok(page)
}

/// The highest NSID (Identify Controller NN).
pub fn max_nsid(namespaces: &[NamespaceInfo]) -> u32 {
    namespaces.iter().map(|n| n.nsid).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use leapio_nvme::identify::IdentifyController;
    use leapio_nvme::zns::{IdentifyNamespaceZns, ZnsLbaFormatExt};
    use zerocopy::FromBytes;

    fn ns(nsid: u32, zoned: bool) -> NamespaceInfo {
        let (nguid, eui64, uuid) = crate::namespace_ids("S", nsid);
        NamespaceInfo {
            nsid,
            block_size: 4096,
            num_blocks: 1024,
            volatile_write_cache: true,
            write_zeroes: !zoned,
            deallocate: !zoned,
            zoned: zoned.then_some(ZonedInfo {
                zone_blocks: 256,
                capacity: 200,
                max_open: 4,
                max_active: 6,
            }),
            nguid,
            eui64,
            uuid,
        }
    }

    fn page(cns: u8, csi: u8, nsid: u32, nss: &[NamespaceInfo]) -> Result<Vec<u8>, Status> {
        identify_page(cns, csi, nsid, nss, &IdentifyController::zeroed())
    }

    #[test]
    fn zoned_namespace_pages() {
        let nss = [ns(1, false), ns(2, true)];
        let p = page(Cns::CS_NAMESPACE, Csi::ZNS, 2, &nss).unwrap();
        let z = IdentifyNamespaceZns::read_from_bytes(&p).unwrap();
        assert_eq!((z.zoc.get(), z.ozcs.get()), (0, OZCS_RAZB));
        assert_eq!((z.mor.get(), z.mar.get()), (3, 5), "0's based");
        let f: ZnsLbaFormatExt = z.lbafe[0];
        assert_eq!(f.zsze.get(), 256);
        // ZNS data of a conventional namespace, bad NSIDs.
        assert_eq!(
            page(Cns::CS_NAMESPACE, Csi::ZNS, 1, &nss),
            Err(Status::INVALID_FIELD)
        );
        assert_eq!(
            page(Cns::CS_NAMESPACE, Csi::ZNS, 9, &nss),
            Err(Status::INVALID_NAMESPACE)
        );
        assert_eq!(
            page(Cns::CS_NAMESPACE, 7, 2, &nss),
            Err(Status::INVALID_FIELD)
        );
        assert!(page(Cns::CS_NAMESPACE, Csi::NVM, 1, &nss)
            .unwrap()
            .iter()
            .all(|&b| b == 0));
        // ZNS controller data: ZASL 0 (Zone Append up to MDTS).
        assert!(page(Cns::CS_CONTROLLER, Csi::ZNS, 0, &nss)
            .unwrap()
            .iter()
            .all(|&b| b == 0));
        // The command sets: NVM and ZNS.
        let p = page(Cns::IO_COMMAND_SETS, 0, 0, &nss).unwrap();
        assert_eq!(u64::from_le_bytes(p[..8].try_into().unwrap()), 0b101);
        // Active namespaces of a command set.
        let list = |csi| {
            let p = page(Cns::CS_ACTIVE_NAMESPACES, csi, 0, &nss).unwrap();
            u32::from_le_bytes(p[..4].try_into().unwrap())
        };
        assert_eq!((list(Csi::NVM), list(Csi::ZNS)), (1, 2));
        // The CSI descriptor.
        let csi_of = |nsid| {
            let p = page(Cns::NS_DESCRIPTORS, 0, nsid, &nss).unwrap();
            let mut at = 0;
            loop {
                let (t, l) = (p[at], usize::from(p[at + 1]));
                if t == NidType::CSI {
                    return p[at + 4];
                }
                assert_ne!(l, 0, "no CSI descriptor");
                at += 4 + l;
            }
        };
        assert_eq!((csi_of(1), csi_of(2)), (Csi::NVM, Csi::ZNS));
    }

    #[test]
    fn effects_log_lists_zone_commands_for_zns() {
        let supported =
            |csi, op: u8| effects_log(&[], csi).iocs[usize::from(op)].get() & CSE_CSUPP != 0;
        for op in [
            IoOpcode::ZONE_APPEND,
            IoOpcode::ZONE_MGMT_SEND,
            IoOpcode::ZONE_MGMT_RECV,
        ] {
            assert!(supported(Csi::ZNS, op));
            assert!(!supported(Csi::NVM, op));
        }
        assert!(supported(Csi::ZNS, IoOpcode::WRITE));
    }
}
