//! `socp`, the LeapIO SoC runtime: the data plane. It serves the I/O queues
//! of the host-driver's NVMe controllers over a link (the host-driver in
//! another process or across a PCI link function; or embedded in the same
//! process by the all-in-one `leapio`), on poller threads against the
//! namespaces' backends, and exports namespaces over NVMe/TCP. It depends
//! on nothing of the host side.
//!
//! - [`cli`]: the data plane's options, starting and stopping it.
//! - [`config`]: the `--ctrl` specification.
//! - [`link`]: the runtime's end of the link (its client, its carriers, a
//!   link function seen from an SoC).
//! - [`controllers`]: what this runtime serves; the control socket.
//! - [`pcie`]: the PCIe front end's data path: the guests' I/O queues, their
//!   pollers.
//! - [`tcp_target`]: the NVMe/TCP front end (`--tcp-target`).
//! - [`engine`]: a poller's backend queues (both front ends).
//! - [`qos`]: the QoS schedulers (ReFlex-style cost-based tokens), one in
//!   front of each device that has one.
//! - [`namespaces`]: opening backends.
//! - [`crash`]: test hooks that kill the runtime at exact points.

pub mod cli;
pub mod config;
pub mod controllers;
pub mod crash;
pub mod engine;
pub mod fabrics;
pub mod io_stats;
pub mod link;
pub mod metrics;
pub mod namespaces;
pub mod pcie;
pub mod qos;
#[cfg(feature = "rdma")]
pub mod rdma_target;
pub mod tcp_target;

pub use leapio_service::error_chain;
