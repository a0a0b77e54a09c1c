//! The RDMA target's poller: RDMA CM events, every connection's completion
//! queue, the backends, and the timed checks, in one thread.

use crate::engine::{Engine, QueueId};
use crate::fabrics::orphans::Orphans;
use crate::fabrics::queue::{Ctx, FabricQueue, OpOutcome, Wire};
use crate::fabrics::subsystem::Subsystem;
use leapio_backend::dma::{DmaBuffer, DmaRegistry};
use leapio_backends::rdma::{
    self, device, event, CmEvent, CmId, Cq, Device, EventChannel, WorkDone,
};
use leapio_nvme::rdma::{
    CmReject, CmReply, CmRequest, KeyedSgl, RECFMT, REJECT_INVALID_HRQSIZE, REJECT_INVALID_HSQSIZE,
    REJECT_INVALID_RECFMT, REJECT_NO_RESOURCES,
};
use leapio_nvme::{Cqe, Sqe, Status};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, IntoBytes};

/// Requests in flight per backend queue.
pub(super) const BACKEND_DEPTH: u32 = 256;
/// Most connections one target serves.
const MAX_CONNS: usize = 1024;
/// Timed checks period.
const TICK: Duration = Duration::from_millis(10);
/// How often RDMA CM events (connection requests, disconnects) are read:
/// reading is a system call, not for every loop of a busy poller.
const CM_CHECK: Duration = Duration::from_micros(500);
/// How long the poller spins after its last work before it naps.
const SPIN: Duration = Duration::from_micros(200);

/// wr_id kinds (top two bits).
const RECV: u64 = 1 << 62;
const READ: u64 = 2 << 62;
const WRITE: u64 = 3 << 62;
const KIND: u64 = 3 << 62;

/// A registered buffer of the poller's pool: `len` bytes of a DMA buffer.
pub(super) struct RegBuf {
    mem: DmaBuffer,
    len: usize,
}

impl AsRef<[u8]> for RegBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: our DMA buffer, at least `len` bytes; only the device
        // writes it otherwise, between a post and its completion, when the
        // queue does not look at it.
        unsafe { std::slice::from_raw_parts(self.mem.as_ptr(), self.len) }
    }
}

