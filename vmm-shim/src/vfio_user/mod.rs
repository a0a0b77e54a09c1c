//! The vfio-user protocol: a server that lets a stock hypervisor (QEMU >= 10.1
//! `-device vfio-user-pci`, cloud-hypervisor `--user-device`) drive a device
//! implemented by [`Device`]. (The client that plays the hypervisor in
//! tests and benchmarks is in the `leapio-tests` crate.)
//!
//! The specification is QEMU's `docs/interop/vfio-user.rst`;
//! `docs/design/vfio-user.md` records how QEMU 11.1's client
//! really behaves, and this implementation follows it where the two differ
//! in detail (reply sizes, the two-pass region info, fd-less DMA maps).
//!
//! # Why not the rust-vmm `vfio-user` crate
//!
//! It is written on the same wire format, but it does not fit a storage
//! runtime that must not trust its peer:
//! - it is blocking and serves a single connection, with no way to poll
//!   device work (the doorbell page) between messages;
//! - it does not bound `msg_size`, so a peer chooses how much we allocate;
//! - it unwraps (panics) on a malformed `VERSION` message;
//! - its `DMA_UNMAP` flags are wrong: "unmap all" is `1 << 2` there, while the
//!   protocol (and `<linux/vfio.h>`) say `VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1`
//!   (and `1 << 0` is "get dirty bitmap");
//! - it replies with errno 0 for most errors, so the client cannot tell why.
//!
//! # Framing and trust
//!
//! Every message is a 16-byte [`wire::Header`] followed by `msg_size - 16`
//! bytes. File descriptors (`SCM_RIGHTS`) arrive with the first byte of the
//! header; the server reads the header with `recvmsg(MSG_CMSG_CLOEXEC)` and
//! accepts at most [`MAX_MSG_FDS`] per message (all are closed and the
//! message fails with `E2BIG` if there are more). A `msg_size` below 16 or
//! above [`MAX_MSG_SIZE`] means the byte stream can no longer be trusted:
//! the connection is closed. A malformed body (wrong `argsz`, bad JSON,
//! unknown command, oversized transfer...) gets an error reply with a real
//! errno and the connection goes on. Nothing a peer sends can panic us.
//!
//! The server reads without blocking, so a peer that sends half a message
//! does not stop [`Device::tick`] from running.

mod server;
pub mod socket;
pub mod wire;

use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

pub use server::{serve, serve_from, Connection, Listener, SocketAccess};

/// A positive `libc` errno value, as sent in error replies.
pub type Errno = i32;

/// Protocol major version we speak.
pub const VERSION_MAJOR: u16 = 0;
/// Highest minor version we speak (libvfio-user's 0.1; QEMU proposes 0.0 and
/// gets 0.0 back: the reply never exceeds the proposal).
pub const VERSION_MINOR: u16 = 1;

/// Largest `count` of one REGION_READ/WRITE; advertised as
/// `max_data_xfer_size` (the specification's default).
pub const MAX_DATA_XFER_SIZE: u32 = 1 << 20;

/// Most file descriptors accepted with one message; advertised as
/// `max_msg_fds`. QEMU refuses values above 16 and splits SET_IRQS into
/// chunks of this many eventfds.
pub const MAX_MSG_FDS: usize = 16;

/// Largest message accepted (header + the largest REGION_WRITE + slack).
pub const MAX_MSG_SIZE: usize = wire::HEADER_SIZE + MAX_DATA_XFER_SIZE as usize + 64;

/// How often blocking loops look at their `stop` flag.
pub const STOP_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// `VFIO_USER_DEVICE_GET_INFO` as the device reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET`.
    pub flags: u32,
    /// Number of regions (9 for PCI: BARs 0-5, ROM, config, VGA).
    pub num_regions: u32,
    /// Number of interrupt types (5 for PCI: INTx, MSI, MSI-X, ERR, REQ).
    pub num_irqs: u32,
}

/// How a region can be mmapped by the client.
#[derive(Debug)]
pub struct RegionMmap {
    /// The device keeps ownership; the server sends a duplicate. In what
    /// [`Client::region_info`] returns it is the raw value of the returned
    /// `OwnedFd`.
    pub fd: RawFd,
    /// File offset of region offset 0 (the region info `offset` field).
    pub file_offset: u64,
    /// Mappable `(offset in region, size)` areas, sent as a sparse-mmap
    /// capability. Empty means the whole region (no capability is sent).
    pub areas: Vec<(u64, u64)>,
}

/// `VFIO_USER_DEVICE_GET_REGION_INFO` as the device reports it.
#[derive(Debug)]
pub struct RegionInfo {
    /// Region size; REGION_READ/WRITE beyond it fail with `EINVAL` before
    /// reaching the device.
    pub size: u64,
    /// The client may read the region (else REGION_READ fails with `EPERM`).
    pub read: bool,
    /// The client may write the region (else REGION_WRITE fails with `EPERM`).
    pub write: bool,
    /// Present if (part of) the region can be mmapped.
    pub mmap: Option<RegionMmap>,
}

/// `VFIO_USER_DEVICE_GET_IRQ_INFO` as the device reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqInfo {
    /// Number of interrupts of this type.
    pub count: u32,
    /// `VFIO_IRQ_INFO_EVENTFD | _MASKABLE | _AUTOMASKED | _NORESIZE`.
    pub flags: u32,
}

