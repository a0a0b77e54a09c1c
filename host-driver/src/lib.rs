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
//! - [`controller`], `admin`: the NVMe controller and its admin commands.
//! - [`port`]: a controller's requests to its runtime.
//! - `attach`: admitting a runtime, namespaces it declares.
//! - [`link`]: one runtime connection; fencing.
//! - [`shared`]: controller state the link readers update.
//! - [`control`]: the JSON-RPC control socket (`leapioctl`).
//! - [`soc`]: the link function an SoC reaches a controller through.

mod admin;
mod attach;
pub mod control;
pub mod controller;
pub mod host;
pub mod link;
pub mod port;
pub mod shared;
pub mod soc;

pub use attach::namespace_changes;
pub use controller::{ControllerConfig, NvmeController};
pub use host::{CtrlLimits, HostCtrlSpec, HostDriver, HostError};

/// An error and its sources, joined with ": " (our error types do not
/// repeat their source in their own message).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Log to stderr with `level` as the filter (tracing env-filter syntax;
/// RUST_LOG wins), colours only on a terminal. For the binaries.
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
