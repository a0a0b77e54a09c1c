//! The host-driver's NVMe controller driven in-process as a guest and its
//! hypervisor would: BAR0 registers (enable, reset, shutdown), the PCI
//! configuration space and MSI-X table, doorbells, and admin commands
//! (Identify, logs, features, queue creation and deletion, AER, Doorbell
//! Buffer Config, Abort...) whose PRPs and PRP lists point into guest
//! memory the fuzzer wrote. No runtime is attached (queues are created in
//! the queue-state area only); two namespaces are declared.
//!
//! Properties: nothing panics; every admin command the guest submits gets
//! exactly one completion (carrying its CID, on the admin completion
//! queue) in the same poll, except Asynchronous Event Requests, unless the
//! controller reports Controller Fatal Status.
//!
//! Input: a byte of bring-up choices, then operations (see `step`).
#![no_main]

use leapio_fuzz::guest::{self, Memory, PAGE};
use leapio_fuzz::Input;
use leapio_host_driver::NvmeController;
use leapio_nvme::regs::{csts, offset};
use leapio_nvme::{AdminOpcode, Cqe, Sqe};
use leapio_vmm_shim::vfio_user::{Device, DmaMap, IrqAction, IrqData, SetIrqs};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::collections::BTreeSet;
use zerocopy::{FromBytes, IntoBytes};

/// The admin queues live in region 1 (guest-physical 1 MiB), out of reach
/// of the data PRPs the harness generates.
const ASQ: u64 = 0x10_0000;
const ACQ: u64 = 0x10_1000;
const ENTRIES: u16 = 16;
const REGION_BAR0: u32 = 0;
const REGION_BAR4: u32 = 4;
const REGION_CONFIG: u32 = 7;
const IRQ_MSIX: u32 = 2;

const OPCODES: [u8; 16] = [
    AdminOpcode::IDENTIFY,
    AdminOpcode::GET_LOG_PAGE,
    AdminOpcode::GET_FEATURES,
    AdminOpcode::SET_FEATURES,
    AdminOpcode::CREATE_CQ,
    AdminOpcode::CREATE_SQ,
    AdminOpcode::DELETE_SQ,
    AdminOpcode::DELETE_CQ,
    AdminOpcode::ASYNC_EVENT_REQUEST,
    AdminOpcode::DOORBELL_BUFFER_CONFIG,
    AdminOpcode::ABORT,
    AdminOpcode::KEEP_ALIVE,
    AdminOpcode::FORMAT_NVM,
    AdminOpcode::NS_MANAGEMENT,
    AdminOpcode::IDENTIFY,
    AdminOpcode::GET_LOG_PAGE,
];

struct Harness {
    ctrl: NvmeController,
    mem: Memory,
}

/// The guest driver's view of its admin queues.
struct Guest {
    tail: u16,
    head: u16,
    phase: bool,
    next_cid: u16,
    outstanding: BTreeSet<u16>,
    aers: BTreeSet<u16>,
    /// The admin queue doorbells or registers were written behind the
    /// driver's back: completions can no longer be checked.
    wild: bool,
}

impl Guest {
    fn new() -> Guest {
        Guest {
            tail: 0,
            head: 0,
            phase: true,
            next_cid: 0,
            outstanding: BTreeSet::new(),
            aers: BTreeSet::new(),
            wild: false,
        }
    }
}

thread_local! {
    static HARNESS: RefCell<Harness> = RefCell::new(Harness::new());
}

impl Harness {
    fn new() -> Harness {
        Harness {
            ctrl: leapio_fuzz::controller(),
            mem: Memory::new(),
        }
    }

    fn map_memory(&mut self) {
        for (i, &(gpa, size, writable)) in guest::REGIONS.iter().enumerate() {
            let fd = self.mem.fds[i].try_clone().expect("dup");
            let r = self.ctrl.dma_map(DmaMap {
                iova: gpa,
                size,
                file_offset: 0,
                read: true,
                write: writable,
                fd: Some(fd),
            });
            assert!(r.is_ok(), "dma map: {r:?}");
        }
    }

