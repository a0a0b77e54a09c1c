//! The LeapIO host-driver: what runs on the host in a split deployment.
//!
//! Per VM it owns the hypervisor's vfio-user connection, the PCI NVMe
//! function (config space, BAR0 registers, the doorbell page, MSI-X
//! eventfds), the guest's memory file descriptors and the control plane
//! (controller enable/reset/shutdown, the admin queue). It exports guest
//! memory, the doorbell page, interrupts and the queue-state area to a
//! runtime (`socp`) over a link, and does no I/O itself. The runtime can
//! die and be replaced while the guest keeps its disk.
//!
//! - [`host`]: the controllers and the runtimes' links.
//! - `serving`: the fixed threads that serve every controller (sockets,
//!   timers, admin doorbells; a pool running one controller at a time).
//! - [`controller`], `admin`: the NVMe controller and its admin commands.
//! - [`port`]: a controller's requests to its runtime.
//! - `attach`: admitting a runtime, namespaces it declares.
//! - [`link`]: one runtime connection; fencing.
//! - [`shared`]: controller state the link readers update.
//! - [`soc`]: the link function an SoC reaches a controller through.

mod admin;
mod attach;
pub mod controller;
mod holders;
pub mod host;
mod image;
pub mod keep;
mod kept;
pub mod link;
pub mod port;
mod serving;
pub mod shared;
pub mod soc;

pub use attach::namespace_changes;
pub use controller::{ControllerConfig, NvmeController};
pub use host::{CtrlLimits, HostCtrlSpec, HostDriver, HostError};
