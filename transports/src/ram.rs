//! The RAM backend: one private anonymous mapping (huge pages where the
//! host allows them) shared by all queues of this process.
//! Requests are carried out at submit time and reported by the next poll.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::sys::{page_size, Mapping};
use crate::{
    human_size, validate, Backend, BackendError, BackendQueue, Completion, Features, Geometry,
    IoKind, IoRequest, SubmitError, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE,
};

/// Most requests a RAM queue holds before `submit` says `Full`.
const MAX_RAM_DEPTH: u32 = 1 << 20;

/// Volatile storage in anonymous memory (contents start as zeroes).
pub struct RamBackend {
    mem: Arc<Mapping>,
    geometry: Geometry,
    /// Bytes copied, one counter per queue opened (each has one writer: a
    /// shared counter would cost a locked instruction per request, which
    /// waits for the copy's stores to drain).
    copied: std::sync::Mutex<Vec<Arc<AtomicU64>>>,
}

impl RamBackend {
    /// `size` bytes (a non-zero multiple of `block_size`, a power of two from
    /// 512 to 65536). Pages are allocated on first write.
    pub fn new(size: u64, block_size: u32) -> Result<Self, BackendError> {
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(BackendError::Config(format!(
                "ram: block size {block_size} is not a power of two between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}"
            )));
        }
        let bs = u64::from(block_size);
        if size == 0 || size % bs != 0 {
            return Err(BackendError::Config(format!(
                "ram: size {size} is not a non-zero multiple of the block size {block_size}"
            )));
        }
        let len = usize::try_from(size).map_err(|_| {
            BackendError::Config(format!(
                "ram: size {size} does not fit in the address space"
            ))
        })?;
        let mem = Mapping::anonymous(len).map_err(|source| BackendError::Map { size, source })?;
        Ok(RamBackend {
            mem: Arc::new(mem),
            geometry: Geometry {
                block_size,
                num_blocks: size / bs,
            },
            copied: std::sync::Mutex::new(Vec::new()),
        })
    }
}

impl Backend for RamBackend {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn features(&self) -> Features {
        Features {
            volatile_write_cache: false,
            write_zeroes: true,
            deallocate: true,
        }
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn BackendQueue>, BackendError> {
        if depth == 0 || depth > MAX_RAM_DEPTH {
            return Err(BackendError::Config(format!(
                "ram: queue depth {depth} is not between 1 and {MAX_RAM_DEPTH}"
            )));
        }
        let copied = Arc::new(AtomicU64::new(0));
        self.copied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::clone(&copied));
        Ok(Box::new(RamQueue {
            mem: Arc::clone(&self.mem),
            geometry: self.geometry,
            depth: depth as usize,
            done: Vec::with_capacity(depth as usize),
            copied,
        }))
    }

    fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "ram ({}, {} B blocks, volatile)",
            human_size(self.geometry.size_bytes()),
            self.geometry.block_size
        )
    }

    fn persistent(&self) -> bool {
        false
    }

    fn copied_bytes(&self) -> u64 {
        self.copied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

struct RamQueue {
    mem: Arc<Mapping>,
    geometry: Geometry,
    depth: usize,
    /// Finished requests not yet returned by poll.
    done: Vec<Completion>,
    /// This queue's bytes copied; it is the only writer.
    copied: Arc<AtomicU64>,
}

impl RamQueue {
    /// Zero `[offset, offset + len)` of the mapping (already range-checked).
    /// Deallocate also gives whole pages back to the kernel.
    fn zero(&self, offset: usize, len: usize, release: bool) {
        let base = self.mem.as_ptr();
        let end = offset + len;
        if release {
            let page = page_size();
            let first = offset.next_multiple_of(page);
            let last = end - end % page;
            if last > first && self.mem.discard_pages(first, last - first).is_ok() {
                // SAFETY: [offset, first) and [last, end) lie inside the
                // mapping (range checked by `validate`). Only raw pointers are
                // used, so a concurrent poller touching the same bytes cannot
                // create aliasing references.
                unsafe {
                    std::ptr::write_bytes(base.add(offset), 0, first - offset);
                    std::ptr::write_bytes(base.add(last), 0, end - last);
                }
                return;
            }
        }
        // SAFETY: [offset, end) lies inside the mapping (range checked by
        // `validate`); raw-pointer writes only, see above.
        unsafe { std::ptr::write_bytes(base.add(offset), 0, len) };
    }
}

impl BackendQueue for RamQueue {
    unsafe fn submit(&mut self, req: &IoRequest<'_>) -> Result<(), SubmitError> {
        validate(req, self.geometry)?;
        if self.done.len() >= self.depth {
            return Err(SubmitError::Full);
        }
        // `validate` checked offset + len <= the mapping's length, a usize.
        let offset =
            usize::try_from(req.offset).map_err(|_| SubmitError::Invalid("range overflows"))?;
        let len = usize::try_from(req.len).map_err(|_| SubmitError::Invalid("range overflows"))?;
        debug_assert!(offset + len <= self.mem.len());
        let base = self.mem.as_ptr();
        match req.kind {
            IoKind::Read | IoKind::Write | IoKind::WriteFua => {
                let mut pos = offset;
                for v in req.iov {
                    let dev = base.wrapping_add(pos);
                    let host = v.iov_base.cast::<u8>();
                    if req.kind == IoKind::Read {
                        // SAFETY: the device range lies inside the mapping
                        // (`validate`: iovec lengths add up to len and the
                        // range fits); the caller guarantees `host` is valid
                        // for writes of iov_len bytes. Guest memory and our
                        // private mapping never overlap.
                        unsafe { std::ptr::copy_nonoverlapping(dev, host, v.iov_len) };
                    } else {
                        // SAFETY: as above, with `host` valid for reads.
                        unsafe { std::ptr::copy_nonoverlapping(host, dev, v.iov_len) };
                    }
                    pos += v.iov_len;
                }
                let n = self.copied.load(Ordering::Relaxed);
                self.copied.store(n + req.len, Ordering::Relaxed);
            }
            // `validate` refuses zone kinds.
            IoKind::Flush | IoKind::ZoneAppend { .. } | IoKind::Zone { .. } => {}
            IoKind::WriteZeroes | IoKind::WriteZeroesFua => self.zero(offset, len, false),
            IoKind::Deallocate => self.zero(offset, len, true),
        }
        self.done.push(Completion {
            tag: req.tag,
            result: Ok(()),
            value: 0,
        });
        Ok(())
    }

    fn kick(&mut self) -> Result<(), BackendError> {
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        let n = self.done.len();
        out.append(&mut self.done);
        n
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    fn drain(&mut self, out: &mut Vec<Completion>, _timeout: Duration) -> usize {
        self.poll(out)
    }
}
