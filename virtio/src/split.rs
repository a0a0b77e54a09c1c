//! The device's side of a split virtqueue (virtio 1.x, 2.7): the
//! descriptor table, the available ring the driver fills and the used ring
//! the device fills, all in guest memory.
//!
//! Layout (little-endian, as on every host the runtime supports):
//! - descriptor table: `size` x 16 bytes, 16-byte aligned: address, length,
//!   flags (NEXT, WRITE, INDIRECT), next;
//! - available ring: flags, idx, `size` heads, then `used_event`: 2-byte
//!   aligned;
//! - used ring: flags, idx, `size` x (id: u32, len: u32), then
//!   `avail_event`: 4-byte aligned.
//!
//! What a guest can get wrong, and what it gets here:
//! - indexes: more entries made available than the queue holds is an error
//!   (the device stops taking from that queue);
//! - heads and `next` fields out of the table, chains that loop (longer
//!   than the table they walk), an indirect table inside an indirect
//!   table, INDIRECT together with NEXT, an indirect table whose length is
//!   not a non-zero multiple of 16: errors naming the descriptor;
//! - buffers outside guest memory, or a device-readable buffer after a
//!   device-writable one: errors;
//! - a chain of more than `max_chain_bytes`: an error.
//!
//! An entry whose chain is bad is still taken off the available ring:
//! [`Chain::head`] names it, so the device can give it back (used, length
//! 0) or mark itself as needing a reset.

use leapio_ats::{Access, AtsError, Snapshot};
use std::sync::atomic::{fence, Ordering};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The buffer continues in `next`.
pub const DESC_F_NEXT: u16 = 1;
/// The buffer is written by the device (else read).
pub const DESC_F_WRITE: u16 = 2;
/// The buffer is a table of descriptors.
pub const DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: the driver asks for no interrupts (without
/// VIRTIO_F_EVENT_IDX).
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device asks for no notifications (without
/// VIRTIO_F_EVENT_IDX).
pub const USED_F_NO_NOTIFY: u16 = 1;

/// The largest split queue (virtio 1.x: 32768).
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// The most entries an indirect table may hold here (1 MiB of table).
pub const MAX_INDIRECT: u32 = 65536;

/// One descriptor as the guest wrote it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Desc {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Its length in bytes.
    pub len: u32,
    /// `DESC_F_*`.
    pub flags: u16,
    /// The next descriptor of the chain (with `DESC_F_NEXT`).
    pub next: u16,
}

/// One used ring element.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct UsedElem {
    id: u32,
    len: u32,
}

/// Where a queue lives and how large it is, as the driver set it up
/// (queue_size, queue_desc, queue_driver, queue_device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLayout {
    /// Entries (a power of two, 1 to 32768).
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring ("driver area").
    pub avail: u64,
    /// Used ring ("device area").
    pub used: u64,
}

impl QueueLayout {
    /// Whether the driver's set-up is one a device can use.
    pub fn check(&self) -> Result<(), VqError> {
        if self.size == 0 || !self.size.is_power_of_two() || self.size > MAX_QUEUE_SIZE {
            return Err(VqError::BadSize(self.size));
        }
        for (what, gpa, align) in [
            ("descriptor table", self.desc, 16),
            ("available ring", self.avail, 2),
            ("used ring", self.used, 4),
        ] {
            if gpa % align != 0 {
                return Err(VqError::Misaligned { what, gpa, align });
            }
        }
        Ok(())
    }

    fn avail_idx(&self) -> u64 {
        self.avail + 2
    }

    fn avail_entry(&self, i: u16) -> u64 {
        self.avail + 4 + 2 * u64::from(i % self.size)
    }

    /// The driver's `used_event` (with VIRTIO_F_EVENT_IDX).
    fn used_event(&self) -> u64 {
        self.avail + 4 + 2 * u64::from(self.size)
    }

    fn used_idx(&self) -> u64 {
        self.used + 2
    }

    fn used_entry(&self, i: u16) -> u64 {
        self.used + 4 + 8 * u64::from(i % self.size)
    }

