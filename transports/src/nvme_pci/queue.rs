//! One I/O queue pair of the SSD per poller: requests become commands
//! (split at the controller's transfer limit), their data pointers PRPs
//! into the memory the request names, translated to IOVAs; completions are
//! polled. Memory the IOMMU does not map (not registered for DMA) goes
//! through a bounce buffer of the queue's own, and every byte copied that
//! way is counted.
//!
//! A command that runs longer than the device's timeout is aborted; one
//! that still does not complete, or a controller that reports a fatal
//! error, makes the device reset the controller. Every queue then creates
//! itself again and sends what it had in flight again: reads, writes,
//! flushes, Write Zeroes and deallocations are all safe to run twice. A
//! command sent [`MAX_TRIES`] times fails with `ETIMEDOUT`; a controller
//! given up fails everything with `EIO`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leapio_backend::dma::{DmaBuffer, DmaRegistry, PAGE_SIZE};
use leapio_nvme::{Cqe, Sqe};
use zerocopy::IntoBytes;

use super::device::{DeviceError, NvmeDevice, QueuePair};
use crate::iov::{gather, scatter};
use crate::nvme_host::{self, MAX_NLB};
use crate::{
    validate, BackendError, BackendQueue, Completion, IoError, IoKind, IoRequest, SubmitError,
};

/// Entries per I/O queue (at most; the controller's MQES may say fewer).
const MAX_ENTRIES: u16 = 256;
/// Bounce buffers per queue at least, each of the largest command (made
/// when first needed).
const BOUNCE_SLOTS: usize = 16;
/// Times a command is sent before it fails.
pub(crate) const MAX_TRIES: u8 = 3;
/// Polls between two looks at the clock for commands that run too long.
const POLLS_PER_CHECK: u32 = 256;
/// Least time between two such looks.
const CHECK_EVERY: Duration = Duration::from_millis(50);

/// The request a command belongs to.
struct Req {
    tag: u64,
    parts: u32,
    error: Option<IoError>,
    /// The request's iovecs, kept when a part goes through a bounce buffer
    /// (a read's data is copied back at completion).
    iov: Vec<libc::iovec>,
}

/// A command in flight, by CID.
struct Cmd {
    req: usize,
    sqe: Sqe,
    sent: Instant,
    aborted: bool,
    tries: u8,
    /// Bounce slot, the part's byte offset in the request and its length,
    /// and whether it is a read (data copied back at completion).
    bounce: Option<(usize, usize, usize, bool)>,
}

/// See the module documentation.
pub(crate) struct IoQueue {
    dev: Arc<NvmeDevice>,
    qp: QueuePair,
    epoch: u64,
    depth: usize,
    cmds: Vec<Option<Cmd>>,
    free: Vec<u16>,
    prp_lists: DmaBuffer,
    reqs: Vec<Option<Req>>,
    free_reqs: Vec<usize>,
    requests: usize,
    done: Vec<Completion>,
    bounce: Vec<Option<DmaBuffer>>,
    free_bounce: Vec<usize>,
    copied: Arc<AtomicU64>,
    polls: u32,
    checked: Instant,
    scratch: Vec<u64>,
}

// SAFETY: the iovecs kept in `reqs` point to memory the submitter keeps
// valid until the request completes (the `submit` contract); the queue is
// used by one thread at a time.
unsafe impl Send for IoQueue {}

/// The PRP entries of `[off, off + len)` of `iov` into `out`: the IOVA of
/// the first byte, then of every page after it. `None` when some of the
/// memory has no IOVA, or is not laid out as PRPs can describe it (every
/// piece but the first must start on a page, every one but the last end
/// on one; the first starts on a dword).
pub(crate) fn prp_entries(
    iov: &[libc::iovec],
    off: usize,
    len: usize,
    iova: impl Fn(*const u8, usize) -> Option<u64>,
    out: &mut Vec<u64>,
) -> Option<()> {
    out.clear();
    let page = PAGE_SIZE as u64;
    let mut left = len;
    for (p, n) in crate::iov::pieces(iov, off, len) {
        let a = iova(p.cast_const(), n)?;
        // The first piece starts on a dword, every other on a page; every
        // piece but the last ends on a page.
        let align = if out.is_empty() { 4 } else { page };
        if a % align != 0 {
            return None;
        }
        out.push(a);
        let end = a + n as u64;
        let mut next = (a / page + 1) * page;
        while next < end {
            out.push(next);
            next += page;
        }
        left -= n;
        if left > 0 && end % page != 0 {
            return None;
        }
    }
    (left == 0 && !out.is_empty()).then_some(())
}

