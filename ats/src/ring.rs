//! NVMe submission and completion rings in guest memory. Used by the admin
//! queue (the host-driver's control thread) and by the runtime's pollers
//! for I/O queues.

use crate::{AtsError, Snapshot};
use leapio_nvme::{Cqe, Sqe, Status};
use zerocopy::IntoBytes;

/// Size of a submission queue entry (CC.IOSQES = 6).
pub const SQE_SIZE: u64 = 64;
/// Size of a completion queue entry (CC.IOCQES = 4).
pub const CQE_SIZE: u64 = 16;

/// The host wrote a doorbell value outside the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid doorbell value {value} for queue {qid} of {size} entries")]
pub struct InvalidDoorbell {
    /// The queue.
    pub qid: u16,
    /// What the host wrote.
    pub value: u32,
    /// Entries in the queue.
    pub size: u32,
}

/// A submission ring: base guest address, size, and the controller's head.
#[derive(Clone, Debug)]
pub struct SqRing {
    /// The queue's identifier.
    pub qid: u16,
    /// The completion queue its commands complete on.
    pub cqid: u16,
    /// Guest-physical address of entry 0.
    pub gpa: u64,
    /// Entries.
    pub size: u32,
    /// The next entry the controller takes.
    pub head: u32,
}

impl SqRing {
    /// An empty ring (head 0).
    pub fn new(qid: u16, cqid: u16, gpa: u64, size: u32) -> SqRing {
        SqRing {
            qid,
            cqid,
            gpa,
            size,
            head: 0,
        }
    }

    /// Check a tail doorbell value.
    pub fn check_tail(&self, tail: u32) -> Result<(), InvalidDoorbell> {
        if tail >= self.size {
            return Err(InvalidDoorbell {
                qid: self.qid,
                value: tail,
                size: self.size,
            });
        }
        Ok(())
    }

    /// Number of entries between head and `tail`.
    pub fn pending(&self, tail: u32) -> u32 {
        (tail + self.size - self.head) % self.size
    }

    /// Copy the entry at head out of guest memory and advance head. The copy
    /// is what gets validated and used: the guest can't change it afterwards.
    pub fn fetch(&mut self, snap: &Snapshot) -> Result<Sqe, AtsError> {
        let sqe = snap.read_obj::<Sqe>(self.gpa + u64::from(self.head) * SQE_SIZE)?;
        self.head = (self.head + 1) % self.size;
        Ok(sqe)
    }

    /// Guest memory the ring occupies.
    pub fn bytes(&self) -> u64 {
        u64::from(self.size) * SQE_SIZE
    }
}

/// A completion ring with its phase tag and the host's last head.
#[derive(Clone, Debug)]
pub struct CqRing {
    /// The queue's identifier.
    pub qid: u16,
    /// Guest-physical address of entry 0.
    pub gpa: u64,
    /// Entries.
    pub size: u32,
    /// The next entry the controller writes.
    pub tail: u32,
    /// The host's last head doorbell.
    pub head: u32,
    /// The phase tag written with entries on this pass of the ring.
    pub phase: bool,
    /// MSI-X vector.
    pub vector: u16,
    /// Interrupts enabled.
    pub ien: bool,
}

impl CqRing {
    /// An empty ring (phase 1).
    pub fn new(qid: u16, gpa: u64, size: u32, vector: u16, ien: bool) -> CqRing {
        CqRing {
            qid,
            gpa,
            size,
            tail: 0,
            head: 0,
            phase: true,
            vector,
            ien,
        }
    }

    /// Entries posted and not yet consumed by the host.
    pub fn used(&self) -> u32 {
        (self.tail + self.size - self.head) % self.size
    }

    /// Free entries (one slot always stays empty: full is tail + 1 == head).
    pub fn free(&self) -> u32 {
        self.size - 1 - self.used()
    }

    /// Take a new head doorbell value. It must lie in the window of entries
    /// the controller posted (between the old head and the tail).
    pub fn update_head(&mut self, head: u32) -> Result<(), InvalidDoorbell> {
        if head == self.head {
            return Ok(());
        }
        // Bounds first: the value is the guest's, and `head + size` of a
        // value near u32::MAX would overflow (found by the vfio_user fuzz
        // target).
        if head >= self.size || (head + self.size - self.head) % self.size > self.used() {
            return Err(InvalidDoorbell {
                qid: self.qid,
                value: head,
                size: self.size,
            });
        }
        self.head = head;
        Ok(())
    }

    /// Write a completion at the tail with the current phase and advance.
    /// The caller must have checked `free() > 0`. The dword holding the
    /// phase tag is stored last, with release ordering, so the host never
    /// sees a new phase before the rest of the entry.
    pub fn post(
        &mut self,
        snap: &Snapshot,
        sqid: u16,
        sq_head: u32,
        cid: u16,
        status: Status,
        dw0: u32,
    ) -> Result<(), AtsError> {
        let addr = self.gpa + u64::from(self.tail) * CQE_SIZE;
        let cqe = Cqe {
            dw0: dw0.into(),
            dw1: 0.into(),
            sq_head: u16::try_from(sq_head).unwrap_or(0).into(),
            sq_id: sqid.into(),
            cid: 0.into(),
            status: 0.into(),
        };
        snap.write_bytes(addr, &cqe.as_bytes()[..12])?;
        let last =
            u32::from(cid) | (u32::from((status.field() << 1) | u16::from(self.phase)) << 16);
        snap.store_u32_release(addr + 12, last)?;
        self.tail += 1;
        if self.tail == self.size {
            self.tail = 0;
            self.phase = !self.phase;
        }
        Ok(())
    }

    /// Guest memory the ring occupies.
    pub fn bytes(&self) -> u64 {
        u64::from(self.size) * CQE_SIZE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cq_accounting_and_head_checks() {
        let mut cq = CqRing::new(1, 0, 4, 0, true);
        assert_eq!(cq.free(), 3);
        cq.tail = 3;
        assert_eq!(cq.free(), 0);
        assert!(cq.update_head(u32::MAX).is_err());
        assert!(cq.update_head(u32::MAX - 2).is_err());
        assert!(cq.update_head(2).is_ok());
        assert_eq!(cq.free(), 2);
        // Head may not pass the tail, nor leave the ring.
        assert!(cq.update_head(0).is_err());
        assert!(cq.update_head(4).is_err());
        assert!(cq.update_head(3).is_ok());
        assert_eq!(cq.free(), 3);
    }

    #[test]
    fn sq_pending_and_tail_checks() {
        let sq = SqRing {
            head: 6,
            ..SqRing::new(1, 1, 0, 8)
        };
        assert_eq!(sq.pending(1), 3);
        assert_eq!(sq.pending(6), 0);
        assert!(sq.check_tail(8).is_err());
        assert!(sq.check_tail(7).is_ok());
    }
}
