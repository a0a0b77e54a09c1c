//! Immutable sets of regions and the accesses through them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use vm_memory::{Bytes, MmapRegion, VolatileMemory, VolatileSlice};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::{Access, AtsError, Prot, RegionInfo};

/// One guest-physical mapping.
#[derive(Debug, Clone)]
pub(crate) struct Region {
    pub(crate) gpa: u64,
    pub(crate) size: u64,
    pub(crate) prot: Prot,
    pub(crate) file_offset: u64,
    /// Host mapping; `None` for fd-less (or `Prot::NONE`) mappings, which are
    /// recorded so that unmap matches them but are never accessible.
    pub(crate) mem: Option<Arc<MmapRegion>>,
}

impl Region {
    /// One past the last address (cannot overflow: checked at map time).
    pub(crate) fn end(&self) -> u64 {
        self.gpa + self.size
    }

    pub(crate) fn info(&self) -> RegionInfo {
        RegionInfo {
            gpa: self.gpa,
            size: self.size,
            prot: self.prot,
            file_offset: self.file_offset,
            translatable: self.mem.is_some(),
        }
    }
}

/// An immutable view of a [`Domain`](crate::Domain)'s mappings.
///
/// Holding an `Arc<Snapshot>` keeps every region in it mapped: pointers from
/// [`translate`](Snapshot::translate) and iovecs from
/// [`map_prps`](crate::prp::map_prps) are valid only while the snapshot they
/// came from is alive (keep it with the request until its I/O has completed).
/// A poller caches one snapshot and refreshes it when
/// [`Domain::generation`](crate::Domain::generation) changes; a concurrent
/// [`Domain::unmap`](crate::Domain::unmap) waits for it to do so.
#[derive(Debug)]
pub struct Snapshot {
    generation: u64,
    /// Sorted by `gpa`, non-overlapping.
    regions: Vec<Region>,
}

// Compile-time check: snapshots travel between pollers and the control thread.
// (MmapRegion is Send + Sync: it only hands out volatile accessors.)
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Snapshot>();
};

impl Snapshot {
    pub(crate) fn new(generation: u64, regions: Vec<Region>) -> Snapshot {
        debug_assert!(regions.windows(2).all(|w| w[0].end() <= w[1].gpa));
        Snapshot {
            generation,
            regions,
        }
    }

    pub(crate) fn regions_raw(&self) -> &[Region] {
        &self.regions
    }

