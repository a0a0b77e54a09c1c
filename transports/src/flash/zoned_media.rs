//! A zoned block device as the FTL's media (`flash:PATH?media=zoned`): an
//! erase block is a zone, an erase is a zone reset, pages are written at
//! the zone's write pointer.
//!
//! A zoned device has no spare area, so each page is stored as a slot of
//! its data followed by one logical block of the device holding its OOB
//! record (the NAND emulation's record, and the zone's erase count), written
//! with one `pwrite`: a write cut short leaves a slot whose record is
//! missing or fails its checksum, which recovery counts as torn. Zone 0
//! holds the header (geometry and the FTL's logical page count); erase
//! block `b` is zone `b + 1`. Dies are a division of the zones into groups
//! (`dies=`), for the FTL's striping and per-die GC; channels are 1.
//!
//! Two devices: [`BlockZoneDevice`], a host-managed zoned block device
//! driven with the kernel's zoned-block ioctls (`BLKREPORTZONE`,
//! `BLKRESETZONE`, `BLKGETZONESZ`, `BLKGETNRZONES`) and O_DIRECT I/O, and
//! [`FileZoneDevice`], zones emulated in a regular file (a write pointer
//! table in the file, writes refused off the write pointer) for machines
//! without a zoned device. Completion times are the caller's `now`: the data
//! moves synchronously, there is no timing model. Erase counts are kept in
//! the slots, so a zone's count is known again at mount only once it holds
//! a page.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::nand::{
    decode_header, decode_oob, encode_header, encode_oob, BlockState, Media, MediaError,
    NandGeometry, PageMeta, PageState,
};

/// Zones as the media sees them (bytes throughout).
pub trait ZoneDevice: Send {
    /// Logical block size: the unit of I/O and of the OOB slot.
    fn block_size(&self) -> u32;
    /// Bytes between zone starts.
    fn zone_bytes(&self) -> u64;
    /// Writable bytes of a zone.
    fn zone_capacity(&self) -> u64;
    /// Number of zones.
    fn zones(&self) -> u32;
    /// Bytes written in zone `z` (its write pointer, from its start).
    fn write_pointer(&mut self, z: u32) -> io::Result<u64>;
    /// Reset zone `z`: its write pointer goes back to its start (its old
    /// data reads as zeroes).
    fn reset(&mut self, z: u32) -> io::Result<()>;
    /// Finish zone `z`: full, releasing its open/active resources (the rest
    /// reads as zeroes).
    fn finish(&mut self, z: u32) -> io::Result<()>;
    /// Write `buf` at `offset` (which must be a zone's write pointer).
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Read `buf.len()` bytes at `offset`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// A handle whose `fdatasync` makes every write durable.
    fn sync_handle(&self) -> io::Result<File>;
}

/// Which device a path names: a block device is driven with the zoned
/// ioctls, a regular file is an emulation (created with `new_zone_bytes`
/// and `new_zones` when absent).
pub fn open_zone_device(
    path: &Path,
    new_zone_bytes: u64,
    new_zones: u32,
) -> io::Result<Box<dyn ZoneDevice>> {
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => Ok(Box::new(BlockZoneDevice::open(path)?)),
        Ok(_) => Ok(Box::new(FileZoneDevice::open(path, None)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Box::new(FileZoneDevice::open(
            path,
            Some((new_zone_bytes, new_zones)),
        )?)),
        Err(e) => Err(e),
    }
}

/// Offset into a buffer `align`-aligned, with room for `len` bytes: O_DIRECT
/// wants aligned memory; a Vec with slack gives it without `unsafe`.
fn aligned(buf: &mut Vec<u8>, len: usize, align: usize) -> &mut [u8] {
    buf.resize(len + align, 0);
    let off = buf.as_ptr().align_offset(align).min(align);
    &mut buf[off..off + len]
}

// The zoned-block ioctls (linux/blkzoned.h, linux/fs.h).
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKREPORTZONE: libc::c_ulong = 0xc010_1282;
const BLKRESETZONE: libc::c_ulong = 0x4010_1283;
const BLKGETZONESZ: libc::c_ulong = 0x8004_1284;
const BLKGETNRZONES: libc::c_ulong = 0x8004_1285;
const BLKFINISHZONE: libc::c_ulong = 0x4010_1288;
const BLK_ZONE_REP_CAPACITY: u32 = 1;
const BLK_ZONE_TYPE_CONVENTIONAL: u8 = 1;
const BLK_ZONE_COND_FULL: u8 = 0xe;

