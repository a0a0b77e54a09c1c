//! A zoned namespace on the emulated NAND (`zns:PATH?...`): no FTL, the
//! host writes each zone sequentially and the zone maps straight onto the
//! media.
//!
//! **Layout.** Zone `z` is a stripe of erase block `z` of every die: its
//! block `i` is page `i / dies` of block `z` of die `i % dies`, so
//! consecutive blocks of a zone go to different channels, then different
//! dies, as the FTL's writes do. A zone holds `dies x pages_per_block`
//! blocks (its capacity); its size is that rounded up to a power of two
//! (the blocks between capacity and size are never written and read as
//! zeroes). Zone Reset erases the zone's blocks; Finish programs the rest of
//! the zone with zeroes, so that the media says the zone is full.
//!
//! **Recovery.** At claim, each zone's write pointer is read from the
//! media's block write pointers (a programmed page has a non-zero OOB): a
//! zone whose blocks hold a gap (possible only when the host crashed with
//! writes to several dies of the zone in flight) cannot take the next
//! write in order, and comes back full, marked finished by the backend.
//! Partly written zones come back closed.
//!
//! Explicitly opened zones are kept in the media file's header (a bit per
//! zone, written before the Open completes) and come back explicitly open.
//!
//! **Commands run twice.** A runtime that died may have run a command whose
//! completion it never recorded; its successor runs it again, marked as a
//! rerun ([`crate::Journal`]). A rerun Write whose blocks are below the write
//! pointer completes without writing them (one that landed in part writes
//! the rest); an Append records its LBA in the journal before its data is
//! programmed, and a rerun Append goes where it went the first time; a
//! rerun Close of an empty zone succeeds.
//!
//! Reads may cross zones; blocks at or past a zone's write pointer read as
//! zeroes. Timing, durability (the flusher thread, a volatile write cache)
//! and the media file are the flash backend's.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::config::FlashSpec;
use super::nand::{
    Media, MediaError, NandGeometry, NandMedia, PageKind, PageMeta, Timing, HEADER_SPARE,
};
use super::queue::{drain_timed, Timed};
use super::sync::Flusher;
use super::zones::{Effect, Zones};
use super::{lock_media, MAX_FLASH_DEPTH};
use crate::iov::{gather, scatter};
use crate::{
    human_size, validate, Backend, BackendError, BackendQueue, Completion, Features, Geometry,
    IoError, IoKind, IoRequest, SubmitError, ZoneAction, ZoneDesc, ZoneError, ZoneGeometry,
    ZoneState,
};

/// The logical page count a zoned media file records in its header: the
/// flash FTL refuses it (more than the physical pages), and this backend
/// refuses a file the FTL formatted.
const ZNS_MARK: u64 = u64::MAX;

/// Open zones allowed when the spec names no `max_open`.
pub const DEFAULT_MAX_OPEN: u32 = 8;
/// Active zones allowed when the spec names no `max_active`.
pub const DEFAULT_MAX_ACTIVE: u32 = 12;

/// What `zns:` names: the flash geometry and timing keys (`op` excepted)
/// and the zone resources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZnsSpec {
    /// The media file, geometry and timing (`op_milli` unused).
    pub flash: FlashSpec,
    /// Most open zones, if given.
    pub max_open: Option<u32>,
    /// Most active zones, if given.
    pub max_active: Option<u32>,
}

impl ZnsSpec {
    fn limits(&self) -> (u32, u32) {
        let open = self.max_open.unwrap_or(DEFAULT_MAX_OPEN);
        let active = self.max_active.unwrap_or(DEFAULT_MAX_ACTIVE.max(open));
        (open, active)
    }
}

