//! One NVMe/TCP connection (one queue) as a state machine: ICReq/ICResp,
//! command capsules, R2T/H2CData, C2HData, responses and TermReqs. It does
//! no I/O of its own: its poller feeds it the bytes it read
//! ([`Conn::on_bytes`]) and the completions of its backend operations
//! ([`Conn::op_done`]), and writes out what it queued ([`Conn::tx`]); what
//! it needs besides (the subsystem, the backend queues, read buffers) is
//! lent for each call in a [`Ctx`].

use super::admin::{self, PropertyEffect};
use super::bufs::BufPool;
use super::io_cmd::{self, CapsuleData, Xfer};
use super::subsystem::Controller;
use super::subsystem::{Limits, Subsystem};
use crate::engine::{Engine, QueueId};
use leapio_backends::{IoError, IoKind, IoRequest, Owner};
use leapio_controller::admin::{AdminCore, Reply};
use leapio_controller::nvm::{self, Plan, Settings};
use leapio_nvme::fabrics::{
    connect_data_off, connect_invalid_dw0, connect_off, AuthCmd, ConnectCmd, ConnectData,
    FabricsStatus, FcType, PropertyCmd, CATTR_DISABLE_SQFLOW, CONNECT_AUTHREQ_ATR, DISCOVERY_NQN,
    FABRICS_OPCODE,
};
use leapio_nvme::tcp::{
    data_off, icreq_off, layout, seal, write_pdu, DataHdr, Digests, Fes, IcReq, IcResp, Layout,
    ParserConfig, Pdu, PduError, PduFlags, PduHeader, PduParser, PduType, R2t, Role, TermReq,
};
use leapio_nvme::{Cqe, Sqe, Status};
use leapio_nvme_auth::msg::{SECP_DHCHAP, SPSP_DHCHAP};
use leapio_nvme_auth::CtrlAuth;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, IntoBytes};

/// Most bytes queued for a host before its input is no longer read (a few
/// maximum-size reads' worth).
pub(super) const TX_LIMIT: usize = 4 << 20;

/// How one backend operation ended: the completion's value (Zone Append:
/// the byte offset), or the backend's error.
pub(super) type OpOutcome = Result<u64, IoError>;

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

/// The queue this connection became with its Connect command.
pub(super) struct Binding {
    pub qid: u16,
    pub ctrl: Arc<Controller>,
    /// Controller epoch at connect (I/O queues close when it changes).
    pub epoch: u64,
    /// Entries in the submission queue (SQSIZE + 1).
    pub entries: u32,
    /// The host disabled SQ flow control (Connect CATTR bit 2): a read
    /// that succeeds ends with its last C2HData PDU flagged SUCCESS and
    /// no response capsule (the transport specification allows SUCCESS
    /// only then).
    pub sqflow_disabled: bool,
    /// Whose I/O this queue's is, on each namespace's backend (by index).
    pub owners: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for H2CData: bytes received so far.
    AwaitData { received: u32 },
    /// Backend operations outstanding.
    Backend { remaining: u32 },
}

/// A command being served.
pub(super) struct Cmd {
    sqe: Sqe,
    xfer: Xfer,
    stage: Stage,
    /// Host data (writes) or the C2HData PDU being filled (reads).
    buf: Vec<u8>,
    /// Where the read data sits in `buf`, and its length.
    read_layout: Option<(Layout, usize)>,
    kind: IoKind,
    /// First failure; the command completes with it.
    status: Status,
    /// Completion dwords 0-1 (Zone Append: the LBA written).
    value: u64,
}

impl Cmd {
    pub(super) fn in_backend(&self) -> u32 {
        match self.stage {
            Stage::Backend { remaining } => remaining,
            Stage::AwaitData { .. } => 0,
        }
    }
    pub(super) fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

/// What a connection works with, lent by its poller for one call.
pub(super) struct Ctx<'a> {
    pub sub: &'a Arc<Subsystem>,
    /// The poller's backend queues, and each namespace's (by index).
    pub engine: &'a mut Engine,
    pub queues: &'a [QueueId],
    /// Sent C2HData buffers, for the next reads.
    pub bufs: &'a mut BufPool,
    /// The backend tag of the connection's command `idx` is
    /// `tag_base | idx`.
    pub tag_base: u64,
}

impl Ctx<'_> {
    /// The backend tag of command `idx`.
    fn tag(&self, idx: usize) -> u64 {
        self.tag_base | (u64::try_from(idx).unwrap_or(0) & 0xffff)
    }
}

