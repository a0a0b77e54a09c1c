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
    pub(crate) mem: Option<Arc<Mem>>,
}

/// The host mapping of a region, and the grant that lets a device reach
/// it (dropped first: a device loses the memory before it is unmapped).
pub(crate) struct Mem {
    pub(crate) grant: Option<Box<dyn std::any::Any + Send + Sync>>,
    pub(crate) map: MmapRegion,
}

impl std::fmt::Debug for Mem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mem")
            .field("granted", &self.grant.is_some())
            .field("len", &self.map.size())
            .finish()
    }
}

impl std::ops::Deref for Mem {
    type Target = MmapRegion;
    fn deref(&self) -> &MmapRegion {
        &self.map
    }
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

    /// The mapped regions with the file each one maps (None for fd-less
    /// ones), to hand the same memory to another process.
    pub fn region_files(
        &self,
    ) -> impl Iterator<Item = (RegionInfo, Option<std::os::fd::BorrowedFd<'_>>)> + '_ {
        use std::os::fd::AsFd;
        self.regions.iter().map(|r| {
            let fd = r
                .mem
                .as_deref()
                .and_then(|m| m.file_offset())
                .map(|f| f.file().as_fd());
            (r.info(), fd)
        })
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

    fn aligned_u16(&self, gpa: u64, access: Access) -> Result<VolatileSlice<'_>, AtsError> {
        if gpa % 2 != 0 {
            return Err(AtsError::Misaligned { gpa, align: 2 });
        }
        self.slice(gpa, 2, access)
    }

    /// Atomic 16-bit load with acquire ordering (a virtqueue's indexes and
    /// event fields). `gpa` must be 2-byte aligned.
    pub fn load_u16_acquire(&self, gpa: u64) -> Result<u16, AtsError> {
        self.aligned_u16(gpa, Access::Read)?
            .load::<u16>(0, Ordering::Acquire)
            .map_err(AtsError::Volatile)
    }

    /// Atomic 16-bit store with release ordering. `gpa` must be 2-byte aligned.
    pub fn store_u16_release(&self, gpa: u64, val: u16) -> Result<(), AtsError> {
        self.aligned_u16(gpa, Access::Write)?
            .store(val, 0, Ordering::Release)
            .map_err(AtsError::Volatile)
    }
}

#[cfg(test)]
mod tests {
    use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

    use crate::testing::memfd;
    use crate::tests::{host, map_ram, unique_name};
    use crate::{Access, AtsError, Domain, Prot};

    const MB: u64 = 1 << 20;

    #[test]
    fn translate_inside_and_across_region_edges() {
        let d = Domain::new();
        map_ram(&d, MB, MB, Prot::READ_WRITE);
        map_ram(&d, 2 * MB, MB, Prot::READ_WRITE); // contiguous in GPA
        map_ram(&d, 4 * MB, MB, Prot::READ_WRITE); // after a gap
        let s = d.snapshot();

        let p = s.translate(MB, 4096, Access::Read).unwrap();
        let q = s.translate(MB + 0x10, 8, Access::Write).unwrap();
        assert_eq!(q.addr(), p.addr() + 0x10);
        // The last byte of a region, and the whole region.
        s.translate(2 * MB - 1, 1, Access::Read).unwrap();
        s.translate(MB, MB, Access::Read).unwrap();

        // Crossing into the next region (even a contiguous one) is not one region.
        assert!(matches!(
            s.translate(2 * MB - 4, 8, Access::Read),
            Err(AtsError::OutOfRange { .. })
        ));
        // Before the first region, in the gap, past the end, at the top of the space.
        for gpa in [0, MB - 1, 3 * MB, 5 * MB, u64::MAX] {
            assert!(
                matches!(
                    s.translate(gpa, 1, Access::Read),
                    Err(AtsError::OutOfRange { .. })
                ),
                "{gpa:#x}"
            );
        }
        assert!(matches!(
            s.translate(u64::MAX - 1, 4, Access::Read),
            Err(AtsError::OutOfRange { .. })
        ));
        assert!(matches!(
            s.translate(MB, 0, Access::Read),
            Err(AtsError::ZeroLength { .. })
        ));
        assert!(matches!(
            s.translate(MB, MB + 1, Access::Read),
            Err(AtsError::OutOfRange { .. })
        ));
    }

