//! RAID-1 (`raid1:(A|B|...)?bitmap=PATH[&region=SIZE][&resync-mbps=N]`):
//! every child holds the whole namespace. Writes, Write Zeroes,
//! Deallocate and Flush go to every child that is in sync or rebuilding
//! and complete when all of them did; reads go to one child in sync, in
//! turn per queue, and a read that fails is tried on another child before
//! it fails.
//!
//! A child whose request fails (an error completion, or a submit refused
//! for another reason than a full queue) is marked failed and the mirror
//! goes on degraded, without an error to the guest while a child in sync
//! is left: the last child in sync is never failed (its error goes to the
//! guest). A request a child never completes is left to that child's own
//! timeouts (an NVMe/TCP child's reconnection and I/O timeout).
//!
//! The write-intent bitmap (the file `bitmap=`) has one bit per region
//! (`region=`, 1 MiB by default): while a child is failed, a write's
//! regions are marked and the mark is durable (the bitmap page written
//! and `fdatasync`ed) before the write goes out, once per region until the
//! mark is cleared. While every child is in sync nothing is written to the
//! bitmap on the I/O path. The file also holds each child's state, so a
//! runtime that restarts knows which child was failed or rebuilding and
//! which regions differ.
//!
//! A returning child ([`Mirror::readd`], or a child the header says was
//! failed that opens at start) is rebuilt from the marked regions only, by
//! a background thread with its own queues, at most `resync-mbps` MB/s,
//! while the guest keeps writing: guest writes go to the rebuilding child
//! too (reads do not), and a region whose guest writes were in flight or
//! started while it was copied is copied again. A new or blank child
//! ([`Mirror::rebuild`], a child added to the spec, every child but the
//! first of a new mirror) is rebuilt in full.

use arc_swap::ArcSwap;
use leapio_backend::{
    validate, Backend, BackendError, BackendQueue, Completion, Features, Figure, Geometry, IoError,
    IoKind, IoRequest, Owner, ServiceControl, SubmitError,
};
use memmap2::MmapMut;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default bytes per bitmap bit.
pub const DEFAULT_REGION: u64 = 1 << 20;
/// Smallest region.
pub const MIN_REGION: u64 = 64 << 10;
/// Largest region.
pub const MAX_REGION: u64 = 1 << 30;
/// Default resync rate limit, MB/s.
pub const DEFAULT_RESYNC_MBPS: u64 = 100;

const MAGIC: &[u8; 8] = b"LEAPIOR1";
const VERSION: u32 = 1;
/// Two header slots of one page each, written in turn (the newest valid
/// one wins), then the bits.
const PAGE: u64 = 4096;
const BITS_AT: u64 = 2 * PAGE;
/// Largest piece of a region the resync moves in one request.
const COPY_CHUNK: u64 = 1 << 20;

/// What a child is to the mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildState {
    /// Holds everything: writes and reads go to it.
    InSync,
    /// Out: no I/O goes to it; the bitmap records what it misses.
    Failed,
    /// Coming back: writes go to it, reads do not, the resync copies the
    /// marked regions to it.
    Rebuilding,
}

impl ChildState {
    fn code(self) -> u8 {
        match self {
            ChildState::InSync => 0,
            ChildState::Failed => 1,
            ChildState::Rebuilding => 2,
        }
    }

    fn of(code: u64) -> ChildState {
        match code {
            1 => ChildState::Failed,
            2 => ChildState::Rebuilding,
            _ => ChildState::InSync,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ChildState::InSync => "in-sync",
            ChildState::Failed => "failed",
            ChildState::Rebuilding => "rebuilding",
        }
    }
}

