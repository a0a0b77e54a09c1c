//! The device's side of a split virtqueue, against a driver that writes
//! whatever it likes into guest memory (descriptor tables, indirect
//! tables, the rings) and publishes any index. Properties: nothing panics
//! or loops; every chain taken has its device-readable buffers first,
//! lengths that add up, no more than the byte limit, and buffers that lie
//! in guest memory, the writable ones in memory the device may write; a
//! queue never takes more entries than were published.
//!
//! Input: one byte (queue size 2^(b%5), VIRTIO_F_EVENT_IDX in bit 7), then
//! operations of one byte each, with arguments:
//! 0: write up to 64 bytes at an offset of RAM (tables, rings, buffers),
//! 1: publish (the available index moves by 0..20),
//! 2: take a chain (and give it back used, half the time),
//! 3: interrupts and notifications (suppress, enable, needs_interrupt),
//! 4: a byte limit per chain.
#![no_main]

use leapio_ats::{Domain, Prot};
use leapio_fuzz::Input;
use leapio_virtio::{Chain, QueueLayout, SplitQueue};
use libfuzzer_sys::fuzz_target;

const RAM: u64 = 0x1_0000;
const RAM_SIZE: u64 = 0x1_0000;
const ROM: u64 = 0x4_0000;
const ROM_SIZE: u64 = 0x1000;
const AVAIL: u64 = RAM + 0x1000;

fn in_ram(gpa: u64, len: u64) -> bool {
    gpa >= RAM && gpa + len <= RAM + RAM_SIZE
}

fn in_rom(gpa: u64, len: u64) -> bool {
    gpa >= ROM && gpa + len <= ROM + ROM_SIZE
}

fuzz_target!(|data: &[u8]| {
    let d = Domain::new();
    if d.map(RAM, RAM_SIZE, Some(leapio_fuzz::memfd(RAM_SIZE)), 0, Prot::READ_WRITE)
        .is_err()
        || d.map(ROM, ROM_SIZE, Some(leapio_fuzz::memfd(ROM_SIZE)), 0, Prot::READ)
            .is_err()
    {
        return;
    }
    let snap = d.snapshot();
    let mut input = Input::new(data);
    let first = input.u8();
    let size = 1u16 << (first % 5);
    let layout = QueueLayout {
        size,
        desc: RAM,
        avail: AVAIL,
        used: RAM + 0x2000,
    };
    let Ok(mut q) = SplitQueue::new(layout, first & 0x80 != 0) else {
        panic!("a good layout refused");
    };
    let mut published = 0u16;
    let mut limit = u64::from(u32::MAX);
    let mut chain = Chain::default();
    while !input.is_empty() {
        match input.u8() % 5 {
            0 => {
                let at = input.below(usize::try_from(RAM_SIZE).unwrap_or(0) - 64) as u64;
                let len = input.below(65);
                let bytes = input.bytes(len);
                if snap.write_bytes(RAM + at, bytes).is_err() {
                    panic!("a write inside RAM failed");
                }
                // The driver's own index is the harness's to move.
                let _ = snap.store_u16_release(AVAIL + 2, published);
            }
            1 => {
                published = published.wrapping_add(input.below(20) as u16);
                let _ = snap.store_u16_release(AVAIL + 2, published);
            }
            2 => {
                let before = q.next_avail();
                let ahead = published.wrapping_sub(before);
                let r = q.pop(&snap, &mut chain);
                let moved = q.next_avail().wrapping_sub(before);
                if ahead == 0 || ahead > size {
                    assert_eq!(moved, 0, "took an entry that was not published");
                    assert!(!matches!(r, Ok(true)));
                } else {
                    assert_eq!(moved, 1, "left a published entry behind");
                }
                if let Ok(true) = r {
                    let mut seen_writable = false;
                    let (mut rd, mut wr) = (0u64, 0u64);
                    for s in &chain.segments {
                        let len = u64::from(s.len);
                        assert!(len > 0);
                        if s.writable {
                            seen_writable = true;
                            wr += len;
                            assert!(in_ram(s.gpa, len), "a writable buffer outside RAM");
                        } else {
                            assert!(!seen_writable, "readable after writable");
                            rd += len;
                            assert!(
                                in_ram(s.gpa, len) || in_rom(s.gpa, len),
                                "a buffer outside guest memory"
                            );
                        }
                    }
                    assert_eq!((rd, wr), (chain.readable, chain.writable));
                    assert!(rd + wr <= limit);
                    if input.bool() {
                        let n = u32::try_from(chain.writable).unwrap_or(u32::MAX);
                        let used = q.next_used();
                        q.push_used(&snap, chain.head, n).expect("the used ring is in RAM");
                        assert_eq!(q.next_used(), used.wrapping_add(1));
                    }
                }
            }
            3 => {
                let _ = q.suppress_notifications(&snap);
                let _ = q.enable_notifications(&snap);
                let _ = q.needs_interrupt(&snap, input.u16());
            }
            _ => {
                limit = u64::from(input.u32());
                q.set_max_chain_bytes(limit);
            }
        }
    }
});