/// `struct blk_zone_report` with room for one `struct blk_zone`.
#[repr(C)]
#[derive(Default)]
struct ZoneReport1 {
    sector: u64,
    nr_zones: u32,
    flags: u32,
    start: u64,
    len: u64,
    wp: u64,
    ztype: u8,
    cond: u8,
    non_seq: u8,
    reset: u8,
    resv: [u8; 4],
    capacity: u64,
    reserved: [u8; 24],
}
const _: () = assert!(size_of::<ZoneReport1>() == 16 + 64);

/// `struct blk_zone_range`.
#[repr(C)]
struct ZoneRange {
    sector: u64,
    nr_sectors: u64,
}

/// A host-managed zoned block device.
pub struct BlockZoneDevice {
    file: File,
    block_size: u32,
    zone_sectors: u64,
    zones: u32,
    capacity: u64,
    buf: Vec<u8>,
}

impl BlockZoneDevice {
    /// Open the device (O_DIRECT) and learn its zones; a device with
    /// conventional zones is refused.
    pub fn open(path: &Path) -> io::Result<BlockZoneDevice> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(path)?;
        let fd = file.as_raw_fd();
        let mut ssz: libc::c_int = 0;
        let mut zsz: u32 = 0;
        let mut nz: u32 = 0;
        // SAFETY: each ioctl writes one integer of the type it is given a
        // pointer to; `fd` is open for the duration.
        let rc = unsafe {
            [
                libc::ioctl(fd, BLKSSZGET as _, &mut ssz),
                libc::ioctl(fd, BLKGETZONESZ as _, &mut zsz),
                libc::ioctl(fd, BLKGETNRZONES as _, &mut nz),
            ]
        };
        if rc.iter().any(|&r| r < 0) {
            return Err(io::Error::last_os_error());
        }
        if zsz == 0 || nz == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a zoned block device (no zones)",
            ));
        }
        let mut dev = BlockZoneDevice {
            file,
            block_size: u32::try_from(ssz).unwrap_or(512),
            zone_sectors: u64::from(zsz),
            zones: nz,
            capacity: 0,
            buf: Vec::new(),
        };
        let mut cap = u64::MAX;
        for z in 0..nz {
            let r = dev.report(z)?;
            if r.ztype == BLK_ZONE_TYPE_CONVENTIONAL {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("zone {z} is conventional: only sequential zones are supported"),
                ));
            }
            let c = if r.flags & BLK_ZONE_REP_CAPACITY != 0 {
                r.capacity
            } else {
                r.len
            };
            cap = cap.min(c);
        }
        dev.capacity = cap * 512;
        Ok(dev)
    }

    fn zone_op(&self, op: libc::c_ulong, z: u32) -> io::Result<()> {
        let range = ZoneRange {
            sector: u64::from(z) * self.zone_sectors,
            nr_sectors: self.zone_sectors,
        };
        // SAFETY: the kernel only reads the range.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), op as _, &range) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn report(&self, z: u32) -> io::Result<ZoneReport1> {
        let mut r = ZoneReport1 {
            sector: u64::from(z) * self.zone_sectors,
            nr_zones: 1,
            ..ZoneReport1::default()
        };
        // SAFETY: the kernel reads the header and writes at most `nr_zones`
        // (1) descriptors after it, which `ZoneReport1` has room for.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), BLKREPORTZONE as _, &mut r) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if r.nr_zones != 1 {
            return Err(io::Error::other(format!("no report for zone {z}")));
        }
        Ok(r)
    }
}

impl ZoneDevice for BlockZoneDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn zone_bytes(&self) -> u64 {
        self.zone_sectors * 512
    }
    fn zone_capacity(&self) -> u64 {
        self.capacity
    }
    fn zones(&self) -> u32 {
        self.zones
    }
    fn write_pointer(&mut self, z: u32) -> io::Result<u64> {
        let r = self.report(z)?;
        if r.cond == BLK_ZONE_COND_FULL {
            return Ok(self.capacity);
        }
        Ok(r.wp.saturating_sub(r.start) * 512)
    }
    fn reset(&mut self, z: u32) -> io::Result<()> {
        self.zone_op(BLKRESETZONE, z)
    }
    fn finish(&mut self, z: u32) -> io::Result<()> {
        self.zone_op(BLKFINISHZONE, z)
    }
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        let b = aligned(&mut buf, data.len(), 4096);
        b.copy_from_slice(data);
        let r = self.file.write_all_at(b, offset);
        self.buf = buf;
        r
    }
    fn read_at(&mut self, data: &mut [u8], offset: u64) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        let b = aligned(&mut buf, data.len(), 4096);
        let r = self.file.read_exact_at(b, offset);
        data.copy_from_slice(b);
        self.buf = buf;
        r
    }
    fn sync_handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }
}

