//! The doorbell page: BAR0 offset 0x1000, backed by a 4 KiB memfd that the
//! hypervisor maps straight into the guest (a sparse mmap area), so doorbell
//! writes never trap. The runtime polls it.

use crate::shm::{SharedMem, ShmError};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

/// Size of the doorbell page.
pub const DOORBELL_PAGE_SIZE: usize = 4096;
/// Offset of the doorbell page in the memfd (and in BAR0).
pub const DOORBELL_FILE_OFFSET: u64 = 0x1000;
/// Doorbell stride is 4 bytes (CAP.DSTRD = 0): SQ y tail at 8*y, CQ y head at 8*y + 4.
pub const MAX_QUEUE_PAIRS: u16 = 512;
const _: () = assert!(MAX_QUEUE_PAIRS as usize * 8 == DOORBELL_PAGE_SIZE);

/// A shared-memory page of 32-bit doorbell registers.
#[derive(Debug)]
pub struct Doorbells {
    mem: SharedMem,
}

impl Doorbells {
    /// A new doorbell page (the host-driver's). The memfd is sealed against
    /// resizing: the hypervisor and the runtime map it too.
    pub fn new() -> io::Result<Doorbells> {
        // The hypervisor maps region offset + area offset of the file, so the
        // page sits at file offset 0x1000, where it sits in BAR0; the first
        // page of the file is never mapped.
        let mem = SharedMem::create(
            c"leapio-doorbells",
            DOORBELL_FILE_OFFSET + DOORBELL_PAGE_SIZE as u64,
            DOORBELL_FILE_OFFSET,
            DOORBELL_PAGE_SIZE,
        )?;
        Ok(Doorbells { mem })
    }

    /// Map the doorbell page the host-driver sent (the runtime's view).
    pub fn open(fd: OwnedFd) -> Result<Doorbells, ShmError> {
        let mem = SharedMem::open(
            fd,
            DOORBELL_FILE_OFFSET,
            DOORBELL_PAGE_SIZE,
            "doorbell page",
        )?;
        Ok(Doorbells { mem })
    }

    /// The doorbell page through a window (a BAR holding the memfd from
    /// file offset 0).
    pub fn from_window(file: std::fs::File) -> Result<Doorbells, ShmError> {
        let mem = SharedMem::window(
            file,
            DOORBELL_FILE_OFFSET,
            DOORBELL_PAGE_SIZE,
            "doorbell page",
        )?;
        Ok(Doorbells { mem })
    }

    /// The memfd the hypervisor maps (sparse mmap area of BAR0) and the
    /// runtime receives.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.mem.fd()
    }

    fn reg(&self, index: usize) -> Option<&AtomicU32> {
        if index >= DOORBELL_PAGE_SIZE / 4 {
            return None;
        }
        // SAFETY: index is inside the 4 KiB page mapped for our lifetime,
        // 4-byte aligned (page-aligned base), and only accessed atomically.
        Some(unsafe { &*self.mem.as_ptr().cast::<AtomicU32>().add(index) })
    }

    /// Submission queue `qid` tail doorbell.
    pub fn sq_tail(&self, qid: u16) -> u32 {
        self.reg(usize::from(qid) * 2)
            .map_or(0, |r| r.load(Ordering::Acquire))
    }

    /// Completion queue `qid` head doorbell.
    pub fn cq_head(&self, qid: u16) -> u32 {
        self.reg(usize::from(qid) * 2 + 1)
            .map_or(0, |r| r.load(Ordering::Acquire))
    }

    /// Store a doorbell by byte offset within the page (a trapped write,
    /// when the hypervisor could not map the page).
    pub fn write_offset(&self, offset: u64, value: u32) {
        if offset % 4 == 0 {
            if let Some(r) = usize::try_from(offset / 4).ok().and_then(|i| self.reg(i)) {
                r.store(value, Ordering::Release);
            }
        }
    }

    /// Load a doorbell by byte offset within the page.
    pub fn read_offset(&self, offset: u64) -> u32 {
        if offset % 4 != 0 {
            return 0;
        }
        usize::try_from(offset / 4)
            .ok()
            .and_then(|i| self.reg(i))
            .map_or(0, |r| r.load(Ordering::Acquire))
    }

    /// Zero the tail doorbell of submission queue `qid`: the queue is being
    /// created and its tail starts at 0, whatever a deleted queue `qid` left.
    pub fn reset_sq(&self, qid: u16) {
        if let Some(r) = self.reg(usize::from(qid) * 2) {
            r.store(0, Ordering::Release);
        }
    }

    /// Zero the head doorbell of completion queue `qid` (see [`Doorbells::reset_sq`]).
    pub fn reset_cq(&self, qid: u16) {
        if let Some(r) = self.reg(usize::from(qid) * 2 + 1) {
            r.store(0, Ordering::Release);
        }
    }

    /// Zero every doorbell (controller reset).
    pub fn clear(&self) {
        for i in 0..DOORBELL_PAGE_SIZE / 4 {
            if let Some(r) = self.reg(i) {
                r.store(0, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_through_a_second_mapping_are_seen() {
        let db = Doorbells::new().unwrap();
        // The hypervisor's view: map the same fd again.
        let other = memmap2::MmapOptions::new()
            .offset(DOORBELL_FILE_OFFSET)
            .len(DOORBELL_PAGE_SIZE)
            .map_raw(&db.fd())
            .unwrap();
        let regs = other.as_mut_ptr().cast::<u32>();
        // SAFETY: writing inside the 4 KiB mapping.
        unsafe {
            regs.add(2 * 3).write_volatile(17);
            regs.add(2 * 3 + 1).write_volatile(9);
        }
        assert_eq!(db.sq_tail(3), 17);
        assert_eq!(db.cq_head(3), 9);
        db.write_offset(8, 5);
        assert_eq!(db.sq_tail(1), 5);
        assert_eq!(db.read_offset(8), 5);
        db.reset_sq(3);
        assert_eq!((db.sq_tail(3), db.cq_head(3)), (0, 9));
        db.reset_cq(3);
        assert_eq!(db.cq_head(3), 0);
        db.clear();
        assert_eq!(db.sq_tail(1), 0);
    }
}
