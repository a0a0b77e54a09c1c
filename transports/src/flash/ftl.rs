//! A page-mapped flash translation layer on a [`Media`].
//!
//! - **Mapping.** One entry per logical page (= one flash page, = one LBA of
//!   the namespace): `l2p` gives its physical page, `p2l` the reverse, for GC.
//! - **Writes** go to the next die in turn (die `d` is on channel
//!   `d % channels`, so consecutive pages hit different channels, then
//!   different dies of a channel). Each die keeps one open block for host
//!   writes and one for GC's copies, so data GC moved (cold) does not mix
//!   with new data (hot).
//! - **GC** is per die: when a die's free blocks (plus those waiting to be
//!   erased) fall below [`GC_LOW`], the victim is its closed block with the
//!   fewest valid pages (greedy). Greedy is optimal for uniform random
//!   writes (the workload the write-amplification figures use) and needs no
//!   block ages; cost-benefit only pays off with hot/cold skew, which the
//!   separate GC stream already addresses in part. Valid pages move by
//!   copyback inside the die (no channel time). The victim is erased only
//!   after a sync that started after its pages moved has finished (the
//!   flusher thread): a host crash can then never lose the only durable copy
//!   of a page. Until then the die writes elsewhere, or a write waits.
//! - **Wear:** a die's next block is its free block with the fewest erases.
//! - **Deallocate / Write Zeroes** unmap the range and program a trim record
//!   (a page listing the range, with a sequence number) so the unmap
//!   survives a restart; GC drops a trim record once no block older than it
//!   (holding a data page with a smaller sequence number) is left.
//! - **Recovery** scans every page's OOB (kind, LBA, sequence number, data
//!   crc): the newest valid copy of each LBA wins, then trim records unmap
//!   what they are newer than. Torn pages (bad crc) are ignored. Blocks that
//!   were open are closed (their unwritten pages come back at their next
//!   erase). No checkpoint: mounting reads the whole media once.

use std::collections::HashMap;

use super::nand::{Media, MediaError, NandGeometry, PageKind, PageMeta, PageState};
use super::sync::Syncer;
use std::sync::Arc;

/// `l2p` value of an unmapped logical page.
const UNMAPPED: u32 = u32::MAX;
/// `p2l` value of a page holding no live data.
const INVALID: u64 = u64::MAX;
/// `p2l` value of a page holding a live trim record.
const TRIM: u64 = u64::MAX - 1;
/// A die collects garbage when its free blocks plus those waiting for their
/// erase are fewer than this.
pub const GC_LOW: usize = 2;
/// Free blocks of a die that host writes leave to GC.
const HOST_RESERVE: usize = 1;
/// Spare (over-provisioned) blocks per die the FTL needs at least: the two
/// open blocks, GC's reserve, and one block's worth of invalid pages to
/// clean.
pub const MIN_SPARE_BLOCKS_PER_DIE: u64 = 4;
/// Magic of a trim record page.
const TRIM_MAGIC: u32 = 0x4d49_5254; // "TRIM"

/// Why a write did not happen.
#[derive(Debug)]
pub(crate) enum FtlError {
    /// No free page now; blocks are waiting for a sync before their erase.
    /// Retry once the flusher has caught up.
    Wait,
    /// No free page and no garbage to collect.
    NoSpace,
    /// The media failed.
    Media(MediaError),
}

impl From<MediaError> for FtlError {
    fn from(e: MediaError) -> Self {
        FtlError::Media(e)
    }
}

impl FtlError {
    /// The errno a request sees (not for `Wait`, which is retried).
    pub(crate) fn errno(&self) -> i32 {
        match self {
            FtlError::Wait => libc::EAGAIN,
            FtlError::NoSpace => libc::ENOSPC,
            FtlError::Media(e) => e.errno(),
        }
    }
}