const ZFILE_MAGIC: &[u8; 8] = b"LEAPZONE";
const ZFILE_HEADER: u64 = 4096;

/// Zones emulated in a regular file: a 4 KiB header (magic, zone size,
/// zone count, crc32c), a write pointer table (8 bytes per zone, padded to
/// 4 KiB), then the zones. Writes anywhere but a zone's write pointer, or
/// past its capacity, fail with EIO, as on a zoned device.
pub struct FileZoneDevice {
    file: File,
    zone_bytes: u64,
    zones: u32,
    wps: Vec<u64>,
}

impl FileZoneDevice {
    /// Open the emulation file; create it when `new` gives (zone bytes,
    /// zones) and the file is absent.
    pub fn open(path: &Path, new: Option<(u64, u32)>) -> io::Result<FileZoneDevice> {
        let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
        let mut o = OpenOptions::new();
        o.read(true).write(true).custom_flags(libc::O_CLOEXEC);
        if let Some((zone_bytes, zones)) = new {
            if zone_bytes == 0 || zone_bytes % 4096 != 0 || zones < 2 {
                return Err(bad(format!(
                    "{zones} zones of {zone_bytes} bytes: need at least 2 zones of a multiple of 4 KiB"
                )));
            }
            let file = o.create_new(true).open(path)?;
            let table = u64::from(zones) * 8;
            let table_len = table.div_ceil(4096) * 4096;
            file.set_len(ZFILE_HEADER + table_len + zone_bytes * u64::from(zones))?;
            let mut h = vec![0u8; 4096];
            h[..8].copy_from_slice(ZFILE_MAGIC);
            h[8..16].copy_from_slice(&zone_bytes.to_le_bytes());
            h[16..20].copy_from_slice(&zones.to_le_bytes());
            let crc = crc32c::crc32c(&h[..20]);
            h[20..24].copy_from_slice(&crc.to_le_bytes());
            file.write_all_at(&h, 0)?;
            file.sync_all()?;
            return Ok(FileZoneDevice {
                file,
                zone_bytes,
                zones,
                wps: vec![0; zones as usize],
            });
        }
        let file = o.open(path)?;
        let mut h = [0u8; 24];
        file.read_exact_at(&mut h, 0)?;
        let crc = u32::from_le_bytes([h[20], h[21], h[22], h[23]]);
        if &h[..8] != ZFILE_MAGIC || crc32c::crc32c(&h[..20]) != crc {
            return Err(bad(format!(
                "{}: not a zoned emulation file (no LEAPZONE header)",
                path.display()
            )));
        }
        let zone_bytes = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
        let zones = u32::from_le_bytes(h[16..20].try_into().unwrap_or_default());
        let mut table = vec![0u8; zones as usize * 8];
        file.read_exact_at(&mut table, ZFILE_HEADER)?;
        let wps: Vec<u64> = table
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        if wps.iter().any(|&w| w > zone_bytes) {
            return Err(bad(format!(
                "{}: write pointer past a zone",
                path.display()
            )));
        }
        Ok(FileZoneDevice {
            file,
            zone_bytes,
            zones,
            wps,
        })
    }

    fn data_offset(&self) -> u64 {
        ZFILE_HEADER + (u64::from(self.zones) * 8).div_ceil(4096) * 4096
    }

    fn set_wp(&mut self, z: u32, wp: u64) -> io::Result<()> {
        self.file
            .write_all_at(&wp.to_le_bytes(), ZFILE_HEADER + u64::from(z) * 8)?;
        self.wps[z as usize] = wp;
        Ok(())
    }
}

