//! Multipath (`multipath:(PATH|PATH...)?policy=rr|qd`): several paths to
//! one namespace (NVMe/TCP or NVMe/RDMA connections to one subsystem
//! through different listeners). Each request goes down one path, chosen
//! round-robin or by the fewest requests in flight; a request that fails
//! on a path is sent again down another, and the failed path is left out
//! for a second, then tried again (a path that came back serves again).
//! Only when every path failed the request does it fail.
//!
//! A path gives up on a lost connection after its own `retry=MS` (the
//! NVMe over Fabrics spec key, 30 s by default): give the paths a short
//! one (`retry=500`) so that a request moves to another path quickly.

use leapio_backend::{
    validate, Backend, BackendError, BackendQueue, Completion, Features, Geometry, IoError,
    IoRequest, Owner, SubmitError,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a path is picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Each in turn.
    RoundRobin,
    /// The one with the fewest requests in flight (on this queue).
    QueueDepth,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "rr",
            Policy::QueueDepth => "qd",
        }
    }
}

/// The order of preference of an ANA state: optimized first, then
/// non-optimized or not reported, then in transition, then inaccessible.
fn ana_rank(state: Option<u8>) -> u8 {
    use leapio_nvme::log::AnaState;
    match state {
        Some(AnaState::OPTIMIZED) => 0,
        None | Some(AnaState::NON_OPTIMIZED) => 1,
        Some(AnaState::CHANGE) => 2,
        Some(_) => 3,
    }
}

/// How long a failed path is left out before it is tried again.
const PATH_HOLD: Duration = Duration::from_secs(1);

/// What every queue knows of a path.
struct PathState {
    /// Until when it is left out, in ns since `epoch` (0: it is up).
    down_until: AtomicU64,
    /// Requests it failed, and requests it served.
    failures: AtomicU64,
    served: AtomicU64,
}

struct Shared {
    epoch: Instant,
    paths: Vec<PathState>,
}

impl Shared {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn up(&self, i: usize) -> bool {
        self.paths[i].down_until.load(Ordering::Relaxed) <= self.now()
    }

    fn failed(&self, i: usize, what: &str, err: &IoError) {
        let p = &self.paths[i];
        p.failures.fetch_add(1, Ordering::Relaxed);
        let until = self.now() + u64::try_from(PATH_HOLD.as_nanos()).unwrap_or(u64::MAX);
        if p.down_until.swap(until, Ordering::Relaxed) <= self.now() {
            tracing::warn!(
                path = i + 1,
                "multipath: path {what} failed ({}): its requests go down the others",
                std::io::Error::from_raw_os_error(err.errno)
            );
        }
    }
}

/// A namespace reached through several paths.
pub struct Multipath {
    paths: Vec<Arc<dyn Backend>>,
    shared: Arc<Shared>,
    policy: Policy,
    geometry: Geometry,
}

impl Multipath {
    pub fn new(paths: Vec<Arc<dyn Backend>>, policy: Policy) -> Result<Multipath, BackendError> {
        let first = paths
            .first()
            .map(|p| p.geometry())
            .ok_or_else(|| BackendError::Config("multipath needs paths".into()))?;
        for (i, p) in paths.iter().enumerate() {
            if p.geometry() != first {
                return Err(BackendError::Config(format!(
                    "multipath: path {} ({}) shows another namespace than path 1 ({} blocks of {} B against {} of {} B): every path must reach the same one",
                    i + 1,
                    p.describe(),
                    p.geometry().num_blocks,
                    p.geometry().block_size,
                    first.num_blocks,
                    first.block_size
                )));
            }
            if p.zoned().is_some() {
                return Err(BackendError::Config(format!(
                    "multipath: path {} ({}) is zoned",
                    i + 1,
                    p.describe()
                )));
            }
        }
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            paths: paths
                .iter()
                .map(|_| PathState {
                    down_until: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    served: AtomicU64::new(0),
                })
                .collect(),
        });
        Ok(Multipath {
            paths,
            shared,
            policy,
            geometry: first,
        })
    }
}

