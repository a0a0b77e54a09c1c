//! NVMe PRP (Physical Region Page) walking: PRP1/PRP2 and PRP lists to host
//! iovecs (NVMe base specification 1.4, section 4.3).
//!
//! Mapping of the errors to NVMe status codes (the caller's job):
//! [`PrpError::OffsetInvalid`] -> PRP Offset Invalid (0x13);
//! [`PrpError::Translation`] -> Data Transfer Error (0x04), as QEMU does for
//! addresses outside guest RAM; [`PrpError::TooLarge`] -> Invalid Field in
//! Command (0x02).

use std::fmt;

use zerocopy::little_endian::U64;
use zerocopy::IntoBytes;

use crate::{Access, AtsError, Snapshot};

/// Parameters of the controller that bound a PRP walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrpLimits {
    /// Host memory page size from CC.MPS (`4096 << MPS`): a power of two >= 4096.
    pub page_size: u64,
    /// Maximum data transfer size in bytes (from MDTS). A walk costs one step
    /// per page, so keep this finite (use `u64::MAX` only for trusted input).
    pub max_transfer: u64,
}

/// Which PRP field had a bad offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrpField {
    /// PRP1 is not dword aligned.
    Prp1,
    /// PRP2 is the second data page and has a non-zero page offset.
    Prp2Page,
    /// PRP2 is a PRP list pointer that is not qword aligned.
    Prp2List,
    /// A data entry in a PRP list has a non-zero page offset.
    ListEntry,
    /// The pointer to the next PRP list page has a non-zero page offset.
    NextList,
}

impl fmt::Display for PrpField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PrpField::Prp1 => "PRP1 not dword aligned",
            PrpField::Prp2Page => "PRP2 data page with an offset",
            PrpField::Prp2List => "PRP list pointer not qword aligned",
            PrpField::ListEntry => "PRP list entry with an offset",
            PrpField::NextList => "next PRP list pointer with an offset",
        })
    }
}

/// Why a PRP walk failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrpError {
    /// An entry has an offset where the spec forbids one.
    #[error("invalid PRP offset: {field} ({entry:#x})")]
    OffsetInvalid {
        /// Which field.
        field: PrpField,
        /// The entry's value.
        entry: u64,
    },
    /// A data page or PRP list is outside guest RAM or lacks the needed permission.
    #[error("PRP address {gpa:#x} cannot be accessed")]
    Translation {
        /// The guest-physical address that failed.
        gpa: u64,
        /// Why.
        #[source]
        source: AtsError,
    },
    /// The transfer is larger than the controller's maximum.
    #[error("transfer of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Requested length.
        len: u64,
        /// Maximum transfer size.
        max: u64,
    },
    /// A zero-length transfer.
    #[error("zero-length PRP transfer")]
    ZeroLength,
    /// [`PrpLimits::page_size`] is not a power of two >= 4096 (a caller bug).
    #[error("invalid memory page size {page_size}")]
    InvalidPageSize {
        /// The page size given.
        page_size: u64,
    },
}

/// PRP list entries read from guest memory per volatile copy.
const LIST_BATCH: usize = 64;

/// Turn PRP1/PRP2 (and PRP lists, chained) describing `len` bytes into host
/// iovecs appended to `out` (cleared first; cleared again on error).
///
/// - PRP1 may carry a dword-aligned offset. If the data fits in the rest of
///   its page, PRP2 is unused.
/// - If it fits in one more page, PRP2 is that page's address (offset 0).
/// - Otherwise PRP2 points to a PRP list (qword aligned, may have an offset);
///   when more entries are needed than fit in the rest of a list page, its
///   last entry points to the next list page (offset 0).
///
/// Data pages are translated for `access`; list pages are read (volatile
/// copies) with [`Access::Read`]. The walk reads exactly as many entries as
/// `len` needs, so a cyclic list cannot loop. Pieces contiguous in host
/// memory are merged into one iovec. The iovecs are valid while `snap` is
/// alive.
pub fn map_prps(
    snap: &Snapshot,
    prp1: u64,
    prp2: u64,
    len: u64,
    limits: &PrpLimits,
    access: Access,
    out: &mut Vec<libc::iovec>,
) -> Result<(), PrpError> {
    out.clear();
    let r = walk(snap, prp1, prp2, len, limits, access, out);
    if r.is_err() {
        out.clear();
    }
    r
}