    /// The device's `avail_event` (with VIRTIO_F_EVENT_IDX).
    fn avail_event(&self) -> u64 {
        self.used + 4 + 8 * u64::from(self.size)
    }
}

/// What is wrong with a queue or a chain.
#[derive(Debug, thiserror::Error)]
pub enum VqError {
    /// The queue size.
    #[error("queue size {0} is not a power of two from 1 to 32768")]
    BadSize(u16),
    /// A ring's address.
    #[error("the {what} at {gpa:#x} is not {align}-byte aligned")]
    Misaligned {
        /// Which ring.
        what: &'static str,
        /// Its address.
        gpa: u64,
        /// The alignment virtio asks for.
        align: u64,
    },
    /// The available index ran ahead of the queue.
    #[error("the driver made {count} entries available, more than the queue's {size}")]
    TooManyAvailable {
        /// Entries not taken yet.
        count: u16,
        /// Queue size.
        size: u16,
    },
    /// A head or `next` outside its table.
    #[error("descriptor {index} is outside its table of {table} entries")]
    BadIndex {
        /// The index the guest gave.
        index: u16,
        /// Entries in the table walked.
        table: u32,
    },
    /// More descriptors than the table walked holds: a loop.
    #[error(
        "descriptor chain from head {head} is longer than its table of {table} entries (a loop?)"
    )]
    Loop {
        /// The chain's head.
        head: u16,
        /// Entries in the table walked.
        table: u32,
    },
    /// An indirect table the device cannot use.
    #[error("descriptor {index}: indirect table at {gpa:#x} of {len} bytes ({why})")]
    BadIndirect {
        /// The descriptor naming the table.
        index: u16,
        /// The table's address.
        gpa: u64,
        /// Its length.
        len: u32,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A device-readable buffer after a device-writable one.
    #[error("descriptor {index}: a device-readable buffer after a device-writable one")]
    ReadAfterWrite {
        /// The descriptor.
        index: u16,
    },
    /// The chain's buffers add up to too much.
    #[error("descriptor chain from head {head} holds more than {max} bytes")]
    TooLarge {
        /// The chain's head.
        head: u16,
        /// The most a chain may hold.
        max: u64,
    },
    /// A buffer the device cannot reach as it must.
    #[error("descriptor {index}: buffer {gpa:#x}+{len:#x}: {source}")]
    Buffer {
        /// The descriptor.
        index: u16,
        /// The buffer's address.
        gpa: u64,
        /// Its length.
        len: u32,
        /// Why guest memory refused it.
        source: AtsError,
    },
    /// A ring or table outside guest memory.
    #[error("guest memory: {0}")]
    Memory(#[from] AtsError),
}

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub gpa: u64,
    /// Bytes.
    pub len: u32,
    /// Written by the device (else read).
    pub writable: bool,
}

/// A descriptor chain taken off the available ring: its device-readable
/// buffers first, then its device-writable ones. Kept between calls for
/// its room.
#[derive(Clone, Debug, Default)]
pub struct Chain {
    /// The head: what the used ring gives back.
    pub head: u16,
    /// The buffers, in order (zero-length ones left out).
    pub segments: Vec<Segment>,
    /// Bytes the device reads.
    pub readable: u64,
    /// Bytes the device may write.
    pub writable: u64,
}

impl Chain {
    /// The device-readable buffers.
    pub fn readable(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(|s| !s.writable)
    }

    /// The device-writable buffers.
    pub fn writable(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(|s| s.writable)
    }

    fn clear(&mut self, head: u16) {
        self.head = head;
        self.segments.clear();
        self.readable = 0;
        self.writable = 0;
    }
}

/// The device's side of one split virtqueue.
#[derive(Clone, Debug)]
pub struct SplitQueue {
    layout: QueueLayout,
    event_idx: bool,
    /// The next available entry to take.
    next_avail: u16,
    /// The next used entry to fill.
    next_used: u16,
    /// The most bytes one chain may hold.
    max_chain_bytes: u64,
}

impl SplitQueue {
    /// A queue the driver just enabled (both indexes 0); `event_idx`: the
    /// driver accepted VIRTIO_F_EVENT_IDX.
    pub fn new(layout: QueueLayout, event_idx: bool) -> Result<SplitQueue, VqError> {
        SplitQueue::resume(layout, event_idx, 0, 0)
    }