impl ZoneDevice for FileZoneDevice {
    fn block_size(&self) -> u32 {
        4096
    }
    fn zone_bytes(&self) -> u64 {
        self.zone_bytes
    }
    fn zone_capacity(&self) -> u64 {
        self.zone_bytes
    }
    fn zones(&self) -> u32 {
        self.zones
    }
    fn write_pointer(&mut self, z: u32) -> io::Result<u64> {
        self.wps
            .get(z as usize)
            .copied()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
    }
    fn reset(&mut self, z: u32) -> io::Result<()> {
        if z >= self.zones {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.set_wp(z, 0)?;
        // Old data reads as zeroes, as on a device.
        let zero = vec![0u8; usize::try_from(self.zone_bytes).unwrap_or(0)];
        self.file
            .write_all_at(&zero, self.data_offset() + u64::from(z) * self.zone_bytes)
    }
    fn finish(&mut self, z: u32) -> io::Result<()> {
        if z >= self.zones {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.set_wp(z, self.zone_bytes)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let z = offset / self.zone_bytes;
        let at = offset % self.zone_bytes;
        let zi = usize::try_from(z).unwrap_or(usize::MAX);
        let len = buf.len() as u64;
        if self.wps.get(zi) != Some(&at) || at + len > self.zone_bytes {
            // An unaligned write, as a zoned device answers it.
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.file.write_all_at(buf, self.data_offset() + offset)?;
        self.set_wp(u32::try_from(z).unwrap_or(u32::MAX), at + len)
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, self.data_offset() + offset)
    }
    fn sync_handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }
}

/// The FTL's media on a [`ZoneDevice`] (see the module docs).
pub struct ZonedMedia {
    path: PathBuf,
    dev: Box<dyn ZoneDevice>,
    geo: NandGeometry,
    slot: u64,
    logical_pages: u64,
    blocks: Vec<BlockState>,
    buf: Vec<u8>,
}

impl ZonedMedia {
    /// The media on `dev`: `page_size`-byte pages, the zones (but zone 0)
    /// divided into `dies` groups (4 KiB and 2 when not given and the
    /// device has no header yet; the header's when it has one, which given
    /// values must match).
    pub fn open(
        path: &Path,
        mut dev: Box<dyn ZoneDevice>,
        page_size: Option<u32>,
        dies: Option<u32>,
    ) -> Result<ZonedMedia, MediaError> {
        let corrupt = |reason: String| MediaError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let io_err = |what| {
            let path = path.to_owned();
            move |source| MediaError::Io { what, path, source }
        };
        let bs = dev.block_size();
        let mut header = vec![0u8; 4096];
        let formatted = dev
            .write_pointer(0)
            .map_err(io_err("cannot report zone 0 of"))?
            > 0;
        let had = if formatted {
            dev.read_at(&mut header, 0)
                .map_err(io_err("cannot read the header of"))?;
            Some(decode_header(&header).map_err(corrupt)?)
        } else {
            None
        };
        let page_size = page_size.or(had.map(|(g, _)| g.page_size)).unwrap_or(4096);
        let dies = dies.or(had.map(|(g, _)| g.dies_per_channel)).unwrap_or(2);
        if page_size % bs != 0 || bs < super::nand::OOB_RECORD + 8 {
            return Err(corrupt(format!(
                "page size {page_size} is not a multiple of the device's block size {bs}"
            )));
        }
        let slot = u64::from(page_size) + u64::from(bs);
        let pages = u32::try_from(dev.zone_capacity() / slot).unwrap_or(0);
        let dies = dies.max(1);
        let geo = NandGeometry {
            channels: 1,
            dies_per_channel: dies,
            blocks_per_die: dev.zones().saturating_sub(1) / dies,
            pages_per_block: pages,
            page_size,
            oob_size: bs,
        };
        geo.validate()
            .map_err(|e| corrupt(format!("zones as flash: {e}")))?;
        let logical_pages = match had {
            None => {
                let h = encode_header(&geo, 0);
                dev.write_at(&h, 0)
                    .map_err(io_err("cannot write the header of"))?;
                dev.finish(0)
                    .map_err(io_err("cannot finish the header zone of"))?;
                0
            }
            Some((had, logical)) if had == geo => logical,
            Some((had, _)) => {
                return Err(corrupt(format!(
                    "formatted with {} dies of {} blocks of {} pages of {} B, opened as {} dies of {} blocks of {} pages of {} B",
                    had.dies_per_channel, had.blocks_per_die, had.pages_per_block, had.page_size,
                    geo.dies_per_channel, geo.blocks_per_die, geo.pages_per_block, geo.page_size
                )))
            }
        };
        let mut m = ZonedMedia {
            path: path.to_owned(),
            dev,
            geo,
            slot,
            logical_pages,
            blocks: Vec::new(),
            buf: vec![0; usize::try_from(slot).unwrap_or(0)],
        };
        for b in 0..geo.blocks() {
            let wp = m
                .dev
                .write_pointer(b + 1)
                .map_err(io_err("cannot report a zone of"))?;
            let next_page = u32::try_from(wp.div_ceil(slot))
                .unwrap_or(u32::MAX)
                .min(pages);
            if next_page > 0 && wp < m.dev.zone_capacity() {
                // The FTL never writes a block open before a restart again
                // (until its erase): finish the zone so that it holds no
                // open or active resource of the device.
                m.dev
                    .finish(b + 1)
                    .map_err(io_err("cannot finish a zone of"))?;
            }
            let mut erase_count = 0;
            if next_page > 0 {
                let (_, count) = m.read_slot(b, 0)?;
                erase_count = count;
            }
            m.blocks.push(BlockState {
                next_page,
                erase_count,
            });
        }
        Ok(m)
    }

