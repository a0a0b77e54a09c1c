//! The flash backend through the `Backend` API: data integrity under GC,
//! recovery after a restart and after a crash, deallocation, refusals.

// Test sizes are small: LBAs and page counts fit any integer type.
#![allow(clippy::cast_possible_truncation)]

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;
use crate::{BackendSpec, IoError, IoKind, IoRequest};

const WAIT: Duration = Duration::from_secs(30);
const PAGE: usize = 4096;
/// 4 dies x 24 blocks x 16 pages: 1536 pages, 1228 logical at op 0.25.
const GEO: &str = "channels=2&dies=2&blocks=24&pages=16&op=0.25";

fn spec(path: &Path, extra: &str) -> FlashSpec {
    let s: BackendSpec = format!("flash:{}?{extra}", path.display()).parse().unwrap();
    match s {
        BackendSpec::Flash(f) => f,
        other => panic!("not a flash spec: {other:?}"),
    }
}

fn open(path: &Path, extra: &str) -> FlashBackend {
    let b = FlashBackend::open(&spec(path, extra)).unwrap();
    b.claim().unwrap();
    b
}

/// xorshift64*: reproducible pseudo-random numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Contents of `lba` at `version` (0: never written, zeroes).
fn page_of(lba: u64, version: u64) -> Vec<u8> {
    if version == 0 {
        return vec![0; PAGE];
    }
    let mut r =
        Rng(lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version.wrapping_mul(0xff51_afd7) | 1);
    (0..PAGE / 8).flat_map(|_| r.next().to_le_bytes()).collect()
}

fn iov(buf: &mut [u8]) -> libc::iovec {
    libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }
}

/// Submit each request, then wait for all their completions; results in
/// tag order.
fn run_all(q: &mut dyn BackendQueue, reqs: &[IoRequest<'_>]) -> Vec<Result<(), IoError>> {
    for r in reqs {
        // SAFETY: every buffer outlives this call, which waits for all
        // completions.
        unsafe { q.submit(r) }.unwrap();
    }
    q.kick().unwrap();
    let mut out = Vec::new();
    q.drain(&mut out, WAIT);
    assert_eq!(out.len(), reqs.len(), "all completed");
    assert_eq!(q.in_flight(), 0);
    out.sort_by_key(|c| c.tag);
    out.into_iter().map(|c| c.result).collect()
}

fn write(q: &mut dyn BackendQueue, lba: u64, data: &mut [u8], kind: IoKind) {
    let v = [iov(data)];
    let r = run_all(
        q,
        &[IoRequest {
            tag: 1,
            kind,
            offset: lba * PAGE as u64,
            len: data.len() as u64,
            iov: &v,
            owner: 0,
            journal: None,
        }],
    );
    r[0].unwrap();
}

fn op(q: &mut dyn BackendQueue, kind: IoKind, lba: u64, pages: u64) -> Result<(), IoError> {
    run_all(
        q,
        &[IoRequest {
            tag: 1,
            kind,
            offset: lba * PAGE as u64,
            len: pages * PAGE as u64,
            iov: &[],
            owner: 0,
            journal: None,
        }],
    )[0]
}

fn read(q: &mut dyn BackendQueue, lba: u64, pages: usize) -> Vec<u8> {
    let mut buf = vec![0xa5u8; pages * PAGE];
    // Two iovecs, split mid-page, to exercise the scatter.
    let (a, b) = buf.split_at_mut(PAGE / 2 + 512);
    let v = [iov(a), iov(b)];
    let r = run_all(
        q,
        &[IoRequest {
            tag: 1,
            kind: IoKind::Read,
            offset: lba * PAGE as u64,
            len: (pages * PAGE) as u64,
            iov: &v,
            owner: 0,
            journal: None,
        }],
    );
    r[0].unwrap();
    buf
}

/// Reads back every logical page and compares with the versions.
fn verify(b: &FlashBackend, versions: &[u64]) {
    let mut q = b.open_queue(64).unwrap();
    for (lba, &v) in versions.iter().enumerate() {
        let got = read(&mut *q, lba as u64, 1);
        assert!(got == page_of(lba as u64, v), "lba {lba} version {v}");
    }
}

/// Random writes of 1..=4 pages, 16 at a time over disjoint ranges, and a
/// deallocate now and then, until `3 x capacity` pages were written.
fn random_overwrites(b: &FlashBackend, versions: &mut [u64], seed: u64) {
    let lbas = versions.len() as u64;
    let mut rng = Rng(seed);
    let mut q = b.open_queue(64).unwrap();
    let mut written = 0u64;
    let mut next_version = versions.iter().max().copied().unwrap_or(0) + 1;
    while written < 3 * lbas {
        let mut taken = vec![false; versions.len()];
        let mut bufs: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        let mut trims = Vec::new();
        for _ in 0..16 {
            let n = 1 + rng.below(4);
            let lba = rng.below(lbas - n);
            let range = lba as usize..(lba + n) as usize;
            if taken[range.clone()].iter().any(|&t| t) {
                continue;
            }
            taken[range.clone()].iter_mut().for_each(|t| *t = true);
            if rng.below(50) == 0 {
                trims.push((lba, n));
                versions[range].iter_mut().for_each(|v| *v = 0);
                continue;
            }
            let mut data = Vec::with_capacity(n as usize * PAGE);
            for l in range {
                versions[l] = next_version;
                data.extend(page_of(l as u64, next_version));
            }
            next_version += 1;
            written += n;
            bufs.push((lba, n, data));
        }
        let iovs: Vec<[libc::iovec; 1]> = bufs.iter_mut().map(|(_, _, d)| [iov(d)]).collect();
        let mut reqs: Vec<IoRequest<'_>> = bufs
            .iter()
            .zip(&iovs)
            .enumerate()
            .map(|(i, ((lba, n, _), v))| IoRequest {
                tag: i as u64,
                kind: if i % 7 == 0 {
                    IoKind::WriteFua
                } else {
                    IoKind::Write
                },
                offset: lba * PAGE as u64,
                len: n * PAGE as u64,
                iov: v,
                owner: 0,
                journal: None,
            })
            .collect();
        for (j, &(lba, n)) in trims.iter().enumerate() {
            reqs.push(IoRequest {
                tag: 1000 + j as u64,
                kind: if j % 2 == 0 {
                    IoKind::Deallocate
                } else {
                    IoKind::WriteZeroes
                },
                offset: lba * PAGE as u64,
                len: n * PAGE as u64,
                iov: &[],
                owner: 0,
                journal: None,
            });
        }
        for r in run_all(&mut *q, &reqs) {
            r.unwrap();
        }
    }
}

#[test]
fn never_written_pages_read_as_zeroes() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir.path().join("f.nand"), &format!("{GEO}&timing=0"));
    assert_eq!(b.geometry().block_size, 4096);
    assert_eq!(b.geometry().num_blocks, 1228);
    let mut q = b.open_queue(8).unwrap();
    assert_eq!(read(&mut *q, 0, 4), vec![0; 4 * PAGE]);
    assert_eq!(read(&mut *q, 1224, 4), vec![0; 4 * PAGE]);
    let mut d = page_of(5, 1);
    write(&mut *q, 5, &mut d, IoKind::Write);
    let got = read(&mut *q, 4, 3);
    assert_eq!(&got[..PAGE], &[0; PAGE][..]);
    assert!(got[PAGE..2 * PAGE] == page_of(5, 1)[..]);
    assert_eq!(&got[2 * PAGE..], &[0; PAGE][..]);
    assert_eq!(
        b.stats().unwrap().host_pages_read,
        1,
        "unmapped reads skip the media"
    );
}

