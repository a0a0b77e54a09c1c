//! Memory a device reaches by DMA: the one IOVA space of this process.
//!
//! A backend that drives a device from user space (an NVMe SSD through
//! VFIO) gives the device addresses in an IOMMU's address space, IOVAs, not
//! host virtual addresses. Every piece of memory a request may point into
//! is registered here once: guest memory as the runtime maps it, a driver's
//! own queues and PRP lists. Registering gives the memory an IOVA and maps
//! it into every [`Iommu`] attached; an IOMMU attached later is given every
//! registration so far, and dropping the [`DmaRegion`] guard unmaps it from
//! all of them. Backends translate a request's iovecs with
//! [`DmaRegistry::iova`], without locks.
//!
//! IOVAs come from the window [`IOVA_BASE`]..[`IOVA_END`] (4 GiB to
//! 512 GiB): below 4 GiB sit the windows IOMMUs reserve for MSIs, and
//! 512 GiB is the reach of a 39-bit IOMMU, the narrowest in use. A region
//! keeps its offset modulo 2 MiB, so an IOMMU can use large pages where the
//! memory has them. At most [`MAX_REGIONS`] regions are registered at once
//! (VFIO's type1 IOMMU allows 65535 mappings per container by default).

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arc_swap::ArcSwap;

/// First IOVA handed out.
pub const IOVA_BASE: u64 = 4 << 30;
/// End (exclusive) of the IOVA window.
pub const IOVA_END: u64 = 512 << 30;
/// Most regions registered at once.
pub const MAX_REGIONS: usize = 16384;
/// Page size: registered memory starts and ends on a page boundary.
pub const PAGE_SIZE: usize = 4096;
/// IOVAs keep the memory's offset modulo this.
const IOVA_ALIGN: u64 = 2 << 20;

/// An IOMMU domain a device behind it sees memory through.
pub trait Iommu: Send + Sync {
    /// Map `len` bytes at host address `va` at `iova`.
    fn map(&self, iova: u64, va: usize, len: usize, writable: bool) -> std::io::Result<()>;
    /// Remove the mapping made at `iova` of `len` bytes.
    fn unmap(&self, iova: u64, len: usize) -> std::io::Result<()>;
    /// The IOVA ranges the IOMMU accepts.
    fn accepts(&self) -> Vec<RangeInclusive<u64>>;
    /// What to call it in messages.
    fn name(&self) -> String;
}

/// Why memory could not be registered, or an IOMMU attached.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    /// The memory does not start or end on a page boundary.
    #[error("DMA memory at {va:#x} ({len} bytes) is not page aligned")]
    Unaligned {
        /// Start.
        va: usize,
        /// Length.
        len: usize,
    },
    /// [`MAX_REGIONS`] regions are registered already.
    #[error("too many DMA regions (at most {MAX_REGIONS})")]
    TooMany,
    /// The IOVA window is full.
    #[error("no IOVA space left for {len} bytes (the window is {IOVA_BASE:#x}..{IOVA_END:#x})")]
    NoSpace {
        /// Bytes asked for.
        len: usize,
    },
    /// The memory overlaps memory registered already.
    #[error("DMA memory at {va:#x} ({len} bytes) overlaps a registered region")]
    Overlap {
        /// Start.
        va: usize,
        /// Length.
        len: usize,
    },
    /// An IOMMU refused a mapping.
    #[error("{iommu}: cannot map {len} bytes at IOVA {iova:#x}")]
    Map {
        /// The IOMMU.
        iommu: String,
        /// IOVA.
        iova: u64,
        /// Bytes.
        len: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The IOMMU does not accept the IOVA window.
    #[error(
        "{iommu} accepts IOVAs {accepts}, not the window {IOVA_BASE:#x}..{IOVA_END:#x} LeapIO uses"
    )]
    Window {
        /// The IOMMU.
        iommu: String,
        /// What it accepts.
        accepts: String,
    },
    /// Anonymous memory for a DMA buffer could not be mapped.
    #[error("cannot map {len} bytes of memory for DMA")]
    Alloc {
        /// Bytes.
        len: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Copy, Debug)]