/// Parse what follows `zns:`: the `flash:` keys but `op`, and
/// `max_open=N`, `max_active=N`.
pub(crate) fn parse_spec(body: &str) -> Result<ZnsSpec, String> {
    if body.split(['?', '&']).any(|kv| kv.starts_with("op=")) {
        return Err("op= does not apply to a zoned namespace (no FTL)".to_owned());
    }
    let (path, opts) = super::config::split(body).map_err(|e| e.replace("'flash:", "'zns:"))?;
    let known: Vec<&str> = super::config::KEYS
        .into_iter()
        .filter(|k| *k != "op")
        .chain(["max_open", "max_active"])
        .collect();
    opts.check_once(&known).map_err(|e| e.to_string())?;
    let mut spec = ZnsSpec {
        flash: super::config::from_options(path, &opts)?,
        ..ZnsSpec::default()
    };
    let limit = |k: &str| {
        opts.get(k)
            .map(|o| o.number(1..=1 << 20))
            .transpose()
            .map_err(|e| e.to_string())
    };
    spec.max_open = limit("max_open")?;
    spec.max_active = limit("max_active")?;
    if spec.flash.zoned {
        return Err("media=zoned is for the FTL (flash:), not for zns:".to_owned());
    }
    if let (Some(o), Some(a)) = (spec.max_open, spec.max_active) {
        if o > a {
            return Err(format!("max_open={o} is more than max_active={a}"));
        }
    }
    Ok(spec)
}

impl fmt::Display for ZnsSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flash = self.flash.to_string();
        let body = flash.strip_prefix("flash:").unwrap_or(&flash);
        write!(f, "zns:{body}")?;
        let mut sep = if body.contains('?') { '&' } else { '?' };
        for (k, v) in [("max_open", self.max_open), ("max_active", self.max_active)] {
            if let Some(v) = v {
                write!(f, "{sep}{k}={v}")?;
                sep = '&';
            }
        }
        Ok(())
    }
}

/// Zone size and capacity (blocks) of a NAND geometry.
fn zone_shape(nand: &NandGeometry) -> (u64, u64) {
    let cap = u64::from(nand.dies()) * u64::from(nand.pages_per_block);
    (cap.next_power_of_two(), cap)
}

/// Most zones a media file can keep the open state of.
const MAX_ZONES: u64 = (HEADER_SPARE.end - HEADER_SPARE.start) * 8;

/// The zones an Open made explicitly open, a bit per zone in the media
/// file's header ([`HEADER_SPARE`]): written before the command completes
/// (a single byte, so a crash leaves the old bit or the new one), durable
/// with the sync that completes it.
struct OpenBits {
    file: File,
    bits: Vec<u8>,
}

impl OpenBits {
    fn load(file: File, zones: u64) -> io::Result<OpenBits> {
        let mut bits = vec![0; usize::try_from(zones.div_ceil(8)).unwrap_or(0)];
        file.read_exact_at(&mut bits, HEADER_SPARE.start)?;
        Ok(OpenBits { file, bits })
    }

    fn get(&self, z: u64) -> bool {
        let (i, bit) = (usize::try_from(z / 8).unwrap_or(usize::MAX), z % 8);
        self.bits.get(i).is_some_and(|b| b & (1 << bit) != 0)
    }

    fn set(&mut self, z: u64, on: bool) -> io::Result<()> {
        let (i, bit) = (usize::try_from(z / 8).unwrap_or(usize::MAX), z % 8);
        let Some(b) = self.bits.get_mut(i) else {
            return Ok(());
        };
        let new = if on {
            *b | (1 << bit)
        } else {
            *b & !(1 << bit)
        };
        if new != *b {
            self.file
                .write_all_at(&[new], HEADER_SPARE.start + i as u64)?;
            *b = new;
        }
        Ok(())
    }
}

/// The media and the zones, under one lock.
struct State {
    media: Box<dyn Media>,
    zones: Zones,
    open_bits: OpenBits,
    nand: NandGeometry,
    zone_blocks: u64,
    seq: u64,
    zero: Vec<u8>,
}

impl State {
    /// Physical page of zone-relative block `i` of zone `z`.
    fn ppa(&self, z: u64, i: u64) -> u32 {
        let dies = u64::from(self.nand.dies());
        let die = u32::try_from(i % dies).unwrap_or(0);
        let page = u32::try_from(i / dies).unwrap_or(0);
        let block = die * self.nand.blocks_per_die + u32::try_from(z).unwrap_or(0);
        self.nand.ppa(block, page)
    }

