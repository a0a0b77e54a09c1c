//! One queue of an NVMe over Fabrics controller, whatever carries it: the
//! Connect that binds it, DH-HMAC-CHAP, the admin and fabrics commands, NVM
//! commands planned by the controller core and run on the poller's I/O
//! engine, their completions. It does no I/O of its own: a transport (its
//! [`Wire`]) hands it the commands it received and the data it fetched,
//! and carries out what it asks for (fetch a command's data from the host,
//! send data and responses). NVMe/TCP and NVMe/RDMA are such transports.

use super::admin::{self, PropertyEffect};
use super::data::{self, CapsuleData, Xfer};
use super::subsystem::{Controller, Limits, Subsystem};
use crate::engine::{Engine, QueueId};
use crate::io_stats::{IoShard, OpClass};
use leapio_backends::{IoError, IoKind, IoRequest, Owner};
use leapio_controller::admin::{AdminCore, Reply};
use leapio_controller::nvm::{self, Plan, Settings};
use leapio_nvme::fabrics::{
    connect_data_off, connect_invalid_dw0, connect_off, AuthCmd, ConnectCmd, ConnectData,
    FabricsStatus, FcType, PropertyCmd, CATTR_DISABLE_SQFLOW, CONNECT_AUTHREQ_ATR, DISCOVERY_NQN,
    FABRICS_OPCODE,
};
use leapio_nvme::{Cqe, Sqe, Status};
use leapio_nvme_auth::msg::{SECP_DHCHAP, SPSP_DHCHAP};
use leapio_nvme_auth::CtrlAuth;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use zerocopy::{FromBytes, IntoBytes};

/// How one backend operation ended: the completion's value (Zone Append:
/// the byte offset), or the backend's error.
pub type OpOutcome = Result<u64, IoError>;

/// What a transport does for its queue.
pub trait Wire {
    /// A command's data buffer (host data of a write, or a read's data).
    type Buf: AsRef<[u8]> + AsMut<[u8]>;
    /// A buffer for `len` bytes of host data; `None` when there is no
    /// memory for one (the command fails with a status the host retries).
    fn data_buffer(&mut self, len: usize) -> Option<Self::Buf>;
    /// A buffer for `len` bytes of read data, which go at the returned
    /// offset (room for a transport's header in front); `None` as above.
    fn read_buffer(&mut self, len: usize) -> Option<(Self::Buf, usize)>;
    /// Fetch the host data of command `idx` (`sqe`) into `buf`, all of it;
    /// the queue is told with [`FabricQueue::data_in`] or
    /// [`FabricQueue::data_fetched`].
    fn fetch(&mut self, idx: usize, sqe: &Sqe, buf: &mut [u8]);
    /// Send `data` to the host's buffer of `sqe` (before its response).
    fn send_data(&mut self, sqe: &Sqe, data: &[u8]);
    /// Send a read's data (`len` bytes at `at` in `buf`). With `last` the
    /// transport may answer the command with it: returns whether it did
    /// (then no response follows).
    fn send_read(&mut self, sqe: &Sqe, buf: Self::Buf, at: usize, len: usize, last: bool) -> bool;
    /// Give back a read buffer that is not sent (the read failed).
    fn drop_read(&mut self, buf: Self::Buf) {
        let _ = buf;
    }
    /// Send a response capsule.
    fn respond(&mut self, cqe: &Cqe);
    /// Answer what is queued, then close the connection.
    fn close_after_flush(&mut self);
    /// Whether so much is owed to the host (queued, or `owed` more being
    /// read) that reads must wait before they start.
    fn over_limit(&self, owed: usize) -> bool;
}

/// What a queue works with, lent by its poller for one call.
pub struct Ctx<'a> {
    pub sub: &'a Arc<Subsystem>,
    /// The poller's backend queues, and each namespace's (by index).
    pub engine: &'a mut Engine,
    pub queues: &'a [QueueId],
    /// The poller's counters of each namespace (by index).
    pub io: &'a [Arc<IoShard>],
    /// The backend tag of the queue's command `idx` is `tag_base | idx`.
    pub tag_base: u64,
}

