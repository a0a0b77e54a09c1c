//! PCI configuration spaces: the virtual NVMe controller's (type 0 header,
//! class 01/08/02, a 64-bit BAR0 for the NVMe registers and doorbells, a
//! 64-bit BAR4 for the MSI-X table and PBA, and the PM, MSI-X and PCIe
//! capabilities; 4 KiB so that the hypervisor keeps the PCIe capability),
//! and plain functions with memory BARs and no capabilities (the link
//! function an SoC sees).

/// Vendor ID: not PCI-SIG assigned; the nvme driver binds by class code.
pub const VENDOR_ID: u16 = leapio_nvme::identify::VENDOR_ID;
pub const DEVICE_ID: u16 = 0x0001;
pub const CONFIG_SIZE: usize = 4096;

pub const BAR0_SIZE: u64 = 0x4000;
pub const BAR4_SIZE: u64 = 0x2000;
/// MSI-X table and PBA offsets inside BAR4.
pub const MSIX_TABLE_OFFSET: u64 = 0;
pub const MSIX_PBA_OFFSET: u64 = 0x1000;

const CAP_PM: usize = 0x40;
const CAP_MSIX: usize = 0x50;
const CAP_PCIE: usize = 0x60;
/// The same offsets as byte values for the capability pointers.
const PTR_PM: u8 = 0x40;
const PTR_MSIX: u8 = 0x50;
const PTR_PCIE: u8 = 0x60;

/// PCI command register bits we track.
pub const CMD_MEMORY: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;

/// Emulated configuration space with per-byte write masks.
pub struct ConfigSpace {
    data: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    /// BAR sizes by BAR index (0 = not implemented); 64-bit BARs use two slots.
    bar_sizes: [u64; 6],
    /// The power-on contents (reset restores them).
    pristine: Box<[u8; CONFIG_SIZE]>,
}

/// One memory BAR of a plain function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// BAR index (a 64-bit BAR also takes the next one).
    pub index: usize,
    /// A power of two, at least 4096.
    pub size: u64,
    pub is64: bool,
    pub prefetchable: bool,
}

impl ConfigSpace {
    pub fn new(msix_vectors: u16) -> ConfigSpace {
        let mut c = ConfigSpace {
            data: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            bar_sizes: [0; 6],
            pristine: Box::new([0; CONFIG_SIZE]),
        };
        c.put16(0x00, VENDOR_ID);
        c.put16(0x02, DEVICE_ID);
        // Command: I/O, memory, bus master, parity, SERR, INTx disable are writable.
        c.mask16(0x04, 0x0547);
        // Status: capabilities list.
        c.put16(0x06, 0x0010);
        c.data[0x08] = 0x00; // revision
        c.data[0x09] = 0x02; // prog-if: NVM Express
        c.data[0x0a] = 0x08; // subclass: non-volatile memory
        c.data[0x0b] = 0x01; // class: mass storage
        c.wmask[0x0c] = 0xff; // cache line size
        c.wmask[0x0d] = 0xff; // latency timer
                              // BAR0/1: 64-bit memory BAR; BAR4/5: 64-bit memory BAR (MSI-X).
        c.put32(0x10, 0x4);
        c.put32(0x20, 0x4);
        c.bar_sizes[0] = BAR0_SIZE;
        c.bar_sizes[4] = BAR4_SIZE;
        c.mask32(0x10, !(u32::try_from(BAR0_SIZE).unwrap_or(0) - 1));
        c.mask32(0x14, 0xffff_ffff);
        c.mask32(0x20, !(u32::try_from(BAR4_SIZE).unwrap_or(0) - 1));
        c.mask32(0x24, 0xffff_ffff);
        c.put16(0x2c, VENDOR_ID);
        c.put16(0x2e, DEVICE_ID);
        c.data[0x34] = PTR_PM;
        c.wmask[0x3c] = 0xff; // interrupt line
                              // Power management capability, version 3, D0 only.
        c.data[CAP_PM] = 0x01;
        c.data[CAP_PM + 1] = PTR_MSIX;
        c.put16(CAP_PM + 2, 0x0003);
        c.mask16(CAP_PM + 4, 0x0003);
        // MSI-X: table size, enable and function mask writable.
        c.data[CAP_MSIX] = 0x11;
        c.data[CAP_MSIX + 1] = PTR_PCIE;
        c.put16(CAP_MSIX + 2, msix_vectors.saturating_sub(1) & 0x7ff);
        c.mask16(CAP_MSIX + 2, 0xc000);
        c.put32(
            CAP_MSIX + 4,
            u32::try_from(MSIX_TABLE_OFFSET).unwrap_or(0) | 4,
        );
        c.put32(
            CAP_MSIX + 8,
            u32::try_from(MSIX_PBA_OFFSET).unwrap_or(0) | 4,
        );
        // PCI Express capability v2, endpoint.
        c.data[CAP_PCIE] = 0x10;
        c.data[CAP_PCIE + 1] = 0x00;
        c.put16(CAP_PCIE + 2, 0x0002);
        // Device capabilities: 128-byte max payload, role-based error reporting.
        c.put32(CAP_PCIE + 4, 1 << 15);
        // Device control is writable (the OS sets payload sizes, error enables).
        c.mask16(CAP_PCIE + 8, 0x7fff);
        // Link: 8 GT/s x4, and the same as current status.
        c.put32(CAP_PCIE + 0x0c, 0x43);
        c.put16(CAP_PCIE + 0x12, 0x43);
        c.mask16(CAP_PCIE + 0x10, 0x0ffb);
        // Device capabilities 2: completion timeout disable supported.
        c.put32(CAP_PCIE + 0x24, 1 << 4);
        c.mask16(CAP_PCIE + 0x28, 0x0410);
        c.pristine.copy_from_slice(&c.data);
        c
    }