impl Backend for Multipath {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn features(&self) -> Features {
        let f = self.paths.iter().map(|p| p.features());
        f.fold(
            Features {
                volatile_write_cache: false,
                write_zeroes: true,
                deallocate: true,
            },
            |a, b| Features {
                volatile_write_cache: a.volatile_write_cache || b.volatile_write_cache,
                write_zeroes: a.write_zeroes && b.write_zeroes,
                deallocate: a.deallocate && b.deallocate,
            },
        )
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn BackendQueue>, BackendError> {
        let queues = self
            .paths
            .iter()
            .map(|p| p.open_queue(depth))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Box::new(MultipathQueue {
            paths: self.paths.clone(),
            queues,
            shared: self.shared.clone(),
            policy: self.policy,
            geometry: self.geometry,
            depth: depth as usize,
            next: 0,
            pending: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            got: Vec::new(),
            ready: Vec::new(),
        }))
    }

    fn flush(&self) -> Result<(), BackendError> {
        // Through one path that works is enough: they reach one namespace.
        let mut last = None;
        for p in &self.paths {
            match p.flush() {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| BackendError::Config("no path".into())))
    }

    fn describe(&self) -> String {
        let now = self.shared.now();
        let paths: Vec<String> = self
            .paths
            .iter()
            .zip(&self.shared.paths)
            .map(|(p, s)| {
                let state = if s.down_until.load(Ordering::Relaxed) > now {
                    "failed"
                } else {
                    "up"
                };
                let ana = match p.ana_state() {
                    Some(leapio_nvme::log::AnaState::OPTIMIZED) => ", ANA optimized",
                    Some(leapio_nvme::log::AnaState::NON_OPTIMIZED) => ", ANA non-optimized",
                    Some(leapio_nvme::log::AnaState::INACCESSIBLE) => ", ANA inaccessible",
                    Some(_) => ", ANA other",
                    None => "",
                };
                format!("{} ({state}{ana})", p.describe())
            })
            .collect();
        format!(
            "multipath ({}) of [{}]",
            self.policy.name(),
            paths.join(" | ")
        )
    }

    fn persistent(&self) -> bool {
        self.paths.iter().all(|p| p.persistent())
    }

