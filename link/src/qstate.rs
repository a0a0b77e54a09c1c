//! The queue-state area: per I/O queue, what the runtime has done, kept in
//! memory the host-driver owns so that a runtime can die and a new one can
//! take over without the guest noticing (vhost-user's in-flight buffer,
//! for NVMe).
//!
//! # Layout (one sealed memfd per controller)
//!
//! ```text
//! 0       header (4 KiB): magic, version, geometry, MSI-X mask and pending bits
//! 4 KiB   section of queue id 1: SqRecord | CqRecord | CqCounters | slots...
//! ...     section of queue id 2, ...
//! ```
//!
//! Submission queue `q` and completion queue `q` share section `q` (they are
//! different queues that happen to have the same id). A completion queue's
//! slots hold the commands in flight that will complete into it: a command
//! only leaves its submission queue when a completion slot is reserved for
//! it, so a completion queue of `n` entries never has more than `n - 1`.
//!
//! # The invariant
//!
//! A command's completion is recorded here *before* its CQE becomes visible
//! to the guest. The runtime's order, per command:
//!
//! 1. copy the SQE out of the submission queue;
//! 2. [`CqJournal::begin`]: slot <- SQE, its position in the SQ's stream,
//!    state IN_FLIGHT (release);
//! 3. [`SqJournal::consumed`]: the SQ's consumed count (release);
//! 4. run it (a backend that decides something before it acts, as a Zone
//!    Append's LBA, records that in the slot first: [`CqJournal::placed`]);
//!    [`CqJournal::complete`]: status, CQ position, state COMPLETED
//!    (release);
//! 5. write the CQE into the guest's completion queue (phase tag last);
//! 6. [`CqJournal::posted`]: the CQ's posted count (release);
//! 7. [`CqJournal::free`].
//!
//! A new runtime reads, per completion queue ([`CqJournal::recover`]):
//! COMPLETED with a CQ position below `posted` was posted (drop it);
//! COMPLETED at or above `posted` is posted again at its own position with
//! the same contents (idempotent: the guest either has not seen it, or sees
//! the same entry); IN_FLIGHT whose SQ position is below the SQ's consumed
//! count never completed visibly and runs again from its copied SQE, marked
//! as a rerun (it may have run in whole or in part: a zoned write finds its
//! blocks below the write pointer, an append where it was placed);
//! IN_FLIGHT at or above it is dropped, because the SQE is still in the
//! guest's submission queue (no completion ever reported that slot as
//! consumed) and will be fetched again.
//!
//! Every field is an atomic in shared memory: the area is written by one
//! runtime at a time (the host-driver only initialises and clears a queue's
//! section while no runtime touches it), and read by the host-driver for
//! counters and by a successor runtime after the previous one is fenced.

use crate::shm::{SharedMem, ShmError};
use leapio_nvme::Sqe;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use zerocopy::{FromBytes, IntoBytes};

/// "LEAPIOQS", little endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"LEAPIOQS");
/// Layout version; a runtime refuses an area of another version.
pub const VERSION: u32 = 1;
/// Size of the header.
pub const HEADER_SIZE: usize = 4096;
/// Interrupt vectors the header has mask and pending bits for.
pub const MAX_VECTORS: usize = 2048;
const VECTOR_WORDS: usize = MAX_VECTORS / 32;
/// Bytes before a section's slots.
const SECTION_HEAD: usize = 256;
const PAGE: usize = 4096;

/// Slot states.
pub const FREE: u32 = 0;
pub const IN_FLIGHT: u32 = 1;
pub const COMPLETED: u32 = 2;

#[repr(C)]
struct Header {
    magic: AtomicU64,
    version: AtomicU32,
    /// Queue sections: queue ids 1..=queues.
    queues: AtomicU32,
    /// Slots per completion queue section.
    slots: AtomicU32,
    _rsvd: AtomicU32,
    section_size: AtomicU64,
    /// Bumped by the host-driver each time a runtime attaches.
    epoch: AtomicU64,
    _pad: [AtomicU64; 3],
    irq_mask: [AtomicU32; VECTOR_WORDS],
    irq_pending: [AtomicU32; VECTOR_WORDS],
}
const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_SIZE);

