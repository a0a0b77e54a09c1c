//! The NVMe/TCP host backend: a namespace of a remote NVMe/TCP subsystem
//! (NVMe over Fabrics 1.1, NVMe/TCP transport 1.0).
//!
//! - the spec (`nvme-tcp:HOST:PORT/SUBNQN[?options]`), the admin session
//!   and what every fabric's host does on a queue: [`crate::nvmf`].
//! - `sync_conn`: a blocking connection for the control path (ICReq/ICResp,
//!   then the commands of [`crate::nvmf::Channel`]).
//! - `queue`: one [`BackendQueue`](crate::BackendQueue) = one I/O queue = one
//!   non-blocking TCP connection, driven from `submit`/`kick`/`poll` only.
//!
//! Failure handling: when an I/O connection drops, a short-lived helper thread
//! reconnects it (re-creating the admin queue and controller if the target
//! restarted) with exponential backoff from 100 ms to 5 s; the queue re-issues
//! every command that had not completed (reads, writes, flushes, write zeroes
//! and deallocate are idempotent at block level). A command still waiting
//! `retry` after its connection was lost fails with ETIMEDOUT. A write is
//! only reported complete after the target's successful CapsuleResp.
//!
//! Authentication: with `dhchap=` every queue (admin and I/O, and each
//! reconnection) runs DH-HMAC-CHAP when the controller's Connect response
//! asks for it (ATR); with `dhchap-ctrl=` every queue runs it regardless and
//! the controller must prove its own secret. A refusal is an error of that
//! connection attempt (no retry is different from a lost connection's).

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod queue;
mod sync_conn;

use std::sync::Arc;

use crate::nvmf::{NvmfError, NvmfSpec, Session};
use crate::{Backend, BackendError, BackendQueue, Features, Geometry};
use sync_conn::SyncConn;

/// Open a control connection (TCP connect, ICReq/ICResp) for the session.
fn open_conn(
    spec: &NvmfSpec,
    timeout: std::time::Duration,
    _qid: u16,
    _entries: u32,
) -> Result<SyncConn, NvmfError> {
    SyncConn::open(spec, timeout)
}

/// A namespace of a remote NVMe/TCP subsystem.
pub struct NvmeTcpBackend {
    session: Arc<Session<SyncConn>>,
}

impl NvmeTcpBackend {
    /// Connect the admin queue, enable the controller, read the namespace's
    /// geometry and start the keep-alive timer.
    pub fn open(spec: &NvmfSpec) -> Result<NvmeTcpBackend, BackendError> {
        let session = Session::open(spec, open_conn).map_err(|source| BackendError::Remote {
            target: spec.to_string(),
            source: Box::new(source),
        })?;
        Ok(NvmeTcpBackend { session })
    }
}

impl Backend for NvmeTcpBackend {
    fn geometry(&self) -> Geometry {
        self.session.info().geometry
    }

    fn features(&self) -> Features {
        self.session.info().features
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn BackendQueue>, BackendError> {
        let q = queue::NvmeTcpQueue::open(&self.session, depth).map_err(|source| {
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
            "nvme-tcp {}/{} nsid {} ({}, {} B blocks, cntlid {}{}{})",
            s.host_port(),
            s.subnqn,
            s.nsid,
            crate::human_size(i.geometry.size_bytes()),
            i.geometry.block_size,
            self.session.cntlid(),
            if s.hdgst { ", hdgst" } else { "" },
            if s.ddgst { ", ddgst" } else { "" },
        )
    }
}

impl Drop for NvmeTcpBackend {
    fn drop(&mut self) {
        self.session.stop();
    }
}
