//! The link function: the PCI function through which a runtime on an SoC
//! (a DPU, or an emulated SoC VM) reaches one VM's controller. The
//! host-driver serves it (as a vfio-user device to the SoC's hypervisor);
//! the runtime maps its BARs.
//!
//! | BAR | what | how the SoC uses it |
//! |---|---|---|
//! | 0 | registers (below), 4 KiB | trapped: every access goes to the host-driver |
//! | 1 | the link's rings ([`crate::ring`]), 64 KiB | mapped memory |
//! | 2 | the doorbell page's memfd (page at 0x1000) | mapped memory |
//! | 3 | the queue-state area ([`crate::qstate`]) | mapped memory |
//! | 4-5 | the guest's RAM (64-bit) | mapped memory: guest-physical addresses translate to offsets in it through the link's map messages |
//!
//! Memory BARs are prefetchable, so that an arm64 SoC can map them
//! write-combined (`resourceN_wc`: Normal non-cacheable memory, where
//! unaligned accesses are allowed) rather than as Device memory.

/// PCI IDs and class (memory controller, other).
pub const VENDOR_ID: u16 = leapio_nvme::identify::VENDOR_ID;
pub const DEVICE_ID: u16 = 0x4c4b;
pub const CLASS: u32 = 0x05_80_00;

pub const BAR_REGS: usize = 0;
pub const BAR_RINGS: usize = 1;
pub const BAR_DOORBELLS: usize = 2;
pub const BAR_QSTATE: usize = 3;
pub const BAR_GUEST_MEM: usize = 4;

/// Size of BAR 0.
pub const REGS_SIZE: u64 = 4096;

/// Registers (BAR 0, 32-bit accesses).
pub mod reg {
    /// Read: [`super::MAGIC`].
    pub const MAGIC: u64 = 0x00;
    /// Read: the layout version, [`super::VERSION`].
    pub const VERSION: u64 = 0x04;
    /// Write: a message waits in the to-host ring.
    pub const KICK: u64 = 0x08;
    /// Write N: raise the guest's MSI-X vector N (what an eventfd write
    /// does for a runtime on the host).
    pub const IRQ: u64 = 0x0c;
    /// Write a new nonzero session number: a runtime opens the function.
    /// The host-driver ends the previous session (its runtime is gone: the
    /// SoC lets one process hold the function at a time), empties the
    /// rings, and reads Hello from the new one.
    pub const OPEN: u64 = 0x18;
    /// Read: the guest RAM window's size in bytes (low, high).
    pub const GUEST_MEM_LO: u64 = 0x10;
    pub const GUEST_MEM_HI: u64 = 0x14;
    /// Read: the controller's name, NUL padded (64 bytes).
    pub const NAME: u64 = 0x40;
    pub const NAME_LEN: usize = 64;
}

/// "LKPF".
pub const MAGIC: u32 = u32::from_le_bytes(*b"LKPF");
pub const VERSION: u32 = 1;

/// The smallest BAR size (a power of two) that holds `len` bytes.
pub fn bar_size(len: u64) -> u64 {
    len.max(4096).next_power_of_two()
}