    /// A plain function: vendor and device ID, a 24-bit class code, memory
    /// BARs, no capabilities. BARs whose size is not a power of two (at
    /// least 4096) or that overlap are left out.
    pub fn plain(vendor: u16, device: u16, class: u32, bars: &[Bar]) -> ConfigSpace {
        let mut c = ConfigSpace {
            data: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            bar_sizes: [0; 6],
            pristine: Box::new([0; CONFIG_SIZE]),
        };
        c.put16(0x00, vendor);
        c.put16(0x02, device);
        // Command: memory space and bus master are writable.
        c.mask16(0x04, 0x0006);
        c.put32(0x08, class << 8);
        c.put16(0x2c, vendor);
        c.put16(0x2e, device);
        for b in bars {
            let slots = if b.is64 { 2 } else { 1 };
            let fits = b.index + slots <= 6
                && b.size.is_power_of_two()
                && b.size >= 4096
                && (b.is64 || b.size <= 1 << 31)
                && (b.index..b.index + slots).all(|i| c.bar_sizes[i] == 0);
            if !fits {
                continue;
            }
            let off = 0x10 + 4 * b.index;
            let kind = (if b.is64 { 0x4 } else { 0 }) | (if b.prefetchable { 0x8 } else { 0 });
            c.put32(off, kind);
            let mask = !(b.size - 1);
            c.mask32(off, u32::try_from(mask & 0xffff_fff0).unwrap_or(0));
            c.bar_sizes[b.index] = b.size;
            if b.is64 {
                c.bar_sizes[b.index + 1] = u64::MAX;
                c.mask32(off + 4, u32::try_from(mask >> 32).unwrap_or(0));
            }
        }
        c.wmask[0x3c] = 0xff;
        c.pristine.copy_from_slice(&c.data);
        c
    }