pub(super) struct Conn {
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
    /// Read data the backend is producing for this connection (it joins
    /// `tx` when the read completes).
    pub owed: usize,
    /// Reads not started because the connection was owed [`TX_LIMIT`]
    /// bytes: they start, in order, as the host takes its data. They hold
    /// their command slot and no buffer.
    pub deferred: VecDeque<usize>,
    pub bind: Option<Binding>,
    sqhd: u32,
    /// Commands by transfer tag (index).
    pub cmds: Vec<Option<Cmd>>,
    pub admin: Option<AdminCore>,
    pub last_keep_alive: Instant,
    /// DH-HMAC-CHAP state of a queue that must authenticate.
    pub auth: Option<CtrlAuth>,
    /// When an unauthenticated queue is closed.
    pub auth_deadline: Instant,
    /// When a connection that has not sent its Connect is closed (a
    /// half-open connection holds a slot and a descriptor).
    pub connect_deadline: Instant,
}

impl Conn {
    /// A new connection from `peer`, waiting for its ICReq.
    pub fn new(peer: SocketAddr, l: &Limits) -> Conn {
        Conn {
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
            owed: 0,
            deferred: VecDeque::new(),
            bind: None,
            sqhd: 0,
            cmds: Vec::new(),
            admin: None,
            last_keep_alive: Instant::now(),
            auth: None,
            auth_deadline: Instant::now(),
            connect_deadline: Instant::now() + l.icreq_timeout * 2,
        }
    }

    /// The queue may carry commands other than AUTH_Send/AUTH_Recv.
    pub fn authenticated(&self) -> bool {
        self.auth.as_ref().is_none_or(CtrlAuth::authenticated)
    }

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

    pub fn tx_pending(&self) -> bool {
        !self.tx.is_empty()
    }

    /// Before its Connect a queue carries only the Connect, and until it
    /// is authenticated only AUTH_Send/AUTH_Recv: the status for anything
    /// else, None when `sqe` may go on.
    fn refused_before_setup(&self, sqe: &Sqe) -> Option<Status> {
        let fctype = sqe.as_bytes()[4];
        let fabrics = sqe.opcode == FABRICS_OPCODE;
        if self.bind.is_none() {
            return (!(fabrics && fctype == FcType::CONNECT))
                .then_some(Status::COMMAND_SEQUENCE_ERROR);
        }
        let auth = fabrics && matches!(fctype, FcType::AUTH_SEND | FcType::AUTH_RECV);
        (!self.authenticated() && !auth).then_some(FabricsStatus::AUTH_REQUIRED)
    }

    /// Queue a PDU for sending.
    pub fn queue_tx(&mut self, pdu: Vec<u8>) {
        self.tx_bytes += pdu.len();
        self.tx.push_back(pdu);
    }

