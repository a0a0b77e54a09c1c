//! The link between the host-driver and the runtime.
//!
//! The host-driver owns everything the hypervisor and the guest can see (the
//! vfio-user connection, the PCI function, the admin queue, the guest's
//! memory file descriptors); the runtime (`socp`) serves the I/O queues. The
//! link is how the host-driver exports one *unified address space* to the
//! runtime and how they talk:
//!
//! - the guest's memory regions ([`proto::ToRuntime::Map`], one descriptor
//!   each, with the translation table's changes as map and unmap messages);
//! - the doorbell page ([`doorbells::Doorbells`]), shared with the guest;
//! - the queue-state area ([`qstate::QueueState`]), which the host-driver
//!   owns and the runtime writes: with it a new runtime takes over the
//!   queues of one that died, without the guest noticing;
//! - MSI-X eventfds, with mask and pending bits in the queue-state area
//!   ([`irq::Interrupts`]);
//! - control messages ([`proto`]), framed by [`frame`].
//!
//! Carriers: a Unix socket with `SCM_RIGHTS` (the runtime in another process
//! or container), a socket pair inside one process (the all-in-one `socp`),
//! or a PCI function whose BARs hold the shared memory and whose rings carry
//! the messages (the runtime on an SoC: [`function`], [`ring`]); the
//! messages and the shared memory are the same.

pub mod doorbells;
pub mod frame;
pub mod function;
pub mod irq;
pub mod proto;
pub mod qstate;
pub mod ring;
pub mod shm;

pub use frame::LinkError;
pub use proto::{CqSetup, CtrlConfig, NsDecl, Shadow, SqSetup, ToHost, ToRuntime, ZonedDecl};