struct Reg {
    len: usize,
    iova: u64,
    writable: bool,
}

/// One registered range, as translations see it.
#[derive(Clone, Copy, Debug)]
struct Entry {
    va: usize,
    end: usize,
    iova: u64,
}

struct State {
    regions: BTreeMap<usize, Reg>,
    iommus: Vec<(u64, Arc<dyn Iommu>)>,
    next_iommu: u64,
    /// Free IOVA ranges: start -> length.
    free: BTreeMap<u64, u64>,
}

/// The IOVA space of one process. See the module documentation.
pub struct DmaRegistry {
    state: Mutex<State>,
    table: ArcSwap<Vec<Entry>>,
}

impl std::fmt::Debug for DmaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaRegistry")
            .field("regions", &self.table.load().len())
            .finish()
    }
}

impl Default for DmaRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl DmaRegistry {
    /// An empty registry with no IOMMU.
    pub fn new() -> DmaRegistry {
        DmaRegistry {
            state: Mutex::new(State {
                regions: BTreeMap::new(),
                iommus: Vec::new(),
                next_iommu: 1,
                free: BTreeMap::from([(IOVA_BASE, IOVA_END - IOVA_BASE)]),
            }),
            table: ArcSwap::from_pointee(Vec::new()),
        }
    }

    /// The process's registry.
    pub fn global() -> &'static DmaRegistry {
        static GLOBAL: OnceLock<DmaRegistry> = OnceLock::new();
        GLOBAL.get_or_init(DmaRegistry::new)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change to the state is completed before anything that can
        // panic, or undone: a poisoned lock leaves it consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(&self, st: &State) {
        let t: Vec<Entry> = st
            .regions
            .iter()
            .map(|(&va, r)| Entry {
                va,
                end: va + r.len,
                iova: r.iova,
            })
            .collect();
        self.table.store(Arc::new(t));
    }

    /// Register `[va, va + len)`: give it an IOVA and map it into every
    /// IOMMU attached. It stays registered until the guard is dropped, which
    /// must happen before the memory is unmapped.
    ///
    /// # Safety
    ///
    /// The memory must stay mapped for as long as the guard lives: a device
    /// may read or write it (writes only when `writable`) at any time.
    pub unsafe fn register(
        &'static self,
        va: *mut u8,
        len: usize,
        writable: bool,
    ) -> Result<DmaRegion, DmaError> {
        let start = va as usize;
        if start % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 || len == 0 {
            return Err(DmaError::Unaligned { va: start, len });
        }
        let end = start
            .checked_add(len)
            .ok_or(DmaError::Unaligned { va: start, len })?;
        let mut st = self.lock();
        if st.regions.len() >= MAX_REGIONS {
            return Err(DmaError::TooMany);
        }
        let before = st.regions.range(..end).next_back();
        if before.is_some_and(|(&v, r)| v + r.len > start) {
            return Err(DmaError::Overlap { va: start, len });
        }
        let skew = start as u64 % IOVA_ALIGN;
        let base = alloc(&mut st.free, len as u64 + skew).ok_or(DmaError::NoSpace { len })?;
        let iova = base + skew;
        let mut failed = None;
        for (i, (_, mmu)) in st.iommus.iter().enumerate() {
            if let Err(source) = mmu.map(iova, start, len, writable) {
                for (_, m) in &st.iommus[..i] {
                    let _ = m.unmap(iova, len);
                }
                failed = Some(DmaError::Map {
                    iommu: mmu.name(),
                    iova,
                    len,
                    source,
                });
                break;
            }
        }
        if let Some(e) = failed {
            release(&mut st.free, base, len as u64 + skew);
            return Err(e);
        }
        st.regions.insert(
            start,
            Reg {
                len,
                iova,
                writable,
            },
        );
        self.publish(&st);
        Ok(DmaRegion {
            registry: self,
            va: start,
            len,
            iova,
        })
    }

    fn unregister(&self, va: usize) {
        let mut st = self.lock();
        let Some(r) = st.regions.remove(&va) else {
            return;
        };
        self.publish(&st);
        for (_, mmu) in &st.iommus {
            if let Err(e) = mmu.unmap(r.iova, r.len) {
                tracing::error!(iommu = %mmu.name(), iova = r.iova, len = r.len, "DMA unmap failed: {e}");
            }
        }
        let skew = va as u64 % IOVA_ALIGN;
        release(&mut st.free, r.iova - skew, r.len as u64 + skew);
    }

    /// Attach an IOMMU: every region registered so far is mapped into it,
    /// and every later one. Returns the id to [`detach`](Self::detach) it
    /// with.
    pub fn attach(&self, iommu: Arc<dyn Iommu>) -> Result<u64, DmaError> {
        let accepts = iommu.accepts();
        if !accepts
            .iter()
            .any(|r| *r.start() <= IOVA_BASE && *r.end() >= IOVA_END - 1)
        {
            let list: Vec<String> = accepts
                .iter()
                .map(|r| format!("{:#x}..={:#x}", r.start(), r.end()))
                .collect();
            return Err(DmaError::Window {
                iommu: iommu.name(),
                accepts: if list.is_empty() {
                    "none".into()
                } else {
                    list.join(", ")
                },
            });
        }
        let mut st = self.lock();
        let mut done: Vec<(u64, usize)> = Vec::new();
        for (&va, r) in &st.regions {
            if let Err(source) = iommu.map(r.iova, va, r.len, r.writable) {
                for (iova, len) in done {
                    let _ = iommu.unmap(iova, len);
                }
                return Err(DmaError::Map {
                    iommu: iommu.name(),
                    iova: r.iova,
                    len: r.len,
                    source,
                });
            }
            done.push((r.iova, r.len));
        }
        let id = st.next_iommu;
        st.next_iommu += 1;
        st.iommus.push((id, iommu));
        Ok(id)
    }

    /// Detach the IOMMU `id`: every region is unmapped from it.
    pub fn detach(&self, id: u64) {
        let mut st = self.lock();
        let Some(i) = st.iommus.iter().position(|(x, _)| *x == id) else {
            return;
        };
        let (_, mmu) = st.iommus.remove(i);
        for r in st.regions.values() {
            let _ = mmu.unmap(r.iova, r.len);
        }
    }

    /// The IOVA of `[va, va + len)` when it lies inside one registered
    /// region.
    pub fn iova(&self, va: *const u8, len: usize) -> Option<u64> {
        let t = self.table.load();
        let va = va as usize;
        let end = va.checked_add(len)?;
        let i = t.partition_point(|e| e.va <= va);
        let e = t.get(i.checked_sub(1)?)?;
        (end <= e.end).then(|| e.iova + (va - e.va) as u64)
    }

    /// Regions registered now.
    pub fn regions(&self) -> usize {
        self.table.load().len()
    }
}

