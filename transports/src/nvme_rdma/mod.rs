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

use crate::nvmf::{NvmfError, NvmfSpec, Session};
use crate::{Backend, BackendError, BackendQueue, Features, Geometry};
use conn::RdmaConn;

fn open_conn(
    spec: &NvmfSpec,
    timeout: Duration,
    qid: u16,
    entries: u32,
) -> Result<RdmaConn, NvmfError> {
    RdmaConn::open(spec, timeout, qid, entries)
}

/// A namespace of a remote NVMe/RDMA subsystem.
pub struct NvmeRdmaBackend {
    session: Arc<Session<RdmaConn>>,
}

impl NvmeRdmaBackend {
    /// Connect the admin queue, enable the controller, read the namespace's
    /// geometry and start the keep-alive timer.
    pub fn open(spec: &NvmfSpec) -> Result<NvmeRdmaBackend, BackendError> {
        let session = Session::open(spec, open_conn).map_err(|source| BackendError::Remote {
            target: spec.to_string(),
            source: Box::new(source),
        })?;
        Ok(NvmeRdmaBackend { session })
    }
}

impl Backend for NvmeRdmaBackend {
    fn geometry(&self) -> Geometry {
        self.session.info().geometry
    }

    fn features(&self) -> Features {
        self.session.info().features
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn BackendQueue>, BackendError> {
        let q = queue::NvmeRdmaQueue::open(&self.session, depth).map_err(|source| {
            BackendError::Remote {
                target: self.session.spec().to_string(),
                source: Box::new(source),
            }
        })?;
        Ok(Box::new(q))
    }

    fn flush(&self) -> Result<(), BackendError> {
        if !self.session.info().features.volatile_write_cache {
            return Ok(());
        }
        self.session
            .flush_sync()
            .map_err(|source| BackendError::Flush {
                target: self.describe(),
                source: std::io::Error::other(source),
            })
    }

    fn copied_bytes(&self) -> u64 {
        self.session
            .copied
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        let i = self.session.info();
        let s = self.session.spec();
        format!(
            "nvme-rdma {}/{} nsid {} ({}, {} B blocks, cntlid {}, in-capsule {} B)",
            s.host_port(),
            s.subnqn,
            s.nsid,
            crate::human_size(i.geometry.size_bytes()),
            i.geometry.block_size,
            self.session.cntlid(),
            i.in_capsule,
        )
    }
}

impl Drop for NvmeRdmaBackend {
    fn drop(&mut self) {
        self.session.stop();
    }
}
