//! The NVMe controller core: what every controller front end presents the
//! same way: the namespaces as the host sees them, Identify data derived
//! from them, the Commands Supported and Effects log, and the Get/Set
//! Features values that do not depend on the transport. The PCIe front end
//! (the host-driver over vfio-user) and the NVMe/TCP target (the runtime)
//! both build on this. [`nvm`] plans NVM and zoned commands into backend
//! operations, wherever their data is.

pub mod admin;
pub mod features;
pub mod identify;
pub mod log;
pub mod nvm;
pub mod regs;

/// What a controller tells the host about one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub nsid: u32,
    pub block_size: u32,
    pub num_blocks: u64,
    pub volatile_write_cache: bool,
    pub write_zeroes: bool,
    pub deallocate: bool,
    /// A zoned namespace (ZNS command set) and its zones.
    pub zoned: Option<ZonedInfo>,
    /// Globally unique identifiers derived from the controller serial.
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    pub uuid: [u8; 16],
}

impl NamespaceInfo {
    /// The namespace's command set (NVM or ZNS).
    pub fn csi(&self) -> u8 {
        if self.zoned.is_some() {
            leapio_nvme::zns::Csi::ZNS
        } else {
            leapio_nvme::zns::Csi::NVM
        }
    }
}

/// How a zoned namespace divides its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZonedInfo {
    /// Blocks per zone (a power of two).
    pub zone_blocks: u64,
    /// Writable blocks per zone.
    pub capacity: u64,
    /// Most open zones at once (1-based).
    pub max_open: u32,
    /// Most active zones at once (1-based).
    pub max_active: u32,
}

/// Deterministic unique identifiers (NGUID, EUI-64, UUID) for namespace
/// `nsid` of a controller with serial `serial`: stable across runs and
/// across runtime restarts.
pub fn namespace_ids(serial: &str, nsid: u32) -> ([u8; 16], [u8; 8], [u8; 16]) {
    // FNV-1a over the serial and nsid, expanded.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in serial.bytes().chain(nsid.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let h2 = h.rotate_left(29).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(nsid);
    let mut nguid = [0u8; 16];
    nguid[..8].copy_from_slice(&h.to_be_bytes());
    nguid[8..].copy_from_slice(&h2.to_be_bytes());
    let mut eui = [0u8; 8];
    eui.copy_from_slice(&h2.to_be_bytes());
    let mut uuid = nguid;
    uuid[6] = (uuid[6] & 0x0f) | 0x40; // version 4 layout
    uuid[8] = (uuid[8] & 0x3f) | 0x80; // RFC 4122 variant
    (nguid, eui, uuid)
}

/// Check a serial number given in a configuration: 1-20 printable ASCII
/// characters (Identify Controller SN is 20 bytes).
pub fn check_serial(serial: &str) -> Result<(), String> {
    if serial.is_empty() || serial.len() > 20 || !serial.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "serial must be 1-20 printable ASCII characters, got '{serial}'"
        ));
    }
    Ok(())
}
