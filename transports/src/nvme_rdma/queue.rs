//! One I/O queue over one RDMA queue pair, driven from `submit`, `kick`
//! and `poll` only. A command is a capsule SENT from the queue's own
//! registered memory; its data is described by one Keyed SGL Data Block
//! descriptor naming the request's memory directly when that memory is
//! registered (guest memory is) and one contiguous piece, so the target
//! RDMA-reads the data of a write and RDMA-writes the data of a read into
//! it with no copy here. A small write from one piece goes in the capsule
//! itself, sent straight from that memory (a second scatter entry). Other
//! requests go through a registered bounce buffer of the command's, and
//! those bytes are counted. A response completes its command once the
//! capsule's send has completed too.
//!
//! A failed work completion means the connection is gone: a helper thread
//! connects the queue again (re-creating the controller if needed) and the
//! queue sends every command that had not completed again, as over TCP.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use leapio_backend::dma::DmaBuffer;
use leapio_nvme::fabrics::SglDescriptor;
use leapio_nvme::rdma::KeyedSgl;
use leapio_nvme::{Cqe, Sqe};
use zerocopy::{FromBytes, IntoBytes};

use super::conn::{dma_buffer, Parts, RdmaConn, RECV_BIT, RESP};
use crate::iov::{gather, pieces, scatter};
use crate::nvme_host::{dsm_range, io_command, status_error};
use crate::nvmf::{overdue, reconnect_loop, Info, NvmfError, Session};
use crate::rdma;
use crate::{
    validate, BackendError, BackendQueue, Completion, IoError, IoKind, IoRequest, SubmitError,
};

/// Bytes of one command's slot in the capsule buffer: the capsule (64),
/// a Dataset Management range (16).
const SLOT: usize = 128;
/// Times a command is sent again after a retryable status.
const MAX_RETRIES: u8 = 3;
/// Most completions polled at once.
const POLL_BATCH: usize = 32;
/// How often the connection's CM events are looked at: a peer that goes
/// away while no work is posted (a target process killed with commands in
/// flight) shows only there, as a disconnect.
const CM_CHECK: Duration = Duration::from_millis(1);

/// A request's iovecs, kept with its command.
struct Iovs(Vec<libc::iovec>);

// SAFETY: the iovecs point to memory the caller keeps valid until the
// request's completion is returned (the `submit` contract); the queue is
// used by one thread at a time.
unsafe impl Send for Iovs {}

struct Cmd {
    tag: u64,
    kind: IoKind,
    len: usize,
    iov: Iovs,
    sqe: Sqe,
    /// In-capsule data: the piece of the request's memory sent after the
    /// capsule (address, length, local key).
    inline: Option<(u64, u32, u32)>,
    /// The data goes through the slot's bounce buffer.
    bounced: bool,
    sent: bool,
    send_done: bool,
    resp: Option<Cqe>,
    waiting_since: Option<Instant>,
    retries: u8,
}

enum Link {
    Up(Box<Parts>),
    Down {
        rx: mpsc::Receiver<Parts>,
        cancel: Arc<AtomicBool>,
    },
}

/// See the module documentation.
pub(super) struct NvmeRdmaQueue {
    session: Arc<Session<RdmaConn>>,
    info: Info,
    qid: u16,
    nsid: u32,
    entries: u32,
    cmds: Vec<Option<Cmd>>,
    free: Vec<u16>,
    unsent: Vec<u16>,
    done: Vec<Completion>,
    link: Link,
    capsules: DmaBuffer,
    bounce: Vec<Option<DmaBuffer>>,
    retry: Duration,
    cm_checked: Instant,
}

// SAFETY: see `Iovs`; the verbs objects are used by one thread at a time.
unsafe impl Send for NvmeRdmaQueue {}

