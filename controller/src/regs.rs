//! The controller's registers (CAP, VS, CC, CSTS, AQA, ASQ, ACQ) and what
//! writing CC does: enable, disable (a controller reset), shutdown. A PCIe
//! front end reaches them through BAR0, a fabrics front end through
//! Property Get and Property Set; either way the state machine is this one,
//! and the front end carries out the [`Change`]s it reports (creating the
//! admin queue, deleting queues, making writes durable).

use leapio_nvme::regs::{csts, offset, Cap, Cc, VERSION_1_4};
use leapio_nvme::zns::{CC_CSS_ALL, CC_CSS_NVM};
use leapio_nvme::Status;

/// The admin queue as AQA, ASQ and ACQ describe it (PCIe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminQueueRegs {
    pub asq: u64,
    pub acq: u64,
    /// Entries (1-based).
    pub sq_entries: u32,
    pub cq_entries: u32,
}

/// What a write to CC asked of the controller, for its front end to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// CC.EN 0 -> 1, accepted: CSTS.RDY is set. The host's memory page
    /// size, and (PCIe) its admin queue.
    Enabled {
        page_size: u64,
        admin: Option<AdminQueueRegs>,
    },
    /// CC.EN 0 -> 1, refused: CSTS.CFS is set.
    EnableRefused(&'static str),
    /// CC.EN 1 -> 0: reset the controller (queues, features, outstanding
    /// events), then [`Registers::reset_done`].
    Disabled,
    /// CC.SHN set: CSTS.SHST says "occurring"; make what was written
    /// durable, then [`Registers::shutdown_complete`].
    Shutdown,
}

/// The register values [`Registers::saved`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedRegisters {
    pub cc: u32,
    pub csts: u32,
    pub aqa: u32,
    pub asq: u64,
    pub acq: u64,
}

/// The register file of one controller.
#[derive(Clone, Debug)]
pub struct Registers {
    cap: Cap,
    cc: u32,
    csts: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    /// The admin queue lives in host memory (AQA, ASQ, ACQ: PCIe); over a
    /// fabric it is the connection the host set up with Connect.
    admin_in_memory: bool,
}

impl Registers {
    /// A PCIe controller's registers: the admin queue in host memory.
    pub fn pcie(cap: Cap) -> Registers {
        Registers::new(cap, true)
    }

    /// A fabrics controller's registers: no AQA, ASQ, ACQ.
    pub fn fabrics(cap: Cap) -> Registers {
        Registers::new(cap, false)
    }

    fn new(cap: Cap, admin_in_memory: bool) -> Registers {
        Registers {
            cap,
            cc: 0,
            csts: 0,
            aqa: 0,
            asq: 0,
            acq: 0,
            admin_in_memory,
        }
    }

    pub fn cap(&self) -> Cap {
        self.cap
    }

    /// What the host wrote and the controller's status, to be given to
    /// [`Registers::restore`] of a controller with the same capabilities
    /// (a host-driver that is replaced keeps them).
    pub fn saved(&self) -> SavedRegisters {
        SavedRegisters {
            cc: self.cc,
            csts: self.csts,
            aqa: self.aqa,
            asq: self.asq,
            acq: self.acq,
        }
    }

    /// Take the values [`Registers::saved`] gave.
    pub fn restore(&mut self, s: &SavedRegisters) {
        self.cc = s.cc;
        self.csts = s.csts;
        self.aqa = s.aqa;
        self.asq = s.asq;
        self.acq = s.acq;
    }

    pub fn cc(&self) -> Cc {
        Cc(self.cc)
    }

    /// CSTS (RDY, CFS, SHST).
    pub fn csts(&self) -> u32 {
        self.csts
    }

    /// CSTS.RDY: the controller takes commands.
    pub fn ready(&self) -> bool {
        self.csts & csts::RDY != 0
    }

    /// Register `offset` read as `size` bytes (4 or 8), or None where there
    /// is no register of that size (Invalid Field for a Property Get).
    pub fn read(&self, off: u64, size: u8) -> Option<u64> {
        Some(match (off, size) {
            (offset::CAP, 8) => self.cap.to_u64(),
            (offset::VS, 4) => u64::from(VERSION_1_4),
            (offset::CC, 4) => u64::from(self.cc),
            (offset::CSTS, 4) => u64::from(self.csts),
            // NVM Subsystem Reset is not supported (CAP.NSSRS = 0).
            (offset::NSSR, 4) => 0,
            (offset::AQA, 4) if self.admin_in_memory => u64::from(self.aqa),
            (offset::ASQ, 8) if self.admin_in_memory => self.asq,
            (offset::ACQ, 8) if self.admin_in_memory => self.acq,
            _ => return None,
        })
    }

