//! The flash backend: a conventional namespace served by a page-mapped FTL
//! ([`ftl`]) on emulated NAND kept in a file ([`nand`]), in the spirit of
//! Open-Channel SSDs, where the FTL runs on the host (here: in the
//! runtime), not in the drive.
//!
//! The namespace's block size is the flash page size: one LBA is one page,
//! so the map needs no read-modify-write of partial pages.
//!
//! Requests move their data at submit time (a `pwrite`/`pread` into the
//! page cache, on the poller) and complete when the timing model says the
//! flash operations would have finished: the poller sees them in `poll`
//! once that time has come, and never sleeps for them.
//!
//! **Durability.** A completed write is in the media file (the page cache):
//! it survives the runtime crashing or being killed. It survives the host
//! crashing once a Flush (or its own FUA) completes: both wait for an
//! `fdatasync` of the media file done by the backend's flusher thread.
//! The backend therefore announces a volatile write cache.

mod config;
pub mod ftl;
pub mod nand;
mod queue;
pub(crate) mod sync;
pub mod zns;
pub mod zoned_media;
pub mod zones;

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

pub(crate) use config::parse as parse_spec;
pub use config::FlashSpec;
pub use ftl::FlashStats;
pub use nand::{Media, MediaError, NandGeometry, NandMedia, Timing};
pub use zns::{ZnsBackend, ZnsSpec};

use crate::{human_size, Backend, BackendError, BackendQueue, Features, Geometry};
use ftl::Ftl;
use sync::Flusher;

/// Most requests one flash queue holds.
pub const MAX_FLASH_DEPTH: u32 = 4096;

/// State shared by the backend and its queues once claimed.
pub(crate) struct Shared {
    pub(crate) ftl: Mutex<Ftl>,
    pub(crate) flusher: Flusher,
    epoch: Instant,
    /// Bytes of data copied between requests and the media.
    pub(crate) copied: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Nanoseconds on the timing model's clock.
    pub(crate) fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

struct Claim {
    shared: Arc<Shared>,
    /// Holds the exclusive lock on the media file.
    lock: File,
}

/// A namespace on emulated flash (see the module docs).
pub struct FlashBackend {
    spec: FlashSpec,
    nand: NandGeometry,
    timing: Timing,
    geometry: Geometry,
    claim: Mutex<Option<Claim>>,
}

impl FlashBackend {
    /// Open (creating when absent) the media file and check its geometry
    /// and format against the spec. The FTL is built at [`Backend::claim`].
    pub fn open(spec: &FlashSpec) -> Result<FlashBackend, BackendError> {
        let shown = spec.to_string();
        let cfg = |reason: String| BackendError::Config(format!("{shown}: {reason}"));
        let mut media = open_media(spec, None).map_err(|e| cfg(e.to_string()))?;
        let nand = *media.geometry();
        let wrong = spec.geometry_mismatches(&nand);
        if !wrong.is_empty() {
            return Err(cfg(format!(
                "the media file has another geometry: {}",
                wrong.join(", ")
            )));
        }
        let wanted = ftl::logical_pages_for(&nand, spec.op()).map_err(cfg)?;
        let logical = match media.logical_pages() {
            0 => {
                media
                    .set_logical_pages(wanted)
                    .map_err(|e| cfg(e.to_string()))?;
                wanted
            }
            have if spec.op_milli.is_some() && have != wanted => {
                return Err(cfg(format!(
                    "the media was formatted with {have} logical pages; op={} gives {wanted}",
                    spec.op()
                )));
            }
            have if have >= nand.pages() => {
                return Err(cfg(format!(
                    "the header says {have} logical pages, more than the {} physical ones",
                    nand.pages()
                )));
            }
            have => have,
        };
        Ok(FlashBackend {
            spec: spec.clone(),
            nand,
            timing: spec.timing(nand.page_size),
            geometry: Geometry {
                block_size: nand.page_size,
                num_blocks: logical,
            },
            claim: Mutex::new(None),
        })
    }

    /// The FTL's counters (`None` before the claim).
    pub fn stats(&self) -> Option<FlashStats> {
        let c = self.claim.lock().unwrap_or_else(PoisonError::into_inner);
        c.as_ref().map(|c| {
            c.shared
                .ftl
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .stats()
        })
    }

    /// The NAND geometry.
    pub fn nand_geometry(&self) -> NandGeometry {
        self.nand
    }

    /// The timing model.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    fn mount(&self) -> Result<Claim, BackendError> {
        let path = &self.spec.path;
        let io = |what| {
            move |source| BackendError::Io {
                what,
                path: path.clone(),
                source,
            }
        };
        let lock = lock_media(path)?;
        let shown = self.spec.to_string();
        let media_err = |e: MediaError| BackendError::Config(format!("{shown}: {e}"));
        let media = open_media(&self.spec, Some(self.timing)).map_err(media_err)?;
        if *media.geometry() != self.nand || media.logical_pages() != self.geometry.num_blocks {
            return Err(BackendError::Config(format!(
                "{shown}: the media file changed between open and claim"
            )));
        }
        let sync_file = media.sync_handle().map_err(media_err)?;
        let flusher =
            Flusher::start(sync_file).map_err(io("cannot start the flusher thread for"))?;
        let started = Instant::now();
        let ftl = Ftl::mount(
            media,
            self.geometry.num_blocks,
            Arc::clone(flusher.syncer()),
        )
        .map_err(media_err)?;
        let st = ftl.stats();
        tracing::info!(
            path = %path.display(),
            valid_pages = st.valid_pages,
            free_blocks = st.free_blocks,
            torn_pages = st.torn_pages_at_mount,
            ms = started.elapsed().as_millis(),
            "flash media mounted"
        );
        Ok(Claim {
            shared: Arc::new(Shared {
                ftl: Mutex::new(ftl),
                flusher,
                epoch: Instant::now(),
                copied: std::sync::atomic::AtomicU64::new(0),
            }),
            lock,
        })
    }
}

