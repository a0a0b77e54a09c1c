//! Emulated NAND flash kept in one file: geometry, per-page spare (OOB)
//! metadata, program order and erase-before-write, erase counts, and a
//! timing model of dies and channels.
//!
//! # File layout (all integers little endian)
//!
//! ```text
//! 0          header, 4 KiB: magic "LEAPNAND", version, geometry, the FTL's
//!            logical page count, crc32c of the header; from 1 KiB, bytes
//!            the media leaves to its user (a zoned namespace's open zones)
//! 4 KiB      block table: 16 bytes per erase block (erase count, crc32c),
//!            padded to 4 KiB
//! then       one slot per erase block, in order (die-major):
//!              OOB area: pages_per_block x oob_size bytes, padded to 4 KiB
//!              data: pages_per_block x page_size bytes
//! ```
//!
//! A page's OOB holds its metadata record ([`PageMeta`] plus a crc32c of the
//! page's data and one of the record). An erased OOB is all zeroes (real NAND
//! reads 0xFF; zeroes let a new media file be sparse). Erasing a block
//! zeroes its OOB area and bumps its erase count in the block table; the
//! data bytes are left as they were, as they are never read before the page
//! is programmed again.
//!
//! A program writes the page's data, then its OOB (two `pwrite`s into the
//! page cache): a program that a crash cut short leaves either an erased OOB
//! (the page reads as never programmed) or an OOB whose data crc does not
//! match (a torn page). Both are found by [`NandMedia::scan_block`].
//!
//! # Timing
//!
//! Time is in nanoseconds since the media was opened, passed in by the
//! caller (so tests can drive it). Each die and each channel has a
//! busy-until time. A read occupies its die for `read_ns`, then die and
//! channel for `xfer_ns` (the page leaving the die's register); a program
//! first moves the data over the channel (`xfer_ns`), then occupies the die
//! for `program_ns`; an erase occupies the die for `erase_ns`. A copy inside a
//! die (GC's copyback) costs read + program and no channel time. Every
//! operation returns when it would complete; nothing here sleeps: the
//! data moves at once, and callers report completion when that time comes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Bytes of the header at offset 0.
const HEADER_LEN: u64 = 4096;
/// [`HEADER_LEN`] as a buffer length.
const HEADER_BYTES: usize = 4096;
/// Bytes per block-table entry.
const TABLE_ENTRY: usize = 16;
const MAGIC: &[u8; 8] = b"LEAPNAND";
const VERSION: u32 = 1;
/// Magic at the start of a programmed page's OOB record.
const OOB_MAGIC: u32 = 0x424f_504c; // "LPOB"
/// Bytes of the OOB record (the smallest `oob_size`).
pub const OOB_RECORD: u32 = 36;
/// Alignment of the table and of each block's OOB area and data.
const ALIGN: u64 = 4096;

/// Sizes of the emulated NAND array. Die `d` sits on channel
/// `d % channels`, so consecutive dies are on different channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NandGeometry {
    /// Channels (independent buses).
    pub channels: u32,
    /// Dies (LUNs) per channel; each works on one operation at a time.
    pub dies_per_channel: u32,
    /// Erase blocks per die.
    pub blocks_per_die: u32,
    /// Pages per erase block.
    pub pages_per_block: u32,
    /// Data bytes per page (a power of two, 512..=65536).
    pub page_size: u32,
    /// Spare bytes per page (at least [`OOB_RECORD`]).
    pub oob_size: u32,
}

impl Default for NandGeometry {
    /// 2 channels x 2 dies x 64 blocks x 64 pages of 4 KiB: 64 MiB.
    fn default() -> Self {
        NandGeometry {
            channels: 2,
            dies_per_channel: 2,
            blocks_per_die: 64,
            pages_per_block: 64,
            page_size: 4096,
            oob_size: 64,
        }
    }
}

impl NandGeometry {
    /// Number of dies.
    pub fn dies(&self) -> u32 {
        self.channels * self.dies_per_channel
    }
    /// Number of erase blocks.
    pub fn blocks(&self) -> u32 {
        self.dies() * self.blocks_per_die
    }
    /// Number of pages.
    pub fn pages(&self) -> u64 {
        u64::from(self.blocks()) * u64::from(self.pages_per_block)
    }
    /// Die of a block.
    pub fn die_of_block(&self, block: u32) -> u32 {
        block / self.blocks_per_die
    }
    /// Physical page number of page `page` of block `block`.
    pub fn ppa(&self, block: u32, page: u32) -> u32 {
        block * self.pages_per_block + page
    }
    /// (block, page) of a physical page number.
    pub fn split(&self, ppa: u32) -> (u32, u32) {
        (ppa / self.pages_per_block, ppa % self.pages_per_block)
    }

    /// [`split`](Self::split), for a page number a caller gave.
    pub fn locate(&self, ppa: u32) -> Result<(u32, u32), MediaError> {
        if u64::from(ppa) >= self.pages() {
            return Err(MediaError::Bad("page number past the end"));
        }
        Ok(self.split(ppa))
    }

