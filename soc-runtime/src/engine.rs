//! A poller's backend side, the same whatever front end the poller serves
//! (the guests' I/O queues over the link, NVMe/TCP connections): one queue
//! per backend it uses, the requests a full queue could not take yet (given
//! again, in order, on every pass), and completions handed back by tag.
//! What a tag means is the front end's.

use leapio_backend::{
    Backend, BackendError, BackendQueue, Completion, IoError, IoRequest, KeptRequest, SubmitError,
};
use std::collections::VecDeque;
use std::time::Duration;

/// One of the engine's backend queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueId(usize);

/// The backend queues of one poller.
#[derive(Default)]
pub struct Engine {
    queues: Vec<Option<Box<dyn BackendQueue>>>,
    /// Requests a full queue did not take, in order.
    deferred: VecDeque<(QueueId, KeptRequest)>,
    /// Requests a queue refused (they complete with EINVAL).
    failed: Vec<Completion>,
}

impl Engine {
    /// A queue of `depth` requests on `backend`.
    pub fn open(&mut self, backend: &dyn Backend, depth: u32) -> Result<QueueId, BackendError> {
        let q = backend.open_queue(depth)?;
        let i = match self.queues.iter().position(Option::is_none) {
            Some(i) => {
                self.queues[i] = Some(q);
                i
            }
            None => {
                self.queues.push(Some(q));
                self.queues.len() - 1
            }
        };
        Ok(QueueId(i))
    }

    /// Close queue `id` (dropping a queue waits for what it has in flight).
    /// Requests it had not taken yet are dropped: the caller closes only a
    /// queue nothing of its own waits on.
    pub fn close(&mut self, id: QueueId) {
        self.deferred.retain(|(q, _)| *q != id);
        if let Some(slot) = self.queues.get_mut(id.0) {
            *slot = None;
        }
    }

    /// Give `req` to queue `id`, or keep it until the queue has room; a
    /// request the queue refuses completes with EINVAL.
    ///
    /// # Safety
    ///
    /// The memory `req`'s iovecs point to stays valid (and, for reads,
    /// writable) until its completion is handed back by [`Engine::poll`] or
    /// [`Engine::drain`].
    pub unsafe fn submit(&mut self, id: QueueId, req: &IoRequest<'_>) {
        let Some(Some(q)) = self.queues.get_mut(id.0) else {
            self.fail(req.tag, "no such backend queue");
            return;
        };
        // SAFETY: the caller's guarantee, passed on.
        match unsafe { q.submit(req) } {
            Ok(()) => {}
            Err(SubmitError::Full) => self.deferred.push_back((id, KeptRequest::of(req))),
            Err(SubmitError::Invalid(why)) => self.fail(req.tag, why),
        }
    }

    fn fail(&mut self, tag: u64, why: &str) {
        tracing::error!("backend refused a validated request: {why}");
        self.failed.push(Completion {
            tag,
            result: Err(IoError::from_errno(libc::EINVAL)),
            value: 0,
        });
    }

    /// Give the kept requests to their queues again, in order, until one
    /// is still full. Whether any went.
    pub fn retry(&mut self) -> bool {
        let mut any = false;
        while let Some((id, k)) = self.deferred.front() {
            let Some(Some(q)) = self.queues.get_mut(id.0) else {
                self.deferred.pop_front();
                continue;
            };
            // SAFETY: kept from a `submit` whose caller keeps the memory
            // valid until the tag completes.
            match unsafe { q.submit(&k.request()) } {
                Ok(()) => {
                    any = true;
                    self.deferred.pop_front();
                }
                Err(SubmitError::Full) => break,
                Err(SubmitError::Invalid(why)) => {
                    let tag = k.tag;
                    self.deferred.pop_front();
                    self.fail(tag, why);
                }
            }
        }
        any
    }

    /// Hand what the queues were given to the kernel (one call per queue).
    pub fn kick(&mut self) {
        for q in self.queues.iter_mut().flatten() {
            if let Err(e) = q.kick() {
                tracing::error!("backend submission failed: {e}");
            }
        }
    }

