//! The interface between the runtime and its storage backends: one
//! storage object ([`Backend`]) hands out one non-blocking submit/poll queue
//! ([`BackendQueue`]) per poller, which moves bytes between host iovecs
//! (pointing into guest memory) and storage. The implementations are the
//! `leapio-backends` crate; the NVMe controller core plans commands into
//! [`IoKind`]s without knowing any of them.
//!
//! Request rules common to every backend (checked by `submit`, violations
//! return [`SubmitError::Invalid`] and queue nothing):
//! - `offset` and `len` are multiples of [`Geometry::block_size`] and the
//!   range lies inside the device (`Flush` ignores `offset`, needs `len == 0`);
//! - for `Read`/`Write`/`WriteFua` the iovec lengths add up to `len` and
//!   there are at most [`MAX_IOVECS`] of them; other kinds carry no iovecs;
//! - a zero-length request succeeds without touching storage.
//!
//! Things callers must know:
//! - `submit` copies the iovec array; the memory it points to must stay valid
//!   until the tag's completion has been returned (the `submit` contract).
//! - File queues only hand work to the kernel in `kick`, `poll` and `drain`;
//!   RAM queues finish requests inside `submit`. Always `poll` after `kick`.
//! - `in_flight` counts requests whose completion has not been returned yet
//!   (RAM: finished but not yet polled); `submit` says `Full` at `depth`.
//! - Completions come back in any order; a transfer is only `Ok` when every
//!   byte moved. Errors carry the errno (`EIO`, `ENOSPC`, `EFAULT`...).
//! - `Flush` covers writes that completed before it was submitted.
//! - Dropping a file queue with requests in flight waits (up to 10 s) for
//!   them, so guest memory is not written after the drop returns.
//! - Block devices are opened with O_EXCL: a mounted or claimed device is
//!   refused.

pub mod dma;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Most iovecs one request may carry: the largest transfer (4 KiB << MDTS
/// 10) starting mid-page touches 1025 pages, none of them adjacent at worst.
pub const MAX_IOVECS: usize = 1025;

/// Most iovecs one system call takes (the kernel's `UIO_MAXIOV`): a request
/// with more is transferred in steps.
pub const UIO_MAXIOV: usize = 1024;

/// Smallest and largest block size a backend accepts (powers of two only).
pub const MIN_BLOCK_SIZE: u32 = 512;
/// See [`MIN_BLOCK_SIZE`].
pub const MAX_BLOCK_SIZE: u32 = 64 * 1024;

/// Size of the storage object as the guest should see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per logical block (a power of two, 512..=65536).
    pub block_size: u32,
    /// Number of logical blocks.
    pub num_blocks: u64,
}

impl Geometry {
    /// Capacity in bytes (`block_size * num_blocks`).
    pub fn size_bytes(&self) -> u64 {
        u64::from(self.block_size).saturating_mul(self.num_blocks)
    }
}

/// What the backend can do beyond reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// Completed writes may sit in a volatile cache until a `Flush`
    /// (the guest should send flushes).
    pub volatile_write_cache: bool,
    /// `IoKind::WriteZeroes` (and `WriteZeroesFua`) is supported.
    pub write_zeroes: bool,
    /// `IoKind::Deallocate` is supported (and later reads return zeroes).
    pub deallocate: bool,
}

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    /// Storage -> iovecs.
    Read,
    /// iovecs -> storage.
    Write,
    /// iovecs -> storage; the data reaches stable storage before completion.
    WriteFua,
    /// Everything completed before this flush reaches stable storage.
    Flush,
    /// The range reads back as zeroes.
    WriteZeroes,
    /// The range reads back as zeroes, and that is on stable storage
    /// before completion (Write Zeroes with FUA, or with the volatile write
    /// cache disabled).
    WriteZeroesFua,
    /// The range may be released; later reads return zeroes.
    Deallocate,
    /// Zoned backends only: iovecs -> storage at the write pointer of the
    /// zone starting at `offset`; the completion's `value` is the byte
    /// offset written. `fua`: durable before completion.
    ZoneAppend {
        /// Durable before completion.
        fua: bool,
    },
    /// Zoned backends only: a zone state change of the zone starting at
    /// `offset` (or of every zone the action applies to, with `all`);
    /// `len` is 0.
    Zone {
        /// What to do.
        action: ZoneAction,
        /// Every zone in a state the action applies to (`offset` ignored).
        all: bool,
    },
}