/// 3x the capacity in random overwrites (GC runs), every page verified;
/// then again after a clean reopen (recovery from OOB with GC's copies and
/// trim records on the media).
#[test]
fn random_overwrites_with_gc_verify_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.nand");
    let b = open(&path, &format!("{GEO}&timing=0"));
    let mut versions = vec![0u64; b.geometry().num_blocks as usize];
    random_overwrites(&b, &mut versions, 0x1234_5678);
    verify(&b, &versions);
    let st = b.stats().unwrap();
    assert!(st.gc_victims > 0 && st.gc_pages_moved > 0, "{st:?}");
    assert!(st.erases > 0, "{st:?}");
    assert!(st.write_amplification() > 1.0, "{st:?}");
    assert!(st.trim_records > 0, "{st:?}");
    assert_eq!(
        st.media_pages_programmed,
        st.host_pages_written + st.gc_pages_moved + st.trim_records
    );
    assert!(b.describe().contains("GC victims"), "{}", b.describe());
    drop(b);

    let b = open(&path, "timing=0");
    assert_eq!(b.geometry().num_blocks, versions.len() as u64);
    verify(&b, &versions);
    let st = b.stats().unwrap();
    let live = versions.iter().filter(|&&v| v != 0).count() as u64;
    assert!(st.valid_pages >= live, "{st:?}, {live} live pages");
    assert_eq!(st.torn_pages_at_mount, 0);
    // And it keeps working: another round after recovery.
    random_overwrites(&b, &mut versions, 0x8765_4321);
    verify(&b, &versions);
    assert!(b.stats().unwrap().erase_count_max > 0);
}