impl NvmeRdmaQueue {
    pub fn open(session: &Arc<Session<RdmaConn>>, depth: u32) -> Result<NvmeRdmaQueue, NvmfError> {
        let info = session.info();
        let spec = session.spec();
        let (qid, entries, parts) = session.open_io(depth, RdmaConn::into_parts)?;
        let slots = usize::try_from(entries - 1).unwrap_or(1);
        let capsules = dma_buffer(slots * SLOT)?;
        tracing::debug!(qid, entries, "NVMe/RDMA I/O queue connected");
        Ok(NvmeRdmaQueue {
            session: Arc::clone(session),
            info,
            qid,
            nsid: spec.nsid,
            entries,
            cmds: (0..slots).map(|_| None).collect(),
            free: (0..slots)
                .rev()
                .filter_map(|i| u16::try_from(i).ok())
                .collect(),
            unsent: Vec::new(),
            done: Vec::new(),
            link: Link::Up(Box::new(parts)),
            capsules,
            bounce: (0..slots).map(|_| None).collect(),
            retry: spec.retry,
            cm_checked: Instant::now(),
        })
    }

    fn slot(&self, cid: u16) -> *mut u8 {
        self.capsules.as_ptr().wrapping_add(usize::from(cid) * SLOT)
    }

    /// The keys of `[p, p + n)` in the device's registrations (none while
    /// the connection is down).
    fn keys(&self, p: *const u8, n: usize) -> Option<(u32, u32)> {
        match &self.link {
            Link::Up(l) => l.dev.regs.keys(p, n),
            Link::Down { .. } => None,
        }
    }

    /// The request's data as one registered piece: (address, lkey, rkey).
    fn one_piece(&self, iov: &[libc::iovec], len: usize) -> Option<(u64, u32, u32)> {
        let mut first: Option<(u64, u32, u32)> = None;
        let mut next = 0u64;
        for (p, n) in pieces(iov, 0, len) {
            let (lkey, rkey) = self.keys(p, n)?;
            match first {
                None => first = Some((p as u64, lkey, rkey)),
                Some((_, l, r)) => {
                    if p as u64 != next || l != lkey || r != rkey {
                        return None;
                    }
                }
            }
            next = p as u64 + n as u64;
        }
        first
    }

    /// The slot's bounce buffer, at least `len` bytes.
    fn bounce_for(&mut self, cid: u16, len: usize) -> Result<(*mut u8, u32, u32), NvmfError> {
        let i = usize::from(cid);
        if self.bounce[i].as_ref().is_none_or(|b| b.len() < len) {
            let b = dma_buffer(len)?;
            self.bounce[i] = Some(b);
        }
        let p = self.bounce[i]
            .as_ref()
            .map_or(std::ptr::null_mut(), DmaBuffer::as_ptr);
        let (l, r) = self
            .keys(p, len)
            .ok_or_else(|| NvmfError::Protocol("bounce buffer not registered".into()))?;
        Ok((p, l, r))
    }

    fn complete(&mut self, cid: u16, result: Result<(), IoError>) {
        let Some(c) = self.cmds.get_mut(usize::from(cid)).and_then(Option::take) else {
            return;
        };
        if result.is_ok() && c.bounced && c.kind == IoKind::Read {
            if let Some(b) = self.bounce[usize::from(cid)].as_ref() {
                // SAFETY: the bounce buffer holds the read's `len` bytes; the
                // iovecs cover them (the submit contract).
                unsafe { scatter(&c.iov.0, 0, std::slice::from_raw_parts(b.as_ptr(), c.len)) };
            }
        }
        if result.is_ok() && c.bounced {
            self.session
                .copied
                .fetch_add(c.len as u64, Ordering::Relaxed);
        }
        self.done.push(Completion {
            tag: c.tag,
            result,
            value: 0,
        });
        self.free.push(cid);
    }