/// What the FTL has done, for `describe()` and the benchmarks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlashStats {
    /// Logical pages (the namespace's blocks).
    pub logical_pages: u64,
    /// Physical pages.
    pub physical_pages: u64,
    /// Pages the host wrote.
    pub host_pages_written: u64,
    /// Pages the host read (mapped ones; unmapped reads return zeroes
    /// without touching the media).
    pub host_pages_read: u64,
    /// Trim records programmed (Deallocate, Write Zeroes).
    pub trim_records: u64,
    /// Pages programmed on the media: host writes, GC copies, trim records.
    pub media_pages_programmed: u64,
    /// Pages GC moved.
    pub gc_pages_moved: u64,
    /// Blocks GC cleaned.
    pub gc_victims: u64,
    /// Blocks erased since the backend opened.
    pub erases: u64,
    /// Fewest erases of a block (over the media's life).
    pub erase_count_min: u32,
    /// Most erases of a block.
    pub erase_count_max: u32,
    /// Mean erases per block.
    pub erase_count_mean: f64,
    /// Free (erased) blocks now.
    pub free_blocks: u64,
    /// Pages holding live data or trim records now.
    pub valid_pages: u64,
    /// Torn pages recovery found (programs a crash cut short).
    pub torn_pages_at_mount: u64,
    /// Times a write had to wait for the flusher before space was free.
    pub write_waits: u64,
}