    /// The registers below the doorbells as a PCIe BAR0 shows them.
    pub fn image(&self) -> [u8; 0x40] {
        let mut r = [0u8; 0x40];
        for (off, size) in [
            (offset::CAP, 8),
            (offset::VS, 4),
            (offset::CC, 4),
            (offset::CSTS, 4),
            (offset::AQA, 4),
            (offset::ASQ, 8),
            (offset::ACQ, 8),
        ] {
            let v = self.read(off, size).unwrap_or(0).to_le_bytes();
            let (o, n) = (usize::try_from(off).unwrap_or(0), usize::from(size));
            r[o..o + n].copy_from_slice(&v[..n]);
        }
        r
    }

    /// A 32-bit write at `off` (a 64-bit register is written as two):
    /// CC, AQA, ASQ and ACQ take it, everything else is read-only (INTMS
    /// and INTMC only apply to pin-based and MSI interrupts; NSSR is not
    /// supported).
    pub fn write_dword(&mut self, off: u64, v: u32) -> Vec<Change> {
        let lo = |old: u64| (old & !0xffff_ffff) | u64::from(v);
        let hi = |old: u64| (old & 0xffff_ffff) | (u64::from(v) << 32);
        match off {
            offset::CC => return self.write_cc(v),
            offset::AQA if self.admin_in_memory => self.aqa = v & 0x0fff_0fff,
            offset::ASQ if self.admin_in_memory => self.asq = lo(self.asq),
            o if o == offset::ASQ + 4 && self.admin_in_memory => self.asq = hi(self.asq),
            offset::ACQ if self.admin_in_memory => self.acq = lo(self.acq),
            o if o == offset::ACQ + 4 && self.admin_in_memory => self.acq = hi(self.acq),
            _ => {}
        }
        Vec::new()
    }

    /// Property Set: only CC is writable over a fabric.
    pub fn property_set(&mut self, off: u64, size: u8, value: u64) -> Result<Vec<Change>, Status> {
        if size != 4 || off != offset::CC {
            return Err(Status::INVALID_FIELD);
        }
        Ok(self.write_cc(u32::try_from(value & 0xffff_ffff).unwrap_or(0)))
    }

    fn write_cc(&mut self, v: u32) -> Vec<Change> {
        let (old, new) = (Cc(self.cc), Cc(v));
        self.cc = v;
        let mut changes = Vec::new();
        if new.en() && !old.en() {
            match self.enable_check(new) {
                Ok(change) => {
                    self.csts = csts::RDY;
                    changes.push(change);
                }
                Err(why) => {
                    self.csts |= csts::CFS;
                    changes.push(Change::EnableRefused(why));
                }
            }
        } else if old.en() && !new.en() {
            changes.push(Change::Disabled);
        }
        if new.shn() != 0 && old.shn() == 0 {
            self.csts = (self.csts & !csts::SHST_MASK) | csts::SHST_OCCURRING;
            changes.push(Change::Shutdown);
        } else if new.shn() == 0 {
            self.csts &= !csts::SHST_MASK;
        }
        changes
    }