    #[test]
    fn byte_copies_span_contiguous_regions_only() {
        let d = Domain::new();
        map_ram(&d, MB, MB, Prot::READ_WRITE);
        map_ram(&d, 2 * MB, MB, Prot::READ_WRITE);
        map_ram(&d, 4 * MB, MB, Prot::READ_WRITE);
        let s = d.snapshot();

        let data: Vec<u8> = (0..=255u8).collect();
        s.write_bytes(2 * MB - 100, &data).unwrap();
        let mut back = vec![0u8; 256];
        s.read_bytes(2 * MB - 100, &mut back).unwrap();
        assert_eq!(back, data);
        // Each half landed in its own region.
        let mut tail = [0u8; 156];
        s.read_bytes(2 * MB, &mut tail).unwrap();
        assert_eq!(&tail[..], &data[100..]);

        // Across the gap: refused, and the write does not touch the first region.
        let before = s.read_obj::<[u8; 16]>(3 * MB - 16).unwrap();
        assert!(matches!(
            s.write_bytes(3 * MB - 16, &[0xaa; 32]),
            Err(AtsError::OutOfRange { gpa, .. }) if gpa == 3 * MB
        ));
        assert_eq!(s.read_obj::<[u8; 16]>(3 * MB - 16).unwrap(), before);
        assert!(s.read_bytes(3 * MB - 16, &mut [0u8; 32]).is_err());
        // Empty copies are no-ops, even outside RAM.
        s.read_bytes(0, &mut []).unwrap();
        s.write_bytes(0, &[]).unwrap();
    }

    #[derive(Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    struct Cqe {
        dw0: u32,
        dw1: u32,
        sq_head: u16,
        sq_id: u16,
        cid: u16,
        status: u16,
    }

    #[test]
    fn read_write_obj_and_file_offsets() {
        let d = Domain::new();
        // One memfd mapped twice: at 1 MiB (file offset 0) and at 8 MiB
        // (file offset 64 KiB). Both views must see the same bytes.
        let name = unique_name("alias");
        let fd = memfd(&name, MB).unwrap();
        let fd2 = fd.try_clone().unwrap();
        d.map(MB, MB, Some(fd), 0, Prot::READ_WRITE).unwrap();
        d.map(8 * MB, 0x1_0000, Some(fd2), 0x1_0000, Prot::READ)
            .unwrap();
        let s = d.snapshot();

        let cqe = Cqe {
            dw0: 0x1122_3344,
            dw1: 5,
            sq_head: 7,
            sq_id: 1,
            cid: 0xbeef,
            status: 1,
        };
        // Unaligned on purpose.
        s.write_obj(MB + 0x1_0003, &cqe).unwrap();
        assert_eq!(s.read_obj::<Cqe>(MB + 0x1_0003).unwrap(), cqe);
        assert_eq!(s.read_obj::<Cqe>(8 * MB + 3).unwrap(), cqe);
        assert_eq!(s.read_obj::<u32>(8 * MB + 3).unwrap(), 0x1122_3344);
        // Read-only alias refuses writes.
        assert!(matches!(
            s.write_obj(8 * MB, &1u32),
            Err(AtsError::Permission {
                access: Access::Write,
                ..
            })
        ));
        // An object that straddles the end of RAM.
        assert!(s.read_obj::<Cqe>(2 * MB - 8).is_err());
    }