impl Ctx<'_> {
    /// The backend tag of command `idx`.
    fn tag(&self, idx: usize) -> u64 {
        self.tag_base | (u64::try_from(idx).unwrap_or(0) & 0xffff)
    }
}

/// The queue this connection became with its Connect command.
pub struct Binding {
    pub qid: u16,
    pub ctrl: Arc<Controller>,
    /// Controller epoch at connect (I/O queues close when it changes).
    pub epoch: u64,
    /// Entries in the submission queue (SQSIZE + 1).
    pub entries: u32,
    /// The host disabled SQ flow control (Connect CATTR bit 2).
    pub sqflow_disabled: bool,
    /// Whose I/O this queue's is, on each namespace's backend (by index).
    pub owners: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for host data: bytes received so far.
    AwaitData { received: u32 },
    /// Backend operations outstanding.
    Backend { remaining: u32 },
}

/// A command being served.
pub struct Cmd<B> {
    sqe: Sqe,
    xfer: Xfer,
    stage: Stage,
    /// Host data (writes) or the read's data.
    buf: Option<B>,
    /// Where a read's data sits in `buf`, and its length.
    read_at: Option<(usize, usize)>,
    kind: IoKind,
    /// First failure; the command completes with it.
    status: Status,
    /// Completion dwords 0-1 (Zone Append: the LBA written).
    value: u64,
    /// When it arrived.
    arrived: Instant,
    /// The namespace (index) whose counters count it, once started there;
    /// and the bytes it moves.
    counted: Option<usize>,
    bytes: u64,
}

impl<B> Cmd<B> {
    /// Backend operations outstanding.
    pub fn in_backend(&self) -> u32 {
        match self.stage {
            Stage::Backend { remaining } => remaining,
            Stage::AwaitData { .. } => 0,
        }
    }
    /// Its buffer (kept by whoever must keep it alive while a backend may
    /// still write it).
    pub fn into_buffer(self) -> Option<B> {
        self.buf
    }
}

/// Why host data for a command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataError {
    /// No command waits for data under that tag.
    UnknownTag,
    /// The command under that tag has another CID.
    WrongCid,
    /// Not the next bytes, or past the end.
    OutOfRange,
}

/// See the module documentation.
pub struct FabricQueue<B> {
    /// The peer, for logs.
    pub peer: String,
    pub bind: Option<Binding>,
    sqhd: u32,
    /// Commands by transfer tag (index).
    pub cmds: Vec<Option<Cmd<B>>>,
    pub admin: Option<AdminCore>,
    pub last_keep_alive: Instant,
    /// DH-HMAC-CHAP state of a queue that must authenticate.
    pub auth: Option<CtrlAuth>,
    /// When an unauthenticated queue is closed.
    pub auth_deadline: Instant,
    /// When a connection that has not sent its Connect is closed (a
    /// half-open connection holds a slot).
    pub connect_deadline: Instant,
    /// Reads not started because the host was owed too much: they start,
    /// in order, as it takes its data. They hold their command slot and no
    /// buffer.
    pub deferred: VecDeque<usize>,
    /// Read data the backend is producing (it is owed to the host once the
    /// read completes).
    pub owed: usize,
    /// The subsystem's ANA change count this admin queue's host was told of.
    pub ana_seen: u64,
}

impl<B> FabricQueue<B> {
    /// A new queue of `peer`, waiting for its Connect.
    pub fn new(peer: String, l: &Limits) -> FabricQueue<B> {
        FabricQueue {
            peer,
            bind: None,
            sqhd: 0,
            cmds: Vec::new(),
            admin: None,
            last_keep_alive: Instant::now(),
            auth: None,
            auth_deadline: Instant::now(),
            connect_deadline: Instant::now() + l.icreq_timeout * 2,
            deferred: VecDeque::new(),
            owed: 0,
            ana_seen: 0,
        }
    }