/// What the runtime has consumed from one submission queue.
#[repr(C, align(64))]
pub struct SqRecord {
    /// Commands taken from the queue since it was created: the head is
    /// `consumed % size`.
    consumed: AtomicU64,
    active: AtomicU32,
    size: AtomicU32,
    cqid: AtomicU32,
    _pad: [AtomicU32; 11],
}
const _: () = assert!(std::mem::size_of::<SqRecord>() == 64);

/// What the runtime has posted to one completion queue.
#[repr(C, align(64))]
pub struct CqRecord {
    /// Completions written since the queue was created: the tail is
    /// `posted % size`, the phase tag `(posted / size) % 2 == 0`.
    posted: AtomicU64,
    /// The last head the runtime accepted from the host.
    head: AtomicU32,
    active: AtomicU32,
    size: AtomicU32,
    _pad: [AtomicU32; 11],
}
const _: () = assert!(std::mem::size_of::<CqRecord>() == 64);

/// SMART counters of the commands that completed into one completion
/// queue (its poller is the only writer).
#[repr(C, align(64))]
pub struct CqCounters {
    read_commands: AtomicU64,
    write_commands: AtomicU64,
    /// In 512-byte units.
    read_sectors: AtomicU64,
    write_sectors: AtomicU64,
    media_errors: AtomicU64,
    _pad: [AtomicU64; 3],
}
const _: () = assert!(std::mem::size_of::<CqCounters>() == 64);

/// One command in flight (or completed and not yet known to be posted).
#[repr(C, align(64))]
pub struct SlotRecord {
    sqe: [AtomicU64; 8],
    state: AtomicU32,
    sqid: AtomicU32,
    /// Position of the command in its submission queue's stream.
    fetch_seq: AtomicU64,
    /// Position of its completion in the completion queue's stream.
    cq_seq: AtomicU64,
    /// dw0 (bits 0-31), status field (32-47), SQ head reported (48-63).
    result: AtomicU64,
    /// What a backend decided for the command before acting on it: 0, or
    /// 1 + the LBA a Zone Append was given (`leapio_backend::Journal`).
    placed: AtomicU64,
    _pad: [AtomicU64; 2],
}
const _: () = assert!(std::mem::size_of::<SlotRecord>() == 128);
const _: () =
    assert!(3 * 64 <= SECTION_HEAD && SECTION_HEAD % std::mem::align_of::<SlotRecord>() == 0);

/// Totals of [`CqCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IoCounts {
    pub read_commands: u64,
    pub write_commands: u64,
    /// In 512-byte units.
    pub read_sectors: u64,
    pub write_sectors: u64,
    pub media_errors: u64,
}

impl IoCounts {
    /// Saturating: the counters come from shared memory another process
    /// writes, and a broken one must not make the reader panic or wrap.
    pub fn add(&mut self, o: IoCounts) {
        self.read_commands = self.read_commands.saturating_add(o.read_commands);
        self.write_commands = self.write_commands.saturating_add(o.write_commands);
        self.read_sectors = self.read_sectors.saturating_add(o.read_sectors);
        self.write_sectors = self.write_sectors.saturating_add(o.write_sectors);
        self.media_errors = self.media_errors.saturating_add(o.media_errors);
    }
}