    fn offset(&self, block: u32, page: u32) -> u64 {
        u64::from(block + 1) * self.dev.zone_bytes() + u64::from(page) * self.slot
    }

    fn io_err(&self, what: &'static str) -> impl FnOnce(io::Error) -> MediaError + '_ {
        move |source| MediaError::Io {
            what,
            path: self.path.clone(),
            source,
        }
    }

    /// Read a slot into `self.buf`: its state and the erase count it carries.
    fn read_slot(&mut self, block: u32, page: u32) -> Result<(PageState, u32), MediaError> {
        let off = self.offset(block, page);
        let mut buf = std::mem::take(&mut self.buf);
        let r = self.dev.read_at(&mut buf, off);
        self.buf = buf;
        r.map_err(self.io_err("cannot read"))?;
        let ps = self.geo.page_size as usize;
        let (data, oob) = self.buf.split_at(ps);
        let count = u32::from_le_bytes([oob[40], oob[41], oob[42], oob[43]]);
        Ok((decode_oob(oob, data), count))
    }
}

impl Media for ZonedMedia {
    fn geometry(&self) -> &NandGeometry {
        &self.geo
    }

    fn read(&mut self, ppa: u32, data: &mut [u8], now: u64) -> Result<(PageMeta, u64), MediaError> {
        let (block, page) = self.geo.locate(ppa)?;
        if data.len() != self.geo.page_size as usize {
            return Err(MediaError::Bad("buffer is not one page"));
        }
        if page >= self.blocks[block as usize].next_page {
            return Err(MediaError::Erased { ppa });
        }
        match self.read_slot(block, page)?.0 {
            PageState::Valid(meta) => {
                data.copy_from_slice(&self.buf[..data.len()]);
                Ok((meta, now))
            }
            PageState::Erased => Err(MediaError::Erased { ppa }),
            PageState::Torn => Err(MediaError::Uncorrectable { ppa }),
        }
    }

    fn program(
        &mut self,
        ppa: u32,
        data: &[u8],
        meta: &PageMeta,
        now: u64,
    ) -> Result<u64, MediaError> {
        let (block, page) = self.geo.locate(ppa)?;
        if data.len() != self.geo.page_size as usize {
            return Err(MediaError::Bad("buffer is not one page"));
        }
        let st = &self.blocks[block as usize];
        if page != st.next_page {
            return Err(MediaError::ProgramOrder {
                block,
                page,
                next: st.next_page,
            });
        }
        let mut oob = encode_oob(meta, data, self.geo.oob_size);
        oob[40..44].copy_from_slice(&st.erase_count.to_le_bytes());
        let mut buf = std::mem::take(&mut self.buf);
        buf[..data.len()].copy_from_slice(data);
        buf[data.len()..].copy_from_slice(&oob);
        let off = self.offset(block, page);
        let r = self.dev.write_at(&buf, off);
        self.buf = buf;
        // Whatever happened, the zone's write pointer moved past this slot
        // or stayed: never program the slot again before an erase.
        self.blocks[block as usize].next_page = page + 1;
        r.map_err(self.io_err("cannot program"))?;
        if page + 1 == self.geo.pages_per_block
            && u64::from(page + 1) * self.slot < self.dev.zone_capacity()
        {
            // The block is full but the zone is not (its capacity is not a
            // whole number of slots, e.g. 512-byte blocks): finish it, or
            // it stays active and the device runs out of active zones.
            self.dev
                .finish(block + 1)
                .map_err(self.io_err("cannot finish a zone of"))?;
        }
        Ok(now)
    }

    fn copyback(
        &mut self,
        src: u32,
        dst: u32,
        meta: &PageMeta,
        buf: &mut [u8],
        now: u64,
    ) -> Result<u64, MediaError> {
        self.geo.copyback_die(src, dst)?;
        self.read(src, buf, now)?;
        self.program(dst, buf, meta, now)
    }