fn walk(
    snap: &Snapshot,
    prp1: u64,
    prp2: u64,
    len: u64,
    limits: &PrpLimits,
    access: Access,
    out: &mut Vec<libc::iovec>,
) -> Result<(), PrpError> {
    let ps = limits.page_size;
    if !ps.is_power_of_two() || ps < 4096 {
        return Err(PrpError::InvalidPageSize { page_size: ps });
    }
    if len == 0 {
        return Err(PrpError::ZeroLength);
    }
    if len > limits.max_transfer {
        return Err(PrpError::TooLarge {
            len,
            max: limits.max_transfer,
        });
    }
    let mask = ps - 1;
    if prp1 & 3 != 0 {
        return Err(PrpError::OffsetInvalid {
            field: PrpField::Prp1,
            entry: prp1,
        });
    }
    let first = len.min(ps - (prp1 & mask));
    push(snap, prp1, first, access, out)?;
    let mut remaining = len - first;
    if remaining == 0 {
        return Ok(());
    }
    if remaining <= ps {
        if prp2 & mask != 0 {
            return Err(PrpError::OffsetInvalid {
                field: PrpField::Prp2Page,
                entry: prp2,
            });
        }
        return push(snap, prp2, remaining, access, out);
    }
    if prp2 & 7 != 0 {
        return Err(PrpError::OffsetInvalid {
            field: PrpField::Prp2List,
            entry: prp2,
        });
    }
    let mut entries_left = remaining.div_ceil(ps);
    let mut list = prp2;
    let mut batch = [U64::ZERO; LIST_BATCH];
    loop {
        // Entry slots from `list` to the end of its page (>= 1; only the
        // first list can start mid-page, so every later page makes progress).
        let slots = (ps - (list & mask)) / 8;
        let chained = entries_left > slots;
        let data_here = if chained { slots - 1 } else { entries_left };
        let mut idx = 0;
        while idx < data_here {
            // `idx < slots`, so this stays inside the list page: no overflow.
            let at = list + idx * 8;
            let n = (data_here - idx).min(LIST_BATCH as u64);
            // n <= LIST_BATCH, so it fits in usize.
            let entries = &mut batch[..usize::try_from(n).unwrap_or(LIST_BATCH)];
            read_list(snap, at, entries.as_mut_bytes())?;
            for e in entries.iter() {
                let entry = e.get();
                if entry & mask != 0 {
                    return Err(PrpError::OffsetInvalid {
                        field: PrpField::ListEntry,
                        entry,
                    });
                }
                let chunk = remaining.min(ps);
                push(snap, entry, chunk, access, out)?;
                remaining -= chunk;
            }
            idx += n;
        }
        entries_left -= data_here;
        if !chained {
            debug_assert_eq!(remaining, 0);
            return Ok(());
        }
        let mut next = U64::ZERO;
        read_list(snap, list + (slots - 1) * 8, next.as_mut_bytes())?;
        let next = next.get();
        if next & mask != 0 {
            return Err(PrpError::OffsetInvalid {
                field: PrpField::NextList,
                entry: next,
            });
        }
        list = next;
    }
}

/// Volatile copy of PRP list entries at `gpa`.
fn read_list(snap: &Snapshot, gpa: u64, buf: &mut [u8]) -> Result<(), PrpError> {
    snap.read_bytes(gpa, buf)
        .map_err(|source| PrpError::Translation { gpa, source })
}

