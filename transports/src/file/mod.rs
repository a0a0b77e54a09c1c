//! The file / block-device backend: opening, geometry, direct-I/O detection.
//! The per-poller queue is `queue.rs`, the state they share `state.rs`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

mod queue;
mod state;

use crate::sys::{self, DioAlign, Mapping};
use crate::{
    Backend, BackendError, BackendQueue, Features, Geometry, AUTO_BLOCK_SIZE, DEFAULT_BLOCK_SIZE,
    MAX_BLOCK_SIZE, MIN_BLOCK_SIZE,
};
pub(crate) use queue::FileQueue;
pub(crate) use state::{FileInner, ZERO_BUF_LEN};

/// Most requests one queue may have in flight (io_uring's IORING_MAX_ENTRIES).
pub const MAX_QUEUE_DEPTH: u32 = 32768;

/// A regular file or a block device driven through io_uring.
pub struct FileBackend {
    inner: Arc<FileInner>,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BackendError + 'a {
    move |source| BackendError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

impl FileBackend {
    /// Open a regular file or a block device read-write.
    ///
    /// `block_size` is [`AUTO_BLOCK_SIZE`] (the device's logical block size,
    /// 512 for files) or a power of two from 512 to 65536; for block devices
    /// it must be a multiple of the logical block size. A size that is not a
    /// multiple of the block size is rounded down (the tail is never used).
    pub fn open(path: &Path, block_size: u32) -> Result<Self, BackendError> {
        if block_size != AUTO_BLOCK_SIZE
            && (!block_size.is_power_of_two()
                || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size))
        {
            return Err(BackendError::Config(format!(
                "{}: block size {block_size} is not a power of two between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}",
                path.display()
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(io_err("cannot open", path))?;
        let meta = file.metadata().map_err(io_err("cannot stat", path))?;
        let file_type = meta.file_type();
        let block_device = file_type.is_block_device();
        let (raw_size, logical_block_size) = if block_device {
            let size = sys::block_device_size(file.as_fd())
                .map_err(io_err("BLKGETSIZE64 failed on", path))?;
            let lbs = sys::block_device_logical_block_size(file.as_fd())
                .map_err(io_err("BLKSSZGET failed on", path))?;
            (size, lbs)
        } else if file_type.is_file() {
            (meta.len(), DEFAULT_BLOCK_SIZE)
        } else {
            return Err(BackendError::Config(format!(
                "{} is neither a regular file nor a block device",
                path.display()
            )));
        };

        let block_size = if block_size == AUTO_BLOCK_SIZE {
            logical_block_size
        } else {
            block_size
        };
        if block_device && (logical_block_size == 0 || block_size % logical_block_size != 0) {
            return Err(BackendError::Config(format!(
                "{}: block size {block_size} is not a multiple of the device's logical block size {logical_block_size}",
                path.display()
            )));
        }
        let bs = u64::from(block_size);
        let num_blocks = raw_size / bs;
        if num_blocks == 0 {
            return Err(BackendError::Config(format!(
                "{} is {raw_size} bytes, smaller than one {block_size}-byte block",
                path.display()
            )));
        }
        if raw_size % bs != 0 {
            tracing::warn!(
                path = %path.display(),
                size = raw_size,
                block_size,
                unused = raw_size % bs,
                "size is not a multiple of the block size; the tail is not used"
            );
        }

        let (direct, direct_note, dio_mem_align, dio_offset_align) =
            open_direct(path, block_device, logical_block_size);

        let inline = sys::on_memory_fs(file.as_fd()) && {
            let mut probe = vec![0u8; block_size as usize];
            sys::nowait_unsupported(file.as_fd(), probe.as_mut_ptr(), probe.len())
        };

        let zeroes = Mapping::zeroes(ZERO_BUF_LEN).map_err(|source| BackendError::Map {
            size: ZERO_BUF_LEN as u64,
            source,
        })?;

        let backend = FileBackend {
            inner: Arc::new(FileInner {
                path: path.to_owned(),
                file,
                direct,
                direct_note,
                dio_mem_align,
                dio_offset_align,
                geometry: Geometry {
                    block_size,
                    num_blocks,
                },
                block_device,
                zeroes,
                punch_hole_unsupported: AtomicBool::new(false),
                zero_range_unsupported: AtomicBool::new(false),
                direct_refused: AtomicBool::new(false),
                inline,
                copied: std::sync::atomic::AtomicU64::new(0),
                claim: std::sync::Mutex::new(None),
            }),
        };
        tracing::info!(backend = %backend.describe(), "opened file backend");
        Ok(backend)
    }

    #[cfg(test)]
    pub(crate) fn inner_for_tests(&self) -> &Arc<FileInner> {
        &self.inner
    }

    /// Whether transfers with suitably aligned buffers bypass the page cache.
    pub fn direct_io(&self) -> bool {
        self.inner.direct.is_some()
    }

    /// Direct-I/O alignment `(buffer address, offset and length)` in bytes,
    /// when O_DIRECT is in use. Callers that want zero-copy direct I/O keep
    /// their buffers aligned to these.
    pub fn direct_io_alignment(&self) -> Option<(u64, u64)> {
        self.inner
            .direct
            .as_ref()
            .map(|_| (self.inner.dio_mem_align, self.inner.dio_offset_align))
    }
}

/// How long opening waits for another process to let go of the file.
pub const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Run `attempt` until it gives a value or an error, for up to
/// [`CLAIM_WAIT`] while it says "someone else holds it" (`Ok(None)`).
pub(crate) fn wait_for_claim<T>(
    path: &Path,
    mut attempt: impl FnMut() -> io::Result<Option<T>>,
) -> io::Result<T> {
    let deadline = std::time::Instant::now() + CLAIM_WAIT;
    let mut said = false;
    loop {
        if let Some(v) = attempt()? {
            return Ok(v);
        }
        if std::time::Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "still in use by another process after {} s (another runtime serving it, or one that stopped and whose I/O has not finished)",
                    CLAIM_WAIT.as_secs()
                ),
            ));
        }
        if !said {
            tracing::info!(path = %path.display(), "in use by another process: waiting for it to let go");
            said = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Claim the file for this process: an exclusive open-file-description
/// lock first (granted only once every other process's descriptions of it
/// are gone, including the kernel's references for I/O still in flight
/// after a runtime was killed), then shared locks on both of our
/// descriptions, so that a successor waits for both. This is the fence
/// that keeps a dead runtime's late writes from landing after its
/// successor's.
fn claim(
    path: &Path,
    block_device: bool,
    file: &File,
    direct: Option<&File>,
) -> Result<Option<File>, BackendError> {
    // A block device is also opened exclusively (O_EXCL), so a mounted or
    // otherwise claimed device is refused instead of corrupted.
    let exclusive = if block_device {
        let f = wait_for_claim(path, || {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_EXCL)
                .open(path)
                .map(Some)
                .or_else(|e| match e.raw_os_error() {
                    Some(libc::EBUSY) => Ok(None),
                    _ => Err(e),
                })
        })
        .map_err(io_err("cannot open exclusively (mounted or in use?)", path))?;
        Some(f)
    } else {
        None
    };
    let locked = wait_for_claim(path, || match sys::ofd_lock(file.as_fd(), true) {
        Ok(true) => Ok(Some(true)),
        Ok(false) => Ok(None),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOLCK | libc::EINVAL)) => {
            tracing::warn!(path = %path.display(), error = %e, "the filesystem does not lock files: nothing keeps two runtimes from serving it at once");
            Ok(Some(false))
        }
        Err(e) => Err(e),
    })
    .map_err(io_err("cannot claim", path))?;
    if locked {
        sys::ofd_lock(file.as_fd(), false).map_err(io_err("cannot lock", path))?;
        if let Some(d) = direct {
            sys::ofd_lock(d.as_fd(), false).map_err(io_err("cannot lock", path))?;
        }
    }
    Ok(exclusive)
}

