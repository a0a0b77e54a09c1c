//! A PCI device driven from user space through VFIO (the group/container
//! interface with the type1 IOMMU): the process's one container, the
//! device's group in it, its file descriptor, its BAR0 mapped and its
//! configuration space.
//!
//! One container serves the process: every device's group joins it, so the
//! IOVA space of `leapio_backend::dma` is the same for all of them, and the
//! container is attached to the process's DMA registry as an
//! [`Iommu`](leapio_backend::dma::Iommu).

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::RangeInclusive;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use leapio_backend::dma::{DmaRegistry, Iommu};
use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_group_status, vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap,
    vfio_iommu_type1_info, vfio_region_info, VFIO_TYPE1v2_IOMMU, VFIO_API_VERSION, VFIO_BASE,
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_WRITE, VFIO_GROUP_FLAGS_VIABLE, VFIO_IOMMU_INFO_CAPS,
    VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_TYPE,
};
use vmm_sys_util::ioctl::{
    ioctl, ioctl_with_mut_ref, ioctl_with_ptr, ioctl_with_ref, ioctl_with_val,
};
use vmm_sys_util::ioctl_io_nr;

ioctl_io_nr!(VFIO_GET_API_VERSION, VFIO_TYPE as u32, VFIO_BASE);
ioctl_io_nr!(VFIO_CHECK_EXTENSION, VFIO_TYPE as u32, VFIO_BASE + 1);
ioctl_io_nr!(VFIO_SET_IOMMU, VFIO_TYPE as u32, VFIO_BASE + 2);
ioctl_io_nr!(VFIO_GROUP_GET_STATUS, VFIO_TYPE as u32, VFIO_BASE + 3);
ioctl_io_nr!(VFIO_GROUP_SET_CONTAINER, VFIO_TYPE as u32, VFIO_BASE + 4);
ioctl_io_nr!(VFIO_GROUP_GET_DEVICE_FD, VFIO_TYPE as u32, VFIO_BASE + 6);
ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 7);
ioctl_io_nr!(VFIO_DEVICE_GET_REGION_INFO, VFIO_TYPE as u32, VFIO_BASE + 8);
ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE as u32, VFIO_BASE + 11);
ioctl_io_nr!(VFIO_IOMMU_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 12);
ioctl_io_nr!(VFIO_IOMMU_MAP_DMA, VFIO_TYPE as u32, VFIO_BASE + 13);
ioctl_io_nr!(VFIO_IOMMU_UNMAP_DMA, VFIO_TYPE as u32, VFIO_BASE + 14);

/// PCI class code of an NVMe controller (mass storage, NVM, NVMe).
const NVME_CLASS: u32 = 0x01_08_02;
/// PCI command register: memory space and bus master enable.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;
/// How long to wait for a device another process holds (a runtime that was
/// killed, whose descriptors the kernel is still closing).
pub(crate) const CLAIM_WAIT: Duration = Duration::from_secs(10);

/// Why a device could not be used through VFIO: each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// No such PCI device.
    #[error("no PCI device {0} (see /sys/bus/pci/devices)")]
    NoDevice(String),
    /// The device is not an NVMe controller.
    #[error("{bdf} is not an NVMe controller (PCI class {class:#08x}, not 0x010802)")]
    NotNvme {
        /// The device.
        bdf: String,
        /// Its class code.
        class: u32,
    },
    /// The device has no IOMMU group: the machine runs without an IOMMU.
    #[error("{0} has no IOMMU group: the machine runs without an IOMMU (x86: boot with intel_iommu=on or amd_iommu=on; an Arm SoC: an SMMU, and GICv3 for MSI isolation); the device is not driven without one, as it could then DMA anywhere")]
    NoIommu(String),
    /// The device is bound to another driver.
    #[error("{bdf} is bound to {driver}, not vfio-pci: echo {bdf} > /sys/bus/pci/drivers/{driver}/unbind; echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override; echo {bdf} > /sys/bus/pci/drivers_probe")]
    Bound {
        /// The device.
        bdf: String,
        /// Its driver.
        driver: String,
    },
    /// The device is bound to no driver.
    #[error("{0} is bound to no driver: modprobe vfio-pci; echo vfio-pci > /sys/bus/pci/devices/{0}/driver_override; echo {0} > /sys/bus/pci/drivers_probe")]
    Unbound(String),
    /// Another process holds the device's group.
    #[error("{bdf}: its IOMMU group {group} is still in use by another process after {secs} s")]
    Busy {
        /// The device.
        bdf: String,
        /// Its group.
        group: u32,
        /// How long we waited.
        secs: u64,
    },
    /// The group has devices not bound to vfio-pci.
    #[error("{bdf}: IOMMU group {group} is not viable: bind every device of /sys/kernel/iommu_groups/{group}/devices to vfio-pci")]
    NotViable {
        /// The device.
        bdf: String,
        /// Its group.
        group: u32,
    },
    /// A VFIO call failed.
    #[error("{bdf}: {what}")]
    Sys {
        /// The device.
        bdf: String,
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The device is not what VFIO should report for a PCI NVMe controller.
    #[error("{bdf}: {what}")]
    Unusable {
        /// The device.
        bdf: String,
        /// What is wrong.
        what: String,
    },
}