    /// Append what completed to `out`.
    pub fn poll(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.failed);
        for q in self.queues.iter_mut().flatten() {
            q.poll(out);
        }
    }

    /// Append what completed to `out`, after starting what the queues hold
    /// back (for a scheduler's tokens) and waiting up to `timeout` for what
    /// they have in flight: a poller stopping.
    pub fn drain(&mut self, out: &mut Vec<Completion>, timeout: Duration) {
        self.retry();
        out.append(&mut self.failed);
        for q in self.queues.iter_mut().flatten() {
            q.drain(out, timeout);
        }
    }

    /// Requests given and not completed (kept ones included).
    pub fn in_flight(&self) -> usize {
        self.deferred.len()
            + self.failed.len()
            + self
                .queues
                .iter()
                .flatten()
                .map(|q| q.in_flight())
                .sum::<usize>()
    }

    /// Whether something is on a device (or waiting for room on one):
    /// what a poller spins for. Requests only a scheduler holds back are
    /// not (time alone starts them).
    pub fn busy(&self) -> bool {
        !self.deferred.is_empty()
            || !self.failed.is_empty()
            || self
                .queues
                .iter()
                .flatten()
                .any(|q| q.in_flight() > q.held())
    }

    /// Whether a scheduler holds requests back for tokens.
    pub fn held(&self) -> bool {
        self.queues.iter().flatten().any(|q| q.held() > 0)
    }

    /// Sleep up to `timeout` in the first queue with requests in flight
    /// until one completes (see [`BackendQueue::wait_completion`]).
    pub fn wait(&mut self, timeout: Duration) {
        if let Some(q) = self.queues.iter_mut().flatten().find(|q| q.in_flight() > 0) {
            q.wait_completion(timeout);
        }
    }

    /// Drop the kept requests whose tags `f` picks (a connection that
    /// closed: they never reached a device); their tags, one per request.
    pub fn forget(&mut self, mut f: impl FnMut(u64) -> bool) -> Vec<u64> {
        let mut tags = Vec::new();
        self.deferred.retain(|(_, k)| {
            if f(k.tag) {
                tags.push(k.tag);
                false
            } else {
                true
            }
        });
        tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leapio_backend::IoKind;
    use leapio_backends::RamBackend;

    fn iovec(buf: &mut [u8]) -> libc::iovec {
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }
    }

    /// A read of 512 bytes at `offset` into the buffer `iov` describes.
    fn read(tag: u64, offset: u64, iov: &libc::iovec) -> IoRequest<'_> {
        IoRequest {
            tag,
            kind: IoKind::Read,
            offset,
            len: 512,
            iov: std::slice::from_ref(iov),
            owner: 0,
            journal: None,
        }
    }

    #[test]
    fn a_full_queue_keeps_requests_until_it_has_room() {
        let ram = RamBackend::new(1 << 20, 512).unwrap();
        let mut e = Engine::default();
        let id = e.open(&ram, 2).unwrap();
        let mut bufs = vec![vec![0u8; 512]; 5];
        for (i, b) in bufs.iter_mut().enumerate() {
            let iov = iovec(b);
            let req = read(i as u64, i as u64 * 512, &iov);
            // SAFETY: `bufs` outlives every request (all completed below).
            unsafe { e.submit(id, &req) };
        }
        // Depth 2: three wait for room.
        assert_eq!(e.in_flight(), 5);
        assert!(e.busy() && !e.held());
        let mut out = Vec::new();
        for _ in 0..5 {
            e.poll(&mut out);
            e.retry();
        }
        let mut tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
        tags.sort_unstable();
        assert_eq!(tags, [0, 1, 2, 3, 4]);
        assert!(out.iter().all(|c| c.result.is_ok()));
        assert_eq!(e.in_flight(), 0);
        // A refused request (past the end) completes with EINVAL.
        let iov = iovec(&mut bufs[0]);
        let bad = read(9, 1 << 20, &iov);
        // SAFETY: as above.
        unsafe { e.submit(id, &bad) };
        out.clear();
        e.poll(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].result, Err(IoError::from_errno(libc::EINVAL)));
        // Kept requests can be forgotten (their connection closed).
        let small = e.open(&ram, 1).unwrap();
        for i in [20u64, 21, 22] {
            let iov = iovec(&mut bufs[usize::try_from(i - 20).unwrap()]);
            let req = read(i, 0, &iov);
            // SAFETY: as above.
            unsafe { e.submit(small, &req) };
        }
        assert_eq!(e.forget(|t| t != 21), [22]);
        out.clear();
        for _ in 0..3 {
            e.poll(&mut out);
            e.retry();
        }
        let tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
        assert_eq!(tags, [20, 21]);
        e.close(id);
        let iov = iovec(&mut bufs[1]);
        let req = read(7, 0, &iov);
        // SAFETY: as above.
        unsafe { e.submit(id, &req) };
        out.clear();
        e.poll(&mut out);
        assert_eq!(out.len(), 1, "a closed queue refuses");
    }
}