/// The area is malformed (the runtime refuses it).
#[derive(Debug, thiserror::Error)]
pub enum AreaError {
    #[error(transparent)]
    Map(#[from] ShmError),
    #[error("queue-state area: bad magic {0:#x}")]
    Magic(u64),
    #[error("queue-state area: layout version {found}, this runtime knows {VERSION}")]
    Version { found: u32 },
    #[error("queue-state area: inconsistent geometry ({queues} queues x {slots} slots, section {section} bytes, file {file} bytes)")]
    Geometry {
        queues: u32,
        slots: u32,
        section: u64,
        file: u64,
    },
}

/// The mapped area.
#[derive(Debug)]
pub struct QueueState {
    mem: SharedMem,
    queues: u32,
    slots: u32,
    section_size: usize,
}

fn section_size(slots: u32) -> usize {
    (SECTION_HEAD + slots as usize * std::mem::size_of::<SlotRecord>()).div_ceil(PAGE) * PAGE
}

impl QueueState {
    /// A new area for queue ids `1..=queues`, each completion queue with
    /// room for `slots` commands (the largest queue size allowed).
    pub fn create(queues: u16, slots: u32) -> io::Result<QueueState> {
        let section = section_size(slots);
        let len = HEADER_SIZE + usize::from(queues) * section;
        let mem = SharedMem::create(c"leapio-queue-state", len as u64, 0, len)?;
        let qs = QueueState {
            mem,
            queues: u32::from(queues),
            slots,
            section_size: section,
        };
        let h = qs.header();
        h.version.store(VERSION, Ordering::Relaxed);
        h.queues.store(u32::from(queues), Ordering::Relaxed);
        h.slots.store(slots, Ordering::Relaxed);
        h.section_size.store(section as u64, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(qs)
    }

    /// Map an area the host-driver sent, checking its header against the
    /// file's size.
    pub fn open(fd: OwnedFd) -> Result<QueueState, AreaError> {
        let file = std::fs::File::from(fd);
        let file_len = file
            .metadata()
            .map_err(|e| ShmError::Io {
                what: "queue-state area".into(),
                source: e,
            })?
            .len();
        let len = usize::try_from(file_len).unwrap_or(0).max(HEADER_SIZE);
        let mem = SharedMem::open(OwnedFd::from(file), 0, len, "queue-state area")?;
        QueueState::checked(mem, file_len, true)
    }

    /// The area through a window (a BAR holding it from offset 0; the BAR
    /// may be larger than the area).
    pub fn from_window(file: std::fs::File) -> Result<QueueState, AreaError> {
        let file_len = file
            .metadata()
            .map_err(|e| ShmError::Io {
                what: "queue-state area".into(),
                source: e,
            })?
            .len();
        let len = usize::try_from(file_len).unwrap_or(0).max(HEADER_SIZE);
        let mem = SharedMem::window(file, 0, len, "queue-state area")?;
        QueueState::checked(mem, file_len, false)
    }

    /// Check the header of a mapped area of `len` bytes (`exact`: the area
    /// is the whole file, else it may be shorter).
    fn checked(mem: SharedMem, len: u64, exact: bool) -> Result<QueueState, AreaError> {
        // SAFETY: the mapping is at least HEADER_SIZE bytes and page aligned.
        let h = unsafe { &*mem.as_ptr().cast::<Header>() };
        let magic = h.magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(AreaError::Magic(magic));
        }
        let found = h.version.load(Ordering::Relaxed);
        if found != VERSION {
            return Err(AreaError::Version { found });
        }
        let queues = h.queues.load(Ordering::Relaxed);
        let slots = h.slots.load(Ordering::Relaxed);
        let section = h.section_size.load(Ordering::Relaxed);
        let expect = section_size(slots) as u64;
        let total = (HEADER_SIZE as u64).checked_add(u64::from(queues).saturating_mul(section));
        let fits = match total {
            Some(t) if exact => t == len,
            Some(t) => t <= len,
            None => false,
        };
        if section != expect || queues > u32::from(u16::MAX) || !fits {
            return Err(AreaError::Geometry {
                queues,
                slots,
                section,
                file: len,
            });
        }
        Ok(QueueState {
            mem,
            queues,
            slots,
            section_size: section_size(slots),
        })
    }

    /// The mapped length (what a window onto it must hold).
    pub fn len(&self) -> usize {
        self.mem.len()
    }

    /// Whether the area is empty (never).
    pub fn is_empty(&self) -> bool {
        self.mem.is_empty()
    }

    /// The memfd, for the link.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.mem.fd()
    }

    /// Slots per completion queue.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Queue ids the area has room for (`1..=queues`).
    pub fn queues(&self) -> u32 {
        self.queues
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping starts with the header (checked size), page
        // aligned, accessed only through atomics.
        unsafe { &*self.mem.as_ptr().cast::<Header>() }
    }

