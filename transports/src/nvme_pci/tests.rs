//! The driver against an emulated controller (`fake.rs`): data moves by
//! PRPs into registered memory without a copy, memory outside the IOMMU
//! goes through bounce buffers and is counted, commands are split at the
//! controller's limit, and a controller that swallows commands, fails or
//! stops answering ends in completions, never a hang.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leapio_backend::dma::DmaBuffer;

use super::device::{NvmeDevice, Registers};
use super::fake::{registry, FakeSsd, BLOCK};
use super::*;
use crate::{Completion, IoKind, IoRequest};

const BLOCKS: usize = 8192;

fn spec(timeout: Duration) -> NvmePciSpec {
    NvmePciSpec {
        bdf: "0000:00:03.0".into(),
        nsid: 1,
        timeout,
    }
}

struct Rig {
    ssd: FakeSsd,
    backend: NvmePciBackend,
    reg: &'static DmaRegistry,
}

fn rig(timeout: Duration) -> Rig {
    let (reg, table) = registry();
    let ssd = FakeSsd::new(table, BLOCKS);
    let regs: Arc<dyn Registers> = ssd.regs.clone();
    let dev = NvmeDevice::open(regs, None, reg, 1, timeout).expect("the controller comes up");
    Rig {
        ssd,
        backend: NvmePciBackend::with_device(dev, spec(timeout)),
        reg,
    }
}

/// A byte that differs from its neighbours.
fn pattern(i: usize) -> u8 {
    u8::try_from(i % 251).unwrap_or(0)
}

fn iov(p: *mut u8, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: p.cast(),
        iov_len: len,
    }
}

/// Submit one request and wait for its completion.
fn run(
    q: &mut dyn BackendQueue,
    kind: IoKind,
    offset: u64,
    len: u64,
    iov: &[libc::iovec],
) -> Completion {
    let req = IoRequest {
        tag: 7,
        kind,
        offset,
        len,
        iov,
        owner: 0,
        journal: None,
    };
    // SAFETY: the iovecs point into buffers the test keeps alive.
    unsafe { q.submit(&req) }.expect("submitted");
    q.kick().unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.is_empty() {
        q.poll(&mut out);
        assert!(Instant::now() < deadline, "no completion");
        std::thread::sleep(Duration::from_micros(50));
    }
    out.pop().unwrap()
}

#[test]
fn the_device_moves_registered_memory_itself() {
    let r = rig(Duration::from_secs(5));
    let g = r.backend.geometry();
    assert_eq!((g.block_size, g.num_blocks), (512, BLOCKS as u64));
    let f = r.backend.features();
    assert!(f.volatile_write_cache && f.write_zeroes && f.deallocate);
    let mut q = r.backend.open_queue(32).unwrap();
    assert_eq!(r.ssd.io_queues(), 1);
    // 512 KiB: four commands of 128 KiB, each with a PRP list, starting
    // mid-page as a guest buffer may.
    let len = 512 << 10;
    let buf = DmaBuffer::new(r.reg, len + 4096).unwrap();
    let p = buf.as_ptr().wrapping_add(1024);
    for i in 0..len {
        // SAFETY: inside the buffer.
        unsafe { *p.add(i) = pattern(i) };
    }
    let c = run(&mut *q, IoKind::Write, 4096, len as u64, &[iov(p, len)]);
    assert!(c.result.is_ok(), "{c:?}");
    let disk = r.ssd.disk(4096, len);
    assert!(disk.iter().enumerate().all(|(i, &b)| b == pattern(i)));
    // Read it back into other registered memory, in guest-like pieces.
    let back = DmaBuffer::new(r.reg, len).unwrap();
    let pieces: Vec<libc::iovec> = (0..len / 4096)
        .map(|i| iov(back.as_ptr().wrapping_add(i * 4096), 4096))
        .collect();
    let c = run(&mut *q, IoKind::Read, 4096, len as u64, &pieces);
    assert!(c.result.is_ok(), "{c:?}");
    // SAFETY: inside the buffer, written by the device.
    let got = unsafe { std::slice::from_raw_parts(back.as_ptr(), len) };
    assert_eq!(got, &disk[..]);
    assert_eq!(r.backend.copied_bytes(), 0, "no byte copied by the CPU");
    // Write Zeroes, deallocate, flush.
    let c = run(&mut *q, IoKind::WriteZeroes, 4096, 8192, &[]);
    assert!(c.result.is_ok());
    assert!(r.ssd.disk(4096, 8192).iter().all(|&b| b == 0));
    let c = run(&mut *q, IoKind::Deallocate, 16384, 4096, &[]);
    assert!(c.result.is_ok());
    assert!(r.ssd.disk(16384, 4096).iter().all(|&b| b == 0));
    assert!(r.ssd.disk(20480, 512).iter().any(|&b| b != 0));
    assert!(run(&mut *q, IoKind::Flush, 0, 0, &[]).result.is_ok());
    r.backend.flush().unwrap();
    drop(q);
    assert_eq!(r.ssd.io_queues(), 0, "the queue is deleted with its owner");
}

