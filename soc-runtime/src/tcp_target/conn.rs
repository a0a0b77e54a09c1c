//! One NVMe/TCP connection (one queue): the NVMe/TCP wire (ICReq/ICResp,
//! command capsule PDUs, R2T/H2CData, C2HData, responses, TermReqs) around
//! the transport-neutral queue of [`crate::fabrics::queue`]. It does no
//! I/O of its own: its poller feeds it the bytes it read
//! ([`Conn::on_bytes`]) and the completions of its backend operations
//! ([`Conn::op_done`]), and writes out what it queued ([`TcpWire::tx`]);
//! what it needs besides (the subsystem, the backend queues, read buffers)
//! is lent for each call in a [`TcpCtx`].

use super::bufs::BufPool;
use crate::fabrics::queue::{Ctx, DataError, FabricQueue, OpOutcome, Wire};
use crate::fabrics::subsystem::{Limits, Subsystem};
use leapio_nvme::fabrics::FabricsStatus;
use leapio_nvme::tcp::{
    data_off, icreq_off, layout, seal, write_pdu, DataHdr, Digests, Fes, IcReq, IcResp,
    ParserConfig, Pdu, PduError, PduFlags, PduHeader, PduParser, PduType, R2t, Role, TermReq,
};
use leapio_nvme::{Cqe, Sqe};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use zerocopy::IntoBytes;

/// Most bytes queued for a host before its input is no longer read (a few
/// maximum-size reads' worth).
pub(super) const TX_LIMIT: usize = 4 << 20;

/// How long a connection being terminated may take to flush its TermReq.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for the ICReq until the deadline.
    AwaitIcReq {
        deadline: Instant,
    },
    Ready,
    /// Flushing what is queued (a TermReq, a Disconnect response), then close.
    Closing {
        deadline: Instant,
    },
}

/// What a connection works with, lent by its poller for one call: the
/// queue's context, and the poller's recycled read buffers.
pub(super) struct TcpCtx<'a> {
    pub fab: Ctx<'a>,
    /// Sent C2HData buffers, for the next reads.
    pub bufs: &'a mut BufPool,
}

/// The NVMe/TCP side of a connection: its phase, the PDU parser and what
/// is queued for the host.
pub(super) struct TcpWire {
    pub peer: SocketAddr,
    pub phase: Phase,
    pub parser: PduParser,
    pub dg: Digests,
    /// Data alignment the host asked for (HPDA), in bytes.
    host_align: usize,
    pub tx: VecDeque<Vec<u8>>,
    pub tx_off: usize,
    /// Bytes in `tx` not yet written. Past [`TX_LIMIT`] the connection's
    /// input is not read: a host that never reads its socket stops being
    /// served instead of growing this queue.
    pub tx_bytes: usize,
}

/// One connection.
pub(super) struct Conn {
    pub wire: TcpWire,
    pub q: FabricQueue<Vec<u8>>,
}

/// The wire with the poller's buffers, as the queue uses it for one call.
struct Out<'a> {
    w: &'a mut TcpWire,
    bufs: &'a mut BufPool,
}

