//! `leapio-hostile`: one misbehaving tenant of a running socp, for the
//! hostile-tenant benchmark (`scripts/bench-hostile.sh`), which measures a
//! well-behaved tenant's latency beside it. Runs until `--seconds` pass.
//!
//!   leapio-hostile busy SOCK         a well-behaved VM doing the same I/O as `irq`
//!                                    as fast as it can (the fair baseline: the
//!                                    CPU a busy neighbour takes)
//!   leapio-hostile irq SOCK          a VM whose MSI-X eventfd is full and blocking,
//!                                    doing I/O that raises it
//!   leapio-hostile dma-flood SOCK    a VM mapping guest memory regions until refused,
//!                                    unmapping, again
//!   leapio-hostile half-open ADDR    NVMe/TCP connections that send an ICReq and
//!                                    nothing more, re-opened as they are closed
//!   leapio-hostile slow-reader ADDR NQN
//!                                    an NVMe/TCP host that sends 128 KiB reads, beyond
//!                                    its queue size, and never reads its socket
//!   leapio-hostile rdma ADDR NQN     NVMe/RDMA hosts that break the protocol, one after
//!                                    another (hostile/rdma.rs); the last, which posts
//!                                    no receives, holds its connection `--seconds`

use leapio_nvme::fabrics::{
    self as fabrics, FcType, PropertyCmd, SglDescriptor, CNTLID_DYNAMIC, FABRICS_OPCODE,
};
use leapio_nvme::regs::offset;
use leapio_nvme::tcp::{write_pdu, CapsuleCmd, Digests};
use leapio_nvme::{IoOpcode, Sqe};
use leapio_tests::Driver;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, FromRawFd};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

#[path = "hostile/rdma.rs"]
mod rdma;

const HOSTNQN: &str = "nqn.2026-11.io.leapio:hostile";
const IRQ_MSIX: u32 = 2;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut secs = 10.0f64;
    let mut pos = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--seconds" {
            secs = it.next().and_then(|s| s.parse().ok()).unwrap_or(secs);
        } else {
            pos.push(a.as_str());
        }
    }
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let r = match pos.as_slice() {
        ["busy", sock] => irq(Path::new(sock), until, false),
        ["irq", sock] => irq(Path::new(sock), until, true),
        ["dma-flood", sock] => dma_flood(Path::new(sock), until),
        ["half-open", addr] => half_open(addr, until),
        ["slow-reader", addr, nqn] => slow_reader(addr, nqn, until),
        ["rdma", addr, nqn] => rdma::run(addr, nqn, Duration::from_secs_f64(secs)),
        _ => Err("usage: leapio-hostile busy SOCK | irq SOCK | dma-flood SOCK | half-open ADDR | slow-reader ADDR NQN | rdma ADDR NQN [--seconds S]".into()),
    };
    match r {
        Ok(what) => {
            println!("{what}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("leapio-hostile: {e}");
            ExitCode::FAILURE
        }
    }
}

type R = Result<String, String>;

/// Writes as fast as one queue completes them; with `full`, the MSI-X
/// eventfd they raise is blocking and full (socp must not block on it).
fn irq(sock: &Path, until: Instant, full: bool) -> R {
    let mut d = Driver::bring_up(sock, 16 << 20, 1, 32).map_err(|e| e.to_string())?;
    // SAFETY: plain eventfd creation, checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err("eventfd".into());
    }
    // SAFETY: a fresh fd nothing else owns.
    let mut efd = unsafe { std::fs::File::from_raw_fd(fd) };
    if full {
        efd.write_all(&(u64::MAX - 1).to_ne_bytes())
            .map_err(|e| e.to_string())?;
    }
    let accepted = d
        .client
        .set_irq_eventfds(IRQ_MSIX, 1, &[efd.as_fd()])
        .is_ok();
    let buf = d.mem.alloc(4096, 4096);
    d.mem.write(buf, &[0x5a; 4096]);
    let mut n = 0u64;
    while Instant::now() < until {
        let sqe = d.rw_sqe(IoOpcode::WRITE, 1, 0, 8, buf, 4096, 0);
        d.command(1, sqe).map_err(|e| e.to_string())?;
        n += 1;
    }
    if !full {
        return Ok(format!("busy: {n} writes"));
    }
    Ok(format!(
        "irq: blocking full eventfd {}; {n} writes raising it",
        if accepted {
            "accepted (made non-blocking)"
        } else {
            "refused"
        }
    ))
}