#[test]
fn memory_outside_the_iommu_is_bounced_and_counted() {
    let r = rig(Duration::from_secs(5));
    let mut q = r.backend.open_queue(8).unwrap();
    let mut data: Vec<u8> = (0..300 * 1024).map(|i| pattern(i * 7)).collect();
    let len = data.len();
    let c = run(
        &mut *q,
        IoKind::Write,
        0,
        len as u64,
        &[iov(data.as_mut_ptr(), len)],
    );
    assert!(c.result.is_ok(), "{c:?}");
    assert_eq!(r.ssd.disk(0, len), data);
    let mut back = vec![0u8; len];
    let c = run(
        &mut *q,
        IoKind::Read,
        0,
        len as u64,
        &[iov(back.as_mut_ptr(), len)],
    );
    assert!(c.result.is_ok());
    assert_eq!(back, data);
    assert_eq!(r.backend.copied_bytes(), 2 * len as u64);
}

#[test]
fn device_errors_reach_the_request_as_they_are() {
    let r = rig(Duration::from_secs(5));
    let mut q = r.backend.open_queue(8).unwrap();
    r.ssd.faults.bad_lba.store(3, Ordering::SeqCst);
    let buf = DmaBuffer::new(r.reg, 4096).unwrap();
    let c = run(&mut *q, IoKind::Read, 0, 4096, &[iov(buf.as_ptr(), 4096)]);
    let e = c.result.unwrap_err();
    assert_eq!(
        e.status,
        Some(leapio_nvme::Status::UNRECOVERED_READ_ERROR.field())
    );
    // A bad request is refused before it reaches the device.
    let req = IoRequest {
        tag: 1,
        kind: IoKind::Read,
        offset: (BLOCKS * BLOCK) as u64,
        len: 512,
        iov: &[iov(buf.as_ptr(), 512)],
        owner: 0,
        journal: None,
    };
    // SAFETY: refused without touching the buffer.
    assert!(unsafe { q.submit(&req) }.is_err());
}

#[test]
fn a_swallowed_command_is_aborted_and_sent_again() {
    let r = rig(Duration::from_millis(200));
    let mut q = r.backend.open_queue(8).unwrap();
    let buf = DmaBuffer::new(r.reg, 4096).unwrap();
    r.ssd.faults.swallow.store(1, Ordering::SeqCst);
    let t = Instant::now();
    let c = run(&mut *q, IoKind::Write, 0, 4096, &[iov(buf.as_ptr(), 4096)]);
    assert!(c.result.is_ok(), "{c:?}");
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(
        r.ssd.resets.load(Ordering::SeqCst),
        0,
        "an Abort was enough"
    );
}