impl Wire for Out<'_> {
    type Buf = Vec<u8>;

    fn data_buffer(&mut self, len: usize) -> Option<Vec<u8>> {
        Some(vec![0u8; len])
    }

    fn read_buffer(&mut self, len: usize) -> Option<(Vec<u8>, usize)> {
        let l = layout(PduType::C2H_DATA, len, self.w.dg, self.w.host_align);
        // The header room is cleared; data and digest are written before
        // the buffer is sent (see `bufs`).
        Some((self.bufs.take(l.plen, l.pdo), l.pdo))
    }

    fn fetch(&mut self, idx: usize, sqe: &Sqe, buf: &mut [u8]) {
        let mut r = R2t::new();
        r.cccid = sqe.cid;
        r.ttag = u16::try_from(idx).unwrap_or(0).into();
        r.r2to = 0.into();
        r.r2tl = u32::try_from(buf.len()).unwrap_or(0).into();
        let mut out = Vec::with_capacity(28);
        write_pdu(&mut out, r.as_bytes(), &[], self.w.dg, self.w.host_align);
        self.w.queue_tx(out);
    }

    fn send_data(&mut self, sqe: &Sqe, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut h = DataHdr::new(PduType::C2H_DATA);
        h.ch.set_flags(PduFlags::DATA_LAST);
        h.cccid = sqe.cid;
        h.datal = u32::try_from(data.len()).unwrap_or(0).into();
        let mut out = Vec::new();
        write_pdu(&mut out, h.as_bytes(), data, self.w.dg, self.w.host_align);
        self.w.queue_tx(out);
    }

    fn send_read(
        &mut self,
        sqe: &Sqe,
        mut buf: Vec<u8>,
        _at: usize,
        len: usize,
        last: bool,
    ) -> bool {
        // The data is already in place after the header room: fill in the
        // C2HData header, seal it and send the buffer as it is. With SQ
        // flow control disabled the last PDU flagged SUCCESS answers the
        // command (the transport specification allows SUCCESS only then).
        let mut h = DataHdr::new(PduType::C2H_DATA);
        let mut flags = PduFlags::DATA_LAST;
        flags.set(PduFlags::DATA_SUCCESS, last);
        h.ch.set_flags(flags);
        h.cccid = sqe.cid;
        h.datal = u32::try_from(len).unwrap_or(0).into();
        buf[..24].copy_from_slice(h.as_bytes());
        seal(&mut buf, len, self.w.dg);
        self.w.queue_tx(buf);
        last
    }

    fn drop_read(&mut self, buf: Vec<u8>) {
        self.bufs.give(buf);
    }

    fn respond(&mut self, cqe: &Cqe) {
        let mut r = leapio_nvme::tcp::CapsuleResp::new();
        r.cqe = *cqe;
        let mut out = Vec::with_capacity(28);
        write_pdu(&mut out, r.as_bytes(), &[], self.w.dg, self.w.host_align);
        self.w.queue_tx(out);
    }

    fn close_after_flush(&mut self) {
        self.w.close_after_flush();
    }

    fn over_limit(&self, owed: usize) -> bool {
        self.w.tx_bytes + owed >= TX_LIMIT
    }
}

impl TcpWire {
    /// Answer what is queued, then close.
    fn close_after_flush(&mut self) {
        if !self.closing() {
            self.phase = Phase::Closing {
                deadline: Instant::now() + CLOSE_LINGER,
            };
        }
    }

    pub fn closing(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. })
    }

    /// Queue a PDU for sending.
    pub fn queue_tx(&mut self, pdu: Vec<u8>) {
        self.tx_bytes += pdu.len();
        self.tx.push_back(pdu);
    }

    /// Queue a C2HTermReq quoting `hdr` and stop serving this connection.
    pub fn terminate(&mut self, fes: u16, fei: u32, hdr: &[u8]) {
        if self.closing() {
            return;
        }
        let t = TermReq::new(PduType::C2H_TERM_REQ, fes, fei);
        let quote = &hdr[..hdr.len().min(128)];
        let mut out = Vec::new();
        write_pdu(&mut out, t.as_bytes(), quote, Digests::default(), 4);
        self.queue_tx(out);
        self.phase = Phase::Closing {
            deadline: Instant::now() + CLOSE_LINGER,
        };
    }
}