/// Translate data `[gpa, gpa+len)` (possibly over several regions contiguous
/// in guest-physical space) and append it to `out`, merging with the last
/// iovec when contiguous in host memory.
fn push(
    snap: &Snapshot,
    gpa: u64,
    len: u64,
    access: Access,
    out: &mut Vec<libc::iovec>,
) -> Result<(), PrpError> {
    let mut done = 0;
    while done < len {
        let at = gpa.checked_add(done).ok_or(PrpError::Translation {
            gpa,
            source: AtsError::OutOfRange { gpa, len },
        })?;
        let (ptr, n) = snap
            .translate_prefix(at, len - done, access)
            .map_err(|source| PrpError::Translation { gpa: at, source })?;
        // n <= region size, which fits in usize (checked at map time).
        let n_usize = usize::try_from(n).map_err(|_| PrpError::Translation {
            gpa: at,
            source: AtsError::TooBig { size: n },
        })?;
        match out.last_mut() {
            Some(last) if last.iov_base.cast::<u8>().wrapping_add(last.iov_len) == ptr => {
                last.iov_len += n_usize;
            }
            _ => out.push(libc::iovec {
                iov_base: ptr.cast(),
                iov_len: n_usize,
            }),
        }
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use zerocopy::little_endian::U64;

    use super::{map_prps, PrpError, PrpField, PrpLimits};
    use crate::tests::{host, map_ram};
    use crate::{Access, AtsError, Domain, Prot, Snapshot};

    /// Guest RAM: 8 MiB at 16 MiB.
    const B: u64 = 0x100_0000;
    const RAM: u64 = 8 << 20;
    const P: u64 = 0x1000;

    fn setup() -> (Domain, Arc<Snapshot>) {
        let d = Domain::new();
        map_ram(&d, B, RAM, Prot::READ_WRITE);
        let s = d.snapshot();
        (d, s)
    }

    fn lim(page_size: u64) -> PrpLimits {
        PrpLimits {
            page_size,
            max_transfer: 16 << 20,
        }
    }

    fn write_list(s: &Snapshot, gpa: u64, entries: &[u64]) {
        for (i, e) in entries.iter().enumerate() {
            s.write_obj(gpa + 8 * i as u64, &U64::new(*e)).unwrap();
        }
    }

    /// Walk and return the iovecs as (address, length).
    fn run(
        s: &Snapshot,
        prp1: u64,
        prp2: u64,
        len: u64,
        limits: &PrpLimits,
    ) -> Result<Vec<(usize, usize)>, PrpError> {
        let mut out = vec![libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 99,
        }];
        let r = map_prps(s, prp1, prp2, len, limits, Access::Write, &mut out);
        if r.is_err() {
            assert!(out.is_empty(), "iovecs left behind on error");
        }
        r.map(|()| out.iter().map(|v| (v.iov_base.addr(), v.iov_len)).collect())
    }

    /// Expected iovecs of guest-physical pieces (each inside one region).
    fn pieces(s: &Snapshot, p: &[(u64, u64)]) -> Vec<(usize, usize)> {
        p.iter()
            .map(|&(gpa, len)| (host(s, gpa), usize::try_from(len).unwrap()))
            .collect()
    }

    fn offset_err(r: Result<Vec<(usize, usize)>, PrpError>) -> (PrpField, u64) {
        match r {
            Err(PrpError::OffsetInvalid { field, entry }) => (field, entry),
            other => panic!("expected OffsetInvalid, got {other:?}"),
        }
    }

    fn translation_err(r: Result<Vec<(usize, usize)>, PrpError>) -> (u64, AtsError) {
        match r {
            Err(PrpError::Translation { gpa, source }) => (gpa, source),
            other => panic!("expected Translation, got {other:?}"),
        }
    }

    #[test]
    fn single_page_with_offset() {
        let (_d, s) = setup();
        let l = lim(P);
        // PRP2 is garbage and must be ignored.
        let junk = 0xdead_beef_0007;
        assert_eq!(
            run(&s, B + 0x104, junk, 0x200, &l).unwrap(),
            pieces(&s, &[(B + 0x104, 0x200)])
        );
        // Up to the exact end of PRP1's page.
        assert_eq!(
            run(&s, B + 0x100, junk, 0xf00, &l).unwrap(),
            pieces(&s, &[(B + 0x100, 0xf00)])
        );
        assert_eq!(run(&s, B, junk, P, &l).unwrap(), pieces(&s, &[(B, P)]));
        // PRP1 not dword aligned.
        assert_eq!(
            offset_err(run(&s, B + 0x102, 0, 8, &l)),
            (PrpField::Prp1, B + 0x102)
        );
        // PRP1 outside RAM, or running past its end.
        assert_eq!(translation_err(run(&s, 0x1000, 0, 8, &l)).0, 0x1000);
        assert_eq!(translation_err(run(&s, B + RAM, 0, 8, &l)).0, B + RAM);
    }

    #[test]
    fn exactly_two_pages() {
        let (_d, s) = setup();
        let l = lim(P);
        assert_eq!(
            run(&s, B + 0x800, B + 0x5000, 0x1000, &l).unwrap(),
            pieces(&s, &[(B + 0x800, 0x800), (B + 0x5000, 0x800)])
        );
        assert_eq!(
            run(&s, B, B + 0x5000, 0x2000, &l).unwrap(),
            pieces(&s, &[(B, P), (B + 0x5000, P)])
        );
        // Contiguous pages merge into one iovec.
        assert_eq!(
            run(&s, B + 0x800, B + 0x1000, 0x1000, &l).unwrap(),
            pieces(&s, &[(B + 0x800, 0x1000)])
        );
        // PRP2 must be a page address here.
        assert_eq!(
            offset_err(run(&s, B, B + 0x5008, 0x2000, &l)),
            (PrpField::Prp2Page, B + 0x5008)
        );
        assert_eq!(
            offset_err(run(&s, B + 4, B + 0x5004, 0x1000, &l)),
            (PrpField::Prp2Page, B + 0x5004)
        );
        // PRP2 outside RAM.
        assert_eq!(translation_err(run(&s, B, 0x5000, 0x2000, &l)).0, 0x5000);
    }

    #[test]
    fn prp_list() {
        let (_d, s) = setup();
        let l = lim(P);
        let list = B + 0x10_0000;
        let pages = [B + 0x9000, B + 0x3000, B + 0x7000, B + 0x2_0000];
        let len = 0xe00 + 3 * P + 0x123;
        let want = pieces(
            &s,
            &[
                (B + 0x200, 0xe00),
                (pages[0], P),
                (pages[1], P),
                (pages[2], P),
                (pages[3], 0x123),
            ],
        );
        // One garbage entry after the needed ones: it must not be read.
        let mut entries = pages.to_vec();
        entries.push(0xbad0_0001);
        write_list(&s, list, &entries);
        assert_eq!(run(&s, B + 0x200, list, len, &l).unwrap(), want);

        // A list pointer with a (qword aligned) offset.
        write_list(&s, list + 0x18, &pages);
        assert_eq!(run(&s, B + 0x200, list + 0x18, len, &l).unwrap(), want);
        assert_eq!(
            offset_err(run(&s, B + 0x200, list + 4, len, &l)),
            (PrpField::Prp2List, list + 4)
        );

        // Consecutive pages merge: 1 + 3 pages -> one iovec.
        write_list(&s, list, &[B + 0x1000, B + 0x2000, B + 0x3000]);
        assert_eq!(
            run(&s, B, list, 4 * P, &l).unwrap(),
            pieces(&s, &[(B, 4 * P)])
        );

        // An entry with an offset.
        write_list(&s, list, &[B + 0x1000, B + 0x2010, B + 0x3000]);
        assert_eq!(
            offset_err(run(&s, B, list, 4 * P, &l)),
            (PrpField::ListEntry, B + 0x2010)
        );
        // An entry outside RAM (and one at the first page past its end).
        for bad in [0x2000, B + RAM, !0xfff] {
            write_list(&s, list, &[B + 0x1000, bad, B + 0x3000]);
            assert_eq!(translation_err(run(&s, B, list, 4 * P, &l)).0, bad);
        }
        // The list itself outside RAM, or running out of it.
        assert_eq!(translation_err(run(&s, B, 0x8000, 4 * P, &l)).0, 0x8000);
    }

    #[test]
    fn chained_lists() {
        let (_d, s) = setup();
        let l = lim(P);
        // First list starts 0x10 before the end of its page: 2 slots, the
        // second of which points to the next list page.
        let l1 = B + 0x10_0000;
        let l2 = B + 0x20_0000;
        let d = [B + 0x5000, B + 0x9000, B + 0x7000, B + 0xb000];
        write_list(&s, l1 + 0xff0, &[d[0], l2]);
        write_list(&s, l2, &d[1..]);
        let want = pieces(&s, &[(B, P), (d[0], P), (d[1], P), (d[2], P), (d[3], 8)]);
        assert_eq!(run(&s, B, l1 + 0xff0, 4 * P + 8, &l).unwrap(), want);
        // Exactly as many entries as slots: the last slot is data, not a pointer.
        write_list(&s, l1 + 0xff0, &[d[0], d[1]]);
        assert_eq!(
            run(&s, B, l1 + 0xff0, 3 * P, &l).unwrap(),
            pieces(&s, &[(B, P), (d[0], P), (d[1], P)])
        );
        // Next-list pointer with an offset, or outside RAM.
        write_list(&s, l1 + 0xff0, &[d[0], l2 + 8]);
        assert_eq!(
            offset_err(run(&s, B, l1 + 0xff0, 4 * P, &l)),
            (PrpField::NextList, l2 + 8)
        );
        write_list(&s, l1 + 0xff0, &[d[0], 0x4000]);
        assert_eq!(translation_err(run(&s, B, l1 + 0xff0, 4 * P, &l)).0, 0x4000);

        // Full list pages: 600 entries = 511 + chain, then 89.
        let data = |i: u64| B + 0x30_0000 + 2 * i * P; // never contiguous
        let full: Vec<u64> = (0..511).map(data).chain([l2]).collect();
        write_list(&s, l1, &full);
        let rest: Vec<u64> = (511..600).map(data).collect();
        write_list(&s, l2, &rest);
        let len = P + 600 * P;
        let got = run(&s, B, l1, len, &l).unwrap();
        let mut want = vec![(B, P)];
        want.extend((0..600).map(|i| (data(i), P)));
        assert_eq!(got, pieces(&s, &want));
    }

    #[test]
    fn cyclic_list_terminates() {
        let (_d, s) = setup();
        let l = lim(P);
        let list = B + 0x10_0000;
        let data = B + 0x5000;
        // 511 data entries, the last slot points back to the same page; PRP2
        // points at that last slot, so the walk starts by chaining to itself.
        let mut entries = vec![data; 511];
        entries.push(list);
        write_list(&s, list, &entries);
        let n = 1500;
        let got = run(&s, B, list + 0xff8, P + n * P, &l).unwrap();
        assert_eq!(got.len(), 1 + 1500);
        assert_eq!(got.iter().map(|v| v.1 as u64).sum::<u64>(), P + n * P);
        assert!(got[1..]
            .iter()
            .all(|&(a, n)| a == host(&s, data) && n == 0x1000));
    }

    #[test]
    fn length_limits() {
        let (_d, s) = setup();
        let l = PrpLimits {
            page_size: P,
            max_transfer: 128 * 1024,
        };
        assert!(matches!(
            run(&s, B, B + P, 128 * 1024 + 1, &l),
            Err(PrpError::TooLarge {
                len: 131_073,
                max: 131_072
            })
        ));
        assert!(matches!(run(&s, B, 0, 0, &l), Err(PrpError::ZeroLength)));
        for page_size in [0, 512, 0x3000] {
            let bad = PrpLimits {
                page_size,
                max_transfer: 1 << 20,
            };
            assert!(matches!(
                run(&s, B, 0, 8, &bad),
                Err(PrpError::InvalidPageSize { .. })
            ));
        }
    }

    #[test]
    fn large_memory_page_size() {
        let (_d, s) = setup();
        let ps = 0x1_0000;
        let l = lim(ps);
        assert_eq!(
            run(&s, B + 0x1_0100, B + 0x5_0000, 0x1_0000, &l).unwrap(),
            pieces(&s, &[(B + 0x1_0100, 0xff00), (B + 0x5_0000, 0x100)])
        );
        // 4 KiB aligned is not enough with 64 KiB pages.
        assert_eq!(
            offset_err(run(&s, B, B + 0x5_1000, 0x2_0000, &l)),
            (PrpField::Prp2Page, B + 0x5_1000)
        );
        let list = B + 0x10_0000;
        write_list(&s, list, &[B + 0x3_0000, B + 0x4_1000]);
        assert_eq!(
            offset_err(run(&s, B, list, 0x3_0000, &l)),
            (PrpField::ListEntry, B + 0x4_1000)
        );
        write_list(&s, list, &[B + 0x3_0000, B + 0x4_0000]);
        assert_eq!(
            run(&s, B, list, 0x3_0000, &l).unwrap(),
            pieces(&s, &[(B, ps), (B + 0x3_0000, 2 * ps)])
        );
    }

    #[test]
    fn page_across_contiguous_regions() {
        // One 64 KiB memory page made of two maps (separate memfds) that are
        // contiguous in guest-physical space.
        let d = Domain::new();
        map_ram(&d, 0x10_0000, 0x8000, Prot::READ_WRITE);
        map_ram(&d, 0x10_8000, 0x8000, Prot::READ_WRITE);
        let s = d.snapshot();
        let got = run(&s, 0x10_0000, 0, 0x1_0000, &lim(0x1_0000)).unwrap();
        let (a, b) = (host(&s, 0x10_0000), host(&s, 0x10_8000));
        if a + 0x8000 == b {
            assert_eq!(got, vec![(a, 0x1_0000)]);
        } else {
            assert_eq!(got, vec![(a, 0x8000), (b, 0x8000)]);
        }
    }

    #[test]
    fn list_running_out_of_ram() {
        // With 64 KiB pages a list page can be longer than the RAM region.
        let d = Domain::new();
        map_ram(&d, 0x10_0000, 0x9000, Prot::READ_WRITE);
        map_ram(&d, 0x20_0000, 0x1_0000, Prot::READ_WRITE);
        let s = d.snapshot();
        let list = 0x10_8ff8;
        write_list(&s, list, &[0x20_0000]);
        let (gpa, source) = translation_err(run(&s, 0x20_0000, list, 0x4_0000, &lim(0x1_0000)));
        assert_eq!(gpa, list);
        assert!(
            matches!(source, AtsError::OutOfRange { gpa: 0x10_9000, .. }),
            "{source:?}"
        );
    }

    /// Deterministic xorshift, for the randomised test below.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn random_prps_stay_inside_guest_memory() {
        // Two RAM regions with a gap, a read-only one and an fd-less one;
        // random PRPs, lists and lengths biased towards their edges. Every
        // success must describe exactly `len` bytes inside regions that allow
        // the access; nothing may panic.
        let d = Domain::new();
        map_ram(&d, 0x10_0000, 0x4_0000, Prot::READ_WRITE);
        map_ram(&d, 0x20_0000, 0x2_0000, Prot::READ_WRITE);
        map_ram(&d, 0x22_0000, 0x1_0000, Prot::READ);
        d.map(0x30_0000, 0x1_0000, None, 0, Prot::READ_WRITE)
            .unwrap();
        let s = d.snapshot();
        let allowed: Vec<(usize, usize, Prot)> = s
            .regions()
            .filter(|r| r.translatable)
            .map(|r| {
                let base = host(&s, r.gpa);
                (base, base + usize::try_from(r.size).unwrap(), r.prot)
            })
            .collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let addr = |rng: &mut Rng| -> u64 {
            let bases: [u64; 7] = [
                0x10_0000, 0x14_0000, 0x20_0000, 0x22_0000, 0x23_0000, 0x30_0000, 0,
            ];
            let b = bases[usize::try_from(rng.below(7)).unwrap()];
            let off = match rng.below(4) {
                0 => rng.below(0x10) * 0x1000,
                1 => rng.below(0x4_0000) & !7,
                2 => rng.below(0x100),
                _ => 0x1000 * rng.below(0x40),
            };
            b.wrapping_add(off)
                .wrapping_sub(if rng.below(4) == 0 { 0x1000 } else { 0 })
        };
        let (mut ok, mut errs) = (0, 0);
        let mut out = Vec::new();
        for _ in 0..4000 {
            // Fill a few list slots with random entries (some chain pointers).
            for _ in 0..8 {
                let at = addr(&mut rng) & !7;
                let _ = s.write_obj(at, &U64::new(addr(&mut rng)));
            }
            let ps = [0x1000, 0x2000, 0x1_0000][usize::try_from(rng.below(3)).unwrap()];
            let limits = PrpLimits {
                page_size: ps,
                max_transfer: 0x4_0000,
            };
            let len = match rng.below(3) {
                0 => rng.below(0x2000),
                1 => rng.below(0x4_1000),
                _ => ps * rng.below(8),
            };
            let access = if rng.below(2) == 0 {
                Access::Read
            } else {
                Access::Write
            };
            let (p1, p2) = (addr(&mut rng), addr(&mut rng));
            match map_prps(&s, p1, p2, len, &limits, access, &mut out) {
                Ok(()) => {
                    ok += 1;
                    let total: usize = out.iter().map(|v| v.iov_len).sum();
                    assert_eq!(total as u64, len);
                    for v in &out {
                        let (a, e) = (v.iov_base.addr(), v.iov_base.addr() + v.iov_len);
                        assert!(v.iov_len > 0);
                        assert!(
                            allowed
                                .iter()
                                .any(|&(lo, hi, prot)| lo <= a && e <= hi && prot.allows(access)),
                            "iovec {a:#x}..{e:#x} outside allowed memory"
                        );
                    }
                }
                Err(_) => {
                    errs += 1;
                    assert!(out.is_empty());
                }
            }
        }
        // The generator must exercise both outcomes.
        assert!(ok > 200 && errs > 200, "ok {ok} errs {errs}");
    }

    #[test]
    fn permissions() {
        let d = Domain::new();
        map_ram(&d, 0x10_0000, 0x1_0000, Prot::READ); // data (read-only)
        map_ram(&d, 0x20_0000, 0x1_0000, Prot::WRITE); // data (write-only)
        map_ram(&d, 0x30_0000, 0x1_0000, Prot::READ_WRITE); // lists
        d.map(0x40_0000, 0x1_0000, None, 0, Prot::READ_WRITE)
            .unwrap();
        let s = d.snapshot();
        let l = lim(P);
        let mut out = Vec::new();
        let mut walk =
            |prp1, prp2, len, access| map_prps(&s, prp1, prp2, len, &l, access, &mut out);

        // Device writes (NVMe Read) into read-only memory: refused.
        walk(0x10_0000, 0, 8, Access::Read).unwrap();
        assert!(matches!(
            walk(0x10_0000, 0, 8, Access::Write),
            Err(PrpError::Translation {
                gpa: 0x10_0000,
                source: AtsError::Permission { .. }
            })
        ));
        walk(0x20_0000, 0, 8, Access::Write).unwrap();
        assert!(walk(0x20_0000, 0, 8, Access::Read).is_err());
        // fd-less memory is never a DMA target.
        assert!(matches!(
            walk(0x40_0000, 0, 8, Access::Read),
            Err(PrpError::Translation {
                source: AtsError::NotTranslatable { .. },
                ..
            })
        ));
        // A list in write-only memory cannot be read, even for a device write.
        write_list(&s, 0x30_0000, &[0x20_1000, 0x20_2000]);
        walk(0x20_0000, 0x30_0000, 3 * P, Access::Write).unwrap();
        s.write_obj(0x20_8000, &U64::new(0x20_1000)).unwrap();
        s.write_obj(0x20_8008, &U64::new(0x20_2000)).unwrap();
        assert!(matches!(
            walk(0x20_0000, 0x20_8000, 3 * P, Access::Write),
            Err(PrpError::Translation {
                gpa: 0x20_8000,
                source: AtsError::Permission {
                    access: Access::Read,
                    ..
                }
            })
        ));
    }
}
