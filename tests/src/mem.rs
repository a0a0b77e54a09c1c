//! "Guest RAM": a memfd mapped into this process, with a bump allocator of
//! guest-physical addresses.

use memmap2::{MmapOptions, MmapRaw};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Guest memory at guest-physical address `base`.
pub struct GuestMem {
    fd: OwnedFd,
    map: MmapRaw,
    size: u64,
    base: u64,
    next: u64,
}

impl GuestMem {
    pub fn new(base: u64, size: u64) -> io::Result<GuestMem> {
        let fd = leapio_ats::testing::memfd(c"leapio-guest-ram", size)?;
        let len = usize::try_from(size).map_err(|_| io::Error::other("size too large"))?;
        let map = MmapOptions::new().len(len).map_raw(&fd)?;
        Ok(GuestMem {
            fd,
            map,
            size,
            base,
            next: base,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
    pub fn base(&self) -> u64 {
        self.base
    }
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where the next allocation starts: give [`release_to`](Self::release_to)
    /// to free everything allocated since.
    pub fn mark(&self) -> u64 {
        self.next
    }

    /// Free everything allocated since `mark`.
    pub fn release_to(&mut self, mark: u64) {
        self.next = mark.clamp(self.base, self.next);
    }

    /// Allocate `len` bytes aligned to `align` (a power of two); zeroed.
    pub fn alloc(&mut self, len: u64, align: u64) -> u64 {
        let gpa = (self.next + align - 1) & !(align - 1);
        assert!(gpa + len <= self.base + self.size, "guest RAM exhausted");
        self.next = gpa + len;
        self.fill(gpa, len, 0);
        gpa
    }

    fn host(&self, gpa: u64, len: u64) -> *mut u8 {
        assert!(
            gpa >= self.base && gpa + len <= self.base + self.size,
            "gpa {gpa:#x}+{len} outside guest RAM"
        );
        let off = usize::try_from(gpa - self.base).unwrap_or(usize::MAX);
        // SAFETY: bounds checked above: the offset is inside the mapping.
        unsafe { self.map.as_mut_ptr().add(off) }
    }

    pub fn write(&self, gpa: u64, data: &[u8]) {
        let p = self.host(gpa, data.len() as u64);
        // SAFETY: inside our mapping (host() checks bounds); the controller
        // may access the same memory concurrently, as real DMA would.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
    }

    pub fn read(&self, gpa: u64, buf: &mut [u8]) {
        let p = self.host(gpa, buf.len() as u64);
        // SAFETY: as in write().
        unsafe { std::ptr::copy_nonoverlapping(p.cast_const(), buf.as_mut_ptr(), buf.len()) };
    }

    pub fn fill(&self, gpa: u64, len: u64, byte: u8) {
        let p = self.host(gpa, len);
        // SAFETY: as in write().
        unsafe { std::ptr::write_bytes(p, byte, usize::try_from(len).unwrap_or(0)) };
    }

    pub fn read_u32_volatile(&self, gpa: u64) -> u32 {
        let p = self.host(gpa, 4).cast::<u32>();
        // SAFETY: inside the mapping; the controller writes it concurrently.
        unsafe { p.read_volatile() }
    }

    pub fn read_vec(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.read(gpa, &mut v);
        v
    }
}