/// First fit of `len` bytes aligned to [`IOVA_ALIGN`].
fn alloc(free: &mut BTreeMap<u64, u64>, len: u64) -> Option<u64> {
    let (start, flen, at) = free.iter().find_map(|(&s, &l)| {
        let at = s.div_ceil(IOVA_ALIGN) * IOVA_ALIGN;
        (at + len <= s + l).then_some((s, l, at))
    })?;
    free.remove(&start);
    if at > start {
        free.insert(start, at - start);
    }
    if at + len < start + flen {
        free.insert(at + len, start + flen - at - len);
    }
    Some(at)
}

/// Give `[start, start + len)` back, merging with its neighbours.
fn release(free: &mut BTreeMap<u64, u64>, mut start: u64, mut len: u64) {
    if let Some((&ps, &pl)) = free.range(..start).next_back() {
        if ps + pl == start {
            free.remove(&ps);
            start = ps;
            len += pl;
        }
    }
    if let Some(&nl) = free.get(&(start + len)) {
        free.remove(&(start + len));
        len += nl;
    }
    free.insert(start, len);
}

/// A registered region: unregistered (unmapped from every IOMMU) on drop.
#[derive(Debug)]
pub struct DmaRegion {
    registry: &'static DmaRegistry,
    va: usize,
    len: usize,
    iova: u64,
}