#[test]
fn deallocate_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.nand");
    let b = open(&path, &format!("{GEO}&timing=0"));
    let mut q = b.open_queue(8).unwrap();
    let mut d: Vec<u8> = (10..20).flat_map(|l| page_of(l, 1)).collect();
    write(&mut *q, 10, &mut d, IoKind::Write);
    op(&mut *q, IoKind::Deallocate, 12, 3).unwrap();
    op(&mut *q, IoKind::WriteZeroes, 18, 1).unwrap();
    op(&mut *q, IoKind::Flush, 0, 0).unwrap();
    let expect = |q: &mut dyn BackendQueue| {
        for l in 10..20 {
            let v = if (12..15).contains(&l) || l == 18 {
                0
            } else {
                1
            };
            assert!(read(q, l, 1) == page_of(l, v), "lba {l}");
        }
    };
    expect(&mut *q);
    assert_eq!(b.stats().unwrap().trim_records, 2);
    drop(q);
    drop(b);
    let b = open(&path, "timing=0");
    let mut q = b.open_queue(8).unwrap();
    expect(&mut *q);
    // A deallocate of nothing mapped writes no record.
    op(&mut *q, IoKind::Deallocate, 100, 10).unwrap();
    assert_eq!(b.stats().unwrap().trim_records, 0);
}

/// Damage the media where `lba`'s newest copy is, as a crash in the
/// middle of its program would (see `crash_tears_the_last_write`).
fn tear(path: &Path, b: &FlashBackend, lba: u64, how: &str) {
    let ppa = {
        let c = b.claim.lock().unwrap();
        let ftl = c.as_ref().unwrap().shared.ftl.lock().unwrap();
        ftl.physical_page(lba).unwrap()
    };
    let g = b.nand_geometry();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    match how {
        // The data reached the file only in part (the OOB did).
        "data" => f.write_all_at(&[0x5a; 1000], g.data_offset(ppa) + 1500),
        // The OOB never reached the file.
        "oob" => f.write_all_at(&vec![0; g.oob_size as usize], g.oob_offset(ppa)),
        // The OOB reached the file in part.
        "half-oob" => f.write_all_at(&[0; 12], g.oob_offset(ppa) + 12),
        _ => unreachable!(),
    }
    .unwrap();
}

/// A crash while the last write was being programmed: its page is torn
/// (data or OOB partly or not at all in the file). After the restart the
/// LBA reads the previous (flushed) version, every other page is intact,
/// and the media takes new writes.
#[test]
fn crash_tears_the_last_write() {
    for how in ["data", "oob", "half-oob"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.nand");
        let b = open(&path, &format!("{GEO}&timing=0"));
        let mut q = b.open_queue(8).unwrap();
        let mut d: Vec<u8> = (0..40).flat_map(|l| page_of(l, 1)).collect();
        write(&mut *q, 0, &mut d, IoKind::Write);
        op(&mut *q, IoKind::Flush, 0, 0).unwrap();
        let mut d2 = page_of(7, 2);
        write(&mut *q, 7, &mut d2, IoKind::Write);
        assert!(read(&mut *q, 7, 1) == page_of(7, 2));
        tear(&path, &b, 7, how);
        drop(q);
        drop(b);

        let b = open(&path, "timing=0");
        let st = b.stats().unwrap();
        assert_eq!(
            st.torn_pages_at_mount,
            u64::from(how != "oob"),
            "{how}: {st:?}"
        );
        let mut q = b.open_queue(8).unwrap();
        for l in 0..40 {
            assert!(read(&mut *q, l, 1) == page_of(l, 1), "{how}: lba {l}");
        }
        let mut d3 = page_of(7, 3);
        write(&mut *q, 7, &mut d3, IoKind::WriteFua);
        assert!(read(&mut *q, 7, 1) == page_of(7, 3), "{how}");
        drop(q);
        drop(b);
        let b = open(&path, "timing=0");
        let mut q = b.open_queue(8).unwrap();
        assert!(read(&mut *q, 7, 1) == page_of(7, 3), "{how}");
    }
}