    /// A queue taken over from a runtime that served it before, at the
    /// indexes it had reached.
    pub fn resume(
        layout: QueueLayout,
        event_idx: bool,
        next_avail: u16,
        next_used: u16,
    ) -> Result<SplitQueue, VqError> {
        layout.check()?;
        Ok(SplitQueue {
            layout,
            event_idx,
            next_avail,
            next_used,
            max_chain_bytes: u64::from(u32::MAX),
        })
    }

    /// Refuse chains of more than `max` bytes.
    pub fn set_max_chain_bytes(&mut self, max: u64) {
        self.max_chain_bytes = max;
    }

    /// Where the queue lives.
    pub fn layout(&self) -> QueueLayout {
        self.layout
    }

    /// The next available entry the device takes.
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// The next used entry the device fills.
    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    /// Entries the driver made available that the device has not taken.
    pub fn pending(&self, snap: &Snapshot) -> Result<u16, VqError> {
        let idx = snap.load_u16_acquire(self.layout.avail_idx())?;
        let count = idx.wrapping_sub(self.next_avail);
        if count > self.layout.size {
            return Err(VqError::TooManyAvailable {
                count,
                size: self.layout.size,
            });
        }
        Ok(count)
    }

    /// Take the next available chain into `chain`: false when there is
    /// none. On an error about the chain, its entry is taken all the same
    /// and `chain.head` names it.
    pub fn pop(&mut self, snap: &Snapshot, chain: &mut Chain) -> Result<bool, VqError> {
        if self.pending(snap)? == 0 {
            return Ok(false);
        }
        let head: u16 = snap.read_obj(self.layout.avail_entry(self.next_avail))?;
        self.next_avail = self.next_avail.wrapping_add(1);
        chain.clear(head);
        self.walk(snap, chain)?;
        Ok(true)
    }

    fn walk(&self, snap: &Snapshot, chain: &mut Chain) -> Result<(), VqError> {
        let head = chain.head;
        let mut table = self.layout.desc;
        let mut entries = u32::from(self.layout.size);
        let mut indirect = false;
        let mut index = head;
        let mut walked = 0u32;
        loop {
            if u32::from(index) >= entries {
                return Err(VqError::BadIndex {
                    index,
                    table: entries,
                });
            }
            walked += 1;
            if walked > entries {
                return Err(VqError::Loop {
                    head,
                    table: entries,
                });
            }
            let d: Desc = snap.read_obj(table + 16 * u64::from(index))?;
            if d.flags & DESC_F_INDIRECT != 0 {
                let bad = |why| VqError::BadIndirect {
                    index,
                    gpa: d.addr,
                    len: d.len,
                    why,
                };
                if indirect {
                    return Err(bad("an indirect table inside an indirect table"));
                }
                if d.flags & DESC_F_NEXT != 0 {
                    return Err(bad("INDIRECT and NEXT together"));
                }
                if d.len == 0 || d.len % 16 != 0 {
                    return Err(bad("not a non-zero multiple of 16 bytes"));
                }
                if d.len / 16 > MAX_INDIRECT {
                    return Err(bad("more than 65536 entries"));
                }
                if d.addr % 16 != 0 {
                    return Err(bad("not 16-byte aligned"));
                }
                indirect = true;
                table = d.addr;
                entries = d.len / 16;
                index = 0;
                walked = 0;
                continue;
            }
            self.add(snap, chain, index, &d)?;
            if d.flags & DESC_F_NEXT == 0 {
                return Ok(());
            }
            index = d.next;
        }
    }

