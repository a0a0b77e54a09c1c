//! The link's messages over shared memory, for a runtime that reaches the
//! host only through a PCI window (an SoC): two single-producer,
//! single-consumer rings of length-prefixed records, one per direction,
//! plus a heartbeat the runtime bumps so that the host-driver can tell a
//! live runtime from a silent one. No file descriptors travel this way.
//!
//! ```text
//! 0x0000  to-host ring header    { head (host), tail (runtime), size }
//! 0x0040  to-runtime ring header { head (runtime), tail (host), size }
//! 0x0080  heartbeat (runtime), session (runtime: a new value per process)
//! 0x1000  to-host data
//! half    to-runtime data
//! ```
//!
//! A record is a 4-byte length and the message's JSON, padded to 8 bytes;
//! a length of `WRAP` says the rest of the data area is unused and the next
//! record starts at 0. Producers write the record and then publish the tail
//! (release); consumers read the tail (acquire), the record, then publish
//! the head. Every access is an aligned 4- or 8-byte atomic or a byte copy,
//! so the memory may be device-like on the far side.
//!
//! Both sides check what they read: a length past the data or a head or
//! tail out of range is a protocol violation, never an out-of-bounds access.

use crate::frame::{LinkError, Message};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Size of the shared area (BAR 1 of the link function).
pub const RING_AREA: usize = 64 << 10;
const DATA: usize = 0x1000;
const HALF: usize = (RING_AREA - DATA) / 2;
const WRAP: u32 = u32::MAX;
/// Largest message either way.
pub const MAX_RING_MESSAGE: usize = HALF / 2;

#[repr(C)]
struct RingHeader {
    head: AtomicU32,
    tail: AtomicU32,
    size: AtomicU32,
    _pad: [AtomicU32; 13],
}
const _: () = assert!(std::mem::size_of::<RingHeader>() == 64);

/// Memory that holds the rings: a raw mapping kept alive by its owner.
pub trait RingMemory: Send + Sync {
    /// Base of at least [`RING_AREA`] bytes, 8-byte aligned, valid while
    /// `self` lives.
    fn base(&self) -> *mut u8;
}

impl RingMemory for crate::shm::SharedMem {
    fn base(&self) -> *mut u8 {
        self.as_ptr()
    }
}

/// Which end of the rings this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Host,
    Runtime,
}

/// One end of the pair of rings.
pub struct Rings {
    mem: Arc<dyn RingMemory>,
    end: End,
}

// SAFETY: all access to the shared area goes through atomics or byte
// copies at checked offsets; the memory is kept alive by `mem`.
unsafe impl Send for Rings {}
// SAFETY: as above; each ring has one producer and one consumer (the two
// ends), and each end is used by one thread at a time per direction.
unsafe impl Sync for Rings {}

impl Rings {
    /// Set up an empty pair (the host-driver, once, before the runtime
    /// looks).
    pub fn init(mem: Arc<dyn RingMemory>) -> Rings {
        let r = Rings {
            mem,
            end: End::Host,
        };
        for h in [r.header(0), r.header(1)] {
            h.head.store(0, Ordering::Relaxed);
            h.tail.store(0, Ordering::Relaxed);
            h.size
                .store(u32::try_from(HALF).unwrap_or(0), Ordering::Release);
        }
        r
    }

    /// Use the rings from `end` (they were set up by the host-driver).
    pub fn attach(mem: Arc<dyn RingMemory>, end: End) -> Rings {
        Rings { mem, end }
    }

    fn header(&self, which: usize) -> &RingHeader {
        // SAFETY: headers 0 and 1 lie at 0 and 64 in the area, 8-aligned.
        unsafe { &*self.mem.base().add(which * 64).cast::<RingHeader>() }
    }

    fn word64(&self, off: usize) -> &AtomicU64 {
        // SAFETY: 0x80 and 0x88 lie in the first page of the area, aligned.
        unsafe { &*self.mem.base().add(off).cast::<AtomicU64>() }
    }

    fn data(&self, which: usize) -> *mut u8 {
        // SAFETY: the data areas lie inside RING_AREA.
        unsafe { self.mem.base().add(DATA + which * HALF) }
    }

    /// (ring we produce into, ring we consume from)
    fn dirs(&self) -> (usize, usize) {
        match self.end {
            End::Runtime => (0, 1),
            End::Host => (1, 0),
        }
    }

    /// The runtime's heartbeat (bumped by its link thread).
    pub fn heartbeat(&self) -> u64 {
        self.word64(0x80).load(Ordering::Acquire)
    }