    /// Bump the attach epoch; returns the new value.
    pub fn next_epoch(&self) -> u64 {
        self.header().epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The attach epoch.
    pub fn epoch(&self) -> u64 {
        self.header().epoch.load(Ordering::Acquire)
    }

    fn section(&self, qid: u16) -> Option<*mut u8> {
        let q = u32::from(qid);
        if q == 0 || q > self.queues {
            return None;
        }
        let off = HEADER_SIZE + (q as usize - 1) * self.section_size;
        // SAFETY: off + section_size <= the mapping's length (checked at
        // create/open), so the pointer stays inside the mapping.
        Some(unsafe { self.mem.as_ptr().add(off) })
    }

    fn sq_rec(&self, qid: u16) -> Option<&SqRecord> {
        // SAFETY: the section starts with an SqRecord (64-byte aligned:
        // sections are page aligned); atomics only.
        self.section(qid).map(|p| unsafe { &*p.cast::<SqRecord>() })
    }

    fn cq_rec(&self, qid: u16) -> Option<&CqRecord> {
        // SAFETY: CqRecord follows the SqRecord in the section.
        self.section(qid)
            .map(|p| unsafe { &*p.add(64).cast::<CqRecord>() })
    }

    fn cq_counters(&self, qid: u16) -> Option<&CqCounters> {
        // SAFETY: CqCounters follows the CqRecord.
        self.section(qid)
            .map(|p| unsafe { &*p.add(128).cast::<CqCounters>() })
    }

    fn slot(&self, qid: u16, i: u32) -> Option<&SlotRecord> {
        if i >= self.slots {
            return None;
        }
        let p = self.section(qid)?;
        // SAFETY: slot i < slots lies inside the section (section_size
        // covers SECTION_HEAD + slots * 128), 64-byte aligned.
        Some(unsafe {
            &*p.add(SECTION_HEAD + i as usize * std::mem::size_of::<SlotRecord>())
                .cast::<SlotRecord>()
        })
    }

    /// MSI-X vector `v`'s mask bit (written by the host-driver).
    pub fn irq_masked(&self, v: u16) -> bool {
        bit(&self.header().irq_mask, v).is_some_and(|(w, m)| w.load(Ordering::Acquire) & m != 0)
    }

    pub fn set_irq_masked(&self, v: u16, masked: bool) {
        set_bit(&self.header().irq_mask, v, masked);
    }

    /// Vector `v`'s pending bit (set by whoever found it masked).
    pub fn irq_pending(&self, v: u16) -> bool {
        bit(&self.header().irq_pending, v).is_some_and(|(w, m)| w.load(Ordering::Acquire) & m != 0)
    }

    pub fn set_irq_pending(&self, v: u16, pending: bool) {
        set_bit(&self.header().irq_pending, v, pending);
    }

    /// Clear vector `v`'s pending bit; returns whether it was set.
    pub fn take_irq_pending(&self, v: u16) -> bool {
        bit(&self.header().irq_pending, v)
            .is_some_and(|(w, m)| w.fetch_and(!m, Ordering::AcqRel) & m != 0)
    }

    // ---- the host-driver's side: queue sections --------------------------

    /// Start the section of completion queue `qid` (created by the guest):
    /// nothing posted, no slot used, counters zero.
    pub fn init_cq(&self, qid: u16, size: u32) -> bool {
        let (Some(r), Some(c)) = (self.cq_rec(qid), self.cq_counters(qid)) else {
            return false;
        };
        for i in 0..self.slots.min(size) {
            if let Some(s) = self.slot(qid, i) {
                if s.state.load(Ordering::Relaxed) != FREE {
                    s.state.store(FREE, Ordering::Relaxed);
                }
            }
        }
        for a in [
            &c.read_commands,
            &c.write_commands,
            &c.read_sectors,
            &c.write_sectors,
            &c.media_errors,
        ] {
            a.store(0, Ordering::Relaxed);
        }
        r.posted.store(0, Ordering::Relaxed);
        r.head.store(0, Ordering::Relaxed);
        r.size.store(size, Ordering::Relaxed);
        r.active.store(1, Ordering::Release);
        true
    }

    /// Start the section of submission queue `qid`.
    pub fn init_sq(&self, qid: u16, size: u32, cqid: u16) -> bool {
        let Some(r) = self.sq_rec(qid) else {
            return false;
        };
        r.consumed.store(0, Ordering::Relaxed);
        r.size.store(size, Ordering::Relaxed);
        r.cqid.store(u32::from(cqid), Ordering::Relaxed);
        r.active.store(1, Ordering::Release);
        true
    }

    /// Submission queue `qid` is deleted: its commands that were still in
    /// flight are dropped from its completion queue's slots (the guest
    /// deleted the queue: they are aborted). Returns how many.
    pub fn clear_sq(&self, qid: u16) -> u32 {
        let Some(r) = self.sq_rec(qid) else {
            return 0;
        };
        r.active.store(0, Ordering::Release);
        let cqid = u16::try_from(r.cqid.load(Ordering::Relaxed)).unwrap_or(0);
        let mut dropped = 0;
        if self.cq_rec(cqid).is_some() {
            for i in 0..self.slots {
                let Some(s) = self.slot(cqid, i) else { break };
                if s.state.load(Ordering::Acquire) != FREE
                    && s.sqid.load(Ordering::Relaxed) == u32::from(qid)
                {
                    s.state.store(FREE, Ordering::Release);
                    dropped += 1;
                }
            }
        }
        dropped
    }

    /// Completion queue `qid` is deleted; returns its counters.
    pub fn clear_cq(&self, qid: u16) -> IoCounts {
        let counts = self.cq_counts(qid);
        if let Some(r) = self.cq_rec(qid) {
            r.active.store(0, Ordering::Release);
        }
        counts
    }

    /// The counters of completion queue `qid`.
    pub fn cq_counts(&self, qid: u16) -> IoCounts {
        match self.cq_counters(qid) {
            Some(c) => IoCounts {
                read_commands: c.read_commands.load(Ordering::Relaxed),
                write_commands: c.write_commands.load(Ordering::Relaxed),
                read_sectors: c.read_sectors.load(Ordering::Relaxed),
                write_sectors: c.write_sectors.load(Ordering::Relaxed),
                media_errors: c.media_errors.load(Ordering::Relaxed),
            },
            None => IoCounts::default(),
        }
    }

    /// Commands of completion queue `qid` whose completion is not known to
    /// be posted (in flight, or completed and not posted).
    pub fn cq_outstanding(&self, qid: u16) -> u32 {
        let Some(r) = self.cq_rec(qid) else { return 0 };
        let posted = r.posted.load(Ordering::Acquire);
        let mut n = 0;
        for s in (0..self.slots).filter_map(|i| self.slot(qid, i)) {
            n += u32::from(match s.state.load(Ordering::Acquire) {
                IN_FLIGHT => true,
                COMPLETED => s.cq_seq.load(Ordering::Relaxed) >= posted,
                _ => false,
            });
        }
        n
    }
}

fn bit(words: &[AtomicU32], v: u16) -> Option<(&AtomicU32, u32)> {
    let v = usize::from(v);
    words.get(v / 32).map(|w| (w, 1u32 << (v % 32)))
}

fn set_bit(words: &[AtomicU32], v: u16, on: bool) {
    if let Some((w, m)) = bit(words, v) {
        if on {
            w.fetch_or(m, Ordering::AcqRel);
        } else {
            w.fetch_and(!m, Ordering::AcqRel);
        }
    }
}

/// The runtime's handle on one submission queue's record.
pub struct SqJournal {
    area: Arc<QueueState>,
    qid: u16,
}

/// What a submission queue's record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqResume {
    pub consumed: u64,
    pub size: u32,
    pub cqid: u16,
}

