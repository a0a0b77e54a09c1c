//! Seeded random input from a hostile guest and a hostile hypervisor: what a
//! fuzzer would feed, replayable from its seed, fast enough for every CI
//! run. Every random NVMe command must get exactly one completion (any
//! status), every random vfio-user message an answer or a closed
//! connection, and afterwards socp must still serve correct data.
//! (Coverage-guided fuzzing of the same parsers, in-process: fuzz/ and
//! scripts/fuzz.sh.)

// Random values are deliberately cut down to the field widths.
#![allow(clippy::cast_possible_truncation)]

use leapio_nvme::{AdminOpcode, IoOpcode, Sqe};
use leapio_tests::driver::PAGE;
use leapio_tests::server::TestServer;
use leapio_tests::vfio_user_client::{Client, ClientError};
use leapio_tests::Driver;
use std::collections::BTreeSet;
use std::os::unix::net::UnixStream;
use std::time::Duration;

const MEM: u64 = 64 << 20;
const SEED: u64 = 0x1ea9_10f0_0d5e_ed01;

/// splitmix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A data pointer: mostly inside the scratch area (so reads land there and
/// nowhere else in the driver's memory), sometimes misaligned, outside
/// guest RAM, or anything at all.
fn prp(rng: &mut Rng, scratch: u64, scratch_len: u64) -> u64 {
    match rng.below(10) {
        0..=5 => scratch + rng.below(scratch_len / PAGE - 64) * PAGE,
        6 => scratch + rng.below(scratch_len - 64 * PAGE) + rng.below(4),
        7 => MEM + rng.below(1 << 30),
        8 => rng.next(),
        _ => 0,
    }
}

fn random_io(rng: &mut Rng, scratch: u64, scratch_len: u64) -> Sqe {
    let opcode = if rng.chance(85) {
        rng.pick(&[
            IoOpcode::READ,
            IoOpcode::WRITE,
            IoOpcode::FLUSH,
            IoOpcode::WRITE_ZEROES,
            IoOpcode::DATASET_MANAGEMENT,
            IoOpcode::COMPARE,
            IoOpcode::WRITE_UNCORRECTABLE,
        ])
    } else {
        rng.next() as u8
    };
    let any = rng.next() as u32;
    let nsid = rng.pick(&[1, 1, 1, 2, 2, 0, 3, u32::MAX, any]);
    // Mostly small ranges inside the namespaces, sometimes anything.
    let slba = if rng.chance(80) {
        rng.below(20_000)
    } else {
        rng.next()
    };
    let nlb = if rng.chance(80) {
        rng.below(64) as u32
    } else {
        rng.next() as u32 & 0xffff
    };
    let cdw12 = nlb
        | if rng.chance(10) {
            rng.next() as u32 & 0xffff_0000
        } else {
            0
        };
    Sqe {
        opcode,
        flags: if rng.chance(90) { 0 } else { rng.next() as u8 },
        nsid: nsid.into(),
        prp1: prp(rng, scratch, scratch_len).into(),
        prp2: prp(rng, scratch, scratch_len).into(),
        cdw10: (slba as u32).into(),
        cdw11: ((slba >> 32) as u32
            | if opcode == IoOpcode::DATASET_MANAGEMENT {
                4
            } else {
                0
            })
        .into(),
        cdw12: cdw12.into(),
        cdw13: (rng.next() as u32).into(),
        cdw14: (rng.next() as u32).into(),
        cdw15: (rng.next() as u32).into(),
        ..Default::default()
    }
}

/// Admin commands that complete on their own and cannot take away the
/// test's own queues or redirect its doorbells (queue creation/deletion,
/// Asynchronous Event Request and Doorbell Buffer Config are exercised by
/// the misbehaving-guest tests instead).
fn random_admin(rng: &mut Rng, scratch: u64, scratch_len: u64) -> Sqe {
    let opcode = if rng.chance(85) {
        rng.pick(&[
            AdminOpcode::IDENTIFY,
            AdminOpcode::GET_LOG_PAGE,
            AdminOpcode::GET_FEATURES,
            AdminOpcode::SET_FEATURES,
            AdminOpcode::ABORT,
            AdminOpcode::KEEP_ALIVE,
            AdminOpcode::FORMAT_NVM,
            AdminOpcode::NS_MANAGEMENT,
        ])
    } else {
        loop {
            let op = rng.next() as u8;
            if ![
                AdminOpcode::CREATE_CQ,
                AdminOpcode::CREATE_SQ,
                AdminOpcode::DELETE_CQ,
                AdminOpcode::DELETE_SQ,
                AdminOpcode::ASYNC_EVENT_REQUEST,
                AdminOpcode::DOORBELL_BUFFER_CONFIG,
            ]
            .contains(&op)
            {
                break op;
            }
        }
    };
    let cdw10 = if rng.chance(70) {
        rng.below(0x20) as u32 | ((rng.below(0x400) as u32) << 16)
    } else {
        rng.next() as u32
    };
    Sqe {
        opcode,
        flags: if rng.chance(90) { 0 } else { rng.next() as u8 },
        nsid: {
            let any = rng.next() as u32;
            rng.pick(&[0, 1, 2, 3, u32::MAX, any])
        }
        .into(),
        prp1: prp(rng, scratch, scratch_len).into(),
        prp2: prp(rng, scratch, scratch_len).into(),
        cdw10: cdw10.into(),
        cdw11: (rng.next() as u32).into(),
        cdw12: (rng.below(8192) as u32).into(),
        cdw13: 0.into(),
        cdw14: (rng.next() as u32).into(),
        cdw15: (rng.next() as u32).into(),
        ..Default::default()
    }
}

