//! `socp`, the LeapIO SoC runtime: serves virtual NVMe controllers over
//! vfio-user and runs their I/O queues on poller threads against the
//! namespaces' backends.
//!
//! - [`config`]: the `--ctrl` specification.
//! - [`runtime`]: poller threads and the hand-off of queues to them.
//! - [`poller`]: the data path.
//! - [`io`]: NVM command validation and translation into backend requests.
//! - [`server`]: per-controller control threads.
//! - [`tcp_target`]: the NVMe/TCP target (`--tcp-target`).

pub mod config;
pub mod io;
pub mod poller;
pub mod runtime;
pub mod server;
pub mod tcp_target;
