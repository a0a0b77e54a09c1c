//! NVMe wire types: the structures of the NVMe Base, NVM and Zoned
//! Namespace Command Set specifications, NVMe over Fabrics and the NVMe/TCP
//! transport ([`cmd`], [`regs`], [`identify`], [`log`], [`status`],
//! [`fabrics`], [`tcp`], [`rdma`], [`zns`]), used by host and target sides alike. It
//! depends on nothing else of the project.
//!
//! Everything here is a `#[repr(C)]` zerocopy type with explicit little-endian
//! fields and a compile-time size check, so it can be copied out of guest
//! memory (or a network buffer) and validated without trusting its contents.
//! References: NVM Express Base Specification 1.4 / 2.0 and the NVM Command
//! Set Specification, NVMe over Fabrics 1.1 and the NVMe/TCP Transport
//! Specification 1.0.

pub mod cmd;
pub mod fabrics;
pub mod identify;
pub mod log;
pub mod rdma;
pub mod regs;
pub mod status;
pub mod tcp;
pub mod zns;

pub use cmd::{AdminOpcode, Cqe, IoOpcode, Sqe};
pub use status::Status;

/// Little-endian integer types used by every structure in this crate.
pub use zerocopy::little_endian::{U16 as Le16, U32 as Le32, U64 as Le64};
