//! NVMe/TCP target: export namespaces over standard NVMe/TCP (NVMe over
//! Fabrics 1.1, NVMe/TCP Transport 1.0) so that Linux's `nvme connect -t
//! tcp` (or any NVMe/TCP host) can use them.
//!
//! - the spec (`--tcp-target`), the subsystem, admin commands and one
//!   queue's state machine: [`crate::fabrics`], shared with NVMe/RDMA.
//! - `poller`: poller threads, each an epoll loop over non-blocking sockets
//!   with its own backend queues (no thread per connection).
//! - `conn`: one connection = one NVMe queue's wire: ICReq/ICResp, capsule
//!   PDUs, R2T/H2CData, C2HData, TermReqs.
//! - `bufs`: recycled buffers for the data reads send.
//!
//! A discovery controller (`nqn.2014-08.org.nvmexpress.discovery`) answers
//! on the same listener with one log entry for the subsystem (for hosts on
//! the allow list). Peer mistakes end that connection with a C2HTermReq;
//! nothing else is disturbed.

mod bufs;
mod conn;
mod epoll;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod poller;
#[cfg(test)]
mod tests;

pub use crate::fabrics::config::TargetSpec;

use leapio_backends::{Backend, BackendError};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum TcpTargetError {
    #[error("namespace {nsid} of {nqn}")]
    Backend {
        nqn: String,
        nsid: u32,
        #[source]
        source: BackendError,
    },
    #[error("listening on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting target poller {index}")]
    TargetPoller {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

/// A running target.
pub struct TcpTarget {
    /// Address actually bound (port 0 in the spec picks one).
    pub local_addr: SocketAddr,
    pub nqn: String,
    pub backends: Vec<Arc<dyn Backend>>,
    /// What it serves (its namespaces' figures).
    pub sub: Arc<crate::fabrics::subsystem::Subsystem>,
    threads: Vec<JoinHandle<()>>,
}

impl TcpTarget {
    /// Open the namespaces, bind the listener and start `pollers` threads.
    pub fn start(
        index: usize,
        spec: &TargetSpec,
        pollers: usize,
        stop: Arc<AtomicBool>,
    ) -> Result<TcpTarget, TcpTargetError> {
        let serial = spec
            .serial
            .clone()
            .unwrap_or_else(|| format!("LEAPIOTCP{index:04}"));
        let (backends, namespaces) =
            crate::namespaces::open_namespaces(&spec.namespaces, &serial, &spec.nqn).map_err(
                |(nsid, source)| TcpTargetError::Backend {
                    nqn: spec.nqn.clone(),
                    nsid,
                    source,
                },
            )?;
        let listen_err = |source| TcpTargetError::Listen {
            addr: spec.listen,
            source,
        };
        let listener = TcpListener::bind(spec.listen).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let local_addr = listener.local_addr().map_err(listen_err)?;
        let listener = Arc::new(listener);
        let sub = Arc::new(crate::fabrics::subsystem::Subsystem::new(
            spec,
            serial,
            local_addr,
            leapio_backends::Transport::Tcp,
            namespaces,
            backends.clone(),
        ));
        let mut threads = Vec::new();
        for p in 0..pollers.max(1) {
            let perr = |source| TcpTargetError::TargetPoller { index: p, source };
            let mut engine = crate::engine::Engine::default();
            let mut queues = Vec::new();
            for (i, b) in backends.iter().enumerate() {
                let q = engine
                    .open(b.as_ref(), poller::BACKEND_DEPTH)
                    .map_err(|source| TcpTargetError::Backend {
                        nqn: spec.nqn.clone(),
                        nsid: u32::try_from(i + 1).unwrap_or(u32::MAX),
                        source,
                    })?;
                queues.push(q);
            }
            let poller = poller::TargetPoller::new(
                p,
                sub.clone(),
                listener.clone(),
                engine,
                queues,
                stop.clone(),
            )
            .map_err(perr)?;
            let t = std::thread::Builder::new()
                .name(format!("socp-tcp-{index}.{p}"))
                .spawn(move || poller.run())
                .map_err(perr)?;
            threads.push(t);
        }
        tracing::info!(
            nqn = %spec.nqn, addr = %local_addr, pollers = threads.len(),
            hosts = if spec.allow.is_empty() {
                "any".to_string()
            } else {
                spec.allow
                    .iter()
                    .map(|a| if a.secrets.is_some() { format!("{} (DH-HMAC-CHAP)", a.nqn) } else { a.nqn.clone() })
                    .collect::<Vec<_>>()
                    .join(" ")
            },
            "NVMe/TCP target listening"
        );
        Ok(TcpTarget {
            local_addr,
            nqn: spec.nqn.clone(),
            backends,
            threads,
            sub,
        })
    }

    /// The most bytes ever queued for one connection to send: bounded by
    /// the backpressure on hosts that do not read: reads whose data would
    /// be owed past `TX_LIMIT` wait unstarted, so at most `TX_LIMIT` plus
    /// one maximum transfer and a few responses.
    pub fn tx_peak(&self) -> usize {
        self.sub.tx_peak.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Controllers currently alive (admin queues connected).
    pub fn controllers(&self) -> usize {
        self.sub.controller_count()
    }

    /// Connections open, and commands of closed connections whose backend
    /// I/O has not completed yet (their buffers are held until it has).
    pub fn connections(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering;
        (
            self.sub.connections.load(Ordering::Acquire),
            self.sub.orphans.load(Ordering::Acquire),
        )
    }

    /// Wait for the pollers (after `stop` was set).
    pub fn join(self) -> Vec<Arc<dyn Backend>> {
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!(nqn = %self.nqn, "target poller panicked");
            }
        }
        self.backends
    }
}
