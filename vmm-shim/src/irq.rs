//! MSI-X vectors: one eventfd per vector (from SET_IRQS), per-vector mask and
//! pending bits. Pollers trigger vectors without taking locks.

use arc_swap::ArcSwapOption;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Default)]
struct Vector {
    fd: ArcSwapOption<File>,
    masked: AtomicBool,
    pending: AtomicBool,
}

/// The controller's interrupt vectors.
pub struct Interrupts {
    vectors: Box<[Vector]>,
}

impl Interrupts {
    pub fn new(count: u16) -> Interrupts {
        Interrupts {
            vectors: (0..count).map(|_| Vector::default()).collect(),
        }
    }

    pub fn count(&self) -> u16 {
        u16::try_from(self.vectors.len()).unwrap_or(u16::MAX)
    }

    /// Signal vector `v`; if it is masked or has no eventfd, remember it as pending.
    pub fn trigger(&self, v: u16) {
        let Some(vec) = self.vectors.get(usize::from(v)) else {
            return;
        };
        if vec.masked.load(Ordering::Acquire) {
            vec.pending.store(true, Ordering::Release);
            return;
        }
        match vec.fd.load().as_ref() {
            Some(f) => signal(f),
            None => vec.pending.store(true, Ordering::Release),
        }
    }

    /// Attach (or with None detach) the eventfd of vector `v`.
    pub fn set_eventfd(&self, v: u16, fd: Option<File>) {
        if let Some(vec) = self.vectors.get(usize::from(v)) {
            vec.fd.store(fd.map(Arc::new));
            self.deliver_pending(vec);
        }
    }

    pub fn set_masked(&self, v: u16, masked: bool) {
        if let Some(vec) = self.vectors.get(usize::from(v)) {
            vec.masked.store(masked, Ordering::Release);
            if !masked {
                self.deliver_pending(vec);
            }
        }
    }

    fn deliver_pending(&self, vec: &Vector) {
        if vec.masked.load(Ordering::Acquire) {
            return;
        }
        if let Some(f) = vec.fd.load().as_ref() {
            if vec.pending.swap(false, Ordering::AcqRel) {
                signal(f);
            }
        }
    }

    /// Pending bit array (MSI-X PBA), one bit per vector.
    pub fn pending_bits(&self) -> Vec<u64> {
        let mut bits = vec![0u64; self.vectors.len().div_ceil(64)];
        for (i, v) in self.vectors.iter().enumerate() {
            if v.pending.load(Ordering::Acquire) {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        bits
    }

    /// Drop every eventfd and clear masks and pending bits (client gone or reset).
    pub fn clear(&self) {
        for v in self.vectors.iter() {
            v.fd.store(None);
            v.masked.store(false, Ordering::Release);
            v.pending.store(false, Ordering::Release);
        }
    }

    /// Clear pending bits only (controller reset keeps the hypervisor's wiring).
    pub fn clear_pending(&self) {
        for v in self.vectors.iter() {
            v.pending.store(false, Ordering::Release);
        }
    }
}

fn signal(f: &File) {
    // An eventfd write only fails if the counter would overflow, which
    // means the reader is far behind and already has an interrupt pending.
    let _ = (&*f).write(&1u64.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::FromRawFd;

    fn eventfd() -> File {
        // SAFETY: plain eventfd creation, result checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        // SAFETY: fresh fd owned by the File.
        unsafe { File::from_raw_fd(fd) }
    }

    fn count(f: &File) -> u64 {
        let mut b = [0u8; 8];
        match (&*f).read(&mut b) {
            Ok(8) => u64::from_ne_bytes(b),
            _ => 0,
        }
    }

    #[test]
    fn masked_vectors_deliver_on_unmask() {
        let irqs = Interrupts::new(4);
        let fd = eventfd();
        irqs.set_eventfd(1, Some(fd.try_clone().unwrap()));
        irqs.trigger(1);
        assert_eq!(count(&fd), 1);
        irqs.set_masked(1, true);
        irqs.trigger(1);
        assert_eq!(count(&fd), 0);
        assert_eq!(irqs.pending_bits()[0], 0b10);
        irqs.set_masked(1, false);
        assert_eq!(count(&fd), 1);
        assert_eq!(irqs.pending_bits()[0], 0);
        // No fd yet: pending until one is attached.
        irqs.trigger(2);
        let fd2 = eventfd();
        irqs.set_eventfd(2, Some(fd2.try_clone().unwrap()));
        assert_eq!(count(&fd2), 1);
        // Out of range vectors are ignored.
        irqs.trigger(99);
    }
}
