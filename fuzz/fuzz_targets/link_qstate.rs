//! The queue-state area as a successor runtime (and the host-driver) finds
//! it after a runtime died or misbehaved: a runtime journals commands
//! through the real API, then the fuzzer corrupts any bytes of the area
//! (header included), then the area is opened again from its descriptor
//! and every queue is recovered, cleared and counted as the host-driver and
//! the runtime do. Nothing may panic or reach outside the mapping, and the
//! recovery must account for every slot exactly once, consistently with the
//! records it read.
//!
//! Input: geometry (2 bytes), journal operations until a 0xff byte, then
//! patches of [offset: u16 or u32] [length: u8 % 16] [bytes].
#![no_main]

use leapio_fuzz::Input;
use leapio_link::qstate::{CqJournal, IoCounts, QueueState, SqJournal, HEADER_SIZE};
use leapio_nvme::Sqe;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use zerocopy::FromBytes;

fn journal(area: &Arc<QueueState>, queues: u16, input: &mut Input<'_>) {
    while !input.is_empty() {
        let op = input.u8();
        if op == 0xff {
            return;
        }
        let qid = u16::try_from(input.below(usize::from(queues) + 2)).unwrap_or(0);
        let i = u32::from(input.u8() % 70);
        match op % 9 {
            0 => {
                area.init_cq(qid, 2 + u32::from(input.u8()));
            }
            1 => {
                let cqid = u16::try_from(input.below(usize::from(queues) + 1)).unwrap_or(0);
                area.init_sq(qid, 2 + u32::from(input.u8()), cqid);
            }
            2 => {
                let sqe = Sqe::read_from_bytes(&input.array::<64>()).expect("64 bytes");
                let (sqid, seq) = (input.u16(), u64::from(input.u16()));
                if let Some(j) = CqJournal::new(area.clone(), qid) {
                    j.begin(i, sqid, seq, &sqe);
                }
            }
            3 => {
                let (seq, st, dw0, head) = (
                    u64::from(input.u16()),
                    input.u16(),
                    input.u32(),
                    input.u16(),
                );
                if let Some(j) = CqJournal::new(area.clone(), qid) {
                    j.complete(i, seq, st, dw0, head);
                }
            }
            4 => {
                let n = u64::from(input.u16());
                if let Some(j) = CqJournal::new(area.clone(), qid) {
                    j.posted(n);
                    j.head(u32::from(input.u8()));
                    j.free(i);
                }
            }
            5 => {
                let n = u64::from(input.u16());
                if let Some(j) = SqJournal::new(area.clone(), qid) {
                    j.consumed(n);
                }
            }
            6 => {
                if let Some(j) = CqJournal::new(area.clone(), qid) {
                    j.add_read(u64::from(input.u32()));
                    j.add_write(u64::from(input.u32()));
                    j.add_media_error();
                }
            }
            7 => {
                let v = input.u16();
                area.set_irq_masked(v, input.bool());
                area.set_irq_pending(v, input.bool());
            }
            _ => {
                area.clear_sq(qid);
            }
        }
    }
}

fn corrupt(file: &std::fs::File, len: u64, input: &mut Input<'_>) {
    while !input.is_empty() {
        // Mostly the header and the first queue's records.
        let off = if input.bool() {
            u64::from(input.u16())
        } else {
            u64::from(input.u32())
        } % len;
        let n = usize::from(input.u8() % 16);
        let bytes = input.bytes(n);
        let room = usize::try_from(len - off).unwrap_or(0);
        file.write_all_at(&bytes[..bytes.len().min(room)], off)
            .expect("write the area");
    }
}

/// What the successor does with the area.
fn recover(area: &Arc<QueueState>, queues: u16) {
    let mut total = IoCounts::default();
    for qid in 0..=queues.saturating_add(1) {
        total.add(area.cq_counts(qid));
        let outstanding = area.cq_outstanding(qid);
        let Some(cq) = CqJournal::new(area.clone(), qid) else {
            continue;
        };
        let consumed = |sqid: u16| {
            SqJournal::new(area.clone(), sqid)
                .and_then(|j| j.resume())
                .filter(|r| r.cqid == qid)
                .map(|r| r.consumed)
        };
        let Some(rec) = cq.recover(consumed) else {
            continue;
        };
        // Every slot exactly once.
        let capacity = cq.capacity(rec.size);
        let mut seen = BTreeSet::new();
        for s in rec
            .free
            .iter()
            .copied()
            .chain(rec.unposted.iter().map(|u| u.slot))
            .chain(rec.rerun.iter().map(|r| r.slot))
        {
            assert!(s < capacity, "slot {s} of {capacity}");
            assert!(seen.insert(s), "slot {s} recovered twice");
        }
        assert_eq!(seen.len(), capacity as usize);
        for u in &rec.unposted {
            assert!(u.cq_seq >= rec.posted);
        }
        for r in &rec.rerun {
            assert!(consumed(r.sqid).is_some_and(|c| r.fetch_seq < c));
        }
        assert!(outstanding as usize >= rec.unposted.len());
        // Queues deleted afterwards.
        area.clear_sq(qid);
        total.add(area.clear_cq(qid));
    }
    for v in [0, 1, 31, 32, 2047, 2048, u16::MAX] {
        area.take_irq_pending(v);
        area.irq_masked(v);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let queues = 1 + u16::from(input.u8() % 4);
    let slots = 1 + u32::from(input.u8() % 64);
    let area = Arc::new(QueueState::create(queues, slots).expect("create the area"));
    journal(&area, queues, &mut input);
    let fd = area.fd().try_clone_to_owned().expect("dup");
    let file = std::fs::File::from(fd.try_clone().expect("dup"));
    let len = u64::try_from(area.len().max(HEADER_SIZE)).unwrap_or(u64::MAX);
    corrupt(&file, len, &mut input);
    let Ok(successor) = QueueState::open(fd) else {
        return;
    };
    let successor = Arc::new(successor);
    recover(&successor, queues);
    // The first runtime's view of the same memory, corrupted under it.
    recover(&area, queues);
});
