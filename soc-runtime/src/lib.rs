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