    /// The die a copyback from page `src` to page `dst` runs on (both
    /// must exist and be on it).
    pub fn copyback_die(&self, src: u32, dst: u32) -> Result<u32, MediaError> {
        let (sb, _) = self.locate(src)?;
        let (db, _) = self.locate(dst)?;
        let die = self.die_of_block(sb);
        if die != self.die_of_block(db) {
            return Err(MediaError::Bad("copyback between dies"));
        }
        Ok(die)
    }

    /// Block `block` exists.
    pub fn check_block(&self, block: u32) -> Result<(), MediaError> {
        if block >= self.blocks() {
            return Err(MediaError::Bad("block number past the end"));
        }
        Ok(())
    }

    /// `len` bytes hold block `block`'s data ([`Media::scan_block`]).
    pub fn check_scan(&self, block: u32, len: usize) -> Result<(), MediaError> {
        self.check_block(block)?;
        if len != self.pages_per_block as usize * self.page_size as usize {
            return Err(MediaError::Bad("scan buffer is not one block"));
        }
        Ok(())
    }

    /// Checks the sizes: every count non-zero, page size a power of two in
    /// 512..=65536, OOB large enough, page numbers fitting in 32 bits, and
    /// the file size in 64.
    pub fn validate(&self) -> Result<(), String> {
        let counts = [
            ("channels", self.channels),
            ("dies", self.dies_per_channel),
            ("blocks", self.blocks_per_die),
            ("pages", self.pages_per_block),
        ];
        for (name, v) in counts {
            if v == 0 {
                return Err(format!("{name} must not be zero"));
            }
        }
        if !self.page_size.is_power_of_two() || !(512..=65536).contains(&self.page_size) {
            return Err(format!(
                "page size {} is not a power of two between 512 and 65536",
                self.page_size
            ));
        }
        if !(OOB_RECORD..=4096).contains(&self.oob_size) {
            return Err(format!(
                "oob size {} is not between {OOB_RECORD} and 4096",
                self.oob_size
            ));
        }
        let dies = u64::from(self.channels) * u64::from(self.dies_per_channel);
        let blocks = dies * u64::from(self.blocks_per_die);
        let pages = blocks * u64::from(self.pages_per_block);
        // Page numbers are u32 in the FTL's maps, u32::MAX is its marker.
        if dies > 4096 || blocks >= u64::from(u32::MAX) || pages >= u64::from(u32::MAX) {
            return Err(format!(
                "{dies} dies, {blocks} blocks, {pages} pages: too many (at most 4096 dies and 2^32 - 1 pages)"
            ));
        }
        if self.file_len_checked().is_none() {
            return Err("media too large".to_owned());
        }
        Ok(())
    }

    fn oob_area_len(&self) -> u64 {
        (u64::from(self.pages_per_block) * u64::from(self.oob_size)).next_multiple_of(ALIGN)
    }
    fn block_slot_len(&self) -> u64 {
        self.oob_area_len() + u64::from(self.pages_per_block) * u64::from(self.page_size)
    }
    fn table_len(&self) -> u64 {
        (u64::from(self.blocks()) * TABLE_ENTRY as u64).next_multiple_of(ALIGN)
    }
    fn block_offset(&self, block: u32) -> u64 {
        HEADER_LEN + self.table_len() + u64::from(block) * self.block_slot_len()
    }
    fn file_len_checked(&self) -> Option<u64> {
        self.block_slot_len()
            .checked_mul(u64::from(self.blocks()))?
            .checked_add(HEADER_LEN + self.table_len())
    }
    /// Size of the media file.
    pub fn file_len(&self) -> u64 {
        self.file_len_checked().unwrap_or(u64::MAX)
    }
    /// File offset of a page's data.
    pub(crate) fn data_offset(&self, ppa: u32) -> u64 {
        let (block, page) = self.split(ppa);
        self.block_offset(block) + self.oob_area_len() + u64::from(page) * u64::from(self.page_size)
    }
    /// File offset of a page's OOB.
    pub(crate) fn oob_offset(&self, ppa: u32) -> u64 {
        let (block, page) = self.split(ppa);
        self.block_offset(block) + u64::from(page) * u64::from(self.oob_size)
    }
}

/// Latencies of the timing model, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Page read (array to the die's register).
    pub read_ns: u64,
    /// Page program (register to the array).
    pub program_ns: u64,
    /// Block erase.
    pub erase_ns: u64,
    /// One page over the channel.
    pub xfer_ns: u64,
}

impl Timing {
    /// FEMU's figures (read 40 us, program 200 us, erase 2 ms) and a page
    /// moved at 800 MB/s (an ONFI 4 bus): 5.12 us for 4 KiB.
    pub fn femu(page_size: u32) -> Timing {
        Timing {
            read_ns: 40_000,
            program_ns: 200_000,
            erase_ns: 2_000_000,
            xfer_ns: u64::from(page_size) * 10 / 8,
        }
    }
    /// Everything completes at once (tests, write-amplification runs).
    pub const ZERO: Timing = Timing {
        read_ns: 0,
        program_ns: 0,
        erase_ns: 0,
        xfer_ns: 0,
    };
}

