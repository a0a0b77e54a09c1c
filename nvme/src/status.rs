//! Completion status: status code type (SCT), status code (SC), do-not-retry.

use core::fmt;

/// A completion status field (bits 15:1 of CQE dword 3, without the phase).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(u16);

impl Status {
    pub const SUCCESS: Status = Status::generic(0x00);
    // Generic command status (SCT 0).
    pub const INVALID_OPCODE: Status = Status::generic(0x01).dnr();
    pub const INVALID_FIELD: Status = Status::generic(0x02).dnr();
    pub const COMMAND_ID_CONFLICT: Status = Status::generic(0x03).dnr();
    pub const DATA_TRANSFER_ERROR: Status = Status::generic(0x04);
    pub const ABORTED_POWER_LOSS: Status = Status::generic(0x05);
    pub const INTERNAL_ERROR: Status = Status::generic(0x06);
    pub const ABORT_REQUESTED: Status = Status::generic(0x07);
    pub const ABORTED_SQ_DELETION: Status = Status::generic(0x08);
    pub const INVALID_NAMESPACE: Status = Status::generic(0x0b).dnr();
    pub const COMMAND_SEQUENCE_ERROR: Status = Status::generic(0x0c).dnr();
    pub const INVALID_SGL_DESCRIPTOR: Status = Status::generic(0x0d).dnr();
    pub const INVALID_USE_OF_CMB: Status = Status::generic(0x12).dnr();
    pub const PRP_OFFSET_INVALID: Status = Status::generic(0x13).dnr();
    pub const LBA_OUT_OF_RANGE: Status = Status::generic(0x80).dnr();
    pub const CAPACITY_EXCEEDED: Status = Status::generic(0x81).dnr();
    pub const NAMESPACE_NOT_READY: Status = Status::generic(0x82);
    // Command specific status (SCT 1).
    pub const COMPLETION_QUEUE_INVALID: Status = Status::specific(0x00).dnr();
    pub const INVALID_QUEUE_IDENTIFIER: Status = Status::specific(0x01).dnr();
    pub const INVALID_QUEUE_SIZE: Status = Status::specific(0x02).dnr();
    pub const ABORT_COMMAND_LIMIT_EXCEEDED: Status = Status::specific(0x03).dnr();
    pub const ASYNC_EVENT_LIMIT_EXCEEDED: Status = Status::specific(0x05).dnr();
    pub const INVALID_FIRMWARE_SLOT: Status = Status::specific(0x06).dnr();
    pub const INVALID_INTERRUPT_VECTOR: Status = Status::specific(0x08).dnr();
    pub const INVALID_LOG_PAGE: Status = Status::specific(0x09).dnr();
    pub const INVALID_FORMAT: Status = Status::specific(0x0a).dnr();
    pub const INVALID_QUEUE_DELETION: Status = Status::specific(0x0c).dnr();
    pub const FEATURE_NOT_SAVEABLE: Status = Status::specific(0x0d).dnr();
    pub const FEATURE_NOT_CHANGEABLE: Status = Status::specific(0x0e).dnr();
    // Zoned Namespace Command Set (SCT 1).
    pub const ZONE_BOUNDARY_ERROR: Status = Status::specific(0xb8).dnr();
    pub const ZONE_IS_FULL: Status = Status::specific(0xb9).dnr();
    pub const ZONE_IS_READ_ONLY: Status = Status::specific(0xba).dnr();
    pub const ZONE_IS_OFFLINE: Status = Status::specific(0xbb).dnr();
    pub const ZONE_INVALID_WRITE: Status = Status::specific(0xbc).dnr();
    pub const TOO_MANY_ACTIVE_ZONES: Status = Status::specific(0xbd).dnr();
    pub const TOO_MANY_OPEN_ZONES: Status = Status::specific(0xbe).dnr();
    pub const INVALID_ZONE_STATE_TRANSITION: Status = Status::specific(0xbf).dnr();
    // Media and data integrity errors (SCT 2).
    pub const WRITE_FAULT: Status = Status::media(0x80);
    pub const UNRECOVERED_READ_ERROR: Status = Status::media(0x81);
    // Path related (SCT 3): the command may succeed down another path.
    pub const ANA_PERSISTENT_LOSS: Status = Status::path(0x01);
    pub const ANA_INACCESSIBLE: Status = Status::path(0x02);
    pub const ANA_TRANSITION: Status = Status::path(0x03);

    const fn new(sct: u16, sc: u16) -> Status {
        Status(((sct & 0x7) << 8) | (sc & 0xff))
    }
    pub const fn generic(sc: u8) -> Status {
        Status::new(0, sc as u16)
    }
    pub const fn specific(sc: u8) -> Status {
        Status::new(1, sc as u16)
    }
    pub const fn media(sc: u8) -> Status {
        Status::new(2, sc as u16)
    }
    /// Path related status (SCT 3).
    pub const fn path(sc: u8) -> Status {
        Status::new(3, sc as u16)
    }
    /// The same status with Do Not Retry set.
    pub const fn dnr(self) -> Status {
        Status(self.0 | (1 << 14))
    }
    /// Build from the 15-bit status field (CQE dword 3 bits 31:17).
    pub const fn from_field(field: u16) -> Status {
        Status(field & 0x7fff)
    }
    /// The 15-bit status field.
    pub const fn field(self) -> u16 {
        self.0
    }
    pub const fn sct(self) -> u8 {
        ((self.0 >> 8) & 0x7) as u8
    }
    pub const fn sc(self) -> u8 {
        (self.0 & 0xff) as u8
    }
    pub const fn is_dnr(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    pub const fn is_success(self) -> bool {
        self.0 & 0x7ff == 0
    }
    /// Equal ignoring the DNR/More bits.
    pub const fn same_code(self, other: Status) -> bool {
        self.0 & 0x7ff == other.0 & 0x7ff
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Status(sct={:#x}, sc={:#04x}{})",
            self.sct(),
            self.sc(),
            if self.is_dnr() { ", dnr" } else { "" }
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_spec() {
        assert_eq!(Status::INVALID_FIELD.field(), 0x4002);
        assert_eq!(Status::LBA_OUT_OF_RANGE.sc(), 0x80);
        assert_eq!(Status::INVALID_QUEUE_IDENTIFIER.sct(), 1);
        assert_eq!(Status::INVALID_QUEUE_IDENTIFIER.sc(), 1);
        assert!(Status::INVALID_QUEUE_DELETION.same_code(Status::specific(0x0c)));
        assert!(!Status::DATA_TRANSFER_ERROR.is_dnr());
        assert!(Status::SUCCESS.is_success());
        assert!(!Status::WRITE_FAULT.is_success());
    }
}