impl IoKind {
    /// Whether requests of this kind carry data in iovecs.
    pub fn has_data(self) -> bool {
        matches!(
            self,
            IoKind::Read | IoKind::Write | IoKind::WriteFua | IoKind::ZoneAppend { .. }
        )
    }

    /// Whether this kind only exists on zoned backends.
    pub fn is_zoned(self) -> bool {
        matches!(self, IoKind::ZoneAppend { .. } | IoKind::Zone { .. })
    }
}

/// Zone state changes a zoned backend takes (the NVMe Zoned Namespace
/// Command Set's, without the optional Offline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneAction {
    /// An open zone becomes closed (stays active).
    Close,
    /// The zone becomes full (the write pointer moves to its end).
    Finish,
    /// An empty or closed zone becomes explicitly open.
    Open,
    /// The zone becomes empty (its data is gone).
    Reset,
}

/// The state of a zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneState {
    /// Write pointer at the start, no resources held.
    Empty,
    /// Opened by a write.
    ImplicitlyOpen,
    /// Opened by an Open action.
    ExplicitlyOpen,
    /// Partly written, not open (active).
    Closed,
    /// Written to its capacity, or finished.
    Full,
}

/// Why a zoned request was refused (the NVMe zoned statuses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneError {
    /// A write that does not start at the zone's write pointer.
    InvalidWrite,
    /// A write that crosses the end of the zone's capacity.
    Boundary,
    /// A write or append to a full zone.
    Full,
    /// Opening the zone would exceed the open zones limit.
    TooManyOpen,
    /// Activating the zone would exceed the active zones limit.
    TooManyActive,
    /// The action does not apply to the zone's state.
    InvalidTransition,
    /// `offset` is not the start of a zone.
    NotZoneStart,
}

/// How a zoned backend divides its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneGeometry {
    /// Blocks per zone (a power of two): zone `z` starts at block `z * zone_blocks`.
    pub zone_blocks: u64,
    /// Writable blocks per zone (at most `zone_blocks`).
    pub capacity: u64,
    /// Number of zones.
    pub zones: u64,
    /// Most zones open at once.
    pub max_open: u32,
    /// Most zones open or closed (active) at once.
    pub max_active: u32,
}

/// One zone as reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneDesc {
    /// First block.
    pub start: u64,
    /// Writable blocks.
    pub capacity: u64,
    /// Next block to write (absolute).
    pub write_pointer: u64,
    /// State.
    pub state: ZoneState,
    /// The backend made the zone full by itself (recovery found it
    /// inconsistent).
    pub finished_by_backend: bool,
}

/// One I/O request. The iovecs are copied at submit time; the memory they
/// point to must stay valid until the request completes (see
/// [`BackendQueue::submit`]).
pub struct IoRequest<'a> {
    /// Caller's cookie, returned in the [`Completion`].
    pub tag: u64,
    /// What to do.
    pub kind: IoKind,
    /// Byte offset into the device.
    pub offset: u64,
    /// Length in bytes; 0 for `Flush`.
    pub len: u64,
    /// Host buffers; empty for `Flush`, `WriteZeroes` and `Deallocate`.
    pub iov: &'a [libc::iovec],
    /// Whom the request is for: an id from [`Backend::owner`], or 0 for
    /// nobody in particular. A backend shared by several owners may
    /// schedule between them (QoS); others ignore it.
    pub owner: u32,
    /// What the front end journals of the command (see [`Journal`]);
    /// `None` for a front end that keeps no journal.
    pub journal: Option<Journal<'a>>,
}