/// What a programmed page holds, kept in its OOB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageMeta {
    /// Data or a trim record.
    pub kind: PageKind,
    /// Logical page (data pages); 0 for trim records.
    pub lba: u64,
    /// Write sequence number: a larger one is a newer write.
    pub seq: u64,
}

/// Kinds of programmed pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageKind {
    /// A logical page's data.
    Data,
    /// A list of deallocated logical ranges.
    Trim,
}

impl PageKind {
    fn code(self) -> u32 {
        match self {
            PageKind::Data => 1,
            PageKind::Trim => 2,
        }
    }
}

/// A page as recovery finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageState {
    /// Never programmed since the last erase.
    Erased,
    /// Programmed, with intact data and metadata.
    Valid(PageMeta),
    /// Programmed, but the metadata or the data fail their checksum (a
    /// program cut short by a crash).
    Torn,
}

/// Errors of the media.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// A system call on the media file failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The media file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file is not a usable media file.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The media file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Pages of a block are programmed in order, once per erase.
    #[error("block {block}: program of page {page} but the next programmable page is {next} (pages are programmed in order, once per erase)")]
    ProgramOrder {
        /// Block.
        block: u32,
        /// Page asked for.
        page: u32,
        /// Next programmable page (`pages_per_block` when the block is full).
        next: u32,
    },
    /// A page read before it was programmed.
    #[error("page {ppa} is erased")]
    Erased {
        /// Physical page number.
        ppa: u32,
    },
    /// A page whose data fails its checksum.
    #[error("page {ppa}: data does not match its checksum")]
    Uncorrectable {
        /// Physical page number.
        ppa: u32,
    },
    /// Metadata that passed its checksum but makes no sense (written by
    /// something else, or a bug).
    #[error("media metadata is inconsistent: {0}")]
    Metadata(&'static str),
    /// A page or block number past the end, or a buffer of the wrong size.
    #[error("bad address or buffer: {0}")]
    Bad(&'static str),
}

impl MediaError {
    /// The errno an I/O request sees.
    pub fn errno(&self) -> i32 {
        match self {
            MediaError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        }
    }
}

/// Storage the FTL runs on: pages programmed in order inside erase blocks,
/// with spare bytes per page for metadata. [`NandMedia`] emulates NAND in a
/// file; a zoned block device (zones as erase blocks, a zone reset as an
/// erase) is the other intended kind.
///
/// Data moves synchronously; the returned times (nanoseconds on the
/// caller's clock) say when the operation would have completed.
pub trait Media: Send {
    /// Sizes.
    fn geometry(&self) -> &NandGeometry;
    /// Read a programmed page's data into `data` (`page_size` bytes).
    fn read(&mut self, ppa: u32, data: &mut [u8], now: u64) -> Result<(PageMeta, u64), MediaError>;
    /// Program the next page of a block.
    fn program(
        &mut self,
        ppa: u32,
        data: &[u8],
        meta: &PageMeta,
        now: u64,
    ) -> Result<u64, MediaError>;
    /// Copy a page to another page of the same die (no channel transfer),
    /// with new metadata; `buf` is scratch of `page_size` bytes.
    fn copyback(
        &mut self,
        src: u32,
        dst: u32,
        meta: &PageMeta,
        buf: &mut [u8],
        now: u64,
    ) -> Result<u64, MediaError>;
    /// Erase a block: all its pages become programmable again.
    fn erase(&mut self, block: u32, now: u64) -> Result<u64, MediaError>;
    /// Erases so far.
    fn erase_count(&self, block: u32) -> u32;
    /// Next programmable page of a block (`pages_per_block`: full).
    fn write_pointer(&self, block: u32) -> u32;
    /// Every page of a block as recovery sees it; `data` receives the
    /// block's data (`pages_per_block * page_size` bytes).
    fn scan_block(&mut self, block: u32, data: &mut [u8]) -> Result<Vec<PageState>, MediaError>;
    /// The logical page count the FTL formatted the media with (0: none).
    fn logical_pages(&self) -> u64;
    /// Record the logical page count (once, when formatting).
    fn set_logical_pages(&mut self, pages: u64) -> Result<(), MediaError>;
    /// A handle that makes everything written so far durable, usable from
    /// another thread.
    fn sync_handle(&self) -> Result<File, MediaError>;
}

/// What a media keeps of each block: its write pointer and erase count.
pub(super) struct BlockState {
    pub(super) next_page: u32,
    pub(super) erase_count: u32,
}

/// NAND emulated in a file (see the module docs).
pub struct NandMedia {
    path: PathBuf,
    file: File,
    geo: NandGeometry,
    timing: Timing,
    logical_pages: u64,
    blocks: Vec<BlockState>,
    die_busy: Vec<u64>,
    chan_busy: Vec<u64>,
}

impl NandMedia {
    /// Open the media file at `path`, creating it with `new_geometry` when
    /// absent (an existing file keeps its own: compare [`Media::geometry`]).
    /// `timing`: FEMU's figures when `None`.
    pub fn open(
        path: &Path,
        new_geometry: NandGeometry,
        timing: Option<Timing>,
    ) -> Result<NandMedia, MediaError> {
        let io_err = |what| {
            let path = path.to_owned();
            move |source| MediaError::Io { what, path, source }
        };
        let (file, created) = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => (f, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                new_geometry
                    .validate()
                    .map_err(|reason| MediaError::Corrupt {
                        path: path.to_owned(),
                        reason: format!("cannot create: {reason}"),
                    })?;
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(path)
                    .map_err(io_err("cannot create"))?;
                (f, true)
            }
            Err(e) => return Err(io_err("cannot open")(e)),
        };
        let (geo, logical_pages) = if created {
            let geo = new_geometry;
            file.set_len(geo.file_len())
                .map_err(io_err("cannot size"))?;
            file.write_all_at(&encode_header(&geo, 0), 0)
                .map_err(io_err("cannot write the header of"))?;
            let table: Vec<u8> = (0..geo.blocks()).flat_map(|b| table_entry(b, 0)).collect();
            file.write_all_at(&table, HEADER_LEN)
                .map_err(io_err("cannot write the block table of"))?;
            file.sync_all().map_err(io_err("cannot sync"))?;
            (geo, 0)
        } else {
            read_header(&file, path)?
        };
        let mut media = NandMedia {
            path: path.to_owned(),
            file,
            geo,
            timing: timing.unwrap_or_else(|| Timing::femu(geo.page_size)),
            logical_pages,
            blocks: Vec::new(),
            die_busy: vec![0; geo.dies() as usize],
            chan_busy: vec![0; geo.channels as usize],
        };
        media.load_block_states()?;
        Ok(media)
    }

    /// The timing model in use.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    fn io_err(&self, what: &'static str) -> impl FnOnce(io::Error) -> MediaError + '_ {
        move |source| MediaError::Io {
            what,
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, reason: String) -> MediaError {
        MediaError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }

    /// Erase counts from the table, write pointers from the OOB areas: the
    /// next programmable page is the one after the last programmed one.
    fn load_block_states(&mut self) -> Result<(), MediaError> {
        let geo = self.geo;
        let mut table = vec![0u8; usize::try_from(geo.table_len()).unwrap_or(0)];
        self.file
            .read_exact_at(&mut table, HEADER_LEN)
            .map_err(self.io_err("cannot read the block table of"))?;
        let mut oob = vec![0u8; usize::try_from(geo.oob_area_len()).unwrap_or(0)];
        let oob_size = geo.oob_size as usize;
        let mut blocks = Vec::with_capacity(geo.blocks() as usize);
        for b in 0..geo.blocks() {
            let at = b as usize * TABLE_ENTRY;
            let entry: [u8; 16] = table[at..at + 16].try_into().unwrap_or([0; 16]);
            if entry != table_entry(b, u32le(&entry, 0)) {
                return Err(self.corrupt(format!("block table entry {b} fails its checksum")));
            }
            self.file
                .read_exact_at(&mut oob, geo.block_offset(b))
                .map_err(self.io_err("cannot read OOB of"))?;
            let next_page = (0..geo.pages_per_block)
                .rev()
                .find(|&p| {
                    let at = p as usize * oob_size;
                    oob[at..at + oob_size].iter().any(|&x| x != 0)
                })
                .map_or(0, |p| p + 1);
            blocks.push(BlockState {
                next_page,
                erase_count: u32le(&entry, 0),
            });
        }
        self.blocks = blocks;
        Ok(())
    }

    fn die_and_channel(&self, block: u32) -> (usize, usize) {
        let die = self.geo.die_of_block(block);
        (die as usize, (die % self.geo.channels) as usize)
    }

    /// Timing of a read: die busy reading, then die and channel busy
    /// transferring.
    fn time_read(&mut self, block: u32, now: u64) -> u64 {
        let (d, c) = self.die_and_channel(block);
        let sensed = now.max(self.die_busy[d]) + self.timing.read_ns;
        let done = sensed.max(self.chan_busy[c]) + self.timing.xfer_ns;
        self.die_busy[d] = done;
        self.chan_busy[c] = done;
        done
    }

    /// Timing of a program: channel transfer into the die, then the die
    /// busy programming.
    fn time_program(&mut self, block: u32, now: u64) -> u64 {
        let (d, c) = self.die_and_channel(block);
        let start = now.max(self.die_busy[d]).max(self.chan_busy[c]);
        self.chan_busy[c] = start + self.timing.xfer_ns;
        let done = start + self.timing.xfer_ns + self.timing.program_ns;
        self.die_busy[d] = done;
        done
    }

    fn read_oob(&self, ppa: u32) -> Result<Vec<u8>, MediaError> {
        let mut oob = vec![0u8; self.geo.oob_size as usize];
        self.file
            .read_exact_at(&mut oob, self.geo.oob_offset(ppa))
            .map_err(self.io_err("cannot read OOB of"))?;
        Ok(oob)
    }

    fn write_page(&mut self, ppa: u32, data: &[u8], meta: &PageMeta) -> Result<(), MediaError> {
        let (block, page) = self.geo.locate(ppa)?;
        if data.len() != self.geo.page_size as usize {
            return Err(MediaError::Bad("program buffer is not one page"));
        }
        let next = self.blocks[block as usize].next_page;
        if page != next {
            return Err(MediaError::ProgramOrder { block, page, next });
        }
        self.file
            .write_all_at(data, self.geo.data_offset(ppa))
            .map_err(self.io_err("cannot write data to"))?;
        let oob = encode_oob(meta, data, self.geo.oob_size);
        self.file
            .write_all_at(&oob, self.geo.oob_offset(ppa))
            .map_err(self.io_err("cannot write OOB to"))?;
        self.blocks[block as usize].next_page += 1;
        Ok(())
    }

    fn read_page(&self, ppa: u32, data: &mut [u8]) -> Result<PageMeta, MediaError> {
        let (block, page) = self.geo.locate(ppa)?;
        if data.len() != self.geo.page_size as usize {
            return Err(MediaError::Bad("read buffer is not one page"));
        }
        if page >= self.blocks[block as usize].next_page {
            return Err(MediaError::Erased { ppa });
        }
        self.file
            .read_exact_at(data, self.geo.data_offset(ppa))
            .map_err(self.io_err("cannot read data of"))?;
        match decode_oob(&self.read_oob(ppa)?, data) {
            PageState::Valid(meta) => Ok(meta),
            PageState::Erased => Err(MediaError::Erased { ppa }),
            PageState::Torn => Err(MediaError::Uncorrectable { ppa }),
        }
    }
}