impl IoQueue {
    pub(crate) fn open(
        dev: &Arc<NvmeDevice>,
        depth: u32,
        copied: Arc<AtomicU64>,
    ) -> Result<IoQueue, BackendError> {
        let cfg = |e: DeviceError| BackendError::Config(format!("{}: {e}", dev.info.model));
        let qid = dev.alloc_qid().ok_or_else(|| {
            BackendError::Config(format!(
                "{}: all {} I/O queues the controller grants are in use",
                dev.info.model, dev.info.queues
            ))
        })?;
        let entries = MAX_ENTRIES.min(dev.mqes).max(2);
        let registry: &'static DmaRegistry = dev.registry;
        let made = QueuePair::new(registry, Arc::clone(&dev.regs), qid, entries, dev.dstrd)
            .map_err(DeviceError::from)
            .and_then(|qp| {
                let lists = DmaBuffer::new(registry, usize::from(entries - 1) * PAGE_SIZE)?;
                dev.create_queue(&qp)?;
                Ok((qp, lists))
            });
        let (qp, prp_lists) = match made {
            Ok(x) => x,
            Err(e) => {
                dev.free_qid(qid);
                return Err(cfg(e));
            }
        };
        let cids = usize::from(entries - 1);
        // Room for the largest request to go through bounce buffers.
        let largest = crate::MAX_IOVECS * PAGE_SIZE;
        let slots = BOUNCE_SLOTS.max(largest.div_ceil(dev.info.max_command as usize) + 1);
        Ok(IoQueue {
            epoch: dev.epoch(),
            dev: Arc::clone(dev),
            qp,
            depth: usize::try_from(depth.max(1)).unwrap_or(1),
            cmds: (0..cids).map(|_| None).collect(),
            free: (0..cids)
                .rev()
                .filter_map(|c| u16::try_from(c).ok())
                .collect(),
            prp_lists,
            reqs: Vec::new(),
            free_reqs: Vec::new(),
            requests: 0,
            done: Vec::new(),
            bounce: (0..slots).map(|_| None).collect(),
            free_bounce: (0..slots).rev().collect(),
            copied,
            polls: 0,
            checked: Instant::now(),
            scratch: Vec::new(),
        })
    }

    fn bs(&self) -> u64 {
        u64::from(self.dev.info.geometry.block_size)
    }

    /// The commands `req` becomes: (kind, byte offset in the request, byte
    /// length), each within the controller's limits.
    fn parts(&self, req: &IoRequest<'_>) -> Vec<(u64, u64)> {
        let limit = match req.kind {
            IoKind::Read | IoKind::Write | IoKind::WriteFua => u64::from(self.dev.info.max_command),
            IoKind::WriteZeroes | IoKind::WriteZeroesFua => MAX_NLB * self.bs(),
            IoKind::Deallocate => u64::from(u32::MAX) * self.bs(),
            _ => return vec![(0, 0)],
        };
        let mut v = Vec::new();
        let mut at = 0;
        while at < req.len {
            let n = (req.len - at).min(limit);
            v.push((at, n));
            at += n;
        }
        v
    }

    fn alloc_req(&mut self, r: Req) -> usize {
        self.requests += 1;
        match self.free_reqs.pop() {
            Some(i) => {
                self.reqs[i] = Some(r);
                i
            }
            None => {
                self.reqs.push(Some(r));
                self.reqs.len() - 1
            }
        }
    }

    fn bounce_slot(&mut self) -> Option<usize> {
        let i = *self.free_bounce.last()?;
        if self.bounce[i].is_none() {
            match DmaBuffer::new(self.dev.registry, self.dev.info.max_command as usize) {
                Ok(b) => self.bounce[i] = Some(b),
                Err(e) => {
                    tracing::warn!("no bounce buffer: {e}");
                    return None;
                }
            }
        }
        self.free_bounce.pop()
    }

