//! A guest (and a hypervisor) that misbehaves: every bad command gets the
//! status NVMe base specification 1.4 names for it, every bad vfio-user
//! message costs only its own connection, and socp keeps serving: after
//! each mistake a write + read-back still works on the misbehaving
//! controller and on a second controller of the same server, no socp thread
//! panicked, and guest memory / media outside what a command could
//! legitimately touch is unchanged.

use leapio_nvme::cmd::AsyncEvent;
use leapio_nvme::regs::{csts, offset};
use leapio_nvme::{AdminOpcode, Cqe, IoOpcode, Sqe, Status};
use leapio_tests::driver::{create_cq, create_sq, PAGE};
use leapio_tests::server::TestServer;
use leapio_tests::vfio_user_client::{Client, ClientError};
use leapio_tests::{Driver, GuestMem};
use leapio_vmm_shim::vfio_user::MAX_MSG_SIZE;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Duration;

/// Guest RAM of every driver: GPA 0..MEM is DMA-mapped, nothing above it.
const MEM: u64 = 64 << 20;
const BS: u32 = 512;
/// Namespace 1 of the misbehaving controller: 16 MiB of 512-byte blocks.
const NS1_BLOCKS: u64 = (16 << 20) / 512;
/// LBAs the liveness round trips use on the misbehaving controller (the
/// bystander's use LBAs 0..2048); tests keep their own data elsewhere.
const ALIVE_LBA: u64 = NS1_BLOCKS / 2;
/// Liveness round trip size: more than two pages, so it takes a PRP list.
const ALIVE_LEN: usize = 12288 + 1024;
/// How long any single completion may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- helpers

static SOCP_PANICS: AtomicUsize = AtomicUsize::new(0);

/// Count panics on socp's own threads (pollers `socp-poller-N`, control
/// threads `socp-ctrl-N`): they run detached, so a panic there would
/// otherwise only show up as a later timeout.
fn watch_socp_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("socp-"))
            {
                SOCP_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            prev(info);
        }));
    });
}

#[track_caller]
fn assert_no_socp_panics() {
    assert_eq!(
        SOCP_PANICS.load(Ordering::SeqCst),
        0,
        "a socp thread panicked"
    );
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let [lo, ..] = i.to_le_bytes();
            let [block, ..] = (i >> 9).to_le_bytes();
            lo.wrapping_mul(31).wrapping_add(seed) ^ block
        })
        .collect()
}

fn us(x: u64) -> usize {
    usize::try_from(x).expect("fits in usize")
}

/// A Read/Write SQE with raw PRPs; `nlb` is 1-based.
fn rw(opcode: u8, nsid: u32, slba: u64, nlb: u32, prp1: u64, prp2: u64) -> Sqe {
    Sqe {
        opcode,
        nsid: nsid.into(),
        prp1: prp1.into(),
        prp2: prp2.into(),
        cdw10: u32::try_from(slba & 0xffff_ffff).unwrap().into(),
        cdw11: u32::try_from(slba >> 32).unwrap().into(),
        cdw12: (nlb - 1).into(),
        ..Default::default()
    }
}

#[track_caller]
fn expect(c: &Cqe, want: Status, what: &str) {
    let got = c.status_field();
    assert!(got.same_code(want), "{what}: status {got}, expected {want}");
}

/// Write `len` bytes of a fresh pattern at `slba` through `qid`, read them
/// back through `read_qid`, compare.
#[track_caller]
fn round_trip(d: &mut Driver, qid: u16, read_qid: u16, slba: u64, seed: u8) {
    let data = pattern(seed, ALIVE_LEN);
    let c = d.write_blocks(qid, 1, slba, BS, &data).expect("write");
    expect(&c, Status::SUCCESS, "liveness write");
    let (c, back) = d
        .read_blocks(read_qid, 1, slba, BS, ALIVE_LEN as u64)
        .expect("read");
    expect(&c, Status::SUCCESS, "liveness read");
    assert!(back == data, "liveness read-back mismatch");
}

/// Connect a driver without risking an unbounded wait for the accept.
fn connect(path: &Path) -> Driver {
    let path = path.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(Driver::connect(&path, MEM));
    });
    let mut d = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the server did not accept a new client")
        .expect("connect");
    d.timeout = TIMEOUT;
    d
}

/// Enable, ask for 4 I/O queue pairs and create `n` (`entries` each,
/// vectors 1..=n).
fn bring_up(path: &Path, n: u16, entries: u32) -> Driver {
    let mut d = connect(path);
    d.enable(32).expect("enable");
    d.set_queue_count(4).expect("set queue count");
    for q in 1..=n {
        d.create_queue_pair(q, entries, q)
            .expect("create queue pair");
    }
    d
}

/// A server with the misbehaving controller 0 (`spec0`) and a bystander
/// controller 1, each with a driver brought up with two queue pairs (the
/// misbehaving one may create two more).
struct Env {
    _srv: TestServer,
    sock0: std::path::PathBuf,
    bad: Option<Driver>,
    other: Driver,
    seed: u8,
}

impl Env {
    fn new(spec0: &str) -> Env {
        Env::with_pollers(spec0, 2)
    }