    fn write_reg(&mut self, off: u64, bytes: &[u8]) {
        let _ = self.ctrl.region_write(REGION_BAR0, off, bytes);
    }

    fn csts(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let _ = self.ctrl.region_read(REGION_BAR0, offset::CSTS, &mut b);
        u32::from_le_bytes(b)
    }

    fn enable(&mut self, mps: u32) {
        let aqa = (u32::from(ENTRIES - 1) << 16) | u32::from(ENTRIES - 1);
        self.write_reg(offset::AQA, &aqa.to_le_bytes());
        self.write_reg(offset::ASQ, &ASQ.to_le_bytes());
        self.write_reg(offset::ACQ, &ACQ.to_le_bytes());
        let cc = 1 | (mps << 7) | (6 << 16) | (4 << 20);
        self.write_reg(offset::CC, &cc.to_le_bytes());
    }

    /// Submit one command and poll the controller; checks the completions.
    fn submit(&mut self, g: &mut Guest, mut sqe: Sqe) {
        let cid = g.next_cid;
        g.next_cid = g.next_cid.wrapping_add(1);
        sqe.cid = cid.into();
        let slot = ASQ + u64::from(g.tail) * 64;
        self.mem.write(slot, sqe.as_bytes());
        g.tail = (g.tail + 1) % ENTRIES;
        if sqe.opcode == AdminOpcode::ASYNC_EVENT_REQUEST {
            g.aers.insert(cid);
        } else {
            g.outstanding.insert(cid);
        }
        self.write_reg(offset::DOORBELLS, &u32::from(g.tail).to_le_bytes());
        if std::env::var_os("LEAPIO_FUZZ_DEBUG").is_some() {
            eprintln!("submit {sqe:?} csts {:#x}", self.csts());
        }
        self.ctrl.poll_admin();
        self.reap(g);
        if !g.wild && self.csts() & (csts::CFS | csts::RDY | csts::SHST_MASK) == csts::RDY {
            assert!(
                g.outstanding.is_empty(),
                "admin commands {:?} got no completion",
                g.outstanding
            );
        }
        // A controller that stopped (or shut down) leaves its commands behind.
        g.outstanding.clear();
    }

    /// Take the completions the controller posted, as a driver does.
    fn reap(&mut self, g: &mut Guest) {
        let snap = self.mem.domain.snapshot();
        loop {
            let at = ACQ + u64::from(g.head) * 16;
            let mut b = [0u8; 16];
            if snap.read_bytes(at, &mut b).is_err() {
                return;
            }
            let cqe = Cqe::read_from_bytes(&b).expect("16 bytes");
            if cqe.phase() != g.phase {
                break;
            }
            let cid = cqe.cid.get();
            assert!(
                g.outstanding.remove(&cid) || g.aers.remove(&cid) || g.wild,
                "completion for CID {cid}, which is not outstanding"
            );
            assert_eq!(cqe.sq_id.get(), 0, "admin completion for another queue");
            assert!(cqe.sq_head.get() < ENTRIES);
            g.head = (g.head + 1) % ENTRIES;
            if g.head == 0 {
                g.phase = !g.phase;
            }
        }
        drop(snap);
        self.write_reg(offset::DOORBELLS + 4, &u32::from(g.head).to_le_bytes());
    }