impl Conn {
    /// A new connection from `peer`, waiting for its ICReq.
    pub fn new(peer: SocketAddr, l: &Limits) -> Conn {
        Conn {
            wire: TcpWire {
                peer,
                phase: Phase::AwaitIcReq {
                    deadline: Instant::now() + l.icreq_timeout,
                },
                parser: PduParser::new(ParserConfig {
                    role: Role::Controller,
                    digests: Digests::default(),
                    max_capsule_data: l.in_capsule,
                    max_data: l.maxh2cdata,
                }),
                dg: Digests::default(),
                host_align: 4,
                tx: VecDeque::new(),
                tx_off: 0,
                tx_bytes: 0,
            },
            q: FabricQueue::new(peer.to_string(), l),
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.wire.peer
    }

    pub fn closing(&self) -> bool {
        self.wire.closing()
    }

    pub fn tx_pending(&self) -> bool {
        !self.wire.tx.is_empty()
    }

    /// Whether the host is owed (queued or being read) [`TX_LIMIT`] bytes
    /// or more: its input is then not read, and its reads wait unstarted.
    pub fn over_limit(&self) -> bool {
        self.wire.tx_bytes + self.q.owed >= TX_LIMIT
    }

    /// Bytes received: parse them and act on every PDU in them, until the
    /// connection is terminated.
    pub(super) fn on_bytes(&mut self, cx: &mut TcpCtx<'_>, bytes: &[u8]) {
        let mut off = 0;
        while off < bytes.len() && !self.closing() {
            let (used, r) = self.wire.parser.feed(&bytes[off..]);
            off += used;
            match r {
                Ok(None) => {}
                Ok(Some(pdu)) => self.on_parsed(cx, Ok(pdu)),
                Err(e) => self.on_parsed(cx, Err(e)),
            }
            if used == 0 {
                break;
            }
        }
    }

    /// Handle one parser result.
    pub(super) fn on_parsed(&mut self, cx: &mut TcpCtx<'_>, r: Result<Pdu, PduError>) {
        match r {
            Ok(pdu) => self.on_pdu(cx, pdu),
            Err(PduError::DataDigest { header, .. }) => self.on_data_digest_error(cx, &header),
            Err(e) => {
                let hdr = self.wire.parser.partial_header().to_vec();
                tracing::warn!(peer = %self.wire.peer, "terminating NVMe/TCP connection: {e}");
                if let Some((fes, fei)) = e.fes() {
                    self.wire.terminate(fes, fei, &hdr);
                }
            }
        }
    }

    fn on_pdu(&mut self, cx: &mut TcpCtx<'_>, pdu: Pdu) {
        let ready = self.wire.phase == Phase::Ready;
        match pdu.header {
            PduHeader::IcReq(req) => self.on_icreq(cx, &req, pdu.header_bytes()),
            PduHeader::H2cTermReq(t) => {
                tracing::warn!(
                    peer = %self.wire.peer,
                    fes = t.fes.get(),
                    fei = t.fei.get(),
                    "host terminated the connection"
                );
                self.wire.phase = Phase::Closing {
                    deadline: Instant::now(),
                };
            }
            _ if !ready => {
                self.fatal_seq(pdu.header_bytes());
            }
            PduHeader::CapsuleCmd(c) => {
                let sqe = c.sqe;
                let mut out = Out {
                    w: &mut self.wire,
                    bufs: cx.bufs,
                };
                self.q
                    .command(&mut cx.fab, &mut out, &sqe, pdu.data(), false);
            }
            PduHeader::H2cData(d) => {
                let hdr = pdu.header_bytes().to_vec();
                self.on_h2c_data(cx, &d, pdu.data(), &hdr);
            }
            // The parser only hands out host-to-controller types.
            _ => self.fatal_seq(pdu.header_bytes()),
        }
        self.wire.parser.recycle(pdu.into_buffer());
    }

    fn on_icreq(&mut self, cx: &mut TcpCtx<'_>, req: &IcReq, hdr: &[u8]) {
        if !matches!(self.wire.phase, Phase::AwaitIcReq { .. }) {
            self.fatal_seq(hdr);
            return;
        }
        if req.pfv.get() != 0 {
            tracing::warn!(peer = %self.wire.peer, pfv = req.pfv.get(), "unsupported PDU format version");
            self.wire
                .terminate(Fes::UNSUPPORTED_PARAMETER, icreq_off::PFV, hdr);
            return;
        }
        if req.hpda > 31 {
            self.wire
                .terminate(Fes::UNSUPPORTED_PARAMETER, icreq_off::HPDA, hdr);
            return;
        }
        let dg = Digests::from_dgst(req.dgst);
        let l = cx.fab.sub.limits;
        let mut resp = IcResp::new();
        resp.pfv = 0.into();
        resp.cpda = 0;
        resp.dgst = dg.to_dgst();
        resp.maxh2cdata = l.maxh2cdata.into();
        let mut out = Vec::with_capacity(128);
        write_pdu(&mut out, resp.as_bytes(), &[], Digests::default(), 4);
        self.wire.queue_tx(out);
        self.wire.dg = dg;
        self.wire.host_align = (usize::from(req.hpda) + 1) * 4;
        self.wire.parser.set_config(ParserConfig {
            role: Role::Controller,
            digests: dg,
            max_capsule_data: l.in_capsule,
            max_data: l.maxh2cdata,
        });
        self.wire.phase = Phase::Ready;
        tracing::debug!(peer = %self.wire.peer, ?dg, hpda = req.hpda, "ICReq accepted");
    }

    fn on_data_digest_error(&mut self, cx: &mut TcpCtx<'_>, header: &PduHeader) {
        tracing::warn!(peer = %self.wire.peer, "data digest error");
        match header {
            PduHeader::CapsuleCmd(c) => {
                let mut out = Out {
                    w: &mut self.wire,
                    bufs: cx.bufs,
                };
                self.q.refuse(
                    &mut out,
                    c.sqe.cid.get(),
                    FabricsStatus::TRANSIENT_TRANSPORT_ERROR,
                );
            }
            PduHeader::H2cData(d) => {
                // Account for the data, fail the command when it is all in.
                let hdr = d.as_bytes().to_vec();
                let len = usize::try_from(d.datal.get()).unwrap_or(0);
                let zeros = vec![0u8; len];
                self.q.fail(
                    usize::from(d.ttag.get()),
                    FabricsStatus::TRANSIENT_TRANSPORT_ERROR,
                );
                self.on_h2c_data(cx, d, &zeros, &hdr);
            }
            _ => self
                .wire
                .terminate(Fes::PDU_SEQUENCE_ERROR, 0, header_bytes(header)),
        }
    }

    fn on_h2c_data(&mut self, cx: &mut TcpCtx<'_>, d: &DataHdr, data: &[u8], hdr: &[u8]) {
        let mut out = Out {
            w: &mut self.wire,
            bufs: cx.bufs,
        };
        let r = self.q.data_in(
            &mut cx.fab,
            &mut out,
            usize::from(d.ttag.get()),
            d.cccid.get(),
            d.datao.get(),
            data,
        );
        match r {
            Ok(()) => {}
            Err(DataError::UnknownTag) => {
                self.wire
                    .terminate(Fes::INVALID_PDU_HEADER_FIELD, data_off::TTAG, hdr)
            }
            Err(DataError::WrongCid) => {
                self.wire
                    .terminate(Fes::INVALID_PDU_HEADER_FIELD, data_off::CCCID, hdr)
            }
            Err(DataError::OutOfRange) => {
                self.wire
                    .terminate(Fes::DATA_OUT_OF_RANGE, data_off::DATAO, hdr)
            }
        }
    }

    /// Tell the host of an ANA change (an admin queue with an
    /// Asynchronous Event Request outstanding).
    pub(super) fn notify_ana(&mut self, sub: &Subsystem, bufs: &mut BufPool) {
        if self.closing() {
            return;
        }
        let mut out = Out {
            w: &mut self.wire,
            bufs,
        };
        self.q.notify_ana(sub, &mut out);
    }

    /// Start deferred reads while the host is owed less than the limit.
    pub(super) fn resume_deferred(&mut self, cx: &mut TcpCtx<'_>) {
        if self.closing() {
            return;
        }
        let mut out = Out {
            w: &mut self.wire,
            bufs: cx.bufs,
        };
        self.q.resume_deferred(&mut cx.fab, &mut out);
    }

    /// A backend operation of command `idx` finished.
    pub(super) fn op_done(&mut self, cx: &mut TcpCtx<'_>, idx: usize, outcome: OpOutcome) {
        let mut out = Out {
            w: &mut self.wire,
            bufs: cx.bufs,
        };
        self.q.op_done(&mut cx.fab, &mut out, idx, outcome);
    }

    fn fatal_seq(&mut self, hdr: &[u8]) {
        tracing::warn!(peer = %self.wire.peer, "PDU out of sequence");
        self.wire.terminate(Fes::PDU_SEQUENCE_ERROR, 0, hdr);
    }
}

fn header_bytes(h: &PduHeader) -> &[u8] {
    match h {
        PduHeader::IcReq(x) => x.as_bytes(),
        PduHeader::IcResp(x) => x.as_bytes(),
        PduHeader::H2cTermReq(x) | PduHeader::C2hTermReq(x) => x.as_bytes(),
        PduHeader::CapsuleCmd(x) => x.as_bytes(),
        PduHeader::CapsuleResp(x) => x.as_bytes(),
        PduHeader::H2cData(x) | PduHeader::C2hData(x) => x.as_bytes(),
        PduHeader::R2t(x) => x.as_bytes(),
    }
}

/// The connection's state machine alone: no socket, no poller.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, QueueId};
    use crate::tcp_target::TargetSpec;
    use leapio_nvme::tcp::{CapsuleCmd, CapsuleResp};
    use leapio_nvme::Status;
    use std::sync::Arc;

