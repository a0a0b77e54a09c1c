//! Behaviour of both backends through the public API.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::file::FileQueue;
use crate::*;

const WAIT: Duration = Duration::from_secs(10);

/// A heap buffer with a chosen alignment; `at(skew)` gives a view starting
/// `skew` bytes in (to make deliberately unaligned buffers).
struct Buf {
    ptr: *mut u8,
    layout: Layout,
}

impl Buf {
    fn new(len: usize, align: usize) -> Buf {
        let layout = Layout::from_size_align(len, align).unwrap();
        // SAFETY: non-zero size (tests never ask for 0).
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Buf { ptr, layout }
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: ptr is a live allocation of layout.size() initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
    /// iovecs covering `[start, start + len)` of the buffer for each (start, len).
    fn iovs(&mut self, parts: &[(usize, usize)]) -> Vec<libc::iovec> {
        parts
            .iter()
            .map(|&(start, len)| {
                assert!(start + len <= self.layout.size());
                libc::iovec {
                    iov_base: self.ptr.wrapping_add(start).cast(),
                    iov_len: len,
                }
            })
            .collect()
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i % 251).unwrap() ^ seed.wrapping_mul(37))
        .collect()
}

/// Submit one request, kick, and wait for its completion.
fn run(q: &mut dyn BackendQueue, req: &IoRequest<'_>) -> Result<(), IoError> {
    // SAFETY: the buffers outlive this call, which waits for the completion.
    unsafe { q.submit(req) }.expect("submit");
    q.kick().expect("kick");
    let mut out = Vec::new();
    q.drain(&mut out, WAIT);
    assert_eq!(out.len(), 1, "exactly one completion");
    assert_eq!(out[0].tag, req.tag);
    assert_eq!(q.in_flight(), 0);
    out[0].result
}

fn rw(
    q: &mut dyn BackendQueue,
    kind: IoKind,
    offset: u64,
    iov: &[libc::iovec],
) -> Result<(), IoError> {
    let len = iov.iter().map(|v| v.iov_len as u64).sum();
    run(
        q,
        &IoRequest {
            tag: offset ^ 0x5a5a,
            kind,
            offset,
            len,
            iov,
            owner: 0,
            journal: None,
        },
    )
}

fn op(q: &mut dyn BackendQueue, kind: IoKind, offset: u64, len: u64) -> Result<(), IoError> {
    run(
        q,
        &IoRequest {
            tag: 99,
            kind,
            offset,
            len,
            iov: &[],
            owner: 0,
            journal: None,
        },
    )
}

/// Read `len` bytes at `offset` through the queue into a fresh buffer.
fn read_back(q: &mut dyn BackendQueue, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = Buf::new(len, 4096);
    let iov = buf.iovs(&[(0, len)]);
    rw(q, IoKind::Read, offset, &iov).expect("read");
    buf.bytes().to_vec()
}

fn temp_file_in(dir: &Path, size: usize) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new_in(dir).unwrap();
    f.write_all(&vec![0u8; size]).unwrap();
    f.flush().unwrap();
    f
}

fn temp_file(size: usize) -> tempfile::NamedTempFile {
    temp_file_in(&std::env::temp_dir(), size)
}

fn file_queue(backend: &FileBackend, depth: u32) -> FileQueue {
    FileQueue::new(std::sync::Arc::clone(backend.inner_for_tests()), depth).unwrap()
}

/// Scattered, odd-sized iovecs: write one pattern, read it back through a
/// different split, and check the bytes around it are untouched.
fn scattered_round_trip(q: &mut dyn BackendQueue, skew: usize) {
    let data = pattern(8192, 3);
    let mut src = Buf::new(16384, 4096);
    // Place the data in three pieces at odd spots of the source buffer.
    let parts = [(skew, 1000), (4096 + skew, 3000), (9000 + skew, 4192)];
    let mut pos = 0;
    for &(start, len) in &parts {
        src.bytes_mut()[start..start + len].copy_from_slice(&data[pos..pos + len]);
        pos += len;
    }
    let iov = src.iovs(&parts);
    rw(q, IoKind::Write, 4096, &iov).expect("write");

    let mut dst = Buf::new(16384, 4096);
    let read_parts = [(skew + 1, 512), (1000 + skew, 7000), (12000, 680)];
    let iov = dst.iovs(&read_parts);
    rw(q, IoKind::Read, 4096, &iov).expect("read");
    let mut got = Vec::new();
    for &(start, len) in &read_parts {
        got.extend_from_slice(&dst.bytes()[start..start + len]);
    }
    assert_eq!(got, data);
    assert!(
        read_back(q, 0, 4096).iter().all(|&b| b == 0),
        "bytes before the write changed"
    );
    assert!(
        read_back(q, 12288, 4096).iter().all(|&b| b == 0),
        "bytes after the write changed"
    );
}