    /// Check one buffer and add it to the chain.
    fn add(&self, snap: &Snapshot, chain: &mut Chain, index: u16, d: &Desc) -> Result<(), VqError> {
        if d.len == 0 {
            return Ok(());
        }
        let writable = d.flags & DESC_F_WRITE != 0;
        if !writable && chain.writable > 0 {
            return Err(VqError::ReadAfterWrite { index });
        }
        let access = if writable {
            Access::Write
        } else {
            Access::Read
        };
        reachable(snap, d.addr, u64::from(d.len), access).map_err(|source| VqError::Buffer {
            index,
            gpa: d.addr,
            len: d.len,
            source,
        })?;
        let total = chain.readable + chain.writable + u64::from(d.len);
        if total > self.max_chain_bytes {
            return Err(VqError::TooLarge {
                head: chain.head,
                max: self.max_chain_bytes,
            });
        }
        if writable {
            chain.writable += u64::from(d.len);
        } else {
            chain.readable += u64::from(d.len);
        }
        chain.segments.push(Segment {
            gpa: d.addr,
            len: d.len,
            writable,
        });
        Ok(())
    }

    /// Give chain `head` back, `written` bytes of it written by the device.
    /// The driver sees it once the used index moves (release ordering: the
    /// element and the data first).
    pub fn push_used(&mut self, snap: &Snapshot, head: u16, written: u32) -> Result<(), VqError> {
        let elem = UsedElem {
            id: u32::from(head),
            len: written,
        };
        snap.write_obj(self.layout.used_entry(self.next_used), &elem)?;
        let next = self.next_used.wrapping_add(1);
        snap.store_u16_release(self.layout.used_idx(), next)?;
        self.next_used = next;
        Ok(())
    }

    /// After used entries were added since the used index was `before`:
    /// whether the driver wants an interrupt for them (its `used_event`
    /// with VIRTIO_F_EVENT_IDX, else its NO_INTERRUPT flag).
    pub fn needs_interrupt(&self, snap: &Snapshot, before: u16) -> Result<bool, VqError> {
        // The used index is written before the driver's wish is read (as
        // the driver writes its wish before it reads the index).
        fence(Ordering::SeqCst);
        if self.event_idx {
            let event = snap.load_u16_acquire(self.layout.used_event())?;
            Ok(need_event(event, self.next_used, before))
        } else {
            let flags = snap.load_u16_acquire(self.layout.avail)?;
            Ok(flags & AVAIL_F_NO_INTERRUPT == 0)
        }
    }

    /// Tell the driver not to notify the device of new entries (a poller
    /// that looks anyway). Without VIRTIO_F_EVENT_IDX, NO_NOTIFY; with it,
    /// an `avail_event` behind the index (renew it now and then: after
    /// 65536 entries the driver would notify once).
    pub fn suppress_notifications(&self, snap: &Snapshot) -> Result<(), VqError> {
        if self.event_idx {
            snap.store_u16_release(self.layout.avail_event(), self.next_avail.wrapping_sub(1))?;
        } else {
            snap.store_u16_release(self.layout.used, USED_F_NO_NOTIFY)?;
        }
        Ok(())
    }

    /// Ask the driver to notify the device of the next entry it makes
    /// available (before a poller sleeps). Whether entries are available
    /// already: they came before the driver could see the request, and no
    /// notification will tell of them.
    pub fn enable_notifications(&self, snap: &Snapshot) -> Result<bool, VqError> {
        if self.event_idx {
            snap.store_u16_release(self.layout.avail_event(), self.next_avail)?;
        } else {
            snap.store_u16_release(self.layout.used, 0)?;
        }
        fence(Ordering::SeqCst);
        Ok(self.pending(snap)? > 0)
    }
}

/// Virtio's `vring_need_event`: whether `new_idx` moved past `event`
/// coming from `old` (all modulo 2^16).
pub fn need_event(event: u16, new_idx: u16, old: u16) -> bool {
    new_idx.wrapping_sub(event).wrapping_sub(1) < new_idx.wrapping_sub(old)
}

/// `[gpa, gpa + len)` is guest memory the device may reach with `access`
/// (it may span regions contiguous in guest-physical space).
fn reachable(snap: &Snapshot, gpa: u64, len: u64, access: Access) -> Result<(), AtsError> {
    let mut at = gpa;
    let end = gpa
        .checked_add(len)
        .ok_or(AtsError::OutOfRange { gpa, len })?;
    while at < end {
        let (_, n) = snap.translate_prefix(at, end - at, access)?;
        at += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
