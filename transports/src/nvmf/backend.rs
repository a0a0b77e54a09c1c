//! A namespace of a remote subsystem as a [`Backend`], whatever the fabric:
//! the fabric opens connections and I/O queues, the session does the rest
//! (geometry, features, flush, keep-alive, what was copied).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{Channel, Info, NvmfError, NvmfSpec, Session};
use crate::{Backend, BackendError, BackendQueue, Features, Geometry};

/// A fabric's part of a host backend.
pub(crate) trait Fabric: Send + Sync + 'static {
    /// A connection as the control path uses it.
    type Conn: Channel + Send + 'static;
    /// The spec's scheme (`nvme-tcp`), for descriptions.
    const SCHEME: &'static str;
    /// One connection to the target, ready for Connect, for queue `qid` of
    /// `entries` commands.
    fn open_conn(
        spec: &NvmfSpec,
        timeout: Duration,
        qid: u16,
        entries: u32,
    ) -> Result<Self::Conn, NvmfError>;
    /// One I/O queue of `depth` commands.
    fn open_queue(
        session: &Arc<Session<Self::Conn>>,
        depth: u32,
    ) -> Result<Box<dyn BackendQueue>, NvmfError>;
    /// What a description adds about the connection (digests, in-capsule
    /// data).
    fn describe(spec: &NvmfSpec, info: &Info) -> String;
}

/// A namespace of a remote subsystem over fabric `F`.
pub(crate) struct FabricBackend<F: Fabric> {
    session: Arc<Session<F::Conn>>,
}

impl<F: Fabric> FabricBackend<F> {
    /// Connect the admin queue, enable the controller, read the namespace's
    /// geometry and start the keep-alive timer.
    pub fn open(spec: &NvmfSpec) -> Result<FabricBackend<F>, BackendError> {
        let session = Session::open(spec, F::open_conn).map_err(|source| BackendError::Remote {
            target: spec.to_string(),
            source: Box::new(source),
        })?;
        Ok(FabricBackend { session })
    }
}

impl<F: Fabric> Backend for FabricBackend<F> {
    fn geometry(&self) -> Geometry {
        self.session.info().geometry
    }

    fn features(&self) -> Features {
        self.session.info().features
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn BackendQueue>, BackendError> {
        F::open_queue(&self.session, depth).map_err(|source| BackendError::Remote {
            target: self.session.spec().to_string(),
            source: Box::new(source),
        })
    }

    /// The target answers now (a Keep Alive on the admin queue, or the
    /// admin queue connected again): a mirror re-adding this child while
    /// its target is still away is told so, rather than failing it again.
    fn claim(&self) -> Result<(), BackendError> {
        self.session
            .check_live()
            .map_err(|source| BackendError::Remote {
                target: self.session.spec().to_string(),
                source: Box::new(source),
            })
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
        self.session.copied.load(Ordering::Relaxed)
    }

    fn ana_state(&self) -> Option<u8> {
        self.session.ana_state()
    }

    fn max_io_bytes(&self) -> u64 {
        u64::from(self.session.info().max_transfer)
    }

    fn figures(&self) -> Vec<leapio_backend::Figure> {
        vec![leapio_backend::Figure {
            name: "nvmf_reconnects_total",
            help: "I/O queues connected again to the target after their connection was lost.",
            counter: true,
            value: self.session.reconnects.load(Ordering::Relaxed) as f64,
        }]
    }

    /// The target tears the dead runtime's controller down (finishing its
    /// commands) at most its keep-alive timeout after its last command;
    /// a second more for the teardown. Without a keep-alive timeout, the
    /// connection's end is all the target learns: the retry deadline then.
    fn stale_writes_for(&self) -> Duration {
        let s = self.session.spec();
        if s.kato.is_zero() {
            s.retry
        } else {
            s.kato + Duration::from_secs(1)
        }
    }

    fn describe(&self) -> String {
        let i = self.session.info();
        let s = self.session.spec();
        format!(
            "{} {}/{} nsid {} ({}, {} B blocks, cntlid {}{})",
            F::SCHEME,
            s.host_port(),
            s.subnqn,
            s.nsid,
            crate::human_size(i.geometry.size_bytes()),
            i.geometry.block_size,
            self.session.cntlid(),
            F::describe(s, &i),
        )
    }
}

impl<F: Fabric> Drop for FabricBackend<F> {
    fn drop(&mut self) {
        self.session.stop();
    }
}