    /// A subsystem with a RAM namespace, and what a poller lends its
    /// connections.
    struct Bench {
        sub: Arc<Subsystem>,
        engine: Engine,
        queues: Vec<QueueId>,
        bufs: BufPool,
    }

    impl Bench {
        fn new() -> Bench {
            let spec: TargetSpec = "listen=127.0.0.1:0,nqn=nqn.2026-11.io.leapio:conn,ns=ram:1M"
                .parse()
                .unwrap();
            let (backends, namespaces) =
                crate::namespaces::open_namespaces(&spec.namespaces, "CONN", &spec.nqn).unwrap();
            let mut engine = Engine::default();
            let queues = vec![engine.open(backends[0].as_ref(), 8).unwrap()];
            let addr = "127.0.0.1:4420".parse().unwrap();
            let sub = Arc::new(Subsystem::new(
                &spec,
                "CONN".into(),
                addr,
                leapio_backends::Transport::Tcp,
                namespaces,
                backends,
            ));
            Bench {
                sub,
                engine,
                queues,
                bufs: BufPool::default(),
            }
        }

        fn feed(&mut self, conn: &mut Conn, bytes: &[u8]) {
            let mut cx = TcpCtx {
                fab: Ctx {
                    sub: &self.sub,
                    engine: &mut self.engine,
                    queues: &self.queues,
                    io: &[],
                    tag_base: 0,
                },
                bufs: &mut self.bufs,
            };
            conn.on_bytes(&mut cx, bytes);
        }
    }