#[test]
fn ram_round_trip_scattered() {
    let backend = open_backend(&"ram:1M".parse().unwrap()).unwrap();
    assert_eq!(
        backend.geometry(),
        Geometry {
            block_size: 512,
            num_blocks: 2048
        }
    );
    assert!(!backend.features().volatile_write_cache);
    assert_eq!(backend.describe(), "ram (1 MiB, 512 B blocks, volatile)");
    let mut q = backend.open_queue(8).unwrap();
    scattered_round_trip(q.as_mut(), 1);
    // Every byte of every transfer went through the CPU: 8 KiB written,
    // 8 KiB read back, two 4 KiB checks around it.
    assert_eq!(backend.copied_bytes(), 8192 + 8192 + 2 * 4096);
}

#[test]
fn ram_queues_share_the_data_across_threads() {
    let backend = open_backend(&"ram:4M".parse().unwrap()).unwrap();
    let writers: Vec<_> = (0..2u8)
        .map(|t| {
            let backend = std::sync::Arc::clone(&backend);
            std::thread::spawn(move || {
                let mut q = backend.open_queue(4).unwrap();
                for i in 0..64u64 {
                    let mut buf = Buf::new(4096, 4096);
                    buf.bytes_mut()
                        .copy_from_slice(&pattern(4096, t ^ u8::try_from(i).unwrap()));
                    let iov = buf.iovs(&[(0, 4096)]);
                    let offset = (u64::from(t) * 64 + i) * 4096;
                    rw(q.as_mut(), IoKind::Write, offset, &iov).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let mut q = backend.open_queue(1).unwrap();
    for t in 0..2u8 {
        for i in 0..64u64 {
            let offset = (u64::from(t) * 64 + i) * 4096;
            assert_eq!(
                read_back(q.as_mut(), offset, 4096),
                pattern(4096, t ^ u8::try_from(i).unwrap())
            );
        }
    }
}

#[test]
fn file_round_trip_unaligned_buffers_go_buffered() {
    let f = temp_file(1 << 20);
    let backend = FileBackend::open(f.path(), AUTO_BLOCK_SIZE).unwrap();
    assert_eq!(backend.geometry().block_size, 512);
    assert_eq!(backend.geometry().num_blocks, 2048);
    assert!(backend.features().volatile_write_cache);
    let mut q = file_queue(&backend, 8);
    eprintln!("{}", backend.describe());
    scattered_round_trip(&mut q, 1);
    // The scattered write and read are misaligned; the two checks of the
    // surrounding bytes use aligned buffers.
    assert_eq!(
        q.stats.buffered, 2,
        "misaligned buffers must not use O_DIRECT"
    );
    assert_eq!(q.stats.direct, if backend.direct_io() { 2 } else { 0 });
    // Buffered transfers are copies (through the page cache); direct ones,
    // on a file not in memory, are the device's.
    let copied = backend.copied_bytes();
    if backend.direct_io() && !backend.describe().contains("memory filesystem") {
        assert_eq!(copied, 2 * 8192, "{}", backend.describe());
    } else {
        assert_eq!(copied, 2 * 8192 + 2 * 4096, "{}", backend.describe());
    }
    // What the queue wrote is in the file.
    let on_disk = std::fs::read(f.path()).unwrap();
    assert_eq!(&on_disk[4096..4096 + 8192], &pattern(8192, 3)[..]);
}

#[test]
fn file_round_trip_aligned_buffers_go_direct() {
    let f = temp_file(1 << 20);
    let backend = FileBackend::open(f.path(), 4096).unwrap();
    let mut q = file_queue(&backend, 8);
    let data = pattern(16384, 5);
    let mut src = Buf::new(16384, 4096);
    src.bytes_mut().copy_from_slice(&data);
    let iov = src.iovs(&[(0, 4096), (8192, 8192), (4096, 4096)]);
    rw(&mut q, IoKind::Write, 65536, &iov).unwrap();
    let mut expect = data[..4096].to_vec();
    expect.extend_from_slice(&data[8192..]);
    expect.extend_from_slice(&data[4096..8192]);
    assert_eq!(read_back(&mut q, 65536, 16384), expect);
    assert_eq!(
        &std::fs::read(f.path()).unwrap()[65536..65536 + 16384],
        &expect[..]
    );
    if backend.direct_io() {
        assert!(
            backend.describe().contains("O_DIRECT"),
            "{}",
            backend.describe()
        );
        assert_eq!(q.stats.buffered, 0, "aligned buffers must use O_DIRECT");
        assert_eq!(q.stats.direct, 2);
    } else {
        eprintln!("test filesystem refuses O_DIRECT: {}", backend.describe());
        assert!(backend.describe().contains("buffered"));
    }
}

#[test]
fn a_request_with_more_iovecs_than_a_syscall_takes_is_done_in_steps() {
    // The largest NVMe transfer (4 MiB) starting mid-page, on pages that
    // are not adjacent: 1025 iovecs, one more than preadv/pwritev take.
    let n = MAX_IOVECS;
    assert!(n > UIO_MAXIOV);
    let f = temp_file(8 << 20);
    let backend = FileBackend::open(f.path(), 512).unwrap();
    let mut q = file_queue(&backend, 4);
    let mut buf = Buf::new(2 * 4096 * n, 4096);
    // Every other page, the first starting 512 bytes in and the last
    // ending 512 bytes early: 4 MiB in all.
    let parts: Vec<(usize, usize)> = (0..n)
        .map(|i| match i {
            0 => (512, 4096 - 512),
            _ if i == n - 1 => (2 * 4096 * i, 512),
            _ => (2 * 4096 * i, 4096),
        })
        .collect();
    let len: usize = parts.iter().map(|p| p.1).sum();
    assert_eq!(len, 4 << 20);
    let data = pattern(len, 9);
    let mut at = 0;
    for &(start, l) in &parts {
        buf.bytes_mut()[start..start + l].copy_from_slice(&data[at..at + l]);
        at += l;
    }
    let iov = buf.iovs(&parts);
    rw(&mut q, IoKind::Write, 1 << 20, &iov).unwrap();
    assert_eq!(read_back(&mut q, 1 << 20, len), data);
    // And read into the scattered pages again.
    let mut back = Buf::new(2 * 4096 * n, 4096);
    let iov = back.iovs(&parts);
    rw(&mut q, IoKind::Read, 1 << 20, &iov).unwrap();
    let mut got = Vec::with_capacity(len);
    for &(start, l) in &parts {
        got.extend_from_slice(&back.bytes()[start..start + l]);
    }
    assert!(got == data, "scattered read-back differs");
}

#[test]
fn fua_write_is_visible_through_another_fd() {
    let f = temp_file(1 << 20);
    let backend = FileBackend::open(f.path(), 512).unwrap();
    let mut q = file_queue(&backend, 4);
    let data = pattern(1536, 9);
    let mut src = Buf::new(4096, 4096);
    src.bytes_mut()[7..7 + 1536].copy_from_slice(&data);
    let iov = src.iovs(&[(7, 1536)]);
    rw(&mut q, IoKind::WriteFua, 512, &iov).unwrap();
    assert_eq!(q.stats.fua, 1);
    let other = std::fs::read(f.path()).unwrap();
    assert_eq!(&other[512..512 + 1536], &data[..]);
}

#[test]
fn durable_write_zeroes_are_synced_and_read_back_as_zeroes() {
    let f = temp_file(1 << 20);
    let backend = FileBackend::open(f.path(), 512).unwrap();
    let mut q = file_queue(&backend, 4);
    let mut src = Buf::new(8192, 4096);
    src.bytes_mut().fill(0xa5);
    let iov = src.iovs(&[(0, 8192)]);
    rw(&mut q, IoKind::Write, 4096, &iov).unwrap();
    op(&mut q, IoKind::WriteZeroes, 4096, 4096).unwrap();
    assert_eq!(q.stats.fua, 0, "plain Write Zeroes needs no sync");
    op(&mut q, IoKind::WriteZeroesFua, 8192, 4096).unwrap();
    assert_eq!(
        q.stats.fua, 1,
        "Write Zeroes with FUA is followed by an fdatasync"
    );
    assert_eq!(read_back(&mut q, 4096, 8192), vec![0; 8192]);
    let other = std::fs::read(f.path()).unwrap();
    assert!(other[4096..12288].iter().all(|&b| b == 0));
}

#[test]
fn flush_completes_on_every_backend() {
    let f = temp_file(1 << 20);
    let file = FileBackend::open(f.path(), 512).unwrap();
    let mut q = file_queue(&file, 4);
    let mut src = Buf::new(4096, 4096);
    let iov = src.iovs(&[(0, 4096)]);
    rw(&mut q, IoKind::Write, 0, &iov).unwrap();
    op(&mut q, IoKind::Flush, 0, 0).unwrap();
    file.flush().unwrap();

    let ram = open_backend(&"ram:64K".parse().unwrap()).unwrap();
    let mut q = ram.open_queue(1).unwrap();
    op(q.as_mut(), IoKind::Flush, 0, 0).unwrap();
    ram.flush().unwrap();
}

/// Fill 256 KiB with a pattern, zero a range with WriteZeroes and deallocate
/// another, then check every byte through the queue and
/// (for files) through another fd.
fn zero_and_deallocate(q: &mut dyn BackendQueue, bs: u64, path: Option<&Path>) {
    let total = 256 * 1024;
    let data = pattern(total, 11);
    let mut src = Buf::new(total, 4096);
    src.bytes_mut().copy_from_slice(&data);
    let iov = src.iovs(&[(0, total)]);
    rw(q, IoKind::Write, 0, &iov).unwrap();

    // Ranges with edges that are block- but not page-aligned (for bs < 4K).
    let (z0, zlen) = (32 * 1024 + bs, 64 * 1024 + 2 * bs);
    let (d0, dlen) = (160 * 1024 + 3 * bs, 40 * 1024 + bs);
    op(q, IoKind::WriteZeroes, z0, zlen).unwrap();
    op(q, IoKind::Deallocate, d0, dlen).unwrap();

    let mut expect = data;
    let z = usize::try_from(z0).unwrap()..usize::try_from(z0 + zlen).unwrap();
    let d = usize::try_from(d0).unwrap()..usize::try_from(d0 + dlen).unwrap();
    expect[z].fill(0);
    expect[d].fill(0);
    assert!(
        read_back(q, 0, total) == expect,
        "queue read after zeroing differs"
    );
    if let Some(path) = path {
        let on_disk = std::fs::read(path).unwrap();
        assert!(
            on_disk[..total] == expect,
            "file content after zeroing differs"
        );
    }
}

#[test]
fn write_zeroes_and_deallocate_on_ram() {
    let backend = open_backend(&"ram:1M".parse().unwrap()).unwrap();
    let mut q = backend.open_queue(4).unwrap();
    zero_and_deallocate(q.as_mut(), 512, None);
}

#[test]
fn write_zeroes_and_deallocate_on_file() {
    let f = temp_file(1 << 20);
    let backend = FileBackend::open(f.path(), 512).unwrap();
    assert!(backend.features().write_zeroes && backend.features().deallocate);
    let mut q = file_queue(&backend, 4);
    zero_and_deallocate(&mut q, 512, Some(f.path()));
}

#[test]
fn write_zeroes_and_deallocate_emulated_by_writes() {
    let f = temp_file(8 << 20);
    let backend = FileBackend::open(f.path(), 512).unwrap();
    let inner = backend.inner_for_tests();
    inner.punch_hole_unsupported.store(true, Ordering::Relaxed);
    inner.zero_range_unsupported.store(true, Ordering::Relaxed);
    let mut q = file_queue(&backend, 4);
    zero_and_deallocate(&mut q, 512, Some(f.path()));
    assert!(q.stats.buffered + q.stats.direct >= 4);

    // A range spanning several 1 MiB zero-buffer writes.
    let total = 8 << 20;
    std::fs::write(f.path(), vec![0xA5u8; total]).unwrap();
    op(&mut q, IoKind::WriteZeroes, 512, 3 * (1 << 20) + 1024).unwrap();
    let on_disk = std::fs::read(f.path()).unwrap();
    assert_eq!(on_disk[511], 0xA5);
    assert!(on_disk[512..512 + 3 * (1 << 20) + 1024]
        .iter()
        .all(|&b| b == 0));
    assert_eq!(on_disk[512 + 3 * (1 << 20) + 1024], 0xA5);
}

#[test]
fn write_zeroes_on_tmpfs_falls_back() {
    // tmpfs has no FALLOC_FL_ZERO_RANGE (and may refuse O_DIRECT).
    let Some(f) = shm_file(1 << 20) else { return };
    let backend = FileBackend::open(f.path(), 512).unwrap();
    let mut q = file_queue(&backend, 4);
    zero_and_deallocate(&mut q, 512, Some(f.path()));
    eprintln!(
        "{}: zero range unsupported {}, punch hole unsupported {}",
        backend.describe(),
        backend
            .inner_for_tests()
            .zero_range_unsupported
            .load(Ordering::Relaxed),
        backend
            .inner_for_tests()
            .punch_hole_unsupported
            .load(Ordering::Relaxed)
    );
}

/// A file on tmpfs, or None (with a note) where /dev/shm is missing.
fn shm_file(size: usize) -> Option<tempfile::NamedTempFile> {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm: skipped");
        return None;
    }
    Some(temp_file_in(shm, size))
}

#[test]
fn tmpfs_file_runs_inline_exactly_when_io_uring_would_punt() {
    use std::os::fd::AsFd;
    let Some(f) = shm_file(1 << 20) else { return };
    let backend = FileBackend::open(f.path(), 512).unwrap();
    assert!(crate::sys::on_memory_fs(f.as_file().as_fd()));
    let mut probe = vec![0u8; 512];
    let punts = crate::sys::nowait_unsupported(f.as_file().as_fd(), probe.as_mut_ptr(), 512);
    assert_eq!(backend.inner_for_tests().inline, punts);
    // A file on a disk filesystem is never inline.
    let disk = temp_file(4096);
    if !crate::sys::on_memory_fs(disk.as_file().as_fd()) {
        assert!(
            !FileBackend::open(disk.path(), 512)
                .unwrap()
                .inner_for_tests()
                .inline
        );
    }
    eprintln!("{}", backend.describe());

    let mut q = file_queue(&backend, 8);
    scattered_round_trip(&mut q, 0);
    scattered_round_trip(&mut q, 3);
    op(&mut q, IoKind::Flush, 0, 0).expect("flush");
    zero_and_deallocate(&mut q, 512, Some(f.path()));

    // Several requests in flight at once each complete once, with their tag.
    let mut bufs: Vec<Buf> = (0..6).map(|_| Buf::new(4096, 4096)).collect();
    for (i, b) in (1u8..).zip(bufs.iter_mut()) {
        b.bytes_mut().fill(i);
        let iov = b.iovs(&[(0, 4096)]);
        let req = IoRequest {
            tag: 99 + u64::from(i),
            kind: IoKind::WriteFua,
            offset: 65536 + 4096 * (u64::from(i) - 1),
            len: 4096,
            iov: &iov,
            owner: 0,
            journal: None,
        };
        // SAFETY: the buffers outlive the drain below.
        unsafe { q.submit(&req) }.unwrap();
    }
    q.kick().unwrap();
    let mut out = Vec::new();
    q.drain(&mut out, WAIT);
    let mut tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
    tags.sort_unstable();
    assert_eq!(tags, (100..106).collect::<Vec<_>>());
    assert!(out.iter().all(|c| c.result.is_ok()));
    for i in 0..6u8 {
        let got = read_back(&mut q, 65536 + 4096 * u64::from(i), 4096);
        assert!(got.iter().all(|&b| b == i + 1));
    }

    // The file shrinks under us: a read past its new end fails, never
    // succeeds with stale or missing bytes.
    f.as_file().set_len(8192).unwrap();
    let mut buf = Buf::new(4096, 4096);
    let iov = buf.iovs(&[(0, 4096)]);
    let err = rw(&mut q, IoKind::Read, 65536, &iov).unwrap_err();
    assert_eq!(err, IoError::from_errno(libc::EIO));
    // And bad buffers are reported with their errno.
    let iov = [libc::iovec {
        iov_base: 8usize as *mut libc::c_void,
        iov_len: 512,
    }];
    let err = rw(&mut q, IoKind::Read, 0, &iov).unwrap_err();
    assert_eq!(err, IoError::from_errno(libc::EFAULT));
}

#[test]
fn invalid_requests_are_refused_and_queue_nothing() {
    let f = temp_file(64 * 1024);
    let file = FileBackend::open(f.path(), 512).unwrap();
    let ram = RamBackend::new(64 * 1024, 512).unwrap();
    let mut fq = file_queue(&file, 4);
    let mut rq = ram.open_queue(4).unwrap();
    let mut buf = Buf::new(8192, 4096);
    let iov = buf.iovs(&[(0, 4096)]);
    let iov2 = buf.iovs(&[(0, 4096), (4096, 4096)]);
    let cases: Vec<(IoRequest<'_>, &str)> = vec![
        (
            IoRequest {
                tag: 1,
                kind: IoKind::Read,
                offset: 64 * 1024,
                len: 4096,
                iov: &iov,
                owner: 0,
                journal: None,
            },
            "past the end",
        ),
        (
            IoRequest {
                tag: 1,
                kind: IoKind::Write,
                offset: 60 * 1024 + 512,
                len: 4096,
                iov: &iov,
                owner: 0,
                journal: None,
            },
            "past the end",
        ),
        (
            IoRequest {
                tag: 1,
                kind: IoKind::WriteZeroes,
                offset: 0,
                len: 128 * 1024,
                iov: &[],
                owner: 0,
                journal: None,
            },
            "past the end",
        ),
        (
            IoRequest {
                tag: 1,
                kind: IoKind::Deallocate,
                offset: u64::MAX - 511,
                len: 1024,
                iov: &[],
                owner: 0,
                journal: None,
            },
            "overflows",
        ),
        (
            IoRequest {
                tag: 1,
                kind: IoKind::Read,
                offset: 0,
                len: 8192,
                iov: &iov,
                owner: 0,
                journal: None,
            },
            "do not add up",
        ),
        (
            IoRequest {
                tag: 1,
                kind: IoKind::Write,
                offset: 0,
                len: 4096,
                iov: &iov2,
                owner: 0,
                journal: None,
            },
            "do not add up",
        ),
        (
            IoRequest {
                tag: 1,
                kind: IoKind::Read,
                offset: 100,
                len: 4096,
                iov: &iov,
                owner: 0,
                journal: None,
            },
            "multiple of the block size",
        ),
        (
            IoRequest {
                tag: 1,
                kind: IoKind::Flush,
                offset: 0,
                len: 512,
                iov: &[],
                owner: 0,
                journal: None,
            },
            "flush",
        ),
        (
            IoRequest {
                tag: 1,
                kind: IoKind::Flush,
                offset: 0,
                len: 0,
                iov: &iov,
                owner: 0,
                journal: None,
            },
            "flush",
        ),
        (
            IoRequest {
                tag: 1,
                kind: IoKind::WriteZeroes,
                offset: 0,
                len: 4096,
                iov: &iov,
                owner: 0,
                journal: None,
            },
            "carries no data",
        ),
    ];
    for q in [&mut fq as &mut dyn BackendQueue, rq.as_mut()] {
        for (req, msg) in &cases {
            // SAFETY: refused requests touch no memory.
            match unsafe { q.submit(req) } {
                Err(SubmitError::Invalid(m)) => {
                    assert!(m.contains(msg), "{req:?}: '{m}' lacks '{msg}'")
                }
                other => panic!("{req:?} should be invalid, got {other:?}"),
            }
            assert_eq!(q.in_flight(), 0);
        }
        let mut out = Vec::new();
        assert_eq!(q.drain(&mut out, Duration::from_millis(10)), 0);
    }
}

fn full_then_ok(q: &mut dyn BackendQueue) {
    let mut buf = Buf::new(3 * 4096, 4096);
    let iovs: Vec<_> = (0..3).map(|i| buf.iovs(&[(i * 4096, 4096)])).collect();
    let req = |i: usize| IoRequest {
        tag: i as u64,
        kind: IoKind::Read,
        offset: i as u64 * 4096,
        len: 4096,
        iov: &iovs[i],
        owner: 0,
        journal: None,
    };
    // SAFETY: `buf` outlives every completion (drained below).
    unsafe {
        q.submit(&req(0)).unwrap();
        q.submit(&req(1)).unwrap();
        assert!(matches!(q.submit(&req(2)), Err(SubmitError::Full)));
    }
    assert_eq!(q.in_flight(), 2);
    q.kick().unwrap();
    let mut out = Vec::new();
    while out.is_empty() {
        q.poll(&mut out);
        std::thread::yield_now();
    }
    // SAFETY: as above.
    unsafe { q.submit(&req(2)) }.expect("room after poll");
    let mut got = Vec::new();
    q.drain(&mut got, WAIT);
    out.extend(got);
    let mut tags: Vec<_> = out.iter().map(|c| c.tag).collect();
    tags.sort_unstable();
    assert_eq!(tags, [0, 1, 2]);
    assert!(out.iter().all(|c| c.result.is_ok()));
    assert_eq!(q.in_flight(), 0);
}

#[test]
fn depth_exceeded_is_full_until_polled() {
    let f = temp_file(1 << 20);
    let file = FileBackend::open(f.path(), 512).unwrap();
    full_then_ok(file.open_queue(2).unwrap().as_mut());
    let ram = RamBackend::new(1 << 20, 512).unwrap();
    full_then_ok(ram.open_queue(2).unwrap().as_mut());
}

#[test]
fn drain_kicks_and_collects_everything() {
    let f = temp_file(1 << 20);
    let backend = FileBackend::open(f.path(), 512).unwrap();
    let mut q = backend.open_queue(64).unwrap();
    let mut buf = Buf::new(64 * 4096, 4096);
    for (i, chunk) in buf.bytes_mut().chunks_mut(4096).enumerate() {
        chunk.fill(u8::try_from(i).unwrap());
    }
    let iovs: Vec<_> = (0..64).map(|i| buf.iovs(&[(i * 4096, 4096)])).collect();
    for (i, iov) in iovs.iter().enumerate() {
        let req = IoRequest {
            tag: 1000 + i as u64,
            kind: IoKind::Write,
            offset: i as u64 * 4096,
            len: 4096,
            iov,
            owner: 0,
            journal: None,
        };
        // SAFETY: `buf` outlives the drain below.
        unsafe { q.submit(&req) }.unwrap();
    }
    assert_eq!(q.in_flight(), 64);
    let mut out = Vec::new();
    assert_eq!(q.drain(&mut out, WAIT), 64);
    assert_eq!(q.in_flight(), 0);
    let mut tags: Vec<_> = out.iter().map(|c| c.tag).collect();
    tags.sort_unstable();
    assert_eq!(tags, (1000..1064).collect::<Vec<_>>());
    assert!(out.iter().all(|c| c.result.is_ok()));
    let on_disk = std::fs::read(f.path()).unwrap();
    for i in 0..64 {
        assert!(on_disk[i * 4096..(i + 1) * 4096]
            .iter()
            .all(|&b| usize::from(b) == i));
    }
    // Nothing in flight: drain returns at once with nothing.
    assert_eq!(q.drain(&mut out, WAIT), 0);
}

#[test]
fn zero_length_requests_succeed() {
    let f = temp_file(4096);
    let backend = FileBackend::open(f.path(), 512).unwrap();
    let mut q = backend.open_queue(2).unwrap();
    op(q.as_mut(), IoKind::WriteZeroes, 4096, 0).unwrap();
    rw(q.as_mut(), IoKind::Write, 0, &[]).unwrap();
}

#[test]
fn read_error_is_reported_with_errno() {
    // A read into an unmapped address fails with EFAULT, not success.
    let f = temp_file(4096);
    let backend = FileBackend::open(f.path(), 512).unwrap();
    let mut q = backend.open_queue(2).unwrap();
    let iov = [libc::iovec {
        iov_base: 8usize as *mut libc::c_void,
        iov_len: 512,
    }];
    let err = rw(q.as_mut(), IoKind::Read, 0, &iov).unwrap_err();
    assert_eq!(err, IoError::from_errno(libc::EFAULT));
    assert!(err.to_string().contains("Bad address"), "{err}");
}

#[test]
fn file_geometry_and_open_errors() {
    // Size rounded down to the block size.
    let f = temp_file(10 * 4096 + 1000);
    let b = FileBackend::open(f.path(), 4096).unwrap();
    assert_eq!(
        b.geometry(),
        Geometry {
            block_size: 4096,
            num_blocks: 10
        }
    );
    let d = b.describe();
    assert!(
        d.starts_with(&format!(
            "file:{} (40 KiB, 4096 B blocks, ",
            f.path().display()
        )),
        "{d}"
    );

    let mut q = b.open_queue(1).unwrap();
    assert!(matches!(
        // SAFETY: refused before touching memory.
        unsafe {
            q.submit(&IoRequest {
                tag: 0,
                kind: IoKind::WriteZeroes,
                offset: 40960,
                len: 4096,
                iov: &[],
                owner: 0,
                journal: None,
            })
        },
        Err(SubmitError::Invalid(_))
    ));

    let small = temp_file(100);
    let e = FileBackend::open(small.path(), AUTO_BLOCK_SIZE)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("is 100 bytes, smaller than one 512-byte block"),
        "{e}"
    );
    assert!(e.contains(&small.path().display().to_string()), "{e}");

    let e = open_backend(&"file:/nonexistent/leapio.img".parse().unwrap())
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("cannot open /nonexistent/leapio.img"),
        "{e}"
    );
    assert_eq!(
        std::error::Error::source(&e).unwrap().to_string(),
        std::io::Error::from_raw_os_error(libc::ENOENT).to_string()
    );

    let dir = tempfile::tempdir().unwrap();
    let e = FileBackend::open(dir.path(), AUTO_BLOCK_SIZE)
        .err()
        .map(|e| e.to_string())
        .unwrap();
    // Opening a directory read-write fails with EISDIR.
    assert!(e.contains(&dir.path().display().to_string()), "{e}");

    let e = FileBackend::open(f.path(), 1000).err().unwrap().to_string();
    assert!(e.contains("block size 1000 is not a power of two"), "{e}");

    let e = b.open_queue(0).err().unwrap().to_string();
    assert!(e.contains("queue depth 0"), "{e}");
}

#[test]
fn ram_config_errors() {
    let e = RamBackend::new(1000, 512).err().unwrap().to_string();
    assert!(
        e.contains("size 1000 is not a non-zero multiple of the block size 512"),
        "{e}"
    );
    let e = RamBackend::new(4096, 3000).err().unwrap().to_string();
    assert!(e.contains("block size 3000"), "{e}");
    let ram = RamBackend::new(4096, 4096).unwrap();
    assert!(ram.open_queue(0).is_err());
}

#[test]
fn ram_deallocate_releases_whole_pages_and_zeroes_edges() {
    let ram = RamBackend::new(1 << 20, 512).unwrap();
    let mut q = ram.open_queue(2).unwrap();
    let mut src = Buf::new(1 << 20, 4096);
    src.bytes_mut().fill(0xCC);
    let iov = src.iovs(&[(0, 1 << 20)]);
    rw(q.as_mut(), IoKind::Write, 0, &iov).unwrap();
    op(q.as_mut(), IoKind::Deallocate, 512, 5 * 4096).unwrap();
    let got = read_back(q.as_mut(), 0, 8 * 4096);
    assert!(got[..512].iter().all(|&b| b == 0xCC));
    assert!(got[512..512 + 5 * 4096].iter().all(|&b| b == 0));
    assert!(got[512 + 5 * 4096..].iter().all(|&b| b == 0xCC));
}

/// Runs against a real block device named by `LEAPIO_TEST_BLOCK_DEVICE`
/// (DESTROYS ITS DATA), e.g. a loop device:
/// `dev=$(losetup -f --show img) LEAPIO_TEST_BLOCK_DEVICE=$dev cargo test -p leapio-backends -- --ignored`
#[test]
#[ignore = "needs a scratch block device in LEAPIO_TEST_BLOCK_DEVICE"]
fn block_device() {
    let Some(dev) = std::env::var_os("LEAPIO_TEST_BLOCK_DEVICE") else {
        eprintln!("LEAPIO_TEST_BLOCK_DEVICE not set: skipped");
        return;
    };
    let path = Path::new(&dev);
    let backend = FileBackend::open(path, AUTO_BLOCK_SIZE).unwrap();
    eprintln!("{}", backend.describe());
    assert!(backend.describe().contains("block device"));
    let g = backend.geometry();
    let size = {
        use std::io::Seek;
        std::fs::File::open(path)
            .unwrap()
            .seek(std::io::SeekFrom::End(0))
            .unwrap()
    };
    assert_eq!(g.size_bytes(), size - size % u64::from(g.block_size));
    // A second exclusive open is refused.
    let e = FileBackend::open(path, AUTO_BLOCK_SIZE)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("exclusively"), "{e}");

    let mut q = file_queue(&backend, 8);
    scattered_round_trip(&mut q, 1);
    let mut src = Buf::new(65536, 4096);
    src.bytes_mut().copy_from_slice(&pattern(65536, 1));
    let iov = src.iovs(&[(0, 65536)]);
    rw(&mut q, IoKind::WriteFua, 1 << 20, &iov).unwrap();
    assert_eq!(read_back(&mut q, 1 << 20, 65536), pattern(65536, 1));
    if backend.direct_io() {
        assert!(q.stats.direct >= 2, "{:?}", q.stats);
    }
    op(&mut q, IoKind::Flush, 0, 0).unwrap();
    zero_and_deallocate(&mut q, u64::from(g.block_size), None);
    backend.flush().unwrap();
}

#[test]
fn a_file_is_served_by_one_backend_at_a_time() {
    // The second open waits until every descriptor of the first (the
    // kernel's included) is gone: the fence between a killed runtime and
    // its successor.
    let f = temp_file(1 << 20);
    let first = FileBackend::open(f.path(), AUTO_BLOCK_SIZE).unwrap();
    first.claim().unwrap();
    let mut q = first.open_queue(8).unwrap();
    assert_eq!(read_back(q.as_mut(), 0, 4096).len(), 4096);
    let path = f.path().to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        // Opening (to learn the geometry) does not wait; claiming does.
        let second = FileBackend::open(&path, AUTO_BLOCK_SIZE).unwrap();
        let r = second.claim();
        tx.send(()).unwrap();
        r
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "a second backend opened the file while the first had it"
    );
    drop(q);
    drop(first);
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the second open goes on once the first is gone");
    t.join().unwrap().unwrap();
}