/// What a front end that journals its commands (the queue-state area of
/// `leapio_link::qstate`, so that a runtime that dies can be replaced)
/// tells a backend whose commands change its state at submission, so that
/// running a command a second time does what running it once did. Zoned
/// backends use it; others ignore it.
#[derive(Clone, Copy, Debug)]
pub struct Journal<'a> {
    /// The command was given to a runtime that died before its completion
    /// was recorded: it may have run, in whole or in part. A write whose
    /// blocks are already below its zone's write pointer completes without
    /// writing them again; a Close of a zone that is already empty
    /// succeeds.
    pub rerun: bool,
    /// The command's word in the journal, durable the moment it is stored:
    /// 0, or 1 + the LBA a Zone Append was given, stored before its data is
    /// written. A rerun Append whose word is set goes where it went the
    /// first time.
    pub placed: &'a AtomicU64,
}

impl Journal<'_> {
    /// The LBA a Zone Append was given, if it was recorded.
    pub fn placed_lba(&self) -> Option<u64> {
        self.placed.load(Ordering::Acquire).checked_sub(1)
    }

    /// Record the LBA a Zone Append is given, before its data is written.
    pub fn place(&self, lba: u64) {
        self.placed.store(lba.saturating_add(1), Ordering::Release);
    }
}

/// A request kept by whoever holds it until its queue takes it (a
/// scheduler holding it for tokens, a poller whose queue was full): the
/// request with its own copy of the iovec array. The memory the iovecs
/// point to stays the submitter's, valid until the request completes.
pub struct KeptRequest {
    /// [`IoRequest::tag`].
    pub tag: u64,
    /// [`IoRequest::kind`].
    pub kind: IoKind,
    /// [`IoRequest::offset`].
    pub offset: u64,
    /// [`IoRequest::len`].
    pub len: u64,
    iov: Vec<libc::iovec>,
    /// [`IoRequest::journal`]: the rerun flag and where the word is.
    journal: Option<(bool, *const AtomicU64)>,
    /// [`IoRequest::owner`].
    pub owner: u32,
}

// SAFETY: the iovecs point into memory the submitter keeps valid until the
// request completes (the `BackendQueue::submit` contract), whichever thread
// holds the request; whoever keeps it only hands it to a queue.
unsafe impl Send for KeptRequest {}

impl KeptRequest {
    /// Keep `req` (its iovec array copied).
    pub fn of(req: &IoRequest<'_>) -> KeptRequest {
        KeptRequest {
            tag: req.tag,
            kind: req.kind,
            offset: req.offset,
            len: req.len,
            iov: req.iov.to_vec(),
            owner: req.owner,
            journal: req.journal.map(|j| (j.rerun, std::ptr::from_ref(j.placed))),
        }
    }

    /// The request, to submit.
    pub fn request(&self) -> IoRequest<'_> {
        IoRequest {
            tag: self.tag,
            kind: self.kind,
            offset: self.offset,
            len: self.len,
            iov: &self.iov,
            owner: self.owner,
            journal: self.journal.map(|(rerun, placed)| Journal {
                rerun,
                // SAFETY: the journal word, like the memory the iovecs point
                // to, stays valid until the request completes (the contract
                // of `BackendQueue::submit`, which gave the request).
                placed: unsafe { &*placed },
            }),
        }
    }
}

/// Whom I/O is for, as a backend shared between them may tell them apart:
/// a namespace of a controller of this runtime (by the controller's name),
/// or of a remote host (by its NQN).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner<'a> {
    /// Namespace `nsid` of controller `name`.
    Controller {
        /// The controller's name.
        name: &'a str,
        /// The namespace.
        nsid: u32,
    },
    /// Namespace `nsid` as host `nqn` reaches it over a fabric.
    Host {
        /// The host's NQN.
        nqn: &'a str,
        /// The namespace.
        nsid: u32,
    },
}

