//! Per-VM translation domains: the mutable side (map/unmap) that publishes
//! immutable [`Snapshot`]s.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::mapping::{map_fd, MAP_ALIGN};
use crate::snapshot::{Mem, Region, Snapshot};
use crate::{AtsError, Prot};

/// A device besides the CPUs that reads and writes guest memory itself (an
/// SSD the runtime drives through an IOMMU): shown every mapping of the
/// domains it is given to, for as long as the mapping lives.
pub trait DeviceAccess: Send + Sync + std::fmt::Debug {
    /// Let the device reach `[addr, addr + len)` (writes too when
    /// `writable`); the guard revokes that when dropped, before the memory
    /// is unmapped. An error only costs the device direct access: the
    /// region is mapped all the same.
    ///
    /// # Safety
    ///
    /// The memory stays mapped until the guard is dropped.
    unsafe fn grant(
        &self,
        addr: *mut u8,
        len: usize,
        writable: bool,
    ) -> Result<Box<dyn std::any::Any + Send + Sync>, String>;
}

/// The guest-physical address space of one VM (one vfio-user connection).
///
/// Writers (the vfio-user control thread) call [`map`](Domain::map) and
/// [`unmap`](Domain::unmap); readers (pollers) take [`snapshot`](Domain::snapshot)s
/// and translate through them without locks.
#[derive(Debug)]
pub struct Domain {
    current: ArcSwap<Snapshot>,
    generation: AtomicU64,
    /// Serialises writers; readers never take it.
    writer: Mutex<()>,
    /// A device that must see the memory mapped here.
    device: Option<Arc<dyn DeviceAccess>>,
}

// Compile-time check: a domain is shared by the control thread and the pollers.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Domain>();
};

impl Default for Domain {
    fn default() -> Self {
        Self::new()
    }
}

impl Domain {
    /// An empty domain at generation 0.
    pub fn new() -> Domain {
        Domain {
            current: ArcSwap::from_pointee(Snapshot::new(0, Vec::new())),
            generation: AtomicU64::new(0),
            writer: Mutex::new(()),
            device: None,
        }
    }