fn ix(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The bitmap file and its copy in memory.
struct Bitmap {
    path: PathBuf,
    /// None until the mirror is claimed.
    file: Option<File>,
    bits: Vec<u8>,
    dirty: u64,
    generation: u64,
}

/// Where a failure's regions are.
#[derive(Clone, Copy, Debug)]
enum Mark {
    None,
    Range(u64, u64),
    All,
}

impl Bitmap {
    /// Set bit `r`; whether it was clear.
    fn set(&mut self, r: u64) -> bool {
        let Some(b) = self.bits.get_mut(ix(r / 8)) else {
            return false;
        };
        let m = 1u8 << (r % 8);
        if *b & m != 0 {
            return false;
        }
        *b |= m;
        self.dirty += 1;
        true
    }

    fn clear(&mut self, r: u64) -> bool {
        let Some(b) = self.bits.get_mut(ix(r / 8)) else {
            return false;
        };
        let m = 1u8 << (r % 8);
        if *b & m == 0 {
            return false;
        }
        *b &= !m;
        self.dirty -= 1;
        true
    }

    fn file(&self) -> std::io::Result<&File> {
        self.file
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the mirror is not claimed yet"))
    }

    /// Write the page holding bit `r` (not synced).
    fn write_page(&self, r: u64) -> std::io::Result<()> {
        let page = ix(PAGE);
        let at = ix(r / 8) / page * page;
        let end = (at + page).min(self.bits.len());
        self.file()?
            .write_all_at(&self.bits[at..end], BITS_AT + at as u64)
    }

    fn write_all_bits(&self) -> std::io::Result<()> {
        self.file()?.write_all_at(&self.bits, BITS_AT)
    }

    /// Write a new header (the next generation, in the other slot; not
    /// synced).
    fn write_header(
        &mut self,
        region: u64,
        size: u64,
        states: &[ChildState],
    ) -> std::io::Result<()> {
        self.generation += 1;
        let h = header_bytes(region, size, self.regions(), self.generation, states);
        let slot = (self.generation % 2) * PAGE;
        self.file()?.write_all_at(&h, slot)
    }

    fn regions(&self) -> u64 {
        self.bits.len() as u64 * 8
    }

    fn sync(&self) -> std::io::Result<()> {
        self.file()?.sync_data()
    }

    fn set_bits(&self) -> Vec<u64> {
        let mut v = Vec::new();
        for (i, b) in self.bits.iter().enumerate() {
            if *b != 0 {
                for k in 0..8u64 {
                    if b & (1 << k) != 0 {
                        v.push(i as u64 * 8 + k);
                    }
                }
            }
        }
        v
    }
}

fn header_bytes(
    region: u64,
    size: u64,
    regions: u64,
    generation: u64,
    states: &[ChildState],
) -> Vec<u8> {
    let mut h = vec![0u8; ix(PAGE)];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    let n = u32::try_from(states.len()).unwrap_or(u32::MAX);
    h[12..16].copy_from_slice(&n.to_le_bytes());
    h[16..24].copy_from_slice(&region.to_le_bytes());
    h[24..32].copy_from_slice(&regions.to_le_bytes());
    h[32..40].copy_from_slice(&generation.to_le_bytes());
    h[40..48].copy_from_slice(&size.to_le_bytes());
    for (i, s) in states.iter().enumerate() {
        h[64 + i] = s.code();
    }
    let crc = crc32c::crc32c(&h[..ix(PAGE) - 4]);
    h[ix(PAGE) - 4..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A header read back.
struct Header {
    children: usize,
    region: u64,
    regions: u64,
    generation: u64,
    size: u64,
    states: Vec<ChildState>,
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn parse_header(h: &[u8]) -> Option<Header> {
    if h.len() < ix(PAGE) || &h[..8] != MAGIC {
        return None;
    }
    let p = ix(PAGE);
    let crc = u32::from_le_bytes([h[p - 4], h[p - 3], h[p - 2], h[p - 1]]);
    if crc32c::crc32c(&h[..p - 4]) != crc {
        return None;
    }
    if u32::from_le_bytes([h[8], h[9], h[10], h[11]]) != VERSION {
        return None;
    }
    let children = ix(u64::from(u32::from_le_bytes([h[12], h[13], h[14], h[15]])));
    if children > super::MAX_CHILDREN {
        return None;
    }
    Some(Header {
        children,
        region: le64(&h[16..]),
        regions: le64(&h[24..]),
        generation: le64(&h[32..]),
        size: le64(&h[40..]),
        states: h[64..64 + children]
            .iter()
            .map(|c| ChildState::of(u64::from(*c)))
            .collect(),
    })
}

/// What the mirror's queues and its resync thread share.
struct Shared {
    /// The children, replaced whole when the operator replaces one.
    children: ArcSwap<Vec<Arc<dyn Backend>>>,
    /// How many (fixed).
    n: usize,
    /// Per child: the times it was replaced; a queue that saw fewer opens
    /// one on the new child before it sends to it.
    swaps: Box<[AtomicU64]>,
    /// Replacements of any child (one load tells a queue nothing changed).
    swap_epoch: AtomicU64,
    geometry: Geometry,
    region: u64,
    regions: u64,
    /// Two bits per child: its [`ChildState`]; changed under the bitmap lock.
    states: AtomicU64,
    /// Per region: writes started (high 32 bits) and in flight (low 32).
    writes: Box<[AtomicU64]>,
    bitmap: Mutex<Bitmap>,
    /// The resync's limit, MB/s (the spec's; the operator may change it).
    resync_mbps: AtomicU64,
    resync_bytes: AtomicU64,
    resync_rate: AtomicU64,
    /// Regions the resync copied since the mirror was opened.
    copied_regions: AtomicU64,
    /// The resync thread runs (changed under this lock).
    running: Mutex<bool>,
    stop: AtomicBool,
    /// Tests: the resync thread stops dead after this many regions.
    crash_after: AtomicU64,
    /// Writes that failed on the last child in sync but may have reached
    /// rebuilding children (their regions marked): a resync pass that saw
    /// one start does not end in sync.
    diverged: AtomicU64,
    /// Per child: the times it became rebuilding (under the bitmap lock).
    /// A resync pass copies only for the rebuilds it started with: a child
    /// failed and re-added behind it missed writes its list does not hold.
    rebuilds: Box<[AtomicU64]>,
}

const STARTED: u64 = 1 << 32;

impl Shared {
    fn children(&self) -> Arc<Vec<Arc<dyn Backend>>> {
        self.children.load_full()
    }

    fn state(&self, c: usize) -> ChildState {
        state_in(self.states.load(Ordering::Acquire), c)
    }

    fn states(&self) -> Vec<ChildState> {
        let w = self.states.load(Ordering::Acquire);
        (0..self.n).map(|c| state_in(w, c)).collect()
    }

    /// Under the bitmap lock.
    fn set_state(&self, c: usize, s: ChildState) {
        let w = self.states.load(Ordering::Acquire);
        let shift = 2 * c;
        let w = (w & !(3 << shift)) | (u64::from(s.code()) << shift);
        self.states.store(w, Ordering::Release);
    }

    fn persist_header(&self, bm: &mut Bitmap) -> std::io::Result<()> {
        bm.write_header(self.region, self.geometry.size_bytes(), &self.states())
    }

    fn region_range(&self, offset: u64, len: u64) -> std::ops::RangeInclusive<u64> {
        let shift = self.region.trailing_zeros();
        (offset >> shift)..=((offset + len.max(1) - 1) >> shift)
    }

    fn start_write(&self, offset: u64, len: u64) {
        for r in self.region_range(offset, len) {
            if let Some(w) = self.writes.get(ix(r)) {
                w.fetch_add(STARTED + 1, Ordering::AcqRel);
            }
        }
    }

    fn end_write(&self, offset: u64, len: u64) {
        for r in self.region_range(offset, len) {
            if let Some(w) = self.writes.get(ix(r)) {
                w.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// The children a write goes to while some child is not in sync: with
    /// a child failed, the write's regions are marked (durably) first.
    fn route_write(&self, offset: u64, len: u64) -> Result<u64, IoError> {
        let mut bm = lock(&self.bitmap);
        let w = self.states.load(Ordering::Acquire);
        let mut mask = 0u64;
        let mut failed = false;
        for c in 0..self.n {
            match state_in(w, c) {
                ChildState::Failed => failed = true,
                _ => mask |= 1 << c,
            }
        }
        if failed {
            self.mark(&mut bm, Mark::Range(offset, len))
                .map_err(|e| self.bitmap_error(&bm, &e))?;
        }
        Ok(mask)
    }

    fn bitmap_error(&self, bm: &Bitmap, e: &std::io::Error) -> IoError {
        tracing::error!(bitmap = %bm.path.display(), error = %e, "raid1: cannot write the bitmap");
        IoError::from_errno(e.raw_os_error().unwrap_or(libc::EIO))
    }

    /// Set the bits of `mark` and make them durable (nothing is written
    /// when they were set already).
    fn mark(&self, bm: &mut Bitmap, mark: Mark) -> std::io::Result<()> {
        let mut pages = Vec::new();
        match mark {
            Mark::None => return Ok(()),
            Mark::Range(offset, len) => {
                for r in self.region_range(offset, len) {
                    if bm.set(r) {
                        let p = r / 8 / PAGE;
                        if pages.last() != Some(&p) {
                            pages.push(p);
                        }
                    }
                }
                for p in &pages {
                    bm.write_page(p * PAGE * 8)?;
                }
            }
            Mark::All => {
                for r in 0..self.regions {
                    bm.set(r);
                }
                bm.write_all_bits()?;
                pages.push(0);
            }
        }
        if !pages.is_empty() {
            bm.sync()?;
        }
        Ok(())
    }

    /// Child `c` failed: mark it failed (and the regions of `mark`), unless
    /// it is the last child in sync. Whether it was (the failure is then
    /// hidden from the guest).
    fn fail(&self, c: usize, mark: Mark, why: &str) -> bool {
        let mut bm = lock(&self.bitmap);
        let states = self.states();
        let Some(&was) = states.get(c) else {
            return false;
        };
        if was == ChildState::InSync
            && !states
                .iter()
                .enumerate()
                .any(|(i, s)| i != c && *s == ChildState::InSync)
        {
            // The guest gets the error; what the other children got of the
            // request is copied over again.
            if !matches!(mark, Mark::None) {
                self.diverged.fetch_add(1, Ordering::AcqRel);
            }
            if let Err(e) = self.mark(&mut bm, mark) {
                self.bitmap_error(&bm, &e);
            }
            return false;
        }
        self.set_state(c, ChildState::Failed);
        let r = self.mark(&mut bm, mark).and_then(|()| {
            if was == ChildState::Failed {
                Ok(())
            } else {
                self.persist_header(&mut bm).and_then(|()| bm.sync())
            }
        });
        if let Err(e) = r {
            self.bitmap_error(&bm, &e);
            // Without the record, the child must not be left behind: the
            // guest gets the error. The child stays marked failed in
            // memory (no I/O goes to it).
            return false;
        }
        if was != ChildState::Failed {
            tracing::warn!(
                child = c,
                backend = %self.children()[c].describe(),
                why,
                "raid1: child failed, going on degraded"
            );
        }
        true
    }

    /// The next child in sync for a read, from `rr` on, not in `tried`.
    fn pick_read(&self, rr: &mut usize, tried: u64) -> Option<usize> {
        let w = self.states.load(Ordering::Acquire);
        let n = self.n;
        for k in 0..n {
            let c = (*rr + k) % n;
            if tried & (1 << c) == 0 && state_in(w, c) == ChildState::InSync {
                *rr = c + 1;
                return Some(c);
            }
        }
        None
    }

    fn in_state(&self, s: ChildState) -> u64 {
        let w = self.states.load(Ordering::Acquire);
        (0..self.n)
            .filter(|c| state_in(w, *c) == s)
            .fold(0, |m, c| m | (1 << c))
    }
}

fn state_in(w: u64, c: usize) -> ChildState {
    ChildState::of((w >> (2 * c)) & 3)
}

/// A mirror over 2..N children.
pub struct Mirror {
    shared: Arc<Shared>,
    claimed: Mutex<bool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A child as [`Mirror::status`] shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildStatus {
    pub index: usize,
    pub state: ChildState,
    pub backend: String,
}

/// What [`Mirror::status`] says.
#[derive(Clone, Debug, PartialEq)]
pub struct MirrorStatus {
    pub size: u64,
    pub region: u64,
    pub bitmap: PathBuf,
    pub children: Vec<ChildStatus>,
    pub dirty_regions: u64,
    pub resync_running: bool,
    pub resync_bytes: u64,
    pub resync_remaining_bytes: u64,
    /// Bytes per second of the current or last resync pass.
    pub resync_rate: u64,
    pub resync_limit_mbps: u64,
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if u32::from(c) < 0x20 => o.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

impl MirrorStatus {
    /// As a JSON object.
    pub fn to_json(&self) -> String {
        let children: Vec<String> = self
            .children
            .iter()
            .map(|c| {
                format!(
                    "{{\"index\":{},\"state\":\"{}\",\"backend\":{}}}",
                    c.index,
                    c.state.name(),
                    json_str(&c.backend)
                )
            })
            .collect();
        format!(
            "{{\"service\":\"raid1\",\"size\":{},\"region\":{},\"bitmap\":{},\"children\":[{}],\"dirty_regions\":{},\"resync\":{{\"running\":{},\"bytes\":{},\"remaining_bytes\":{},\"rate_bytes_per_s\":{},\"limit_mbps\":{}}}}}",
            self.size,
            self.region,
            json_str(&self.bitmap.display().to_string()),
            children.join(","),
            self.dirty_regions,
            self.resync_running,
            self.resync_bytes,
            self.resync_remaining_bytes,
            self.resync_rate,
            self.resync_limit_mbps
        )
    }
}

impl Mirror {
    /// A mirror of `children` (unclaimed: the bitmap is read or made at
    /// [`Backend::claim`]). Its size is the smallest child's.
    pub fn new(
        children: Vec<Arc<dyn Backend>>,
        bitmap: &Path,
        region: u64,
        resync_mbps: u64,
    ) -> Result<Mirror, BackendError> {
        if children.len() < 2 || children.len() > super::MAX_CHILDREN {
            return Err(BackendError::Config(format!(
                "raid1: {} children (2 to {})",
                children.len(),
                super::MAX_CHILDREN
            )));
        }
        if !region.is_power_of_two() || !(MIN_REGION..=MAX_REGION).contains(&region) {
            return Err(BackendError::Config(format!(
                "raid1: region {region} is not a power of two from 64 KiB to 1 GiB"
            )));
        }
        let block_size = super::stripe::same_block_size(&children)?;
        let size = children
            .iter()
            .map(|c| c.geometry().size_bytes())
            .min()
            .unwrap_or(0);
        let num_blocks = size / u64::from(block_size);
        if num_blocks == 0 {
            return Err(BackendError::Config("raid1: a child is empty".into()));
        }
        let size = num_blocks * u64::from(block_size);
        let regions = size.div_ceil(region);
        let bytes = regions.div_ceil(8).next_multiple_of(PAGE);
        let bits = vec![
            0u8;
            usize::try_from(bytes).map_err(|_| {
                BackendError::Config(format!("raid1: {regions} regions are too many"))
            })?
        ];
        let writes = (0..regions).map(|_| AtomicU64::new(0)).collect();
        let n = children.len();
        Ok(Mirror {
            shared: Arc::new(Shared {
                children: ArcSwap::from_pointee(children),
                n,
                swaps: (0..n).map(|_| AtomicU64::new(0)).collect(),
                swap_epoch: AtomicU64::new(0),
                geometry: Geometry {
                    block_size,
                    num_blocks,
                },
                region,
                regions,
                states: AtomicU64::new(0),
                writes,
                bitmap: Mutex::new(Bitmap {
                    path: bitmap.to_path_buf(),
                    file: None,
                    bits,
                    dirty: 0,
                    generation: 0,
                }),
                resync_mbps: AtomicU64::new(resync_mbps),
                resync_bytes: AtomicU64::new(0),
                resync_rate: AtomicU64::new(0),
                copied_regions: AtomicU64::new(0),
                running: Mutex::new(false),
                stop: AtomicBool::new(false),
                crash_after: AtomicU64::new(u64::MAX),
                diverged: AtomicU64::new(0),
                rebuilds: (0..n).map(|_| AtomicU64::new(0)).collect(),
            }),
            claimed: Mutex::new(false),
            thread: Mutex::new(None),
        })
    }

    /// The children's states.
    pub fn states(&self) -> Vec<ChildState> {
        self.shared.states()
    }

    /// Regions marked in the bitmap.
    pub fn dirty_regions(&self) -> u64 {
        lock(&self.shared.bitmap).dirty
    }

    /// Regions the resync copied since the mirror was opened.
    pub fn copied_regions(&self) -> u64 {
        self.shared.copied_regions.load(Ordering::Relaxed)
    }

    /// Children, states, resync progress and rate.
    pub fn status(&self) -> MirrorStatus {
        let sh = &self.shared;
        let bm = lock(&sh.bitmap);
        let states = sh.states();
        let rebuilding = states.contains(&ChildState::Rebuilding);
        MirrorStatus {
            size: sh.geometry.size_bytes(),
            region: sh.region,
            bitmap: bm.path.clone(),
            children: states
                .iter()
                .enumerate()
                .map(|(index, state)| ChildStatus {
                    index,
                    state: *state,
                    backend: sh.children()[index].describe(),
                })
                .collect(),
            dirty_regions: bm.dirty,
            resync_running: *lock(&sh.running),
            resync_bytes: sh.resync_bytes.load(Ordering::Relaxed),
            resync_remaining_bytes: if rebuilding {
                bm.dirty.saturating_mul(sh.region)
            } else {
                0
            },
            resync_rate: sh.resync_rate.load(Ordering::Relaxed),
            resync_limit_mbps: sh.resync_mbps.load(Ordering::Relaxed),
        }
    }

    /// Take child `child` out (as if it had failed). The last child in
    /// sync cannot be.
    pub fn fail(&self, child: usize) -> Result<(), String> {
        self.check_child(child)?;
        self.check_claimed()?;
        if self.shared.state(child) == ChildState::Failed {
            return Err(format!("child {child} is failed already"));
        }
        if self
            .shared
            .fail(child, Mark::None, "failed by the operator")
        {
            Ok(())
        } else {
            Err(format!(
                "child {child} is the last one in sync (or the bitmap cannot be written)"
            ))
        }
    }

    /// Limit the resync to `mbps` MB/s from now on (a pass running takes
    /// it at its next region).
    pub fn set_resync_mbps(&self, mbps: u64) -> Result<(), String> {
        if mbps == 0 {
            return Err("a resync limit of 0 MB/s would never end; fail the child instead".into());
        }
        self.shared.resync_mbps.store(mbps, Ordering::Relaxed);
        Ok(())
    }

    /// Bring failed child `child` back: it is claimed again, then rebuilt
    /// from the regions marked while it was out.
    pub fn readd(&self, child: usize) -> Result<(), String> {
        self.check_child(child)?;
        self.check_claimed()?;
        if self.shared.state(child) != ChildState::Failed {
            return Err(format!(
                "child {child} is {}: only a failed child is re-added",
                self.shared.state(child).name()
            ));
        }
        self.shared.children()[child]
            .claim()
            .map_err(|e| format!("child {child}: {e}"))?;
        self.set_rebuilding(child, false)?;
        self.start_resync();
        Ok(())
    }

    /// Rebuild child `child` in full (a new or blank disk in its place).
    pub fn rebuild(&self, child: usize) -> Result<(), String> {
        self.check_child(child)?;
        self.check_claimed()?;
        let sh = &self.shared;
        if sh.state(child) == ChildState::InSync && sh.in_state(ChildState::InSync).count_ones() < 2
        {
            return Err(format!("child {child} is the last one in sync"));
        }
        sh.children()[child]
            .claim()
            .map_err(|e| format!("child {child}: {e}"))?;
        self.set_rebuilding(child, true)?;
        self.start_resync();
        Ok(())
    }

    /// Put `new` in the place of child `child` (a new disk for a dead one)
    /// and rebuild it in full. The old child gets no more requests; those
    /// it has in flight complete. The namespace's spec still names the old
    /// child: a restart with it rebuilds that one in full again, so the
    /// operator puts the new one in the spec.
    pub fn replace(&self, child: usize, new: Arc<dyn Backend>) -> Result<(), String> {
        self.check_child(child)?;
        self.check_claimed()?;
        let sh = &self.shared;
        if sh.state(child) == ChildState::InSync && sh.in_state(ChildState::InSync).count_ones() < 2
        {
            return Err(format!("child {child} is the last one in sync"));
        }
        let g = new.geometry();
        if g.block_size != sh.geometry.block_size {
            return Err(format!(
                "{} has {} B blocks, the mirror {} B",
                new.describe(),
                g.block_size,
                sh.geometry.block_size
            ));
        }
        if g.size_bytes() < sh.geometry.size_bytes() {
            return Err(format!(
                "{} holds {}, the mirror needs {}",
                new.describe(),
                crate::human_size(g.size_bytes()),
                crate::human_size(sh.geometry.size_bytes())
            ));
        }
        if new.zoned().is_some() {
            return Err(format!(
                "{} is zoned: a mirror's children are not",
                new.describe()
            ));
        }
        new.claim()
            .map_err(|e| format!("{}: {e}", new.describe()))?;
        let old = {
            let bm = lock(&sh.bitmap);
            // Out first: nothing new goes to the old child.
            sh.set_state(child, ChildState::Failed);
            let mut children = Vec::clone(&sh.children());
            let old = std::mem::replace(&mut children[child], new);
            sh.children.store(Arc::new(children));
            sh.swaps[child].fetch_add(1, Ordering::AcqRel);
            sh.swap_epoch.fetch_add(1, Ordering::AcqRel);
            drop(bm);
            old
        };
        tracing::warn!(
            child,
            old = %old.describe(),
            new = %sh.children()[child].describe(),
            "raid1: child replaced"
        );
        self.set_rebuilding(child, true)?;
        self.start_resync();
        Ok(())
    }

    fn set_rebuilding(&self, child: usize, full: bool) -> Result<(), String> {
        let sh = &self.shared;
        let mut bm = lock(&sh.bitmap);
        sh.set_state(child, ChildState::Rebuilding);
        sh.rebuilds[child].fetch_add(1, Ordering::AcqRel);
        let r = sh
            .mark(&mut bm, if full { Mark::All } else { Mark::None })
            .and_then(|()| sh.persist_header(&mut bm))
            .and_then(|()| bm.sync());
        if let Err(e) = r {
            sh.set_state(child, ChildState::Failed);
            return Err(format!("bitmap {}: {e}", bm.path.display()));
        }
        tracing::info!(
            child,
            backend = %sh.children()[child].describe(),
            dirty = bm.dirty,
            "raid1: child rebuilding"
        );
        Ok(())
    }

    fn check_child(&self, child: usize) -> Result<(), String> {
        if child >= self.shared.n {
            return Err(format!(
                "no child {child} (children are 0 to {})",
                self.shared.n - 1
            ));
        }
        Ok(())
    }

    fn check_claimed(&self) -> Result<(), String> {
        if *lock(&self.claimed) {
            Ok(())
        } else {
            Err("the mirror is not started yet".into())
        }
    }

    /// Start the resync thread unless it runs (it sees new rebuilding
    /// children before it ends).
    fn start_resync(&self) {
        let mut running = lock(&self.shared.running);
        if *running || self.shared.in_state(ChildState::Rebuilding) == 0 {
            return;
        }
        *running = true;
        let sh = Arc::clone(&self.shared);
        let mut t = lock(&self.thread);
        if let Some(old) = t.take() {
            let _ = old.join();
        }
        match std::thread::Builder::new()
            .name("raid1-resync".into())
            .spawn(move || resync(&sh))
        {
            Ok(h) => *t = Some(h),
            Err(e) => {
                *running = false;
                tracing::error!(error = %e, "raid1: cannot start the resync thread");
            }
        }
    }

    /// Wait until no child is rebuilding (tests, tools).
    pub fn wait_resync(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !*lock(&self.shared.running) {
                return self.shared.in_state(ChildState::Rebuilding) == 0;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    /// Read the bitmap file, or make it: the states it holds, checked
    /// against this mirror.
    fn load_bitmap(&self) -> Result<Vec<ChildState>, BackendError> {
        let sh = &self.shared;
        let mut bm = lock(&sh.bitmap);
        let path = bm.path.clone();
        let io = |what, source| BackendError::Io {
            what,
            path: path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("cannot open the raid1 bitmap", e))?;
        let len = file
            .metadata()
            .map_err(|e| io("cannot stat the raid1 bitmap", e))?
            .len();
        let n = sh.n;
        let size = sh.geometry.size_bytes();
        let bad =
            |why: String| BackendError::Config(format!("raid1 bitmap {}: {why}", path.display()));
        let mut states;
        if len == 0 {
            // A new mirror: the first child is the source of the others.
            states = vec![ChildState::Rebuilding; n];
            states[0] = ChildState::InSync;
            bm.file = Some(file);
            for r in 0..sh.regions {
                bm.set(r);
            }
            bm.write_all_bits()
                .map_err(|e| io("cannot write the raid1 bitmap", e))?;
            tracing::info!(bitmap = %path.display(), "raid1: new mirror, the other children are copied from the first");
        } else {
            let mut slots = vec![0u8; ix(BITS_AT)];
            let got = file
                .read_at(&mut slots, 0)
                .map_err(|e| io("cannot read the raid1 bitmap", e))?;
            slots.truncate(got);
            let h = [slots.get(..ix(PAGE)), slots.get(ix(PAGE)..)]
                .into_iter()
                .flatten()
                .filter_map(parse_header)
                .max_by_key(|h| h.generation)
                .ok_or_else(|| {
                    bad("not a LeapIO raid1 bitmap (no valid header); not overwriting it".into())
                })?;
            if h.region != sh.region {
                return Err(bad(format!(
                    "made with {} regions, the spec says {} (give region={} or a new bitmap file)",
                    crate::human_size(h.region),
                    crate::human_size(sh.region),
                    crate::config::format_size(h.region)
                )));
            }
            if h.size != size || h.regions != bm.regions() {
                return Err(bad(format!(
                    "made for a mirror of {} bytes, this one has {size}",
                    h.size
                )));
            }
            if h.children > n {
                return Err(bad(format!(
                    "made for {} children, the spec names {n}: a child cannot be taken out of the spec",
                    h.children
                )));
            }
            let mut bits = std::mem::take(&mut bm.bits);
            file.read_exact_at(&mut bits, BITS_AT)
                .map_err(|e| io("cannot read the raid1 bitmap's bits", e))?;
            bm.dirty = bits.iter().map(|b| u64::from(b.count_ones())).sum();
            bm.bits = bits;
            bm.generation = h.generation;
            bm.file = Some(file);
            states = h.states;
            if !states.contains(&ChildState::InSync) {
                return Err(bad("no child is in sync: no copy holds all the data".into()));
            }
            if states.len() < n {
                // Children added to the spec are rebuilt in full.
                states.resize(n, ChildState::Rebuilding);
                for r in 0..sh.regions {
                    bm.set(r);
                }
                bm.write_all_bits()
                    .map_err(|e| io("cannot write the raid1 bitmap", e))?;
            }
        }
        for (c, s) in states.iter().enumerate() {
            sh.set_state(c, *s);
        }
        sh.persist_header(&mut bm)
            .and_then(|()| bm.sync())
            .map_err(|e| io("cannot write the raid1 bitmap", e))?;
        Ok(states)
    }

    /// Tests: the resync thread stops dead after `regions` more regions,
    /// as if the process had been killed.
    #[cfg(test)]
    fn crash_resync_after(&self, regions: u64) {
        self.shared.crash_after.store(
            self.shared.copied_regions.load(Ordering::Relaxed) + regions,
            Ordering::Relaxed,
        );
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

/// One request on a queue of the resync, waited for.
fn sync_io(
    q: &mut dyn BackendQueue,
    kind: IoKind,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), IoError> {
    let iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    let req = IoRequest {
        tag: 0,
        kind,
        offset,
        len: buf.len() as u64,
        iov: &iov,
        owner: 0,
        journal: None,
    };
    // SAFETY: `buf` outlives the request: it is drained below (a request
    // that does not finish in time is left to the queue's drop, which
    // waits for it).
    unsafe { q.submit(&req) }.map_err(|_| IoError::from_errno(libc::EIO))?;
    let _ = q.kick();
    let mut out = Vec::new();
    q.drain(&mut out, Duration::from_secs(30));
    match out.first() {
        Some(c) => c.result,
        None => Err(IoError::from_errno(libc::ETIMEDOUT)),
    }
}

/// The resync thread: passes over the marked regions until no child is
/// rebuilding.
fn resync(sh: &Arc<Shared>) {
    loop {
        if sh.stop.load(Ordering::Relaxed) {
            *lock(&sh.running) = false;
            return;
        }
        let targets = sh.in_state(ChildState::Rebuilding);
        let source = (0..sh.n).find(|c| sh.state(*c) == ChildState::InSync);
        let (true, Some(source)) = (targets != 0, source) else {
            let mut running = lock(&sh.running);
            if sh.in_state(ChildState::Rebuilding) == 0 || source.is_none() {
                *running = false;
                return;
            }
            continue;
        };
        if let Err(e) = resync_pass(sh, source, targets) {
            tracing::warn!(error = %e, "raid1: resync pass stopped, starting over");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn resync_pass(sh: &Shared, source: usize, targets: u64) -> Result<(), String> {
    // Declared before the queues: dropped after them (a queue's drop
    // waits for what it still has in flight into the buffer).
    // No larger than the source or a target takes (a remote's MDTS), in
    // whole blocks.
    let bs = u64::from(sh.geometry.block_size);
    let most = super::children::max_io_bytes(&sh.children());
    let chunk = sh.region.min(COPY_CHUNK).min(most / bs * bs).max(bs);
    let mut buf = MmapMut::map_anon(ix(chunk)).map_err(|e| e.to_string())?;
    let open = |c: usize| sh.children()[c].open_queue(2);
    let mut src = open(source).map_err(|e| format!("child {source}: {e}"))?;
    let mut tq: Vec<(usize, Box<dyn BackendQueue>)> = Vec::new();
    for t in (0..sh.n).filter(|t| targets & (1 << t) != 0) {
        match open(t) {
            Ok(q) => tq.push((t, q)),
            Err(e) => {
                sh.fail(t, Mark::None, &e.to_string());
            }
        }
    }
    let (mut list, diverged, rebuilds): (VecDeque<u64>, u64, Vec<u64>) = {
        let bm = lock(&sh.bitmap);
        (
            bm.set_bits().into(),
            sh.diverged.load(Ordering::Acquire),
            sh.rebuilds
                .iter()
                .map(|r| r.load(Ordering::Acquire))
                .collect(),
        )
    };
    // Target `t` is still rebuilding from the state this pass started with.
    let ours = |t: usize| {
        sh.state(t) == ChildState::Rebuilding
            && sh.rebuilds[t].load(Ordering::Acquire) == rebuilds[t]
    };
    let size = sh.geometry.size_bytes();
    let mut mbps = sh.resync_mbps.load(Ordering::Relaxed);
    let mut started = Instant::now();
    let mut moved = 0u64;
    let mut busy = 0usize;
    while let Some(r) = list.pop_front() {
        if sh.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if sh.copied_regions.load(Ordering::Relaxed) >= sh.crash_after.load(Ordering::Relaxed) {
            // Tests: killed here.
            sh.stop.store(true, Ordering::Relaxed);
            return Ok(());
        }
        if sh.state(source) != ChildState::InSync {
            return Err(format!("source child {source} is out"));
        }
        tq.retain(|(t, _)| ours(*t));
        if tq.is_empty() {
            return Ok(());
        }
        let Some(counter) = sh.writes.get(ix(r)) else {
            continue;
        };
        let w0 = counter.load(Ordering::Acquire);
        if w0 & (STARTED - 1) != 0 {
            // Guest writes in flight in the region: come back to it.
            list.push_back(r);
            busy += 1;
            if busy >= list.len() {
                std::thread::sleep(Duration::from_micros(100));
                busy = 0;
            }
            continue;
        }
        busy = 0;
        let start = r * sh.region;
        let end = (start + sh.region).min(size);
        let mut at = start;
        while at < end {
            let n = chunk.min(end - at);
            let b = &mut buf[..ix(n)];
            if let Err(e) = sync_io(src.as_mut(), IoKind::Read, at, b) {
                sh.fail(source, Mark::None, &format!("resync read: {e}"));
                return Err(format!("read of child {source}: {e}"));
            }
            for (t, q) in &mut tq {
                if !ours(*t) {
                    continue;
                }
                if let Err(e) = sync_io(q.as_mut(), IoKind::WriteFua, at, b) {
                    sh.fail(
                        *t,
                        Mark::Range(start, end - start),
                        &format!("resync write: {e}"),
                    );
                }
            }
            at += n;
        }
        if counter.load(Ordering::Acquire) != w0 {
            // A guest write started during the copy: copy it again.
            list.push_back(r);
            continue;
        }
        moved += end - start;
        sh.resync_bytes.fetch_add(end - start, Ordering::Relaxed);
        sh.copied_regions.fetch_add(1, Ordering::Relaxed);
        {
            let mut bm = lock(&sh.bitmap);
            let live = tq
                .iter()
                .filter(|(t, _)| ours(*t))
                .fold(0u64, |m, (t, _)| m | (1 << t));
            // Only when no other child needs the mark, and no guest write
            // started since the copy checked.
            let others =
                sh.in_state(ChildState::Failed) | (sh.in_state(ChildState::Rebuilding) & !live);
            if counter.load(Ordering::Acquire) != w0 {
                drop(bm);
                list.push_back(r);
                continue;
            }
            if others == 0 && bm.clear(r) {
                if let Err(e) = bm.write_page(r).and_then(|()| bm.sync()) {
                    // The bit stays set on disk: a later pass copies again.
                    tracing::warn!(error = %e, "raid1: cannot write the bitmap");
                }
            }
        }
        // Rate limit: `moved` bytes are due at `moved / limit` seconds,
        // counted afresh when the operator changes the limit.
        let now_mbps = sh.resync_mbps.load(Ordering::Relaxed);
        if now_mbps != mbps {
            mbps = now_mbps;
            started = Instant::now();
            moved = end - start;
        }
        let limit = mbps.saturating_mul(1_000_000).max(1);
        let us = u64::try_from(started.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        sh.resync_rate.store(
            u64::try_from(u128::from(moved) * 1_000_000 / u128::from(us)).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let due =
            u64::try_from(u128::from(moved) * 1_000_000 / u128::from(limit)).unwrap_or(u64::MAX);
        let mut wait = due.saturating_sub(us);
        while wait > 0 && !sh.stop.load(Ordering::Relaxed) {
            let step = wait.min(50_000);
            std::thread::sleep(Duration::from_micros(step));
            wait -= step;
        }
    }
    // Every marked region reached the targets left.
    let mut bm = lock(&sh.bitmap);
    if sh.diverged.load(Ordering::Acquire) != diverged {
        // Regions were marked again behind the pass: another pass.
        return Ok(());
    }
    let mut changed = false;
    for (t, _) in &tq {
        if ours(*t) {
            sh.set_state(*t, ChildState::InSync);
            changed = true;
            tracing::info!(child = *t, backend = %sh.children()[*t].describe(), "raid1: child in sync");
        }
    }
    if changed {
        if let Err(e) = sh.persist_header(&mut bm).and_then(|()| bm.sync()) {
            tracing::warn!(error = %e, "raid1: cannot write the bitmap");
        }
    }
    Ok(())
}

impl Backend for Mirror {
    fn geometry(&self) -> Geometry {
        self.shared.geometry
    }

    fn features(&self) -> Features {
        let ch = self.shared.children();
        Features {
            volatile_write_cache: ch.iter().any(|c| c.features().volatile_write_cache),
            write_zeroes: ch.iter().all(|c| c.features().write_zeroes),
            deallocate: ch.iter().all(|c| c.features().deallocate),
        }
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn BackendQueue>, BackendError> {
        // What was replaced before the children are read: a replacement in
        // between makes the queue open one more on the new child, no worse.
        let epoch = self.shared.swap_epoch.load(Ordering::Acquire);
        let seen = self
            .shared
            .swaps
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .collect();
        let queues = self
            .shared
            .children()
            .iter()
            .map(|c| c.open_queue(depth))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Box::new(MirrorQueue {
            shared: Arc::clone(&self.shared),
            queues,
            seen,
            epoch,
            retired: Vec::new(),
            depth: depth as usize,
            reqs: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            rr: 0,
            deferred: VecDeque::new(),
            got: Vec::new(),
            ready: Vec::new(),
            spare: Spare::default(),
        }))
    }

    fn flush(&self) -> Result<(), BackendError> {
        let mut first = None;
        for (c, b) in self.shared.children().iter().enumerate() {
            if self.shared.state(c) == ChildState::Failed {
                continue;
            }
            if let Err(e) = b.flush() {
                if !self.shared.fail(c, Mark::All, "flush failed") && first.is_none() {
                    first = Some(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn describe(&self) -> String {
        let sh = &self.shared;
        let states = sh.states();
        let children: Vec<String> = sh
            .children()
            .iter()
            .zip(&states)
            .map(|(c, s)| format!("{} ({})", c.describe(), s.name()))
            .collect();
        format!(
            "raid1 ({}, {} regions, bitmap {}) of [{}]",
            crate::human_size(sh.geometry.size_bytes()),
            crate::human_size(sh.region),
            lock(&sh.bitmap).path.display(),
            children.join(" | ")
        )
    }

    fn persistent(&self) -> bool {
        self.shared.children().iter().all(|c| c.persistent())
    }

    fn claim(&self) -> Result<(), BackendError> {
        let mut claimed = lock(&self.claimed);
        if *claimed {
            return Ok(());
        }
        let sh = &self.shared;
        let results: Vec<Result<(), BackendError>> =
            sh.children().iter().map(|c| c.claim()).collect();
        let mut states = self.load_bitmap()?;
        let mut changed = false;
        for (c, r) in results.iter().enumerate() {
            match (r, states[c]) {
                (Err(e), ChildState::Failed) => {
                    tracing::warn!(child = c, error = %e, "raid1: failed child still cannot be claimed");
                }
                (Err(e), _) => {
                    if states
                        .iter()
                        .enumerate()
                        .any(|(i, s)| i != c && *s == ChildState::InSync && results[i].is_ok())
                        || states[c] != ChildState::InSync
                    {
                        tracing::warn!(child = c, backend = %sh.children()[c].describe(), error = %e, "raid1: child cannot be claimed, going on degraded");
                        states[c] = ChildState::Failed;
                        changed = true;
                    } else {
                        return Err(BackendError::Config(format!(
                            "raid1: child {c} ({}) is the only one in sync and cannot be claimed: {e}",
                            sh.children()[c].describe()
                        )));
                    }
                }
                (Ok(()), ChildState::Failed) => {
                    // Back at start: rebuilt from its marked regions.
                    states[c] = ChildState::Rebuilding;
                    changed = true;
                }
                (Ok(()), _) => {}
            }
        }
        if !states.contains(&ChildState::InSync) {
            return Err(BackendError::Config(
                "raid1: no child in sync can be claimed".into(),
            ));
        }
        if changed {
            let mut bm = lock(&sh.bitmap);
            for (c, s) in states.iter().enumerate() {
                sh.set_state(c, *s);
            }
            sh.persist_header(&mut bm)
                .and_then(|()| bm.sync())
                .map_err(|source| BackendError::Io {
                    what: "cannot write the raid1 bitmap",
                    path: bm.path.clone(),
                    source,
                })?;
        }
        *claimed = true;
        drop(claimed);
        self.start_resync();
        Ok(())
    }

    fn copied_bytes(&self) -> u64 {
        super::children::copied_bytes(&self.shared.children())
    }

    fn figures(&self) -> Vec<Figure> {
        let s = self.status();
        let healthy = s
            .children
            .iter()
            .filter(|c| c.state == ChildState::InSync)
            .count();
        vec![
            Figure {
                name: "mirror_children_healthy",
                help: "Children of the mirror in sync",
                counter: false,
                value: healthy as f64,
            },
            Figure {
                name: "mirror_resync_bytes_total",
                help: "Bytes the mirror's resync copied",
                counter: true,
                value: s.resync_bytes as f64,
            },
            Figure {
                name: "mirror_dirty_regions",
                help: "Regions marked in the mirror's write-intent bitmap",
                counter: false,
                value: s.dirty_regions as f64,
            },
            Figure {
                name: "mirror_resync_remaining_bytes",
                help: "Bytes the mirror's resync has left to copy",
                counter: false,
                value: s.resync_remaining_bytes as f64,
            },
        ]
    }

    fn owner(&self, who: &Owner<'_>) -> u32 {
        super::children::owner(&self.shared.children(), who)
    }

    fn stale_writes_for(&self) -> Duration {
        super::children::stale_writes_for(&self.shared.children())
    }

    fn max_io_bytes(&self) -> u64 {
        super::children::max_io_bytes(&self.shared.children())
    }

    fn service(&self) -> Option<&dyn ServiceControl> {
        Some(self)
    }
}

impl ServiceControl for Mirror {
    fn state(&self) -> String {
        self.status().to_json()
    }

    fn control(&self, action: &str, args: &[&str]) -> Result<String, String> {
        let number = |what: &str| -> Result<u64, String> {
            match args {
                [n] => n
                    .parse()
                    .map_err(|_| format!("{action}: {what} must be a number, not '{n}'")),
                _ => Err(format!("{action} takes one argument: {what}")),
            }
        };
        let child = || number("CHILD").and_then(|c| usize::try_from(c).map_err(|e| e.to_string()));
        match action {
            "fail" => {
                let child = child()?;
                self.fail(child).map(|()| format!("child {child} failed"))
            }
            "readd" => {
                let child = child()?;
                self.readd(child).map(|()| {
                    format!(
                        "child {child} rebuilding from {} marked regions",
                        self.dirty_regions()
                    )
                })
            }
            "rebuild" => {
                let child = child()?;
                self.rebuild(child)
                    .map(|()| format!("child {child} rebuilding in full"))
            }
            "replace" => {
                let [c, spec] = args else {
                    return Err("replace takes two arguments: CHILD SPEC".into());
                };
                let child: usize = c
                    .parse()
                    .map_err(|_| format!("replace: CHILD must be a number, not '{c}'"))?;
                let spec: crate::BackendSpec = spec.parse().map_err(|e| format!("replace: {e}"))?;
                let new = crate::open_backend_unclaimed(&spec).map_err(|e| format!("replace: {e}"))?;
                self.replace(child, new)?;
                Ok(format!(
                    "child {child} is now {spec}, rebuilding in full; name it in the namespace's spec, or a restart rebuilds the old one"
                ))
            }
            "rate" => {
                let mbps = number("MBPS")?;
                self.set_resync_mbps(mbps)?;
                Ok(format!(
                    "resync limited to {mbps} MB/s (until a restart: the spec's resync-mbps then)"
                ))
            }
            other => Err(format!(
                "unknown action '{other}' (raid1 takes fail CHILD, readd CHILD, rebuild CHILD, replace CHILD SPEC, rate MBPS)"
            )),
        }
    }
}

fn is_write(kind: IoKind) -> bool {
    matches!(
        kind,
        IoKind::Write
            | IoKind::WriteFua
            | IoKind::WriteZeroes
            | IoKind::WriteZeroesFua
            | IoKind::Deallocate
    )
}

/// A request in flight: kept whole (a read may go to another child, a
/// child's full queue takes it later).
struct Req {
    tag: u64,
    kind: IoKind,
    offset: u64,
    len: u64,
    iov: Vec<libc::iovec>,
    owner: u32,
    /// Child requests not completed yet.
    left: u32,
    result: Result<(), IoError>,
    /// Children a read was sent to.
    tried: u64,
}

// SAFETY: the iovecs point into the submitter's memory, which it keeps
// valid until the request's completion (the `submit` contract), whatever
// thread the queue is used from.
unsafe impl Send for Req {}

struct MirrorQueue {
    shared: Arc<Shared>,
    queues: Vec<Box<dyn BackendQueue>>,
    /// `Shared::swaps` as of each of `queues`, and `swap_epoch`.
    seen: Vec<u64>,
    epoch: u64,
    /// Queues on replaced children, until what they have in flight
    /// completes: (child, queue).
    retired: Vec<(usize, Box<dyn BackendQueue>)>,
    depth: usize,
    /// Requests by slot; a child request's tag is its slot.
    reqs: Vec<Option<Req>>,
    free: Vec<usize>,
    in_flight: usize,
    rr: usize,
    /// Child requests a full child queue refused: (child, slot).
    deferred: VecDeque<(usize, usize)>,
    got: Vec<Completion>,
    /// Requests that finished outside `poll`.
    ready: Vec<Completion>,
    /// Iovec arrays of finished requests, empty, kept for their room.
    spare: Spare,
}

#[derive(Default)]
struct Spare(Vec<Vec<libc::iovec>>);

// SAFETY: every array in it is empty: no pointer is kept.
unsafe impl Send for Spare {}

impl MirrorQueue {
    /// Open a queue on each child replaced since this queue last looked;
    /// the old queue stays (retired) until its requests complete. A child
    /// whose new queue cannot be opened keeps the old one and is tried
    /// again at the next look.
    fn refresh(&mut self) {
        let epoch = self.shared.swap_epoch.load(Ordering::Acquire);
        if epoch == self.epoch {
            return;
        }
        let mut all = true;
        for c in 0..self.queues.len() {
            let swaps = self.shared.swaps[c].load(Ordering::Acquire);
            if swaps == self.seen[c] {
                continue;
            }
            let depth = u32::try_from(self.depth).unwrap_or(u32::MAX);
            match self.shared.children()[c].open_queue(depth) {
                Ok(q) => {
                    let old = std::mem::replace(&mut self.queues[c], q);
                    self.seen[c] = swaps;
                    if old.in_flight() > 0 {
                        self.retired.push((c, old));
                    }
                }
                Err(e) => {
                    all = false;
                    tracing::warn!(child = c, error = %e, "raid1: no queue on the new child yet");
                }
            }
        }
        if all {
            self.epoch = epoch;
        }
    }

    /// Send slot `slot` to child `c`; false if the child refused it (not
    /// for a full queue: that is tried again later).
    fn send(&mut self, c: usize, slot: usize) -> bool {
        self.refresh();
        if self.seen[c] != self.shared.swaps[c].load(Ordering::Acquire) {
            // Replaced, and no queue on the new child: it is rebuilt in
            // full, a refusal fails it again.
            return false;
        }
        let Some(Some(r)) = self.reqs.get(slot) else {
            return true;
        };
        let req = IoRequest {
            tag: slot as u64,
            kind: r.kind,
            offset: r.offset,
            len: r.len,
            iov: &r.iov,
            owner: r.owner,
            journal: None,
        };
        // SAFETY: the iovecs are the request's, which its submitter keeps
        // valid until its completion; that comes only after every child's.
        match unsafe { self.queues[c].submit(&req) } {
            Ok(()) => true,
            Err(SubmitError::Full) => {
                self.deferred.push_back((c, slot));
                true
            }
            Err(SubmitError::Invalid(_)) => false,
        }
    }

    /// Send a read to the next child in sync it was not tried on.
    fn send_read(&mut self, slot: usize) -> bool {
        loop {
            let Some(Some(r)) = self.reqs.get(slot) else {
                return false;
            };
            let Some(c) = self.shared.pick_read(&mut self.rr, r.tried) else {
                return false;
            };
            if let Some(Some(r)) = self.reqs.get_mut(slot) {
                r.tried |= 1 << c;
                r.left += 1;
            }
            if self.send(c, slot) {
                return true;
            }
            if let Some(Some(r)) = self.reqs.get_mut(slot) {
                r.left -= 1;
            }
            self.shared.fail(c, Mark::None, "read refused");
        }
    }

    /// Child `c` finished its part of slot `slot`.
    fn child_done(
        &mut self,
        c: usize,
        slot: usize,
        result: Result<(), IoError>,
        out: &mut Vec<Completion>,
    ) {
        let Some(Some(r)) = self.reqs.get_mut(slot) else {
            return;
        };
        r.left = r.left.saturating_sub(1);
        if let Err(e) = result {
            let sh = Arc::clone(&self.shared);
            let why = e.to_string();
            match r.kind {
                IoKind::Read => {
                    sh.fail(c, Mark::None, &why);
                    if self.send_read(slot) {
                        return;
                    }
                    if let Some(Some(r)) = self.reqs.get_mut(slot) {
                        r.result = Err(e);
                    }
                }
                IoKind::Flush => {
                    if !sh.fail(c, Mark::All, &why) {
                        r.result = Err(e);
                    }
                }
                _ => {
                    let (offset, len) = (r.offset, r.len);
                    if !sh.fail(c, Mark::Range(offset, len), &why) {
                        if let Some(Some(r)) = self.reqs.get_mut(slot) {
                            r.result = Err(e);
                        }
                    }
                }
            }
        }
        if let Some(Some(r)) = self.reqs.get(slot) {
            if r.left == 0 {
                self.finish(slot, out);
            }
        }
    }

    fn finish(&mut self, slot: usize, out: &mut Vec<Completion>) {
        let Some(r) = self.reqs.get_mut(slot).and_then(Option::take) else {
            return;
        };
        if is_write(r.kind) {
            self.shared.end_write(r.offset, r.len);
        }
        out.push(Completion {
            tag: r.tag,
            result: r.result,
            value: 0,
        });
        let mut iov = r.iov;
        iov.clear();
        self.spare.0.push(iov);
        self.free.push(slot);
        self.in_flight -= 1;
    }

    /// Try the child requests full queues refused again.
    fn retry_deferred(&mut self, out: &mut Vec<Completion>) {
        for _ in 0..self.deferred.len() {
            let Some((c, slot)) = self.deferred.pop_front() else {
                break;
            };
            if !self.send(c, slot) {
                self.child_done(c, slot, Err(IoError::from_errno(libc::EIO)), out);
            }
        }
    }

    /// The completions of the children's queues (and of retired ones,
    /// dropped once empty) to `child_done`: polled, or with `wait`, each
    /// busy queue drained for up to that long.
    fn gather(&mut self, out: &mut Vec<Completion>, wait: Option<Duration>) {
        let mut got = std::mem::take(&mut self.got);
        let take = |q: &mut Box<dyn BackendQueue>, got: &mut Vec<Completion>| {
            got.clear();
            match wait {
                None => q.poll(got),
                Some(t) => q.drain(got, t),
            };
        };
        for c in 0..self.queues.len() {
            if self.queues[c].in_flight() == 0 {
                continue;
            }
            take(&mut self.queues[c], &mut got);
            for done in got.drain(..) {
                self.child_done(c, ix(done.tag), done.result, out);
            }
        }
        if !self.retired.is_empty() {
            let mut retired = std::mem::take(&mut self.retired);
            for (c, q) in &mut retired {
                take(q, &mut got);
                for done in got.drain(..) {
                    self.child_done(*c, ix(done.tag), done.result, out);
                }
            }
            retired.retain(|(_, q)| q.in_flight() > 0);
            retired.append(&mut self.retired);
            self.retired = retired;
        }
        self.got = got;
    }
}

impl BackendQueue for MirrorQueue {
    unsafe fn submit(&mut self, req: &IoRequest<'_>) -> Result<(), SubmitError> {
        validate(req, self.shared.geometry)?;
        if self.in_flight >= self.depth {
            return Err(SubmitError::Full);
        }
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.reqs.push(None);
                self.reqs.len() - 1
            }
        };
        let mut iov = self.spare.0.pop().unwrap_or_default();
        iov.extend_from_slice(req.iov);
        self.reqs[slot] = Some(Req {
            tag: req.tag,
            kind: req.kind,
            offset: req.offset,
            len: req.len,
            iov,
            owner: req.owner,
            left: 0,
            result: Ok(()),
            tried: 0,
        });
        self.in_flight += 1;
        let mut ready = std::mem::take(&mut self.ready);
        if req.len == 0 && req.kind != IoKind::Flush {
            self.finish(slot, &mut ready);
        } else if req.kind == IoKind::Read {
            if !self.send_read(slot) {
                if let Some(Some(r)) = self.reqs.get_mut(slot) {
                    r.result = Err(IoError::from_errno(libc::EIO));
                }
                self.finish(slot, &mut ready);
            }
        } else {
            let sh = Arc::clone(&self.shared);
            let mask = if is_write(req.kind) {
                sh.start_write(req.offset, req.len);
                let w = sh.states.load(Ordering::Acquire);
                if w == 0 {
                    // Every child in sync: the fast path.
                    Ok((1u64 << sh.n) - 1)
                } else {
                    sh.route_write(req.offset, req.len)
                }
            } else {
                Ok(!sh.in_state(ChildState::Failed) & ((1u64 << sh.n) - 1))
            };
            match mask {
                Err(e) => {
                    if let Some(Some(r)) = self.reqs.get_mut(slot) {
                        r.result = Err(e);
                    }
                    self.finish(slot, &mut ready);
                }
                Ok(mask) => {
                    if let Some(Some(r)) = self.reqs.get_mut(slot) {
                        r.left = mask.count_ones();
                    }
                    if mask == 0 {
                        if let Some(Some(r)) = self.reqs.get_mut(slot) {
                            r.result = Err(IoError::from_errno(libc::EIO));
                        }
                        self.finish(slot, &mut ready);
                    }
                    for c in (0..self.queues.len()).filter(|c| mask & (1 << c) != 0) {
                        if !self.send(c, slot) {
                            self.child_done(
                                c,
                                slot,
                                Err(IoError::from_errno(libc::EIO)),
                                &mut ready,
                            );
                        }
                    }
                }
            }
        }
        self.ready = ready;
        Ok(())
    }

    fn kick(&mut self) -> Result<(), BackendError> {
        let mut ready = std::mem::take(&mut self.ready);
        self.retry_deferred(&mut ready);
        self.ready = ready;
        super::children::kick_busy(&mut self.queues)
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        let before = out.len();
        self.refresh();
        out.append(&mut self.ready);
        self.retry_deferred(out);
        self.gather(out, None);
        out.len() - before
    }

    fn in_flight(&self) -> usize {
        // (those finished during a submit too, until polled)
        self.in_flight + self.ready.len()
    }

    fn held(&self) -> usize {
        self.queues.iter().map(|q| q.held()).sum::<usize>()
            + self.retired.iter().map(|(_, q)| q.held()).sum::<usize>()
    }

    fn drain(&mut self, out: &mut Vec<Completion>, timeout: Duration) -> usize {
        let before = out.len();
        let deadline = Instant::now() + timeout;
        let _ = self.kick();
        self.poll(out);
        while self.in_flight > 0 && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            self.gather(out, Some(left.min(Duration::from_millis(10))));
            let _ = self.kick();
            self.poll(out);
        }
        out.len() - before
    }

    fn wait_completion(&mut self, timeout: Duration) {
        if let Some(q) = self
            .queues
            .iter_mut()
            .chain(self.retired.iter_mut().map(|(_, q)| q))
            .find(|q| q.in_flight() > 0)
        {
            q.wait_completion(timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RamBackend;

    const SIZE: u64 = 4 << 20;
    const REGION: u64 = 64 << 10;

    struct Rig {
        children: Vec<Arc<dyn Backend>>,
        switches: Vec<Arc<AtomicBool>>,
        dir: tempfile::TempDir,
    }

    impl Rig {
        fn new(n: usize) -> Rig {
            Rig::with_max_io(n, u64::MAX)
        }

        /// Children that refuse requests larger than `max_io` bytes.
        fn with_max_io(n: usize, max_io: u64) -> Rig {
            let mut children: Vec<Arc<dyn Backend>> = Vec::new();
            let mut switches = Vec::new();
            for _ in 0..n {
                let broken = Arc::new(AtomicBool::new(false));
                children.push(Arc::new(crate::services::Flaky {
                    inner: Arc::new(RamBackend::new(SIZE, 512).unwrap()),
                    broken: Arc::clone(&broken),
                    errno: libc::EIO,
                    max_io,
                }));
                switches.push(broken);
            }
            Rig {
                children,
                switches,
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn bitmap(&self) -> PathBuf {
            self.dir.path().join("m.bitmap")
        }

        /// A mirror over the rig's children, claimed, its first sync done.
        fn open(&self) -> Mirror {
            let m = Mirror::new(self.children.clone(), &self.bitmap(), REGION, 100_000).unwrap();
            m.claim().unwrap();
            assert!(m.wait_resync(Duration::from_secs(5)));
            m
        }
    }

    fn io(
        q: &mut dyn BackendQueue,
        kind: IoKind,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), IoError> {
        let iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        let req = IoRequest {
            tag: 9,
            kind,
            offset,
            len: buf.len() as u64,
            iov: if buf.is_empty() { &[] } else { &iov },
            owner: 0,
            journal: None,
        };
        // SAFETY: buf outlives the request (drained below).
        unsafe { q.submit(&req) }.unwrap();
        let mut out = Vec::new();
        q.drain(&mut out, Duration::from_secs(5));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].tag, 9);
        out[0].result
    }

    fn fill(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect()
    }

    fn contents(b: &Arc<dyn Backend>) -> Vec<u8> {
        let mut q = b.open_queue(1).unwrap();
        let mut v = vec![0u8; ix(SIZE)];
        for (k, piece) in v.chunks_mut(16 << 10).enumerate() {
            io(q.as_mut(), IoKind::Read, k as u64 * (16 << 10), piece).unwrap();
        }
        v
    }

    fn assert_identical(rig: &Rig, expect: &[u8]) {
        for (i, c) in rig.children.iter().enumerate() {
            assert!(contents(c) == expect, "child {i} differs");
        }
    }

    #[test]
    fn writes_land_on_every_child_and_healthy_writes_touch_no_bitmap() {
        let rig = Rig::new(3);
        let m = rig.open();
        assert_eq!(m.states(), [ChildState::InSync; 3]);
        let gen = lock(&m.shared.bitmap).generation;
        let mut q = m.open_queue(8).unwrap();
        let mut expect = vec![0u8; ix(SIZE)];
        for (k, off) in [0u64, 70_000 / 512 * 512, SIZE - 8192]
            .into_iter()
            .enumerate()
        {
            let mut d = fill(k as u64 + 1, 8192);
            io(q.as_mut(), IoKind::Write, off, &mut d).unwrap();
            expect[ix(off)..ix(off) + 8192].copy_from_slice(&d);
        }
        let mut z = Vec::new();
        io(q.as_mut(), IoKind::Flush, 0, &mut z).unwrap();
        assert_identical(&rig, &expect);
        // Reads go round the children and return the data.
        for _ in 0..3 {
            let mut back = vec![0u8; 8192];
            io(q.as_mut(), IoKind::Read, 0, &mut back).unwrap();
            assert_eq!(back, expect[..8192]);
        }
        assert_eq!(lock(&m.shared.bitmap).generation, gen);
        assert_eq!(m.dirty_regions(), 0);
        assert!(m.describe().contains("(in-sync)"), "{}", m.describe());
    }

    #[test]
    fn a_failing_child_degrades_without_errors_and_readd_copies_only_what_it_missed() {
        let rig = Rig::new(2);
        let m = rig.open();
        let mut q = m.open_queue(8).unwrap();
        let mut expect = vec![0u8; ix(SIZE)];
        let mut d = fill(1, ix(SIZE));
        io(q.as_mut(), IoKind::Write, 0, &mut d).unwrap();
        expect.copy_from_slice(&d);
        rig.switches[1].store(true, Ordering::Relaxed);
        // Three regions written while child 1 is out (one write crosses
        // into a fourth).
        for (k, off) in [0u64, 5 * REGION, 9 * REGION - 4096]
            .into_iter()
            .enumerate()
        {
            let mut d = fill(10 + k as u64, 8192);
            io(q.as_mut(), IoKind::Write, off, &mut d).expect("no error while a child is in sync");
            expect[ix(off)..ix(off) + 8192].copy_from_slice(&d);
        }
        assert_eq!(m.states(), [ChildState::InSync, ChildState::Failed]);
        assert_eq!(m.dirty_regions(), 4);
        // Reads still work.
        let mut back = vec![0u8; 8192];
        io(q.as_mut(), IoKind::Read, 5 * REGION, &mut back).unwrap();
        assert_eq!(back, expect[ix(5 * REGION)..ix(5 * REGION) + 8192]);
        // The last child in sync is not failed: its errors reach the guest.
        rig.switches[0].store(true, Ordering::Relaxed);
        assert!(io(q.as_mut(), IoKind::Write, 0, &mut vec![1u8; 512]).is_err());
        assert!(m.fail(0).is_err());
        rig.switches[0].store(false, Ordering::Relaxed);
        let mut d = expect[..512].to_vec();
        io(q.as_mut(), IoKind::Write, 0, &mut d).unwrap();
        let figures = m.figures();
        assert_eq!(figures[0].value, 1.0);
        assert_eq!(figures[2].value, 4.0);
        rig.switches[1].store(false, Ordering::Relaxed);
        let before = m.copied_regions();
        m.control("readd", &["1"]).unwrap();
        assert!(m.wait_resync(Duration::from_secs(5)));
        assert_eq!(
            m.copied_regions() - before,
            4,
            "only the marked regions are copied"
        );
        assert_eq!(m.states(), [ChildState::InSync; 2]);
        assert_eq!(m.dirty_regions(), 0);
        assert_identical(&rig, &expect);
        let s = m.state();
        assert!(
            s.contains("\"state\":\"in-sync\"") && s.contains("\"dirty_regions\":0"),
            "{s}"
        );
        assert!(m.control("readd", &["1"]).is_err());
        assert!(m
            .control("explode", &["1"])
            .unwrap_err()
            .contains("unknown action"));
        assert!(m
            .control("fail", &["7"])
            .unwrap_err()
            .contains("no child 7"));
    }

    #[test]
    fn the_resync_cuts_its_copies_to_what_the_children_take() {
        // Children that take 16 KiB at most, as a target with a small MDTS:
        // the first full copy and a re-add both go through.
        let rig = Rig::with_max_io(2, 16 << 10);
        let m = rig.open();
        assert_eq!(m.states(), [ChildState::InSync; 2]);
        assert_eq!(m.max_io_bytes(), 16 << 10);
        let mut q = m.open_queue(4).unwrap();
        m.fail(1).unwrap();
        let mut expect = vec![0u8; ix(SIZE)];
        for k in 0..16u64 {
            let off = k * 200 * 1024;
            let mut d = fill(k, 16 << 10);
            io(q.as_mut(), IoKind::Write, off, &mut d).unwrap();
            expect[ix(off)..ix(off) + d.len()].copy_from_slice(&d);
        }
        m.readd(1).unwrap();
        assert!(m.wait_resync(Duration::from_secs(5)));
        assert_eq!(m.states(), [ChildState::InSync; 2]);
        assert_identical(&rig, &expect);
    }

    #[test]
    fn a_replaced_child_is_rebuilt_in_full_and_queues_move_to_it() {
        let rig = Rig::new(2);
        let m = rig.open();
        // A queue opened before the replacement, as a poller's is.
        let mut q = m.open_queue(4).unwrap();
        let mut expect = fill(21, ix(SIZE));
        io(q.as_mut(), IoKind::Write, 0, &mut expect).unwrap();
        let new: Arc<dyn Backend> = Arc::new(RamBackend::new(SIZE, 512).unwrap());
        m.replace(1, Arc::clone(&new)).unwrap();
        assert!(m.state().contains("ram"), "{}", m.state());
        assert!(m.wait_resync(Duration::from_secs(5)));
        assert_eq!(m.states(), [ChildState::InSync; 2]);
        assert!(
            contents(&new) == expect,
            "the new child holds the mirror's data"
        );
        // Writes now reach the new child, not the old one.
        let mut d = fill(22, 4096);
        io(q.as_mut(), IoKind::Write, 8192, &mut d).unwrap();
        expect[8192..8192 + 4096].copy_from_slice(&d);
        assert!(contents(&new) == expect);
        assert!(
            contents(&rig.children[1]) != expect,
            "the old child got a write"
        );
        // Reads from the new child alone.
        m.fail(0).unwrap();
        let mut back = vec![0u8; ix(SIZE)];
        for (k, piece) in back.chunks_mut(64 << 10).enumerate() {
            io(q.as_mut(), IoKind::Read, k as u64 * (64 << 10), piece).unwrap();
        }
        assert!(back == expect);
    }

    #[test]
    fn a_replacement_that_does_not_fit_is_refused() {
        let rig = Rig::new(2);
        let m = rig.open();
        let small: Arc<dyn Backend> = Arc::new(RamBackend::new(SIZE / 2, 512).unwrap());
        assert!(m.replace(1, small).unwrap_err().contains("needs"));
        let big_blocks: Arc<dyn Backend> = Arc::new(RamBackend::new(SIZE, 4096).unwrap());
        assert!(m
            .replace(1, big_blocks)
            .unwrap_err()
            .contains("4096 B blocks"));
        m.fail(1).unwrap();
        let fits: Arc<dyn Backend> = Arc::new(RamBackend::new(SIZE, 512).unwrap());
        assert!(m.replace(0, fits).unwrap_err().contains("last one in sync"));
        let e = m.control("replace", &["1", "floppy:/dev/fd0"]).unwrap_err();
        assert!(e.starts_with("replace: "), "{e}");
        assert!(m
            .control("replace", &["1"])
            .unwrap_err()
            .contains("two arguments"));
        m.control("replace", &["1", "ram:4M"]).unwrap();
        assert!(m.wait_resync(Duration::from_secs(5)));
        assert_eq!(m.states(), [ChildState::InSync; 2]);
    }

    #[test]
    fn the_operator_changes_the_resync_rate_of_a_running_pass() {
        let rig = Rig::new(2);
        let m = rig.open();
        let mut q = m.open_queue(4).unwrap();
        m.fail(1).unwrap();
        let mut d = fill(9, ix(SIZE));
        io(q.as_mut(), IoKind::Write, 0, &mut d).unwrap();
        assert!(m.control("rate", &["0"]).unwrap_err().contains("never end"));
        assert!(m.control("rate", &["fast"]).unwrap_err().contains("number"));
        assert!(m.control("rate", &[]).unwrap_err().contains("one argument"));
        m.control("rate", &["2"]).unwrap();
        assert!(m.state().contains("\"limit_mbps\":2"), "{}", m.state());
        let before = m.copied_regions();
        m.readd(1).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // 2 MB/s: about 10 of the 64 regions by now, far from all.
        let copied = m.copied_regions() - before;
        assert!(
            copied < SIZE / REGION / 2,
            "{copied} regions copied at 2 MB/s"
        );
        m.control("rate", &["100000"]).unwrap();
        assert!(m.wait_resync(Duration::from_secs(5)));
        assert_identical(&rig, &d);
    }

    #[test]
    fn a_read_that_fails_is_retried_on_another_child() {
        let rig = Rig::new(2);
        let m = rig.open();
        let mut q = m.open_queue(4).unwrap();
        let mut d = fill(3, 4096);
        io(q.as_mut(), IoKind::Write, 4096, &mut d).unwrap();
        rig.switches[0].store(true, Ordering::Relaxed);
        for _ in 0..2 {
            let mut back = vec![0u8; 4096];
            io(q.as_mut(), IoKind::Read, 4096, &mut back).unwrap();
            assert_eq!(back, d);
        }
        assert_eq!(m.states(), [ChildState::Failed, ChildState::InSync]);
    }

    #[test]
    fn guest_writes_racing_the_resync_are_not_lost() {
        let rig = Rig::new(2);
        // Slow enough (64 regions at 40 MB/s: about 100 ms) for the
        // writes below to meet the copy.
        let m = Mirror::new(rig.children.clone(), &rig.bitmap(), REGION, 40).unwrap();
        m.claim().unwrap();
        assert!(m.wait_resync(Duration::from_secs(5)));
        let mut q = m.open_queue(8).unwrap();
        let mut expect = vec![0u8; ix(SIZE)];
        m.fail(1).unwrap();
        // Every region marked: child 1 missed everything.
        let mut d = fill(5, ix(SIZE));
        io(q.as_mut(), IoKind::Write, 0, &mut d).unwrap();
        expect.copy_from_slice(&d);
        assert_eq!(m.dirty_regions(), SIZE / REGION);
        m.readd(1).unwrap();
        let before = m.copied_regions();
        let mut k = 0u64;
        while k < 200 || (m.states()[1] == ChildState::Rebuilding && k < 100_000) {
            k += 1;
            let off = (k * 7919 * 512) % (SIZE - 4096);
            let mut d = fill(100 + k, 4096);
            io(q.as_mut(), IoKind::Write, off, &mut d).unwrap();
            expect[ix(off)..ix(off) + 4096].copy_from_slice(&d);
        }
        assert!(m.wait_resync(Duration::from_secs(5)));
        assert_eq!(m.states(), [ChildState::InSync; 2]);
        assert!(m.copied_regions() - before >= SIZE / REGION);
        assert_identical(&rig, &expect);
    }

    #[test]
    fn a_child_failed_and_re_added_behind_a_pass_gets_what_it_missed() {
        let rig = Rig::new(2);
        // 64 regions at 4 MB/s: about a second for the pass.
        let m = Mirror::new(rig.children.clone(), &rig.bitmap(), REGION, 4).unwrap();
        m.claim().unwrap();
        let mut q = m.open_queue(8).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while m.copied_regions() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(m.states()[1], ChildState::Rebuilding);
        // Behind the pass: region 0 copied already, child 1 out while the
        // guest writes there, then back.
        m.fail(1).unwrap();
        let mut expect = vec![0u8; ix(SIZE)];
        let mut d = fill(77, 4096);
        io(q.as_mut(), IoKind::Write, 0, &mut d).unwrap();
        expect[..4096].copy_from_slice(&d);
        m.readd(1).unwrap();
        assert!(m.wait_resync(Duration::from_secs(10)));
        assert_eq!(m.states(), [ChildState::InSync; 2]);
        assert_identical(&rig, &expect);
    }

    #[test]
    fn a_restart_mid_resync_resumes_it_from_the_bitmap() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = (0..2)
            .map(|i| dir.path().join(format!("c{i}.img")))
            .collect();
        for f in &files {
            std::fs::File::create(f).unwrap().set_len(SIZE).unwrap();
        }
        let bitmap = dir.path().join("m.bitmap");
        let open_children = || -> Vec<Arc<dyn Backend>> {
            files
                .iter()
                .map(|f| Arc::new(crate::FileBackend::open(f, 512).unwrap()) as Arc<dyn Backend>)
                .collect()
        };
        let mut expect = vec![0u8; ix(SIZE)];
        {
            let m = Mirror::new(open_children(), &bitmap, REGION, 100_000).unwrap();
            m.claim().unwrap();
            assert!(m.wait_resync(Duration::from_secs(5)));
            let mut q = m.open_queue(8).unwrap();
            m.fail(1).unwrap();
            for k in 0..20u64 {
                let off = k * 3 * REGION % SIZE;
                let mut d = fill(k, 8192);
                io(q.as_mut(), IoKind::Write, off, &mut d).unwrap();
                expect[ix(off)..ix(off) + 8192].copy_from_slice(&d);
            }
            let dirty = m.dirty_regions();
            assert!(dirty > 5, "{dirty}");
            m.crash_resync_after(3);
            m.readd(1).unwrap();
            assert!(!m.wait_resync(Duration::from_secs(5)));
            assert_eq!(m.dirty_regions(), dirty - 3);
            // Killed: the mirror is dropped with child 1 rebuilding.
        }
        let m = Mirror::new(open_children(), &bitmap, REGION, 100_000).unwrap();
        m.claim().unwrap();
        assert!(m.wait_resync(Duration::from_secs(5)));
        assert_eq!(m.states(), [ChildState::InSync; 2]);
        assert_eq!(m.dirty_regions(), 0);
        drop(m);
        for f in &files {
            assert!(
                std::fs::read(f).unwrap() == expect,
                "{} differs",
                f.display()
            );
        }
        // A bitmap of another shape is refused, naming the difference.
        let e = Mirror::new(open_children(), &bitmap, REGION * 2, 100)
            .unwrap()
            .claim()
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("64 KiB regions"), "{e}");
    }

    #[test]
    fn a_failed_child_in_the_header_is_rebuilt_at_start_and_a_new_child_in_full() {
        let rig = Rig::new(3);
        let mut expect = vec![0u8; ix(SIZE)];
        {
            let two = rig.children[..2].to_vec();
            let m = Mirror::new(two, &rig.bitmap(), REGION, 100_000).unwrap();
            m.claim().unwrap();
            assert!(m.wait_resync(Duration::from_secs(5)));
            let mut q = m.open_queue(4).unwrap();
            m.fail(1).unwrap();
            let mut d = fill(9, 4096);
            io(q.as_mut(), IoKind::Write, REGION, &mut d).unwrap();
            expect[ix(REGION)..ix(REGION) + 4096].copy_from_slice(&d);
        }
        // Child 1 was failed; child 2 is new.
        let m = Mirror::new(rig.children.clone(), &rig.bitmap(), REGION, 100_000).unwrap();
        m.claim().unwrap();
        assert!(m.wait_resync(Duration::from_secs(5)));
        assert_eq!(m.states(), [ChildState::InSync; 3]);
        assert_identical(&rig, &expect);
    }

    /// Random writes, failures and re-adds: at the end the children are
    /// identical and hold what was written.
    #[test]
    fn random_write_fail_readd_sequences_keep_the_children_identical() {
        for seed in 1..=6u64 {
            let rig = Rig::new(3);
            let m = rig.open();
            let mut q = m.open_queue(8).unwrap();
            let mut expect = vec![0u8; ix(SIZE)];
            let mut x = seed;
            let mut next = |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            for step in 0..150u64 {
                match next(10) {
                    0 => {
                        let c = ix(next(3));
                        let _ = m.fail(c);
                    }
                    1 => {
                        let c = ix(next(3));
                        let _ = m.readd(c);
                    }
                    2 => {
                        let c = ix(next(3));
                        if m.states()[c] != ChildState::Failed {
                            // A failure the mirror finds by itself.
                            rig.switches[c].store(true, Ordering::Relaxed);
                            let mut d = fill(step, 512);
                            let off = next(SIZE / 512) * 512;
                            if io(q.as_mut(), IoKind::Write, off, &mut d).is_ok() {
                                expect[ix(off)..ix(off) + 512].copy_from_slice(&d);
                            }
                            rig.switches[c].store(false, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        let len = (1 + next(64)) * 512;
                        let off = next((SIZE - len) / 512 + 1) * 512;
                        let kind = if next(8) == 0 {
                            IoKind::WriteZeroes
                        } else {
                            IoKind::Write
                        };
                        let mut d = if kind == IoKind::Write {
                            fill(step * 31 + seed, ix(len))
                        } else {
                            Vec::new()
                        };
                        let r = if kind == IoKind::Write {
                            io(q.as_mut(), kind, off, &mut d)
                        } else {
                            zeroes(q.as_mut(), off, len)
                        };
                        r.unwrap();
                        let dst = &mut expect[ix(off)..ix(off + len)];
                        if kind == IoKind::Write {
                            dst.copy_from_slice(&d);
                        } else {
                            dst.fill(0);
                        }
                    }
                }
            }
            for c in 0..3 {
                let _ = m.readd(c);
            }
            assert!(m.wait_resync(Duration::from_secs(5)), "seed {seed}");
            assert_eq!(m.states(), [ChildState::InSync; 3], "seed {seed}");
            assert_identical(&rig, &expect);
        }
    }

    fn zeroes(q: &mut dyn BackendQueue, offset: u64, len: u64) -> Result<(), IoError> {
        let req = IoRequest {
            tag: 9,
            kind: IoKind::WriteZeroes,
            offset,
            len,
            iov: &[],
            owner: 0,
            journal: None,
        };
        // SAFETY: no iovecs.
        unsafe { q.submit(&req) }.unwrap();
        let mut out = Vec::new();
        q.drain(&mut out, Duration::from_secs(5));
        out[0].result
    }

    #[test]
    fn the_bitmap_file_survives_torn_and_foreign_headers() {
        let rig = Rig::new(2);
        std::fs::write(rig.bitmap(), b"something else entirely").unwrap();
        let m = Mirror::new(rig.children.clone(), &rig.bitmap(), REGION, 100).unwrap();
        let e = m.claim().err().unwrap().to_string();
        assert!(e.contains("not a LeapIO raid1 bitmap"), "{e}");
        std::fs::remove_file(rig.bitmap()).unwrap();
        drop(rig.open());
        // The newest header slot torn: the other one is used.
        let mut raw = std::fs::read(rig.bitmap()).unwrap();
        let g0 = parse_header(&raw[..4096]).map(|h| h.generation);
        let g1 = parse_header(&raw[4096..8192]).map(|h| h.generation);
        let newest = if g0 > g1 { 0 } else { 4096 };
        raw[newest + 100] ^= 0xff;
        std::fs::write(rig.bitmap(), &raw).unwrap();
        let m = Mirror::new(rig.children.clone(), &rig.bitmap(), REGION, 100).unwrap();
        m.claim().unwrap();
    }
}
