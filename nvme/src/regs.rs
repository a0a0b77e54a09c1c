//! Controller registers (BAR0) and their fields.

/// Register offsets in BAR0.
pub mod offset {
    pub const CAP: u64 = 0x00;
    pub const VS: u64 = 0x08;
    pub const INTMS: u64 = 0x0c;
    pub const INTMC: u64 = 0x10;
    pub const CC: u64 = 0x14;
    pub const CSTS: u64 = 0x1c;
    pub const NSSR: u64 = 0x20;
    pub const AQA: u64 = 0x24;
    pub const ASQ: u64 = 0x28;
    pub const ACQ: u64 = 0x30;
    pub const CMBLOC: u64 = 0x38;
    pub const CMBSZ: u64 = 0x3c;
    /// First doorbell register (admin SQ tail).
    pub const DOORBELLS: u64 = 0x1000;
}

/// Version 1.4.0.
pub const VERSION_1_4: u32 = 0x0001_0400;

/// Controller Capabilities.
#[derive(Clone, Copy, Debug)]
pub struct Cap {
    /// Maximum queue entries supported, 1-based.
    pub mqes: u32,
    /// Contiguous queues required.
    pub cqr: bool,
    /// Worst-case time to become ready, in 500 ms units.
    pub timeout: u8,
    /// Doorbell stride: 4 << dstrd bytes.
    pub dstrd: u8,
    /// Memory page size minimum/maximum exponents (2 ^ (12 + x)).
    pub mpsmin: u8,
    pub mpsmax: u8,
}

impl Cap {
    pub fn to_u64(self) -> u64 {
        let mqes = u64::from(self.mqes.clamp(2, 65536) - 1);
        mqes | (u64::from(self.cqr) << 16)
            | (u64::from(self.timeout) << 24)
            | (u64::from(self.dstrd & 0xf) << 32)
            // CSS: the NVM command set, and I/O command sets (ZNS) to be
            // chosen with CC.CSS = 110b.
            | (1u64 << 37)
            | crate::zns::CAP_CSS_IOCS
            | (u64::from(self.mpsmin & 0xf) << 48)
            | (u64::from(self.mpsmax & 0xf) << 52)
    }
}

/// Controller Configuration fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cc(pub u32);
impl Cc {
    pub fn en(self) -> bool {
        self.0 & 1 != 0
    }
    pub fn css(self) -> u32 {
        (self.0 >> 4) & 0x7
    }
    pub fn mps(self) -> u32 {
        (self.0 >> 7) & 0xf
    }
    pub fn ams(self) -> u32 {
        (self.0 >> 11) & 0x7
    }
    /// Shutdown notification: 0 none, 1 normal, 2 abrupt.
    pub fn shn(self) -> u32 {
        (self.0 >> 14) & 0x3
    }
    pub fn iosqes(self) -> u32 {
        (self.0 >> 16) & 0xf
    }
    pub fn iocqes(self) -> u32 {
        (self.0 >> 20) & 0xf
    }
}

/// Controller Status bits.
pub mod csts {
    pub const RDY: u32 = 1 << 0;
    pub const CFS: u32 = 1 << 1;
    pub const SHST_MASK: u32 = 0x3 << 2;
    pub const SHST_OCCURRING: u32 = 0x1 << 2;
    pub const SHST_COMPLETE: u32 = 0x2 << 2;
    pub const PP: u32 = 1 << 5;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_layout() {
        let cap = Cap {
            mqes: 1024,
            cqr: true,
            timeout: 30,
            dstrd: 0,
            mpsmin: 0,
            mpsmax: 4,
        };
        let v = cap.to_u64();
        assert_eq!(v & 0xffff, 1023);
        assert_eq!((v >> 16) & 1, 1);
        assert_eq!((v >> 24) & 0xff, 30);
        assert_eq!((v >> 37) & 1, 1);
        assert_eq!((v >> 43) & 1, 1);
        assert_eq!((v >> 52) & 0xf, 4);
        let cc = Cc(0x0046_0001 | (1 << 14));
        assert!(cc.en());
        assert_eq!(cc.iosqes(), 6);
        assert_eq!(cc.iocqes(), 4);
        assert_eq!(cc.shn(), 1);
    }
}