impl SqJournal {
    /// The record of submission queue `qid`, if the area has one.
    pub fn new(area: Arc<QueueState>, qid: u16) -> Option<SqJournal> {
        area.sq_rec(qid)?;
        Some(SqJournal { area, qid })
    }

    fn rec(&self) -> &SqRecord {
        // Checked in new().
        self.area
            .sq_rec(self.qid)
            .expect("sq record checked at creation")
    }

    /// The runtime has taken `n` commands from the queue in all (step 3).
    pub fn consumed(&self, n: u64) {
        self.rec().consumed.store(n, Ordering::Release);
    }

    /// The record as the last runtime left it (None if the host-driver did
    /// not mark the queue active).
    pub fn resume(&self) -> Option<SqResume> {
        let r = self.rec();
        if r.active.load(Ordering::Acquire) == 0 {
            return None;
        }
        Some(SqResume {
            consumed: r.consumed.load(Ordering::Acquire),
            size: r.size.load(Ordering::Relaxed),
            cqid: u16::try_from(r.cqid.load(Ordering::Relaxed)).unwrap_or(0),
        })
    }
}

/// The runtime's handle on one completion queue's record and slots.
pub struct CqJournal {
    area: Arc<QueueState>,
    qid: u16,
}

/// A completion that must be posted again after a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unposted {
    pub slot: u32,
    pub cq_seq: u64,
    pub sqid: u16,
    pub cid: u16,
    pub status_field: u16,
    pub dw0: u32,
    pub sq_head: u16,
}

