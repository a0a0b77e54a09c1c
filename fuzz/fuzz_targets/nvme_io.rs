//! NVM command planning in the controller core (`leapio_controller::nvm`,
//! with the command's data in guest memory: `PrpData`): a submission
//! queue entry, copied out of guest memory, with PRP1/PRP2 and PRP lists in
//! guest memory the fuzzer wrote. Properties: nothing panics; a command is
//! either refused with a status or planned into operations inside the
//! namespace whose data iovecs add up to the transfer and lie entirely in
//! guest memory the device may access that way.
//!
//! Input: limits and namespace (3 bytes), guest memory writes
//! ([count] x [address, length, bytes]), then commands of
//! [opcode choice, fields, PRP1, PRP2] until the input ends.
#![no_main]

use leapio_ats::prp::PrpLimits;
use leapio_ats::Access;
use leapio_backends::IoKind;
use leapio_controller::nvm::{plan, Op, Plan, PrpData, Settings};
use leapio_controller::NamespaceInfo;
use leapio_fuzz::guest::{self, Memory};
use leapio_fuzz::Input;
use leapio_nvme::{IoOpcode, Sqe};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

thread_local! {
    static MEM: RefCell<Memory> = RefCell::new(Memory::new());
}

const OPCODES: [u8; 8] = [
    IoOpcode::READ,
    IoOpcode::WRITE,
    IoOpcode::FLUSH,
    IoOpcode::WRITE_ZEROES,
    IoOpcode::DATASET_MANAGEMENT,
    IoOpcode::COMPARE,
    IoOpcode::READ,
    IoOpcode::WRITE,
];

fn command(input: &mut Input<'_>) -> Sqe {
    let sel = input.u8();
    let mut sqe = Sqe {
        opcode: if sel < 240 {
            OPCODES[usize::from(sel % 8)]
        } else {
            input.u8()
        },
        flags: if input.u8() < 240 { 0 } else { input.u8() },
        nsid: 1.into(),
        ..Default::default()
    };
    let slba = if input.u8() < 230 {
        u64::from(input.u16())
    } else {
        input.u64()
    };
    let nlb = if input.u8() < 230 {
        u32::from(input.u8() % 64)
    } else {
        u32::from(input.u16())
    };
    sqe.cdw10 = (slba as u32).into();
    sqe.cdw11 = ((slba >> 32) as u32).into();
    sqe.cdw13 = u32::from(input.u8()).into();
    sqe.cdw12 = (nlb | (u32::from(input.u8()) << 24)).into();
    if sqe.opcode == IoOpcode::DATASET_MANAGEMENT {
        sqe.cdw10 = u32::from(input.u8()).into();
        sqe.cdw11 = u32::from(input.u8() & 0x7).into();
    }
    sqe.prp1 = guest::address(input).into();
    sqe.prp2 = guest::address(input).into();
    sqe
}

fn check(p: &Plan, iov: &[libc::iovec], ns: &NamespaceInfo, mem: &Memory) {
    let size = ns.num_blocks * u64::from(ns.block_size);
    let ops: Vec<Op> = match p {
        Plan::Complete(_) | Plan::ZoneReport(_) => return,
        Plan::Single(op) => vec![*op],
        Plan::Multi(ops) => ops.clone(),
    };
    for op in &ops {
        if op.kind != IoKind::Flush {
            let end = op.offset.checked_add(op.len).expect("range overflows");
            assert!(end <= size, "{op:?} past the namespace ({size} bytes)");
        }
        if op.kind.has_data() {
            let access = if op.kind == IoKind::Read {
                Access::Write
            } else {
                Access::Read
            };
            let ranges = mem.host_ranges(access);
            let total: usize = iov.iter().map(|v| v.iov_len).sum();
            assert_eq!(total as u64, op.len, "iovecs do not add up to the transfer");
            for v in iov {
                let (s, e) = (v.iov_base as usize, v.iov_base as usize + v.iov_len);
                assert!(
                    ranges.iter().any(|&(a, b)| a <= s && e <= b),
                    "iovec {s:#x}+{:#x} outside guest memory the device may access \
                     ({access:?}: {ranges:x?}); {op:?}",
                    v.iov_len
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    MEM.with_borrow_mut(|mem| {
        let mut input = Input::new(data);
        let limits = PrpLimits {
            page_size: 4096 << (input.u8() % 3),
            max_transfer: 4096 << (input.u8() % 6),
        };
        let bs_4k = input.bool();
        let zoned = input.bool();
        let ns = NamespaceInfo {
            nsid: 1,
            block_size: if bs_4k { 4096 } else { 512 },
            num_blocks: if bs_4k { 256 } else { 2048 },
            volatile_write_cache: true,
            write_zeroes: true,
            deallocate: true,
            zoned: zoned.then_some(leapio_controller::ZonedInfo {
                zone_blocks: 64,
                capacity: 48,
                max_open: 2,
                max_active: 3,
            }),
            nguid: [0; 16],
            eui64: [0; 8],
            uuid: [0; 16],
        };
        for _ in 0..input.u8() % 8 {
            let gpa = guest::address(&mut input);
            let len = input.below(512);
            let bytes = input.bytes(len);
            mem.write(gpa, bytes);
        }
        let snap = mem.domain.snapshot();
        let mut iov = Vec::new();
        while !input.is_empty() {
            let sqe = command(&mut input);
            iov.clear();
            let settings = Settings {
                max_transfer: limits.max_transfer,
                write_cache: true,
            };
            let mut data = PrpData {
                snap: &snap,
                limits,
                iov: &mut iov,
            };
            let p = plan(&sqe, &ns, settings, &mut data);
            if std::env::var_os("LEAPIO_FUZZ_DEBUG").is_some() {
                eprintln!("{limits:?} {sqe:?} -> {p:?}");
            }
            check(&p, &iov, &ns, mem);
        }
        drop(snap);
        mem.clear();
    });
});
