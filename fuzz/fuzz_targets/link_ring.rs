//! The shared-memory rings of the link (the PCI carrier), driven from both
//! ends while the fuzzer may overwrite any word of the area (the far side
//! is another machine's software). Properties: nothing panics or reads
//! outside the area; as long as nobody corrupted the area, every message
//! sent is received intact, in order.
//!
//! Input: operations of one byte each, with arguments:
//! 0: runtime sends a ToHost (JSON from the input, or a fixed message),
//! 1: host sends a ToRuntime (likewise), 2: host receives, 3: runtime
//! receives, 4: write a u32 at an offset of the area (corruption),
//! 5: reset (the rings are intact again), 6: heartbeat/session.
#![no_main]

use leapio_fuzz::Input;
use leapio_link::proto::{ToHost, ToRuntime};
use leapio_link::ring::{End, RingMemory, Rings, RING_AREA};
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

struct Area(Box<[AtomicU64]>);

impl RingMemory for Area {
    fn base(&self) -> *mut u8 {
        // The area is only accessed through atomics and byte copies.
        self.0.as_ptr().cast_mut().cast()
    }
}

fn to_host(input: &mut Input<'_>) -> ToHost {
    let len = input.below(200);
    serde_json::from_slice(input.bytes(len)).unwrap_or_else(|_| ToHost::Ack {
        req: u64::from(input.u32()),
        status: 0,
    })
}

fn to_runtime(input: &mut Input<'_>) -> ToRuntime {
    let len = input.below(200);
    serde_json::from_slice(input.bytes(len)).unwrap_or_else(|_| ToRuntime::Reset {
        ctrl: format!("vm{}", input.u8()),
    })
}

fuzz_target!(|data: &[u8]| {
    let area = Arc::new(Area(
        (0..RING_AREA / 8).map(|_| AtomicU64::new(0)).collect(),
    ));
    let host = Rings::init(area.clone());
    let runtime = Rings::attach(area.clone(), End::Runtime);
    let mut input = Input::new(data);
    let mut corrupted = false;
    let mut up: VecDeque<ToHost> = VecDeque::new();
    let mut down: VecDeque<ToRuntime> = VecDeque::new();
    while !input.is_empty() {
        match input.u8() % 7 {
            0 => {
                let m = to_host(&mut input);
                let r = runtime.send(&m);
                if r.is_ok() {
                    up.push_back(m);
                }
            }
            1 => {
                let m = to_runtime(&mut input);
                let fds = m.fd_count();
                let r = host.send(&m);
                if fds == 0 && r.is_ok() {
                    down.push_back(m);
                }
            }
            2 => {
                let got = host.recv::<ToHost>();
                if !corrupted {
                    assert_eq!(got.expect("intact ring"), up.pop_front());
                }
            }
            3 => {
                let got = runtime.recv::<ToRuntime>();
                if !corrupted {
                    assert_eq!(got.expect("intact ring"), down.pop_front());
                }
            }
            4 => {
                let word = input.below(RING_AREA / 4);
                let v = input.u32();
                let w = &area.0[word / 2];
                let shift = (word % 2) * 32;
                let old = w.load(Ordering::Relaxed);
                let new = (old & !(0xffff_ffff << shift)) | (u64::from(v) << shift);
                w.store(new, Ordering::Relaxed);
                corrupted = true;
            }
            5 => {
                // Both rings empty again: what was corrupted is gone.
                host.reset();
                up.clear();
                down.clear();
                corrupted = false;
            }
            _ => {
                runtime.beat();
                runtime.set_session(input.u64());
                let _ = (host.heartbeat(), host.session());
            }
        }
    }
});
