//! LeapIO's storage backends: they move bytes between host iovecs (which
//! point into guest RAM) and storage, behind the one non-blocking
//! submit/poll API of `leapio-backend`.
//!
//! Backends know nothing about NVMe or vfio-user. A [`Backend`] describes one
//! storage object (its [`Geometry`] and [`Features`]) and hands out one
//! [`BackendQueue`] per poller thread. A queue accepts [`IoRequest`]s with
//! [`BackendQueue::submit`], pushes them to the kernel with
//! [`BackendQueue::kick`] and reports [`Completion`]s from
//! [`BackendQueue::poll`] / [`BackendQueue::drain`].
//!
//! Backends:
//! - [`BackendSpec::Ram`]: an anonymous shared mapping; requests complete at
//!   submit time and are reported by the next poll.
//! - [`BackendSpec::File`]: a regular file or a block device driven by one
//!   io_uring per queue, with O_DIRECT when the filesystem and the buffers
//!   allow it.
//! - [`BackendSpec::NvmeTcp`]: a namespace of a remote NVMe/TCP subsystem,
//!   one non-blocking TCP connection per queue (see [`nvme_tcp`]).
//! - [`BackendSpec::NvmePci`]: a namespace of an NVMe SSD driven from user
//!   space through VFIO, one polled queue pair per queue; the SSD moves the
//!   data itself (see [`nvme_pci`]).
//! - [`BackendSpec::Flash`]: a page-mapped FTL on emulated NAND kept in a
//!   file, with a timing model of dies and channels (see [`flash`]).
//! - [`BackendSpec::Zns`]: a zoned namespace on the same emulated NAND,
//!   zones striped over the dies (see [`flash::zns`]).
//!
//! The interface (the traits, requests, completions, errors, and the
//! request rules every backend checks) is the `leapio-backend` crate,
//! re-exported here.

mod config;
mod file;
pub mod flash;
mod iov;
mod nvme_host;
pub mod nvme_pci;
#[cfg(feature = "rdma")]
pub mod nvme_rdma;
pub mod nvme_tcp;
pub mod nvmf;
mod ram;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod services;
mod sys;
mod uring;

use std::sync::Arc;

pub use config::{parse_size, BackendSpec, AUTO_BLOCK_SIZE, DEFAULT_BLOCK_SIZE};
pub use file::{FileBackend, MAX_QUEUE_DEPTH};
pub use flash::{FlashBackend, FlashSpec, FlashStats, ZnsBackend, ZnsSpec};
pub use leapio_backend::*;
pub use nvme_pci::{NvmePciBackend, NvmePciSpec};
pub use nvmf::{NvmfSpec, Transport};
pub use ram::RamBackend;
pub use uring::keep_workers_off;

/// Open the backend a spec names.
pub fn open_backend(spec: &BackendSpec) -> Result<Arc<dyn Backend>, BackendError> {
    let b = open_backend_unclaimed(spec)?;
    b.claim()?;
    Ok(b)
}

/// Open a backend without claiming it ([`Backend::claim`] comes later):
/// a runtime taking over from another one that still holds the file learns
/// its geometry first, and claims it once the other has let go.
pub fn open_backend_unclaimed(spec: &BackendSpec) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(match spec {
        BackendSpec::Ram { size, block_size } => Arc::new(RamBackend::new(*size, *block_size)?),
        BackendSpec::File { path, block_size } => Arc::new(FileBackend::open(path, *block_size)?),
        BackendSpec::NvmeTcp(spec) => Arc::new(nvme_tcp::NvmeTcpBackend::open(spec)?),
        BackendSpec::NvmePci(spec) => Arc::new(NvmePciBackend::open(spec)?),
        #[cfg(feature = "rdma")]
        BackendSpec::NvmeRdma(spec) => Arc::new(nvme_rdma::NvmeRdmaBackend::open(spec)?),
        #[cfg(not(feature = "rdma"))]
        BackendSpec::NvmeRdma(spec) => {
            return Err(BackendError::Config(format!(
                "{spec}: this build has no RDMA (build with the rdma feature)"
            )))
        }
        BackendSpec::Flash(spec) => Arc::new(FlashBackend::open(spec)?),
        BackendSpec::Zns(spec) => Arc::new(ZnsBackend::open(spec)?),
        BackendSpec::Service(spec) => services::open(spec)?,
    })
}

/// "1 GiB", "64 MiB", "1536 KiB", "1000 B": exact binary units.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [(&str, u32); 5] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10), ("B", 0)];
    for (name, shift) in UNITS {
        let unit = 1u64 << shift;
        if bytes >= unit && bytes % unit == 0 {
            return format!("{} {name}", bytes >> shift);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests;
