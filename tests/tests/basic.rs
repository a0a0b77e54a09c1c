//! A well-behaved host against socp, no VM: bring-up, identify, I/O on
//! several queues and namespaces, interrupts, reset.

// Test data patterns deliberately wrap byte values.
#![allow(clippy::cast_possible_truncation)]

use leapio_nvme::identify::get_ascii;
use leapio_nvme::regs::{csts, offset};
use leapio_nvme::{AdminOpcode, IoOpcode, Sqe, Status};
use leapio_tests::server::TestServer;
use leapio_tests::Driver;

const MEM: u64 = 64 << 20;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn identify_reports_the_controller_and_its_namespaces() {
    let srv = TestServer::start(&["ns=ram:16M,ns=ram:8M,io-queues=4,serial=TESTSN1"], 1);
    let mut d = Driver::connect(srv.sock(0), MEM).unwrap();
    let cap = d.reg64(offset::CAP).unwrap();
    assert_eq!(cap & 0xffff, 1023, "MQES");
    assert_eq!((cap >> 37) & 1, 1, "NVM command set");
    assert_eq!(d.reg32(offset::VS).unwrap(), 0x0001_0400);
    d.enable(32).unwrap();
    let id = d.identify_controller().unwrap();
    assert_eq!(get_ascii(&id.sn), "TESTSN1");
    assert_eq!(get_ascii(&id.mn), "LeapIO virtual NVMe");
    assert_eq!(id.nn.get(), 2);
    assert_eq!(id.sqes, 0x66);
    assert_eq!(id.cqes, 0x44);
    assert_eq!(id.mdts, 5);
    let ns1 = d.identify_namespace(1).unwrap();
    assert_eq!(ns1.nsze.get(), (16 << 20) / 512);
    let ns2 = d.identify_namespace(2).unwrap();
    assert_eq!(ns2.nsze.get(), (8 << 20) / 512);
    assert_ne!(ns1.nguid, ns2.nguid, "namespace IDs must be unique");
    // Active namespace list.
    let list = d.identify(2, 0).unwrap();
    assert_eq!(&list[..12], &[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    // An NSID past NN is invalid.
    let buf = d.mem.alloc(4096, 4096);
    let c = d
        .admin(Sqe {
            opcode: AdminOpcode::IDENTIFY,
            nsid: 3.into(),
            prp1: buf.into(),
            ..Default::default()
        })
        .unwrap();
    assert!(c.status_field().same_code(Status::INVALID_NAMESPACE));
}

#[test]
fn data_written_on_one_queue_reads_back_on_another_with_interrupts() {
    let srv = TestServer::start(&["ns=ram:16M,io-queues=4"], 2);
    let mut d = Driver::bring_up(srv.sock(0), MEM, 2, 64).unwrap();
    assert_eq!(d.take_irqs(1), 0);
    for (i, len) in [512usize, 4096, 8192, 12288, 65536, 131072]
        .into_iter()
        .enumerate()
    {
        let data = pattern(i as u8, len);
        let slba = (i as u64) * 512;
        let c = d.write_blocks(1, 1, slba, 512, &data).unwrap();
        Driver::check("write", &c).unwrap();
        let (c, back) = d.read_blocks(2, 1, slba, 512, len as u64).unwrap();
        Driver::check("read", &c).unwrap();
        assert!(back == data, "mismatch at {len} bytes");
    }
    assert!(d.take_irqs(1) > 0, "queue 1 interrupts on vector 1");
    assert!(d.take_irqs(2) > 0, "queue 2 interrupts on vector 2");
    // Flush on a namespace without a volatile cache succeeds at once.
    let c = d
        .command(
            1,
            Sqe {
                opcode: IoOpcode::FLUSH,
                nsid: 1.into(),
                ..Default::default()
            },
        )
        .unwrap();
    Driver::check("flush", &c).unwrap();
}

#[test]
fn file_backed_namespace_persists_across_controller_reset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let srv = TestServer::start(&[&format!("ns=file:{},io-queues=2", path.display())], 1);
    let mut d = Driver::bring_up(srv.sock(0), MEM, 1, 32).unwrap();
    let data = pattern(7, 16384);
    Driver::check("write", &d.write_blocks(1, 1, 100, 512, &data).unwrap()).unwrap();
    let c = d
        .command(
            1,
            Sqe {
                opcode: IoOpcode::FLUSH,
                nsid: 1.into(),
                ..Default::default()
            },
        )
        .unwrap();
    Driver::check("flush", &c).unwrap();
    // Reset: CC.EN = 0 drops every queue; bring it back and read.
    d.disable().unwrap();
    assert_eq!(d.reg32(offset::CSTS).unwrap() & csts::RDY, 0);
    d.enable(32).unwrap();
    d.set_queue_count(1).unwrap();
    d.create_queue_pair(1, 32, 1).unwrap();
    let (c, back) = d.read_blocks(1, 1, 100, 512, 16384).unwrap();
    Driver::check("read", &c).unwrap();
    assert!(back == data);
    // And the bytes are in the file itself.
    let file = std::fs::read(&path).unwrap();
    assert!(file[100 * 512..100 * 512 + 16384] == data[..]);
}

#[test]
fn shutdown_notification_completes() {
    let srv = TestServer::start(&["ns=ram:4M"], 1);
    let mut d = Driver::bring_up(srv.sock(0), MEM, 1, 16).unwrap();
    let cc = d.reg32(offset::CC).unwrap();
    d.set_reg32(offset::CC, cc | (1 << 14)).unwrap();
    let st = d.reg32(offset::CSTS).unwrap();
    assert_eq!(st & csts::SHST_MASK, csts::SHST_COMPLETE);
}

#[test]
fn features_keep_what_the_host_sets_and_refuse_what_they_cannot() {
    use leapio_nvme::cmd::FeatureId;
    let srv = TestServer::start(&["ns=ram:4M,io-queues=4"], 1);
    let mut d = Driver::connect(srv.sock(0), MEM).unwrap();
    d.enable(32).unwrap();
    let mut feat = |set: bool, cdw10: u32, cdw11: u32| {
        let c = d
            .admin(Sqe {
                opcode: if set {
                    AdminOpcode::SET_FEATURES
                } else {
                    AdminOpcode::GET_FEATURES
                },
                cdw10: cdw10.into(),
                cdw11: cdw11.into(),
                ..Default::default()
            })
            .unwrap();
        (c.status_field(), c.dw0.get())
    };
    let ok = |r: (Status, u32)| {
        assert!(r.0.same_code(Status::SUCCESS), "{:?} (dw0 {:#x})", r.0, r.1);
        r.1
    };
    let tt = u32::from(FeatureId::TEMPERATURE_THRESHOLD);
    assert_eq!(ok(feat(false, tt, 0)), 343, "default threshold 343 K");
    ok(feat(true, tt, 350));
    assert_eq!(ok(feat(false, tt, 0)), 350, "current");
    assert_eq!(ok(feat(false, tt | (1 << 8), 0)), 343, "SEL=default");
    assert_eq!(
        ok(feat(false, tt | (3 << 8), 0)),
        1 << 2,
        "changeable, not saveable"
    );
    let (st, _) = feat(true, tt | (1 << 31), 300);
    assert!(st.same_code(Status::FEATURE_NOT_SAVEABLE), "{st:?}");
    assert_eq!(ok(feat(false, tt, 0)), 350, "a refused set changes nothing");
    // A RAM namespace has no volatile write cache: the feature does not exist.
    let vwc = u32::from(FeatureId::VOLATILE_WRITE_CACHE);
    let (st, _) = feat(false, vwc, 0);
    assert!(st.same_code(Status::INVALID_FIELD), "{st:?}");
    // Only power state 0 exists.
    let (st, _) = feat(true, u32::from(FeatureId::POWER_MANAGEMENT), 2);
    assert!(st.same_code(Status::INVALID_FIELD), "{st:?}");
    // An interrupt vector past the MSI-X table.
    let (st, _) = feat(false, u32::from(FeatureId::INTERRUPT_VECTOR_CONFIG), 4000);
    assert!(st.same_code(Status::INVALID_FIELD), "{st:?}");
    // An unknown feature.
    let (st, _) = feat(false, 0x7f, 0);
    assert!(st.same_code(Status::INVALID_FIELD), "{st:?}");
    // Number of Queues: granted up to io-queues, and fixed once queues exist.
    assert_eq!(d.set_queue_count(8).unwrap(), (4, 4));
    d.create_queue_pair(1, 16, 1).unwrap();
    let c = d
        .admin(Sqe {
            opcode: AdminOpcode::SET_FEATURES,
            cdw10: u32::from(FeatureId::NUMBER_OF_QUEUES).into(),
            cdw11: 0x0001_0001.into(),
            ..Default::default()
        })
        .unwrap();
    assert!(c.status_field().same_code(Status::COMMAND_SEQUENCE_ERROR));
}

/// SMART / Health log fields: (data units read, written, host reads, writes).
fn smart_counts(d: &mut Driver) -> (u64, u64, u64, u64) {
    let buf = d.mem.alloc(4096, 4096);
    let c = d
        .admin(Sqe {
            opcode: AdminOpcode::GET_LOG_PAGE,
            nsid: 0xffff_ffff.into(),
            prp1: buf.into(),
            // LID 2, 512 bytes (NUMDL is 0's based, in dwords).
            cdw10: (2 | (127 << 16)).into(),
            ..Default::default()
        })
        .unwrap();
    Driver::check("get SMART log", &c).unwrap();
    let log = d.mem.read_vec(buf, 512);
    let field = |off: usize| u64::from_le_bytes(log[off..off + 8].try_into().unwrap());
    (field(32), field(48), field(64), field(80))
}

#[test]
fn smart_log_counts_io_from_every_poller_and_across_resets() {
    // Two pollers: queue 1 and queue 2 are served by different threads.
    let srv = TestServer::start(&["ns=ram:16M,io-queues=4"], 2);
    let mut d = Driver::bring_up(srv.sock(0), MEM, 2, 64).unwrap();
    assert_eq!(smart_counts(&mut d), (0, 0, 0, 0));
    let data = pattern(3, 4096);
    for i in 0..3 {
        Driver::check("write", &d.write_blocks(1, 1, i * 8, 512, &data).unwrap()).unwrap();
    }
    for _ in 0..2 {
        let (c, _) = d.read_blocks(2, 1, 0, 512, 8192).unwrap();
        Driver::check("read", &c).unwrap();
    }
    // 24 sectors written, 32 read: one data unit (1000 sectors, rounded up) each.
    assert_eq!(smart_counts(&mut d), (1, 1, 2, 3));
    // A failed command is not counted.
    let sqe = d.rw_sqe(IoOpcode::READ, 1, 1 << 40, 8, 0, 4096, 0);
    let c = d.command(1, sqe).unwrap();
    assert!(c.status_field().same_code(Status::LBA_OUT_OF_RANGE));
    assert_eq!(smart_counts(&mut d), (1, 1, 2, 3));

    // A reset drops every queue (the pollers let go of the controller); the
    // counts carry on.
    d.disable().unwrap();
    d.enable(32).unwrap();
    d.set_queue_count(2).unwrap();
    d.create_queue_pair(1, 32, 1).unwrap();
    d.create_queue_pair(2, 32, 2).unwrap();
    assert_eq!(smart_counts(&mut d), (1, 1, 2, 3));
    let big = pattern(5, 1 << 20);
    for i in 0..2 {
        let c = d
            .write_blocks(2, 1, i * 2048, 512, &big[..128 << 10])
            .unwrap();
        Driver::check("write", &c).unwrap();
    }
    let (c, _) = d.read_blocks(1, 1, 0, 512, 128 << 10).unwrap();
    Driver::check("read", &c).unwrap();
    // Written 24 + 512 sectors, read 32 + 256.
    assert_eq!(smart_counts(&mut d), (1, 1, 3, 5));
}
