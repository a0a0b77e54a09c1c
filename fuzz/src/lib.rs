//! Helpers shared by the fuzz targets: a reader that turns the fuzzer's
//! bytes into structured input (running out of bytes yields zeros, so every
//! input is valid), a descriptor-leak check, and builders of mostly valid
//! protocol messages so the fuzzer reaches deep states quickly.

use std::os::fd::{AsRawFd, OwnedFd};

pub mod fabrics;
pub mod rdma;
pub mod seeds;
pub mod tcp;
pub mod vfio;

/// Structured reading of fuzzer input.
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input(data)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    /// `N` bytes, zero-padded at the end of the input.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }
    /// A value below `n` (n > 0) from one byte, or two when n > 256.
    pub fn below(&mut self, n: usize) -> usize {
        if n <= 256 {
            usize::from(self.u8()) % n
        } else {
            usize::from(self.u16()) % n
        }
    }
    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.0.len())
    }
}

/// The lowest descriptor number free now. A run that leaks descriptors
/// raises it: targets compare it before and after each run.
pub fn lowest_free_fd() -> i32 {
    let f = std::fs::File::open("/dev/null").expect("open /dev/null");
    f.as_raw_fd()
}

/// A memfd of `size` bytes (guest memory, DMA_MAP regions).
pub fn memfd(size: u64) -> OwnedFd {
    leapio_ats::testing::memfd(c"leapio-fuzz", size).expect("memfd")
}

/// An eventfd (interrupts).
pub fn eventfd() -> OwnedFd {
    // SAFETY: eventfd(2) with constant arguments returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor that nothing else owns.
    unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
}

/// Guest memory for the NVMe targets: three regions of a domain with a gap
/// between them, the last one read-only, so PRPs can cross from one region
/// into nothing or into memory the device may only read.
pub mod guest {
    use leapio_ats::{Access, Domain, Prot};

    /// (guest-physical address, size, writable by the device)
    pub const REGIONS: [(u64, u64, bool); 3] = [
        (0, 256 << 10, true),
        (0x10_0000, 64 << 10, true),
        (0x20_0000, 16 << 10, false),
    ];
    pub const PAGE: u64 = 4096;

    /// The domain, the regions' memfds, and what the run wrote (to be
    /// zeroed before the next).
    pub struct Memory {
        pub domain: Domain,
        pub fds: Vec<std::os::fd::OwnedFd>,
        written: Vec<(u64, usize)>,
    }

    impl Memory {
        pub fn new() -> Memory {
            let domain = Domain::new();
            let mut fds = Vec::new();
            for (gpa, size, writable) in REGIONS {
                let prot = if writable {
                    Prot::READ_WRITE
                } else {
                    Prot::READ
                };
                let fd = crate::memfd(size);
                let dup = fd.try_clone().expect("dup");
                fds.push(fd);
                domain
                    .map(gpa, size, Some(dup), 0, prot)
                    .expect("map guest memory");
            }
            Memory {
                domain,
                fds,
                written: Vec::new(),
            }
        }

        /// Write into a writable region (the guest preparing PRP lists,
        /// SQEs, data); false when `gpa` is not there.
        pub fn write(&mut self, gpa: u64, bytes: &[u8]) -> bool {
            let ok = self.domain.snapshot().write_bytes(gpa, bytes).is_ok();
            if ok {
                self.written.push((gpa, bytes.len()));
            }
            ok
        }

        /// Zero what was written since the last call.
        pub fn clear(&mut self) {
            let snap = self.domain.snapshot();
            for (gpa, len) in self.written.drain(..) {
                let _ = snap.write_bytes(gpa, &vec![0; len]);
            }
        }

        /// Zero `[gpa, gpa + len)` of a writable region.
        pub fn clear_range(&mut self, gpa: u64, len: u64) {
            let len = usize::try_from(len).expect("a small range");
            let _ = self.domain.snapshot().write_bytes(gpa, &vec![0; len]);
        }

        /// Host address ranges of the regions the device may access so;
        /// regions the kernel placed next to each other are one range (an
        /// I/O may merge their pages into one iovec).
        pub fn host_ranges(&self, access: Access) -> Vec<(usize, usize)> {
            let snap = self.domain.snapshot();
            let mut r: Vec<(usize, usize)> = REGIONS
                .iter()
                .filter(|r| access == Access::Read || r.2)
                .map(|&(gpa, size, _)| {
                    let p = snap.translate(gpa, size, access).expect("region") as usize;
                    (p, p + size as usize)
                })
                .collect();
            r.sort_unstable();
            let mut merged: Vec<(usize, usize)> = Vec::new();
            for (a, b) in r {
                match merged.last_mut() {
                    Some(last) if last.1 == a => last.1 = b,
                    _ => merged.push((a, b)),
                }
            }
            merged
        }
    }

    impl Default for Memory {
        fn default() -> Self {
            Memory::new()
        }
    }

    /// A guest-physical address: mostly a page (or an offset in one) of a
    /// region, sometimes just past one, sometimes anything.
    pub fn address(input: &mut crate::Input<'_>) -> u64 {
        let sel = input.u8();
        let (gpa, size, _) = REGIONS[usize::from(sel % 3)];
        match sel >> 2 {
            0..=39 => gpa + (u64::from(input.u8()) * PAGE) % size,
            40..=49 => gpa + (u64::from(input.u16()) * 8) % size,
            50..=54 => gpa + size,
            55..=59 => gpa + u64::from(input.u16()) % size,
            _ => input.u64(),
        }
    }
}

/// The host-driver's controller as the NVMe targets use it: small limits,
/// short timeouts, two namespaces declared, no runtime.
pub fn controller() -> leapio_host_driver::NvmeController {
    use leapio_host_driver::port::Timeouts;
    use leapio_host_driver::{ControllerConfig, NvmeController};
    use leapio_link::NsDecl;
    use std::time::Duration;

    let (tx, rx) = std::sync::mpsc::channel();
    // The sender lives as long as the controller: no runtime ever comes.
    std::mem::forget(tx);
    let cfg = ControllerConfig {
        max_io_queues: 4,
        max_queue_entries: 64,
        mdts: 3,
        ..ControllerConfig::default()
    };
    let short = Duration::from_millis(10);
    let timeouts = Timeouts {
        ack: short,
        drain: short,
        fence: short,
    };
    let mut ctrl = NvmeController::new("fuzz", cfg, rx, timeouts).expect("controller");
    let ns = |nsid, block_size, num_blocks| NsDecl {
        nsid,
        block_size,
        num_blocks,
        volatile_write_cache: true,
        write_zeroes: true,
        deallocate: true,
        persistent: true,
        describe: "fuzz".into(),
        zoned: None,
    };
    ctrl.fuzz_declare_namespaces(vec![ns(1, 512, 2048), ns(2, 4096, 64)]);
    ctrl
}