    /// Put PRPs for `[off, off+len)` of `iov` in `sqe`, using the list page
    /// of `cid` if needed. `None`: the memory cannot be described directly.
    fn set_prps(&mut self, sqe: &mut Sqe, cid: u16, entries: &[u64]) {
        sqe.prp1 = entries[0].into();
        sqe.prp2 = match entries.len() {
            1 => 0,
            2 => entries[1],
            _ => {
                let at = usize::from(cid) * PAGE_SIZE;
                let list = &entries[1..];
                // SAFETY: the list page of `cid` is ours (PAGE_SIZE bytes at
                // `at`, inside the buffer); at most 512 entries fit and a
                // command of MAX_COMMAND_BYTES needs at most 257.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        list.as_bytes().as_ptr(),
                        self.prp_lists.as_ptr().add(at),
                        (list.len() * 8).min(PAGE_SIZE),
                    );
                }
                self.prp_lists.iova() + at as u64
            }
        }
        .into();
    }

    fn finish_part(&mut self, req: usize, result: Result<(), IoError>) {
        let Some(r) = self.reqs.get_mut(req).and_then(Option::as_mut) else {
            return;
        };
        if let Err(e) = result {
            r.error.get_or_insert(e);
        }
        r.parts -= 1;
        if r.parts == 0 {
            if let Some(r) = self.reqs[req].take() {
                self.done.push(Completion {
                    tag: r.tag,
                    result: r.error.map_or(Ok(()), Err),
                    value: 0,
                });
            }
            self.free_reqs.push(req);
            self.requests -= 1;
        }
    }

    /// Command `cid` is over: free its slot and bounce buffer (copying a
    /// read's data out first when it succeeded).
    fn retire(&mut self, cid: u16, result: Result<(), IoError>) {
        let Some(c) = self.cmds.get_mut(usize::from(cid)).and_then(Option::take) else {
            return;
        };
        self.free.push(cid);
        if let Some((slot, off, len, read)) = c.bounce {
            if read && result.is_ok() {
                if let (Some(b), Some(r)) = (
                    self.bounce[slot].as_ref(),
                    self.reqs.get(c.req).and_then(Option::as_ref),
                ) {
                    // SAFETY: the bounce buffer holds `len` bytes the device
                    // read; the iovecs cover the part (the submit contract).
                    unsafe {
                        scatter(
                            &r.iov,
                            off as u64,
                            std::slice::from_raw_parts(b.as_ptr(), len),
                        )
                    };
                    self.copied.fetch_add(len as u64, Ordering::Relaxed);
                }
            }
            self.free_bounce.push(slot);
        }
        self.finish_part(c.req, result);
    }

    fn on_completion(&mut self, cqe: &Cqe) {
        let cid = cqe.cid.get();
        let Some(c) = self.cmds.get_mut(usize::from(cid)).and_then(Option::as_mut) else {
            tracing::debug!(cid, "completion for no command in flight: ignored");
            return;
        };
        let st = cqe.status_field();
        if st.is_success() {
            self.retire(cid, Ok(()));
            return;
        }
        // An aborted command, or a failure the device says may succeed
        // again, is sent again (a few times).
        let again = (c.aborted || !st.is_dnr()) && c.tries < MAX_TRIES;
        if again {
            c.tries += 1;
            c.aborted = false;
            c.sent = Instant::now();
            let sqe = c.sqe;
            self.qp.push(&sqe);
            return;
        }
        let e = if c.aborted {
            IoError::from_errno(libc::ETIMEDOUT)
        } else {
            nvme_host::status_error(st.field())
        };
        self.retire(cid, Err(e));
    }

    /// Every command in flight fails with `e`.
    fn fail_all(&mut self, errno: i32) {
        for cid in 0..self.cmds.len() {
            if self.cmds[cid].is_some() {
                let cid = u16::try_from(cid).unwrap_or(u16::MAX);
                self.retire(cid, Err(IoError::from_errno(errno)));
            }
        }
    }

    /// After a controller reset: create the queue again and send again
    /// what was in flight.
    fn rebuild(&mut self) {
        loop {
            self.epoch = self.dev.epoch();
            if self.dev.is_dead() {
                self.fail_all(libc::EIO);
                return;
            }
            self.qp.reset();
            match self.dev.create_queue(&self.qp) {
                Ok(()) => break,
                Err(e) => {
                    if self.dev.epoch() == self.epoch {
                        self.dev
                            .recover(self.epoch, &format!("queue {}: {e}", self.qp.qid));
                    }
                }
            }
        }
        let now = Instant::now();
        for cid in 0..self.cmds.len() {
            let Some(c) = self.cmds[cid].as_mut() else {
                continue;
            };
            if c.tries >= MAX_TRIES {
                let cid = u16::try_from(cid).unwrap_or(u16::MAX);
                self.retire(cid, Err(IoError::from_errno(libc::ETIMEDOUT)));
                continue;
            }
            c.tries += 1;
            c.aborted = false;
            c.sent = now;
            let sqe = c.sqe;
            self.qp.push(&sqe);
        }
        self.qp.ring();
    }

    /// Look for commands that run too long, and for a failed controller.
    fn check(&mut self) {
        self.polls = 0;
        let now = Instant::now();
        if now.duration_since(self.checked) < CHECK_EVERY {
            return;
        }
        self.checked = now;
        if self.dev.failed() {
            self.dev
                .recover(self.epoch, "the controller reports a fatal error");
            return;
        }
        let timeout = self.dev.timeout;
        for cid in 0..self.cmds.len() {
            let Some(c) = self.cmds[cid].as_mut() else {
                continue;
            };
            if now.duration_since(c.sent) < timeout {
                continue;
            }
            let cid = u16::try_from(cid).unwrap_or(u16::MAX);
            if c.aborted {
                let why = format!(
                    "command {cid} of queue {} did not complete after an Abort",
                    self.qp.qid
                );
                self.dev.recover(self.epoch, &why);
                return;
            }
            c.aborted = true;
            c.sent = now;
            tracing::warn!(qid = self.qp.qid, cid, "command timed out: aborting it");
            if let Err(e) = self.dev.abort(self.qp.qid, cid) {
                self.dev.recover(self.epoch, &format!("Abort failed: {e}"));
                return;
            }
        }
    }
}