    /// With one poller, both controllers share it: whatever stalls the
    /// poller for one stalls the other.
    fn with_pollers(spec0: &str, pollers: usize) -> Env {
        watch_socp_panics();
        let srv = TestServer::start(&[spec0, "ns=ram:8M,io-queues=2"], pollers);
        let bad = bring_up(srv.sock(0), 2, 32);
        let other = bring_up(srv.sock(1), 2, 32);
        Env {
            sock0: srv.sock(0).to_owned(),
            _srv: srv,
            bad: Some(bad),
            other,
            seed: 0,
        }
    }

    fn ram() -> Env {
        Env::new("ns=ram:16M,ns=ram:8M,io-queues=4")
    }

    /// Both controllers still serve I/O with correct data, on both queues.
    #[track_caller]
    fn alive(&mut self) {
        self.seed = self.seed.wrapping_add(1);
        let s = self.seed;
        let lba = ALIVE_LBA + u64::from(s % 64) * 64;
        round_trip(self.bad.as_mut().expect("driver"), 1, 2, lba, s);
        round_trip(self.bad.as_mut().expect("driver"), 2, 1, lba + 32, s ^ 0x55);
        round_trip(
            &mut self.other,
            1 + u16::from(s % 2),
            1,
            u64::from(s % 64) * 32,
            s,
        );
        assert_no_socp_panics();
    }

    fn bad(&mut self) -> &mut Driver {
        self.bad
            .as_mut()
            .expect("the misbehaving driver is connected")
    }

    /// Submit one command on the misbehaving controller and wait for it.
    #[track_caller]
    fn bad_cmd(&mut self, qid: u16, sqe: Sqe) -> Cqe {
        self.bad().command(qid, sqe).expect("no completion")
    }
}