impl Media for NandMedia {
    fn geometry(&self) -> &NandGeometry {
        &self.geo
    }

    fn read(&mut self, ppa: u32, data: &mut [u8], now: u64) -> Result<(PageMeta, u64), MediaError> {
        let meta = self.read_page(ppa, data)?;
        let (block, _) = self.geo.split(ppa);
        Ok((meta, self.time_read(block, now)))
    }

    fn program(
        &mut self,
        ppa: u32,
        data: &[u8],
        meta: &PageMeta,
        now: u64,
    ) -> Result<u64, MediaError> {
        self.write_page(ppa, data, meta)?;
        let (block, _) = self.geo.split(ppa);
        Ok(self.time_program(block, now))
    }

    fn copyback(
        &mut self,
        src: u32,
        dst: u32,
        meta: &PageMeta,
        buf: &mut [u8],
        now: u64,
    ) -> Result<u64, MediaError> {
        let d = self.geo.copyback_die(src, dst)? as usize;
        self.read_page(src, buf)?;
        self.write_page(dst, buf, meta)?;
        let done = now.max(self.die_busy[d]) + self.timing.read_ns + self.timing.program_ns;
        self.die_busy[d] = done;
        Ok(done)
    }

    fn erase(&mut self, block: u32, now: u64) -> Result<u64, MediaError> {
        self.geo.check_block(block)?;
        let count = self.blocks[block as usize].erase_count.saturating_add(1);
        let zero = vec![0u8; usize::try_from(self.geo.oob_area_len()).unwrap_or(0)];
        self.file
            .write_all_at(&zero, self.geo.block_offset(block))
            .map_err(self.io_err("cannot erase OOB of"))?;
        self.file
            .write_all_at(
                &table_entry(block, count),
                HEADER_LEN + u64::from(block) * TABLE_ENTRY as u64,
            )
            .map_err(self.io_err("cannot write the block table of"))?;
        let st = &mut self.blocks[block as usize];
        st.next_page = 0;
        st.erase_count = count;
        let (d, _) = self.die_and_channel(block);
        let done = now.max(self.die_busy[d]) + self.timing.erase_ns;
        self.die_busy[d] = done;
        Ok(done)
    }