/// Open the spec's media: NAND emulated in a file, or (`media=zoned`) a
/// zoned block device or a file emulating one.
fn open_media(spec: &FlashSpec, timing: Option<Timing>) -> Result<Box<dyn Media>, MediaError> {
    if !spec.zoned {
        return Ok(Box::new(NandMedia::open(
            &spec.path,
            spec.new_geometry(),
            timing,
        )?));
    }
    let dev = zoned_media::open_zone_device(
        &spec.path,
        spec.zone_bytes.unwrap_or(1 << 20),
        spec.zones.unwrap_or(64),
    )
    .map_err(|source| MediaError::Io {
        what: "cannot open the zoned device",
        path: spec.path.clone(),
        source,
    })?;
    Ok(Box::new(zoned_media::ZonedMedia::open(
        &spec.path,
        dev,
        spec.page_size,
        spec.dies,
    )?))
}

/// Open the media file and take its exclusive lock, waiting for another
/// process that holds it to let go.
pub(crate) fn lock_media(path: &Path) -> Result<File, BackendError> {
    let io = |what| {
        move |source| BackendError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(io("cannot open"))?;
    crate::file::wait_for_claim(path, || match crate::sys::ofd_lock(lock.as_fd(), true) {
        Ok(true) => Ok(Some(())),
        Ok(false) => Ok(None),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOLCK | libc::EINVAL)) => {
            tracing::warn!(path = %path.display(), error = %e, "the filesystem does not lock files: nothing keeps two runtimes from serving it at once");
            Ok(Some(()))
        }
        Err(e) => Err(e),
    })
    .map_err(io("cannot claim"))?;
    Ok(lock)
}

impl Backend for FlashBackend {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn features(&self) -> Features {
        Features {
            volatile_write_cache: true,
            write_zeroes: true,
            deallocate: true,
        }
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn BackendQueue>, BackendError> {
        if depth == 0 || depth > MAX_FLASH_DEPTH {
            return Err(BackendError::Config(format!(
                "flash: queue depth {depth} is not between 1 and {MAX_FLASH_DEPTH}"
            )));
        }
        let c = self.claim.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(c) = c.as_ref() else {
            return Err(BackendError::Config(format!(
                "{}: queue opened before the backend was claimed",
                self.spec
            )));
        };
        Ok(Box::new(queue::FlashQueue::new(
            Arc::clone(&c.shared),
            self.geometry,
            depth,
        )))
    }

    fn flush(&self) -> Result<(), BackendError> {
        let c = self.claim.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = c.as_ref() {
            c.lock.sync_data().map_err(|source| BackendError::Flush {
                target: self.spec.to_string(),
                source,
            })?;
        }
        Ok(())
    }

    fn figures(&self) -> Vec<leapio_backend::Figure> {
        let Some(s) = self.stats() else {
            return Vec::new();
        };
        let f = |name, help, counter, value: u64| leapio_backend::Figure {
            name,
            help,
            counter,
            value: value as f64,
        };
        let wa = if s.host_pages_written == 0 {
            0.0
        } else {
            s.media_pages_programmed as f64 / s.host_pages_written as f64
        };
        vec![
            f(
                "ftl_host_pages_written_total",
                "Pages the host wrote.",
                true,
                s.host_pages_written,
            ),
            f(
                "ftl_media_pages_programmed_total",
                "Pages programmed on the media: host writes, GC copies, trim records.",
                true,
                s.media_pages_programmed,
            ),
            leapio_backend::Figure {
                name: "ftl_write_amplification",
                help: "Media pages programmed per page the host wrote, since the backend opened.",
                counter: false,
                value: wa,
            },
            f(
                "ftl_gc_pages_moved_total",
                "Pages garbage collection moved.",
                true,
                s.gc_pages_moved,
            ),
            f(
                "ftl_gc_blocks_cleaned_total",
                "Blocks garbage collection cleaned.",
                true,
                s.gc_victims,
            ),
            f("ftl_erases_total", "Blocks erased.", true, s.erases),
            f(
                "ftl_free_blocks",
                "Erased blocks ready to program.",
                false,
                s.free_blocks,
            ),
            f(
                "ftl_valid_pages",
                "Pages holding live data or trim records.",
                false,
                s.valid_pages,
            ),
            f(
                "ftl_erase_count_max",
                "Most erases of one block over the media's life.",
                false,
                u64::from(s.erase_count_max),
            ),
            f(
                "ftl_write_waits_total",
                "Writes that waited for the flusher to free space.",
                true,
                s.write_waits,
            ),
        ]
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
        let mut s = format!(
            "{} ({}, {} B blocks; NAND {} ch x {} dies x {} blocks x {} pages of {} B, op {}",
            self.spec,
            human_size(self.geometry.size_bytes()),
            self.geometry.block_size,
            n.channels,
            n.dies_per_channel,
            n.blocks_per_die,
            n.pages_per_block,
            n.page_size,
            self.spec.op(),
        );
        if let Some(st) = self.stats() {
            s += &format!(
                "; WA {:.2}, {} GC victims, erases {}..{}",
                st.write_amplification(),
                st.gc_victims,
                st.erase_count_min,
                st.erase_count_max
            );
        }
        s.push(')');
        s
    }

    fn claim(&self) -> Result<(), BackendError> {
        let mut c = self.claim.lock().unwrap_or_else(PoisonError::into_inner);
        if c.is_none() {
            *c = Some(self.mount()?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
