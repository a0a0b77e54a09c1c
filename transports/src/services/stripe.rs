//! RAID-0 (`raid0:`) and concatenation (`concat:`): one address space
//! laid over several children. A request is cut where it crosses a strip
//! (or a child's end) into pieces, each sent to its child with the part of
//! the request's iovecs it covers; the request completes when its last
//! piece does, with the first error any piece met. A Flush goes to every
//! child.

use leapio_backend::{
    validate, Backend, BackendError, BackendQueue, Completion, Features, Geometry, IoError, IoKind,
    IoRequest, Owner, SubmitError,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the bytes of the service's address space are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `strip` bytes on each of `width` children in turn.
    Stripe { strip: u64, width: usize },
    /// Child i holds `[starts[i], starts[i + 1])`.
    Concat { starts: Vec<u64> },
}

/// A part of a request on one child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub child: usize,
    /// Byte offset on the child.
    pub offset: u64,
    /// Byte offset of the piece in the request.
    pub at: u64,
    pub len: u64,
}

impl Layout {
    /// Cut `[offset, offset + len)` into pieces, in order. The range must
    /// be within the service's size.
    pub fn pieces(&self, offset: u64, len: u64, out: &mut Vec<Piece>) {
        out.clear();
        let mut at = 0u64;
        while at < len {
            let pos = offset + at;
            let left = len - at;
            let piece = match self {
                Layout::Stripe { strip, width } => {
                    let n = pos / strip;
                    let w = *width as u64;
                    Piece {
                        child: usize::try_from(n % w).unwrap_or(0),
                        offset: (n / w) * strip + pos % strip,
                        at,
                        len: left.min(strip - pos % strip),
                    }
                }
                Layout::Concat { starts } => {
                    // The last start not above pos.
                    let i = starts.partition_point(|s| *s <= pos).saturating_sub(1);
                    let end = starts.get(i + 1).copied().unwrap_or(u64::MAX);
                    Piece {
                        child: i,
                        offset: pos - starts[i],
                        at,
                        len: left.min(end - pos),
                    }
                }
            };
            at += piece.len;
            out.push(piece);
        }
    }
}

/// A striped or concatenated backend.
pub struct Striped {
    kind: &'static str,
    children: Vec<Arc<dyn Backend>>,
    layout: Layout,
    geometry: Geometry,
}

impl Striped {
    /// RAID-0 over `children` with `strip` bytes per strip: the size is the
    /// smallest child's, in whole strips, times the number of children.
    pub fn stripe(children: Vec<Arc<dyn Backend>>, strip: u64) -> Result<Striped, BackendError> {
        let block_size = same_block_size(&children)?;
        if strip % u64::from(block_size) != 0 {
            return Err(BackendError::Config(format!(
                "raid0: strip {strip} is not a multiple of the children's block size {block_size}"
            )));
        }
        let per_child = children
            .iter()
            .map(|c| c.geometry().size_bytes())
            .min()
            .unwrap_or(0)
            / strip
            * strip;
        if per_child == 0 {
            return Err(BackendError::Config(format!(
                "raid0: a child is smaller than one strip ({strip} bytes)"
            )));
        }
        let width = children.len();
        Ok(Striped {
            kind: "raid0",
            layout: Layout::Stripe { strip, width },
            geometry: Geometry {
                block_size,
                num_blocks: per_child * width as u64 / u64::from(block_size),
            },
            children,
        })
    }

    /// The children one after the other.
    pub fn concat(children: Vec<Arc<dyn Backend>>) -> Result<Striped, BackendError> {
        let block_size = same_block_size(&children)?;
        let mut starts = vec![0u64];
        for c in &children {
            let end = starts[starts.len() - 1].saturating_add(c.geometry().size_bytes());
            starts.push(end);
        }
        let total = starts[starts.len() - 1];
        Ok(Striped {
            kind: "concat",
            layout: Layout::Concat { starts },
            geometry: Geometry {
                block_size,
                num_blocks: total / u64::from(block_size),
            },
            children,
        })
    }
}