impl AsMut<[u8]> for RegBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` is the only way in.
        unsafe { std::slice::from_raw_parts_mut(self.mem.as_ptr(), self.len) }
    }
}

/// Registered buffers kept for reuse, by size class (powers of two from
/// 4 KiB): registering memory costs a system call and pinning.
#[derive(Default)]
struct Pool {
    classes: Vec<Vec<DmaBuffer>>,
}

/// Buffers kept per class.
const KEEP: usize = 256;

impl Pool {
    fn class(len: usize) -> (usize, usize) {
        let size = len.max(4096).next_power_of_two();
        (size.trailing_zeros() as usize - 12, size)
    }

    fn take(&mut self, len: usize) -> Option<RegBuf> {
        let (c, size) = Pool::class(len);
        let mem = match self.classes.get_mut(c).and_then(Vec::pop) {
            Some(m) => m,
            None => DmaBuffer::new(DmaRegistry::global(), size).ok()?,
        };
        Some(RegBuf { mem, len })
    }

    fn give(&mut self, b: RegBuf) {
        let (c, size) = Pool::class(b.mem.len());
        if b.mem.len() != size {
            return;
        }
        if self.classes.len() <= c {
            self.classes.resize_with(c + 1, Vec::new);
        }
        if self.classes[c].len() < KEEP {
            self.classes[c].push(b.mem);
        }
    }
}

/// The RDMA side of a connection.
struct Link {
    // Drop order: the identifier (and its QP) before the CQ.
    id: CmId,
    cq: Cq,
    dev: Arc<Device>,
    /// Posted receives: one capsule (64 bytes and in-capsule data) each.
    recv: DmaBuffer,
    recvs: u32,
    capsule: usize,
    /// Response capsules: 16 bytes each, free ones listed.
    resp: DmaBuffer,
    resp_free: Vec<u32>,
    /// Buffers an RDMA WRITE is reading from, by wr_id.
    writing: HashMap<u64, RegBuf>,
    next_write: u64,
    established: bool,
    closing: bool,
    /// Something failed: close at once.
    broken: bool,
}

struct Conn {
    link: Link,
    q: FabricQueue<RegBuf>,
}

/// The link with the pool, as the queue uses it for one call.
struct Out<'a> {
    l: &'a mut Link,
    pool: &'a mut Pool,
}

impl Out<'_> {
    fn lkey(&self, p: *const u8, len: usize) -> Option<u32> {
        self.l.dev.regs.keys(p, len).map(|(l, _)| l)
    }

    /// RDMA WRITE `len` bytes of `buf` to the host buffer `sqe` names; the
    /// buffer is kept until the write completes.
    fn write(&mut self, sqe: &Sqe, buf: RegBuf, at: usize, len: usize) {
        let k = KeyedSgl::of(sqe);
        let n = len.min(usize::try_from(k.len()).unwrap_or(0));
        let p = buf.mem.as_ptr().wrapping_add(at);
        let Some(lkey) = self.lkey(p, n.max(1)) else {
            self.l.broken = true;
            self.pool.give(buf);
            return;
        };
        self.l.next_write = self.l.next_write.wrapping_add(1) & !KIND;
        let wr_id = WRITE | self.l.next_write;
        let len32 = u32::try_from(n).unwrap_or(0);
        // SAFETY: the buffer is registered and kept in `writing` until the
        // write's completion.
        let r = unsafe {
            rdma::post_rdma(
                self.l.id.qp(),
                wr_id,
                false,
                p,
                len32,
                lkey,
                k.addr.get(),
                k.key.get(),
            )
        };
        if r.is_err() {
            self.l.broken = true;
            self.pool.give(buf);
            return;
        }
        self.l.writing.insert(wr_id, buf);
    }
}

impl Wire for Out<'_> {
    type Buf = RegBuf;

    fn data_buffer(&mut self, len: usize) -> Option<RegBuf> {
        self.pool.take(len)
    }

    fn read_buffer(&mut self, len: usize) -> Option<(RegBuf, usize)> {
        Some((self.pool.take(len)?, 0))
    }

    fn fetch(&mut self, idx: usize, sqe: &Sqe, buf: &mut [u8]) {
        let k = KeyedSgl::of(sqe);
        let Some(lkey) = self.lkey(buf.as_ptr(), buf.len().max(1)) else {
            self.l.broken = true;
            return;
        };
        let len = u32::try_from(buf.len()).unwrap_or(0);
        let wr_id = READ | u64::try_from(idx).unwrap_or(0);
        // SAFETY: the buffer is the command's (registered), kept by the
        // queue until the command completes, which needs this read.
        let r = unsafe {
            rdma::post_rdma(
                self.l.id.qp(),
                wr_id,
                true,
                buf.as_mut_ptr(),
                len,
                lkey,
                k.addr.get(),
                k.key.get(),
            )
        };
        if r.is_err() {
            self.l.broken = true;
        }
    }

    fn send_data(&mut self, sqe: &Sqe, data: &[u8]) {
        let Some(mut b) = self.pool.take(data.len()) else {
            self.l.broken = true;
            return;
        };
        b.as_mut().copy_from_slice(data);
        self.write(sqe, b, 0, data.len());
    }

    fn send_read(&mut self, sqe: &Sqe, buf: RegBuf, at: usize, len: usize, _last: bool) -> bool {
        self.write(sqe, buf, at, len);
        false
    }

    fn drop_read(&mut self, buf: RegBuf) {
        self.pool.give(buf);
    }

    fn respond(&mut self, cqe: &Cqe) {
        let Some(slot) = self.l.resp_free.pop() else {
            tracing::warn!("no response buffer free: closing the connection");
            self.l.broken = true;
            return;
        };
        let p = self
            .l
            .resp
            .as_ptr()
            .wrapping_add(usize::try_from(slot).unwrap_or(0) * 16);
        // SAFETY: a free 16-byte slot of our registered response buffer.
        unsafe { std::ptr::copy_nonoverlapping(cqe.as_bytes().as_ptr(), p, 16) };
        let Some(lkey) = self.lkey(p, 16) else {
            self.l.broken = true;
            return;
        };
        // SAFETY: the slot is ours until the send's completion frees it.
        if unsafe { rdma::post_send_buf(self.l.id.qp(), u64::from(slot), p, 16, lkey) }.is_err() {
            self.l.broken = true;
        }
    }

    fn close_after_flush(&mut self) {
        self.l.closing = true;
    }

    fn over_limit(&self, _owed: usize) -> bool {
        false
    }
}

pub(super) struct RdmaPoller {
    sub: Arc<Subsystem>,
    channel: Arc<EventChannel>,
    /// Kept for as long as the target listens.
    _listener: CmId,
    engine: Engine,
    queues: Vec<QueueId>,
    /// This poller's counters of each namespace (by index).
    io: Vec<Arc<crate::io_stats::IoShard>>,
    stop: Arc<AtomicBool>,
    conns: Vec<Option<Conn>>,
    gens: Vec<u16>,
    by_id: HashMap<usize, usize>,
    pool: Pool,
    orphans: Orphans<RegBuf>,
}

// SAFETY: the poller is moved into its thread once and used there only.
unsafe impl Send for RdmaPoller {}

impl RdmaPoller {
    pub fn new(
        sub: Arc<Subsystem>,
        channel: Arc<EventChannel>,
        listener: CmId,
        engine: Engine,
        queues: Vec<QueueId>,
        stop: Arc<AtomicBool>,
    ) -> RdmaPoller {
        RdmaPoller {
            io: sub.io.iter().map(crate::io_stats::IoStats::shard).collect(),
            sub,
            channel,
            _listener: listener,
            engine,
            queues,
            stop,
            conns: Vec::new(),
            gens: Vec::new(),
            by_id: HashMap::new(),
            pool: Pool::default(),
            orphans: Orphans::default(),
        }
    }

    fn tag(&self, slot: usize, idx: usize) -> u64 {
        let s = u64::try_from(slot).unwrap_or(0);
        let g = u64::from(self.gens.get(slot).copied().unwrap_or(0));
        (s << 32) | (g << 16) | (u64::try_from(idx).unwrap_or(0) & 0xffff)
    }

    pub fn run(mut self) {
        let mut last_work = Instant::now();
        let mut last_tick = Instant::now();
        let mut last_cm = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let mut work = false;
            if last_cm.elapsed() >= CM_CHECK {
                work = self.cm_events();
                last_cm = Instant::now();
            }
            for slot in 0..self.conns.len() {
                work |= self.poll_conn(slot);
            }
            work |= self.reap();
            self.engine.kick();
            let now = Instant::now();
            if now.duration_since(last_tick) >= TICK {
                last_tick = now;
                self.tick(now);
            }
            if work || self.engine.in_flight() > 0 {
                last_work = now;
            } else if now.duration_since(last_work) > SPIN {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        for slot in 0..self.conns.len() {
            self.close(slot);
        }
        let mut done = Vec::new();
        self.engine.drain(&mut done, Duration::from_secs(10));
    }

    fn cm_events(&mut self) -> bool {
        let mut any = false;
        loop {
            let ev = match self.channel.get(Duration::ZERO) {
                Ok(Some(ev)) => ev,
                Ok(None) => return any,
                Err(e) => {
                    tracing::error!("RDMA CM event channel: {e}");
                    return any;
                }
            };
            any = true;
            match ev.kind {
                event::CONNECT_REQUEST => self.connect_request(&ev),
                event::ESTABLISHED => {
                    if let Some(c) = self
                        .by_id
                        .get(&(ev.id as usize))
                        .and_then(|&s| self.conns[s].as_mut())
                    {
                        c.link.established = true;
                    }
                }
                _ => {
                    if let Some(&slot) = self.by_id.get(&(ev.id as usize)) {
                        tracing::debug!(event = rdma::event_name(ev.kind), "RDMA connection ended");
                        self.close(slot);
                    }
                }
            }
        }
    }

    fn connect_request(&mut self, ev: &CmEvent) {
        // SAFETY: the identifier of a connect request is ours to accept or
        // reject, and to destroy.
        let id = unsafe { CmId::adopt(ev.id, &self.channel) };
        let reject = |id: &CmId, sts: u16, why: &str| {
            tracing::warn!("RDMA connection request refused: {why}");
            let r = CmReject {
                recfmt: RECFMT.into(),
                sts: sts.into(),
            };
            let _ = id.reject(r.as_bytes());
        };
        let live = self.conns.iter().flatten().count();
        let hrqsize = match check_request(&ev.private, self.sub.limits.queue_entries, live) {
            Ok(n) => n,
            Err((sts, why)) => {
                reject(&id, sts, why);
                return;
            }
        };
        match self.accept(id, hrqsize) {
            Ok(()) => {}
            Err((id, e)) => reject(&id, REJECT_NO_RESOURCES, &e.to_string()),
        }
    }

    fn accept(&mut self, mut id: CmId, hrqsize: u32) -> Result<(), (CmId, std::io::Error)> {
        let dev = match device(&id, rdma::Role::Target) {
            Ok(d) => d,
            Err(e) => return Err((id, e)),
        };
        let cq = match Cq::new(dev.regs.pd(), hrqsize * 4 + 16) {
            Ok(c) => c,
            Err(e) => return Err((id, e)),
        };
        if let Err(e) = id.create_qp(dev.regs.pd(), &cq, hrqsize * 3 + 8, hrqsize, 1) {
            return Err((id, e));
        }
        let capsule = 64 + usize::try_from(self.sub.limits.in_capsule).unwrap_or(0);
        let n = usize::try_from(hrqsize).unwrap_or(1);
        let reg = DmaRegistry::global();
        let (recv, resp) = match (
            DmaBuffer::new(reg, n * capsule),
            DmaBuffer::new(reg, n * 2 * 16),
        ) {
            (Ok(a), Ok(b)) => (a, b),
            _ => {
                return Err((
                    id,
                    std::io::Error::other("no memory for the queue's buffers"),
                ))
            }
        };
        let link = Link {
            id,
            cq,
            dev,
            recv,
            recvs: hrqsize,
            capsule,
            resp,
            resp_free: (0..u32::try_from(n * 2).unwrap_or(0)).rev().collect(),
            writing: HashMap::new(),
            next_write: 0,
            established: false,
            closing: false,
            broken: false,
        };
        for i in 0..hrqsize {
            if let Err(e) = post_recv(&link, i) {
                return Err((link.id_take(), e));
            }
        }
        let rep = CmReply {
            recfmt: RECFMT.into(),
            crqsize: u16::try_from(hrqsize).unwrap_or(u16::MAX).into(),
            rsvd: [0; 28],
        };
        if let Err(e) = link.id.accept(rep.as_bytes()) {
            return Err((link.id_take(), e));
        }
        let slot = match self.conns.iter().position(Option::is_none) {
            Some(s) => s,
            None => {
                self.conns.push(None);
                self.gens.push(0);
                self.conns.len() - 1
            }
        };
        self.by_id.insert(link.id.raw() as usize, slot);
        let peer = format!("rdma conn {slot}");
        self.conns[slot] = Some(Conn {
            link,
            q: FabricQueue::new(peer, &self.sub.limits),
        });
        self.sub.connections.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Completions of the connection in `slot`; whether there were any.
    fn poll_conn(&mut self, slot: usize) -> bool {
        let tag_base = self.tag(slot, 0);
        let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        if !c.link.established {
            // Until the CM says ESTABLISHED the connection cannot be ended
            // cleanly (a disconnect before it is refused, and the host would
            // never hear of it): what arrived waits in the CQ.
            return false;
        }
        let mut done: Vec<WorkDone> = Vec::new();
        if c.link.cq.poll(&mut done).is_err() {
            c.link.broken = true;
        }
        let any = !done.is_empty();
        for w in done {
            if w.status != rdma::wc_status::IBV_WC_SUCCESS {
                c.link.broken = true;
                continue;
            }
            let mut cx = Ctx {
                sub: &self.sub,
                engine: &mut self.engine,
                queues: &self.queues,
                io: &self.io,
                tag_base,
            };
            match w.wr_id & KIND {
                RECV => {
                    let i = u32::try_from(w.wr_id & !KIND).unwrap_or(u32::MAX);
                    if i >= c.link.recvs {
                        continue;
                    }
                    let at = usize::try_from(i).unwrap_or(0) * c.link.capsule;
                    let n = usize::try_from(w.byte_len).unwrap_or(0).min(c.link.capsule);
                    // SAFETY: the receive completed: its buffer holds `n`
                    // bytes, which nothing writes until it is posted again
                    // below, after the queue took the command (it copies
                    // in-capsule data into the command's buffer).
                    let capsule =
                        unsafe { std::slice::from_raw_parts(c.link.recv.as_ptr().add(at), n) };
                    match Sqe::read_from_prefix(capsule) {
                        Ok((sqe, rest)) => {
                            let mut out = Out {
                                l: &mut c.link,
                                pool: &mut self.pool,
                            };
                            c.q.command(&mut cx, &mut out, &sqe, rest, true);
                        }
                        Err(_) => {
                            tracing::warn!(
                                "a capsule shorter than a command: closing the connection"
                            );
                            c.link.broken = true;
                        }
                    }
                    if post_recv(&c.link, i).is_err() {
                        c.link.broken = true;
                    }
                }
                READ => {
                    let idx = usize::try_from(w.wr_id & !KIND).unwrap_or(usize::MAX);
                    let mut out = Out {
                        l: &mut c.link,
                        pool: &mut self.pool,
                    };
                    c.q.data_fetched(&mut cx, &mut out, idx, Status::SUCCESS);
                }
                WRITE => {
                    if let Some(b) = c.link.writing.remove(&w.wr_id) {
                        self.pool.give(b);
                    }
                }
                _ => {
                    if let Ok(slot) = u32::try_from(w.wr_id) {
                        c.link.resp_free.push(slot);
                    }
                }
            }
        }
        let idle = c.link.writing.is_empty()
            && c.link.resp_free.len() == usize::try_from(c.link.recvs).unwrap_or(0) * 2;
        if c.link.broken || (c.link.closing && idle) {
            self.close(slot);
        }
        any
    }

    fn reap(&mut self) -> bool {
        let mut done = Vec::new();
        self.engine.poll(&mut done);
        let any = !done.is_empty();
        for c in done {
            self.complete_tag(c.tag, c.result.map(|()| c.value));
        }
        any
    }

    fn complete_tag(&mut self, tag: u64, outcome: OpOutcome) {
        let slot = usize::try_from(tag >> 32).unwrap_or(usize::MAX);
        let gen = u16::try_from((tag >> 16) & 0xffff).unwrap_or(0);
        let idx = usize::try_from(tag & 0xffff).unwrap_or(0);
        let live =
            self.gens.get(slot) == Some(&gen) && matches!(self.conns.get(slot), Some(Some(_)));
        if live {
            let tag_base = self.tag(slot, 0);
            if let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) {
                let mut cx = Ctx {
                    sub: &self.sub,
                    engine: &mut self.engine,
                    queues: &self.queues,
                    io: &self.io,
                    tag_base,
                };
                let mut out = Out {
                    l: &mut c.link,
                    pool: &mut self.pool,
                };
                c.q.op_done(&mut cx, &mut out, idx, outcome);
            }
            return;
        }
        self.orphans.completed(&self.sub, tag);
    }

    fn tick(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_ref() else {
                continue;
            };
            if let Some(why) = c.q.expired(&self.sub, now) {
                tracing::warn!(peer = %c.q.peer, "closing the RDMA connection: {why}");
                self.close(slot);
            }
        }
    }

    /// Drop a connection: its queue and (admin queue) its controller go
    /// away; backend work in flight keeps its buffers until it completes.
    fn close(&mut self, slot: usize) {
        let Some(Conn { link, mut q }) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.by_id.remove(&(link.id.raw() as usize));
        link.id.disconnect();
        // The queue pair goes first: no RDMA READ lands in a buffer dropped
        // below, no WRITE reads one.
        drop(link);
        let base = self.tag(slot, 0) & !0xffff;
        self.orphans
            .adopt(&self.sub, &mut self.engine, base, &mut q);
        q.release(&self.sub);
        if let Some(g) = self.gens.get_mut(slot) {
            *g = g.wrapping_add(1);
        }
        self.sub.connections.fetch_sub(1, Ordering::AcqRel);
        tracing::debug!(slot, "RDMA connection closed");
    }
}

/// Check a connection request's private data (NVMe/RDMA's record) against
/// the target's queue entries and its live connections: the number of
/// receives to post (HRQSIZE), or the reject status and why.
fn check_request(private: &[u8], entries: u32, live: usize) -> Result<u32, (u16, &'static str)> {
    let Ok((req, _)) = CmRequest::read_from_prefix(private) else {
        return Err((REJECT_INVALID_RECFMT, "no NVMe/RDMA private data"));
    };
    if req.recfmt.get() != RECFMT {
        return Err((REJECT_INVALID_RECFMT, "unknown record format"));
    }
    let hrqsize = u32::from(req.hrqsize.get());
    let hsqsize = u32::from(req.hsqsize.get());
    if hsqsize == 0 || hsqsize + 1 > entries {
        return Err((REJECT_INVALID_HSQSIZE, "HSQSIZE out of range"));
    }
    if hrqsize < hsqsize + 1 || hrqsize > entries + 1 {
        return Err((REJECT_INVALID_HRQSIZE, "HRQSIZE out of range"));
    }
    if live >= MAX_CONNS {
        return Err((REJECT_NO_RESOURCES, "too many connections"));
    }
    Ok(hrqsize)
}

impl Link {
    /// The identifier, taken out to reject with (the rest is dropped).
    fn id_take(self) -> CmId {
        self.id
    }
}

/// Post receive `i` of the link again.
fn post_recv(l: &Link, i: u32) -> std::io::Result<()> {
    let at = usize::try_from(i).unwrap_or(0) * l.capsule;
    let p = l.recv.as_ptr().wrapping_add(at);
    let (lkey, _) = l
        .dev
        .regs
        .keys(p, l.capsule)
        .ok_or_else(|| std::io::Error::other("receive buffer not registered"))?;
    let len = u32::try_from(l.capsule).unwrap_or(0);
    // SAFETY: the receive buffer is registered and lives as long as the QP.
    unsafe { rdma::post_recv(l.id.qp(), RECV | u64::from(i), p, len, lkey) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(recfmt: u16, hrqsize: u16, hsqsize: u16) -> Vec<u8> {
        CmRequest {
            recfmt: recfmt.into(),
            hrqsize: hrqsize.into(),
            hsqsize: hsqsize.into(),
            cntlid: 0xffff.into(),
            ..Default::default()
        }
        .as_bytes()
        .to_vec()
    }

    #[test]
    fn a_linux_style_request_is_accepted() {
        // Linux's host: HRQSIZE = queue size, HSQSIZE = queue size - 1.
        assert_eq!(check_request(&request(0, 128, 127), 128, 0), Ok(128));
        assert_eq!(check_request(&request(0, 32, 31), 128, 5), Ok(32));
    }

    #[test]
    fn bad_records_are_refused_with_their_status() {
        let short = &request(0, 32, 31)[..6];
        assert_eq!(
            check_request(short, 128, 0).unwrap_err().0,
            REJECT_INVALID_RECFMT
        );
        assert_eq!(
            check_request(&[], 128, 0).unwrap_err().0,
            REJECT_INVALID_RECFMT
        );
        assert_eq!(
            check_request(&request(1, 32, 31), 128, 0).unwrap_err().0,
            REJECT_INVALID_RECFMT
        );
        // HSQSIZE of 0, or beyond the target's queue entries.
        assert_eq!(
            check_request(&request(0, 1, 0), 128, 0).unwrap_err().0,
            REJECT_INVALID_HSQSIZE
        );
        assert_eq!(
            check_request(&request(0, 200, 199), 128, 0).unwrap_err().0,
            REJECT_INVALID_HSQSIZE
        );
        assert_eq!(
            check_request(&request(0, u16::MAX, u16::MAX), 128, 0)
                .unwrap_err()
                .0,
            REJECT_INVALID_HSQSIZE
        );
        // HRQSIZE below the commands the host may send, or above the queue.
        assert_eq!(
            check_request(&request(0, 31, 31), 128, 0).unwrap_err().0,
            REJECT_INVALID_HRQSIZE
        );
        assert_eq!(
            check_request(&request(0, 130, 31), 128, 0).unwrap_err().0,
            REJECT_INVALID_HRQSIZE
        );
    }

    #[test]
    fn connections_are_bounded() {
        assert!(check_request(&request(0, 32, 31), 128, MAX_CONNS - 1).is_ok());
        assert_eq!(
            check_request(&request(0, 32, 31), 128, MAX_CONNS)
                .unwrap_err()
                .0,
            REJECT_NO_RESOURCES
        );
    }
}
