//! `socp`, the LeapIO SoC runtime: the data plane. It serves the I/O queues
//! of the host-driver's NVMe controllers over a link (the host-driver in
//! another process or across a PCI link function; or embedded in the same
//! process by the all-in-one `leapio`), on poller threads against the
//! namespaces' backends, and exports namespaces over NVMe/TCP. It depends
//! on nothing of the host side.
//!
//! - [`cli`]: the data plane's options, starting and stopping it.
//! - [`config`]: the `--ctrl` specification.
//! - [`link_client`]: the runtime's end of the link; [`transport`]: its
//!   carriers (a socket, or a link function's rings and windows).
//! - [`controllers`]: what this runtime serves; the control socket.
//! - [`ctrl`]: a controller as the runtime sees it.
//! - [`runtime`]: poller threads and the hand-off of queues to them.
//! - [`poller`]: the data path of the guests' I/O queues.
//! - [`engine`]: a poller's backend queues (both front ends).
//! - [`qos`]: the QoS scheduler (ReFlex-style cost-based tokens) in front of
//!   the backends.
//! - [`namespaces`]: opening backends.
//! - [`pci_function`]: the link function as seen from an SoC (sysfs).
//! - [`crash`]: test hooks that kill the runtime at exact points.
//! - [`tcp_target`]: the NVMe/TCP target (`--tcp-target`).

pub mod cli;
pub mod config;
pub mod controllers;
pub mod crash;
pub mod ctrl;
pub mod engine;
pub mod link_client;
pub mod namespaces;
pub mod pci_function;
pub mod poller;
pub mod qos;
pub mod runtime;
pub mod tcp_target;
pub mod transport;

pub use leapio_service::error_chain;
