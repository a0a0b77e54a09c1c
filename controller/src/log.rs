//! Get Log Page: the request's window and the log pages every front end
//! answers the same way.

use leapio_nvme::identify::put_ascii;
use leapio_nvme::log::{u128_field, FwSlotLog, SmartLog};
use leapio_nvme::{Sqe, Status};
use zerocopy::{FromZeros, IntoBytes};

/// What a Get Log Page command asks for: log id, byte offset, length.
pub struct LogRequest {
    pub lid: u8,
    /// Command Set Identifier (CDW14 bits 31:24).
    pub csi: u8,
    /// Log Specific Parameter (CDW10 bits 11:8).
    pub lsp: u8,
    pub offset: u64,
    pub len: u64,
}

impl LogRequest {
    /// Decode CDW10-13. The offset must be dword aligned and the length at
    /// most `max_len` (the transfer limit), else Invalid Field.
    pub fn of(sqe: &Sqe, max_len: u64) -> Result<LogRequest, Status> {
        let cdw10 = sqe.cdw10.get();
        let numd = u64::from(cdw10 >> 16) | (u64::from(sqe.cdw11.get() & 0xffff) << 16);
        let len = (numd + 1) * 4;
        let offset = u64::from(sqe.cdw12.get()) | (u64::from(sqe.cdw13.get()) << 32);
        if offset % 4 != 0 || len > max_len {
            return Err(Status::INVALID_FIELD);
        }
        Ok(LogRequest {
            lid: (cdw10 & 0xff) as u8,
            csi: (sqe.cdw14.get() >> 24) as u8,
            lsp: ((cdw10 >> 8) & 0xf) as u8,
            offset,
            len,
        })
    }

    /// The requested window of `log`, zero-padded to the requested length;
    /// an offset past the end is Invalid Field (at the end: all zeroes, as
    /// a host reading a log in pieces may ask).
    pub fn window(&self, log: &[u8]) -> Result<Vec<u8>, Status> {
        let (Ok(start), Ok(len)) = (usize::try_from(self.offset), usize::try_from(self.len)) else {
            return Err(Status::INVALID_FIELD);
        };
        if start > log.len() {
            return Err(Status::INVALID_FIELD);
        }
        let mut out = vec![0u8; len];
        let n = (log.len() - start).min(len);
        out[..n].copy_from_slice(&log[start..start + n]);
        Ok(out)
    }
}

/// Firmware Slot Information: one slot, active, with `firmware`.
pub fn fw_slot_log(firmware: &str) -> Vec<u8> {
    let mut fw = FwSlotLog::new_zeroed();
    fw.afi = 1;
    put_ascii(&mut fw.frs[0], firmware);
    fw.as_bytes().to_vec()
}

/// What SMART / Health Information reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct Health {
    pub read_commands: u64,
    pub write_commands: u64,
    /// In 512-byte units.
    pub read_sectors: u64,
    pub write_sectors: u64,
    pub media_errors: u64,
    pub error_log_entries: u64,
}

/// SMART / Health Information from the counts (35 C, full spare).
pub fn smart_log(h: &Health) -> Vec<u8> {
    let mut s = SmartLog::new_zeroed();
    s.temperature = 308.into();
    s.avail_spare = 100;
    s.spare_thresh = 10;
    // Data units are thousands of 512-byte units, rounded up.
    s.data_units_read = u128_field(u128::from(h.read_sectors.div_ceil(1000)));
    s.data_units_written = u128_field(u128::from(h.write_sectors.div_ceil(1000)));
    s.host_reads = u128_field(u128::from(h.read_commands));
    s.host_writes = u128_field(u128::from(h.write_commands));
    s.power_cycles = u128_field(1);
    s.media_errors = u128_field(u128::from(h.media_errors));
    s.num_err_log_entries = u128_field(u128::from(h.error_log_entries));
    s.as_bytes().to_vec()
}

/// The NSID of a SMART / Health Information request: 0 and FFFFFFFFh mean
/// the controller; any other must be an active namespace.
pub fn check_smart_nsid(nsid: u32, active: impl Fn(u32) -> bool) -> Result<(), Status> {
    if nsid != 0 && nsid != u32::MAX && !active(nsid) {
        return Err(Status::INVALID_NAMESPACE);
    }
    Ok(())
}