fn sys(bdf: &str, what: impl Into<String>) -> impl FnOnce(io::Error) -> VfioError + '_ {
    let what = what.into();
    move |source| VfioError::Sys {
        bdf: bdf.to_owned(),
        what,
        source,
    }
}

/// Check a PCI address (`0000:00:03.0`, or `00:03.0` for domain 0) and
/// return it in full.
pub fn parse_bdf(s: &str) -> Result<String, String> {
    let full = if s.matches(':').count() == 1 {
        format!("0000:{s}")
    } else {
        s.to_owned()
    };
    let ok = full.len() == 12
        && full.char_indices().all(|(i, c)| match i {
            4 | 7 => c == ':',
            10 => c == '.',
            11 => ('0'..='7').contains(&c),
            _ => c.is_ascii_hexdigit(),
        });
    if ok {
        Ok(full.to_ascii_lowercase())
    } else {
        Err(format!(
            "'{s}' is not a PCI address (DDDD:BB:DD.F, e.g. 0000:00:03.0)"
        ))
    }
}

/// What sysfs says about the device: its IOMMU group, after checking that
/// it exists, is an NVMe controller and is bound to vfio-pci.
fn inspect(sysfs: &Path, bdf: &str) -> Result<u32, VfioError> {
    let dev = sysfs.join("bus/pci/devices").join(bdf);
    if !dev.exists() {
        return Err(VfioError::NoDevice(bdf.to_owned()));
    }
    let class = std::fs::read_to_string(dev.join("class"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .unwrap_or(0);
    if class != NVME_CLASS {
        return Err(VfioError::NotNvme {
            bdf: bdf.to_owned(),
            class,
        });
    }
    let group = std::fs::read_link(dev.join("iommu_group"))
        .map_err(|_| VfioError::NoIommu(bdf.to_owned()))?;
    let group: u32 = group
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| VfioError::NoIommu(bdf.to_owned()))?;
    match std::fs::read_link(dev.join("driver")) {
        Ok(d) => {
            let driver = d
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if driver != "vfio-pci" {
                return Err(VfioError::Bound {
                    bdf: bdf.to_owned(),
                    driver,
                });
            }
        }
        Err(_) => return Err(VfioError::Unbound(bdf.to_owned())),
    }
    Ok(group)
}

/// The process's VFIO container: the IOMMU domain every device's group
/// joins.
pub struct Container {
    fd: File,
    /// The groups in it, by number (a group can be opened only once).
    groups: Mutex<HashMap<u32, Weak<Group>>>,
    /// Set with the IOMMU type (which needs a group first): the id of the
    /// container in the DMA registry. The container loses its IOMMU when
    /// its last group leaves.
    ready: Mutex<Option<u64>>,
    accepts: Mutex<Vec<RangeInclusive<u64>>>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

/// One IOMMU group, joined to the container; closed when its last device is.
#[derive(Debug)]
pub struct Group {
    fd: File,
    number: u32,
    _container: Arc<Container>,
}

impl Drop for Group {
    fn drop(&mut self) {
        let c = &self._container;
        let mut groups = c.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.remove(&self.number);
        if groups.values().all(|g| g.strong_count() == 0) {
            // The last group leaves when its descriptor closes, after this:
            // the IOMMU goes with it, so the registry's mappings go first.
            if let Some(id) = c.ready.lock().unwrap_or_else(|e| e.into_inner()).take() {
                DmaRegistry::global().detach(id);
            }
        }
    }
}

static CONTAINER: Mutex<Option<Arc<Container>>> = Mutex::new(None);

impl Container {
    /// The process's container, opened on first use.
    fn get(bdf: &str) -> Result<Arc<Container>, VfioError> {
        let mut c = CONTAINER.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = c.as_ref() {
            return Ok(Arc::clone(c));
        }
        let fd = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/vfio/vfio")
            .map_err(sys(bdf, "cannot open /dev/vfio/vfio (modprobe vfio-pci)"))?;
        // SAFETY: an ioctl without arguments on our own descriptor.
        let v = unsafe { ioctl(&fd, VFIO_GET_API_VERSION()) };
        if v != VFIO_API_VERSION as i32 {
            return Err(VfioError::Unusable {
                bdf: bdf.to_owned(),
                what: format!("VFIO API version {v}, not {VFIO_API_VERSION}"),
            });
        }
        // SAFETY: as above, with an integer argument.
        let t = unsafe {
            ioctl_with_val(
                &fd,
                VFIO_CHECK_EXTENSION(),
                libc::c_ulong::from(VFIO_TYPE1v2_IOMMU),
            )
        };
        if t != 1 {
            return Err(VfioError::Unusable {
                bdf: bdf.to_owned(),
                what: "the kernel has no VFIO type1v2 IOMMU (modprobe vfio_iommu_type1)".into(),
            });
        }
        let new = Arc::new(Container {
            fd,
            groups: Mutex::new(HashMap::new()),
            ready: Mutex::new(None),
            accepts: Mutex::new(Vec::new()),
        });
        *c = Some(Arc::clone(&new));
        Ok(new)
    }

    /// The device's group, opened and joined to the container; waits up to
    /// [`CLAIM_WAIT`] while another process holds it.
    fn group(self: &Arc<Container>, bdf: &str, number: u32) -> Result<Arc<Group>, VfioError> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = groups.get(&number).and_then(Weak::upgrade) {
            return Ok(g);
        }
        let path = PathBuf::from(format!("/dev/vfio/{number}"));
        let deadline = Instant::now() + CLAIM_WAIT;
        let mut said = false;
        let fd = loop {
            match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => break f,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    if Instant::now() >= deadline {
                        return Err(VfioError::Busy {
                            bdf: bdf.to_owned(),
                            group: number,
                            secs: CLAIM_WAIT.as_secs(),
                        });
                    }
                    if !said {
                        tracing::info!(
                            bdf,
                            group = number,
                            "VFIO group in use by another process: waiting for it to let go"
                        );
                        said = true;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(sys(bdf, format!("cannot open {}", path.display()))(e));
                }
            }
        };
        let mut status = vfio_group_status {
            argsz: argsz::<vfio_group_status>(),
            flags: 0,
        };
        // SAFETY: the kernel fills a vfio_group_status we own.
        let r = unsafe { ioctl_with_mut_ref(&fd, VFIO_GROUP_GET_STATUS(), &mut status) };
        if r < 0 {
            return Err(sys(bdf, "VFIO_GROUP_GET_STATUS")(io::Error::last_os_error()));
        }
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(VfioError::NotViable {
                bdf: bdf.to_owned(),
                group: number,
            });
        }
        let cfd: libc::c_int = self.fd.as_raw_fd();
        // SAFETY: the kernel reads the container descriptor we pass.
        let r = unsafe { ioctl_with_ref(&fd, VFIO_GROUP_SET_CONTAINER(), &cfd) };
        if r < 0 {
            return Err(sys(bdf, "VFIO_GROUP_SET_CONTAINER")(
                io::Error::last_os_error(),
            ));
        }
        self.set_iommu(bdf)?;
        let g = Arc::new(Group {
            fd,
            number,
            _container: Arc::clone(self),
        });
        groups.insert(number, Arc::downgrade(&g));
        Ok(g)
    }

    /// Set the IOMMU type once the first group is in, learn its IOVA
    /// ranges and attach the container to the process's DMA registry.
    fn set_iommu(self: &Arc<Container>, bdf: &str) -> Result<(), VfioError> {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        if ready.is_some() {
            return Ok(());
        }
        // SAFETY: an integer argument on our own descriptor.
        let r = unsafe {
            ioctl_with_val(
                &self.fd,
                VFIO_SET_IOMMU(),
                libc::c_ulong::from(VFIO_TYPE1v2_IOMMU),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            let what = if e.raw_os_error() == Some(libc::EPERM) {
                "VFIO_SET_IOMMU refused: the platform cannot isolate the device's MSIs (on Arm use GICv3 with an ITS; or the vfio_iommu_type1 allow_unsafe_interrupts parameter, which gives that isolation up)"
            } else {
                "VFIO_SET_IOMMU"
            };
            return Err(sys(bdf, what)(e));
        }
        *self.accepts.lock().unwrap_or_else(|e| e.into_inner()) = self.iova_ranges(bdf)?;
        let me: Arc<dyn Iommu> = Arc::clone(self) as Arc<dyn Iommu>;
        let id = DmaRegistry::global()
            .attach(me)
            .map_err(|e| VfioError::Unusable {
                bdf: bdf.to_owned(),
                what: e.to_string(),
            })?;
        *ready = Some(id);
        Ok(())
    }

    /// The IOVA ranges the IOMMU accepts (VFIO_IOMMU_GET_INFO's IOVA range
    /// capability; all of a 48-bit space when the kernel reports none).
    fn iova_ranges(&self, bdf: &str) -> Result<Vec<RangeInclusive<u64>>, VfioError> {
        let mut info = vfio_iommu_type1_info {
            argsz: argsz::<vfio_iommu_type1_info>(),
            ..Default::default()
        };
        // SAFETY: the kernel fills the structure we own (argsz says its size).
        let r = unsafe { ioctl_with_mut_ref(&self.fd, VFIO_IOMMU_GET_INFO(), &mut info) };
        if r < 0 {
            return Err(sys(bdf, "VFIO_IOMMU_GET_INFO")(io::Error::last_os_error()));
        }
        let whole = vec![0..=(1u64 << 48) - 1];
        if info.flags & VFIO_IOMMU_INFO_CAPS == 0
            || info.argsz as usize <= size_of::<vfio_iommu_type1_info>()
        {
            return Ok(whole);
        }
        // Again with room for the capabilities (u64 words: aligned).
        let words = (info.argsz as usize).div_ceil(8);
        let mut buf = vec![0u64; words];
        let head = vfio_iommu_type1_info {
            argsz: u32::try_from(words * 8).unwrap_or(u32::MAX),
            ..Default::default()
        };
        // SAFETY: `buf` is at least as large and as aligned as the header.
        unsafe { std::ptr::write(buf.as_mut_ptr().cast::<vfio_iommu_type1_info>(), head) };
        // SAFETY: the kernel writes at most argsz bytes into `buf`.
        let r = unsafe { ioctl_with_ptr(&self.fd, VFIO_IOMMU_GET_INFO(), buf.as_mut_ptr()) };
        if r < 0 {
            return Err(sys(bdf, "VFIO_IOMMU_GET_INFO")(io::Error::last_os_error()));
        }
        let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
        Ok(parse_iova_ranges(&bytes).unwrap_or(whole))
    }
}

