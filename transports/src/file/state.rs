//! What a file backend and all its queues share: the open file (and its
//! O_DIRECT twin), the geometry, the zero buffer, and what the kernel
//! turned out to refuse.

use crate::sys::Mapping;
use crate::{human_size, Geometry};
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Size of the shared read-only zero buffer used to emulate WriteZeroes.
pub(crate) const ZERO_BUF_LEN: usize = 64 * 1024;

/// State shared by the backend and all its queues.
pub(crate) struct FileInner {
    pub(crate) path: PathBuf,
    pub(super) file: File,
    pub(super) direct: Option<File>,
    /// Why there is no O_DIRECT fd.
    pub(super) direct_note: Option<String>,
    /// Direct-I/O alignment: buffer addresses / offsets and lengths.
    pub(super) dio_mem_align: u64,
    pub(super) dio_offset_align: u64,
    pub(crate) geometry: Geometry,
    pub(super) block_device: bool,
    /// Shared source of zeroes for WriteZeroes emulation.
    pub(super) zeroes: Mapping,
    /// Set once the filesystem rejected FALLOC_FL_PUNCH_HOLE / ZERO_RANGE.
    pub(crate) punch_hole_unsupported: AtomicBool,
    pub(crate) zero_range_unsupported: AtomicBool,
    /// Set once an O_DIRECT transfer was refused with EINVAL despite our
    /// alignment checks (the alignment was a guess): later I/O goes buffered.
    pub(crate) direct_refused: AtomicBool,
    /// Run transfers as plain system calls on the poller instead of through
    /// io_uring: set for files on a memory filesystem that refuses
    /// non-blocking I/O, which io_uring would hand one by one to a kernel
    /// worker thread (a thread switch per request, on the poller's CPU) only
    /// to do the same memory copy.
    pub(crate) inline: bool,
    /// Bytes the CPU copied: buffered transfers (through the page cache)
    /// and transfers of a file in memory.
    pub(crate) copied: AtomicU64,
    /// Held once the file is claimed (see [`claim`]): for a block device,
    /// its exclusive (O_EXCL) descriptor.
    pub(super) claim: std::sync::Mutex<Option<Option<File>>>,
}

impl FileInner {
    pub(crate) fn buffered_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The O_DIRECT fd, unless there is none or it turned out unusable.
    pub(crate) fn direct_fd(&self) -> Option<RawFd> {
        if self.direct_refused.load(Ordering::Relaxed) {
            return None;
        }
        self.direct.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The fd for a transfer that wants O_DIRECT if `direct`; clears
    /// `direct` when there is no usable O_DIRECT fd.
    pub(crate) fn fd_for(&self, direct: &mut bool) -> RawFd {
        match self.direct_fd() {
            Some(fd) if *direct => fd,
            _ => {
                *direct = false;
                self.buffered_fd()
            }
        }
    }

    /// Whether a transfer at `offset` through `iovs` meets the direct-I/O
    /// alignment (offset, every base and every length).
    pub(crate) fn direct_ok(&self, offset: u64, iovs: &[libc::iovec]) -> bool {
        if self.direct_fd().is_none() {
            return false;
        }
        let (mem, off) = (self.dio_mem_align, self.dio_offset_align);
        offset % off == 0
            && iovs
                .iter()
                .all(|v| (v.iov_base as usize as u64) % mem == 0 && (v.iov_len as u64) % off == 0)
    }

    pub(crate) fn zero_buffer(&self) -> *const u8 {
        self.zeroes.as_ptr()
    }

    pub(super) fn describe(&self) -> String {
        let mut s = format!("file:{} (", self.path.display());
        if self.block_device {
            s.push_str("block device, ");
        }
        s.push_str(&format!(
            "{}, {} B blocks, ",
            human_size(self.geometry.size_bytes()),
            self.geometry.block_size
        ));
        match (&self.direct, &self.direct_note) {
            (Some(_), _) if !self.direct_refused.load(Ordering::Relaxed) => {
                if self.dio_mem_align == self.dio_offset_align {
                    s.push_str(&format!("O_DIRECT, {} B alignment)", self.dio_offset_align));
                } else {
                    s.push_str(&format!(
                        "O_DIRECT, {} B buffer / {} B offset alignment)",
                        self.dio_mem_align, self.dio_offset_align
                    ));
                }
            }
            (Some(_), _) => s.push_str("buffered: O_DIRECT transfers refused by the kernel)"),
            (None, note) => s.push_str(&format!(
                "buffered: {})",
                note.as_deref().unwrap_or("no O_DIRECT")
            )),
        }
        if self.inline {
            s.push_str(
                " [memory filesystem without non-blocking I/O: transfers run on the poller]",
            );
        }
        s
    }
}