    pub fn beat(&self) {
        let h = self.word64(0x80);
        h.store(h.load(Ordering::Relaxed).wrapping_add(1), Ordering::Release);
    }

    /// The runtime session (a new value each time a runtime process opens
    /// the function).
    pub fn session(&self) -> u64 {
        self.word64(0x88).load(Ordering::Acquire)
    }

    pub fn set_session(&self, s: u64) {
        self.word64(0x88).store(s, Ordering::Release);
    }

    /// Reset both rings to empty (a new runtime session starts; only the
    /// host-driver does this, while no runtime uses them).
    pub fn reset(&self) {
        for h in [self.header(0), self.header(1)] {
            h.head.store(0, Ordering::Relaxed);
            h.tail.store(0, Ordering::Release);
        }
    }

    /// Queue one message. Err(Timeout) if the ring has no room now (the
    /// caller retries or gives up).
    pub fn send<M: Message>(&self, msg: &M) -> Result<(), LinkError> {
        if msg.fd_count() != 0 {
            return Err(LinkError::Protocol(
                "a message with file descriptors on a shared-memory link".into(),
            ));
        }
        let body = serde_json::to_vec(msg).map_err(|e| LinkError::Protocol(e.to_string()))?;
        if body.len() > MAX_RING_MESSAGE {
            return Err(LinkError::Protocol(format!(
                "message of {} bytes (at most {MAX_RING_MESSAGE} over a shared-memory link)",
                body.len()
            )));
        }
        let (tx, _) = self.dirs();
        let h = self.header(tx);
        let size = HALF;
        let head = h.head.load(Ordering::Acquire) as usize;
        let tail = h.tail.load(Ordering::Relaxed) as usize;
        if head >= size || tail >= size || tail % 8 != 0 {
            return Err(LinkError::Protocol("ring indexes out of range".into()));
        }
        let need = (4 + body.len()).div_ceil(8) * 8;
        let free = (head + size - tail - 1) % size;
        let contiguous = size - tail;
        let data = self.data(tx);
        let mut at = tail;
        if contiguous < need {
            // Skip to the start: the wrap marker plus the record must fit.
            if free < contiguous + need {
                return Err(LinkError::Timeout("room in the link ring".into()));
            }
            if contiguous >= 4 {
                self.put_u32(data, at, WRAP);
            }
            at = 0;
        } else if free < need {
            return Err(LinkError::Timeout("room in the link ring".into()));
        }
        self.put_u32(data, at, u32::try_from(body.len()).unwrap_or(0));
        for (i, b) in body.iter().enumerate() {
            // SAFETY: at + 4 + body.len() <= size (checked above).
            unsafe { data.add(at + 4 + i).write_volatile(*b) };
        }
        let next = (at + need) % size;
        h.tail
            .store(u32::try_from(next).unwrap_or(0), Ordering::Release);
        Ok(())
    }

    /// Take one message, if any.
    pub fn recv<M: Message>(&self) -> Result<Option<M>, LinkError> {
        let (_, rx) = self.dirs();
        let h = self.header(rx);
        let size = HALF;
        let tail = h.tail.load(Ordering::Acquire) as usize;
        let mut head = h.head.load(Ordering::Relaxed) as usize;
        if head >= size || tail >= size || tail % 8 != 0 || head % 8 != 0 {
            return Err(LinkError::Protocol("ring indexes out of range".into()));
        }
        if head == tail {
            return Ok(None);
        }
        let data = self.data(rx);
        let mut len = self.get_u32(data, head);
        if len == WRAP || size - head < 4 {
            head = 0;
            if head == tail {
                return Err(LinkError::Protocol("ring wrapped into nothing".into()));
            }
            len = self.get_u32(data, head);
        }
        let len = len as usize;
        let need = (4 + len).div_ceil(8) * 8;
        let used = (tail + size - head) % size;
        if len > MAX_RING_MESSAGE || need > used || head + need > size {
            return Err(LinkError::Protocol(format!(
                "ring record of {len} bytes does not fit"
            )));
        }
        let mut body = vec![0u8; len];
        for (i, b) in body.iter_mut().enumerate() {
            // SAFETY: head + 4 + len <= size (checked above).
            *b = unsafe { data.add(head + 4 + i).read_volatile() };
        }
        h.head.store(
            u32::try_from((head + need) % size).unwrap_or(0),
            Ordering::Release,
        );
        let msg: M = serde_json::from_slice(&body).map_err(|e| {
            LinkError::Protocol(format!(
                "not a message ({e}): {}",
                String::from_utf8_lossy(&body[..body.len().min(120)])
            ))
        })?;
        if msg.fd_count() != 0 {
            return Err(LinkError::Protocol(
                "a message that needs descriptors on a shared-memory link".into(),
            ));
        }
        Ok(Some(msg))
    }

