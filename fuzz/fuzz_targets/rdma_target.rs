//! The fabrics queue as the NVMe/RDMA target drives it
//! (`socp::fabrics::fuzzing`): up to four queues receive command capsules
//! (Connect on the admin and I/O queues, properties, admin and I/O commands
//! with keyed SGLs, in-capsule data, short capsules, other transports'
//! descriptors), their RDMA READs complete late or never, buffers run out,
//! peers go away, and the RAM backends complete in between.
//!
//! Properties: nothing panics; the target never reads or writes more of a
//! host's buffer than its keyed descriptor names, and only for a command
//! that is outstanding; every command gets at most one response, and every
//! command of a queue still connected at the end exactly one (but
//! Asynchronous Event Requests, which wait for events); after every peer
//! went away nothing is left: no command, controller or backend operation.
//!
//! Input: a byte (queues), then steps of [kind] [queue] [capsule...].
#![no_main]

use leapio_fuzz::rdma::host_capsule;
use leapio_fuzz::Input;
use leapio_nvme::{AdminOpcode, Sqe};
use libfuzzer_sys::fuzz_target;
use socp::fabrics::fuzzing::{keyed_len, Harness, Leftovers, Sent, Step};
use std::cell::RefCell;
use std::collections::HashMap;
use zerocopy::FromBytes;

thread_local! {
    static HARNESS: RefCell<Harness> = RefCell::new(Harness::new().expect("harness"));
}

/// What one queue's host knows.
#[derive(Default)]
struct Host {
    /// Commands sent and not answered, by CID (a capsule of garbage may
    /// repeat a CID: the target refuses it as a conflict), and how many.
    outstanding: HashMap<u16, (Sqe, u32)>,
    closed: bool,
}

fn check(hosts: &mut [Host], q: usize, s: &Sent) {
    if q == usize::MAX {
        // The end: every open queue's commands are answered.
        for h in hosts.iter().filter(|h| !h.closed) {
            let left: Vec<_> = h
                .outstanding
                .values()
                .map(|(s, _)| s)
                .filter(|s| s.opcode != AdminOpcode::ASYNC_EVENT_REQUEST)
                .map(|s| (s.opcode, s.cid.get()))
                .collect();
            assert!(left.is_empty(), "commands never answered: {left:?}");
        }
        return;
    }
    let h = &mut hosts[q];
    assert!(!h.closed, "the target spoke on a closed queue: {s:?}");
    if matches!(s, Sent::Close) {
        h.closed = true;
        return;
    }
    match s {
        Sent::Read { cid, len } | Sent::Write { cid, len } => {
            let (sqe, _) = h
                .outstanding
                .get(cid)
                .unwrap_or_else(|| panic!("data moved for command {cid}, not outstanding"));
            let max = keyed_len(sqe).unwrap_or_else(|| {
                panic!("data moved for command {cid}, which has no keyed descriptor")
            });
            assert!(
                *len <= max,
                "{len} bytes moved for command {cid}, whose buffer has {max}"
            );
        }
        Sent::Response(cqe) => {
            let cid = cqe.cid.get();
            let n = h
                .outstanding
                .get_mut(&cid)
                .map(|(_, n)| n)
                .unwrap_or_else(|| panic!("a response to command {cid}, not outstanding"));
            *n -= 1;
            if *n == 0 {
                h.outstanding.remove(&cid);
            }
        }
        Sent::Close => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let n = 1 + usize::from(input.u8() % 4);
    let mut cids = vec![0u16; n];
    let mut hosts: Vec<Host> = (0..n).map(|_| Host::default()).collect();
    // Commands each queue's host will have sent, in step order, to replay
    // into `hosts` as the steps run.
    let mut steps = Vec::new();
    while !input.is_empty() {
        let kind = input.u8();
        let conn = usize::from(input.u8()) % n;
        steps.push(match kind % 16 {
            0..=9 => Step::Capsule {
                conn,
                bytes: host_capsule(&mut input, &mut cids[conn]),
            },
            10 | 11 => Step::ReadDone { conn },
            12 | 13 => Step::Settle,
            14 => Step::Starve(kind & 0x80 != 0),
            _ => Step::Close { conn },
        });
    }
    // The host's view: a capsule's command is outstanding from when it is
    // sent; what the target sends is checked against it. The harness runs
    // the steps in order, so the commands are entered before the run and
    // each response must find its own.
    for s in &steps {
        if let Step::Capsule { conn, bytes } = s {
            if let Ok((sqe, _)) = Sqe::read_from_prefix(bytes) {
                hosts[*conn]
                    .outstanding
                    .entry(sqe.cid.get())
                    .or_insert((sqe, 0))
                    .1 += 1;
            }
        }
    }
    let left = HARNESS.with_borrow_mut(|h| h.run(n, &steps, &mut |q, s| check(&mut hosts, q, s)));
    assert_eq!(
        left,
        Leftovers::default(),
        "left behind after every peer went away"
    );
});