    /// Program zone-relative block `i` of zone `z`; returns when done.
    fn program(&mut self, z: u64, i: u64, data: &[u8], now: u64) -> Result<u64, MediaError> {
        self.seq += 1;
        let meta = PageMeta {
            kind: PageKind::Data,
            lba: z * self.zone_blocks + i,
            seq: self.seq,
        };
        let ppa = self.ppa(z, i);
        self.media.program(ppa, data, &meta, now)
    }

    /// Read block `lba` (zeroes at or past its zone's write pointer).
    fn read(&mut self, lba: u64, buf: &mut [u8], now: u64) -> Result<u64, MediaError> {
        let (z, i) = (lba / self.zone_blocks, lba % self.zone_blocks);
        match self.zones.get(z) {
            Some(zone) if i < zone.wp => {
                let ppa = self.ppa(z, i);
                Ok(self.media.read(ppa, buf, now)?.1)
            }
            _ => {
                buf.fill(0);
                Ok(now)
            }
        }
    }

    /// Do what an action needs on the media.
    fn apply(&mut self, effect: Effect, now: u64) -> Result<u64, MediaError> {
        let mut due = now;
        match effect {
            Effect::None => {}
            Effect::Pad { zone, from } => {
                let zero = std::mem::take(&mut self.zero);
                let mut r = Ok(());
                for i in from..self.zones.capacity() {
                    match self.program(zone, i, &zero, now) {
                        Ok(t) => due = due.max(t),
                        Err(e) => {
                            r = Err(e);
                            break;
                        }
                    }
                }
                self.zero = zero;
                r?;
            }
            Effect::Erase { zone } => {
                for die in 0..self.nand.dies() {
                    let block = die * self.nand.blocks_per_die + u32::try_from(zone).unwrap_or(0);
                    if self.media.write_pointer(block) > 0 {
                        due = due.max(self.media.erase(block, now)?);
                    }
                }
            }
        }
        Ok(due)
    }

    /// A zone action (one zone, or Select All); `rerun`: see [`crate::Journal`].
    fn action(
        &mut self,
        zone: u64,
        action: ZoneAction,
        all: bool,
        rerun: bool,
        now: u64,
    ) -> Result<u64, IoError> {
        let targets = if all {
            if action == ZoneAction::Open {
                self.zones.open_all().map_err(IoError::zone)?;
                for z in 0..self.zones.count() {
                    self.keep_open_state(z)?;
                }
                return Ok(now);
            }
            self.zones.select_all(action)
        } else {
            vec![zone]
        };
        let mut due = now;
        for z in targets {
            let empty = self
                .zones
                .get(z)
                .is_some_and(|z| z.state == ZoneState::Empty);
            if rerun && action == ZoneAction::Close && empty {
                // Closed the first time (an open zone with nothing written
                // becomes empty).
                continue;
            }
            let effect = self.zones.action(z, action).map_err(IoError::zone)?;
            self.keep_open_state(z)?;
            due = due.max(
                self.apply(effect, now)
                    .map_err(|e| IoError::from_errno(e.errno()))?,
            );
        }
        Ok(due)
    }

    /// Record whether zone `z` is explicitly open in the media's header.
    fn keep_open_state(&mut self, z: u64) -> Result<(), IoError> {
        let open = self
            .zones
            .get(z)
            .is_some_and(|z| z.state == ZoneState::ExplicitlyOpen);
        self.open_bits
            .set(z, open)
            .map_err(|e| IoError::from_errno(e.raw_os_error().unwrap_or(libc::EIO)))
    }

    /// How many of the `n` blocks a command writes from zone-relative block
    /// `at` of zone `z` are already on the media (`None`: none, or the zone
    /// was made full by recovery and says nothing).
    fn landed(&self, z: u64, at: u64, n: u64) -> Option<u64> {
        let zone = self.zones.get(z)?;
        (!zone.finished_by_backend && at < zone.wp).then(|| (zone.wp - at).min(n))
    }
}