    /// Whether the host is owed (queued or being read) [`TX_LIMIT`] bytes
    /// or more: its input is then not read, and its reads wait unstarted.
    pub fn over_limit(&self) -> bool {
        self.tx_bytes + self.owed >= TX_LIMIT
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

    fn fatal(&mut self, e: &PduError, hdr: &[u8]) {
        tracing::warn!(peer = %self.peer, "terminating NVMe/TCP connection: {e}");
        if let Some((fes, fei)) = e.fes() {
            self.terminate(fes, fei, hdr);
        }
    }

    fn qid(&self) -> u16 {
        self.bind.as_ref().map_or(0, |b| b.qid)
    }

    /// Queue a response capsule.
    fn respond(&mut self, cid: u16, status: Status, dw0: u32) {
        self.respond64(cid, status, u64::from(dw0));
    }

    /// Queue a response capsule whose dwords 0 and 1 hold `value`.
    fn respond64(&mut self, cid: u16, status: Status, value: u64) {
        let mut r = leapio_nvme::tcp::CapsuleResp::new();
        r.cqe = Cqe {
            dw0: u32::try_from(value & 0xffff_ffff).unwrap_or(0).into(),
            dw1: u32::try_from(value >> 32).unwrap_or(0).into(),
            sq_head: u16::try_from(self.sqhd).unwrap_or(0).into(),
            sq_id: self.qid().into(),
            cid: cid.into(),
            status: (status.field() << 1).into(),
        };
        let mut out = Vec::with_capacity(28);
        write_pdu(&mut out, r.as_bytes(), &[], self.dg, self.host_align);
        self.queue_tx(out);
    }

    /// Queue a C2HData PDU with all of `data`.
    fn send_data(&mut self, cid: u16, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut h = DataHdr::new(PduType::C2H_DATA);
        h.ch.set_flags(PduFlags::DATA_LAST);
        h.cccid = cid.into();
        h.datal = u32::try_from(data.len()).unwrap_or(0).into();
        let mut out = Vec::new();
        write_pdu(&mut out, h.as_bytes(), data, self.dg, self.host_align);
        self.queue_tx(out);
    }

    fn free_index(&mut self) -> Option<usize> {
        let max = self
            .bind
            .as_ref()
            .map_or(32, |b| usize::try_from(b.entries).unwrap_or(32));
        if let Some(i) = self.cmds.iter().position(Option::is_none) {
            return Some(i);
        }
        if self.cmds.len() < max {
            self.cmds.push(None);
            return Some(self.cmds.len() - 1);
        }
        None
    }
}

impl Conn {
    /// Bytes received: parse them and act on every PDU in them, until the
    /// connection is terminated.
    pub(super) fn on_bytes(&mut self, cx: &mut Ctx<'_>, bytes: &[u8]) {
        let mut off = 0;
        while off < bytes.len() && !self.closing() {
            let (used, r) = self.parser.feed(&bytes[off..]);
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
    pub(super) fn on_parsed(&mut self, cx: &mut Ctx<'_>, r: Result<Pdu, PduError>) {
        match r {
            Ok(pdu) => self.on_pdu(cx, pdu),
            Err(PduError::DataDigest { header, .. }) => self.on_data_digest_error(cx, &header),
            Err(e) => {
                let hdr = self.parser_header();
                self.fatal(&e, &hdr);
            }
        }
    }

    fn on_pdu(&mut self, cx: &mut Ctx<'_>, pdu: Pdu) {
        let ready = self.phase == Phase::Ready;
        match pdu.header {
            PduHeader::IcReq(req) => self.on_icreq(cx, &req, pdu.header_bytes()),
            PduHeader::H2cTermReq(t) => {
                tracing::warn!(
                    peer = %self.peer,
                    fes = t.fes.get(),
                    fei = t.fei.get(),
                    "host terminated the connection"
                );
                self.phase = Phase::Closing {
                    deadline: Instant::now(),
                };
            }
            _ if !ready => {
                self.fatal_seq(pdu.header_bytes());
            }
            PduHeader::CapsuleCmd(c) => {
                let sqe = c.sqe;
                self.on_capsule(cx, &sqe, pdu.data());
            }
            PduHeader::H2cData(d) => {
                let hdr = pdu.header_bytes().to_vec();
                self.on_h2c_data(cx, &d, pdu.data(), &hdr);
            }
            // The parser only hands out host-to-controller types.
            _ => self.fatal_seq(pdu.header_bytes()),
        }
        self.parser.recycle(pdu.into_buffer());
    }

    fn on_icreq(&mut self, cx: &mut Ctx<'_>, req: &IcReq, hdr: &[u8]) {
        if !matches!(self.phase, Phase::AwaitIcReq { .. }) {
            self.fatal_seq(hdr);
            return;
        }
        if req.pfv.get() != 0 {
            tracing::warn!(peer = %self.peer, pfv = req.pfv.get(), "unsupported PDU format version");
            self.terminate(Fes::UNSUPPORTED_PARAMETER, icreq_off::PFV, hdr);
            return;
        }
        if req.hpda > 31 {
            self.terminate(Fes::UNSUPPORTED_PARAMETER, icreq_off::HPDA, hdr);
            return;
        }
        let dg = Digests::from_dgst(req.dgst);
        let l = cx.sub.limits;
        let mut resp = IcResp::new();
        resp.pfv = 0.into();
        resp.cpda = 0;
        resp.dgst = dg.to_dgst();
        resp.maxh2cdata = l.maxh2cdata.into();
        let mut out = Vec::with_capacity(128);
        write_pdu(&mut out, resp.as_bytes(), &[], Digests::default(), 4);
        self.queue_tx(out);
        self.dg = dg;
        self.host_align = (usize::from(req.hpda) + 1) * 4;
        self.parser.set_config(ParserConfig {
            role: Role::Controller,
            digests: dg,
            max_capsule_data: l.in_capsule,
            max_data: l.maxh2cdata,
        });
        self.phase = Phase::Ready;
        tracing::debug!(peer = %self.peer, ?dg, hpda = req.hpda, "ICReq accepted");
    }

    fn on_data_digest_error(&mut self, cx: &mut Ctx<'_>, header: &PduHeader) {
        tracing::warn!(peer = %self.peer, "data digest error");
        match header {
            PduHeader::CapsuleCmd(c) => {
                self.advance_sqhd();
                self.respond(c.sqe.cid.get(), FabricsStatus::TRANSIENT_TRANSPORT_ERROR, 0);
            }
            PduHeader::H2cData(d) => {
                // Account for the data, fail the command when it is all in.
                let hdr = d.as_bytes().to_vec();
                let len = usize::try_from(d.datal.get()).unwrap_or(0);
                let zeros = vec![0u8; len];
                if let Some(Some(cmd)) = self.cmds.get_mut(usize::from(d.ttag.get())) {
                    cmd.status = FabricsStatus::TRANSIENT_TRANSPORT_ERROR;
                }
                self.on_h2c_data(cx, d, &zeros, &hdr);
            }
            _ => self.terminate(Fes::PDU_SEQUENCE_ERROR, 0, header_bytes(header)),
        }
    }

    fn on_capsule(&mut self, cx: &mut Ctx<'_>, sqe: &Sqe, data: &[u8]) {
        self.advance_sqhd();
        let cid = sqe.cid.get();
        if self.cmds.iter().flatten().any(|c| c.sqe.cid.get() == cid) {
            self.respond(cid, Status::COMMAND_ID_CONFLICT, 0);
            return;
        }
        if let Some(status) = self.refused_before_setup(sqe) {
            // Nothing is allocated and no R2T sent for it.
            self.respond(cid, status, 0);
            return;
        }
        let discovery = self.bind.as_ref().is_some_and(|b| b.ctrl.discovery);
        let max_len = if discovery {
            // The discovery log is a header and one entry.
            8192
        } else if self.qid() == 0 {
            // Admin commands: the largest log or identify page we serve.
            cx.sub.limits.mdts_bytes().max(8192)
        } else {
            cx.sub.limits.mdts_bytes()
        };
        let xfer = match io_cmd::parse_xfer(sqe, data.len(), max_len) {
            Ok(x) => x,
            Err(s) => {
                self.respond(cid, s, 0);
                return;
            }
        };
        let Some(idx) = self.free_index() else {
            // More commands outstanding than the queue has entries.
            self.respond(cid, Status::COMMAND_SEQUENCE_ERROR, 0);
            return;
        };
        let mut cmd = Cmd {
            sqe: *sqe,
            xfer,
            stage: Stage::Backend { remaining: 0 },
            buf: Vec::new(),
            read_layout: None,
            kind: IoKind::Flush,
            status: Status::SUCCESS,
            value: 0,
        };
        match xfer {
            Xfer::InCapsule { offset, len } => {
                cmd.buf = data[offset..offset + len].to_vec();
            }
            Xfer::H2c { len } => {
                cmd.buf = vec![0u8; len];
                cmd.stage = Stage::AwaitData { received: 0 };
                let mut r = R2t::new();
                r.cccid = cid.into();
                r.ttag = u16::try_from(idx).unwrap_or(0).into();
                r.r2to = 0.into();
                r.r2tl = u32::try_from(len).unwrap_or(0).into();
                let mut out = Vec::with_capacity(28);
                write_pdu(&mut out, r.as_bytes(), &[], self.dg, self.host_align);
                self.queue_tx(out);
                self.cmds[idx] = Some(cmd);
                return;
            }
            Xfer::None | Xfer::C2h { .. } => {}
        }
        self.cmds[idx] = Some(cmd);
        self.dispatch(cx, idx);
    }

    fn on_h2c_data(&mut self, cx: &mut Ctx<'_>, d: &DataHdr, data: &[u8], hdr: &[u8]) {
        let idx = usize::from(d.ttag.get());
        let Some(Some(cmd)) = self.cmds.get_mut(idx) else {
            self.terminate(Fes::INVALID_PDU_HEADER_FIELD, data_off::TTAG, hdr);
            return;
        };
        let Stage::AwaitData { received } = cmd.stage else {
            self.terminate(Fes::INVALID_PDU_HEADER_FIELD, data_off::TTAG, hdr);
            return;
        };
        if cmd.sqe.cid.get() != d.cccid.get() {
            self.terminate(Fes::INVALID_PDU_HEADER_FIELD, data_off::CCCID, hdr);
            return;
        }
        let total = u32::try_from(cmd.buf.len()).unwrap_or(0);
        let off = d.datao.get();
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        if off != received || off.checked_add(len).is_none_or(|end| end > total) {
            self.terminate(Fes::DATA_OUT_OF_RANGE, data_off::DATAO, hdr);
            return;
        }
        let start = usize::try_from(off).unwrap_or(0);
        cmd.buf[start..start + data.len()].copy_from_slice(data);
        let received = received + len;
        cmd.stage = Stage::AwaitData { received };
        if received == total {
            cmd.stage = Stage::Backend { remaining: 0 };
            self.dispatch(cx, idx);
        }
    }

    /// The command at `idx` has all its data: run it.
    fn dispatch(&mut self, cx: &mut Ctx<'_>, idx: usize) {
        let Some(cmd) = self.cmds[idx].as_ref() else {
            return;
        };
        let sqe = cmd.sqe;
        let cid = sqe.cid.get();
        if !cmd.status.is_success() {
            let s = cmd.status;
            self.cmds[idx] = None;
            self.respond(cid, s, 0);
            return;
        }
        let fctype = sqe.as_bytes()[4];
        let auth_cmd =
            sqe.opcode == FABRICS_OPCODE && matches!(fctype, FcType::AUTH_SEND | FcType::AUTH_RECV);
        if auth_cmd {
            let xfer_len = cmd.xfer.c2h_len();
            let data = self.cmds[idx]
                .take()
                .map(Cmd::into_buffer)
                .unwrap_or_default();
            self.auth_command(&sqe, &data, xfer_len);
            return;
        }
        if !self.authenticated() {
            // An unauthenticated queue gets nothing else.
            self.cmds[idx] = None;
            self.respond(cid, FabricsStatus::AUTH_REQUIRED, 0);
            return;
        }
        if sqe.opcode == FABRICS_OPCODE {
            let (status, value) = self.fabrics(cx, idx);
            self.cmds[idx] = None;
            self.respond64(cid, status, value);
            if sqe.as_bytes()[4] == FcType::DISCONNECT && status.is_success() {
                self.phase = Phase::Closing {
                    deadline: Instant::now() + CLOSE_LINGER,
                };
            }
            return;
        }
        let Some(bind) = self.bind.as_ref() else {
            self.cmds[idx] = None;
            self.respond(cid, Status::COMMAND_SEQUENCE_ERROR, 0);
            return;
        };
        if bind.qid == 0 {
            let ctrl = bind.ctrl.clone();
            let xfer_len = cmd.xfer.c2h_len();
            let st = self.admin.get_or_insert_with(AdminCore::default);
            let reply = admin::execute(cx.sub, &ctrl, st, &sqe, xfer_len);
            if sqe.opcode == leapio_nvme::AdminOpcode::KEEP_ALIVE {
                self.last_keep_alive = Instant::now();
            }
            self.cmds[idx] = None;
            match reply {
                Reply::Held => {}
                Reply::Done { status, dw0, data } => {
                    if status.is_success() {
                        let n = data.len().min(usize::try_from(xfer_len).unwrap_or(0));
                        self.send_data(cid, &data[..n]);
                    }
                    self.respond(cid, status, dw0);
                }
            }
            return;
        }
        self.dispatch_io(cx, idx);
    }

    fn dispatch_io(&mut self, cx: &mut Ctx<'_>, idx: usize) {
        let Some(cmd) = self.cmds[idx].as_ref() else {
            return;
        };
        let cid = cmd.sqe.cid.get();
        let sqe = cmd.sqe;
        let Some((ns, info)) = cx.sub.namespace(sqe.nsid.get()) else {
            self.cmds[idx] = None;
            self.respond(cid, Status::INVALID_NAMESPACE, 0);
            return;
        };
        let settings = Settings {
            max_transfer: u64::from(cx.sub.limits.mdts_bytes()),
            write_cache: self
                .bind
                .as_ref()
                .is_none_or(|b| b.ctrl.write_cache.load(Ordering::Acquire)),
        };
        let mut data = CapsuleData {
            xfer: cmd.xfer,
            buf: &cmd.buf,
        };
        // One operation (the common case) allocates nothing.
        let (first, rest) = match nvm::plan(&sqe, info, settings, &mut data) {
            Plan::Complete(s) => {
                self.cmds[idx] = None;
                self.respond(cid, s, 0);
                return;
            }
            Plan::ZoneReport(req) => {
                // Answered from the backend's zones, no backend request.
                let xfer_len = usize::try_from(cmd.xfer.c2h_len()).unwrap_or(0);
                self.cmds[idx] = None;
                let Some(backend) = cx.sub.backends.get(ns) else {
                    self.respond(cid, Status::INTERNAL_ERROR, 0);
                    return;
                };
                let zones = backend.report_zones(req.slba, usize::MAX);
                let report = nvm::zone_report(&req, &zones);
                self.send_data(cid, &report[..report.len().min(xfer_len)]);
                self.respond(cid, Status::SUCCESS, 0);
                return;
            }
            Plan::Single(op) => (op, Vec::new()),
            Plan::Multi(mut ops) if !ops.is_empty() => (ops.remove(0), ops),
            Plan::Multi(_) => {
                self.cmds[idx] = None;
                self.respond(cid, Status::SUCCESS, 0);
                return;
            }
        };
        if first.kind == IoKind::Read && self.over_limit() {
            // Its data would be owed beyond the limit: later.
            self.deferred.push_back(idx);
            return;
        }
        let Some(cmd) = self.cmds[idx].as_mut() else {
            return;
        };
        cmd.kind = first.kind;
        let mut iov = None;
        if first.kind == IoKind::Read {
            let len = usize::try_from(first.len).unwrap_or(0);
            let l = layout(PduType::C2H_DATA, len, self.dg, self.host_align);
            // The header room is cleared; data and digest are written
            // before the buffer is sent (see `bufs`).
            cmd.buf = cx.bufs.take(l.plen, l.pdo);
            cmd.read_layout = Some((l, len));
            self.owed += len;
            iov = Some(libc::iovec {
                iov_base: cmd.buf[l.pdo..].as_mut_ptr().cast(),
                iov_len: len,
            });
        } else if first.kind.has_data() {
            let len = usize::try_from(first.len).unwrap_or(0);
            iov = Some(libc::iovec {
                iov_base: cmd.buf.as_mut_ptr().cast(),
                iov_len: len.min(cmd.buf.len()),
            });
        }
        let n = u32::try_from(rest.len() + 1).unwrap_or(u32::MAX);
        cmd.stage = Stage::Backend { remaining: n };
        let tag = cx.tag(idx);
        let owner = self
            .bind
            .as_ref()
            .and_then(|b| b.owners.get(ns).copied())
            .unwrap_or(0);
        let queue = cx.queues[ns];
        for op in std::iter::once(first).chain(rest) {
            let data = if op.kind.has_data() {
                iov.as_slice()
            } else {
                &[]
            };
            let req = IoRequest {
                tag,
                kind: op.kind,
                offset: op.offset,
                len: op.len,
                iov: data,
                owner,
            };
            // SAFETY: the iovec points into the command's buffer, which is
            // owned by the command until its last completion is reaped; if
            // the connection closes first the buffer moves to `orphans`
            // (heap memory does not move) and is only dropped after that.
            unsafe { cx.engine.submit(queue, &req) };
        }
    }

    /// Start deferred reads while the host is owed less than the limit.
    pub(super) fn resume_deferred(&mut self, cx: &mut Ctx<'_>) {
        while !self.over_limit() && !self.closing() {
            let Some(idx) = self.deferred.pop_front() else {
                return;
            };
            self.dispatch_io(cx, idx);
        }
    }

    /// A backend operation of command `idx` finished.
    pub(super) fn op_done(&mut self, cx: &mut Ctx<'_>, idx: usize, outcome: OpOutcome) {
        let Some(Some(cmd)) = self.cmds.get_mut(idx) else {
            return;
        };
        let status = match &outcome {
            Ok(_) => Status::SUCCESS,
            Err(e) => nvm::io_error_status(cmd.kind, e),
        };
        if let (Ok(v), IoKind::ZoneAppend { .. }) = (outcome, cmd.kind) {
            let bs = cx
                .sub
                .namespace(cmd.sqe.nsid.get())
                .map_or(1, |(_, n)| n.block_size);
            cmd.value = nvm::zone_append_lba(v, bs);
        }
        let Stage::Backend { remaining } = cmd.stage else {
            return;
        };
        let remaining = remaining.saturating_sub(1);
        cmd.stage = Stage::Backend { remaining };
        if !status.is_success() && cmd.status.is_success() {
            cmd.status = status;
        }
        if remaining > 0 {
            return;
        }
        let Some(cmd) = self.cmds[idx].take() else {
            return;
        };
        let cid = cmd.sqe.cid.get();
        if let Some((_, len)) = cmd.read_layout {
            self.owed = self.owed.saturating_sub(len);
        }
        if let (Some((_, len)), true) = (cmd.read_layout, cmd.status.is_success()) {
            // The data is already in place after the header room: fill in
            // the C2HData header, seal it and send the buffer as it is.
            let mut buf = cmd.buf;
            let success = self.bind.as_ref().is_some_and(|b| b.sqflow_disabled);
            let mut h = DataHdr::new(PduType::C2H_DATA);
            let mut flags = PduFlags::DATA_LAST;
            flags.set(PduFlags::DATA_SUCCESS, success);
            h.ch.set_flags(flags);
            h.cccid = cid.into();
            h.datal = u32::try_from(len).unwrap_or(0).into();
            buf[..24].copy_from_slice(h.as_bytes());
            seal(&mut buf, len, self.dg);
            self.queue_tx(buf);
            if success {
                return;
            }
        }
        let value = if cmd.status.is_success() {
            cmd.value
        } else {
            0
        };
        self.respond64(cid, cmd.status, value);
    }

    fn fabrics(&mut self, cx: &mut Ctx<'_>, idx: usize) -> (Status, u64) {
        let Some(cmd) = self.cmds[idx].as_ref() else {
            return (Status::INTERNAL_ERROR, 0);
        };
        let sqe = cmd.sqe;
        let fctype = sqe.as_bytes()[4];
        match fctype {
            FcType::CONNECT => {
                if self.bind.is_some() {
                    return (Status::COMMAND_SEQUENCE_ERROR, 0);
                }
                let buf = cmd.buf.clone();
                let (s, dw0) = self.connect(cx, &sqe, &buf);
                (s, u64::from(dw0))
            }
            FcType::PROPERTY_GET | FcType::PROPERTY_SET => {
                let Some(b) = self.bind.as_ref() else {
                    return (Status::COMMAND_SEQUENCE_ERROR, 0);
                };
                if b.qid != 0 {
                    return (Status::INVALID_FIELD, 0);
                }
                let ctrl = b.ctrl.clone();
                let Ok(p) = PropertyCmd::read_from_bytes(sqe.as_bytes()) else {
                    return (Status::INTERNAL_ERROR, 0);
                };
                if fctype == FcType::PROPERTY_GET {
                    // The value goes in dwords 0 and 1 of the response.
                    admin::property_get(&ctrl, &p)
                } else {
                    let (s, effect) = admin::property_set(cx.sub, &ctrl, &p);
                    if effect == PropertyEffect::Reset {
                        tracing::info!(peer = %self.peer, cntlid = ctrl.cntlid, "controller reset");
                        self.admin = Some(AdminCore::default());
                    }
                    (s, 0)
                }
            }
            FcType::DISCONNECT => {
                if self.bind.is_none() {
                    return (Status::COMMAND_SEQUENCE_ERROR, 0);
                }
                (Status::SUCCESS, 0)
            }
            _ => (Status::INVALID_OPCODE, 0),
        }
    }

    fn connect(&mut self, cx: &mut Ctx<'_>, sqe: &Sqe, buf: &[u8]) -> (Status, u32) {
        let invalid = |in_data: bool, off: u16| {
            (
                FabricsStatus::CONNECT_INVALID_PARAMETERS,
                connect_invalid_dw0(in_data, off),
            )
        };
        let Ok(c) = ConnectCmd::read_from_bytes(sqe.as_bytes()) else {
            return (Status::INTERNAL_ERROR, 0);
        };
        if c.recfmt.get() != 0 {
            return (FabricsStatus::CONNECT_INCOMPATIBLE_FORMAT, 0);
        }
        let Some(Ok(data)) = buf.get(..1024).map(ConnectData::read_from_bytes) else {
            return (FabricsStatus::DATA_SGL_LENGTH_INVALID, 0);
        };
        let Some(subnqn) = data.subnqn() else {
            return invalid(true, connect_data_off::SUBNQN);
        };
        let Some(hostnqn) = data.hostnqn() else {
            return invalid(true, connect_data_off::HOSTNQN);
        };
        let discovery = subnqn == DISCOVERY_NQN;
        if !discovery && subnqn != cx.sub.nqn {
            tracing::warn!(peer = %self.peer, subnqn, "connect to an unknown subsystem");
            return invalid(true, connect_data_off::SUBNQN);
        }
        if !discovery && !cx.sub.host_allowed(hostnqn) {
            tracing::warn!(peer = %self.peer, hostnqn, "host not allowed");
            return (
                FabricsStatus::CONNECT_INVALID_HOST,
                connect_invalid_dw0(true, connect_data_off::HOSTNQN),
            );
        }
        let entries = u32::from(c.sqsize.get()) + 1;
        if entries < 2 || entries > cx.sub.limits.queue_entries {
            return invalid(false, connect_off::SQSIZE);
        }
        let qid = c.qid.get();
        let ctrl = if qid == 0 {
            let secrets = if discovery {
                None
            } else {
                cx.sub.host_secrets(hostnqn)
            };
            let Some(ctrl) =
                cx.sub
                    .create_controller(discovery, hostnqn, data.hostid, c.kato.get(), secrets)
            else {
                return (FabricsStatus::CONNECT_CONTROLLER_BUSY, 0);
            };
            self.admin = Some(AdminCore::default());
            self.last_keep_alive = Instant::now();
            tracing::info!(
                peer = %self.peer, cntlid = ctrl.cntlid, hostnqn, subnqn,
                kato_ms = c.kato.get(), "admin queue connected"
            );
            ctrl
        } else {
            if discovery {
                return invalid(false, connect_off::QID);
            }
            let Some(ctrl) = cx
                .sub
                .controller(data.cntlid.get())
                .filter(|x| x.hostnqn == hostnqn && x.hostid == data.hostid && !x.is_dead())
            else {
                return invalid(true, connect_data_off::CNTLID);
            };
            if !ctrl.ready() {
                return (Status::COMMAND_SEQUENCE_ERROR, 0);
            }
            if qid > admin::queues_granted(cx.sub, &ctrl) || !ctrl.claim_qid(qid) {
                return invalid(false, connect_off::QID);
            }
            tracing::debug!(peer = %self.peer, cntlid = ctrl.cntlid, qid, entries, "I/O queue connected");
            ctrl
        };
        let cntlid = ctrl.cntlid;
        let mut dw0 = u32::from(cntlid);
        if let Some(secrets) = &ctrl.secrets {
            // Every queue authenticates before it carries anything else.
            self.auth = Some(CtrlAuth::new(
                secrets.clone(),
                hostnqn,
                &cx.sub.nqn,
                cx.sub.dhchap.clone(),
            ));
            self.auth_deadline = Instant::now() + cx.sub.limits.auth_timeout;
            dw0 |= CONNECT_AUTHREQ_ATR;
        }
        let owners = if qid == 0 {
            Vec::new()
        } else {
            (1..)
                .zip(&cx.sub.backends)
                .map(|(nsid, b)| b.owner(&Owner::Host { nqn: hostnqn, nsid }))
                .collect()
        };
        self.bind = Some(Binding {
            qid,
            epoch: ctrl.epoch.load(Ordering::Acquire),
            ctrl,
            entries,
            sqflow_disabled: qid != 0 && c.cattr & CATTR_DISABLE_SQFLOW != 0,
            owners,
        });
        self.sqhd %= entries;
        (Status::SUCCESS, dw0)
    }

    /// AUTH_Send (`data` is the message) or AUTH_Recv (`xfer_len` is the
    /// host's buffer).
    fn auth_command(&mut self, sqe: &Sqe, data: &[u8], xfer_len: u32) {
        let cid = sqe.cid.get();
        let Ok(a) = AuthCmd::read_from_bytes(sqe.as_bytes()) else {
            self.respond(cid, Status::INTERNAL_ERROR, 0);
            return;
        };
        if a.secp != SECP_DHCHAP || a.spsp0 != SPSP_DHCHAP || a.spsp1 != SPSP_DHCHAP {
            self.respond(cid, Status::INVALID_FIELD, 0);
            return;
        }
        let len = a.len.get();
        let qid = self.qid();
        let Some(auth) = self.auth.as_mut() else {
            // No secret for this host (or not connected): nothing to
            // authenticate against.
            self.respond(cid, Status::COMMAND_SEQUENCE_ERROR, 0);
            return;
        };
        let was = auth.authenticated();
        let mut reply = Vec::new();
        let mut status = Status::SUCCESS;
        if a.fctype == FcType::AUTH_SEND {
            if len == 0 || usize::try_from(len).ok() != Some(data.len()) {
                status = Status::INVALID_FIELD;
            } else {
                auth.send(data);
            }
        } else if len == 0 || len > xfer_len {
            status = Status::INVALID_FIELD;
        } else {
            reply = auth.recv();
            let al = usize::try_from(len).unwrap_or(usize::MAX);
            if reply.len() > al {
                // The host's buffer cannot take the message: the transaction
                // cannot go on.
                tracing::warn!(peer = %self.peer, qid, al, need = reply.len(), "AUTH_Recv buffer too small");
                status = Status::INVALID_FIELD;
                reply.clear();
                auth.abort("the AUTH_Recv buffer is too small for the message");
            } else {
                // The whole allocation length, zero-padded, as Linux's target.
                reply.resize(al, 0);
            }
        }
        let (now, close) = (auth.authenticated(), auth.must_close());
        if close {
            tracing::warn!(
                peer = %self.peer, qid,
                reason = auth.failure_reason().unwrap_or("unknown"),
                "DH-HMAC-CHAP authentication failed: closing the queue"
            );
        } else if now && !was {
            tracing::info!(peer = %self.peer, qid, "queue authenticated (DH-HMAC-CHAP)");
        }
        self.send_data(cid, &reply);
        self.respond(cid, status, 0);
        if close {
            self.close_after_flush();
        }
    }
}

impl Conn {
    fn advance_sqhd(&mut self) {
        let entries = self
            .bind
            .as_ref()
            .map_or(u32::from(u16::MAX), |b| b.entries);
        self.sqhd = (self.sqhd + 1) % entries;
    }

    /// The header of the PDU being parsed (for TermReq data), if known.
    fn parser_header(&self) -> Vec<u8> {
        self.parser.partial_header().to_vec()
    }

    fn fatal_seq(&mut self, hdr: &[u8]) {
        tracing::warn!(peer = %self.peer, "PDU out of sequence");
        self.terminate(Fes::PDU_SEQUENCE_ERROR, 0, hdr);
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
    use crate::tcp_target::TcpTargetSpec;
    use leapio_nvme::tcp::{CapsuleCmd, CapsuleResp};

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
            let spec: TcpTargetSpec = "listen=127.0.0.1:0,nqn=nqn.2026-11.io.leapio:conn,ns=ram:1M"
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
            let mut cx = Ctx {
                sub: &self.sub,
                engine: &mut self.engine,
                queues: &self.queues,
                bufs: &mut self.bufs,
                tag_base: 0,
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
        for pdu in conn.tx.drain(..) {
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
        assert!(matches!(conn.phase, Phase::AwaitIcReq { .. }));
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
        assert!(conn.tx.is_empty());
        b.feed(&mut conn, &out[5..]);
        assert!(matches!(sent(&mut conn)[..], [PduHeader::IcResp(_)]));
        assert_eq!(conn.phase, Phase::Ready);
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
