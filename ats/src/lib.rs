//! LeapIO address translation service (ATS).
//!
//! Guest RAM reaches `socp` as file descriptors (vfio-user `DMA_MAP`). A
//! [`Domain`] (one per VM) mmaps them and publishes immutable [`Snapshot`]s of
//! its regions; pollers translate guest-physical addresses through a snapshot
//! without locks, and walk NVMe PRPs into host iovecs with [`prp::map_prps`].
//! [`ring`] holds NVMe submission and completion rings in guest memory,
//! [`transfer`] the small copies a controller makes to and from the buffers
//! PRPs describe. It knows PRPs and ring entries, no opcodes.
//!
//! # Lifetime rules (read these)
//!
//! - Host pointers and iovecs are valid only while the [`Snapshot`] they came
//!   from is alive: keep the `Arc<Snapshot>` with a request until its I/O has
//!   completed.
//! - [`Domain::unmap`] publishes a new snapshot and then waits until no
//!   snapshot containing the removed memory is held anywhere, so pollers must
//!   refresh their cached snapshot when [`Domain::generation`] changes, and
//!   the thread calling unmap must not hold a snapshot itself.
//! - Guest memory is shared with a guest that may change it at any time: it is
//!   only accessed through volatile copies and atomics, never through Rust
//!   references. Copy a command (or a PRP list) out once, then validate and
//!   use the copy.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use leapio_ats::prp::{map_prps, PrpLimits};
//! use leapio_ats::{testing::memfd, Access, Domain, Prot};
//!
//! let domain = Domain::new();
//! // vfio-user DMA_MAP: 1 MiB of guest RAM at guest-physical 1 MiB.
//! let ram = memfd(c"guest-ram", 1 << 20)?;
//! domain.map(0x10_0000, 1 << 20, Some(ram), 0, Prot::READ_WRITE)?;
//!
//! let mut snap = domain.snapshot(); // a poller caches this...
//! domain.refresh(&mut snap); // ...and refreshes it on every loop
//! snap.write_obj(0x10_0000, &0x1234u32)?;
//! assert_eq!(snap.read_obj::<u32>(0x10_0000)?, 0x1234);
//!
//! // An NVMe Read of 512 bytes into PRP1 = 0x10_0200: the device writes guest memory.
//! let limits = PrpLimits { page_size: 4096, max_transfer: 128 << 10 };
//! let mut iov = Vec::new();
//! map_prps(&snap, 0x10_0200, 0, 512, &limits, Access::Write, &mut iov)?;
//! assert_eq!((iov.len(), iov[0].iov_len), (1, 512));
//!
//! // DMA_UNMAP: waits until every snapshot holding the region is dropped.
//! drop(snap);
//! domain.unmap(0x10_0000, 1 << 20, Duration::from_secs(1))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Why vm-memory, and where not
//!
//! The mmap lifecycle ([`vm_memory::MmapRegion`]: `MAP_SHARED` of the fd at
//! an offset with the mapping's protection, munmap on drop) and every access
//! to guest memory (bounds-checked [`vm_memory::VolatileSlice`] volatile
//! copies and atomics) come from vm-memory, so this crate has almost no
//! `unsafe` of its own (only the memfd helper in [`testing`]). The region
//! table is our own rather than `GuestMemoryMmap`/`GuestMemoryAtomic`:
//! vfio-user needs fd-less mappings that are recorded but never accessible,
//! per-region read/write permissions checked on every access, unmapping of
//! single regions with a drain that waits on reference counts (no RCU guard in
//! vm-memory gives that), and a translate path that neither locks nor
//! allocates (a binary search over a sorted `Vec`).

#![warn(missing_docs)]

mod domain;
mod error;
mod mapping;
pub mod prp;
pub mod ring;
mod seals;
mod snapshot;
pub mod testing;
pub mod transfer;
mod types;

pub use domain::{DeviceAccess, Domain, MAX_REGIONS};
pub use error::AtsError;
pub use seals::require_sealed;
pub use snapshot::Snapshot;
pub use types::{Access, Prot, RegionInfo};

#[cfg(test)]
mod tests;