/// Each zone's write pointer as the media says (`None`: a gap).
fn recover_write_pointers(media: &dyn Media, zones: u64) -> Vec<Option<u64>> {
    let nand = *media.geometry();
    let dies = nand.dies();
    (0..zones)
        .map(|z| {
            let z = u32::try_from(z).unwrap_or(0);
            let wps: Vec<u64> = (0..dies)
                .map(|d| u64::from(media.write_pointer(d * nand.blocks_per_die + z)))
                .collect();
            let total: u64 = wps.iter().sum();
            // In order, die d holds ceil((total - d) / dies) pages.
            let consistent = wps.iter().enumerate().all(|(d, &wp)| {
                let d = d as u64;
                wp == (total + u64::from(dies) - 1 - d) / u64::from(dies)
            });
            consistent.then_some(total)
        })
        .collect()
}

struct Shared {
    state: Mutex<State>,
    flusher: Flusher,
    epoch: Instant,
    /// Bytes of data copied between requests and the media.
    pub(crate) copied: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Claim {
    shared: Arc<Shared>,
    _lock: File,
}

/// A zoned namespace on emulated flash (see the module docs).
pub struct ZnsBackend {
    spec: ZnsSpec,
    nand: NandGeometry,
    timing: Timing,
    geometry: Geometry,
    zoned: ZoneGeometry,
    claim: Mutex<Option<Claim>>,
}

impl ZnsBackend {
    /// Open (creating when absent) the media file and check it against the
    /// spec. The zones are recovered at [`Backend::claim`].
    pub fn open(spec: &ZnsSpec) -> Result<ZnsBackend, BackendError> {
        let shown = spec.to_string();
        let cfg = |reason: String| BackendError::Config(format!("{shown}: {reason}"));
        let f = &spec.flash;
        let mut media =
            NandMedia::open(&f.path, f.new_geometry(), None).map_err(|e| cfg(e.to_string()))?;
        let nand = *media.geometry();
        let wrong = f.geometry_mismatches(&nand);
        if !wrong.is_empty() {
            return Err(cfg(format!(
                "the media file has another geometry: {}",
                wrong.join(", ")
            )));
        }
        match media.logical_pages() {
            0 => media
                .set_logical_pages(ZNS_MARK)
                .map_err(|e| cfg(e.to_string()))?,
            ZNS_MARK => {}
            _ => {
                return Err(cfg(
                    "the media was formatted for the FTL (flash:), not as zones".to_owned(),
                ))
            }
        }
        let (zone_blocks, capacity) = zone_shape(&nand);
        let zones = u64::from(nand.blocks_per_die);
        if zones > MAX_ZONES {
            return Err(cfg(format!(
                "{zones} zones (blocks=): at most {MAX_ZONES}, as the media's header keeps which are open"
            )));
        }
        let num_blocks = zone_blocks
            .checked_mul(zones)
            .filter(|n| u32::try_from(*n).is_ok())
            .ok_or_else(|| cfg("too many blocks".to_owned()))?;
        let (max_open, max_active) = spec.limits();
        Ok(ZnsBackend {
            spec: spec.clone(),
            nand,
            timing: f.timing(nand.page_size),
            geometry: Geometry {
                block_size: nand.page_size,
                num_blocks,
            },
            zoned: ZoneGeometry {
                zone_blocks,
                capacity,
                zones,
                max_open,
                max_active,
            },
            claim: Mutex::new(None),
        })
    }