    fn put_u32(&self, data: *mut u8, at: usize, v: u32) {
        // SAFETY: callers keep at + 4 <= HALF; records start 8-aligned.
        unsafe { (*data.add(at).cast::<AtomicU32>()).store(v, Ordering::Relaxed) };
    }

    fn get_u32(&self, data: *mut u8, at: usize) -> u32 {
        // SAFETY: as put_u32.
        unsafe { (*data.add(at).cast::<AtomicU32>()).load(Ordering::Relaxed) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ToHost, ToRuntime};
    use crate::shm::SharedMem;

    fn pair() -> (Rings, Rings) {
        let mem: Arc<dyn RingMemory> =
            Arc::new(SharedMem::create(c"rings", RING_AREA as u64, 0, RING_AREA).unwrap());
        let host = Rings::init(mem.clone());
        let rt = Rings::attach(mem, End::Runtime);
        (host, rt)
    }

    #[test]
    fn messages_both_ways_with_wraparound() {
        let (host, rt) = pair();
        for i in 0..5000u64 {
            let m = ToHost::Ack {
                req: i,
                status: (i % 7) as u16,
            };
            rt.send(&m).unwrap();
            assert_eq!(host.recv::<ToHost>().unwrap(), Some(m));
            let r = ToRuntime::Reset {
                ctrl: "x".repeat((i % 300) as usize),
            };
            host.send(&r).unwrap();
            assert_eq!(rt.recv::<ToRuntime>().unwrap(), Some(r));
        }
        assert_eq!(rt.recv::<ToRuntime>().unwrap(), None);
        // A full ring says so instead of overwriting.
        let big = ToRuntime::Reset {
            ctrl: "y".repeat(1000),
        };
        let mut sent = 0;
        while host.send(&big).is_ok() {
            sent += 1;
        }
        assert!(sent > 10);
        for _ in 0..sent {
            assert!(rt.recv::<ToRuntime>().unwrap().is_some());
        }
        assert!(host.send(&big).is_ok());
        rt.beat();
        assert_eq!(host.heartbeat(), 1);
    }

    #[test]
    fn garbage_in_the_ring_is_a_protocol_violation() {
        let (host, rt) = pair();
        // A tail out of range, then a record longer than the ring.
        host.header(1).tail.store(u32::MAX - 7, Ordering::Release);
        assert!(matches!(
            rt.recv::<ToRuntime>(),
            Err(LinkError::Protocol(_))
        ));
        host.header(1).tail.store(64, Ordering::Release);
        host.put_u32(host.data(1), 0, 1 << 20);
        assert!(matches!(
            rt.recv::<ToRuntime>(),
            Err(LinkError::Protocol(_))
        ));
        host.put_u32(host.data(1), 0, 5);
        for (i, b) in b"nope!".iter().enumerate() {
            // SAFETY: inside the data area.
            unsafe { host.data(1).add(4 + i).write(*b) };
        }
        host.header(1).tail.store(16, Ordering::Release);
        assert!(matches!(
            rt.recv::<ToRuntime>(),
            Err(LinkError::Protocol(_))
        ));
        // Indexes inside the ring but not on a record boundary (found by
        // the link_ring fuzz target: the length word was read misaligned).
        host.reset();
        rt.header(1).head.store(0x12, Ordering::Release);
        host.header(1).tail.store(0x40, Ordering::Release);
        assert!(matches!(
            rt.recv::<ToRuntime>(),
            Err(LinkError::Protocol(_))
        ));
        host.reset();
        host.header(1).tail.store(0x2a, Ordering::Release);
        assert!(matches!(
            host.send(&ToRuntime::Reset { ctrl: "c".into() }),
            Err(LinkError::Protocol(_))
        ));
        // Messages with descriptors cannot travel this way.
        let m = ToRuntime::Map {
            req: 1,
            ctrl: "c".into(),
            gpa: 0,
            size: 4096,
            file_offset: 0,
            read: true,
            write: true,
            fd: true,
            window: None,
        };
        assert!(matches!(host.send(&m), Err(LinkError::Protocol(_))));
    }
}