fn dma_flood(sock: &Path, until: Instant) -> R {
    let mut d = Driver::connect(sock, 16 << 20).map_err(|e| e.to_string())?;
    let (mut maps, mut refused, mut rounds) = (0u64, 0u64, 0u64);
    while Instant::now() < until {
        let base = 1u64 << 40;
        let mut i = 0u64;
        loop {
            match d.client.dma_map(base + i * 4096, 4096, None, 0, true, true) {
                Ok(()) => maps += 1,
                Err(_) => {
                    refused += 1;
                    break;
                }
            }
            i += 1;
            if i > 4096 {
                break;
            }
        }
        let _ = d.client.dma_unmap(base, i * 4096, false);
        for j in 0..i {
            let _ = d.client.dma_unmap(base + j * 4096, 4096, false);
        }
        rounds += 1;
    }
    Ok(format!(
        "dma-flood: {rounds} rounds, {maps} maps accepted, {refused} refused"
    ))
}

fn icreq() -> [u8; 128] {
    let mut b = [0u8; 128];
    b[..8].copy_from_slice(&[0x00, 0, 128, 0, 128, 0, 0, 0]);
    b
}

fn half_open(addr: &str, until: Instant) -> R {
    let mut conns: Vec<TcpStream> = Vec::new();
    let (mut opened, mut closed) = (0u64, 0u64);
    while Instant::now() < until {
        conns.retain(|c| {
            let mut b = [0u8; 256];
            c.set_nonblocking(true).ok();
            match (&*c).read(&mut b) {
                Ok(0) => {
                    closed += 1;
                    false
                }
                _ => true,
            }
        });
        while conns.len() < 256 {
            let Ok(mut s) = TcpStream::connect(addr) else {
                break;
            };
            let _ = s.write_all(&icreq());
            conns.push(s);
            opened += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(format!(
        "half-open: {opened} opened, {closed} closed by the target"
    ))
}

fn capsule(sqe: &Sqe, data: &[u8]) -> Vec<u8> {
    let mut c = CapsuleCmd::new();
    c.sqe = *sqe;
    let mut out = Vec::new();
    write_pdu(&mut out, c.as_bytes(), data, Digests::default(), 4);
    out
}

/// ICReq, then a Connect for `qid`; returns the CNTLID.
fn tcp_connect(s: &mut TcpStream, nqn: &str, qid: u16, cntlid: u16) -> Result<u16, String> {
    s.write_all(&icreq()).map_err(|e| e.to_string())?;
    let mut resp = [0u8; 128];
    s.read_exact(&mut resp)
        .map_err(|e| format!("ICResp: {e}"))?;
    let (c, d) = fabrics::connect(qid, 31, 0, [9; 16], cntlid, HOSTNQN, nqn);
    let mut sqe = Sqe::read_from_bytes(c.as_bytes()).map_err(|_| "sqe")?;
    SglDescriptor::in_capsule(0, 1024).store(&mut sqe);
    s.write_all(&capsule(&sqe, d.as_bytes()))
        .map_err(|e| e.to_string())?;
    let mut r = [0u8; 24];
    s.read_exact(&mut r)
        .map_err(|e| format!("Connect response: {e}"))?;
    let status = u16::from_le_bytes([r[22], r[23]]) >> 1;
    if status != 0 {
        return Err(format!(
            "Connect of queue {qid} refused (status field {status:#x})"
        ));
    }
    Ok(u16::from_le_bytes([r[8], r[9]]))
}

fn slow_reader(addr: &str, nqn: &str, until: Instant) -> R {
    let mut admin = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let cntlid = tcp_connect(&mut admin, nqn, 0, CNTLID_DYNAMIC)?;
    // CC.EN with 64-byte SQEs and 16-byte CQEs.
    let mut p = PropertyCmd::new_zeroed();
    p.opcode = FABRICS_OPCODE;
    p.fctype = FcType::PROPERTY_SET;
    p.offset = u32::try_from(offset::CC).unwrap_or(0x14).into();
    p.value = 0x0046_0001u64.into();
    let mut sqe = Sqe::read_from_bytes(p.as_bytes()).map_err(|_| "sqe")?;
    SglDescriptor::transport(0).store(&mut sqe);
    admin
        .write_all(&capsule(&sqe, &[]))
        .map_err(|e| e.to_string())?;
    let mut r = [0u8; 24];
    admin.read_exact(&mut r).map_err(|e| e.to_string())?;
    let mut q = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp_connect(&mut q, nqn, 1, cntlid)?;
    q.set_write_timeout(Some(Duration::from_millis(100))).ok();
    let mut sent = 0u64;
    let mut cid = 0u16;
    while Instant::now() < until {
        cid = cid.wrapping_add(1);
        let mut sqe = Sqe {
            opcode: IoOpcode::READ,
            nsid: 1.into(),
            cdw10: (u32::from(cid % 256) * 256).into(),
            cdw12: 255.into(),
            ..Default::default()
        };
        sqe.cid = cid.into();
        SglDescriptor::transport(128 << 10).store(&mut sqe);
        if q.write_all(&capsule(&sqe, &[])).is_ok() {
            sent += 1;
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(format!(
        "slow-reader: {sent} reads of 128 KiB sent, none of the answers read"
    ))
}