pub(crate) fn same_block_size(children: &[Arc<dyn Backend>]) -> Result<u32, BackendError> {
    let first = children
        .first()
        .map(|c| c.geometry().block_size)
        .ok_or_else(|| BackendError::Config("a service needs children".into()))?;
    for (i, c) in children.iter().enumerate() {
        let g = c.geometry();
        if g.block_size != first {
            return Err(BackendError::Config(format!(
                "child {} ({}) has {} B blocks, child 1 has {first} B: every child must have the same",
                i + 1,
                c.describe(),
                g.block_size
            )));
        }
        if c.zoned().is_some() {
            return Err(BackendError::Config(format!(
                "child {} ({}) is zoned: a service takes conventional children",
                i + 1,
                c.describe()
            )));
        }
    }
    Ok(first)
}

impl Backend for Striped {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// What every child can do.
    fn features(&self) -> Features {
        let all = |f: fn(&Features) -> bool| self.children.iter().all(|c| f(&c.features()));
        Features {
            volatile_write_cache: self
                .children
                .iter()
                .any(|c| c.features().volatile_write_cache),
            write_zeroes: all(|f| f.write_zeroes),
            deallocate: all(|f| f.deallocate),
        }
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn BackendQueue>, BackendError> {
        let queues = self
            .children
            .iter()
            .map(|c| c.open_queue(depth))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Box::new(StripedQueue {
            layout: self.layout.clone(),
            geometry: self.geometry,
            queues,
            depth: depth as usize,
            parents: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            pieces: Vec::new(),
            sub: IovScratch(Vec::new()),
            scratch: Vec::new(),
            ready: Vec::new(),
        }))
    }

    fn flush(&self) -> Result<(), BackendError> {
        for c in &self.children {
            c.flush()?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let children: Vec<String> = self.children.iter().map(|c| c.describe()).collect();
        let how = match &self.layout {
            Layout::Stripe { strip, .. } => format!(", {} strips", crate::human_size(*strip)),
            Layout::Concat { .. } => String::new(),
        };
        format!(
            "{} ({}{how}) of [{}]",
            self.kind,
            crate::human_size(self.geometry.size_bytes()),
            children.join(" | ")
        )
    }

    fn persistent(&self) -> bool {
        self.children.iter().all(|c| c.persistent())
    }

    fn claim(&self) -> Result<(), BackendError> {
        for c in &self.children {
            c.claim()?;
        }
        Ok(())
    }

    fn copied_bytes(&self) -> u64 {
        super::children::copied_bytes(&self.children)
    }

    fn owner(&self, who: &Owner<'_>) -> u32 {
        super::children::owner(&self.children, who)
    }

    fn stale_writes_for(&self) -> Duration {
        super::children::stale_writes_for(&self.children)
    }

    fn max_io_bytes(&self) -> u64 {
        super::children::max_io_bytes(&self.children)
    }
}

/// A request being served: its tag, the pieces still out, the first error.
struct Parent {
    tag: u64,
    left: u32,
    result: Result<(), IoError>,
}

struct StripedQueue {
    layout: Layout,
    geometry: Geometry,
    queues: Vec<Box<dyn BackendQueue>>,
    depth: usize,
    /// Requests in flight by slot; a piece's tag is its parent's slot.
    parents: Vec<Option<Parent>>,
    free: Vec<usize>,
    in_flight: usize,
    pieces: Vec<Piece>,
    sub: IovScratch,
    /// The children's completions, as polled.
    scratch: Vec<Completion>,
    /// Requests that finished while another was being submitted.
    ready: Vec<Completion>,
}

impl StripedQueue {
    fn piece_done(&mut self, slot: u64, result: Result<(), IoError>, out: &mut Vec<Completion>) {
        let Ok(i) = usize::try_from(slot) else { return };
        let Some(Some(p)) = self.parents.get_mut(i) else {
            return;
        };
        if p.result.is_ok() {
            p.result = result;
        }
        p.left -= 1;
        if p.left == 0 {
            if let Some(p) = self.parents[i].take() {
                out.push(Completion {
                    tag: p.tag,
                    result: p.result,
                    value: 0,
                });
            }
            self.free.push(i);
            self.in_flight -= 1;
        }
    }

