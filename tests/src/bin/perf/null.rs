//! The null target: a thread that plays a controller doing no work over
//! the same kind of shared-memory queues socp polls. It reads each SQE's
//! CID and posts a successful CQE at once (phase tag last, with release
//! ordering, like socp). Run against it, the harness measures its own cost
//! and that of moving cache lines between two cores: what socp adds on top
//! is the difference.
//!
//! With a copy area (`--null-copy`) reads and writes also move their data
//! between the guest buffers and a private RAM area, as socp's RAM backend
//! does, and the thread does nothing else: the floor of any RAM disk here.

use leapio_tests::driver::PAGE;
use leapio_tests::GuestMem;
use memmap2::{Advice, MmapMut, MmapOptions, MmapRaw};
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Name prefix of the null controller's thread (for CPU accounting).
pub const THREAD_PREFIX: &str = "leapio-null";

/// A queue pair the null target serves.
#[derive(Clone, Copy, Debug)]
pub struct NullQueue {
    pub qid: u16,
    pub sq_gpa: u64,
    pub cq_gpa: u64,
    pub entries: u32,
}

/// A second shared mapping of the guest RAM memfd, for the other thread.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    _map: MmapRaw,
}

// SAFETY: `ptr` points into `_map`, plain shared memory the mapping keeps
// alive; the thread that uses it only does volatile loads and stores, and
// drops it after joining.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

