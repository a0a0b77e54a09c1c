//! The link function: one VM's controller as an SoC reaches it. The
//! host-driver serves it as a vfio-user device to the SoC's hypervisor
//! (QEMU `vfio-user-pci` in the SoC VM); its BARs are the shared memory of
//! the link (rings, doorbell page, queue-state area, the guest's RAM), its
//! register BAR the few things that must reach the host: a kick when the
//! runtime queued a message, a vector to raise in the guest, the opening
//! of a new runtime session. Layout: [`leapio_link::function`].
//!
//! Fencing: the SoC side lets one process hold the function at a time (a
//! lock the runtime takes on the function's register file), so when a new
//! runtime opens the function the previous one is gone: its session is
//! superseded. If the SoC's hypervisor disconnects, the SoC is gone too. A
//! runtime that stays alive but silent cannot be killed from here; the
//! host-driver waits for it to be replaced (a real DPU would reset the
//! function or turn its bus mastering off). The window onto the guest's
//! memory (BAR4) lets the SoC's hypervisor map only the ranges the VM's
//! hypervisor mapped for DMA; the rest of the memory file traps and is
//! refused.

use crate::link::{Carrier, Links, Peer, RingEnd};
use crate::shared::CtrlShared;
use leapio_link::function::{self, reg};
use leapio_link::ring::{RingMemory, Rings, RING_AREA};
use leapio_link::shm::SharedMem;
use leapio_vmm_shim::pci::{Bar, ConfigSpace};
use leapio_vmm_shim::vfio_user::{
    Device, DeviceInfo, DmaMap, DmaUnmap, Errno, IrqInfo, RegionInfo, RegionMmap, SetIrqs,
};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Weak};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_EVENTFD,
    VFIO_PCI_CONFIG_REGION_INDEX as REGION_CONFIG, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS,
};

/// The link function of one controller, for one connection of the SoC's
/// hypervisor.
pub struct LinkFunction {
    host: Weak<dyn Links>,
    name: String,
    shared: Arc<CtrlShared>,
    rings_mem: Arc<SharedMem>,
    guest_mem: File,
    guest_mem_len: u64,
    /// The parts of `guest_mem` the VM's hypervisor mapped for DMA (file
    /// offset, length; sorted, merged): the only parts the SoC's
    /// hypervisor may map. The rest of the BAR traps, and is refused.
    window_areas: Vec<(u64, u64)>,
    pci: ConfigSpace,
    session: Option<(u32, Arc<RingEnd>)>,
    /// When sessions were last opened (a budget: see [`OPEN_BUDGET`]).
    opens: std::collections::VecDeque<std::time::Instant>,
}

/// Sessions a link function opens per [`OPEN_WINDOW`]; more OPENs are
/// ignored (a runtime restarting in a loop must not grow the host-driver
/// or keep its threads busy).
pub const OPEN_BUDGET: usize = 8;
/// See [`OPEN_BUDGET`].
pub const OPEN_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

impl LinkFunction {
    /// The function for controller `shared`, with the guest's RAM (the
    /// largest memory region the VM's hypervisor mapped) as its window.
    /// None while the VM has no memory mapped yet.
    pub fn new(
        host: &Arc<dyn Links>,
        shared: Arc<CtrlShared>,
    ) -> std::io::Result<Option<LinkFunction>> {
        let snap = shared.domain.snapshot();
        let Some((_, fd)) = snap
            .region_files()
            .filter_map(|(info, fd)| fd.map(|f| (info.size, f)))
            .max_by_key(|(size, _)| *size)
        else {
            return Ok(None);
        };
        let guest_mem = File::from(fd.try_clone_to_owned()?);
        let meta = guest_mem.metadata()?;
        let guest_mem_len = meta.len();
        let window_areas = dma_ranges(&snap, (meta.dev(), meta.ino()), guest_mem_len);
        drop(snap);
        let rings_mem = Arc::new(SharedMem::create(
            c"leapio-link-rings",
            RING_AREA as u64,
            0,
            RING_AREA,
        )?);
        Rings::init(rings_mem.clone() as Arc<dyn RingMemory>);
        let bar = |index, size, is64| Bar {
            index,
            size: function::bar_size(size),
            is64,
            prefetchable: index != function::BAR_REGS,
        };
        let bars = [
            bar(function::BAR_REGS, function::REGS_SIZE, false),
            bar(function::BAR_RINGS, RING_AREA as u64, false),
            bar(
                function::BAR_DOORBELLS,
                file_len(shared.doorbells.fd()),
                false,
            ),
            bar(function::BAR_QSTATE, file_len(shared.qstate.fd()), false),
            bar(function::BAR_GUEST_MEM, guest_mem_len, true),
        ];
        let pci = ConfigSpace::plain(
            function::VENDOR_ID,
            function::DEVICE_ID,
            function::CLASS,
            &bars,
        );
        Ok(Some(LinkFunction {
            host: Arc::downgrade(host),
            name: shared.name.clone(),
            shared,
            rings_mem,
            guest_mem,
            guest_mem_len,
            window_areas,
            pci,
            session: None,
            opens: std::collections::VecDeque::new(),
        }))
    }

