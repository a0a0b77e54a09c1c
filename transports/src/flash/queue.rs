//! A poller's queue on the flash backend.
//!
//! `submit` runs the request through the FTL at once (data moved, times
//! modelled) and files its completion under the time the model gives;
//! `poll` returns those whose time has come. Three things can hold a
//! request longer: a FUA write or a Flush waits for its sync ticket, and a
//! write (or trim) that found no free page waits, in order, for GC's
//! victims to be erased after the flusher's next sync (retried on each
//! poll). Nothing sleeps except `drain` and `wait_completion`, which are
//! meant to block.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::ftl::{Ftl, FtlError};
use super::Shared;
use crate::iov::{gather, scatter};
use crate::{
    validate, BackendError, BackendQueue, Completion, Geometry, IoError, IoKind, IoRequest,
    SubmitError,
};

/// A completion filed under the time it is due.
/// A completion filed under the time it is due (shared with the zoned
/// backend's queue).
pub(super) struct Timed {
    pub due: u64,
    /// Order among completions due at the same time.
    pub nr: u64,
    pub tag: u64,
    pub result: Result<(), IoError>,
    /// The completion's value (a Zone Append's LBA).
    pub value: u64,
    /// Sync ticket a FUA write also waits for.
    pub ticket: Option<u64>,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.nr) == (other.due, other.nr)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.nr).cmp(&(other.due, other.nr))
    }
}

/// A write or trim not (fully) done for lack of a free page.
struct Waiting {
    tag: u64,
    kind: IoKind,
    lba: u64,
    pages: u64,
    /// Pages already written.
    done: u64,
    /// Latest completion time of the pages written.
    due: u64,
    iov: Vec<libc::iovec>,
}

/// How far a write got.
enum Progress {
    Finished(Timed),
    Blocked(Waiting),
}

pub(crate) struct FlashQueue {
    shared: Arc<Shared>,
    geometry: Geometry,
    depth: usize,
    page: Vec<u8>,
    timed: BinaryHeap<Reverse<Timed>>,
    /// (ticket, tag) of Flushes and FUA writes past their time.
    syncing: Vec<(u64, u64)>,
    waiting: VecDeque<Waiting>,
    ready: Vec<Completion>,
    nr: u64,
}

// SAFETY: the raw pointers in waiting requests' iovecs point into caller
// memory that the caller keeps valid until the completion is returned (the
// `submit` contract) and that is not tied to a thread; the queue is used by
// one thread at a time (`&mut self`).
unsafe impl Send for FlashQueue {}

impl FlashQueue {
    pub(crate) fn new(shared: Arc<Shared>, geometry: Geometry, depth: u32) -> FlashQueue {
        FlashQueue {
            shared,
            geometry,
            depth: depth as usize,
            page: vec![0; geometry.block_size as usize],
            timed: BinaryHeap::new(),
            syncing: Vec::new(),
            waiting: VecDeque::new(),
            ready: Vec::new(),
            nr: 0,
        }
    }

    fn file(&mut self, tag: u64, due: u64, result: Result<(), IoError>, ticket: Option<u64>) {
        self.nr += 1;
        self.timed.push(Reverse(Timed {
            due,
            nr: self.nr,
            tag,
            result,
            value: 0,
            ticket,
        }));
    }

    /// Read every page of the request now; due when the last page is read.
    ///
    /// # Safety
    ///
    /// The iovecs must be valid for writes of `req.len` bytes.
    unsafe fn read(&mut self, req: &IoRequest<'_>, now: u64) {
        let bs = u64::from(self.geometry.block_size);
        let mut ftl = self
            .shared
            .ftl
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut due = now;
        let mut result = Ok(());
        for i in 0..req.len / bs {
            match ftl.read(req.offset / bs + i, &mut self.page, now) {
                Ok(t) => due = due.max(t),
                Err(e) => {
                    result = Err(IoError::from_errno(e.errno()));
                    break;
                }
            }
            // SAFETY: the caller's contract; `i * bs + bs <= req.len`.
            unsafe { scatter(req.iov, i * bs, &self.page) };
            self.shared
                .copied
                .fetch_add(bs, std::sync::atomic::Ordering::Relaxed);
        }
        drop(ftl);
        self.file(req.tag, due, result, None);
    }

    /// Write (or trim) as far as free pages allow.
    ///
    /// # Safety
    ///
    /// The iovecs of a write must be valid for reads of its length.
    unsafe fn advance(&mut self, mut w: Waiting, now: u64) -> Progress {
        let shared = Arc::clone(&self.shared);
        let mut ftl = shared.ftl.lock().unwrap_or_else(PoisonError::into_inner);
        let outcome = if w.kind == IoKind::Write || w.kind == IoKind::WriteFua {
            // SAFETY: the caller's contract.
            unsafe { self.write_pages(&mut ftl, &mut w, now) }
        } else {
            ftl.trim(w.lba, w.pages, now).map(|t| {
                w.due = w.due.max(t);
                w.done = w.pages;
            })
        };
        drop(ftl);
        let result = match outcome {
            Err(FtlError::Wait) => return Progress::Blocked(w),
            Err(e) => Err(IoError::from_errno(e.errno())),
            Ok(()) => Ok(()),
        };
        let durable = matches!(w.kind, IoKind::WriteFua | IoKind::WriteZeroesFua);
        let ticket = (durable && result.is_ok()).then(|| shared.flusher.syncer().request());
        self.nr += 1;
        Progress::Finished(Timed {
            due: w.due,
            nr: self.nr,
            tag: w.tag,
            result,
            value: 0,
            ticket,
        })
    }