    fn mount(&self) -> Result<Claim, BackendError> {
        let path = &self.spec.flash.path;
        let lock = lock_media(path)?;
        let shown = self.spec.to_string();
        let media_err = |e: MediaError| BackendError::Config(format!("{shown}: {e}"));
        let media = NandMedia::open(path, self.nand, Some(self.timing)).map_err(media_err)?;
        if *media.geometry() != self.nand || media.logical_pages() != ZNS_MARK {
            return Err(BackendError::Config(format!(
                "{shown}: the media file changed between open and claim"
            )));
        }
        let sync_file = media.sync_handle().map_err(media_err)?;
        let flusher = Flusher::start(sync_file).map_err(|source| BackendError::Io {
            what: "cannot start the flusher thread for",
            path: path.clone(),
            source,
        })?;
        let z = self.zoned;
        let wps = recover_write_pointers(&media, z.zones);
        let mut zones = Zones::recovered(&wps, z.capacity, z.max_open, z.max_active);
        let gaps = wps.iter().filter(|w| w.is_none()).count();
        if gaps > 0 {
            tracing::warn!(path = %path.display(), zones = gaps, "zones with a gap in their data (a crash with writes in flight): made full");
        }
        let bits_file = media.sync_handle().map_err(media_err)?;
        let mut open_bits =
            OpenBits::load(bits_file, z.zones).map_err(|source| BackendError::Io {
                what: "cannot read the open zones of",
                path: path.clone(),
                source,
            })?;
        let opened: Vec<u64> = (0..z.zones).filter(|&i| open_bits.get(i)).collect();
        for i in opened {
            let full = zones.get(i).is_none_or(|z| z.state == ZoneState::Full);
            if full || zones.action(i, ZoneAction::Open).is_err() {
                tracing::warn!(path = %path.display(), zone = i, "an explicitly opened zone cannot be open again: it stays as the media has it");
                open_bits.set(i, false).map_err(|source| BackendError::Io {
                    what: "cannot write the open zones of",
                    path: path.clone(),
                    source,
                })?;
            }
        }
        let (open, active) = zones.in_use();
        tracing::info!(path = %path.display(), zones = z.zones, active, open, "zoned media mounted");
        Ok(Claim {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    media: Box::new(media),
                    zones,
                    open_bits,
                    nand: self.nand,
                    zone_blocks: z.zone_blocks,
                    seq: 0,
                    zero: vec![0; self.nand.page_size as usize],
                }),
                flusher,
                epoch: Instant::now(),
                copied: std::sync::atomic::AtomicU64::new(0),
            }),
            _lock: lock,
        })
    }

    fn shared(&self) -> Option<Arc<Shared>> {
        let c = self.claim.lock().unwrap_or_else(PoisonError::into_inner);
        c.as_ref().map(|c| Arc::clone(&c.shared))
    }
}

impl Backend for ZnsBackend {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn features(&self) -> Features {
        Features {
            volatile_write_cache: true,
            write_zeroes: false,
            deallocate: false,
        }
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn BackendQueue>, BackendError> {
        if depth == 0 || depth > MAX_FLASH_DEPTH {
            return Err(BackendError::Config(format!(
                "zns: queue depth {depth} is not between 1 and {MAX_FLASH_DEPTH}"
            )));
        }
        let Some(shared) = self.shared() else {
            return Err(BackendError::Config(format!(
                "{}: queue opened before the backend was claimed",
                self.spec
            )));
        };
        Ok(Box::new(ZnsQueue {
            shared,
            geometry: self.geometry,
            zoned: self.zoned,
            depth: depth as usize,
            page: vec![0; self.geometry.block_size as usize],
            timed: BinaryHeap::new(),
            syncing: Vec::new(),
            ready: Vec::new(),
            nr: 0,
        }))
    }