    /// End the current session: its runtime is gone (or the SoC is).
    fn end_session(&mut self, why: &str) {
        if let Some((id, end)) = self.session.take() {
            tracing::info!(ctrl = %self.name, session = id, "link function: session ended ({why})");
            end.supersede();
        }
    }

    /// A runtime opened the function with session number `id`.
    fn open_session(&mut self, id: u32) {
        let now = std::time::Instant::now();
        while self
            .opens
            .front()
            .is_some_and(|t| now.duration_since(*t) > OPEN_WINDOW)
        {
            self.opens.pop_front();
        }
        if self.opens.len() >= OPEN_BUDGET {
            tracing::warn!(ctrl = %self.name, session = id, "link function: OPEN ignored ({OPEN_BUDGET} sessions in {OPEN_WINDOW:?} already)");
            return;
        }
        self.opens.push_back(now);
        self.end_session("a new runtime opened the function");
        let rings = Rings::attach(self.rings_mem.clone(), leapio_link::ring::End::Host);
        rings.reset();
        let window = self.guest_mem.metadata().ok().map(|m| (m.dev(), m.ino()));
        let end = RingEnd::new(rings, window);
        let Some(host) = self.host.upgrade() else {
            return;
        };
        let peer = Peer::Soc {
            function: self.name.clone(),
        };
        if host.admit(Carrier::Rings(end.clone()), peer).is_some() {
            tracing::info!(ctrl = %self.name, session = id, "link function: a runtime opened it");
            self.session = Some((id, end));
        }
    }

    fn reg_read(&self, off: u64) -> u32 {
        match off {
            reg::MAGIC => function::MAGIC,
            reg::VERSION => function::VERSION,
            reg::GUEST_MEM_LO => u32::try_from(self.guest_mem_len & 0xffff_ffff).unwrap_or(0),
            reg::GUEST_MEM_HI => u32::try_from(self.guest_mem_len >> 32).unwrap_or(0),
            o if (reg::NAME..reg::NAME + reg::NAME_LEN as u64).contains(&o) => {
                let mut w = [0u8; 4];
                let start = usize::try_from(o - reg::NAME).unwrap_or(0);
                for (i, b) in w.iter_mut().enumerate() {
                    *b = self.name.as_bytes().get(start + i).copied().unwrap_or(0);
                }
                u32::from_le_bytes(w)
            }
            _ => 0,
        }
    }

    fn reg_write(&mut self, off: u64, v: u32) {
        match off {
            reg::KICK => {
                if let Some((_, end)) = &self.session {
                    end.kick();
                }
            }
            reg::IRQ if self.session.is_some() => {
                if let Ok(v) = u16::try_from(v) {
                    self.shared.irqs.trigger(v);
                }
            }
            reg::OPEN if v != 0 => self.open_session(v),
            _ => {}
        }
    }

    fn mmap_region(&self, size: u64, fd: std::os::fd::BorrowedFd<'_>) -> RegionInfo {
        self.mmap_areas(size, fd, vec![(0, file_len(fd).min(size))])
    }

    fn mmap_areas(
        &self,
        size: u64,
        fd: std::os::fd::BorrowedFd<'_>,
        areas: Vec<(u64, u64)>,
    ) -> RegionInfo {
        RegionInfo {
            size,
            read: true,
            write: true,
            mmap: Some(RegionMmap {
                fd: fd.as_raw_fd(),
                file_offset: 0,
                areas,
            }),
        }
    }
}

