//! Log pages (Get Log Page).

use crate::{Le16, Le32, Le64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Log page identifiers.
pub struct LogId;
impl LogId {
    pub const ERROR: u8 = 0x01;
    pub const SMART: u8 = 0x02;
    pub const FW_SLOT: u8 = 0x03;
    pub const CHANGED_NS_LIST: u8 = 0x04;
    pub const CMD_EFFECTS: u8 = 0x05;
    /// Asymmetric Namespace Access.
    pub const ANA: u8 = 0x0c;
}

/// Asymmetric Namespace Access states (the ANA log's descriptor state and
/// what a path is to a namespace).
pub struct AnaState;
impl AnaState {
    pub const OPTIMIZED: u8 = 0x01;
    pub const NON_OPTIMIZED: u8 = 0x02;
    pub const INACCESSIBLE: u8 = 0x03;
    pub const PERSISTENT_LOSS: u8 = 0x04;
    pub const CHANGE: u8 = 0x0f;
}

/// Error information log entry (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ErrorLogEntry {
    pub error_count: Le64,
    pub sqid: Le16,
    pub cid: Le16,
    /// Status field with the phase bit in bit 0.
    pub status: Le16,
    pub param_error_location: Le16,
    pub lba: Le64,
    pub nsid: Le32,
    pub vs: u8,
    pub trtype: u8,
    pub rsvd30: [u8; 2],
    pub cs: Le64,
    pub trtype_specific: Le16,
    pub rsvd42: [u8; 22],
}
const _: () = assert!(core::mem::size_of::<ErrorLogEntry>() == 64);

/// SMART / Health Information log page (512 bytes). The 128-bit counters
/// are little-endian byte arrays.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct SmartLog {
    pub critical_warning: u8,
    /// Composite temperature in kelvins.
    pub temperature: Le16,
    pub avail_spare: u8,
    pub spare_thresh: u8,
    pub percent_used: u8,
    pub endurance_group_warning: u8,
    pub rsvd7: [u8; 25],
    pub data_units_read: [u8; 16],
    pub data_units_written: [u8; 16],
    pub host_reads: [u8; 16],
    pub host_writes: [u8; 16],
    pub ctrl_busy_time: [u8; 16],
    pub power_cycles: [u8; 16],
    pub power_on_hours: [u8; 16],
    pub unsafe_shutdowns: [u8; 16],
    pub media_errors: [u8; 16],
    pub num_err_log_entries: [u8; 16],
    pub warning_temp_time: Le32,
    pub critical_temp_time: Le32,
    pub temp_sensor: [Le16; 8],
    pub rsvd216: [u8; 296],
}
const _: () = assert!(core::mem::size_of::<SmartLog>() == 512);

/// Encode a counter as a 128-bit little-endian field.
pub fn u128_field(v: u128) -> [u8; 16] {
    v.to_le_bytes()
}

/// Firmware Slot Information log page (512 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct FwSlotLog {
    pub afi: u8,
    pub rsvd1: [u8; 7],
    pub frs: [[u8; 8]; 7],
    pub rsvd64: [u8; 448],
}
const _: () = assert!(core::mem::size_of::<FwSlotLog>() == 512);

/// Commands Supported and Effects log page (4096 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct CmdEffectsLog {
    pub acs: [Le32; 256],
    pub iocs: [Le32; 256],
    pub rsvd: [u8; 2048],
}
const _: () = assert!(core::mem::size_of::<CmdEffectsLog>() == 4096);

/// Effects bits: command supported; logical block content change.
pub const CSE_CSUPP: u32 = 1 << 0;
pub const CSE_LBCC: u32 = 1 << 1;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn smart_offsets_match_the_spec() {
        assert_eq!(offset_of!(SmartLog, data_units_read), 32);
        assert_eq!(offset_of!(SmartLog, host_writes), 80);
        assert_eq!(offset_of!(SmartLog, num_err_log_entries), 176);
        assert_eq!(offset_of!(SmartLog, temp_sensor), 200);
        assert_eq!(offset_of!(ErrorLogEntry, lba), 16);
        assert_eq!(offset_of!(ErrorLogEntry, cs), 32);
    }
}