    fn flush(&self) -> Result<(), BackendError> {
        if let Some(s) = self.shared() {
            let file = s.lock().media.sync_handle();
            file.and_then(|f| {
                f.sync_data().map_err(|source| MediaError::Io {
                    what: "cannot sync",
                    path: self.spec.flash.path.clone(),
                    source,
                })
            })
            .map_err(|e| BackendError::Flush {
                target: self.spec.to_string(),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        Ok(())
    }

    fn close_open_zones(&self) -> Result<(), BackendError> {
        let Some(s) = self.shared() else {
            return Ok(());
        };
        let mut st = s.lock();
        let mut closed = 0;
        for z in 0..st.zones.count() {
            let open = st.zones.get(z).is_some_and(|z| {
                matches!(
                    z.state,
                    ZoneState::ImplicitlyOpen | ZoneState::ExplicitlyOpen
                )
            });
            if open {
                // Close is valid from both open states.
                let _ = st.zones.action(z, ZoneAction::Close);
                closed += 1;
            }
        }
        let io = |source: io::Error| BackendError::Io {
            what: "cannot record the closed zones in",
            path: self.spec.flash.path.clone(),
            source,
        };
        for z in 0..st.zones.count() {
            let open = st
                .zones
                .get(z)
                .is_some_and(|z| z.state == ZoneState::ExplicitlyOpen);
            st.open_bits.set(z, open).map_err(io)?;
        }
        st.open_bits.file.sync_data().map_err(io)?;
        if closed > 0 {
            tracing::info!(path = %self.spec.flash.path.display(), zones = closed, "controller reset or shut down: open zones closed");
        }
        Ok(())
    }

    fn copied_bytes(&self) -> u64 {
        self.claim
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, |c| {
                c.shared.copied.load(std::sync::atomic::Ordering::Relaxed)
            })
    }

    fn describe(&self) -> String {
        let n = &self.nand;
        let z = &self.zoned;
        format!(
            "{} ({}, {} B blocks, {} zones of {} blocks (capacity {}), {} open / {} active at most; NAND {} ch x {} dies x {} blocks x {} pages)",
            self.spec,
            human_size(self.geometry.size_bytes()),
            self.geometry.block_size,
            z.zones,
            z.zone_blocks,
            z.capacity,
            z.max_open,
            z.max_active,
            n.channels,
            n.dies_per_channel,
            n.blocks_per_die,
            n.pages_per_block,
        )
    }

    fn claim(&self) -> Result<(), BackendError> {
        let mut c = self.claim.lock().unwrap_or_else(PoisonError::into_inner);
        if c.is_none() {
            *c = Some(self.mount()?);
        }
        Ok(())
    }

    fn zoned(&self) -> Option<ZoneGeometry> {
        Some(self.zoned)
    }

    fn report_zones(&self, from: u64, max: usize) -> Vec<ZoneDesc> {
        let Some(shared) = self.shared() else {
            return Vec::new();
        };
        let st = shared.lock();
        let zb = self.zoned.zone_blocks;
        (from / zb..st.zones.count())
            .take(max)
            .filter_map(|i| {
                let z = st.zones.get(i)?;
                Some(ZoneDesc {
                    start: i * zb,
                    capacity: self.zoned.capacity,
                    write_pointer: i * zb + z.wp,
                    state: z.state,
                    finished_by_backend: z.finished_by_backend,
                })
            })
            .collect()
    }
}

struct ZnsQueue {
    shared: Arc<Shared>,
    geometry: Geometry,
    zoned: ZoneGeometry,
    depth: usize,
    page: Vec<u8>,
    timed: BinaryHeap<Reverse<Timed>>,
    /// (ticket, tag, value) of Flushes and FUA writes past their time.
    syncing: Vec<(u64, u64, u64)>,
    ready: Vec<Completion>,
    nr: u64,
}

impl ZnsQueue {
    fn file(&mut self, tag: u64, due: u64, result: Result<u64, IoError>, fua: bool) {
        self.nr += 1;
        let ticket = (fua && result.is_ok()).then(|| self.shared.flusher.syncer().request());
        let (result, value) = match result {
            Ok(v) => (Ok(()), v),
            Err(e) => (Err(e), 0),
        };
        self.timed.push(Reverse(Timed {
            due,
            nr: self.nr,
            tag,
            result,
            value,
            ticket,
        }));
    }

    /// # Safety
    ///
    /// The iovecs must be valid for writes of `req.len` bytes.
    unsafe fn read(&mut self, req: &IoRequest<'_>, now: u64) -> (u64, Result<u64, IoError>) {
        let bs = u64::from(self.geometry.block_size);
        let shared = Arc::clone(&self.shared);
        let mut st = shared.lock();
        let mut due = now;
        for i in 0..req.len / bs {
            match st.read(req.offset / bs + i, &mut self.page, now) {
                Ok(t) => due = due.max(t),
                Err(e) => return (due, Err(IoError::from_errno(e.errno()))),
            }
            // SAFETY: the caller's contract; `i * bs + bs <= req.len`.
            unsafe { scatter(req.iov, i * bs, &self.page) };
            self.shared
                .copied
                .fetch_add(bs, std::sync::atomic::Ordering::Relaxed);
        }
        (due, Ok(0))
    }

    /// A write (`append`: at the write pointer of the zone starting at
    /// `offset`); returns the byte offset written.
    ///
    /// # Safety
    ///
    /// The iovecs must be valid for reads of `req.len` bytes.
    unsafe fn write(
        &mut self,
        req: &IoRequest<'_>,
        append: bool,
        now: u64,
    ) -> (u64, Result<u64, IoError>) {
        let bs = u64::from(self.geometry.block_size);
        let zb = self.zoned.zone_blocks;
        let (lba, n) = (req.offset / bs, req.len / bs);
        let (z, at) = (lba / zb, lba % zb);
        if append && at != 0 {
            return (now, Err(IoError::zone(ZoneError::NotZoneStart)));
        }
        let shared = Arc::clone(&self.shared);
        let mut st = shared.lock();
        // A rerun: where its data went the first time, and how much of it
        // is on the media.
        let journal = req.journal.filter(|j| j.rerun);
        let first_place = if append {
            journal
                .and_then(|j| j.placed_lba())
                .filter(|p| p / zb == z)
                .map(|p| p % zb)
        } else {
            Some(at)
        };
        let landed = journal
            .and(first_place)
            .and_then(|t| Some((t, st.landed(z, t, n)?)));
        let placed = match landed {
            Some((t, k)) if k == n => return (now, Ok((z * zb + t) * bs)),
            Some((t, k)) => st.zones.write(z, Some(t + k), n - k).map(|_| (t, k)),
            None => st.zones.write(z, (!append).then_some(at), n).map(|s| {
                if append {
                    if let Some(j) = req.journal {
                        j.place(z * zb + s);
                    }
                }
                (s, 0)
            }),
        };
        let (start, done) = match placed {
            Ok(p) => p,
            Err(e) => return (now, Err(IoError::zone(e))),
        };
        if let Err(e) = st.keep_open_state(z) {
            return (now, Err(e));
        }
        let mut due = now;
        for i in done..n {
            // SAFETY: the caller's contract; `i * bs + bs <= req.len`.
            unsafe { gather(req.iov, i * bs, &mut self.page) };
            self.shared
                .copied
                .fetch_add(bs, std::sync::atomic::Ordering::Relaxed);
            match st.program(z, start + i, &self.page, now) {
                Ok(t) => due = due.max(t),
                Err(e) => return (due, Err(IoError::from_errno(e.errno()))),
            }
        }
        (due, Ok((z * zb + start) * bs))
    }

    fn next_due(&self) -> Option<u64> {
        self.timed.peek().map(|Reverse(t)| t.due)
    }
}

/// Checks of a zoned request beyond the common ones.
fn validate_zoned(req: &IoRequest<'_>, geometry: Geometry) -> Result<(), SubmitError> {
    let plain = IoRequest {
        tag: req.tag,
        kind: if req.kind.has_data() {
            IoKind::Write
        } else {
            IoKind::Flush
        },
        offset: req.offset,
        len: req.len,
        iov: req.iov,
        owner: 0,
        journal: None,
    };
    match req.kind {
        IoKind::Zone { all, .. } => {
            if req.len != 0 || !req.iov.is_empty() {
                return Err(SubmitError::Invalid("zone action with a length or iovecs"));
            }
            let bs = u64::from(geometry.block_size);
            if !all && (req.offset % bs != 0 || req.offset / bs >= geometry.num_blocks) {
                return Err(SubmitError::Invalid("zone action past the end"));
            }
            Ok(())
        }
        IoKind::WriteZeroes | IoKind::WriteZeroesFua | IoKind::Deallocate => {
            Err(SubmitError::Invalid(
                "Write Zeroes and Deallocate are not supported on a zoned namespace",
            ))
        }
        _ => validate(&plain, geometry),
    }
}

// SAFETY: no raw pointers are kept past `submit` (data moves inside it);
// the queue is used by one thread at a time (`&mut self`).
unsafe impl Send for ZnsQueue {}

impl BackendQueue for ZnsQueue {
    unsafe fn submit(&mut self, req: &IoRequest<'_>) -> Result<(), SubmitError> {
        validate_zoned(req, self.geometry)?;
        if self.in_flight() >= self.depth {
            return Err(SubmitError::Full);
        }
        let now = self.shared.now();
        let bs = u64::from(self.geometry.block_size);
        match req.kind {
            IoKind::Read => {
                // SAFETY: the caller's contract (valid, writable iovecs).
                let (due, r) = unsafe { self.read(req, now) };
                self.file(req.tag, due, r, false);
            }
            IoKind::Flush => {
                let ticket = self.shared.flusher.syncer().request();
                self.syncing.push((ticket, req.tag, 0));
            }
            IoKind::Write | IoKind::WriteFua | IoKind::ZoneAppend { .. } => {
                let append = matches!(req.kind, IoKind::ZoneAppend { .. });
                let fua = matches!(
                    req.kind,
                    IoKind::WriteFua | IoKind::ZoneAppend { fua: true }
                );
                // SAFETY: the caller's contract (valid iovecs).
                let (due, r) = unsafe { self.write(req, append, now) };
                self.file(req.tag, due, r, fua);
            }
            IoKind::Zone { action, all } => {
                let zone = req.offset / bs / self.zoned.zone_blocks;
                let start = zone * self.zoned.zone_blocks * bs;
                let r = if !all && start != req.offset {
                    Err(IoError::zone(ZoneError::NotZoneStart))
                } else {
                    let rerun = req.journal.is_some_and(|j| j.rerun);
                    self.shared.lock().action(zone, action, all, rerun, now)
                };
                let due = *r.as_ref().unwrap_or(&now);
                // A zone's new state (Reset's erases, Finish's padding) is
                // durable when the command completes, like a FUA write.
                self.file(req.tag, due, r.map(|_| 0), true);
            }
            IoKind::WriteZeroes | IoKind::WriteZeroesFua | IoKind::Deallocate => {
                return Err(SubmitError::Invalid("not supported on a zoned namespace"))
            }
        }
        Ok(())
    }

    fn kick(&mut self) -> Result<(), BackendError> {
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        let now = self.shared.now();
        while self.next_due().is_some_and(|due| due <= now) {
            let Some(Reverse(t)) = self.timed.pop() else {
                break;
            };
            match t.ticket {
                Some(ticket) => self.syncing.push((ticket, t.tag, t.value)),
                None => self.ready.push(Completion {
                    tag: t.tag,
                    result: t.result,
                    value: t.value,
                }),
            }
        }
        let syncer = Arc::clone(self.shared.flusher.syncer());
        let ready = &mut self.ready;
        self.syncing
            .retain(|&(ticket, tag, value)| match syncer.status(ticket) {
                None => true,
                Some(ok) => {
                    ready.push(Completion {
                        tag,
                        result: if ok {
                            Ok(())
                        } else {
                            Err(IoError::from_errno(libc::EIO))
                        },
                        value,
                    });
                    false
                }
            });
        let n = self.ready.len();
        out.append(&mut self.ready);
        n
    }

    fn in_flight(&self) -> usize {
        self.timed.len() + self.syncing.len() + self.ready.len()
    }

    fn drain(&mut self, out: &mut Vec<Completion>, timeout: Duration) -> usize {
        drain_timed(self, out, timeout)
    }

    fn wait_completion(&mut self, timeout: Duration) {
        let wait = match self.next_due() {
            Some(due) if self.syncing.is_empty() => {
                Duration::from_nanos(due.saturating_sub(self.shared.now())).min(timeout)
            }
            _ => timeout.min(Duration::from_micros(100)),
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests;