    /// Post the capsules of the commands not sent yet.
    fn send_pending(&mut self) {
        let Link::Up(l) = &self.link else { return };
        let qp = l.id.qp();
        let mut failed = false;
        for cid in std::mem::take(&mut self.unsent) {
            let slot = self.slot(cid);
            let Some(c) = self.cmds.get_mut(usize::from(cid)).and_then(Option::as_mut) else {
                continue;
            };
            // SAFETY: the command's slot in our registered capsule buffer.
            unsafe { std::ptr::copy_nonoverlapping(c.sqe.as_bytes().as_ptr(), slot, 64) };
            let Some((lkey, _)) = l.dev.regs.keys(slot, 64) else {
                failed = true;
                break;
            };
            let mut sge = [
                rdma::Sge {
                    addr: slot as u64,
                    length: 64,
                    lkey,
                },
                rdma::Sge {
                    addr: 0,
                    length: 0,
                    lkey: 0,
                },
            ];
            let mut n = 1;
            if let Some((addr, len, key)) = c.inline {
                sge[1] = rdma::Sge {
                    addr,
                    length: len,
                    lkey: key,
                };
                n = 2;
            }
            let mut wr = rdma::send_wr();
            wr.wr_id = u64::from(cid);
            wr.sg_list = sge.as_mut_ptr();
            wr.num_sge = n;
            wr.opcode = rdma::wr_opcode::IBV_WR_SEND;
            wr.send_flags = rdma::send_flags::IBV_SEND_SIGNALED.0;
            c.sent = true;
            c.send_done = false;
            c.resp = None;
            // SAFETY: the capsule slot and the in-capsule piece are
            // registered and stay valid until the send completes (the slot
            // is the command's; the piece is the caller's until completion).
            if unsafe { rdma::post_send(qp, &mut wr) }.is_err() {
                failed = true;
                break;
            }
        }
        if failed {
            self.link_lost("posting a send failed");
        }
    }

    /// The connection is gone: every command not completed waits to be sent
    /// again on the next one, which a helper thread makes.
    fn link_lost(&mut self, why: &str) {
        if matches!(self.link, Link::Down { .. }) {
            return;
        }
        tracing::warn!(qid = self.qid, "NVMe/RDMA queue lost: {why}");
        let now = Instant::now();
        self.unsent.clear();
        for (i, c) in self.cmds.iter_mut().enumerate() {
            if let Some(c) = c {
                c.sent = false;
                c.waiting_since.get_or_insert(now);
                if let Ok(cid) = u16::try_from(i) {
                    self.unsent.push(cid);
                }
            }
        }
        let (tx, rx) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let (session, qid, entries, cancel2) = (
            Arc::clone(&self.session),
            self.qid,
            self.entries,
            Arc::clone(&cancel),
        );
        let _ = std::thread::Builder::new()
            .name(format!("nvme-rdma-rc{qid}"))
            .spawn(move || {
                reconnect_loop(&session, qid, entries, &cancel2, &tx, RdmaConn::into_parts)
            });
        self.link = Link::Down { rx, cancel };
    }

    fn check_link(&mut self) {
        let Link::Down { rx, .. } = &mut self.link else {
            return;
        };
        if let Ok(parts) = rx.try_recv() {
            tracing::info!(qid = self.qid, "NVMe/RDMA queue connected again");
            self.link = Link::Up(Box::new(parts));
            for c in self.cmds.iter_mut().flatten() {
                c.waiting_since = None;
            }
            self.send_pending();
            return;
        }
        // Commands that waited too long fail.
        let late = overdue(&self.cmds, |c| c.waiting_since, self.retry);
        for cid in late {
            self.unsent.retain(|&u| u != cid);
            self.complete(cid, Err(IoError::from_errno(libc::ETIMEDOUT)));
        }
    }

    /// Whether the connection's CM said it is gone (looked at every
    /// [`CM_CHECK`]).
    fn cm_check(&mut self) -> Option<String> {
        let Link::Up(l) = &self.link else {
            return None;
        };
        let now = Instant::now();
        if now.duration_since(self.cm_checked) < CM_CHECK {
            return None;
        }
        self.cm_checked = now;
        l.channel.connection_gone()
    }