    /// # Safety
    ///
    /// As [`advance`](Self::advance).
    unsafe fn write_pages(
        &mut self,
        ftl: &mut Ftl,
        w: &mut Waiting,
        now: u64,
    ) -> Result<(), FtlError> {
        let bs = u64::from(self.geometry.block_size);
        while w.done < w.pages {
            // SAFETY: the caller's contract; `done * bs + bs <= len`.
            unsafe { gather(&w.iov, w.done * bs, &mut self.page) };
            self.shared
                .copied
                .fetch_add(bs, std::sync::atomic::Ordering::Relaxed);
            w.due = w.due.max(ftl.write(w.lba + w.done, &self.page, now)?);
            w.done += 1;
        }
        Ok(())
    }

    /// Retry the writes waiting for space, oldest first.
    fn retry_waiting(&mut self, now: u64) {
        while let Some(w) = self.waiting.pop_front() {
            // SAFETY: the iovecs were valid at submit and stay valid until
            // the completion is returned (the `submit` contract).
            match unsafe { self.advance(w, now) } {
                Progress::Finished(t) => self.timed.push(Reverse(t)),
                Progress::Blocked(w) => {
                    self.waiting.push_front(w);
                    break;
                }
            }
        }
    }

    fn next_due(&self) -> Option<u64> {
        self.timed.peek().map(|Reverse(t)| t.due)
    }
}

impl BackendQueue for FlashQueue {
    unsafe fn submit(&mut self, req: &IoRequest<'_>) -> Result<(), SubmitError> {
        validate(req, self.geometry)?;
        if self.in_flight() >= self.depth {
            return Err(SubmitError::Full);
        }
        let now = self.shared.now();
        let bs = u64::from(self.geometry.block_size);
        match req.kind {
            // SAFETY: the caller's contract (valid, writable iovecs).
            IoKind::Read => unsafe { self.read(req, now) },
            // `validate` refuses zone kinds.
            IoKind::ZoneAppend { .. } | IoKind::Zone { .. } => {
                return Err(SubmitError::Invalid(
                    "zone request on a conventional namespace",
                ))
            }
            IoKind::Flush => {
                let ticket = self.shared.flusher.syncer().request();
                self.syncing.push((ticket, req.tag));
            }
            IoKind::Write
            | IoKind::WriteFua
            | IoKind::WriteZeroes
            | IoKind::WriteZeroesFua
            | IoKind::Deallocate => {
                let w = Waiting {
                    tag: req.tag,
                    kind: req.kind,
                    lba: req.offset / bs,
                    pages: req.len / bs,
                    done: 0,
                    due: now,
                    iov: req.iov.to_vec(),
                };
                if self.waiting.is_empty() {
                    // SAFETY: the caller's contract (valid iovecs).
                    match unsafe { self.advance(w, now) } {
                        Progress::Finished(t) => self.timed.push(Reverse(t)),
                        Progress::Blocked(w) => self.waiting.push_back(w),
                    }
                } else {
                    self.waiting.push_back(w);
                }
            }
        }
        Ok(())
    }

    fn kick(&mut self) -> Result<(), BackendError> {
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        let now = self.shared.now();
        if !self.waiting.is_empty() {
            self.retry_waiting(now);
        }
        while self.next_due().is_some_and(|due| due <= now) {
            let Some(Reverse(t)) = self.timed.pop() else {
                break;
            };
            match t.ticket {
                Some(ticket) => self.syncing.push((ticket, t.tag)),
                None => self.ready.push(Completion {
                    tag: t.tag,
                    result: t.result,
                    value: 0,
                }),
            }
        }
        let syncer = Arc::clone(self.shared.flusher.syncer());
        let ready = &mut self.ready;
        self.syncing
            .retain(|&(ticket, tag)| match syncer.status(ticket) {
                None => true,
                Some(ok) => {
                    ready.push(Completion {
                        tag,
                        result: if ok {
                            Ok(())
                        } else {
                            Err(IoError::from_errno(libc::EIO))
                        },
                        value: 0,
                    });
                    false
                }
            });
        let n = self.ready.len();
        out.append(&mut self.ready);
        n
    }

    fn in_flight(&self) -> usize {
        self.timed.len() + self.syncing.len() + self.waiting.len() + self.ready.len()
    }

    fn drain(&mut self, out: &mut Vec<Completion>, timeout: Duration) -> usize {
        drain_timed(self, out, timeout)
    }

    fn wait_completion(&mut self, timeout: Duration) {
        let wait = match self.next_due() {
            Some(due) if self.syncing.is_empty() && self.waiting.is_empty() => {
                Duration::from_nanos(due.saturating_sub(self.shared.now())).min(timeout)
            }
            // Waiting on the flusher: check back soon.
            _ => timeout.min(Duration::from_micros(100)),
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// `drain` of a queue whose completions come due in time: poll, and sleep
/// until the next is due, until nothing is in flight or `timeout` passed.
pub(super) fn drain_timed(
    q: &mut dyn BackendQueue,
    out: &mut Vec<Completion>,
    timeout: Duration,
) -> usize {
    let deadline = Instant::now() + timeout;
    let mut n = 0;
    loop {
        n += q.poll(out);
        if q.in_flight() == 0 || Instant::now() >= deadline {
            return n;
        }
        q.wait_completion(Duration::from_micros(200));
    }
}