    fn erase_count(&self, block: u32) -> u32 {
        self.blocks.get(block as usize).map_or(0, |b| b.erase_count)
    }

    fn write_pointer(&self, block: u32) -> u32 {
        self.blocks
            .get(block as usize)
            .map_or(self.geo.pages_per_block, |b| b.next_page)
    }

    fn scan_block(&mut self, block: u32, data: &mut [u8]) -> Result<Vec<PageState>, MediaError> {
        let geo = self.geo;
        geo.check_scan(block, data.len())?;
        let ps = geo.page_size as usize;
        let mut oob = vec![0u8; usize::try_from(geo.oob_area_len()).unwrap_or(0)];
        self.file
            .read_exact_at(&mut oob, geo.block_offset(block))
            .map_err(self.io_err("cannot read OOB of"))?;
        self.file
            .read_exact_at(data, geo.data_offset(geo.ppa(block, 0)))
            .map_err(self.io_err("cannot read data of"))?;
        let os = geo.oob_size as usize;
        Ok((0..geo.pages_per_block as usize)
            .map(|p| decode_oob(&oob[p * os..(p + 1) * os], &data[p * ps..(p + 1) * ps]))
            .collect())
    }

    fn logical_pages(&self) -> u64 {
        self.logical_pages
    }

    fn set_logical_pages(&mut self, pages: u64) -> Result<(), MediaError> {
        self.file
            .write_all_at(&encode_header(&self.geo, pages)[..HEADER_BODY + 4], 0)
            .map_err(self.io_err("cannot write the header of"))?;
        self.file.sync_data().map_err(self.io_err("cannot sync"))?;
        self.logical_pages = pages;
        Ok(())
    }