    fn on_response(&mut self, cqe: Cqe) {
        let cid = cqe.cid.get();
        let Some(c) = self.cmds.get_mut(usize::from(cid)).and_then(Option::as_mut) else {
            tracing::warn!(qid = self.qid, cid, "response for no command in flight");
            return;
        };
        c.resp = Some(cqe);
        if c.send_done {
            self.finish(cid);
        }
    }

    fn finish(&mut self, cid: u16) {
        let Some(c) = self.cmds.get_mut(usize::from(cid)).and_then(Option::as_mut) else {
            return;
        };
        let st = c.resp.unwrap_or_default().status_field();
        if st.is_success() {
            self.complete(cid, Ok(()));
        } else if !st.is_dnr() && c.retries < MAX_RETRIES {
            c.retries += 1;
            self.unsent.push(cid);
        } else {
            self.complete(cid, Err(status_error(st.field())));
        }
    }
}

impl BackendQueue for NvmeRdmaQueue {
    unsafe fn submit(&mut self, req: &IoRequest<'_>) -> Result<(), SubmitError> {
        validate(req, self.info.geometry)?;
        if req.len == 0 && req.kind != IoKind::Flush {
            self.done.push(Completion {
                tag: req.tag,
                result: Ok(()),
                value: 0,
            });
            return Ok(());
        }
        if req.kind.has_data() && req.len > u64::from(self.info.max_transfer) {
            return Err(SubmitError::Invalid(
                "transfer larger than the target's MDTS",
            ));
        }
        let Some(&cid) = self.free.last() else {
            return Err(SubmitError::Full);
        };
        let bs = u64::from(self.info.geometry.block_size);
        let nlb = u32::try_from(req.len / bs).unwrap_or(u32::MAX);
        let mut sqe = io_command(req.kind, self.nsid, req.offset / bs, nlb);
        sqe.cid = cid.into();
        let len = usize::try_from(req.len).map_err(|_| SubmitError::Invalid("too long"))?;
        let mut inline = None;
        let mut bounced = false;
        if req.kind.has_data() {
            let len32 = u32::try_from(len).map_err(|_| SubmitError::Invalid("too long"))?;
            match self.one_piece(req.iov, len) {
                Some((addr, lkey, _))
                    if req.kind != IoKind::Read && len32 <= self.info.in_capsule =>
                {
                    SglDescriptor::in_capsule(0, len32).store(&mut sqe);
                    inline = Some((addr, len32, lkey));
                }
                Some((addr, _, rkey)) => KeyedSgl::new(addr, len32, rkey).store(&mut sqe),
                None => {
                    let Ok((p, _, rkey)) = self.bounce_for(cid, len) else {
                        return Err(SubmitError::Full);
                    };
                    if req.kind != IoKind::Read {
                        // SAFETY: the bounce buffer has `len` bytes; the
                        // iovecs cover the request (the submit contract).
                        unsafe { gather(req.iov, 0, std::slice::from_raw_parts_mut(p, len)) };
                    }
                    KeyedSgl::new(p as u64, len32, rkey).store(&mut sqe);
                    bounced = true;
                }
            }
        } else if req.kind == IoKind::Deallocate {
            let range = dsm_range(req.offset / bs, nlb);
            let p = self.slot(cid).wrapping_add(64);
            // SAFETY: the command's slot has 16 bytes for the range at 64.
            unsafe { std::ptr::copy_nonoverlapping(range.as_bytes().as_ptr(), p, 16) };
            let Some((_, rkey)) = self.keys(p, 16) else {
                return Err(SubmitError::Full);
            };
            KeyedSgl::new(p as u64, 16, rkey).store(&mut sqe);
        } else {
            KeyedSgl::new(0, 0, 0).store(&mut sqe);
        }
        self.free.pop();
        self.cmds[usize::from(cid)] = Some(Cmd {
            tag: req.tag,
            kind: req.kind,
            len,
            iov: Iovs(req.iov.to_vec()),
            sqe,
            inline,
            bounced,
            sent: false,
            send_done: false,
            resp: None,
            waiting_since: None,
            retries: 0,
        });
        self.unsent.push(cid);
        Ok(())
    }