/// Open the O_DIRECT fd and work out its alignment. Never fails: without
/// direct I/O every transfer goes through the page cache.
fn open_direct(
    path: &Path,
    block_device: bool,
    logical_block_size: u32,
) -> (Option<File>, Option<String>, u64, u64) {
    let direct = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_DIRECT)
        .open(path);
    let direct = match direct {
        Ok(f) => f,
        Err(e) => {
            tracing::info!(path = %path.display(), error = %e, "O_DIRECT refused; using buffered I/O only");
            return (None, Some(format!("O_DIRECT refused: {e}")), 0, 0);
        }
    };
    let fallback = u64::from(if block_device {
        logical_block_size
    } else {
        512
    })
    .max(512);
    match sys::dio_alignment(direct.as_fd()) {
        DioAlign::Known { mem, offset } => (Some(direct), None, u64::from(mem), u64::from(offset)),
        DioAlign::Unknown => (Some(direct), None, fallback, fallback),
        DioAlign::Unsupported => {
            tracing::info!(path = %path.display(), "filesystem reports no direct I/O support; using buffered I/O only");
            (
                None,
                Some("filesystem reports no direct I/O support".to_owned()),
                0,
                0,
            )
        }
    }
}

impl FileBackend {
    /// Claim the file for this process (see [`claim`]); waits up to
    /// [`CLAIM_WAIT`] for another process to let go. Idempotent.
    pub fn claim(&self) -> Result<(), BackendError> {
        let i = &self.inner;
        let mut held = i
            .claim
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.is_none() {
            *held = Some(claim(&i.path, i.block_device, &i.file, i.direct.as_ref())?);
        }
        Ok(())
    }
}

impl Backend for FileBackend {
    fn geometry(&self) -> Geometry {
        self.inner.geometry
    }

    fn features(&self) -> Features {
        Features {
            volatile_write_cache: true,
            write_zeroes: true,
            deallocate: true,
        }
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn BackendQueue>, BackendError> {
        if depth == 0 || depth > MAX_QUEUE_DEPTH {
            return Err(BackendError::Config(format!(
                "queue depth {depth} for {} is not between 1 and {MAX_QUEUE_DEPTH}",
                self.inner.path.display()
            )));
        }
        Ok(Box::new(FileQueue::new(Arc::clone(&self.inner), depth)?))
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.inner
            .file
            .sync_data()
            .map_err(|source| BackendError::Flush {
                target: self.describe(),
                source,
            })
    }

    fn claim(&self) -> Result<(), BackendError> {
        FileBackend::claim(self)
    }

    fn copied_bytes(&self) -> u64 {
        self.inner.copied.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}