    /// The domain generation this snapshot was published at.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The mapped regions, in ascending guest-physical order.
    pub fn regions(&self) -> impl ExactSizeIterator<Item = RegionInfo> + '_ {
        self.regions.iter().map(Region::info)
    }

    /// Whether there is no mapping at all.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// The region containing `gpa`, if any.
    fn find(&self, gpa: u64) -> Option<&Region> {
        let idx = self.regions.partition_point(|r| r.gpa <= gpa);
        let r = self.regions.get(idx.checked_sub(1)?)?;
        (gpa < r.end()).then_some(r)
    }

    /// The longest prefix (at most `len` bytes, `len > 0`) of
    /// `[gpa, gpa+len)` that lies in the one region containing `gpa`, as a
    /// volatile slice, if that region allows `access`.
    fn slice_prefix(
        &self,
        gpa: u64,
        len: u64,
        access: Access,
    ) -> Result<VolatileSlice<'_>, AtsError> {
        let r = self.find(gpa).ok_or(AtsError::OutOfRange { gpa, len })?;
        let Some(mem) = r.mem.as_deref() else {
            return Err(AtsError::NotTranslatable { gpa });
        };
        if !r.prot.allows(access) {
            return Err(AtsError::Permission {
                gpa,
                access,
                prot: r.prot,
            });
        }
        let off = gpa - r.gpa;
        let n = len.min(r.size - off);
        // Both fit in usize: they are bounded by the region size, which was
        // converted to usize at map time.
        let off = usize::try_from(off).map_err(|_| AtsError::OutOfRange { gpa, len })?;
        let n = usize::try_from(n).map_err(|_| AtsError::OutOfRange { gpa, len })?;
        mem.get_slice(off, n).map_err(AtsError::Volatile)
    }

    /// `[gpa, gpa+len)` as one volatile slice: it must lie in one region.
    fn slice(&self, gpa: u64, len: u64, access: Access) -> Result<VolatileSlice<'_>, AtsError> {
        if len == 0 {
            return Err(AtsError::ZeroLength { gpa });
        }
        let s = self.slice_prefix(gpa, len, access)?;
        if s.len() as u64 != len {
            return Err(AtsError::OutOfRange { gpa, len });
        }
        Ok(s)
    }

    /// Host address of `[gpa, gpa+len)` if it lies entirely inside one
    /// translatable region that allows `access`. `len == 0` is an error.
    ///
    /// The pointer is valid while this snapshot is alive. Guest memory can
    /// change under it at any time: access it only with volatile or atomic
    /// operations, or hand it to the kernel (io_uring, preadv...); never make
    /// a Rust reference out of it.
    pub fn translate(&self, gpa: u64, len: u64, access: Access) -> Result<*mut u8, AtsError> {
        Ok(self.slice(gpa, len, access)?.ptr_guard_mut().as_ptr())
    }

    /// Host address and length of the longest prefix (up to `len`, `len > 0`)
    /// of `[gpa, gpa+len)` that lies in the single region containing `gpa`.
    /// Loop on it to walk a range that spans regions contiguous in
    /// guest-physical space.
    pub fn translate_prefix(
        &self,
        gpa: u64,
        len: u64,
        access: Access,
    ) -> Result<(*mut u8, u64), AtsError> {
        if len == 0 {
            return Err(AtsError::ZeroLength { gpa });
        }
        let s = self.slice_prefix(gpa, len, access)?;
        Ok((s.ptr_guard_mut().as_ptr(), s.len() as u64))
    }

    /// Call `f` on consecutive volatile slices covering `[gpa, gpa+len)`,
    /// which may span regions contiguous in guest-physical space.
    fn for_each_slice(
        &self,
        gpa: u64,
        len: usize,
        access: Access,
        mut f: impl FnMut(usize, &VolatileSlice<'_>),
    ) -> Result<(), AtsError> {
        let total = len as u64;
        if gpa.checked_add(total).is_none() {
            return Err(AtsError::OutOfRange { gpa, len: total });
        }
        let mut done = 0usize;
        while done < len {
            let at = gpa + done as u64;
            let s = self.slice_prefix(at, (len - done) as u64, access)?;
            f(done, &s);
            done += s.len();
        }
        Ok(())
    }

    /// Volatile copy of `buf.len()` bytes out of guest memory at `gpa`.
    /// The range may span regions that are contiguous in guest-physical
    /// space; an empty `buf` is a no-op. On error, `buf` may be partly written.
    pub fn read_bytes(&self, gpa: u64, buf: &mut [u8]) -> Result<(), AtsError> {
        self.for_each_slice(gpa, buf.len(), Access::Read, |done, s| {
            s.copy_to(&mut buf[done..done + s.len()]);
        })
    }

    /// Volatile copy of `data` into guest memory at `gpa`.
    /// The range may span regions that are contiguous in guest-physical
    /// space; an empty `data` is a no-op. On error, guest memory may be
    /// partly written.
    pub fn write_bytes(&self, gpa: u64, data: &[u8]) -> Result<(), AtsError> {
        // Check the whole range first so a bad range writes nothing.
        self.for_each_slice(gpa, data.len(), Access::Write, |_, _| {})?;
        self.for_each_slice(gpa, data.len(), Access::Write, |done, s| {
            s.copy_from(&data[done..done + s.len()]);
        })
    }

    /// Volatile copy of a `T` out of guest memory (no alignment needed).
    ///
    /// The copy is a private snapshot of what the guest had written: validate
    /// and use the copy, never re-read the guest's version.
    pub fn read_obj<T: FromBytes + IntoBytes>(&self, gpa: u64) -> Result<T, AtsError> {
        let mut v = T::new_zeroed();
        self.read_bytes(gpa, v.as_mut_bytes())?;
        Ok(v)
    }

    /// Volatile copy of `val` into guest memory (no alignment needed).
    pub fn write_obj<T: IntoBytes + Immutable>(&self, gpa: u64, val: &T) -> Result<(), AtsError> {
        self.write_bytes(gpa, val.as_bytes())
    }

    fn aligned_u32(&self, gpa: u64, access: Access) -> Result<VolatileSlice<'_>, AtsError> {
        if gpa % 4 != 0 {
            return Err(AtsError::Misaligned { gpa, align: 4 });
        }
        // Regions are 4 KiB aligned in both spaces, so the host address is
        // 4-byte aligned too (vm-memory checks it again).
        self.slice(gpa, 4, access)
    }

    /// Atomic 32-bit load with acquire ordering (shadow doorbells, event
    /// indexes). `gpa` must be 4-byte aligned. The value is in host byte
    /// order, i.e. little-endian guest data on the hosts we support.
    pub fn load_u32_acquire(&self, gpa: u64) -> Result<u32, AtsError> {
        self.aligned_u32(gpa, Access::Read)?
            .load::<u32>(0, Ordering::Acquire)
            .map_err(AtsError::Volatile)
    }

    /// Atomic 32-bit store with release ordering. `gpa` must be 4-byte aligned.
    pub fn store_u32_release(&self, gpa: u64, val: u32) -> Result<(), AtsError> {
        self.aligned_u32(gpa, Access::Write)?
            .store(val, 0, Ordering::Release)
            .map_err(AtsError::Volatile)
    }
}