    /// The PDUs the connection queued, as a host parses them.
    fn sent(conn: &mut Conn) -> Vec<PduHeader> {
        let mut p = PduParser::new(ParserConfig {
            role: Role::Host,
            digests: Digests::default(),
            max_capsule_data: 0,
            max_data: 1 << 20,
        });
        let mut out = Vec::new();
        for pdu in conn.wire.tx.drain(..) {
            let (used, r) = p.feed(&pdu);
            assert_eq!(used, pdu.len());
            out.push(r.unwrap().expect("a whole PDU").header);
        }
        out
    }

    #[test]
    fn icreq_then_commands_before_connect_then_termreq() {
        let mut b = Bench::new();
        let mut conn = Conn::new("127.0.0.1:9".parse().unwrap(), &b.sub.limits);
        assert!(matches!(conn.wire.phase, Phase::AwaitIcReq { .. }));
        let mut out = Vec::new();
        write_pdu(
            &mut out,
            IcReq::new().as_bytes(),
            &[],
            Digests::default(),
            4,
        );
        // Split anywhere: the state machine takes bytes as they come.
        b.feed(&mut conn, &out[..5]);
        assert!(conn.wire.tx.is_empty());
        b.feed(&mut conn, &out[5..]);
        assert!(matches!(sent(&mut conn)[..], [PduHeader::IcResp(_)]));
        assert_eq!(conn.wire.phase, Phase::Ready);
        // Before its Connect a queue takes nothing else, and nothing
        // reaches a backend.
        let mut c = CapsuleCmd::new();
        c.sqe.opcode = leapio_nvme::IoOpcode::READ;
        c.sqe.cid = 7.into();
        let mut out = Vec::new();
        write_pdu(&mut out, c.as_bytes(), &[], Digests::default(), 4);
        b.feed(&mut conn, &out);
        let [PduHeader::CapsuleResp(r)] = &sent(&mut conn)[..] else {
            panic!("no response");
        };
        let r: &CapsuleResp = r;
        assert_eq!(r.cqe.cid.get(), 7);
        assert_eq!(r.cqe.status_field(), Status::COMMAND_SEQUENCE_ERROR);
        assert_eq!(b.engine.in_flight(), 0);
        // A second ICReq is out of sequence: a TermReq, and the connection
        // closes.
        let mut out = Vec::new();
        write_pdu(
            &mut out,
            IcReq::new().as_bytes(),
            &[],
            Digests::default(),
            4,
        );
        b.feed(&mut conn, &out);
        assert!(conn.closing());
        assert!(matches!(sent(&mut conn)[..], [PduHeader::C2hTermReq(_)]));
    }
}