/// A validated `VFIO_USER_DMA_MAP`.
#[derive(Debug)]
pub struct DmaMap {
    /// DMA (guest-physical for QEMU without vIOMMU) address.
    pub iova: u64,
    /// Length, non-zero; `iova + size` does not overflow.
    pub size: u64,
    /// Offset of `iova` in `fd`; `file_offset + size` does not overflow.
    pub file_offset: u64,
    /// The server may read the memory.
    pub read: bool,
    /// The server may write the memory.
    pub write: bool,
    /// The memory to mmap. `None`: QEMU maps some ranges without an fd (BIOS
    /// ROM, PAM windows, the device's own mmapped BAR); accept them and
    /// never dereference them.
    pub fd: Option<OwnedFd>,
}

/// A validated `VFIO_USER_DMA_UNMAP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaUnmap {
    /// DMA address (0 when `all`).
    pub iova: u64,
    /// Length (0 when `all`); otherwise must match an earlier map exactly.
    pub size: u64,
    /// `VFIO_DMA_UNMAP_FLAG_ALL`: drop every mapping.
    pub all: bool,
}

/// `VFIO_IRQ_SET_ACTION_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqAction {
    /// `VFIO_IRQ_SET_ACTION_MASK`
    Mask,
    /// `VFIO_IRQ_SET_ACTION_UNMASK`
    Unmask,
    /// `VFIO_IRQ_SET_ACTION_TRIGGER`
    Trigger,
}

/// `VFIO_IRQ_SET_DATA_*`, with the data.
#[derive(Debug)]
pub enum IrqData {
    /// `DATA_NONE`: act on `start..start+count`; with `count == 0` (and
    /// `Trigger`) it disables every interrupt of the index.
    None,
    /// `DATA_BOOL`: act on sub-index `start + i` where `v[i]`; `count` entries.
    Bool(Vec<bool>),
    /// `DATA_EVENTFD`: `count` entries for `start..start+count`. `None`
    /// de-assigns (the specification's fd -1): a message with no fds at all
    /// de-assigns the whole range (QEMU's MSI-X "enable" trick sends
    /// `EVENTFD|TRIGGER` for vector 0 that way).
    Eventfd(Vec<Option<OwnedFd>>),
}

/// A validated `VFIO_USER_DEVICE_SET_IRQS`: exactly one data type and one
/// action, `index` < `num_irqs`, `start + count` within the index's count.
#[derive(Debug)]
pub struct SetIrqs {
    /// Interrupt type index (`VFIO_PCI_MSIX_IRQ_INDEX`...).
    pub index: u32,
    /// First sub-index.
    pub start: u32,
    /// Number of sub-indexes; 0 only with [`IrqData::None`].
    pub count: u32,
    /// What to do.
    pub action: IrqAction,
    /// With what.
    pub data: IrqData,
}

/// The device side. Every method returns quickly (the server loop is
/// single-threaded per connection). Errors are positive errno values sent
/// back to the client.
pub trait Device {
    /// `VFIO_USER_DEVICE_GET_INFO`.
    fn device_info(&self) -> DeviceInfo;
    /// `VFIO_USER_DEVICE_GET_REGION_INFO`; `None` = no such region (`EINVAL`).
    /// Also consulted for bounds and permissions of every REGION_READ/WRITE.
    fn region_info(&self, index: u32) -> Option<RegionInfo>;
    /// `VFIO_USER_DEVICE_GET_IRQ_INFO`; `None` = no such index (`EINVAL`).
    /// Also consulted to validate SET_IRQS.
    fn irq_info(&self, index: u32) -> Option<IrqInfo>;
    /// REGION_READ, already checked against the region's size and `read`.
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno>;
    /// REGION_WRITE, already checked against the region's size and `write`.
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno>;
    /// DMA_MAP. Overlap with an existing map should fail with `EEXIST`.
    fn dma_map(&mut self, map: DmaMap) -> Result<(), Errno>;
    /// DMA_UNMAP: release the mapping (and its fd) before returning.
    fn dma_unmap(&mut self, unmap: DmaUnmap) -> Result<(), Errno>;
    /// DEVICE_SET_IRQS.
    fn set_irqs(&mut self, req: SetIrqs) -> Result<(), Errno>;
    /// DEVICE_RESET.
    fn reset(&mut self) -> Result<(), Errno>;
    /// Work the device must poll while connected (e.g. its admin queue
    /// doorbell lives in shared memory): called at least every
    /// `tick_interval()` when `Some`.
    fn tick(&mut self) {}
    /// See [`Device::tick`]; asked again after every tick and message.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }
    /// The client went away (EOF, error, or framing violation): drop all
    /// client state (DMA maps, irq fds). Called exactly once per `serve`.
    fn disconnected(&mut self) {}
    /// The client negotiated the protocol version (a connection handed to
    /// another server is served from there with [`serve_from`]).
    fn negotiated(&mut self) {}
}

/// Errors of [`Listener`] and [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding the listening socket failed.
    #[error("cannot listen on {}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another server is accepting connections on the path.
    #[error("{} is in use by a live server", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket; we do not delete it.
    #[error("{} exists and is not a socket", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// `accept` failed.
    #[error("accepting a connection failed")]
    Accept(#[source] std::io::Error),
    /// Reading from or writing to the connection failed.
    #[error("vfio-user connection I/O failed")]
    Io(#[source] std::io::Error),
    /// A header announced a size we cannot frame: the connection was closed.
    #[error("message size {msg_size} outside 16..={max}: framing lost, connection closed", max = MAX_MSG_SIZE)]
    BadMessageSize {
        /// The announced size.
        msg_size: u32,
    },
    /// The client closed the connection in the middle of a message.
    #[error("connection closed in the middle of a message ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes of the message received.
        got: usize,
        /// Bytes announced.
        expected: usize,
    },
}