    /// An empty domain whose mappings `device` is granted as they are made.
    pub fn with_device(device: Arc<dyn DeviceAccess>) -> Domain {
        Domain {
            device: Some(device),
            ..Domain::new()
        }
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded state is `current`, which is always consistent (it is
        // replaced atomically), so a poisoned lock is harmless.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publish `regions` as the next snapshot. Call with the writer lock held.
    fn publish(&self, regions: Vec<Region>) -> u64 {
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        self.current
            .store(Arc::new(Snapshot::new(generation, regions)));
        // After the store: a poller that sees the new generation finds (at
        // least) the new snapshot.
        self.generation.store(generation, Ordering::Release);
        generation
    }

    /// Add a mapping of guest-physical `[gpa, gpa+size)`.
    ///
    /// With `fd`, the file is mmapped `MAP_SHARED` at `file_offset` with
    /// `prot` and the fd is kept open until the mapping is released. Without
    /// `fd` (QEMU maps ROM and the device's own BAR that way) or with
    /// [`Prot::NONE`], the mapping is only recorded: unmap matches it, but it
    /// is never translatable.
    ///
    /// Errors: `size == 0` or `gpa + size > u64::MAX` ([`AtsError::InvalidRange`]),
    /// `gpa`/`size`/`file_offset` not 4 KiB aligned ([`AtsError::Unaligned`]),
    /// overlap with an existing mapping ([`AtsError::Overlap`]), a file too
    /// short for the range ([`AtsError::FileTooShort`]), mmap failures.
    pub fn map(
        &self,
        gpa: u64,
        size: u64,
        fd: Option<OwnedFd>,
        file_offset: u64,
        prot: Prot,
    ) -> Result<(), AtsError> {
        if size == 0 || gpa.checked_add(size).is_none() {
            return Err(AtsError::InvalidRange { gpa, size });
        }
        let offset_unaligned = fd.is_some() && file_offset % MAP_ALIGN != 0;
        if gpa % MAP_ALIGN != 0 || size % MAP_ALIGN != 0 || offset_unaligned {
            return Err(AtsError::Unaligned {
                gpa,
                size,
                file_offset,
            });
        }
        // Fail fast on overlap or a full table before paying for an mmap;
        // checked again under the lock below.
        check_room(self.current.load().regions_raw())?;
        check_overlap(self.current.load().regions_raw(), gpa, size)?;
        let mem = match fd {
            Some(fd) if !prot.is_none() => {
                let map = map_fd(gpa, size, fd, file_offset, prot)?;
                let grant = self.device.as_ref().and_then(|d| {
                    // SAFETY: the grant is kept beside the mapping in `Mem`
                    // and dropped before it.
                    match unsafe { d.grant(map.as_ptr(), map.size(), prot.write) } {
                        Ok(g) => Some(g),
                        Err(e) => {
                            tracing::warn!(
                                gpa,
                                size,
                                "ats: the device cannot reach this guest memory directly: {e}"
                            );
                            None
                        }
                    }
                });
                Some(Arc::new(Mem { grant, map }))
            }
            _ => None,
        };
        let region = Region {
            gpa,
            size,
            prot,
            file_offset: if mem.is_some() { file_offset } else { 0 },
            mem,
        };
        let _guard = self.lock();
        let cur = self.current.load_full();
        let regions = cur.regions_raw();
        check_room(regions)?;
        let idx = check_overlap(regions, gpa, size)?;
        let mut next = Vec::with_capacity(regions.len() + 1);
        next.extend_from_slice(&regions[..idx]);
        next.push(region);
        next.extend_from_slice(&regions[idx..]);
        let generation = self.publish(next);
        tracing::debug!(gpa, size, %prot, generation, "ats: mapped");
        Ok(())
    }

    /// Remove the mappings inside `[gpa, gpa+size)`: one mapping matched
    /// exactly (as vfio-user does), or several whole mappings. A range that
    /// cuts a mapping is refused ([`AtsError::PartialUnmap`]) and nothing is
    /// removed; a range with no mapping is [`AtsError::UnknownMapping`].
    ///
    /// The new snapshot is published first; then this call waits, up to
    /// `drain_timeout`, until no snapshot that contains the removed memory is
    /// held anywhere. When it returns `Ok`, the memory is unmapped and its fd
    /// closed: nothing can access it any more. On timeout it returns
    /// [`AtsError::Busy`]: the mappings are already gone from new snapshots
    /// and the memory is released when the last holder drops its snapshot.
    ///
    /// The caller must not hold a snapshot of this domain itself (it would
    /// wait for itself until the timeout). Pollers must refresh their cached
    /// snapshot when [`generation`](Domain::generation) changes, and requests
    /// in flight keep theirs until they complete, so `drain_timeout` should
    /// cover the longest I/O.
    pub fn unmap(&self, gpa: u64, size: u64, drain_timeout: Duration) -> Result<(), AtsError> {
        let end = gpa
            .checked_add(size)
            .filter(|_| size != 0)
            .ok_or(AtsError::InvalidRange { gpa, size })?;
        let removed = {
            let _guard = self.lock();
            let cur = self.current.load_full();
            let regions = cur.regions_raw();
            let mut keep = Vec::with_capacity(regions.len());
            let mut removed = Vec::new();
            for r in regions {
                if r.end() <= gpa || r.gpa >= end {
                    keep.push(r.clone());
                } else if r.gpa >= gpa && r.end() <= end {
                    removed.push(r.clone());
                } else {
                    return Err(AtsError::PartialUnmap {
                        gpa,
                        size,
                        map_gpa: r.gpa,
                        map_size: r.size,
                    });
                }
            }
            if removed.is_empty() {
                return Err(AtsError::UnknownMapping { gpa, size });
            }
            let generation = self.publish(keep);
            tracing::debug!(
                gpa,
                size,
                count = removed.len(),
                generation,
                "ats: unmapped"
            );
            removed
        };
        self.drain(removed, gpa, size, drain_timeout)
    }

    /// Remove every mapping (controller reset, connection closed). Same
    /// draining rules as [`unmap`](Domain::unmap). Ok when there was none.
    pub fn unmap_all(&self, drain_timeout: Duration) -> Result<(), AtsError> {
        let removed = {
            let _guard = self.lock();
            let cur = self.current.load_full();
            if cur.is_empty() {
                return Ok(());
            }
            let removed = cur.regions_raw().to_vec();
            let generation = self.publish(Vec::new());
            tracing::debug!(count = removed.len(), generation, "ats: unmapped all");
            removed
        };
        self.drain(removed, 0, u64::MAX, drain_timeout)
    }

    /// Wait until the host memory of `removed` is referenced only by us, then
    /// release it (munmap + close on drop).
    fn drain(
        &self,
        removed: Vec<Region>,
        gpa: u64,
        size: u64,
        timeout: Duration,
    ) -> Result<(), AtsError> {
        // Every snapshot that contains a region holds a strong count on its
        // memory, whatever its generation; nobody holds a Weak. So once a
        // count reaches 1 (ours) it can never rise again.
        let mut mems: Vec<Arc<Mem>> = removed.into_iter().filter_map(|r| r.mem).collect();
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(20);
        let mut yields = 0u32;
        loop {
            // Arc::get_mut succeeds only when we hold the last reference; it
            // synchronises (acquire) with the holders' drops.
            mems.retain_mut(|m| Arc::get_mut(m).is_none());
            if mems.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    gpa,
                    size,
                    ?timeout,
                    still_held = mems.len(),
                    "ats: unmap drain timed out; memory released when the last snapshot drops"
                );
                return Err(AtsError::Busy { gpa, size, timeout });
            }
            if yields < 16 {
                yields += 1;
                thread::yield_now();
            } else {
                thread::sleep(pause.min(deadline - now));
                pause = (pause * 2).min(Duration::from_millis(1));
            }
        }
    }