/// The ranges of the file `file` (device, inode) of `len` bytes that
/// regions of `snap` map, sorted and merged, page aligned (a region's
/// bounds are, as DMA_MAP requires).
fn dma_ranges(snap: &leapio_ats::Snapshot, file: (u64, u64), len: u64) -> Vec<(u64, u64)> {
    let mut r: Vec<(u64, u64)> = snap
        .region_files()
        .filter(|(info, _)| info.translatable)
        .filter_map(|(info, fd)| {
            let m = File::from(fd?.try_clone_to_owned().ok()?).metadata().ok()?;
            let end = info.file_offset.checked_add(info.size)?.min(len);
            ((m.dev(), m.ino()) == file && end > info.file_offset)
                .then_some((info.file_offset, end))
        })
        .collect();
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (start, end) in r {
        match out.last_mut() {
            Some((_, e)) if start <= *e => *e = (*e).max(end),
            _ => out.push((start, end)),
        }
    }
    out.into_iter().map(|(s, e)| (s, e - s)).collect()
}

fn file_len(fd: std::os::fd::BorrowedFd<'_>) -> u64 {
    fd.try_clone_to_owned()
        .ok()
        .map(File::from)
        .and_then(|f| f.metadata().ok())
        .map_or(0, |m| m.len())
}

impl Device for LinkFunction {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
            num_regions: VFIO_PCI_NUM_REGIONS,
            num_irqs: VFIO_PCI_NUM_IRQS,
        }
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let i = usize::try_from(index).ok()?;
        let size = self.pci.bar_size(i);
        Some(match i {
            function::BAR_REGS => RegionInfo {
                size,
                read: true,
                write: true,
                mmap: None,
            },
            function::BAR_RINGS => self.mmap_region(size, self.rings_mem.fd()),
            function::BAR_DOORBELLS => self.mmap_region(size, self.shared.doorbells.fd()),
            function::BAR_QSTATE => self.mmap_region(size, self.shared.qstate.fd()),
            function::BAR_GUEST_MEM => {
                self.mmap_areas(size, self.guest_mem.as_fd(), self.window_areas.clone())
            }
            _ if index == REGION_CONFIG => RegionInfo {
                size: leapio_vmm_shim::pci::CONFIG_SIZE as u64,
                read: true,
                write: true,
                mmap: None,
            },
            _ if index < VFIO_PCI_NUM_REGIONS => RegionInfo {
                size: 0,
                read: false,
                write: false,
                mmap: None,
            },
            _ => return None,
        })
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        (index < VFIO_PCI_NUM_IRQS).then_some(IrqInfo {
            count: 0,
            flags: VFIO_IRQ_INFO_EVENTFD,
        })
    }

    fn region_read(&mut self, index: u32, off: u64, data: &mut [u8]) -> Result<(), Errno> {
        if index == REGION_CONFIG {
            return self.pci.read(off, data);
        }
        if usize::try_from(index) != Ok(function::BAR_REGS) {
            // The memory BARs are mapped by the SoC's hypervisor.
            return Err(libc::EINVAL);
        }
        data.fill(0);
        if data.len() == 4 && off % 4 == 0 {
            data.copy_from_slice(&self.reg_read(off).to_le_bytes());
        }
        Ok(())
    }

    fn region_write(&mut self, index: u32, off: u64, data: &[u8]) -> Result<(), Errno> {
        if index == REGION_CONFIG {
            return self.pci.write(off, data);
        }
        if usize::try_from(index) != Ok(function::BAR_REGS) {
            return Err(libc::EINVAL);
        }
        if data.len() == 4 && off % 4 == 0 {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.reg_write(off, v);
        }
        Ok(())
    }

    fn dma_map(&mut self, _map: DmaMap) -> Result<(), Errno> {
        // The function never reaches into the SoC's memory.
        Ok(())
    }

    fn dma_unmap(&mut self, _unmap: DmaUnmap) -> Result<(), Errno> {
        Ok(())
    }

    fn set_irqs(&mut self, _req: SetIrqs) -> Result<(), Errno> {
        Ok(())
    }

    fn reset(&mut self) -> Result<(), Errno> {
        self.end_session("the function was reset");
        self.pci.reset();
        Ok(())
    }

    fn disconnected(&mut self) {
        self.end_session("the SoC's hypervisor disconnected");
        self.pci.reset();
    }
}