impl FlashStats {
    /// Media programs per page the host wrote (host data and trims).
    pub fn write_amplification(&self) -> f64 {
        let host = self.host_pages_written + self.trim_records;
        if host == 0 {
            return 0.0;
        }
        self.media_pages_programmed as f64 / host as f64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockUse {
    Free,
    Open,
    /// Closed (full, or was open at mount).
    Closed,
    /// Cleaned by GC, erased once the sync with this ticket is done.
    Reclaim,
}

#[derive(Clone, Copy, Debug)]
struct BlockInfo {
    state: BlockUse,
    /// Live pages (data and trim records).
    valid: u32,
    /// Smallest sequence number of a data page programmed since the erase.
    min_seq: u64,
}

#[derive(Default)]
struct DieInfo {
    free: Vec<u32>,
    host: Option<u32>,
    gc: Option<u32>,
    /// (block, sync ticket) waiting for their erase.
    reclaim: Vec<(u32, u64)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Host,
    Gc,
}

/// The FTL. Not thread-safe: the backend keeps it behind a mutex.
pub struct Ftl {
    media: Box<dyn Media>,
    geo: NandGeometry,
    logical_pages: u64,
    l2p: Vec<u32>,
    p2l: Vec<u64>,
    /// Sequence number and copy number (GC moves) of the live trim
    /// records, by page.
    trim_seq: HashMap<u32, (u64, u64)>,
    blocks: Vec<BlockInfo>,
    dies: Vec<DieInfo>,
    next_die: usize,
    seq: u64,
    stats: FlashStats,
    scratch: Vec<u8>,
    syncer: Arc<Syncer>,
}

/// Logical pages for `op` over-provisioning ((physical - logical) /
/// logical), refused when the spare is below [`MIN_SPARE_BLOCKS_PER_DIE`].
pub fn logical_pages_for(geo: &NandGeometry, op: f64) -> Result<u64, String> {
    if !(op.is_finite() && (0.0..=10.0).contains(&op)) {
        return Err(format!("op {op} is not between 0 and 10"));
    }
    let physical = geo.pages();
    // Truncation toward zero is the intent: never more logical pages than fit.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let logical = (physical as f64 / (1.0 + op)).floor() as u64;
    let need = MIN_SPARE_BLOCKS_PER_DIE * u64::from(geo.dies()) * u64::from(geo.pages_per_block);
    if logical == 0 || physical - logical.min(physical) < need {
        return Err(format!(
            "op {op} leaves {} spare pages; the FTL needs at least {MIN_SPARE_BLOCKS_PER_DIE} blocks per die ({need} pages): raise op or blocks",
            physical - logical.min(physical)
        ));
    }
    Ok(logical)
}

impl Ftl {
    /// Rebuild the FTL's state from the media (every page's OOB).
    pub(crate) fn mount(
        media: Box<dyn Media>,
        logical_pages: u64,
        syncer: Arc<Syncer>,
    ) -> Result<Ftl, MediaError> {
        let geo = *media.geometry();
        let pages = usize::try_from(geo.pages()).map_err(|_| MediaError::Bad("media too large"))?;
        let lpages = usize::try_from(logical_pages)
            .map_err(|_| MediaError::Bad("too many logical pages"))?;
        let mut ftl = Ftl {
            geo,
            logical_pages,
            l2p: vec![UNMAPPED; lpages],
            p2l: vec![INVALID; pages],
            trim_seq: HashMap::new(),
            blocks: Vec::with_capacity(geo.blocks() as usize),
            dies: (0..geo.dies()).map(|_| DieInfo::default()).collect(),
            next_die: 0,
            seq: 1,
            stats: FlashStats {
                logical_pages,
                physical_pages: geo.pages(),
                ..FlashStats::default()
            },
            scratch: vec![0; geo.page_size as usize],
            syncer,
            media,
        };
        let trims = ftl.scan()?;
        ftl.apply_trims(&trims);
        for b in 0..geo.blocks() {
            let info = &mut ftl.blocks[b as usize];
            let die = &mut ftl.dies[geo.die_of_block(b) as usize];
            if ftl.media.write_pointer(b) == 0 {
                info.state = BlockUse::Free;
                die.free.push(b);
            } else {
                info.state = BlockUse::Closed;
            }
        }
        Ok(ftl)
    }

    /// Reads every block; maps the newest valid copy of each LBA; returns
    /// the trim records (page, seq, ranges).
    fn scan(&mut self) -> Result<Vec<TrimRecord>, MediaError> {
        let geo = self.geo;
        let ps = geo.page_size as usize;
        let mut data = vec![0u8; geo.pages_per_block as usize * ps];
        let mut best = vec![0u64; self.l2p.len()];
        let mut trims = Vec::new();
        for b in 0..geo.blocks() {
            let states = self.media.scan_block(b, &mut data)?;
            let mut info = BlockInfo {
                state: BlockUse::Closed,
                valid: 0,
                min_seq: u64::MAX,
            };
            for (p, st) in (0u32..).zip(states) {
                let ppa = geo.ppa(b, p);
                let meta = match st {
                    PageState::Erased => continue,
                    PageState::Torn => {
                        self.stats.torn_pages_at_mount += 1;
                        continue;
                    }
                    PageState::Valid(m) => m,
                };
                self.seq = self.seq.max(meta.seq + 1);
                match meta.kind {
                    PageKind::Trim => {
                        let page = &data[p as usize * ps..(p as usize + 1) * ps];
                        let ranges =
                            decode_trim(page, self.logical_pages).ok_or(MediaError::Metadata(
                                "a trim record with a valid checksum is malformed",
                            ))?;
                        trims.push(TrimRecord {
                            ppa,
                            seq: meta.seq,
                            copy: meta.lba,
                            ranges,
                        });
                    }
                    PageKind::Data => {
                        info.min_seq = info.min_seq.min(meta.seq);
                        let Ok(lba) = usize::try_from(meta.lba) else {
                            return Err(MediaError::Metadata(
                                "a data page names an LBA past the namespace",
                            ));
                        };
                        if lba >= self.l2p.len() {
                            return Err(MediaError::Metadata(
                                "a data page names an LBA past the namespace",
                            ));
                        }
                        if meta.seq > best[lba] {
                            best[lba] = meta.seq;
                            self.l2p[lba] = ppa;
                        }
                    }
                }
            }
            self.blocks.push(info);
        }
        // Trim records unmap whatever they are newer than.
        for t in &trims {
            for &(start, len) in &t.ranges {
                for lba in start..start + len {
                    let i = ix(lba);
                    if self.l2p[i] != UNMAPPED && best[i] < t.seq {
                        self.l2p[i] = UNMAPPED;
                    }
                }
            }
        }
        for (lba, &ppa) in self.l2p.iter().enumerate() {
            if ppa != UNMAPPED {
                self.p2l[ppa as usize] = lba as u64;
                let (b, _) = geo.split(ppa);
                self.blocks[b as usize].valid += 1;
            }
        }
        Ok(trims)
    }

    /// Keeps the latest copy of each trim record found as live (GC decides
    /// later whether it is still needed); older copies are garbage, so a
    /// block GC had emptied before a restart has no live page.
    fn apply_trims(&mut self, trims: &[TrimRecord]) {
        let mut latest: HashMap<u64, &TrimRecord> = HashMap::new();
        for t in trims {
            let e = latest.entry(t.seq).or_insert(t);
            if t.copy > e.copy {
                *e = t;
            }
        }
        for t in latest.into_values() {
            let (home, _) = self.geo.split(t.ppa);
            if !self.trim_needed(t.seq, home) {
                continue;
            }
            self.p2l[t.ppa as usize] = TRIM;
            self.trim_seq.insert(t.ppa, (t.seq, t.copy));
            let (b, _) = self.geo.split(t.ppa);
            self.blocks[b as usize].valid += 1;
        }
    }

    /// Namespace size in pages.
    pub fn logical_pages(&self) -> u64 {
        self.logical_pages
    }

    /// Geometry of the media.
    pub fn geometry(&self) -> &NandGeometry {
        &self.geo
    }

    /// Counters and current state.
    pub fn stats(&self) -> FlashStats {
        let mut s = self.stats.clone();
        let counts: Vec<u32> = (0..self.geo.blocks())
            .map(|b| self.media.erase_count(b))
            .collect();
        s.erase_count_min = counts.iter().copied().min().unwrap_or(0);
        s.erase_count_max = counts.iter().copied().max().unwrap_or(0);
        s.erase_count_mean =
            counts.iter().map(|&c| f64::from(c)).sum::<f64>() / counts.len().max(1) as f64;
        s.free_blocks = self.dies.iter().map(|d| d.free.len() as u64).sum();
        s.valid_pages = self.blocks.iter().map(|b| u64::from(b.valid)).sum();
        s
    }

    /// Read logical page `lba` into `buf` (zeroes if unmapped); returns
    /// when the read completes.
    pub(crate) fn read(&mut self, lba: u64, buf: &mut [u8], now: u64) -> Result<u64, FtlError> {
        let ppa = self.mapped(lba)?;
        if ppa == UNMAPPED {
            buf.fill(0);
            return Ok(now);
        }
        let (meta, done) = self.media.read(ppa, buf, now)?;
        if meta.kind != PageKind::Data || meta.lba != lba {
            return Err(FtlError::Media(MediaError::Bad(
                "mapped page holds another LBA",
            )));
        }
        self.stats.host_pages_read += 1;
        Ok(done)
    }

    fn mapped(&self, lba: u64) -> Result<u32, FtlError> {
        usize::try_from(lba)
            .ok()
            .and_then(|i| self.l2p.get(i).copied())
            .ok_or(FtlError::Media(MediaError::Bad("LBA past the end")))
    }

    /// Write logical page `lba`; returns when the program completes.
    pub(crate) fn write(&mut self, lba: u64, data: &[u8], now: u64) -> Result<u64, FtlError> {
        self.mapped(lba)?;
        let ppa = self.host_page(now)?;
        let meta = PageMeta {
            kind: PageKind::Data,
            lba,
            seq: self.next_seq(),
        };
        let done = self.media.program(ppa, data, &meta, now)?;
        self.stats.host_pages_written += 1;
        self.stats.media_pages_programmed += 1;
        self.unmap(lba);
        self.map(lba, ppa, meta.seq);
        Ok(done)
    }

    /// Unmap `count` pages from `start` (later reads return zeroes), with a
    /// trim record so that the unmap survives a restart.
    pub(crate) fn trim(&mut self, start: u64, count: u64, now: u64) -> Result<u64, FtlError> {
        let end = start
            .checked_add(count)
            .filter(|&e| e <= self.logical_pages)
            .ok_or(FtlError::Media(MediaError::Bad("trim past the end")))?;
        if !(start..end).any(|l| self.l2p[ix(l)] != UNMAPPED) {
            return Ok(now);
        }
        let ppa = self.host_page(now)?;
        let seq = self.next_seq();
        let mut page = vec![0u8; self.geo.page_size as usize];
        encode_trim(&mut page, start, count);
        let meta = PageMeta {
            kind: PageKind::Trim,
            lba: 0,
            seq,
        };
        let done = self.media.program(ppa, &page, &meta, now)?;
        self.stats.trim_records += 1;
        self.stats.media_pages_programmed += 1;
        self.p2l[ppa as usize] = TRIM;
        self.trim_seq.insert(ppa, (seq, 0));
        self.blocks[self.geo.split(ppa).0 as usize].valid += 1;
        for lba in start..end {
            self.unmap(lba);
        }
        Ok(done)
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq += 1;
        s
    }

    fn unmap(&mut self, lba: u64) {
        let old = std::mem::replace(&mut self.l2p[ix(lba)], UNMAPPED);
        if old != UNMAPPED {
            self.p2l[old as usize] = INVALID;
            let b = &mut self.blocks[self.geo.split(old).0 as usize];
            b.valid = b.valid.saturating_sub(1);
        }
    }

    fn map(&mut self, lba: u64, ppa: u32, seq: u64) {
        self.l2p[ix(lba)] = ppa;
        self.p2l[ppa as usize] = lba;
        let b = &mut self.blocks[self.geo.split(ppa).0 as usize];
        b.valid += 1;
        b.min_seq = b.min_seq.min(seq);
    }

    /// A page for a host write (or trim record): the next die in turn that
    /// has room, collecting garbage on a die that runs low first.
    fn host_page(&mut self, now: u64) -> Result<u32, FtlError> {
        let n = self.dies.len();
        for i in 0..n {
            let d = (self.next_die + i) % n;
            self.maybe_gc(d, now)?;
            if let Some(ppa) = self.alloc(d, Stream::Host, now)? {
                self.next_die = (d + 1) % n;
                return Ok(ppa);
            }
        }
        if self.dies.iter().any(|d| !d.reclaim.is_empty()) && !self.syncer.failed() {
            self.stats.write_waits += 1;
            return Err(FtlError::Wait);
        }
        Err(FtlError::NoSpace)
    }

    /// The next page of die `d`'s open block for `stream`, opening a new
    /// block (the least erased free one) when needed. `None`: no room.
    fn alloc(&mut self, d: usize, stream: Stream, now: u64) -> Result<Option<u32>, MediaError> {
        let ppb = self.geo.pages_per_block;
        let die = &mut self.dies[d];
        let slot = match stream {
            Stream::Host => &mut die.host,
            Stream::Gc => &mut die.gc,
        };
        if let Some(b) = *slot {
            let wp = self.media.write_pointer(b);
            if wp < ppb {
                return Ok(Some(self.geo.ppa(b, wp)));
            }
            self.blocks[b as usize].state = BlockUse::Closed;
            *slot = None;
        }
        self.reclaim(d, now)?;
        let reserve = if stream == Stream::Host {
            HOST_RESERVE
        } else {
            0
        };
        let die = &mut self.dies[d];
        if die.free.len() <= reserve {
            return Ok(None);
        }
        let media = &self.media;
        let Some((i, &b)) = die
            .free
            .iter()
            .enumerate()
            .min_by_key(|&(_, &b)| media.erase_count(b))
        else {
            return Ok(None);
        };
        die.free.swap_remove(i);
        match stream {
            Stream::Host => die.host = Some(b),
            Stream::Gc => die.gc = Some(b),
        }
        self.blocks[b as usize].state = BlockUse::Open;
        Ok(Some(self.geo.ppa(b, 0)))
    }

    /// Erase the die's cleaned blocks whose sync has finished.
    fn reclaim(&mut self, d: usize, now: u64) -> Result<(), MediaError> {
        if self.syncer.failed() {
            return Ok(());
        }
        let done = self.syncer.completed();
        while let Some(i) = self.dies[d].reclaim.iter().position(|&(_, t)| t <= done) {
            let (b, _) = self.dies[d].reclaim.swap_remove(i);
            if let Err(e) = self.media.erase(b, now) {
                self.dies[d].reclaim.push((b, 0));
                return Err(e);
            }
            self.stats.erases += 1;
            self.blocks[b as usize] = BlockInfo {
                state: BlockUse::Free,
                valid: 0,
                min_seq: u64::MAX,
            };
            self.dies[d].free.push(b);
        }
        Ok(())
    }

    /// Clean die `d` while it is low on free blocks.
    fn maybe_gc(&mut self, d: usize, now: u64) -> Result<(), MediaError> {
        self.reclaim(d, now)?;
        while self.dies[d].free.len() + self.dies[d].reclaim.len() < GC_LOW {
            let Some(victim) = self.pick_victim(d) else {
                break;
            };
            // Only a victim whose data can all move: a half-moved victim
            // would leave the die with neither a free block nor one to
            // erase. (Trim records can go to another die.)
            if self.gc_room(d) < self.live_data(victim) {
                break;
            }
            if !self.relocate(victim, now)? {
                break;
            }
            self.blocks[victim as usize].state = BlockUse::Reclaim;
            let ticket = self.syncer.request();
            self.dies[d].reclaim.push((victim, ticket));
            self.stats.gc_victims += 1;
        }
        Ok(())
    }

    /// Pages GC can still program on die `d` without an erase.
    fn gc_room(&self, d: usize) -> u64 {
        let ppb = u64::from(self.geo.pages_per_block);
        let open = self.dies[d]
            .gc
            .map_or(0, |b| ppb - u64::from(self.media.write_pointer(b)));
        open + self.dies[d].free.len() as u64 * ppb
    }

    /// Greedy: the die's closed block with the fewest valid pages, if
    /// cleaning it frees anything.
    fn pick_victim(&self, d: usize) -> Option<u32> {
        let first = u32::try_from(d)
            .unwrap_or(u32::MAX)
            .saturating_mul(self.geo.blocks_per_die);
        (first..first + self.geo.blocks_per_die)
            .filter(|&b| self.blocks[b as usize].state == BlockUse::Closed)
            .min_by_key(|&b| self.blocks[b as usize].valid)
            .filter(|&b| self.blocks[b as usize].valid < self.geo.pages_per_block)
    }

    /// Move the victim's live pages: data to the die's GC block (copyback),
    /// trim records there too or, when the die has no room, to another
    /// die. `false`: no room (the victim keeps what was not moved).
    fn relocate(&mut self, victim: u32, now: u64) -> Result<bool, MediaError> {
        let mut buf = std::mem::take(&mut self.scratch);
        let mut result = Ok(true);
        for p in 0..self.media.write_pointer(victim) {
            let src = self.geo.ppa(victim, p);
            let owner = self.p2l[src as usize];
            if owner == INVALID {
                continue;
            }
            let moved = match self.trim_seq.get(&src).copied() {
                Some((seq, copy)) => self.move_trim(src, seq, copy, &mut buf, now),
                None => self.move_data(src, owner, &mut buf, now),
            };
            match moved {
                Ok(true) => {}
                other => {
                    result = other;
                    break;
                }
            }
        }
        self.scratch = buf;
        result
    }

    fn move_data(
        &mut self,
        src: u32,
        lba: u64,
        buf: &mut [u8],
        now: u64,
    ) -> Result<bool, MediaError> {
        let (victim, _) = self.geo.split(src);
        let d = self.geo.die_of_block(victim) as usize;
        let Some(dst) = self.alloc(d, Stream::Gc, now)? else {
            return Ok(false);
        };
        let meta = PageMeta {
            kind: PageKind::Data,
            lba,
            seq: self.next_seq(),
        };
        self.media.copyback(src, dst, &meta, buf, now)?;
        self.stats.gc_pages_moved += 1;
        self.stats.media_pages_programmed += 1;
        self.unmap(lba);
        self.map(lba, dst, meta.seq);
        Ok(true)
    }

    /// A moved trim record keeps its sequence number (it unmaps what is
    /// older than the original) and counts its copies in `lba`. One that
    /// no other block needs is dropped.
    fn move_trim(
        &mut self,
        src: u32,
        seq: u64,
        copy: u64,
        buf: &mut [u8],
        now: u64,
    ) -> Result<bool, MediaError> {
        let (victim, _) = self.geo.split(src);
        let d = self.geo.die_of_block(victim) as usize;
        if self.trim_needed(seq, victim) {
            let meta = PageMeta {
                kind: PageKind::Trim,
                lba: copy + 1,
                seq,
            };
            let dst = if let Some(dst) = self.alloc(d, Stream::Gc, now)? {
                self.media.copyback(src, dst, &meta, buf, now)?;
                dst
            } else {
                let Some(dst) = self.trim_elsewhere(d, now)? else {
                    return Ok(false);
                };
                let (_, t) = self.media.read(src, buf, now)?;
                self.media.program(dst, buf, &meta, t)?;
                dst
            };
            self.stats.gc_pages_moved += 1;
            self.stats.media_pages_programmed += 1;
            self.trim_seq.insert(dst, (seq, copy + 1));
            self.p2l[dst as usize] = TRIM;
            self.blocks[self.geo.split(dst).0 as usize].valid += 1;
        }
        self.trim_seq.remove(&src);
        self.p2l[src as usize] = INVALID;
        self.blocks[victim as usize].valid -= 1;
        Ok(true)
    }

    /// A page on another die than `d` for a trim record, leaving that
    /// die's GC reserve alone.
    fn trim_elsewhere(&mut self, d: usize, now: u64) -> Result<Option<u32>, MediaError> {
        for e in (0..self.dies.len()).filter(|&e| e != d) {
            if let Some(p) = self.alloc(e, Stream::Host, now)? {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }

    /// Live data pages of a block (its valid pages less its trim records).
    fn live_data(&self, block: u32) -> u64 {
        (0..self.media.write_pointer(block))
            .map(|p| self.p2l[self.geo.ppa(block, p) as usize])
            .filter(|&o| o != INVALID && o != TRIM)
            .count() as u64
    }

    /// A trim record is needed while a block other than its own (`home`)
    /// that is not erased holds a data page older than the record. Data in
    /// its own block goes with it when that block is erased.
    fn trim_needed(&self, seq: u64, home: u32) -> bool {
        self.blocks.iter().enumerate().any(|(b, info)| {
            b != home as usize && info.state != BlockUse::Free && info.min_seq < seq
        })
    }
}

struct TrimRecord {
    ppa: u32,
    seq: u64,
    copy: u64,
    ranges: Vec<(u64, u64)>,
}

fn encode_trim(page: &mut [u8], start: u64, count: u64) {
    page[0..4].copy_from_slice(&TRIM_MAGIC.to_le_bytes());
    page[4..8].copy_from_slice(&1u32.to_le_bytes());
    page[8..16].copy_from_slice(&start.to_le_bytes());
    page[16..24].copy_from_slice(&count.to_le_bytes());
}

fn decode_trim(page: &[u8], logical_pages: u64) -> Option<Vec<(u64, u64)>> {
    let word = |at: usize, n: usize| -> Option<u64> {
        let b = page.get(at..at + n)?;
        let mut x = [0u8; 8];
        x[..n].copy_from_slice(b);
        Some(u64::from_le_bytes(x))
    };
    if word(0, 4)? != u64::from(TRIM_MAGIC) {
        return None;
    }
    let n = usize::try_from(word(4, 4)?).ok()?;
    let mut ranges = Vec::with_capacity(n.min(256));
    for i in 0..n {
        let start = word(8 + 16 * i, 8)?;
        let count = word(16 + 16 * i, 8)?;
        if start.checked_add(count)? > logical_pages {
            return None;
        }
        ranges.push((start, count));
    }
    Some(ranges)
}

/// A u64 known to index an in-memory table (checked at mount or by the caller).
fn ix(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

#[cfg(test)]
impl Ftl {
    /// Where a logical page is, for tests that damage the media file.
    pub(crate) fn physical_page(&self, lba: u64) -> Option<u32> {
        Some(self.l2p[ix(lba)]).filter(|&p| p != UNMAPPED)
    }
}