    fn put16(&mut self, off: usize, v: u16) {
        self.data[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn put32(&mut self, off: usize, v: u32) {
        self.data[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn mask16(&mut self, off: usize, m: u16) {
        self.wmask[off..off + 2].copy_from_slice(&m.to_le_bytes());
    }
    fn mask32(&mut self, off: usize, m: u32) {
        self.wmask[off..off + 4].copy_from_slice(&m.to_le_bytes());
    }

    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), i32> {
        let off = range(offset, buf.len())?;
        buf.copy_from_slice(&self.data[off..off + buf.len()]);
        Ok(())
    }

    /// Apply a write through the write masks. BAR sizing writes
    /// (all ones) leave the size mask behind, as on real hardware.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), i32> {
        let off = range(offset, data.len())?;
        for (i, b) in data.iter().enumerate() {
            let o = off + i;
            let m = self.wmask[o];
            self.data[o] = (self.data[o] & !m) | (b & m);
        }
        Ok(())
    }

    pub fn command(&self) -> u16 {
        u16::from_le_bytes([self.data[0x04], self.data[0x05]])
    }

    pub fn bus_master(&self) -> bool {
        self.command() & CMD_BUS_MASTER != 0
    }

    /// Size of BAR `i` (0 if not implemented; the upper half of a 64-bit
    /// BAR is not a BAR of its own).
    pub fn bar_size(&self, i: usize) -> u64 {
        match self.bar_sizes.get(i).copied() {
            Some(u64::MAX) | None => 0,
            Some(s) => s,
        }
    }

    /// Restore the power-on values of the writable registers (reset).
    pub fn reset(&mut self) {
        self.data.copy_from_slice(&self.pristine[..]);
    }

    /// The current contents (what the function's state is made of: BARs,
    /// command, capability controls), for [`ConfigSpace::restore`].
    pub fn contents(&self) -> &[u8] {
        &self.data
    }

    /// Take back [`ConfigSpace::contents`] of a function built the same
    /// way. Read-only fields stay as this one has them (only bits the
    /// host can write are taken); false if `data` is not a whole space.
    pub fn restore(&mut self, data: &[u8]) -> bool {
        if data.len() != CONFIG_SIZE {
            return false;
        }
        for (i, b) in data.iter().enumerate() {
            let m = self.wmask[i];
            self.data[i] = (self.pristine[i] & !m) | (b & m);
        }
        true
    }

    pub fn msix_vectors(&self) -> u16 {
        (u16::from_le_bytes([self.data[CAP_MSIX + 2], self.data[CAP_MSIX + 3]]) & 0x7ff) + 1
    }
}

fn range(offset: u64, len: usize) -> Result<usize, i32> {
    let off = usize::try_from(offset).map_err(|_| libc::EINVAL)?;
    if off.checked_add(len).is_none_or(|end| end > CONFIG_SIZE) {
        return Err(libc::EINVAL);
    }
    Ok(off)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r32(c: &ConfigSpace, off: u64) -> u32 {
        let mut b = [0u8; 4];
        c.read(off, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    #[test]
    fn class_and_capability_chain() {
        let c = ConfigSpace::new(3);
        assert_eq!(r32(&c, 0x08) >> 8, 0x010802);
        let mut ids = vec![];
        let mut p = c.data[0x34] as usize;
        while p != 0 {
            ids.push(c.data[p]);
            p = c.data[p + 1] as usize;
        }
        assert_eq!(ids, vec![0x01, 0x11, 0x10]);
        assert_eq!(c.msix_vectors(), 3);
    }

    #[test]
    fn bar_sizing_and_read_only_fields() {
        let mut c = ConfigSpace::new(3);
        c.write(0x10, &0xffff_ffffu32.to_le_bytes()).unwrap();
        assert_eq!(r32(&c, 0x10), 0xffff_c004);
        c.write(0x10, &0xfebf_0000u32.to_le_bytes()).unwrap();
        assert_eq!(r32(&c, 0x10), 0xfebf_0004);
        c.write(0x00, &0u32.to_le_bytes()).unwrap();
        assert_eq!(r32(&c, 0x00) & 0xffff, u32::from(VENDOR_ID));
        c.write(0x04, &0x0006u16.to_le_bytes()).unwrap();
        assert!(c.bus_master());
        assert!(c.read(4095, &mut [0u8; 2]).is_err());
        assert!(c.write(u64::MAX, &[0]).is_err());
        c.reset();
        assert!(!c.bus_master());
    }

    #[test]
    fn plain_function_bars() {
        let bars = [
            Bar {
                index: 0,
                size: 4096,
                is64: false,
                prefetchable: false,
            },
            Bar {
                index: 1,
                size: 1 << 16,
                is64: false,
                prefetchable: true,
            },
            Bar {
                index: 4,
                size: 1 << 32,
                is64: true,
                prefetchable: true,
            },
            // Overlaps BAR 5 (the upper half of BAR 4): left out.
            Bar {
                index: 5,
                size: 4096,
                is64: false,
                prefetchable: false,
            },
        ];
        let mut c = ConfigSpace::plain(0x4c45, 2, 0x058000, &bars);
        assert_eq!(r32(&c, 0x08) >> 8, 0x058000);
        assert_eq!(r32(&c, 0x14), 0x8);
        assert_eq!(r32(&c, 0x20), 0xc);
        for off in [0x10, 0x14, 0x20, 0x24] {
            c.write(off, &0xffff_ffffu32.to_le_bytes()).unwrap();
        }
        assert_eq!(r32(&c, 0x10), 0xffff_f000);
        assert_eq!(r32(&c, 0x14), 0xffff_0008);
        assert_eq!(r32(&c, 0x20), 0x0000_000c);
        assert_eq!(r32(&c, 0x24), 0xffff_ffff);
        assert_eq!((c.bar_size(4), c.bar_size(5)), (1 << 32, 0));
        c.reset();
        assert_eq!(r32(&c, 0x10), 0);
    }
}
