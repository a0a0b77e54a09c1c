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
use std::time::Duration;

use crate::nvmf::{Fabric, FabricBackend, Info, NvmfError, NvmfSpec, Session};
use crate::BackendQueue;
use sync_conn::SyncConn;

/// NVMe/TCP as a host backend's fabric.
pub(crate) struct Tcp;

/// A namespace of a remote NVMe/TCP subsystem.
pub(crate) type NvmeTcpBackend = FabricBackend<Tcp>;

impl Fabric for Tcp {
    type Conn = SyncConn;
    const SCHEME: &'static str = "nvme-tcp";

    /// A control connection (TCP connect, ICReq/ICResp).
    fn open_conn(
        spec: &NvmfSpec,
        timeout: Duration,
        _qid: u16,
        _entries: u32,
    ) -> Result<SyncConn, NvmfError> {
        SyncConn::open(spec, timeout)
    }

    fn open_queue(
        session: &Arc<Session<SyncConn>>,
        depth: u32,
    ) -> Result<Box<dyn BackendQueue>, NvmfError> {
        Ok(Box::new(queue::NvmeTcpQueue::open(session, depth)?))
    }

    fn describe(spec: &NvmfSpec, _info: &Info) -> String {
        format!(
            "{}{}",
            if spec.hdgst { ", hdgst" } else { "" },
            if spec.ddgst { ", ddgst" } else { "" },
        )
    }
}