/// Raw 16-byte vfio-user header.
fn raw_header(msg_id: u16, command: u16, msg_size: u32, flags: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(16);
    h.extend_from_slice(&msg_id.to_le_bytes());
    h.extend_from_slice(&command.to_le_bytes());
    h.extend_from_slice(&msg_size.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

/// Send `bytes` and expect the server to close the connection (possibly
/// after an error reply).
#[track_caller]
fn expect_closed(client: &mut Client, bytes: &[u8], what: &str) {
    match client.send_raw(bytes, &[]) {
        Err(ClientError::Closed) => {}
        Ok(reply) => {
            assert!(reply.len() >= 16, "{what}: short reply");
            let flags = u32::from_le_bytes([reply[8], reply[9], reply[10], reply[11]]);
            assert_ne!(flags & 0x20, 0, "{what}: a success reply");
            // And then the connection must be gone.
            let r = client.send_raw(&raw_header(9, 1, 16, 0), &[]);
            assert!(
                matches!(r, Err(ClientError::Closed)),
                "{what}: connection still open: {r:?}"
            );
        }
        Err(e) => panic!("{what}: expected the connection closed, got {e}"),
    }
}

// ------------------------------------------------------------------ tests

#[test]
fn unknown_opcodes_are_invalid_opcode() {
    let mut e = Env::ram();
    // Reserved, vendor specific, and optional commands socp does not offer
    // (Write Uncorrectable, Compare: ONCS bit 0 clear).
    for op in [
        0x03u8,
        0x07,
        0x7f,
        0x83,
        0xc1,
        0xff,
        IoOpcode::COMPARE,
        IoOpcode::WRITE_UNCORRECTABLE,
    ] {
        let buf = e.bad().mem.alloc(PAGE, PAGE);
        let c = e.bad_cmd(1, rw(op, 1, 0, 1, buf, 0));
        expect(&c, Status::INVALID_OPCODE, &format!("I/O opcode {op:#x}"));
        e.alive();
    }
    // Reserved, vendor specific, and optional admin commands not in OACS
    // (Namespace Management, Format NVM, Firmware Download).
    for op in [
        0x03u8,
        0x0b,
        0x7f,
        0xc5,
        0xff,
        AdminOpcode::NS_MANAGEMENT,
        AdminOpcode::FORMAT_NVM,
        AdminOpcode::FW_DOWNLOAD,
    ] {
        let c = e.bad_cmd(
            0,
            Sqe {
                opcode: op,
                ..Default::default()
            },
        );
        expect(&c, Status::INVALID_OPCODE, &format!("admin opcode {op:#x}"));
        e.alive();
    }
}

#[test]
fn bad_namespace_ids_are_invalid_namespace() {
    let mut e = Env::ram();
    // Two namespaces: 3 is past the last, 0xffffffff (broadcast) is not a
    // namespace a Read or Write can address.
    for nsid in [0u32, 3, 4, 1000, u32::MAX - 1, u32::MAX] {
        for op in [IoOpcode::READ, IoOpcode::WRITE] {
            let buf = e.bad().mem.alloc(PAGE, PAGE);
            let c = e.bad_cmd(1, rw(op, nsid, 0, 8, buf, 0));
            expect(
                &c,
                Status::INVALID_NAMESPACE,
                &format!("opcode {op:#x} nsid {nsid:#x}"),
            );
            e.alive();
        }
    }
    // Namespace 2 itself is fine.
    let data = pattern(9, 4096);
    let c = e.bad().write_blocks(1, 2, 0, BS, &data).unwrap();
    expect(&c, Status::SUCCESS, "write to namespace 2");
}

#[test]
fn lba_ranges_past_the_end_are_lba_out_of_range() {
    let mut e = Env::ram();
    let n = NS1_BLOCKS;
    // Known data at both ends of the namespace: a refused write must not
    // have touched it.
    let head = pattern(1, 8 * 512);
    let tail = pattern(2, 8 * 512);
    expect(
        &e.bad().write_blocks(1, 1, 0, BS, &head).unwrap(),
        Status::SUCCESS,
        "head",
    );
    expect(
        &e.bad().write_blocks(1, 1, n - 8, BS, &tail).unwrap(),
        Status::SUCCESS,
        "tail",
    );
    let cases: [(u64, u32); 8] = [
        (n, 1),
        (n - 1, 2),
        (n - 4, 8),
        (n + 1000, 8),
        (u64::MAX, 1),
        // slba + nlb wraps to 4: an unchecked add would hit LBAs 0..4.
        (u64::MAX - 3, 8),
        (u64::MAX / 512 + 1, 1),
        (1 << 63, 8),
    ];
    for (slba, nlb) in cases {
        let len = u64::from(nlb) * 512;
        for op in [IoOpcode::READ, IoOpcode::WRITE] {
            let buf = e.bad().mem.alloc(len, PAGE);
            e.bad().mem.fill(buf, len, 0xee);
            let sqe = e.bad().rw_sqe(op, 1, slba, nlb, buf, len, 0);
            let c = e.bad_cmd(1, sqe);
            expect(
                &c,
                Status::LBA_OUT_OF_RANGE,
                &format!("opcode {op:#x} slba {slba:#x} nlb {nlb}"),
            );
            if op == IoOpcode::READ {
                assert!(
                    e.bad()
                        .mem
                        .read_vec(buf, us(len))
                        .iter()
                        .all(|&b| b == 0xee),
                    "a refused read wrote guest memory"
                );
            }
            e.alive();
        }
    }
    let (_, back) = e.bad().read_blocks(1, 1, 0, BS, 8 * 512).unwrap();
    assert!(back == head, "a refused write changed LBAs 0..8");
    let (_, back) = e.bad().read_blocks(2, 1, n - 8, BS, 8 * 512).unwrap();
    assert!(back == tail, "a refused write changed the last LBAs");
    // The last block itself is in range.
    let (c, _) = e.bad().read_blocks(1, 1, n - 1, BS, 512).unwrap();
    expect(&c, Status::SUCCESS, "read of the last block");
}

#[test]
fn bad_prps_are_data_transfer_error_or_prp_offset_invalid() {
    let mut e = Env::ram();
    // Known media contents under every bad write.
    let media = pattern(3, 16384);
    expect(
        &e.bad().write_blocks(1, 1, 0, BS, &media).unwrap(),
        Status::SUCCESS,
        "seed media",
    );

    // Guest buffers filled with a canary: a refused read must leave them,
    // as it must leave the top page of RAM (where some PRPs start).
    let buf = e.bad().mem.alloc(4 * PAGE, PAGE);
    let list = e.bad().mem.alloc(PAGE, PAGE);
    let top = MEM - PAGE;
    let canary = |d: &Driver| {
        d.mem.fill(buf, 4 * PAGE, 0xc3);
        d.mem.fill(top, PAGE - 16, 0xc3);
    };
    let untouched = |d: &Driver| {
        let a = d.mem.read_vec(buf, us(4 * PAGE));
        let b = d.mem.read_vec(top, us(PAGE - 16));
        a.iter().chain(b.iter()).all(|&x| x == 0xc3)
    };

    // (what, nlb, prp1, prp2, PRP list entries to store first and where, expected)
    type Case = (&'static str, u32, u64, u64, Option<(u64, Vec<u64>)>, Status);
    let dte = Status::DATA_TRANSFER_ERROR;
    let poi = Status::PRP_OFFSET_INVALID;
    let cases: Vec<Case> = vec![
        ("PRP1 just above guest RAM", 8, MEM, 0, None, dte),
        ("PRP1 far above guest RAM", 8, 1 << 40, 0, None, dte),
        (
            "PRP1 in the last page of u64",
            1,
            u64::MAX - 511,
            0,
            None,
            dte,
        ),
        (
            "PRP1 in the top page, PRP2 above RAM",
            8,
            top + 3584,
            MEM,
            None,
            dte,
        ),
        ("PRP1 not dword aligned (+2)", 8, buf + 2, 0, None, poi),
        ("PRP1 not dword aligned (+1)", 1, buf + 1, 0, None, poi),
        (
            "PRP2 page with an offset",
            16,
            buf,
            buf + PAGE + 512,
            None,
            poi,
        ),
        (
            "PRP2 page with a dword offset",
            16,
            buf,
            buf + PAGE + 4,
            None,
            poi,
        ),
        ("PRP2 page above guest RAM", 16, buf, MEM, None, dte),
        (
            "PRP list entry above guest RAM",
            32,
            buf,
            list,
            Some((list, vec![buf + PAGE, MEM + 5 * PAGE, buf + 3 * PAGE])),
            dte,
        ),
        (
            "PRP list entry in the last page of u64",
            32,
            buf,
            list,
            Some((list, vec![buf + PAGE, buf + 2 * PAGE, !(PAGE - 1)])),
            dte,
        ),
        (
            "PRP list entry with an offset",
            32,
            buf,
            list,
            Some((list, vec![buf + PAGE, buf + 2 * PAGE + 8, buf + 3 * PAGE])),
            poi,
        ),
        (
            "PRP list pointer above guest RAM",
            32,
            buf,
            MEM + 2 * PAGE,
            None,
            dte,
        ),
        ("PRP list pointer at the top of u64", 32, buf, !7, None, dte),
        (
            "PRP list pointer not qword aligned",
            32,
            buf,
            list + 4,
            None,
            poi,
        ),
        // A list in the last 16 bytes of RAM: one data entry, then the
        // pointer to the next list page, which is above RAM.
        (
            "PRP list chained to a page above RAM",
            32,
            buf,
            MEM - 16,
            Some((MEM - 16, vec![buf + PAGE, MEM])),
            dte,
        ),
    ];
    for (what, nlb, prp1, prp2, entries, want) in cases {
        if let Some((at, entries)) = entries {
            let bytes: Vec<u8> = entries.iter().flat_map(|x| x.to_le_bytes()).collect();
            e.bad().mem.write(at, &bytes);
        }
        for op in [IoOpcode::READ, IoOpcode::WRITE] {
            canary(e.bad());
            let c = e.bad_cmd(1, rw(op, 1, 0, nlb, prp1, prp2));
            expect(&c, want, &format!("{what} (opcode {op:#x})"));
            assert!(untouched(e.bad()), "{what}: guest memory changed");
            e.alive();
        }
    }
    let (_, back) = e.bad().read_blocks(2, 1, 0, BS, 16384).unwrap();
    assert!(back == media, "a refused write changed the media");

    // The admin path (Identify data) follows the same rules.
    let c = e.bad_cmd(
        0,
        Sqe {
            opcode: AdminOpcode::IDENTIFY,
            prp1: MEM.into(),
            cdw10: 1.into(),
            ..Default::default()
        },
    );
    expect(&c, dte, "Identify into memory above guest RAM");
    let c = e.bad_cmd(
        0,
        Sqe {
            opcode: AdminOpcode::IDENTIFY,
            prp1: (buf + 2).into(),
            cdw10: 1.into(),
            ..Default::default()
        },
    );
    expect(&c, poi, "Identify with PRP1 not dword aligned");
    e.alive();
}

#[test]
fn transfers_above_mdts_are_invalid_field() {
    let mut e = Env::ram();
    // MDTS 5: 128 KiB. 128 KiB is fine, one block more is not.
    let len = 256 << 10;
    let buf = e.bad().mem.alloc(len, PAGE);
    for (nlb, want) in [
        (256u32, Status::SUCCESS),
        (257, Status::INVALID_FIELD),
        (512, Status::INVALID_FIELD),
        // The whole namespace: in range, far above MDTS.
        (u32::try_from(NS1_BLOCKS).unwrap(), Status::INVALID_FIELD),
    ] {
        for op in [IoOpcode::WRITE, IoOpcode::READ] {
            let bytes = (u64::from(nlb) * 512).min(len);
            let mut sqe = e.bad().rw_sqe(op, 1, 0, 1, buf, bytes, 0);
            sqe.cdw12 = (nlb - 1).into();
            let c = e.bad_cmd(1, sqe);
            expect(&c, want, &format!("opcode {op:#x}, {nlb} blocks"));
            e.alive();
        }
    }
}

#[test]
fn invalid_doorbell_values_raise_an_async_event_and_the_queue_recovers() {
    let mut e = Env::ram();
    let dw0 = AsyncEvent::dw0(
        AsyncEvent::TYPE_ERROR,
        AsyncEvent::INFO_INVALID_DOORBELL_VALUE,
        0x01,
    );
    assert_eq!(dw0, 0x0001_0100);

    // SQ tail past the end of I/O SQ 1 (32 entries).
    let aer = e.bad().push(
        0,
        Sqe {
            opcode: AdminOpcode::ASYNC_EVENT_REQUEST,
            ..Default::default()
        },
    );
    e.bad().ring(0);
    e.bad().ring_sq_raw(1, 32 + 5);
    let c = e.bad().wait(0).expect("the AER did not complete");
    assert_eq!(c.cid.get(), aer);
    expect(&c, Status::SUCCESS, "AER");
    assert_eq!(c.dw0.get(), dw0, "AER dword 0");
    // Queue 2 and the other controller work meanwhile (round trips on 2 only).
    round_trip(e.bad(), 2, 2, ALIVE_LBA, 0x21);
    round_trip(&mut e.other, 1, 1, 0, 0x22);
    // A valid tail: queue 1 serves again (the driver's own tail is valid).
    e.alive();

    // Same with u32::MAX, and with an outstanding AER posted afterwards.
    e.bad().ring_sq_raw(1, u32::MAX);
    round_trip(e.bad(), 2, 2, ALIVE_LBA, 0x23);
    let aer = e.bad().push(
        0,
        Sqe {
            opcode: AdminOpcode::ASYNC_EVENT_REQUEST,
            ..Default::default()
        },
    );
    e.bad().ring(0);
    let c = e.bad().wait(0).expect("the AER did not complete");
    assert_eq!((c.cid.get(), c.dw0.get()), (aer, dw0));
    e.alive();

    // CQ head past the end of I/O CQ 2.
    let aer = e.bad().push(
        0,
        Sqe {
            opcode: AdminOpcode::ASYNC_EVENT_REQUEST,
            ..Default::default()
        },
    );
    e.bad().ring(0);
    e.bad().ring_cq_raw(2, 1000);
    let c = e.bad().wait(0).expect("the AER did not complete");
    assert_eq!((c.cid.get(), c.dw0.get()), (aer, dw0));
    expect(&c, Status::SUCCESS, "AER");
    round_trip(e.bad(), 1, 1, ALIVE_LBA, 0x24);
    // Restore the head we really have: queue 2 serves again.
    let head = e.bad().queues[&2].cq_head;
    e.bad().ring_cq_raw(2, head);
    e.alive();
}

#[test]
fn invalid_admin_doorbell_values_raise_an_async_event_too() {
    let mut e = Env::ram();
    let dw0 = AsyncEvent::dw0(
        AsyncEvent::TYPE_ERROR,
        AsyncEvent::INFO_INVALID_DOORBELL_VALUE,
        0x01,
    );
    let keep_alive = Sqe {
        opcode: AdminOpcode::KEEP_ALIVE,
        ..Default::default()
    };
    for bad_tail in [32u32, 33, 4096, u32::MAX] {
        // An AER, known to be outstanding once the command behind it completed.
        let aer = e.bad().push(
            0,
            Sqe {
                opcode: AdminOpcode::ASYNC_EVENT_REQUEST,
                ..Default::default()
            },
        );
        let c = e.bad().admin(keep_alive).unwrap();
        expect(&c, Status::SUCCESS, "keep alive");
        // The admin SQ has 32 entries.
        e.bad().ring_sq_raw(0, bad_tail);
        let c = e.bad().wait(0).expect("the AER did not complete");
        assert_eq!((c.cid.get(), c.dw0.get()), (aer, dw0), "tail {bad_tail}");
        expect(&c, Status::SUCCESS, "AER");
        let st = e.bad().reg32(offset::CSTS).unwrap();
        assert_eq!(st & csts::CFS, 0, "CSTS.CFS after an invalid admin tail");
        // I/O goes on meanwhile; a valid tail brings the admin queue back.
        e.alive();
        let tail = e.bad().queues[&0].sq_tail;
        e.bad().ring_sq_raw(0, tail);
        let c = e.bad().admin(keep_alive).unwrap();
        expect(&c, Status::SUCCESS, "keep alive after a valid tail");
    }
    // An admin CQ head past the end: the event, and the next valid head
    // (the driver writes one as it consumes the AER) recovers.
    let aer = e.bad().push(
        0,
        Sqe {
            opcode: AdminOpcode::ASYNC_EVENT_REQUEST,
            ..Default::default()
        },
    );
    let c = e.bad().admin(keep_alive).unwrap();
    expect(&c, Status::SUCCESS, "keep alive");
    e.bad().ring_cq_raw(0, 1000);
    let c = e.bad().wait(0).expect("the AER did not complete");
    assert_eq!((c.cid.get(), c.dw0.get()), (aer, dw0), "admin CQ head");
    let c = e.bad().admin(keep_alive).unwrap();
    expect(&c, Status::SUCCESS, "keep alive after a valid head");
    assert_eq!(e.bad().reg32(offset::CSTS).unwrap() & csts::CFS, 0);
    e.alive();
}

#[test]
fn queue_management_mistakes_get_their_status_codes() {
    let mut e = Env::ram();
    // 4 I/O queue pairs granted, 2 created; 5 MSI-X vectors (0..=4).
    let ring = e.bad().mem.alloc(1025 * 64, PAGE);
    let iqi = Status::INVALID_QUEUE_IDENTIFIER;
    let del = |op: u8, qid: u16| Sqe {
        opcode: op,
        cdw10: u32::from(qid).into(),
        ..Default::default()
    };
    let cases: Vec<(&str, Sqe, Status)> = vec![
        ("create CQ 1 twice", create_cq(1, ring, 32, 1), iqi),
        ("create CQ 0", create_cq(0, ring, 32, 1), iqi),
        (
            "create CQ past the granted count",
            create_cq(5, ring, 32, 1),
            iqi,
        ),
        ("create CQ 0xffff", create_cq(0xffff, ring, 32, 1), iqi),
        (
            "create SQ on a CQ that does not exist",
            create_sq(3, ring, 32, 3),
            Status::COMPLETION_QUEUE_INVALID,
        ),
        (
            "create SQ on CQ 0 (the admin CQ)",
            create_sq(3, ring, 32, 0),
            Status::COMPLETION_QUEUE_INVALID,
        ),
        ("create SQ 0", create_sq(0, ring, 32, 1), iqi),
        ("create SQ 1 twice", create_sq(1, ring, 32, 1), iqi),
        (
            "create SQ past the granted count",
            create_sq(5, ring, 32, 1),
            iqi,
        ),
        (
            "create CQ above MQES",
            create_cq(3, ring, 1025, 3),
            Status::INVALID_QUEUE_SIZE,
        ),
        (
            "create CQ of one entry",
            create_cq(3, ring, 1, 3),
            Status::INVALID_QUEUE_SIZE,
        ),
        (
            "create SQ above MQES",
            create_sq(3, ring, 1025, 1),
            Status::INVALID_QUEUE_SIZE,
        ),
        (
            "create CQ on a vector past the MSI-X table",
            create_cq(3, ring, 32, 5),
            Status::INVALID_INTERRUPT_VECTOR,
        ),
        (
            "create CQ on vector 0xffff",
            create_cq(3, ring, 32, 0xffff),
            Status::INVALID_INTERRUPT_VECTOR,
        ),
        (
            "delete CQ 1 while SQ 1 uses it",
            del(AdminOpcode::DELETE_CQ, 1),
            Status::INVALID_QUEUE_DELETION,
        ),
        (
            "delete SQ 3 (never created)",
            del(AdminOpcode::DELETE_SQ, 3),
            iqi,
        ),
        ("delete SQ 0", del(AdminOpcode::DELETE_SQ, 0), iqi),
        ("delete SQ 0xffff", del(AdminOpcode::DELETE_SQ, 0xffff), iqi),
        ("delete CQ 0", del(AdminOpcode::DELETE_CQ, 0), iqi),
        (
            "delete CQ 3 (never created)",
            del(AdminOpcode::DELETE_CQ, 3),
            iqi,
        ),
    ];
    for (what, sqe, want) in cases {
        let c = e.bad_cmd(0, sqe);
        expect(&c, want, what);
        e.alive();
    }
    // The failures left nothing behind: qid 3 is free, on the last vector,
    // with the largest queue allowed.
    e.bad().create_queue_pair(3, 1024, 4).unwrap();
    round_trip(e.bad(), 3, 1, ALIVE_LBA, 0x31);
    // Delete in the wrong order, then the right one; the qid is reusable.
    let c = e.bad_cmd(0, del(AdminOpcode::DELETE_CQ, 3));
    expect(
        &c,
        Status::INVALID_QUEUE_DELETION,
        "delete CQ 3 before SQ 3",
    );
    e.bad().delete_queue_pair(3).unwrap();
    let c = e.bad_cmd(0, del(AdminOpcode::DELETE_SQ, 3));
    expect(&c, iqi, "delete SQ 3 twice");
    // The doorbells still hold the old queue's tail and head; a queue
    // created again under the same qid starts from 0 all the same (the
    // controller must not fetch the old tail's worth of empty slots).
    e.bad().create_queue_pair(3, 2, 3).unwrap();
    round_trip(e.bad(), 3, 2, ALIVE_LBA, 0x32);
    e.alive();
}

#[test]
fn dma_unmap_under_in_flight_io_waits_for_it() {
    // A file-backed namespace, so reads go through the kernel and take time.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let disk = pattern(0x42, 16 << 20);
    std::fs::write(&path, &disk).unwrap();
    let mut e = Env::new(&format!("ns=file:{},io-queues=4", path.display()));
    let id = e.bad().identify_namespace(1).unwrap();
    assert_eq!(
        id.lbaf[0].lbads, 9,
        "the file namespace has 512-byte blocks"
    );

    // A second stretch of guest RAM at a high GPA holds the data buffers.
    const HIGH: u64 = 1 << 40;
    const HIGH_SIZE: u64 = 16 << 20;
    let high = GuestMem::new(HIGH, HIGH_SIZE).unwrap();
    e.bad()
        .client
        .dma_map(HIGH, HIGH_SIZE, Some(high.fd()), 0, true, true)
        .unwrap();
    e.bad().create_queue_pair(3, 256, 3).unwrap();
    // It works: a read into the high region.
    let sqe = e.bad().rw_sqe(IoOpcode::READ, 1, 0, 8, HIGH, 4096, 0);
    expect(
        &e.bad().command(3, sqe).unwrap(),
        Status::SUCCESS,
        "read into high RAM",
    );
    assert!(high.read_vec(HIGH, 4096) == disk[..4096]);

    // Fill the high region with 128 KiB reads, ring once, unmap at once.
    const N: usize = 128;
    const LEN: u64 = 128 << 10;
    high.fill(HIGH, HIGH_SIZE, 0x5a);
    let mut cids = Vec::with_capacity(N);
    for i in 0..N {
        let slba = i as u64 * (LEN / 512);
        let sqe = e
            .bad()
            .rw_sqe(IoOpcode::READ, 1, slba, 256, HIGH + i as u64 * LEN, LEN, i);
        cids.push(e.bad().push(3, sqe));
    }
    e.bad().ring(3);
    // Once the first read completed, the poller has fetched them all (one
    // pass takes everything up to the tail when the CQ has room): the rest
    // are in the backend now, or done.
    let mut status = vec![None; N];
    let first = e.bad().wait(3).expect("first read");
    let i = cids
        .iter()
        .position(|&x| x == first.cid.get())
        .expect("cid");
    status[i] = Some(first.status_field());
    e.bad()
        .client
        .dma_unmap(HIGH, HIGH_SIZE, false)
        .expect("DMA_UNMAP under in-flight I/O");
    // Whatever read the region (it succeeded) finished before the unmap
    // returned: its completion is in the CQ already.
    let mut seen_at_return = 1;
    while let Some(c) = e.bad().poll(3) {
        let i = cids.iter().position(|&x| x == c.cid.get()).expect("cid");
        status[i] = Some(c.status_field());
        seen_at_return += 1;
    }
    for _ in seen_at_return..N {
        let c = e.bad().wait(3).expect("completion after the unmap");
        let i = cids.iter().position(|&x| x == c.cid.get()).expect("cid");
        expect(
            &c,
            Status::DATA_TRANSFER_ERROR,
            "read fetched after the unmap",
        );
        status[i] = Some(c.status_field());
    }
    for (i, s) in status.iter().enumerate() {
        let s = s.expect("every read completed once");
        let at = HIGH + i as u64 * LEN;
        let got = high.read_vec(at, us(LEN));
        if s.is_success() {
            let off = i * us(LEN);
            assert!(got == disk[off..off + us(LEN)], "read {i}: wrong data");
        } else {
            assert!(s.same_code(Status::DATA_TRANSFER_ERROR), "read {i}: {s}");
            assert!(
                got.iter().all(|&b| b == 0x5a),
                "read {i} failed but wrote memory"
            );
        }
    }
    e.alive();

    // Later commands into the unmapped region: Data Transfer Error.
    high.fill(HIGH, HIGH_SIZE, 0x77);
    for op in [IoOpcode::READ, IoOpcode::WRITE] {
        for (at, len) in [(HIGH, 512), (HIGH + 4096, 8192), (HIGH + (1 << 20), LEN)] {
            let sqe = e
                .bad()
                .rw_sqe(op, 1, 64, u32::try_from(len / 512).unwrap(), at, len, 0);
            let c = e.bad().command(3, sqe).unwrap();
            expect(&c, Status::DATA_TRANSFER_ERROR, "I/O into unmapped RAM");
            e.alive();
        }
    }
    assert!(high.read_vec(HIGH, 1 << 20).iter().all(|&b| b == 0x77));
    let on_disk = std::fs::read(&path).unwrap();
    assert!(on_disk[64 * 512..64 * 512 + us(LEN)] == disk[64 * 512..64 * 512 + us(LEN)]);

    // Unmapping it again names the problem; mapping it back works.
    assert!(matches!(
        e.bad().client.dma_unmap(HIGH, HIGH_SIZE, false),
        Err(ClientError::Remote { .. })
    ));
    e.bad()
        .client
        .dma_map(HIGH, HIGH_SIZE, Some(high.fd()), 0, true, true)
        .unwrap();
    let sqe = e.bad().rw_sqe(IoOpcode::READ, 1, 8, 8, HIGH, 4096, 0);
    expect(
        &e.bad().command(3, sqe).unwrap(),
        Status::SUCCESS,
        "read after re-map",
    );
    assert!(high.read_vec(HIGH, 4096) == disk[4096..8192]);
    e.alive();
}

#[test]
fn client_disconnect_mid_io_leaves_a_clean_controller() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let mut e = Env::new(&format!("ns=file:{},io-queues=4", path.display()));
    e.alive();
    // The bystander has I/O in flight too while the first client goes.
    let data = pattern(0x61, 8192);
    let obuf = e.other.mem.alloc(8192, PAGE);
    e.other.mem.write(obuf, &data);
    let mut other_cids = Vec::new();
    for i in 0..16u64 {
        let sqe = e
            .other
            .rw_sqe(IoOpcode::WRITE, 1, 8192 + i * 16, 16, obuf, 8192, us(i));
        other_cids.push(e.other.push(2, sqe));
    }
    e.other.ring(2);

    // A batch of 64 KiB writes, then the client vanishes without waiting.
    let mut bad = e.bad.take().expect("driver");
    bad.create_queue_pair(3, 256, 3).unwrap();
    let buf = bad.mem.alloc(64 << 10, PAGE);
    bad.mem.fill(buf, 64 << 10, 0x99);
    for i in 0..200u64 {
        let sqe = bad.rw_sqe(
            IoOpcode::WRITE,
            1,
            i * 128 % NS1_BLOCKS,
            128,
            buf,
            64 << 10,
            us(i),
        );
        bad.push(3, sqe);
    }
    bad.ring(3);
    drop(bad);

    for _ in &other_cids {
        let c = e.other.wait(2).unwrap();
        expect(&c, Status::SUCCESS, "bystander write");
    }
    round_trip(&mut e.other, 1, 2, 4096, 0x62);

    // A new client on the same socket finds a controller fresh from reset.
    let mut d = connect(&e.sock0);
    assert_eq!(
        d.reg32(offset::CC).unwrap(),
        0,
        "CC after the old client left"
    );
    let st = d.reg32(offset::CSTS).unwrap();
    assert_eq!(st & csts::RDY, 0, "CSTS.RDY before enable");
    assert_eq!(st & csts::CFS, 0, "CSTS.CFS before enable");
    d.enable(32).unwrap();
    assert_eq!(d.set_queue_count(2).unwrap(), (2, 2));
    d.create_queue_pair(1, 32, 1).unwrap();
    d.create_queue_pair(2, 32, 2).unwrap();
    // Queue 3 of the old client is gone with it.
    let c = d
        .admin(Sqe {
            opcode: AdminOpcode::DELETE_SQ,
            cdw10: 3.into(),
            ..Default::default()
        })
        .unwrap();
    expect(
        &c,
        Status::INVALID_QUEUE_IDENTIFIER,
        "SQ 3 of the old client",
    );
    e.bad = Some(d);
    e.alive();
    // The bystander's data is intact.
    for i in 0..16u64 {
        let (c, back) = e.other.read_blocks(1, 1, 8192 + i * 16, BS, 8192).unwrap();
        expect(&c, Status::SUCCESS, "bystander read");
        assert!(back == data);
    }
}

#[test]
fn vfio_user_garbage_closes_only_that_connection() {
    let mut e = Env::ram();
    // Free controller 0's socket of its first client.
    drop(e.bad.take());

    // Sizes the server cannot trust: framing is lost, the connection goes.
    for (what, size) in [
        ("msg_size u32::MAX", u32::MAX),
        ("msg_size 2 GiB", 1 << 31),
        (
            "msg_size MAX_MSG_SIZE + 1",
            u32::try_from(MAX_MSG_SIZE + 1).unwrap(),
        ),
        ("msg_size below the header", 8),
        ("msg_size 0", 0),
    ] {
        let stream = UnixStream::connect(&e.sock0).unwrap();
        let mut c = Client::from_stream_unnegotiated(stream);
        c.set_timeout(Some(Duration::from_secs(10))).unwrap();
        expect_closed(&mut c, &raw_header(0, 1, size, 0), what);
        round_trip(&mut e.other, 1, 2, 0, 0x71);
        assert_no_socp_panics();
    }

    // After negotiation too: an oversized message mid-session.
    let stream = UnixStream::connect(&e.sock0).unwrap();
    let mut c = Client::from_stream(stream).unwrap();
    c.set_timeout(Some(Duration::from_secs(10))).unwrap();
    expect_closed(
        &mut c,
        &raw_header(1, 2, u32::MAX, 0),
        "oversized after VERSION",
    );

    // A live controller with queues and I/O: a framed but unknown command
    // gets an error reply and the session goes on; garbage framing ends it.
    let mut d = bring_up(&e.sock0, 2, 32);
    round_trip(&mut d, 1, 2, ALIVE_LBA, 0x72);
    let reply = d
        .client
        .send_raw(&raw_header(0x7777, 0x3ff, 16, 0), &[])
        .unwrap();
    let flags = u32::from_le_bytes([reply[8], reply[9], reply[10], reply[11]]);
    let errno = u32::from_le_bytes([reply[12], reply[13], reply[14], reply[15]]);
    assert_ne!(flags & 0x20, 0, "unknown command: error flag");
    assert_ne!(errno, 0, "unknown command: an errno");
    round_trip(&mut d, 1, 2, ALIVE_LBA, 0x73);
    expect_closed(
        &mut d.client,
        &raw_header(0x7778, 3, u32::MAX - 15, 0),
        "oversized mid-I/O",
    );
    drop(d);
    round_trip(&mut e.other, 2, 1, 0, 0x74);

    // The server accepts a new client, and its controller starts clean.
    let mut d = connect(&e.sock0);
    assert_eq!(d.reg32(offset::CSTS).unwrap() & csts::RDY, 0);
    d.enable(32).unwrap();
    d.set_queue_count(2).unwrap();
    d.create_queue_pair(1, 32, 1).unwrap();
    d.create_queue_pair(2, 32, 2).unwrap();
    e.bad = Some(d);
    e.alive();
}

/// An eventfd in blocking mode (QEMU makes its eventfds non-blocking; a
/// hostile hypervisor need not).
fn blocking_eventfd() -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: plain eventfd creation, checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd that nothing else owns.
    unsafe { std::fs::File::from_raw_fd(fd) }
}

#[test]
fn msix_fds_must_be_eventfds_and_never_block_the_poller() {
    use std::io::Write;
    use std::os::fd::AsFd;
    const IRQ_MSIX: u32 = 2;
    // One poller serves both controllers.
    let mut e = Env::with_pollers("ns=ram:16M,ns=ram:8M,io-queues=4", 1);

    // A pipe is not an interrupt: refused, and the old eventfd stays.
    let (_r, w) = std::io::pipe().unwrap();
    let r = e.bad().client.set_irq_eventfds(IRQ_MSIX, 1, &[w.as_fd()]);
    assert!(r.is_err(), "SET_IRQS with a pipe was accepted");
    e.alive();

    // An eventfd at its maximum count, in blocking mode: a write to it
    // would block forever. Interrupts on vector 1 must not stop the poller.
    let mut full = blocking_eventfd();
    full.write_all(&(u64::MAX - 1).to_ne_bytes()).unwrap();
    e.bad()
        .client
        .set_irq_eventfds(IRQ_MSIX, 1, &[full.as_fd()])
        .expect("SET_IRQS with an eventfd");
    for _ in 0..4 {
        e.alive();
    }
}

#[test]
fn guest_memory_that_could_shrink_is_refused() {
    use std::os::fd::AsFd;
    let mut e = Env::ram();
    // Memory its owner could truncate (an access past the new end would
    // SIGBUS socp and every tenant): refused.
    let open = leapio_ats::testing::memfd_unsealed(c"unsealed", 1 << 20).unwrap();
    let r = e
        .bad()
        .client
        .dma_map(1 << 40, 1 << 20, Some(open.as_fd()), 0, true, true);
    assert!(r.is_err(), "DMA_MAP of an unsealed memfd was accepted");
    // The sealed guest RAM the driver mapped cannot be shrunk.
    let ram = std::fs::File::from(e.bad().mem.fd().try_clone_to_owned().unwrap());
    assert!(ram.set_len(4096).is_err(), "sealed guest RAM shrank");
    e.alive();
}