impl DmaRegion {
    /// Its IOVA.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never: registrations are at least a page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        self.registry.unregister(self.va);
    }
}

/// Memory of a driver's own that a device reads and writes (queues, PRP
/// lists, bounce buffers): anonymous, zeroed, registered.
#[derive(Debug)]
pub struct DmaBuffer {
    // Declared first: unregistered before the memory is unmapped.
    region: DmaRegion,
    map: memmap2::MmapMut,
}

impl DmaBuffer {
    /// `len` bytes (rounded up to a page) registered in `registry`.
    pub fn new(registry: &'static DmaRegistry, len: usize) -> Result<DmaBuffer, DmaError> {
        let len = len.max(1).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let mut map = memmap2::MmapOptions::new()
            .len(len)
            .populate()
            .map_anon()
            .map_err(|source| DmaError::Alloc { len, source })?;
        // SAFETY: the mapping lives in `self` beside the guard, which is
        // dropped first (field order).
        let region = unsafe { registry.register(map.as_mut_ptr(), len, true)? };
        Ok(DmaBuffer { region, map })
    }

    /// Its IOVA.
    pub fn iova(&self) -> u64 {
        self.region.iova
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it is empty (never).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Its start.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr().cast_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    #[derive(Default)]
    struct FakeIommu {
        maps: StdMutex<BTreeMap<u64, (usize, usize)>>,
        refuse_after: Option<usize>,
    }

    impl Iommu for FakeIommu {
        fn map(&self, iova: u64, va: usize, len: usize, _w: bool) -> std::io::Result<()> {
            let mut m = self.maps.lock().unwrap();
            if self.refuse_after.is_some_and(|n| m.len() >= n) {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            assert!(m.insert(iova, (va, len)).is_none(), "IOVA mapped twice");
            Ok(())
        }
        fn unmap(&self, iova: u64, len: usize) -> std::io::Result<()> {
            let (_, l) = self
                .maps
                .lock()
                .unwrap()
                .remove(&iova)
                .expect("unknown unmap");
            assert_eq!(l, len);
            Ok(())
        }
        fn accepts(&self) -> Vec<RangeInclusive<u64>> {
            vec![0..=(1 << 48) - 1]
        }
        fn name(&self) -> String {
            "fake".into()
        }
    }

    fn registry() -> &'static DmaRegistry {
        Box::leak(Box::new(DmaRegistry::new()))
    }

    #[test]
    fn regions_are_translated_mapped_and_unmapped() {
        let reg = registry();
        let early = Arc::new(FakeIommu::default());
        reg.attach(early.clone()).unwrap();
        let a = DmaBuffer::new(reg, 3 * PAGE_SIZE).unwrap();
        let b = DmaBuffer::new(reg, 5000).unwrap();
        assert_eq!(b.len(), 2 * PAGE_SIZE);
        // Translation inside a region, and none across its end.
        let p = a.as_ptr().wrapping_add(100);
        assert_eq!(reg.iova(p, 200), Some(a.iova() + 100));
        assert_eq!(
            reg.iova(a.as_ptr().wrapping_add(3 * PAGE_SIZE - 8), 16),
            None
        );
        assert_eq!(reg.iova(std::ptr::null(), 8), None);
        assert!(a.iova() >= IOVA_BASE && a.iova() + 3 * 4096 <= IOVA_END);
        assert_eq!(a.iova() % IOVA_ALIGN, a.as_ptr() as u64 % IOVA_ALIGN);
        // An IOMMU attached later is given every region.
        let late = Arc::new(FakeIommu::default());
        let id = reg.attach(late.clone()).unwrap();
        assert_eq!(late.maps.lock().unwrap().len(), 2);
        drop(a);
        assert_eq!(early.maps.lock().unwrap().len(), 1);
        assert_eq!(late.maps.lock().unwrap().len(), 1);
        assert_eq!(reg.regions(), 1);
        reg.detach(id);
        assert!(late.maps.lock().unwrap().is_empty());
        drop(b);
        assert!(early.maps.lock().unwrap().is_empty());
        // Everything freed merges back into one window.
        assert_eq!(
            *reg.lock().free.iter().next().unwrap().1,
            IOVA_END - IOVA_BASE
        );
    }

    #[test]
    fn refusals_undo_what_was_done() {
        let reg = registry();
        let ok = Arc::new(FakeIommu::default());
        let full = Arc::new(FakeIommu {
            refuse_after: Some(1),
            ..Default::default()
        });
        reg.attach(ok.clone()).unwrap();
        reg.attach(full.clone()).unwrap();
        let _a = DmaBuffer::new(reg, PAGE_SIZE).unwrap();
        let e = DmaBuffer::new(reg, PAGE_SIZE).unwrap_err();
        assert!(matches!(e, DmaError::Map { .. }), "{e}");
        assert_eq!(
            ok.maps.lock().unwrap().len(),
            1,
            "the first IOMMU's map undone"
        );
        assert_eq!(reg.regions(), 1);
        // Unaligned memory and an IOMMU that cannot reach the window.
        let mut v = vec![0u8; 3 * PAGE_SIZE];
        let p = v.as_mut_ptr().wrapping_add(1);
        // SAFETY: refused before anything maps it.
        let e = unsafe { reg.register(p, PAGE_SIZE, true) }.unwrap_err();
        assert!(matches!(e, DmaError::Unaligned { .. }));
        struct Narrow;
        impl Iommu for Narrow {
            fn map(&self, _: u64, _: usize, _: usize, _: bool) -> std::io::Result<()> {
                Ok(())
            }
            fn unmap(&self, _: u64, _: usize) -> std::io::Result<()> {
                Ok(())
            }
            fn accepts(&self) -> Vec<RangeInclusive<u64>> {
                vec![0..=(1 << 32) - 1]
            }
            fn name(&self) -> String {
                "narrow".into()
            }
        }
        let e = reg.attach(Arc::new(Narrow)).unwrap_err();
        assert!(e.to_string().contains("0x0..=0xffffffff"), "{e}");
    }

    #[test]
    fn allocation_is_first_fit_and_merges() {
        let mut free = BTreeMap::from([(IOVA_BASE, 64 * IOVA_ALIGN)]);
        let a = alloc(&mut free, IOVA_ALIGN).unwrap();
        let b = alloc(&mut free, 3 * IOVA_ALIGN).unwrap();
        let c = alloc(&mut free, IOVA_ALIGN).unwrap();
        assert_eq!(
            (a, b, c),
            (
                IOVA_BASE,
                IOVA_BASE + IOVA_ALIGN,
                IOVA_BASE + 4 * IOVA_ALIGN
            )
        );
        release(&mut free, b, 3 * IOVA_ALIGN);
        assert_eq!(alloc(&mut free, 2 * IOVA_ALIGN), Some(b));
        release(&mut free, a, IOVA_ALIGN);
        release(&mut free, b, 2 * IOVA_ALIGN);
        release(&mut free, c, IOVA_ALIGN);
        assert_eq!(free.len(), 1);
        assert_eq!(alloc(&mut free, 65 * IOVA_ALIGN), None);
    }
}