    #[test]
    fn permissions_and_fd_less_maps() {
        let d = Domain::new();
        map_ram(&d, 0x10_0000, 0x1_0000, Prot::READ);
        map_ram(&d, 0x20_0000, 0x1_0000, Prot::WRITE);
        map_ram(&d, 0x30_0000, 0x1_0000, Prot::NONE);
        d.map(0x40_0000, 0x1_0000, None, 0, Prot::READ_WRITE)
            .unwrap();
        let s = d.snapshot();

        s.translate(0x10_0000, 8, Access::Read).unwrap();
        assert!(matches!(
            s.translate(0x10_0000, 8, Access::Write),
            Err(AtsError::Permission { .. })
        ));
        s.translate(0x20_0000, 8, Access::Write).unwrap();
        assert!(matches!(
            s.translate(0x20_0000, 8, Access::Read),
            Err(AtsError::Permission { .. })
        ));
        for gpa in [0x30_0000, 0x40_0000] {
            for a in [Access::Read, Access::Write] {
                assert!(matches!(
                    s.translate(gpa + 8, 8, a),
                    Err(AtsError::NotTranslatable { gpa: g }) if g == gpa + 8
                ));
            }
        }
        assert!(s.read_obj::<u64>(0x40_0000).is_err());
        let infos: Vec<_> = s.regions().collect();
        assert_eq!(infos.len(), 4);
        assert!(infos[0].translatable && !infos[2].translatable && !infos[3].translatable);
    }

    #[test]
    fn atomics() {
        let d = Domain::new();
        map_ram(&d, MB, 0x1000, Prot::READ_WRITE);
        map_ram(&d, 2 * MB, 0x1000, Prot::READ);
        let s = d.snapshot();
        s.store_u32_release(MB + 0x40, 0xdead_beef).unwrap();
        assert_eq!(s.load_u32_acquire(MB + 0x40).unwrap(), 0xdead_beef);
        assert_eq!(s.read_obj::<u32>(MB + 0x40).unwrap(), 0xdead_beef);
        s.load_u32_acquire(2 * MB).unwrap();
        for gpa in [MB + 1, MB + 2, MB + 0x43] {
            assert!(matches!(
                s.load_u32_acquire(gpa),
                Err(AtsError::Misaligned { align: 4, .. })
            ));
            assert!(s.store_u32_release(gpa, 0).is_err());
        }
        assert!(matches!(
            s.store_u32_release(2 * MB, 1),
            Err(AtsError::Permission { .. })
        ));
        assert!(matches!(
            s.load_u32_acquire(MB + 0x1000),
            Err(AtsError::OutOfRange { .. })
        ));
        assert_eq!(host(&s, MB + 0x40) % 4, 0);
    }

    #[test]
    fn atomics_of_16_bits() {
        let d = Domain::new();
        map_ram(&d, MB, 0x1000, Prot::READ_WRITE);
        map_ram(&d, 2 * MB, 0x1000, Prot::READ);
        let s = d.snapshot();
        s.store_u16_release(MB + 0x42, 0xbeef).unwrap();
        assert_eq!(s.load_u16_acquire(MB + 0x42).unwrap(), 0xbeef);
        assert_eq!(s.read_obj::<u32>(MB + 0x40).unwrap(), 0xbeef_0000);
        for gpa in [MB + 1, MB + 0x43] {
            assert!(matches!(
                s.load_u16_acquire(gpa),
                Err(AtsError::Misaligned { align: 2, .. })
            ));
            assert!(s.store_u16_release(gpa, 0).is_err());
        }
        assert!(matches!(
            s.store_u16_release(2 * MB, 1),
            Err(AtsError::Permission { .. })
        ));
        assert!(matches!(
            s.load_u16_acquire(MB + 0xfff),
            Err(AtsError::Misaligned { .. })
        ));
        assert!(matches!(
            s.load_u16_acquire(MB + 0x1000),
            Err(AtsError::OutOfRange { .. })
        ));
    }
}