/// The running null controller; stops on drop.
pub struct NullTarget {
    /// Keeps the mapping (and so the doorbell page) alive.
    _map: Arc<Mapping>,
    doorbells: NonNull<u32>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NullTarget {
    /// Serve `queues` (rings allocated in `mem`), with the doorbell page at
    /// `doorbell_gpa` (also in `mem`, page aligned).
    pub fn start(
        mem: &GuestMem,
        doorbell_gpa: u64,
        queues: &[NullQueue],
        copy_area: Option<u64>,
    ) -> io::Result<NullTarget> {
        let len =
            usize::try_from(mem.size()).map_err(|_| io::Error::other("guest RAM too large"))?;
        for q in queues {
            let end_sq = q.sq_gpa + u64::from(q.entries) * 64;
            let end_cq = q.cq_gpa + u64::from(q.entries) * 16;
            if q.qid >= 512 || end_sq.max(end_cq).max(doorbell_gpa + PAGE) > mem.base() + mem.size()
            {
                return Err(io::Error::other("null target queues outside guest RAM"));
            }
        }
        let raw = MmapOptions::new().len(len).map_raw(mem.fd().as_raw_fd())?;
        let ptr =
            NonNull::new(raw.as_mut_ptr()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        let map = Arc::new(Mapping {
            ptr,
            len,
            _map: raw,
        });
        let off = |gpa: u64| usize::try_from(gpa - mem.base()).unwrap_or(usize::MAX);
        // SAFETY: the doorbell page lies inside the mapping (checked above).
        let doorbells =
            unsafe { NonNull::new_unchecked(ptr.as_ptr().add(off(doorbell_gpa)).cast::<u32>()) };
        let rings: Vec<Ring> = queues
            .iter()
            .map(|q| Ring {
                qid: u32::from(q.qid),
                sq: off(q.sq_gpa),
                cq: off(q.cq_gpa),
                entries: q.entries,
                head: 0,
                cq_tail: 0,
                phase: true,
            })
            .collect();
        let area = copy_area.map(CopyArea::new).transpose()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (m, st, db_off, base) = (map.clone(), stop.clone(), off(doorbell_gpa), mem.base());
        let (up, running) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("{THREAD_PREFIX}-0"))
            .spawn(move || {
                let _ = up.send(());
                serve(&m, db_off, rings, &st, area.as_ref().map(|a| (a, base)));
            })?;
        // Named by now: CPU accounting finds it by name.
        let _ = running.recv();
        Ok(NullTarget {
            _map: map,
            doorbells,
            stop,
            thread: Some(thread),
        })
    }

    /// The doorbell page (NVMe layout), valid while `self` lives.
    pub fn doorbells(&self) -> NonNull<u32> {
        self.doorbells
    }
}

impl Drop for NullTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The RAM disk of `--null-copy`: private anonymous memory (huge pages if
/// the kernel gives them), written once so that reads copy real pages.
struct CopyArea {
    ptr: NonNull<u8>,
    len: usize,
    _map: MmapMut,
}

// SAFETY: `ptr` points into `_map`, plain memory owned by this value, used
// by one thread at a time.
unsafe impl Send for CopyArea {}

impl CopyArea {
    fn new(len: u64) -> io::Result<CopyArea> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("copy area too large"))?;
        let mut map = MmapOptions::new().len(len).no_reserve_swap().map_anon()?;
        let _ = map.advise(Advice::HugePage);
        map.fill(0xA5);
        let ptr =
            NonNull::new(map.as_mut_ptr()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(CopyArea {
            ptr,
            len,
            _map: map,
        })
    }
}

/// Copy the data of the read or write `sqe` (offset in the guest mapping)
/// between the guest buffers named by PRP1/PRP2 and the copy area. Returns
/// the CQE status field (0, or Data Transfer Error for buffers outside the
/// mapping).
fn copy_data(map: &Mapping, guest_base: u64, sqe: usize, area: &CopyArea) -> u32 {
    let base = map.ptr.as_ptr();
    // SAFETY: `sqe` is a checked offset of a 64-byte entry in the mapping.
    let rd = |o: usize| unsafe { base.add(sqe + o).cast::<u64>().read_volatile() };
    let opcode = rd(0) & 0xff;
    let write = match opcode {
        0x01 => true,
        0x02 => false,
        _ => return 0,
    };
    let (prp1, prp2, slba, nlb) = (rd(24), rd(32), rd(40), rd(48) & 0xffff);
    let len = (nlb + 1) * 512;
    let area_len = area.len as u64;
    let mut at = (slba * 512) % area_len;
    if at + len > area_len {
        at = 0;
    }
    let first = len.min(PAGE - prp1 % PAGE);
    let mut done = 0;
    for (gpa, n) in [(prp1, first), (prp2, len - first)] {
        if n == 0 {
            continue;
        }
        let off = gpa.wrapping_sub(guest_base);
        if n > PAGE || off.checked_add(n).is_none_or(|e| e > map.len as u64) {
            return 0x4 << 1; // Data Transfer Error, phase bit excluded
        }
        // In bounds (checked above); the host leaves a buffer alone while
        // its command is outstanding, and the area is ours.
        #[allow(clippy::cast_possible_truncation)]
        let (g, a, n) = (off as usize, (at + done) as usize, n as usize);
        // SAFETY: both ranges lie inside their mappings (checked above).
        unsafe {
            if write {
                std::ptr::copy_nonoverlapping(base.add(g), area.ptr.as_ptr().add(a), n);
            } else {
                std::ptr::copy_nonoverlapping(area.ptr.as_ptr().add(a), base.add(g), n);
            }
        }
        done += n as u64;
    }
    0
}

struct Ring {
    qid: u32,
    /// Byte offsets in the mapping.
    sq: usize,
    cq: usize,
    entries: u32,
    head: u32,
    cq_tail: u32,
    phase: bool,
}

fn serve(
    map: &Mapping,
    db: usize,
    mut rings: Vec<Ring>,
    stop: &AtomicBool,
    copy: Option<(&CopyArea, u64)>,
) {
    let base = map.ptr.as_ptr();
    // Every offset below was checked to lie in the mapping, which outlives
    // this thread, and ring indexes are reduced modulo the ring size. The
    // host touches the same memory concurrently, as with a real device:
    // hence volatile accesses and fences.
    let load = |off: usize| {
        // SAFETY: see above.
        unsafe { base.add(off).cast::<u32>().read_volatile() }
    };
    let store = |off: usize, v: u32| {
        // SAFETY: see above.
        unsafe { base.add(off).cast::<u32>().write_volatile(v) }
    };
    while !stop.load(Ordering::Relaxed) {
        let mut work = false;
        for r in &mut rings {
            let dbs = db + r.qid as usize * 8;
            let tail = load(dbs);
            if tail >= r.entries || tail == r.head {
                continue;
            }
            fence(Ordering::Acquire);
            let cq_head = load(dbs + 4);
            while r.head != tail {
                if (r.cq_tail + 1) % r.entries == cq_head {
                    break; // CQ full: the host has not consumed yet
                }
                let sqe = r.sq + r.head as usize * 64;
                let cid = load(sqe) >> 16;
                let status = match copy {
                    Some((area, guest_base)) => copy_data(map, guest_base, sqe, area),
                    None => 0,
                };
                r.head = (r.head + 1) % r.entries;
                let cqe = r.cq + r.cq_tail as usize * 16;
                store(cqe, 0);
                store(cqe + 4, 0);
                store(cqe + 8, r.head | (r.qid << 16));
                fence(Ordering::Release);
                store(cqe + 12, cid | ((u32::from(r.phase) | status) << 16));
                r.cq_tail += 1;
                if r.cq_tail == r.entries {
                    r.cq_tail = 0;
                    r.phase = !r.phase;
                }
                work = true;
            }
        }
        if !work {
            std::hint::spin_loop();
        }
    }
}