#[test]
fn a_fatal_controller_is_reset_and_the_command_sent_again() {
    let r = rig(Duration::from_secs(5));
    let mut q = r.backend.open_queue(8).unwrap();
    let buf = DmaBuffer::new(r.reg, 4096).unwrap();
    // SAFETY: inside the buffer.
    unsafe { std::ptr::write_bytes(buf.as_ptr(), 0xab, 4096) };
    r.ssd.faults.fatal.store(true, Ordering::SeqCst);
    let c = run(
        &mut *q,
        IoKind::Write,
        8192,
        4096,
        &[iov(buf.as_ptr(), 4096)],
    );
    assert!(c.result.is_ok(), "{c:?}");
    assert_eq!(r.ssd.resets.load(Ordering::SeqCst), 1);
    assert!(r.ssd.disk(8192, 4096).iter().all(|&b| b == 0xab));
    assert_eq!(r.ssd.io_queues(), 1, "the queue was created again");
}

#[test]
fn a_controller_that_stops_answering_fails_commands_instead_of_hanging() {
    let r = rig(Duration::from_millis(200));
    let mut q = r.backend.open_queue(8).unwrap();
    let buf = DmaBuffer::new(r.reg, 4096).unwrap();
    r.ssd.faults.hang.store(true, Ordering::SeqCst);
    let t = Instant::now();
    let c = run(&mut *q, IoKind::Read, 0, 4096, &[iov(buf.as_ptr(), 4096)]);
    assert_eq!(c.result.unwrap_err().errno, libc::EIO);
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    // Later requests fail at once.
    let c = run(&mut *q, IoKind::Read, 0, 4096, &[iov(buf.as_ptr(), 4096)]);
    assert_eq!(c.result.unwrap_err().errno, libc::EIO);
}

#[test]
fn a_controller_left_running_is_stopped_and_taken_over() {
    let (reg, table) = registry();
    let ssd = FakeSsd::new(table, BLOCKS);
    let regs: Arc<dyn Registers> = ssd.regs.clone();
    let first = NvmeDevice::open(regs.clone(), None, reg, 1, Duration::from_secs(5)).unwrap();
    // A second owner (a runtime after the first was killed) takes over.
    let second = NvmeDevice::open(regs, None, reg, 1, Duration::from_secs(5)).unwrap();
    assert_eq!(ssd.resets.load(Ordering::SeqCst), 1);
    assert_eq!(second.info.geometry.num_blocks, BLOCKS as u64);
    drop(first);
    // A namespace the controller does not have, and a device that is gone.
    let regs: Arc<dyn Registers> = ssd.regs.clone();
    let e = NvmeDevice::open(regs.clone(), None, reg, 2, Duration::from_secs(5)).unwrap_err();
    assert!(e.to_string().contains("namespace 2 does not exist"), "{e}");
    ssd.regs.gone.store(true, Ordering::SeqCst);
    let e = NvmeDevice::open(regs, None, reg, 1, Duration::from_secs(5)).unwrap_err();
    assert!(e.to_string().contains("all ones"), "{e}");
}

#[test]
fn specs() {
    let s = parse_spec("0000:00:03.0").unwrap();
    assert_eq!(s, spec(Duration::from_secs(30)));
    assert_eq!(s.to_string(), "nvme-pci:0000:00:03.0");
    let s = parse_spec("00:04.0?nsid=2&timeout=500").unwrap();
    assert_eq!(
        (s.bdf.as_str(), s.nsid, s.timeout),
        ("0000:00:04.0", 2, Duration::from_millis(500))
    );
    assert_eq!(s.to_string(), "nvme-pci:0000:00:04.0?nsid=2&timeout=500");
    assert!(parse_spec("/dev/nvme0")
        .unwrap_err()
        .contains("not a PCI address"));
    assert!(parse_spec("00:04.0?qd=2").unwrap_err().contains("qd"));
    assert!(parse_spec("00:04.0?nsid=0").is_err());
}
