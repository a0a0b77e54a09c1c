//! The NVMe/TCP host backend: a namespace of a remote NVMe/TCP subsystem
//! (NVMe over Fabrics 1.1, NVMe/TCP transport 1.0).
//!
//! - [`spec`](NvmeTcpSpec): `nvme-tcp:HOST:PORT/SUBNQN[?options]`.
//! - `sync_conn`: a blocking connection for the control path (handshakes,
//!   properties, Identify, keep-alive).
//! - `session`: the admin queue (controller enable, geometry, features), its
//!   keep-alive timer thread, and the (re)connection of I/O queues.
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

mod config;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod queue;
mod session;
mod sync_conn;

use std::sync::Arc;

use leapio_nvme::Status;

pub use config::{NvmeTcpSpec, DEFAULT_HOSTNQN};

pub(crate) use config::parse as parse_spec;

use crate::{Backend, BackendError, BackendQueue, Features, Geometry};
use session::Session;

/// What went wrong talking to an NVMe/TCP target.
#[derive(Debug, thiserror::Error)]
pub enum NvmeTcpError {
    /// The target's address could not be resolved.
    #[error("cannot resolve {addr}")]
    Resolve {
        /// HOST:PORT.
        addr: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// TCP connect failed.
    #[error("cannot connect to {addr}")]
    Connect {
        /// HOST:PORT.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A socket operation failed.
    #[error("socket error")]
    Io {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The target closed the connection.
    #[error("connection closed by the target")]
    Closed,
    /// Nothing arrived in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The target broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The target ended the connection with a C2HTermReq.
    #[error("target terminated the connection (FES {fes:#x})")]
    Terminated {
        /// Fatal error status.
        fes: u16,
    },
    /// A control command failed.
    #[error("{what} failed with status {status}")]
    Status {
        /// Which command.
        what: &'static str,
        /// Its status.
        status: Status,
    },
    /// The target or namespace cannot be used.
    #[error("{0}")]
    Unusable(String),
    /// The controller asks for authentication and we have no secret.
    #[error("the target requires DH-HMAC-CHAP authentication of host {hostnqn}: give dhchap=DHHC-1:..: in the nvme-tcp spec")]
    AuthRequired {
        /// Our host NQN.
        hostnqn: String,
    },
    /// DH-HMAC-CHAP failed on a queue.
    #[error("DH-HMAC-CHAP authentication of queue {qid} failed")]
    Auth {
        /// The queue.
        qid: u16,
        /// What went wrong.
        #[source]
        source: leapio_nvme_auth::AuthError,
    },
}

/// A namespace of a remote NVMe/TCP subsystem.
pub struct NvmeTcpBackend {
    session: Arc<Session>,
}

impl NvmeTcpBackend {
    /// Connect the admin queue, enable the controller, read the namespace's
    /// geometry and start the keep-alive timer.
    pub fn open(spec: &NvmeTcpSpec) -> Result<NvmeTcpBackend, BackendError> {
        let session = Session::open(spec).map_err(|source| BackendError::Remote {
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
