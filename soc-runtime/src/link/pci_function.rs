//! The link function as a runtime on an SoC sees it: a PCI device in
//! `/sys/bus/pci/devices`, used from user space without a driver (no
//! patched kernel, no kernel module). The memory BARs are mapped through
//! their `resourceN_wc` files (write-combined: Normal non-cacheable memory
//! on arm64, where the unaligned accesses of ordinary copies are allowed;
//! plain `resourceN` maps Device memory); the register BAR through
//! `resource0`, with aligned 32-bit accesses only.
//!
//! One process at a time: the runtime takes an exclusive lock on the
//! function's `resource0` before opening a session, so when it opens one
//! the previous runtime is gone (the host-driver's fence for an SoC).

use crate::link::carrier::Windows;
use leapio_link::function::{self, reg};
use leapio_link::ring::{RingMemory, Rings, RING_AREA};
use memmap2::{MmapOptions, MmapRaw};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where PCI devices are.
const SYSFS: &str = "/sys/bus/pci/devices";
/// How long to wait for another process to let go of a function.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// An opened link function.
pub struct PciFunction {
    dir: PathBuf,
    regs: MmapRaw,
    /// Holds the lock (and the register mapping's file).
    _lock: File,
    name: String,
}

// SAFETY: the register mapping is only accessed with volatile 32-bit
// loads and stores at checked offsets; it lives as long as `self`.
unsafe impl Send for PciFunction {}
// SAFETY: as above; single register accesses need no exclusion.
unsafe impl Sync for PciFunction {}

fn read_hex(path: &Path) -> Option<u32> {
    let s = std::fs::read_to_string(path).ok()?;
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// The link functions present (their PCI addresses, sorted).
pub fn find() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(SYSFS)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let p = e.path();
                    read_hex(&p.join("vendor")) == Some(u32::from(function::VENDOR_ID))
                        && read_hex(&p.join("device")) == Some(u32::from(function::DEVICE_ID))
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

impl PciFunction {
    /// Open the function at PCI address `bdf` (e.g. `0000:00:02.0`):
    /// enable it, take its lock (waiting for a previous runtime to be
    /// gone), map its registers and check them.
    pub fn open(bdf: &str) -> io::Result<PciFunction> {
        let dir = Path::new(SYSFS).join(bdf);
        let ids = (read_hex(&dir.join("vendor")), read_hex(&dir.join("device")));
        if ids
            != (
                Some(u32::from(function::VENDOR_ID)),
                Some(u32::from(function::DEVICE_ID)),
            )
        {
            return Err(io::Error::other(format!(
                "{bdf} is not a LeapIO link function (vendor/device {:x?})",
                ids
            )));
        }
        // Memory decoding on (no driver does it for us).
        if let Err(e) = std::fs::write(dir.join("enable"), "1") {
            tracing::debug!(bdf, "enabling the function: {e}");
        }
        let regs_file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("resource0"))?;
        lock(&regs_file, bdf)?;
        let regs = MmapOptions::new()
            .len(usize::try_from(function::REGS_SIZE).unwrap_or(4096))
            .map_raw(&regs_file)?;
        let mut f = PciFunction {
            dir,
            regs,
            _lock: regs_file,
            name: String::new(),
        };
        let magic = f.read(reg::MAGIC);
        if magic != function::MAGIC {
            return Err(io::Error::other(format!(
                "{bdf}: bad magic {magic:#x} (is the host-driver serving it?)"
            )));
        }
        let version = f.read(reg::VERSION);
        if version != function::VERSION {
            return Err(io::Error::other(format!(
                "{bdf}: link function layout {version}, this runtime knows {}",
                function::VERSION
            )));
        }
        let mut name = Vec::new();
        for i in (0..reg::NAME_LEN as u64).step_by(4) {
            name.extend_from_slice(&f.read(reg::NAME + i).to_le_bytes());
        }
        f.name = String::from_utf8_lossy(&name)
            .trim_end_matches('\0')
            .to_string();
        Ok(f)
    }

    /// The controller this function belongs to.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn read(&self, off: u64) -> u32 {
        let Ok(o) = usize::try_from(off) else {
            return 0;
        };
        if o % 4 != 0 || o + 4 > self.regs.len() {
            return 0;
        }
        // SAFETY: an aligned 32-bit read inside the register mapping.
        unsafe { self.regs.as_ptr().add(o).cast::<u32>().read_volatile() }
    }

    fn write(&self, off: u64, v: u32) {
        let Ok(o) = usize::try_from(off) else { return };
        if o % 4 != 0 || o + 4 > self.regs.len() {
            return;
        }
        // SAFETY: an aligned 32-bit write inside the register mapping.
        unsafe {
            self.regs
                .as_mut_ptr()
                .add(o)
                .cast::<u32>()
                .write_volatile(v)
        };
    }

    /// Open a new session (the host-driver ends any previous one and
    /// empties the rings) and return the rings.
    pub fn open_session(&self) -> io::Result<Arc<Rings>> {
        let session = session_number();
        self.write(reg::OPEN, session);
        let mem = BarMap::map(&self.bar_file(function::BAR_RINGS)?, RING_AREA)?;
        let rings = Rings::attach(Arc::new(mem), leapio_link::ring::End::Runtime);
        rings.set_session(u64::from(session));
        Ok(Arc::new(rings))
    }

    /// A memory BAR's resource file: write-combined where the kernel offers
    /// it (prefetchable BARs), else plain.
    fn bar_file(&self, bar: usize) -> io::Result<File> {
        let wc = self.dir.join(format!("resource{bar}_wc"));
        let path = if wc.exists() {
            wc
        } else {
            self.dir.join(format!("resource{bar}"))
        };
        OpenOptions::new().read(true).write(true).open(path)
    }
}

impl Windows for PciFunction {
    fn doorbells(&self) -> io::Result<File> {
        self.bar_file(function::BAR_DOORBELLS)
    }

    fn qstate(&self) -> io::Result<File> {
        self.bar_file(function::BAR_QSTATE)
    }

    fn guest_mem(&self) -> io::Result<File> {
        self.bar_file(function::BAR_GUEST_MEM)
    }

    fn irq(&self, v: u16) {
        order_before_register_write();
        self.write(reg::IRQ, u32::from(v));
    }

    fn kick(&self) {
        order_before_register_write();
        self.write(reg::KICK, 1);
    }
}

/// Everything written to the memory BARs before is visible before a
/// register write reaches the host (a CQE before its interrupt, a ring
/// record before its kick).
fn order_before_register_write() {
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a barrier instruction, no memory operands.
    unsafe {
        std::arch::asm!("dsb st", options(nostack, preserves_flags))
    };
}

/// A session number: nonzero, different for each process and start.
fn session_number() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (t ^ std::process::id().rotate_left(16)) | 1
}

/// Take the function's lock, waiting for another process to let go.
fn lock(f: &File, bdf: &str) -> io::Result<()> {
    let deadline = Instant::now() + LOCK_WAIT;
    let mut said = false;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(e);
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "{bdf} is held by another process for more than {} s",
                LOCK_WAIT.as_secs()
            )));
        }
        if !said {
            tracing::info!(
                bdf,
                "link function held by another process: waiting for it to let go"
            );
            said = true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A mapped memory BAR.
pub struct BarMap {
    map: MmapRaw,
}

impl BarMap {
    pub fn map(file: &File, len: usize) -> io::Result<BarMap> {
        Ok(BarMap {
            map: MmapOptions::new().len(len).map_raw(file)?,
        })
    }
}

impl RingMemory for BarMap {
    fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }
}