impl fmt::Debug for IoRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoRequest")
            .field("tag", &self.tag)
            .field("kind", &self.kind)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("iovecs", &self.iov.len())
            .finish()
    }
}

/// A failed I/O: the (positive) errno the kernel or the backend reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoError {
    /// Positive errno value (`libc::EIO`, `libc::ENOSPC`...).
    pub errno: i32,
    /// A zoned backend's refusal (`errno` is then `EIO`).
    pub zone: Option<ZoneError>,
    /// The status an NVMe device reported for the command (the 15-bit
    /// status field of its completion; `errno` is then `EIO`): a backend
    /// that drives an NVMe device passes it on as it is.
    pub status: Option<u16>,
}

impl IoError {
    /// Error from a positive errno value.
    pub const fn from_errno(errno: i32) -> Self {
        IoError {
            errno,
            zone: None,
            status: None,
        }
    }

    /// An NVMe device's failure status (see [`IoError::status`]).
    pub const fn device(status: u16) -> Self {
        IoError {
            errno: libc::EIO,
            zone: None,
            status: Some(status & 0x7fff),
        }
    }

    /// A zoned backend's refusal.
    pub const fn zone(e: ZoneError) -> Self {
        IoError {
            errno: libc::EIO,
            zone: Some(e),
            status: None,
        }
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(z) = self.zone {
            return write!(f, "zone error: {z:?}");
        }
        if let Some(s) = self.status {
            return write!(
                f,
                "device status: type {:#x}, code {:#04x}",
                (s >> 8) & 0x7,
                s & 0xff
            );
        }
        write!(
            f,
            "{} (errno {})",
            std::io::Error::from_raw_os_error(self.errno),
            self.errno
        )
    }
}

impl std::error::Error for IoError {}

/// A finished request.
#[derive(Debug)]
pub struct Completion {
    /// The request's tag.
    pub tag: u64,
    /// `Ok` when the whole transfer (never a short one) or operation succeeded.
    pub result: Result<(), IoError>,
    /// Zone Append: the byte offset the data was written at; else 0.
    pub value: u64,
}

/// Why a request was not queued. Nothing is queued when `submit` fails.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue already holds `depth` requests: poll, then retry.
    #[error("queue full: poll for completions, then retry")]
    Full,
    /// The request itself is wrong (range past the end, iovec total != len...).
    #[error("invalid request: {0}")]
    Invalid(&'static str),
}

