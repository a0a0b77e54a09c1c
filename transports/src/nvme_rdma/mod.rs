//! The NVMe/RDMA host backend: a namespace of a remote subsystem over RDMA
//! (NVMe over Fabrics 1.1, the RDMA transport binding), through the RDMA
//! connection manager and verbs ([`crate::rdma`]).
//!
//! - the spec (`nvme-rdma:HOST:PORT/SUBNQN[?options]`, the NVMe/TCP spec's
//!   options but the digests), the admin session, Connect and DH-HMAC-CHAP:
//!   [`crate::nvmf`], shared with NVMe/TCP;
//! - `conn`: one queue's connection (RDMA CM, queue pair, receives) and the
//!   control path's one-command-at-a-time use of it;
//! - `queue`: one [`BackendQueue`](crate::BackendQueue) per I/O queue pair.
//!
//! The guest's memory the runtime maps is registered in the device's
//! protection domain as it is mapped (the process's DMA registry), so the
//! target moves data straight to and from it; see `queue` for when a
//! request goes through a bounce buffer instead.

mod conn;
mod queue;

use std::sync::Arc;
use std::time::Duration;

use crate::nvmf::{Fabric, FabricBackend, Info, NvmfError, NvmfSpec, Session};
use crate::BackendQueue;
use conn::RdmaConn;

/// NVMe/RDMA as a host backend's fabric.
pub(crate) struct Rdma;

/// A namespace of a remote NVMe/RDMA subsystem.
pub(crate) type NvmeRdmaBackend = FabricBackend<Rdma>;

impl Fabric for Rdma {
    type Conn = RdmaConn;
    const SCHEME: &'static str = "nvme-rdma";

    fn open_conn(
        spec: &NvmfSpec,
        timeout: Duration,
        qid: u16,
        entries: u32,
    ) -> Result<RdmaConn, NvmfError> {
        RdmaConn::open(spec, timeout, qid, entries)
    }

    fn open_queue(
        session: &Arc<Session<RdmaConn>>,
        depth: u32,
    ) -> Result<Box<dyn BackendQueue>, NvmfError> {
        Ok(Box::new(queue::NvmeRdmaQueue::open(session, depth)?))
    }

    fn describe(_spec: &NvmfSpec, info: &Info) -> String {
        format!(", in-capsule {} B", info.in_capsule)
    }
}