impl BackendQueue for IoQueue {
    unsafe fn submit(&mut self, req: &IoRequest<'_>) -> Result<(), SubmitError> {
        validate(req, self.dev.info.geometry)?;
        if req.len == 0 && req.kind != IoKind::Flush {
            self.done.push(Completion {
                tag: req.tag,
                result: Ok(()),
                value: 0,
            });
            return Ok(());
        }
        if self.dev.is_dead() {
            self.done.push(Completion {
                tag: req.tag,
                result: Err(IoError::from_errno(libc::EIO)),
                value: 0,
            });
            return Ok(());
        }
        let parts = self.parts(req);
        if parts.len() > self.cmds.len() {
            return Err(SubmitError::Invalid(
                "request needs more commands than the queue has entries",
            ));
        }
        if self.requests >= self.depth || self.free.len() < parts.len() {
            return Err(SubmitError::Full);
        }
        // Plan every command first: nothing is queued unless all can be.
        let data = req.kind.has_data();
        let read = req.kind == IoKind::Read;
        let mut plans: Vec<(Sqe, Option<Vec<u64>>)> = Vec::with_capacity(parts.len());
        let mut bounces = 0;
        let bs = self.bs();
        for &(off, len) in &parts {
            let slba = (req.offset + off) / bs;
            let nlb = u32::try_from(len / bs).unwrap_or(u32::MAX);
            let sqe = nvme_host::io_command(req.kind, self.dev.info.nsid, slba, nlb);
            let direct = if data {
                let reg = self.dev.registry;
                let ok = prp_entries(
                    req.iov,
                    usize::try_from(off).unwrap_or(usize::MAX),
                    usize::try_from(len).unwrap_or(usize::MAX),
                    |p, n| reg.iova(p, n),
                    &mut self.scratch,
                );
                match ok {
                    Some(()) => Some(self.scratch.clone()),
                    None => {
                        bounces += 1;
                        None
                    }
                }
            } else {
                None
            };
            plans.push((sqe, direct));
        }
        if bounces > self.free_bounce.len() {
            return Err(SubmitError::Full);
        }
        let r = self.alloc_req(Req {
            tag: req.tag,
            parts: u32::try_from(parts.len()).unwrap_or(u32::MAX),
            error: None,
            iov: if bounces > 0 {
                req.iov.to_vec()
            } else {
                Vec::new()
            },
        });
        let now = Instant::now();
        for ((mut sqe, direct), &(off, len)) in plans.into_iter().zip(&parts) {
            let Some(cid) = self.free.pop() else {
                break;
            };
            sqe.cid = cid.into();
            let mut bounce = None;
            if data {
                let (off, len) = (
                    usize::try_from(off).unwrap_or(0),
                    usize::try_from(len).unwrap_or(0),
                );
                match direct {
                    Some(entries) => self.set_prps(&mut sqe, cid, &entries),
                    None => {
                        let Some(slot) = self.bounce_slot() else {
                            self.free.push(cid);
                            self.finish_part(r, Err(IoError::from_errno(libc::ENOMEM)));
                            continue;
                        };
                        let (p, iova) = match self.bounce[slot].as_ref() {
                            Some(b) => (b.as_ptr(), b.iova()),
                            None => continue,
                        };
                        if !read {
                            // SAFETY: the bounce buffer has room for the part
                            // (the largest command); the iovecs cover it.
                            unsafe {
                                gather(req.iov, off as u64, std::slice::from_raw_parts_mut(p, len))
                            };
                            self.copied.fetch_add(len as u64, Ordering::Relaxed);
                        }
                        let pages: Vec<u64> = (0..len.div_ceil(PAGE_SIZE))
                            .map(|i| iova + (i * PAGE_SIZE) as u64)
                            .collect();
                        self.set_prps(&mut sqe, cid, &pages);
                        bounce = Some((slot, off, len, read));
                    }
                }
            } else if req.kind == IoKind::Deallocate {
                // The range goes in the command's list page.
                let range = nvme_host::dsm_range(
                    (req.offset + off) / bs,
                    u32::try_from(len / bs).unwrap_or(u32::MAX),
                );
                let at = usize::from(cid) * PAGE_SIZE;
                // SAFETY: the list page of `cid` is ours; 16 bytes fit.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        range.as_bytes().as_ptr(),
                        self.prp_lists.as_ptr().add(at),
                        16,
                    );
                }
                sqe.prp1 = (self.prp_lists.iova() + at as u64).into();
            }
            self.qp.push(&sqe);
            self.cmds[usize::from(cid)] = Some(Cmd {
                req: r,
                sqe,
                sent: now,
                aborted: false,
                tries: 1,
                bounce,
            });
        }
        Ok(())
    }

    fn kick(&mut self) -> Result<(), BackendError> {
        self.qp.ring();
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        if self.dev.epoch() != self.epoch {
            self.rebuild();
        }
        let mut got: Vec<Cqe> = Vec::new();
        self.qp
            .reap(usize::from(self.qp.entries()), |c| got.push(*c));
        for c in &got {
            self.on_completion(c);
        }
        // Commands sent again go out at once.
        self.qp.ring();
        if self.requests > 0 {
            self.polls += 1;
            if self.polls >= POLLS_PER_CHECK {
                self.check();
            }
        }
        let n = self.done.len();
        out.append(&mut self.done);
        n
    }

    fn in_flight(&self) -> usize {
        self.requests + self.done.len()
    }

    fn drain(&mut self, out: &mut Vec<Completion>, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut n = 0;
        loop {
            self.qp.ring();
            n += self.poll(out);
            if self.requests == 0 || Instant::now() >= deadline {
                return n;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

impl Drop for IoQueue {
    fn drop(&mut self) {
        let mut out = Vec::new();
        if self.requests > 0 {
            self.drain(&mut out, Duration::from_secs(10));
        }
        // Deleting the queue stops whatever it still holds; failing that,
        // a reset does.
        if let Err(e) = self.dev.delete_queue(self.qp.qid) {
            if !matches!(e, DeviceError::Dead) {
                self.dev
                    .recover(self.epoch, &format!("deleting queue {}: {e}", self.qp.qid));
            }
        }
        self.dev.free_qid(self.qp.qid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov(base: usize, len: usize) -> libc::iovec {
        libc::iovec {
            iov_base: base as *mut libc::c_void,
            iov_len: len,
        }
    }

    /// Identity translation inside 0x10_0000..0x20_0000, none outside.
    fn ident(p: *const u8, n: usize) -> Option<u64> {
        let a = p as usize;
        (a >= 0x10_0000 && a + n <= 0x20_0000).then_some(a as u64)
    }

    #[test]
    fn prp_entries_follow_the_pages() {
        let mut out = Vec::new();
        // One buffer, starting mid-page, 3 pages long.
        let v = [iov(0x10_0200, 3 * 4096)];
        prp_entries(&v, 0, 3 * 4096, ident, &mut out).unwrap();
        assert_eq!(out, vec![0x10_0200, 0x10_1000, 0x10_2000, 0x10_3000]);
        // A guest's PRP-shaped pieces, and a window into them.
        let v = [
            iov(0x10_0e00, 0x200),
            iov(0x15_0000, 4096),
            iov(0x11_0000, 0x800),
        ];
        prp_entries(&v, 0, 0x200 + 4096 + 0x800, ident, &mut out).unwrap();
        assert_eq!(out, vec![0x10_0e00, 0x15_0000, 0x11_0000]);
        prp_entries(&v, 0x200 + 0x400, 0x400, ident, &mut out).unwrap();
        assert_eq!(out, vec![0x15_0400]);
        // A piece that ends mid-page before another: not PRPs.
        let v = [iov(0x10_0000, 0x200), iov(0x11_0000, 0x200)];
        assert!(prp_entries(&v, 0, 0x400, ident, &mut out).is_none());
        // Memory without an IOVA, or not dword aligned.
        assert!(prp_entries(&[iov(0x30_0000, 512)], 0, 512, ident, &mut out).is_none());
        assert!(prp_entries(&[iov(0x10_0001, 512)], 0, 512, ident, &mut out).is_none());
        // Asking for more than the iovecs hold.
        assert!(prp_entries(&[iov(0x10_0000, 512)], 0, 1024, ident, &mut out).is_none());
    }
}