/// A command to run again after a restart.
#[derive(Clone, Debug)]
pub struct Rerun {
    pub slot: u32,
    pub sqid: u16,
    pub fetch_seq: u64,
    pub sqe: Sqe,
}

/// What a completion queue's record says after a runtime died.
#[derive(Clone, Debug, Default)]
pub struct CqRecovery {
    pub posted: u64,
    pub head: u32,
    pub size: u32,
    /// Completions to post again, in CQ order.
    pub unposted: Vec<Unposted>,
    /// Commands that must run again, in SQ order per queue.
    pub rerun: Vec<Rerun>,
    /// Slots that were found free or were released.
    pub free: Vec<u32>,
    /// IN_FLIGHT records dropped because their SQE is still in the SQ.
    pub refetch: u32,
}

impl CqJournal {
    /// The record of completion queue `qid`, if the area has one.
    pub fn new(area: Arc<QueueState>, qid: u16) -> Option<CqJournal> {
        area.cq_rec(qid)?;
        Some(CqJournal { area, qid })
    }

    /// Slots available to this queue (at most its size - 1 are ever used).
    pub fn capacity(&self, size: u32) -> u32 {
        self.area.slots.min(size)
    }

    fn rec(&self) -> &CqRecord {
        self.area
            .cq_rec(self.qid)
            .expect("cq record checked at creation")
    }

    fn slot(&self, i: u32) -> Option<&SlotRecord> {
        self.area.slot(self.qid, i)
    }

    /// Step 2: the command `sqe`, the `fetch_seq`-th of submission queue
    /// `sqid`, is in flight in slot `i`.
    pub fn begin(&self, i: u32, sqid: u16, fetch_seq: u64, sqe: &Sqe) {
        let Some(s) = self.slot(i) else { return };
        let words = <[u64; 8]>::read_from_bytes(sqe.as_bytes()).unwrap_or([0; 8]);
        for (a, w) in s.sqe.iter().zip(words) {
            a.store(w, Ordering::Relaxed);
        }
        s.sqid.store(u32::from(sqid), Ordering::Relaxed);
        s.fetch_seq.store(fetch_seq, Ordering::Relaxed);
        s.placed.store(0, Ordering::Relaxed);
        s.state.store(IN_FLIGHT, Ordering::Release);
    }

    /// Step 4, for a backend that decides something before it acts (a Zone
    /// Append's LBA): the word of slot `i` it records that in, so that a
    /// successor that runs the command again finds it.
    pub fn placed(&self, i: u32) -> Option<&AtomicU64> {
        self.slot(i).map(|s| &s.placed)
    }

    /// Step 4: the command in slot `i` completed with `status_field` (the
    /// CQE status field without the phase tag) and will be posted as the
    /// `cq_seq`-th completion, reporting SQ head `sq_head`.
    pub fn complete(&self, i: u32, cq_seq: u64, status_field: u16, dw0: u32, sq_head: u16) {
        let Some(s) = self.slot(i) else { return };
        let result = u64::from(dw0) | (u64::from(status_field) << 32) | (u64::from(sq_head) << 48);
        s.result.store(result, Ordering::Relaxed);
        s.cq_seq.store(cq_seq, Ordering::Relaxed);
        s.state.store(COMPLETED, Ordering::Release);
    }

    /// Step 6: `n` completions have been written in all.
    pub fn posted(&self, n: u64) {
        self.rec().posted.store(n, Ordering::Release);
    }

    /// Step 7: slot `i` is free again.
    pub fn free(&self, i: u32) {
        if let Some(s) = self.slot(i) {
            s.state.store(FREE, Ordering::Release);
        }
    }

    /// The host moved the head to `head` (kept for a successor's checks).
    pub fn head(&self, head: u32) {
        self.rec().head.store(head, Ordering::Relaxed);
    }

