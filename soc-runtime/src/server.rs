//! Serving controllers: one control thread per controller accepts the
//! hypervisor's vfio-user connection and runs the protocol and the admin
//! queue; I/O queues go to the runtime's pollers.

use crate::config::CtrlSpec;
use crate::runtime::Runtime;
use leapio_transports::{open_backend, Backend, BackendSpec, TransportError};
use leapio_vmm_shim::controller::namespace_ids;
use leapio_vmm_shim::vfio_user::{serve, Listener};
use leapio_vmm_shim::{ControllerConfig, NamespaceInfo, NvmeController};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("namespace {nsid} of {sock}")]
    Backend {
        sock: String,
        nsid: u32,
        source: leapio_transports::TransportError,
    },
    #[error("controller {sock}")]
    Controller {
        sock: String,
        source: std::io::Error,
    },
    #[error("listening on {sock}")]
    Listen {
        sock: String,
        source: leapio_vmm_shim::vfio_user::ServerError,
    },
}

/// A controller being served.
pub struct Served {
    pub sock: String,
    pub backends: Vec<Arc<dyn Backend>>,
    pub thread: JoinHandle<()>,
}

/// A front end's namespaces: their backends and how they are presented,
/// both in NSID order.
pub type Namespaces = (Vec<Arc<dyn Backend>>, Vec<NamespaceInfo>);

/// Open the backends of a controller's (or target's) namespaces, in NSID
/// order, and describe them as the controller presents them. A failure
/// names the NSID.
pub fn open_namespaces(
    specs: &[BackendSpec],
    serial: &str,
    owner: &str,
) -> Result<Namespaces, (u32, TransportError)> {
    let mut backends = Vec::new();
    let mut namespaces = Vec::new();
    for (i, ns) in specs.iter().enumerate() {
        let nsid = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let b = open_backend(ns).map_err(|e| (nsid, e))?;
        let g = b.geometry();
        let f = b.features();
        let (nguid, eui64, uuid) = namespace_ids(serial, nsid);
        tracing::info!(owner, nsid, "namespace {nsid}: {}", b.describe());
        namespaces.push(NamespaceInfo {
            nsid,
            block_size: g.block_size,
            num_blocks: g.num_blocks,
            volatile_write_cache: f.volatile_write_cache,
            write_zeroes: f.write_zeroes,
            deallocate: f.deallocate,
            nguid,
            eui64,
            uuid,
        });
        backends.push(b);
    }
    Ok((backends, namespaces))
}

/// Open the backends, build the controller, bind its socket and start its
/// control thread.
pub fn start_controller(
    index: usize,
    spec: &CtrlSpec,
    rt: &Arc<Runtime>,
    stop: Arc<AtomicBool>,
) -> Result<Served, ServeError> {
    let sock = spec.sock.display().to_string();
    let serial = spec
        .serial
        .clone()
        .unwrap_or_else(|| format!("LEAPIO{index:04}"));
    let (backends, namespaces) =
        open_namespaces(&spec.namespaces, &serial, &sock).map_err(|(nsid, source)| {
            ServeError::Backend {
                sock: sock.clone(),
                nsid,
                source,
            }
        })?;
    let cfg = ControllerConfig {
        serial: serial.clone(),
        subnqn: format!("nqn.2026-11.io.leapio:{serial}"),
        cntlid: 1,
        max_io_queues: spec.io_queues,
        max_queue_entries: spec.queue_entries,
        mdts: spec.mdts,
        ..ControllerConfig::default()
    };
    let rt2 = rt.clone();
    let bk = backends.clone();
    let mut ctrl = NvmeController::new(cfg, namespaces, move |shared| {
        Box::new(rt2.queues_for(shared, bk))
    })
    .map_err(|source| ServeError::Controller {
        sock: sock.clone(),
        source,
    })?;
    let listener = Listener::bind(&spec.sock).map_err(|source| ServeError::Listen {
        sock: sock.clone(),
        source,
    })?;
    tracing::info!(ctrl = %sock, serial, "listening for a vfio-user client");
    let name = sock.clone();
    let thread = std::thread::Builder::new()
        .name(format!("socp-ctrl-{index}"))
        .spawn(move || {
            loop {
                match listener.accept(&stop) {
                    Ok(Some(stream)) => {
                        tracing::info!(ctrl = %name, "client connected");
                        if let Err(e) = serve(stream, &mut ctrl, &stop) {
                            tracing::warn!(ctrl = %name, "connection ended: {e}");
                        } else {
                            tracing::info!(ctrl = %name, "client disconnected");
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(ctrl = %name, "accept failed: {e}");
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                }
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
            }
            drop(listener);
            tracing::info!(ctrl = %name, "stopped");
        })
        .map_err(|source| ServeError::Controller {
            sock: sock.clone(),
            source,
        })?;
    Ok(Served {
        sock,
        backends,
        thread,
    })
}
