//! Recycled C2HData buffers of one poller.
//!
//! A read's PDU buffer (header room, data, digest) used to be allocated and
//! zeroed per command and freed once sent: at QD32 on a RAM namespace that
//! was about a tenth of the poller's user time. Sent buffers now come back
//! here and the next read takes one without zeroing it.
//!
//! Not zeroing is safe because every byte that is sent is written first:
//! the header room and the padding up to PDO are cleared by [`BufPool::take`],
//! the data by the backend (a backend reports success only for a whole
//! transfer, `BackendQueue::poll`), and the header and digest by the sender
//! (`seal`). A read that fails is answered without its buffer.

/// Buffers kept at most (a connection's queue depth of reads in flight is
/// served from here; beyond, buffers are freed as before).
const KEEP: usize = 256;
/// Smaller buffers (response capsules) and larger ones (rare, large
/// transfers) are not kept: one would cost a reallocation on the next take,
/// the other memory nobody may need again.
const KEPT_CAPACITY: std::ops::RangeInclusive<usize> = 4096..=(256 << 10);

#[derive(Default)]
pub(super) struct BufPool(Vec<Vec<u8>>);

impl BufPool {
    /// A buffer of `len` bytes whose first `clean` bytes are zero; the other
    /// bytes are whatever an earlier PDU left, for the caller to overwrite
    /// before sending.
    pub fn take(&mut self, len: usize, clean: usize) -> Vec<u8> {
        let Some(mut b) = self.0.pop() else {
            return vec![0u8; len];
        };
        if b.len() >= len {
            b.truncate(len);
        } else {
            b.resize(len, 0);
        }
        b[..clean.min(len)].fill(0);
        b
    }

    /// Give back a buffer that has been sent.
    pub fn give(&mut self, b: Vec<u8>) {
        if self.0.len() < KEEP && KEPT_CAPACITY.contains(&b.capacity()) {
            self.0.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_buffer_has_the_length_asked_and_its_head_cleared() {
        let mut p = BufPool::default();
        p.give(vec![0xa5; 8192]);
        let b = p.take(4096 + 32, 32);
        assert_eq!(b.len(), 4128);
        assert!(
            b[..32].iter().all(|&x| x == 0),
            "header room and padding cleared"
        );
        let b = {
            p.give(b);
            p.take(12_000, 24)
        };
        assert_eq!(b.len(), 12_000);
        assert!(b[..24].iter().all(|&x| x == 0));
        assert!(b[8192..].iter().all(|&x| x == 0), "grown part is zero");
    }

    #[test]
    fn small_large_and_surplus_buffers_are_not_kept() {
        let mut p = BufPool::default();
        p.give(Vec::with_capacity(28));
        p.give(Vec::with_capacity(1 << 20));
        assert_eq!(p.0.len(), 0);
        for _ in 0..KEEP + 10 {
            p.give(vec![0; 4096]);
        }
        assert_eq!(p.0.len(), KEEP);
    }
}