    fn enable_check(&self, cc: Cc) -> Result<Change, &'static str> {
        if cc.css() != CC_CSS_NVM && cc.css() != CC_CSS_ALL {
            return Err("unsupported command set (CC.CSS)");
        }
        if cc.mps() < u32::from(self.cap.mpsmin) || cc.mps() > u32::from(self.cap.mpsmax) {
            return Err("memory page size outside CAP.MPSMIN..MPSMAX");
        }
        if cc.ams() != 0 {
            return Err("unsupported arbitration mechanism");
        }
        let admin = if self.admin_in_memory {
            let a = AdminQueueRegs {
                asq: self.asq,
                acq: self.acq,
                sq_entries: (self.aqa & 0xfff) + 1,
                cq_entries: ((self.aqa >> 16) & 0xfff) + 1,
            };
            if a.sq_entries < 2 || a.cq_entries < 2 {
                return Err("admin queue smaller than 2 entries");
            }
            if a.asq == 0 || a.acq == 0 || a.asq & 0xfff != 0 || a.acq & 0xfff != 0 {
                return Err("admin queue address zero or not page aligned");
            }
            Some(a)
        } else {
            None
        };
        Ok(Change::Enabled {
            page_size: 4096u64 << cc.mps(),
            admin,
        })
    }

    /// The front end finished the reset [`Change::Disabled`] asked for:
    /// RDY and CFS clear (SHST stays). If it could not (a queue it could
    /// not take back), RDY stays set, as on a controller that has not
    /// finished its reset, and the host's next reset tries again.
    pub fn reset_done(&mut self, complete: bool) {
        if complete {
            self.csts &= csts::SHST_MASK;
        }
    }

    /// The front end made everything durable after [`Change::Shutdown`]:
    /// SHST says "complete", unless the host took the notification back
    /// meanwhile.
    pub fn shutdown_complete(&mut self) {
        if self.cc().shn() != 0 {
            self.csts = (self.csts & !csts::SHST_MASK) | csts::SHST_COMPLETE;
        }
    }

    /// Controller Fatal Status: the controller cannot go on until reset.
    pub fn set_fatal(&mut self) {
        self.csts |= csts::CFS;
    }

    /// As at power-on (a function reset): every register at its reset value.
    pub fn power_on(&mut self) {
        *self = Registers::new(self.cap, self.admin_in_memory);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap() -> Cap {
        Cap {
            mqes: 1024,
            cqr: true,
            timeout: 30,
            dstrd: 0,
            mpsmin: 0,
            mpsmax: 4,
        }
    }

    const EN: u32 = 1;
    const SHN_NORMAL: u32 = 1 << 14;
    const IOQES: u32 = (6 << 16) | (4 << 20);

    #[test]
    fn pcie_enable_needs_an_admin_queue() {
        let mut r = Registers::pcie(cap());
        assert_eq!(
            r.write_dword(offset::CC, EN | IOQES),
            [Change::EnableRefused("admin queue smaller than 2 entries")]
        );
        assert!(!r.ready() && r.csts() & csts::CFS != 0);
        r.power_on();
        assert_eq!(r.csts(), 0);
        r.write_dword(offset::AQA, (31 << 16) | 31);
        r.write_dword(offset::ASQ, 0x1000);
        r.write_dword(offset::ASQ + 4, 0x1);
        r.write_dword(offset::ACQ, 0x2000);
        assert_eq!(r.read(offset::ASQ, 8), Some(0x1_0000_1000));
        // 16 KiB pages (MPS 2).
        let changes = r.write_dword(offset::CC, EN | IOQES | (2 << 7));
        assert_eq!(
            changes,
            [Change::Enabled {
                page_size: 16384,
                admin: Some(AdminQueueRegs {
                    asq: 0x1_0000_1000,
                    acq: 0x2000,
                    sq_entries: 32,
                    cq_entries: 32
                })
            }]
        );
        assert!(r.ready());
        let img = r.image();
        assert_eq!(
            u32::from_le_bytes(img[0x1c..0x20].try_into().unwrap()),
            csts::RDY
        );
        assert_eq!(
            u32::from_le_bytes(img[0x24..0x28].try_into().unwrap()),
            (31 << 16) | 31
        );
        // Disable: the front end resets, then says so.
        assert_eq!(r.write_dword(offset::CC, IOQES), [Change::Disabled]);
        assert!(r.ready(), "until the front end's reset is done");
        r.reset_done(false);
        assert!(r.ready(), "an incomplete reset keeps RDY");
        r.reset_done(true);
        assert!(!r.ready());
    }

    #[test]
    fn shutdown_and_its_completion() {
        let mut r = Registers::fabrics(Cap { mpsmax: 0, ..cap() });
        assert_eq!(r.read(offset::AQA, 4), None, "no AQA over a fabric");
        assert_eq!(
            r.property_set(offset::CC, 4, u64::from(EN | IOQES)),
            Ok(vec![Change::Enabled {
                page_size: 4096,
                admin: None
            }])
        );
        assert_eq!(
            r.property_set(offset::CC, 4, u64::from(EN | IOQES | SHN_NORMAL)),
            Ok(vec![Change::Shutdown])
        );
        assert_eq!(r.csts() & csts::SHST_MASK, csts::SHST_OCCURRING);
        r.shutdown_complete();
        assert_eq!(r.csts() & csts::SHST_MASK, csts::SHST_COMPLETE);
        // Taken back before the flush ended: no "complete".
        r.property_set(offset::CC, 4, u64::from(EN | IOQES))
            .unwrap();
        assert_eq!(r.csts() & csts::SHST_MASK, 0);
        r.shutdown_complete();
        assert_eq!(r.csts() & csts::SHST_MASK, 0);
        // Only CC is writable; page sizes above MPSMAX are refused.
        assert_eq!(
            r.property_set(offset::CSTS, 4, 1),
            Err(Status::INVALID_FIELD)
        );
        assert_eq!(r.property_set(offset::CC, 8, 1), Err(Status::INVALID_FIELD));
        let mut r = Registers::fabrics(Cap { mpsmax: 0, ..cap() });
        assert_eq!(
            r.property_set(offset::CC, 4, u64::from(EN | (1 << 7))),
            Ok(vec![Change::EnableRefused(
                "memory page size outside CAP.MPSMIN..MPSMAX"
            )])
        );
        assert_eq!(r.csts(), csts::CFS);
        // Disable and shutdown in one write: both.
        let mut r = Registers::fabrics(Cap { mpsmax: 0, ..cap() });
        r.property_set(offset::CC, 4, u64::from(EN)).unwrap();
        assert_eq!(
            r.property_set(offset::CC, 4, u64::from(SHN_NORMAL)),
            Ok(vec![Change::Disabled, Change::Shutdown])
        );
    }
}
