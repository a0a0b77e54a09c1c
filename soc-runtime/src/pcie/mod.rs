//! The data path of the PCIe front end: the I/O queues of the host-driver's
//! NVMe controllers, in guest memory, served by this runtime's pollers.
//!
//! - [`controller`]: a controller as the runtime sees it (guest memory,
//!   doorbells, queue state, interrupts, namespaces).
//! - [`runtime`]: the poller threads and the hand-off of queues to them.
//! - [`poller`]: one poller: fetch commands, plan them, run them on the
//!   engine, post completions, in the order the queue-state area needs.

pub mod controller;
pub mod poller;
pub mod runtime;