    /// Count a completed read of `sectors` 512-byte units (single writer).
    pub fn add_read(&self, sectors: u64) {
        if let Some(c) = self.area.cq_counters(self.qid) {
            bump(&c.read_commands, 1);
            bump(&c.read_sectors, sectors);
        }
    }

    /// Count a completed write (single writer).
    pub fn add_write(&self, sectors: u64) {
        if let Some(c) = self.area.cq_counters(self.qid) {
            bump(&c.write_commands, 1);
            bump(&c.write_sectors, sectors);
        }
    }

    /// Count a media error (single writer).
    pub fn add_media_error(&self) {
        if let Some(c) = self.area.cq_counters(self.qid) {
            bump(&c.media_errors, 1);
        }
    }

    /// Read the record after a runtime died (see the module docs): which
    /// completions to post again, which commands to run again. Slots to
    /// drop are freed here. `sq_consumed(sqid)` gives the consumed count of
    /// a submission queue (None if it is not active: its commands are
    /// dropped).
    pub fn recover(&self, sq_consumed: impl Fn(u16) -> Option<u64>) -> Option<CqRecovery> {
        let r = self.rec();
        if r.active.load(Ordering::Acquire) == 0 {
            return None;
        }
        let size = r.size.load(Ordering::Relaxed);
        let mut out = CqRecovery {
            posted: r.posted.load(Ordering::Acquire),
            head: r.head.load(Ordering::Relaxed),
            size,
            ..CqRecovery::default()
        };
        for i in 0..self.capacity(size) {
            let Some(s) = self.slot(i) else { break };
            let sqid = u16::try_from(s.sqid.load(Ordering::Relaxed)).unwrap_or(0);
            match s.state.load(Ordering::Acquire) {
                COMPLETED if s.cq_seq.load(Ordering::Relaxed) >= out.posted => {
                    let res = s.result.load(Ordering::Relaxed);
                    let sqe = self.sqe_of(s);
                    out.unposted.push(Unposted {
                        slot: i,
                        cq_seq: s.cq_seq.load(Ordering::Relaxed),
                        sqid,
                        cid: sqe.cid.get(),
                        status_field: ((res >> 32) & 0xffff) as u16,
                        dw0: (res & 0xffff_ffff) as u32,
                        sq_head: (res >> 48) as u16,
                    });
                }
                IN_FLIGHT => {
                    let seq = s.fetch_seq.load(Ordering::Relaxed);
                    match sq_consumed(sqid) {
                        Some(c) if seq < c => out.rerun.push(Rerun {
                            slot: i,
                            sqid,
                            fetch_seq: seq,
                            sqe: self.sqe_of(s),
                        }),
                        Some(_) => {
                            out.refetch += 1;
                            s.state.store(FREE, Ordering::Release);
                            out.free.push(i);
                        }
                        None => {
                            s.state.store(FREE, Ordering::Release);
                            out.free.push(i);
                        }
                    }
                }
                FREE => out.free.push(i),
                _ => {
                    // Completed and already posted (or garbage): done with.
                    s.state.store(FREE, Ordering::Release);
                    out.free.push(i);
                }
            }
        }
        out.unposted.sort_by_key(|u| u.cq_seq);
        out.rerun.sort_by_key(|r| (r.sqid, r.fetch_seq));
        Some(out)
    }

    fn sqe_of(&self, s: &SlotRecord) -> Sqe {
        let mut words = [0u64; 8];
        for (w, a) in words.iter_mut().zip(&s.sqe) {
            *w = a.load(Ordering::Relaxed);
        }
        Sqe::read_from_bytes(words.as_bytes()).unwrap_or_else(|_| Sqe::new_zeroed())
    }
}

use zerocopy::FromZeros;

fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqe(cid: u16) -> Sqe {
        let mut s = Sqe::new_zeroed();
        s.opcode = 0x01;
        s.cid = cid.into();
        s.nsid = 1.into();
        s.cdw10 = 0x1234.into();
        s
    }

    /// Counters read back from a corrupted area (found by the link_qstate
    /// fuzz target) saturate instead of overflowing.
    #[test]
    fn io_counts_saturate() {
        let big = IoCounts {
            read_commands: u64::MAX - 1,
            write_commands: u64::MAX,
            read_sectors: 1,
            write_sectors: u64::MAX,
            media_errors: 7,
        };
        let mut t = big;
        t.add(big);
        assert_eq!(t.read_commands, u64::MAX);
        assert_eq!(t.write_commands, u64::MAX);
        assert_eq!(t.read_sectors, 2);
        assert_eq!(t.media_errors, 14);
    }

    #[test]
    fn recovery_follows_the_invariant() {
        let area = Arc::new(QueueState::create(4, 16).unwrap());
        assert!(area.init_cq(1, 8));
        assert!(area.init_sq(1, 8, 1));
        assert!(area.init_sq(2, 8, 1));
        let cq = CqJournal::new(area.clone(), 1).unwrap();
        let sq1 = SqJournal::new(area.clone(), 1).unwrap();
        let sq2 = SqJournal::new(area.clone(), 2).unwrap();
        // Posted and freed: nothing left.
        cq.begin(0, 1, 0, &sqe(10));
        sq1.consumed(1);
        cq.complete(0, 0, 0, 0, 1);
        cq.posted(1);
        cq.free(0);
        // Posted, not freed yet: dropped.
        cq.begin(1, 1, 1, &sqe(11));
        sq1.consumed(2);
        cq.complete(1, 1, 0, 0, 2);
        cq.posted(2);
        // Completion recorded, CQE maybe written, posted not advanced: post again.
        cq.begin(2, 1, 2, &sqe(12));
        sq1.consumed(3);
        cq.complete(2, 2, 0x2 << 1, 7, 3);
        // In flight: run again.
        cq.begin(3, 2, 0, &sqe(13));
        sq2.consumed(1);
        // Recorded but consumed not advanced: it will be fetched again.
        cq.begin(4, 2, 1, &sqe(14));
        let rec = cq
            .recover(|q| match q {
                1 => sq1.resume().map(|r| r.consumed),
                2 => sq2.resume().map(|r| r.consumed),
                _ => None,
            })
            .unwrap();
        assert_eq!(rec.posted, 2);
        assert_eq!(rec.unposted.len(), 1);
        let u = rec.unposted[0];
        assert_eq!((u.slot, u.cq_seq, u.cid, u.sqid), (2, 2, 12, 1));
        assert_eq!((u.status_field, u.dw0, u.sq_head), (0x2 << 1, 7, 3));
        assert_eq!(rec.rerun.len(), 1);
        assert_eq!(rec.rerun[0].sqe.cid.get(), 13);
        assert_eq!(rec.rerun[0].sqe.cdw10.get(), 0x1234);
        assert_eq!(rec.refetch, 1);
        assert_eq!(area.cq_outstanding(1), 2);
        // Deleting SQ 2 drops its in-flight command.
        assert_eq!(area.clear_sq(2), 1);
        assert_eq!(area.cq_outstanding(1), 1);
    }

    #[test]
    fn counters_and_irq_bits() {
        let area = Arc::new(QueueState::create(2, 4).unwrap());
        area.init_cq(2, 4);
        let cq = CqJournal::new(area.clone(), 2).unwrap();
        cq.add_read(8);
        cq.add_write(16);
        cq.add_media_error();
        let c = area.clear_cq(2);
        assert_eq!(
            (
                c.read_commands,
                c.read_sectors,
                c.write_sectors,
                c.media_errors
            ),
            (1, 8, 16, 1)
        );
        assert!(CqJournal::new(area.clone(), 3).is_none());
        area.set_irq_masked(33, true);
        assert!(area.irq_masked(33) && !area.irq_masked(32));
        area.set_irq_pending(33, true);
        assert!(area.take_irq_pending(33));
        assert!(!area.take_irq_pending(33));
    }

    #[test]
    fn open_checks_the_header() {
        let area = QueueState::create(3, 64).unwrap();
        let fd = area.fd().try_clone_to_owned().unwrap();
        let other = QueueState::open(fd).unwrap();
        assert_eq!(other.slots(), 64);
        area.init_cq(1, 8);
        CqJournal::new(Arc::new(other), 1).unwrap().posted(5);
        assert_eq!(
            CqJournal::new(Arc::new(area), 1)
                .unwrap()
                .recover(|_| None)
                .unwrap()
                .posted,
            5
        );
    }
}