    fn sync_handle(&self) -> Result<File, MediaError> {
        self.file
            .try_clone()
            .map_err(self.io_err("cannot duplicate"))
    }
}

fn u32le(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64le(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn table_entry(block: u32, erase_count: u32) -> [u8; 16] {
    let mut e = [0u8; 16];
    e[0..4].copy_from_slice(&erase_count.to_le_bytes());
    e[4..8].copy_from_slice(&block.to_le_bytes());
    let crc = crc32c::crc32c(&e[0..12]);
    e[12..16].copy_from_slice(&crc.to_le_bytes());
    e
}

/// Bytes of the header that are covered by its checksum.
const HEADER_BODY: usize = 48;

/// Header bytes the media never writes once the file exists: its user's
/// (a zoned namespace keeps a bit per explicitly opened zone there).
pub(crate) const HEADER_SPARE: std::ops::Range<u64> = 1024..HEADER_LEN;

pub(crate) fn encode_header(geo: &NandGeometry, logical_pages: u64) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_BYTES];
    h[0..8].copy_from_slice(MAGIC);
    let fields = [
        VERSION,
        geo.channels,
        geo.dies_per_channel,
        geo.blocks_per_die,
        geo.pages_per_block,
        geo.page_size,
        geo.oob_size,
    ];
    for (i, v) in fields.iter().enumerate() {
        h[8 + 4 * i..12 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    h[36..44].copy_from_slice(&logical_pages.to_le_bytes());
    let crc = crc32c::crc32c(&h[..HEADER_BODY]);
    h[HEADER_BODY..HEADER_BODY + 4].copy_from_slice(&crc.to_le_bytes());
    h
}

fn read_header(file: &File, path: &Path) -> Result<(NandGeometry, u64), MediaError> {
    let corrupt = |reason: String| MediaError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let len = file
        .metadata()
        .map_err(|source| MediaError::Io {
            what: "cannot stat",
            path: path.to_owned(),
            source,
        })?
        .len();
    if len < HEADER_LEN {
        return Err(corrupt(format!(
            "{len} bytes: too short for a flash media file (not created by the flash backend?)"
        )));
    }
    let mut h = vec![0u8; HEADER_BODY + 4];
    file.read_exact_at(&mut h, 0)
        .map_err(|source| MediaError::Io {
            what: "cannot read the header of",
            path: path.to_owned(),
            source,
        })?;
    let (geo, logical) = decode_header(&h).map_err(corrupt)?;
    if len != geo.file_len() {
        return Err(corrupt(format!(
            "{len} bytes, but its geometry needs {} (truncated or extended)",
            geo.file_len()
        )));
    }
    Ok((geo, logical))
}

/// The header's geometry and logical page count (the first
/// `HEADER_BODY + 4` bytes of `h`), or what is wrong with it.
pub(crate) fn decode_header(h: &[u8]) -> Result<(NandGeometry, u64), String> {
    if h.len() < HEADER_BODY + 4 || &h[0..8] != MAGIC {
        return Err(
            "no flash media header (magic LEAPNAND missing): not a flash media file".to_owned(),
        );
    }
    if crc32c::crc32c(&h[..HEADER_BODY]) != u32le(h, HEADER_BODY) {
        return Err("the header fails its checksum".to_owned());
    }
    if u32le(h, 8) != VERSION {
        return Err(format!(
            "format version {} (this build reads {VERSION})",
            u32le(h, 8)
        ));
    }
    let geo = NandGeometry {
        channels: u32le(h, 12),
        dies_per_channel: u32le(h, 16),
        blocks_per_die: u32le(h, 20),
        pages_per_block: u32le(h, 24),
        page_size: u32le(h, 28),
        oob_size: u32le(h, 32),
    };
    geo.validate()
        .map_err(|e| format!("header geometry: {e}"))?;
    Ok((geo, u64le(h, 36)))
}

/// OOB record: magic, kind, lba, seq, data crc, reserved, record crc.
pub(crate) fn encode_oob(meta: &PageMeta, data: &[u8], oob_size: u32) -> Vec<u8> {
    let mut o = vec![0u8; oob_size as usize];
    o[0..4].copy_from_slice(&OOB_MAGIC.to_le_bytes());
    o[4..8].copy_from_slice(&meta.kind.code().to_le_bytes());
    o[8..16].copy_from_slice(&meta.lba.to_le_bytes());
    o[16..24].copy_from_slice(&meta.seq.to_le_bytes());
    o[24..28].copy_from_slice(&crc32c::crc32c(data).to_le_bytes());
    let crc = crc32c::crc32c(&o[0..32]);
    o[32..36].copy_from_slice(&crc.to_le_bytes());
    o
}

pub(crate) fn decode_oob(oob: &[u8], data: &[u8]) -> PageState {
    if oob.iter().all(|&b| b == 0) {
        return PageState::Erased;
    }
    let rec = OOB_RECORD as usize;
    if oob.len() < rec
        || u32le(oob, 0) != OOB_MAGIC
        || crc32c::crc32c(&oob[0..32]) != u32le(oob, 32)
        || crc32c::crc32c(data) != u32le(oob, 24)
    {
        return PageState::Torn;
    }
    let kind = match u32le(oob, 4) {
        1 => PageKind::Data,
        2 => PageKind::Trim,
        _ => return PageState::Torn,
    };
    PageState::Valid(PageMeta {
        kind,
        lba: u64le(oob, 8),
        seq: u64le(oob, 16),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> NandGeometry {
        NandGeometry {
            channels: 2,
            dies_per_channel: 2,
            blocks_per_die: 4,
            pages_per_block: 8,
            page_size: 4096,
            oob_size: 64,
        }
    }

    fn meta(lba: u64, seq: u64) -> PageMeta {
        PageMeta {
            kind: PageKind::Data,
            lba,
            seq,
        }
    }

    fn open(path: &Path, timing: Timing) -> NandMedia {
        NandMedia::open(path, small(), Some(timing)).unwrap()
    }

    #[test]
    fn program_order_and_erase_before_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.nand");
        let mut m = open(&path, Timing::ZERO);
        let g = small();
        let data = vec![7u8; 4096];
        m.program(g.ppa(1, 0), &data, &meta(1, 1), 0).unwrap();
        // Skipping a page is refused.
        let e = m.program(g.ppa(1, 2), &data, &meta(2, 2), 0).unwrap_err();
        assert!(
            matches!(
                e,
                MediaError::ProgramOrder {
                    block: 1,
                    page: 2,
                    next: 1
                }
            ),
            "{e}"
        );
        // Programming a page again before an erase is refused.
        let e = m.program(g.ppa(1, 0), &data, &meta(3, 3), 0).unwrap_err();
        assert!(
            matches!(
                e,
                MediaError::ProgramOrder {
                    page: 0,
                    next: 1,
                    ..
                }
            ),
            "{e}"
        );
        // Fill the block: the next program is refused as the block is full.
        for p in 1..8 {
            m.program(
                g.ppa(1, p),
                &data,
                &meta(u64::from(p), 10 + u64::from(p)),
                0,
            )
            .unwrap();
        }
        let e = m.program(g.ppa(1, 0), &data, &meta(0, 99), 0).unwrap_err();
        assert!(matches!(e, MediaError::ProgramOrder { next: 8, .. }), "{e}");
        // Erase makes the block programmable from page 0 again.
        m.erase(1, 0).unwrap();
        assert_eq!(m.erase_count(1), 1);
        assert_eq!(m.write_pointer(1), 0);
        let mut buf = vec![0u8; 4096];
        assert!(matches!(
            m.read(g.ppa(1, 0), &mut buf, 0),
            Err(MediaError::Erased { .. })
        ));
        m.program(g.ppa(1, 0), &data, &meta(5, 100), 0).unwrap();
        m.program(g.ppa(1, 1), &vec![9u8; 4096], &meta(6, 101), 0)
            .unwrap();
        // Wrong buffer sizes and addresses are errors, not panics.
        assert!(m
            .program(g.ppa(1, 2), &data[..100], &meta(6, 1), 0)
            .is_err());
        assert!(m.read(u32::MAX, &mut buf, 0).is_err());
        assert!(m.erase(1000, 0).is_err());
        drop(m);
        // Data, OOB metadata, write pointers and erase counts survive a reopen.
        let mut m = open(&path, Timing::ZERO);
        assert_eq!(m.erase_count(1), 1);
        assert_eq!(m.erase_count(0), 0);
        assert_eq!(m.write_pointer(1), 2);
        let (got, _) = m.read(g.ppa(1, 1), &mut buf, 0).unwrap();
        assert_eq!(got, meta(6, 101));
        assert_eq!(buf, vec![9u8; 4096]);
        let e = m.program(g.ppa(1, 1), &data, &meta(7, 102), 0).unwrap_err();
        assert!(matches!(e, MediaError::ProgramOrder { next: 2, .. }), "{e}");
    }

    #[test]
    fn timing_model_dies_and_channels() {
        let dir = tempfile::tempdir().unwrap();
        let t = Timing {
            read_ns: 40_000,
            program_ns: 200_000,
            erase_ns: 2_000_000,
            xfer_ns: 5_000,
        };
        let mut m = open(&dir.path().join("m.nand"), t);
        let g = small();
        let data = vec![1u8; 4096];
        // Blocks 0..4 are die 0 (channel 0), 4..8 die 1 (channel 1),
        // 8..12 die 2 (channel 0).
        for b in [0, 4, 8] {
            m.program(g.ppa(b, 0), &data, &meta(0, 1), 1_000_000_000)
                .unwrap();
        }
        let now = 2_000_000_000;
        let mut buf = vec![0u8; 4096];
        // One read: read + transfer.
        assert_eq!(m.read(g.ppa(0, 0), &mut buf, now).unwrap().1, now + 45_000);
        // Another die on another channel: in parallel.
        assert_eq!(m.read(g.ppa(4, 0), &mut buf, now).unwrap().1, now + 45_000);
        // Another die on the same channel: sensed in parallel, the transfer
        // waits for the channel.
        assert_eq!(m.read(g.ppa(8, 0), &mut buf, now).unwrap().1, now + 50_000);
        // The same die again: after the first read.
        assert_eq!(m.read(g.ppa(0, 0), &mut buf, now).unwrap().1, now + 90_000);
        // A program: transfer, then the die programs.
        let t0 = 3_000_000_000;
        assert_eq!(
            m.program(g.ppa(0, 1), &data, &meta(1, 2), t0).unwrap(),
            t0 + 205_000
        );
        // An erase on that die waits for the program.
        assert_eq!(m.erase(1, t0).unwrap(), t0 + 205_000 + 2_000_000);
        // Copyback inside a die: read + program, no channel.
        let t1 = 4_000_000_000;
        assert_eq!(
            m.copyback(g.ppa(4, 0), g.ppa(5, 0), &meta(0, 3), &mut buf, t1)
                .unwrap(),
            t1 + 240_000
        );
        assert!(m
            .copyback(g.ppa(4, 0), g.ppa(0, 2), &meta(0, 4), &mut buf, t1)
            .is_err());
    }

    /// Damaged files are refused with a message that says what is wrong.
    #[test]
    fn corrupt_files_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.nand");
        drop(open(&path, Timing::ZERO));
        let good = std::fs::read(&path).unwrap();
        let check = |bytes: &[u8], want: &str| {
            std::fs::write(&path, bytes).unwrap();
            let e = NandMedia::open(&path, small(), None)
                .err()
                .expect("refused")
                .to_string();
            assert!(e.contains(want), "{want}: {e}");
        };
        check(&good[..100], "too short");
        check(&good[..good.len() - 4096], "truncated");
        let mut bad = good.clone();
        bad[0] = b'X';
        check(&bad, "not a flash media file");
        let mut bad = good.clone();
        bad[20] ^= 1;
        check(&bad, "header fails its checksum");
        let mut bad = good.clone();
        bad[4096 + 16 * 3] ^= 1;
        check(&bad, "block table entry 3 fails its checksum");
        let e = NandMedia::open(
            &dir.path().join("new.nand"),
            NandGeometry {
                page_size: 1000,
                ..small()
            },
            None,
        )
        .err()
        .expect("refused")
        .to_string();
        assert!(e.contains("page size 1000"), "{e}");
        assert!(!dir.path().join("new.nand").exists());
    }

    #[test]
    fn scan_tells_erased_valid_and_torn_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.nand");
        let mut m = open(&path, Timing::ZERO);
        let g = small();
        for p in 0..3 {
            m.program(
                g.ppa(2, p),
                &vec![u8::try_from(p).unwrap(); 4096],
                &meta(u64::from(p), 1 + u64::from(p)),
                0,
            )
            .unwrap();
        }
        drop(m);
        // Tear page 1's data (a program cut short after its OOB landed).
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xee; 100], g.data_offset(g.ppa(2, 1)) + 2000)
            .unwrap();
        let mut m = open(&path, Timing::ZERO);
        let mut data = vec![0u8; 8 * 4096];
        let states = m.scan_block(2, &mut data).unwrap();
        assert_eq!(states[0], PageState::Valid(meta(0, 1)));
        assert_eq!(states[1], PageState::Torn);
        assert_eq!(states[2], PageState::Valid(meta(2, 3)));
        assert_eq!(states[3], PageState::Erased);
        let mut buf = vec![0u8; 4096];
        assert!(matches!(
            m.read(g.ppa(2, 1), &mut buf, 0),
            Err(MediaError::Uncorrectable { .. })
        ));
    }
}
