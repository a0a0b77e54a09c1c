//! The null target: a thread that plays a controller doing no work over
//! the same kind of shared-memory queues socp polls. It reads each SQE's
//! CID and posts a successful CQE at once (phase tag last, with release
//! ordering, like socp). Run against it, the harness measures its own cost
//! and that of moving cache lines between two cores: what socp adds on top
//! is the difference.

use leapio_tests::driver::PAGE;
use leapio_tests::GuestMem;
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
}

// SAFETY: a plain shared memory mapping; the thread that uses it only does
// volatile loads and stores, and it is unmapped after that thread joined.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly our own mapping, nobody uses it any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

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
        // SAFETY: mapping the whole memfd shared; result checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                mem.fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        let map = Arc::new(Mapping { ptr, len });
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
        let stop = Arc::new(AtomicBool::new(false));
        let (m, st, db_off) = (map.clone(), stop.clone(), off(doorbell_gpa));
        let (up, running) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("{THREAD_PREFIX}-0"))
            .spawn(move || {
                let _ = up.send(());
                serve(&m, db_off, rings, &st);
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

fn serve(map: &Mapping, db: usize, mut rings: Vec<Ring>, stop: &AtomicBool) {
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
                r.head = (r.head + 1) % r.entries;
                let cqe = r.cq + r.cq_tail as usize * 16;
                store(cqe, 0);
                store(cqe + 4, 0);
                store(cqe + 8, r.head | (r.qid << 16));
                fence(Ordering::Release);
                store(cqe + 12, cid | (u32::from(r.phase) << 16));
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