    /// The current snapshot, as a counted `Arc` (unmap's drain relies on the
    /// count: drop it promptly, or refresh it when the generation changes).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replace `cached` with the current snapshot if the domain changed since
    /// it was taken; returns whether it did. The usual poller loop call.
    pub fn refresh(&self, cached: &mut Arc<Snapshot>) -> bool {
        if cached.generation() == self.generation() {
            return false;
        }
        *cached = self.snapshot();
        true
    }

    /// Generation of the latest published snapshot; bumped by every
    /// successful map/unmap. A cheap atomic load for pollers to compare with
    /// [`Snapshot::generation`] of their cached snapshot.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// Most regions one domain holds: a hypervisor maps a few dozen (RAM below
/// and above 4 GiB, ROMs, option ROMs); each region is a mapping in this
/// process, so a flood of DMA_MAPs must stop somewhere.
pub const MAX_REGIONS: usize = 1024;

fn check_room(regions: &[Region]) -> Result<(), AtsError> {
    if regions.len() >= MAX_REGIONS {
        return Err(AtsError::TooManyRegions { max: MAX_REGIONS });
    }
    Ok(())
}

/// Index at which `[gpa, gpa+size)` goes in `regions`, or the overlap error.
fn check_overlap(regions: &[Region], gpa: u64, size: u64) -> Result<usize, AtsError> {
    let end = gpa + size;
    let idx = regions.partition_point(|r| r.gpa < gpa);
    let neighbours = [idx.checked_sub(1), Some(idx)];
    for r in neighbours
        .into_iter()
        .flatten()
        .filter_map(|i| regions.get(i))
    {
        if r.gpa < end && gpa < r.end() {
            return Err(AtsError::Overlap {
                gpa,
                size,
                existing_gpa: r.gpa,
                existing_size: r.size,
            });
        }
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use std::thread;
    use std::time::{Duration, Instant};

    use std::ffi::CString;

    use super::Domain;
    use crate::testing::memfd;
    use crate::tests::{is_mapped, map_ram, unique_name};
    use crate::{Access, AtsError, Prot};

    const K4: u64 = 4096;
    const T: Duration = Duration::from_secs(5);

    /// A device that records what it is granted; `refuse` makes it fail.
    /// Its grants check, when revoked, that the memfd named in `NAME` is
    /// still mapped.
    #[derive(Debug, Default)]
    struct Device {
        granted: std::sync::Mutex<Vec<(usize, usize, bool)>>,
        live: Arc<std::sync::atomic::AtomicUsize>,
        refuse: AtomicBool,
    }

    struct Grant(Arc<std::sync::atomic::AtomicUsize>, CString);

    impl Drop for Grant {
        fn drop(&mut self) {
            // Revoked while the memory is still mapped.
            assert!(is_mapped(&self.1), "grant revoked after the munmap");
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl super::DeviceAccess for Device {
        unsafe fn grant(
            &self,
            addr: *mut u8,
            len: usize,
            writable: bool,
        ) -> Result<Box<dyn std::any::Any + Send + Sync>, String> {
            if self.refuse.load(Ordering::SeqCst) {
                return Err("no room".into());
            }
            self.granted
                .lock()
                .unwrap()
                .push((addr as usize, len, writable));
            self.live.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Grant(
                Arc::clone(&self.live),
                NAME.with(|n| n.borrow().clone()),
            )))
        }
    }

    thread_local! {
        static NAME: std::cell::RefCell<CString> = std::cell::RefCell::new(CString::default());
    }

    #[test]
    fn a_device_is_granted_each_mapping_until_it_is_unmapped() {
        let dev = Arc::new(Device::default());
        let d = Domain::with_device(dev.clone());
        let name = unique_name("dev");
        NAME.with(|n| *n.borrow_mut() = name.clone());
        let fd = memfd(&name, 2 * K4).expect("memfd");
        d.map(0x10_0000, 2 * K4, Some(fd), 0, Prot::READ_WRITE)
            .unwrap();
        let snap = d.snapshot();
        let host = snap.translate(0x10_0000, 1, Access::Read).unwrap().addr();
        assert_eq!(dev.granted.lock().unwrap()[0], (host, 2 * 4096, true));
        assert_eq!(dev.live.load(Ordering::SeqCst), 1);
        // Fd-less mappings are never granted; a refusal only costs the grant.
        d.map(0x20_0000, K4, None, 0, Prot::READ_WRITE).unwrap();
        dev.refuse.store(true, Ordering::SeqCst);
        let other = unique_name("dev2");
        let fd2 = memfd(&other, K4).expect("memfd");
        d.map(0x30_0000, K4, Some(fd2), 0, Prot::READ_WRITE)
            .unwrap();
        assert_eq!(dev.live.load(Ordering::SeqCst), 1);
        // The grant lives as long as a snapshot holds the memory.
        drop(snap);
        d.unmap(0x10_0000, 2 * K4, T).unwrap();
        assert_eq!(dev.live.load(Ordering::SeqCst), 0);
        assert!(!is_mapped(&name));
    }

    #[test]
    fn a_flood_of_maps_stops_at_the_region_limit() {
        let d = Domain::new();
        let rw = Prot {
            read: true,
            write: true,
        };
        // Regions without a file (as QEMU maps ROM windows) cost no mmap.
        for i in 0..super::MAX_REGIONS as u64 {
            d.map(i * K4, K4, None, 0, rw).expect("map below the limit");
        }
        let e = d
            .map(1 << 40, K4, None, 0, rw)
            .expect_err("a map past the limit");
        assert!(matches!(e, AtsError::TooManyRegions { .. }), "{e}");
        // Unmapping makes room again.
        d.unmap(0, K4, T).unwrap();
        d.map(1 << 40, K4, None, 0, rw).unwrap();
    }

    fn gpas(d: &Domain) -> Vec<(u64, u64)> {
        d.snapshot().regions().map(|r| (r.gpa, r.size)).collect()
    }

    #[test]
    fn map_validation() {
        let d = Domain::new();
        let fd = || Some(memfd(&unique_name("v"), 0x10000).unwrap());
        let rw = Prot::READ_WRITE;
        assert!(matches!(
            d.map(0x1000, 0, fd(), 0, rw),
            Err(AtsError::InvalidRange { .. })
        ));
        assert!(matches!(
            d.map(u64::MAX - 0xfff, 0x2000, None, 0, rw),
            Err(AtsError::InvalidRange { .. })
        ));
        for (gpa, size, off) in [(0x1001, K4, 0), (0x1000, 0x1800, 0), (0x1000, K4, 0x200)] {
            assert!(
                matches!(
                    d.map(gpa, size, fd(), off, rw),
                    Err(AtsError::Unaligned { .. })
                ),
                "{gpa:#x} {size:#x} {off:#x}"
            );
        }
        // Past the end of the file (would SIGBUS), and an offset beyond off_t.
        assert!(matches!(
            d.map(0, 0x2_0000, fd(), 0, rw),
            Err(AtsError::FileTooShort { .. })
        ));
        assert!(matches!(
            d.map(0, K4, fd(), 0x10000, rw),
            Err(AtsError::FileTooShort { .. })
        ));
        assert!(matches!(
            d.map(0, K4, fd(), !0xfff, rw),
            Err(AtsError::FileTooShort { .. })
        ));
        // Nothing was mapped, no generation was used.
        assert_eq!(d.generation(), 0);
        assert!(d.snapshot().is_empty());

        // The last page below 2^64 cannot be mapped (the end must be representable).
        assert!(matches!(
            d.map(u64::MAX - 0xfff, K4, None, 0, rw),
            Err(AtsError::InvalidRange { .. })
        ));
        d.map(u64::MAX - 0x1fff, K4, None, 0, rw).unwrap();
        assert_eq!(d.generation(), 1);
    }

    #[test]
    fn overlap_rules() {
        let d = Domain::new();
        map_ram(&d, 0x10_0000, 0x10_0000, Prot::READ_WRITE);
        d.map(0x40_0000, 0x1_0000, None, 0, Prot::READ).unwrap();
        let g = d.generation();
        for (gpa, size) in [
            (0x10_0000, 0x10_0000),  // same
            (0x0f_f000, 0x2000),     // over the start
            (0x1f_f000, 0x2000),     // over the end
            (0x12_0000, 0x1000),     // inside
            (0x00_0000, 0x100_0000), // around both
            (0x40_f000, 0x1000),     // the fd-less one counts too
        ] {
            assert!(
                matches!(
                    d.map(gpa, size, None, 0, Prot::READ),
                    Err(AtsError::Overlap { .. })
                ),
                "{gpa:#x}+{size:#x}"
            );
            let fd = memfd(&unique_name("o"), size).unwrap();
            assert!(matches!(
                d.map(gpa, size, Some(fd), 0, Prot::READ),
                Err(AtsError::Overlap { .. })
            ));
        }
        assert_eq!(d.generation(), g);
        // Adjacent on both sides is fine.
        map_ram(&d, 0x0f_f000, 0x1000, Prot::READ);
        map_ram(&d, 0x20_0000, 0x1000, Prot::READ);
        assert_eq!(
            gpas(&d),
            vec![
                (0x0f_f000, 0x1000),
                (0x10_0000, 0x10_0000),
                (0x20_0000, 0x1000),
                (0x40_0000, 0x1_0000)
            ]
        );
        assert_eq!(d.generation(), g + 2);
        assert_eq!(d.snapshot().generation(), g + 2);
    }

    #[test]
    fn unmap_rules() {
        let d = Domain::new();
        let a = map_ram(&d, 0x10_0000, 0x1_0000, Prot::READ_WRITE);
        let b = map_ram(&d, 0x11_0000, 0x1_0000, Prot::READ_WRITE);
        let c = map_ram(&d, 0x20_0000, 0x1_0000, Prot::READ_WRITE);
        d.map(0x30_0000, 0x1_0000, None, 0, Prot::READ).unwrap();
        assert!(is_mapped(&a) && is_mapped(&b) && is_mapped(&c));
        let g = d.generation();

        assert!(matches!(
            d.unmap(0x50_0000, 0x1000, T),
            Err(AtsError::UnknownMapping { .. })
        ));
        assert!(matches!(
            d.unmap(0x10_0000, 0, T),
            Err(AtsError::InvalidRange { .. })
        ));
        // Cutting a map (its first half, or one map and half of the next).
        assert!(matches!(
            d.unmap(0x10_0000, 0x8000, T),
            Err(AtsError::PartialUnmap {
                map_gpa: 0x10_0000,
                ..
            })
        ));
        assert!(matches!(
            d.unmap(0x10_0000, 0x1_8000, T),
            Err(AtsError::PartialUnmap {
                map_gpa: 0x11_0000,
                ..
            })
        ));
        assert_eq!(d.generation(), g);
        assert_eq!(gpas(&d).len(), 4);

        // Exact match.
        d.unmap(0x20_0000, 0x1_0000, T).unwrap();
        assert!(!is_mapped(&c));
        assert!(matches!(
            d.snapshot().translate(0x20_0000, 1, Access::Read),
            Err(AtsError::OutOfRange { .. })
        ));
        // Several whole maps (and a gap) at once.
        d.unmap(0x0f_0000, 0x3_0000, T).unwrap();
        assert!(!is_mapped(&a) && !is_mapped(&b));
        // fd-less map.
        d.unmap(0x30_0000, 0x1_0000, T).unwrap();
        assert!(d.snapshot().is_empty());
        assert_eq!(d.generation(), g + 3);
        // The range can be mapped again.
        let a2 = map_ram(&d, 0x10_0000, 0x2_0000, Prot::READ);
        assert!(is_mapped(&a2));
        d.map(0x50_0000, 0x1000, None, 0, Prot::READ).unwrap();
        d.unmap_all(T).unwrap();
        assert!(!is_mapped(&a2));
        assert!(d.snapshot().is_empty());
        d.unmap_all(T).unwrap();
    }

    #[test]
    fn unmap_waits_for_snapshot_holders() {
        let d = Arc::new(Domain::new());
        let name = map_ram(&d, 0x10_0000, 0x1_0000, Prot::READ_WRITE);
        let mut held = d.snapshot();
        assert!(!d.refresh(&mut held));
        // A later, unrelated map: the holder's snapshot is now an *older*
        // generation than the one unmap replaces, and must be waited for too.
        map_ram(&d, 0x80_0000, 0x1000, Prot::READ);
        let released = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let holder = {
            let released = released.clone();
            thread::spawn(move || {
                held.write_obj(0x10_0000, &7u64).unwrap();
                tx.send(()).unwrap();
                thread::sleep(Duration::from_millis(300));
                // Still usable while held, even though unmap has started.
                assert_eq!(held.read_obj::<u64>(0x10_0000).unwrap(), 7);
                released.store(true, Ordering::SeqCst);
                drop(held);
            })
        };
        rx.recv().unwrap();
        let start = Instant::now();
        d.unmap(0x10_0000, 0x1_0000, T).unwrap();
        assert!(
            released.load(Ordering::SeqCst),
            "unmap returned while the memory was held"
        );
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(!is_mapped(&name));
        holder.join().unwrap();
    }

    #[test]
    fn unmap_times_out_busy_and_memory_outlives_it() {
        let d = Domain::new();
        let name = map_ram(&d, 0x10_0000, 0x1_0000, Prot::READ_WRITE);
        let other = map_ram(&d, 0x20_0000, 0x1000, Prot::READ_WRITE);
        let held = d.snapshot();
        let start = Instant::now();
        let timeout = Duration::from_millis(100);
        let r = d.unmap(0x10_0000, 0x1_0000, timeout);
        assert!(
            matches!(r, Err(AtsError::Busy { gpa: 0x10_0000, .. })),
            "{r:?}"
        );
        assert!(start.elapsed() >= timeout);
        // Gone from new snapshots, still valid in the held one.
        assert!(d.snapshot().translate(0x10_0000, 1, Access::Read).is_err());
        assert!(is_mapped(&name));
        held.write_obj(0x10_0008, &1u32).unwrap();
        // Released by the last holder.
        drop(held);
        assert!(!is_mapped(&name));
        assert!(is_mapped(&other));
    }

    #[test]
    fn pollers_refreshing_on_generation_let_unmap_finish() {
        let d = Arc::new(Domain::new());
        let name = map_ram(&d, 0x10_0000, 0x1_0000, Prot::READ_WRITE);
        let stop = Arc::new(AtomicBool::new(false));
        let pollers: Vec<_> = (0..2)
            .map(|_| {
                let (d, stop) = (d.clone(), stop.clone());
                thread::spawn(move || {
                    let mut snap = d.snapshot();
                    while !stop.load(Ordering::Relaxed) {
                        d.refresh(&mut snap);
                        let _ = snap.read_obj::<u64>(0x10_0000);
                        thread::yield_now();
                    }
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(20));
        d.unmap(0x10_0000, 0x1_0000, T).unwrap();
        assert!(!is_mapped(&name));
        stop.store(true, Ordering::Relaxed);
        for p in pollers {
            p.join().unwrap();
        }
    }

    #[test]
    fn snapshot_unaffected_regions_do_not_block_unmap() {
        let d = Domain::new();
        map_ram(&d, 0x10_0000, 0x1000, Prot::READ_WRITE);
        // A snapshot taken before the region existed does not hold it.
        let early = d.snapshot();
        map_ram(&d, 0x20_0000, 0x1000, Prot::READ_WRITE);
        d.unmap(0x20_0000, 0x1000, Duration::from_millis(1))
            .unwrap();
        assert!(early.translate(0x10_0000, 1, Access::Read).is_ok());
    }
}