/// Errors opening, configuring or flushing a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A backend spec string could not be parsed.
    #[error("invalid backend spec '{spec}': {reason}")]
    Spec {
        /// The string given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A system call on a backing file or device failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done ("cannot open", "cannot stat"...).
        what: &'static str,
        /// The file or device.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The backing object cannot be used as configured (size, block size, type).
    #[error("{0}")]
    Config(String),
    /// Anonymous memory for a RAM backend could not be mapped.
    #[error("cannot map {size} bytes of anonymous memory")]
    Map {
        /// Bytes requested.
        size: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// io_uring set-up or submission failed.
    #[error("io_uring {what}")]
    Uring {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A remote target (NVMe/TCP) could not be used.
    #[error("{target}")]
    Remote {
        /// The backend spec.
        target: String,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A synchronous flush failed.
    #[error("flush of {target} failed")]
    Flush {
        /// The backend's description.
        target: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// One figure a backend reports of itself: shown by the metrics endpoint
/// as `leapio_backend_<name>` with its namespace's labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    /// Lower case with underscores; a counter's ends in `_total`.
    pub name: &'static str,
    pub help: &'static str,
    /// A count that only grows (else a value that goes up and down).
    pub counter: bool,
    pub value: f64,
}

/// What an operator can see and do to a storage service (a mirror's
/// children, their states and resync): the control socket's view of it.
pub trait ServiceControl: Send + Sync {
    /// The service's state as a JSON object (children, their states,
    /// progress of background work).
    fn state(&self) -> String;
    /// Run `action` with its arguments (a child is named by its index
    /// from 0): what was done, or why not.
    fn control(&self, action: &str, args: &[&str]) -> Result<String, String>;
}

/// One storage object. Shared by all pollers (`Arc<dyn Backend>`).
pub trait Backend: Send + Sync {
    /// Size as the guest should see it.
    fn geometry(&self) -> Geometry;
    /// Optional capabilities.
    fn features(&self) -> Features;
    /// One submission/completion queue per poller thread (each gets its own
    /// io_uring). `depth` (>= 1) is the most requests in flight at once.
    fn open_queue(&self, depth: u32) -> Result<Box<dyn BackendQueue>, BackendError>;
    /// Synchronous flush of everything written so far (shutdown, controller
    /// shutdown notification).
    fn flush(&self) -> Result<(), BackendError>;
    /// The controller was reset or shut down: a zoned backend closes the
    /// zones that are open (one with nothing written becomes empty), as
    /// the NVMe Zoned Namespace Command Set has a Controller Level Reset
    /// do, and makes that durable. Others have nothing to do.
    fn close_open_zones(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Human-readable description, e.g.
    /// `file:/var/lib/x.img (1 GiB, 512 B blocks, O_DIRECT)`.
    fn describe(&self) -> String;
    /// Whether the data outlives this process (a file, a device, a remote
    /// target; not process memory): only then can another runtime take
    /// the namespace over after this one stops.
    fn persistent(&self) -> bool {
        true
    }
    /// Take the backing object for this process, waiting for another
    /// process (a runtime that stopped or was killed) to let go of it and
    /// for the I/O the kernel still runs for it to finish. Done before the
    /// first I/O; idempotent. Backends in process memory need nothing.
    fn claim(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// How a zoned backend divides its blocks; `None`: not zoned.
    fn zoned(&self) -> Option<ZoneGeometry> {
        None
    }
    /// The zones from the one holding block `from` on, at most `max` of
    /// them (zoned backends; others report none).
    fn report_zones(&self, from: u64, max: usize) -> Vec<ZoneDesc> {
        let _ = (from, max);
        Vec::new()
    }
    /// Bytes of I/O data this backend's CPU copied since it was opened
    /// (into or out of its own memory, a page cache, a socket, a bounce
    /// buffer): 0 when a device moves the data itself.
    fn copied_bytes(&self) -> u64 {
        0
    }
    /// The Asymmetric Namespace Access state through this backend (an NVMe
    /// over Fabrics path whose controller reports one: 1 optimized, 2
    /// non-optimized, 3 inaccessible, 4 persistent loss, 15 change); None
    /// when not reported. A multipath namespace prefers optimized paths.
    fn ana_state(&self) -> Option<u8> {
        None
    }
    /// Figures of this kind of backend for the metrics endpoint (an FTL's
    /// write amplification and garbage collection, a remote target's
    /// reconnections); none by default.
    fn figures(&self) -> Vec<Figure> {
        Vec::new()
    }
    /// The id requests for `who` carry ([`IoRequest::owner`]): the same
    /// for the same owner for the backend's lifetime. Backends that do not
    /// tell owners apart say 0.
    fn owner(&self, who: &Owner<'_>) -> u32 {
        let _ = who;
        0
    }
    /// How long after a runtime died the writes it had sent through its
    /// own connection may still land: a successor runs that runtime's
    /// writes again only once this has passed, so that an old copy never
    /// lands over a newer write. Zero where the runtime's death ends its
    /// I/O (local files and devices: the runtime is fenced first); a remote
    /// target drops a dead host's association within its keep-alive
    /// timeout.
    fn stale_writes_for(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    /// The largest request with data it takes (a remote target's MDTS);
    /// larger ones are refused. Those who make requests of their own (a
    /// mirror's resync) cut them to this.
    fn max_io_bytes(&self) -> u64 {
        u64::MAX
    }
    /// The operator's handle on a storage service (a mirror); `None` for
    /// plain backends.
    fn service(&self) -> Option<&dyn ServiceControl> {
        None
    }
}

/// A per-poller queue of requests. Not shared between threads (but may move
/// between them).
pub trait BackendQueue: Send {
    /// Queue one request; non-blocking. Nothing is half-submitted on error.
    ///
    /// The request is not guaranteed to reach the kernel before
    /// [`kick`](Self::kick) (or the next `poll`/`drain`).
    ///
    /// # Safety
    ///
    /// Every iovec must stay valid (and, for reads, writable) until
    /// `poll()`/`drain()` returns this tag's completion. The iovec array
    /// itself is copied and may be dropped when `submit` returns.
    unsafe fn submit(&mut self, req: &IoRequest<'_>) -> Result<(), SubmitError>;
    /// Push queued submissions to the kernel (one `io_uring_enter` for a batch).
    fn kick(&mut self) -> Result<(), BackendError>;
    /// Non-blocking: append finished requests to `out`, return how many.
    fn poll(&mut self, out: &mut Vec<Completion>) -> usize;
    /// Requests submitted whose completion has not been returned yet.
    fn in_flight(&self) -> usize;
    /// Of those, the requests that only time will start: accepted and
    /// held back by a scheduler (QoS), not yet given to the device.
    fn held(&self) -> usize {
        0
    }
    /// Wait (up to `timeout`) until everything in flight completed, appending
    /// completions; returns how many were appended.
    fn drain(&mut self, out: &mut Vec<Completion>, timeout: Duration) -> usize;
    /// Block for up to `timeout` until a request completes (it may return
    /// early, e.g. on a signal). For pollers whose core is shared with the
    /// kernel's own I/O completion work: sleeping in the kernel lets that
    /// work run. Backends that complete inline return at once.
    fn wait_completion(&mut self, timeout: Duration) {
        let _ = timeout;
    }
}

/// Checks shared by every backend (see the crate docs for the rules).
pub fn validate(req: &IoRequest<'_>, geometry: Geometry) -> Result<(), SubmitError> {
    if req.kind == IoKind::Flush {
        if req.len != 0 {
            return Err(SubmitError::Invalid("flush with a non-zero length"));
        }
        if !req.iov.is_empty() {
            return Err(SubmitError::Invalid("flush with iovecs"));
        }
        return Ok(());
    }
    if req.kind.is_zoned() {
        return Err(SubmitError::Invalid(
            "zone request on a conventional namespace",
        ));
    }
    let bs = u64::from(geometry.block_size);
    if req.offset % bs != 0 || req.len % bs != 0 {
        return Err(SubmitError::Invalid(
            "offset or length not a multiple of the block size",
        ));
    }
    let end = req
        .offset
        .checked_add(req.len)
        .ok_or(SubmitError::Invalid("range overflows"))?;
    if end > geometry.size_bytes() {
        return Err(SubmitError::Invalid("range past the end of the device"));
    }
    if req.kind.has_data() {
        if req.iov.len() > MAX_IOVECS {
            return Err(SubmitError::Invalid("more than MAX_IOVECS (1025) iovecs"));
        }
        let mut total: u64 = 0;
        for v in req.iov {
            total = total
                .checked_add(v.iov_len as u64)
                .ok_or(SubmitError::Invalid("iovec lengths overflow"))?;
            if v.iov_base.is_null() && v.iov_len != 0 {
                return Err(SubmitError::Invalid("null iovec base"));
            }
        }
        if total != req.len {
            return Err(SubmitError::Invalid(
                "iovec lengths do not add up to the request length",
            ));
        }
    } else if !req.iov.is_empty() {
        return Err(SubmitError::Invalid(
            "iovecs given for a request that carries no data",
        ));
    }
    Ok(())
}
