//! MSI-X vectors: one eventfd per vector (from the hypervisor's SET_IRQS),
//! with the mask and pending bits in the queue-state area so that the
//! host-driver (which the hypervisor tells about masks) and the runtime
//! (which raises the interrupts) see the same state. Triggering takes no
//! lock.

use crate::qstate::QueueState;
use arc_swap::ArcSwapOption;
use std::fs::File;
use std::io::Write;
use std::sync::Arc;

/// Raises a vector on the far side (a register of the link function, for a
/// runtime on an SoC: the host-driver applies masks and writes the eventfd).
pub type IrqSink = Arc<dyn Fn(u16) + Send + Sync>;

/// A controller's interrupt vectors, as one side of the link sees them:
/// both sides hold the eventfds (the runtime receives them over the link),
/// or the runtime hands every trigger to a [`IrqSink`].
pub struct Interrupts {
    fds: Box<[ArcSwapOption<File>]>,
    state: Arc<QueueState>,
    sink: Option<IrqSink>,
}

impl Interrupts {
    pub fn new(count: u16, state: Arc<QueueState>) -> Interrupts {
        Interrupts {
            fds: (0..usize::from(count).min(crate::qstate::MAX_VECTORS))
                .map(|_| ArcSwapOption::empty())
                .collect(),
            state,
            sink: None,
        }
    }

    /// Vectors raised through `sink` (a runtime reaching the host through
    /// a PCI window: it holds no eventfds).
    pub fn remote(count: u16, state: Arc<QueueState>, sink: IrqSink) -> Interrupts {
        Interrupts {
            sink: Some(sink),
            ..Interrupts::new(count, state)
        }
    }

    pub fn count(&self) -> u16 {
        u16::try_from(self.fds.len()).unwrap_or(u16::MAX)
    }

    /// Signal vector `v`; if it is masked or has no eventfd, remember it as pending.
    pub fn trigger(&self, v: u16) {
        let Some(fd) = self.fds.get(usize::from(v)) else {
            return;
        };
        if let Some(sink) = &self.sink {
            sink(v);
            return;
        }
        if self.state.irq_masked(v) {
            self.state.set_irq_pending(v, true);
            return;
        }
        match fd.load().as_ref() {
            Some(f) => signal(f),
            None => self.state.set_irq_pending(v, true),
        }
    }

    /// The eventfd of vector `v`, if any (to pass over the link).
    pub fn eventfd(&self, v: u16) -> Option<Arc<File>> {
        self.fds.get(usize::from(v)).and_then(|f| f.load_full())
    }

    /// Attach (or with None detach) the eventfd of vector `v`.
    pub fn set_eventfd(&self, v: u16, fd: Option<File>) {
        if let Some(slot) = self.fds.get(usize::from(v)) {
            slot.store(fd.map(Arc::new));
            self.deliver_pending(v);
        }
    }

    pub fn set_masked(&self, v: u16, masked: bool) {
        if usize::from(v) < self.fds.len() {
            self.state.set_irq_masked(v, masked);
            if !masked {
                self.deliver_pending(v);
            }
        }
    }

    fn deliver_pending(&self, v: u16) {
        if self.state.irq_masked(v) {
            return;
        }
        if let Some(f) = self.fds.get(usize::from(v)).and_then(|f| f.load_full()) {
            if self.state.take_irq_pending(v) {
                signal(&f);
            }
        }
    }

    /// Pending bit array (MSI-X PBA), one bit per vector.
    pub fn pending_bits(&self) -> Vec<u64> {
        let mut bits = vec![0u64; self.fds.len().div_ceil(64)];
        for v in 0..self.count() {
            if self.state.irq_pending(v) {
                bits[usize::from(v) / 64] |= 1 << (v % 64);
            }
        }
        bits
    }

    /// Drop every eventfd and clear masks and pending bits (client gone or reset).
    pub fn clear(&self) {
        for v in 0..self.count() {
            self.fds[usize::from(v)].store(None);
            self.state.set_irq_masked(v, false);
            self.state.set_irq_pending(v, false);
        }
    }

    /// Clear pending bits only (controller reset keeps the hypervisor's wiring).
    pub fn clear_pending(&self) {
        for v in 0..self.count() {
            self.state.set_irq_pending(v, false);
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
        let irqs = Interrupts::new(4, Arc::new(QueueState::create(1, 2).unwrap()));
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
