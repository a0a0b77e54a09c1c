//! NVMe/RDMA target: export namespaces over NVMe over Fabrics' RDMA
//! transport, so that Linux's `nvme connect -t rdma` (or socp's own
//! `nvme-rdma:` backend) can use them.
//!
//! One poller thread per target: it takes RDMA CM events (connection
//! requests, established, disconnected), polls each connection's completion
//! queue and the backends. A connection is one NVMe queue: the shared
//! queue state machine ([`crate::fabrics::queue`]) over this transport's
//! wire: command capsules arrive in posted receives, a write's data is
//! fetched with an RDMA READ into a registered buffer, a read's data goes
//! to the host with an RDMA WRITE, responses are SENT. Every buffer is a
//! DMA buffer of the process, registered in the device's protection domain
//! ([`leapio_backends::rdma`]); none is copied on the way to or from the
//! backend.
//!
//! Bounds: connections per target, queue entries (the Connect's SQSIZE and
//! the connection request's HRQSIZE within `queue-entries`), receive and
//! response buffers per connection (its queue size), buffers kept for
//! reuse; a connection that does not Connect or authenticate in time is
//! closed, as over TCP.

mod poller;

use crate::fabrics::config::TargetSpec;
use crate::fabrics::subsystem::Subsystem;
use leapio_backends::rdma::{CmId, EventChannel};
use leapio_backends::{Backend, BackendError, Transport};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Why an RDMA target could not start.
#[derive(Debug, thiserror::Error)]
pub enum RdmaTargetError {
    #[error("opening namespace {nsid} of {nqn}")]
    Backend {
        nqn: String,
        nsid: u32,
        #[source]
        source: BackendError,
    },
    #[error("listening on {addr} (RDMA CM)")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running target.
pub struct RdmaTarget {
    pub local_addr: SocketAddr,
    pub nqn: String,
    pub backends: Vec<Arc<dyn Backend>>,
    /// What it serves (its namespaces' figures).
    pub sub: Arc<Subsystem>,
    thread: Option<JoinHandle<()>>,
}

impl RdmaTarget {
    /// Open the namespaces, listen on the spec's address through the RDMA
    /// CM and start the poller.
    pub fn start(
        index: usize,
        spec: &TargetSpec,
        stop: Arc<AtomicBool>,
    ) -> Result<RdmaTarget, RdmaTargetError> {
        let serial = spec
            .serial
            .clone()
            .unwrap_or_else(|| format!("LEAPIORDMA{index:04}"));
        let (backends, namespaces) =
            crate::namespaces::open_namespaces(&spec.namespaces, &serial, &spec.nqn).map_err(
                |(nsid, source)| RdmaTargetError::Backend {
                    nqn: spec.nqn.clone(),
                    nsid,
                    source,
                },
            )?;
        let listen_err = |source| RdmaTargetError::Listen {
            addr: spec.listen,
            source,
        };
        let channel = Arc::new(EventChannel::new().map_err(listen_err)?);
        let listener = CmId::new(&channel).map_err(listen_err)?;
        listener.listen(&spec.listen, 64).map_err(listen_err)?;
        let sub = Arc::new(Subsystem::new(
            spec,
            serial,
            spec.listen,
            Transport::Rdma,
            namespaces,
            backends.clone(),
        ));
        let mut engine = crate::engine::Engine::default();
        let mut queues = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            let q = engine
                .open(b.as_ref(), poller::BACKEND_DEPTH)
                .map_err(|source| RdmaTargetError::Backend {
                    nqn: spec.nqn.clone(),
                    nsid: u32::try_from(i + 1).unwrap_or(u32::MAX),
                    source,
                })?;
            queues.push(q);
        }
        let p = poller::RdmaPoller::new(sub.clone(), channel, listener, engine, queues, stop);
        let thread = std::thread::Builder::new()
            .name(format!("socp-rdma-{index}"))
            .spawn(move || p.run())
            .map_err(listen_err)?;
        tracing::info!(nqn = %spec.nqn, addr = %spec.listen, "NVMe/RDMA target listening");
        Ok(RdmaTarget {
            local_addr: spec.listen,
            nqn: spec.nqn.clone(),
            backends,
            thread: Some(thread),
            sub,
        })
    }

    /// Controllers currently alive (admin queues connected).
    pub fn controllers(&self) -> usize {
        self.sub.controller_count()
    }

    /// Wait for the poller (after `stop` was set).
    pub fn join(mut self) -> Vec<Arc<dyn Backend>> {
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!(nqn = %self.nqn, "RDMA target poller panicked");
            }
        }
        std::mem::take(&mut self.backends)
    }
}