/// Serve the link function of `shared` on the vfio-user socket `listener`
/// until `stop`: one SoC hypervisor at a time, once the VM's memory is
/// mapped (the window is the VM's RAM).
pub fn serve_function(
    host: Arc<dyn Links>,
    shared: Arc<CtrlShared>,
    listener: leapio_vmm_shim::vfio_user::Listener,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering;
    let name = shared.name.clone();
    while !stop.load(Ordering::Acquire) {
        let stream = match listener.accept_timeout(std::time::Duration::from_millis(100)) {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(ctrl = %name, "link function: accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let mut said = false;
        let func = loop {
            if stop.load(Ordering::Acquire) {
                return;
            }
            match LinkFunction::new(&host, shared.clone()) {
                Ok(Some(f)) => break Some(f),
                Ok(None) => {
                    if !said {
                        tracing::info!(ctrl = %name, "link function: the SoC waits until the VM's memory is mapped");
                        said = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => {
                    tracing::error!(ctrl = %name, "link function: {e}");
                    break None;
                }
            }
        };
        let Some(mut func) = func else { continue };
        // The SoC's hypervisor maps the doorbell page and the queue-state
        // area (BARs): not a runtime's helper.
        let client = crate::link::peer_cred(&stream).ok().map(|c| c.pid);
        if let Some(pid) = client {
            shared.trust(pid);
        }
        tracing::info!(ctrl = %name, guest_mem = func.guest_mem_len, window = ?func.window_areas, "link function: the SoC's hypervisor is connected");
        if let Err(e) = leapio_vmm_shim::vfio_user::serve(stream, &mut func, stop) {
            tracing::warn!(ctrl = %name, "link function: connection ended: {e}");
        }
        if let Some(pid) = client {
            shared.untrust(pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leapio_ats::{Domain, Prot};
    use std::os::fd::OwnedFd;

    #[test]
    fn the_window_is_what_the_guest_mapped_for_dma() {
        const M: u64 = 1 << 20;
        let mem = leapio_link::shm::sealed_memfd(c"guest", 4 * M).unwrap();
        let other = leapio_link::shm::sealed_memfd(c"other", M).unwrap();
        let d = Domain::new();
        let rw = Prot {
            read: true,
            write: true,
        };
        let fd = |f: &File| Some(OwnedFd::from(f.try_clone().unwrap()));
        // Two regions side by side in the file, one further on, one in
        // another file.
        d.map(0, M, fd(&mem), 0, rw).unwrap();
        d.map(M, M / 2, fd(&mem), M, rw).unwrap();
        d.map(1 << 32, M, fd(&mem), 3 * M, rw).unwrap();
        d.map(1 << 33, M, fd(&other), 0, rw).unwrap();
        let meta = mem.metadata().unwrap();
        let areas = dma_ranges(&d.snapshot(), (meta.dev(), meta.ino()), 4 * M);
        // [1.5 MiB, 3 MiB) was never mapped for DMA: not in the window.
        assert_eq!(areas, vec![(0, M + M / 2), (3 * M, M)]);

        // What the SoC's hypervisor is told it may map of the BAR.
        struct NoHost;
        impl Links for NoHost {
            fn admit(self: Arc<Self>, _: Carrier, _: Peer) -> Option<u64> {
                None
            }
        }
        let qstate = Arc::new(leapio_link::qstate::QueueState::create(2, 64).unwrap());
        let shared = Arc::new(CtrlShared::new(
            "vm0".into(),
            leapio_link::doorbells::Doorbells::new().unwrap(),
            qstate,
            3,
            4096 << 5,
        ));
        shared.domain.map(0, M, fd(&mem), 0, rw).unwrap();
        shared.domain.map(1 << 32, M, fd(&mem), 3 * M, rw).unwrap();
        let host: Arc<dyn Links> = Arc::new(NoHost);
        let f = LinkFunction::new(&host, shared).unwrap().unwrap();
        let info = f
            .region_info(u32::try_from(function::BAR_GUEST_MEM).unwrap())
            .unwrap();
        assert_eq!(info.mmap.unwrap().areas, vec![(0, M), (3 * M, M)]);
    }
}
