//! The NVMe/TCP host backend's receive path (`leapio_backends`'s
//! NVMe/TCP queue): requests are submitted as the runtime submits them
//! (reads and writes into the harness's buffer, flushes, write zeroes,
//! deallocate), and the "target" answers with PDUs from the fuzzer:
//! CapsuleResps, C2HData (with or without digests, SUCCESS flags, at any
//! offset), R2Ts, C2HTermReqs, garbage, split at arbitrary points.
//!
//! Properties: nothing panics; each request completes at most once, and
//! only requests that were submitted; a connection error ends the run (the
//! queue would reconnect).
//!
//! Input: digests and in-capsule size (1 byte), then steps: submit, or
//! bytes from the target.
#![no_main]

use leapio_backends::nvme_tcp::fuzzing::{HostQueue, BLOCK_SIZE, BUFFER};
use leapio_backends::IoKind;
use leapio_fuzz::tcp::target_pdu;
use leapio_fuzz::Input;
use leapio_nvme::tcp::Digests;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;

const DEPTH: u32 = 8;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let cfg = input.u8();
    let dg = Digests::from_dgst(cfg & 3);
    let in_capsule = if cfg & 4 != 0 { 8192 } else { 0 };
    let mut q = HostQueue::new(dg.header, dg.data, DEPTH, in_capsule).expect("queue");
    let mut submitted = BTreeSet::new();
    let mut done = BTreeSet::new();
    let mut tag = 0u64;
    while !input.is_empty() {
        if input.u8() % 3 == 0 {
            let kind = [
                IoKind::Read,
                IoKind::Write,
                IoKind::WriteFua,
                IoKind::Flush,
                IoKind::WriteZeroes,
                IoKind::Deallocate,
                IoKind::Read,
                IoKind::Read,
            ][usize::from(input.u8() % 8)];
            let bs = u64::from(BLOCK_SIZE);
            let blocks = 1 + u64::from(input.u8() % 32);
            let len = if kind == IoKind::Flush {
                0
            } else {
                blocks * bs
            };
            let offset = u64::from(input.u16()) * bs;
            let at = input.below(BUFFER - 32 * 512);
            let pieces: Vec<usize> = (0..input.u8() % 4).map(|_| 1 + input.below(4096)).collect();
            tag += 1;
            if q.submit(tag, kind, offset, len, at, &pieces).is_ok() {
                submitted.insert(tag);
            }
        } else {
            let cids = u16::try_from(DEPTH).unwrap_or(1);
            let pdu = target_pdu(&mut input, dg, cids);
            let split = input.below(pdu.len() + 1);
            let r = q
                .receive(&pdu[..split])
                .and_then(|()| q.receive(&pdu[split..]));
            for c in q.take_completions() {
                assert!(
                    submitted.contains(&c.tag),
                    "completion of tag {} never submitted",
                    c.tag
                );
                assert!(done.insert(c.tag), "tag {} completed twice", c.tag);
            }
            let _ = q.take_sent();
            if r.is_err() {
                break;
            }
        }
    }
    assert!(q.in_flight() <= submitted.len() - done.len());
});