    fn kick(&mut self) -> Result<(), BackendError> {
        self.send_pending();
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        if matches!(self.link, Link::Down { .. }) {
            self.check_link();
        }
        let mut wc = Vec::with_capacity(POLL_BATCH);
        let mut lost = None;
        let mut resps = Vec::new();
        let mut sends = Vec::new();
        if let Link::Up(l) = &self.link {
            match l.cq.poll(&mut wc).and_then(|_| l.cq.poll(&mut wc)) {
                Ok(_) => {
                    for w in &wc {
                        if w.status != rdma::wc_status::IBV_WC_SUCCESS {
                            lost = Some(format!("work completion status {}", w.status));
                            break;
                        }
                        if w.wr_id & RECV_BIT != 0 && w.byte_len as usize != RESP {
                            // Stale bytes of an earlier response would be
                            // read as this one.
                            lost = Some(format!(
                                "a response capsule of {} bytes (not {RESP})",
                                w.byte_len
                            ));
                            break;
                        }
                        if w.wr_id & RECV_BIT != 0 {
                            let i = u32::try_from(w.wr_id & !RECV_BIT).unwrap_or(u32::MAX);
                            if i >= l.recvs {
                                continue;
                            }
                            let at = usize::try_from(i).unwrap_or(0) * RESP;
                            // SAFETY: inside the receive buffer; completed.
                            let b = unsafe {
                                std::slice::from_raw_parts(l.recv.as_ptr().add(at), RESP)
                            };
                            resps.push((i, Cqe::read_from_bytes(b).unwrap_or_default()));
                        } else {
                            sends.push(u16::try_from(w.wr_id).unwrap_or(u16::MAX));
                        }
                    }
                }
                Err(e) => lost = Some(e.to_string()),
            }
        }
        for cid in sends {
            let Some(c) = self.cmds.get_mut(usize::from(cid)).and_then(Option::as_mut) else {
                continue;
            };
            c.send_done = true;
            if c.resp.is_some() {
                self.finish(cid);
            }
        }
        for (i, cqe) in resps {
            if let Link::Up(l) = &self.link {
                let p = l
                    .recv
                    .as_ptr()
                    .wrapping_add(usize::try_from(i).unwrap_or(0) * RESP);
                let posted = l.dev.regs.keys(p, RESP).and_then(|(lkey, _)| {
                    // SAFETY: our registered receive buffer, alive as long as
                    // the QP.
                    unsafe { rdma::post_recv(l.id.qp(), RECV_BIT | u64::from(i), p, 16, lkey) }.ok()
                });
                if posted.is_none() {
                    lost = Some("re-posting a receive failed".into());
                }
            }
            self.on_response(cqe);
        }
        if lost.is_none() {
            lost = self.cm_check();
        }
        if let Some(why) = lost {
            self.link_lost(&why);
        }
        self.send_pending();
        let n = self.done.len();
        out.append(&mut self.done);
        n
    }

    fn in_flight(&self) -> usize {
        self.cmds.iter().flatten().count() + self.done.len()
    }

    fn drain(&mut self, out: &mut Vec<Completion>, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut n = 0;
        loop {
            n += self.poll(out);
            if self.cmds.iter().all(Option::is_none) || Instant::now() >= deadline {
                return n;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

impl Drop for NvmeRdmaQueue {
    fn drop(&mut self) {
        match &self.link {
            Link::Up(l) => l.id.disconnect(),
            Link::Down { cancel, .. } => cancel.store(true, Ordering::Release),
        }
        self.session.free_qid(self.qid);
    }
}