/// The size of a VFIO argument structure, for its `argsz`.
fn argsz<T>() -> u32 {
    u32::try_from(size_of::<T>()).unwrap_or(u32::MAX)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The IOVA range capability in a VFIO_IOMMU_GET_INFO answer.
fn parse_iova_ranges(b: &[u8]) -> Option<Vec<RangeInclusive<u64>>> {
    // vfio_iommu_type1_info: cap_offset at byte 16.
    let mut at = usize::try_from(u32_at(b, 16)?).ok()?;
    let mut hops = 0;
    while at != 0 && hops < 16 {
        let id = u32_at(b, at)? & 0xffff;
        let next = usize::try_from(u32_at(b, at + 4)?).ok()?;
        if id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
            let n = usize::try_from(u32_at(b, at + 8)?).ok()?.min(64);
            return (0..n)
                .map(|i| {
                    let e = at + 16 + i * 16;
                    Some(u64_at(b, e)?..=u64_at(b, e + 8)?)
                })
                .collect();
        }
        at = next;
        hops += 1;
    }
    None
}

impl Iommu for Container {
    fn map(&self, iova: u64, va: usize, len: usize, writable: bool) -> io::Result<()> {
        let m = vfio_iommu_type1_dma_map {
            argsz: argsz::<vfio_iommu_type1_dma_map>(),
            flags: VFIO_DMA_MAP_FLAG_READ | if writable { VFIO_DMA_MAP_FLAG_WRITE } else { 0 },
            vaddr: va as u64,
            iova,
            size: len as u64,
        };
        // SAFETY: the kernel reads the structure; the registry's caller keeps
        // the memory mapped until it is unmapped again.
        let r = unsafe { ioctl_with_ref(&self.fd, VFIO_IOMMU_MAP_DMA(), &m) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn unmap(&self, iova: u64, len: usize) -> io::Result<()> {
        let mut u = vfio_iommu_type1_dma_unmap {
            argsz: argsz::<vfio_iommu_type1_dma_unmap>(),
            flags: 0,
            iova,
            size: len as u64,
            ..Default::default()
        };
        // SAFETY: the kernel reads and updates the structure we own.
        let r = unsafe { ioctl_with_mut_ref(&self.fd, VFIO_IOMMU_UNMAP_DMA(), &mut u) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn accepts(&self) -> Vec<RangeInclusive<u64>> {
        self.accepts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn name(&self) -> String {
        "the VFIO container".into()
    }
}

/// One PCI device: its VFIO descriptor and BAR0 mapped.
pub struct PciDevice {
    bdf: String,
    fd: File,
    config_offset: u64,
    bar0: memmap2::MmapRaw,
    can_reset: bool,
    group: Arc<Group>,
}

impl std::fmt::Debug for PciDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciDevice")
            .field("bdf", &self.bdf)
            .field("group", &self.group.number)
            .finish()
    }
}

impl PciDevice {
    /// Open `bdf` through VFIO: check it in sysfs, join its group to the
    /// process's container, map BAR0, enable memory space and bus mastering.
    pub fn open(bdf: &str) -> Result<PciDevice, VfioError> {
        Self::open_in(Path::new("/sys"), bdf)
    }

    fn open_in(sysfs: &Path, bdf: &str) -> Result<PciDevice, VfioError> {
        let number = inspect(sysfs, bdf)?;
        let container = Container::get(bdf)?;
        let group = container.group(bdf, number)?;
        let name = CString::new(bdf).map_err(|_| VfioError::NoDevice(bdf.to_owned()))?;
        // SAFETY: the kernel reads the NUL-terminated name.
        let r = unsafe { ioctl_with_ptr(&group.fd, VFIO_GROUP_GET_DEVICE_FD(), name.as_ptr()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            let what = if e.raw_os_error() == Some(libc::EBUSY) {
                "already open (another namespace or process drives it)"
            } else {
                "VFIO_GROUP_GET_DEVICE_FD"
            };
            return Err(sys(bdf, what)(e));
        }
        // SAFETY: a descriptor the kernel just gave us, owned from here on.
        let fd = unsafe { File::from_raw_fd(r) };
        let mut info = vfio_device_info {
            argsz: argsz::<vfio_device_info>(),
            ..Default::default()
        };
        // SAFETY: the kernel fills the structure we own.
        let r = unsafe { ioctl_with_mut_ref(&fd, VFIO_DEVICE_GET_INFO(), &mut info) };
        if r < 0 {
            return Err(sys(bdf, "VFIO_DEVICE_GET_INFO")(io::Error::last_os_error()));
        }
        if info.flags & VFIO_DEVICE_FLAGS_PCI == 0
            || info.num_regions <= VFIO_PCI_CONFIG_REGION_INDEX
        {
            return Err(VfioError::Unusable {
                bdf: bdf.to_owned(),
                what: "VFIO does not present it as a PCI device".into(),
            });
        }
        let region = |index: u32| -> Result<vfio_region_info, VfioError> {
            let mut ri = vfio_region_info {
                argsz: argsz::<vfio_region_info>(),
                index,
                ..Default::default()
            };
            // SAFETY: the kernel fills the structure we own.
            let r = unsafe { ioctl_with_mut_ref(&fd, VFIO_DEVICE_GET_REGION_INFO(), &mut ri) };
            if r < 0 {
                return Err(sys(bdf, format!("VFIO_DEVICE_GET_REGION_INFO {index}"))(
                    io::Error::last_os_error(),
                ));
            }
            Ok(ri)
        };
        let config = region(VFIO_PCI_CONFIG_REGION_INDEX)?;
        let bar = region(VFIO_PCI_BAR0_REGION_INDEX)?;
        if bar.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 || bar.size < 0x2000 {
            return Err(VfioError::Unusable {
                bdf: bdf.to_owned(),
                what: format!(
                    "BAR0 cannot be mapped ({} bytes, flags {:#x})",
                    bar.size, bar.flags
                ),
            });
        }
        let len = usize::try_from(bar.size).map_err(|_| VfioError::Unusable {
            bdf: bdf.to_owned(),
            what: "BAR0 too large".into(),
        })?;
        let bar0 = memmap2::MmapOptions::new()
            .offset(bar.offset)
            .len(len)
            .map_raw(&fd)
            .map_err(sys(bdf, "cannot map BAR0"))?;
        let dev = PciDevice {
            bdf: bdf.to_owned(),
            fd,
            config_offset: config.offset,
            bar0,
            can_reset: info.flags & VFIO_DEVICE_FLAGS_RESET != 0,
            group,
        };
        let cmd = dev.config_read16(PCI_COMMAND)?;
        dev.config_write16(PCI_COMMAND, cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)?;
        Ok(dev)
    }

    /// Its PCI address.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// BAR0's start and length.
    pub fn bar0(&self) -> (*mut u8, usize) {
        (self.bar0.as_mut_ptr(), self.bar0.len())
    }

    fn config_read16(&self, off: u64) -> Result<u16, VfioError> {
        let mut b = [0u8; 2];
        self.fd
            .read_exact_at(&mut b, self.config_offset + off)
            .map_err(sys(&self.bdf, "reading the configuration space"))?;
        Ok(u16::from_le_bytes(b))
    }

    fn config_write16(&self, off: u64, v: u16) -> Result<(), VfioError> {
        self.fd
            .write_all_at(&v.to_le_bytes(), self.config_offset + off)
            .map_err(sys(&self.bdf, "writing the configuration space"))
    }

    /// Stop the device's DMA for good: bus mastering off (a device that no
    /// longer answers must not write memory after its commands were failed).
    pub fn stop_dma(&self) {
        match self.config_read16(PCI_COMMAND) {
            Ok(cmd) => {
                if let Err(e) = self.config_write16(PCI_COMMAND, cmd & !PCI_COMMAND_MASTER) {
                    tracing::error!(bdf = %self.bdf, "cannot turn bus mastering off: {e}");
                }
            }
            Err(e) => tracing::error!(bdf = %self.bdf, "cannot turn bus mastering off: {e}"),
        }
    }

    /// A function-level reset through VFIO, when the device has one; then
    /// memory space and bus mastering on again.
    pub fn reset(&self) -> Result<(), VfioError> {
        if self.can_reset {
            // SAFETY: an ioctl without arguments on our own descriptor.
            let r = unsafe { ioctl(&self.fd, VFIO_DEVICE_RESET()) };
            if r < 0 {
                return Err(sys(&self.bdf, "VFIO_DEVICE_RESET")(
                    io::Error::last_os_error(),
                ));
            }
        }
        let cmd = self.config_read16(PCI_COMMAND)?;
        self.config_write16(PCI_COMMAND, cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses() {
        assert_eq!(parse_bdf("0000:00:03.0").unwrap(), "0000:00:03.0");
        assert_eq!(parse_bdf("01:00.1").unwrap(), "0000:01:00.1");
        assert_eq!(parse_bdf("0000:0A:1f.7").unwrap(), "0000:0a:1f.7");
        for bad in [
            "",
            "0000:00:03",
            "00:03.8",
            "0000:00:03.0x",
            "zz:00.0",
            "/dev/nvme0",
        ] {
            assert!(parse_bdf(bad).is_err(), "{bad}");
        }
    }

    /// A fake sysfs with one device.
    fn sysfs(class: &str, group: Option<u32>, driver: Option<&str>) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let dev = t.path().join("bus/pci/devices/0000:00:03.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("class"), class).unwrap();
        if let Some(g) = group {
            let gd = t.path().join(format!("kernel/iommu_groups/{g}"));
            std::fs::create_dir_all(&gd).unwrap();
            std::os::unix::fs::symlink(&gd, dev.join("iommu_group")).unwrap();
        }
        if let Some(d) = driver {
            let dd = t.path().join(format!("bus/pci/drivers/{d}"));
            std::fs::create_dir_all(&dd).unwrap();
            std::os::unix::fs::symlink(&dd, dev.join("driver")).unwrap();
        }
        t
    }

    #[test]
    fn devices_that_cannot_be_driven_are_refused_saying_why() {
        let bdf = "0000:00:03.0";
        let t = sysfs("0x010802\n", Some(7), Some("vfio-pci"));
        assert_eq!(inspect(t.path(), bdf).unwrap(), 7);
        let e = inspect(t.path(), "0000:00:04.0").unwrap_err();
        assert!(e.to_string().contains("no PCI device 0000:00:04.0"), "{e}");
        let t = sysfs("0x020000\n", Some(7), Some("vfio-pci"));
        let e = inspect(t.path(), bdf).unwrap_err();
        assert!(e.to_string().contains("not an NVMe controller"), "{e}");
        let t = sysfs("0x010802\n", None, Some("vfio-pci"));
        let e = inspect(t.path(), bdf).unwrap_err();
        assert!(e.to_string().contains("without an IOMMU"), "{e}");
        let t = sysfs("0x010802\n", Some(7), Some("nvme"));
        let e = inspect(t.path(), bdf).unwrap_err();
        assert!(e.to_string().contains("bound to nvme, not vfio-pci"), "{e}");
        assert!(e.to_string().contains("drivers/nvme/unbind"), "{e}");
        let t = sysfs("0x010802\n", Some(7), None);
        let e = inspect(t.path(), bdf).unwrap_err();
        assert!(e.to_string().contains("bound to no driver"), "{e}");
    }

    #[test]
    fn iova_ranges_from_the_capability_chain() {
        // Header (24 bytes, cap_offset 24), a migration capability (id 2),
        // then the IOVA range capability (id 1) with two ranges.
        let mut b = vec![0u8; 24 + 32 + 48];
        b[16..20].copy_from_slice(&24u32.to_ne_bytes());
        b[24..26].copy_from_slice(&2u16.to_ne_bytes());
        b[28..32].copy_from_slice(&56u32.to_ne_bytes());
        b[56..58].copy_from_slice(&1u16.to_ne_bytes());
        b[64..68].copy_from_slice(&2u32.to_ne_bytes());
        b[72..80].copy_from_slice(&0u64.to_ne_bytes());
        b[80..88].copy_from_slice(&0x7ff_ffffu64.to_ne_bytes());
        b[88..96].copy_from_slice(&0x810_0000u64.to_ne_bytes());
        b[96..104].copy_from_slice(&0xffff_ffff_ffffu64.to_ne_bytes());
        assert_eq!(
            parse_iova_ranges(&b).unwrap(),
            vec![0..=0x7ff_ffff, 0x810_0000..=0xffff_ffff_ffff]
        );
        // A chain that loops, or runs off the buffer, gives nothing.
        b[28..32].copy_from_slice(&24u32.to_ne_bytes());
        b[24..26].copy_from_slice(&2u16.to_ne_bytes());
        assert_eq!(parse_iova_ranges(&b), None);
    }
}
