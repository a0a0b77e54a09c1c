//! NVMe structures in guest memory, reached through an `ats` snapshot:
//! submission and completion rings, and small transfers to and from the
//! buffers a command's PRPs describe.

pub mod dma;
pub mod queue;