    fn claim(&self) -> Result<(), BackendError> {
        // A path that cannot be claimed now may come back: one is enough.
        let mut first_err = None;
        let mut any = false;
        for (i, p) in self.paths.iter().enumerate() {
            match p.claim() {
                Ok(()) => any = true,
                Err(e) => {
                    tracing::warn!(path = i + 1, "multipath: {e}");
                    first_err.get_or_insert(e);
                }
            }
        }
        match (any, first_err) {
            (false, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    fn copied_bytes(&self) -> u64 {
        super::children::copied_bytes(&self.paths)
    }

    fn figures(&self) -> Vec<leapio_backend::Figure> {
        let now = self.shared.now();
        let up = self
            .shared
            .paths
            .iter()
            .filter(|s| s.down_until.load(Ordering::Relaxed) <= now)
            .count();
        let sum = |f: fn(&PathState) -> &AtomicU64| {
            self.shared
                .paths
                .iter()
                .map(|s| f(s).load(Ordering::Relaxed))
                .sum::<u64>() as f64
        };
        vec![
            leapio_backend::Figure {
                name: "multipath_paths_up",
                help: "Paths of the namespace that serve requests now.",
                counter: false,
                value: up as f64,
            },
            leapio_backend::Figure {
                name: "multipath_path_failures_total",
                help: "Requests a path failed (each was sent down another).",
                counter: true,
                value: sum(|s| &s.failures),
            },
        ]
    }

    fn owner(&self, who: &Owner<'_>) -> u32 {
        super::children::owner(&self.paths, who)
    }

    fn stale_writes_for(&self) -> Duration {
        super::children::stale_writes_for(&self.paths)
    }

    fn max_io_bytes(&self) -> u64 {
        super::children::max_io_bytes(&self.paths)
    }
}

/// A request in flight: what is needed to send it again down another path.
struct Pending {
    tag: u64,
    kind: leapio_backend::IoKind,
    offset: u64,
    len: u64,
    owner: u32,
    iov: Vec<libc::iovec>,
    path: usize,
    /// Paths tried (bit per path).
    tried: u64,
}

// SAFETY: the iovecs point into the requester's memory, valid until the
// request's completion whatever thread the queue runs on (the `submit`
// contract).
unsafe impl Send for Pending {}

struct MultipathQueue {
    paths: Vec<Arc<dyn Backend>>,
    queues: Vec<Box<dyn BackendQueue>>,
    shared: Arc<Shared>,
    policy: Policy,
    geometry: Geometry,
    depth: usize,
    next: usize,
    pending: Vec<Option<Pending>>,
    free: Vec<usize>,
    in_flight: usize,
    got: Vec<Completion>,
    /// Requests finished outside a poll (none yet: kept for the order of
    /// completions).
    ready: Vec<Completion>,
}

impl MultipathQueue {
    /// A path for a request that has tried `tried`: an up one by the
    /// policy, among those of the best ANA state there is (optimized; then
    /// non-optimized or not reported; inaccessible last); else the untried
    /// one whose hold ends first (a probe).
    fn pick(&mut self, tried: u64) -> Option<usize> {
        let n = self.queues.len();
        let untried = |i: usize| tried & (1 << i) == 0;
        // The untried paths that are up and of the best ANA rank among
        // them, as a mask (no allocation per request).
        let mut best = u8::MAX;
        let mut up = 0u64;
        for i in (0..n).filter(|&i| untried(i) && self.shared.up(i)) {
            let rank = ana_rank(self.paths[i].ana_state());
            if rank < best {
                best = rank;
                up = 0;
            }
            if rank == best {
                up |= 1 << i;
            }
        }
        let candidates = (0..n).filter(|&i| up & (1 << i) != 0);
        if up != 0 {
            return match self.policy {
                Policy::RoundRobin => {
                    self.next = self.next.wrapping_add(1);
                    let k = self.next % up.count_ones() as usize;
                    candidates.clone().nth(k)
                }
                Policy::QueueDepth => candidates.min_by_key(|&i| self.queues[i].in_flight()),
            };
        }
        (0..n)
            .filter(|&i| untried(i))
            .min_by_key(|&i| self.shared.paths[i].down_until.load(Ordering::Relaxed))
    }

    /// Send the request in `slot` down a path it has not tried. Err(true):
    /// every path left was full; Err(false): none is left that takes it.
    fn send(&mut self, slot: usize) -> Result<(), bool> {
        let mut only_full = true;
        loop {
            let Some(tried) = self.pending[slot].as_ref().map(|p| p.tried) else {
                return Err(false);
            };
            let Some(path) = self.pick(tried) else {
                return Err(only_full);
            };
            let Some(p) = self.pending[slot].as_ref() else {
                return Err(false);
            };
            let req = IoRequest {
                tag: slot as u64,
                kind: p.kind,
                offset: p.offset,
                len: p.len,
                iov: &p.iov,
                owner: p.owner,
                journal: None,
            };
            // SAFETY: the iovecs are the requester's, valid until this
            // request's completion, which comes only after this path's.
            let r = unsafe { self.queues[path].submit(&req) };
            let Some(p) = self.pending[slot].as_mut() else {
                return Err(false);
            };
            p.tried |= 1 << path;
            p.path = path;
            match r {
                Ok(()) => return Ok(()),
                // Full: that path's queue is busy; another may not be.
                Err(SubmitError::Full) => {}
                Err(SubmitError::Invalid(why)) => {
                    only_full = false;
                    tracing::warn!(
                        path = path + 1,
                        "multipath: a path refused a request: {why}"
                    );
                }
            }
        }
    }

    fn done(&mut self, c: Completion, out: &mut Vec<Completion>) {
        let Ok(slot) = usize::try_from(c.tag) else {
            return;
        };
        let Some(p) = self.pending.get(slot).and_then(Option::as_ref) else {
            return;
        };
        let path = p.path;
        match c.result {
            Ok(()) => {
                self.shared.paths[path]
                    .served
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.shared.failed(path, "request", &e);
                if self.send(slot).is_ok() {
                    return;
                }
            }
        }
        if let Some(p) = self.pending[slot].take() {
            out.push(Completion {
                tag: p.tag,
                result: c.result,
                value: c.value,
            });
            self.free.push(slot);
            self.in_flight -= 1;
        }
    }
}

impl BackendQueue for MultipathQueue {
    unsafe fn submit(&mut self, req: &IoRequest<'_>) -> Result<(), SubmitError> {
        validate(req, self.geometry)?;
        if self.in_flight >= self.depth {
            return Err(SubmitError::Full);
        }
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.pending.push(None);
                self.pending.len() - 1
            }
        };
        self.pending[slot] = Some(Pending {
            tag: req.tag,
            kind: req.kind,
            offset: req.offset,
            len: req.len,
            owner: req.owner,
            iov: req.iov.to_vec(),
            path: 0,
            tried: 0,
        });
        self.in_flight += 1;
        if let Err(only_full) = self.send(slot) {
            self.pending[slot] = None;
            self.free.push(slot);
            self.in_flight -= 1;
            // Every path full: the caller tries again after a poll; a
            // path that refused the request itself: it is invalid.
            return Err(if only_full {
                SubmitError::Full
            } else {
                SubmitError::Invalid("every path refused the request")
            });
        }
        Ok(())
    }

    fn kick(&mut self) -> Result<(), BackendError> {
        super::children::kick_busy(&mut self.queues)
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        let before = out.len();
        out.append(&mut self.ready);
        let mut got = std::mem::take(&mut self.got);
        got.clear();
        super::children::poll_busy(&mut self.queues, &mut got);
        for c in got.drain(..) {
            self.done(c, out);
        }
        self.got = got;
        out.len() - before
    }

    fn in_flight(&self) -> usize {
        // (those finished during a submit too, until polled)
        self.in_flight + self.ready.len()
    }

    fn held(&self) -> usize {
        self.queues.iter().map(|q| q.held()).sum()
    }

    fn drain(&mut self, out: &mut Vec<Completion>, timeout: Duration) -> usize {
        let before = out.len();
        let deadline = Instant::now() + timeout;
        self.poll(out);
        while self.in_flight > 0 && Instant::now() < deadline {
            let _ = self.kick();
            if self.poll(out) == 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                if let Some(q) = self.queues.iter_mut().find(|q| q.in_flight() > 0) {
                    q.wait_completion(left.min(Duration::from_millis(1)));
                } else {
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        }
        out.len() - before
    }

    fn wait_completion(&mut self, timeout: Duration) {
        if let Some(q) = self.queues.iter_mut().find(|q| q.in_flight() > 0) {
            q.wait_completion(timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RamBackend;
    use leapio_backend::IoKind;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn requests_move_to_a_surviving_path_and_a_returning_path_serves_again() {
        // Two paths to one namespace: one RAM disk behind both.
        let disk: Arc<dyn Backend> = Arc::new(RamBackend::new(1 << 20, 512).unwrap());
        let (b1, b2) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let paths: Vec<Arc<dyn Backend>> = vec![
            Arc::new(crate::services::Flaky {
                max_io: u64::MAX,
                inner: disk.clone(),
                broken: b1.clone(),
                errno: libc::ETIMEDOUT,
            }),
            Arc::new(crate::services::Flaky {
                max_io: u64::MAX,
                inner: disk.clone(),
                broken: b2.clone(),
                errno: libc::ETIMEDOUT,
            }),
        ];
        let m = Multipath::new(paths, Policy::RoundRobin).unwrap();
        let mut q = m.open_queue(8).unwrap();
        let mut data = vec![0x5au8; 4096];
        for i in 0..8u64 {
            crate::services::run_io(q.as_mut(), IoKind::Write, i * 4096, &mut data).unwrap();
        }
        assert_eq!(m.shared.paths[0].served.load(Ordering::Relaxed), 4);
        // Path 1 breaks: nothing fails, everything goes down path 2.
        b1.store(true, Ordering::Relaxed);
        for i in 0..8u64 {
            let mut back = vec![0u8; 4096];
            crate::services::run_io(q.as_mut(), IoKind::Read, i * 4096, &mut back).unwrap();
            assert_eq!(back, data);
        }
        assert!(m.describe().contains("flaky (failed)"), "{}", m.describe());
        assert_eq!(m.figures()[0].value, 1.0);
        // Both broken: the request fails.
        b2.store(true, Ordering::Relaxed);
        assert!(crate::services::run_io(q.as_mut(), IoKind::Read, 0, &mut data).is_err());
        // Path 1 comes back: once its hold ends it serves again.
        b1.store(false, Ordering::Relaxed);
        std::thread::sleep(PATH_HOLD + Duration::from_millis(50));
        let before = m.shared.paths[0].served.load(Ordering::Relaxed);
        crate::services::run_io(q.as_mut(), IoKind::Read, 0, &mut data).unwrap();
        assert!(m.shared.paths[0].served.load(Ordering::Relaxed) > before);
    }

    #[test]
    fn paths_must_reach_the_same_namespace() {
        let a: Arc<dyn Backend> = Arc::new(RamBackend::new(1 << 20, 512).unwrap());
        let b: Arc<dyn Backend> = Arc::new(RamBackend::new(2 << 20, 512).unwrap());
        let e = Multipath::new(vec![a, b], Policy::QueueDepth)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("path 2") && e.contains("same one"), "{e}");
    }
}