#[test]
fn mismatching_geometry_and_op_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.nand");
    drop(open(&path, GEO));
    let e = FlashBackend::open(&spec(&path, "blocks=32&pages=16"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("another geometry")
            && e.contains("blocks=32 (media: 24)")
            && !e.contains("(media: 16)"),
        "{e}"
    );
    let e = FlashBackend::open(&spec(&path, "op=0.2"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("formatted with 1228 logical pages; op=0.2 gives 1280"),
        "{e}"
    );
    // The same geometry, or none, opens.
    FlashBackend::open(&spec(&path, GEO)).unwrap();
    FlashBackend::open(&spec(&path, "")).unwrap();
    // Too little spare for the FTL.
    let e = FlashBackend::open(&spec(&dir.path().join("g.nand"), "blocks=8&op=0.05"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("needs at least 4 blocks per die"), "{e}");
}

/// Whatever is in the file, opening gives a result or an error, never a
/// panic; damage to the header or the block table is a clear error.
#[test]
fn corrupted_media_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.nand");
    {
        let b = open(&path, &format!("{GEO}&timing=0"));
        let mut q = b.open_queue(8).unwrap();
        let mut d: Vec<u8> = (0..64).flat_map(|l| page_of(l, 1)).collect();
        write(&mut *q, 0, &mut d, IoKind::Write);
        op(&mut *q, IoKind::Deallocate, 3, 2).unwrap();
    }
    let good = std::fs::read(&path).unwrap();
    let mut rng = Rng(99);
    for round in 0..200 {
        let mut bad = good.clone();
        // Header and table, or anywhere.
        let span = if round % 2 == 0 {
            8192
        } else {
            bad.len() as u64
        };
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(span) as usize;
            bad[at] = rng.next().to_le_bytes()[0];
        }
        std::fs::write(&path, &bad).unwrap();
        if let Ok(b) = FlashBackend::open(&spec(&path, "timing=0")) {
            if b.claim().is_ok() {
                let mut q = b.open_queue(8).unwrap();
                let _ = read(&mut *q, 0, 4);
            }
        }
    }
    // Pages with valid checksums that name LBAs past the namespace (the
    // header's logical size rewritten).
    std::fs::write(&path, &good).unwrap();
    let mut m = NandMedia::open(&path, NandGeometry::default(), None).unwrap();
    m.set_logical_pages(10).unwrap();
    drop(m);
    let b = FlashBackend::open(&spec(&path, "timing=0")).unwrap();
    let e = b.claim().err().unwrap().to_string();
    assert!(
        e.contains("flash:") && e.contains("a data page names an LBA past the namespace"),
        "{e}"
    );
}

/// The timing model holds completions back: a read completes no earlier
/// than read + transfer after its submission (a lower bound only; the
/// upper one depends on scheduling and is measured by the benchmark).
#[test]
fn completions_wait_for_their_modelled_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.nand");
    let b = open(
        &path,
        &format!("{GEO}&read=150000&xfer=50000&prog=0&erase=0"),
    );
    let mut q = b.open_queue(8).unwrap();
    let mut d = page_of(1, 1);
    write(&mut *q, 1, &mut d, IoKind::Write);
    let mut buf = vec![0u8; PAGE];
    let v = [iov(&mut buf)];
    let start = Instant::now();
    let req = IoRequest {
        tag: 9,
        kind: IoKind::Read,
        offset: PAGE as u64,
        len: PAGE as u64,
        iov: &v,
        owner: 0,
        journal: None,
    };
    // SAFETY: `buf` outlives the drain below.
    unsafe { q.submit(&req) }.unwrap();
    let mut out = Vec::new();
    assert_eq!(q.poll(&mut out), 0, "not before its time");
    q.drain(&mut out, WAIT);
    assert_eq!(out.len(), 1);
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "{:?}",
        start.elapsed()
    );
    assert!(buf == page_of(1, 1));
}

/// The FTL on a zoned device (the file emulation): 4 dies x 24 zones of 16
/// pages (128 KiB zones: a 4 KiB page and its 4 KiB OOB block per slot), the
/// same workload as on NAND, a reopen, and zone semantics underneath.
#[test]
fn ftl_on_a_zoned_device() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("z.zones");
    let b = open(&path, "media=zoned&zone_size=128K&zones=97&dies=4&op=0.25");
    assert_eq!(b.nand_geometry().blocks(), 96);
    assert_eq!(b.nand_geometry().pages_per_block, 16);
    let mut versions = vec![0u64; b.geometry().num_blocks as usize];
    random_overwrites(&b, &mut versions, 0x2468_ace0);
    verify(&b, &versions);
    let st = b.stats().unwrap();
    assert!(st.gc_victims > 0 && st.erases > 0, "{st:?}");
    drop(b);
    // Reopen with no geometry keys: the header's.
    let b = open(&path, "media=zoned");
    assert_eq!(b.geometry().num_blocks, versions.len() as u64);
    verify(&b, &versions);
    assert_eq!(b.stats().unwrap().torn_pages_at_mount, 0);
    random_overwrites(&b, &mut versions, 0x1357_9bdf);
    verify(&b, &versions);
    drop(b);
    // Zone semantics: the emulation refuses writes off a write pointer.
    let mut dev = zoned_media::FileZoneDevice::open(&path, None).unwrap();
    use zoned_media::ZoneDevice;
    let wp = dev.write_pointer(5).unwrap();
    assert!(dev
        .write_at(&[0u8; 4096], 5 * (128 << 10) + wp + 4096)
        .is_err());
    // Other dies than formatted: refused; NAND keys: refused.
    let e = FlashBackend::open(&spec(&path, "media=zoned&dies=2"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("formatted with 4 dies"), "{e}");
    let e = format!("flash:{}?media=zoned&blocks=3", path.display())
        .parse::<BackendSpec>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not apply to media=zoned"), "{e}");
}