/// Submit a batch on `qid` and check that exactly these commands complete;
/// returns how many succeeded and how many failed.
fn run_batch(d: &mut Driver, qid: u16, batch: Vec<Sqe>) -> (usize, usize) {
    let (mut ok, mut failed) = (0, 0);
    let mut want = BTreeSet::new();
    for sqe in batch {
        want.insert(d.push(qid, sqe));
    }
    d.ring(qid);
    while !want.is_empty() {
        let c = d
            .wait(qid)
            .unwrap_or_else(|e| panic!("queue {qid}: {e} (still waiting for {want:?})"));
        let cid = c.cid.get();
        assert!(
            want.remove(&cid),
            "queue {qid}: completion for cid {cid} that was not outstanding"
        );
        if c.status_field().is_success() {
            ok += 1;
        } else {
            failed += 1;
        }
    }
    (ok, failed)
}

fn check_data_path(d: &mut Driver) {
    for (qid, nsid) in [(1u16, 1u32), (2, 2)] {
        let data: Vec<u8> = (0..12288u32)
            .map(|i| (i * 7 + u32::from(qid)) as u8)
            .collect();
        let c = d.write_blocks(qid, nsid, 4096, 512, &data).expect("write");
        Driver::check("write", &c).expect("write after fuzzing");
        let (c, back) = d
            .read_blocks(qid, nsid, 4096, 512, data.len() as u64)
            .expect("read");
        Driver::check("read", &c).expect("read after fuzzing");
        assert!(
            back == data,
            "data mismatch on namespace {nsid} after fuzzing"
        );
    }
}

#[test]
fn random_commands_each_get_one_completion_and_socp_keeps_serving() {
    let srv = TestServer::start(&["ns=ram:16M,ns=ram:8M,io-queues=4"], 1);
    let mut d = Driver::bring_up(srv.sock(0), MEM, 2, 64).expect("bring up");
    d.timeout = Duration::from_secs(10);
    let scratch_len = 4 << 20;
    let scratch = d.mem.alloc(scratch_len, PAGE);
    let mut rng = Rng(SEED);
    let (mut ok, mut failed) = (0, 0);
    for round in 0..150 {
        let qid = rng.pick(&[0u16, 1, 1, 2, 2]);
        let n = 1 + rng.below(if qid == 0 { 8 } else { 32 }) as usize;
        let batch = (0..n)
            .map(|_| {
                if qid == 0 {
                    random_admin(&mut rng, scratch, scratch_len)
                } else {
                    random_io(&mut rng, scratch, scratch_len)
                }
            })
            .collect();
        let (o, f) = run_batch(&mut d, qid, batch);
        ok += o;
        failed += f;
        if round % 50 == 49 {
            check_data_path(&mut d);
        }
    }
    check_data_path(&mut d);
    // The generator must reach both the I/O paths and the error paths.
    assert!(
        ok > 200 && failed > 200,
        "{ok} commands succeeded, {failed} failed"
    );
    eprintln!("{ok} commands succeeded, {failed} failed");
}

fn header(msg_id: u16, command: u16, msg_size: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(16);
    h.extend_from_slice(&msg_id.to_le_bytes());
    h.extend_from_slice(&command.to_le_bytes());
    h.extend_from_slice(&msg_size.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

fn connect_raw(path: &std::path::Path) -> Client {
    let s = UnixStream::connect(path).expect("connect");
    let c = Client::from_stream_unnegotiated(s);
    c.set_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c
}

#[test]
fn random_vfio_user_messages_are_answered_or_close_the_connection() {
    let srv = TestServer::start(&["ns=ram:4M"], 1);
    let mut rng = Rng(SEED ^ 0xffff);
    let mut client = connect_raw(srv.sock(0));
    let mut closed = 0;
    for i in 0..1500u32 {
        // Well framed (msg_size matches), no NO_REPLY flag, random command
        // and body; the occasional real VERSION so later messages get past
        // the handshake.
        let command = if i % 50 == 0 { 1 } else { rng.below(20) as u16 };
        let any = rng.below(600);
        let body_len = rng.pick(&[0, 4, 8, 16, 24, 32, 40, 64, any]) as usize;
        let mut body: Vec<u8> = (0..body_len).map(|_| rng.next() as u8).collect();
        if command == 1 && body_len >= 4 {
            body = br#"{"capabilities":{}}"#.to_vec();
            let mut v = vec![0, 0, 1, 0];
            v.extend_from_slice(&body);
            body = v;
        }
        let mut msg = header(i as u16, command, 16 + body.len() as u32);
        msg.extend_from_slice(&body);
        match client.send_raw(&msg, &[]) {
            Ok(reply) => assert!(
                reply.len() >= 16,
                "message {i}: reply shorter than a header"
            ),
            Err(ClientError::Closed) => {
                closed += 1;
                client = connect_raw(srv.sock(0));
            }
            Err(e) => panic!("message {i} (command {command}, {} bytes): {e}", body.len()),
        }
    }
    drop(client);
    // The server still brings up a controller and moves correct data.
    let mut d = Driver::bring_up(srv.sock(0), MEM, 1, 32).expect("bring up after garbage");
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 13) as u8).collect();
    Driver::check(
        "write",
        &d.write_blocks(1, 1, 10, 512, &data).expect("write"),
    )
    .expect("write status");
    let (c, back) = d.read_blocks(1, 1, 10, 512, 8192).expect("read");
    Driver::check("read", &c).expect("read status");
    assert!(back == data);
    eprintln!("{closed} connections closed by the server along the way");
}
