//! What to issue next: offsets (random or sequential, aligned to the I/O
//! size), read or write, and the --verify data pattern.

/// splitmix64: small, fast, good enough for offsets.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
    /// Uniform in `0..n` (n > 0), by multiply-shift (no division).
    pub fn below(&mut self, n: u64) -> u64 {
        let x = u128::from(self.next_u64()) * u128::from(n);
        u64::try_from(x >> 64).unwrap_or(0)
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One I/O to issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    pub read: bool,
    pub slba: u64,
}

/// Generates the I/O stream of a run.
#[derive(Clone, Debug)]
pub struct OpGen {
    rng: Rng,
    random: bool,
    read_pct: u8,
    /// I/O-sized units in the range.
    units: u64,
    blocks_per_io: u64,
    next_unit: u64,
}

impl OpGen {
    /// `range_blocks` LBAs from 0, I/Os of `blocks_per_io` LBAs.
    pub fn new(
        seed: u64,
        random: bool,
        read_pct: u8,
        range_blocks: u64,
        blocks_per_io: u64,
    ) -> OpGen {
        OpGen {
            rng: Rng::new(seed),
            random,
            read_pct,
            units: (range_blocks / blocks_per_io.max(1)).max(1),
            blocks_per_io: blocks_per_io.max(1),
            next_unit: 0,
        }
    }

    pub fn next_op(&mut self) -> Op {
        let read = match self.read_pct {
            100 => true,
            0 => false,
            p => self.rng.below(100) < u64::from(p),
        };
        let unit = if self.random {
            self.rng.below(self.units)
        } else {
            let u = self.next_unit;
            self.next_unit = if u + 1 == self.units { 0 } else { u + 1 };
            u
        };
        Op {
            read,
            slba: unit * self.blocks_per_io,
        }
    }
}

/// The `i`-th 8-byte word of LBA `lba` under `seed`: the LBA, the seed,
/// then a hash of the three (so a block misplaced, stale or from another
/// run is told apart).
pub fn pattern_word(lba: u64, seed: u64, i: u64) -> u64 {
    match i {
        0 => lba,
        1 => seed,
        _ => mix(lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed.rotate_left(29) ^ (i << 40)),
    }
}

/// Fill `buf` (whole blocks of `lba_size` bytes) with the pattern of the
/// blocks from `slba`.
pub fn fill_pattern(buf: &mut [u8], slba: u64, lba_size: usize, seed: u64) {
    for (b, block) in buf.chunks_exact_mut(lba_size).enumerate() {
        let lba = slba + b as u64;
        for (i, w) in block.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&pattern_word(lba, seed, i as u64).to_le_bytes());
        }
    }
}

/// A block that does not hold its pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub lba: u64,
    /// Byte offset in the block of the first wrong word.
    pub offset: usize,
    pub expected: u64,
    pub found: u64,
}

/// Check `buf` against the pattern of the blocks from `slba`; the first
/// wrong word, if any.
pub fn check_pattern(buf: &[u8], slba: u64, lba_size: usize, seed: u64) -> Option<Mismatch> {
    for (b, block) in buf.chunks_exact(lba_size).enumerate() {
        let lba = slba + b as u64;
        for (i, w) in block.chunks_exact(8).enumerate() {
            let found = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
            let expected = pattern_word(lba, seed, i as u64);
            if found != expected {
                return Some(Mismatch {
                    lba,
                    offset: i * 8,
                    expected,
                    found,
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_offsets_are_aligned_in_range_and_reproducible() {
        let mut g = OpGen::new(7, true, 100, 1000, 8);
        let mut h = OpGen::new(7, true, 100, 1000, 8);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10_000 {
            let op = g.next_op();
            assert_eq!(op, h.next_op());
            assert!(op.read);
            assert_eq!(op.slba % 8, 0);
            assert!(op.slba + 8 <= 1000, "{op:?}");
            seen.insert(op.slba);
        }
        assert_eq!(seen.len(), 125, "every aligned unit is reached");
        let mut other = OpGen::new(8, true, 100, 1000, 8);
        assert!((0..10).any(|_| other.next_op() != g.next_op()));
    }

    #[test]
    fn sequential_offsets_wrap() {
        let mut g = OpGen::new(1, false, 0, 32, 8);
        let s: Vec<_> = (0..6).map(|_| g.next_op().slba).collect();
        assert_eq!(s, [0, 8, 16, 24, 0, 8]);
        assert!(!g.next_op().read);
    }

    #[test]
    fn read_mix_follows_the_percentage() {
        let mut g = OpGen::new(3, true, 70, 1 << 20, 1);
        let reads = (0..100_000).filter(|_| g.next_op().read).count();
        assert!((68_000..72_000).contains(&reads), "{reads}");
    }

    #[test]
    fn pattern_round_trip_and_detection() {
        let mut buf = vec![0u8; 4096];
        fill_pattern(&mut buf, 80, 512, 9);
        assert_eq!(check_pattern(&buf, 80, 512, 9), None);
        // The same data seen as 4 KiB blocks is not the same pattern.
        assert!(check_pattern(&buf, 10, 4096, 9).is_some());
        // Another seed, another LBA.
        assert_eq!(check_pattern(&buf, 80, 512, 10).map(|m| m.offset), Some(8));
        let m = check_pattern(&buf, 81, 512, 9).unwrap();
        assert_eq!((m.lba, m.offset, m.expected, m.found), (81, 0, 81, 80));
        // One flipped byte in the third block.
        buf[2 * 512 + 100] ^= 1;
        let m = check_pattern(&buf, 80, 512, 9).unwrap();
        assert_eq!((m.lba, m.offset), (82, 96));
    }
}