    fn erase(&mut self, block: u32, now: u64) -> Result<u64, MediaError> {
        self.geo.check_block(block)?;
        self.dev
            .reset(block + 1)
            .map_err(self.io_err("cannot reset a zone of"))?;
        let st = &mut self.blocks[block as usize];
        st.next_page = 0;
        st.erase_count = st.erase_count.saturating_add(1);
        Ok(now)
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
        self.geo.check_scan(block, data.len())?;
        let ps = self.geo.page_size as usize;
        let written = self.blocks[block as usize].next_page;
        let mut out = Vec::with_capacity(self.geo.pages_per_block as usize);
        for p in 0..self.geo.pages_per_block {
            if p >= written {
                out.push(PageState::Erased);
                continue;
            }
            let (state, _) = self.read_slot(block, p)?;
            let at = p as usize * ps;
            data[at..at + ps].copy_from_slice(&self.buf[..ps]);
            out.push(state);
        }
        Ok(out)
    }

    fn logical_pages(&self) -> u64 {
        self.logical_pages
    }

    fn set_logical_pages(&mut self, pages: u64) -> Result<(), MediaError> {
        let h = encode_header(&self.geo, pages);
        self.dev
            .reset(0)
            .map_err(self.io_err("cannot reset the header zone of"))?;
        self.dev
            .write_at(&h, 0)
            .map_err(self.io_err("cannot write the header of"))?;
        self.dev
            .finish(0)
            .map_err(self.io_err("cannot finish the header zone of"))?;
        self.logical_pages = pages;
        Ok(())
    }

    fn sync_handle(&self) -> Result<File, MediaError> {
        self.dev.sync_handle().map_err(|source| MediaError::Io {
            what: "cannot duplicate",
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::nand::{Media, PageKind, PageMeta};

    /// A zoned device with an active zone limit (as real ones and QEMU's
    /// have): a write that would make one zone too many active fails.
    struct Limited {
        dev: FileZoneDevice,
        max_active: usize,
    }

    impl ZoneDevice for Limited {
        fn block_size(&self) -> u32 {
            self.dev.block_size()
        }
        fn zone_bytes(&self) -> u64 {
            self.dev.zone_bytes()
        }
        fn zone_capacity(&self) -> u64 {
            self.dev.zone_capacity()
        }
        fn zones(&self) -> u32 {
            self.dev.zones()
        }
        fn write_pointer(&mut self, z: u32) -> io::Result<u64> {
            self.dev.write_pointer(z)
        }
        fn reset(&mut self, z: u32) -> io::Result<()> {
            self.dev.reset(z)
        }
        fn finish(&mut self, z: u32) -> io::Result<()> {
            self.dev.finish(z)
        }
        fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
            let cap = self.dev.zone_capacity();
            if offset % self.dev.zone_bytes() == 0 {
                let active = self.dev.wps.iter().filter(|&&w| w > 0 && w < cap).count();
                if active >= self.max_active {
                    return Err(io::Error::from_raw_os_error(libc::EOVERFLOW));
                }
            }
            self.dev.write_at(buf, offset)
        }
        fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.dev.read_at(buf, offset)
        }
        fn sync_handle(&self) -> io::Result<File> {
            self.dev.sync_handle()
        }
    }

    /// Zones whose capacity is not a whole number of slots (8 KiB pages
    /// and their OOB blocks in 128 KiB zones: 10 slots and 8 KiB left) are
    /// finished when their block is full, so filling block after block
    /// never holds more than one zone active (found against QEMU's ZNS
    /// namespace, with 512-byte blocks).
    #[test]
    fn full_blocks_release_their_zones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z.zones");
        let dev = FileZoneDevice::open(&path, Some((128 << 10, 9))).unwrap();
        let limited = Limited { dev, max_active: 2 };
        let mut m = ZonedMedia::open(&path, Box::new(limited), Some(8192), Some(1)).unwrap();
        let g = *m.geometry();
        assert_eq!(g.pages_per_block, 10);
        let data = vec![0x5a; 8192];
        let mut seq = 0;
        for b in 0..g.blocks() {
            for p in 0..g.pages_per_block {
                seq += 1;
                let meta = PageMeta {
                    kind: PageKind::Data,
                    lba: seq,
                    seq,
                };
                m.program(g.ppa(b, p), &data, &meta, 0)
                    .unwrap_or_else(|e| panic!("block {b} page {p}: {e}"));
            }
        }
    }
}
