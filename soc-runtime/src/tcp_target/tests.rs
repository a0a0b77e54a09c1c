//! The target over real TCP connections on 127.0.0.1, driven by a small
//! NVMe/TCP host written with the `leapio_nvme::tcp` codec.

use super::{TargetSpec, TcpTarget};
use leapio_nvme::cmd::FeatureId;
use leapio_nvme::fabrics::{
    DiscoveryLogEntry, DiscoveryLogHeader, FabricsStatus, FcType, IdentifyFabrics, PropertyCmd,
    SglDescriptor, CNTLID_DYNAMIC, DISCOVERY_NQN, FABRICS_OPCODE, LID_DISCOVERY,
};
use leapio_nvme::identify::{IdentifyController, IdentifyNamespace};
use leapio_nvme::regs::{csts, offset};
use leapio_nvme::tcp::{
    write_pdu, CapsuleCmd, DataHdr, Digests, Fes, IcReq, IcResp, ParserConfig, Pdu, PduHeader,
    PduParser, PduType, Role, TermReq,
};
use leapio_nvme::{AdminOpcode, Cqe, IoOpcode, Sqe, Status};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, IntoBytes};

const NQN: &str = "nqn.2026-11.io.leapio:tgt0";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";

struct Target {
    t: Option<TcpTarget>,
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl Target {
    fn start(extra: &str) -> Target {
        Target::with_ns("ram:16M", extra)
    }
    fn with_ns(ns: &str, extra: &str) -> Target {
        Target::with_pollers(ns, extra, 2)
    }
    fn with_pollers(ns: &str, extra: &str, pollers: usize) -> Target {
        let spec: TargetSpec = format!("listen=127.0.0.1:0,nqn={NQN},ns={ns}{extra}")
            .parse()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let t = TcpTarget::start(0, &spec, pollers, stop.clone()).unwrap();
        let addr = t.local_addr;
        Target {
            t: Some(t),
            stop,
            addr,
        }
    }
    fn controllers(&self) -> usize {
        self.t.as_ref().map_or(0, |t| t.controllers())
    }
    fn wait_controllers(&self, n: usize) {
        let t0 = Instant::now();
        while self.controllers() != n {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{} controllers",
                self.controllers()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.t.take() {
            t.join();
        }
    }
}

struct Host {
    sock: TcpStream,
    /// Bytes read and not yet parsed.
    inbuf: Vec<u8>,
    parser: PduParser,
    dg: Digests,
    cid: u16,
    maxh2cdata: usize,
    /// Connect I/O queues with SQ flow control disabled (CATTR bit 2).
    sqflow_disabled: bool,
    /// Commands that ended with a C2HData PDU flagged SUCCESS.
    successes: usize,
}

enum Out<'a> {
    None,
    InCapsule(&'a [u8]),
    R2t(&'a [u8]),
}

impl Host {
    fn tcp(addr: SocketAddr) -> Host {
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Host {
            sock,
            inbuf: Vec::new(),
            parser: PduParser::new(ParserConfig {
                role: Role::Host,
                digests: Digests::default(),
                max_capsule_data: 0,
                max_data: 1 << 20,
            }),
            dg: Digests::default(),
            cid: 0,
            maxh2cdata: 4096,
            sqflow_disabled: false,
            successes: 0,
        }
    }

    fn new(addr: SocketAddr, dg: Digests) -> Host {
        let mut h = Host::tcp(addr);
        let r = h.icreq(dg);
        assert_eq!(r.pfv.get(), 0);
        assert_eq!(Digests::from_dgst(r.dgst), dg);
        h
    }

    fn send(&mut self, b: &[u8]) {
        self.sock.write_all(b).unwrap();
    }

    /// Next PDU, or None at EOF.
    fn recv(&mut self) -> Option<Pdu> {
        loop {
            // The parser takes what one PDU needs; the rest waits in `inbuf`.
            let (used, r) = self.parser.feed(&self.inbuf);
            self.inbuf.drain(..used);
            if let Some(p) = r.unwrap() {
                return Some(p);
            }
            if used > 0 && !self.inbuf.is_empty() {
                continue;
            }
            let mut buf = [0u8; 64 << 10];
            let n = self.sock.read(&mut buf).unwrap();
            if n == 0 {
                return None;
            }
            self.inbuf.extend_from_slice(&buf[..n]);
        }
    }

    fn icreq(&mut self, dg: Digests) -> IcResp {
        let mut req = IcReq::new();
        req.dgst = dg.to_dgst();
        let mut out = Vec::new();
        write_pdu(&mut out, req.as_bytes(), &[], Digests::default(), 4);
        self.send(&out);
        let Some(PduHeader::IcResp(r)) = self.recv().map(|p| p.header) else {
            panic!("no ICResp")
        };
        self.dg = dg;
        self.maxh2cdata = usize::try_from(r.maxh2cdata.get()).unwrap();
        self.parser.set_config(ParserConfig {
            digests: dg,
            ..*self.parser.config()
        });
        r
    }

    fn capsule(&mut self, sqe: &Sqe, data: &[u8]) -> Vec<u8> {
        let mut c = CapsuleCmd::new();
        c.sqe = *sqe;
        let mut out = Vec::new();
        write_pdu(&mut out, c.as_bytes(), data, self.dg, 4);
        out
    }

    /// Run one command; returns the completion and the C2H data.
    fn cmd(&mut self, mut sqe: Sqe, out: Out<'_>, read_len: usize) -> (Cqe, Vec<u8>) {
        self.cid = self.cid.wrapping_add(1);
        sqe.cid = self.cid.into();
        let (sgl, inline, h2c): (SglDescriptor, &[u8], &[u8]) = match out {
            Out::None => (
                SglDescriptor::transport(u32::try_from(read_len).unwrap()),
                &[],
                &[],
            ),
            Out::InCapsule(d) => (
                SglDescriptor::in_capsule(0, u32::try_from(d.len()).unwrap()),
                d,
                &[],
            ),
            Out::R2t(d) => (
                SglDescriptor::transport(u32::try_from(d.len()).unwrap()),
                &[],
                d,
            ),
        };
        sgl.store(&mut sqe);
        let b = self.capsule(&sqe, inline);
        self.send(&b);
        let mut data = vec![0u8; read_len];
        loop {
            let pdu = self.recv().expect("connection closed");
            match pdu.header {
                PduHeader::CapsuleResp(r) => {
                    assert_eq!(r.cqe.cid.get(), self.cid);
                    return (r.cqe, data);
                }
                PduHeader::C2hData(d) => {
                    assert_eq!(d.cccid.get(), self.cid);
                    let o = usize::try_from(d.datao.get()).unwrap();
                    data[o..o + pdu.data().len()].copy_from_slice(pdu.data());
                    let flags = d.ch.flags();
                    if flags.contains(leapio_nvme::tcp::PduFlags::DATA_SUCCESS) {
                        assert!(self.sqflow_disabled, "SUCCESS with SQ flow control on");
                        assert!(flags.contains(leapio_nvme::tcp::PduFlags::DATA_LAST));
                        self.successes += 1;
                        let cqe = Cqe {
                            cid: self.cid.into(),
                            ..Default::default()
                        };
                        return (cqe, data);
                    }
                }
                PduHeader::R2t(r) => {
                    assert_eq!(r.cccid.get(), self.cid);
                    let mut off = usize::try_from(r.r2to.get()).unwrap();
                    let end = off + usize::try_from(r.r2tl.get()).unwrap();
                    while off < end {
                        let n = (end - off).min(self.maxh2cdata);
                        let mut h = DataHdr::new(PduType::H2C_DATA);
                        h.cccid = r.cccid;
                        h.ttag = r.ttag;
                        h.datao = u32::try_from(off).unwrap().into();
                        h.datal = u32::try_from(n).unwrap().into();
                        if off + n == end {
                            h.ch.set_flags(leapio_nvme::tcp::PduFlags::DATA_LAST);
                        }
                        let mut b = Vec::new();
                        write_pdu(&mut b, h.as_bytes(), &h2c[off..off + n], self.dg, 4);
                        self.send(&b);
                        off += n;
                    }
                }
                PduHeader::C2hTermReq(t) => panic!("TermReq fes {}", t.fes.get()),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn connect(&mut self, qid: u16, cntlid: u16, subnqn: &str, hostnqn: &str, kato: u32) -> Cqe {
        let (mut c, d) =
            leapio_nvme::fabrics::connect(qid, 31, kato, [7; 16], cntlid, hostnqn, subnqn);
        if qid != 0 && self.sqflow_disabled {
            c.cattr = leapio_nvme::fabrics::CATTR_DISABLE_SQFLOW;
        }
        let sqe = Sqe::read_from_bytes(c.as_bytes()).unwrap();
        let data = d.as_bytes().to_vec();
        self.cmd(sqe, Out::InCapsule(&data), 0).0
    }

    fn prop(&mut self, fctype: u8, off: u64, size8: bool, value: u64) -> (Status, u64) {
        let mut p = PropertyCmd::read_from_bytes(&[0u8; 64][..]).unwrap();
        p.opcode = FABRICS_OPCODE;
        p.fctype = fctype;
        p.attrib = u8::from(size8);
        p.offset = u32::try_from(off).unwrap().into();
        p.value = value.into();
        let (c, _) = self.cmd(Sqe::read_from_bytes(p.as_bytes()).unwrap(), Out::None, 0);
        (
            c.status_field(),
            u64::from(c.dw0.get()) | (u64::from(c.dw1.get()) << 32),
        )
    }

    /// Admin queue up to an enabled controller; returns the CNTLID.
    fn admin(addr: SocketAddr, dg: Digests, subnqn: &str, kato: u32) -> (Host, u16) {
        let mut h = Host::new(addr, dg);
        let c = h.connect(0, CNTLID_DYNAMIC, subnqn, HOST, kato);
        assert!(c.status_field().is_success(), "{:?}", c.status_field());
        let cntlid = u16::try_from(c.dw0.get() & 0xffff).unwrap();
        let (s, cap) = h.prop(FcType::PROPERTY_GET, offset::CAP, true, 0);
        assert!(s.is_success());
        assert_eq!(cap & 0xffff, 127, "MQES");
        let (s, _) = h.prop(FcType::PROPERTY_SET, offset::CC, false, 0x0046_0001);
        assert!(s.is_success());
        let (_, st) = h.prop(FcType::PROPERTY_GET, offset::CSTS, false, 0);
        assert_eq!(st & u64::from(csts::RDY), 1);
        (h, cntlid)
    }

    fn identify(&mut self, cns: u8, nsid: u32) -> (Status, Vec<u8>) {
        let sqe = Sqe {
            opcode: AdminOpcode::IDENTIFY,
            nsid: nsid.into(),
            cdw10: u32::from(cns).into(),
            ..Default::default()
        };
        let (c, d) = self.cmd(sqe, Out::None, 4096);
        (c.status_field(), d)
    }

    fn rw(
        &mut self,
        op: u8,
        slba: u64,
        nlb: u32,
        out: Out<'_>,
        read_len: usize,
    ) -> (Status, Vec<u8>) {
        let sqe = Sqe {
            opcode: op,
            nsid: 1.into(),
            cdw10: u32::try_from(slba & 0xffff_ffff).unwrap().into(),
            cdw11: u32::try_from(slba >> 32).unwrap().into(),
            cdw12: (nlb - 1).into(),
            ..Default::default()
        };
        let (c, d) = self.cmd(sqe, out, read_len);
        (c.status_field(), d)
    }

    /// Expect a C2HTermReq with `fes`, then EOF.
    fn expect_term(&mut self, fes: u16) -> TermReq {
        let pdu = self.recv().expect("no TermReq");
        let PduHeader::C2hTermReq(t) = pdu.header else {
            panic!("{:?}", pdu.header)
        };
        assert_eq!(t.fes.get(), fes);
        assert!(self.recv().is_none(), "connection not closed");
        t
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            u8::try_from(i % 251)
                .unwrap()
                .wrapping_mul(31)
                .wrapping_add(seed)
        })
        .collect()
}

fn io_session(dg: Digests) {
    let tgt = Target::start("");
    let (mut a, cntlid) = Host::admin(tgt.addr, dg, NQN, 0);
    let (s, page) = a.identify(1, 0);
    assert!(s.is_success());
    let id = IdentifyController::read_from_bytes(&page).unwrap();
    assert_eq!(id.cntlid.get(), cntlid);
    assert_eq!(id.cntrltype, 1);
    assert_eq!(leapio_nvme::fabrics::nqn_str(&id.subnqn), Some(NQN));
    let f = IdentifyFabrics::read_from_bytes(&id.fabrics[..]).unwrap();
    assert_eq!(f.ioccsz.get(), (64 + 8192) / 16);
    assert_eq!(f.iorcsz.get(), 1);
    assert_eq!(f.icdoff.get(), 0);
    assert_eq!(id.sgls.get() & 0x3, 1);
    let (s, page) = a.identify(0, 1);
    assert!(s.is_success());
    let ns = IdentifyNamespace::read_from_bytes(&page).unwrap();
    assert_eq!(ns.nsze.get(), 16 << 20 >> 9);
    let (s, list) = a.identify(2, 0);
    assert!(s.is_success());
    assert_eq!(&list[..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(a.identify(0, 9).0, Status::INVALID_NAMESPACE);
    // Two I/O queues.
    let sqe = Sqe {
        opcode: AdminOpcode::SET_FEATURES,
        cdw10: u32::from(FeatureId::NUMBER_OF_QUEUES).into(),
        cdw11: 0x0001_0001.into(),
        ..Default::default()
    };
    let (c, _) = a.cmd(sqe, Out::None, 0);
    assert!(c.status_field().is_success());
    assert_eq!(c.dw0.get(), 0x0001_0001);

    let mut q = Host::new(tgt.addr, dg);
    let c = q.connect(1, cntlid, NQN, HOST, 0);
    assert!(c.status_field().is_success(), "{:?}", c.status_field());
    // Same QID twice: refused.
    let mut q2 = Host::new(tgt.addr, dg);
    let c = q2.connect(1, cntlid, NQN, HOST, 0);
    assert!(c
        .status_field()
        .same_code(FabricsStatus::CONNECT_INVALID_PARAMETERS));
    // A QID beyond what Number of Queues granted.
    let c = q2.connect(3, cntlid, NQN, HOST, 0);
    assert!(c
        .status_field()
        .same_code(FabricsStatus::CONNECT_INVALID_PARAMETERS));

    // In-capsule write, R2T write of 64 KiB (several H2CData PDUs).
    let small = pattern(4096, 1);
    assert!(q
        .rw(IoOpcode::WRITE, 8, 8, Out::InCapsule(&small), 0)
        .0
        .is_success());
    let big = pattern(65536, 2);
    assert!(q
        .rw(IoOpcode::WRITE, 100, 128, Out::R2t(&big), 0)
        .0
        .is_success());
    let (s, d) = q.rw(IoOpcode::READ, 8, 8, Out::None, 4096);
    assert!(s.is_success());
    assert_eq!(d, small);
    let (s, d) = q.rw(IoOpcode::READ, 100, 128, Out::None, 65536);
    assert!(s.is_success());
    assert!(d == big, "64 KiB read back differs");
    // Flush, Write Zeroes, DSM deallocate.
    assert!(q.rw(IoOpcode::FLUSH, 0, 1, Out::None, 0).0.is_success());
    assert!(q
        .rw(IoOpcode::WRITE_ZEROES, 8, 4, Out::None, 0)
        .0
        .is_success());
    let (_, d) = q.rw(IoOpcode::READ, 8, 8, Out::None, 4096);
    assert!(d[..2048].iter().all(|&b| b == 0));
    assert_eq!(&d[2048..], &small[2048..]);
    let mut range = [0u8; 16];
    range[4..8].copy_from_slice(&128u32.to_le_bytes());
    range[8..16].copy_from_slice(&100u64.to_le_bytes());
    let sqe = Sqe {
        opcode: IoOpcode::DATASET_MANAGEMENT,
        nsid: 1.into(),
        cdw11: leapio_nvme::cmd::DSM_ATTR_DEALLOCATE.into(),
        ..Default::default()
    };
    assert!(q
        .cmd(sqe, Out::InCapsule(&range), 0)
        .0
        .status_field()
        .is_success());
    let (_, d) = q.rw(IoOpcode::READ, 100, 128, Out::None, 65536);
    assert!(d.iter().all(|&b| b == 0));
    // Errors the host can cause become status codes.
    assert_eq!(
        q.rw(IoOpcode::READ, (16 << 11) - 1, 2, Out::None, 1024).0,
        Status::LBA_OUT_OF_RANGE
    );
    assert!(q
        .rw(IoOpcode::READ, 0, 8, Out::None, 512)
        .0
        .same_code(FabricsStatus::DATA_SGL_LENGTH_INVALID));
    assert_eq!(q.rw(0x7e, 0, 1, Out::None, 0).0, Status::INVALID_OPCODE);
    // What the metrics show: every command that reached the namespace.
    let io = tgt.t.as_ref().unwrap().sub.io[0].totals();
    assert_eq!((io.reads, io.writes, io.others, io.errors), (6, 2, 4, 3));
    assert_eq!(io.read_bytes, 2 * (4096 + 65536));
    assert_eq!(io.written_bytes, 4096 + 65536);
    assert_eq!(io.in_flight, 0);
    assert_eq!(io.read_latency.count(), 6);
    // Keep alive on the admin queue.
    let sqe = Sqe {
        opcode: AdminOpcode::KEEP_ALIVE,
        ..Default::default()
    };
    assert!(a.cmd(sqe, Out::None, 0).0.status_field().is_success());
    // Disconnect the I/O queue: answered, then the connection closes and
    // the QID can be connected again.
    let sqe = Sqe {
        opcode: FABRICS_OPCODE,
        nsid: u32::from(FcType::DISCONNECT).into(),
        ..Default::default()
    };
    assert!(q.cmd(sqe, Out::None, 0).0.status_field().is_success());
    assert!(q.recv().is_none());
    let mut q3 = Host::new(tgt.addr, dg);
    let t0 = Instant::now();
    loop {
        let c = q3.connect(1, cntlid, NQN, HOST, 0);
        if c.status_field().is_success() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (s, d) = q3.rw(IoOpcode::READ, 12, 4, Out::None, 2048);
    assert!(s.is_success());
    assert_eq!(d, &small[2048..]);
    // Shutdown through CC.SHN: the flush runs off the poller; CSTS says
    // when it is done.
    let (s, _) = a.prop(FcType::PROPERTY_SET, offset::CC, false, 0x0046_4001);
    assert!(s.is_success());
    wait_shutdown_complete(&mut a);
    drop(a);
    tgt.wait_controllers(0);
    // The I/O queue of the removed controller is closed by the target.
    assert!(q3.recv().is_none());
}

#[test]
fn write_read_without_digests() {
    io_session(Digests::default());
}

#[test]
fn write_read_with_header_and_data_digests() {
    io_session(Digests {
        header: true,
        data: true,
    });
}

/// A host that disabled SQ flow control gets its successful reads ended by
/// the last C2HData PDU (SUCCESS) and no response capsule: the next
/// command's replies would otherwise start with a stray response. Failed
/// reads and writes still get their response; other hosts never see
/// SUCCESS.
#[test]
fn reads_end_with_success_flagged_data_when_sq_flow_control_is_off() {
    let tgt = Target::start("");
    for off in [false, true] {
        let (_a, cntlid) = Host::admin(tgt.addr, Digests::default(), NQN, 0);
        let mut q = Host::new(tgt.addr, Digests::default());
        q.sqflow_disabled = off;
        let c = q.connect(1, cntlid, NQN, HOST, 0);
        assert!(c.status_field().is_success());
        let data = pattern(8192, 3);
        let (s, _) = q.rw(IoOpcode::WRITE, 8, 16, Out::R2t(&data), 0);
        assert!(s.is_success());
        for _ in 0..3 {
            let (s, back) = q.rw(IoOpcode::READ, 8, 16, Out::None, 8192);
            assert!(s.is_success());
            assert_eq!(back, data);
        }
        // Past the end: an error, which needs its response.
        let (s, _) = q.rw(IoOpcode::READ, (16 << 20 >> 9) - 1, 2, Out::None, 1024);
        assert_eq!(s, Status::LBA_OUT_OF_RANGE);
        let (s, _) = q.rw(IoOpcode::WRITE, 0, 1, Out::InCapsule(&data[..512]), 0);
        assert!(s.is_success());
        assert_eq!(q.successes, if off { 3 } else { 0 });
    }
}

/// Reads take the poller's sent buffers without zeroing them: the padding
/// a host's HPDA puts between a C2HData header and its data must still be
/// zero, never bytes of an earlier PDU (here Identify pages sent to the
/// admin queue, whose data began where this padding lies).
#[test]
fn padding_before_read_data_is_zero_in_recycled_buffers() {
    let tgt = Target::with_pollers("ram:16M", "", 1);
    let (mut a, cntlid) = Host::admin(tgt.addr, Digests::default(), NQN, 0);
    let mut q = Host::tcp(tgt.addr);
    let mut req = IcReq::new();
    req.hpda = 7; // data aligned to (7 + 1) * 4 = 32 bytes
    let mut out = Vec::new();
    write_pdu(&mut out, req.as_bytes(), &[], Digests::default(), 4);
    q.send(&out);
    assert!(matches!(
        q.recv().map(|p| p.header),
        Some(PduHeader::IcResp(_))
    ));
    assert!(q
        .connect(1, cntlid, NQN, HOST, 0)
        .status_field()
        .is_success());
    let data = pattern(4096, 5);
    let (s, _) = q.rw(IoOpcode::WRITE, 0, 8, Out::R2t(&data), 0);
    assert!(s.is_success());
    for _ in 0..4 {
        let (s, page) = a.identify(1, 0);
        assert!(s.is_success());
        assert!(page[..8].iter().any(|&b| b != 0), "the page's head is data");
        // One read, its PDUs taken raw off the socket.
        let mut sqe = Sqe {
            opcode: IoOpcode::READ,
            nsid: 1.into(),
            cdw12: 7.into(),
            ..Default::default()
        };
        sqe.cid = 0x77.into();
        SglDescriptor::transport(4096).store(&mut sqe);
        let b = q.capsule(&sqe, &[]);
        q.send(&b);
        let mut ch = [0u8; 8];
        q.sock.read_exact(&mut ch).unwrap();
        assert_eq!(ch[0], PduType::C2H_DATA);
        assert_eq!(ch[3], 32, "PDO honours HPDA");
        let plen = usize::try_from(u32::from_le_bytes(ch[4..8].try_into().unwrap())).unwrap();
        assert_eq!(plen, 32 + 4096);
        let mut rest = vec![0u8; plen - 8];
        q.sock.read_exact(&mut rest).unwrap();
        assert_eq!(&rest[24 - 8..32 - 8], &[0u8; 8], "padding is zero");
        assert_eq!(&rest[32 - 8..], &data[..]);
        let mut resp = [0u8; 24];
        q.sock.read_exact(&mut resp).unwrap();
        assert_eq!(resp[0], PduType::CAPSULE_RESP);
    }
}

#[test]
fn discovery_controller_lists_the_subsystem() {
    let tgt = Target::start("");
    let (mut d, _) = Host::admin(tgt.addr, Digests::default(), DISCOVERY_NQN, 0);
    let (s, page) = d.identify(1, 0);
    assert!(s.is_success());
    let id = IdentifyController::read_from_bytes(&page).unwrap();
    assert_eq!(id.cntrltype, 2);
    assert_eq!(
        leapio_nvme::fabrics::nqn_str(&id.subnqn),
        Some(DISCOVERY_NQN)
    );
    let log = get_log(&mut d, LID_DISCOVERY, 2048);
    let h = DiscoveryLogHeader::read_from_bytes(&log[..1024]).unwrap();
    assert_eq!(h.numrec.get(), 1);
    let e = DiscoveryLogEntry::read_from_bytes(&log[1024..2048]).unwrap();
    assert_eq!(e.trtype, 3);
    assert_eq!(e.subtype, 2);
    assert_eq!(leapio_nvme::fabrics::nqn_str(&e.subnqn), Some(NQN));
    assert_eq!(leapio_nvme::fabrics::nqn_str(&e.traddr), Some("127.0.0.1"));
    let port = tgt.addr.port().to_string();
    assert_eq!(
        leapio_nvme::fabrics::nqn_str(&e.trsvcid),
        Some(port.as_str())
    );
    // Namespace commands make no sense here.
    assert_eq!(d.identify(0, 1).0, Status::INVALID_FIELD);
    // No I/O queues on a discovery controller.
    let mut q = Host::new(tgt.addr, Digests::default());
    let c = q.connect(1, 1, DISCOVERY_NQN, HOST, 0);
    assert!(c
        .status_field()
        .same_code(FabricsStatus::CONNECT_INVALID_PARAMETERS));
}

/// Poll CSTS until the shutdown it was notified of is complete.
fn wait_shutdown_complete(a: &mut Host) {
    let t0 = Instant::now();
    loop {
        let (_, st) = a.prop(FcType::PROPERTY_GET, offset::CSTS, false, 0);
        match st & u64::from(csts::SHST_MASK) {
            x if x == u64::from(csts::SHST_COMPLETE) => return,
            x => assert_eq!(x, u64::from(csts::SHST_OCCURRING), "SHST"),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "shutdown never completed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_discovery_shutdown_flushes_nothing_and_blocks_no_one() {
    let tgt = Target::start("");
    let (_a, mut q) = healthy(&tgt);
    let (mut d, _) = Host::admin(tgt.addr, Digests::default(), DISCOVERY_NQN, 0);
    for _ in 0..50 {
        // Shutdown notifications over and over: answered at once.
        let (s, _) = d.prop(FcType::PROPERTY_SET, offset::CC, false, 0x0046_4001);
        assert!(s.is_success());
        let (_, st) = d.prop(FcType::PROPERTY_GET, offset::CSTS, false, 0);
        assert_eq!(
            st & u64::from(csts::SHST_MASK),
            u64::from(csts::SHST_COMPLETE)
        );
        let (s, _) = d.prop(FcType::PROPERTY_SET, offset::CC, false, 0x0046_0001);
        assert!(s.is_success());
    }
    still_healthy(&mut q, 9);
}

#[test]
fn commands_before_connect_get_no_buffers_and_no_r2t() {
    let tgt = Target::start("");
    let mut h = Host::new(tgt.addr, Digests::default());
    for i in 0..64u16 {
        // A 128 KiB write on a queue that never connected.
        let mut sqe = Sqe {
            opcode: IoOpcode::WRITE,
            nsid: 1.into(),
            cdw12: 255.into(),
            ..Default::default()
        };
        sqe.cid = i.into();
        SglDescriptor::transport(128 << 10).store(&mut sqe);
        let b = h.capsule(&sqe, &[]);
        h.send(&b);
        match h.recv().expect("connection closed").header {
            PduHeader::CapsuleResp(r) => {
                assert_eq!(r.cqe.cid.get(), i);
                assert!(r
                    .cqe
                    .status_field()
                    .same_code(Status::COMMAND_SEQUENCE_ERROR));
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }
}

fn get_log(h: &mut Host, lid: u8, len: usize) -> Vec<u8> {
    let numd = u32::try_from(len / 4 - 1).unwrap();
    let sqe = Sqe {
        opcode: AdminOpcode::GET_LOG_PAGE,
        cdw10: (u32::from(lid) | (numd << 16)).into(),
        ..Default::default()
    };
    let (c, d) = h.cmd(sqe, Out::None, len);
    assert!(c.status_field().is_success(), "{:?}", c.status_field());
    d
}

#[test]
fn allow_list_refuses_other_hosts() {
    let tgt = Target::start(",allow=nqn.2014-08.org.nvmexpress:uuid:someone-else");
    let mut h = Host::new(tgt.addr, Digests::default());
    let c = h.connect(0, CNTLID_DYNAMIC, NQN, HOST, 0);
    assert!(c
        .status_field()
        .same_code(FabricsStatus::CONNECT_INVALID_HOST));
    assert_eq!(c.dw0.get(), (1 << 16) | 512, "IATTR + IPO of HOSTNQN");
    // Wrong subsystem NQN.
    let c = h.connect(0, CNTLID_DYNAMIC, "nqn.2026-11.io.leapio:nope", HOST, 0);
    assert!(c
        .status_field()
        .same_code(FabricsStatus::CONNECT_INVALID_PARAMETERS));
    assert_eq!(c.dw0.get(), (1 << 16) | 256);
    // Discovery works, but lists nothing for this host.
    let (mut d, _) = Host::admin(tgt.addr, Digests::default(), DISCOVERY_NQN, 0);
    let log = get_log(&mut d, LID_DISCOVERY, 1024);
    let hdr = DiscoveryLogHeader::read_from_bytes(&log[..1024]).unwrap();
    assert_eq!(hdr.numrec.get(), 0);
    // Admin commands before the controller is enabled are refused.
    let mut h = Host::new(tgt.addr, Digests::default());
    let c = h.connect(0, CNTLID_DYNAMIC, DISCOVERY_NQN, HOST, 0);
    assert!(c.status_field().is_success());
    assert_eq!(h.identify(1, 0).0, Status::COMMAND_SEQUENCE_ERROR);
}

/// A healthy admin + I/O connection that must keep working while other
/// connections misbehave.
fn healthy(tgt: &Target) -> (Host, Host) {
    let (a, cntlid) = Host::admin(tgt.addr, Digests::default(), NQN, 0);
    let mut q = Host::new(tgt.addr, Digests::default());
    assert!(q
        .connect(1, cntlid, NQN, HOST, 0)
        .status_field()
        .is_success());
    (a, q)
}

fn still_healthy(q: &mut Host, seed: u8) {
    let d = pattern(8192, seed);
    assert!(q
        .rw(IoOpcode::WRITE, 64, 16, Out::R2t(&d), 0)
        .0
        .is_success());
    let (s, r) = q.rw(IoOpcode::READ, 64, 16, Out::None, 8192);
    assert!(s.is_success());
    assert!(r == d);
}

#[test]
fn a_host_that_never_reads_its_socket_is_not_served_without_bound() {
    let tgt = Target::with_ns("ram:64M", "");
    let (_a, mut q) = healthy(&tgt);
    // A second host asks for 1024 reads of 128 KiB (128 MiB of data owed)
    // and never reads an answer.
    let (_a2, cntlid) = Host::admin(tgt.addr, Digests::default(), NQN, 0);
    let mut slow = Host::new(tgt.addr, Digests::default());
    assert!(slow
        .connect(1, cntlid, NQN, HOST, 0)
        .status_field()
        .is_success());
    slow.sock
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut sent = 0;
    for i in 0..1024u16 {
        let mut sqe = Sqe {
            opcode: IoOpcode::READ,
            nsid: 1.into(),
            cdw10: (u32::from(i % 32) * 256).into(),
            cdw12: 255.into(),
            ..Default::default()
        };
        sqe.cid = i.into();
        SglDescriptor::transport(128 << 10).store(&mut sqe);
        let b = slow.capsule(&sqe, &[]);
        if slow.sock.write_all(&b).is_err() {
            // The target stopped reading: our send buffer filled up.
            break;
        }
        sent += 1;
        if i % 32 == 31 {
            // A queue's worth at a time, as if the answers had been read
            // (the first ones quickly: queued data and reads in the backend
            // both count towards the limit).
            std::thread::sleep(Duration::from_millis(if i < 256 { 1 } else { 30 }));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    // Only a few MiB are queued for it (plus socket buffers), not 128 MiB.
    let peak = tgt.t.as_ref().map_or(0, TcpTarget::tx_peak);
    assert!(
        peak <= super::conn::TX_LIMIT + (256 << 10),
        "{} MiB queued for a host that sent {sent} reads and read nothing",
        peak >> 20
    );
    // Everyone else is served meanwhile.
    for seed in 0..4 {
        still_healthy(&mut q, seed);
    }
    // Once it reads, it is answered again (commands beyond its queue's 32
    // entries are Command Sequence Errors).
    slow.sock.set_write_timeout(None).unwrap();
    let (mut answered, mut ok) = (0, 0);
    while ok < 32 && answered < sent {
        match slow.recv().expect("connection closed").header {
            PduHeader::CapsuleResp(r) => {
                let st = r.cqe.status_field();
                assert!(
                    st.is_success() || st.same_code(Status::COMMAND_SEQUENCE_ERROR),
                    "{st}"
                );
                ok += usize::from(st.is_success());
                answered += 1;
            }
            PduHeader::C2hData(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(ok >= 32, "only {ok} reads served");
}

#[test]
fn malformed_pdus_end_only_their_connection() {
    let tgt = Target::start("");
    let (_a, mut q) = healthy(&tgt);
    let raw = |b: &[u8]| {
        let mut h = Host::tcp(tgt.addr);
        h.send(b);
        h
    };
    // Unknown PDU type.
    let t = raw(&[0x42, 0, 24, 0, 24, 0, 0, 0]).expect_term(Fes::INVALID_PDU_HEADER_FIELD);
    assert_eq!(t.fei.get(), 0);
    // A command before the ICReq.
    let mut c = CapsuleCmd::new();
    c.ch.plen = 72.into();
    raw(c.as_bytes()).expect_term(Fes::PDU_SEQUENCE_ERROR);
    // ICReq with a wrong HLEN.
    let mut req = IcReq::new();
    req.ch.plen = 128.into();
    req.ch.hlen = 100;
    let t = raw(req.as_bytes()).expect_term(Fes::INVALID_PDU_HEADER_FIELD);
    assert_eq!(t.fei.get(), 2);
    // ICReq with an unsupported PFV.
    let mut req = IcReq::new();
    req.ch.plen = 128.into();
    req.pfv = 1.into();
    let t = raw(req.as_bytes()).expect_term(Fes::UNSUPPORTED_PARAMETER);
    assert_eq!(t.fei.get(), 8);
    // A second ICReq.
    let mut h = Host::new(tgt.addr, Digests::default());
    let mut req = IcReq::new();
    req.ch.plen = 128.into();
    h.send(req.as_bytes());
    h.expect_term(Fes::PDU_SEQUENCE_ERROR);
    // Far more in-capsule data than allowed.
    let mut h = Host::new(tgt.addr, Digests::default());
    let mut c = CapsuleCmd::new();
    c.ch.pdo = 72;
    c.ch.plen = (1u32 << 30).into();
    h.send(c.as_bytes());
    h.expect_term(Fes::DATA_LIMIT_EXCEEDED);
    // PLEN shorter than the header.
    let mut h = Host::new(tgt.addr, Digests::default());
    let mut c = CapsuleCmd::new();
    c.ch.plen = 30.into();
    h.send(c.as_bytes());
    let t = h.expect_term(Fes::INVALID_PDU_HEADER_FIELD);
    assert_eq!(t.fei.get(), 4);
    // Wrong header digest.
    let dg = Digests {
        header: true,
        data: false,
    };
    let mut h = Host::new(tgt.addr, dg);
    let mut b = h.capsule(&Sqe::default(), &[]);
    b[72] ^= 0xff;
    h.send(&b);
    h.expect_term(Fes::HEADER_DIGEST_ERROR);
    // H2CData nobody asked for.
    let mut h = Host::new(tgt.addr, Digests::default());
    let mut d = DataHdr::new(PduType::H2C_DATA);
    d.ttag = 5.into();
    d.datal = 4.into();
    let mut b = Vec::new();
    write_pdu(&mut b, d.as_bytes(), &[1, 2, 3, 4], Digests::default(), 4);
    h.send(&b);
    let t = h.expect_term(Fes::INVALID_PDU_HEADER_FIELD);
    assert_eq!(t.fei.get(), 10);
    // H2CData past the end of what the R2T asked for.
    let (_a2, cntlid) = Host::admin(tgt.addr, Digests::default(), NQN, 0);
    let mut h = Host::new(tgt.addr, Digests::default());
    assert!(h
        .connect(1, cntlid, NQN, HOST, 0)
        .status_field()
        .is_success());
    let mut sqe = Sqe {
        opcode: IoOpcode::WRITE,
        nsid: 1.into(),
        cid: 9.into(),
        cdw12: 7.into(),
        ..Default::default()
    };
    SglDescriptor::transport(4096).store(&mut sqe);
    let b = h.capsule(&sqe, &[]);
    h.send(&b);
    let Some(PduHeader::R2t(r)) = h.recv().map(|p| p.header) else {
        panic!("no R2T")
    };
    assert_eq!(r.r2tl.get(), 4096);
    let mut d = DataHdr::new(PduType::H2C_DATA);
    d.cccid = 9.into();
    d.ttag = r.ttag;
    d.datao = 2048.into();
    d.datal = 4096.into();
    let mut b = Vec::new();
    write_pdu(&mut b, d.as_bytes(), &[0; 4096], Digests::default(), 4);
    h.send(&b);
    h.expect_term(Fes::DATA_OUT_OF_RANGE);
    // A truncated PDU and a vanished peer.
    let mut h = Host::new(tgt.addr, Digests::default());
    let b = h.capsule(&Sqe::default(), &[]);
    h.send(&b[..30]);
    drop(h);
    still_healthy(&mut q, 9);
}

#[test]
fn data_digest_error_fails_the_command_only() {
    let tgt = Target::start("");
    let dg = Digests {
        header: true,
        data: true,
    };
    let (_a, cntlid) = Host::admin(tgt.addr, dg, NQN, 0);
    let mut q = Host::new(tgt.addr, dg);
    assert!(q
        .connect(1, cntlid, NQN, HOST, 0)
        .status_field()
        .is_success());
    let data = pattern(512, 3);
    let mut sqe = Sqe {
        opcode: IoOpcode::WRITE,
        nsid: 1.into(),
        cid: 77.into(),
        ..Default::default()
    };
    SglDescriptor::in_capsule(0, 512).store(&mut sqe);
    let mut b = q.capsule(&sqe, &data);
    let n = b.len();
    b[n - 1] ^= 1;
    q.send(&b);
    let Some(PduHeader::CapsuleResp(r)) = q.recv().map(|p| p.header) else {
        panic!()
    };
    assert_eq!(r.cqe.cid.get(), 77);
    assert!(r
        .cqe
        .status_field()
        .same_code(FabricsStatus::TRANSIENT_TRANSPORT_ERROR));
    still_healthy(&mut q, 4);
}

#[test]
fn silent_host_times_out() {
    let tgt = Target::start(",icreq-timeout-ms=200");
    let (_a, mut q) = healthy(&tgt);
    let mut h = Host::tcp(tgt.addr);
    let t0 = Instant::now();
    h.expect_term(Fes::PDU_SEQUENCE_ERROR);
    assert!(t0.elapsed() < Duration::from_secs(3));
    // Past the ICReq, a queue that never sends its Connect is closed too
    // (after twice the ICReq time).
    let mut half = Host::new(tgt.addr, Digests::default());
    let t0 = Instant::now();
    assert!(half.recv().is_none(), "a half-open queue was kept");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    still_healthy(&mut q, 5);
}

#[test]
fn keep_alive_timeout_tears_the_controller_down() {
    let tgt = Target::start("");
    let (_live_a, mut live_q) = healthy(&tgt);
    let (mut a, cntlid) = Host::admin(tgt.addr, Digests::default(), NQN, 1000);
    let mut q = Host::new(tgt.addr, Digests::default());
    assert!(q
        .connect(1, cntlid, NQN, HOST, 0)
        .status_field()
        .is_success());
    assert_eq!(tgt.controllers(), 2);
    // Keep-alives hold it up...
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(300));
        let sqe = Sqe {
            opcode: AdminOpcode::KEEP_ALIVE,
            ..Default::default()
        };
        assert!(a.cmd(sqe, Out::None, 0).0.status_field().is_success());
    }
    // ...silence brings it down, with its I/O queue.
    assert!(a.recv().is_none());
    assert!(q.recv().is_none());
    tgt.wait_controllers(1);
    still_healthy(&mut live_q, 6);
}

#[test]
fn hosts_vanishing_mid_command_leak_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ns.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let tgt = Target::with_ns(&format!("file:{}", img.display()), "");
    for round in 0..3u8 {
        let (a, cntlid) = Host::admin(tgt.addr, Digests::default(), NQN, 0);
        let mut q = Host::new(tgt.addr, Digests::default());
        assert!(q
            .connect(1, cntlid, NQN, HOST, 0)
            .status_field()
            .is_success());
        still_healthy(&mut q, round);
        // A write waiting for its data, and reads in flight, then gone.
        let mut sqe = Sqe {
            opcode: IoOpcode::WRITE,
            nsid: 1.into(),
            cid: 1.into(),
            cdw12: 127.into(),
            ..Default::default()
        };
        SglDescriptor::transport(65536).store(&mut sqe);
        let b = q.capsule(&sqe, &[]);
        q.send(&b);
        for cid in 2..20u16 {
            let mut sqe = Sqe {
                opcode: IoOpcode::READ,
                nsid: 1.into(),
                cid: cid.into(),
                cdw12: 255.into(),
                ..Default::default()
            };
            SglDescriptor::transport(131072).store(&mut sqe);
            let b = q.capsule(&sqe, &[]);
            q.send(&b);
        }
        drop(q);
        drop(a);
        tgt.wait_controllers(0);
        let t0 = Instant::now();
        while tgt.t.as_ref().unwrap().connections() != (0, 0) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "connections/orphans left: {:?}",
                tgt.t.as_ref().unwrap().connections()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

// ---- DH-HMAC-CHAP ----

mod dhchap {
    use super::*;
    use leapio_nvme::fabrics::{AuthCmd, CONNECT_AUTHREQ_ATR};
    use leapio_nvme_auth::msg::{self, Message, SECP_DHCHAP, SPSP_DHCHAP};
    use leapio_nvme_auth::{AuthError, FailureCode, HostTransaction, Secret, Secrets};

    const S_HOST: &str = "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";

    fn secrets(bidirectional: bool) -> Secrets {
        Secrets {
            host: S_HOST.parse().unwrap(),
            ctrl: bidirectional.then(|| Secret::generate(48, None).unwrap()),
        }
    }

    fn target(s: &Secrets, extra: &str) -> Target {
        let ctrl = s.ctrl.as_ref().map_or(String::new(), |c| format!(":{c}"));
        Target::start(&format!(
            ",allow={HOST}:{}{ctrl},allow=nqn.x:plain{extra}",
            s.host
        ))
    }

    impl Host {
        fn auth_cmd(&mut self, fctype: u8, secp: u8, len: u32) -> Sqe {
            let mut a = AuthCmd::read_from_bytes(&[0u8; 64][..]).unwrap();
            a.opcode = FABRICS_OPCODE;
            a.fctype = fctype;
            a.secp = secp;
            a.spsp0 = SPSP_DHCHAP;
            a.spsp1 = SPSP_DHCHAP;
            a.len = len.into();
            Sqe::read_from_bytes(a.as_bytes()).unwrap()
        }

        fn auth_send(&mut self, m: &[u8]) -> Status {
            let sqe = self.auth_cmd(
                FcType::AUTH_SEND,
                SECP_DHCHAP,
                u32::try_from(m.len()).unwrap(),
            );
            self.cmd(sqe, Out::InCapsule(m), 0).0.status_field()
        }

        fn auth_recv(&mut self) -> (Status, Vec<u8>) {
            let sqe = self.auth_cmd(FcType::AUTH_RECV, SECP_DHCHAP, 4096);
            let (c, d) = self.cmd(sqe, Out::None, 4096);
            (c.status_field(), d)
        }

        /// One DH-HMAC-CHAP transaction as the host runs it.
        fn authenticate(&mut self, s: &Secrets, tid: u16) -> Result<(), AuthError> {
            let mut t = HostTransaction::new(s, HOST, NQN, tid);
            assert!(self.auth_send(&t.negotiate()).is_success());
            let (st, ch) = self.auth_recv();
            assert!(st.is_success(), "{st:?}");
            let reply = t.reply(&ch)?;
            assert!(self.auth_send(&reply).is_success());
            let (st, s1) = self.auth_recv();
            assert!(st.is_success(), "{st:?}");
            if let Some(s2) = t.finish(&s1)? {
                assert!(self.auth_send(&s2).is_success());
            }
            Ok(())
        }

        fn connect_auth(&mut self, qid: u16, cntlid: u16) -> u16 {
            let c = self.connect(qid, cntlid, NQN, HOST, 0);
            assert!(c.status_field().is_success(), "{:?}", c.status_field());
            assert_ne!(c.dw0.get() & CONNECT_AUTHREQ_ATR, 0, "ATR set");
            u16::try_from(c.dw0.get() & 0xffff).unwrap()
        }
    }

    #[test]
    fn every_queue_authenticates_before_it_carries_anything() {
        for (bidi, groups) in [(false, "null"), (true, "ffdhe2048")] {
            let s = secrets(bidi);
            let tgt = target(&s, &format!(",dhchap-dhgroups={groups}"));
            let mut a = Host::new(tgt.addr, Digests::default());
            let cntlid = a.connect_auth(0, CNTLID_DYNAMIC);
            // an unauthenticated host gets nothing
            let (st, _) = a.prop(FcType::PROPERTY_GET, offset::CAP, true, 0);
            assert_eq!(st, FabricsStatus::AUTH_REQUIRED);
            assert_eq!(a.identify(1, 0).0, FabricsStatus::AUTH_REQUIRED);
            a.authenticate(&s, 1).unwrap();
            let (st, _) = a.prop(FcType::PROPERTY_SET, offset::CC, false, 0x0046_0001);
            assert!(st.is_success());
            // the I/O queue too
            let mut q = Host::new(tgt.addr, Digests::default());
            q.connect_auth(1, cntlid);
            let data = pattern(4096, 9);
            let (st, _) = q.rw(IoOpcode::WRITE, 0, 8, Out::InCapsule(&data), 0);
            assert_eq!(st, FabricsStatus::AUTH_REQUIRED);
            q.authenticate(&s, 2).unwrap();
            let (st, _) = q.rw(IoOpcode::WRITE, 0, 8, Out::InCapsule(&data), 0);
            assert!(st.is_success());
            let (st, back) = q.rw(IoOpcode::READ, 0, 8, Out::None, 4096);
            assert!(st.is_success());
            assert_eq!(back, data);
            // re-authentication on a live queue, with a new transaction ID
            a.authenticate(&s, 3).unwrap();
            assert!(a.identify(1, 0).0.is_success());
        }
    }

    #[test]
    fn a_queue_that_does_not_authenticate_in_time_is_closed() {
        let s = secrets(false);
        let tgt = target(&s, ",auth-timeout-ms=300");
        let mut h = Host::new(tgt.addr, Digests::default());
        h.connect_auth(0, CNTLID_DYNAMIC);
        tgt.wait_controllers(1);
        let t0 = Instant::now();
        assert!(h.recv().is_none(), "closed");
        assert!(t0.elapsed() < Duration::from_secs(5));
        tgt.wait_controllers(0);
    }

    #[test]
    fn hosts_without_a_secret_are_not_asked() {
        let s = secrets(false);
        let tgt = target(&s, "");
        let mut h = Host::new(tgt.addr, Digests::default());
        let c = h.connect(0, CNTLID_DYNAMIC, NQN, "nqn.x:plain", 0);
        assert!(c.status_field().is_success());
        assert_eq!(c.dw0.get() & CONNECT_AUTHREQ_ATR, 0);
        // nothing to authenticate against: AUTH_Send is out of sequence
        assert_eq!(
            h.auth_send(&msg::negotiate(1, &[], &[])),
            Status::COMMAND_SEQUENCE_ERROR
        );
        let (st, _) = h.prop(FcType::PROPERTY_GET, offset::CAP, true, 0);
        assert!(st.is_success());
    }

    #[test]
    fn a_wrong_secret_gets_failure1_and_a_closed_connection() {
        let s = secrets(false);
        let tgt = target(&s, "");
        let mut h = Host::new(tgt.addr, Digests::default());
        h.connect_auth(0, CNTLID_DYNAMIC);
        tgt.wait_controllers(1);
        let wrong = Secrets {
            host: Secret::generate(32, None).unwrap(),
            ctrl: None,
        };
        let r = h.authenticate(&wrong, 1);
        assert!(
            matches!(r, Err(AuthError::Refused(FailureCode::FAILED))),
            "{r:?}"
        );
        assert!(h.recv().is_none(), "connection closed after Failure1");
        tgt.wait_controllers(0);
    }

    #[test]
    fn a_wrong_controller_is_rejected_by_the_host() {
        let s = secrets(true);
        let tgt = target(&s, "");
        let mut h = Host::new(tgt.addr, Digests::default());
        h.connect_auth(0, CNTLID_DYNAMIC);
        let mut impostor_check = s.clone();
        impostor_check.ctrl = Some(Secret::generate(48, None).unwrap());
        let mut t = HostTransaction::new(&impostor_check, HOST, NQN, 1);
        assert!(h.auth_send(&t.negotiate()).is_success());
        let reply = t.reply(&h.auth_recv().1).unwrap();
        assert!(h.auth_send(&reply).is_success());
        let e = t.finish(&h.auth_recv().1).unwrap_err();
        assert!(matches!(e, AuthError::ControllerNotAuthenticated));
        // the host says so; the controller tears the queue down
        assert!(h.auth_send(&t.failure2(e.failure_code())).is_success());
        assert!(h.recv().is_none());
        tgt.wait_controllers(0);
    }

    #[test]
    fn malformed_auth_commands_and_messages() {
        let s = secrets(false);
        let tgt = target(&s, "");
        let mut h = Host::new(tgt.addr, Digests::default());
        h.connect_auth(0, CNTLID_DYNAMIC);
        // another security protocol, a zero length, a length that does not
        // match the data: Invalid Field, the queue lives on
        let sqe = h.auth_cmd(FcType::AUTH_SEND, 0xea, 8);
        assert_eq!(
            h.cmd(sqe, Out::InCapsule(&[0; 8]), 0).0.status_field(),
            Status::INVALID_FIELD
        );
        let sqe = h.auth_cmd(FcType::AUTH_RECV, SECP_DHCHAP, 0);
        assert_eq!(
            h.cmd(sqe, Out::None, 16).0.status_field(),
            Status::INVALID_FIELD
        );
        let sqe = h.auth_cmd(FcType::AUTH_SEND, SECP_DHCHAP, 9);
        assert_eq!(
            h.cmd(sqe, Out::InCapsule(&[0; 8]), 0).0.status_field(),
            Status::INVALID_FIELD
        );
        // an AUTH_Recv buffer too small for the Challenge
        assert!(h
            .auth_send(&msg::negotiate(
                1,
                &leapio_nvme_auth::HashId::ALL,
                &leapio_nvme_auth::DhGroup::ALL
            ))
            .is_success());
        let sqe = h.auth_cmd(FcType::AUTH_RECV, SECP_DHCHAP, 16);
        assert_eq!(
            h.cmd(sqe, Out::None, 16).0.status_field(),
            Status::INVALID_FIELD
        );
        assert!(h.recv().is_none(), "closed");

        // a garbage message: Failure1, then the queue is closed
        let mut h = Host::new(tgt.addr, Digests::default());
        h.connect_auth(0, CNTLID_DYNAMIC);
        assert!(h
            .auth_send(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0])
            .is_success());
        let (st, m) = h.auth_recv();
        assert!(st.is_success());
        assert!(matches!(
            msg::parse(&m).unwrap(),
            Message::Failure1 {
                code: FailureCode::INCORRECT_MESSAGE,
                ..
            }
        ));
        assert!(h.recv().is_none(), "closed");

        // a replayed transaction ID after a successful transaction
        let mut h = Host::new(tgt.addr, Digests::default());
        h.connect_auth(0, CNTLID_DYNAMIC);
        h.authenticate(&s, 4).unwrap();
        let r = h.authenticate(&s, 4);
        assert!(
            matches!(r, Err(AuthError::Refused(FailureCode::INCORRECT_PAYLOAD))),
            "{r:?}"
        );
        assert!(h.recv().is_none(), "closed");
        tgt.wait_controllers(0);
    }
}

/// A zoned namespace over NVMe/TCP: the ZNS Identify pages and effects
/// log, writes at the write pointer, Zone Append with the LBA in the
/// completion, a zone report, the open limit.
#[test]
fn zoned_namespace_over_tcp() {
    use leapio_nvme::zns::{Csi, IdentifyNamespaceZns, ZoneDescriptor, Zsa, ZSEND_SELECT_ALL};
    let dir = tempfile::tempdir().unwrap();
    // 4 dies x 8 blocks x 4 pages: 8 zones of 16 blocks, 2 open at most.
    let ns = format!(
        "zns:{}?channels=2&dies=2&blocks=8&pages=4&timing=0&max_open=2&max_active=3",
        dir.path().join("z.nand").display()
    );
    let tgt = Target::with_ns(&ns, "");
    let (mut a, mut q) = healthy(&tgt);
    let identify = |a: &mut Host, cns: u8, csi: u8| {
        let sqe = Sqe {
            opcode: AdminOpcode::IDENTIFY,
            nsid: 1.into(),
            cdw10: u32::from(cns).into(),
            cdw11: (u32::from(csi) << 24).into(),
            ..Default::default()
        };
        let (c, d) = a.cmd(sqe, Out::None, 4096);
        (c.status_field(), d)
    };
    let (s, page) = identify(&mut a, 0x05, Csi::ZNS);
    assert!(s.is_success(), "{s:?}");
    let z = IdentifyNamespaceZns::read_from_bytes(&page).unwrap();
    assert_eq!(
        (z.mor.get(), z.mar.get(), z.lbafe[0].zsze.get()),
        (1, 2, 16)
    );
    let (s, page) = identify(&mut a, 0x03, 0);
    assert!(s.is_success());
    assert!(
        page.windows(5).any(|w| w == [4, 1, 0, 0, Csi::ZNS]),
        "CSI descriptor"
    );
    let sqe = Sqe {
        opcode: AdminOpcode::GET_LOG_PAGE,
        cdw10: (0x05u32 | ((4096 / 4 - 1) << 16)).into(),
        cdw14: (u32::from(Csi::ZNS) << 24).into(),
        ..Default::default()
    };
    let (c, log) = a.cmd(sqe, Out::None, 4096);
    assert!(c.status_field().is_success());
    let iocs =
        |op: usize| u32::from_le_bytes(log[1024 + op * 4..1028 + op * 4].try_into().unwrap());
    assert_eq!(iocs(usize::from(IoOpcode::ZONE_APPEND)) & 1, 1);

    let data = pattern(8192, 3);
    assert!(q
        .rw(IoOpcode::WRITE, 0, 2, Out::InCapsule(&data), 0)
        .0
        .is_success());
    assert_eq!(
        q.rw(IoOpcode::WRITE, 0, 1, Out::InCapsule(&data[..4096]), 0)
            .0,
        Status::ZONE_INVALID_WRITE
    );
    // Zone Append to zone 0: lands at LBA 2, which comes back in DW0.
    let sqe = Sqe {
        opcode: IoOpcode::ZONE_APPEND,
        nsid: 1.into(),
        ..Default::default()
    };
    let (c, _) = q.cmd(sqe, Out::InCapsule(&data[..4096]), 0);
    assert!(c.status_field().is_success(), "{:?}", c.status_field());
    assert_eq!((c.dw0.get(), c.dw1.get()), (2, 0));
    let (s, d) = q.rw(IoOpcode::READ, 0, 4, Out::None, 16384);
    assert!(s.is_success());
    assert_eq!((&d[..8192], &d[8192..12288]), (&data[..], &data[..4096]));
    assert!(
        d[12288..].iter().all(|&b| b == 0),
        "past the write pointer: zeroes"
    );
    // Zone Management: open zones 1 and 2 (zone 0 is implicitly open):
    // the second is one too many.
    let send = |q: &mut Host, slba: u64, cdw13: u32| {
        let sqe = Sqe {
            opcode: IoOpcode::ZONE_MGMT_SEND,
            nsid: 1.into(),
            cdw10: u32::try_from(slba).unwrap().into(),
            cdw13: cdw13.into(),
            ..Default::default()
        };
        q.cmd(sqe, Out::None, 0).0.status_field()
    };
    assert!(send(&mut q, 16, u32::from(Zsa::OPEN)).is_success());
    assert_eq!(
        send(&mut q, 32, u32::from(Zsa::OPEN)),
        Status::TOO_MANY_OPEN_ZONES
    );
    assert_eq!(
        send(&mut q, 33, u32::from(Zsa::OPEN)),
        Status::INVALID_FIELD
    );
    // Report zones: 8 zones, zone 0 implicitly open at 3, zone 1 explicitly open.
    let sqe = Sqe {
        opcode: IoOpcode::ZONE_MGMT_RECV,
        nsid: 1.into(),
        cdw12: (4096u32 / 4 - 1).into(),
        ..Default::default()
    };
    let (c, rep) = q.cmd(sqe, Out::None, 4096);
    assert!(c.status_field().is_success(), "{:?}", c.status_field());
    assert_eq!(u64::from_le_bytes(rep[..8].try_into().unwrap()), 8);
    let d0 = ZoneDescriptor::read_from_bytes(&rep[64..128]).unwrap();
    let d1 = ZoneDescriptor::read_from_bytes(&rep[128..192]).unwrap();
    assert_eq!(
        (d0.zs >> 4, d0.wp.get(), d1.zs >> 4, d1.zslba.get()),
        (2, 3, 3, 16)
    );
    // Reset all: zone 0 empty again and writable from its start.
    assert!(send(&mut q, 0, u32::from(Zsa::RESET) | ZSEND_SELECT_ALL).is_success());
    assert!(q
        .rw(IoOpcode::WRITE, 0, 1, Out::InCapsule(&data[..4096]), 0)
        .0
        .is_success());
}