    /// The queue may carry commands other than AUTH_Send/AUTH_Recv.
    pub fn authenticated(&self) -> bool {
        self.auth.as_ref().is_none_or(CtrlAuth::authenticated)
    }

    pub fn qid(&self) -> u16 {
        self.bind.as_ref().map_or(0, |b| b.qid)
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

    fn advance_sqhd(&mut self) {
        let entries = self
            .bind
            .as_ref()
            .map_or(u32::from(u16::MAX), |b| b.entries);
        self.sqhd = (self.sqhd + 1) % entries;
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

    fn respond<W: Wire<Buf = B>>(&self, w: &mut W, cid: u16, status: Status, dw0: u32) {
        self.respond64(w, cid, status, u64::from(dw0));
    }

    /// A response capsule whose dwords 0 and 1 hold `value`.
    fn respond64<W: Wire<Buf = B>>(&self, w: &mut W, cid: u16, status: Status, value: u64) {
        let cqe = Cqe {
            dw0: u32::try_from(value & 0xffff_ffff).unwrap_or(0).into(),
            dw1: u32::try_from(value >> 32).unwrap_or(0).into(),
            sq_head: u16::try_from(self.sqhd).unwrap_or(0).into(),
            sq_id: self.qid().into(),
            cid: cid.into(),
            status: (status.field() << 1).into(),
        };
        w.respond(&cqe);
    }

    /// Why the queue must close now, if it must: no Connect in time, not
    /// authenticated in time, its controller gone, or the keep-alive
    /// timeout of its admin queue (the controller is then removed).
    pub fn expired(&self, sub: &Subsystem, now: Instant) -> Option<&'static str> {
        let Some(b) = self.bind.as_ref() else {
            return (now >= self.connect_deadline).then_some("no Connect in time");
        };
        if !self.authenticated() && now >= self.auth_deadline {
            return Some("not authenticated in time");
        }
        if b.ctrl.is_dead() || b.epoch != b.ctrl.epoch.load(Ordering::Acquire) && b.qid != 0 {
            return Some("its controller is gone");
        }
        if b.qid == 0 {
            let kato = b.ctrl.kato_ms.load(Ordering::Acquire);
            if kato > 0
                && now.duration_since(self.last_keep_alive)
                    > std::time::Duration::from_millis(u64::from(kato))
            {
                tracing::warn!(
                    peer = %self.peer, cntlid = b.ctrl.cntlid, kato_ms = kato,
                    "keep-alive timeout: tearing the controller down"
                );
                sub.remove_controller(&b.ctrl);
                return Some("keep-alive timeout");
            }
        }
        None
    }

    /// The queue closes: its controller (an admin queue's) is removed, or
    /// its queue ID (an I/O queue's) given back.
    pub fn release(&mut self, sub: &Subsystem) {
        if let Some(b) = self.bind.take() {
            if b.qid == 0 {
                tracing::info!(peer = %self.peer, cntlid = b.ctrl.cntlid, "admin queue closed, controller removed");
                sub.remove_controller(&b.ctrl);
            } else if b.epoch == b.ctrl.epoch.load(Ordering::Acquire) {
                b.ctrl.release_qid(b.qid);
            }
        }
    }

    /// Answer a command that failed before it was set up (a transport
    /// error: a bad data digest, say).
    /// An admin queue whose host has not been told of the subsystem's last
    /// ANA change: complete one of its Asynchronous Event Requests with an
    /// ANA change notice (the host then reads the ANA log), if one is
    /// outstanding.
    pub fn notify_ana<W: Wire<Buf = B>>(&mut self, sub: &Subsystem, w: &mut W) {
        let now = sub.ana.change_count();
        if now == self.ana_seen || !sub.ana.enabled() {
            return;
        }
        let Some(cid) = self.admin.as_mut().and_then(AdminCore::take_aer) else {
            return;
        };
        self.ana_seen = now;
        let dw0 = leapio_nvme::cmd::AsyncEvent::dw0(
            leapio_nvme::cmd::AsyncEvent::TYPE_NOTICE,
            leapio_nvme::cmd::AsyncEvent::INFO_ANA_CHANGE,
            leapio_nvme::log::LogId::ANA,
        );
        self.respond(w, cid, Status::SUCCESS, dw0);
    }

    pub fn refuse<W: Wire<Buf = B>>(&mut self, w: &mut W, cid: u16, status: Status) {
        self.advance_sqhd();
        self.respond(w, cid, status, 0);
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> FabricQueue<B> {
    /// A command arrived, with `in_capsule` data; `keyed`: the transport's
    /// data descriptors are keyed SGLs (RDMA), else transport data blocks
    /// (TCP).
    pub fn command<W: Wire<Buf = B>>(
        &mut self,
        cx: &mut Ctx<'_>,
        w: &mut W,
        sqe: &Sqe,
        in_capsule: &[u8],
        keyed: bool,
    ) {
        self.advance_sqhd();
        let cid = sqe.cid.get();
        if self.cmds.iter().flatten().any(|c| c.sqe.cid.get() == cid) {
            self.respond(w, cid, Status::COMMAND_ID_CONFLICT, 0);
            return;
        }
        if let Some(status) = self.refused_before_setup(sqe) {
            // Nothing is allocated and no data fetched for it.
            self.respond(w, cid, status, 0);
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
        let xfer = match data::parse_xfer(sqe, in_capsule.len(), max_len, keyed) {
            Ok(x) => x,
            Err(s) => {
                self.respond(w, cid, s, 0);
                return;
            }
        };
        let Some(idx) = self.free_index() else {
            // More commands outstanding than the queue has entries.
            self.respond(w, cid, Status::COMMAND_SEQUENCE_ERROR, 0);
            return;
        };
        let mut cmd = Cmd {
            sqe: *sqe,
            xfer,
            stage: Stage::Backend { remaining: 0 },
            buf: None,
            read_at: None,
            kind: IoKind::Flush,
            status: Status::SUCCESS,
            value: 0,
            arrived: Instant::now(),
            counted: None,
            bytes: 0,
        };
        match xfer {
            Xfer::InCapsule { offset, len } => {
                let Some(mut b) = w.data_buffer(len) else {
                    self.respond(w, cid, Status::INTERNAL_ERROR, 0);
                    return;
                };
                b.as_mut()[..len].copy_from_slice(&in_capsule[offset..offset + len]);
                cmd.buf = Some(b);
            }
            Xfer::ToController { len } => {
                let Some(b) = w.data_buffer(len) else {
                    self.respond(w, cid, Status::INTERNAL_ERROR, 0);
                    return;
                };
                cmd.buf = Some(b);
                cmd.stage = Stage::AwaitData { received: 0 };
                self.cmds[idx] = Some(cmd);
                if let Some(Some(c)) = self.cmds.get_mut(idx) {
                    if let Some(b) = c.buf.as_mut() {
                        let b = &mut b.as_mut()[..len];
                        w.fetch(idx, sqe, b);
                    }
                }
                return;
            }
            Xfer::None | Xfer::ToHost { .. } => {}
        }
        self.cmds[idx] = Some(cmd);
        self.dispatch(cx, w, idx);
    }

    /// Host data for command `idx` (its CID `cid`) at byte `off`: it must
    /// be the next bytes. The command runs when all of it is in.
    pub fn data_in<W: Wire<Buf = B>>(
        &mut self,
        cx: &mut Ctx<'_>,
        w: &mut W,
        idx: usize,
        cid: u16,
        off: u32,
        data: &[u8],
    ) -> Result<(), DataError> {
        let Some(Some(cmd)) = self.cmds.get_mut(idx) else {
            return Err(DataError::UnknownTag);
        };
        let Stage::AwaitData { received } = cmd.stage else {
            return Err(DataError::UnknownTag);
        };
        if cmd.sqe.cid.get() != cid {
            return Err(DataError::WrongCid);
        }
        let Some(buf) = cmd.buf.as_mut() else {
            return Err(DataError::UnknownTag);
        };
        let total = u32::try_from(cmd.xfer.to_controller_len().unwrap_or(0)).unwrap_or(0);
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        if off != received || off.checked_add(len).is_none_or(|end| end > total) {
            return Err(DataError::OutOfRange);
        }
        let start = usize::try_from(off).unwrap_or(0);
        buf.as_mut()[start..start + data.len()].copy_from_slice(data);
        let received = received + len;
        cmd.stage = Stage::AwaitData { received };
        if received == total {
            cmd.stage = Stage::Backend { remaining: 0 };
            self.dispatch(cx, w, idx);
        }
        Ok(())
    }

    /// All host data of command `idx` is in its buffer (the transport
    /// fetched it there, an RDMA READ say); `status`: how that went.
    pub fn data_fetched<W: Wire<Buf = B>>(
        &mut self,
        cx: &mut Ctx<'_>,
        w: &mut W,
        idx: usize,
        status: Status,
    ) {
        let Some(Some(cmd)) = self.cmds.get_mut(idx) else {
            return;
        };
        if !matches!(cmd.stage, Stage::AwaitData { .. }) {
            return;
        }
        if !status.is_success() && cmd.status.is_success() {
            cmd.status = status;
        }
        cmd.stage = Stage::Backend { remaining: 0 };
        self.dispatch(cx, w, idx);
    }

    /// Mark command `idx` failed with `status` (its data may still come).
    pub fn fail(&mut self, idx: usize, status: Status) {
        if let Some(Some(cmd)) = self.cmds.get_mut(idx) {
            cmd.status = status;
        }
    }

    /// The command at `idx` has all its data: run it.
    fn dispatch<W: Wire<Buf = B>>(&mut self, cx: &mut Ctx<'_>, w: &mut W, idx: usize) {
        let Some(cmd) = self.cmds[idx].as_ref() else {
            return;
        };
        let sqe = cmd.sqe;
        let cid = sqe.cid.get();
        if !cmd.status.is_success() {
            let s = cmd.status;
            self.cmds[idx] = None;
            self.respond(w, cid, s, 0);
            return;
        }
        let fctype = sqe.as_bytes()[4];
        let auth_cmd =
            sqe.opcode == FABRICS_OPCODE && matches!(fctype, FcType::AUTH_SEND | FcType::AUTH_RECV);
        if auth_cmd {
            let xfer_len = cmd.xfer.to_host_len();
            let data: Vec<u8> = self.cmds[idx]
                .take()
                .and_then(|c| c.into_buffer())
                .map(|b| b.as_ref().to_vec())
                .unwrap_or_default();
            self.auth_command(w, &sqe, &data, xfer_len);
            return;
        }
        if !self.authenticated() {
            // An unauthenticated queue gets nothing else.
            self.cmds[idx] = None;
            self.respond(w, cid, FabricsStatus::AUTH_REQUIRED, 0);
            return;
        }
        if sqe.opcode == FABRICS_OPCODE {
            let (status, value) = self.fabrics(cx, idx);
            self.cmds[idx] = None;
            self.respond64(w, cid, status, value);
            if sqe.as_bytes()[4] == FcType::DISCONNECT && status.is_success() {
                w.close_after_flush();
            }
            return;
        }
        let Some(bind) = self.bind.as_ref() else {
            self.cmds[idx] = None;
            self.respond(w, cid, Status::COMMAND_SEQUENCE_ERROR, 0);
            return;
        };
        if bind.qid == 0 {
            let ctrl = bind.ctrl.clone();
            let xfer_len = cmd.xfer.to_host_len();
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
                        if n > 0 {
                            w.send_data(&sqe, &data[..n]);
                        }
                    }
                    self.respond(w, cid, status, dw0);
                }
            }
            return;
        }
        self.dispatch_io(cx, w, idx);
    }

    fn dispatch_io<W: Wire<Buf = B>>(&mut self, cx: &mut Ctx<'_>, w: &mut W, idx: usize) {
        let Some(cmd) = self.cmds[idx].as_ref() else {
            return;
        };
        let cid = cmd.sqe.cid.get();
        let sqe = cmd.sqe;
        let Some((ns, info)) = cx.sub.namespace(sqe.nsid.get()) else {
            self.cmds[idx] = None;
            self.respond(w, cid, Status::INVALID_NAMESPACE, 0);
            return;
        };
        if let Some(st) = cx.sub.ana.refuses_io() {
            // This path does not serve the namespace now: the host sends
            // the command down another.
            self.cmds[idx] = None;
            self.respond(w, cid, st, 0);
            return;
        }
        let settings = Settings {
            max_transfer: u64::from(cx.sub.limits.mdts_bytes()),
            write_cache: self
                .bind
                .as_ref()
                .is_none_or(|b| b.ctrl.write_cache.load(Ordering::Acquire)),
        };
        let mut data = CapsuleData {
            xfer: cmd.xfer,
            buf: cmd.buf.as_ref().map_or(&[][..], AsRef::as_ref),
        };
        // One operation (the common case) allocates nothing.
        let (first, rest) = match nvm::plan(&sqe, info, settings, &mut data) {
            Plan::Complete(s) => {
                // Refused or answered at once: counted all the same.
                if let Some(io) = cx.io.get(ns) {
                    io.started();
                    let took = u64::try_from(cmd.arrived.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    io.finished(OpClass::of(sqe.opcode), 0, s.is_success(), took);
                }
                self.cmds[idx] = None;
                self.respond(w, cid, s, 0);
                return;
            }
            Plan::ZoneReport(req) => {
                // Answered from the backend's zones, no backend request.
                let xfer_len = usize::try_from(cmd.xfer.to_host_len()).unwrap_or(0);
                self.cmds[idx] = None;
                let Some(backend) = cx.sub.backends.get(ns) else {
                    self.respond(w, cid, Status::INTERNAL_ERROR, 0);
                    return;
                };
                let zones = backend.report_zones(req.slba, usize::MAX);
                let report = nvm::zone_report(&req, &zones);
                w.send_data(&sqe, &report[..report.len().min(xfer_len)]);
                self.respond(w, cid, Status::SUCCESS, 0);
                return;
            }
            Plan::Single(op) => (op, Vec::new()),
            Plan::Multi(mut ops) if !ops.is_empty() => (ops.remove(0), ops),
            Plan::Multi(_) => {
                self.cmds[idx] = None;
                self.respond(w, cid, Status::SUCCESS, 0);
                return;
            }
        };
        if first.kind == IoKind::Read && w.over_limit(self.owed) {
            // Its data would be owed beyond the limit: later.
            self.deferred.push_back(idx);
            return;
        }
        let mut iov = None;
        if first.kind == IoKind::Read {
            let len = usize::try_from(first.len).unwrap_or(0);
            let Some((mut b, at)) = w.read_buffer(len) else {
                self.cmds[idx] = None;
                self.respond(w, cid, Status::INTERNAL_ERROR, 0);
                return;
            };
            iov = Some(libc::iovec {
                iov_base: b.as_mut()[at..].as_mut_ptr().cast(),
                iov_len: len,
            });
            let Some(cmd) = self.cmds[idx].as_mut() else {
                return;
            };
            cmd.buf = Some(b);
            cmd.read_at = Some((at, len));
            self.owed += len;
        }
        let Some(cmd) = self.cmds[idx].as_mut() else {
            return;
        };
        cmd.kind = first.kind;
        if first.kind != IoKind::Read && first.kind.has_data() {
            let len = usize::try_from(first.len).unwrap_or(0);
            if let Some(b) = cmd.buf.as_mut() {
                let b = b.as_mut();
                iov = Some(libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: len.min(b.len()),
                });
            }
        }
        let n = u32::try_from(rest.len() + 1).unwrap_or(u32::MAX);
        cmd.stage = Stage::Backend { remaining: n };
        if let Some(io) = cx.io.get(ns) {
            io.started();
            cmd.counted = Some(ns);
            cmd.bytes = if rest.is_empty() { first.len } else { 0 };
        }
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
                journal: None,
            };
            // SAFETY: the iovec points into the command's buffer, which the
            // command owns until its last completion is reaped; if the
            // connection closes first the buffer goes to the poller's
            // orphans (its memory does not move) until then.
            unsafe { cx.engine.submit(queue, &req) };
        }
    }

    /// Start deferred reads while the host is owed less than the limit.
    pub fn resume_deferred<W: Wire<Buf = B>>(&mut self, cx: &mut Ctx<'_>, w: &mut W) {
        while !w.over_limit(self.owed) {
            let Some(idx) = self.deferred.pop_front() else {
                return;
            };
            self.dispatch_io(cx, w, idx);
        }
    }

    /// A backend operation of command `idx` finished.
    pub fn op_done<W: Wire<Buf = B>>(
        &mut self,
        cx: &mut Ctx<'_>,
        w: &mut W,
        idx: usize,
        outcome: OpOutcome,
    ) {
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
        if let Some(io) = cmd.counted.and_then(|ns| cx.io.get(ns)) {
            let took = u64::try_from(cmd.arrived.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let class = OpClass::of(cmd.sqe.opcode);
            io.finished(class, cmd.bytes, cmd.status.is_success(), took);
        }
        let cid = cmd.sqe.cid.get();
        if let Some((_, len)) = cmd.read_at {
            self.owed = self.owed.saturating_sub(len);
        }
        if let (Some((at, len)), Some(buf)) = (cmd.read_at, cmd.buf) {
            if cmd.status.is_success() {
                let last = self.bind.as_ref().is_some_and(|b| b.sqflow_disabled);
                if w.send_read(&cmd.sqe, buf, at, len, last) {
                    return;
                }
            } else {
                w.drop_read(buf);
            }
        }
        let value = if cmd.status.is_success() {
            cmd.value
        } else {
            0
        };
        self.respond64(w, cid, cmd.status, value);
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
                let buf = cmd
                    .buf
                    .as_ref()
                    .map(|b| b.as_ref().to_vec())
                    .unwrap_or_default();
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
            self.ana_seen = cx.sub.ana.change_count();
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
    fn auth_command<W: Wire<Buf = B>>(&mut self, w: &mut W, sqe: &Sqe, data: &[u8], xfer_len: u32) {
        let cid = sqe.cid.get();
        let Ok(a) = AuthCmd::read_from_bytes(sqe.as_bytes()) else {
            self.respond(w, cid, Status::INTERNAL_ERROR, 0);
            return;
        };
        if a.secp != SECP_DHCHAP || a.spsp0 != SPSP_DHCHAP || a.spsp1 != SPSP_DHCHAP {
            self.respond(w, cid, Status::INVALID_FIELD, 0);
            return;
        }
        let len = a.len.get();
        let qid = self.qid();
        let peer = self.peer.clone();
        let Some(auth) = self.auth.as_mut() else {
            // No secret for this host (or not connected): nothing to
            // authenticate against.
            self.respond(w, cid, Status::COMMAND_SEQUENCE_ERROR, 0);
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
                tracing::warn!(peer = %peer, qid, al, need = reply.len(), "AUTH_Recv buffer too small");
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
                peer = %peer, qid,
                reason = auth.failure_reason().unwrap_or("unknown"),
                "DH-HMAC-CHAP authentication failed: closing the queue"
            );
        } else if now && !was {
            tracing::info!(peer = %peer, qid, "queue authenticated (DH-HMAC-CHAP)");
        }
        if !reply.is_empty() {
            w.send_data(sqe, &reply);
        }
        self.respond(w, cid, status, 0);
        if close {
            w.close_after_flush();
        }
    }
}