    /// Collect the children's completions into `out`.
    fn collect(&mut self, out: &mut Vec<Completion>) -> usize {
        let before = out.len();
        let mut got = std::mem::take(&mut self.scratch);
        got.clear();
        super::children::poll_busy(&mut self.queues, &mut got);
        for c in got.drain(..) {
            self.piece_done(c.tag, c.result, out);
        }
        self.scratch = got;
        out.len() - before
    }
}

/// Room for a piece's iovecs, kept between requests for its capacity.
#[derive(Default)]
struct IovScratch(Vec<libc::iovec>);

// SAFETY: the vector is empty between calls (`submit` clears it before it
// returns): no pointer in it outlives the call that filled it.
unsafe impl Send for IovScratch {}

/// The iovecs covering bytes `[at, at + len)` of `iov`, into `out`.
fn slice_iov(iov: &[libc::iovec], at: u64, len: u64, out: &mut Vec<libc::iovec>) {
    out.clear();
    let (Ok(at), Ok(len)) = (usize::try_from(at), usize::try_from(len)) else {
        return;
    };
    out.extend(crate::iov::pieces(iov, at, len).map(|(p, n)| libc::iovec {
        iov_base: p.cast(),
        iov_len: n,
    }));
}

impl BackendQueue for StripedQueue {
    unsafe fn submit(&mut self, req: &IoRequest<'_>) -> Result<(), SubmitError> {
        validate(req, self.geometry)?;
        if self.in_flight >= self.depth {
            return Err(SubmitError::Full);
        }
        let pieces = if req.kind == IoKind::Flush {
            // Every child.
            (0..self.queues.len())
                .map(|child| Piece {
                    child,
                    offset: 0,
                    at: 0,
                    len: 0,
                })
                .collect()
        } else {
            let mut p = std::mem::take(&mut self.pieces);
            self.layout.pieces(req.offset, req.len, &mut p);
            p
        };
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.parents.push(None);
                self.parents.len() - 1
            }
        };
        self.parents[slot] = Some(Parent {
            tag: req.tag,
            left: u32::try_from(pieces.len()).unwrap_or(u32::MAX),
            result: Ok(()),
        });
        self.in_flight += 1;
        let mut sub = std::mem::take(&mut self.sub.0);
        let mut ready = std::mem::take(&mut self.ready);
        for p in &pieces {
            if req.kind.has_data() {
                slice_iov(req.iov, p.at, p.len, &mut sub);
            } else {
                sub.clear();
            }
            let child = IoRequest {
                tag: slot as u64,
                kind: req.kind,
                offset: p.offset,
                len: p.len,
                iov: &sub,
                owner: req.owner,
                journal: None,
            };
            let c = p.child;
            // SAFETY: the piece's iovecs are a part of the request's, which
            // the caller keeps valid until this request's completion; that
            // comes only after every piece's.
            let mut r = unsafe { self.queues[c].submit(&child) };
            if matches!(r, Err(SubmitError::Full)) {
                // A child's queue is full although the service's is not
                // (pieces outnumber requests): wait for room in it.
                let deadline = Instant::now() + Duration::from_secs(5);
                let mut got = Vec::new();
                while matches!(r, Err(SubmitError::Full)) && Instant::now() < deadline {
                    let _ = self.queues[c].kick();
                    got.clear();
                    self.queues[c].poll(&mut got);
                    for done in got.drain(..) {
                        self.piece_done(done.tag, done.result, &mut ready);
                    }
                    // SAFETY: as above.
                    r = unsafe { self.queues[c].submit(&child) };
                }
            }
            if r.is_err() {
                // The piece never ran: the request fails with EIO.
                self.piece_done(slot as u64, Err(IoError::from_errno(libc::EIO)), &mut ready);
            }
        }
        sub.clear();
        self.sub = IovScratch(sub);
        self.ready = ready;
        if req.kind != IoKind::Flush {
            self.pieces = pieces;
        }
        Ok(())
    }

    fn kick(&mut self) -> Result<(), BackendError> {
        super::children::kick_busy(&mut self.queues)
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        let before = out.len();
        // Requests that finished during a submit.
        out.append(&mut self.ready);
        self.collect(out);
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
            let left = deadline.saturating_duration_since(Instant::now());
            let mut got = Vec::new();
            for q in &mut self.queues {
                if q.in_flight() > 0 {
                    q.drain(&mut got, left.min(Duration::from_millis(10)));
                }
            }
            for c in got {
                self.piece_done(c.tag, c.result, out);
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

    #[test]
    fn stripes_cut_at_strip_edges_and_go_round_the_children() {
        let l = Layout::Stripe {
            strip: 4096,
            width: 3,
        };
        let mut p = Vec::new();
        l.pieces(4096 * 2 + 512, 4096 * 2, &mut p);
        assert_eq!(
            p,
            [
                Piece {
                    child: 2,
                    offset: 512,
                    at: 0,
                    len: 3584
                },
                Piece {
                    child: 0,
                    offset: 4096,
                    at: 3584,
                    len: 4096
                },
                Piece {
                    child: 1,
                    offset: 4096,
                    at: 7680,
                    len: 512
                },
            ]
        );
        let total: u64 = p.iter().map(|x| x.len).sum();
        assert_eq!(total, 8192);
    }

    #[test]
    fn concat_cuts_at_child_ends() {
        let l = Layout::Concat {
            starts: vec![0, 1000 * 512, 3000 * 512],
        };
        let mut p = Vec::new();
        l.pieces(999 * 512, 3 * 512, &mut p);
        assert_eq!(
            p,
            [
                Piece {
                    child: 0,
                    offset: 999 * 512,
                    at: 0,
                    len: 512
                },
                Piece {
                    child: 1,
                    offset: 0,
                    at: 512,
                    len: 1024
                },
            ]
        );
    }

    /// Every byte of the service maps to exactly one byte of one child:
    /// the map is a bijection onto the children's used space.
    #[test]
    fn every_byte_has_one_place() {
        for l in [
            Layout::Stripe {
                strip: 4096,
                width: 3,
            },
            Layout::Concat {
                starts: vec![0, 8192, 8192 + 12288, 8192 + 12288 + 4096],
            },
        ] {
            let size = 3 * 8192;
            let mut seen = std::collections::HashSet::new();
            let mut p = Vec::new();
            for off in (0..size).step_by(512) {
                l.pieces(off, 512, &mut p);
                assert_eq!(p.len(), 1);
                assert!(seen.insert((p[0].child, p[0].offset)), "{l:?} {off}");
            }
            // Large requests cut the same way as their blocks.
            l.pieces(512, size - 1024, &mut p);
            let mut at = 0;
            for x in &p {
                assert_eq!(x.at, at);
                let mut one = Vec::new();
                l.pieces(512 + x.at, 512, &mut one);
                assert_eq!((one[0].child, one[0].offset), (x.child, x.offset));
                at += x.len;
            }
            assert_eq!(at, size - 1024);
        }
    }

    fn ram(size: u64) -> Arc<dyn Backend> {
        Arc::new(RamBackend::new(size, 512).unwrap())
    }

    #[test]
    fn data_written_across_strips_reads_back_and_lands_on_the_children() {
        let children = vec![ram(64 << 10), ram(64 << 10)];
        let s = Striped::stripe(children.clone(), 4096).unwrap();
        assert_eq!(s.geometry().size_bytes(), 128 << 10);
        let mut q = s.open_queue(8).unwrap();
        let mut data: Vec<u8> = (0..12288u32).map(|i| (i % 251) as u8).collect();
        crate::services::run_io(q.as_mut(), IoKind::Write, 2048, &mut data).unwrap();
        let mut back = vec![0u8; 12288];
        crate::services::run_io(q.as_mut(), IoKind::Read, 2048, &mut back).unwrap();
        assert_eq!(back, data);
        // Bytes 2048..4096 on child 0 at 2048; 4096..8192 on child 1 at 0.
        let mut c1 = children[1].open_queue(1).unwrap();
        let mut got = vec![0u8; 4096];
        crate::services::run_io(c1.as_mut(), IoKind::Read, 0, &mut got).unwrap();
        assert_eq!(got, data[2048..6144]);
        let mut fl = Vec::new();
        crate::services::run_io(q.as_mut(), IoKind::Flush, 0, &mut fl).unwrap();
    }

    #[test]
    fn children_must_agree() {
        let a: Arc<dyn Backend> = Arc::new(RamBackend::new(1 << 20, 512).unwrap());
        let b: Arc<dyn Backend> = Arc::new(RamBackend::new(1 << 20, 4096).unwrap());
        let e = Striped::concat(vec![a.clone(), b])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("child 2") && e.contains("4096 B blocks"), "{e}");
        let e = Striped::stripe(vec![a.clone(), a], 2 << 20)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("smaller than one strip"), "{e}");
    }
}