    /// A mostly valid admin command; PRPs anywhere in guest memory except
    /// the admin queues themselves.
    fn command(input: &mut Input<'_>) -> Sqe {
        let sel = input.u8();
        let opcode = if sel < 240 {
            OPCODES[usize::from(sel % 16)]
        } else {
            input.u8()
        };
        let nsid = match input.u8() % 8 {
            0 | 1 => 1,
            2 => 2,
            3 => 0,
            4 => u32::MAX,
            5 => 3,
            _ => input.u32(),
        };
        let prp = |input: &mut Input<'_>| {
            let a = guest::address(input);
            if (ASQ..ACQ + PAGE).contains(&a) {
                a + 2 * PAGE
            } else {
                a
            }
        };
        let prp1 = prp(input);
        let prp2 = prp(input);
        let cdw10 = if input.u8() < 200 {
            u32::from(input.u8()) | (u32::from(input.u16() % 0x400) << 16)
        } else {
            input.u32()
        };
        let cdw11 = if input.u8() < 128 {
            u32::from(input.u8() & 0x7) | (u32::from(input.u8() % 8) << 16)
        } else {
            input.u32()
        };
        Sqe {
            opcode,
            flags: if input.u8() < 240 { 0 } else { input.u8() },
            nsid: nsid.into(),
            prp1: prp1.into(),
            prp2: prp2.into(),
            cdw10: cdw10.into(),
            cdw11: cdw11.into(),
            cdw12: u32::from(input.u16()).into(),
            cdw13: 0.into(),
            cdw14: input.u32().into(),
            cdw15: input.u32().into(),
            ..Default::default()
        }
    }

    fn step(&mut self, g: &mut Guest, input: &mut Input<'_>) {
        match input.u8() % 16 {
            0..=7 => {
                let sqe = Self::command(input);
                self.submit(g, sqe);
            }
            8 | 9 => {
                let mut gpa = guest::address(input);
                if (ASQ..ACQ + PAGE).contains(&gpa) {
                    gpa += 2 * PAGE;
                }
                let len = input.below(256);
                let bytes = input.bytes(len);
                self.mem.write(gpa, bytes);
            }
            10 => {
                let off = (u64::from(input.u8()) * 4) % 0x40;
                let n = if input.bool() { 8 } else { 4 };
                let bytes = input.bytes(n);
                self.write_reg(off, bytes);
                // CC (enable, reset, shutdown) and the admin queue
                // registers: the driver no longer knows where the queues
                // stand, until the next reset.
                let end = off + bytes.len() as u64;
                g.wild |= off < offset::ACQ + 8 && end > offset::CC;
            }
            11 => {
                let (index, size) = match input.u8() % 3 {
                    0 => (REGION_BAR0, 0x4000),
                    1 => (REGION_BAR4, 0x2000),
                    _ => (REGION_CONFIG, 0x1000),
                };
                let off = u64::from(input.u16()) % size;
                let len = 1 << (input.u8() % 4);
                if input.bool() {
                    let mut b = vec![0u8; len];
                    let _ = self.ctrl.region_read(index, off, &mut b);
                } else {
                    let bytes = input.bytes(len);
                    let _ = self.ctrl.region_write(index, off, bytes);
                }
            }
            12 => {
                // A doorbell of any queue, then a poll.
                let off = offset::DOORBELLS + u64::from(input.u8()) * 4;
                let v = u32::from(input.u16());
                self.write_reg(off, &v.to_le_bytes());
                g.wild |= off < offset::DOORBELLS + 8;
                self.ctrl.poll_admin();
                self.reap(g);
            }
            13 => {
                let start = u32::from(input.u8() % 8);
                let count = u32::from(input.u8() % 3);
                let fds = (0..count).map(|_| Some(leapio_fuzz::eventfd())).collect();
                let _ = self.ctrl.set_irqs(SetIrqs {
                    index: IRQ_MSIX,
                    start,
                    count,
                    action: IrqAction::Trigger,
                    data: IrqData::Eventfd(fds),
                });
            }
            14 => {
                self.ctrl.tick();
                self.reap(g);
            }
            _ => {
                let _ = self.ctrl.reset();
                *g = Guest::new();
                self.mem.clear_range(ASQ, 2 * PAGE);
                let mps = u32::from(input.u8() % 2);
                self.enable(mps);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    HARNESS.with_borrow_mut(|h| {
        let mut input = Input::new(data);
        let _ = h.ctrl.reset();
        h.map_memory();
        let mps = u32::from(input.u8() % 2);
        h.enable(mps);
        let mut g = Guest::new();
        while !input.is_empty() {
            h.step(&mut g, &mut input);
        }
        h.ctrl.disconnected();
        h.mem.clear();
        h.mem.clear_range(ASQ, 2 * PAGE);
    });
});
